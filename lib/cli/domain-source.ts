// Where a command's domain comes from: a file, - for stdin, or the name of a
// libvirt domain (its persistent XML, read with virsh).
import * as fs from "node:fs";
import { DeniedToUser, reasonAndFix, VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import { LibvirtUnreachable, libvirtClientConfig, sessionDaemon, Virsh, virshUri, type SessionDaemon } from "../libvirt-client.ts";
import { shellWord } from "../metadata-text.ts";
import { PATTERNS } from "../validate.ts";
import { readDomainFile, sourceName } from "./output.ts";
import { withSudo } from "./as-root.ts";

export interface DomainSource {
  /** How messages name it: "win11.xml", "stdin", "domain win11". */
  source: string;
  xml: string;
  /** Set when it was read from libvirt: the domain's name there. */
  libvirtName?: string;
  /** Read from this host's own libvirt: this host is the one whose prepare runs the VM. */
  onThisHost: boolean;
  /** Read from a session daemon, for whose domains vmhook cannot act: why, and the fix. */
  session?: SessionDaemon;
  /** From libvirt: the same XML with its secrets (graphics passwords), read only to define the domain again. */
  readWithSecrets?: () => string;
}

/**
 * "-", or a path that says it is one (a slash, or .xml at the end), is a
 * file; anything else names a libvirt domain, whatever the directory holds:
 * root runs vmhook in directories others write (/tmp), where a file named
 * like the domain would otherwise be read in its place.
 */
export function readDomainSource(argument: string, host: Host, connect?: string): DomainSource {
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
    if (error instanceof LibvirtUnreachable && error.ownSystemDaemon) {
      throw new VmhookError(error.message, [...error.lines, definitionFileAdvice(argument, host)]);
    }
    throw error;
  }
  const session = sessionDaemon(connect);
  return {
    source: `domain ${argument}`,
    xml,
    libvirtName: argument,
    onThisHost: isThisHostsLibvirt(connect),
    ...(session ? { session } : {}),
    readWithSecrets: () => virsh.dumpxml(argument, true, true),
  };
}

/**
 * Where the definition of a VM named while its libvirt daemon is down is:
 * libvirt names the file after the VM, never after its UUID (which virsh also
 * takes). A name with no such file (a typo, a VM not defined yet) is said to
 * be one, never sent to a file that is not there.
 */
function definitionFileAdvice(argument: string, host: Host): string {
  if (PATTERNS.uuid.test(argument.toLowerCase())) {
    return `or name its XML file in place of the UUID: the file in /etc/libvirt/qemu named after the VM holds its definition (readable by root; grep -l ${argument} /etc/libvirt/qemu/*.xml finds it)`;
  }
  const file = `/etc/libvirt/qemu/${argument}.xml`;
  if (host.exists(file)) return `or name its XML file in place of the name: ${shellWord(file)} holds its definition (readable by root)`;
  return `and no VM of that name is defined on this host (no ${shellWord(file)}): check the name (virsh list --all, once libvirt runs)`;
}

/**
 * Whether virsh with this --connect reaches this host's QEMU driver: no URI
 * (none in --connect, VIRSH_DEFAULT_CONNECT_URI, LIBVIRT_DEFAULT_URI or
 * uri_default: libvirt probes this host) or qemu:///system or
 * qemu:///session, over the local socket. Any other URI (a host, another
 * driver, an alias) may name another machine.
 */
export function isThisHostsLibvirt(connect: string | undefined, clientConfig = libvirtClientConfig()): boolean {
  const uri = virshUri(connect, clientConfig);
  return uri === undefined || /^qemu(\+unix)?:\/\/\/(system|session)(\?.*)?$/.test(uri);
}

/**
 * What validate and enable say when this host cannot plan another machine's
 * VM: its config is valid, the host unchecked. `error` is why: its reason,
 * not its fix for this host, which plan on the VM's host gives in full; what
 * only root may read needs the plan run as root there, this host or another.
 */
export function notCheckedHere(error: unknown, domainArgument: string): string {
  const plan = `plan ${shellWord(domainArgument)}`;
  const reason = reasonAndFix(error).reason.split("\n")[0]!;
  return `NOT checked against this host: ${reason}; run ${error instanceof DeniedToUser ? withSudo(plan) : `vmhook ${plan}`} on the host that runs the VM to check it there`;
}
