// Simulated hosts for CPU isolation: 8 CPUs with cgroup v2, cpufreq, the
// workqueue mask and IRQs; systemd as PID 1 (a systemctl keeping AllowedCPUs
// per unit), or busybox init with a cgroup tree whose files behave as the
// kernel's.
import * as fs from "node:fs";
import { parseKernelCpuList } from "../../lib/cpuset.ts";
import { SimHost } from "./simhost.ts";

/** An 8-CPU host with cgroup v2, cpufreq, a workqueue mask and three IRQs (IRQ 0 refuses to move). */
export function baseHost(options: { online?: string } = {}): SimHost {
  return withCpus(new SimHost().dir("/var/log").dir("/run"), options);
}

/** The CPUs of baseHost on `sim`. */
export function withCpus(sim: SimHost, options: { online?: string } = {}): SimHost {
  sim.file("/sys/devices/system/cpu/present", "0-7").file("/sys/devices/system/cpu/online", options.online ?? "0-7");
  for (let cpu = 0; cpu < 8; cpu++) {
    sim.file(`/sys/devices/system/cpu/cpu${cpu}/cpufreq/scaling_governor`, "schedutil");
    sim.file(`/sys/devices/system/cpu/cpu${cpu}/cpufreq/scaling_available_governors`, "performance powersave schedutil");
  }
  sim.file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids");
  sim.file("/sys/devices/virtual/workqueue/cpumask", "ff");
  sim.file("/proc/irq/default_smp_affinity", "ff");
  sim.file("/proc/irq/0/smp_affinity_list", "0-7").failWrite("/proc/irq/0/smp_affinity_list", "EIO");
  sim.file("/proc/irq/16/smp_affinity_list", "0-7");
  sim.file("/proc/irq/17/smp_affinity_list", "3");
  return sim;
}

/** systemd as PID 1, with a systemctl that keeps AllowedCPUs per unit and records every call. */
export function systemdHost(allowed: Record<string, string> = {}): { sim: SimHost; units: Record<string, string> } {
  const sim = baseHost().file("/proc/1/comm", "systemd");
  return { sim, units: systemdAllowedCpus(sim, allowed) };
}

/**
 * systemd's AllowedCPUs of system.slice, user.slice and init.scope (and
 * `allowed`), as systemctl show -p AllowedCPUs and set-property see them; the
 * other verbs go to the systemctl `sim` had. Returns the units' values.
 */
export function systemdAllowedCpus(sim: SimHost, allowed: Record<string, string> = {}): Record<string, string> {
  const units: Record<string, string> = { "system.slice": "", "user.slice": "", "init.scope": "", ...allowed };
  // As systemd: the unit's AllowedCPUs is its cgroup's cpuset.cpus, where the host snapshot sees it.
  const keep = (unit: string, value: string) => {
    units[unit] = value;
    sim.file(`/sys/fs/cgroup/${unit}/cpuset.cpus`, value);
  };
  for (const [unit, value] of Object.entries(units)) keep(unit, value);
  // systemd's runtime directory is there from boot; only system.control below it comes with the first set-property --runtime.
  sim.dir("/run/systemd");
  const other = sim.execHandler("systemctl");
  sim.onExec("systemctl", (args, host, options) => {
    if (args[0] === "show" && args[1] === "-p") {
      // show -p PROPERTY ... UNIT ...: a block of the properties asked for per unit, blocks apart by an empty line.
      const properties = args.filter((_, index) => args[index - 1] === "-p");
      const shown = args.slice(1).filter((arg, index) => arg !== "-p" && args[index] !== "-p");
      const value = (property: string, unit: string) => (property === "AllowedCPUs" ? (units[unit] ?? "") : property === "DropInPaths" ? dropInPaths(host as SimHost, unit).join(" ") : "");
      return { stdout: shown.map((unit) => properties.map((property) => `${property}=${value(property, unit)}\n`).join("")).join("\n") };
    }
    if (args[0] === "set-property") {
      const [unit, value] = [args[2]!, args[3]!.replace(/^AllowedCPUs=/, "")];
      keep(unit, value);
      if (args[1] === "--runtime") writeRuntimeDropIn(host as SimHost, unit, value);
      return {};
    }
    return other ? other(args, host, options) : { status: 1, stderr: `unexpected systemctl ${args.join(" ")}` };
  });
  return units;
}

