// Where custom plugins are found and whether vmhook may run them: the hook
// runs as root, so a plugin is only loaded from a directory and a file that
// root owns and nobody else can write.
import { attributeText, quoted, VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import { paths } from "../paths.ts";
import { rootsAloneProblem as rootsAloneRule, unsafeReason } from "../root-alone.ts";
import { PATTERNS, PLUGIN_NAME_RULE } from "../validate.ts";

export interface PluginFile {
  name: string;
  /** Host path, e.g. /etc/vmhook/plugins.d/looking-glass.mjs */
  path: string;
  kind: "executable" | "module";
}

/** The files that may hold plugin NAME, in the order they are looked for. */
function candidates(name: string): PluginFile[] {
  const base = `${paths.pluginsDir}/${name}`;
  return [
    { name, path: base, kind: "executable" },
    { name, path: `${base}.js`, kind: "module" },
    { name, path: `${base}.mjs`, kind: "module" },
  ];
}

/** Why root cannot trust `hostPath` of this host, or undefined: it and every directory above it must be root's alone (lib/root-alone.ts). */
export const rootsAloneProblem = (host: Host, hostPath: string, kind: "directory" | "file", because?: string): string | undefined => rootsAloneRule(host, hostPath, kind, because);

/** Why the plugins directory is unsafe, or undefined. */
export const pluginsDirProblem = (host: Host): string | undefined => rootsAloneProblem(host, paths.pluginsDir, "directory");

/** Whether a file that may hold plugin NAME is there, trusted or not. */
export const customPluginPresent = (host: Host, name: string): boolean => PATTERNS.pluginName.test(name) && candidates(name).some((file) => host.stat(file.path) !== undefined);

/** Finds plugin NAME's file and checks it. Throws naming what was searched, or what is unsafe and how to fix it. */
export function findCustomPlugin(host: Host, name: string): PluginFile {
  const element = `<vmhook:plugin ${attributeText("name", name)}>`;
  if (!PATTERNS.pluginName.test(name)) {
    throw new VmhookError(`${element}: ${quoted(name)} is not a plugin name (${PLUGIN_NAME_RULE}); plugin names are never paths`);
  }
  if (!host.stat(paths.pluginsDir)) {
    throw new VmhookError(`${element}: plugin ${name} is not installed: ${paths.pluginsDir} does not exist; create it (owned by root, mode 755) and install the plugin there`);
  }
  const directoryProblem = pluginsDirProblem(host);
  if (directoryProblem) {
    throw new VmhookError(`${element}: refusing to load plugins: ${directoryProblem}`);
  }
  const found = candidates(name).filter((file) => host.stat(file.path) !== undefined);
  if (found.length === 0) {
    const looked = candidates(name).map((file) => file.path.slice(paths.pluginsDir.length + 1)).join(", ");
    throw new VmhookError(`${element}: plugin ${name} is not installed: searched ${paths.pluginsDir} for ${looked}; install it there (owned by root, mode 755) or fix the name`);
  }
  const file = found[0]!;
  const problem = fileRefusal(host, file);
  if (problem) throw new VmhookError(`${element}: refusing to run plugin ${name}: ${problem}`);
  return file;
}

/** Why the hook would refuse this plugin file (its directory being safe), or undefined. */
export function fileRefusal(host: Host, file: PluginFile): string | undefined {
  const others = candidates(file.name).filter((other) => other.path !== file.path && host.stat(other.path) !== undefined);
  if (others.length > 0) return `${[file, ...others].map((each) => each.path).join(" and ")} both exist; keep one`;
  const unsafe = unsafeReason(host, file.path, "file");
  if (unsafe) return unsafe;
  if (file.kind === "executable" && (host.stat(file.path)!.mode & 0o100) === 0) {
    return `${file.path} is not executable; run chmod 755 ${file.path} (or rename a JavaScript module to ${file.name}.mjs)`;
  }
  return undefined;
}
