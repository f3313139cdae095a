// Desktop sessions in single-GPU mode: GNOME (40+) and Plasma run their
// compositor and its helpers as units of the user's own systemd manager, in
// its session.slice. They are stopped through that manager before the
// display manager, and the manager is kept running meanwhile (a temporary
// linger), so what does not hold the GPU, pipewire and wireplumber above
// all, keeps running for the VM's life. At release a unit starts again only
// where it can run: in the same manager, with a session of the user to
// display on (e.g. after an automatic login); otherwise the user's next
// login starts it. A unit that refuses a manual stop (RefuseManualStop=,
// GNOME's shell) stops with a target it is PartOf= that allows one (GNOME's
// gnome-session-initialized.target: the session ends, as at logout); a unit
// that refuses a manual start, or whose session vmhook ended, comes back at
// the user's next login.
// User docs: docs/vfio.md, "Desktop sessions".
import { reasonAndFix, VmhookError } from "../../lib/errors.ts";
import { defineAction, type BaseContext, type Refusal, type Step, type UndoRecord } from "../../lib/plugin.ts";
import { cgroupProcesses } from "../../lib/systemd.ts";
import { processInstance } from "../../lib/processes.ts";
import { endsWithDisplayManager, USER_NAME, userDisplaySession, type SessionUnit } from "./holders.ts";
import { checkedUnit } from "./units.ts";

const lingerFile = (user: string) => `/var/lib/systemd/linger/${user}`;
/**
 * A linger outlives a reboot (logind keeps it in /var/lib), the journal in
 * /run does not: after a power loss while the VM ran no release would end it,
 * and the next start would take it for the user's own. This tmpfiles.d entry
 * ends it at the next boot, and itself with it: systemd-tmpfiles-setup runs
 * --remove before sysinit.target, so before logind starts the user's manager.
 * USER_NAME admits no glob or "%" specifier tmpfiles.d would expand.
 */
const lingerBootCleanup = (user: string) => `/etc/tmpfiles.d/vmhook-linger-${user}.conf`;
/** The ledger key of a user vmhook keeps lingering (lib/claims.ts): VMs that stopped the user's units share it, the last release ends it. */
const lingerClaim = (user: string) => `linger:${user}`;
const managerCgroup = (uid: number) => `/user.slice/user-${uid}.slice/user@${uid}.service`;
/** systemctl talking to the user's manager (systemd ≥ 248 connects as that user). */
const userSystemctl = (user: string, ...args: string[]) => ["--user", `--machine=${user}@.host`, ...args];

/**
 * Which instance of the user's manager runs now: its pid and start time
 * (from /proc/PID/stat), so a manager started again later is told apart.
 * Undefined when none runs.
 */
function userManagerInstance(ctx: BaseContext, uid: number): string | undefined {
  const pid = cgroupProcesses(ctx.host, `${managerCgroup(uid)}/init.scope`)[0];
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
  /** The target PartOf= which vmhook stopped instead of the unit, which refuses a manual stop; null when it stopped the unit (and in journals before this field). */
  via: string | null;
  /** The unit refuses a manual start (RefuseManualStart=yes); false in journals before this field. */
  refusesStart: boolean;
}

/** What `systemctl show` says of a unit about stopping and starting it by hand. */
interface ManualControl {
  refusesStart: boolean;
  refusesStop: boolean;
  partOf: string[];
}

/**
 * RefuseManualStart=, RefuseManualStop= and PartOf= of the units, read from
 * the user's manager in one call (systemd refuses a manual stop or start of
 * such a unit whatever its state); undefined when the manager does not answer.
 */
function manualControls(ctx: BaseContext, user: string, units: string[]): Map<string, ManualControl> | undefined {
  const shown = ctx.run("systemctl", userSystemctl(user, "show", "--property=Id,RefuseManualStart,RefuseManualStop,PartOf", ...units), { allowFailure: true, timeoutMs: 10_000 });
  if (shown.status !== 0) return undefined;
  const controls = new Map<string, ManualControl>();
  for (const block of shown.stdout.split(/\n\s*\n/)) {
    const fields = new Map(block.split("\n").filter((line) => line.includes("=")).map((line) => [line.slice(0, line.indexOf("=")), line.slice(line.indexOf("=") + 1)] as const));
    const id = fields.get("Id");
    if (id) controls.set(id, { refusesStart: fields.get("RefuseManualStart") === "yes", refusesStop: fields.get("RefuseManualStop") === "yes", partOf: (fields.get("PartOf") ?? "").split(/\s+/).filter((name) => name.endsWith(".target")) });
  }
  return units.every((unit) => controls.has(unit)) ? controls : undefined;
}

/** How vmhook stops a unit and whether it may start it again. */
interface StopPath {
  /** The target PartOf= to stop instead of the unit, which refuses a manual stop; null: the unit itself. */
  via: string | null;
  refusesStart: boolean;
}

