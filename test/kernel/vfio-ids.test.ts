// vfio-pci's ids= on a real kernel: two identical GPUs (the std VGA at
// 0000:00:01.0 and a secondary-vga at 0000:00:02.0, both 1234:1111 on
// bochs-drm) and `options vfio-pci ids=1234:1111` in /etc/modprobe.d, read by
// the guest's modprobe. vfio-pci then claims every device of that id on a
// probe, and the kernel offers a device to the drivers in the order they
// registered. One boot; each scenario puts the guest back as booted.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { skipReason, type Guest } from "./guest.ts";
import { bootTwoGpus, domainXml, GPU, hook, RECOVER_LEFTOVERS, SECOND_GPU, TWO_GPU_STATE, writeDomain } from "./vfio-domain.ts";

const CONF = "/etc/modprobe.d/vfio.conf";

/** The VFIO modules that are loaded, users first (busybox's modprobe loads no softdep: vfio_iommu_type1 may be missing). */
const UNLOAD_VFIO = "for m in vfio_pci vfio_pci_core vfio_iommu_type1 vfio; do if [ -e /sys/module/$m ]; then rmmod $m; fi; done; true";

const ids = suite<{ guest?: Guest; booted?: string }>("vfio-pci ids= on a real kernel");
const skip = skipReason();
if (skip) console.log(`vfio-pci ids= kernel tests: skipped: ${skip}`);
const it = skip ? ids.skip : ids;

ids.before(async (context) => {
  if (skip) return;
  context.guest = await bootTwoGpus();
  context.booted = await context.guest.ok(TWO_GPU_STATE);
});
/** Each scenario starts from the guest as booted, whatever one before it left on failing. */
ids.before.each(async ({ guest }) => {
  if (!guest) return;
  await guest.ok(`${RECOVER_LEFTOVERS}
rm -f ${CONF}; mkdir -p /etc/modprobe.d; : > /var/log/vmhook.log
for d in ${GPU} ${SECOND_GPU}; do
  echo > /sys/bus/pci/devices/$d/driver_override
  [ -e /sys/bus/pci/drivers/vfio-pci/$d ] && echo $d > /sys/bus/pci/drivers/vfio-pci/unbind
  [ -e /sys/bus/pci/devices/$d/driver ] || echo $d > /sys/bus/pci/drivers/bochs-drm/bind
done
${UNLOAD_VFIO}`, { timeoutMs: 120_000 });
});
ids.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("the bench: both GPUs are 1234:1111 on bochs-drm", async ({ guest, booted }) => {
  assert.match(booted!, "driver: bochs-drm\n");
  assert.match(booted!, "second driver: bochs-drm\n");
  assert.is(await guest!.ok(`cat /sys/bus/pci/devices/${GPU}/vendor /sys/bus/pci/devices/${GPU}/device /sys/bus/pci/devices/${SECOND_GPU}/vendor /sys/bus/pci/devices/${SECOND_GPU}/device`), "0x1234\n0x1111\n0x1234\n0x1111\n");
});

