// The libc calls Bun has no API for. Each dlopen through bun:ffi compiles its
// trampolines with TinyCC, which costs tens of ms under TCG (docs/bench.md),
// so the two every hook may need are bound in one go:
//   dup2   stdout becomes a copy of stderr in hook mode (lib/hook.ts)
//   flock  vmhook's locks (lib/lock.ts, through Host.openLock)
// and ioctl, needed only to give a console back (plugins/vfio/display.ts),
// apart, when it is first called.

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

/** ioctl(2) with a pointer to `argument` (read and written by the kernel): 0, or the errno it failed with. */
export type Ioctl = (fd: number, request: number, argument: Uint8Array) => number;

let boundIoctl: Ioctl | undefined;

export async function ioctl(): Promise<Ioctl> {
  if (!boundIoctl) {
    const { dlopen, FFIType, ptr, read } = await import("bun:ffi");
    const { symbols } = dlopen("libc.so.6", {
      ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
      __errno_location: { args: [], returns: FFIType.ptr },
    });
    boundIoctl = (fd, request, argument) => (symbols.ioctl(fd, request, ptr(argument)) === 0 ? 0 : read.i32(symbols.__errno_location(), 0));
  }
  return boundIoctl;
}
