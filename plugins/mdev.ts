// Mediated devices for the domain's <hostdev type='mdev'>s (Intel GVT-g,
// NVIDIA vGPU up to release 16, the kernel's mtty sample...), created at
// prepare and removed at release; and NVIDIA vGPU 17+ on SR-IOV virtual
// functions, where there is no mdev: a vGPU type id is written to the VF.
//
//   <vmhook:mdev parent="0000:00:02.0" type="i915-GVTg_V5_4" uuid="..."/>   (default export)
//   <vmhook:vgpu vf="0000:41:00.4" type="NVIDIA L40S-12Q"/>                 (export vgpu)
//
// Two elements because they are two kernel interfaces: an mdev is a new
// device with a UUID that the domain's mdev <hostdev> names; a VF vGPU is a
// type set on a PCI function that the domain's PCI <hostdev> names.
// Sysfs layouts: Documentation/ABI/testing/sysfs-bus-vfio-mdev, and NVIDIA's
// vGPU 17 "vendor-specific VFIO framework" (nvidia/creatable_vgpu_types,
// nvidia/current_vgpu_type under the VF).
import type { Element } from "@xmldom/xmldom";
import { readAttributes } from "../lib/element.ts";
import { describeElement, type Domain } from "../lib/domain.ts";
import { ConfigError, describeError, VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import { pciPath } from "../lib/pci.ts";
import { definePlugin, type BaseContext, type PluginContext } from "../lib/plugin.ts";
import { checkPattern, parsePciAddress, parseUuid, PATTERNS } from "../lib/validate.ts";

// ---- mdev: sysfs -------------------------------------------------------------

/** One entry per device that can parent mdevs (a link named after the device). */
const MDEV_BUS = "/sys/class/mdev_bus";
/** One link per existing mdev, named by its UUID, into its parent's directory. */
const MDEV_DEVICES = "/sys/bus/mdev/devices";

const typePath = (parent: string, type: string, file = "") => `${MDEV_BUS}/${parent}/mdev_supported_types/${type}${file && `/${file}`}`;
const mdevPath = (uuid: string, file = "") => `${MDEV_DEVICES}/${uuid}${file && `/${file}`}`;

/** Device names of mdev parents that are not PCI functions: mtty, mdpy, matrix (vfio-ap), 0.0.0313 (vfio-ccw). */
const PARENT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const LOOKS_LIKE_PCI = /^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i;

interface MdevType {
  id: string;
  name?: string;
  description?: string;
  available: number;
}

function offeredTypes(host: Host, parent: string): MdevType[] {
  return host.list(`${MDEV_BUS}/${parent}/mdev_supported_types`).map((id) => ({
    id,
    name: host.readTrimmed(typePath(parent, id, "name")),
    description: host.readTrimmed(typePath(parent, id, "description")),
    available: Number(host.readTrimmed(typePath(parent, id, "available_instances")) ?? 0),
  }));
}

/** "i915-GVTg_V5_4: GVTg_V5_4, low_gm_size: 128MB, ..., resolution: 1920x1200; 2 available" */
function describeType(type: MdevType): string {
  const about = [type.name, type.description?.replace(/\s*\n\s*/g, ", ")].filter(Boolean).join(", ");
  return `${type.id}: ${about ? `${about}; ` : ""}${type.available} available`;
}

/** An existing mdev's parent (the directory it lives in) and type (its mdev_type link), or undefined. */
function existingMdev(host: Host, uuid: string): { parent: string; type: string } | undefined {
  const target = host.readlink(mdevPath(uuid));
  if (!target) return undefined;
  return { parent: target.split("/").at(-2) ?? "?", type: host.readlink(mdevPath(uuid, "mdev_type"))?.split("/").pop() ?? "?" };
}

/** The mdevs on a parent, each with the domain vmhook made it for, if any: who holds the instances. */
function mdevsOn(ctx: BaseContext, parent: string): string[] {
  const creators = new Map<string, string>();
  for (const journal of ctx.journals()) {
    for (const entry of journal.entries) {
      if (entry.plugin === "mdev" && entry.undo.action === "remove-mdev") creators.set(String(entry.undo.uuid), journal.domain.name);
    }
  }
  return ctx.host.list(MDEV_DEVICES).flatMap((uuid) => {
    const mdev = existingMdev(ctx.host, uuid);
    if (mdev?.parent !== parent) return [];
    const creator = creators.get(uuid);
    return [`${uuid} (${mdev.type}, ${creator ? `created by vmhook for domain ${creator}` : "not created by vmhook: mdevctl or by hand"})`];
  });
}

// ---- mdev: config --------------------------------------------------------------

export interface MdevDevice {
  /** The element as written, for messages. */
  element: string;
  uuid: string;
  type: string;
  /** Undefined: the one device under /sys/class/mdev_bus that offers the type. */
  parent?: string;
}

function parseParent(value: string, element: string): string {
  if (LOOKS_LIKE_PCI.test(value.trim())) return parsePciAddress(value, element, "parent");
  if (PARENT_NAME.test(value)) return value;
  throw new ConfigError(element, `parent="${value}" is neither a PCI address (like 0000:00:02.0) nor a device name (like mtty); see ls ${MDEV_BUS}`);
}

/** The mdev's UUID: the uuid attribute (validated), which must name one of the domain's mdev hostdevs, or the only one. */
function parseMdevUuid(uuid: string | undefined, element: string, domain: Domain): string {
  const hostdevs = domain.hostdevs.flatMap((hostdev) => (hostdev.type === "mdev" ? [hostdev.uuid] : []));
  const example = `<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='UUID'/></source></hostdev>`;
  if (uuid === undefined) {
    if (hostdevs.length === 1) return hostdevs[0]!;
    if (hostdevs.length === 0) throw new ConfigError(element, `has no uuid and the domain has no mdev <hostdev>; add ${example} to <devices> (uuidgen makes a UUID)`);
    throw new ConfigError(element, `has no uuid, but the domain has ${hostdevs.length} mdev <hostdev>s (${hostdevs.join(", ")}); add uuid="..." naming the one this element creates`);
  }
  if (!hostdevs.includes(uuid)) {
    throw new ConfigError(element, `uuid="${uuid}" is not the UUID of any mdev <hostdev> of this domain${hostdevs.length ? ` (they are ${hostdevs.join(", ")})` : ""}; add ${example.replace("UUID", uuid)} or fix the uuid`);
  }
  return uuid;
}

/** The element's attributes, each checked before any use in a path; `vmhook doctor` reads elements with this too. */
export function readMdevElement(element: Element): Omit<MdevDevice, "uuid"> & { uuid?: string } {
  const where = describeElement(element);
  const attrs = readAttributes(element, ["type", "parent", "uuid"]);
  if (attrs.type === undefined) throw new ConfigError(where, `has no type attribute; name an mdev type, e.g. type="i915-GVTg_V5_4" (ls ${MDEV_BUS}/*/mdev_supported_types)`);
  return {
    element: where,
    type: checkPattern(attrs.type, PATTERNS.mdevType, where, "type", "mdev type"),
    parent: attrs.parent === undefined ? undefined : parseParent(attrs.parent, where),
    uuid: attrs.uuid === undefined ? undefined : parseUuid(attrs.uuid, where, "uuid"),
  };
}

function parseMdevElement(element: Element, domain: Domain): MdevDevice {
  const device = readMdevElement(element);
  return { ...device, uuid: parseMdevUuid(device.uuid, device.element, domain) };
}

// ---- mdev: prepare ---------------------------------------------------------------

interface MdevPlan extends MdevDevice {
  parent: string;
  offered: MdevType;
  /** False: the mdev exists already with this type (mdevctl, by hand): used, and kept at release. */
  create: boolean;
}

/** The parent of a device whose element names none: the only one offering its type. */
function findParent(host: Host, device: MdevDevice): string {
  const parents = host.list(MDEV_BUS);
  const offering = parents.filter((parent) => host.exists(typePath(parent, device.type)));
  if (offering.length === 1) return offering[0]!;
  if (offering.length > 1) throw new ConfigError(device.element, `type ${device.type} is offered by ${offering.join(" and ")}; add parent="..." naming one`);
  if (parents.length === 0) throw noParents(device.element);
  throw new ConfigError(device.element, `no device on this host offers mdev type ${device.type}; the types offered are below`, parents.flatMap((parent) => offeredTypes(host, parent).map((type) => `${parent}: ${describeType(type)}`)));
}

function noParents(element: string): ConfigError {
  return new ConfigError(element, `this host has no mdev parent device (${MDEV_BUS} is empty); for Intel GVT-g boot with i915.enable_gvt=1 and load kvmgt (see docs/mdev.md), for NVIDIA vGPU install its host driver`);
}

/** Everything checked before anything changes: parent, type, an existing mdev with this UUID. */
function planMdev(ctx: PluginContext<MdevDevice[]>, device: MdevDevice): MdevPlan {
  const { host } = ctx;
  const parent = device.parent ?? findParent(host, device);
  if (!host.exists(`${MDEV_BUS}/${parent}`)) {
    const parents = host.list(MDEV_BUS);
    if (parents.length === 0) throw noParents(device.element);
    throw new ConfigError(device.element, `parent ${parent} is not an mdev parent on this host (not in ${MDEV_BUS}); the parents are ${parents.join(", ")}`);
  }
  const types = offeredTypes(host, parent);
  const offered = types.find((type) => type.id === device.type);
  if (!offered) {
    throw new ConfigError(device.element, `type ${device.type} is not offered by ${parent}; choose one of ${types.map((type) => type.id).join(", ") || "(none)"}`, types.map(describeType));
  }
  const existing = existingMdev(host, device.uuid);
  if (existing && (existing.type !== device.type || existing.parent !== parent)) {
    throw new ConfigError(
      device.element,
      `mdev ${device.uuid} already exists as ${existing.type} on ${existing.parent}; remove it (mdevctl stop --uuid ${device.uuid}, or echo 1 > ${mdevPath(device.uuid, "remove")}) or give this domain another UUID`,
    );
  }
  if (existing) ctx.log.info(`mdev ${device.uuid} (${device.type} on ${parent}) exists already: using it, and keeping it at release`);
  return { ...device, parent, offered, create: !existing };
}

/** Enough free instances for every mdev of each parent and type. The kernel may still refuse (types share resources): then the step fails and rolls back. */
function checkInstances(ctx: PluginContext<MdevDevice[]>, plans: MdevPlan[]): void {
  const toCreate = plans.filter((plan) => plan.create);
  for (const plan of toCreate) {
    const needed = toCreate.filter((other) => other.parent === plan.parent && other.type === plan.type).length;
    if (needed <= plan.offered.available) continue;
    const held = mdevsOn(ctx, plan.parent);
    throw new ConfigError(
      plan.element,
      `${needed > 1 ? `needs ${needed} ${plan.type} instances` : `no ${plan.type} instance is left`} on ${plan.parent} (available_instances is ${plan.offered.available}); ` +
        `stop a VM that uses one, remove an unused one (echo 1 > ${MDEV_DEVICES}/UUID/remove) or choose a smaller type`,
      held.length > 0 ? [`mdevs on ${plan.parent}:`, ...held.map((line) => `  ${line}`)] : [`${plan.parent} has no mdev now; its types' resources are in use elsewhere`],
    );
  }
}

async function createMdev(ctx: PluginContext<MdevDevice[]>, plan: MdevPlan): Promise<void> {
  const { host } = ctx;
  await ctx.step(`create mdev ${plan.uuid} (${plan.type} on ${plan.parent})`, { action: "remove-mdev", uuid: plan.uuid, parent: plan.parent, type: plan.type }, (handle) => {
    try {
      host.write(typePath(plan.parent, plan.type, "create"), plan.uuid);
    } catch (error) {
      // The kernel created nothing; an mdev that exists now is someone else's.
      handle.update({ action: "create-failed", uuid: plan.uuid });
      throw new VmhookError(`could not create mdev ${plan.uuid} (${plan.type} on ${plan.parent}): ${describeError(error)}; the kernel log (dmesg) may say why`);
    }
    ctx.waitFor(`mdev ${plan.uuid} appears in ${MDEV_DEVICES} as ${plan.type}`, () => existingMdev(host, plan.uuid)?.type === plan.type);
  });
}

// ---- mdev: the plugin ---------------------------------------------------------

export default definePlugin<MdevDevice[]>({
  name: "mdev",
  summary: "creates the domain's mediated devices (GVT-g, NVIDIA vGPU, ...) at prepare, removes them at release",
  usage: '<vmhook:mdev type="TYPE" parent="PCI-ADDRESS|NAME" uuid="UUID"/>  (one per mdev <hostdev>)',

  parse(elements, domain) {
    const devices = elements.map((element) => parseMdevElement(element, domain));
    devices.forEach((device, index) => {
      const first = devices.findIndex((other) => other.uuid === device.uuid);
      if (first !== index) throw new ConfigError(device.element, `configures mdev ${device.uuid} again (first in ${devices[first]!.element}); each mdev needs its own <hostdev> and UUID`);
    });
    return devices;
  },

  async prepare(ctx) {
    const plans = ctx.config.map((device) => planMdev(ctx, device));
    checkInstances(ctx, plans);
    for (const plan of plans) if (plan.create) await createMdev(ctx, plan);
  },

  undo(record, ctx) {
    if (record.action === "create-failed") return;
    if (record.action !== "remove-mdev") throw new VmhookError(`mdev: unknown undo action "${record.action}" in the journal`);
    const uuid = String(record.uuid);
    if (!PATTERNS.uuid.test(uuid)) throw new VmhookError(`mdev: the journal names "${uuid}", not a UUID; inspect it`);
    if (!ctx.host.exists(mdevPath(uuid))) return;
    try {
      ctx.host.write(mdevPath(uuid, "remove"), "1");
    } catch (error) {
      throw new VmhookError(`could not remove mdev ${uuid}: ${describeError(error)}; if a process still uses it (lsof ${mdevPath(uuid)}), stop it, then run vmhook recover`);
    }
    ctx.waitFor(`mdev ${uuid} is gone from ${MDEV_DEVICES}`, () => !ctx.host.exists(mdevPath(uuid)));
  },
});

// ---- vgpu: NVIDIA vGPU 17+ on SR-IOV virtual functions --------------------------

const vgpuFile = (vf: string, file: "creatable_vgpu_types" | "current_vgpu_type") => pciPath(vf, `nvidia/${file}`);
/** A vGPU type as written in config: its numeric id or its name (NVIDIA L40S-12Q, or L40S-12Q). */
const VGPU_TYPE = /^[A-Za-z0-9][A-Za-z0-9 _.:+-]{0,63}$/;

interface VgpuType {
  id: number;
  name: string;
}

/** creatable_vgpu_types: a header ("ID    : vGPU Name"), then "1414 : NVIDIA H200X-1-18C" per type. */
function creatableTypes(host: Host, vf: string): VgpuType[] {
  return (host.readTrimmed(vgpuFile(vf, "creatable_vgpu_types")) ?? "").split("\n").flatMap((line) => {
    const match = /^\s*(\d+)\s*:\s*(.+?)\s*$/.exec(line);
    return match ? [{ id: Number(match[1]), name: match[2]! }] : [];
  });
}

function matchesType(type: VgpuType, wanted: string): boolean {
  const lower = wanted.toLowerCase();
  return String(type.id) === wanted || type.name.toLowerCase() === lower || type.name.toLowerCase().split(/\s+/).at(-1) === lower;
}

export interface VgpuDevice {
  element: string;
  vf: string;
  type: string;
}

function parseVgpuElement(element: Element, domain: Domain, count: number): VgpuDevice {
  const where = describeElement(element);
  const attrs = readAttributes(element, ["vf", "type"]);
  if (attrs.type === undefined) throw new ConfigError(where, `has no type attribute; name a vGPU type by id or name as cat /sys/bus/pci/devices/VF/nvidia/creatable_vgpu_types lists them, e.g. type="NVIDIA L40S-12Q"`);
  const type = checkPattern(attrs.type.trim(), VGPU_TYPE, where, "type", "vGPU type id or name");
  const hostdevs = domain.hostdevs.flatMap((hostdev) => (hostdev.type === "pci" ? [hostdev.address] : []));
  if (attrs.vf === undefined) {
    if (hostdevs.length === 1 && count === 1) return { element: where, vf: hostdevs[0]!, type };
    throw new ConfigError(where, `has no vf attribute; add vf="DDDD:BB:SS.F" naming the virtual function (one of the domain's PCI <hostdev>s${hostdevs.length ? `: ${hostdevs.join(", ")}` : ""})`);
  }
  const vf = parsePciAddress(attrs.vf, where, "vf");
  if (!hostdevs.includes(vf)) {
    throw new ConfigError(where, `vf="${attrs.vf}" is not a PCI <hostdev> of this domain; add <hostdev mode='subsystem' type='pci' managed='no'> with its <source><address> to <devices>, or fix vf`);
  }
  return { element: where, vf, type };
}

export interface VgpuPlan extends VgpuDevice {
  id: number;
  name: string;
  /** False: the VF carries this type already: used, and kept at release. */
  create: boolean;
}

/** Everything checked before anything changes; `vmhook doctor` runs it too. */
export function planVgpu(host: Host, device: VgpuDevice): VgpuPlan {
  const current = host.readTrimmed(vgpuFile(device.vf, "current_vgpu_type"));
  if (current === undefined) {
    throw new ConfigError(
      device.element,
      `${device.vf} has no nvidia/current_vgpu_type: it is not a virtual function of a GPU driven by NVIDIA's vGPU manager 17 or later; enable the VFs with /usr/lib/nvidia/sriov-manage -e PF-ADDRESS (for vGPUs that are mdevs, use <vmhook:mdev>)`,
    );
  }
  const creatable = creatableTypes(host, device.vf);
  const wanted = creatable.find((type) => matchesType(type, device.type));
  const currentId = Number(current);
  if (currentId !== 0) {
    if ((wanted?.id ?? Number(device.type)) === currentId) {
      return { ...device, id: currentId, name: wanted?.name ?? device.type, create: false };
    }
    throw new ConfigError(device.element, `${device.vf} already carries vGPU type ${currentId}; if that is the one, write type="${currentId}", else pick a free VF or clear it (echo 0 > ${vgpuFile(device.vf, "current_vgpu_type")})`);
  }
  if (!wanted) {
    throw new ConfigError(
      device.element,
      creatable.length === 0
        ? `no vGPU type can be created on ${device.vf} now: the GPU's other vGPUs use what is left; stop one or use another GPU`
        : `vGPU type "${device.type}" cannot be created on ${device.vf}; creatable now: ${creatable.map((type) => `${type.id} (${type.name})`).join(", ")}`,
    );
  }
  return { ...device, id: wanted.id, name: wanted.name, create: true };
}

export const vgpu = definePlugin<VgpuDevice[]>({
  name: "vgpu",
  summary: "sets an NVIDIA vGPU type (vGPU 17+, SR-IOV) on the domain's virtual functions at prepare, clears it at release",
  usage: '<vmhook:vgpu vf="PCI-ADDRESS" type="ID|NAME"/>  (one per VF)',

  parse(elements, domain) {
    const devices = elements.map((element) => parseVgpuElement(element, domain, elements.length));
    devices.forEach((device, index) => {
      const first = devices.findIndex((other) => other.vf === device.vf);
      if (first !== index) throw new ConfigError(device.element, `configures VF ${device.vf} again (first in ${devices[first]!.element}); a VF carries one vGPU`);
    });
    return devices;
  },

  async prepare(ctx) {
    const plans = ctx.config.map((device) => planVgpu(ctx.host, device));
    for (const plan of plans.filter((p) => !p.create)) ctx.log.info(`${plan.vf} carries vGPU type ${plan.id} already: using it, and keeping it at release`);
    for (const plan of plans.filter((p) => p.create)) {
      const file = vgpuFile(plan.vf, "current_vgpu_type");
      await ctx.step(`set vGPU type ${plan.id} (${plan.name}) on ${plan.vf}`, { action: "clear-vgpu", vf: plan.vf, id: plan.id }, () => {
        try {
          ctx.host.write(file, String(plan.id));
        } catch (error) {
          throw new VmhookError(`could not set vGPU type ${plan.id} (${plan.name}) on ${plan.vf}: ${describeError(error)}; the kernel log (dmesg) and nvidia-smi vgpu may say why`);
        }
        ctx.waitFor(`${file} reads ${plan.id}`, () => ctx.host.readTrimmed(file) === String(plan.id));
      });
    }
  },

  undo(record, ctx) {
    if (record.action !== "clear-vgpu") throw new VmhookError(`vgpu: unknown undo action "${record.action}" in the journal`);
    const vf = String(record.vf);
    if (!PATTERNS.pciAddress.test(vf)) throw new VmhookError(`vgpu: the journal names "${vf}", not a PCI address; inspect it`);
    const file = vgpuFile(vf, "current_vgpu_type");
    const current = ctx.host.readTrimmed(file);
    // Gone (VFs disabled) or never set (the step failed): nothing to give back.
    if (current === undefined || current === "0") return;
    if (current !== String(record.id)) {
      ctx.log.warn(`${vf} carries vGPU type ${current}, not the ${record.id} vmhook set; leaving it`);
      return;
    }
    try {
      ctx.host.write(file, "0");
    } catch (error) {
      throw new VmhookError(`could not clear the vGPU on ${vf}: ${describeError(error)}; if a process still uses the VF, stop it, then run vmhook recover`);
    }
    ctx.waitFor(`${file} reads 0`, () => ctx.host.readTrimmed(file) === "0");
  },
});
