// Builds vmhook_stuck.ko (stuck-driver/vmhook_stuck.c): a driver for QEMU's
// edu device whose remove() blocks for remove_delay_ms. Cached in
// .cache/vmhook_stuck/<release>/ like mtty (module-build.ts).
//
//   bun test/kernel/stuck-module.ts [RELEASE]   builds it and names the path (on stderr)
import { copyFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildModule } from "./module-build.ts";

const SOURCE = join(dirname(fileURLToPath(import.meta.url)), "stuck-driver/vmhook_stuck.c");

export function buildStuckDriver(release?: string): string {
  return buildModule({ name: "vmhook_stuck", place: (build) => copyFileSync(SOURCE, join(build, "vmhook_stuck.c")) }, release);
}

if (import.meta.main) process.stderr.write(`${buildStuckDriver(process.argv[2])}\n`);
