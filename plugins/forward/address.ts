// IP addresses as the forward plugin uses them: parsed strictly from text the
// domain XML or a libvirt network file holds, and written back only in the
// canonical form (RFC 5952 for IPv6), so what reaches nft is a value we made.

export type Family = 4 | 6;

export interface IpAddress {
  family: Family;
  /** 4 or 16 bytes, network order. */
  bytes: number[];
  /** Canonical text: 192.168.122.10, fd00:122::10. */
  text: string;
}

const IPV4_OCTET = /^(0|[1-9]\d{0,2})$/;
const IPV6_GROUP = /^[0-9a-fA-F]{1,4}$/;

function parseIpv4(value: string): number[] | undefined {
  const parts = value.split(".");
  if (parts.length !== 4 || !parts.every((part) => IPV4_OCTET.test(part) && Number(part) <= 255)) return undefined;
  return parts.map(Number);
}

function parseIpv6(value: string): number[] | undefined {
  const halves = value.split("::");
  if (halves.length > 2) return undefined;
  const groups = (text: string) => (text === "" ? [] : text.split(":"));
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (![...head, ...tail].every((group) => IPV6_GROUP.test(group))) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const words = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...tail].map((group) => parseInt(group, 16));
  return words.flatMap((word) => [word >> 8, word & 0xff]);
}

function formatIpv6(bytes: number[]): string {
  const words = Array.from({ length: 8 }, (_, index) => (bytes[2 * index]! << 8) | bytes[2 * index + 1]!);
  // The longest run of two or more zero words becomes "::" (the first one on a tie).
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8; start++) {
    let length = 0;
    while (start + length < 8 && words[start + length] === 0) length++;
    if (length > bestLength) [bestStart, bestLength] = [start, length];
  }
  const hex = (list: number[]) => list.map((word) => word.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLength))}`;
}

/** The address, or undefined when the text is not exactly one IPv4 or IPv6 address (no prefix, no zone). */
export function parseIp(value: string): IpAddress | undefined {
  const text = value.trim();
  const v4 = parseIpv4(text);
  if (v4) return { family: 4, bytes: v4, text: v4.join(".") };
  const v6 = text.includes(":") ? parseIpv6(text) : undefined;
  if (v6) return { family: 6, bytes: v6, text: formatIpv6(v6) };
  return undefined;
}

/** The address of 4 or 16 bytes in network order (as the kernel reports a socket's), in the same canonical text as parseIp's. */
export function addressFromBytes(bytes: number[]): IpAddress {
  return bytes.length === 4 ? { family: 4, bytes, text: bytes.join(".") } : { family: 6, bytes, text: formatIpv6(bytes) };
}

/** Whether `address` lies in `network`/`prefix` (same family). */
export function inSubnet(address: IpAddress, network: IpAddress, prefix: number): boolean {
  if (address.family !== network.family) return false;
  for (let bit = 0; bit < prefix; bit++) {
    const mask = 0x80 >> bit % 8;
    if ((address.bytes[bit >> 3]! & mask) !== (network.bytes[bit >> 3]! & mask)) return false;
  }
  return true;
}

/** The prefix length of a dotted netmask (255.255.255.0 → 24), or undefined when it is not contiguous. */
export function netmaskPrefix(netmask: IpAddress): number | undefined {
  if (netmask.family !== 4) return undefined;
  const bits = netmask.bytes.map((byte) => byte.toString(2).padStart(8, "0")).join("");
  return /^1*0*$/.test(bits) ? bits.indexOf("0") === -1 ? 32 : bits.indexOf("0") : undefined;
}

/** The network address of address/prefix: 192.168.122.1/24 → 192.168.122.0. */
export function networkOf(address: IpAddress, prefix: number): IpAddress {
  const bytes = address.bytes.map((byte, index) => {
    const keep = Math.max(0, Math.min(8, prefix - index * 8));
    return byte & (0xff << (8 - keep)) & 0xff;
  });
  return address.family === 4 ? { family: 4, bytes, text: bytes.join(".") } : { family: 6, bytes, text: formatIpv6(bytes) };
}

/** The last address of address/prefix, host bits all set: 192.168.122.0/24 → 192.168.122.255 (IPv4's subnet broadcast). */
export function lastOf(address: IpAddress, prefix: number): IpAddress {
  const bytes = address.bytes.map((byte, index) => {
    const keep = Math.max(0, Math.min(8, prefix - index * 8));
    return (byte | (0xff >> keep)) & 0xff;
  });
  return address.family === 4 ? { family: 4, bytes, text: bytes.join(".") } : { family: 6, bytes, text: formatIpv6(bytes) };
}

/** Loopback addresses: DNAT of traffic to them would send packets with a martian source to the guest. */
export const isLoopback = (address: IpAddress): boolean =>
  address.family === 4 ? address.bytes[0] === 127 : address.bytes.slice(0, 15).every((byte) => byte === 0) && address.bytes[15] === 1;
