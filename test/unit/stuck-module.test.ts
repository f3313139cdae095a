// rmmod and modprobe of a GPU driver's module run its remove() or probe() for
// each device it drives: a hung card blocks them in the kernel, as it blocks a
// write to the device's unbind (test/unit/stuck-driver.test.ts). They run in a
// helper that vmhook leaves after bindTimeoutSeconds, noted in /run/vmhook/stuck
// for the module and each of those devices until it has returned.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { RootedHost } from "../../lib/host.ts";
import { Deadline } from "../../lib/deadline.ts";
import { readJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { loadSettings } from "../../lib/settings.ts";
import { forgetFinishedWrites } from "../../lib/stuck-writes.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { paths } from "../../lib/paths.ts";
import { GpuKernel } from "../helpers/gpu-kernel.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";

const UUID = "6b2e8f14-3c5d-4a7e-9f01-2d3c4b5a6e7f";
const GPU = "0000:01:00.0";
const XML = `<domain type='kvm'><name>win11</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;
const NVIDIA_STACK = ["nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia"];

/** An NVIDIA card for the VM (its whole module stack is unloaded) beside the host's Intel GPU; bindTimeoutSeconds is 2. */
function workstation(): GpuKernel {
  const kernel = new GpuKernel()
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "nvidia_modeset", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_uvm", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_drm", uses: ["nvidia_modeset"], loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, nodes: ["card1"] });
  kernel.sim.file(paths.hostConfig, JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 2 } } }));
  return kernel;
}

const writesTo = (kernel: GpuKernel, from: number, device: string) => kernel.sim.writes.slice(from).filter((write) => write.path.includes(device) || write.data === device);
const cliOn = (kernel: GpuKernel, ...args: string[]) => cli(["--root", kernel.sim.root, ...args]);
const nvidiaStack = (kernel: GpuKernel, from = 0) => kernel.sim.execs.slice(from).filter((run) => (run.command === "modprobe" || run.command === "rmmod") && run.args.some((module) => module.startsWith("nvidia")));
const entries = (kernel: GpuKernel) => readJournal(kernel.sim, UUID)!.entries.map((entry) => `${entry.state} ${entry.description}`);

/** The GPU on nvidia, the whole stack loaded, nothing of vmhook's left: the host as `before`. */
function assertAsBefore(kernel: GpuKernel, before: Record<string, string>): void {
  assert.is(kernel.driverOf(GPU), "nvidia");
  assert.ok(NVIDIA_STACK.every((module) => kernel.loaded(module)));
  assert.equal(kernel.sim.stateFiles(), []);
  assert.equal(kernel.sim.snapshot(), before);
  kernel.sim.cleanup();
}

/** What vmhook recover does (lib/cli/recover.ts), on the simulated kernel. */
async function recover(kernel: GpuKernel): Promise<{ forgotten: string[]; failed: unknown[] }> {
  const forgotten = forgetFinishedWrites(kernel.sim).map((write) => write.device);
  const log = createLogger(kernel.sim, { echo: "none", file: false });
  const { failed } = await undoJournal(readJournal(kernel.sim, UUID)!, { host: kernel.sim, log, settings: loadSettings(kernel.sim), registry }, new Deadline(kernel.sim, 10_000));
  return { forgotten, failed };
}

test("rmmod nvidia never returns (its remove() blocks on the GPU): prepare gives up after its time limit (rmmod 30 s, or bindTimeoutSeconds when longer) naming the module and the GPU, notes the helper, loads nothing again", async () => {
  const kernel = workstation();
  kernel.sim.hangProgram("rmmod", ["nvidia"]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 1);
  const [pid] = kernel.sim.hungPrograms.map((run) => run.pid);
  assert.is(
    prepare.stderr.split("\n")[0],
    `vmhook: rmmod nvidia did not return within 30 s: module nvidia is the driver of ${GPU} (its remove() runs in rmmod); vmhook left rmmod (pid ${pid}) blocked in the kernel and gave up`,
  );
  assert.match(prepare.stderr, "do not use the device, and do not unload its driver");
  assert.match(prepare.stderr, "raise plugins.vfio.bindTimeoutSeconds in /etc/vmhook/vmhook.json");

  // modprobe of a module that needs nvidia, while nvidia is being removed, would block too: nothing is loaded again, nothing written to the GPU.
  const hungAt = kernel.sim.execs.findIndex((run) => run.command === "rmmod" && run.args.join(" ") === "nvidia");
  assert.ok(hungAt > 0);
  assert.equal(nvidiaStack(kernel, hungAt + 1), []);
  assert.equal(writesTo(kernel, 0, GPU), []);
  assert.is(kernel.driverOf(GPU), "nvidia", "its remove() has not returned");
  assert.equal(entries(kernel), [
    `undo-failed at release, check that the display is back: ${GPU} on nvidia with card`,
    "undo-failed unload module nvidia_drm",
    "undo-failed unload module nvidia_modeset",
    "undo-failed unload module nvidia_uvm",
    "undo-failed unload module nvidia",
  ]);
  for (const subject of ["module:nvidia", GPU]) {
    const note = JSON.parse(kernel.sim.read(paths.stuckWrite(subject)));
    assert.equal({ ...note, since: "" }, { pid, startTime: String(pid * 10), device: subject, driver: "nvidia", command: "rmmod nvidia", since: "", domain: { name: "win11", uuid: UUID } });
  }

  const status = await cliOn(kernel, "status");
  assert.match(status.stdout, `stuck driver: module nvidia: rmmod nvidia did not return (since `);
  assert.match(status.stdout, `stuck driver: ${GPU} (driver nvidia): rmmod nvidia did not return (since `);
  assert.match(status.stdout, `its helper, pid ${pid}, is still blocked in the kernel (state D: uninterruptible)`);
  const doctor = await cliOn(kernel, "doctor");
  assert.is(doctor.code, 1);
  assert.match(doctor.stdout, "fail  stuck driver: module nvidia: rmmod nvidia did not return");

  const from = kernel.sim.execs.length;
  const again = await runHookEvent(kernel.sim, "prepare", "begin", XML.replace(UUID, "11111111-2222-4333-8444-555555555555").replace("win11", "other"), "other");
  assert.is(again.code, 1);
  assert.match(again.stderr, `vmhook writes nothing to ${GPU} until it has returned`);
  const blocked = await recover(kernel);
  assert.is(blocked.failed.length, 5);
  assert.equal(nvidiaStack(kernel, from), []);
  kernel.sim.cleanup();
});

test("another VM's modprobe of nvidia_drm left blocked in the kernel: this VM's unload of it is refused before anything changed, so the rollback neither counts it nor leaves it undo-failed for recover (it used to: its undo was refused the same way)", async () => {
  const kernel = workstation();
  const before = kernel.sim.snapshot();
  const pid = 4242;
  kernel.sim.file(`/proc/${pid}/stat`, `${pid} (modprobe) D 1 ${pid} ${pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 ${pid * 10} 2314240 1`);
  const note = { pid, startTime: String(pid * 10), device: "module:nvidia_drm", driver: "nvidia_drm", command: "modprobe nvidia_drm", since: "2026-01-01T00:00:00.000Z", domain: { name: "other", uuid: "11111111-2222-4333-8444-555555555555" } };
  kernel.sim.file(paths.stuckWrite("module:nvidia_drm"), JSON.stringify(note));
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 1);
  assert.match(prepare.stderr.split("\n")[0]!, `modprobe nvidia_drm did not return`);
  assert.match(prepare.stderr, "vmhook loads or unloads nothing that needs module nvidia_drm until it has returned");
  // The load of vfio-pci and the display check were made and undone; it used to say "1 of 3 change(s) could not be undone: run vmhook recover win11".
  assert.match(prepare.stderr, "the host was left as it was (2 change(s) undone), so there is nothing to recover");
  assert.equal(readJournal(kernel.sim, UUID), undefined, "no journal left for recover");
  assert.equal(nvidiaStack(kernel), [], "no rmmod or modprobe of the stack");
  kernel.sim.remove(paths.stuckWrite("module:nvidia_drm"));
  kernel.sim.remove(`/proc/${pid}`);
  assertAsBefore(kernel, before);
});

test("once rmmod has returned: vmhook recover says so, forgets the notes, loads the stack again and brings the GPU back", async () => {
  const kernel = workstation();
  const before = kernel.sim.snapshot();
  kernel.sim.hangProgram("rmmod", ["nvidia"]);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 1);
  const [pid] = kernel.sim.hungPrograms.map((run) => run.pid);
  kernel.sim.finishHungWrites();
  assert.not.ok(kernel.loaded("nvidia"), "rmmod took effect when remove() returned");
  assert.match((await cliOn(kernel, "status")).stdout, "has finished since");

  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.match(recovered.stdout, `module nvidia: rmmod nvidia, which did not return, has finished since (pid ${pid} is gone)`);
  assert.match(recovered.stdout, `${GPU} (driver nvidia): rmmod nvidia, which did not return, has finished since (pid ${pid} is gone)`);
  assertAsBefore(kernel, before);
});

test("modprobe nvidia never returns at release (its probe() blocks on the GPU): release exits 0 naming it, keeps the records, and recover finishes once it has returned", async () => {
  const kernel = workstation();
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.sim.hangProgram("modprobe", ["nvidia"]);
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, "release never fails libvirt");
  const [pid] = kernel.sim.hungPrograms.map((run) => run.pid);
  assert.match(release.stderr, `modprobe nvidia did not return within 60 s: module nvidia is the driver of ${GPU} (its probe() runs in modprobe); vmhook left modprobe (pid ${pid}) blocked in the kernel and gave up`);
  // The modules that need nvidia would wait for it: not loaded, their records kept.
  assert.equal(nvidiaStack(kernel).filter((run) => run.command === "modprobe").map((run) => run.args.join(" ")), ["nvidia"]);
  assert.ok(entries(kernel).includes("undo-failed unload module nvidia"));
  assert.ok(entries(kernel).includes("undo-failed unload module nvidia_drm"));
  assert.is(JSON.parse(kernel.sim.read(paths.stuckWrite(GPU))).command, "modprobe nvidia");

  kernel.sim.finishHungWrites();
  const { forgotten, failed } = await recover(kernel);
  assert.equal(forgotten.sort(), [GPU, "module:nvidia"]);
  assert.equal(failed, []);
  assertAsBefore(kernel, before);
});

test("rmmod of the vfio modules vmhook loaded never returns at release (a module's exit blocks): release exits 0 naming them, notes them, keeps the record; recover finishes once it has returned", async () => {
  const kernel = workstation();
  const before = kernel.sim.snapshot();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.sim.hangProgram("rmmod");
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, "release never fails libvirt");
  const [hung] = kernel.sim.hungPrograms;
  assert.ok(hung, "rmmod ran in a helper vmhook could leave");
  const rmmod = ["rmmod", ...hung.args].join(" ");
  assert.equal([...hung.args].sort(), ["vfio", "vfio_iommu_type1", "vfio_pci", "vfio_pci_core"]);
  assert.match(release.stderr, `${rmmod} did not return within 30 s; vmhook left rmmod (pid ${hung.pid}) blocked in the kernel and gave up`);
  assert.ok(entries(kernel).includes("undo-failed load module vfio-pci"), entries(kernel).join("\n"));
  for (const module of hung.args) {
    const note = JSON.parse(kernel.sim.read(paths.stuckWrite(`module:${module}`)));
    assert.equal({ ...note, since: "" }, { pid: hung.pid, startTime: String(hung.pid * 10), device: `module:${module}`, driver: module, command: rmmod, since: "", domain: { name: "win11", uuid: UUID } });
  }
  assert.match((await cliOn(kernel, "status")).stdout, `stuck driver: module vfio_pci: ${rmmod} did not return (since `);
  assert.is((await recover(kernel)).failed.length, 1, "refused while rmmod is blocked");

  kernel.sim.finishHungWrites();
  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.match(recovered.stdout, `module vfio: ${rmmod}, which did not return, has finished since (pid ${hung.pid} is gone)`);
  assertAsBefore(kernel, before);
});

test("modprobe vfio-pci never returns at prepare (vfio-pci's probe blocks on a device): prepare fails naming it; status and doctor show it; its load stays in the journal until it has returned", async () => {
  const kernel = workstation();
  const before = kernel.sim.snapshot();
  kernel.sim.hangProgram("modprobe", ["vfio-pci", "ids="]);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 1);
  const [pid] = kernel.sim.hungPrograms.map((run) => run.pid);
  assert.match(prepare.stderr, `modprobe vfio-pci ids= did not return within 60 s; vmhook left modprobe (pid ${pid}) blocked in the kernel and gave up`);
  const note = JSON.parse(kernel.sim.read(paths.stuckWrite("module:vfio_pci")));
  assert.equal({ ...note, since: "" }, { pid, startTime: String(pid * 10), device: "module:vfio_pci", driver: "vfio-pci", command: "modprobe vfio-pci ids=", since: "", domain: { name: "win11", uuid: UUID } });
  assert.match((await cliOn(kernel, "status")).stdout, `stuck driver: module vfio_pci: modprobe vfio-pci ids= did not return (since `);
  const doctor = await cliOn(kernel, "doctor");
  assert.is(doctor.code, 1);
  assert.match(doctor.stdout, "fail  stuck driver: module vfio_pci: modprobe vfio-pci ids= did not return");
  // What it loads once it returns is this VM's to unload: the record stays while it may still load.
  assert.ok(entries(kernel).includes("undo-failed load module vfio-pci"), entries(kernel).join("\n"));
  assert.is((await recover(kernel)).failed.length > 0, true);

  kernel.sim.finishHungWrites();
  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.match(recovered.stdout, `module vfio_pci: modprobe vfio-pci ids=, which did not return, has finished since (pid ${pid} is gone)`);
  assertAsBefore(kernel, before);
});

test("RootedHost.runInHelper: runs the program under the root, reports its status and stderr; leaves one that blocks", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-helper-"));
  const host = new RootedHost(root);
  try {
    fs.mkdirSync(`${root}/usr/bin`, { recursive: true });
    fs.writeFileSync(`${root}/usr/bin/rmmod`, '#!/bin/sh\necho "rmmod: ERROR: Module $1 is in use" >&2\nexit 1\n', { mode: 0o755 });
    fs.writeFileSync(`${root}/usr/bin/modprobe`, "#!/bin/sh\nexec sleep 30\n", { mode: 0o755 });
    const failed = await host.runInHelper("rmmod", ["nvidia"], 5000, () => {});
    assert.equal(failed.done && [failed.result.status, failed.result.stderr], [1, "rmmod: ERROR: Module nvidia is in use\n"]);
    let started = 0;
    const blocked = await host.runInHelper("modprobe", ["nvidia"], 200, (pid) => (started = pid));
    assert.equal(blocked, { done: false, pid: started });
    assert.ok(host.processAlive(started), "left running, not waited for");
    process.kill(started, "SIGKILL");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test.run();
