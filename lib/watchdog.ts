// The hook's hard deadline. Deadline checks inside the plugins are
// cooperative; this one is not: a worker thread kills the whole process when
// it outlives its budget, even while the main thread is stuck in a
// synchronous call. libvirt itself waits for the hook forever.
export function startWatchdog(budgetMs: number, message: string, logFile: string): void {
  const line = JSON.stringify(`vmhook: ${message}\n`);
  const source = `
    import { appendFileSync, writeSync } from "node:fs";
    setTimeout(() => {
      try { writeSync(2, ${line}); } catch {}
      try { appendFileSync(${JSON.stringify(logFile)}, new Date().toISOString() + " " + ${line}); } catch {}
      process.kill(${process.pid}, "SIGKILL");
    }, ${Math.max(1, Math.floor(budgetMs))});
  `;
  const worker = new Worker(URL.createObjectURL(new Blob([source], { type: "application/javascript" })));
  (worker as unknown as { unref(): void }).unref(); // Bun's Worker: never keeps a finished hook alive
}
