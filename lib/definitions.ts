// The names libvirt knows a domain by now, read from its definitions in
// /etc/libvirt/qemu (never by calling libvirt). A journal names the domain as
// it was when it started: `virsh domrename` of a domain that a crash left
// holding changes gives it another name, by which the user asks for it.
import type { Host } from "./host.ts";
import { domainNameInText } from "./metadata-text.ts";
import { paths } from "./paths.ts";
import { PATTERNS } from "./validate.ts";

/** The domain UUID found by a plain text search: enough to find a journal without parsing XML. */
export function uuidFromXml(xml: string): string | undefined {
  const uuid = /<uuid>\s*([0-9a-fA-F-]{36})\s*<\/uuid>/.exec(xml)?.[1]?.toLowerCase();
  return uuid && PATTERNS.uuid.test(uuid) ? uuid : undefined;
}

/** The UUID in the definition file of the domain called `name`, or undefined: none, unreadable, or a name that names no file (a slash: libvirt refuses one). */
export function definedUuid(host: Host, name: string): string | undefined {
  if (name.includes("/")) return undefined;
  const xml = readOrNothing(host, `${paths.libvirtQemuConfigDir}/${name}.xml`);
  return xml === undefined ? undefined : uuidFromXml(xml);
}

/** How the CLI names a journal's domain, as libvirt's definitions do now. */
export interface DomainNaming {
  /** libvirt's name for it when one definition carries its UUID; else the journal's (a transient domain, or a name libvirt has not settled). */
  name: string;
  /** The journal's name, when libvirt's one definition names it otherwise (renamed since it started). */
  nameWhenStarted?: string;
  /** The definitions that carry its UUID, when more than one does (a `virsh domrename` cut short): libvirt keeps one, no file says which. */
  definedAs?: { name: string; file: string }[];
}

/**
 * The domain of a journal as libvirt names it now. `virsh domrename` writes
 * NEW.xml, then removes OLD.xml (qemuDomainRenameCallback): a crash between
 * leaves both carrying the UUID. libvirtd's next start loads definitions in
 * the order readdir gives them and refuses one whose UUID another has taken
 * ("already defined with uuid": virDomainObjListAddLocked), so which name it
 * keeps depends on the directory, not on anything vmhook can read: then both
 * are said, and the UUID is what commands are given.
 */
export function libvirtNaming(host: Host, domain: { name: string; uuid: string }): DomainNaming {
  let files: string[];
  try {
    files = host.list(paths.libvirtQemuConfigDir).filter((entry) => entry.endsWith(".xml"));
  } catch {
    return { name: domain.name };
  }
  const definitions = files.sort().flatMap((entry) => {
    const file = `${paths.libvirtQemuConfigDir}/${entry}`;
    const xml = readOrNothing(host, file);
    return xml === undefined || uuidFromXml(xml) !== domain.uuid ? [] : [{ name: domainNameInText(xml) ?? entry.slice(0, -".xml".length), file }];
  });
  if (definitions.length > 1) return { name: domain.name, definedAs: definitions };
  const now = definitions[0]?.name;
  return now === undefined || now === domain.name ? { name: domain.name } : { name: now, nameWhenStarted: domain.name };
}

/** The domain in words: its name, or each name its definitions give it ("vm or win11"). */
export const namingText = (naming: DomainNaming): string => naming.definedAs?.map((definition) => definition.name).join(" or ") ?? naming.name;

/** What a command (vmhook recover, virsh domstate) is given to find the domain: its name, or its UUID while two definitions name it. */
export const namingArgument = (naming: DomainNaming, uuid: string): string => (naming.definedAs ? uuid : naming.name);

/** Why it is named twice, for where the domain is listed ("two definitions carry its UUID, …"); "" when it is not. */
export function twoDefinitionsText(naming: DomainNaming, uuid: string): string {
  if (!naming.definedAs) return "";
  const files = naming.definedAs.map((definition) => definition.file);
  return `${files.length === 2 ? "two" : files.length} definitions carry its UUID, ${files.slice(0, -1).join(", ")} and ${files.at(-1)}: libvirt uses the one it read first, virsh domname ${uuid} says which`;
}

function readOrNothing(host: Host, file: string): string | undefined {
  try {
    return host.readTrimmed(file);
  } catch {
    return undefined;
  }
}
