// The built binary (dist/vmhook), run as libvirt runs it: a link named qemu
// (or any name inside qemu.d/), only PATH and LC_ALL in the environment, the
// domain XML on stdin, VMHOOK_ROOT pointing at a test tree. Hook mode must
// never print on stdout; failures put the cause on the first stderr line.
// Under any other name it is the CLI.
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { wallStepEnv } from "../helpers/wall-clock-shim.ts";
import { undoneText } from "../../lib/transaction.ts";

const REPO = path.resolve(import.meta.dirname, "../..");
const BINARY = path.join(REPO, "dist/vmhook");
const UUID = "d0d0d0d0-0000-4000-8000-0000000000d0";
const POOL = "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

if (!fs.existsSync(BINARY)) {
  console.error(`binary.test.ts: ${BINARY} is missing; building it (npm run build)`);
  const build = spawnSync("npm", ["run", "--silent", "build"], { cwd: REPO, stdio: "inherit" });
  if (build.status !== 0) throw new Error("npm run build failed");
}

const domain = (element = "<vmhook:hugepages/>", name = "vm") => `<domain type='kvm'><name>${name}</name><uuid>${UUID}</uuid>
  <memory unit='GiB'>1</memory><memoryBacking><hugepages/></memoryBacking>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${element}</vmhook:hooks></metadata></domain>`;
const NO_METADATA = `<domain type='kvm'><name>plain</name><uuid>e0e0e0e0-0000-4000-8000-0000000000e0</uuid><memory unit='GiB'>1</memory></domain>`;

/** A temporary tree: links to the binary under several names, and a host root with a 2M pool and meminfo. */
function tree() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bin-"));
  const link = (name: string) => {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.symlinkSync(BINARY, path.join(dir, name));
    return path.join(dir, name);
  };
  const root = path.join(dir, "root");
  for (const sub of ["var/log", "run/libvirt/qemu", path.dirname(POOL)]) fs.mkdirSync(path.join(root, sub), { recursive: true });
  fs.writeFileSync(path.join(root, POOL), "0\n");
  // The fit check reads the free memory: 16 GiB, 8 GiB available (floor 1 GiB); the host policy caps a VM at MemTotal minus the floor.
  fs.mkdirSync(path.join(root, "proc"));
  fs.writeFileSync(path.join(root, "proc/meminfo"), "MemTotal: 16777216 kB\nMemFree: 8388608 kB\nMemAvailable: 8388608 kB\nHugepagesize: 2048 kB\n");
  // libvirt's hugetlbfs mount, as systemd mounts it
  fs.mkdirSync(path.join(root, "proc/self"));
  fs.writeFileSync(path.join(root, "proc/self/mountinfo"), "40 22 0:40 / /dev/hugepages rw,relatime shared:20 - hugetlbfs hugetlbfs rw,pagesize=2M\n");
  const pool = () => Number(fs.readFileSync(path.join(root, POOL), "utf8"));
  const journal = path.join(root, "run/vmhook", `${UUID}.json`);
  return { dir, root, link, pool, journal, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program with libvirt's environment (and VMHOOK_ROOT); `input` is stdin's text, or a file descriptor to be its stdin. */
function run(program: string, args: string[], input: string | number, root: string): Run {
  const stdin = typeof input === "string" ? { input } : { stdio: [input, "pipe", "pipe"] as ("pipe" | number)[] };
  const result = spawnSync(program, args, { ...stdin, encoding: "utf8", timeout: 20_000, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: root } });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The same, without waiting: for hooks of several domains running at once. */
function runAsync(program: string, args: string[], input: string, root: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: root } });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input);
  });
}

/** plugins.d with spin.mjs (`plugin`: its default export) and the hook's deadlines: a hook its watchdog must end. */
function installSpin(root: string, plugin: string, deadlineSeconds: number, undoDeadlineSeconds = deadlineSeconds): void {
  fs.mkdirSync(path.join(root, "etc/vmhook/plugins.d"), { recursive: true });
  fs.writeFileSync(path.join(root, "etc/vmhook/vmhook.json"), JSON.stringify({ deadlineSeconds, undoDeadlineSeconds }));
  fs.writeFileSync(path.join(root, "etc/vmhook/plugins.d/spin.mjs"), `export default ${plugin};\n`, { mode: 0o644 });
}

const firstLine = (text: string) => text.split("\n")[0]!;

const ALL_EVENTS = [
  ["prepare", "begin"],
  ["start", "begin"],
  ["started", "begin"],
  ["stopped", "end"],
  ["release", "end"],
  ["migrate", "begin"],
  ["restore", "begin"],
  ["reconnect", "begin"],
  ["attach", "begin"],
  ["teleport", "now"],
];

test("npm run demo (README's first command): every step it shows is of the simulated desktop, not this machine, and succeeds, ending with prepare's plan", () => {
  const demo = spawnSync(process.execPath, [path.join(REPO, "examples/demo.ts")], { encoding: "utf8", timeout: 120_000 });
  assert.is(demo.status, 0, demo.stderr);
  assert.not.match(demo.stdout, "(exit ", `a step of the demo failed:\n${demo.stdout}`);
  // Checked against the simulated desktop: nothing about this machine's pools, memory or journals.
  assert.match(demo.stdout, /win11-gpu\.xml: ok; win11 runs hugepages, isolate, vfio\n\n\$ vmhook iommu/);
  assert.match(demo.stdout, "prepare of win11 would take");
  assert.match(demo.stdout, "stop display-manager.service");
  // One NUMA node: doctor's free memory of node 0 is the host's, as a reader of the demo expects.
  const nodeFree = /free memory node 0 (\d+M)/.exec(demo.stdout)?.[1];
  const hostFree = /fit in the free memory on the host \((\d+M)\)/.exec(demo.stdout)?.[1];
  assert.ok(nodeFree && hostFree, demo.stdout);
  assert.is(nodeFree, hostFree, "the simulated desktop's node 0 and /proc/meminfo disagree on its free memory");
});

test("hook mode, domain without metadata: every event exits 0 with empty stdout and stderr", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    for (const [op, subop] of ALL_EVENTS) {
      assert.equal(run(qemu, ["plain", op!, subop!, "-"], NO_METADATA, t.root), { code: 0, stdout: "", stderr: "" }, `${op} ${subop}`);
    }
    assert.equal(run(qemu, [], "", t.root), { code: 0, stdout: "", stderr: "" }, "no arguments, empty stdin");
  } finally {
    t.cleanup();
  }
});

test("hook mode, hugepages: a whole VM life grows the pool by its need and gives it back; stdout stays empty", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    fs.writeFileSync(path.join(t.root, POOL), "8\n");
    for (const [op, subop] of [["migrate", "begin"], ["restore", "begin"], ["prepare", "begin"], ["start", "begin"], ["started", "begin"], ["reconnect", "begin"]]) {
      assert.equal(run(qemu, ["vm", op!, subop!, "-"], domain(), t.root), { code: 0, stdout: "", stderr: "" }, `${op} ${subop}`);
    }
    assert.is(t.pool(), 520);
    assert.ok(fs.existsSync(t.journal));
    for (const [op, subop, extra] of [["stopped", "end", "-"], ["release", "end", "shutdown"]]) {
      assert.equal(run(qemu, ["vm", op!, subop!, extra!], domain(), t.root), { code: 0, stdout: "", stderr: "" }, `${op} ${subop}`);
    }
    assert.is(t.pool(), 8);
    assert.not.ok(fs.existsSync(t.journal));
    assert.match(fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8"), "[vm prepare begin] hugepages: grow the 2M pool by 512 pages: done");
  } finally {
    t.cleanup();
  }
});

test("hook mode, several domains at once: the host lock keeps every pool delta", async () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const vms = ["1", "2", "3", "4"].map((n) => ({ name: `vm${n}`, xml: domain().replace("<name>vm</name>", `<name>vm${n}</name>`).replace(UUID, UUID.replace(/0$/, n)) }));
    const all = (op: string, subop: string) => Promise.all(vms.map((vm) => runAsync(qemu, [vm.name, op, subop, "-"], vm.xml, t.root)));
    for (const outcome of await all("prepare", "begin")) assert.equal(outcome, { code: 0, stdout: "", stderr: "" });
    assert.is(t.pool(), 4 * 512);
    assert.is(fs.readdirSync(path.join(t.root, "run/vmhook")).filter((f) => f.endsWith(".json")).length, 4);
    for (const outcome of await all("release", "end")) assert.equal(outcome, { code: 0, stdout: "", stderr: "" });
    assert.is(t.pool(), 0);
  } finally {
    t.cleanup();
  }
});

