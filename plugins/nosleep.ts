// The nosleep plugin: the host does not suspend or hibernate while the VM
// runs (a passed-through GPU or USB controller rarely survives a host sleep).
// It holds a logind inhibitor lock ("sleep", mode block) from a transient
// systemd unit, so no process of the hook keeps it or any of libvirt's pipes,
// and stops that unit at release.
//
//   <vmhook:nosleep/>
import type { Element } from "@xmldom/xmldom";
import { readAttributes, single } from "../lib/config.ts";
import type { Domain } from "../lib/domain.ts";
import { VmhookError } from "../lib/errors.ts";
import { definePlugin, type BaseContext, type UndoRecord } from "../lib/plugin.ts";
import { PATTERNS } from "../lib/validate.ts";

export interface NosleepConfig {
  /** The transient unit that holds the lock: one per domain (its UUID). */
  unit: string;
  why: string;
}

const WHO = "vmhook";

function parseConfig(elements: Element[], domain: Domain): NosleepConfig {
  readAttributes(single(elements), []);
  // The UUID was validated when the domain was read; the name only goes into argv, never a path or a shell.
  return { unit: `vmhook-nosleep-${domain.uuid}.service`, why: `VM ${domain.name} runs with devices passed through` };
}

const unitActive = (ctx: BaseContext, unit: string) => ctx.run("systemctl", ["is-active", "--quiet", unit], { allowFailure: true }).status === 0;

/** Does logind list a lock of ours for this unit's why? (`systemd-inhibit --list`: WHO UID USER PID COMM WHAT WHY MODE) */
function lockHeld(ctx: BaseContext, why: string): boolean {
  const list = ctx.run("systemd-inhibit", ["--list", "--no-pager", "--no-legend"], { allowFailure: true }).stdout;
  return list.split("\n").some((line) => line.trimStart().startsWith(`${WHO} `) && line.includes(why) && /\bsleep\b/.test(line));
}

export function stopInhibitor(ctx: BaseContext, record: UndoRecord): void {
  const unit = String(record.unit);
  if (!/^vmhook-nosleep-[0-9a-f-]{36}\.service$/.test(unit)) throw new VmhookError(`nosleep: the journal names unit "${unit}", which is not one of vmhook's inhibitor units`);
  if (!unitActive(ctx, unit)) return;
  ctx.run("systemctl", ["stop", unit], { timeoutMs: 30_000 });
  if (unitActive(ctx, unit)) throw new VmhookError(`nosleep: ${unit} is still running after systemctl stop; the host cannot sleep until it ends (systemctl kill ${unit})`);
}

export default definePlugin<NosleepConfig>({
  name: "nosleep",
  summary: "keep the host from suspending or hibernating while the VM runs (a logind inhibitor lock)",
  usage: "<vmhook:nosleep/>",
  parse: parseConfig,

  async prepare(ctx) {
    if (!ctx.host.exists("/run/systemd/system")) {
      throw new VmhookError("nosleep: the host does not run systemd, so there is no logind to hold a sleep inhibitor lock; remove <vmhook:nosleep/> or disable sleep another way");
    }
    const { unit, why } = ctx.config;
    if (!PATTERNS.uuid.test(ctx.domain.uuid)) throw new VmhookError(`nosleep: domain UUID "${ctx.domain.uuid}" is not a UUID`);
    await ctx.step(`hold a sleep inhibitor lock in ${unit}`, { action: "stop-inhibitor", unit }, () => {
      if (unitActive(ctx, unit)) throw new VmhookError(`nosleep: ${unit} already runs, so another start of this VM holds the lock; stop it (systemctl stop ${unit}) if that VM is gone`);
      ctx.run("systemd-run", [
        `--unit=${unit}`, "--collect", "--quiet", `--description=vmhook: no sleep while ${ctx.domain.name} runs`,
        "systemd-inhibit", `--what=sleep`, `--who=${WHO}`, `--why=${why}`, "--mode=block", "sleep", "infinity",
      ], { timeoutMs: 30_000 });
      ctx.waitFor(`logind lists the sleep inhibitor of ${unit}`, () => lockHeld(ctx, why), { timeoutMs: 5_000 });
    });
  },

  reconnect(ctx) {
    if (!unitActive(ctx, ctx.config.unit)) ctx.log.warn(`nosleep: ${ctx.config.unit} should hold the sleep inhibitor while ${ctx.domain.name} runs, but is not running`);
  },

  undo(record, ctx) {
    if (record.action !== "stop-inhibitor") throw new VmhookError(`nosleep: the journal holds an unknown change "${record.action}"; was it written by a newer vmhook?`);
    stopInhibitor(ctx, record);
  },
});
