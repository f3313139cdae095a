// `vmhook hook NAME OP SUBOP [EXTRA]`: run one libvirt event by hand, exactly
// as libvirt would (domain XML on stdin), for debugging. Unlike the real hook
// it then says what it did: the lines it logged, or why there were none.
import type { CommandModule } from "yargs";
import { describeError, VmhookError } from "../errors.ts";
import { definedUuid, uuidFromXml } from "../definitions.ts";
import { dacUserFromXml } from "../domain.ts";
import type { Host } from "../host.ts";
import { readJournal } from "../journal.ts";
import { readLogFrom, terminalText } from "../log.ts";
import { nameArgument } from "../metadata-text.ts";
import { paths } from "../paths.ts";
import type { GlobalOptions } from "./options.ts";
import { requireRoot } from "./as-root.ts";
import { lostTrackPids, runningOrWhyUnknown } from "./running.ts";
import { LIBVIRT_HOOK_EVENTS, notAHookEvent } from "./usage.ts";

/** hooks/qemu.ts's hookMain: the hook exactly as libvirt runs it; `checkXml` sees the domain XML it read before it acts on it (by hand). */
export type HookMain = (args: string[], root: string, checkXml?: (xml: string) => void) => Promise<number>;

interface HookArgs extends GlobalOptions {
  name: string;
  op: string;
  subop: string;
  extra?: string;
}

/** Where the log ends now: its size and inode; size 0 when there is none, or none the hook writes to (readLogFrom says why, after the event). */
function logEnd(host: Host): { size: number; inode?: number } {
  try {
    const { size, inode } = readLogFrom(host, (size) => size);
    return { size, inode };
  } catch {
    return { size: 0 };
  }
}

