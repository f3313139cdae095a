// The host policy (/etc/vmhook/policy.json): what domain metadata may ask
// for. Every refusal goes through the built binary as validate, plan and the
// prepare and migrate hooks, each naming the value, the policy key and the file, with the
// host left exactly as it was; a policy that allows the request makes the
// same domain work. The storage guard refuses a controller the host uses,
// whatever the policy says.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { storageInUse } from "../../lib/blockdev.ts";
import { networkInUse } from "../../lib/netdev.ts";
import { loadPolicy } from "../../lib/policy.ts";
import { loadSettings } from "../../lib/settings.ts";
import { bootConsoleCpus } from "../../plugins/isolate/host-minimum.ts";
import { GpuKernel } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { desktopHost } from "../helpers/pci-hosts.ts";
import type { SimHost } from "../helpers/simhost.ts";
import { addDeviceMapper, addDisk, addZfsMember, mountsAndSwaps } from "../helpers/storage.ts";

const REPO = path.resolve(import.meta.dirname, "../..");
const BINARY = path.join(REPO, "dist/vmhook");
const UUID = "5e5e5e5e-0000-4000-8000-00000000005e";
const POLICY = "/etc/vmhook/policy.json";
const GPU = "0000:01:00.0";
const NVME = "0000:02:00.0";
const IS_ROOT = process.getuid?.() === 0;
/** The owner check needs chown: as another user these tests are reported skipped, not passed. */
const asRoot = IS_ROOT ? test : test.skip;
if (!IS_ROOT) console.log("policy.test.ts: not root, so the owner check (chown) cannot be tested; 2 tests skipped");

if (!fs.existsSync(BINARY)) {
  const build = spawnSync("npm", ["run", "--silent", "build"], { cwd: REPO, stdio: "inherit" });
  if (build.status !== 0) throw new Error("npm run build failed");
}

/** A PCI <hostdev>; `model`: the driver its <driver model> names. */
function hostdev(address: string, model?: string): string {
  const [, bus, slot, fn] = /^0000:(\w\w):(\w\w)\.(\d)$/.exec(address)!;
  const driver = model === undefined ? "" : `<driver model='${model}'/>`;
  return `<hostdev mode='subsystem' type='pci' managed='no'>${driver}<source><address domain='0x0000' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev>`;
}

interface DomainOptions {
  hostdevs?: string[];
  memoryGiB?: number;
  /** <driver model> of a hostdev, by its address. */
  driverModels?: Record<string, string>;
}

function domainXml(element: string, options: DomainOptions = {}): string {
  return `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>${options.memoryGiB ?? 4}</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${element}</vmhook:hooks></metadata>
  <devices>${(options.hostdevs ?? [GPU]).map((address) => hostdev(address, options.driverModels?.[address])).join("")}</devices></domain>`;
}

/** The desktop (GPU 01:00.0 + audio in group 1, NVMe 02:00.0 in group 2), CPUs 0-7 on two NUMA nodes. */
function host(policy?: object): SimHost {
  const sim = desktopHost();
  sim.file("/sys/devices/system/node/node0/cpulist", "0-3").file("/sys/devices/system/node/node1/cpulist", "4-7").file("/sys/devices/system/cpu/present", "0-7");
  if (policy) sim.file(POLICY, JSON.stringify(policy));
  return sim;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

type Mode = "validate" | "plan" | "prepare" | "migrate";
const HOOK_MODES: Mode[] = ["prepare", "migrate"];

/** The binary as the CLI (vmhook validate|plan -) or as libvirt's hook (qemu vm prepare|migrate begin -), the domain XML on stdin. */
function binary(sim: SimHost, mode: Mode, xml: string): Run {
  const links = fs.mkdtempSync(path.join(sim.root, "..", "vmhook-policy-bin-"));
  try {
    const program = path.join(links, HOOK_MODES.includes(mode) ? "qemu" : "vmhook");
    fs.symlinkSync(BINARY, program);
    const args = HOOK_MODES.includes(mode) ? ["vm", mode, "begin", "-"] : [mode, "-"];
    const result = spawnSync(program, args, { input: xml, encoding: "utf8", timeout: 20_000, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: sim.root } });
    return { code: result.status, stdout: result.stdout, stderr: result.stderr };
  } finally {
    fs.rmSync(links, { recursive: true, force: true });
  }
}

const firstLine = (text: string) => text.split("\n")[0]!;

/** validate, plan, prepare and migrate (the incoming XML) all refuse with `expected` on the first line, and the host is as it was. */
function assertRefusedEverywhere(sim: SimHost, xml: string, expected: string[]): void {
  const before = sim.snapshot();
  for (const mode of ["validate", "plan", "prepare", "migrate"] as const) {
    const run = binary(sim, mode, xml);
    assert.is(run.code, 1, `${mode}: ${run.stderr}`);
    if (HOOK_MODES.includes(mode)) assert.is(run.stdout, "", `${mode}: hook mode prints nothing on stdout`);
    for (const part of expected) assert.ok(firstLine(run.stderr).includes(part), `${mode}: expected "${part}" in: ${firstLine(run.stderr)}`);
    assert.equal(sim.snapshot(), before, `${mode} left the host as it was`);
    assert.equal(sim.stateFiles(), [], `${mode} left no journal`);
  }
}

