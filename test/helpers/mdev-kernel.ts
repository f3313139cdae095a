// Simulated hosts for the mdev and vgpu plugins: Intel GVT-g's sysfs layout
// (parent 0000:00:02.0 with types i915-GVTg_V5_1/2/4/8) with a simulated
// kernel that creates and removes mdevs, and NVIDIA vGPU 17+ virtual functions.
import * as path from "node:path";
import { SimHost } from "./simhost.ts";

export const GPU = "0000:00:02.0";
export const GPU_DIR = `/sys/devices/pci0000:00/${GPU}`;
export interface SimType {
  id: string;
  available: number;
  description?: string;
}

/** GVT-g on a Kaby Lake GPU: what the i915 driver offers with i915.enable_gvt=1 and kvmgt loaded. */
export const GVT_TYPES: SimType[] = [
  { id: "i915-GVTg_V5_8", available: 2, description: "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1024x768\nweight: 2" },
  { id: "i915-GVTg_V5_4", available: 2, description: "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4" },
  { id: "i915-GVTg_V5_2", available: 1, description: "low_gm_size: 256MB\nhigh_gm_size: 1024MB\nfence: 4\nresolution: 1920x1200\nweight: 8" },
  { id: "i915-GVTg_V5_1", available: 1, description: "low_gm_size: 512MB\nhigh_gm_size: 2048MB\nfence: 4\nresolution: 1920x1200\nweight: 16" },
];

/** An mdev parent as the kernel shows it: a device directory on its driver (i915 for GVT-g), its mdev_bus link and its types. */
export function addParent(sim: SimHost, name: string, deviceDir: string, types: SimType[], driver = "i915"): void {
  sim.link(`${deviceDir}/driver`, path.posix.relative(deviceDir, `/sys/bus/pci/drivers/${driver}`));
  registerMdevParent(sim, name, deviceDir, types);
}

/** mdev_register_parent(), which the parent's driver calls in its probe (i915's GVT-g, nvidia's vGPU manager): the mdev_bus link and the types. */
export function registerMdevParent(sim: SimHost, name: string, deviceDir: string, types: SimType[]): void {
  sim.link(`/sys/class/mdev_bus/${name}`, path.posix.relative("/sys/class/mdev_bus", deviceDir));
  for (const type of types) {
    const dir = `${deviceDir}/mdev_supported_types/${type.id}`;
    sim.file(`${dir}/name`, type.id.split("-").pop()!).file(`${dir}/available_instances`, type.available).file(`${dir}/device_api`, "vfio-pci").file(`${dir}/create`).dir(`${dir}/devices`);
    if (type.description) sim.file(`${dir}/description`, type.description);
  }
}

/** mdev_unregister_parent(), which the parent's driver calls in its remove(): every mdev on the parent goes, then its types and its mdev_bus link. */
export function unregisterMdevParent(sim: SimHost, name: string): void {
  const deviceDir = path.posix.resolve("/sys/class/mdev_bus", sim.readlink(`/sys/class/mdev_bus/${name}`)!);
  for (const uuid of sim.list("/sys/bus/mdev/devices")) {
    if (path.posix.resolve("/sys/bus/mdev/devices", sim.readlink(`/sys/bus/mdev/devices/${uuid}`)!) === `${deviceDir}/${uuid}`) {
      sim.remove(`/sys/bus/mdev/devices/${uuid}`);
      sim.remove(`${deviceDir}/${uuid}`);
    }
  }
  sim.remove(`${deviceDir}/mdev_supported_types`);
  sim.remove(`/sys/class/mdev_bus/${name}`);
}

export function errno(code: string, what: string): Error {
  return Object.assign(new Error(`${code}: ${what}`), { code });
}

