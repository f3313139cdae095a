// Host-level settings: /etc/vmhook/vmhook.json, written by root. Per-VM
// configuration lives in the domain's metadata; this file only holds what
// belongs to the host (time limits, host-specific plugin defaults).
import { jsonText, VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { paths } from "./paths.ts";
import { rootsFile } from "./root-alone.ts";
import { closest } from "./cli/usage.ts";
import { readVfioSettings, VFIO_SETTING_KEYS } from "../plugins/vfio/config.ts";
import { FLOOR_SETTING, floorSetting } from "../plugins/hugepages/fit.ts";

export interface HostSettings {
  /** Hard limit for one hook invocation's work (prepare, start, ...). */
  deadlineSeconds: number;
  /** Separate budget for undoing, so a prepare that ran out of time can still roll back. */
  undoDeadlineSeconds: number;
  /** Per-plugin host settings, e.g. {"vfio": {"displayManagerUnits": ["gdm.service"]}}. */
  plugins: Record<string, Record<string, unknown>>;
}

export const DEFAULT_SETTINGS: HostSettings = { deadlineSeconds: 120, undoDeadlineSeconds: 120, plugins: {} };

const notObject = (value: unknown) => typeof value !== "object" || value === null || Array.isArray(value);

/** Why the settings file is root's business: it names the commands and units vmhook runs as root (vfio's displayManagerCommand, helperServices). */
const SETTINGS_FILE_REASON = "it names commands and units root runs";

/**
 * The built-in plugins with host settings: the keys each takes and its own
 * reader, run here so that a bad value refuses the whole file (a start
 * refuses, a release gives back with the defaults) instead of failing one
 * step or undo where the plugin reads it. A Map: a name from the file
 * ("constructor", "toString") must not find what every object inherits.
 */
const PLUGIN_SETTINGS = new Map<string, { keys: readonly string[]; read: (settings: Record<string, unknown>) => unknown }>([
  ["vfio", { keys: VFIO_SETTING_KEYS, read: readVfioSettings }],
  ["hugepages", { keys: [FLOOR_SETTING], read: floorSetting }],
  // Moved to the policy: still known, so that the forward plugin's refusal says where the list went.
  ["forward", { keys: ["allowedHostPorts"], read: () => undefined }],
]);

/** Custom plugins' settings are under "plugin:NAME"; the plugin reads its own keys. */
const CUSTOM_PLUGIN_PREFIX = "plugin:";

const inWords = (names: readonly string[]) => (names.length > 1 ? `${names.slice(0, -1).join(", ")} and ${names.at(-1)}` : names.join(""));

/**
 * One left at its default in silence would look set (a typo, a key of
 * another vmhook version). `notOne`: what the key is not, e.g. `"x" is not a
 * host setting of this vmhook`.
 */
function refuseUnknown(key: string, known: readonly string[], notOne: string): void {
  if (known.includes(key)) return;
  const meant = closest(key, [...known]);
  throw new VmhookError(`${paths.hostConfig}: ${notOne}${meant ? `; did you mean "${meant}"?` : ` (it has ${inWords(known)}): remove it, or if a later vmhook has it, install that one again`}`);
}

function checkPluginSettings(name: string, settings: Record<string, unknown>): void {
  if (name.startsWith(CUSTOM_PLUGIN_PREFIX)) {
    pluginTimeLimitMs(settings, name, Infinity);
    return;
  }
  const builtin = PLUGIN_SETTINGS.get(name);
  if (!builtin) {
    const names = [...PLUGIN_SETTINGS.keys()];
    const meant = closest(name, names);
    throw new VmhookError(`${paths.hostConfig}: "plugins": {"${name}": …}: no plugin of this vmhook has host settings by that name${meant ? `; did you mean "${meant}"?` : ` (${inWords(names)} have; a custom plugin's are under "${CUSTOM_PLUGIN_PREFIX}NAME"): remove it`}`);
  }
  for (const key of Object.keys(settings)) refuseUnknown(key, builtin.keys, `plugins.${name}.${key} is not a setting of the ${name} plugin`);
  builtin.read(settings);
}

export function loadSettings(host: Host): HostSettings {
  // Held to the policy file's rules (lib/policy.ts): whoever could write it could have root run their command.
  const file = rootsFile(host, paths.hostConfig, SETTINGS_FILE_REASON);
  if ("problem" in file) throw new VmhookError(`refusing the host settings: ${file.problem}`);
  // No file means the defaults; one that cannot be read must not: it may set what the defaults do not.
  if (!file.there) return DEFAULT_SETTINGS;
  const text = host.readTrimmed(paths.hostConfig);
  if (text === undefined) return DEFAULT_SETTINGS;
  let raw: Partial<HostSettings>;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new VmhookError(`${paths.hostConfig} is not valid JSON (${(error as Error).message}); fix or remove it`);
  }
  if (notObject(raw)) {
    throw new VmhookError(`${paths.hostConfig} holds ${jsonText(raw)}; it must be a JSON object such as {"deadlineSeconds": 120}`);
  }
  const known = Object.keys(DEFAULT_SETTINGS);
  for (const key of Object.keys(raw)) refuseUnknown(key, known, `${JSON.stringify(key)} is not a host setting of this vmhook`);
  const seconds = (key: "deadlineSeconds" | "undoDeadlineSeconds") => {
    const value = raw[key] ?? DEFAULT_SETTINGS[key];
    if (typeof value !== "number" || !(value > 0 && value <= 3600)) {
      throw new VmhookError(`${paths.hostConfig}: "${key}" is ${jsonText(value)}; use a number of seconds more than 0 and at most 3600 (a fraction is taken: 0.5)`);
    }
    return value;
  };
  const plugins = raw.plugins ?? {};
  if (notObject(plugins)) throw new VmhookError(`${paths.hostConfig}: "plugins" must be an object keyed by plugin name`);
  const badPlugin = Object.keys(plugins).find((name) => notObject(plugins[name]));
  if (badPlugin) throw new VmhookError(`${paths.hostConfig}: "plugins": {"${badPlugin}": …} must be an object of that plugin's settings`);
  for (const [name, settings] of Object.entries(plugins)) checkPluginSettings(name, settings as Record<string, unknown>);
  return { deadlineSeconds: seconds("deadlineSeconds"), undoDeadlineSeconds: seconds("undoDeadlineSeconds"), plugins };
}

/** Custom plugins: "plugins": {"plugin:NAME": {"timeoutSeconds": N}}, 30 s unless set. */
const DEFAULT_PLUGIN_TIMEOUT_SECONDS = 30;

/**
 * How long one handler or undo of a plugin may take: a custom plugin's
 * timeoutSeconds (default 30 s), never more than what is left of the deadline.
 */
export function pluginTimeLimitMs(pluginSettings: Record<string, unknown>, pluginId: string, remainingMs: number): number {
  if (!pluginId.startsWith("plugin:")) return Math.max(1, remainingMs);
  const seconds = pluginSettings.timeoutSeconds ?? DEFAULT_PLUGIN_TIMEOUT_SECONDS;
  if (typeof seconds !== "number" || !(seconds > 0 && seconds <= 3600)) {
    throw new VmhookError(`${paths.hostConfig}: "plugins": {"${pluginId}": {"timeoutSeconds": ${jsonText(seconds)}}} must be a number of seconds more than 0 and at most 3600 (a fraction is taken: 0.5)`);
  }
  return Math.max(1, Math.min(seconds * 1000, remainingMs));
}

/** Which setting bounded a plugin that ran out of time: its own timeoutSeconds, or (when less was left) the event's deadline. */
export function settingToRaise(pluginSettings: Record<string, unknown>, pluginId: string, limitMs: number, deadlineSetting: string): string {
  const ownLimit = pluginId.startsWith("plugin:") ? pluginTimeLimitMs(pluginSettings, pluginId, Infinity) : Infinity;
  return limitMs < ownLimit ? `"${deadlineSetting}" in ${paths.hostConfig}` : `"timeoutSeconds" under "plugins": {"${pluginId}": …} in ${paths.hostConfig}`;
}
