// `vmhook doctor [DOMAIN.xml]`: host checks, and with a domain XML the checks
// of its plugins and advice on the XML. Exit code 1 when anything fails.
import type { CommandModule } from "yargs";
import { runDoctor, type Finding } from "../diagnostics/doctor.ts";
import { RootedHost } from "../host.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson, readDomainFile, sourceName } from "./output.ts";

interface DoctorArgs extends GlobalOptions {
  domain?: string;
}

function printFindings(title: string, findings: Finding[]): void {
  print(title);
  for (const finding of findings) {
    print(`  ${finding.status.padEnd(4)}  ${finding.check}: ${finding.reason}`);
    if (finding.fix) print(`        fix: ${finding.fix}`);
  }
}

export const doctorCommand: CommandModule<GlobalOptions, DoctorArgs> = {
  command: "doctor [domain]",
  describe: "check the host (and a domain XML) for what passthrough and vmhook's plugins need; exit 1 when something fails",
  builder: (y) => y.positional("domain", { type: "string", describe: "domain XML file (virsh dumpxml VM > VM.xml), or - for stdin" }),
  async handler(args) {
    const host = new RootedHost(args.root);
    const report = await runDoctor(host, args.domain !== undefined ? { file: sourceName(args.domain), xml: readDomainFile(args.domain) } : undefined);
    const all = [...report.host, ...(report.domain?.findings ?? [])];
    const count = (status: Finding["status"]) => all.filter((finding) => finding.status === status).length;
    if (args.json) {
      printJson(report);
    } else {
      printFindings("Host:", report.host);
      if (report.domain) printFindings(`\nDomain ${report.domain.name} (${report.domain.file}):`, report.domain.findings);
      print(`\n${count("ok")} ok, ${count("warn")} warning(s), ${count("fail")} failure(s)`);
    }
    if (count("fail") > 0) process.exitCode = 1;
  },
};