/** The mdev core: create makes the device (mdev_type link, on GVT-g's mdev driver, remove file, bus link) and takes an instance; remove gives it back. */
export function simulateMdevKernel(sim: SimHost): void {
  sim.dir("/sys/bus/mdev/devices");
  sim.onWrite(/^\/sys\/class\/mdev_bus\/[^/]+\/mdev_supported_types\/[^/]+\/create$/, (uuid, file) => {
    const [, , , , parent, , type] = file.split("/");
    // The parent's driver let go of it (mdev_unregister_parent): the path leads nowhere.
    const parentLink = sim.readlink(`/sys/class/mdev_bus/${parent}`);
    if (!parentLink) throw errno("ENOENT", file);
    const deviceDir = path.posix.resolve("/sys/class/mdev_bus", parentLink);
    const typeDir = `${deviceDir}/mdev_supported_types/${type}`;
    if (!/^[0-9a-f-]{36}$/.test(uuid)) throw errno("EINVAL", "not a UUID");
    if (sim.exists(`/sys/bus/mdev/devices/${uuid}`)) throw errno("EEXIST", uuid);
    const available = Number(sim.readTrimmed(`${typeDir}/available_instances`));
    if (available < 1) throw errno("EINVAL", "no instance left");
    sim.file(`${typeDir}/available_instances`, available - 1);
    sim.link(`${deviceDir}/${uuid}/mdev_type`, `../mdev_supported_types/${type}`).file(`${deviceDir}/${uuid}/remove`);
    sim.link(`${deviceDir}/${uuid}/driver`, path.posix.relative(`${deviceDir}/${uuid}`, "/sys/bus/mdev/drivers/intel_vgpu_mdev"));
    sim.link(`/sys/bus/mdev/devices/${uuid}`, path.posix.relative("/sys/bus/mdev/devices", `${deviceDir}/${uuid}`));
    sim.link(`${typeDir}/devices/${uuid}`, `../../../${uuid}`);
  });
  sim.onWrite(/^\/sys\/bus\/mdev\/devices\/[^/]+\/remove$/, (value, file) => {
    const uuid = file.split("/")[5]!;
    const deviceDir = path.posix.resolve("/sys/bus/mdev/devices", sim.readlink(`/sys/bus/mdev/devices/${uuid}`)!);
    const typeDir = path.posix.resolve(deviceDir, sim.readlink(`${deviceDir}/mdev_type`)!);
    if (value !== "1") throw errno("EINVAL", value);
    sim.file(`${typeDir}/available_instances`, Number(sim.readTrimmed(`${typeDir}/available_instances`)) + 1);
    sim.remove(`${typeDir}/devices/${uuid}`);
    sim.remove(`/sys/bus/mdev/devices/${uuid}`);
    sim.remove(deviceDir);
  });
}

/** The domain XML's <hostdev> for an mdev, and for a PCI function (DDDD:BB:SS.F). */
export const mdevHostdevXml = (uuid: string) => `<hostdev mode='subsystem' type='mdev' managed='no' model='vfio-pci' display='off'><source><address uuid='${uuid}'/></source></hostdev>`;
export function pciHostdevXml(address: string): string {
  const [domain, bus, slot, fn] = address.split(/[:.]/);
  return `<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x${domain}' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev>`;
}

/** A host's /run exists before vmhook writes its journal there, and /proc before its helpers run (lib/bounded-write.ts). */
export const newHost = () => new SimHost().dir("/run").dir("/proc");

export function gvtHost(types = GVT_TYPES): SimHost {
  const sim = newHost();
  simulateMdevKernel(sim);
  addParent(sim, GPU, GPU_DIR, types);
  return sim;
}

// ---- NVIDIA vGPU 17+ on SR-IOV virtual functions ------------------------------

export const PF = "0000:41:00.0";
export const VF = "0000:41:00.4";
export const VF2 = "0000:41:00.5";
export const CREATABLE = "ID    : vGPU Name\n1433 : NVIDIA L40S-12Q\n1434 : NVIDIA L40S-24Q\n1435 : NVIDIA L40S-48Q\n";

/** Virtual functions of an L40S on NVIDIA's driver under its vGPU manager: setting a type empties the VF's creatable list. */
export function nvidiaHost(sim = newHost(), vfs = [VF, VF2]): SimHost {
  sim.dir(`/sys/devices/pci0000:40/${PF}`).link(`/sys/bus/pci/devices/${PF}`, `../../../devices/pci0000:40/${PF}`);
  for (const vf of vfs) {
    const dir = `/sys/devices/pci0000:40/${vf}`;
    sim.link(`/sys/bus/pci/devices/${vf}`, `../../../devices/pci0000:40/${vf}`).link(`${dir}/physfn`, `../${PF}`).link(`${dir}/driver`, "../../../bus/pci/drivers/nvidia");
    sim.file(`${dir}/nvidia/creatable_vgpu_types`, CREATABLE).file(`${dir}/nvidia/current_vgpu_type`, 0);
  }
  sim.onWrite(/\/nvidia\/current_vgpu_type$/, (value, file) => {
    const dir = path.posix.dirname(file);
    const current = sim.readTrimmed(`${dir}/current_vgpu_type`);
    if (value === "0") {
      sim.file(`${dir}/creatable_vgpu_types`, CREATABLE).file(`${dir}/current_vgpu_type`, 0);
      return;
    }
    if (current !== "0") throw errno("EBUSY", `VF carries type ${current}`);
    if (!new RegExp(`^${value} :`, "m").test(sim.read(`${dir}/creatable_vgpu_types`))) throw errno("EINVAL", `type ${value} not creatable`);
    sim.file(`${dir}/creatable_vgpu_types`, "ID    : vGPU Name\n").file(`${dir}/current_vgpu_type`, value);
  });
  return sim;
}

