// The guest's GPU as a libvirt domain for the vfio plugin: shared by test/kernel/vfio*.test.ts, two-gpu.test.ts and bench/vfio-guest.ts.
import * as assert from "uvu/assert";
import { bootGuest, type Guest } from "./guest.ts";

export const GPU = "0000:00:01.0";
export const UUID = "6b0e2a4c-6a4e-4c57-9a43-0d1a5b3c7e01";

/** A domain with the GPU (slot 0x01 unless told: test/kernel/two-gpu.test.ts passes the second one) as a PCI hostdev and a <vmhook:vfio> with these attributes. */
export function domainXml(vfioAttributes = "", slot = "0x01"): string {
  return `<domain type='kvm'>
  <name>gpu-vm</name>
  <uuid>${UUID}</uuid>
  <memory unit='MiB'>256</memory>
  <metadata>
    <vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio ${vfioAttributes}/></vmhook:hooks>
  </metadata>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x00' slot='${slot}' function='0x0'/></source>
    </hostdev>
  </devices>
</domain>`;
}

/** BAR 2 of the std VGA as the device decodes it now. */
export const BAR2 = `hexdump -s 24 -n 4 -e '1/4 "%08x\\n"' /sys/bus/pci/devices/${GPU}/config`;

/**
 * While the GPU sits on vfio-pci: BAR 2 set to 0 with the device awake, then
 * runtime PM lets it sleep, which saves that config space; it is what the
 * kernel restores when vfio-pci lets go. The kernel's resources still say
 * where BAR 2 was, so bochs-drm's probe fails (ID mismatch) until a remove +
 * rescan assigns it again: test/kernel/vfio-return.test.ts, vfio-slot.test.ts.
 */
export const LOSE_BAR2 = `d=/sys/bus/pci/devices/${GPU}
echo on > $d/power/control
printf '\\000\\000\\000\\000' | dd of=$d/config bs=4 seek=6 count=1 conv=notrunc 2>/dev/null
echo auto > $d/power/control
echo "bar2: $(${BAR2})"`;

/** Shell lines that write the domain XML to /tmp/domain.xml in the guest. */
export function writeDomain(xml: string): string {
  return `cat > /tmp/domain.xml <<'XML'\n${xml}\nXML`;
}

/** Writes the domain XML in the guest and runs the hook for one event, as libvirt does. */
export function hook(xml: string, event: "prepare begin" | "release end", background = false): string {
  return `${writeDomain(xml)}\n/etc/libvirt/hooks/qemu gpu-vm ${event} - < /tmp/domain.xml${background ? " &" : ""}`;
}

/** Everything the plugin may touch, as text: compared before and after each scenario. */
export const STATE = `
d=/sys/bus/pci/devices/${GPU}
echo "driver: $(basename "$(readlink $d/driver)")"
echo "override: $(cat $d/driver_override)"
echo "power: $(cat $d/power/control)"
for v in /sys/class/vtconsole/*; do echo "$(basename $v): $(cat $v/name) bind=$(cat $v/bind)"; done
echo "fb: $(ls /dev | grep '^fb' | tr '\\n' ' ')"
echo "dri: $(ls /dev/dri 2>/dev/null | tr '\\n' ' ')"
echo "vfio: $(ls /dev/vfio 2>/dev/null | tr '\\n' ' ')"
echo "modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' ')"
echo "journals: $(ls /run/vmhook 2>/dev/null | grep json | tr '\\n' ' ')"
`;

/** The second GPU of bootTwoGpus' guest: a secondary-vga (1234:1111, class 0x0380) on bochs-drm, in its own IOMMU group. */
export const SECOND_GPU = "0000:00:02.0";

/** The guest with a second GPU beside the std VGA. */
export const bootTwoGpus = (): Promise<Guest> => bootGuest({ qemuArgs: ["-device", "secondary-vga,addr=0x2"] });

/** STATE, and the second GPU's driver, override and power. */
export const TWO_GPU_STATE = `${STATE}
d=/sys/bus/pci/devices/${SECOND_GPU}
echo "second driver: $(basename "$(readlink $d/driver)")"
echo "second override: $(cat $d/driver_override)"
echo "second power: $(cat $d/power/control)"
`;

/** Shell lines that give back what a scenario that failed left in a journal, so that the next starts from the guest as booted. */
export const RECOVER_LEFTOVERS = "if ls /run/vmhook/*.json >/dev/null 2>&1; then vmhook recover > /dev/null 2>&1; fi";

/**
 * The GPU's driver unloaded while the VM ran (prepared already): release
 * leaves libvirt alone but keeps the change in the journal; then the driver
 * is loaded again, for vmhook recover to finish.
 */
export async function releaseWithDriverUnloaded(guest: Guest): Promise<void> {
  await guest.ok("rmmod bochs");
  const release = await guest.sh(hook(domainXml(), "release end"));
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(release.stdout, `${GPU} cannot go back to bochs-drm: that driver is no longer registered`);
  assert.match(await guest.ok("ls /run/vmhook"), `${UUID}.json`);
  await guest.ok("modprobe bochs");
}
