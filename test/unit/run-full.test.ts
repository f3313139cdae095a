// /run full (ENOSPC) at every write of vmhook's state, one write after
// another, while a second VM starts or stops beside a running one: the
// journals, the claims ledger, the stuck-write notes and isolate's saved
// originals are written in one transaction. Whichever write meets the full
// file system, nothing is lost: the host is left as the first VM alone had
// it, or what is not is still journaled, and vmhook recover gives it back
// once there is room, leaving no state file of the second VM behind.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { paths } from "../../lib/paths.ts";
import { cli } from "../helpers/cli.ts";
import { NVIDIA_CARDS, twoNvidiaCards } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { SimHost } from "../helpers/simhost.ts";

const UUID_A = "3a3a3a3a-0000-4000-8000-00000000003a";
const UUID_B = "3b3b3b3b-0000-4000-8000-00000000003b";

const passthrough = (name: string, uuid: string, card: string) => {
  const [, bus, slot, fn] = /^0000:(\w\w):(\w\w)\.(\d)$/.exec(card)!;
  return `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><memory unit='GiB'>4</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev></devices></domain>`;
};

const isolated = (name: string, uuid: string, cpus: string[]) => `<domain type="kvm"><name>${name}</name><uuid>${uuid}</uuid><memory unit="MiB">512</memory>
  <vcpu>${cpus.length}</vcpu><cputune>${cpus.map((cpu, vcpu) => `<vcpupin vcpu="${vcpu}" cpuset="${cpu}"/>`).join("")}</cputune>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata></domain>`;

/** A host, the two VMs' XML, and what of it a snapshot leaves out (systemd's AllowedCPUs, kept by the fake systemctl). */
interface Scenario {
  sim: SimHost;
  a: string;
  b: string;
  extra: () => unknown;
}

/** Two NVIDIA cards, one a VM: the nvidia module is claimed in the ledger, rmmod and unbinds are noted as stuck writes while they run. */
function cards(): Scenario {
  const kernel = twoNvidiaCards();
  const [first, second] = NVIDIA_CARDS;
  return { sim: kernel.sim, a: passthrough("a", UUID_A, first), b: passthrough("b", UUID_B, second), extra: () => ({}) };
}

/** An 8-CPU systemd host: the first isolating VM saves the host's originals in /run/vmhook/shared/isolate.json. */
function cpus(): Scenario {
  const units: Record<string, string> = { "system.slice": "", "user.slice": "", "init.scope": "" };
  const sim = new SimHost().dir("/var/log").file("/proc/1/comm", "systemd");
  sim.file("/sys/devices/system/cpu/present", "0-7").file("/sys/devices/system/cpu/online", "0-7").file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu memory");
  sim.onExec("systemctl", (args) => {
    if (args[0] === "show") return { stdout: `AllowedCPUs=${units[args[3]!] ?? ""}\n` };
    if (args[0] === "set-property") units[args[2]!] = args[3]!.replace(/^AllowedCPUs=/, "");
    return {};
  });
  return { sim, a: isolated("a", UUID_A, ["2", "3"]), b: isolated("b", UUID_B, ["4", "5"]), extra: () => ({ ...units }) };
}

/** The host and vmhook's state files (their content, the ledger's and originals' included; journals by their entries). */
function state({ sim, extra }: Scenario): unknown {
  const files = Object.fromEntries(sim.stateFiles().map((file) => [file, JSON.parse(sim.read(`${paths.stateDir}/${file}`)).entries ?? sim.read(`${paths.stateDir}/${file}`)]));
  return { host: sim.snapshot(), extra: extra(), files };
}

const lifecycle = async (sim: SimHost, xml: string, name: string, events: [string, string][]) => {
  for (const [op, subop] of events) assert.is((await runHookEvent(sim, op, subop, xml, name)).code, 0, `${op} of ${name}`);
};
const STARTS: [string, string][] = [["prepare", "begin"], ["start", "begin"], ["started", "begin"]];

