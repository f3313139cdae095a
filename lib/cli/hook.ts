// `vmhook hook NAME OP SUBOP [EXTRA]`: run one libvirt event by hand, exactly
// as libvirt would (domain XML on stdin, nothing on stdout), for debugging.
import type { CommandModule } from "yargs";
import type { GlobalOptions } from "./options.ts";

interface HookArgs extends GlobalOptions {
  name: string;
  op: string;
  subop: string;
  extra?: string;
}

export const hookCommand: CommandModule<GlobalOptions, HookArgs> = {
  command: "hook <name> <op> <subop> [extra]",
  describe: "run one hook event by hand, as libvirt does (domain XML on stdin)",
  builder: (y) =>
    y
      .positional("name", { type: "string", demandOption: true })
      .positional("op", { type: "string", demandOption: true, describe: "prepare, start, started, stopped, release, migrate, restore, reconnect" })
      .positional("subop", { type: "string", demandOption: true, describe: "begin or end" })
      .positional("extra", { type: "string", default: "-" }),
  async handler(args) {
    const { hookMain } = await import("../hook-entry.ts");
    process.exitCode = await hookMain([args.name, args.op, args.subop, args.extra ?? "-"], args.root);
  },
};
