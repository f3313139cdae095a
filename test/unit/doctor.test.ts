// `vmhook doctor` on simulated hosts shaped like real ones, with and without a domain.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { runDoctor, type Finding } from "../../lib/diagnostics/doctor.ts";
import { readIommuGroups } from "../../lib/diagnostics/iommu.ts";
import type { SimHost } from "../helpers/simhost.ts";
import { mdevHostdevXml } from "../helpers/mdev-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { addDriverModule, addPciDevice, desktopHost, gvtLaptopHost, iommuOffHost, sharedGroupHost } from "../helpers/pci-hosts.ts";

const BINARY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../dist/vmhook");
const UUID = "3f0a4c7e-2b1d-4e8f-9a6c-5d7e8f9a0b1c";

interface DomainOptions {
  memory?: string;
  current?: string;
  metadata?: string;
  devices?: string;
  extra?: string;
}

function domainXml({ memory = "<memory unit='GiB'>8</memory>", current = "", metadata = "", devices = "", extra = "" }: DomainOptions = {}): string {
  return `<domain type='kvm'><name>win</name><uuid>${UUID}</uuid>${memory}${current}<vcpu>4</vcpu>${extra}
  <devices>${devices}</devices>
  <metadata><vmhook:hooks xmlns:vmhook='urn:vmhook:1'>${metadata}</vmhook:hooks></metadata></domain>`;
}

const hostdev = (bus: string, fn: string) => `<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='${bus}' slot='0x00' function='${fn}'/></source></hostdev>`;
const GPU_AND_AUDIO = hostdev("0x01", "0x0") + hostdev("0x01", "0x1");
const GOOD_FEATURES = "<features><hyperv><vendor_id state='on' value='0123456789ab'/></hyperv><kvm><hidden state='on'/></kvm></features>";
const VIRTIO_DEVICES = "<disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk><disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk><interface type='network'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/></interface>";

async function doctor(sim: SimHost, xml?: string) {
  const report = await runDoctor(sim, xml === undefined ? undefined : { file: "win.xml", xml });
  const find = (findings: Finding[], check: string) => {
    const found = findings.filter((finding) => finding.check === check);
    if (found.length !== 1) throw new Error(`expected one "${check}" finding, got ${JSON.stringify(findings.map((f) => f.check))}`);
    return found[0]!;
  };
  return {
    report,
    host: (check: string) => find(report.host, check),
    domain: (check: string) => find(report.domain!.findings, check),
    statuses: (findings: Finding[]) => Object.fromEntries(findings.map((finding) => [finding.check, finding.status])),
  };
}

test("host checks on a healthy desktop: all ok", async () => {
  const sim = desktopHost();
  const { report, statuses, host } = await doctor(sim);
  assert.equal(statuses(report.host), { iommu: "ok", "vfio modules": "ok", hugepages: "ok", "cgroup v2 cpuset": "ok", "libvirt hook": "ok", "qemu.conf": "ok", leftovers: "ok", "host policy": "ok", "host settings": "ok" });
  assert.is(host("iommu").reason, "enabled: 3 IOMMU groups (vmhook iommu lists them)");
  assert.match(host("vfio modules").reason, "available (loaded: vfio; the rest load when a device is handed over)");
  assert.match(host("hugepages").reason, "pools 2M: 0 reserved, 0 free; 1G: 0 reserved, 0 free; free memory node 0");
  sim.cleanup();
});

test("vfio modules: a kernel with iommufd as its VFIO IOMMU backend and no vfio_iommu_type1 passes, as prepare accepts it; one with neither fails for a passthrough domain", async () => {
  const sim = desktopHost();
  try {
    const depFile = "/lib/modules/6.1.0-18-amd64/modules.dep";
    const withoutType1 = sim.read(depFile).replace("kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko", "kernel/drivers/iommu/iommufd/iommufd.ko:");
    sim.file(depFile, withoutType1);
    const xml = domainXml({ devices: GPU_AND_AUDIO });
    const iommufd = (await doctor(sim, xml)).host("vfio modules");
    assert.is(iommufd.status, "ok", iommufd.reason);
    assert.match(iommufd.reason, "available (loaded: vfio; the rest load when a device is handed over)");
    sim.file(depFile, withoutType1.replace("kernel/drivers/iommu/iommufd/iommufd.ko:\n", "").replace("vfio.ko: kernel/drivers/iommu/iommufd/iommufd.ko", "vfio.ko:"));
    const neither = (await doctor(sim, xml)).host("vfio modules");
    assert.is(neither.status, "fail");
    assert.match(neither.reason, "a VFIO IOMMU backend (vfio_iommu_type1 or iommufd) not found for kernel 6.1.0-18-amd64");
  } finally {
    sim.cleanup();
  }
});

test("host checks: missing vfio modules, cgroup v1, no hook, a leftover journal, an unsafe plugin", async () => {
  const sim = desktopHost();
  fs.rmSync(sim.resolve("/lib/modules"), { recursive: true });
  fs.rmSync(sim.resolve("/sys/module/vfio"), { recursive: true });
  fs.rmSync(sim.resolve("/sys/fs/cgroup/cgroup.controllers"));
  fs.rmSync(sim.resolve("/etc/libvirt/hooks/qemu"));
  sim.file(`/run/vmhook/${UUID}.json`, JSON.stringify({ version: 1, domain: { name: "old-vm", uuid: UUID }, phase: "running", pid: 1, createdAt: "", updatedAt: "", entries: [{ plugin: "hugepages", event: "prepare", description: "grow", undo: { action: "x" }, state: "applied", at: "" }] }));
  sim.file("/etc/vmhook/plugins.d/loose", "#!/bin/sh\n");
  fs.chmodSync(sim.resolve("/etc/vmhook/plugins.d"), 0o755);
  fs.chmodSync(sim.resolve("/etc/vmhook/plugins.d/loose"), 0o777);
  const { report, host } = await doctor(sim);
  assert.equal([host("vfio modules").status, host("cgroup v2 cpuset").status, host("libvirt hook").status, host("leftovers").status, host("custom plugins").status], ["warn", "warn", "warn", "warn", "warn"]);
  assert.match(host("vfio modules").reason, "vfio, vfio_pci, a VFIO IOMMU backend (vfio_iommu_type1 or iommufd) not found for kernel 6.1.0-18-amd64");
  assert.is(host("libvirt hook").fix, "run vmhook install");
  assert.is(host("leftovers").reason, "old-vm is not running but its journal in /run/vmhook still holds 1 change(s)");
  assert.is(host("leftovers").fix, "run vmhook recover old-vm");
  assert.match(host("custom plugins").reason, "loose: /etc/vmhook/plugins.d/loose has mode 0777");
  assert.not.ok(report.host.some((finding) => finding.status === "fail"), "nothing here fails without a domain that needs it");
  sim.cleanup();
});

test("leftovers: /run/vmhook that others can write or another user owns fails, as every prepare and vmhook recover refuse it; its journals are not taken for vmhook's", async () => {
  const sim = desktopHost();
  try {
    sim.file(`/run/vmhook/${UUID}.json`, JSON.stringify({ version: 1, domain: { name: "planted", uuid: UUID }, phase: "running", pid: 1, createdAt: "", updatedAt: "", entries: [] }));
    for (const [change, problem] of [
      [() => fs.chmodSync(sim.resolve("/run/vmhook"), 0o777), "/run/vmhook has mode 0777"],
      [() => fs.chownSync(sim.resolve("/run/vmhook"), 1000, 1000), "/run/vmhook is owned by uid 1000, not root"],
    ] as const) {
      fs.chmodSync(sim.resolve("/run/vmhook"), 0o700);
      fs.chownSync(sim.resolve("/run/vmhook"), 0, 0);
      change();
      const { host } = await doctor(sim);
      assert.is(host("leftovers").status, "fail");
      assert.match(host("leftovers").reason, `${problem}; whoever could write it may have put files there`);
      assert.match(host("leftovers").reason, "remove it (rm -r /run/vmhook)");
      assert.not.match(host("leftovers").reason, "planted");
    }
    assert.is(fs.statSync(sim.resolve("/run/vmhook")).uid, 1000, "doctor changes nothing");
  } finally {
    sim.cleanup();
  }
});

