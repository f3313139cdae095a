// A driver whose remove() never returns (lib/bounded-write.ts): the unbind
// runs in a helper that stays blocked in D state; the hook fails naming the
// device, its driver and the file, keeps what it could not undo, and writes
// nothing more to the device until the helper is gone. The real kernel test
// is test/kernel/stuck-driver.test.ts.
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { RootedHost } from "../../lib/host.ts";
import { readJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { loadSettings } from "../../lib/settings.ts";
import { runThroughDriver, writeThroughDriver, type WriteContext } from "../../lib/bounded-write.ts";
import { clearForWrite, forgetFinishedWrites, noteWrite, stuckWriteFor, type StuckWrite } from "../../lib/stuck-writes.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { paths } from "../../lib/paths.ts";
import { GpuKernel } from "../helpers/gpu-kernel.ts";
import { SimHost } from "../helpers/simhost.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";

const UUID = "4d1f3a52-7c0e-4b8e-a3f1-2b6c9d0e5a71";
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const UNBIND = `/sys/bus/pci/devices/${GPU}/driver/unbind`;
const XML = `<domain type='kvm'><name>win11</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;

/** An AMD card for the VM beside the host's Intel GPU; vfio's bindTimeoutSeconds is 2. */
function workstation(): GpuKernel {
  const kernel = new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "i915", driver: "i915", loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0"] })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, nodes: ["card1"] })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x1002", nativeDriver: "snd_hda_intel", group: 1 });
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 2 } } }));
  return kernel;
}

const writesTo = (kernel: GpuKernel, from: number, device: string) => kernel.sim.writes.slice(from).filter((write) => write.path.includes(device) || write.data === device);
/** What vmhook recover does (lib/cli/recover.ts), on the simulated kernel: the CLI's own host would not simulate the driver. */
async function recover(kernel: GpuKernel): Promise<{ forgotten: string[]; failed: unknown[] }> {
  const forgotten = forgetFinishedWrites(kernel.sim).map((write) => write.device);
  const log = createLogger(kernel.sim, { echo: "none", file: false });
  const { failed } = await undoJournal(readJournal(kernel.sim, UUID)!, { host: kernel.sim, log, settings: loadSettings(kernel.sim), registry }, new Deadline(kernel.sim, 10_000));
  return { forgotten, failed };
}

const cliOn = (kernel: GpuKernel, ...args: string[]) => cli(["--root", kernel.sim.root, ...args]);

test("an unbind that never returns: prepare fails naming device, driver and file; the helper is noted; nothing more is written to the device", async () => {
  const kernel = workstation();
  kernel.sim.hangWrite(UNBIND);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 1);
  const [pid] = kernel.sim.hung.map((write) => write.pid);
  assert.is(prepare.stderr.split("\n")[0], `vmhook: ${GPU}: driver amdgpu did not return within 2 s from writing "${GPU}" to ${UNBIND}; vmhook left its helper (pid ${pid}) blocked in the kernel and gave up`);
  assert.match(prepare.stderr, "do not use the device, and do not unload its driver; wait until the driver lets go (vmhook status shows it), or reboot the host");
  assert.match(prepare.stderr, "raise plugins.vfio.bindTimeoutSeconds in /etc/vmhook/vmhook.json");
  assert.match(prepare.stderr, "2 of 3 change(s) could not be undone: run vmhook recover win11 and see vmhook status");

  // Nothing was written to the GPU after the unbind, by the step or the rollback (a write would block on the device's lock);
  // its driver_override was never set: that comes after the unbind.
  const unbindAt = kernel.sim.writes.findIndex((write) => write.path === UNBIND);
  assert.equal(writesTo(kernel, unbindAt + 1, GPU), []);
  assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/driver_override`), "(null)");
  // Undone: vfio-pci is unloaded again; the audio function was never touched.
  assert.not.ok(kernel.loaded("vfio_pci"));
  assert.is(kernel.driverOf(AUDIO), "snd_hda_intel");
  // The journal does not claim the GPU is back: its record waits for vmhook recover.
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => `${entry.state} ${entry.description}`), [
    `undo-failed at release, check that the display is back: ${GPU} on amdgpu with card`,
    `undo-failed bind ${GPU} to vfio-pci (from amdgpu)`,
  ]);
  assert.match(readJournal(kernel.sim, UUID)!.entries[1]!.error!, `${GPU}: driver amdgpu did not return from writing "${GPU}" to ${UNBIND}`);
  const note = JSON.parse(kernel.sim.read(paths.stuckWrite(GPU)));
  assert.equal({ ...note, since: "" }, { pid, startTime: String(pid * 10), device: GPU, driver: "amdgpu", file: UNBIND, value: GPU, since: "", domain: { name: "win11", uuid: UUID } });
  kernel.sim.cleanup();
});

