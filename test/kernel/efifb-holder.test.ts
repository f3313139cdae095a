// What a program holding the firmware framebuffer's /dev/fb0 does to a
// handover on Debian 12's kernel (6.1), measured by hand, without vmhook:
// why vmhook refuses such a holder up front (efifb.test.ts). The guest boots
// through OVMF with efifb on the std VGA (no bochs-drm), as efifb.test.ts's.
// vfio-pci's probe removes efifb's platform device for good, so this takes a
// boot of its own. simpledrm is not measured: this kernel has no simpledrm
// (CONFIG_DRM_SIMPLEDRM and CONFIG_SYSFB_SIMPLEFB are not set).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { GPU } from "./vfio-domain.ts";
import { buildVfioUser } from "./vfio-user.ts";

const holder = suite<{ guest?: Guest }>("a holder of efifb's /dev/fb0 on a real kernel");
const skip = skipReason({ desktop: true });
if (skip) console.log(`efifb holder kernel tests: skipped: ${skip}`);
const it = skip ? holder.skip : holder;

holder.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ firmware: "ovmf", gpuDriver: false, files: { "/usr/bin/vfio-user": buildVfioUser() } });
});
holder.after(async ({ guest }) => {
  await guest?.shutdown();
});

// efifb (6.1) reserves the framebuffer's memory inside the GPU's BAR 0 at probe and gives it back
// when its fb_info is freed: at the last close of /dev/fb0, not at the unbind. vfio-pci reserves the
// whole BAR at QEMU's first access, which fails while efifb's range is still busy.
it("efifb unbound under a holder: the unbind returns, the holder gets ENODEV, BAR 0 stays reserved; vfio-pci takes the GPU but cannot reserve BAR 0 until the holder closes /dev/fb0", async ({ guest }) => {
  const d = `/sys/bus/pci/devices/${GPU}`;
  const measured = await guest!.ok(`sleep 600 < /dev/fb0 & holder=$!
exec 3< /dev/fb0
echo "before: $(grep -c efifb /proc/iomem)"
echo efi-framebuffer.0 > /sys/bus/platform/drivers/efi-framebuffer/unbind; echo "unbind: $?"
echo "fb after unbind: $(ls /dev | grep '^fb' | tr '\\n' ' ')"
echo "holder reads: $(dd bs=4 count=1 <&3 2>&1 >/dev/null | head -1)"
exec 3<&-
echo "reserved after unbind: $(grep -c efifb /proc/iomem)"
grep -B1 efifb /proc/iomem
modprobe vfio-pci && modprobe vfio_iommu_type1
echo vfio-pci > ${d}/driver_override; echo ${GPU} > /sys/bus/pci/drivers_probe
echo "driver: $(basename "$(readlink ${d}/driver)")"
echo "efi-framebuffer.0: $(ls /sys/bus/platform/devices | grep -c '^efi-framebuffer\\.0$')"
group=/dev/vfio/$(basename "$(readlink ${d}/iommu_group)")
echo "held: $(vfio-user read-bar $group ${GPU} 0)"
dmesg | grep "can't reserve" | tail -1
kill $holder; wait $holder 2>/dev/null
echo "reserved after close: $(grep -c efifb /proc/iomem)"
echo "closed: $(vfio-user read-bar $group ${GPU} 0)"`);
  for (const expected of [
    "before: 1",
    "unbind: 0",
    "fb after unbind: \n",
    /holder reads: dd: .*: No such device\n/,
    "reserved after unbind: 1",
    "driver: vfio-pci",
    "efi-framebuffer.0: 0",
    "held: read BAR 0: Device or resource busy",
    /vfio-pci 0000:00:01\.0: BAR 0: can't reserve/,
    "reserved after close: 0",
    "closed: read BAR 0: ok",
  ]) {
    assert.match(measured, expected, `${expected} not in:\n${measured}`);
  }
});

holder.run();
