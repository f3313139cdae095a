// isolate: keeps host work (processes, unbound kernel workqueues, IRQs) off
// the CPUs a VM runs on while it runs, and gives everything back after.
//
//   <vmhook:isolate host-cpus="0-1" governor="performance" workqueues="yes" irqs="yes"
//                   required="yes" allow-overlap="no"/>
//
// The host CPU set is shared by every running VM: under the host-wide lock,
// each prepare and each release recomputes it as "all online CPUs minus the
// union of what every isolating VM isolates", reading the other VMs' claims
// from their journals; prepare holds the host policy's minimum (isolate.*)
// against that same union. The values the host had before the first VM
// touched them are kept in the plugin's shared state and written back when
// the last claim goes. Each journal record is such a claim; undoing it means
// recomputing without it, which is idempotent by construction.
import { formatCpuList, parseCpuset, parseKernelCpuList } from "../../lib/cpuset.ts";
import { attributes } from "../../lib/domain.ts";
import { ConfigError, VmhookError } from "../../lib/errors.ts";
import { defineAction, definePlugin, type BaseContext, type CheckContext, type PlanContext, type Step } from "../../lib/plugin.ts";
import { fail, ok, warn, type Finding } from "../../lib/diagnostics/findings.ts";
import { howToGetCgroupV2, isolationExample } from "../../lib/host-advice.ts";
import { readForMessage, type Host } from "../../lib/host.ts";
import { completeJournals, othersRecords, sharedState, type Journal } from "../../lib/journal.ts";
import { allowHint, loadPolicy } from "../../lib/policy.ts";
import { parseYesNo } from "../../lib/validate.ts";
import { ACTIONS, checkClaim, claimsOf, otherVms, type Action, type Claim, type OtherVm } from "./claims.ts";
import { isolatedCpus, nothingIsolated, parse, pinnedCpus, PLUGIN_ID, type IsolateConfig } from "./config.ts";
import { bootIsolatedNote, CPU_DIR, hostUsableCpus, intersect, onlineCpus, parseCpuText, splitCoresWarning, union } from "./cpus.ts";
import { hostShortfall } from "./host-minimum.ts";
import { irqbalanceProblem } from "./irqbalance.ts";
import { checkOriginals, retune } from "./retune.ts";
import { CGROUP, DEFAULT_IRQ_MASK, RUNTIME_DROP_IN, runtimeDropIn, SETTINGS, SYSTEMD_UNITS, WORKQUEUE_MASK } from "./settings.ts";

// ---- prepare: checks that change nothing, then one step per kind of setting --------

