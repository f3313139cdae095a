// The vfio plugin on a simulated kernel, for what the QEMU guest cannot show:
// NVIDIA's module stack, systemd display managers, multi-function GPUs,
// several IOMMU groups, non-isolated groups, and a clean host after every
// failure.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { readJournal } from "../../lib/journal.ts";
import { moduleClosure, moduleDependencies, vfioVariantModule } from "../../lib/kernel-modules.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import { DEFAULT_SETTINGS } from "../../lib/settings.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { GpuKernel, nvidiaDesktop, CGROUP_MOUNTS, rcServiceSddm, withoutSystemd, type CgroupLayout, type SimUnit } from "../helpers/gpu-kernel.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { assertPlanIsPrepare, plannedSteps } from "../helpers/plan.ts";
import { addDisk, mountsAndSwaps } from "../helpers/storage.ts";
import { GVT_TYPES, mdevHostdevXml } from "../helpers/mdev-kernel.ts";

const UUID = "0b5c64e3-55a1-4b84-9d2b-4e0a3e7d2f10";
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";

function domainXml(vfio: string, hostdevs: { address: string; managed?: boolean; model?: string }[] = [{ address: GPU }]): string {
  const hostdev = ({ address, managed, model }: { address: string; managed?: boolean; model?: string }) => {
    const [, domain, bus, slot, fn] = /^(\w{4,8}):(\w\w):(\w\w)\.(\d)$/.exec(address)!;
    const driver = model === undefined ? "" : `<driver model='${model}'/>`;
    return `<hostdev mode='subsystem' type='pci' managed='${managed ? "yes" : "no"}'>${driver}<source><address domain='0x${domain}' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev>`;
  };
  return `<domain type='kvm'><name>win11</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${vfio}</vmhook:hooks></metadata>
  <devices>${hostdevs.map(hostdev).join("")}</devices></domain>`;
}

function settings(kernel: GpuKernel, vfio: Record<string, unknown>): void {
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { vfio } }));
}

/** A workstation: an AMD GPU for the VM (group 1), an Intel iGPU for the host (boot VGA), a USB controller (group 7). */
function twoGpuWorkstation(): GpuKernel {
  return new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .module({ name: "xhci_pci", driver: "xhci_hcd", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0", "fb0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, nodes: ["card1", "renderD129"], resetMethod: "bus" })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x1002", nativeDriver: "snd_hda_intel", group: 1 })
    .device({ address: "0000:05:00.0", classCode: "0x0c0330", vendor: "0x1b21", nativeDriver: "xhci_hcd", group: 7 })
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card0"]] } });
}

const firstLine = (stderr: string) => stderr.split("\n")[0]!;

/** What prepare runs for the NVIDIA desktop's single-GPU handover, in order (systemctl's queries left out). */
const NVIDIA_SINGLE_GPU_PREPARE = [
  "modprobe vfio-pci ids=",
  "systemctl stop display-manager.service",
  "systemctl stop nvidia-persistenced.service",
  "rmmod nvidia_drm",
  "rmmod nvidia_modeset",
  "rmmod nvidia_uvm",
  "rmmod nvidia",
];

test("NVIDIA single GPU: display manager, console, efifb, persistenced and modules go first; both functions reach vfio-pci; release puts all back", async () => {
  const kernel = nvidiaDesktop();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");

  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(kernel.driverOf(AUDIO), "vfio-pci", "the slot's audio function goes along");
  assert.ok(kernel.sim.exists("/dev/vfio/1"));
  assert.is(kernel.driverOf("0000:00:01.0"), undefined, "the root port in the group is left alone");
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "0");
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon0/bind"), "0", "the dummy console is not touched (it was 0)");
  assert.not.ok(kernel.sim.exists("/sys/bus/platform/drivers/efi-framebuffer/efi-framebuffer.0"));
  assert.not.ok(kernel.units.get("display-manager.service")!.active);
  assert.not.ok(kernel.units.get("nvidia-persistenced.service")!.active);
  for (const module of ["nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"]) assert.not.ok(kernel.loaded(module), module);
  assert.ok(kernel.loaded("snd_hda_intel"), "the audio driver stays: unbinding suffices");

  const order = kernel.sim.execs.filter((e) => e.command !== "systemctl" || e.args[0] === "stop").map((e) => `${e.command} ${e.args.join(" ")}`);
  assert.equal(order, NVIDIA_SINGLE_GPU_PREPARE);

  const preparedExecs = kernel.sim.execs.length;
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  // What modprobe loaded goes with one rmmod, each module before those it uses.
  const unloads = kernel.sim.execs.slice(preparedExecs).filter((e) => e.command === "rmmod").map((e) => e.args.join(" "));
  assert.equal(unloads, ["vfio_iommu_type1 vfio_pci vfio_pci_core vfio"]);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

// Each failure point of the NVIDIA handover: prepare fails naming the cause and the host is exactly as before.
// undone: the changes the rollback counts where the failing step's refused write changed nothing, so it is not one of them (it used to be).
const FAILURES: { name: string; inject: (kernel: GpuKernel) => void; vfio?: string; message: string; undone?: number }[] = [
  { name: "the display manager does not stop", inject: (k) => (k.units.get("display-manager.service")!.failStop = "Job failed"), message: "systemctl stop display-manager.service failed: Job failed" },
  {
    name: "a program of the graphical session keeps the GPU after the display manager stopped",
    inject: (k) => k.session(2, { type: "wayland", seat: "seat0", service: "gdm-password", user: "ana", uid: 1000, processes: { 700: ["obs", ["/dev/dri/renderD128"]] } }),
    message: "the GPU is still in use after stopping the display manager: pid 700 (obs) holds /dev/dri/renderD128",
  },
  { name: "the console does not unbind", inject: (k) => k.sim.failWrite("/sys/class/vtconsole/vtcon1/bind", "EIO"), message: "simulated failure writing /sys/class/vtconsole/vtcon1/bind", undone: 4 },
  { name: "efifb does not unbind", inject: (k) => k.sim.failWrite("/sys/bus/platform/drivers/efi-framebuffer/unbind", "EBUSY"), message: "EBUSY", undone: 5 },
  { name: "a module stays in use", inject: (k) => k.pinnedModules.add("nvidia"), message: "cannot unload module nvidia: rmmod: ERROR: Module nvidia is in use" },
  { name: "vfio-pci does not load", inject: (k) => k.brokenModules.add("vfio_pci"), message: "modprobe vfio-pci failed" },
  { name: "the audio function does not bind to vfio-pci", inject: (k) => k.refuseVfio.add(AUDIO), message: `waiting until ${AUDIO} is bound to vfio-pci` },
  { name: "an extra module does not load after the devices moved", vfio: 'load-modules="kvmfr"', inject: (k) => k.module({ name: "kvmfr" }).brokenModules.add("kvmfr"), message: "modprobe kvmfr failed" },
];

for (const failure of FAILURES) {
  test(`failure: ${failure.name} → prepare fails and leaves nothing behind`, async () => {
    const kernel = nvidiaDesktop();
    settings(kernel, { stopTimeoutSeconds: 1, bindTimeoutSeconds: 1 });
    failure.inject(kernel);
    const before = kernel.sim.snapshot();
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml(`<vmhook:vfio ${failure.vfio ?? ""}/>`));
    assert.is(result.code, 1);
    assert.match(firstLine(result.stderr), failure.message);
    assert.match(result.stderr, "the host was left as it was");
    if (failure.undone !== undefined) assert.match(result.stderr, `the host was left as it was (${failure.undone} change(s) undone)`);
    kernel.sim.clearFailures();
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.stateFiles(), []);
  });
}

/** The kernel bench's guest: bochs-drm with fb0, fbcon on vtcon0 and a modular dummy console, so vtconsole bind cannot take fbcon back. */
function bochsGuest(): GpuKernel {
  return new GpuKernel({ builtinConsole: false })
    .module({ name: "bochs", driver: "bochs-drm", loaded: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1234", nativeDriver: "bochs-drm", group: 1, bootVga: true, nodes: ["card0", "fb0"] })
    .vtconsole("vtcon0", "(M) frame buffer device", true)
    .vtconsole("vtcon1", "(M) dummy device", false);
}

test("a modular dummy console: prepare failing after the console let go maps tty1 to the GPU's framebuffer, and fbcon takes the consoles back", async () => {
  const kernel = bochsGuest();
  kernel.sim.failWrite(`/sys/bus/pci/devices/${GPU}/driver/unbind`, "EBUSY");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "EBUSY");
  assert.match(result.stderr, "the host was left as it was");
  assert.equal(kernel.sim.ioctls, [{ path: "/dev/fb0", request: 0x4610, argument: [1, 0, 0, 0, 0, 0, 0, 0] }]);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a modular dummy console: after the VM, the GPU's framebuffer registers again and fbcon comes back by itself", async () => {
  const kernel = bochsGuest();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon0/bind"), "0");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.ioctls, []);
  assert.equal(kernel.sim.snapshot(), before);
});

/**
 * The GPU's handover and back: what prepare did, in order (the programs run
 * beside the hook, the writes into consoles, drivers and overrides), once the
 * GPU is on vfio-pci and release has left the host as it was.
 */
async function handoverEvents(kernel: GpuKernel): Promise<string[]> {
  const events: string[] = [];
  const runInHelper = kernel.sim.runInHelper.bind(kernel.sim);
  kernel.sim.runInHelper = async (command, args, timeoutMs, started) => {
    events.push(`${command} starts`);
    // A real modprobe of vfio-pci outlasts the few writes that let the GPU go: it registers the driver once an override is written (at the latest after a second).
    for (let waited = 0; waited < 1000 && !events.some((event) => event.endsWith("/driver_override")); waited += 5) await new Promise((resolve) => setTimeout(resolve, 5));
    const result = await runInHelper(command, args, timeoutMs, started);
    events.push(`${command} ends`);
    return result;
  };
  const writeInHelper = kernel.sim.writeInHelper.bind(kernel.sim);
  kernel.sim.writeInHelper = (hostPath, data, timeoutMs, started) => {
    events.push(`write ${hostPath}`);
    return writeInHelper(hostPath, data, timeoutMs, started);
  };
  const write = kernel.sim.write.bind(kernel.sim);
  kernel.sim.write = (hostPath, data) => {
    if (hostPath.startsWith("/sys/class/vtconsole/") || hostPath.endsWith("/driver_override")) events.push(`write ${hostPath}`);
    write(hostPath, data);
  };
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  const prepared = [...events];
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
  return prepared;
}

test("vfio-pci loads in the background: modprobe runs while the console and the GPU let go; the unbound GPU gets its override at once, and vfio-pci takes it as it registers", async () => {
  assert.equal(await handoverEvents(bochsGuest()), [
    "modprobe starts",
    "write /sys/class/vtconsole/vtcon0/bind",
    `write /sys/bus/pci/devices/${GPU}/driver/unbind`,
    `write /sys/bus/pci/devices/${GPU}/driver_override`,
    "modprobe ends",
  ]);
});

test("vfio-pci already registered: nothing loads, and the GPU is probed after its override", async () => {
  const kernel = bochsGuest();
  kernel.sim.exec("modprobe", ["vfio-pci"], { timeoutMs: 1000 });
  assert.equal(await handoverEvents(kernel), [
    "write /sys/class/vtconsole/vtcon0/bind",
    `write /sys/bus/pci/devices/${GPU}/driver/unbind`,
    `write /sys/bus/pci/devices/${GPU}/driver_override`,
    "write /sys/bus/pci/drivers_probe",
  ]);
});

test("the load of vfio-pci is journaled, before modprobe runs, with all that modprobe loads (modules.dep, and modules.softdep: vfio_iommu_type1 after vfio), so a hook killed meanwhile leaves a journal that unloads it all", async () => {
  const kernel = bochsGuest();
  kernel.sim.file("/proc/sys/kernel/osrelease", "6.1.0-sim").file(
    "/lib/modules/6.1.0-sim/modules.dep",
    "kernel/drivers/gpu/drm/tiny/bochs.ko: kernel/drivers/gpu/drm/drm.ko\nkernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/vfio.ko:\nkernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n",
  );
  let journaled: unknown;
  const runInHelper = kernel.sim.runInHelper.bind(kernel.sim);
  kernel.sim.runInHelper = (command, args, timeoutMs, started) => {
    if (command === "modprobe") journaled = readJournal(kernel.sim, UUID)!.entries.find((entry) => entry.undo.action === "load-modules")?.undo.modules;
    return runInHelper(command, args, timeoutMs, started);
  };
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  assert.equal(journaled, ["vfio_pci", "vfio_pci_core", "vfio", "vfio_iommu_type1"]);
  assert.equal(readJournal(kernel.sim, UUID)!.entries.find((entry) => entry.undo.action === "load-modules")?.undo.modules, ["vfio", "vfio_iommu_type1", "vfio_pci_core", "vfio_pci"], "after modprobe: what it did load");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a soft dependency from /etc/modprobe.d (softdep vfio-pci post: kvmfr) is journaled before modprobe runs: a hook killed after modprobe loaded it leaves a journal whose recover unloads it too", async () => {
  const kernel = bochsGuest().module({ name: "kvmfr" }).module({ name: "vfio_pci", uses: ["vfio_pci_core"], driver: "vfio-pci", post: ["kvmfr"] });
  // The simulated modprobe follows that softdep; the host has it in its modprobe.d, not in the module tree's modules.softdep.
  kernel.sim.file("/lib/modules/6.1.0-sim/modules.softdep", "softdep vfio post: vfio_iommu_type1").file("/etc/modprobe.d/looking-glass.conf", "softdep vfio-pci post: kvmfr\n");
  const runInHelper = kernel.sim.runInHelper.bind(kernel.sim);
  kernel.sim.runInHelper = async (command, args, timeoutMs, started) => {
    const run = await runInHelper(command, args, timeoutMs, started);
    // Killed (kill -9, OOM) once modprobe returned, before its journal entry says what it loaded.
    if (command === "modprobe") kernel.sim.killAtChange(1);
    return run;
  };
  const before = kernel.sim.snapshot();
  await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.ok(kernel.sim.revive(), "the hook was killed");
  assert.ok(kernel.loaded("kvmfr"), "modprobe vfio-pci loaded kvmfr");
  const recover = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recover.code, 0, recover.stderr);
  assert.not.ok(kernel.loaded("kvmfr"), "recover unloaded kvmfr with vfio-pci");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

/** A module missing from the single-GPU desktop's module tree (modules.dep as given): prepare refuses with `reason` and `remedy`, before anything changes. */
async function assertMissingModuleRefused(vfio: string, modulesDep: string, reason: string, remedy: string) {
  const kernel = nvidiaDesktop();
  kernel.sim.file("/proc/sys/kernel/osrelease", "6.1.0-sim").file("/lib/modules/6.1.0-sim/modules.dep", modulesDep).file("/lib/modules/6.1.0-sim/modules.builtin", "kernel/drivers/pci/pcieport.ko\n");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml(vfio));
  assert.is(result.code, 1);
  assert.is(firstLine(result.stderr), reason);
  assert.match(result.stderr, remedy);
  assert.equal(kernel.sim.snapshot(), before);
  assert.ok(kernel.units.get("display-manager.service")!.active, "the display manager was never stopped");
  assert.not.ok(kernel.sim.execs.some((e) => e.command === "modprobe" || (e.command === "systemctl" && e.args[0] === "stop")));
}

test("vfio-pci missing from the running kernel's modules (modules.dep, modules.builtin) is refused at plan, before the display manager stops", async () => {
  await assertMissingModuleRefused(
    "<vmhook:vfio/>",
    "kernel/drivers/gpu/drm/drm.ko:\n",
    "vmhook: vfio: module vfio-pci is not in this kernel's modules (/lib/modules/6.1.0-sim: modules.dep, modules.builtin); install the modules of kernel 6.1.0-sim, or boot a kernel built with CONFIG_VFIO_PCI",
    "modprobe vfio-pci would fail once the display had let go",
  );
});

test("a load-modules module missing from the running kernel's modules (kvmfr's DKMS not built for it) is refused at plan, before the display manager stops", async () => {
  await assertMissingModuleRefused(
    '<vmhook:vfio load-modules="kvmfr"/>',
    "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n",
    "vmhook: vfio: module kvmfr is not in this kernel's modules (/lib/modules/6.1.0-sim: modules.dep, modules.builtin); install kvmfr for kernel 6.1.0-sim (its DKMS package builds it for each kernel), or remove it from load-modules",
    "modprobe kvmfr would fail once the display had let go",
  );
});

test("a kernel with vfio-pci but no IOMMU backend (vfio_iommu_type1 and iommufd neither loaded nor in its modules) is refused at plan, before the display manager stops: QEMU could not use the device", async () => {
  await assertMissingModuleRefused(
    "<vmhook:vfio/>",
    "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/vfio.ko:\n",
    "vmhook: vfio: no VFIO IOMMU backend for kernel 6.1.0-sim: vfio_iommu_type1 (and iommufd) is neither loaded nor in this kernel's modules (/lib/modules/6.1.0-sim: modules.dep, modules.builtin), so QEMU could not map the VM's memory for the device; install the modules of kernel 6.1.0-sim (its vfio_iommu_type1.ko), or boot a kernel built with CONFIG_VFIO_IOMMU_TYPE1",
    "QEMU would fail to open the device (No available IOMMU models) once the display had let go",
  );
});

test("the running kernel's modules removed (an upgrade's autoremove) and no IOMMU backend loaded: prepare refuses before the display manager stops, as vmhook doctor's vfio modules check fails on the same host", async () => {
  const kernel = nvidiaDesktop();
  kernel.sim.file("/proc/sys/kernel/osrelease", "6.1.0-sim");
  fs.rmSync(kernel.sim.resolve("/lib/modules"), { recursive: true, force: true });
  const xml = domainXml("<vmhook:vfio/>");
  const doctored = (await runDoctor(kernel.sim, { file: "vm.xml", xml })).host.find((finding) => finding.check === "vfio modules")!;
  assert.equal([doctored.status, doctored.reason], ["fail", "vfio, vfio_pci, a VFIO IOMMU backend (vfio_iommu_type1 or iommufd) not found for kernel 6.1.0-sim (neither loaded nor in /lib/modules/6.1.0-sim/modules.dep or modules.builtin)"]);
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(result.code, 1, "prepare went ahead where doctor said the modules are missing");
  assert.match(firstLine(result.stderr), /^vmhook: vfio: no VFIO IOMMU backend for kernel 6\.1\.0-sim: vfio_iommu_type1 \(and iommufd\) is neither loaded nor in this kernel's modules/);
  assert.equal(kernel.sim.snapshot(), before);
  assert.ok(kernel.units.get("display-manager.service")!.active, "the display manager was never stopped");
});

test("vfio_iommu_type1 built into the kernel (modules.builtin), or iommufd in its modules instead: no refusal", async () => {
  for (const [dep, builtin] of [
    ["kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/vfio.ko:\n", "kernel/drivers/vfio/vfio_iommu_type1.ko\n"],
    ["kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/vfio.ko:\nkernel/drivers/iommu/iommufd/iommufd.ko:\n", ""],
  ]) {
    const kernel = nvidiaDesktop();
    kernel.sim.file("/lib/modules/6.1.0-sim/modules.dep", dep!).file("/lib/modules/6.1.0-sim/modules.builtin", builtin!);
    const plan = await cli(["plan", kernel.sim.file("/vm.xml", domainXml("<vmhook:vfio/>")).resolve("/vm.xml"), "--root", kernel.sim.root], kernel.sim);
    assert.is(plan.code, 0, plan.stdout + plan.stderr);
  }
});

test("a module's dependencies are its own line of modules.dep: either spelling of its file, compressed or not, never a module whose name merely ends or starts the same", () => {
  const { sim } = bochsGuest();
  sim.file(
    "/lib/modules/6.1.0-sim/modules.dep",
    [
      "kernel/drivers/vfio/pci/my-vfio-pci.ko: kernel/drivers/other.ko",
      "kernel/drivers/vfio/pci/vfio-pci-core.ko.xz: kernel/drivers/vfio/vfio.ko.xz kernel/virt/lib/irqbypass.ko.xz",
      "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/drivers/vfio/pci/vfio-pci-core.ko.xz kernel/drivers/vfio/vfio.ko.xz kernel/virt/lib/irqbypass.ko.xz",
      "kernel/drivers/vfio/vfio.ko.xz:",
      "updates/dkms/vendor_reset.ko: kernel/lib/helper-lib.ko",
      "kernel/drivers/hid/hid_mixed-spelling.ko: kernel/drivers/hid/hid.ko",
    ].join("\n"),
  );
  const deps = (module: string, release = "6.1.0-sim") => moduleDependencies(sim, release, module);
  assert.equal(deps("vfio-pci"), ["vfio_pci_core", "vfio", "irqbypass"]);
  assert.equal(deps("vfio_pci"), ["vfio_pci_core", "vfio", "irqbypass"]);
  assert.equal(deps("vfio"), []);
  assert.equal(deps("vendor-reset"), ["helper_lib"]);
  assert.equal(deps("hid-mixed_spelling"), ["hid"], "a file name that mixes - and _");
  assert.equal(deps("hid_mixed_spelling"), ["hid"]);
  assert.is(deps("pci"), undefined, "no line of its own");
  assert.is(deps("vfio-pci", "../../etc"), undefined, "a release that is no plain name reads nothing");
  assert.is(deps("vfio-pci", "6.2.0-missing"), undefined);
});

test("what modprobe may load follows softdep lines as kmod reads them: modprobe.d files and modules.softdep by file name, a file hiding a same-named one in a later directory, the first line that matches a module (a glob too) counting", () => {
  const { sim } = bochsGuest();
  const modules = ["vfio", "vfio_iommu_type1", "vfio-pci", "kvmfr", "vendor-reset", "nvidia", "nvidia-drm", "snd-hda-intel"];
  sim.file("/lib/modules/6.1.0-sim/modules.dep", modules.map((name) => `kernel/sim/${name}.ko:`).join("\n"));
  sim.file("/lib/modules/6.1.0-sim/modules.softdep", "softdep vfio post: vfio_iommu_type1\nsoftdep kvmfr post: vendor-reset");
  sim.file("/lib/modprobe.d/vfio.conf", "softdep vfio-pci post: vendor-reset");
  sim.file("/etc/modprobe.d/vfio.conf", "# the user's own: it hides /lib/modprobe.d/vfio.conf\nsoftdep vfio-pci post: \\\n  kvmfr");
  sim.file("/usr/lib/modprobe.d/00-early.conf", "softdep kvmfr pre: snd-hda-intel\nsoftdep kvmfr post: vfio");
  sim.file("/run/modprobe.d/nvidia.conf", "softdep nvidia* pre: vfio-pci");
  sim.file("/etc/modprobe.d/vfio.conf.disabled", "softdep vfio-pci pre: nvidia");
  assert.equal(moduleClosure(sim, "vfio-pci"), ["vfio_pci", "kvmfr", "snd_hda_intel"], "vfio.conf of /etc, whose kvmfr's softdep is 00-early.conf's first line");
  assert.equal(moduleClosure(sim, "vfio"), ["vfio", "vfio_iommu_type1"]);
  assert.equal(moduleClosure(sim, "nvidia-drm"), ["nvidia_drm", "vfio_pci", "kvmfr", "snd_hda_intel"]);
});

test("a modular dummy console whose framebuffer mapping fails: the rollback says what it tried and how to finish, and keeps the record", async () => {
  const kernel = bochsGuest();
  kernel.sim.failWrite(`/sys/bus/pci/devices/${GPU}/driver/unbind`, "EBUSY");
  kernel.sim.onIoctl("/dev/fb0", () => {
    throw Object.assign(new Error("EINVAL: ioctl 0x4610 on /dev/fb0 failed"), { code: "EINVAL" });
  });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(result.stderr, "1 of 4 change(s) could not be undone: run vmhook recover");
  assert.match(result.stderr, "not undone: vfio: unbind console vtcon0 ((M) frame buffer device): vfio: console vtcon0 did not bind again: writing 1 to /sys/class/vtconsole/vtcon0/bind did nothing, and mapping tty1 to /dev/fb0 failed (EINVAL: ioctl 0x4610 on /dev/fb0 failed); run con2fbmap 1 0, then vmhook recover");
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => entry.undo.action), ["unbind-vtconsole"]);
});

