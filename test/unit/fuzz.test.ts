// Untrusted input, fuzzed: valid inputs (a domain with the metadata of every
// built-in plugin and a custom one, the host settings file, the CLI's
// validate and plan on a domain file) mutated from a seed, each checked
// against the contract: a refusal is vmhook's own error saying what is wrong
// (never a TypeError, a stack, undefined, [object Object], NaN or null the
// input did not hold), metadata refusals name the element, nothing hangs,
// what is accepted carries no path-like value into the plan, and planning
// changes nothing on the host.
// Replay: VMHOOK_FUZZ_SEED=N (printed on failure); VMHOOK_FUZZ_ROUNDS=N for a longer run.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { loadDomainPlugins } from "../../lib/config.ts";
import { parseDomain } from "../../lib/domain.ts";
import { VmhookError } from "../../lib/errors.ts";
import { paths } from "../../lib/paths.ts";
import { loadSettings } from "../../lib/settings.ts";
import { registry } from "../../plugins/index.ts";
import { cli } from "../helpers/cli.ts";
import { withCpus } from "../helpers/cpu-hosts.ts";
import { mutateJson, mutateXml, refusalProblem, seededRandom, shownInput, type Mutation } from "../helpers/fuzz.ts";
import { nvidiaDesktop } from "../helpers/gpu-kernel.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { addParent, GPU, GPU_DIR, GVT_TYPES, mdevHostdevXml, nvidiaHost, pciHostdevXml, VF } from "../helpers/mdev-kernel.ts";
import { NAT_NETWORK } from "../helpers/nft-host.ts";
import { plannedSteps } from "../helpers/plan.ts";
import type { SimHost } from "../helpers/simhost.ts";

const SEED = Number(process.env.VMHOOK_FUZZ_SEED ?? 36);
const ROUNDS = Number(process.env.VMHOOK_FUZZ_ROUNDS ?? 1);
/** No input may take longer than this to be read, loaded and planned: a regular one takes a few ms. */
const SLOW_MS = 2000;

const UUID = "b1b1b1b1-0000-4000-8000-0000000000b1";
const MDEV = "4b20d080-1b54-4048-85b3-a6a62d165c01";

/** Valid metadata of every built-in plugin (README's reference), each on its own, and a custom plugin's. */
const HOOKS = [
  `<vmhook:hugepages size="2M" node="0" timeout="5"/>`,
  `<vmhook:isolate host-cpus="0-1" workqueues="yes" irqs="no" governor="performance" required="no" allow-overlap="no"/>`,
  `<vmhook:vfio devices="0000:01:00.0,0000:01:00.1" include-slot="yes" single-gpu="no" unload-modules="none" load-modules="vfio_pci" display-manager="gdm.service"/>`,
  `<vmhook:mdev type="i915-GVTg_V5_4" parent="0000:00:02.0" uuid="${MDEV}"/>`,
  `<vmhook:vgpu type="L40S-12Q" vf="${VF}"/>`,
  `<vmhook:nosleep/>`,
  `<vmhook:forward ports="2222:22,8443:443/tcp,60000-60010/udp" hairpin="no"/>`,
  `<vmhook:plugin name="backup" target="/srv/backup"/>`,
];

/** A domain with what vmhook reads of the standard XML: memory and its backing, vCPU pins, NUMA, PCI and mdev hostdevs, a NIC. */
function domainXml(hooks: string): string {
  const hostdevs = hooks.includes("vgpu") ? [VF] : ["0000:01:00.0", "0000:01:00.1"];
  return `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory><currentMemory unit='MiB'>1024</currentMemory>
  <vcpu placement='static' cpuset='2-5'>2</vcpu>
  <memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/></hugepages></memoryBacking>
  <cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/><emulatorpin cpuset='4'/><iothreadpin iothread='1' cpuset='5'/></cputune>
  <numatune><memory mode='strict' nodeset='0'/><memnode cellid='0' mode='strict' nodeset='0'/></numatune>
  <cpu><numa><cell id='0' cpus='0-1' memory='1' unit='GiB'/></numa></cpu>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${hooks}</vmhook:hooks></metadata>
  <devices>${hostdevs.map(pciHostdevXml).join("")}${mdevHostdevXml(MDEV)}
  <interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface></devices></domain>`;
}

