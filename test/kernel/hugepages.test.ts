// The hugepages plugin on a real kernel: a 1536 MiB guest, the compiled hook,
// and MemAvailable sampled by a background loop during every prepare.
//  - more than the guest's memory, and less but above the floor: refused at
//    once, the pool unchanged, MemAvailable never below the floor;
//  - a request that fits only once the page cache (a disk read) is dropped;
//  - memory fragmented on purpose with unmovable pages (test/kernel/fragment.js):
//    the retry path gives back, reclaims, and fails above the floor with the
//    pool unchanged; once the memory is whole again the same request succeeds;
//  - no hugetlbfs mount (libvirt could not start the VM): refused before a
//    page is taken; mounted as systemd mounts it, the kernel's mountinfo
//    (pagesize=2M) passes, for the tests after it;
//  - a host NUMA node of CPUs only (QEMU's node 1 has no memory): Linux 6.1
//    gives it pools that never grow, and prepare says the node has no memory.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";

const bench = suite<{ guest?: Guest; disk?: string }>("hugepages on a real kernel");
const skip = skipReason();
if (skip) console.log(`hugepages kernel tests: skipped: ${skip}`);

const UUID = "cccccccc-0000-4000-8000-000000000003";
const POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const DISK_MIB = 700;

bench.before(async (context) => {
  if (skip) return;
  context.disk = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-hp-")), "cache.img");
  fs.writeFileSync(context.disk, "");
  fs.truncateSync(context.disk, DISK_MIB * 1024 * 1024); // sparse: reading it still fills the guest's page cache
  context.guest = await bootGuest({
    memoryMiB: 1536,
    extraModules: ["virtio_pci", "virtio_blk"],
    files: { "/root/fragment.js": path.join(import.meta.dirname, "fragment.js") },
    // Node 1: a CPU and no memory.
    qemuArgs: ["-drive", `file=${context.disk},if=virtio,format=raw,readonly=on`, "-object", "memory-backend-ram,id=ram0,size=1536M", "-numa", "node,nodeid=0,cpus=0,memdev=ram0", "-numa", "node,nodeid=1,cpus=1"],
  });
});
bench.after(async (context) => {
  await context.guest?.shutdown();
  if (context.disk) fs.rmSync(path.dirname(context.disk), { recursive: true, force: true });
});

const it = skip ? bench.skip : bench;

const domainXml = (memoryMiB: number, attributes = "") => `<domain type="kvm"><name>vm</name><uuid>${UUID}</uuid><memory unit="MiB">${memoryMiB}</memory><vcpu>1</vcpu>
<memoryBacking><hugepages/></memoryBacking>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M" timeout="5"${attributes}/></vmhook:hooks></metadata></domain>`;

interface Prepared {
  code: number;
  stderr: string;
  /** The lowest MemAvailable the background loop saw while the hook ran, in KiB. */
  lowestKiB: number;
  samples: number;
  poolBefore: number;
  poolAfter: number;
}

const meminfo = async (guest: Guest, field: string) => Number(/(\d+)/.exec(await guest.ok(`grep '^${field}:' /proc/meminfo`))![1]);

/** prepare through the hook, MemAvailable sampled with shell builtins only (no fork per sample) meanwhile. */
async function prepare(guest: Guest, memoryMiB: number, attributes = ""): Promise<Prepared> {
  await guest.ok(`cat > /tmp/vm.xml <<'EOF'\n${domainXml(memoryMiB, attributes)}\nEOF`);
  const out = await guest.sh(`
    pool_before=$(cat ${POOL})
    ( while :; do while read -r key value unit; do [ "$key" = MemAvailable: ] && echo "$value"; done < /proc/meminfo; done > /tmp/samples ) &
    sampler=$!
    /etc/libvirt/hooks/qemu vm prepare begin - < /tmp/vm.xml 2> /tmp/stderr
    code=$?
    kill $sampler; wait $sampler 2>/dev/null
    echo "code=$code pool_before=$pool_before pool_after=$(cat ${POOL}) samples=$(wc -l < /tmp/samples) lowest=$(sort -n /tmp/samples | head -1)"
    cat /tmp/stderr`, { timeoutMs: 120_000 });
  const [, code, poolBefore, poolAfter, samples, lowest] = /code=(\d+) pool_before=(\d+) pool_after=(\d+) samples=(\d+) lowest=(\d+)/.exec(out.stdout)!.map(Number);
  return { code: code!, poolBefore: poolBefore!, poolAfter: poolAfter!, samples: samples!, lowestKiB: lowest!, stderr: out.stdout.split("\n").slice(1).join("\n") };
}

