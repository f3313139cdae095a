// A VM's life beyond start and destroy under a real libvirtd: renamed while
// a crash left its journal; transient (virsh create), reset and suspended,
// reconnected to, and stopped by its QEMU quitting as a guest's shutdown
// ends it. Host state (the pool, a custom plugin's marker file, the journal)
// is checked before and after each.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import * as assert from "uvu/assert";
import { binary, defineDomain, hugepages, journalExists, libvirtSuite, logSince, logSize, markerEvents, restartLibvirtd, run as runProgram, scratchDir, virsh, virshOk, waitUntil, type TestDomain } from "./fixture.ts";

const { test, run } = libvirtSuite("libvirt: life");

const HUGEPAGES = '<vmhook:hugepages size="2M"/>';
const PAGES_OF_64_MIB = 32;

function expectReleased(domain: TestDomain, pool: number): void {
  assert.is(hugepages(), pool, "pages in the pool after the domain stopped");
  assert.not.ok(journalExists(domain.uuid), `the journal of ${domain.name} is still there`);
}

/** What a libvirtd that crashed while the domain ran leaves once its QEMU died too: no status XML, no pid file, and the domain's journal. */
async function crashWithDomain(domain: TestDomain): Promise<void> {
  const qemu = Number(fs.readFileSync(`/run/libvirt/qemu/${domain.name}.pid`, "utf8").trim());
  await restartLibvirtd("SIGKILL", async () => {
    for (const file of [`${domain.name}.xml`, `${domain.name}.pid`]) fs.rmSync(path.join("/run/libvirt/qemu", file), { force: true });
    process.kill(qemu, "SIGKILL");
    await waitUntil(`QEMU (pid ${qemu}) is gone`, () => !fs.existsSync(`/proc/${qemu}`));
  });
}

test("renamed (virsh domrename) after a crash left its journal: vmhook status names it by its new name, vmhook recover NEW gives its pages back", async () => {
  const domain = await defineDomain("before-rename", { hooks: HUGEPAGES });
  const renamed = { name: domain.name.replace("before", "after"), uuid: domain.uuid };
  const pool = hugepages();
  try {
    await virshOk("start", domain.name);
    await crashWithDomain(domain);
    assert.is((await virshOk("domstate", domain.name)).trim(), "shut off");
    assert.ok(journalExists(domain.uuid), "the crash left the journal");
    await virshOk("domrename", domain.name, renamed.name);

    const status = await runProgram(binary(), ["status"]);
    assert.match(status.stdout, `${renamed.name} (${domain.uuid}, ${domain.name} when it started): not running, yet vmhook still holds for it (vmhook recover ${renamed.name} gives it back)`, status.stdout);
    const recover = await runProgram(binary(), ["recover", renamed.name]);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.match(recover.stdout, `${renamed.name}: 1 change(s) undone`);
    expectReleased(renamed, pool);
  } finally {
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.uuid]);
  }
});

test("a hook of A killed as it renamed its first journal into place leaves the copy alone: vmhook recover A, run while B runs, removes it and leaves B's journal and pages", async () => {
  const a = await defineDomain("killed-first-write", { hooks: HUGEPAGES });
  const b = await defineDomain("running-beside", { hooks: HUGEPAGES });
  const pool = hugepages();
  const copy = `/run/vmhook/${a.uuid}.json.tmp`;
  try {
    await virshOk("start", b.name);
    assert.is(hugepages(), pool + PAGES_OF_64_MIB);
    // What the killed hook left: its domain's first journal, written in full and never renamed.
    const now = new Date().toISOString();
    fs.writeFileSync(copy, `${JSON.stringify({ version: 1, domain: { name: a.name, uuid: a.uuid }, phase: "preparing", pid: 1, createdAt: now, updatedAt: now, entries: [] }, null, 2)}\n`, { mode: 0o600 });
    const recover = await runProgram(binary(), ["recover", a.name]);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.not.ok(fs.existsSync(copy), `${copy} is still there`);
    assert.ok(journalExists(b.uuid), "B's journal stays");
    assert.is(hugepages(), pool + PAGES_OF_64_MIB, "B keeps its pages");
    await virshOk("destroy", b.name);
    expectReleased(b, pool);
  } finally {
    fs.rmSync(copy, { force: true });
    if ((await virsh("domstate", b.name)).stdout.trim() === "running") await virshOk("destroy", b.name);
  }
});

