// vmhook's single entry point.
//
// Installed as /etc/libvirt/hooks/qemu, libvirt runs it as
//   qemu DOMAIN OPERATION SUB-OPERATION EXTRA   (domain XML on stdin)
// and it runs in hook mode. Under any other name (vmhook) it is the CLI.
//
// Hook mode prints nothing on stdout, ever: libvirt reads stdout of migrate
// and restore as replacement XML.
//
// The fast path (a domain without vmhook metadata) uses Bun's own file API:
// loading node:fs alone costs about as much as starting the runtime (see
// docs/bench.md), and everything else is loaded by dynamic import, which the
// build (--splitting --bytecode) keeps in chunks not even loaded on this path.
import { hookMain } from "../lib/hook-entry.ts";

/** Hook mode when invoked as ".../qemu" or from libvirt's ".../qemu.d/" directory. */
function isHookInvocation(argv0: string): boolean {
  const [name, directory] = argv0.split("/").reverse();
  return name === "qemu" || directory === "qemu.d";
}

// The CLI (yargs and every command) loads only when it is the CLI.
if (import.meta.main) {
  const args = process.argv.slice(2);
  const exitCode = isHookInvocation(process.argv0) ? hookMain(args) : import("../lib/cli/index.ts").then(({ runCli }) => runCli(args));
  void exitCode.then((code) => (process.exitCode = code));
}
