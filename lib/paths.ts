// Every path vmhook owns, in one place. They are host paths: a Host maps them
// under its root, so tests and `--root` runs never touch the real ones.
export const NAMESPACE_URI = "urn:vmhook:1";
export const ROOT_ELEMENT = "hooks";

export const paths = {
  stateDir: "/run/vmhook",
  journal: (uuid: string) => `/run/vmhook/${uuid}.json`,
  /** Host-wide state of shared resources (e.g. the CPU set the host had before isolation). */
  sharedState: (name: string) => `/run/vmhook/shared/${name}.json`,
  hostLock: "/run/vmhook/host.lock",
  /** What VMs share (modules kept unloaded, ...): lib/claims.ts. */
  claims: "/run/vmhook/claims.json",
  /** Writes into a driver that did not return (lib/stuck-writes.ts), one per device. */
  stuckWrites: "/run/vmhook/stuck",
  stuckWrite: (device: string) => `/run/vmhook/stuck/${device}.json`,
  /** Held by every hook run of the domain and by vmhook recover. */
  domainLock: (uuid: string) => `/run/vmhook/${uuid}.lock`,
  log: "/var/log/vmhook.log",
  /** The log's last rotated copy, uncompressed (logrotate's delaycompress; lib/cli/logrotate.ts). */
  rotatedLog: "/var/log/vmhook.log.1",
  hostConfig: "/etc/vmhook/vmhook.json",
  /** What domain metadata may ask for (root-owned, checked like plugins.d). */
  policy: "/etc/vmhook/policy.json",
  pluginsDir: "/etc/vmhook/plugins.d",
  /** Domain XML as it was before `vmhook doctor --fix --apply` redefined it. */
  backupsDir: "/var/lib/vmhook/backups",
  libvirtHooksDir: "/etc/libvirt/hooks",
  libvirtQemuRunDir: "/run/libvirt/qemu",
  /** libvirt's definitions of persistent domains, one NAME.xml each (virsh domrename renames it). */
  libvirtQemuConfigDir: "/etc/libvirt/qemu",
  /** libvirt's QEMU driver settings (lib/qemu-conf.ts reads the few vmhook must agree with). */
  libvirtQemuConf: "/etc/libvirt/qemu.conf",
  /** libvirt's QEMU directory, which its daemon gives the user it runs QEMU as at each start. */
  libvirtQemuLibDir: "/var/lib/libvirt/qemu",
  /** The host's users, by name and uid. */
  passwd: "/etc/passwd",
};
