// A wall clock stepped while the hook waits, on a real kernel: `date -s` in the
// guest (the guest's clock is its own), as NTP steps it at boot when VMs with
// <autostart> start. The hook waits for the domain's lock, which a stand-in
// for another run (flock) holds; the time it took is read from /proc/uptime,
// which no step moves.
//  - stepped back an hour: the hook still gives up at its deadline, saying
//    why, rather than waiting on (until its watchdog kills it, undoing nothing);
//  - stepped forward an hour: the hook waits on, takes the lock once it is
//    free, and the start succeeds.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";

const bench = suite<{ guest?: Guest }>("a wall clock stepped during a wait, on a real kernel");
const skip = skipReason();
if (skip) console.log(`clock kernel tests: skipped: ${skip}`);

const UUID = "cccccccc-0000-4000-8000-00000000c10c";
const LOCK = `/run/vmhook/${UUID}.lock`;
const POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const DEADLINE_SECONDS = 6;
const XML = `<domain type="kvm"><name>vm</name><uuid>${UUID}</uuid><memory unit="MiB">16</memory><vcpu>1</vcpu>
<memoryBacking><hugepages/></memoryBacking>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks></metadata></domain>`;

bench.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ files: { "/usr/bin/flock": "/usr/bin/flock" } });
  await context.guest.ok(
    [
      "mkdir -p /etc/vmhook /dev/hugepages && mount -t hugetlbfs -o pagesize=2M none /dev/hugepages",
      // a floor the 1 GiB guest can keep: the pool's 16 MiB fit
      `echo '{"deadlineSeconds": ${DEADLINE_SECONDS}, "undoDeadlineSeconds": ${DEADLINE_SECONDS}, "plugins": {"hugepages": {"minFreeMiB": 256}}}' > /etc/vmhook/vmhook.json`,
      `cat > /root/vm.xml <<'XML'\n${XML}\nXML`,
      "mkdir -p -m 700 /run/vmhook",
    ].join("\n"),
  );
});
bench.after(async (context) => {
  await context.guest?.shutdown();
});

const it = skip ? bench.skip : bench;

interface Waited {
  code: number;
  stderr: string;
  /** Seconds the hook ran, by /proc/uptime. */
  seconds: number;
}

/**
 * prepare begin while flock holds the domain's lock for `holdSeconds` (with
 * -o the lock is flock's own, not its sleep's: killing flock lets it go); once
 * the hook has the lock file open (it is waiting), the guest's clock is stepped
 * by `stepSeconds`.
 */
async function prepareWhileLocked(guest: Guest, holdSeconds: number, stepSeconds: number): Promise<Waited> {
  const out = await guest.ok(
    `
flock -o ${LOCK} sleep ${holdSeconds} & holder=$!
while [ ! -e ${LOCK} ]; do sleep 0.1; done
start=$(cut -d' ' -f1 /proc/uptime)
/etc/libvirt/hooks/qemu vm prepare begin - < /root/vm.xml 2>/tmp/err & hook=$!
tries=0
until ls -l /proc/$hook/fd 2>/dev/null | grep -q ${UUID}.lock; do tries=$((tries + 1)); [ $tries -lt 600 ] || break; sleep 0.1; done
date -s @$(( $(date +%s) + ${stepSeconds} )) >/dev/null
wait $hook; code=$?
end=$(cut -d' ' -f1 /proc/uptime)
kill $holder 2>/dev/null; wait $holder 2>/dev/null
echo "$code $start $end"; cat /tmp/err`,
    { timeoutMs: 180_000 },
  );
  const [first = "", ...rest] = out.split("\n");
  const [code, start, end] = first.split(" ").map(Number);
  return { code: code!, stderr: rest.join("\n"), seconds: end! - start! };
}

it("stepped back an hour while the hook waits for a lock: it gives up at its deadline and says why", async ({ guest }) => {
  const waited = await prepareWhileLocked(guest!, 120, -3600);
  assert.is(waited.code, 1, waited.stderr);
  assert.match(waited.stderr, new RegExp(`^vmhook: another vmhook run of this domain \\(a hook or vmhook recover\\) held ${LOCK} until the deadline`));
  assert.not.match(waited.stderr, "was killed");
  assert.ok(waited.seconds >= DEADLINE_SECONDS && waited.seconds < DEADLINE_SECONDS + 6, `the hook ran ${waited.seconds} s; its deadline is ${DEADLINE_SECONDS} s`);
  assert.is((await guest!.ok(`cat ${POOL}`)).trim(), "0");
});

it("stepped forward an hour while the hook waits for a lock: it waits on, takes the lock once it is free, and the start succeeds", async ({ guest }) => {
  const waited = await prepareWhileLocked(guest!, 3, 3600);
  assert.is(waited.code, 0, waited.stderr);
  assert.is((await guest!.ok(`cat ${POOL}`)).trim(), "8");
  await guest!.ok("/etc/libvirt/hooks/qemu vm release end - < /root/vm.xml");
  assert.is((await guest!.ok(`cat ${POOL}`)).trim(), "0");
});

bench.run();
