// The vfio return path on a simulated kernel: a device its driver does not
// take back after vfio-pci is reset, then removed and rescanned, each attempt
// logged; when nothing helps the change stays for `vmhook recover`. And AMD
// GPUs that reset only through vendor-reset: reset_method set and restored.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { readJournal, type Journal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import { DEFAULT_SETTINGS } from "../../lib/settings.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { GpuKernel, type SimPciDevice } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { assertPlanIsPrepare } from "../helpers/plan.ts";

const UUID = "3f1c2a4e-8b7d-4c1e-9a2b-5d6e7f8a9b0c";
const GPU = "0000:03:00.0";
const AUDIO = "0000:03:00.1";

const xml = `<domain type='kvm'><name>gaming</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;

/** An AMD card for the VM (GPU + audio, group 3) next to an Intel iGPU that keeps the host's display. */
function amdWorkstation(gpu: Partial<SimPciDevice> = {}, modules: { vendorReset?: "loaded" | "installed" } = {}): GpuKernel {
  const kernel = new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true });
  if (modules.vendorReset) kernel.module({ name: "vendor_reset", loaded: modules.vendorReset === "loaded" });
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 1 } } }));
  return kernel
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0", "fb0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", deviceId: "0x744c", nativeDriver: "amdgpu", group: 3, nodes: ["card1", "renderD129"], resetMethod: "flr bus", ...gpu })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x1002", nativeDriver: "snd_hda_intel", group: 3 });
}

const log = (kernel: GpuKernel) => kernel.sim.read(paths.log);
const writesTo = (kernel: GpuKernel, file: string) => kernel.sim.writes.filter((write) => write.path.endsWith(file)).length;

async function prepared(kernel: GpuKernel) {
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
}

/** Prepare; the driver then refuses the GPU (e.g. until a reset); release must succeed with the GPU back on `driver`. Returns the host as it was before. */
async function releaseRefused(kernel: GpuKernel, refusal: Set<string>, driver = "amdgpu") {
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  refusal.add(GPU);
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.driverOf(GPU), driver);
  return before;
}

/** What `vmhook recover` does with the journal left behind; nothing may fail. */
async function recover(kernel: GpuKernel, journal: Journal) {
  const logger = createLogger(kernel.sim, { echo: "none", file: false });
  const result = await undoJournal(journal, { host: kernel.sim, log: logger, settings: { ...DEFAULT_SETTINGS, plugins: { vfio: { bindTimeoutSeconds: 1 } } }, registry }, new Deadline(kernel.sim, 10_000));
  assert.equal(result.failed, []);
}

test("the driver refuses the GPU once: its reset (reset_method flr bus) clears it, the driver takes it, each attempt logged, the host as before", async () => {
  const kernel = amdWorkstation();
  const before = await releaseRefused(kernel, kernel.refuseUntilReset);
  assert.is(writesTo(kernel, `${GPU}/reset`), 1);
  assert.is(writesTo(kernel, `${GPU}/remove`), 0, "no removal once the reset helped");
  const text = log(kernel);
  assert.match(text, `vfio: ${GPU} return attempt 1/3 probe: amdgpu refused it: ENODEV`);
  assert.match(text, `vfio: ${GPU}: resetting it (reset_method: flr bus)`);
  assert.match(text, `vfio: ${GPU} return attempt 2/3 reset: bound to amdgpu`);
  assert.match(text, `vfio: ${GPU} is back on amdgpu after 2 attempts: probe (amdgpu refused it: ENODEV), reset`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("the reset does not help: remove + rescan does, driver_override and IOMMU group as before; the host as before", async () => {
  const kernel = amdWorkstation();
  const before = await releaseRefused(kernel, kernel.refuseUntilRescan);
  assert.ok(kernel.sim.exists("/dev/dri/card1"), "the card node is back");
  assert.equal([writesTo(kernel, `${GPU}/reset`), writesTo(kernel, `${GPU}/remove`), writesTo(kernel, "/sys/class/pci_bus/0000:03/rescan"), writesTo(kernel, "/sys/bus/pci/rescan")], [1, 1, 1, 0]);
  const text = log(kernel);
  assert.match(text, `vfio: ${GPU} return attempt 2/3 reset: amdgpu refused it: ENODEV`);
  assert.match(text, `vfio: ${GPU}: removing it from the PCI bus and rescanning its bus 0000:03 (/sys/class/pci_bus/0000:03/rescan)`);
  assert.match(text, `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to amdgpu`);
  assert.equal(kernel.sim.snapshot(), before);
});

test("remove + rescan rescans only the GPU's bus: a device the user removed on purpose (another bus) stays removed", async () => {
  const NIC = "0000:05:00.0";
  const kernel = amdWorkstation().device({ address: NIC, classCode: "0x020000", vendor: "0x8086", group: 5 });
  kernel.sim.write(`/sys/bus/pci/devices/${NIC}/remove`, "1");
  const before = await releaseRefused(kernel, kernel.refuseUntilRescan);
  assert.not.ok(kernel.sim.exists(`/sys/bus/pci/devices/${NIC}`), "the removed device did not come back");
  assert.equal(kernel.sim.snapshot(), before);
});

test("an SR-IOV VF its driver refuses: remove + rescan is skipped (a rescan never finds a VF again, only its PF makes it), so the VF stays on the bus for vmhook recover", async () => {
  const VF = "0000:03:02.0";
  const kernel = new GpuKernel()
    .module({ name: "ice", driver: "ice", loaded: true })
    .module({ name: "iavf", driver: "iavf", loaded: true })
    .device({ address: "0000:03:00.0", classCode: "0x020000", vendor: "0x8086", nativeDriver: "ice", group: 3 })
    .device({ address: VF, classCode: "0x020000", vendor: "0x8086", nativeDriver: "iavf", group: 4, resetMethod: "flr", physfn: "0000:03:00.0" });
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 1 } } }));
  const vfXml = xml.replace("slot='0x00'", "slot='0x02'");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vfXml)).code, 0);
  kernel.refuseUntilRescan.add(VF);
  const release = await runHookEvent(kernel.sim, "release", "end", vfXml);
  assert.match(release.stderr, `${VF} did not come back to iavf: tried probe (iavf refused it: ENODEV), reset (iavf refused it: ENODEV), remove + rescan (skipped: it is an SR-IOV virtual function`);
  assert.is(writesTo(kernel, `${VF}/remove`), 0);
  assert.ok(kernel.sim.exists(`/sys/bus/pci/devices/${VF}`), "the VF is still on the bus");
  assert.is(readJournal(kernel.sim, UUID)?.entries.length, 1, "the change stays for vmhook recover");
});

test("a kernel without the bus's rescan file: remove + rescan falls back to the whole tree's rescan and says so", async () => {
  const kernel = amdWorkstation();
  kernel.sim.remove("/sys/class/pci_bus");
  await releaseRefused(kernel, kernel.refuseUntilRescan);
  assert.equal([writesTo(kernel, `${GPU}/remove`), writesTo(kernel, "/sys/bus/pci/rescan")], [1, 1]);
  assert.match(log(kernel), `vfio: ${GPU}: removing it from the PCI bus and rescanning the whole PCI tree (/sys/bus/pci/rescan; there is no /sys/class/pci_bus/0000:03/rescan): devices removed on purpose come back too`);
});

test("a device without a reset method: the reset is skipped and said so, remove + rescan brings it back", async () => {
  const kernel = amdWorkstation({ resetMethod: undefined });
  const before = await releaseRefused(kernel, kernel.refuseUntilRescan);
  assert.match(log(kernel), `vfio: ${GPU} return attempt 2/3 reset: skipped: the kernel offers no reset method for it (no reset_method)`);
  assert.is(writesTo(kernel, `${GPU}/reset`), 0);
  assert.equal(kernel.sim.snapshot(), before);
});

test("nothing helps: release names every attempt and the remedies, keeps the change; recover later brings the GPU back", async () => {
  const kernel = amdWorkstation();
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  kernel.stuck.add(GPU);

  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(
    release.stderr,
    `${GPU} did not come back to amdgpu: tried probe (amdgpu refused it: ENODEV), reset (amdgpu refused it: ENODEV), remove + rescan (amdgpu refused it: ENODEV); dmesg says why amdgpu refused it; a GPU that cannot be reset often comes back only after a host reboot; vmhook keeps the change: run vmhook recover to try again`,
  );
  const journal = readJournal(kernel.sim, UUID)!;
  assert.equal(journal.entries.map((entry) => `${entry.state} ${entry.description}`), [
    `undo-failed at release, check that the display is back: ${GPU} on amdgpu with card, renderD`,
    `undo-failed bind ${GPU} to vfio-pci (from amdgpu)`,
  ]);
  assert.match(journal.entries[1]!.error!, "tried probe");
  assert.is(journal.entries[0]!.error!, `vfio: the display of ${GPU} is not back: it is on no driver, not amdgpu; see dmesg, reload amdgpu's module or reboot, then run vmhook recover`);
  assert.is(kernel.driverOf(GPU), undefined, "on no driver: never reported as back");
  assert.is(kernel.driverOf(AUDIO), "snd_hda_intel", "the rest of the release still ran");

  // The card recovered (e.g. after a reboot of the host's PCIe slot power); vmhook recover retries the return path.
  kernel.stuck.delete(GPU);
  await recover(kernel, journal);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

// vfio-pci forbids runtime PM as it lets a device go (vfio_pci_core_unregister_device: pm_runtime_forbid),
// and a driver that manages runtime PM allows it again in its probe: power/control after the VM is theirs, not the user's.
const POWER = `/sys/bus/pci/devices/${GPU}/power/control`;

test("a GPU whose power/control the user set to auto (runtime PM for an idle dGPU) comes back with auto, not with the on vfio-pci leaves", async () => {
  const kernel = amdWorkstation({ powerControl: "auto" });
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.equal([release.code, release.stderr], [0, ""]);
  assert.is(kernel.sim.readTrimmed(POWER), "auto");
  assert.equal(kernel.sim.snapshot(), before);
});

test("a GPU whose driver allows runtime PM but the user forbade it (echo on, against its runtime-PM hangs) comes back with on", async () => {
  const kernel = amdWorkstation({ driverAllowsRuntimePm: true });
  kernel.sim.write(POWER, "on");
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.equal([release.code, release.stderr], [0, ""]);
  assert.is(kernel.sim.readTrimmed(POWER), "on");
  assert.equal(kernel.sim.snapshot(), before);
});

test("power/control auto survives the return through remove + rescan, which enumerates the GPU afresh with on", async () => {
  const kernel = amdWorkstation({ powerControl: "auto" });
  const before = await releaseRefused(kernel, kernel.refuseUntilRescan);
  assert.is(writesTo(kernel, `${GPU}/remove`), 1);
  assert.is(kernel.sim.readTrimmed(POWER), "auto");
  assert.equal(kernel.sim.snapshot(), before);
});

test("a journaled power/control other than on or auto is refused before any write; a journal from before it restores none", async () => {
  const vfio = (await registry.load("vfio", new GpuKernel().sim)) as { actions: Record<string, { check(record: object): unknown }> };
  const check = vfio.actions["bind-vfio"]!.check;
  const record = { action: "bind-vfio", address: GPU, group: "3", driver: "amdgpu", override: null };
  assert.throws(() => check({ ...record, powerControl: "auto\n/etc/passwd" }), /the journal names power\/control "auto\\n\/etc\/passwd", which is neither on nor auto/);
  assert.is((check({ ...record, powerControl: "auto" }) as { powerControl: unknown }).powerControl, "auto");
  assert.is((check(record) as { powerControl: unknown }).powerControl, null);
});

test("the GPU is back on its driver but its card node is not: release keeps the display check, never reports it back; recover checks again", async () => {
  const kernel = amdWorkstation();
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  const nodes = kernel.devices.get(GPU)!.nodes;
  kernel.devices.get(GPU)!.nodes = ["renderD129"]; // amdgpu binds, but makes no card node (a failed modeset)

  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0);
  assert.match(release.stderr, `the display of ${GPU} is not back: its /dev/dri/cardN did not come back`);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  const journal = readJournal(kernel.sim, UUID)!;
  assert.equal(journal.entries.map((entry) => entry.undo.action), ["verify-return"]);

  // The user reloads the driver (unbind, bind): the card is back, recover finds it so.
  kernel.devices.get(GPU)!.nodes = nodes;
  kernel.sim.write(`/sys/bus/pci/drivers/amdgpu/unbind`, GPU);
  kernel.sim.write(`/sys/bus/pci/drivers/amdgpu/bind`, GPU);
  await recover(kernel, journal);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a driver whose ids match too (radeon, beside amdgpu) does not get the device at the return, though amdgpu refuses the first probe: driver_override names amdgpu at each attempt; the reset brings it back to amdgpu, nothing removed", async () => {
  const kernel = amdWorkstation();
  await prepared(kernel);
  kernel.refuseUntilReset.add(GPU);
  kernel.module({ name: "radeon", driver: "radeon", loaded: true });
  kernel.devices.get(GPU)!.alsoMatches = ["radeon"]; // radeon registered after amdgpu: the first probe without driver_override would give the card to radeon, amdgpu refusing it
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.match(log(kernel), `vfio: ${GPU} return attempt 2/3 reset: bound to amdgpu`);
  assert.is(writesTo(kernel, `${GPU}/remove`), 0);
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/driver_override`), "(null)", "driver_override as before the VM");
});

test("remove + rescan, with radeon registered before amdgpu and matching the card too: the rescan's probe gives it to radeon, which lets go of it; amdgpu takes it; the host as before", async () => {
  const kernel = new GpuKernel().module({ name: "i915", driver: "i915", loaded: true }).module({ name: "radeon", driver: "radeon", loaded: true }).module({ name: "amdgpu", driver: "amdgpu", loaded: true });
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 1 } } }));
  kernel
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0", "fb0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", deviceId: "0x6798", nativeDriver: "amdgpu", alsoMatches: ["radeon"], group: 3, nodes: ["card1"] });
  const before = await releaseRefused(kernel, kernel.refuseUntilRescan);
  assert.match(log(kernel), `vfio: ${GPU}: the rescan's probe gave it to radeon (its ids match too), which lets go of it now`);
  assert.match(log(kernel), `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to amdgpu`);
  assert.equal(kernel.sim.snapshot(), before);
});

