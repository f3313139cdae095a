// Applying: make the host match the claims, keeping the host's original
// values in the plugin's shared state until the last claim goes.
import { formatCpuList } from "../../lib/cpuset.ts";
import { describeError, VmhookError } from "../../lib/errors.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import { isCpuList, type Action, type Claim } from "./claims.ts";
import { hostUsableCpus, onlineCpus, union, type HostSet } from "./cpus.ts";
import { BOOT_CONSOLE, bootConsoleCpus } from "./host-minimum.ts";
import { SETTING_VALUE, SETTINGS, type Setting } from "./settings.ts";

/** Per kind of setting: key → the host's value before the first claim; with IRQ originals, the boot console's CPUs. */
export type Originals = Partial<Record<Action, Record<string, string>>> & { [BOOT_CONSOLE]?: number[] };

/**
 * Writes what the current claims ask for. Settings no claim wants any more get
 * their original back; with no claims left, all of them do and the originals
 * are forgotten. Originals are saved before anything is written. A write that
 * fails before any other was made, on a key no earlier claim changed, calls
 * `changedNothing` before it throws: the host is as it was.
 */
export function retune(ctx: BaseContext, action: Action, claims: Claim[], changedNothing: () => void = () => {}): void {
  const setting = SETTINGS[action];
  const state = ctx.shared.read(checkOriginals) ?? {};
  const originals = (state[action] ??= {});
  const save = () => {
    if (Object.keys(originals).length === 0) delete state[action];
    if (!state["irq-affinity"]) delete state[BOOT_CONSOLE];
    if (Object.keys(state).length === 0) ctx.shared.remove();
    else ctx.shared.write(state);
  };
  const targets = claims.length > 0 ? setting.targets(ctx, claims, hostSetFor(ctx, claims)) : [];
  const wanted = new Set(targets.map((target) => target.key));

  // Best effort, each one: what cannot be restored keeps its original for the next try.
  // A crash here is harmless too: the originals are still saved.
  const failures: string[] = [];
  const waiting: string[] = [];
  let wrote = false;
  for (const key of Object.keys(originals).reverse()) {
    if (wanted.has(key)) continue;
    const unavailable = setting.unavailable?.(ctx, key);
    if (unavailable) {
      waiting.push(`"${originals[key]}" to ${key} (${unavailable})`);
      continue;
    }
    try {
      (setting.restore ?? setting.write)(ctx, key, originals[key]!);
      delete originals[key];
      wrote = true;
    } catch (error) {
      failures.push(describeError(error));
    }
  }
  // Kept from an earlier claim: the key may still hold that claim's value, so a refusal now does not forget it.
  const keptEarlier = new Set(Object.keys(originals));
  const present = targets.filter((target) => {
    const original = originals[target.key] ?? setting.read(ctx, target.key);
    if (original !== undefined) originals[target.key] = original;
    return original !== undefined;
  });
  // No IRQ holds a VM's placement yet: where the console's IRQs go now is the host's own.
  if (action === "irq-affinity" && keptEarlier.size === 0 && present.length > 0) state[BOOT_CONSOLE] = bootConsoleCpus(ctx.host);
  save();
  // Not a failure of this VM, nor of the next one: the original stays saved until it can be written.
  if (waiting.length > 0) {
    ctx.log.warn(`isolate: cannot write back ${waiting.join(", ")} now; vmhook keeps it and writes it back once the CPU is online, at the next start or stop of a VM that sets a governor, or by vmhook recover (vmhook status lists it meanwhile)`);
  }
  if (failures.length > 0) throw new VmhookError(`isolate: could not restore ${failures.length} setting(s): ${failures[0]}`, failures.slice(1));
  for (const [index, target] of present.entries()) {
    try {
      if (setting.write(ctx, target.key, target.want(originals[target.key]!))) wrote = true;
      else if (!keptEarlier.has(target.key)) delete originals[target.key];
    } catch (error) {
      // The keys after it were never written: restoring them would be a change of its own (a set-property leaves systemd wanting a daemon-reload).
      for (const later of present.slice(index + 1)) if (!keptEarlier.has(later.key)) delete originals[later.key];
      const unchanged = stillOriginal(ctx, setting, target.key, originals[target.key]!);
      if (unchanged) delete originals[target.key];
      save();
      if (unchanged && !wrote && !keptEarlier.has(target.key)) changedNothing();
      throw error;
    }
  }
  save();
}

/** The shared state as retune writes it: each original is written back to its key, as root, once the last claim goes. */
export function checkOriginals(value: unknown): Originals {
  if (!isObject(value)) throw new Error(`it holds ${JSON.stringify(value)}, not the originals of isolate's settings`);
  for (const [action, originals] of Object.entries(value)) {
    if (action === BOOT_CONSOLE) {
      if (!isCpuList(originals)) throw new Error(`"${BOOT_CONSOLE}" holds ${JSON.stringify(originals)}, not a list of CPU numbers`);
      continue;
    }
    const setting: Setting | undefined = Object.hasOwn(SETTINGS, action) ? SETTINGS[action as Action] : undefined;
    if (!setting) throw new Error(`"${action}" is not an isolate setting`);
    if (!isObject(originals)) throw new Error(`"${action}" holds ${JSON.stringify(originals)}, not the originals of its files or units`);
    for (const [key, original] of Object.entries(originals)) {
      if (!setting.owns(key)) throw new Error(`"${action}" names "${key}", not one of its files or units`);
      if (typeof original !== "string" || !(setting.validOriginal?.(original) ?? SETTING_VALUE.test(original))) throw new Error(`"${action}" keeps ${JSON.stringify(original)} for "${key}", not a value it has`);
    }
  }
  return value as Originals;
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);

/** After a failed write: usually nothing was written, and then there is nothing to restore either. */
function stillOriginal(ctx: BaseContext, setting: Setting, key: string, original: string): boolean {
  try {
    return setting.read(ctx, key) === original;
  } catch {
    return false; // unknown: keep the original, restoring it is harmless
  }
}

/** The online CPUs minus every claim's isolated ones; of them, the host's are those not isolated at boot. */
function hostSetFor(ctx: BaseContext, claims: Claim[]): HostSet {
  const isolated = new Set(union(claims.map((claim) => claim.isolated)));
  const free = onlineCpus(ctx).filter((cpu) => !isolated.has(cpu));
  const host = hostUsableCpus(ctx.host, free);
  if (host.length === 0) throw new VmhookError(`isolating CPUs ${formatCpuList([...isolated])} would leave the host no online CPU outside those isolated at boot (isolcpus=)`);
  return { free, host };
}
