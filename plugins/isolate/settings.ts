// The host settings isolation changes, one backend per kind: each knows its
// files or units, how to read them and what to write.
import { formatCpuList } from "../../lib/cpuset.ts";
import { VmhookError } from "../../lib/errors.ts";
import type { BaseContext } from "../../lib/plugin.ts";
import type { Action, Claim } from "./claims.ts";
import { CPU_DIR, narrowedList, narrowedMask, onlineCpus, parseCpuText, type HostSet } from "./cpus.ts";

export interface Target {
  key: string;
  /** The value to write, given the host's value from before the first claim. */
  want(original: string): string;
}

export interface Setting {
  describe(claim: Claim): string;
  /** What the claims ask for, in the order to apply (restore goes in reverse). */
  targets(ctx: BaseContext, claims: Claim[], hostSet: HostSet): Target[];
  /** undefined: the key is gone since targets listed it (an IRQ freed meanwhile): nothing to change or restore. */
  read(ctx: BaseContext, key: string): string | undefined;
  /** Whether `key` is one this setting's targets name: an original kept for another key is not vmhook's to write back. */
  owns(key: string): boolean;
  /** false: the kernel refused this one (e.g. an IRQ that cannot move); it is skipped. */
  write(ctx: BaseContext, key: string, value: string): boolean;
  /** Puts back what `read` returned before the first claim, when that is more than a write (default: write). */
  restore?(ctx: BaseContext, key: string, original: string): boolean;
  /** Whether a kept original is one `read` returns (default: SETTING_VALUE): it is written back as root. */
  validOriginal?(original: string): boolean;
  /** Why `key` cannot be written now (its CPU is offline), or undefined: its original is then kept for a later restore. */
  unavailable?(ctx: BaseContext, key: string): string | undefined;
}

/** A value as the kernel and systemd show these settings: a CPU list or mask, "cpuset" or nothing, a governor name. */
export const SETTING_VALUE = /^[0-9a-z_, -]{0,4096}$/;

// systemd owns the cgroup tree: ask it. machine.slice, where libvirt puts VMs, is never touched.
export const SYSTEMD_UNITS = ["system.slice", "user.slice", "init.scope"];
/** Where set-property --runtime keeps a unit's AllowedCPUs: systemd makes the directories as needed and replaces the file whole (unit_write_setting). */
const CONTROL_DIR = "/run/systemd/system.control";
export const RUNTIME_DROP_IN = "50-AllowedCPUs.conf";
export const runtimeDropIn = (unit: string) => `${CONTROL_DIR}/${unit}.d/${RUNTIME_DROP_IN}`;
// Without systemd: the VMs' top-level groups (systemd-style and libvirt's own names) are left alone,
// <resource><partition>s among them: libvirt names /vms "vms.partition" (virCgroupSetPartitionSuffix).
const isVmGroup = (name: string) => name === "machine.slice" || name === "machine" || name.endsWith(".partition") || name.includes("libvirt");
export const CGROUP = "/sys/fs/cgroup";
export const WORKQUEUE_MASK = "/sys/devices/virtual/workqueue/cpumask";
// The mask IRQs get when they are set up later, e.g. those of the devices QEMU opens (kernel IRQ-affinity docs).
export const DEFAULT_IRQ_MASK = "/proc/irq/default_smp_affinity";
// Per-CPU timers and managed IRQs refuse to move (EIO, EINVAL); an IRQ freed meanwhile is gone (ENOENT).
const IRQ_REFUSALS = ["EIO", "EINVAL", "ENOENT"];

