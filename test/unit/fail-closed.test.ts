// The six fail-open defects of issue 9, each as it was reproduced: a hook
// that must not report success, a host that must not be left weakened.
// (Defects 3 and 4, shared resources, are in shared-claims.test.ts.)
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { withDomainLock } from "../../lib/lock.ts";
import { paths } from "../../lib/paths.ts";
import type { UndoRecord } from "../../lib/plugin.ts";
import { runHookEvent, type HookOutcome } from "../helpers/hook.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { SimHost } from "../helpers/simhost.ts";
import { cli } from "../helpers/cli.ts";
import { undoneText } from "../../lib/transaction.ts";

const UUID = "f1f1f1f1-0000-4000-8000-0000000000f1";
const POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

const xml = (metadata: string, devices = "") => `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>
  <memoryBacking><hugepages/></memoryBacking>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1" xmlns:x="urn:other">${metadata}</vmhook:hooks></metadata><devices>${devices}</devices></domain>`;
const firstLine = (text: string) => text.split("\n")[0]!;

function hugepageHost(): { sim: SimHost; kernel: HugepageKernel } {
  const sim = new SimHost().dir("/var/log");
  return { sim, kernel: new HugepageKernel(sim) };
}

function installPlugin(sim: SimHost, file: string, source: string): void {
  sim.dir(paths.pluginsDir);
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o755);
  fs.writeFileSync(sim.resolve(`${paths.pluginsDir}/${file}`), source, { mode: 0o644 });
}

