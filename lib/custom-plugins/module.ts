// Custom plugins as JavaScript modules (NAME.js, NAME.mjs): the default
// export is a Plugin, or a plugin of the first interface that the runner
// still runs through its adapter.
import * as fs from "node:fs";
import { builtinModules } from "node:module";
import * as nodePath from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describeError, VmhookError } from "../errors.ts";
import { RootedHost, untrustedTreeCode, type Host } from "../host.ts";
import type { AnyPlugin } from "../plugin.ts";
import { pathLeadsToRootsAlone } from "../root-alone.ts";
import { rootsAloneProblem, type PluginFile } from "./trust.ts";

/**
 * A module's default export: a Plugin (plan + actions), or a plugin of the
 * first interface (handlers calling ctx.step, one undo), which still runs
 * through the runner's adapter (docs/plugins.md, "Migrating").
 */
export async function importModulePlugin(host: Host, file: PluginFile): Promise<AnyPlugin> {
  const treeProblem = untrustedTreeCode(host.root, host.resolve(file.path), "vmhook loads a --root tree's plugins as root");
  if (treeProblem) throw new VmhookError(`plugin ${file.name}: not loading ${host.resolve(file.path)} of the --root tree: ${treeProblem}`);
  const cacheProblem = transpilerCacheProblem();
  if (cacheProblem) throw new VmhookError(`plugin ${file.name}: not loading ${file.path}: ${cacheProblem}`);
  const importProblem = moduleImports(host, file.path).problem;
  if (importProblem) throw new VmhookError(`plugin ${file.name}: not loading ${file.path}: ${importProblem}`);
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
  // Optional; anything else there would be taken for "changed" at every failure, silently.
  const unsure = Object.entries(plugin.actions as Record<string, Record<string, unknown>>).find(([, action]) => action.unchangedAfterFailure !== undefined && typeof action.unchangedAfterFailure !== "function");
  if (unsure) {
    return `action ${unsure[0]} has unchangedAfterFailure ${JSON.stringify(unsure[1].unchangedAfterFailure)?.slice(0, 40)}; make it a function(record, ctx) that returns true only when the host reads as before the step, or leave it out`;
  }
  return undefined;
}

type CodeLoader = "js" | "jsx" | "ts" | "tsx";
/** How Bun reads a module of this extension, for its imports. */
const SCANNED_LOADERS: Record<string, CodeLoader> = { ".js": "js", ".mjs": "js", ".cjs": "js", ".jsx": "jsx", ".ts": "ts", ".mts": "ts", ".cts": "ts", ".tsx": "tsx" };
const CODE_LOADERS: CodeLoader[] = ["js", "jsx", "ts", "tsx"];

/**
 * The imports of a module as Bun may run it. Bun runs a file without an
 * extension as JavaScript, and any file imported `with { type: "js" }` (ts,
 * jsx, tsx) as that: a file of another extension is read with each of them,
 * and what one parses imports is held to the rule too. Data no loader parses
 * (JSON, text) cannot run as code either. Throws when a JavaScript file does
 * not parse.
 */
function scanImports(text: string, file: string): { path: string }[] {
  const own = SCANNED_LOADERS[nodePath.extname(file)];
  if (own) return new Bun.Transpiler({ loader: own }).scanImports(text);
  return CODE_LOADERS.flatMap((loader) => {
    try {
      return new Bun.Transpiler({ loader }).scanImports(text);
    } catch {
      return [];
    }
  });
}

const isBuiltin = (specifier: string) => specifier.startsWith("node:") || specifier.startsWith("bun:") || builtinModules.includes(specifier);

/**
 * The files a module plugin imports, and what those import (host paths), up
 * to the first that must not be loaded as root, with why (`problem`). Every
 * file it imports runs as root as the plugin does, so each is held to the
 * plugin file's rule (root's, not writable by group or others, no symlink
 * on the way) and must be named by its own path: a name Bun resolves further
 * (a symlink, a guessed extension, a package in some node_modules) could be
 * made to load a file nobody checked. Imports by a computed name are not
 * seen here; they are the plugin's own code. Reads the files, runs none.
 */
