// isolate: keeps host work (processes, unbound kernel workqueues, IRQs) off
// the CPUs a VM runs on while it runs, and gives everything back after.
//
//   <vmhook:isolate host-cpus="0-1" governor="performance" workqueues="yes" irqs="yes"
//                   required="yes" allow-overlap="no"/>
//
// The host CPU set is shared by every running VM: under the host-wide lock,
// each prepare and each release recomputes it as "all online CPUs minus the
// union of what every isolating VM isolates", reading the other VMs' claims
// from their journals. The values the host had before the first VM touched
// them are kept in the plugin's shared state and written back when the last
// claim goes. Each journal record is such a claim; undoing it means
// recomputing without it, which is idempotent by construction.
import type { Element } from "@xmldom/xmldom";
import { readAttributes, single } from "../lib/element.ts";
import { formatCpuList, parseCpuset, parseKernelCpuList } from "../lib/cpuset.ts";
import { attributes, describeElement, type Domain } from "../lib/domain.ts";
import { ConfigError, describeError, VmhookError } from "../lib/errors.ts";
import { defineAction, definePlugin, type BaseContext, type CheckContext, type PlanContext, type Step, type UndoRecord } from "../lib/plugin.ts";
import { fail, ok, type Finding } from "../lib/diagnostics/findings.ts";
import { parseYesNo } from "../lib/validate.ts";

const PLUGIN_ID = "isolate";
const ATTRIBUTES = ["host-cpus", "governor", "workqueues", "irqs", "required", "allow-overlap"] as const;

export interface IsolateConfig {
  /** host-cpus as written; undefined: all online CPUs minus the pinned ones. */
  hostCpus?: number[];
  /** Every CPU in <cputune> vcpupin, emulatorpin and iothreadpin. */
  pinned: number[];
  governor?: string;
  workqueues: boolean;
  irqs: boolean;
  /** no: a host that cannot isolate (cgroup v1, no cpufreq, ...) gets a warning and the VM starts. */
  required: boolean;
  allowOverlap: boolean;
  /** The element as written, for messages: <vmhook:isolate host-cpus="0-1">. */
  element: string;
}

// ---- config -----------------------------------------------------------------

function parse(elements: Element[], domain: Domain): IsolateConfig {
  const element = single(elements);
  const where = describeElement(element);
  const attrs = readAttributes(element, ATTRIBUTES);
  const { vcpupins, emulatorpin, iothreadpins } = domain.cputune;
  const pinned = union([...vcpupins, emulatorpin ?? [], ...iothreadpins]);
  const hostCpus = attrs["host-cpus"] !== undefined ? parseCpuset(attrs["host-cpus"], where, "host-cpus") : undefined;

  if (!hostCpus && pinned.length === 0) {
    throw new ConfigError(where, `has no host-cpus and the domain pins no CPUs in <cputune>, so vmhook cannot tell which CPUs are the VM's; pin them (<vcpupin vcpu="0" cpuset="2"/>) or write host-cpus="0-1"`);
  }
  const shared = hostCpus ? intersect(hostCpus, pinned) : [];
  if (shared.length > 0) {
    throw new ConfigError(where, `host-cpus="${attrs["host-cpus"]}" includes CPU ${formatCpuList(shared)}, which <cputune> pins the VM to; keep the VM's CPUs out of host-cpus`);
  }
  const governor = attrs.governor?.trim();
  if (governor !== undefined && !/^[a-z][a-z0-9_]{0,31}$/.test(governor)) {
    throw new ConfigError(where, `governor="${attrs.governor}" is not a cpufreq governor name; use one from /sys/devices/system/cpu/cpu0/cpufreq/scaling_available_governors, e.g. performance`);
  }
  return {
    hostCpus,
    pinned,
    governor,
    workqueues: parseYesNo(attrs.workqueues, where, "workqueues", false),
    irqs: parseYesNo(attrs.irqs, where, "irqs", false),
    required: parseYesNo(attrs.required, where, "required", true),
    allowOverlap: parseYesNo(attrs["allow-overlap"], where, "allow-overlap", false),
    element: where,
  };
}

