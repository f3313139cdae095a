// vmhook config / enable / disable under a real libvirtd: the metadata they
// write is what the installed hook reads at `virsh start`, refused edits
// change nothing, and the doubled prefix libvirt stores for a prefixed
// element is caught with a fix that works when run as printed.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import * as assert from "uvu/assert";
import { degradedWin11, NVIDIA_CARD } from "../helpers/degraded-domain.ts";
import { binary, defineDomain, hugepages, journalExists, libvirtSuite, scratchDir, stateFiles, virsh, virshOk } from "./fixture.ts";

const { test, run } = libvirtSuite("libvirt: vmhook config, enable, disable");

const PAGES_OF_64_MIB = 32;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The installed CLI, talking to the test's libvirtd through LIBVIRT_DEFAULT_URI. */
function vmhook(args: string[], options: { input?: string; env?: Record<string, string> } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(binary(), args, { env: { ...process.env, LIBVIRT_DEFAULT_URI: "qemu:///system", ...options.env }, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => (stdout += chunk));
    child.stderr.on("data", (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(options.input ?? "");
  });
}

/** What libvirt stores, as `virsh metadata` shows it (unprefixed), without white space between tags. */
async function storedMetadata(name: string): Promise<string> {
  const result = await virsh("metadata", name, "--uri", "urn:vmhook:1");
  return result.code === 0 ? result.stdout.replace(/>\s+</g, "><").trim() : "";
}

/** An $EDITOR that replaces the file with `content` (and keeps a copy of what it was given). */
function editorScript(name: string, content: string): string {
  const file = path.join(scratchDir(), `editor-${name}.sh`);
  const seen = path.join(scratchDir(), `editor-${name}.seen`);
  fs.writeFileSync(file, `#!/bin/sh\ncp "$1" ${seen}\ncat > "$1" <<'EOF'\n${content}\nEOF\n`, { mode: 0o755 });
  return file;
}

test("enable hugepages size=2M: libvirt stores it unprefixed under the key, and virsh start grows the pool by 32 pages", async () => {
  const domain = await defineDomain("enable", { hugepageBacked: true });
  const enabled = await vmhook(["enable", domain.name, "hugepages", "size=2M"]);
  assert.is(enabled.code, 0, enabled.stderr);
  assert.match(enabled.stdout, `${domain.name}: saved to the persistent definition`);
  assert.match(enabled.stdout, '+  <vmhook:hugepages size="2M"/>');
  assert.is(await storedMetadata(domain.name), '<hooks><hugepages size="2M"/></hooks>');
  const dumped = await virshOk("dumpxml", domain.name);
  assert.match(dumped, '<vmhook:hooks xmlns:vmhook="urn:vmhook:1">');

  const pool = hugepages();
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB);
  assert.ok(journalExists(domain.uuid));
  await virshOk("destroy", domain.name);
  assert.is(hugepages(), pool);

  const disabled = await vmhook(["disable", domain.name, "hugepages"]);
  assert.is(disabled.code, 0, disabled.stderr);
  assert.is(await storedMetadata(domain.name), "", "the metadata is gone once no plugin is left");
  assert.not.match(await virshOk("dumpxml", domain.name), "urn:vmhook:1");
});

test("enable and disable keep the user's comment inside <hooks>: libvirt stores it as vmhook gives it", async () => {
  const domain = await defineDomain("notes", { hooks: '<!-- GPU for gaming --><vmhook:hugepages size="2M"/>' });
  const enabled = await vmhook(["enable", domain.name, "nosleep"]);
  assert.is(enabled.code, 0, enabled.stderr);
  assert.is(await storedMetadata(domain.name), '<hooks><!-- GPU for gaming --><hugepages size="2M"/><nosleep/></hooks>');
  const disabled = await vmhook(["disable", domain.name, "hugepages"]);
  assert.is(disabled.code, 0, disabled.stderr);
  assert.is(await storedMetadata(domain.name), "<hooks><!-- GPU for gaming --><nosleep/></hooks>");
});

