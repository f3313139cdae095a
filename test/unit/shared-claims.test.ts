// Issue 9, defects 3 and 4: what VMs share is computed from everything that
// holds it, never from what could be read. An unreadable journal, shared
// state or claims ledger stops changes to the shared resource (prepare
// fails naming the file; release keeps its entry for vmhook recover), and a
// kernel module is claimed across VMs, so a device goes back to its driver
// once the last VM that needed the module gone is released.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { ensureStateDir } from "../../lib/state-files.ts";
import { journalsAndClaims } from "../../lib/claims.ts";
import { cli } from "../helpers/cli.ts";
import { JOURNAL_VERSION, readJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import { DEFAULT_SETTINGS } from "../../lib/settings.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { GpuKernel, NVIDIA_CARDS, twoNvidiaCards } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { SimHost } from "../helpers/simhost.ts";

const UUID_A = "3a3a3a3a-0000-4000-8000-00000000003a";
const UUID_B = "3b3b3b3b-0000-4000-8000-00000000003b";
const firstLine = (text: string) => text.split("\n")[0]!;

// ---- defect 3: the host CPU set of two isolating VMs

const isolated = (name: string, uuid: string, cpus: string[]) => `<domain type="kvm"><name>${name}</name><uuid>${uuid}</uuid><memory unit="MiB">512</memory>
  <vcpu>${cpus.length}</vcpu><cputune>${cpus.map((cpu, vcpu) => `<vcpupin vcpu="${vcpu}" cpuset="${cpu}"/>`).join("")}</cputune>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata></domain>`;
const vmA = isolated("vmA", UUID_A, ["2", "3"]);
const vmB = isolated("vmB", UUID_B, ["4", "5"]);

/** An 8-CPU systemd host whose systemctl keeps AllowedCPUs per unit (empty: all CPUs). */
function isolateHost(): { sim: SimHost; units: Record<string, string> } {
  const units: Record<string, string> = { "system.slice": "", "user.slice": "", "init.scope": "" };
  const sim = new SimHost().dir("/var/log").file("/proc/1/comm", "systemd");
  sim.file("/sys/devices/system/cpu/present", "0-7").file("/sys/devices/system/cpu/online", "0-7").file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu memory");
  // As systemd: a unit's AllowedCPUs is its cgroup's cpuset.cpus, written before set-property answers.
  const cgroup = (unit: string) => `/sys/fs/cgroup/${unit}/cpuset.cpus`;
  for (const unit of Object.keys(units)) sim.file(cgroup(unit), "");
  sim.onExec("systemctl", (args) => {
    if (args[0] === "show") return { stdout: `AllowedCPUs=${units[args[3]!] ?? ""}\n` };
    if (args[0] === "set-property") sim.file(cgroup(args[2]!), (units[args[2]!] = args[3]!.replace(/^AllowedCPUs=/, "")));
    return {};
  });
  return { sim, units };
}

const NARROWED_BY_BOTH = { "system.slice": "0-1,6-7", "user.slice": "0-1,6-7", "init.scope": "0-1,6-7" };

test("defect 3: releasing VM A while VM B's journal cannot be read changes no CPU set, keeps A's entry and says why; recover finishes once B's journal is back", async () => {
  const { sim, units } = isolateHost();
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", vmA, "vmA")).code, 0);
    assert.is((await runHookEvent(sim, "prepare", "begin", vmB, "vmB")).code, 0);
    assert.equal(units, NARROWED_BY_BOTH);
    const journalB = sim.resolve(paths.journal(UUID_B));
    const intact = fs.readFileSync(journalB, "utf8");

    for (const broken of ["{ half a journal", intact.replace(`"version": ${JOURNAL_VERSION}`, '"version": 99')]) {
      fs.writeFileSync(journalB, broken);
      const released = await runHookEvent(sim, "release", "end", vmA, "vmA");
      assert.is(released.code, 0, "release never fails libvirt");
      assert.match(firstLine(released.stderr), "release of vmA: 1 change(s) could not be undone");
      assert.match(released.stderr, `journal ${paths.journal(UUID_B)} cannot be read`);
      assert.match(released.stderr, "vmhook cannot tell what the other VMs hold, so it changes no shared resource");
      assert.equal(units, NARROWED_BY_BOTH, "B still runs: its CPUs stay isolated");
      assert.is(readJournal(sim, UUID_A)!.entries[0]!.state, "undo-failed");

      const another = isolated("vmC", "3c3c3c3c-0000-4000-8000-00000000003c", ["6"]);
      const refused = await runHookEvent(sim, "prepare", "begin", another, "vmC");
      assert.is(refused.code, 1);
      assert.match(firstLine(refused.stderr), `journal ${paths.journal(UUID_B)} cannot be read`);
      assert.equal(units, NARROWED_BY_BOTH);
    }

    fs.writeFileSync(journalB, intact);
    assert.is((await runHookEvent(sim, "release", "end", vmA, "vmA")).code, 0);
    assert.equal(units, { "system.slice": "0-3,6-7", "user.slice": "0-3,6-7", "init.scope": "0-3,6-7" });
    assert.is((await runHookEvent(sim, "release", "end", vmB, "vmB")).code, 0);
    assert.equal(units, { "system.slice": "", "user.slice": "", "init.scope": "" });
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("defect 3: an unreadable shared state (the host's original CPU sets) is never replaced by the narrowed values", async () => {
  const { sim, units } = isolateHost();
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", vmA, "vmA")).code, 0);
    const shared = sim.resolve(paths.sharedState("isolate"));
    const intact = fs.readFileSync(shared, "utf8");
    fs.writeFileSync(shared, "not json");
    const refused = await runHookEvent(sim, "prepare", "begin", vmB, "vmB");
    assert.is(refused.code, 1);
    assert.match(firstLine(refused.stderr), `shared state ${paths.sharedState("isolate")} cannot be read`);
    assert.is(fs.readFileSync(shared, "utf8"), "not json", "what it held is not guessed and not overwritten");
    assert.equal(units, { "system.slice": "0-1,4-7", "user.slice": "0-1,4-7", "init.scope": "0-1,4-7" });

    assert.match(refused.stderr, "could not be undone: run vmhook recover", "its own claim stays journaled: undoing it needs the originals too");

    fs.writeFileSync(shared, intact);
    assert.is((await runHookEvent(sim, "release", "end", vmB, "vmB")).code, 0, "libvirt releases a VM whose prepare failed");
    assert.equal(units, { "system.slice": "0-1,4-7", "user.slice": "0-1,4-7", "init.scope": "0-1,4-7" });
    assert.is((await runHookEvent(sim, "release", "end", vmA, "vmA")).code, 0);
    assert.equal(units, { "system.slice": "", "user.slice": "", "init.scope": "" }, "the real originals come back");
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

// ---- defect 4: two NVIDIA cards, one per VM

const [CARD_A, CARD_B] = NVIDIA_CARDS;

const passthrough = (name: string, uuid: string, card: string) => {
  const [, bus, slot, fn] = /^0000:(\w\w):(\w\w)\.(\d)$/.exec(card)!;
  return `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><memory unit='GiB'>4</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev></devices></domain>`;
};

const persistenced = (kernel: GpuKernel) => kernel.units.get("nvidia-persistenced.service")!.active;

for (const order of [["A", "B"], ["B", "A"]] as const) {
  test(`defect 4: two NVIDIA cards, one per VM, released ${order.join(" then ")}: every card back on nvidia, no journal or claim left`, async () => {
    const kernel = twoNvidiaCards();
    try {
      const before = kernel.sim.snapshot();
      const vms = { A: passthrough("vmA", UUID_A, CARD_A), B: passthrough("vmB", UUID_B, CARD_B) };
      const names = { A: "vmA", B: "vmB" };
      assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vms.A, "vmA")).code, 0);
      assert.ok(kernel.loaded("nvidia"), "the host still has B's card on nvidia");
      assert.not.ok(persistenced(kernel), "it held A's card");
      const prepareB = await runHookEvent(kernel.sim, "prepare", "begin", vms.B, "vmB");
      assert.is(prepareB.code, 0, prepareB.stderr);
      assert.equal([kernel.driverOf(CARD_A), kernel.driverOf(CARD_B)], ["vfio-pci", "vfio-pci"]);
      assert.not.ok(kernel.loaded("nvidia"), "no NVIDIA card is left to the host");

      const [first, second] = order;
      await releaseCleanly(kernel, vms[first], names[first]);
      assert.equal(readJournal(kernel.sim, first === "A" ? UUID_A : UUID_B), undefined, "nothing stale is kept");
      const secondCard = second === "A" ? CARD_A : CARD_B;
      assert.is(kernel.driverOf(secondCard), "vfio-pci", "the running VM keeps its card");
      assert.not.ok(persistenced(kernel), "nvidia-persistenced stays stopped while a VM needs nvidia unloaded");

      await releaseCleanly(kernel, vms[second], names[second]);
      assert.ok(kernel.loaded("nvidia"));
      assert.equal([kernel.driverOf(CARD_A), kernel.driverOf(CARD_B)], ["nvidia", "nvidia"]);
      assert.ok(persistenced(kernel));
      assert.equal(kernel.sim.snapshot(), before);
      assert.equal(kernel.sim.stateFiles(), []);
    } finally {
      kernel.sim.cleanup();
    }
  });
}

test("defect 4: a claims ledger that cannot be read stops the module handover (prepare names the file) and keeps the release's entry", async () => {
  const kernel = twoNvidiaCards();
  try {
    const vmB4 = passthrough("vmB", UUID_B, CARD_B);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", passthrough("vmA", UUID_A, CARD_A), "vmA")).code, 0);
    kernel.sim.file(paths.claims, '{"version": 7, "claims": {}}');
    const before = kernel.sim.snapshot();
    const refused = await runHookEvent(kernel.sim, "prepare", "begin", vmB4, "vmB");
    assert.is(refused.code, 1);
    assert.match(firstLine(refused.stderr), `claims ledger ${paths.claims} has unknown version 7`);
    assert.equal(kernel.sim.snapshot(), before);
  } finally {
    kernel.sim.cleanup();
  }
});

// ---- one device, two VMs: the second is refused before anything, naming the first

/** VM A runs with its card on vfio-pci; VM B, naming `card`, is refused at prepare with `message`, and its release after the refusal takes nothing from A. */
async function secondVmRefused(kernel: GpuKernel, card: string, message: string): Promise<void> {
  try {
    const vmA = passthrough("vmA", UUID_A, CARD_A);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vmA, "vmA")).code, 0);
    const whileARuns = kernel.sim.snapshot();
    const vmB = passthrough("vmB", UUID_B, card);
    const refused = await runHookEvent(kernel.sim, "prepare", "begin", vmB, "vmB");
    assert.is(refused.code, 1);
    assert.match(firstLine(refused.stderr), message);
    assert.equal(kernel.sim.snapshot(), whileARuns);
    // libvirt runs release after a failed prepare: it gives nothing of A's back to the host.
    await releaseCleanly(kernel, vmB, "vmB");
    assert.equal(kernel.sim.snapshot(), whileARuns);
    assert.equal(readJournal(kernel.sim, UUID_B), undefined);
    await releaseCleanly(kernel, vmA, "vmA");
    assert.is(kernel.driverOf(CARD_A), "nvidia");
  } finally {
    kernel.sim.cleanup();
  }
}