const release = (guest: Guest) => guest.ok("/etc/libvirt/hooks/qemu vm release end - < /tmp/vm.xml");
const setFloorMiB = (guest: Guest, mib: number | undefined) =>
  guest.ok(mib === undefined ? "rm -f /etc/vmhook/vmhook.json" : `mkdir -p /etc/vmhook && echo '{"plugins": {"hugepages": {"minFreeMiB": ${mib}}}}' > /etc/vmhook/vmhook.json`);

it("no hugetlbfs mount: refused before a page is taken, naming the mount libvirt needs; the kernel's own mountinfo of one passes", async ({ guest }) => {
  const unmounted = await prepare(guest!, 64);
  assert.is(unmounted.code, 1, unmounted.stderr);
  assert.match(unmounted.stderr, /^vmhook: hugepages: libvirt backs guest memory with 2M pages only from a hugetlbfs mount of that size, and this host has none \(no hugetlbfs is mounted\); mount one: mkdir -p \/dev\/hugepages && mount -t hugetlbfs -o pagesize=2M none \/dev\/hugepages, then restart libvirt/);
  assert.equal([unmounted.poolBefore, unmounted.poolAfter], [0, 0]);
  // As systemd's dev-hugepages.mount does, left for the tests below.
  await guest!.ok("mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages && grep hugetlbfs /proc/self/mountinfo");
  const mounted = await prepare(guest!, 64);
  assert.is(mounted.code, 0, mounted.stderr);
  assert.is(mounted.poolAfter, 32);
  await release(guest!);
  assert.is(Number((await guest!.ok(`cat ${POOL}`)).trim()), 0);
});

