// vmhook on a real desktop: the desktop guest (test/kernel/desktop-image.ts)
// boots Debian with systemd as PID 1 through OVMF; the display manager's
// wayland session runs weston on the std VGA as a unit of the user's systemd
// manager (session.slice), as GNOME and Plasma run their compositors, next to
// pipewire and wireplumber. One boot, many scenarios, each driven by the
// compiled hook as libvirt would run it: single-GPU handover with the
// compositor stopped through the user's manager and audio kept running, the
// refusal of holders single-GPU mode may not stop (a system unit, a user
// unit outside the session), isolate through systemd's AllowedCPUs with two
// VMs, nosleep's inhibitor lock and the stop-units example plugin.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { domainXml, hook, STATE, UUID, writeDomain } from "./vfio-domain.ts";
import { stopUnitsAllowing } from "../helpers/stop-units.ts";

const desktop = suite<{ guest?: Guest; baseline?: string }>("the desktop guest (systemd, OVMF, weston as a user unit, pipewire)");
const skip = skipReason({ desktop: true });
if (skip) console.log(`desktop kernel tests: skipped: ${skip}`);
const it = skip ? desktop.skip : desktop;

/** The display side of the host, on top of the vfio STATE: the display manager, who holds the card, the user's manager and audio (by pid: they must survive). */
const DESKTOP_STATE = `${STATE}
echo "display-manager: $(systemctl is-active display-manager.service)"
echo "card0 holders: $(for p in $(pgrep -x weston); do ls -l /proc/$p/fd 2>/dev/null | grep -q ' /dev/dri/card0$' && echo weston; done)"
echo "compositor cgroup: $(for p in $(pgrep -x weston); do cut -d: -f3 /proc/$p/cgroup; done)"
echo "user manager: $(systemctl show -p MainPID --value user@1000.service)"
for program in pipewire wireplumber; do echo "$program: $(for p in $(pgrep -x $program); do echo "$p $(cut -d: -f3 /proc/$p/cgroup)"; done)"; done
echo "lingering: $(ls /var/lib/systemd/linger 2>/dev/null)"
echo "boot-time cleanups: $(ls /etc/tmpfiles.d | grep vmhook)"
echo "firmware framebuffers: $(ls /sys/bus/platform/drivers/efi-framebuffer /sys/bus/platform/drivers/simple-framebuffer 2>/dev/null | grep framebuffer. | tr '\\n' ' ')"
`;

/** Waits in the guest until the compositor holds the card again (it starts asynchronously after systemctl start). */
const WAIT_FOR_COMPOSITOR = `for i in $(seq 1 600); do
  for p in $(pgrep -x weston); do ls -l /proc/$p/fd 2>/dev/null | grep -q ' /dev/dri/card0$' && exit 0; done
  sleep 0.1
done; echo "weston does not hold /dev/dri/card0"; systemctl status display-manager.service --no-pager; exit 1`;

/** The user's systemd manager, as vmhook reaches it. */
const userctl = (command: string) => `timeout 30 systemctl --user --machine=desktop@.host ${command}`;
const COMPOSITOR_CGROUP = "/user.slice/user-1000.slice/user@1000.service/session.slice/compositor.service";

desktop.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ desktop: true, smp: 4 });
  await context.guest.ok(WAIT_FOR_COMPOSITOR, { timeoutMs: 120_000 });
  context.baseline = await context.guest.ok(DESKTOP_STATE);
});
desktop.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("boots Debian with systemd as PID 1 and cgroup v2; the wayland session's compositor holds the std VGA as a user unit, pipewire and wireplumber run", async ({ guest, baseline }) => {
  assert.is((await guest!.ok("cat /proc/1/comm")).trim(), "systemd");
  assert.is((await guest!.ok("stat -f -c %T /sys/fs/cgroup")).trim(), "cgroup2fs");
  assert.match(baseline!, "driver: bochs-drm");
  assert.match(baseline!, "display-manager: active");
  assert.match(baseline!, "card0 holders: weston");
  assert.match(baseline!, `compositor cgroup: ${COMPOSITOR_CGROUP}\n`);
  assert.match(baseline!, /pipewire: \d+ \/user.slice\/user-1000.slice\/user@1000.service\/session.slice\/pipewire.service\n/);
  assert.match(baseline!, /wireplumber: \d+ \/user.slice\/user-1000.slice\/user@1000.service\/session.slice\/wireplumber.service\n/);
  assert.match(baseline!, "lingering: \n");
  // The display manager's PAM session is the desktop user's graphical session (type wayland), whose leader runs in its scope.
  const session = await guest!.ok("id=$(sed -n 's/^DISPLAY=//p' /run/systemd/users/1000); cat /run/systemd/sessions/$id; cat /proc/$(pgrep -x desktop-session || pgrep -f 'sleep infinity' | head -1)/cgroup");
  assert.match(session, "USER=desktop");
  assert.match(session, "TYPE=wayland");
  assert.match(session, /0::\/user.slice\/user-1000.slice\/session-\w+.scope/);
});

