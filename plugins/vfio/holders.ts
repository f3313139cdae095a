// Who holds the GPU, classified by cgroup before anything changes: single-GPU
// mode may stop the display manager (and the sessions it runs on seat0:
// graphical ones, and those it opened), the helper services and, through the
// user's own systemd manager, the units of such a session (session.slice: the
// compositor, its portals, Xwayland); a holder anywhere else (a compute job in
// its own unit, a user's job in app.slice, a program in a text login, a remote
// graphical session such as xrdp's or VNC's, a session on another seat or
// closing) refuses the start while the desktop is still untouched. Reads only:
// /proc/PID/cgroup, a session leader's /proc/PID/stat (its parent) and
// logind's records under /run/systemd.
import type { Host } from "../../lib/host.ts";
import { procStat } from "../../lib/processes.ts";
import { unitHierarchy } from "../../lib/systemd.ts";
import { PATTERNS } from "../../lib/validate.ts";
import type { Holder } from "./survey.ts";

/** Where a holder lives, from its cgroup path. */
export interface HolderPlace {
  /** The cgroup path ("/system.slice/gdm.service"); undefined when it could not be read. */
  cgroup?: string;
  /** The innermost unit (service or scope) the process runs in. */
  unit?: string;
  /** The logind session, when the process runs in a session scope. */
  session?: LogindSession;
  /** When the unit belongs to a user's systemd manager (user@UID.service). */
  userManager?: UserManagerPlace;
}

/** What logind's record of a session says (/run/systemd/sessions/ID); the optional fields are absent when the record has none. */
export interface LogindSession {
  id: string;
  type: string;
  /** logind's class: "user", or "greeter" for a display manager's login screen. */
  class?: string;
  user: string;
  /** The seat it runs on; undefined for a session on no seat (ssh, xrdp, VNC). */
  seat?: string;
  /** The PAM service that opened it (gdm-password, sddm, xrdp-sesman, sshd). */
  service?: string;
  state?: string;
  /** The process that opened it with PAM (LEADER=): a display manager's session worker, login(1), sshd. */
  leader?: number;
}

export interface UserManagerPlace {
  uid: number;
  /** The user's name from logind, undefined when logind has no record of the user. */
  user?: string;
  /** The manager's slice the unit runs in ("session.slice", "app.slice"), undefined when directly below the manager. */
  slice?: string;
  /** The unit's own cgroup: what must be empty once it stopped. */
  unitCgroup?: string;
  /** logind's display session of the user: the one a compositor in a user unit displays on. */
  displaySession?: LogindSession;
}

export interface ClassifiedHolder extends Holder {
  place: HolderPlace;
}

/** A unit of a user's graphical session (in the user manager's session.slice) that holds the GPU. */
export interface SessionUnit {
  uid: number;
  user: string;
  unit: string;
  cgroup: string;
}

const UNIT_NAME = /^[A-Za-z0-9:_.\\@-]+\.(service|scope)$/;
const USER_MANAGER = /^\/user\.slice\/user-(\d+)\.slice\/user@(\d+)\.service(\/.*)?$/;
/**
 * logind holds the devices of its sessions (TakeDevice) and keeps copies in
 * PID 1's file descriptor store; both close them when the session ends.
 */
const SESSION_DEVICE_KEEPERS = (pid: number, place: HolderPlace) => place.unit === "systemd-logind.service" || (pid === 1 && place.unit === "init.scope");
/** logind session types that are a display, as opposed to tty, unspecified (ssh, cron) or a greeter-less program. */
const GRAPHICAL_SESSION_TYPES = ["x11", "wayland", "mir"];
/** systemd.special(7): the user manager's slice for what the graphical session needs to run (display server, portals). */
const SESSION_SLICE = "session.slice";
/**
 * The seat the display manager serves: logind's seat0, which every host has.
 * A remote graphical session (xrdp, VNC, GNOME's remote login) has no seat
 * and outlives the display manager, as a session on another seat may: its
 * holders would keep the GPU after the local desktop was stopped for nothing.
 */
const DISPLAY_MANAGER_SEAT = "seat0";

/**
 * A graphical session that ends when the display manager stops: on its seat
 * and not closing (a session whose leader is gone keeps the processes left in
 * its scope without KillUserProcesses=, whatever the display manager does).
 */
export const endsWithDisplayManager = (session: LogindSession | undefined) =>
  session !== undefined && GRAPHICAL_SESSION_TYPES.includes(session.type) && session.seat === DISPLAY_MANAGER_SEAT && session.state !== "closing";

/**
 * A session the display manager opened on its seat and that is not closing:
 * its leader, the process that opened it with PAM (gdm-session-worker,
 * sddm-helper, greetd's session worker), is a child of the display manager's
 * unit and ends its session when that stops. logind's type does not tell:
 * greetd passes no XDG_SESSION_TYPE, so its greeter's session and its users'
 * (a compositor's too) are "tty", as a text login's on seat0, whose leader
 * is login(1), a child of PID 1.
 */
