/// <reference path="./bun.d.ts" />
// The host seam: every file and process a plugin touches goes through a Host.
// Production uses RootedHost("/"); tests point the root at a temporary tree
// (and SimHost adds simulated kernel behaviour on top), the way mdevctl's
// environment root makes its sysfs code testable.
import * as fs from "node:fs";
import { denied, describeError, FixableError, VmhookError } from "./errors.ts";
import { ioctl, libc } from "./libc.ts";
import { pathLeadsToRootsAlone } from "./root-alone.ts";

export interface ExecOptions {
  /** Kill the child after this long. Always set: libvirt has no timeout of its own. */
  timeoutMs: number;
  input?: string;
  env?: Record<string, string>;
  /** execAsync: kill the child once this aborts (the plugin call that started it has ended). */
  signal?: AbortSignal;
  /**
   * execAsync: called with the child's pid before the program runs, which
   * waits until this has returned (a hook killed before leaves a child that
   * runs nothing and ends). When it throws, the child is killed.
   */
  started?: (pid: number) => void;
}

export interface ExecResult {
  /** Exit status; null when killed by a signal or not started. */
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Set when the program could not be started (not found, not executable). */
  error?: string;
}

/** How a write in a helper process ended: done (with the error the write met, if any), or still blocked after the timeout. */
export type HelperWrite = { done: true; error?: string } | { done: false; pid: number };

/** How a program run in a helper process ended: done (with its result), or still blocked after the timeout. */
export type HelperRun = { done: true; result: ExecResult } | { done: false; pid: number };

export interface FileStat {
  uid: number;
  mode: number;
  isFile: boolean;
  isDirectory: boolean;
  isSymlink: boolean;
  /** Last change of the content or the metadata (ctime), ms since the epoch (wall clock): unlike mtime, nothing sets it back (cp -p, rsync -a, tar x). */
  ctimeMs: number;
}

/** A lock file open for flock(2) (Host.openLock); closing it lets go of the lock. */
export interface LockFile {
  /** flock(2) LOCK_EX without waiting: whether this holds the lock now. */
  tryLock(): boolean;
  /** flock(2) LOCK_UN: lets go of the lock, the file kept open to take it again. */
  unlock(): void;
  /** Whether the lock file's path still names the file open here: a holder before may have removed it, and a lock on a removed file guards nothing. */
  stillAtPath(): boolean;
  close(): void;
}