test("a second VM naming the card another VM runs with is refused at prepare, naming the card and that VM; its release leaves the card to the first", () =>
  secondVmRefused(twoNvidiaCards(), CARD_A, `vfio: ${CARD_A} is held by VM vmA (vmhook moved it to vfio-pci for it); a device goes to one VM at a time: shut vmA down first, or, if it is not running, run vmhook recover vmA (it gives vmA's devices back)`));

test("a second VM naming a device of the IOMMU group another VM runs with is refused at prepare: the group goes to one VM", () =>
  secondVmRefused(
    twoNvidiaCards().device({ address: "0000:01:01.0", classCode: "0x0c8000", vendor: "0x10de", group: 1 }),
    "0000:01:01.0",
    `vfio: 0000:01:01.0 is in IOMMU group 1, held by VM vmA (vmhook moved ${CARD_A} to vfio-pci for it); a group goes to one VM at a time: shut vmA down first`,
  ));

const BAD_CLAIMS: [string, (claim: Record<string, unknown>) => void, string][] = [
  ["no holders", (claim) => delete claim.holders, "holders"],
  ["its holders as one string", (claim) => (claim.holders = `${UUID_A},${UUID_B}`), "holders"],
  ["waiting that is not a list", (claim) => (claim.waiting = { address: CARD_A }), "waiting"],
];

for (const [what, corrupt, field] of BAD_CLAIMS) {
  test(`a claim in the ledger with ${what} is not taken for "no other VM holds it": releasing B refuses (naming the file, the claim and "${field}"), nvidia stays unloaded for A`, async () => {
    const kernel = twoNvidiaCards();
    try {
      assert.is((await runHookEvent(kernel.sim, "prepare", "begin", passthrough("vmA", UUID_A, CARD_A), "vmA")).code, 0);
      assert.is((await runHookEvent(kernel.sim, "prepare", "begin", passthrough("vmB", UUID_B, CARD_B), "vmB")).code, 0);
      const ledger = JSON.parse(kernel.sim.read(paths.claims));
      corrupt(ledger.claims["module:nvidia"]);
      kernel.sim.file(paths.claims, JSON.stringify(ledger));
      const released = await runHookEvent(kernel.sim, "release", "end", passthrough("vmB", UUID_B, CARD_B), "vmB");
      assert.not.ok(kernel.loaded("nvidia"), "A's card is passed through: its module stays unloaded");
      assert.not.ok(persistenced(kernel));
      assert.is(kernel.driverOf(CARD_A), "vfio-pci");
      assert.equal(JSON.parse(kernel.sim.read(paths.claims)), ledger, "the ledger is left for the fix");
      assert.ok(readJournal(kernel.sim, UUID_B), "B's entries stay for vmhook recover");
      assert.match(released.stderr, `claims ledger ${paths.claims}: claim "module:nvidia" has "${field}"`);
    } finally {
      kernel.sim.cleanup();
    }
  });
}