it("a NUMA node of CPUs only: Linux 6.1 gives it pools that never grow, and prepare says it has no memory, taking nothing", async ({ guest }) => {
  assert.is((await guest!.ok("cat /sys/devices/system/node/has_memory")).trim(), "0");
  // The pool is there (older kernels had none) and the kernel takes a write to it, granting nothing.
  await guest!.ok("echo 1 > /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages");
  assert.is((await guest!.ok("cat /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages")).trim(), "0");
  const refused = await prepare(guest!, 64, ' node="1"');
  assert.is(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /^vmhook: hugepages: host NUMA node 1 has no memory \(it is not in \/sys\/devices\/system\/node\/has_memory, which lists 0: /);
  assert.equal([refused.poolBefore, refused.poolAfter], [0, 0]);
  assert.not.ok((await guest!.sh(`test -e /run/vmhook/${UUID}.json`)).code === 0, "no journal left");
});

it("more memory than the guest has: refused at once, pool unchanged, MemAvailable never below the 1 GiB floor", async ({ guest }) => {
  const floorKiB = 1024 * 1024; // the larger of 5 % of ~1.4 GiB and 1 GiB
  const huge = await prepare(guest!, 2048);
  assert.is(huge.code, 1, huge.stderr);
  assert.match(huge.stderr, /^vmhook: hugepages: 1024 pages of 2M \(2048 MiB\) for the 2M pool cannot fit: the host has \d+ MiB available and keeps 1024 MiB free/);
  assert.match(huge.stderr, "can never give this: give the VM less <memory>");
  assert.equal([huge.poolBefore, huge.poolAfter], [0, 0]);
  assert.ok(huge.samples > 10, `only ${huge.samples} samples`);
  assert.ok(huge.lowestKiB >= floorKiB, `MemAvailable fell to ${huge.lowestKiB} KiB`);
  // Less than the guest has, but more than what is above the floor.
  const available = await meminfo(guest!, "MemAvailable");
  const aboveFloor = await prepare(guest!, Math.ceil((available - floorKiB) / 1024) + 64);
  assert.is(aboveFloor.code, 1, aboveFloor.stderr);
  assert.match(aboveFloor.stderr, "keeps 1024 MiB free");
  assert.match(aboveFloor.stderr, "hugepagesz=2M hugepages=", "boot reservation offered: it fits the machine");
  assert.equal([aboveFloor.poolBefore, aboveFloor.poolAfter], [0, 0]);
  assert.ok(aboveFloor.lowestKiB >= floorKiB, `MemAvailable fell to ${aboveFloor.lowestKiB} KiB`);
  assert.not.ok((await guest!.sh(`test -e /run/vmhook/${UUID}.json`)).code === 0, "no journal left");
});

it("a request that fits only once the page cache is dropped succeeds, above the floor", async ({ guest }) => {
  await setFloorMiB(guest!, 128);
  try {
    // dd, not cat (busybox cat splices to /dev/null without reading), and the
    // device held open meanwhile: its last close drops its page cache.
    await guest!.ok("echo 3 > /proc/sys/vm/drop_caches; sleep 100000 < /dev/vda & echo $! > /tmp/holder.pid; dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null", { timeoutMs: 120_000 });
    const free = await meminfo(guest!, "MemFree");
    const requestMiB = 2 * Math.floor(free / 2048) + 200;
    const available = await meminfo(guest!, "MemAvailable");
    assert.ok(requestMiB * 1024 < available - 128 * 1024, `the request (${requestMiB} MiB) passes the fit check only counting the cache (MemFree ${free} KiB, MemAvailable ${available} KiB)`);
    const prepared = await prepare(guest!, requestMiB);
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is(prepared.poolAfter, prepared.poolBefore + requestMiB / 2);
    assert.ok(prepared.lowestKiB >= 128 * 1024, `MemAvailable fell to ${prepared.lowestKiB} KiB`);
    await release(guest!);
    assert.is(Number((await guest!.ok(`cat ${POOL}`)).trim()), prepared.poolBefore);
  } finally {
    await guest!.sh(`kill $(cat /tmp/holder.pid); /etc/libvirt/hooks/qemu vm release end - < /tmp/vm.xml; echo 0 > ${POOL}`);
    await setFloorMiB(guest!, undefined);
  }
});

it("memory fragmented on purpose: each round gives back before reclaiming; fails above the floor, pool unchanged; whole again, it succeeds", async ({ guest }) => {
  await setFloorMiB(guest!, 128);
  await guest!.ok("echo 3 > /proc/sys/vm/drop_caches; rm -f /tmp/ready; ulimit -n 200000; BUN_BE_BUN=1 vmhook /root/fragment.js 700 /tmp/ready > /tmp/fragment.log 2>&1 & echo $! > /tmp/fragment.pid");
  await guest!.ok("i=0; while [ ! -e /tmp/ready ] && [ $i -lt 1500 ]; do usleep 100000; i=$((i+1)); done; test -e /tmp/ready || { cat /tmp/fragment.log; exit 1; }", { timeoutMs: 180_000 });
  // Above the floor in all, but more than the memory outside the holes.
  const available = await meminfo(guest!, "MemAvailable");
  const requestMiB = 2 * Math.floor((available / 1024 - 128 - 40) / 2);
  const fragmented = await prepare(guest!, requestMiB);
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.is(fragmented.code, 1, `it should not fit around the locked pages: ${fragmented.stderr}`);
  assert.match(fragmented.stderr, new RegExp(`^vmhook: hugepages: got \\d+ of ${requestMiB / 2} pages of 2M; after giving them back \\d+ MiB available`));
  assert.match(fragmented.stderr, /3 round\(s\)/);
  assert.equal([fragmented.poolBefore, fragmented.poolAfter], [0, 0]);
  assert.ok(fragmented.lowestKiB >= 128 * 1024, `MemAvailable fell to ${fragmented.lowestKiB} KiB`);
  assert.match(log, "the host was left as it was");
  await guest!.ok("kill $(cat /tmp/fragment.pid); wait 2>/dev/null; true");
  const whole = await prepare(guest!, requestMiB);
  assert.is(whole.code, 0, whole.stderr);
  assert.is(whole.poolAfter, requestMiB / 2);
  assert.ok(whole.lowestKiB >= 128 * 1024, `MemAvailable fell to ${whole.lowestKiB} KiB`);
  await release(guest!);
  assert.is(Number((await guest!.ok(`cat ${POOL}`)).trim()), 0);
  await setFloorMiB(guest!, undefined);
});

bench.run();
