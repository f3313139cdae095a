// Runs the CLI in-process, as `vmhook ARGS` would run (no build needed): its exit code, stdout and stderr.
import { hookMain } from "../../hooks/qemu.ts";
import { runCli } from "../../lib/cli/index.ts";
import type { HookMain } from "../../lib/cli/hook.ts";
import type { Host } from "../../lib/host.ts";

/**
 * `host`: what the commands act on instead of a RootedHost at --root (a SimHost, whose kernel and programs they then meet).
 * `main`: what `vmhook hook` runs in place of the hook itself.
 */
export async function cli(args: string[], host?: Host, main: HookMain = hookMain): Promise<{ code: number; stdout: string; stderr: string }> {
  const [stdout, stderr]: [string[], string[]] = [[], []];
  const [out, err] = [process.stdout.write, process.stderr.write];
  process.stdout.write = ((chunk: string) => stdout.push(String(chunk)) > 0) as typeof process.stdout.write;
  process.stderr.write = ((chunk: string) => stderr.push(String(chunk)) > 0) as typeof process.stderr.write;
  try {
    return { code: await runCli(args, main, host && (() => host)), stdout: stdout.join(""), stderr: stderr.join("") };
  } finally {
    [process.stdout.write, process.stderr.write] = [out, err];
  }
}
