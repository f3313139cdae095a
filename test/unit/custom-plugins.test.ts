// Custom plugins through the hook: executables (protocol v1) and JavaScript
// modules, run for real under a temporary root, with their safety checks.
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { findCustomPlugin } from "../../lib/custom-plugins.ts";
import { VmhookError } from "../../lib/errors.ts";
import { RootedHost } from "../../lib/host.ts";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { assertPlanIsPrepare, plannedSteps } from "../helpers/plan.ts";
import { SimHost } from "../helpers/simhost.ts";
import { undoneText } from "../../lib/transaction.ts";

/** What decides where Bun keeps transpiled modules (lib/custom-plugins/trust.ts). */
const CACHE_VARIABLES = ["HOME", "XDG_CACHE_HOME", "BUN_RUNTIME_TRANSPILER_CACHE_PATH"];

const UUID = "6f1c2f0e-8a51-4a8e-9f7c-0d3b7c1e2a44";

function domainXml(metadata: string): string {
  return `<domain type="kvm"><name>vm</name><uuid>${UUID}</uuid><memory unit="MiB">512</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${metadata}</vmhook:hooks></metadata></domain>`;
}

/** A temporary root whose plugins really run (SimHost's exec only knows simulated programs). */
function pluginHost(): SimHost {
  const sim = new SimHost().dir("/var/log").dir(paths.pluginsDir);
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o755);
  return sim;
}

function install(sim: SimHost, file: string, content: string, mode = 0o755): string {
  const hostPath = `${paths.pluginsDir}/${file}`;
  fs.writeFileSync(sim.resolve(hostPath), content, { mode });
  fs.chmodSync(sim.resolve(hostPath), mode);
  // Executables run for real, under the root, as the hook would run them.
  sim.onExec(hostPath, (args, host, options) => RootedHost.prototype.exec.call(host, hostPath, args, options));
  return hostPath;
}

/** A shell plugin that appends "NAME EVENT undo=… interrupted=…" to $VMHOOK_ROOT/calls, then runs `body`. */
function shellPlugin(name: string, body = 'printf \'{"undo": "%s-state"}\\n\' "$1"'): string {
  return `#!/bin/sh
cat > "$VMHOOK_ROOT/stdin-${name}-$1.json"
echo "${name} $1 undo=\${VMHOOK_UNDO:-} interrupted=\${VMHOOK_INTERRUPTED:-}" >> "$VMHOOK_ROOT/calls"
${body}
`;
}

const calls = (sim: SimHost) => (fs.existsSync(sim.resolve("/calls")) ? fs.readFileSync(sim.resolve("/calls"), "utf8").trim().split("\n") : []);
const journalPath = (sim: SimHost) => sim.resolve(paths.journal(UUID));
const log = (sim: SimHost) => fs.readFileSync(sim.resolve(paths.log), "utf8");

test("executable: prepare gets the protocol request, its undo is journaled and handed back at release", async () => {
  const sim = pluginHost();
  install(sim, "notes", shellPlugin("notes", 'echo "working on $VMHOOK_DOMAIN_NAME" >&2; [ "$1" = prepare ] && echo \'{"undo": {"file": "/x"}}\'; exit 0'));
  const xml = domainXml('<vmhook:plugin name="notes" level="3">hello<vmhook:item id="a"/></vmhook:plugin>');

  const prepared = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  const request = JSON.parse(fs.readFileSync(sim.resolve("/stdin-notes-prepare.json"), "utf8"));
  assert.is(request.protocol, 1);
  assert.is(request.event, "prepare");
  assert.equal(request.domain, { name: "vm", uuid: UUID });
  assert.equal(request.config.attributes, { name: "notes", level: "3" });
  assert.is(request.config.text, "hello");
  assert.equal(request.config.children, [{ name: "item", attributes: { id: "a" }, text: "", children: [] }]);
  assert.match(request.config.xml, /^<vmhook:plugin [^>]*level="3"[^>]*>hello<vmhook:item id="a"\/><\/vmhook:plugin>$/);
  assert.match(request.domainXml, /<uuid>6f1c2f0e/);
  assert.equal(request.records, []);
  const journal = JSON.parse(fs.readFileSync(journalPath(sim), "utf8"));
  assert.equal(journal.entries.map((e: { plugin: string; state: string; undo: unknown }) => [e.plugin, e.state, e.undo]), [
    ["plugin:notes", "applied", { action: "run", event: "prepare", finished: true, undo: { file: "/x" } }],
  ]);
  assert.match(log(sim), "plugin:notes: working on vm");
  // vmhook status shows what the plugin said it holds, not only that it ran
  assert.match((await cli(["status"], sim)).stdout, `  - plugin:notes: run /etc/vmhook/plugins.d/notes prepare: holds {"file":"/x"}\n`);

  // started: called too; it reports nothing to undo, so the journal keeps only prepare's entry; it sees prepare's record
  assert.is((await runHookEvent(sim, "started", "begin", xml)).code, 0);
  assert.equal(JSON.parse(fs.readFileSync(sim.resolve("/stdin-notes-started.json"), "utf8")).records, [{ file: "/x" }]);
  assert.equal(JSON.parse(fs.readFileSync(journalPath(sim), "utf8")).entries.map((e: { event: string }) => e.event), ["prepare"]);

  const released = await runHookEvent(sim, "release", "end", xml);
  assert.is(released.code, 0, released.stderr);
  assert.equal(calls(sim), ["notes prepare undo= interrupted=", "notes started undo= interrupted=", 'notes undo undo={"file":"/x"} interrupted=']);
  const undoRequest = JSON.parse(fs.readFileSync(sim.resolve("/stdin-notes-undo.json"), "utf8"));
  assert.equal(undoRequest, { protocol: 1, event: "undo", domain: { name: "vm", uuid: UUID }, undo: { file: "/x" }, interrupted: false, of: "prepare" });
  assert.not.ok(fs.existsSync(journalPath(sim)), "journal removed after release");
  sim.cleanup();
});

test("executable: two attributes that would share one VMHOOK_ATTR_ variable (or one JSON key) fail prepare before the plugin runs", async () => {
  const sim = pluginHost();
  install(sim, "units", shellPlugin("units"));
  for (const [attributes, first, second, variable] of [
    ['units="backup.timer" UNITS="sshd.service"', "units", "UNITS", "VMHOOK_ATTR_UNITS"],
    ['a-b="1" a_b="2"', "a-b", "a_b", "VMHOOK_ATTR_A_B"],
    ['units="backup.timer" xmlns:x="urn:x" x:units="sshd.service"', "units", "x:units", "VMHOOK_ATTR_UNITS"],
  ]) {
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(`<vmhook:plugin name="units" ${attributes}/>`));
    assert.is(outcome.code, 1, attributes);
    assert.match(outcome.stderr.split("\n")[0]!, `attributes ${first} and ${second} would both reach the plugin as ${variable}; rename one of them`);
  }
  assert.equal(calls(sim), []);
  sim.cleanup();
});

test("executable: an error reply fails prepare with its message, and what it reported is undone", async () => {
  const sim = pluginHost();
  install(sim, "picky", shellPlugin("picky", '[ "$1" = prepare ] && echo \'{"error": "level=\\"9\\" is too high; use 1 to 5", "undo": "half-done"}\'; exit 0'));
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="picky" level="9"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, 'vmhook: plugin picky failed at prepare: level="9" is too high; use 1 to 5');
  assert.equal(calls(sim), ["picky prepare undo= interrupted=", "picky undo undo=half-done interrupted="]);
  assert.not.ok(fs.existsSync(journalPath(sim)));
  sim.cleanup();
});

test("executable: a non-zero exit fails prepare with its last stderr line; undo is called as interrupted", async () => {
  const sim = pluginHost();
  install(sim, "crashy", shellPlugin("crashy", '[ "$1" = prepare ] && { echo "step one done" >&2; echo "cannot open /dev/thing" >&2; exit 3; }; exit 0'));
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="crashy"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, /plugin crashy \(\/etc\/vmhook\/plugins.d\/crashy\) failed at prepare: exit status 3: cannot open \/dev\/thing/);
  assert.equal(calls(sim), ["crashy prepare undo= interrupted=", "crashy undo undo= interrupted=1"]);
  sim.cleanup();
});

