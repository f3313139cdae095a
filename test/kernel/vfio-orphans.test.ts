// A program vmhook runs that outlives its hook, on a real kernel: the hook
// is killed (kill -9) while the display manager's stop command
// (displayManagerCommand, as on a host without systemd) still runs. That
// command goes on; `vmhook recover` must end it before it runs the start
// command, which the late stop would otherwise undo. One boot.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { domainXml, hook, STATE } from "./vfio-domain.ts";

const orphans = suite<{ guest?: Guest; baseline?: string }>("programs that outlive a killed hook, on a real kernel");
const skip = skipReason();
if (skip) console.log(`orphan kernel tests: skipped: ${skip}`);
const it = skip ? orphans.skip : orphans;

// The display manager is a mark in /tmp/dm: the stop takes 5 s (an init script's stop) and writes its pid first, the start is at once.
const SETTINGS = JSON.stringify({
  plugins: { vfio: { displayManagerCommand: { stop: ["/bin/sh", "-c", "echo $$ > /tmp/stop.pid; sleep 5; echo stopped > /tmp/dm"], start: ["/bin/sh", "-c", "echo running > /tmp/dm"], processes: [] } } },
});

orphans.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ smp: 2, memoryMiB: 1024 });
  await context.guest.ok(`mkdir -p /etc/vmhook && echo '${SETTINGS}' > /etc/vmhook/vmhook.json && echo running > /tmp/dm`);
  context.baseline = await context.guest.ok(STATE);
});
orphans.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("the hook killed while the display manager's stop command runs: recover kills that command before it starts the display manager, which stays running", async ({ guest, baseline }) => {
  const killed = await guest!.ok(`rm -f /tmp/stop.pid
${hook(domainXml('single-gpu="yes"'), "prepare begin", true)}
hook=$!
i=0; until [ -s /tmp/stop.pid ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.05; done
# Killed 2 s into the stop: the background modprobe vfio-pci has returned by then.
sleep 2; kill -9 $hook; sleep 0.2; [ -d /proc/$(cat /tmp/stop.pid) ] && echo "killed; the stop command runs on" || echo "killed; the stop command is gone"`);
  assert.is(killed, "killed; the stop command runs on\n", "the stop command outlives the hook");

  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 0, recover.stdout);
  // Past the stop's 5 s: it never wrote "stopped".
  assert.is(await guest!.ok("sleep 5; cat /tmp/dm; [ -d /proc/$(cat /tmp/stop.pid) ] || echo gone"), "running\ngone\n", "the display manager runs once the stop's time is up");
  assert.match(recover.stdout, /vfio: the display manager command pid \d+, left running by a vmhook that was killed, is killed \(with what it started\) before \/bin\/sh -c echo running > \/tmp\/dm runs/);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

orphans.run();
