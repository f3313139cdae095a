// A simulated host for unit tests: a temporary directory as the root (files,
// symlinks, directories as sysfs/procfs would have them), plus simulated
// kernel behaviour on writes and simulated programs on exec.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { VmhookError } from "../../lib/errors.ts";
import { RootedHost, unwritable, type ExecOptions, type ExecResult, type HelperRun, type HelperWrite } from "../../lib/host.ts";

export type WriteHandler = (data: string, hostPath: string, sim: SimHost) => void;
export type IoctlHandler = (request: number, argument: Uint8Array, hostPath: string, sim: SimHost) => void;
export type ExecHandler = (args: string[], sim: SimHost, options: ExecOptions) => Partial<ExecResult> | void;

/** The reading system calls a test can make fail: read(2) behind read and readTrimmed, readdir(2) behind list, readlink(2). */
type ReadCall = "read" | "list" | "readlink" | "stat" | "exists";

/** What every host operation of a hook killed by killAtChange() throws: a killed process does nothing more. */
export class ProcessKilled extends Error {}

/** What exec of a program that hangs in a driver throws: the real exec would never return. */
class HookHung extends Error {}

export class SimHost extends RootedHost {
  /** Every write and exec, in order: what a test asserts on. */
  readonly writes: { path: string; data: string }[] = [];
  readonly execs: { command: string; args: string[] }[] = [];
  private readonly writeHandlers: { match: string | RegExp; handler: WriteHandler }[] = [];
  private readonly execHandlers = new Map<string, ExecHandler>();
  private readonly ioctlHandlers: { match: string | RegExp; handler: IoctlHandler }[] = [];
  /** Every ioctl, in order. */
  readonly ioctls: { path: string; request: number; argument: number[] }[] = [];
  private readonly failures: { match: string | RegExp; error: string }[] = [];
  private readonly changeFailures: { match: string | RegExp; error: string }[] = [];
  private readonly readFailures: { call: ReadCall; match: string | RegExp; code: string }[] = [];
  private readonly hangs: { match: string | RegExp; data?: string }[] = [];
  /** Writes whose helper hangs in a driver: they take effect at finishHungWrites(). */
  readonly hung: { pid: number; path: string; data: string }[] = [];
  private readonly hangingPrograms: { command: string; args?: string[] }[] = [];
  /** Programs the hook is killed during (outliveHook). */
  private readonly outliving: { command: string; args: string[] }[] = [];
  /** Programs that hang in a driver (rmmod in a remove()): they run at finishHungWrites(). */
  readonly hungPrograms: { pid: number; command: string; args: string[] }[] = [];
  private nextPid = 4000;
  private readonly mounts = new Map<string, number>();
  /** Owners stat(2) gives in place of the real ones (a test runs as one user and cannot make files of others). */
  private readonly owners = new Map<string, number>();
  /**
   * Every state-changing operation of the hook, in order ("write PATH",
   * "run modprobe vfio-pci", "create /run/vmhook/UUID.json.tmp", ...). What
   * the simulated kernel and programs do on their behalf is not the hook's.
   */
  readonly changes: string[] = [];
  /** Programs the hook runs in the background that end later than the next event-loop turn (endLater). */
  private readonly lateEnds: { command: string; args: string; after: string | RegExp }[] = [];
  /** Wall-clock time every program the hook runs takes (slowDown). */
  private programMs = 0;
  /** The change the hook is killed at: its number, or the change itself. */
  private killAt: number | string | undefined;
  /** The operation the hook was killed at; from then on every operation throws ProcessKilled. */
  private killedAt: string | undefined;
  /** Above 0 while the simulated kernel or a program acts: its own operations are never killed. */
  private kernelDepth = 0;

  /** Where hosts are built: the temporary directory, or RAM inside inMemory(). */
  private static parent: string | undefined;

  constructor() {
    super(fs.mkdtempSync(path.join(SimHost.parent ?? os.tmpdir(), "vmhook-sim-")));
    leftAtExit.add(this.root);
  }

  /** Runs `build` with every SimHost it creates in RAM (/dev/shm), for tests that build hundreds: on a disk, their metadata writes cost most of the time. Call cleanup() on each. */
  static inMemory<T>(build: () => T): T {
    SimHost.parent = fs.existsSync("/dev/shm") ? "/dev/shm" : undefined;
    try {
      return build();
    } finally {
      SimHost.parent = undefined;
    }
  }