for (const [what, scenario] of [["two passed-through cards", cards], ["two isolating VMs", cpus]] as const) {
  for (const event of ["prepare", "release"] as const) {
    test(`/run full from each state write of the second VM's ${event} on, ${what}: the host is as the first VM alone had it once vmhook recover has run with room again, and no state of the second VM is left`, async () => {
      let reached = true;
      for (let failFrom = 1; reached; failFrom++) {
        const s = scenario();
        const { sim, a, b } = s;
        try {
          const before = state(s);
          await lifecycle(sim, a, "a", STARTS);
          const withA = state(s);
          if (event === "release") await lifecycle(sim, b, "b", STARTS);
          let writes = 0;
          const createFile = sim.createFile.bind(sim);
          sim.createFile = (file: string, text: string, mode?: number) => {
            if (file.startsWith(paths.stateDir) && ++writes >= failFrom) sim.failWrite(file, "ENOSPC");
            createFile(file, text, mode);
          };
          const outcome = await runHookEvent(sim, event, event === "prepare" ? "begin" : "end", b, "b");
          sim.createFile = createFile;
          sim.clearFailures();
          // The event made fewer writes: every one of them has failed in turn.
          reached = writes >= failFrom;
          if (!reached) continue;
          const at = `failing from write ${failFrom} of ${writes}`;
          assert.is(outcome.code, event === "prepare" ? 1 : 0, `${at}: ${outcome.stderr}`);
          if (outcome.stderr) assert.match(outcome.stderr, "ENOSPC", at);
          const recovered = await cli(["recover", UUID_B, "--root", sim.root], sim);
          assert.is(recovered.code, 0, `${at}: ${recovered.stdout}${recovered.stderr}`);
          assert.equal(state(s), withA, at);
          await lifecycle(sim, a, "a", [["release", "end"]]);
          assert.equal(state(s), before, at);
        } finally {
          sim.cleanup();
        }
      }
    });
  }
}

/**
 * The words of a prepare of b that failed: vmhook recover advised exactly when
 * something is left for it (a change not undone, a journal listing any), and
 * that named. What was left: nothing (rolled back, or nothing done), a change, or a journal listing changes given back.
 */
function assertRollbackWords(s: Scenario, stderr: string, withA: unknown, at: string): "nothing" | "rolled back" | "change" | "journal" {
  const kept = s.sim.stateFiles().includes(`${UUID_B}.json`);
  if (kept) {
    assert.match(stderr, /(run|with) vmhook recover b/, `${at}: ${stderr}`);
    assert.match(stderr, /not undone: |still lists changes already given back/, `${at}: names what is held: ${stderr}`);
    return stderr.includes("not undone: ") ? "change" : "journal";
  }
  assert.equal(state(s), withA, `${at}: no journal, so nothing of b may be left`);
  assert.not.match(stderr, "vmhook recover", `${at}: ${stderr}`);
  // Refused at its first journal write, it changed nothing and rolls nothing back; a rollback says what it did.
  if (!stderr.includes("the host was left as it was")) return "nothing";
  assert.match(stderr, /the host was left as it was \(\d+ change\(s\) undone\), so there is nothing to recover/, `${at}: ${stderr}`);
  return "rolled back";
}

for (const [what, scenario] of [["two passed-through cards", cards], ["two isolating VMs", cpus]] as const) {
  for (const mode of ["from", "only", "journal"] as const) {
    const how = { from: "/run full from it on", only: "that write alone", journal: "b's journal alone unwritable and unremovable from it on" }[mode];
    test(`a prepare of the second VM failing at each state write in turn (${how}), ${what}: the error advises vmhook recover exactly when something is still held, and names it; a start rolled back whole says the host is as it was and there is nothing to recover`, async () => {
      let reached = true;
      const left: string[] = [];
      for (let failAt = 1; reached; failAt++) {
        const s = scenario();
        const { sim, a, b } = s;
        try {
          await lifecycle(sim, a, "a", STARTS);
          const withA = state(s);
          let writes = 0;
          const createFile = sim.createFile.bind(sim);
          sim.createFile = (file: string, text: string, mode_?: number) => {
            if (file.startsWith(paths.stateDir)) {
              ++writes;
              if (mode === "journal" && writes >= failAt) sim.failWrite(`${paths.journal(UUID_B)}.tmp`, "EIO").failChange(paths.journal(UUID_B), "EIO");
              else if (mode === "only" ? writes === failAt : writes >= failAt) sim.failWrite(file, "ENOSPC");
              else if (mode === "only") sim.clearFailures();
            }
            createFile(file, text, mode_);
          };
          const outcome = await runHookEvent(sim, "prepare", "begin", b, "b");
          sim.createFile = createFile;
          sim.clearFailures();
          reached = writes >= failAt;
          if (!reached) continue;
          const at = `failing ${mode} write ${failAt} of ${writes}`;
          assert.is(outcome.code, 1, `${at}: ${outcome.stderr}`);
          left.push(assertRollbackWords(s, outcome.stderr, withA, at));
        } finally {
          sim.cleanup();
        }
      }
      // Each kind of words was checked: a single failed write leaves nothing (the rollback's own writes go through); /run full
      // keeps a change whose undo needs a write; a journal the rollback could neither write nor remove, that journal.
      if (mode === "only") assert.ok(left.includes("rolled back") && left.every((kept) => kept === "nothing" || kept === "rolled back"), `every start rolled back whole: ${left}`);
      else assert.ok(left.includes(mode === "from" ? "change" : "journal"), `${left}`);
    });
  }
}

test.run();
