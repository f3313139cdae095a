// What `vmhook doctor` reports: one finding per check, ok / warn / fail, with
// a one-line reason and the fix. Plugins produce them too (Plugin.check).
import { reasonAndFix } from "../errors.ts";

export type Status = "ok" | "warn" | "fail";

export interface Finding {
  check: string;
  status: Status;
  reason: string;
  fix?: string;
  /** The plugin whose work the finding is about: a failing one marks that plugin's planned steps refused in `vmhook plan`. */
  plugin?: string;
  /** The key of the refusal (Refusal.key) a step of the plugin's own plan carries for this same problem: `vmhook plan` shows it on that step alone. */
  refusal?: string;
}

export const ok = (check: string, reason: string): Finding => ({ check, status: "ok", reason });
export const warn = (check: string, reason: string, fix: string): Finding => ({ check, status: "warn", reason, fix });
export const fail = (check: string, reason: string, fix: string): Finding => ({ check, status: "fail", reason, fix });

/**
 * A check that failed with `error`: the reason is the error's without the fix
 * it carries (run vmhook as root), which is the finding's fix; else `fix`.
 * `reason` adds words to the error's reason.
 */
export function failedWith(check: string, error: unknown, fix: string, reason = (text: string) => text): Finding {
  const own = reasonAndFix(error);
  return fail(check, reason(own.reason), own.fix ?? fix);
}

/** The fix of a check that could not read what it needs: its reason names the file and the errno. */
export const UNREADABLE_FIX = "vmhook could not read what this check needs: fix what the message names, then run vmhook doctor again";

/** KiB rounded down to whole MiB, for messages about free memory. */
export const roundMiB = (kib: number) => Math.floor(kib / 1024) * 1024;
