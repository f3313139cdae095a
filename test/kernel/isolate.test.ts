// The isolate plugin on a real kernel: a 4-CPU guest with cgroup v2 and no
// systemd (the cgroupfs path), host processes in child groups, two VMs
// isolated one after the other through the compiled hook, then released one
// by one; every file the plugin may touch is compared with its state before.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";

const bench = suite<{ guest?: Guest; before?: Map<string, string> }>("isolate on a real kernel");
const skip = skipReason();
if (skip) console.log(`isolate kernel tests: skipped: ${skip}`);

const VMS = {
  // vmA: vCPU and emulator on CPU 2, with the workqueue mask and IRQs.
  vmA: { uuid: "aaaaaaaa-0000-4000-8000-000000000001", cputune: '<vcpupin vcpu="0" cpuset="2"/><emulatorpin cpuset="2"/>', isolate: 'workqueues="yes" irqs="yes"' },
  // vmB: CPU 3; the guest has no cpufreq, so its governor is skipped with a warning.
  vmB: { uuid: "bbbbbbbb-0000-4000-8000-000000000002", cputune: '<vcpupin vcpu="0" cpuset="3"/>', isolate: 'workqueues="yes" irqs="yes" governor="performance" required="no"' },
};
type VmName = keyof typeof VMS;

function domainXml(name: VmName): string {
  const vm = VMS[name];
  return `<domain type="kvm"><name>${name}</name><uuid>${vm.uuid}</uuid><memory unit="MiB">64</memory><vcpu>1</vcpu>
<cputune>${vm.cputune}</cputune>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate ${vm.isolate}/></vmhook:hooks></metadata></domain>`;
}

/** Runs a hook event as libvirt does: the domain XML on stdin, the hook's name as argv[0]. */
const hook = (guest: Guest, name: VmName, event: "prepare begin" | "release end") =>
  guest.sh(`/etc/libvirt/hooks/qemu ${name} ${event} - < /tmp/${name}.xml`);

// Every file the plugin may touch, as "path=value" lines ("-" when absent),
// plus the affinity of the host and VM-group processes.
const STATE = `
cd /sys/fs/cgroup
for f in cgroup.subtree_control */cpuset.cpus */cpuset.cpus.effective; do echo "$f=$(cat $f 2>/dev/null || echo -)"; done
echo "wq=$(cat /sys/devices/virtual/workqueue/cpumask)"
echo "irq-default=$(cat /proc/irq/default_smp_affinity)"
for f in /proc/irq/*/smp_affinity_list; do echo "$f=$(cat $f)"; done
echo "host-process=$(grep Cpus_allowed_list /proc/$(cat /tmp/host.pid)/status | cut -f2)"
echo "vm-process=$(grep Cpus_allowed_list /proc/$(cat /tmp/vm.pid)/status | cut -f2)"
`;

async function state(guest: Guest): Promise<Map<string, string>> {
  const lines = (await guest.ok(STATE)).trim().split("\n");
  return new Map(lines.map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as [string, string]));
}

const irqs = (snapshot: Map<string, string>) => [...snapshot].filter(([key]) => key.startsWith("/proc/irq/"));
const cpuList = (text: string) =>
  text.split(",").flatMap((part) => {
    const [first, last] = part.split("-").map(Number);
    return Array.from({ length: (last ?? first!) - first! + 1 }, (_, i) => first! + i);
  });

/** The host side after isolation: host groups and a host process on `host`, the VMs' group on all CPUs. */
function assertHostOn(now: Map<string, string>, before: Map<string, string>, host: string, mask: string, isolated: number[]): void {
  assert.match(now.get("cgroup.subtree_control")!, /\bcpuset\b/);
  assert.is(now.get("system.slice/cpuset.cpus.effective"), host);
  assert.is(now.get("user/cpuset.cpus.effective"), host);
  assert.is(now.get("host-process"), host, "a process in system.slice/services runs on the host CPUs only");
  assert.is(now.get("machine.slice/cpuset.cpus"), "", "the VMs' group is never written");
  assert.is(now.get("machine.slice/cpuset.cpus.effective"), "0-3");
  assert.is(now.get("vm-process"), "0-3");
  assert.is(now.get("wq"), mask);
  assert.is(now.get("irq-default"), mask, "IRQs set up from now on start on the host CPUs");
  let moved = 0;
  for (const [irq, affinity] of irqs(now)) {
    if (affinity === before.get(irq)) continue; // refused to move, or already off the VM's CPUs
    moved++;
    const onVm = cpuList(affinity).filter((cpu) => isolated.includes(cpu));
    assert.equal(onVm, [], `${irq} moved to ${affinity}, which includes isolated CPU ${onVm}`);
  }
  assert.ok(moved > 0, "at least one IRQ moved off the isolated CPUs");
}

