// The running kernel's module tree, as modprobe reads it: modules.dep (each
// loadable module with all its dependencies) and modules.builtin.
import type { Host } from "./host.ts";

/** The running kernel's release, "" when it cannot be told. */
export const kernelRelease = (host: Host) => host.readTrimmed("/proc/sys/kernel/osrelease") ?? "";

/** A list of the module tree (modules.dep, modules.builtin) as its lines; [] when the release is not a plain name or the file is missing. */
export function moduleList(host: Host, release: string, list: "modules.dep" | "modules.builtin"): string[] {
  if (!/^[\w+~-][\w.+~-]*$/.test(release)) return [];
  return (host.readTrimmed(`/lib/modules/${release}/${list}`) ?? "").split("\n");
}

/** A module's name as /proc/modules and /sys/module give it, from its file (kernel/drivers/vfio/pci/vfio-pci.ko.xz: vfio_pci); "" for anything else. */
export const moduleName = (file: string) => (/([^/]+?)\.ko(\.\w+)?$/.exec(file.trim())?.[1] ?? "").replace(/-/g, "_");
