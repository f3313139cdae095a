// Mediated devices for the domain's <hostdev type='mdev'>s (Intel GVT-g,
// NVIDIA vGPU up to release 16, the kernel's mtty sample...), created at
// prepare and removed at release.
//
//   <vmhook:mdev parent="0000:00:02.0" type="i915-GVTg_V5_4" uuid="..."/>
//
// NVIDIA vGPU 17+ on SR-IOV virtual functions has no mdev: plugins/vgpu.ts.
// Sysfs layout: Documentation/ABI/testing/sysfs-bus-vfio-mdev.
import type { XmlElement } from "../lib/xml.ts";
import { kernelAnswer, writeThroughDriver } from "../lib/bounded-write.ts";
import { readAttributes } from "../lib/element.ts";
import { attributes, describeElement, type Domain } from "../lib/domain.ts";
import { fail, failedWith, ok, type Finding } from "../lib/diagnostics/findings.ts";
import { readPciNames } from "../lib/diagnostics/pciids.ts";
import { completeJournals } from "../lib/journal.ts";
import { isDisplayClass, listPciDevices, type PciDevice } from "../lib/pci.ts";
import { attributeText, ConfigError, describeError, VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import { defineAction, definePlugin, type ApplyContext, type BaseContext, type CheckContext, type PlanContext, type Refusal, type Step, type UndoRecord } from "../lib/plugin.ts";
import { describeMdevsOn, existingMdev, MDEV_DEVICES, mdevCreators, mdevPath } from "../lib/mdevs.ts";
import { refuseDevicesOfOtherVms } from "./vfio/driver.ts";
import { vfioDeviceFiles, vfioHoldersAdvice } from "./vfio/survey.ts";
import { vgpuFunctions } from "./vgpu.ts";
import { clearForWrite, refuseIfStuck, StuckWriteError } from "../lib/stuck-writes.ts";
import { checkPattern, parsePciAddress, parseUuid, PATTERNS } from "../lib/validate.ts";

// ---- mdev: sysfs -------------------------------------------------------------

/** One entry per device that can parent mdevs (a link named after the device). */
const MDEV_BUS = "/sys/class/mdev_bus";

const typePath = (parent: string, type: string, file = "") => `${MDEV_BUS}/${parent}/mdev_supported_types/${type}${file && `/${file}`}`;

/**
 * An mdev's create runs its parent driver's code, its remove the mdev
 * driver's remove(), which waits for the last user of the mdev's vfio device
 * (a leaked fd of /dev/vfio/N): each runs in a helper noted under the mdev's
 * UUID and waited for this long (lib/bounded-write.ts). Both take at most
 * seconds when the driver is well; a fixed bound, as a slow driver is not a
 * setting to tune.
 */
const MDEV_WRITE_TIMEOUT_MS = 30_000;

/** Device names of mdev parents that are not PCI functions: mtty, mdpy, matrix (vfio-ap), 0.0.0313 (vfio-ccw). */
const PARENT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const LOOKS_LIKE_PCI = /^([0-9a-f]{4,8}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i;
/** Where a user finds the type to write. */
const LIST_TYPES = `name an mdev type as ls ${MDEV_BUS}/*/mdev_supported_types lists them, e.g. type="i915-GVTg_V5_4"`;

interface MdevType {
  id: string;
  name?: string;
  description?: string;
  /** Instances left, from available_instances; or what that file shows instead of a count. */
  available: number | { unreadable: string };
}

function offeredTypes(host: Host, parent: string): MdevType[] {
  return host.list(`${MDEV_BUS}/${parent}/mdev_supported_types`).map((id) => ({
    id,
    name: host.readTrimmed(typePath(parent, id, "name")),
    description: host.readTrimmed(typePath(parent, id, "description")),
    available: availableInstances(host.readTrimmed(typePath(parent, id, "available_instances"))),
  }));
}

/** A count, or what the file shows instead: never taken for 0 left, which would say the type is used up. */
function availableInstances(text: string | undefined): MdevType["available"] {
  if (text !== undefined && /^\d+$/.test(text)) return Number(text);
  return { unreadable: text === undefined ? "is absent" : text === "" ? "is empty" : `holds ${JSON.stringify(text.slice(0, 40))}, not a count` };
}

/** "i915-GVTg_V5_4: GVTg_V5_4, low_gm_size: 128MB, ..., resolution: 1920x1200; 2 available" */
function describeType(type: MdevType): string {
  const about = [type.name, type.description?.replace(/\s*\n\s*/g, ", ")].filter(Boolean).join(", ");
  return `${type.id}: ${about ? `${about}; ` : ""}${typeof type.available === "number" ? type.available : "?"} available`;
}

/** The driver a device directory is bound to (the name its driver link points to), if any. */
function driverOf(host: Host, deviceDir: string): string | undefined {
  return host.readlink(`${deviceDir}/driver`)?.split("/").pop();
}

/** The parent's driver, whose code creates its mdevs; a virtual parent (mtty) has none: its name is its module's. */
const parentDriver = (host: Host, parent: string) => driverOf(host, `${MDEV_BUS}/${parent}`) ?? parent;

/** A write into the mdev's driver (its create or remove), in a bounded helper noted under its UUID (lib/bounded-write.ts). */
function throughDriver(ctx: BaseContext, uuid: string, driver: string, file: string, value: string): Promise<void> {
  return writeThroughDriver(ctx, { device: uuid, driver, file, value, timeoutMs: MDEV_WRITE_TIMEOUT_MS });
}

/** What planning reads: the host, this domain (and its XML), every domain's journal (prepare's context, or doctor's view of the host). */
type PlanView = Pick<PlanContext<unknown>, "host" | "domain" | "domainXml" | "journals">;

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
  throw new ConfigError(element, `${attributeText("parent", value)} is neither a PCI address (like 0000:00:02.0) nor a device name (like mtty); see ls ${MDEV_BUS}`);
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
    throw new ConfigError(element, `${attributeText("uuid", uuid)} is not the UUID of any mdev <hostdev> of this domain${hostdevs.length ? ` (they are ${hostdevs.join(", ")})` : ""}; add ${example.replace("UUID", uuid)} or fix the uuid`);
  }
  return uuid;
}

