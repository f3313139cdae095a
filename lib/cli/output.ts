// CLI output: the only place besides the CLI commands that writes to stdout.
import { readFileSync } from "node:fs";
import { VmhookError } from "../errors.ts";
import { terminalText } from "../log.ts";

// The reader may leave early (vmhook recover | head -1). The write's EPIPE
// comes as the stream's error event; from then the output is dropped, never
// the work, which must not stop halfway.
let readerGone = false;
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code !== "EPIPE") throw error;
  readerGone = true;
});

/** Domain names and XML values reach the output: their control characters are shown escaped (lib/log.ts). */
export function print(text: string): void {
  if (readerGone) return;
  const shown = terminalText(text);
  process.stdout.write(shown.endsWith("\n") ? shown : `${shown}\n`);
}

export function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}

/** A domain XML file, or "-" for stdin (e.g. `virsh dumpxml VM | vmhook plan -`). */
export function readDomainFile(file: string): string {
  return readInputFile(file, "pass a domain XML file (virsh dumpxml VM > VM.xml) or - for stdin");
}

/** A file the user names, or "-" for stdin; `expected` says what to pass when it cannot be read. */
export function readInputFile(file: string, expected: string): string {
  try {
    return readFileSync(file === "-" ? 0 : file, "utf8");
  } catch (error) {
    throw new VmhookError(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}; ${expected}`);
  }
}

/** How messages name a domain file argument. */
export const sourceName = (file: string) => (file === "-" ? "stdin" : file);
