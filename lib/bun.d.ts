// The few Bun APIs vmhook uses (it runs as a bun-compiled binary and its tests run under bun).
declare module "bun:ffi" {
  export const FFIType: { i32: number };
  export function dlopen<T extends Record<string, { args: number[]; returns: number }>>(
    path: string,
    symbols: T,
  ): { symbols: { [K in keyof T]: (...args: number[]) => number }; close(): void };
}

interface ImportMeta {
  /** True in the module bun started with. */
  main: boolean;
}

/** Bun's file API (the hook's fast path uses it instead of node:fs, which is slow to load) and spawnSync (lib/host.ts, bench/). */
declare const Bun: {
  stdin: { text(): Promise<string> };
  file(path: string): { exists(): Promise<boolean> };
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
    },
  ): {
    exitCode: number | null;
    signalCode?: string | null;
    stdout?: Uint8Array;
    stderr?: Uint8Array;
    exitedDueToTimeout?: boolean;
    /** The child's CPU time, in microseconds. */
    resourceUsage: { cpuTime: { total: bigint } };
  };
};

