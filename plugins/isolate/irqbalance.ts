// irqbalance, when it runs, places IRQs itself: every rebalance may put one
// back on a VM's CPUs, undoing irqs="yes". It keeps off only the CPUs it bans
// at its start (setup_banned_cpus in irqbalance's cputree.c).
import { formatCpuList, parseKernelCpuList } from "../../lib/cpuset.ts";
import type { Host } from "../../lib/host.ts";
import { processIds } from "../../lib/open-files.ts";
import { bootIsolatedCpus, CPU_DIR, parseHexMask } from "./cpus.ts";

/**
 * The CPUs irqbalance (environment `environ`, NUL-separated) never gives an
 * IRQ: IRQBALANCE_BANNED_CPUS (a mask, older versions) or
 * IRQBALANCE_BANNED_CPULIST when set, else those isolcpus= and nohz_full=
 * isolate.
 */
function bannedCpus(host: Host, environ: string): number[] {
  const variable = (name: string) => environ.split("\0").find((entry) => entry.startsWith(`${name}=`))?.slice(name.length + 1).trim() || undefined;
  const mask = variable("IRQBALANCE_BANNED_CPUS");
  if (mask) return parseHexMask(mask);
  const list = variable("IRQBALANCE_BANNED_CPULIST");
  if (list) return parseKernelCpuList(list);
  const nohzFull = host.readTrimmed(`${CPU_DIR}/nohz_full`) ?? "";
  return [...bootIsolatedCpus(host), ...(/^[\d,-]+$/.test(nohzFull) ? parseKernelCpuList(nohzFull) : [])];
}

/** Why irqs="yes" cannot hold, and the fix: an irqbalance that may put IRQs on `isolated`; undefined when none runs or each bans them all. */
export function irqbalanceProblem(host: Host, isolated: number[]): { reason: string; fix: string } | undefined {
  for (const pid of processIds(host)) {
    if (host.readTrimmed(`/proc/${pid}/comm`) !== "irqbalance") continue;
    // An environment that cannot be read bans nothing vmhook knows of.
    const banned = bannedCpus(host, host.readTrimmed(`/proc/${pid}/environ`) ?? "");
    const exposed = isolated.filter((cpu) => !banned.includes(cpu));
    if (exposed.length === 0) continue;
    const cpus = formatCpuList(exposed);
    return {
      reason: `irqs="yes", but irqbalance (pid ${pid}) runs and moves IRQs back onto CPU ${cpus} when it rebalances, as it keeps off only the CPUs of IRQBALANCE_BANNED_CPULIST (or, without it, those isolcpus= and nohz_full= isolate)`,
      fix: `ban them: IRQBALANCE_BANNED_CPULIST=${formatCpuList(isolated)} (with any CPUs it bans already) in its environment file (/etc/default/irqbalance, /etc/sysconfig/irqbalance), then restart irqbalance; or stop irqbalance, or leave out irqs="yes"`,
    };
  }
  return undefined;
}
