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

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