/** How each unit stops: itself, or through a target PartOf= that allows a manual stop; a refusal naming the unit when neither can, or when the manager does not answer. */
function stopPaths(ctx: BaseContext, user: string, units: string[]): Map<string, StopPath> | Refusal {
  const unanswered: Refusal = {
    reason: `vfio: ${units.join(", ")} of ${user} hold the GPU, but ${user}'s systemd user manager does not say whether they may be stopped (systemctl --user --machine=${user}@.host show ${units.join(" ")}); start the VM again once it answers, or log out of that session first`,
    remedies: [],
  };
  const controls = manualControls(ctx, user, units);
  if (!controls) return unanswered;
  const targets = [...new Set(units.filter((unit) => controls.get(unit)!.refusesStop).flatMap((unit) => controls.get(unit)!.partOf))];
  const targetControls = targets.length > 0 ? manualControls(ctx, user, targets) : new Map<string, ManualControl>();
  if (!targetControls) return unanswered;
  const paths = new Map<string, StopPath>();
  for (const unit of units) {
    const { refusesStop, refusesStart, partOf } = controls.get(unit)!;
    const target = refusesStop ? partOf.find((name) => !targetControls.get(name)!.refusesStop) : undefined;
    if (refusesStop && !target) {
      const why = partOf.length > 0 ? `and so does every target it is PartOf= (${partOf.join(", ")})` : "and it is PartOf= no target";
      return { reason: `vfio: ${unit} of ${user} holds the GPU and refuses a manual stop (RefuseManualStop=yes), ${why}: vmhook cannot stop it; log out of ${user}'s session and start the VM again`, remedies: [] };
    }
    paths.set(unit, { via: target ?? null, refusesStart });
  }
  return paths;
}

/**
 * Per user with graphical units holding the GPU: keep the manager running
 * (linger, unless the user lingers already), then stop each unit. A user
 * whose manager cannot be found or does not answer, or a unit that neither
 * it nor a target it is PartOf= lets stop, refuses the first step, before
 * anything changed.
 */
export function sessionUnitSteps(ctx: BaseContext, units: SessionUnit[], timeoutMs: number): Step[] {
  const steps: Step[] = [];
  for (const uid of new Set(units.map((unit) => unit.uid))) {
    const own = units.filter((unit) => unit.uid === uid);
    const user = own[0]!.user;
    const manager = userManagerInstance(ctx, uid);
    const paths =
      manager === undefined
        ? ({ reason: `vfio: ${own.map((unit) => unit.unit).join(", ")} of ${user} hold the GPU, but vmhook cannot find ${user}'s systemd user manager to stop them; log out of that session and start the VM again`, remedies: [] } satisfies Refusal)
        : stopPaths(ctx, user, own.map((unit) => unit.unit));
    const refused = paths instanceof Map ? undefined : paths;
    // A linger another VM took is vmhook's, not the user's own: this VM joins its claim.
    const lingeringForAnotherVm = ctx.claims.get(lingerClaim(user)) !== undefined;
    if (!ctx.host.exists(lingerFile(user)) || lingeringForAnotherVm || refused) {
      steps.push({
        action: "linger-user",
        record: { action: "linger-user", user },
        description: lingeringForAnotherVm
          ? `keep ${user}'s systemd user manager running while the VM runs (lingering for another VM already), so audio (pipewire) survives the end of the session`
          : `keep ${user}'s systemd user manager running while the VM runs (loginctl enable-linger ${user}), so audio (pipewire) survives the end of the session`,
        ...(refused ? { refused } : {}),
      });
    }
    if (!(paths instanceof Map)) continue;
    for (const unit of own) {
      const { via, refusesStart } = paths.get(unit.unit)!;
      const command = `systemctl --user --machine=${user}@.host stop ${via ?? unit.unit}`;
      steps.push({
        action: "stop-user-unit",
        record: { action: "stop-user-unit", uid, user, unit: unit.unit, cgroup: unit.cgroup, manager: manager!, timeoutMs, via, refusesStart },
        description: via
          ? `stop ${via} of ${user}'s graphical session, and with it ${unit.unit}, which refuses a manual stop (RefuseManualStop=yes) and is PartOf= that target (${command})`
          : `stop ${unit.unit} of ${user}'s graphical session (${command})`,
      });
    }
  }
  return steps;
}

/** Claimed first, so the last VM released ends the linger; a VM joining another's claim changes nothing while the linger lasts. */
function enableLinger(record: LingerRecord, ctx: BaseContext): void {
  const first = ctx.claims.take(lingerClaim(record.user), null);
  if (!first && ctx.host.exists(lingerFile(record.user))) return;
  const cleanup = lingerBootCleanup(record.user);
  try {
    ctx.host.mkdir("/etc/tmpfiles.d");
    // Written and fsynced before the linger: a power loss cannot keep the linger without it.
    ctx.host.createFile(
      cleanup,
      `# vmhook: ${record.user} lingers only while a VM runs (loginctl enable-linger ${record.user}), until its release.\n` +
        `# A reboot ends the VM without its release: the boot ends the linger, and this file.\n` +
        `r ${lingerFile(record.user)}\nr ${cleanup}\n`,
    );
  } catch (error) {
    // /etc read-only (NixOS links it into its store): the VM still starts, as the linger only outlasts it after a crash of the host.
    ctx.log.warn(`vfio: ${reasonAndFix(error).reason}: should the host go down while the VM runs, ${record.user} lingers on after the boot; then run loginctl disable-linger ${record.user}`);
  }
  ctx.run("loginctl", ["enable-linger", record.user], { timeoutMs: 10_000 });
  if (!ctx.host.exists(lingerFile(record.user))) throw new VmhookError(`vfio: loginctl enable-linger ${record.user} left no ${lingerFile(record.user)}`);
}

