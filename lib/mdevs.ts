// The mediated devices that exist (/sys/bus/mdev/devices), each with its
// parent and type, and the domain vmhook created it for: the mdev plugin
// counts a parent's instances by them, and vfio refuses to hand over a
// parent, whose unbind removes them.
import type { Host } from "./host.ts";
import type { Journal } from "./journal.ts";

/** One link per existing mdev, named by its UUID, into its parent's directory. */
export const MDEV_DEVICES = "/sys/bus/mdev/devices";

export const mdevPath = (uuid: string, file = "") => `${MDEV_DEVICES}/${uuid}${file && `/${file}`}`;

/** An existing mdev's parent (the directory it lives in) and type (its mdev_type link), or undefined. */
export function existingMdev(host: Host, uuid: string): { parent: string; type: string } | undefined {
  const target = host.readlink(mdevPath(uuid));
  if (!target) return undefined;
  return { parent: target.split("/").at(-2) ?? "?", type: host.readlink(mdevPath(uuid, "mdev_type"))?.split("/").pop() ?? "?" };
}

/** The domain each mdev in a journal was created for, by UUID: that domain's release removes it. */
export function mdevCreators(journals: Journal[]): Map<string, { name: string; uuid: string }> {
  const creators = new Map<string, { name: string; uuid: string }>();
  for (const journal of journals) {
    for (const entry of journal.entries) {
      if (entry.plugin === "mdev" && (entry.undo.action === "create-mdev" || entry.undo.action === "remove-mdev")) creators.set(String(entry.undo.uuid), journal.domain);
    }
  }
  return creators;
}

/** The UUIDs of the mdevs on a parent. */
export const mdevUuidsOn = (host: Host, parent: string): string[] => host.list(MDEV_DEVICES).filter((uuid) => existingMdev(host, uuid)?.parent === parent);

/** The mdevs on a parent, each with its type and the domain vmhook made it for, if any: "UUID (TYPE, created by vmhook for domain NAME)". */
export function describeMdevsOn(host: Host, journals: () => Journal[], parent: string): string[] {
  const uuids = mdevUuidsOn(host, parent);
  if (uuids.length === 0) return [];
  const creators = mdevCreators(journals());
  return uuids.map((uuid) => {
    const creator = creators.get(uuid);
    return `${uuid} (${existingMdev(host, uuid)?.type ?? "?"}, ${creator ? `created by vmhook for domain ${creator.name}` : "not created by vmhook: mdevctl or by hand"})`;
  });
}
