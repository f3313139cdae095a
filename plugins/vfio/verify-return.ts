// The last check of a release: each GPU that had a display on the host (a DRM
// card, a render node, a framebuffer) is on its driver again AND those nodes
// are back. Planned at prepare right after vfio-pci's load, so its undo runs
// after every other but vfio-pci's unload (which shows nothing): after the
// modules came back (nvidia_drm makes NVIDIA's card node only once it is
// loaded). A release never says "done" for a black screen. When the check
// fails the entry stays in the journal, and `vmhook recover` checks again.
import { WaitTimedOut } from "../../lib/deadline.ts";
import { VmhookError } from "../../lib/errors.ts";
import type { Host } from "../../lib/host.ts";
import { checkSriovOrigin, goneFromBus, pciDeviceNodes, pciDriver, pciDriverRegistered, pciExists, sriovOrigin, type SriovOrigin } from "../../lib/pci.ts";
import { defineAction, type BaseContext, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { refuseIfStuck } from "../../lib/stuck-writes.ts";
import { PATTERNS } from "../../lib/validate.ts";
import { claimProviding } from "./driver.ts";
import type { Device } from "./survey.ts";

/** The kinds of node a GPU's driver makes: /dev/dri/cardN, /dev/dri/renderDN, /dev/fbN. */
const NODE_KINDS = ["card", "renderD", "fb"] as const;
type NodeKind = (typeof NODE_KINDS)[number];

interface VerifyRecord extends UndoRecord {
  action: "verify-return";
  /** What must be back: the driver, and the kinds of node it had made. */
  /** sriov: for a virtual function, what creates it again (lib/pci.ts). */
  devices: { address: string; driver: string; nodes: NodeKind[]; sriov: SriovOrigin | null }[];
  timeoutMs: number;
}

const NODE_NAME = new RegExp(`^(${NODE_KINDS.join("|")})\\d+$`);
const kindOf = (node: string): NodeKind | undefined => NODE_NAME.exec(node.split("/").pop()!)?.[1] as NodeKind | undefined;

/** The kinds of node the device has now, in NODE_KINDS order. */
function nodeKinds(host: Host, address: string): NodeKind[] {
  const kinds = new Set(pciDeviceNodes(host, address).filter((node) => host.exists(node)).map(kindOf));
  return NODE_KINDS.filter((kind) => kinds.has(kind));
}

/** The step, when a device that moves has display nodes now; none otherwise. */
export function verifyReturnStep(host: Host, devices: Device[], bindTimeoutMs: number): Step<VerifyRecord>[] {
  const shown = devices
    .filter((device) => device.driver !== undefined && !device.onVfio)
    .map((device) => ({ address: device.address, driver: device.driver!, nodes: nodeKinds(host, device.address), sriov: sriovOrigin(host, device.address) }))
    .filter((device) => device.nodes.length > 0);
  if (shown.length === 0) return [];
  const what = shown.map((device) => `${device.address} on ${device.driver} with ${device.nodes.join(", ")}`).join("; ");
  return [{ action: "verify-return", record: { action: "verify-return", devices: shown, timeoutMs: bindTimeoutMs }, description: `at release, check that the display is back: ${what}` }];
}

function verifyReturned(record: VerifyRecord, ctx: BaseContext): void {
  const { host } = ctx;
  // A device whose driver is blocked in the kernel is not back: say so now, not after the bound.
  refuseIfStuck(host, record.devices.map((device) => device.address));
  for (const { address, driver, nodes, sriov } of record.devices) {
    if (!pciExists(host, address)) throw new VmhookError(`vfio: the display of ${goneFromBus(host, address, sriov)}, then run vmhook recover`);
    if (!pciDriverRegistered(host, driver)) {
      // Another VM keeps the module unloaded: the device comes back with it. A claim only this VM holds is its own module's failed reload.
      const claim = claimProviding(ctx, driver);
      if (claim && ctx.claims.others(claim).length > 0) {
        ctx.log.info(`vfio: ${address} is back on ${driver} once ${claim} is loaded again (another VM keeps it unloaded); not checked now`);
        continue;
      }
      throw new VmhookError(`vfio: the display of ${address} is not back: driver ${driver} is not registered (its module is not loaded); load it (modprobe), then run vmhook recover`);
    }
    const missing = () => (pciDriver(host, address) === driver ? nodes.filter((kind) => !nodeKinds(host, address).includes(kind)) : [driver]);
    try {
      ctx.waitFor(`${address} is on ${driver} with ${nodes.join(", ")}`, () => missing().length === 0, { timeoutMs: record.timeoutMs });
    } catch (error) {
      if (!(error instanceof WaitTimedOut)) throw error;
      const now = pciDriver(host, address);
      const why = now === driver ? `its ${missing().map((kind) => `/dev/${kind === "fb" ? "fbN" : `dri/${kind}N`}`).join(", ")} did not come back` : `it is on ${now ?? "no driver"}, not ${driver}`;
      throw new VmhookError(`vfio: the display of ${address} is not back: ${why}; see dmesg, reload ${driver}'s module or reboot, then run vmhook recover`);
    }
    ctx.log.info(`vfio: ${address} is back on ${driver} with ${nodes.join(", ")}`);
  }
}

function checkVerify(record: UndoRecord): VerifyRecord {
  const devices = Array.isArray(record.devices) ? record.devices : [];
  const timeoutMs = Number.isSafeInteger(record.timeoutMs) && (record.timeoutMs as number) > 0 ? (record.timeoutMs as number) : 10_000;
  return {
    action: "verify-return",
    devices: devices.map((entry) => {
      const { address, driver, nodes, sriov } = (entry ?? {}) as { address?: unknown; driver?: unknown; nodes?: unknown; sriov?: unknown };
      const kinds = Array.isArray(nodes) ? nodes : [];
      if (typeof address !== "string" || !PATTERNS.pciAddress.test(address) || typeof driver !== "string" || !PATTERNS.moduleName.test(driver) || !kinds.every((kind) => NODE_KINDS.includes(kind))) {
        throw new VmhookError(`vfio: not a verify-return record: ${JSON.stringify(entry).slice(0, 120)}`);
      }
      return { address, driver, nodes: kinds as NodeKind[], sriov: checkSriovOrigin(sriov) };
    }),
    timeoutMs,
  };
}

export const verifyReturnAction = defineAction<VerifyRecord>({ check: checkVerify, apply: () => {}, undo: verifyReturned });