export interface Host {
  /** "/" in production; a test tree otherwise. */
  readonly root: string;
  /** The real path of an absolute host path under the root. */
  resolve(hostPath: string): string;
  /** The file's content; a failure, "not there" (ENOENT) included, throws naming the path, with the errno as `code`. */
  read(hostPath: string): string;
  /**
   * The file's content without surrounding white space; undefined only when
   * it does not exist (ENOENT, ENOTDIR, or ESRCH from a /proc/PID file of a
   * process that has just exited). Any other failure throws, as list does:
   * "could not read" must never pass for "not there". What is only shown to
   * a person may use readForMessage instead.
   */
  readTrimmed(hostPath: string): string | undefined;
  /** Writes the whole value in one write(2), as sysfs wants; never creates parent directories. */
  write(hostPath: string, data: string): void;
  /** Whether the path leads to something (links followed); false only when nothing is there (ENOENT, ENOTDIR). Any other failure throws, as list does. */
  exists(hostPath: string): boolean;
  /**
   * Entry names, sorted; [] only when the directory does not exist (ENOENT,
   * or ENOTDIR for a path through a file). A directory that exists but cannot
   * be read throws, naming the path, with the errno as `code`: an empty list
   * must never stand for "could not look".
   */
  list(hostPath: string): string[];
  /**
   * The link target; undefined only when there is nothing there (ENOENT,
   * ENOTDIR) or it is not a symlink (EINVAL). Any other failure throws, as list does.
   */
  readlink(hostPath: string): string | undefined;
  /** The path's own metadata (lstat); undefined only when nothing is there (ENOENT, ENOTDIR). Any other failure throws, as list does. */
  stat(hostPath: string): FileStat | undefined;
  /** statfs(2)'s f_type (linux/magic.h) of the file system that holds the path, links followed; any failure throws. */
  fileSystemType(hostPath: string): number;
  /** mkdir -p; with `mode`, every directory it makes gets that mode whatever the umask. Returns the first directory made, if any. */
  mkdir(hostPath: string, mode?: number): string | undefined;
  /** rm -rf: nothing there is no failure. */
  remove(hostPath: string): void;
  /** rmdir(2): whether the directory was there, empty, and is now gone; one that holds anything (or is no directory, or is not there) stays. */
  removeIfEmpty(hostPath: string): boolean;
  chmod(hostPath: string, mode: number): void;
  /** Copies a file from outside the host's tree (the vmhook binary being installed) to `hostPath`, which it replaces, and fsyncs it: renamed into place then, a power loss leaves the whole copy, never a short one. */
  copyIn(source: string, hostPath: string): void;
  symlink(target: string, hostPath: string): void;
  /** link(2): `hostPath` becomes a second name of the file at `existing` (a symlink there is linked itself, not followed); nothing may be at `hostPath`. */
  hardLink(existing: string, hostPath: string): void;
  /** Creates the file anew with the whole of `text` (mode 0600, or `mode` whatever the umask; never through a symlink; what is there is replaced) and fsyncs it: the first half of a state file's atomic write. A failure once the file was made (ENOSPC after a short write, EIO from fsync) removes it. */
  createFile(hostPath: string, text: string, mode?: number): void;
  /** rename(2): `to` is replaced at once, never half written. */
  rename(from: string, to: string): void;
  /**
   * Opens the lock file (made, mode 0600, when missing; never through a
   * symlink: ELOOP) read-only, which flock(2) needs no more than: one already
   * there opens on a /run gone read-only. A failure throws as a change's
   * does, with the errno as `code`.
   */
  openLock(hostPath: string): Promise<LockFile>;
  /**
   * Opens the file, never through a symlink (ELOOP) and never waiting for a
   * FIFO's writer: to "read" (a failure throws as read's does), or to
   * "append" to, read-write (made with `mode` when missing; a failure throws
   * as a change's does). The caller checks what it opened (fstat) and closes it.
   */
  openFile(hostPath: string, access: "read" | "append", mode?: number): number;
  exec(command: string, args: string[], options: ExecOptions): ExecResult;
  /** exec, without blocking: the process goes on (a step in the background, Step.background) while the child runs. */
  execAsync(command: string, args: string[], options: ExecOptions): Promise<ExecResult>;
  /**
   * Writes the value in a detached helper process (own session, no inherited
   * pipes) and waits at most timeoutMs for it. A helper still blocked then
   * (a driver's remove() that never returns keeps it in D state, where no
   * signal reaches it) is left running, never waited for. `started` is
   * called with the helper's pid before the wait, and the helper acts only
   * once it has returned: a hook killed before (or a `started` that throws)
   * leaves a helper that writes nothing and ends.
   */
  writeInHelper(hostPath: string, data: string, timeoutMs: number, started: (pid: number) => void): Promise<HelperWrite>;
  /**
   * Runs a program the way writeInHelper writes: detached, waited for at most
   * timeoutMs, left running (never killed, never waited for) when still
   * blocked then: rmmod or modprobe, which run a driver's remove() or probe()
   * for each of its devices. Its stdout is not kept.
   */
  runInHelper(command: string, args: string[], timeoutMs: number, started: (pid: number) => void): Promise<HelperRun>;
  /** ioctl(2) on the file, opened for reading and writing, with `argument` as its in/out buffer; throws with the errno as `code`. */
  ioctl(hostPath: string, request: number, argument: Uint8Array): Promise<void>;
  /** Blocks the whole process; hooks are sequential by design. Measured on the monotonic clock: a wall-clock step neither stretches nor cuts it. */
  sleep(ms: number): void;
  /**
   * Milliseconds on the monotonic clock (CLOCK_MONOTONIC; its zero is
   * arbitrary): what every duration, wait and limit is measured with. NTP
   * steps the wall clock by hours at boot, just when VMs with <autostart>
   * start, and `date -s` may step it any time; this clock does not move.
   */
  monotonicMs(): number;
  /** The wall time, ms since the epoch: only for a time a person reads (a log line, a journal entry, a file name); never subtract two for a duration. */
  wallClockMs(): number;
  /** Whether a process id is alive on this host. */
  processAlive(pid: number): boolean;
  /** SIGKILL to the process group `pid` leads (exec and execAsync start each program as the leader of its own). */
  killProcessGroup(pid: number): void;
}

/** flock(2)'s operations (sys/file.h). */
const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

const SEARCH_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/** Where `program` is installed in SEARCH_PATH, or undefined when it is not. */
export const installedProgram = (host: Host, program: string): string | undefined => SEARCH_PATH.map((dir) => `${dir}/${program}`).find((file) => host.exists(file));
/** How long execAsync waits for a child it killed before leaving it behind. */
const KILL_GRACE_MS = 1000;

/**
 * SIGKILL to the process group a program killed by vmhook led (exec and
 * execAsync start each in its own): a subshell or tool it started would
 * otherwise run on, and change the host after the undo of what it was doing.
 */
function killGroup(pid: number): void {
  // kill(-0) would be vmhook's own group (and libvirt's, when it runs the hook in its own).
  if (!(pid > 0)) return;
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // ESRCH: nothing of it is left.
  }
}

/**
 * The process groups of the programs execAsync is running. Each leads a
 * session of its own, out of reach of the terminal: Ctrl-C (or a hangup, a
 * SIGTERM) ends vmhook run by hand, and a program left running would change
 * the host after vmhook is gone. While any runs, such a signal kills them
 * first, and vmhook then ends as the signal would have ended it.
 */
const runningGroups = new Set<number>();
/** The signals that end vmhook, by number (not from node:os, which the hook would load for this alone). */
const ENDING_SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 } as const;
type EndingSignal = keyof typeof ENDING_SIGNALS;

function endWithRunningGroups(signal: EndingSignal): void {
  for (const pid of runningGroups) killGroup(pid);
  process.exit(128 + ENDING_SIGNALS[signal]);
}

/** The execAsync calls from just before their spawn to their program's end: the handlers stay while there is one. */
let spawning = 0;

