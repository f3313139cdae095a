// A gzip-compressed tar (POSIX ustar) of regular files held in memory: what
// `vmhook bundle` writes. In-process, so there is no child to time out and
// nothing depends on the host's tar; GNU tar and bsdtar read it.
import { gzipSync } from "node:zlib";

export interface TarEntry {
  /** Relative path inside the archive, at most 100 bytes (ustar's name field). */
  name: string;
  content: string;
}

const BLOCK = 512;

/** A NUL-padded octal number filling `width` bytes, as ustar's numeric fields want. */
function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0");
}

function header(name: string, size: number, mtime: number): Buffer {
  const block = Buffer.alloc(BLOCK);
  const put = (offset: number, text: string) => block.write(text, offset, "utf8");
  put(0, name);
  put(100, octal(0o644, 8));
  put(108, octal(0, 8)); // uid and gid 0: the bundle says nothing about local accounts
  put(116, octal(0, 8));
  put(124, octal(size, 12));
  put(136, octal(mtime, 12));
  put(148, " ".repeat(8)); // the checksum is summed with its own field as spaces
  put(156, "0"); // regular file
  put(257, "ustar\u000000");
  put(265, "root");
  put(297, "root");
  const checksum = block.reduce((sum, byte) => sum + byte, 0);
  put(148, `${octal(checksum, 7)}\u0000 `);
  return block;
}

export function tarGz(entries: TarEntry[], mtimeSeconds: number): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    if (Buffer.byteLength(entry.name) > 100 || entry.name.startsWith("/") || entry.name.split("/").includes("..")) {
      throw new Error(`internal: tar entry name ${JSON.stringify(entry.name)} must be relative, without "..", at most 100 bytes`);
    }
    const data = Buffer.from(entry.content, "utf8");
    parts.push(header(entry.name, data.length, Math.floor(mtimeSeconds)), data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK));
  }
  parts.push(Buffer.alloc(2 * BLOCK)); // end of archive
  return gzipSync(Buffer.concat(parts));
}