function assertAllowed(sim: SimHost, xml: string, modes: ("validate" | "plan")[] = ["validate", "plan"]): void {
  for (const mode of modes) {
    const run = binary(sim, mode, xml);
    assert.is(run.code, 0, `${mode}: ${run.stderr}`);
  }
}

const hint = (key: string) => `${key}" in ${POLICY}`;

interface Case {
  name: string;
  element: string;
  options?: DomainOptions;
  /** A policy that tightens the defaults for this case. */
  policy?: object;
  refused: string[];
  /** A policy under which the same domain is allowed. */
  allow: object;
  /** Where the allowed domain is tried; default validate and plan. */
  allowedIn?: ("validate" | "plan")[];
}

/** Planned, forward's prepare checks the guest's NAT network and nft's ruleset (forward.test.ts simulates them); this host has neither. */
const FORWARD_ALLOWED_IN: Case["allowedIn"] = ["validate"];

const CASES: Case[] = [
  {
    name: "vfio: a device that is not the domain's (nor in its slot or IOMMU group)",
    element: `<vmhook:vfio devices="${GPU},${NVME}"/>`,
    refused: [`devices: ${NVME} is not one of the domain's PCI <hostdev>s`, `add "${NVME}" to "${hint("vfio.devices")}`],
    allow: { vfio: { devices: [NVME] } },
  },
  {
    name: "vfio: a device of a domain without any hostdev",
    element: `<vmhook:vfio devices="${NVME}" single-gpu="yes"/>`,
    options: { hostdevs: [] },
    refused: [`devices: ${NVME} is not one of the domain's`, hint("vfio.devices")],
    allow: { vfio: { devices: [NVME] } },
  },
  {
    name: "vfio: a unit that is no display manager",
    element: `<vmhook:vfio display-manager="sshd.service,gdm.service"/>`,
    refused: ["display-manager: sshd.service is not a display manager or GPU helper", `add "sshd.service" to "${hint("vfio.units")}`],
    allow: { vfio: { units: ["sshd.service"] } },
  },
  {
    name: "vfio: a unit named without its suffix",
    element: `<vmhook:vfio display-manager="systemd-journald"/>`,
    refused: ["display-manager: systemd-journald.service is not", `add "systemd-journald.service" to "${hint("vfio.units")}`],
    allow: { vfio: { units: ["systemd-journald.service"] } },
  },
  {
    name: "vfio: a module to load that is no GPU or passthrough module",
    element: `<vmhook:vfio load-modules="kvmfr,dccp"/>`,
    refused: ["load-modules: dccp is not a GPU, VFIO or passthrough helper module", `add "dccp" to "${hint("vfio.modules")}`],
    allow: { vfio: { modules: ["dccp"] } },
  },
  {
    name: "vfio: a module to unload that is no GPU module",
    element: `<vmhook:vfio unload-modules="nvidia_drm,n_hdlc"/>`,
    refused: ["unload-modules: n_hdlc is not", `add "n_hdlc" to "${hint("vfio.modules")}`],
    allow: { vfio: { modules: ["n_hdl*"] } },
  },
  {
    // prepare would load the module <driver model> names and bind the device to its driver, as for load-modules=.
    name: "vfio: a <hostdev><driver model> that is no VFIO driver",
    element: `<vmhook:vfio/>`,
    options: { driverModels: { [GPU]: "dccp" } },
    refused: [`${GPU}'s <hostdev><driver model='dccp'>: dccp is not a VFIO driver`, `add "dccp" to "${hint("vfio.modules")}`],
    allow: { vfio: { modules: ["dccp"] } },
    allowedIn: ["validate"],
  },
  {
    name: "isolate: the host squeezed onto the boot console's CPU",
    element: `<vmhook:isolate host-cpus="0"/>`,
    policy: { isolate: { everyNumaNode: false } },
    refused: [`host-cpus="0" leaves the host only CPU 0, the CPU that takes the boot console's IRQs`, `set "isolate.allowBootConsoleCpuAlone": true in ${POLICY}`],
    allow: { isolate: { everyNumaNode: false, allowBootConsoleCpuAlone: true } },
  },
  {
    name: "isolate: a NUMA node left without a host CPU",
    element: `<vmhook:isolate host-cpus="0-1"/>`,
    refused: [`host-cpus="0-1" leaves the host only CPU 0-1, none on NUMA node 1 (CPUs 4-7)`, `set "isolate.everyNumaNode": false in ${POLICY}`],
    allow: { isolate: { everyNumaNode: false } },
  },
  {
    name: "isolate: fewer host CPUs than the policy's minimum",
    element: `<vmhook:isolate host-cpus="0,4"/>`,
    policy: { isolate: { minHostCpus: 4 } },
    refused: [`host-cpus="0,4" leaves the host only CPU 0,4, but the host policy keeps at least 4 CPU(s)`, `lower "isolate.minHostCpus" in ${POLICY}`],
    allow: { isolate: { minHostCpus: 2 } },
  },
  {
    name: "hugepages: more than the policy's cap",
    element: `<vmhook:hugepages/>`,
    policy: { hugepages: { maxMiBPerVm: 2048 } },
    refused: ["the VM asks for 4096 MiB of huge pages, more than the host policy's cap, 2048 MiB", hint("hugepages.maxMiBPerVm")],
    allow: { hugepages: { maxMiBPerVm: 4096 } },
  },
  {
    name: "forward: a privileged host port",
    element: `<vmhook:forward guest="192.168.122.10" ports="2222:22,80/tcp"/>`,
    refused: [`ports: host port tcp 80 is not one the host policy lets VMs claim (allowed: 1024-65535)`, `add 80 to "${hint("forward.hostPorts")}`],
    allow: { forward: { hostPorts: [80, "1024-65535"] } },
    allowedIn: FORWARD_ALLOWED_IN,
  },
  {
    name: "forward: a range beyond the policy's ports",
    element: `<vmhook:forward guest="192.168.122.10" ports="60000-60010/udp"/>`,
    policy: { forward: { hostPorts: [2222] } },
    refused: [`ports: host port udp 60000-60010 is not one the host policy lets VMs claim (allowed: 2222)`, `add "60000-60010" to "${hint("forward.hostPorts")}`],
    allow: { forward: { hostPorts: [2222, "60000-60010"] } },
    allowedIn: FORWARD_ALLOWED_IN,
  },
  {
    name: "forward: a range the policy's entries cover only together (a port, a range, overlapping), named by the ports it leaves out",
    element: `<vmhook:forward guest="192.168.122.10" ports="2222-2224"/>`,
    policy: { forward: { hostPorts: [2222, 2223] } },
    refused: [`ports: host port tcp 2222-2224 is not one the host policy lets VMs claim (allowed: 2222, 2223)`, `add 2224 to "${hint("forward.hostPorts")}`],
    allow: { forward: { hostPorts: [2224, "2000-2222", "2222-2223"] } },
    allowedIn: FORWARD_ALLOWED_IN,
  },
  {
    name: "custom plugin: one the policy does not list",
    element: `<vmhook:plugin name="hello"/>`,
    policy: { plugins: ["looking-glass"] },
    refused: [`<vmhook:plugin name="hello">: the host policy does not let domains use plugin hello`, `add "hello" to "${hint("plugins")}`],
    allow: { plugins: ["looking-glass", "hello"] },
  },
];

