// `vmhook bundle`: what a bug report needs from this host, gathered through
// the Host (so a simulated host can stand in), redacted, in one tar.gz.
// A part that cannot be read says why inside the bundle instead of stopping
// it: a half-broken host is what bug reports come from.
import * as fs from "node:fs";
import { runDoctor } from "../diagnostics/doctor.ts";
import { readIommuGroups } from "../diagnostics/iommu.ts";
import { describeError, VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import { listJournals } from "../journal.ts";
import { readLogFrom } from "../log.ts";
import { paths } from "../paths.ts";
import { listPciDevices } from "../pci.ts";
import { VERSION } from "../version.ts";
import { redactorFor } from "./redact.ts";
import { tarGz, type TarEntry } from "./tar.ts";

export const LOG_LINES = 500;
/** Enough for 500 log lines; the log is never read whole (it grows for as long as the host runs). */
const LOG_TAIL_BYTES = 4 * 1024 * 1024;
const PROGRAM_TIMEOUT_MS = 5_000;
const VERSION_PROGRAMS: [string, string[]][] = [
  ["libvirtd", ["--version"]],
  ["virsh", ["--version"]],
  ["qemu-system-x86_64", ["--version"]],
];

interface Part {
  file: string;
  what: string;
  collect(host: Host): string | Promise<string>;
}

const json = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`;

function programVersion(host: Host, program: string, args: string[]): string {
  const result = host.exec(program, args, { timeoutMs: PROGRAM_TIMEOUT_MS });
  if (result.error) return `${program}: ${result.error}`;
  if (result.timedOut) return `${program}: no answer within ${PROGRAM_TIMEOUT_MS / 1000} s`;
  return `${program}: ${(result.stdout || result.stderr).trim().split("\n")[0]}`;
}

function versions(host: Host): string {
  const system = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(host.readTrimmed("/etc/os-release") ?? "")?.[1] ?? "unknown (no /etc/os-release)";
  return [
    `vmhook: ${VERSION}`,
    `runtime: bun ${process.versions.bun ?? "?"}`,
    `os: ${system}`,
    `kernel: ${host.readTrimmed("/proc/version") ?? "unknown"}`,
    ...VERSION_PROGRAMS.map(([program, args]) => programVersion(host, program, args)),
  ].join("\n") + "\n";
}

function drivers(host: Host): string {
  const hex = (value: string) => value.replace(/^0x/, "");
  const devices = listPciDevices(host).map((device) => `${device.address}  class ${hex(device.classCode)}  ${hex(device.vendor)}:${hex(device.device)}  IOMMU group ${device.iommuGroup ?? "none"}  driver: ${device.driver ?? "none"}`);
  const modules = (host.readTrimmed("/proc/modules") ?? "").split("\n").filter(Boolean).map((line) => line.split(" ").slice(0, 4).join(" "));
  return ["PCI devices:", ...devices, "", "Loaded modules (name, size, users, used by):", ...(modules.length > 0 ? modules : ["(none)"])].join("\n") + "\n";
}

/** The last lines of a log file, from its real path under the host's root: Host.read would load the whole file; none when it does not exist. */
function lastLines(host: Host, file: string): string[] {
  if (!host.exists(file)) return [];
  const { text, start } = readLogFrom(host, (size) => size - LOG_TAIL_BYTES, file);
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  // A line cut by the start of what was read may begin inside a name or a UUID, which the redaction then misses.
  if (start > 0) lines.shift();
  return lines;
}

/**
 * The log's end. Just after a rotation the log holds few lines or none (it is
 * made again at the next event), and the story of the failure being reported
 * is in vmhook.log.1: the lines come from there first.
 */
function logTail(host: Host): string {
  const current = lastLines(host, paths.log);
  const before = current.length < LOG_LINES ? lastLines(host, paths.rotatedLog) : [];
  const lines = [...before, ...current];
  if (lines.length === 0 && !host.exists(paths.log)) return `(no log yet: ${paths.log} does not exist)\n`;
  return `${lines.slice(-LOG_LINES).join("\n")}\n`;
}

const PARTS: Part[] = [
  { file: "versions.txt", what: "vmhook, runtime, OS, kernel, libvirt and QEMU versions", collect: versions },
  { file: "cmdline.txt", what: "the kernel command line (/proc/cmdline)", collect: (host) => host.read("/proc/cmdline") },
  { file: "iommu.json", what: "IOMMU groups with their devices, drivers and passthrough verdicts (vmhook iommu --json)", collect: (host) => json(readIommuGroups(host)) },
  { file: "drivers.txt", what: "every PCI device with its driver, and the loaded kernel modules", collect: drivers },
  { file: "journals.json", what: `the journals of domains that hold changes (${paths.stateDir}), and unreadable ones`, collect: (host) => json(listJournals(host)) },
  { file: "doctor.json", what: "the host checks of vmhook doctor (--json)", collect: async (host) => json(await runDoctor(host)) },
  { file: "hooks.txt", what: `what is in ${paths.libvirtHooksDir} and its qemu.d`, collect: (host) => [paths.libvirtHooksDir, `${paths.libvirtHooksDir}/qemu.d`].map((dir) => `${dir}: ${host.list(dir).join(" ") || "(empty or missing)"}`).join("\n") + "\n" },
  { file: "settings.json", what: `the host settings (${paths.hostConfig}); null when there are none`, collect: (host) => (host.exists(paths.hostConfig) ? host.read(paths.hostConfig) : "null\n") },
  { file: "vmhook.log", what: `the last ${LOG_LINES} lines of ${paths.log}, after a rotation with ${paths.rotatedLog}'s before them`, collect: logTail },
];