it("OVMF gave the kernel a firmware framebuffer, which bochs-drm replaced", async ({ guest }) => {
  const log = await guest!.ok("dmesg");
  assert.match(log, /efifb: probing for efifb|simple-framebuffer|simpledrm/);
  assert.match(log, /bochs-drm|\[drm\] Found bochs VGA/);
});

it("single GPU: the compositor stops through the user's manager, then the display manager; the GPU goes to vfio-pci while pipewire keeps running; release brings the compositor back on the card", async ({ guest, baseline }) => {
  const prepare = await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" }, prepare.stdout);
  const during = await guest!.ok(DESKTOP_STATE);
  assert.match(during, "driver: vfio-pci");
  assert.match(during, "display-manager: inactive");
  assert.match(during, "card0 holders: \n");
  assert.not.match(during, /frame buffer device bind=1/);
  assert.match(during, `journals: ${UUID}.json`);
  assert.match(during, "lingering: desktop\n");
  assert.match(during, "boot-time cleanups: vmhook-linger-desktop.conf\n");
  // What the next boot's systemd-tmpfiles-setup does with it, in a copy: the linger goes, and the entry itself; another user's linger stays.
  const boot = await guest!.ok(`root=$(mktemp -d); mkdir -p $root/etc/tmpfiles.d $root/var/lib/systemd/linger; cp /etc/tmpfiles.d/vmhook-linger-desktop.conf $root/etc/tmpfiles.d/; touch $root/var/lib/systemd/linger/desktop $root/var/lib/systemd/linger/other
systemd-tmpfiles --root=$root --create --remove --boot --exclude-prefix=/dev
for file in var/lib/systemd/linger/desktop etc/tmpfiles.d/vmhook-linger-desktop.conf var/lib/systemd/linger/other; do if [ -e $root/$file ]; then echo "kept /$file"; else echo "removed /$file"; fi; done; rm -r $root`);
  assert.match(boot, "removed /var/lib/systemd/linger/desktop\nremoved /etc/tmpfiles.d/vmhook-linger-desktop.conf\nkept /var/lib/systemd/linger/other\n");
  // The session ended with the display manager; the user's manager, kept by the linger, still runs pipewire and wireplumber (the same processes).
  for (const line of ["user manager", "pipewire", "wireplumber"]) assert.match(during, new RegExp(`^${line}: .*$`, "m").exec(baseline!)![0]);
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, "vfio: keep desktop's systemd user manager running while the VM runs (loginctl enable-linger desktop), so audio (pipewire) survives the end of the session: done");
  assert.match(log, "vfio: stop compositor.service of desktop's graphical session (systemctl --user --machine=desktop@.host stop compositor.service): done");
  assert.ok(log.indexOf("stop compositor.service") < log.indexOf("stop display-manager.service: done"), "the compositor stops before the display manager");

  const release = await guest!.sh(hook(domainXml('single-gpu="yes"'), "release end"));
  assert.equal(release, { code: 0, stdout: "" }, release.stdout);
  await guest!.ok(WAIT_FOR_COMPOSITOR, { timeoutMs: 120_000 });
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

it("a GPU job in a user unit outside the graphical session is refused before anything stops, naming process, unit and user", async ({ guest, baseline }) => {
  const invocations = `systemctl show -p InvocationID --value display-manager.service; ${userctl("show -p InvocationID --value compositor.service")}`;
  const before = await guest!.ok(invocations);
  await guest!.ok(`timeout 30 systemd-run --user --machine=desktop@.host --unit=cuda-job --quiet sh -c 'exec sleep 600 < /dev/dri/card0'; sleep 1`);
  try {
    const pid = (await guest!.ok(userctl("show -p MainPID --value cuda-job.service"))).trim();
    const result = await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"));
    assert.is(result.code, 1);
    assert.match(result.stdout.split("\n")[0]!, new RegExp(`vfio: the GPU is in use: pid ${pid} \\(sleep\\) holds /dev/dri/card0 in cuda-job.service \\(a unit of desktop's systemd user manager(, app.slice)?\\); vmhook stops only compositor.service of desktop, display-manager.service`));
    assert.is(await guest!.ok(invocations), before, "neither the display manager nor the compositor was stopped");
  } finally {
    await guest!.ok(userctl("stop cuda-job.service"));
  }
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

it("nosleep: logind lists vmhook's sleep lock while the VM runs, held by a transient unit; release ends it (a name with ${…} and $$, which systemd would expand, kept as it is)", async ({ guest }) => {
  // The name, as libvirt passes it: systemd expands ${NAME} and $$ in the command a transient unit runs.
  const name = "gpu-${HOME}$$-vm";
  const xml = `<domain type='kvm'><name>${name}</name><uuid>${UUID}</uuid><memory unit='MiB'>256</memory>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:nosleep/></vmhook:hooks></metadata></domain>`;
  const run = (event: string) => guest!.sh(`${writeDomain(xml)}\n/etc/libvirt/hooks/qemu '${name}' ${event} - < /tmp/domain.xml`);
  const prepare = await run("prepare begin");
  assert.equal(prepare, { code: 0, stdout: "" }, prepare.stdout);
  const locks = await guest!.ok("systemd-inhibit --list --no-pager");
  assert.match(locks, /vmhook .*sleep.*VM gpu-\$\{HOME\}\$\$-vm runs with devices passed through.*block/);
  assert.is((await guest!.ok(`systemctl is-active vmhook-nosleep-${UUID}.service`)).trim(), "active");
  const release = await run("release end");
  assert.equal(release, { code: 0, stdout: "" }, release.stdout);
  assert.not.match(await guest!.ok("systemd-inhibit --list --no-pager"), "vmhook");
  assert.is((await guest!.sh(`systemctl is-active vmhook-nosleep-${UUID}.service`)).code, 3);
});

it("the stop-units example plugin stops a running unit for the VM's life and starts exactly it again", async ({ guest }) => {
  const plugin = stopUnitsAllowing("backup.service idle.service");
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

/** Whether systemd wants a daemon-reload for the host units, and the warning systemctl status gives then. */
const RELOAD_STATE = `
for unit in system.slice user.slice init.scope; do echo "$unit NeedDaemonReload=$(systemctl show -p NeedDaemonReload --value $unit)"; done
echo "status: $(systemctl status system.slice --no-pager 2>&1 | grep '^Warning:')"
`;

it("isolate, two VMs: systemd keeps system.slice, user.slice and init.scope off each VM's CPU; the last release restores all", async ({ guest }) => {
  // A stand-in for QEMU in machine.slice, where libvirt puts VMs: never narrowed.
  await guest!.ok("systemd-run --unit=vm-qemu --slice=machine.slice --quiet sleep infinity");
  // set-property --runtime's drop-ins, which vmhook puts back as they were: left behind, they would outlast a daemon-reload.
  const runtimeDropIns = "find /run/systemd/system.control 2>/dev/null | sort";
  try {
    const dropInsBefore = await guest!.ok(runtimeDropIns);
    const before = await guest!.ok(CPU_STATE);
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(before, new RegExp(`${unit} allowed= effective=(all|0-3)\n`));
    const reloadBefore = await guest!.ok(RELOAD_STATE);
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(reloadBefore, `${unit} NeedDaemonReload=no`, reloadBefore);
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
    assert.is(await guest!.ok(runtimeDropIns), dropInsBefore);
    // The drop-in went without a reload: the value is right, and systemd says only that the unit's files changed on disk (docs/isolate.md).
    const afterRelease = await guest!.ok(RELOAD_STATE);
    // Measured on systemd 252: not for init.scope.
    assert.match(afterRelease, "system.slice NeedDaemonReload=yes\nuser.slice NeedDaemonReload=yes\ninit.scope NeedDaemonReload=no\n", afterRelease);
    assert.match(afterRelease, "status: Warning: The unit file, source configuration file or drop-ins of system.slice changed on disk. Run 'systemctl daemon-reload' to reload units.", afterRelease);
    await guest!.ok("systemctl daemon-reload");
    for (const unit of ["system.slice", "user.slice", "init.scope"]) assert.match(await guest!.ok(CPU_STATE), new RegExp(`${unit} allowed= effective=(all|0-3)\n`));
    assert.is(await guest!.ok(RELOAD_STATE), reloadBefore, "a reload gives each unit the value it already has, and the warning goes");
    assert.is((await guest!.ok("find /run/vmhook -name '*.json'")).trim(), "");
  } finally {
    await guest!.ok("systemctl stop vm-qemu.service");
  }
});

desktop.run();