/** The file from byte `from` on, as readLogFrom reads it; undefined when it does not exist. */
function readFrom(host: Host, file: string, from: number): { text: string; inode: number } | undefined {
  try {
    return readLogFrom(host, () => from, file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/**
 * What the event logged: the log past where it ended, read only as the hook
 * writes it. /var/log may be writable by a group: a symlink or another user's
 * file planted there, growing meanwhile, must not reach root's terminal. A
 * rotation meanwhile (another file at the log's place) put the event's first
 * lines at the end of vmhook.log.1, and the rest from the new log's start.
 */
function loggedSince(host: Host, end: { size: number; inode?: number }): { logged: string } | { unread: string } {
  try {
    const now = readFrom(host, paths.log, end.size);
    if (end.inode === undefined || now?.inode === end.inode) return { logged: now?.text ?? "" };
    const rotated = readFrom(host, paths.rotatedLog, end.size);
    const before = rotated?.inode === end.inode ? rotated.text : "";
    return { logged: before + (readFrom(host, paths.log, 0)?.text ?? "") };
  } catch (error) {
    return { unread: describeError(error) };
  }
}

/**
 * The events libvirt runs only while the domain's QEMU does not: the hook
 * takes a journal found at prepare for a crashed run's and undoes it, release
 * gives everything back, start and stopped run steps meant for before and
 * after QEMU. By hand on a running VM they would take its GPU from under it.
 */
const NOT_WHILE_RUNNING = ["prepare", "start", "stopped", "release"];

/**
 * The events libvirt runs only while the domain's QEMU runs: started marks
 * the journal running, and so does reconnect; by hand on a VM shut off they
 * would have vmhook recover take a journal of a VM being started (prepared,
 * QEMU not launched yet) for a stopped one's.
 */
const ONLY_WHILE_RUNNING = ["started", "reconnect"];

/**
 * Refuses an event libvirt runs only while the domain runs (or only while it
 * does not) when it does not (or does), or when that cannot be told. `xml`:
 * the domain XML on stdin, whose UUID finds a QEMU of it libvirt lost track of.
 */
function refuseUnlessLibvirtWould(host: Host, { name, op, subop }: HookArgs, xml: string): void {
  const runningWanted = ONLY_WHILE_RUNNING.includes(op) ? true : NOT_WHILE_RUNNING.includes(op) ? false : undefined;
  if (runningWanted === undefined) return;
  // Its seclabel user runs its QEMU when libvirt's user does not: the hook's release counts that one's too (journal.dacUser).
  const uuid = uuidFromXml(xml);
  const domain = { name, uuid, dacUser: dacUserFromXml(xml) };
  const running = runningOrWhyUnknown(host, domain);
  if (running === runningWanted) return;
  const command = `vmhook hook ${nameArgument(name)} ${op} ${subop}`;
  if (typeof running === "string") throw new VmhookError(`${command} refused: cannot tell whether ${name} runs (${running})`, [`fix what that names, then run it again`]);
  const pidFile = `${paths.libvirtQemuRunDir}/${name}.pid`;
  if (runningWanted) {
    throw new VmhookError(`${command} refused: ${name} is not running (no live process in ${pidFile}${uuid ? `, nor one with -uuid ${uuid}` : ""}), and libvirt runs ${op} only while its QEMU does: it would mark what an earlier run left as a running VM's`, [
      `start ${name} first (virsh start ${nameArgument(name)}); prepare, start, stopped and release are the events of a VM that is not running`,
    ]);
  }
  const lostTrack = lostTrackPids(host, domain);
  const how = lostTrack.length > 0 ? `a QEMU with its UUID ${uuid} runs, pid ${lostTrack.join(", ")}, with no live process in ${pidFile}: libvirt has lost track of it` : `${pidFile} names a live process`;
  throw new VmhookError(`${command} refused: ${name} is running (${how}), and libvirt runs ${op} only while it is not: it would take back what the running VM uses`, [
    `shut ${name} down first (virsh shutdown ${nameArgument(name)}); started and reconnect are the events of a running VM`,
  ]);
}

/**
 * The hook acts on the journal of the UUID in the XML on stdin, whatever name
 * is typed: another domain's XML (a saved dumpxml) would have it undo that
 * domain's changes, running or not, as this one's, or (started, reconnect)
 * mark a shut-off one's leftover journal running. Whatever the event, the
 * journal names its domain; it must be the one typed, whose running was checked.
 */
function refuseAnotherDomainsXml(host: Host, { name, op, subop }: HookArgs, xml: string): void {
  const uuid = uuidFromXml(xml);
  const owner = uuid === undefined ? undefined : readJournal(host, uuid)?.domain.name;
  // A journal under another name is this domain's all the same when libvirt's definition of `name` has its UUID: renamed (virsh domrename) since it started.
  if (uuid === undefined || owner === undefined || owner === name || definedUuid(host, name) === uuid) return;
  const command = `vmhook hook ${nameArgument(name)} ${op} ${subop}`;
  throw new VmhookError(`${command} refused: the domain XML on stdin has the UUID of ${owner} (${uuid}), not ${name}'s: the hook would take ${owner}'s journal (${paths.journal(uuid)}) for ${name}'s and act on it`, [
    `pass ${name}'s own XML: virsh dumpxml ${nameArgument(name)} | ${command}`,
  ]);
}

export const hookCommand = (hookMain: HookMain): CommandModule<GlobalOptions, HookArgs> => ({
  command: "hook <name> <op> <subop> [extra]",
  describe: "run one hook event by hand, as libvirt does (domain XML on stdin), and say what it did",
  builder: (y) =>
    y
      .positional("name", { type: "string", demandOption: true, describe: "the domain's name, as libvirt passes it" })
      .positional("op", { type: "string", demandOption: true, describe: `with subop, an event libvirt runs: ${LIBVIRT_HOOK_EVENTS.join(", ")}` })
      .positional("subop", { type: "string", demandOption: true, describe: "begin or end, as the event above has it" })
      .positional("extra", { type: "string", default: "-", describe: "libvirt's fourth argument: - at every event but release end, where libvirt 10.5 and later pass the shutoff reason (shutdown, destroyed, failed, ...); vmhook acts alike whatever it is" })
      .check(({ name, op, subop }) => notAHookEvent(name, op, subop) ?? true),
  async handler(args) {
    requireRoot(`hook ${nameArgument(args.name)} ${args.op} ${args.subop}`, "libvirt runs the hook as root, and its steps change the host as root", args.root);
    // Typed at a terminal with nothing piped in, the hook would wait silently for the XML libvirt passes.
    if (process.stdin.isTTY) {
      const command = `vmhook hook ${nameArgument(args.name)} ${args.op} ${args.subop}`;
      process.stderr.write(terminalText(`vmhook hook: reading ${args.name}'s domain XML on stdin, as libvirt passes it (end it with Ctrl-D); to pass it: virsh dumpxml ${nameArgument(args.name)} | ${command}\n`));
    }
    const logEndBefore = logEnd(args.host);
    const event = `${args.op} ${args.subop} of ${args.name}`;
    // Checked on the XML the hook read, before it acts: its UUID finds a QEMU libvirt lost track of.
    const checkXml = (xml: string) => {
      refuseUnlessLibvirtWould(args.host, args, xml);
      refuseAnotherDomainsXml(args.host, args, xml);
    };
    const code = await hookMain([args.name, args.op, args.subop, args.extra ?? "-"], args.root, checkXml);
    process.exitCode = code;
    // The hook keeps stdout empty (libvirt may read it as XML): the report goes to stderr.
    const since = loggedSince(args.host, logEndBefore);
    const what =
      "unread" in since
        ? `what it did is not shown: ${since.unread}\n`
        : since.logged
          ? `what it did (from ${paths.log}):\n${since.logged.replace(/^\S+ /gm, "  ")}`
          : code !== 0
            ? "nothing logged: the error above says what failed\n"
            : `nothing logged: the domain XML on stdin has no vmhook metadata and holds no journal, or ${args.op} ${args.subop} has nothing to do for it${args.host.exists(paths.log) ? "" : ` (or ${paths.log} cannot be written)`}\n`;
    process.stderr.write(terminalText(`vmhook hook: ${event} exited ${code}; ${what}`));
  },
});
