// libvirt, as the CLI reaches it: virsh with a time limit. CLI mode only —
// the hook must never call libvirt (libvirt holds the domain's lock while it
// runs the hook, so the call would wait forever).
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { VmhookError } from "./errors.ts";
import { NAMESPACE_URI } from "./paths.ts";
import { METADATA_KEY, nameArgument } from "./metadata-text.ts";

/** Which definition a change goes to, as virsh's --live, --config and --current. */
export interface Scope {
  live: boolean;
  config: boolean;
}

const TIMEOUT_MS = 30_000;

/** Every value a user gives (a domain name) comes last, after "--": virsh reads a word starting with "--" before it as an option. */
export class Virsh {
  /** uri: --connect URI; without it virsh picks its own (virshUri below). */
  constructor(readonly uri?: string) {}

  /** virsh's stdout; throws naming the command and virsh's own error. */
  run(args: string[], input?: string): string {
    const full = [...(this.uri ? ["--connect", this.uri] : []), ...args];
    const result = spawnSync("virsh", full, {
      input: input ?? "",
      // virsh translates what it prints ("shut off" is "ausgeschaltet" on a German desktop): vmhook reads it in virsh's own words.
      env: { ...process.env, LC_ALL: "C" },
      stdio: ["pipe", "pipe", "pipe"],
      encoding: "utf8",
      timeout: TIMEOUT_MS,
      killSignal: "SIGKILL",
      maxBuffer: 16 * 1024 * 1024,
    });
    const command = `virsh ${full.join(" ")}`;
    const failure = result.error as NodeJS.ErrnoException | undefined;
    if (failure?.code === "ENOENT") throw new VmhookError(`${command}: virsh is not installed; apt install libvirt-clients (dnf/pacman: libvirt-client, libvirt)`);
    if (failure?.code === "ETIMEDOUT") throw new VmhookError(`${command} did not answer in ${TIMEOUT_MS / 1000} s and was stopped; is libvirtd (or virtqemud) running?`);
    if (failure) throw new VmhookError(`${command}: ${failure.message}`);
    if (result.status !== 0) {
      const why = result.stderr.replace(/^error:\s*/gm, "").trim().split("\n").filter(Boolean).join("; ") || `exit status ${result.status}`;
      const unconnected = /failed to connect to the hypervisor/.test(result.stderr);
      const session = sessionUnasked(this.uri);
      if (session !== undefined && (unconnected || /failed to get domain/.test(result.stderr))) {
        throw new VmhookError(`${command} failed: ${why}`, [`as uid ${session}, virsh without --connect reads qemu:///session, this user's own VMs: for a VM of the system (virt-manager's), add --connect qemu:///system`]);
      }
      // No daemon behind the socket (not one that answered and refused, as for a URI it does not serve).
      if (unconnected && /Failed to connect socket/.test(result.stderr)) throw new LibvirtUnreachable(`${command} failed: ${why}`, this.uri);
      throw new VmhookError(`${command} failed: ${why}`);
    }
    return result.stdout;
  }

  /**
   * The domain XML: the running definition, or with inactive the persistent
   * one (what the next start uses). With secure, the security-sensitive parts
   * too (graphics passwords), which a plain dump leaves out: what is defined
   * again must come from such a dump, or it loses them.
   */
  dumpxml(domain: string, inactive: boolean, secure = false): string {
    return this.run(["dumpxml", ...(inactive ? ["--inactive"] : []), ...(secure ? ["--security-info"] : []), "--", domain]);
  }

  /** Whether its QEMU is there, as libvirt's "active": "crashed" is a guest panicked under <on_crash>preserve</on_crash>, its QEMU kept (a QEMU that died is "shut off"). */
  isActive(domain: string): boolean {
    return this.run(["domstate", "--", domain]).trim() !== "shut off";
  }

  /** Whether it has a persistent definition: a transient domain (virsh create) has none, and libvirt refuses --config for it. */
  isPersistent(domain: string): boolean {
    const persistent = /^Persistent:\s*(yes|no)\s*$/m.exec(this.run(["dominfo", "--", domain]))?.[1];
    if (!persistent) throw new VmhookError(`virsh dominfo ${nameArgument(domain)} did not say whether ${domain} is persistent (no "Persistent: yes|no" line)`);
    return persistent === "yes";
  }