// A holder outside what single-GPU mode stops refuses the start before the display manager is touched.
const NOT_ENDED = "; vmhook stops no session off seat0 or closing: end it with loginctl terminate-session";
const OUTSIDERS: { name: string; add: (kernel: GpuKernel) => void; where: string }[] = [
  { name: "a compute job in its own service", add: (k) => k.process(710, "cuda-job", ["/dev/nvidia0"], "/system.slice/render-farm.service"), where: "pid 710 (cuda-job) holds /dev/nvidia0 in render-farm.service" },
  {
    name: "a program in a text (ssh) session",
    add: (k) => k.session(5, { type: "tty", user: "bob", uid: 1001, processes: { 720: ["obs", ["/dev/dri/renderD128"]] } }),
    where: "pid 720 (obs) holds /dev/dri/renderD128 in session-5.scope (session 5 of bob, type tty, no seat)",
  },
  {
    // Stopping the display manager does not end a remote session: the GPU would stay held, and the rollback would restart the display manager after the local session was gone.
    name: "a program in a remote graphical session (xrdp: type x11, no seat)",
    add: (k) => k.session(6, { type: "x11", service: "xrdp-sesman", user: "bob", uid: 1001, processes: { 770: ["Xorg", ["/dev/dri/renderD128"]] } }),
    where: `pid 770 (Xorg) holds /dev/dri/renderD128 in session-6.scope (session 6 of bob, type x11, service xrdp-sesman, no seat${NOT_ENDED} 6)`,
  },
  {
    // Logged out, its leader gone: without KillUserProcesses= what was left in the scope outlives the display manager.
    name: "a program left in a closing graphical session on seat0",
    add: (k) => k.session(3, { type: "x11", seat: "seat0", service: "sddm", state: "closing", user: "ana", uid: 1000, processes: { 790: ["blender", ["/dev/dri/renderD128"]] } }),
    where: `pid 790 (blender) holds /dev/dri/renderD128 in session-3.scope (session 3 of ana, type x11, service sddm, seat seat0, closing${NOT_ENDED} 3)`,
  },
  {
    name: "a program in a graphical session on another seat",
    add: (k) => k.session(8, { type: "wayland", seat: "seat1", service: "gdm-password", user: "carol", uid: 1002, processes: { 780: ["kwin_wayland", ["/dev/dri/card0"]] } }),
    where: `pid 780 (kwin_wayland) holds /dev/dri/card0 in session-8.scope (session 8 of carol, type wayland, service gdm-password, seat seat1${NOT_ENDED} 8)`,
  },
  {
    // Its leader is login(1), started by getty: the display manager's stop does not end it.
    name: "a program in a text login on seat0",
    add: (k) => k.session(4, { type: "tty", seat: "seat0", service: "login", user: "bob", uid: 1001, leader: { pid: 715, comm: "login", parent: 1 }, processes: { 716: ["obs", ["/dev/dri/renderD128"]] } }),
    where: "pid 716 (obs) holds /dev/dri/renderD128 in session-4.scope (session 4 of bob, type tty, service login, seat seat0)",
  },
  { name: "a browser in a user unit", add: (k) => k.process(730, "firefox", ["/dev/dri/renderD128"], "/user.slice/user-1001.slice/user@1001.service/app.slice/firefox.service"), where: "pid 730 (firefox) holds /dev/dri/renderD128 in firefox.service (a unit of uid 1001's systemd user manager, app.slice)" },
  { name: "a process in no unit", add: (k) => k.process(740, "blender", ["/dev/dri/card0"]), where: "pid 740 (blender) holds /dev/dri/card0 in cgroup /" },
  {
    name: "a process whose cgroup cannot be read",
    add: (k) => k.process(760, "mystery", ["/dev/dri/card0"]).sim.remove("/proc/760/cgroup"),
    where: "pid 760 (mystery) holds /dev/dri/card0 in an unknown cgroup",
  },
];

for (const outsider of OUTSIDERS) {
  test(`single GPU, ${outsider.name}: refused before the display manager stops, naming the process and its unit`, async () => {
    const kernel = nvidiaDesktop();
    outsider.add(kernel);
    const before = kernel.sim.snapshot();
    const refusal = `the GPU is in use: ${outsider.where}; vmhook stops only display-manager.service with its graphical sessions, nvidia-persistenced.service: close those programs (or stop their units) and start the VM again`;
    // The planner marks the wait for a free GPU refused: `vmhook plan` shows it, and prepare stops before its first step.
    const planned = await plannedSteps(kernel.sim, domainXml("<vmhook:vfio/>"));
    assert.equal(planned.filter((step) => step.includes("REFUSED")), [`vfio: wait until nothing holds the GPU REFUSED: vfio: ${refusal}`]);
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
    assert.is(result.code, 1);
    assert.match(firstLine(result.stderr), refusal);
    assert.equal(kernel.sim.execs.filter((e) => e.command === "rmmod" || (e.command === "systemctl" && e.args[0] === "stop")), [], "nothing was stopped");
    assert.ok(kernel.units.get("display-manager.service")!.active);
    assert.equal(kernel.sim.snapshot(), before);
  });
}

test("single GPU: holders in the display manager, its graphical sessions on seat0 (a user's, the greeter) and the helper services are stopped, not refused", async () => {
  const kernel = nvidiaDesktop()
    .session(2, { type: "x11", seat: "seat0", service: "sddm", user: "ana", uid: 1000, processes: { 750: ["kwin_x11", ["/dev/dri/card0"]] } })
    .session("c1", { type: "wayland", class: "greeter", seat: "seat0", service: "sddm-greeter", user: "sddm", uid: 970, processes: { 751: ["sddm-greeter", ["/dev/dri/card0"]] } });
  // The sessions end with their display manager.
  Object.assign(kernel.units.get("display-manager.service")!.processes!, { 750: ["kwin_x11", ["/dev/dri/card0"]], 751: ["sddm-greeter", ["/dev/dri/card0"]] });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 0, result.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", domainXml("<vmhook:vfio/>"))).code, 0);
});

test("single GPU, greetd: its greeter's and its users' sessions are logind type tty (greetd passes no XDG_SESSION_TYPE), but it opened them (their leader, its session worker, is its child) and they end with it: stopped, not refused", async () => {
  const kernel = nvidiaDesktop().process(501, "greetd", ["/dev/null"], "/system.slice/display-manager.service");
  const worker = (pid: number) => ({ pid, comm: "greetd", parent: 501 });
  kernel
    .session("c1", { type: "tty", class: "greeter", seat: "seat0", service: "greetd", user: "greeter", uid: 970, leader: worker(740), processes: { 741: ["cage", ["/dev/dri/card0"]] } })
    .session(2, { type: "tty", seat: "seat0", service: "greetd", user: "ana", uid: 1000, leader: worker(750), processes: { 751: ["sway", ["/dev/dri/card0"]] } });
  // The sessions end with their display manager (its workers' parent-death signal).
  Object.assign(kernel.units.get("display-manager.service")!.processes!, { 501: ["greetd", ["/dev/null"]], 741: ["cage", ["/dev/dri/card0"]], 751: ["sway", ["/dev/dri/card0"]] });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 0, result.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", domainXml("<vmhook:vfio/>"))).code, 0);
});

test("single GPU: logind and PID 1 holding the session's card for it are waited for, not refused", async () => {
  const kernel = nvidiaDesktop().process(1, "systemd", ["/dev/dri/card0"], "/init.scope").process(420, "systemd-logind", ["/dev/dri/card0"], "/system.slice/systemd-logind.service");
  settings(kernel, { stopTimeoutSeconds: 1 });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1, "the simulated logind never lets go");
  assert.match(firstLine(result.stderr), "the GPU is still in use after stopping the display manager: pid 1 (systemd) holds /dev/dri/card0, pid 420 (systemd-logind) holds /dev/dri/card0");
});

test("single GPU: a display manager in auto-restart (is-active says \"activating\", exit 3) is stopped like a running one", async () => {
  const kernel = nvidiaDesktop();
  kernel.units.get("display-manager.service")!.state = "activating";
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 0, result.stderr);
  assert.ok(kernel.sim.execs.some((e) => e.command === "systemctl" && e.args.join(" ") === "stop display-manager.service"));
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", domainXml("<vmhook:vfio/>"))).code, 0);
  assert.ok(kernel.units.get("display-manager.service")!.active, "started again at release");
});

/**
 * A display manager whose stop outlasts systemctl's bound (stopTimeoutSeconds):
 * systemd goes on stopping it (TimeoutStopSec, 90 s by default) once systemctl
 * is killed. systemctl start waits for that stop, then starts it; with
 * `stopOutlastsStart`, the stop outlasts the start's bound too, and the start
 * job stays queued once systemctl is killed.
 */
function slowStoppingDisplayManager(kernel: GpuKernel, stopOutlastsStart = false): SimUnit {
  const displayManager = kernel.units.get("display-manager.service")!;
  const systemd = kernel.sim.execHandler("systemctl")!;
  kernel.sim.onExec("systemctl", (args, sim, options) => {
    const verb = args.join(" ");
    if (verb === "stop display-manager.service") {
      displayManager.state = "deactivating";
      return { status: null, signal: "SIGKILL", timedOut: true };
    }
    if (verb === "start display-manager.service" && stopOutlastsStart) {
      displayManager.startQueued = true;
      return { status: null, signal: "SIGKILL", timedOut: true };
    }
    if (verb === "start display-manager.service") displayManager.state = undefined;
    return systemd(args, sim, options);
  });
  return displayManager;
}

test("single GPU: a display manager still stopping when systemctl stop is killed at stopTimeoutSeconds is started again by the rollback, not taken for a running one", async () => {
  const kernel = nvidiaDesktop();
  const displayManager = slowStoppingDisplayManager(kernel);
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "systemctl stop display-manager.service did not finish in time and was killed");
  assert.match(firstLine(result.stderr), `display-manager.service did not stop within 20 s; raise "stopTimeoutSeconds" under "plugins": {"vfio": …} in /etc/vmhook/vmhook.json`);
  assert.ok(kernel.sim.execs.some((e) => e.command === "systemctl" && e.args.join(" ") === "start display-manager.service"), "the rollback starts the display manager again");
  assert.is(displayManager.state, undefined, "running, not left to finish stopping");
  assert.equal(kernel.sim.stateFiles(), []);
});