/** The element's attributes, each checked before any use in a path; `vmhook doctor` reads elements with this too. */
function readMdevElement(element: XmlElement): Omit<MdevDevice, "uuid"> & { uuid?: string } {
  const where = describeElement(element);
  const attrs = readAttributes(element, ["type", "parent", "uuid"]);
  if (attrs.type === undefined) throw new ConfigError(where, `has no type attribute; ${LIST_TYPES}`);
  return {
    element: where,
    type: checkPattern(attrs.type, PATTERNS.mdevType, where, "type", "an mdev type", LIST_TYPES),
    parent: attrs.parent === undefined ? undefined : parseParent(attrs.parent, where),
    uuid: attrs.uuid === undefined ? undefined : parseUuid(attrs.uuid, where, "uuid"),
  };
}

function parseMdevElement(element: XmlElement, domain: Domain): MdevDevice {
  const device = readMdevElement(element);
  return { ...device, uuid: parseMdevUuid(device.uuid, device.element, domain) };
}

// ---- mdev: prepare ---------------------------------------------------------------

interface MdevPlan extends MdevDevice {
  parent: string;
  offered: MdevType;
  /** False: the mdev exists already with this type (mdevctl, by hand): used, and kept at release. */
  create: boolean;
  /** Why it cannot be created now: vmhook's mdev of another domain has the UUID until that domain's release. */
  refused?: Refusal;
}

/** The parent of a device whose element names none: the only one offering its type. */
function findParent(host: Host, device: MdevDevice): string {
  const parents = host.list(MDEV_BUS);
  const offering = parents.filter((parent) => host.exists(typePath(parent, device.type)));
  if (offering.length === 1) return offering[0]!;
  if (offering.length > 1) throw new ConfigError(device.element, `type ${device.type} is offered by ${offering.join(" and ")}; add parent="..." naming one`);
  if (parents.length === 0) throw noParents(host, device.element);
  const offered = parents.flatMap((parent) => offeredTypes(host, parent).map((type) => ({ parent, type })));
  throw new ConfigError(
    device.element,
    `type="${device.type}" is offered by no device on this host; choose one of ${[...new Set(offered.map(({ type }) => type.id))].join(", ")} (described below)`,
    offered.map(({ parent, type }) => `${parent}: ${describeType(type)}`),
  );
}