for (const each of CASES) {
  test(`refused: ${each.name}; validate, plan and prepare name value, key and file, and change nothing; the policy allowing it lets it through`, () => {
    const sim = host(each.policy);
    try {
      if (each.element.includes("plugin name")) installHelloPlugin(sim);
      const xml = domainXml(each.element, each.options);
      assertRefusedEverywhere(sim, xml, each.refused);
      sim.file(POLICY, JSON.stringify(each.allow));
      assertAllowed(sim, xml, each.allowedIn);
    } finally {
      sim.cleanup();
    }
  });
}

/** An executable plugin that changes nothing. */
function installHelloPlugin(sim: SimHost): void {
  sim.file("/etc/vmhook/plugins.d/hello", "#!/bin/sh\nexit 0\n");
  fs.chmodSync(sim.resolve("/etc/vmhook/plugins.d/hello"), 0o755);
}

test("the defaults allow what passthrough needs: the domain's own GPU, its slot, display managers, GPU modules, a sane isolate", () => {
  const sim = host();
  try {
    assertAllowed(sim, domainXml(`<vmhook:vfio display-manager="gdm,sddm.service" unload-modules="nvidia_drm,nvidia" load-modules="kvmfr,vendor-reset,vfio_pci"/>`));
    assertAllowed(sim, domainXml(`<vmhook:vfio devices="${GPU},0000:01:00.1"/>`));
    assertAllowed(sim, domainXml(`<vmhook:isolate host-cpus="0,4"/>`));
  } finally {
    sim.cleanup();
  }
});

// ---- the policy file itself

/**
 * One of root's files (`file`, read as `what`): refused everywhere while root
 * does not own it, others can write it or a directory above it, or it is a
 * symlink, each time naming the fix; allowed again once it is root's alone.
 */