test("vmhook recover with a claims ledger it cannot read says so and exits 1, as for an unreadable journal: what the ledger holds is not given back", async () => {
  const sim = new SimHost();
  try {
    ensureStateDir(sim);
    sim.file(paths.claims, '{"version": 2, "claims": {}}');
    const text = await cli(["recover", "--root", sim.root], sim);
    assert.equal({ code: text.code, stdout: text.stdout }, { code: 1, stdout: `unreadable claims ledger: claims ledger ${paths.claims} has unknown version 2 (this vmhook reads version 1); inspect it; once the resources it names are back as they were (see vmhook status), remove it; nothing it holds was given back\n` });
    const json = await cli(["recover", "--json", "--root", sim.root], sim);
    assert.is(json.code, 1);
    assert.match(JSON.parse(json.stdout).unreadableClaims, "has unknown version 2");
  } finally {
    sim.cleanup();
  }
});

// ---- a card that waits in another VM's module claim is handed over again

// Two NVIDIA cards, one per VM, the host's desktop on an iGPU. B starts first
// (the host keeps A's card, so nvidia stays); A starts and unloads NVIDIA's
// stack; B stops (its card waits in A's claim) and starts again while A runs:
// its card has no driver then only because of A's claim, so its home is the
// driver it waits for in the ledger, not "no driver".
const managedPassthrough = (name: string, uuid: string, card: string) => passthrough(name, uuid, card).replace("managed='no'", "managed='yes'");

function nvidiaStackHost(): GpuKernel {
  return new GpuKernel({ systemd: false })
    .module({ name: "i915", driver: "i915", loaded: true })
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "nvidia_modeset", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_uvm", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_drm", uses: ["nvidia_modeset"], loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0"] })
    .device({ address: CARD_A, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, nodes: ["card1", "renderD129"] })
    .device({ address: CARD_B, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 2, nodes: ["card2", "renderD130"] });
}

/**
 * B, A started; B released (its card waits in A's claim on nvidia) and
 * started again while A runs; then `releases` (both VMs released, in the
 * order under test), after which the host is as before.
 */
async function bRestartedWhileAKeepsNvidiaUnloaded(releases: (kernel: GpuKernel, a: string, b: string) => Promise<void>): Promise<void> {
  const kernel = nvidiaStackHost();
  try {
    const before = kernel.sim.snapshot();
    const a = managedPassthrough("a", UUID_A, CARD_A);
    const b = managedPassthrough("b", UUID_B, CARD_B);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", b, "b")).code, 0);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", a, "a")).code, 0);
    assert.not.ok(kernel.loaded("nvidia"));
    assert.is((await runHookEvent(kernel.sim, "release", "end", b, "b")).code, 0);
    assert.is(kernel.driverOf(CARD_B), undefined);
    assert.equal(readClaims(kernel)["module:nvidia"]?.waiting, [{ address: CARD_B, driver: "nvidia", override: null }], "B's card waits in A's claim");
    const again = await runHookEvent(kernel.sim, "prepare", "begin", b, "b");
    assert.is(again.code, 0, again.stderr);
    assert.is(kernel.driverOf(CARD_B), "vfio-pci");
    await releases(kernel, a, b);
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.stateFiles(), [], "no journal, no claims ledger");
  } finally {
    kernel.sim.cleanup();
  }
}

/** libvirt's release of the domain: exit 0, nothing on stderr. */
async function releaseCleanly(kernel: GpuKernel, xml: string, name: string): Promise<void> {
  const released = await runHookEvent(kernel.sim, "release", "end", xml, name);
  assert.equal([released.code, released.stderr], [0, ""], `release of ${name}`);
}

const readClaims = (kernel: GpuKernel): Record<string, { holders: string[]; waiting: unknown[] }> =>
  kernel.sim.exists(paths.claims) ? JSON.parse(kernel.sim.read(paths.claims)).claims : {};

test("VM B restarted while VM A keeps nvidia unloaded: after both are released (A first), B's card is back on nvidia", () =>
  bRestartedWhileAKeepsNvidiaUnloaded(async (kernel, a, b) => {
    assert.equal(
      readJournal(kernel.sim, UUID_B)!.entries.map((entry) => entry.undo).filter((record) => record.action === "bind-vfio").map((record) => [record.driver, record.homeClaim]),
      [["nvidia", "module:nvidia"]],
      "B journals the driver its card waited for, and the claim it waited in",
    );
    assert.equal(readClaims(kernel)["module:nvidia"]?.waiting, [], "B's own record carries its card now");

    await releaseCleanly(kernel, a, "a");
    assert.ok(kernel.loaded("nvidia"));
    assert.is(kernel.driverOf(CARD_A), "nvidia");
    assert.is(kernel.driverOf(CARD_B), "vfio-pci", "B still runs");

    await releaseCleanly(kernel, b, "b");
    assert.is(kernel.driverOf(CARD_B), "nvidia", "B's card is left on no driver while nvidia is loaded");
  }));

test("VM B restarted while VM A keeps nvidia unloaded, released first again: its card waits in A's claim once more and comes home with nvidia", () =>
  bRestartedWhileAKeepsNvidiaUnloaded(async (kernel, a, b) => {
    await releaseCleanly(kernel, b, "b");
    assert.is(kernel.driverOf(CARD_B), undefined);
    assert.equal(readClaims(kernel)["module:nvidia"]?.waiting, [{ address: CARD_B, driver: "nvidia", override: null }], "it waits in A's claim again");
    assert.equal(readJournal(kernel.sim, UUID_B), undefined);

    await releaseCleanly(kernel, a, "a");
    assert.ok(kernel.loaded("nvidia"));
    assert.equal([kernel.driverOf(CARD_A), kernel.driverOf(CARD_B)], ["nvidia", "nvidia"]);
  }));

