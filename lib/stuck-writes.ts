// Writes into sysfs that call a driver's code (unbind, drivers_probe, bind,
// remove, rescan), and rmmod or modprobe of a driver's module (its remove()
// or probe() for each device it drives), that may not have returned:
// lib/bounded-write.ts notes each helper process here, one file per device
// (and, for a module, one for it: module:NAME), from its start until it
// returns, and leaves one that does not return blocked in the kernel. While
// the helper lives, the device's lock is held by the kernel: any later write
// to the device would block vmhook too, so every such write is refused, as is
// every later rmmod or modprobe of the module. Once the helper is gone, the
// note is stale: the next write to the device, or vmhook recover, removes it.
import { VmhookError } from "./errors.ts";
import { normalModule } from "./kernel-modules.ts";
import type { Host } from "./host.ts";
import { openFiles, processIds, processName } from "./open-files.ts";
import { paths } from "./paths.ts";
import { procStat } from "./processes.ts";
import { ensureStateDir, lonelyTemps, readStateFile, writeStateFile } from "./state-files.ts";

export interface StuckWrite {
  /** The helper process blocked in the write. */
  pid: number;
  /** Its start time (field 22 of /proc/PID/stat): a later process given the same pid is not it. */
  startTime: string;
  /** What the write acts on: a PCI address, a platform device's name, an mdev's UUID, or module:NAME (moduleSubject) for a module's rmmod or modprobe. */
  device: string;
  driver: string;
  /** A write: value written to file. */
  file?: string;
  value?: string;
  /** Or a program that loads or unloads a module: its command line ("rmmod nvidia"). */
  command?: string;
  /** A sound card's device nodes (an HDMI audio function's unbind): its remove() waits until every program has closed them. */
  waitsFor?: string[];
  /** When the write began, ISO 8601. */
  since: string;
  domain: { name: string; uuid: string };
}

export interface StuckWriteStatus extends StuckWrite {
  /** The helper still runs (blocked in the driver). */
  running: boolean;
  /** Its state letter from /proc/PID/stat ("D": uninterruptible sleep), when running. */
  state?: string;
  /** The file that holds it: NAME.json, or NAME.json.forgetting while forgetNoteRead checks it (or was killed doing so). */
  note: string;
}

/** What the user can do while a helper is stuck. */
export const STUCK_ADVICE = "do not use the device, and do not unload its driver; wait until the driver lets go (vmhook status shows it), or reboot the host";

/** A sound card's device node: /dev/snd/controlC1, pcmC1D3p, hwC1D0, midiC1D0. */
export const SOUND_NODE = /^\/dev\/snd\/(controlC|pcmC|hwC|midiC)\d+[A-Za-z0-9]*$/;

/**
 * The programs keeping a sound card's nodes open, "pid 777 (aplay) holds
 * /dev/snd/pcmC1D3p": a stuck unbind of the card's device waits for them.
 * The card is disconnected by then, so their descriptors end in " (deleted)".
 * Throws when a process's files cannot be read.
 */
export function soundCardHolders(host: Host, nodes: string[]): string[] {
  if (nodes.length === 0) return [];
  return processIds(host).flatMap((pid) =>
    openFiles(host, pid)
      .map((file) => file.replace(/ \(deleted\)$/, ""))
      .filter((file) => nodes.includes(file))
      .map((file) => `pid ${pid} (${processName(host, pid)}) holds ${file}`),
  );
}

/** What the user can do about this stuck write: close the programs holding its sound card, when any can be named, else STUCK_ADVICE. */
export function adviceFor(host: Host, write: StuckWriteStatus): string {
  let holders: string[] = [];
  try {
    holders = soundCardHolders(host, write.waitsFor ?? []);
  } catch {
    // a process whose files cannot be read: the general advice still holds
  }
  return holders.length > 0 ? `${holders.join(", ")}, and its sound card's remove() waits until every program has closed the card: close it (or end it) and the unbind finishes; otherwise ${STUCK_ADVICE}` : STUCK_ADVICE;
}