test("enable keeps an element that declares a default namespace of its own (xmlns=\"urn:…\") in vmhook's namespace", async () => {
  const domain = await defineDomain("defaultns", { hooks: '<vmhook:hugepages size="2M" xmlns="urn:example:other"/>' });
  const enabled = await vmhook(["enable", domain.name, "nosleep"]);
  assert.is(enabled.code, 0, enabled.stderr);
  assert.is(await storedMetadata(domain.name), '<hooks><hugepages size="2M"/><nosleep/></hooks>');
});

test("config --edit: a valid edit is saved; an invalid one is refused with the reason and the old metadata kept", async () => {
  const domain = await defineDomain("edit", { hooks: '<vmhook:hugepages size="2M"/>' });
  const before = await storedMetadata(domain.name);

  const valid = await vmhook(["config", domain.name, "--edit"], { env: { EDITOR: editorScript("valid", '<hooks><hugepages size="2M" timeout="5"/></hooks>') } });
  assert.is(valid.code, 0, valid.stderr);
  assert.match(fs.readFileSync(path.join(scratchDir(), "editor-valid.seen"), "utf8"), '<vmhook:hugepages size="2M"/>', "the editor got the current metadata");
  assert.match(valid.stdout, '-  <vmhook:hugepages size="2M"/>\n+  <vmhook:hugepages size="2M" timeout="5"/>');
  const saved = await storedMetadata(domain.name);
  assert.is(saved, '<hooks><hugepages size="2M" timeout="5"/></hooks>');
  assert.is.not(saved, before);

  // Not a terminal: no "edit again?" question; the edit is refused and nothing stored.
  const invalid = await vmhook(["config", domain.name, "--edit"], { env: { EDITOR: editorScript("invalid", '<vmhook:hugepages size="3M"/>') } });
  assert.is(invalid.code, 1);
  assert.match(invalid.stderr, 'vmhook: <vmhook:hugepages size="3M">: size="3M" is not a huge page size');
  assert.match(invalid.stderr, `kept the old metadata of ${domain.name}`);
  assert.is(await storedMetadata(domain.name), saved);
});

test("config --edit on a terminal: a refused edit asks, reopens the editor, and the corrected edit is saved", async () => {
  const domain = await defineDomain("edit-again");
  // First save: a size the kernel has no pool for; second save: a good one.
  const counter = path.join(scratchDir(), "edit-again.count");
  const editor = path.join(scratchDir(), "edit-again.sh");
  fs.writeFileSync(editor, `#!/bin/sh\nn=$(cat ${counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > ${counter}\nif [ $n = 1 ]; then echo '<hugepages size="3M"/>' > "$1"; else echo '<hugepages size="2M"/>' > "$1"; fi\n`, { mode: 0o755 });
  // script(1) gives the command a terminal; "y" answers "Edit again?".
  const command = `LIBVIRT_DEFAULT_URI=qemu:///system EDITOR=${editor} ${binary()} config ${domain.name} --edit`;
  const output = await new Promise<{ code: number | null; text: string }>((resolve) => {
    const child = spawn("script", ["-qec", command, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (chunk) => (text += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, text });
    });
    child.stdin.write("y\n");
  });
  assert.is(output.code, 0, output.text);
  assert.match(output.text, 'size="3M" is not a huge page size');
  assert.match(output.text, "Edit again? [Y/n]");
  assert.is(fs.readFileSync(counter, "utf8").trim(), "2", "the editor opened twice");
  assert.is(await storedMetadata(domain.name), '<hooks><hugepages size="2M"/></hooks>');
});

test("config --set - takes the prefixed form users paste; libvirt's own error is avoided", async () => {
  const domain = await defineDomain("set");
  const set = await vmhook(["config", domain.name, "--set", "-"], { input: '<vmhook:hooks xmlns:vmhook="urn:vmhook:1">\n  <vmhook:hugepages size="2M"/>\n</vmhook:hooks>\n' });
  assert.is(set.code, 0, set.stderr);
  assert.is(await storedMetadata(domain.name), '<hooks><hugepages size="2M"/></hooks>');
  const shown = await vmhook(["config", domain.name]);
  assert.is(shown.stdout, '<vmhook:hooks xmlns:vmhook="urn:vmhook:1">\n  <vmhook:hugepages size="2M"/>\n</vmhook:hooks>\n');
});

