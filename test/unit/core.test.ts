// The core's promises, on a simulated host: every step is journaled before it
// acts; a failure at any step leaves the host as it was and no journal; a
// crashed run is undone by the next prepare or release; a failing undo keeps
// its journal entry; bad input and unknown events never break libvirt.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import type { PluginInstance } from "../../lib/config.ts";
import { Deadline } from "../../lib/deadline.ts";
import { parseDomain } from "../../lib/domain.ts";
import { VmhookError } from "../../lib/errors.ts";
import { newJournal, readJournal, writeJournal, type Journal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { defineAction, definePlugin, type ApplyContext, type BaseContext, type LegacyPlugin, type Plugin, type UndoContext, type UndoRecord } from "../../lib/plugin.ts";
import { DEFAULT_SETTINGS } from "../../lib/settings.ts";
import { planEvent, runPlugins, staleJournalNote, undoJournal, type RunEnvironment } from "../../lib/transaction.ts";
import { paths } from "../../lib/paths.ts";
import { registry } from "../../plugins/index.ts";
import { HugepageKernel } from "../helpers/hugepage-kernel.ts";
import { cli } from "../helpers/cli.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { mentionsVmhook } from "../../hooks/qemu.ts";
import { SimHost } from "../helpers/simhost.ts";
import { StuckWriteError } from "../../lib/stuck-writes.ts";

const UUID = "c0c0c0c0-0000-4000-8000-0000000000c0";
const DOMAIN = parseDomain(`<domain><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory></domain>`);

// ---- a test-only plugin: each step sets one file, journaling its old value

interface FileSetter {
  files: string[];
  /** The file whose step throws: "before" it writes, or "after" writing (a half-done step). */
  failOn?: { file: string; when: "before" | "after" };
  /** The file whose step the planner marks refused (it cannot succeed on this host). */
  refuse?: string;
}

/** Undo calls in order, across all test plugins: "id:file". */
let undone: string[] = [];

/** A plugin instance as lib/config.ts builds them from metadata. */
function instanceOf<Config>(id: string, plugin: Plugin<Config>, config: Config): PluginInstance {
  return { id, plugin: plugin as Plugin<any>, config, elements: [] };
}

interface SetFileRecord extends UndoRecord {
  action: "set-file";
  file: string;
  old: string;
}

interface SetterOptions {
  shared?: boolean;
  failingUndo?: string;
  /** Runs at the end of each successful undo (a test's way to act between an undo and its journal write). */
  afterUndo?: (file: string, ctx: UndoContext) => void | Promise<void>;
}

function fileSetter(id: string, options: SetterOptions = {}): Plugin<FileSetter> {
  return definePlugin<FileSetter>({
    name: id,
    summary: "test: sets files",
    shared: options.shared,
    parse: () => ({ files: [] }),
    plan: {
      prepare: (ctx) =>
        ctx.config.files.map((file) => ({
          action: "set-file",
          record: { action: "set-file", file, old: ctx.host.read(file) },
          description: `set ${file}`,
          ...(ctx.config.refuse === file ? { refused: { reason: `${file} cannot be set on this host`, remedies: ["free it first"] } } : {}),
        })),
    },
    actions: {
      "set-file": defineAction<SetFileRecord, FileSetter>({
        check: (record) => record as SetFileRecord,
        apply({ file }, ctx) {
          if (ctx.config.failOn?.file === file && ctx.config.failOn.when === "before") throw new Error(`cannot set ${file}`);
          ctx.host.write(file, "changed\n");
          if (ctx.config.failOn?.file === file) throw new Error(`${file} set, then something failed`);
        },
        async undo(record, ctx) {
          const file = record.file;
          if (file === options.failingUndo) {
            record.attempts = ((record.attempts as number) ?? 0) + 1; // kept in the journal: what an undo learned
            throw new Error(`cannot restore ${file}`);
          }
          ctx.host.write(file, record.old);
          undone.push(`${id}:${file}`);
          await options.afterUndo?.(file, ctx);
        },
      }),
    },
  });
}

function instance(id: string, config: FileSetter, options: SetterOptions = {}): PluginInstance {
  return instanceOf(id, fileSetter(id, options), config);
}

function setup(): { sim: SimHost; env: RunEnvironment; journal: Journal } {
  const sim = new SimHost();
  sim.dir("/run/vmhook").dir("/var/log");
  for (const file of ["/a1", "/a2", "/b1", "/b2"]) sim.file(file, "original");
  undone = [];
  const env: RunEnvironment = { host: sim, log: createLogger(sim, { echo: "none", file: true }), settings: DEFAULT_SETTINGS, registry };
  return { sim, env, journal: newJournal(sim, { name: "vm", uuid: UUID }) };
}

const deadline = (sim: SimHost) => new Deadline(sim, 10_000);

/** Two plugins, two steps each; the second one shares host resources (runs under the host lock). */
function twoPlugins(failOn?: FileSetter["failOn"], failingUndo?: string): PluginInstance[] {
  const pick = (files: string[]) => (failOn && files.includes(failOn.file) ? { files, failOn } : { files });
  return [instance("a", pick(["/a1", "/a2"]), { failingUndo }), instance("b", pick(["/b1", "/b2"]), { shared: true, failingUndo })];
}

test("/run full (ENOSPC) in the middle of a prepare: the journal cannot take the next step, and the rollback still gives back every step before it, leaving neither the journal nor its temp copy", async () => {
  const { sim, env, journal } = setup();
  try {
    const before = sim.snapshot();
    sim.onWrite("/a1", (data, file, host) => {
      fs.writeFileSync(host.resolve(file), `${data}\n`);
      host.failWrite(`${paths.journal(UUID)}.tmp`, "ENOSPC");
    });
    const instances = twoPlugins();
    const failure = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(
      () => undefined,
      (error: Error) => error,
    );
    assert.match(failure?.message ?? "", "ENOSPC");
    const result = await undoJournal(journal, env, deadline(sim), instances);
    assert.equal(result.failed, []);
    // a:/a2's apply never ran: its record never reached the file, and nothing of it is undone.
    assert.equal([result.undone, undone], [1, ["a:/a1"]]);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("/run full (ENOSPC) during a release whose plugin cannot be loaded: the entries of the others are still undone, and the journal as last written keeps every change for vmhook recover; the first such entry used to end the whole undo", async () => {
  const { sim, env, journal } = setup();
  try {
    const before = sim.snapshot();
    const [a] = twoPlugins();
    await runPlugins("prepare", twoPlugins(), DOMAIN, journal, env, deadline(sim));
    const held = readJournal(sim, UUID)!.entries;
    sim.failWrite(`${paths.journal(UUID)}.tmp`, "ENOSPC");
    // "b" is in no registry (a custom plugin removed since the start): its undo cannot even begin.
    const result = await undoJournal(journal, env, deadline(sim), [a!]);
    assert.equal(undone, ["a:/a2", "a:/a1"], "a's changes are given back all the same");
    assert.equal(result.failed.map((entry) => entry.undo.file), ["/b1", "/b2"]);
    assert.equal(sim.snapshot(), { ...before, "/b1": "changed\n", "/b2": "changed\n" }, "only b's files stay changed");
    assert.equal(readJournal(sim, UUID)!.entries, held, "no record of a change was lost");
    assert.equal(sim.stateFiles(), [`${UUID}.json`], "no temp copy is left");
  } finally {
    sim.cleanup();
  }
});

test("/run gone read-only (EROFS) during a prepare's rollback: every change is given back, and the prepare still fails with its own cause; the journal it cannot remove is left listing changes already given back, which vmhook recover then removes", async () => {
  const { sim, env, journal } = setup();
  try {
    const before = sim.snapshot();
    let remounted = false;
    sim.onWrite("/b1", (data, file, host) => {
      fs.writeFileSync(host.resolve(file), `${data}\n`);
      if (remounted) return;
      remounted = true;
      host.failWrite(`${paths.journal(UUID)}.tmp`, "EROFS").failChange(paths.journal(UUID), "EROFS");
    });
    const instances = twoPlugins();
    const failure = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(
      () => undefined,
      (error: Error) => error,
    );
    assert.match(failure?.message ?? "", `cannot write ${paths.journal(UUID)} (EROFS)`);
    const result = await undoJournal(journal, env, deadline(sim), instances);
    assert.equal([result.undone, result.failed], [3, []], "undone, though the journal took none of it");
    assert.match(result.stale ?? "", "EROFS", "and the result says the journal still lists them");
    // Not b2: its record is what the journal could not take, so its apply never ran (it used to be undone and counted).
    assert.equal(undone, ["b:/b1", "a:/a2", "a:/a1"]);
    assert.equal(sim.snapshot(), before);
    // Worded as the rollback, the release and vmhook recover say it (staleJournalNote), naming the domain.
    assert.match(sim.read(paths.log), `error: ${staleJournalNote(result.stale!, "vm")}\n`);
    assert.match(result.stale!, `cannot remove ${sim.resolve(paths.journal(UUID))} (EROFS)`);
    sim.clearFailures();
    // What vmhook recover runs: the journal as the file has it.
    const again = await undoJournal(readJournal(sim, UUID)!, env, deadline(sim), instances);
    // b1 is pending in the file: its "applied" was left to the next write, which failed.
    assert.equal([again.undone, again.unfinished, again.failed], [2, 1, []]);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a release whose every undo the journal took, but whose journal cannot be removed: the log says the file lists no change and what it means for the next start and vmhook recover; it used to say the file lists changes already given back", async () => {
  const { sim, env, journal } = setup();
  try {
    const before = sim.snapshot();
    const instances = twoPlugins();
    await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim), "starting");
    // /run goes read-only once the last undo's write went through: only the removal fails.
    const remove = sim.remove.bind(sim);
    sim.remove = (file: string) => {
      if (file === paths.journal(UUID)) sim.failChange(file, "EROFS");
      remove(file);
    };
    const result = await undoJournal(journal, env, deadline(sim), instances);
    sim.remove = remove;
    assert.equal([result.undone, result.failed, result.stale], [4, [], undefined], "nothing listed is stale");
    assert.equal(sim.snapshot(), before);
    const left = readJournal(sim, UUID)!;
    assert.equal([left.phase, left.entries], ["releasing", []], "the file lists no change");
    const log = sim.read(paths.log);
    assert.not.match(log, "already given back");
    assert.match(
      log,
      `error: the journal ${paths.journal(UUID)} could not be removed (cannot remove ${sim.resolve(paths.journal(UUID))} (EROFS); its file system is mounted read-only`,
    );
    assert.match(log, /\); it lists no change, so nothing is undone again: the next start of vm, or vmhook recover vm, removes it\n/);
    sim.clearFailures();
    // What the next start (and vmhook recover) runs: the journal as the file has it.
    const again = await undoJournal(readJournal(sim, UUID)!, env, deadline(sim), instances);
    assert.equal([again.undone, again.failed, again.stale], [0, [], undefined]);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("vmhook recover of a journal listing no change that it cannot remove (/run read-only) exits 1, saying the file is left, that it lists no change and how it goes; it used to exit 0 saying 0 change(s) undone, the error on stderr only", async () => {
  const { sim } = setup();
  try {
    const journal = newJournal(sim, { name: "vm", uuid: UUID });
    journal.phase = "releasing";
    writeJournal(sim, journal);
    sim.failChange(paths.journal(UUID), "EROFS");
    const recovered = await cli(["recover", "--root", sim.root, "--", "vm"], sim);
    assert.is(recovered.code, 1, "a recover that could not finish fails");
    assert.match(recovered.stdout, `vm: 0 change(s) undone, but the journal ${paths.journal(UUID)} could not be removed (cannot remove ${sim.resolve(paths.journal(UUID))} (EROFS)`);
    assert.match(recovered.stdout, /\); it lists no change, so nothing is undone again: the next start of vm, or vmhook recover vm, removes it\n$/);
    const json = await cli(["recover", "--json", "--root", sim.root, "--", "vm"], sim);
    assert.is(json.code, 1);
    assert.match(JSON.parse(json.stdout).recovered[0].unremoved, "EROFS");
    sim.clearFailures();
    assert.equal(await cli(["recover", "--root", sim.root, "--", "vm"], sim), { code: 0, stdout: "vm: 0 change(s) undone\n", stderr: "" });
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a prepare that fails at any step, before or after acting, leaves the host as it was and no journal", async () => {
  for (const file of ["/a1", "/a2", "/b1", "/b2"]) {
    for (const when of ["before", "after"] as const) {
      const { sim, env, journal } = setup();
      try {
        const before = sim.snapshot();
        const instances = twoPlugins({ file, when });
        const failure = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(
          () => undefined,
          (error: Error) => error,
        );
        assert.ok(failure, `a failure at ${file} (${when}) is reported`);
        const applied = ["a:/a1", "a:/a2", "b:/b1", "b:/b2"];
        const reached = applied.slice(0, applied.findIndex((step) => step.endsWith(file)) + 1);
        assert.equal(journal.entries.map((e) => `${e.plugin}:${e.undo.file}`), reached, "every step up to the failing one is journaled");
        assert.is(journal.entries.at(-1)!.state, "pending", "the failing step stays pending");

        const result = await undoJournal(journal, env, deadline(sim), instances);
        assert.equal(result.failed, []);
        assert.equal(undone, [...reached].reverse(), "undone in reverse order, the failing step included");
        assert.equal(sim.snapshot(), before, `host state after a failure at ${file} (${when})`);
        assert.equal(sim.stateFiles(), [], "no journal left");
      } finally {
        sim.cleanup();
      }
    }
  }
});

test("each step's undo record is in the journal file before its action runs", async () => {
  const { sim, env, journal } = setup();
  try {
    const seen: { state: string; undo: UndoRecord }[] = [];
    const plugin = definePlugin({
      name: "probe",
      summary: "test",
      parse: () => null,
      plan: { prepare: () => [{ action: "nothing", record: { action: "nothing" }, description: "probe" }] },
      actions: {
        nothing: defineAction({
          check: (record) => record,
          apply() {
            const entry = readJournal(sim, UUID)!.entries.at(-1)!;
            seen.push({ state: entry.state, undo: entry.undo });
          },
          undo() {},
        }),
      },
    });
    await runPlugins("prepare", [instanceOf("probe", plugin, null)], DOMAIN, journal, env, deadline(sim));
    assert.equal(seen, [{ state: "pending", undo: { action: "nothing" } }]);
    assert.is(readJournal(sim, UUID)!.entries[0]!.state, "applied");
  } finally {
    sim.cleanup();
  }
});

test("a step that changed nothing leaves the journal file before the next step acts; an applied one stays in it", async () => {
  const { sim, env, journal } = setup();
  try {
    const seen: string[][] = [];
    const step = (name: string) => ({ action: "mark", record: { action: "mark", name }, description: name });
    const plugin = definePlugin({
      name: "probe",
      summary: "test",
      parse: () => null,
      plan: { prepare: () => [step("nothing"), step("changed"), step("last")] },
      actions: {
        mark: defineAction({
          check: (record) => record,
          apply(record, ctx) {
            // What a hook killed now would leave for vmhook recover.
            seen.push(readJournal(sim, UUID)!.entries.map((entry) => String(entry.undo.name)));
            if (record.name === "nothing") ctx.nothingToUndo();
          },
          undo() {},
        }),
      },
    });
    await runPlugins("prepare", [instanceOf("probe", plugin, null)], DOMAIN, journal, env, deadline(sim));
    assert.equal(seen, [["nothing"], ["changed"], ["changed", "last"]]);
    assert.equal(
      readJournal(sim, UUID)!.entries.map((entry) => [entry.undo.name, entry.state]),
      [
        ["changed", "applied"],
        ["last", "applied"],
      ],
    );
  } finally {
    sim.cleanup();
  }
});

/** A plugin of steps named by `names`, each applied by `apply(name, ctx)`; those named "bg…" are "load" steps in the background, the others "mark" steps. */
function markingPlugin(names: string[], apply: (name: string, ctx: ApplyContext<unknown>) => void | Promise<void>, undone: string[] = []): PluginInstance {
  const mark = defineAction({
    check: (record) => record,
    apply: (record, ctx) => apply(String(record.name), ctx),
    undo: (record) => void undone.push(String(record.name)),
  });
  const plugin = definePlugin({
    name: "marks",
    summary: "test",
    parse: () => null,
    plan: {
      prepare: () =>
        names.map((name) => {
          const action = name.startsWith("bg") ? "load" : "mark";
          return { action, record: { action, name }, description: name, ...(action === "load" ? { background: true } : {}) };
        }),
    },
    actions: { mark, load: mark },
  });
  return instanceOf("marks", plugin, null);
}

const macrotask = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

/** A test whose body gets a fresh simulated host, run environment and journal, removed afterwards. */
function withSetup(body: (run: ReturnType<typeof setup>) => Promise<void>): () => Promise<void> {
  return async () => {
    const run = setup();
    try {
      await body(run);
    } finally {
      run.sim.cleanup();
    }
  };
}

test("a step in the background applies while the next steps do, journaled before it acts; a step that needs it awaits ctx.afterBackgroundSteps; the event ends when it has", withSetup(async ({ sim, env, journal }) => {
  const order: string[] = [];
  let release = () => {};
  const gate = new Promise<void>((resolve) => (release = resolve));
  const instance = markingPlugin(["bg-load", "middle", "needs"], async (name, ctx) => {
    if (name === "bg-load") {
      order.push("bg-load starts");
      await gate;
      await macrotask();
      order.push("bg-load ends");
    } else if (name === "middle") {
      order.push(`middle sees ${readJournal(sim, UUID)!.entries.map((entry) => `${entry.undo.name}:${entry.state}`).join(",")}`);
      release();
    } else {
      await ctx.afterBackgroundSteps();
      order.push("needs");
    }
  });
  await runPlugins("prepare", [instance], DOMAIN, journal, env, deadline(sim));
  assert.equal(order, ["bg-load starts", "middle sees bg-load:pending,middle:pending", "bg-load ends", "needs"]);
  assert.equal(
    readJournal(sim, UUID)!.entries.map((entry) => [entry.undo.name, entry.state]),
    [
      ["bg-load", "applied"],
      ["middle", "applied"],
      ["needs", "applied"],
    ],
  );
  assert.match(sim.read("/var/log/vmhook.log"), "marks: bg-load: started in the background");
  }));

test("two steps of one action never apply at once: the second waits for the first in the background", withSetup(async ({ sim, env, journal }) => {
  const order: string[] = [];
  const instance = markingPlugin(["bg-one", "bg-two"], async (name) => {
    order.push(`${name} starts`);
    await macrotask(10);
    order.push(`${name} ends`);
  });
  await runPlugins("prepare", [instance], DOMAIN, journal, env, deadline(sim));
  assert.equal(order, ["bg-one starts", "bg-one ends", "bg-two starts", "bg-two ends"]);
  }));

test("a step in the background that fails: no further step starts, the error is its own, and the rollback undoes it and what ran beside it", withSetup(async ({ sim, env, journal }) => {
  const order: string[] = [];
  const undone: string[] = [];
  const instance = markingPlugin(
    ["bg-load", "beside", "after"],
    async (name) => {
      if (name === "bg-load") {
        await macrotask();
        throw new Error("modprobe failed");
      }
      await macrotask(20);
      order.push(name);
    },
    undone,
  );
  const error = await runPlugins("prepare", [instance], DOMAIN, journal, env, deadline(sim)).then(
    () => undefined,
    (error: Error) => error,
  );
  assert.is(error?.message, "modprobe failed");
  assert.equal(order, ["beside"], "the step running beside it finishes; the next one never starts");
  await undoJournal(journal, env, deadline(sim), [instance]);
  assert.equal(undone, ["beside", "bg-load"]);
  }));

test("a step that fails while a step runs in the background: the failure waits for it, so nothing is undone under a step that still acts", withSetup(async ({ sim, env, journal }) => {
  const order: string[] = [];
  const instance = markingPlugin(["bg-load", "fails"], async (name) => {
    if (name === "fails") throw new Error("the device would not unbind");
    await macrotask(20);
    order.push("bg-load ends");
  });
  await runPlugins("prepare", [instance], DOMAIN, journal, env, deadline(sim)).then(
    () => assert.unreachable("the event failed"),
    (error: Error) => {
      assert.is(error.message, "the device would not unbind");
      order.push("failure reported");
    },
  );
  assert.equal(order, ["bg-load ends", "failure reported"]);
  }));

test("ctx.update replaces the journaled record, and rollback gets the updated one", async () => {
  const { sim, env, journal } = setup();
  try {
    const got: UndoRecord[] = [];
    let onDisk: unknown; // asserted after the run: an assertion inside apply would only fail the step
    const plugin = definePlugin({
      name: "partial",
      summary: "test",
      parse: () => null,
      plan: { prepare: () => [{ action: "take", record: { action: "take", taken: 0 }, description: "take 3" }] },
      actions: {
        take: defineAction({
          check: (record) => record,
          apply(_record, ctx) {
            ctx.update({ action: "take", taken: 2 });
            onDisk = readJournal(sim, UUID)!.entries[0]!.undo;
            throw new Error("the third one failed");
          },
          undo: (record) => void got.push(record),
        }),
      },
    });
    const instances = [instanceOf("partial", plugin, null)];
    const failure = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(() => undefined, (error: Error) => error.message);
    assert.is(failure, "the third one failed");
    assert.equal(onDisk, { action: "take", taken: 2 }, "the update is on disk at once");
    await undoJournal(journal, env, deadline(sim), instances);
    assert.equal(got, [{ action: "take", taken: 2 }]);
  } finally {
    sim.cleanup();
  }
});

test("a failing undo keeps its entry (state undo-failed, the error, what the undo recorded); the others are undone", async () => {
  const { sim, env, journal } = setup();
  try {
    const instances = twoPlugins(undefined, "/a2");
    await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim), "starting");
    const result = await undoJournal(journal, env, deadline(sim), instances);
    assert.equal(undone, ["b:/b2", "b:/b1", "a:/a1"]);
    assert.equal(result.failed.map((e) => e.undo.file), ["/a2"]);
    const kept = readJournal(sim, UUID)!;
    assert.is(kept.phase, "release-failed");
    assert.equal(
      kept.entries.map(({ state, error, undo }) => ({ state, error, attempts: undo.attempts })),
      [{ state: "undo-failed", error: "cannot restore /a2", attempts: 1 }],
    );
    assert.is(sim.read("/a2"), "changed\n");
    assert.is(sim.read("/a1"), "original\n");
  } finally {
    sim.cleanup();
  }
});

test("a journal write that fails after an undo: the change counts as undone and is not marked undo-failed with the write's error", async () => {
  const { sim, env, journal } = setup();
  try {
    // A directory where the journal's temp file goes makes the next journal write fail (EISDIR); the next undo clears it.
    const blocker = sim.resolve(`/run/vmhook/${UUID}.json.tmp`);
    const afterUndo = (file: string) => {
      if (file === "/b2") fs.mkdirSync(`${blocker}/in-the-way`, { recursive: true });
      if (file === "/b1") fs.rmSync(blocker, { recursive: true });
    };
    const instances = [instance("a", { files: ["/a1", "/a2"] }), instance("b", { files: ["/b1", "/b2"] }, { shared: true, afterUndo })];
    await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim));
    const result = await undoJournal(journal, env, deadline(sim), instances);
    assert.equal(undone, ["b:/b2", "b:/b1", "a:/a2", "a:/a1"]);
    assert.is(result.undone, 4, "b:/b2 was undone; its journal write is what failed, and the next one took it (it used to count 3)");
    assert.equal(result.failed, []);
    assert.is(result.stale, undefined, "the journal says what was done: it is gone");
    assert.not.ok(sim.exists(`/run/vmhook/${UUID}.json`), "nothing is left to undo");
    const log = sim.read(paths.log);
    assert.match(log, "b: undo set /b2: the journal could not be written after it:");
    assert.match(log, "b: undo set /b2: done");
    assert.not.match(log, /undo set \/b2: (?!the journal could not be written|done)/);
  } finally {
    sim.cleanup();
  }
});

test("an undo abandoned at its time limit that calls ctx.update later changes nothing in the journal", async () => {
  const { sim, env, journal } = setup();
  try {
    // A custom plugin's undo may take 1 s here; this one records something after 1.5 s.
    env.settings = { ...DEFAULT_SETTINGS, plugins: { "plugin:late": { timeoutSeconds: 1 } } };
    let lateUpdate: unknown;
    const afterUndo = async (_file: string, ctx: UndoContext) => {
      await new Promise((resolve) => setTimeout(resolve, 1500));
      try {
        ctx.update({ action: "set-file", file: "/a1", old: "original\n", late: true });
      } catch (error) {
        lateUpdate = error;
      }
    };
    const instances = [instance("plugin:late", { files: ["/a1"] }, { afterUndo })];
    await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim));
    const result = await undoJournal(journal, env, deadline(sim), instances);
    assert.equal(result.failed.map((entry) => entry.error), ['plugin:late did not finish undo within 1 s (undo of "set /a1") and was abandoned; make it finish, or raise "timeoutSeconds" under "plugins": {"plugin:late": …} in /etc/vmhook/vmhook.json']);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.instance(lateUpdate, VmhookError, "the abandoned undo's ctx.update threw");
    assert.equal(readJournal(sim, UUID)!.entries.map((entry) => [entry.state, entry.undo.late]), [["undo-failed", undefined]]);
    assert.match(sim.read(paths.log), "plugin:late: refused ctx.update after its call was abandoned");
  } finally {
    sim.cleanup();
  }
});

