// The real-libvirt test fixture. Each suite gets:
//  - virtlogd and libvirtd running (started here when they are not: CI has
//    no systemd), waited for on their sockets, never with fixed sleeps, and
//    hugetlbfs mounted at /dev/hugepages as systemd would (left mounted);
//  - the freshly built dist/vmhook (a copy: other builds may replace it
//    meanwhile) installed with `vmhook install` over a small marker hook,
//    which must keep running from qemu.d/ and come back on `vmhook
//    uninstall` (the suite's last test);
//  - tiny TCG domains (64 MiB, no disk, no network, no graphics);
//  - cleanup afterwards: domains destroyed and undefined, vmhook uninstalled,
//    the huge page pool as it was.
// Not root: every test is skipped, with the reason printed. Root without
// libvirt: the tests fail and say what to install.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";

export const REPO = fileURLToPath(new URL("../..", import.meta.url));
const BUILT = path.join(REPO, "dist/vmhook");
export const HOOK = "/etc/libvirt/hooks/qemu";
export const SAVED_HOOK_LAUNCHER = "/etc/libvirt/hooks/qemu.d/vmhook-saved-qemu-hook";
export const CLI_LINK = "/usr/local/bin/vmhook";
const LOG = "/var/log/vmhook.log";
const STATE_DIR = "/run/vmhook";
/** The pool of the default huge page size (2M on x86-64), which <vmhook:hugepages size="2M"/> grows. */
const POOL = "/proc/sys/vm/nr_hugepages";
const DOMAIN_PREFIX = "vmhook-test-";
const LIBVIRTD = { name: "libvirtd", socket: "/run/libvirt/libvirt-sock" };
const VIRTLOGD = { name: "virtlogd", socket: "/run/libvirt/virtlogd-sock" };

// ---- processes

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end (killed after timeoutMs); never throws for a non-zero exit. */
export function run(command: string, args: string[], timeoutMs = 60_000): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (error) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: `${stderr}${error.message}` });
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export function virsh(...args: string[]): Promise<Result> {
  return run("virsh", ["--connect", "qemu:///system", ...args]);
}

/** virsh that must succeed; returns its stdout. */
export async function virshOk(...args: string[]): Promise<string> {
  const result = await virsh(...args);
  if (result.code !== 0) throw new Error(`virsh ${args.join(" ")} failed (exit ${result.code}): ${result.stderr.trim()}`);
  return result.stdout;
}

/** Polls `ready` every 50 ms until it holds; fails naming `what` after timeoutMs. */
export async function waitUntil(what: string, ready: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Live processes by name, root's, in this mount namespace: the system
 * daemons. A zombie (a daemon that exited, not yet reaped) does not count
 * once all its threads have exited: a killed daemon's main thread can show Z
 * while another thread still holds its files (the pid file's lock, which the
 * next daemon then cannot take); nor a user's session libvirtd, nor a daemon
 * of another mount namespace (the
 * net suite's private libvirtd, still exiting): each serves its own socket,
 * and must neither stand in for the shared daemon nor be killed by a restart here.
 */
function pidsOf(comm: string): number[] {
  const ownMounts = fs.readlinkSync("/proc/self/ns/mnt");
  return fs
    .readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8"); // "PID (COMM) STATE ..."
        const prefix = `${pid} (${comm}) `;
        return stat.startsWith(prefix) && threadsLive(pid) && fs.statSync(`/proc/${pid}`).uid === 0 && fs.readlinkSync(`/proc/${pid}/ns/mnt`) === ownMounts;
      } catch {
        return false; // exited meanwhile
      }
    })
    .map(Number);
}

/** Whether a thread of the process has not exited (state Z or X): its files are held until the last one has. */
function threadsLive(pid: string): boolean {
  return fs.readdirSync(`/proc/${pid}/task`).some((tid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3));
    } catch {
      return false; // exited meanwhile
    }
  });
}

/** The program's path: daemons live in sbin, which a root shell's PATH may lack. */
function findProgram(program: string): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin"].filter(Boolean);
  return dirs.map((dir) => path.join(dir, program)).find((file) => fs.existsSync(file));
}

async function startDaemon(daemon: { name: string; socket: string }): Promise<void> {
  if (pidsOf(daemon.name).length === 0) {
    const started = await run(findProgram(daemon.name) ?? daemon.name, ["-d"]);
    if (started.code !== 0) throw new Error(`${daemon.name} -d failed (exit ${started.code}): ${started.stderr.trim()}`);
  }
  await waitUntil(`${daemon.name} listens on ${daemon.socket}`, () => fs.existsSync(daemon.socket));
}

