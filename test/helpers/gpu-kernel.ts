// A simulated kernel for GPU handover on a SimHost: PCI devices with IOMMU
// groups, driver binding (driver_override, unbind, drivers_probe, bind),
// device reset (reset, reset_method), removal and bus rescan,
// loadable modules with holders (modprobe, rmmod), vtconsoles, firmware
// framebuffers, /proc fds, and systemd units (systemctl) whose processes hold
// the GPU. Behaves as the real sysfs files do for what the vfio plugin uses.
import { registerMdevParent, simulateMdevKernel, unregisterMdevParent, type SimType } from "./mdev-kernel.ts";
import { SimHost } from "./simhost.ts";

export interface SimPciDevice {
  address: string;
  classCode: string;
  vendor: string;
  /** Default 0x1234. */
  deviceId?: string;
  /** The driver that claims it on a probe (without driver_override). */
  nativeDriver?: string;
  /** Other drivers whose id tables match it too (radeon beside amdgpu): a probe without driver_override offers it to each, in the order they registered. */
  alsoMatches?: string[];
  /** Bound now (default: nativeDriver when its module is loaded). */
  bound?: boolean;
  group: number;
  bootVga?: boolean;
  /** DRM and fbdev nodes its driver creates: ["card0", "renderD128", "fb0"]. */
  nodes?: string[];
  /** reset_method as the kernel lists it ("flr bus"); undefined: no reset method (no reset or reset_method file). */
  resetMethod?: string;
  /** An SR-IOV virtual function: its physical function's address (the physfn link; the PF gets a virtfnN link). */
  physfn?: string;
  /** power/control now (default "on", as the kernel enumerates a device): "auto" lets runtime PM suspend it. */
  powerControl?: "on" | "auto";
  /** Its native driver's probe allows runtime PM (pm_runtime_allow: amdgpu, nouveau, snd_hda_intel), setting power/control to auto. */
  driverAllowsRuntimePm?: boolean;
  /** false: vendor-reset's device table does not list it, so even while vendor_reset is loaded the kernel offers it no device_specific reset. */
  vendorResetListed?: boolean;
  /** The mdev types its native driver offers while bound (i915 with GVT-g): that driver makes it an mdev parent in its probe and takes that back, with every mdev on it, in its remove(). */
  mdevTypes?: SimType[];
}

export interface SimModule {
  name: string;
  /** Modules this one uses (they list it as a holder). */
  uses?: string[];
  /** The PCI driver it registers. */
  driver?: string;
  /** Soft dependencies modprobe loads after it ("softdep post:", e.g. vfio → vfio_iommu_type1). */
  post?: string[];
  loaded?: boolean;
  /** A VFIO driver's ids (its "alias vfio_pci:…" lines in modules.alias): "v00008086d0000E20Bsv*sd*bc*sc*i*". */
  vfioAliases?: string[];
}

export interface SimUnit {
  name: string;
  active: boolean;
  /** What systemctl is-active prints while active (default "active"), e.g. "activating" for a unit in auto-restart. */
  state?: string;
  /** Processes of the unit: pid → [comm, files held]. */
  processes?: Record<number, [string, string[]]>;
  /** Stopping it fails with this message. */
  failStop?: string;
  /** Inactive, with a start job waiting (at boot, for the units it is After=): `systemctl show --property=Job` names the job; a stop cancels it. */
  startQueued?: boolean;
}

/** A unit of a user's systemd manager (user@UID.service), in one of its slices; a target has no cgroup (its slice is ignored). */
export interface SimUserUnit {
  name: string;
  slice: string;
  active: boolean;
  processes?: Record<number, [string, string[]]>;
  /** Starting it fails with this message. */
  failStart?: string;
  /** RefuseManualStart=, RefuseManualStop=: systemd refuses such a systemctl start/stop (GNOME's shell and session targets). */
  refuseManualStart?: boolean;
  refuseManualStop?: boolean;
  /** PartOf=: stopping one of these targets stops this unit too. */
  partOf?: string[];
}

/** A logind session as its record says: no `seat` is a session on no seat (ssh, xrdp, VNC); `service`: the PAM service that opened it. */
export interface SimSession {
  type: string;
  seat?: string;
  service?: string;
  /** Default "user"; "greeter" for a display manager's login screen. */
  class?: string;
  /** Default "active"; "closing" once its leader is gone and processes are left in its scope. */
  state?: string;
  /** The process that opened it with PAM (LEADER=), in its scope, and that process's parent (a display manager's session worker is its child). */
  leader?: { pid: number; comm: string; parent: number };
}

/** logind's record of a session (/run/systemd/sessions/ID), with the fields vmhook reads. */
function sessionRecord(session: SimSession, uid: number, user: string): string {
  const optional = [session.seat && `SEAT=${session.seat}`, session.service && `SERVICE=${session.service}`, session.leader && `LEADER=${session.leader.pid}`].filter(Boolean).map((line) => `${line}\n`);
  return `UID=${uid}\nUSER=${user}\nACTIVE=1\nSTATE=${session.state ?? "active"}\nTYPE=${session.type}\nCLASS=${session.class ?? "user"}\n${optional.join("")}`;
}

/** A user's systemd manager and logind's record of the user; `display`: the user's graphical session. */
export interface SimUserManager {
  uid: number;
  user: string;
  managerPid: number;
  display?: SimSession & { id: number };
  units: SimUserUnit[];
  /** systemctl show fails with this message (a manager that does not answer). */
  failShow?: string;
  /** The system unit whose stop ends `display` and the units of this manager (GDM's greeter, whose gnome-session runs in its user's manager). */
  endsWith?: string;
}

/**
 * How systemd mounted the cgroups: cgroup v2 alone at /sys/fs/cgroup
 * (unified, systemd 247+'s default); v2 at /sys/fs/cgroup/unified beside the
 * v1 controllers (hybrid: Debian 10, Ubuntu 20.04, systemd.unified_cgroup_hierarchy=0);
 * v1 alone, units in its name=systemd hierarchy (legacy: RHEL 8).
 */
export type CgroupLayout = "unified" | "hybrid" | "legacy";
/** Where systemd keeps its units' cgroups in each layout. */
export const CGROUP_MOUNTS: Record<CgroupLayout, string> = { unified: "/sys/fs/cgroup", hybrid: "/sys/fs/cgroup/unified", legacy: "/sys/fs/cgroup/systemd" };

