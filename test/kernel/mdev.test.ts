// The mdev plugin on a real kernel: Debian's 6.1 in the QEMU bench with the
// kernel's mtty sample driver (test/kernel/mtty.ts), whose virtual parent
// "mtty" offers mtty-1 (one serial port) and mtty-2 (two), 24 ports in all.
// The compiled vmhook runs as libvirt would run the hook.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest, type ShResult } from "./guest.ts";
import { buildMtty } from "./mtty.ts";
import { buildVfioHolder } from "./vfio-holder.ts";

const MTTY = "/sys/class/mdev_bus/mtty/mdev_supported_types";
const UUID_A = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const UUID_B = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";
const DOMAIN_UUID = "5f0d7c8e-2a4b-4c1d-9e3f-7a6b5c4d3e2f";

const bench = suite<{ guest?: Guest }>("mdev on mtty");
const skip = skipReason();
if (skip) console.log(`mdev kernel tests: skipped: ${skip}`);

bench.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ extraModules: [buildMtty()], availableModules: ["vfio_iommu_type1"], files: { "/usr/bin/vfio-holder": buildVfioHolder() } });
});
bench.after(async (context) => {
  await context.guest?.shutdown();
});

const it = skip ? bench.skip : bench;

/** A domain with these mdev hostdevs and this vmhook metadata. */
function domainXml(mdevs: string[], hooks: string, pcis = ""): string {
  const hostdevs = mdevs.map((uuid) => `<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='${uuid}'/></source></hostdev>`);
  return `<domain type='kvm'><name>vm</name><uuid>${DOMAIN_UUID}</uuid><memory unit='KiB'>262144</memory>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${hooks}</vmhook:hooks></metadata>
<devices>${hostdevs.join("")}${pcis}</devices></domain>`;
}

/** Runs the hook as libvirt does: qemu NAME OP SUBOP - with the XML on stdin. */
function hook(guest: Guest, event: "prepare begin" | "release end", xml: string): Promise<ShResult> {
  return guest.sh(`cat > /tmp/domain.xml <<'XML'\n${xml}\nXML\n/etc/libvirt/hooks/qemu vm ${event} - < /tmp/domain.xml`);
}

async function available(guest: Guest): Promise<string> {
  return guest.ok(`for t in mtty-1 mtty-2; do echo "$t $(cat ${MTTY}/$t/available_instances)"; done`);
}

const mdevs = (guest: Guest) => guest.ok("ls /sys/bus/mdev/devices");
const mdevType = async (guest: Guest, uuid: string) => (await guest.ok(`basename $(readlink /sys/bus/mdev/devices/${uuid}/mdev_type)`)).trim();

it("the mtty parent offers mtty-1 and mtty-2", async ({ guest }) => {
  assert.is(await guest!.ok(`ls ${MTTY}`), "mtty-1\nmtty-2\n");
  assert.is(await available(guest!), "mtty-1 24\nmtty-2 12\n");
  assert.is(await mdevs(guest!), "");
});

it("two mdevs are created at prepare and removed at release; available_instances ends where it began", async ({ guest }) => {
  const start = await available(guest!);
  const xml = domainXml([UUID_A, UUID_B], `<vmhook:mdev parent="mtty" type="mtty-2" uuid="${UUID_A}"/><vmhook:mdev type="mtty-1" uuid="${UUID_B}"/>`);

  const prepare = await hook(guest!, "prepare begin", xml);
  assert.equal(prepare, { code: 0, stdout: "" });
  assert.is(await mdevType(guest!, UUID_A), "mtty-2");
  assert.is(await mdevType(guest!, UUID_B), "mtty-1");
  assert.is(await available(guest!), "mtty-1 21\nmtty-2 10\n"); // 3 of 24 ports taken
  assert.match(await guest!.ok(`cat /run/vmhook/${DOMAIN_UUID}.json`), `"uuid": "${UUID_B}"`);

  const release = await hook(guest!, "release end", xml);
  assert.equal(release, { code: 0, stdout: "" });
  assert.is(await mdevs(guest!), "");
  assert.is(await available(guest!), start);
  assert.is((await guest!.sh(`test -e /run/vmhook/${DOMAIN_UUID}.json`)).code, 1, "journal removed");
});

