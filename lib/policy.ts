// The host policy: root decides what a domain's metadata may ask for, the
// metadata chooses within it. Domain XML may be written by users who are not
// root (docs/security.md), yet the hook acts as root, so every request that
// reaches beyond the domain's own devices — other PCI devices, units to
// stop, modules to load, CPUs and memory taken from the host, custom plugins
// — must be allowed here. Read from /etc/vmhook/policy.json (root-owned,
// checked like plugins.d); without it the defaults below apply.
import { jsonText, VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { normalModule } from "./kernel-modules.ts";
import { paths } from "./paths.ts";
import { rootsFile } from "./root-alone.ts";
import { PATTERNS } from "./validate.ts";

export interface HostPolicy {
  /** The file it was read from; undefined: no file, the defaults. */
  file?: string;
  vfio: {
    /** PCI devices metadata may hand over besides the domain's own hostdevs (their slots and IOMMU groups). */
    devices: string[];
    /** systemd units metadata may name, besides DEFAULT_UNITS. */
    units: string[];
    /** Kernel modules metadata may unload or load, besides DEFAULT_MODULES ("name" or "prefix*"). */
    modules: string[];
  };
  isolate: {
    /** The fewest online CPUs the host keeps. */
    minHostCpus: number;
    /** The host keeps a CPU on every NUMA node that has online CPUs. */
    everyNumaNode: boolean;
    /** The host may be left with nothing but the CPU taking the boot console's IRQs. */
    allowBootConsoleCpuAlone: boolean;
  };
  hugepages: {
    /** Huge page memory one VM may take; undefined: no cap but the hugepages fit check (MemTotal minus the free-memory floor at most). */
    maxMiBPerVm?: number;
  };
  forward: {
    /** Host ports metadata may forward to a guest. */
    hostPorts: PortSpan[];
  };
  /** Custom plugins metadata may name; undefined: every installed one. */
  plugins?: string[];
}

/** Ports first to last, both included. */
export interface PortSpan {
  first: number;
  last: number;
}

/** The display managers' own unit names (display-manager.service is the alias enabling one makes). */
export const DISPLAY_MANAGERS = ["gdm.service", "gdm3.service", "sddm.service", "lightdm.service", "greetd.service", "ly.service"];

/** Display managers and the GPU helpers that hold the card: what single-GPU mode stops. */
export const DEFAULT_UNITS = ["display-manager.service", ...DISPLAY_MANAGERS, "nvidia-persistenced.service", "nvidia-powerd.service"];

/** The GPU driver stacks, VFIO itself, Looking Glass's kvmfr and vendor-reset. */
const DEFAULT_MODULES = ["nvidia*", "nouveau", "amdgpu", "radeon", "i915", "xe", "vfio*", "kvmfr", "vendor_reset"];

const DEFAULT_POLICY: HostPolicy = {
  vfio: { devices: [], units: [], modules: [] },
  isolate: { minHostCpus: 1, everyNumaNode: true, allowBootConsoleCpuAlone: false },
  hugepages: {},
  // The privileged ports stay the host's.
  forward: { hostPorts: [{ first: 1024, last: 65535 }] },
};

const POLICY_FILE_REASON = "it decides what VMs may take from the host";

/** The policy in force: the file's, checked, or the defaults when there is none (and nobody but root could have removed it). Throws naming the file and the fix. */
export function loadPolicy(host: Host): HostPolicy {
  const file = rootsFile(host, paths.policy, POLICY_FILE_REASON);
  if ("problem" in file) throw new VmhookError(`refusing the host policy: ${file.problem}`);
  if (!file.there) return DEFAULT_POLICY;
  let raw: unknown;
  try {
    raw = JSON.parse(host.read(paths.policy));
  } catch (error) {
    throw new VmhookError(`${paths.policy} is not valid JSON (${(error as Error).message}); fix it (docs/security.md shows the format)`);
  }
  return readPolicy(raw);
}

// ---- the file's format: unknown keys are errors, a typo must not loosen or tighten silently

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value);

function fail(key: string, value: unknown, want: string): never {
  throw new VmhookError(`${paths.policy}: "${key}" is ${jsonText(value)}; ${want}`);
}

function section(raw: Record<string, unknown>, key: string, known: string[]): Record<string, unknown> {
  const value = raw[key] ?? {};
  if (!isObject(value)) fail(key, value, `it must be an object with ${known.map((name) => `"${name}"`).join(", ")}`);
  const unknown = Object.keys(value).find((name) => !known.includes(name));
  if (unknown) fail(`${key}.${unknown}`, value[unknown], `there is no such key; ${key} takes ${known.map((name) => `"${name}"`).join(", ")}`);
  return value;
}

function names(value: unknown, key: string, pattern: RegExp, example: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((item) => typeof item === "string" && pattern.test(item))) fail(key, value, `it must be a list like ${example}`);
  return value as string[];
}

function flag(value: unknown, key: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") fail(key, value, "it must be true or false");
  return value;
}

function whole(value: unknown, key: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) fail(key, value, `it must be a whole number from ${min} to ${max}`);
  return value;
}

const MODULE_ENTRY = new RegExp(`${PATTERNS.moduleName.source.slice(0, -1)}\\*?$`);

