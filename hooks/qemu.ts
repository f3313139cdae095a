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
import type { EventAction, HookInvocation } from "../lib/hook.ts";
import type { HookEvent } from "../lib/plugin.ts";

// What happens on each libvirt event. `mayFail`: a failure aborts what libvirt
// is doing (it then still runs stopped and release); otherwise vmhook logs
// and exits 0 whatever happens.
export const EVENTS: Record<string, { event: HookEvent; mayFail: boolean; action: EventAction }> = {
  // Before libvirt sets up the VM: apply every plugin's steps as one
  // transaction (hugepages, CPU isolation, mdevs, GPU handover), journaled.
  "prepare begin": { event: "prepare", mayFail: true, action: (run) => run.prepare() },
  // Around QEMU's launch: optional plugin handlers.
  "start begin": { event: "start", mayFail: true, action: (run) => run.handlers("start") },
  "started begin": { event: "started", mayFail: true, action: (run) => run.handlers("started") },
  // QEMU has exited: optional handlers (stopped), then give everything back
  // from the journal (release), whatever the metadata says now.
  "stopped end": { event: "stopped", mayFail: false, action: (run) => run.handlers("stopped") },
  "release end": { event: "release", mayFail: false, action: (run) => run.release() },
  // Incoming migration or restore: check the config; print nothing (stdout
  // would replace the XML). prepare follows as usual.
  "migrate begin": { event: "migrate", mayFail: true, action: (run) => run.validate("migrate") },
  "restore begin": { event: "restore", mayFail: true, action: (run) => run.validate("restore") },
  // The daemon restarted with the VM running: keep the journal, never fail
  // (a failing reconnect hook makes libvirt kill the VM).
  "reconnect begin": { event: "reconnect", mayFail: false, action: (run) => run.reconnect() },
};

/**
 * What sends a domain past the fast path: vmhook's prefix, or a namespace
 * declaration naming vmhook in any case (urn:vmhook:1, and the wrong URIs the
 * hook refuses under any prefix: urn:vmhook, urn:vmhook:2, URN:VMHOOK:1).
 * Nothing here loads a module, so a domain without vmhook costs no import.
 * Whoever may edit the domain writes its text (a <description>), and the fast
 * path has no time limit: a prefix stops at the next ":" as a quoted value at
 * the next quote, so no part of the text is searched from more than one place
 * ("xmlns:xmlns:…" searched to its end from each "xmlns" took minutes).
 */
const MENTIONS_VMHOOK = /<vmhook:|xmlns(?::[^\s=:]*)?\s*=\s*["'][^"']*vmhook/i;

/** Whether the domain XML may ask for vmhook (MENTIONS_VMHOOK): what sends it past the fast path. */
export const mentionsVmhook = (xml: string): boolean => MENTIONS_VMHOOK.test(xml);

export async function hookMain(args: string[], root = process.env.VMHOOK_ROOT || "/", checkXml?: (xml: string) => void): Promise<number> {
  const known = EVENTS[`${args[1]} ${args[2]}`];
  let xml = "";
  let missingXml: string | undefined;
  try {
    xml = await Bun.stdin.text();
  } catch (error) {
    const { code, message } = error as NodeJS.ErrnoException;
    missingXml = `cannot be read (${code ? `${code}: ` : ""}${message})`;
  }
  // By hand (vmhook hook): the XML read here (empty or not) is the one acted on, checked before anything runs.
  checkXml?.(xml);
  // libvirt writes the domain XML to stdin at every event vmhook knows, unless
  // it failed to format it: then prepare, start, started, migrate and restore
  // do not run at all, while stopped, release and reconnect run with an empty
  // stdin (qemu_process.c). So a stdin unreadable or empty never passes for a
  // domain without metadata: vmhook cannot tell whether it asks for plugins.
  if (known && (missingXml !== undefined || xml === "")) {
    const { runEvent, withoutDomainXml } = await import("../lib/hook.ts");
    return runEvent({ args, xml, root, ownProcess: true }, known.event, withoutDomainXml(missingXml ?? "is empty", known.mayFail), known.mayFail);
  }
  // The fast path: a domain that never mentions vmhook and holds no journal
  // costs one pattern search and one stat.
  // "<vmhook:" without the namespace, or a namespace close to vmhook's, is a mistake to report, never to skip.
  if (!mentionsVmhook(xml) && !(await holdsJournal(xml, root))) return 0;
  // libvirt's session daemon runs this same hook as its own user, and nothing vmhook does can be done as one.
  const uid = process.geteuid?.();
  if (known && root === "/" && uid !== undefined && uid !== 0) {
    process.stderr.write(`vmhook: the hook runs as uid ${uid}, not as root: libvirt's session daemon (qemu:///session) runs hooks as its own user, and vmhook acts only for the system daemon's domains (qemu:///system); define ${args[0]} there, or remove its vmhook metadata\n`);
    return known.mayFail ? 1 : 0;
  }
  const { runEvent } = await import("../lib/hook.ts");
  const invocation: HookInvocation = { args, xml, root, ownProcess: true };
  return runEvent(invocation, known?.event, known?.action, known?.mayFail ?? false);
}

async function holdsJournal(xml: string, root: string): Promise<boolean> {
  const uuid = /<uuid>\s*([0-9a-fA-F-]{36})\s*<\/uuid>/.exec(xml)?.[1]?.toLowerCase();
  return uuid !== undefined && /^[0-9a-f-]{36}$/.test(uuid) && Bun.file(`${root.replace(/\/$/, "")}/run/vmhook/${uuid}.json`).exists();
}

/** Hook mode when invoked as ".../qemu" or from libvirt's ".../qemu.d/" directory. */
function isHookInvocation(argv0: string): boolean {
  const [name, directory] = argv0.split("/").reverse();
  return name === "qemu" || directory === "qemu.d";
}

// The CLI (yargs and every command) loads only when it is the CLI; its
// `vmhook hook` runs events through hookMain, handed over so lib/ never
// imports this file.
if (import.meta.main) {
  const args = process.argv.slice(2);
  if (isHookInvocation(process.argv0)) void hookMain(args).then(endHook);
  else void import("../lib/cli/index.ts").then(({ runCli }) => runCli(args, hookMain)).then((code) => (process.exitCode = code));
}

/** Time for stderr to reach libvirt's pipe (a few lines, far below its buffer) before a process something else keeps alive is ended. */
const LAST_WRITES_MS = 200;

/**
 * libvirt waits for the hook to exit, and the event's work has ended (a step
 * abandoned at its time limit included): a timer or socket a plugin left
 * open must not keep the process until its watchdog reports it killed. It
 * ends by itself once its output is written; what is left gets a moment more.
 */
function endHook(code: number): void {
  process.exitCode = code;
  setTimeout(() => process.exit(code), LAST_WRITES_MS).unref();
}