test("NVIDIA's module reloaded at release: a GPU nvidia refuses comes back through remove + rescan", async () => {
  const kernel = new GpuKernel()
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 3 });
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 1 } } }));
  const before = await releaseRefused(kernel, kernel.refuseUntilRescan, "nvidia");
  assert.match(log(kernel), `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to nvidia`);
  assert.equal(kernel.sim.snapshot(), before);
});

test("NVIDIA's module does not load again at release: the display check stays with the module's entry (no other VM keeps nvidia unloaded); recover brings both back", async () => {
  const kernel = new GpuKernel()
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 3, nodes: ["card1", "renderD129"] });
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 1 } } }));
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  assert.not.ok(kernel.loaded("nvidia"));
  kernel.brokenModules.add("nvidia"); // e.g. DKMS did not build it for the kernel updated meanwhile

  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(release.stderr, "modprobe");
  assert.not.match(log(kernel), "another VM keeps it unloaded");
  const journal = readJournal(kernel.sim, UUID)!;
  assert.equal(
    journal.entries.map((entry) => `${entry.state} ${entry.undo.action}`),
    ["undo-failed verify-return", "undo-failed unload-module"],
    "the display check is not dropped for a module only this VM's release was to load",
  );

  kernel.brokenModules.delete("nvidia");
  await recover(kernel, journal);
  assert.is(kernel.driverOf(GPU), "nvidia");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

