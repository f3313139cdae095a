// The log file: its rotation with the real logrotate (the config install
// writes, and the Debian package ships, parses, and a rotation by rename loses
// no line: a hook that opened the log before ends its lines in vmhook.log.1,
// the next one starts a new vmhook.log itself), and who may read it.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { LOGROTATE_TEXT } from "../../lib/cli/logrotate.ts";
import { RootedHost } from "../../lib/host.ts";
import { createLogger, openLog } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";

const LOGROTATE = "/usr/sbin/logrotate";
const roots: string[] = [];
test.after(() => roots.forEach((root) => fs.rmSync(root, { recursive: true, force: true })));

function scratch(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-logrotate-"));
  roots.push(root);
  fs.mkdirSync(path.join(root, "var/log"), { recursive: true });
  return root;
}

/** logrotate on the config with the log's path under `root`; its own state file there, never the host's. */
function logrotate(root: string, config: string, ...flags: string[]) {
  const file = path.join(root, "vmhook.logrotate");
  fs.writeFileSync(file, config, { mode: 0o644 });
  const result = spawnSync(LOGROTATE, [...flags, "--state", path.join(root, "logrotate.status"), file], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 30_000 });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

test("the Debian package ships the config vmhook install writes", () => {
  assert.is(fs.readFileSync(new URL("../../packaging/debian/logrotate", import.meta.url), "utf8"), LOGROTATE_TEXT);
});

test("logrotate -d reads the config without an error or a warning", () => {
  assert.ok(fs.existsSync(LOGROTATE), `${LOGROTATE} is missing: apt-get install logrotate`);
  const root = scratch();
  const { status, output } = logrotate(root, LOGROTATE_TEXT, "-d");
  assert.is(status, 0, output);
  // -d itself warns that it only prints
  const complaints = output.split("\n").filter((line) => /^(error|warning):/.test(line) && !line.includes("debug mode"));
  assert.equal(complaints, []);
  assert.match(output, `considering log ${paths.log}`);
});

test("a forced rotation loses no line: a hook that opened the log before ends its lines in vmhook.log.1 (kept uncompressed), the next one starts a new vmhook.log, mode 0640; the one after that is compressed", () => {
  const root = scratch();
  const host = new RootedHost(root);
  const log = path.join(root, paths.log);
  const config = LOGROTATE_TEXT.replace(paths.log, log);
  const logLine = (message: string) => createLogger(host, { domain: "win11", event: "prepare begin", echo: "none", file: true }).info(message);
  logLine("before the rotation");
  const runningHook = openLog(host, "append");
  try {
    const first = logrotate(root, config, "-f");
    assert.is(first.status, 0, first.output);
    assert.not.ok(fs.existsSync(log), "nocreate: vmhook makes the new log");
    fs.writeSync(runningHook, "a hook's line written during the rotation\n");
  } finally {
    fs.closeSync(runningHook);
  }
  const umask = process.umask(0);
  try {
    logLine("after the rotation");
  } finally {
    process.umask(umask);
  }
  assert.match(fs.readFileSync(`${log}.1`, "utf8"), /\[win11 prepare begin\] before the rotation\na hook's line written during the rotation\n$/);
  assert.match(fs.readFileSync(log, "utf8"), /^\S+ \[win11 prepare begin\] after the rotation\n$/);
  assert.is(fs.statSync(log).mode & 0o7777, 0o640);

  const second = logrotate(root, config, "-f");
  assert.is(second.status, 0, second.output);
  assert.equal(fs.readdirSync(path.dirname(log)).sort(), ["vmhook.log.1", "vmhook.log.2.gz"]);
});

test("the log names domains and PCI devices: it is root's to read, mode 0640 whatever the umask; a log others may read or write (made by hand: touch, : >) is narrowed to 0640 at the next line", () => {
  const root = scratch();
  const host = new RootedHost(root);
  const log = path.join(root, paths.log);
  const logLine = () => createLogger(host, { domain: "win11", event: "prepare begin", echo: "none", file: true }).info("a line");
  for (const umask of [0o000, 0o022]) {
    fs.rmSync(log, { force: true });
    const before = process.umask(umask);
    try {
      logLine();
    } finally {
      process.umask(before);
    }
    assert.is(fs.statSync(log).mode & 0o7777, 0o640, `umask ${umask.toString(8)}`);
  }
  for (const wide of [0o644, 0o666, 0o775]) {
    fs.chmodSync(log, wide);
    logLine();
    assert.is(fs.statSync(log).mode & 0o7777, 0o640, `was ${wide.toString(8)}`);
  }
  fs.chmodSync(log, 0o600);
  logLine();
  assert.is(fs.statSync(log).mode & 0o7777, 0o600, "a narrower mode is the administrator's choice");
});

test("the CLI (vmhook recover) with /var/log full (ENOSPC on a 4 KiB tmpfs) says once that the log misses its lines, not only for a refused log", () => {
  const root = scratch();
  const logDir = path.join(root, "var/log");
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "size=4k,mode=0755", "tmpfs", logDir], { encoding: "utf8", timeout: 10_000 });
  assert.is(mounted.status, 0, `mount tmpfs (the unit tests run as root): ${mounted.stderr}`);
  const written: string[] = [];
  const write = process.stderr.write;
  try {
    fs.writeFileSync(path.join(logDir, "filler"), "f".repeat(4096));
    process.stderr.write = ((chunk: string) => written.push(String(chunk)) > 0) as typeof process.stderr.write;
    const log = createLogger(new RootedHost(root), { domain: "win11", event: "recover", echo: "stderr", file: true });
    log.info("gave back 0000:01:00.0");
    log.info("gave back the 2M pages");
  } finally {
    process.stderr.write = write;
    spawnSync("umount", [logDir], { timeout: 10_000 });
  }
  assert.equal(written, [
    "vmhook: gave back 0000:01:00.0\n",
    "vmhook: warn: /var/log/vmhook.log cannot be written (ENOSPC: no space left on device, write)\n",
    "vmhook: gave back the 2M pages\n",
  ]);
});


test("a log that cannot be opened is refused naming the host's path, the errno and the fix, never Node's message with the real path under --root", () => {
  const root = scratch();
  const host = new RootedHost(root);
  // /var/log a file: no log can be there (ENOTDIR); a directory at the log's place cannot be appended to (EISDIR).
  fs.rmSync(path.join(root, "var/log"), { recursive: true });
  fs.writeFileSync(path.join(root, "var/log"), "");
  assert.throws(() => openLog(host, "read"), (error: Error & { code?: string }) => error.message === `cannot read ${paths.log} (ENOTDIR); it does not exist on this host` && error.code === "ENOTDIR");
  fs.rmSync(path.join(root, "var/log"));
  fs.mkdirSync(path.join(root, paths.log), { recursive: true });
  assert.throws(() => openLog(host, "append"), (error: Error) => error.message === `${paths.log} cannot be written (EISDIR); a directory is in its place: see what it is (ls -ld ${paths.log}) and move it away`);
});

test.run();
