// `vmhook bundle` on a simulated desktop host whose files are full of things
// that identify it: the unpacked bundle (unpacked by the real tar) has every
// part, and no hostname, user name, MAC address, serial number or UUID is
// left in it; one value keeps one placeholder across files.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { LOG_LINES, writeBundle } from "../../lib/bundle/collect.ts";
import { newJournal, writeJournal } from "../../lib/journal.ts";
import { desktopHost } from "../helpers/pci-hosts.ts";
import type { SimHost } from "../helpers/simhost.ts";

const HOSTNAME = "atlas-ws";
const FQDN = "atlas-ws.corp.example";
const USERS = ["alice", "bob"];
const MAC = "52:54:00:ab:cd:ef";
const SERIALS = ["PF3XK9QZ", "MB-7788-9911", "S6B0NX0T123456"];
const DOMAIN_UUID = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b";
const SECRETS = [HOSTNAME, FQDN, ...USERS, MAC, MAC.toUpperCase(), MAC.replace(/:/g, "-"), ...SERIALS, DOMAIN_UUID, DOMAIN_UUID.toUpperCase()];

const scratch: string[] = [];
test.after(() => scratch.forEach((dir) => fs.rmSync(dir, { recursive: true, force: true })));

function identifiableHost(): SimHost {
  const sim = desktopHost();
  sim.file("/proc/sys/kernel/hostname", HOSTNAME).file("/etc/hostname", FQDN);
  sim.file("/etc/passwd", ["root:x:0:0:root:/root:/bin/bash", "libvirt-qemu:x:64055:108::/var/lib/libvirt:/usr/sbin/nologin", "alice:x:1000:1000:Alice:/home/alice:/bin/bash", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"].join("\n"));
  sim.dir("/home/alice").dir("/home/bob"); // bob has a home but no passwd line (LDAP)
  sim.file("/sys/class/dmi/id/product_serial", SERIALS[0]).file("/sys/class/dmi/id/board_serial", SERIALS[1]).file("/sys/class/dmi/id/chassis_serial", "To Be Filled By O.E.M.");
  sim.file("/sys/class/nvme/nvme0/serial", SERIALS[2]);
  sim.file("/proc/modules", "vfio_pci 16384 0 - Live 0x0000000000000000\nnvidia 56623104 2 nvidia_drm, Live 0x0000000000000000\n");
  sim.file("/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n');
  sim.file("/proc/version", `Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP ${HOSTNAME}`);
  sim.file("/etc/vmhook/vmhook.json", `{ "plugins": { "vfio": { "displayManagerUnits": ["gdm.service"] } }, "note": "bridge on ${MAC.toUpperCase()}" }`);
  sim.onExec("virsh", () => ({ status: 0, stdout: "9.0.0\n" }));
  writeJournal(sim, newJournal(sim, { name: "win11-alice", uuid: DOMAIN_UUID }));
  const log = Array.from({ length: 600 }, (_, index) => {
    const detail = [`on ${HOSTNAME}`, `user alice started /home/bob/vm.xml`, `nic ${MAC.toUpperCase()}`, `disk serial=${SERIALS[2]}`, `uuid ${DOMAIN_UUID.toUpperCase()}`][index % 5];
    return `2026-11-30T08:00:00.000Z [win11-alice prepare begin] line ${index} ${detail}`;
  });
  sim.file("/var/log/vmhook.log", `${log.join("\n")}\n`);
  return sim;
}

function unpack(bundle: string): Map<string, string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bundle-test-"));
  scratch.push(dir);
  const untar = spawnSync("tar", ["-xzf", bundle, "-C", dir], { encoding: "utf8", timeout: 30_000 });
  assert.is(untar.status, 0, `tar -xzf failed: ${untar.stderr}`);
  const [top] = fs.readdirSync(dir);
  assert.match(top!, /^vmhook-bundle-\d{8}T\d{6}Z$/);
  const files = fs.readdirSync(path.join(dir, top!)).sort();
  return new Map(files.map((file) => [file, fs.readFileSync(path.join(dir, top!, file), "utf8")]));
}

async function bundleOf(sim: SimHost): Promise<string> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bundle-out-"));
  scratch.push(dir);
  return writeBundle(sim, path.join(dir, "bundle.tar.gz"));
}

test("the bundle holds every part the README lists, and none of the host's names, users, MACs, serials or UUIDs", async () => {
  const sim = identifiableHost();
  const bundle = await bundleOf(sim);
  assert.is(fs.statSync(bundle).mode & 0o777, 0o600);
  const files = unpack(bundle);
  assert.equal([...files.keys()], ["README.txt", "cmdline.txt", "doctor.json", "drivers.txt", "hooks.txt", "iommu.json", "journals.json", "settings.json", "versions.txt", "vmhook.log"]);
  const readme = files.get("README.txt")!;
  for (const file of files.keys()) if (file !== "README.txt") assert.match(readme, `  ${file} `);
  assert.not.match(readme, "Could not be read");

  for (const [file, content] of files) {
    for (const secret of SECRETS) assert.not.ok(content.includes(secret), `${file} still holds ${secret}`);
  }
  // what the parts say survives redaction
  assert.match(files.get("drivers.txt")!, "0000:01:00.0  class 030000  10de:2684  IOMMU group 1  driver: nvidia");
  assert.match(files.get("versions.txt")!, "virsh: 9.0.0");
  assert.match(files.get("versions.txt")!, "qemu-system-x86_64: qemu-system-x86_64: not found");
  assert.match(files.get("cmdline.txt")!, "intel_iommu=on iommu=pt");
  assert.ok(JSON.parse(files.get("iommu.json")!).enabled);
  assert.ok(Array.isArray(JSON.parse(files.get("doctor.json")!).host));
  assert.match(files.get("hooks.txt")!, "/etc/libvirt/hooks: qemu");
  sim.cleanup();
});

test("one value keeps one placeholder in every file, whatever its case or separators", async () => {
  const sim = identifiableHost();
  const files = unpack(await bundleOf(sim));
  const placeholder = (file: string, pattern: RegExp) => {
    const found = pattern.exec(files.get(file)!)?.[1];
    assert.ok(found, `${file} has no ${pattern}`);
    return found!;
  };
  const { journals } = JSON.parse(files.get("journals.json")!);
  assert.match(journals[0].domain.uuid, /^<uuid-\d+>$/);
  assert.match(journals[0].domain.name, /^win11-<user-\d+>$/);
  const log = files.get("vmhook.log")!;
  assert.match(log, `uuid ${journals[0].domain.uuid}`);
  assert.match(log, `user ${journals[0].domain.name.slice("win11-".length)} started /home/<user-`);
  assert.match(log, `on ${placeholder("versions.txt", /SMP (<host-\d+>)/)}`);
  assert.match(log, `nic ${placeholder("settings.json", /bridge on (<mac-\d+>)/)}`);
  assert.match(log, /disk serial=<serial-\d+>/);
  sim.cleanup();
});

test(`the log is cut to its last ${LOG_LINES} lines`, async () => {
  const sim = identifiableHost();
  const lines = unpack(await bundleOf(sim)).get("vmhook.log")!.trimEnd().split("\n");
  assert.is(lines.length, LOG_LINES);
  assert.match(lines[0]!, "line 100 ");
  assert.match(lines.at(-1)!, "line 599 ");
  sim.cleanup();
});

test(`after a rotation the story goes on in vmhook.log.1: a log of few lines, or none yet (logrotate leaves it to vmhook to make it at the next event), is completed from there to ${LOG_LINES} lines`, async () => {
  const sim = identifiableHost();
  fs.renameSync(sim.resolve("/var/log/vmhook.log"), sim.resolve("/var/log/vmhook.log.1"));
  sim.file("/var/log/vmhook.log.2.gz", "\x1f\x8b not read");
  let lines = unpack(await bundleOf(sim)).get("vmhook.log")!.trimEnd().split("\n");
  assert.is(lines.length, LOG_LINES, lines[0]);
  assert.match(lines[0]!, "line 100 ");
  assert.match(lines.at(-1)!, "line 599 ");
  sim.file("/var/log/vmhook.log", "2026-12-01T00:00:00.000Z [win11-alice release end] after the rotation\n");
  lines = unpack(await bundleOf(sim)).get("vmhook.log")!.trimEnd().split("\n");
  assert.is(lines.length, LOG_LINES);
  assert.match(lines[0]!, "line 101 ");
  assert.match(lines.at(-2)!, "line 599 ");
  assert.match(lines.at(-1)!, "after the rotation");
  sim.cleanup();
});

test("a symlink planted at vmhook.log.1 is not followed either", async () => {
  const sim = identifiableHost();
  sim.file("/var/log/vmhook.log", "2026-12-01T00:00:00.000Z [win11-alice release end] after the rotation\n");
  sim.file("/etc/shadow", "root:$6$secrethash:19000:0:99999:7:::");
  fs.symlinkSync(sim.resolve("/etc/shadow"), sim.resolve("/var/log/vmhook.log.1"));
  const log = unpack(await bundleOf(sim)).get("vmhook.log")!;
  assert.not.match(log, "secrethash");
  assert.match(log, "unavailable: /var/log/vmhook.log.1 is a symlink, not the log vmhook writes");
  sim.cleanup();
});

test("a log line longer than the part of the log read is left out, never cut into a piece the redaction no longer recognizes", async () => {
  const sim = identifiableHost();
  // The part read is the log's last 4 MiB: here it starts inside the host name of a very long line.
  const after = ` long line\n${"2026-11-30T08:00:00.000Z [win11-alice prepare begin] short line\n".repeat(10)}`;
  const longLine = `2026-11-30T08:00:00.000Z [win11-alice prepare begin] ${"x".repeat(100)} on ${FQDN}`;
  const filler = "y".repeat(4 * 1024 * 1024 + 2 - FQDN.length - after.length);
  sim.file("/var/log/vmhook.log", `${longLine}${filler}${after}`);
  const log = unpack(await bundleOf(sim)).get("vmhook.log")!;
  assert.not.match(log, FQDN.slice(2), "a piece of the host name is left");
  assert.not.match(log, "long line");
  assert.is(log.split("\n")[0], "2026-11-30T08:00:00.000Z [win11-<user-1> prepare begin] short line");
  sim.cleanup();
});

test("a symlink planted at the log's place (others may write /var/log) is not followed: the bundle holds no line of the file it names", async () => {
  const sim = identifiableHost();
  sim.file("/etc/shadow", "root:$6$secrethash:19000:0:99999:7:::");
  fs.rmSync(sim.resolve("/var/log/vmhook.log"));
  fs.symlinkSync(sim.resolve("/etc/shadow"), sim.resolve("/var/log/vmhook.log"));
  const files = unpack(await bundleOf(sim));
  assert.not.match(files.get("vmhook.log")!, "secrethash");
  assert.match(files.get("vmhook.log")!, "unavailable: /var/log/vmhook.log is a symlink, not the log vmhook writes");
  sim.cleanup();
});

test("a part that cannot be read says why inside the bundle; an unreadable user list writes nothing", async () => {
  const sim = identifiableHost();
  fs.rmSync(sim.resolve("/proc/cmdline"));
  const files = unpack(await bundleOf(sim));
  assert.match(files.get("cmdline.txt")!, /^unavailable: cannot read \/proc\/cmdline \(ENOENT\)/);
  assert.match(files.get("README.txt")!, "Could not be read (the file says why):\n  cmdline.txt: cannot read /proc/cmdline (ENOENT)");

  fs.rmSync(sim.resolve("/etc/passwd"));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bundle-out-"));
  scratch.push(dir);
  const output = path.join(dir, "bundle.tar.gz");
  try {
    await writeBundle(sim, output);
    assert.unreachable("a bundle was written without the user list");
  } catch (error) {
    assert.match((error as Error).message, "cannot read /etc/passwd");
    assert.match((error as Error).message, "nothing was written");
  }
  assert.not.ok(fs.existsSync(output));
  sim.cleanup();
});

test("an existing file is never overwritten", async () => {
  const sim = identifiableHost();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bundle-out-"));
  scratch.push(dir);
  const output = path.join(dir, "bundle.tar.gz");
  fs.writeFileSync(output, "keep me");
  try {
    await writeBundle(sim, output);
    assert.unreachable("the bundle overwrote an existing file");
  } catch (error) {
    assert.is((error as Error).message, `${output} exists (EEXIST), and vmhook bundle never overwrites a file: name another with -o FILE, or leave -o out for a new name`);
  }
  assert.is(fs.readFileSync(output, "utf8"), "keep me");
  sim.cleanup();
});

test("-o in a directory that does not exist: the error names the file, the errno and the fix, not a bare ENOENT", async () => {
  const sim = identifiableHost();
  try {
    await writeBundle(sim, "/nonexistent/dir/bundle.tar.gz");
    assert.unreachable("the bundle was written where no directory is");
  } catch (error) {
    assert.is((error as Error).message, "cannot write the bundle to /nonexistent/dir/bundle.tar.gz (ENOENT): with -o FILE, name a file in a directory that exists and you may write");
  }
  sim.cleanup();
});

test.run();
