// `vmhook plan` equals what the hook runs: the planned steps of a domain for an
// event, then the steps that event applied (from the log, in order), compared.
import * as fs from "node:fs";
import * as assert from "uvu/assert";
import { loadDomainPlugins } from "../../lib/config.ts";
import { Deadline } from "../../lib/deadline.ts";
import { parseDomain } from "../../lib/domain.ts";
import { newJournal, readJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import { loadSettings } from "../../lib/settings.ts";
import type { PlannedEvent } from "../../lib/plugin.ts";
import { planEvent } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { runHookEvent } from "./hook.ts";
import type { SimHost } from "./simhost.ts";

/** What `vmhook plan --event EVENT` prints ("plugin: description"), as the CLI computes it, on this host. */
export async function plannedSteps(sim: SimHost, xml: string, event: PlannedEvent = "prepare"): Promise<string[]> {
  const domain = parseDomain(xml, "test");
  const instances = await loadDomainPlugins(domain, sim, registry);
  const env = { host: sim, log: createLogger(sim, { echo: "none", file: false }), settings: loadSettings(sim), registry };
  const steps = await planEvent(event, instances, domain, readJournal(sim, domain.uuid) ?? newJournal(sim, { name: domain.name, uuid: domain.uuid }), env, new Deadline(sim, 60_000));
  return steps.map((step) => `${step.plugin}: ${step.description}${step.refused ? ` REFUSED: ${step.refused.reason}` : ""}`);
}

/** Plans the event (prepare or start), runs it, and asserts it applied exactly the planned steps, in order; returns them. */
export async function assertPlanIsPrepare(sim: SimHost, xml: string, name = "vm", event: "prepare" | "start" = "prepare"): Promise<string[]> {
  sim.dir("/var/log"); // where the applied steps are logged
  const before = sim.snapshot();
  const planned = await plannedSteps(sim, xml, event);
  assert.equal(sim.snapshot(), before, "planning changes nothing");
  assert.ok(planned.length > 0, "the plan has steps");
  const outcome = await runHookEvent(sim, event, "begin", xml, name);
  assert.is(outcome.code, 0, outcome.stderr);
  const log = fs.existsSync(sim.resolve(paths.log)) ? fs.readFileSync(sim.resolve(paths.log), "utf8") : "";
  // A step in the background (Step.background) counts where it started; its "done" comes later.
  const inBackground = new Set<string>();
  const applied = log
    .split("\n")
    .filter((line) => line.includes(`[${name} ${event} begin]`))
    .flatMap((line) => {
      const [, step, outcome] = /\] (.*): (done|nothing to undo|started in the background)$/.exec(line) ?? [];
      if (step === undefined || inBackground.has(step)) return [];
      if (outcome === "started in the background") inBackground.add(step);
      return [step];
    });
  assert.equal(applied, planned, `${event} applied exactly the planned steps`);
  return planned;
}
