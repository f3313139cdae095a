// vmhook's own state under /run/vmhook: journals, the claims ledger, locks.
// Root acts on what these files say, so the directory is checked before every
// use (ours, nobody else can write it, no symlink), files are opened without
// following symlinks, and a write is a new file renamed into place: a
// symlink planted where a journal goes is replaced, never written through.
import * as fs from "node:fs";
import { denied, describeError, FixableError, FixThenRecover, VmhookError } from "./errors.ts";
import { openFilesFix, type FileStat, type Host } from "./host.ts";
import { paths } from "./paths.ts";

const TEMP_SUFFIX = ".tmp";
/** write-file-atomic's temp names (vmhook before 0.2): FILE.json.HASH */
const LEGACY_TEMP = /\.json\.[0-9a-f]{6,}$/;

const octal = (mode: number) => `0${(mode & 0o777).toString(8)}`;

/**
 * Creates the state directory (mode 0700) or checks the one there: a real
 * directory, owned by the user vmhook runs as (root), not writable by
 * others. One that others may only read is tightened to 0700.
 */
export function ensureStateDir(host: Host, dir = paths.stateDir): void {
  let stat = refuseUntrustedStateDir(host, dir);
  if (!stat) {
    try {
      host.mkdir(dir, 0o700);
    } catch (error) {
      throw unchangeableState(error, "create", dir);
    }
    stat = refuseUntrustedStateDir(host, dir)!;
  }
  if ((stat.mode & 0o077) === 0) return;
  try {
    host.chmod(dir, 0o700);
  } catch (error) {
    throw unchangeableState(error, "chmod 0700", dir);
  }
}

/**
 * A change to vmhook's state that failed (`what`: "write", "create", "open
 * lock file"): refused naming the host's path and the errno (kept as `code`),
 * never Node's message with the real path, with the fix for that errno. The
 * one refusal of every state file, the journals, the claims ledger, shared
 * state, stuck-write notes and locks alike: /run full (of pages or of inodes)
 * reads the same whichever of them met it first.
 */
export function unchangeableState(error: unknown, what: string, hostPath: string): FixableError & { code?: string } {
  const code = (error as NodeJS.ErrnoException)?.code;
  const full = code === "ENOSPC";
  const reason = `cannot ${what} ${hostPath} (${full ? "ENOSPC: the file system is full" : (code ?? describeError(error))})`;
  // Room again, or read-write again: what vmhook holds (if anything: FixThenRecover) is given back by vmhook recover.
  const remedy = full
    ? `vmhook records every change there before it makes it; free space in /run (df -h ${paths.stateDir}, df -i ${paths.stateDir})`
    : code === "EROFS"
      ? `its file system is mounted read-only (findmnt -T ${paths.stateDir}): remount it read-write`
      : undefined;
  const fix = openFilesFix(code) ?? `vmhook records every change in ${paths.stateDir} before it makes it: check why (ls -ld ${paths.stateDir}, df -h ${paths.stateDir}, dmesg)`;
  const refused = code === "EACCES" || code === "EPERM" ? denied(reason) : remedy ? new FixThenRecover(reason, remedy) : new FixableError(reason, fix);
  return Object.assign(refused, { code, cause: error });
}

/**
 * Throws unless the state directory there is one vmhook may trust (see
 * ensureStateDir); changes nothing, so `vmhook doctor` says what the hook
 * would refuse. Nothing there passes: there is nothing to trust yet.
 * Returns what it checked (lstat), undefined when nothing is there; one that
 * cannot be looked at is refused as the host refuses what it cannot read.
 */
