// Custom plugins: files in the plugins directory (/etc/vmhook/plugins.d) that
// a domain names with <vmhook:plugin name="NAME">. Two kinds, both behind the
// same Plugin interface as the built-ins, so their steps join the same
// journal and are undone in the same order:
//   NAME               an executable in any language, speaking protocol v1
//                      (JSON on stdin, JSON on stdout; docs/plugins.md)
//   NAME.js, NAME.mjs  a JavaScript module whose default export is a Plugin
// The hook runs as root, so a plugin is only loaded from a directory and a
// file that root owns and nobody else can write.
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { XMLSerializer, type Element } from "@xmldom/xmldom";
import { attributes } from "./domain.ts";
import { describeError, VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";
import type { BaseContext, Json, Plugin, PluginContext, UndoRecord } from "./plugin.ts";
import { PATTERNS } from "./validate.ts";

export const PROTOCOL_VERSION = 1;
/** Plugins run as root: root must own them. */
const ROOT_UID = 0;
const DEFAULT_TIMEOUT_SECONDS = 30;
const DESCRIBE_TIMEOUT_MS = 5_000;

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

const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;

/**
 * Why vmhook refuses to trust this path, or undefined when it is safe: root
 * owns it, group and others cannot write it, and it is no symlink (whose
 * target would escape the check). `because` says what root trusts it for.
 */
export function unsafeReason(host: Host, hostPath: string, kind: "directory" | "file", because = "plugins run as root"): string | undefined {
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
 * Why the plugins directory is unsafe, or undefined: it and every directory
 * above it must pass unsafeReason, since whoever can write /etc/vmhook can
 * rename plugins.d and put a directory of their own in its place.
 */
function pluginsDirProblem(host: Host): string | undefined {
  for (let dir = paths.pluginsDir; ; dir = path.posix.dirname(dir)) {
    const problem = unsafeReason(host, dir, "directory");
    if (problem || dir === "/") return problem;
  }
}

/** Finds plugin NAME's file and checks it. Throws naming what was searched, or what is unsafe and how to fix it. */
export function findCustomPlugin(host: Host, name: string): PluginFile {
  const element = `<vmhook:plugin name="${name}">`;
  if (!PATTERNS.pluginName.test(name)) {
    throw new VmhookError(`${element}: "${name}" is not a plugin name (lower-case letters, digits, ".", "_", "-"); plugin names are never paths`);
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
function fileRefusal(host: Host, file: PluginFile): string | undefined {
  const others = candidates(file.name).filter((other) => other.path !== file.path && host.stat(other.path) !== undefined);
  if (others.length > 0) return `${[file, ...others].map((each) => each.path).join(" and ")} both exist; keep one`;
  const unsafe = unsafeReason(host, file.path, "file");
  if (unsafe) return unsafe;
  if (file.kind === "executable" && (host.stat(file.path)!.mode & 0o100) === 0) {
    return `${file.path} is not executable; run chmod 755 ${file.path} (or rename a JavaScript module to ${file.name}.mjs)`;
  }
  return undefined;
}

/** Plugin NAME as a Plugin object: its file is found, checked and (for modules) imported. */
export async function loadCustomPlugin(name: string, host: Host): Promise<Plugin<unknown>> {
  const file = findCustomPlugin(host, name);
  return file.kind === "module" ? importModulePlugin(host, file) : (executablePlugin(file) as Plugin<unknown>);
}

// ---------------------------------------------------------------------------
// JavaScript modules

async function importModulePlugin(host: Host, file: PluginFile): Promise<Plugin<unknown>> {
  let module: { default?: unknown };
  try {
    module = await import(pathToFileURL(host.resolve(file.path)).href);
  } catch (error) {
    throw new VmhookError(`plugin ${file.name}: ${file.path} could not be loaded: ${describeError(error).split("\n")[0]}`);
  }
  const plugin = module.default as Partial<Plugin<unknown>> | undefined;
  const problem =
    typeof plugin !== "object" || plugin === null
      ? "has no default export; write export default { name, summary, parse, undo, ... }"
      : plugin.name !== file.name && plugin.name !== `plugin:${file.name}`
        ? `exports name ${JSON.stringify(plugin.name)}; set name: "${file.name}" (the file's name)`
        : typeof plugin.parse !== "function" || typeof plugin.undo !== "function"
          ? "must export the functions parse(elements, domain) and undo(record, ctx)"
          : undefined;
  if (problem) throw new VmhookError(`plugin ${file.name}: ${file.path} ${problem}`);
  return plugin as Plugin<unknown>;
}

// ---------------------------------------------------------------------------
// Executables, protocol v1

/** The plugin's metadata element, as XML and as a simple JSON form. */
export interface ElementJson {
  name: string;
  attributes: Record<string, string>;
  /** The element's own text, trimmed. */
  text: string;
  children: ElementJson[];
}

interface ExecutableConfig {
  element: ElementJson & { xml: string };
  domainXml: string;
}

/** The journal record of one run: `finished` once the plugin reported back. */
interface RunRecord extends UndoRecord {
  action: "run";
  event: string;
  finished: boolean;
  /** What the plugin returned as "undo": handed back to it at release. */
  undo: Json;
}

interface Reply {
  undo?: Json;
  error?: string;
}

function elementJson(element: Element): ElementJson {
  const children: ElementJson[] = [];
  let text = "";
  for (let node = element.firstChild; node; node = node.nextSibling) {
    if (node.nodeType === 1) children.push(elementJson(node as Element));
    else if (node.nodeType === 3 || node.nodeType === 4) text += node.nodeValue ?? "";
  }
  return { name: element.localName ?? element.tagName, attributes: attributes(element), text: text.trim(), children };
}

/** Environment for shell plugins: the same facts as the JSON, without a JSON parser. */
function environment(request: Record<string, Json>, config?: ExecutableConfig): Record<string, string> {
  const domain = request.domain as { name: string; uuid: string };
  const env: Record<string, string> = {
    VMHOOK_PROTOCOL: String(PROTOCOL_VERSION),
    VMHOOK_EVENT: String(request.event),
    VMHOOK_DOMAIN_NAME: domain.name,
    VMHOOK_DOMAIN_UUID: domain.uuid,
  };
  for (const [name, value] of Object.entries(config?.element.attributes ?? {})) {
    env[`VMHOOK_ATTR_${name.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`] = value;
  }
  if (request.event === "undo") {
    // A string comes back verbatim, so a shell plugin can keep its state as words.
    if (request.undo !== null) env.VMHOOK_UNDO = typeof request.undo === "string" ? request.undo : JSON.stringify(request.undo);
    if (request.interrupted) env.VMHOOK_INTERRUPTED = "1";
  }
  return env;
}

function timeoutMs(ctx: BaseContext, file: PluginFile): number {
  const seconds = ctx.settings.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  if (typeof seconds !== "number" || !(seconds > 0)) {
    throw new VmhookError(`${paths.hostConfig}: "plugins": {"plugin:${file.name}": {"timeoutSeconds": ${JSON.stringify(seconds)}}} must be a positive number of seconds`);
  }
  return seconds * 1000;
}

/** Runs the plugin once for `request.event` and reads its reply. Throws when it did not finish cleanly. */
function invoke(ctx: BaseContext, file: PluginFile, request: Record<string, Json>, config?: ExecutableConfig): Reply {
  const event = String(request.event);
  const who = `plugin ${file.name} (${file.path})`;
  ctx.deadline.check(`starting ${who} for ${event}`);
  const limit = ctx.deadline.clamp(timeoutMs(ctx, file));
  const result = ctx.host.exec(file.path, [event], { timeoutMs: limit, input: JSON.stringify(request), env: environment(request, config) });
  const stderr = result.stderr.split("\n").filter((line) => line.trim() !== "");
  for (const line of stderr) ctx.log.info(`plugin:${file.name}: ${line}`);
  const lastWords = stderr.length > 0 ? `: ${stderr[stderr.length - 1]}` : " (nothing on stderr)";

  // ENOBUFS: the output went past the host's buffer and the plugin was killed.
  if (result.error?.includes("ENOBUFS")) throw new VmhookError(`${who} printed more than vmhook reads at ${event} and was killed; print only the JSON reply on stdout (logs go to stderr)`);
  if (result.error) throw new VmhookError(`${who} could not be started for ${event}: ${result.error}`);
  if (result.timedOut) {
    throw new VmhookError(`${who} did not finish ${event} within ${(limit / 1000).toFixed(1)} s and was killed; make it faster or raise "timeoutSeconds" under "plugins": {"plugin:${file.name}": …} in ${paths.hostConfig}`);
  }
  if (result.status !== 0) {
    throw new VmhookError(`${who} failed at ${event}: ${result.status === null ? `killed by ${result.signal}` : `exit status ${result.status}`}${lastWords}`);
  }
  return parseReply(result.stdout, who, event);
}

function parseReply(stdout: string, who: string, event: string): Reply {
  if (stdout.trim() === "") return {};
  let reply: unknown;
  try {
    reply = JSON.parse(stdout);
  } catch {
    throw new VmhookError(`${who} printed something that is not JSON at ${event}: ${JSON.stringify(stdout.trim().slice(0, 80))}; print {"undo": …}, {"error": "…"} or nothing (logs go to stderr)`);
  }
  if (typeof reply !== "object" || reply === null || Array.isArray(reply)) {
    throw new VmhookError(`${who} printed ${JSON.stringify(reply)} at ${event}; the reply must be a JSON object such as {"undo": …} or {"error": "…"}`);
  }
  const { undo, error } = reply as Reply;
  if (error !== undefined && typeof error !== "string") throw new VmhookError(`${who} printed an "error" that is not a string at ${event}`);
  return { undo, error };
}

function request(ctx: BaseContext, event: string, fields: Record<string, Json>): Record<string, Json> {
  return { protocol: PROTOCOL_VERSION, event, domain: ctx.domain, ...fields };
}

/**
 * One run of the plugin for a hook event, as one journaled step: the record is
 * journaled unfinished *before* the plugin runs, so a plugin that crashes,
 * hangs or prints garbage still gets its undo call ("interrupted") at release.
 */
async function runForEvent(ctx: PluginContext<ExecutableConfig>, file: PluginFile): Promise<void> {
  const pending: RunRecord = { action: "run", event: ctx.event, finished: false, undo: null };
  const records = (ctx.records as RunRecord[]).filter((record) => record.finished && record.undo !== null).map((record) => record.undo);
  await ctx.step(`run ${file.path} ${ctx.event}`, pending, (handle) => {
    const reply = invoke(ctx, file, request(ctx, ctx.event, { config: ctx.config.element as unknown as Json, records, domainXml: ctx.config.domainXml }), ctx.config);
    // It reported back: what it says it changed (also with an error) is what release undoes.
    if (reply.undo === undefined || reply.undo === null) handle.nothingToUndo();
    else handle.update({ ...pending, finished: true, undo: reply.undo });
    if (reply.error !== undefined) throw new VmhookError(`plugin ${file.name} failed at ${ctx.event}: ${reply.error}`);
  });
}

function executablePlugin(file: PluginFile): Plugin<ExecutableConfig> {
  const handler = (ctx: PluginContext<ExecutableConfig>) => runForEvent(ctx, file);
  return {
    name: `plugin:${file.name}`,
    summary: `executable plugin ${file.path}`,
    usage: `<vmhook:plugin name="${file.name}" …/>`,
    parse(elements) {
      // config.ts allows one element per custom plugin; checking its content is the plugin's job.
      const element = elements[0]!;
      return {
        element: { xml: new XMLSerializer().serializeToString(element), ...elementJson(element) },
        domainXml: element.ownerDocument ? new XMLSerializer().serializeToString(element.ownerDocument) : "",
      };
    },
    prepare: handler,
    start: handler,
    started: handler,
    stopped: handler,
    reconnect: handler,
    undo(record, ctx) {
      const run = record as RunRecord;
      if (run.finished && run.undo === null) return; // it said it changed nothing
      const reply = invoke(ctx, file, request(ctx, "undo", { undo: run.undo, interrupted: !run.finished, of: run.event }));
      if (reply.error !== undefined) throw new VmhookError(`plugin ${file.name} could not undo its ${run.event}: ${reply.error}`);
    },
  };
}

// ---------------------------------------------------------------------------
// Listing, for `vmhook plugins` and `vmhook doctor`

export interface InstalledPlugin {
  name: string;
  path: string;
  kind: PluginFile["kind"];
  summary?: string;
  usage?: string;
  /** Why vmhook refuses or ignores it. */
  problem?: string;
}

/** Every file in the plugins directory, checked; `describe` also asks each safe plugin for its summary and usage. */
export async function listInstalledPlugins(host: Host, options: { describe: boolean }): Promise<{ directoryProblem?: string; plugins: InstalledPlugin[] }> {
  // No directory means no plugins; a directory that is unsafe is reported.
  const directoryProblem = host.stat(paths.pluginsDir) ? pluginsDirProblem(host) : undefined;
  const plugins: InstalledPlugin[] = [];
  for (const entry of host.list(paths.pluginsDir)) {
    const name = entry.replace(/\.m?js$/, "");
    const file: PluginFile = { name, path: `${paths.pluginsDir}/${entry}`, kind: entry === name ? "executable" : "module" };
    const problem = !PATTERNS.pluginName.test(name)
      ? `ignored: "${name}" is not a plugin name (lower-case letters, digits, ".", "_", "-")`
      : directoryProblem
        ? `refused: the plugins directory is unsafe`
        : fileRefusal(host, file);
    plugins.push({ ...file, ...(problem ? { problem } : options.describe ? await describePlugin(host, file) : {}) });
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