test("executable: a plugin that hangs is killed at its timeout and prepare fails, even with a child holding its pipes", async () => {
  const sim = pluginHost();
  sim.file(paths.hostConfig, JSON.stringify({ plugins: { "plugin:slow": { timeoutSeconds: 0.5 } } }));
  install(sim, "slow", shellPlugin("slow", '[ "$1" = prepare ] && { sleep 3 & exec sleep 10; }; exit 0'));
  const started = Date.now();
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="slow"/>'));
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, "did not finish prepare within 0.5 s and was killed");
  assert.equal(calls(sim), ["slow prepare undo= interrupted=", "slow undo undo= interrupted=1"]);
  sim.cleanup();
});

test("executable: what a plugin killed at its timeout started (a subshell, a slow tool) is killed with it: it cannot redo its change after the undo", async () => {
  const sim = pluginHost().file("/flag", "off\n");
  sim.file(paths.hostConfig, JSON.stringify({ plugins: { "plugin:slow": { timeoutSeconds: 0.3 } } }));
  // At prepare: sets /flag, then a subshell (as a slow tool would) sets it again after 0.6 s; at undo: clears it.
  const body = `case "$1" in
    prepare) echo on > "$VMHOOK_ROOT/flag"; ( sleep 0.6; echo on > "$VMHOOK_ROOT/flag" ) ;;
    undo) echo off > "$VMHOOK_ROOT/flag" ;;
  esac`;
  install(sim, "slow", shellPlugin("slow", body));
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="slow"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, "did not finish prepare within 0.3 s and was killed");
  assert.equal(calls(sim), ["slow prepare undo= interrupted=", "slow undo undo= interrupted=1"]);
  assert.is(sim.read("/flag"), "off\n", "undone");
  await new Promise((resolve) => setTimeout(resolve, 800));
  assert.is(sim.read("/flag"), "off\n", "nothing the killed plugin started changed it again");
  sim.cleanup();
});

test("executable: a plugin's process its killed hook left running (the journal names it) is killed before its undo; one SIGKILL cannot reach (D state) holds the undo back, named, until it is gone", async () => {
  const sim = pluginHost();
  install(sim, "slow", shellPlugin("slow", "exit 0"));
  const xml = domainXml('<vmhook:plugin name="slow"/>');
  // A prepare killed while its plugin ran: the run journaled unfinished, with the plugin's process (pid 4242, started at 42420).
  const run = { action: "run", event: "prepare", finished: false, undo: null, process: "4242:42420" };
  const entry = { plugin: "plugin:slow", event: "prepare", description: "run /etc/vmhook/plugins.d/slow prepare", undo: run, state: "pending" as const, at: new Date().toISOString() };
  writeJournal(sim, { ...newJournal(sim, { name: "vm", uuid: UUID }), phase: "rollback-failed", pid: spawnSync("true").pid, entries: [entry] });
  const stat = (state: string) => sim.file("/proc/4242/stat", `4242 (slow) ${state} 1 4242 4242 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 42420 2314240 1`);

  stat("D");
  const held = await runHookEvent(sim, "release", "end", xml);
  assert.match(held.stderr, "plugin slow: its process pid 4242 (/etc/vmhook/plugins.d/slow), left running by a vmhook that was killed, is still there after SIGKILL (blocked in the kernel); its undo waits: once pid 4242 is gone, run vmhook recover vm");
  assert.equal(sim.killedGroups, [4242]);
  assert.equal(calls(sim), [], "no undo while it may still change the host");
  assert.ok(readJournal(sim, UUID), "kept for vmhook recover");

  stat("S");
  const recovered = await cli(["recover", "vm"], sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.match(recovered.stderr, "plugin slow: its process pid 4242, left running by a vmhook that was killed, is killed (with what it started) before the undo");
  assert.equal(sim.killedGroups, [4242, 4242]);
  assert.equal(calls(sim), ["slow undo undo= interrupted=1"]);
  assert.is(readJournal(sim, UUID), undefined);

  // A later process given pid 4242 is not the plugin's: never killed.
  writeJournal(sim, { ...newJournal(sim, { name: "vm", uuid: UUID }), phase: "rollback-failed", pid: spawnSync("true").pid, entries: [entry] });
  sim.file("/proc/4242/stat", "4242 (sshd) S 1 4242 4242 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 99999 2314240 1");
  assert.is((await cli(["recover", "vm"], sim)).code, 0);
  assert.equal(sim.killedGroups, [4242, 4242]);
  sim.cleanup();
});

test("executable: output larger than vmhook reads fails prepare saying so, not as a start failure", async () => {
  const sim = pluginHost();
  install(sim, "flood", shellPlugin("flood", '[ "$1" = prepare ] && head -c 20000000 /dev/zero | tr "\\000" x; exit 0'));
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="flood"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, "plugin flood (/etc/vmhook/plugins.d/flood) printed more than vmhook reads at prepare and was killed; print only the JSON reply on stdout");
  assert.equal(calls(sim), ["flood prepare undo= interrupted=", "flood undo undo= interrupted=1"]);
  sim.cleanup();
});

const UNRETURNABLE_UNDOS = [
  {
    // 200 KiB: past the kernel's limit for one environment string (128 KiB), so no undo call could ever start with it.
    why: "too large",
    name: "hoarder",
    prints: 'printf \'{"undo": "\'; head -c 204800 /dev/zero | tr "\\000" x; echo \'"}\'',
    message: "plugin hoarder returned an undo of 204800 bytes at prepare; one that large cannot be handed back as VMHOOK_UNDO (at most 131059 bytes): return less, such as the path of a file that holds the state",
  },
  {
    // Say, a process's /proc/PID/cmdline, whose arguments NULs separate: no environment string can hold a NUL.
    why: "a string holding a NUL",
    name: "cmdline",
    prints: 'echo \'{"undo": "backupd\\u0000--nightly"}\'',
    message: "plugin cmdline returned an undo string holding a NUL character at prepare, which VMHOOK_UNDO cannot carry: return it as a JSON array or object (it then comes back as JSON)",
  },
];

for (const { why, name, prints, message } of UNRETURNABLE_UNDOS) {
  test(`executable: an undo that cannot be handed back as VMHOOK_UNDO (${why}) fails prepare at once, and the plugin is called to undo as interrupted`, async () => {
    const sim = pluginHost();
    install(sim, name, shellPlugin(name, `[ "$1" = prepare ] && { ${prints}; }; exit 0`));
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(`<vmhook:plugin name="${name}"/>`));
    assert.is(outcome.code, 1);
    assert.match(outcome.stderr.split("\n")[0]!, message);
    assert.equal(calls(sim), [`${name} prepare undo= interrupted=`, `${name} undo undo= interrupted=1`]);
    assert.not.ok(fs.existsSync(journalPath(sim)), "nothing journaled that no release could give back");
    sim.cleanup();
  });
}

test("executable: output that is not JSON fails prepare and says what to print", async () => {
  const sim = pluginHost();
  install(sim, "chatty", shellPlugin("chatty", '[ "$1" = prepare ] && echo "all good!"; exit 0'));
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="chatty"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, 'printed something that is not JSON at prepare: "all good!"; print {"undo": …}');
  assert.equal(calls(sim), ["chatty prepare undo= interrupted=", "chatty undo undo= interrupted=1"]);
  sim.cleanup();
});

test("safety: a plugins directory others can write is refused, naming it and its mode; nothing runs", async () => {
  const sim = pluginHost();
  install(sim, "notes", shellPlugin("notes"));
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o777);
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="notes"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, "refusing to load plugins: /etc/vmhook/plugins.d has mode 0777: group or others can write it");
  assert.match(outcome.stderr, "chmod go-w /etc/vmhook/plugins.d");
  assert.equal(calls(sim), []);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});