  /** Creates a file (and its parent directories) with this content. */
  file(hostPath: string, content: string | number = ""): this {
    const real = this.resolve(hostPath);
    fs.mkdirSync(path.dirname(real), { recursive: true });
    fs.writeFileSync(real, `${content}`.endsWith("\n") || content === "" ? `${content}` : `${content}\n`);
    return this;
  }

  dir(hostPath: string): this {
    fs.mkdirSync(this.resolve(hostPath), { recursive: true });
    return this;
  }

  link(hostPath: string, target: string): this {
    const real = this.resolve(hostPath);
    fs.mkdirSync(path.dirname(real), { recursive: true });
    fs.rmSync(real, { force: true });
    fs.symlinkSync(target, real);
    return this;
  }

  /** Simulated mount: statfs(2) of `hostPath` and of what is below it gives this f_type (linux/magic.h), stat what the tree holds (a FUSE daemon's answer). */
  mountFileSystem(hostPath: string, type: number): this {
    this.mounts.set(hostPath, type);
    return this;
  }

  /** Simulated ownership: stat of `hostPath` gives this uid. */
  own(hostPath: string, uid: number): this {
    this.owners.set(hostPath, uid);
    return this;
  }

  /**
   * A process in the simulated /proc: its stat (start time `start`), command
   * line and status (real, effective, saved and file system uid `uid`).
   */
  process(pid: number, argv: string[], { start = 1000, uid = 0 } = {}): this {
    this.file(`/proc/${pid}/stat`, `${pid} (${argv[0]!.split("/").pop()!.slice(0, 15)}) S 1 ${pid} ${pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 ${start} 2314240 1`);
    this.file(`/proc/${pid}/cmdline`, `${argv.join("\0")}\0`);
    return this.file(`/proc/${pid}/status`, `Name:\t${argv[0]!.split("/").pop()!.slice(0, 15)}\nState:\tS (sleeping)\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\n`);
  }

  /** A process is alive while the simulated /proc lists it, as kill(pid, 0) on a real host: no real process's pid passes for one of the simulated host's. */
  override processAlive(pid: number): boolean {
    return this.exists(`/proc/${pid}`);
  }

  /** Simulated kernel behaviour: instead of storing the value, run the handler. */
  onWrite(match: string | RegExp, handler: WriteHandler): this {
    this.writeHandlers.push({ match, handler });
    return this;
  }

  /** Simulated program (modprobe, systemctl, ...). Unknown programs are "not found". */
  onExec(command: string, handler: ExecHandler): this {
    this.execHandlers.set(command, handler);
    return this;
  }

  /** The simulated program now behind `command`, for one that adds to it. */
  execHandler(command: string): ExecHandler | undefined {
    return this.execHandlers.get(command);
  }

  /** Simulated driver behaviour for ioctl(2) on matching files (the handler added last wins); any other ioctl fails with ENOTTY. */
  onIoctl(match: string | RegExp, handler: IoctlHandler): this {
    this.ioctlHandlers.push({ match, handler });
    return this;
  }

  /** Makes writes to matching paths fail with this errno: write(2) of a sysfs file, or a state file's createFile (e.g. "ENOSPC": /run is full). */
  failWrite(match: string | RegExp, error: string): this {
    this.failures.push({ match, error });
    return this;
  }

  /**
   * Makes every other change to matching paths (mkdir, remove, rmdir, rename to,
   * chmod, copyIn, symlink, hardLink, opening a lock file or opening a file
   * to append to) fail with this errno (e.g. "EROFS": a read-only /etc). A
   * lock file already there opens whatever a failure of making one says
   * (EROFS, ENOSPC, EDQUOT): it is opened read-only.
   */
  failChange(match: string | RegExp, error: string): this {
    this.changeFailures.push({ match, error });
    return this;
  }

  /** Makes listing matching directories fail with this errno (e.g. "EACCES" for a /proc/PID/fd of another user, "EIO"). */
  failList(match: string | RegExp, code: string): this {
    this.readFailures.push({ call: "list", match, code });
    return this;
  }

  /** Makes reading matching files (read, readTrimmed, openFile to read) fail with this errno (e.g. "EIO", "EACCES", "ENODEV" as a sysfs attribute may). */
  failRead(match: string | RegExp, code: string): this {
    this.readFailures.push({ call: "read", match, code });
    return this;
  }

