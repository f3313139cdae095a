// Where custom plugins are found and whether vmhook may run them: the hook
// runs as root, so a plugin is only loaded from a directory and a file that
// root owns and nobody else can write.
import { attributeText, quoted, VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import { paths } from "../paths.ts";
import { PATTERNS, PLUGIN_NAME_RULE } from "../validate.ts";

/** Plugins run as root: root must own them. */
export const ROOT_UID = 0;

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

export const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;

/**
 * Why vmhook refuses to trust this path, or undefined when it is safe: root
 * owns it, group and others cannot write it, and it is no symlink (whose
 * target would escape the check). `because` says what root trusts it for.
 */
function unsafeReason(host: Host, hostPath: string, kind: "directory" | "file", because = "plugins run as root"): string | undefined {
  const stat = host.stat(hostPath);
  if (!stat) return `${hostPath} does not exist`;
  if (stat.isSymlink) return `${hostPath} is a symlink; vmhook only trusts what it can check, so put the real ${kind} there`;
  if (kind === "directory" ? !stat.isDirectory : !stat.isFile) return `${hostPath} is not a ${kind === "directory" ? "directory" : "regular file"}`;
  if (stat.uid !== ROOT_UID) {
    return `${hostPath} is owned by uid ${stat.uid}, not root; ${because}, so run chown root:root ${hostPath}`;
  }
  if ((stat.mode & 0o022) !== 0) {
    return `${hostPath} has mode ${octal(stat.mode)}: group or others can write it, and ${because}; run chmod go-w ${hostPath}`;
  }
  return undefined;
}

/**
 * Why a directory above `hostPath` is unsafe (unsafeReason), or undefined:
 * whoever can write one of them can rename what is below and put their own
 * in its place.
 */
function unsafeAbove(host: Host, hostPath: string, because?: string): string | undefined {
  for (let dir = parentOf(hostPath); ; dir = parentOf(dir)) {
    const problem = unsafeReason(host, dir, "directory", because);
    if (problem || dir === "/") return problem;
  }
}

const parentOf = (absolute: string) => absolute.slice(0, absolute.lastIndexOf("/")) || "/";

/** Why root cannot trust `hostPath`, or undefined: it and every directory above it must pass unsafeReason. */
export function rootsAloneProblem(host: Host, hostPath: string, kind: "directory" | "file", because?: string): string | undefined {
  return unsafeReason(host, hostPath, kind, because) ?? unsafeAbove(host, hostPath, because);
}

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
