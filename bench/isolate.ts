// Wall time of the isolate plugin's prepare and release (one hook process
// each, spawn to exit) while 2 and while 8 other isolating VMs run: each
// prepare and release reads every VM's journal under the host-wide lock and
// recomputes the host CPU set. The host is a test root (VMHOOK_ROOT) with a
// fake 16-CPU sysfs/procfs and a cgroup v2 tree without systemd whose files
// are plain files: this is vmhook's own cost, not the kernel's.
//   npm run bench:isolate   (or: bun bench/isolate.ts [VMHOOK] [ITERATIONS])
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const [vmhook = "dist/vmhook", iterationArg = "30"] = process.argv.slice(2);
const iterations = Number(iterationArg);
if (!fs.existsSync(vmhook)) throw new Error(`${vmhook} is missing; run npm run build`);
const CPUS = 16;
const IRQS = 40;

function fakeHost(root: string): void {
  const file = (hostPath: string, content: string) => {
    fs.mkdirSync(path.join(root, path.dirname(hostPath)), { recursive: true });
    fs.writeFileSync(path.join(root, hostPath), `${content}\n`);
  };
  file("/sys/devices/system/cpu/online", `0-${CPUS - 1}`);
  file("/sys/devices/system/cpu/present", `0-${CPUS - 1}`);
  file("/proc/1/comm", "init");
  file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids");
  file("/sys/fs/cgroup/cgroup.subtree_control", "cpuset cpu");
  for (const group of ["system.slice", "user.slice", "init.scope", "machine.slice"]) file(`/sys/fs/cgroup/${group}/cpuset.cpus`, "");
  file("/sys/devices/virtual/workqueue/cpumask", "ffff");
  for (let irq = 0; irq < IRQS; irq++) file(`/proc/irq/${irq}/smp_affinity_list`, `0-${CPUS - 1}`);
  fs.mkdirSync(path.join(root, "var/log"), { recursive: true });
}

/** VM number n pins its one vCPU to CPU n + 1 (CPU 0 stays with the host). */
function domainXml(n: number): string {
  const uuid = `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
  return `<domain type="kvm"><name>vm${n}</name><uuid>${uuid}</uuid><memory unit="MiB">1024</memory><vcpu>1</vcpu>
<cputune><vcpupin vcpu="0" cpuset="${n + 1}"/></cputune>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate workqueues="yes" irqs="yes"/></vmhook:hooks></metadata></domain>`;
}

function runHook(hook: string, root: string, n: number, event: string, xml = domainXml(n)): number {
  const started = process.hrtime.bigint();
  const result = spawnSync(hook, [`vm${n}`, ...event.split(" "), "-"], {
    input: xml,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C", VMHOOK_ROOT: root },
    encoding: "utf8",
  });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (result.status !== 0) throw new Error(`vm${n} ${event} failed (${result.status}): ${result.stderr}`);
  return ms;
}

const stats = (samples: number[]) => {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!.toFixed(1);
  return `median ${at(0.5)} ms, p90 ${at(0.9)} ms, max ${sorted[sorted.length - 1]!.toFixed(1)} ms`;
};

console.log(`isolate bench: ${vmhook}, ${iterations} prepare+release pairs per case, on a test root (VMHOOK_ROOT)`);
console.log(`with fake cgroup v2 files (no systemd, ${CPUS} CPUs, ${IRQS} IRQs, workqueues and irqs on): vmhook's cost, not the kernel's`);
for (const running of [2, 8]) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bench-isolate-"));
  try {
    const root = path.join(work, "root");
    const hook = path.join(work, "hooks/qemu"); // hook mode: invoked as .../qemu
    fakeHost(root);
    fs.mkdirSync(path.dirname(hook));
    fs.symlinkSync(path.resolve(vmhook), hook);
    for (let n = 1; n <= running; n++) runHook(hook, root, n, "prepare begin");
    const measured = running + 1;
    const prepares: number[] = [];
    const releases: number[] = [];
    const baseline: number[] = [];
    // Interleaved, so that load from elsewhere hits all three alike.
    for (let i = 0; i < iterations; i++) {
      prepares.push(runHook(hook, root, measured, "prepare begin"));
      releases.push(runHook(hook, root, measured, "release end"));
      baseline.push(runHook(hook, root, measured, "prepare begin", domainXml(measured).replace(/<metadata>.*<\/metadata>/, "")));
    }
    const host = fs.readFileSync(path.join(root, "sys/fs/cgroup/system.slice/cpuset.cpus"), "utf8").trim();
    console.log(`${running} VMs running (host CPUs now ${host}):`);
    console.log(`  prepare: ${stats(prepares)}`);
    console.log(`  release: ${stats(releases)}`);
    console.log(`  baseline, the same hook for a domain without vmhook metadata: ${stats(baseline)}`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
