// The user's editor on a temporary file, and a yes/no question on the
// terminal: what `vmhook config --edit` needs from the person at the keyboard.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describeError, FixableError, VmhookError } from "../errors.ts";
import { shellWord } from "../metadata-text.ts";

const EDITOR_TIMEOUT_MS = 24 * 3600 * 1000; // a person at the keyboard; the limit only guards against a lost editor

/** Opens the editor on the text; returns what was saved. */
export function runEditor(text: string, name: string): string {
  const { directory, file } = fileForEditor(text, name);
  try {
    const editor = process.env.VISUAL || process.env.EDITOR || "vi";
    // As git does: the variable is a shell command line, the file its last argument.
    const result = whileTheEditorHasTheTerminal(() => spawnSync("sh", ["-c", `${editor} "$1"`, "sh", file], { stdio: "inherit", timeout: EDITOR_TIMEOUT_MS }));
    if (result.status !== 0) throw new VmhookError(`the editor (${editor}) exited with ${result.status ?? result.signal}; nothing was changed`);
    return fs.readFileSync(file, "utf8");
  } finally {
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

/**
 * A file of the user's own for the editor, in their temporary directory (not
 * under --root: the editor runs here, for the person at the keyboard). A
 * failure names the directory, the errno and the fix, not Node's message.
 */
function fileForEditor(text: string, name: string): { directory: string; file: string } {
  const parent = os.tmpdir();
  let directory: string | undefined;
  try {
    directory = fs.mkdtempSync(path.join(parent, "vmhook-config-"));
    const file = path.join(directory, `${name.replace(/[^\w.-]/g, "_")}-vmhook.xml`);
    fs.writeFileSync(file, text, { mode: 0o600 });
    return { directory, file };
  } catch (error) {
    if (directory) fs.rmSync(directory, { recursive: true, force: true });
    const code = (error as NodeJS.ErrnoException).code ?? describeError(error);
    throw new FixableError(`cannot make a file for the editor in ${parent} (${code})`, `set TMPDIR to a directory you may write, or give the metadata with vmhook config ${shellWord(name)} --set FILE`);
  }
}

/**
 * Runs the editor with Ctrl-C and Ctrl-\ left to it, as git does: the terminal
 * sends them to vmhook too (a command run from the editor, vi's :!, stopped
 * with Ctrl-C), which would otherwise end vmhook under a running editor, the
 * edit lost and its file left behind. An editor that the signal ends is an
 * editor that failed: nothing is stored.
 */
function whileTheEditorHasTheTerminal<T>(run: () => T): T {
  const ignore = () => {};
  process.on("SIGINT", ignore).on("SIGQUIT", ignore);
  try {
    return run();
  } finally {
    process.off("SIGINT", ignore).off("SIGQUIT", ignore);
  }
}

/** Asks on the terminal; false when there is none (a script: keep the old config). */
export function askYes(question: string): boolean {
  if (!process.stdin.isTTY) return false;
  process.stderr.write(`${question} [Y/n] `);
  const buffer = Buffer.alloc(64);
  let read = 0;
  try {
    read = fs.readSync(0, buffer, 0, buffer.length, null);
  } catch {
    return false;
  }
  return !/^\s*n/i.test(buffer.subarray(0, read).toString());
}
