// How fast an impossible hugepages request is refused on a real kernel, and
// how low MemAvailable goes meanwhile, next to the free-memory floor: the
// test/kernel guest (1536 MiB), the compiled hook, MemAvailable sampled by a
// shell loop (builtins only) for the whole run. Same-run baselines: the hook
// for a domain without vmhook metadata (the binary's start-up), and the
// prepare of a request that fits (64 MiB; released after each, untimed).
// Under TCG everything is ~10x slower than on hardware: bench/bench.ts times
// the refusal at native speed. Targets (printed, never asserted): refused no
// slower than a small prepare that succeeds, i.e. before any pool work;
// MemAvailable never below the floor.
//   bun bench/hugepages-guest.ts   (npm run bench runs it; ROUNDS=N)
import { bootGuest, guestUnavailable, type Guest } from "../test/kernel/guest.ts";
import { median, timedInGuest } from "./guest-timing.ts";

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const UUID = "cccccccc-0000-4000-8000-00000000000b";

const HUGEPAGES = '<vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks>';
const domainXml = (memoryMiB: number, metadata: string) => `<domain type="kvm"><name>vm</name><uuid>${UUID}</uuid><memory unit="MiB">${memoryMiB}</memory><vcpu>1</vcpu>
<memoryBacking><hugepages/></memoryBacking><metadata>${metadata}</metadata></domain>`;
const IMPOSSIBLE = domainXml(4096, HUGEPAGES);
const FITS = domainXml(64, HUGEPAGES);
const PLAIN = domainXml(4096, "");

/** Wall time in ms of one prepare (the guest's ns clock), then its release, untimed; the exit code must match. */
const timed = (guest: Guest, file: string, expectedCode: number) =>
  timedInGuest(guest, `/etc/libvirt/hooks/qemu vm prepare begin - < ${file} 2>/dev/null; code=$?`, {
    untimed: `[ $code = ${expectedCode} ] || { echo "exit $code, expected ${expectedCode}"; exit 1; }\n/etc/libvirt/hooks/qemu vm release end - < ${file}`,
    timeoutMs: 600_000,
  });

const unavailable = guestUnavailable();
if (unavailable) {
  console.log(`hugepages refusal on a real kernel: not measured: ${unavailable}`);
  process.exit(0);
}
const guest = await bootGuest({ memoryMiB: 1536 });
try {
  // libvirt's hugetlbfs mount, as systemd mounts it: without it prepare refuses
  await guest.ok("mkdir -p /dev/hugepages && mount -t hugetlbfs hugetlbfs /dev/hugepages");
  for (const [name, xml] of Object.entries({ impossible: IMPOSSIBLE, fits: FITS, plain: PLAIN })) await guest.ok(`cat > /tmp/${name}.xml <<'EOF'\n${xml}\nEOF`);
  const totalKiB = Number(/MemTotal:\s+(\d+)/.exec(await guest.ok("cat /proc/meminfo"))![1]);
  const floorKiB = Math.max(Math.ceil(totalKiB / 20), 1024 * 1024);
  await guest.ok(`( while :; do while read -r key value unit; do [ "$key" = MemAvailable: ] && echo "$value"; done < /proc/meminfo; done > /tmp/samples ) & echo $! > /tmp/sampler`);
  // Round by round, so a busier minute on the host slows all three alike.
  const [baseline, small, refusal] = [[] as number[], [] as number[], [] as number[]];
  for (let round = 0; round < ROUNDS; round++) {
    baseline.push(await timed(guest, "/tmp/plain.xml", 0));
    small.push(await timed(guest, "/tmp/fits.xml", 0));
    refusal.push(await timed(guest, "/tmp/impossible.xml", 1));
  }
  const [samples, lowestKiB] = (await guest.ok("kill $(cat /tmp/sampler); wc -l < /tmp/samples; sort -n /tmp/samples | head -1")).trim().split("\n").map(Number);
  const pool = (await guest.ok("cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")).trim();
  const [base, fits, refused] = [median(baseline), median(small), median(refusal)].map(Math.round) as [number, number, number];
  const mib = (kib: number) => `${Math.floor(kib / 1024)} MiB`;
  console.log(`hugepages refusal on a real kernel: TCG guest, kernel ${guest.kernelVersion}, MemTotal ${mib(totalKiB)}, ${ROUNDS} rounds each`);
  console.log(`  hook, domain without metadata (start-up)   median ${base} ms  (${baseline.map(Math.round).join(", ")})`);
  console.log(`  prepare, 64 MiB that fit (baseline)        median ${fits} ms  (${small.map(Math.round).join(", ")})`);
  console.log(`  prepare, 4096 MiB refused (exit 1)         median ${refused} ms  (${refusal.map(Math.round).join(", ")})  ${(refused / fits).toFixed(2)}x the baseline`);
  console.log(`  lowest MemAvailable in ${samples} samples: ${mib(lowestKiB!)}; floor ${mib(floorKiB)}: ${(lowestKiB! / floorKiB).toFixed(2)}x the floor; pool after: ${pool} pages`);
  const metRefusal = refused <= fits * 1.1 ? "met" : "MISSED";
  const metFloor = lowestKiB! >= floorKiB ? "met" : "MISSED";
  console.log(`  target: refused no slower than a prepare that fits: ${metRefusal} (${(refused / fits).toFixed(2)}x); never below the floor: ${metFloor} (${(lowestKiB! / floorKiB).toFixed(2)}x)`);
} finally {
  await guest.shutdown();
}