export function refuseUntrustedStateDir(host: Host, dir = paths.stateDir): FileStat | undefined {
  const stat = host.stat(dir);
  if (!stat) return undefined;
  if (stat.isSymlink) throw new VmhookError(`${dir} is a symlink; vmhook keeps its journals only in a directory it owns: remove it (rm ${dir}) and let vmhook create it`);
  if (!stat.isDirectory) throw new VmhookError(`${dir} is not a directory; remove it (rm ${dir}) and let vmhook create it`);
  const uid = process.geteuid?.() ?? 0;
  // chown or chmod would keep whatever others put there: what vmhook then reads cannot be trusted.
  const remove = `whoever could write it may have put files there that vmhook would act on as root: inspect it (ls -la ${dir}) and, once no VM with vmhook metadata runs, remove it (rm -r ${dir}) for vmhook to create anew (a reboot empties /run too)`;
  // root's own is trusted by anyone (vmhook status run by a user then meets EACCES, which says to run it as root).
  if (stat.uid !== uid && stat.uid !== 0) throw new VmhookError(`${dir} is owned by uid ${stat.uid}, not ${uid === 0 ? "root" : `uid ${uid}`}; ${remove}`);
  if ((stat.mode & 0o022) !== 0) throw new VmhookError(`${dir} has mode ${octal(stat.mode)}; ${remove}`);
  return stat;
}

/** A state file's text, or undefined when it does not exist. A symlink or any other failure throws, naming the file. */
export function readStateFile(host: Host, file: string, what: string): string | undefined {
  let fd: number | undefined;
  try {
    // Looked at first (lstat): most notes and ledgers looked for are not there, and a failed open costs an exception, several per prepare (docs/bench.md).
    // Not there is Host.stat's: ENOENT, or ENOTDIR (a path through a file holds no file either); a symlink is there, and the open refuses it.
    if (host.stat(file) === undefined) return undefined;
    fd = host.openFile(file, "read");
    return fs.readFileSync(fd, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    if (code === "ELOOP") throw new VmhookError(`${what} ${file} is a symlink, not a file vmhook wrote; inspect it and remove it (rm ${file})`);
    const reason = `${what} ${file} cannot be read (${code ?? (error as Error).message})`;
    const outOfFiles = openFilesFix(code);
    throw code === "EACCES" ? denied(reason) : outOfFiles ? new FixableError(reason, outOfFiles) : new VmhookError(reason);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Writes FILE.tmp (created fresh, mode 0600, never through a symlink), then
 * renames it over FILE. Callers hold the lock that guards FILE, so one fixed
 * temp name suffices and a killed writer's leftover is simply replaced.
 */
export function writeStateFile(host: Host, file: string, text: string): void {
  const temp = `${file}${TEMP_SUFFIX}`;
  // FILE stays as it was on any failure, and no temp copy of ours stays to
  // pass for a killed writer's (lonelyTemps): createFile removes a copy it
  // could not write whole, and a copy that cannot be renamed goes here.
  try {
    host.createFile(temp, text);
  } catch (error) {
    throw unchangeableState(error, "write", file);
  }
  try {
    host.rename(temp, file);
  } catch (error) {
    try {
      host.remove(temp);
    } catch {
      // the refusal below names the cause
    }
    throw unchangeableState(error, "write", file);
  }
}

/** Removes FILE and a killed writer's FILE.tmp (callers hold FILE's lock, as for writes): a state file that goes leaves nothing of itself. */
export function removeStateFile(host: Host, file: string): void {
  host.remove(`${file}${TEMP_SUFFIX}`);
  host.remove(file);
}

/** State files in `dir` that are not there while the temp copy of them is: a writer killed between writing the copy and renaming it. */
export function lonelyTemps(host: Host, dir: string): { file: string; temp: string }[] {
  const names = host.list(dir);
  return names
    .filter((name) => name.endsWith(`.json${TEMP_SUFFIX}`) && !names.includes(name.slice(0, -TEMP_SUFFIX.length)))
    .map((name) => ({ file: `${dir}/${name.slice(0, -TEMP_SUFFIX.length)}`, temp: `${dir}/${name}` }));
}

/** Temp files a killed hook left for this file (ours and write-file-atomic's). Call under the file's lock. */
export function removeStaleTemps(host: Host, file: string): void {
  const dir = file.slice(0, file.lastIndexOf("/"));
  const base = file.slice(dir.length + 1);
  for (const name of host.list(dir)) {
    if (name === `${base}${TEMP_SUFFIX}` || (name.startsWith(`${base}.`) && LEGACY_TEMP.test(name))) host.remove(`${dir}/${name}`);
  }
}