/**
 * libvirt backs guest memory with huge pages only from a hugetlbfs mount
 * that it found when it started: mount one, then restart a running libvirtd.
 */
export async function mountHugetlbfs(): Promise<void> {
  if (fs.readFileSync("/proc/mounts", "utf8").includes(" hugetlbfs ")) return;
  fs.mkdirSync("/dev/hugepages", { recursive: true });
  const mounted = await run("mount", ["-t", "hugetlbfs", "hugetlbfs", "/dev/hugepages"]);
  if (mounted.code !== 0) throw new Error(`mount -t hugetlbfs failed: ${mounted.stderr.trim()}`);
  if (pidsOf(LIBVIRTD.name).length > 0) await restartLibvirtd();
}

export async function startLibvirt(): Promise<void> {
  const missing = ["virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"].filter((program) => !findProgram(program));
  if (missing.length > 0) {
    throw new Error(`${missing.join(", ")} not found: apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86 (as .ci/run does)`);
  }
  await startDaemon(VIRTLOGD);
  await startDaemon(LIBVIRTD);
  // The socket can outlive a killed daemon: wait until libvirtd answers.
  await waitUntil("libvirtd answers virsh", async () => (await virsh("version")).code === 0);
}

/**
 * Stops libvirtd (its domains keep running; SIGKILL: as a crash would, in the
 * middle of what it does), runs `whileDown`, and starts it again: libvirt runs
 * `reconnect begin` for each domain still running.
 */
export async function restartLibvirtd(signal: "SIGTERM" | "SIGKILL" = "SIGTERM", whileDown: () => unknown = () => {}): Promise<void> {
  for (const pid of pidsOf(LIBVIRTD.name)) process.kill(pid, signal);
  // libvirtd gives its workers 30 s after SIGTERM, then exits all the same ("Make forcefull daemon
  // shutdown", seen once on a loaded CI machine): wait past that.
  await waitUntil("libvirtd exits", () => pidsOf(LIBVIRTD.name).length === 0, 45_000);
  await whileDown();
  await startLibvirt();
}

// ---- host state the tests look at

export function hugepages(): number {
  return Number(fs.readFileSync(POOL, "utf8").trim());
}

function setHugepages(count: number): void {
  fs.writeFileSync(POOL, `${count}\n`);
}

/** Huge pages of the default size that processes use or have reserved (QEMU maps guest RAM on hugetlbfs). */
export function hugepagesInUse(): number {
  const meminfo = fs.readFileSync("/proc/meminfo", "utf8");
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(meminfo)?.[1]);
  return field("HugePages_Total") - field("HugePages_Free") + field("HugePages_Rsvd");
}

export function journalExists(uuid: string): boolean {
  return fs.existsSync(`${STATE_DIR}/${uuid}.json`);
}

/** Everything under /run/vmhook, for "left unchanged" checks. */
export function stateFiles(): string[] {
  return fs.existsSync(STATE_DIR) ? fs.readdirSync(STATE_DIR, { recursive: true }).map(String).sort() : [];
}

/** What the log file holds beyond `offset` (take the offset with logSize() first). */
export function logSince(offset: number): string {
  if (!fs.existsSync(LOG)) return "";
  return fs.readFileSync(LOG).subarray(offset).toString("utf8");
}

export function logSize(): number {
  return fs.existsSync(LOG) ? fs.statSync(LOG).size : 0;
}

export function memTotalMiB(): number {
  const kib = /MemTotal:\s+(\d+) kB/.exec(fs.readFileSync("/proc/meminfo", "utf8"))?.[1];
  return Math.floor(Number(kib) / 1024);
}

// ---- domains

export interface TestDomain {
  name: string;
  uuid: string;
}

interface DomainOptions {
  memoryMiB?: number;
  /** <memoryBacking><hugepages/>: QEMU maps guest RAM on hugetlbfs, and fails to start without free pages. */
  hugepageBacked?: boolean;
  /** The content of <vmhook:hooks>; undefined: no vmhook metadata at all. */
  hooks?: string;
  /** Extra arguments on QEMU's command line (<qemu:commandline>): a bad one makes QEMU exit after libvirt launched it, past prepare and start. */
  qemuArgs?: string[];
}