/** The NVIDIA desktop with 8 CPUs, huge page pools, a GVT-g parent, NVIDIA vGPU VFs, libvirt's default network and an empty plugins directory. */
function everythingHost(): SimHost {
  const sim = nvidiaHost(withCpus(nvidiaDesktop().sim.dir("/var/log").dir("/run")));
  new HugepageKernel(sim);
  addParent(sim, GPU, GPU_DIR, GVT_TYPES);
  sim.file("/run/libvirt/network/default.xml", NAT_NETWORK).dir(paths.pluginsDir);
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o755);
  return sim;
}

/** `check` on `rounds` mutations; a failure names the seed, the round, the mutation and its input. */
async function fuzz(rounds: number, mutate: (round: number) => Mutation, check: (mutation: Mutation) => Promise<void> | void): Promise<void> {
  for (let round = 0; round < rounds * ROUNDS; round++) {
    const mutation = mutate(round);
    try {
      await check(mutation);
    } catch (error) {
      const where = `VMHOOK_FUZZ_SEED=${SEED}, round ${round}, ${mutation.kind} at ${mutation.at}`;
      process.stderr.write(`fuzz: ${where}; input:\n${shownInput(mutation.input)}\n`);
      throw new assert.Assertion({ message: `${where}: ${error instanceof Error ? error.message : String(error)}`, generated: false, operator: "fuzz", expects: "", actual: "" });
    }
  }
}

/** One or two mutations of a valid input. */
function mutated(round: number, valid: (random: ReturnType<typeof seededRandom>) => string, mutate: typeof mutateXml): Mutation {
  const random = seededRandom(SEED, round);
  const first = mutate(random, valid(random));
  if (random.next() >= 0.3) return first;
  const second = mutate(random, first.input);
  return { ...second, kind: `${first.kind}, then ${second.kind}` };
}

/** The plugins' configs, with every string checked: a value that reaches a plan is one of the strict patterns' (lib/validate.ts), never a path, a control character or "..". */
async function loadChecked(sim: SimHost, xml: string): Promise<void> {
  const instances = await loadDomainPlugins(parseDomain(xml), sim, registry);
  JSON.stringify(
    instances.map((instance) => instance.config),
    (key, value: unknown) => {
      if (key !== "element" && typeof value === "string") assert.not.ok(/[/\u0000-\u001f]|\.\./.test(value), `config ${key}=${JSON.stringify(value)} was accepted`);
      return key === "element" ? undefined : value;
    },
  );
}

/** Runs `work`, which may refuse the input as the contract says and must not be slow. */
async function withinContract(mutation: Mutation, work: () => Promise<void>, onRefusal: (message: string) => void = () => {}): Promise<void> {
  const started = performance.now();
  try {
    await work();
  } catch (error) {
    if (error instanceof assert.Assertion) throw error;
    const problem = refusalProblem(error, mutation.input);
    assert.is(problem, undefined, problem);
    onRefusal((error as Error).message);
  }
  const took = performance.now() - started;
  assert.ok(took < SLOW_MS, `took ${Math.round(took)} ms`);
}

test("fuzz: each built-in plugin's metadata and a custom plugin's, mutated: refused with vmhook's own error naming the element, or loaded with no path-like value", async () => {
  const sim = everythingHost();
  try {
    await fuzz(800, (round) => {
      const random = seededRandom(SEED, round);
      const hooks = mutateXml(random, random.pick(HOOKS));
      return { ...hooks, input: domainXml(hooks.input) };
    }, (mutation) =>
      withinContract(mutation, () => loadChecked(sim, mutation.input), (message) => {
        // XML that does not parse is refused before any element is read, naming the problem.
        if (!message.includes("is not well-formed XML")) assert.ok(message.includes("<vmhook:"), `a refusal of the metadata names no <vmhook:…> element: ${message.slice(0, 500)}`);
      }),
    );
  } finally {
    sim.cleanup();
  }
});

