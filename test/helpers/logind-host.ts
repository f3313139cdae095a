// A simulated systemd host for the nosleep plugin: systemd-run starts
// transient units, systemctl stops them and tells whether they run, and
// systemd-inhibit lists logind's locks ("WHO UID USER PID COMM WHAT WHY MODE").
// As systemd: a running unit is its cgroup, and its process's command line is
// in /proc, where the host snapshot sees them.
import { SimHost } from "./simhost.ts";

const UNITS = "/sys/fs/cgroup/system.slice";

export interface LogindHost {
  sim: SimHost;
  /** The transient units that run. */
  units(): string[];
  /** A unit started outside vmhook (another start of the VM), holding a lock on `what` for `why`. */
  startUnit(unit: string, why: string, what?: string): void;
  /**
   * The laptop's lid is closed: what logind does with its defaults
   * (HandleLidSwitch=suspend, LidSwitchIgnoreInhibited=yes, logind.conf(5)):
   * it suspends unless a block lock holds "handle-lid-switch"; a "sleep" lock
   * does not count for the lid.
   */
  closeLid(): "suspend" | "ignored";
  /** Whether systemctl reaches PID 1 (false: a bus timeout, a daemon-reexec). */
  bus: { up: boolean };
}

/** `lockFails`: logind never lists the lock the unit asks for; "exits": systemd-inhibit ends at once (logind not running, access denied), and so does its unit. */
export function logindHost(options: { lockFails?: boolean | "exits"; sim?: SimHost } = {}): LogindHost {
  const sim = (options.sim ?? new SimHost()).dir("/run/systemd/system").dir(UNITS).dir("/proc");
  const bus = { up: true };
  let nextPid = 812;
  const running = (unit: string) => sim.exists(`${UNITS}/${unit}/cgroup.procs`);
  const pidOf = (unit: string) => sim.readTrimmed(`${UNITS}/${unit}/cgroup.procs`)!;
  const units = () => sim.list(UNITS).filter(running);
  const startUnit = (unit: string, why: string, what = "sleep") => {
    const pid = nextPid++;
    sim.file(`${UNITS}/${unit}/cgroup.procs`, pid).file(`/proc/${pid}/cmdline`, `systemd-inhibit\0--what=${what}\0--why=${why}\0`);
  };
  const lockArgument = (unit: string, name: string) => new RegExp(`--${name}=([^\\0]*)`).exec(sim.read(`/proc/${pidOf(unit)}/cmdline`))![1]!;
  /** logind's locks: [what, why, pid] of each unit whose lock logind lists. */
  const locks = () => units().map((unit) => [lockArgument(unit, "what"), lockArgument(unit, "why"), pidOf(unit)] as const).filter(([, why]) => why);
  sim.onExec("systemd-run", (args) => {
    const unit = args.find((arg) => arg.startsWith("--unit="))!.slice("--unit=".length);
    // The service manager expands the command line as in ExecStart= (no variables set here): "${NAME}" in a word, "$NAME" as a word, "$$" is "$".
    const command = args.slice(args.findIndex((arg) => !arg.startsWith("--"))).flatMap((arg) => (/^\$\w+$/.test(arg) ? [] : [arg.replace(/\$(\$|\{\w*\})/g, (_, what: string) => (what === "$" ? "$" : ""))]));
    const argument = (name: string) => command.find((arg) => arg.startsWith(`--${name}=`))!.slice(`--${name}=`.length);
    if (options.lockFails === "exits") return; // --collect: the failed unit is gone at once
    startUnit(unit, options.lockFails ? "" : argument("why"), argument("what"));
  });
  sim.onExec("systemctl", (args) => {
    const unit = args[args.length - 1]!;
    // What systemctl says when it cannot reach PID 1: exit 1, for every verb.
    if (!bus.up) return { status: 1, stderr: "Failed to connect to bus: Connection timed out\n" };
    // Exit 3: inactive or failed; 4: no such unit (a transient unit once it is gone).
    if (args[0] === "is-active") return running(unit) ? { status: 0, stdout: "active\n" } : { status: unit.startsWith("vmhook-nosleep-") ? 4 : 3, stdout: "inactive\n" };
    // A unit that does not run has MainPID 0.
    if (args[0] === "show" && args[1] === "--property=MainPID") return { status: 0, stdout: `${running(unit) ? pidOf(unit) : 0}\n` };
    if (args[0] === "stop" && running(unit)) {
      sim.remove(`/proc/${pidOf(unit)}`);
      sim.remove(`${UNITS}/${unit}`);
    }
  });
  sim.onExec("systemd-inhibit", () => ({
    stdout: locks()
      .map(([what, why, pid]) => `vmhook 0 root ${pid} systemd-inhibit ${what} ${why} block\n`)
      .join(""),
  }));
  const closeLid = () => (locks().some(([what]) => what.split(":").includes("handle-lid-switch")) ? "ignored" : "suspend");
  return { sim, units, startUnit, bus, closeLid };
}
