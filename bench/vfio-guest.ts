// Wall times of the vfio plugin's single-GPU handover on a real kernel (the
// test/kernel guest): prepare (GPU → vfio-pci) and release (back to bochs-drm),
// each measured inside the guest around the hook, as libvirt would run it,
// next to the floor: a bare shell script doing the same sysfs operations in
// the same guest run. The ratio counts vmhook's time beyond its own no-op
// start, which the shell does not pay: the hook for a domain without vmhook
// metadata (the same binary, the same way in, nothing to do). `vmhook
// --version` is printed too: it loads the CLI (yargs), so it is no no-op.
//   npm run bench:vfio     (builds dist/vmhook first; ROUNDS=N, default 5)
// COMPARE="before=/path/to/vmhook after=dist/vmhook" measures several
// binaries, round by round in the same guest, each against its own no-op start,
// and prints each one's difference from the first, round by round.
import * as path from "node:path";
import { bootGuest } from "../test/kernel/guest.ts";
import { domainXml, GPU, writeDomain } from "../test/kernel/vfio-domain.ts";
import { median, timedInGuest as timed } from "./guest-timing.ts";

const ROUNDS = Number(process.env.ROUNDS ?? 5);

// Each binary is installed as /opt/vmhook-LABEL/qemu: the name puts it in hook mode.
const binaries = (process.env.COMPARE ?? "vmhook=dist/vmhook").split(/\s+/).filter(Boolean).map((pair) => {
  const [label, file] = pair.split("=");
  if (!label || !file || !/^[\w.-]+$/.test(label)) throw new Error(`COMPARE: "${pair}" is not LABEL=FILE`);
  return { label, file: path.resolve(file), hook: `/opt/vmhook-${label}/qemu` };
});

const PLAIN_DOMAIN = `<domain type='kvm'><name>plain</name><uuid>6b0e2a4c-6a4e-4c57-9a43-0d1a5b3c7e99</uuid><memory unit='MiB'>256</memory></domain>`;
const GPU_DOMAIN = domainXml('single-gpu="yes"');

// What vmhook does for a single GPU with fbcon on bochs-drm, in shell: no
// checks, no journal, no log. Prepare: console off, vfio-pci loaded, the GPU
// moved; release: the GPU back, vfio-pci unloaded, console on.
const SHELL_PREPARE = `
for v in /sys/class/vtconsole/vtcon*; do grep -q 'frame buffer' $v/name && [ "$(cat $v/bind)" = 1 ] && echo 0 > $v/bind; done
modprobe vfio-pci
d=/sys/bus/pci/devices/${GPU}
echo vfio-pci > $d/driver_override
echo ${GPU} > $d/driver/unbind
echo ${GPU} > /sys/bus/pci/drivers_probe
[ "$(basename "$(readlink $d/driver)")" = vfio-pci ]`;
const SHELL_RELEASE = `
d=/sys/bus/pci/devices/${GPU}
echo ${GPU} > $d/driver/unbind
echo > $d/driver_override
echo ${GPU} > /sys/bus/pci/drivers_probe
modprobe -r vfio-pci
for v in /sys/class/vtconsole/vtcon*; do grep -q 'frame buffer' $v/name && [ "$(cat $v/bind)" = 0 ] && echo 1 > $v/bind; done
[ "$(basename "$(readlink $d/driver)")" = bochs-drm ]`;

// The fastest round: on a shared 2-core machine TCG time is mostly other load,
// which only ever adds. The median is printed beside it, and a ratio of
// medians: the fastest rounds of two series need not be equally lucky.
const best = (values: number[]) => Math.min(...values);
const ms = (value: number) => `${Math.round(value)} ms`;
const signedMs = (value: number) => `${value > 0 ? "+" : ""}${Math.round(value)} ms`;
const series = () => ({ noop: [] as number[], version: [] as number[], prepare: [] as number[], release: [] as number[] });

