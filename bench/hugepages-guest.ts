// How fast an impossible hugepages request is refused on a real kernel, and
// how low MemAvailable goes meanwhile, next to the free-memory floor: the
// test/kernel guest (1536 MiB), the compiled hook, MemAvailable sampled by a
// shell loop (builtins only) for the whole run. The same-run baseline is the
// hook for a domain without vmhook metadata: the binary's start-up.
// Targets (printed, never asserted): the refusal costs well under a second
// beyond start-up; MemAvailable never falls below the floor.
//   bun bench/hugepages-guest.ts   (npm run bench runs it; ROUNDS=N)
import { bootGuest, guestUnavailable, type Guest } from "../test/kernel/guest.ts";

const ROUNDS = Number(process.env.ROUNDS ?? 5);
const UUID = "cccccccc-0000-4000-8000-00000000000b";

const domainXml = (metadata: string) => `<domain type="kvm"><name>vm</name><uuid>${UUID}</uuid><memory unit="MiB">4096</memory><vcpu>1</vcpu>
<memoryBacking><hugepages/></memoryBacking><metadata>${metadata}</metadata></domain>`;
const IMPOSSIBLE = domainXml('<vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks>');
const PLAIN = domainXml("");

/** Wall times in ms of ROUNDS hook runs (from /proc/uptime: busybox date has no sub-second clock); the exit codes must match. */
async function timed(guest: Guest, file: string, expectedCode: number): Promise<number[]> {
  const out = await guest.ok(`for i in $(seq ${ROUNDS}); do
    read a _ < /proc/uptime; /etc/libvirt/hooks/qemu vm prepare begin - < ${file} 2>/dev/null; code=$?; read b _ < /proc/uptime
    [ $code = ${expectedCode} ] || { echo "exit $code, expected ${expectedCode}"; exit 1; }
    echo "$a $b"
  done`);
  return out.trim().split("\n").map((line) => line.split(" ").map(Number)).map(([a, b]) => Math.round((b! - a!) * 1000));
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

const unavailable = guestUnavailable();
if (unavailable) {
  console.log(`hugepages refusal on a real kernel: not measured: ${unavailable}`);
  process.exit(0);
}
const guest = await bootGuest({ memoryMiB: 1536 });
try {
  await guest.ok(`cat > /tmp/impossible.xml <<'EOF'\n${IMPOSSIBLE}\nEOF\ncat > /tmp/plain.xml <<'EOF'\n${PLAIN}\nEOF`);
  const totalKiB = Number(/MemTotal:\s+(\d+)/.exec(await guest.ok("cat /proc/meminfo"))![1]);
  const floorKiB = Math.max(Math.ceil(totalKiB / 20), 1024 * 1024);
  await guest.ok(`( while :; do while read -r key value unit; do [ "$key" = MemAvailable: ] && echo "$value"; done < /proc/meminfo; done > /tmp/samples ) & echo $! > /tmp/sampler`);
  const baseline = await timed(guest, "/tmp/plain.xml", 0);
  const refusal = await timed(guest, "/tmp/impossible.xml", 1);
  const [samples, lowestKiB] = (await guest.ok("kill $(cat /tmp/sampler); wc -l < /tmp/samples; sort -n /tmp/samples | head -1")).trim().split("\n").map(Number);
  const pool = (await guest.ok("cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")).trim();
  const [base, refused] = [median(baseline), median(refusal)];
  const mib = (kib: number) => `${Math.floor(kib / 1024)} MiB`;
  console.log(`hugepages refusal on a real kernel: TCG guest, kernel ${guest.kernelVersion}, MemTotal ${mib(totalKiB)}, ${ROUNDS} rounds each, 4096 MiB asked`);
  console.log(`  baseline: hook, domain without metadata   median ${base} ms  (${baseline.join(", ")})`);
  console.log(`  impossible request refused (exit 1)       median ${refused} ms  (${refusal.join(", ")})  ${(refused / base).toFixed(2)}x the baseline, +${refused - base} ms`);
  console.log(`  lowest MemAvailable in ${samples} samples: ${mib(lowestKiB!)}; floor ${mib(floorKiB)}: ${(lowestKiB! / floorKiB).toFixed(2)}x the floor; pool after: ${pool} pages`);
  const metRefusal = refused - base < 500 ? "met" : "MISSED";
  const metFloor = lowestKiB! >= floorKiB ? "met" : "MISSED";
  console.log(`  target: refused well under a second beyond start-up: ${metRefusal} (+${refused - base} ms); never below the floor: ${metFloor}`);
} finally {
  await guest.shutdown();
}