  /** Makes readlink of matching paths fail with this errno. */
  failReadlink(match: string | RegExp, code: string): this {
    this.readFailures.push({ call: "readlink", match, code });
    return this;
  }

  /** Makes stat (lstat(2)) of matching paths fail with this errno (e.g. "EACCES" from a security module, "ELOOP"). */
  failStat(match: string | RegExp, code: string): this {
    this.readFailures.push({ call: "stat", match, code });
    return this;
  }

  /** Makes exists (stat(2)) of matching paths fail with this errno (e.g. "ELOOP", "EACCES" from a security module). */
  failExists(match: string | RegExp, code: string): this {
    this.readFailures.push({ call: "exists", match, code });
    return this;
  }

  /** Writes (of `data`, or any) to matching paths done in a helper never return (a driver's remove() that blocks): the helper stays in D state. */
  hangWrite(match: string | RegExp, data?: string): this {
    this.hangs.push({ match, data });
    return this;
  }

  /** Runs of `command` (with exactly these args, or any) never return (rmmod whose driver's remove() blocks): the process stays in D state. */
  hangProgram(command: string, args?: string[]): this {
    this.hangingPrograms.push({ command, args });
    return this;
  }

  /**
   * The hook is killed (kill -9) while a run of `command` (with exactly these
   * args) goes on: the program outlives it, in /proc, and acts only at
   * finishHungWrites(), after whatever the next hooks did meanwhile.
   */
  outliveHook(command: string, args: string[]): this {
    this.outliving.push({ command, args });
    return this;
  }

  /** A run the hook is killed during (outliveHook): the program stays, in /proc, with the hook's pid noted by `started` if given; the hook dies. */
  private orphan(command: string, args: string[], started: (pid: number) => void): never {
    const index = this.outliving.findIndex((run) => run.command === command && run.args.join(" ") === args.join(" "));
    this.outliving.splice(index, 1);
    const pid = this.startHelper(command, false, started);
    this.execs.push({ command, args });
    this.hungPrograms.push({ pid, command, args });
    this.killedAt = `waiting for ${[command, ...args].join(" ")}`;
    throw new ProcessKilled(`the hook was killed at: ${this.killedAt}`);
  }

  private outlives(command: string, args: string[]): boolean {
    return this.outliving.some((run) => run.command === command && run.args.join(" ") === args.join(" "));
  }

  /** The hanging drivers return: their writes take effect, their programs run, and their helpers exit. */
  finishHungWrites(): void {
    this.hangs.length = 0;
    this.hangingPrograms.length = 0;
    for (const { pid, path: hostPath, data } of this.hung.splice(0)) {
      this.remove(`/proc/${pid}`);
      this.write(hostPath, data);
    }
    for (const { pid, command, args } of this.hungPrograms.splice(0)) {
      this.remove(`/proc/${pid}`);
      this.asKernel(() => this.programResult(command, args, { timeoutMs: 0 }));
    }
  }

  /** A slow or loaded host: every program the hook runs takes `ms` of wall-clock time more. */
  slowDown(ms: number): this {
    this.programMs = ms;
    return this;
  }

  /**
   * Every background run (runInHelper, execAsync) of `command` with exactly
   * these args ends once the hook has made a change `after` matches since the
   * run started (or was killed: it makes no more), in place of the next
   * event-loop turn: the other order of a background program and the hook's
   * own steps, as deterministic as the first (it follows from the hook's
   * changes, never from time).
   */
  endLater(command: string, args: string[], after: string | RegExp): this {
    this.lateEnds.push({ command, args: args.join(" "), after });
    return this;
  }

  /** A background program's end: the next event-loop turn, or as endLater says. */
  private async programEnds(command: string, args: string[]): Promise<void> {
    const late = this.lateEnds.find((run) => run.command === command && run.args === args.join(" "));
    if (!late) return nextMacrotask();
    const from = this.changes.length;
    const ended = () => this.changes.slice(from).some((change) => matches(late.after, change)) || this.killedAt !== undefined;
    for (let turns = 0; !ended(); turns++) {
      // A hook that waits for the program before it makes the change would wait for good: the test is wrong, not the hook.
      if (turns === LATE_END_TURNS) throw new Error(`${[command, ...args].join(" ")} was to end once the hook had made a change matching ${String(late.after)}, which it did not in ${LATE_END_TURNS} event-loop turns`);
      await nextMacrotask();
    }
    await nextMacrotask();
  }

