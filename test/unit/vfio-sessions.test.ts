// Desktop sessions in single-GPU mode on a simulated host: GNOME's compositor
// and portal run as units of the user's systemd manager (session.slice). They
// are stopped through that manager before the display manager (GNOME's shell,
// which refuses a manual stop, through the target it is PartOf=), the manager
// is kept running (linger) so pipewire survives, and release starts them
// again only where they can and may run. A user unit outside the graphical
// session is refused before anything changes.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import type { UndoRecord } from "../../lib/plugin.ts";
import { cli } from "../helpers/cli.ts";
import { GpuKernel, type CgroupLayout, type SimSession, type SimUserUnit } from "../helpers/gpu-kernel.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { assertPlanIsPrepare, plannedSteps } from "../helpers/plan.ts";

const UUID = "5d0f3f57-96c1-4d0e-8a52-6c1c2b7d9e01";
const GPU = "0000:03:00.0";
const XML = `<domain type='kvm'><name>win11</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;
const SHELL = "org.gnome.Shell@wayland.service";
const PORTAL = "xdg-desktop-portal-gnome.service";
const INITIALIZED = "gnome-session-initialized.target";
// As gnome-shell's and gnome-session's units declare them: the shell refuses a manual start and stop and is PartOf= the initialized target, which refuses only a manual start.
const SESSION_UNITS: SimUserUnit[] = [
  { name: INITIALIZED, slice: "", active: true, refuseManualStart: true },
  { name: SHELL, slice: "session.slice", active: true, refuseManualStart: true, refuseManualStop: true, partOf: [INITIALIZED], processes: { 900: ["gnome-shell", ["/dev/dri/card0"]], 901: ["Xwayland", ["/dev/dri/renderD128"]] } },
  { name: PORTAL, slice: "session.slice", active: true, processes: { 910: ["xdg-desktop-por", ["/dev/dri/renderD128"]] } },
  { name: "pipewire.service", slice: "session.slice", active: true, processes: { 920: ["pipewire", ["/dev/snd/controlC0"]] } },
  { name: "wireplumber.service", slice: "session.slice", active: true, processes: { 921: ["wireplumber", ["/dev/snd/controlC0"]] } },
];

const GDM_SESSION: SimSession & { id: number } = { id: 2, type: "wayland", seat: "seat0", service: "gdm-password" };

/** One AMD card, GDM (pid 500) as display-manager.service. */
function gdmHost(cgroups?: CgroupLayout): GpuKernel {
  const kernel = new GpuKernel({ cgroups })
    .module({ name: "amdgpu", driver: "amdgpu", loaded: true })
    .device({ address: "0000:00:01.0", classCode: "0x060400", vendor: "0x1022", group: 1 })
    .device({ address: GPU, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 1, bootVga: true, nodes: ["card0", "renderD128"] })
    .unit({ name: "display-manager.service", active: true, processes: { 500: ["gdm", ["/dev/null"]] } })
    .process(1, "systemd", ["/dev/null"], "/init.scope");
  kernel.sim.dir("/var/lib/systemd/linger");
  kernel.sim.dir("/etc/tmpfiles.d"); // systemd's package ships it
  return kernel;
}

/** GNOME 40+ on one AMD card: GDM, ana's desktop in her user manager. */
const gnomeDesktop = (extra: SimUserUnit[] = [], sessionUnits: SimUserUnit[] = SESSION_UNITS, display = GDM_SESSION, cgroups?: CgroupLayout): GpuKernel =>
  gdmHost(cgroups).userManager({ uid: 1000, user: "ana", managerPid: 880, display, units: [...sessionUnits.map((unit) => ({ ...unit })), ...extra] });

const running = (kernel: GpuKernel, pid: number) => kernel.sim.exists(`/proc/${pid}/comm`);
const stops = (kernel: GpuKernel) =>
  kernel.sim.execs.filter((e) => e.command === "loginctl" || (e.command === "systemctl" && (e.args.includes("stop") || e.args.includes("start")))).map((e) => `${e.command} ${e.args.join(" ")}`);
const log = (kernel: GpuKernel) => fs.readFileSync(kernel.sim.resolve(paths.log), "utf8");

const execCount = (kernel: GpuKernel) => kernel.sim.execs.length;
const stopsSince = (kernel: GpuKernel, from: number) => stops({ sim: { execs: kernel.sim.execs.slice(from) } } as unknown as GpuKernel);
const ENDS_SESSION = `vfio: stop ${INITIALIZED} of ana's graphical session, and with it ${SHELL}, which refuses a manual stop (RefuseManualStop=yes) and is PartOf= that target (systemctl --user --machine=ana@.host stop ${INITIALIZED})`;
const BACK_AT_LOGIN = `vfio: ${SHELL} stays stopped: it refuses a manual start, and vmhook ended ana's session to stop it (systemctl --user --machine=ana@.host stop ${INITIALIZED}); ana's next login at the display manager's greeter starts it`;

