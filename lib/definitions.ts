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

/**
 * The name libvirt's definition of this UUID has now, when it is not the
 * journal's (the domain was renamed since it started); undefined when it is
 * the same, or no readable definition has this UUID (a transient domain).
 */
export function renamedTo(host: Host, domain: { name: string; uuid: string }): string | undefined {
  if (definedUuid(host, domain.name) === domain.uuid) return undefined;
  let files: string[];
  try {
    files = host.list(paths.libvirtQemuConfigDir).filter((entry) => entry.endsWith(".xml"));
  } catch {
    return undefined;
  }
  for (const file of files) {
    const xml = readOrNothing(host, `${paths.libvirtQemuConfigDir}/${file}`);
    if (xml === undefined || uuidFromXml(xml) !== domain.uuid) continue;
    const name = domainNameInText(xml) ?? file.slice(0, -".xml".length);
    return name === domain.name ? undefined : name;
  }
  return undefined;
}

function readOrNothing(host: Host, file: string): string | undefined {
  try {
    return host.readTrimmed(file);
  } catch {
    return undefined;
  }
}