  /** The hook is killed (kill -9) at its `n`-th state-changing operation from now: that one and everything after it throw ProcessKilled. */
  killAtChange(n: number | string): void {
    this.changes.length = 0;
    this.killAt = n;
    this.killedAt = undefined;
  }

  /** The host as the next process finds it: nothing is killed any more. Returns the operation the kill stopped, if it was reached. */
  revive(): string | undefined {
    const killedAt = this.killedAt;
    this.killAt = this.killedAt = undefined;
    return killedAt;
  }

  /** A state-changing operation of the hook is about to happen: counted, or refused when the hook is (now) killed. */
  private change(what: string): void {
    if (this.kernelDepth > 0) return;
    this.stillAlive();
    this.changes.push(what);
    if (this.changes.length === this.killAt || what === this.killAt) {
      this.killedAt = what;
      this.stillAlive();
    }
  }

  private stillAlive(): void {
    if (this.killedAt !== undefined && this.kernelDepth === 0) throw new ProcessKilled(`the hook was killed at: ${this.killedAt}`);
  }

  /** Whether the simulated kernel or a program is at work now (what it reads is not the hook's). */
  get inKernel(): boolean {
    return this.kernelDepth > 0;
  }

  /** The simulated kernel or a program at work: what it does goes on whether the hook lives or not. */
  private asKernel<T>(work: () => T): T {
    this.kernelDepth++;
    try {
      return work();
    } finally {
      this.kernelDepth--;
    }
  }

  clearFailures(): void {
    this.failures.length = 0;
    this.changeFailures.length = 0;
    this.readFailures.length = 0;
  }

  /** The simulated failure comes from the system call: RootedHost's readTrimmed, list and readlink judge it as they judge a real one. */
  protected override readFile(hostPath: string): string {
    this.failIfAsked("read", hostPath);
    return super.readFile(hostPath);
  }

  protected override openToRead(hostPath: string): number {
    this.failIfAsked("read", hostPath);
    return super.openToRead(hostPath);
  }

  protected override readDirectory(hostPath: string): string[] {
    this.failIfAsked("list", hostPath);
    return super.readDirectory(hostPath);
  }

  protected override readLinkTarget(hostPath: string): string {
    this.failIfAsked("readlink", hostPath);
    return super.readLinkTarget(hostPath);
  }

  protected override statPath(hostPath: string): fs.Stats | undefined {
    this.failIfAsked("stat", hostPath);
    const stats = super.statPath(hostPath);
    const owner = this.owners.get(hostPath);
    return stats === undefined || owner === undefined ? stats : Object.assign(stats, { uid: owner });
  }

  protected override statFileSystem(hostPath: string): number {
    this.stillAlive();
    // The deepest mount holding the path, as the kernel's lookup crosses them.
    for (let dir = hostPath; ; dir = dir.slice(0, dir.lastIndexOf("/")) || "/") {
      const type = this.mounts.get(dir);
      if (type !== undefined) return type;
      if (dir === "/") return super.statFileSystem(hostPath);
    }
  }

  protected override lookUp(hostPath: string): boolean {
    this.failIfAsked("exists", hostPath);
    return super.lookUp(hostPath);
  }

  private failIfAsked(call: ReadCall, hostPath: string): void {
    this.stillAlive();
    const failure = this.readFailures.find((f) => f.call === call && matches(f.match, hostPath));
    if (failure) throw Object.assign(new Error(`${failure.code}: simulated failure of ${call} on ${hostPath}`), { code: failure.code });
  }

  /** Writes as the kernel would take them: the file must exist (sysfs never creates files). */
  override write(hostPath: string, data: string): void {
    this.change(`write "${data.trim()}" to ${hostPath}`);
    this.asKernel(() => {
      try {
        this.kernelWrite(hostPath, data);
      } catch (error) {
        // What the simulated kernel refuses comes out as RootedHost.write says a real refusal.
        throw (error as NodeJS.ErrnoException).code && !(error instanceof VmhookError) ? unwritable(error, hostPath, data) : error;
      }
    });
  }