test("the HDMI audio function's unbind held by a program keeping its sound card open: the failed start names the program, whose closing frees the card (snd_card_free waits for it), not only a reboot", async () => {
  const kernel = workstation();
  const audioUnbind = `/sys/bus/pci/devices/${AUDIO}/driver/unbind`;
  for (const node of ["controlC1", "pcmC1D3p", "hwC1D0"]) kernel.sim.dir(`/sys/bus/pci/devices/${AUDIO}/sound/card1/${node}`);
  // The card is disconnected by then: its nodes are gone from /dev, and the holder's descriptor says so.
  kernel.process(777, "aplay", ["/dev/null", "/dev/snd/pcmC1D3p (deleted)"]).process(778, "pipewire", ["/dev/snd/controlC0"]);
  kernel.sim.hangWrite(audioUnbind);
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 1);
  const [pid] = kernel.sim.hung.map((write) => write.pid);
  assert.is(
    prepare.stderr.split("\n")[0],
    `vmhook: ${AUDIO}: driver snd_hda_intel did not return within 2 s from writing "${AUDIO}" to ${audioUnbind}; vmhook left its helper (pid ${pid}) blocked in the kernel and gave up; its sound card's remove() waits until every program has closed the card, and pid 777 (aplay) holds /dev/snd/pcmC1D3p: close it (or end it) and the unbind finishes`,
  );
  // Status and doctor, run later (the card's nodes are gone from sysfs by then too), name the program as well.
  fs.rmSync(kernel.sim.resolve(`/sys/bus/pci/devices/${AUDIO}/sound`), { recursive: true });
  const holderAdvice = "pid 777 (aplay) holds /dev/snd/pcmC1D3p, and its sound card's remove() waits until every program has closed the card: close it (or end it) and the unbind finishes";
  const status = await cliOn(kernel, "status");
  assert.match(status.stdout, `stuck driver: ${AUDIO}: driver snd_hda_intel did not return from writing "${AUDIO}" to ${audioUnbind}`);
  assert.match(status.stdout, `is still blocked in the kernel (state D: uninterruptible)\n  ${holderAdvice}; otherwise do not use the device`);
  const doctor = await cliOn(kernel, "doctor");
  assert.match(doctor.stdout, `fix: ${holderAdvice}; otherwise do not use the device`);
  // aplay closed the card: the unbind returns, and vmhook recover gives the card back.
  kernel.sim.finishHungWrites();
  const { forgotten, failed } = await recover(kernel);
  assert.equal(forgotten, [AUDIO]);
  assert.equal(failed, []);
  assert.is(kernel.driverOf(AUDIO), "snd_hda_intel");
  assert.is(kernel.driverOf(GPU), "amdgpu");
  kernel.sim.cleanup();
});