test("GNOME: the shell refuses a manual stop, so ana's session ends through the target it is PartOf= before GDM stops; the manager lingers so pipewire keeps running; release leaves the shell to her next login at the greeter", async () => {
  const kernel = gnomeDesktop();
  const applied = await assertPlanIsPrepare(kernel.sim, XML, "win11");
  assert.equal(applied.slice(0, 6), [
    "vfio: load module vfio-pci",
    `vfio: at release, check that the display is back: ${GPU} on amdgpu with card, renderD`,
    "vfio: keep ana's systemd user manager running while the VM runs (loginctl enable-linger ana), so audio (pipewire) survives the end of the session",
    ENDS_SESSION,
    `vfio: stop ${PORTAL} of ana's graphical session (systemctl --user --machine=ana@.host stop ${PORTAL})`,
    "vfio: stop display-manager.service",
  ]);
  assert.equal(stops(kernel), [
    "loginctl enable-linger ana",
    `systemctl --user --machine=ana@.host stop ${INITIALIZED}`,
    `systemctl --user --machine=ana@.host stop ${PORTAL}`,
    "systemctl stop display-manager.service",
  ]);
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  for (const pid of [920, 921]) assert.ok(running(kernel, pid), `pipewire/wireplumber (pid ${pid}) hold no GPU and keep running`);
  for (const pid of [900, 901, 910]) assert.not.ok(running(kernel, pid));

  const prepared = execCount(kernel);
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, release.stderr);
  assert.equal(stopsSince(kernel, prepared), ["systemctl start display-manager.service", `systemctl --user --machine=ana@.host start ${PORTAL}`, "loginctl disable-linger ana"]);
  assert.match(log(kernel), BACK_AT_LOGIN);
  assert.ok(kernel.units.get("display-manager.service")!.active, "GDM runs again: its greeter is where ana logs in");
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
  assert.ok(running(kernel, 920), "pipewire still runs");
  assert.equal(kernel.sim.stateFiles(), []);
});

test("GDM's login screen (Debian 12, GDM 43): the greeter's shell runs in Debian-gdm's user manager (gnome-session@gnome-login) and ends with GDM, so GDM's stop alone frees the GPU: no linger for Debian-gdm, nothing stopped through its manager", async () => {
  // The greeter's session: class greeter, opened by gdm-launch-environment (pam_systemd starts user@118.service for it).
  const greeter = { id: 1, type: "wayland", seat: "seat0", class: "greeter", service: "gdm-launch-environment" };
  const kernel = gdmHost().userManager({ uid: 118, user: "Debian-gdm", managerPid: 870, display: greeter, endsWith: "display-manager.service", units: SESSION_UNITS.map((unit) => ({ ...unit })) });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 0, result.stderr);
  assert.equal(stops(kernel), ["systemctl stop display-manager.service"]);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/Debian-gdm"));
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  const prepared = execCount(kernel);
  assert.is((await runHookEvent(kernel.sim, "release", "end", XML, "win11")).code, 0);
  assert.equal(stopsSince(kernel, prepared), ["systemctl start display-manager.service"]);
  assert.equal(kernel.sim.stateFiles(), []);
});

