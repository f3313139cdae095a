// libvirt's /etc/libvirt/qemu.conf, only the settings vmhook must agree with.

import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";

export const QEMU_CONF = paths.libvirtQemuConf;

/** One virConf string: "…" or '…' (no escapes). */
const STRING = /^("[^"\n]*"|'[^'\n]*')/;
/** White space, line ends and # comments, which virConf allows between the items of a list. */
const BLANK = /^(?:\s|#[^\n]*)*/;

/**
 * hugetlbfs_mount: the paths libvirt takes huge pages from in place of the
 * hugetlbfs mounts it finds (qemu_conf.c reads each path's page size with
 * statfs), or undefined when it is not set. A string or a [list] of strings;
 * anything else throws, as vmhook cannot tell which mounts libvirt uses.
 */
export function hugetlbfsMountSetting(host: Host): string[] | undefined {
  let rest = assignedText(host, "hugetlbfs_mount");
  if (rest === undefined) return undefined;
  const unreadable = () => new VmhookError(`cannot read hugetlbfs_mount in ${QEMU_CONF} (a "quoted path" or a [list] of them)`);
  const single = STRING.exec(rest);
  if (single) return [single[1]!.slice(1, -1)];
  if (!rest.startsWith("[")) throw unreadable();
  const named: string[] = [];
  rest = rest.slice(1);
  for (;;) {
    rest = rest.slice(BLANK.exec(rest)![0].length);
    if (rest.startsWith("]")) return named;
    const item = STRING.exec(rest);
    if (!item) throw unreadable();
    named.push(item[1]!.slice(1, -1));
    rest = rest.slice(item[1]!.length);
    rest = rest.slice(BLANK.exec(rest)![0].length);
    if (rest.startsWith(",")) rest = rest.slice(1);
    else if (!rest.startsWith("]")) throw unreadable();
  }
}

/**
 * user: who libvirt's system daemon runs QEMU as (a name, or +UID), or
 * undefined when it is not set (the default libvirt was built with). Anything
 * but a string throws, as vmhook cannot tell who that is.
 */
export function qemuUserSetting(host: Host): string | undefined {
  const rest = assignedText(host, "user");
  if (rest === undefined) return undefined;
  const value = STRING.exec(rest);
  if (!value) throw new VmhookError(`cannot read user in ${QEMU_CONF} (a "quoted" user name or +UID)`);
  return value[1]!.slice(1, -1);
}

/** The text after `setting =` in qemu.conf (libvirt takes the first), or undefined when it is not set; throws when qemu.conf cannot be read. */
function assignedText(host: Host, setting: string): string | undefined {
  const text = host.readTrimmed(QEMU_CONF);
  const assignment = text === undefined ? null : new RegExp(`^[ \\t]*${setting}[ \\t]*=[ \\t]*`, "m").exec(text);
  return text && assignment ? text.slice(assignment.index + assignment[0].length) : undefined;
}