/**
 * Before a spawn: with the handlers already in place, a signal that comes
 * as the spawn returns runs endWithRunningGroups once the caller has added
 * the group (handlers run between turns of the event loop); the default
 * action would end vmhook at once, leaving the program running.
 */
function armEndingSignals(): void {
  if (spawning++ === 0) for (const signal of Object.keys(ENDING_SIGNALS)) process.on(signal, endWithRunningGroups);
}

/** After the program's end (or a spawn that failed): its group, if any, is no longer killed on a signal. */
function disarmEndingSignals(pid?: number): void {
  if (pid !== undefined) runningGroups.delete(pid);
  if (--spawning === 0) for (const signal of Object.keys(ENDING_SIGNALS)) process.off(signal, endWithRunningGroups);
}

/** What a child may print on each of stdout and stderr; past that it is killed. */
const OUTPUT_LIMIT = 16 * 1024 * 1024;

/**
 * An absolute path with "." and ".." taken away and "//" collapsed, a trailing
 * "/" kept: what path.posix.normalize gives for one, without loading
 * node:path (about 10 ms of a hook under TCG). ".." never climbs above "/",
 * so a path resolved under a root stays under it.
 */
export function normalizePath(absolute: string): string {
  // Most paths are normal already (no "//", no "." or ".." part): the split and
  // join below cost about 25 us a call under TCG, some 200 calls a prepare.
  if (!absolute.includes("//") && !absolute.includes("/.")) return absolute;
  const parts: string[] = [];
  for (const part of absolute.split("/")) {
    if (part === "..") parts.pop();
    else if (part !== "" && part !== ".") parts.push(part);
  }
  const trailing = parts.length > 0 && absolute.endsWith("/") ? "/" : "";
  return `/${parts.join("/")}${trailing}`;
}

/**
 * Why root must not run this file (its real path) of the tree at `root` as
 * code, or undefined: a tree another user can write (sudo vmhook bundle
 * --root ~/copy) would have its systemctl run as root. Root alone must be
 * able to write the file and every directory on the way to it from the real
 * /, as for plugins.d, and own every symlink on the way (a copy of a host
 * has many: usr/sbin -> bin, modprobe -> kmod). The host's own files, and a
 * user's own tree run by that user, are run as they are.
 */
export function untrustedTreeCode(root: string, real: string, because: string): string | undefined {
  if (root === "/" || process.geteuid?.() !== 0) return undefined;
  const host = new RootedHost("/");
  // A directory above the tree (the user's home) is not the tree's to chown: the tree moves.
  const tops = [root, realPathOr(root)];
  const holdsTree = (dir: string) => (tops.some((top) => top.startsWith(`${dir}/`)) ? `move ${root} to a directory only root can write, such as /srv (${dir} holds it)` : undefined);
  return pathLeadsToRootsAlone(host, (path) => fs.readlinkSync(path), real, because, { fixOf: holdsTree });
}

/** The path with its symlinks resolved (the walk above sees /var/home for /home), or itself when it cannot be. */
function realPathOr(path: string): string {
  try {
    return fs.realpathSync(path);
  } catch {
    return path;
  }
}

export class RootedHost implements Host {
  readonly root: string;

  constructor(root = "/") {
    this.root = normalizePath(root.startsWith("/") ? root : `${process.cwd()}/${root}`).replace(/(.)\/$/, "$1");
  }

  resolve(hostPath: string): string {
    if (!hostPath.startsWith("/")) throw new Error(`internal: host path must be absolute: ${hostPath}`);
    const normal = normalizePath(hostPath);
    return this.root === "/" ? normal : `${this.root}${normal}`;
  }

  /** A file that is not there is refused as one that cannot be read is (its code ENOENT): a caller that expects it catches the code. */
  read(hostPath: string): string {
    try {
      return this.readFile(hostPath);
    } catch (error) {
      throw unreadable(error, "read", hostPath);
    }
  }

  readTrimmed(hostPath: string): string | undefined {
    return unlessAbsent(() => this.readFile(hostPath).trim(), undefined, [...ABSENT, "ESRCH"], "read", hostPath);
  }

  write(hostPath: string, data: string): void {
    try {
      const fd = fs.openSync(this.resolve(hostPath), fs.constants.O_WRONLY | fs.constants.O_TRUNC);
      try {
        fs.writeSync(fd, data);
      } finally {
        fs.closeSync(fd);
      }
    } catch (error) {
      throw unwritable(error, hostPath, data);
    }
  }

  exists(hostPath: string): boolean {
    return unlessAbsent(() => this.lookUp(hostPath), false, ABSENT, "look up", hostPath);
  }

  list(hostPath: string): string[] {
    return unlessAbsent(() => this.readDirectory(hostPath).sort(), [], ABSENT, "list", hostPath);
  }

  readlink(hostPath: string): string | undefined {
    return unlessAbsent(() => this.readLinkTarget(hostPath), undefined, [...ABSENT, "EINVAL"], "read the link", hostPath);
  }

  /** read(2), open(2) to read, readdir(2), readlink(2), lstat(2), stat(2) and statfs(2) themselves: a simulated host makes them fail or fakes them; the public methods judge the errno. */
  protected readFile(hostPath: string): string {
    return fs.readFileSync(this.resolve(hostPath), "utf8");
  }