function openedByDisplayManager(host: Host, entry: RegExp, session: LogindSession | undefined, displayManagerCgroups: string[]): boolean {
  if (session?.leader === undefined || session.seat !== DISPLAY_MANAGER_SEAT || session.state === "closing") return false;
  const parent = Number(procStat(host, session.leader)?.[1]);
  const cgroup = Number.isSafeInteger(parent) && parent > 1 ? cgroupOf(host, entry, parent) : undefined;
  return cgroup !== undefined && displayManagerCgroups.some((unit) => within(cgroup, unit));
}

/**
 * The line of /proc/PID/cgroup that places a process in systemd's units:
 * cgroup v2's ("0::/path") unless systemd keeps them in v1's name=systemd
 * (lib/systemd.ts); the v2 line too where no hierarchy of systemd's is mounted.
 */
const placeEntry = (host: Host): RegExp => unitHierarchy(host)?.entry ?? /^0::(.*)$/m;

/** A process's cgroup path from its `entry` line; undefined when it cannot be read. */
function cgroupOf(host: Host, entry: RegExp, pid: number): string | undefined {
  return entry.exec(host.readTrimmed(`/proc/${pid}/cgroup`) ?? "")?.[1];
}

/** A process's cgroup path, unit, session and user manager. */
function placeOf(host: Host, entry: RegExp, pid: number): HolderPlace {
  const cgroup = cgroupOf(host, entry, pid);
  if (cgroup === undefined) return {};
  const components = cgroup.split("/").filter(Boolean);
  const unit = [...components].reverse().find((component) => UNIT_NAME.test(component));
  const sessionId = /^session-(\w+)\.scope$/.exec(components.find((component) => /^session-\w+\.scope$/.test(component)) ?? "")?.[1];
  return { cgroup, unit, session: sessionId ? readSession(host, sessionId) : undefined, userManager: userManagerPlace(host, cgroup) };
}

/** logind's records are KEY=VALUE lines (/run/systemd/sessions/ID, /run/systemd/users/UID). */
function readLogindRecord(host: Host, file: string): Map<string, string> {
  return new Map(
    (host.readTrimmed(file) ?? "")
      .split("\n")
      .filter((line) => line.includes("="))
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const),
  );
}

function readSession(host: Host, id: string): LogindSession {
  const fields = readLogindRecord(host, `/run/systemd/sessions/${id}`);
  const leader = fields.get("LEADER");
  return {
    id,
    type: fields.get("TYPE") ?? "unknown",
    class: fields.get("CLASS"),
    user: fields.get("USER") ?? fields.get("UID") ?? "unknown",
    seat: fields.get("SEAT"),
    service: fields.get("SERVICE"),
    state: fields.get("STATE"),
    leader: leader && /^\d+$/.test(leader) ? Number(leader) : undefined,
  };
}

const userRecord = (host: Host, uid: number) => readLogindRecord(host, `/run/systemd/users/${uid}`);

/** The display session a user's logind record names (DISPLAY=); undefined when it names none. */
function displaySessionIn(host: Host, user: Map<string, string>): LogindSession | undefined {
  const id = user.get("DISPLAY");
  return id && /^\w+$/.test(id) ? readSession(host, id) : undefined;
}

/** logind's display session of the user (DISPLAY= of /run/systemd/users/UID); undefined when the user has none. */
export const userDisplaySession = (host: Host, uid: number) => displaySessionIn(host, userRecord(host, uid));

/** "/user.slice/user-1000.slice/user@1000.service/session.slice/weston.service" → uid 1000, session.slice, the unit's cgroup. */
function userManagerPlace(host: Host, cgroup: string): UserManagerPlace | undefined {
  const match = USER_MANAGER.exec(cgroup);
  if (!match || match[1] !== match[2]) return undefined;
  const uid = Number(match[1]);
  const inside = (match[3] ?? "").split("/").filter(Boolean);
  const unitIndex = inside.findIndex((component) => UNIT_NAME.test(component));
  const prefix = `/user.slice/user-${uid}.slice/user@${uid}.service`;
  const record = userRecord(host, uid);
  return {
    uid,
    user: record.get("NAME"),
    slice: inside[0]?.endsWith(".slice") ? inside[0] : undefined,
    unitCgroup: unitIndex === -1 ? undefined : `${prefix}/${inside.slice(0, unitIndex + 1).join("/")}`,
    displaySession: displaySessionIn(host, record),
  };
}

/** Is `cgroup` the cgroup `parent` or inside it? */
const within = (cgroup: string, parent: string) => cgroup === parent || cgroup.startsWith(`${parent}/`);

/** A login name as logind and `systemctl --machine=USER@.host` take it; never an option. */
export const USER_NAME = /^[a-z_][a-z0-9_.-]{0,31}$/i;

/**
 * A unit of a user's graphical session: in the manager's session.slice, for
 * a display session that ends with the display manager, with a name and a
 * user vmhook can pass to systemctl (else it is refused).
 */