test("single GPU: when the display manager's stop (GDM: TimeoutStopSec 90 s) outlasts vmhook's stop and the rollback's start too, the rollback says the start waits for that stop and comes by itself, and keeps the entry for vmhook recover", async () => {
  const kernel = nvidiaDesktop();
  const displayManager = slowStoppingDisplayManager(kernel, true);
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(result.stderr, "display-manager.service is not back yet: its start waits for its stop, which systemd lets run up to the unit's TimeoutStopSec=; systemd starts it once that stop ends: wait until it runs (systemctl status display-manager.service), then run vmhook recover");
  assert.ok(displayManager.startQueued, "the start job stays queued in systemd");
  assert.not.equal(kernel.sim.stateFiles(), [], "the entry stays for vmhook recover");
});

test("single GPU: GDM started by hand (not the display-manager.service alias) is refused before anything changes, naming gdm.service and where to name it, not \"no display manager runs\"", async () => {
  const kernel = nvidiaDesktop("gdm.service");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(
    firstLine(result.stderr),
    `vmhook stops only nvidia-persistenced.service; no display manager runs as display-manager.service, but gdm.service runs (started by hand: display-manager.service is the alias of the display manager that starts at boot, set by systemctl enable or, on Debian, dpkg-reconfigure): name it in display-manager="gdm.service" of <vmhook:vfio> or in "displayManagerUnits" under "plugins": {"vfio": …} of /etc/vmhook/vmhook.json`,
  );
  assert.equal(kernel.sim.snapshot(), before);
});

test("single GPU, a desktop started with startx from a console login (no display manager at all): refused before anything changes, saying vmhook does not end such a desktop and what to do, not only to name a display manager", async () => {
  const kernel = new GpuKernel()
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "nvidia_modeset", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_drm", uses: ["nvidia_modeset"], loaded: true })
    .device({ address: "0000:00:01.0", classCode: "0x060400", vendor: "0x8086", group: 1 })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, bootVga: true, nodes: ["card0", "renderD128"], resetMethod: "bus" })
    .session(1, { type: "tty", seat: "seat0", service: "login", user: "ana", uid: 1000, leader: { pid: 700, comm: "login", parent: 1 }, processes: { 701: ["Xorg", ["/dev/dri/card0"]] } })
    .process(1, "systemd", ["/dev/null"]);
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(
    firstLine(result.stderr),
    `the GPU is in use: pid 701 (Xorg) holds /dev/dri/card0 in session-1.scope (session 1 of ana, type tty, service login, seat seat0); vmhook stops nothing here; no display manager runs as display-manager.service, nor as gdm.service, gdm3.service, sddm.service, lightdm.service, greetd.service or ly.service: a desktop started from a console login (startx, a compositor run from its shell) has none, and vmhook does not end it: quit it, then start the VM from that console or over ssh; a display manager under another name: name it in display-manager="UNIT" of <vmhook:vfio> or in "displayManagerUnits" under "plugins": {"vfio": …} of /etc/vmhook/vmhook.json`,
  );
  assert.equal(kernel.sim.snapshot(), before);
});

// At boot (libvirt autostart) a unit's start job may still wait (is-active says inactive): it would start on the GPU the VM took,
// or (a helper) while the modules go, taking them back or failing with no GPU; and nothing would start it at release.
const QUEUED_AT_BOOT: [string, string][] = [
  ["display-manager.service", "single GPU at boot (libvirt autostart): a display manager whose start job still waits (is-active says inactive) has it cancelled, so it does not start on the GPU the VM took, and is started at release"],
  ["nvidia-persistenced.service", "at boot (libvirt autostart): a helper service whose start job still waits (nvidia-persistenced, inactive) has it cancelled, so it does not start while the modules go (taking them back, or failing with no GPU), and is started at release"],
];
for (const [name, title] of QUEUED_AT_BOOT) {
  test(title, async () => {
    const kernel = nvidiaDesktop();
    const unit = kernel.units.get(name)!;
    kernel.sim.exec("systemctl", ["stop", name], { timeoutMs: 1000 });
    unit.startQueued = true;
    const booted = kernel.sim.execs.length;
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
    assert.is(result.code, 0, result.stderr);
    assert.ok(kernel.sim.execs.slice(booted).some((e) => e.command === "systemctl" && e.args.join(" ") === `stop ${name}`), "its start job is cancelled");
    assert.not.ok(unit.startQueued || unit.active);
    assert.is(kernel.driverOf(GPU), "vfio-pci");
    assert.is((await runHookEvent(kernel.sim, "release", "end", domainXml("<vmhook:vfio/>"))).code, 0);
    assert.ok(unit.active, "started at release, as the boot would have");
  });
}

test("single GPU, NVIDIA without fbdev: the console that cannot come back (no framebuffer, efifb gone for good) is warned about, and the next start is not blocked", async () => {
  const kernel = nvidiaDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"))).code, 0);
  // What the kernel does meanwhile on Linux >= 6.1: vfio-pci's aperture removal unregisters efi-framebuffer.0 for good,
  // and with no framebuffer left fbcon unregisters its console (vtcon1).
  kernel.sim.remove("/sys/bus/platform/devices/efi-framebuffer.0");
  kernel.sim.remove("/sys/devices/platform/efi-framebuffer.0");
  kernel.sim.remove("/sys/class/vtconsole/vtcon1");
  const release = await runHookEvent(kernel.sim, "release", "end", domainXml("<vmhook:vfio/>"));
  assert.is(release.code, 0);
  assert.is(kernel.driverOf(GPU), "nvidia", "the GPU is home");
  assert.ok(kernel.units.get("display-manager.service")!.active, "the display manager is back");
  assert.match(kernel.sim.read("/var/log/vmhook.log"), `warn: vfio: console vtcon1 stays unbound: nvidia (${GPU}) registered no framebuffer, and the firmware framebuffer does not come back once vfio-pci took the GPU; the text console returns after a reboot, or with a driver that registers one (NVIDIA: nvidia-drm.fbdev=1)`);
  assert.equal(kernel.sim.stateFiles(), [], "nothing is left for vmhook recover");
  const again = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(again.code, 0, again.stderr);
});

test("single GPU, nvidia-open 560+ with nvidia-drm.fbdev=1 (its default): fbcon on NVIDIA's own framebuffer (efifb removed at boot) lets go before the stack unloads, users first, and is back on it at release with the card's nodes", async () => {
  const kernel = new GpuKernel()
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "nvidia_modeset", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_uvm", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_drm", uses: ["nvidia_modeset", "nvidia"], loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, bootVga: true, nodes: ["card0", "renderD128", "fb0"] })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x10de", nativeDriver: "snd_hda_intel", group: 1, driverAllowsRuntimePm: true })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["gnome-shell", ["/dev/nvidia0", "/dev/nvidia-modeset", "/dev/dri/card0"]] } })
    .process(1, "systemd", ["/dev/null"]);
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.equal(kernel.sim.execs.filter((e) => e.command === "rmmod").map((e) => e.args.join(" ")), ["nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"]);
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "0");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.match(kernel.sim.read(paths.log), `vfio: ${GPU} is back on nvidia with card, renderD, fb`);
  assert.equal(kernel.sim.snapshot(), before);
});

test("single GPU: while the VM's GPU has not come home, another display device on a driver without framebuffer does not make the console's record go", async () => {
  // A server's BMC VGA on ast (no fbdev) beside the passed-through card.
  const kernel = nvidiaDesktop().module({ name: "ast", driver: "ast", loaded: true }).device({ address: "0000:05:00.0", classCode: "0x030000", vendor: "0x1a03", nativeDriver: "ast", group: 5, nodes: ["card1"] });
  const xml = domainXml('<vmhook:vfio single-gpu="yes"/>');
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  assert.equal(readJournal(kernel.sim, UUID)!.entries.find((entry) => entry.undo.action === "unbind-vtconsole")!.undo.gpus, [GPU], "the console's record names the GPU that brings it back");
  kernel.sim.remove("/sys/bus/platform/devices/efi-framebuffer.0");
  kernel.sim.remove("/sys/devices/platform/efi-framebuffer.0");
  kernel.sim.remove("/sys/class/vtconsole/vtcon1");
  kernel.stuck.add(GPU); // the card does not take its driver again
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  const kept = readJournal(kernel.sim, UUID)!.entries.map((entry) => entry.undo.action);
  assert.ok(kept.includes("unbind-vtconsole"), `the console's record stays for vmhook recover: ${kept.join(", ")}`);
  const log = kernel.sim.read("/var/log/vmhook.log");
  assert.match(log, "no framebuffer console is back (was vtcon1)");
  assert.not.match(log, "stays unbound");
});

test("single GPU, NVIDIA without fbdev, a release with less than the 2 s grace left: no verdict, the console's record stays for vmhook recover", async () => {
  const kernel = nvidiaDesktop();
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ undoDeadlineSeconds: 1 }));
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"))).code, 0);
  kernel.sim.remove("/sys/bus/platform/devices/efi-framebuffer.0");
  kernel.sim.remove("/sys/devices/platform/efi-framebuffer.0");
  kernel.sim.remove("/sys/class/vtconsole/vtcon1");
  assert.is((await runHookEvent(kernel.sim, "release", "end", domainXml("<vmhook:vfio/>"))).code, 0);
  assert.is(kernel.driverOf(GPU), "nvidia");
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => [entry.undo.action, entry.state]), [["unbind-vtconsole", "undo-failed"]]);
  assert.not.match(kernel.sim.read("/var/log/vmhook.log"), "stays unbound");
});

test("single GPU while systemctl cannot reach systemd: prepare refuses, naming systemctl's answer, before any change", async () => {
  const kernel = nvidiaDesktop();
  // What systemctl says for every verb when PID 1 does not answer on its bus: exit 1, not is-active's 3 ("inactive").
  kernel.sim.onExec("systemctl", () => ({ status: 1, stderr: "Failed to connect to bus: Connection timed out\n" }));
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1, "a display manager of unknown state is not taken for a stopped one");
  assert.match(firstLine(result.stderr), "could not tell whether display-manager.service runs: Failed to connect to bus: Connection timed out");
  assert.equal(kernel.sim.snapshot(), before);
});

test("include-slot=\"no\" leaves the audio function on its driver, so its shared IOMMU group refuses, naming both and the remedies", async () => {
  const kernel = nvidiaDesktop();
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml('<vmhook:vfio include-slot="no"/>'));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), `IOMMU group 1 holds ${GPU} and also ${AUDIO} (class 0x040300, driver snd_hda_intel)`);
  assert.match(firstLine(result.stderr), "move the card to a slot with its own group, or use a kernel with the ACS override patch");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.execs.filter((e) => e.command !== "systemctl" || e.args[0] !== "is-active"), []);
});

test("a group shared with a device on a host driver (USB controller) refuses before anything changes", async () => {
  const kernel = twoGpuWorkstation().device({ address: "0000:00:14.0", classCode: "0x0c0330", vendor: "0x8086", nativeDriver: "xhci_hcd", group: 1 });
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "IOMMU group 1 holds 0000:01:00.0, 0000:01:00.1 and also 0000:00:14.0 (class 0x0c0330, driver xhci_hcd)");
  // Not the domain's: no managed='yes' to set
  assert.not.match(result.stderr, "managed='yes'");
  assert.equal(kernel.sim.snapshot(), before);
});

test("a group shared with a device that has no driver goes on, leaving it so (doctor warns, as it does not fail)", async () => {
  const kernel = twoGpuWorkstation().device({ address: "0000:00:14.0", classCode: "0x0c0330", vendor: "0x8086", nativeDriver: "xhci_hcd", bound: false, group: 1 });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 0, result.stderr);
  assert.equal([kernel.driverOf(GPU), kernel.driverOf("0000:00:14.0")], ["vfio-pci", undefined]);
});

/** Prepare with `address` staying in the GPU's group on `driver`: without `refusal`, it stays so while the GPU goes to vfio-pci; with one, the first line holds it and nothing changed. */
async function prepareBesideGroupMember(kernel: GpuKernel, address: string, driver: string, refusal: string | undefined): Promise<void> {
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  if (refusal === undefined) {
    assert.is(result.code, 0, result.stderr);
    assert.equal([kernel.driverOf(GPU), kernel.driverOf(address)], ["vfio-pci", driver]);
    return;
  }
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), refusal);
  assert.equal(kernel.sim.snapshot(), before);
}

// What the kernel's vfio accepts beside a device in use: no driver, or a driver that manages DMA itself (vfio-pci,
// pci-stub, pcieport: driver_managed_dma); before 5.19, a PCI-to-PCI bridge on any driver.
for (const [driver, release, accepted] of [["pcieport", "6.1.0-sim", true], ["shpchp", "6.1.0-sim", false], ["shpchp", "5.15.0-91-generic", true]] as const) {
  test(`a bridge in the GPU's IOMMU group on ${driver}, kernel ${release}: ${accepted ? "left alone, the handover goes on" : "refused before anything changes, naming it: vfio does not accept that driver"}`, async () => {
    const kernel = twoGpuWorkstation()
      .module({ name: driver, driver, loaded: true })
      .device({ address: "0000:00:01.0", classCode: "0x060400", vendor: "0x1022", nativeDriver: driver, group: 1 });
    // Loaded before: the modules tree of the simulated kernel is 6.1.0-sim's.
    kernel.sim.exec("modprobe", ["vfio-pci"], { timeoutMs: 1000 });
    kernel.sim.file("/proc/sys/kernel/osrelease", release);
    const refusal = `IOMMU group 1 holds 0000:01:00.0, 0000:01:00.1 and also 0000:00:01.0 (class 0x060400, driver ${driver}); 0000:00:01.0 is a bridge, which vfio-pci does not take: unbind it from ${driver}`;
    await prepareBesideGroupMember(kernel, "0000:00:01.0", driver, accepted ? undefined : refusal);
  });
}

// A vfio-pci variant driver (mlx5_vfio_pci, xe-vfio-pci, ...) is built on vfio-pci-core and manages DMA itself, as
// vfio-pci does: the kernel's vfio accepts its device beside one passed through. Known by its module using vfio_pci_core.
for (const [module, driver, accepted] of [["mlx5_vfio_pci", "mlx5_vfio_pci", true], ["xe_vfio_pci", "xe-vfio-pci", true], ["mlx5_core", "mlx5_core", false]] as const) {
  test(`a network VF on ${driver} (module ${module}${accepted ? ", a user of vfio_pci_core" : ""}) in the GPU's IOMMU group: ${accepted ? "left alone, the handover goes on" : "refused before anything changes"}`, async () => {
    const kernel = twoGpuWorkstation()
      .module({ name: module, driver, uses: accepted ? ["vfio_pci_core"] : [], loaded: true })
      .device({ address: "0000:03:00.2", classCode: "0x020000", vendor: "0x15b3", nativeDriver: driver, group: 1 });
    const refusal = `IOMMU group 1 holds 0000:01:00.0, 0000:01:00.1 and also 0000:03:00.2 (class 0x020000, driver ${driver})`;
    await prepareBesideGroupMember(kernel, "0000:03:00.2", driver, accepted ? undefined : refusal);
  });
}

// An SR-IOV VF given to the VM as a NIC (<interface type='hostdev'>) is the VM's own: with managed='yes' libvirt moves
// it to vfio-pci after prepare, so on its host driver now it does not block the GPU's group. Without managed='yes'
// nothing moves it, and a group with a member on a host driver cannot open: refused as before.
for (const managed of [true, false]) {
  test(`a network VF in the GPU's IOMMU group given to the VM as <interface type='hostdev'${managed ? " managed='yes'" : ""}>: ${managed ? "the VM's own, left for libvirt to move, the handover goes on" : "refused before anything changes, as any member on a host driver, advising managed='yes' on it"}`, async () => {
    const VF = "0000:03:02.1";
    const kernel = twoGpuWorkstation()
      .module({ name: "iavf", driver: "iavf", loaded: true })
      .device({ address: VF, classCode: "0x020000", vendor: "0x8086", nativeDriver: "iavf", group: 1 });
    const nic = `<interface type='hostdev'${managed ? " managed='yes'" : ""}><mac address='52:54:00:6d:90:02'/><source><address type='pci' domain='0x0000' bus='0x03' slot='0x02' function='0x1'/></source></interface>`;
    const xml = domainXml("<vmhook:vfio/>").replace("</devices>", `${nic}</devices>`);
    const before = kernel.sim.snapshot();
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
    if (!managed) {
      assert.is(prepare.code, 1);
      assert.match(firstLine(prepare.stderr), `IOMMU group 1 holds 0000:01:00.0, 0000:01:00.1 and also ${VF} (class 0x020000, driver iavf); ${VF} is the domain's own <interface type='hostdev'> without managed='yes': set managed='yes' on that <interface> so libvirt moves it to vfio-pci as the VM starts, or bind it to vfio-pci yourself; a group goes to the VM whole`);
      assert.equal(kernel.sim.snapshot(), before);
      return;
    }
    assert.is(prepare.code, 0, prepare.stderr);
    assert.equal([kernel.driverOf(GPU), kernel.driverOf(AUDIO), kernel.driverOf(VF)], ["vfio-pci", "vfio-pci", "iavf"]);
    const release = await runHookEvent(kernel.sim, "release", "end", xml);
    assert.is(release.code, 0, release.stderr);
    assert.equal([kernel.driverOf(GPU), kernel.driverOf(VF)], ["amdgpu", "iavf"]);
  });
}