  protected readDirectory(hostPath: string): string[] {
    return fs.readdirSync(this.resolve(hostPath));
  }

  protected readLinkTarget(hostPath: string): string {
    return fs.readlinkSync(this.resolve(hostPath));
  }

  /** Nothing there is undefined, not an exception: most state files looked for are not there, and under TCG each exception costs (docs/bench.md). */
  protected statPath(hostPath: string): fs.Stats | undefined {
    return fs.lstatSync(this.resolve(hostPath), { throwIfNoEntry: false });
  }

  protected openToRead(hostPath: string): number {
    return fs.openSync(this.resolve(hostPath), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  }

  protected statFileSystem(hostPath: string): number {
    return fs.statfsSync(this.resolve(hostPath)).type;
  }

  /** A missing path is false without an exception: exists() is asked on hot paths, where most answers are no. */
  protected lookUp(hostPath: string): boolean {
    return fs.statSync(this.resolve(hostPath), { throwIfNoEntry: false }) !== undefined;
  }

  stat(hostPath: string): FileStat | undefined {
    const s = unlessAbsent(() => this.statPath(hostPath), undefined, ABSENT, "stat", hostPath);
    return s && { uid: s.uid, mode: s.mode, isFile: s.isFile(), isDirectory: s.isDirectory(), isSymlink: s.isSymbolicLink(), ctimeMs: s.ctimeMs };
  }

  fileSystemType(hostPath: string): number {
    try {
      return this.statFileSystem(hostPath);
    } catch (error) {
      throw unreadable(error, "statfs", hostPath);
    }
  }

  mkdir(hostPath: string, mode?: number): string | undefined {
    return this.changing("mkdir", hostPath, (real) => {
      const made = fs.mkdirSync(real, { recursive: true, mode });
      if (made === undefined) return undefined;
      // mkdir(2) takes the umask off: a 077 one (hardened hosts) would leave the directories to root alone.
      for (let each = real; mode !== undefined; each = each.slice(0, each.lastIndexOf("/"))) {
        fs.chmodSync(each, mode);
        if (each === made) break;
      }
      return this.root === "/" ? made : made.slice(this.root.length);
    });
  }

  remove(hostPath: string): void {
    this.changing("remove", hostPath, (real) => fs.rmSync(real, { recursive: true, force: true }));
  }

  removeIfEmpty(hostPath: string): boolean {
    try {
      this.changing("rmdir", hostPath, (real) => fs.rmdirSync(real));
      return true;
    } catch (error) {
      if (["ENOTEMPTY", "EEXIST", "ENOTDIR", ...ABSENT].includes((error as NodeJS.ErrnoException).code ?? "")) return false;
      throw error;
    }
  }

  chmod(hostPath: string, mode: number): void {
    this.changing(`chmod 0${mode.toString(8)}`, hostPath, (real) => fs.chmodSync(real, mode));
  }

  copyIn(source: string, hostPath: string): void {
    this.changing(
      `copy ${source} to`,
      hostPath,
      (real) => {
        fs.copyFileSync(source, real);
        const fd = fs.openSync(real, "r");
        try {
          this.flush(fd, hostPath);
        } finally {
          fs.closeSync(fd);
        }
      },
      source,
    );
  }

  symlink(target: string, hostPath: string): void {
    this.changing(`link ${target} at`, hostPath, (real) => fs.symlinkSync(target, real));
  }

  hardLink(existing: string, hostPath: string): void {
    const source = this.resolve(existing);
    this.changing(`link ${source} as`, hostPath, (real) => fs.linkSync(source, real), source);
  }

  createFile(hostPath: string, text: string, mode?: number): void {
    this.changing("write", hostPath, (real) => {
      const fd = createFresh(real);
      try {
        try {
          if (mode !== undefined) fs.fchmodSync(fd, mode);
          writeWhole(fd, text);
          this.flush(fd, hostPath);
        } finally {
          fs.closeSync(fd);
        }
      } catch (error) {
        // What a full file system (or a failing disk) cut short is never left to be read, or renamed into place, as the whole.
        fs.rmSync(real, { force: true });
        throw error;
      }
    });
  }

  /** fsync(2) of `hostPath`, open as `fd`: what createFile wrote survives a power loss once renamed into place. */
  protected flush(fd: number, _hostPath: string): void {
    fs.fsyncSync(fd);
  }

  rename(from: string, to: string): void {
    const source = this.resolve(from);
    this.changing(`rename ${source} to`, to, (real) => fs.renameSync(source, real), source);
  }

  async openLock(hostPath: string): Promise<LockFile> {
    const { flock } = await libc();
    const { O_CREAT, O_NOFOLLOW, O_RDONLY } = fs.constants;
    const fd = this.changing("open lock file", hostPath, (real) => fs.openSync(real, O_RDONLY | O_CREAT | O_NOFOLLOW, 0o600));
    const real = this.resolve(hostPath);
    return {
      tryLock: () => flock(fd, LOCK_EX | LOCK_NB) === 0,
      unlock: () => void flock(fd, LOCK_UN),
      stillAtPath: () => {
        try {
          return fs.lstatSync(real).ino === fs.fstatSync(fd).ino;
        } catch {
          return false;
        }
      },
      close: () => fs.closeSync(fd),
    };
  }

  openFile(hostPath: string, access: "read" | "append", mode = 0o600): number {
    if (access === "read") {
      try {
        return this.openToRead(hostPath);
      } catch (error) {
        throw unreadable(error, "read", hostPath);
      }
    }
    const { O_APPEND, O_CREAT, O_NOFOLLOW, O_NONBLOCK, O_RDWR } = fs.constants;
    return this.changing("open to append to", hostPath, (real) => fs.openSync(real, O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK, mode));
  }

  /**
   * Makes a change to `hostPath` (`action` says which); a failure is refused
   * by unchangeable(), naming the path where it is. `source` (a real path):
   * what a copy or rename takes from; ENOENT or ENOTDIR may be about it, and
   * then its fix names it.
   */
  private changing<T>(action: string, hostPath: string, change: (real: string) => T, source?: string): T {
    const real = this.resolve(hostPath);
    try {
      return this.systemCalls(action, hostPath, () => change(real));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException)?.code ?? "";
      if (source !== undefined && ABSENT.includes(code) && !presentAt(source)) {
        throw Object.assign(new FixableError(`cannot ${action} ${real} (${code})`, `${source} is not there: check each part of the path (namei -l ${source}); a directory on the way to it may be missing or a file`), { code, cause: error });
      }
      throw unchangeable(error, `${action} ${real}`, real);
    }
  }

