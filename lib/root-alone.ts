// What root trusts as its own: a path that root owns, that group and others
// cannot write and that is no symlink, below directories alike. The hook
// runs as root: plugins.d, /etc/vmhook and a --root tree's programs are held
// to this rule.

/** What the rule reads of a path (lstat(2)): a Host's stat, or the real file system's. */
export type StatOf = (path: string) => { uid: number; mode: number; isFile: boolean; isDirectory: boolean; isSymlink: boolean } | undefined;

/** What a symlink holds (readlink(2)). */
export type LinkOf = (path: string) => string;

/** Only root may own what root runs. */
export const ROOT_UID = 0;

export const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;

/**
 * Why vmhook refuses to trust this path, or undefined when it is safe: root
 * owns it, group and others cannot write it, and it is no symlink (whose
 * target would escape the check). `because` says what root trusts it for.
 */
export function unsafeReason(statOf: StatOf, hostPath: string, kind: "directory" | "file", because = "plugins run as root", above = false, fix?: string): string | undefined {
  const stat = statOf(hostPath);
  if (!stat) return `${hostPath} does not exist`;
  if (stat.isSymlink) return `${hostPath} is a symlink; vmhook only trusts what it can check, so put the real ${kind} there`;
  if (kind === "directory" ? !stat.isDirectory : !stat.isFile) return `${hostPath} is not a ${kind === "directory" ? "directory" : "regular file"}`;
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
function unsafeAbove(statOf: StatOf, hostPath: string, because?: string): string | undefined {
  for (let dir = parentOf(hostPath); ; dir = parentOf(dir)) {
    const problem = unsafeReason(statOf, dir, "directory", because, true);
    if (problem || dir === "/") return problem;
  }
}

const parentOf = (absolute: string) => absolute.slice(0, absolute.lastIndexOf("/")) || "/";

/** Why root cannot trust `hostPath`, or undefined: it and every directory above it must pass unsafeReason. */
export function rootsAloneProblem(statOf: StatOf, hostPath: string, kind: "directory" | "file", because?: string): string | undefined {
  return unsafeReason(statOf, hostPath, kind, because) ?? unsafeAbove(statOf, hostPath, because);
}

/** The kernel's limit of symlinks in one lookup (ELOOP past it). */
const MAX_SYMLINKS = 40;

/**
 * Why root cannot trust the file `path` leads to, or undefined: followed as
 * the kernel looks it up, symlinks included (a copy of a usr-merged host:
 * usr/sbin -> bin, modprobe -> kmod), every directory looked in must be
 * root's alone (a sticky one passes), every symlink root's, and the file
 * root's alone: then nobody else can change where the path leads, between
 * this check and exec or ever. `fixOf` says what to do about a directory
 * that is not root's to change (one holding a user's copy), undefined for
 * the usual chown or chmod.
 */
export function pathLeadsToRootsAlone(statOf: StatOf, linkOf: LinkOf, path: string, because: string, fixOf: (dir: string) => string | undefined = () => undefined): string | undefined {
  const top = unsafeReason(statOf, "/", "directory", because, true);
  if (top) return top;
  let left = path.split("/").filter(Boolean);
  let dir = "/";
  let links = 0;
  while (left.length > 0) {
    const name = left.shift()!;
    if (name === ".") continue;
    // dir holds no symlink, so its parent is where ".." leads.
    if (name === "..") {
      dir = parentOf(dir);
      continue;
    }
    const next = dir === "/" ? `/${name}` : `${dir}/${name}`;
    const stat = statOf(next);
    if (!stat) return `${next} does not exist`;
    if (stat.isSymlink) {
      if (stat.uid !== ROOT_UID) return `${next} is a symlink owned by uid ${stat.uid}, not root; ${because}, so run chown -h root:root ${next}`;
      if (++links > MAX_SYMLINKS) return `${path} leads through more than ${MAX_SYMLINKS} symlinks`;
      const target = linkOf(next);
      if (target.startsWith("/")) dir = "/";
      left = [...target.split("/").filter(Boolean), ...left];
      continue;
    }
    const problem = left.length > 0 ? unsafeReason(statOf, next, "directory", because, true, fixOf(next)) : unsafeReason(statOf, next, "file", because);
    if (problem) return problem;
    dir = next;
  }
  return undefined;
}
