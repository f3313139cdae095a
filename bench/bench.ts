// Wall time of the hook binary, as a ratio to a bare compiled bun
// hello-world built in the same run (bench/run.sh builds both):
//  - the hook for a domain without vmhook metadata (bench/domain.xml, a
//    realistic 5 KB domain): what every VM on the host pays;
//  - hugepages prepare + release (two processes) for the same domain with
//    <vmhook:hugepages size="2M"/>, against a test root (VMHOOK_ROOT) whose
//    sysfs pool is a plain file: the hook's own cost, not the kernel's;
//  - the refusal of an impossible request (200 GiB on the root's 64 GiB):
//    exit 1 before the pool is touched. (bench/hugepages-guest.ts measures
//    it on a real kernel, with MemAvailable next to the floor.)
// Each sample is one spawn-to-exit. The baseline and the no-metadata hook
// are interleaved so that load from elsewhere hits them alike; hugepages
// runs afterwards on its own (interleaved, its heavier runs slowed the
// others' next start by a third). CPU time comes from the child's rusage
// (Bun.spawnSync): the steadier number on a busy machine. Peak RSS comes
// from GNU time (/usr/bin/time -f %M): Bun.spawnSync's maxRSS includes the
// parent's RSS, which the child shares between fork and exec.
//   bun bench/bench.ts HELLO VMHOOK [ITERATIONS]
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const TARGET_RATIO = 1.3;
const POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const METADATA = '<vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/></vmhook:hooks>';

const [hello, vmhook, iterationArg = "300"] = process.argv.slice(2);
if (!hello || !vmhook) throw new Error("usage: bun bench/bench.ts HELLO VMHOOK [ITERATIONS]");
const iterations = Number(iterationArg);

const plainXml = fs.readFileSync(new URL("domain.xml", import.meta.url), "utf8");
const hugepagesXml = plainXml.replace("<metadata>", `<metadata>\n    ${METADATA}`);
const uuid = /<uuid>(.*)<\/uuid>/.exec(plainXml)![1];
const pagesNeeded = Number(/<memory unit='KiB'>(\d+)</.exec(plainXml)![1]) / 2048;

// The hook runs in hook mode when invoked as ".../qemu"; its root is a fake host.
const work = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-bench-"));
const hook = path.join(work, "hooks/qemu");
const root = path.join(work, "root");
fs.mkdirSync(path.dirname(hook));
fs.symlinkSync(path.resolve(vmhook), hook);
fs.mkdirSync(path.join(root, path.dirname(POOL)), { recursive: true });
fs.mkdirSync(path.join(root, "var/log"), { recursive: true });
fs.writeFileSync(path.join(root, POOL), "0\n");
fs.mkdirSync(path.join(root, "proc"));
fs.writeFileSync(path.join(root, "proc/meminfo"), "MemTotal: 67108864 kB\nMemFree: 33554432 kB\nMemAvailable: 33554432 kB\n");
const pool = () => Number(fs.readFileSync(path.join(root, POOL), "utf8"));
const journalExists = () => fs.existsSync(path.join(root, "run/vmhook", `${uuid}.json`));
const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C", VMHOOK_ROOT: root };

interface Sample {
  wallMs: number;
  cpuMs: number;
}

/** One run, as libvirt does it: args, XML on stdin, a clean environment. */
function measure(command: string[], input = "", expectedExit = 0): Sample {
  const start = performance.now();
  const result = Bun.spawnSync(command, { stdin: new TextEncoder().encode(input), stdout: "ignore", stderr: "pipe", env });
  const wallMs = performance.now() - start;
  if (result.exitCode !== expectedExit) throw new Error(`${command.join(" ")} exited ${result.exitCode}: ${new TextDecoder().decode(result.stderr)}`);
  return { wallMs, cpuMs: Number(result.resourceUsage.cpuTime.total) / 1000 };
}

/** Peak RSS in MiB of one run, from GNU time; undefined without it. */
function peakRssMiB(command: string[], input = ""): number | undefined {
  if (!fs.existsSync("/usr/bin/time")) return undefined;
  const result = Bun.spawnSync(["/usr/bin/time", "-f", "%M", ...command], { stdin: new TextEncoder().encode(input), stdout: "ignore", stderr: "pipe", env });
  const kib = Number(new TextDecoder().decode(result.stderr).trim().split("\n").at(-1));
  return result.exitCode === 0 && kib > 0 ? kib / 1024 : undefined;
}

const event = (op: string, subop: string, xml: string) => measure([hook, "win11-gaming", op, subop, "-"], xml);

