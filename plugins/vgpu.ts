// NVIDIA vGPU 17+ on SR-IOV virtual functions, where there is no mdev: a
// vGPU type id is written to the VF at prepare and cleared at release.
//
//   <vmhook:vgpu vf="0000:41:00.4" type="NVIDIA L40S-12Q"/>
//
// A separate element from <vmhook:mdev> because it is another kernel
// interface: a type set on a PCI function that the domain's PCI <hostdev>
// names. Layout: NVIDIA's vGPU 17 "vendor-specific VFIO framework"
// (nvidia/creatable_vgpu_types, nvidia/current_vgpu_type under the VF).
import type { XmlElement } from "../lib/xml.ts";
import { kernelAnswer, writeThroughDriver } from "../lib/bounded-write.ts";
import { describeElement, type Domain } from "../lib/domain.ts";
import { readAttributes } from "../lib/element.ts";
import { attributeText, ConfigError, VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import { completeJournals, othersRecords } from "../lib/journal.ts";
import { pciDriver, pciPath } from "../lib/pci.ts";
import { defineAction, definePlugin, type ApplyContext, type BaseContext, type CheckContext, type PlanContext, type Refusal, type Step, type UndoRecord } from "../lib/plugin.ts";
import { fail, failedWith, ok, type Finding } from "../lib/diagnostics/findings.ts";
import { clearForWrite, refuseIfStuck, StuckWriteError } from "../lib/stuck-writes.ts";
import { checkPattern, parsePciAddress, PATTERNS } from "../lib/validate.ts";
import { refuseDevicesOfOtherVms } from "./vfio/driver.ts";
import { vfioDeviceFiles, vfioHoldersAdvice } from "./vfio/survey.ts";

const vgpuFile = (vf: string, file: "creatable_vgpu_types" | "current_vgpu_type") => pciPath(vf, `nvidia/${file}`);

/** The PCI functions that carry a vGPU type (NVIDIA's VFs under its vGPU 17+ manager): where a host's vGPUs are, when it has no mdevs. */
export const vgpuFunctions = (host: Host): string[] => host.list("/sys/bus/pci/devices").filter((address) => host.exists(vgpuFile(address, "current_vgpu_type")));

/**
 * Setting or clearing a VF's vGPU type runs NVIDIA's driver code for the VF:
 * in a helper noted under the VF's address and waited for this long
 * (lib/bounded-write.ts); fixed, as for an mdev's create and remove.
 */
const VGPU_WRITE_TIMEOUT_MS = 30_000;

/** Where a user finds the type to write. */
const LIST_TYPES = 'name a vGPU type by id or name as cat /sys/bus/pci/devices/VF/nvidia/creatable_vgpu_types lists them, e.g. type="NVIDIA L40S-12Q"';

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

function parseVgpuElement(element: XmlElement, domain: Domain, count: number): VgpuDevice {
  const where = describeElement(element);
  const attrs = readAttributes(element, ["vf", "type"]);
  if (attrs.type === undefined) throw new ConfigError(where, `has no type attribute; ${LIST_TYPES}`);
  const type = checkPattern(attrs.type.trim(), PATTERNS.vgpuType, where, "type", "a vGPU type id or name", LIST_TYPES);
  const pciHostdevs = domain.hostdevs.flatMap((hostdev) => (hostdev.type === "pci" ? [hostdev] : []));
  const hostdevs = pciHostdevs.map((hostdev) => hostdev.address);
  let vf: string;
  if (attrs.vf === undefined) {
    if (hostdevs.length !== 1 || count !== 1) {
      throw new ConfigError(where, `has no vf attribute; add vf="DDDD:BB:SS.F" naming the virtual function (one of the domain's PCI <hostdev>s${hostdevs.length ? `: ${hostdevs.join(", ")}` : ""})`);
    }
    vf = hostdevs[0]!;
  } else {
    vf = parsePciAddress(attrs.vf, where, "vf");
    if (!hostdevs.includes(vf)) {
      throw new ConfigError(where, `${attributeText("vf", attrs.vf!)} is not a PCI <hostdev> of this domain; add <hostdev mode='subsystem' type='pci' managed='no'> with its <source><address> to <devices>, or fix vf`);
    }
  }
  // The vGPU lives in NVIDIA's driver: a managed hostdev is moved to vfio-pci by libvirt after prepare, and the guest gets no vGPU.
  if (pciHostdevs.find((hostdev) => hostdev.address === vf)!.managed) {
    throw new ConfigError(where, `the <hostdev> of VF ${vf} is managed='yes': libvirt would unbind the VF from NVIDIA's driver, which carries the vGPU, and bind it to vfio-pci; set managed='no' in that <hostdev>`);
  }
  return { element: where, vf, type };
}

export interface VgpuPlan extends VgpuDevice {
  id: number;
  name: string;
  /** False: the VF carries this type already: used, and kept at release. */
  create: boolean;
  /** Why this host cannot set the type now (another vGPU holds the VF or the GPU's capacity), though the config may be right. */
  refused?: Refusal;
}

/** Everything checked before anything changes; `vmhook doctor` runs it too. */
function planVgpu(host: Host, device: VgpuDevice): VgpuPlan {
  // An earlier type write still blocked in the driver: reading the VF's files could block too.
  refuseIfStuck(host, [device.vf]);
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
    const reason = `${device.vf} already carries vGPU type ${currentId}; if that is the one, write type="${currentId}", else pick a free VF or clear it (echo 0 > ${vgpuFile(device.vf, "current_vgpu_type")})`;
    return refusedPlan(device, reason);
  }
  if (!wanted) {
    // What is creatable depends on the GPU's other vGPUs: a type refused now may fit once one of them stops.
    return refusedPlan(
      device,
      creatable.length === 0
        ? `no vGPU type can be created on ${device.vf} now: the GPU's other vGPUs use what is left; stop one or use another GPU`
        : `vGPU type "${device.type}" cannot be created on ${device.vf} now; creatable now: ${creatable.map((type) => `${type.id} (${type.name})`).join(", ")}`,
    );
  }
  return { ...device, id: wanted.id, name: wanted.name, create: true };
}

