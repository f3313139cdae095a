// `vmhook iommu`: every IOMMU group with its devices and whether it can be
// passed through, the readable form of the usual check-iommu.sh loop.
import type { CommandModule } from "yargs";
import { describeDevice, readIommuGroups, type GroupDevice } from "../diagnostics/iommu.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson } from "./output.ts";

const VERDICT_LABEL = { isolated: "isolated", blocked: "isolated, but blocked by a bridge", shared: "NOT isolated", "bridges-only": "bridges only" };

function deviceLine(device: GroupDevice): string {
  if (!device.ids) return `  ${device.address}  (not a PCI device)`;
  const kind = `${device.className ?? "class"} [${device.classCode}]`;
  return `  ${device.address}  ${kind}: ${describeDevice(device)}  driver: ${device.driver ?? "none"}${device.bridge ? "  (bridge)" : ""}`;
}

export const iommuCommand: CommandModule<GlobalOptions, GlobalOptions> = {
  command: "iommu",
  describe: "list IOMMU groups and their devices, with a passthrough verdict per group",
  handler(args) {
    const report = readIommuGroups(args.host);
    if (args.json) {
      printJson(report);
      return;
    }
    if (!report.enabled) {
      print(`No IOMMU groups: ${report.advice!.reason}.\nFix: ${report.advice!.fix}.`);
      return;
    }
    for (const group of report.groups) {
      print(`IOMMU group ${group.id} (${VERDICT_LABEL[group.verdict]}): ${group.reason}`);
      group.devices.forEach((device) => print(deviceLine(device)));
    }
    if (!report.namesFrom) print("(no pci.ids on this host: install the pci.ids package for vendor and device names)");
  },
};