function assertHeldToRootsRules(sim: SimHost, file: string, what: string, because: string, xml: string): void {
  const real = sim.resolve(file);
  fs.chownSync(real, 1000, 1000);
  assertRefusedEverywhere(sim, xml, [`refusing ${what}: ${file} is owned by uid 1000, not root`, `run chown root:root ${file}`]);
  fs.chownSync(real, 0, 0);
  fs.chmodSync(real, 0o666);
  assertRefusedEverywhere(sim, xml, [`${file} has mode 0666: group or others can write it, and ${because}; run chmod go-w ${file}`]);
  fs.chmodSync(real, 0o644);
  fs.chmodSync(sim.resolve("/etc/vmhook"), 0o777);
  assertRefusedEverywhere(sim, xml, ["/etc/vmhook has mode 0777", "run chmod go-w /etc/vmhook"]);
  // Nor taken away from there: the defaults would apply in its place, whoever removed it.
  fs.renameSync(real, sim.resolve("/moved-away"));
  // The hook reads the settings first, validate and plan the policy: whichever they read first is refused, the other is missing too.
  assertRefusedEverywhere(sim, xml, [".json (its defaults apply, so nobody but root may be able to remove it), and /etc/vmhook has mode 0777", "run chmod go-w /etc/vmhook"]);
  assert.throws(() => (file === POLICY ? loadPolicy : loadSettings)(sim), (error: Error) => error.message.startsWith(`refusing ${what}: there is no ${file} (`));
  fs.renameSync(sim.resolve("/moved-away"), real);
  fs.chmodSync(sim.resolve("/etc/vmhook"), 0o755);
  fs.renameSync(real, `${real}.real`);
  fs.symlinkSync(`${real}.real`, real);
  assertRefusedEverywhere(sim, xml, [`${file} is a symlink`, "put the real file there"]);
  fs.rmSync(real);
  fs.renameSync(`${real}.real`, real);
  assertAllowed(sim, xml);
}

asRoot("a policy file that root does not own, that others can write, or under a writable directory is refused; the error names the fix", () => {
  const sim = host({ vfio: { units: ["sshd.service"] } });
  try {
    assertHeldToRootsRules(sim, POLICY, "the host policy", "it decides what VMs may take from the host", domainXml(`<vmhook:vfio display-manager="sshd.service"/>`));
  } finally {
    sim.cleanup();
  }
});

asRoot("the host settings file (it names commands and units root runs) is held to the policy file's rules: root's, not writable by others, no symlink", () => {
  const sim = host();
  try {
    // A display manager command for hosts without systemd: what vmhook runs as root to stop and start it.
    sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { vfio: { displayManagerCommand: { stop: ["/bin/true"], start: ["/home/alice/x"], processes: [] } } } }));
    fs.chmodSync(sim.resolve("/etc/vmhook/vmhook.json"), 0o666);
    const doctor = spawnSync(BINARY, ["doctor", "--json"], { encoding: "utf8", timeout: 20_000, env: { PATH: "/usr/bin:/bin", LC_ALL: "C", VMHOOK_ROOT: sim.root } });
    const finding = (JSON.parse(doctor.stdout).host as { check: string; status: string; reason: string }[]).find((each) => each.check === "host settings")!;
    assert.equal([finding.status, finding.reason.split(":").slice(0, 2).join(":")], ["fail", "refusing the host settings: /etc/vmhook/vmhook.json has mode 0666"]);
    fs.chmodSync(sim.resolve("/etc/vmhook/vmhook.json"), 0o644);
    assertHeldToRootsRules(sim, "/etc/vmhook/vmhook.json", "the host settings", "it names commands and units root runs", domainXml(`<vmhook:vfio/>`));
  } finally {
    sim.cleanup();
  }
});

asRoot("without a policy file the defaults apply only where nobody but root could have removed it: /etc/vmhook, or /etc while it is missing", () => {
  const sim = host();
  try {
    const xml = domainXml(`<vmhook:vfio/>`);
    fs.rmSync(sim.resolve("/etc/vmhook"), { recursive: true, force: true });
    assertAllowed(sim, xml);
    fs.chmodSync(sim.resolve("/etc"), 0o775);
    assertRefusedEverywhere(sim, xml, ["(its defaults apply, so nobody but root may be able to remove it), and /etc has mode 0775", "run chmod go-w /etc"]);
    assert.throws(() => loadPolicy(sim), (error: Error) => error.message.startsWith(`refusing the host policy: there is no ${POLICY} (`));
    fs.chmodSync(sim.resolve("/etc"), 0o755);
    sim.dir("/etc/vmhook");
    fs.chownSync(sim.resolve("/etc/vmhook"), 1000, 1000);
    assertRefusedEverywhere(sim, xml, ["(its defaults apply, so nobody but root may be able to remove it), and /etc/vmhook is owned by uid 1000, not root", "run chown root:root /etc/vmhook"]);
    fs.chownSync(sim.resolve("/etc/vmhook"), 0, 0);
    assertAllowed(sim, xml);
  } finally {
    sim.cleanup();
  }
});

