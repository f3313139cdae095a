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
import { systemdHost } from "../helpers/cpu-hosts.ts";
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

/** A host, the two VMs' XML, what of it a snapshot leaves out (systemd's AllowedCPUs, kept by the fake systemctl), and the state directory below /run/vmhook the first VM's prepare makes. */
interface Scenario {
  sim: SimHost;
  a: string;
  b: string;
  extra: () => unknown;
  stateSubdir: string;
}

/** Two NVIDIA cards, one a VM: the nvidia module is claimed in the ledger, rmmod and unbinds are noted as stuck writes while they run. */
function cards(): Scenario {
  const kernel = twoNvidiaCards();
  const [first, second] = NVIDIA_CARDS;
  return { sim: kernel.sim, a: passthrough("a", UUID_A, first), b: passthrough("b", UUID_B, second), extra: () => ({}), stateSubdir: paths.stuckWrites };
}

/** An 8-CPU systemd host: the first isolating VM saves the host's originals in /run/vmhook/shared/isolate.json. */
function cpus(): Scenario {
  const { sim, units } = systemdHost();
  return { sim, a: isolated("a", UUID_A, ["2", "3"]), b: isolated("b", UUID_B, ["4", "5"]), extra: () => ({ ...units }), stateSubdir: `${paths.stateDir}/shared` };
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
  const kept = listsAny(state(s), `${UUID_B}.json`);
  if (kept) {
    assert.match(stderr, /(run|with) vmhook recover b/, `${at}: ${stderr}`);
    assert.match(stderr, /not undone: |still lists changes already given back or never made/, `${at}: names what is held: ${stderr}`);
    return stderr.includes("not undone: ") ? "change" : "journal";
  }
  // A journal of b that /run would not let go of, listing no change (its first step's was never written, nor applied), holds nothing.
  assert.equal(withoutEmptyJournals(state(s)), withA, `${at}: no journal listing a change, so nothing of b may be left`);
  assert.not.match(stderr, "vmhook recover", `${at}: ${stderr}`);
  // Refused at its first journal write, it changed nothing and rolls nothing back; a rollback says what it did.
  if (!stderr.includes("the host was left as it was")) return "nothing";
  assert.match(stderr, /the host was left as it was \(\d+ change\(s\) undone(, and \d+ unfinished step\(s\)[^)]*)?\), so there is nothing to recover/, `${at}: ${stderr}`);
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

type State = { host: unknown; extra: unknown; files: Record<string, unknown> };
/** Whether the state file is a journal listing a change. */
const listsAny = (st: unknown, file: string) => {
  const entries = (st as State).files[file];
  return Array.isArray(entries) && entries.length > 0;
};
const withoutEmptyJournals = (st: unknown) => {
  const { files, ...rest } = st as State;
  return { ...rest, files: Object.fromEntries(Object.entries(files).filter(([, entries]) => !(Array.isArray(entries) && entries.length === 0))) };
};

/** The host and which state files there are, whatever they say. */
const held = (st: unknown) => {
  const { host, extra, files } = st as State;
  return { host, extra, files: Object.keys(files) };
};

/** What the first line of a refusal says to do for each errno injected below. */
const FIXES: Record<string, string> = {
  ENOSPC: "(ENOSPC: the file system is full); vmhook records every change there before it makes it; free space in /run (df -h /run/vmhook, df -i /run/vmhook)",
  EROFS: "(EROFS); its file system is mounted read-only (findmnt -T /run/vmhook): remount it read-write",
  EMFILE: "(EMFILE); vmhook reached its limit of open files, which the hook inherits from libvirt's daemon: raise LimitNOFILE= of its service",
};

/**
 * Where open(2) or mkdir(2) of vmhook's own files fails: the VM whose event
 * meets it (the first on a host vmhook has not been used on, or the second
 * beside the first, running), the file, and its errno. A lock file already
 * there opens read-only whatever a full or read-only /run says (EMFILE alone
 * fails it), so those errnos meet a lock file where it is made.
 */