/** cgroup v2 with host groups holding processes and a libvirt-style machine.slice, as on a host without systemd; the VMs' XML in /tmp. */
async function setUpHost(guest: Guest): Promise<void> {
  await guest.ok(`
    mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
    mkdir -p /var/log /sys/fs/cgroup/system.slice/services /sys/fs/cgroup/user /sys/fs/cgroup/machine.slice
    setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/host.pid
    setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/vm.pid
    echo $(cat /tmp/host.pid) > /sys/fs/cgroup/system.slice/services/cgroup.procs
    echo $(cat /tmp/vm.pid) > /sys/fs/cgroup/machine.slice/cgroup.procs
  `);
  for (const name of Object.keys(VMS) as VmName[]) {
    await guest.ok(`cat > /tmp/${name}.xml <<'EOF'\n${domainXml(name)}\nEOF`);
  }
}

bench.before(async (context) => {
  if (skip) return;
  const guest = (context.guest = await bootGuest({ smp: 4, memoryMiB: 1024 }));
  await setUpHost(guest);
  context.before = await state(guest);
});
bench.after(async (context) => {
  await context.guest?.shutdown();
});

const it = skip ? bench.skip : bench;

it("starts with cpuset off and everything on all four CPUs", async ({ before }) => {
  assert.not.match(before!.get("cgroup.subtree_control")!, /cpuset/);
  assert.not.ok(before!.has("system.slice/cpuset.cpus"), "no group has cpuset.cpus yet");
  assert.is(before!.get("host-process"), "0-3");
  assert.is(before!.get("wq"), "f");
  assert.is(before!.get("irq-default"), "f");
  assert.ok(irqs(before!).length > 0, "the guest has IRQs");
});

it("vmA (CPU 2): host groups, a host process, workqueues and IRQs leave CPU 2", async ({ guest, before }) => {
  const result = await hook(guest!, "vmA", "prepare begin");
  assert.equal(result, { code: 0, stdout: "" }, result.stdout);
  const now = await state(guest!);
  assertHostOn(now, before!, "0-1,3", "b", [2]);
  // The timer (IRQ 0) cannot move (EIO): left as it was, and logged.
  assert.is(now.get("/proc/irq/0/smp_affinity_list"), before!.get("/proc/irq/0/smp_affinity_list"));
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), /isolate: \/proc\/irq\/0\/smp_affinity_list refused "0-1,3" \(EIO\)/);
  // Where the kernel really delivers the moved IRQs now.
  const effective = await guest!.ok(`
    for d in /proc/irq/*; do
      [ "$(cat $d/smp_affinity_list)" = "0-1,3" ] && [ -s $d/effective_affinity_list ] && echo "$d $(cat $d/effective_affinity_list)"
    done; true`);
  assert.ok(effective.trim() !== "", "some IRQs were moved");
  for (const line of effective.trim().split("\n")) assert.not.ok(cpuList(line.split(" ")[1]!).includes(2), `${line}: still delivered on CPU 2`);
});

it("vmB (CPU 3) too: the host keeps 0-1; the missing cpufreq is only a warning (required=no)", async ({ guest, before }) => {
  const result = await hook(guest!, "vmB", "prepare begin");
  assert.equal(result, { code: 0, stdout: "" }, result.stdout);
  assertHostOn(await state(guest!), before!, "0-1", "3", [2, 3]);
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), /warn: isolate: governor="performance", but CPU 3 has no cpufreq/);
});

it("a third VM on CPU 3 is refused and changes nothing", async ({ guest }) => {
  const before = await state(guest!);
  await guest!.ok(`sed -e 's/vmA/vmC/; s/aaaaaaaa/cccccccc/; s/cpuset="2"/cpuset="3"/g' /tmp/vmA.xml > /tmp/vmC.xml`);
  const result = await guest!.sh("/etc/libvirt/hooks/qemu vmC prepare begin - < /tmp/vmC.xml");
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, /CPU 3 of this VM is already isolated for running VM vmB/);
  assert.equal(await state(guest!), before);
});

