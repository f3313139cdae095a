// The few Bun APIs vmhook uses (it runs as a bun-compiled binary and its tests run under bun).
declare module "bun:ffi" {
  export const FFIType: { i32: number; u64: number; ptr: number };
  /** The address of a typed array's memory, for a pointer argument. */
  export function ptr(view: Uint8Array): number;
  export const read: { i32(address: number, offset: number): number };
  export function dlopen<T extends Record<string, { args: number[]; returns: number }>>(
    path: string,
    symbols: T,
  ): { symbols: { [K in keyof T]: (...args: number[]) => number }; close(): void };
}

interface ImportMeta {
  /** True in the module bun started with. */
  main: boolean;
}

/** A child of Bun.spawn (lib/host.ts's bounded writes). */
interface BunSubprocess {
  readonly pid: number;
  readonly exited: Promise<number>;
  readonly signalCode: string | null;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stderr: ReadableStream<Uint8Array>;
  kill(signal: string): void;
  unref(): void;
}

/** The child's stdin, when spawned with stdin: "pipe" (lib/host.ts's helpers). */
interface BunFileSink {
  write(chunk: string): number;
  end(): number | Promise<number>;
}

/** Bun's file API (the hook's fast path uses it instead of node:fs, which is slow to load), spawn and spawnSync (lib/host.ts, bench/). */
/** A node of Bun.XML.parse's ordered tree ({ compact: false }): text, an element, a comment or a processing instruction. */
type BunXmlNode = string | BunXmlElement | { comment: string } | { target: string; data: string };
interface BunXmlElement {
  name: string;
  attributes: Record<string, string>;
  children: BunXmlNode[];
}

declare const Bun: {
  stdin: { text(): Promise<string> };
  /** Bun's XML 1.0 parser (lib/xml-reader.ts): a SyntaxError for anything not well-formed. */
  XML: { parse(text: string, options: { compact: false }): BunXmlElement };
  file(path: string): { exists(): Promise<boolean> };
  /** What a module imports by a literal name (lib/custom-plugins/module.ts checks each before a plugin loads). */
  Transpiler: new (options: { loader: "js" | "jsx" | "ts" | "tsx" }) => { scanImports(code: string): { path: string; kind: string }[] };
  /** The file Bun loads for `specifier` imported from the directory `from` (symlinks followed); throws when there is none. */
  resolveSync(specifier: string, from: string): string;
  spawn(
    command: string[],
    options: { stdin: "pipe"; stdout: "ignore" | "pipe"; stderr: "pipe"; env: Record<string, string>; detached?: boolean },
  ): BunSubprocess & { readonly stdin: BunFileSink };
  spawn(
    command: string[],
    options: { stdin: Uint8Array; stdout: "ignore" | "pipe"; stderr: "pipe"; env: Record<string, string>; detached?: boolean },
  ): BunSubprocess;
  /** Blocks the thread: clock_nanosleep(CLOCK_MONOTONIC) for `ms`. */
  sleepSync(ms: number): void;
  spawnSync(
    command: string[],
    options: {
      stdin?: Uint8Array;
      stdout?: "ignore" | "pipe";
      stderr?: "ignore" | "pipe";
      env?: Record<string, string>;
      timeout?: number;
      killSignal?: string;
      maxBuffer?: number;
      /** setsid(2): the child leads a process group of its own. */
      detached?: boolean;
    },
  ): {
    pid: number;
    exitCode: number | null;
    signalCode?: string | null;
    stdout?: Uint8Array;
    stderr?: Uint8Array;
    exitedDueToTimeout?: boolean;
    /** The child's CPU time, in microseconds. */
    resourceUsage: { cpuTime: { total: bigint } };
  };
};

