// Applying: make the host match the claims, keeping the host's original
// values in the plugin's shared state until the last claim goes.
import { formatCpuList } from "../../lib/cpuset.ts";
import { describeError, VmhookError } from "../../lib/errors.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import type { Action, Claim } from "./claims.ts";
import { onlineCpus, union } from "./cpus.ts";
import { SETTINGS, type Setting } from "./settings.ts";

/** Per kind of setting: key → the host's value before the first claim. */
export type Originals = Partial<Record<Action, Record<string, string>>>;

/**
 * Writes what the current claims ask for. Settings no claim wants any more get
 * their original back; with no claims left, all of them do and the originals
 * are forgotten. Originals are saved before anything is written.
 */
export function retune(ctx: BaseContext, action: Action, claims: Claim[]): void {
  const setting = SETTINGS[action];
  const state = ctx.shared.read<Originals>() ?? {};
  const originals = (state[action] ??= {});
  const save = () => {
    if (Object.keys(originals).length === 0) delete state[action];
    if (Object.keys(state).length === 0) ctx.shared.remove();
    else ctx.shared.write(state);
  };
  const hostCpus = claims.length > 0 ? hostSetFor(ctx, claims) : [];
  const targets = claims.length > 0 ? setting.targets(ctx, claims, hostCpus) : [];
  const wanted = new Set(targets.map((target) => target.key));

  // Best effort, each one: what cannot be restored keeps its original for the next try.
  // A crash here is harmless too: the originals are still saved.
  const failures: string[] = [];
  for (const key of Object.keys(originals).reverse()) {
    if (wanted.has(key)) continue;
    try {
      setting.write(ctx, key, originals[key]!);
      delete originals[key];
    } catch (error) {
      failures.push(describeError(error));
    }
  }
  for (const target of targets) originals[target.key] ??= setting.read(ctx, target.key);
  save();
  if (failures.length > 0) throw new VmhookError(`isolate: could not restore ${failures.length} setting(s): ${failures[0]}`, failures.slice(1));
  for (const target of targets) {
    try {
      if (!setting.write(ctx, target.key, target.want(originals[target.key]!))) delete originals[target.key];
    } catch (error) {
      if (stillOriginal(ctx, setting, target.key, originals[target.key]!)) delete originals[target.key];
      save();
      throw error;
    }
  }
  save();
}

/** After a failed write: usually nothing was written, and then there is nothing to restore either. */
export function stillOriginal(ctx: BaseContext, setting: Setting, key: string, original: string): boolean {
  try {
    return setting.read(ctx, key) === original;
  } catch {
    return false; // unknown: keep the original, restoring it is harmless
  }
}

/** All online CPUs minus every claim's isolated ones. */
export function hostSetFor(ctx: BaseContext, claims: Claim[]): number[] {
  const isolated = new Set(union(claims.map((claim) => claim.isolated)));
  const host = onlineCpus(ctx).filter((cpu) => !isolated.has(cpu));
  if (host.length === 0) throw new VmhookError(`isolating CPUs ${formatCpuList([...isolated])} would leave the host no online CPU`);
  return host;
}