it("releasing vmA gives CPU 2 back to the host while vmB keeps CPU 3", async ({ guest, before }) => {
  assert.equal(await hook(guest!, "vmA", "release end"), { code: 0, stdout: "" });
  assertHostOn(await state(guest!), before!, "0-2", "7", [3]);
});

it("releasing vmB restores every touched file exactly, and vmhook keeps no state", async ({ guest, before }) => {
  assert.equal(await hook(guest!, "vmB", "release end"), { code: 0, stdout: "" });
  assert.equal(await state(guest!), before!);
  assert.is((await guest!.ok("find /run/vmhook -name '*.json'")).trim(), "");
});

it("a VM pinned to a CPU taken offline is refused, naming the CPU and the online ones", async ({ guest }) => {
  await guest!.ok("echo 0 > /sys/devices/system/cpu/cpu1/online");
  try {
    await guest!.ok(`sed -e 's/vmA/vmD/; s/aaaaaaaa/dddddddd/; s/cpuset="2"/cpuset="1"/g' /tmp/vmA.xml > /tmp/vmD.xml`);
    const result = await guest!.sh("/etc/libvirt/hooks/qemu vmD prepare begin - < /tmp/vmD.xml");
    assert.is(result.code, 1);
    assert.match(result.stdout.split("\n")[0]!, /<cputune> \(vcpupin, emulatorpin, iothreadpin\) and <vcpu cpuset>: CPU 1 is offline \(online: 0,2-3\)/);
    assert.is((await guest!.ok("find /run/vmhook -name '*.json'")).trim(), "");
  } finally {
    await guest!.ok("echo 1 > /sys/devices/system/cpu/cpu1/online");
  }
});

// libvirt's <resource><partition>/vms</partition> without systemd: the top-level group vms.partition, which libvirt
// names (virCgroupSetPartitionSuffix) and keeps after its VMs; narrowed to the host's CPUs, it would leave the VM's none.
it("vmA prepared, then put by libvirt in vms.partition with its vCPU's group on CPU 2: the kernel runs it on CPU 2, not on the host's", async ({ guest }) => {
  await guest!.ok("mkdir /sys/fs/cgroup/vms.partition");
  assert.equal(await hook(guest!, "vmA", "prepare begin"), { code: 0, stdout: "" });
  const placed = await guest!.ok(`
    cd /sys/fs/cgroup/vms.partition
    echo +cpuset > cgroup.subtree_control && mkdir vmA && echo 2 > vmA/cpuset.cpus
    setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/vcpu.pid
    echo $(cat /tmp/vcpu.pid) > vmA/cgroup.procs
    echo "partition=[$(cat cpuset.cpus)] vm=$(cat vmA/cpuset.cpus.effective) vcpu=$(grep Cpus_allowed_list /proc/$(cat /tmp/vcpu.pid)/status | cut -f2)"`);
  assert.is(placed.trim(), "partition=[] vm=2 vcpu=2", "vms.partition untouched, the vCPU on its own CPU");
});

it("the VM gone (libvirt removes its group), releasing vmA leaves no cpuset and no state", async ({ guest }) => {
  await guest!.ok("kill $(cat /tmp/vcpu.pid); sleep 0.2; rmdir /sys/fs/cgroup/vms.partition/vmA; echo -cpuset > /sys/fs/cgroup/vms.partition/cgroup.subtree_control");
  assert.equal(await hook(guest!, "vmA", "release end"), { code: 0, stdout: "" });
  assert.not.match(await guest!.ok("cat /sys/fs/cgroup/cgroup.subtree_control"), /cpuset/);
  assert.is((await guest!.ok("find /run/vmhook -name '*.json'")).trim(), "");
});