const MODULE = "module:";
/** What a module's note is filed under: no device name starts with "module:". Named as /proc/modules names it: modprobe vfio-pci and rmmod vfio_pci act on one module. */
export const moduleSubject = (module: string) => `${MODULE}${normalModule(module)}`;
/** The module a note is filed for; undefined for a device's. */
const noteModule = (subject: string) => (subject.startsWith(MODULE) ? subject.slice(MODULE.length) : undefined);

/** A name that is safe as a file name under /run/vmhook/stuck. */
const DEVICE_NAME = /^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$/;

function checkedDevice(device: string): string {
  if (!DEVICE_NAME.test(device)) throw new VmhookError(`internal: "${device}" is not a device name vmhook can note a stuck write for`);
  return device;
}

/** Notes a helper that has started a write into the device's driver, with its start time (field 22 of /proc/PID/stat): a later process given the same pid is not it. Returns the note, for forgetWrite. */
export function noteWrite(host: Host, write: Omit<StuckWrite, "startTime">): StuckWrite {
  ensureStateDir(host);
  ensureStateDir(host, paths.stuckWrites);
  const noted: StuckWrite = { ...write, startTime: procStat(host, write.pid)?.[19] ?? "" };
  writeStateFile(host, paths.stuckWrite(checkedDevice(write.device)), `${JSON.stringify(noted, null, 2)}\n`);
  return noted;
}

/**
 * Removes the note of a helper that returned, while it is still its own:
 * once the helper ended, another hook may have found the note finished,
 * forgotten it and noted its own helper there, which must stay.
 */
export function forgetWrite(host: Host, noted: StuckWrite): void {
  forgetNoteRead(host, noted, paths.stuckWrite(checkedDevice(noted.device)));
}

function withStatus(host: Host, write: StuckWrite, note: string): StuckWriteStatus {
  const stat = procStat(host, write.pid);
  const running = stat !== undefined && stat[19] === write.startTime && stat[0] !== "Z";
  return running ? { ...write, running, state: stat[0], note } : { ...write, running, note };
}

/**
 * A note as noteWrite writes it: one whose helper cannot be matched (a start
 * time of another type never equals /proc's) would pass for a finished write,
 * and the device be written to while its driver still blocks.
 */
function checkNote(note: Partial<StuckWrite> | null, file: string): StuckWrite {
  const text = (value: unknown) => typeof value === "string";
  const optionalText = (value: unknown) => value === undefined || text(value);
  const device = file.slice(file.lastIndexOf("/") + 1).replace(/\.json(\.tmp|\.forgetting)?$/, "");
  if (typeof note !== "object" || note === null) throw new Error(`it holds ${JSON.stringify(note)}, not a note`);
  const wrong = (
    [
      ["pid", Number.isSafeInteger(note.pid) && note.pid! > 0],
      ["startTime", text(note.startTime) && /^\d*$/.test(note.startTime!)],
      ["device", note.device === device],
      ["driver", text(note.driver)],
      ["since", text(note.since)],
      ["domain", text(note.domain?.name) && text(note.domain?.uuid)],
      ["file", optionalText(note.file)],
      ["value", optionalText(note.value)],
      ["command", optionalText(note.command)],
      ["waitsFor", note.waitsFor === undefined || (Array.isArray(note.waitsFor) && note.waitsFor.every((node) => typeof node === "string" && SOUND_NODE.test(node)))],
    ] as const
  ).find(([, valid]) => !valid);
  if (wrong) throw new Error(`"${wrong[0]}" is ${JSON.stringify(note[wrong[0]]) ?? "missing"}${wrong[0] === "device" ? `, not ${device} as its file name says` : ""}`);
  return note as StuckWrite;
}