test("desktop + GPU domain: isolated group; advice on memoryBacking, currentMemory, NVIDIA, disks and NICs", async () => {
  const sim = desktopHost();
  const xml = domainXml({
    current: "<currentMemory unit='GiB'>4</currentMemory>",
    metadata: "<vmhook:hugepages/>",
    devices: `${GPU_AND_AUDIO}<disk type='file' device='disk'><target dev='sda' bus='sata'/></disk><interface type='network'><mac address='52:54:00:aa:bb:cc'/><model type='e1000e'/></interface>`,
  });
  const { report, domain, statuses } = await doctor(sim, xml);
  assert.equal(statuses(report.domain!.findings), {
    config: "ok",
    hugepages: "ok",
    "hostdev 0000:01:00.0": "ok",
    "hostdev 0000:01:00.1": "ok",
    memoryBacking: "warn",
    currentMemory: "warn",
    nvidia: "warn",
    disks: "warn",
    nics: "warn",
  });
  assert.is(domain("hostdev 0000:01:00.0").reason, "01:00.0 (VGA compatible controller) is in IOMMU group 1 with nothing the VM does not get; on nvidia now");
  assert.is(domain("hugepages").reason, "4096 × 2M pages (8G) fit in the free memory on the host (19531M)");
  assert.match(domain("memoryBacking").fix!, "add <memoryBacking><hugepages/></memoryBacking>");
  assert.match(domain("currentMemory").reason, "<currentMemory> (4G) is below <memory> (8G) with a VFIO device");
  assert.match(domain("nvidia").reason, "NVIDIA GPU 01:00.0 without <kvm><hidden state='on'/> and a <hyperv><vendor_id>: drivers older than 465 stop with Error 43");
  assert.is(domain("disks").reason, "sda on sata: emulated controllers are much slower than virtio");
  assert.is(domain("nics").reason, "52:54:00:aa:bb:cc model e1000e: an emulated NIC is much slower than virtio");

  const fixed = await doctor(sim, domainXml({ metadata: "<vmhook:hugepages/>", extra: `<memoryBacking><hugepages/></memoryBacking>${GOOD_FEATURES}`, devices: GPU_AND_AUDIO + VIRTIO_DEVICES }));
  assert.equal(Object.values(fixed.statuses(fixed.report.domain!.findings)).filter((status) => status !== "ok"), []);
  assert.is(fixed.domain("nvidia").reason, "NVIDIA GPU 01:00.0: KVM hidden and a Hyper-V vendor_id set");
  sim.cleanup();
});

test("desktop, GPU without its audio function, handed over by <vmhook:vfio> (include-slot): a warning to add it", async () => {
  const sim = desktopHost();
  const { domain } = await doctor(sim, domainXml({ metadata: "<vmhook:vfio/>", devices: hostdev("0x01", "0x0") }));
  assert.is(domain("hostdev 0000:01:00.0").status, "warn");
  assert.is(domain("hostdev 0000:01:00.0").reason, "01:00.1 (Audio device) on the same card is not in the domain: the host loses it too, but the VM cannot use it");
  sim.cleanup();
});

// Only vfio's include-slot takes a card's other functions; else the audio function stays on snd_hda_intel in the
// GPU's group: prepare refuses (vfio), or QEMU cannot open a group that is not viable (libvirt's managed='yes').
for (const [how, metadata] of [["include-slot=\"no\"", '<vmhook:vfio include-slot="no"/>'], ["no <vmhook:vfio> (libvirt's managed='yes' alone)", ""]] as const) {
  test(`desktop, GPU without its audio function, ${how}: the hostdev check fails, naming the function that stays behind, as prepare refuses`, async () => {
    const sim = desktopHost();
    const xml = domainXml({ metadata, devices: hostdev("0x01", "0x0") });
    const { domain } = await doctor(sim, xml);
    assert.is(domain("hostdev 0000:01:00.0").status, "fail");
    assert.is(domain("hostdev 0000:01:00.0").reason, "IOMMU group 1 also holds 01:00.1 (Audio device) on snd_hda_intel, which vfio does not accept beside a device passed through; VFIO takes the whole group from the host");
    // vfio's own problem (plan marks its steps) only for a device it hands over
    assert.is(domain("hostdev 0000:01:00.0").plugin, metadata ? "vfio" : undefined);
    if (metadata) {
      const prepared = await runHookEvent(sim, "prepare", "begin", xml, "win");
      assert.is(prepared.code, 1);
      assert.match(prepared.stderr.split("\n")[0]!, "IOMMU group 1 holds 0000:01:00.0 and also 0000:01:00.1 (class 0x040300, driver snd_hda_intel)");
    }
    sim.cleanup();
  });
}

test("a single-GPU guide's per-VM scripts (qemu.d/VM/prepare/begin/start.sh, release/end/revert.sh) that the hook vmhook install kept still dispatches: a warning naming them, for a VM vfio hands the GPU over for", async () => {
  const sim = desktopHost();
  const xml = domainXml({ metadata: "<vmhook:vfio/>", devices: GPU_AND_AUDIO });
  const script = (file: string, text: string) => fs.chmodSync(sim.file(file, text).resolve(file), 0o755);
  const hasCheck = async () => (await doctor(sim, xml)).report.domain!.findings.some((finding) => finding.check === "hook scripts");
  script("/etc/libvirt/hooks/qemu.d/win/prepare/begin/start.sh", "#!/bin/bash\nsystemctl stop display-manager.service\n");
  script("/etc/libvirt/hooks/qemu.d/win/release/end/revert.sh", "#!/bin/bash\nsystemctl start display-manager.service\n");
  assert.not.ok(await hasCheck(), "no hook dispatches them: nothing runs them");
  script("/etc/libvirt/hooks/qemu.vmhook-saved", '#!/bin/bash\nHOOKPATH="$(dirname $0)/qemu.d/$1/$2/$3"\n');
  const { domain } = await doctor(sim, xml);
  assert.is(domain("hook scripts").status, "warn");
  assert.is(
    domain("hook scripts").reason,
    "/etc/libvirt/hooks/qemu.d/win/prepare/begin/start.sh, /etc/libvirt/hooks/qemu.d/win/release/end/revert.sh run at this VM's events too, through /etc/libvirt/hooks/qemu.vmhook-saved (the hook vmhook install kept): after vmhook's prepare they stop, unbind and wait again, an error of theirs fails the start, and they act again after vmhook's release",
  );
  assert.is(domain("hook scripts").fix, "remove /etc/libvirt/hooks/qemu.d/win: vmhook hands this VM's GPU over");
  sim.cleanup();
});

