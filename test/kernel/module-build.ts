// Builds an out-of-tree kernel module for the Debian kernel the guest boots,
// cached in .cache/<name>/<release>[-<version>]/<name>.ko (mtty.ts, stuck-module.ts);
// the downloaded packages are shared in .cache/module-debs.
//
// Everything comes from Debian's own packages of the SAME version as the
// guest kernel, so the module's vermagic and symbol CRCs match:
//   linux-headers-<release> + linux-headers-<abi>-common + linux-kbuild-<series>
//   (and linux-source-<series> when the source comes from the kernel tree)
// Each is fetched with `apt-get download` and unpacked with `dpkg-deb -x`
// under .cache/; nothing is installed on the machine. gcc and make must exist.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureKernel } from "./guest.ts";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

export interface ModuleSource {
  /** The module's name: NAME.ko, cached under .cache/NAME. */
  name: string;
  /** Part of the cache key: a build of an edited source is not taken for the old one. */
  version?: string;
  /** Also unpack linux-source-<series> (its tarball lands in the tree's usr/src). */
  kernelSource?: boolean;
  /** Puts NAME.c (and anything else Kbuild needs but itself) into `build`; `tree` holds the unpacked packages. */
  place(build: string, tree: string, series: string): void;
}

export function run(command: string, args: string[], cwd?: string): string {
  try {
    return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 * 1024 * 1024 });
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`${command} ${args.join(" ")} failed: ${(e.stderr || e.message).trim().split("\n").slice(-5).join("\n")}`);
  }
}

/** The Debian package version of a kernel release's headers (apt's candidate, as for the kernel), e.g. "6.1.192-2". */
function packageVersion(release: string): string {
  const version = /Candidate: (\S+)/.exec(run("apt-cache", ["policy", `linux-headers-${release}`]))?.[1];
  if (!version || version === "(none)") throw new Error(`apt-cache knows no linux-headers-${release}; run apt-get update`);
  return version;
}

/** Downloads one package (cached by file name) and unpacks it into `tree`. */
function unpack(pkg: string, version: string, debs: string, tree: string): void {
  const prefix = `${pkg}_${version.replace(/:/g, "%3a")}_`;
  let deb = readdirSync(debs).find((name) => name.startsWith(prefix) && name.endsWith(".deb"));
  if (!deb) {
    run("apt-get", ["download", "-q", `${pkg}=${version}`], debs);
    deb = readdirSync(debs).find((name) => name.startsWith(prefix) && name.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${pkg}=${version} left no ${prefix}*.deb in ${debs}`);
  }
  run("dpkg-deb", ["-x", join(debs, deb), tree]);
}

/** Builds (once) and returns the path of NAME.ko for `release`, by default the bench guest's kernel. */
export function buildModule(source: ModuleSource, release = ensureKernel().version): string {
  if (!/^\d+\.\d+\.\d+-\d+-amd64$/.test(release)) throw new Error(`"${release}" is not a Debian amd64 kernel release like 6.1.0-56-amd64`);
  const cache = join(REPO, ".cache", source.name);
  const dir = join(cache, source.version ? `${release}-${source.version}` : release);
  const module = join(dir, `${source.name}.ko`);
  if (existsSync(module)) return module;

  const version = packageVersion(release);
  const abi = release.replace(/-amd64$/, "");
  const series = release.split(".").slice(0, 2).join("."); // "6.1"
  const debs = join(REPO, ".cache/module-debs");
  const tree = join(dir, "tree");
  const build = join(dir, "build");
  rmSync(tree, { recursive: true, force: true });
  rmSync(build, { recursive: true, force: true });
  mkdirSync(debs, { recursive: true });
  mkdirSync(tree, { recursive: true });
  mkdirSync(build, { recursive: true });

  const packages = [`linux-headers-${release}`, `linux-headers-${abi}-common`, `linux-kbuild-${series}`, ...(source.kernelSource ? [`linux-source-${series}`] : [])];
  for (const pkg of packages) unpack(pkg, version, debs, tree);
  source.place(build, tree, series);
  writeFileSync(join(build, "Kbuild"), `obj-m := ${source.name}.o\n`);

  // The headers' one-line Makefile includes the common half by its absolute
  // /usr/src path; point it at the unpacked copy instead.
  const headers = join(tree, `usr/src/linux-headers-${release}`);
  writeFileSync(join(headers, "Makefile"), `include ${join(tree, `usr/src/linux-headers-${abi}-common/Makefile`)}\n`);
  run("make", ["-C", headers, `M=${build}`, "modules"]);
  copyFileSync(join(build, `${source.name}.ko`), module);
  const vermagic = run("modinfo", ["-F", "vermagic", module]).trim();
  if (!vermagic.startsWith(`${release} `)) throw new Error(`built ${module} has vermagic "${vermagic}", not ${release}`);
  rmSync(tree, { recursive: true, force: true }); // 85 MB of headers, needed again only for another kernel
  return module;
}