test("a managed='yes' <hostdev> in the GPU's IOMMU group that devices= leaves out: libvirt moves it after prepare, so on its host driver it does not block the group; without managed='yes' it is refused, advising it", async () => {
  const USB = "0000:00:14.0";
  const kernel = twoGpuWorkstation().device({ address: USB, classCode: "0x0c0330", vendor: "0x8086", nativeDriver: "xhci_hcd", group: 1 });
  const xml = domainXml(`<vmhook:vfio devices="${GPU}"/>`, [{ address: GPU }, { address: USB, managed: true }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.equal([kernel.driverOf(GPU), kernel.driverOf(AUDIO), kernel.driverOf(USB)], ["vfio-pci", "vfio-pci", "xhci_hcd"]);
  const unmanaged = twoGpuWorkstation().device({ address: USB, classCode: "0x0c0330", vendor: "0x8086", nativeDriver: "xhci_hcd", group: 1 });
  const refused = await runHookEvent(unmanaged.sim, "prepare", "begin", domainXml(`<vmhook:vfio devices="${GPU}"/>`, [{ address: GPU }, { address: USB }]));
  assert.is(refused.code, 1);
  assert.match(firstLine(refused.stderr), `IOMMU group 1 holds 0000:01:00.0, 0000:01:00.1 and also ${USB} (class 0x0c0330, driver xhci_hcd); ${USB} is the domain's own <hostdev> without managed='yes': set managed='yes' on that <hostdev> so libvirt moves it to vfio-pci as the VM starts, or bind it to vfio-pci yourself`);
});

/**
 * An Intel Arc B580 (Battlemage, xe) with SR-IOV: the PF 0000:03:00.0 shows the host's display on xe, its VF
 * 0000:03:00.1 (group 11) was bound to xe-vfio-pci, xe's vfio-pci variant (built on vfio_pci_core), for a VM.
 */
function battlemageWithVfOnVariant(): GpuKernel {
  const kernel = twoGpuWorkstation()
    .module({ name: "xe", driver: "xe", loaded: true })
    .module({ name: "xe_vfio_pci", driver: "xe-vfio-pci", uses: ["vfio_pci_core"], loaded: true })
    .device({ address: "0000:03:00.0", classCode: "0x030000", vendor: "0x8086", deviceId: "0xe20b", nativeDriver: "xe", group: 10, nodes: ["card2", "renderD130"] });
  kernel.sim.file("/sys/bus/pci/devices/0000:03:00.0/sriov_numvfs", "1");
  return kernel.device({ address: BATTLEMAGE_VF, classCode: "0x030000", vendor: "0x8086", deviceId: "0xe20b", nativeDriver: "xe-vfio-pci", group: 11, physfn: "0000:03:00.0" });
}
const BATTLEMAGE_VF = "0000:03:00.1";

// A vfio-pci variant driver already gives QEMU a VFIO device (with what plain vfio-pci lacks: migration state, the
// device's own reset): a device on one is left on it at prepare, so release has nothing of it to give back.
for (const vfioPciCore of ["a module (its holders name xe_vfio_pci)", "built in (the device's vfio-dev/vfioN tells)"]) {
  test(`an xe SR-IOV VF already on xe-vfio-pci, vfio_pci_core ${vfioPciCore}: left on it at prepare (vfio-pci is not even loaded), the GPU beside it moves; release leaves it too`, async () => {
    const kernel = battlemageWithVfOnVariant();
    // Built in: no module, so no holders/ to show who uses it.
    if (vfioPciCore.startsWith("built in")) kernel.sim.remove("/sys/module/vfio_pci_core/holders/xe_vfio_pci");
    const before = kernel.sim.snapshot();
    const xml = domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }]);
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
    assert.is(prepare.code, 0, prepare.stderr);
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.execs.filter((e) => e.command === "modprobe" || e.command === "rmmod"), []);
    assert.match(kernel.sim.read("/var/log/vmhook.log"), `vfio: ${BATTLEMAGE_VF} is already on xe-vfio-pci, a VFIO driver: left on it`);
    const release = await runHookEvent(kernel.sim, "release", "end", xml);
    assert.is(release.code, 0, release.stderr);
    assert.equal(kernel.sim.snapshot(), before);
  });
}

/** The Battlemage card with its VF on xe, the host's VF driver, and xe_vfio_pci in the kernel's modules, not loaded: modules.alias names it for the card's ids. */
function battlemageWithVfOnXe(): GpuKernel {
  const kernel = twoGpuWorkstation()
    .module({ name: "xe", driver: "xe", loaded: true })
    .module({ name: "xe_vfio_pci", driver: "xe-vfio-pci", uses: ["vfio_pci_core"], vfioAliases: ["v00008086d0000E20Bsv*sd*bc*sc*i*"] })
    .device({ address: "0000:03:00.0", classCode: "0x030000", vendor: "0x8086", deviceId: "0xe20b", nativeDriver: "xe", group: 10, nodes: ["card2", "renderD130"] });
  kernel.sim.file("/sys/bus/pci/devices/0000:03:00.0/sriov_numvfs", "1");
  return kernel.device({ address: BATTLEMAGE_VF, classCode: "0x030000", vendor: "0x8086", deviceId: "0xe20b", nativeDriver: "xe", group: 11, physfn: "0000:03:00.0" });
}

// As libvirt (>= 10.0) binds a managed hostdev: the vfio-pci variant modules.alias matches best ("alias vfio_pci:…", fewest
// wildcards), unless the <hostdev>'s <driver model='…'/> names the driver; vfio-pci when no variant matches.
test("an xe SR-IOV VF on xe, xe_vfio_pci matching it in modules.alias: prepare loads xe_vfio_pci and binds the VF to xe-vfio-pci, not vfio-pci (not even loaded); release brings it back to xe and unloads xe_vfio_pci", async () => {
  const kernel = battlemageWithVfOnXe();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }]);
  const planned = await plannedSteps(kernel.sim, xml);
  assert.equal(planned, ["vfio: load module xe_vfio_pci", `vfio: bind ${BATTLEMAGE_VF} to module xe_vfio_pci's driver (from xe; the vfio-pci variant modules.alias matches best)`]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.equal([kernel.driverOf(BATTLEMAGE_VF), kernel.driverOf("0000:03:00.0")], ["xe-vfio-pci", "xe"]);
  assert.ok(kernel.sim.exists("/dev/vfio/11"));
  assert.not.ok(kernel.loaded("vfio_pci"));
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${BATTLEMAGE_VF}/driver_override`), "xe-vfio-pci");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test("vmhook doctor names the driver prepare moves each device to, as plan does: the variant modules.alias matches, the one <driver model> names, vfio-pci; one on a VFIO driver stays", async () => {
  const kernel = battlemageWithVfOnXe();
  const moves = async (vfio: string, hostdevs: Parameters<typeof domainXml>[1]) => {
    const { findings } = (await runDoctor(kernel.sim, { file: "vm.xml", xml: domainXml(vfio, hostdevs) })).domain!;
    return findings.filter((finding) => finding.check.startsWith("hostdev ")).map((finding) => `${finding.check}: ${finding.status} ${finding.reason.replace(/^.* with nothing the VM does not get; /, "")}`);
  };
  assert.equal(await moves("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }, { address: GPU }, { address: AUDIO }]), [
    `hostdev ${BATTLEMAGE_VF}: ok on xe now; prepare moves it to module xe_vfio_pci's driver (the vfio-pci variant modules.alias matches best)`,
    `hostdev ${GPU}: ok on amdgpu now; prepare moves it to vfio-pci`,
    `hostdev ${AUDIO}: ok on snd_hda_intel now; prepare moves it to vfio-pci`,
  ]);
  assert.equal(await moves("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF, model: "vfio-pci" }]), [`hostdev ${BATTLEMAGE_VF}: ok on xe now; prepare moves it to vfio-pci (its <hostdev><driver model> names it)`]);
  kernel.sim.exec("modprobe", ["xe_vfio_pci"], { timeoutMs: 1000 });
  assert.equal(await moves("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }]), [`hostdev ${BATTLEMAGE_VF}: ok on xe now; prepare moves it to xe-vfio-pci (the vfio-pci variant modules.alias matches best)`]);
  kernel.sim.write(`/sys/bus/pci/devices/${BATTLEMAGE_VF}/driver/unbind`, BATTLEMAGE_VF);
  kernel.sim.write(`/sys/bus/pci/devices/${BATTLEMAGE_VF}/driver_override`, "xe-vfio-pci");
  kernel.sim.write("/sys/bus/pci/drivers_probe", BATTLEMAGE_VF);
  assert.equal(await moves("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }]), [`hostdev ${BATTLEMAGE_VF}: ok on xe-vfio-pci now, a VFIO driver: prepare leaves it there`]);
  // Without <vmhook:vfio>, vmhook moves nothing: the line says where it is.
  assert.equal(await moves("", [{ address: GPU, managed: true }, { address: AUDIO, managed: true }]), [`hostdev ${GPU}: ok on amdgpu now`, `hostdev ${AUDIO}: ok on snd_hda_intel now`]);
});

test("xe_vfio_pci loaded for the VM, and another VF bound to it by hand meanwhile: release brings the VM's VF back to xe and leaves xe_vfio_pci loaded (its rmmod would take that VF away)", async () => {
  const kernel = battlemageWithVfOnXe();
  kernel.sim.file("/sys/bus/pci/devices/0000:03:00.0/sriov_numvfs", "2");
  kernel.device({ address: "0000:03:00.2", classCode: "0x030000", vendor: "0x8086", deviceId: "0xe20b", nativeDriver: "xe", group: 12, physfn: "0000:03:00.0" });
  const xml = domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }]);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  kernel.sim.write("/sys/bus/pci/devices/0000:03:00.2/driver/unbind", "0000:03:00.2");
  kernel.sim.write("/sys/bus/pci/devices/0000:03:00.2/driver_override", "xe-vfio-pci");
  kernel.sim.write("/sys/bus/pci/drivers_probe", "0000:03:00.2");
  assert.is(kernel.driverOf("0000:03:00.2"), "xe-vfio-pci");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal([kernel.driverOf(BATTLEMAGE_VF), kernel.driverOf("0000:03:00.2")], ["xe", "xe-vfio-pci"]);
  assert.ok(kernel.loaded("xe_vfio_pci"));
});

test("an xe SR-IOV VF whose <hostdev> says <driver model='vfio-pci'/> (libvirt's way round a variant): vfio-pci takes it, xe_vfio_pci stays unloaded; release brings it back to xe", async () => {
  const kernel = battlemageWithVfOnXe();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF, model: "vfio-pci" }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(BATTLEMAGE_VF), "vfio-pci");
  assert.not.ok(kernel.loaded("xe_vfio_pci"));
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test("the VF's variant loaded by someone else, not vmhook: prepare binds the VF to xe-vfio-pci without a modprobe; release brings it back to xe and leaves the module loaded", async () => {
  const kernel = battlemageWithVfOnXe();
  kernel.sim.exec("modprobe", ["xe_vfio_pci"], { timeoutMs: 1000 });
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF }]);
  assert.equal(await plannedSteps(kernel.sim, xml), [`vfio: bind ${BATTLEMAGE_VF} to xe-vfio-pci (from xe; the vfio-pci variant modules.alias matches best)`]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(BATTLEMAGE_VF), "xe-vfio-pci");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.execs.filter((e) => e.command === "rmmod" || (e.command === "modprobe" && e.args[0] !== "xe_vfio_pci")), []);
});

test("the vfio-pci variant for a modalias is libvirt's: the matching \"alias vfio_pci:\" line with the fewest wildcards; vfio_pci's catch-all or no match is none", () => {
  const aliases = [
    "alias pci:v000015B3d0000101Esv*sd*bc*sc*i* mlx5_core",
    "alias vfio_pci:v*d*sv*sd*bc*sc*i* vfio_pci",
    "alias vfio_pci:v000015B3d0000101Esv*sd*bc*sc*i* mlx5_vfio_pci",
    "alias vfio_pci:v000015B3d*sv*sd*bc*sc*i* broad_vfio_pci",
    "alias vfio_pci:v00001AF4d00001041sv*sd00000001bc02sc00i00 virtio_vfio_pci",
  ].join("\n");
  const cx7Vf = "pci:v000015B3d0000101Esv000015B3sd00000001bc02sc00i00";
  assert.is(vfioVariantModule(aliases, cx7Vf), "mlx5_vfio_pci");
  assert.is(vfioVariantModule(aliases, "pci:v000015B3d00001017sv000015B3sd00000001bc02sc00i00"), "broad_vfio_pci");
  assert.is(vfioVariantModule(aliases, "pci:v00001AF4d00001041sv00001AF4sd00000001bc02sc00i00"), "virtio_vfio_pci");
  assert.is(vfioVariantModule(aliases, "pci:v00001AF4d00001041sv00001AF4sd00000002bc02sc00i00"), undefined, "only vfio_pci's catch-all matches");
  assert.is(vfioVariantModule("", cx7Vf), undefined, "no modules.alias");
  assert.is(vfioVariantModule(aliases, undefined), undefined, "no modalias");
});

