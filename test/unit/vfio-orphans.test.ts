// Programs vmhook runs that outlive a hook killed (kill -9) while they run:
// the next hook of the domain must not undo what such a program is still
// doing, only to have it act after (a display manager's stop command,
// orphaned, stopping the display manager recover just started again). With
// systemd the stop is the manager's job, not the client's: what the undo
// needs is only that the stop was journaled before systemctl ran.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { nvidiaDesktop, rcServiceSddm, withoutSystemd } from "../helpers/gpu-kernel.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { readJournal } from "../../lib/journal.ts";

const UUID = "3f1c2a4e-8b7d-4c1e-9a2b-5d6e7f8a9b0c";

const domainXml = () => `<domain type='kvm'><name>win11</name><uuid>${UUID}</uuid><memory unit='GiB'>8</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio/></vmhook:hooks></metadata>
  <devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev></devices></domain>`;

test("without systemd, the hook killed while the display manager's stop command runs: that command goes on; the undo ends it before it starts the display manager, which it would stop again after", async () => {
  const kernel = withoutSystemd("sddm");
  rcServiceSddm(kernel);
  const before = kernel.sim.snapshot();
  const xml = domainXml();
  kernel.sim.outliveHook("rc-service", ["sddm", "stop"]);
  await runHookEvent(kernel.sim, "prepare", "begin", xml);
  assert.is(kernel.sim.revive(), "waiting for rc-service sddm stop", "the hook was killed while rc-service sddm stop ran");
  const [orphan] = kernel.sim.hungPrograms.map((run) => run.pid);
  assert.ok(kernel.sim.exists(`/proc/${orphan}`), "the stop command outlives the hook");

  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stdout + recovered.stderr);
  assert.match(recovered.stdout + recovered.stderr, `vfio: the display manager command pid ${orphan}, left running by a vmhook that was killed, is killed (with what it started) before rc-service sddm start runs`);
  assert.ok(kernel.sim.killedGroups.includes(orphan!));
  kernel.sim.finishHungWrites(); // whatever was left of the hung programs
  assert.ok(kernel.sim.exists("/proc/900"), "the display manager runs, and stays running");
  assert.equal(kernel.sim.snapshot(), before);
  assert.equal(kernel.sim.stateFiles(), []);
});

test("the stop command left running is blocked in the kernel (SIGKILL does not end it): the undo starts nothing, naming it; once it is gone, recover starts the display manager", async () => {
  const kernel = withoutSystemd("sddm");
  rcServiceSddm(kernel);
  const before = kernel.sim.snapshot();
  kernel.sim.outliveHook("rc-service", ["sddm", "stop"]);
  await runHookEvent(kernel.sim, "prepare", "begin", domainXml());
  kernel.sim.revive();
  const [orphan] = kernel.sim.hungPrograms.map((run) => run.pid);
  const stat = kernel.sim.read(`/proc/${orphan}/stat`);
  kernel.sim.file(`/proc/${orphan}/stat`, stat.replace(") R ", ") D "));

  const early = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is.not(early.code, 0);
  assert.match(early.stdout + early.stderr, `vfio: the display manager command pid ${orphan}, left running by a vmhook that was killed, is still there after SIGKILL (blocked in the kernel); once it is gone, run vmhook recover win11`);
  assert.not.ok(kernel.sim.execs.some((exec) => exec.command === "rc-service" && exec.args[1] === "start"), "nothing started under the running stop");

  kernel.sim.finishHungWrites(); // the stop returns: sddm stopped, the command gone
  const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
  assert.is(recovered.code, 0, recovered.stdout + recovered.stderr);
  assert.ok(kernel.sim.exists("/proc/900"));
  assert.equal(kernel.sim.snapshot(), before);
});

for (const aftermath of ["libvirt's stopped and release", "vmhook recover --force"] as const) {
  test(`with systemd, the hook killed while systemctl stop display-manager.service runs (the stop is systemd's job, and ends in systemd all the same): the stop was journaled before systemctl ran, so ${aftermath} starts the display manager again and the host is as before`, async () => {
    const kernel = nvidiaDesktop();
    const before = kernel.sim.snapshot();
    const xml = domainXml();
    kernel.sim.outliveHook("systemctl", ["stop", "display-manager.service"]);
    await runHookEvent(kernel.sim, "prepare", "begin", xml, "win11");
    assert.is(kernel.sim.revive(), "waiting for systemctl stop display-manager.service");
    const held = readJournal(kernel.sim, UUID)!.entries.find((entry) => entry.undo.action === "stop-unit");
    assert.equal([held?.description, held?.state], ["stop display-manager.service", "pending"], "journaled before systemctl ran");
    kernel.sim.finishHungWrites(); // systemd's stop job ends: the display manager is down
    const isActive = () => kernel.sim.exec("systemctl", ["is-active", "display-manager.service"], { timeoutMs: 1000 }).stdout.trim();
    assert.is(isActive(), "inactive", "the display manager is down");
    if (aftermath === "vmhook recover --force") {
      const recovered = await cli(["recover", "--force", "--root", kernel.sim.root], kernel.sim);
      assert.is(recovered.code, 0, recovered.stdout + recovered.stderr);
    } else {
      // The hook's exit (kill -9) fails the start: libvirt runs stopped and release.
      assert.is((await runHookEvent(kernel.sim, "stopped", "end", xml, "win11")).code, 0);
      const release = await runHookEvent(kernel.sim, "release", "end", xml, "win11");
      assert.equal([release.code, release.stderr.split("\n")[0]], [0, ""]);
    }
    assert.ok(kernel.sim.execs.some((exec) => exec.command === "systemctl" && exec.args.join(" ") === "start display-manager.service"), "the display manager is started again");
    assert.is(isActive(), "active");
    assert.equal(kernel.sim.snapshot(), before);
    assert.equal(kernel.sim.stateFiles(), []);
  });
}

test.run();