function sessionUnitOf(place: HolderPlace, endsWithIt: (session: LogindSession | undefined) => boolean): SessionUnit | undefined {
  const manager = place.userManager;
  if (!manager || manager.slice !== SESSION_SLICE || !endsWithIt(manager.displaySession)) return undefined;
  if (!manager.user || !USER_NAME.test(manager.user) || !manager.unitCgroup || !place.unit) return undefined;
  if (!PATTERNS.unitName.test(place.unit) || place.unit.startsWith("-")) return undefined;
  return { uid: manager.uid, user: manager.user, unit: place.unit, cgroup: manager.unitCgroup };
}

/**
 * A unit of a display manager's login screen that ends with it: GDM (43+)
 * runs its greeter's gnome-session, and so its shell, in the session.slice of
 * its own user's manager (Debian-gdm, gdm). Stopping GDM ends the greeter's
 * session, gnome-session then stops its units and, with no session left,
 * logind the manager: nothing to stop through that manager, and no linger
 * for the display manager's user.
 */
const greeterUnit = (place: HolderPlace, endsWithIt: (session: LogindSession | undefined) => boolean) =>
  place.userManager?.slice === SESSION_SLICE && place.userManager.displaySession?.class === "greeter" && endsWithIt(place.userManager.displaySession);

export interface HolderClasses {
  /** Holders single-GPU mode may not stop: the start is refused. */
  refused: ClassifiedHolder[];
  /** Units of graphical sessions to stop through their user's manager, each once. */
  sessionUnits: SessionUnit[];
}

/**
 * Sorts the holders: inside the given units' cgroups (stopped with them);
 * with `graphicalSessions` (the display manager stops), in the scope of a
 * session that ends with it (graphical on seat0, or one the display manager's
 * units, `displayManagerCgroups`, opened), a user unit of its greeter's
 * session, or logind's keeping of its devices;
 * with `sessionUnits` (single-GPU mode under systemd), in a user unit of such
 * a session, which is then stopped through its manager. Everything else is refused, including
 * a holder whose cgroup cannot be read.
 */
export function classifyHolders(host: Host, holders: Holder[], stoppable: { cgroups: string[]; displayManagerCgroups: string[]; graphicalSessions: boolean; sessionUnits: boolean }): HolderClasses {
  const refused: ClassifiedHolder[] = [];
  const sessionUnits = new Map<string, SessionUnit>();
  const entry = placeEntry(host);
  const endsWithIt = (session: LogindSession | undefined) => endsWithDisplayManager(session) || openedByDisplayManager(host, entry, session, stoppable.displayManagerCgroups);
  for (const holder of holders.filter((holder) => host.exists(`/proc/${holder.pid}`))) {
    // gone meanwhile: no longer a holder
    const place = placeOf(host, entry, holder.pid);
    if (place.cgroup !== undefined && stoppable.cgroups.some((parent) => within(place.cgroup!, parent))) continue;
    if (stoppable.graphicalSessions && greeterUnit(place, endsWithIt)) continue;
    const sessionUnit = stoppable.sessionUnits ? sessionUnitOf(place, endsWithIt) : undefined;
    if (sessionUnit) {
      sessionUnits.set(sessionUnit.cgroup, sessionUnit);
      continue;
    }
    const keeper = (stoppable.graphicalSessions || stoppable.sessionUnits) && SESSION_DEVICE_KEEPERS(holder.pid, place);
    if (place.cgroup !== undefined && ((stoppable.graphicalSessions && endsWithIt(place.session)) || keeper)) continue;
    refused.push({ ...holder, place });
  }
  return { refused, sessionUnits: [...sessionUnits.values()] };
}

/** "session 6 of bob, type x11, service xrdp-sesman, no seat", and how to end a graphical one the display manager's stop would not. */
function describeSession(session: LogindSession): string {
  const seat = session.seat ? `seat ${session.seat}` : "no seat";
  const described = `session ${session.id} of ${session.user}, type ${session.type}${session.service ? `, service ${session.service}` : ""}, ${seat}${session.state === "closing" ? ", closing" : ""}`;
  if (!GRAPHICAL_SESSION_TYPES.includes(session.type) || endsWithDisplayManager(session)) return described;
  return `${described}; vmhook stops no session off ${DISPLAY_MANAGER_SEAT} or closing: end it with loginctl terminate-session ${session.id}`;
}

/** "pid 42 (obs) holds /dev/dri/renderD128 in obs.service" plus the session or the user manager when there is one. */
export function describeClassifiedHolder({ pid, command, file, place }: ClassifiedHolder): string {
  const where = place.cgroup === undefined ? "in an unknown cgroup" : place.unit ? `in ${place.unit}` : `in cgroup ${place.cgroup}`;
  const session = place.session ? ` (${describeSession(place.session)})` : "";
  const manager = place.userManager;
  // A session unit whose display session outlives the display manager is refused for that session: name it.
  const display = manager?.slice === SESSION_SLICE && !endsWithDisplayManager(manager.displaySession) ? `, for ${manager.displaySession ? describeSession(manager.displaySession) : "no graphical session"}` : "";
  const owner = manager ? ` (a unit of ${manager.user ?? `uid ${manager.uid}`}'s systemd user manager${manager.slice ? `, ${manager.slice}` : ""}${display})` : "";
  return `pid ${pid} (${command}) holds ${file} ${where}${session}${owner}`;
}