  /** The system calls of a change themselves: a simulated host makes them fail; the public methods judge the errno. */
  protected systemCalls<T>(_action: string, _hostPath: string, calls: () => T): T {
    return calls();
  }

  exec(command: string, args: string[], options: ExecOptions): ExecResult {
    const found = this.findProgram(command);
    if (!found) return notStarted(`${command}: not found`);
    if ("refused" in found) return notStarted(found.refused);
    const program = found.program;
    // Never hand libvirt's stdout/stderr pipes to a child: a child that outlives
    // us while holding them would make libvirt wait forever. Bun.spawnSync,
    // not node:child_process: a spawn costs half as much under TCG (docs/bench.md).
    // Its own process group, so that a kill reaches what it started (killGroup).
    let result: ReturnType<typeof Bun.spawnSync>;
    try {
      result = Bun.spawnSync([program, ...args], {
        stdin: new TextEncoder().encode(options.input ?? ""),
        stdout: "pipe",
        stderr: "pipe",
        env: this.childEnv(options),
        timeout: Math.max(1, Math.floor(options.timeoutMs)),
        killSignal: "SIGKILL",
        maxBuffer: OUTPUT_LIMIT,
        detached: true,
      });
    } catch (error) {
      return notStarted(`${command}: ${(error as Error).message}`);
    }
    if (result.exitCode === null) killGroup(result.pid);
    const text = (bytes: Uint8Array | undefined) => (bytes ? Buffer.from(bytes).toString("utf8") : "");
    const overflowed = result.exitCode === null && [result.stdout, result.stderr].some((bytes) => (bytes?.length ?? 0) >= OUTPUT_LIMIT);
    return {
      status: result.exitCode,
      signal: result.signalCode ?? null,
      stdout: text(result.stdout),
      stderr: text(result.stderr),
      // With an exit status the program did finish: a process it left in the
      // background held its output pipes open until the timeout.
      timedOut: result.exitedDueToTimeout === true && result.exitCode === null,
      error: overflowed ? tooMuchOutput(command) : undefined,
    };
  }