test("fuzz: the whole domain XML (hostdev addresses, CPU lists, memory units, NUMA), mutated: refused with vmhook's own error, or planned without a refusal that says a bug; never slow; the host unchanged", async () => {
  const sim = everythingHost();
  try {
    const before = sim.snapshot();
    await fuzz(120, (round) => mutated(round, (random) => domainXml(random.pick(HOOKS)), mutateXml), (mutation) =>
      withinContract(mutation, async () => {
        await loadChecked(sim, mutation.input);
        for (const step of await plannedSteps(sim, mutation.input)) {
          const reason = step.split(" REFUSED: ")[1];
          if (reason !== undefined) assert.not.ok(["undefined", "[object Object]", "NaN"].some((bug) => reason.includes(bug) && !mutation.input.includes(bug)), `a refused step says: ${step}`);
        }
      }),
    );
    assert.equal(sim.snapshot(), before, "reading and planning changed nothing on the host");
  } finally {
    sim.cleanup();
  }
});

/** Every host setting (README's host settings; lib/settings.ts), valid. */
const SETTINGS = JSON.stringify(
  {
    deadlineSeconds: 120,
    undoDeadlineSeconds: 60,
    plugins: {
      vfio: {
        displayManagerUnits: ["gdm.service"],
        displayManagerCommand: { stop: ["rc-service", "sddm", "stop"], start: ["rc-service", "sddm", "start"], processes: ["sddm"] },
        helperServices: ["nvidia-persistenced.service"],
        stopTimeoutSeconds: 30,
        bindTimeoutSeconds: 10,
      },
      hugepages: { minFreeMiB: 2048 },
      "plugin:backup": { timeoutSeconds: 5 },
    },
  },
  null,
  1,
);

test("fuzz: the host settings file, mutated: read, or refused with vmhook's own error naming the file", async () => {
  const sim = everythingHost();
  try {
    sim.file(paths.hostConfig, SETTINGS);
    loadSettings(sim);
    await fuzz(800, (round) => mutated(round, () => SETTINGS, mutateJson), (mutation) => {
      sim.file(paths.hostConfig, mutation.input);
      try {
        loadSettings(sim);
      } catch (error) {
        const problem = refusalProblem(error, mutation.input);
        assert.is(problem, undefined, problem);
        assert.ok((error as Error).message.includes(paths.hostConfig), `names no ${paths.hostConfig}: ${(error as Error).message}`);
      }
    });
  } finally {
    sim.cleanup();
  }
});

test("fuzz: vmhook validate and plan of a mutated domain file: exit 0 or 1, every stderr line vmhook's, no stack, nothing that says a bug", async () => {
  const sim = everythingHost();
  const file = sim.resolve("/vm.xml");
  try {
    await fuzz(5, (round) => mutated(round, (random) => domainXml(random.pick(HOOKS)), mutateXml), async (mutation) => {
      fs.writeFileSync(file, mutation.input);
      for (const command of ["validate", "plan"]) {
        const { code, stdout, stderr } = await cli([command, file, "--root", sim.root], sim);
        assert.ok(code === 0 || code === 1, `vmhook ${command} exited ${code}: ${stderr}`);
        if (code === 1) assert.ok(stderr.startsWith("vmhook: ") || stdout.includes("but prepare would refuse it"), `vmhook ${command} failed without saying why: ${stderr}${stdout}`);
        for (const line of stderr.split("\n").filter(Boolean)) assert.ok(/^(vmhook: |  )/.test(line), `vmhook ${command}: a stderr line not vmhook's: ${line}`);
        const problem = refusalProblem(new VmhookError(stderr + stdout), mutation.input);
        assert.is(problem, undefined, `vmhook ${command}: ${problem}`);
      }
    });
  } finally {
    sim.cleanup();
  }
});

test.run();
