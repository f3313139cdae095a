// Desktop sessions in single-GPU mode: GNOME (40+) and Plasma run their
// compositor and its helpers as units of the user's own systemd manager, in
// its session.slice. They are stopped through that manager before the
// display manager, and the manager is kept running meanwhile (a temporary
// linger), so what does not hold the GPU, pipewire and wireplumber above
// all, keeps running for the VM's life. At release a unit starts again only
// where it can run: in the same manager, with a session of the user to
// display on (e.g. after an automatic login); otherwise the user's next
// login starts it.
// User docs: docs/vfio.md, "Desktop sessions".
import { VmhookError } from "../../lib/errors.ts";
import { defineAction, type BaseContext, type Refusal, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { processInstance } from "../../lib/processes.ts";
import { endsWithDisplayManager, USER_NAME, userDisplaySession, type SessionUnit } from "./holders.ts";
import { cgroupProcesses, checkedUnit } from "./units.ts";

const lingerFile = (user: string) => `/var/lib/systemd/linger/${user}`;
const managerCgroup = (uid: number) => `/user.slice/user-${uid}.slice/user@${uid}.service`;
/** systemctl talking to the user's manager (systemd ≥ 248 connects as that user). */
const userSystemctl = (user: string, ...args: string[]) => ["--user", `--machine=${user}@.host`, ...args];

/**
 * Which instance of the user's manager runs now: its pid and start time
 * (from /proc/PID/stat), so a manager started again later is told apart.
 * Undefined when none runs.
 */
function userManagerInstance(ctx: BaseContext, uid: number): string | undefined {
  const pid = (ctx.host.readTrimmed(`/sys/fs/cgroup${managerCgroup(uid)}/init.scope/cgroup.procs`) ?? "").split("\n")[0];
  return pid && /^\d+$/.test(pid) ? processInstance(ctx.host, Number(pid)) : undefined;
}

/**
 * Whether the user has a session a compositor of the user can display on:
 * logind's display session of the user (the one a compositor in a user unit
 * takes the GPU for, through libseat or logind's seat), graphical, on the
 * display manager's seat and not ending: the kind prepare stopped the units
 * for. With no graphical session left logind elects any other, e.g. the ssh
 * login the VM was started from; a remote graphical one (xrdp) has no seat:
 * mutter and kwin exit there, and a failed start would keep the release's
 * entry, refusing every later start of the VM.
 */
const hasSeatDisplaySession = (ctx: BaseContext, uid: number): boolean => endsWithDisplayManager(userDisplaySession(ctx.host, uid));

interface LingerRecord extends UndoRecord {
  action: "linger-user";
  user: string;
}

interface StopUserUnitRecord extends UndoRecord {
  action: "stop-user-unit";
  uid: number;
  user: string;
  unit: string;
  /** The unit's cgroup below the user manager: empty once the unit stopped. */
  cgroup: string;
  /** userManagerInstance() when the unit was stopped: it starts again only in that manager. */
  manager: string;
  timeoutMs: number;
}

/**
 * Per user with graphical units holding the GPU: keep the manager running
 * (linger, unless the user lingers already), then stop each unit. A user
 * whose manager cannot be found refuses the first step: vmhook could not
 * undo what it stops.
 */
export function sessionUnitSteps(ctx: BaseContext, units: SessionUnit[], timeoutMs: number): Step[] {
  const steps: Step[] = [];
  for (const uid of new Set(units.map((unit) => unit.uid))) {
    const own = units.filter((unit) => unit.uid === uid);
    const user = own[0]!.user;
    const manager = userManagerInstance(ctx, uid);
    const refused: Refusal | undefined =
      manager === undefined
        ? { reason: `vfio: ${own.map((unit) => unit.unit).join(", ")} of ${user} hold the GPU, but vmhook cannot find ${user}'s systemd user manager to stop them; log out of that session and start the VM again`, remedies: [] }
        : undefined;
    if (!ctx.host.exists(lingerFile(user)) || refused) {
      steps.push({
        action: "linger-user",
        record: { action: "linger-user", user },
        description: `keep ${user}'s systemd user manager running while the VM runs (loginctl enable-linger ${user}), so audio (pipewire) survives the end of the session`,
        ...(refused ? { refused } : {}),
      });
    }
    for (const unit of own) {
      steps.push({
        action: "stop-user-unit",
        record: { action: "stop-user-unit", uid, user, unit: unit.unit, cgroup: unit.cgroup, manager: manager ?? "", timeoutMs },
        description: `stop ${unit.unit} of ${user}'s graphical session (systemctl --user --machine=${user}@.host stop ${unit.unit})`,
      });
    }
  }
  return steps;
}

function enableLinger(record: LingerRecord, ctx: BaseContext): void {
  ctx.run("loginctl", ["enable-linger", record.user], { timeoutMs: 10_000 });
  if (!ctx.host.exists(lingerFile(record.user))) throw new VmhookError(`vfio: loginctl enable-linger ${record.user} left no ${lingerFile(record.user)}`);
}

/** Gives back what vmhook changed: the user did not linger before. Without a session left, logind then stops the manager (as it would have at logout). */
function disableLinger(record: LingerRecord, ctx: BaseContext): void {
  if (ctx.host.exists(lingerFile(record.user))) ctx.run("loginctl", ["disable-linger", record.user], { timeoutMs: 10_000 });
}

function checkUser(value: unknown): string {
  if (typeof value !== "string" || !USER_NAME.test(value)) throw new VmhookError(`vfio: the journal names user ${JSON.stringify(value)}, which is not a login name; inspect the journal`);
  return value;
}

function checkLinger(record: UndoRecord): LingerRecord {
  if (record.action !== "linger-user") throw new VmhookError(`vfio: not a linger-user record: ${record.action}`);
  return { action: "linger-user", user: checkUser(record.user) };
}

export const lingerUserAction = defineAction<LingerRecord>({ check: checkLinger, apply: enableLinger, undo: disableLinger });

function stopUserUnit(record: StopUserUnitRecord, ctx: BaseContext): void {
  const { user, unit, cgroup, timeoutMs } = record;
  ctx.run("systemctl", userSystemctl(user, "stop", unit), { timeoutMs });
  ctx.waitFor(`the processes of ${unit} (${user}'s user manager) are gone`, () => cgroupProcesses(ctx, cgroup).length === 0, { timeoutMs });
}

/** Starts the unit again where it can run; says why not when its manager or its graphical session ended. */
function startUserUnit(record: StopUserUnitRecord, ctx: BaseContext): void {
  const { uid, user, unit, cgroup } = record;
  if (userManagerInstance(ctx, uid) !== record.manager) {
    ctx.log.info(`vfio: ${unit} stays stopped: the systemd user manager of ${user} that ran it has ended (the session ended and nothing kept it); ${user}'s next login starts it`);
    return;
  }
  if (!hasSeatDisplaySession(ctx, uid)) {
    ctx.log.info(`vfio: ${unit} stays stopped: ${user} has no session to display on now (it ended with the display manager); ${user} logs in again and the session starts it`);
    return;
  }
  ctx.run("systemctl", userSystemctl(user, "start", unit), { timeoutMs: 60_000 });
  if (cgroupProcesses(ctx, cgroup).length === 0) throw new VmhookError(`vfio: ${unit} of ${user} did not start again; see systemctl --user --machine=${user}@.host status ${unit}`);
}

function checkStopUserUnit(record: UndoRecord): StopUserUnitRecord {
  if (record.action !== "stop-user-unit") throw new VmhookError(`vfio: not a stop-user-unit record: ${record.action}`);
  const { uid, manager, timeoutMs } = record;
  const unit = checkedUnit(record.unit);
  const cgroup = record.cgroup;
  const valid =
    Number.isSafeInteger(uid) &&
    (uid as number) >= 0 &&
    typeof cgroup === "string" &&
    cgroup.startsWith(`${managerCgroup(uid as number)}/`) &&
    cgroup.endsWith(`/${unit}`) &&
    !cgroup.split("/").includes("..") &&
    typeof manager === "string" &&
    /^\d+:\d+$/.test(manager) &&
    Number.isSafeInteger(timeoutMs);
  if (!valid) throw new VmhookError(`vfio: not a stop-user-unit record vmhook writes: ${JSON.stringify(record).slice(0, 160)}`);
  return { action: "stop-user-unit", uid: uid as number, user: checkUser(record.user), unit, cgroup: cgroup as string, manager: manager as string, timeoutMs: timeoutMs as number };
}

export const stopUserUnitAction = defineAction<StopUserUnitRecord>({ check: checkStopUserUnit, apply: stopUserUnit, undo: startUserUnit });
