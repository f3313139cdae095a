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

test.run();
