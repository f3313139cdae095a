// The nosleep plugin on the simulated systemd host of test/helpers/logind-host.ts.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { SimHost } from "../helpers/simhost.ts";
import { logindHost } from "../helpers/logind-host.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { assertPlanIsPrepare, plannedSteps } from "../helpers/plan.ts";
import { Deadline } from "../../lib/deadline.ts";
import { readJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { loadSettings } from "../../lib/settings.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { paths } from "../../lib/paths.ts";

const UUID = "5e7a1c2d-9b3f-4e6a-8c1d-2f4b6a8c0e13";
const UNIT = `vmhook-nosleep-${UUID}.service`;
const xml = (element = "<vmhook:nosleep/>") =>
  `<domain type='kvm'><name>gaming</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${element}</vmhook:hooks></metadata></domain>`;

test("prepare holds the lock in a transient unit, without pipes to the hook; release stops it and nothing stays", async () => {
  const { sim, units } = logindHost();
  assert.is((await runHookEvent(sim, "prepare", "begin", xml())).code, 0);
  assert.equal(units(), [UNIT]);
  const run = sim.execs.find((e) => e.command === "systemd-run")!;
  assert.equal(run.args.slice(run.args.indexOf("systemd-inhibit")), [
    "systemd-inhibit", "--what=sleep:handle-lid-switch", "--who=vmhook", "--why=VM gaming runs with devices passed through", "--mode=block", "sleep", "infinity",
  ]);
  assert.is((await runHookEvent(sim, "release", "end", xml())).code, 0);
  assert.equal(units(), []);
  assert.equal(sim.stateFiles(), []);
});

test("two VMs with nosleep: each holds its own unit, and the one that stops first leaves the other's lock in place", async () => {
  const { sim, units, closeLid } = logindHost();
  const OTHER = "0d4c2b1a-7e6f-4a5b-9c8d-1e2f3a4b5c6d";
  const other = xml().replace(UUID, OTHER).replace("<name>gaming</name>", "<name>work</name>");
  assert.is((await runHookEvent(sim, "prepare", "begin", xml())).code, 0);
  assert.is((await runHookEvent(sim, "prepare", "begin", other, "work")).code, 0);
  assert.equal(units().sort(), [UNIT, `vmhook-nosleep-${OTHER}.service`].sort());
  assert.is((await runHookEvent(sim, "release", "end", xml())).code, 0);
  assert.equal(units(), [`vmhook-nosleep-${OTHER}.service`], "work's unit still runs");
  assert.is(closeLid(), "ignored", "work's lock still holds");
  assert.is((await runHookEvent(sim, "release", "end", other, "work")).code, 0);
  assert.equal(units(), []);
  assert.is(closeLid(), "suspend");
});

test("closing a laptop's lid while the VM runs does not suspend the host: logind ignores sleep locks for the lid by default (LidSwitchIgnoreInhibited=yes)", async () => {
  const { sim, closeLid } = logindHost();
  assert.is(closeLid(), "suspend", "before the VM starts");
  assert.is((await runHookEvent(sim, "prepare", "begin", xml())).code, 0);
  assert.is(closeLid(), "ignored", "while the VM runs");
  assert.is((await runHookEvent(sim, "release", "end", xml())).code, 0);
  assert.is(closeLid(), "suspend", "after release");
});

test("a domain name with $ or ${…} in it: systemd expands the command line it runs, so the lock logind lists still names the VM as it is", async () => {
  const { sim, units } = logindHost();
  const named = xml().replace("<name>gaming</name>", () => "<name>lab${HOME}$$ $USER</name>");
  const result = await runHookEvent(sim, "prepare", "begin", named);
  assert.is(result.code, 0, result.stderr);
  assert.equal(units(), [UNIT]);
  assert.match(sim.read(`/proc/${sim.readTrimmed(`/sys/fs/cgroup/system.slice/${UNIT}/cgroup.procs`)}/cmdline`), "--why=VM lab${HOME}$$ $USER runs with devices passed through");
  assert.is((await runHookEvent(sim, "release", "end", named)).code, 0);
  assert.equal(units(), []);
});

test("vmhook plan lists exactly the step prepare runs", async () => {
  const { sim } = logindHost();
  assert.equal(await assertPlanIsPrepare(sim, xml(), "gaming"), [`nosleep: hold a sleep inhibitor lock in ${UNIT}`]);
});

test("a second start while the unit still runs is refused before any step", async () => {
  const { sim, units, startUnit } = logindHost();
  startUnit(UNIT, "VM gaming runs with devices passed through");
  assert.equal(await plannedSteps(sim, xml()), [`nosleep: hold a sleep inhibitor lock in ${UNIT} REFUSED: nosleep: ${UNIT} already runs, so another start of this VM holds the lock`]);
  const result = await runHookEvent(sim, "prepare", "begin", xml());
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `nosleep: ${UNIT} already runs`);
  assert.ok(!sim.execs.some((exec) => exec.command === "systemd-run" || (exec.command === "systemctl" && exec.args[0] === "stop")), "nothing started or stopped");
  assert.equal(units(), [UNIT], "the running unit is left alone");
});

