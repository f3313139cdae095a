// The messages a newcomer meets: usage errors in vmhook's words with the
// command that works, the metadata in whatever form it is pasted, and the
// doubled prefix libvirt stores (<vmhook:vmhook:hooks>) caught with the fix
// in hook mode, once.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { metadataChildren, parseDomain } from "../../lib/domain.ts";
import { ConfigError } from "../../lib/errors.ts";
import { pastedHooks, withVmhookMetadata } from "../../lib/metadata-in-domain.ts";
import { readPastedMetadata, renderHooks, repairDoubledPrefixes } from "../../lib/metadata-text.ts";
import { closest, usageError } from "../../lib/cli/usage.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { SimHost } from "../helpers/simhost.ts";

const COMMANDS = ["config <domain>", "enable <domain> <plugin> [settings..]", "validate <domain>", "status", "doctor [domain]", "plugins"].map((usage) => ({ name: usage.split(" ")[0]!, usage }));

test("usage errors: a typo gets the closest command, missing words and unknown options get the usage", () => {
  assert.is(usageError("Unknown argument: docter", ["docter"], COMMANDS), "docter is not a vmhook command; did you mean vmhook doctor?");
  assert.is(usageError("Unknown argument: stauts", ["--root", "/x", "stauts"], COMMANDS), "stauts is not a vmhook command; did you mean vmhook status?");
  assert.is(closest("lsit", ["status", "plugins"]), undefined, "nothing close: no guess");
  assert.match(usageError("Unknown argument: lsit", ["lsit"], COMMANDS), "lsit is not a vmhook command; the commands are config, enable, validate, status, doctor, plugins");
  assert.is(usageError("Not enough non-option arguments: got 0, need at least 1", ["validate"], COMMANDS), "vmhook validate needs DOMAIN; usage: vmhook validate DOMAIN");
  assert.is(usageError("Not enough non-option arguments: got 1, need at least 2", ["enable", "win11"], COMMANDS), "vmhook enable needs PLUGIN; usage: vmhook enable DOMAIN PLUGIN [SETTINGS …]");
  assert.is(usageError("Not enough non-option arguments: got 1, need at least 2", ["enable", "--config", "--", "-lab"], COMMANDS), "vmhook enable needs PLUGIN; usage: vmhook enable DOMAIN PLUGIN [SETTINGS …]", "after --, -lab is the domain");
  assert.is(usageError("Unknown argument: bogus", ["status", "--bogus"], COMMANDS), "vmhook status has no option --bogus; usage: vmhook status (vmhook status --help lists the options)");
  assert.is(usageError("Unknown argument: extra", ["validate", "a.xml", "extra"], COMMANDS), 'vmhook validate takes no argument "extra" there; usage: vmhook validate DOMAIN');
  assert.is(
    usageError("Not enough non-option arguments: got 0, need at least 1", ["validate", "--frob", "win11.xml"], COMMANDS),
    "vmhook validate has no option --frob, which took win11.xml for its value; usage: vmhook validate DOMAIN (vmhook validate --help lists the options)",
    "an unknown option ate the argument: the option is the mistake, not a missing word",
  );
  assert.is(usageError("name a command", [], COMMANDS), "name a command: config, enable, validate, status, doctor, plugins (vmhook --help says what each does)");
});

const HOOKS = '<vmhook:hooks xmlns:vmhook="urn:vmhook:1">\n  <vmhook:hugepages size="2M"/>\n  <vmhook:plugin name="looking-glass" size="32M"/>\n</vmhook:hooks>';

test("pasted metadata: prefixed or not, with or without <hooks>, <metadata> or the doubled prefix, all read the same", () => {
  const forms = [
    HOOKS,
    '<hooks><hugepages size="2M"/><plugin name="looking-glass" size="32M"/></hooks>',
    '<hooks xmlns="urn:vmhook:1"><hugepages size="2M"/><plugin name="looking-glass" size="32M"/></hooks>',
    '<vmhook:hooks><vmhook:hugepages size="2M"/><vmhook:plugin name="looking-glass" size="32M"/></vmhook:hooks>',
    '<vmhook:hugepages size="2M"/>\n<vmhook:plugin name="looking-glass" size="32M"/>',
    '<hugepages size="2M"/><plugin name="looking-glass" size="32M"/>',
    '<vmhook:vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vmhook:hugepages size="2M"/><vmhook:vmhook:plugin name="looking-glass" size="32M"/></vmhook:vmhook:hooks>',
    `<metadata>${HOOKS}</metadata>`,
    `<?xml version="1.0"?>\n${HOOKS}\n`,
  ];
  for (const form of forms) {
    const nodes = readPastedMetadata(form);
    assert.is(renderHooks(nodes, "domain"), HOOKS, form);
    assert.is(renderHooks(nodes, "virsh", ""), '<hooks><hugepages size="2M"/><plugin name="looking-glass" size="32M"/></hooks>', form);
  }
  assert.equal(readPastedMetadata("  \n"), []);
});

