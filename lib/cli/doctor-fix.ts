// `vmhook doctor --fix VM [--apply]`: doctor's advice on the domain XML as a
// unified diff; --apply defines the changed domain (CLI only, through virsh)
// after keeping the old XML in /var/lib/vmhook/backups.
import { fixDomainXml } from "../diagnostics/domain-fixes.ts";
import { VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import { Virsh, type SessionDaemon } from "../libvirt-client.ts";
import { paths } from "../paths.ts";
import { unifiedDiff } from "../text-diff.ts";
import type { DomainSource } from "./domain-source.ts";
import { print, printJson } from "./output.ts";

export interface FixOptions {
  apply: boolean;
  json: boolean;
  connect?: string;
}

export function runDoctorFix(host: Host, domain: DomainSource, options: FixOptions): void {
  if (domain.session) return refuseSessionDomain(domain.libvirtName ?? domain.source, domain.session, options.json);
  const fixed = fixDomainXml(host, domain.xml, domain.source);
  const name = domain.libvirtName ?? domain.source;
  const diff = unifiedDiff(fixed.before, fixed.after, `${name} (now)`, `${name} (fixed)`);
  let backup: string | undefined;
  // virsh define and virsh edit would make a transient VM persistent; its next start is made from the XML given to virsh create.
  const transient = domain.libvirtName !== undefined && fixed.fixes.length > 0 && !new Virsh(options.connect).isPersistent(domain.libvirtName);
  const makeThemThere = "its next start is made from the XML given to virsh create";
  if (options.apply && fixed.fixes.length > 0) {
    if (!domain.libvirtName || !domain.readWithSecrets) throw new VmhookError(`--apply defines the domain in libvirt: name the domain (vmhook doctor --fix --apply VM), not the file ${domain.source}`);
    if (transient) throw new VmhookError(`${name} is a transient VM (made by virsh create): defining it would make it persistent, and ${makeThemThere}; nothing was defined: make these changes there`, diff.split("\n"));
    // Defined from the dump with its secrets, or libvirt would drop the graphics passwords; the diff shown stays the one without them.
    const stored = domain.readWithSecrets();
    const toDefine = fixDomainXml(host, stored, domain.source);
    if (JSON.stringify(toDefine.fixes) !== JSON.stringify(fixed.fixes)) {
      throw new VmhookError(`${domain.libvirtName} changed while vmhook read it (the fixes differ between two reads); nothing was defined: run vmhook doctor --fix --apply ${domain.libvirtName} again`);
    }
    // Named where it is (under --root, the root joined): the virsh define printed with it must work as printed.
    const backupFile = `${paths.backupsDir}/${domain.libvirtName.replace(/[^\w.-]/g, "_")}-${new Date(host.wallClockMs()).toISOString().replace(/[:.]/g, "-")}.xml`;
    host.mkdir(paths.backupsDir, 0o700);
    host.createFile(backupFile, stored);
    backup = host.resolve(backupFile);
    new Virsh(options.connect).define(toDefine.after);
  }
  if (options.json) {
    printJson({ domain: name, fixes: fixed.fixes, diff, applied: backup !== undefined, backup });
    return;
  }
  if (fixed.fixes.length === 0) {
    print(`${name}: nothing to change in the domain XML`);
    return;
  }
  print(diff);
  print(`${fixed.fixes.length} change(s):`);
  for (const fix of fixed.fixes) print(`  ${fix.element}: ${fix.reason}`);
  if (backup) print(`defined ${name} with these changes; the old XML is in ${backup} (virsh define ${backup} puts it back)`);
  else if (transient) print(`${name} is a transient VM (made by virsh create): ${makeThemThere}; make them there`);
  else if (domain.libvirtName) print(`vmhook doctor --fix --apply ${name} makes them (keeping a backup of the old XML); or virsh edit ${name}`);
  else print(`apply them with virsh edit, or name the libvirt domain: vmhook doctor --fix --apply VM`);
}

/**
 * A session daemon's domain: its XML is advised for what vmhook does, which
 * it never does for such a domain; no change is proposed, none defined, and
 * the exit status is doctor's for it (1).
 */
function refuseSessionDomain(name: string, session: SessionDaemon, json: boolean): void {
  if (json) printJson({ domain: name, fixes: [], diff: "", applied: false, session });
  else print(`${name}: no change proposed: vmhook cannot act for it: ${session.reason}\n  fix: ${session.fix}`);
  process.exitCode = 1;
}