const DEV = "/sys/bus/pci/devices";
const RELEASE = "6.1.0-sim";
const FBIOGET_CON2FBMAP = 0x460f;
const FBIOPUT_CON2FBMAP = 0x4610;
const DRIVERS = "/sys/bus/pci/drivers";

/** The device's modalias as the kernel writes it (pci:v00001002d0000744Csv…sd…bc03sc00i00): ids and class in upper-case hex. */
function modalias(spec: SimPciDevice): string {
  const id = (value: string) => value.replace(/^0x/, "").toUpperCase().padStart(8, "0");
  const cls = spec.classCode.replace(/^0x/, "").toUpperCase().padStart(6, "0");
  return `pci:v${id(spec.vendor)}d${id(spec.deviceId ?? "0x1234")}sv00000000sd00000000bc${cls.slice(0, 2)}sc${cls.slice(2, 4)}i${cls.slice(4, 6)}`;
}

export class GpuKernel {
  readonly sim = new SimHost();
  readonly devices = new Map<string, SimPciDevice>();
  readonly modules = new Map<string, SimModule>();
  readonly units = new Map<string, SimUnit>();
  /** Users' systemd managers by user name. */
  readonly userManagers = new Map<string, SimUserManager>();
  /** Devices that never bind to this driver again (a GPU that does not reset). */
  readonly stuck = new Set<string>();
  /** modprobe of these fails. */
  readonly brokenModules = new Set<string>();
  /** rmmod of these fails: something the plugin cannot see uses them. */
  readonly pinnedModules = new Set<string>();
  /** Its driver's probe fails until the device is reset (a GPU left in a bad state that its reset clears). */
  readonly refuseUntilReset = new Set<string>();
  /** Its driver's probe fails until the device is enumerated again (config space the kernel no longer matches). */
  readonly refuseUntilRescan = new Set<string>();
  /** Devices removed from the bus (echo 1 > remove): a rescan brings them back. */
  readonly removed = new Set<string>();
  /** vfio-pci's probe fails for these devices. */
  readonly refuseVfio = new Set<string>();
  /** vfio-pci's dynamic ids ("1234:1111"), from its ids= option as it loaded (vfio_pci_fill_ids): it claims such devices on a probe, as their own driver does. */
  readonly vfioIds = new Set<string>();
  /** The registered PCI drivers in the order they registered: a probe without driver_override offers the device to each in turn (bus_for_each_drv). */
  private readonly driverOrder: string[] = [];
  /** The framebuffer fbcon shows every console on (FBIOGET_CON2FBMAP), -1 for none: the first one registered, as fbcon takes over. */
  private consoleFramebuffer = -1;
  /** Firmware framebuffer platform device → the fbdev node it registers while bound. */
  private readonly platformNodes = new Map<string, string>();
  /** Each firmware framebuffer's directory under /sys/devices. */
  private readonly platformDirs = new Map<string, string>();
  /** try_module_get() users that are no module (another VM's QEMU holding a vfio container): module → count. */
  private readonly gets = new Map<string, number>();
  /** The cgroup layout systemd mounted (see the constructor). */
  readonly cgroups: CgroupLayout;
  /** Where systemd keeps its units' cgroups in that layout. */
  private readonly unitsMount: string;

