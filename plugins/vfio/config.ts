// <vmhook:vfio> → what to hand over: the per-VM attributes (metadata) and the
// host-level settings (/etc/vmhook/vmhook.json, "plugins": {"vfio": {...}}).
//
//   <vmhook:vfio devices="0000:01:00.0,..." include-slot="yes" single-gpu="auto|yes|no"
//                unload-modules="auto|none|mod,..." load-modules="none|mod,..." display-manager="unit,..."/>
import type { XmlElement } from "../../lib/xml.ts";
import { readAttributes, single } from "../../lib/element.ts";
import { describeElement, libvirtManagedPci, libvirtUnmanagedPci, type Domain } from "../../lib/domain.ts";
import { attributeText, ConfigError, jsonText, VmhookError } from "../../lib/errors.ts";
import { paths } from "../../lib/paths.ts";
import { normalModule } from "../../lib/kernel-modules.ts";
import { normalUnit } from "../../lib/policy.ts";
import { closest } from "../../lib/cli/usage.ts";
import { checkPattern, parsePciAddress, parseYesNo, PATTERNS } from "../../lib/validate.ts";

export interface VfioConfig {
  /** The devices to hand over, as configured or from the domain's PCI <hostdev>s; slot functions are added at prepare. */
  devices: string[];
  /** The domain's PCI devices libvirt moves to vfio-pci itself (libvirtManagedPci): the VM's own in an IOMMU group, not vmhook's to move. */
  libvirtManaged: string[];
  /** The domain's PCI devices without managed='yes', with the element that lists each (libvirtUnmanagedPci): in a GPU's group on a host driver, one is refused with the advice to set managed='yes'. */
  libvirtUnmanaged: Record<string, "hostdev" | "interface">;
  /** Add the other functions of each GPU's slot (HDMI audio, USB-C, serial). */
  includeSlot: boolean;
  singleGpu: "auto" | "yes" | "no";
  /** "auto": the vendor's defaults (NVIDIA's proprietary stack); otherwise exactly these, unloaded in dependency order. */
  unloadModules: "auto" | string[];
  /** Loaded once the devices are on vfio-pci (kvmfr, vendor-reset), unloaded at release. */
  loadModules: string[];
  /** systemd units of the display manager; undefined: the host setting or display-manager.service. */
  displayManagerUnits?: string[];
  /** Per device, the VFIO driver its <hostdev><driver model='…'/> names: bound instead of the one modules.alias chooses. */
  driverModels: Record<string, string>;
}

export const ATTRIBUTES = ["devices", "include-slot", "single-gpu", "unload-modules", "load-modules", "display-manager"] as const;

const list = (value: string) => value.split(/[\s,]+/).filter(Boolean);

