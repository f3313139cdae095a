// vmhook on a real desktop: the desktop guest (test/kernel/desktop-image.ts)
// boots Debian with systemd as PID 1 through OVMF, and weston holds the std
// VGA as display-manager.service. One boot, many scenarios, each driven by
// the compiled hook as libvirt would run it: single-GPU handover with the
// compositor, the refusal of a holder single-GPU mode may not stop, isolate
// through systemd's AllowedCPUs with two VMs, nosleep's inhibitor lock and
// the stop-units example plugin.
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { domainXml, hook, STATE, UUID, writeDomain } from "./vfio-domain.ts";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const desktop = suite<{ guest?: Guest; baseline?: string }>("the desktop guest (systemd, OVMF, weston)");
const skip = skipReason({ desktop: true });
if (skip) console.log(`desktop kernel tests: skipped: ${skip}`);
const it = skip ? desktop.skip : desktop;

/** The display side of the host, on top of the vfio STATE: the display manager and who holds the card. */
const DESKTOP_STATE = `${STATE}
echo "display-manager: $(systemctl is-active display-manager.service)"
echo "card0 holders: $(for p in $(pgrep -x weston); do ls -l /proc/$p/fd 2>/dev/null | grep -q ' /dev/dri/card0$' && echo weston; done)"
echo "firmware framebuffers: $(ls /sys/bus/platform/drivers/efi-framebuffer /sys/bus/platform/drivers/simple-framebuffer 2>/dev/null | grep framebuffer. | tr '\\n' ' ')"
`;

/** Waits in the guest until the compositor holds the card again (it starts asynchronously after systemctl start). */
const WAIT_FOR_COMPOSITOR = `for i in $(seq 1 600); do
  for p in $(pgrep -x weston); do ls -l /proc/$p/fd 2>/dev/null | grep -q ' /dev/dri/card0$' && exit 0; done
  sleep 0.1
done; echo "weston does not hold /dev/dri/card0"; systemctl status display-manager.service --no-pager; exit 1`;

desktop.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ desktop: true, smp: 4 });
  await context.guest.ok(WAIT_FOR_COMPOSITOR, { timeoutMs: 120_000 });
  context.baseline = await context.guest.ok(DESKTOP_STATE);
});
desktop.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("boots Debian with systemd as PID 1 and cgroup v2, weston holds the std VGA as display-manager.service", async ({ guest, baseline }) => {
  assert.is((await guest!.ok("cat /proc/1/comm")).trim(), "systemd");
  assert.is((await guest!.ok("stat -f -c %T /sys/fs/cgroup")).trim(), "cgroup2fs");
  assert.match(baseline!, "driver: bochs-drm");
  assert.match(baseline!, "display-manager: active");
  assert.match(baseline!, "card0 holders: weston");
  // The display manager's PAM session moves weston into a logind session scope of the desktop user, type wayland.
  const weston = await guest!.ok("cgroup=$(cat /proc/$(pgrep -x weston | head -1)/cgroup); echo $cgroup; cat /run/systemd/sessions/$(echo $cgroup | sed 's/.*session-\\(.*\\).scope/\\1/')");
  assert.match(weston, /0::\/user.slice\/user-1000.slice\/session-\w+.scope/);
  assert.match(weston, "USER=desktop");
  assert.match(weston, "TYPE=wayland");
});

it("OVMF gave the kernel a firmware framebuffer, which bochs-drm replaced", async ({ guest }) => {
  const log = await guest!.ok("dmesg");
  assert.match(log, /efifb: probing for efifb|simple-framebuffer|simpledrm/);
  assert.match(log, /bochs-drm|\[drm\] Found bochs VGA/);
});