  /**
   * `builtinConsole: false`: the only other console driver is modular (the
   * guest of test/kernel lists "(M) dummy device"), so the kernel's vtconsole
   * bind is a no-op and fbcon comes back only through a framebuffer: one that
   * registers, or one mapped to a console (FBIOPUT_CON2FBMAP).
   */
  constructor(options: { systemd?: boolean; builtinConsole?: boolean; cgroups?: CgroupLayout } = {}) {
    const sim = this.sim;
    this.cgroups = options.cgroups ?? "unified";
    this.unitsMount = CGROUP_MOUNTS[this.cgroups];
    if (this.cgroups === "unified") sim.file("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory pids");
    if (this.cgroups === "hybrid") sim.file("/sys/fs/cgroup/unified/cgroup.controllers", "");
    // name=systemd, the v1 hierarchy systemd keeps beside the controllers' in both (hybrid: for compatibility only)
    if (this.cgroups !== "unified") sim.file("/sys/fs/cgroup/systemd/cgroup.procs", "1").file("/sys/fs/cgroup/cpu,cpuacct/cgroup.procs", "1");
    // PID 1 in its init.scope, in each hierarchy systemd keeps its units in
    for (const layout of this.cgroups === "hybrid" ? (["hybrid", "legacy"] as const) : [this.cgroups]) sim.file(`${CGROUP_MOUNTS[layout]}/init.scope/cgroup.procs`, "1");
    const builtinConsole = options.builtinConsole ?? true;
    sim.dir("/var/log").dir("/run/vmhook").dir("/proc").dir("/dev/vfio").dir(DRIVERS).file("/proc/modules", "").file("/proc/sys/kernel/osrelease", RELEASE);
    if (options.systemd ?? true) sim.dir("/run/systemd/system");
    this.module({ name: "vfio", post: ["vfio_iommu_type1"] }).module({ name: "vfio_iommu_type1", uses: ["vfio"] }).module({ name: "vfio_pci_core", uses: ["vfio"] }).module({ name: "vfio_pci", uses: ["vfio_pci_core"], driver: "vfio-pci" });
    sim.file("/sys/bus/pci/drivers_probe");
    sim.onWrite("/sys/bus/pci/drivers_probe", (address) => this.probe(address));
    sim.onWrite(/^\/sys\/bus\/pci\/devices\/[^/]+\/driver_override$/, (value, file) => {
      // A device removed from the bus has no sysfs directory left to write into.
      if (!sim.exists(file)) throw Object.assign(new Error(`ENOENT: no such file ${file}`), { code: "ENOENT" });
      sim.file(file, value === "" ? "(null)" : value);
    });
    sim.onWrite(/^\/sys\/bus\/pci\/devices\/[^/]+\/driver\/unbind$/, (address) => this.unbind(address));
    sim.onWrite(/^\/sys\/bus\/pci\/drivers\/[^/]+\/unbind$/, (address, file) => {
      if (this.driverOf(address) !== file.split("/")[5]) throw Object.assign(new Error("ENODEV"), { code: "ENODEV" });
      this.unbind(address);
    });
    sim.onWrite(/^\/sys\/bus\/pci\/drivers\/[^/]+\/bind$/, (address, file) => this.bind(address, file.split("/")[5]!));
    sim.file("/sys/bus/pci/rescan");
    sim.onWrite("/sys/bus/pci/rescan", () => this.rescan());
    sim.onWrite(/^\/sys\/class\/pci_bus\/[^/]+\/rescan$/, (_value, file) => this.rescan(file.split("/")[4]));
    sim.onWrite(/^\/sys\/bus\/pci\/devices\/[^/]+\/remove$/, (_value, file) => this.removeDevice(file.split("/")[5]!));
    sim.onWrite(/^\/sys\/bus\/pci\/devices\/[^/]+\/reset$/, (_value, file) => this.reset(file.split("/")[5]!));
    // control_store(): "on" or "auto", a trailing newline allowed; anything else EINVAL.
    sim.onWrite(/^\/sys\/bus\/pci\/devices\/[^/]+\/power\/control$/, (value, file) => {
      if (!["on", "auto"].includes(value.replace(/\n$/, ""))) throw Object.assign(new Error("EINVAL"), { code: "EINVAL" });
      this.sim.file(file, value.replace(/\n$/, ""));
    });
    sim.onWrite(/^\/sys\/bus\/pci\/devices\/[^/]+\/reset_method$/, (value, file) => this.setResetMethod(file.split("/")[5]!, value, file));
    sim.onWrite(/^\/sys\/class\/vtconsole\/[^/]+\/bind$/, (value, file) => {
      if (value === "0" || builtinConsole) sim.file(file, value);
      // fbcon let go of every console (fbcon_exit): none maps to a framebuffer any more.
      if (value === "0" && /frame buffer/.test(sim.readTrimmed(file.replace(/bind$/, "name")) ?? "")) this.consoleFramebuffer = -1;
    });
    sim.onIoctl(/^\/dev\/fb\d+$/, (request, argument) => {
      const map = new Int32Array(argument.buffer, argument.byteOffset, 2);
      const [console, framebuffer] = map;
      if (request === FBIOGET_CON2FBMAP && console! >= 1 && console! <= 63) return void (map[1] = this.consoleFramebuffer);
      if (request !== FBIOPUT_CON2FBMAP || console! < 1 || !sim.exists(`/sys/class/graphics/fb${framebuffer}`)) throw Object.assign(new Error("EINVAL"), { code: "EINVAL" });
      this.consoleFramebuffer = framebuffer!;
      this.framebufferConsoleTakesOver(framebuffer!);
    });
    sim.onWrite(/^\/sys\/bus\/platform\/drivers\/[^/]+\/(un)?bind$/, (device, file) => {
      const driverDir = file.slice(0, file.lastIndexOf("/"));
      if (file.endsWith("/unbind")) {
        sim.remove(`${driverDir}/${device}`);
        this.unregisterPlatformNode(device);
      } else {
        sim.link(`${driverDir}/${device}`, `../../../../devices/${this.platformDirs.get(device) ?? `platform/${device}`}`);
        this.registerPlatformNode(device);
      }
    });
    sim.onExec("modprobe", ([name, ...params]) => {
      const module = name!.replace(/-/g, "_");
      if (this.brokenModules.has(module) || !this.modules.has(module)) return { status: 1, stderr: `modprobe: FATAL: Module ${name} not found in directory /lib/modules/${RELEASE}` };
      this.load(module, params);
    });
    // kmod's rmmod: each name in order; one that fails is reported and the rest still go.
    sim.onExec("rmmod", (names) => {
      const errors: string[] = [];
      for (const name of names) {
        const module = this.modules.get(name);
        if (!module?.loaded) errors.push(`rmmod: ERROR: Module ${name} is not currently loaded`);
        else if (this.refcnt(name) > 0 || this.busy(module) || this.pinnedModules.has(name)) errors.push(`rmmod: ERROR: Module ${name} is in use`);
        else this.unload(module);
      }
      return errors.length > 0 ? { status: 1, stderr: errors.join("\n") } : undefined;
    });
    sim.onExec("systemctl", (args) => (args[0] === "--user" ? this.userSystemctl(args) : this.systemctl(args)));
    sim.onExec("loginctl", ([verb, user]) => {
      if (verb === "enable-linger") this.sim.file(`/var/lib/systemd/linger/${user}`, "");
      else if (verb === "disable-linger") this.sim.remove(`/var/lib/systemd/linger/${user}`);
      else return { status: 1, stderr: `unknown verb ${verb}` };
    });
    // modinfo -n NAME: found when the module is in the tree (loaded or not).
    sim.onExec("modinfo", (args) => (this.modules.has(args[args.length - 1]!.replace(/-/g, "_")) ? { stdout: `/lib/modules/${RELEASE}/extra/module.ko\n` } : { status: 1, stderr: `modinfo: ERROR: Module ${args[args.length - 1]} not found.` }));
  }

  // ---- building the host ----

  module(spec: SimModule): this {
    this.modules.set(spec.name, { ...spec });
    this.writeModuleTree();
    if (spec.loaded) this.load(spec.name);
    return this;
  }

  /** modules.dep (every module with all it uses, as depmod writes it) and modules.softdep (the modules modprobe loads after one: `post`). */
  private writeModuleTree(): void {
    const file = (name: string) => `kernel/sim/${name.replace(/_/g, "-")}.ko`;
    const uses = (name: string): string[] => (this.modules.get(name)?.uses ?? []).flatMap((dep) => [dep, ...uses(dep)]);
    const modules = [...this.modules.values()];
    this.sim.file(`/lib/modules/${RELEASE}/modules.dep`, modules.map((m) => `${file(m.name)}: ${[...new Set(uses(m.name))].map(file).join(" ")}`.trimEnd()).join("\n"));
    this.sim.file(`/lib/modules/${RELEASE}/modules.softdep`, modules.filter((m) => m.post).map((m) => `softdep ${m.name} post: ${m.post!.join(" ")}`).join("\n"));
    // vfio-pci's own catch-all, which depmod writes for every kernel since 5.16, then the variants' ids.
    const vfioAliases = [["v*d*sv*sd*bc*sc*i*", "vfio_pci"], ...modules.flatMap((m) => (m.vfioAliases ?? []).map((pattern) => [pattern, m.name]))];
    this.sim.file(`/lib/modules/${RELEASE}/modules.alias`, vfioAliases.map(([pattern, name]) => `alias vfio_pci:${pattern} ${name}`).join("\n"));
  }

