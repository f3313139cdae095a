// vmhook as libvirtd's real QEMU hook: the fast path for domains without
// metadata, and a bad config failing `virsh start` with vmhook's message.
import * as fs from "node:fs";
import * as assert from "uvu/assert";
import { binary, defineDomain, hugepages, libvirtSuite, logSince, logSize, markerEvents, restartLibvirtd, run as runProgram, stateFiles, virsh, virshOk } from "./fixture.ts";

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

test("a running domain is told by its QEMU's -uuid: recover leaves a claim of it whose journal is gone until it stops, and vmhook hook prepare is refused while it runs", async () => {
  const domain = await defineDomain("orphan");
  const claims = "/run/vmhook/claims.json";
  fs.mkdirSync("/run/vmhook", { recursive: true, mode: 0o700 });
  // A claim no plugin takes: if the judgement were wrong, recover would only say so, and change nothing.
  fs.writeFileSync(claims, JSON.stringify({ version: 1, claims: { "tape:0": { holders: [domain.uuid], original: null, waiting: [] } } }), { mode: 0o600 });
  try {
    await virshOk("start", domain.name);
    const running = await runProgram(binary(), ["recover"]);
    assert.match(running.stdout, `claim tape:0 of ${domain.uuid} (no journal of it is left): left as it is: it still runs`, running.stdout + running.stderr);
    const prepare = await runProgram(binary(), ["hook", domain.name, "prepare", "begin"]);
    assert.is(prepare.code, 1);
    assert.match(prepare.stderr, `vmhook: vmhook hook ${domain.name} prepare begin refused: ${domain.name} is running`);
    await virshOk("destroy", domain.name);
    const stopped = await runProgram(binary(), ["recover"]);
    assert.match(stopped.stdout, `claim tape:0 of ${domain.uuid} (no journal of it is left): not given back: no plugin of this vmhook takes claims on tape:0`);
  } finally {
    fs.rmSync(claims, { force: true });
  }
});

// libvirtd reads qemu.conf only when it starts; doctor places the running
// daemon's start from /proc (its start in ticks against /proc/uptime) and
// compares it with the file's last change (its ctime: nothing sets it back).
test("doctor's qemu.conf check against the running libvirtd: a warning naming its pid and the restart once qemu.conf changed after it started (its mtime kept, as cp -p keeps it); ok once libvirtd started again", async () => {
  const conf = "/etc/libvirt/qemu.conf";
  const finding = async () => {
    const doctor = await runProgram(binary(), ["doctor", "--json"]);
    return (JSON.parse(doctor.stdout) as { host: { check: string; status: string; reason: string; fix?: string }[] }).host.find((found) => found.check === "qemu.conf");
  };
  // A change that keeps the content and the mtime: only the ctime moves, to now, more than the check's second of slack after
  // the daemon's start (the suite's setup may have just started it).
  const before = fs.statSync(conf);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  fs.utimesSync(conf, before.atime, before.mtime);
  const edited = await finding();
  assert.is(edited?.status, "warn", JSON.stringify(edited));
  assert.match(edited!.reason, /^\/etc\/libvirt\/qemu\.conf changed at \S+, after libvirtd \(pid \d+\) started at \S+, which reads it only when it starts/);
  assert.match(edited!.fix ?? "", "when no VM runs, ");
  // What the fix says: libvirtd started again reads the file as it is.
  await restartLibvirtd();
  const restarted = await finding();
  assert.is(restarted?.status, "ok", JSON.stringify(restarted));
  assert.match(restarted!.reason, /^libvirtd \(pid \d+\) started at \S+, after \/etc\/libvirt\/qemu\.conf last changed/);
});

run();