const OPEN_FAILURES: { vm: "first" | "second"; event: "prepare" | "release"; file: (s: Scenario) => string; codes: string[] }[] = [
  { vm: "first", event: "prepare", file: () => paths.stateDir, codes: ["ENOSPC"] },
  { vm: "first", event: "prepare", file: (s) => s.stateSubdir, codes: ["ENOSPC"] },
  { vm: "first", event: "prepare", file: () => paths.hostLock, codes: ["ENOSPC", "EMFILE", "EROFS"] },
  { vm: "second", event: "prepare", file: () => paths.domainLock(UUID_B), codes: ["ENOSPC", "EMFILE", "EROFS"] },
  { vm: "second", event: "prepare", file: () => paths.hostLock, codes: ["EMFILE"] },
  { vm: "second", event: "release", file: () => paths.domainLock(UUID_B), codes: ["EMFILE"] },
  { vm: "second", event: "release", file: () => paths.hostLock, codes: ["EMFILE"] },
];

for (const [what, scenario] of [["two passed-through cards", cards], ["two isolating VMs", cpus]] as const) {
  for (const { vm, event, file, codes } of OPEN_FAILURES) {
    for (const code of codes) {
      test(`${file(scenario())} cannot be made or opened (${code}) at the ${vm} VM's ${event}, ${what}: the event is refused naming the file, the errno and the fix; vmhook recover, with the file system as it should be, leaves the host as before the VM started`, async () => {
        const s = scenario();
        const { sim } = s;
        try {
          // The host as the event finds it; a host vmhook has not been used on has no /run/vmhook yet.
          if (vm === "first") sim.remove(paths.stateDir);
          const before = state(s);
          const [xml, name, uuid] = vm === "first" ? [s.a, "a", UUID_A] : [s.b, "b", UUID_B];
          if (vm === "second") await lifecycle(sim, s.a, "a", STARTS);
          const beforeVm = state(s);
          if (event === "release") await lifecycle(sim, xml, name, STARTS);
          const beforeEvent = state(s);
          sim.failChange(file(s), code);
          const outcome = await runHookEvent(sim, event, event === "prepare" ? "begin" : "end", xml, name);
          sim.clearFailures();
          assert.is(outcome.code, event === "prepare" ? 1 : 0, outcome.stderr);
          const said = event === "prepare" ? outcome.stderr.split("\n")[0]! : outcome.stderr;
          assert.match(said, `${file(s)} ${FIXES[code]}`);
          // A prepare refused leaves the host as it found it; a release refused keeps all it holds for vmhook recover (its journal says what it could not undo).
          if (event === "prepare") assert.equal(state(s), beforeVm);
          else assert.equal(held(state(s)), held(beforeEvent));
          const recovered = await cli(["recover", uuid, "--root", sim.root], sim);
          assert.is(recovered.code, 0, `${recovered.stdout}${recovered.stderr}`);
          assert.equal(state(s), beforeVm);
          if (vm === "second") await lifecycle(sim, s.a, "a", [["release", "end"]]);
          assert.equal(state(s), before);
        } finally {
          sim.cleanup();
        }
      });
    }
  }

  test(`the log cannot be opened (EROFS) at every event of the second VM, ${what}: each event does its work all the same and says once, last, that it is missing from the log, with the fix`, async () => {
    const s = scenario();
    const { sim } = s;
    try {
      const before = state(s);
      await lifecycle(sim, s.a, "a", STARTS);
      const withA = state(s);
      const logged = sim.read(paths.log);
      sim.failChange(paths.log, "EROFS");
      const warning = `vmhook: warn: this run is missing from vmhook's log: ${paths.log} cannot be written (EROFS); its file system is mounted read-only (findmnt -T /var/log): remount it read-write, then try again\n`;
      for (const [op, subop] of [...STARTS, ["release", "end"] as [string, string]]) {
        const outcome = await runHookEvent(sim, op, subop, s.b, "b");
        // An event that logs nothing (start, started of some plugins) has nothing missing from the log.
        assert.equal(outcome, { code: 0, stderr: op === "prepare" || op === "release" || outcome.stderr ? warning : "" }, `${op} ${subop}`);
        if (op === "prepare") assert.ok(sim.stateFiles().includes(`${UUID_B}.json`), "prepare did its work: the second VM's journal is there");
      }
      assert.is(sim.read(paths.log), logged, "no line reached the log");
      assert.equal(state(s), withA, "release gave back what prepare took");
      sim.clearFailures();
      await lifecycle(sim, s.a, "a", [["release", "end"]]);
      assert.equal(state(s), before);
    } finally {
      sim.cleanup();
    }
  });
}

test.run();
