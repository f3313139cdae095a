// Errors that reach the user. The message's first line is what libvirt shows
// ("Hook script execution failed: ... <first stderr line>"), so it says what
// failed and what to do.
import { oneLine } from "./control-text.ts";

export class VmhookError extends Error {
  /** Lines shown after the first one: details, state of the host, remedies. (Not "details": uvu prints that as a string.) */
  readonly lines: string[];
  constructor(message: string, lines: string[] = []) {
    super(message);
    this.name = "VmhookError";
    this.lines = lines;
  }
}

/**
 * A failure with its fix kept apart. The message joins them ("REASON; FIX"):
 * the first line libvirt shows says what to do. A message that says more
 * about the failure (doctor's reason, validate's "NOT checked") takes
 * `reason` and gives `fix` on its own (reasonAndFix), never its own words
 * spliced after the fix.
 */
export class FixableError extends VmhookError {
  constructor(
    readonly reason: string,
    readonly fix: string,
    lines: string[] = [],
  ) {
    super(`${reason}; ${fix}`, lines);
  }

  /** The same failure told with `reason` (a plugin's name in front of its own): the fix still apart, the kind kept. */
  retold(reason: string): FixableError {
    return new FixableError(reason, this.fix, this.lines);
  }
}

/**
 * A failure whose fix ends in vmhook recover: right only when vmhook holds
 * changes to give back. A hook run that holds none (a start refused before
 * its first step) tells it with nothingHeld().
 */
export class FixThenRecover extends FixableError {
  constructor(
    reason: string,
    readonly remedy: string,
    lines: string[] = [],
  ) {
    super(reason, `${remedy}, then run vmhook recover`, lines);
  }

  /** The same failure, where nothing was changed: no vmhook recover to run. The errno (code) and cause kept. */
  nothingHeld(): FixableError {
    return this.withFix(`${this.remedy}; nothing was changed, so there is nothing to recover`);
  }

  /** The same failure, its remedy alone: for a message that says itself that nothing is held (a rollback that undid every change). */
  remedyAlone(): FixableError {
    return this.withFix(this.remedy);
  }

  private withFix(fix: string): FixableError {
    const { code, cause } = this as { code?: string; cause?: unknown };
    return Object.assign(new FixableError(this.reason, fix, this.lines), { code, cause });
  }

  override retold(reason: string): FixThenRecover {
    return new FixThenRecover(reason, this.remedy, this.lines);
  }
}

/** What only root may read, denied to another user: the fix is to run vmhook as root. */
export class DeniedToUser extends FixableError {
  constructor(reason: string) {
    super(reason, "run vmhook as root");
  }

  override retold(reason: string): DeniedToUser {
    return new DeniedToUser(reason);
  }
}

/** An access denied (EACCES, EPERM): root is denied only by a security module; anyone else is denied what is root's. */
export function denied(reason: string): FixableError {
  return process.geteuid?.() === 0 ? new FixableError(reason, "vmhook runs as root, so a security module (AppArmor, SELinux) denies it: look for the denial in journalctl -k") : new DeniedToUser(reason);
}

/** An error's reason, without the fix it carries apart (a FixableError's), and that fix. */
export function reasonAndFix(error: unknown): { reason: string; fix?: string } {
  return error instanceof FixableError ? { reason: error.reason, fix: error.fix } : { reason: describeError(error) };
}

/** A program that outlived its timeout and was killed: apart from one that failed, for a message naming the setting that bounds it. */
export class CommandTimedOut extends VmhookError {}

/** A problem in the domain XML or the vmhook metadata: found before anything on the host changes. */
export class ConfigError extends VmhookError {
  constructor(
    readonly element: string,
    message: string,
    lines: string[] = [],
  ) {
    super(`${element}: ${message}`, lines);
    this.name = "ConfigError";
  }
}

/** A custom plugin's parse refusing its element, in the plugin's words: like a ConfigError, the domain XML's to fix. */
export class CustomConfigError extends VmhookError {}

/**
 * An error nothing caught in the hook's process (a promise nobody awaited, a
 * throw in a timer's callback): it fails the event it happens in. Its message
 * is for one seen outside any plugin's call; a call it interrupts names the plugin.
 */
export class StrayError extends VmhookError {
  constructor(readonly stray: unknown) {
    super(`a stray error (a promise nobody awaited, or a throw in a callback) outside any plugin's call: ${describeError(stray)}; a custom plugin must await every promise it makes, otherwise report it as a fault in vmhook with /var/log/vmhook.log`);
  }
}

/** Past this many characters, a quoted value is shown by its start and its length. */
const QUOTE_LIMIT = 64;
/** How much of a longer value a message shows. */
const QUOTE_START = 40;

/** `text` on one line (controls escaped), cut to its start and its length when longer than QUOTE_LIMIT: the length after the closing mark. */
function shortened(text: string, open: string, close: string): string {
  if (text.length <= QUOTE_LIMIT) return `${open}${oneLine(text)}${close}`;
  // Not between the two halves of a surrogate pair (an emoji): the message would hold half a character.
  const end = /[\uD800-\uDBFF]/.test(text[QUOTE_START - 1]!) ? QUOTE_START - 1 : QUOTE_START;
  return `${open}${oneLine(text.slice(0, end))}…${close} (${text.length} characters)`;
}

/**
 * A value from untrusted input (an attribute of the domain XML, a word of the
 * command line) as a message quotes it: in double quotes, whole when short,
 * else its start and its length, so a 40 000-character attribute does not
 * fill libvirt's error and the log.
 */
export const quoted = (value: string): string => shortened(value, '"', '"');

/** A name or a part of a value from untrusted input as a message shows it bare (an attribute's name, a list's item): shortened as quoted(). */
export const excerpt = (text: string): string => shortened(text, "", "");

/** An attribute as a message quotes it: name="value", each shortened as quoted(). */
export const attributeText = (name: string, value: string): string => `${excerpt(name)}=${quoted(value)}`;

/** Stands in for a number JSON cannot write, inside jsonText. */
const NOT_JSON_NUMBER = "\u0000";

/**
 * A value read from a JSON file (root's settings, policy), as a message
 * quotes it: its JSON, but a number beyond a double's range (1e400, which
 * JSON.parse reads as Infinity) as what it is, not the null JSON.stringify writes;
 * a long one by its start and its length, as quoted().
 */
export function jsonText(value: unknown): string {
  const text = JSON.stringify(value, (_key, item: unknown) => (typeof item === "number" && !Number.isFinite(item) ? `${NOT_JSON_NUMBER}${item}` : item)) ?? "nothing";
  return excerpt(text.replace(/"\\u0000(-?)Infinity"/g, (_, minus: string) => (minus ? "-1.8e308 or less" : "1.8e308 or more")));
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
