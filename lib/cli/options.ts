// Options every command takes (--root, --json), and the host they act on.
import type { Host } from "../host.ts";

export interface GlobalOptions {
  root: string;
  json: boolean;
  /** The host under --root: a RootedHost, or what the caller of runCli hands in (a simulated host in tests). */
  host: Host;
}
