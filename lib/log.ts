// One log line per action and undo, with time, domain, event and result:
// appended to /var/log/vmhook.log and, depending on the mode, echoed on
// stderr or kept for the failure report (libvirt shows the first stderr
// line to the user, so in hook mode the cause must come first).
import * as fs from "node:fs";
import { oneLine } from "./control-text.ts";
import { describeError, FixableError, VmhookError } from "./errors.ts";
import { unchangeable, type Host } from "./host.ts";
import { paths } from "./paths.ts";

export type LogLevel = "info" | "warn" | "error";

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** The lines logged so far (without timestamps), for the report after a failure. */
  readonly transcript: readonly string[];
}

export interface LoggerOptions {
  domain?: string;
  event?: string;
  /** "stderr": print each line as it comes (CLI); "buffer": keep it for the end (hook mode); "none": file only. */
  echo: "stderr" | "buffer" | "none";
  /** Write to the log file under the host's root (off for dry runs): opened for each line, or the fd of the log a hook's own process opened once (openLog). */
  file: boolean | number;
  /** Sees every line as it is logged (the watchdog keeps the last cause). */
  onEntry?: (level: LogLevel, line: string) => void;
  /** Told once why the log file cannot be written, when it cannot (hook mode says so at its end). */
  onFileBroken?: (error: unknown) => void;
}

export { oneLine, terminalText } from "./control-text.ts";

/** The log's widest mode: root writes it, root's group may read it, nobody else. */
const LOG_MODE = 0o640;

/**
 * The log file, opened to append to or to read. /var/log may be writable by a
 * group (root:syslog 0775 on Ubuntu), and every line carries the domain name
 * whoever defined the domain chose ("x;cmd;"): a symlink or hard link planted
 * at the log's place would have root append such lines to the file it names
 * (root's .bashrc), or copy that file's end into a bug-report bundle. So never
 * through a symlink, and only a regular file with one name, owned by the user
 * vmhook runs as; anything else (a FIFO too, opened without waiting) is refused.
 */
export function openLog(host: Host, purpose: "append" | "read", file = paths.log): number {
  const refuse = (what: string) =>
    new VmhookError(`${file} is ${what}, not the log vmhook writes; others may write /var/log, so vmhook neither writes nor reads through it: inspect it, then remove it (rm ${file})`);
  let fd: number;
  try {
    fd = host.openFile(file, purpose, LOG_MODE);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ELOOP") throw refuse("a symlink");
    // A read is refused as Host.read refuses one ("not there" is ENOENT to callers); a write names the
    // log as the host names it (not the real path under --root), with the fix for its errno.
    if (purpose === "read") throw error;
    const reason = `${file} cannot be written (${code ?? describeError(error)})`;
    throw Object.assign(new FixableError(reason, unchangeable(error, `write ${file}`, file).fix), { code, cause: error });
  }
  const stat = fs.fstatSync(fd);
  const uid = process.geteuid?.() ?? 0;
  const problem = !stat.isFile() ? "not a regular file" : stat.nlink !== 1 ? `a hard link (${stat.nlink} names)` : stat.uid !== uid ? `owned by uid ${stat.uid}` : undefined;
  if (problem !== undefined) {
    fs.closeSync(fd);
    throw refuse(problem);
  }
  try {
    if (purpose === "append") {
      // It names domains and PCI devices: root's to read, whoever made it (touch, : > under umask 022).
      if ((stat.mode & ~LOG_MODE & 0o7777) !== 0) fs.fchmodSync(fd, stat.mode & LOG_MODE);
      endCutLine(fd, stat.size);
    }
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
  return fd;
}

/**
 * Why vmhook will not write its log (a symlink, a hard link or another user's
 * file at its place), or undefined when it will (a missing log is created
 * with the first line). For a command that may log nothing, and so would
 * otherwise never say why the log stays empty.
 */
export function logRefusal(host: Host): string | undefined {
  try {
    fs.closeSync(openLog(host, "read"));
    return undefined;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    return error instanceof VmhookError ? error.message : `cannot open ${paths.log}: ${describeError(error)}`;
  }
}

/**
 * A log ending inside a line (a full disk cut the last one short) gets its
 * line ended first: this run's first line would otherwise be glued to it.
 */
function endCutLine(fd: number, size: number): void {
  if (size === 0) return;
  const last = Buffer.alloc(1);
  fs.readSync(fd, last, 0, 1, size - 1);
  // A line another hook is writing at this moment has not ended yet either, but its file grows meanwhile; a cut line stays as it is.
  if (last[0] !== 0x0a && fs.fstatSync(fd).size === size) writeEntry(fd, "\n");
}

/** One write(2) per line: with O_APPEND, lines of hooks running at once never interleave. A short write (the disk full) is an error. */
function writeEntry(fd: number, entry: string): void {
  const bytes = Buffer.from(entry);
  const written = fs.writeSync(fd, bytes);
  if (written < bytes.length) throw new Error(`a line was cut short after ${written} of ${bytes.length} bytes (the file system is full, or the file at a size limit)`);
}

/**
 * The log (or `file`, a rotated copy) from byte `from(size)` to its end, read
 * as openLog allows (never through a symlink or another user's file), with
 * the size it had then and its inode (a rotation renames it: another file is
 * then at its place).
 */
export function readLogFrom(host: Host, from: (size: number) => number, file = paths.log): { text: string; size: number; start: number; inode: number } {
  const fd = openLog(host, "read", file);
  try {
    const { size, ino } = fs.fstatSync(fd);
    const start = Math.max(0, Math.min(size, from(size)));
    const buffer = Buffer.alloc(size - start);
    fs.readSync(fd, buffer, 0, buffer.length, start);
    return { text: buffer.toString("utf8"), size, start, inode: ino };
  } finally {
    fs.closeSync(fd);
  }
}

/** Why the log cannot be written, for stderr: a refusal says itself; a failure of the file system (ENOSPC, EROFS) names the log. */
export function logProblem(error: unknown): string {
  return error instanceof VmhookError ? error.message : `${paths.log} cannot be written (${describeError(error)})`;
}

function appendToLog(host: Host, entry: string): void {
  const fd = openLog(host, "append");
  try {
    writeEntry(fd, entry);
  } finally {
    fs.closeSync(fd);
  }
}

export function createLogger(host: Host, options: LoggerOptions): Logger {
  const transcript: string[] = [];
  // The domain name is libvirt's argument, written by whoever defined the domain.
  const context = oneLine([options.domain, options.event].filter(Boolean).join(" "));
  let fileBroken = !options.file;
  const emit = (level: LogLevel, message: string) => {
    const text = oneLine(message);
    const line = `${level === "info" ? "" : `${level}: `}${text}`;
    transcript.push(line);
    options.onEntry?.(level, text);
    if (options.echo === "stderr") process.stderr.write(`vmhook: ${line}\n`);
    if (fileBroken) return;
    try {
      const entry = `${new Date(host.wallClockMs()).toISOString()} ${context ? `[${context}] ` : ""}${line}\n`;
      if (typeof options.file === "number") writeEntry(options.file, entry);
      else appendToLog(host, entry);
    } catch (error) {
      fileBroken = true; // a read-only /var/log must never fail a VM start
      options.onFileBroken?.(error);
      // The CLI says why once; in hook mode stderr's first line stays the cause.
      if (options.echo === "stderr") process.stderr.write(`vmhook: warn: ${oneLine(logProblem(error))}\n`);
    }
  };
  return {
    info: (message) => emit("info", message),
    warn: (message) => emit("warn", message),
    error: (message) => emit("error", message),
    transcript,
  };
}
