// lib/domain.ts reads the domain XML by walking child elements: what it
// finds, in which order, and what it leaves alone (other namespaces, hostdevs
// that are not subsystem ones).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { parseDomain } from "../../lib/domain.ts";
import type { VmhookError } from "../../lib/errors.ts";
import { parsePciAddress, PATTERNS } from "../../lib/validate.ts";

const UUID = "6b0e2a4c-6a4e-4c57-9a43-0d1a5b3c7e01";

const FULL = `<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>gpu vm</name>
  <uuid> ${UUID} </uuid>
  <memory unit='GiB'>4</memory>
  <currentMemory unit='MiB'>2048</currentMemory>
  <vcpu placement='static' cpuset='5-7,^6'>4</vcpu>
  <memoryBacking><hugepages><page size='2' unit='MiB' nodeset='0'/><page size='1048576'/></hugepages></memoryBacking>
  <numatune><memory mode='preferred' nodeset='0-1'/><memnode cellid='1' mode='strict' nodeset='1'/></numatune>
  <cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3-4'/><emulatorpin cpuset='0'/><iothreadpin iothread='1' cpuset='1'/></cputune>
  <cpu><numa><cell id='0' memory='2' unit='GiB'/><cell id='1' memory='2048' unit='MiB'/></numa></cpu>
  <metadata>
    <other xmlns='urn:other'><hooks/></other>
    <vmhook:hooks xmlns:vmhook='urn:vmhook:1'><vmhook:vfio/></vmhook:hooks>
  </metadata>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x1'/></source></hostdev>
    <hostdev mode='capabilities' type='storage'><source><block>/dev/sdb</block></source></hostdev>
    <qemu:hostdev mode='subsystem' type='pci'><source><address bus='0x09' slot='0x00'/></source></qemu:hostdev>
    <interface type='network'><mac address='52:54:00:AB:CD:EF'/><source network='default'/></interface>
  </devices>
  <devices>
    <hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='${UUID}'/></source></hostdev>
  </devices>
</domain>`;

test("every part vmhook reads, in document order, across repeated parents", () => {
  const domain = parseDomain(FULL);
  assert.is(domain.name, "gpu vm");
  assert.is(domain.uuid, UUID);
  assert.is(domain.memoryKiB, 4 * 1024 * 1024);
  assert.is(domain.currentMemoryKiB, 2048 * 1024);
  assert.is(domain.vcpus, 4);
  assert.equal(domain.hugepages, { pages: [{ sizeKiB: 2048, nodeset: "0" }, { sizeKiB: 1048576, nodeset: undefined }] });
  assert.equal(domain.numatuneMemory, { mode: "preferred", placement: "static", nodeset: [0, 1] });
  assert.equal(domain.memnodes, [{ cellid: 1, mode: "strict", nodeset: [1] }]);
  assert.equal(domain.numaCells, [{ id: 0, memoryKiB: 2 * 1024 * 1024 }, { id: 1, memoryKiB: 2048 * 1024 }]);
  assert.equal(domain.cputune, { pinned: [0, 1, 2, 3, 4] });
  assert.equal(domain.vcpuCpuset, [5, 7]);
  // The storage hostdev (not mode='subsystem') and the one in another namespace are not vmhook's.
  assert.equal(domain.hostdevs, [
    { type: "pci", address: "0000:01:00.1", managed: true },
    { type: "mdev", uuid: UUID, model: "vfio-pci" },
  ]);
  assert.equal(domain.interfaces, [{ type: "network", mac: "52:54:00:ab:cd:ef", network: "default" }]);
  assert.is(domain.metadata?.localName, "hooks");
  assert.is(domain.metadata?.namespaceURI, "urn:vmhook:1");
});

