// Builds the kernel's mtty sample driver (samples/vfio-mdev/mtty.c: a virtual
// mdev parent "mtty" offering the types mtty-1 and mtty-2) for the Debian
// kernel the guest boots, and caches it in .cache/mtty/<release>/mtty.ko.
// Only mtty.c leaves linux-source's tarball (module-build.ts does the rest).
//
//   bun test/kernel/mtty.ts [RELEASE]   builds it and names the path (on stderr)
import { rmSync } from "node:fs";
import { join } from "node:path";
import { buildModule, run } from "./module-build.ts";

const MTTY_SOURCE = "samples/vfio-mdev/mtty.c";

/** Builds (once) and returns the path of mtty.ko for `release`, by default the bench guest's kernel. */
export function buildMtty(release?: string): string {
  return buildModule(
    {
      name: "mtty",
      kernelSource: true,
      place(build, tree, series) {
        const tarball = join(tree, `usr/src/linux-source-${series}.tar.xz`);
        run("tar", ["-xJf", tarball, "-C", build, "--strip-components=3", `linux-source-${series}/${MTTY_SOURCE}`]);
        rmSync(tarball);
      },
    },
    release,
  );
}

if (import.meta.main) process.stderr.write(`${buildMtty(process.argv[2])}\n`);
