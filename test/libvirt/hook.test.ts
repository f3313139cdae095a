// vmhook as libvirtd's real QEMU hook: the fast path for domains without
// metadata, and a bad config failing `virsh start` with vmhook's message.
import * as assert from "uvu/assert";
import { defineDomain, hugepages, libvirtSuite, logSince, logSize, markerEvents, stateFiles, virsh, virshOk } from "./fixture.ts";

const { test, run } = libvirtSuite("libvirt: hook");

const ALL_EVENTS = ["prepare begin", "start begin", "started begin", "stopped end", "release end"];

test("a domain without vmhook metadata starts and stops; vmhook leaves no trace and the kept hook sees every event", async () => {
  const domain = await defineDomain("plain");
  const [files, logOffset] = [stateFiles(), logSize()];
  await virshOk("start", domain.name);
  assert.is((await virshOk("domstate", domain.name)).trim(), "running");
  await virshOk("destroy", domain.name);
  assert.equal(markerEvents(domain), ALL_EVENTS);
  assert.not.match(logSince(logOffset), domain.name);
  assert.equal(stateFiles(), files);
});

const BAD_CONFIGS = [
  { hooks: '<vmhook:hugepages size="3M"/>', error: /<vmhook:hugepages[^:]*: size="3M" is not a huge page size/ },
  { hooks: "<vmhook:no-such-plugin/>", error: /no-such-plugin/ },
];

for (const [index, { hooks, error }] of BAD_CONFIGS.entries()) {
  test(`${hooks} makes virsh start fail with vmhook's message first and changes nothing`, async () => {
    const domain = await defineDomain(`bad-${index}`, { hooks });
    const [pool, files, logOffset] = [hugepages(), stateFiles(), logSize()];
    const started = await virsh("start", domain.name);
    assert.is.not(started.code, 0, "virsh start succeeded");
    // libvirt wraps the hook's stderr: "Hook script execution failed: ... unexpected exit status 1: vmhook: <cause>"
    assert.match(started.stderr, /Hook script execution failed.*exit status 1: vmhook: /);
    assert.match(started.stderr, error);
    assert.is((await virshOk("domstate", domain.name)).trim(), "shut off");
    assert.is(hugepages(), pool);
    assert.equal(stateFiles(), files);
    assert.match(logSince(logOffset), `[${domain.name} prepare begin] error: `);
    // libvirt still runs stopped and release after a failed prepare
    assert.equal(markerEvents(domain), ["prepare begin", "stopped end", "release end"]);
  });
}

run();