test("a <hostdev><driver model> that is no driver name is refused at parse, naming it (it would become a path and a module)", async () => {
  const kernel = battlemageWithVfOnXe();
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF, model: "../../evil" }]));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), `<hostdev type='pci'><driver>: model="../../evil" is not a driver name like vfio-pci or mlx5_vfio_pci`);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a <hostdev><driver model> must name a VFIO driver: a variant modules.alias lists passes by default, another module is refused before modprobe runs (the host policy's vfio.modules may allow it)", async () => {
  // A module of the host that registers no VFIO driver: prepare would load it and write its name to the VF's driver_override.
  const kernel = battlemageWithVfOnXe().module({ name: "n_hdlc" });
  const before = kernel.sim.snapshot();
  const refused = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF, model: "n_hdlc" }]));
  assert.is(refused.code, 1);
  assert.match(firstLine(refused.stderr), `${BATTLEMAGE_VF}'s <hostdev><driver model='n_hdlc'>: n_hdlc is not a VFIO driver`);
  assert.match(firstLine(refused.stderr), `add "n_hdlc" to "vfio.modules" in /etc/vmhook/policy.json`);
  assert.equal(kernel.sim.execs.filter((e) => e.command === "modprobe"), []);
  assert.equal(kernel.sim.snapshot(), before);
  const xml = domainXml("<vmhook:vfio/>", [{ address: BATTLEMAGE_VF, model: "xe-vfio-pci" }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(BATTLEMAGE_VF), "xe-vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a GPU on amdgpu and an xe SR-IOV VF on xe-vfio-pci in one domain: the GPU goes to vfio-pci and back, the VF stays on xe-vfio-pci throughout", async () => {
  const kernel = battlemageWithVfOnVariant();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: GPU }, { address: BATTLEMAGE_VF }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.equal([kernel.driverOf(GPU), kernel.driverOf(AUDIO), kernel.driverOf(BATTLEMAGE_VF), kernel.driverOf("0000:03:00.0")], ["vfio-pci", "vfio-pci", "xe-vfio-pci", "xe"]);
  assert.equal(readJournal(kernel.sim, UUID)!.entries.filter((entry) => entry.undo.action === "bind-vfio").map((entry) => entry.undo.address), [GPU, AUDIO]);
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test("an NVMe drive behind Intel VMD (PCI domain 10000, which libvirt accepts) goes to vfio-pci and back like any device", async () => {
  const DRIVE = "10000:e1:00.0";
  const kernel = twoGpuWorkstation().module({ name: "nvme", driver: "nvme", loaded: true }).device({ address: DRIVE, classCode: "0x010802", vendor: "0x144d", nativeDriver: "nvme", group: 12 });
  const xml = domainXml("<vmhook:vfio/>", [{ address: DRIVE }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.equal([kernel.driverOf(DRIVE), kernel.driverOf(GPU)], ["vfio-pci", "amdgpu"]);
  await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(kernel.driverOf(DRIVE), "nvme");
});

// A VM that vmhook does not serve (libvirt's managed='yes' moved the device) holds the group through /dev/vfio/N:
// vfio gives a group to one VM, and libvirt would refuse the start after prepare had changed the host.
for (const held of [true, false]) {
  test(`a device of the GPU's IOMMU group on vfio-pci ${held ? "held by another VM's QEMU (no vmhook journal): refused before anything changes, naming the process" : "that no process holds: left alone, the handover goes on"}`, async () => {
    const kernel = twoGpuWorkstation();
    kernel.sim.exec("modprobe", ["vfio-pci"], { timeoutMs: 1000 });
    kernel.device({ address: "0000:00:14.0", classCode: "0x0c0330", vendor: "0x8086", nativeDriver: "vfio-pci", group: 1 });
    if (held) kernel.process(900, "qemu-system-x86", ["/dev/vfio/1"]);
    const refusal = "vmhook: vfio: IOMMU group 1 (0000:01:00.0, 0000:01:00.1) is in use by another VM: pid 900 (qemu-system-x86) holds /dev/vfio/1, with 0000:00:14.0 on vfio-pci; a group goes to one VM at a time: shut that VM down first";
    await prepareBesideGroupMember(kernel, "0000:00:14.0", "vfio-pci", held ? refusal : undefined);
  });
}

test("two groups, a second GPU on the host: not single-GPU, amdgpu stays loaded, GPU+audio+USB on vfio-pci, both /dev/vfio groups, all back", async () => {
  const kernel = twoGpuWorkstation();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: GPU }, { address: "0000:05:00.0" }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  for (const address of [GPU, AUDIO, "0000:05:00.0"]) assert.is(kernel.driverOf(address), "vfio-pci", address);
  assert.ok(kernel.sim.exists("/dev/vfio/1") && kernel.sim.exists("/dev/vfio/7"));
  assert.is(kernel.driverOf("0000:00:02.0"), "i915");
  assert.ok(kernel.units.get("display-manager.service")!.active, "the host keeps its display");
  assert.ok(kernel.loaded("amdgpu"));
  assert.equal(kernel.sim.execs.filter((e) => e.command === "rmmod" || (e.command === "systemctl" && e.args[0] === "stop")), []);

  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

/**
 * A mini PC with an AMD Phoenix APU (Radeon 780M), the host headless but for the iGPU: the iGPU's slot holds, besides its HDMI
 * audio (.1), the APU's own PSP (.2, ccp), the host's USB controllers (.3, .4), its audio coprocessor (.5) and HD audio (.6),
 * each function in its own IOMMU group (the IOMMU isolates them).
 */
function phoenixMiniPc(): GpuKernel {
  const apu = "0000:c5:00";
  return new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .module({ name: "ccp", driver: "ccp", loaded: true })
    .module({ name: "xhci_pci", driver: "xhci_hcd", loaded: true })
    .module({ name: "snd_pci_ps", driver: "snd_pci_ps", loaded: true })
    .device({ address: `${apu}.0`, classCode: "0x030000", vendor: "0x1002", deviceId: "0x15bf", nativeDriver: "amdgpu", group: 20, bootVga: true, nodes: ["card0", "renderD128", "fb0"] })
    .device({ address: `${apu}.1`, classCode: "0x040300", vendor: "0x1002", deviceId: "0x1640", nativeDriver: "snd_hda_intel", group: 21 })
    .device({ address: `${apu}.2`, classCode: "0x108000", vendor: "0x1022", deviceId: "0x15c7", nativeDriver: "ccp", group: 22 })
    .device({ address: `${apu}.3`, classCode: "0x0c0330", vendor: "0x1022", deviceId: "0x15b9", nativeDriver: "xhci_hcd", group: 23 })
    .device({ address: `${apu}.4`, classCode: "0x0c0330", vendor: "0x1022", deviceId: "0x15ba", nativeDriver: "xhci_hcd", group: 24 })
    .device({ address: `${apu}.5`, classCode: "0x048000", vendor: "0x1022", deviceId: "0x15e2", nativeDriver: "snd_pci_ps", group: 25 })
    .device({ address: `${apu}.6`, classCode: "0x040300", vendor: "0x1022", deviceId: "0x15e3", nativeDriver: "snd_hda_intel", group: 26 })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .process(1, "systemd", ["/dev/null"]);
}

test("an APU's iGPU (AMD Phoenix) whose slot holds the host's USB controllers, PSP and audio, each in its own IOMMU group: only the iGPU and its HDMI audio (the hostdevs) go to vfio-pci; the host's USB ports, PSP and audio stay, and all is back at release", async () => {
  const kernel = phoenixMiniPc();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: "0000:c5:00.0" }, { address: "0000:c5:00.1" }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf("0000:c5:00.0"), "vfio-pci");
  assert.is(kernel.driverOf("0000:c5:00.1"), "vfio-pci");
  const kept = { "0000:c5:00.2": "ccp", "0000:c5:00.3": "xhci_hcd", "0000:c5:00.4": "xhci_hcd", "0000:c5:00.5": "snd_pci_ps", "0000:c5:00.6": "snd_hda_intel" };
  for (const [address, driver] of Object.entries(kept)) assert.is(kernel.driverOf(address), driver, `${address} stays the host's`);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

/** Two GPUs with fbdev: the iGPU the host keeps (boot VGA, fb0) and the VM's AMD GPU (fb1); fbcon shows on fb0, the first registered. */
function twoFramebuffers(options: { builtinConsole?: boolean } = {}): GpuKernel {
  return new GpuKernel(options)
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0", "fb0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, nodes: ["card1", "fb1"] })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card0"]] } });
}

test('single-gpu="yes" for a second GPU while fbcon shows on the iGPU the host keeps: the display manager stops, the console stays bound; all back at release', async () => {
  const kernel = twoFramebuffers();
  const before = kernel.sim.snapshot();
  const xml = domainXml('<vmhook:vfio single-gpu="yes"/>');
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.not.ok(kernel.units.get("display-manager.service")!.active);
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "1");
  assert.not.ok(kernel.sim.writes.some((write) => write.path.startsWith("/sys/class/vtconsole/")), "no console was unbound");
  assert.match(kernel.sim.read(paths.log) ?? "", "vfio: console vtcon1 ((M) frame buffer device) stays: it shows on fb0 of 0000:00:02.0 (i915), which the host keeps");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test('single-gpu="yes" for a second GPU: a program on the framebuffer of the iGPU the host keeps (fbterm on fb0) does not hold the VM\'s GPU; one on the VM\'s fb1 refuses', async () => {
  const kernel = twoFramebuffers().process(900, "fbterm", ["/dev/fb0"]);
  const xml = domainXml('<vmhook:vfio single-gpu="yes"/>');
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);

  const held = twoFramebuffers().process(900, "fbterm", ["/dev/fb1"]);
  const before = held.sim.snapshot();
  const refused = await runHookEvent(held.sim, "prepare", "begin", xml);
  assert.is(refused.code, 1);
  assert.match(firstLine(refused.stderr), "pid 900 (fbterm) holds /dev/fb1");
  assert.equal(held.sim.snapshot(), before);
});

test('single-gpu="yes" for a second GPU that fbcon shows on (con2fbmap put it there): its console lets go first', async () => {
  const kernel = twoFramebuffers();
  await kernel.sim.ioctl("/dev/fb1", 0x4610, new Uint8Array(new Uint32Array([1, 1]).buffer));
  const steps = await plannedSteps(kernel.sim, domainXml('<vmhook:vfio single-gpu="yes"/>'));
  assert.ok(steps.includes("vfio: unbind console vtcon1 ((M) frame buffer device)"), steps.join("\n"));
});

test('single-gpu="yes" for a second GPU when the kept iGPU\'s /dev/fb0 is missing (no udev node): which framebuffer fbcon shows on is unknown, so its console lets go', async () => {
  const kernel = twoFramebuffers();
  kernel.sim.remove("/dev/fb0");
  const steps = await plannedSteps(kernel.sim, domainXml('<vmhook:vfio single-gpu="yes"/>'));
  assert.ok(steps.includes("vfio: unbind console vtcon1 ((M) frame buffer device)"), steps.join("\n"));
});

test('single-gpu="yes" for a second GPU while the host keeps the boot GPU: its firmware framebuffer (efifb, the boot GPU\'s) stays bound', async () => {
  const kernel = twoFramebuffers().platformFramebuffer("efi-framebuffer", "efi-framebuffer.0");
  const before = kernel.sim.snapshot();
  const xml = domainXml('<vmhook:vfio single-gpu="yes"/>');
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.ok(kernel.sim.exists("/sys/bus/platform/drivers/efi-framebuffer/efi-framebuffer.0"), "the boot GPU's efifb stays");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

/** A kept NVIDIA card that efifb shows on (its driver registers no fbdev), a second GPU for the VM, fbcon on efifb's fb0 and fbterm using it. */
function efifbOnKeptGpu(kept: { classCode: string; bootVga?: boolean }, parent?: string): GpuKernel {
  return new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .device({ address: "0000:02:00.0", vendor: "0x10de", nativeDriver: "nvidia", group: 0, nodes: ["card0"], ...kept })
    .platformFramebuffer("efi-framebuffer", "efi-framebuffer.0", "fb0", parent)
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, nodes: ["card1", "fb1"] })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card0"]] } })
    .process(900, "fbterm", ["/dev/fb0"]);
}

/** single-gpu="yes" for the second GPU: it moves, efifb, its fb0 and the console on it stay, fbterm does not hold the VM's GPU; release puts back all. */
async function efifbAndConsoleStay(kernel: GpuKernel): Promise<void> {
  const before = kernel.sim.snapshot();
  const xml = domainXml('<vmhook:vfio single-gpu="yes"/>');
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.ok(kernel.sim.exists("/sys/bus/platform/drivers/efi-framebuffer/efi-framebuffer.0"), "efifb stays bound");
  assert.ok(kernel.sim.exists("/dev/fb0"), "efifb stays registered");
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "1");
  assert.match(kernel.sim.read(paths.log) ?? "", "vfio: console vtcon1 ((M) frame buffer device) stays: it shows on fb0 of efi-framebuffer.0 (the firmware framebuffer on 0000:02:00.0), which the host keeps");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
}

test('single-gpu="yes" for a second GPU while fbcon shows on efifb of the boot GPU the host keeps (its driver registers no fbdev): the console and efifb stay, and a program on efifb\'s fb0 does not hold the VM\'s GPU', async () => {
  await efifbAndConsoleStay(efifbOnKeptGpu({ classCode: "0x030000", bootVga: true }));
});

test('single-gpu="yes" for a second GPU on a host with no boot_vga (non-x86, a display controller of class 0380): Linux >= 6.9 names the kept GPU that efifb is on (its sysfs parent), so efifb, the console on it and a program on its fb0 stay', async () => {
  await efifbAndConsoleStay(efifbOnKeptGpu({ classCode: "0x038000" }, "0000:02:00.0"));
});

test("Linux >= 6.9 names the VM's GPU as the one efifb is on while boot_vga names the GPU the host keeps: efifb lets go with the VM's GPU", async () => {
  const kernel = twoFramebuffers().platformFramebuffer("efi-framebuffer", "efi-framebuffer.0", undefined, GPU);
  const steps = await plannedSteps(kernel.sim, domainXml('<vmhook:vfio single-gpu="yes"/>'));
  assert.ok(steps.includes("vfio: unbind efi-framebuffer.0 from efi-framebuffer"), steps.join("\n"));
});

test("the boot VGA GPU to the VM while the host keeps another display (single-GPU mode off): its firmware framebuffer lets go first (before Linux 6.0 vfio-pci leaves it holding the BARs: QEMU's \"can't reserve\"), and is bound again at release", async () => {
  const kernel = nvidiaDesktop().module({ name: "i915", driver: "i915", loaded: true }).device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 2, nodes: ["card1"] });
  for (const pid of [500, 501]) kernel.sim.remove(`/proc/${pid}`);
  kernel.unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card1"]] } });
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  assert.ok((await plannedSteps(kernel.sim, xml)).includes("vfio: unbind efi-framebuffer.0 from efi-framebuffer"));
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.ok(kernel.units.get("display-manager.service")!.active, "single-GPU mode stays off");
  assert.not.ok(kernel.sim.exists("/sys/bus/platform/drivers/efi-framebuffer/efi-framebuffer.0"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

// simpledrm (CONFIG_DRM_SIMPLEDRM, Fedora and Arch kernels) drives the
// firmware framebuffer in efifb's place: its platform driver is
// "simple-framebuffer", like simplefb's, and its fbdev emulation registers
// /dev/fb0 under that platform device, where fbcon shows the consoles.
/** An NVIDIA single-GPU desktop (its driver registers no fbdev) whose firmware framebuffer is simpledrm's simple-framebuffer.0, fbcon on its fb0. */
function simpledrmDesktop(): GpuKernel {
  return new GpuKernel()
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, bootVga: true, nodes: ["card1"] })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .platformFramebuffer("simple-framebuffer", "simple-framebuffer.0", "fb0")
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card1", "/dev/nvidiactl"]] } });
}

test("single GPU with simpledrm as the firmware framebuffer (not efifb): the console lets go of its fb0 and simple-framebuffer.0 is unbound at prepare; release binds it again, and fbcon is back on its fb0", async () => {
  const kernel = simpledrmDesktop();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "0");
  assert.not.ok(kernel.sim.exists("/sys/bus/platform/drivers/simple-framebuffer/simple-framebuffer.0"));
  assert.not.ok(kernel.sim.exists("/dev/fb0"));
  assert.match(kernel.sim.read(paths.log), "vfio: unbind simple-framebuffer.0 from simple-framebuffer: done");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "1");
  assert.equal(kernel.sim.snapshot(), before);
});

// efifb: /dev/fb0 held open keeps efifb's hold on BAR 0 after the unbind (test/kernel/efifb-holder.test.ts); simpledrm's fbdev emulation, unmeasured, is refused the same.
for (const [name, driver] of [["efifb", "efi-framebuffer"], ["simpledrm", "simple-framebuffer"]]) {
  test(`the boot VGA GPU to the VM beside another display (single-GPU mode off): a program holding its firmware framebuffer's /dev/fb0 (${name}) is refused, the host left as it was`, async () => {
    const kernel = new GpuKernel()
      .module({ name: "nvidia", driver: "nvidia", loaded: true })
      .module({ name: "i915", driver: "i915", loaded: true })
      .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, nodes: ["card1"] })
      .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, bootVga: true, nodes: ["card0"] })
      .platformFramebuffer(driver, `${driver}.0`, "fb0")
      .vtconsole("vtcon0", "(S) dummy device", false)
      .vtconsole("vtcon1", "(M) frame buffer device", true)
      .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card1"]] } })
      .process(900, "fbterm", ["/dev/fb0"]);
    const before = kernel.sim.snapshot();
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
    assert.is(result.code, 1, result.stderr);
    assert.match(firstLine(result.stderr), "pid 900 (fbterm) holds /dev/fb0");
    assert.ok(kernel.sim.exists(`/sys/bus/platform/drivers/${driver}/${driver}.0`), `${name} stays bound`);
    assert.equal(kernel.sim.snapshot(), before);
  });
}

test('single-gpu="yes" for a second GPU that fbcon shows on, a modular dummy console: prepare failing after the console let go maps tty1 back to that GPU\'s fb1, not to the first framebuffer (the iGPU\'s fb0)', async () => {
  const kernel = twoFramebuffers({ builtinConsole: false });
  await kernel.sim.ioctl("/dev/fb1", 0x4610, new Uint8Array(new Uint32Array([1, 1]).buffer));
  kernel.sim.ioctls.length = 0;
  kernel.sim.failWrite(`/sys/bus/pci/devices/${GPU}/driver/unbind`, "EBUSY");
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml('<vmhook:vfio single-gpu="yes"/>'));
  assert.is(result.code, 1);
  assert.match(result.stderr, "the host was left as it was");
  assert.equal(kernel.sim.ioctls.filter((call) => call.request === 0x4610), [{ path: "/dev/fb1", request: 0x4610, argument: [1, 0, 0, 0, 1, 0, 0, 0] }]);
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "1");
});

/** An Intel iGPU with SR-IOV (i915): the PF 00:02.0 shows the host's display, its VFs 00:02.1 and 00:02.2 share its slot, each in its own group. */
function sriovIgpu(firstVfNodes?: string[]): GpuKernel {
  const vf = (address: string, group: number, nodes?: string[]) => ({ address, classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group, physfn: "0000:00:02.0", nodes });
  const kernel = new GpuKernel()
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0"] });
  kernel.sim.file("/sys/bus/pci/devices/0000:00:02.0/sriov_numvfs", "2");
  return kernel
    .device(vf("0000:00:02.1", 1, firstVfNodes))
    .device(vf("0000:00:02.2", 2))
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card0"]] } });
}

test("an SR-IOV VF of the host's iGPU: only the VF moves; its PF (the host's display, whose unbind would destroy every VF) and the other VFs in its slot stay", async () => {
  const kernel = sriovIgpu();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: "0000:00:02.1" }]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf("0000:00:02.1"), "vfio-pci");
  assert.is(kernel.driverOf("0000:00:02.0"), "i915");
  assert.is(kernel.driverOf("0000:00:02.2"), "i915");
  assert.ok(kernel.units.get("display-manager.service")!.active, "the host keeps its display");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test("an SR-IOV PF with VFs is refused before anything changes (single-GPU would stop the display manager), naming them: its driver's remove() destroys every VF (some may be other VMs')", async () => {
  const kernel = sriovIgpu();
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml('<vmhook:vfio single-gpu="yes"/>', [{ address: "0000:00:02.0" }]));
  assert.is(result.code, 1);
  assert.match(
    firstLine(result.stderr),
    "vfio: 0000:00:02.0 is an SR-IOV physical function with 2 virtual functions (0000:00:02.1, 0000:00:02.2): unbinding its driver destroys them; echo 0 > /sys/bus/pci/devices/0000:00:02.0/sriov_numvfs first",
  );
  assert.equal(kernel.sim.snapshot(), before);
});

/** The desktop's NVIDIA card keeps the host's display; an Intel iGPU beside it is a GVT-g mdev parent (as i915.enable_gvt=1 makes it). */
function gvtBesideNvidia(): GpuKernel {
  return nvidiaDesktop()
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: IGPU, classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 2, nodes: ["card1"], mdevTypes: GVT_TYPES });
}