function readStuckWrite(host: Host, file: string): StuckWriteStatus | undefined {
  const text = readStateFile(host, file, "stuck-write note");
  if (text === undefined) return undefined;
  let write: StuckWrite;
  try {
    write = checkNote(JSON.parse(text), file);
  } catch (error) {
    throw new VmhookError(`stuck-write note ${file} cannot be read (${(error as Error).message}); a driver may still hold a device: check vmhook's log, then remove it (rm ${file})`);
  }
  return withStatus(host, write, file);
}

/**
 * Where forgetNoteRead takes a note aside to check it. Until it is removed
 * or put back (never, when the forgetter was killed in between), it is the
 * note still: its helper may be one blocked in the driver.
 */
const ASIDE = ".forgetting";
const asideOf = (file: string) => `${file}${ASIDE}`;

/** The device's notes: the one taken aside first, then its own file. */
function notesOf(host: Host, device: string): StuckWriteStatus[] {
  const file = paths.stuckWrite(checkedDevice(device));
  return [asideOf(file), file].flatMap((note) => readStuckWrite(host, note) ?? []);
}

/** The note of a write into this device's driver that did not return, if any: one whose helper still runs first. */
export function stuckWriteFor(host: Host, device: string): StuckWriteStatus | undefined {
  const notes = notesOf(host, device);
  return notes.find((write) => write.running) ?? notes[0];
}

export function listStuckWrites(host: Host): StuckWriteStatus[] {
  return host
    .list(paths.stuckWrites)
    .filter((name) => name.endsWith(".json") || name.endsWith(`.json${ASIDE}`))
    .flatMap((name) => readStuckWrite(host, `${paths.stuckWrites}/${name}`) ?? []);
}

/** What a module's program was noted for: the module, or one of the devices it drives. */
function programSubject(write: StuckWrite): string {
  const module = noteModule(write.device);
  return module === undefined ? `${write.device} (driver ${write.driver})` : `module ${module}`;
}

/** What did not return: the write, or the module's program. */
function stuckAt(write: StuckWrite): string {
  if (write.command === undefined) return `${write.device}: driver ${write.driver} did not return from writing "${write.value}" to ${write.file}`;
  return `${programSubject(write)}: ${write.command} did not return`;
}

/** One line: what is stuck since when, and whether its helper still runs. */
export function describeStuckWrite(write: StuckWriteStatus): string {
  const what = `${stuckAt(write)} (since ${write.since}, for ${write.domain.name})`;
  return write.running
    ? `${what}; its helper, pid ${write.pid}, is still blocked in the kernel (state ${write.state}${write.state === "D" ? ": uninterruptible" : ""})`
    : `${what}; its helper, pid ${write.pid}, has finished since`;
}

/** One line for a note whose helper has finished since, as vmhook recover forgets it. */
export function describeFinishedWrite(write: StuckWriteStatus): string {
  const what = write.command === undefined ? `${write.device}: the write into driver ${write.driver} that did not return` : `${programSubject(write)}: ${write.command}, which did not return,`;
  return `${what} has finished since (pid ${write.pid} is gone)`;
}

/** Refuses while a write into one of these devices' drivers is still blocked. Reads only (vmhook plan calls it too). */
export function refuseIfStuck(host: Host, devices: string[]): void {
  for (const device of devices) {
    const write = stuckWriteFor(host, device);
    if (write?.running) throw stillBlocked(write, device);
  }
}

/** Before a write into the device's driver, from one read of its note: refuses while an earlier one is blocked, forgets one that has finished. */
export function clearForWrite(host: Host, device: string): void {
  const notes = notesOf(host, device);
  const blocked = notes.find((write) => write.running);
  if (blocked) throw stillBlocked(blocked, device);
  for (const write of notes) forgetNoteRead(host, write, write.note);
}

function stillBlocked(write: StuckWriteStatus, device: string): StuckWriteError {
  const module = noteModule(device);
  const refused = module === undefined ? `vmhook writes nothing to ${device}` : `vmhook loads or unloads nothing that needs module ${module}`;
  return new StuckWriteError(`${describeStuckWrite(write)}; ${refused} until it has returned`, [STUCK_ADVICE]);
}

