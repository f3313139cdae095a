// `vmhook install` / `vmhook uninstall`: put this binary in place as
// libvirt's qemu hook, keeping any hook that was there and giving it back on
// uninstall. Idempotent.
//
// The kept hook stays in /etc/libvirt/hooks (renamed qemu.vmhook-saved) and a
// short launcher in qemu.d/ (which libvirt also runs) executes it: the
// common dispatcher hooks find their per-VM scripts relative to their own
// path ($(dirname $0)/qemu.d/VM/...), which moving the file itself into
// qemu.d/ would break.
//
// libvirt may run the hooks at any moment of an install, so every file it
// runs arrives whole and executable by rename(2), and the kept hook gets its
// second name (a hard link) before the binary replaces its first: at every
// moment libvirt runs either the old hook alone or vmhook and the old hook.
// Uninstall takes the same steps back (removeHook).
import * as fs from "node:fs";
import * as path from "node:path";
import type { CommandModule } from "yargs";
import { describeError, VmhookError } from "../errors.ts";
import { installedProgram, type Host } from "../host.ts";
import { listJournals, type Journal } from "../journal.ts";
import { recoverCommandLine } from "../metadata-text.ts";
import { serviceCommand } from "../host-advice.ts";
import { paths } from "../paths.ts";
import { processIds } from "../open-files.ts";
import { LIBVIRT_DAEMONS, processUids } from "../processes.ts";
import type { GlobalOptions } from "./options.ts";
import { requireRoot } from "./as-root.ts";
import { describeLeftovers, findLeftovers, purge } from "./leftovers.ts";
import { installLogrotate, logrotateWanted, LOGROTATE_CONFIG, notePackagedLogrotate, removeLogrotate } from "./logrotate.ts";
import { print, printJson } from "./output.ts";

/** Found in every vmhook binary: tells our hook from someone else's. */
const BINARY_MARKER = "vmhook-binary-marker:c0ffee-1";
const HOOK = `${paths.libvirtHooksDir}/qemu`;
export const SAVED_HOOK = `${paths.libvirtHooksDir}/qemu.vmhook-saved`;
const QEMU_DIR = `${paths.libvirtHooksDir}/qemu.d`;
const SAVED_HOOK_LAUNCHER = `${QEMU_DIR}/vmhook-saved-qemu-hook`;
/** The launcher while it is written: beside the hook, where libvirt runs nothing of that name. */
const NEW_LAUNCHER = `${paths.libvirtHooksDir}/qemu.vmhook-launcher-new`;
/**
 * Execs the kept hook with libvirt's arguments, stdin (the domain XML) and
 * stdout (replacement XML on migrate/restore). While the hook is still both
 * qemu and the kept hook (install has linked it, not yet replaced it), libvirt
 * runs it as qemu: the launcher then does nothing, or it would run twice.
 */
const LAUNCHER_TEXT = `#!/bin/sh\n# the hook that was ${HOOK} before vmhook install; vmhook uninstall puts it back\n[ ${SAVED_HOOK} -ef ${HOOK} ] && exit 0\nexec ${SAVED_HOOK} "$@"\n`;
/** The kept hook's name while uninstall puts it back: beside the hook, where libvirt runs nothing of that name. */
const RESTORING_HOOK = `${HOOK}.vmhook-restore`;
/** link(2)'s errnos for a file system (or a file) that takes no second name: vfat, some FUSE and network ones, a bind-mounted file. */
const NO_HARD_LINKS = ["EPERM", "EXDEV", "ENOTSUP", "EOPNOTSUPP"];
const CLI_LINK = "/usr/local/bin/vmhook";
const INSTALL_RECORD = "/etc/vmhook/install.json";
const NEW_INSTALL_RECORD = `${INSTALL_RECORD}.tmp`;

interface InstallRecord {
  savedHook?: string;
  /** A hand install wrote the logrotate config: uninstall removes it. Never set beside debianPackage. */
  logrotate?: true;
  /**
   * The Debian package installed vmhook (its postinst): the logrotate config
   * is then dpkg's conffile, also one a hand install wrote before the package
   * came, and no install or uninstall writes or removes it.
   */
  debianPackage?: true;
  /**
   * Whether install made qemu.d (for the launcher): uninstall removes it,
   * when empty, only then; one that was there before is the admin's.
   * Absent from the records of earlier vmhooks: their uninstall removes an
   * empty qemu.d, as those vmhooks did.
   */
  madeQemuDir?: boolean;
}