export const SETTINGS: Record<Action, Setting> = {
  "systemd-allowed-cpus": {
    describe: (claim) => `keep systemd's ${SYSTEMD_UNITS.join(", ")} off CPUs ${formatCpuList(claim.isolated)}`,
    // A unit's original is its AllowedCPUs, then on the next lines its runtime drop-in as it was (RuntimeDropIn).
    targets(ctx, _claims, hostSet) {
      const groups = groupHostSet(ctx, hostSet);
      return SYSTEMD_UNITS.map((unit) => ({ key: unit, want: (original) => narrowedList(groups)(original.split("\n")[0]!) }));
    },
    read(ctx, unit) {
      const shown = ctx.run("systemctl", ["show", "-p", "AllowedCPUs", unit]).stdout.trim();
      return `${shown.replace(/^AllowedCPUs=/, "")}\n${runtimeDropInState(ctx, unit)}`;
    },
    owns: (unit) => SYSTEMD_UNITS.includes(unit),
    write: setAllowedCpus,
    // The live value first, which set-property can only set by writing its drop-in; then the drop-in as it was, so that a
    // daemon-reload or reboot gives the unit what its own drop-ins say, not the copy vmhook's set-property left.
    restore(ctx, unit, original) {
      const newline = original.indexOf("\n");
      setAllowedCpus(ctx, unit, newline < 0 ? original : original.slice(0, newline));
      // An original without a second line was kept by an older vmhook, which did not read the drop-in: it stays.
      if (newline >= 0) putBackRuntimeDropIn(ctx, unit, original.slice(newline + 1) as RuntimeDropIn);
      return true;
    },
    validOriginal(original) {
      const newline = original.indexOf("\n");
      if (newline < 0) return SETTING_VALUE.test(original);
      const dropIn = original.slice(newline + 1);
      return SETTING_VALUE.test(original.slice(0, newline)) && (DROP_IN_ABSENT.includes(dropIn) || (dropIn.startsWith("drop-in\n") && dropIn.length <= 65536 && !dropIn.includes("\0")));
    },
  },
  "cgroup-cpuset": {
    describe: (claim) => `keep the host's top-level cgroups off CPUs ${formatCpuList(claim.isolated)}`,
    targets(ctx, _claims, hostSet) {
      // A partition holds its CPUs itself: narrowing it would take them from the work it was made for.
      const groups = ctx.host.list(CGROUP).filter((name) => !isVmGroup(name) && ctx.host.stat(`${CGROUP}/${name}`)?.isDirectory && !isPartition(ctx, name));
      const want = narrowedList(groupHostSet(ctx, hostSet));
      return [
        // cpuset.cpus exists in the top-level groups only once the root hands the controller down.
        { key: `${CGROUP}/cgroup.subtree_control`, want: () => "cpuset" },
        ...groups.map((name) => ({ key: `${CGROUP}/${name}/cpuset.cpus`, want })),
      ];
    },
    read(ctx, key) {
      if (key.endsWith("/cgroup.subtree_control")) return ctx.host.read(key).split(/\s+/).includes("cpuset") ? "cpuset" : "";
      // Before the controller is enabled the file is missing; it then starts empty, meaning "as the parent".
      return ctx.host.readTrimmed(key) ?? "";
    },
    owns(key) {
      const group = new RegExp(`^${CGROUP}/([^/]+)/cpuset\\.cpus$`).exec(key)?.[1];
      return key === `${CGROUP}/cgroup.subtree_control` || (group !== undefined && group !== "." && group !== ".." && !isVmGroup(group));
    },
    write: (ctx, key, value) => (key.endsWith("/cgroup.subtree_control") ? writeSubtreeControl(ctx, key, value) : writeGroupCpus(ctx, key, value)),
  },
  "workqueue-mask": {
    describe: (claim) => `keep unbound kernel workqueues off CPUs ${formatCpuList(claim.isolated)}`,
    targets: (_ctx, _claims, hostSet) => [{ key: WORKQUEUE_MASK, want: narrowedMask(hostSet) }],
    read: (ctx, key) => ctx.host.read(key).trim(),
    owns: (key) => key === WORKQUEUE_MASK,
    write: (ctx, key, value) => writeOrRefuse(ctx, key, value, []),
  },
  "irq-affinity": {
    describe: (claim) => `move IRQs off CPUs ${formatCpuList(claim.isolated)}`,
    targets: (ctx, _claims, hostSet) => [
      ...(ctx.host.exists(DEFAULT_IRQ_MASK) ? [{ key: DEFAULT_IRQ_MASK, want: narrowedMask(hostSet) }] : []),
      ...ctx.host
        .list("/proc/irq")
        .filter((irq) => /^\d+$/.test(irq) && ctx.host.exists(`/proc/irq/${irq}/smp_affinity_list`))
        .map((irq) => ({ key: `/proc/irq/${irq}/smp_affinity_list`, want: narrowedList(hostSet) })),
    ],
    read(ctx, key) {
      try {
        return ctx.host.read(key).trim();
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined; // freed after the listing (e.g. another VM's vfio MSI-X)
        throw error;
      }
    },
    owns: (key) => key === DEFAULT_IRQ_MASK || /^\/proc\/irq\/\d+\/smp_affinity_list$/.test(key),
    write: (ctx, key, value) => writeOrRefuse(ctx, key, value, IRQ_REFUSALS),
  },
  governor: {
    describe: (claim) => `set the cpufreq governor of CPUs ${formatCpuList(claim.own)} to ${claim.governor}`,
    // A CPU taken offline while a VM runs: its cpufreq answers EBUSY, and the kernel gives it the governor it had
    // (the VM's) when it comes online again (cpufreq_online, last_governor).
    targets(ctx, claims) {
      const online = onlineCpus(ctx);
      return claims.flatMap((claim) => claim.own.filter((cpu) => online.includes(cpu)).map((cpu) => ({ key: governorFile(cpu), want: () => claim.governor! })));
    },
    read: (ctx, key) => ctx.host.read(key).trim(),
    owns: (key) => GOVERNOR_FILE.test(key),
    write: (ctx, key, value) => writeOrRefuse(ctx, key, value, []),
    unavailable(ctx, key) {
      const cpu = Number(GOVERNOR_FILE.exec(key)![1]);
      return onlineCpus(ctx).includes(cpu) ? undefined : `CPU ${cpu} is offline`;
    },
  },
};

