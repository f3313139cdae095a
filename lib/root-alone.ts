// What root trusts as its own: a path that root owns, that group and others
// cannot write and that is no symlink, below directories alike, all on file
// systems whose owners this kernel keeps. The hook runs as root: plugins.d,
// /etc/vmhook and a --root tree's programs are held to this rule.

/** What the rule reads of a path: a Host, or the real file system. */
export interface FileFacts {
  /** lstat(2); undefined when nothing is there. */
  stat(path: string): { uid: number; mode: number; isFile: boolean; isDirectory: boolean; isSymlink: boolean } | undefined;
  /** statfs(2)'s f_type: the kind of file system that holds the path. */
  fileSystemType(path: string): number;
}

/** What a symlink holds (readlink(2)). */
export type LinkOf = (path: string) => string;

/** Only root may own what root runs. */
export const ROOT_UID = 0;

export const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;

/**
 * File systems where stat's owner and mode are another's word, not kept by
 * this kernel, by statfs f_type (linux/magic.h): root cannot tell who may
 * change what a path there holds or leads to.
 *   fuse        fuse, fuseblk and virtiofs: the daemon answers stat as it
 *               likes, and any user may mount one (sshfs, bindfs -u 0, a
 *               daemon of their own) on a directory of theirs, in /tmp too
 *   nfs         the server decides, for every client it lets write as root
 *   cifs, smb3  the mount options (uid=, file_mode=) or the server decide;
 *               whoever has the share's password writes
 *   9p          the server decides (a VM host's, or a user's diod)
 *   ceph, afs   the cluster or the server decides
 *   coda        its cache manager, a daemon, answers
 * Local file systems pass (ext4, xfs, btrfs, vfat: their owners are this
 * kernel's, or mount options root chose), as do tmpfs and overlay (only root
 * mounts one in this mount namespace, from layers it chose).
 */
const FOREIGN_OWNERS = new Map<number, { name: string; whose: string }>([
  [0x65735546, { name: "fuse", whose: "its daemon's word (any user may run one)" }],
  [0x6969, { name: "nfs", whose: "the server's word" }],
  [0xff534d42, { name: "cifs", whose: "the server's and the mount options' word" }],
  [0xfe534d42, { name: "smb3", whose: "the server's and the mount options' word" }],
  [0x01021997, { name: "9p", whose: "the server's word" }],
  [0x00c36400, { name: "ceph", whose: "the cluster's word" }],
  [0x6b414653, { name: "afs", whose: "the server's word" }],
  [0x5346414f, { name: "afs", whose: "the server's word" }],
  [0x73757245, { name: "coda", whose: "its cache manager's word (a daemon)" }],
]);

/** "on a file system of type fuse: …" when root cannot believe what stat says on a file system of this f_type (its owners are not this kernel's word), or undefined. */
export function foreignFileSystem(type: number): string | undefined {
  const foreign = FOREIGN_OWNERS.get(type);
  return foreign && `on a file system of type ${foreign.name}: the owner and mode stat shows there are ${foreign.whose}, not this kernel's`;
}

function foreignOwners(facts: FileFacts, hostPath: string, because: string, fix?: string): string | undefined {
  const foreign = foreignFileSystem(facts.fileSystemType(hostPath));
  return foreign && `${hostPath} is ${foreign}; ${because}, so ${fix ?? "move it to a local file system that root owns (a disk, not a FUSE or network mount)"}`;
}

/**
 * Why vmhook refuses to trust this path, or undefined when it is safe: root
 * owns it, group and others cannot write it, it is no symlink (whose target
 * would escape the check), and its file system is one whose owners this
 * kernel keeps. `because` says what root trusts it for.
 */
export function unsafeReason(facts: FileFacts, hostPath: string, kind: "directory" | "file", because = "plugins run as root", above = false, fix?: string): string | undefined {
  return unsafeStat(facts, hostPath, facts.stat(hostPath), kind, because, above, fix);
}