test("a lock logind never lists fails prepare and stops the unit again, saying where systemd-inhibit's error is and what to check", async () => {
  for (const [lockFails, state] of [[true, "still runs"], ["exits", "has ended"]] as const) {
    const { sim, units } = logindHost({ lockFails });
    const result = await runHookEvent(sim, "prepare", "begin", xml());
    assert.is(result.code, 1);
    assert.match(
      result.stderr.split("\n")[0]!,
      `nosleep: logind does not list the sleep inhibitor lock of ${UNIT} (the unit ${state}): journalctl -u ${UNIT} shows what systemd-inhibit said; is systemd-logind running? (systemctl status systemd-logind)`,
    );
    assert.equal(units(), [], "rolled back");
    assert.equal(sim.stateFiles(), []);
  }
});

test("another VM's lock whose reason contains this VM's (a VM named \"old VM gaming\") does not stand in for a lock logind never lists: prepare fails and stops the unit again", async () => {
  const { sim, units, startUnit } = logindHost({ lockFails: true });
  const other = "vmhook-nosleep-0d4c2b1a-7e6f-4a5b-9c8d-1e2f3a4b5c6d.service";
  startUnit(other, "VM old VM gaming runs with devices passed through");
  const result = await runHookEvent(sim, "prepare", "begin", xml());
  assert.is(result.code, 1, "gaming's own lock is not listed");
  assert.match(result.stderr.split("\n")[0]!, `logind does not list the sleep inhibitor lock of ${UNIT}`);
  assert.equal(units(), [other], "rolled back; the other VM's unit left alone");
});

test("release while systemctl cannot reach systemd keeps the entry for vmhook recover: the lock still holds", async () => {
  const { sim, units, bus } = logindHost();
  assert.is((await runHookEvent(sim, "prepare", "begin", xml())).code, 0);
  bus.up = false;
  const release = await runHookEvent(sim, "release", "end", xml());
  assert.is(release.code, 0, "release never fails libvirt");
  assert.equal(units(), [UNIT], "the unit, and so the sleep lock, still runs");
  assert.match(release.stderr, `systemctl is-active ${UNIT} could not tell whether ${UNIT} runs: Failed to connect to bus`);
  assert.ok(sim.exists(`/run/vmhook/${UUID}.json`), "the journal keeps the entry (undo-failed), not dropped as undone");
  bus.up = true;
  // What vmhook recover does (lib/cli/recover.ts), on the simulated host: the CLI's own host would not simulate systemd.
  const log = createLogger(sim, { echo: "none", file: false });
  const { failed } = await undoJournal(readJournal(sim, UUID)!, { host: sim, log, settings: loadSettings(sim), registry }, new Deadline(sim, 10_000));
  assert.equal(failed, []);
  assert.equal(units(), []);
  assert.equal(sim.stateFiles(), []);
});

test("reconnect checks the unit the journal names, also when the element no longer reads or is gone from the live metadata", async () => {
  for (const element of [`<vmhook:nosleep when="always"/>`, ""]) {
    const { sim } = logindHost();
    sim.dir("/var/log");
    assert.is((await runHookEvent(sim, "prepare", "begin", xml())).code, 0);
    sim.remove(`/sys/fs/cgroup/system.slice/${UNIT}`); // the unit ended behind vmhook's back
    assert.is((await runHookEvent(sim, "reconnect", "begin", xml(element))).code, 0, element);
    assert.match(sim.read(paths.log), `nosleep: ${UNIT} should hold the sleep inhibitor while gaming runs, but is not running`, element);
  }
});

test("reconnect while systemctl cannot reach systemd warns, naming systemctl's answer, and does not fail", async () => {
  const { sim, bus } = logindHost();
  sim.dir("/var/log");
  assert.is((await runHookEvent(sim, "prepare", "begin", xml())).code, 0);
  bus.up = false;
  const reconnect = await runHookEvent(sim, "reconnect", "begin", xml());
  assert.is(reconnect.code, 0);
  const log = sim.read(paths.log);
  assert.match(log, `nosleep: reconnect check failed: systemctl is-active ${UNIT} could not tell whether ${UNIT} runs: Failed to connect to bus`);
  assert.not.match(log, "ERROR");
  assert.ok(sim.exists(`/run/vmhook/${UUID}.json`), "the journal is kept for release");
});

test("prepare while systemctl cannot reach systemd refuses, naming systemctl's answer, and starts nothing", async () => {
  const { sim, units, bus } = logindHost();
  bus.up = false;
  const result = await runHookEvent(sim, "prepare", "begin", xml());
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `could not tell whether ${UNIT} runs: Failed to connect to bus`);
  assert.ok(!sim.execs.some((exec) => exec.command === "systemd-run"), "nothing started");
  assert.equal(units(), []);
  assert.equal(sim.stateFiles(), []);
});

test("without systemd, prepare refuses naming why and changes nothing", async () => {
  const sim = new SimHost();
  const result = await runHookEvent(sim, "prepare", "begin", xml());
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, "nosleep: the host does not run systemd");
  assert.equal(sim.execs, []);
});

test("an attribute is refused, naming it", async () => {
  const { sim } = logindHost();
  const result = await runHookEvent(sim, "prepare", "begin", xml('<vmhook:nosleep idle="yes"/>'));
  assert.is(result.code, 1);
  assert.match(result.stderr, "has unknown attribute idle; it takes no attributes");
  assert.equal(sim.execs, []);
});

test.run();
