// `vmhook plan` marks the planned steps that cannot succeed on this host with
// the one refusal mark planners use (Step.refused). Besides the planners' own
// marks, a plugin flags them through its doctor checks (a failing finding
// tagged with the plugin): the plan marks that plugin's steps with the reason
// and the fix, and exits 1.
import type { Finding } from "./diagnostics/findings.ts";
import type { Refusal } from "./plugin.ts";
import type { PlannedStep } from "./transaction.ts";

export interface Refusals {
  steps: PlannedStep[];
  /** Failing checks of plugins that plan this event but planned no step (they would fail before acting). */
  blocking: Finding[];
}

/** A failing finding as a refusal: the check and why, then the fix. */
export function refusalOf(finding: Finding): Refusal {
  return { reason: `${finding.check}: ${finding.reason}`, remedies: finding.fix ? [finding.fix] : [] };
}

/** `planning`: the plugins that plan this event; a failing check of another (one acting at a later event) blocks nothing here. */
export function markRefused(steps: PlannedStep[], findings: Finding[], planning: string[]): Refusals {
  // A check that reports what a planner refuses on a step of its own (vfio's unload-modules) is that refusal, by the key both carry: it marks no other step.
  const plannerRefuses = (finding: Finding) => finding.refusal !== undefined && steps.some((step) => step.plugin === finding.plugin && step.refused?.key === finding.refusal);
  const failing = findings.filter((finding) => finding.status === "fail" && finding.plugin !== undefined && !plannerRefuses(finding));
  const marked = steps.map((step) => {
    const problem = failing.find((finding) => finding.plugin === step.plugin);
    // A planner's own refusal is the more precise one: it stays.
    return problem && !step.refused ? { ...step, refused: refusalOf(problem) } : step;
  });
  const planned = new Set(steps.map((step) => step.plugin));
  return { steps: marked, blocking: failing.filter((finding) => planning.includes(finding.plugin!) && !planned.has(finding.plugin!)) };
}