test("the doubled-prefix repair changes element names only: comments, CDATA, processing instructions and attribute values keep <a:b:c> as written", () => {
  const untouched = '<!-- <a:b:c/> --><![CDATA[<a:b:c/>]]><?note <a:b:c/>?>';
  assert.is(repairDoubledPrefixes(`<vmhook:vmhook:hooks note="1>2">${untouched}<vmhook:vmhook:nosleep/></vmhook:vmhook:hooks>`), `<vmhook:hooks note="1>2">${untouched}<vmhook:nosleep/></vmhook:hooks>`);
  assert.is(repairDoubledPrefixes(`<x note='<a:b:c/>'/>`), `<x note='<a:b:c/>'/>`);
  assert.is(repairDoubledPrefixes(`<app:app:x xmlns:app="urn:example:app"/>`), `<app:app:x xmlns:app="urn:example:app"/>`, "another application's element is its own to fix");
  assert.is(repairDoubledPrefixes(`<v:vmhook:hooks xmlns:v="urn:vmhook:1"/>`), `<v:hooks xmlns:v="urn:vmhook:1"/>`, "vmhook's namespace under another --key");
});

test("pasted metadata that is not vmhook's is refused naming the element and the fix", () => {
  assert.throws(() => readPastedMetadata('<x:hooks xmlns:x="urn:vmhook:2"><hugepages/></x:hooks>'), /<x:hooks>: in the vmhook metadata you gave is in namespace "urn:vmhook:2"; vmhook elements are in urn:vmhook:1: write <hooks> or <vmhook:hooks>/);
  assert.throws(() => readPastedMetadata("<hooks><hugepages></hooks>"), /the vmhook metadata you gave is not well-formed XML: .*; write it as <hooks><hugepages size="2M"\/><\/hooks>/);
  assert.throws(() => readPastedMetadata("<hooks/><hooks/>"), /<hooks>: appears 2 times/);
});

const DOMAIN = (metadata: string) => `<domain type='kvm'>\n  <name>win 11</name>\n  <uuid>e0e0e0e0-0000-4000-8000-0000000000e0</uuid>\n  <memory unit='MiB'>64</memory>\n  ${metadata}\n</domain>\n`;
const DOUBLED = '<metadata>\n    <vmhook:vmhook:hooks xmlns:vmhook="urn:vmhook:1">\n      <vmhook:vmhook:hugepages size="2M"/>\n    </vmhook:vmhook:hooks>\n  </metadata>';

test("<vmhook:vmhook:hooks>, as libvirt stores a prefixed element: a ConfigError with the exact virsh command", () => {
  let error: unknown;
  try {
    parseDomain(DOMAIN(DOUBLED), "the domain XML on stdin");
  } catch (caught) {
    error = caught;
  }
  assert.instance(error, ConfigError);
  const { message, lines } = error as ConfigError;
  assert.is(message, "<metadata>: holds <vmhook:vmhook:hooks>: the vmhook: prefix is written twice, so the XML cannot be read; virsh metadata --set/--edit add the prefix from --key themselves and take the element without one");
  assert.equal(lines, [`fix: vmhook config 'win 11' --edit (or --set FILE) accepts it in any form and stores it correctly; or: virsh metadata 'win 11' --uri urn:vmhook:1 --key vmhook --config --set '<hooks><hugepages size="2M"/></hooks>'`]);
});

test("the doubled prefix in a domain whose name libvirt wrote escaped: the fix names the domain as libvirt knows it", () => {
  const xml = DOMAIN(DOUBLED).replace("<name>win 11</name>", "<name>Bob&apos;s &amp; VM</name>");
  const error = (() => {
    try {
      parseDomain(xml);
    } catch (caught) {
      return caught as ConfigError;
    }
  })();
  assert.equal(error?.lines, [`fix: vmhook config 'Bob'\\''s & VM' --edit (or --set FILE) accepts it in any form and stores it correctly; or: virsh metadata 'Bob'\\''s & VM' --uri urn:vmhook:1 --key vmhook --config --set '<hooks><hugepages size="2M"/></hooks>'`]);
});

test("hook mode: another application's element with libvirt's doubled prefix (<app:app:settings>) beside vmhook's: prepare reads the domain and starts it", async () => {
  const sim = new SimHost();
  try {
    sim.dir("/var/log");
    const foreign = '<metadata>\n    <vmhook:hooks xmlns:vmhook="urn:vmhook:1"/>\n    <app:app:settings xmlns:app="urn:example:app" mode="fast"/>\n  </metadata>';
    assert.equal(await runHookEvent(sim, "prepare", "begin", DOMAIN(foreign), "win 11"), { code: 0, stderr: "" });
  } finally {
    sim.cleanup();
  }
});

