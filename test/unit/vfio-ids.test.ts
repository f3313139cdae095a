// vfio-pci's ids= (options vfio-pci ids=VEN:DEV in modprobe.d, vfio-pci.ids=
// on the kernel command line): vfio-pci then claims devices of those ids on
// any probe, as their own driver does, and the kernel offers a device to the
// drivers in the order they registered. vmhook's handover must not depend on
// that order or on those ids: a device handed back goes to its own driver, and
// vmhook's load of vfio-pci takes no device it was not handed.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { paths } from "../../lib/paths.ts";
import { GpuKernel } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { plannedSteps } from "../helpers/plan.ts";

const UUID = "3f1c2a4e-8b7d-4c1e-9a2b-5d6e7f8a9b0c";
const UUID_B = "3f1c2a4e-8b7d-4c1e-9a2b-5d6e7f8a9b0d";
const GPU = "0000:03:00.0";
const TWIN = "0000:04:00.0";
const IDS = "options vfio-pci ids=1002:744c disable_vga=1\n";

const xml = (attributes = "") => `<domain type='kvm'><name>gaming</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio ${attributes}/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;

/** An AMD card (1002:744c) for the VM, an Intel iGPU for the host; `vfioFirst`: vfio-pci registered before amdgpu (the host loaded it with its ids=, then amdgpu loaded again). */
function host(options: { vfioFirst?: boolean; twinUnbound?: boolean } = {}): GpuKernel {
  const kernel = new GpuKernel();
  kernel.sim.file("/etc/modprobe.d/vfio.conf", IDS);
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 1 } } }));
  kernel.module({ name: "i915", driver: "i915", loaded: true });
  if (options.vfioFirst) kernel.sim.exec("modprobe", ["vfio-pci"], { timeoutMs: 1000 });
  kernel.module({ name: "amdgpu", driver: "amdgpu", loaded: true });
  kernel
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0", "fb0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", deviceId: "0x744c", nativeDriver: "amdgpu", group: 3, nodes: ["card1", "renderD129"], resetMethod: "flr bus" });
  if (options.twinUnbound) kernel.device({ address: TWIN, classCode: "0x030000", vendor: "0x1002", deviceId: "0x744c", nativeDriver: "amdgpu", group: 4, bound: false });
  return kernel;
}

test("the sim: with vfio-pci registered before amdgpu, a probe without driver_override gives the card to vfio-pci (its ids=), as the kernel does", () => {
  const kernel = host({ vfioFirst: true });
  kernel.sim.write(`/sys/bus/pci/devices/${GPU}/driver/unbind`, GPU);
  kernel.sim.write("/sys/bus/pci/drivers_probe", GPU);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
});

test("vfio-pci with ids= matching the card, registered before amdgpu: release hands the card back to amdgpu through driver_override, not to vfio-pci; the host as before", async () => {
  const kernel = host({ vfioFirst: true });
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml())).code, 0);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  const release = await runHookEvent(kernel.sim, "release", "end", xml());
  assert.is(release.code, 0, release.stderr);
  assert.not.match(release.stderr, "went to vfio-pci");
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.match(kernel.sim.read(paths.log), `vfio: ${GPU} return attempt 1/3 probe: bound to amdgpu`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("the same through remove + rescan (the rescan's probe, without driver_override, gives the card to vfio-pci): vfio-pci lets go, amdgpu takes it; the host as before", async () => {
  const kernel = host({ vfioFirst: true });
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml())).code, 0);
  kernel.refuseUntilRescan.add(GPU);
  const release = await runHookEvent(kernel.sim, "release", "end", xml());
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  const log = kernel.sim.read(paths.log);
  assert.match(log, `vfio: ${GPU}: the rescan's probe gave it to vfio-pci (its ids match too), which lets go of it now`);
  assert.match(log, `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to amdgpu`);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a driver_override the user had set stays as it was once the card is home", async () => {
  const kernel = host({ vfioFirst: true });
  kernel.sim.write(`/sys/bus/pci/devices/${GPU}/driver_override`, "amdgpu");
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml())).code, 0);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml())).code, 0);
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/driver_override`), "amdgpu");
  assert.equal(kernel.sim.snapshot(), before);
});

test("modprobe.d binds the card's ids to vfio-pci and an identical second card has no driver: vmhook's load of vfio-pci leaves it alone (ids= empty); release unloads vfio-pci; the host as before", async () => {
  const kernel = host({ twinUnbound: true });
  const before = kernel.sim.snapshot();
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml());
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(kernel.driverOf(TWIN), undefined, "the second card is not taken by vfio-pci's ids");
  assert.ok(kernel.sim.execs.some((exec) => [exec.command, ...exec.args].join(" ") === "modprobe vfio-pci ids="), kernel.sim.execs.map((exec) => [exec.command, ...exec.args].join(" ")).join("\n"));
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml())).code, 0);
  assert.not.ok(kernel.loaded("vfio_pci"));
  assert.equal(kernel.sim.snapshot(), before);
});

test("the same with vfio-pci.ids= on the kernel command line", async () => {
  const kernel = host({ twinUnbound: true });
  kernel.sim.remove("/etc/modprobe.d/vfio.conf");
  kernel.sim.file("/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 vfio-pci.ids=1002:744c quiet");
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", xml())).code, 0);
  assert.is(kernel.driverOf(TWIN), undefined);
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml())).code, 0);
  assert.equal(kernel.sim.snapshot(), before);
});

// A card released while another VM keeps its driver's module unloaded waits,
// without a driver, for that module: A passes GPU through with
// unload-modules="amdgpu", B (started first) passes TWIN through. Its
// driver_override names amdgpu while it waits, as on every probe of the return
// path: a probe meanwhile (a udev rule, driverctl, a script) does not give it
// to vfio-pci by its ids=, and A's release brings it home with amdgpu.
test("a card waiting for its driver's module (another VM keeps amdgpu unloaded) is named for amdgpu in driver_override while it waits: a probe meanwhile does not give it to vfio-pci's ids=; the last release brings it home, driver_override as before", async () => {
  const kernel = host({ vfioFirst: true });
  kernel.device({ address: TWIN, classCode: "0x030000", vendor: "0x1002", deviceId: "0x744c", nativeDriver: "amdgpu", group: 4, nodes: ["card2"] });
  const vmA = xml('unload-modules="amdgpu"');
  const vmB = xml().replace(UUID, UUID_B).replace("<name>gaming</name>", "<name>other</name>").replace("bus='0x03'", "bus='0x04'");
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vmB, "other")).code, 0);
  const prepared = await runHookEvent(kernel.sim, "prepare", "begin", vmA, "gaming");
  assert.is(prepared.code, 0, prepared.stderr);
  assert.not.ok(kernel.loaded("amdgpu"));
  const released = await runHookEvent(kernel.sim, "release", "end", vmB, "other");
  assert.equal([released.code, released.stderr], [0, ""]);
  assert.is(kernel.driverOf(TWIN), undefined, "it waits for amdgpu");
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${TWIN}/driver_override`), "amdgpu");

  kernel.sim.write("/sys/bus/pci/drivers_probe", TWIN);
  assert.is(kernel.driverOf(TWIN), undefined, "vfio-pci's ids= match it, but driver_override names amdgpu");

  const last = await runHookEvent(kernel.sim, "release", "end", vmA, "gaming");
  assert.equal([last.code, last.stderr], [0, ""]);
  assert.equal([kernel.driverOf(GPU), kernel.driverOf(TWIN)], ["amdgpu", "amdgpu"]);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("plan names the host's ids= for vfio-pci in its load step; doctor says where they are and what vmhook does about them", async () => {
  const kernel = host({ twinUnbound: true });
  kernel.sim.file("/proc/cmdline", "root=/dev/sda1 vfio_pci.ids=10de:2204,10de:1aef");
  const planned = await plannedSteps(kernel.sim, xml());
  const load = planned.find((step) => step.startsWith("vfio: load module vfio-pci"));
  assert.is(load, "vfio: load module vfio-pci (with ids= empty: the host binds 1002:744c (/etc/modprobe.d/vfio.conf), 10de:2204, 10de:1aef (the kernel command line) to vfio-pci, which would take 0000:04:00.0 (1002:744c, no driver) too)");
  const report = await runDoctor(kernel.sim, { file: "gaming.xml", xml: xml() });
  const finding = report.domain!.findings.find((item) => item.check === "vfio-pci ids");
  assert.is(finding?.status, "ok");
  assert.match(finding!.reason, "the host binds 1002:744c (/etc/modprobe.d/vfio.conf), 10de:2204, 10de:1aef (the kernel command line) to vfio-pci");
  assert.match(finding!.reason, `${GPU} (1002:744c) goes to vfio-pci and back to its driver by driver_override`);
});

test.run();