  private kernelWrite(hostPath: string, data: string): void {
    const failure = this.failures.find((f) => matches(f.match, hostPath));
    if (failure) {
      const error = new Error(`${failure.error}: simulated failure writing ${hostPath}`) as NodeJS.ErrnoException;
      error.code = failure.error;
      throw error;
    }
    this.writes.push({ path: hostPath, data });
    const handler = this.writeHandlers.find((h) => matches(h.match, hostPath));
    if (handler) return handler.handler(data.trim(), hostPath, this);
    if (!fs.existsSync(this.resolve(hostPath))) {
      throw Object.assign(new Error("ENOENT: no such file or directory"), { code: "ENOENT" });
    }
    super.write(hostPath, data);
  }

  /** As the kernel would take it, in a simulated helper process; one that hangs appears in /proc in D state. Once started, the helper writes whatever becomes of the hook. */
  override async writeInHelper(hostPath: string, data: string, _timeoutMs: number, started: (pid: number) => void): Promise<HelperWrite> {
    this.change(`start a helper writing "${data}" to ${hostPath}`);
    const hangs = this.hangs.some((hang) => matches(hang.match, hostPath) && (hang.data === undefined || hang.data === data));
    const pid = this.startHelper(hangs ? "sh" : "dd", hangs, started);
    return this.asKernel(() => this.helperWrites(pid, hostPath, data, hangs));
  }

  /** The simulated program in a simulated helper process; one that hangs appears in /proc in D state and runs at finishHungWrites(). */
  override async runInHelper(command: string, args: string[], timeoutMs: number, started: (pid: number) => void): Promise<HelperRun> {
    this.change(`start a helper running ${[command, ...args].join(" ")}`);
    const hangs = this.programHangs(command, args);
    const pid = this.startHelper(command, hangs, started);
    this.execs.push({ command, args });
    if (hangs) {
      this.hungPrograms.push({ pid, command, args });
      return { done: false, pid };
    }
    // It runs a macrotask later (or as endLater says), as execAsync's program: what the caller does meanwhile (a background modprobe's next steps) comes first.
    await this.programEnds(command, args);
    return this.asKernel(() => {
      try {
        return { done: true, result: this.programResult(command, args, { timeoutMs }) };
      } finally {
        this.remove(`/proc/${pid}`);
      }
    });
  }

  private programHangs(command: string, args: string[]): boolean {
    return this.hangingPrograms.some((hang) => hang.command === command && (hang.args === undefined || hang.args.join(" ") === args.join(" ")));
  }

  /**
   * A helper process, in /proc while it runs (the note taken at its start
   * sees a live helper). As RootedHost's, it acts only once `started` has
   * returned, and then whatever becomes of the hook; when `started` throws
   * (the hook killed before it noted the helper), it ends having done nothing.
   */
  private startHelper(comm: string, hangs: boolean, started: (pid: number) => void): number {
    const pid = this.nextPid++;
    this.file(`/proc/${pid}/stat`, `${pid} (${comm}) ${hangs ? "D" : "R"} 1 ${pid} ${pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 ${pid * 10} 2314240 1`);
    try {
      started(pid);
    } catch (error) {
      this.asKernel(() => this.remove(`/proc/${pid}`));
      throw error;
    }
    return pid;
  }

  private helperWrites(pid: number, hostPath: string, data: string, hangs: boolean): HelperWrite {
    if (hangs) {
      this.writes.push({ path: hostPath, data });
      this.hung.push({ pid, path: hostPath, data });
      return { done: false, pid };
    }
    try {
      this.write(hostPath, data);
      return { done: true };
    } catch (error) {
      // A helper's dd reports the kernel's answer alone.
      return { done: true, error: ((error as Error).cause instanceof Error ? (error as Error).cause as Error : (error as Error)).message };
    } finally {
      this.remove(`/proc/${pid}`);
    }
  }

  override async ioctl(hostPath: string, request: number, argument: Uint8Array): Promise<void> {
    this.change(`ioctl 0x${request.toString(16)} on ${hostPath}`);
    this.asKernel(() => this.kernelIoctl(hostPath, request, argument));
  }