  device(spec: SimPciDevice): this {
    const dir = `${DEV}/${spec.address}`;
    this.devices.set(spec.address, spec);
    this.sim
      .file(`${dir}/class`, spec.classCode)
      .file(`${dir}/vendor`, spec.vendor)
      .file(`${dir}/device`, spec.deviceId ?? "0x1234")
      .file(`${dir}/boot_vga`, spec.bootVga ? 1 : 0)
      .file(`${dir}/driver_override`, "(null)")
      .file(`${dir}/modalias`, modalias(spec))
      .file(`${dir}/power/control`, spec.powerControl ?? "on")
      .file(`${dir}/remove`)
      .file(`/sys/class/pci_bus/${spec.address.slice(0, 7)}/rescan`)
      .link(`${dir}/iommu_group`, `../../../kernel/iommu_groups/${spec.group}`)
      .link(`/sys/kernel/iommu_groups/${spec.group}/devices/${spec.address}`, `../../../../bus/pci/devices/${spec.address}`);
    if (spec.resetMethod) this.sim.file(`${dir}/reset_method`, spec.resetMethod).file(`${dir}/reset`);
    if (spec.physfn) {
      const index = [...this.devices.values()].filter((other) => other.physfn === spec.physfn).indexOf(spec);
      this.sim.link(`${dir}/physfn`, `../${spec.physfn}`).link(`${DEV}/${spec.physfn}/virtfn${index}`, `../${spec.address}`);
    }
    if (spec.mdevTypes && !this.sim.exists("/sys/bus/mdev/devices")) simulateMdevKernel(this.sim);
    if (spec.nativeDriver && (spec.bound ?? true) && this.sim.exists(`${DRIVERS}/${spec.nativeDriver}`)) this.bind(spec.address, spec.nativeDriver);
    return this;
  }

  vtconsole(name: string, description: string, bound: boolean): this {
    this.sim.file(`/sys/class/vtconsole/${name}/name`, description).file(`/sys/class/vtconsole/${name}/bind`, bound ? 1 : 0);
    return this;
  }

  /**
   * A firmware framebuffer's platform device, bound; `node` ("fb0"): the
   * fbdev it registers while bound (fbcon takes it, as any). `gpu`: the PCI
   * device Linux >= 6.9 found it on, its sysfs parent (sysfb_parent_dev).
   */
  platformFramebuffer(driver: string, device: string, node?: string, gpu?: string): this {
    const dir = gpu ? `pci0000:00/${gpu}/${device}` : `platform/${device}`;
    this.platformDirs.set(device, dir);
    this.sim
      .file(`/sys/bus/platform/drivers/${driver}/bind`)
      .file(`/sys/bus/platform/drivers/${driver}/unbind`)
      .dir(`/sys/devices/${dir}`)
      .link(`/sys/bus/platform/devices/${device}`, `../../../devices/${dir}`)
      .link(`/sys/bus/platform/drivers/${driver}/${device}`, `../../../../devices/${dir}`);
    if (node) this.platformNodes.set(device, node);
    this.registerPlatformNode(device);
    return this;
  }

  /** Its driver's probe registers the firmware framebuffer's fbdev. */
  private registerPlatformNode(device: string): void {
    const node = this.platformNodes.get(device);
    if (!node) return;
    const dir = this.platformDirs.get(device);
    this.sim.file(`/sys/devices/${dir}/graphics/${node}/dev`).file(`/dev/${node}`).link(`/sys/class/graphics/${node}`, `../../devices/${dir}/graphics/${node}`);
    this.framebufferConsoleTakesOver(Number(node.slice(2)));
  }

  /** Its driver's remove() unregisters it: fbcon lets go of a console shown on it. */
  private unregisterPlatformNode(device: string): void {
    const node = this.platformNodes.get(device);
    if (!node) return;
    this.sim.remove(`/sys/devices/${this.platformDirs.get(device)}/graphics`);
    this.sim.remove(`/dev/${node}`);
    this.sim.remove(`/sys/class/graphics/${node}`);
    if (node === `fb${this.consoleFramebuffer}`) this.consoleFramebuffer = -1;
  }

  /** A process with files open, in a cgroup v2 path ("/" by default). */
  process(pid: number, comm: string, files: string[], cgroup = "/"): this {
    const entries = { unified: `0::${cgroup}\n`, hybrid: `4:cpu,cpuacct:/\n1:name=systemd:${cgroup}\n0::${cgroup}\n`, legacy: `4:cpu,cpuacct:/\n1:name=systemd:${cgroup}\n` };
    this.sim.file(`/proc/${pid}/comm`, comm).file(`/proc/${pid}/cgroup`, entries[this.cgroups]).dir(`/proc/${pid}/fd`);
    files.forEach((file, fd) => this.sim.link(`/proc/${pid}/fd/${fd}`, file));
    return this;
  }

  unit(spec: SimUnit): this {
    this.units.set(spec.name, spec);
    const cgroup = `${this.unitsMount}/system.slice/${spec.name}/cgroup.procs`;
    this.sim.file(cgroup, Object.keys(spec.processes ?? {}).join("\n"));
    for (const [pid, [comm, files]] of Object.entries(spec.processes ?? {})) this.process(Number(pid), comm, files, `/system.slice/${spec.name}`);
    return this;
  }

  /** A logind session (its record in /run/systemd/sessions) with processes, and its leader, in its scope. */
  session(id: number | string, spec: SimSession & { user: string; uid: number; processes: Record<number, [string, string[]]> }): this {
    this.sessionUp(id, spec, spec.uid, spec.user);
    const scope = `/user.slice/user-${spec.uid}.slice/session-${id}.scope`;
    for (const [pid, [comm, files]] of Object.entries(spec.processes)) this.process(Number(pid), comm, files, scope);
    return this;
  }

  /** logind's record of the session, and its leader in its scope. */
  private sessionUp(id: number | string, session: SimSession, uid: number, user: string): void {
    this.sim.file(`/run/systemd/sessions/${id}`, sessionRecord(session, uid, user));
    if (!session.leader) return;
    const { pid, comm, parent } = session.leader;
    this.process(pid, comm, [], `/user.slice/user-${uid}.slice/session-${id}.scope`);
    this.sim.file(`/proc/${pid}/stat`, `${pid} (${comm}) S ${parent} ${pid} ${pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 4300 0 0`);
  }

