// Processes told apart from later ones given the same pid: a pid with its
// start time (field 22 of /proc/PID/stat, clock ticks since boot) names one
// process for the life of the boot, and /run, where vmhook keeps what names
// them, does not outlive it.
import type { Host } from "./host.ts";
import { processIds } from "./open-files.ts";
import { paths } from "./paths.ts";

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

/**
 * The domain's QEMU as libvirt's pid file names it now, "PID:STARTTIME", for
 * its journal (the started and reconnect events): undefined when there is no
 * pid file (yet), or the process in it is gone or runs no -uuid UUID. Throws
 * when the pid file cannot be read.
 */
export function pidFileQemu(host: Host, name: string, uuid: string): string | undefined {
  if (name.includes("/")) return undefined;
  const pid = Number(host.readTrimmed(`${paths.libvirtQemuRunDir}/${name}.pid`));
  if (!Number.isSafeInteger(pid) || pid <= 0 || qemuUuid(host, pid) !== uuid) return undefined;
  return processInstance(host, pid);
}

/**
 * The live QEMUs of the domain of this UUID. Any user can start a process
 * with "-uuid UUID" in its command line (ps shows every VM's), so once the
 * journal notes the QEMU libvirt started (`noted`, from pidFileQemu), that
 * process alone counts, by its pid and start time. Without a note (libvirt
 * had not reported started: a daemon that crashed while it launched QEMU, a
 * journal of an older vmhook), every process with the UUID counts.
 */
export function domainQemus(host: Host, uuid: string, noted: string | undefined): number[] {
  const pid = noted === undefined ? undefined : /^(\d+):\d+$/.exec(noted)?.[1];
  if (pid === undefined) return qemuProcessesOf(host, uuid);
  return processInstance(host, Number(pid)) === noted ? [Number(pid)] : [];
}