  async execAsync(command: string, args: string[], options: ExecOptions): Promise<ExecResult> {
    const found = this.findProgram(command);
    if (!found) return notStarted(`${command}: not found`);
    if ("refused" in found) return notStarted(found.refused);
    const program = found.program;
    let child: BunSubprocess & { readonly stdin: BunFileSink };
    // With `started`, /bin/sh holds the program back until it reads
    // a line, then becomes it (exec keeps the pid `started` was given); its
    // input follows that line. It parses only this script.
    const argv = options.started ? ["/bin/sh", "-c", 'read -r go && exec "$@"', "sh", program, ...args] : [program, ...args];
    armEndingSignals();
    try {
      child = Bun.spawn(argv, { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: this.childEnv(options), detached: true });
    } catch (error) {
      disarmEndingSignals();
      return notStarted(`${command}: ${(error as Error).message}`);
    }
    runningGroups.add(child.pid);
    try {
      options.started?.(child.pid);
    } catch (error) {
      killGroup(child.pid);
      feed(child.stdin, "");
      child.unref();
      disarmEndingSignals(child.pid);
      throw error;
    }
    feed(child.stdin, `${options.started ? "go\n" : ""}${options.input ?? ""}`);
    const stdout = child.stdout.getReader();
    const stderr = child.stderr.getReader();
    let timedOut = false;
    let overflowed = false;
    let giveUp = (_: null) => {};
    const abandoned = new Promise<null>((resolve) => (giveUp = resolve));
    let grace: ReturnType<typeof setTimeout> | undefined;
    const stop = () => {
      killGroup(child.pid);
      // A process it left in the background may hold the pipes: stop reading them too.
      void stdout.cancel().catch(() => {});
      void stderr.cancel().catch(() => {});
      // SIGKILL does not reach a process blocked in the kernel (D state): it is left running, never waited for.
      grace ??= setTimeout(() => {
        child.unref();
        giveUp(null);
      }, KILL_GRACE_MS);
    };
    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, Math.max(1, Math.floor(options.timeoutMs)));
    options.signal?.addEventListener("abort", stop);
    const tooMuch = () => {
      overflowed = true;
      stop();
    };
    try {
      const [out, err, status] = await Promise.all([readAll(stdout, tooMuch), readAll(stderr, tooMuch), Promise.race([child.exited, abandoned])]);
      if (status === null) return { status: null, signal: null, stdout: out, stderr: err, timedOut, error: `${command}: still running ${KILL_GRACE_MS / 1000} s after SIGKILL (blocked in the kernel), left behind as pid ${child.pid}` };
      return {
        status: child.signalCode ? null : status,
        signal: child.signalCode,
        stdout: out,
        stderr: err,
        timedOut: timedOut && child.signalCode !== null,
        error: overflowed ? tooMuchOutput(command) : undefined,
      };
    } finally {
      clearTimeout(timer);
      clearTimeout(grace);
      options.signal?.removeEventListener("abort", stop);
      disarmEndingSignals(child.pid);
    }
  }

  private childEnv(options: ExecOptions): Record<string, string> {
    const env: Record<string, string> = { PATH: SEARCH_PATH.join(":"), LC_ALL: "C", ...options.env };
    if (this.root !== "/") env.VMHOOK_ROOT = this.root;
    return env;
  }

  async writeInHelper(hostPath: string, data: string, timeoutMs: number, started: (pid: number) => void): Promise<HelperWrite> {
    // dd, not a shell's printf: it makes one write(2) of what it reads and
    // names the kernel's errno when that fails ("No such device" from a
    // driver's probe), where dash says "I/O error" and busybox ash nothing.
    // The value reaches it through a pipe that bun closes at once; no shell
    // parses anything. dd is the system's, never one under the root.
    // The value is its gate: dd reads it only once `started` has returned,
    // and writes nothing when its input ends first (the hook died).
    const run = await this.spawnHelper(["dd", `of=${this.resolve(hostPath)}`, "conv=notrunc"], data, { PATH: SEARCH_PATH.join(":"), LC_ALL: "C" }, timeoutMs, started);
    if (!run.done) return run;
    const { result } = run;
    if (result.error) return { done: true, error: result.error };
    if (result.status === 0) return { done: true };
    // "dd: error writing '/sys/…/bind': No such device" → "No such device"; an open that failed keeps its path.
    const why = result.stderr.split("\n").find((line) => line.startsWith("dd: "))?.slice(4).replace(/^error writing '.*': /, "");
    return { done: true, error: why || `the helper ended with ${result.signal ?? `status ${result.status}`}` };
  }

  async runInHelper(command: string, args: string[], timeoutMs: number, started: (pid: number) => void): Promise<HelperRun> {
    const found = this.findProgram(command);
    if (!found) return { done: true, result: notStarted(`${command}: not found`) };
    if ("refused" in found) return { done: true, result: notStarted(found.refused) };
    const program = found.program;
    // The system's sh waits for a line before it becomes the program (exec
    // keeps the pid that `started` noted), and ends when its input ends first
    // (the hook died). It parses only this script: the program and its
    // arguments stay words of their own.
    return this.spawnHelper(["sh", "-c", 'read -r go && exec "$@"', "sh", program, ...args], "go\n", this.childEnv({ timeoutMs }), timeoutMs, started);
  }

  /**
   * Starts `argv` detached (own session; stdout to /dev/null, stderr read)
   * and waits at most timeoutMs for it, reading its stderr only until then (a
   * process it left in the background may hold it). Its stdin gets `input`
   * only once `started` has returned: until then it has nothing to act on,
   * and once this process is gone (killed in `started`) its input ends
   * without it. Bun.spawn, as in exec: half node's spawn cost under TCG.
   */
  private async spawnHelper(argv: string[], input: string, env: Record<string, string>, timeoutMs: number, started: (pid: number) => void): Promise<HelperRun> {
    let child: BunSubprocess & { readonly stdin: BunFileSink };
    try {
      child = Bun.spawn(argv, { stdin: "pipe", stdout: "ignore", stderr: "pipe", env, detached: true });
    } catch (error) {
      return { done: true, result: notStarted(`${argv[0]!.split("/").pop()}: ${(error as Error).message}`) };
    }
    try {
      started(child.pid);
    } catch (error) {
      // Not noted: the helper must not act. Its input ends empty, and it ends.
      feed(child.stdin, "");
      child.unref();
      throw error;
    }
    feed(child.stdin, input);
    const stderr = child.stderr.getReader();
    const output = readAll(stderr);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = new Promise<"gave up">((resolve) => (timer = setTimeout(() => resolve("gave up"), Math.max(1, Math.floor(timeoutMs)))));
    // Whenever the time is up: no pipe keeps this process waiting for the helper or what it left behind.
    void gaveUp.then(() => stderr.cancel().catch(() => {}));
    const status = await Promise.race([child.exited, gaveUp]);
    if (status === "gave up") {
      child.unref();
      return { done: false, pid: child.pid };
    }
    const text = await output;
    clearTimeout(timer);
    return { done: true, result: { status: child.signalCode ? null : status, signal: child.signalCode ?? null, stdout: "", stderr: text, timedOut: false } };
  }

  async ioctl(hostPath: string, request: number, argument: Uint8Array): Promise<void> {
    const call = await ioctl();
    const fd = fs.openSync(this.resolve(hostPath), fs.constants.O_RDWR);
    try {
      const errno = call(fd, request, argument);
      if (errno !== 0) {
        const { constants } = await import("node:os");
        const code = Object.entries(constants.errno).find(([, number]) => number === errno)?.[0] ?? `errno ${errno}`;
        throw Object.assign(new Error(`${code}: ioctl 0x${request.toString(16)} on ${hostPath} failed`), { code });
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Programs are looked up under the root too, so a test tree can provide fake
   * ones: the real path of the first executable one, or why it is not run.
   */
  private findProgram(command: string): { program: string } | { refused: string } | undefined {
    const candidates = command.includes("/") ? [command] : SEARCH_PATH.map((dir) => `${dir}/${command}`);
    for (const candidate of candidates) {
      const real = this.resolve(candidate);
      try {
        // Most directories do not have it: asked without an exception, which costs several times more under TCG.
        if (!fs.statSync(real, { throwIfNoEntry: false })?.isFile()) continue;
        fs.accessSync(real, fs.constants.X_OK);
      } catch {
        // not executable, or not a directory on the way: try the next directory
        continue;
      }
      const untrusted = untrustedTreeCode(this.root, real, "vmhook runs a --root tree's programs as root");
      return untrusted ? { refused: `${command}: ${real} of the --root tree not run: ${untrusted}` } : { program: real };
    }
    return undefined;
  }

  // Bun.sleepSync is a relative clock_nanosleep(CLOCK_MONOTONIC); Atomics.wait
  // waits for an absolute CLOCK_REALTIME time, so a clock stepped back an hour
  // would make a 200 ms sleep last an hour.
  sleep(ms: number): void {
    if (ms > 0) Bun.sleepSync(ms);
  }

  monotonicMs(): number {
    return performance.now(); // Bun: ms since the process started, on a clock no wall-clock step moves
  }

  wallClockMs(): number {
    return Date.now();
  }

  processAlive(pid: number): boolean {
    try {
      process.kill(pid, 0);
      return true;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === "EPERM";
    }
  }

  killProcessGroup(pid: number): void {
    killGroup(pid);
  }
}

/**
 * For text only shown to a person (a process's name in a message, a counter
 * quoted in an error): the trimmed content, or `fallback` when it is missing
 * or cannot be read. Never for anything vmhook decides from.
 */
export function readForMessage(host: Host, hostPath: string, fallback: string): string {
  try {
    return host.readTrimmed(hostPath) ?? fallback;
  } catch {
    return fallback;
  }
}

/** Whether the file reads `value` (trimmed; absent reads ""): false when it cannot be read. A write refused is known to have changed nothing only by this. */
export function readsAs(host: Host, hostPath: string, value: string): boolean {
  try {
    return (host.readTrimmed(hostPath) ?? "") === value;
  } catch {
    return false;
  }
}

/** Opens `real` as a new file; a leftover there (a file, a symlink) is removed first. Tried first without the removal: there is rarely one, and each syscall counts under TCG. */
function createFresh(real: string): number {
  const create = () => fs.openSync(real, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    return create();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
  fs.rmSync(real, { force: true });
  return create();
}

/** Whether anything is at the real path, a dangling symlink included; one that cannot be looked at counts as there (its own errno tells). */
function presentAt(real: string): boolean {
  try {
    fs.lstatSync(real);
    return true;
  } catch (error) {
    return !ABSENT.includes((error as NodeJS.ErrnoException)?.code ?? "");
  }
}

/**
 * write(2) until the whole text is written. A file system with less room
 * left than the text takes what fits and returns that count (a short write,
 * no error); the next write(2) then fails with ENOSPC.
 */
function writeWhole(fd: number, text: string): void {
  const bytes = Buffer.from(text);
  for (let written = 0; written < bytes.length; ) {
    const count = fs.writeSync(fd, bytes, written);
    // write(2) of a regular file returns 0 only for nothing to write: never loop on it.
    if (count <= 0) throw Object.assign(new Error(`EIO: write(2) wrote nothing at byte ${written} of ${bytes.length}`), { code: "EIO" });
    written += count;
  }
}

/** The errnos that mean "nothing there": the path, or a directory on the way to it, does not exist. */
const ABSENT = ["ENOENT", "ENOTDIR"];

/** What `read()` gives, or `absent` when it failed with one of `absentCodes`; any other failure is refused, naming `what` was done to the path. */
function unlessAbsent<T, A>(read: () => T, absent: A, absentCodes: string[], what: string, hostPath: string): T | A {
  try {
    return read();
  } catch (error) {
    if (absentCodes.includes((error as NodeJS.ErrnoException)?.code ?? "")) return absent;
    throw unreadable(error, what, hostPath);
  }
}

/**
 * The fix for a failure that is not the file's but the process's or the
 * system's: out of file descriptors (EMFILE, ENFILE) on the way to any file.
 * Undefined for any other errno.
 */
export function openFilesFix(code: string | undefined): string | undefined {
  if (code === "EMFILE") return "vmhook reached its limit of open files, which the hook inherits from libvirt's daemon: raise LimitNOFILE= of its service (systemctl edit virtqemud.service, or libvirtd.service; then restart it), or ulimit -n in the shell that runs vmhook, then try again";
  if (code === "ENFILE") return "the system's table of open files is full (cat /proc/sys/fs/file-nr): stop what holds so many, or raise fs.file-max (sysctl), then try again";
  return undefined;
}

/** What exists but cannot be read: refused with the path and the errno (kept as `code`), never taken as empty. For a read outside the Host's methods too (the log, opened without following a symlink). */
export function unreadable(error: unknown, what: string, hostPath: string): FixableError & { code?: string } {
  const code = (error as NodeJS.ErrnoException)?.code;
  const reason = `cannot ${what} ${hostPath} (${code ?? describeError(error)})`;
  const refused =
    code === "EACCES" || code === "EPERM"
      ? denied(reason)
      : new FixableError(reason, code !== undefined && ABSENT.includes(code) ? "it does not exist on this host" : (openFilesFix(code) ?? "vmhook does not act on what it cannot read; check why (ls -l, dmesg)"));
  return Object.assign(refused, { code, cause: error });
}

/**
 * A change to the host that failed (`action`: "mkdir /etc/vmhook", the path
 * where it is, the root joined, as the user must fix it there): refused with
 * the errno (kept as `code`) and a fix for that errno, never Node's message.
 */
export function unchangeable(error: unknown, action: string, real: string): FixableError & { code?: string } {
  const code = (error as NodeJS.ErrnoException)?.code;
  const reason = `cannot ${action} (${code ?? describeError(error)})`;
  const dir = real.slice(0, real.lastIndexOf("/")) || "/";
  const fixes: Record<string, string> = {
    EROFS: `its file system is mounted read-only (findmnt -T ${dir}): remount it read-write, then try again`,
    ENOSPC: `its file system is full (df -h ${dir}): free space there, then try again`,
    EDQUOT: `the disk quota there is used up (quota): free space there, then try again`,
    ENOTDIR: `a directory on the way to it is missing or is a file: check each part of the path (namei -l ${real})`,
    EISDIR: `a directory is in its place: see what it is (ls -ld ${real}) and move it away`,
    EEXIST: `something is in its place: see what it is (ls -ld ${real}) and move it away`,
  };
  fixes.ENOENT = fixes.ENOTDIR!;
  fixes.ENOTEMPTY = fixes.EEXIST!;
  const refused = code === "EACCES" || code === "EPERM" ? denied(reason) : new FixableError(reason, (code && fixes[code]) ?? openFilesFix(code) ?? `check why (ls -ld ${dir}, dmesg)`);
  return Object.assign(refused, { code, cause: error });
}

/**
 * A write that failed, refused with the value, the host's path (not the
 * root's) and the errno (kept as `code`): Node's own message names no file
 * when write(2) fails ("EINVAL: invalid argument, write"), which is how sysfs
 * refuses a value. A value longer than a line is left out; `cause` is the
 * error as it came.
 */
export function unwritable(error: unknown, hostPath: string, data: string): VmhookError & { code?: string } {
  const code = (error as NodeJS.ErrnoException)?.code;
  const value = data.trim();
  const what = value.length <= 40 && !value.includes("\n") ? `${JSON.stringify(value)} to ${hostPath}` : hostPath;
  return Object.assign(new VmhookError(`cannot write ${what} (${describeError(error).replace(/, (open|write) ?.*$/, "")})`), { code, cause: error });
}

/** Why a program printing past OUTPUT_LIMIT was killed; ENOBUFS, as node:child_process names it, so callers tell this failure apart. */
const tooMuchOutput = (command: string) => `${command}: printed more than ${OUTPUT_LIMIT} bytes and was killed (ENOBUFS)`;

/** The result of a program that could not be started, and why. */
const notStarted = (error: string): ExecResult => ({ status: null, signal: null, stdout: "", stderr: "", timedOut: false, error });

/** A stream's whole text, however it is cut into chunks; past OUTPUT_LIMIT, `overflow` is called and the rest is not kept. */
async function readAll(reader: ReadableStreamDefaultReader<Uint8Array>, overflow = () => {}): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  try {
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      text += decoder.decode(chunk.value, { stream: true });
      if (text.length > OUTPUT_LIMIT) {
        overflow();
        break;
      }
    }
  } catch {
    // cancelled: the helper was left behind
  }
  return text;
}

/**
 * Writes a helper's input and ends it. A helper that exited before reading it
 * (dd that could not open its file) leaves the pipe without a reader: the
 * write fails with EPIPE, which says nothing its exit status and stderr do not.
 */
function feed(stdin: BunFileSink, input: string): void {
  try {
    if (input) stdin.write(input);
    const ended = stdin.end();
    if (ended instanceof Promise) ended.catch(() => {});
  } catch {
    // the helper is gone: its exit tells what happened
  }
}