function refusedPlan(device: VgpuDevice, reason: string): VgpuPlan {
  return { ...device, id: 0, name: device.type, create: true, refused: { reason: `${device.element}: ${reason}`, remedies: [] } };
}

function parse(elements: XmlElement[], domain: Domain): VgpuDevice[] {
  const devices = elements.map((element) => parseVgpuElement(element, domain, elements.length));
  devices.forEach((device, index) => {
    const first = devices.findIndex((other) => other.vf === device.vf);
    if (first !== index) throw new ConfigError(device.element, `configures VF ${device.vf} again (first in ${devices[first]!.element}); a VF carries one vGPU`);
  });
  return devices;
}

interface SetRecord extends UndoRecord {
  action: "set-vgpu";
  vf: string;
  id: number;
  name: string;
}

/**
 * A VF another domain's journal names is that domain's until its release,
 * which clears the type it set, whoever set it or uses it by then: also on a
 * VF that carries no type now (a set that failed or was cut off, kept for
 * vmhook recover). A VF carrying its type already is used and kept otherwise.
 */
function unlessAnotherDomains(ctx: Pick<BaseContext, "domain" | "journals">, plan: VgpuPlan): VgpuPlan {
  if (plan.refused) return plan;
  const setter = othersRecords(ctx.journals(), ctx.domain.uuid, "vgpu", checkSetRecord).find(({ record }) => record.vf === plan.vf);
  if (!setter) return plan;
  const { name } = setter.domain;
  const fix = `start this domain once ${name} has stopped`;
  return refusedPlan(
    plan,
    plan.create
      ? `${plan.vf} carries no vGPU type, but the journal of domain ${name} holds a set of type ${setter.record.id} on it (failed or cut off): ${name}'s release or vmhook recover clears type ${setter.record.id} on ${plan.vf}, whoever set it; ${fix} and vmhook status shows nothing of it, or give it another VF`
      : `${plan.vf} carries the vGPU type ${plan.id} vmhook set for domain ${name}, which clears it at its release; ${fix}, or give it another VF`,
  );
}

function planPrepare(ctx: PlanContext<VgpuDevice[]>): Step<SetRecord>[] {
  // A VF another VM's vfio holds is off NVIDIA's driver, without its vGPU files: say whose it is, not that it has none.
  refuseDevicesOfOtherVms(ctx, ctx.config.map((device) => device.vf));
  const plans = ctx.config.map((device) => unlessAnotherDomains(ctx, planVgpu(ctx.host, device)));
  for (const plan of plans.filter((each) => !each.create)) ctx.log.info(`${plan.vf} carries vGPU type ${plan.id} already: using it, and keeping it at release`);
  return plans
    .filter((plan) => plan.create)
    .map((plan) => ({
      action: "set-vgpu",
      record: { action: "set-vgpu", vf: plan.vf, id: plan.id, name: plan.name },
      description: plan.refused ? `set vGPU type ${plan.type} on ${plan.vf}` : `set vGPU type ${plan.id} (${plan.name}) on ${plan.vf}`,
      ...(plan.refused ? { refused: plan.refused } : {}),
    }));
}

/** A write of the VF's vGPU type, through its driver in a bounded helper noted under the VF (lib/bounded-write.ts). */
function writeType(ctx: BaseContext, vf: string, value: string): Promise<void> {
  const driver = pciDriver(ctx.host, vf) ?? "nvidia";
  return writeThroughDriver(ctx, { device: vf, driver, file: vgpuFile(vf, "current_vgpu_type"), value, timeoutMs: VGPU_WRITE_TIMEOUT_MS });
}

