// Bad input in the metadata, element by element: each typical mistake fails
// prepare with a first stderr line (what libvirt shows) that names the
// element, quotes the value and says what to do, and the host stays exactly
// as it was. One simulated host carries what every plugin looks at.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { loadDomainPlugins, loadReconnectPlugins } from "../../lib/config.ts";
import { parseDomain } from "../../lib/domain.ts";
import { registry } from "../../plugins/index.ts";
import { withCpus } from "../helpers/cpu-hosts.ts";
import { nvidiaDesktop } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { addParent, GPU, GPU_DIR, GVT_TYPES, mdevHostdevXml, nvidiaHost, pciHostdevXml, VF } from "../helpers/mdev-kernel.ts";
import type { SimHost } from "../helpers/simhost.ts";

const UUID = "b1b1b1b1-0000-4000-8000-0000000000b1";
const MDEV = "4b20d080-1b54-4048-85b3-a6a62d165c01";
/** The GPU's functions, and for <vmhook:vgpu> a virtual function (no IOMMU group here, which vfio would refuse). */
const hostdevsFor = (element: string) => (element === "vgpu" ? [VF] : ["0000:01:00.0", "0000:01:00.1"]);

/** The NVIDIA desktop, with 8 CPUs, huge page pools, a GVT-g parent and NVIDIA vGPU VFs. */
function everythingHost(): SimHost {
  const sim = withCpus(nvidiaDesktop().sim.dir("/var/log").dir("/run"));
  new HugepageKernel(sim);
  addParent(sim, GPU, GPU_DIR, GVT_TYPES);
  return nvidiaHost(sim);
}

/** A domain pinned to CPUs 2-3 with PCI `hostdevs` and an mdev, and `hooks` as its metadata. */
function domainXml(hooks: string, hostdevs: string[]): string {
  const devices = hostdevs.map(pciHostdevXml).join("") + mdevHostdevXml(MDEV);
  return `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory><vcpu>2</vcpu>
  <cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/></cputune>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${hooks}</vmhook:hooks></metadata>
  <devices>${devices}</devices></domain>`;
}

interface Mistake {
  /** What the user wrote inside <vmhook:hooks>. */
  hooks: string;
  /** What the first line says after the element: the value, quoted where the user wrote one. */
  says: string;
  /** The remedy it gives: valid forms, or the command that lists them. */
  fix: string;
  /** How the first line names the element, if not <vmhook:GROUP (the table's key). */
  names?: string;
  /** More PCI hostdevs in the domain. */
  hostdevs?: string[];
}