/** A custom executable plugin that marks a file named by the domain's UUID at prepare and removes it at undo, logging every call. */
/** `failAt`: an event at which the plugin replies with an error naming it. */
function installMarkPlugin(failAt?: string): { marked: (domain: TestDomain) => boolean; calls: () => string[]; remove: () => void } {
  const [marks, calls, file] = [path.join(scratchDir(), "marks"), path.join(scratchDir(), "mark-plugin.log"), "/etc/vmhook/plugins.d/mark"];
  fs.mkdirSync(marks, { recursive: true });
  fs.rmSync(calls, { force: true });
  const script = [
    "#!/bin/sh",
    `echo "$VMHOOK_EVENT" >> ${calls}`,
    'case "$VMHOOK_EVENT" in',
    ...(failAt ? [`  ${failAt}) echo '{"error":"mark: refused at ${failAt} on purpose"}' ;;`] : []),
    `  prepare) : > ${marks}/"$VMHOOK_DOMAIN_UUID"; echo '{"undo":"'"$VMHOOK_DOMAIN_UUID"'"}' ;;`,
    `  undo) rm -f ${marks}/"$VMHOOK_UNDO" ;;`,
    "esac",
    "",
  ].join("\n");
  fs.writeFileSync(file, script, { mode: 0o755 });
  return {
    marked: (domain) => fs.existsSync(path.join(marks, domain.uuid)),
    calls: () => (fs.existsSync(calls) ? fs.readFileSync(calls, "utf8").trim().split("\n") : []),
    // vmhook install made plugins.d (the suite's setup), and uninstall leaves it.
    remove: () => fs.rmSync(file, { force: true }),
  };
}

test("a plugin that fails at started (QEMU already runs): virsh start fails with its message, libvirt stops the domain and runs stopped and release, which give back what prepare took", async () => {
  const plugin = installMarkPlugin("started");
  const domain = await defineDomain("fails-started", { hooks: `${HUGEPAGES}<vmhook:plugin name="mark"/>` });
  const pool = hugepages();
  try {
    const started = await virsh("start", domain.name);
    assert.is.not(started.code, 0, "virsh start succeeded though the started hook failed");
    assert.match(started.stderr, /Hook script execution failed.*exit status 1: vmhook: plugin mark failed at started: mark: refused at started on purpose/);
    assert.is((await virshOk("domstate", domain.name)).trim(), "shut off");
    assert.equal(markerEvents(domain), ["prepare begin", "start begin", "started begin", "stopped end", "release end"]);
    assert.equal(plugin.calls(), ["prepare", "start", "started", "stopped", "undo"]);
    assert.not.ok(plugin.marked(domain), "release undid the plugin's prepare");
    expectReleased(domain, pool);
  } finally {
    await virsh("destroy", domain.name);
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.uuid]);
    plugin.remove();
  }
});