test("while the helper is blocked: status and doctor show it in D state; prepare and recover refuse without writing to the device", async () => {
  const kernel = workstation();
  kernel.sim.hangWrite(UNBIND);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 1);
  const [pid] = kernel.sim.hung.map((write) => write.pid);
  const stuckLine = `${GPU}: driver amdgpu did not return from writing "${GPU}" to ${UNBIND}`;

  const status = await cliOn(kernel, "status");
  assert.match(status.stdout, `stuck driver: ${stuckLine}`);
  assert.match(status.stdout, `its helper, pid ${pid}, is still blocked in the kernel (state D: uninterruptible)\n  do not use the device`);
  const json = JSON.parse((await cliOn(kernel, "--json", "status")).stdout);
  assert.equal(json.stuckWrites.map((write: { pid: number; running: boolean; state: string }) => [write.pid, write.running, write.state]), [[pid, true, "D"]]);
  const doctor = await cliOn(kernel, "doctor");
  assert.is(doctor.code, 1);
  assert.match(doctor.stdout, `fail  stuck driver: ${stuckLine}`);
  assert.match(doctor.stdout, "fix: do not use the device");

  const from = kernel.sim.writes.length;
  const again = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(again.code, 1);
  assert.match(again.stderr, "an earlier run of win11 left changes that cannot be undone");
  assert.match(again.stderr, `vmhook writes nothing to ${GPU} until it has returned`);
  const recover = await cliOn(kernel, "recover");
  assert.is(recover.code, 1);
  assert.match(recover.stderr, `${stuckLine} (since `);
  // Another domain with the same device: refused at planning, before the survey reads it.
  const other = await runHookEvent(kernel.sim, "prepare", "begin", XML.replace(UUID, "11111111-2222-4333-8444-555555555555").replace("win11", "other"), "other");
  assert.is(other.code, 1);
  assert.match(other.stderr.split("\n")[0]!, `${stuckLine} (since `);
  assert.match(other.stderr, "the host was left as it was (0 change(s) undone)");
  assert.equal(writesTo(kernel, from, GPU), []);
  kernel.sim.cleanup();
});

const BAD_NOTES: [string, (note: Record<string, unknown>) => void, string][] = [
  ["its start time as a number", (note) => (note.startTime = Number(note.startTime)), "startTime"],
  ["no domain", (note) => delete note.domain, "domain"],
  ["another device than its file's", (note) => (note.device = AUDIO), "device"],
  ["a sound card node that is no /dev/snd node", (note) => (note.waitsFor = ["/etc/shadow"]), "waitsFor"],
];

for (const [what, corrupt, field] of BAD_NOTES) {
  test(`a stuck-write note with ${what} is not taken for a finished write: recover refuses naming the note and "${field}", keeps it, writes nothing to the device`, async () => {
    const kernel = workstation();
    kernel.sim.hangWrite(UNBIND);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 1);
    const note = JSON.parse(kernel.sim.read(paths.stuckWrite(GPU)));
    corrupt(note);
    kernel.sim.file(paths.stuckWrite(GPU), JSON.stringify(note));
    const from = kernel.sim.writes.length;
    assert.throws(() => forgetFinishedWrites(kernel.sim), (error: Error) => error.message.includes(`stuck-write note ${paths.stuckWrite(GPU)}`) && error.message.includes(`"${field}"`));
    const again = await runHookEvent(kernel.sim, "prepare", "begin", XML.replace(UUID, "11111111-2222-4333-8444-555555555555").replace("win11", "other"), "other");
    assert.is(again.code, 1);
    assert.match(again.stderr, `stuck-write note ${paths.stuckWrite(GPU)}`);
    assert.equal(JSON.parse(kernel.sim.read(paths.stuckWrite(GPU))), note, "the note is kept");
    assert.equal(writesTo(kernel, from, GPU), []);
    kernel.sim.cleanup();
  });
}

test("once the driver returns: status says so, vmhook recover forgets the note and brings the device back", async () => {
  const kernel = workstation();
  const before = kernel.sim.snapshot();
  kernel.sim.hangWrite(UNBIND);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 1);
  kernel.sim.finishHungWrites();
  assert.is(kernel.driverOf(GPU), undefined, "the unbind took effect when remove() returned");

  const status = await cliOn(kernel, "status");
  assert.match(status.stdout, "has finished since\n  vmhook recover forgets this note");
  assert.match((await cliOn(kernel, "doctor")).stdout, "warn  stuck driver:");
  const { forgotten, failed } = await recover(kernel);
  assert.equal(forgotten, [GPU]);
  assert.equal(failed, []);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.equal(kernel.sim.stateFiles(), []);
  assert.is((await cliOn(kernel, "status")).stdout, "no VM holds anything (no journals in /run/vmhook)\n");
  assert.equal(kernel.sim.snapshot(), before);
  kernel.sim.cleanup();
});

