// A real file system for RootedHost's errno handling: a temporary directory
// holding a symlink loop (/loop-a and /loop-b point at each other, ELOOP past
// them, which root cannot bypass), removed afterwards.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { RootedHost } from "../../lib/host.ts";

/** Runs `check` with the directory and a RootedHost on it, then removes the directory. */
export function withLoopTree(check: (root: string, host: RootedHost) => void): void {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-loop-tree-"));
  try {
    fs.symlinkSync("loop-b", path.join(root, "loop-a"));
    fs.symlinkSync("loop-a", path.join(root, "loop-b"));
    check(root, new RootedHost(root));
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}
