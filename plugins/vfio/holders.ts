// Who holds the GPU, classified by cgroup before anything changes: single-GPU
// mode may stop the display manager (and the graphical sessions it runs) and
// the helper services; a holder anywhere else (a compute job in its own unit,
// a program in a text or remote session) refuses the start while the desktop
// is still untouched. Reads only: /proc/PID/cgroup and logind's session files.
import type { Host } from "../../lib/host.ts";
import type { Holder } from "./survey.ts";

/** Where a holder lives, from its cgroup v2 path. */
export interface HolderPlace {
  /** The cgroup path ("/system.slice/gdm.service"); undefined when it could not be read. */
  cgroup?: string;
  /** The innermost unit (service or scope) the process runs in. */
  unit?: string;
  /** The logind session, when the process runs in a session scope. */
  session?: { id: string; type: string; user: string };
}

export interface ClassifiedHolder extends Holder {
  place: HolderPlace;
}

const UNIT_NAME = /^[A-Za-z0-9:_.\\@-]+\.(service|scope)$/;
/**
 * logind holds the devices of its sessions (TakeDevice) and keeps copies in
 * PID 1's file descriptor store; both close them when the session ends.
 */
const SESSION_DEVICE_KEEPERS = (pid: number, place: HolderPlace) => place.unit === "systemd-logind.service" || (pid === 1 && place.unit === "init.scope");
/** logind session types that are a display, as opposed to tty, unspecified (ssh, cron) or a greeter-less program. */
const GRAPHICAL_SESSION_TYPES = ["x11", "wayland", "mir"];

/** A process's cgroup v2 path ("0::/path"), unit and session. */
export function placeOf(host: Host, pid: number): HolderPlace {
  const line = (host.readTrimmed(`/proc/${pid}/cgroup`) ?? "").split("\n").find((entry) => entry.startsWith("0::"));
  if (!line) return {};
  const cgroup = line.slice(3);
  const components = cgroup.split("/").filter(Boolean);
  const unit = [...components].reverse().find((component) => UNIT_NAME.test(component));
  const sessionId = /^session-(\w+)\.scope$/.exec(components.find((component) => /^session-\w+\.scope$/.test(component)) ?? "")?.[1];
  return { cgroup, unit, session: sessionId ? readSession(host, sessionId) : undefined };
}

/** logind's record of a session (/run/systemd/sessions/ID: KEY=VALUE lines). */
function readSession(host: Host, id: string): HolderPlace["session"] {
  const fields = new Map(
    (host.readTrimmed(`/run/systemd/sessions/${id}`) ?? "")
      .split("\n")
      .map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const),
  );
  return { id, type: fields.get("TYPE") ?? "unknown", user: fields.get("USER") ?? fields.get("UID") ?? "unknown" };
}

/** Is `cgroup` the cgroup `parent` or inside it? */
const within = (cgroup: string, parent: string) => cgroup === parent || cgroup.startsWith(`${parent}/`);

/**
 * The holders that single-GPU mode may not stop: everything outside the
 * given units' cgroups and, when the display manager is stopped, outside
 * graphical sessions and logind's keeping of their devices. A holder whose
 * cgroup cannot be read counts as outside.
 */
export function holdersOutside(host: Host, holders: Holder[], stoppable: { cgroups: string[]; graphicalSessions: boolean }): ClassifiedHolder[] {
  return holders
    .filter((holder) => host.exists(`/proc/${holder.pid}`)) // gone meanwhile: no longer a holder
    .map((holder) => ({ ...holder, place: placeOf(host, holder.pid) }))
    .filter(({ pid, place }) => {
      if (place.cgroup === undefined) return true;
      if (stoppable.cgroups.some((parent) => within(place.cgroup!, parent))) return false;
      if (!stoppable.graphicalSessions) return true;
      return !((place.session && GRAPHICAL_SESSION_TYPES.includes(place.session.type)) || SESSION_DEVICE_KEEPERS(pid, place));
    });
}

/** "pid 42 (obs) holds /dev/dri/renderD128 in obs.service" plus the session when there is one. */
export function describeClassifiedHolder({ pid, command, file, place }: ClassifiedHolder): string {
  const where = place.cgroup === undefined ? "in an unknown cgroup" : place.unit ? `in ${place.unit}` : `in cgroup ${place.cgroup}`;
  const session = place.session ? ` (session ${place.session.id} of ${place.session.user}, type ${place.session.type})` : "";
  return `pid ${pid} (${command}) holds ${file} ${where}${session}`;
}