// ---- AMD GPUs that reset only through vendor-reset ----

test("vendor-reset loaded, a Navi 10 card: reset_method becomes device_specific for the VM and is restored at release", async () => {
  const kernel = amdWorkstation({ deviceId: "0x731f" }, { vendorReset: "loaded" });
  const before = kernel.sim.snapshot();
  await prepared(kernel);
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/reset_method`), "device_specific");
  assert.match(log(kernel), `vfio: set the reset method of ${GPU} to device_specific (vendor-reset; was flr bus): done`);
  // The reset is journaled before the devices move: undone after the GPU is back.
  const journal = readJournal(kernel.sim, UUID)!.entries.map((entry) => entry.undo.action);
  const resetAt = journal.indexOf("set-reset-method");
  assert.ok(resetAt >= 0 && resetAt < journal.indexOf("bind-vfio"), `journal: ${journal.join(", ")}`);

  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), before);
});

test("a loaded vendor-reset that does not handle the card (the kernel refuses device_specific): prepare fails naming it, the refused write is no change to undo or count, and the host is as before", async () => {
  const kernel = amdWorkstation({ deviceId: "0x731f" }, { vendorReset: "loaded" });
  kernel.sim.failWrite(`/sys/bus/pci/devices/${GPU}/reset_method`, "EINVAL");
  const before = kernel.sim.snapshot();
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 1);
  assert.match(prepare.stderr, `the kernel did not take reset_method device_specific for ${GPU} (EINVAL): the loaded vendor-reset does not handle this card; update vendor-reset, or unload it`);
  // The refused write changed nothing: the rollback neither undoes nor counts it (the load of vfio-pci and the display check are). It used to count 3.
  assert.match(prepare.stderr, "the host was left as it was (2 change(s) undone), so there is nothing to recover");
  assert.not.match(log(kernel), "undo set the reset method");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("a reset_method write the kernel takes but that leaves the order as it was: prepare fails naming what it reads, and the write is no change to undo or count, as a refused one (unchangedAfterFailure); it used to count 3", async () => {
  const kernel = amdWorkstation({ deviceId: "0x731f" }, { vendorReset: "loaded" });
  // The write returns, and the kernel's list stays as it was.
  const write = kernel.sim.write.bind(kernel.sim);
  kernel.sim.write = (file: string, data: string) => {
    if (file !== `/sys/bus/pci/devices/${GPU}/reset_method`) write(file, data);
  };
  const before = kernel.sim.snapshot();
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 1);
  assert.match(prepare.stderr, `the kernel did not take reset_method device_specific for ${GPU} (it reads "flr bus")`);
  assert.match(prepare.stderr, "the host was left as it was (2 change(s) undone), so there is nothing to recover");
  assert.not.match(log(kernel), "undo set the reset method");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("vendor-reset installed but not loaded: prepare loads it before setting reset_method; release restores both", async () => {
  const kernel = amdWorkstation({ deviceId: "0x67df" }, { vendorReset: "installed" });
  const before = kernel.sim.snapshot();
  // vmhook plan shows exactly these steps, and prepare runs them.
  assert.equal(await assertPlanIsPrepare(kernel.sim, xml, "gaming"), [
    "vfio: load module vfio-pci",
    `vfio: at release, check that the display is back: ${GPU} on amdgpu with card, renderD`,
    "vfio: load module vendor-reset",
    `vfio: set the reset method of ${GPU} to device_specific (vendor-reset; was flr bus)`,
    `vfio: bind ${GPU} to vfio-pci (from amdgpu)`,
    `vfio: bind ${AUDIO} to vfio-pci (from snd_hda_intel)`,
  ]);
  assert.ok(kernel.loaded("vendor_reset"));
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/reset_method`), "device_specific");
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.not.ok(kernel.loaded("vendor_reset"));
  assert.equal(kernel.sim.snapshot(), before);
});

