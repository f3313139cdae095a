// The two libc calls Bun has no API for, bound once: each dlopen through
// bun:ffi compiles its trampolines with TinyCC, which costs tens of ms under
// TCG (docs/bench.md), so the hook binds both in one go.
//   dup2   stdout becomes a copy of stderr in hook mode (lib/hook.ts)
//   flock  vmhook's locks (lib/lock.ts)

export interface Libc {
  dup2(from: number, to: number): number;
  flock(fd: number, operation: number): number;
}

let bound: Libc | undefined;

export async function libc(): Promise<Libc> {
  if (!bound) {
    const { dlopen, FFIType } = await import("bun:ffi");
    const { symbols } = dlopen("libc.so.6", {
      dup2: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
      flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    });
    bound = { dup2: (from, to) => symbols.dup2(from, to), flock: (fd, operation) => symbols.flock(fd, operation) };
  }
  return bound;
}
