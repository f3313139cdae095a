// Builds test/kernel/vfio-user/vfio-user.c (a VFIO user as QEMU is one: it
// holds a device's fd, or reads a BAR through it) as a static binary for the
// busybox guest, cached in .cache/vfio-user/<hash of the source>/vfio-user.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { join, resolve } from "node:path";

const REPO = resolve(import.meta.dirname, "../..");
const SOURCE = join(REPO, "test/kernel/vfio-user/vfio-user.c");

/** Builds (once per source) and returns the path of the static vfio-user; install it in the guest as /usr/bin/vfio-user. */
export function buildVfioUser(): string {
  const hash = createHash("sha256").update(readFileSync(SOURCE)).digest("hex").slice(0, 16);
  const dir = join(REPO, ".cache/vfio-user", hash);
  const binary = join(dir, "vfio-user");
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true });
  execFileSync("gcc", ["-static", "-O2", "-Wall", "-Werror", "-o", `${binary}.tmp`, SOURCE], { stdio: ["ignore", "inherit", "inherit"] });
  renameSync(`${binary}.tmp`, binary);
  return binary;
}
