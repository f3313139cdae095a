// Builds test/kernel/vfio-holder/vfio-holder.c (a process that holds an mdev's
// vfio device open, as QEMU does) as a static binary for the guest, cached in
// .cache/vfio-holder/<hash of the source>/vfio-holder.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dirname, "../..");
const SOURCE = join(REPO, "test/kernel/vfio-holder/vfio-holder.c");

/** Builds (once per source) and returns the path of the static vfio-holder. */
export function buildVfioHolder(): string {
  const hash = createHash("sha256").update(readFileSync(SOURCE)).digest("hex").slice(0, 16);
  const dir = join(REPO, ".cache/vfio-holder", hash);
  const binary = join(dir, "vfio-holder");
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  execFileSync("gcc", ["-static", "-O2", "-Wall", "-Werror", "-o", `${binary}.tmp`, SOURCE], { stdio: ["ignore", "inherit", "inherit"] });
  renameSync(`${binary}.tmp`, binary);
  return binary;
}
