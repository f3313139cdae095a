// The desktop guest's root file system: Debian 12 from Debian's packages
// (mmdebstrap), systemd as PID 1, a display manager whose wayland session
// runs weston on DRM as a user unit (with pipewire and wireplumber),
// the kernel's modules, and the command agent (channel.ts). Built once into an
// ext4 image under .cache/desktop/KEY/ (KEY: package list, kernel version,
// this file's text and the agent's) and booted read-only with a snapshot overlay, so parallel
// runs share it. See test/kernel/README.md.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { agentScript, COMMAND_PORT_NAME } from "./channel.ts";
import type { Kernel } from "./guest.ts";

const HERE = fileURLToPath(import.meta.url);
const CACHE = path.join(path.resolve(path.dirname(HERE), "../.."), ".cache/desktop");

export const DESKTOP_SUITE = "bookworm";
/** The userland: systemd + logind (dbus, pam_systemd) and the user's bus for the session, weston (seatd as its other seat backend), pipewire + wireplumber (audio that must survive the handover), busybox and procps for the tests' shell tools. */
export const DESKTOP_PACKAGES = ["systemd-sysv", "udev", "kmod", "dbus", "dbus-user-session", "libpam-systemd", "weston", "seatd", "pipewire", "wireplumber", "busybox", "procps"];
const IMAGE_SIZE = "3G";
/** The user whose session the compositor runs in. */
export const DESKTOP_USER = "desktop";

/** Kernel modules the initramfs loads to reach the root disk (ext4 on virtio-blk). */
export const ROOT_MODULES = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"];

/** The agent: the busybox guest's command loop (channel.ts), started by systemd with graphical.target. */
const AGENT = `#!/bin/sh
${agentScript("systemctl poweroff -ff")}`;

const AGENT_UNIT = `[Unit]
Description=vmhook test bench command agent (virtio port ${COMMAND_PORT_NAME})
After=graphical.target

[Service]
ExecStart=/usr/local/sbin/guest-agent
Environment=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root

[Install]
WantedBy=graphical.target
`;

// A desktop as GNOME (40+) and Plasma run one: the display manager opens a
// logind session of DESKTOP_USER on tty7 (type wayland) whose leader starts
// the graphical session in the user's systemd manager and stays; the
// compositor (weston on DRM, standing in for gnome-shell or kwin_wayland) is
// a user unit in session.slice and takes card0 through logind for the
// user's graphical session, next to pipewire and wireplumber.
const DISPLAY_MANAGER_UNIT = `[Unit]
Description=the display manager of the vmhook test bench (a wayland session of ${DESKTOP_USER} on tty7)
After=systemd-user-sessions.service systemd-logind.service
Conflicts=getty@tty7.service

[Service]
User=${DESKTOP_USER}
PAMName=login
TTYPath=/dev/tty7
TTYReset=yes
TTYVHangup=yes
TTYVTDisallocate=yes
StandardInput=tty-fail
StandardOutput=journal
StandardError=journal
UtmpIdentifier=tty7
UtmpMode=user
Environment=XDG_SESSION_TYPE=wayland
ExecStart=/usr/local/bin/desktop-session

[Install]
Alias=display-manager.service
WantedBy=graphical.target
`;

/** The session's leader, as gnome-session's or startplasma's: the desktop itself runs in the user's manager. */
const SESSION_LEADER = `#!/bin/sh
systemctl --user start pipewire.service wireplumber.service compositor.service
exec sleep infinity
`;

const COMPOSITOR_USER_UNIT = `[Unit]
Description=weston on DRM, the session's compositor (a user unit, as org.gnome.Shell@wayland.service and plasma-kwin_wayland.service are)
PartOf=graphical-session.target

[Service]
Slice=session.slice
ExecStart=/usr/bin/weston --backend=drm-backend.so --use-pixman --continue-without-input --idle-time=0
`;

function run(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"], maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) {
    throw new Error(`desktop image: ${command} ${args.join(" ")} failed (${result.error?.message ?? `exit ${result.status}`}): ${(result.stderr ?? "").trim().split("\n").slice(-5).join(" | ")}`);
  }
}

function write(root: string, file: string, content: string, mode = 0o644): void {
  const target = path.join(root, file);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.writeFileSync(target, content);
  fs.chmodSync(target, mode);
}

function symlink(root: string, target: string, link: string): void {
  const at = path.join(root, link);
  fs.mkdirSync(path.dirname(at), { recursive: true });
  fs.rmSync(at, { force: true });
  fs.symlinkSync(target, at);
}

