// The vfio plugin on a real kernel: the guest's std VGA (0000:00:01.0, bochs-drm,
// fbcon on vtcon0) goes to vfio-pci and back, driven by the compiled hook as
// libvirt would run it. One boot; every scenario must leave the guest as it was.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { domainXml, GPU, hook, releaseWithDriverUnloaded, STATE, UUID, writeDomain } from "./vfio-domain.ts";

const vfio = suite<{ guest?: Guest; baseline?: string; group?: string }>("vfio on a real kernel");
const skip = skipReason();
if (skip) console.log(`vfio kernel tests: skipped: ${skip}`);
const it = skip ? vfio.skip : vfio;

vfio.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({ smp: 2, memoryMiB: 1024 });
  context.baseline = await context.guest.ok(STATE);
  context.group = (await context.guest.ok(`basename $(readlink /sys/bus/pci/devices/${GPU}/iommu_group)`)).trim();
});
vfio.after(async ({ guest }) => {
  await guest?.shutdown();
});

it("vmhook plan lists the single-GPU steps and changes nothing", async ({ guest, baseline }) => {
  assert.match(baseline!, "driver: bochs-drm");
  assert.match(baseline!, "vtcon0: (M) frame buffer device bind=1");
  const plan = await guest!.ok(`${writeDomain(domainXml())}\nvmhook plan /tmp/domain.xml`);
  assert.match(plan, "unbind console vtcon0");
  assert.match(plan, `bind ${GPU} to vfio-pci (from bochs-drm)`);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

it("single-GPU prepare moves the GPU to vfio-pci and unbinds the console; release brings all of it back", async ({ guest, baseline, group }) => {
  const prepare = await guest!.sh(hook(domainXml('single-gpu="auto"'), "prepare begin"));
  assert.equal(prepare, { code: 0, stdout: "" });
  const during = await guest!.ok(STATE);
  assert.match(during, "driver: vfio-pci");
  assert.match(during, `vfio: ${group} vfio`);
  assert.not.match(during, /frame buffer device bind=1/);
  assert.match(during, "fb: \n");
  assert.match(during, `journals: ${UUID}.json`);

  const release = await guest!.sh(hook(domainXml('single-gpu="auto"'), "release end"));
  assert.equal(release, { code: 0, stdout: "" });
  assert.fixture(await guest!.ok(STATE), baseline!);
});

// vfio-pci forbids runtime PM as it lets a device go (vfio_pci_core_unregister_device); bochs-drm's probe leaves it alone.
it("a GPU with runtime PM allowed (power/control auto) comes back with auto, not the on vfio-pci's release leaves", async ({ guest, baseline }) => {
  assert.match(baseline!, "power: on");
  await guest!.ok(`echo auto > /sys/bus/pci/devices/${GPU}/power/control`);
  try {
    const before = await guest!.ok(STATE);
    assert.match(before, "power: auto");
    assert.is((await guest!.sh(hook(domainXml(), "prepare begin"))).code, 0);
    assert.equal(await guest!.sh(hook(domainXml(), "release end")), { code: 0, stdout: "" });
    assert.fixture(await guest!.ok(STATE), before);
    assert.match(await guest!.ok("cat /var/log/vmhook.log"), `vfio: ${GPU}: power/control back to auto, as before the VM (runtime PM allowed)`);
  } finally {
    await guest!.ok(`echo on > /sys/bus/pci/devices/${GPU}/power/control`);
  }
  assert.fixture(await guest!.ok(STATE), baseline!);
});

/**
 * The hook's prepare with `program` replaced, first on vmhook's PATH, by a
 * script that runs `failure` (shell) when its arguments match the case
 * pattern `match`, and the real program otherwise.
 */
async function prepareWithFailing(guest: Guest, program: string, match: string, failure: string): Promise<{ code: number; stdout: string }> {
  const real = (await guest.ok(`command -v ${program}`)).trim();
  await guest.ok(`mkdir -p /usr/local/sbin && printf '#!/bin/sh\\ncase "$*" in ${match}) ${failure};; esac\\nexec ${real} "$@"\\n' > /usr/local/sbin/${program} && chmod 755 /usr/local/sbin/${program}`);
  try {
    return await guest.sh(hook(domainXml(), "prepare begin"));
  } finally {
    await guest.ok(`rm -f /usr/local/sbin/${program}`);
  }
}

/** Runs `work` with this host policy in the guest's /etc/vmhook/policy.json, removed afterwards. */
async function withPolicy<T>(guest: Guest, policy: object, work: () => Promise<T>): Promise<T> {
  await guest.ok(`mkdir -p /etc/vmhook && echo '${JSON.stringify(policy)}' > /etc/vmhook/policy.json`);
  try {
    return await work();
  } finally {
    await guest.ok("rm -f /etc/vmhook/policy.json");
  }
}

it("a second configured device that does not exist fails prepare before the GPU is touched", async ({ guest, baseline }) => {
  // A device that is not the domain's needs the host policy's consent first.
  const result = await withPolicy(guest!, { vfio: { devices: ["0000:00:09.0"] } }, () => guest!.sh(hook(domainXml(`devices="${GPU},0000:00:09.0"`), "prepare begin")));
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, "PCI device 0000:00:09.0 does not exist on this host");
  assert.fixture(await guest!.ok(STATE), baseline!);
  assert.not.match(await guest!.ok("cat /var/log/vmhook.log | tail -5"), "bind 0000:00:01.0");
});

it("a module the host policy does not allow is refused before anything changes; allowed but not in the kernel's module tree, it is refused before anything changes too", async ({ guest, baseline }) => {
  const xml = domainXml('load-modules="vmhook_no_such_module"');
  const refused = await guest!.sh(hook(xml, "prepare begin"));
  assert.is(refused.code, 1);
  assert.match(refused.stdout.split("\n")[0]!, 'load-modules: vmhook_no_such_module is not a GPU, VFIO or passthrough helper module the host policy allows; to allow it, add "vmhook_no_such_module" to "vfio.modules" in /etc/vmhook/policy.json');
  assert.fixture(await guest!.ok(STATE), baseline!);

  await guest!.ok(": > /var/log/vmhook.log");
  const result = await withPolicy(guest!, { vfio: { modules: ["vmhook_no_such_module"] } }, () => guest!.sh(hook(xml, "prepare begin")));
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, "vfio: module vmhook_no_such_module is not in this kernel's modules");
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.not.match(log, `vfio: bind ${GPU} to vfio-pci`);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

it("a kernel whose modules lack vfio_iommu_type1 (6.1 has no iommufd): prepare refuses before the console or the GPU is touched, as QEMU could not use the device", async ({ guest, baseline }) => {
  const dep = "/lib/modules/$(uname -r)/modules.dep";
  assert.not.match(baseline!, "vfio_iommu_type1");
  await guest!.ok(`cp ${dep} /tmp/modules.dep.orig && sed -i '/vfio_iommu_type1/d' ${dep}`);
  try {
    const result = await guest!.sh(hook(domainXml('single-gpu="yes"'), "prepare begin"));
    assert.is(result.code, 1);
    assert.match(result.stdout.split("\n")[0]!, /^vmhook: vfio: no VFIO IOMMU backend for kernel 6\.1\.\S+: vfio_iommu_type1 \(and iommufd\) is neither loaded nor in this kernel's modules/);
  } finally {
    await guest!.ok(`cp /tmp/modules.dep.orig ${dep}`);
  }
  assert.fixture(await guest!.ok(STATE), baseline!);
});

// The guest's other console is the dummy one, modular like fbcon: the kernel's
// vtconsole bind is then a no-op, and only a framebuffer brings fbcon back.
// Here the GPU never left bochs-drm, so no framebuffer registers again.
it("prepare failing after the console let go but before the GPU moved: the rollback brings the console back", async ({ guest, baseline }) => {
  assert.match(baseline!, "(M) dummy device");
  assert.not.match(baseline!, " vfio_pci ");
  // The GPU's unbind fails, so it never leaves bochs-drm.
  const result = await prepareWithFailing(guest!, "dd", `*${GPU}/driver/unbind*`, 'echo "dd: error writing : Device or resource busy" >&2; exit 1');
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, "Device or resource busy");
  assert.match(result.stdout, "the host was left as it was");
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, /vfio: unbind console vtcon0 \(.*frame buffer device\): done/);
  assert.match(log, "console vtcon0 bound again by mapping tty1 to /dev/fb0");
  assert.fixture(await guest!.ok(STATE), baseline!);
});

it("vfio-pci fails to load in the background after the GPU let go: the start fails naming modprobe, and the rollback gives the GPU and the console back", async ({ guest, baseline }) => {
  // It fails a second late: the console and the GPU have let go by then.
  await guest!.ok(": > /var/log/vmhook.log");
  const result = await prepareWithFailing(guest!, "modprobe", "*vfio*", 'sleep 1; echo "modprobe: refused by the test" >&2; exit 1');
  assert.is(result.code, 1);
  assert.match(result.stdout.split("\n")[0]!, "modprobe vfio-pci failed: modprobe: refused by the test");
  assert.match(result.stdout, "the host was left as it was");
  const log = await guest!.ok("cat /var/log/vmhook.log");
  assert.match(log, "vfio: load module vfio-pci: started in the background");
  assert.match(log, /vfio: unbind console vtcon0 \(.*frame buffer device\): done/);
  // The GPU's step had unbound it and was waiting for the load when the load failed.
  assert.match(log, `vfio: bind ${GPU} to vfio-pci (from bochs-drm): modprobe vfio-pci failed`);
  assert.match(log, `vfio: undo bind ${GPU} to vfio-pci (from bochs-drm): done`);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

it("the hook SIGKILLed in the middle of prepare, then vmhook recover: the host is as before", async ({ guest, baseline }) => {
  const killed = await guest!.ok(`${hook(domainXml(), "prepare begin", true)}
pid=$!
end=$(($(date +%s) + 30))
until grep -qs 'bind ${GPU}' /run/vmhook/${UUID}.json || [ $(date +%s) -gt $end ]; do :; done
kill -9 $pid; wait $pid; echo "exit: $?"
echo "journal: $(ls /run/vmhook | grep json)"`);
  assert.match(killed, "exit: 137");
  assert.match(killed, `journal: ${UUID}.json`);
  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 0, recover.stdout);
  assert.match(recover.stdout, `undo bind ${GPU} to vfio-pci (from bochs-drm): done`);
  assert.match(recover.stdout, /gpu-vm: \d+ change\(s\) undone/);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

it("the GPU's driver unloaded while the VM ran: release keeps the change; modprobe, then vmhook recover, brings all back", async ({ guest, baseline }) => {
  assert.is((await guest!.sh(hook(domainXml(), "prepare begin"))).code, 0);
  await releaseWithDriverUnloaded(guest!);
  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 0, recover.stdout);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

it("a process holding /dev/dri/card0 makes prepare refuse, naming it", async ({ guest, baseline }) => {
  const result = await guest!.sh(`sleep 60 < /dev/dri/card0 & holder=$!
${hook(domainXml('single-gpu="yes"'), "prepare begin")}
code=$?; echo "holder: $holder"; kill $holder; exit $code`);
  assert.is(result.code, 1);
  const holder = /holder: (\d+)/.exec(result.stdout)![1];
  assert.match(result.stdout.split("\n")[0]!, `the GPU is in use: pid ${holder} (sleep) holds /dev/dri/card0`);
  assert.fixture(await guest!.ok(STATE), baseline!);
});

vfio.run();
