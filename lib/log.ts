// One log line per action and undo, with time, domain, event and result:
// appended to /var/log/vmhook.log and, depending on the mode, echoed on
// stderr or kept for the failure report (libvirt shows the first stderr
// line to the user, so in hook mode the cause must come first).
import * as fs from "node:fs";
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";

export type LogLevel = "info" | "warn" | "error";

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** The lines logged so far (without timestamps), for the report after a failure. */
  readonly transcript: readonly string[];
}

export interface LoggerOptions {
  domain?: string;
  event?: string;
  /** "stderr": print each line as it comes (CLI); "buffer": keep it for the end (hook mode); "none": file only. */
  echo: "stderr" | "buffer" | "none";
  /** Write to the log file under the host's root (off for dry runs). */
  file: boolean;
  /** Sees every line as it is logged (the watchdog keeps the last cause). */
  onEntry?: (level: LogLevel, line: string) => void;
}

/**
 * Control characters shown escaped ("\n", "\r", "\u009b"): one message is one
 * line, so a value from the domain XML (size="2M&#10;...", a domain name with
 * a carriage return, a C1 control such as NEL or CSI, a Unicode line
 * separator) cannot forge log lines, move a terminal's cursor or push the
 * cause off the first line of stderr.
 */
export const oneLine = (text: string): string => text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, escapeControl);

/** For the terminal (the CLI's output): line breaks and tabs stay, every other control is shown escaped, as oneLine does. */
export const terminalText = (text: string): string => text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]/g, escapeControl);

const escapeControl = (char: string): string => (char < " " ? JSON.stringify(char).slice(1, -1) : `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`);

export function createLogger(host: Host, options: LoggerOptions): Logger {
  const transcript: string[] = [];
  // The domain name is libvirt's argument, written by whoever defined the domain.
  const context = oneLine([options.domain, options.event].filter(Boolean).join(" "));
  let fileBroken = !options.file;
  const emit = (level: LogLevel, message: string) => {
    const text = oneLine(message);
    const line = `${level === "info" ? "" : `${level}: `}${text}`;
    transcript.push(line);
    options.onEntry?.(level, text);
    if (options.echo === "stderr") process.stderr.write(`vmhook: ${line}\n`);
    if (fileBroken) return;
    try {
      const logPath = host.resolve(paths.log);
      fs.appendFileSync(logPath, `${new Date(host.now()).toISOString()} ${context ? `[${context}] ` : ""}${line}\n`, { mode: 0o640 });
    } catch {
      fileBroken = true; // a read-only /var/log must never fail a VM start
    }
  };
  return {
    info: (message) => emit("info", message),
    warn: (message) => emit("warn", message),
    error: (message) => emit("error", message),
    transcript,
  };
}
