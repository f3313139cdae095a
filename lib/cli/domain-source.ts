// Where a command's domain comes from: a file, - for stdin, or the name of a
// libvirt domain (its persistent XML, read with virsh).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { VmhookError } from "../errors.ts";
import { Virsh } from "../libvirt-client.ts";
import { shellWord } from "../metadata-text.ts";
import { readDomainFile, sourceName } from "./output.ts";

export interface DomainSource {
  /** How messages name it: "win11.xml", "stdin", "domain win11". */
  source: string;
  xml: string;
  /** Set when it was read from libvirt: the domain's name there. */
  libvirtName?: string;
  /** Read from this host's own libvirt: this host is the one whose prepare runs the VM. */
  onThisHost: boolean;
  /** From libvirt: the same XML with its secrets (graphics passwords), read only to define the domain again. */
  readWithSecrets?: () => string;
}

/**
 * "-", or a path that says it is one (a slash, or .xml at the end), is a
 * file; anything else names a libvirt domain, whatever the directory holds:
 * root runs vmhook in directories others write (/tmp), where a file named
 * like the domain would otherwise be read in its place.
 */
export function readDomainSource(argument: string, connect?: string): DomainSource {
  if (argument === "-" || argument.includes("/") || argument.endsWith(".xml")) {
    return { source: sourceName(argument), xml: readDomainFile(argument), onThisHost: false };
  }
  const virsh = new Virsh(connect);
  let xml: string;
  try {
    xml = virsh.dumpxml(argument, true);
  } catch (error) {
    // Meant the file here? Said, never done: the file may be anyone's.
    if (error instanceof VmhookError && fs.existsSync(argument)) throw new VmhookError(error.message, [...error.lines, `to read the file ${argument} here instead, write ./${argument}`]);
    throw error;
  }
  return {
    source: `domain ${argument}`,
    xml,
    libvirtName: argument,
    onThisHost: isThisHostsLibvirt(connect),
    readWithSecrets: () => virsh.dumpxml(argument, true, true),
  };
}

/**
 * Whether virsh with this --connect reaches this host's QEMU driver: no URI
 * (virsh's VIRSH_DEFAULT_CONNECT_URI, LIBVIRT_DEFAULT_URI, uri_default in
 * libvirt's client config, in that order; else libvirt probes this host) or
 * qemu:///system or qemu:///session, over the local socket. Any other URI (a
 * host, another driver, an alias) may name another machine.
 */
export function isThisHostsLibvirt(connect: string | undefined, clientConfig = libvirtClientConfig()): boolean {
  const uri = connect || process.env.VIRSH_DEFAULT_CONNECT_URI || process.env.LIBVIRT_DEFAULT_URI || configuredDefaultUri(clientConfig);
  return uri === undefined || /^qemu(\+unix)?:\/\/\/(system|session)(\?.*)?$/.test(uri);
}

/** libvirt's client config: root's in /etc, another user's under XDG_CONFIG_HOME (virsh reads it, not under --root). */
function libvirtClientConfig(): string {
  if (process.geteuid?.() === 0) return "/etc/libvirt/libvirt.conf";
  return path.join(process.env.XDG_CONFIG_HOME || path.join(os.homedir(), ".config"), "libvirt/libvirt.conf");
}

/** uri_default in libvirt's client config (`uri_default = "qemu+ssh://host/system"`), if set. */
function configuredDefaultUri(file: string): string | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    throw new VmhookError(`cannot read ${file} (${code ?? (error as Error).message}), so which libvirt virsh reaches without --connect is unknown; pass --connect qemu:///system, or the URI of the VM's host`);
  }
  const match = /^[ \t]*uri_default[ \t]*=[ \t]*(?:"([^"]*)"|'([^']*)')/m.exec(text);
  return match ? (match[1] ?? match[2]) || undefined : undefined;
}

/** What validate and enable say when this host cannot plan another machine's VM: its config is valid, the host unchecked. */
export function notCheckedHere(reason: string, domainArgument: string): string {
  return `NOT checked against this host: ${reason}; run vmhook plan ${shellWord(domainArgument)} on the host that runs the VM to check it there`;
}
