// Runs hook events in-process against a simulated host, as libvirt would run the binary.
import { EVENTS } from "../../hooks/qemu.ts";
import { runEvent } from "../../lib/hook.ts";
import type { SimHost } from "./simhost.ts";

export interface HookOutcome {
  code: number;
  stderr: string;
}

/** Runs "OP SUBOP" for the domain XML on `sim`, capturing what would go to stderr; `parentPid` stands for the libvirt daemon running the hook. */
export async function runHookEvent(sim: SimHost, op: string, subop: string, xml: string, name = "vm", parentPid?: number): Promise<HookOutcome> {
  const known = EVENTS[`${op} ${subop}`];
  const chunks: string[] = [];
  const original = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    chunks.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    const code = await runEvent({ args: [name, op, subop, "-"], xml, root: sim.root, host: sim, parentPid }, known?.event, known?.action, known?.mayFail ?? false);
    return { code, stderr: chunks.join("") };
  } finally {
    process.stderr.write = original;
  }
}
