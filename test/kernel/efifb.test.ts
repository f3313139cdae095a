// Single-GPU handover when the firmware framebuffer still drives the GPU: the
// guest boots through OVMF and bochs-drm is not loaded, so efifb keeps the std
// VGA (/dev/fb0, fbcon on vtcon1) as on a host whose GPU driver is not up yet
// or not installed. Prepare must let go of the console and efifb before the
// GPU moves, and release must say what cannot come back (see below).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { domainXml, hook, STATE, UUID } from "./vfio-domain.ts";

const efifb = suite<{ guest?: Guest; baseline?: string }>("efifb on a real kernel");
const skip = skipReason({ desktop: true });
if (skip) console.log(`efifb kernel tests: skipped: ${skip}`);
const it = skip ? efifb.skip : efifb;

const FIRMWARE_STATE = `${STATE}
echo "efi-framebuffer: $(ls /sys/bus/platform/drivers/efi-framebuffer | grep '^efi-framebuffer\\.' | tr '\\n' ' ')"
echo "fb0: $(cat /sys/class/graphics/fb0/name 2>/dev/null)"
`;

efifb.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ firmware: "ovmf", gpuDriver: false });
  context.baseline = await context.guest.ok(FIRMWARE_STATE);
});
efifb.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("OVMF's framebuffer drives the GPU: efifb bound, fbcon on it, no PCI driver", async ({ baseline }) => {
  assert.match(baseline!, "driver: \n");
  assert.match(baseline!, "efi-framebuffer: efi-framebuffer.0 \n");
  assert.match(baseline!, "fb0: EFI VGA");
  assert.match(baseline!, /vtcon1: \(M\) frame buffer device bind=1/);
});

// A program holding efifb's /dev/fb0 keeps the GPU's BAR 0 busy after efifb's unbind, so QEMU
// could not use it (measured in efifb-holder.test.ts): vmhook refuses it before changing anything.
// single-gpu="no": only the firmware framebuffer's /dev/fb0 is watched (it goes with the boot VGA device), not every framebuffer.
for (const singleGpu of ["yes", "no"]) {
  it(`single-gpu="${singleGpu}", a program holding efifb's /dev/fb0: prepare refuses, naming it, before anything changes`, async ({ guest, baseline }) => {
    const prepare = await guest!.sh(`sleep 600 < /dev/fb0 & holder=$!
${hook(domainXml(`single-gpu="${singleGpu}"`), "prepare begin")}
code=$?; echo "holder: $holder"; kill $holder; wait $holder 2>/dev/null; exit $code`);
    assert.is(prepare.code, 1, prepare.stdout);
    const holder = /holder: (\d+)/.exec(prepare.stdout)![1];
    assert.match(prepare.stdout, `vfio: the GPU is in use: pid ${holder} (sleep) holds /dev/fb0`);
    assert.fixture(await guest!.ok(FIRMWARE_STATE), baseline!);
  });
}

it("single GPU: console and efifb let go before the GPU goes to vfio-pci", async ({ guest }) => {
  const prepare = await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" }, prepare.stdout);
  const during = await guest!.ok(FIRMWARE_STATE);
  assert.match(during, "driver: vfio-pci");
  assert.match(during, "efi-framebuffer: \n");
  assert.match(during, "fb: \n");
  assert.not.match(during, /frame buffer device bind=1/);
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, "vfio: unbind efi-framebuffer.0 from efi-framebuffer: done");
  assert.ok(log.indexOf("unbind efi-framebuffer.0") < log.indexOf("bind 0000:00:01.0 to vfio-pci"), "efifb lets go before the GPU moves");
  assert.match(during, `journals: ${UUID}.json`);
});

// vfio-pci removes the firmware framebuffer's platform device when it takes the GPU (kernel 6.1:
// aperture removal), so efifb cannot come back: release says so and keeps the console's record.
it("release: the GPU leaves vfio-pci, efifb is gone for good, the console's record stays and names the way back", async ({ guest }) => {
  const release = await guest!.sh(hook(domainXml('single-gpu="yes"'), "release end"));
  assert.is(release.code, 0, "release never fails libvirt");
  assert.match(release.stdout, "no framebuffer console is back (was vtcon1)");
  assert.match(release.stdout, "load the GPU's driver (modprobe), then run vmhook recover");
  const after = await guest!.ok(FIRMWARE_STATE);
  assert.match(after, "driver: \n");
  assert.match(after, "override: (null)");
  assert.not.match(after, "vfio_pci");
  assert.match(after, `journals: ${UUID}.json`);
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), "efi-framebuffer.0 is gone (the GPU's driver replaced it); nothing to rebind");
});

it("with the GPU's driver loaded, vmhook recover brings the console back on its framebuffer and clears the journal", async ({ guest }) => {
  await guest!.ok("modprobe bochs");
  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 0, recover.stdout);
  const after = await guest!.ok(FIRMWARE_STATE);
  assert.match(after, "driver: bochs-drm");
  assert.match(after, /vtcon1: \(M\) frame buffer device bind=1/);
  assert.match(after, "journals: \n");
});

efifb.run();
