// The vfio survey reads every process's open files (/proc/PID/fd) only when
// something could hold the GPU: a device without DRM or fbdev nodes (a second
// GPU already on vfio-pci, say) cannot be held, so prepare skips the scan.
import { test } from "uvu";
import * as assert from "uvu/assert";
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

/** How often prepare listed /proc. */
async function procScans(kernel: GpuKernel): Promise<number> {
  let scans = 0;
  const list = kernel.sim.list.bind(kernel.sim);
  kernel.sim.list = (hostPath: string) => {
    if (hostPath === "/proc") scans++;
    return list(hostPath);
  };
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", DOMAIN);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  return scans;
}

test("a GPU with device nodes: prepare looks for processes holding them", async () => {
  assert.ok((await procScans(workstation(["card1", "renderD129"]))) > 0);
});

test("a GPU without device nodes, not in single-GPU mode: nothing can hold it, /proc is not scanned", async () => {
  assert.is(await procScans(workstation([])), 0);
});

test.run();
