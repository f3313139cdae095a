// The vfio survey reads every process's open files (/proc/PID/fd) only when
// something could hold the GPU: a device without DRM or fbdev nodes (a second
// GPU already on vfio-pci, say) cannot be held, so prepare skips the scan.
// Likewise the rest of the PCI bus is read for NVIDIA's modules only when a
// device that goes is on nvidia. The host settings are read once per run,
// modules.dep no more often than what it answers needs, and no state file is
// opened that is not there (a failed open throws: docs/bench.md, stop 47).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { paths } from "../../lib/paths.ts";
import { GpuKernel } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";

const UUID = "0b5c64e3-55a1-4b84-9d2b-4e0a3e7d2f10";
const GPU = "0000:01:00.0";

const DOMAIN = `<domain><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices>
</domain>`;

/** The host keeps its iGPU (held by Xorg); the VM's GPU is on amdgpu, with or without device nodes. */
function workstation(gpuNodes: string[]): GpuKernel {
  return new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, nodes: gpuNodes })
    .process(500, "Xorg", ["/dev/dri/card0"]);
}

/** The paths passed to one of the simulated host's path readers from now on that `wanted` picks. */
function watch(kernel: GpuKernel, method: "list" | "readTrimmed" | "readlink", wanted: (hostPath: string) => boolean): string[] {
  const seen: string[] = [];
  const original: (hostPath: string) => unknown = kernel.sim[method].bind(kernel.sim);
  Object.assign(kernel.sim, {
    [method]: (hostPath: string) => {
      if (wanted(hostPath)) seen.push(hostPath);
      return original(hostPath);
    },
  });
  return seen;
}

/** How often prepare listed /proc. */
async function procScans(kernel: GpuKernel): Promise<number> {
  const scans = watch(kernel, "list", (hostPath) => hostPath === "/proc");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  return scans.length;
}

test("a GPU with device nodes: prepare looks for processes holding them", async () => {
  assert.ok((await procScans(workstation(["card1", "renderD129"]))) > 0);
});

test("a GPU without device nodes, not in single-GPU mode: nothing can hold it, /proc is not scanned", async () => {
  assert.is(await procScans(workstation([])), 0);
});

/** How many of a device's sysfs files prepare read (single-GPU mode off, so nothing else looks at the host's card). */
async function readsOf(kernel: GpuKernel, address: string): Promise<number> {
  let reads = 0;
  // The simulated kernel's modprobe looks at drivers too: not the hook's reads.
  const count = (hostPath: string) => {
    if (!kernel.sim.inKernel && hostPath.startsWith(`/sys/bus/pci/devices/${address}/`)) reads++;
  };
  const { readTrimmed, readlink } = kernel.sim;
  kernel.sim.readTrimmed = (hostPath) => (count(hostPath), readTrimmed.call(kernel.sim, hostPath));
  kernel.sim.readlink = (hostPath) => (count(hostPath), readlink.call(kernel.sim, hostPath));
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN.replace("<vmhook:vfio/>", '<vmhook:vfio single-gpu="no"/>'));
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  return reads;
}

test("a GPU on amdgpu: the host's other card is not read (whether it is on nvidia matters only when a device that goes is)", async () => {
  assert.is(await readsOf(workstation(["card1"]), "0000:00:02.0"), 0);
});

test("release with no write stuck: which PCI drivers each module registers is not looked up (every driver's module link)", async () => {
  const kernel = workstation(["card1"]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  const looked = watch(kernel, "readlink", (hostPath) => /^\/sys\/bus\/pci\/drivers\/[^/]+\/module$/.test(hostPath));
  const release = await runHookEvent(kernel.sim, "release", "end", DOMAIN);
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.not.ok(kernel.loaded("vfio_pci"));
  assert.equal(looked, []);
});

test("prepare reads the host settings once: the policy rule and the steps see the same snapshot", async () => {
  const kernel = workstation(["card1"]);
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 10 } } }));
  const reads = watch(kernel, "readTrimmed", (hostPath) => hostPath === paths.hostConfig);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(reads.length, 1);
});

test("prepare reads modules.dep once (500 KB on a distribution kernel): the closure of what modprobe vfio-pci loads takes the dependencies from its one line, soft dependencies included", async () => {
  const kernel = workstation(["card1"]);
  const reads = watch(kernel, "readTrimmed", (hostPath) => hostPath.endsWith("/modules.dep"));
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(reads.length, 1);
});

test("without modules.softdep (busybox's depmod writes none, as in the kernel bench), prepare reads modules.dep twice, for the load and the IOMMU backend, and looks no further once vfio_iommu_type1 is there: not for iommufd, not in modules.builtin", async () => {
  const kernel = workstation(["card1"]);
  kernel.sim.remove(`/lib/modules/${kernel.sim.readTrimmed("/proc/sys/kernel/osrelease")}/modules.softdep`);
  const reads = watch(kernel, "readTrimmed", (hostPath) => !kernel.sim.inKernel && /\/modules\.(dep|builtin)$/.test(hostPath));
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.equal(reads.map((hostPath) => hostPath.split("/").pop()), ["modules.dep", "modules.dep"]);
});

test("prepare and release try to open no state file that is not there (stuck-write notes, the journal, the claims ledger): each is looked at first, as an open that fails costs an exception", async () => {
  const kernel = workstation(["card1"]);
  const missed: string[] = [];
  const { openFile } = kernel.sim;
  kernel.sim.openFile = (hostPath, ...rest) => {
    try {
      return openFile.call(kernel.sim, hostPath, ...rest);
    } catch (error) {
      if (hostPath.startsWith("/run/vmhook/")) missed.push(hostPath);
      throw error;
    }
  };
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  const release = await runHookEvent(kernel.sim, "release", "end", DOMAIN);
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.equal(missed, []);
});

test("prepare does not read the host's ids= for vfio-pci (the kernel command line, modprobe.d's options), which only plan and doctor report: each modprobe.d file is read once, for what modprobe vfio-pci loads (softdep lines)", async () => {
  const kernel = workstation(["card1"]);
  kernel.sim.file("/etc/modprobe.d/vfio.conf", "options vfio-pci ids=1002:744c\n").file("/proc/cmdline", "root=/dev/sda1 vfio-pci.ids=10de:2204");
  // The simulated kernel's modprobe reads them too: not the hook's reads.
  const reads = watch(kernel, "readTrimmed", (hostPath) => !kernel.sim.inKernel && (hostPath === "/proc/cmdline" || hostPath.startsWith("/etc/modprobe.d/")));
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.equal(reads, ["/etc/modprobe.d/vfio.conf"]);
});

test.run();
