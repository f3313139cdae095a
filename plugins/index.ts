// The built-in plugins, loaded only when a domain's metadata names them, and
// the way to the custom ones (plugins directory).
import { VmhookError } from "../lib/errors.ts";
import type { Host } from "../lib/host.ts";
import type { Plugin } from "../lib/plugin.ts";

type Loader = () => Promise<Plugin<any>>;

/** In this order in `vmhook plugins`; a domain's plugins run in its metadata's order. */
const BUILTIN: Record<string, Loader> = {
  hugepages: async () => (await import("./hugepages.ts")).default,
  isolate: async () => (await import("./isolate.ts")).default,
  mdev: async () => (await import("./mdev.ts")).default,
  nosleep: async () => (await import("./nosleep.ts")).default,
  vgpu: async () => (await import("./mdev.ts")).vgpu,
  vfio: async () => (await import("./vfio/index.ts")).default,
};

/** The element <vmhook:plugin name="NAME"> names a custom plugin. */
export const CUSTOM_ELEMENT = "plugin";
export const CUSTOM_PREFIX = "plugin:";

export const builtinNames = (): string[] => Object.keys(BUILTIN);

/** A plugin by its journal id: a built-in name or "plugin:NAME". */
export async function loadPlugin(id: string, host: Host): Promise<Plugin<unknown>> {
  if (id.startsWith(CUSTOM_PREFIX)) {
    const { loadCustomPlugin } = await import("../lib/custom-plugins.ts");
    return loadCustomPlugin(id.slice(CUSTOM_PREFIX.length), host);
  }
  const loader = BUILTIN[id];
  if (!loader) throw new VmhookError(`no built-in plugin "${id}"; built-in plugins are ${builtinNames().join(", ")}`);
  return loader();
}

