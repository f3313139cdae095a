// Host processes listening on ports a forward wants: /proc/net/{tcp,tcp6,udp,udp6}
// give the sockets, /proc/PID/fd the process that holds each socket inode.
// Parsing is pure; reading goes through the Host (a network namespace sees its own).
import { describeError } from "../../lib/errors.ts";
import type { Host } from "../../lib/host.ts";
import { openFiles, processIds, processName } from "../../lib/open-files.ts";
import { addressFromBytes, isLoopback, type Family } from "./address.ts";
import type { Protocol } from "./config.ts";

export interface Listener {
  protocol: Protocol;
  /** 6: an IPv6 socket; bound to :: it takes IPv4 too (unless IPV6_V6ONLY, which /proc does not show). 4: an IPv4 socket, or an IPv6 one bound to an IPv4-mapped address. */
  family: Family;
  /** Hex bytes decoded to text: 0.0.0.0, 127.0.0.1, ::, ::1, …, canonical as the forward's own addresses, so the two compare as text. */
  address: string;
  wildcard: boolean;
  loopback: boolean;
  port: number;
  inode: number;
}

const TCP_LISTEN = "0A";
/** An unconnected UDP socket: it receives whatever reaches its port. */
const UDP_UNCONNECTED = "07";

/** The /proc/net files vmhook reads for one protocol. */
const procNetFiles = (protocol: Protocol) => [`/proc/net/${protocol}`, `/proc/net/${protocol}6`];

/** Parses one /proc/net/{tcp,udp}[6] file. */
export function parseProcNet(text: string, protocol: Protocol, family: Family): Listener[] {
  const listeners: Listener[] = [];
  for (const line of text.split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10) continue;
    const [addressHex, portHex] = (fields[1] ?? "").split(":");
    const state = fields[3];
    if (state !== (protocol === "tcp" ? TCP_LISTEN : UDP_UNCONNECTED) || !addressHex || !portHex) continue;
    const decoded = decodeAddress(addressHex);
    const inode = Number(fields[9]);
    if (decoded?.length !== (family === 4 ? 4 : 16) || !Number.isSafeInteger(inode)) continue;
    const address = addressFromBytes(unmapIpv4(decoded));
    const wildcard = address.bytes.every((byte) => byte === 0);
    listeners.push({ protocol, family: address.family, address: address.text, wildcard, loopback: isLoopback(address), port: parseInt(portHex, 16), inode });
  }
  return listeners;
}

/** An IPv6 socket bound to ::ffff:a.b.c.d (Java binds IPv4 addresses so) takes IPv4 traffic to a.b.c.d, and no IPv6: it is an IPv4 listener. */
function unmapIpv4(bytes: number[]): number[] {
  const mapped = bytes.length === 16 && bytes.slice(0, 10).every((byte) => byte === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.slice(12) : bytes;
}

/** The kernel prints each 32-bit word of the address in host (little-endian) order. */
function decodeAddress(hex: string): number[] | undefined {
  if (!/^([0-9A-Fa-f]{8}){1,4}$/.test(hex) || (hex.length !== 8 && hex.length !== 32)) return undefined;
  const bytes: number[] = [];
  for (let word = 0; word < hex.length / 8; word++) {
    const chunk = hex.slice(word * 8, word * 8 + 8);
    for (let index = 3; index >= 0; index--) bytes.push(parseInt(chunk.slice(index * 2, index * 2 + 2), 16));
  }
  return bytes;
}

export function readListeners(host: Host, protocol: Protocol): Listener[] {
  return procNetFiles(protocol).flatMap((file, index) => {
    const text = host.readTrimmed(file);
    return text === undefined ? [] : parseProcNet(text, protocol, index === 0 ? 4 : 6);
  });
}

/**
 * "sshd (pid 812)", or "an unknown process" when no /proc/PID/fd holds the
 * socket (another namespace, a kernel socket). It only names the owner of a
 * port already known to be taken, so a process whose files cannot be read is
 * said, not refused.
 */
export function socketOwner(host: Host, inode: number): string {
  const target = `socket:[${inode}]`;
  const unreadable: string[] = [];
  for (const pid of processIds(host)) {
    try {
      if (openFiles(host, pid).includes(target)) return `${processName(host, pid)} (pid ${pid})`;
    } catch (error) {
      unreadable.push(describeError(error));
    }
  }
  // As a user, most processes are unreadable: one example says why and what to do.
  const unknown = unreadable.length === 0 ? "" : `; ${unreadable.length === 1 ? "" : `${unreadable.length} processes could not be read, e.g. `}${unreadable[0]}`;
  return `an unknown process (socket inode ${inode}${unknown})`;
}