it("single GPU: weston stops, the GPU goes to vfio-pci and the console lets go; release brings the compositor back on the card", async ({ guest, baseline }) => {
  const prepare = await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" }, prepare.stdout);
  const during = await guest!.ok(DESKTOP_STATE);
  assert.match(during, "driver: vfio-pci");
  assert.match(during, "display-manager: inactive");
  assert.match(during, "card0 holders: \n");
  assert.not.match(during, /frame buffer device bind=1/);
  assert.match(during, `journals: ${UUID}.json`);
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), "vfio: stop display-manager.service: done");

  const release = await guest!.sh(hook(domainXml('single-gpu="yes"'), "release end"));
  assert.equal(release, { code: 0, stdout: "" }, release.stdout);
  await guest!.ok(WAIT_FOR_COMPOSITOR, { timeoutMs: 120_000 });
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

it("a GPU job in its own unit is refused before the display manager is touched, naming the process and the unit", async ({ guest, baseline }) => {
  const invocation = await guest!.ok("systemctl show -p InvocationID --value display-manager.service");
  await guest!.ok("systemd-run --unit=gpu-job --quiet sh -c 'exec sleep 600 < /dev/dri/card0'; sleep 1");
  try {
    const pid = (await guest!.ok("systemctl show -p MainPID --value gpu-job.service")).trim();
    const result = await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"));
    assert.is(result.code, 1);
    assert.match(result.stdout.split("\n")[0]!, `vfio: the GPU is in use: pid ${pid} (sleep) holds /dev/dri/card0 in gpu-job.service`);
    assert.is(await guest!.ok("systemctl show -p InvocationID --value display-manager.service"), invocation, "the display manager was never stopped");
  } finally {
    await guest!.ok("systemctl stop gpu-job.service");
  }
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

it("nosleep: logind lists vmhook's sleep lock while the VM runs, held by a transient unit; release ends it", async ({ guest }) => {
  const xml = `<domain type='kvm'><name>gpu-vm</name><uuid>${UUID}</uuid><memory unit='MiB'>256</memory>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:nosleep/></vmhook:hooks></metadata></domain>`;
  const run = (event: string) => guest!.sh(`${writeDomain(xml)}\n/etc/libvirt/hooks/qemu gpu-vm ${event} - < /tmp/domain.xml`);
  const prepare = await run("prepare begin");
  assert.equal(prepare, { code: 0, stdout: "" }, prepare.stdout);
  const locks = await guest!.ok("systemd-inhibit --list --no-pager");
  assert.match(locks, /vmhook .*sleep.*VM gpu-vm runs with devices passed through.*block/);
  assert.is((await guest!.ok(`systemctl is-active vmhook-nosleep-${UUID}.service`)).trim(), "active");
  const release = await run("release end");
  assert.equal(release, { code: 0, stdout: "" }, release.stdout);
  assert.not.match(await guest!.ok("systemd-inhibit --list --no-pager"), "vmhook");
  assert.is((await guest!.sh(`systemctl is-active vmhook-nosleep-${UUID}.service`)).code, 3);
});

it("the stop-units example plugin stops a running unit for the VM's life and starts exactly it again", async ({ guest }) => {
  const plugin = fs.readFileSync(path.join(REPO, "examples/plugins/stop-units"), "utf8");
  await guest!.ok(`mkdir -p /etc/vmhook/plugins.d && cat > /etc/vmhook/plugins.d/stop-units <<'PLUGIN'\n${plugin}\nPLUGIN
chmod 755 /etc/vmhook/plugins.d/stop-units
printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/backup.service
systemctl daemon-reload && systemctl start backup.service`);
  const xml = `<domain type='kvm'><name>gpu-vm</name><uuid>${UUID}</uuid><memory unit='MiB'>256</memory>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:plugin name="stop-units" units="backup.service idle.service"/></vmhook:hooks></metadata></domain>`;
  const run = (event: string) => guest!.sh(`${writeDomain(xml)}\n/etc/libvirt/hooks/qemu gpu-vm ${event} - < /tmp/domain.xml`);
  assert.equal(await run("prepare begin"), { code: 0, stdout: "" });
  assert.is((await guest!.sh("systemctl is-active backup.service")).code, 3, "backup.service is stopped while the VM runs");
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), "idle.service is not active; leaving it alone");
  assert.equal(await run("release end"), { code: 0, stdout: "" });
  assert.is((await guest!.ok("systemctl is-active backup.service")).trim(), "active");
  assert.is((await guest!.sh("systemctl is-active idle.service")).code, 3, "a unit that was not running is not started");
  await guest!.ok("systemctl stop backup.service");
});

