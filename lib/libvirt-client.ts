// libvirt, as the CLI reaches it: virsh with a time limit. CLI mode only —
// the hook must never call libvirt (libvirt holds the domain's lock while it
// runs the hook, so the call would wait forever).
import { spawnSync } from "node:child_process";
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
  /** uri: --connect URI; without it virsh uses LIBVIRT_DEFAULT_URI or its own default. */
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

function scopeFlags(scope: Scope): string[] {
  return [...(scope.live ? ["--live"] : []), ...(scope.config ? ["--config"] : [])];
}