// ---- a failed apply that left the host as it was (Action.unchangedAfterFailure)

interface TouchRecord extends UndoRecord {
  action: "touch";
  file: string;
  old: string;
}

type Answer = (record: TouchRecord, ctx: BaseContext) => boolean;

/** The read-back a plugin would make: the file reads as before the step. */
const readsAsBefore: Answer = (record, ctx) => ctx.host.read(record.file) === record.old;

/**
 * One step that sets /a1 and fails: `failure` says how (before writing, after
 * writing, a helper still blocked, or taking longer than its time limit),
 * `unchanged` what its unchangedAfterFailure answers. `asked` counts the questions.
 */
function failingTouch(failure: "before" | "after" | "stuck" | "late", unchanged: Answer, asked: { count: number }): Plugin<null> {
  return definePlugin<null>({
    name: "touch",
    summary: "test: a step that fails",
    parse: () => null,
    plan: { prepare: (ctx) => [{ action: "touch", record: { action: "touch", file: "/a1", old: ctx.host.read("/a1") }, description: "set /a1" }] },
    actions: {
      touch: defineAction<TouchRecord, null>({
        check: (record) => record as TouchRecord,
        async apply(record, ctx) {
          if (failure === "stuck") throw new StuckWriteError("a helper writing /a1 did not return; it may still write it");
          if (failure === "late") await macrotask(600);
          if (failure === "after") ctx.host.write(record.file, "changed\n");
          throw new Error(`cannot set ${record.file}`);
        },
        unchangedAfterFailure(record, ctx) {
          asked.count++;
          return unchanged(record, ctx);
        },
        undo(record, ctx) {
          ctx.host.write(record.file, record.old);
          undone.push(`touch:${record.file}`);
        },
      }),
    },
  });
}