test("shared group behind a root port: the hostdev fails, naming the device it shares with", async () => {
  const sim = sharedGroupHost();
  const { domain, report } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }));
  assert.is(domain("hostdev 0000:01:00.0").status, "fail");
  assert.is(domain("hostdev 0000:01:00.0").reason, "IOMMU group 5 also holds 02:00.0 (Non-Volatile memory controller) on nvme, which vfio does not accept beside a device passed through; VFIO takes the whole group from the host");
  assert.match(domain("hostdev 0000:01:00.0").fix!, "move the card to a slot with its own IOMMU group");
  assert.ok(report.domain!.findings.some((finding) => finding.status === "fail"));
  sim.cleanup();
});

test("a device vfio hands over from devices= without a <hostdev> has its IOMMU group checked as prepare checks it", async () => {
  const sim = sharedGroupHost();
  try {
    const { domain } = await doctor(sim, domainXml({ metadata: `<vmhook:vfio devices="0000:01:00.0"/>` }));
    const finding = domain("vfio device 0000:01:00.0");
    assert.is(finding.status, "fail");
    assert.is(finding.plugin, "vfio");
    assert.is(finding.reason, "IOMMU group 5 also holds 02:00.0 (Non-Volatile memory controller) on nvme, which vfio does not accept beside a device passed through; VFIO takes the whole group from the host");
  } finally {
    sim.cleanup();
  }
});

test("an SR-IOV VF in the GPU's IOMMU group given to the VM as <interface type='hostdev' managed='yes'>: the VM's own, not a member the VM does not get, as prepare counts it", async () => {
  const sim = desktopHost();
  try {
    addPciDevice(sim, { address: "0000:03:02.1", classCode: "0x020000", vendor: "0x8086", device: "0x154c", driver: "iavf", group: 1 });
    const nic = "<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x03' slot='0x02' function='0x1'/></source></interface>";
    const { domain } = await doctor(sim, domainXml({ metadata: "<vmhook:vfio/>", devices: GPU_AND_AUDIO + nic }));
    const finding = domain("hostdev 0000:01:00.0");
    assert.is(finding.status, "ok", finding.reason);
    assert.is(finding.reason, "01:00.0 (VGA compatible controller) is in IOMMU group 1 with nothing the VM does not get; on nvidia now; prepare moves it to vfio-pci");
  } finally {
    sim.cleanup();
  }
});

const STAYS_VIABLE = "nothing to do while it stays with no driver or on vfio-pci, pci-stub, pcieport or a vfio-pci variant driver (its module uses vfio_pci_core); any other driver that takes it before the VM starts makes prepare refuse";

// The rule prepare uses (viableBeside): a device of the group the VM does not get is fine with no driver or on a
// driver that manages DMA itself; on any other driver prepare refuses, and so does doctor.
for (const [driver, status] of [[undefined, "warn"], ["vfio-pci", "warn"], ["pci-stub", "warn"], ["nvme", "fail"]] as const) {
  test(`a second NVMe drive ${driver ? `on ${driver}` : "with no driver"} in the GPU's IOMMU group: the hostdev check says ${status}, as prepare ${status === "fail" ? "refuses" : "goes on"}`, async () => {
    const sim = desktopHost();
    addPciDevice(sim, { address: "0000:03:00.0", classCode: "0x010802", vendor: "0x144d", device: "0xa808", driver, group: 1 });
    const { domain } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }));
    const finding = domain("hostdev 0000:01:00.0");
    assert.is(finding.status, status);
    if (status === "fail") {
      assert.is(finding.reason, "IOMMU group 1 also holds 03:00.0 (Non-Volatile memory controller) on nvme, which vfio does not accept beside a device passed through; VFIO takes the whole group from the host");
      assert.match(finding.fix!, "give the VM those devices too, or move the card to a slot with its own IOMMU group");
    } else {
      assert.is(finding.reason, `IOMMU group 1 also holds 03:00.0 (Non-Volatile memory controller) ${driver ? `on ${driver}` : "with no driver"}, which the VM does not get: vfio accepts it beside the device passed through as it is, but no host driver can take it while the VM runs`);
      assert.match(finding.fix!, STAYS_VIABLE);
    }
    sim.cleanup();
  });
}

// A vfio-pci variant driver (its module uses vfio_pci_core) manages DMA itself: accepted beside the GPU, as prepare does.
for (const [uses, status] of [[["vfio_pci_core"], "warn"], [[], "fail"]] as const) {
  test(`a network VF on mlx5_vfio_pci in the GPU's IOMMU group, its module ${uses.length > 0 ? "a user" : "no user"} of vfio_pci_core: the hostdev check says ${status}, and vmhook iommu's viableBeside agrees`, async () => {
    const sim = desktopHost();
    addPciDevice(sim, { address: "0000:03:00.2", classCode: "0x020000", vendor: "0x15b3", device: "0x101e", driver: "mlx5_vfio_pci", group: 1 });
    addDriverModule(sim, "mlx5_vfio_pci", "mlx5_vfio_pci", [...uses]);
    const { domain } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }));
    assert.is(domain("hostdev 0000:01:00.0").status, status);
    assert.match(domain("hostdev 0000:01:00.0").reason, "03:00.2 (Ethernet controller) on mlx5_vfio_pci");
    // The fix names the rule prepare goes by: the variant driver it is on now is one prepare accepts.
    if (status === "warn") assert.match(domain("hostdev 0000:01:00.0").fix!, STAYS_VIABLE);
    const member = readIommuGroups(sim).groups.find((group) => group.id === "1")!.devices.find((device) => device.address === "0000:03:00.2")!;
    assert.is(member.viableBeside, status === "warn");
    sim.cleanup();
  });
}

// vfio gives a group to one VM: a member on vfio-pci whose /dev/vfio/N another VM's QEMU holds makes prepare refuse (refuseGroupsInUse), and doctor with it.
for (const holder of ["another VM", "this VM", "this VM (libvirt lost track of it)", "none"] as const) {
  test(`a USB controller on vfio-pci in the GPU's IOMMU group, ${holder === "none" ? "its group held by no process" : `its /dev/vfio/1 held by ${holder}'s QEMU`}: the hostdev check says ${holder === "another VM" ? "fail, in prepare's words" : "warn"}`, async () => {
    const sim = desktopHost();
    addPciDevice(sim, { address: "0000:00:14.0", classCode: "0x0c0330", vendor: "0x8086", device: "0xa36d", driver: "vfio-pci", group: 1 });
    const qemu = holder === "this VM" ? process.pid : 900;
    if (holder !== "none") sim.file(`/proc/${qemu}/comm`, "qemu-system-x86").link(`/proc/${qemu}/fd/0`, "/dev/vfio/1");
    // libvirt's pid file of the domain doctor checks: its own QEMU holding its group is no other VM.
    if (holder === "this VM") sim.file("/run/libvirt/qemu/win.pid", String(qemu));
    // No pid file (a libvirtd that crashed), but its -uuid: the domain's own QEMU all the same, as recover and status count it.
    if (holder === "this VM (libvirt lost track of it)") sim.file(`/proc/${qemu}/cmdline`, `/usr/bin/qemu-system-x86_64\0-name\0guest=win\0-uuid\0${UUID}\0`);
    const finding = (await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }))).domain("hostdev 0000:01:00.0");
    if (holder === "another VM") {
      assert.is(finding.status, "fail");
      assert.is(finding.reason, "IOMMU group 1 (0000:01:00.0, 0000:01:00.1) is in use by another VM: pid 900 (qemu-system-x86) holds /dev/vfio/1, with 0000:00:14.0 on vfio-pci");
      assert.is(finding.fix, "a group goes to one VM at a time: shut that VM down first");
    } else {
      assert.is(finding.status, "warn");
      assert.match(finding.reason, "00:14.0 (USB controller) on vfio-pci, which the VM does not get");
    }
    sim.cleanup();
  });
}