test("a policy file with bad JSON, an unknown key or a bad value is refused naming the key", () => {
  const xml = domainXml(`<vmhook:vfio/>`);
  const bad: [string, string][] = [
    ["{ not json", `${POLICY} is not valid JSON`],
    [`{"vfio": {"unit": ["a.service"]}}`, `${POLICY}: "vfio.unit" is ["a.service"]; there is no such key; vfio takes "devices", "units", "modules"`],
    [`{"vfio": {"devices": ["02:00.0"]}}`, `"vfio.devices" is ["02:00.0"]; it must be a list like ["0000:03:00.0"]`],
    [`{"vfio": {"modules": ["../x"]}}`, `"vfio.modules" is ["../x"]`],
    [`{"isolate": {"minHostCpus": 0}}`, `"isolate.minHostCpus" is 0; it must be a whole number from 1 to 8192`],
    // JSON.parse reads 1e400 as Infinity, which JSON.stringify writes null: the message must not say the file holds null.
    [`{"isolate": {"minHostCpus": 1e400}}`, `"isolate.minHostCpus" is 1.8e308 or more; it must be a whole number from 1 to 8192`],
    [`{"hugepages": {"maxMiBPerVm": "lots"}}`, `"hugepages.maxMiBPerVm" is "lots"`],
    [`{"plugins": "all"}`, `"plugins" is "all"; it must be a list like ["looking-glass"]`],
    [`{"forward": {"hostPorts": "22"}}`, `"forward.hostPorts" is "22"; it must be a list of ports and ranges from 1 to 65535`],
    [`{"forward": {"hostPorts": ["1-70000"]}}`, `"forward.hostPorts" is ["1-70000"]; it must be a list of ports and ranges`],
    [`{"modules": []}`, `"modules" is []; there is no such key; the policy has "vfio", "isolate", "hugepages", "forward", "plugins"`],
  ];
  for (const [text, message] of bad) {
    const sim = host();
    try {
      sim.file(POLICY, text);
      assertRefusedEverywhere(sim, xml, [message]);
    } finally {
      sim.cleanup();
    }
  }
});

test("forward: allowedHostPorts left in vmhook.json (where it used to be) is refused, naming the policy key it moved to", () => {
  const sim = host();
  try {
    sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { forward: { allowedHostPorts: [80] } } }));
    const xml = domainXml(`<vmhook:forward guest="192.168.122.10" ports="2222:22"/>`);
    assertRefusedEverywhere(sim, xml, [`"allowedHostPorts"`, `now "forward.hostPorts" in ${POLICY}: move the list there`]);
  } finally {
    sim.cleanup();
  }
});

test("doctor shows the policy in force, and fails on one the hook would refuse", () => {
  const sim = host({ vfio: { units: ["mydm.service"] }, plugins: ["hello"] });
  try {
    const doctor = () => spawnSync(BINARY, ["doctor", "--json"], { encoding: "utf8", timeout: 20_000, env: { PATH: "/usr/bin:/bin", LC_ALL: "C", VMHOOK_ROOT: sim.root } });
    const finding = () => (JSON.parse(doctor().stdout).host as { check: string; status: string; reason: string }[]).find((each) => each.check === "host policy")!;
    assert.equal(finding().status, "ok");
    assert.match(finding().reason, `from ${POLICY}; vfio devices: the domain's own PCI hostdevs, their slots and IOMMU groups; units: display managers and GPU helpers and mydm.service`);
    assert.match(finding().reason, "custom plugins: hello");
    sim.file(POLICY, "[]");
    assert.equal(finding().status, "fail");
    assert.match(finding().reason, `${POLICY}: "(the whole file)" is []`);
  } finally {
    sim.cleanup();
  }
});

// ---- allowed by policy, the same domain really runs (simulated kernel, in-process hook)

/** One AMD GPU for the VM, a USB controller in its own group, a display manager with its own name, an extra module. */
function workstation(): GpuKernel {
  return new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "xhci_pci", driver: "xhci_hcd", loaded: true })
    .module({ name: "dccp" })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, bootVga: true, nodes: ["card0"] })
    .device({ address: "0000:05:00.0", classCode: "0x0c0330", vendor: "0x1b21", nativeDriver: "xhci_hcd", group: 7 })
    .unit({ name: "mydm.service", active: true, processes: { 500: ["mydm", ["/dev/null"]] } });
}

test("prepare: a unit, a module and an extra device refused by default work once the policy allows them; release puts everything back", async () => {
  const kernel = workstation();
  const xml = domainXml(`<vmhook:vfio devices="${GPU},0000:05:00.0" single-gpu="yes" display-manager="mydm.service" load-modules="dccp"/>`);
  const before = kernel.sim.snapshot();
  const refused = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(refused.code, 1);
  assert.match(firstLine(refused.stderr), `devices: 0000:05:00.0 is not one of the domain's PCI <hostdev>s`);
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.execs, [], "nothing ran");

  kernel.sim.file(POLICY, JSON.stringify({ vfio: { devices: ["0000:05:00.0"], units: ["mydm.service"], modules: ["dccp"] } }));
  const withPolicy = kernel.sim.snapshot();
  const prepare = await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is(kernel.driverOf("0000:05:00.0"), "vfio-pci");
  assert.not.ok(kernel.units.get("mydm.service")!.active);
  assert.ok(kernel.loaded("dccp"));
  const release = await runHookEvent(kernel.sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(kernel.sim.snapshot(), withPolicy);
  kernel.sim.cleanup();
});

// ---- the storage guard: never the host's own disks, whatever the policy says

/** The desktop's NVMe (02:00.0) with three partitions, the policy allowing it. */
function nvmeHost(): SimHost {
  const sim = host({ vfio: { devices: [NVME] } });
  addDisk(sim, { controller: NVME, via: "nvme/nvme0", disk: "nvme0n1", major: 259, partitions: ["nvme0n1p1", "nvme0n1p2", "nvme0n1p3"] });
  return sim;
}