test("load-modules=\"vendor-reset\" as well (as older setups have it): loaded once, and still loaded when the GPU's return needs its reset", async () => {
  const kernel = amdWorkstation({ deviceId: "0x67df" }, { vendorReset: "installed" });
  const withLoad = xml.replace("<vmhook:vfio/>", '<vmhook:vfio load-modules="vendor-reset"/>');
  const before = kernel.sim.snapshot();
  const applied = await assertPlanIsPrepare(kernel.sim, withLoad, "gaming");
  assert.equal(applied.filter((step) => step.includes("vendor-reset")), ["vfio: load module vendor-reset", `vfio: set the reset method of ${GPU} to device_specific (vendor-reset; was flr bus)`]);
  kernel.refuseUntilReset.add(GPU); // the Polaris reset bug: amdgpu takes it only after vendor-reset's reset
  const release = await runHookEvent(kernel.sim, "release", "end", withLoad);
  assert.is(release.code, 0, release.stderr);
  assert.not.match(release.stderr, "did not come back");
  assert.match(log(kernel), `vfio: ${GPU} return attempt 2/3 reset: bound to amdgpu`);
  assert.not.ok(kernel.loaded("vendor_reset"), "unloaded once the GPU is home");
  assert.equal(kernel.sim.snapshot(), before);
});