  /** A user's systemd manager with its units, logind's record of the user and, with `display`, the user's graphical session. */
  userManager(spec: SimUserManager): this {
    this.userManagers.set(spec.user, spec);
    const manager = `/user.slice/user-${spec.uid}.slice/user@${spec.uid}.service`;
    this.process(spec.managerPid, "systemd", [], `${manager}/init.scope`);
    this.sim.file(`/proc/${spec.managerPid}/stat`, `${spec.managerPid} (systemd) S 1 ${spec.managerPid} ${spec.managerPid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0`);
    this.sim.file(`${this.unitsMount}${manager}/init.scope/cgroup.procs`, spec.managerPid);
    this.sim.file(`/run/systemd/users/${spec.uid}`, `NAME=${spec.user}\nSTATE=active\n${spec.display ? `DISPLAY=${spec.display.id}\n` : ""}`);
    if (spec.display) this.sessionUp(spec.display.id, spec.display, spec.uid, spec.user);
    for (const unit of spec.units) this.userUnitUp(spec, unit);
    return this;
  }

  /** The user's graphical session ends (as when its display manager stopped): logind's records say so. */
  endDisplaySession(user: string): this {
    const spec = this.userManagers.get(user)!;
    this.sim.remove(`/run/systemd/sessions/${spec.display!.id}`);
    this.sim.file(`/run/systemd/users/${spec.uid}`, `NAME=${spec.user}\nSTATE=lingering\n`);
    return this;
  }

  private userUnitCgroup(spec: SimUserManager, unit: SimUserUnit): string {
    return `/user.slice/user-${spec.uid}.slice/user@${spec.uid}.service/${unit.slice}/${unit.name}`;
  }

  private userUnitUp(spec: SimUserManager, unit: SimUserUnit): void {
    if (unit.name.endsWith(".target")) return;
    const cgroup = this.userUnitCgroup(spec, unit);
    const pids = unit.active ? Object.keys(unit.processes ?? {}) : [];
    this.sim.file(`${this.unitsMount}${cgroup}/cgroup.procs`, pids.join("\n"));
    if (unit.active) for (const [pid, [comm, files]] of Object.entries(unit.processes ?? {})) this.process(Number(pid), comm, files, cgroup);
  }

  // ---- what the host looks like ----

  driverOf(address: string): string | undefined {
    return this.sim.readlink(`${DEV}/${address}/driver`)?.split("/").pop();
  }

  loaded(name: string): boolean {
    return this.modules.get(name)?.loaded === true;
  }

  /** try_module_get(): a use that only /sys/module/NAME/refcnt shows. */
  hold(name: string): this {
    this.gets.set(name, (this.gets.get(name) ?? 0) + 1);
    this.writeProcModules();
    return this;
  }

  // ---- the kernel ----

  private holders(name: string): string[] {
    return [...this.modules.values()].filter((m) => m.loaded && m.uses?.includes(name)).map((m) => m.name);
  }

  /** A driver with bound devices whose files are open cannot go. */
  private busy(module: SimModule): boolean {
    if (!module.driver) return false;
    const nodes = [...this.devices.values()].filter((d) => this.driverOf(d.address) === module.driver).flatMap((d) => (d.nodes ?? []).map((n) => (n.startsWith("fb") ? `/dev/${n}` : `/dev/dri/${n}`)));
    const open = this.sim.list("/proc").flatMap((pid) => this.sim.list(`/proc/${pid}/fd`).map((fd) => this.sim.readlink(`/proc/${pid}/fd/${fd}`)));
    return open.some((file) => file !== undefined && (nodes.includes(file) || (module.name === "nvidia" && file.startsWith("/dev/nvidia"))));
  }

  /** Each module using it holds a reference too (ref_module), as the kernel counts. */
  private refcnt(name: string): number {
    return this.holders(name).length + (this.gets.get(name) ?? 0);
  }

  private writeProcModules(): void {
    const loaded = [...this.modules.values()].filter((m) => m.loaded);
    for (const m of loaded) this.sim.file(`/sys/module/${m.name}/refcnt`, this.refcnt(m.name));
    const lines = loaded.map((m) => `${m.name} 16384 ${this.refcnt(m.name)} ${this.holders(m.name).join(",") || "-"} Live 0x0`);
    this.sim.file("/proc/modules", lines.join("\n"));
  }

  private load(name: string, params: string[] = []): void {
    const module = this.modules.get(name)!;
    for (const dep of module.uses ?? []) if (!this.loaded(dep)) this.load(dep);
    module.loaded = true;
    if (name === "vfio_pci") for (const id of this.vfioIdsOption(params)) this.vfioIds.add(id);
    this.sim.dir(`/sys/module/${name}/holders`);
    for (const dep of module.uses ?? []) this.sim.link(`/sys/module/${dep}/holders/${name}`, `../../${name}`);
    if (module.driver) {
      this.sim.file(`${DRIVERS}/${module.driver}/bind`).file(`${DRIVERS}/${module.driver}/unbind`).link(`${DRIVERS}/${module.driver}/module`, `../../../../module/${name}`);
      this.sim.link(`/sys/module/${name}/drivers/pci:${module.driver}`, `../../../bus/pci/drivers/${module.driver}`);
      this.driverOrder.push(module.driver);
      // A new driver probes the unbound devices it matches (driver_override, when set, is the only match).
      for (const device of this.devices.values()) {
        const override = this.sim.readTrimmed(`${DEV}/${device.address}/driver_override`);
        const matches = override && override !== "(null)" ? override === module.driver : this.matches(device, module.driver);
        if (this.driverOf(device.address) === undefined && matches) this.probeWith(device.address, module.driver);
      }
    }
    this.writeProcModules();
    for (const soft of module.post ?? []) if (!this.loaded(soft)) this.load(soft);
  }

  private unload(module: SimModule): void {
    if (module.driver) {
      for (const device of this.devices.values()) if (this.driverOf(device.address) === module.driver) this.unbind(device.address);
      this.sim.remove(`${DRIVERS}/${module.driver}`);
      this.driverOrder.splice(this.driverOrder.indexOf(module.driver), 1);
      if (module.name === "vfio_pci") this.vfioIds.clear();
    }
    for (const dep of module.uses ?? []) this.sim.remove(`/sys/module/${dep}/holders/${module.name}`);
    this.sim.remove(`/sys/module/${module.name}`);
    module.loaded = false;
    this.writeProcModules();
  }

