// `vmhook plan` says which planned steps cannot succeed on this host. A plugin
// flags them through its doctor checks (a failing finding tagged with the
// plugin): the plan marks that plugin's steps with the reason and the fix,
// and exits 1.
import type { Finding } from "./diagnostics/doctor.ts";
import type { PlannedStep } from "./transaction.ts";

export interface CheckedStep extends PlannedStep {
  /** Why the step cannot succeed here, with the fix. */
  impossible?: { reason: string; fix?: string };
}

export interface Feasibility {
  steps: CheckedStep[];
  /** Failing checks of plugins that planned no step (they would fail before acting). */
  blocking: Finding[];
}

export function checkFeasibility(steps: PlannedStep[], findings: Finding[]): Feasibility {
  const failing = findings.filter((finding) => finding.status === "fail" && finding.plugin !== undefined);
  const checked = steps.map((step) => {
    const problem = failing.find((finding) => finding.plugin === step.plugin);
    return problem ? { ...step, impossible: { reason: `${problem.check}: ${problem.reason}`, fix: problem.fix } } : step;
  });
  const planned = new Set(steps.map((step) => step.plugin));
  return { steps: checked, blocking: failing.filter((finding) => !planned.has(finding.plugin!)) };
}