// A released VM's own card waits in the module claim another VM holds too,
// named for its driver in driver_override. One whose unbind from vfio-pci
// still hangs holds the device's lock, which a read or write of
// driver_override waits for: the release used to write it, hanging in D state.
test("both VMs hold nvidia's claims (NVIDIA's stack loaded by hand in between): vfio-pci's unbind of A's card hangs at A's release; the release writes nothing more to the card, and once the driver returns, recover parks it and B's release brings both cards home", async () => {
  const kernel = nvidiaStackHost();
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { vfio: { bindTimeoutSeconds: 2 } } }));
  try {
    const a = managedPassthrough("a", UUID_A, CARD_A);
    const b = managedPassthrough("b", UUID_B, CARD_B);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", b, "b")).code, 0);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", a, "a")).code, 0);
    await releaseCleanly(kernel, b, "b");
    for (const module of ["nvidia_drm", "nvidia_uvm"]) kernel.sim.exec("modprobe", [module], { timeoutMs: 10_000 });
    assert.is(kernel.driverOf(CARD_B), "nvidia", "the waiting card went to nvidia, named in its driver_override");
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", b, "b")).code, 0);
    assert.equal(readClaims(kernel)["module:nvidia"]?.holders, [UUID_A, UUID_B]);

    kernel.sim.hangWrite("/sys/bus/pci/drivers/vfio-pci/unbind", CARD_A);
    const from = kernel.sim.writes.length;
    const released = await runHookEvent(kernel.sim, "release", "end", a, "a");
    assert.is(released.code, 0);
    assert.match(released.stderr, `${CARD_A}: driver vfio-pci did not return within 2 s`);
    assert.equal(kernel.sim.writes.slice(from).filter((write) => write.path.includes(CARD_A) && write.path !== "/sys/bus/pci/drivers/vfio-pci/unbind"), [], "nothing more is written to the card");

    kernel.sim.finishHungWrites();
    const recovered = await cli(["recover", "a", "--root", kernel.sim.root], kernel.sim);
    assert.is(recovered.code, 0, recovered.stdout + recovered.stderr);
    assert.is(kernel.sim.readTrimmed(`/sys/bus/pci/devices/${CARD_A}/driver_override`), "nvidia", "it waits named for its driver");
    await releaseCleanly(kernel, b, "b");
    assert.equal([kernel.driverOf(CARD_A), kernel.driverOf(CARD_B)], ["nvidia", "nvidia"]);
    assert.equal(kernel.sim.stateFiles(), []);
  } finally {
    kernel.sim.cleanup();
  }
});

test("a card waiting in a module claim that something else put on vfio-pci (no VM's journal brings it back): the last release keeps the claim and says so; recover returns the card once it left vfio-pci", async () => {
  const kernel = nvidiaStackHost();
  try {
    const a = managedPassthrough("a", UUID_A, CARD_A);
    const b = managedPassthrough("b", UUID_B, CARD_B);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", b, "b")).code, 0);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", a, "a")).code, 0);
    assert.is((await runHookEvent(kernel.sim, "release", "end", b, "b")).code, 0);
    // virsh nodedev-detach, say: on vfio-pci without vmhook.
    kernel.sim.write(`/sys/bus/pci/devices/${CARD_B}/driver_override`, "vfio-pci");
    kernel.sim.write("/sys/bus/pci/drivers_probe", CARD_B);
    assert.is(kernel.driverOf(CARD_B), "vfio-pci");

    const released = await runHookEvent(kernel.sim, "release", "end", a, "a");
    assert.is(released.code, 0, "release never fails libvirt");
    assert.match(released.stderr, `vfio: ${CARD_B} waits for module nvidia but is on vfio-pci, and no VM's journal brings it back; once it has left vfio-pci`);
    assert.ok(kernel.loaded("nvidia"));
    assert.is(kernel.driverOf(CARD_A), "nvidia");
    assert.equal(readClaims(kernel)["module:nvidia"]?.waiting, [{ address: CARD_B, driver: "nvidia", override: null }], "the entry is not dropped");
    const journal = readJournal(kernel.sim, UUID_A)!;
    assert.equal(journal.entries.map((entry) => `${entry.state} ${entry.description}`), ["undo-failed unload module nvidia"]);

    // virsh nodedev-reattach without a probe, then vmhook recover.
    kernel.sim.write("/sys/bus/pci/drivers/vfio-pci/unbind", CARD_B);
    kernel.sim.write(`/sys/bus/pci/devices/${CARD_B}/driver_override`, "");
    const log = createLogger(kernel.sim, { echo: "none", file: false });
    const result = await undoJournal(journal, { host: kernel.sim, log, settings: DEFAULT_SETTINGS, registry }, new Deadline(kernel.sim, 10_000));
    assert.equal(result.failed, []);
    assert.is(kernel.driverOf(CARD_B), "nvidia");
    assert.equal(kernel.sim.stateFiles(), []);
  } finally {
    kernel.sim.cleanup();
  }
});

// What the first taker recorded as "original" decides what comes back: one of
// another shape is refused like the ledger's other fields, never read as "no
// drivers" (the card's driver then taken for gone) or matched by substring.
const BAD_ORIGINALS: [string, string, unknown, string[]][] = [
  ["a driver that is not a name", "module:nvidia", { drivers: [7] }, ["b"]],
  ["no drivers", "module:nvidia", null, ["b"]],
  ["its drivers as one string", "module:nvidia", { drivers: "nvidia" }, ["b"]],
  ["its modules as one string", "loaded:vfio_pci", { modules: "vfio_pci" }, ["b", "a"]],
];

for (const [what, resource, original, released] of BAD_ORIGINALS) {
  test(`a claim whose "original" has ${what} (${resource}): the release of ${released.at(-1)} refuses naming the file, the claim and "original", and keeps its entries and the claim`, async () => {
    const kernel = nvidiaStackHost();
    try {
      const vms: Record<string, [string, string]> = { a: [managedPassthrough("a", UUID_A, CARD_A), UUID_A], b: [managedPassthrough("b", UUID_B, CARD_B), UUID_B] };
      assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vms.b![0], "b")).code, 0);
      assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vms.a![0], "a")).code, 0);
      const ledger = JSON.parse(kernel.sim.read(paths.claims));
      ledger.claims[resource].original = original;
      kernel.sim.file(paths.claims, JSON.stringify(ledger));
      let stderr = "";
      for (const name of released) stderr = (await runHookEvent(kernel.sim, "release", "end", vms[name]![0], name)).stderr;
      const last = released.at(-1)!;
      assert.match(stderr, `claims ledger ${paths.claims}: claim "${resource}" has "original" ${JSON.stringify(original)}`);
      assert.not.match(stderr, "load it (modprobe)", "the fix is the ledger's, not a modprobe while another VM needs the module unloaded");
      assert.equal(JSON.parse(kernel.sim.read(paths.claims)).claims[resource]?.original, original, "the claim is left for the fix");
      assert.ok(readJournal(kernel.sim, vms[last]![1]), `${last}'s entries stay for vmhook recover`);
    } finally {
      kernel.sim.cleanup();
    }
  });
}

// ---- a hook killed while it loads vfio-pci for its VM

