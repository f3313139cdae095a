// CLI output: the only place besides the CLI commands that writes to stdout.
import { readFileSync } from "node:fs";
import { VmhookError } from "../errors.ts";

export function print(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

export function printJson(value: unknown): void {
  print(JSON.stringify(value, null, 2));
}

/** A domain XML file, or "-" for stdin (e.g. `virsh dumpxml VM | vmhook plan -`). */
export function readDomainFile(file: string): string {
  // yargs hands a lone "-" positional over as "" (it parses it as an option)
  const stdin = file === "-" || file === "";
  try {
    return readFileSync(stdin ? 0 : file, "utf8");
  } catch (error) {
    throw new VmhookError(`cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}; pass a domain XML file (virsh dumpxml VM > VM.xml) or - for stdin`);
  }
}