test("hook mode, two domains' prepares naming one VF at the same moment: the second waits for the host lock, then is refused naming the first, even though the driver (a plain file here) takes a rewrite", async () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const vf = "0000:41:00.4";
    const device = path.join(t.root, "sys/devices/pci0000:40", vf);
    fs.mkdirSync(path.join(device, "nvidia"), { recursive: true });
    fs.writeFileSync(path.join(device, "nvidia/creatable_vgpu_types"), "ID    : vGPU Name\n1433 : NVIDIA L40S-12Q\n");
    fs.writeFileSync(path.join(device, "nvidia/current_vgpu_type"), "0\n");
    fs.mkdirSync(path.join(t.root, "sys/bus/pci/drivers/nvidia"), { recursive: true });
    fs.symlinkSync("../../../bus/pci/drivers/nvidia", path.join(device, "driver"));
    fs.mkdirSync(path.join(t.root, "sys/bus/pci/devices"), { recursive: true });
    fs.symlinkSync(`../../../devices/pci0000:40/${vf}`, path.join(t.root, "sys/bus/pci/devices", vf));
    // vm's first plugin says when it applies (every plugin of vm planned by then, the VF read free), then takes a while.
    const applying = path.join(t.dir, "applying");
    fs.mkdirSync(path.join(t.root, "etc/vmhook/plugins.d"), { recursive: true });
    const slow = `import * as fs from "node:fs";\nexport default { name: "slow", summary: "slow", parse: () => ({}), async prepare(ctx) { await ctx.step("wait", { action: "wait" }, () => { fs.writeFileSync(${JSON.stringify(applying)}, ""); ctx.host.sleep(1500); }); }, undo() {} };\n`;
    fs.writeFileSync(path.join(t.root, "etc/vmhook/plugins.d/slow.mjs"), slow, { mode: 0o644 });
    const xml = (name: string, uuid: string, plugins: string) => `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><memory unit='GiB'>1</memory>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x41' slot='0x00' function='0x4'/></source></hostdev></devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${plugins}<vmhook:vgpu vf="${vf}" type="1433"/></vmhook:hooks></metadata></domain>`;
    const first = runAsync(qemu, ["vm", "prepare", "begin", "-"], xml("vm", UUID, '<vmhook:plugin name="slow"/>'), t.root);
    for (let waited = 0; !fs.existsSync(applying); waited += 10) {
      assert.ok(waited < 20_000, "vm's prepare never applied");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const second = await runAsync(qemu, ["vm2", "prepare", "begin", "-"], xml("vm2", UUID.replace(/0$/, "2"), ""), t.root);
    assert.equal(await first, { code: 0, stdout: "", stderr: "" });
    assert.is(second.code, 1, second.stderr);
    assert.is(firstLine(second.stderr), `vmhook: <vmhook:vgpu vf="${vf}" type="1433">: ${vf} carries the vGPU type 1433 vmhook set for domain vm, which clears it at its release; start this domain once vm has stopped, or give it another VF`);
    assert.ok(fs.existsSync(t.journal), "vm holds the VF");
    assert.not.ok(fs.existsSync(t.journal.replace(/0\.json$/, "2.json")), "vm2 holds nothing: its release cannot clear vm's vGPU");
  } finally {
    t.cleanup();
  }
});

test("hook mode, bad input: prepare exits 1 with the cause on the first stderr line, release exits 0; stdout stays empty", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const cases: [string, string | RegExp][] = [
      [`<domain><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">`, /^vmhook: the domain XML on stdin is not well-formed XML: /],
      [domain("<vmhook:hugepages size='3M'/>"), `vmhook: <vmhook:hugepages size="3M">: size="3M" is not a huge page size; on x86-64 use 2M or 1G (ls /sys/kernel/mm/hugepages lists this host's sizes)`],
      [domain("<vmhook:hugepages size='1G'/>"), "vmhook: hugepages: this host has no 1G huge page pool; it has 2M: use one of them, in size= on <vmhook:hugepages> and in <memoryBacking><hugepages><page size> where the domain gives one"],
    ];
    for (const [xml, expected] of cases) {
      const prepared = run(qemu, ["vm", "prepare", "begin", "-"], xml, t.root);
      assert.is(prepared.code, 1);
      assert.is(prepared.stdout, "");
      if (typeof expected === "string") assert.is(firstLine(prepared.stderr), expected);
      else assert.match(firstLine(prepared.stderr), expected);
      const released = run(qemu, ["vm", "release", "end", "failed"], xml, t.root);
      assert.equal([released.code, released.stdout], [0, ""]);
    }
    assert.is(t.pool(), 0);
    assert.not.ok(fs.existsSync(t.journal));
  } finally {
    t.cleanup();
  }
});

test("hook mode, <hooks> in a namespace that is not vmhook's under any prefix (virsh edit, --key vm): prepare refuses it, as it does under vmhook:, never skips it as a domain without metadata", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const misplaced = (metadata: string) => NO_METADATA.replace("</domain>", `<metadata>${metadata}</metadata></domain>`);
    const cases: [string, string][] = [
      ['<vm:hooks xmlns:vm="urn:vmhook"><vm:hugepages/></vm:hooks>', 'vmhook: <vm:hooks>: is in namespace "urn:vmhook", not vmhook\'s'],
      ['<hooks xmlns="urn:vmhook:2"><hugepages/></hooks>', 'vmhook: <hooks>: is in namespace "urn:vmhook:2", not vmhook\'s'],
      ['<v:hooks xmlns:v="URN:VMHOOK:1"><v:hugepages/></v:hooks>', 'vmhook: <v:hooks>: is in namespace "URN:VMHOOK:1", not vmhook\'s'],
    ];
    for (const [metadata, expected] of cases) {
      const prepared = run(qemu, ["plain", "prepare", "begin", "-"], misplaced(metadata), t.root);
      assert.equal([prepared.code, prepared.stdout], [1, ""], metadata);
      assert.match(firstLine(prepared.stderr), expected);
    }
    // another application's <hooks> is its own
    assert.equal(run(qemu, ["plain", "prepare", "begin", "-"], misplaced('<app:hooks xmlns:app="https://example.org/app"/>'), t.root), { code: 0, stdout: "", stderr: "" });
  } finally {
    t.cleanup();
  }
});

test("hook mode, stdin that cannot be read or is empty: prepare, start, started, migrate and restore refuse (exit 1), the cause first; an unknown event stays silent", () => {
  const t = tree();
  const directory = fs.openSync(t.root, "r"); // as stdin, its read fails (EISDIR)
  try {
    const qemu = t.link("hooks/qemu");
    for (const [op, subop] of [["prepare", "begin"], ["start", "begin"], ["started", "begin"], ["migrate", "begin"], ["restore", "begin"]]) {
      const unreadable = run(qemu, ["vm", op!, subop!, "-"], directory, t.root);
      assert.equal([unreadable.code, unreadable.stdout], [1, ""], `${op}: ${unreadable.stderr}`);
      assert.match(firstLine(unreadable.stderr), new RegExp(`^vmhook: ${op} of vm refused: the domain XML on stdin cannot be read \\(EISDIR.*\\), so vmhook cannot tell whether vm asks for its plugins$`));
      const empty = run(qemu, ["vm", op!, subop!, "-"], "", t.root);
      assert.equal([empty.code, empty.stdout, firstLine(empty.stderr)], [1, "", `vmhook: ${op} of vm refused: the domain XML on stdin is empty, so vmhook cannot tell whether vm asks for its plugins`]);
      assert.match(empty.stderr, `must pass its stdin on (exec or "$@", not < /dev/null); to check what vmhook makes of vm's XML without changing the host: virsh dumpxml vm | vmhook plan -`);
    }
    assert.match(fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8"), "[vm prepare begin] error: prepare of vm refused: the domain XML on stdin cannot be read (EISDIR");
    assert.equal(run(qemu, ["vm", "attach", "begin", "-"], directory, t.root), { code: 0, stdout: "", stderr: "" }, "an event vmhook does not know");
    assert.equal(run(qemu, ["vm", "attach", "begin", "-"], "", t.root), { code: 0, stdout: "", stderr: "" }, "an event vmhook does not know");
  } finally {
    fs.closeSync(directory);
    t.cleanup();
  }
});

test("hook mode, stdin that cannot be read or is empty at stopped, release or reconnect: exit 0, said on stderr and in the log, the domain's journal kept and vmhook recover named", () => {
  const t = tree();
  const directory = fs.openSync(t.root, "r");
  try {
    const qemu = t.link("hooks/qemu");
    const nothingHeld = run(qemu, ["vm", "release", "end", "-"], directory, t.root);
    assert.equal([nothingHeld.code, nothingHeld.stdout], [0, ""]);
    assert.match(firstLine(nothingHeld.stderr), /^vmhook: release of vm: the domain XML on stdin cannot be read \(EISDIR.*\), so vmhook cannot tell which of its changes are vm's$/);
    assert.match(nothingHeld.stderr, "no journal in /run/vmhook names vm: vmhook holds nothing for it");
    fs.writeFileSync(path.join(t.root, POOL), "8\n");
    assert.equal(run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root), { code: 0, stdout: "", stderr: "" });
    for (const [op, subop] of [["reconnect", "begin"], ["stopped", "end"], ["release", "end"]]) {
      for (const stdin of [directory, ""]) {
        const result = run(qemu, ["vm", op!, subop!, "-"], stdin, t.root);
        assert.equal([result.code, result.stdout], [0, ""], `${op} ${subop}`);
        assert.match(result.stderr, `its journal /run/vmhook/${UUID}.json holds 1 change(s), kept: once vm is shut off, run vmhook recover vm`);
      }
    }
    assert.is(t.pool(), 520);
    assert.ok(fs.existsSync(t.journal));
    assert.match(fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8"), "[vm release end] error: release of vm: the domain XML on stdin is empty, so vmhook cannot tell which of its changes are vm's");
  } finally {
    fs.closeSync(directory);
    t.cleanup();
  }
});

test("hook mode, the built binary decodes XML's five predefined entities (its xmldom holds no HTML entity table until one is asked for)", () => {
  const t = tree();
  try {
    const result = run(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], domain(`<vmhook:plugin name="a&amp;&lt;&gt;&quot;&apos;b"/>`), t.root);
    assert.is(result.code, 1, result.stderr);
    assert.match(firstLine(result.stderr), `name="a&<>"'b" is not a plugin name`);
  } finally {
    t.cleanup();
  }
});

test("hook mode, unknown event or missing arguments: exit 0, nothing printed, a log line", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    assert.equal(run(qemu, ["vm", "teleport", "now", "-"], domain(), t.root), { code: 0, stdout: "", stderr: "" });
    assert.equal(run(qemu, [], domain(), t.root), { code: 0, stdout: "", stderr: "" });
    const log = fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8");
    assert.match(log, `[vm teleport now] event "teleport now" is not one vmhook knows; nothing to do`);
    assert.match(log, `event "" is not one vmhook knows`);
    assert.is(t.pool(), 0);
  } finally {
    t.cleanup();
  }
});

