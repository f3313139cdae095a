// Commands that change the host as only root may: another user is told so
// before anything runs, not with the first EACCES halfway ("EACCES:
// permission denied, mkdir '/etc/vmhook'"). A --root tree is the user's own.
import * as path from "node:path";
import { VmhookError } from "../errors.ts";
import { shellWord } from "../metadata-text.ts";

/**
 * `command` (after "vmhook") as root: sudo and the program as it was run, by
 * its path (dist/vmhook, before any install puts vmhook on PATH) that path,
 * found on PATH (the installed link) vmhook.
 */
export function withSudo(command: string): string {
  return `sudo ${process.argv0.includes("/") ? shellWord(process.argv0) : "vmhook"} ${command}`;
}

/** `command`: the command line to repeat with sudo, after "vmhook"; `why`: what it changes that only root may. */
export function requireRoot(command: string, why: string, root: string): void {
  const euid = process.geteuid?.();
  if (euid === undefined || euid === 0 || path.resolve(root) !== "/") return;
  throw new VmhookError(`vmhook ${command} must run as root (${why}), not as uid ${euid}: run ${withSudo(command)}`);
}