test("the GPU's group held by this VM's QEMU run as its <seclabel model='dac'> user, libvirt having lost track of it: the hostdev check takes it for the VM's own, as release does, not another VM's", async () => {
  const sim = desktopHost();
  try {
    addPciDevice(sim, { address: "0000:00:14.0", classCode: "0x0c0330", vendor: "0x8086", device: "0xa36d", driver: "vfio-pci", group: 1 });
    sim.file("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nqemu:x:107:107::/:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n").file("/etc/libvirt/qemu.conf", 'user = "qemu"\n');
    sim.process(900, ["/usr/bin/qemu-system-x86_64", "-name", "guest=win", "-uuid", UUID], { uid: 1000 }).file("/proc/900/comm", "qemu-system-x86").link("/proc/900/fd/0", "/dev/vfio/1");
    const xml = domainXml({ devices: GPU_AND_AUDIO }).replace("</domain>", "<seclabel type='static' model='dac' relabel='yes'><label>alice:alice</label></seclabel></domain>");
    const finding = (await doctor(sim, xml)).domain("hostdev 0000:01:00.0");
    assert.equal([finding.status, finding.reason.includes("in use by another VM")], ["warn", false], finding.reason);
    // Without that seclabel, alice's process with the VM's -uuid is no QEMU libvirt runs for it: another VM's, as prepare counts it.
    assert.is((await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }))).domain("hostdev 0000:01:00.0").status, "fail");
  } finally {
    sim.cleanup();
  }
});

test("a root port on shpchp in the GPU's group: the hostdev fails on kernel 6.1, as prepare refuses it, naming the bridge, its driver and how to free it; ok before 5.19", async () => {
  const sim = desktopHost("shpchp");
  const { domain } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }));
  assert.is(domain("hostdev 0000:01:00.0").status, "fail");
  assert.is(domain("hostdev 0000:01:00.0").reason, "IOMMU group 1 also holds bridge 00:01.0 on shpchp, which vfio does not accept beside a device passed through: the group is not viable");
  assert.is(domain("hostdev 0000:01:00.0").fix, "unbind it from shpchp (echo 0000:00:01.0 > /sys/bus/pci/drivers/shpchp/unbind) or let pcieport drive it");
  sim.file("/proc/sys/kernel/osrelease", "5.15.0-91-generic");
  assert.is((await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }))).domain("hostdev 0000:01:00.0").status, "ok");
  sim.cleanup();
});

test("IOMMU off: a host warning without a domain, a failure with a passthrough domain", async () => {
  const sim = iommuOffHost();
  assert.is((await doctor(sim)).host("iommu").status, "warn");
  const { host, domain } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO }));
  assert.is(host("iommu").status, "fail");
  assert.match(host("iommu").fix!, "boot with intel_iommu=on iommu=pt");
  assert.is(domain("hostdev 0000:01:00.0").status, "fail");
  assert.match(domain("hostdev 0000:01:00.0").reason, "has no IOMMU group: the IOMMU is off");
  assert.is(domain("hostdev 0000:01:00.1").status, "fail");
  sim.cleanup();
});

test("laptop with GVT-g: the mdev type is offered; a type it does not offer or has no instance left fails", async () => {
  const sim = gvtLaptopHost();
  const devices = mdevHostdevXml("4b20d080-1b54-4048-85b3-a6a62d165c01");
  const check = async (attributes: string) => (await doctor(sim, domainXml({ devices, metadata: `<vmhook:mdev ${attributes}/>` }))).domain(`mdev ${/type="([^"]*)"/.exec(attributes)![1]}`);
  const offered = await check('parent="0000:00:02.0" type="i915-GVTg_V5_4"');
  assert.equal([offered.status, offered.reason], ["ok", "0000:00:02.0 offers i915-GVTg_V5_4: 1 instance(s) available"]);
  const found = await check('type="i915-GVTg_V5_8"');
  assert.equal([found.status, found.reason], ["ok", "0000:00:02.0 offers i915-GVTg_V5_8: 2 instance(s) available"]);
  const missing = await check('parent="00:02.0" type="i915-GVTg_V5_1"');
  assert.equal([missing.status, missing.reason], ["fail", '<vmhook:mdev parent="00:02.0" type="i915-GVTg_V5_1">: type i915-GVTg_V5_1 is not offered by 0000:00:02.0; choose one of i915-GVTg_V5_4, i915-GVTg_V5_8']);
  sim.file("/sys/bus/pci/devices/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4/available_instances", 0);
  const full = await check('parent="0000:00:02.0" type="i915-GVTg_V5_4"');
  assert.equal([full.status, full.reason.split(";")[0]], ["fail", '<vmhook:mdev parent="0000:00:02.0" type="i915-GVTg_V5_4">: no i915-GVTg_V5_4 instance is left on 0000:00:02.0 (available_instances is 0)']);
  const desktop = desktopHost();
  const none = (await doctor(desktop, domainXml({ devices, metadata: '<vmhook:mdev type="i915-GVTg_V5_4"/>' }))).domain("mdev i915-GVTg_V5_4");
  assert.equal([none.status, none.fix], ["fail", "GVT-g needs an Intel GPU of Broadwell to Comet Lake, and this host has no Intel GPU; for NVIDIA vGPU install its host driver"]);
  desktop.cleanup();
  sim.cleanup();
});