test("the name decides the mode: qemu or anything in qemu.d/ is the hook; any other name is the CLI", () => {
  const t = tree();
  try {
    const bad = domain("<vmhook:nonsense/>");
    for (const name of ["hooks/qemu", "hooks/qemu.d/50-vmhook", "other/qemu.d/qemu-helper"]) {
      const outcome = run(t.link(name), ["vm", "prepare", "begin", "-"], bad, t.root);
      assert.is(outcome.code, 1, name);
      assert.match(firstLine(outcome.stderr), /^vmhook: <vmhook:nonsense>: is not a vmhook element/, name);
      assert.is(outcome.stdout, "");
    }
    for (const name of ["bin/vmhook", "hooks/qemu-old", "qemu/hook"]) {
      const cli = t.link(name);
      const outcome = run(cli, ["vm", "prepare", "begin", "-"], bad, t.root);
      assert.is(outcome.code, 2, name);
      assert.is(outcome.stderr, 'vmhook: "vm prepare begin" is a hook call, but this binary runs as the CLI (its name is not qemu); run it by hand with vmhook hook vm prepare begin, or install it with vmhook install\n', name);
      const help = run(cli, ["--help"], "", t.root);
      assert.is(help.code, 0);
      assert.match(help.stdout, "vmhook validate <domain>");
    }
  } finally {
    t.cleanup();
  }
});