test("doctor on the doubled prefix: the finding's fix is the exact command, not 'pass the XML from virsh dumpxml'", async () => {
  const sim = new SimHost();
  try {
    const report = await runDoctor(sim, { file: "stdin", xml: DOMAIN(DOUBLED) });
    const [finding] = report.domain!.findings;
    assert.is(finding!.status, "fail");
    assert.match(finding!.reason, "holds <vmhook:vmhook:hooks>");
    assert.is(finding!.fix, `vmhook config 'win 11' --edit (or --set FILE) accepts it in any form and stores it correctly; or: virsh metadata 'win 11' --uri urn:vmhook:1 --key vmhook --config --set '<hooks><hugepages size="2M"/></hooks>'`);
  } finally {
    sim.cleanup();
  }
});

test("hook mode: the doubled prefix refuses prepare with the fix first; the stopped that follows logs no second error", async () => {
  const sim = new SimHost();
  try {
    sim.dir("/var/log");
    const before = sim.snapshot();
    const prepared = await runHookEvent(sim, "prepare", "begin", DOMAIN(DOUBLED), "win 11");
    assert.is(prepared.code, 1);
    assert.match(prepared.stderr.split("\n")[0]!, "vmhook: <metadata>: holds <vmhook:vmhook:hooks>: the vmhook: prefix is written twice");
    assert.match(prepared.stderr, "--set '<hooks><hugepages size=\"2M\"/></hooks>'");
    const stopped = await runHookEvent(sim, "stopped", "end", DOMAIN(DOUBLED), "win 11");
    const released = await runHookEvent(sim, "release", "end", DOMAIN(DOUBLED), "win 11");
    assert.equal([stopped, released], [{ code: 0, stderr: "" }, { code: 0, stderr: "" }]);
    const log = fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8");
    assert.is(log.split("\n").filter((line) => line.includes("written twice")).length, 1, log);
    const after = sim.snapshot();
    delete after["/var/log/vmhook.log"];
    assert.equal(after, before);
  } finally {
    sim.cleanup();
  }
});

test("other prefix mistakes: an undeclared vmhook: prefix and a wrong namespace URI are refused with the fix, never skipped", async () => {
  const sim = new SimHost();
  try {
    const cases: [string, string][] = [
      ["<metadata><vmhook:hooks><vmhook:hugepages/></vmhook:hooks></metadata>", 'vmhook: <vmhook:hooks>: uses the vmhook: prefix without declaring it; write <vmhook:hooks xmlns:vmhook="urn:vmhook:1">'],
      ['<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook"><vmhook:hugepages/></vmhook:hooks></metadata>', 'vmhook: <vmhook:hooks>: is in namespace "urn:vmhook", not vmhook\'s; write <vmhook:hooks xmlns:vmhook="urn:vmhook:1"> there with virsh edit \'win 11\''],
      ['<metadata><hooks xmlns="urn:vmhook:2"><hugepages/></hooks></metadata>', 'vmhook: <hooks>: is in namespace "urn:vmhook:2", not vmhook\'s'],
    ];
    for (const [metadata, expected] of cases) {
      const prepared = await runHookEvent(sim, "prepare", "begin", DOMAIN(metadata), "win 11");
      assert.is(prepared.code, 1, metadata);
      assert.match(prepared.stderr.split("\n")[0]!, expected);
    }
    // someone else's metadata stays someone else's
    assert.is(parseDomain(DOMAIN('<metadata><app:hooks xmlns:app="https://example.org/app"/></metadata>')).metadata, undefined);
  } finally {
    sim.cleanup();
  }
});

test("a plugin element straight in <metadata>, as virsh metadata --set '<hugepages/>' stores it: prepare refused with the exact command, the host untouched", async () => {
  const sim = new SimHost();
  try {
    sim.dir("/var/log");
    const stray = '<metadata>\n    <vmhook:hugepages xmlns:vmhook="urn:vmhook:1" size="2M"/>\n  </metadata>';
    const before = sim.snapshot();
    const prepared = await runHookEvent(sim, "prepare", "begin", DOMAIN(stray), "win 11");
    assert.is(prepared.code, 1, prepared.stderr);
    assert.match(prepared.stderr.split("\n")[0]!, `vmhook: <vmhook:hugepages size="2M">: stands straight in <metadata>, outside <vmhook:hooks>, where vmhook does not read it, so it would never run`);
    assert.match(prepared.stderr, `fix: virsh metadata 'win 11' --uri urn:vmhook:1 --key vmhook --config --set '<hooks><hugepages size="2M"/></hooks>'`);
    const after = sim.snapshot();
    delete after["/var/log/vmhook.log"];
    assert.equal(after, before);
  } finally {
    sim.cleanup();
  }
});

test("a config error of a valid XML is logged once too: at prepare, not again at stopped", async () => {
  const sim = new SimHost();
  try {
    sim.dir("/var/log");
    const xml = DOMAIN('<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepage/></vmhook:hooks></metadata>');
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 1);
    assert.is((await runHookEvent(sim, "stopped", "end", xml)).code, 0);
    const log = fs.readFileSync(sim.resolve("/var/log/vmhook.log"), "utf8");
    assert.is(log.split("\n").filter((line) => line.includes("<vmhook:hugepage>")).length, 1, log);
  } finally {
    sim.cleanup();
  }
});