const IGPU = "0000:00:02.0";
const MDEV = "4b20d080-1b54-4048-85b3-a6a62d165c01";

test("a GPU whose driver holds mdevs (GVT-g) is refused before anything changes, naming them and the VM vmhook made one for: unbinding the driver removes every mdev, and blocks while a VM uses one", async () => {
  const kernel = gvtBesideNvidia();
  const vmA = `<domain type='kvm'><name>vmA</name><uuid>aaaaaaaa-1111-4111-8111-111111111111</uuid><memory unit='GiB'>2</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:mdev parent="${IGPU}" type="i915-GVTg_V5_4"/></vmhook:hooks></metadata>
  <devices>${mdevHostdevXml(MDEV)}</devices></domain>`;
  const prepared = await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA");
  assert.is(prepared.code, 0, prepared.stderr);
  const before = kernel.sim.snapshot();

  const xml = domainXml("<vmhook:vfio/>", [{ address: IGPU }]);
  const result = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(result.code, 1, result.stderr);
  assert.match(firstLine(result.stderr), `vfio: ${IGPU} is the parent of mdev ${MDEV} (i915-GVTg_V5_4, created by vmhook for domain vmA): unbinding its driver removes its mdevs, and blocks while a VM uses one`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.is(kernel.driverOf(IGPU), "i915");
  assert.equal(kernel.sim.stateFiles(), ["aaaaaaaa-1111-4111-8111-111111111111.json"]);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before, "the refused VM's release changes nothing");
});

test("a device that shares its IOMMU group with a GVT-g parent: refused as the parent would be (vfio takes the group whole), naming the mdev, its type and its VM, not with advice to add the parent to devices=", async () => {
  const AUDIO = "0000:00:1f.3";
  const kernel = gvtBesideNvidia().device({ address: AUDIO, classCode: "0x040300", vendor: "0x8086", group: 2 });
  const vmA = `<domain type='kvm'><name>vmA</name><uuid>aaaaaaaa-1111-4111-8111-111111111111</uuid><memory unit='GiB'>2</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:mdev parent="${IGPU}" type="i915-GVTg_V5_4"/></vmhook:hooks></metadata>
  <devices>${mdevHostdevXml(MDEV)}</devices></domain>`;
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA")).code, 0);
  const before = kernel.sim.snapshot();

  const xml = domainXml("<vmhook:vfio/>", [{ address: AUDIO }]);
  const result = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(result.code, 1, result.stderr);
  assert.match(
    firstLine(result.stderr),
    `vfio: ${IGPU} shares IOMMU group 2 with ${AUDIO}, which goes to the VM, and is the parent of mdev ${MDEV} (i915-GVTg_V5_4, created by vmhook for domain vmA): vfio takes a group whole, and unbinding its driver removes its mdevs`,
  );
  assert.not.match(result.stderr, "add those devices to devices=");
  assert.equal(kernel.sim.snapshot(), before);
  assert.is(kernel.driverOf(IGPU), "i915");
});

test("an mdev on a GPU another VM holds on vfio-pci is refused at prepare, naming that VM, not as a host without mdev parents; nothing changes", async () => {
  const kernel = gvtBesideNvidia();
  const xml = domainXml("<vmhook:vfio/>", [{ address: IGPU }]);
  const prepared = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  const before = kernel.sim.snapshot();
  const vmA = `<domain type='kvm'><name>vmA</name><uuid>aaaaaaaa-1111-4111-8111-111111111111</uuid><memory unit='GiB'>2</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:mdev parent="${IGPU}" type="i915-GVTg_V5_4"/></vmhook:hooks></metadata>
  <devices>${mdevHostdevXml(MDEV)}</devices></domain>`;
  const result = await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA");
  assert.is(result.code, 1, result.stderr);
  assert.match(firstLine(result.stderr), `${IGPU} is held by VM win11 (vmhook moved it to vfio-pci for it)`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), [`${UUID}.json`, "claims.json"]);
  // win11's release gives the GPU back to i915, which makes it an mdev parent again.
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  const again = await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA");
  assert.is(again.code, 0, again.stderr);
  assert.ok(kernel.sim.exists(`/sys/bus/pci/devices/${IGPU}/${MDEV}/mdev_type`));
});