/** unsafeReason of what lstat(2) said of `hostPath` (`stat`), for a walk that has it already. */
function unsafeStat(facts: FileFacts, hostPath: string, stat: ReturnType<FileFacts["stat"]>, kind: "directory" | "file", because: string, above: boolean, fix?: string): string | undefined {
  if (!stat) return `${hostPath} does not exist`;
  if (stat.isSymlink) return `${hostPath} is a symlink; vmhook only trusts what it can check, so put the real ${kind} there`;
  if (kind === "directory" ? !stat.isDirectory : !stat.isFile) return `${hostPath} is not a ${kind === "directory" ? "directory" : "regular file"}`;
  // Before the owner: there, a chown proves nothing.
  const foreign = foreignOwners(facts, hostPath, because, fix);
  if (foreign) return foreign;
  if (stat.uid !== ROOT_UID) {
    return `${hostPath} is owned by uid ${stat.uid}, not root; ${because}, so ${fix ?? `run chown root:root ${hostPath}`}`;
  }
  // A sticky directory on the way (/tmp): only root renames or removes root's entries in it.
  const sticky = above && (stat.mode & 0o1000) !== 0;
  if ((stat.mode & 0o022) !== 0 && !sticky) {
    return `${hostPath} has mode ${octal(stat.mode)}: group or others can write it, and ${because}; ${fix ?? `run chmod go-w ${hostPath}`}`;
  }
  return undefined;
}

/**
 * Why a directory above `hostPath` is unsafe (unsafeReason), or undefined:
 * whoever can write one of them can rename what is below and put their own
 * in its place.
 */
function unsafeAbove(facts: FileFacts, hostPath: string, because?: string): string | undefined {
  for (let dir = parentOf(hostPath); ; dir = parentOf(dir)) {
    const problem = unsafeReason(facts, dir, "directory", because, true);
    if (problem || dir === "/") return problem;
  }
}

const parentOf = (absolute: string) => absolute.slice(0, absolute.lastIndexOf("/")) || "/";

/** Why root cannot trust `hostPath`, or undefined: it and every directory above it must pass unsafeReason. */
export function rootsAloneProblem(facts: FileFacts, hostPath: string, kind: "directory" | "file", because?: string): string | undefined {
  return unsafeReason(facts, hostPath, kind, because) ?? unsafeAbove(facts, hostPath, because);
}

/**
 * Whether root can trust what is at `hostPath`, a file of root's that may be
 * missing (vmhook.json, policy.json, whose defaults apply without them):
 * whether it is there, or why not trusted. The one walk of
 * pathLeadsToRootsAlone, with no symlink on the way (nor the file one):
 * there, the file and every directory above it root's alone; missing, the
 * directory where the path stops (the nearest that exists) and every one
 * above it, with no sticky pass at that one: whoever can write one could
 * have removed the file, and the defaults would stand in for what root wrote.
 */
export function rootsFile(facts: FileFacts, hostPath: string, because: string): { problem: string } | { there: boolean } {
  const walked = walk(facts, NO_LINKS, hostPath, because, { rootCreatesTheRest: true, symlinks: "refuse" });
  if (!("problem" in walked)) return { there: walked.there ?? true };
  // Refused above it: whether the file is there is asked only to word the refusal.
  return { problem: (walked.there ?? thereOrUnknown(facts, hostPath)) === false ? `there is no ${hostPath} (its defaults apply, so nobody but root may be able to remove it), and ${walked.problem}` : walked.problem };
}

function thereOrUnknown(facts: FileFacts, hostPath: string): boolean | undefined {
  try {
    return facts.stat(hostPath) !== undefined;
  } catch {
    return undefined;
  }
}

/** What a walk that refuses symlinks never asks. */
const NO_LINKS: LinkOf = (path) => {
  throw new Error(`internal: ${path} was followed by a walk that refuses symlinks`);
};

/** The kernel's limit of symlinks in one lookup (ELOOP past it). */
const MAX_SYMLINKS = 40;