test("vfio-pci's unbind hangs at release: release still exits 0, names it, and keeps the records (vfio-pci stays loaded) for vmhook recover", async () => {
  const kernel = workstation();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.sim.hangWrite("/sys/bus/pci/drivers/vfio-pci/unbind", GPU);
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(release.stderr, `${GPU}: driver vfio-pci did not return within 2 s from writing "${GPU}" to /sys/bus/pci/drivers/vfio-pci/unbind`);
  assert.is(kernel.driverOf(AUDIO), "snd_hda_intel", "the rest of the release still ran");
  // rmmod of vfio-pci would block on the device its remove() still holds: the module stays, and so does its record.
  assert.ok(kernel.loaded("vfio_pci"));
  assert.match(release.stderr, "vfio: module(s) vfio_pci stay loaded: a write into their driver has not returned (vmhook status); once it has, vmhook recover unloads them");
  assert.equal(readJournal(kernel.sim, UUID)!.entries.map((entry) => `${entry.state} ${entry.undo.action}`), ["undo-failed load-modules", "undo-failed verify-return", "undo-failed bind-vfio"]);
  kernel.sim.finishHungWrites();
  assert.equal((await recover(kernel)).failed, []);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.not.ok(kernel.loaded("vfio_pci"), "recover unloads what prepare loaded");
  kernel.sim.cleanup();
});

test("a firmware framebuffer whose unbind never returns: single-GPU prepare fails naming it; the display manager runs again", async () => {
  const kernel = new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, bootVga: true, nodes: ["card0"] })
    .platformFramebuffer("efi-framebuffer", "efi-framebuffer.0")
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["sddm", ["/dev/dri/card0"]] } });
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 2 } } }));
  kernel.sim.hangWrite("/sys/bus/platform/drivers/efi-framebuffer/unbind");
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 1);
  assert.match(prepare.stderr.split("\n")[0]!, 'efi-framebuffer.0: driver efi-framebuffer did not return within 2 s from writing "efi-framebuffer.0" to /sys/bus/platform/drivers/efi-framebuffer/unbind');
  assert.ok(kernel.units.get("display-manager.service")!.active, "rolled back");
  assert.is(kernel.driverOf(GPU), "amdgpu", "the GPU was not touched");
  assert.is(JSON.parse(kernel.sim.read(paths.stuckWrite("efi-framebuffer.0"))).driver, "efi-framebuffer");
  kernel.sim.cleanup();
});

test("every write into a driver is noted while its helper runs (a hook killed meanwhile leaves the note), and forgotten once it returned", async () => {
  const kernel = workstation();
  const seen: string[] = [];
  // What the driver would see: the note, at the moment its unbind runs.
  const write = kernel.sim.write.bind(kernel.sim);
  kernel.sim.write = (file, data) => {
    if (file === UNBIND) {
      const note = JSON.parse(kernel.sim.read(paths.stuckWrite(GPU)));
      seen.push(`${note.driver} ${note.file} ${note.value} ${kernel.sim.exists(`/proc/${note.pid}`) ? "running" : "gone"}`);
    }
    write(file, data);
  };
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(prepare.code, 0, prepare.stderr);
  assert.equal(seen, [`amdgpu ${UNBIND} ${GPU} running`]);
  assert.not.ok(kernel.sim.exists(paths.stuckWrite(GPU)));
  assert.equal(kernel.sim.list(paths.stuckWrites), []);
  assert.is((await runHookEvent(kernel.sim, "release", "end", XML, "win11")).code, 0);
  assert.equal(kernel.sim.list(paths.stuckWrites), []);
  kernel.sim.cleanup();
});