// The initramfs holds every binary (about 110 MiB each) in the guest's RAM.
const guest = await bootGuest({ smp: 2, memoryMiB: 1024 + 256 * binaries.length, files: Object.fromEntries(binaries.map(({ file, hook }) => [hook, file])) });
try {
  // Under any other name than qemu the binary is the CLI.
  const links = binaries.map(({ hook }) => `ln -s qemu ${path.dirname(hook)}/vmhook`).join("\n");
  await guest.ok(`${writeDomain(GPU_DOMAIN)}\ncat > /tmp/plain.xml <<'XML'\n${PLAIN_DOMAIN}\nXML\n${links}`);
  const times = new Map(binaries.map(({ label }) => [label, series()]));
  const shell = { prepare: [] as number[], release: [] as number[] };
  for (let round = 1; round <= ROUNDS; round++) {
    for (const { label, hook } of binaries) {
      const own = times.get(label)!;
      own.version.push(await timed(guest, `${path.dirname(hook)}/vmhook --version >/dev/null`));
      own.noop.push(await timed(guest, `${hook} plain prepare begin - < /tmp/plain.xml`));
      own.prepare.push(await timed(guest, `${hook} gpu-vm prepare begin - < /tmp/domain.xml`));
      own.release.push(await timed(guest, `${hook} gpu-vm release end - < /tmp/domain.xml`));
    }
    shell.prepare.push(await timed(guest, SHELL_PREPARE));
    shell.release.push(await timed(guest, SHELL_RELEASE));
  }
  const out = process.stdout;
  out.write(`vfio single-GPU handover in the TCG guest (kernel ${guest.kernelVersion}, boot ${guest.bootMs} ms, ${ROUNDS} rounds)\n`);
  out.write(`  shell floor: prepare ${ms(best(shell.prepare))} (median ${ms(median(shell.prepare))}), release ${ms(best(shell.release))} (median ${ms(median(shell.release))})\n`);
  out.write(`    [prepare ${shell.prepare.map(Math.round).join(", ")}] [release ${shell.release.map(Math.round).join(", ")}]\n`);
  for (const { label } of binaries) {
    const own = times.get(label)!;
    out.write(`  ${label}: hook, domain without metadata (no-op start) ${ms(best(own.noop))} (median ${ms(median(own.noop))}); --version (CLI start, for reference) ${ms(best(own.version))}\n`);
    for (const event of ["prepare", "release"] as const) {
      const beyond = (of: (values: number[]) => number) => Math.max(of(own[event]) - of(own.noop), 0);
      const ratio = (of: (values: number[]) => number) => (beyond(of) / of(shell[event])).toFixed(2);
      out.write(
        `    ${event.padEnd(8)} fastest ${ms(best(own[event]))}, beyond start ${ms(beyond(best))} = ${ratio(best)}x the shell; median ${ms(median(own[event]))}, beyond start ${ms(beyond(median))} = ${ratio(median)}x\n`,
      );
      out.write(`      [${own[event].map(Math.round).join(", ")}]\n`);
    }
  }
  // Each round ran every binary back to back, so a busier minute slows them
  // alike: the median of the per-round differences tells a change of a few
  // ms that the medians of whole runs, 10-20 ms apart from run to run, hide.
  const [first, ...others] = binaries;
  for (const { label } of others) {
    for (const event of ["noop", "prepare", "release"] as const) {
      const [base, own] = [times.get(first!.label)![event], times.get(label)![event]];
      const differences = own.map((value, round) => value - base[round]!).sort((a, b) => a - b);
      const quarter = (at: number) => signedMs(differences[Math.round(at * (differences.length - 1))]!);
      out.write(`  ${label} - ${first!.label}, round by round: ${event.padEnd(8)} median ${signedMs(median(differences))} (middle half ${quarter(0.25)} to ${quarter(0.75)})\n`);
    }
  }
} finally {
  await guest.shutdown();
}