it("an unknown type fails at prepare listing the offered types; nothing is created", async ({ guest }) => {
  const start = await available(guest!);
  const result = await hook(guest!, "prepare begin", domainXml([UUID_A], `<vmhook:mdev parent="mtty" type="mtty-3"/>`));
  assert.is(result.code, 1);
  const lines = result.stdout.split("\n");
  assert.is(lines[0], `vmhook: <vmhook:mdev parent="mtty" type="mtty-3">: type mtty-3 is not offered by mtty; choose one of mtty-1, mtty-2`);
  assert.ok(lines.includes("  mtty-1: Single port serial; 24 available"), result.stdout);
  assert.ok(lines.includes("  mtty-2: Dual port serial; 12 available"), result.stdout);
  assert.is(await mdevs(guest!), "");
  assert.is(await available(guest!), start);
});

it("a pre-existing mdev of the same type is used and left in place at release", async ({ guest }) => {
  await guest!.ok(`echo ${UUID_A} > ${MTTY}/mtty-2/create`);
  const xml = domainXml([UUID_A], `<vmhook:mdev type="mtty-2"/>`);
  assert.equal(await hook(guest!, "prepare begin", xml), { code: 0, stdout: "" });
  assert.equal(await hook(guest!, "release end", xml), { code: 0, stdout: "" });
  assert.is(await mdevType(guest!, UUID_A), "mtty-2");
  await guest!.ok(`echo 1 > /sys/bus/mdev/devices/${UUID_A}/remove`);
  assert.is(await mdevs(guest!), "");
});

it("a later plugin that cannot work refuses the start before any mdev is created (the whole event is planned first)", async ({ guest }) => {
  const start = await available(guest!);
  // The bench's std VGA is no NVIDIA virtual function: <vmhook:vgpu>'s planner refuses it, before the mdevs' steps run.
  const vga = `<hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x00' slot='0x01' function='0x0'/></source></hostdev>`;
  const xml = domainXml([UUID_A, UUID_B], `<vmhook:mdev type="mtty-2" uuid="${UUID_A}"/><vmhook:mdev type="mtty-2" uuid="${UUID_B}"/><vmhook:vgpu type="L40S-12Q"/>`, vga);
  const result = await hook(guest!, "prepare begin", xml);
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, "0000:00:01.0 has no nvidia/current_vgpu_type");
  assert.match(result.stdout, "the host was left as it was (0 change(s) undone)");
  assert.is(await mdevs(guest!), "");
  assert.is(await available(guest!), start);
  assert.is((await guest!.sh(`test -e /run/vmhook/${DOMAIN_UUID}.json`)).code, 1, "no journal left");
});

it("a release while a process holds the mdev's vfio device (a QEMU left over): the remove waits for it, the error names that process and /dev/vfio/N; once it has ended, recover settles the record", async ({ guest }) => {
  const start = await available(guest!);
  assert.equal(await hook(guest!, "prepare begin", domainXml([UUID_A], `<vmhook:mdev type="mtty-2"/>`)), { code: 0, stdout: "" });
  const group = (await guest!.ok(`basename $(readlink /sys/bus/mdev/devices/${UUID_A}/iommu_group)`)).trim();
  // A container, the group and the device's fd, as QEMU opens them: the mdev driver's remove() waits until that fd is closed.
  await guest!.ok(`modprobe vfio_iommu_type1; vfio-holder ${group} ${UUID_A} > /tmp/holder.out 2>&1 & echo $! > /tmp/holder.pid
for i in $(seq 100); do grep -q holding /tmp/holder.out && break; sleep 0.1; done; grep -q holding /tmp/holder.out || { cat /tmp/holder.out; exit 1; }`);
  const holder = (await guest!.ok("cat /tmp/holder.pid")).trim();

  const release = await guest!.sh("/etc/libvirt/hooks/qemu vm release end - < /tmp/domain.xml", { timeoutMs: 120_000 });
  assert.is(release.code, 0, release.stdout);
  assert.match(release.stdout, `${UUID_A}: driver mtty did not return within 30 s from writing "1" to /sys/bus/mdev/devices/${UUID_A}/remove`);
  assert.match(release.stdout, `the remove waits until the mdev's vfio device is closed, and pid ${holder} (vfio-holder) holds /dev/vfio/${group}: end it and the remove finishes`);
  assert.match(await guest!.ok("vmhook status"), `${UUID_A}: driver mtty did not return`);

  await guest!.ok(`kill ${holder}; for i in $(seq 100); do [ -e /sys/bus/mdev/devices/${UUID_A} ] || break; sleep 0.1; done`);
  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 0, recover.stdout);
  assert.is(await mdevs(guest!), "");
  assert.is(await available(guest!), start);
  assert.is((await guest!.sh(`test -e /run/vmhook/${DOMAIN_UUID}.json`)).code, 1, "journal removed");
});

bench.run();
