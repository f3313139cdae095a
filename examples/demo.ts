// `npm run demo`: what vmhook does for a single-GPU passthrough VM
// (examples/domains/win11-gpu.xml: 1G hugepages, CPU isolation, the GPU and
// its audio function), shown on a simulated desktop host (one NVIDIA GPU
// that is the boot display, GDM, 16 CPUs, cgroup v2). Needs no root and
// touches nothing on this machine: the host is a temporary directory that
// the built binary reads through --root.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { desktopHost } from "../test/helpers/pci-hosts.ts";

const REPO = path.resolve(import.meta.dirname, "..");
const VMHOOK = path.join(REPO, "dist/vmhook");
const DOMAIN = path.join(REPO, "examples/domains/win11-gpu.xml");

function simulatedDesktop() {
  const sim = desktopHost();
  sim.file("/sys/bus/pci/devices/0000:01:00.0/boot_vga", 1);
  sim.file("/sys/devices/system/cpu/online", "0-15").file("/sys/devices/system/cpu/present", "0-15");
  for (let cpu = 0; cpu < 16; cpu++) {
    sim.file(`/sys/devices/system/cpu/cpu${cpu}/cpufreq/scaling_governor`, "schedutil");
    sim.file(`/sys/devices/system/cpu/cpu${cpu}/cpufreq/scaling_available_governors`, "performance schedutil powersave");
  }
  sim.file("/sys/fs/cgroup/cgroup.subtree_control", "cpuset cpu memory pids").file("/sys/fs/cgroup/cpuset.cpus.effective", "0-15");
  sim.file("/sys/class/vtconsole/vtcon0/name", "(S) dummy device").file("/sys/class/vtconsole/vtcon0/bind", 0);
  sim.file("/sys/class/vtconsole/vtcon1/name", "(M) frame buffer device").file("/sys/class/vtconsole/vtcon1/bind", 1);
  sim.file("/proc/1/comm", "systemd").dir("/run/systemd/system");
  // A stand-in systemctl: GDM runs as display-manager.service, no start job waits, nothing is pinned yet. is-active prints the state, as systemctl does.
  sim.file("/usr/bin/systemctl", '#!/bin/sh\ncase "$1" in\n  is-active) if [ "$2" = display-manager.service ]; then echo active; else echo inactive; exit 3; fi ;;\n  show) if [ "$2" = --property=Job ]; then echo; else echo "AllowedCPUs="; fi ;;\nesac\n');
  fs.chmodSync(sim.resolve("/usr/bin/systemctl"), 0o755);
  // NVIDIA's driver stack, loaded and holding the GPU.
  const stack: [string, string[]][] = [["nvidia_drm", []], ["nvidia_modeset", ["nvidia_drm"]], ["nvidia_uvm", []], ["nvidia", ["nvidia_modeset", "nvidia_uvm"]]];
  for (const [module, holders] of stack) {
    sim.file(`/sys/module/${module}/refcnt`, holders.length).dir(`/sys/module/${module}/holders`);
    for (const holder of holders) sim.link(`/sys/module/${module}/holders/${holder}`, `../../${holder}`);
  }
  sim.file("/proc/modules", stack.map(([module, holders]) => `${module} 1000 ${holders.length} ${holders.join(",") || "-"}, Live 0x0`).join("\n"));
  sim.file("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", 0);
  // 64 GB on one NUMA node: the node's meminfo says the same as the host's.
  sim.file("/proc/meminfo", "MemTotal:       65536000 kB\nMemFree:        40000000 kB\nMemAvailable:   52000000 kB\n");
  sim.file("/sys/devices/system/node/node0/meminfo", "Node 0 MemTotal:       65536000 kB\nNode 0 MemFree:        40000000 kB\nNode 0 Inactive(file): 12000000 kB\n");
  return sim;
}

function show(command: string, args: string[], root?: string) {
  process.stdout.write(`\n$ vmhook ${args.join(" ")}${root ? "   # --root: the simulated desktop" : ""}\n`);
  const result = spawnSync(VMHOOK, root ? [...args, "--root", root] : args, { encoding: "utf8", timeout: 30_000 });
  process.stdout.write(result.stdout + result.stderr);
  if (result.status !== 0 && command !== "doctor") process.stdout.write(`(exit ${result.status})\n`);
}

const sim = simulatedDesktop();
try {
  process.stdout.write(`vmhook demo: ${path.relative(REPO, DOMAIN)} on a simulated desktop host\n`);
  show("validate", ["validate", DOMAIN], sim.root);
  show("iommu", ["iommu"], sim.root);
  show("doctor", ["doctor", DOMAIN], sim.root);
  show("plan", ["plan", DOMAIN], sim.root);
} finally {
  sim.cleanup();
}
