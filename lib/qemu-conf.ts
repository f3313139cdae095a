// libvirt's /etc/libvirt/qemu.conf, only the settings vmhook must agree with.

import { VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";

export const QEMU_CONF = "/etc/libvirt/qemu.conf";

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
  const text = host.readTrimmed(QEMU_CONF);
  const assignment = text === undefined ? null : /^[ \t]*hugetlbfs_mount[ \t]*=[ \t]*/m.exec(text);
  if (!text || !assignment) return undefined;
  let rest = text.slice(assignment.index + assignment[0].length);
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
