// Types for vmhook plugin authors: the same Plugin interface the built-in
// plugins implement. A JavaScript plugin gets completion and checking with
//   // @ts-check
//   /** @type {import("/path/to/vmhook/types/vmhook-plugin").Plugin<MyConfig>} */
//   export default { name: "my-plugin", ... };
// (see docs/plugins.md; resolving these types needs a vmhook checkout after npm ci).
export type {
  BaseContext,
  Handler,
  HookEvent,
  Json,
  Plugin,
  PluginContext,
  StepHandle,
  UndoRecord,
} from "../lib/plugin.ts";
export type { ExecResult, FileStat, Host } from "../lib/host.ts";
export type { Domain, MdevHostdev, PciHostdev } from "../lib/domain.ts";
export type { Journal, JournalEntry } from "../lib/journal.ts";
export type { Logger } from "../lib/log.ts";
export type { Element } from "@xmldom/xmldom";