test("an mdev whose parent's driver let go while the VM ran (the kernel removed it with the parent): release exits 0 with a clean journal, and once i915 is back the next start creates it again", async () => {
  const kernel = gvtBesideNvidia();
  const vmA = `<domain type='kvm'><name>vmA</name><uuid>aaaaaaaa-1111-4111-8111-111111111111</uuid><memory unit='GiB'>2</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:mdev parent="${IGPU}" type="i915-GVTg_V5_4"/></vmhook:hooks></metadata>
  <devices>${mdevHostdevXml(MDEV)}</devices></domain>`;
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA")).code, 0);
  kernel.sim.write("/sys/bus/pci/drivers/i915/unbind", IGPU);
  assert.not.ok(kernel.sim.exists(`/sys/bus/mdev/devices/${MDEV}`));
  const release = await runHookEvent(kernel.sim, "release", "end", vmA, "vmA");
  assert.is(release.code, 0, release.stderr);
  assert.is(release.stderr, "");
  assert.equal(kernel.sim.stateFiles(), []);
  kernel.sim.write("/sys/bus/pci/drivers_probe", IGPU);
  const again = await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA");
  assert.is(again.code, 0, again.stderr);
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${IGPU}/mdev_supported_types/i915-GVTg_V5_4/available_instances`), "1");
});

test("a domain given both the whole GVT-g GPU and an mdev of it is refused before anything changes, in either order: moving the GPU to vfio-pci would remove the mdev it just made", async () => {
  const mdev = `<vmhook:mdev parent="${IGPU}" type="i915-GVTg_V5_4"/>`;
  for (const hooks of [`${mdev}<vmhook:vfio/>`, `<vmhook:vfio/>${mdev}`]) {
    const kernel = gvtBesideNvidia();
    const before = kernel.sim.snapshot();
    const xml = domainXml(hooks, [{ address: IGPU }]).replace("</devices>", `${mdevHostdevXml(MDEV)}</devices>`);
    const result = await runHookEvent(kernel.sim, "prepare", "begin", xml);
    const refusal = `<vmhook:mdev parent="${IGPU}" type="i915-GVTg_V5_4">: parent ${IGPU} is also passed whole to this domain (its <hostdev> of ${IGPU}): moving it to vfio-pci removes every mdev on it; give the VM either the whole device (take out this element and its mdev <hostdev>) or an mdev of it (take out that <hostdev>)`;
    assert.is(result.code, 1, hooks);
    assert.match(firstLine(result.stderr), refusal);
    const { findings } = (await runDoctor(kernel.sim, { file: "vm.xml", xml })).domain!;
    const doctored = findings.find((finding) => finding.check === "mdev i915-GVTg_V5_4")!;
    assert.equal([doctored.status, doctored.reason], ["fail", refusal], "doctor says what prepare refuses");
    assert.equal(kernel.sim.snapshot(), before, hooks);
    assert.is(kernel.driverOf(IGPU), "i915");
  }
});

test("an SR-IOV VF gone while the VM ran (its PF's sriov_numvfs set to 0): release says to create it again through sriov_numvfs, which a rescan never does, and keeps the journal", async () => {
  const kernel = sriovIgpu(["card1", "renderD129"]);
  const xml = domainXml("<vmhook:vfio/>", [{ address: "0000:00:02.1" }]);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  // echo 0 > sriov_numvfs: the PF's driver removes every VF.
  for (const vf of ["0000:00:02.1", "0000:00:02.2"]) kernel.sim.write(`/sys/bus/pci/devices/${vf}/remove`, "1");
  kernel.sim.file("/sys/bus/pci/devices/0000:00:02.0/sriov_numvfs", "0");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  const advice = "0000:00:02.1 is gone from the PCI bus: it is an SR-IOV virtual function of 0000:00:02.0, which no rescan finds again; create it again with echo 2 > /sys/bus/pci/devices/0000:00:02.0/sriov_numvfs (the number of VFs it had), then run vmhook recover";
  assert.match(release.stderr, `vfio: ${advice}`);
  assert.match(release.stderr, `vfio: the display of ${advice}`);
  assert.not.match(release.stderr, "/sys/bus/pci/rescan");
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => entry.state), ["undo-failed", "undo-failed"]);
});

test("a device unplugged after the plan (while vfio-pci loads): prepare fails naming it, the GPU goes back, and no record of the device that was never changed blocks the next start", async () => {
  const kernel = twoGpuWorkstation();
  const modprobe = kernel.sim.execHandler("modprobe")!;
  kernel.sim.onExec("modprobe", (args, sim, options) => {
    sim.write(`/sys/bus/pci/devices/${AUDIO}/remove`, "1");
    return modprobe(args, sim, options);
  });
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(prepare.code, 1);
  assert.match(firstLine(prepare.stderr), `vfio: ${AUDIO} is gone from the PCI bus; echo 1 > /sys/bus/pci/rescan, or take it out of the domain; then start the VM again (it left the bus after the plan: nothing of it was changed)`);
  assert.match(prepare.stderr, "the host was left as it was");
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.equal(readJournal(kernel.sim, UUID), undefined);
});

test("a program holding the passed GPU's render node makes prepare refuse, naming pid and command", async () => {
  const kernel = twoGpuWorkstation().process(4242, "blender", ["/dev/null", "/dev/dri/renderD129"]);
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "the GPU is in use: pid 4242 (blender) holds /dev/dri/renderD129");
  assert.equal(kernel.sim.snapshot(), before);
});

// Xorg opens every GPU (AutoAddGPU): on a host that keeps another display, single-GPU mode is off and the display manager stays, which the refusal says, and why.
test("the display manager's Xorg holding the passed GPU while the host keeps another display: refused, saying single-GPU mode is off and which display the host keeps", async () => {
  const kernel = twoGpuWorkstation().process(500, "Xorg", ["/dev/dri/card0", "/dev/dri/card1"], "/system.slice/display-manager.service");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(
    firstLine(result.stderr),
    'the GPU is in use: pid 500 (Xorg) holds /dev/dri/card1 in display-manager.service; vmhook stops nothing here (single-GPU mode is off: the host keeps a display on 0000:00:02.0 (i915); with single-gpu="yes" vmhook stops the display manager too): close those programs',
  );
  assert.equal(kernel.sim.snapshot(), before);
});

test("a module used by one outside unload-modules is refused before anything changes", async () => {
  const kernel = nvidiaDesktop();
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml('<vmhook:vfio unload-modules="nvidia_modeset,nvidia"/>'));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "cannot unload module nvidia_modeset: module nvidia_drm uses it; add nvidia_drm to unload-modules");
  assert.equal(kernel.sim.snapshot(), before);
});

test("unload-modules=\"auto\" with nvidia_peermem loaded (it uses nvidia): the refusal names the whole list to write, not \"add it to unload-modules\" (auto takes no additions), and that list works", async () => {
  const kernel = nvidiaDesktop().module({ name: "nvidia_peermem", uses: ["nvidia"], loaded: true });
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  const advised = 'unload-modules="nvidia_peermem,nvidia_drm,nvidia_modeset,nvidia_uvm,nvidia"';
  assert.match(firstLine(result.stderr), `cannot unload module nvidia: module nvidia_peermem uses it; unload-modules="auto" unloads only nvidia_drm, nvidia_modeset, nvidia_uvm, nvidia: name them all, ${advised}, or leave them loaded (unload-modules="none")`);
  assert.equal(kernel.sim.snapshot(), before);

  const xml = domainXml(`<vmhook:vfio ${advised}/>`);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.not.ok(kernel.loaded("nvidia") || kernel.loaded("nvidia_peermem"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("unload-modules: a name neither loaded nor in the running kernel's module tree (a typo) is refused by validate and at prepare, naming it and the fix; a known module that is not loaded is skipped, in either spelling", async () => {
  const kernel = nvidiaDesktop().module({ name: "nvidia_peermem" });
  const file = kernel.sim.file("/vm.xml", domainXml('<vmhook:vfio unload-modules="nvidia_drm,nvidia_modeset,nvidia_uvm,nvidia,nvidia_drn"/>')).resolve("/vm.xml");
  const before = kernel.sim.snapshot();
  const refusal =
    "vfio: <vmhook:vfio> unload-modules names nvidia_drn, which is neither loaded nor in this kernel's modules (/lib/modules/6.1.0-sim: modules.dep, modules.builtin); check its spelling (lsmod lists the loaded modules), or, for an out-of-tree (DKMS) module not built for kernel 6.1.0-sim, build it or remove it from unload-modules";
  const validate = await cli(["validate", file, "--root", kernel.sim.root], kernel.sim);
  assert.equal([validate.code, validate.stdout], [1, `${file}: valid, but prepare would refuse it on this host:\n  ${refusal}\n`]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", kernel.sim.read("/vm.xml"));
  assert.is(prepare.code, 1);
  assert.is(firstLine(prepare.stderr), `vmhook: ${refusal}`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.not.ok(kernel.sim.execs.some((e) => e.command === "rmmod" || e.command === "modprobe" || (e.command === "systemctl" && e.args[0] === "stop")));

  const known = domainXml('<vmhook:vfio unload-modules="nvidia_drm,nvidia_modeset,nvidia_uvm,nvidia,nvidia-peermem"/>');
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", known)).code, 0);
  assert.not.ok(kernel.loaded("nvidia"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", known)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

/** The iGPU's display (0000:0c:00.0, boot VGA, fbcon on its fb0) stays the host's; the dGPU and its audio (group 1) go to the VM. Both GPUs on amdgpu, which uses drm_ttm_helper. */
function amdIgpuAndDgpu(): GpuKernel {
  const kernel = new GpuKernel()
    .module({ name: "drm_ttm_helper", loaded: true })
    .module({ name: "amdgpu", driver: "amdgpu", uses: ["drm_ttm_helper"], loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .device({ address: "0000:0c:00.0", classCode: "0x030000", vendor: "0x1002", deviceId: "0x1638", nativeDriver: "amdgpu", group: 12, bootVga: true, nodes: ["card0", "renderD128", "fb0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", deviceId: "0x73bf", nativeDriver: "amdgpu", group: 1, nodes: ["card1", "renderD129"], resetMethod: "bus" })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x1002", nativeDriver: "snd_hda_intel", group: 1 })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .unit({ name: "display-manager.service", active: true, processes: { 501: ["gdm", ["/dev/null"]] } });
  kernel.sim.file("/usr/share/misc/pci.ids", "1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\t1638  Cezanne [Radeon Vega Series / Radeon Vega Mobile Series]\n\t73bf  Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]\n");
  return kernel;
}

const KEPT_IGPU = "0000:0c:00.0 (1002:1638 Advanced Micro Devices, Inc. [AMD/ATI] Cezanne [Radeon Vega Series / Radeon Vega Mobile Series]) on driver amdgpu";

/** The refusal of an unload-modules list whose `named` modules `devices` the host keeps need; `rest`: the list without them. */
function keptNeeds(named: string[], devices: string[], rest = "none"): string {
  const [one, it] = devices.length === 1 ? ["a device the host keeps needs", "that device, and any display on it,"] : ["devices the host keeps need", "those devices, and any display on them,"];
  return `vfio: <vmhook:vfio> unload-modules names ${named.join(", ")}, which ${one}: ${devices.join(", ")}; unloading ${named.length === 1 ? "it" : "them"} would take ${it} from the host; remove ${named.join(", ")} from unload-modules (unload-modules="${rest}"): unbinding alone hands the VM's devices over, which is all amdgpu, i915, xe, nouveau and radeon need`;
}

// amdgpu (i915, xe, radeon, nouveau, nvidia) drives every card of its make: unloading it for the VM's takes the host's too.
test("explicit unload-modules naming the driver of a card the host keeps (an AMD iGPU with the host's display beside the VM's AMD dGPU): refused at prepare, by validate and plan, before anything changes; the advised list works", async () => {
  const kernel = amdIgpuAndDgpu();
  const file = kernel.sim.file("/vm.xml", domainXml('<vmhook:vfio unload-modules="amdgpu"/>')).resolve("/vm.xml");
  const before = kernel.sim.snapshot();
  const refusal = keptNeeds(["amdgpu"], [KEPT_IGPU]);
  const validate = await cli(["validate", file, "--root", kernel.sim.root], kernel.sim);
  assert.equal([validate.code, validate.stdout], [1, `${file}: valid, but prepare would refuse it on this host:\n  ${refusal}\n`]);
  const plan = await cli(["plan", file, "--root", kernel.sim.root], kernel.sim);
  assert.is(plan.code, 1);
  assert.match(plan.stdout, `. vfio: unload module amdgpu\n     REFUSED: ${refusal}\n`);
  assert.match(plan.stdout, "prepare of win11 would fail: vmhook refuses the marked step(s) before changing anything");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", kernel.sim.read("/vm.xml"));
  assert.is(prepare.code, 1, "prepare went ahead and unloaded the host's display driver");
  assert.is(firstLine(prepare.stderr), `vmhook: ${refusal}`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.not.ok(kernel.sim.execs.some((e) => e.command === "rmmod" || e.command === "modprobe" || (e.command === "systemctl" && e.args[0] === "stop")));

  const advised = domainXml('<vmhook:vfio unload-modules="none"/>');
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", advised)).code, 0);
  assert.equal([kernel.driverOf(GPU), kernel.driverOf("0000:0c:00.0")], ["vfio-pci", "amdgpu"]);
  assert.is((await runHookEvent(kernel.sim, "release", "end", advised)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("vmhook doctor fails an explicit unload-modules that prepare refuses (a typo, the driver of a card the host keeps) in prepare's words and fix, from the same check; plan marks the refused unload steps alone, not every vfio step", async () => {
  const kernel = amdIgpuAndDgpu();
  kernel.sim.file(paths.policy, JSON.stringify({ vfio: { modules: ["amdgpu_drn"] } }));
  const xml = domainXml('<vmhook:vfio unload-modules="amdgpu,amdgpu_drn"/>');
  const file = kernel.sim.file("/vm.xml", xml).resolve("/vm.xml");
  const typo =
    "vfio: <vmhook:vfio> unload-modules names amdgpu_drn, which is neither loaded nor in this kernel's modules (/lib/modules/6.1.0-sim: modules.dep, modules.builtin); check its spelling (lsmod lists the loaded modules), or, for an out-of-tree (DKMS) module not built for kernel 6.1.0-sim, build it or remove it from unload-modules";
  const kept = keptNeeds(["amdgpu"], [KEPT_IGPU], "amdgpu_drn");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.equal([prepare.code, firstLine(prepare.stderr)], [1, `vmhook: ${typo}`]);

  const report = await runDoctor(kernel.sim, { file: "vm.xml", xml });
  const findings = report.domain!.findings.filter((finding) => finding.check === "unload-modules");
  assert.equal(
    findings.map((finding) => [finding.status, finding.plugin, `vfio: ${finding.reason}; ${finding.fix}`]),
    [["fail", "vfio", typo], ["fail", "vfio", kept]],
  );

  const plan = JSON.parse((await cli(["plan", "--json", file, "--root", kernel.sim.root], kernel.sim)).stdout);
  const refused = plan.steps.filter((step: { refused?: unknown }) => step.refused);
  assert.ok(plan.steps.length > refused.length, "the other vfio steps are planned");
  assert.equal(refused.map((step: { description: string; refused: { reason: string } }) => [step.description, step.refused.reason]), [["unload module amdgpu_drn", typo], ["unload module amdgpu", kept]]);

  const fine = domainXml('<vmhook:vfio unload-modules="none"/>');
  assert.equal((await runDoctor(kernel.sim, { file: "vm.xml", xml: fine })).domain!.findings.filter((finding) => finding.check === "unload-modules"), []);
});

test("explicit unload-modules naming a module the kept card's driver uses (drm_ttm_helper under amdgpu): refused as the kept card's, not with \"add amdgpu to unload-modules\" (alone) or unloaded with amdgpu (with it)", async () => {
  const kernel = amdIgpuAndDgpu();
  kernel.sim.file(paths.policy, JSON.stringify({ vfio: { modules: ["drm_ttm_helper"] } }));
  const before = kernel.sim.snapshot();
  for (const named of [["drm_ttm_helper"], ["drm_ttm_helper", "amdgpu"]]) {
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", domainXml(`<vmhook:vfio unload-modules="${named.join(",")}"/>`));
    assert.is(prepare.code, 1, named.join(","));
    assert.is(firstLine(prepare.stderr), `vmhook: ${keptNeeds(named, [KEPT_IGPU])}`);
    assert.equal(kernel.sim.snapshot(), before);
  }
});

test("explicit unload-modules naming modules that use the driver of a card the host keeps (nvidia_drm, the display of the host's NVIDIA card): refused, as is a list that would have been told to add nvidia_drm", async () => {
  const kernel = twoNvidiaCards().module({ name: "nvidia_modeset", uses: ["nvidia"], loaded: true }).module({ name: "nvidia_drm", uses: ["nvidia_modeset"], loaded: true });
  kernel.sim.file(paths.policy, JSON.stringify({ vfio: { modules: ["snd_hda_intel"] } }));
  const before = kernel.sim.snapshot();
  const kept = "0000:02:00.0 (10de:1234) on driver nvidia";
  for (const [list, named, rest] of [
    ["nvidia_drm,nvidia_modeset", ["nvidia_drm", "nvidia_modeset"], "none"],
    ["nvidia_modeset,nvidia", ["nvidia_modeset", "nvidia"], "none"],
    ["snd_hda_intel,nvidia-drm", ["nvidia_drm"], "snd_hda_intel"],
  ] as const) {
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", domainXml(`<vmhook:vfio unload-modules="${list}"/>`));
    assert.is(prepare.code, 1, list);
    assert.is(firstLine(prepare.stderr), `vmhook: ${keptNeeds([...named], [kept], rest)}`, list);
    assert.equal(kernel.sim.snapshot(), before, list);
  }
});

test("explicit unload-modules naming the driver of the VM's card only (amdgpu, while the host keeps its i915 iGPU): it is unloaded, and loaded again at release", async () => {
  const kernel = twoGpuWorkstation();
  const before = kernel.sim.snapshot();
  const xml = domainXml('<vmhook:vfio unload-modules="amdgpu"/>');
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.not.ok(kernel.loaded("amdgpu"));
  assert.equal([kernel.driverOf(GPU), kernel.driverOf("0000:00:02.0")], ["vfio-pci", "i915"]);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a GPU that does not come back: release names what it tried and the remedy, keeps the journal; recovery retries it", async () => {
  const kernel = twoGpuWorkstation();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  settings(kernel, { bindTimeoutSeconds: 1 });
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  kernel.stuck.add(GPU);
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(release.stderr, `${GPU} did not come back to amdgpu: tried probe (amdgpu refused it: ENODEV), reset (amdgpu refused it: ENODEV), remove + rescan (amdgpu refused it: ENODEV); dmesg says why`);
  const journal = readJournal(kernel.sim, UUID)!;
  assert.equal(journal.entries.map((e) => `${e.state} ${e.description}`), [
    `undo-failed at release, check that the display is back: ${GPU} on amdgpu with card, renderD`,
    `undo-failed bind ${GPU} to vfio-pci (from amdgpu)`,
  ]);
  assert.is(kernel.driverOf(AUDIO), "snd_hda_intel", "the rest of the release still ran");

  // What vmhook recover does once the card is back on the bus.
  kernel.stuck.delete(GPU);
  const log = createLogger(kernel.sim, { echo: "none", file: false });
  const result = await undoJournal(journal, { host: kernel.sim, log, settings: { ...DEFAULT_SETTINGS, plugins: { vfio: { bindTimeoutSeconds: 1 } } }, registry }, new Deadline(kernel.sim, 10_000));
  assert.equal(result.failed, []);
  kernel.sim.remove("/etc");
  assert.equal(kernel.sim.snapshot(), before);
});

test("the GPU's driver unloaded while the VM ran: release keeps the change and says what to do; after modprobe, recovery finishes it", async () => {
  const kernel = twoGpuWorkstation();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  assert.is(kernel.sim.exec("rmmod", ["amdgpu"], { timeoutMs: 1000 }).status, 0);
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(release.stderr, `${GPU} cannot go back to amdgpu: that driver is no longer registered (its module was unloaded); load it (modprobe), then run vmhook recover`);
  const journal = readJournal(kernel.sim, UUID)!;
  assert.equal(
    journal.entries.map((e) => `${e.state} ${e.description}`),
    [`undo-failed at release, check that the display is back: ${GPU} on amdgpu with card, renderD`, `undo-failed bind ${GPU} to vfio-pci (from amdgpu)`],
    "not forgotten with the GPU on no driver",
  );
  assert.is(kernel.driverOf(GPU), undefined);

  kernel.sim.exec("modprobe", ["amdgpu"], { timeoutMs: 1000 });
  const log = createLogger(kernel.sim, { echo: "none", file: false });
  const result = await undoJournal(journal, { host: kernel.sim, log, settings: DEFAULT_SETTINGS, registry }, new Deadline(kernel.sim, 10_000));
  assert.equal(result.failed, []);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("release while another VM uses vfio (a device on vfio-pci, its QEMU holding vfio_iommu_type1): the modules stay loaded, the release succeeds", async () => {
  const kernel = twoGpuWorkstation();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  assert.ok(kernel.loaded("vfio_iommu_type1"), "modprobe vfio-pci loads it (softdep of vfio)");
  // The other VM: its USB controller on vfio-pci, its QEMU's container holding the IOMMU backend.
  const other = "0000:05:00.0";
  kernel.sim.write(`/sys/bus/pci/devices/${other}/driver_override`, "vfio-pci");
  kernel.sim.write(`/sys/bus/pci/devices/${other}/driver/unbind`, other);
  kernel.sim.write("/sys/bus/pci/drivers_probe", other);
  kernel.hold("vfio_iommu_type1");

  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0);
  assert.is(release.stderr, "", "nothing failed");
  assert.equal(kernel.sim.stateFiles(), []);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.is(kernel.driverOf(other), "vfio-pci");
  for (const module of ["vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "vfio"]) assert.ok(kernel.loaded(module), module);
});

test("Intel iGPU on i915 + NVIDIA dGPU as boot VGA: single-GPU auto stays off (the host keeps a display), the NVIDIA stack unloads", async () => {
  const kernel = nvidiaDesktop().module({ name: "i915", driver: "i915", loaded: true }).device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 2, nodes: ["card1"] });
  // Xorg runs on the iGPU only.
  for (const pid of [500, 501]) kernel.sim.remove(`/proc/${pid}`);
  kernel.unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/dri/card1"]] } });
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.ok(kernel.units.get("display-manager.service")!.active);
  assert.is(kernel.sim.readTrimmed("/sys/class/vtconsole/vtcon1/bind"), "1");
  assert.not.ok(kernel.loaded("nvidia"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("single-GPU auto: a compute-only card beside the boot GPU (a 3D controller, class 0302, with no display outputs) is no host display, so the boot GPU's handover stops the display manager", async () => {
  const kernel = nvidiaDesktop()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .device({ address: "0000:02:00.0", classCode: "0x030200", vendor: "0x1002", nativeDriver: "amdgpu", group: 2, nodes: ["renderD129"] });
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(kernel.driverOf("0000:02:00.0"), "amdgpu");
  assert.not.ok(kernel.units.get("display-manager.service")!.active);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("the handover takes the host-wide lock: while another vmhook holds it (a VM starting or releasing), prepare waits and changes nothing", async () => {
  const kernel = twoGpuWorkstation();
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ deadlineSeconds: 1 }));
  const before = kernel.sim.snapshot();
  const { dlopen, FFIType } = await import("bun:ffi");
  const libc = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
  kernel.sim.dir(paths.stateDir);
  const fd = fs.openSync(kernel.sim.resolve(paths.hostLock), "a");
  try {
    assert.is(libc.symbols.flock(fd, 2 /* LOCK_EX */), 0);
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
    assert.is(result.code, 1);
    assert.match(firstLine(result.stderr), "another vmhook held the host-wide lock");
    assert.equal(kernel.sim.snapshot(), before);
  } finally {
    fs.closeSync(fd);
    libc.close();
  }
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"))).code, 0);
});

test("single-GPU auto: a second GPU already on vfio-pci (another VM's) is no host display, so the boot GPU's handover stops the display manager", async () => {
  const kernel = nvidiaDesktop().device({ address: "0000:02:00.0", classCode: "0x030000", vendor: "0x1002", group: 2 });
  kernel.sim.write("/sys/bus/pci/devices/0000:02:00.0/driver_override", "vfio-pci");
  kernel.sim.exec("modprobe", ["vfio-pci"], { timeoutMs: 1000 });
  assert.is(kernel.driverOf("0000:02:00.0"), "vfio-pci");
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.not.ok(kernel.units.get("display-manager.service")!.active);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("managed='yes', reattached before release by someone else (virsh nodedev-reattach): release finds them back and changes nothing twice", async () => {
  const kernel = twoGpuWorkstation();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>", [{ address: GPU, managed: true }]);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  // libvirt itself skips the reattach (it found them on vfio-pci); nodedev-reattach: unbind, clear driver_override, reprobe.
  for (const address of [GPU, AUDIO]) {
    kernel.sim.write(`/sys/bus/pci/drivers/vfio-pci/unbind`, address);
    kernel.sim.write(`/sys/bus/pci/devices/${address}/driver_override`, "\n");
    kernel.sim.write("/sys/bus/pci/drivers_probe", address);
  }
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test("reconnect (libvirtd restarted): a device no longer on vfio-pci is logged, nothing changes, and release still gives back the rest", async () => {
  const kernel = twoGpuWorkstation();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  kernel.sim.write("/sys/bus/pci/drivers/vfio-pci/unbind", AUDIO);
  kernel.sim.execs.length = 0;
  const reconnect = await runHookEvent(kernel.sim, "reconnect", "begin", xml);
  assert.is(reconnect.code, 0);
  assert.equal(kernel.sim.execs, []);
  assert.match(kernel.sim.read("/var/log/vmhook.log"), `vfio: ${AUDIO} should be on vfio-pci while win11 runs, but is on no driver`);
  assert.is(readJournal(kernel.sim, UUID)!.entries.length, 4);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("reconnect: a journaled device address that is not a PCI address is refused by the record's check, never read as a sysfs path", async () => {
  const kernel = twoGpuWorkstation();
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  const journal = readJournal(kernel.sim, UUID)!;
  const bind = journal.entries.find((entry) => entry.undo.action === "bind-vfio" && entry.undo.address === AUDIO)!;
  bind.undo.address = "../../../../../run/elsewhere";
  fs.writeFileSync(kernel.sim.resolve(paths.journal(UUID)), JSON.stringify(journal));
  kernel.sim.failReadlink(/elsewhere/, "EACCES");
  const reconnect = await runHookEvent(kernel.sim, "reconnect", "begin", xml);
  assert.is(reconnect.code, 0);
  const log = kernel.sim.read("/var/log/vmhook.log");
  assert.match(log, `vfio: reconnect check failed: vfio: the journal names "../../../../../run/elsewhere", which is not a PCI address`);
});

test("without systemd: the configured display manager commands stop it, vmhook waits for its processes, and start it again", async () => {
  const kernel = withoutSystemd("sddm");
  rcServiceSddm(kernel);
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.not.ok(kernel.sim.exists("/proc/900"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.execs.filter((e) => e.command === "rc-service").map((e) => e.args[1]), ["stop", "start"]);
  assert.equal(kernel.sim.snapshot(), before);

  // A start command that returns but starts nothing: the release says so and keeps the record.
  settings(kernel, { displayManagerCommand: { stop: ["rc-service", "sddm", "stop"], start: ["rc-service", "sddm", "start"], processes: ["sddm"] }, stopTimeoutSeconds: 1 });
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  kernel.sim.onExec("rc-service", () => {});
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.match(release.stderr, "the display manager did not come back: rc-service sddm start ran, but no sddm process runs");
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => entry.undo.action), ["stop-display-manager"]);

  // A process whose name cannot be read is said as that, never as a display manager that did not come back.
  kernel.sim.onExec("rc-service", () => void kernel.process(900, "sddm", ["/dev/dri/card0"]));
  kernel.sim.failRead("/proc/900/comm", "EIO");
  const unreadable = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.match(unreadable.stderr, "cannot read /proc/900/comm (EIO)");
  assert.not.match(unreadable.stderr, "did not come back");
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => entry.undo.action), ["stop-display-manager"]);
});

test("without systemd, displayManagerCommand naming no processes: the refusal of its holder says the display manager's stop command runs and that no process of it is named, never \"the display manager's  processes\"", async () => {
  const kernel = withoutSystemd("sddm");
  settings(kernel, { displayManagerCommand: { stop: ["rc-service", "sddm", "stop"], start: ["rc-service", "sddm", "start"], processes: [] } });
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(
    firstLine(result.stderr),
    'pid 900 (sddm) holds /dev/dri/card0 in cgroup /; vmhook stops only the display manager (rc-service sddm stop; "displayManagerCommand.processes" names none of its processes): close those programs',
  );
  assert.equal(kernel.sim.snapshot(), before);
});

test("without systemd: a displayManagerCommand process longer than the 15 characters the kernel keeps of a name (it never matches) is refused at prepare, naming it and the name to write", async () => {
  const kernel = withoutSystemd("lightdm-gtk-gre");
  const lightdm = (verb: string) => ["rc-service", "lightdm", verb];
  settings(kernel, { displayManagerCommand: { stop: lightdm("stop"), start: lightdm("start"), processes: ["lightdm", "lightdm-gtk-greeter"] } });
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), 'plugins.vfio.displayManagerCommand.processes names "lightdm-gtk-greeter", which no process matches: /proc/PID/comm keeps the first 15 characters of a name; write "lightdm-gtk-gre" (as ps -e shows it)');
  assert.equal(kernel.sim.execs.filter((e) => e.command === "rc-service"), [], "nothing was stopped");
  assert.equal(kernel.sim.snapshot(), before);
});

test("single-GPU without a display manager to stop: a holder of the GPU is refused at once", async () => {
  const kernel = nvidiaDesktop();
  kernel.units.get("display-manager.service")!.active = false;
  kernel.process(800, "plymouthd", ["/dev/fb0"]);
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml('<vmhook:vfio single-gpu="yes"/>'));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "pid 800 (plymouthd) holds /dev/fb0");
});

test("a boot GPU already on vfio-pci (vfio-pci.ids) is left alone: no single-GPU mode, no steps", async () => {
  const kernel = new GpuKernel()
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, bootVga: true })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x10de", nativeDriver: "snd_hda_intel", group: 1 })
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/tty7"]] } });
  for (const address of [GPU, AUDIO]) kernel.sim.write(`/sys/bus/pci/devices/${address}/driver_override`, "vfio-pci");
  kernel.sim.exec("modprobe", ["vfio-pci"], { timeoutMs: 1000 });
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  const before = kernel.sim.snapshot();
  kernel.sim.execs.length = 0;
  const xml = domainXml("<vmhook:vfio/>");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml)).code, 0);
  assert.equal(kernel.sim.execs, []);
  assert.equal(readJournal(kernel.sim, UUID)!.entries, []);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

/** Two NVIDIA cards: the VM's (GPU + AUDIO, group 1) and the host's boot display at 02:00.0 (group 2). */
function twoNvidiaCards(cgroups: CgroupLayout = "unified"): GpuKernel {
  return new GpuKernel({ cgroups })
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, nodes: ["card1"] })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x10de", nativeDriver: "snd_hda_intel", group: 1 })
    .device({ address: "0000:02:00.0", classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 2, bootVga: true, nodes: ["card0"] });
}

test("two NVIDIA cards, the host keeps one: nvidia stays loaded, only the VM card's /dev/nvidiaN counts as in use", async () => {
  const kernel = twoNvidiaCards()
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["Xorg", ["/dev/nvidiactl", "/dev/nvidia1", "/dev/dri/card0"]] } });
  kernel.sim.file(`/proc/driver/nvidia/gpus/${GPU}/information`, "Model: RTX 4090\nDevice Minor: 0\n");
  kernel.sim.file("/proc/driver/nvidia/gpus/0000:02:00.0/information", "Model: RTX 3060\nDevice Minor: 1\n");
  const xml = domainXml("<vmhook:vfio/>");

  kernel.process(4000, "nvidia-smi", ["/dev/nvidia0"]);
  const refused = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.match(firstLine(refused.stderr), "the GPU is in use: pid 4000 (nvidia-smi) holds /dev/nvidia0");
  assert.not.match(firstLine(refused.stderr), "Xorg");

  kernel.sim.remove("/proc/4000");
  const before = kernel.sim.snapshot();
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(kernel.driverOf("0000:02:00.0"), "nvidia");
  assert.ok(kernel.loaded("nvidia") && kernel.units.get("display-manager.service")!.active);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("two NVIDIA cards, the host keeps one: nvidia-persistenced, which holds every card, is stopped for the handover and started again", async () => {
  const kernel = twoNvidiaCards()
    .unit({ name: "nvidia-persistenced.service", active: true, processes: { 600: ["nvidia-persiste", ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]] } });
  kernel.sim.file(`/proc/driver/nvidia/gpus/${GPU}/information`, "Device Minor: 0\n");
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.not.ok(kernel.units.get("nvidia-persistenced.service")!.active);
  assert.ok(kernel.loaded("nvidia"), "the host's card keeps its driver");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.ok(kernel.units.get("nvidia-persistenced.service")!.active);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a name listed again in unload-modules, load-modules or display-manager (the same, or its other spelling: nvidia-drm, display-manager) is acted on once: a list of thousands of repeats does not keep prepare running rmmod and systemctl", async () => {
  const kernel = nvidiaDesktop();
  const before = kernel.sim.snapshot();
  const repeats = (names: string[]) => Array.from({ length: 50 }, () => names).flat().join(",");
  const xml = domainXml(`<vmhook:vfio unload-modules="${repeats(["nvidia_drm", "nvidia-drm", "nvidia_modeset", "nvidia_uvm", "nvidia"])}" display-manager="${repeats(["display-manager", "display-manager.service"])}" load-modules="${repeats(["vfio_pci", "vfio-pci"])}"/>`);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  const order = kernel.sim.execs.filter((e) => e.command !== "systemctl" || e.args[0] === "stop").map((e) => `${e.command} ${e.args.join(" ")}`);
  assert.equal(order, NVIDIA_SINGLE_GPU_PREPARE);
  assert.ok(kernel.sim.execs.length < 30, `${kernel.sim.execs.length} programs run`);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("NVIDIA single GPU with nvidia-powerd (Dynamic Boost, enabled by NVIDIA's packages) holding /dev/nvidiactl: it is stopped with the helpers before the modules go and started at release; it used to refuse the start, naming it", async () => {
  const kernel = nvidiaDesktop().unit({ name: "nvidia-powerd.service", active: true, processes: { 610: ["nvidia-powerd", ["/dev/nvidiactl", "/dev/nvidia0"]] } });
  kernel.sim.file(`/proc/driver/nvidia/gpus/${GPU}/information`, "Device Minor: 0\n");
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.not.ok(kernel.units.get("nvidia-powerd.service")!.active);
  assert.not.ok(kernel.loaded("nvidia"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.ok(kernel.units.get("nvidia-powerd.service")!.active);
  assert.equal(kernel.sim.snapshot(), before);
});

/**
 * A Turing/Ampere consumer card with USB-C (RTX 2080, some 30-series): beside the GPU and its HDMI audio, a USB
 * xHCI controller (xhci_hcd, of xhci_pci) and a "Serial bus controller" for its UCSI (nvidia-gpu, of
 * i2c_nvidia_gpu, whose probe allows runtime PM), all four functions in one slot and IOMMU group.
 */
function usbCTuringDesktop(): GpuKernel {
  return nvidiaDesktop()
    .module({ name: "xhci_pci", driver: "xhci_hcd", loaded: true })
    .module({ name: "i2c_nvidia_gpu", driver: "nvidia-gpu", loaded: true })
    .device({ address: "0000:01:00.2", classCode: "0x0c0330", vendor: "0x10de", deviceId: "0x1ad8", nativeDriver: "xhci_hcd", group: 1 })
    .device({ address: "0000:01:00.3", classCode: "0x0c8000", vendor: "0x10de", deviceId: "0x1ad9", nativeDriver: "nvidia-gpu", group: 1, driverAllowsRuntimePm: true });
}

test("a card with USB-C (VGA, audio, xHCI, UCSI in one group), the hostdev naming only the GPU: all four functions go to vfio-pci, their drivers stay loaded, and each function is back on its own driver, runtime PM as before, at release", async () => {
  const kernel = usbCTuringDesktop();
  const before = kernel.sim.snapshot();
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  for (const fn of [0, 1, 2, 3]) assert.is(kernel.driverOf(`0000:01:00.${fn}`), "vfio-pci", `function ${fn}`);
  assert.ok(kernel.loaded("xhci_pci") && kernel.loaded("i2c_nvidia_gpu"), "the host's other USB controllers keep xhci_pci; unbinding suffices");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.driverOf("0000:01:00.2"), "xhci_hcd");
  assert.is(kernel.driverOf("0000:01:00.3"), "nvidia-gpu");
  assert.equal(kernel.sim.snapshot(), before);
});

test("a card with USB-C whose port carries a mounted USB disk: refused before anything changes, naming the xHCI function and the mount", async () => {
  const kernel = usbCTuringDesktop();
  addDisk(kernel.sim, { controller: "0000:01:00.2", via: "usb3/3-1/3-1:1.0/host6/target6:0:0/6:0:0:0/block", disk: "sdb", major: 8, partitions: ["sdb1"] });
  mountsAndSwaps(kernel.sim, [["259:2", "/dev/nvme0n1p2", "/"], ["8:17", "/dev/sdb1", "/mnt/usb"]]);
  const before = kernel.sim.snapshot();
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(prepare.code, 1);
  assert.match(prepare.stderr, "0000:01:00.2 carries storage the host uses (disk sdb: sdb1 is mounted on /mnt/usb)");
  assert.equal(kernel.sim.snapshot(), before);
});

test("a start that failed after prepare (QEMU never ran: the screen goes dark, then the login screen is back): release says so in the log, naming libvirt's log of the VM; a VM that ran gets no such line", async () => {
  const kernel = nvidiaDesktop();
  const xml = domainXml("<vmhook:vfio/>");
  const failedStart = "warn: win11 stopped before it ran: libvirt ended its start after prepare (it never reported started), so vmhook gives back what prepare took; why the start failed is in /var/log/libvirt/qemu/win11.log and in the error virsh start printed";
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml, "win11")).code, 0);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml, "win11")).code, 0);
  assert.match(kernel.sim.read(paths.log), failedStart);

  fs.rmSync(kernel.sim.resolve(paths.log));
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml, "win11")).code, 0);
  assert.is((await runHookEvent(kernel.sim, "started", "begin", xml, "win11")).code, 0);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml, "win11")).code, 0);
  assert.match(kernel.sim.read(paths.log), "released: ");
  assert.not.match(kernel.sim.read(paths.log), "stopped before it ran");
});