/** Runs prepare with failingTouch, then its rollback: the journal as the file had it after the failure, the rollback's result, and the questions asked. */
async function failAndRollBack(failure: Parameters<typeof failingTouch>[0], unchanged: Answer, id = "touch") {
  const { sim, env, journal } = setup();
  try {
    env.settings = { ...DEFAULT_SETTINGS, plugins: { [id]: { timeoutSeconds: 0.3 } } };
    const asked = { count: 0 };
    const instances = [instanceOf(id, failingTouch(failure, unchanged, asked), null)];
    const error = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(
      () => undefined,
      (error: Error) => error,
    );
    const afterFailure = readJournal(sim, UUID)?.entries.map((entry) => entry.description) ?? [];
    const result = await undoJournal(journal, env, deadline(sim), instances);
    // An apply abandoned at its time limit has ended by now: what it would still do is refused (CallLease).
    await macrotask(600);
    return { error, afterFailure, result, asked: asked.count, a1: sim.read("/a1"), log: sim.read(paths.log), stateFiles: sim.stateFiles() };
  } finally {
    sim.cleanup();
  }
}

test("a failed apply whose unchangedAfterFailure reads the host as before leaves no journal entry: the rollback undoes and counts nothing", async () => {
  const run = await failAndRollBack("before", readsAsBefore);
  assert.match(run.error?.message ?? "", "cannot set /a1");
  assert.equal(run.afterFailure, [], "the entry left the journal file at once");
  assert.equal([run.result.undone, run.result.failed, undone], [0, [], []]);
  assert.is(run.asked, 1);
  assert.is(run.a1, "original\n");
  assert.equal(run.stateFiles, []);
});