// GVT-g exists only for Broadwell to Comet Lake (i915's intel_gvt.c): the advice for a host without mdev parents
// names only the steps still missing on a GPU that has it, and on one that has not, what may work instead.
const NO_GVT_G = "0000:00:02.0 (8086:9a49 TigerLake-LP GT2 [Iris Xe Graphics]) has no GVT-g (Intel GPUs have it from Broadwell to Comet Lake only): pass the whole GPU through instead, or on Tiger Lake and newer (Gen12) use SR-IOV virtual functions with a driver that supports them; for NVIDIA vGPU install its host driver";
for (const [gpu, enableGvt, kvmgt, fix] of [
  ["0x9a49", "Y", true, NO_GVT_G],
  ["0x9a49", "N", false, NO_GVT_G],
  ["0x3ea0", "N", false, "for Intel GVT-g on 0000:00:02.0 (8086:3ea0 WhiskeyLake-U GT2 [UHD Graphics 620]): boot with i915.enable_gvt=1 and load kvmgt (see docs/mdev.md); for NVIDIA vGPU install its host driver"],
  ["0x3ea0", "Y", false, "for Intel GVT-g on 0000:00:02.0 (8086:3ea0 WhiskeyLake-U GT2 [UHD Graphics 620]): load kvmgt (see docs/mdev.md); for NVIDIA vGPU install its host driver"],
  ["0x3ea0", "Y", true, "i915.enable_gvt is Y and kvmgt is loaded, yet 0000:00:02.0 (8086:3ea0 WhiskeyLake-U GT2 [UHD Graphics 620]) offers no mdev types: i915 did not start GVT-g on it (dmesg | grep -i gvt says why); for NVIDIA vGPU install its host driver"],
] as const) {
  test(`no mdev parent, Intel GPU ${gpu}, i915.enable_gvt ${enableGvt}, kvmgt ${kvmgt ? "loaded" : "not loaded"}: the advice is true for the host`, async () => {
    const sim = desktopHost();
    addPciDevice(sim, { address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", device: gpu, driver: "i915", group: 3 });
    sim.file("/sys/module/i915/parameters/enable_gvt", enableGvt);
    if (kvmgt) sim.dir("/sys/module/kvmgt");
    const finding = (await doctor(sim, domainXml({ devices: mdevHostdevXml("4b20d080-1b54-4048-85b3-a6a62d165c01"), metadata: '<vmhook:mdev type="i915-GVTg_V5_4"/>' }))).domain("mdev i915-GVTg_V5_4");
    assert.is(finding.status, "fail");
    assert.is(finding.fix, fix);
    assert.is(finding.reason, `<vmhook:mdev type="i915-GVTg_V5_4">: this host has no mdev parent device (/sys/class/mdev_bus is empty); ${fix}`, "prepare's reason, with the same advice");
    sim.cleanup();
  });
}

test("mdev: values from the XML are checked before any path use, as the plugin checks them", async () => {
  const sim = gvtLaptopHost();
  const mdev = async (attributes: string) => (await doctor(sim, domainXml({ metadata: `<vmhook:mdev ${attributes}/>` }))).domain("mdev i915-GVTg_V5_4");
  // /sys/bus/mdev/devices/../../../../etc exists: unchecked, it read as an existing mdev
  const uuid = await mdev('type="i915-GVTg_V5_4" uuid="../../../../etc"');
  assert.equal([uuid.status, uuid.reason], ["fail", '<vmhook:mdev type="i915-GVTg_V5_4" uuid="../../../../etc">: uuid="../../../../etc" is not a UUID; write it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (uuidgen makes one)']);
  const parent = await mdev('type="i915-GVTg_V5_4" parent="../../../../etc"');
  assert.equal(parent.status, "fail");
  assert.match(parent.reason, 'parent="../../../../etc" is neither a PCI address');
  sim.cleanup();
});

test("vgpu: the VF's creatable types, through the plugin's own checks", async () => {
  const sim = desktopHost();
  const vf = "0000:41:00.4";
  sim.dir(`/sys/devices/pci0000:40/${vf}`).link(`/sys/bus/pci/devices/${vf}`, `../../../devices/pci0000:40/${vf}`);
  sim.file(`/sys/devices/pci0000:40/${vf}/nvidia/creatable_vgpu_types`, "ID    : vGPU Name\n1433 : NVIDIA L40S-12Q\n").file(`/sys/devices/pci0000:40/${vf}/nvidia/current_vgpu_type`, 0);
  const check = async (type: string) => (await doctor(sim, domainXml({ metadata: `<vmhook:vgpu vf="${vf}" type="${type}"/>`, devices: hostdev("0x41", "0x4").replace("managed='yes'", "managed='no'") }))).domain(`vgpu ${vf}`);
  const good = await check("L40S-12Q");
  assert.equal([good.status, good.reason], ["ok", `${vf} can carry vGPU type 1433 (NVIDIA L40S-12Q)`]);
  const bad = await check("L40S-48Q");
  assert.equal(bad.status, "fail");
  assert.match(bad.reason, `vGPU type "L40S-48Q" cannot be created on ${vf} now; creatable now: 1433 (NVIDIA L40S-12Q)`);
  sim.cleanup();
});

test("hugepages: more than the machine can give fails (no boot reservation suggested), page cache to drop warns, a missing 1G pool fails", async () => {
  const sim = desktopHost();
  const big = await doctor(sim, domainXml({ memory: "<memory unit='GiB'>30</memory>", metadata: "<vmhook:hugepages/>", extra: "<memoryBacking><hugepages/></memoryBacking>" }));
  assert.equal(
    [big.domain("hugepages").status, big.domain("hugepages").reason],
    ["fail", "15360 pages of 2M (30720 MiB) for the 2M pool cannot fit: the host has 25390 MiB available and keeps 1600 MiB free, so it can give 23790 MiB"],
  );
  assert.match(big.domain("hugepages").fix!, "the host has 32000 MiB in all and can never give this: give the VM less <memory> (at most 30400 MiB here)");
  assert.not.match(big.domain("hugepages").fix!, "hugepagesz=");
  sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { hugepages: { minFreeMiB: 0 } } }));
  const noFloor = await doctor(sim, domainXml({ memory: "<memory unit='GiB'>24</memory>", metadata: "<vmhook:hugepages/>", extra: "<memoryBacking><hugepages/></memoryBacking>" }));
  assert.equal(noFloor.domain("hugepages").status, "warn", "with no floor, 24 GiB of the 25390 MiB available fit once the cache is dropped");
  fs.rmSync(sim.resolve("/etc/vmhook/vmhook.json"));
  const tight = await doctor(sim, domainXml({ memory: "<memory unit='GiB'>22</memory>", metadata: "<vmhook:hugepages/>", extra: "<memoryBacking><hugepages/></memoryBacking>" }));
  assert.is(tight.domain("hugepages").status, "warn");
  assert.match(tight.domain("hugepages").fix!, "reserve them at boot instead: add hugepagesz=2M hugepages=11264 to ");
  fs.rmSync(sim.resolve("/sys/kernel/mm/hugepages/hugepages-1048576kB"), { recursive: true });
  const noPool = await doctor(sim, domainXml({ metadata: '<vmhook:hugepages size="1G"/>', extra: "<memoryBacking><hugepages/></memoryBacking>" }));
  assert.equal([noPool.domain("hugepages").status, noPool.domain("hugepages").fix], ["fail", 'use size="2M": 1G pages need a CPU with pdpe1gb']);
  sim.cleanup();
});

test("hugepages: a size= other than the host's default for memory without a <page size> fails, as prepare refuses it", async () => {
  const sim = desktopHost();
  const bare = await doctor(sim, domainXml({ metadata: '<vmhook:hugepages size="1G"/>', extra: "<memoryBacking><hugepages/></memoryBacking>" }));
  const mismatch = bare.domain("hugepages page size");
  assert.equal(
    [mismatch.status, mismatch.reason],
    ["fail", "this host's default huge page size is 2M (Hugepagesize in /proc/meminfo), which libvirt uses for guest memory that <memoryBacking><hugepages> gives no <page size>, while vmhook would reserve 1G pages for it"],
  );
  assert.match(mismatch.fix!, 'add <page size="1048576" unit="KiB"/> to <memoryBacking><hugepages> (virsh edit); or reserve pages of the default size: size="2M" on <vmhook:hugepages>');
  const declared = await doctor(sim, domainXml({ metadata: '<vmhook:hugepages size="1G"/>', extra: "<memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>" }));
  assert.not.ok(declared.report.domain!.findings.some((finding) => finding.check === "hugepages page size"));
  sim.cleanup();
});

test("hugepages: <numatune><memory placement='auto'> binding the VM to numad's nodes fails on a host of several nodes, as prepare refuses it", async () => {
  const sim = desktopHost();
  const xml = domainXml({ metadata: "<vmhook:hugepages/>", extra: "<memoryBacking><hugepages/></memoryBacking><numatune><memory mode='strict' placement='auto'/></numatune>" });
  const placement = (report: Awaited<ReturnType<typeof doctor>>) => report.report.domain!.findings.find((finding) => finding.check === "hugepages NUMA placement");
  assert.is(placement(await doctor(sim, xml)), undefined, "one node: the global pool is that node's");
  sim.dir("/sys/devices/system/node/node1");
  const twoNodes = placement(await doctor(sim, xml))!;
  assert.equal([twoNodes.status, twoNodes.reason.split(":")[0]], ["fail", "<numatune><memory placement='auto'>"]);
  assert.match(twoNodes.fix!, "name the nodes: <numatune><memory mode='strict' nodeset='0'/> (virsh edit)");
  sim.cleanup();
});