test("a transient domain (virsh create) with a custom plugin: reset, suspend and resume change nothing; a libvirtd restart only reconnects; its QEMU quitting (as at a guest's shutdown) runs stopped and release, which undo the plugin's mark and the pages, and nothing is left for vmhook", async () => {
  const plugin = installMarkPlugin();
  const domain = await defineDomain("transient", { hooks: `${HUGEPAGES}<vmhook:plugin name="mark"/>` });
  const file = path.join(scratchDir(), `${domain.name}-transient.xml`);
  fs.writeFileSync(file, await virshOk("dumpxml", domain.name));
  await virshOk("undefine", domain.name);
  const pool = hugepages();
  try {
    assert.not.ok(plugin.marked(domain));
    await virshOk("create", file);
    assert.ok(plugin.marked(domain), "the plugin marked the domain at prepare");
    assert.is(hugepages(), pool + PAGES_OF_64_MIB);
    assert.equal(plugin.calls(), ["prepare", "start", "started"]);
    const journal = fs.readFileSync(`/run/vmhook/${domain.uuid}.json`, "utf8");
    const qemuPid = fs.readFileSync(`/run/libvirt/qemu/${domain.name}.pid`, "utf8").trim();
    assert.match(JSON.parse(journal).qemu, new RegExp(`^${qemuPid}:\\d+$`), "started noted the QEMU libvirt's pid file names: only it keeps the journal");

    // No hook event: libvirt resets and pauses the guest inside its QEMU.
    await virshOk("reset", domain.name);
    await virshOk("suspend", domain.name);
    await virshOk("resume", domain.name);
    assert.equal(markerEvents(domain), ["prepare begin", "start begin", "started begin"]);
    assert.is(fs.readFileSync(`/run/vmhook/${domain.uuid}.json`, "utf8"), journal, "the journal as it was");
    assert.ok(plugin.marked(domain));
    assert.is(hugepages(), pool + PAGES_OF_64_MIB);

    let logOffset = logSize();
    await restartLibvirtd();
    // The kept hook runs after vmhook's has ended.
    await waitUntil(`libvirtd reconnects to ${domain.name}`, () => markerEvents(domain).includes("reconnect begin"));
    assert.match(logSince(logOffset), `[${domain.name} reconnect begin] reconnected: journal holds 2 change(s), phase running`);
    assert.equal(plugin.calls(), ["prepare", "start", "started", "reconnect"]);
    assert.ok(plugin.marked(domain));
    assert.is(hugepages(), pool + PAGES_OF_64_MIB);

    // QEMU exits by itself (the guest is gone): libvirt runs stopped and release from its event thread, after virsh has returned.
    logOffset = logSize();
    await virsh("qemu-monitor-command", domain.name, "--hmp", "quit"); // the monitor closes under virsh: it fails
    await waitUntil(`vmhook releases ${domain.name}`, () => logSince(logOffset).includes(`[${domain.name} release end] released: 2 change(s) undone`));
    assert.is((await virsh("domstate", domain.name)).code, 1, "the transient domain is gone");
    assert.equal(plugin.calls(), ["prepare", "start", "started", "reconnect", "stopped", "undo"]);
    assert.not.ok(plugin.marked(domain), "the mark is undone");
    expectReleased(domain, pool);
    const status = await runProgram(binary(), ["status"]);
    assert.not.match(status.stdout, domain.uuid);
    assert.not.match((await runProgram(binary(), ["recover"])).stdout, domain.name);
  } finally {
    await virsh("destroy", domain.name);
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.uuid]);
    plugin.remove();
  }
});

test("a start that fails after prepare while a process of another user runs with the VM's -uuid (ps shows every VM's): the release libvirt runs gives back what prepare took, as that process is no QEMU libvirt started", async () => {
  const plugin = "/etc/vmhook/plugins.d/fail-start";
  fs.writeFileSync(plugin, '#!/bin/sh\nif [ "$VMHOOK_EVENT" = start ]; then echo "fail-start: this start fails on purpose" >&2; exit 1; fi\necho "{}"\n', { mode: 0o755 });
  const domain = await defineDomain("fake-uuid", { hooks: `${HUGEPAGES}<vmhook:plugin name="fail-start"/>` });
  const pool = hugepages();
  const fake = spawn("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c", "import time; time.sleep(1e9)", "-uuid", domain.uuid], { stdio: "ignore" });
  try {
    await waitUntil("the other user's process runs with the -uuid", () => fs.existsSync(`/proc/${fake.pid}/cmdline`) && fs.readFileSync(`/proc/${fake.pid}/cmdline`, "utf8").includes(domain.uuid));
    const logOffset = logSize();
    const start = await virsh("start", domain.name);
    assert.is(start.code, 1, "the start failed");
    assert.match(start.stderr, "fail-start: this start fails on purpose");
    await waitUntil(`vmhook releases ${domain.name}`, () => logSince(logOffset).includes(`[${domain.name} release end]`));
    const log = logSince(logOffset);
    assert.match(log, `[${domain.name} release end] released: 1 change(s) undone, and 1 unfinished step(s)`, log);
    expectReleased(domain, pool);
  } finally {
    fake.kill("SIGKILL");
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.uuid]);
    fs.rmSync(plugin, { force: true });
  }
});

run();