test("a failed apply whose unchangedAfterFailure finds the host changed is counted and undone", async () => {
  const run = await failAndRollBack("after", readsAsBefore);
  assert.equal(run.afterFailure, ["set /a1"]);
  assert.equal([run.result.undone, run.result.unfinished, undone], [0, 1, ["touch:/a1"]]);
  assert.is(run.asked, 1);
  assert.is(run.a1, "original\n");
});

test("a failed apply whose unchangedAfterFailure throws is counted and undone (unknown is changed), and the log says why", async () => {
  const run = await failAndRollBack("before", () => {
    throw new Error("cannot read /a1 (EIO)");
  });
  assert.equal(run.afterFailure, ["set /a1"]);
  assert.equal([run.result.undone, run.result.unfinished, undone], [0, 1, ["touch:/a1"]]);
  assert.match(run.log, "touch: set /a1: whether its failed apply changed anything cannot be told (cannot read /a1 (EIO)); it stays in the journal");
});

test("a failed apply that answers anything but true (a promise, 1) is counted and undone", async () => {
  const run = await failAndRollBack("before", () => Promise.resolve(true) as unknown as boolean);
  assert.equal([run.result.undone, run.result.unfinished, undone], [0, 1, ["touch:/a1"]]);
});

test("a failed apply with a helper still blocked (StuckWriteError) is counted, whatever the host reads: unchangedAfterFailure is not asked", async () => {
  const run = await failAndRollBack("stuck", readsAsBefore);
  assert.instance(run.error, StuckWriteError);
  assert.equal(run.afterFailure, ["set /a1"]);
  assert.equal([run.result.undone, run.result.unfinished, undone], [0, 1, ["touch:/a1"]]);
  assert.is(run.asked, 0);
});

test("an apply abandoned at its time limit is counted, though the host reads as before: it may still be changing it, so unchangedAfterFailure is not asked", async () => {
  const run = await failAndRollBack("late", readsAsBefore, "plugin:touch");
  assert.match(run.error?.message ?? "", "plugin:touch did not finish prepare within 0.3 s");
  assert.equal(run.afterFailure, ["set /a1"]);
  assert.equal([run.result.undone, run.result.unfinished, undone], [0, 1, ["touch:/a1"]]);
  assert.is(run.asked, 0);
});