test("isolate: CPUs pinned but offline fail; online ones are ok and the host's share is named", async () => {
  const sim = desktopHost();
  const pins = (cpus: number[]) => `<cputune>${cpus.map((cpu, vcpu) => `<vcpupin vcpu='${vcpu}' cpuset='${cpu}'/>`).join("")}</cputune>`;
  const good = await doctor(sim, domainXml({ metadata: "<vmhook:isolate/>", extra: pins([4, 5, 6, 7]) }));
  assert.equal([good.domain("isolate").status, good.domain("isolate").reason], ["ok", "VM CPUs 4-7 are online; the host keeps 0-3"]);
  const bad = await doctor(sim, domainXml({ metadata: "<vmhook:isolate/>", extra: pins([6, 7, 8, 9]) }));
  assert.equal([bad.domain("isolate").status, bad.domain("isolate").reason], ["fail", "CPU 8-9 is pinned or named in host-cpus but not online (online: 0-7)"]);
  sim.cleanup();
});

test("isolate: CPUs isolated at boot (isolcpus=) are not named as the host's, and pins leaving the host only those fail, as prepare refuses them", async () => {
  const sim = desktopHost().file("/sys/devices/system/cpu/isolated", "2-5");
  const pins = "<cputune><vcpupin vcpu='0' cpuset='6'/><vcpupin vcpu='1' cpuset='7'/></cputune>";
  const good = await doctor(sim, domainXml({ metadata: "<vmhook:isolate/>", extra: pins }));
  assert.equal([good.domain("isolate").status, good.domain("isolate").reason], ["ok", "VM CPUs 6-7 are online; the host keeps 0-1 (CPU 2-5 isolated at boot by isolcpus=, where the host never runs)"]);
  const { domain } = await doctor(sim, domainXml({ metadata: '<vmhook:isolate host-cpus="2-5"/>' }));
  assert.equal([domain("isolate").status, domain("isolate").reason], ["fail", "no CPU would be left for the host (online: 0-7) (CPU 2-5 isolated at boot by isolcpus=, where the host never runs)"]);
  sim.cleanup();
});

test('isolate: irqs="yes" with an irqbalance that may put IRQs back on the VM\'s CPUs fails, as prepare refuses it (with required="no", a warning)', async () => {
  const sim = desktopHost().file("/proc/905/comm", "irqbalance").file("/proc/905/environ", "IRQBALANCE_BANNED_CPULIST=7\0");
  const pins = "<cputune><vcpupin vcpu='0' cpuset='6'/><vcpupin vcpu='1' cpuset='7'/></cputune>";
  const refused = await doctor(sim, domainXml({ metadata: '<vmhook:isolate irqs="yes"/>', extra: pins }));
  assert.equal([refused.domain("isolate irqbalance").status, refused.domain("isolate irqbalance").reason.split(" when")[0]], ["fail", 'irqs="yes", but irqbalance (pid 905) runs and moves IRQs back onto CPU 6']);
  assert.match(refused.domain("isolate irqbalance").fix!, "IRQBALANCE_BANNED_CPULIST=6-7");
  const warned = await doctor(sim, domainXml({ metadata: '<vmhook:isolate irqs="yes" required="no"/>', extra: pins }));
  assert.is(warned.domain("isolate irqbalance").status, "warn");
  const without = await doctor(sim, domainXml({ metadata: "<vmhook:isolate/>", extra: pins }));
  assert.not.ok(without.report.domain!.findings.some((finding) => finding.check === "isolate irqbalance"), "irqs not asked for: irqbalance is no matter");
  sim.cleanup();
});

test("isolate: a VM on one thread of a core whose other thread the host keeps (SMT) gets a warning naming both and the fix", async () => {
  const sim = desktopHost();
  for (let cpu = 0; cpu < 8; cpu++) sim.file(`/sys/devices/system/cpu/cpu${cpu}/topology/thread_siblings_list`, `${cpu % 4},${(cpu % 4) + 4}`);
  const pins = (cpus: number[]) => `<cputune>${cpus.map((cpu, vcpu) => `<vcpupin vcpu='${vcpu}' cpuset='${cpu}'/>`).join("")}</cputune>`;
  const split = await doctor(sim, domainXml({ metadata: "<vmhook:isolate/>", extra: pins([2, 3]) }));
  assert.equal([split.domain("isolate SMT").status, split.domain("isolate SMT").reason.split(" (")[0]], ["warn", "CPU 2-3 of this VM share cores with CPU 6-7, which the host keeps"]);
  assert.match(split.domain("isolate SMT").fix!, "pin it to CPU 6-7 as well");
  const whole = await doctor(sim, domainXml({ metadata: "<vmhook:isolate/>", extra: pins([2, 3, 6, 7]) }));
  assert.not.ok(whole.report.domain!.findings.some((finding) => finding.check === "isolate SMT"));
  sim.cleanup();
});

test("isolate: host-cpus that keeps every online CPU fails, as prepare refuses it (nothing would be isolated)", async () => {
  const sim = desktopHost();
  const { domain } = await doctor(sim, domainXml({ metadata: '<vmhook:isolate host-cpus="0-7"/>' }));
  assert.equal([domain("isolate").status, domain("isolate").reason], ["fail", 'host-cpus="0-7" keeps every online CPU (0-7) for the host, so nothing is isolated']);
  assert.match(domain("isolate").fix!, "leave the VM's CPUs out of host-cpus");
  sim.cleanup();
});

test("hugepages: each host node is checked for its own share, as prepare derives it from <numatune><memnode>", async () => {
  const sim = desktopHost();
  sim.file("/sys/devices/system/node/node1/meminfo", "Node 1 MemTotal:       8388608 kB\nNode 1 MemFree:        1048576 kB\nNode 1 Inactive(file):        0 kB\n");
  for (const node of [0, 1]) sim.dir(`/sys/devices/system/node/node${node}/hugepages/hugepages-2048kB`);
  const numa = "<cpu><numa><cell id='0' cpus='0-1' memory='4' unit='GiB'/><cell id='1' cpus='2-3' memory='4' unit='GiB'/></numa></cpu><numatune><memnode cellid='0' mode='strict' nodeset='0'/><memnode cellid='1' mode='strict' nodeset='1'/></numatune>";
  const checked = await doctor(sim, domainXml({ memory: "<memory unit='GiB'>8</memory>", metadata: "<vmhook:hugepages/>", extra: `<memoryBacking><hugepages/></memoryBacking>${numa}` }));
  assert.equal([checked.domain("hugepages node 0").status, checked.domain("hugepages node 0").reason], ["ok", "2048 × 2M pages (4G) fit in the free memory on node 0 (19531M)"]);
  const node1 = checked.domain("hugepages node 1");
  assert.equal([node1.status, node1.reason], ["fail", "2048 pages of 2M (4096 MiB) for the 2M pool of node 1 cannot fit: node 1 has 1024 MiB available and keeps 409 MiB free, so it can give 614 MiB"]);
  assert.match(node1.fix!, "hugepagesz=2M hugepages=1:2048");
  sim.cleanup();
});

test("an invalid vmhook element is a failed config finding naming it", async () => {
  const sim = desktopHost();
  const { domain } = await doctor(sim, domainXml({ metadata: '<vmhook:hugepages size="3M"/>' }));
  assert.is(domain("config").status, "fail");
  assert.match(domain("config").reason, 'size="3M"');
  sim.cleanup();
});