for (const layout of ["unified", "hybrid", "legacy"] as const) {
  test(`Plasma (${layout} cgroups): plasma-kwin_wayland.service allows a manual stop and start: it stops through ana's manager and starts again in her session at release; the host is as before`, async () => {
    const KWIN = "plasma-kwin_wayland.service";
    const kernel = gnomeDesktop([], [
      { name: KWIN, slice: "session.slice", active: true, partOf: ["graphical-session.target"], processes: { 900: ["kwin_wayland", ["/dev/dri/card0"]] } },
      { name: "pipewire.service", slice: "session.slice", active: true, processes: { 920: ["pipewire", ["/dev/snd/controlC0"]] } },
    ], GDM_SESSION, layout);
    const before = kernel.sim.snapshot();
    const planned = await plannedSteps(kernel.sim, XML);
    assert.ok(planned.includes(`vfio: stop ${KWIN} of ana's graphical session (systemctl --user --machine=ana@.host stop ${KWIN})`), planned.join("\n"));
    const prepare = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
    assert.is(prepare.code, 0, prepare.stderr);
    assert.not.ok(running(kernel, 900));
    const prepared = execCount(kernel);
    const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
    assert.is(release.code, 0, release.stderr);
    assert.equal(stopsSince(kernel, prepared), ["systemctl start display-manager.service", `systemctl --user --machine=ana@.host start ${KWIN}`, "loginctl disable-linger ana"]);
    assert.equal(kernel.sim.snapshot(), before);
  });
}

test("Hyprland under uwsm, logged in through greetd: the compositor unit's display session is logind type tty (greetd passes no XDG_SESSION_TYPE) but greetd opened it, so the unit stops through ana's manager, not refused; release leaves it to her next login", async () => {
  const HYPRLAND = "wayland-wm@hyprland.desktop.service";
  const greetdSession = { id: 2, type: "tty", seat: "seat0", service: "greetd", leader: { pid: 890, comm: "greetd", parent: 500 } };
  const kernel = gnomeDesktop([], [{ name: HYPRLAND, slice: "session.slice", active: true, processes: { 900: ["Hyprland", ["/dev/dri/card0"]] } }], greetdSession);
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 0, result.stderr);
  assert.ok(stops(kernel).includes(`systemctl --user --machine=ana@.host stop ${HYPRLAND}`), stops(kernel).join("\n"));
  assert.is(kernel.driverOf(GPU), "vfio-pci");
  assert.is((await runHookEvent(kernel.sim, "release", "end", XML, "win11")).code, 0);
  assert.match(log(kernel), `vfio: ${HYPRLAND} stays stopped: ana has no session to display on now`);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
});

test("GNOME: when the shell and every target it is PartOf= refuse a manual stop, the start is refused before anything changes, naming the unit and the fix", async () => {
  const kernel = gnomeDesktop([], SESSION_UNITS.map((unit) => (unit.name === INITIALIZED ? { ...unit, refuseManualStop: true } : unit)));
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 1);
  assert.match(
    result.stderr.split("\n")[0]!,
    `vfio: ${SHELL} of ana holds the GPU and refuses a manual stop (RefuseManualStop=yes), and so does every target it is PartOf= (${INITIALIZED}): vmhook cannot stop it; log out of ana's session and start the VM again`,
  );
  assert.equal(stops(kernel), [], "nothing was stopped, linger untouched");
  assert.equal(kernel.sim.snapshot(), before);
});