// An admin's cpuset partition (Documentation/admin-guide/cgroup-v2.rst, cpuset.cpus.partition): its CPUs are its
// own, the kernel refuses any sibling a cpuset.cpus that overlaps them (EINVAL), and the root's effective CPUs leave them out.
it("a top-level cpuset partition holding CPU 3: vmA (CPU 2) starts, the host groups keep 0-1, the partition is untouched, and release gives the groups their CPUs back", async ({ guest }) => {
  await guest!.ok("cd /sys/fs/cgroup && echo +cpuset > cgroup.subtree_control && mkdir rt && echo 3 > rt/cpuset.cpus && echo root > rt/cpuset.cpus.partition");
  try {
    const partition = "cat /sys/fs/cgroup/rt/cpuset.cpus /sys/fs/cgroup/rt/cpuset.cpus.partition /sys/fs/cgroup/rt/cpuset.cpus.effective | tr '\\n' ' '";
    assert.is((await guest!.ok(partition)).trim(), "3 root 3");
    const before = await state(guest!);
    assert.is(before.get("system.slice/cpuset.cpus.effective"), "0-2", "the partition's CPU is not the host groups'");
    const prepared = await hook(guest!, "vmA", "prepare begin");
    assert.equal(prepared, { code: 0, stdout: "" }, prepared.stdout);
    assert.is((await guest!.ok(partition)).trim(), "3 root 3", "the partition keeps its CPU");
    const now = await state(guest!);
    for (const group of ["system.slice", "user"]) assert.is(now.get(`${group}/cpuset.cpus.effective`), "0-1", group);
    assert.is(now.get("host-process"), "0-1");
    assert.equal(await hook(guest!, "vmA", "release end"), { code: 0, stdout: "" });
    const after = await state(guest!);
    for (const group of ["system.slice", "user", "machine.slice"]) assert.is(after.get(`${group}/cpuset.cpus.effective`), "0-2", group);
    assert.is((await guest!.ok(partition)).trim(), "3 root 3");
    assert.is((await guest!.ok("find /run/vmhook -name '*.json'")).trim(), "");
  } finally {
    await guest!.ok("cd /sys/fs/cgroup && echo member > rt/cpuset.cpus.partition; rmdir rt");
  }
});

bench.run();

// ---- a kernel booted with isolcpus=3: CPU 3 is never the host's ----

const booted = suite<{ guest?: Guest; before?: Map<string, string> }>("isolate on a real kernel booted with isolcpus=3");
booted.before(async (context) => {
  if (skip) return;
  const guest = (context.guest = await bootGuest({ smp: 4, memoryMiB: 1024, append: "isolcpus=3" }));
  await setUpHost(guest);
  context.before = await state(guest);
});
booted.after(async (context) => {
  await context.guest?.shutdown();
});
const onBooted = skip ? booted.skip : booted;

onBooted("the kernel lists CPU 3 as isolated, and host processes start off it", async ({ guest, before }) => {
  assert.is((await guest!.ok("cat /sys/devices/system/cpu/isolated")).trim(), "3");
  assert.is(before!.get("host-process"), "0-2");
});

onBooted("vmA (CPU 2): the host keeps 0-1, not the boot-isolated CPU 3; no host process, workqueue or IRQ is put there that was not there before", async ({ guest, before }) => {
  assert.equal(await hook(guest!, "vmA", "prepare begin"), { code: 0, stdout: "" });
  const now = await state(guest!);
  assert.is(now.get("system.slice/cpuset.cpus.effective"), "0-1");
  assert.is(now.get("user/cpuset.cpus.effective"), "0-1");
  assert.is(now.get("host-process"), "0-1");
  assert.is(now.get("wq"), "3", "the workqueue mask as CPUs 0-1");
  for (const [irq, affinity] of irqs(now)) {
    if (affinity === before!.get(irq)) continue; // refused to move (the timer), or already off CPU 2
    const had = cpuList(before!.get(irq)!);
    assert.equal(cpuList(affinity).filter((cpu) => cpu === 2 || (cpu === 3 && !had.includes(3))), [], `${irq} moved from ${had} to ${affinity}`);
  }
});

onBooted("releasing vmA restores every file exactly; the kernel, not vmhook, leaves the processes allowed on CPU 3 (docs/isolate.md)", async ({ guest, before }) => {
  assert.equal(await hook(guest!, "vmA", "release end"), { code: 0, stdout: "" });
  const after = await state(guest!);
  // Moving a process between cpusets (cpuset enabled, then disabled) and writing its group's cpuset.cpus back to ""
  // set its affinity to the group's or the root's CPUs, CPU 3 included (Linux 6.1, cpuset_attach and update_tasks_cpumask).
  for (const process of ["host-process", "vm-process"]) {
    assert.is(after.get(process), "0-3", process);
    after.set(process, before!.get(process)!);
  }
  assert.equal(after, before!);
});

booted.run();