function readme(missing: string[]): string {
  return [
    "vmhook bug-report bundle (made by vmhook bundle)",
    "",
    "Redacted: the hostname, regular users' names (uid 1000 and up, /home), MAC addresses,",
    "serial numbers and every UUID (domains, mdevs, disks) are replaced by placeholders",
    "such as <host-1>, <user-1>, <mac-1>, <serial-1>, <uuid-1>; one value keeps one",
    "placeholder in every file. Domain names, PCI addresses and paths outside /home stay.",
    "",
    "Files:",
    ...PARTS.map((part) => `  ${part.file.padEnd(14)} ${part.what}`),
    ...(missing.length > 0 ? ["", "Could not be read (the file says why):", ...missing.map((line) => `  ${line}`)] : []),
  ].join("\n") + "\n";
}

/** "vmhook-bundle-20261130T091500Z": the bundle's top directory and default file name. */
export function bundleName(time: Date): string {
  return `vmhook-bundle-${time.toISOString().replace(/\.\d+Z$/, "Z").replace(/[-:]/g, "")}`;
}

/** Writes the bundle to `output` (created, never overwritten, mode 0600) and returns its path. */
export async function writeBundle(host: Host, output: string): Promise<string> {
  const now = new Date(host.wallClockMs());
  const redactor = redactorFor(host);
  const top = bundleName(now);
  const missing: string[] = [];
  const entries: TarEntry[] = [];
  for (const part of PARTS) {
    let content: string;
    try {
      content = await part.collect(host);
    } catch (error) {
      content = `unavailable: ${describeError(error)}\n`;
      missing.push(`${part.file}: ${describeError(error)}`);
    }
    entries.push({ name: `${top}/${part.file}`, content: redactor.redact(content) });
  }
  entries.unshift({ name: `${top}/README.txt`, content: redactor.redact(readme(missing)) });
  try {
    fs.writeFileSync(output, tarGz(entries, now.getTime() / 1000), { flag: "wx", mode: 0o600 });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? describeError(error);
    if (code === "EEXIST") throw new VmhookError(`${output} exists (EEXIST), and vmhook bundle never overwrites a file: name another with -o FILE, or leave -o out for a new name`);
    throw new VmhookError(`cannot write the bundle to ${output} (${code}): with -o FILE, name a file in a directory that exists and you may write`);
  }
  return output;
}
