// The running kernel's module tree, as modprobe reads it: modules.dep (each
// loadable module with all its dependencies) and modules.builtin.
import type { Host } from "./host.ts";

/** The running kernel's release, "" when it cannot be told. */
export const kernelRelease = (host: Host) => host.readTrimmed("/proc/sys/kernel/osrelease") ?? "";

/** A release that is safe in a path under /lib/modules. */
const plainRelease = (release: string) => /^[\w+~-][\w.+~-]*$/.test(release);

/** A list of the module tree (modules.dep, modules.builtin) as its lines; [] when the release is not a plain name or the file is missing. */
export function moduleList(host: Host, release: string, list: "modules.dep" | "modules.builtin"): string[] {
  if (!plainRelease(release)) return [];
  return (host.readTrimmed(`/lib/modules/${release}/${list}`) ?? "").split("\n");
}

/**
 * The modules modules.dep says `module` needs (all of them, as depmod writes
 * it), by name; undefined when it has no line there. A distribution kernel's
 * modules.dep has thousands of lines (500 KB), read on every single-GPU
 * prepare: the line is found with indexOf (a regular expression over the
 * whole text costs several times more under TCG), then checked whole.
 */
export function moduleDependencies(host: Host, release: string, module: string): string[] | undefined {
  const name = moduleName(`${module}.ko`);
  if (!plainRelease(release) || !/^\w+$/.test(name)) return undefined;
  const text = host.readTrimmed(`/lib/modules/${release}/modules.dep`) ?? "";
  // A file name may spell the module's "_" as "-" (vfio-pci.ko is vfio_pci).
  const line = new RegExp(`^(?:[^:]*/)?${name.replace(/_/g, "[-_]")}\\.ko(?:\\.\\w+)?:(.*)$`);
  const needle = `${name.split("_").pop()}.ko`; // the same in every spelling
  for (let at = text.indexOf(needle); at !== -1; at = text.indexOf(needle, at + 1)) {
    const start = text.lastIndexOf("\n", at) + 1;
    const end = text.indexOf("\n", at);
    const found = line.exec(text.slice(start, end === -1 ? undefined : end));
    if (found) return found[1]!.split(" ").filter(Boolean).map(moduleName);
  }
  return undefined;
}

/**
 * True when the running kernel's module tree can be read and names `module`
 * neither in modules.dep nor in modules.builtin: modprobe will not find it.
 * False when it is there, or the tree cannot be told (modprobe decides).
 * Call it only once moduleDependencies found no line: it reads modules.dep again.
 */
export function moduleMissing(host: Host, module: string): boolean {
  const release = kernelRelease(host);
  if (!plainRelease(release) || !host.exists(`/lib/modules/${release}/modules.dep`)) return false;
  const name = moduleName(`${module}.ko`);
  return moduleDependencies(host, release, module) === undefined && !moduleList(host, release, "modules.builtin").some((file) => moduleName(file) === name);
}

/** A module's name as /proc/modules and /sys/module give it, from its file (kernel/drivers/vfio/pci/vfio-pci.ko.xz: vfio_pci); "" for anything else. */
export const moduleName = (file: string) => (/([^/]+?)\.ko(\.\w+)?$/.exec(file.trim())?.[1] ?? "").replace(/-/g, "_");
