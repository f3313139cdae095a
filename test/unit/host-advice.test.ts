// Advice computed from this host: boot loader, init system, CPUs. A 2-CPU
// host is never told to pin CPU 2; a host without systemd is never told to
// boot with systemd.unified_cgroup_hierarchy=1.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { cpuSplit, howToGetCgroupV2, isolationExample, serviceCommand } from "../../lib/host-advice.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { SimHost } from "../helpers/simhost.ts";

test("CPU suggestions use CPUs this host has: 2 CPUs keep 0 for the host; 16 keep 0-1; 1 CPU cannot isolate", () => {
  assert.equal(cpuSplit([0, 1]), { host: [0], vm: [1] });
  assert.equal(cpuSplit([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])?.host, [0, 1]);
  assert.is(cpuSplit([0]), undefined);
  assert.is(isolationExample([0, 1]), 'on this host (CPUs 0-1) e.g. <cputune><vcpupin vcpu="0" cpuset="1"/></cputune>, or host-cpus="0"');
  assert.is(isolationExample([0]), "this host has only CPU 0: isolation needs at least two");
});

test("cgroup v2 and service hints follow the init system: systemd, OpenRC, or neither", () => {
  const systemd = new SimHost().dir("/run/systemd/system").file("/etc/default/grub");
  const openrc = new SimHost().dir("/run/openrc");
  const plain = new SimHost();
  try {
    assert.match(howToGetCgroupV2(systemd), "boot with systemd.unified_cgroup_hierarchy=1 (the default since systemd 247): add systemd.unified_cgroup_hierarchy=1 to GRUB_CMDLINE_LINUX_DEFAULT");
    assert.is(howToGetCgroupV2(openrc), 'set rc_cgroup_mode="unified" in /etc/rc.conf and reboot');
    assert.not.match(howToGetCgroupV2(plain), "systemd");
    assert.match(howToGetCgroupV2(plain), "mount -t cgroup2 cgroup2 /sys/fs/cgroup");
    assert.equal([serviceCommand(systemd, "libvirtd", "start"), serviceCommand(openrc, "libvirtd", "start"), serviceCommand(plain, "libvirtd", "restart")], ["systemctl start libvirtd", "rc-service libvirtd start", "service libvirtd restart"]);
  } finally {
    [systemd, openrc, plain].forEach((sim) => sim.cleanup());
  }
});

test("doctor on a 2-CPU host without systemd: the isolate fix names CPUs 0 and 1, the cgroup fix no systemd parameter", async () => {
  const sim = new SimHost().file("/sys/devices/system/cpu/online", "0-1").dir("/sys/fs/cgroup");
  try {
    const xml = `<domain><name>vm</name><uuid>e0e0e0e0-0000-4000-8000-0000000000e0</uuid><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata></domain>`;
    const report = await runDoctor(sim, { file: "vm.xml", xml });
    const isolate = report.domain!.findings.find((finding) => finding.check === "isolate")!;
    assert.is(isolate.status, "fail");
    assert.is(isolate.fix, 'on this host (CPUs 0-1) e.g. <cputune><vcpupin vcpu="0" cpuset="1"/></cputune>, or host-cpus="0"');
    const cgroup = report.host.find((finding) => finding.check === "cgroup v2 cpuset")!;
    assert.is(cgroup.status, "warn");
    assert.not.match(cgroup.fix!, "systemd.unified_cgroup_hierarchy");
  } finally {
    sim.cleanup();
  }
});

test.run();