it("the host leaves the second GPU without a driver: vmhook's load of vfio-pci (ids= empty) does not take it, and release unloads vfio-pci; the guest as before", async ({ guest }) => {
  await guest!.ok(`echo 'options vfio-pci ids=1234:1111' > ${CONF}; echo ${SECOND_GPU} > /sys/bus/pci/drivers/bochs-drm/unbind`);
  // The bench: the guest's modprobe applies the option (vfio-pci, loaded by hand, takes the second GPU).
  assert.match(await guest!.ok(`modprobe vfio-pci; basename "$(readlink /sys/bus/pci/devices/${SECOND_GPU}/driver)"; echo ${SECOND_GPU} > /sys/bus/pci/drivers/vfio-pci/unbind; ${UNLOAD_VFIO}`), "vfio-pci\n");
  const before = await guest!.ok(TWO_GPU_STATE);
  assert.match(before, "second driver: \n");

  const prepare = await guest!.sh(hook(domainXml(), "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest!.ok(TWO_GPU_STATE);
  assert.match(during, "driver: vfio-pci\n");
  assert.match(during, "second driver: \n", "the second GPU is not taken by vfio-pci's ids=");

  assert.equal(await guest!.sh(hook(domainXml(), "release end")), { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(TWO_GPU_STATE), before);
});

it("vfio-pci loaded by the host with ids=1234:1111 before bochs-drm registered again: the second GPU goes back to bochs-drm (driver_override), not to vfio-pci; the guest as before", async ({ guest }) => {
  // vfio-pci registers first and bochs after it (as after a release that loaded the GPU's module again): a plain probe offers the GPU to vfio-pci first.
  await guest!.ok(`echo 'options vfio-pci ids=1234:1111' > ${CONF}; modprobe vfio-pci && rmmod bochs && modprobe bochs`);
  const probed = await guest!.ok(`echo ${SECOND_GPU} > /sys/bus/pci/drivers/bochs-drm/unbind; echo ${SECOND_GPU} > /sys/bus/pci/drivers_probe
basename "$(readlink /sys/bus/pci/devices/${SECOND_GPU}/driver)"
echo ${SECOND_GPU} > /sys/bus/pci/drivers/vfio-pci/unbind; echo ${SECOND_GPU} > /sys/bus/pci/drivers/bochs-drm/bind`);
  assert.is(probed, "vfio-pci\n", "the bench: a probe without driver_override gives the GPU to vfio-pci");
  const before = await guest!.ok(TWO_GPU_STATE);
  assert.match(before, "second driver: bochs-drm\n");

  const xml = domainXml("", "0x02");
  assert.equal(await guest!.sh(hook(xml, "prepare begin")), { code: 0, stdout: "" });
  assert.match(await guest!.ok(TWO_GPU_STATE), "second driver: vfio-pci\n");
  const release = await guest!.sh(hook(xml, "release end"));
  assert.equal(release, { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(TWO_GPU_STATE), before);
  assert.match(await guest!.ok("cat /var/log/vmhook.log"), `vfio: ${SECOND_GPU} return attempt 1/3 probe: bound to bochs-drm`);
});

it("a GPU waiting for its module (another VM keeps bochs unloaded) has driver_override naming bochs-drm: a probe meanwhile does not give it to vfio-pci's ids=, and the last release brings it home; the guest as before", async ({ guest }) => {
  await guest!.ok(`echo 'options vfio-pci ids=1234:1111' > ${CONF}; modprobe vfio-pci && rmmod bochs && modprobe bochs`);
  const before = await guest!.ok(TWO_GPU_STATE);
  // VM "other" (the second GPU) starts first; VM gpu-vm (the first) unloads bochs; "other" stops: its GPU waits for bochs.
  const other = domainXml("", "0x02").replace("<name>gpu-vm</name>", "<name>other</name>").replace(/<uuid>[^<]+<\/uuid>/, "<uuid>6b0e2a4c-6a4e-4c57-9a43-0d1a5b3c7e02</uuid>");
  const otherHook = (event: string) => `${writeDomain(other)}\n/etc/libvirt/hooks/qemu other ${event} - < /tmp/domain.xml`;
  const vm = domainXml('unload-modules="bochs"');
  // bochs is no GPU driver the default host policy lets metadata unload.
  await guest!.ok(`mkdir -p /etc/vmhook && echo '{"vfio": {"modules": ["bochs"]}}' > /etc/vmhook/policy.json`);
  try {
    assert.equal(await guest!.sh(otherHook("prepare begin")), { code: 0, stdout: "" });
    assert.equal(await guest!.sh(hook(vm, "prepare begin")), { code: 0, stdout: "" });
    assert.equal(await guest!.sh(otherHook("release end")), { code: 0, stdout: "" });
    const waiting = await guest!.ok(TWO_GPU_STATE);
    assert.match(waiting, "second driver: \n");
    assert.match(waiting, "second override: bochs-drm\n");

    await guest!.ok(`echo ${SECOND_GPU} > /sys/bus/pci/drivers_probe; true`);
    assert.match(await guest!.ok(TWO_GPU_STATE), "second driver: \n", "vfio-pci's ids= match it, but driver_override names bochs-drm");

    assert.equal(await guest!.sh(hook(vm, "release end")), { code: 0, stdout: "" });
    assert.fixture(await guest!.ok(TWO_GPU_STATE), before);
  } finally {
    await guest!.ok("rm -f /etc/vmhook/policy.json");
  }
});

ids.run();
