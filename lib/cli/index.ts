// CLI mode: `vmhook COMMAND`. yargs and the commands load only here, never on
// the hook's fast path.
import * as fs from "node:fs";
import yargs from "yargs";
import type { Argv, CommandModule } from "yargs";
import { describeError, VmhookError } from "../errors.ts";
import { terminalText } from "../log.ts";
import { RootedHost, type Host } from "../host.ts";
import { installCommands } from "./install.ts";
import { inspectCommands } from "./inspect.ts";
import { recoverCommand } from "./recover.ts";
import { hookCommand, type HookMain } from "./hook.ts";
import { pluginsCommand } from "./plugins.ts";
import { iommuCommand } from "./iommu.ts";
import { doctorCommand } from "./doctor.ts";
import { configCommands } from "./config.ts";
import { usageError, type OptionUsage } from "./usage.ts";
import { VERSION } from "../version.ts";
import type { GlobalOptions } from "./options.ts";
import { bundleCommand } from "./bundle.ts";

/** Wrong words on the command line: exit 2, as is usual for usage errors. `options`: the command's own, for its usage line. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly options: OptionUsage[],
  ) {
    super(message);
  }
}

/** What yargs holds of the options it parses with: its getOptions(), which @types/yargs leaves out. */
interface ParserOptions {
  key: Record<string, boolean>;
  string: string[];
  alias: Record<string, string[]>;
}

const optionsOf = (parser: Argv<any>) => (parser as unknown as { getOptions(): ParserOptions }).getOptions();

/** The options yargs holds while it parses a command: the command's own are those not in `everyCommands`, nor another's alias. */
function ownOptions(parser: Argv<any>, everyCommands: Set<string>): OptionUsage[] {
  const options = optionsOf(parser);
  const aliases = new Set(Object.values(options.alias).flat());
  return Object.keys(options.key)
    .filter((key) => !everyCommands.has(key) && !aliases.has(key))
    .map((name) => ({ name, value: options.string.includes(name) }));
}

/**
 * The option of `args` given an empty value (--output '', -o '', --output=),
 * which yargs takes as any other: an empty --output would name the current
 * directory, an empty --connect the default URI. The option as typed, or undefined.
 */
function emptyValued(args: string[], parser: Argv<any>): string | undefined {
  const options = optionsOf(parser);
  const end = args.indexOf("--");
  for (const [index, arg] of (end < 0 ? args : args.slice(0, end)).entries()) {
    const [, name, equals] = /^--?([^=]+)(=?)/.exec(arg) ?? [];
    if (!name || !options.string.includes(name)) continue;
    if (equals ? arg.endsWith(`${name}=`) : args[index + 1] === "") return arg.replace(/=$/, "");
  }
  return undefined;
}

/**
 * A short option with an empty value (-c=) as two words (-c ''): yargs reads
 * "-c=" as -c and an option "=" that takes the next word (-c= vm: the domain
 * gone), where "--connect=" is --connect with an empty value. Either way the
 * empty value is then refused (emptyValued).
 */
function shortOptionsSplit(args: string[]): string[] {
  const end = args.indexOf("--");
  return args.flatMap((arg, index) => ((end < 0 || index < end) && /^-[^-=]=$/.test(arg) ? [arg.slice(0, 2), ""] : [arg]));
}

export type { GlobalOptions } from "./options.ts";

/**
 * yargs binds no command argument given after "--" (yargs/yargs#2423), so a
 * domain named -lab could not be named at all: each word after "--" goes to
 * yargs behind this mark, which no option starts with, and loses it before
 * any command runs.
 */
const LITERAL_MARK = "\u0000";

function afterDoubleDashAsArguments(args: string[]): string[] {
  const end = args.indexOf("--");
  return end < 0 ? args : [...args.slice(0, end), ...args.slice(end + 1).map((word) => `${LITERAL_MARK}${word}`)];
}

function withoutLiteralMark(value: unknown): unknown {
  if (typeof value === "string") return value.startsWith(LITERAL_MARK) ? value.slice(LITERAL_MARK.length) : value;
  return Array.isArray(value) ? value.map(withoutLiteralMark) : value;
}

/**
 * A --root (or a VMHOOK_ROOT left set) that names no directory: every file
 * under it is missing, which status, recover and doctor would report as a
 * host with nothing held and nothing to recover.
 */