test("VM A's hook killed while modprobe vfio-pci runs, VM B prepared meanwhile: the modules A loaded go once the last of them is released (recover A, then release B)", async () => {
  const a = passthrough("vmA", UUID_A, CARD_A);
  const b = passthrough("vmB", UUID_B, CARD_B);
  const clean = twoNvidiaCards();
  let changes: string[];
  try {
    assert.is((await runHookEvent(clean.sim, "prepare", "begin", a, "vmA")).code, 0);
    changes = [...clean.sim.changes];
  } finally {
    clean.sim.cleanup();
  }
  const kernel = twoNvidiaCards();
  try {
    const before = kernel.sim.snapshot();
    // Killed at the change right after modprobe's helper was noted (it acts only then): modprobe goes on and loads vfio-pci.
    const noted = changes.indexOf("rename /run/vmhook/stuck/module:vfio_pci.json.tmp to /run/vmhook/stuck/module:vfio_pci.json");
    // The note's directory (made by the first note) and its temp copy come between.
    assert.is(changes.slice(0, noted).filter((change) => !/^(mkdir|create) \/run\/vmhook\//.test(change)).at(-1), "start a helper running modprobe vfio-pci ids=");
    kernel.sim.killAtChange(noted + 2);
    await runHookEvent(kernel.sim, "prepare", "begin", a, "vmA");
    assert.ok(kernel.sim.revive(), "A's hook was killed");
    assert.ok(kernel.loaded("vfio_pci"));
    const preparedB = await runHookEvent(kernel.sim, "prepare", "begin", b, "vmB");
    assert.is(preparedB.code, 0, preparedB.stderr);
    assert.is((await cli(["recover", "vmA", "--root", kernel.sim.root], kernel.sim)).code, 0);
    assert.ok(kernel.loaded("vfio_pci"), "B's card is on vfio-pci");
    await releaseCleanly(kernel, b, "vmB");
    assert.not.ok(kernel.loaded("vfio_pci"), "vfio-pci, loaded by vmhook for A and used by B, stays loaded after both are gone");
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.stateFiles(), []);
  } finally {
    kernel.sim.cleanup();
  }
});

test("VM A's hook killed after it noted rmmod nvidia's helper and before that helper acted, VM B running: A's rollback leaves no note of that helper, which has ended; it used to stay in /run/vmhook/stuck for good", async () => {
  const kernel = twoNvidiaCards();
  try {
    const before = kernel.sim.snapshot();
    const a = passthrough("vmA", UUID_A, CARD_A);
    const b = passthrough("vmB", UUID_B, CARD_B);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", b, "vmB")).code, 0);
    // rmmod's helper is noted for the module, then for each device it drives: killed before the device's, the helper never acts.
    kernel.sim.killAtChange(`create /run/vmhook/stuck/${CARD_A}.json.tmp`);
    await runHookEvent(kernel.sim, "prepare", "begin", a, "vmA");
    assert.ok(kernel.sim.revive(), "A's hook was killed");
    assert.ok(kernel.loaded("nvidia"), "rmmod never acted");
    assert.equal(kernel.sim.list("/run/vmhook/stuck"), ["module:nvidia.json"]);
    // libvirt ends the start that failed.
    for (const [op, subop] of [["stopped", "end"], ["release", "end"]]) await runHookEvent(kernel.sim, op, subop, a, "vmA");
    assert.equal(kernel.sim.list("/run/vmhook/stuck"), []);
    assert.equal(kernel.sim.stateFiles(), [`${UUID_B}.json`, "claims.json"]);
    await releaseCleanly(kernel, b, "vmB");
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.stateFiles(), []);
  } finally {
    kernel.sim.cleanup();
  }
});

// ---- a VM whose modprobe vfio-pci another VM left blocked

test("VM B's modprobe vfio-pci left blocked in the kernel: VM A's prepare is refused naming it, and leaves nothing of A's (no journal entry to recover, no claim)", async () => {
  const kernel = twoNvidiaCards();
  try {
    kernel.sim.hangProgram("modprobe", ["vfio-pci", "ids="]);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", passthrough("vmB", UUID_B, CARD_B), "vmB")).code, 1);
    const claimsBefore = readClaims(kernel);
    const prepared = await runHookEvent(kernel.sim, "prepare", "begin", passthrough("vmA", UUID_A, CARD_A), "vmA");
    assert.is(prepared.code, 1);
    assert.match(firstLine(prepared.stderr), "module vfio_pci: modprobe vfio-pci ids= did not return");
    assert.match(firstLine(prepared.stderr), "for vmB");
    assert.not.match(prepared.stderr, "could not be undone", prepared.stderr);
    assert.is(readJournal(kernel.sim, UUID_A), undefined, "A changed nothing that needs vmhook recover");
    assert.equal(readClaims(kernel), claimsBefore, "A joined no claim");
    assert.is(kernel.driverOf(CARD_A), "nvidia");
  } finally {
    kernel.sim.cleanup();
  }
});

// ---- a writer killed mid-write: its temp file goes with the file

const GPU_VM = `<domain><name>gpu</name><uuid>${UUID_A}</uuid><memory unit='GiB'>1</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio single-gpu="no"/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices>
</domain>`;

test("a hook killed while writing the claims ledger leaves claims.json.tmp: once the ledger empties, the leftover goes with it (found by CI: the stuck-driver kernel test, 2026-12-01)", async () => {
  const kernel = new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .device({ address: "0000:01:00.0", classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1 });
  try {
    const prepared = await runHookEvent(kernel.sim, "prepare", "begin", GPU_VM, "gpu");
    assert.is(prepared.code, 0, prepared.stderr);
    assert.ok(kernel.sim.stat(paths.claims), "the VM claims vfio-pci in the ledger");
    kernel.sim.file(`${paths.claims}.tmp`, '{"version": 1, "cla');
    const released = await runHookEvent(kernel.sim, "release", "end", GPU_VM, "gpu");
    assert.is(released.code, 0, released.stderr);
    assert.equal(kernel.sim.list(paths.stateDir).filter((name) => name.includes(".json")), []);
  } finally {
    kernel.sim.cleanup();
  }
});

// ---- status and doctor show the ledger: it may hold what no journal does

const ORPHAN = "0badc0de-0000-4000-8000-000000000001";

