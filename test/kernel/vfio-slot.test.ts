// A GPU slot as every discrete GPU has one, on a real kernel: VGA at function
// 0 (QEMU's std VGA, 0000:00:01.0, on bochs-drm, the boot VGA device, fbcon
// on it) and HDMI audio at function 1 (ich9-intel-hda with a codec,
// 0000:00:01.1, on snd_hda_intel, sound card 0), one IOMMU group, no other
// GPU: single-GPU mode. One boot; every scenario leaves the guest as it was,
// and starts from it as booted.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { BAR2, domainXml, GPU, hook, LOSE_BAR2, RECOVER_LEFTOVERS, STATE, UUID } from "./vfio-domain.ts";

const AUDIO = "0000:00:01.1";

const slot = suite<{ guest?: Guest; baseline?: string; group?: string }>("a GPU slot with an HDMI audio function on a real kernel");
const skip = skipReason();
if (skip) console.log(`GPU slot kernel tests: skipped: ${skip}`);
const it = skip ? slot.skip : slot;

/** STATE, the audio function's driver, override and power, its sound card's nodes, and who shares the GPU's IOMMU group. */
const SLOT_STATE = `${STATE}
d=/sys/bus/pci/devices/${AUDIO}
echo "audio driver: $(basename "$(readlink $d/driver)")"
echo "audio override: $(cat $d/driver_override)"
echo "audio power: $(cat $d/power/control)"
echo "snd: $(ls /dev/snd 2>/dev/null | tr '\\n' ' ')"
echo "group: $(ls /sys/bus/pci/devices/${GPU}/iommu_group/devices | tr '\\n' ' ')"
`;

/** snd_hda_intel probes its codec in the background after the bind: wait (up to 30 s) for the card's control node. */
const CARD_BACK = "end=$(($(date +%s) + 30)); until ls /dev/snd 2>/dev/null | grep -q '^controlC' || [ $(date +%s) -gt $end ]; do sleep 0.2; done";

/** The domain with both functions of the slot as PCI hostdevs. */
const bothFunctions = (attributes = "") =>
  domainXml(attributes).replace(
    "</devices>",
    `  <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x00' slot='0x01' function='0x1'/></source>
    </hostdev>
  </devices>`,
  );

const SETTINGS = `mkdir -p /etc/vmhook && echo '{"plugins": {"vfio": {"bindTimeoutSeconds": 2}}}' > /etc/vmhook/vmhook.json`;

slot.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({
    stdVga: false,
    // The codec's driver before the controller's: the controller probes its codec in the background, and the
    // kernel's request_module finds no /sbin/modprobe in this initramfs.
    extraModules: ["snd_hda_codec_generic", "snd_hda_intel"],
    qemuArgs: [
      "-device", "VGA,addr=0x1.0,multifunction=on",
      "-audiodev", "none,id=silent",
      "-device", "ich9-intel-hda,addr=0x1.1", "-device", "hda-duplex,audiodev=silent",
    ],
  });
  await context.guest.ok(`${SETTINGS}\n${CARD_BACK}`);
  context.baseline = await context.guest.ok(SLOT_STATE);
  context.group = (await context.guest.ok(`basename $(readlink /sys/bus/pci/devices/${GPU}/iommu_group)`)).trim();
});
/** A journal a failed scenario left is recovered, the settings and the log are as at boot. */
slot.before.each(async ({ guest }) => {
  if (!guest) return;
  await guest.ok(`${RECOVER_LEFTOVERS}\n${SETTINGS}\n${CARD_BACK}\n: > /var/log/vmhook.log; dmesg -c > /dev/null`, { timeoutMs: 120_000 });
});
slot.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("the bench: VGA at .0 on bochs-drm (boot VGA, fb0, fbcon), audio at .1 on snd_hda_intel with card 0, one IOMMU group", async ({ guest, baseline }) => {
  assert.match(baseline!, "driver: bochs-drm\n");
  assert.match(baseline!, "vtcon0: (M) frame buffer device bind=1");
  assert.match(baseline!, "audio driver: snd_hda_intel\n");
  assert.match(baseline!, /snd: controlC0 .*pcmC0D0p/);
  assert.match(baseline!, `group: ${GPU} ${AUDIO} \n`);
  assert.is(await guest!.ok(`cat /sys/bus/pci/devices/${GPU}/boot_vga /sys/bus/pci/devices/${AUDIO}/class`), "1\n0x040300\n");
});