test("a hook killed at each change from starting the unbind's helper to noting it: no helper is left blocked without a note that status shows and recover keeps", async () => {
  const probe = workstation();
  probe.sim.hangWrite(UNBIND).changes.length = 0;
  await runHookEvent(probe.sim, "prepare", "begin", XML, "win11");
  const first = probe.sim.changes.indexOf(`start a helper writing "${GPU}" to ${UNBIND}`) + 1;
  const last = probe.sim.changes.indexOf(`rename ${paths.stuckWrite(GPU)}.tmp to ${paths.stuckWrite(GPU)}`) + 1;
  probe.sim.cleanup();
  assert.ok(first > 0 && last > first);
  for (let n = first; n <= last; n++) {
    const kernel = workstation();
    kernel.sim.hangWrite(UNBIND).killAtChange(n);
    await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
    const killedAt = kernel.sim.revive();
    const blocked = kernel.sim.hung.map((write) => write.pid);
    const shown = JSON.parse((await cliOn(kernel, "--json", "status")).stdout).stuckWrites.filter((write: { running: boolean }) => write.running).map((write: { pid: number }) => write.pid);
    assert.equal(shown, blocked, `killed at ${killedAt}: status shows the blocked helper`);
    if (blocked.length === 0) assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${GPU}/driver_override`), "(null)");
    kernel.sim.cleanup();
  }
});

test("a hook killed between its note's temp copy and the rename: the helper never wrote; recover keeps the copy as the note only while the helper it names still runs", async () => {
  const noted = `rename ${paths.stuckWrite(GPU)}.tmp to ${paths.stuckWrite(GPU)}`;
  // Killed at the rename itself, not at its number in a probe run: the background modprobe's changes interleave by timing.
  const kernel = workstation();
  kernel.sim.hangWrite(UNBIND).killAtChange(noted);
  await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(kernel.sim.revive(), noted);
  // (The background modprobe vfio-pci may have left the note of its finished helper too: the hook was killed before it forgot it.)
  const gpuNotes = () => kernel.sim.list(paths.stuckWrites).filter((name) => name.startsWith(GPU));
  assert.equal(gpuNotes(), [`${GPU}.json.tmp`]);
  assert.equal(kernel.sim.hung, [], "the unbind never reached the driver");
  // The helper has not seen its input end yet (or a vmhook before the gate left it): the copy is the note while it runs.
  const { pid } = JSON.parse(kernel.sim.read(`${paths.stuckWrite(GPU)}.tmp`));
  kernel.sim.file(`/proc/${pid}/stat`, `${pid} (dd) S 1 ${pid} ${pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 ${pid * 10} 2314240 1`);
  const held = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(held.code, 1);
  assert.match(held.stderr, `${GPU}: driver amdgpu did not return from writing "${GPU}" to ${UNBIND}`);
  assert.equal(gpuNotes(), [`${GPU}.json`], "the copy is the note: the device is held");

  kernel.sim.remove(`/proc/${pid}`);
  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.equal(kernel.sim.list(paths.stuckWrites), []);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.equal(kernel.sim.stateFiles(), []);
  kernel.sim.cleanup();
});

/**
 * Another hook starting a write into the device: at the first rename or
 * removal vmhook makes under /run/vmhook/stuck (once a helper has ended,
 * with `afterHelperEnds`), it clears the device and notes its own helper,
 * pid `live`, blocked in the driver. Returns whether it has.
 */
function anotherHookNotesAt(sim: SimHost, write: Omit<StuckWrite, "pid" | "startTime">, live: number, afterHelperEnds = false): () => boolean {
  sim.file(`/proc/${live}/stat`, `${live} (dd) D 1 ${live} ${live} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 ${live * 10} 2314240 1`);
  let [helperEnded, hookWrote] = [!afterHelperEnds, false];
  const hookInterleaves = (hostPath: string) => {
    if (hostPath.startsWith("/proc/")) helperEnded = true;
    if (hookWrote || !helperEnded || !hostPath.startsWith(paths.stuckWrites)) return;
    hookWrote = true;
    clearForWrite(sim, write.device);
    noteWrite(sim, { ...write, pid: live });
  };
  const [rename, remove] = [sim.rename.bind(sim), sim.remove.bind(sim)];
  sim.rename = (from, to) => (hookInterleaves(from), rename(from, to));
  sim.remove = (hostPath) => (hookInterleaves(hostPath), remove(hostPath));
  return () => hookWrote;
}

const UNBIND_NOTE = { device: GPU, driver: "amdgpu", file: UNBIND, value: GPU, since: "2026-01-01T00:00:00.000Z", domain: { name: "win11", uuid: UUID } };
const LIVE = 5002;
const liveNoteStays = (sim: SimHost) => {
  const note = stuckWriteFor(sim, GPU);
  assert.equal({ pid: note?.pid, running: note?.running }, { pid: LIVE, running: true }, "the live helper's note stays");
  assert.equal(sim.list(paths.stuckWrites).filter((name) => name.startsWith(GPU)), [`${GPU}.json`]);
};

test("vmhook recover forgets only the finished note it read: a hook's note of a new write into the device, put in its place meanwhile, stays", () => {
  const sim = new SimHost();
  try {
    noteWrite(sim, { ...UNBIND_NOTE, pid: 5001 }); // its helper is gone
    // A hook starting a write into the device once recover has read the finished note, before recover changes anything there.
    const hookWrote = anotherHookNotesAt(sim, UNBIND_NOTE, LIVE);
    assert.equal(forgetFinishedWrites(sim).map((note) => note.pid), [5001]);
    assert.ok(hookWrote(), "the hook wrote its note in between");
    liveNoteStays(sim);
  } finally {
    sim.cleanup();
  }
});

const OWN_WRITES: [string, (ctx: WriteContext) => Promise<unknown>][] = [
  ["a write into a driver", (ctx) => writeThroughDriver(ctx, { device: GPU, driver: "amdgpu", file: UNBIND, value: GPU, timeoutMs: 1000 })],
  ["an rmmod", (ctx) => runThroughDriver(ctx, { command: "rmmod", modules: ["amdgpu"], devices: [{ address: GPU, driver: "amdgpu" }], timeoutMs: 1000 })],
];

for (const [what, run] of OWN_WRITES) {
  test(`${what} whose helper returned forgets only its own note: another hook's note of a new write into the device, put in its place meanwhile, stays`, async () => {
    const sim = new SimHost();
    try {
      sim.file(UNBIND, "");
      // Once the helper has ended, before the hook forgets its note: another hook finds that note finished, and notes its own helper.
      const hookWrote = anotherHookNotesAt(sim, UNBIND_NOTE, LIVE, true);
      await run({ host: sim, domain: { name: "other", uuid: "11111111-2222-4333-8444-555555555555" }, deadline: new Deadline(sim, 10_000) });
      assert.ok(hookWrote(), "the other hook wrote its note in between");
      liveNoteStays(sim);
    } finally {
      sim.cleanup();
    }
  });
}

test("a note a killed recover left taken aside (NAME.json.forgetting) is still the note: while its helper runs, status, doctor, recover and hooks see it and write nothing to the device; once it is gone, recover forgets it", async () => {
  const kernel = workstation();
  kernel.sim.hangWrite(UNBIND);
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 1);
  const [pid] = kernel.sim.hung.map((write) => write.pid);
  // Killed between taking the note aside and removing it or putting it back (as when a hook had replaced the note it read).
  const aside = `${paths.stuckWrite(GPU)}.forgetting`;
  kernel.sim.rename(paths.stuckWrite(GPU), aside);
  const stuckLine = `${GPU}: driver amdgpu did not return from writing "${GPU}" to ${UNBIND}`;

  assert.match((await cliOn(kernel, "status")).stdout, `stuck driver: ${stuckLine}`);
  assert.equal(JSON.parse((await cliOn(kernel, "--json", "status")).stdout).stuckWrites.map((write: { pid: number; running: boolean }) => [write.pid, write.running]), [[pid, true]]);
  assert.match((await cliOn(kernel, "doctor")).stdout, `fail  stuck driver: ${stuckLine}`);
  const from = kernel.sim.writes.length;
  const other = await runHookEvent(kernel.sim, "prepare", "begin", XML.replace(UUID, "11111111-2222-4333-8444-555555555555").replace("win11", "other"), "other");
  assert.is(other.code, 1);
  assert.match(other.stderr.split("\n")[0]!, `${stuckLine} (since `);
  const held = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(held.code, 1);
  assert.match(held.stderr, `${stuckLine} (since `);
  assert.equal(writesTo(kernel, from, GPU), []);
  assert.equal(kernel.sim.list(paths.stuckWrites), [`${GPU}.json.forgetting`]);

  kernel.sim.finishHungWrites();
  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.match(recovered.stdout, `${GPU}: the write into driver amdgpu that did not return has finished since (pid ${pid} is gone)`);
  assert.equal(kernel.sim.list(paths.stuckWrites), []);
  assert.is(kernel.driverOf(GPU), "amdgpu");
  assert.equal(kernel.sim.stateFiles(), []);
  kernel.sim.cleanup();
});

