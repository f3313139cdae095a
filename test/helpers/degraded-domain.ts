// examples/domains/win11-gpu.xml with doctor's advice undone: no hidden KVM
// or vendor_id, a SATA disk, an e1000e NIC, a balloon, no <memoryBacking>,
// and the GPU's audio function left out. `vmhook doctor --fix` must bring
// each of them back.
import * as fs from "node:fs";
import { fileURLToPath } from "node:url";

const EXAMPLE = fileURLToPath(new URL("../../examples/domains/win11-gpu.xml", import.meta.url));

function replaceOnce(text: string, from: string | RegExp, to: string): string {
  const changed = text.replace(from, to);
  if (changed === text) throw new Error(`examples/domains/win11-gpu.xml changed: ${from} is not in it any more`);
  return changed;
}

export function degradedWin11(): string {
  let xml = fs.readFileSync(EXAMPLE, "utf8");
  xml = replaceOnce(xml, "      <vendor_id state='on' value='vmhook'/>\n", "");
  xml = replaceOnce(xml, "    <kvm>\n      <hidden state='on'/>\n    </kvm>\n", "");
  xml = replaceOnce(xml, /  <memoryBacking>.*?<\/memoryBacking>\n/s, "");
  xml = replaceOnce(xml, "<target dev='vda' bus='virtio'/>", "<target dev='sda' bus='sata'/>\n      <address type='drive' controller='0' bus='0' target='0' unit='0'/>");
  xml = replaceOnce(xml, "<model type='virtio'/>", "<model type='e1000e'/>");
  xml = replaceOnce(xml, /    <hostdev mode='subsystem' type='pci' managed='yes'>\n      <source>\n        <address domain='0x0000' bus='0x01' slot='0x00' function='0x1'\/>\n      <\/source>\n    <\/hostdev>\n/, "");
  return replaceOnce(xml, "<memballoon model='none'/>", "<memballoon model='virtio'/>");
}

/** The NVIDIA card the example passes through, as sysfs shows it: VGA at 01:00.0, audio at 01:00.1. */
export const NVIDIA_CARD = [
  { address: "0000:01:00.0", classCode: "0x030000", vendor: "0x10de", device: "0x2684" },
  { address: "0000:01:00.1", classCode: "0x040300", vendor: "0x10de", device: "0x22ba" },
];
