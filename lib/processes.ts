// Processes told apart from later ones given the same pid: a pid with its
// start time (field 22 of /proc/PID/stat, clock ticks since boot) names one
// process for the life of the boot, and /run, where vmhook keeps what names
// them, does not outlive it.
import type { Host } from "./host.ts";

/** Fields of /proc/PID/stat after the command (which may hold spaces and parentheses): [state, ppid, ...]; undefined when no such process. */
export function procStat(host: Host, pid: number): string[] | undefined {
  const text = host.readTrimmed(`/proc/${pid}/stat`);
  const end = text?.lastIndexOf(")") ?? -1;
  return text && end > 0 ? text.slice(end + 2).split(" ") : undefined;
}

/** "PID:STARTTIME" of the process running now under this pid; undefined when none, or only its zombie is left. */
export function processInstance(host: Host, pid: number): string | undefined {
  const stat = procStat(host, pid);
  const startTime = stat?.[19];
  return stat?.[0] !== "Z" && startTime && /^\d+$/.test(startTime) ? `${pid}:${startTime}` : undefined;
}

/**
 * The nearest of the process and its ancestors whose command is one of
 * `commands`, a few generations up (a hook dispatcher script may sit
 * between libvirt's daemon and vmhook); undefined when none is found.
 */
export function ancestorRunning(host: Host, pid: number, commands: readonly string[]): { command: string; instance: string } | undefined {
  for (let generation = 0; generation < 4 && Number.isSafeInteger(pid) && pid > 1; generation++) {
    const text = host.readTrimmed(`/proc/${pid}/stat`);
    const end = text?.lastIndexOf(")") ?? -1;
    if (!text || end < 0) return undefined;
    const [, ppid, ...rest] = text.slice(end + 2).split(" ");
    const command = text.slice(text.indexOf("(") + 1, end);
    const startTime = rest[17];
    if (commands.includes(command) && startTime && /^\d+$/.test(startTime)) return { command, instance: `${pid}:${startTime}` };
    pid = Number(ppid);
  }
  return undefined;
}