  private bind(address: string, driver: string): void {
    const device = this.devices.get(address)!;
    if (!this.sim.exists(`${DRIVERS}/${driver}`) || this.driverOf(address)) throw Object.assign(new Error("ENODEV"), { code: "ENODEV" });
    // pci_match_device(): a driver that driver_override names matches the device whatever its id table.
    const named = this.sim.readTrimmed(`${DEV}/${address}/driver_override`) === driver;
    if (!this.vfioDriver(driver) && (this.refuses(address) || !(named || this.matches(device, driver)))) throw Object.assign(new Error("ENODEV"), { code: "ENODEV" });
    this.sim.link(`${DEV}/${address}/driver`, `../../../bus/pci/drivers/${driver}`).link(`${DRIVERS}/${driver}/${address}`, `../../../../devices/${address}`);
    // vfio_pci_core_register_device() allows runtime PM (pm_runtime_allow), as a driver that manages it does in its probe.
    if (this.vfioDriver(driver) || device.driverAllowsRuntimePm) this.sim.file(`${DEV}/${address}/power/control`, "auto");
    // vfio-pci or a variant built on vfio_pci_core: the device is vfio's (its group node, and with the vfio cdev its vfio-dev/vfioN).
    if (this.vfioDriver(driver)) this.sim.file(`/dev/vfio/${device.group}`).dir(`${DEV}/${address}/vfio-dev/vfio${device.group}`);
    else {
      if (device.mdevTypes) registerMdevParent(this.sim, address, `${DEV}/${address}`, device.mdevTypes);
      for (const node of device.nodes ?? []) {
        if (node.startsWith("fb")) {
          this.sim.file(`${DEV}/${address}/graphics/${node}/dev`).file(`/dev/${node}`).link(`/sys/class/graphics/${node}`, `../../bus/pci/devices/${address}/graphics/${node}`);
          this.framebufferConsoleTakesOver(Number(node.slice(2)));
        } else this.sim.file(`${DEV}/${address}/drm/${node}/dev`).file(`/dev/dri/${node}`);
      }
    }
  }

  private unbind(address: string): void {
    const driver = this.driverOf(address);
    if (!driver) return;
    const device = this.devices.get(address)!;
    if (this.sim.exists(`/sys/class/mdev_bus/${address}`)) unregisterMdevParent(this.sim, address);
    this.sim.remove(`${DEV}/${address}/driver`);
    this.sim.remove(`${DRIVERS}/${driver}/${address}`);
    this.sim.remove(`${DEV}/${address}/drm`);
    this.sim.remove(`${DEV}/${address}/graphics`);
    for (const node of device.nodes ?? []) {
      this.sim.remove(node.startsWith("fb") ? `/dev/${node}` : `/dev/dri/${node}`);
      if (node.startsWith("fb")) this.sim.remove(`/sys/class/graphics/${node}`);
      if (node === `fb${this.consoleFramebuffer}`) this.consoleFramebuffer = -1;
    }
    // vfio_pci_core_unregister_device() forbids runtime PM (pm_runtime_forbid), whatever power/control said before vfio-pci.
    if (this.vfioDriver(driver)) this.sim.file(`${DEV}/${address}/power/control`, "on");
    this.sim.remove(`${DEV}/${address}/vfio-dev`);
    const groupStillUsed = [...this.devices.values()].some((d) => d.group === device.group && this.vfioDriver(this.driverOf(d.address)));
    if (this.vfioDriver(driver) && !groupStillUsed) this.sim.remove(`/dev/vfio/${device.group}`);
  }

  /** vfio-pci, or a variant of it (mlx5_vfio_pci, xe-vfio-pci): a driver whose module uses vfio_pci_core. */
  private vfioDriver(driver: string | undefined): boolean {
    return driver !== undefined && [...this.modules.values()].some((module) => module.driver === driver && (module.uses ?? []).includes("vfio_pci_core"));
  }

  /** fbcon binds every console again, as when a framebuffer registers; the consoles show on the first framebuffer it took. */
  private framebufferConsoleTakesOver(framebuffer: number): void {
    if (this.consoleFramebuffer === -1) this.consoleFramebuffer = framebuffer;
    for (const vtconsole of this.sim.list("/sys/class/vtconsole")) {
      if (/frame buffer/.test(this.sim.readTrimmed(`/sys/class/vtconsole/${vtconsole}/name`) ?? "")) this.sim.file(`/sys/class/vtconsole/${vtconsole}/bind`, 1);
    }
  }

  /** Whether the device's own driver's probe fails now. */
  private refuses(address: string): boolean {
    return this.stuck.has(address) || this.refuseUntilReset.has(address) || this.refuseUntilRescan.has(address);
  }

  /** pci_reset_function: the first method of reset_method; ENOTTY when none, or when it is device_specific and vendor-reset (which supplies it) is not loaded. */
  private reset(address: string): void {
    const first = this.sim.readTrimmed(`${DEV}/${address}/reset_method`)?.split(" ")[0];
    if (!first || (first === "device_specific" && !this.loaded("vendor_reset"))) throw Object.assign(new Error("ENOTTY"), { code: "ENOTTY" });
    this.refuseUntilReset.delete(address);
  }

  /** device_specific is accepted only while vendor-reset is loaded and lists the card (it supplies that reset); "default" puts back what the device supports. */
  private setResetMethod(address: string, value: string, file: string): void {
    const device = this.devices.get(address)!;
    const supported = device.resetMethod ?? "";
    if (value === "default") return void this.sim.file(file, supported);
    const wanted = value.split(/\s+/).filter(Boolean);
    const offered = (method: string) => (method === "device_specific" ? this.loaded("vendor_reset") && device.vendorResetListed !== false : supported.split(" ").includes(method));
    if (!wanted.every(offered)) throw Object.assign(new Error("EINVAL"), { code: "EINVAL" });
    this.sim.file(file, wanted.join(" "));
  }

  /** pci_stop_and_remove_bus_device: unbound, gone from sysfs and its IOMMU group. */
  private removeDevice(address: string): void {
    const spec = this.devices.get(address)!;
    this.unbind(address);
    this.sim.remove(`${DEV}/${address}`);
    this.sim.remove(`/sys/kernel/iommu_groups/${spec.group}/devices/${address}`);
    this.removed.add(address);
  }

