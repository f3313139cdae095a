// `vmhook hook NAME OP SUBOP [EXTRA]`: run one libvirt event by hand, exactly
// as libvirt would (domain XML on stdin), for debugging. Unlike the real hook
// it then says what it did: the lines it logged, or why there were none.
import * as fs from "node:fs";
import type { CommandModule } from "yargs";
import { paths } from "../paths.ts";
import type { GlobalOptions } from "./options.ts";

/** hooks/qemu.ts's hookMain: the hook exactly as libvirt runs it. */
export type HookMain = (args: string[], root: string) => Promise<number>;

interface HookArgs extends GlobalOptions {
  name: string;
  op: string;
  subop: string;
  extra?: string;
}

function logSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

export const hookCommand = (hookMain: HookMain): CommandModule<GlobalOptions, HookArgs> => ({
  command: "hook <name> <op> <subop> [extra]",
  describe: "run one hook event by hand, as libvirt does (domain XML on stdin), and say what it did",
  builder: (y) =>
    y
      .positional("name", { type: "string", demandOption: true })
      .positional("op", { type: "string", demandOption: true, describe: "prepare, start, started, stopped, release, migrate, restore, reconnect" })
      .positional("subop", { type: "string", demandOption: true, describe: "begin or end" })
      .positional("extra", { type: "string", default: "-" }),
  async handler(args) {
    const log = args.host.resolve(paths.log);
    const offset = logSize(log);
    const event = `${args.op} ${args.subop} of ${args.name}`;
    const code = await hookMain([args.name, args.op, args.subop, args.extra ?? "-"], args.root);
    process.exitCode = code;
    // The hook keeps stdout empty (libvirt may read it as XML): the report goes to stderr.
    const logged = logSize(log) > offset ? fs.readFileSync(log).subarray(offset).toString("utf8") : "";
    const what = logged
      ? `what it did (from ${paths.log}):\n${logged.replace(/^\S+ /gm, "  ")}`
      : `nothing logged: the domain XML on stdin has no vmhook metadata and holds no journal, or ${args.op} ${args.subop} has nothing to do for it${fs.existsSync(log) ? "" : ` (or ${paths.log} cannot be written)`}\n`;
    process.stderr.write(`vmhook hook: ${event} exited ${code}; ${what}`);
  },
});
