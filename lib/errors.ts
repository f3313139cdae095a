// Errors that reach the user. The message's first line is what libvirt shows
// ("Hook script execution failed: ... <first stderr line>"), so it says what
// failed and what to do.

export class VmhookError extends Error {
  /** Lines shown after the first one: details, state of the host, remedies. (Not "details": uvu prints that as a string.) */
  readonly lines: string[];
  constructor(message: string, lines: string[] = []) {
    super(message);
    this.name = "VmhookError";
    this.lines = lines;
  }
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

/** Stands in for a number JSON cannot write, inside jsonText. */
const NOT_JSON_NUMBER = "\u0000";

/**
 * A value read from a JSON file (root's settings, policy), as a message
 * quotes it: its JSON, but a number beyond a double's range (1e400, which
 * JSON.parse reads as Infinity) as what it is, not the null JSON.stringify writes.
 */
export function jsonText(value: unknown): string {
  const text = JSON.stringify(value, (_key, item: unknown) => (typeof item === "number" && !Number.isFinite(item) ? `${NOT_JSON_NUMBER}${item}` : item)) ?? "nothing";
  return text.replace(/"\\u0000(-?)Infinity"/g, (_, minus: string) => (minus ? "-1.8e308 or less" : "1.8e308 or more"));
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