  /**
   * Enumerates removed devices afresh (driver_override, reset_method and power/control as the kernel sets them) and probes them: those of one bus ("0000:03"), or all.
   * A virtual function is not found by a scan (only its PF's driver creates it, through sriov_numvfs): it stays gone.
   */
  private rescan(bus?: string): void {
    for (const address of [...this.removed].filter((removed) => (bus === undefined || removed.startsWith(`${bus}:`)) && !this.devices.get(removed)!.physfn)) {
      this.removed.delete(address);
      this.refuseUntilRescan.delete(address);
      this.device({ ...this.devices.get(address)!, bound: false, powerControl: undefined });
      this.probe(address);
    }
  }

  /** Whether a driver's id table matches the device: its native driver's, those it also matches, or vfio-pci's dynamic ids. */
  private matches(device: SimPciDevice, driver: string): boolean {
    const id = `${device.vendor.replace(/^0x/, "")}:${(device.deviceId ?? "0x1234").replace(/^0x/, "")}`.toLowerCase();
    return device.nativeDriver === driver || (device.alsoMatches ?? []).includes(driver) || (driver === "vfio-pci" && this.vfioIds.has(id));
  }

  /**
   * vfio-pci's ids= as the kernel gets it: the kernel command line's
   * vfio-pci.ids=, then options lines of /etc/modprobe.d, then modprobe's own
   * arguments; the last one wins (an empty one sets none).
   */
  private vfioIdsOption(params: string[]): string[] {
    const cmdline = (this.sim.readTrimmed("/proc/cmdline") ?? "").split(/\s+/).filter((word) => /^vfio[-_]pci\.ids=/.test(word)).map((word) => word.slice(word.indexOf(".") + 1));
    const options = this.sim.list("/etc/modprobe.d").flatMap((name) => (this.sim.readTrimmed(`/etc/modprobe.d/${name}`) ?? "").split("\n")).flatMap((line) => (/^options\s+vfio[-_]pci\s/.test(line) ? line.trim().split(/\s+/).slice(2) : []));
    const ids = [...cmdline, ...options, ...params].filter((param) => param.startsWith("ids=")).pop();
    return (ids?.slice("ids=".length) ?? "").split(",").filter(Boolean).map((id) => id.toLowerCase());
  }

  /** drivers_probe: driver_override wins, else each registered driver whose ids match, in the order they registered, until one takes it. */
  private probe(address: string): void {
    if (this.driverOf(address)) return;
    const override = this.sim.readTrimmed(`${DEV}/${address}/driver_override`);
    const device = this.devices.get(address)!;
    const drivers = override && override !== "(null)" ? [override] : this.driverOrder.filter((each) => this.matches(device, each));
    for (const driver of drivers) if (!this.driverOf(address)) this.probeWith(address, driver);
  }

  /** One driver's probe of the device: nothing when that driver is not registered or refuses it. */
  private probeWith(address: string, driver: string): void {
    if (!this.sim.exists(`${DRIVERS}/${driver}`)) return;
    if (!this.vfioDriver(driver) && this.refuses(address)) return;
    if (driver === "vfio-pci" && this.refuseVfio.has(address)) return;
    this.bind(address, driver);
  }

  /** systemctl --user --machine=USER@.host VERB UNIT: the user's manager, when it runs (its init.scope has a process). */
  private userSystemctl(args: string[]): { status: number; stdout?: string; stderr?: string } {
    const user = /^--machine=(.+)@\.host$/.exec(args[1] ?? "")?.[1];
    const spec = user ? this.userManagers.get(user) : undefined;
    if (!spec || !this.sim.readTrimmed(`${this.unitsMount}/user.slice/user-${spec.uid}.slice/user@${spec.uid}.service/init.scope/cgroup.procs`)) {
      return { status: 1, stderr: "Failed to connect to bus: No such file or directory" };
    }
    const verb = args[2];
    const names = args.slice(3).filter((arg) => !arg.startsWith("-"));
    if (verb === "show" && spec.failShow) return { status: 1, stderr: spec.failShow };
    if (verb === "show") return { status: 0, stdout: names.map((name) => this.userUnitProperties(spec, name)).join("\n") };
    const unit = spec.units.find((candidate) => candidate.name === names[0]);
    if (!unit) return { status: 5, stderr: `Unit ${names[0]} not loaded.` };
    if ((verb === "stop" && unit.refuseManualStop) || (verb === "start" && unit.refuseManualStart)) {
      // As systemd's bus_unit_queue_job(), whatever the unit's state.
      return { status: 1, stderr: `Failed to ${verb} ${unit.name}: Operation refused, unit ${unit.name} may be requested by dependency only (it is configured to refuse manual start/stop).` };
    }
    if (verb === "stop") this.userUnitDown(spec, unit);
    else if (verb === "start") {
      if (unit.failStart) return { status: 1, stderr: unit.failStart };
      unit.active = true;
      this.userUnitUp(spec, unit);
    } else return { status: 1, stderr: `unknown verb ${verb}` };
    return { status: 0 };
  }

  /** A unit stops, and with it every unit PartOf= it (as systemd propagates the stop). */
  private userUnitDown(spec: SimUserManager, unit: SimUserUnit): void {
    for (const pid of Object.keys(unit.processes ?? {})) this.sim.remove(`/proc/${pid}`);
    unit.active = false;
    this.userUnitUp(spec, unit);
    for (const part of spec.units.filter((candidate) => candidate.active && candidate.partOf?.includes(unit.name))) this.userUnitDown(spec, part);
  }

  /** systemctl show -p Id,RefuseManualStart,RefuseManualStop,PartOf of one unit (a unit it does not know refuses nothing). */
  private userUnitProperties(spec: SimUserManager, name: string): string {
    const unit = spec.units.find((candidate) => candidate.name === name);
    const yesNo = (value: boolean | undefined) => (value ? "yes" : "no");
    return `Id=${name}\nRefuseManualStart=${yesNo(unit?.refuseManualStart)}\nRefuseManualStop=${yesNo(unit?.refuseManualStop)}\nPartOf=${(unit?.partOf ?? []).join(" ")}\n`;
  }

