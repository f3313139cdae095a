// A directory or link that exists but cannot be read is an unknown, never
// "empty": Host.list and Host.readlink throw for it, and what vmhook decides
// from a listing (who holds the GPU, what shares its IOMMU group, which
// modules use a module) refuses instead of going on from partial knowledge.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { findLeftovers, describeLeftovers } from "../../lib/cli/leftovers.ts";
import { socketOwner } from "../../plugins/forward/listeners.ts";
import { GpuKernel } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { SimHost } from "../helpers/simhost.ts";
import { withLoopTree } from "../helpers/loop-tree.ts";
import { cli } from "../helpers/cli.ts";
import { fakeLibvirt } from "../helpers/fake-virsh.ts";
import { isThisHostsLibvirt } from "../../lib/cli/domain-source.ts";

const UUID = "0b5c64e3-55a1-4b84-9d2b-4e0a3e7d2f77";
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const firstLine = (text: string) => text.split("\n")[0]!;
/** What an EACCES advises: root is denied only by a security module, anyone else should be root. */
const ACCESS_FIX =
  process.getuid?.() === 0 ? "vmhook runs as root, so a security module (AppArmor, SELinux) denies it: look for the denial in journalctl -k" : "run vmhook as root";

const domainXml = (vfio = "<vmhook:vfio/>") => `<domain type='kvm'><name>win11</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${vfio}</vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;

/** An AMD GPU (and its HDMI audio) in a group of their own for the VM, and pid 4242 with its render node open. */
function workstation(): GpuKernel {
  return new GpuKernel()
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, nodes: ["card1", "renderD129"], resetMethod: "bus" })
    .device({ address: AUDIO, classCode: "0x040300", vendor: "0x1002", nativeDriver: "snd_hda_intel", group: 1 })
    .process(4242, "blender", ["/dev/null", "/dev/dri/renderD129"]);
}

// ---- RootedHost on a real file system

test("RootedHost.list: [] only for what does not exist (ENOENT, ENOTDIR); a symlink loop (ELOOP, which root cannot bypass) throws, naming the path and keeping the errno", () => {
  withLoopTree((root, host) => {
  fs.mkdirSync(path.join(root, "dir"));
  fs.writeFileSync(path.join(root, "dir/b"), "");
  fs.writeFileSync(path.join(root, "dir/a"), "");
  fs.writeFileSync(path.join(root, "file"), "");
  assert.equal(host.list("/dir"), ["a", "b"]);
  assert.equal(host.list("/missing"), [], "ENOENT");
  assert.equal(host.list("/file"), [], "ENOTDIR: a file is no directory");
  assert.equal(host.list("/file/below"), [], "ENOTDIR: a path through a file");
  const error = catchError(() => host.list("/loop-a"));
  assert.is((error as NodeJS.ErrnoException).code, "ELOOP");
  assert.match(error.message, "cannot list /loop-a (ELOOP)");
  assert.not.match(error.message, root, "the host path, not the test tree's");
  });
});

test("RootedHost.readlink: undefined only for nothing there or not a symlink (ENOENT, ENOTDIR, EINVAL); a path through a loop throws", () => {
  withLoopTree((root, host) => {
  fs.writeFileSync(path.join(root, "file"), "");
  fs.symlinkSync("/dev/dri/card0", path.join(root, "link"));
  assert.is(host.readlink("/link"), "/dev/dri/card0");
  assert.is(host.readlink("/loop-a"), "loop-b", "readlink does not follow the last component");
  assert.is(host.readlink("/missing"), undefined, "ENOENT");
  assert.is(host.readlink("/file"), undefined, "EINVAL: not a symlink");
  assert.is(host.readlink("/file/below"), undefined, "ENOTDIR");
  const error = catchError(() => host.readlink("/loop-a/fd"));
  assert.is((error as NodeJS.ErrnoException).code, "ELOOP");
  assert.match(error.message, "cannot read the link /loop-a/fd (ELOOP)");
  });
});

test("SimHost keeps the same contract: a simulated EACCES throws with its code, a simulated ENOENT is []", () => {
  const sim = new SimHost().dir("/proc/7/fd").link("/proc/7/fd/0", "/dev/null");
  try {
    sim.failList("/proc/7/fd", "EACCES").failReadlink("/proc/7/fd/0", "EIO");
    const listed = catchError(() => sim.list("/proc/7/fd"));
    assert.equal([(listed as NodeJS.ErrnoException).code, listed.message], ["EACCES", `cannot list /proc/7/fd (EACCES); ${ACCESS_FIX}`]);
    assert.is((catchError(() => sim.readlink("/proc/7/fd/0")) as NodeJS.ErrnoException).code, "EIO");
    sim.clearFailures();
    sim.failList("/proc/7/fd", "ENOENT");
    assert.equal(sim.list("/proc/7/fd"), [], "a process that exited meanwhile has no files");
  } finally {
    sim.cleanup();
  }
});

// ---- vfio: refusals before anything changes

test("vfio: a process whose /proc/PID/fd cannot be read (EACCES: an LSM, or vmhook not root) refuses prepare, naming the pid, its command and the fix; the host unchanged", async () => {
  const kernel = workstation();
  kernel.process(4300, "steam", ["/dev/null"]);
  kernel.sim.failList("/proc/4300/fd", "EACCES");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml());
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), `cannot tell which files pid 4300 (steam) has open: cannot list /proc/4300/fd (EACCES); ${ACCESS_FIX}`);
  assert.match(result.stderr, "the host was left as it was");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
  assert.is(kernel.driverOf(GPU), "amdgpu");
});

test("vfio: a descriptor link that cannot be read refuses too; a process gone meanwhile (ENOENT) does not", async () => {
  const kernel = workstation();
  kernel.process(4300, "steam", ["/dev/null"]).process(4301, "exited", ["/dev/null"]);
  kernel.sim.failList("/proc/4301/fd", "ENOENT").failReadlink("/proc/4300/fd/0", "EACCES");
  const before = kernel.sim.snapshot();
  const refused = await runHookEvent(kernel.sim, "prepare", "begin", domainXml());
  assert.is(refused.code, 1);
  assert.match(firstLine(refused.stderr), `cannot tell which files pid 4300 (steam) has open: cannot read the link /proc/4300/fd/0 (EACCES); ${ACCESS_FIX}`);
  assert.equal(kernel.sim.snapshot(), before);

  // Without the unreadable link the refusal is the real holder, blender.
  kernel.sim.clearFailures();
  kernel.sim.failList("/proc/4301/fd", "ENOENT");
  const held = await runHookEvent(kernel.sim, "prepare", "begin", domainXml());
  assert.match(firstLine(held.stderr), "the GPU is in use: pid 4242 (blender) holds /dev/dri/renderD129");
});

test("vfio: an IOMMU group whose devices cannot be listed refuses, rather than counting the group as the GPU's alone", async () => {
  const kernel = workstation();
  kernel.sim.remove("/proc/4242");
  kernel.sim.failList("/sys/kernel/iommu_groups/1/devices", "EIO");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml());
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "cannot list /sys/kernel/iommu_groups/1/devices (EIO)");
  assert.equal(kernel.sim.snapshot(), before);
  assert.is(kernel.driverOf(GPU), "amdgpu");
});

test("vfio: a module whose holders cannot be listed refuses, rather than unloading it as if nothing used it", async () => {
  const kernel = workstation();
  kernel.sim.remove("/proc/4242");
  kernel.sim.failList("/sys/module/amdgpu/holders", "EIO");
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", domainXml('<vmhook:vfio unload-modules="amdgpu"/>'));
  assert.is(result.code, 1);
  assert.match(firstLine(result.stderr), "cannot list /sys/module/amdgpu/holders (EIO)");
  assert.equal(kernel.sim.snapshot(), before);
  assert.ok(kernel.loaded("amdgpu"));
});

// Only root can run the binary as another user: as one, this test is reported skipped, not passed.
const asRoot = process.getuid?.() === 0 ? test : test.skip;
if (process.getuid?.() !== 0) console.log("unreadable.test.ts: not root, so no other uid can be taken to meet a real EACCES; 1 test skipped");

asRoot("vmhook plan run as a user, not root: a real EACCES on a root-only /proc/PID/fd refuses, naming the pid, its command and run as root", () => {
  const binary = path.resolve(import.meta.dirname, "../../dist/vmhook");
  if (!fs.existsSync(binary) && spawnSync("npm", ["run", "--silent", "build"], { cwd: path.dirname(path.dirname(binary)), stdio: "inherit" }).status !== 0) throw new Error("npm run build failed");
  const kernel = workstation();
  kernel.sim.remove("/proc/4242");
  kernel.process(4300, "steam", ["/dev/null"]);
  // Readable to the user but that one process's descriptors, as /proc shows root's processes to a user.
  fs.chmodSync(kernel.sim.root, 0o755);
  fs.chmodSync(kernel.sim.resolve("/proc/4300/fd"), 0o500);
  const before = kernel.sim.snapshot();
  const plan = (uid: number) =>
    spawnSync(binary, ["plan", "-", "--root", kernel.sim.root], { input: domainXml(), encoding: "utf8", uid, gid: uid, timeout: 20_000, env: { PATH: "/usr/bin:/bin", LC_ALL: "C" } });
  try {
    const user = plan(65534);
    assert.equal([user.status, user.stdout], [1, ""]);
    assert.is(firstLine(user.stderr), "vmhook: cannot tell which files pid 4300 (steam) has open: cannot list /proc/4300/fd (EACCES); run vmhook as root");
    const root = plan(0);
    assert.is(root.status, 0, root.stderr);
    assert.match(root.stdout, `bind ${GPU} to vfio-pci (from amdgpu)`);
    assert.equal(kernel.sim.snapshot(), before);
  } finally {
    kernel.sim.cleanup();
  }
});

// ---- descriptions that may stay best-effort, but say what they could not read

test("forward: the owner of a taken port is named; processes whose files cannot be read are said, not passed over", () => {
  const sim = new SimHost().file("/proc/10/comm", "sshd").dir("/proc/10/fd").link("/proc/10/fd/3", "socket:[777]").file("/proc/11/comm", "nginx").dir("/proc/11/fd");
  try {
    assert.is(socketOwner(sim, 777), "sshd (pid 10)");
    sim.failList("/proc/10/fd", "EACCES");
    assert.is(socketOwner(sim, 777), `an unknown process (socket inode 777; cannot tell which files pid 10 (sshd) has open: cannot list /proc/10/fd (EACCES); ${ACCESS_FIX})`);
    sim.failList("/proc/11/fd", "EACCES");
    assert.match(socketOwner(sim, 777), "; 2 processes could not be read, e.g. cannot tell which files pid 10 (sshd) has open");
  } finally {
    sim.cleanup();
  }
});

test("uninstall's leftovers: an unreadable /etc/libvirt/qemu or state directory is named, not shown as empty", () => {
  const sim = new SimHost().dir("/etc/libvirt/qemu").dir("/run/vmhook").file("/run/vmhook/x.json", "{}");
  try {
    sim.failList("/etc/libvirt/qemu", "EIO").failList("/run/vmhook", "EIO");
    const lines = describeLeftovers(findLeftovers(sim), false);
    assert.ok(lines.includes("left /run/vmhook: journals and host state, maybe: it could not be listed (EIO) (it goes at the next boot: /run is a tmpfs)"), lines.join("\n"));
    assert.ok(lines.includes("could not read /etc/libvirt/qemu (EIO): check by hand whether the domains there still carry vmhook metadata or <hugepages/> backing"), lines.join("\n"));
  } finally {
    sim.cleanup();
  }
});

// ---- validate says when it could not check the host

test("validate: a valid config that cannot be checked on this host is ok (exit 0) and says it was NOT checked, why, and vmhook plan", async () => {
  const sim = new SimHost().file("/vm.xml", domainXml());
  try {
    // A bare root: the GPU is not on this machine, so the dry run fails.
    const text = await cli(["validate", sim.resolve("/vm.xml"), "--root", sim.root]);
    assert.is(text.code, 0, text.stderr);
    const lines = text.stdout.trimEnd().split("\n");
    assert.is(lines[0], `${sim.resolve("/vm.xml")}: ok; win11 runs vfio`);
    assert.match(lines[1]!, `the config is valid, but it was NOT checked against this host: vfio: PCI device ${GPU} does not exist on this host`);
    assert.match(lines[1]!, `; run vmhook plan ${sim.resolve("/vm.xml")} on the host that runs the VM to check it there`);
    const json = JSON.parse((await cli(["validate", "--json", sim.resolve("/vm.xml"), "--root", sim.root])).stdout);
    assert.equal([json.ok, json.hostChecked], [true, false]);
    assert.match(json.notChecked, `NOT checked against this host: vfio: PCI device ${GPU} does not exist on this host`);
  } finally {
    sim.cleanup();
  }
});

test("validate of a domain read from this host's libvirt (no URI, qemu:///system): a planning error is what prepare would refuse here, exit 1; read from another host's libvirt it stays NOT checked", async () => {
  const sim = new SimHost();
  const libvirt = fakeLibvirt("win11", domainXml());
  const savedUri = process.env.LIBVIRT_DEFAULT_URI;
  try {
    delete process.env.LIBVIRT_DEFAULT_URI;
    // A typo in the hostdev, on the host that runs the VM: prepare refuses it there.
    const reason = `vfio: PCI device ${GPU} does not exist on this host; fix the <hostdev> address or devices= (lspci -D lists the devices)`;
    // A session daemon's domain is not planned here at all (session-domains.test.ts).
    for (const connect of [[], ["--connect", "qemu:///system"]]) {
      const text = await cli(["validate", "win11", ...connect, "--root", sim.root]);
      assert.equal([text.code, text.stdout], [1, `domain win11: valid, but prepare would refuse it on this host:\n  ${reason}\n`], connect.join(" "));
      const json = JSON.parse((await cli(["validate", "--json", "win11", ...connect, "--root", sim.root])).stdout);
      assert.equal([json.ok, json.refused], [false, [reason]], connect.join(" "));
    }
    const remote = await cli(["validate", "win11", "--connect", "qemu+ssh://server/system", "--root", sim.root]);
    assert.is(remote.code, 0, remote.stdout);
    assert.match(remote.stdout, `the config is valid, but it was NOT checked against this host: ${reason}`);
    process.env.LIBVIRT_DEFAULT_URI = "qemu+ssh://server/system";
    assert.is((await cli(["validate", "win11", "--root", sim.root])).code, 0, "LIBVIRT_DEFAULT_URI names another host");
  } finally {
    if (savedUri === undefined) delete process.env.LIBVIRT_DEFAULT_URI;
    else process.env.LIBVIRT_DEFAULT_URI = savedUri;
    libvirt.cleanup();
    sim.cleanup();
  }
});

test("which libvirt virsh reaches without --connect: VIRSH_DEFAULT_CONNECT_URI, then LIBVIRT_DEFAULT_URI, then uri_default in libvirt.conf; one naming another host is not this host's", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-libvirt-conf-"));
  const conf = path.join(dir, "libvirt.conf");
  const saved = { LIBVIRT_DEFAULT_URI: process.env.LIBVIRT_DEFAULT_URI, VIRSH_DEFAULT_CONNECT_URI: process.env.VIRSH_DEFAULT_CONNECT_URI };
  try {
    delete process.env.LIBVIRT_DEFAULT_URI;
    delete process.env.VIRSH_DEFAULT_CONNECT_URI;
    assert.ok(isThisHostsLibvirt(undefined, conf), "no libvirt.conf: virsh's own default, this host");
    fs.writeFileSync(conf, '#uri_default = "qemu:///system"\nuri_default = "qemu+ssh://server/system"\n');
    assert.not.ok(isThisHostsLibvirt(undefined, conf), "uri_default names another host");
    assert.ok(isThisHostsLibvirt("qemu:///system", conf), "--connect comes first");
    process.env.LIBVIRT_DEFAULT_URI = "qemu:///system";
    assert.ok(isThisHostsLibvirt(undefined, conf), "LIBVIRT_DEFAULT_URI before uri_default");
    process.env.VIRSH_DEFAULT_CONNECT_URI = "qemu+tcp://server/system";
    assert.not.ok(isThisHostsLibvirt(undefined, conf), "virsh's VIRSH_DEFAULT_CONNECT_URI before LIBVIRT_DEFAULT_URI");
    delete process.env.LIBVIRT_DEFAULT_URI;
    delete process.env.VIRSH_DEFAULT_CONNECT_URI;
    fs.writeFileSync(conf, "uri_default = 'qemu:///system'\n");
    assert.ok(isThisHostsLibvirt(undefined, conf), "uri_default names this host's QEMU");
    fs.rmSync(conf);
    fs.mkdirSync(conf);
    assert.match(catchError(() => isThisHostsLibvirt(undefined, conf)).message, `cannot read ${conf} (EISDIR), so which libvirt virsh reaches without --connect is unknown; pass --connect qemu:///system, or the URI of the VM's host`);
  } finally {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("enable through another host's libvirt: a plan this host cannot make is no refusal, the element is stored and said NOT checked, as validate says; through this host's libvirt nothing is stored", async () => {
  const sim = new SimHost();
  const libvirt = fakeLibvirt("win11", domainXml(""));
  const reason = `vfio: PCI device ${GPU} does not exist on this host`;
  try {
    const local = await cli(["enable", "win11", "vfio", "--connect", "qemu:///system", "--root", sim.root]);
    assert.is(local.code, 1, local.stdout);
    assert.match(local.stderr, reason);
    assert.not.match(libvirt.xml("config"), "<vmhook:vfio", "refused here: nothing stored");
    const remote = await cli(["enable", "win11", "vfio", "--connect", "qemu+ssh://server/system", "--root", sim.root]);
    assert.is(remote.code, 0, remote.stderr);
    assert.match(remote.stderr, `vmhook: warning: NOT checked against this host: ${reason}`);
    assert.match(remote.stderr, "; run vmhook plan win11 on the host that runs the VM to check it there");
    assert.match(libvirt.xml("config"), "<vmhook:vfio/>");
    const json = JSON.parse((await cli(["disable", "--json", "win11", "vfio", "--connect", "qemu+ssh://server/system", "--root", sim.root])).stdout);
    assert.equal([json.changed, json.notChecked], [true, undefined], "nothing left to plan");
  } finally {
    libvirt.cleanup();
    sim.cleanup();
  }
});

test("validate: a config checked on this host says nothing more, and --json says hostChecked", async () => {
  const kernel = workstation();
  kernel.sim.remove("/proc/4242");
  kernel.sim.file("/vm.xml", domainXml());
  const text = await cli(["validate", kernel.sim.resolve("/vm.xml"), "--root", kernel.sim.root]);
  assert.equal([text.code, text.stdout], [0, `${kernel.sim.resolve("/vm.xml")}: ok; win11 runs vfio\n`], text.stderr);
  const json = JSON.parse((await cli(["validate", "--json", kernel.sim.resolve("/vm.xml"), "--root", kernel.sim.root])).stdout);
  assert.equal([json.ok, json.hostChecked, json.notChecked], [true, true, undefined]);
});

function catchError(run: () => unknown): Error {
  try {
    run();
  } catch (error) {
    return error as Error;
  }
  throw new Error("expected an error");
}

test.run();