test("an AMD GPU that needs vendor-reset on a host without it: prepare warns with the fix and goes on; doctor warns too", async () => {
  const kernel = amdWorkstation({ deviceId: "0x687f" });
  await prepared(kernel);
  assert.match(log(kernel), `vfio: ${GPU} is an AMD GPU that does not reset on its own, and the vendor-reset module is not installed`);
  assert.match(log(kernel), "install vendor-reset (e.g. the vendor-reset-dkms package");
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/reset_method`), "flr bus", "left alone");
  assert.is((await runHookEvent(kernel.sim, "release", "end", xml)).code, 0);

  const report = await runDoctor(kernel.sim, { file: "gaming.xml", xml });
  const finding = report.domain!.findings.find((item) => item.check === `vendor-reset ${GPU}`);
  assert.is(finding?.status, "warn");
  assert.match(finding!.fix!, "install vendor-reset");
});

test("a card vendor-reset does not handle (Navi 31) gets no reset_method change and no warning", async () => {
  const kernel = amdWorkstation({}, { vendorReset: "loaded" });
  await prepared(kernel);
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/reset_method`), "flr bus");
  assert.not.match(log(kernel), "vendor-reset");
  const report = await runDoctor(kernel.sim, { file: "gaming.xml", xml });
  assert.not.ok(report.domain!.findings.some((item) => item.check.startsWith("vendor-reset")));
});

