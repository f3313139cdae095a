// The files processes have open, from /proc/PID/fd: how vmhook tells who holds
// a device or a socket. A process that ends while it is read has none open; one
// whose descriptors cannot be read is an unknown, never "holds nothing".
import { describeError, VmhookError } from "./errors.ts";
import { readForMessage, type Host } from "./host.ts";

/** The pids in /proc, as names. */
export const processIds = (host: Host) => host.list("/proc").filter((name) => /^\d+$/.test(name));

/** What the process's descriptors point to; [] once it has exited. Throws, naming the pid and its command, when they cannot be read. */
export function openFiles(host: Host, pid: string): string[] {
  try {
    return host.list(`/proc/${pid}/fd`).flatMap((fd) => host.readlink(`/proc/${pid}/fd/${fd}`) ?? []);
  } catch (error) {
    throw new VmhookError(`cannot tell which files pid ${pid} (${processName(host, pid)}) has open: ${describeError(error)}`);
  }
}

/** The process's command, for messages only: "?" when it has exited or cannot be read. */
export const processName = (host: Host, pid: string | number) => readForMessage(host, `/proc/${pid}/comm`, "?");