test("<vmhook:vmhook:hooks> as libvirt stores a prefixed element: virsh start refused with the fix, which works as printed", async () => {
  const domain = await defineDomain("doubled");
  // The mistake README used to teach: a prefixed element given to virsh metadata.
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook:1", "--key", "vmhook", "--set", '<vmhook:hooks><vmhook:hugepages size="2M"/></vmhook:hooks>');
  assert.match(await virshOk("dumpxml", domain.name), "<vmhook:vmhook:hooks");

  const pool = hugepages();
  const started = await virsh("start", domain.name);
  assert.is.not(started.code, 0, "virsh start succeeded with metadata the hook cannot read");
  assert.match(started.stderr, "vmhook: <metadata>: holds <vmhook:vmhook:hooks>: the vmhook: prefix is written twice");
  assert.is(hugepages(), pool);
  assert.not.ok(journalExists(domain.uuid));

  const validated = await vmhook(["validate", "-"], { input: await virshOk("dumpxml", domain.name) });
  assert.is(validated.code, 1);
  const fix = /or: (virsh metadata .*)$/m.exec(validated.stderr)?.[1];
  assert.ok(fix, `no virsh command in: ${validated.stderr}`);
  assert.is(fix, `virsh metadata ${domain.name} --uri urn:vmhook:1 --key vmhook --config --set '<hooks><hugepages size="2M"/></hooks>'`);
  // Run the fix as printed (through a shell, as a user pastes it).
  const fixed = await new Promise<number | null>((resolve) => spawn("sh", ["-c", fix!.replace(/^virsh /, "virsh --connect qemu:///system ")], { stdio: "ignore" }).on("close", resolve));
  assert.is(fixed, 0);
  assert.not.match(await virshOk("dumpxml", domain.name), "vmhook:vmhook:");
  const again = await vmhook(["validate", "-"], { input: await virshOk("dumpxml", domain.name) });
  assert.is(again.code, 0, again.stderr);
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB);
  await virshOk("destroy", domain.name);
  assert.is(hugepages(), pool);
});

test("<hooks> set with virsh metadata under a wrong URI (--uri urn:vmhook --key vm): virsh start refused naming the namespace and the fix, nothing changed; the right URI under --key vm starts with its configuration", async () => {
  const domain = await defineDomain("wrong-uri");
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook", "--key", "vm", "--set", '<hooks><hugepages size="2M"/></hooks>');
  assert.match(await virshOk("dumpxml", domain.name), '<vm:hooks xmlns:vm="urn:vmhook">');

  const [pool, files] = [hugepages(), stateFiles()];
  const started = await virsh("start", domain.name);
  assert.is.not(started.code, 0, "virsh start succeeded without the domain's vmhook configuration");
  assert.match(started.stderr, /exit status 1: vmhook: <vm:hooks>: is in namespace "urn:vmhook", not vmhook's; write <vmhook:hooks xmlns:vmhook="urn:vmhook:1"> there with virsh edit /);
  assert.is((await virshOk("domstate", domain.name)).trim(), "shut off");
  assert.is(hugepages(), pool);
  assert.equal(stateFiles(), files);

  // The same element under vmhook's URI is vmhook's, whatever the prefix.
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook", "--remove");
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook:1", "--key", "vm", "--set", '<hooks><hugepages size="2M"/></hooks>');
  assert.match(await virshOk("dumpxml", domain.name), '<vm:hooks xmlns:vm="urn:vmhook:1">');
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB);
  await virshOk("destroy", domain.name);
  assert.is(hugepages(), pool);
});

