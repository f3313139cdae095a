// Every file in the plugins directory, checked, for `vmhook plugins` and
// `vmhook doctor`.
import { describeError } from "../errors.ts";
import type { Host } from "../host.ts";
import { paths } from "../paths.ts";
import { PATTERNS, PLUGIN_NAME_RULE } from "../validate.ts";
import { PROTOCOL_VERSION } from "./executable.ts";
import { importModulePlugin, moduleImports } from "./module.ts";
import { fileRefusal, pluginsDirProblem, type PluginFile } from "./trust.ts";

const DESCRIBE_TIMEOUT_MS = 5_000;

export interface InstalledPlugin {
  name: string;
  path: string;
  kind: PluginFile["kind"];
  summary?: string;
  usage?: string;
  /** Why vmhook refuses or ignores it. */
  problem?: string;
  /** The module plugins that import this file from the plugins directory: a helper module, not a plugin of its own. */
  helperOf?: string[];
}

/** Every file in the plugins directory, checked; `describe` also asks each safe plugin for its summary and usage. */
export async function listInstalledPlugins(host: Host, options: { describe: boolean }): Promise<{ directoryProblem?: string; plugins: InstalledPlugin[] }> {
  // No directory means no plugins; a directory that is unsafe is reported.
  const directoryProblem = host.stat(paths.pluginsDir) ? pluginsDirProblem(host) : undefined;
  const checked = host.list(paths.pluginsDir).map((entry) => {
    const name = entry.replace(/\.m?js$/, "");
    const file: PluginFile = { name, path: `${paths.pluginsDir}/${entry}`, kind: entry === name ? "executable" : "module" };
    const problem = !PATTERNS.pluginName.test(name)
      ? `ignored: "${name}" is not a plugin name (${PLUGIN_NAME_RULE})`
      : directoryProblem
        ? `refused: the plugins directory is unsafe`
        : fileRefusal(host, file);
    // What a module imports is read, never run: doctor too sees a helper the hook would refuse.
    const imports = !problem && file.kind === "module" ? moduleImports(host, file.path) : { files: [] };
    return { file, problem: problem ?? imports.problem, imports: imports.files };
  });
  const plugins: InstalledPlugin[] = [];
  for (const { file, problem } of checked) {
    const helperOf = checked.filter((other) => other.imports.includes(file.path)).map((other) => other.file.name);
    if (helperOf.length > 0) plugins.push({ ...file, helperOf, ...(problem ? { problem } : {}) });
    else plugins.push({ ...file, ...(problem ? { problem } : options.describe ? await describePlugin(host, file) : {}) });
  }
  return { directoryProblem, plugins };
}

/**
 * A plugin's own summary and usage: a module's fields, or an executable's
 * answer to `NAME describe` (optional in the protocol, so no answer is no problem).
 * A module that cannot be loaded is one the hook would refuse.
 */
async function describePlugin(host: Host, file: PluginFile): Promise<Pick<InstalledPlugin, "summary" | "usage" | "problem">> {
  if (file.kind === "module") {
    try {
      const plugin = await importModulePlugin(host, file);
      return { summary: plugin.summary, usage: plugin.usage };
    } catch (error) {
      return { problem: describeError(error) };
    }
  }
  const result = host.exec(file.path, ["describe"], { timeoutMs: DESCRIBE_TIMEOUT_MS, input: JSON.stringify({ protocol: PROTOCOL_VERSION, event: "describe" }) });
  const failure = result.error ?? (result.timedOut ? "timed out" : result.status !== 0 ? `exited ${result.status ?? result.signal}` : undefined);
  let reply: { summary?: unknown; usage?: unknown } | undefined;
  try {
    reply = failure ? undefined : JSON.parse(result.stdout || "{}");
  } catch {
    reply = undefined;
  }
  if (typeof reply !== "object" || reply === null) return { summary: `(no description: "${file.name} describe" ${failure ?? "did not print a JSON object"})` };
  return {
    summary: typeof reply.summary === "string" ? reply.summary : undefined,
    usage: typeof reply.usage === "string" ? reply.usage : undefined,
  };
}
