// Types for vmhook plugin authors: the same Plugin interface the built-in
// plugins implement. A JavaScript plugin gets completion and checking with
//   // @ts-check
//   /** @type {import("/path/to/vmhook/types/vmhook-plugin").Plugin<MyConfig>} */
//   export default { name: "my-plugin", ... };
// (see docs/plugins.md; resolving these types needs a vmhook checkout after npm ci).
//
// A plugin: parse(elements, domain) → config; plan.EVENT(ctx) → steps (reads
// the host, changes nothing); actions[kind] = { check, apply, undo } per kind
// of step. The first interface (handlers calling ctx.step, one undo) is
// LegacyPlugin: still run for custom JavaScript plugins, see docs/plugins.md.
export type {
  Action,
  ApplyContext,
  BaseContext,
  Finding,
  HookEvent,
  Json,
  LegacyContext,
  LegacyPlugin,
  PlanContext,
  PlannedEvent,
  Planner,
  Plugin,
  Refusal,
  Step,
  StepHandle,
  UndoRecord,
} from "../lib/plugin.ts";
export type { Claim, Claims } from "../lib/claims.ts";
export type { ExecResult, FileStat, Host } from "../lib/host.ts";
export type { Domain, MdevHostdev, PciHostdev } from "../lib/domain.ts";
export type { Journal, JournalEntry } from "../lib/journal.ts";
export type { Logger } from "../lib/log.ts";
export type { Element } from "@xmldom/xmldom";