test("a second <vmhook:hooks> in one <metadata>: virsh define keeps only the first; vmhook validate on the file refuses it, and its fix stores both as one", async () => {
  const domain = await defineDomain("two-hooks", { hooks: "<vmhook:nosleep/>" });
  const file = path.join(scratchDir(), `${domain.name}-two.xml`);
  fs.writeFileSync(file, (await virshOk("dumpxml", domain.name)).replace("</metadata>", '<v:hooks xmlns:v="urn:vmhook:1"><v:hugepages size="2M"/></v:hooks></metadata>'));
  const validated = await vmhook(["validate", file]);
  assert.is(validated.code, 1, validated.stdout);
  assert.match(validated.stderr, "vmhook: <v:hooks>: is a second element in vmhook's namespace in <metadata>: libvirt keeps only the first (virsh define drops the others)");
  await virshOk("define", file);
  assert.is(await storedMetadata(domain.name), "<hooks><nosleep/></hooks>");

  const fix = /fix: (virsh metadata .*)$/m.exec(validated.stderr)?.[1];
  assert.ok(fix, `no virsh command in: ${validated.stderr}`);
  const fixed = await new Promise<number | null>((resolve) => spawn("sh", ["-c", fix!.replace(/^virsh /, "virsh --connect qemu:///system ")], { stdio: "ignore" }).on("close", resolve));
  assert.is(fixed, 0);
  assert.is(await storedMetadata(domain.name), '<hooks><nosleep/><hugepages size="2M"/></hooks>');
});

test("vmhook config --edit saved unchanged repairs the doubled prefix", async () => {
  const domain = await defineDomain("repair");
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook:1", "--key", "vmhook", "--set", "<vmhook:hooks><vmhook:hugepages/></vmhook:hooks>");
  const shown = await vmhook(["config", domain.name]);
  assert.match(shown.stderr, "libvirt stores this metadata as <vmhook:vmhook:…>");
  const repaired = await vmhook(["config", domain.name, "--edit"], { env: { EDITOR: "true" } });
  assert.is(repaired.code, 0, repaired.stderr);
  assert.match(repaired.stdout, "stored correctly now");
  assert.is(await storedMetadata(domain.name), "<hooks><hugepages/></hooks>");
  assert.not.match(await virshOk("dumpxml", domain.name), "vmhook:vmhook:");
});

test("vmhook config shows a plugin element stored outside <hooks>, and --edit saved unchanged moves it inside", async () => {
  const domain = await defineDomain("stray");
  // The element without <hooks> around it: libvirt stores <vmhook:hugepages> straight in <metadata>.
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook:1", "--key", "vmhook", "--set", '<hugepages size="2M"/>');
  const shown = await vmhook(["config", domain.name]);
  assert.is(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, '<vmhook:hugepages size="2M"/>');
  assert.match(shown.stderr, "libvirt stores <vmhook:hugepages> outside <vmhook:hooks>");
  const repaired = await vmhook(["config", domain.name, "--edit"], { env: { EDITOR: "true" } });
  assert.is(repaired.code, 0, repaired.stderr);
  assert.is(await storedMetadata(domain.name), '<hooks><hugepages size="2M"/></hooks>');
  const validated = await vmhook(["validate", "-"], { input: await virshOk("dumpxml", domain.name) });
  assert.is(validated.code, 0, validated.stderr);
});

test("vmhook install run again changes nothing and does not signal libvirtd", async () => {
  const hook = fs.readFileSync("/etc/libvirt/hooks/qemu");
  const again = await vmhook(["install"]);
  assert.is(again.code, 0, again.stderr);
  assert.is(again.stdout, "/etc/libvirt/hooks/qemu is already this vmhook\nthe hooks are unchanged: libvirt was not signalled\n");
  assert.ok(fs.readFileSync("/etc/libvirt/hooks/qemu").equals(hook));
});