/** Each name once, by the name the kernel or systemd acts on (nvidia-drm is nvidia_drm): a repeat would only be acted on again. */
function distinct(names: string[], actedOn: (name: string) => string): string[] {
  const seen = new Set<string>();
  return names.filter((name) => {
    const key = actedOn(name);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** auto, or yes/no in any spelling a yes/no attribute takes. */
function parseSingleGpu(value: string | undefined, where: string): VfioConfig["singleGpu"] {
  if (value === undefined || value.trim().toLowerCase() === "auto") return "auto";
  try {
    return parseYesNo(value, where, "single-gpu", false) ? "yes" : "no";
  } catch {
    throw new ConfigError(where, `${attributeText("single-gpu", value)} must be auto, yes or no (auto: yes when the GPU shows the boot console and the host has no other GPU)`);
  }
}

export function parseVfioConfig(elements: XmlElement[], domain: Domain): VfioConfig {
  const element = single(elements);
  const where = describeElement(element);
  const attrs = readAttributes(element, ATTRIBUTES);

  const devices =
    attrs.devices !== undefined
      ? list(attrs.devices).map((address) => parsePciAddress(address, where, "devices"))
      : domain.hostdevs.flatMap((hostdev) => (hostdev.type === "pci" ? [hostdev.address] : []));
  if (devices.length === 0) {
    throw new ConfigError(where, `has no devices: add the GPU as a PCI <hostdev> to the domain, or list it in devices="0000:01:00.0"`);
  }

  const singleGpu = parseSingleGpu(attrs["single-gpu"], where);

  const modules = (attribute: string) =>
    distinct(
      list(attrs[attribute] ?? "").map((name) => checkPattern(name, PATTERNS.moduleName, where, attribute, "a kernel module name", "write names as lsmod lists the loaded ones, e.g. nvidia_drm")),
      normalModule,
    );
  const unload = attrs["unload-modules"]?.trim();
  return {
    devices: [...new Set(devices)],
    libvirtManaged: libvirtManagedPci(domain),
    libvirtUnmanaged: libvirtUnmanagedPci(domain),
    includeSlot: parseYesNo(attrs["include-slot"], where, "include-slot", true),
    singleGpu,
    unloadModules: unload === undefined || unload === "auto" ? "auto" : unload === "none" ? [] : modules("unload-modules"),
    loadModules: attrs["load-modules"]?.trim() === "none" ? [] : modules("load-modules"),
    displayManagerUnits:
      attrs["display-manager"] === undefined
        ? undefined
        : // As systemctl reads them (gdm is gdm.service), each once.
          [...new Set(list(attrs["display-manager"]).map((unit) => normalUnit(checkPattern(unit, PATTERNS.unitName, where, "display-manager", "a systemd unit name", "write names as systemctl list-units lists them, e.g. gdm.service"))))],
    driverModels: Object.fromEntries(domain.hostdevs.flatMap((hostdev) => (hostdev.type === "pci" && hostdev.driverModel !== undefined ? [[hostdev.address, hostdev.driverModel]] : []))),
  };
}

/** Host settings of the vfio plugin, with defaults. */
export interface VfioSettings {
  /** systemd units stopped in single-GPU mode (default display-manager.service, the alias every display manager installs). */
  displayManagerUnits: string[];
  /** Without systemd: commands that stop and start the display manager, and the process names to wait for. */
  displayManagerCommand?: { stop: string[]; start: string[]; processes: string[] };
  /**
   * Stopped while the devices are away when present and running: NVIDIA's
   * daemons that keep /dev/nvidia* open (persistenced; powerd, Dynamic Boost,
   * which NVIDIA's packages enable), so the modules could not go.
   */
  helperServices: string[];
  /** How long to wait for the display manager's processes and the GPU's users to be gone. */
  stopTimeoutSeconds: number;
  /** How long to wait for a device to appear on its driver (each attempt of the return path), and for its display nodes at release. */
  bindTimeoutSeconds: number;
}

const DEFAULT_SETTINGS: VfioSettings = {
  displayManagerUnits: ["display-manager.service"],
  helperServices: ["nvidia-persistenced.service", "nvidia-powerd.service"],
  stopTimeoutSeconds: 20,
  bindTimeoutSeconds: 10,
};

/** What plugins.vfio may hold: lib/settings.ts refuses any other key. */
export const VFIO_SETTING_KEYS: (keyof VfioSettings)[] = ["displayManagerUnits", "displayManagerCommand", "helperServices", "stopTimeoutSeconds", "bindTimeoutSeconds"];

const COMMAND_KEYS = ["stop", "start", "processes"];

/** The characters of a process name the kernel keeps in /proc/PID/comm (TASK_COMM_LEN, 16 with its NUL). */
const COMM_LENGTH = 15;

export function readVfioSettings(raw: Record<string, unknown>): VfioSettings {
  const where = (key: string) => `${paths.hostConfig}: plugins.vfio.${key}`;
  const strings = (key: string, value: unknown, pattern?: RegExp): string[] => {
    if (!Array.isArray(value) || !value.every((item) => typeof item === "string" && (!pattern || pattern.test(item)))) {
      throw new VmhookError(`${where(key)} must be a list of ${pattern ? "names" : "strings"}, e.g. ["gdm.service"]; it is ${jsonText(value)}`);
    }
    return value as string[];
  };
  const seconds = (key: "stopTimeoutSeconds" | "bindTimeoutSeconds"): number => {
    const value = raw[key] ?? DEFAULT_SETTINGS[key];
    if (typeof value !== "number" || !(value > 0 && value <= 600)) throw new VmhookError(`${where(key)} must be a number of seconds more than 0 and at most 600 (a fraction is taken: 0.5); it is ${jsonText(value)}`);
    return value;
  };
  // A longer name never equals a comm: prepare would refuse the display manager's own processes as outsiders, release wait for them in vain.
  const processNames = (names: string[]): string[] => {
    const long = names.find((name) => name.length > COMM_LENGTH);
    if (long === undefined) return names;
    throw new VmhookError(`${where("displayManagerCommand.processes")} names "${long}", which no process matches: /proc/PID/comm keeps the first ${COMM_LENGTH} characters of a name; write "${long.slice(0, COMM_LENGTH)}" (as ps -e shows it)`);
  };
  const command = raw.displayManagerCommand as Record<string, unknown> | undefined;
  if (command !== undefined && (typeof command !== "object" || command === null || !Array.isArray(command.stop) || !command.stop.length || !Array.isArray(command.start) || !command.start.length)) {
    throw new VmhookError(`${where("displayManagerCommand")} must be {"stop": ["rc-service", "sddm", "stop"], "start": [...], "processes": ["sddm"]}`);
  }
  // A misspelled "processes" would leave release not waiting for the display manager to go.
  const commandKey = command === undefined ? undefined : Object.keys(command).find((key) => !COMMAND_KEYS.includes(key));
  if (commandKey !== undefined) {
    const meant = closest(commandKey, COMMAND_KEYS);
    throw new VmhookError(`${where(`displayManagerCommand.${commandKey}`)} is not a setting of the vfio plugin; ${meant ? `did you mean "${meant}"?` : `displayManagerCommand takes ${COMMAND_KEYS.join(", ")}`}`);
  }
  return {
    displayManagerUnits: raw.displayManagerUnits === undefined ? DEFAULT_SETTINGS.displayManagerUnits : strings("displayManagerUnits", raw.displayManagerUnits, PATTERNS.unitName),
    displayManagerCommand: command && {
      stop: strings("displayManagerCommand.stop", command.stop),
      start: strings("displayManagerCommand.start", command.start),
      processes: command.processes === undefined ? [] : processNames(strings("displayManagerCommand.processes", command.processes)),
    },
    helperServices: raw.helperServices === undefined ? DEFAULT_SETTINGS.helperServices : strings("helperServices", raw.helperServices, PATTERNS.unitName),
    stopTimeoutSeconds: seconds("stopTimeoutSeconds"),
    bindTimeoutSeconds: seconds("bindTimeoutSeconds"),
  };
}