test("safety: a writable or symlinked /etc/vmhook is refused too: whoever writes it can swap plugins.d", async () => {
  const sim = pluginHost();
  install(sim, "notes", shellPlugin("notes"));
  const xml = domainXml('<vmhook:plugin name="notes"/>');
  fs.chmodSync(sim.resolve("/etc/vmhook"), 0o777);
  let outcome = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(outcome.code, 1);
  // The hook first finds the host settings missing there, which anyone could have removed; the plugins directory is refused as well.
  assert.match(outcome.stderr, `refusing the host settings: there is no ${paths.hostConfig} (its defaults apply, so nobody but root may be able to remove it), and /etc/vmhook has mode 0777`);
  assert.throws(() => findCustomPlugin(sim, "notes"), (error: Error) => error.message.includes("refusing to load plugins: /etc/vmhook has mode 0777: group or others can write it, and plugins run as root; run chmod go-w /etc/vmhook"));

  // /etc/vmhook as a link to a directory someone else controls
  fs.chmodSync(sim.resolve("/etc/vmhook"), 0o755);
  fs.renameSync(sim.resolve("/etc/vmhook"), sim.resolve("/elsewhere"));
  fs.symlinkSync(sim.resolve("/elsewhere"), sim.resolve("/etc/vmhook"));
  outcome = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `refusing the host settings: there is no ${paths.hostConfig} (its defaults apply, so nobody but root may be able to remove it), and /etc/vmhook is a symlink`);
  assert.throws(() => findCustomPlugin(sim, "notes"), (error: Error) => error.message.includes("refusing to load plugins: /etc/vmhook is a symlink"));
  assert.equal(calls(sim), []);
  sim.cleanup();
});
test("safety: a group-writable or non-root plugin file is refused, naming the path, the mode or the owner", async () => {
  const sim = pluginHost();
  const file = install(sim, "notes", shellPlugin("notes"), 0o775);
  const xml = domainXml('<vmhook:plugin name="notes"/>');
  let outcome = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `refusing to run plugin notes: ${file} has mode 0775`);

  fs.chmodSync(sim.resolve(file), 0o755);
  fs.chownSync(sim.resolve(file), 1000, 1000);
  outcome = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `${file} is owned by uid 1000, not root; plugins run as root, so run chown root:root ${file}`);
  assert.equal(calls(sim), []);
  sim.cleanup();
});

/** statfs(2) f_types (linux/magic.h): where stat is a daemon's or a server's word, and local ones. */
const FUSE = 0x65735546;
const FOREIGN = [
  { name: "fuse", type: FUSE, whose: "its daemon's word (any user may run one)" },
  { name: "nfs", type: 0x6969, whose: "the server's word" },
  { name: "cifs", type: 0xff534d42, whose: "the server's and the mount options' word" },
  { name: "smb3", type: 0xfe534d42, whose: "the server's and the mount options' word" },
  { name: "9p", type: 0x01021997, whose: "the server's word" },
  { name: "ceph", type: 0x00c36400, whose: "the cluster's word" },
  { name: "afs", type: 0x6b414653, whose: "the server's word" },
  { name: "coda", type: 0x73757245, whose: "its cache manager's word (a daemon)" },
];
const LOCAL = [
  { name: "ext4", type: 0xef53 },
  { name: "btrfs", type: 0x9123683e },
  { name: "xfs", type: 0x58465342 },
  { name: "tmpfs", type: 0x01021994 },
  { name: "overlay", type: 0x794c7630 },
];

for (const { name, type, whose } of FOREIGN) {
  test(`safety: a plugins directory on ${name}, where stat says root and 0755 at another's word (a user's bindfs -u 0, a server), is refused naming the path, the file system and the fix; nothing runs`, async () => {
    const sim = pluginHost();
    install(sim, "notes", shellPlugin("notes"));
    sim.mountFileSystem(paths.pluginsDir, type);
    const before = sim.snapshot();
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="notes"/>'));
    assert.is(outcome.code, 1);
    assert.match(
      outcome.stderr,
      `refusing to load plugins: ${paths.pluginsDir} is on a file system of type ${name}: the owner and mode stat shows there are ${whose}, not this kernel's; plugins run as root, so move it to a local file system that root owns (a disk, not a FUSE or network mount)`,
    );
    assert.equal(calls(sim), []);
    assert.equal(sim.snapshot(), before);
    sim.cleanup();
  });
}

test("safety: a FUSE mount anywhere on the way is refused: on /etc above the plugins directory, and on the plugin file alone", async () => {
  const sim = pluginHost();
  const file = install(sim, "notes", shellPlugin("notes"));
  const xml = domainXml('<vmhook:plugin name="notes"/>');
  sim.mountFileSystem("/etc", FUSE);
  let outcome = await runHookEvent(sim, "prepare", "begin", xml);
  // Walked from /, as the kernel looks it up: the first directory on the way that root cannot trust is named.
  assert.match(outcome.stderr, `refusing the host settings: there is no ${paths.hostConfig} (its defaults apply, so nobody but root may be able to remove it), and /etc is on a file system of type fuse`);
  assert.throws(() => findCustomPlugin(sim, "notes"), (error: Error) => error.message.includes(`refusing to load plugins: ${paths.pluginsDir} is on a file system of type fuse`));

  const onFile = pluginHost();
  install(onFile, "notes", shellPlugin("notes"));
  onFile.mountFileSystem(file, FUSE);
  outcome = await runHookEvent(onFile, "prepare", "begin", xml);
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `refusing to run plugin notes: ${file} is on a file system of type fuse`);
  assert.equal(calls(sim), []);
  assert.equal(calls(onFile), []);
  sim.cleanup();
  onFile.cleanup();
});

test("safety: a plugin on a local file system (ext4, btrfs, xfs, tmpfs, overlay) runs: their owners are this kernel's", async () => {
  for (const { name, type } of LOCAL) {
    const sim = pluginHost();
    install(sim, "notes", shellPlugin("notes"));
    sim.mountFileSystem("/", type);
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="notes"/>'));
    assert.is(outcome.code, 0, `${name}: ${outcome.stderr}`);
    assert.equal(calls(sim), ["notes prepare undo= interrupted="], name);
    sim.cleanup();
  }
});

test("safety: host settings and policy files on a FUSE mount are refused as their owner's files are: whoever answers stat there writes what root runs", async () => {
  const sim = pluginHost();
  sim.file(paths.hostConfig, '{"deadlineSeconds": 60}');
  sim.mountFileSystem("/etc/vmhook", FUSE);
  let outcome = await runHookEvent(sim, "prepare", "begin", domainXml("<vmhook:hugepages/>"));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `refusing the host settings: /etc/vmhook is on a file system of type fuse`);

  // Missing there, it is refused as well: the daemon may hide root's file as readily as fake its owner.
  fs.rmSync(sim.resolve(paths.hostConfig));
  outcome = await runHookEvent(sim, "prepare", "begin", domainXml("<vmhook:hugepages/>"));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `refusing the host settings: there is no ${paths.hostConfig} (its defaults apply, so nobody but root may be able to remove it), and /etc/vmhook is on a file system of type fuse`);

  const policyOnFuse = pluginHost();
  policyOnFuse.file(paths.policy, "{}").mountFileSystem(paths.policy, FUSE);
  outcome = await runHookEvent(policyOnFuse, "prepare", "begin", domainXml('<vmhook:plugin name="notes"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, `refusing the host policy: ${paths.policy} is on a file system of type fuse`);
  sim.cleanup();
  policyOnFuse.cleanup();
});

test("safety: a named plugin that is missing fails prepare naming the directory searched; names are never paths", async () => {
  const sim = pluginHost();
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="nowhere"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, '<vmhook:plugin name="nowhere">: plugin nowhere is not installed: searched /etc/vmhook/plugins.d for nowhere, nowhere.js, nowhere.mjs');
  assert.throws(() => findCustomPlugin(sim, "../../bin/sh"), /is not a plugin name .*never paths/);
  const pathName = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="/bin/sh"/>'));
  assert.is(pathName.code, 1);
  assert.match(pathName.stderr, 'name="/bin/sh" is not a plugin name');
  sim.cleanup();
});

test("safety: NAME.js and NAME.mjs are plugin NAME's module, as vmhook plugins lists them: a domain cannot name the file itself and have it run as an executable, past a module's checks (what it imports, Bun's cache)", async () => {
  const sim = pluginHost();
  // A module installed 0755 (as the not-installed message advises) that also starts with a #! line.
  install(sim, "notes.mjs", `${shellPlugin("notes.mjs")}\nexport default {};\n`);
  for (const name of ["notes.mjs", "notes.js"]) {
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(`<vmhook:plugin name="${name}"/>`));
    assert.is(outcome.code, 1, name);
    assert.match(outcome.stderr.split("\n")[0]!, `name="${name}" is not a plugin name: at most 251 lower-case letters, digits, ".", "_" and "-", starting with a letter or digit, not ending in .js or .mjs`);
  }
  assert.throws(() => findCustomPlugin(sim, "notes.mjs"), /is not a plugin name .*not ending in \.js or \.mjs.*never paths/);
  assert.equal(calls(sim), []);
  sim.cleanup();
});

test("safety: a plugin name too long to be a file name (NAME.mjs over 255 bytes) is refused as a name, not as a file vmhook cannot stat", async () => {
  const sim = pluginHost();
  const longest = "a".repeat(251);
  const fits = await runHookEvent(sim, "prepare", "begin", domainXml(`<vmhook:plugin name="${longest}"/>`));
  assert.is(fits.code, 1);
  assert.match(fits.stderr.split("\n")[0]!, `plugin ${longest} is not installed: searched /etc/vmhook/plugins.d for ${longest}, ${longest}.js, ${longest}.mjs`);
  const tooLong = `${longest}a`;
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(`<vmhook:plugin name="${tooLong}"/>`));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, `name="${tooLong.slice(0, 40)}…" (252 characters) is not a plugin name: at most 251 lower-case letters`);
  assert.throws(() => findCustomPlugin(sim, tooLong), /is not a plugin name \(at most 251 lower-case letters/);
  sim.cleanup();
});

