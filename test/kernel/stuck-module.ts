// Builds vmhook_stuck.ko (stuck-driver/vmhook_stuck.c): a driver for QEMU's
// edu device whose remove() blocks for up to remove_delay_ms, or until 1 is
// written to its let_go parameter. Cached in
// .cache/vmhook_stuck/<release>/ like mtty (module-build.ts).
//
//   bun test/kernel/stuck-module.ts [RELEASE]   builds it and names the path (on stderr)
import { createHash } from "node:crypto";
import { copyFileSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildModule } from "./module-build.ts";

const SOURCE = join(dirname(fileURLToPath(import.meta.url)), "stuck-driver/vmhook_stuck.c");

export function buildStuckDriver(release?: string): string {
  const version = createHash("sha256").update(readFileSync(SOURCE)).digest("hex").slice(0, 12);
  return buildModule({ name: "vmhook_stuck", version, place: (build) => copyFileSync(SOURCE, join(build, "vmhook_stuck.c")) }, release);
}

if (import.meta.main) process.stderr.write(`${buildStuckDriver(process.argv[2])}\n`);