// ---- claims: what each running VM isolates, read from every journal ------------

type Action = "systemd-allowed-cpus" | "cgroup-cpuset" | "workqueue-mask" | "irq-affinity" | "governor";

/** One journal record: this VM's claim on one kind of host setting. */
interface Claim extends UndoRecord {
  action: Action;
  /** CPUs kept from the host: online minus host-cpus, or the pinned ones. */
  isolated: number[];
  /** CPUs the VM runs on: the pinned ones, or all isolated ones when it pins nothing. */
  own: number[];
  governor: string | null;
}

interface OtherVm {
  name: string;
  isolated: number[];
  own: number[];
}

/** Every claim of this kind in every journal, except those of `exceptDomain` (the one being released). */
function claimsOf(ctx: BaseContext, action: Action, exceptDomain?: string): Claim[] {
  return ctx
    .journals()
    .filter((journal) => journal.domain.uuid !== exceptDomain)
    .flatMap((journal) => journal.entries)
    .filter((entry) => entry.plugin === PLUGIN_ID && entry.undo.action === action)
    .map((entry) => entry.undo as Claim);
}

/** The other running VMs that isolate CPUs, whatever settings they changed. */
function otherVms(ctx: BaseContext): OtherVm[] {
  const vms: OtherVm[] = [];
  for (const journal of ctx.journals()) {
    if (journal.domain.uuid === ctx.domain.uuid) continue;
    const claim = journal.entries.find((entry) => entry.plugin === PLUGIN_ID)?.undo as Claim | undefined;
    if (claim) vms.push({ name: journal.domain.name, isolated: claim.isolated, own: claim.own });
  }
  return vms;
}

// ---- host settings: each kind knows its files or units, and what to write ------

interface Target {
  key: string;
  /** The value to write, given the host's value from before the first claim. */
  want(original: string): string;
}

interface Setting {
  describe(claim: Claim): string;
  /** What the claims ask for, in the order to apply (restore goes in reverse). */
  targets(ctx: BaseContext, claims: Claim[], hostCpus: number[]): Target[];
  read(ctx: BaseContext, key: string): string;
  /** false: the kernel refused this one (e.g. an IRQ that cannot move); it is skipped. */
  write(ctx: BaseContext, key: string, value: string): boolean;
}

// systemd owns the cgroup tree: ask it. machine.slice, where libvirt puts VMs, is never touched.
const SYSTEMD_UNITS = ["system.slice", "user.slice", "init.scope"];
// Without systemd: the VMs' top-level groups (systemd-style and libvirt's own names) are left alone.
const isVmGroup = (name: string) => name === "machine.slice" || name === "machine" || name.includes("libvirt");
const CGROUP = "/sys/fs/cgroup";
const CPU_DIR = "/sys/devices/system/cpu";
const WORKQUEUE_MASK = "/sys/devices/virtual/workqueue/cpumask";
// The mask IRQs get when they are set up later, e.g. those of the devices QEMU opens (kernel IRQ-affinity docs).
const DEFAULT_IRQ_MASK = "/proc/irq/default_smp_affinity";
// Per-CPU timers and managed IRQs refuse to move (EIO, EINVAL); an IRQ freed meanwhile is gone (ENOENT).
const IRQ_REFUSALS = ["EIO", "EINVAL", "ENOENT"];