test("single-gpu takes yes/no as every yes/no attribute does (true/on/1, false/off/0), beside auto", async () => {
  const kernel = nvidiaDesktop();
  const plan = (value: string) => plannedSteps(kernel.sim, domainXml(`<vmhook:vfio single-gpu="${value}"/>`));
  const [yes, no] = [await plan("yes"), await plan("no")];
  assert.not.equal(yes, no, "the two plans differ on this host");
  for (const value of ["true", "On", "1"]) assert.equal(await plan(value), yes, value);
  for (const value of ["false", "OFF", "0"]) assert.equal(await plan(value), no, value);
});

const BAD_CONFIGS: [string, string][] = [
  ['<vmhook:vfio single-gpu="maybe"/>', 'single-gpu="maybe" must be auto, yes or no'],
  ['<vmhook:vfio devices="01:00"/>', 'devices="01:00" is not a PCI address'],
  ['<vmhook:vfio include-slot="sometimes"/>', 'include-slot="sometimes" must be yes or no'],
  ['<vmhook:vfio unload-modules="nvidia/../x"/>', 'unload-modules="nvidia/../x" is not a kernel module name'],
  ['<vmhook:vfio display-manager="gdm/service"/>', 'display-manager="gdm/service" is not a systemd unit name'],
  ['<vmhook:vfio single_gpu="yes"/>', "has unknown attribute single_gpu; allowed: devices, include-slot"],
  ["<vmhook:vfio/><vmhook:vfio/>", "appears 2 times; keep one"],
];

for (const [element, message] of BAD_CONFIGS) {
  test(`config ${element} is refused naming the attribute, the host untouched`, async () => {
    const kernel = nvidiaDesktop();
    const before = kernel.sim.snapshot();
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml(element));
    assert.is(result.code, 1);
    assert.match(firstLine(result.stderr), "<vmhook:vfio");
    assert.match(firstLine(result.stderr), message);
    assert.equal(kernel.sim.snapshot(), before);
  });
}

test("a domain without PCI hostdevs or devices= is refused, saying what to add", async () => {
  const kernel = nvidiaDesktop();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>", []));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "has no devices: add the GPU as a PCI <hostdev>");
});

test("bad host settings name the key in /etc/vmhook/vmhook.json", async () => {
  const kernel = nvidiaDesktop();
  settings(kernel, { displayManagerUnits: "gdm" });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "plugins.vfio.displayManagerUnits must be a list");
});

test("vmhook plan lists exactly the steps prepare runs (NVIDIA single GPU: every kind of step)", async () => {
  const kernel = nvidiaDesktop();
  assert.equal(await assertPlanIsPrepare(kernel.sim, domainXml("<vmhook:vfio/>"), "win11"), [
    "vfio: load module vfio-pci",
    `vfio: at release, check that the display is back: ${GPU} on nvidia with card, renderD`,
    "vfio: stop display-manager.service",
    "vfio: stop nvidia-persistenced.service",
    "vfio: wait until nothing holds the GPU",
    "vfio: unbind console vtcon1 ((M) frame buffer device)",
    "vfio: unbind efi-framebuffer.0 from efi-framebuffer",
    "vfio: unload module nvidia_drm",
    "vfio: unload module nvidia_modeset",
    "vfio: unload module nvidia_uvm",
    "vfio: unload module nvidia",
    `vfio: bind ${GPU} to vfio-pci (from nvidia)`,
    `vfio: bind ${AUDIO} to vfio-pci (from snd_hda_intel)`,
  ]);
});


// systemd keeps its units' cgroups in cgroup v2 at /sys/fs/cgroup (unified),
// in v2 at /sys/fs/cgroup/unified beside the v1 controllers (hybrid: Debian
// 10, Ubuntu 20.04, any host booted with systemd.unified_cgroup_hierarchy=0)
// or in v1's name=systemd (legacy): what single-GPU mode reads of a unit's
// processes and of a holder's place is read where this host's systemd keeps them.
for (const layout of ["unified", "hybrid", "legacy"] as const satisfies readonly CgroupLayout[]) {
  test(`${layout} cgroups: single GPU hands the NVIDIA card over and back; the host is as before`, async () => {
    const kernel = nvidiaDesktop("display-manager.service", layout);
    const before = kernel.sim.snapshot();
    const xml = domainXml("<vmhook:vfio/>");
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
    assert.is(prepare.code, 0, prepare.stderr);
    assert.is(kernel.driverOf(GPU), "vfio-pci");
    assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
    assert.equal(kernel.sim.snapshot(), before);
  });

  test(`${layout} cgroups: a display manager process that outlives systemctl stop is waited for, and the start refused once stopTimeoutSeconds pass, not taken for gone`, async () => {
    const kernel = nvidiaDesktop("display-manager.service", layout);
    settings(kernel, { stopTimeoutSeconds: 1 });
    const systemd = kernel.sim.execHandler("systemctl")!;
    kernel.sim.onExec("systemctl", (args, sim, options) => {
      const result = systemd(args, sim, options);
      // gdm's own process exits only after its stop job ended (it ignores SIGTERM for a while)
      if (args.join(" ") === "stop display-manager.service") kernel.process(501, "gdm", ["/dev/null"], "/system.slice/display-manager.service").sim.file(`${CGROUP_MOUNTS[layout]}/system.slice/display-manager.service/cgroup.procs`, "501");
      return result;
    });
    const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
    assert.is(result.code, 1, result.stderr);
    assert.match(firstLine(result.stderr), "vfio: display-manager.service did not stop within 1 s");
    assert.is(kernel.driverOf(GPU), "nvidia", "the card stays with its driver");
    assert.equal(kernel.sim.stateFiles(), []);
  });

  test(`${layout} cgroups: two NVIDIA cards, nvidia-persistenced holding the VM's is stopped for the handover and started again`, async () => {
    const kernel = twoNvidiaCards(layout).unit({ name: "nvidia-persistenced.service", active: true, processes: { 600: ["nvidia-persiste", ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]] } });
    kernel.sim.file(`/proc/driver/nvidia/gpus/${GPU}/information`, "Device Minor: 0\n");
    const xml = domainXml("<vmhook:vfio/>");
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
    assert.is(prepare.code, 0, prepare.stderr);
    assert.not.ok(kernel.units.get("nvidia-persistenced.service")!.active);
    assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
    assert.ok(kernel.units.get("nvidia-persistenced.service")!.active);
  });
}

// cgroup v2 mounted at /sys/fs/cgroup/unified by hand or by another tool on a
// legacy host (systemd keeps its units in name=systemd, the v2 tree holds them
// nowhere): systemd's own hierarchy is the one that holds its init.scope.
test("legacy cgroups beside a cgroup2 mounted at /sys/fs/cgroup/unified: a display manager process that outlives systemctl stop is waited for, not taken for gone", async () => {
  const kernel = nvidiaDesktop("display-manager.service", "legacy");
  kernel.sim.file("/sys/fs/cgroup/unified/cgroup.controllers", "").file("/sys/fs/cgroup/unified/cgroup.procs", "1\n501");
  settings(kernel, { stopTimeoutSeconds: 1 });
  const systemd = kernel.sim.execHandler("systemctl")!;
  kernel.sim.onExec("systemctl", (args, sim, options) => {
    const result = systemd(args, sim, options);
    if (args.join(" ") === "stop display-manager.service") kernel.process(501, "gdm", ["/dev/null"], "/system.slice/display-manager.service").sim.file("/sys/fs/cgroup/systemd/system.slice/display-manager.service/cgroup.procs", "501");
    return result;
  });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml("<vmhook:vfio/>"));
  assert.is(result.code, 1, result.stderr);
  assert.match(firstLine(result.stderr), "vfio: display-manager.service did not stop within 1 s");
  assert.is(kernel.driverOf(GPU), "nvidia", "the card stays with its driver");
});

test("legacy cgroups beside a cgroup2 mounted at /sys/fs/cgroup/unified: single GPU hands the NVIDIA card over and back", async () => {
  const kernel = nvidiaDesktop("display-manager.service", "legacy");
  kernel.sim.file("/sys/fs/cgroup/unified/cgroup.controllers", "").file("/sys/fs/cgroup/unified/cgroup.procs", "1");
  const xml = domainXml("<vmhook:vfio/>");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);
  assert.is(kernel.driverOf(GPU), "nvidia");
});

test.run();