/** Fails the test (instead of letting the runner's event loop drain) when the hook never returns. */
async function settled(outcome: Promise<HookOutcome>, seconds = 10): Promise<HookOutcome> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const never = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`the hook did not return within ${seconds} s`)), seconds * 1000)));
  try {
    return await Promise.race([outcome, never]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- defect 1: a step that never settles

const HANGING_PLUGIN = `export default { name: "hang", summary: "never settles", parse: () => ({}),
  async prepare(ctx) {
    await ctx.step("write /marker", { action: "remove-marker" }, () => ctx.host.write("/marker", "set\\n"));
    await ctx.step("wait for ever", { action: "nothing" }, () => new Promise(() => {}));
  },
  undo(record, ctx) { if (record.action === "remove-marker") ctx.host.write("/marker", "unset\\n"); } };
`;

test("defect 1: a JS plugin step that never settles ends prepare with exit 1 after its time limit, naming plugin and step, everything undone", async () => {
  const { sim } = hugepageHost();
  try {
    installPlugin(sim, "hang.mjs", HANGING_PLUGIN);
    sim.file("/marker", "unset");
    sim.file(paths.hostConfig, JSON.stringify({ plugins: { "plugin:hang": { timeoutSeconds: 0.3 } } }));
    const outcome = await settled(runHookEvent(sim, "prepare", "begin", xml('<vmhook:plugin name="hang"/>')));
    assert.is(outcome.code, 1, outcome.stderr);
    assert.match(firstLine(outcome.stderr), 'plugin:hang did not finish prepare within 0.3 s (step "wait for ever")');
    assert.match(outcome.stderr, `the host was left as it was (${undoneText({ undone: 1, unfinished: 1 })})`);
    assert.is(sim.readTrimmed("/marker"), "unset");
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

// ---- defect 2: built-in elements read strictly

const STRICT: [string, string][] = [
  ['<vmhook:vfio><vmhook:device address="0000:00:09.0"/></vmhook:vfio>', "<vmhook:vfio>: contains <vmhook:device>, but takes no child elements"],
  ["<vmhook:hugepages>size=1G</vmhook:hugepages>", '<vmhook:hugepages>: contains the text "size=1G", but takes none'],
  ['<vmhook:hugepages x:size="1G"/>', 'has attribute x:size="1G" in namespace "urn:other"'],
  ['<vmhook:isolate host-cpus="0"><![CDATA[irqs=yes]]></vmhook:isolate>', 'contains the text "irqs=yes", but takes none'],
  ['<vmhook:mdev type="mtty-1"><x:uuid/></vmhook:mdev>', "contains <x:uuid>, but takes no child elements"],
];

for (const [element, message] of STRICT) {
  test(`defect 2: ${element} is refused naming what vmhook does not read, the host untouched`, async () => {
    const { sim } = hugepageHost();
    try {
      const before = sim.snapshot();
      const outcome = await runHookEvent(sim, "prepare", "begin", xml(element));
      assert.is(outcome.code, 1);
      assert.match(firstLine(outcome.stderr), message);
      assert.equal(sim.snapshot(), before);
      assert.equal(sim.stateFiles(), []);
    } finally {
      sim.cleanup();
    }
  });
}

test("defect 2: white space and comments inside a built-in element are fine; custom plugins still get their content", async () => {
  const { sim, kernel } = hugepageHost();
  try {
    installPlugin(sim, "notes.mjs", `export default { name: "notes", summary: "reads its content", parse: (elements) => ({ text: elements[0].textContent }),
      async prepare(ctx) { await ctx.step("note", { action: "note" }, () => ctx.host.write("/note", ctx.config.text)); }, undo() {} };\n`);
    sim.file("/note", "");
    const outcome = await runHookEvent(sim, "prepare", "begin", xml('<vmhook:hugepages>\n  <!-- 2M pages -->\n</vmhook:hugepages><vmhook:plugin name="notes">hello</vmhook:plugin>'));
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(kernel.pool(2048), 512);
    assert.is(sim.readTrimmed("/note"), "hello");
  } finally {
    sim.cleanup();
  }
});

// ---- defect 5: /run/vmhook is checked, journals never follow symlinks, undo records are validated

test("defect 5: /run/vmhook as a symlink is refused, naming it and the fix; nothing is written through it", async () => {
  const { sim, kernel } = hugepageHost();
  try {
    sim.dir("/elsewhere");
    sim.link("/run/vmhook", "/elsewhere");
    const outcome = await runHookEvent(sim, "prepare", "begin", xml("<vmhook:hugepages/>"));
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), "/run/vmhook is a symlink");
    assert.is(kernel.pool(2048), 0);
    assert.equal(fs.readdirSync(sim.resolve("/elsewhere")), []);
  } finally {
    sim.cleanup();
  }
});

test("defect 5: /run/vmhook that others can write or own is refused, advising to inspect and remove it (chown or chmod would keep what was planted); one only others can read is made 0700", async () => {
  const { sim, kernel } = hugepageHost();
  try {
    sim.dir("/run/vmhook");
    const advice = "whoever could write it may have put files there that vmhook would act on as root: inspect it (ls -la /run/vmhook) and, once no VM with vmhook metadata runs, remove it (rm -r /run/vmhook) for vmhook to create anew (a reboot empties /run too)";
    fs.chmodSync(sim.resolve("/run/vmhook"), 0o777);
    const refused = await runHookEvent(sim, "prepare", "begin", xml("<vmhook:hugepages/>"));
    assert.equal([refused.code, firstLine(refused.stderr)], [1, `vmhook: /run/vmhook has mode 0777; ${advice}`]);
    fs.chmodSync(sim.resolve("/run/vmhook"), 0o700);
    fs.chownSync(sim.resolve("/run/vmhook"), 1000, 1000);
    const foreign = await runHookEvent(sim, "prepare", "begin", xml("<vmhook:hugepages/>"));
    assert.equal([foreign.code, firstLine(foreign.stderr)], [1, `vmhook: /run/vmhook is owned by uid 1000, not root; ${advice}`]);
    fs.chownSync(sim.resolve("/run/vmhook"), 0, 0);
    assert.is(kernel.pool(2048), 0);

    fs.chmodSync(sim.resolve("/run/vmhook"), 0o755);
    const prepared = await runHookEvent(sim, "prepare", "begin", xml("<vmhook:hugepages/>"));
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is(fs.statSync(sim.resolve("/run/vmhook")).mode & 0o777, 0o700);
    assert.is(fs.statSync(sim.resolve(paths.journal(UUID))).mode & 0o777, 0o600);
  } finally {
    sim.cleanup();
  }
});

test("vmhook recover and status in a /run/vmhook that others can write: refused before anything there is read or removed, as the hook refuses it", async () => {
  const sim = new SimHost();
  try {
    const note = `${paths.stuckWrites}/0000:01:00.0.json`;
    sim.file(note, JSON.stringify({ pid: 999999, startTime: "1", device: "0000:01:00.0", driver: "nvidia", file: "/sys/bus/pci/drivers/nvidia/unbind", value: "0000:01:00.0", since: "", domain: { name: "vm", uuid: UUID } }));
    fs.chmodSync(sim.resolve(paths.stateDir), 0o777);
    for (const command of ["recover", "status"]) {
      const { code, stdout, stderr } = await cli([command, "--root", sim.root]);
      assert.equal({ code, stdout, refusal: firstLine(stderr) }, { code: 1, stdout: "", refusal: "vmhook: /run/vmhook has mode 0777; whoever could write it may have put files there that vmhook would act on as root: inspect it (ls -la /run/vmhook) and, once no VM with vmhook metadata runs, remove it (rm -r /run/vmhook) for vmhook to create anew (a reboot empties /run too)" }, command);
    }
    assert.ok(sim.exists(note), "the note is left for the person to inspect");
  } finally {
    sim.cleanup();
  }
});

test("defect 5: a symlink planted at the journal's place is replaced, never followed; temp files of killed hooks are removed", async () => {
  const { sim, kernel } = hugepageHost();
  try {
    sim.file("/etc/shadow", "secret");
    sim.dir("/run/vmhook");
    fs.chmodSync(sim.resolve("/run/vmhook"), 0o700);
    sim.link(paths.journal(UUID), "/etc/shadow");
    sim.file(`${paths.journal(UUID)}.tmp`, "half a journal");
    sim.file(`${paths.journal(UUID)}.1a2b3c4d`, "write-file-atomic leftover");
    const outcome = await runHookEvent(sim, "release", "end", xml("<vmhook:hugepages/>"));
    assert.is(outcome.code, 0);
    assert.match(outcome.stderr, `journal ${paths.journal(UUID)} is a symlink`);
    const prepared = await runHookEvent(sim, "prepare", "begin", xml("<vmhook:hugepages/>"));
    assert.is(prepared.code, 1, "a prepare that cannot read what the journal holds refuses");
    assert.match(firstLine(prepared.stderr), "is a symlink");
    fs.rmSync(sim.resolve(paths.journal(UUID)));
    assert.is((await runHookEvent(sim, "prepare", "begin", xml("<vmhook:hugepages/>"))).code, 0);
    assert.is(sim.readTrimmed("/etc/shadow"), "secret");
    assert.is(kernel.pool(2048), 512);
    assert.ok(fs.lstatSync(sim.resolve(paths.journal(UUID))).isFile());
    assert.equal(fs.readdirSync(sim.resolve("/run/vmhook")).filter((name) => name.startsWith(UUID)).sort(), [`${UUID}.json`, `${UUID}.lock`]);
  } finally {
    sim.cleanup();
  }
});

const BAD_RECORDS: [string, UndoRecord, string][] = [
  ["vfio", { action: "start-unit", unit: "--now; reboot" }, 'names unit "--now; reboot", which is not a systemd unit name'],
  ["vfio", { action: "run-start-command", command: ["sh", "-c", "reboot"] }, "which is not the displayManagerCommand.start"],
  ["mdev", { action: "remove-mdev", uuid: "../../../../etc" }, "not a UUID"],
  ["hugepages", { action: "grow-pool", sizeKiB: 2048, node: "../x", added: 1, returned: 0 }, "hugepages"],
];

for (const [plugin, record, message] of BAD_RECORDS) {
  test(`defect 5: an undo record ${JSON.stringify(record)} is checked before its undo runs, and kept`, async () => {
    const { sim } = hugepageHost();
    try {
      sim.onExec("systemctl", () => ({ status: 0 }));
      sim.onExec("sh", () => ({ status: 0 }));
      const journal = newJournal(sim, { name: "vm", uuid: UUID });
      journal.entries.push({ plugin, event: "prepare", description: "a change", undo: record, state: "applied", at: new Date().toISOString() });
      writeJournal(sim, journal);
      const outcome = await runHookEvent(sim, "release", "end", xml(""));
      assert.is(outcome.code, 0);
      assert.match(outcome.stderr, message);
      assert.equal(sim.execs.filter((exec) => exec.command !== "systemctl" || exec.args[0] !== "is-active"), []);
      assert.is(readJournal(sim, UUID)!.entries[0]!.state, "undo-failed");
    } finally {
      sim.cleanup();
    }
  });
}

// ---- defect 6: one per-domain lock for every hook run and for recover

function leftover(sim: SimHost, pid: number): void {
  const journal = newJournal(sim, { name: "vm", uuid: UUID });
  journal.entries.push({ plugin: "hugepages", event: "prepare", description: "grow", undo: { action: "grow-pool", sizeKiB: 2048, node: null, added: 512, returned: 0 }, state: "applied", at: new Date().toISOString() });
  writeJournal(sim, journal);
  const file = sim.resolve(paths.journal(UUID));
  fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace(/"pid": \d+/, `"pid": ${pid}`));
}

test("defect 6: a reused pid (pid 1 is alive) does not make a journal look held for ever: recover undoes it", async () => {
  const { sim } = hugepageHost();
  try {
    sim.write(POOL, "512\n");
    leftover(sim, 1);
    const { code, stdout } = await cli(["recover", "vm", "--root", sim.root]);
    assert.equal({ code, stdout }, { code: 0, stdout: "vm: 1 change(s) undone\n" });
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("defect 6: while a hook holds the domain's lock, recover --force leaves its journal alone", async () => {
  const { sim } = hugepageHost();
  try {
    sim.write(POOL, "512\n");
    leftover(sim, process.pid);
    const deadline = new Deadline(sim, 5000);
    await withDomainLock(sim, UUID, deadline, async () => {
      const { code, stdout } = await cli(["recover", "vm", "--force", "--root", sim.root]);
      assert.equal({ code, stdout }, { code: 0, stdout: "vm: a hook of this domain is at work right now; run vmhook recover again when it is done\n" });
      assert.ok(readJournal(sim, UUID));
      assert.is(sim.readTrimmed(POOL), "512");
    });
  } finally {
    sim.cleanup();
  }
});

test("a domain's lock file that cannot be removed once the domain holds nothing is refused through the host seam: the error names the lock file, the errno and the fix, and --root's tree is where it is removed", async () => {
  const sim = new SimHost();
  try {
    const lock = paths.domainLock(UUID);
    // Already there, it opens read-only on a read-only /run: the removal is what fails.
    sim.file(lock).failChange(lock, "EROFS");
    const deadline = new Deadline(sim, 5000);
    try {
      await withDomainLock(sim, UUID, deadline, async () => {});
      assert.unreachable("the lock file was removed past a read-only /run");
    } catch (error) {
      assert.is((error as Error).message, `cannot remove ${sim.root}${lock} (EROFS); its file system is mounted read-only (findmnt -T ${sim.root}${paths.stateDir}): remount it read-write, then try again`);
    }
    sim.clearFailures();
    await withDomainLock(sim, UUID, deadline, async () => {});
    assert.not.ok(sim.exists(lock), "the lock file of a domain that holds nothing stayed");
    assert.ok(sim.changes.includes(`remove ${lock}`), "the lock file was removed past the host seam");
  } finally {
    sim.cleanup();
  }
});

test.run();
