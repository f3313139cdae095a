// irqbalance, when it runs, places IRQs itself: every rebalance may put one
// back on a VM's CPUs, undoing irqs="yes". It keeps off only the CPUs it bans
// at its start (setup_banned_cpus in irqbalance's cputree.c).
import { formatCpuList, parseKernelCpuList } from "../../lib/cpuset.ts";
import type { Host } from "../../lib/host.ts";
import { processIds } from "../../lib/open-files.ts";
import { bootIsolatedCpus, CPU_DIR, formatHexMask, parseHexMask, union } from "./cpus.ts";

/**
 * The CPUs irqbalance (environment `environ`, NUL-separated) never gives an
 * IRQ, and the variable they come from: IRQBALANCE_BANNED_CPUS (a mask, older
 * versions and tuned; read first) or IRQBALANCE_BANNED_CPULIST when set, else
 * those isolcpus= and nohz_full= isolate (no variable).
 */
function bannedCpus(host: Host, environ: string): { cpus: number[]; variable?: string } {
  const variable = (name: string) => environ.split("\0").find((entry) => entry.startsWith(`${name}=`))?.slice(name.length + 1).trim() || undefined;
  const mask = variable(BANNED_MASK);
  if (mask) return { cpus: parseHexMask(mask), variable: BANNED_MASK };
  const list = variable(BANNED_LIST);
  if (list) return { cpus: parseKernelCpuList(list), variable: BANNED_LIST };
  const nohzFull = host.readTrimmed(`${CPU_DIR}/nohz_full`) ?? "";
  return { cpus: [...bootIsolatedCpus(host), ...(/^[\d,-]+$/.test(nohzFull) ? parseKernelCpuList(nohzFull) : [])] };
}

const BANNED_MASK = "IRQBALANCE_BANNED_CPUS";
const BANNED_LIST = "IRQBALANCE_BANNED_CPULIST";

/**
 * The line that bans `cpus` too: in the variable irqbalance reads (the mask
 * wins over the list), keeping what it bans already (a list set ends the
 * isolcpus= and nohz_full= ban).
 */
function banLine(banned: { cpus: number[]; variable?: string }, cpus: number[]): string {
  const all = union([banned.cpus, cpus]);
  return banned.variable === BANNED_MASK ? `${BANNED_MASK}=${formatHexMask(all)}` : `${BANNED_LIST}=${formatCpuList(all)}`;
}

/** Why irqs="yes" cannot hold, and the fix: an irqbalance (`pid`) that may put IRQs on `exposed` of `isolated`; undefined when none runs or each bans them all. */
export function irqbalanceProblem(host: Host, isolated: number[]): { reason: string; fix: string; pid: string; exposed: number[] } | undefined {
  for (const pid of processIds(host)) {
    if (host.readTrimmed(`/proc/${pid}/comm`) !== "irqbalance") continue;
    // An environment that cannot be read bans nothing vmhook knows of.
    const banned = bannedCpus(host, host.readTrimmed(`/proc/${pid}/environ`) ?? "");
    const exposed = isolated.filter((cpu) => !banned.cpus.includes(cpu));
    if (exposed.length === 0) continue;
    const keepsOff = banned.variable ? `only the CPUs its ${banned.variable} bans` : `only the CPUs of ${BANNED_MASK} or ${BANNED_LIST}, without them those isolcpus= and nohz_full= isolate`;
    return {
      reason: `irqs="yes", but irqbalance (pid ${pid}) runs and moves IRQs back onto CPU ${formatCpuList(exposed)} when it rebalances, as it keeps off ${keepsOff}${banned.cpus.length > 0 ? ` (CPU ${formatCpuList(banned.cpus)})` : ""}`,
      fix: `ban them: ${banLine(banned, isolated)} in its environment file (/etc/default/irqbalance, /etc/sysconfig/irqbalance), then restart irqbalance; or stop irqbalance, or leave out irqs="yes"`,
      pid,
      exposed,
    };
  }
  return undefined;
}