function refuseMissingRoot(root: string, args: string[]): void {
  let code: string | undefined;
  try {
    code = fs.statSync(root).isDirectory() ? undefined : "ENOTDIR";
  } catch (error) {
    code = (error as NodeJS.ErrnoException).code ?? describeError(error);
  }
  if (code === undefined) return;
  const fromEnvironment = !args.some((arg) => arg === "--root" || arg.startsWith("--root=")) && process.env.VMHOOK_ROOT === root;
  const named = fromEnvironment ? `VMHOOK_ROOT=${root}` : `--root ${root}`;
  throw new VmhookError(`${named} is not a directory (${code}): name the tree to treat as the host's /, or ${fromEnvironment ? "unset VMHOOK_ROOT" : "leave --root out"} for this host`);
}

/**
 * `hookMain` runs `vmhook hook`: the entry (hooks/qemu.ts) hands it over, so
 * lib/ never imports the entry. `hostAt` gives the host under --root that
 * the commands act on.
 */
export async function runCli(args: string[], hookMain: HookMain, hostAt: (root: string) => Host = (root) => new RootedHost(root)): Promise<number> {
  const commands: CommandModule<GlobalOptions, any>[] = [...configCommands, ...installCommands, ...inspectCommands, recoverCommand, hookCommand(hookMain), pluginsCommand, iommuCommand, doctorCommand, bundleCommand];
  const usages = commands.map((command) => {
    const usage = String(command.command);
    return { name: usage.split(" ")[0]!, usage };
  });
  process.exitCode = 0;
  try {
    // yargs takes the "-" after an option for an option of its own: join them
    const split = shortOptionsSplit(args);
    const joined = split.map((arg, index) => (arg === "--set" && split[index + 1] === "-" ? "--set=-" : arg)).filter((arg, index) => !(arg === "-" && split[index - 1] === "--set"));
    const parser = yargs(afterDoubleDashAsArguments(joined))
      .scriptName("vmhook")
      .usage("$0 COMMAND\n\nlibvirt QEMU hook framework. Installed as /etc/libvirt/hooks/qemu it runs the plugins a domain's <metadata> asks for.")
      .option("root", {
        type: "string",
        // A bare --root would be the default, this host's /: a usage error instead, as for every option with a value.
        requiresArg: true,
        default: process.env.VMHOOK_ROOT || "/",
        defaultDescription: "$VMHOOK_ROOT or /",
        describe: "treat this directory as the host's / (test trees, dry runs)",
        global: true,
      })
      .option("json", { type: "boolean", default: false, describe: "print data as JSON", global: true })
      .help()
      .alias("h", "help")
      .version(VERSION);
    // Every command has these: its usage line names its own.
    const everyCommands = new Set(Object.keys(optionsOf(parser).key));
    await parser
      // yargs hands a lone "-" positional over as "" (it takes it for an option); "-" means stdin.
      .middleware((argv) => {
        for (const key of Object.keys(argv)) argv[key] = withoutLiteralMark(argv[key]);
        if (argv.domain === "") argv.domain = "-";
      }, true)
      // An empty value (-o '') is refused as a missing one is (requiresArg), before yargs checks it against its choices.
      .middleware(() => {
        const empty = emptyValued(joined, parser);
        if (empty) throw new UsageError(`${empty} needs a value`, ownOptions(parser, everyCommands));
      }, true)
      .middleware((argv) => {
        refuseMissingRoot(argv.root, args);
        argv.host = hostAt(argv.root);
      })
      // Every command gets GlobalOptions: host is the middleware's.
      .command(commands as CommandModule<{ root: string; json: boolean }, any>[])
      .demandCommand(1, "name a command")
      .strict()
      .wrap(Math.min(100, process.stdout.columns || 100))
      // A command's .check() refusal comes as its string, a usage error too; so does the parser's (YError: an option without its value).
      .fail((message, error: unknown) => {
        if (error instanceof UsageError) throw error;
        throw error instanceof Error && error.name !== "YError" ? error : new UsageError(message, ownOptions(parser, everyCommands));
      })
      .parseAsync();
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`vmhook: ${usageError(error.message, args, usages, error.options)}\n`);
      return 2;
    }
    process.stderr.write(`vmhook: ${terminalText(describeError(error))}\n`);
    if (error instanceof VmhookError) for (const line of error.lines) process.stderr.write(`  ${terminalText(line)}\n`);
    // A thrown value that is not an Error has no stack: the line above showed all of it.
    else if (process.env.VMHOOK_DEBUG && error instanceof Error) process.stderr.write(`${error.stack}\n`);
    return 1;
  }
  return Number(process.exitCode ?? 0);
}