export function moduleImports(host: Host, pluginPath: string): { files: string[]; problem?: string } {
  const root = fs.realpathSync(host.root);
  const toHostPath = (realPath: string) => (root === "/" ? realPath : realPath.startsWith(`${root}/`) ? realPath.slice(root.length) : undefined);
  const pending: { hostPath: string; chain: string }[] = [{ hostPath: pluginPath, chain: "it imports" }];
  const files: string[] = [];
  for (let module = pending.shift(); module; module = pending.shift()) {
    const realPath = host.resolve(module.hostPath);
    let imports: { path: string }[];
    try {
      imports = scanImports(fs.readFileSync(realPath, "utf8"), module.hostPath);
    } catch (error) {
      return { files, problem: `${module.hostPath} could not be read for its imports: ${describeError(error).split("\n")[0]}` };
    }
    for (const { path: specifier } of imports) {
      if (isBuiltin(specifier)) continue;
      const named = specifier.startsWith("file:") ? fileURLToPath(specifier) : specifier.startsWith("/") || specifier.startsWith("./") || specifier.startsWith("../") ? specifier : undefined;
      if (named === undefined) return { files, problem: `${module.chain} ${JSON.stringify(specifier)}, a package: plugins import only Node.js and Bun built-ins and files by their path (./helper.mjs)` };
      const importer = nodePath.dirname(realPath);
      let loaded: string;
      try {
        loaded = Bun.resolveSync(specifier, importer);
      } catch (error) {
        return { files, problem: `${module.chain} ${specifier}, which cannot be found: ${describeError(error).split("\n")[0]}` };
      }
      if (loaded !== nodePath.resolve(importer, named)) {
        return { files, problem: `${module.chain} ${specifier}, which Bun would load from ${toHostPath(loaded) ?? loaded}: vmhook checks only what it loads by the name given; import the file by its own path, with its extension (no symlink)` };
      }
      const hostPath = toHostPath(loaded);
      if (hostPath === undefined) return { files, problem: `${module.chain} ${specifier}, which is outside ${host.root}, the root vmhook runs in` };
      if (hostPath === pluginPath || files.includes(hostPath)) continue;
      files.push(hostPath);
      const chain = `${module.chain} ${specifier} (${hostPath})`;
      const unsafe = rootsAloneProblem(host, hostPath, "file", "what a plugin imports runs as root too");
      if (unsafe) return { files, problem: `${chain}, and ${unsafe}` };
      pending.push({ hostPath, chain: `${chain}, which imports` });
    }
  }
  return { files };
}

/**
 * Where Bun keeps the modules it transpiles (files of 50 KB and more, a
 * plugin's or what it imports), as Bun picks it from the environment it
 * started with, and the variable it came from; undefined when it keeps none.
 * An empty or relative value counts from the working directory, as Bun takes it.
 */
function transpilerCache(env: NodeJS.ProcessEnv, cwd: string): { dir: string; variable: string } | undefined {
  const explicit = env.BUN_RUNTIME_TRANSPILER_CACHE_PATH;
  if (explicit !== undefined) return explicit === "" || explicit === "0" ? undefined : { dir: nodePath.resolve(cwd, explicit), variable: "BUN_RUNTIME_TRANSPILER_CACHE_PATH" };
  if (env.XDG_CACHE_HOME !== undefined) return { dir: nodePath.resolve(cwd, env.XDG_CACHE_HOME, "bun/@t@"), variable: "XDG_CACHE_HOME" };
  if (env.HOME !== undefined) return { dir: nodePath.resolve(cwd, env.HOME, ".bun/install/cache/@t@"), variable: "HOME" };
  return undefined;
}

/**
 * Why a module plugin must not be imported in this process, or undefined.
 * Bun runs a transpiled copy from its cache when one is there for the file's
 * contents (found and checked by unkeyed hashes, no signature), so the way to
 * the cache must be root's alone as a program's is (pathLeadsToRootsAlone),
 * and the cache with it; under sudo -E (or a sudo that keeps HOME) it is the
 * invoking user's. The cache may not be there yet: Bun makes it at its first
 * write, as root.
 */
function transpilerCacheProblem(): string | undefined {
  const env = process.env;
  const cache = transpilerCache(env, process.cwd());
  if (!cache) return undefined;
  const fix = "run vmhook with root's own environment (sudo -i, or sudo without -E), or with BUN_RUNTIME_TRANSPILER_CACHE_PATH=0";
  let unsafe: string | undefined;
  try {
    unsafe = pathLeadsToRootsAlone(new RootedHost("/"), (path) => fs.readlinkSync(path), cache.dir, "whoever can change the cache could have their code run as root in place of the plugin's", { kind: "directory", rootCreatesTheRest: true, fixOf: () => fix });
  } catch (error) {
    // A path root cannot even look at (a user's FUSE mount without allow_other): nothing to judge, so no cache to trust.
    unsafe = describeError(error).split("\n")[0];
  }
  return unsafe && `Bun, which runs vmhook, keeps the modules it transpiles in ${cache.dir} (from ${cache.variable}=${env[cache.variable]}), and ${unsafe}`;
}