/** [22, "8000-8999"]: ports and ranges. */
function portSpans(value: unknown, key: string): PortSpan[] | undefined {
  if (value === undefined) return undefined;
  const want = `it must be a list of ports and ranges from 1 to 65535, like [2222, "8000-8999"]`;
  if (!Array.isArray(value)) fail(key, value, want);
  return value.map((item) => {
    const match = typeof item === "number" || typeof item === "string" ? /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(String(item)) : null;
    const first = Number(match?.[1]);
    const last = match?.[2] === undefined ? first : Number(match[2]);
    if (!match || first < 1 || last > 65535 || last < first) fail(key, value, want);
    return { first, last };
  });
}

export const formatSpan = (span: PortSpan) => (span.first === span.last ? `${span.first}` : `${span.first}-${span.last}`);

function readPolicy(raw: unknown): HostPolicy {
  if (!isObject(raw)) fail("(the whole file)", raw, `it must be a JSON object such as {"vfio": {"units": ["mydm.service"]}}`);
  const top = ["vfio", "isolate", "hugepages", "forward", "plugins"];
  const unknown = Object.keys(raw).find((key) => !top.includes(key));
  if (unknown) fail(unknown, raw[unknown], `there is no such key; the policy has ${top.map((key) => `"${key}"`).join(", ")}`);
  const vfio = section(raw, "vfio", ["devices", "units", "modules"]);
  const isolate = section(raw, "isolate", ["minHostCpus", "everyNumaNode", "allowBootConsoleCpuAlone"]);
  const hugepages = section(raw, "hugepages", ["maxMiBPerVm"]);
  const forward = section(raw, "forward", ["hostPorts"]);
  return {
    file: paths.policy,
    vfio: {
      devices: names(vfio.devices, "vfio.devices", PATTERNS.pciAddress, `["0000:03:00.0"] (lower-case, with the domain)`),
      units: names(vfio.units, "vfio.units", PATTERNS.unitName, `["mydm.service"]`).map(normalUnit),
      modules: names(vfio.modules, "vfio.modules", MODULE_ENTRY, `["snd_hda_intel", "mydriver*"]`).map(normalModule),
    },
    isolate: {
      minHostCpus: whole(isolate.minHostCpus, "isolate.minHostCpus", 1, 8192) ?? DEFAULT_POLICY.isolate.minHostCpus,
      everyNumaNode: flag(isolate.everyNumaNode, "isolate.everyNumaNode", DEFAULT_POLICY.isolate.everyNumaNode),
      allowBootConsoleCpuAlone: flag(isolate.allowBootConsoleCpuAlone, "isolate.allowBootConsoleCpuAlone", DEFAULT_POLICY.isolate.allowBootConsoleCpuAlone),
    },
    hugepages: { maxMiBPerVm: whole(hugepages.maxMiBPerVm, "hugepages.maxMiBPerVm", 0, 2 ** 40) },
    forward: { hostPorts: portSpans(forward.hostPorts, "forward.hostPorts") ?? DEFAULT_POLICY.forward.hostPorts },
    plugins: raw.plugins === undefined ? undefined : names(raw.plugins, "plugins", PATTERNS.pluginName, `["looking-glass"]`),
  };
}

/** systemctl reads "gdm" as "gdm.service": compare the full names. */
export const normalUnit = (unit: string) => (unit.includes(".") ? unit : `${unit}.service`);

export function moduleAllowed(policy: HostPolicy, module: string): boolean {
  const name = normalModule(module);
  return [...DEFAULT_MODULES, ...policy.vfio.modules].some((entry) => (entry.endsWith("*") ? name.startsWith(entry.slice(0, -1)) : name === entry));
}

/** What the refusal says after naming the value: the key that would allow it, and where. */
export const allowHint = (policy: HostPolicy, change: string) => `to allow it, ${change} in ${policy.file ?? paths.policy}`;

/** The policy in words, for `vmhook doctor`. */
export function describePolicy(policy: HostPolicy): string {
  const extra = (items: string[]) => (items.length > 0 ? ` and ${items.join(", ")}` : "");
  return [
    policy.file ? `from ${policy.file}` : `built-in defaults (no ${paths.policy})`,
    `vfio devices: the domain's own PCI hostdevs, their slots and IOMMU groups${extra(policy.vfio.devices)}`,
    `units: display managers and GPU helpers${extra(policy.vfio.units)}`,
    `modules: GPU drivers, vfio*, kvmfr, vendor_reset${extra(policy.vfio.modules)}`,
    `isolate: the host keeps at least ${policy.isolate.minHostCpus} CPU(s)${policy.isolate.everyNumaNode ? ", one on every NUMA node" : ""}${policy.isolate.allowBootConsoleCpuAlone ? "" : ", never only the boot console's CPU"}`,
    `hugepages per VM: ${policy.hugepages.maxMiBPerVm !== undefined ? `at most ${policy.hugepages.maxMiBPerVm} MiB` : "no cap but what the hugepages fit check lets through"}`,
    `forwarded host ports: ${policy.forward.hostPorts.map(formatSpan).join(", ") || "none"}`,
    `custom plugins: ${policy.plugins ? policy.plugins.join(", ") || "none" : "every installed one"}`,
  ].join("; ");
}
