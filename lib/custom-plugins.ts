// Custom plugins: files in the plugins directory (/etc/vmhook/plugins.d) that
// a domain names with <vmhook:plugin name="NAME">. Two kinds, both behind the
// same Plugin interface as the built-ins, so their steps join the same
// journal and are undone in the same order:
//   NAME               an executable in any language, speaking protocol v1
//                      (custom-plugins/executable.ts)
//   NAME.js, NAME.mjs  a JavaScript module whose default export is a Plugin
//                      (custom-plugins/module.ts)
// Whether a file may run at all: custom-plugins/trust.ts.
import type { Host } from "./host.ts";
import type { AnyPlugin } from "./plugin.ts";
import { executablePlugin } from "./custom-plugins/executable.ts";
import { importModulePlugin } from "./custom-plugins/module.ts";
import { findCustomPlugin } from "./custom-plugins/trust.ts";

export { customPluginPresent, findCustomPlugin } from "./custom-plugins/trust.ts";
export { listInstalledPlugins, type InstalledPlugin } from "./custom-plugins/listing.ts";

/** Plugin NAME as a Plugin object: its file is found, checked and (for modules) imported. */
export async function loadCustomPlugin(name: string, host: Host): Promise<AnyPlugin> {
  const file = findCustomPlugin(host, name);
  return file.kind === "module" ? importModulePlugin(host, file) : (executablePlugin(file) as AnyPlugin);
}