  private systemctl(args: string[]): { status: number; stdout?: string; stderr?: string } {
    const [verb, ...rest] = args;
    const name = rest[rest.length - 1]!;
    const unit = this.units.get(name);
    switch (verb) {
      case "is-active":
        // As systemctl: exit 0 only for "active" (and reloading); 3 for every other state; 4 for a unit it does not know.
        if (!unit) return { status: 4, stdout: "inactive\n" };
        if (!unit.active) return { status: 3, stdout: "inactive\n" };
        return { status: (unit.state ?? "active") === "active" ? 0 : 3, stdout: `${unit.state ?? "active"}\n` };
      case "show":
        if (rest.includes("--property=Job")) return { status: 0, stdout: unit?.startQueued ? "105\n" : "\n" };
        return { status: 0, stdout: unit ? `/system.slice/${name}\n` : "\n" };
      case "stop":
        if (unit?.failStop) return { status: 1, stderr: unit.failStop };
        if (unit) {
          unit.active = false;
          unit.startQueued = false;
          for (const pid of Object.keys(unit.processes ?? {})) this.sim.remove(`/proc/${pid}`);
          this.sim.file(`${this.unitsMount}/system.slice/${name}/cgroup.procs`, "");
          for (const manager of [...this.userManagers.values()].filter((candidate) => candidate.endsWith === name)) {
            for (const ended of manager.units.filter((candidate) => candidate.active)) this.userUnitDown(manager, ended);
            this.endDisplaySession(manager.user);
          }
        }
        return { status: 0 };
      case "start":
        if (unit) {
          unit.active = true;
          this.unit(unit);
        }
        return { status: 0 };
      default:
        return { status: 1, stderr: `unknown verb ${verb}` };
    }
  }
}

/**
 * A desktop with one NVIDIA card (GPU 0000:01:00.0 + HDMI audio 0000:01:00.1
 * behind a root port), GDM on it, efifb and fbcon. `displayManager`: GDM's
 * unit as systemd knows it (display-manager.service, the alias that enabling
 * it makes; gdm.service when started without being enabled). `cgroups`: how
 * systemd mounted them.
 */
export function nvidiaDesktop(displayManager = "display-manager.service", cgroups: CgroupLayout = "unified"): GpuKernel {
  return new GpuKernel({ cgroups })
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .module({ name: "nvidia_modeset", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_uvm", uses: ["nvidia"], loaded: true })
    .module({ name: "nvidia_drm", uses: ["nvidia_modeset"], loaded: true })
    .module({ name: "snd_hda_intel", driver: "snd_hda_intel", loaded: true })
    .device({ address: "0000:00:00.0", classCode: "0x060000", vendor: "0x8086", group: 0 })
    .device({ address: "0000:00:01.0", classCode: "0x060400", vendor: "0x8086", group: 1 })
    .device({ address: "0000:01:00.0", classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, bootVga: true, nodes: ["card0", "renderD128"], resetMethod: "bus" })
    .device({ address: "0000:01:00.1", classCode: "0x040300", vendor: "0x10de", nativeDriver: "snd_hda_intel", group: 1 })
    .vtconsole("vtcon0", "(S) dummy device", false)
    .vtconsole("vtcon1", "(M) frame buffer device", true)
    .platformFramebuffer("efi-framebuffer", "efi-framebuffer.0")
    .unit({ name: displayManager, active: true, processes: { 500: ["Xorg", ["/dev/nvidia0", "/dev/nvidiactl", "/dev/dri/card0"]], 501: ["gdm", ["/dev/null"]] } })
    .unit({ name: "nvidia-persistenced.service", active: true, processes: { 600: ["nvidia-persiste", ["/dev/nvidiactl"]] } })
    .process(1, "systemd", ["/dev/null"]);
}

/** The two NVIDIA cards of twoNvidiaCards(), one for each VM. */
/** A host without systemd (OpenRC) whose display manager's process `comm` (pid 900) holds the only GPU, 0000:01:00.0 on bochs-drm. */
export function withoutSystemd(comm: string): GpuKernel {
  return new GpuKernel({ systemd: false })
    .module({ name: "bochs", driver: "bochs-drm", loaded: true })
    .device({ address: "0000:01:00.0", classCode: "0x030000", vendor: "0x1234", nativeDriver: "bochs-drm", group: 1, bootVga: true, nodes: ["card0", "fb0"] })
    .vtconsole("vtcon0", "(M) frame buffer device", true)
    .process(900, comm, ["/dev/dri/card0"]);
}

/** vfio's displayManagerCommand set to `rc-service sddm stop|start` (processes: sddm), which end and start withoutSystemd("sddm")'s pid 900. */
export function rcServiceSddm(kernel: GpuKernel): void {
  kernel.sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ plugins: { vfio: { displayManagerCommand: { stop: ["rc-service", "sddm", "stop"], start: ["rc-service", "sddm", "start"], processes: ["sddm"] } } } }));
  kernel.sim.onExec("rc-service", ([, verb]) => {
    if (verb === "stop") kernel.sim.remove("/proc/900");
    else kernel.process(900, "sddm", ["/dev/dri/card0"]);
  });
}

export const NVIDIA_CARDS = ["0000:01:00.0", "0000:02:00.0"] as const;

/**
 * An Intel iGPU shows the host's display; two NVIDIA cards (NVIDIA_CARDS) in
 * their own IOMMU groups, one for each VM; nvidia-persistenced holds both
 * (/dev/nvidia0, /dev/nvidia1).
 */
export function twoNvidiaCards(): GpuKernel {
  const [first, second] = NVIDIA_CARDS;
  const kernel = new GpuKernel()
    .module({ name: "i915", driver: "i915", loaded: true })
    .module({ name: "nvidia", driver: "nvidia", loaded: true })
    .device({ address: "0000:00:02.0", classCode: "0x030000", vendor: "0x8086", nativeDriver: "i915", group: 0, bootVga: true, nodes: ["card0"] })
    .device({ address: first, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 1, nodes: ["card1"] })
    .device({ address: second, classCode: "0x030000", vendor: "0x10de", nativeDriver: "nvidia", group: 2, nodes: ["card2"] })
    .unit({ name: "nvidia-persistenced.service", active: true, processes: { 600: ["nvidia-persiste", ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]] } });
  kernel.sim.file(`/proc/driver/nvidia/gpus/${first}/information`, "Device Minor: 0\n").file(`/proc/driver/nvidia/gpus/${second}/information`, "Device Minor: 1\n");
  return kernel;
}

/**
 * The other order of vfio's background `modprobe vfio-pci ids=`: it ends only
 * once the hook has written vfio-pci into a device's driver_override, so
 * vfio-pci's load binds that device (no drivers_probe). Without this it ends
 * at the next event-loop turn, before any device moves, and each move probes.
 */
export function vfioLoadsAfterOverride(sim: SimHost): SimHost {
  return sim.endLater("modprobe", ["vfio-pci", "ids="], /^write "vfio-pci" to \/sys\/bus\/pci\/devices\/[^/]+\/driver_override$/);
}
