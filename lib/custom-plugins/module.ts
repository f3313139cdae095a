// Custom plugins as JavaScript modules (NAME.js, NAME.mjs): the default
// export is a Plugin, or a plugin of the first interface that the runner
// still runs through its adapter.
import { pathToFileURL } from "node:url";
import { describeError, VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import type { AnyPlugin } from "../plugin.ts";
import { transpilerCacheProblem, type PluginFile } from "./trust.ts";

/**
 * A module's default export: a Plugin (plan + actions), or a plugin of the
 * first interface (handlers calling ctx.step, one undo), which still runs
 * through the runner's adapter (docs/plugins.md, "Migrating").
 */
export async function importModulePlugin(host: Host, file: PluginFile): Promise<AnyPlugin> {
  const cacheProblem = transpilerCacheProblem();
  if (cacheProblem) throw new VmhookError(`plugin ${file.name}: not loading ${file.path}: ${cacheProblem}`);
  let module: { default?: unknown };
  try {
    module = await import(pathToFileURL(host.resolve(file.path)).href);
  } catch (error) {
    throw new VmhookError(`plugin ${file.name}: ${file.path} could not be loaded: ${describeError(error).split("\n")[0]}`);
  }
  const problem = moduleProblem(module.default, file.name);
  if (problem) throw new VmhookError(`plugin ${file.name}: ${file.path} ${problem}`);
  return module.default as AnyPlugin;
}

function moduleProblem(value: unknown, name: string): string | undefined {
  if (typeof value !== "object" || value === null) return "has no default export; write export default { name, summary, parse, plan, actions }";
  const plugin = value as Record<string, unknown>;
  if (plugin.name !== name && plugin.name !== `plugin:${name}`) return `exports name ${JSON.stringify(plugin.name)}; set name: "${name}" (the file's name)`;
  if (typeof plugin.parse !== "function") return "must export the function parse(elements, domain)";
  if (!("actions" in plugin)) {
    return typeof plugin.undo === "function" ? undefined : "must export plan and actions (or, in the first interface, handlers and undo(record, ctx)); see docs/plugins.md";
  }
  if (typeof plugin.plan !== "object" || plugin.plan === null || typeof plugin.actions !== "object" || plugin.actions === null) return "must export plan: { prepare(ctx) {...} } and actions: { KIND: { check, apply, undo } }";
  const incomplete = Object.entries(plugin.actions as Record<string, Record<string, unknown>>).find(([, action]) => ["check", "apply", "undo"].some((hook) => typeof action?.[hook] !== "function"));
  if (incomplete) return `action ${incomplete[0]} must have the functions check(record), apply(record, ctx) and undo(record, ctx)`;
  return undefined;
}