test("thousands of pins over every CPU (the XML of one domain, read at each of its events) are read in a moment, not minutes and gigabytes: what libvirt's event thread waits for", () => {
  const pins = Array.from({ length: 2048 }, (_, vcpu) => `<vcpupin vcpu='${vcpu}' cpuset='0-8191,^${vcpu}'/><iothreadpin iothread='${vcpu + 1}' cpuset='0-8190'/>`).join("");
  const started = performance.now();
  const domain = parseDomain(`<domain><name>vm</name><uuid>${UUID}</uuid><vcpu>2048</vcpu><cputune>${pins}<emulatorpin cpuset='8191'/></cputune></domain>`);
  assert.equal(domain.cputune.pinned, Array.from({ length: 8192 }, (_, cpu) => cpu));
  const seconds = (performance.now() - started) / 1000;
  assert.ok(seconds < 3, `read in ${seconds.toFixed(1)} s`);
});

test("elements in a namespace are not libvirt's: a <domain> in a default namespace has no <name>", () => {
  assert.throws(() => parseDomain(`<domain xmlns='urn:x'><name>vm</name><uuid>${UUID}</uuid></domain>`), /<domain>: has no <name>/);
  const domain = parseDomain(`<domain><name>vm</name><uuid>${UUID}</uuid><x:memory xmlns:x='urn:x' unit='GiB'>8</x:memory></domain>`);
  assert.is(domain.memoryKiB, 0);
  assert.is(domain.metadata, undefined);
});

test("only the first <metadata> is the domain's, as libvirt keeps it: vmhook's element in a later one, which libvirt drops at define, is refused naming the move", () => {
  const domain = (metadata: string) => `<domain><name>vm</name><uuid>${UUID}</uuid>${metadata}</domain>`;
  const HOOKS = "<vmhook:hooks xmlns:vmhook='urn:vmhook:1'><vmhook:vfio/></vmhook:hooks>";
  assert.throws(
    () => parseDomain(domain(`<metadata><app:x xmlns:app='urn:app'/></metadata><metadata>${HOOKS}</metadata>`)),
    (error: Error) => error.message.startsWith("<metadata>: appears 2 times: libvirt keeps only the first (virsh define drops the others), so <vmhook:hooks> in <metadata> number 2 would never run; move it into the first <metadata>"),
  );
  // another application's element in a later <metadata> is its own affair; vmhook reads the first
  assert.is(parseDomain(domain(`<metadata>${HOOKS}</metadata><metadata><app:x xmlns:app='urn:app'/></metadata>`)).metadata?.localName, "hooks");
});

test("a second <vmhook:hooks> in <metadata>, which libvirt drops at define (it keeps the first element of each namespace), is refused naming the merge, whatever its prefix", () => {
  const domain = (metadata: string) => `<domain><name>vm</name><uuid>${UUID}</uuid><metadata>${metadata}</metadata></domain>`;
  const FIRST = "<vmhook:hooks xmlns:vmhook='urn:vmhook:1'><vmhook:vfio/></vmhook:hooks>";
  for (const second of ["<vmhook:hooks xmlns:vmhook='urn:vmhook:1'><vmhook:hugepages size='2M'/></vmhook:hooks>", "<v:hooks xmlns:v='urn:vmhook:1'><v:hugepages size='2M'/></v:hooks>"]) {
    assert.throws(
      () => parseDomain(domain(`${FIRST}<app:x xmlns:app='urn:app'/>${second}`)),
      (error: VmhookError) =>
        error.message === `<${second.slice(1, second.indexOf(" "))}>: is a second element in vmhook's namespace in <metadata>: libvirt keeps only the first (virsh define drops the others), so its plugins would never run; merge them into one <vmhook:hooks>` &&
        error.lines.join("\n") === `fix: virsh metadata vm --uri urn:vmhook:1 --key vmhook --config --set '<hooks><vfio/><hugepages size="2M"/></hooks>'`,
      second,
    );
  }
});

const hostdevs = (devices: string) => parseDomain(`<domain><name>vm</name><uuid>${UUID}</uuid><devices>${devices}</devices></domain>`).hostdevs;

