// The hook's hard deadline. Deadline checks inside the plugins are
// cooperative; this one is not: a worker thread ends the whole process when
// it outlives its budget, even while the main thread is stuck in a
// synchronous call. libvirt itself waits for the hook forever.
//
// It ends the process with _exit(exitCode) rather than a signal: for events
// that must not fail (reconnect: libvirt kills a VM whose reconnect hook
// fails, and death by a signal is a failure) the hook still exits 0.
export function startWatchdog(budgetMs: number, message: string, logFile: string, exitCode: number): void {
  const line = JSON.stringify(`vmhook: ${message}\n`);
  const source = `
    import { appendFileSync, writeSync } from "node:fs";
    import { dlopen, FFIType } from "bun:ffi";
    const libc = dlopen("libc.so.6", { _exit: { args: [FFIType.i32], returns: FFIType.void } });
    setTimeout(() => {
      try { writeSync(2, ${line}); } catch {}
      try { appendFileSync(${JSON.stringify(logFile)}, new Date().toISOString() + " " + ${line}); } catch {}
      libc.symbols._exit(${Math.trunc(exitCode)});
    }, ${Math.max(1, Math.floor(budgetMs))});
  `;
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "application/javascript" })));
  (worker as unknown as { unref(): void }).unref(); // Bun's Worker: never keeps a finished hook alive
}
