// Run in the kernel-bench guest by the compiled vmhook as bun (BUN_BE_BUN=1):
// fragments memory on purpose, with pages that compaction cannot move. It
// fills MIB MiB of pipes, one 4 KiB page of data each (pipe buffers are
// unmovable kernel pages), then closes every other pipe: the freed pages are
// free memory in holes between pages that stay, so no 2 MiB block forms
// there. Writes "ready" to the file READY, then holds the rest until killed.
// Needs `ulimit -n` of at least MIB * 256 / 2 + 100.
//   BUN_BE_BUN=1 vmhook fragment.js MIB READY
import { dlopen, FFIType, ptr } from "bun:ffi";
import { writeFileSync } from "node:fs";

const [mib, ready] = [Number(process.argv[2]), process.argv[3]];
const { symbols: libc } = dlopen("libc.so.6", {
  pipe: { args: [FFIType.ptr], returns: FFIType.i32 },
  write: { args: [FFIType.i32, FFIType.ptr, FFIType.u64], returns: FFIType.i64 },
  close: { args: [FFIType.i32], returns: FFIType.i32 },
});
const PAGE = 4096;
const page = new Uint8Array(PAGE).fill(0x5a);
const ends = new Int32Array(2);
const readEnds = [];
for (let i = 0; i < (mib * 1024 * 1024) / PAGE; i++) {
  if (libc.pipe(ptr(ends)) !== 0) throw new Error(`pipe ${i} failed (raise ulimit -n)`);
  if (Number(libc.write(ends[1], ptr(page), PAGE)) !== PAGE) throw new Error(`write to pipe ${i} failed`);
  libc.close(ends[1]);
  readEnds.push(ends[0]);
}
readEnds.forEach((fd, index) => index % 2 === 1 && libc.close(fd));
writeFileSync(ready, "ready\n");
setInterval(() => {}, 1 << 30);
