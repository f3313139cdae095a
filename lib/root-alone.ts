// What root trusts as its own: a path that root owns, that group and others
// cannot write and that is no symlink, below directories alike. The hook
// runs as root: plugins.d, /etc/vmhook and a --root tree's programs are held
// to this rule.

/** What the rule reads of a path (lstat(2)): a Host's stat, or the real file system's. */
export type StatOf = (path: string) => { uid: number; mode: number; isFile: boolean; isDirectory: boolean; isSymlink: boolean } | undefined;

/** Only root may own what root runs. */
export const ROOT_UID = 0;

export const octal = (mode: number) => `0${(mode & 0o7777).toString(8)}`;

/**
 * Why vmhook refuses to trust this path, or undefined when it is safe: root
 * owns it, group and others cannot write it, and it is no symlink (whose
 * target would escape the check). `because` says what root trusts it for.
 */
export function unsafeReason(statOf: StatOf, hostPath: string, kind: "directory" | "file", because = "plugins run as root", above = false): string | undefined {
  const stat = statOf(hostPath);
  if (!stat) return `${hostPath} does not exist`;
  if (stat.isSymlink) return `${hostPath} is a symlink; vmhook only trusts what it can check, so put the real ${kind} there`;
  if (kind === "directory" ? !stat.isDirectory : !stat.isFile) return `${hostPath} is not a ${kind === "directory" ? "directory" : "regular file"}`;
  if (stat.uid !== ROOT_UID) {
    return `${hostPath} is owned by uid ${stat.uid}, not root; ${because}, so run chown root:root ${hostPath}`;
  }
  // A sticky directory on the way (/tmp): only root renames or removes root's entries in it.
  const sticky = above && (stat.mode & 0o1000) !== 0;
  if ((stat.mode & 0o022) !== 0 && !sticky) {
    return `${hostPath} has mode ${octal(stat.mode)}: group or others can write it, and ${because}; run chmod go-w ${hostPath}`;
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