/** A tiny TCG guest: no disk, no network, no graphics; it boots nothing but runs. */
function domainXml(domain: TestDomain, { memoryMiB = 64, hugepageBacked = false, hooks, qemuArgs = [] }: DomainOptions): string {
  const metadata = hooks === undefined ? "" : `<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${hooks}</vmhook:hooks></metadata>`;
  const commandline = qemuArgs.length === 0 ? "" : `<qemu:commandline>${qemuArgs.map((arg) => `<qemu:arg value='${arg}'/>`).join("")}</qemu:commandline>`;
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${domain.name}</name>
  <uuid>${domain.uuid}</uuid>
  ${metadata}
  <memory unit='MiB'>${memoryMiB}</memory>
  ${hugepageBacked ? "<memoryBacking><hugepages/></memoryBacking>" : ""}
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <console type='pty'/>
    <memballoon model='none'/>
  </devices>
  ${commandline}
</domain>
`;
}

let scratch: string | undefined;

/** A directory for this test run's files (domain XML, save images, the marker log). */
export function scratchDir(): string {
  return (scratch ??= fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-libvirt-")));
}

export async function defineDomain(name: string, options: DomainOptions = {}): Promise<TestDomain> {
  const domain = { name: `${DOMAIN_PREFIX}${name}`, uuid: randomUUID() };
  const file = path.join(scratchDir(), `${domain.name}.xml`);
  fs.writeFileSync(file, domainXml(domain, options));
  await virshOk("define", file);
  return domain;
}

export async function removeTestDomains(): Promise<void> {
  const names = (await virshOk("list", "--all", "--name")).split("\n").filter((name) => name.startsWith(DOMAIN_PREFIX));
  await Promise.all(
    names.map(async (name) => {
      await virsh("destroy", name); // fails when not running: fine
      await virshOk("undefine", name, "--managed-save", "--nvram"); // --nvram: UEFI domains (the win11 example) have one
    }),
  );
}

// ---- the marker hook: what was at /etc/libvirt/hooks/qemu before vmhook

const markerLog = () => path.join(scratchDir(), "marker.log");
export const markerScript = () =>
  [
    "#!/bin/sh",
    "# vmhook test: the hook that was here before vmhook",
    `echo "$1 $2 $3" >> ${markerLog()}`,
    "# holdStart(): the domain's start waits here while the file exists (at most 60 s)",
    `hold=${scratchDir()}/hold-start-$1`,
    'if [ "$2" = start ] && [ -e "$hold" ]; then : > "$hold.held"; n=0; while [ -e "$hold" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done; fi',
    "",
  ].join("\n");

/** Holds the domain's start in the marker hook (libvirt runs it after vmhook's start hook, before QEMU's launch) until the returned function lets go. */
export function holdStart(domain: TestDomain): { held: () => boolean; letGo: () => void } {
  const file = path.join(scratchDir(), `hold-start-${domain.name}`);
  fs.writeFileSync(file, "");
  return {
    held: () => fs.existsSync(`${file}.held`),
    letGo: () => {
      fs.rmSync(file, { force: true });
      fs.rmSync(`${file}.held`, { force: true });
    },
  };
}

/** The events the marker hook saw for a domain, e.g. ["prepare begin", "start begin", ...]. */
export function markerEvents(domain: TestDomain): string[] {
  if (!fs.existsSync(markerLog())) return [];
  return fs
    .readFileSync(markerLog(), "utf8")
    .split("\n")
    .filter((line) => line.startsWith(`${domain.name} `))
    .map((line) => line.slice(domain.name.length + 1));
}

/** The copy of dist/vmhook the suite installed (other builds may replace dist/vmhook meanwhile). */
export const binary = () => path.join(scratchDir(), "vmhook");

interface Saved {
  /** A hook that was installed before the tests (a developer's machine): put back at the end. */
  ownHook?: string;
  pool: number;
}

async function setUp(saved: Saved): Promise<void> {
  assert.ok(fs.existsSync(BUILT), `${BUILT} is missing: run npm run build first`);
  fs.copyFileSync(BUILT, binary());
  await mountHugetlbfs();
  await startLibvirt();
  // What an interrupted run left: its domains, and vmhook over its marker hook.
  await removeTestDomains();
  await run(binary(), ["uninstall", "--force"]);
  saved.ownHook = putMarkerHook();

  const installed = await run(binary(), ["install"]);
  assert.is(installed.code, 0, `vmhook install failed: ${installed.stderr}`);
  assert.match(installed.stdout, "kept the existing hook");
  assert.match(installed.stdout, /reloaded libvirtd/);
  assert.ok(fs.readFileSync(HOOK).equals(fs.readFileSync(binary())), `${HOOK} is not the freshly built dist/vmhook`);
  assert.ok(fs.existsSync(SAVED_HOOK_LAUNCHER), `the previous hook is not run from ${SAVED_HOOK_LAUNCHER}`);
  assert.is(fs.readlinkSync(CLI_LINK), HOOK);
  await waitForHooks();
}

/** Puts the marker hook in place, setting aside a hook already there (returned: give it to removeMarkerHook). */
export function putMarkerHook(): string | undefined {
  let ownHook: string | undefined;
  if (fs.existsSync(HOOK)) {
    ownHook = path.join(scratchDir(), "own-hook");
    fs.renameSync(HOOK, ownHook);
  }
  fs.mkdirSync(path.dirname(HOOK), { recursive: true });
  fs.writeFileSync(HOOK, markerScript(), { mode: 0o755 });
  return ownHook;
}

export function removeMarkerHook(ownHook: string | undefined): void {
  if (fs.existsSync(HOOK) && fs.readFileSync(HOOK, "utf8") === markerScript()) fs.rmSync(HOOK);
  if (ownHook) fs.renameSync(ownHook, HOOK);
}

/**
 * libvirtd picks up the new hook on SIGHUP, in a thread of its own: start a
 * domain until the marker hook (run from qemu.d/) sees it, so no test races
 * the reload.
 */
export async function waitForHooks(): Promise<void> {
  const probe = await defineDomain("probe");
  await waitUntil("libvirtd runs the installed hooks", async () => {
    await virshOk("start", probe.name);
    await virshOk("destroy", probe.name);
    return markerEvents(probe).includes("prepare begin");
  });
  await virshOk("undefine", probe.name);
}

/** The suite's last test: no journal is left, so a plain uninstall works and puts the marker hook back. */
async function uninstallRestoresPreviousHook(): Promise<void> {
  const removed = await run(binary(), ["uninstall"]);
  assert.is(removed.code, 0, `vmhook uninstall failed: ${removed.stderr}`);
  assert.match(removed.stdout, "restored the previous hook");
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
  assert.not.ok(fs.existsSync(SAVED_HOOK_LAUNCHER), `${SAVED_HOOK_LAUNCHER} is still there`);
  assert.not.ok(fs.existsSync(CLI_LINK), `${CLI_LINK} is still there`);
}

/** A cleanup step, whatever failed before: reports what it could not undo, never throws (uvu would lose the report). */
export async function attemptCleanup(who: string, what: string, action: () => unknown): Promise<void> {
  try {
    await action();
  } catch (error) {
    console.error(`${who}: cleanup could not ${what}: ${(error as Error).message}`);
  }
}

async function tearDown(saved: Saved): Promise<void> {
  const attempt = (what: string, action: () => unknown) => attemptCleanup("libvirt fixture", what, action);
  await attempt("remove the test domains", removeTestDomains);
  await attempt("uninstall vmhook", async () => {
    await run(binary(), ["uninstall", "--force"]);
    removeMarkerHook(saved.ownHook);
  });
  await attempt("restore the huge page pool", () => {
    if (hugepages() !== saved.pool) {
      console.error(`libvirt fixture: the pool holds ${hugepages()} pages, ${saved.pool} before the tests; putting it back`);
      setHugepages(saved.pool);
    }
  });
  await attempt("remove the scratch directory", removeScratchDir);
}

export function removeScratchDir(): void {
  if (scratch) fs.rmSync(scratch, { recursive: true, force: true });
  scratch = undefined;
}

// ---- the suite

type Body = () => Promise<void>;

/**
 * A uvu suite whose first test sets the fixture up and whose last test checks
 * uninstall. Tests run in order; when setup failed, each says why.
 */
export function libvirtSuite(title: string): { test(name: string, body: Body): void; run(): void } {
  const tests = suite(title);
  if (process.getuid?.() !== 0) {
    console.log(`${title}: skipped: the real-libvirt tests need root (they run libvirtd and write /etc/libvirt/hooks)`);
    return { test: (name) => tests.skip(name), run: () => tests.run() };
  }
  const saved: Saved = { pool: hugepages() };
  let ready: Promise<void> | undefined;
  tests("libvirtd runs dist/vmhook installed over the previous hook, which keeps running from qemu.d", () => (ready = setUp(saved)));
  tests.after(() => tearDown(saved));
  return {
    test(name, body) {
      tests(name, async () => {
        await ready?.catch((error) => {
          throw new Error(`fixture setup failed: ${(error as Error).message}`);
        });
        await body();
      });
    },
    run() {
      tests("uninstall puts the previous hook back", uninstallRestoresPreviousHook);
      tests.run();
    },
  };
}