test("when ana's manager does not say whether her session units may be stopped, the start is refused before anything changes", async () => {
  const kernel = gnomeDesktop();
  kernel.userManagers.get("ana")!.failShow = "Failed to get properties: Connection timed out";
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `vfio: ${SHELL}, ${PORTAL} of ana hold the GPU, but ana's systemd user manager does not say whether they may be stopped`);
  assert.equal(stops(kernel), [], "nothing was stopped, linger untouched");
  assert.equal(kernel.sim.snapshot(), before);
});

test("GNOME: when GDM does not stop, the rollback starts the portal again and ends the linger, and says the shell comes back at ana's next login", async () => {
  const kernel = gnomeDesktop();
  kernel.units.get("display-manager.service")!.failStop = "Job for gdm.service canceled";
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, "systemctl stop display-manager.service failed: Job for gdm.service canceled");
  assert.equal(stops(kernel).slice(-2), [`systemctl --user --machine=ana@.host start ${PORTAL}`, "loginctl disable-linger ana"]);
  assert.match(log(kernel), BACK_AT_LOGIN);
  assert.ok(running(kernel, 910), "the portal runs again");
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
});

/** A boot as far as vmhook's changes go: /run is empty again, and systemd-tmpfiles-setup (--create --remove --boot, before logind starts) removes what the "r" lines of /etc/tmpfiles.d name. */
function reboot(kernel: GpuKernel): void {
  kernel.sim.remove("/run/vmhook");
  const configs = kernel.sim.list("/etc/tmpfiles.d").map((name) => kernel.sim.read(`/etc/tmpfiles.d/${name}`));
  for (const line of configs.flatMap((text) => text.split("\n"))) {
    const [type, path] = line.trim().split(/\s+/);
    if (type === "r" && path) kernel.sim.remove(path);
  }
}

test("GNOME: a reboot while the VM ran (power loss, a kernel panic) takes the journal in /run and no release runs, so the next boot ends the linger vmhook added: ana does not linger for good", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  assert.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
  reboot(kernel);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"), "the linger went with the boot");
  assert.equal(kernel.sim.list("/etc/tmpfiles.d"), [], "and so did what ended it");
});

test("GNOME: /etc/tmpfiles.d cannot be written (read-only /etc): the VM still starts, and the log says what a reboot would leave and how to end it", async () => {
  const kernel = gnomeDesktop();
  kernel.sim.failWrite("/etc/tmpfiles.d/vmhook-linger-ana.conf", "EROFS");
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 0, result.stderr);
  assert.match(log(kernel), `vfio: cannot write ${kernel.sim.root}/etc/tmpfiles.d/vmhook-linger-ana.conf (EROFS): should the host go down while the VM runs, ana lingers on after the boot; then run loginctl disable-linger ana`);
  assert.is((await runHookEvent(kernel.sim, "release", "end", XML, "win11")).code, 0);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
});

test("GNOME: release and a rollback leave no boot-time cleanup of the linger behind: a linger ana takes later is hers", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  assert.is((await runHookEvent(kernel.sim, "release", "end", XML, "win11")).code, 0);
  assert.equal(kernel.sim.list("/etc/tmpfiles.d"), []);
  kernel.units.get("display-manager.service")!.failStop = "Job for gdm.service canceled";
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 1);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
  assert.equal(kernel.sim.list("/etc/tmpfiles.d"), []);
});

test("GNOME: a user who lingers already keeps lingering; no linger step", async () => {
  const kernel = gnomeDesktop();
  kernel.sim.file("/var/lib/systemd/linger/ana", "");
  const planned = await plannedSteps(kernel.sim, XML);
  assert.not.ok(planned.some((step) => step.includes("linger")), planned.join("\n"));
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  assert.is((await runHookEvent(kernel.sim, "release", "end", XML, "win11")).code, 0);
  assert.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
});

test("GNOME: when ana's session ended with GDM, release leaves her units to her next login and says so", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.endDisplaySession("ana");
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, release.stderr);
  assert.not.ok(kernel.sim.execs.some((e) => e.args.includes("start") && e.args.includes("--user")), "nothing started in a manager without a graphical session");
  assert.match(log(kernel), `vfio: ${PORTAL} stays stopped: ana has no session to display on now (it ended with the display manager); ana logs in again and the session starts it`);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"), "the linger vmhook added is gone");
  assert.ok(running(kernel, 920), "pipewire still runs");
});

