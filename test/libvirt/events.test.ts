// libvirt's lifecycle events beyond a plain start and destroy, under a real
// libvirtd: a start that fails after prepare, managedsave and the start that
// restores it, and a QEMU that died while libvirtd was down. Each time the
// pool must come back by exactly the domain's 32 pages and the journal go.
import * as fs from "node:fs";
import * as assert from "uvu/assert";
import { defineDomain, hugepages, journalExists, libvirtSuite, logSince, logSize, markerEvents, restartLibvirtd, scratchDir, stateFiles, virsh, virshOk, waitUntil, type TestDomain } from "./fixture.ts";

const { test, run } = libvirtSuite("libvirt: events");

const HUGEPAGES = '<vmhook:hugepages size="2M"/>';
const PAGES_OF_64_MIB = 32;

function expectReleased(domain: TestDomain, pool: number): void {
  assert.is(hugepages(), pool, "pages in the pool after the domain stopped");
  assert.not.ok(journalExists(domain.uuid), `the journal of ${domain.name} is still there`);
}

test("QEMU exits at launch (a bad argument), after prepare and start: libvirt runs stopped and release, and the pool is back", async () => {
  const domain = await defineDomain("bad-qemu", { hooks: HUGEPAGES, qemuArgs: ["-no-such-option"] });
  const [pool, files, logOffset] = [hugepages(), stateFiles(), logSize()];
  const started = await virsh("start", domain.name);
  assert.is.not(started.code, 0, "virsh start succeeded");
  assert.match(started.stderr, "no-such-option");
  assert.equal(markerEvents(domain), ["prepare begin", "start begin", "stopped end", "release end"]);
  expectReleased(domain, pool);
  assert.equal(stateFiles(), files);
  assert.match(logSince(logOffset), `[${domain.name} release end] released: 1 change(s) undone`);
});

test("managedsave gives the pages back; virsh start restores (restore begin, then prepare) and takes them again; --force-boot starts afresh", async () => {
  const domain = await defineDomain("managedsave", { hooks: HUGEPAGES });
  const pool = hugepages();
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB);
  await virshOk("managedsave", domain.name);
  expectReleased(domain, pool);
  await virshOk("start", domain.name);
  assert.is((await virshOk("domstate", domain.name)).trim(), "running");
  assert.is(hugepages(), pool + PAGES_OF_64_MIB, "restored from the managed save");
  assert.equal(markerEvents(domain).slice(-4), ["restore begin", "prepare begin", "start begin", "started begin"]);
  await virshOk("managedsave", domain.name);
  expectReleased(domain, pool);
  await virshOk("start", "--force-boot", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB, "booted afresh");
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
});

test("a managed save whose saved XML vmhook refuses: virsh start says that XML is the saved one and how to change it, which a good definition does not; managedsave-define with a good one restores", async () => {
  const domain = await defineDomain("saved-refused", { hooks: HUGEPAGES });
  const pool = hugepages();
  await virshOk("start", domain.name);
  await virshOk("managedsave", domain.name);
  expectReleased(domain, pool);
  const saved = await virshOk("managedsave-dumpxml", domain.name);
  const file = (xml: string, name: string) => {
    const path = `${scratchDir()}/${domain.name}-${name}.xml`;
    fs.writeFileSync(path, xml);
    return path;
  };
  const refused = saved.replace(/size=(["'])2M\1/, "size='3M'");
  assert.is.not(refused, saved, "the saved XML carries the hugepages element");
  await virshOk("managedsave-define", domain.name, file(refused, "refused"));
  const files = stateFiles();
  for (const attempt of ["first", "second"]) {
    const started = await virsh("start", domain.name);
    assert.is.not(started.code, 0, `${attempt} start from the refused managed save succeeded`);
    assert.match(started.stderr, 'size="3M" is not a huge page size');
    assert.match(started.stderr, `to change that XML: virsh managedsave-edit ${domain.name} `);
    assert.match((await virshOk("dumpxml", "--inactive", domain.name)), /size=["']2M["']/, "the definition is good all along");
    assert.is(hugepages(), pool);
    assert.equal(stateFiles(), files);
  }
  await virshOk("managedsave-define", domain.name, file(saved, "saved"));
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB, "restored");
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
});

test("QEMU killed while libvirtd was down: the restarted libvirtd cannot reconnect, runs stopped and release, and the pool is back", async () => {
  const domain = await defineDomain("died-unwatched", { hooks: HUGEPAGES });
  const pool = hugepages();
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB);
  const qemu = Number(fs.readFileSync(`/run/libvirt/qemu/${domain.name}.pid`, "utf8").trim());
  const logOffset = logSize();
  await restartLibvirtd("SIGKILL", async () => {
    process.kill(qemu, "SIGKILL");
    await waitUntil(`QEMU (pid ${qemu}) is gone`, () => !fs.existsSync(`/proc/${qemu}`));
  });
  await waitUntil(`vmhook releases ${domain.name}`, () => logSince(logOffset).includes(`[${domain.name} release end]`));
  assert.is((await virshOk("domstate", domain.name)).trim(), "shut off");
  expectReleased(domain, pool);
  assert.not.match(logSince(logOffset), `[${domain.name} reconnect begin]`);
});

run();