function planPrepare(ctx: PlanContext<IsolateConfig>): Step<Claim>[] {
  const { config } = ctx;
  const online = onlineCpus(ctx);
  checkCpusExist(ctx, config.hostCpus ?? [], `${config.element} host-cpus`, online);
  checkCpusExist(ctx, config.pinned, "<cputune> (vcpupin, emulatorpin, iothreadpin) and <vcpu cpuset>", online);
  const isolated = isolatedCpus(config.hostCpus, config.pinned, online);
  if (isolated.length === 0) {
    const { reason, fix } = nothingIsolated(config.hostCpus!, online);
    throw new ConfigError(config.element, `${reason}; ${fix}`);
  }
  const own = config.pinned.length > 0 ? config.pinned : isolated;
  const kept = checkOthers(ctx, isolated, own, online);
  const split = splitCoresWarning(ctx.host, isolated, kept, config.hostCpus !== undefined);
  if (split) ctx.log.warn(`isolate: ${split.reason}; ${split.fix}`);

  const actions: Action[] = [];
  const cgroups = cgroupMechanism(ctx);
  if (typeof cgroups === "string") skipOrFail(ctx, cgroups);
  else if (cgroups.systemd) {
    actions.push("systemd-allowed-cpus");
    warnOverridingDropIns(ctx, isolated, cgroups.shown);
    const slices = otherSlices(ctx.host, isolated, kept, online);
    if (slices) ctx.log.warn(`isolate: ${slices.reason}; ${slices.fix}`);
  } else {
    actions.push("cgroup-cpuset");
    warnUnfenced(ctx, isolated);
  }
  if (config.workqueues) {
    if (ctx.host.exists(WORKQUEUE_MASK)) actions.push("workqueue-mask");
    else skipOrFail(ctx, `workqueues="yes", but this kernel has no ${WORKQUEUE_MASK} (Linux 4.2 or later has it)`);
  }
  if (config.irqs) {
    const problem = irqbalanceProblem(ctx.host, isolated);
    if (problem) skipOrFail(ctx, `${problem.reason}; ${problem.fix}`);
    else actions.push("irq-affinity");
  }
  if (config.governor) {
    const problem = governorProblem(ctx, own, config.governor);
    if (problem) skipOrFail(ctx, problem);
    else actions.push("governor");
  }

  return actions.map((action) => {
    const claim: Claim = { action, isolated, own, governor: action === "governor" ? config.governor! : null, allowOverlap: config.allowOverlap };
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

/** Refuses what the running VMs forbid; returns the CPUs the host keeps with them all. */
function checkOthers(ctx: PlanContext<IsolateConfig>, isolated: number[], own: number[], online: number[]): number[] {
  const others = otherVms(ctx.journals(), ctx.domain.uuid);
  const beside = besideOthers(ctx.host, others, { isolated, own, allowOverlap: ctx.config.allowOverlap, element: ctx.config.element }, online, () => ctx.shared.read(checkOriginals));
  if ("refusal" in beside) throw new VmhookError(`CPU isolation: ${beside.refusal.reason}; ${beside.refusal.fix}`);
  return beside.kept;
}

/**
 * What the running VMs forbid this one (prepare refuses it, doctor fails it):
 * CPUs both isolate unless both allow overlap, no CPU left for the host, or
 * less than the host policy keeps for it (policyWithOthers); else the CPUs
 * the host keeps with them all. `originals`: isolate's shared state.
 */
function besideOthers(host: Host, others: OtherVm[], vm: { isolated: number[]; own: number[]; allowOverlap: boolean; element: string }, online: number[], originals: () => ReturnType<typeof checkOriginals> | undefined): { refusal: { reason: string; fix: string } } | { kept: number[] } {
  // An overlap needs every VM involved to allow it: one VM's author cannot take another's isolated CPUs.
  for (const other of others) {
    const overlap = intersect(vm.own, other.own);
    if (overlap.length === 0) continue;
    if (!vm.allowOverlap) {
      return { refusal: { reason: `CPU ${formatCpuList(overlap)} of this VM is already isolated for running VM ${other.name}`, fix: `pin the VMs to different CPUs, or set allow-overlap="yes" on ${vm.element}` } };
    }
    if (!other.allowOverlap) {
      return { refusal: { reason: `CPU ${formatCpuList(overlap)} of this VM is isolated for running VM ${other.name}, which does not allow overlap`, fix: `pin the VMs to different CPUs, or set allow-overlap="yes" on ${other.name} too (it takes effect when ${other.name} starts next)` } };
    }
  }
  const taken = new Set(union([vm.isolated, ...others.map((other) => other.isolated)]));
  // CPUs isolated at boot are not the host's to keep: it never runs there.
  const usable = hostUsableCpus(host, online);
  const kept = usable.filter((cpu) => !taken.has(cpu));
  if (kept.length === 0) {
    const running = others.map((other) => `${other.name} ${formatCpuList(other.isolated)}`).join(", ");
    return { refusal: { reason: `starting it would leave the host no CPU${bootIsolatedNote(host, online)}: this VM isolates ${formatCpuList(vm.isolated)}${running ? `, running VMs ${running}` : ""} (online: ${formatCpuList(online)})`, fix: "keep at least one CPU for the host, or stop one of those VMs first" } };
  }
  const refusal = policyWithOthers(host, vm.isolated, usable, others, kept, originals);
  return refusal ? { refusal } : { kept };
}

/**
 * The host policy's isolate rules, held against the host as this VM and every
 * running one leave it (`kept`): why they refuse it, or undefined. The policy
 * rule checked this VM alone when its config was authorized; each VM within
 * the policy may still, with the others, leave the host less than it keeps.
 * At prepare this runs under the host lock, with the journals the host set is
 * computed from; the policy file is read only when another VM isolates CPUs.
 */
function policyWithOthers(host: Host, isolated: number[], usable: number[], others: OtherVm[], kept: number[], originals: () => ReturnType<typeof checkOriginals> | undefined): { reason: string; fix: string } | undefined {
  const holding = others.filter((other) => other.isolated.length > 0);
  if (holding.length === 0) return undefined;
  const policy = loadPolicy(host);
  const shortfall = hostShortfall(policy.isolate, host, usable, kept, originals);
  if (!shortfall) return undefined;
  const running = holding.map((other) => `${other.name} (${formatCpuList(other.isolated)})`).join(", ");
  return {
    reason: `this VM (isolating ${formatCpuList(isolated)}) and running VM${holding.length > 1 ? "s" : ""} ${running} together leave the host only CPU ${formatCpuList(kept)}, ${shortfall.reason}`,
    fix: `${shortfall.remedy} or stop ${holding.length > 1 ? "one of those VMs" : holding[0]!.name} first, or ${allowHint(policy, shortfall.change)}`,
  };
}

/**
 * How this host's cgroups are changed, or why they cannot be. Under systemd,
 * `shown` is systemctl show's AllowedCPUs and DropInPaths of SYSTEMD_UNITS,
 * a block each: asked once, for this check and warnOverridingDropIns.
 */
function cgroupMechanism(ctx: BaseContext): { systemd: false } | { systemd: true; shown: string } | string {
  const controllers = ctx.host.readTrimmed(`${CGROUP}/cgroup.controllers`);
  if (controllers === undefined) {
    return `it needs the unified cgroup v2 hierarchy, but this host mounts cgroup v1 at /sys/fs/cgroup; ${howToGetCgroupV2(ctx.host)}`;
  }
  if (!controllers.split(/\s+/).includes("cpuset")) {
    return `the cgroup v2 hierarchy at /sys/fs/cgroup has no cpuset controller (it has: ${controllers || "none"}), probably because a cgroup v1 hierarchy holds it; boot with systemd.unified_cgroup_hierarchy=1 and cgroup_no_v1=all`;
  }
  if (ctx.host.readTrimmed("/proc/1/comm") !== "systemd") return { systemd: false };
  const shown = ctx.run("systemctl", ["show", "-p", "AllowedCPUs", "-p", "DropInPaths", ...SYSTEMD_UNITS]).stdout;
  // systemctl show prints a property asked for by name even when empty, and nothing when the unit has no such property.
  if (!/^AllowedCPUs=/m.test(shown.split(/\n\s*\n/)[0] ?? "")) {
    return `systemd on this host has no AllowedCPUs (systemd 244 or later has it), so it cannot keep its units off CPUs; update systemd`;
  }
  return { systemd: true, shown };
}

/**
 * Without systemd, processes can stay in the root cgroup (those an init
 * started before or outside its groups: gettys, a session begun with startx),
 * and the root group has no cpuset.cpus: they keep every CPU. Said, not
 * refused: vmhook cannot move a process it does not own into a group. Kernel
 * threads (empty cmdline) and an idle PID 1 are left out; what cannot be read
 * only shortens the warning.
 */
function warnUnfenced(ctx: BaseContext, isolated: number[]): void {
  const pids = readForMessage(ctx.host, `${CGROUP}/cgroup.procs`, "").split("\n").filter((pid) => /^\d+$/.test(pid) && pid !== "1");
  const unfenced = pids.filter((pid) => readForMessage(ctx.host, `/proc/${pid}/cmdline`, "") !== "");
  if (unfenced.length === 0) return;
  const named = unfenced.slice(0, 5).map((pid) => `${pid} (${readForMessage(ctx.host, `/proc/${pid}/comm`, "?")})`);
  ctx.log.warn(
    `isolate: ${unfenced.length} process(es) in the root cgroup keep running on CPUs ${formatCpuList(isolated)} too, as cgroup v2 cannot restrict the root group: ${named.join(", ")}${unfenced.length > 5 ? ", …" : ""}; start them from a service or session your init puts in a top-level group (or move them: echo PID > ${CGROUP}/GROUP/cgroup.procs)`,
  );
}

/**
 * systemd puts a unit in any slice its Slice= names: an admin's batch.slice,
 * capsule.slice (systemd 256), kubelet's kubepods.slice. Such a top-level
 * slice is not narrowed: it may hold VMs (a libvirt <partition> such as
 * /production is production.slice), whose pins narrowing it would override,
 * or work another manager pins itself (kubelet's CPU manager). Said, not
 * refused (by prepare in the log, by vmhook doctor whenever it runs, a slice
 * made after the start included), for those with processes that may run on
 * the VM's CPUs; the VMs' slices (machined's machine-*.scope in them) are
 * left out. What cannot be read only shortens the warning.
 */
function otherSlices(host: Host, isolated: number[], kept: number[], online: number[]): { reason: string; fix: string } | undefined {
  const holdsVms = (name: string) => {
    try {
      return name === "machine.slice" || host.list(`${CGROUP}/${name}`).some((child) => child.startsWith("machine-") && child.endsWith(".scope"));
    } catch {
      return true; // unknown: not named
    }
  };
  const unfenced = host
    .list(CGROUP)
    .filter((name) => !SYSTEMD_UNITS.includes(name) && /^populated 1$/m.test(readForMessage(host, `${CGROUP}/${name}/cgroup.events`, "")) && !holdsVms(name))
    // Without a cpuset.cpus.effective of its own (the controller not enabled for the root's children yet), a group runs on every CPU.
    .filter((name) => intersect(isolated, parseCpuText(readForMessage(host, `${CGROUP}/${name}/cpuset.cpus.effective`, formatCpuList(online)))).length > 0);
  if (unfenced.length === 0) return undefined;
  return {
    reason: `processes in ${unfenced.join(", ")} keep running on CPU ${formatCpuList(isolated)} too: vmhook keeps only ${SYSTEMD_UNITS.join(", ")} off them, not other top-level slices, which may hold VMs (a libvirt <partition>) or work another manager pins`,
    fix: `keep such a slice off the VM's CPUs with its own AllowedCPUs, e.g. systemctl set-property ${unfenced[0]} AllowedCPUs=${formatCpuList(kept)}, or run that work in system.slice`,
  };
}

/**
 * vmhook's AllowedCPUs lives in a runtime drop-in; a daemon-reload (package
 * installs run one) applies a unit's drop-ins again in file-name order, one of
 * the same name in /etc/systemd/system.control hiding vmhook's. An admin's
 * AllowedCPUs in a drop-in that comes later (systemctl edit's override.conf,
 * a persistent set-property) then gives the host the VM's CPUs back while it
 * runs. Said, not refused: until such a reload the isolation holds. A
 * drop-in that cannot be read only leaves the warning out.
 */
function warnOverridingDropIns(ctx: BaseContext, isolated: number[], shown: string): void {
  const blocks = shown.split(/\n\s*\n/);
  SYSTEMD_UNITS.forEach((unit, index) => {
    const paths = (/^DropInPaths=(.*)$/m.exec(blocks[index] ?? "")?.[1] ?? "").split(/\s+/).filter((path) => path.startsWith("/"));
    const later = paths
      .filter((path) => path !== runtimeDropIn(unit) && path.slice(path.lastIndexOf("/") + 1) >= RUNTIME_DROP_IN)
      .map((path) => ({ path, cpus: allowedCpusIn(readForMessage(ctx.host, path, "")) }))
      .filter(({ cpus }) => cpus !== undefined)
      .at(-1);
    // Empty is "no limit": every CPU.
    const regained = later && (later.cpus!.length === 0 ? isolated : intersect(isolated, later.cpus!));
    if (!regained || regained.length === 0) return;
    ctx.log.warn(
      `isolate: ${unit}'s AllowedCPUs in ${later.path} takes over from vmhook's at the next systemctl daemon-reload (package installs run one), which gives ${unit} CPU ${formatCpuList(regained)} back while the VM runs; move that AllowedCPUs= line into a drop-in whose name sorts before ${RUNTIME_DROP_IN}, e.g. /etc/systemd/system/${unit}.d/10-allowed-cpus.conf, then systemctl daemon-reload`,
    );
  });
}

/** The CPUs of a unit file's last AllowedCPUs= ([] for an empty one: no limit); undefined when it sets none. */
function allowedCpusIn(text: string): number[] | undefined {
  const value = [...text.matchAll(/^\s*AllowedCPUs\s*=(.*)$/gm)].at(-1)?.[1];
  return value === undefined ? undefined : parseCpuText(value.replace(/,\s+/g, ","));
}

function governorProblem(ctx: BaseContext, cpus: number[], governor: string): string | undefined {
  for (const cpu of cpus) {
    const available = ctx.host.readTrimmed(`${CPU_DIR}/cpu${cpu}/cpufreq/scaling_available_governors`);
    if (available === undefined) return `governor="${governor}", but CPU ${cpu} has no cpufreq (no ${CPU_DIR}/cpu${cpu}/cpufreq); remove governor`;
    if (!available.split(/\s+/).includes(governor)) return `governor="${governor}" is not available for CPU ${cpu} (available: ${available})`;
  }
  return undefined;
}


/** `vmhook doctor`: the VM's CPUs are online and the host keeps at least one. */
function check({ host, domain, elements }: CheckContext): Finding[] {
  const online = parseKernelCpuList(host.readTrimmed("/sys/devices/system/cpu/online") ?? "");
  const pinned = pinnedCpus(domain);
  let hostCpus: number[] | undefined;
  let irqs: boolean;
  let required: boolean;
  let allowOverlap: boolean;
  try {
    const attrs = attributes(elements[0]!);
    hostCpus = attrs["host-cpus"] !== undefined ? parseCpuset(attrs["host-cpus"], "<vmhook:isolate>", "host-cpus") : undefined;
    irqs = parseYesNo(attrs.irqs, "<vmhook:isolate>", "irqs", false);
    required = parseYesNo(attrs.required, "<vmhook:isolate>", "required", true);
    allowOverlap = parseYesNo(attrs["allow-overlap"], "<vmhook:isolate>", "allow-overlap", false);
  } catch {
    return []; // reported by the config check
  }
  const offline = [...new Set([...pinned, ...(hostCpus ?? [])])].filter((cpu) => !online.includes(cpu));
  if (offline.length > 0) {
    return [fail("isolate", `CPU ${formatCpuList(offline)} is pinned or named in host-cpus but not online (online: ${formatCpuList(online)})`, "use online CPUs only (cat /sys/devices/system/cpu/online)")];
  }
  if (!hostCpus && pinned.length === 0) return [fail("isolate", "the domain pins no CPUs and sets no host-cpus: vmhook cannot tell which CPUs are the VM's", isolationExample(online))];
  const isolated = isolatedCpus(hostCpus, pinned, online);
  if (hostCpus && isolated.length === 0) {
    const { reason, fix } = nothingIsolated(hostCpus, online);
    return [fail("isolate", reason, fix)];
  }
  const kept = hostUsableCpus(host, online).filter((cpu) => !isolated.includes(cpu));
  const atBoot = bootIsolatedNote(host, online);
  if (kept.length === 0) return [fail("isolate", `no CPU would be left for the host (online: ${formatCpuList(online)})${atBoot}`, "leave at least one CPU out of the VM's pinning, or set host-cpus")];
  // As prepare judges it beside the VMs running now (their journals); the refusal says what to change.
  const journals = completeJournals(host);
  const others = otherVms(journals, domain.uuid);
  const own = pinned.length > 0 ? pinned : isolated;
  const beside = besideOthers(host, others, { isolated, own, allowOverlap, element: "<vmhook:isolate>" }, online, () => sharedState.read(host, PLUGIN_ID, checkOriginals));
  if ("refusal" in beside) return [fail("isolate", `${beside.refusal.reason}: prepare refuses it while they run`, beside.refusal.fix)];
  const findings = [ok("isolate", `VM CPUs ${formatCpuList(pinned) || "(none pinned)"} are online; the host keeps ${formatCpuList(kept)}${atBoot}`)];
  const split = splitCoresWarning(host, isolated, kept, hostCpus !== undefined);
  if (split) findings.push(warn("isolate SMT", split.reason, split.fix));
  const irqbalance = irqs ? irqbalanceProblem(host, isolated) : undefined;
  // As prepare: refused, or with required="no" started without moving IRQs.
  if (irqbalance) findings.push((required ? fail : warn)("isolate irqbalance", irqbalance.reason, irqbalance.fix));
  const slices = host.readTrimmed("/proc/1/comm") === "systemd" ? otherSlices(host, isolated, kept, online) : undefined;
  if (slices) findings.push(warn("isolate slices", slices.reason, slices.fix));
  const back = irqsBack(host, journals, domain.uuid, others, online);
  if (back) findings.push(fail("isolate IRQs", back.reason, back.fix));
  return findings;
}

/**
 * While the VM runs with irqs="yes": the IRQs vmhook moved off its CPUs (those
 * it keeps the originals of) that are back on them. prepare refuses only an
 * irqbalance that runs then; one started (or restarted) since, its --oneshot,
 * or a hand's write can move them back. The IRQs the kernel would not move
 * keep no original, and are not named. `others`: the other running VMs.
 */
function irqsBack(host: Host, journals: Journal[], uuid: string, others: OtherVm[], online: number[]): { reason: string; fix: string } | undefined {
  // No journal left out (""): this VM's own record is the one wanted.
  const held = othersRecords(journals, "", PLUGIN_ID, checkClaim).find(({ domain, record }) => domain.uuid === uuid && record.action === "irq-affinity");
  if (!held) return undefined;
  const { isolated } = held.record;
  // Where the IRQs go: the host's CPUs beside the VMs as they run, not as the definition (edited since, for the next start) would isolate.
  const running = new Set(union([isolated, ...others.map((other) => other.isolated)]));
  const kept = hostUsableCpus(host, online).filter((cpu) => !running.has(cpu));
  const moved = Object.keys(sharedState.read(host, PLUGIN_ID, checkOriginals)?.["irq-affinity"] ?? {}).filter((key) => key !== DEFAULT_IRQ_MASK);
  // A freed IRQ reads as no CPU.
  const back = moved.map((key) => ({ key, on: intersect(isolated, parseCpuText(readForMessage(host, key, ""))) })).filter(({ on }) => on.length > 0);
  if (back.length === 0) return undefined;
  const irqs = back.map(({ key }) => key.split("/")[3]!);
  const on = union(back.map((irq) => irq.on));
  const [it, is] = back.length === 1 ? ["it", "is"] : ["them", "are"];
  const irqbalance = irqbalanceProblem(host, isolated);
  const cause = irqbalance
    ? `irqbalance (pid ${irqbalance.pid}) runs now and does not ban CPU ${formatCpuList(irqbalance.exposed)}: its rebalances put IRQs there`
    : `something moved ${it} back since (irqbalance --oneshot, or a write to ${back.length === 1 ? "its" : "their"} smp_affinity_list)`;
  return {
    reason: `IRQ ${irqs.join(", ")} ${is} on CPU ${formatCpuList(on)} again, which running VM ${held.domain.name} isolates: its irqs="yes" moved ${it} off at the start, and ${cause}`,
    fix: `${irqbalance ? "ban those CPUs from irqbalance as the isolate irqbalance finding says, or stop it; then " : ""}move ${it} off: ${back.map(({ key }) => `echo ${formatCpuList(kept)} > ${key}`).join("; ")}`,
  };
}

/**
 * Each kind of setting: apply recomputes it with every claim in the journals
 * (this one is journaled before apply runs, so it is among them); undo
 * recomputes it without this domain's claims. Idempotent by construction.
 */
const claimAction = (action: Action) =>
  defineAction<Claim, IsolateConfig>({
    check: checkClaim,
    apply: (_claim, ctx) => retune(ctx, action, claimsOf(ctx, action), () => ctx.nothingToUndo()),
    undo: (_claim, ctx) => retune(ctx, action, claimsOf(ctx, action, ctx.domain.uuid)),
  });

/**
 * vmhook recover: each kind of setting whose originals are still kept while no
 * journal claims it, last applied first; its undo restores them as a claim's
 * would, with no claim left.
 */
function unheldShared(ctx: BaseContext): Step<Claim>[] {
  const state = ctx.shared.read(checkOriginals) ?? {};
  return [...ACTIONS]
    .reverse()
    .filter((action) => state[action] && claimsOf(ctx, action).length === 0)
    .map((action) => {
      const keys = Object.keys(state[action]!);
      const named = keys.length > 3 ? `${keys.slice(0, 3).join(", ")}, …` : keys.join(", ");
      return { action, record: { action, isolated: [], own: [], governor: null, allowOverlap: false }, description: `put back the ${action} values saved before the first VM (${keys.length}: ${named})` };
    });
}

export default definePlugin<IsolateConfig>({
  name: PLUGIN_ID,
  summary: "keeps host processes, workqueues and IRQs off the VM's CPUs while it runs",
  usage: '<vmhook:isolate host-cpus="0-1" governor="performance" workqueues="yes|no" irqs="yes|no" required="yes|no" allow-overlap="yes|no"/>',
  shared: true,
  parse,
  plan: { prepare: planPrepare },
  check,
  unheldShared,
  actions: Object.fromEntries(ACTIONS.map((action) => [action, claimAction(action)])),
});
