// What each built-in plugin's config may ask for under the host policy
// (lib/policy.ts), held against it by the authorization pass (lib/authorize.ts)
// right after parsing. Plugins without a rule ask for nothing the policy limits.
import type { PolicyRequest, PolicyRule } from "../lib/authorize.ts";
import { storageInUse } from "../lib/blockdev.ts";
import { formatCpuList, parseKernelCpuList } from "../lib/cpuset.ts";
import type { Domain } from "../lib/domain.ts";
import { ConfigError, describeError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import { networkInUse, type NetworkUse } from "../lib/netdev.ts";
import { sharedState } from "../lib/journal.ts";
import { isVfioDriverModule, modulesAlias } from "../lib/kernel-modules.ts";
import { iommuGroupMembers, pciIommuGroup, slotFunctions } from "../lib/pci.ts";
import { allowHint, DEFAULT_UNITS, formatSpan, moduleAllowed, normalUnit, type PortSpan } from "../lib/policy.ts";
import type { ForwardConfig } from "./forward/config.ts";
import type { HugepagesConfig } from "./hugepages.ts";
import { isolatedCpus, PINS, PLUGIN_ID as ISOLATE_ID, type IsolateConfig } from "./isolate/config.ts";
import { bootIsolatedNote, hostUsableCpus } from "./isolate/cpus.ts";
import { hostShortfall } from "./isolate/host-minimum.ts";
import { checkOriginals } from "./isolate/retune.ts";
import type { VfioConfig } from "./vfio/config.ts";

export const policyRules: Readonly<Record<string, PolicyRule>> = {
  vfio: authorizeVfio,
  isolate: authorizeIsolate,
  hugepages: authorizeHugepages,
  forward: authorizeForward,
};

// ---- vfio: devices, units, modules

/** The domain's own PCI hostdevs, the other functions of their slots and the members of their IOMMU groups. */
function ownDevices(host: Host, domain: Domain): Set<string> {
  const own = new Set<string>();
  for (const hostdev of domain.hostdevs) {
    if (hostdev.type !== "pci") continue;
    own.add(hostdev.address);
    for (const sibling of slotFunctions(host, hostdev.address)) own.add(sibling);
    const group = pciIommuGroup(host, hostdev.address);
    if (group !== undefined) for (const member of iommuGroupMembers(host, group)) own.add(member);
  }
  return own;
}

async function authorizeVfio(config: VfioConfig, { policy, domain, host, settings, element }: PolicyRequest): Promise<void> {
  // Loaded like the plugin itself: only when a domain names it.
  const { handedOverAddresses } = await import("./vfio/survey.ts");
  const { readVfioSettings } = await import("./vfio/config.ts");
  const own = ownDevices(host, domain);
  const foreign = config.devices.find((address) => !own.has(address) && !policy.vfio.devices.includes(address));
  if (foreign) {
    throw new ConfigError(element, `devices: ${foreign} is not one of the domain's PCI <hostdev>s, a function of their slots or in their IOMMU groups; add it to the domain as a <hostdev>, or ${allowHint(policy, `add "${foreign}" to "vfio.devices"`)}`);
  }

  // Never the host's own storage or its only way out, whatever the policy says.
  const addresses = handedOverAddresses(host, config);
  for (const address of addresses) {
    let uses: string[];
    try {
      uses = storageInUse(host, address);
    } catch (error) {
      throw new ConfigError(element, `refusing to hand over ${address}: ${describeError(error)}`);
    }
    if (uses.length > 0) {
      throw new ConfigError(element, `${address} carries storage the host uses (${uses.join("; ")}); vmhook never hands such a device to a VM, whatever the policy says: unmount it (and swapoff, vgchange -an, mdadm --stop, zpool export) first, or pass the disk instead of the controller`);
    }
  }

  let routes: NetworkUse[];
  try {
    routes = networkInUse(host, addresses);
  } catch (error) {
    throw new ConfigError(element, `refusing to hand over ${addresses.join(", ")}: ${describeError(error)}`);
  }
  if (routes.length > 0) {
    const { address, iface } = routes[0]!;
    throw new ConfigError(
      element,
      `${address} carries the host's network (${routes.map(({ use }) => use).join("; ")}): unbinding its driver takes the interface away, and the host's network with it (the ssh session the VM was started from too); vmhook never hands such a device to a VM, whatever the policy says: give the host a default route through an interface that stays first, or stop routing through ${iface} (take it out of its bridge or bond; nmcli device set ${iface} managed no, or ip link set ${iface} down)`,
    );
  }

  const vfioSettings = readVfioSettings(settings.plugins.vfio ?? {});
  // Root's own settings (vmhook.json) name units too: those are root's choice already.
  const units = new Set([...DEFAULT_UNITS, ...policy.vfio.units, ...vfioSettings.displayManagerUnits, ...vfioSettings.helperServices].map(normalUnit));
  const unit = (config.displayManagerUnits ?? []).find((name) => !units.has(normalUnit(name)));
  if (unit) {
    throw new ConfigError(element, `display-manager: ${unit} is not a display manager or GPU helper the host policy lets single-GPU mode stop; ${allowHint(policy, `add "${normalUnit(unit)}" to "vfio.units"`)}`);
  }

  const lists = { "unload-modules": config.unloadModules === "auto" ? [] : config.unloadModules, "load-modules": config.loadModules };
  for (const [attribute, modules] of Object.entries(lists)) {
    const module = modules.find((name) => !moduleAllowed(policy, name));
    if (module) {
      throw new ConfigError(element, `${attribute}: ${module} is not a GPU, VFIO or passthrough helper module the host policy allows; ${allowHint(policy, `add "${module}" to "vfio.modules"`)}`);
    }
  }

  // prepare loads the module a handed-over device's <driver model> names and binds the device to it: a VFIO driver, or one the policy allows.
  let aliases: string | undefined;
  for (const address of addresses) {
    const model = config.driverModels[address];
    if (model === undefined || moduleAllowed(policy, model) || isVfioDriverModule((aliases ??= modulesAlias(host)), model)) continue;
    throw new ConfigError(
      element,
      `${address}'s <hostdev><driver model='${model}'>: ${model} is not a VFIO driver (no "alias vfio_pci:" line of the running kernel's modules.alias names it), and prepare would load it and bind the device to it; name vfio-pci or a variant of it, or ${allowHint(policy, `add "${model}" to "vfio.modules"`)}`,
    );
  }
}

// ---- isolate: the host keeps enough CPUs (this domain alone; prepare counts the running VMs too)

const CPU_ONLINE = "/sys/devices/system/cpu/online";

function authorizeIsolate(config: IsolateConfig, { policy, host, element }: PolicyRequest): void {
  const onlineText = host.readTrimmed(CPU_ONLINE);
  if (!onlineText) throw new ConfigError(element, `cannot read ${CPU_ONLINE}, so vmhook cannot tell what the host keeps; refusing to isolate`);
  const online = parseKernelCpuList(onlineText);
  // A CPU that is not online gets the plugin's own, more precise refusal at prepare.
  if ([...(config.hostCpus ?? []), ...config.pinned].some((cpu) => !online.includes(cpu))) return;
  // CPUs isolated at boot (isolcpus=) are not the host's to keep: it never runs there.
  const usable = hostUsableCpus(host, online);
  const isolated = isolatedCpus(config.hostCpus, config.pinned, online);
  const kept = usable.filter((cpu) => !isolated.includes(cpu));
  // While another VM runs, its irqs="yes" may have moved the console's IRQs: judged where the host had them.
  const shortfall = hostShortfall(policy.isolate, host, usable, kept, () => sharedState.read(host, ISOLATE_ID, checkOriginals));
  if (!shortfall) return;
  const what = config.hostCpus ? `host-cpus="${formatCpuList(config.hostCpus)}"` : `pinning CPUs ${formatCpuList(config.pinned)} (${PINS})`;
  const keeps = `leaves the host ${kept.length > 0 ? `only CPU ${formatCpuList(kept)}` : "no online CPU"}${bootIsolatedNote(host, online)}`;
  throw new ConfigError(element, `${what} ${keeps}, ${shortfall.reason}; ${shortfall.remedy}, or ${allowHint(policy, shortfall.change)}`);
}

// ---- hugepages: a cap per VM

const MiB = 1024;

// Without a cap in the policy the hugepages plugin's fit check is the limit:
// it refuses, marked in `vmhook plan`, what MemTotal minus the free-memory floor
// can never give (plugins/hugepages/fit.ts).
function authorizeHugepages(config: HugepagesConfig, { policy, element }: PolicyRequest): void {
  const capMiB = policy.hugepages.maxMiBPerVm;
  if (capMiB === undefined) return;
  const wantedMiB = Math.ceil(config.pools.reduce((sum, pool) => sum + pool.pages * pool.sizeKiB, 0) / MiB);
  if (wantedMiB > capMiB) {
    throw new ConfigError(element, `the VM asks for ${wantedMiB} MiB of huge pages, more than the host policy's cap, ${capMiB} MiB; give the VM less memory, or ${allowHint(policy, `raise "hugepages.maxMiBPerVm"`)}`);
  }
}

// ---- forward: which host ports a VM may claim

function authorizeForward(config: ForwardConfig, { policy, settings, element }: PolicyRequest): void {
  // The list moved from vmhook.json to the policy: a value left there must not be silently ignored.
  if (settings.plugins.forward?.allowedHostPorts !== undefined) {
    throw new ConfigError(element, `the host settings still have "plugins": {"forward": {"allowedHostPorts": …}}; the allowed host ports are now "forward.hostPorts" in ${policy.file ?? "/etc/vmhook/policy.json"}: move the list there`);
  }
  const allowed = policy.forward.hostPorts;
  for (const spec of config.forwards) {
    for (const port of spec.ports) {
      const gap = firstUncovered(port.host, allowed);
      if (!gap) continue;
      const missing = formatSpan(gap);
      throw new ConfigError(spec.element, `ports: host port ${port.protocol} ${formatSpan(port.host)} is not one the host policy lets VMs claim (allowed: ${allowed.map(formatSpan).join(", ") || "none"}); use an allowed port, or ${allowHint(policy, `add ${gap.first === gap.last ? missing : `"${missing}"`} to "forward.hostPorts"`)}`);
    }
  }
}

/** The first run of ports in `wanted` that no span of `allowed` holds; undefined when the spans together cover it (each alone need not). */
function firstUncovered(wanted: PortSpan, allowed: PortSpan[]): PortSpan | undefined {
  let next = wanted.first;
  // Sorted by first port, each span that starts at or before `next` moves it past its end.
  for (const span of [...allowed].sort((a, b) => a.first - b.first)) {
    if (span.first > next) break;
    next = Math.max(next, span.last + 1);
    if (next > wanted.last) return undefined;
  }
  const after = allowed.filter((span) => span.first > next).map((span) => span.first);
  return { first: next, last: Math.min(wanted.last, ...after.map((first) => first - 1)) };
}
