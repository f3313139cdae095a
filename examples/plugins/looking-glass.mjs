// @ts-check
// vmhook plugin: the Looking Glass shared-memory file for one VM.
//
//   <vmhook:plugin name="looking-glass" owner="alice" group="kvm" size="32M"/>
//
// Creates /dev/shm/looking-glass before QEMU starts, with the owner, group
// and size given (mode 0660), so that both QEMU and the Looking Glass client
// of that user can open it; removes it at release. The size must be a power
// of two (IVSHMEM maps it as a PCI BAR) and, when the domain has
// <shmem name="looking-glass"><size>, the same as that. Without size= the
// <shmem> size is used.
//
// Install: cp looking-glass.mjs /etc/vmhook/plugins.d/ (root-owned, mode 644).
import * as fs from "node:fs";

const SHM_PATH = "/dev/shm/looking-glass";
const ELEMENT = '<vmhook:plugin name="looking-glass">';
const ALLOWED = ["name", "owner", "group", "size"];
const MIB = 1024 * 1024;
/** Sizes as libvirt writes <size unit=…>, in bytes per unit. */
const UNITS = /** @type {Record<string, number>} */ ({ b: 1, bytes: 1, k: 1024, kib: 1024, m: MIB, mib: MIB, g: 1024 * MIB, gib: 1024 * MIB });

/**
 * @typedef {{ owner: string, group: string, sizeBytes: number }} Config
 * @typedef {import("../../types/vmhook-plugin").Element} Element
 */

/** "32M", "1G", "64MiB" → bytes; a power of two from 1 MiB to 1 GiB. */
function parseSize(/** @type {string} */ value, /** @type {string} */ where) {
  const match = /^(\d+)\s*([a-zA-Z]*)$/.exec(value.trim());
  const factor = match ? UNITS[(match[2] || "m").toLowerCase()] : undefined;
  const bytes = match && factor ? Number(match[1]) * factor : NaN;
  if (!(bytes >= MIB && bytes <= 1024 * MIB) || (bytes & (bytes - 1)) !== 0) {
    throw new Error(`${where}="${value}" is not a valid size: use a power of two from 1M to 1G, e.g. 32M (Looking Glass's docs: 32M for 1080p, 128M for 4K)`);
  }
  return bytes;
}

/** The size of the domain's <shmem name="looking-glass">, if it has one. */
function shmemSize(/** @type {Element} */ element) {
  const shmems = element.ownerDocument?.getElementsByTagName("shmem") ?? [];
  for (let i = 0; i < shmems.length; i++) {
    const shmem = shmems[i];
    if (shmem?.getAttribute("name") !== "looking-glass") continue;
    const size = shmem.getElementsByTagName("size")[0];
    if (size) return { text: `${size.textContent?.trim()}${size.getAttribute("unit") ?? "M"}`, element: '<shmem name="looking-glass"><size>' };
  }
  return undefined;
}

/** A user's or group's numeric id from /etc/passwd or /etc/group (under the host's root). */
function lookupId(/** @type {import("../../types/vmhook-plugin").Host} */ host, /** @type {"passwd" | "group"} */ database, /** @type {string} */ name) {
  const line = host
    .read(`/etc/${database}`)
    .split("\n")
    .find((entry) => entry.split(":")[0] === name);
  const id = line ? Number(line.split(":")[2]) : NaN;
  if (!Number.isInteger(id)) {
    throw new Error(`${ELEMENT}: ${database === "passwd" ? "owner" : "group"}="${name}" is not in /etc/${database}; name an existing ${database === "passwd" ? "user" : "group"}`);
  }
  return id;
}

