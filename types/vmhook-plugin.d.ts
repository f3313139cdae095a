// Types for vmhook plugin authors: the same Plugin interface the built-in
// plugins implement. A JavaScript plugin gets completion and checking with
//   // @ts-check
//   /** @type {import("/path/to/vmhook/types/vmhook-plugin").Plugin<MyConfig>} */
//   export default { name: "my-plugin", ... };
// (see docs/plugins.md; resolving these types needs a vmhook checkout after npm ci).
//
// A plugin: parse(elements, domain) → config; plan.EVENT(ctx) → steps (reads
// the host, changes nothing); actions[kind] = { check, apply, undo } per kind
// of step, with unchangedAfterFailure when a failed apply may leave the host as it was. The first interface (handlers calling ctx.step, one undo) is
// LegacyPlugin: still run for custom JavaScript plugins, see docs/plugins.md.
export type {
  Action,
  ApplyContext,
  BaseContext,
  HookEvent,
  Json,
  LegacyContext,
  PlanContext,
  PlannedEvent,
  Planner,
  Refusal,
  Step,
  StepHandle,
  UndoContext,
  UndoRecord,
} from "../lib/plugin.ts";
export type { Finding } from "../lib/diagnostics/findings.ts";
export type { Claim, Claims } from "../lib/claims.ts";
export type { ExecResult, FileStat, Host } from "../lib/host.ts";
export type { Domain, MdevHostdev, PciHostdev } from "../lib/domain.ts";
export type { Journal, JournalEntry } from "../lib/journal.ts";
export type { Logger } from "../lib/log.ts";
import type { Element } from "@xmldom/xmldom";
import type { LegacyPlugin as AnyElementLegacyPlugin, Plugin as AnyElementPlugin } from "../lib/plugin.ts";
export type { Element };
/** A custom plugin's parse gets xmldom elements: every DOM method works on them. */
export type Plugin<Config = unknown> = AnyElementPlugin<Config, Element>;
export type LegacyPlugin<Config = unknown> = AnyElementLegacyPlugin<Config, Element>;
