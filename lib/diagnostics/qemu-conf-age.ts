// Whether the running libvirt daemon read qemu.conf as it is now. vmhook
// reads `user` and `hugetlbfs_mount` there at every event, to agree with
// libvirt (lib/qemu-conf.ts); libvirtd and virtqemud read the file only when
// they start. Edited since, it may say one thing to vmhook and libvirt still
// go by another: the hugepages checks look at mounts libvirt does not use, the
// ownership checks at a user QEMU does not run as.
import * as path from "node:path";
import { systemLibvirtDaemons } from "../cli/install.ts";
import { VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";
import { serviceCommand } from "../host-advice.ts";
import { LIBVIRT_DAEMONS, processStartedAtMs } from "../processes.ts";
import { QEMU_CONF } from "../qemu-conf.ts";
import { ok, warn, type Finding } from "./findings.ts";

/** What vmhook takes from qemu.conf. */
const SETTINGS = "user and hugetlbfs_mount";
/** What vmhook takes them for. */
const SETTINGS_USE = "who runs QEMU, for the ownership checks; the hugetlbfs mounts libvirt takes huge pages from, for hugepages";
/** A file newer than a daemon's start by less than this is not counted: the start is known to a tick, and read against the wall clock apart. */
const SLACK_MS = 1000;

const when = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");

/** SYMLOOP_MAX: the links open(2) follows before ELOOP. */
const MAX_LINKS = 40;

/**
 * The last change of what reading `file` gives: the latest ctime of the file
 * and of each symlink on the way to it (one re-pointed, or a target
 * replaced, changes what is read). Undefined when nothing is there in the end.
 */
function lastChangeMs(host: Host, file: string): number | undefined {
  let latest = 0;
  let at = file;
  for (let links = 0; links <= MAX_LINKS; links++) {
    const stat = host.stat(at);
    if (!stat) return undefined;
    latest = Math.max(latest, stat.ctimeMs);
    if (!stat.isSymlink) return latest;
    at = path.posix.resolve(path.posix.dirname(at), host.readlink(at) ?? "");
  }
  throw new VmhookError(`${file} leads through more than ${MAX_LINKS} symbolic links (a loop?): libvirt cannot read it either; make it a file, or a link to one`);
}

export function qemuConfAge(host: Host): Finding {
  const changedAt = lastChangeMs(host, QEMU_CONF);
  if (changedAt === undefined) return ok("qemu.conf", `no ${QEMU_CONF}: libvirt and vmhook both go by libvirt's defaults`);
  // The daemon that runs QEMU domains (modular: virtqemud; else the monolithic libvirtd), in this mount namespace: one in another reads another qemu.conf.
  const daemons = systemLibvirtDaemons(host).filter((daemon) => daemon.seesTheseHooks);
  const command = daemons.some((daemon) => daemon.command === "virtqemud") ? "virtqemud" : "libvirtd";
  const started = daemons.filter((daemon) => daemon.command === command).flatMap(({ pid }) => {
    const at = processStartedAtMs(host, pid);
    return at === undefined ? [] : [{ name: `${command} (pid ${pid})`, at }];
  });
  if (started.length === 0) return ok("qemu.conf", `no libvirt daemon (${LIBVIRT_DAEMONS.join(" or ")}) runs here: the next one reads ${QEMU_CONF} as it is when it starts`);
  const before = started.filter((daemon) => changedAt > daemon.at + SLACK_MS);
  if (before.length === 0) {
    return ok("qemu.conf", `${started.map((daemon) => `${daemon.name} started at ${when(daemon.at)}`).join(", ")}, after ${QEMU_CONF} last changed (${when(changedAt)}): libvirt and vmhook go by the same ${SETTINGS}`);
  }
  return warn(
    "qemu.conf",
    `${QEMU_CONF} changed at ${when(changedAt)}, after ${before.map((daemon) => `${daemon.name} started at ${when(daemon.at)}`).join(", ")}, which reads it only when it starts: vmhook reads ${SETTINGS} as they are now (${SETTINGS_USE}), libvirt may still go by those of before`,
    `when no VM runs, ${serviceCommand(host, command, "restart")}: it then reads the file as vmhook does (if the change touched neither setting, nothing differs meanwhile)`,
  );
}