test("a PCI hostdev written by hand reads as libvirt reads it: no mode is subsystem; a number without 0x is decimal, with a leading 0 octal", () => {
  // libvirt parses these with strtoul base 0 (virXMLPropUInt) and writes them back as 0x0a, 0x08; vmhook plan on the file must mean the same device.
  assert.equal(hostdevs(`<hostdev type='pci' managed='yes'><source><address domain='0' bus='10' slot='010' function='1'/></source></hostdev>`), [{ type: "pci", address: "0000:0a:08.1", managed: true }]);
  assert.equal(hostdevs(`<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0X1f' slot='0x00' function='0x7'/></source></hostdev>`), [{ type: "pci", address: "0000:1f:00.7", managed: false }]);
  // strtoul skips leading white space and takes a + sign; virStrToLong_uip refuses a - sign and anything after the number.
  assert.equal(hostdevs(`<hostdev type='pci'><source><address domain=' 0' bus='+0x0a' slot=' +010' function='&#9;1'/></source></hostdev>`), [{ type: "pci", address: "0000:0a:08.1", managed: false }]);
  for (const bad of ["09", "0x", "-1", "1a", "-0", "1 ", "+", "+-1", "++1", "+ 1"]) {
    assert.throws(() => hostdevs(`<hostdev mode='subsystem' type='pci'><source><address bus='${bad}' slot='0'/></source></hostdev>`), (error: Error) => error.message === `<hostdev type='pci'><source><address>: bus="${bad}" is not a number like 0x01 (hexadecimal), 1 (decimal) or 01 (octal)`);
  }
});

// An SR-IOV VF given to the VM as a NIC: libvirt keeps it as an <interface>, the PCI address in its <source>, and
// (managed='yes') moves it to vfio-pci itself. Only <devices>' own children are libvirt's devices.
test("an <interface type='hostdev'> with a PCI source reads as the domain's own PCI device; a <hostdev> or <interface> anywhere but straight in <devices> is not read", () => {
  const domain = parseDomain(`<domain><name>vm</name><uuid>${UUID}</uuid>
    <hostdev mode='subsystem' type='pci'><source><address bus='0x07' slot='0x00'/></source></hostdev>
    <metadata><other xmlns='urn:other'><devices><hostdev mode='subsystem' type='pci'><source><address bus='0x08' slot='0x00'/></source></hostdev></devices></other></metadata>
    <devices>
      <interface type='hostdev' managed='yes'><mac address='52:54:00:6d:90:02'/><source><address type='pci' domain='0x0000' bus='0x03' slot='0x10' function='0x2'/></source></interface>
      <interface type='hostdev'><source><address type='pci' domain='0' bus='4' slot='16' function='01'/></source></interface>
      <interface type='hostdev'><source><address type='usb' bus='1' device='3'/></source></interface>
      <interface type='network'><source network='default'/><address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></interface>
      <interface type='hostdev' managed='yes'><source><address type='pci' bus='0x06' slot='0x00'/></source><hostdev mode='subsystem' type='pci'><source><address bus='0x09' slot='0x00'/></source></hostdev></interface>
    </devices></domain>`);
  assert.equal(domain.hostdevInterfaces, [
    { type: "pci", address: "0000:03:10.2", managed: true },
    { type: "pci", address: "0000:04:10.1", managed: false },
    { type: "pci", address: "0000:06:00.0", managed: true },
  ]);
  assert.equal(domain.hostdevs, []);
  assert.throws(
    () => parseDomain(`<domain><name>vm</name><uuid>${UUID}</uuid><devices><interface type='hostdev'><source><address type='pci' bus='0x100' slot='0'/></source></interface></devices></domain>`),
    (error: Error) => error.message === `<interface type='hostdev'><source><address type='pci'>: bus="0x100" is above 0xff, the largest PCI bus; lspci -D shows the device's address`,
  );
});