const STORAGE_CASES: { name: string; setup: (sim: SimHost) => void; use: string }[] = [
  { name: "a mounted filesystem", setup: (sim) => mountsAndSwaps(sim, [["8:1", "/dev/sda1", "/"], ["259:1", "/dev/nvme0n1p1", "/home"]]), use: "nvme0n1p1 is mounted on /home" },
  { name: "swap", setup: (sim) => mountsAndSwaps(sim, [["8:1", "/dev/sda1", "/"]], ["/dev/nvme0n1p2"]), use: "nvme0n1p2 is swap" },
  {
    name: "an LVM member",
    setup: (sim) => {
      mountsAndSwaps(sim, [["254:0", "/dev/mapper/vg0-root", "/"]]);
      addDeviceMapper(sim, "dm-0", "vg0-root", "LVM-abcdef", "nvme0n1p3");
    },
    use: "nvme0n1p3 is part of LVM volume vg0-root (dm-0)",
  },
  {
    name: "the second device of a btrfs filesystem (mountinfo names only the first)",
    setup: (sim) => {
      mountsAndSwaps(sim, [["0:27", "/dev/sda1", "/"]]);
      sim.link("/sys/fs/btrfs/0f0e0d0c-0000-4000-8000-000000000001/devices/nvme0n1p2", "../../../../devices/pci0000:00/0000:02:00.0/nvme/nvme0/nvme0n1/nvme0n1p2");
    },
    use: "nvme0n1p2 is part of a mounted btrfs filesystem",
  },
  {
    name: "a member of an imported ZFS pool (ZFS holds its vdevs with no sysfs holder; mountinfo names datasets)",
    setup: (sim) => {
      mountsAndSwaps(sim, [["0:45", "rpool/ROOT/debian", "/"], ["0:46", "fast\\040pool/vms", "/srv/vms"]]);
      addZfsMember(sim, "259:3", "fast pool", true);
    },
    use: "nvme0n1p3 is part of imported ZFS pool fast pool",
  },
  { name: "the root filesystem found by its source (btrfs shows 0:NN)", setup: (sim) => mountsAndSwaps(sim, [["0:27", "/dev/nvme0n1p2", "/"]]), use: "nvme0n1p2 is mounted on /" },
];

for (const each of STORAGE_CASES) {
  test(`storage guard: a controller behind ${each.name} is refused whatever the policy says (validate, plan, prepare; host unchanged)`, () => {
    const sim = nvmeHost();
    try {
      each.setup(sim);
      assertRefusedEverywhere(sim, domainXml(`<vmhook:vfio devices="${NVME}"/>`), [`${NVME} carries storage the host uses (disk nvme0n1: ${each.use})`, "whatever the policy says"]);
      // Also when the domain lists the controller as its own hostdev.
      assertRefusedEverywhere(sim, domainXml(`<vmhook:vfio/>`, { hostdevs: [NVME] }), [`disk nvme0n1: ${each.use}`]);
    } finally {
      sim.cleanup();
    }
  });
}

test("storage guard: an idle disk may go; an unreadable /proc/swaps refuses", () => {
  const sim = nvmeHost();
  try {
    mountsAndSwaps(sim, [["8:1", "/dev/sda1", "/"]]);
    assert.equal(storageInUse(sim, NVME), []);
    assertAllowed(sim, domainXml(`<vmhook:vfio devices="${NVME}"/>`));
    sim.remove("/proc/swaps");
    assertRefusedEverywhere(sim, domainXml(`<vmhook:vfio devices="${NVME}"/>`), [`refusing to hand over ${NVME}: cannot tell whether nvme0n1 behind ${NVME} is in use: /proc/swaps cannot be read`]);
  } finally {
    sim.cleanup();
  }
});

test("storage guard: a member of a ZFS pool not imported may go (a NAS VM imports it); with the zfs module loaded, a disk whose udev record cannot be read refuses", () => {
  const sim = nvmeHost();
  try {
    mountsAndSwaps(sim, [["8:1", "/dev/sda1", "/"]]);
    addZfsMember(sim, "259:3", "tank", false);
    assert.equal(storageInUse(sim, NVME), []);
    sim.remove("/run/udev/data/b259:1");
    assert.throws(() => storageInUse(sim, NVME), /cannot tell whether nvme0n1p1 behind 0000:02:00.0 is part of an imported ZFS pool: \/run\/udev\/data\/b259:1 cannot be read/);
  } finally {
    sim.cleanup();
  }
});