/** prepare for `xml`: both functions on vfio-pci, the console let go; release: the guest as before. */
async function handOverAndBack(guest: Guest, baseline: string, group: string, xml: string): Promise<string> {
  const prepare = await guest.sh(hook(xml, "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest.ok(SLOT_STATE);
  assert.match(during, "driver: vfio-pci\n");
  assert.match(during, "audio driver: vfio-pci\n");
  assert.match(during, `vfio: ${group} vfio`);
  assert.not.match(during, /frame buffer device bind=1/);
  assert.match(during, "fb: \n");
  assert.not.match(during, /snd: .*controlC/);
  assert.match(during, `journals: ${UUID}.json`);

  const release = await guest.sh(hook(xml, "release end"));
  assert.equal(release, { code: 0, stdout: "" });
  await guest.ok(CARD_BACK);
  assert.fixture(await guest.ok(SLOT_STATE), baseline);
  return guest.ok("cat /var/log/vmhook.log");
}

it("the domain lists the VGA function: include-slot adds the audio function; both go to vfio-pci and come back, card and console too", async ({ guest, baseline, group }) => {
  const log = await handOverAndBack(guest!, baseline!, group!, domainXml());
  assert.match(log, `vfio: bind ${AUDIO} to vfio-pci (from snd_hda_intel): done`);
  assert.match(log, `vfio: ${AUDIO} return attempt 1/3 probe: bound to snd_hda_intel`);
  assert.match(log, `vfio: ${GPU} return attempt 1/3 probe: bound to bochs-drm`);
});

it("the domain lists both functions, include-slot=no: the same", async ({ guest, baseline, group }) => {
  await handOverAndBack(guest!, baseline!, group!, bothFunctions('include-slot="no"'));
});

it("include-slot=no and only the VGA function listed: refused before anything changes, naming the audio function", async ({ guest, baseline }) => {
  const result = await guest!.sh(hook(domainXml('include-slot="no"'), "prepare begin"));
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, AUDIO);
  assert.fixture(await guest!.ok(SLOT_STATE), baseline!);
});

// PipeWire and PulseAudio close the card when the kernel disconnects it; a program that does not makes
// snd_card_free() wait in the audio function's unbind (docs/vfio.md, step 1).
it("a program keeps the HDMI audio's card open: prepare fails after bindTimeoutSeconds naming it, the rest is rolled back; once it is gone, recover gives the card back", async ({ guest, baseline }) => {
  const holder = (await guest!.ok("sleep 100000 3</dev/snd/controlC0 >/dev/null 2>&1 & echo $!")).trim();
  const prepare = await guest!.sh(hook(domainXml(), "prepare begin"));
  assert.is(prepare.code, 1, prepare.stdout);
  assert.match(prepare.stdout.split("\n")[0]!, `pid ${holder} (sleep) holds /dev/snd/controlC0: close it (or end it) and the unbind finishes`);
  const helper = /vmhook left its helper \(pid (\d+)\)/.exec(prepare.stdout)?.[1];
  await guest!.ok(`kill ${holder}; while [ -e /proc/${helper} ]; do sleep 0.2; done`, { timeoutMs: 60_000 });
  const recovered = await guest!.sh("vmhook recover");
  assert.is(recovered.code, 0, recovered.stdout);
  await guest!.ok(CARD_BACK);
  assert.fixture(await guest!.ok(SLOT_STATE), baseline!);
});

// The kernel's remove takes only that function; its rescan (pci_scan_slot) finds function 0 again and, as
// it is multifunction, goes on to the functions still there: the audio function stays on snd_hda_intel.
it("BAR 2 of the VGA function lost while on vfio-pci: bochs-drm refuses it, remove + rescan of function 0 brings it back into the slot's IOMMU group; the audio function, home first, stays on snd_hda_intel with its card", async ({ guest, baseline }) => {
  assert.is((await guest!.sh(hook(domainXml(), "prepare begin"))).code, 0);
  assert.match(await guest!.ok(LOSE_BAR2), "bar2: 00000000");
  const release = await guest!.sh(hook(domainXml(), "release end"));
  assert.equal(release, { code: 0, stdout: "" });
  await guest!.ok(CARD_BACK);
  // Both functions on their drivers, in one group, the card's nodes, the console and fb0: as booted.
  assert.fixture(await guest!.ok(SLOT_STATE), baseline!);
  assert.not.match(await guest!.ok(BAR2), "00000000", "the kernel assigned BAR 2 again");
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, `vfio: ${AUDIO} return attempt 1/3 probe: bound to snd_hda_intel`);
  assert.match(log, `vfio: ${GPU}: removing it from the PCI bus and rescanning its bus 0000:00 (/sys/class/pci_bus/0000:00/rescan)`);
  assert.match(log, `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to bochs-drm`);
  const dmesg = await guest!.ok("dmesg");
  assert.match(dmesg, `pci ${GPU}: Removing from iommu group`);
  assert.not.match(dmesg, `pci ${AUDIO}: Removing`);
});

slot.run();