test("status and doctor: a claim whose holder has no journal left is shown and warned about, not \"no VM holds anything\"", async () => {
  const sim = new SimHost();
  try {
    ensureStateDir(sim);
    const ledger = { version: 1, claims: { "module:nvidia": { holders: [ORPHAN], original: { drivers: ["nvidia"] }, waiting: [{ address: "0000:01:00.0", driver: "nvidia" }] } } };
    fs.writeFileSync(sim.resolve(paths.claims), JSON.stringify(ledger), { mode: 0o600 });
    const status = await cli(["status", "--root", sim.root]);
    assert.is(status.code, 0);
    assert.is(
      status.stdout,
      `claim module:nvidia: held by ${ORPHAN} (no journal of it is left, so no release gives it back: vmhook recover does once it does not run); waiting: 0000:01:00.0 (nvidia)\n`,
    );
    const json = JSON.parse((await cli(["status", "--json", "--root", sim.root])).stdout);
    assert.equal(json.claims, { "module:nvidia": { holders: [{ uuid: ORPHAN, journal: false }], waiting: [{ address: "0000:01:00.0", driver: "nvidia" }] } });
    const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
    assert.equal(leftovers.map((finding) => [finding.status, finding.reason]), [["warn", `claim module:nvidia in ${paths.claims} is held by ${ORPHAN}, whose journal is gone: no release gives it back`]]);
  } finally {
    sim.cleanup();
  }
});

test("status and doctor: a claims ledger that cannot be read is said (doctor fails), never \"no VM holds anything\"", async () => {
  const sim = new SimHost();
  try {
    ensureStateDir(sim);
    fs.writeFileSync(sim.resolve(paths.claims), "{ not json", { mode: 0o600 });
    const status = await cli(["status", "--root", sim.root]);
    assert.match(status.stdout, `unreadable claims ledger: claims ledger ${paths.claims} cannot be read`);
    assert.not.match(status.stdout, "no VM holds anything");
    const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
    assert.equal(leftovers.map((finding) => finding.status), ["fail"]);
    assert.match(leftovers[0]!.reason, `claims ledger ${paths.claims} cannot be read`);
  } finally {
    sim.cleanup();
  }
});

test("status and doctor: a claim taken while the journals are listed (a prepare at work) is no orphan", async () => {
  const sim = new SimHost();
  try {
    ensureStateDir(sim);
    // The prepare writes its journal, then takes its claim: the listing saw no journal, the ledger read after it sees the claim.
    const list = sim.list.bind(sim);
    sim.list = (hostPath: string) => {
      const names = list(hostPath);
      if (hostPath === paths.stateDir && !fs.existsSync(sim.resolve(paths.claims))) {
        const ledger = { version: 1, claims: { "module:nvidia": { holders: [ORPHAN], original: { drivers: ["nvidia"] }, waiting: [] } } };
        fs.writeFileSync(sim.resolve(paths.claims), JSON.stringify(ledger), { mode: 0o600 });
      }
      return names;
    };
    const leftovers = (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers");
    assert.equal(leftovers.map((finding) => finding.status), ["ok"], JSON.stringify(leftovers));
    // What status shows it as (the CLI reads through its own host, so the race is staged on this one).
    fs.rmSync(sim.resolve(paths.claims));
    assert.equal(journalsAndClaims(sim).claims["module:nvidia"]!.holders, [{ uuid: ORPHAN, journal: "changing" }]);
  } finally {
    sim.cleanup();
  }
});

// ---- recover gives back what no journal holds: a claim whose holder's journal is gone, shared state no claim needs

/** The journal removed by hand (or lost to a crash between writes): what it held in the ledger and the shared state stays. */
const journalLost = (sim: SimHost, uuid: string) => fs.rmSync(sim.resolve(paths.journal(uuid)));

/** A host whose claims ledger holds `claims`, all of ORPHAN's, whose journal is gone. */
function orphanLedger(claims: Record<string, { original: unknown }>): { sim: SimHost; ledger: unknown } {
  const sim = new SimHost();
  ensureStateDir(sim);
  const ledger = { version: 1, claims: Object.fromEntries(Object.entries(claims).map(([resource, { original }]) => [resource, { holders: [ORPHAN], original, waiting: [] }])) };
  fs.writeFileSync(sim.resolve(paths.claims), JSON.stringify(ledger), { mode: 0o600 });
  return { sim, ledger };
}

/** libvirt's pid file of a domain `name` whose QEMU (this process, standing in) was started with `cmdline`. */
const qemuRunning = (sim: SimHost, name: string, cmdline: string[]) => sim.file(`/run/libvirt/qemu/${name}.pid`, process.pid).file(`/proc/${process.pid}/cmdline`, `${cmdline.join("\0")}\0`);

test("recover gives back the claims of a VM whose journal is gone and that does not run: nvidia loaded again, the card waiting for it back on it, nvidia-persistenced started; it used to say \"nothing to recover\"", async () => {
  const kernel = twoNvidiaCards();
  try {
    const vms = { A: passthrough("vmA", UUID_A, CARD_A), B: passthrough("vmB", UUID_B, CARD_B) };
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vms.A, "vmA")).code, 0);
    assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vms.B, "vmB")).code, 0);
    await releaseCleanly(kernel, vms.A, "vmA");
    assert.equal(readClaims(kernel)["module:nvidia"]?.waiting, [{ address: CARD_A, driver: "nvidia", override: null }], "A's card waits in B's claim");
    journalLost(kernel.sim, UUID_B);

    const { code, stdout } = await cli(["recover", "--root", kernel.sim.root], kernel.sim);
    assert.is(code, 0, stdout);
    assert.match(stdout, `claim module:nvidia of ${UUID_B} (no journal of it is left, and it does not run): given back: load module nvidia again, with the devices waiting for it, once no other VM needs it unloaded\n`);
    assert.match(stdout, `claim unit:nvidia-persistenced.service of ${UUID_B} (no journal of it is left, and it does not run): given back: start nvidia-persistenced.service again once no other VM needs it stopped\n`);
    assert.not.match(stdout, "nothing to recover");
    assert.ok(kernel.loaded("nvidia"));
    assert.is(kernel.driverOf(CARD_A), "nvidia", "A's card is home");
    assert.ok(persistenced(kernel));
    assert.equal(readClaims(kernel), {}, "no claim is left to anyone");
    assert.equal((await cli(["recover", "--root", kernel.sim.root], kernel.sim)).stdout, "nothing to recover\n", "given back once");
  } finally {
    kernel.sim.cleanup();
  }
});

test("recover leaves the claims of a VM whose journal is gone while its QEMU runs (libvirt's pid file, -uuid), and, exiting 1, when the command line of a live pid file's process cannot be read", async () => {
  const { sim, ledger } = orphanLedger({ "unit:gdm.service": { original: "active" } });
  try {
    sim.onExec("systemctl", () => assert.unreachable("nothing is started for a VM that runs or may run"));

    qemuRunning(sim, "ghost", ["qemu-system-x86_64", "-name", "guest=ghost", "-uuid", ORPHAN]);
    const running = await cli(["recover", "--root", sim.root], sim);
    assert.equal({ code: running.code, stdout: running.stdout }, { code: 0, stdout: `claim unit:gdm.service of ${ORPHAN} (no journal of it is left): left as it is: it still runs; once it stops, run vmhook recover\n` });
    const json = JSON.parse((await cli(["recover", "--json", "--root", sim.root], sim)).stdout);
    assert.equal(json.orphanClaims, [{ uuid: ORPHAN, resource: "unit:gdm.service", skipped: "running" }]);

    sim.failRead(`/proc/${process.pid}/cmdline`, "EACCES");
    const unknown = await cli(["recover", "--root", sim.root], sim);
    assert.is(unknown.code, 1);
    assert.match(unknown.stdout, `claim unit:gdm.service of ${ORPHAN} (no journal of it is left): left as it is: cannot tell whether it runs: cannot read /proc/${process.pid}/cmdline (EACCES)`);
    assert.equal(JSON.parse(sim.read(paths.claims)), ledger, "the claim stays");
  } finally {
    sim.cleanup();
  }
});

