// Two GPUs on a real kernel, as on a desktop with an iGPU for the host and a
// dGPU for the VM: the std VGA (0000:00:01.0, the boot VGA device, fb0, fbcon
// on it) and a secondary-vga (0000:00:02.0, class 0x0380, fb1, its own IOMMU
// group), both on bochs-drm. fbcon maps every console to fb0. One boot; every
// scenario must leave the guest as it was, and starts from it as booted.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { skipReason, type Guest } from "./guest.ts";
import { bootTwoGpus, domainXml, GPU, hook, RECOVER_LEFTOVERS, SECOND_GPU, TWO_GPU_STATE, UUID } from "./vfio-domain.ts";

const SECOND_SLOT = "0x02";

const twoGpus = suite<{ guest?: Guest; baseline?: string }>("two GPUs on a real kernel");
const skip = skipReason();
if (skip) console.log(`two-GPU kernel tests: skipped: ${skip}`);
const it = skip ? twoGpus.skip : twoGpus;

/** TWO_GPU_STATE, the frame buffers' devices and the display manager's mark. */
const DESKTOP_STATE = `${TWO_GPU_STATE}for fb in /sys/class/graphics/fb*; do echo "$(basename $fb): $(basename "$(readlink $fb/device)")"; done
echo "display manager: $(cat /tmp/display-manager 2>/dev/null)"
`;

// Without systemd the display manager is a command: it writes what it did, so a stop that should not happen shows.
const SETTINGS = JSON.stringify({
  plugins: { vfio: { displayManagerCommand: { stop: ["/bin/sh", "-c", "echo stopped > /tmp/display-manager"], start: ["/bin/sh", "-c", "echo running > /tmp/display-manager"], processes: [] } } },
});

/** The settings, the display manager running and an empty log, as at boot. */
const RESET = `mkdir -p /etc/vmhook && echo '${SETTINGS}' > /etc/vmhook/vmhook.json && echo running > /tmp/display-manager && : > /var/log/vmhook.log`;

twoGpus.before(async (context) => {
  if (skip) return;
  context.guest = await bootTwoGpus();
  await context.guest.ok(RESET);
  context.baseline = await context.guest.ok(DESKTOP_STATE);
});
/**
 * Each scenario starts from the guest as booted, whatever one before it left
 * on failing: a journal left behind is recovered (the GPUs back on bochs-drm,
 * vfio-pci unloaded, the display manager started), the settings, the display
 * manager's mark and the log are as at boot. So one failure is reported once,
 * not again by every scenario after it.
 */
twoGpus.before.each(async ({ guest }) => {
  if (!guest) return;
  await guest.ok(`${RECOVER_LEFTOVERS}
${RESET}`, { timeoutMs: 120_000 });
});
twoGpus.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("the bench: the boot GPU on bochs-drm with fb0 and fbcon, the second on bochs-drm with fb1, each in its own IOMMU group", async ({ guest, baseline }) => {
  assert.match(baseline!, "driver: bochs-drm");
  assert.match(baseline!, "second driver: bochs-drm");
  assert.match(baseline!, `fb0: ${GPU}`);
  assert.match(baseline!, `fb1: ${SECOND_GPU}`);
  assert.match(baseline!, "vtcon0: (M) frame buffer device bind=1");
  assert.match(await guest!.ok(`cat /sys/bus/pci/devices/${SECOND_GPU}/class /sys/bus/pci/devices/${GPU}/boot_vga`), "0x038000\n1\n");
  const groups = await guest!.ok(`basename $(readlink /sys/bus/pci/devices/${GPU}/iommu_group); basename $(readlink /sys/bus/pci/devices/${SECOND_GPU}/iommu_group)`);
  const [first, second] = groups.trim().split("\n");
  assert.is.not(first, second);
});

it("the second GPU to the VM, auto: no single-GPU steps; the console and fb0 stay, the display manager runs; release gives it back to bochs-drm", async ({ guest, baseline }) => {
  const xml = domainXml("", SECOND_SLOT);
  const prepare = await guest!.sh(hook(xml, "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest!.ok(DESKTOP_STATE);
  assert.match(during, "second driver: vfio-pci");
  assert.match(during, "driver: bochs-drm\n");
  assert.match(during, "vtcon0: (M) frame buffer device bind=1");
  assert.match(during, `fb0: ${GPU}`);
  assert.not.match(during, "fb1:");
  assert.match(during, "display manager: running");
  assert.match(during, `journals: ${UUID}.json`);
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, `single-GPU mode off`);
  assert.not.match(log, "unbind console");

  assert.equal(await guest!.sh(hook(xml, "release end")), { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

// Kernel 6.1's fbcon moves consoles only to a framebuffer that some console already shows on
// (fbcon_fb_unbind): with every console on fb0, it lets go of them all when fb0 goes, and takes
// them back when the boot GPU's framebuffer registers again as the primary one.
it("the boot GPU to the VM, auto, while the second keeps a display: no single-GPU steps; the kernel puts the consoles on the dummy console, and back on fb0 after", async ({ guest, baseline }) => {
  const prepare = await guest!.sh(hook(domainXml(), "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest!.ok(DESKTOP_STATE);
  assert.match(during, "driver: vfio-pci");
  assert.match(during, "second driver: bochs-drm");
  assert.match(during, `fb1: ${SECOND_GPU}`);
  assert.match(during, "vtcon1: (M) dummy device bind=1");
  assert.match(during, "display manager: running");
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, `single-GPU mode off`);
  assert.not.match(log, "unbind console");

  assert.equal(await guest!.sh(hook(domainXml(), "release end")), { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

it('single-gpu="yes" for the second GPU while fbcon shows on the first: the display manager stops, the console on fb0 and a program on fb0 stay', async ({ guest, baseline }) => {
  const xml = domainXml('single-gpu="yes"', SECOND_SLOT);
  // A program on the kept GPU's framebuffer (fbterm, kmscon) does not hold the VM's GPU.
  const prepare = await guest!.sh(`sleep 60 < /dev/fb0 & holder=$!
${hook(xml, "prepare begin")}
code=$?; kill $holder; wait $holder 2>/dev/null; exit $code`);
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest!.ok(DESKTOP_STATE);
  assert.match(during, "second driver: vfio-pci");
  assert.match(during, "display manager: stopped");
  assert.match(during, "vtcon0: (M) frame buffer device bind=1");
  assert.match(during, `fb0: ${GPU}`);
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.not.match(log, "unbind console");
  assert.match(log, `vfio: console vtcon0 ((M) frame buffer device) stays: it shows on fb0 of ${GPU} (bochs-drm), which the host keeps`);

  assert.equal(await guest!.sh(hook(xml, "release end")), { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

it('single-gpu="yes" for the boot GPU, which fbcon shows on: the console lets go before the GPU moves, and all comes back', async ({ guest, baseline }) => {
  const xml = domainXml('single-gpu="yes"');
  const prepare = await guest!.sh(hook(xml, "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest!.ok(DESKTOP_STATE);
  assert.match(during, "driver: vfio-pci");
  assert.match(during, "second driver: bochs-drm");
  assert.match(during, "display manager: stopped");
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), /vfio: unbind console vtcon0 \(.*frame buffer device\): done/);

  assert.equal(await guest!.sh(hook(xml, "release end")), { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(DESKTOP_STATE), baseline!);
});

twoGpus.run();
