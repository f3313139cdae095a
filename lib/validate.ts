// Strict patterns for every value that may become part of a host path.
// The domain XML can be written by users less trusted than root, so nothing
// from it reaches a path before passing one of these.
import { attributeText, ConfigError } from "./errors.ts";

export const PATTERNS = {
  /** As the kernel names a device ("%04x:%02x:%02x.%d"): a 32-bit domain, 5 digits and more behind Intel VMD (10000:e1:00.0). */
  pciAddress: /^(?:[0-9a-f]{4}|[1-9a-f][0-9a-f]{4,7}):[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/,
  uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
  /** Kernel module and driver names. Never starting with "-": they become arguments of modprobe and rmmod. */
  moduleName: /^[a-zA-Z0-9_][a-zA-Z0-9_-]{0,63}$/,
  /** mdev type ids (i915-GVTg_V5_4, nvidia-63, mtty-2). */
  mdevType: /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/,
  /**
   * NVIDIA vGPU types, by id (1433) or name as creatable_vgpu_types lists it
   * (NVIDIA L40S-12Q, GRID A100-4C, NVIDIA A100-1-5CME, NVIDIA RTX PRO 6000
   * Blackwell DC-4-24Q), with or without its first word: words of letters and
   * digits, each joined to the next by one space or hyphen. Never "." or "/".
   */
  vgpuType: /^(?=.{1,64}$)[A-Za-z0-9]+(?:[ -][A-Za-z0-9]+)*$/,
  /**
   * Custom plugin names: never a path, and NAME.mjs within a file name's 255
   * bytes (longer, stat fails with ENAMETOOLONG). Never NAME.js or NAME.mjs:
   * that file is plugin NAME's module, and named itself it would run as an
   * executable, past the checks of a module.
   */
  pluginName: /^(?!.*\.m?js$)[a-z0-9][a-z0-9._-]{0,250}$/,
  /** systemd unit names. Never starting with "-": they become arguments of systemctl. */
  unitName: /^[A-Za-z0-9:_.@\\][A-Za-z0-9:_.@\\-]{0,254}$/,
};

/** PATTERNS.pluginName in words, for the messages that refuse a name. */
export const PLUGIN_NAME_RULE = 'at most 251 lower-case letters, digits, ".", "_" and "-", starting with a letter or digit, not ending in .js or .mjs';

/** Accepts 0000:01:00.0, 10000:e1:00.0, 01:00.0 (domain 0000) in any case; returns the kernel's name of the device (lower case, the domain in 4 digits or more). */
export function parsePciAddress(value: string, element: string, attribute: string): string {
  const raw = value.trim().toLowerCase();
  const [, domain = "0", rest = ""] = /^(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}:[0-9a-f]{2}\.[0-7])$/.exec(raw) ?? [];
  const full = rest ? `${parseInt(domain, 16).toString(16).padStart(4, "0")}:${rest}` : raw;
  if (!PATTERNS.pciAddress.test(full)) {
    throw new ConfigError(element, `${attributeText(attribute, value)} is not a PCI address; write it as DDDD:BB:SS.F, e.g. 0000:01:00.0 (see lspci -D)`);
  }
  return full;
}

/** A UUID as libvirt's virUUIDParse reads it (32 hex digits, dashes or spaces between pairs), written as libvirt writes it: 8-4-4-4-12, lower case. */
export function parseUuid(value: string, element: string, attribute: string): string {
  const lower = value.trim().toLowerCase();
  if (!/^(?:[- ]*[0-9a-f]{2}){16}$/.test(lower)) {
    throw new ConfigError(element, `${attributeText(attribute, value)} is not a UUID; write it as xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (uuidgen makes one)`);
  }
  const digits = lower.replace(/[- ]/g, "");
  return [digits.slice(0, 8), digits.slice(8, 12), digits.slice(12, 16), digits.slice(16, 20), digits.slice(20)].join("-");
}

/** `what` names the kind of value with its article ("a kernel module name"); `fix` says where the valid ones are listed. */
export function checkPattern(value: string, pattern: RegExp, element: string, attribute: string, what: string, fix: string): string {
  if (!pattern.test(value)) {
    throw new ConfigError(element, `${attributeText(attribute, value)} is not ${what}; ${fix}`);
  }
  return value;
}

const YES = new Set(["yes", "true", "on", "1"]);
const NO = new Set(["no", "false", "off", "0"]);

/** yes/no attributes; "auto" only where the caller allows it. */
export function parseYesNo(value: string | undefined, element: string, attribute: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  const lower = value.trim().toLowerCase();
  if (YES.has(lower)) return true;
  if (NO.has(lower)) return false;
  throw new ConfigError(element, `${attributeText(attribute, value)} must be yes or no`);
}

export function parseInteger(value: string, element: string, attribute: string, min: number, max: number): number {
  const trimmed = value.trim();
  const number = /^\d+$/.test(trimmed) ? Number(trimmed) : NaN;
  if (!Number.isSafeInteger(number) || number < min || number > max) {
    throw new ConfigError(element, `${attributeText(attribute, value)} must be a whole number from ${min} to ${max}`);
  }
  return number;
}

/**
 * KiB per unit as libvirt's virScaleInteger reads it, in any case: b, byte,
 * bytes; k, m, g, t, p, e alone or with iB are powers of 1024, with B powers
 * of 1000; no unit is KiB. Anything else libvirt refuses too.
 */
function kibPerUnit(unit: string): number | undefined {
  const lower = unit.toLowerCase();
  if (lower === "") return 1;
  if (lower === "b" || lower === "byte" || lower === "bytes") return 1 / 1024;
  const power = "kmgtpe".indexOf(lower[0]!) + 1;
  if (power === 0) return undefined;
  if (lower.length === 1 || lower.slice(1) === "ib") return 1024 ** (power - 1);
  return lower.slice(1) === "b" ? 1000 ** power / 1024 : undefined;
}

/** A size as libvirt writes it (value + unit, default KiB), in KiB; a part KiB rounds up, as libvirt rounds memory. */
export function sizeToKiB(value: string, unit: string | undefined, element: string, attribute: string): number {
  const factor = kibPerUnit((unit ?? "").trim());
  const number = Number(value.trim());
  if (factor === undefined || !/^\d+$/.test(value.trim()) || !Number.isSafeInteger(number)) {
    throw new ConfigError(element, `${attributeText(attribute, `${value}${unit ? ` ${unit}` : ""}`)} is not a size (a whole number with a unit libvirt takes: b, KiB or k, MiB or M, … EiB or E; KB … EB count in 1000s)`);
  }
  const kib = Math.ceil(number * factor);
  if (!Number.isSafeInteger(kib)) {
    throw new ConfigError(element, `${attributeText(attribute, `${value}${unit ? ` ${unit}` : ""}`)} is beyond 2^53 KiB (8 EiB), more than any host has; write the real size`);
  }
  return kib;
}

/** "2M", "1G", "2048k", "2MiB" → KiB. */
export function parseSizeWithSuffix(value: string, element: string, attribute: string): number {
  const match = /^(\d+)\s*([a-zA-Z]*)$/.exec(value.trim());
  if (!match) throw new ConfigError(element, `${attributeText(attribute, value)} is not a size; write e.g. 2M or 1G`);
  return sizeToKiB(match[1]!, match[2] || "k", element, attribute);
}

export function formatKiB(kib: number): string {
  if (kib % (1024 * 1024) === 0) return `${kib / (1024 * 1024)}G`;
  if (kib % 1024 === 0) return `${kib / 1024}M`;
  return `${kib}K`;
}