test("/run gone read-only as a failed apply that changed nothing is dropped: the drop, the rollback's phase write and the removal all fail, and the log says the file still lists a change never made, as it does; it used to say the file lists no change", async () => {
  const { sim, env, journal } = setup();
  try {
    const readOnly: Answer = (record, ctx) => {
      sim.failWrite(`${paths.journal(UUID)}.tmp`, "EROFS").failChange(paths.journal(UUID), "EROFS");
      return readsAsBefore(record, ctx);
    };
    const instances = [instanceOf("touch", failingTouch("before", readOnly, { count: 0 }), null)];
    const error = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(
      () => undefined,
      (error: Error) => error,
    );
    assert.match(error?.message ?? "", "cannot set /a1");
    assert.equal(journal.entries, [], "dropped: it changed nothing");
    const result = await undoJournal(journal, env, deadline(sim), instances);
    assert.equal([result.undone, result.failed, undone], [0, [], []]);
    const left = readJournal(sim, UUID)!;
    assert.equal(left.entries.map((entry) => entry.description), ["set /a1"], "the file lists the step it could not drop");
    assert.match(result.stale ?? "", "EROFS", "the result says the file lists more than the undo left");
    const log = sim.read(paths.log);
    assert.not.match(log, "it lists no change");
    assert.match(log, `error: ${staleJournalNote(result.stale!, "vm")}\n`);
    sim.clearFailures();
    const again = await undoJournal(readJournal(sim, UUID)!, env, deadline(sim), instances);
    assert.equal([again.failed, again.stale, again.unremoved], [[], undefined, undefined]);
    assert.is(sim.read("/a1"), "original\n");
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("planning lists the steps and changes nothing", async () => {
  const { sim, env, journal } = setup();
  try {
    const before = sim.snapshot();
    const steps = await planEvent("prepare", twoPlugins(), DOMAIN, journal, env, deadline(sim));
    assert.equal(steps.map((s) => `${s.plugin}: ${s.description}`), ["a: set /a1", "a: set /a2", "b: set /b1", "b: set /b2"]);
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a refused step, planned by a later plugin, fails the event with its reason before any plugin applies; plan lists it marked", async () => {
  const { sim, env, journal } = setup();
  try {
    const before = sim.snapshot();
    const instances = [instance("a", { files: ["/a1"] }), instance("b", { files: ["/b1", "/b2"], refuse: "/b2" }, { shared: true })];
    const steps = await planEvent("prepare", instances, DOMAIN, journal, env, deadline(sim));
    assert.equal(steps.map((s) => s.refused?.reason), [undefined, undefined, "b: /b2 cannot be set on this host"], "the reason names its plugin");
    const error = await runPlugins("prepare", instances, DOMAIN, journal, env, deadline(sim)).then(() => undefined, (e: VmhookError) => e);
    assert.is(error?.message, "b: /b2 cannot be set on this host");
    assert.equal(error?.lines, ["free it first"]);
    assert.equal(journal.entries, []);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("the deadline stops a run before the next plugin starts", async () => {
  const { sim, env, journal } = setup();
  try {
    const error = await runPlugins("prepare", twoPlugins(), DOMAIN, journal, env, new Deadline(sim, 0)).catch((e: Error) => e);
    assert.match(String(error), /vmhook ran out of time \(deadline 0 s\) while planning a/);
    assert.equal(sim.writes, []);
  } finally {
    sim.cleanup();
  }
});

// ---- through the hook: crashes, failing releases, bad input, unknown events (hugepages as the plugin)

const POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const XML = `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory>
  <memoryBacking><hugepages/></memoryBacking>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/></vmhook:hooks></metadata></domain>`;

function hugepageHost(initialPages = 100): { sim: SimHost; kernel: HugepageKernel } {
  const sim = new SimHost();
  sim.dir("/run/vmhook").dir("/var/log");
  return { sim, kernel: new HugepageKernel(sim, { initial: { 2048: initialPages } }) };
}

/** What a hook killed right after growing the pool leaves: a pending entry in a journal still "preparing". */
function crashedJournal(sim: SimHost): void {
  const journal = newJournal(sim, { name: "vm", uuid: UUID });
  journal.entries.push({
    plugin: "hugepages",
    event: "prepare",
    description: "grow the 2M pool by 512 pages",
    undo: { action: "grow-pool", sizeKiB: 2048, node: null, added: 512, returned: 0 },
    state: "pending",
    at: new Date().toISOString(),
  });
  writeJournal(sim, journal);
}

/** What the undo of crashedJournal's step says: it may not have been made, so it is no change counted. */
const ONE_UNFINISHED = "0 change(s) undone, and 1 unfinished step(s), cut off or failed before they returned and so perhaps never made, checked against the host and given back as far as made";

const firstLine = (stderr: string) => stderr.split("\n")[0]!;

test("the fast path's search for vmhook in a domain's XML takes time in proportion to it: a <description> of \"xmlns:\" repeated (600 KB, written by anyone who may edit the domain) took minutes of a hook libvirt waits for with no time limit", () => {
  const domain = (inside: string) => `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid>${inside}</domain>`;
  for (const text of ["xmlns:".repeat(100_000), "xmlns:p xmlns:".repeat(50_000), 'xmlns="'.repeat(100_000), `xmlns:v${" ".repeat(500_000)}`]) {
    const started = performance.now();
    assert.is(mentionsVmhook(domain(`<description>${text}</description>`)), false);
    const seconds = (performance.now() - started) / 1000;
    assert.ok(seconds < 1, `${text.slice(0, 14)}…: ${seconds.toFixed(1)} s`);
  }
  // What it finds is what it found: vmhook's prefix, or a declaration naming vmhook under any prefix, in any case.
  for (const found of ["<metadata><vmhook:hooks/></metadata>", '<metadata><v:hooks xmlns:v="urn:vmhook:1"/></metadata>', "<metadata><hooks xmlns = 'URN:VMHOOK:2'/></metadata>"]) assert.ok(mentionsVmhook(domain(found)), found);
  for (const notFound of ["<description>vmhook</description>", '<metadata><x:y xmlns:x="urn:other"/></metadata>']) assert.not.ok(mentionsVmhook(domain(notFound)), notFound);
});

test("crash: the next prepare undoes the leftover journal first, then allocates afresh", async () => {
  const { sim, kernel } = hugepageHost(612); // 100 of the admin's + 512 the crashed run added
  try {
    crashedJournal(sim);
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 0, outcome.stderr);
    assert.is(kernel.pool(2048), 612, "the crashed run's 512 went back, this run's 512 came in");
    const journal = readJournal(sim, UUID)!;
    assert.equal([journal.phase, journal.entries.length, journal.entries[0]!.state], ["starting", 1, "applied"]);
    assert.match(sim.read("/var/log/vmhook.log"), "found a journal from an earlier run (phase preparing, 1 change(s)); undoing it first");
    await runHookEvent(sim, "release", "end", XML);
    assert.is(kernel.pool(2048), 100);
  } finally {
    sim.cleanup();
  }
});

test("crash: a prepare whose leftover journal's VM still runs in a QEMU libvirt lost track of refuses, naming the pid; the host and the journal as they were", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    const journalBefore = sim.read(paths.journal(UUID));
    // libvirt's pid file is gone (libvirtd crashed, the domain defined again), the guest runs on
    sim.file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-name\0guest=vm,debug-threads=on\0-uuid\0${UUID.toUpperCase()}\0-m\0size=1048576k\0`);
    // neither another domain's QEMU nor a process gone since (an empty command line) holds it back
    sim.file("/proc/4243/cmdline", "/usr/bin/qemu-system-x86_64\0-uuid\0d1d1d1d1-0000-4000-8000-0000000000d1\0").file("/proc/4244/cmdline", "");
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 1);
    assert.is(
      firstLine(outcome.stderr),
      `vmhook: prepare of vm refused: a QEMU of this domain still runs (pid 4242, -uuid ${UUID}), which libvirt has lost track of; the 1 change(s) an earlier run made for it are kept, not taken from under it`,
    );
    assert.match(outcome.stderr, "shut that guest down from inside, or kill 4242, then start vm again");
    assert.is(kernel.pool(2048), 612);
    assert.is(sim.read(paths.journal(UUID)), journalBefore);

    sim.remove("/proc/4242/cmdline");
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0, "once it is gone, prepare undoes the leftover");
    assert.is(kernel.pool(2048), 612);
  } finally {
    sim.cleanup();
  }
});

test("crash, then virsh domrename: the release libvirt runs after the refused prepare names the domain as libvirt does now, and the recover command it gives is for that name", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    sim.file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-name\0guest=vm,debug-threads=on\0-uuid\0${UUID}\0`);
    const renamed = XML.replace("<name>vm</name>", "<name>win11</name>");
    assert.match((await runHookEvent(sim, "prepare", "begin", renamed, "win11")).stderr, "vmhook: prepare of win11 refused: a QEMU of this domain still runs (pid 4242");
    const released = await runHookEvent(sim, "release", "end", renamed, "win11");
    assert.match(firstLine(released.stderr), "vmhook: release of win11: a QEMU of this domain still runs (pid 4242");
    assert.match(released.stderr, "run vmhook recover win11");
    assert.not.match(released.stderr, /\bvm\b/);
    assert.is(kernel.pool(2048), 612, "the lost guest's pages are still reserved");
  } finally {
    sim.cleanup();
  }
});

test("crash: the stopped and release libvirt runs after that refused prepare keep the journal while the lost QEMU runs, saying why; once it is gone, release gives the changes back", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    const journalBefore = sim.read(paths.journal(UUID));
    sim.file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-name\0guest=vm,debug-threads=on\0-uuid\0${UUID}\0`);
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 1);
    // libvirt's qemuProcessStop after the failed start: stopped, then release (reason failed)
    assert.is((await runHookEvent(sim, "stopped", "end", XML)).code, 0);
    const released = await runHookEvent(sim, "release", "end", XML);
    assert.is(released.code, 0);
    assert.is(
      firstLine(released.stderr),
      `vmhook: release of vm: a QEMU of this domain still runs (pid 4242, -uuid ${UUID}), which libvirt has lost track of, or which has not exited since libvirt killed it (stuck in the kernel); the 1 change(s) its journal holds are kept, not taken from under it`,
    );
    assert.match(released.stderr, "once it has exited (shut that guest down from inside, or kill 4242), run vmhook recover vm");
    assert.is(kernel.pool(2048), 612, "the lost guest's pages are still reserved");
    assert.is(sim.read(paths.journal(UUID)), journalBefore);

    sim.remove("/proc/4242/cmdline");
    assert.equal(await runHookEvent(sim, "release", "end", XML), { code: 0, stderr: "" });
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("crash: vmhook recover and status take a QEMU with the VM's -uuid that libvirt lost track of (no pid file) for the VM running: its journal is kept until it has gone", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    const journalBefore = sim.read(paths.journal(UUID));
    sim.file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-name\0guest=vm,debug-threads=on\0-uuid\0${UUID}\0`);
    const kept = await cli(["recover", "--root", sim.root], sim);
    assert.equal([kept.code, kept.stdout], [0, "vm: still running; its changes are given back when it stops (use --force to undo now)\n"]);
    assert.is(kernel.pool(2048), 612, "the lost guest's pages are still reserved");
    assert.is(sim.read(paths.journal(UUID)), journalBefore);
    assert.match((await cli(["status", "--root", sim.root], sim)).stdout, `vm (${UUID}): running, preparing; vmhook holds for it`);

    sim.remove("/proc/4242/cmdline");
    const recovered = await cli(["recover", "--root", sim.root], sim);
    assert.equal([recovered.code, recovered.stdout], [0, `vm: ${ONE_UNFINISHED}\n`]);
    assert.is(kernel.pool(2048), 100);
  } finally {
    sim.cleanup();
  }
});