/** As systemd's unit_write_setting for set-property --runtime: its directories made as needed, the drop-in replaced whole. */
function writeRuntimeDropIn(sim: SimHost, unit: string, value: string): void {
  const dir = `/run/systemd/system.control/${unit}.d`;
  if (!sim.exists(dir)) sim.dir(dir);
  const section = unit.endsWith(".scope") ? "Scope" : "Slice";
  fs.writeFileSync(
    sim.resolve(`${dir}/50-AllowedCPUs.conf`),
    `# This is a drop-in unit file extension, created via "systemctl set-property"\n# or an equivalent operation. Do not edit.\n[${section}]\nAllowedCPUs=\nAllowedCPUs=${value}\n`,
  );
}

/** The drop-in directories systemd reads a unit's from, highest priority first (a subset of its search path). */
const DROP_IN_DIRS = ["/etc/systemd/system.control", "/run/systemd/system.control", "/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system"];

/** As systemctl show -p DropInPaths: the unit's drop-ins in the order systemd applies them (by file name; of two of one name, the higher directory's). */
function dropInPaths(sim: SimHost, unit: string): string[] {
  const byName = new Map<string, string>();
  for (const dir of DROP_IN_DIRS) {
    if (!sim.exists(`${dir}/${unit}.d`)) continue;
    for (const name of sim.list(`${dir}/${unit}.d`)) if (name.endsWith(".conf") && !byName.has(name)) byName.set(name, `${dir}/${unit}.d/${name}`);
  }
  return [...byName.keys()].sort().map((name) => byName.get(name)!);
}

/** No systemd: busybox init, a cgroup tree with host groups and libvirt's machine group. */
export function cgroupHost(): SimHost {
  const sim = baseHost().file("/proc/1/comm", "init");
  sim.file("/sys/fs/cgroup/cgroup.subtree_control", "cpu memory pids").file("/sys/fs/cgroup/cpuset.cpus.effective", "0-7");
  for (const group of ["user", "machine"]) sim.file(`/sys/fs/cgroup/${group}/cgroup.procs`, "");
  sim.file("/sys/fs/cgroup/system.slice/cgroup.procs", "123");
  // As the kernel: a group with processes cannot get an empty cpuset.cpus back once it had CPUs.
  sim.onWrite(/^\/sys\/fs\/cgroup\/[^/]+\/cpuset\.cpus$/, (data, hostPath, host) => {
    if (!host.exists(hostPath)) throw Object.assign(new Error(`ENOENT: ${hostPath}`), { code: "ENOENT" });
    const populated = host.read(hostPath.replace(/cpuset\.cpus$/, "cgroup.procs")).trim() !== "";
    if (data === "" && populated && host.read(hostPath).trim() !== "") throw Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" });
    fs.writeFileSync(host.resolve(hostPath), `${data}\n`);
    // As Linux 6.1 (measured, test/kernel/isolate.test.ts): a sibling's cpuset.cpus overlapping a partition's CPUs is taken, and the partition is invalid from then on.
    for (const sibling of host.list("/sys/fs/cgroup")) {
      const partition = `/sys/fs/cgroup/${sibling}/cpuset.cpus.partition`;
      if (hostPath.startsWith(`/sys/fs/cgroup/${sibling}/`) || !["root", "isolated"].includes(host.readTrimmed(partition) ?? "")) continue;
      const held = parseKernelCpuList(host.read(`/sys/fs/cgroup/${sibling}/cpuset.cpus`).trim());
      if (parseKernelCpuList(data).some((cpu) => held.includes(cpu))) fs.writeFileSync(host.resolve(partition), `${host.readTrimmed(partition)} invalid (Cpu list in cpuset.cpus not exclusive)\n`);
    }
  });
  // The kernel's subtree_control: +cpuset makes cpuset.cpus appear (empty) in every child, -cpuset removes them.
  sim.onWrite("/sys/fs/cgroup/cgroup.subtree_control", (data, hostPath, host) => {
    const enabled = new Set(host.read(hostPath).trim().split(/\s+/).filter(Boolean));
    const children = host.list("/sys/fs/cgroup").filter((name) => host.stat(`/sys/fs/cgroup/${name}`)?.isDirectory);
    if (data === "+cpuset") {
      if (!enabled.has("cpuset")) for (const child of children) host.file(`/sys/fs/cgroup/${child}/cpuset.cpus`, "\n");
      enabled.add("cpuset");
    } else if (data === "-cpuset") {
      enabled.delete("cpuset");
      for (const child of children) host.remove(`/sys/fs/cgroup/${child}/cpuset.cpus`);
    } else throw new Error(`unexpected subtree_control write ${data}`);
    fs.writeFileSync(host.resolve(hostPath), `${[...enabled].join(" ")}\n`);
  });
  return sim;
}