/** A top-level group's cpuset.cpus.partition when it is a partition ("root", "isolated", or one the kernel marks invalid), not a "member". */
function partitionOf(ctx: BaseContext, name: string): string | undefined {
  const partition = ctx.host.readTrimmed(`${CGROUP}/${name}/cpuset.cpus.partition`);
  return partition === undefined || partition === "member" ? undefined : partition;
}

const isPartition = (ctx: BaseContext, name: string) => partitionOf(ctx, name) !== undefined;

/**
 * The host set for the host's top-level groups: without the CPUs a valid
 * cpuset partition holds (an admin's real-time group). Linux 6.1 takes a
 * sibling's cpuset.cpus that overlaps them and invalidates the partition,
 * its CPUs shared again (test/kernel/isolate.test.ts).
 */
function groupHostSet(ctx: BaseContext, hostSet: HostSet): HostSet {
  const partitions = ctx.host
    .list(CGROUP)
    .filter((name) => ["root", "isolated"].includes(partitionOf(ctx, name) ?? "") && ctx.host.stat(`${CGROUP}/${name}`)?.isDirectory)
    .map((name) => ({ name, cpus: parseCpuText(ctx.host.read(`${CGROUP}/${name}/cpuset.cpus`)) }));
  if (partitions.length === 0) return hostSet;
  const held = new Set(partitions.flatMap((partition) => partition.cpus));
  const host = hostSet.host.filter((cpu) => !held.has(cpu));
  if (host.length === 0) {
    const named = partitions.map(({ name, cpus }) => `${CGROUP}/${name} (CPU ${formatCpuList(cpus)})`).join(", ");
    throw new VmhookError(`CPU isolation: the host keeps only CPU ${formatCpuList(hostSet.host)}, and the cpuset partition ${named} holds them, so the host's groups would have no CPU; keep a CPU outside the partitions for the host`);
  }
  return { free: hostSet.free.filter((cpu) => !held.has(cpu)), host };
}

const governorFile = (cpu: number) => `${CPU_DIR}/cpu${cpu}/cpufreq/scaling_governor`;
const GOVERNOR_FILE = new RegExp(`^${CPU_DIR}/cpu(\\d+)/cpufreq/scaling_governor$`);