/** Gives back what vmhook changed, once no other VM needs it: the user did not linger before. Without a session left, logind then stops the manager (as it would have at logout). */
function disableLinger(record: LingerRecord, ctx: BaseContext): void {
  const claim = lingerClaim(record.user);
  const others = ctx.claims.others(claim);
  if (others.length > 0) {
    ctx.claims.drop(claim);
    ctx.log.info(`vfio: ${record.user} keeps lingering: ${others.length} other VM(s) stopped ${record.user}'s session units too`);
    return;
  }
  if (ctx.host.exists(lingerFile(record.user))) ctx.run("loginctl", ["disable-linger", record.user], { timeoutMs: 10_000 });
  ctx.host.remove(lingerBootCleanup(record.user));
  ctx.claims.drop(claim);
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

/** vmhook recover: the undo that gives back a linger claim of a domain whose journal is gone, as its release would have. */
export function orphanedLingerClaim(resource: string): Step<LingerRecord> | undefined {
  if (!resource.startsWith("linger:")) return undefined;
  const record = checkLinger({ action: "linger-user", user: resource.slice("linger:".length) });
  return { action: "linger-user", record, description: `end ${record.user}'s linger (loginctl disable-linger ${record.user}) once no other VM needs it` };
}

function stopUserUnit(record: StopUserUnitRecord, ctx: BaseContext): void {
  const { user, unit, cgroup, timeoutMs, via } = record;
  ctx.run("systemctl", userSystemctl(user, "stop", via ?? unit), { timeoutMs });
  ctx.waitFor(`the processes of ${unit} (${user}'s user manager) are gone`, () => cgroupProcesses(ctx.host, cgroup).length === 0, { timeoutMs });
}

/** Starts the unit again where it can and may run; says why not when it refuses a manual start, vmhook ended its session, or its manager or graphical session ended. */
function startUserUnit(record: StopUserUnitRecord, ctx: BaseContext): void {
  const { uid, user, unit, cgroup, via } = record;
  // systemd refuses the start; a session vmhook ended comes back as after a logout.
  if (record.refusesStart || via) {
    const why = [record.refusesStart && "it refuses a manual start", via && `vmhook ended ${user}'s session to stop it (systemctl --user --machine=${user}@.host stop ${via})`].filter(Boolean).join(", and ");
    ctx.log.info(`vfio: ${unit} stays stopped: ${why}; ${user}'s next login at the display manager's greeter starts it`);
    return;
  }
  if (userManagerInstance(ctx, uid) !== record.manager) {
    ctx.log.info(`vfio: ${unit} stays stopped: the systemd user manager of ${user} that ran it has ended (the session ended and nothing kept it); ${user}'s next login starts it`);
    return;
  }
  if (!hasSeatDisplaySession(ctx, uid)) {
    ctx.log.info(`vfio: ${unit} stays stopped: ${user} has no session to display on now (it ended with the display manager); ${user} logs in again and the session starts it`);
    return;
  }
  ctx.run("systemctl", userSystemctl(user, "start", unit), { timeoutMs: 60_000 });
  if (cgroupProcesses(ctx.host, cgroup).length === 0) throw new VmhookError(`vfio: ${unit} of ${user} did not start again; see systemctl --user --machine=${user}@.host status ${unit}`);
}

function checkStopUserUnit(record: UndoRecord): StopUserUnitRecord {
  if (record.action !== "stop-user-unit") throw new VmhookError(`vfio: not a stop-user-unit record: ${record.action}`);
  const { uid, manager, timeoutMs, via, refusesStart } = record;
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
    Number.isSafeInteger(timeoutMs) &&
    (via === undefined || via === null || (checkedUnit(via) === via && via.endsWith(".target"))) &&
    (refusesStart === undefined || typeof refusesStart === "boolean");
  if (!valid) throw new VmhookError(`vfio: not a stop-user-unit record vmhook writes: ${JSON.stringify(record).slice(0, 160)}`);
  return { action: "stop-user-unit", uid: uid as number, user: checkUser(record.user), unit, cgroup: cgroup as string, manager: manager as string, timeoutMs: timeoutMs as number, via: (via as string | undefined) ?? null, refusesStart: refusesStart === true };
}

export const stopUserUnitAction = defineAction<StopUserUnitRecord>({ check: checkStopUserUnit, apply: stopUserUnit, undo: startUserUnit });