// libvirt's PCI domain is 32 bits (pciDomain: uint32), and the kernel names a device "%04x:%02x:%02x.%d": a device
// behind Intel VMD is 10000:e1:00.0. vmhook reads the hostdev, and devices= in any case, as the kernel names it.
test("a PCI domain above 0xffff (Intel VMD: 10000:e1:00.0) reads as the kernel names the device; beyond 32 bits it is refused", () => {
  const vmd = (domain: string) => hostdevs(`<hostdev mode='subsystem' type='pci'><source><address domain='${domain}' bus='0xe1' slot='0x00' function='0x0'/></source></hostdev>`);
  assert.equal(vmd("0x10000"), [{ type: "pci", address: "10000:e1:00.0", managed: false }]);
  assert.equal(vmd("0xffffffff"), [{ type: "pci", address: "ffffffff:e1:00.0", managed: false }]);
  assert.throws(() => vmd("0x100000000"), (error: Error) => error.message.startsWith(`<hostdev type='pci'><source><address>: domain="0x100000000"`));
  assert.is(parsePciAddress("10000:E1:00.0", "<vmhook:vfio>", "devices"), "10000:e1:00.0");
  assert.is(parsePciAddress("00010000:e1:00.0", "<vmhook:vfio>", "devices"), "10000:e1:00.0");
  assert.ok(PATTERNS.pciAddress.test("10000:e1:00.0"));
  // One name per device: no leading zeros beyond the kernel's four digits, no domain beyond 32 bits.
  for (const bad of ["010000:e1:00.0", "100000000:e1:00.0"]) assert.not.ok(PATTERNS.pciAddress.test(bad), bad);
});

const withMemory = (memory: string, uuid = UUID) => parseDomain(`<domain><name>vm</name><uuid>${uuid}</uuid>${memory}</domain>`);

test("memory units read as libvirt's virScaleInteger reads them: bytes, powers of 1024 up to E/EiB, powers of 1000 (KB…EB), any case; a part KiB rounds up", () => {
  const cases: [string, string, number][] = [
    ["b", "1073741824", 1048576], ["bytes", "1073741824", 1048576], ["byte", "1000", 1],
    ["KB", "1024000", 1000000], ["k", "4", 4], ["KiB", "4", 4], ["kib", "4", 4],
    ["MB", "1000", 976563], ["M", "2", 2048], ["MiB", "2", 2048],
    ["GB", "1", 976563], ["G", "1", 1024 ** 2], ["GIB", "1", 1024 ** 2],
    ["TB", "1", 976562500], ["T", "1", 1024 ** 3], ["TiB", "1", 1024 ** 3],
    ["PB", "1", 976562500000], ["P", "1", 1024 ** 4], ["PiB", "1", 1024 ** 4],
    ["EB", "1", 976562500000000], ["E", "1", 1024 ** 5], ["EiB", "1", 1024 ** 5],
  ];
  for (const [unit, value, kib] of cases) assert.is(withMemory(`<memory unit='${unit}'>${value}</memory>`).memoryKiB, kib, `${value} ${unit}`);
  for (const unit of ["KiBs", "x", "Ki", "kbb"]) {
    assert.throws(() => withMemory(`<memory unit='${unit}'>1</memory>`), (error: Error) => error.message.startsWith(`<memory>: value="1 ${unit}" is not a size (a whole number with a unit libvirt takes: b, KiB or k, MiB or M, … EiB or E; KB … EB count in 1000s)`));
  }
});

test("a <uuid> as libvirt reads it: 32 hex digits without dashes (or in groups) are the UUID libvirt writes with dashes", () => {
  assert.is(withMemory("", "6B0E2A4C6A4E4C579A430D1A5B3C7E01").uuid, UUID);
  assert.is(withMemory("", "6b0e2a4c-6a4e4c57-9a43-0d1a5b3c7e01").uuid, UUID);
  for (const bad of ["6b0e2a4c6a4e4c579a430d1a5b3c7e0", "6b0e2a4c6a4e4c579a430d1a5b3c7e011", "../../../../etc/passwd", "6b0e2a4c-6a4e-4c57-9a43-0d1a5b3c7e0g"]) {
    assert.throws(() => withMemory("", bad), (error: Error) => error.message === `<uuid>: value="${bad}" is not a UUID; write it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (uuidgen makes one)`);
  }
});

test.run();