/** A --root tree whose sysfs holds the example's NVIDIA card (this machine has none) and its page sizes. */
function nvidiaRoot(): string {
  const root = path.join(scratchDir(), "nvidia-root");
  for (const device of NVIDIA_CARD) {
    const dir = path.join(root, "sys/bus/pci/devices", device.address);
    fs.mkdirSync(dir, { recursive: true });
    for (const [file, value] of [["class", device.classCode], ["vendor", device.vendor], ["device", device.device]]) fs.writeFileSync(path.join(dir, file!), `${value}\n`);
  }
  for (const size of ["2048kB", "1048576kB"]) fs.mkdirSync(path.join(root, `sys/kernel/mm/hugepages/hugepages-${size}`), { recursive: true });
  // validate checks isolate against the host policy, which reads the online CPUs: the example's 16-CPU host
  fs.mkdirSync(path.join(root, "sys/devices/system/cpu"), { recursive: true });
  fs.writeFileSync(path.join(root, "sys/devices/system/cpu/online"), "0-15\n");
  return root;
}

test("doctor --fix --apply on a copy of the win11 example with the advice undone: libvirt gets every fix, the old XML is kept, and the domain validates", async () => {
  const name = "vmhook-test-win11";
  // TCG here (no /dev/kvm): type qemu; the PCI devices need not exist to define the domain.
  // A VNC password: libvirt leaves it out of dumpxml unless asked with --security-info, so a define from a plain dump would drop it.
  const xml = degradedWin11()
    .replace("<name>win11</name>", `<name>${name}</name>`)
    .replace(/<uuid>[^<]*<\/uuid>/, `<uuid>${randomUUID()}</uuid>`)
    .replace("type='kvm'", "type='qemu'")
    .replace("</devices>", "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cr3tvn'/></devices>");
  const file = path.join(scratchDir(), `${name}.xml`);
  fs.writeFileSync(file, xml);
  await virshOk("define", file);
  const root = nvidiaRoot();
  const old = await virshOk("dumpxml", "--inactive", "--security-info", name);
  assert.match(old, "<memballoon model='virtio'>", "libvirt keeps the balloon the fix removes");
  assert.match(old, "passwd='s3cr3tvn'");
  assert.not.match(await virshOk("dumpxml", "--inactive", name), "s3cr3tvn", "a plain dump leaves the password out");

  const shown = await vmhook(["doctor", "--fix", name, "--root", root]);
  assert.is(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, `--- ${name} (now)\n+++ ${name} (fixed)\n`);
  assert.is(await virshOk("dumpxml", "--inactive", "--security-info", name), old, "--fix alone changes nothing");
  assert.not.match(shown.stdout, "s3cr3tvn", "the diff never shows the password");

  const applied = await vmhook(["doctor", "--fix", "--apply", name, "--root", root]);
  assert.is(applied.code, 0, applied.stderr);
  const backup = /the old XML is in (\S+) /.exec(applied.stdout)?.[1];
  assert.ok(backup, applied.stdout);
  assert.ok(backup!.startsWith(`${root}/`), `the backup is named where it is, under the --root tree: ${backup}`);
  assert.is(fs.readFileSync(backup!, "utf8"), old);

  assert.not.match(applied.stdout, "s3cr3tvn", "the diff never shows the password");
  const now = await virshOk("dumpxml", "--inactive", "--security-info", name);
  assert.match(now, "passwd='s3cr3tvn'", "the domain keeps its VNC password");
  for (const expected of [
    "<hidden state='on'/>",
    "<vendor_id state='on' value='0123456789ab'/>",
    "<target dev='vda' bus='virtio'/>",
    "<model type='virtio'/>",
    "<memballoon model='none'/>",
    "<page size='1048576' unit='KiB'/>",
    "<address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>",
  ]) {
    assert.match(now, expected);
  }
  const validated = await vmhook(["validate", "-", "--root", root], { input: now });
  assert.is(validated.code, 0, validated.stderr);
  assert.match(validated.stdout, `stdin: ok; ${name} runs hugepages, isolate, vfio`);
  const again = await vmhook(["doctor", "--fix", name, "--root", root]);
  assert.is(again.stdout, `${name}: nothing to change in the domain XML\n`);
});

run();