test("recover says which claim of a VM whose journal is gone it could not give back (a unit that does not start, a claim no plugin takes), keeps it, and exits 1", async () => {
  const { sim, ledger } = orphanLedger({ "unit:gdm.service": { original: "active" }, "tape:0": { original: null } });
  try {
    // libvirt's own daemon keeps driver.pid there: its process, with no -uuid, is no domain's QEMU.
    qemuRunning(sim, "driver", ["/usr/sbin/virtqemud", "--timeout", "120"]);
    sim.onExec("systemctl", (args) => (args[0] === "is-active" ? { status: 3, stdout: "inactive\n" } : { status: 1, stderr: "Job for gdm.service failed.\n" }));
    const { code, stdout } = await cli(["recover", "--root", sim.root], sim);
    assert.is(code, 1);
    assert.is(
      stdout,
      `claim tape:0 of ${ORPHAN} (no journal of it is left): not given back: no plugin of this vmhook takes claims on tape:0; bring it back by hand, then remove ${ORPHAN} from its holders in ${paths.claims}\n` +
        `claim unit:gdm.service of ${ORPHAN} (no journal of it is left, and it does not run): could not be given back (start gdm.service again once no other VM needs it stopped): systemctl start gdm.service failed: Job for gdm.service failed.; fix the cause and run vmhook recover again\n`,
    );
    assert.equal(JSON.parse(sim.read(paths.claims)), ledger, "both claims stay for the next recover");
  } finally {
    sim.cleanup();
  }
});

/** vmA prepared with <vmhook:isolate irqs="yes"> on an isolateHost whose IRQ 30 may run on every CPU. */
async function prepareWithIrqs(sim: SimHost): Promise<void> {
  sim.file("/proc/irq/default_smp_affinity", "ff").file("/proc/irq/30/smp_affinity_list", "0-7");
  const withIrqs = vmA.replace("<vmhook:isolate/>", '<vmhook:isolate irqs="yes"/>');
  assert.is((await runHookEvent(sim, "prepare", "begin", withIrqs, "vmA")).code, 0);
}

test("recover puts back isolate's saved originals that no VM's claim needs (IRQ affinities, the default IRQ mask, systemd's AllowedCPUs), and forgets them; it used to say \"nothing to recover\"", async () => {
  const { sim, units } = isolateHost();
  try {
    await prepareWithIrqs(sim);
    assert.is(sim.read("/proc/irq/30/smp_affinity_list").trim(), "0-1,4-7");
    journalLost(sim, UUID_A);

    const { code, stdout } = await cli(["recover", "--root", sim.root], sim);
    assert.is(code, 0, stdout);
    assert.match(stdout, "isolate: given back what no VM holds: put back the irq-affinity values saved before the first VM (2: /proc/irq/default_smp_affinity, /proc/irq/30/smp_affinity_list)\n");
    assert.match(stdout, "isolate: given back what no VM holds: put back the systemd-allowed-cpus values saved before the first VM (3: system.slice, user.slice, init.scope)\n");
    assert.equal([sim.read("/proc/irq/30/smp_affinity_list").trim(), sim.read("/proc/irq/default_smp_affinity").trim()], ["0-7", "ff"]);
    assert.equal(units, { "system.slice": "", "user.slice": "", "init.scope": "" });
    assert.equal(sim.stateFiles(), [], "the originals are forgotten once put back");
  } finally {
    sim.cleanup();
  }
});

test("recover leaves isolate's saved originals while a VM whose journal is gone still runs (libvirt's pid file, -uuid): its CPUs stay isolated, and it says so", async () => {
  const { sim, units } = isolateHost();
  try {
    await prepareWithIrqs(sim);
    qemuRunning(sim, "vmA", ["qemu-system-x86_64", "-uuid", UUID_A]);
    journalLost(sim, UUID_A);

    const { code, stdout } = await cli(["recover", "--root", sim.root], sim);
    assert.is(code, 0, stdout);
    assert.match(stdout, `isolate: left what no journal holds: vmA (${UUID_A}) runs with no journal of it, and may need it; once it stops, run vmhook recover\n`);
    assert.is(sim.read("/proc/irq/30/smp_affinity_list").trim(), "0-1,4-7");
    assert.equal(units, { "system.slice": "0-1,4-7", "user.slice": "0-1,4-7", "init.scope": "0-1,4-7" });
    const json = JSON.parse((await cli(["recover", "--json", "--root", sim.root], sim)).stdout);
    assert.equal(json.unheldShared, [{ plugin: "isolate", left: `vmA (${UUID_A}) runs with no journal of it, and may need it; once it stops, run vmhook recover` }]);
    // status says the same before anyone runs recover.
    const status = await cli(["status", "--root", sim.root], sim);
    assert.match(status.stdout, `isolate keeps what no VM holds (no journal claims it): vmhook recover leaves it for now (put back the irq-affinity values saved before the first VM`);
    assert.match(status.stdout, `: vmA (${UUID_A}) runs with no journal of it, and may need it; once it stops, run vmhook recover\n`);
  } finally {
    sim.cleanup();
  }
});

test("recover leaves isolate's saved originals while a VM's journal holds a claim on them", async () => {
  const { sim, units } = isolateHost();
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", vmA, "vmA")).code, 0);
    assert.is((await runHookEvent(sim, "started", "begin", vmA, "vmA")).code, 0);
    qemuRunning(sim, "vmA", ["qemu-system-x86_64", "-uuid", UUID_A]);
    const { code, stdout } = await cli(["recover", "--root", sim.root], sim);
    assert.equal({ code, stdout }, { code: 0, stdout: "vmA: still running; its changes are given back when it stops (use --force to undo now)\n" });
    assert.equal(units, { "system.slice": "0-1,4-7", "user.slice": "0-1,4-7", "init.scope": "0-1,4-7" });
  } finally {
    sim.cleanup();
  }
});

// ---- status and doctor show what recover would give back of the shared state: computed as recover does, with no lock

const IRQ_ORIGINALS = "put back the irq-affinity values saved before the first VM (2: /proc/irq/default_smp_affinity, /proc/irq/30/smp_affinity_list)";
const ALLOWED_CPUS_ORIGINALS = "put back the systemd-allowed-cpus values saved before the first VM (3: system.slice, user.slice, init.scope)";