test("GNOME started over SSH: at release logind's display session of ana is her ssh session (type tty, elected once the graphical one ended), so her units stay stopped", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.endDisplaySession("ana");
  // logind elects any session of the user as DISPLAY when no graphical one is left: here her ssh login.
  kernel.sim.file("/run/systemd/sessions/7", "UID=1000\nUSER=ana\nACTIVE=1\nSTATE=active\nTYPE=tty\nCLASS=user\n");
  kernel.sim.file("/run/systemd/users/1000", "NAME=ana\nSTATE=active\nDISPLAY=7\n");
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, release.stderr);
  assert.not.ok(kernel.sim.execs.some((e) => e.args.includes("start") && e.args.includes("--user")), "no compositor started for a text session");
  assert.match(log(kernel), `vfio: ${PORTAL} stays stopped: ana has no session to display on now`);
});

test("ana logged in over xrdp while the VM ran: at release her display session is that remote one (x11, no seat), where a compositor gets no GPU, so her units stay stopped; starting them failed the release and refused every later start of the VM", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.endDisplaySession("ana");
  kernel.session(8, { type: "x11", service: "xrdp-sesman", user: "ana", uid: 1000, processes: { 970: ["Xorg", []] } });
  kernel.sim.file("/run/systemd/users/1000", "NAME=ana\nSTATE=active\nDISPLAY=8\n");
  // mutter and kwin take the GPU through logind's seat of the display session: with no seat they exit.
  for (const unit of kernel.userManagers.get("ana")!.units) unit.failStart = `Job for ${unit.name} failed because the control process exited with error code.`;
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, release.stderr);
  assert.not.match(release.stderr, "could not be undone");
  assert.not.ok(kernel.sim.execs.some((e) => e.args.includes("start") && e.args.includes("--user")), "no compositor started for a session on no seat");
  // The shell comes back at her next login anyway (it refuses a manual start); the portal would have been started.
  assert.match(log(kernel), `vfio: ${PORTAL} stays stopped: ana has no session to display on now`);
  assert.equal(kernel.sim.stateFiles(), [], "nothing left for vmhook recover");
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0, "the VM starts again");
});

test("GNOME: when ana's manager is a new one at release (it ended meanwhile), nothing is started in it", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  kernel.process(990, "systemd", [], "/user.slice/user-1000.slice/user@1000.service/init.scope");
  kernel.sim.file("/proc/990/stat", "990 (systemd) S 1 990 990 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 9999 0 0");
  kernel.sim.file("/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service/init.scope/cgroup.procs", "990");
  const release = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
  assert.is(release.code, 0, release.stderr);
  assert.not.ok(kernel.sim.execs.some((e) => e.args.includes("start") && e.args.includes("--user")));
  assert.match(log(kernel), `vfio: ${PORTAL} stays stopped: the systemd user manager of ana that ran it has ended`);
});

test("a user unit outside the graphical session (a CUDA job in app.slice) is refused before anything stops, naming process, unit and user", async () => {
  const kernel = gnomeDesktop([{ name: "cuda-train.service", slice: "app.slice", active: true, processes: { 950: ["python3", ["/dev/dri/renderD128"]] } }]);
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 1);
  assert.match(
    result.stderr.split("\n")[0]!,
    `the GPU is in use: pid 950 (python3) holds /dev/dri/renderD128 in cuda-train.service (a unit of ana's systemd user manager, app.slice); vmhook stops only ${SHELL} of ana, ${PORTAL} of ana, display-manager.service with its graphical sessions`,
  );
  assert.equal(stops(kernel), [], "nothing was stopped, linger untouched");
  assert.equal(kernel.sim.snapshot(), before);
});