test("a hook killed mid-step leaves its step pending: vmhook recover and the release say it was checked and given back as far as it was made, not counted as a change undone; they used to say \"1 change(s) undone\" of a step that may never have been made", async () => {
  for (const by of ["recover", "release"] as const) {
    const { sim, kernel } = hugepageHost(612);
    try {
      crashedJournal(sim);
      if (by === "recover") {
        const recovered = await cli(["recover", "--root", sim.root], sim);
        assert.equal([recovered.code, recovered.stdout], [0, `vm: ${ONE_UNFINISHED}\n`]);
        assert.equal(JSON.parse((await cli(["recover", "--json", "--root", sim.root], sim)).stdout).recovered, [], "nothing left");
      } else {
        assert.equal(await runHookEvent(sim, "release", "end", XML), { code: 0, stderr: "" });
        assert.match(sim.read(paths.log), `released: ${ONE_UNFINISHED}\n`);
      }
      assert.is(kernel.pool(2048), 100, by);
    } finally {
      sim.cleanup();
    }
  }
});

/** prepare, then libvirt's launch of QEMU (pid 4000, its pid file) and started, which notes it. */
async function startedVm(sim: SimHost): Promise<void> {
  assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
  sim.process(4000, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm,debug-threads=on", "-uuid", UUID], { start: 777 });
  sim.file("/run/libvirt/qemu/vm.pid", "4000");
  assert.is((await runHookEvent(sim, "started", "begin", XML)).code, 0);
}

test("a process of any user with a running VM's -uuid in its command line (ps shows it to all) keeps neither the VM's release from giving back what it holds nor its next start: the QEMU is the one libvirt's pid file named at started", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    await startedVm(sim);
    // A local user copies the UUID from ps while the VM runs.
    sim.process(5000, ["bash", "-c", "sleep infinity", "-uuid", UUID], { start: 9000, uid: 1000 });
    // The guest shuts down: its QEMU and pid file are gone; a new process may even take its pid.
    sim.remove("/proc/4000");
    sim.remove("/run/libvirt/qemu/vm.pid");
    sim.process(4000, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], { start: 9999, uid: 1000 });
    assert.equal(await runHookEvent(sim, "release", "end", XML), { code: 0, stderr: "" });
    assert.is(kernel.pool(2048), 100, "the VM's pages went back");
    assert.equal(sim.stateFiles(), []);
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0, "the next start is not refused");
  } finally {
    sim.cleanup();
  }
});

test("vmhook recover and status, after a release that never ran: a process of another user with the VM's -uuid does not pass for its QEMU once the noted one is gone", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    await startedVm(sim);
    sim.process(5000, ["python3", "-c", "import time; time.sleep(1e9)", "-uuid", UUID], { start: 9000, uid: 1000 });
    sim.remove("/proc/4000");
    sim.remove("/run/libvirt/qemu/vm.pid");
    assert.match((await cli(["status", "--root", sim.root], sim)).stdout, `vm (${UUID}): not running`);
    const recovered = await cli(["recover", "--root", sim.root], sim);
    assert.equal([recovered.code, recovered.stdout], [0, "vm: 1 change(s) undone\n"]);
    assert.is(kernel.pool(2048), 100);
  } finally {
    sim.cleanup();
  }
});

test("the QEMU libvirt's pid file named at started, still there at release (stuck in the kernel after libvirt killed it): release keeps the journal, naming it", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    await startedVm(sim);
    sim.remove("/run/libvirt/qemu/vm.pid");
    const released = await runHookEvent(sim, "release", "end", XML);
    assert.match(firstLine(released.stderr), `vmhook: release of vm: a QEMU of this domain still runs (pid 4000, -uuid ${UUID})`);
    assert.is(kernel.pool(2048), 612);
    sim.remove("/proc/4000");
    assert.equal(await runHookEvent(sim, "release", "end", XML), { code: 0, stderr: "" });
    assert.is(kernel.pool(2048), 100);
  } finally {
    sim.cleanup();
  }
});

/** libvirt as Debian installs it: QEMU runs as libvirt-qemu, the build's default, which qemu.conf names only in a comment and libvirt's daemon shows by making it the owner of /var/lib/libvirt/qemu. */
function debianLibvirt(sim: SimHost): void {
  sim.file("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:107:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n");
  sim.file("/etc/libvirt/qemu.conf", '#user = "libvirt-qemu"\n#group = "libvirt-qemu"\n');
  sim.dir("/var/lib/libvirt/qemu").own("/var/lib/libvirt/qemu", 64055);
}

/** What an ordinary user can start with a VM's -uuid (ps shows it): a renamed sleep (bash -c 'exec -a x sleep infinity -uuid …'), or a QEMU of their own. */
function fakeQemus(sim: SimHost, uid = 1000): void {
  sim.process(5000, ["x", "infinity", "-uuid", UUID], { uid });
  sim.process(5001, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm", "-uuid", UUID], { uid });
}

test("a start that failed after prepare (libvirt never reported started): processes of an ordinary user with the VM's -uuid keep neither its release from giving back what it holds nor its next start; a QEMU run as libvirt's QEMU user, or as root, still keeps the journal", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    debianLibvirt(sim);
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    fakeQemus(sim);
    for (const uid of [64055, 0]) {
      sim.process(4000, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], { uid });
      const released = await runHookEvent(sim, "release", "end", XML);
      assert.match(firstLine(released.stderr), `vmhook: release of vm: a QEMU of this domain still runs (pid 4000, -uuid ${UUID})`, `uid ${uid}`);
      assert.is(kernel.pool(2048), 612);
      sim.remove("/proc/4000");
    }
    assert.is((await runHookEvent(sim, "release", "end", XML)).code, 0);
    assert.is(kernel.pool(2048), 100, "the VM's pages went back");
    assert.equal(sim.stateFiles(), []);
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0, "the next start is not refused");
  } finally {
    sim.cleanup();
  }
});

test("prepare after a crash left a journal with no QEMU noted: processes of an ordinary user with the VM's -uuid do not refuse it; it gives back what the earlier run holds and prepares", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    debianLibvirt(sim);
    crashedJournal(sim);
    fakeQemus(sim);
    const prepared = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is(kernel.pool(2048), 612, "the leftover's 512 pages given back, then taken again");
    assert.is(readJournal(sim, UUID)?.entries.length, 1);
  } finally {
    sim.cleanup();
  }
});

test("vmhook status and recover after libvirtd died while it launched QEMU (before started): processes of an ordinary user with the VM's -uuid do not pass for its QEMU", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    debianLibvirt(sim);
    sim.process(300, ["/usr/sbin/libvirtd"], { start: 5000 });
    assert.is((await runHookEvent(sim, "prepare", "begin", XML, "vm", 300)).code, 0);
    sim.remove("/proc/300");
    fakeQemus(sim);
    const gone = "libvirtd (pid 300), which was starting it, is gone";
    assert.match((await cli(["status", "--root", sim.root], sim)).stdout, `vm (${UUID}): its start was abandoned (${gone}), yet vmhook still holds for it`);
    const recovered = await cli(["recover", "--root", sim.root], sim);
    assert.equal([recovered.code, recovered.stdout], [0, `vm: its start was abandoned: ${gone}\nvm: 1 change(s) undone\n`]);
    assert.is(kernel.pool(2048), 100);
  } finally {
    sim.cleanup();
  }
});

test("a domain whose <seclabel model='dac'> runs its QEMU as another user: that user's process with its -uuid keeps the journal at release, as libvirt's QEMU user's would", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    debianLibvirt(sim);
    const xml = XML.replace("</domain>", "<seclabel type='static' model='dac' relabel='yes'><label>alice:alice</label></seclabel></domain>");
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    sim.process(4000, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], { uid: 1000 });
    const released = await runHookEvent(sim, "release", "end", xml);
    assert.match(firstLine(released.stderr), `vmhook: release of vm: a QEMU of this domain still runs (pid 4000, -uuid ${UUID})`);
    assert.is(kernel.pool(2048), 612);
  } finally {
    sim.cleanup();
  }
});

