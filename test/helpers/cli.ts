// Runs the CLI in-process, as `vmhook ARGS` would run: its exit code and stdout (stderr is dropped).
import { runCli } from "../../lib/cli/index.ts";

export async function cli(args: string[]): Promise<{ code: number; stdout: string }> {
  const chunks: string[] = [];
  const [out, err] = [process.stdout.write, process.stderr.write];
  process.stdout.write = ((chunk: string) => chunks.push(String(chunk)) > 0) as typeof process.stdout.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  try {
    return { code: await runCli(args), stdout: chunks.join("") };
  } finally {
    [process.stdout.write, process.stderr.write] = [out, err];
  }
}