test("a compositor in the session.slice of a remote user (bob's GNOME over xrdp, a session on no seat) is refused before anything stops: the display manager's stop does not end bob's session", async () => {
  const kernel = gnomeDesktop().userManager({
    uid: 1001,
    user: "bob",
    managerPid: 881,
    display: { id: 7, type: "x11", service: "xrdp-sesman" },
    units: [{ name: "org.gnome.Shell@x11.service", slice: "session.slice", active: true, processes: { 960: ["gnome-shell", ["/dev/dri/renderD128"]] } }],
  });
  const before = kernel.sim.snapshot();
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11");
  assert.is(result.code, 1);
  assert.match(
    result.stderr.split("\n")[0]!,
    `the GPU is in use: pid 960 (gnome-shell) holds /dev/dri/renderD128 in org.gnome.Shell@x11.service (a unit of bob's systemd user manager, session.slice, for session 7 of bob, type x11, service xrdp-sesman, no seat; vmhook stops no session off seat0 or closing: end it with loginctl terminate-session 7); vmhook stops only ${SHELL} of ana, ${PORTAL} of ana, display-manager.service with its graphical sessions`,
  );
  assert.equal(stops(kernel), [], "nothing was stopped, linger untouched");
  assert.equal(kernel.sim.snapshot(), before);
});

test("two single-GPU VMs that both stopped ana's session units (GDM started again by hand in between): the linger is theirs to share, and ends with the last release, not the first", async () => {
  const GPU_B = "0000:04:00.0";
  const UUID_B = "5d0f3f57-96c1-4d0e-8a52-6c1c2b7d9e02";
  const KWIN = "plasma-kwin_wayland.service";
  const vmA = XML.replace("<vmhook:vfio/>", '<vmhook:vfio single-gpu="yes"/>');
  const vmB = vmA.replace("win11", "games").replace(UUID, UUID_B).replace("bus='0x03'", "bus='0x04'");
  const kernel = gnomeDesktop().device({ address: GPU_B, classCode: "0x030000", vendor: "0x1002", nativeDriver: "amdgpu", group: 2, nodes: ["card1", "renderD129"] });
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", vmA, "win11")).code, 0);
  assert.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
  // While win11 runs, ana starts GDM again and logs in on the second card: her manager (the same one, kept by the linger) runs her new session.
  kernel.unit({ name: "display-manager.service", active: true, processes: { 501: ["gdm", ["/dev/null"]] } });
  kernel.userManager({
    uid: 1000,
    user: "ana",
    managerPid: 880,
    display: { id: 3, type: "wayland", seat: "seat0", service: "gdm-password" },
    units: [
      { name: KWIN, slice: "session.slice", active: true, processes: { 950: ["kwin_wayland", ["/dev/dri/card1"]] } },
      ...SESSION_UNITS.map((unit) => ({ ...unit, active: unit.name.startsWith("pipewire") || unit.name.startsWith("wireplumber") })),
    ],
  });
  const gamesPrepare = await runHookEvent(kernel.sim, "prepare", "begin", vmB, "games");
  assert.is(gamesPrepare.code, 0, gamesPrepare.stderr);
  assert.is(kernel.driverOf(GPU_B), "vfio-pci");

  const win11Release = await runHookEvent(kernel.sim, "release", "end", vmA, "win11");
  assert.is(win11Release.code, 0, win11Release.stderr);
  assert.not.ok(kernel.sim.execs.some((e) => e.command === "loginctl" && e.args[0] === "disable-linger"), "games still runs: ana keeps lingering");
  assert.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
  assert.ok(kernel.sim.exists("/etc/tmpfiles.d/vmhook-linger-ana.conf"), "a reboot while games runs still ends the linger");

  assert.is((await runHookEvent(kernel.sim, "release", "end", vmB, "games")).code, 0);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"), "the last release ends the linger");
  assert.not.ok(kernel.sim.exists("/etc/tmpfiles.d/vmhook-linger-ana.conf"));
  assert.equal(kernel.sim.stateFiles(), []);
});