// ---- isolate through systemd: AllowedCPUs on system.slice, user.slice and init.scope, two VMs ----

const VMS = {
  vmA: { uuid: "aaaaaaaa-0000-4000-8000-000000000001", cpu: 2 },
  vmB: { uuid: "bbbbbbbb-0000-4000-8000-000000000002", cpu: 3 },
};
type VmName = keyof typeof VMS;
const isolateXml = (name: VmName) =>
  `<domain type="kvm"><name>${name}</name><uuid>${VMS[name].uuid}</uuid><memory unit="MiB">64</memory><vcpu>1</vcpu>
<cputune><vcpupin vcpu="0" cpuset="${VMS[name].cpu}"/><emulatorpin cpuset="${VMS[name].cpu}"/></cputune>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:isolate/></vmhook:hooks></metadata></domain>`;
const isolateHook = (guest: Guest, name: VmName, event: string) =>
  guest.sh(`cat > /tmp/${name}.xml <<'XML'\n${isolateXml(name)}\nXML\n/etc/libvirt/hooks/qemu ${name} ${event} - < /tmp/${name}.xml`);

/** AllowedCPUs of the three host units, the effective CPUs of their cgroups, and where a service's process and a VM-slice process may run. */
const CPU_STATE = `
for unit in system.slice user.slice init.scope machine.slice; do echo "$unit allowed=$(systemctl show -p AllowedCPUs --value $unit | tr ' ' ',') effective=$(cat /sys/fs/cgroup/$unit/cpuset.cpus.effective 2>/dev/null || echo all)"; done
echo "weston runs on: $(grep Cpus_allowed_list /proc/$(pgrep -x weston | head -1)/status | cut -f2)"
echo "vm process runs on: $(grep Cpus_allowed_list /proc/$(systemctl show -p MainPID --value vm-qemu.service)/status | cut -f2)"
`;

it("isolate, two VMs: systemd keeps system.slice, user.slice and init.scope off each VM's CPU; the last release restores all", async ({ guest }) => {
  // A stand-in for QEMU in machine.slice, where libvirt puts VMs: never narrowed.
  await guest!.ok("systemd-run --unit=vm-qemu --slice=machine.slice --quiet sleep infinity");
  try {
    const before = await guest!.ok(CPU_STATE);
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(before, new RegExp(`${unit} allowed= effective=(all|0-3)\n`));
    assert.match(before, "weston runs on: 0-3");
    assert.equal(await isolateHook(guest!, "vmA", "prepare begin"), { code: 0, stdout: "" });
    const one = await guest!.ok(CPU_STATE);
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(one, `${unit} allowed=0-1,3 effective=0-1,3`);
    assert.match(one, "weston runs on: 0-1,3");
    assert.match(one, "vm process runs on: 0-3");

    assert.equal(await isolateHook(guest!, "vmB", "prepare begin"), { code: 0, stdout: "" });
    const two = await guest!.ok(CPU_STATE);
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(two, `${unit} allowed=0-1 effective=0-1`);
    assert.match(two, "weston runs on: 0-1");

    assert.equal(await isolateHook(guest!, "vmA", "release end"), { code: 0, stdout: "" });
    assert.match(await guest!.ok(CPU_STATE), "system.slice allowed=0-2 effective=0-2");
    assert.equal(await isolateHook(guest!, "vmB", "release end"), { code: 0, stdout: "" });
    // systemd may leave the cpuset controller on once used: "no restriction" shows as all CPUs.
    const after = await guest!.ok(CPU_STATE);
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(after, new RegExp(`${unit} allowed= effective=(all|0-3)\n`));
    assert.match(after, "weston runs on: 0-3");
    assert.match(after, "vm process runs on: 0-3");
    assert.is((await guest!.ok("find /run/vmhook -name '*.json'")).trim(), "");
  } finally {
    await guest!.ok("systemctl stop vm-qemu.service");
  }
});

desktop.run();
