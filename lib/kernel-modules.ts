// The running kernel's module tree, as modprobe reads it: modules.dep (each
// loadable module with all its dependencies), modules.softdep (modules loaded
// before or after one, e.g. vfio_iommu_type1 after vfio) and modules.builtin;
// and the softdep lines of modprobe.d, which modprobe follows too.
import type { Host } from "./host.ts";
import { PATTERNS } from "./validate.ts";

/** The kernel treats "-" and "_" in module names alike: the name it acts on. */
export const normalModule = (module: string) => module.replace(/-/g, "_");

/** The running kernel's release, "" when it cannot be told. */
export const kernelRelease = (host: Host) => host.readTrimmed("/proc/sys/kernel/osrelease") ?? "";

/** The modules through which QEMU maps a VM's memory for vfio, either will do: the container's type1 (modprobe loads it after vfio, its softdep), or iommufd (a kernel may build only one). */
export const VFIO_IOMMU_BACKENDS = ["vfio_iommu_type1", "iommufd"];

/** A release that is safe in a path under /lib/modules. */
const plainRelease = (release: string) => /^[\w+~-][\w.+~-]*$/.test(release);

type ModuleTreeFile = "modules.dep" | "modules.builtin" | "modules.alias";

/** A file of the module tree as text; "" when the release is not a plain name or the file is missing. */
function moduleTreeText(host: Host, release: string, file: ModuleTreeFile): string {
  return plainRelease(release) ? (host.readTrimmed(`/lib/modules/${release}/${file}`) ?? "") : "";
}

/**
 * The vfio-pci variant module for a PCI device, chosen as libvirt (>= 10.0,
 * virPCIDeviceFindBestVFIOVariant) chooses it: of the running kernel's
 * modules.alias entries "alias vfio_pci:PATTERN MODULE" (a VFIO driver's ids,
 * which only driver_override binds) that match "vfio_" and the device's
 * modalias, the one with the fewest wildcards. undefined when that is
 * vfio_pci's own catch-all, or none matches (no modules.alias, a kernel
 * before 5.16). `aliases`: modulesAlias(), read once for all the devices (a
 * distribution's is over 1 MB); its vfio_pci lines are found with indexOf,
 * as modules.dep's are.
 */
export function vfioVariantModule(aliases: string, modalias: string | undefined): string | undefined {
  if (modalias === undefined || !modalias.startsWith("pci:")) return undefined;
  const wanted = `vfio_${modalias}`;
  let best: { module: string; wildcards: number } | undefined;
  for (const { pattern, module } of vfioAliases(aliases)) {
    if (!globMatches(pattern, wanted)) continue;
    const wildcards = pattern.split("*").length - 1;
    if (best === undefined || wildcards < best.wildcards) best = { module, wildcards };
  }
  return best?.module === "vfio_pci" ? undefined : best?.module;
}

/**
 * Whether the running kernel's modules.alias lists `module` (- and _ alike)
 * as a VFIO driver: vfio_pci, or a variant of it, by an "alias vfio_pci:…"
 * line, which only VFIO drivers carry.
 */
export function isVfioDriverModule(aliases: string, module: string): boolean {
  const name = normalModule(module);
  for (const listed of vfioAliases(aliases)) if (normalModule(listed.module) === name) return true;
  return false;
}

/** The "alias vfio_pci:PATTERN MODULE" lines of modules.alias, found with indexOf. */
function* vfioAliases(aliases: string): Generator<{ pattern: string; module: string }> {
  const marker = "alias vfio_pci:";
  for (let at = aliases.indexOf(marker); at !== -1; at = aliases.indexOf(marker, at + marker.length)) {
    if (at > 0 && aliases[at - 1] !== "\n") continue;
    const end = aliases.indexOf("\n", at);
    const [, pattern, module] = aliases.slice(at, end === -1 ? undefined : end).trim().split(/\s+/);
    if (pattern !== undefined && module !== undefined && PATTERNS.moduleName.test(module)) yield { pattern, module };
  }
}

/** The running kernel's modules.alias, for vfioVariantModule; "" when it has none. */
export const modulesAlias = (host: Host) => moduleTreeText(host, kernelRelease(host), "modules.alias");

/** A modules.alias pattern (only * is a wildcard in PCI aliases) against a modalias. */
const globMatches = (pattern: string, text: string) => new RegExp(`^${pattern.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`).test(text);

/** A list of the module tree (modules.dep, modules.builtin) as its lines; [] when the release is not a plain name. */
export function moduleList(host: Host, release: string, list: ModuleTreeFile): string[] {
  return plainRelease(release) ? moduleTreeText(host, release, list).split("\n") : [];
}

