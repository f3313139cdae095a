// `vmhook bundle`: one redacted tar.gz for a bug report; prints its path.
import * as os from "node:os";
import * as path from "node:path";
import type { CommandModule } from "yargs";
import { bundleName, writeBundle } from "../bundle/collect.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson } from "./output.ts";

interface BundleArgs extends GlobalOptions {
  output?: string;
}

export const bundleCommand: CommandModule<GlobalOptions, BundleArgs> = {
  command: "bundle",
  describe: "write a redacted tar.gz for a bug report (versions, IOMMU groups, drivers, journals, doctor, the log's end) and print its path",
  builder: (y) => y.option("output", { alias: "o", type: "string", requiresArg: true, describe: "the file to write (never overwritten); default: vmhook-bundle-TIME.tar.gz in the temporary directory" }),
  async handler(args) {
    const host = args.host;
    const output = path.resolve(args.output ?? path.join(os.tmpdir(), `${bundleName(new Date(host.wallClockMs()))}.tar.gz`));
    const written = await writeBundle(host, output);
    if (args.json) printJson({ bundle: written });
    else print(written);
  },
};