/**
 * Removes the notes whose helper is gone (`domainUuid`: that domain's only,
 * as its undo ends); returns them. Those taken aside go first: a note is not
 * taken aside over another.
 */
export function forgetFinishedWrites(host: Host, domainUuid?: string): StuckWriteStatus[] {
  settleUnrenamedNotes(host, domainUuid);
  const finished = listStuckWrites(host).filter((write) => !write.running && (domainUuid === undefined || write.domain.uuid === domainUuid));
  const aside = (write: StuckWriteStatus) => write.note.endsWith(ASIDE);
  for (const write of [...finished.filter(aside), ...finished.filter((write) => !aside(write))]) forgetNoteRead(host, write, write.note);
  return finished;
}

/**
 * Removes the device's note, read from `from` (its file, or the one aside),
 * only while it is still the one `read` (same helper: pid and start time).
 * Notes take no lock: between the read and the removal, a hook may have
 * replaced a finished note with that of its own helper, now blocked in the
 * driver, which must stay. So the note is first taken aside (rename is
 * atomic), then checked; one that is not the note read goes back. Every
 * reader sees a note aside as the note (notesOf, listStuckWrites): one a
 * killed forgetter left is forgotten once its helper is gone, as any other.
 */
function forgetNoteRead(host: Host, read: StuckWrite, from: string): void {
  const file = paths.stuckWrite(checkedDevice(read.device));
  const aside = asideOf(file);
  if (from === aside) {
    if (sameHelper(readStateFile(host, aside, "stuck-write note"), read)) host.remove(aside);
    return;
  }
  // Another note is aside (a forgetter at work, or killed): it is not replaced; this one waits for the next forgetter.
  if (host.exists(aside)) return;
  if (!moved(() => host.rename(file, aside))) return; // forgotten already (a hook's clearForWrite)
  const held = readStateFile(host, aside, "stuck-write note");
  if (sameHelper(held, read)) host.remove(aside);
  // Not the note read: it goes back, unless another forgetter removed it meanwhile (its helper is gone).
  else if (held !== undefined) moved(() => host.rename(aside, file));
}

/** Runs a rename; false when what it moves is gone (ENOENT): another forgetter took it. */
function moved(rename: () => void): boolean {
  try {
    rename();
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

function sameHelper(text: string | undefined, read: StuckWrite): boolean {
  try {
    const note = JSON.parse(text ?? "null") as Partial<StuckWrite> | null;
    return note?.pid === read.pid && note.startTime === read.startTime;
  } catch {
    return false;
  }
}

/**
 * A hook killed after a helper started, between writing its note's temp copy
 * and renaming it, left the copy alone. That helper never got its input
 * (lib/host.ts: a helper acts only once noted) and ends as it sees that
 * input end, but until then it still runs: while the helper it names runs,
 * the copy becomes the note (the device is held); once it is gone, the copy
 * goes. A copy that cannot be read (killed while writing it) is left for a
 * person. With `domainUuid`, only that domain's copies: its own undo settles
 * them (the write never happened, so nothing else would), never racing
 * another domain's hook between its copy and the rename.
 */
export function settleUnrenamedNotes(host: Host, domainUuid?: string): void {
  for (const { file, temp } of lonelyTemps(host, paths.stuckWrites)) {
    let write: StuckWriteStatus | undefined;
    try {
      write = readStuckWrite(host, temp);
    } catch {
      continue;
    }
    if (domainUuid !== undefined && write?.domain.uuid !== domainUuid) continue;
    if (write?.running) host.rename(temp, file);
    else host.remove(temp);
  }
}

/** A write that is, or was found, blocked in a driver: no caller may turn it into another error. */
export class StuckWriteError extends VmhookError {
  override readonly name = "StuckWriteError";
}
