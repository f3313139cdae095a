// Processes told apart from later ones given the same pid: a pid with its
// start time (field 22 of /proc/PID/stat, clock ticks since boot) names one
// process for the life of the boot, and /run, where vmhook keeps what names
// them, does not outlive it.
import type { Deadline } from "./deadline.ts";
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import type { Journal } from "./journal.ts";
import { processIds } from "./open-files.ts";
import { paths } from "./paths.ts";
import { qemuOwners } from "./qemu-owners.ts";

/** libvirt's daemons that run the QEMU hook: the monolithic one and the modular QEMU driver's. */
export const LIBVIRT_DAEMONS = ["libvirtd", "virtqemud"];

/** /proc/PID/stat: its command (which may hold spaces and parentheses) and the fields after it, [state, ppid, ...]; undefined when no such process. */
function readStat(host: Host, pid: number): { command: string; fields: string[] } | undefined {
  const text = host.readTrimmed(`/proc/${pid}/stat`);
  const end = text?.lastIndexOf(")") ?? -1;
  return text && end > 0 ? { command: text.slice(text.indexOf("(") + 1, end), fields: text.slice(end + 2).split(" ") } : undefined;
}

/** Fields of /proc/PID/stat after the command: [state, ppid, ...]; undefined when no such process. */
export const procStat = (host: Host, pid: number): string[] | undefined => readStat(host, pid)?.fields;

/** "PID:STARTTIME" from the process's stat fields; undefined for a zombie, or a start time that is no number. */
function instanceOf(pid: number, fields: string[]): string | undefined {
  const startTime = fields[19];
  return fields[0] !== "Z" && startTime && /^\d+$/.test(startTime) ? `${pid}:${startTime}` : undefined;
}

/** "PID:STARTTIME" of the process running now under this pid; undefined when none, or only its zombie is left. */
export function processInstance(host: Host, pid: number): string | undefined {
  const fields = procStat(host, pid);
  return fields && instanceOf(pid, fields);
}

/** USER_HZ, the unit of the start time in /proc/PID/stat: 100 on every architecture libvirt runs on (alpha and ia64 alone had 1024). */
const TICKS_PER_SECOND = 100;

/**
 * When the process started, in ms since the epoch: its start time against
 * /proc/uptime read now (both on the boot clock, to a tick; /proc/stat's
 * btime is whole seconds). Undefined when no such process, or only its
 * zombie; throws when /proc/uptime cannot be read.
 */
export function processStartedAtMs(host: Host, pid: number): number | undefined {
  const fields = procStat(host, pid);
  const ticks = fields && instanceOf(pid, fields)?.split(":")[1];
  if (ticks === undefined) return undefined;
  const uptime = /^(\d+(?:\.\d+)?)(?:\s|$)/.exec(host.readTrimmed("/proc/uptime") ?? "");
  if (!uptime) throw new VmhookError("cannot read the time since boot from /proc/uptime (missing, or not \"SECONDS IDLE\"): is /proc mounted?");
  return host.wallClockMs() - (Number(uptime[1]) * 1000 - (Number(ticks) * 1000) / TICKS_PER_SECOND);
}

/** How long an undo waits for a left-over process it killed to be gone. */
const KILLED_GONE_MS = 2000;

/**
 * Ends a process that a hook killed (kill -9, OOM) left running: `instance`
 * ("PID:STARTTIME") was journaled before it could act, and what it still does
 * would land after the undo, for good. SIGKILL to its process group (it leads
 * one: Host.exec, execAsync), then a bounded wait. Returns whether it was
 * still running; throws `stillThere(pid)` when it outlives SIGKILL (blocked
 * in the kernel).
 */
export function endLeftRunning(ctx: { host: Host; deadline: Deadline }, instance: string, stillThere: (pid: number) => string): boolean {
  const pid = Number(instance.split(":")[0]);
  if (!Number.isSafeInteger(pid) || pid <= 0 || processInstance(ctx.host, pid) !== instance) return false;
  ctx.host.killProcessGroup(pid);
  const until = ctx.host.monotonicMs() + ctx.deadline.clamp(KILLED_GONE_MS);
  while (processInstance(ctx.host, pid) === instance && ctx.host.monotonicMs() < until) ctx.host.sleep(20);
  if (processInstance(ctx.host, pid) === instance) throw new VmhookError(stillThere(pid));
  return true;
}

/**
 * The nearest of the process and its ancestors whose command is one of
 * `commands`, a few generations up (a hook dispatcher script may sit
 * between libvirt's daemon and vmhook); undefined when none is found.
 */