function noParents(host: Host, element: string): ConfigError {
  return new ConfigError(element, `this host has no mdev parent device (${MDEV_BUS} is empty); ${noParentAdvice(host)}`);
}

/**
 * The Intel GPUs i915's GVT-g supports (intel_gvt.c: Broadwell, Skylake, Kaby
 * Lake, Broxton, Coffee Lake, Comet Lake; Gen8-Gen9.5), by PCI device id:
 * 0x16xx, 0x19xx, 0x59xx, 0x9Bxx, 0x3E9x/0x3EAx, 0x87C0/0x87CA (Amber Lake),
 * 0x5A84/0x5A85/0x1A84/0x1A85 (Broxton). Newer ones have none at all.
 */
const GVT_G_DEVICE_IDS = /^0x(?:(?:16|19|59|9b)[0-9a-f]{2}|3e[9a][0-9a-f]|87c[0a]|[15]a8[45])$/;

/** How this host could get an mdev parent: only the GVT-g steps still missing, and only on a GPU that has GVT-g. */
function noParentAdvice(host: Host): string {
  // NVIDIA's vGPU 17+ manager sets types on VFs and makes no mdev: the driver is there, the element is the wrong one.
  const vfs = vgpuFunctions(host);
  const named = vfs.length > 4 ? `${vfs.slice(0, 3).join(", ")} and ${vfs.length - 3} more` : vfs.join(", ");
  const vgpu = vfs.length
    ? `NVIDIA's vGPU manager here makes no mdevs: it sets a vGPU type on a virtual function (${named} ${vfs.length === 1 ? "has" : "have"} nvidia/current_vgpu_type): give the domain a VF as a PCI <hostdev managed='no'> and write <vmhook:vgpu vf="${vfs[0]}" type="..."/> instead (docs/mdev.md)`
    : "for NVIDIA vGPU install its host driver";
  const intelGpus = listPciDevices(host).filter((device) => device.vendor === "0x8086" && isDisplayClass(device.classCode));
  if (intelGpus.length === 0) return `GVT-g needs an Intel GPU of Broadwell to Comet Lake, and this host has no Intel GPU; ${vgpu}`;
  const names = readPciNames(host, intelGpus.map((gpu) => ({ vendor: "8086", device: gpu.device.replace(/^0x/, "").toLowerCase(), classCode: "0300" })));
  const describe = (gpus: PciDevice[]) =>
    gpus.map((gpu) => {
      const id = gpu.device.replace(/^0x/, "").toLowerCase();
      return `${gpu.address} (8086:${id}${names.device("8086", id) ? ` ${names.device("8086", id)}` : ""})`;
    }).join(", ");
  const capable = intelGpus.filter((gpu) => GVT_G_DEVICE_IDS.test(gpu.device.toLowerCase()));
  if (capable.length === 0) {
    return `${describe(intelGpus)} has no GVT-g (Intel GPUs have it from Broadwell to Comet Lake only): pass the whole GPU through instead, or on Tiger Lake and newer (Gen12) use SR-IOV virtual functions with a driver that supports them; ${vgpu}`;
  }
  const enabled = host.readTrimmed("/sys/module/i915/parameters/enable_gvt") === "Y";
  const kvmgt = host.exists("/sys/module/kvmgt");
  if (enabled && kvmgt) {
    return `i915.enable_gvt is Y and kvmgt is loaded, yet ${describe(capable)} offers no mdev types: i915 did not start GVT-g on it (dmesg | grep -i gvt says why); ${vgpu}`;
  }
  const steps = [...(enabled ? [] : ["boot with i915.enable_gvt=1"]), ...(kvmgt ? [] : ["load kvmgt"])];
  return `for Intel GVT-g on ${describe(capable)}: ${steps.join(" and ")} (see docs/mdev.md); ${vgpu}`;
}

