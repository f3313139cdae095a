// `vmhook plugins`: the built-in plugins and those installed in the plugins
// directory, each with the metadata element it reads; unsafe or broken ones
// are flagged with the reason (the hook refuses to run them).
import type { CommandModule } from "yargs";
import { listInstalledPlugins } from "../custom-plugins.ts";
import { paths } from "../paths.ts";
import { registry } from "../../plugins/index.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson } from "./output.ts";

export const pluginsCommand: CommandModule<GlobalOptions, GlobalOptions> = {
  command: "plugins",
  describe: `list the built-in plugins and those installed in ${paths.pluginsDir}, with their metadata elements`,
  async handler(args) {
    const host = args.host;
    const builtin = [];
    for (const name of registry.builtinNames()) {
      const plugin = await registry.load(name, host);
      builtin.push({ name, summary: plugin.summary, usage: plugin.usage ?? `<vmhook:${name}/>` });
    }
    const { directoryProblem, plugins: installed } = await listInstalledPlugins(host, { describe: true });
    if (args.json) {
      printJson({ builtin, directory: paths.pluginsDir, directoryProblem, installed });
      return;
    }
    print("Built-in plugins (configured by <vmhook:NAME> in the domain's <metadata><vmhook:hooks>):");
    for (const plugin of builtin) print(`  ${plugin.name.padEnd(14)} ${plugin.summary}\n  ${"".padEnd(14)} ${plugin.usage}`);
    print(`\nInstalled plugins (${paths.pluginsDir}; named by <vmhook:plugin name="NAME">):`);
    if (directoryProblem) print(`  UNSAFE: ${directoryProblem}`);
    if (installed.length === 0) print("  none");
    for (const plugin of installed) {
      if (plugin.helperOf) {
        print(`  ${plugin.name.padEnd(14)} helper module of ${plugin.helperOf.join(", ")} (imported, not a plugin)${plugin.problem ? ` NOT RUN: ${plugin.problem}` : ""}`);
        continue;
      }
      if (plugin.problem) {
        print(`  ${plugin.name.padEnd(14)} NOT RUN: ${plugin.problem}`);
        continue;
      }
      print(`  ${plugin.name.padEnd(14)} ${plugin.summary ?? "(no summary)"} [${plugin.kind === "module" ? "JavaScript module" : "executable"}]`);
      if (plugin.usage) print(`  ${"".padEnd(14)} ${plugin.usage}`);
    }
  },
};