  /** Stores <hooks> given WITHOUT a prefix: libvirt adds `vmhook:` from --key. */
  setMetadata(domain: string, unprefixedHooks: string, scope: Scope): void {
    this.run(["metadata", "--uri", NAMESPACE_URI, "--key", METADATA_KEY, ...scopeFlags(scope), "--set", unprefixedHooks, "--", domain]);
  }

  removeMetadata(domain: string, scope: Scope): void {
    this.run(["metadata", "--uri", NAMESPACE_URI, ...scopeFlags(scope), "--remove", "--", domain]);
  }

  /** Defines (replaces) the persistent domain from XML text. */
  define(xml: string): void {
    this.run(["define", "/dev/stdin"], xml);
  }
}

/** No libvirt daemon answered virsh: with `ownSystemDaemon`, this host's own (no URI, as root), whose definitions are in /etc/libvirt/qemu. */
export class LibvirtUnreachable extends VmhookError {
  readonly ownSystemDaemon: boolean;
  constructor(message: string, uri: string | undefined) {
    super(message, [`no libvirt daemon answered${uri ? ` at ${uri}` : ""}: start it (service libvirtd start, or virtqemud on hosts with modular daemons)`]);
    this.name = "LibvirtUnreachable";
    this.ownSystemDaemon = process.geteuid?.() === 0 && noUriSet(uri);
  }
}

/**
 * The URI virsh connects to: --connect, VIRSH_DEFAULT_CONNECT_URI,
 * LIBVIRT_DEFAULT_URI, uri_default in libvirt's client config, in that
 * order; undefined when none is set (libvirt then probes this host:
 * qemu:///system for root, qemu:///session for another user).
 */
export function virshUri(connect: string | undefined, clientConfig = libvirtClientConfig()): string | undefined {
  return connect || process.env.VIRSH_DEFAULT_CONNECT_URI || process.env.LIBVIRT_DEFAULT_URI || configuredDefaultUri(clientConfig);
}

/** The uid of a user other than root whose virsh, given no URI at all, connects to their own qemu:///session; undefined otherwise. */
function sessionUnasked(connect: string | undefined): number | undefined {
  const euid = process.geteuid?.();
  return euid !== undefined && euid !== 0 && noUriSet(connect) ? euid : undefined;
}

/** A session daemon's URI: its path is /session, whatever the driver and transport (qemu:///session, qemu+unix:///session?socket=…, qemu+ssh://host/session). */
const SESSION_URI = /^[a-z][\w+.-]*:\/\/[^/?#]*\/session\/?(?:[?#].*)?$/i;

/** Why vmhook cannot act for the domains of the libvirt daemon virsh reaches, and what to do instead. */
export interface SessionDaemon {
  reason: string;
  fix: string;
}

/**
 * A session daemon, when virsh with this --connect reaches one (a URI with
 * the path /session; none set, as a user other than root): libvirt runs its
 * hooks, vmhook's /etc/libvirt/hooks/qemu too, as the user who started it,
 * never as root, so vmhook cannot act for its domains and a start with
 * vmhook metadata fails. undefined for any other daemon.
 */
export function sessionDaemon(connect: string | undefined): SessionDaemon | undefined {
  const uid = sessionUnasked(connect);
  // Throws, naming it, for a client config it cannot read: which daemon virsh reaches is unknown then.
  const uri = virshUri(connect);
  const named = uid !== undefined ? `qemu:///session (virsh's default for uid ${uid}, no URI set)` : uri !== undefined && SESSION_URI.test(uri) ? uri : undefined;
  if (named === undefined) return undefined;
  return {
    reason: `${named} is a session daemon: libvirt runs its hooks as the user who started it, never as root, so vmhook cannot act for its domains (a start with vmhook metadata fails)`,
    fix: "vmhook acts for the system daemon's domains: define the VM there (virsh --connect qemu:///system define VM.xml) and name it with --connect qemu:///system",
  };
}

/** Whether virsh connects without any URI set (libvirt probes this host); false too when its client config cannot be read, as that is unknown. */
function noUriSet(connect: string | undefined): boolean {
  try {
    return virshUri(connect) === undefined;
  } catch {
    return false;
  }
}

/** libvirt's client config: root's in /etc, another user's under XDG_CONFIG_HOME (virsh reads it, not under --root). */
export function libvirtClientConfig(): string {
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

function scopeFlags(scope: Scope): string[] {
  return [...(scope.live ? ["--live"] : []), ...(scope.config ? ["--config"] : [])];
}