test("undo order: custom plugins are undone in reverse order of their steps", async () => {
  const sim = pluginHost();
  install(sim, "first", shellPlugin("first"));
  install(sim, "second", shellPlugin("second"));
  const xml = domainXml('<vmhook:plugin name="first"/><vmhook:plugin name="second"/>');
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.equal(calls(sim), [
    "first prepare undo= interrupted=",
    "second prepare undo= interrupted=",
    "second undo undo=prepare-state interrupted=",
    "first undo undo=prepare-state interrupted=",
  ]);
  sim.cleanup();
});

test("a custom plugin's parse refusing its element at migrate or restore says where that XML is fixed, as a built-in's refusal does", async () => {
  const sim = pluginHost();
  // README's marker: its parse throws a plain Error naming the element and the fix.
  install(sim, "marker.mjs", `export default { name: "marker", summary: "x", parse(elements) { if (!elements[0].getAttribute("text")) throw new Error('<vmhook:plugin name="marker">: give text="…"'); return {}; }, plan: {}, actions: {} };\n`, 0o644);
  const xml = domainXml('<vmhook:plugin name="marker"/>');
  const migrate = await runHookEvent(sim, "migrate", "begin", xml);
  assert.is(migrate.code, 1);
  assert.is(migrate.stderr.split("\n")[0], 'vmhook: <vmhook:plugin name="marker">: give text="…"');
  assert.match(migrate.stderr, "the XML checked is vm's as it runs on the source host: fix it there");
  const restore = await runHookEvent(sim, "restore", "begin", xml);
  assert.is(restore.code, 1);
  assert.match(restore.stderr, "the XML checked is the one saved with vm's state (virsh managedsave, virsh save), not vm's definition");
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("a JS plugin's apply that fails having changed nothing, as its unchangedAfterFailure reads the host: the start says the host was left as it was (0 change(s) undone) and nothing is undone; one that finds a change is undone", async () => {
  const sim = pluginHost();
  // Opens a gate file, and fails: before opening it while /blocked exists, after opening it otherwise.
  const gate = `export default { name: "gate", summary: "x", parse: () => ({}),
    plan: { prepare: () => [{ action: "open", record: { action: "open" }, description: "open the gate" }] },
    actions: { open: {
      check: (record) => record,
      apply(record, ctx) { if (!ctx.host.exists("/blocked")) ctx.host.createFile("/gate", "open"); throw new Error("the gate did not answer"); },
      unchangedAfterFailure: (record, ctx) => !ctx.host.exists("/gate"),
      undo(record, ctx) { ctx.host.remove("/gate"); ctx.host.createFile("/undone", "yes"); },
    } } };\n`;
  install(sim, "gate.mjs", gate, 0o644);
  const xml = domainXml('<vmhook:plugin name="gate"/>');
  sim.file("/blocked", "");
  const blocked = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(blocked.code, 1);
  assert.is(blocked.stderr.split("\n")[0], "vmhook: plugin:gate: the gate did not answer");
  assert.match(blocked.stderr, "the host was left as it was (0 change(s) undone), so there is nothing to recover");
  assert.not.ok(sim.exists("/undone"), "nothing was undone");
  assert.equal(sim.stateFiles(), []);
  sim.remove("/blocked");
  const opened = await runHookEvent(sim, "prepare", "begin", xml);
  assert.match(opened.stderr, `the host was left as it was (${undoneText({ undone: 0, unfinished: 1 })}), so there is nothing to recover`);
  assert.equal([sim.exists("/gate"), sim.exists("/undone")], [false, true]);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("a JS plugin's unchangedAfterFailure written as an async function is no answer: the change is counted and undone, and the log says why", async () => {
  const sim = pluginHost();
  const gate = `export default { name: "gate", summary: "x", parse: () => ({}),
    plan: { prepare: () => [{ action: "open", record: { action: "open" }, description: "open the gate" }] },
    actions: { open: {
      check: (record) => record,
      apply() { throw new Error("the gate did not answer"); },
      unchangedAfterFailure: async () => true,
      undo(record, ctx) { ctx.host.createFile("/undone", "yes"); },
    } } };\n`;
  install(sim, "gate.mjs", gate, 0o644);
  const failed = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="gate"/>'));
  assert.match(failed.stderr, `the host was left as it was (${undoneText({ undone: 0, unfinished: 1 })}), so there is nothing to recover`);
  assert.ok(sim.exists("/undone"), "undone");
  assert.match(sim.read("/var/log/vmhook.log"), "plugin:gate: open the gate: its unchangedAfterFailure answered with a promise (an async function), which is no answer: it must return true or false at once, so the step stays in the journal");
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("stopped: a plugin whose stopped planner throws or whose stopped run fails keeps no other plugin from its stopped call; the failure is still reported", async () => {
  const sim = pluginHost();
  install(sim, "broken.mjs", `export default { name: "broken", summary: "x", parse: () => ({}), plan: { stopped: () => { throw new Error("cannot tell"); } }, actions: {} };\n`, 0o644);
  install(sim, "failing", shellPlugin("failing", '[ "$1" = stopped ] && { echo "its daemon is gone" >&2; exit 3; }; exit 0'));
  install(sim, "last", shellPlugin("last", "exit 0"));
  const xml = domainXml('<vmhook:plugin name="broken"/><vmhook:plugin name="failing"/><vmhook:plugin name="last"/>');
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  const stopped = await runHookEvent(sim, "stopped", "end", xml);
  assert.is(stopped.code, 0);
  assert.equal(
    calls(sim).filter((call) => call.includes(" stopped ")),
    ["failing stopped undo= interrupted=", "last stopped undo= interrupted="],
  );
  assert.match(stopped.stderr.split("\n")[0]!, "vmhook: plugin:broken: cannot tell");
  assert.match(log(sim), "plugin failing (/etc/vmhook/plugins.d/failing) failed at stopped: exit status 3: its daemon is gone");
  sim.cleanup();
});

test("stopped: a plugin whose stopped planner returns a step it does not declare, or a record its check refuses, keeps no other plugin from its stopped call", async () => {
  const sim = pluginHost();
  install(sim, "broken.mjs", `export default { name: "broken", summary: "x", parse: () => ({}), plan: { stopped: () => { throw new Error("cannot tell"); } }, actions: {} };\n`, 0o644);
  const step = `[{ action: "note", record: { action: "note" }, description: "note the stop" }]`;
  install(sim, "typo.mjs", `export default { name: "typo", summary: "x", parse: () => ({}), plan: { stopped: () => ${step} }, actions: {} };\n`, 0o644);
  const refusing = `{ note: { check: () => { throw new Error("a note record needs a file"); }, apply: () => {}, undo: () => {} } }`;
  install(sim, "strict.mjs", `export default { name: "strict", summary: "x", parse: () => ({}), plan: { stopped: () => ${step} }, actions: ${refusing} };\n`, 0o644);
  install(sim, "last", shellPlugin("last", "exit 0"));
  const xml = domainXml(["broken", "typo", "strict", "last"].map((name) => `<vmhook:plugin name="${name}"/>`).join(""));
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  const stopped = await runHookEvent(sim, "stopped", "end", xml);
  assert.is(stopped.code, 0);
  assert.equal(calls(sim), ["last prepare undo= interrupted=", "last stopped undo= interrupted="]);
  assert.match(stopped.stderr.split("\n")[0]!, "vmhook: plugin:broken: cannot tell");
  assert.match(log(sim), `plugin:typo planned a step "note the stop" with action note, which it does not declare`);
  assert.match(log(sim), "plugin:strict: a note record needs a file");
  sim.cleanup();
});

test("stopped: a plugin whose stopped planner runs out the deadline is logged by name, though the event then ends on the deadline", async () => {
  const sim = pluginHost();
  install(sim, "hangs.mjs", `export default { name: "hangs", summary: "x", parse: () => ({}), plan: { stopped: () => new Promise(() => {}) }, actions: {} };\n`, 0o644);
  install(sim, "last", shellPlugin("last", "exit 0"));
  const xml = domainXml('<vmhook:plugin name="hangs"/><vmhook:plugin name="last"/>');
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  // Only the stopped event gets 1 s: the prepare, which runs "last" as a process, may take longer than that on a loaded host.
  sim.file(paths.hostConfig, '{"deadlineSeconds": 1}');
  const stopped = await runHookEvent(sim, "stopped", "end", xml);
  assert.is(stopped.code, 0);
  assert.match(stopped.stderr.split("\n")[0]!, "vmhook: vmhook ran out of time (deadline 1 s) while planning plugin:last");
  assert.match(log(sim), /error: plugin:hangs did not finish planning stopped within [\d.]+ s \(its planner\) and was abandoned/);
  sim.cleanup();
});

test("undo order: a built-in between two custom plugins is undone between them, in reverse", async () => {
  const sim = pluginHost();
  const kernel = new HugepageKernel(sim);
  // Each custom plugin notes the 2M pool's size when it runs: that places the built-in's step and undo.
  const notePool = 'echo "$1 pool=$(cat "$VMHOOK_ROOT/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")" >> "$VMHOOK_ROOT/pool"; echo \'{"undo": "x"}\'';
  install(sim, "first", shellPlugin("first", notePool));
  install(sim, "second", shellPlugin("second", notePool));
  const xml = domainXml('<vmhook:plugin name="first"/><vmhook:hugepages/><vmhook:plugin name="second"/>').replace("<metadata>", "<memoryBacking><hugepages/></memoryBacking><metadata>");
  const prepared = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  assert.is(kernel.pool(2048), 256);
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.is(kernel.pool(2048), 0);
  assert.equal(calls(sim).map((line) => line.split(" ").slice(0, 2).join(" ")), ["first prepare", "second prepare", "second undo", "first undo"]);
  assert.equal(fs.readFileSync(sim.resolve("/pool"), "utf8").trim().split("\n"), ["prepare pool=0", "prepare pool=256", "undo pool=256", "undo pool=0"]);
  sim.cleanup();
});

test("undo order: when the second plugin fails, the first one's change is rolled back", async () => {
  const sim = pluginHost();
  install(sim, "first", shellPlugin("first"));
  install(sim, "second", shellPlugin("second", '[ "$1" = prepare ] && exit 1; exit 0'));
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="first"/><vmhook:plugin name="second"/>'));
  assert.is(outcome.code, 1);
  assert.equal(calls(sim), [
    "first prepare undo= interrupted=",
    "second prepare undo= interrupted=",
    "second undo undo= interrupted=1",
    "first undo undo=prepare-state interrupted=",
  ]);
  sim.cleanup();
});

const MODULE_PLUGIN = `
import * as fs from "node:fs";
export default {
  name: "marker",
  summary: "writes a marker file",
  usage: '<vmhook:plugin name="marker" text="…"/>',
  parse(elements) {
    const text = elements[0].getAttribute("text");
    if (!text) throw new Error('<vmhook:plugin name="marker">: give text="…"');
    return { text };
  },
  async prepare(ctx) {
    await ctx.step("write /marker", { action: "remove", path: "/marker" }, () => {
      fs.writeFileSync(ctx.host.resolve("/marker"), ctx.config.text);
    });
  },
  undo(record, ctx) {
    ctx.host.remove(record.path);
  },
};
`;

test("module: a .mjs plugin runs through the same transaction; its parse errors abort prepare", async () => {
  const sim = pluginHost();
  install(sim, "marker.mjs", MODULE_PLUGIN, 0o644);
  const xml = domainXml('<vmhook:plugin name="marker" text="hi"/>');
  const prepared = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  assert.is(fs.readFileSync(sim.resolve("/marker"), "utf8"), "hi");
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.not.ok(fs.existsSync(sim.resolve("/marker")));

  const bad = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="marker"/>'));
  assert.is(bad.code, 1);
  assert.match(bad.stderr, 'vmhook: <vmhook:plugin name="marker">: give text="…"');
  sim.cleanup();
});

test("module: with HOME, XDG_CACHE_HOME or BUN_RUNTIME_TRANSPILER_CACHE_PATH in a directory another user writes (sudo -E), a module plugin is refused before it loads: Bun would run what that user left in its transpiler cache", async () => {
  const sim = pluginHost();
  install(sim, "marker.mjs", MODULE_PLUGIN, 0o644);
  const xml = domainXml('<vmhook:plugin name="marker" text="hi"/>');
  // A user's home: theirs, below a directory everyone writes, as /home/alice is alice's.
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-user-home-"));
  fs.chownSync(home, 1000, 1000);
  const saved = Object.fromEntries(CACHE_VARIABLES.map((name) => [name, process.env[name]]));
  const setEnv = (values: Record<string, string | undefined>) => {
    for (const name of CACHE_VARIABLES) {
      if (values[name] === undefined) delete process.env[name];
      else process.env[name] = values[name];
    }
  };
  try {
    for (const [values, cache, variable] of [
      [{ HOME: home }, `${home}/.bun/install/cache/@t@`, "HOME"],
      [{ HOME: "/root", XDG_CACHE_HOME: `${home}/.cache` }, `${home}/.cache/bun/@t@`, "XDG_CACHE_HOME"],
      [{ HOME: "/root", BUN_RUNTIME_TRANSPILER_CACHE_PATH: `${home}/cache` }, `${home}/cache`, "BUN_RUNTIME_TRANSPILER_CACHE_PATH"],
    ] as const) {
      setEnv(values);
      const refused = await runHookEvent(sim, "prepare", "begin", xml);
      assert.is(refused.code, 1, variable);
      assert.match(refused.stderr, `vmhook: plugin marker: not loading /etc/vmhook/plugins.d/marker.mjs: Bun, which runs vmhook, keeps the modules it transpiles in ${cache} (from ${variable}=`, variable);
      assert.match(refused.stderr, "BUN_RUNTIME_TRANSPILER_CACHE_PATH=0", variable);
      assert.not.ok(fs.existsSync(sim.resolve("/marker")), variable);
    }
    // The cache turned off: nothing there is read, the plugin runs.
    setEnv({ HOME: home, BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0" });
    const prepared = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is(fs.readFileSync(sim.resolve("/marker"), "utf8"), "hi");
    assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  } finally {
    setEnv(saved);
    fs.rmSync(home, { recursive: true, force: true });
    sim.cleanup();
  }
});

test("module: a transpiler cache reached through a symlink in a directory another user writes is refused, though its target is root's alone: that user can point the link elsewhere between the check and Bun's read", async () => {
  const sim = pluginHost();
  install(sim, "marker.mjs", MODULE_PLUGIN, 0o644);
  const xml = domainXml('<vmhook:plugin name="marker" text="hi"/>');
  // A user's home below directories root's alone (/run, not a /tmp everyone writes), as /home/alice
  const home = fs.mkdtempSync("/run/vmhook-user-home-");
  fs.chownSync(home, 1000, 1000);
  const rootsCache = fs.mkdtempSync("/run/vmhook-test-cache-");
  fs.mkdirSync(`${rootsCache}/install/cache/@t@`, { recursive: true });
  fs.symlinkSync(rootsCache, `${home}/.bun`);
  fs.lchownSync(`${home}/.bun`, 1000, 1000);
  const rootsHome = fs.mkdtempSync("/run/vmhook-test-home-");
  fs.symlinkSync(rootsCache, `${rootsHome}/.bun`);
  const saved = Object.fromEntries(CACHE_VARIABLES.map((name) => [name, process.env[name]]));
  try {
    for (const name of CACHE_VARIABLES) delete process.env[name];
    process.env.HOME = home;
    const refused = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, `keeps the modules it transpiles in ${home}/.bun/install/cache/@t@ (from HOME=${home}), and ${home} is owned by uid 1000`);
    assert.not.ok(fs.existsSync(sim.resolve("/marker")));
    // The same link in a directory root's alone, as an ostree host's /root -> var/roothome: followed, its target checked.
    process.env.HOME = rootsHome;
    const prepared = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
    // ... and a target another user may change is refused through it
    fs.chownSync(rootsCache, 1000, 1000);
    const throughLink = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(throughLink.code, 1, throughLink.stderr);
    assert.match(throughLink.stderr, `and ${rootsCache} is owned by uid 1000`);
  } finally {
    for (const name of CACHE_VARIABLES) {
      if (saved[name] === undefined) delete process.env[name];
      else process.env[name] = saved[name];
    }
    fs.rmSync(home, { recursive: true, force: true });
    fs.rmSync(rootsCache, { recursive: true, force: true });
    fs.rmSync(rootsHome, { recursive: true, force: true });
    sim.cleanup();
  }
});

test("module: a transpiler cache below a sticky directory (/tmp) is walked as a --root tree's program is: root's own cache there is used; one still to be created in /tmp, one reached through another user's symlink there, and /tmp itself through root's link are refused", async () => {
  const sim = pluginHost();
  install(sim, "marker.mjs", MODULE_PLUGIN, 0o644);
  const xml = domainXml('<vmhook:plugin name="marker" text="hi"/>');
  // Root's alone, in /tmp: only root may rename or remove it there (the sticky bit).
  const rootsCache = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-roots-cache-"));
  const link = `${rootsCache}-link`;
  fs.symlinkSync(rootsCache, link);
  fs.lchownSync(link, 1000, 1000);
  const notYet = `${rootsCache}-not-yet`;
  const toTmp = `${rootsCache}-to-tmp`;
  const saved = process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH;
  try {
    process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = rootsCache;
    const prepared = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
    // Anyone may create the name in /tmp before Bun does: where the cache is still to be made, the directory must be root's alone, sticky or not.
    process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = notYet;
    const refused = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, `keeps the modules it transpiles in ${notYet} (from BUN_RUNTIME_TRANSPILER_CACHE_PATH=${notYet}), and ${os.tmpdir()} has mode 01777: group or others can write it`);
    assert.match(refused.stderr, "run vmhook with root's own environment (sudo -i, or sudo without -E), or with BUN_RUNTIME_TRANSPILER_CACHE_PATH=0");
    // Its owner may replace a symlink in /tmp, whatever it points to.
    process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = link;
    const throughLink = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(throughLink.code, 1, throughLink.stderr);
    assert.match(throughLink.stderr, `and ${link} is a symlink owned by uid 1000, not root`);
    // A link of root's that ends in /tmp itself: there everyone could write the cache.
    fs.symlinkSync(`${os.tmpdir()}/.`, toTmp);
    process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = toTmp;
    const inTmp = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(inTmp.code, 1, inTmp.stderr);
    assert.match(inTmp.stderr, `and ${os.tmpdir()} has mode 01777: group or others can write it`);
    assert.not.ok(fs.existsSync(sim.resolve("/marker")));
  } finally {
    if (saved === undefined) delete process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH;
    else process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = saved;
    for (const each of [rootsCache, link, notYet, toTmp]) fs.rmSync(each, { recursive: true, force: true });
    sim.cleanup();
  }
});

/** A plugin that writes /marker with the text its helper module exports; the helper leaves helper-ran beside itself when it is evaluated. */
const IMPORTING_PLUGIN = (specifier: string) => `import { text } from ${JSON.stringify(specifier)};
export default { name: "marker", summary: "marks", parse: () => ({}),
  plan: { prepare: () => [{ action: "mark", record: { action: "mark" }, description: "write /marker" }] },
  actions: { mark: { check: (record) => record, apply(record, ctx) { ctx.host.createFile("/marker", text); }, undo(record, ctx) { ctx.host.remove("/marker"); } } } };
`;
const HELPER = (imports = "") => `${imports}import * as fs from "node:fs";
fs.writeFileSync(new URL("./helper-ran", import.meta.url), "evaluated");
export const text = "from the helper";
`;

test("module: what a JavaScript plugin imports is held to the plugin's own rule, file by file: a helper another user owns or may write, one behind a symlink or in a user's directory, and a package found by name are refused before any of it runs", async () => {
  const user = 1234;
  const cases: [string, (sim: SimHost) => void, string][] = [
    ["a helper others may write", (sim) => { install(sim, "helper.mjs", HELPER(), 0o666); install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.mjs"), 0o644); },
      `vmhook: plugin marker: not loading /etc/vmhook/plugins.d/marker.mjs: it imports ./helper.mjs (/etc/vmhook/plugins.d/helper.mjs), and /etc/vmhook/plugins.d/helper.mjs has mode 0666: group or others can write it, and what a plugin imports runs as root too; run chmod go-w /etc/vmhook/plugins.d/helper.mjs`],
    ["a helper another user owns", (sim) => { install(sim, "helper.mjs", HELPER(), 0o644); fs.chownSync(sim.resolve(`${paths.pluginsDir}/helper.mjs`), user, user); install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.mjs"), 0o644); },
      `/etc/vmhook/plugins.d/helper.mjs is owned by uid ${user}, not root; what a plugin imports runs as root too, so run chown root:root /etc/vmhook/plugins.d/helper.mjs`],
    ["a helper's own import others may write", (sim) => { install(sim, "deeper.mjs", "export const more = 1;\n", 0o646); install(sim, "helper.mjs", HELPER('import { more } from "./deeper.mjs";\n'), 0o644); install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.mjs"), 0o644); },
      "it imports ./helper.mjs (/etc/vmhook/plugins.d/helper.mjs), which imports ./deeper.mjs (/etc/vmhook/plugins.d/deeper.mjs), and /etc/vmhook/plugins.d/deeper.mjs has mode 0646"],
    // Bun runs a file without an extension as JavaScript, and any file imported with { type: "js" } (or ts, jsx, tsx): their imports run too.
    ["an import of a helper without an extension", (sim) => { install(sim, "deeper.mjs", "export const more = 1;\n", 0o646); install(sim, "helper", HELPER('import { more } from "./deeper.mjs";\n'), 0o644); install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper"), 0o644); },
      "it imports ./helper (/etc/vmhook/plugins.d/helper), which imports ./deeper.mjs (/etc/vmhook/plugins.d/deeper.mjs), and /etc/vmhook/plugins.d/deeper.mjs has mode 0646"],
    ["an import of a helper.txt run as code", (sim) => { install(sim, "deeper.mjs", "export const more = 1;\n", 0o646); install(sim, "helper.txt", HELPER('import { more } from "./deeper.mjs";\n'), 0o644); install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.txt").replace('";\n', '" with { type: "js" };\n'), 0o644); },
      "it imports ./helper.txt (/etc/vmhook/plugins.d/helper.txt), which imports ./deeper.mjs (/etc/vmhook/plugins.d/deeper.mjs), and /etc/vmhook/plugins.d/deeper.mjs has mode 0646"],
    ["a helper in a user's directory", (sim) => { sim.dir("/home/alice"); fs.writeFileSync(sim.resolve("/home/alice/helper.mjs"), HELPER()); fs.chownSync(sim.resolve("/home/alice"), user, user); install(sim, "marker.mjs", IMPORTING_PLUGIN("../../../home/alice/helper.mjs"), 0o644); },
      `it imports ../../../home/alice/helper.mjs (/home/alice/helper.mjs), and /home/alice is owned by uid ${user}, not root`],
    ["a helper behind a symlink", (sim) => { sim.dir("/usr/lib/mine"); fs.writeFileSync(sim.resolve("/usr/lib/mine/helper.mjs"), HELPER()); fs.symlinkSync(sim.resolve("/usr/lib/mine/helper.mjs"), sim.resolve(`${paths.pluginsDir}/helper.mjs`)); install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.mjs"), 0o644); },
      "it imports ./helper.mjs, which Bun would load from /usr/lib/mine/helper.mjs: vmhook checks only what it loads by the name given; import the file by its own path, with its extension (no symlink)"],
    ["a package found by name", (sim) => { sim.dir("/etc/vmhook/node_modules/helper"); fs.writeFileSync(sim.resolve("/etc/vmhook/node_modules/helper/index.mjs"), HELPER()); install(sim, "marker.mjs", IMPORTING_PLUGIN("helper"), 0o644); },
      'it imports "helper", a package: plugins import only Node.js and Bun built-ins and files by their path (./helper.mjs)'],
  ];
  for (const [what, setUp, message] of cases) {
    const sim = pluginHost();
    setUp(sim);
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="marker"/>'));
    assert.is(outcome.code, 1, what);
    assert.match(outcome.stderr.split("\n")[0]!, message, `${what}: ${outcome.stderr}`);
    for (const ran of [`${paths.pluginsDir}/helper-ran`, "/home/alice/helper-ran", "/usr/lib/mine/helper-ran", "/etc/vmhook/node_modules/helper/helper-ran", "/marker"]) assert.not.ok(fs.existsSync(sim.resolve(ran)), `${what}: ${ran}`);
    assert.not.ok(fs.existsSync(journalPath(sim)), what);
    sim.cleanup();
  }
  // Root's own helper beside the plugin, by its name, runs.
  const sim = pluginHost();
  install(sim, "helper.mjs", HELPER(), 0o644);
  install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.mjs"), 0o644);
  const prepared = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="marker"/>'));
  assert.is(prepared.code, 0, prepared.stderr);
  assert.is(fs.readFileSync(sim.resolve("/marker"), "utf8"), "from the helper");
  sim.cleanup();
});

test("vmhook plugins and doctor: a helper module beside its plugin is listed as that plugin's helper, not as a plugin that does not run; an unsafe helper is a problem of the plugin that imports it", async () => {
  const sim = pluginHost();
  install(sim, "helper.mjs", 'export const text = "from the helper";\n', 0o644);
  install(sim, "marker.mjs", IMPORTING_PLUGIN("./helper.mjs"), 0o644);
  const listed = await cli(["plugins"], sim);
  assert.is(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, "  helper         helper module of marker (imported, not a plugin)\n");
  assert.match(listed.stdout, "  marker         marks [JavaScript module]\n");
  const doctor = await cli(["doctor"], sim);
  assert.match(doctor.stdout, "ok    custom plugins: 1 installed, all safe: marker (helper modules: helper)");

  fs.chmodSync(sim.resolve(`${paths.pluginsDir}/helper.mjs`), 0o666);
  const unsafe = (await cli(["plugins"], sim)).stdout;
  assert.match(unsafe, "  helper         helper module of marker (imported, not a plugin) NOT RUN: /etc/vmhook/plugins.d/helper.mjs has mode 0666");
  assert.match(unsafe, "  marker         NOT RUN: it imports ./helper.mjs (/etc/vmhook/plugins.d/helper.mjs), and /etc/vmhook/plugins.d/helper.mjs has mode 0666");
  // doctor reads the imports (it runs no plugin code) and warns of the plugin the hook would refuse
  assert.match((await cli(["doctor"], sim)).stdout, "warn  custom plugins: marker: it imports ./helper.mjs (/etc/vmhook/plugins.d/helper.mjs), and /etc/vmhook/plugins.d/helper.mjs has mode 0666");
  sim.cleanup();
});

test("vmhook status after a failed prepare whose rollback could not undo a step says the start failed, not that a release did", async () => {
  const sim = pluginHost();
  install(sim, "stuck.mjs", `export default { name: "stuck", summary: "stuck", parse: () => ({}),
    plan: { prepare: () => [{ action: "hold", record: { action: "hold" }, description: "hold a thing" }, { action: "fail", record: { action: "fail" }, description: "fail" }] },
    actions: {
      hold: { check: (record) => record, apply() {}, undo() { throw new Error("stuck: the thing will not let go"); } },
      fail: { check: (record) => record, apply() { throw new Error("stuck: no"); }, undo() {} },
    } };\n`, 0o644);
  const prepared = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="stuck"/>'));
  assert.is(prepared.code, 1);
  const status = (await cli(["status"], sim)).stdout;
  assert.match(status, `vm (${UUID}): not running (its start failed, and undoing it did not finish), yet vmhook still holds for it (vmhook recover vm gives it back):`);
  assert.not.match(status, "release");
  sim.cleanup();
});

test("module: a module without a Plugin default export is refused with what to export", async () => {
  const sim = pluginHost();
  install(sim, "empty.js", "export const x = 1;\n", 0o644);
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="empty"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, "plugin empty: /etc/vmhook/plugins.d/empty.js has no default export");
  sim.cleanup();
});

test("module: an action whose unchangedAfterFailure is not a function is refused at load, naming the action and what it must be, before anything runs", async () => {
  const sim = pluginHost();
  install(sim, "sure.mjs", `export default { name: "sure", summary: "x", parse: () => ({}), plan: {}, actions: { open: { check: (r) => r, apply() {}, undo() {}, unchangedAfterFailure: true } } };\n`, 0o644);
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="sure"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, "plugin sure: /etc/vmhook/plugins.d/sure.mjs action open has unchangedAfterFailure true; make it a function(record, ctx) that returns true only when the host reads as before the step, or leave it out");
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

/** A module plugin whose prepare planner says `message`: as a refused step's reason, or as an error it throws. */
const failingPlugin = (name: string, message: string, how: "refuses" | "throws") =>
  `export default { name: "${name}", summary: "${how}", parse: () => ({}),
    plan: { prepare: () => ${
      how === "refuses"
        ? `[{ action: "noop", record: { action: "noop" }, description: "nothing", refused: { reason: ${JSON.stringify(message)}, remedies: [] } }]`
        : `{ throw new Error(${JSON.stringify(message)}); }`
    } },
    actions: { noop: { check: (record) => record, apply() {}, undo() {} } } };\n`;

for (const how of ["refuses", "throws"] as const) {
  test(`module: a planner that ${how} is reported naming the plugin, once: added when its message does not start with the name, kept when it does; nothing changed`, async () => {
    const sim = pluginHost();
    install(sim, "gate.mjs", failingPlugin("gate", "the license server does not answer", how), 0o644);
    install(sim, "named.mjs", failingPlugin("named", "named: the license server does not answer", how), 0o644);
    const before = sim.snapshot();
    const unnamed = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="gate"/>'));
    assert.is(unnamed.code, 1);
    assert.match(unnamed.stderr, /^vmhook: plugin:gate: the license server does not answer$/m);
    const named = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="named"/>'));
    assert.is(named.code, 1);
    assert.match(named.stderr, /^vmhook: named: the license server does not answer$/m);
    assert.equal(sim.snapshot(), before);
    sim.cleanup();
  });
}

/** A module plugin whose `where` (parse, a step's apply, a first-interface handler) hits a bug: a TypeError, not an error written for the user. */
const buggyPlugin = (name: string, where: "parse" | "apply" | "handler") =>
  where === "handler"
    ? `export default { name: "${name}", summary: "bug", parse: () => ({}), async prepare(ctx) { ctx.missing(); }, undo() {} };\n`
    : `export default { name: "${name}", summary: "bug", parse: (elements) => ${where === "parse" ? "elements[1].getAttribute('x')" : "({})"},
        plan: { prepare: () => [{ action: "go", record: { action: "go" }, description: "go" }], started: () => [{ action: "go", record: { action: "go" }, description: "go" }] },
        actions: { go: { check: (record) => record, apply() { null.x; }, undo() {} } } };\n`;

test("module: a bug in parse, in a step's apply or in a first-interface handler is reported naming the plugin, without its stack, at prepare and started", async () => {
  const sim = pluginHost();
  for (const where of ["parse", "apply", "handler"] as const) install(sim, `${where}.mjs`, buggyPlugin(where, where), 0o644);
  for (const [where, event] of [["parse", "prepare"], ["apply", "prepare"], ["handler", "prepare"], ["apply", "started"]] as const) {
    const outcome = await runHookEvent(sim, event, "begin", domainXml(`<vmhook:plugin name="${where}"/>`));
    assert.is(outcome.code, 1, `${where} at ${event}`);
    assert.match(outcome.stderr.split("\n")[0]!, new RegExp(`^vmhook: plugin:${where}: \\S`), `${where} at ${event}: ${outcome.stderr}`);
    assert.not.match(outcome.stderr, /\.mjs:\d|TypeError/, `${where} at ${event}: no stack`);
  }
  // vmhook plan runs a first-interface handler too (with dryRun set).
  const planning = await plannedSteps(sim, domainXml('<vmhook:plugin name="handler"/>')).catch((error: unknown) => error);
  assert.instance(planning, VmhookError);
  assert.match((planning as Error).message, /^plugin:handler: \S/);
  sim.cleanup();
});

test("module: an error that names the plugin by its element, as docs/plugins.md's marker does, is not named twice", async () => {
  const sim = pluginHost();
  install(sim, "gate.mjs", failingPlugin("gate", '<vmhook:plugin name="gate">: the license server does not answer', "throws"), 0o644);
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="gate"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, /^vmhook: <vmhook:plugin name="gate">: the license server does not answer$/m);
  sim.cleanup();
});

test("module: a planner that never settles is abandoned at its time limit, the plugin named once", async () => {
  const sim = pluginHost();
  install(sim, "slow.mjs", `export default { name: "slow", summary: "hangs", parse: () => ({}), plan: { prepare: () => new Promise(() => {}) }, actions: {} };\n`, 0o644);
  sim.file(paths.hostConfig, JSON.stringify({ plugins: { "plugin:slow": { timeoutSeconds: 0.2 } } }));
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="slow"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr, /^vmhook: plugin:slow did not finish planning prepare within 0\.2 s \(its planner\) and was abandoned; /m);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

/** A module plugin "late" that sets /flag at prepare and, through its context, `then` (given `lateWrite(ctx)`, which sets it again and updates its record). */
const latePlugin = (then: string) => `const lateWrite = async (ctx) => {
    try { ctx.update({ action: "flag", old: "late\\n" }); } catch {}
    ctx.host.write("/flag", "on\\n");
  };
  export default { name: "late", summary: "writes after its call", parse: () => ({}),
    plan: { prepare: (ctx) => [{ action: "flag", record: { action: "flag", old: ctx.host.read("/flag") }, description: "set /flag" }] },
    actions: { flag: { check: (record) => record,
      async apply(record, ctx) { ctx.host.write("/flag", "on\\n"); ${then} },
      undo(record, ctx) { ctx.host.write("/flag", record.old); } } } };\n`;

const lateCases = [
  {
    what: "an apply abandoned at its time limit that writes later",
    then: "await new Promise((resolve) => setTimeout(resolve, 400)); await lateWrite(ctx);",
    others: "",
    failure: /^vmhook: plugin:late did not finish prepare within 0\.2 s \(step "set \/flag"\) and was abandoned; /m,
    refused: ["ctx.update after its call was abandoned", 'ctx.host.write("/flag", …) after its call was abandoned'],
  },
  {
    what: "a timer a finished apply left behind, the next plugin failing",
    then: "setTimeout(() => lateWrite(ctx).catch(() => {}), 400);",
    others: '<vmhook:plugin name="breaks"/>',
    failure: /^vmhook: plugin:breaks: out of order$/m,
    refused: ["ctx.update after its call ended", 'ctx.host.write("/flag", …) after its call ended'],
  },
  {
    what: "a program an abandoned apply started with ctx.runAsync",
    then: 'await ctx.runAsync("/usr/local/bin/set-flag-later", []);',
    others: "",
    failure: /^vmhook: plugin:late did not finish prepare within 0\.2 s \(step "set \/flag"\) and was abandoned; /m,
    refused: [],
  },
];

for (const { what, then, others, failure, refused } of lateCases) {
  test(`module: ${what}, after the rollback, reaches neither the host nor the journal`, async () => {
    const sim = pluginHost().file("/flag", "off\n");
    sim.file(paths.hostConfig, JSON.stringify({ plugins: { "plugin:late": { timeoutSeconds: 0.2 } } }));
    install(sim, "late.mjs", latePlugin(then), 0o644);
    install(sim, "breaks.mjs", `export default { name: "breaks", summary: "fails", parse: () => ({}),
      plan: { prepare: () => [{ action: "fail", record: { action: "fail" }, description: "fail" }] },
      actions: { fail: { check: (record) => record, apply() { throw new Error("out of order"); }, undo() {} } } };\n`, 0o644);
    sim.file("/usr/local/bin/set-flag-later", '#!/bin/sh\nsleep 0.3\necho on > "$VMHOOK_ROOT/flag"\n');
    fs.chmodSync(sim.resolve("/usr/local/bin/set-flag-later"), 0o755);
    // Programs started in the background really run, under the root.
    sim.execAsync = (command, args, options) => RootedHost.prototype.execAsync.call(sim, command, args, options);
    const outcome = await runHookEvent(sim, "prepare", "begin", domainXml(`<vmhook:plugin name="late"/>${others}`));
    assert.is(outcome.code, 1, outcome.stderr);
    assert.match(outcome.stderr, failure);
    assert.is(sim.read("/flag"), "off\n", "rolled back");
    // The late plugin code wakes up after the rollback and writes again through its context.
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.is(sim.read("/flag"), "off\n", "the late write did not reach the host");
    assert.not.ok(fs.existsSync(journalPath(sim)), "the late update did not write a journal");
    for (const what of refused) assert.match(log(sim), `plugin:late: refused ${what}`);
    sim.cleanup();
  });
}

test("shared plugins: a step that let go of the host lock has every later plugin planned again, one that planned no step before included", async () => {
  const sim = pluginHost().file("/another-vm", "absent");
  // "reclaim" waits outside the host lock, as hugepages' reclaim does; meanwhile another VM takes what "gate" guards.
  install(sim, "reclaim.mjs", `export default { name: "reclaim", summary: "waits outside the lock", shared: true, parse: () => ({}),
    plan: { prepare: () => [{ action: "wait", record: { action: "wait" }, description: "wait outside the lock" }] },
    actions: { wait: { check: (record) => record, apply(record, ctx) { ctx.outsideHostLock(() => ctx.host.write("/another-vm", "started")); }, undo() {} } } };\n`, 0o644);
  install(sim, "gate.mjs", `export default { name: "gate", summary: "refuses once another VM started", shared: true, parse: () => ({}),
    plan: { prepare: (ctx) => ctx.host.read("/another-vm").trim() === "started"
      ? [{ action: "take", record: { action: "take" }, description: "take", refused: { reason: "gate: another VM holds it now", remedies: [] } }]
      : [] },
    actions: { take: { check: (record) => record, apply() {}, undo() {} } } };\n`, 0o644);
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="reclaim"/><vmhook:plugin name="gate"/>'));
  assert.is(outcome.code, 1, outcome.stderr);
  assert.match(outcome.stderr, /^vmhook: gate: another VM holds it now$/m);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("a JS plugin of the first interface (handlers calling ctx.step, one undo) still runs: plan lists its steps, prepare journals them, release undoes them", async () => {
  const sim = pluginHost();
  sim.file("/flag", "off");
  install(
    sim,
    "legacy.mjs",
    `export default { name: "legacy", summary: "first interface", parse: () => ({}),
      async prepare(ctx) {
        await ctx.step("set /flag", { action: "reset-flag", old: ctx.host.read("/flag") }, () => ctx.host.write("/flag", "on\\n"));
      },
      undo(record, ctx) { ctx.host.write("/flag", record.old); } };\n`,
    0o644,
  );
  const xml = domainXml('<vmhook:plugin name="legacy"/>');
  assert.equal(await assertPlanIsPrepare(sim, xml), ["plugin:legacy: set /flag"]);
  assert.is(sim.readTrimmed("/flag"), "on");
  assert.equal(readJournal(sim, UUID)!.entries.map((entry) => entry.undo), [{ action: "reset-flag", old: "off\n" }]);
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.is(sim.readTrimmed("/flag"), "off");
  sim.cleanup();
});

test("the wait for the domain's lock counts against the work deadline: a prepare that waited 1.5 of its 2 s has 0.5 s left for a step of 0.8 s, and is rolled back within the undo budget", async () => {
  const sim = pluginHost();
  sim.file(paths.hostConfig, '{"deadlineSeconds": 2}').dir(paths.stateDir);
  install(sim, "slow", shellPlugin("slow", 'sleep 0.8; echo \'{"undo": "slow-state"}\''));
  // Another vmhook run of the domain (a release, a recover) holds its lock for 1.5 s.
  const lockFile = sim.resolve(paths.domainLock(UUID));
  const holder = spawn("flock", [lockFile, "sleep", "1.5"], { stdio: "ignore" });
  try {
    const held = () => spawnSync("flock", ["-n", lockFile, "true"]).status !== 0;
    for (let tries = 0; !held() && tries < 200; tries++) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.ok(held(), "the holder has the lock");
    const prepared = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="slow"/>'));
    assert.is(prepared.code, 1, prepared.stderr);
    // What was left of the deadline bounded the plugin, so that is the setting to raise (on a slow machine nothing was left to start it).
    assert.match(prepared.stderr, /plugin slow .* did not finish prepare within 0\.\d s and was killed; make it faster or raise "deadlineSeconds" in \/etc\/vmhook\/vmhook.json|ran out of time \(deadline 2 s\) while starting plugin slow/);
    assert.is(readJournal(sim, UUID), undefined, "rolled back");
  } finally {
    holder.kill();
    sim.cleanup();
  }
});

test("module: ctx.host.write on a file that does not exist fails naming the plugin, the value, the host's path and the errno; nothing is left changed", async () => {
  const sim = pluginHost();
  install(sim, "fan.mjs", `export default { name: "fan", summary: "fan", parse: () => ({}),
    plan: { prepare: () => [{ action: "set", record: { action: "set" }, description: "set the fan" }] },
    actions: { set: { check: (record) => record, apply(record, ctx) { ctx.host.write("/sys/class/hwmon/hwmon9/pwm1", "255"); }, undo() {} } } };\n`, 0o644);
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "prepare", "begin", domainXml('<vmhook:plugin name="fan"/>'));
  assert.is(outcome.code, 1);
  assert.is(outcome.stderr.split("\n")[0], 'vmhook: plugin:fan: cannot write "255" to /sys/class/hwmon/hwmon9/pwm1 (ENOENT: no such file or directory)');
  assert.not.match(outcome.stderr, sim.root);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test.run();