// ---- mdev: mdevctl's definitions ------------------------------------------------

/** mdevctl's persistent definitions: DIR/PARENT/UUID, JSON {mdev_type, start: auto|manual, attrs: [{NAME: VALUE}...]}. */
const MDEVCTL_DEFINITIONS = "/etc/mdevctl.d";

interface MdevctlDefinition {
  file: string;
  parent: string;
  type: string;
  /** The sysfs attributes mdevctl writes after its create. */
  attributes: string[];
}

/** mdevctl's definition of the UUID, under any parent (mdevctl's scripts.d holds callouts, no definitions). */
function mdevctlDefinition(host: Host, uuid: string, element: string): MdevctlDefinition | undefined {
  for (const parent of host.list(MDEVCTL_DEFINITIONS).filter((entry) => entry !== "scripts.d")) {
    const file = `${MDEVCTL_DEFINITIONS}/${parent}/${uuid}`;
    const text = host.readTrimmed(file);
    if (text === undefined) continue;
    let json: { mdev_type?: unknown; attrs?: unknown } | undefined;
    try {
      json = JSON.parse(text) as typeof json;
    } catch {
      json = undefined;
    }
    const attrs = json?.attrs ?? [];
    if (typeof json?.mdev_type !== "string" || !Array.isArray(attrs)) {
      throw new ConfigError(element, `mdevctl's definition of mdev ${uuid} (${file}) is not its JSON (mdev_type, start, attrs): vmhook cannot tell what device mdevctl defines; fix or remove it (mdevctl undefine --uuid ${uuid})`);
    }
    const attributes = attrs.flatMap((attr: unknown) => (attr !== null && typeof attr === "object" ? Object.keys(attr) : [String(attr)]));
    return { file, parent, type: json.mdev_type, attributes };
  }
  return undefined;
}

/**
 * An mdev mdevctl defines but has not started: vmhook's create makes a bare
 * device of the element's type under its UUID, without the attributes
 * mdevctl writes after its own create (NVIDIA's vgpu_params, vfio-ap's
 * adapters), and removes it at release. Only a definition that the create
 * matches lets vmhook make it; mdevctl's started one is used as it is.
 */
function refuseMdevctlConflict(host: Host, device: MdevDevice, parent: string): void {
  const defined = mdevctlDefinition(host, device.uuid, device.element);
  if (!defined) return;
  const otherDevice = defined.type !== device.type || defined.parent !== parent;
  if (!otherDevice && defined.attributes.length === 0) return;
  const attributes = defined.attributes.length > 0 ? `, attributes ${defined.attributes.map((name) => JSON.stringify(name.slice(0, 64))).join(", ")}` : "";
  const created = otherDevice ? `${device.type}${parent === defined.parent ? "" : ` on ${parent}`}` : "without those attributes";
  const fix = otherDevice
    ? `write type="${defined.type}" parent="${defined.parent}" and start it (mdevctl start --uuid ${device.uuid})`
    : `start it (mdevctl start --uuid ${device.uuid}): vmhook then uses it and leaves it to mdevctl`;
  throw new ConfigError(
    device.element,
    `mdev ${device.uuid} is defined by mdevctl (${defined.file}: ${defined.type} on ${defined.parent}${attributes}) and not started: vmhook would create another device under its UUID (${created}); ${fix}; or give this domain an mdev <hostdev> with its own UUID (uuidgen)`,
  );
}

/**
 * A parent the same domain also gets whole (a PCI <hostdev> of it): its move
 * to vfio-pci, by vmhook's vfio or by libvirt, unbinds the driver that
 * parents the mdevs, and the kernel removes every one of them with it.
 */
function refuseParentPassedWhole(domain: Domain, device: MdevDevice, parent: string): void {
  if (!domain.hostdevs.some((hostdev) => hostdev.type === "pci" && hostdev.address === parent)) return;
  throw new ConfigError(
    device.element,
    `parent ${parent} is also passed whole to this domain (its <hostdev> of ${parent}): moving it to vfio-pci removes every mdev on it; give the VM either the whole device (take out this element and its mdev <hostdev>) or an mdev of it (take out that <hostdev>)`,
  );
}