/** A `started` that returns only once the helper has exited (a zombie: this process reaps it later), so its input pipe has no reader when it is fed. */
function exitedBeforeFed(pid: number): void {
  const waiting = new Int32Array(new SharedArrayBuffer(4));
  for (let tries = 0; tries < 500 && fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z"; tries++) Atomics.wait(waiting, 0, 0, 10);
}

test("RootedHost.writeInHelper: writes through dd, nothing parsed by a shell; reports the kernel's error; leaves a helper that blocks", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-helper-"));
  const host = new RootedHost(root);
  try {
    fs.writeFileSync(`${root}/value`, "");
    const odd = `0000:01:00.0 $(touch ${root}/injected) "'`;
    assert.equal(await host.writeInHelper("/value", odd, 5000, () => {}), { done: true });
    assert.is(fs.readFileSync(`${root}/value`, "utf8"), odd);
    assert.not.ok(fs.existsSync(`${root}/injected`));
    // dd opens its output first: one that cannot fails and exits before it reads its input (fed once noted).
    for (const noted of [() => {}, exitedBeforeFed]) {
      const failed = await host.writeInHelper("/missing/value", "1", 5000, noted);
      assert.is(failed.done, true);
      assert.match((failed as { error: string }).error, /missing\/value/);
    }
    // Opening a FIFO without a reader blocks, as a driver's remove() would (though interruptibly).
    execFileSync("mkfifo", [`${root}/fifo`]);
    const blocked = await host.writeInHelper("/fifo", "1", 200, () => {});
    assert.is(blocked.done, false);
    const pid = (blocked as { pid: number }).pid;
    assert.ok(host.processAlive(pid), "left running, not waited for");
    process.kill(pid, "SIGKILL");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** A hook (a bun process) that starts a helper through RootedHost and is killed (kill -9) as it is told the helper's pid, before it can note it: the helper's pid. */
function hookKilledAtHelperStart(root: string, start: "writeInHelper" | "runInHelper"): number {
  const script = `
import * as fs from "node:fs";
import { RootedHost } from ${JSON.stringify(fileURLToPath(new URL("../../lib/host.ts", import.meta.url)))};
const root = ${JSON.stringify(root)};
const host = new RootedHost(root);
const killed = (pid) => { fs.writeFileSync(root + "/helper-pid", String(pid)); process.kill(process.pid, "SIGKILL"); };
if (${JSON.stringify(start)} === "writeInHelper") await host.writeInHelper("/value", "1", 5000, killed);
else await host.runInHelper("rmmod", ["nvidia"], 5000, killed);
`;
  fs.writeFileSync(`${root}/hook.mjs`, script);
  assert.is(spawnSync(process.execPath, [`${root}/hook.mjs`], { stdio: "ignore" }).signal, "SIGKILL");
  const pid = Number(fs.readFileSync(`${root}/helper-pid`, "utf8"));
  // The helper outlives the hook: wait until it has ended (a zombie, or reaped).
  const ended = () => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
    } catch {
      return true;
    }
  };
  for (let waited = 0; waited < 5000 && !ended(); waited += 20) execFileSync("sleep", ["0.02"]);
  assert.ok(ended(), "the helper ended");
  return pid;
}

test("a hook killed after starting a helper, before its note exists: the helper acts on nothing (dd writes no value, rmmod never runs), so no unnoted helper can block in a driver", async () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-helper-"));
  try {
    fs.writeFileSync(`${root}/value`, "");
    fs.mkdirSync(`${root}/usr/bin`, { recursive: true });
    fs.writeFileSync(`${root}/usr/bin/rmmod`, '#!/bin/sh\necho "$1" > "$VMHOOK_ROOT/rmmod-ran"\n', { mode: 0o755 });
    hookKilledAtHelperStart(root, "writeInHelper");
    assert.is(fs.readFileSync(`${root}/value`, "utf8"), "", "dd wrote nothing");
    hookKilledAtHelperStart(root, "runInHelper");
    assert.not.ok(fs.existsSync(`${root}/rmmod-ran`), "rmmod never ran");
    // A note that cannot be written (/run full) fails the write before the helper acts.
    const host = new RootedHost(root);
    const unnoted = () => {
      throw new Error("ENOSPC: no space left on device");
    };
    const failure = (started: Promise<unknown>) => started.then(String, (error: Error) => error.message);
    assert.match(await failure(host.writeInHelper("/value", "1", 5000, unnoted)), "ENOSPC");
    assert.match(await failure(host.runInHelper("rmmod", ["nvidia"], 5000, unnoted)), "ENOSPC");
    execFileSync("sleep", ["0.3"]);
    assert.is(fs.readFileSync(`${root}/value`, "utf8"), "", "dd wrote nothing");
    assert.not.ok(fs.existsSync(`${root}/rmmod-ran`), "rmmod never ran");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test.run();