test("a metadata of more elements than the hook reads (thousands of <vmhook:forward>, each checked against the others): doctor fails the config as the hook refuses it, runs no plugin's check over them, and answers at once", async () => {
  const sim = desktopHost();
  const forwards = Array.from({ length: 3000 }, (_, index) => `<vmhook:forward guest="192.168.122.10" ports="${2000 + index}"/>`).join("");
  try {
    const started = performance.now();
    const { report, domain } = await doctor(sim, domainXml({ metadata: `<vmhook:vfio/>${forwards}`, devices: GPU_AND_AUDIO }));
    const seconds = (performance.now() - started) / 1000;
    assert.equal([domain("config").status, domain("config").reason], ["fail", "<vmhook:hooks>: holds 3001 elements, more than the 64 vmhook reads; merge them (one <vmhook:forward> takes up to 64 ports, ranges too)"]);
    assert.equal(report.domain!.findings.filter((finding) => finding.plugin !== undefined), [], "no plugin's check ran over the elements");
    assert.ok(seconds < 5, `doctor took ${seconds.toFixed(1)} s`);
  } finally {
    sim.cleanup();
  }
});

test("the binary: vmhook doctor prints findings with fixes and exits 1 only when something fails", () => {
  const run = (sim: SimHost, ...args: string[]) => spawnSync(BINARY, ["doctor", "--root", sim.root, ...args], { encoding: "utf8", timeout: 30_000 });
  const desktop = desktopHost();
  const clean = run(desktop);
  assert.is(clean.status, 0, clean.stdout + clean.stderr);
  assert.match(clean.stdout, "Host:\n  ok    iommu: enabled: 3 IOMMU groups");
  assert.match(clean.stdout, "9 ok, 0 warning(s), 0 failure(s)");
  desktop.cleanup();

  const shared = sharedGroupHost();
  const file = shared.resolve("/win.xml");
  fs.writeFileSync(file, domainXml({ devices: GPU_AND_AUDIO }));
  const failing = run(shared, file);
  assert.is(failing.status, 1);
  assert.match(failing.stdout, "  fail  hostdev 0000:01:00.0: IOMMU group 5 also holds 02:00.0 (Non-Volatile memory controller)");
  assert.match(failing.stdout, "        fix: give the VM those devices too");
  const json = JSON.parse(run(shared, file, "--json").stdout);
  assert.is(json.domain.name, "win");
  assert.ok(json.domain.findings.some((finding: Finding) => finding.check === "hostdev 0000:01:00.0" && finding.status === "fail"));
  shared.cleanup();
});

test("doctor with parts of the host unreadable: each check that cannot read what it needs fails, naming the path and errno; the others still run", async () => {
  const sim = desktopHost();
  try {
    sim.failList("/sys/kernel/iommu_groups", "EIO").failRead("/sys/fs/cgroup/cgroup.controllers", "EACCES");
    const { report, statuses, host, domain } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO, metadata: "<vmhook:vfio/>" }));
    assert.equal(statuses(report.host), { iommu: "fail", "vfio modules": "ok", hugepages: "ok", "cgroup v2 cpuset": "fail", "libvirt hook": "ok", "qemu.conf": "ok", leftovers: "ok", "host policy": "ok", "host settings": "ok" });
    // The reason names the path and errno, the fix is the error's own: never spliced into the reason.
    assert.equal([host("iommu").reason, host("iommu").fix], ["cannot list /sys/kernel/iommu_groups (EIO)", "vmhook does not act on what it cannot read; check why (ls -l, dmesg)"]);
    assert.equal(
      [host("cgroup v2 cpuset").reason, host("cgroup v2 cpuset").fix],
      ["cannot read /sys/fs/cgroup/cgroup.controllers (EACCES)", "vmhook runs as root, so a security module (AppArmor, SELinux) denies it: look for the denial in journalctl -k"],
    );
    assert.is(domain("hostdevs").status, "fail", "the hostdev checks need the IOMMU groups");
    assert.match(domain("hostdevs").reason, "cannot list /sys/kernel/iommu_groups (EIO)");
    assert.is(domain("config").status, "ok");
  } finally {
    sim.cleanup();
  }
});

test("doctor where the state directory cannot be looked at (its parent denied): leftovers names the path and errno, with the fix apart, never Node's raw error", async () => {
  const sim = desktopHost();
  try {
    sim.failStat("/run/vmhook", "EACCES");
    const { host } = await doctor(sim, domainXml({ devices: GPU_AND_AUDIO, metadata: "<vmhook:vfio/>" }));
    assert.equal(
      [host("leftovers").status, host("leftovers").reason, host("leftovers").fix],
      ["fail", "cannot stat /run/vmhook (EACCES)", "vmhook runs as root, so a security module (AppArmor, SELinux) denies it: look for the denial in journalctl -k"],
    );
  } finally {
    sim.cleanup();
  }
});