function prepareAndRelease(): Sample {
  const prepare = event("prepare", "begin", hugepagesXml);
  if (pool() !== pagesNeeded || !journalExists()) {
    throw new Error(`prepare did not take ${pagesNeeded} pages with a journal (pool: ${pool()}); see ${root}/var/log/vmhook.log`);
  }
  const release = event("release", "end", hugepagesXml);
  if (pool() !== 0 || journalExists()) throw new Error(`release left ${pool()} pages in the pool, journal ${journalExists() ? "kept" : "removed"}`);
  return { wallMs: prepare.wallMs + release.wallMs, cpuMs: prepare.cpuMs + release.cpuMs };
}

function prepareAndReleaseRss(): number | undefined {
  const prepare = peakRssMiB([hook, "win11-gaming", "prepare", "begin", "-"], hugepagesXml);
  const release = peakRssMiB([hook, "win11-gaming", "release", "end", "-"], hugepagesXml);
  return prepare && release && Math.max(prepare, release);
}

interface Case {
  name: string;
  run: () => Sample;
  rss: () => number | undefined;
  samples: Sample[];
}
const noMetadataCommand = [hook, "win11-gaming", "prepare", "begin", "-"];
const baseline: Case = { name: "baseline: bun hello-world", run: () => measure([hello]), rss: () => peakRssMiB([hello]), samples: [] };
const noMetadata: Case = {
  name: "hook, domain without metadata",
  run: () => measure(noMetadataCommand, plainXml),
  rss: () => peakRssMiB(noMetadataCommand, plainXml),
  samples: [],
};
const hugepages: Case = { name: "hugepages prepare+release (2 runs)", run: prepareAndRelease, rss: prepareAndReleaseRss, samples: [] };
const impossibleXml = hugepagesXml.replace(/<memory unit='KiB'>\d+</, `<memory unit='KiB'>${200 * 1024 * 1024}<`);
const refusalCommand = [hook, "win11-gaming", "prepare", "begin", "-"];
function refuse(): Sample {
  const sample = measure(refusalCommand, impossibleXml, 1);
  if (pool() !== 0 || journalExists()) throw new Error(`the refusal left ${pool()} pages in the pool, journal ${journalExists() ? "kept" : "removed"}`);
  return sample;
}
const refusal: Case = { name: "hugepages refusal (200 GiB asked)", run: refuse, rss: () => undefined, samples: [] };
const cases = [baseline, noMetadata, hugepages, refusal];

for (const { run } of cases) run(); // warm the page cache
for (let i = 0; i < iterations; i++) for (const c of [baseline, noMetadata]) c.samples.push(c.run());
for (let i = 0; i < iterations; i++) hugepages.samples.push(hugepages.run());
for (let i = 0; i < iterations; i++) refusal.samples.push(refusal.run());
const peakRss = cases.map((c) => c.rss());
fs.rmSync(work, { recursive: true, force: true });

const quantile = (values: number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
};
const medianOf = (samples: Sample[], key: keyof Sample) => quantile(samples.map((s) => s[key]), 0.5);
const [baseWall, baseCpu] = [medianOf(baseline.samples, "wallMs"), medianOf(baseline.samples, "cpuMs")];

const ms = (value: number) => `${value.toFixed(2)} ms`.padStart(10);
const ratio = (value: number, base: number) => `${(value / base).toFixed(2)}x`.padStart(7);
console.log(`vmhook bench: ${iterations} iterations each, spawn to exit; ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}, Linux ${os.release()}`);
console.log(`${"".padEnd(36)} wall median  wall p90   ratio    CPU median   ratio  peak RSS`);
cases.forEach(({ name, samples }, index) => {
  const [wall, cpu] = [medianOf(samples, "wallMs"), medianOf(samples, "cpuMs")];
  const wallP90 = quantile(samples.map((s) => s.wallMs), 0.9);
  const rss = peakRss[index] === undefined ? "n/a" : `${peakRss[index]!.toFixed(1)} MiB`;
  console.log(`${name.padEnd(36)} ${ms(wall)} ${ms(wallP90)} ${ratio(wall, baseWall)}   ${ms(cpu)} ${ratio(cpu, baseCpu)}  ${rss.padStart(8)}`);
});
const noMetadataRatio = medianOf(noMetadata.samples, "wallMs") / baseWall;
const verdict = noMetadataRatio <= TARGET_RATIO ? "met" : "MISSED";
console.log(`target: domain without metadata within ${TARGET_RATIO}x of the baseline (wall median): ${verdict} (${noMetadataRatio.toFixed(2)}x)`);