test("storage guard: SATA disks behind an AHCI controller, NVMe heads under native multipath, a dm-crypt holder", () => {
  const sim = desktopHost();
  try {
    addDisk(sim, { controller: "0000:00:17.0", via: "ata1/host0/target0:0:0/0:0:0:0/block", disk: "sda", major: 8, partitions: ["sda1"] });
    // Native multipath: the disk the host mounts (nvme0n1) lives under nvme-subsystem; the controller holds the path node nvme0c0n1.
    sim.dir(`/sys/devices/pci0000:00/${NVME}/nvme/nvme0/nvme0c0n1`).link(`/sys/bus/pci/devices/${NVME}/nvme`, `../../../../devices/pci0000:00/${NVME}/nvme`);
    sim.file("/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/dev", "259:0").link("/sys/class/block/nvme0n1", "../../devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1");
    mountsAndSwaps(sim, [["254:1", "/dev/mapper/cryptroot", "/"], ["259:0", "/dev/nvme0n1", "/srv"]]);
    addDeviceMapper(sim, "dm-1", "cryptroot", "CRYPT-LUKS2-0123", "sda1");
    assert.equal(storageInUse(sim, "0000:00:17.0"), ["disk sda: sda1 is part of dm-crypt mapping cryptroot (dm-1)"]);
    assert.equal(storageInUse(sim, NVME), ["disk nvme0n1: nvme0n1 is mounted on /srv"]);
    assert.equal(storageInUse(sim, GPU), []);
  } finally {
    sim.cleanup();
  }
});

// ---- the network guard: never the host's only way out, whatever the policy says

const NIC = "0000:03:00.0";

