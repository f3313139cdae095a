// `vmhook doctor [DOMAIN.xml]`: host checks, and with a domain XML the checks
// of its plugins and advice on the XML. Exit code 1 when anything fails.
import type { CommandModule } from "yargs";
import { runDoctor, type Finding } from "../diagnostics/doctor.ts";
import type { GlobalOptions } from "./options.ts";
import { shellWord } from "../metadata-text.ts";
import { readDomainSource } from "./domain-source.ts";
import { runDoctorFix } from "./doctor-fix.ts";
import { print, printJson } from "./output.ts";

interface DoctorArgs extends GlobalOptions {
  domain?: string;
  fix: boolean;
  apply: boolean;
  connect?: string;
}

function printFindings(title: string, findings: Finding[]): void {
  print(title);
  for (const finding of findings) {
    print(`  ${finding.status.padEnd(4)}  ${finding.check}: ${finding.reason}`);
    if (finding.fix) print(`        fix: ${finding.fix}`);
  }
}

/** Why --fix and --apply do not go together as given, or undefined: --apply alone would redefine a domain nobody saw the diff of. */
function fixUsageProblem(domain: string | undefined, fix: boolean, apply: boolean): string | undefined {
  const named = domain === undefined ? "VM" : shellWord(domain);
  if (apply && !fix) return `--apply defines the change --fix shows, so it needs --fix: vmhook doctor ${named} --fix --apply`;
  if (fix && domain === undefined) return "--fix needs a domain: vmhook doctor VM --fix";
  return undefined;
}

export const doctorCommand: CommandModule<GlobalOptions, DoctorArgs> = {
  command: "doctor [domain]",
  describe: "check the host (and a domain XML) for what passthrough and vmhook's plugins need; exit 1 when something fails",
  builder: (y) =>
    y
      .positional("domain", { type: "string", describe: "a libvirt domain's name, a domain XML file (with a / or ending in .xml: ./vm), or - for stdin" })
      .option("fix", { type: "boolean", default: false, describe: "print the advice on the domain XML as a unified diff" })
      .option("apply", { type: "boolean", default: false, describe: "with --fix: define the changed domain, keeping the old XML in /var/lib/vmhook/backups" })
      .option("connect", { alias: "c", type: "string", requiresArg: true, describe: "libvirt URI, as virsh --connect" })
      .check(({ domain, fix, apply }) => fixUsageProblem(domain, fix, apply) ?? true),
  async handler(args) {
    const host = args.host;
    const domain = args.domain !== undefined ? readDomainSource(args.domain, host, args.connect) : undefined;
    if (domain && args.fix) {
      return runDoctorFix(host, domain, { apply: args.apply, json: args.json, connect: args.connect });
    }
    const report = await runDoctor(host, domain && { file: domain.source, xml: domain.xml, ...(domain.session ? { session: domain.session } : {}) });
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