const MISTAKES: Record<string, Mistake[]> = {
  hugepages: [
    { hooks: `<vmhook:hugepages sise="2M"/>`, says: "unknown attribute sise", fix: "allowed: size, node, timeout" },
    { hooks: `<vmhook:hugepages Size="2M"/>`, says: "unknown attribute Size", fix: "allowed: size, node, timeout" },
    { hooks: `<vmhook:hugepages x:size="2M" xmlns:x="urn:x"/>`, says: `x:size="2M" in namespace "urn:x"`, fix: `write size="..." without a prefix` },
    { hooks: `<vmhook:hugepages size=""/>`, says: `size="" is not a size`, fix: "write e.g. 2M or 1G" },
    { hooks: `<vmhook:hugepages size="two"/>`, says: `size="two" is not a size`, fix: "write e.g. 2M or 1G" },
    { hooks: `<vmhook:hugepages size="3M"/>`, says: `size="3M" is not a huge page size`, fix: "ls /sys/kernel/mm/hugepages" },
    { hooks: `<vmhook:hugepages size="2 GB"/>`, says: `size="2 GB" is not a huge page size`, fix: "use 2M or 1G" },
    { hooks: `<vmhook:hugepages node=""/>`, says: `node="" is empty`, fix: "write nodes as a list like 0-1,3" },
    { hooks: `<vmhook:hugepages node="1-0"/>`, says: `node="1-0" has a range 1-0 that runs backwards`, fix: "write nodes as a list like 0-1,3" },
    { hooks: `<vmhook:hugepages node="2000"/>`, says: `node="2000" names node 2000, beyond the largest possible`, fix: "write nodes as a list like 0-1,3" },
    { hooks: `<vmhook:hugepages node="5"/>`, says: "host NUMA node 5 does not exist", fix: "fix node= on <vmhook:hugepages>" },
    { hooks: `<vmhook:hugepages timeout="-1"/>`, says: `timeout="-1"`, fix: "must be a whole number from 0 to 3600" },
    { hooks: `<vmhook:hugepages timeout="5s"/>`, says: `timeout="5s"`, fix: "must be a whole number from 0 to 3600" },
    { hooks: `<vmhook:hugepages timeout="99999"/>`, says: `timeout="99999"`, fix: "must be a whole number from 0 to 3600" },
    { hooks: `<vmhook:hugepages>2M</vmhook:hugepages>`, says: `contains the text "2M"`, fix: "write its settings as attributes (allowed: size, node, timeout)" },
    { hooks: `<vmhook:hugepages/><vmhook:hugepages size="1G"/>`, says: "appears 2 times", fix: "keep one" },
  ],
  isolate: [
    { hooks: `<vmhook:isolate host-cpu="0-1"/>`, says: "unknown attribute host-cpu", fix: "allowed: host-cpus, governor" },
    { hooks: `<vmhook:isolate host-cpus=""/>`, says: `host-cpus="" is empty`, fix: "write CPUs as a list like 0-3,8,^2" },
    { hooks: `<vmhook:isolate host-cpus="7-4"/>`, says: `host-cpus="7-4" has a range 7-4 that runs backwards`, fix: "write CPUs as a list like 0-3,8,^2" },
    { hooks: `<vmhook:isolate host-cpus="0 1"/>`, says: `host-cpus="0 1" has "0 1", which is not a CPU`, fix: "write CPUs as a list like 0-3,8,^2" },
    { hooks: `<vmhook:isolate host-cpus="a-b"/>`, says: `host-cpus="a-b" has "a-b"`, fix: "write CPUs as a list like 0-3,8,^2" },
    { hooks: `<vmhook:isolate host-cpus="99999"/>`, says: `host-cpus="99999" names CPU 99999, beyond the largest possible`, fix: "write CPUs as a list like 0-3,8,^2" },
    { hooks: `<vmhook:isolate host-cpus="0-3"/>`, says: `host-cpus="0-3" includes CPU 2-3, which the domain pins the VM to (<cputune> or <vcpu cpuset>)`, fix: "keep the VM's CPUs out of host-cpus" },
    { hooks: `<vmhook:isolate governor="Performance"/>`, says: `governor="Performance" is not a cpufreq governor name`, fix: "scaling_available_governors" },
    { hooks: `<vmhook:isolate irqs="maybe"/>`, says: `irqs="maybe"`, fix: "must be yes or no" },
    { hooks: `<vmhook:isolate required=""/>`, says: `required=""`, fix: "must be yes or no" },
    { hooks: `<vmhook:isolate allow-overlap="2"/>`, says: `allow-overlap="2"`, fix: "must be yes or no" },
    { hooks: `<vmhook:isolate/><vmhook:isolate/>`, says: "appears 2 times", fix: "keep one" },
  ],
  vfio: [
    { hooks: `<vmhook:vfio device="0000:01:00.0"/>`, says: "unknown attribute device", fix: "allowed: devices, include-slot" },
    { hooks: `<vmhook:vfio devices="0000:01:00"/>`, says: `devices="0000:01:00" is not a PCI address`, fix: "write it as DDDD:BB:SS.F, e.g. 0000:01:00.0 (see lspci -D)" },
    { hooks: `<vmhook:vfio devices="0000:01:00.8"/>`, says: `devices="0000:01:00.8" is not a PCI address`, fix: "see lspci -D" },
    { hooks: `<vmhook:vfio devices="1:0.0"/>`, says: `devices="1:0.0" is not a PCI address`, fix: "see lspci -D" },
    { hooks: `<vmhook:vfio devices="0000:05:00.0"/>`, says: "0000:05:00.0 is not one of the domain's PCI <hostdev>s", fix: "add it to the domain as a <hostdev>" },
    { hooks: `<vmhook:vfio/>`, hostdevs: ["0000:05:00.0"], names: "devices=", says: "PCI device 0000:05:00.0 does not exist on this host", fix: "lspci -D lists the devices" },
    { hooks: `<vmhook:vfio single-gpu="maybe"/>`, says: `single-gpu="maybe"`, fix: "must be auto, yes or no" },
    { hooks: `<vmhook:vfio include-slot=""/>`, says: `include-slot=""`, fix: "must be yes or no" },
    { hooks: `<vmhook:vfio unload-modules="-r"/>`, says: `unload-modules="-r" is not a kernel module name`, fix: "lsmod lists the loaded ones" },
    { hooks: `<vmhook:vfio load-modules="../vfio"/>`, says: `load-modules="../vfio" is not a kernel module name`, fix: "lsmod lists the loaded ones" },
    { hooks: `<vmhook:vfio unload-modules="snd_hda_intel"/>`, says: "snd_hda_intel is not a GPU, VFIO or passthrough helper module", fix: `add "snd_hda_intel" to "vfio.modules"` },
    { hooks: `<vmhook:vfio unload-modules="nvidia_drm,nvidia_drn"/>`, names: "<vmhook:vfio> unload-modules", says: "names nvidia_drn, which is neither loaded nor in this kernel's modules", fix: "check its spelling" },
    { hooks: `<vmhook:vfio load-modules="vfio_pcx"/>`, names: "load-modules", says: "module vfio_pcx is not in this kernel's modules", fix: "or remove it from load-modules" },
    { hooks: `<vmhook:vfio display-manager="gdm;x"/>`, says: `display-manager="gdm;x" is not a systemd unit name`, fix: "systemctl list-units" },
    { hooks: `<vmhook:vfio display-manager="sshd.service"/>`, says: "sshd.service is not a display manager", fix: `add "sshd.service" to "vfio.units"` },
    { hooks: `<vmhook:vfio/><vmhook:vfio/>`, says: "appears 2 times", fix: "keep one" },
  ],
  mdev: [
    { hooks: `<vmhook:mdev typ="i915-GVTg_V5_4"/>`, says: "unknown attribute typ", fix: "allowed: type, parent, uuid" },
    { hooks: `<vmhook:mdev/>`, says: "has no type attribute", fix: "ls /sys/class/mdev_bus/*/mdev_supported_types" },
    { hooks: `<vmhook:mdev type=""/>`, says: `type="" is not an mdev type`, fix: "ls /sys/class/mdev_bus/*/mdev_supported_types" },
    { hooks: `<vmhook:mdev type="../x"/>`, says: `type="../x" is not an mdev type`, fix: "ls /sys/class/mdev_bus/*/mdev_supported_types" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_9"/>`, says: `type="i915-GVTg_V5_9" is offered by no device on this host`, fix: "choose one of i915-GVTg_V5_1, i915-GVTg_V5_2, i915-GVTg_V5_4, i915-GVTg_V5_8" },
    { hooks: `<vmhook:mdev type="I915-GVTG_V5_4"/>`, says: `type="I915-GVTG_V5_4" is offered by no device on this host`, fix: "choose one of i915-GVTg_V5_1, i915-GVTg_V5_2, i915-GVTg_V5_4, i915-GVTg_V5_8" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" parent=""/>`, says: `parent="" is neither a PCI address`, fix: "see ls /sys/class/mdev_bus" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" parent="../x"/>`, says: `parent="../x" is neither a PCI address`, fix: "see ls /sys/class/mdev_bus" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" parent="0000:00:03.0"/>`, says: "parent 0000:00:03.0 is not an mdev parent on this host", fix: "the parents are 0000:00:02.0" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" uuid="1234"/>`, says: `uuid="1234" is not a UUID`, fix: "uuidgen makes one" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" uuid="4b20d080-1b54-4048-85b3-a6a62d165c02"/>`, says: `uuid="4b20d080-1b54-4048-85b3-a6a62d165c02" is not the UUID of any mdev <hostdev>`, fix: "or fix the uuid" },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/><vmhook:mdev type="i915-GVTg_V5_8"/>`, says: `configures mdev ${MDEV} again`, fix: "each mdev needs its own <hostdev> and UUID" },
  ],
  vgpu: [
    { hooks: `<vmhook:vgpu typ="L40S-12Q" vf="${VF}"/>`, says: "unknown attribute typ", fix: "allowed: vf, type" },
    { hooks: `<vmhook:vgpu vf="${VF}"/>`, says: "has no type attribute", fix: "creatable_vgpu_types lists them" },
    { hooks: `<vmhook:vgpu type="" vf="${VF}"/>`, says: `type="" is not a vGPU type id or name`, fix: "creatable_vgpu_types lists them" },
    { hooks: `<vmhook:vgpu type="../x" vf="${VF}"/>`, says: `type="../x" is not a vGPU type id or name`, fix: "creatable_vgpu_types lists them" },
    { hooks: `<vmhook:vgpu type="L40S..12Q" vf="${VF}"/>`, says: `type="L40S..12Q" is not a vGPU type id or name`, fix: "creatable_vgpu_types lists them" },
    { hooks: `<vmhook:vgpu type="NVIDIA L40S-12Q/x" vf="${VF}"/>`, says: `type="NVIDIA L40S-12Q/x" is not a vGPU type id or name`, fix: "creatable_vgpu_types lists them" },
    { hooks: `<vmhook:vgpu type="L40S-12Q.x" vf="${VF}"/>`, says: `type="L40S-12Q.x" is not a vGPU type id or name`, fix: "creatable_vgpu_types lists them" },
    { hooks: `<vmhook:vgpu type="L40S-99Q" vf="${VF}"/>`, says: `vGPU type "L40S-99Q" cannot be created on ${VF}`, fix: "creatable now: 1433 (NVIDIA L40S-12Q)" },
    { hooks: `<vmhook:vgpu type="L40S-12Q" vf="41:00"/>`, says: `vf="41:00" is not a PCI address`, fix: "see lspci -D" },
    { hooks: `<vmhook:vgpu type="L40S-12Q" vf="0000:41:00.6"/>`, says: `vf="0000:41:00.6" is not a PCI <hostdev> of this domain`, fix: "or fix vf" },
    { hooks: `<vmhook:vgpu type="L40S-12Q" vf="0000:01:00.0"/>`, hostdevs: ["0000:01:00.0"], says: "0000:01:00.0 has no nvidia/current_vgpu_type", fix: "sriov-manage -e" },
    { hooks: `<vmhook:vgpu type="L40S-12Q"/>`, hostdevs: ["0000:41:00.5"], says: "has no vf attribute", fix: `add vf="DDDD:BB:SS.F"` },
    { hooks: `<vmhook:vgpu type="L40S-12Q" vf="${VF}"/><vmhook:vgpu type="L40S-24Q" vf="${VF.toUpperCase()}"/>`, says: `configures VF ${VF} again`, fix: "a VF carries one vGPU" },
  ],
  nosleep: [
    { hooks: `<vmhook:nosleep why="gaming"/>`, says: "unknown attribute why", fix: "it takes no attributes" },
    { hooks: `<vmhook:nosleep>yes</vmhook:nosleep>`, says: `contains the text "yes"`, fix: "write <vmhook:nosleep/>" },
    { hooks: `<vmhook:nosleep/><vmhook:nosleep/>`, says: "appears 2 times", fix: "keep one" },
  ],
  forward: [
    { hooks: `<vmhook:forward port="2222:22"/>`, says: "unknown attribute port", fix: "allowed: guest, ports" },
    { hooks: `<vmhook:forward/>`, says: "has no ports", fix: `e.g. ports="2222:22"` },
    { hooks: `<vmhook:forward ports=""/>`, says: `ports= item "" is not a port forward`, fix: "write HOST[:GUEST][/tcp|/udp]" },
    { hooks: `<vmhook:forward ports="70000:22"/>`, says: `ports= item "70000:22" has port range 70000 outside 1-65535`, fix: "e.g. 2222:22" },
    { hooks: `<vmhook:forward ports="22-20"/>`, says: `ports= item "22-20" has port range 22-20 outside 1-65535 or backwards`, fix: "e.g. 2222:22" },
    { hooks: `<vmhook:forward ports="2222 : 22"/>`, says: `ports= item "2222 : 22" is not a port forward`, fix: "e.g. 2222:22" },
    { hooks: `<vmhook:forward ports="2222:22/TCP"/>`, says: `ports= item "2222:22/TCP" is not a port forward`, fix: "8443:443/tcp" },
    { hooks: `<vmhook:forward ports="2222:22" guest="192.168.122"/>`, says: `guest="192.168.122" is not an IP address`, fix: "e.g. 192.168.122.10" },
    { hooks: `<vmhook:forward ports="2222:22" host-address="::1"/>`, says: `host-address="::1" is a loopback`, fix: "use a unicast address" },
    { hooks: `<vmhook:forward ports="2222:22" interface="eth0 eth1"/>`, says: `interface="eth0 eth1" is not a network interface name`, fix: "ip link lists them" },
    { hooks: `<vmhook:forward ports="2222:22" hairpin="si"/>`, says: `hairpin="si"`, fix: "must be yes or no" },
    { hooks: `<vmhook:forward ports="2222:22"/><vmhook:forward ports="2222"/>`, says: "forwards host port tcp 2222, which <vmhook:forward", fix: "each host port can go to one place" },
  ],
  plugin: [
    { hooks: `<vmhook:plugin/>`, says: "has no name attribute", fix: `write <vmhook:plugin name="NAME">` },
    { hooks: `<vmhook:plugin nam="backup"/>`, says: "has no name attribute", fix: `write <vmhook:plugin name="NAME">` },
    { hooks: `<vmhook:plugin name=""/>`, says: `name="" is not a plugin name`, fix: "lower-case letters, digits" },
    { hooks: `<vmhook:plugin name="My-Plugin"/>`, says: `name="My-Plugin" is not a plugin name`, fix: "lower-case letters, digits" },
    { hooks: `<vmhook:plugin name="../backup"/>`, says: `name="../backup" is not a plugin name`, fix: "lower-case letters, digits" },
    { hooks: `<vmhook:plugin name="backup"/>`, says: "plugin backup is not installed", fix: "install the plugin there" },
    { hooks: `<vmhook:plugin name="hugepage"/>`, says: "no plugin hugepage is installed in /etc/vmhook/plugins.d, and hugepage is not a built-in", fix: "did you mean <vmhook:hugepages/>?" },
    { hooks: `<vmhook:plugin name="nosleep"/>`, says: "nosleep is a built-in plugin, not one in /etc/vmhook/plugins.d", fix: "write <vmhook:nosleep/> in its place" },
    { hooks: `<vmhook:plugin name="backup"/><vmhook:plugin name="backup"/>`, says: "names plugin backup a second time", fix: "merge the two elements" },
  ],
  hooks: [
    { hooks: `<vmhook:hugepage/>`, names: "<vmhook:hugepage>", says: "is not a vmhook element", fix: "did you mean <vmhook:hugepages/>?" },
    { hooks: `<vmhook:Hugepages/>`, names: "<vmhook:Hugepages>", says: "is not a vmhook element", fix: "did you mean <vmhook:hugepages/>?" },
    { hooks: `<vmhook:frobnicate/>`, names: "<vmhook:frobnicate>", says: "is not a vmhook element", fix: "use one of <vmhook:hugepages>, <vmhook:isolate>" },
    { hooks: `<hugepages/>`, says: `contains <hugepages> from namespace "none"`, fix: `xmlns:vmhook="urn:vmhook:1"` },
    { hooks: `some text`, says: `contains the text "some text"`, fix: "such as <vmhook:hugepages/>" },
  ],
};

const firstLine = (stderr: string) => stderr.split("\n")[0]!;

/** Forms that look like mistakes but mean what they say: each reads as the canonical one. */
const SPELLINGS: [written: string, canonical: string][] = [
  [`<vmhook:hugepages size="2m"/>`, `<vmhook:hugepages size="2M"/>`],
  [`<vmhook:hugepages size="1g"/>`, `<vmhook:hugepages size="1G"/>`],
  [`<vmhook:hugepages size=" 2MiB "/>`, `<vmhook:hugepages size="2M"/>`],
  [`<vmhook:isolate host-cpus="0, 1"/>`, `<vmhook:isolate host-cpus="0-1"/>`],
  [`<vmhook:isolate workqueues="YES"/>`, `<vmhook:isolate workqueues="yes"/>`],
  [`<vmhook:vfio devices="01:00.0"/>`, `<vmhook:vfio devices="0000:01:00.0"/>`],
  [`<vmhook:mdev type="i915-GVTg_V5_4" parent="00:02.0"/>`, `<vmhook:mdev type="i915-GVTg_V5_4" parent="0000:00:02.0"/>`],
  [`<vmhook:vgpu type="L40S-12Q" vf="0000:41:00.4"/>`, `<vmhook:vgpu type="L40S-12Q" vf="41:00.4"/>`],
];

for (const [element, mistakes] of Object.entries(MISTAKES)) {
  test(`<vmhook:${element}>: every mistake fails prepare naming the element, the value and the fix; the host stays as it was`, async () => {
    const sim = everythingHost();
    try {
      const before = sim.snapshot();
      for (const { hooks, says, fix, names = `<vmhook:${element}`, hostdevs = [] } of mistakes) {
        const { code, stderr } = await runHookEvent(sim, "prepare", "begin", domainXml(hooks, [...hostdevsFor(element), ...hostdevs]));
        const line = firstLine(stderr);
        assert.is(code, 1, `${hooks} fails prepare`);
        assert.ok(line.includes(names), `${hooks}: the first line names ${names}: ${line}`);
        // After the element (which quotes every attribute), the message itself must say what is wrong.
        const message = line.replace(/^vmhook: <vmhook:[^>]*>: /, "");
        assert.ok(message.includes(says), `${hooks}: the message says ${says}: ${line}`);
        assert.ok(message.includes(fix), `${hooks}: the message gives the fix ${fix}: ${line}`);
        assert.equal(sim.snapshot(), before, `${hooks}: the host is as it was`);
      }
    } finally {
      sim.cleanup();
    }
  });
}

test("<vmhook:hooks> takes no attribute, one named like a namespace declaration (xmlnsfoo=, which declares nothing) included: refused naming it; the host stays as it was", async () => {
  const sim = everythingHost();
  try {
    const before = sim.snapshot();
    for (const attribute of ['xmlnsfoo="1"', 'xmlns-x="1"', 'size="2M"']) {
      const xml = domainXml("<vmhook:nosleep/>", []).replace('<vmhook:hooks xmlns:vmhook="urn:vmhook:1">', `<vmhook:hooks xmlns:vmhook="urn:vmhook:1" ${attribute}>`);
      const { code, stderr } = await runHookEvent(sim, "prepare", "begin", xml);
      assert.is(code, 1, attribute);
      assert.match(firstLine(stderr), `<vmhook:hooks>: has attribute ${attribute.split("=")[0]}, but takes none`);
      assert.equal(sim.snapshot(), before);
    }
  } finally {
    sim.cleanup();
  }
});

test("spellings a user may fear are mistakes (2m, 01:00.0, YES, spaces in a CPU list) read as the canonical form", async () => {
  const sim = everythingHost();
  // The element as written is kept for messages; everything else must be the same.
  const configOf = async (hooks: string) =>
    JSON.stringify((await loadDomainPlugins(parseDomain(domainXml(hooks, [...hostdevsFor("vfio"), VF])), sim, registry)).map((instance) => instance.config), (key, value) => (key === "element" ? undefined : value));
  try {
    for (const [written, canonical] of SPELLINGS) assert.is(await configOf(written), await configOf(canonical), written);
  } finally {
    sim.cleanup();
  }
});

test("a metadata of more plugin elements than any VM needs (each element checked against the others: minutes of a hook libvirt's event thread waits for) is refused before any is read, naming the count and the limit; reconnect then checks the journal's records alone", async () => {
  const sim = everythingHost();
  const forwards = (count: number) => Array.from({ length: count }, (_, index) => `<vmhook:forward guest="192.168.122.10" ports="${2000 + index}"/>`).join("");
  try {
    assert.is((await loadDomainPlugins(parseDomain(domainXml(forwards(64), [])), sim, registry)).length, 1);
    const tooMany = parseDomain(domainXml(`<vmhook:nosleep/>${forwards(64)}`, []));
    try {
      await loadDomainPlugins(tooMany, sim, registry);
      assert.unreachable("65 elements are refused");
    } catch (error) {
      assert.is((error as Error).message, "<vmhook:hooks>: holds 65 elements, more than the 64 vmhook reads; merge them (one <vmhook:forward> takes up to 64 ports, ranges too)");
    }
    const reconnect = await loadReconnectPlugins(tooMany, ["nosleep"], sim, registry);
    assert.equal(reconnect.instances.map((instance) => [instance.id, instance.config]), [["nosleep", undefined]]);
    assert.match(reconnect.problems.join("\n"), "holds 65 elements, more than the 64 vmhook reads");
  } finally {
    sim.cleanup();
  }
});

test.run();
