// Redaction for the bug-report bundle. The host's names, its users, MAC
// addresses, serial numbers and UUIDs are replaced by placeholders, the same
// value by the same placeholder throughout the bundle, so a reader can still
// follow one domain or one NIC through the files. What cannot be learned
// (no hostname, no user list) stops the bundle: it would leak unnoticed.
import { VmhookError } from "../errors.ts";
import type { Host } from "../host.ts";

type Kind = "host" | "user" | "serial" | "mac" | "uuid";

/** Debian's first and last uid of regular users (adduser's FIRST_UID, and nobody above). */
const FIRST_USER_UID = 1000;
const NOBODY_UID = 65534;
/** Where the kernel shows serial numbers of the machine and its disks. */
const DMI_SERIALS = ["/sys/class/dmi/id/product_serial", "/sys/class/dmi/id/board_serial", "/sys/class/dmi/id/chassis_serial"];
/** What firmware writes when it has no serial: not worth a placeholder. */
const NO_SERIAL = /^(|0+|none|n\/a|not (specified|applicable|available)|to be filled by o\.e\.m\.|default string|system serial number|chassis serial number|123456789)$/i;

const MAC = /\b[0-9a-f]{2}(?:([:-])[0-9a-f]{2})(?:\1[0-9a-f]{2}){4}\b/gi;
const UUID = /\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/gi;
/** A value labelled as a serial: "Serial Number: X", serial="X", "serial": "X", <serial>X</serial>. */
const LABELLED_SERIAL = /(serial(?:[ _-]?(?:number|no\.?))?["']?\s*[:=]\s*["']?|<serial>)([^\s"'<>,;]+)/gi;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

export class Redactor {
  private readonly placeholders = new Map<string, string>();
  private readonly counts = new Map<Kind, number>();
  /** Known literal values, longest first so "box.lan" goes before "box". */
  private readonly literals: { pattern: RegExp; kind: Kind }[] = [];

  constructor(known: { hostnames: string[]; users: string[]; serials: string[] }) {
    const add = (kind: Kind, values: string[], flags: string) => {
      for (const value of values) {
        // whole names only: "al" must not eat "journal"; a dot or a dash does end a name
        this.literals.push({ pattern: new RegExp(`(?<![A-Za-z0-9])${escapeRegExp(value)}(?![A-Za-z0-9])`, flags), kind });
      }
    };
    add("host", known.hostnames, "gi");
    add("user", known.users, "g");
    add("serial", known.serials, "g");
    this.literals.sort((a, b) => b.pattern.source.length - a.pattern.source.length);
  }

  private placeholder(kind: Kind, value: string): string {
    const key = `${kind}:${kind === "user" || kind === "serial" ? value : value.toLowerCase().replace(/-/g, ":")}`;
    let placeholder = this.placeholders.get(key);
    if (!placeholder) {
      const count = (this.counts.get(kind) ?? 0) + 1;
      this.counts.set(kind, count);
      placeholder = `<${kind}-${count}>`;
      this.placeholders.set(key, placeholder);
    }
    return placeholder;
  }

  redact(text: string): string {
    let result = text;
    for (const { pattern, kind } of this.literals) result = result.replace(pattern, (value) => this.placeholder(kind, value));
    // UUIDs first: one labelled serial="UUID" keeps the UUID's placeholder; serials before MACs: a
    // serial that looks like a longer MAC ("00-11-22-33-44-55-66-77") goes whole
    return result
      .replace(UUID, (value) => this.placeholder("uuid", value))
      .replace(LABELLED_SERIAL, (_match, label: string, value: string) => (value.startsWith("<") ? `${label}${value}` : `${label}${this.placeholder("serial", value)}`))
      .replace(MAC, (value) => this.placeholder("mac", value));
  }
}

/** Learns the host's names, its regular users and its serial numbers; refuses when the names or users cannot be read. */
export function redactorFor(host: Host): Redactor {
  const hostname = host.readTrimmed("/proc/sys/kernel/hostname") ?? host.readTrimmed("/etc/hostname");
  if (!hostname) throw new VmhookError("cannot read the hostname (/proc/sys/kernel/hostname, /etc/hostname), so the bundle could not hide it; nothing was written");
  const fullNames = [hostname, host.readTrimmed("/etc/hostname") ?? ""].filter((name) => name && name !== "localhost");
  const hostnames = [...new Set([...fullNames, ...fullNames.map((name) => name.split(".")[0]!)])].filter((name) => name.length > 0 && name !== "localhost");

  let passwd: string;
  try {
    passwd = host.read("/etc/passwd");
  } catch (error) {
    throw new VmhookError(`cannot read /etc/passwd (${(error as Error).message}), so the bundle could not hide user names; nothing was written`);
  }
  const users = passwd
    .split("\n")
    .map((line) => line.split(":"))
    .filter((fields) => fields.length >= 3 && Number(fields[2]) >= FIRST_USER_UID && Number(fields[2]) < NOBODY_UID)
    .map((fields) => fields[0]!);
  const homes = host.list("/home").filter((name) => /^[A-Za-z_][A-Za-z0-9_.-]*$/.test(name));

  const serialFiles = [...DMI_SERIALS, ...host.list("/sys/class/nvme").map((name) => `/sys/class/nvme/${name}/serial`), ...host.list("/sys/block").map((name) => `/sys/block/${name}/device/serial`)];
  const serials = serialFiles.map((file) => host.readTrimmed(file) ?? "").filter((serial) => !NO_SERIAL.test(serial));
  return new Redactor({ hostnames, users: [...new Set([...users, ...homes])].filter(Boolean), serials: [...new Set(serials)] });
}
