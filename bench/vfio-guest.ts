// Wall times of the vfio plugin's single-GPU handover on a real kernel (the
// test/kernel guest): prepare (GPU → vfio-pci) and release (back to bochs-drm),
// each measured inside the guest around the hook, as libvirt would run it.
//   npm run bench:vfio     (builds dist/vmhook first)
import { bootGuest } from "../test/kernel/guest.ts";
import { domainXml, hook } from "../test/kernel/vfio-domain.ts";

const ROUNDS = Number(process.env.ROUNDS ?? 3);

/** Runs the hook event in the guest and returns its wall time in ms (busybox date has no sub-second clock: /proc/uptime). */
async function timed(guest: Awaited<ReturnType<typeof bootGuest>>, event: "prepare begin" | "release end"): Promise<number> {
  const out = await guest.ok(`read a _ < /proc/uptime\n${hook(domainXml('single-gpu="yes"'), event)} || exit 1\nread b _ < /proc/uptime\necho "$a $b"`);
  const [start, end] = out.trim().split("\n").pop()!.split(" ").map(Number);
  return Math.round((end! - start!) * 1000);
}

const guest = await bootGuest({ smp: 2, memoryMiB: 1024 });
try {
  const noop = await guest.ok("read a _ < /proc/uptime; vmhook --version >/dev/null; read b _ < /proc/uptime; echo $a $b");
  const [a, b] = noop.trim().split(" ").map(Number);
  const rows: [string, number][] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    rows.push([`prepare #${round}`, await timed(guest, "prepare begin")]);
    rows.push([`release #${round}`, await timed(guest, "release end")]);
  }
  process.stdout.write(`vfio single-GPU handover in the TCG guest (kernel ${guest.kernelVersion}, boot ${guest.bootMs} ms)\n`);
  process.stdout.write(`  vmhook --version (binary start-up alone): ${Math.round((b! - a!) * 1000)} ms\n`);
  for (const [what, ms] of rows) process.stdout.write(`  ${what.padEnd(12)} ${ms} ms\n`);
} finally {
  await guest.shutdown();
}