test("the binary reads no bunfig.toml and no .env from the directory it runs in: sudo vmhook in a user's directory runs no code and takes no setting from it", () => {
  const t = tree();
  try {
    const cwd = path.join(t.dir, "users-dir");
    fs.mkdirSync(cwd);
    const marker = path.join(t.dir, "preload-ran");
    fs.writeFileSync(path.join(cwd, "bunfig.toml"), 'preload = ["./preload.js"]\n');
    fs.writeFileSync(path.join(cwd, "preload.js"), `require("node:fs").writeFileSync(${JSON.stringify(marker)}, "ran");\n`);
    // A setting from .env would move the CLI's root into the test tree, where plugins.d holds this file.
    fs.writeFileSync(path.join(cwd, ".env"), `VMHOOK_ROOT=${t.root}\n`);
    fs.mkdirSync(path.join(t.root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(path.join(t.root, "etc/vmhook/plugins.d/from-dotenv"), "");
    const listed = spawnSync(t.link("bin/vmhook"), ["plugins"], { cwd, encoding: "utf8", timeout: 20_000, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" } });
    assert.is(listed.status, 0, listed.stderr);
    assert.not.ok(fs.existsSync(marker), "bunfig.toml's preload ran");
    assert.not.match(listed.stdout, "from-dotenv", ".env set VMHOOK_ROOT");
  } finally {
    t.cleanup();
  }
});

test("CLI validate: ok for a good config, the named error and exit 1 for a bad one, JSON on request", () => {
  const t = tree();
  try {
    const vmhook = t.link("bin/vmhook");
    fs.writeFileSync(path.join(t.dir, "good.xml"), domain());
    fs.writeFileSync(path.join(t.dir, "bad.xml"), domain("<vmhook:hugepages node='x'/>"));
    const good = run(vmhook, ["validate", path.join(t.dir, "good.xml")], "", t.root);
    assert.equal([good.code, good.stdout.trim()], [0, `${path.join(t.dir, "good.xml")}: ok; vm runs hugepages`]);
    const json = JSON.parse(run(vmhook, ["validate", "--json", "-"], domain(), t.root).stdout);
    assert.equal(json.plugins, [{ id: "hugepages", config: { pools: [{ sizeKiB: 2048, pages: 512 }], retrySeconds: 10, backedByHugepages: true, hostDefaultSizeKiB: 2048 } }]);
    assert.is(run(vmhook, ["validate", "-"], domain(), t.root).stdout.trim(), "stdin: ok; vm runs hugepages");
    // doctor reads the domain from stdin with "-" too, rather than checking the host alone
    assert.match(run(vmhook, ["doctor", "-"], domain(), t.root).stdout, "Domain vm (stdin):");
    const bad = run(vmhook, ["validate", path.join(t.dir, "bad.xml")], "", t.root);
    assert.equal([bad.code, bad.stdout], [1, ""]);
    assert.match(firstLine(bad.stderr), `vmhook: <vmhook:hugepages node="x">: node="x" has "x"`);
  } finally {
    t.cleanup();
  }
});

test("CLI plan lists the steps and changes nothing", () => {
  const t = tree();
  try {
    const vmhook = t.link("bin/vmhook");
    const text = run(vmhook, ["plan", "-"], domain(), t.root);
    assert.is(text.code, 0, text.stderr);
    assert.is(text.stdout, "prepare of vm would take 1 step(s):\n  1. hugepages: grow the 2M pool by 512 pages\n");
    const json = JSON.parse(run(vmhook, ["plan", "--json", "-"], domain(), t.root).stdout);
    assert.equal(json.steps[0].record, { action: "grow-pool", sizeKiB: 2048, node: null, pages: 512, added: 0, returned: 0 });
    assert.is(t.pool(), 0);
    assert.not.ok(fs.existsSync(t.journal));
  } finally {
    t.cleanup();
  }
});

test("CLI plan and validate: a request that cannot fit on this host is marked and exits 1, the host unchanged", () => {
  const t = tree();
  try {
    const vmhook = t.link("bin/vmhook");
    const oversized = domain().replace("<memory unit='GiB'>1</memory>", "<memory unit='GiB'>200</memory>");
    const refusal = "hugepages: 102400 pages of 2M (204800 MiB) for the 2M pool cannot fit: the host has 8192 MiB available and keeps 1024 MiB free, so it can give 7168 MiB";
    const remedies = [
      "the host has 16384 MiB in all and can never give this: give the VM less <memory> (at most 15360 MiB here)",
      "the floor is plugins.hugepages.minFreeMiB in /etc/vmhook/vmhook.json (default: the larger of 5 % of RAM and 1 GiB)",
    ];
    const plan = run(vmhook, ["plan", "-"], oversized, t.root);
    assert.equal(
      [plan.code, plan.stdout],
      [
        1,
        `prepare of vm would take 1 step(s):\n  1. hugepages: grow the 2M pool by 102400 pages\n     REFUSED: ${refusal}\n${remedies.map((remedy) => `       ${remedy}\n`).join("")}prepare of vm would fail: vmhook refuses the marked step(s) before changing anything\n`,
      ],
    );
    const json = JSON.parse(run(vmhook, ["plan", "--json", "-"], oversized, t.root).stdout);
    assert.equal(json.steps[0].refused, { reason: refusal, remedies });
    const validate = run(vmhook, ["validate", "-"], oversized, t.root);
    assert.equal([validate.code, validate.stdout], [1, `stdin: valid, but prepare would refuse it on this host:\n  ${refusal}\n`]);
    assert.is(t.pool(), 0);
    assert.not.ok(fs.existsSync(t.journal));
  } finally {
    t.cleanup();
  }
});

/** Whether a process with this pid runs (a zombie counts as gone). */
const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
};

test("hook mode, a script plugin still running when its hook is killed (kill -9, libvirt's timeout, OOM): vmhook recover run meanwhile kills it, naming its pid, before it undoes; the plugin's late change never lands after the undo", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bin-"));
  const root = path.join(dir, "root");
  let pluginPid = 0;
  try {
    for (const sub of ["var/log", "run/libvirt/qemu", "etc/vmhook/plugins.d", "hooks", "bin"]) fs.mkdirSync(path.join(dir, sub === "hooks" || sub === "bin" ? sub : `root/${sub}`), { recursive: true });
    // The real /proc: the plugin's process is the host's own.
    fs.symlinkSync("/proc", path.join(root, "proc"));
    fs.symlinkSync(BINARY, path.join(dir, "hooks/qemu"));
    fs.symlinkSync(BINARY, path.join(dir, "bin/vmhook"));
    // At prepare: says it started (its pid), takes 2 s, then sets /flag; its undo clears it.
    const plugin = `#!/bin/sh
case "$1" in
  prepare) echo $$ > "$VMHOOK_ROOT/started"; sleep 2; echo on > "$VMHOOK_ROOT/flag"; echo '{"undo": "flag"}' ;;
  undo) echo off > "$VMHOOK_ROOT/flag" ;;
esac
`;
    fs.writeFileSync(path.join(root, "etc/vmhook/plugins.d/slow"), plugin, { mode: 0o755 });
    const xml = `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:plugin name="slow"/></vmhook:hooks></metadata></domain>`;
    const hook = spawn(path.join(dir, "hooks/qemu"), ["vm", "prepare", "begin", "-"], { stdio: ["pipe", "ignore", "ignore"], env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: root } });
    const hookEnded = new Promise((resolve) => hook.on("exit", resolve));
    hook.stdin.end(xml);
    const started = path.join(root, "started");
    // The shell creates the file before it writes the pid: wait for the pid itself (read too early, it was 0, never alive).
    const writtenPid = () => (fs.existsSync(started) ? Number(fs.readFileSync(started, "utf8")) : 0);
    for (let tries = 0; !writtenPid() && tries < 400; tries++) await new Promise((resolve) => setTimeout(resolve, 25));
    pluginPid = writtenPid();
    hook.kill("SIGKILL");
    await hookEnded;
    assert.ok(alive(pluginPid), "the plugin outlived its hook");

    const recovered = run(path.join(dir, "bin/vmhook"), ["recover", "vm"], "", root);
    assert.is(recovered.code, 0, recovered.stderr);
    assert.match(recovered.stderr, `pid ${pluginPid}`);
    assert.is(fs.readFileSync(path.join(root, "flag"), "utf8"), "off\n", "undone");
    assert.not.ok(alive(pluginPid), "the plugin the killed hook left running is gone");
    await new Promise((resolve) => setTimeout(resolve, 2500));
    assert.is(fs.readFileSync(path.join(root, "flag"), "utf8"), "off\n", "the plugin's late change never landed after the undo");
  } finally {
    // process.kill, not the kill program: procps-ng 4.0.2's kill reads -PGID as -1 (every process).
    if (pluginPid > 0) {
      try {
        process.kill(-pluginPid, "SIGKILL");
      } catch {
        // gone
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("CLI status and recover: a running domain (live pid) is kept, a dead one is undone", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const vmhook = t.link("bin/vmhook");
    assert.is(run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root).code, 0);
    assert.is(run(qemu, ["vm", "started", "begin", "-"], domain(), t.root).code, 0);
    const pidFile = path.join(t.root, "run/libvirt/qemu/vm.pid");
    fs.writeFileSync(pidFile, `${process.pid}\n`);

    const status = run(vmhook, ["status"], "", t.root);
    assert.is(status.stdout, `vm (${UUID}): running; vmhook holds for it:\n  - hugepages: grow the 2M pool by 512 pages\n`);
    const kept = run(vmhook, ["recover"], "", t.root);
    assert.equal([kept.code, kept.stdout], [0, "vm: still running; its changes are given back when it stops (use --force to undo now)\n"]);
    assert.is(t.pool(), 512);

    const exited = spawnSync("true");
    fs.writeFileSync(pidFile, `${exited.pid}\n`);
    assert.match(run(vmhook, ["status", "--json"], "", t.root).stdout, `"running": false`);
    assert.match(run(vmhook, ["status"], "", t.root).stdout, `vm (${UUID}): not running, yet vmhook still holds for it (vmhook recover vm gives it back):\n`);
    const recovered = run(vmhook, ["recover", "vm"], "", t.root);
    assert.equal([recovered.code, recovered.stdout], [0, "vm: 1 change(s) undone\n"]);
    // each undo is told once: on stderr as it happens, the count on stdout
    assert.is(recovered.stderr.split("\n").filter((line) => line.includes("grow the 2M pool")).length, 1, recovered.stderr);
    assert.is(t.pool(), 0);
    assert.not.ok(fs.existsSync(t.journal));
    assert.is(run(vmhook, ["status"], "", t.root).stdout, "no VM holds anything (no journals in /run/vmhook)\n");
    // nothing to do is no failure, named or not
    const none = run(vmhook, ["recover", "vm"], "", t.root);
    assert.equal([none.code, none.stdout, none.stderr], [0, "nothing to recover for vm (no journal in /run/vmhook)\n", ""]);
  } finally {
    t.cleanup();
  }
});

test("hook mode, hard deadline: a plugin stuck in a busy loop (after printing) gets the hook ended with exit 1, the last cause first; stdout stays empty", () => {
  const t = tree();
  try {
    // A JavaScript plugin that never yields: only a watchdog outside the main thread can stop it.
    // It also prints, which must not reach stdout (libvirt reads it on migrate and restore).
    installSpin(t.root, "{ name: 'spin', summary: 'spins', parse: () => ({}), async prepare(ctx) { console.log('<domain/>'); process.stdout.write('x'); await ctx.step('take', { action: 'take' }, () => {}); ctx.log.warn('waiting for the frobnicator'); for (;;) {} }, undo() {} }", 1);
    const started = Date.now();
    const result = spawnSync(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], {
      input: domain('<vmhook:plugin name="spin"/>'),
      encoding: "utf8",
      timeout: 30_000,
      env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: t.root },
    });
    const seconds = (Date.now() - started) / 1000;
    assert.is(result.status, 1, `the hook was not ended: ${result.stderr}`);
    assert.ok(seconds >= 6 && seconds < 20, `killed after ${seconds} s; the budget is 1 + 1 + 5 s`);
    assert.is(result.stdout, "");
    // the last cause logged comes first, then the time really elapsed, then what to do about what the journal holds
    assert.match(result.stderr, /^<domain\/>\nxvmhook: waiting for the frobnicator\n  prepare begin of vm was killed after 7 s \(budget 7 s: deadlineSeconds \+ undoDeadlineSeconds \+ 5 in \/etc\/vmhook\/vmhook.json\)\n  once it is stopped, run vmhook recover vm to give back what it still holds\n$/);
  } finally {
    t.cleanup();
  }
});

test("hook mode, hard deadline: a wall clock stepped an hour either way while the hook runs (NTP at boot, date -s) neither ends it early nor late, and the message says the time it really ran", () => {
  for (const stepMs of [3_600_000, -3_600_000]) {
    const t = tree();
    try {
      installSpin(t.root, "{ name: 'spin', summary: 'spins', parse: () => ({}), async prepare(ctx) { await ctx.step('take', { action: 'take' }, () => {}); for (;;) {} }, undo() {} }", 1);
      const started = performance.now();
      const result = spawnSync(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], {
        input: domain('<vmhook:plugin name="spin"/>'),
        encoding: "utf8",
        timeout: 30_000,
        env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: t.root, ...wallStepEnv(1_000, stepMs) },
      });
      const seconds = (performance.now() - started) / 1000;
      assert.is(result.status, 1, `the hook was not ended: ${result.stderr}`);
      assert.ok(seconds >= 6 && seconds < 20, `stepped ${stepMs} ms: killed after ${seconds} s; the budget is 1 + 1 + 5 s`);
      assert.match(result.stderr, /^vmhook: prepare begin of vm was killed after 7 s \(budget 7 s: /, `stepped ${stepMs} ms`);
    } finally {
      t.cleanup();
    }
  }
});

