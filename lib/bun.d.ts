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