/** How pathLeadsToRootsAlone judges where the path ends, and what it advises. */
export interface WalkOptions {
  /** What the path leads to: a "file" root runs (the default), or a "directory" root reads what it runs from (Bun's transpiler cache). */
  kind?: "directory" | "file";
  /**
   * The path may stop existing: root creates the rest (Bun its transpiler
   * cache, at its first write) in the directory where it stops, which must
   * then be root's alone with no sticky pass, as anyone may create a name in
   * /tmp before root does. A program root runs must be there.
   */
  rootCreatesTheRest?: boolean;
  /** What to do about a path that is not root's to change (a directory holding a user's copy; a user's HOME under sudo -E), undefined for the usual chown or chmod. */
  fixOf?: (path: string) => string | undefined;
  /**
   * "follow" (the default): a symlink of root's is followed, as the kernel
   * does. "refuse": any symlink on the way is refused, as root's own files
   * (/etc/vmhook and below) must hold none: what is there is what was checked.
   */
  symlinks?: "follow" | "refuse";
}

/**
 * Why root cannot trust what `path` leads to, or undefined: followed as
 * the kernel looks it up, symlinks included (a copy of a usr-merged host:
 * usr/sbin -> bin, modprobe -> kmod; an ostree host's /root -> var/roothome),
 * every directory looked in must be root's alone (a sticky one passes: only
 * root renames or removes root's entries there), every symlink root's (its
 * owner may replace it in a sticky directory), and where it ends root's
 * alone: then nobody else can change where the path leads, between this
 * check and the use or ever.
 */
export function pathLeadsToRootsAlone(facts: FileFacts, linkOf: LinkOf, path: string, because: string, options: WalkOptions = {}): string | undefined {
  const walked = walk(facts, linkOf, path, because, options);
  return "problem" in walked ? walked.problem : undefined;
}

/** pathLeadsToRootsAlone's walk, saying too whether the path is there: false where it stopped at a missing name, undefined where it stopped before its end at a refusal. */
function walk(facts: FileFacts, linkOf: LinkOf, path: string, because: string, options: WalkOptions): { problem: string; there?: boolean } | { there: boolean } {
  const { kind = "file", rootCreatesTheRest = false, fixOf = () => undefined, symlinks = "follow" } = options;
  const verdict = (problem: string | undefined, there: boolean) => (problem === undefined ? { there } : { problem, there });
  const top = unsafeReason(facts, "/", "directory", because, true);
  if (top) return { problem: top };
  let left = path.split("/").filter(Boolean);
  let dir = "/";
  // What lstat(2) said of dir, when the walk stepped into it by name (not by ".." or a link's leading "/"): each name is looked at once.
  let dirStat: ReturnType<FileFacts["stat"]>;
  let links = 0;
  while (left.length > 0) {
    const name = left.shift()!;
    if (name === ".") continue;
    // dir holds no symlink, so its parent is where ".." leads.
    if (name === "..") {
      dir = parentOf(dir);
      dirStat = undefined;
      continue;
    }
    const next = dir === "/" ? `/${name}` : `${dir}/${name}`;
    const stat = facts.stat(next);
    if (!stat) return rootCreatesTheRest ? verdict(unsafeStat(facts, dir, dirStat ?? facts.stat(dir), "directory", because, false, fixOf(dir)), false) : { problem: `${next} does not exist`, there: false };
    if (stat.isSymlink) {
      // The path's own last name, a symlink, is there: a dangling one too.
      const there = left.length === 0 ? true : undefined;
      if (symlinks === "refuse") return { problem: `${next} is a symlink; vmhook only trusts what it can check, so put the real ${left.length > 0 ? "directory" : kind} there`, there };
      if (stat.uid !== ROOT_UID) return { problem: `${next} is a symlink owned by uid ${stat.uid}, not root; ${because}, so ${fixOf(next) ?? `run chown -h root:root ${next}`}` };
      if (++links > MAX_SYMLINKS) return { problem: `${path} leads through more than ${MAX_SYMLINKS} symlinks` };
      const target = linkOf(next);
      if (target.startsWith("/")) [dir, dirStat] = ["/", undefined];
      left = [...target.split("/").filter(Boolean), ...left];
      continue;
    }
    [dir, dirStat] = [next, stat];
    const problem = left.length > 0 && unsafeStat(facts, dir, stat, "directory", because, true, fixOf(dir));
    if (problem) return { problem };
  }
  // Judged again where the lookup ends (a link to "." ends at a directory looked in): no sticky pass there.
  return verdict(unsafeStat(facts, dir, dirStat ?? facts.stat(dir), kind, because, false, fixOf(dir)), true);
}