test("the domain with new metadata: the old element replaced, the rest kept; none removes it", () => {
  const xml = DOMAIN('<metadata><other xmlns="urn:x"/><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata>');
  const changed = withVmhookMetadata(xml, pastedHooks('<hugepages size="2M"/>'));
  const domain = parseDomain(changed);
  assert.equal(metadataChildren(domain.metadata!).map((element) => element.localName), ["hugepages"]);
  assert.match(changed, '<other xmlns="urn:x"/>');
  assert.not.match(changed, "isolate");
  assert.is(parseDomain(withVmhookMetadata(xml, undefined)).metadata, undefined);
  assert.is(parseDomain(withVmhookMetadata(DOMAIN(""), pastedHooks("<isolate/>"))).metadata?.localName, "hooks");
});

const BINARY = fileURLToPath(new URL("../../dist/vmhook", import.meta.url));

test("the built binary: --version from any directory prints package.json's version", () => {
  const version = JSON.parse(fs.readFileSync(fileURLToPath(new URL("../../package.json", import.meta.url)), "utf8")).version;
  const result = spawnSync(BINARY, ["--version"], { cwd: os.tmpdir(), encoding: "utf8", timeout: 20_000 });
  assert.equal([result.status, result.stdout], [0, `${version}\n`]);
});