/**
 * Whether the file is a vmhook binary; false when nothing is there. A file
 * that cannot be read (EACCES from a security module, EIO, a directory) is
 * refused, naming it: taken for another program, vmhook's own hook would be
 * kept and run from qemu.d/ beside the new one.
 */
export function isVmhookBinary(file: string): boolean {
  let content: Buffer;
  try {
    content = fs.readFileSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return false;
    throw new VmhookError(`cannot read ${file} (${code ?? describeError(error)}), so vmhook cannot tell whether it is vmhook's own hook or another program; check why (ls -ld, dmesg) and fix it or move it away by hand`);
  }
  return content.includes(BINARY_MARKER);
}

/**
 * Whether anything is at the host path, a dangling symlink included (lstat):
 * a lookup that fails otherwise than "nothing there" (EACCES from a security
 * module, ELOOP, EIO) throws naming the path, so a hook vmhook cannot see is
 * never taken for none and overwritten or given up.
 */
function present(host: Host, hostPath: string): boolean {
  return host.stat(hostPath) !== undefined;
}

/** Whether both paths name one file (lstat: a symlink itself, not what it leads to). */
function sameFile(host: Host, one: string, other: string): boolean {
  const [a, b] = [one, other].map((hostPath) => fs.lstatSync(host.resolve(hostPath)));
  return a!.dev === b!.dev && a!.ino === b!.ino;
}

/**
 * The record, new and fsynced, renamed over the old one: a crash, a power
 * loss or a full disk leaves the old record or the whole new one, never
 * none (which would lose the --debian-package mark, or a saved hook).
 * Root's alone whatever the umask: it names the hook uninstall puts back.
 */
function writeRecord(host: Host, text: string): void {
  try {
    host.createFile(NEW_INSTALL_RECORD, text, 0o644);
    host.rename(NEW_INSTALL_RECORD, INSTALL_RECORD);
  } catch (error) {
    try {
      host.remove(NEW_INSTALL_RECORD);
    } catch {
      // the error below names the cause
    }
    throw error;
  }
}

/**
 * link(2) of the kept hook, whose second name keeps every step of install and
 * uninstall safe for libvirt to run the hooks in: where link(2) cannot make
 * one, vmhook refuses (before it has changed anything), naming the directory,
 * the errno and `fix`.
 */
function linkKeptHook(host: Host, existing: string, second: string, fix: string): void {
  try {
    host.hardLink(existing, second);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === undefined || !NO_HARD_LINKS.includes(code)) throw error;
    throw new VmhookError(
      `cannot give ${existing} a second name, ${second} (link: ${code}): ${paths.libvirtHooksDir} is on a file system without hard links (findmnt -T ${paths.libvirtHooksDir}), or a security module or the immutable attribute (lsattr ${existing}) refuses it; vmhook needs one to swap the hooks while libvirt may run them, and changed nothing; ${fix}`,
    );
  }
}

/** A symlink vmhook may replace: one to a vmhook binary (an earlier install, a build) or to nothing. */
function replaceableLink(file: string): boolean {
  return fs.lstatSync(file).isSymbolicLink() && (!fs.existsSync(file) || isVmhookBinary(file));
}

