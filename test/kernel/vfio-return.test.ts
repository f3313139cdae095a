// The vfio return path on a real kernel: the guest's std VGA (bochs-drm) comes
// back from vfio-pci with the config space the kernel saved for it no longer
// matching the resources it assigned (BAR 2, the MMIO registers, reads 0), as
// a GPU can come back from a VM. bochs-drm's probe then really fails ("ID
// mismatch": it reads its ID register where the BAR no longer is); the std
// VGA has no reset method on q35, so vmhook skips the reset and removes and
// rescans the device, and the kernel assigns its BARs afresh. One boot.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { BAR2, domainXml, GPU, hook, LOSE_BAR2, releaseWithDriverUnloaded, STATE } from "./vfio-domain.ts";

const back = suite<{ guest?: Guest; baseline?: string }>("vfio return path on a real kernel");
const skip = skipReason();
if (skip) console.log(`vfio return path kernel tests: skipped: ${skip}`);
const it = skip ? back.skip : back;

const DEVICE = `/sys/bus/pci/devices/${GPU}`;

back.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ smp: 2, memoryMiB: 1024 });
  context.baseline = await context.guest.ok(STATE);
});
back.after(async ({ guest }) => {
  await guest?.shutdown();
});

/** Empties the kernel log and vmhook's log, so a scenario reads only its own lines. */
const freshLogs = (guest: Guest) => guest.ok("dmesg -c > /dev/null; : > /var/log/vmhook.log");

it("the std VGA has no reset method on q35: no reset_method or reset file", async ({ guest }) => {
  assert.is(await guest!.ok(`[ -e ${DEVICE}/reset_method ] || [ -e ${DEVICE}/reset ] || echo none`), "none\n");
});

it("a plain handover and back: bochs-drm takes the GPU at the first probe; no reset, no rescan", async ({ guest, baseline }) => {
  await freshLogs(guest!);
  assert.is((await guest!.sh(hook(domainXml(), "prepare begin"))).code, 0);
  const release = await guest!.sh(hook(domainXml(), "release end"));
  assert.equal(release, { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(STATE), baseline!);
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), `vfio: ${GPU} return attempt 1/3 probe: bound to bochs-drm`);
  assert.not.match(await guest!.ok("dmesg"), "Removing from iommu group");
});

it("BAR 2 lost while on vfio-pci: bochs-drm refuses (ID mismatch), the reset is skipped, remove + rescan brings GPU, card, fb and console back", async ({ guest, baseline }) => {
  await freshLogs(guest!);
  assert.is((await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"))).code, 0);
  assert.match(await guest!.ok(LOSE_BAR2), "bar2: 00000000");

  const release = await guest!.sh(hook(domainXml('single-gpu="yes"'), "release end"));
  assert.is(release.code, 0, release.stdout);
  // Back as before: bochs-drm, /dev/dri/card0, /dev/fb0, vtcon0 on the frame buffer, no journal.
  assert.fixture(await guest!.ok(STATE), baseline!);
  assert.not.match(await guest!.ok(BAR2), "00000000", "the kernel assigned BAR 2 again");

  const dmesg = await guest!.ok("dmesg");
  assert.match(dmesg, "bochs_pci_probe [bochs]] *ERROR* ID mismatch");
  assert.match(dmesg, `pci ${GPU}: Removing from iommu group`);
  assert.match(dmesg, /pci 0000:00:01\.0: BAR 2 \[mem 0x[0-9a-f]+-0x[0-9a-f]+\]: assigned/);
  assert.match(dmesg, /\[drm\] Initialized bochs-drm .* for 0000:00:01\.0/);

  const log = await guest!.ok("cat /var/log/vmhook.log");
  const refused = log.split("\n").find((line) => line.includes(`vfio: ${GPU} return attempt 1/3 probe: bochs-drm refused it: `));
  // The kernel's errno for the probe that failed, as the bounded writer reports it.
  assert.match(refused ?? log, /refused it: No such device$/, refused ?? log);
  assert.match(log, `vfio: ${GPU} return attempt 2/3 reset: skipped: the kernel offers no reset method for it (no reset_method)`);
  // The std VGA sits on the root bus: that bus's rescan, not the whole tree's.
  assert.match(log, `vfio: ${GPU}: removing it from the PCI bus and rescanning its bus 0000:00 (/sys/class/pci_bus/0000:00/rescan)`);
  assert.match(log, `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to bochs-drm`);
  assert.match(log, `vfio: ${GPU} is back on bochs-drm after 3 attempts`);
  assert.match(log, "vfio: undo unbind console vtcon0");
  assert.match(log, `vfio: ${GPU} is back on bochs-drm with card, fb`);
  assert.match(log, `vfio: undo at release, check that the display is back: ${GPU} on bochs-drm with card, fb: done`);
  assert.match(await guest!.ok("vmhook status"), "no VM holds anything");
});

it("BAR 2 lost and bochs unloaded while the VM ran: release keeps the change; after modprobe bochs still refuses the GPU; vmhook recover brings it back through remove + rescan", async ({ guest, baseline }) => {
  await freshLogs(guest!);
  assert.is((await guest!.sh(hook(domainXml(), "prepare begin"))).code, 0);
  assert.match(await guest!.ok(LOSE_BAR2), "bar2: 00000000");
  await releaseWithDriverUnloaded(guest!);
  assert.match(await guest!.ok(`echo "driver: $(readlink ${DEVICE}/driver)"; dmesg | grep -c 'ID mismatch'`), "driver: \n1\n", "bochs loaded again, and really refused the GPU");
  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 0, recover.stdout);
  // vmhook recover says what it did, as the log does.
  assert.match(recover.stdout, `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to bochs-drm`);
  assert.match(recover.stdout, `undo bind ${GPU} to vfio-pci (from bochs-drm): done`);
  assert.match(recover.stdout, `vfio: ${GPU} is back on bochs-drm with card, fb`);
  assert.fixture(await guest!.ok(STATE), baseline!);
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), `vfio: ${GPU} return attempt 3/3 remove + rescan: bound to bochs-drm`);
});

back.run();
