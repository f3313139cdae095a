// systemd as vmhook asks it: whether it is the running init (sd_booted(3)'s
// test, the directory systemd creates at boot), whether a unit runs and where
// it keeps its units' cgroups. One place, so every plugin agrees.
import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import type { BaseContext } from "./plugin.ts";

export const systemdRuns = (host: Host): boolean => host.exists("/run/systemd/system");

/** The hierarchy systemd keeps its units' cgroups in: where it is mounted, and the line of /proc/PID/cgroup that gives a process's path in it. */
export interface UnitHierarchy {
  mount: string;
  entry: RegExp;
}

const V2_ENTRY = /^0::(.*)$/m;

/**
 * The hierarchies systemd may keep its units' cgroups in: cgroup v2 at
 * /sys/fs/cgroup (unified, systemd 247's default); v2 at
 * /sys/fs/cgroup/unified beside the v1 controllers (hybrid: Debian 10, Ubuntu
 * 20.04, and any host booted with systemd.unified_cgroup_hierarchy=0); v1's
 * name=systemd hierarchy at /sys/fs/cgroup/systemd (legacy). A unit's cgroup
 * path, as systemctl show's ControlGroup= gives it, is the same in each.
 */
const UNIT_HIERARCHIES: UnitHierarchy[] = [
  { mount: "/sys/fs/cgroup", entry: V2_ENTRY },
  { mount: "/sys/fs/cgroup/unified", entry: V2_ENTRY },
  { mount: "/sys/fs/cgroup/systemd", entry: /^\d+:name=systemd:(.*)$/m },
];

/**
 * The hierarchy systemd keeps its units in: the one holding its own
 * init.scope (PID 1's cgroup since systemd 226). A cgroup v2 mounted at
 * /sys/fs/cgroup/unified by hand or by another tool on a legacy host holds
 * none of systemd's units, so being mounted does not tell. Undefined when none holds it.
 */
export function unitHierarchy(host: Host): UnitHierarchy | undefined {
  return UNIT_HIERARCHIES.find((hierarchy) => host.exists(`${hierarchy.mount}/init.scope/cgroup.procs`));
}

/** The processes in a unit's cgroup (none when it is gone); throws when no hierarchy holds systemd's units, as then no process could be seen. */
export function cgroupProcesses(host: Host, cgroup: string): string[] {
  const hierarchy = unitHierarchy(host);
  if (!hierarchy) {
    throw new VmhookError(
      `vmhook cannot see the processes of ${cgroup}: no cgroup hierarchy holds systemd's init.scope (cgroup v2 at /sys/fs/cgroup or /sys/fs/cgroup/unified, v1's name=systemd at /sys/fs/cgroup/systemd); mount them as systemd does at boot, or boot with systemd as init`,
    );
  }
  return (host.readTrimmed(`${hierarchy.mount}${cgroup}/cgroup.procs`) ?? "").split("\n").filter(Boolean);
}

/**
 * The states `systemctl is-active` prints for a unit that does not run. Its
 * exit status alone does not tell: 3 also comes with "activating" and
 * "deactivating" (a display manager in auto-restart takes the GPU back).
 */
const STOPPED = ["inactive", "failed"];
/** is-active's exit status for a unit systemd does not know (older systemd: 3 and "inactive"). */
const NO_SUCH_UNIT = 4;

/**
 * Whether the unit runs, starts or stops: anything but inactive, failed or
 * unknown. What is not one of is-active's answers (no bus to PID 1, a
 * timeout, systemctl missing) throws, naming what systemctl said: a unit of
 * unknown state is never taken for a stopped one.
 */
export const unitActive = (ctx: Pick<BaseContext, "run">, unit: string): boolean => !STOPPED.includes(unitState(ctx, unit));

/**
 * Whether the unit runs or starts, and stays so: a deactivating one is on its
 * way down (a stop job that runs on after its systemctl was killed at a
 * timeout), so it is not up and needs a start. Throws as unitActive does.
 */
export const unitUp = (ctx: Pick<BaseContext, "run">, unit: string): boolean => ![...STOPPED, "deactivating"].includes(unitState(ctx, unit));

/**
 * Whether the unit has a job queued (`systemctl show --property=Job` names
 * its number): for an inactive one, a start that waits for the units it is
 * After=, as at boot, when libvirt may already start a VM. Throws when
 * systemctl says neither a job number nor none.
 */
export function jobQueued(ctx: Pick<BaseContext, "run">, unit: string): boolean {
  const job = ctx.run("systemctl", ["show", "--property=Job", "--value", unit]).stdout.trim();
  if (job !== "" && !/^\d+$/.test(job)) throw new VmhookError(`systemctl show --property=Job ${unit} said ${JSON.stringify(job.slice(0, 80))}, not a job number: vmhook cannot tell whether ${unit} is about to start`);
  return job !== "";
}

/** is-active's word for the unit ("inactive" for one systemd does not know); throws when systemctl gives none. */
function unitState(ctx: Pick<BaseContext, "run">, unit: string): string {
  const result = ctx.run("systemctl", ["is-active", unit], { allowFailure: true });
  const state = result.stdout.trim();
  if (!result.error && !result.timedOut) {
    if (result.status === NO_SUCH_UNIT) return "inactive";
    if ((result.status === 0 || result.status === 3) && /^[a-z-]+$/.test(state)) return state;
  }
  const why = result.error ?? (result.timedOut ? "it did not answer in time" : (result.stderr.trim().split("\n")[0] || `exit status ${result.status ?? result.signal}${state ? `, "${state}"` : ""}`));
  throw new VmhookError(`systemctl is-active ${unit} could not tell whether ${unit} runs: ${why}; is systemd (PID 1) answering? (systemctl status)`);
}