function setAllowedCpus(ctx: BaseContext, unit: string, value: string): boolean {
  // An empty value is systemd's "no restriction": exactly what a unit had before if it showed nothing.
  ctx.run("systemctl", ["set-property", "--runtime", unit, `AllowedCPUs=${value}`]);
  // systemd writes the unit's cgroup before set-property answers (unit_realize_cgroup), and only logs a write that fails.
  const cgroup = `${CGROUP}/${unit}/cpuset.cpus`;
  const shown = value === "" ? "" : ctx.host.readTrimmed(cgroup);
  if (shown !== undefined && formatCpuList(parseCpuText(shown)) === formatCpuList(parseCpuText(value))) return true;
  throw new VmhookError(
    `isolate: systemd took AllowedCPUs=${value} for ${unit}, but ${cgroup} is ${shown === undefined ? "missing" : `"${shown}"`}: systemd could not write it (journalctl -b _PID=1 says why: "Failed to set 'cpuset.cpus' attribute …"), so ${unit} would still run on the VM's CPUs; fix that cause`,
  );
}

/**
 * A unit's runtime drop-in before set-property: "drop-in" and its content on
 * the next lines, or which of what set-property makes was missing: the file,
 * its unit's directory, or /run/systemd/system.control too.
 */
type RuntimeDropIn = `drop-in\n${string}` | "no-drop-in" | "no-unit-dir" | "no-control-dir";
const DROP_IN_ABSENT: string[] = ["no-drop-in", "no-unit-dir", "no-control-dir"];

function runtimeDropInState(ctx: BaseContext, unit: string): RuntimeDropIn {
  if (!ctx.host.exists(CONTROL_DIR)) return "no-control-dir";
  if (!ctx.host.exists(`${CONTROL_DIR}/${unit}.d`)) return "no-unit-dir";
  if (!ctx.host.exists(runtimeDropIn(unit))) return "no-drop-in";
  return `drop-in\n${ctx.host.read(runtimeDropIn(unit))}`;
}

/** Idempotent: run again after a crash, it finds the same or less to do. A directory something else put a file in meanwhile stays. */
function putBackRuntimeDropIn(ctx: BaseContext, unit: string, before: RuntimeDropIn): void {
  const file = runtimeDropIn(unit);
  if (before.startsWith("drop-in\n")) {
    // set-property just wrote the file, so it exists and keeps systemd's mode.
    ctx.host.write(file, before.slice("drop-in\n".length));
    return;
  }
  ctx.host.remove(file);
  const removeIfEmpty = (dir: string) => ctx.host.list(dir).length === 0 && ctx.host.exists(dir) && ctx.host.remove(dir);
  if (before !== "no-drop-in") removeIfEmpty(`${CONTROL_DIR}/${unit}.d`);
  if (before === "no-control-dir") removeIfEmpty(CONTROL_DIR);
}

function writeSubtreeControl(ctx: BaseContext, key: string, value: string): boolean {
  try {
    ctx.host.write(key, value === "cpuset" ? "+cpuset" : "-cpuset");
  } catch (error) {
    // A child group (e.g. libvirt's) enabled cpuset for itself meanwhile: harmless to leave on.
    if (value !== "" || (error as NodeJS.ErrnoException).code !== "EBUSY") throw error;
    ctx.log.warn(`isolate: left cpuset enabled in ${key}: a child group still uses it (cpuset.cpus are restored, so no CPU is fenced off)`);
  }
  return true;
}

function writeGroupCpus(ctx: BaseContext, key: string, value: string): boolean {
  if (value === "") {
    try {
      ctx.host.write(key, "\n");
      return true;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return false; // the group is gone
      if (code !== "ENOSPC") throw error;
      // The kernel refuses to empty cpuset.cpus of a group with processes (ENOSPC);
      // all of the root's CPUs means the same, and disabling cpuset afterwards removes the file.
      value = ctx.host.read(`${CGROUP}/cpuset.cpus.effective`).trim();
    }
  }
  return writeOrRefuse(ctx, key, value, ["ENOENT"]);
}

function writeOrRefuse(ctx: BaseContext, key: string, value: string, refusals: string[]): boolean {
  try {
    ctx.host.write(key, `${value}\n`);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    if (!refusals.includes(code)) throw error; // it names the value and the file
    ctx.log.info(`isolate: ${key} refused "${value}" (${code}); left as it is`);
    return false;
  }
}
