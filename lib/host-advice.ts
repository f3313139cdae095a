// Advice that fits this host: how to add a kernel parameter with the boot
// loader it has (GRUB, systemd-boot, kernelstub), how to start a service with
// its init system, how to get cgroup v2 without systemd, and a CPU split that
// exists here. Every message that tells the user to change the host asks here
// instead of assuming a Debian desktop.
import type { Host } from "./host.ts";
import { formatCpuList } from "./cpuset.ts";
import { systemdRuns } from "./systemd.ts";

export type Bootloader = "kernelstub" | "systemd-boot" | "grub" | "unknown";

const SYSTEMD_BOOT_ROOTS = ["/boot/efi", "/efi", "/boot"];

function detectBootloader(host: Host): Bootloader {
  // Pop!_OS: kernelstub writes the systemd-boot entries itself, so it comes first.
  if (host.exists("/usr/bin/kernelstub")) return "kernelstub";
  if (SYSTEMD_BOOT_ROOTS.some((root) => host.exists(`${root}/loader/loader.conf`))) return "systemd-boot";
  if (host.exists("/etc/default/grub")) return "grub";
  return "unknown";
}

/** The command that turns /etc/default/grub into the boot menu, as this distribution names it. */
function grubUpdate(host: Host): string {
  if (host.exists("/usr/sbin/update-grub") || host.exists("/sbin/update-grub")) return "update-grub";
  if (host.exists("/boot/grub2")) return "grub2-mkconfig -o /boot/grub2/grub.cfg";
  return "grub-mkconfig -o /boot/grub/grub.cfg";
}

/** "add intel_iommu=on iommu=pt to … and reboot", for this host's boot loader. */
export function howToBootWith(host: Host, parameters: string): string {
  switch (detectBootloader(host)) {
    case "kernelstub":
      return `run kernelstub -a "${parameters}" and reboot`;
    case "systemd-boot": {
      const root = SYSTEMD_BOOT_ROOTS.find((candidate) => host.exists(`${candidate}/loader/loader.conf`))!;
      return host.exists("/etc/kernel/cmdline")
        ? `add ${parameters} to /etc/kernel/cmdline, run kernel-install add "$(uname -r)" /boot/vmlinuz-"$(uname -r)" (or reinstall the kernel package), and reboot`
        : `add ${parameters} to the options line of the entries in ${root}/loader/entries/ and reboot`;
    }
    case "grub":
      return `add ${parameters} to GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub, run ${grubUpdate(host)} and reboot`;
    default:
      return `add ${parameters} to the kernel command line in your boot loader's configuration and reboot`;
  }
}

/** "remove X from …", the reverse of howToBootWith. */
export function howToBootWithout(host: Host, parameter: string): string {
  switch (detectBootloader(host)) {
    case "kernelstub":
      return `run kernelstub -d "${parameter}" and reboot`;
    case "systemd-boot":
      return `remove ${parameter} from /etc/kernel/cmdline or the options line of the boot entries (loader/entries/), and reboot`;
    case "grub":
      return `remove ${parameter} from GRUB_CMDLINE_LINUX_DEFAULT and GRUB_CMDLINE_LINUX in /etc/default/grub, run ${grubUpdate(host)} and reboot`;
    default:
      return `remove ${parameter} from the kernel command line in your boot loader's configuration and reboot`;
  }
}

export type InitSystem = "systemd" | "openrc" | "other";

function detectInit(host: Host): InitSystem {
  // sd_booted(): systemd creates /run/systemd/system when it runs as init; pid 1's name says the same.
  if (systemdRuns(host) || host.readTrimmed("/proc/1/comm") === "systemd") return "systemd";
  if (host.exists("/run/openrc") || host.exists("/sbin/openrc-run")) return "openrc";
  return "other";
}

/** The command that starts (or restarts) a service with this host's init system. */
export function serviceCommand(host: Host, service: string, action: "start" | "restart"): string {
  switch (detectInit(host)) {
    case "systemd":
      return `systemctl ${action} ${service}`;
    case "openrc":
      return `rc-service ${service} ${action}`;
    default:
      return `service ${service} ${action}`;
  }
}

/** How to get the unified cgroup v2 hierarchy on this host. */
export function howToGetCgroupV2(host: Host): string {
  switch (detectInit(host)) {
    case "systemd":
      return `boot with systemd.unified_cgroup_hierarchy=1 (the default since systemd 247): ${howToBootWith(host, "systemd.unified_cgroup_hierarchy=1")}`;
    case "openrc":
      return 'set rc_cgroup_mode="unified" in /etc/rc.conf and reboot';
    default:
      return "mount cgroup2 at /sys/fs/cgroup at boot (mount -t cgroup2 cgroup2 /sys/fs/cgroup, or a cgroup2 line in /etc/fstab) instead of the v1 hierarchies";
  }
}

/**
 * A split of this host's CPUs that exists: the host keeps the first (the first
 * two from 8 CPUs on), the VM gets the rest. Undefined on a one-CPU host.
 */
export function cpuSplit(online: number[]): { host: number[]; vm: number[] } | undefined {
  if (online.length < 2) return undefined;
  const kept = online.length >= 8 ? 2 : 1;
  return { host: online.slice(0, kept), vm: online.slice(kept) };
}

/** The pinning and host-cpus to write for isolation on this host, or why there are none. */
export function isolationExample(online: number[]): string {
  const split = cpuSplit(online);
  if (!split) return `this host has only CPU ${formatCpuList(online)}: isolation needs at least two`;
  const pins = split.vm.slice(0, 2).map((cpu, index) => `<vcpupin vcpu="${index}" cpuset="${cpu}"/>`).join("");
  return `on this host (CPUs ${formatCpuList(online)}) e.g. <cputune>${pins}${split.vm.length > 2 ? "…" : ""}</cputune>, or host-cpus="${formatCpuList(split.host)}"`;
}