/** @type {import("../../types/vmhook-plugin").Plugin<Config>} */
export default {
  name: "looking-glass",
  summary: "creates /dev/shm/looking-glass (owner, group, size) for the Looking Glass client; removes it at release",
  usage: '<vmhook:plugin name="looking-glass" owner="USER" group="GROUP" size="32M"/>',

  parse(elements) {
    const element = elements[0];
    if (!element) throw new Error(`${ELEMENT}: missing`);
    for (let i = 0; i < element.attributes.length; i++) {
      const attribute = element.attributes.item(i);
      if (attribute && !attribute.name.startsWith("xmlns") && !ALLOWED.includes(attribute.name)) {
        throw new Error(`${ELEMENT}: unknown attribute ${attribute.name}; allowed: owner, group, size`);
      }
    }
    const owner = element.getAttribute("owner");
    const group = element.getAttribute("group");
    for (const [attribute, value] of [["owner", owner], ["group", group]]) {
      if (!value || !/^[a-z_][a-z0-9_-]*\$?$/i.test(value)) {
        throw new Error(`${ELEMENT}: ${attribute}="${value ?? ""}" is not a ${attribute === "owner" ? "user" : "group"} name; give the user who runs the Looking Glass client and a group, e.g. owner="alice" group="kvm"`);
      }
    }
    const fromShmem = shmemSize(element);
    const given = element.getAttribute("size");
    const sizeBytes = given ? parseSize(given, `${ELEMENT}: size`) : fromShmem ? parseSize(fromShmem.text, fromShmem.element) : undefined;
    if (sizeBytes === undefined) {
      throw new Error(`${ELEMENT}: no size: give size="32M", or add <shmem name="looking-glass"><model type="ivshmem-plain"/><size unit="M">32</size></shmem> to the domain's devices`);
    }
    if (given && fromShmem && parseSize(fromShmem.text, fromShmem.element) !== sizeBytes) {
      throw new Error(`${ELEMENT}: size="${given}" differs from the domain's <shmem name="looking-glass"> size ${fromShmem.text}; make them equal (or drop size=)`);
    }
    return { owner: /** @type {string} */ (owner), group: /** @type {string} */ (group), sizeBytes };
  },

  plan: {
    // Reads the host and changes nothing: `vmhook plan` shows exactly this step.
    prepare(ctx) {
      const { owner, group, sizeBytes } = ctx.config;
      // Resolved now (not in parse, which gets no host), still before any change.
      const uid = lookupId(ctx.host, "passwd", owner);
      const gid = lookupId(ctx.host, "group", group);
      const holder = ctx.journals().find((journal) => journal.domain.uuid !== ctx.domain.uuid && journal.entries.some((entry) => entry.plugin === "plugin:looking-glass"));
      if (holder) {
        throw new Error(`${ELEMENT}: ${SHM_PATH} is held by VM ${holder.domain.name} (see vmhook status); only one VM at a time can use it`);
      }
      return [
        {
          action: "create-shm",
          record: { action: "create-shm", sizeBytes, uid, gid },
          description: `create ${SHM_PATH} (${sizeBytes / MIB} MiB, ${owner}:${group}, mode 0660)`,
        },
      ];
    },
  },

  actions: {
    "create-shm": {
      /** The journaled record, checked before apply and before undo. */
      check(record) {
        const { sizeBytes, uid, gid } = record;
        const id = (/** @type {unknown} */ value) => Number.isInteger(value) && /** @type {number} */ (value) >= 0;
        if (!id(sizeBytes) || !id(uid) || !id(gid)) throw new Error(`looking-glass: not a record this plugin writes: ${JSON.stringify(record)}`);
        return { action: "create-shm", sizeBytes: /** @type {number} */ (sizeBytes), uid: /** @type {number} */ (uid), gid: /** @type {number} */ (gid) };
      },
      apply(record, ctx) {
        // The Host seam has no create/chown; resolve() keeps these calls under its root.
        const file = ctx.host.resolve(SHM_PATH);
        fs.rmSync(file, { force: true }); // a file left by an earlier run may have the wrong size or owner
        const fd = fs.openSync(file, "wx", 0o660);
        try {
          fs.ftruncateSync(fd, record.sizeBytes);
          fs.fchownSync(fd, record.uid, record.gid);
          fs.fchmodSync(fd, 0o660);
        } finally {
          fs.closeSync(fd);
        }
      },
      undo(_record, ctx) {
        // The owner may have swapped the file meanwhile (/dev/shm is world-writable):
        // unlink this one name, never delete recursively what a user put there.
        try {
          fs.unlinkSync(ctx.host.resolve(SHM_PATH));
        } catch (error) {
          const code = /** @type {NodeJS.ErrnoException} */ (error).code;
          if (code === "EISDIR") ctx.log.warn(`${SHM_PATH} is a directory now, not the file vmhook created; left as it is`);
          else if (code !== "ENOENT") throw error;
        }
      },
    },
  },
};
