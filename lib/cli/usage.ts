// vmhook's own one-line usage errors in place of yargs' messages ("Not
// enough non-option arguments: got 0, need at least 1", "Unknown argument:
// lsit"): each names what is wrong and the command line that works.

import { nameArgument } from "../metadata-text.ts";

export interface CommandUsage {
  /** "validate" */
  name: string;
  /** "validate <domain>" */
  usage: string;
}

/** Levenshtein distance, for "did you mean". */
function distance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** The known word closest to a typo, when it is close enough to be meant. */
export function closest(word: string, known: string[]): string | undefined {
  const ranked = known.map((candidate) => ({ candidate, cost: distance(word.toLowerCase(), candidate.toLowerCase()) })).sort((a, b) => a.cost - b.cost);
  const best = ranked[0];
  return best && best.cost <= Math.max(2, Math.floor(best.candidate.length / 3)) ? best.candidate : undefined;
}

const upper = (usage: string) => usage.replace(/<(\w+)>/g, (_, name: string) => name.toUpperCase()).replace(/\[(\w+)(\.\.)?\]/g, (_, name: string, many?: string) => `[${name.toUpperCase()}${many ? " …" : ""}]`);

/** An option of a command, for its usage line: its name, and whether it takes a value. */
export interface OptionUsage {
  name: string;
  value: boolean;
}

/** The options of a usage line, as --help lists them (not the arguments, which yargs keeps among the options). */
function optionsText(usage: string, options: OptionUsage[]): string {
  const positionals = [...usage.matchAll(/[<[](\w+)/g)].map((match) => match[1]!);
  return options
    .filter((option) => !positionals.includes(option.name))
    .map((option) => ` [--${option.name}${option.value ? ` ${option.name.toUpperCase()}` : ""}]`)
    .join("");
}

/** What libvirt runs its qemu hook with, OP SUBOP (qemu_process.c, qemu_migration.c, qemu_saveimage.c; attach is never sent any more). */
export const LIBVIRT_HOOK_EVENTS = ["prepare begin", "start begin", "started begin", "stopped end", "release end", "migrate begin", "restore begin", "reconnect begin", "attach begin"];

const HOOK_OPERATIONS = LIBVIRT_HOOK_EVENTS.map((event) => event.split(" ")[0]!);

/**
 * Why `vmhook hook NAME OP SUBOP` names no event libvirt runs, or undefined
 * when it does. The hook passes over an event it does not know (a later
 * libvirt's): typed by hand, that is a typo it would report as done.
 */
export function notAHookEvent(name: string, op: string, subop: string): string | undefined {
  const event = `${op} ${subop}`;
  if (LIBVIRT_HOOK_EVENTS.includes(event)) return undefined;
  const meant = LIBVIRT_HOOK_EVENTS.find((known) => known.startsWith(`${closest(op, HOOK_OPERATIONS)} `));
  const fix = meant ? `did you mean vmhook hook ${nameArgument(name)} ${meant}?` : `the events are ${LIBVIRT_HOOK_EVENTS.join(", ")}`;
  return `"${event}" is not an event libvirt runs, so the hook would do nothing; ${fix}`;
}

/** Options whose value is the next word: that word is not a command or an argument. */
const OPTIONS_WITH_VALUE = ["--root", "--connect", "-c", "--set", "--event", "--output", "-o"];

/**
 * The message for a usage error. `args` is the command line; `message` is
 * what yargs said, used to tell the kind of mistake apart; `commandOptions`
 * are the options of the command yargs parsed.
 */
export function usageError(message: string, args: string[], commands: CommandUsage[], commandOptions: OptionUsage[] = []): string {
  // After "--" every word is an argument (a domain named -lab).
  const end = args.indexOf("--");
  const options = end < 0 ? args : args.slice(0, end);
  const words = [...options.filter((arg, index) => !arg.startsWith("-") && !OPTIONS_WITH_VALUE.includes(args[index - 1] ?? "")), ...(end < 0 ? [] : args.slice(end + 1))];
  const command = commands.find((candidate) => candidate.name === words[0]);
  const names = commands.map((candidate) => candidate.name);
  if (!command) {
    if (words.length === 0) return `name a command: ${names.join(", ")} (vmhook --help says what each does)`;
    if (HOOK_OPERATIONS.includes(words[1] ?? "") && ["begin", "end"].includes(words[2] ?? "")) {
      return `"${words.slice(0, 3).join(" ")}" is a hook call, but this binary runs as the CLI (its name is not qemu); run it by hand with vmhook hook ${words.slice(0, 3).join(" ")}, or install it with vmhook install`;
    }
    const guess = closest(words[0]!, names);
    return `${words[0]} is not a vmhook command${guess ? `; did you mean vmhook ${guess}?` : `; the commands are ${names.join(", ")}`}`;
  }
  const usage = `vmhook ${upper(command.usage)}${optionsText(command.usage, commandOptions)}`;
  const unknown = /^Unknown arguments?: (.*)$/.exec(message)?.[1];
  if (unknown) {
    const items = unknown.split(", ");
    const options = items.filter((item) => args.some((arg) => arg.replace(/^-+/, "").split("=")[0] === item && arg.startsWith("-")));
    if (options.length > 0) return `vmhook ${command.name} has no option --${options[0]}; usage: ${usage} (vmhook ${command.name} --help lists the options)`;
    return `vmhook ${command.name} takes no argument "${items[0]}" there; usage: ${usage}`;
  }
  if (/^Not enough non-option arguments/.test(message) || /^Missing required argument/.test(message)) {
    const missing = /<(\w+)>/g;
    const given = words.length - 1;
    const required = [...command.usage.matchAll(missing)].map((match) => match[1]!.toUpperCase());
    const unnamed = required.slice(Math.max(0, given));
    // Every word is there, yet one is missing: an option the command does not have took the word after it for its value.
    const eater = unnamed.length === 0 ? options.findIndex((arg, index) => /^--?[^-=]/.test(arg) && !arg.includes("=") && words.includes(options[index + 1] ?? "")) : -1;
    if (eater >= 0) return `vmhook ${command.name} has no option ${options[eater]}, which took ${options[eater + 1]} for its value; usage: ${usage} (vmhook ${command.name} --help lists the options)`;
    return `vmhook ${command.name} needs ${unnamed.join(" and ") || "more arguments"}; usage: ${usage}`;
  }
  const bare = /^Not enough arguments following: (\S+)$/.exec(message)?.[1];
  if (bare) return `${options.find((arg) => arg.replace(/^-+/, "") === bare) ?? `--${bare}`} needs a value; usage: ${usage}`;
  const exclusive = /^Arguments (\S+) and (\S+) are mutually exclusive/.exec(message);
  if (exclusive) return `--${exclusive[1]} and --${exclusive[2]} cannot be used together; usage: ${usage}`;
  const invalid = /Argument: (\S+), Given: ("[^"]*"), Choices: (.*)$/s.exec(message);
  if (invalid) return `--${invalid[1]} ${invalid[2]} is not one of ${invalid[3]!.replace(/\s+/g, " ")}; usage: ${usage}`;
  return `${message.replace(/\s*\n\s*/g, "; ")}; usage: ${usage}`;
}
