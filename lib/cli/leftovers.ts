// What `vmhook uninstall` leaves behind, said out loud: vmhook's own files
// (removed with --purge) and the domains whose XML still asks for vmhook —
// read from libvirt's own files, /etc/libvirt/qemu/*.xml, since uninstall
// must work without a running daemon. A domain backed by huge pages that
// vmhook reserved at each start no longer starts once it is gone.
import * as path from "node:path";
import type { Host } from "../host.ts";
import { listJournals } from "../journal.ts";
import { NAMESPACE_URI, paths } from "../paths.ts";
import { domainNameInText, shellWord } from "../metadata-text.ts";

const LIBVIRT_DOMAINS_DIR = "/etc/libvirt/qemu";
/** vmhook's own files and directories: --purge removes them. */
const OWN_FILES = ["/etc/vmhook", paths.log, "/var/lib/vmhook", paths.stateDir];

export interface Leftovers {
  /** vmhook's own files still there, each with what it is. */
  files: { path: string; what: string }[];
  /** Domains whose XML still carries vmhook metadata, and whether they stop starting without vmhook. */
  domains: { name: string; hugepageBacked: boolean }[];
  /** Domain files that could not be read: whether they carry metadata is unknown, so they are named. */
  unreadable: { path: string; error: string }[];
}

/** The entries, or why they could not be listed: uninstall has already acted, so a leftover it cannot read is named, not refused. */
function listing(host: Host, dir: string): { entries: string[]; error?: string } {
  try {
    return { entries: host.list(dir) };
  } catch (error) {
    return { entries: [], error: (error as NodeJS.ErrnoException).code ?? (error as Error).message };
  }
}

/** The log's rotated copies logrotate made (vmhook.log.1, vmhook.log.2.gz, ...), as paths. */
function rotatedLogs(host: Host): string[] {
  const dir = path.dirname(paths.log);
  return listing(host, dir).entries.filter((entry) => /^vmhook\.log\.\d+(\.gz)?$/.test(entry)).map((entry) => `${dir}/${entry}`);
}

function describeFile(host: Host, file: string): string | undefined {
  if (file === paths.log) {
    const rotated = rotatedLogs(host).map((each) => path.basename(each));
    const copies = rotated.length > 0 ? `${rotated.length} rotated copies (${rotated.join(", ")})` : "";
    return host.stat(file) ? `the log${copies && `, and ${copies}`}` : copies ? `gone, but its ${copies} are there` : undefined;
  }
  if (!host.stat(file)) return undefined;
  if (file === "/etc/vmhook") {
    const plugins = listing(host, paths.pluginsDir);
    const settings = host.stat(paths.hostConfig) ? `host settings (${paths.hostConfig}), ` : "";
    if (plugins.error) return `${settings}${paths.pluginsDir}, which could not be listed (${plugins.error})`;
    return `${settings}${plugins.entries.length > 0 ? `${plugins.entries.length} custom plugin(s) in ${paths.pluginsDir}: ${plugins.entries.join(", ")}` : `the empty ${paths.pluginsDir}`}`;
  }
  if (file === "/var/lib/vmhook") return "backups of domain XML made by vmhook doctor --fix --apply";
  const state = listing(host, file);
  if (state.error) return `journals and host state, maybe: it could not be listed (${state.error})`;
  // Journals that hold changes keep it (purge too): uninstall names their domains instead.
  const { journals, broken } = listJournals(host);
  if (journals.length + broken.length > 0) return undefined;
  const held = state.entries.filter((entry) => entry !== "host.lock");
  return held.length > 0 ? `journals and host state (${held.join(", ")})` : undefined;
}

export function findLeftovers(host: Host): Leftovers {
  const files = OWN_FILES.flatMap((file) => {
    const what = describeFile(host, file);
    return what ? [{ path: file, what }] : [];
  });
  const unreadable: Leftovers["unreadable"] = [];
  const domainFiles = listing(host, LIBVIRT_DOMAINS_DIR);
  if (domainFiles.error) unreadable.push({ path: LIBVIRT_DOMAINS_DIR, error: domainFiles.error });
  const domains = domainFiles.entries
    .filter((entry) => entry.endsWith(".xml"))
    .flatMap((entry) => {
      const file = `${LIBVIRT_DOMAINS_DIR}/${entry}`;
      let xml: string;
      try {
        xml = host.read(file);
      } catch (error) {
        unreadable.push({ path: file, error: (error as NodeJS.ErrnoException).code ?? (error as Error).message });
        return [];
      }
      if (!xml.includes(NAMESPACE_URI)) return [];
      const name = domainNameInText(xml) || entry.slice(0, -4);
      return [{ name, hugepageBacked: /<vmhook:hugepages[\s/>]/.test(xml) && /<memoryBacking>[\s\S]*?<hugepages[\s/>]/.test(xml) }];
    });
  return { files, domains, unreadable };
}

/**
 * How a leftover goes once vmhook is uninstalled: by no vmhook command, since
 * the uninstall just removed the CLI link (and dpkg -r the binary); state in
 * /run, which may hold journals, by no command at all.
 */
function removal(file: string): string {
  if (file === paths.stateDir) return "it goes at the next boot: /run is a tmpfs";
  // The log's rotated copies too (vmhook.log.1, vmhook.log.2.gz): the shell's pattern matches what is there.
  return file === paths.log ? `rm -f ${file} ${file}.[0-9]* removes them` : `rm -r ${file} removes it`;
}

/** One line per leftover, each with how to deal with it. */
export function describeLeftovers({ files, domains, unreadable }: Leftovers, purged: boolean): string[] {
  const lines = purged ? [] : files.map((file) => `left ${file.path}: ${file.what} (${removal(file.path)})`);
  for (const file of unreadable) lines.push(`could not read ${file.path} (${file.error}): check by hand whether ${file.path === LIBVIRT_DOMAINS_DIR ? "the domains there still carry" : "it still carries"} vmhook metadata or <hugepages/> backing`);
  for (const domain of domains) {
    const name = shellWord(domain.name);
    lines.push(`left domain ${domain.name}'s vmhook metadata (harmless without vmhook; virsh metadata ${name} --uri ${NAMESPACE_URI} --config --remove drops it)`);
    if (domain.hugepageBacked) {
      lines.push(`domain ${domain.name} is backed by huge pages that vmhook reserved at each start: without vmhook it fails with "unable to map backing store for guest RAM"; remove <memoryBacking><hugepages/> (virsh edit ${name}) or reserve the pages at boot (hugepages=N on the kernel command line)`);
    }
  }
  return lines;
}

/** --purge: vmhook's own files go; journals that still hold changes stay (they are how those changes can be undone). */
export function purge(host: Host): string[] {
  const notes: string[] = [];
  const { journals, broken } = listJournals(host);
  for (const file of [...OWN_FILES, ...rotatedLogs(host)]) {
    if (!host.stat(file)) continue;
    if (file === paths.stateDir && journals.length + broken.length > 0) {
      notes.push(`kept ${file}: journals there still hold changes (vmhook status lists them)`);
      continue;
    }
    host.remove(file);
    notes.push(`removed ${file}`);
  }
  return notes;
}
