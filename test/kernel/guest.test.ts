// The bench itself: the guest boots with the facts other kernel tests rely on,
// the command channel carries output and exit codes faithfully, and a command
// that does not answer fails with what the guest was doing.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";

const bench = suite<{ guest?: Guest }>("kernel bench");
const skip = skipReason();
if (skip) console.log(`kernel bench: skipped: ${skip}`);

bench.before(async (context) => {
  if (!skip) context.guest = await bootGuest({ smp: 2, memoryMiB: 1024 });
});
bench.after(async (context) => {
  await context.guest?.shutdown();
});

const it = skip ? bench.skip : bench;

it("boots Debian's kernel with the IOMMU on and the std VGA on bochs-drm with fbcon", async ({ guest }) => {
  assert.ok(guest!.bootMs < 60_000, `boot took ${guest!.bootMs} ms`);
  assert.match(await guest!.ok("uname -r"), guest!.kernelVersion);
  assert.is((await guest!.ok("readlink /sys/bus/pci/devices/0000:00:01.0/driver")).trim().split("/").pop(), "bochs-drm");
  assert.is((await guest!.ok("cat /sys/bus/pci/devices/0000:00:01.0/class")).trim(), "0x030000");
  assert.is((await guest!.ok("ls /sys/kernel/iommu_groups/$(basename $(readlink /sys/bus/pci/devices/0000:00:01.0/iommu_group))/devices")).trim(), "0000:00:01.0");
  assert.match(await guest!.ok("cat /sys/class/vtconsole/vtcon0/name /sys/class/vtconsole/vtcon0/bind"), /frame buffer device\n1\n/);
  assert.ok((await guest!.sh("test -c /dev/fb0")).code === 0, "/dev/fb0 exists");
});

it("carries exit codes, stdout and stderr, binary-safe, one command after another", async ({ guest }) => {
  const result = await guest!.sh("printf 'a\\tb\\n'; echo err >&2; printf '@@END 1 0\\n'; exit 7");
  assert.equal(result, { code: 7, stdout: "a\tb\nerr\n@@END 1 0\n" });
  const big = await guest!.ok("seq 1 20000 | wc -l; seq 1 3000");
  assert.is(big.split("\n").length, 3002);
});

it("runs the compiled vmhook, as the CLI and as the libvirt hook", async ({ guest }) => {
  assert.match(await guest!.ok("vmhook --help"), "vmhook COMMAND");
  // A domain without vmhook metadata: the hook's fast path, exit 0 and no output.
  const hook = await guest!.sh("echo '<domain><name>x</name></domain>' | /etc/libvirt/hooks/qemu x prepare begin -");
  assert.equal(hook, { code: 0, stdout: "" });
});

it("has vfio-pci available to modprobe, not loaded", async ({ guest }) => {
  assert.not.match(await guest!.ok("lsmod"), /vfio_pci/);
  await guest!.ok("modprobe vfio-pci && test -d /sys/bus/pci/drivers/vfio-pci && rmmod vfio_pci");
});

// Last: a timed-out command ends the guest.
it("a command that does not answer: the error carries the guest's processes and the command's output so far, from the diagnostics port", async ({ guest }) => {
  const error = await guest!.sh("echo started; sleep 300", { timeoutMs: 3000 }).then(
    () => undefined,
    (caught: Error) => caught.message,
  );
  assert.ok(error, "the command timed out");
  const [head, report = ""] = error!.split("--- the guest meanwhile (diagnostics port) ---\n");
  assert.match(head!, "timed out after 3 s running in the guest: echo started; sleep 300");
  assert.match(report, /^ *\d+ +\d+ +S +sleep 300$/m);
  assert.match(report, "-- the command's output so far:\nstarted\n");
  assert.not.match(report, /kworker/, "kernel threads are left out");
  // The harness stopped that guest: it is in an unknown state.
  assert.match(await guest!.sh("true").then(() => "answered", (caught: Error) => caught.message), /guest is dead|guest died/);
});

bench.run();