test("vmhook recover ends the linger claimed by a VM whose journal is gone and that does not run, as its release would have", async () => {
  const kernel = gnomeDesktop();
  assert.is((await runHookEvent(kernel.sim, "prepare", "begin", XML, "win11")).code, 0);
  fs.rmSync(kernel.sim.resolve(paths.journal(UUID)));
  const { code, stdout } = await cli(["recover", "--root", kernel.sim.root], kernel.sim);
  assert.match(stdout, `claim linger:ana of ${UUID} (no journal of it is left, and it does not run): given back: end ana's linger (loginctl disable-linger ana) once no other VM needs it\n`);
  assert.not.ok(kernel.sim.exists("/var/lib/systemd/linger/ana"));
  assert.not.ok(kernel.sim.exists("/etc/tmpfiles.d/vmhook-linger-ana.conf"));
  assert.is(code, 0, stdout);
  assert.not.ok(kernel.sim.exists(paths.claims), "every claim is given back");
});

test("not single-GPU: a session unit holding the passed-through card is refused, the desktop left alone", async () => {
  const kernel = gnomeDesktop()
    .module({ name: "i915", driver: "i915", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, nodes: ["card1"] });
  const result = await runHookEvent(kernel.sim, "prepare", "begin", XML.replace("<vmhook:vfio/>", '<vmhook:vfio single-gpu="no"/>'), "win11");
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `pid 900 (gnome-shell) holds /dev/dri/card0 in ${SHELL} (a unit of ana's systemd user manager, session.slice)`);
  assert.equal(stops(kernel), []);
});

// Journals are root-owned, but their values become systemctl and loginctl arguments and cgroup paths: each is checked before its undo runs.
const GOOD_RECORD = { action: "stop-user-unit", uid: 1000, user: "ana", unit: SHELL, cgroup: `/user.slice/user-1000.slice/user@1000.service/session.slice/${SHELL}`, manager: "880:4242", timeoutMs: 20000 };
const BAD_RECORDS: [UndoRecord, string][] = [
  [{ ...GOOD_RECORD, user: "--help" }, 'names user "--help", which is not a login name'],
  [{ ...GOOD_RECORD, unit: "--now.service" }, 'names unit "--now.service", which is not a systemd unit name'],
  [{ ...GOOD_RECORD, cgroup: "/system.slice/sshd.service" }, "not a stop-user-unit record vmhook writes"],
  [{ ...GOOD_RECORD, cgroup: `/user.slice/user-1000.slice/user@1000.service/../../../system.slice/${SHELL}` }, "not a stop-user-unit record vmhook writes"],
  [{ ...GOOD_RECORD, via: "sshd.service" }, "not a stop-user-unit record vmhook writes"],
  [{ ...GOOD_RECORD, via: "--now.target" }, 'names unit "--now.target", which is not a systemd unit name'],
  [{ action: "linger-user", user: "../../etc/passwd" }, 'names user "../../etc/passwd", which is not a login name'],
];
for (const [record, message] of BAD_RECORDS) {
  test(`a journaled ${record.action} record ${JSON.stringify(record).slice(0, 90)} is refused before its undo runs, and kept`, async () => {
    const kernel = gnomeDesktop();
    const journal = newJournal(kernel.sim, { name: "win11", uuid: UUID });
    journal.entries.push({ plugin: "vfio", event: "prepare", description: "a change", undo: record, state: "applied", at: new Date().toISOString() });
    writeJournal(kernel.sim, journal);
    const outcome = await runHookEvent(kernel.sim, "release", "end", XML, "win11");
    assert.match(outcome.stderr, message);
    assert.equal(stops(kernel), [], "nothing ran");
    assert.is(readJournal(kernel.sim, UUID)!.entries[0]!.state, "undo-failed");
  });
}

test.run();