/** Whether libvirt runs this hook: like its virFileIsExecutable, a regular file (links followed) with an execute bit. */
function libvirtRuns(file: string): boolean {
  try {
    const stat = fs.statSync(file);
    return stat.isFile() && (stat.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * Whether the hook is this binary as install leaves it: a file of its own
 * (no symlink into a build another user may write), root's, mode 0755.
 * Anything else is copied anew: libvirt runs it as root, or skips it
 * without an execute bit.
 */
function installedAsIs(binary: string, hook: string): boolean {
  try {
    const stat = fs.lstatSync(hook);
    if (!stat.isFile() || stat.uid !== (process.geteuid?.() ?? 0) || (stat.mode & 0o7777) !== 0o755) return false;
    return stat.size === fs.statSync(binary).size && fs.readFileSync(hook).equals(fs.readFileSync(binary));
  } catch {
    return false;
  }
}

/** libvirt's version as its daemons tell it ("libvirtd (libvirt) 6.0.0"), or why none does. */
function libvirtVersion(host: Host): { version: [number, number, string] } | { unknown: string } {
  const answers: string[] = [];
  for (const daemon of LIBVIRT_DAEMONS) {
    if (!installedProgram(host, daemon)) {
      answers.push(`no ${daemon}`);
      continue;
    }
    const result = host.exec(daemon, ["--version"], { timeoutMs: 10_000 });
    const match = /\(libvirt\) ((\d+)\.(\d+)\S*)/.exec(result.stdout);
    if (match) return { version: [Number(match[2]), Number(match[3]), match[1]!] };
    answers.push(`${daemon}: ${result.error ?? (result.timedOut ? "no answer in time" : result.stderr.trim().split("\n")[0] || `exit status ${result.status ?? result.signal}`)}`);
  }
  return { unknown: answers.join("; ") };
}

/**
 * The kept hook runs from qemu.d/, which libvirt runs from 6.5 on: an older
 * one (or one whose version vmhook cannot tell) would silently stop running
 * it, so install refuses before anything changes.
 */
function refuseWithoutHooksDir(host: Host): void {
  const libvirt = libvirtVersion(host);
  const fix = `move ${HOOK} away by hand (what it does then no longer runs), then run vmhook install again`;
  if ("unknown" in libvirt) {
    throw new VmhookError(`${HOOK} is not vmhook, and neither libvirtd --version nor virtqemud --version tells libvirt's version (${libvirt.unknown}): a libvirt older than 6.5 runs only ${HOOK}, not the scripts in qemu.d/, so vmhook install would stop that hook running; install libvirt first, or ${fix}`);
  }
  const [major, minor, text] = libvirt.version;
  if (major < 6 || (major === 6 && minor < 5)) {
    throw new VmhookError(`${HOOK} is not vmhook, and libvirt ${text} runs only that file (the scripts in qemu.d/ from libvirt 6.5 on), so vmhook install would stop that hook running; upgrade libvirt, or ${fix}`);
  }
}

/** The running binary, refusing a run from source (there is nothing to install then). */
function ownBinary(): string {
  const binary = process.execPath;
  if (["bun", "node"].includes(path.basename(binary)) || !isVmhookBinary(binary)) {
    throw new VmhookError(`vmhook install must run from the built binary, not from ${binary}; run npm run build, then dist/vmhook install (or ./install.sh)`);
  }
  return binary;
}

/**
 * The system's libvirt daemons: those running as root. A user's session
 * daemon (qemu:///session: virt-manager's, GNOME Boxes') has the same name
 * but runs the hooks as that user; signalling it reloads nothing of root's.
 * seesTheseHooks: the daemon shares this process's mount namespace, so its
 * /etc/libvirt/hooks is the directory install changed; one in another (a
 * container's, a test's private libvirtd) has hooks of its own.
 */
export function systemLibvirtDaemons(host: Host): { pid: number; command: string; seesTheseHooks: boolean }[] {
  const ownMounts = host.readlink("/proc/self/ns/mnt");
  return processIds(host)
    .sort((a, b) => Number(a) - Number(b))
    .flatMap((pid) => {
      const command = host.readTrimmed(`/proc/${pid}/comm`);
      if (!command || !LIBVIRT_DAEMONS.includes(command)) return [];
      // Gone in the meantime: not running.
      const uids = processUids(host, pid);
      if (!uids || uids.real !== 0 || uids.effective !== 0) return [];
      const mounts = host.readlink(`/proc/${pid}/ns/mnt`);
      return mounts === undefined ? [] : [{ pid: Number(pid), command, seesTheseHooks: ownMounts !== undefined && mounts === ownMounts }];
    });
}

/**
 * Makes the running libvirt daemons that see these hooks re-read them:
 * SIGHUP resets libvirt's cache of hook scripts. Those of other mount
 * namespaces are left alone: a reload there would restart another
 * libvirt's work (its firewall rules) for nothing of vmhook's.
 */
export function reloadLibvirt(host: Host, hangUp: (pid: number) => void = (pid) => process.kill(pid, "SIGHUP")): { reloaded: string[]; left: string[] } {
  const reloaded: string[] = [];
  const left: string[] = [];
  for (const { pid, command, seesTheseHooks } of systemLibvirtDaemons(host)) {
    if (!seesTheseHooks) {
      left.push(`${command} (pid ${pid})`);
      continue;
    }
    try {
      hangUp(pid);
      reloaded.push(`${command} (pid ${pid})`);
    } catch {
      // gone in the meantime
    }
  }
  return { reloaded, left };
}

/**
 * No record (none was written, or /etc/vmhook was removed by hand): the hook
 * install saves, if it is there; nothing else was saved. A record that
 * cannot be read must not pass for that: it may name the hook to put back.
 */
function readRecord(host: Host): InstallRecord {
  let text: string;
  try {
    text = host.read(INSTALL_RECORD);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return present(host, SAVED_HOOK) ? { savedHook: SAVED_HOOK } : {};
    // The host's refusal names the file, the errno and its fix (root is told of a security module, not to run as root).
    throw error;
  }
  try {
    const record = JSON.parse(text) as InstallRecord;
    // The one hook install saves: uninstall renames what the record names into the hook's place, for libvirt to run as root.
    if (typeof record !== "object" || record === null || (record.savedHook !== undefined && record.savedHook !== SAVED_HOOK) || (record.logrotate !== undefined && record.logrotate !== true) || (record.debianPackage !== undefined && record.debianPackage !== true) || (record.madeQemuDir !== undefined && typeof record.madeQemuDir !== "boolean")) throw new Error("not an install record");
    return record;
  } catch (error) {
    throw new VmhookError(`${INSTALL_RECORD} is damaged (${(error as Error).message}); it records the hook vmhook replaced (${SAVED_HOOK}): fix it to {"savedHook": "${SAVED_HOOK}"} if that file exists, else to {}`);
  }
}

export interface InstallResult {
  notes: string[];
  /** What libvirt runs changed: only then are the daemons told (SIGHUP); running install again sends nothing. */
  hooksChanged: boolean;
}

/**
 * cliLink false: no /usr/local/bin/vmhook. debianPackage: run by the Debian
 * package's postinst, which ships /usr/bin/vmhook (and packages never write to
 * /usr/local) and owns the logrotate config as its conffile.
 */
export function install(host: Host, binary: string, { cliLink = true, debianPackage = false } = {}): InstallResult {
  const notes: string[] = [];
  let hooksChanged = false;
  const hook = host.resolve(HOOK);
  // Every refusal comes before the first change, a directory made included.
  const record = readRecord(host);
  const keepForeignHook = present(host, HOOK) && !isVmhookBinary(hook);
  // The same file under both names: an install killed after linking it, whose second name this one reuses.
  const linkedAlready = keepForeignHook && present(host, SAVED_HOOK) && sameFile(host, HOOK, SAVED_HOOK);
  if (keepForeignHook && !linkedAlready && present(host, SAVED_HOOK)) throw new VmhookError(`${HOOK} is not vmhook and ${SAVED_HOOK} exists already; move one of them away by hand`);
  // One libvirt skips (not executable, a dangling link) gets no launcher: exec would fail every VM start.
  const launcher = keepForeignHook && libvirtRuns(hook);
  if (launcher) refuseWithoutHooksDir(host);
  const makeQemuDir = launcher && !present(host, QEMU_DIR);

  // Each change registers how to take it back: an install that fails halfway
  // (the disk filling up while the binary is copied) leaves the hooks as they were.
  const undos: (() => void)[] = [];
  try {
    // The first change: a file system that takes no hard link is refused before anything else changed.
    if (keepForeignHook) {
      // A second name, not a rename: the hook stays at its place until the binary replaces it.
      if (!linkedAlready) linkKeptHook(host, HOOK, SAVED_HOOK, `move ${HOOK} away by hand (what it does then no longer runs), or put ${paths.libvirtHooksDir} on a file system with hard links, then run vmhook install again`);
      undos.push(() => host.remove(SAVED_HOOK));
    }
    for (const [dir, mode] of [[path.dirname(HOOK), 0o755], [paths.pluginsDir, 0o755], [paths.stateDir, 0o700]] as const) {
      // the first directory it made, holding only what this install puts there
      const made = host.mkdir(dir, mode);
      if (made) undos.push(() => host.remove(made));
    }
    const temporary = installedAsIs(binary, hook) ? undefined : `${HOOK}.vmhook-new`;
    if (temporary) {
      // Copied before the existing hook is touched: the copy is the step most likely to fail.
      // A new file, root's: a killed install's leftover is not written through.
      undos.push(() => host.remove(temporary));
      host.remove(temporary);
      host.copyIn(binary, temporary);
      host.chmod(temporary, 0o755);
    }
    if (makeQemuDir) record.madeQemuDir = true;
    // A record (as read) without a saved hook had no launcher, so its install made no qemu.d; one with a saved hook and no field is an earlier vmhook's, which did not say.
    else if (record.madeQemuDir === undefined && record.savedHook === undefined) record.madeQemuDir = false;
    if (keepForeignHook) {
      record.savedHook = SAVED_HOOK;
      hooksChanged = true;
      notes.push(
        launcher
          ? `kept the existing hook: moved ${HOOK} to ${SAVED_HOOK}, run by ${SAVED_HOOK_LAUNCHER} (libvirt runs both; vmhook uninstall puts it back)`
          : `kept the existing hook: moved ${HOOK} to ${SAVED_HOOK}; it is not executable, so libvirt did not run it and does not now (vmhook uninstall puts it back)`,
      );
    }
    if (debianPackage) record.debianPackage = true;
    let writeLogrotate = false;
    if (record.debianPackage) {
      // dpkg's conffile now, whoever wrote it: uninstall removing it would make dpkg take it for deleted by the administrator
      delete record.logrotate;
      notePackagedLogrotate(host, notes);
    } else if (logrotateWanted(host, notes)) {
      writeLogrotate = record.logrotate = true;
    }
    const recordText = `${JSON.stringify(record, null, 2)}\n`;
    // Written before qemu.d is made: an install killed between the two leaves a record saying install made it, never a qemu.d the next install takes for the admin's.
    if (host.readTrimmed(INSTALL_RECORD) !== recordText.trim()) writeRecord(host, recordText);
    if (launcher) {
      if (makeQemuDir) {
        host.mkdir(QEMU_DIR, 0o755);
        undos.push(() => host.removeIfEmpty(QEMU_DIR));
      }
      host.createFile(NEW_LAUNCHER, LAUNCHER_TEXT, 0o755);
      undos.push(() => host.remove(NEW_LAUNCHER));
      host.rename(NEW_LAUNCHER, SAVED_HOOK_LAUNCHER);
      undos.push(() => host.remove(SAVED_HOOK_LAUNCHER));
    }
    if (writeLogrotate) {
      // Recorded first: an install killed before this leaves a record naming a config that is not there, which the next one writes.
      undos.push(() => host.remove(LOGROTATE_CONFIG));
      installLogrotate(host, notes);
    }

    if (temporary) {
      host.rename(temporary, HOOK); // atomic: libvirt never runs half a binary, and the old hook goes as vmhook comes
      hooksChanged = true;
      notes.push(`installed ${HOOK}`);
    } else {
      notes.push(`${HOOK} is already this vmhook`);
    }
  } catch (error) {
    const notUndone = undos.reverse().flatMap((undo) => {
      try {
        undo();
        return [];
      } catch (undoError) {
        return [describeError(undoError)];
      }
    });
    if (notUndone.length === 0) throw error;
    throw new VmhookError(`${describeError(error)}; undoing the install failed too, fix by hand: ${notUndone.join("; ")}`);
  }

  const link = host.resolve(CLI_LINK);
  const current = host.readlink(CLI_LINK);
  if (!cliLink || debianPackage || current === HOOK) {
    // not wanted, or already linked
  } else if (present(host, CLI_LINK) && !replaceableLink(link)) {
    notes.push(`left ${CLI_LINK} alone: it is not vmhook's link; run the CLI as ${HOOK} under another name`);
  } else {
    host.mkdir(path.dirname(CLI_LINK), 0o755);
    host.remove(CLI_LINK);
    host.symlink(HOOK, CLI_LINK); // invoked as "vmhook", the same binary is the CLI
    notes.push(`linked ${CLI_LINK} -> ${HOOK}`);
  }
  return { notes, hooksChanged };
}

/**
 * Removes the hook (putting back the one it replaced) and the CLI link; --purge also vmhook's own files.
 * debianPackage: run by the package's prerm, for which the logrotate config is dpkg's conffile, whatever the record says.
 */
export function uninstall(host: Host, force: boolean, { purgeOwnFiles = false, debianPackage = false } = {}): InstallResult {
  // an unreadable journal may hold changes too
  const { journals, broken } = listJournals(host);
  const held = [...journals.map((journal) => journal.domain.name), ...broken.map((item) => item.file)];
  if (held.length > 0 && !force) {
    throw new VmhookError(`${held.length} domain(s) still hold changes (${held.join(", ")}); stop them or run vmhook recover first, or pass --force`);
  }
  const { notes, hooksChanged } = removeHook(host, debianPackage);
  const purged = purgeOwnFiles ? purge(host) : [];
  return { notes: [...notes, ...purged, ...describeLeftovers(findLeftovers(host), purgeOwnFiles), ...describeUnreleased(journals, broken)], hooksChanged };
}

/** Forced past domains that hold changes: nothing undoes them now (release was the hook's), so each is named with the way back. */
function describeUnreleased(journals: Journal[], broken: { file: string }[]): string[] {
  return [
    ...journals.map(({ domain, entries }) => `domain ${domain.name} still holds ${entries.length} change(s) (${paths.journal(domain.uuid)}): without the hook libvirt's release no longer undoes them; once ${domain.name} has stopped, install vmhook again and run ${recoverCommandLine(domain.name)}`),
    ...broken.map(({ file }) => `${file} cannot be read and may hold changes no release undoes now: install vmhook again and see vmhook status`),
  ];
}

/**
 * The mirror of install, safe to be killed at any step (libvirt may run the
 * hooks between any two), and to run again from where it stopped:
 *   1. the kept hook gets a second name beside the hook, renamed over vmhook:
 *      qemu and the kept hook are one file, so its launcher exits 0 and
 *      libvirt runs the kept hook once, as qemu (before this: vmhook as qemu
 *      and the kept hook through the launcher);
 *   2. the launcher goes, then the kept hook's second name: it never execs
 *      a name that is gone;
 *   3. the record goes last, so a run killed before still finds what to do.
 * The CLI link goes before step 1's rename: from then on it would run the
 * kept hook as "vmhook".
 */
function removeHook(host: Host, debianPackage: boolean): InstallResult {
  const notes: string[] = [];
  // Read before anything is removed: a record that cannot be read stops the uninstall with the host as it was.
  const record = readRecord(host);
  const hook = host.resolve(HOOK);
  // Looked at before anything is removed: a path that cannot be looked at stops the uninstall with the host as it was.
  const saved = record.savedHook;
  const savedThere = !!saved && present(host, saved);
  const launcherThere = present(host, SAVED_HOOK_LAUNCHER);
  const hookIsVmhook = isVmhookBinary(hook);
  const hookThere = present(host, HOOK);
  if (!hookIsVmhook && !present(host, INSTALL_RECORD) && !savedThere && !launcherThere && host.readlink(CLI_LINK) !== HOOK) {
    return { notes: [`vmhook is not installed here: ${HOOK} ${hookThere ? "is another program" : "does not exist"} and there is no ${INSTALL_RECORD}; nothing to remove`], hooksChanged: false };
  }
  // The kept hook at its place under both names: an uninstall killed after step 1.
  const putBackAlready = savedThere && hookThere && sameFile(host, HOOK, saved);
  if (savedThere && hookThere && !hookIsVmhook && !putBackAlready) {
    // someone put another hook in place since: keep both and the record, say so
    return { notes: [`left ${HOOK} alone: it is not vmhook`, `kept ${saved} (the hook vmhook replaced) and its launcher: ${HOOK} is taken; sort them out by hand`, ...removeCliLink(host)], hooksChanged: false };
  }
  let hooksChanged = false;
  if (savedThere && !putBackAlready) {
    // What a run killed here left, then the first change: a file system without hard links is refused with the host as it was.
    if (present(host, RESTORING_HOOK)) host.remove(RESTORING_HOOK);
    linkKeptHook(host, saved, RESTORING_HOOK, `put it back by hand: rm ${SAVED_HOOK_LAUNCHER}, then mv ${saved} ${HOOK} (in this order: the launcher runs ${saved}), then run vmhook uninstall again`);
  }
  const cliNotes = removeCliLink(host);
  if (savedThere) {
    if (!putBackAlready) host.rename(RESTORING_HOOK, HOOK);
    if (launcherThere) host.remove(SAVED_HOOK_LAUNCHER);
    host.remove(saved);
    hooksChanged = true;
    notes.push(`restored the previous hook from ${saved}`);
  } else {
    if (launcherThere) {
      // the kept hook was deleted by hand: its launcher fails every hook call, and so every VM start
      host.remove(SAVED_HOOK_LAUNCHER);
      hooksChanged = true;
      notes.push(`removed ${SAVED_HOOK_LAUNCHER}: the hook it ran, ${SAVED_HOOK}, is gone`);
    }
    if (hookIsVmhook) {
      host.remove(HOOK);
      hooksChanged = true;
      notes.push(`removed ${HOOK}`);
    } else if (hookThere) {
      notes.push(`left ${HOOK} alone: it is not vmhook`);
    }
  }
  // rmdir(2): anything put there since stays. An earlier vmhook's record does not say who made it: removed when empty, as that vmhook did.
  if (record.madeQemuDir !== false) host.removeIfEmpty(QEMU_DIR);
  if (record.logrotate && !debianPackage) notes.push(...removeLogrotate(host));
  host.remove(INSTALL_RECORD);
  return { notes: [...notes, ...cliNotes], hooksChanged };
}

function removeCliLink(host: Host): string[] {
  if (host.readlink(CLI_LINK) !== HOOK) return [];
  host.remove(CLI_LINK);
  return [`removed ${CLI_LINK}`];
}

interface InstallArgs extends GlobalOptions {
  "cli-link": boolean;
  "debian-package": boolean;
}

interface UninstallArgs extends GlobalOptions {
  force: boolean;
  purge: boolean;
  "debian-package": boolean;
}

const DEBIAN_PACKAGE_OPTION = { type: "boolean", default: false } as const;

/** Prints the notes; tells running daemons only when what libvirt runs changed. */
function report(host: Host, args: GlobalOptions, { notes, hooksChanged }: InstallResult) {
  // A --root run changed another tree: no running daemon reads it.
  const { reloaded, left } = hooksChanged && host.root === "/" ? reloadLibvirt(host) : { reloaded: [], left: [] };
  const reload = !hooksChanged
    ? "the hooks are unchanged: libvirt was not signalled"
    : reloaded.length > 0
      ? `reloaded ${reloaded.join(", ")}`
      : `no libvirt daemon running here; it finds the hook when it starts (${serviceCommand(host, "libvirtd", "start")}, or virtqemud on hosts with modular daemons)`;
  const otherNamespaces = left.length > 0 ? [`left ${left.join(", ")} alone: it runs in another mount namespace (a container's, a private test daemon's), whose /etc/libvirt/hooks is not the one install changed`] : [];
  const all = [...notes, reload, ...otherNamespaces];
  if (args.json) printJson({ notes: all });
  else all.forEach((note) => print(note));
}

const installCommand: CommandModule<GlobalOptions, InstallArgs> = {
  command: "install",
  describe: `install this binary as ${HOOK} (keeping an existing hook) and ${CLI_LINK}; running it again changes nothing`,
  builder: (y) =>
    y
      .option("cli-link", { type: "boolean", default: true, describe: `link ${CLI_LINK} to the hook (--no-cli-link: none)` })
      .option("debian-package", { ...DEBIAN_PACKAGE_OPTION, describe: `run by the Debian package's postinst: no ${CLI_LINK} (it ships /usr/bin/vmhook), and ${LOGROTATE_CONFIG} is dpkg's conffile` }),
  handler(args) {
    requireRoot("install", `it writes ${HOOK} and /etc/vmhook`, args.root);
    const host = args.host;
    report(host, args, install(host, ownBinary(), { cliLink: args["cli-link"], debianPackage: args["debian-package"] }));
  },
};

const uninstallCommand: CommandModule<GlobalOptions, UninstallArgs> = {
  command: "uninstall",
  describe: "remove the hook and put back the one it replaced; say what stays behind",
  builder: (y) =>
    y
      .option("force", { type: "boolean", default: false, describe: "even while domains hold changes" })
      .option("purge", { type: "boolean", default: false, describe: "also remove vmhook's own files: /etc/vmhook, the log, /var/lib/vmhook, /run/vmhook" })
      .option("debian-package", { ...DEBIAN_PACKAGE_OPTION, describe: `run by the Debian package's prerm: ${LOGROTATE_CONFIG} is dpkg's conffile` }),
  handler(args) {
    requireRoot("uninstall", `it removes ${HOOK} and puts back the hook it replaced`, args.root);
    const host = args.host;
    report(host, args, uninstall(host, args.force, { purgeOwnFiles: args.purge, debianPackage: args["debian-package"] }));
  },
};

export const installCommands = [installCommand, uninstallCommand] as CommandModule<GlobalOptions, any>[];