  private kernelIoctl(hostPath: string, request: number, argument: Uint8Array): void {
    this.ioctls.push({ path: hostPath, request, argument: [...argument] });
    const handler = [...this.ioctlHandlers].reverse().find((h) => matches(h.match, hostPath));
    if (!this.exists(hostPath)) throw Object.assign(new Error(`ENOENT: no such file ${hostPath}`), { code: "ENOENT" });
    if (!handler) throw Object.assign(new Error(`ENOTTY: ioctl 0x${request.toString(16)} on ${hostPath} failed`), { code: "ENOTTY" });
    handler.handler(request, argument, hostPath, this);
  }

  /**
   * A program that hangs in a driver blocks exec for good: Bun.spawnSync waits
   * for its child even after the SIGKILL at its timeout, which a process in D
   * state never gets. The hook would hang (and libvirt with it): HookHung.
   */
  override exec(command: string, args: string[], options: ExecOptions): ExecResult {
    this.change(`run ${[command, ...args].join(" ")}`);
    super.sleep(this.programMs);
    if (!this.inKernel && this.outlives(command, args)) this.orphan(command, args, () => {});
    if (this.programHangs(command, args)) throw new HookHung(`the hook hangs: exec waits forever for ${[command, ...args].join(" ")}, blocked in the kernel (run it through runInHelper)`);
    return this.asKernel(() => this.runProgram(command, args, options));
  }

  private runProgram(command: string, args: string[], options: ExecOptions): ExecResult {
    this.execs.push({ command, args });
    return this.programResult(command, args, options);
  }

  private programResult(command: string, args: string[], options: ExecOptions): ExecResult {
    const handler = this.execHandlers.get(command);
    if (!handler) return { status: null, signal: null, stdout: "", stderr: "", timedOut: false, error: `${command}: not found` };
    return { status: 0, signal: null, stdout: "", stderr: "", timedOut: false, ...(handler(args, this, options) ?? {}) };
  }

  /** The program is recorded when it starts and runs a macrotask later, so that what the caller does meanwhile comes first, as with a real child. */
  override async execAsync(command: string, args: string[], options: ExecOptions): Promise<ExecResult> {
    this.change(`start ${[command, ...args].join(" ")}`);
    if (this.outlives(command, args)) this.orphan(command, args, options.started ?? (() => {}));
    const started = this.execs.length;
    // With `started`: a process in /proc while it runs, as startHelper's.
    const pid = options.started ? this.startHelper(command, false, options.started) : undefined;
    // Once started, the program runs to its end whatever becomes of the hook.
    await this.programEnds(command, args);
    const result = this.asKernel(() => this.exec(command, args, options));
    if (pid !== undefined) this.endProcess(pid);
    this.execs.splice(started, 0, this.execs.pop()!);
    return result;
  }

  /** The groups killed (killProcessGroup): a process in D state stays in /proc. */
  readonly killedGroups: number[] = [];

  override killProcessGroup(pid: number): void {
    this.killedGroups.push(pid);
    if (/^\d+ \(.*\) D /.test(this.readTrimmed(`/proc/${pid}/stat`) ?? "")) return;
    this.endProcess(pid);
    // A program killed before it acted (one that outlived its hook) acts no more.
    const killed = this.hungPrograms.findIndex((run) => run.pid === pid);
    if (killed !== -1) this.hungPrograms.splice(killed, 1);
  }

  /** The process leaves /proc; so does /proc once empty (a host tree without one gets it only while a process runs). */
  private endProcess(pid: number): void {
    this.asKernel(() => {
      this.remove(`/proc/${pid}`);
      if (this.list("/proc").length === 0) this.remove("/proc");
    });
  }

  override mkdir(hostPath: string, mode?: number): string | undefined {
    this.change(`mkdir ${hostPath}`);
    return super.mkdir(hostPath, mode);
  }

  override remove(hostPath: string): void {
    this.change(`remove ${hostPath}`);
    super.remove(hostPath);
  }

  override removeIfEmpty(hostPath: string): boolean {
    this.change(`rmdir ${hostPath}`);
    return super.removeIfEmpty(hostPath);
  }

  override createFile(hostPath: string, text: string, mode?: number): void {
    this.change(`create ${hostPath}`);
    super.createFile(hostPath, text, mode);
  }