/**
 * The modules modules.dep says `module` needs (all of them, as depmod writes
 * it), by name; undefined when it has no line there. A distribution kernel's
 * modules.dep has thousands of lines (500 KB), read on every single-GPU
 * prepare: the line is found with indexOf (a regular expression over the
 * whole text costs several times more under TCG), then checked whole.
 */
export function moduleDependencies(host: Host, release: string, module: string): string[] | undefined {
  return dependenciesIn(moduleTreeText(host, release, "modules.dep"), module);
}

/** moduleDependencies in modules.dep's text, for callers that look up several modules in one read. */
function dependenciesIn(text: string, module: string): string[] | undefined {
  const name = moduleName(`${module}.ko`);
  if (!/^\w+$/.test(name)) return undefined;
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
 * Every module `modprobe module` may load, by name: the module, what
 * modules.dep says it needs, and the soft dependencies (pre: and post: of
 * modules.softdep and modprobe.d) of each of them that modules.dep knows,
 * with theirs in turn. Just the module when modules.dep has no line for it.
 */
export function moduleClosure(host: Host, module: string): string[] {
  const release = kernelRelease(host);
  // Read once: a module's line lists all it needs, however deep (depmod writes it so), so only soft dependencies are looked up again.
  const dep = moduleTreeText(host, release, "modules.dep");
  const softdeps = softdepLines(host, release);
  const found: string[] = [];
  const visit = (name: string, dependencies: string[] | undefined) => {
    if (name === "" || found.includes(name)) return;
    found.push(name);
    for (const each of dependencies ?? []) visit(each, []);
    // A soft dependency this kernel does not have (vfio_iommu_spapr_tce on x86) is skipped by modprobe too.
    for (const soft of softdeps.find((line) => line.matches(name))?.modules ?? []) {
      const theirs = dependenciesIn(dep, soft);
      if (theirs !== undefined) visit(soft, theirs);
    }
  };
  visit(moduleName(`${module}.ko`), dependenciesIn(dep, module));
  return found;
}

/** modprobe's configuration directories, in kmod's order: a file in one hides a file of the same name in those after it (modprobe.d(5)). */
const MODPROBE_D = ["/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d", "/usr/lib/modprobe.d", "/lib/modprobe.d"];

/** The *.conf files of the modprobe.d directories modprobe reads, by file name (one in an earlier directory hides one of the same name after it), sorted. */
function modprobeConfFiles(host: Host): Map<string, string> {
  const files = new Map<string, string>();
  for (const dir of MODPROBE_D) {
    for (const name of host.list(dir)) if (/^[^.].*\.conf$/.test(name) && !files.has(name)) files.set(name, `${dir}/${name}`);
  }
  return new Map([...files.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Ids the host's configuration gives vfio-pci's ids= option, and where: a modprobe.d file, or "the kernel command line". */
export interface VfioIdsSource {
  /** "VVVV:DDDD" (lower-case), as ids= lists them (subvendor and class fields dropped). */
  ids: string[];
  source: string;
}

/**
 * Where the host binds PCI ids to vfio-pci: `options vfio-pci ids=…` (or
 * vfio_pci) in modprobe.d, `vfio-pci.ids=` on the kernel command line.
 * vfio-pci then takes every device of those ids that has no driver, as it
 * loads or on any later probe, before the device's own driver when it
 * registered first.
 */
export function vfioIdsConfig(host: Host): VfioIdsSource[] {
  const ids = (value: string) => value.split(",").map((id) => id.split(":").slice(0, 2).join(":").toLowerCase()).filter((id) => /^[0-9a-f]{1,8}:[0-9a-f]{1,8}$/.test(id));
  const found: VfioIdsSource[] = [];
  const cmdline = (host.readTrimmed("/proc/cmdline") ?? "").split(/\s+/).flatMap((word) => (/^vfio[-_]pci\.ids=/.test(word) ? ids(word.slice(word.indexOf("=") + 1)) : []));
  for (const [, file] of modprobeConfFiles(host)) {
    const lines = (host.readTrimmed(file) ?? "").replace(/\\\n/g, " ").split("\n");
    const options = lines.flatMap((line) => (/^\s*options\s+vfio[-_]pci\s/.test(line) ? line.trim().split(/\s+/).slice(2) : []));
    const listed = options.flatMap((option) => (option.startsWith("ids=") ? ids(option.slice("ids=".length)) : []));
    if (listed.length > 0) found.push({ ids: listed, source: file });
  }
  if (cmdline.length > 0) found.push({ ids: cmdline, source: "the kernel command line" });
  return found;
}

interface SoftdepLine {
  /** Whether the line's module (a glob: softdep nvidia* pre: ...) names this module. */
  matches: (module: string) => boolean;
  /** Its pre: and post: modules, by name. */
  modules: string[];
}

/**
 * The softdep lines modprobe follows, in the order kmod reads them: the
 * *.conf files of the modprobe.d directories and the module tree's
 * modules.softdep (a file of that name among them), by file name. For each
 * module the first line that matches it counts, so a user's `softdep vfio-pci
 * post: kvmfr` in /etc/modprobe.d makes modprobe vfio-pci load kvmfr.
 */
function softdepLines(host: Host, release: string): SoftdepLine[] {
  const files = new Map<string, string>();
  if (plainRelease(release)) files.set("modules.softdep", `/lib/modules/${release}/modules.softdep`);
  for (const [name, file] of modprobeConfFiles(host)) if (!files.has(name)) files.set(name, file);
  // A line ending in a backslash goes on in the next one.
  const lines = [...files.keys()].sort().flatMap((name) => (host.readTrimmed(files.get(name)!) ?? "").replace(/\\\n/g, " ").split("\n"));
  return lines.flatMap((line) => {
    const [word, glob, ...rest] = line.trim().split(/[\t ]+/);
    if (word !== "softdep" || !glob) return [];
    const module = moduleName(`${glob}.ko`);
    // fnmatch's * and ? within a module name; anything else only as itself.
    const pattern = /^[\w*?]+$/.test(module) ? new RegExp(`^${module.replace(/\*/g, "\\w*").replace(/\?/g, "\\w")}$`) : undefined;
    return [{ matches: (name: string) => pattern?.test(name) ?? name === module, modules: rest.filter((each) => each !== "pre:" && each !== "post:").map((each) => moduleName(`${each}.ko`)) }];
  });
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

/**
 * Where modprobe finds `module`: "loaded" (a /sys/module directory: loaded, or
 * built in with parameters, as the VFIO modules are), "available" (among
 * `loads`, what a modprobe about to run loads, or in the running kernel's
 * modules.dep or modules.builtin), else "missing", also when that module tree
 * is not there (the running kernel's modules removed by an upgrade): modprobe
 * finds nothing then. vmhook doctor and prepare judge the VFIO modules by it.
 */
export function moduleState(host: Host, module: string, loads: string[] = []): "loaded" | "available" | "missing" {
  const name = moduleName(`${module}.ko`);
  if (host.exists(`/sys/module/${name}`)) return "loaded";
  if (loads.includes(name)) return "available";
  return inModuleTree(host, kernelRelease(host), name) ? "available" : "missing";
}

/** Whether the running kernel's modules.dep or modules.builtin names the module (by name): modprobe finds it. */
const inModuleTree = (host: Host, release: string, name: string) =>
  moduleDependencies(host, release, name) !== undefined || moduleList(host, release, "modules.builtin").some((file) => moduleName(file) === name);

type ModuleState = ReturnType<typeof moduleState>;

/** moduleState of the VFIO IOMMU backend QEMU will get: the better of the two. */
export function iommuBackendState(host: Host, loads: string[] = []): ModuleState {
  // One loaded, or among what modprobe loads, is known without reading the module tree (500 KB), as each prepare would.
  if (VFIO_IOMMU_BACKENDS.some((module) => host.exists(`/sys/module/${module}`))) return "loaded";
  if (VFIO_IOMMU_BACKENDS.some((module) => loads.includes(module))) return "available";
  // Neither is loaded: the first the module tree names will do, and the other is not looked up (a read of modules.dep each).
  const release = kernelRelease(host);
  return VFIO_IOMMU_BACKENDS.some((module) => inModuleTree(host, release, module)) ? "available" : "missing";
}

/** The better of the backends' states (VFIO_IOMMU_BACKENDS' order): either will do. */
export const eitherBackend = (states: ModuleState[]): ModuleState => (states.includes("loaded") ? "loaded" : states.includes("available") ? "available" : "missing");

/** A module's name as /proc/modules and /sys/module give it, from its file (kernel/drivers/vfio/pci/vfio-pci.ko.xz: vfio_pci); "" for anything else. */
export const moduleName = (file: string) => normalModule(/([^/]+?)\.ko(\.\w+)?$/.exec(file.trim())?.[1] ?? "");