test("a Rembrandt iGPU (Radeon 680M, 1002:1681), which vendor-reset does not list: reset_method left alone and no vendor-reset advice, whether the module is loaded or missing", async () => {
  const rembrandt = { deviceId: "0x1681", vendorResetListed: false };
  const loaded = amdWorkstation(rembrandt, { vendorReset: "loaded" });
  const before = loaded.sim.snapshot();
  await prepared(loaded);
  assert.is(loaded.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/reset_method`), "flr bus");
  assert.is((await runHookEvent(loaded.sim, "release", "end", xml)).code, 0);
  assert.equal(loaded.sim.snapshot(), before);

  const missing = amdWorkstation(rembrandt);
  await prepared(missing);
  assert.not.match(log(missing), "vendor-reset");
  const report = await runDoctor(missing.sim, { file: "gaming.xml", xml });
  assert.not.ok(report.domain!.findings.some((item) => item.check.startsWith("vendor-reset")));
});

test("a journaled reset method that is not a list of kernel reset methods is refused before any write", async () => {
  const action = registry.builtinNames().includes("vfio") ? (await registry.load("vfio", new GpuKernel().sim)) : undefined;
  const check = (action as { actions: Record<string, { check(record: object): unknown }> }).actions["set-reset-method"]!.check;
  assert.throws(() => check({ action: "set-reset-method", address: GPU, original: "flr; rm -rf /" }), /not a list of kernel reset methods/);
  assert.throws(() => check({ action: "set-reset-method", address: "../../x", original: "flr" }), /not a PCI address/);
  assert.equal(check({ action: "set-reset-method", address: GPU, original: "" }), { action: "set-reset-method", address: GPU, original: "" });
});

test.run();