/** Units, user, the kernel's modules, and what the boot does not need masked. */
function customize(root: string, kernel: Kernel): void {
  write(root, "etc/hostname", "desktop-guest\n");
  write(root, "etc/fstab", "/dev/vda / ext4 rw,relatime 0 1\n");
  write(root, "usr/local/sbin/guest-agent", AGENT, 0o755);
  write(root, "etc/systemd/system/guest-agent.service", AGENT_UNIT);
  write(root, "etc/systemd/system/desktop-login.service", DISPLAY_MANAGER_UNIT);
  symlink(root, "/etc/systemd/system/desktop-login.service", "etc/systemd/system/display-manager.service");
  symlink(root, "/etc/systemd/system/desktop-login.service", "etc/systemd/system/graphical.target.wants/desktop-login.service");
  write(root, "usr/local/bin/desktop-session", SESSION_LEADER, 0o755);
  write(root, "etc/systemd/user/compositor.service", COMPOSITOR_USER_UNIT);
  symlink(root, "/etc/systemd/system/guest-agent.service", "etc/systemd/system/graphical.target.wants/guest-agent.service");
  symlink(root, "/lib/systemd/system/graphical.target", "etc/systemd/system/default.target");
  // Nothing on the console port: ttyS0 is the kernel's log.
  for (const unit of ["serial-getty@ttyS0.service", "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer"]) {
    symlink(root, "/dev/null", `etc/systemd/system/${unit}`);
  }
  // vmhook comes in with each boot (the initramfs puts it on a tmpfs here); libvirt's hook path points to it.
  fs.mkdirSync(path.join(root, "opt/vmhook"), { recursive: true });
  symlink(root, "/opt/vmhook/vmhook", "usr/bin/vmhook");
  symlink(root, "/usr/bin/vmhook", "etc/libvirt/hooks/qemu");
  fs.mkdirSync(path.join(root, "run/libvirt/qemu"), { recursive: true });
  run("chroot", [root, "useradd", "--create-home", "--groups", "video,render,input", DESKTOP_USER]);
  // The kernel's whole module tree (hard links into the kernel cache), indexed by the image's own depmod.
  fs.mkdirSync(path.join(root, "lib/modules"), { recursive: true });
  run("cp", ["-al", kernel.modulesDir, path.join(root, "lib/modules", kernel.version)]);
  run("depmod", ["-b", root, kernel.version]);
}

const hash = (...parts: (string | Buffer)[]) => parts.reduce((h, part) => h.update(part), createHash("sha256")).digest("hex").slice(0, 16);

/** Moves a finished build into place; when another run got there first, theirs stays. */
function publish(staged: string, target: string): void {
  try {
    fs.renameSync(staged, target);
  } catch (error) {
    if (!fs.existsSync(target)) throw error;
  }
}

/** Debian's packages as mmdebstrap installs them, as a tarball keyed by suite and package list (the slow, network part). */
function ensureBaseTarball(): string {
  const tarball = path.join(CACHE, `base-${hash(JSON.stringify({ suite: DESKTOP_SUITE, packages: DESKTOP_PACKAGES }))}.tar`);
  if (fs.existsSync(tarball)) return tarball;
  fs.mkdirSync(CACHE, { recursive: true });
  const staged = path.join(CACHE, `.base-${process.pid}.tar`);
  try {
    run("mmdebstrap", ["--quiet", "--variant=minbase", `--include=${DESKTOP_PACKAGES.join(",")}`, DESKTOP_SUITE, staged]);
    publish(staged, tarball);
  } finally {
    fs.rmSync(staged, { force: true });
  }
  return tarball;
}

/** The cached image for this kernel, built when missing (atomically: parallel runs are fine). */
export function ensureDesktopImage(kernel: Kernel): string {
  const base = ensureBaseTarball();
  const dir = path.join(CACHE, `image-${hash(path.basename(base), kernel.version, IMAGE_SIZE, fs.readFileSync(HERE), AGENT)}`);
  const image = path.join(dir, "rootfs.img");
  if (fs.existsSync(image)) return image;

  const work = fs.mkdtempSync(path.join(CACHE, ".build-"));
  try {
    const root = path.join(work, "root");
    fs.mkdirSync(root);
    run("tar", ["-xf", base, "-C", root, "--numeric-owner"]);
    customize(root, kernel);
    const staged = path.join(work, "image");
    fs.mkdirSync(staged);
    run("mkfs.ext4", ["-q", "-F", "-L", "desktop", "-d", root, path.join(staged, "rootfs.img"), IMAGE_SIZE]);
    publish(staged, dir);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return image;
}

/** Why the desktop guest cannot be built here, or undefined. */
export function desktopUnavailable(): string | undefined {
  const missing = ["mmdebstrap", "mkfs.ext4", "chroot", "depmod"].filter((program) => spawnSync("sh", ["-c", `command -v ${program}`]).status !== 0);
  if (!fs.existsSync(OVMF_CODE)) missing.push(OVMF_CODE);
  return missing.length > 0 ? `missing ${missing.join(", ")} (apt-get install mmdebstrap ovmf e2fsprogs kmod)` : undefined;
}

export const OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd";
export const OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd";
