// The built-in plugins, loaded only when a domain's metadata names them, and
// the way to the custom ones (plugins directory): the registry the hook and
// the CLI hand to the runner.
import { CUSTOM_PREFIX } from "../lib/config.ts";
import { quoted, VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import type { AnyPlugin, Plugin, PluginRegistry } from "../lib/plugin.ts";
import { policyRules } from "./policy-rules.ts";

type Loader = () => Promise<Plugin<any>>;

/**
 * In this order in `vmhook plugins`; a domain's plugins run in its metadata's
 * order. A Map: an id read from a journal finds a plugin or nothing, never an
 * object's inherited member ("constructor", "toString").
 */
const BUILTIN = new Map<string, Loader>([
  ["hugepages", async () => (await import("./hugepages.ts")).default],
  ["isolate", async () => (await import("./isolate/index.ts")).default],
  ["mdev", async () => (await import("./mdev.ts")).default],
  ["nosleep", async () => (await import("./nosleep.ts")).default],
  ["vgpu", async () => (await import("./vgpu.ts")).default],
  ["vfio", async () => (await import("./vfio/index.ts")).default],
  ["forward", async () => (await import("./forward/index.ts")).default],
]);

const builtinNames = (): string[] => [...BUILTIN.keys()];

/** A plugin by its journal id: a built-in name or "plugin:NAME". */
async function load(id: string, host: Host): Promise<AnyPlugin> {
  if (id.startsWith(CUSTOM_PREFIX)) {
    const { loadCustomPlugin } = await import("../lib/custom-plugins.ts");
    return loadCustomPlugin(id.slice(CUSTOM_PREFIX.length), host);
  }
  const loader = BUILTIN.get(id);
  if (!loader) throw new VmhookError(`no built-in plugin ${quoted(id)}; built-in plugins are ${builtinNames().join(", ")}`);
  return loader();
}

export const registry: PluginRegistry = { builtinNames, load, policyRules };