/** Everything checked before anything changes: parent, type, an existing mdev with this UUID, the parent not also passed whole. */
function planMdev(ctx: PlanView, device: MdevDevice): MdevPlan {
  const { host } = ctx;
  // An earlier create or remove of this UUID still blocked in its driver: reading the parent's files could block too.
  refuseIfStuck(host, [device.uuid]);
  const parent = device.parent ?? findParent(host, device);
  refuseParentPassedWhole(ctx.domainXml, device, parent);
  // A PCI parent another VM's vfio holds is no mdev parent until that VM gives it back: say so, not that it has none.
  if (PATTERNS.pciAddress.test(parent)) refuseDevicesOfOtherVms(ctx, [parent]);
  if (!host.exists(`${MDEV_BUS}/${parent}`)) {
    const parents = host.list(MDEV_BUS);
    if (parents.length === 0) throw noParents(host, device.element);
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
  // Another domain's journal names the UUID: its release removes an mdev with it, whoever made it and uses it by then, also one
  // that does not exist now (a create that failed or was cut off); once that domain has stopped, this one creates its own.
  const creator = mdevCreators(ctx.journals()).get(device.uuid);
  if (creator && creator.uuid !== ctx.domain.uuid) {
    const fix = `or give it an mdev <hostdev> with its own UUID (uuidgen)`;
    const reason = existing
      ? `${device.element}: mdev ${device.uuid} is the one vmhook created for domain ${creator.name}, which removes it at its release; start this domain once ${creator.name} has stopped, ${fix}`
      : `${device.element}: mdev ${device.uuid} does not exist, but the journal of domain ${creator.name} holds a create of it (failed or cut off): ${creator.name}'s release or vmhook recover removes an mdev ${device.uuid}, whoever made it; start this domain once ${creator.name} has stopped and vmhook status shows nothing of it, ${fix}`;
    return { ...device, parent, offered, create: true, refused: { reason, remedies: [] } };
  }
  if (!existing) {
    refuseMdevctlConflict(host, device, parent);
    return { ...device, parent, offered, create: true };
  }
  return { ...device, parent, offered, create: false };
}

/**
 * Enough free instances for every mdev of each parent and type, or why not: a
 * shortage is a refusal of this host now (another VM may give the instance
 * back before the next start), not a wrong config. The kernel may still refuse
 * (types share resources): then the step fails and rolls back.
 */
function instanceShortage(ctx: PlanView, plans: MdevPlan[], plan: MdevPlan): Refusal | undefined {
  const needed = plans.filter((other) => other.create && !other.refused && other.parent === plan.parent && other.type === plan.type).length;
  const { available } = plan.offered;
  if (typeof available !== "number") {
    return {
      reason: `${plan.element}: cannot tell how many ${plan.type} instances are left on ${plan.parent}: ${typePath(plan.parent, plan.type, "available_instances")} ${available.unreadable}; check the parent's driver (dmesg), or choose another type`,
      remedies: [],
    };
  }
  if (needed <= available) return undefined;
  return {
    reason:
      `${plan.element}: ${needed > 1 ? `needs ${needed} ${plan.type} instances` : `no ${plan.type} instance is left`} on ${plan.parent} (available_instances is ${available}); ` +
      `stop a VM that uses one, remove an unused one (echo 1 > ${MDEV_DEVICES}/UUID/remove) or choose a smaller type`,
    remedies: holders(ctx, plan.parent),
  };
}

/** What holds a parent's instances: its mdevs, each with the domain vmhook made it for. */
function holders(ctx: PlanView, parent: string): string[] {
  const held = describeMdevsOn(ctx.host, ctx.journals, parent);
  return held.length > 0 ? [`mdevs on ${parent}:`, ...held.map((line) => `  ${line}`)] : [`${parent} has no mdev now; its types' resources are in use elsewhere`];
}

/**
 * Why a create the kernel refused found no instance, when none is left now:
 * the plan saw one, and mdevctl (starting its auto-start mdevs when the parent
 * appears) or a person took it since; vmhook's own starts take turns under the
 * host lock. Says what holds them, as the plan's refusal would have.
 */
function whyCreateFailed(ctx: PlanView, record: CreateRecord): { advice: string; lines: string[] } {
  let left: string | undefined;
  try {
    left = ctx.host.readTrimmed(typePath(record.parent, record.type, "available_instances"));
  } catch {
    left = undefined; // the kernel's refusal is the error to show, not this read's
  }
  if (availableInstances(left) !== 0) return { advice: "the kernel log (dmesg) may say why", lines: [] };
  const advice = `no ${record.type} instance is left on ${record.parent} now (available_instances is 0): an mdev made since vmhook's check took it; stop a VM that uses one or choose a smaller type`;
  try {
    return { advice, lines: holders(ctx, record.parent) };
  } catch (error) {
    return { advice, lines: [`which mdevs hold them cannot be told: ${describeError(error)}`] };
  }
}

interface CreateRecord extends UndoRecord {
  action: "create-mdev";
  uuid: string;
  parent: string;
  type: string;
}

async function createMdev(record: CreateRecord, ctx: ApplyContext<MdevDevice[]>): Promise<void> {
  const { host } = ctx;
  try {
    await throughDriver(ctx, record.uuid, parentDriver(host, record.parent), typePath(record.parent, record.type, "create"), record.uuid);
  } catch (error) {
    // Not returned: the driver may still create the mdev; the record stays, and the undo removes it once the driver has returned.
    if (error instanceof StuckWriteError) throw error;
    // The kernel created nothing: an mdev with this UUID now (mdevctl's, made after the plan) is someone else's, never to remove.
    ctx.nothingToUndo();
    const why = whyCreateFailed(ctx, record);
    throw new VmhookError(`could not create mdev ${record.uuid} (${record.type} on ${record.parent}): ${kernelAnswer(error)}; ${why.advice}`, why.lines);
  }
  // Created by this write: a wait that fails keeps the record, and the undo removes whatever appeared.
  ctx.waitFor(`mdev ${record.uuid} appears in ${MDEV_DEVICES} as ${record.type}`, () => existingMdev(host, record.uuid)?.type === record.type);
}

async function removeMdev(record: CreateRecord, ctx: BaseContext): Promise<void> {
  const { host } = ctx;
  const { uuid } = record;
  // A create not returned yet may still make the mdev: until it has, its absence proves nothing.
  clearForWrite(host, uuid);
  const existing = existingMdev(host, uuid);
  if (!existing) return;
  // The kernel keeps a UUID for the create that took it, so another type or parent is not what this record's create made
  // (it failed, and mdevctl or a person made this one since): someone else's, never removed. A type it cannot read proves nothing.
  if (existing.type !== "?" && (existing.type !== record.type || existing.parent !== record.parent)) {
    ctx.log.warn(`mdev ${uuid} is now ${existing.type} on ${existing.parent}, not the ${record.type} on ${record.parent} vmhook created: another tool made it; it stays`);
    return;
  }
  // The mdev's driver runs its remove(); an mdev on none, only the parent's code.
  const driver = driverOf(host, mdevPath(uuid)) ?? parentDriver(host, record.parent);
  const files = vfioDeviceFiles(host, mdevPath(uuid));
  try {
    await throughDriver(ctx, uuid, driver, mdevPath(uuid, "remove"), "1");
  } catch (error) {
    const { holders, fix } = vfioHoldersAdvice(host, files, "the mdev");
    if (error instanceof StuckWriteError) {
      if (!holders) throw error;
      throw new StuckWriteError(`${error.message}; the remove waits until the mdev's vfio device is closed, and ${holders}: end it and the remove finishes`, error.lines);
    }
    throw new VmhookError(`could not remove mdev ${uuid}: ${kernelAnswer(error)}; ${fix}, then run vmhook recover`);
  }
  ctx.waitFor(`mdev ${uuid} is gone from ${MDEV_DEVICES}`, () => !ctx.host.exists(mdevPath(uuid)));
}

/** A journaled mdev; vmhook 0.1 named the record by its undo (remove-mdev). */
function checkCreateRecord(record: UndoRecord): CreateRecord {
  const { action, uuid, parent, type } = record;
  if ((action !== "create-mdev" && action !== "remove-mdev") || typeof uuid !== "string" || !PATTERNS.uuid.test(uuid)) {
    throw new VmhookError(`mdev: the journal names ${JSON.stringify(uuid)} in a ${String(action)} record, not a UUID; inspect it`);
  }
  if (typeof parent !== "string" || !(PARENT_NAME.test(parent) || PATTERNS.pciAddress.test(parent)) || typeof type !== "string" || !PATTERNS.mdevType.test(type)) {
    throw new VmhookError(`mdev: the journal names parent ${JSON.stringify(parent)} and type ${JSON.stringify(type)} for mdev ${uuid}, which are not names vmhook writes; inspect it`);
  }
  return { action: "create-mdev", uuid, parent, type };
}

const createMdevAction = defineAction<CreateRecord, MdevDevice[]>({
  check: checkCreateRecord,
  apply: createMdev,
  undo: removeMdev,
});

/** Checks that change nothing (parent, type, free instances, an existing mdev with this UUID), then one step per mdev to create. */
function planPrepare(ctx: PlanContext<MdevDevice[]>): Step<CreateRecord>[] {
  const plans = ctx.config.map((device) => planMdev(ctx, device));
  for (const plan of plans.filter((each) => !each.create)) ctx.log.info(`mdev ${plan.uuid} (${plan.type} on ${plan.parent}) exists already: using it, and keeping it at release`);
  return plans
    .filter((plan) => plan.create)
    .map((plan): Step<CreateRecord> => {
      const refused = plan.refused ?? instanceShortage(ctx, plans, plan);
      return {
        action: "create-mdev",
        record: { action: "create-mdev", uuid: plan.uuid, parent: plan.parent, type: plan.type },
        description: `create mdev ${plan.uuid} (${plan.type} on ${plan.parent})`,
        ...(refused ? { refused } : {}),
      };
    });
}

/**
 * `vmhook doctor`: each element through prepare's own reading and planning,
 * so it fails exactly where prepare would refuse, with prepare's reason.
 */
function check({ host, domain, elements }: CheckContext): Finding[] {
  const view: PlanView = { host, domain, domainXml: domain, journals: () => completeJournals(host) };
  const planned = elements.map((element): { plan: MdevPlan } | { error: unknown } => {
    try {
      return { plan: planMdev(view, parseMdevElement(element, domain)) };
    } catch (error) {
      return { error };
    }
  });
  const plans = planned.flatMap((each) => ("plan" in each ? [each.plan] : []));
  return planned.map((each, index) => {
    const check = `mdev ${attributes(elements[index]!).type ?? "?"}`;
    if (!("plan" in each)) {
      const fix = host.list(MDEV_BUS).length === 0 ? noParentAdvice(host) : "fix the element or the host as the message says";
      return failedWith(check, each.error, fix);
    }
    const { plan } = each;
    if (!plan.create) return ok(check, `mdev ${plan.uuid} exists already as ${plan.type} on ${plan.parent}: vmhook uses it and leaves it at release`);
    const refused = plan.refused ?? instanceShortage(view, plans, plan);
    if (refused) return fail(check, refused.reason, "stop the VM that holds it, or choose a smaller type");
    return ok(check, `${plan.parent} offers ${plan.type}: ${plan.offered.available} instance(s) available`);
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

  // Instances of a parent's types, UUIDs and the parents that vfio hands over are shared by every domain: planned, made and
  // removed under the host lock, a second start sees the first one's mdev and journal, not what both read before either wrote.
  shared: true,

  plan: { prepare: planPrepare },
  check,
  actions: {
    "create-mdev": createMdevAction,
    // vmhook 0.1 journals: the record named by its undo, and a create that failed (nothing to undo).
    "remove-mdev": createMdevAction,
    "create-failed": defineAction({ check: (record) => record, apply: () => {}, undo: () => {} }),
  },
});