/** vmA isolating IRQs too, prepared: isolate keeps the IRQ and AllowedCPUs originals in its shared state. */
async function isolatePrepared(): Promise<{ sim: SimHost; units: Record<string, string> }> {
  const { sim, units } = isolateHost();
  sim.file("/proc/irq/default_smp_affinity", "ff").file("/proc/irq/30/smp_affinity_list", "0-7");
  assert.is((await runHookEvent(sim, "prepare", "begin", vmA.replace("<vmhook:isolate/>", '<vmhook:isolate irqs="yes"/>'), "vmA")).code, 0);
  return { sim, units };
}

const leftoversOf = async (sim: SimHost) => (await runDoctor(sim)).host.filter((finding) => finding.check === "leftovers").map((finding) => [finding.status, finding.reason]);

test("status and doctor show isolate's saved originals that no VM's claim needs, as recover would give them back, without waiting for the host lock or changing anything; they used to show nothing", async () => {
  const { sim } = await isolatePrepared();
  const { dlopen, FFIType } = await import("bun:ffi");
  const libc = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
  try {
    journalLost(sim, UUID_A);
    // A lock taken would be waited for until this deadline, then fail.
    sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ deadlineSeconds: 1, undoDeadlineSeconds: 1 }));
    const shared = sim.read(paths.sharedState("isolate"));
    const before = sim.snapshot();
    const fd = fs.openSync(sim.resolve(paths.hostLock), "a");
    try {
      assert.is(libc.symbols.flock(fd, 2 /* LOCK_EX */), 0, "a hook of another VM holds the host lock");
      const status = await cli(["status", "--root", sim.root], sim);
      assert.equal({ code: status.code, stdout: status.stdout }, {
        code: 0,
        stdout: `isolate keeps what no VM holds (no journal claims it): vmhook recover would ${IRQ_ORIGINALS}\nisolate keeps what no VM holds (no journal claims it): vmhook recover would ${ALLOWED_CPUS_ORIGINALS}\n`,
      });
      const json = JSON.parse((await cli(["status", "--json", "--root", sim.root], sim)).stdout);
      assert.equal(json.unheldShared, [{ plugin: "isolate", recoverWould: IRQ_ORIGINALS }, { plugin: "isolate", recoverWould: ALLOWED_CPUS_ORIGINALS }]);
      assert.equal(await leftoversOf(sim), [
        ["warn", `isolate keeps what no VM holds (no journal claims it): vmhook recover would ${IRQ_ORIGINALS}`],
        ["warn", `isolate keeps what no VM holds (no journal claims it): vmhook recover would ${ALLOWED_CPUS_ORIGINALS}`],
      ]);
    } finally {
      fs.closeSync(fd);
      libc.close();
    }
    assert.equal(sim.snapshot(), before, "nothing was given back");
    assert.is(sim.read(paths.sharedState("isolate")), shared);

    assert.is((await cli(["recover", "--root", sim.root], sim)).code, 0);
    assert.is((await cli(["status", "--root", sim.root], sim)).stdout, "no VM holds anything (no journals in /run/vmhook)\n");
    assert.equal(await leftoversOf(sim), [["ok", `nothing left behind in ${paths.stateDir}`]]);
  } finally {
    sim.cleanup();
  }
});

test("status and doctor: isolate's shared state that a VM's journal claims is not shown as what no VM holds", async () => {
  const { sim } = await isolatePrepared();
  try {
    const status = await cli(["status", "--json", "--root", sim.root], sim);
    assert.equal(JSON.parse(status.stdout).unheldShared, []);
    assert.not.match((await cli(["status", "--root", sim.root], sim)).stdout, "what no VM holds");
    assert.equal((await leftoversOf(sim)).filter(([, reason]) => reason!.includes("what no VM holds")), []);
  } finally {
    sim.cleanup();
  }
});

test("status and doctor: when isolate's shared state or the journals cannot be read, they say they cannot tell what recover would give back, never nothing", async () => {
  const { sim } = await isolatePrepared();
  try {
    const journal = sim.resolve(paths.journal(UUID_A));
    const intact = fs.readFileSync(journal, "utf8");
    fs.writeFileSync(journal, "{ half a journal");
    const unreadableJournal = await cli(["status", "--root", sim.root], sim);
    assert.match(unreadableJournal.stdout, `isolate: cannot tell whether it keeps what no VM holds: journal ${paths.journal(UUID_A)} cannot be read`);
    assert.ok((await leftoversOf(sim)).some(([status, reason]) => status === "fail" && reason!.startsWith(`isolate: cannot tell whether it keeps what no VM holds: journal ${paths.journal(UUID_A)} cannot be read`)));

    fs.writeFileSync(journal, intact);
    journalLost(sim, UUID_A);
    fs.writeFileSync(sim.resolve(paths.sharedState("isolate")), "not json");
    const status = await cli(["status", "--root", sim.root], sim);
    assert.match(status.stdout, `isolate: cannot tell whether it keeps what no VM holds: shared state ${paths.sharedState("isolate")} cannot be read`);
    assert.not.match(status.stdout, "no VM holds anything");
    const json = JSON.parse((await cli(["status", "--json", "--root", sim.root], sim)).stdout);
    assert.match(json.unheldShared[0].error, `shared state ${paths.sharedState("isolate")} cannot be read`);
    const leftovers = await leftoversOf(sim);
    assert.equal(leftovers.map(([status]) => status), ["fail"]);
    assert.match(leftovers[0]![1]!, `isolate: cannot tell whether it keeps what no VM holds: shared state ${paths.sharedState("isolate")} cannot be read`);
  } finally {
    sim.cleanup();
  }
});

test("status and doctor: a release that ends while they read (originals forgotten, then its journal removed) is not shown as what no VM holds", async () => {
  const { sim } = await isolatePrepared();
  try {
    // Armed once the shared state is looked for; the release ends before the journals are listed.
    let armed = false;
    const list = sim.list.bind(sim);
    sim.list = (hostPath: string) => {
      if (hostPath === `${paths.stateDir}/shared`) armed = true;
      else if (hostPath === paths.stateDir && armed && fs.existsSync(sim.resolve(paths.journal(UUID_A)))) {
        fs.rmSync(sim.resolve(paths.sharedState("isolate")));
        journalLost(sim, UUID_A);
      }
      return list(hostPath);
    };
    const leftovers = await leftoversOf(sim);
    assert.ok(armed && !fs.existsSync(sim.resolve(paths.journal(UUID_A))), "the release ended while doctor read");
    assert.equal(leftovers.filter(([, reason]) => reason!.includes("what no VM holds")), [], JSON.stringify(leftovers));
  } finally {
    sim.cleanup();
  }
});

test.run();
