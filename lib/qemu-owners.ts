// Who libvirt's system daemon runs a domain's QEMU as. Any local user can
// start a process with a VM's -uuid in its command line (ps shows every
// VM's), but only root can start one owned by another user: a process owned
// by none of these users is no QEMU libvirt started.
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";
import { qemuUserSetting } from "./qemu-conf.ts";

/**
 * The uid a user names as libvirt reads one (virGetUserID): "+N" is uid N;
 * otherwise a name in /etc/passwd, then digits as a uid; undefined when it
 * names none. Throws when /etc/passwd cannot be read.
 */
function userId(host: Host, user: string): number | undefined {
  const asNumber = (digits: string) => (/^\d+$/.test(digits) ? Number(digits) : undefined);
  if (user.startsWith("+")) return asNumber(user.slice(1));
  const entry = (host.readTrimmed(paths.passwd) ?? "").split("\n").find((line) => line.split(":")[0] === user);
  return entry === undefined ? asNumber(user) : asNumber(entry.split(":")[2] ?? "");
}

/**
 * The uids libvirt may run the domain's QEMU as: root; qemu.conf's user; the
 * owner of /var/lib/libvirt/qemu, which libvirt's daemon makes its QEMU user
 * at each start (the default it was built with where qemu.conf sets none:
 * libvirt-qemu on Debian, qemu on Fedora); and `dacUser`, the user of the
 * domain's own <seclabel model='dac'>. Undefined when they cannot be told
 * (qemu.conf, /etc/passwd or that directory cannot be read, a user names
 * nobody, no user is set and the directory is missing).
 */
export function qemuOwners(host: Host, dacUser: string | null): Set<number> | undefined {
  try {
    const configured = qemuUserSetting(host);
    const libDirOwner = host.stat(paths.libvirtQemuLibDir)?.uid;
    if (configured === undefined && libDirOwner === undefined) return undefined;
    const users = [configured, dacUser ?? undefined].filter((user) => user !== undefined).map((user) => userId(host, user));
    if (users.includes(undefined)) return undefined;
    return new Set([0, ...(users as number[]), ...(libDirOwner === undefined ? [] : [libDirOwner])]);
  } catch {
    return undefined;
  }
}