test("hook mode, migrate and restore: whatever a plugin prints, by any means, reaches stderr, never stdout", () => {
  const t = tree();
  try {
    fs.mkdirSync(path.join(t.root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(
      path.join(t.root, "etc/vmhook/plugins.d/noisy.mjs"),
      "import { writeSync } from 'node:fs';\nexport default { name: 'noisy', summary: 'prints', parse() { console.log('a'); process.stdout.write('b\\n'); writeSync(1, 'c\\n'); return {}; }, undo() {} };\n",
      { mode: 0o644 },
    );
    const qemu = t.link("hooks/qemu");
    for (const op of ["migrate", "restore"]) {
      assert.equal(run(qemu, ["vm", op, "begin", "-"], domain('<vmhook:plugin name="noisy"/>'), t.root), { code: 0, stdout: "", stderr: "a\nb\nc\n" }, op);
    }
  } finally {
    t.cleanup();
  }
});

test("hook mode, reconnect: a plugin's stray error (a promise nobody awaits) is logged and the hook exits 0", () => {
  const t = tree();
  try {
    fs.mkdirSync(path.join(t.root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(path.join(t.root, "etc/vmhook/plugins.d/stray.mjs"), "export default { name: 'stray', summary: 'stray', parse: () => ({}), reconnect() { Promise.reject(new Error('nobody awaits me')); }, undo() {} };\n", { mode: 0o644 });
    const qemu = t.link("hooks/qemu");
    const xml = domain('<vmhook:plugin name="stray"/>');
    assert.equal(run(qemu, ["vm", "prepare", "begin", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    assert.equal(run(qemu, ["vm", "reconnect", "begin", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    assert.match(fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8"), "[vm reconnect begin] error: stray error of a plugin, ignored: nobody awaits me");
  } finally {
    t.cleanup();
  }
});

/** plugins.d/stray.mjs: a plugin whose `handlers` (object body text) leave errors nobody catches. */
function installStray(root: string, handlers: string): void {
  fs.mkdirSync(path.join(root, "etc/vmhook/plugins.d"), { recursive: true });
  fs.writeFileSync(path.join(root, "etc/vmhook/plugins.d/stray.mjs"), `export default { name: 'stray', summary: 'stray', parse: () => ({}), ${handlers} };\n`, { mode: 0o644 });
}

test("hook mode, prepare: a plugin's stray error (a promise nobody awaits, a throw in a timer) fails prepare with a vmhook: first line naming the plugin and the fix, the host left as it was", () => {
  const strays = {
    "a promise nobody awaits": "Promise.reject(new Error('nobody awaits me'))",
    "a throw in a timer": "setTimeout(() => { throw new Error('nobody awaits me'); }, 0); await new Promise((resolve) => setTimeout(resolve, 50))",
  };
  for (const [kind, stray] of Object.entries(strays)) {
    const t = tree();
    try {
      installStray(t.root, `async prepare(ctx) { await ctx.step('take', { action: 'take' }, () => {}); ${stray}; }, undo() {}`);
      const result = run(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], domain('<vmhook:hugepages/><vmhook:plugin name="stray"/>'), t.root);
      assert.equal([result.code, result.stdout], [1, ""], `${kind}: ${result.stderr}`);
      assert.match(firstLine(result.stderr), /^vmhook: plugin:stray: a stray error while prepare ran \(step "take"\): nobody awaits me; the plugin must await every promise it makes/, kind);
      assert.match(result.stderr, "the host was left as it was (2 change(s) undone)", kind);
      assert.is(t.pool(), 0, `${kind}: the pages are given back`);
      assert.not.ok(fs.existsSync(t.journal), `${kind}: nothing is left for release`);
    } finally {
      t.cleanup();
    }
  }
});

test("hook mode, started: a plugin's stray error fails the event with a vmhook: first line (libvirt then stops the VM and release gives everything back)", () => {
  const t = tree();
  try {
    installStray(t.root, "started() { Promise.reject(new Error('nobody awaits me')); }, undo() {}");
    const qemu = t.link("hooks/qemu");
    const xml = domain('<vmhook:hugepages/><vmhook:plugin name="stray"/>');
    assert.equal(run(qemu, ["vm", "prepare", "begin", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    const started = run(qemu, ["vm", "started", "begin", "-"], xml, t.root);
    assert.equal([started.code, started.stdout], [1, ""], started.stderr);
    assert.match(firstLine(started.stderr), /^vmhook: plugin:stray: a stray error while started ran \(before its first step\): nobody awaits me/);
    assert.equal(run(qemu, ["vm", "release", "end", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    assert.is(t.pool(), 0);
  } finally {
    t.cleanup();
  }
});

test("hook mode, release: a plugin's stray error in its undo is logged and the remaining undo goes on", () => {
  const t = tree();
  try {
    installStray(t.root, "async prepare(ctx) { await ctx.step('take', { action: 'take' }, () => {}); }, undo() { Promise.reject(new Error('nobody awaits me')); }");
    const qemu = t.link("hooks/qemu");
    const xml = domain('<vmhook:hugepages/><vmhook:plugin name="stray"/>');
    assert.equal(run(qemu, ["vm", "prepare", "begin", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    assert.is(t.pool(), 512);
    assert.equal(run(qemu, ["vm", "release", "end", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    assert.is(t.pool(), 0);
    assert.not.ok(fs.existsSync(t.journal));
    assert.match(fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8"), "[vm release end] error: stray error of a plugin, ignored: nobody awaits me");
  } finally {
    t.cleanup();
  }
});

test("hook mode, hard deadline on reconnect: the hook is ended with exit 0 (a failing reconnect makes libvirt kill the VM)", () => {
  const t = tree();
  try {
    // 1.5 s to reach the plugin: a start slowed by other load must not end the event before the spin does
    installSpin(t.root, "{ name: 'spin', summary: 'spins', parse: () => ({}), reconnect() { for (;;) {} }, undo() {} }", 1.5, 0.5);
    const qemu = t.link("hooks/qemu");
    const xml = domain('<vmhook:plugin name="spin"/>');
    assert.equal(run(qemu, ["vm", "prepare", "begin", "-"], xml, t.root), { code: 0, stdout: "", stderr: "" });
    const reconnect = run(qemu, ["vm", "reconnect", "begin", "-"], xml, t.root);
    assert.equal([reconnect.code, reconnect.stdout], [0, ""]);
    assert.match(reconnect.stderr, /vmhook: reconnect begin of vm was killed after 7 s [\s\S]*\n  it holds nothing \(its journal is empty\): vmhook recover is not needed\n$/);
    assert.match(fs.readFileSync(path.join(t.root, "var/log/vmhook.log"), "utf8"), "vmhook: reconnect begin of vm was killed after 7 s");
    assert.ok(fs.existsSync(t.journal), "the journal is kept");
  } finally {
    t.cleanup();
  }
});

test("hook mode, hard deadline: the watchdog's message never goes through a symlink planted at /var/log/vmhook.log", () => {
  const t = tree();
  try {
    installSpin(t.root, "{ name: 'spin', summary: 'spins', parse: () => ({}), prepare() { for (;;) {} }, undo() {} }", 1.5, 0.5);
    const bashrc = path.join(t.root, "root/.bashrc");
    fs.mkdirSync(path.dirname(bashrc));
    fs.writeFileSync(bashrc, "# root's shell\n");
    fs.symlinkSync(bashrc, path.join(t.root, "var/log/vmhook.log"));
    const result = run(t.link("hooks/qemu"), ["x;touch /tmp/owned;", "prepare", "begin", "-"], domain('<vmhook:plugin name="spin"/>'), t.root);
    assert.is(result.code, 1);
    assert.match(result.stderr, "prepare begin of x;touch /tmp/owned; was killed after");
    assert.is(fs.readFileSync(bashrc, "utf8"), "# root's shell\n");
  } finally {
    t.cleanup();
  }
});

test("hook mode, /var/log full (ENOSPC: an 8 KiB tmpfs mounted over the test root's /var/log): the VM starts and stops all the same, each run says once on stderr that it is missing from the log; the line the full disk cut short does not swallow the next run's first line", () => {
  const t = tree();
  const { dir: logDir, unmount } = tmpfsAt(t.root, "var/log", "size=8k,mode=0755");
  const log = path.join(logDir, "vmhook.log");
  try {
    // Two pages: a filler, and the log with 40 bytes left in its page; the next line is cut short there.
    fs.writeFileSync(path.join(logDir, "filler"), "f".repeat(4096));
    fs.writeFileSync(log, `${"x".repeat(4096 - 40 - 1)}\n`, { mode: 0o640 });
    fs.writeFileSync(path.join(t.root, POOL), "8\n");
    const qemu = t.link("hooks/qemu");
    const warning = "vmhook: warn: this run is missing from vmhook's log: /var/log/vmhook.log cannot be written (";
    const prepared = run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root);
    assert.equal([prepared.code, prepared.stdout, t.pool()], [0, "", 520], prepared.stderr);
    assert.ok(prepared.stderr.startsWith(warning), prepared.stderr);
    assert.is(prepared.stderr.split("\n").filter(Boolean).length, 1, prepared.stderr);
    const released = run(qemu, ["vm", "release", "end", "-"], domain(), t.root);
    assert.equal([released.code, released.stdout, t.pool()], [0, "", 8], released.stderr);
    assert.match(released.stderr, /^vmhook: warn: this run is missing from vmhook's log: \/var\/log\/vmhook\.log cannot be written \(ENOSPC[^\n]*\n$/);

    fs.rmSync(path.join(logDir, "filler"));
    const again = run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root);
    assert.equal([again.code, again.stderr], [0, ""]);
    const lines = fs.readFileSync(log, "utf8").split("\n");
    assert.equal(lines.filter((line) => /.\d{4}-\d\d-\d\dT\d\d:\d\d:/.test(line)), [], "a line holds the start of another");
    assert.ok(lines.some((line) => /^\S+ \[vm prepare begin\] hugepages: /.test(line)), lines.join("\n"));
    run(qemu, ["vm", "release", "end", "-"], domain(), t.root);
  } finally {
    unmount();
    t.cleanup();
  }
});

/** A tmpfs mounted over `dir` of the test root (the unit tests run as root), with `options` (size=, nr_inodes=, mode=); it can be remounted read-only and back. */
function tmpfsAt(root: string, dir: string, options: string): { dir: string; remount: (mode: "ro" | "rw") => void; unmount: () => void } {
  const real = path.join(root, dir);
  fs.mkdirSync(real, { recursive: true });
  const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", options, "tmpfs", real], { encoding: "utf8", timeout: 10_000 });
  assert.is(mounted.status, 0, `mount tmpfs (the unit tests run as root): ${mounted.stderr}`);
  return {
    dir: real,
    remount: (mode) => assert.is(spawnSync("mount", ["-o", `remount,${mode}`, real], { timeout: 10_000 }).status, 0),
    unmount: () => void spawnSync("umount", [real], { timeout: 10_000 }),
  };
}

/** A tmpfs mounted over the test root's /run/vmhook (vmhook's state directory), with `options` (size=, nr_inodes=); `fill` takes up what it holds. */
function smallRun(root: string, options: string): ReturnType<typeof tmpfsAt> & { fill: () => void; free: () => void } {
  const mounted = tmpfsAt(root, "run/vmhook", `${options},mode=0700`);
  const { dir } = mounted;
  const filler = (n: number) => path.join(dir, `filler-${n}`);
  let made = 0;
  return {
    ...mounted,
    // One file a page until neither a page nor an inode is left.
    fill() {
      for (;;) {
        try {
          fs.writeFileSync(filler(made), "f".repeat(4096));
          made++;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === "ENOSPC") return;
          throw error;
        }
      }
    },
    free: () => {
      for (; made >= 0; made--) fs.rmSync(filler(made), { force: true });
      made = 0;
    },
  };
}

/** libvirt's events up to a running VM. */
const STARTS = [["prepare", "begin"], ["start", "begin"], ["started", "begin"]];

/** The fix of a start refused before its first step: nothing to recover. */
const RUN_FULL_FIX = "vmhook records every change there before it makes it; free space in /run (df -h /run/vmhook, df -i /run/vmhook); nothing was changed, so there is nothing to recover";

for (const [what, options] of [
  ["no inode left (tmpfs nr_inodes): the domain's lock file cannot be made", "size=1m,nr_inodes=4"],
  ["no page left: the journal cannot be written", "size=16k"],
] as const) {
  test(`hook mode, /run full before prepare's first step, ${what}: the start is refused naming the file, the errno and the fix, and nothing is changed or left behind`, () => {
    const t = tree();
    const run_ = smallRun(t.root, options);
    try {
      run_.fill();
      const left = fs.readdirSync(run_.dir).sort();
      const prepared = run(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], domain(), t.root);
      assert.is(prepared.code, 1);
      assert.match(firstLine(prepared.stderr), new RegExp(`^vmhook: cannot (open lock file|write) /run/vmhook/${UUID}\\.(lock|json) \\(ENOSPC: the file system is full\\); `));
      assert.ok(firstLine(prepared.stderr).endsWith(`; ${RUN_FULL_FIX}`), prepared.stderr);
      assert.is(t.pool(), 0);
      assert.equal(fs.readdirSync(run_.dir).sort(), left, "no journal, no temp copy, no lock file");
    } finally {
      run_.unmount();
      t.cleanup();
    }
  });
}

/**
 * The VM started, then its state directory spoilt (`spoil`: the tmpfs filled,
 * or remounted read-only): release keeps the pages it cannot journal the
 * shrink of and exits 0, `check` seeing what it said and what vmhook status
 * says then; once `mend` has run, vmhook recover gives them back, leaving no
 * state file.
 */
function releaseKeptUntilRecovered(options: string, spoil: (run_: ReturnType<typeof smallRun>) => void, mend: (run_: ReturnType<typeof smallRun>) => void, check: (t: ReturnType<typeof tree>, released: Run, status: Run) => void): void {
  const t = tree();
  const run_ = smallRun(t.root, options);
  try {
    const qemu = t.link("hooks/qemu");
    const vmhook = t.link("bin/vmhook");
    for (const [op, subop] of STARTS) assert.is(run(qemu, ["vm", op!, subop!, "-"], domain(), t.root).code, 0);
    assert.is(t.pool(), 512);
    spoil(run_);
    const released = run(qemu, ["vm", "release", "end", "-"], domain(), t.root);
    assert.equal([released.code, released.stdout], [0, ""]);
    assert.match(firstLine(released.stderr), "release of vm: 1 change(s) could not be undone; see /var/log/vmhook.log, then run vmhook recover vm");
    assert.is(t.pool(), 512, "the shrink is journaled before it is made: while that cannot be, the pages stay");
    check(t, released, run(vmhook, ["status"], "", t.root));
    mend(run_);
    const recovered = run(vmhook, ["recover", "vm"], "", t.root);
    assert.equal([recovered.code, recovered.stdout], [0, "vm: 1 change(s) undone\n"], recovered.stderr);
    assert.is(t.pool(), 0);
    assert.equal(fs.readdirSync(run_.dir).filter((name) => name.endsWith(".json") || name.endsWith(".tmp")), []);
  } finally {
    run_.unmount();
    t.cleanup();
  }
}

test("hook mode, /run full while the VM runs (a 16 KiB tmpfs filled after prepare): release keeps the pages it cannot journal the shrink of, says so, and exits 0; status still shows them; recover gives them back once there is room, leaving nothing", () => {
  releaseKeptUntilRecovered(
    "size=16k",
    (run_) => run_.fill(),
    (run_) => run_.free(),
    (_, released, status) => {
      assert.match(released.stderr, "(ENOSPC: the file system is full)");
      assert.match(status.stdout, "hugepages: grow the 2M pool by 512 pages");
    },
  );
});

test("hook mode, /run/vmhook read-only while the VM runs (its tmpfs remounted ro): release keeps what it cannot journal the undo of and says how to fix it; status still lists what is held; recover gives it back once /run is read-write again", () => {
  releaseKeptUntilRecovered(
    "size=1m",
    (run_) => run_.remount("ro"),
    (run_) => run_.remount("rw"),
    (t, released, status) => {
      assert.match(released.stderr, `cannot write ${t.journal.slice(t.root.length)} (EROFS); its file system is mounted read-only (findmnt -T /run/vmhook): remount it read-write, then run vmhook recover`);
      assert.equal([status.code, status.stdout], [0, `vm (${UUID}): not running, yet vmhook still holds for it (vmhook recover vm gives it back):\n  - hugepages: grow the 2M pool by 512 pages\n`], status.stderr);
    },
  );
});

test("hook mode, /var/log read-only (a tmpfs remounted ro over the test root's /var/log): the VM starts and stops all the same, each run says once on stderr that it is missing from the log", () => {
  const t = tree();
  const { dir: logDir, remount, unmount } = tmpfsAt(t.root, "var/log", "size=64k,mode=0755");
  try {
    fs.writeFileSync(path.join(logDir, "vmhook.log"), "", { mode: 0o640 });
    remount("ro");
    fs.writeFileSync(path.join(t.root, POOL), "8\n");
    const qemu = t.link("hooks/qemu");
    for (const [op, subop, pool] of [["prepare", "begin", 520], ["release", "end", 8]] as const) {
      const outcome = run(qemu, ["vm", op, subop, "-"], domain(), t.root);
      assert.equal([outcome.code, outcome.stdout, t.pool()], [0, "", pool], outcome.stderr);
      assert.match(outcome.stderr, /^vmhook: warn: this run is missing from vmhook's log: \/var\/log\/vmhook\.log cannot be written \(EROFS[^\n]*\n$/);
    }
  } finally {
    unmount();
    t.cleanup();
  }
});

test("hook mode, a log vmhook refuses to open (a symlink planted at /var/log/vmhook.log): said once on stderr, after the cause; exit codes and stdout unchanged", () => {
  const t = tree();
  try {
    const elsewhere = path.join(t.root, "elsewhere");
    fs.writeFileSync(elsewhere, "");
    fs.symlinkSync(elsewhere, path.join(t.root, "var/log/vmhook.log"));
    const qemu = t.link("hooks/qemu");
    const warning = "vmhook: warn: this run is missing from vmhook's log: /var/log/vmhook.log is a symlink, not the log vmhook writes;";
    fs.writeFileSync(path.join(t.root, POOL), "8\n");
    const prepared = run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root);
    assert.equal([prepared.code, prepared.stdout], [0, ""], prepared.stderr);
    assert.ok(prepared.stderr.startsWith(warning), prepared.stderr);
    assert.is(prepared.stderr.split(warning).length, 2, "said once");
    assert.is(t.pool(), 520);
    const refused = run(qemu, ["vm", "prepare", "begin", "-"], domain("<vmhook:hugepages size='3M'/>"), t.root);
    assert.equal([refused.code, refused.stdout], [1, ""]);
    assert.match(firstLine(refused.stderr), /^vmhook: <vmhook:hugepages size="3M">: /);
    assert.match(refused.stderr, `(prepare of vm; log: /var/log/vmhook.log)\n${warning}`);
    assert.is(fs.readFileSync(elsewhere, "utf8"), "");
  } finally {
    t.cleanup();
  }
});

test("defect 1, hook mode: a JS plugin step that never settles ends prepare with exit 1 at its time limit, naming plugin and step, its changes undone", () => {
  const t = tree();
  try {
    fs.mkdirSync(path.join(t.root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(path.join(t.root, "etc/vmhook/vmhook.json"), JSON.stringify({ plugins: { "plugin:hang": { timeoutSeconds: 1 } } }));
    fs.writeFileSync(
      path.join(t.root, "etc/vmhook/plugins.d/hang.mjs"),
      `export default { name: "hang", summary: "never settles", parse: () => ({}),
        async prepare(ctx) { await ctx.step("wait for ever", { action: "nothing" }, () => new Promise(() => {})); }, undo() {} };\n`,
      { mode: 0o644 },
    );
    const result = run(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], domain('<vmhook:hugepages/><vmhook:plugin name="hang"/>'), t.root);
    assert.is(result.code, 1, result.stderr);
    assert.is(result.stdout, "");
    assert.is(firstLine(result.stderr), 'vmhook: plugin:hang did not finish prepare within 1 s (step "wait for ever") and was abandoned; make it finish, or raise "timeoutSeconds" under "plugins": {"plugin:hang": …} in /etc/vmhook/vmhook.json');
    assert.match(result.stderr, `the host was left as it was (${undoneText({ undone: 1, unfinished: 1 })})`);
    assert.is(t.pool(), 0);
    assert.not.ok(fs.existsSync(t.journal));
  } finally {
    t.cleanup();
  }
});

test("hook mode: what a plugin leaves running (a timer, an undo abandoned at its time limit) never keeps the hook: it exits once the event's work has ended", () => {
  const t = tree();
  try {
    // Its step leaves a timer ticking; its undo polls for ever. The budget is 4 + 4 + 5 s.
    installSpin(t.root, "{ name: 'spin', summary: 'leaves timers', parse: () => ({}), async prepare(ctx) { await ctx.step('poll', { action: 'poll' }, () => { setInterval(() => {}, 100); }); }, undo: () => new Promise(() => setInterval(() => {}, 100)) }", 4);
    const qemu = t.link("hooks/qemu");
    const xml = domain('<vmhook:plugin name="spin"/>');
    const timed = (event: string, subop: string) => {
      const started = Date.now();
      return { ...run(qemu, ["vm", event, subop, "-"], xml, t.root), seconds: (Date.now() - started) / 1000 };
    };
    const prepared = timed("prepare", "begin");
    assert.equal([prepared.code, prepared.stdout, prepared.stderr], [0, "", ""], "a prepare that did its work succeeds");
    assert.ok(prepared.seconds < 9, `prepare ended after ${prepared.seconds} s`);
    const released = timed("release", "end");
    assert.is(released.code, 0);
    assert.match(firstLine(released.stderr), "vmhook: release of vm: 1 change(s) could not be undone");
    assert.not.match(released.stderr, "was killed");
    assert.ok(released.seconds < 10, `release ended after ${released.seconds} s, its undo abandoned after 4 s`);
  } finally {
    t.cleanup();
  }
});

test("defect 5, hook mode: /run/vmhook as a symlink is refused before anything changes; a symlink at the journal's place is never written through", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    fs.mkdirSync(path.join(t.root, "elsewhere"));
    fs.mkdirSync(path.join(t.root, "run"), { recursive: true });
    fs.symlinkSync(path.join(t.root, "elsewhere"), path.join(t.root, "run/vmhook"));
    const refused = run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root);
    assert.is(refused.code, 1);
    assert.match(firstLine(refused.stderr), "vmhook: /run/vmhook is a symlink");
    assert.equal([t.pool(), fs.readdirSync(path.join(t.root, "elsewhere"))], [0, []]);

    fs.rmSync(path.join(t.root, "run/vmhook"));
    fs.mkdirSync(path.join(t.root, "run/vmhook"), { mode: 0o700 });
    fs.writeFileSync(path.join(t.root, "etc-shadow"), "secret\n");
    fs.symlinkSync(path.join(t.root, "etc-shadow"), t.journal);
    const planted = run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root);
    assert.is(planted.code, 1);
    assert.match(firstLine(planted.stderr), `journal /run/vmhook/${UUID}.json is a symlink`);
    fs.rmSync(t.journal);
    assert.is(run(qemu, ["vm", "prepare", "begin", "-"], domain(), t.root).code, 0);
    assert.is(fs.readFileSync(path.join(t.root, "etc-shadow"), "utf8"), "secret\n");
    assert.ok(fs.lstatSync(t.journal).isFile());
    assert.is(fs.statSync(path.join(t.root, "run/vmhook")).mode & 0o777, 0o700);
  } finally {
    t.cleanup();
  }
});

test("defect 3, hook mode: releasing one of two isolating VMs while the other's journal cannot be read keeps every CPU set and the entry", () => {
  const t = tree();
  try {
    const file = (name: string, content: string, mode = 0o644) => {
      fs.mkdirSync(path.dirname(path.join(t.root, name)), { recursive: true });
      fs.writeFileSync(path.join(t.root, name), content, { mode });
    };
    file("proc/1/comm", "systemd\n");
    file("sys/devices/system/cpu/present", "0-7\n");
    file("sys/devices/system/cpu/online", "0-7\n");
    file("sys/fs/cgroup/cgroup.controllers", "cpuset cpu memory\n");
    // systemctl as the hook finds it under its root: keeps AllowedCPUs per unit in $VMHOOK_ROOT/units, and, as systemd, in the unit's cgroup.
    for (const unit of ["system.slice", "user.slice", "init.scope"]) file(`sys/fs/cgroup/${unit}/cpuset.cpus`, "\n");
    file("usr/bin/systemctl", `#!/bin/sh\nmkdir -p "$VMHOOK_ROOT/units"\ncase "$1" in\n  show) printf 'AllowedCPUs=%s\\n' "$(cat "$VMHOOK_ROOT/units/$4" 2>/dev/null)" ;;\n  set-property) printf '%s' "\${4#AllowedCPUs=}" > "$VMHOOK_ROOT/units/$3"; printf '%s\\n' "\${4#AllowedCPUs=}" > "$VMHOOK_ROOT/sys/fs/cgroup/$3/cpuset.cpus" ;;\nesac\n`, 0o755);
    const allowed = () => ["system.slice", "user.slice", "init.scope"].map((unit) => fs.readFileSync(path.join(t.root, "units", unit), "utf8"));
    const vm = (name: string, uuid: string, cpus: string) => `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><memory unit='MiB'>512</memory>
      <cputune><vcpupin vcpu='0' cpuset='${cpus}'/></cputune>
      <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata></domain>`;
    const uuidB = "d0d0d0d0-0000-4000-8000-0000000000d1";
    const qemu = t.link("hooks/qemu");
    assert.equal(run(qemu, ["vmA", "prepare", "begin", "-"], vm("vmA", UUID, "2"), t.root).code, 0);
    assert.equal(run(qemu, ["vmB", "prepare", "begin", "-"], vm("vmB", uuidB, "4"), t.root).code, 0);
    assert.equal(allowed(), ["0-1,3,5-7", "0-1,3,5-7", "0-1,3,5-7"]);
    fs.writeFileSync(path.join(t.root, `run/vmhook/${uuidB}.json`), "{ half a journal");

    const released = run(qemu, ["vmA", "release", "end", "-"], vm("vmA", UUID, "2"), t.root);
    assert.equal([released.code, released.stdout], [0, ""]);
    assert.is(firstLine(released.stderr), "vmhook: release of vmA: 1 change(s) could not be undone; see /var/log/vmhook.log, then run vmhook recover vmA");
    assert.match(released.stderr, "vmhook cannot tell what the other VMs hold, so it changes no shared resource");
    assert.equal(allowed(), ["0-1,3,5-7", "0-1,3,5-7", "0-1,3,5-7"], "vmB still runs: nothing was given back from a partial view");
    assert.ok(fs.existsSync(t.journal), "the entry is kept for vmhook recover");
  } finally {
    t.cleanup();
  }
});

test("defect 1, hook mode: work that can never finish (a plugin module whose top-level await never settles) ends prepare with exit 1, not 0", () => {
  const t = tree();
  try {
    fs.mkdirSync(path.join(t.root, "etc/vmhook/plugins.d"), { recursive: true });
    fs.writeFileSync(path.join(t.root, "etc/vmhook/plugins.d/stuck.mjs"), "await new Promise(() => {});\nexport default {};\n", { mode: 0o644 });
    const result = run(t.link("hooks/qemu"), ["vm", "prepare", "begin", "-"], domain('<vmhook:plugin name="stuck"/>'), t.root);
    assert.is(result.code, 1, result.stderr);
    assert.is(result.stdout, "");
    assert.is(firstLine(result.stderr), "vmhook: prepare begin of vm ended with its work unfinished (a promise that never settles); the journal is kept for release or vmhook recover");
    assert.is(t.pool(), 0);
  } finally {
    t.cleanup();
  }
});

test("defect 4, hook mode: VM A released while VM B keeps nvidia unloaded: A's card waits in the claims ledger, A's journal goes; an unreadable ledger stops a handover", () => {
  const t = tree();
  try {
    const at = (name: string) => path.join(t.root, name);
    const card = "0000:01:00.0";
    const uuidB = "d0d0d0d0-0000-4000-8000-0000000000d2";
    // sysfs as plain files: A's card on vfio-pci (group 1); nvidia not registered (B's prepare unloaded it).
    for (const [file, content] of [["class", "0x030000"], ["vendor", "0x10de"], ["device", "0x2684"], ["boot_vga", "0"], ["driver_override", "vfio-pci"]]) {
      fs.mkdirSync(at(`sys/bus/pci/devices/${card}`), { recursive: true });
      fs.writeFileSync(at(`sys/bus/pci/devices/${card}/${file}`), `${content}\n`);
    }
    fs.mkdirSync(at("sys/bus/pci/drivers/vfio-pci"), { recursive: true });
    fs.writeFileSync(at("sys/bus/pci/drivers/vfio-pci/unbind"), "");
    fs.writeFileSync(at("sys/bus/pci/drivers_probe"), "");
    fs.symlinkSync("../../../bus/pci/drivers/vfio-pci", at(`sys/bus/pci/devices/${card}/driver`));
    // vfio-pci loaded brings its IOMMU backend (this root has no module tree to load one from).
    fs.mkdirSync(at("sys/module/vfio_iommu_type1"), { recursive: true });
    fs.mkdirSync(at("sys/kernel/iommu_groups/1/devices"), { recursive: true });
    fs.symlinkSync("../../../kernel/iommu_groups/1", at(`sys/bus/pci/devices/${card}/iommu_group`));
    fs.symlinkSync(`../../../../bus/pci/devices/${card}`, at(`sys/kernel/iommu_groups/1/devices/${card}`));
    fs.mkdirSync(at("run/vmhook"), { recursive: true, mode: 0o700 });
    const bind = { action: "bind-vfio", address: card, group: "1", driver: "nvidia", override: null, moduleReloaded: false, bindTimeoutMs: 1000 };
    const journal = { version: 1, domain: { name: "vm", uuid: UUID }, phase: "running", pid: 1, createdAt: "", updatedAt: "", entries: [{ plugin: "vfio", event: "prepare", description: `bind ${card} to vfio-pci (from nvidia)`, undo: bind, state: "applied", at: "" }] };
    fs.writeFileSync(t.journal, JSON.stringify(journal));
    const claims = at("run/vmhook/claims.json");
    fs.writeFileSync(claims, JSON.stringify({ version: 1, claims: { "module:nvidia": { holders: [uuidB], original: { drivers: ["nvidia"] }, waiting: [] } } }));
    const qemu = t.link("hooks/qemu");
    // The card is the domain's own PCI hostdev, as the host policy wants.
    const hostdev = "<devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices>";
    const vfio = domain('<vmhook:vfio devices="0000:01:00.0"/>').replace("</domain>", `${hostdev}</domain>`);

    const released = run(qemu, ["vm", "release", "end", "-"], vfio, t.root);
    assert.equal(released, { code: 0, stdout: "", stderr: "" });
    assert.not.ok(fs.existsSync(t.journal), "nothing stale is kept in A's journal");
    assert.equal(JSON.parse(fs.readFileSync(claims, "utf8")).claims["module:nvidia"], { holders: [uuidB], original: { drivers: ["nvidia"] }, waiting: [{ address: card, driver: "nvidia", override: null }] });
    assert.is(fs.readFileSync(at(`sys/bus/pci/devices/${card}/driver_override`), "utf8"), "nvidia", "driver_override names nvidia while the card waits: nvidia, and no other driver, takes it when B's release loads it");

    // vfio-pci's unbind, which these plain files do not act on: the card has no driver now (a card still on vfio-pci would stay there, no handover).
    fs.unlinkSync(at(`sys/bus/pci/devices/${card}/driver`));
    fs.writeFileSync(claims, '{"version": 7, "claims": {}}');
    const refused = run(qemu, ["vm", "prepare", "begin", "-"], vfio, t.root);
    assert.is(refused.code, 1);
    assert.match(firstLine(refused.stderr), "vmhook: claims ledger /run/vmhook/claims.json has unknown version 7");
    assert.not.ok(fs.existsSync(t.journal));
  } finally {
    t.cleanup();
  }
});

test("CLI hook by hand with another domain's XML on stdin (a saved dumpxml): refused, that domain's journal and changes kept while it runs", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const vmhook = t.link("bin/vmhook");
    for (const event of ["prepare", "started"]) assert.is(run(qemu, ["vm", event, "begin", "-"], domain(), t.root).code, 0);
    fs.writeFileSync(path.join(t.root, "run/libvirt/qemu/vm.pid"), `${process.pid}\n`);
    assert.is(t.pool(), 512);
    // vm runs; vm2 is shut off, and vm's XML is what reaches stdin: the hook would release vm's journal, its pages from under it.
    for (const [op, subop] of [["release", "end"], ["prepare", "begin"], ["stopped", "end"]]) {
      const byHand = run(vmhook, ["hook", "vm2", op!, subop!], domain(), t.root);
      assert.is(byHand.code, 1, `${op}: ${byHand.stderr}`);
      assert.is(
        firstLine(byHand.stderr),
        `vmhook: vmhook hook vm2 ${op} ${subop} refused: the domain XML on stdin has the UUID of vm (${UUID}), not vm2's: the hook would take vm's journal (/run/vmhook/${UUID}.json) for vm2's and act on it`,
      );
      assert.is(t.pool(), 512, op);
      assert.ok(fs.existsSync(t.journal), op);
    }
    // vm2's own XML runs as before (it holds nothing).
    const own = run(vmhook, ["hook", "vm2", "release", "end"], domain(undefined, "vm2").replace(UUID, "d0d0d0d0-0000-4000-8000-0000000000d1"), t.root);
    assert.is(own.code, 0, own.stderr);
    assert.is(t.pool(), 512);
  } finally {
    t.cleanup();
  }
});

test("CLI output into a pipe its reader has closed (vmhook recover | head -1): every VM is still recovered, no stack trace, the command's own exit status", () => {
  const t = tree();
  try {
    const qemu = t.link("hooks/qemu");
    const vmhook = t.link("bin/vmhook");
    const second = "d0d0d0d0-0000-4000-8000-0000000000d1";
    // Two VMs started, then gone without their release (no pid file): recover undoes both.
    for (const [name, xml] of [["vm", domain()], ["vm2", domain(undefined, "vm2").replace(UUID, second)]] as const) {
      for (const event of ["prepare", "started"]) assert.is(run(qemu, [name, event, "begin", "-"], xml, t.root).code, 0);
    }
    assert.is(t.pool(), 1024);
    // The reader closes its end at once; the first line vmhook writes meets a pipe nobody reads.
    const pipeline = '{ "$0" recover; echo "exit $?" >&2; } | { exec 0<&-; }';
    const recovered = spawnSync("sh", ["-c", pipeline, vmhook], { encoding: "utf8", timeout: 20_000, env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", VMHOOK_ROOT: t.root } });
    assert.not.match(recovered.stderr, "EPIPE");
    assert.match(recovered.stderr, /exit 0\n$/, recovered.stderr);
    assert.is(t.pool(), 0);
    assert.equal(fs.readdirSync(path.join(t.root, "run/vmhook")).filter((file) => file.endsWith(".json")), []);
  } finally {
    t.cleanup();
  }
});

test.run();