test("vmhook hook run by hand says what it did, or why it did nothing, on stderr; stdout stays empty", () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-hook-by-hand-"));
  try {
    fs.mkdirSync(path.join(root, "var/log"), { recursive: true });
    const run = (xml: string) => spawnSync(BINARY, ["hook", "vm", "prepare", "begin", "--root", root], { input: xml, encoding: "utf8", timeout: 20_000 });
    const plain = run(DOMAIN(""));
    assert.equal([plain.status, plain.stdout], [0, ""]);
    assert.match(plain.stderr, "vmhook hook: prepare begin of vm exited 0; nothing logged: the domain XML on stdin has no vmhook metadata and holds no journal");
    const bad = run(DOMAIN('<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepage/></vmhook:hooks></metadata>'));
    assert.equal([bad.status, bad.stdout], [1, ""]);
    // the fast path does not skip a vmhook: prefix that lacks its namespace
    const undeclared = run(DOMAIN("<metadata><vmhook:hooks><vmhook:hugepages/></vmhook:hooks></metadata>"));
    assert.equal([undeclared.status, undeclared.stderr.split("\n")[0]], [1, "vmhook: <vmhook:hooks>: uses the vmhook: prefix without declaring it; write <vmhook:hooks xmlns:vmhook=\"urn:vmhook:1\">"]);
    assert.match(bad.stderr, "vmhook hook: prepare begin of vm exited 1; what it did (from /var/log/vmhook.log):\n  [vm prepare begin] error: <vmhook:hugepage>: is not a vmhook element");
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** The built binary run as nobody (which only root can do). */
const asNobody = (args: string[], input = "") => spawnSync(BINARY, args, { uid: 65534, gid: 65534, cwd: "/", input, encoding: "utf8", timeout: 20_000, env: { PATH: process.env.PATH } });

test("the hook run by libvirt's session daemon (as its user, not root): a domain with vmhook metadata fails prepare saying why and what to do, never a bare EACCES; release exits 0; a domain without metadata passes in silence", () => {
  assert.is(process.getuid?.(), 0, "the test runs the binary as nobody, which only root can");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-session-hook-"));
  try {
    fs.chmodSync(dir, 0o755);
    const qemu = path.join(dir, "qemu");
    fs.symlinkSync(BINARY, qemu);
    const asSessionDaemon = (event: string[], input: string) => spawnSync(qemu, ["vm", ...event, "-"], { uid: 65534, gid: 65534, cwd: "/", input, encoding: "utf8", timeout: 20_000, env: { PATH: process.env.PATH } });
    const withMetadata = DOMAIN('<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks></metadata>');
    const why = "vmhook: the hook runs as uid 65534, not as root: libvirt's session daemon (qemu:///session) runs hooks as its own user, and vmhook acts only for the system daemon's domains (qemu:///system); define vm there, or remove its vmhook metadata\n";
    const prepare = asSessionDaemon(["prepare", "begin"], withMetadata);
    assert.equal([prepare.status, prepare.stdout, prepare.stderr], [1, "", why], "prepare");
    const release = asSessionDaemon(["release", "end"], withMetadata);
    assert.equal([release.status, release.stdout, release.stderr], [0, "", why], "release");
    const plain = asSessionDaemon(["prepare", "begin"], DOMAIN(""));
    assert.equal([plain.status, plain.stdout, plain.stderr], [0, "", ""], "a domain without metadata");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the built binary as a user other than root: install, uninstall and hook say up front that they need root and the command to run, never a bare EACCES or a stack trace", () => {
  assert.is(process.getuid?.(), 0, "the test runs the binary as nobody, which only root can");
  const domain = DOMAIN('<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks></metadata>');
  // Run by its path (dist/vmhook before any install), the command to repeat names that path: no vmhook is on PATH yet.
  const cases: [string[], string][] = [
    [["install"], `vmhook: vmhook install must run as root (it writes /etc/libvirt/hooks/qemu and /etc/vmhook), not as uid 65534: run sudo ${BINARY} install\n`],
    [["uninstall"], `vmhook: vmhook uninstall must run as root (it removes /etc/libvirt/hooks/qemu and puts back the hook it replaced), not as uid 65534: run sudo ${BINARY} uninstall\n`],
    [["hook", "vm", "prepare", "begin"], `vmhook: vmhook hook vm prepare begin must run as root (libvirt runs the hook as root, and its steps change the host as root), not as uid 65534: run sudo ${BINARY} hook vm prepare begin\n`],
  ];
  for (const [args, stderr] of cases) {
    const result = asNobody(args, domain);
    assert.equal([result.status, result.stdout, result.stderr], [1, "", stderr], args.join(" "));
  }
  // Found on PATH as vmhook (the installed link), it is vmhook.
  const bin = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-on-path-"));
  try {
    fs.chmodSync(bin, 0o755);
    fs.symlinkSync(BINARY, path.join(bin, "vmhook"));
    const onPath = spawnSync("vmhook", ["install"], { uid: 65534, gid: 65534, cwd: "/", encoding: "utf8", timeout: 20_000, env: { PATH: `${bin}:${process.env.PATH}` } });
    assert.equal([onPath.status, onPath.stderr], [1, "vmhook: vmhook install must run as root (it writes /etc/libvirt/hooks/qemu and /etc/vmhook), not as uid 65534: run sudo vmhook install\n"]);
  } finally {
    fs.rmSync(bin, { recursive: true, force: true });
  }
  // a tree of the user's own under --root is theirs to change
  const tree = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-as-user-"));
  try {
    fs.chownSync(tree, 65534, 65534);
    const result = asNobody(["uninstall", "--root", tree]);
    assert.equal([result.status, result.stderr], [0, ""]);
  } finally {
    fs.rmSync(tree, { recursive: true, force: true });
  }
});

test("the built binary as a user other than root, where only root may read: doctor gives the reason without the advice and the advice as the fix; validate FILE says to run sudo vmhook plan FILE on the host that runs the VM", () => {
  assert.is(process.getuid?.(), 0, "the test runs the binary as nobody, which only root can");
  const tree = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-root-only-"));
  const put = (file: string, text: string, mode = 0o644) => {
    fs.mkdirSync(path.dirname(path.join(tree, file)), { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(tree, file), text, { mode });
  };
  try {
    fs.chmodSync(tree, 0o755);
    // As a host keeps them: the journals' directory and qemu.conf are root's alone.
    fs.mkdirSync(path.join(tree, "run"), { mode: 0o755 });
    fs.mkdirSync(path.join(tree, "run/vmhook"), { mode: 0o700 });
    put("/etc/libvirt/qemu.conf", 'hugetlbfs_mount = "/dev/hugepages"\n', 0o600);
    for (const file of ["nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages", "nr_overcommit_hugepages"]) put(`/sys/kernel/mm/hugepages/hugepages-2048kB/${file}`, "0\n");
    put("/proc/meminfo", "MemTotal: 8000000 kB\nMemFree: 4000000 kB\nMemAvailable: 4000000 kB\nHugepagesize: 2048 kB\n");
    put("/proc/self/mountinfo", "30 1 0:30 / /dev/hugepages rw,relatime shared:10 - hugetlbfs hugetlbfs rw,pagesize=2M\n");
    put("/vm.xml", DOMAIN('<memoryBacking><hugepages/></memoryBacking>\n  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks></metadata>'));
    const file = path.join(tree, "vm.xml");

    const doctor = asNobody(["doctor", file, "--root", tree]);
    assert.match(doctor.stdout, "  fail  leftovers: cannot list /run/vmhook (EACCES)\n        fix: run vmhook as root\n");
    assert.match(doctor.stdout, "  fail  hugepages mount: cannot read /etc/libvirt/qemu.conf (EACCES), so vmhook cannot tell which hugetlbfs mounts libvirt takes 2M pages from\n        fix: run vmhook as root\n");
    assert.not.match(doctor.stdout, /\(EACCES\); /, "no reason carries the advice");

    const validate = asNobody(["validate", file, "--root", tree]);
    assert.equal(
      [validate.status, validate.stdout, validate.stderr],
      [0, `${file}: ok; win 11 runs hugepages\n  the config is valid, but it was NOT checked against this host: journal /run/vmhook/e0e0e0e0-0000-4000-8000-0000000000e0.json cannot be read (EACCES); run sudo ${BINARY} plan ${file} on the host that runs the VM to check it there\n`, ""],
    );
  } finally {
    fs.rmSync(tree, { recursive: true, force: true });
  }
});

/** A virsh on PATH that fails every call with these lines on stderr, as virsh does; `run` runs with it there. */
async function failingVirsh(stderr: string, run: (dir: string) => unknown): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-failing-virsh-"));
  const savedPath = process.env.PATH;
  try {
    fs.chmodSync(dir, 0o755);
    fs.writeFileSync(path.join(dir, "stderr"), stderr, { mode: 0o644 });
    fs.writeFileSync(path.join(dir, "virsh"), `#!/bin/sh\ncat ${dir}/stderr >&2\nexit 1\n`, { mode: 0o755 });
    process.env.PATH = `${dir}:${savedPath}`;
    await run(dir);
  } finally {
    process.env.PATH = savedPath;
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test("a domain named while libvirt's daemon is down: the error says to start it, or to pass the domain's XML as a file", async () => {
  const down = "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\n";
  const saved = { LIBVIRT_DEFAULT_URI: process.env.LIBVIRT_DEFAULT_URI, VIRSH_DEFAULT_CONNECT_URI: process.env.VIRSH_DEFAULT_CONNECT_URI };
  delete process.env.LIBVIRT_DEFAULT_URI;
  delete process.env.VIRSH_DEFAULT_CONNECT_URI;
  const sim = new SimHost();
  sim.file("/etc/libvirt/qemu/win11.xml", "<domain/>");
  try {
    await failingVirsh(down, async () => {
      for (const command of ["validate", "plan", "doctor"]) {
        const { code, stdout, stderr } = await cli([command, "win11", "--root", sim.root]);
        assert.equal([code, stdout], [1, ""], command);
        assert.is(
          stderr,
          "vmhook: virsh dumpxml --inactive -- win11 failed: failed to connect to the hypervisor; Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\n" +
            "  no libvirt daemon answered: start it (service libvirtd start, or virtqemud on hosts with modular daemons)\n" +
            "  or name its XML file in place of the name: /etc/libvirt/qemu/win11.xml holds its definition (readable by root)\n",
          command,
        );
      }
      // Named by its UUID: the file is named after the VM, not after that.
      const uuid = "6f1c2f0e-8a51-4a8e-9f7c-0d3b7c1e2a44";
      const { stderr } = await cli(["validate", uuid, "--root", sim.root]);
      assert.match(stderr, `  or name its XML file in place of the UUID: the file in /etc/libvirt/qemu named after the VM holds its definition (readable by root; grep -l ${uuid} /etc/libvirt/qemu/*.xml finds it)\n`);
      // A name libvirt defines no file for (a typo, a VM not defined yet): no file is promised that is not there.
      const typo = await cli(["validate", "win12", "--root", sim.root]);
      assert.is(typo.code, 1);
      assert.not.match(typo.stderr, "holds its definition");
      assert.match(typo.stderr, "  and no VM of that name is defined on this host (no /etc/libvirt/qemu/win12.xml): check the name (virsh list --all, once libvirt runs)\n");
    });
  } finally {
    for (const [key, value] of Object.entries(saved)) if (value !== undefined) process.env[key] = value;
    sim.cleanup();
  }
});

test("the built binary as a user other than root naming a domain virsh does not find: the error says that virsh read qemu:///session and names --connect qemu:///system", async () => {
  assert.is(process.getuid?.(), 0, "the test runs the binary as nobody, which only root can");
  await failingVirsh("error: failed to get domain 'win11'\n", (dir) => {
    const result = spawnSync(BINARY, ["validate", "win11"], { uid: 65534, gid: 65534, cwd: "/", encoding: "utf8", timeout: 20_000, env: { PATH: `${dir}:${process.env.PATH}`, HOME: "/nonexistent" } });
    assert.equal(
      [result.status, result.stdout, result.stderr],
      [1, "", "vmhook: virsh dumpxml --inactive -- win11 failed: failed to get domain 'win11'\n  as uid 65534, virsh without --connect reads qemu:///session, this user's own VMs: for a VM of the system (virt-manager's), add --connect qemu:///system\n"],
    );
  });
});

test("validate --json (and plan --json) on a config that is not valid prints ok: false (possible: false) with what is wrong, as for one the host refuses; the message stays on stderr", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-validate-json-"));
  try {
    const file = (name: string, xml: string) => (fs.writeFileSync(path.join(dir, name), xml), path.join(dir, name));
    const misspelt = file("misspelt.xml", DOMAIN('<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepage/></vmhook:hooks></metadata>'));
    const wrong = "<vmhook:hugepage>: is not a vmhook element; did you mean <vmhook:hugepages/>?";
    const refused = await cli(["validate", "--json", misspelt, "--root", dir]);
    assert.equal([refused.code, JSON.parse(refused.stdout), refused.stderr], [1, { ok: false, domain: { name: "win 11", uuid: "e0e0e0e0-0000-4000-8000-0000000000e0" }, invalid: wrong }, `vmhook: ${wrong}\n`]);
    const broken = file("broken.xml", "<domain><name>x</name");
    const unparsed = await cli(["validate", "--json", broken, "--root", dir]);
    assert.equal([unparsed.code, JSON.parse(unparsed.stdout)], [1, { ok: false, invalid: `${broken} is not well-formed XML: Expected '>' to end the closing tag but found end of input` }]);
    // plan --json keeps its shape too: nothing possible, and why
    const unplanned = await cli(["plan", "--json", misspelt, "--root", dir]);
    assert.equal([unplanned.code, JSON.parse(unplanned.stdout), unplanned.stderr], [1, { domain: { name: "win 11", uuid: "e0e0e0e0-0000-4000-8000-0000000000e0" }, event: "prepare", steps: [], blocking: [], possible: false, error: wrong }, `vmhook: ${wrong}\n`]);
    assert.equal(JSON.parse((await cli(["plan", "--json", broken, "--event", "release", "--root", dir])).stdout), { event: "release", steps: [], blocking: [], possible: false, error: `${broken} is not well-formed XML: Expected '>' to end the closing tag but found end of input` });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a --root (or VMHOOK_ROOT) that is no directory is refused naming it: status, recover and doctor never report on a tree that is not there as on an empty host", async () => {
  for (const command of [["status"], ["recover"], ["doctor"], ["iommu"]]) {
    const { code, stdout, stderr } = await cli([...command, "--root", "/nonexistent-vmhook-root"]);
    assert.equal([code, stdout, stderr], [1, "", "vmhook: --root /nonexistent-vmhook-root is not a directory (ENOENT): name the tree to treat as the host's /, or leave --root out for this host\n"], command[0]);
  }
  const saved = process.env.VMHOOK_ROOT;
  process.env.VMHOOK_ROOT = "/nonexistent-vmhook-root";
  try {
    const { code, stderr } = await cli(["status"]);
    assert.equal([code, stderr], [1, "vmhook: VMHOOK_ROOT=/nonexistent-vmhook-root is not a directory (ENOENT): name the tree to treat as the host's /, or unset VMHOOK_ROOT for this host\n"]);
  } finally {
    if (saved === undefined) delete process.env.VMHOOK_ROOT;
    else process.env.VMHOOK_ROOT = saved;
  }
});

/** The built binary's --help (yargs' --help ends the process, so not in-process). */
const helpText = (...args: string[]) => spawnSync(BINARY, [...args, "--help"], { encoding: "utf8", timeout: 20_000 }).stdout;

/** The commands vmhook --help lists, each with its arguments as written there ("<domain>", "[settings..]"). */
function commandsInHelp(): { name: string; positionals: string[] }[] {
  const commands = [...helpText().matchAll(/^ {2}vmhook ([a-z]+)((?: [<[][^ ]+)*)/gm)].map((match) => ({ name: match[1]!, positionals: match[2]!.trim().split(" ").filter(Boolean) }));
  assert.ok(commands.length >= 14, `vmhook --help lists ${commands.length} commands`);
  return commands;
}

/** A command's options as its --help lists them: each entry from its name to the next option's, where yargs may have wrapped "[string]". */
function optionsInHelp(command: string): { name: string; alias?: string; value: boolean; choices: boolean }[] {
  return helpText(command)
    .split(/\n(?= +(?:-[a-z], )?--[a-z])/)
    .slice(1)
    .map((entry) => ({ name: `--${/--([a-z-]+)/.exec(entry)![1]}`, alias: /^ +(-[a-z]), --/.exec(entry)?.[1], value: entry.includes("[string]"), choices: entry.includes("[choices:") }));
}

test("an option that takes a value, given none or an empty one, is a usage error naming it: never its default (a bare --root is not this host's /) nor an empty value (-o '' is not the current directory)", async () => {
  const sim = new SimHost();
  const hookRuns: string[][] = [];
  try {
    let checked = 0;
    for (const { name, positionals } of commandsInHelp()) {
      const given = positionals.filter((word) => word.startsWith("<")).map(() => "vm.xml");
      for (const { name: option, alias, value } of optionsInHelp(name)) {
        if (!value) continue;
        const spellings = alias ? [option, alias] : [option];
        // Before the arguments too: "-c= vm.xml" must not take vm.xml for the URI, nor say an argument is missing.
        for (const spelling of spellings) {
          for (const form of [[spelling], [spelling, ""], [`${spelling}=`]]) {
            // A bare option last only: before the arguments it takes the next one for its value.
            const placements = given.length > 0 && form.join("") !== spelling ? [[name, ...given, ...form], [name, ...form, ...given]] : [[name, ...given, ...form]];
            for (const args of placements) {
              const { code, stdout, stderr } = await cli(args, sim, async (argv) => {
                hookRuns.push(argv);
                return 0;
              });
              // named as typed
              assert.equal([code, stdout, stderr.split(";")[0]], [2, "", `vmhook: ${spelling} needs a value`], JSON.stringify(args));
            }
          }
        }
        checked++;
      }
    }
    assert.ok(checked >= 14, `only ${checked} options checked`);
    assert.equal(hookRuns, [], "nothing ran");
  } finally {
    sim.cleanup();
  }
});

test("every kind of usage error ends in the command's usage as its --help lists it: its arguments and its own options (plan: [--event EVENT] [--connect CONNECT])", async () => {
  const sim = new SimHost();
  const hookRuns: string[][] = [];
  try {
    let checked = 0;
    for (const { name, positionals } of commandsInHelp()) {
      const options = optionsInHelp(name).filter((option) => !["--root", "--json", "--version", "--help"].includes(option.name));
      const usage = [
        `vmhook ${name}`,
        ...positionals.map((word) => word.replace(/^<(\w+)>$/, (_, arg: string) => arg.toUpperCase()).replace(/^\[(\w+)(\.\.)?\]$/, (_, arg: string, many?: string) => `[${arg.toUpperCase()}${many ? " …" : ""}]`)),
        ...options.map((option) => `[${option.name}${option.value ? ` ${option.name.slice(2).toUpperCase()}` : ""}]`),
      ].join(" ");
      const required = positionals.filter((word) => word.startsWith("<")).map(() => "vm.xml");
      const mistakes = [
        [name, ...required, "--bogus"],
        ...(required.length > 0 ? [[name]] : []),
        ...(positionals.some((word) => word.endsWith("..]")) ? [] : [[name, ...positionals.map(() => "vm.xml"), "extra"]]),
        ...options.filter((option) => option.value).map((option) => [name, ...required, option.name]),
        ...options.filter((option) => option.choices).map((option) => [name, ...required, option.name, "bogus"]),
      ];
      for (const args of mistakes) {
        const { code, stderr } = await cli(args, sim, async (argv) => {
          hookRuns.push(argv);
          return 0;
        });
        assert.is(code, 2, JSON.stringify(args));
        assert.is(/; usage: (.*?)(?: \(vmhook [a-z]+ --help lists the options\))?\n$/.exec(stderr)?.[1], usage, `${JSON.stringify(args)}: ${stderr}`);
        checked++;
      }
    }
    assert.ok(checked >= 40, `only ${checked} usage errors checked`);
    assert.equal(hookRuns, [], "nothing ran");
  } finally {
    sim.cleanup();
  }
});

test("doctor --apply without --fix, and --fix without a domain, are usage errors (exit 2) naming the command that works; nothing is read or defined", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-doctor-usage-"));
  try {
    const cases: [string[], string][] = [
      [["doctor", "win11", "--apply"], "--apply defines the change --fix shows, so it needs --fix: vmhook doctor win11 --fix --apply; usage: vmhook doctor [DOMAIN] [--fix] [--apply] [--connect CONNECT]"],
      [["doctor", "--apply"], "--apply defines the change --fix shows, so it needs --fix: vmhook doctor VM --fix --apply; usage: vmhook doctor [DOMAIN] [--fix] [--apply] [--connect CONNECT]"],
      [["doctor", "--fix"], "--fix needs a domain: vmhook doctor VM --fix; usage: vmhook doctor [DOMAIN] [--fix] [--apply] [--connect CONNECT]"],
    ];
    for (const [args, message] of cases) {
      const { code, stdout, stderr } = await cli([...args, "--root", dir]);
      assert.equal([code, stdout, stderr], [2, "", `vmhook: ${message}\n`], args.join(" "));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("config, enable and disable given a file (a path with a /, which no libvirt domain name holds) are usage errors (exit 2) saying they take the domain's name and how to get one from the file; virsh is never asked", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-config-usage-"));
  try {
    const advice = (file: string, command: string) =>
      `${file} is a file, not a libvirt domain's name (a name holds no "/"): vmhook ${command} stores the metadata through libvirt, so it takes the name of a defined VM; define one from the file (virsh define ${file}), then name it; vmhook validate ${file} checks the file as it is`;
    const cases: [string[], string, string][] = [
      [["config", "./win11.xml"], advice("./win11.xml", "config"), "vmhook config DOMAIN"],
      [["enable", "/tmp/vm.xml", "hugepages", "size=2M", "--config"], advice("/tmp/vm.xml", "enable"), "vmhook enable DOMAIN PLUGIN [SETTINGS …]"],
      [["disable", "vms/win11", "hugepages"], advice("vms/win11", "disable"), "vmhook disable DOMAIN PLUGIN"],
    ];
    for (const [args, message, usage] of cases) {
      const { code, stdout, stderr } = await cli([...args, "--root", dir, "--connect", "test:///nonexistent"]);
      assert.is(code, 2, `${args.join(" ")}: ${stderr}`);
      assert.is(stdout, "");
      assert.ok(stderr.startsWith(`vmhook: ${message}; usage: ${usage}`), `${args.join(" ")}: ${stderr}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