async function setVgpu(record: SetRecord, ctx: ApplyContext<VgpuDevice[]>): Promise<void> {
  const file = vgpuFile(record.vf, "current_vgpu_type");
  try {
    await writeType(ctx, record.vf, String(record.id));
  } catch (error) {
    // Not returned: the driver may still set the type; the record stays, and the undo clears it once the driver has returned.
    if (error instanceof StuckWriteError) throw error;
    // The kernel set nothing: a type on the VF now (another tool's, set after the plan) is not vmhook's to clear.
    ctx.nothingToUndo();
    throw new VmhookError(`could not set vGPU type ${record.id} (${record.name}) on ${record.vf}: ${kernelAnswer(error)}; the kernel log (dmesg) and nvidia-smi vgpu may say why`);
  }
  ctx.waitFor(`${file} reads ${record.id}`, () => ctx.host.readTrimmed(file) === String(record.id));
}

async function clearVgpu(record: SetRecord, ctx: BaseContext): Promise<void> {
  const { vf } = record;
  const file = vgpuFile(vf, "current_vgpu_type");
  // A set not returned yet may still set the type: until it has, the VF's type proves nothing.
  clearForWrite(ctx.host, vf);
  const current = ctx.host.readTrimmed(file);
  // Gone (VFs disabled) or never set (the step failed): nothing to give back.
  if (current === undefined || current === "0") return;
  if (current !== String(record.id)) {
    ctx.log.warn(`${vf} carries vGPU type ${current}, not the ${record.id} vmhook set; leaving it`);
    return;
  }
  const files = vfioDeviceFiles(ctx.host, pciPath(vf));
  try {
    await writeType(ctx, vf, "0");
  } catch (error) {
    if (error instanceof StuckWriteError) throw error;
    throw new VmhookError(`could not clear the vGPU on ${vf}: ${kernelAnswer(error)}; ${vfioHoldersAdvice(ctx.host, files, "the VF").fix}, then run vmhook recover`);
  }
  ctx.waitFor(`${file} reads 0`, () => ctx.host.readTrimmed(file) === "0");
}

function checkSetRecord(record: UndoRecord): SetRecord {
  const { action, vf, id, name } = record;
  if ((action !== "set-vgpu" && action !== "clear-vgpu") || typeof vf !== "string" || !PATTERNS.pciAddress.test(vf) || !Number.isSafeInteger(id) || (id as number) <= 0) {
    throw new VmhookError(`vgpu: the journal names VF ${JSON.stringify(vf)} and type ${JSON.stringify(id)}, which are not a PCI address and a type id; inspect it`);
  }
  return { action: "set-vgpu", vf, id: id as number, name: typeof name === "string" ? name : String(id) };
}

const setVgpuAction = defineAction<SetRecord, VgpuDevice[]>({ check: checkSetRecord, apply: setVgpu, undo: clearVgpu });

/** `vmhook doctor`: each VF can carry its vGPU type now (or carries it already). */
function check({ host, domain, elements }: CheckContext): Finding[] {
  let devices: VgpuDevice[];
  try {
    devices = parse(elements, domain);
  } catch {
    return []; // reported by the config check
  }
  return devices.map((device) => {
    const check = `vgpu ${device.vf}`;
    try {
      const plan = unlessAnotherDomains({ domain, journals: () => completeJournals(host) }, planVgpu(host, device));
      if (plan.refused) return fail(check, plan.refused.reason, "stop the VM whose vGPU holds the VF or the GPU, or pick another type or VF");
      return ok(check, plan.create ? `${device.vf} can carry vGPU type ${plan.id} (${plan.name})` : `${device.vf} carries vGPU type ${plan.id} already; vmhook uses it and leaves it at release`);
    } catch (error) {
      return failedWith(check, error, "fix the element or the host as the message says");
    }
  });
}

export default definePlugin<VgpuDevice[]>({
  name: "vgpu",
  summary: "sets an NVIDIA vGPU type (vGPU 17+, SR-IOV) on the domain's virtual functions at prepare, clears it at release",
  usage: '<vmhook:vgpu vf="PCI-ADDRESS" type="ID|NAME"/>  (one per VF)',
  // A VF is free to every domain naming it: planned and set under the host lock, a second prepare sees the first one's type
  // and journal (unlessAnotherDomains), not the "0" both read before either wrote, whether or not NVIDIA's driver refuses a rewrite.
  shared: true,

  parse,
  plan: { prepare: planPrepare },
  check,
  actions: {
    "set-vgpu": setVgpuAction,
    "clear-vgpu": setVgpuAction, // vmhook 0.1 named the record by its undo
  },
});
