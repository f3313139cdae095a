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

export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
