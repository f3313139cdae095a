// Commands that change the host as only root may: another user is told so
// before anything runs, not with the first EACCES halfway ("EACCES:
// permission denied, mkdir '/etc/vmhook'"). A --root tree is the user's own.
import * as path from "node:path";
import { VmhookError } from "../errors.ts";

/** `command`: the command line to repeat with sudo; `why`: what it changes that only root may. */
export function requireRoot(command: string, why: string, root: string): void {
  const euid = process.geteuid?.();
  if (euid === undefined || euid === 0 || path.resolve(root) !== "/") return;
  throw new VmhookError(`${command} must run as root (${why}), not as uid ${euid}: run sudo ${command}`);
}