const SETTINGS: Record<Action, Setting> = {
  "systemd-allowed-cpus": {
    describe: (claim) => `keep systemd's ${SYSTEMD_UNITS.join(", ")} off CPUs ${formatCpuList(claim.isolated)}`,
    targets: (_ctx, _claims, hostCpus) => SYSTEMD_UNITS.map((unit) => ({ key: unit, want: narrowedList(hostCpus) })),
    read(ctx, unit) {
      const shown = ctx.run("systemctl", ["show", "-p", "AllowedCPUs", unit]).stdout.trim();
      return shown.replace(/^AllowedCPUs=/, "");
    },
    write(ctx, unit, value) {
      // An empty value is systemd's "no restriction": exactly what a unit had before if it showed nothing.
      ctx.run("systemctl", ["set-property", "--runtime", unit, `AllowedCPUs=${value}`]);
      return true;
    },
  },
  "cgroup-cpuset": {
    describe: (claim) => `keep the host's top-level cgroups off CPUs ${formatCpuList(claim.isolated)}`,
    targets(ctx, _claims, hostCpus) {
      const groups = ctx.host.list(CGROUP).filter((name) => !isVmGroup(name) && ctx.host.stat(`${CGROUP}/${name}`)?.isDirectory);
      return [
        // cpuset.cpus exists in the top-level groups only once the root hands the controller down.
        { key: `${CGROUP}/cgroup.subtree_control`, want: () => "cpuset" },
        ...groups.map((name) => ({ key: `${CGROUP}/${name}/cpuset.cpus`, want: narrowedList(hostCpus) })),
      ];
    },
    read(ctx, key) {
      if (key.endsWith("/cgroup.subtree_control")) return ctx.host.read(key).split(/\s+/).includes("cpuset") ? "cpuset" : "";
      // Before the controller is enabled the file is missing; it then starts empty, meaning "as the parent".
      return ctx.host.readTrimmed(key) ?? "";
    },
    write: (ctx, key, value) => (key.endsWith("/cgroup.subtree_control") ? writeSubtreeControl(ctx, key, value) : writeGroupCpus(ctx, key, value)),
  },
  "workqueue-mask": {
    describe: (claim) => `keep unbound kernel workqueues off CPUs ${formatCpuList(claim.isolated)}`,
    targets: (_ctx, _claims, hostCpus) => [{ key: WORKQUEUE_MASK, want: narrowedMask(hostCpus) }],
    read: (ctx, key) => ctx.host.read(key).trim(),
    write: (ctx, key, value) => writeOrRefuse(ctx, key, value, []),
  },
  "irq-affinity": {
    describe: (claim) => `move IRQs off CPUs ${formatCpuList(claim.isolated)}`,
    targets: (ctx, _claims, hostCpus) => [
      ...(ctx.host.exists(DEFAULT_IRQ_MASK) ? [{ key: DEFAULT_IRQ_MASK, want: narrowedMask(hostCpus) }] : []),
      ...ctx.host
        .list("/proc/irq")
        .filter((irq) => /^\d+$/.test(irq) && ctx.host.exists(`/proc/irq/${irq}/smp_affinity_list`))
        .map((irq) => ({ key: `/proc/irq/${irq}/smp_affinity_list`, want: narrowedList(hostCpus) })),
    ],
    read: (ctx, key) => ctx.host.read(key).trim(),
    write: (ctx, key, value) => writeOrRefuse(ctx, key, value, IRQ_REFUSALS),
  },
  governor: {
    describe: (claim) => `set the cpufreq governor of CPUs ${formatCpuList(claim.own)} to ${claim.governor}`,
    targets: (_ctx, claims) =>
      claims.flatMap((claim) => claim.own.map((cpu) => ({ key: `${CPU_DIR}/cpu${cpu}/cpufreq/scaling_governor`, want: () => claim.governor! }))),
    read: (ctx, key) => ctx.host.read(key).trim(),
    write: (ctx, key, value) => writeOrRefuse(ctx, key, value, []),
  },
};

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
    if (!refusals.includes(code)) throw new VmhookError(`cannot write "${value}" to ${key}: ${(error as Error).message}`);
    ctx.log.info(`isolate: ${key} refused "${value}" (${code}); left as it is`);
    return false;
  }
}

// ---- applying: make the host match the claims, keeping originals in shared state -

/** Per kind of setting: key → the host's value before the first claim. */
type Originals = Partial<Record<Action, Record<string, string>>>;

/**
 * Writes what the current claims ask for. Settings no claim wants any more get
 * their original back; with no claims left, all of them do and the originals
 * are forgotten. Originals are saved before anything is written.
 */
