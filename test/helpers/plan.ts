// `vmhook plan` equals what prepare runs: the planned steps of a domain, then
// the steps its prepare applied (from the log, in order), compared.
import * as fs from "node:fs";
import * as assert from "uvu/assert";
import { loadDomainPlugins } from "../../lib/config.ts";
import { Deadline } from "../../lib/deadline.ts";
import { parseDomain } from "../../lib/domain.ts";
import { newJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { paths } from "../../lib/paths.ts";
import { loadSettings } from "../../lib/settings.ts";
import { planEvent } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { runHookEvent } from "./hook.ts";
import type { SimHost } from "./simhost.ts";

/** What `vmhook plan` prints for prepare ("plugin: description"), as the CLI computes it, on this host. */
export async function plannedSteps(sim: SimHost, xml: string): Promise<string[]> {
  const domain = parseDomain(xml, "test");
  const instances = await loadDomainPlugins(domain, sim, registry);
  const env = { host: sim, log: createLogger(sim, { echo: "none", file: false }), settings: loadSettings(sim), registry };
  const steps = await planEvent("prepare", instances, domain, newJournal(sim, { name: domain.name, uuid: domain.uuid }), env, new Deadline(sim, 60_000));
  return steps.map((step) => `${step.plugin}: ${step.description}`);
}

/** Plans prepare, runs it, and asserts it applied exactly the planned steps, in order; returns them. */
export async function assertPlanIsPrepare(sim: SimHost, xml: string, name = "vm"): Promise<string[]> {
  sim.dir("/var/log"); // where the applied steps are logged
  const before = sim.snapshot();
  const planned = await plannedSteps(sim, xml);
  assert.equal(sim.snapshot(), before, "planning changes nothing");
  assert.ok(planned.length > 0, "the plan has steps");
  const outcome = await runHookEvent(sim, "prepare", "begin", xml, name);
  assert.is(outcome.code, 0, outcome.stderr);
  const log = fs.existsSync(sim.resolve(paths.log)) ? fs.readFileSync(sim.resolve(paths.log), "utf8") : "";
  const applied = log
    .split("\n")
    .filter((line) => line.includes(`[${name} prepare begin]`))
    .map((line) => /\] (.*): (done|nothing to undo)$/.exec(line)?.[1])
    .filter((step): step is string => step !== undefined);
  assert.equal(applied, planned, "prepare applied exactly the planned steps");
  return planned;
}