test("crash: release undoes the leftover journal", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    const outcome = await runHookEvent(sim, "release", "end", XML);
    assert.equal(outcome, { code: 0, stderr: "" });
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("release with a failing undo exits 0, keeps the failed entry and says to run vmhook recover; a later release finishes", async () => {
  const { sim, kernel } = hugepageHost();
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    sim.failWrite(POOL, "EBUSY");
    const outcome = await runHookEvent(sim, "release", "end", XML);
    assert.is(outcome.code, 0);
    assert.is(firstLine(outcome.stderr), "vmhook: release of vm: 1 change(s) could not be undone; see /var/log/vmhook.log, then run vmhook recover vm");
    const kept = readJournal(sim, UUID)!;
    assert.is(kept.phase, "release-failed");
    assert.is(kept.entries.length, 1);
    assert.is(kept.entries[0]!.state, "undo-failed");
    assert.match(kept.entries[0]!.error!, /the kernel refused 100 in .*nr_hugepages \(EBUSY\)/);
    assert.is(kernel.pool(2048), 612);

    sim.clearFailures();
    assert.equal(await runHookEvent(sim, "release", "end", XML), { code: 0, stderr: "" });
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("/run gone read-only (EROFS) right after a release gave the pages back: the release says they were given back and that the journal still lists them; vmhook recover (which says the same while /run stays read-only) then gives nothing back twice and removes it; the release used to log \"released: 0 change(s) undone\" and say nothing", async () => {
  const { sim, kernel } = hugepageHost();
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    const createFile = sim.createFile.bind(sim);
    sim.createFile = (file: string, text: string, mode?: number) => {
      if (kernel.pool(2048) === 100) sim.failWrite(`${paths.journal(UUID)}.tmp`, "EROFS").failChange(paths.journal(UUID), "EROFS");
      createFile(file, text, mode);
    };
    const outcome = await runHookEvent(sim, "release", "end", XML);
    sim.createFile = createFile;
    assert.is(outcome.code, 0);
    assert.is(firstLine(outcome.stderr), "vmhook: release of vm: 1 change(s) undone, but the journal does not say so yet", outcome.stderr);
    assert.match(outcome.stderr, /its journal still lists changes already given back or never made: cannot remove \S+ \(EROFS\); its file system is mounted read-only \(findmnt -T \S+\): remount it read-write, then try again, with vmhook recover vm \(the next start does it too\): it checks each against the host, gives nothing back twice, and removes them/);
    assert.is(kernel.pool(2048), 100, "given back");
    assert.is(readJournal(sim, UUID)!.entries.length, 1, "and still listed");
    // --force: the journal still says "starting" (no started came, and the release could not mark it releasing).
    const stuck = await cli(["recover", "vm", "--force", "--root", sim.root], sim);
    assert.is(stuck.code, 1, "recover says so too while /run stays read-only");
    // Worded as the release says it (staleJournalNote), naming the domain.
    assert.match(stuck.stdout, /^vm: 1 change\(s\) undone, but its journal still lists changes already given back or never made: cannot remove \S+ \(EROFS\); .*: remount it read-write, then try again, with vmhook recover vm \(the next start does it too\): it checks each against the host, gives nothing back twice, and removes them\n/);
    assert.is(kernel.pool(2048), 100);
    sim.clearFailures();
    const recover = await cli(["recover", "vm", "--force", "--root", sim.root], sim);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.is(kernel.pool(2048), 100, "the admin's 100 pages stay: nothing is given back twice");
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a prepare whose leftover journal cannot be undone fails, naming vmhook recover", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    sim.failWrite(POOL, "EIO");
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 1);
    assert.is(firstLine(outcome.stderr), "vmhook: an earlier run of vm left changes that cannot be undone; run vmhook recover vm and check vmhook status");
    assert.is(kernel.pool(2048), 612);
  } finally {
    sim.cleanup();
  }
});

test("a domain renamed since its leftover journal (virsh domrename keeps the UUID): the prepare's refusal names vmhook recover with its name now, and that recover finds the journal", async () => {
  const { sim, kernel } = hugepageHost(612);
  try {
    crashedJournal(sim);
    sim.failWrite(POOL, "EIO");
    const renamed = XML.replace("<name>vm</name>", "<name>gaming</name>");
    const outcome = await runHookEvent(sim, "prepare", "begin", renamed, "gaming");
    assert.is(firstLine(outcome.stderr), "vmhook: an earlier run of gaming left changes that cannot be undone; run vmhook recover gaming and check vmhook status");
    sim.clearFailures();
    const recover = await cli(["recover", "gaming", "--root", sim.root], sim);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.match(recover.stdout, "gaming: 1 change(s) undone");
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a hook of vm killed as it renamed its first journal into place leaves only the temp copy: vmhook recover vm removes it, as recover by UUID does, and leaves another domain's; it used to keep it and say there was nothing to recover for vm", async () => {
  const { sim } = hugepageHost(100);
  try {
    const OTHER = "d0d0d0d0-0000-4000-8000-0000000000d0";
    sim.killAtChange(`rename ${paths.journal(UUID)}.tmp to ${paths.journal(UUID)}`);
    await runHookEvent(sim, "prepare", "begin", XML);
    assert.ok(sim.revive(), "killed at the rename");
    sim.killAtChange(`rename ${paths.journal(OTHER)}.tmp to ${paths.journal(OTHER)}`);
    await runHookEvent(sim, "prepare", "begin", XML.replace(UUID, OTHER).replace("<name>vm</name>", "<name>other</name>"), "other");
    assert.ok(sim.revive(), "killed at the rename");
    assert.equal(sim.stateFiles(), [`${UUID}.json.tmp`, `${OTHER}.json.tmp`]);

    const recover = await cli(["recover", "vm", "--root", sim.root], sim);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.equal(sim.stateFiles(), [`${OTHER}.json.tmp`]);
  } finally {
    sim.cleanup();
  }
});

test("/run full (ENOSPC) at prepare's first journal write: the start is refused having changed nothing, and its fix says there is nothing to recover; it used to end in \"then run vmhook recover\" as if something were held", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    sim.failWrite(`${paths.journal(UUID)}.tmp`, "ENOSPC");
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 1);
    assert.is(firstLine(outcome.stderr), `vmhook: cannot write ${paths.journal(UUID)} (ENOSPC: the file system is full); vmhook records every change there before it makes it; free space in /run (df -h /run/vmhook, df -i /run/vmhook); nothing was changed, so there is nothing to recover`);
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("/run full (ENOSPC) once the pool has grown: the prepare fails saying what filled up and what to do, and that the pages stay journaled for vmhook recover, which gives them back once there is room", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    let full = true;
    const createFile = sim.createFile.bind(sim);
    sim.createFile = (file: string, text: string) => {
      if (full && kernel.pool(2048) > 100) sim.failWrite(`${paths.journal(UUID)}.tmp`, "ENOSPC");
      createFile(file, text);
    };
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(outcome.code, 1);
    assert.is(firstLine(outcome.stderr), `vmhook: cannot write ${paths.journal(UUID)} (ENOSPC: the file system is full); vmhook records every change there before it makes it; free space in /run (df -h /run/vmhook, df -i /run/vmhook), then run vmhook recover`);
    assert.match(outcome.stderr, "1 of 1 change(s) could not be undone: run vmhook recover");
    assert.not.match(outcome.stderr, /\n\s+at /, "no stack trace");
    assert.is(kernel.pool(2048), 612, "the shrink is journaled before it is made: with no room for that, the pages stay");
    full = false;
    sim.clearFailures();
    const recover = await cli(["recover", "--root", sim.root], sim);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("out of file descriptors (EMFILE) once the pool has grown: the prepare fails naming the file, the errno and the limit to raise, and gives the pages back, leaving no state file", async () => {
  const { sim, kernel } = hugepageHost(100);
  try {
    // The first read after the pool grew meets the limit; the descriptors come back once the hook's own are closed, as they do.
    let hit = false;
    const readTrimmed = sim.readTrimmed.bind(sim);
    sim.readTrimmed = (file: string) => {
      if (hit || kernel.pool(2048) <= 100) return readTrimmed(file);
      hit = true;
      sim.failRead(file, "EMFILE");
      try {
        return readTrimmed(file);
      } finally {
        sim.clearFailures();
      }
    };
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    assert.ok(hit, "a read after the pool grew");
    assert.is(outcome.code, 1);
    assert.match(firstLine(outcome.stderr), /^vmhook: (hugepages: )?cannot read \/\S+ \(EMFILE\); vmhook reached its limit of open files, which the hook inherits from libvirt's daemon: raise LimitNOFILE= /);
    assert.match(outcome.stderr, `the host was left as it was (${ONE_UNFINISHED})`);
    assert.is(kernel.pool(2048), 100);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("a journal is 'starting' from prepare until libvirt says started, or reconnects to the running VM: then 'running'", async () => {
  const { sim } = hugepageHost(0);
  try {
    await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(readJournal(sim, UUID)!.phase, "starting");
    await runHookEvent(sim, "start", "begin", XML);
    assert.is(readJournal(sim, UUID)!.phase, "starting", "start runs before QEMU is launched");
    assert.is((await runHookEvent(sim, "reconnect", "begin", XML)).code, 0);
    assert.is(readJournal(sim, UUID)!.phase, "running", "libvirtd reconnected to the VM's QEMU");
  } finally {
    sim.cleanup();
  }
});

test("reconnect keeps the journal and the pages, and warns when the pool lost pages", async () => {
  const { sim, kernel } = hugepageHost(0);
  try {
    await runHookEvent(sim, "prepare", "begin", XML);
    assert.is(readJournal(sim, UUID)!.phase, "starting");
    await runHookEvent(sim, "started", "begin", XML);
    assert.is(readJournal(sim, UUID)!.phase, "running", "started: QEMU runs");
    const journal = sim.read(`/run/vmhook/${UUID}.json`);
    assert.equal(await runHookEvent(sim, "reconnect", "begin", XML), { code: 0, stderr: "" });
    assert.is(sim.read(`/run/vmhook/${UUID}.json`), journal);
    assert.is(kernel.pool(2048), 512);
    sim.write(POOL, "10");
    assert.is((await runHookEvent(sim, "reconnect", "begin", XML)).code, 0);
    assert.match(sim.read("/var/log/vmhook.log"), "warn: hugepages: the 2M pool holds 10 pages, fewer than the 512 this VM added");
  } finally {
    sim.cleanup();
  }
});

test("reconnect after a downgrade: a journal naming a plugin this vmhook does not have still lets the others check what they hold, and names the one it cannot", async () => {
  const { sim, kernel } = hugepageHost(0);
  try {
    assert.is((await runHookEvent(sim, "prepare", "begin", XML)).code, 0);
    // A newer vmhook journaled a change of a plugin this (older) one lacks.
    const journal = readJournal(sim, UUID)!;
    const newer = { ...journal.entries[0]!, plugin: "portal", description: "open the portal", undo: { action: "open" } };
    writeJournal(sim, { ...journal, entries: [newer, ...journal.entries] });
    sim.write(POOL, "10");
    assert.equal(await runHookEvent(sim, "reconnect", "begin", XML), { code: 0, stderr: "" });
    const log = sim.read(paths.log);
    assert.match(log, "warn: hugepages: the 2M pool holds 10 pages, fewer than the 512 this VM added");
    assert.match(log, `error: portal: no built-in plugin "portal"; built-in plugins are hugepages,`);
    assert.match(log, "its 1 change(s) in the journal cannot be checked at this reconnect");
    assert.is(readJournal(sim, UUID)!.entries.length, 2, "every change stays for release or vmhook recover");
    assert.is(kernel.pool(2048), 10);
  } finally {
    sim.cleanup();
  }
});

test("reconnect: a plugin whose check, restore step or (first interface) handler fails is logged, and the plugins after it still put back what they lost", async () => {
  const { sim, env, journal } = setup();
  try {
    const cannotCheck = definePlugin<FileSetter>({
      name: "checker",
      summary: "test: a reconnect check that cannot tell",
      parse: () => ({ files: [] }),
      plan: { reconnect: () => { throw new Error("systemctl is-active could not tell: Failed to connect to bus"); } },
      actions: {},
    });
    const restorer = definePlugin<FileSetter>({
      name: "restorer",
      summary: "test: puts a file back at reconnect",
      parse: () => ({ files: [] }),
      plan: { reconnect: () => [{ action: "set-file", record: { action: "set-file", file: "/b1", old: "original\n" }, description: "put /b1 back" }] },
      actions: {
        "set-file": defineAction<SetFileRecord, FileSetter>({
          check: (record) => record as SetFileRecord,
          apply: ({ file }, ctx) => {
            ctx.host.write(file, "restored\n");
            ctx.nothingToUndo();
          },
          undo: () => {},
        }),
      },
    });
    const failingRestorer = definePlugin<FileSetter>({
      ...restorer,
      name: "failing-restorer",
      plan: { reconnect: () => [{ action: "set-file", record: { action: "set-file", file: "/missing/b2", old: "" }, description: "put /missing/b2 back" }] },
    });
    // A custom plugin of the first interface whose reconnect handler throws.
    const legacy: LegacyPlugin<FileSetter> = {
      name: "plugin:old",
      summary: "test: a vmhook 0.1 plugin",
      parse: () => ({ files: [] }),
      reconnect: () => {
        throw new Error("its daemon is gone");
      },
      undo: () => {},
    };
    const instances = [
      instanceOf("checker", cannotCheck, { files: [] }),
      instanceOf("failing-restorer", failingRestorer, { files: [] }),
      { id: "plugin:old", plugin: legacy, config: { files: [] }, elements: [] },
      instanceOf("restorer", restorer, { files: [] }),
    ];
    await runPlugins("reconnect", instances, DOMAIN, journal, env, deadline(sim));
    assert.is(sim.read("/b1"), "restored\n");
    const log = sim.read(paths.log);
    assert.match(log, "warn: checker: reconnect check failed: systemctl is-active could not tell: Failed to connect to bus");
    assert.match(log, "error: failing-restorer: put /missing/b2 back:");
    assert.match(log, "error: plugin:old: its daemon is gone");
  } finally {
    sim.cleanup();
  }
});

test("malformed or wrong XML: prepare fails with the cause first; release and stopped exit 0", async () => {
  const { sim } = hugepageHost();
  try {
    const before = sim.snapshot();
    const cases: [string, RegExp][] = [
      [`<domain><name>vm</name><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">`, /^vmhook: the domain XML on stdin is not well-formed XML: /],
      [`<network xmlns:v="urn:vmhook:1"/>`, /^vmhook: the domain XML on stdin: the root element is <network>, expected <domain>$/],
      ["", /^vmhook: the domain XML on stdin is empty; expected a libvirt <domain> XML document$/],
      [XML.replace("<vmhook:hugepages/>", "<vmhook:hugepage/>"), /^vmhook: <vmhook:hugepage>: is not a vmhook element; did you mean <vmhook:hugepages\/>\?$/],
    ];
    for (const [xml, expected] of cases) {
      const prepared = await runHookEvent(sim, "prepare", "begin", xml);
      assert.is(prepared.code, 1);
      assert.match(firstLine(prepared.stderr), expected);
      for (const [op, subop] of [["stopped", "end"], ["release", "end"], ["reconnect", "begin"]]) {
        assert.is((await runHookEvent(sim, op!, subop!, xml)).code, 0, `${op} ${subop} never fails`);
      }
    }
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
  } finally {
    sim.cleanup();
  }
});

test("migrate and restore check the config and change nothing", async () => {
  const { sim } = hugepageHost();
  try {
    const before = sim.snapshot();
    for (const op of ["migrate", "restore"]) {
      assert.equal(await runHookEvent(sim, op, "begin", XML), { code: 0, stderr: "" });
      const bad = await runHookEvent(sim, op, "begin", XML.replace("<vmhook:hugepages/>", "<vmhook:hugepages size='5M'/>"));
      assert.is(bad.code, 1);
      assert.match(firstLine(bad.stderr), `size="5M" is not a huge page size`);
    }
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("a refused restore says its XML is the one saved with the VM's state, which a fix to the definition does not reach, and how to fix or skip it; a refused migrate says where its XML comes from", async () => {
  const { sim } = hugepageHost();
  try {
    const bad = XML.replace("<vmhook:hugepages/>", "<vmhook:hugepages size='5M'/>");
    const restore = await runHookEvent(sim, "restore", "begin", bad);
    assert.is(restore.code, 1);
    assert.match(firstLine(restore.stderr), `size="5M" is not a huge page size`);
    assert.match(restore.stderr, "saved with vm's state (virsh managedsave, virsh save), not vm's definition: virsh metadata and vmhook config do not change it");
    assert.match(restore.stderr, "to change that XML: virsh managedsave-edit vm (virsh save-image-edit FILE before virsh restore FILE); or virsh start --force-boot vm boots vm afresh from its definition, discarding the saved state");
    const migrate = await runHookEvent(sim, "migrate", "begin", bad);
    assert.is(migrate.code, 1);
    assert.match(firstLine(migrate.stderr), `size="5M" is not a huge page size`);
    assert.match(migrate.stderr, "the XML checked is vm's as it runs on the source host: fix it there (vmhook config vm --edit on the source edits the running domain), or give the destination a fixed one with virsh migrate --xml FILE");
    assert.equal(sim.stateFiles(), []);
    // A host file that cannot be read is this host's to fix, not the XML's.
    sim.file(paths.policy, "{");
    const hostSide = await runHookEvent(sim, "restore", "begin", XML);
    assert.is(hostSide.code, 1);
    assert.match(firstLine(hostSide.stderr), paths.policy);
    assert.not.match(hostSide.stderr, "the XML checked");
  } finally {
    sim.cleanup();
  }
});

test("an unknown event exits 0, changes nothing and leaves a log line", async () => {
  const { sim } = hugepageHost();
  try {
    const before = sim.snapshot();
    assert.equal(await runHookEvent(sim, "teleport", "begin", XML), { code: 0, stderr: "" });
    assert.equal(await runHookEvent(sim, "attach", "begin", XML), { code: 0, stderr: "" });
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
    assert.match(sim.read("/var/log/vmhook.log"), `[vm teleport begin] event "teleport begin" is not one vmhook knows; nothing to do`);
  } finally {
    sim.cleanup();
  }
});

test.run();