export function ancestorRunning(host: Host, pid: number, commands: readonly string[]): { command: string; instance: string } | undefined {
  for (let generation = 0; generation < 4 && Number.isSafeInteger(pid) && pid > 1; generation++) {
    const stat = readStat(host, pid);
    if (!stat) return undefined;
    const instance = instanceOf(pid, stat.fields);
    if (commands.includes(stat.command) && instance) return { command: stat.command, instance };
    pid = Number(stat.fields[1]);
  }
  return undefined;
}

/** The UUID a QEMU process runs a domain of (-uuid UUID, which libvirt always passes), lower case; undefined for any other process, or one gone. */
export function qemuUuid(host: Host, pid: number): string | undefined {
  const args = (host.readTrimmed(`/proc/${pid}/cmdline`) ?? "").split("\0");
  const at = args.indexOf("-uuid");
  return at >= 0 ? args[at + 1]?.toLowerCase() : undefined;
}

/**
 * Every live QEMU of the domain of this UUID, found in /proc whatever
 * libvirt's pid files say: a libvirtd that crashed, or a domain defined
 * again, leaves a guest running that libvirt no longer knows of.
 */
export function qemuProcessesOf(host: Host, uuid: string): number[] {
  return processIds(host)
    .map(Number)
    .filter((pid) => qemuUuid(host, pid) === uuid);
}

/** The process's real and effective uid (/proc/PID/status "Uid:" real, effective, saved, filesystem); undefined once it is gone. Throws when it cannot be read. */
export function processUids(host: Host, pid: number | string): { real: number; effective: number } | undefined {
  const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(host.readTrimmed(`/proc/${pid}/status`) ?? "");
  return uids ? { real: Number(uids[1]), effective: Number(uids[2]) } : undefined;
}

/** The real uid of the process, undefined when it cannot be read. */
function processOwner(host: Host, pid: number): number | undefined {
  try {
    return processUids(host, pid)?.real;
  } catch {
    return undefined;
  }
}

/**
 * The live process named by libvirt's pid file of the domain, which libvirt
 * keeps while its QEMU runs (/run/libvirt/qemu/NAME.pid; "." and ".." are
 * names libvirt takes, "..pid" a file like any other); undefined when there
 * is none, or its process is gone. Throws when the file cannot be read, and
 * for a name with a slash, which names no pid file.
 */
export function pidFileProcess(host: Host, name: string): number | undefined {
  if (name.includes("/")) throw new VmhookError(`the name ${JSON.stringify(name)} has a slash, which libvirt refuses in a domain's name: it names no pid file in ${paths.libvirtQemuRunDir}`);
  const pid = Number(host.readTrimmed(`${paths.libvirtQemuRunDir}/${name}.pid`));
  return Number.isSafeInteger(pid) && pid > 0 && host.processAlive(pid) ? pid : undefined;
}

/**
 * The domain's QEMU as libvirt's pid file names it now, "PID:STARTTIME", for
 * its journal (the started and reconnect events): undefined when there is no
 * pid file (yet), or the process in it is gone or runs no -uuid UUID. Throws
 * as pidFileProcess does.
 */
export function pidFileQemu(host: Host, name: string, uuid: string): string | undefined {
  const pid = pidFileProcess(host, name);
  return pid !== undefined && qemuUuid(host, pid) === uuid ? processInstance(host, pid) : undefined;
}

/**
 * The live QEMUs of the domain of this UUID. Any user can start a process
 * with "-uuid UUID" in its command line (ps shows every VM's), so once the
 * journal notes the QEMU libvirt started (`qemu`, from pidFileQemu), that
 * process alone counts, by its pid and start time. Without a note (libvirt
 * had not reported started: a start that failed after prepare, a daemon that
 * crashed while it launched QEMU, a journal of an older vmhook), a process
 * with the UUID counts unless its owner is one libvirt never runs the
 * domain's QEMU as (qemuOwners); one whose owner, or those users, cannot be
 * told counts, and so does every one when `dacUser` is absent (a journal of
 * a vmhook that did not keep the domain's seclabel user).
 */
export function domainQemus(host: Host, uuid: string, journal: Pick<Journal, "qemu" | "dacUser">): number[] {
  const noted = journal.qemu;
  const pid = noted === undefined ? undefined : /^(\d+):\d+$/.exec(noted)?.[1];
  if (pid !== undefined) return processInstance(host, Number(pid)) === noted ? [Number(pid)] : [];
  const found = qemuProcessesOf(host, uuid);
  const owners = found.length === 0 || journal.dacUser === undefined ? undefined : qemuOwners(host, journal.dacUser);
  if (owners === undefined) return found;
  return found.filter((qemu) => {
    const owner = processOwner(host, qemu);
    return owner === undefined || owners.has(owner);
  });
}