  /** A failWrite fails createFile: at open(2) (EROFS, EACCES: nothing is made), or at its flush (ENOSPC, EDQUOT, EIO, EFBIG: write(2) or fsync(2) of the file open(2) made); a failChange fails any other change. */
  protected override systemCalls<T>(action: string, hostPath: string, calls: () => T): T {
    const failure = (action === "write" ? this.failures : this.changeFailures).find((f) => matches(f.match, hostPath));
    if (!failure || (action === "write" && FAILS_ONCE_CREATED.includes(failure.error))) return calls();
    if (action === "open lock file" && FAILS_TO_CREATE.includes(failure.error) && fs.existsSync(this.resolve(hostPath))) return calls();
    throw Object.assign(new Error(`${failure.error}: simulated failure writing ${hostPath}`), { code: failure.error });
  }

  /** A simulated host never outlives a power loss: no fsync, which costs milliseconds on a disk. A failWrite of a file made (ENOSPC …) fails here, as write(2) or fsync(2) would. */
  protected override flush(_fd: number, hostPath: string): void {
    const failure = this.failures.find((f) => matches(f.match, hostPath) && FAILS_ONCE_CREATED.includes(f.error));
    if (failure) throw Object.assign(new Error(`${failure.error}: simulated failure writing ${hostPath}`), { code: failure.error });
  }

  override rename(from: string, to: string): void {
    this.change(`rename ${from} to ${to}`);
    super.rename(from, to);
  }

  override hardLink(existing: string, hostPath: string): void {
    this.change(`link ${existing} as ${hostPath}`);
    super.hardLink(existing, hostPath);
  }

  override sleep(ms: number): void {
    this.stillAlive();
    super.sleep(ms);
  }

  /** Every file and link under the root except vmhook's own state and log: compare before/after. */
  snapshot(): Record<string, string> {
    const result: Record<string, string> = {};
    const walk = (dir: string) => {
      for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const real = path.join(dir, entry.name);
        const hostPath = `/${path.relative(this.root, real)}`;
        // vmhook's own state is not host state; /run itself, which holding vmhook's lock may create, is walked, not compared.
        if (hostPath.startsWith("/run/vmhook") || hostPath.startsWith("/var/log")) continue;
        if (hostPath === "/run") {
          walk(real);
          continue;
        }
        if (entry.isSymbolicLink()) result[hostPath] = `-> ${fs.readlinkSync(real)}`;
        else if (entry.isDirectory()) {
          result[hostPath] = "<dir>";
          walk(real);
        } else result[hostPath] = fs.readFileSync(real, "utf8");
      }
    };
    walk(this.root);
    return result;
  }

  /** Files under /run/vmhook: journals, claims, shared state, notes, and the temp copy of one a killed writer left (locks excluded). */
  stateFiles(): string[] {
    const dir = this.resolve("/run/vmhook");
    if (!fs.existsSync(dir)) return [];
    return fs.readdirSync(dir, { recursive: true }).map(String).filter((f) => /\.json(\.tmp)?$/.test(f)).sort();
  }

  cleanup(): void {
    fs.rmSync(this.root, { recursive: true, force: true });
    leftAtExit.delete(this.root);
  }
}

/** The hosts no test cleaned up, removed when the test process exits: a run leaves nothing in the temporary directory. */
const leftAtExit = new Set<string>();
process.once("exit", () => {
  for (const root of leftAtExit) fs.rmSync(root, { recursive: true, force: true });
});

/** The errnos of a write(2) or fsync(2) into a file open(2) has made. */
const FAILS_ONCE_CREATED = ["ENOSPC", "EDQUOT", "EIO", "EFBIG"];

/** The errnos of an open(2) that would make the file: one already there opens read-only without them. */
const FAILS_TO_CREATE = ["EROFS", "ENOSPC", "EDQUOT"];

const matches = (match: string | RegExp, hostPath: string) => (typeof match === "string" ? match === hostPath : match.test(hostPath));

/**
 * A simulated program's end: the next turn of the event loop, after what the
 * caller does meanwhile. setImmediate, never setTimeout(0): a timer fires once
 * 1 ms has passed, so how many of the hook's own setImmediate turns
 * (transaction.ts's settleWithin) came first would depend on the machine's
 * speed and load, and a clean run would make its changes in another order.
 */
const nextMacrotask = () => new Promise<void>((resolve) => setImmediate(resolve));

/** How long a program endLater holds for a change waits at most: far more turns than any hook takes to make it. */
const LATE_END_TURNS = 100_000;