function retune(ctx: BaseContext, action: Action, claims: Claim[]): void {
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
function stillOriginal(ctx: BaseContext, setting: Setting, key: string, original: string): boolean {
  try {
    return setting.read(ctx, key) === original;
  } catch {
    return false; // unknown: keep the original, restoring it is harmless
  }
}

/** All online CPUs minus every claim's isolated ones. */
function hostSetFor(ctx: BaseContext, claims: Claim[]): number[] {
  const isolated = new Set(union(claims.map((claim) => claim.isolated)));
  const host = onlineCpus(ctx).filter((cpu) => !isolated.has(cpu));
  if (host.length === 0) throw new VmhookError(`isolating CPUs ${formatCpuList([...isolated])} would leave the host no online CPU`);
  return host;
}

// ---- prepare: checks that change nothing, then one step per kind of setting --------

function planPrepare(ctx: PlanContext<IsolateConfig>): Step<Claim>[] {
  const { config } = ctx;
  const online = onlineCpus(ctx);
  checkCpusExist(ctx, config.hostCpus ?? [], `${config.element} host-cpus`, online);
  checkCpusExist(ctx, config.pinned, "<cputune> (vcpupin, emulatorpin, iothreadpin)", online);
  const isolated = config.hostCpus ? online.filter((cpu) => !config.hostCpus!.includes(cpu)) : config.pinned;
  if (isolated.length === 0) {
    throw new ConfigError(config.element, `host-cpus="${formatCpuList(config.hostCpus!)}" keeps every online CPU (${formatCpuList(online)}) for the host, so nothing is isolated; leave the VM's CPUs out of it`);
  }
  const own = config.pinned.length > 0 ? config.pinned : isolated;
  checkOthers(ctx, isolated, own, online);

  const actions: Action[] = [];
  const cgroups = cgroupMechanism(ctx);
  if (typeof cgroups === "string") skipOrFail(ctx, cgroups);
  else actions.push(cgroups.systemd ? "systemd-allowed-cpus" : "cgroup-cpuset");
  if (config.workqueues) {
    if (ctx.host.exists(WORKQUEUE_MASK)) actions.push("workqueue-mask");
    else skipOrFail(ctx, `workqueues="yes", but this kernel has no ${WORKQUEUE_MASK} (Linux 4.2 or later has it)`);
  }
  if (config.irqs) actions.push("irq-affinity");
  if (config.governor) {
    const problem = governorProblem(ctx, own, config.governor);
    if (problem) skipOrFail(ctx, problem);
    else actions.push("governor");
  }

  return actions.map((action) => {
    const claim: Claim = { action, isolated, own, governor: action === "governor" ? config.governor! : null };
    return { action, record: claim, description: SETTINGS[action].describe(claim) };
  });
}

/** For required="no": a host that cannot do something gets a warning; otherwise the start fails. */
function skipOrFail(ctx: PlanContext<IsolateConfig>, problem: string): void {
  if (ctx.config.required) throw new VmhookError(`CPU isolation: ${problem}; or set required="no" on ${ctx.config.element} to start without it`);
  ctx.log.warn(`isolate: ${problem}; skipped because of required="no"`);
}

function checkCpusExist(ctx: BaseContext, cpus: number[], where: string, online: number[]): void {
  const present = parseKernelCpuList(ctx.host.read(`${CPU_DIR}/present`));
  const missing = cpus.filter((cpu) => !present.includes(cpu));
  if (missing.length > 0) {
    throw new VmhookError(`${where}: CPU ${formatCpuList(missing)} does not exist on this host (present: ${formatCpuList(present)})`);
  }
  const offline = cpus.filter((cpu) => !online.includes(cpu));
  if (offline.length > 0) {
    throw new VmhookError(`${where}: CPU ${formatCpuList(offline)} is offline (online: ${formatCpuList(online)}); bring it online (echo 1 > ${CPU_DIR}/cpuN/online) or use other CPUs`);
  }
}

function checkOthers(ctx: PlanContext<IsolateConfig>, isolated: number[], own: number[], online: number[]): void {
  const others = otherVms(ctx);
  if (!ctx.config.allowOverlap) {
    for (const other of others) {
      const overlap = intersect(own, other.own);
      if (overlap.length > 0) {
        throw new VmhookError(`CPU isolation: CPU ${formatCpuList(overlap)} of this VM is already isolated for running VM ${other.name}; pin the VMs to different CPUs, or set allow-overlap="yes" on ${ctx.config.element}`);
      }
    }
  }
  const taken = new Set(union([isolated, ...others.map((other) => other.isolated)]));
  if (online.every((cpu) => taken.has(cpu))) {
    const running = others.map((other) => `${other.name} ${formatCpuList(other.isolated)}`).join(", ");
    throw new VmhookError(`CPU isolation would leave the host no CPU: this VM isolates ${formatCpuList(isolated)}${running ? `, running VMs ${running}` : ""} (online: ${formatCpuList(online)}); keep at least one CPU for the host`);
  }
}

/** How this host's cgroups are changed, or why they cannot be. */
function cgroupMechanism(ctx: BaseContext): { systemd: boolean } | string {
  const controllers = ctx.host.readTrimmed(`${CGROUP}/cgroup.controllers`);
  if (controllers === undefined) {
    return "it needs the unified cgroup v2 hierarchy, but this host mounts cgroup v1 at /sys/fs/cgroup; boot with systemd.unified_cgroup_hierarchy=1 on the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot)";
  }
  if (!controllers.split(/\s+/).includes("cpuset")) {
    return `the cgroup v2 hierarchy at /sys/fs/cgroup has no cpuset controller (it has: ${controllers || "none"}), probably because a cgroup v1 hierarchy holds it; boot with systemd.unified_cgroup_hierarchy=1 and cgroup_no_v1=all`;
  }
  return { systemd: ctx.host.readTrimmed("/proc/1/comm") === "systemd" };
}

function governorProblem(ctx: BaseContext, cpus: number[], governor: string): string | undefined {
  for (const cpu of cpus) {
    const available = ctx.host.readTrimmed(`${CPU_DIR}/cpu${cpu}/cpufreq/scaling_available_governors`);
    if (available === undefined) return `governor="${governor}", but CPU ${cpu} has no cpufreq (no ${CPU_DIR}/cpu${cpu}/cpufreq); remove governor`;
    if (!available.split(/\s+/).includes(governor)) return `governor="${governor}" is not available for CPU ${cpu} (available: ${available})`;
  }
  return undefined;
}

// ---- CPU sets ------------------------------------------------------------------

function onlineCpus(ctx: BaseContext): number[] {
  return parseKernelCpuList(ctx.host.read(`${CPU_DIR}/online`));
}

/** A CPU list as the kernel ("0-3,8") or older systemd ("0 1 2 3") writes it. */
function parseCpuText(text: string): number[] {
  return parseKernelCpuList(text.trim().replace(/\s+/g, ","));
}

/** The original CPUs (empty means "all") narrowed to the host set; the whole host set if none is left. */
function narrow(original: number[], hostCpus: number[]): number[] {
  const kept = intersect(original, hostCpus);
  return kept.length > 0 ? kept : hostCpus;
}

/** Target.want for CPU-list files and properties. */
const narrowedList = (hostCpus: number[]) => (original: string) => formatCpuList(narrow(parseCpuText(original), hostCpus));
/** Target.want for hex cpumask files. */
const narrowedMask = (hostCpus: number[]) => (original: string) => formatHexMask(narrow(parseHexMask(original), hostCpus));

function union(sets: number[][]): number[] {
  return [...new Set(sets.flat())].sort((a, b) => a - b);
}

function intersect(a: number[], b: number[]): number[] {
  return a.filter((cpu) => b.includes(cpu));
}

/** The kernel's cpumask text: 32-bit hex words, most significant first, comma-separated ("ff,ffffffff"). */
function parseHexMask(text: string): number[] {
  const cpus: number[] = [];
  const words = text.trim().split(",").reverse();
  words.forEach((word, index) => {
    const value = parseInt(word, 16);
    for (let bit = 0; bit < 32; bit++) if ((value >>> bit) & 1) cpus.push(index * 32 + bit);
  });
  return cpus;
}

function formatHexMask(cpus: number[]): string {
  const words: number[] = [];
  for (const cpu of cpus) words[cpu >> 5] = ((words[cpu >> 5] ?? 0) | (1 << (cpu & 31))) >>> 0;
  const hex = Array.from({ length: words.length }, (_, i) => (words[i] ?? 0).toString(16));
  return hex
    .map((word, i) => (i === hex.length - 1 ? word : word.padStart(8, "0")))
    .reverse()
    .join(",");
}

/** `vmhook doctor`: the VM's CPUs are online and the host keeps at least one. */
function check({ host, domain, elements }: CheckContext): Finding[] {
  const online = parseKernelCpuList(host.readTrimmed("/sys/devices/system/cpu/online") ?? "");
  const pinned = [...new Set([...domain.cputune.vcpupins.flat(), ...(domain.cputune.emulatorpin ?? []), ...domain.cputune.iothreadpins.flat()])].sort((a, b) => a - b);
  let hostCpus: number[] | undefined;
  try {
    const value = attributes(elements[0]!)["host-cpus"];
    hostCpus = value !== undefined ? parseCpuset(value, "<vmhook:isolate>", "host-cpus") : undefined;
  } catch {
    return []; // reported by the config check
  }
  const offline = [...new Set([...pinned, ...(hostCpus ?? [])])].filter((cpu) => !online.includes(cpu));
  if (offline.length > 0) {
    return [fail("isolate", `CPU ${formatCpuList(offline)} is pinned or named in host-cpus but not online (online: ${formatCpuList(online)})`, "use online CPUs only (cat /sys/devices/system/cpu/online)")];
  }
  const kept = hostCpus ?? online.filter((cpu) => !pinned.includes(cpu));
  if (kept.length === 0) return [fail("isolate", `no CPU would be left for the host (online: ${formatCpuList(online)})`, "leave at least one CPU out of the VM's pinning, or set host-cpus")];
  return [ok("isolate", `VM CPUs ${formatCpuList(pinned) || "(none pinned)"} are online; the host keeps ${formatCpuList(kept)}`)];
}

/** A claim from a journal: its CPU lists and governor become file contents and unit properties. */
function checkClaim(record: UndoRecord): Claim {
  const cpus = (value: unknown) => Array.isArray(value) && value.every((cpu) => Number.isSafeInteger(cpu) && (cpu as number) >= 0 && (cpu as number) < 8192);
  const { action, isolated, own, governor } = record;
  if (!(action in SETTINGS) || !cpus(isolated) || !cpus(own) || !(governor === null || (typeof governor === "string" && /^[a-z][a-z0-9_]{0,31}$/.test(governor)))) {
    throw new VmhookError(`isolate: the journal holds a claim that is not one vmhook writes: ${JSON.stringify(record).slice(0, 160)}; restore the CPU settings by hand`);
  }
  return record as Claim;
}

/**
 * Each kind of setting: apply recomputes it with every claim in the journals
 * (this one is journaled before apply runs, so it is among them); undo
 * recomputes it without this domain's claims. Idempotent by construction.
 */
const claimAction = (action: Action) =>
  defineAction<Claim, IsolateConfig>({
    check: checkClaim,
    apply: (_claim, ctx) => retune(ctx, action, claimsOf(ctx, action)),
    undo: (_claim, ctx) => retune(ctx, action, claimsOf(ctx, action, ctx.domain.uuid)),
  });

export default definePlugin<IsolateConfig>({
  name: PLUGIN_ID,
  summary: "keeps host processes, workqueues and IRQs off the VM's CPUs while it runs",
  usage: '<vmhook:isolate host-cpus="0-1" governor="performance" workqueues="yes|no" irqs="yes|no" required="yes|no" allow-overlap="yes|no"/>',
  shared: true,
  parse,
  plan: { prepare: planPrepare },
  check,
  actions: Object.fromEntries((Object.keys(SETTINGS) as Action[]).map((action) => [action, claimAction(action)])),
});