/** The desktop with an Intel NIC (03:00.0, igb, enp3s0, group 3) and the routes the host has: [interface, destination] pairs, "default" or a subnet. */
function nicHost(routes: { ipv4: string[]; ipv6?: string[] }, uppers: Record<string, string[]> = {}): SimHost {
  const sim = host({ vfio: { devices: [NIC] } });
  sim.file(`/sys/bus/pci/devices/${NIC}/class`, "0x020000").file(`/sys/bus/pci/devices/${NIC}/vendor`, "0x8086").file(`/sys/bus/pci/devices/${NIC}/device`, "0x1533");
  sim.dir("/sys/bus/pci/drivers/igb").link(`/sys/bus/pci/devices/${NIC}/driver`, "../../../../bus/pci/drivers/igb");
  sim.link(`/sys/bus/pci/devices/${NIC}/iommu_group`, "../../../../kernel/iommu_groups/3").link(`/sys/kernel/iommu_groups/3/devices/${NIC}`, `../../../../devices/pci0000:00/${NIC}`);
  // As the kernel has them: /sys/class/net/NAME links to the interface under its device, or under virtual/.
  const parents: Record<string, string> = { enp3s0: `pci0000:00/${NIC}`, wlp4s0: "pci0000:00/0000:00:1c.0/0000:04:00.0" };
  for (const iface of new Set(["lo", "enp3s0", "wlp4s0", ...Object.keys(uppers), ...Object.values(uppers).flat()])) addInterface(sim, iface, parents[iface] ?? "virtual");
  // The kernel links each lower device to its uppers (bridge or bond master, VLAN): upper_NAME.
  for (const [lower, names] of Object.entries(uppers)) for (const upper of names) sim.link(`/sys/class/net/${lower}/upper_${upper}`, `../${upper}`);
  const v4 = routes.ipv4.map((iface) => `${iface}\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0`);
  sim.file("/proc/net/route", ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT", "enp3s0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0", ...v4].join("\n"));
  const zero = "0".repeat(32);
  // Every host lists lo's unreachable default (a reject route), which leads nowhere.
  const v6 = [`${zero} 00 ${zero} 00 ${zero} ffffffff 00000001 00000000 00200200       lo`, ...(routes.ipv6 ?? []).map((iface) => `${zero} 00 ${zero} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ${iface.padStart(8)}`)];
  sim.file("/proc/net/ipv6_route", v6.join("\n"));
  mountsAndSwaps(sim, [["8:1", "/dev/sda1", "/"]]);
  return sim;
}

/** A network interface at /sys/devices/PARENT/net/NAME, linked from /sys/class/net. */
function addInterface(sim: SimHost, iface: string, parent: string): void {
  sim.dir(`/sys/devices/${parent}/net/${iface}`).link(`/sys/class/net/${iface}`, `../../devices/${parent}/net/${iface}`);
}

const NETWORK_CASES: { name: string; routes: { ipv4: string[]; ipv6?: string[] }; uppers?: Record<string, string[]>; use: string }[] = [
  { name: "the host's only IPv4 default route", routes: { ipv4: ["enp3s0"] }, use: "enp3s0 carries the host's only IPv4 default route" },
  { name: "a bridge port whose bridge carries the only default route", routes: { ipv4: ["br0"] }, uppers: { enp3s0: ["br0"] }, use: "br0, which runs on enp3s0, carries the host's only IPv4 default route" },
  { name: "a bond in a bridge (enp3s0 → bond0 → br0)", routes: { ipv4: ["br0"] }, uppers: { enp3s0: ["bond0"], bond0: ["br0"] }, use: "br0, which runs on enp3s0, carries the host's only IPv4 default route" },
  { name: "the only IPv6 default route (IPv4 leaves through wifi)", routes: { ipv4: ["wlp4s0"], ipv6: ["enp3s0"] }, use: "enp3s0 carries the host's only IPv6 default route" },
];

for (const each of NETWORK_CASES) {
  test(`network guard: a NIC with ${each.name} is refused whatever the policy says (validate, plan, prepare; host unchanged)`, () => {
    const sim = nicHost(each.routes, each.uppers);
    try {
      assertRefusedEverywhere(sim, domainXml(`<vmhook:vfio devices="${NIC}"/>`), [`${NIC} carries the host's network (${each.use}): unbinding its driver takes the interface away`, "whatever the policy says", "stop routing through enp3s0"]);
      // Also when the domain lists the NIC as its own hostdev.
      assertRefusedEverywhere(sim, domainXml(`<vmhook:vfio/>`, { hostdevs: [NIC] }), [`${NIC} carries the host's network (${each.use})`]);
    } finally {
      sim.cleanup();
    }
  });
}

test("network guard: a NIC the host keeps another default route beside (NetworkManager's DHCP on both) may go, as may one with no default route; without /proc/net/route it refuses", () => {
  const sim = nicHost({ ipv4: ["enp3s0", "wlp4s0"], ipv6: ["enp3s0", "wlp4s0"] });
  try {
    assertAllowed(sim, domainXml(`<vmhook:vfio devices="${NIC}"/>`));
    sim.file("/proc/net/route", "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\nwlp4s0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0");
    sim.remove("/proc/net/ipv6_route");
    assertAllowed(sim, domainXml(`<vmhook:vfio devices="${NIC}"/>`));
    sim.remove("/proc/net/route");
    assertRefusedEverywhere(sim, domainXml(`<vmhook:vfio devices="${NIC}"/>`), [`refusing to hand over ${NIC}: cannot tell whether the host routes through enp3s0: /proc/net/route cannot be read`]);
  } finally {
    sim.cleanup();
  }
});

test("network guard: an unreachable or blackhole default route (a VPN kill switch's, ip route add unreachable default metric 9999) leads nowhere: beside it the NIC still carries the only way out and is refused", () => {
  const sim = nicHost({ ipv4: ["enp3s0"] });
  try {
    const header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT";
    const viaNic = "enp3s0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0";
    // /proc/net/route shows a route without a device as "*": unreachable and prohibit flagged RTF_REJECT, blackhole not.
    for (const [kind, flags] of [["unreachable", "0201"], ["blackhole", "0001"]]) {
      sim.file("/proc/net/route", [header, viaNic, `*\t00000000\t00000000\t${flags}\t0\t0\t9999\t00000000\t0\t0\t0`].join("\n"));
      assert.equal(networkInUse(sim, [NIC]).map(({ use }) => use), ["enp3s0 carries the host's only IPv4 default route"], kind);
    }
  } finally {
    sim.cleanup();
  }
});

test("network guard: two NICs each with a default route (a dual-port card): either may go alone, both together leave the host none and are refused", () => {
  const sim = nicHost({ ipv4: ["enp3s0", "enp3s0f1"] });
  try {
    const second = "0000:03:00.1";
    addInterface(sim, "enp3s0f1", `pci0000:00/${second}`);
    assert.equal(networkInUse(sim, [NIC]), []);
    assert.equal(networkInUse(sim, [second]), []);
    assert.equal(
      networkInUse(sim, [NIC, second]).map(({ address, use }) => `${address}: ${use}`),
      [`${NIC}: enp3s0 carries the host's only IPv4 default route`, `${second}: enp3s0f1 carries the host's only IPv4 default route`],
    );
  } finally {
    sim.cleanup();
  }
});

test("network guard: an interface below the device, not in its own net/ (a USB adapter on the USB controller handed over, virtio-net's under virtio0), carrying the only default route is refused", () => {
  const sim = nicHost({ ipv4: ["enx00e04c680001"] });
  try {
    const xhci = "0000:00:14.0";
    addInterface(sim, "enx00e04c680001", `pci0000:00/${xhci}/usb2/2-1/2-1:1.0`);
    assert.equal(networkInUse(sim, [xhci]).map(({ address, use }) => `${address}: ${use}`), [`${xhci}: enx00e04c680001 carries the host's only IPv4 default route`]);
    assert.equal(networkInUse(sim, [NIC]), []);
    const virtio = "0000:00:03.0";
    sim.file("/proc/net/route", `Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\nens3\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0`);
    addInterface(sim, "ens3", `pci0000:00/${virtio}/virtio0`);
    assert.equal(networkInUse(sim, [virtio]).map(({ use }) => use), ["ens3 carries the host's only IPv4 default route"]);
  } finally {
    sim.cleanup();
  }
});

test("the boot console's CPU: from the serial and keyboard IRQs' effective affinity, else CPU 0", () => {
  const sim = desktopHost();
  try {
    assert.equal(bootConsoleCpus(sim), [0]);
    sim.file("/proc/interrupts", "            CPU0       CPU1\n   1:          0          9   IO-APIC    1-edge      i8042\n   4:          0        120   IO-APIC    4-edge      ttyS0\n  16:          5          0   IO-APIC   16-fasteoi   ehci_hcd:usb1\n");
    sim.file("/proc/irq/1/effective_affinity_list", "1").file("/proc/irq/4/effective_affinity_list", "1").file("/proc/irq/16/effective_affinity_list", "0");
    assert.equal(bootConsoleCpus(sim), [1]);
  } finally {
    sim.cleanup();
  }
});

test.run();