// libvirtd and virtqemud read qemu.conf only when they start, and vmhook reads
// user and hugetlbfs_mount there at every event: an edit without a restart
// had vmhook check one user or mount list while libvirt went by another,
// and nothing said so.
test("qemu.conf: a warning when it changed after the running daemon that runs QEMU (virtqemud, else libvirtd) started, naming the file, both times, the settings vmhook reads and the restart; ok when the daemon is newer, none runs, or there is no qemu.conf", async () => {
  const OWN_MOUNTS = "mnt:[4026531841]";
  const CONF = "/etc/libvirt/qemu.conf";
  const when = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");
  type PutConf = (sim: SimHost) => string[];
  /** An edit in place. */
  const edited: PutConf = (sim) => {
    sim.file(CONF, 'user = "libvirt-qemu"\n');
    return [CONF];
  };
  /** A copy that keeps the original's older mtime (cp -p, rsync -a, tar x): put there now, its mtime two hours back. */
  const keptMtime: PutConf = (sim) => {
    sim.file(CONF, 'user = "root"\n');
    const old = new Date(Date.now() - 7200_000);
    fs.utimesSync(sim.resolve(CONF), old, old);
    return [CONF];
  };
  /** A symlink, as configuration managers make it: its target changed now, the link itself (its own mtime) two hours back. */
  const linked: PutConf = (sim) => {
    sim.file("/etc/static/libvirt/qemu.conf", 'user = "root"\n').link(CONF, "/etc/static/libvirt/qemu.conf");
    const old = new Date(Date.now() - 7200_000);
    fs.lutimesSync(sim.resolve(CONF), old, old);
    return [CONF, "/etc/static/libvirt/qemu.conf"];
  };
  /**
   * A host up for a day whose qemu.conf changed `changedAgoS` seconds ago (none: no qemu.conf), and root daemons started `agoS` seconds ago.
   * The change is the file's real one (its ctime, which nothing sets back): the host's clock is placed after it. `conf`: how the file is put there, returning the files whose ctime is its change.
   */
  const host = (changedAgoS: number | undefined, daemons: { pid: number; comm: string; agoS: number; uid?: number; mounts?: string }[], conf: PutConf = edited) => {
    const sim = desktopHost();
    let now = Date.now();
    if (changedAgoS !== undefined) {
      now = Math.max(...conf(sim).map((file) => fs.lstatSync(sim.resolve(file)).ctimeMs)) + changedAgoS * 1000;
    }
    Object.assign(sim, { wallClockMs: () => now });
    sim.dir("/run/systemd/system").file("/proc/uptime", "86400.00 170000.00").link("/proc/self/ns/mnt", OWN_MOUNTS);
    for (const { pid, comm, agoS, uid = 0, mounts = OWN_MOUNTS } of daemons) {
      sim.process(pid, [`/usr/sbin/${comm}`, "--timeout", "120"], { start: (86400 - agoS) * 100, uid }).file(`/proc/${pid}/comm`, comm).link(`/proc/${pid}/ns/mnt`, mounts);
    }
    return { sim, at: (agoS: number) => when(now - agoS * 1000) };
  };
  const cases: { name: string; changedAgoS?: number; daemons: Parameters<typeof host>[1]; conf?: PutConf; status: string; reason: (at: (agoS: number) => string) => string; fix?: string }[] = [
    {
      name: "edited after libvirtd started",
      changedAgoS: 600,
      daemons: [{ pid: 812, comm: "libvirtd", agoS: 3600 }],
      status: "warn",
      reason: (at) =>
        `${CONF} changed at ${at(600)}, after libvirtd (pid 812) started at ${at(3600)}, which reads it only when it starts: vmhook reads user and hugetlbfs_mount as they are now (who runs QEMU, for the ownership checks; the hugetlbfs mounts libvirt takes huge pages from, for hugepages), libvirt may still go by those of before`,
      fix: "when no VM runs, systemctl restart libvirtd: it then reads the file as vmhook does (if the change touched neither setting, nothing differs meanwhile)",
    },
    {
      name: "edited after virtqemud started; a libvirtd started since is not the daemon that runs QEMU",
      changedAgoS: 600,
      daemons: [{ pid: 812, comm: "libvirtd", agoS: 60 }, { pid: 990, comm: "virtqemud", agoS: 3600 }],
      status: "warn",
      reason: (at) => `${CONF} changed at ${at(600)}, after virtqemud (pid 990) started at ${at(3600)}, which reads it only`,
      fix: "when no VM runs, systemctl restart virtqemud:",
    },
    // Both used to read as older than the daemon (the mtime; the link's own), ok.
    ...(
      [
        ["replaced after libvirtd started by a copy that keeps an older mtime (cp -p, rsync -a)", keptMtime],
        ["a symlink whose target changed after libvirtd started, the link older", linked],
      ] as const
    ).map(([name, conf]) => ({
      name,
      changedAgoS: 600,
      daemons: [{ pid: 812, comm: "libvirtd", agoS: 3600 }],
      conf,
      status: "warn",
      reason: (at: (agoS: number) => string) => `${CONF} changed at ${at(600)}, after libvirtd (pid 812) started at ${at(3600)}`,
    })),
    {
      name: "virtqemud started after the edit; an older libvirtd beside it does not run QEMU",
      changedAgoS: 600,
      daemons: [{ pid: 812, comm: "libvirtd", agoS: 3600 }, { pid: 990, comm: "virtqemud", agoS: 60 }],
      status: "ok",
      reason: (at) => `virtqemud (pid 990) started at ${at(60)}, after ${CONF} last changed (${at(600)}): libvirt and vmhook go by the same user and hugetlbfs_mount`,
    },
    {
      name: "libvirtd restarted in the same second as the edit (sed -i …; systemctl restart libvirtd)",
      changedAgoS: 60.5,
      daemons: [{ pid: 812, comm: "libvirtd", agoS: 61 }],
      status: "ok",
      reason: (at) => `libvirtd (pid 812) started at ${at(61)}, after ${CONF} last changed (${at(60.5)})`,
    },
    {
      name: "no daemon runs (virtqemud exits when idle); a user's session daemon and one of another mount namespace read other files",
      changedAgoS: 600,
      daemons: [{ pid: 4051, comm: "virtqemud", agoS: 3600, uid: 1000 }, { pid: 7000, comm: "libvirtd", agoS: 3600, mounts: "mnt:[4026532999]" }],
      status: "ok",
      reason: () => `no libvirt daemon (libvirtd or virtqemud) runs here: the next one reads ${CONF} as it is when it starts`,
    },
    {
      name: "no qemu.conf",
      daemons: [{ pid: 812, comm: "libvirtd", agoS: 3600 }],
      status: "ok",
      reason: () => `no ${CONF}: libvirt and vmhook both go by libvirt's defaults`,
    },
  ];
  for (const { name, changedAgoS, daemons, conf, status, reason, fix } of cases) {
    const { sim, at } = host(changedAgoS, daemons, conf);
    try {
      const finding = (await doctor(sim)).host("qemu.conf");
      assert.is(finding.status, status, `${name}: ${finding.reason}`);
      assert.ok(finding.reason.startsWith(reason(at)), `${name}: ${finding.reason}\n  expected: ${reason(at)}`);
      if (fix) assert.ok(finding.fix?.startsWith(fix), `${name}: ${finding.fix}`);
    } finally {
      sim.cleanup();
    }
  }
});

test("qemu.conf: a daemon's start that cannot be placed (no /proc/uptime) fails the check naming /proc/uptime, the others still run", async () => {
  const sim = desktopHost();
  try {
    sim.file("/etc/libvirt/qemu.conf", "").link("/proc/self/ns/mnt", "mnt:[1]").process(812, ["/usr/sbin/libvirtd"]).file("/proc/812/comm", "libvirtd").link("/proc/812/ns/mnt", "mnt:[1]");
    const { host, report } = await doctor(sim);
    assert.is(host("qemu.conf").status, "fail");
    assert.match(host("qemu.conf").reason, "/proc/uptime");
    assert.is(host("iommu").status, "ok", JSON.stringify(report.host));
  } finally {
    sim.cleanup();
  }
});

test("qemu.conf: a symlink loop fails the check naming the file, as libvirt cannot read it either", async () => {
  const sim = desktopHost();
  try {
    sim.link("/etc/libvirt/qemu.conf", "qemu.conf.d").link("/etc/libvirt/qemu.conf.d", "/etc/libvirt/qemu.conf");
    const { host } = await doctor(sim);
    assert.equal([host("qemu.conf").status, host("qemu.conf").reason], ["fail", "/etc/libvirt/qemu.conf leads through more than 40 symbolic links (a loop?): libvirt cannot read it either; make it a file, or a link to one"]);
  } finally {
    sim.cleanup();
  }
});

/** The check names of docs/diagnostics.md's tables, as patterns: `hostdev ADDRESS` matches "hostdev 0000:01:00.0". */
function documentedChecks(): RegExp[] {
  const page = fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../docs/diagnostics.md"), "utf8");
  const names = [...page.matchAll(/^\| (`[^|]*`)[^|]*\|/gm)].flatMap((row) => [...row[1]!.matchAll(/`([^`]+)`/g)].map((name) => name[1]!));
  return names.map((name) => new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/\b[A-Z]+\b/g, "\\S+")}$`));
}

test("every check doctor runs on a domain using each built-in plugin is a row of docs/diagnostics.md", async () => {
  const sim = desktopHost();
  // An AMD Navi 10 card, which resets only through vendor-reset.
  addPciDevice(sim, { address: "0000:03:00.0", classCode: "0x030000", vendor: "0x1002", device: "0x731f", driver: "amdgpu", group: 3 });
  const metadata =
    "<vmhook:hugepages/><vmhook:isolate host-cpus='0-1'/><vmhook:vfio/><vmhook:nosleep/><vmhook:forward ports='2222:22'/>" +
    "<vmhook:mdev type='i915-GVTg_V5_4'/><vmhook:vgpu vf='0000:03:00.0' type='L40S-12Q'/>";
  try {
    const report = await runDoctor(sim, { file: "win.xml", xml: domainXml({ metadata, devices: GPU_AND_AUDIO + hostdev("0x03", "0x0") }) });
    const documented = documentedChecks();
    const checks = [...report.host, ...report.domain!.findings].map((finding) => finding.check);
    const undocumented = checks.filter((check) => !documented.some((pattern) => pattern.test(check)));
    assert.equal(undocumented, [], `checks: ${checks.join(", ")}`);
  } finally {
    sim.cleanup();
  }
});

test.run();
