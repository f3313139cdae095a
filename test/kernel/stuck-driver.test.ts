// A driver that never lets go, on a real kernel: QEMU's edu device on the
// test driver vmhook_stuck (test/kernel/stuck-module.ts), whose remove()
// sleeps uninterruptibly for up to remove_delay_ms, or until the test lets it
// go (parameter let_go): on a loaded machine no fixed delay tells "still
// blocked" from "done" reliably. vfio's unbind then blocks in
// the kernel: the hook must give up after bindTimeoutSeconds, leave its
// helper in D state, and write nothing to the device until it is gone.
// The same boot proves two guards with devices whose drivers really let go
// only on the host's terms: an e1000e NIC carrying the guest's default route
// (never handed over, lib/netdev.ts), and an ICH9 HD audio controller whose
// sound card a program keeps open (snd_card_free() waits for it: the error
// names the program). One boot; every scenario leaves the guest as it was.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bootGuest, skipReason, type Guest } from "./guest.ts";
import { buildStuckDriver } from "./stuck-module.ts";

const UUID = "2c7e9f10-4b3a-4d5e-8f60-71a2b3c4d5e6";
const DELAY = "/sys/module/vmhook_stuck/parameters/remove_delay_ms";
const LET_GO = "/sys/module/vmhook_stuck/parameters/let_go";

const bench = suite<{ guest?: Guest; edu?: string; baseline?: string; nic?: string; virtioNic?: string; audio?: string }>("a driver whose remove() blocks");
const skip = skipReason();
if (skip) console.log(`stuck-driver kernel tests: skipped: ${skip}`);
const it = skip ? bench.skip : bench;

/** The edu device's address: the first PCI device with vendor 1234, device 11e8. */
const find = (vendorDevice: string) => `for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = ${vendorDevice} ] && basename $d; done; true`;
const FIND_EDU = find("0x1234:0x11e8");
/** QEMU's e1000e (82574L) and ich9-intel-hda. */
const FIND_NIC = find("0x8086:0x10d3");
const FIND_AUDIO = find("0x8086:0x293e");
/** virtio-net-pci (transitional): its interface sits under virtio0, not in the PCI device's net/. */
const FIND_VIRTIO_NIC = find("0x1af4:0x1000");

bench.before(async (context) => {
  if (skip) return;
  context.guest = await bootGuest({
    // The codec's driver before the controller's: the controller probes its codec in the background, and the
    // kernel's request_module finds no /sbin/modprobe in this initramfs.
    extraModules: [buildStuckDriver(), "e1000e", "virtio_net", "snd_hda_codec_generic", "snd_hda_intel"],
    availableModules: ["dummy", "bridge"],
    qemuArgs: ["-device", "edu", "-netdev", "user,id=lan,restrict=on,ipv6=off", "-device", "e1000e,netdev=lan",
      "-netdev", "user,id=lan2,restrict=on,ipv6=off", "-device", "virtio-net-pci,netdev=lan2", "-device", "ich9-intel-hda", "-device", "hda-duplex"],
  });
  context.edu = (await context.guest.ok(FIND_EDU)).trim();
  context.nic = (await context.guest.ok(FIND_NIC)).trim();
  context.audio = (await context.guest.ok(FIND_AUDIO)).trim();
  context.virtioNic = (await context.guest.ok(FIND_VIRTIO_NIC)).trim();
  await context.guest.ok(`mkdir -p /etc/vmhook && echo '{"plugins": {"vfio": {"bindTimeoutSeconds": 2}}}' > /etc/vmhook/vmhook.json`);
  context.baseline = await context.guest.ok(state(context.edu));
});
/**
 * Each scenario starts from the guest as booted, whatever one before it left
 * on failing: a remove() still blocked is let go (and waited for), a journal
 * left behind is recovered, the parameters and settings are as at boot. So
 * one failure is reported once, not again by every scenario after it.
 */
bench.before.each(async ({ guest }) => {
  if (!guest) return;
  await guest.ok(`echo 1 > ${LET_GO}
for note in /run/vmhook/stuck/*.json; do
  [ -e "$note" ] || continue
  pid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p' "$note")
  while [ -n "$pid" ] && [ -e /proc/$pid ]; do sleep 0.2; done
done
echo 0 > ${LET_GO}; echo 0 > ${DELAY}
echo '{"plugins": {"vfio": {"bindTimeoutSeconds": 2}}}' > /etc/vmhook/vmhook.json
if ls /run/vmhook/*.json >/dev/null 2>&1; then vmhook recover > /dev/null 2>&1; fi; true`, { timeoutMs: 120_000 });
});
bench.after(async ({ guest }) => {
  await guest?.shutdown();
});

/** A domain whose one hostdev is the PCI device at `address`. */
function domainXml(address: string): string {
  const [, bus, slot, fn] = /^0000:(\w\w):(\w\w)\.(\d)$/.exec(address)!;
  return `<domain type='kvm'><name>edu-vm</name><uuid>${UUID}</uuid><memory unit='MiB'>256</memory>
<metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:vfio single-gpu="no"/></vmhook:hooks></metadata>
<devices><hostdev mode='subsystem' type='pci' managed='no'><source><address domain='0x0000' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/></source></hostdev></devices></domain>`;
}

/** Runs the hook as libvirt does for a domain with the device at `address`; prints how long it took (ms) as the last line. */
function hook(address: string, event: "prepare begin" | "release end"): string {
  return `cat > /tmp/domain.xml <<'XML'\n${domainXml(address)}\nXML
ms() { awk '{ print int($1 * 1000) }' /proc/uptime; }
start=$(ms); /etc/libvirt/hooks/qemu edu-vm ${event} - < /tmp/domain.xml; code=$?
echo "took $(($(ms) - start)) ms"; exit $code`;
}

/**
 * What vmhook may touch, as text. While remove() blocks, the kernel holds the
 * device's lock, and reading driver_override waits for it: `blocked` leaves it out.
 */
function state(edu: string, blocked = false): string {
  return `d=/sys/bus/pci/devices/${edu}
echo "edu driver: $(basename "$(readlink $d/driver)")"
${blocked ? "" : `echo "edu override: $(cat $d/driver_override)"`}
echo "gpu driver: $(basename "$(readlink /sys/bus/pci/devices/0000:00:01.0/driver)")"
echo "vfio: $(ls /dev/vfio 2>/dev/null | tr '\\n' ' ')"
echo "modules: $(cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' ')"
echo "state: $(ls /run/vmhook /run/vmhook/stuck 2>/dev/null | grep json | tr '\\n' ' ')"`;
}

it("the edu device is on vmhook_stuck in an IOMMU group of its own", async ({ guest, edu, baseline }) => {
  assert.match(edu!, /^0000:00:\w\w\.0$/);
  assert.match(baseline!, "edu driver: vmhook_stuck\n");
  const group = await guest!.ok(`ls /sys/bus/pci/devices/${edu}/iommu_group/devices`);
  assert.is(group, `${edu}\n`);
});

it("control: with remove() returning at once, the device goes to vfio-pci and comes back", async ({ guest, edu, baseline }) => {
  await guest!.ok(`echo 0 > ${DELAY}`);
  const prepare = await guest!.sh(hook(edu!, "prepare begin"));
  assert.is(prepare.code, 0, prepare.stdout);
  assert.match(await guest!.ok(state(edu!)), "edu driver: vfio-pci\n");
  const release = await guest!.sh(hook(edu!, "release end"));
  assert.is(release.code, 0, release.stdout);
  assert.fixture(await guest!.ok(state(edu!)), baseline!);
});

it("remove() blocks: prepare gives up after bindTimeoutSeconds, naming device, driver and file; the helper stays in D state", async ({ guest, edu, baseline }) => {
  await guest!.ok(`echo 600000 > ${DELAY}`);
  const prepare = await guest!.sh(hook(edu!, "prepare begin"));
  assert.is(prepare.code, 1, prepare.stdout);
  const lines = prepare.stdout.split("\n");
  const pid = /vmhook left its helper \(pid (\d+)\)/.exec(lines[0]!)?.[1];
  assert.is(lines[0], `vmhook: ${edu}: driver vmhook_stuck did not return within 2 s from writing "${edu}" to /sys/bus/pci/devices/${edu}/driver/unbind; vmhook left its helper (pid ${pid}) blocked in the kernel and gave up`);
  assert.match(prepare.stdout, "1 of 2 change(s) could not be undone: run vmhook recover edu-vm and see vmhook status");
  console.log(`  prepare with a blocked unbind: ${lines.find((line) => line.startsWith("took "))}`);

  // The hook returned while its helper is still blocked in remove().
  assert.match(await guest!.ok(`cut -d' ' -f3 /proc/${pid}/stat`), /^D\n$/);
  const during = await guest!.ok(state(edu!, true));
  assert.match(during, "edu driver: \n", "remove() runs: the kernel has taken the driver link away");
  const expected = baseline!.replace("edu driver: vmhook_stuck", "edu driver: ").replace("edu override: (null)\n", "").replace("state: ", `state: ${UUID}.json ${edu}.json `);
  assert.fixture(during, expected, "vfio-pci unloaded again, the GPU untouched");

  const status = await guest!.ok("vmhook status");
  assert.match(status, `[undo-failed] vfio: bind ${edu} to vfio-pci (from vmhook_stuck)`);
  assert.match(status, `stuck driver: ${edu}: driver vmhook_stuck did not return from writing "${edu}" to /sys/bus/pci/devices/${edu}/driver/unbind`);
  assert.match(status, `its helper, pid ${pid}, is still blocked in the kernel (state D: uninterruptible)\n  do not use the device`);
  const doctor = await guest!.sh("vmhook doctor");
  assert.is(doctor.code, 1);
  assert.match(doctor.stdout, `fail  stuck driver: ${edu}: driver vmhook_stuck`);

  // Fail closed while it is stuck: neither prepare nor recover writes to the device.
  const again = await guest!.sh(hook(edu!, "prepare begin"));
  assert.is(again.code, 1);
  assert.match(again.stdout, `vmhook writes nothing to ${edu} until it has returned`);
  const recover = await guest!.sh("vmhook recover");
  assert.is(recover.code, 1);
  assert.match(recover.stdout, `its helper, pid ${pid}, is still blocked in the kernel`);
  assert.fixture(await guest!.ok(state(edu!, true)), expected);

  // remove() returns: the helper is gone, vmhook recover finishes the undo.
  await guest!.ok(`echo 1 > ${LET_GO}; while [ -e /proc/${pid} ]; do sleep 0.2; done`, { timeoutMs: 60_000 });
  // The override comes only once the device's own unbind has returned: nothing but the unbind was written to the device.
  assert.match(await guest!.ok(`cat /sys/bus/pci/devices/${edu}/driver_override`), "(null)\n", "nothing was written to the device after the unbind");
  assert.match(await guest!.ok("vmhook status"), `its helper, pid ${pid}, has finished since`);
  const recovered = await guest!.sh("vmhook recover");
  assert.is(recovered.code, 0, recovered.stdout);
  assert.match(recovered.stdout, `${edu}: the write into driver vmhook_stuck that did not return has finished since (pid ${pid} is gone)`);
  assert.match(recovered.stdout, "edu-vm: 1 change(s) undone");
  assert.fixture(await guest!.ok(state(edu!)), baseline!);
  assert.is(await guest!.ok("vmhook status"), "no VM holds anything (no journals in /run/vmhook)\n");
  assert.is((await guest!.sh("vmhook doctor")).stdout.includes("stuck driver"), false);
});

it("the hook SIGKILLed while its helper is blocked in remove(): the helper's note stays, recover refuses until remove() returns, then finishes", async ({ guest, edu, baseline }) => {
  // A minute before the hook would give up: the note must come from the helper's start, not from the give-up.
  await guest!.ok(`echo 0 > ${LET_GO}; echo 600000 > ${DELAY}; echo '{"plugins": {"vfio": {"bindTimeoutSeconds": 60}}}' > /etc/vmhook/vmhook.json`);
  const note = `/run/vmhook/stuck/${edu}.json`;
  // The kill waits for the helper's note and for vfio-pci's driver to have
  // registered (its modprobe may still be finishing): the hook dies with its
  // helper blocked and vfio-pci in place.
  const killed = await guest!.ok(`cat > /tmp/domain.xml <<'XML'\n${domainXml(edu!)}\nXML
/etc/libvirt/hooks/qemu edu-vm prepare begin - < /tmp/domain.xml & pid=$!
end=$(($(date +%s) + 30))
until { [ -e ${note} ] && [ -d /sys/bus/pci/drivers/vfio-pci ]; } || [ $(date +%s) -gt $end ]; do sleep 0.05; done
kill -9 $pid; wait $pid; echo "exit: $?"
echo '{"plugins": {"vfio": {"bindTimeoutSeconds": 2}}}' > /etc/vmhook/vmhook.json`);
  assert.match(killed, "exit: 137");
  const helper = JSON.parse(await guest!.ok(`cat ${note}`)) as { pid: number; file: string };
  assert.is(helper.file, `/sys/bus/pci/devices/${edu}/driver/unbind`);
  assert.match(await guest!.ok(`cut -d' ' -f3 /proc/${helper.pid}/stat`), /^D\n$/, "the orphaned helper is still in the driver");
  assert.match(await guest!.ok("vmhook status"), `its helper, pid ${helper.pid}, is still blocked in the kernel`);
  const refused = await guest!.sh("vmhook recover");
  assert.is(refused.code, 1);
  assert.match(refused.stdout, `vmhook writes nothing to ${edu} until it has returned`);

  await guest!.ok(`echo 1 > ${LET_GO}; while [ -e /proc/${helper.pid} ]; do sleep 0.2; done`, { timeoutMs: 60_000 });
  const recovered = await guest!.sh("vmhook recover");
  assert.is(recovered.code, 0, recovered.stdout);
  assert.fixture(await guest!.ok(state(edu!)), baseline!);
});

it("afterwards the handover works again", async ({ guest, edu, baseline }) => {
  await guest!.ok(`echo 0 > ${DELAY}`);
  assert.is((await guest!.sh(hook(edu!, "prepare begin"))).code, 0);
  assert.is((await guest!.sh(hook(edu!, "release end"))).code, 0);
  assert.fixture(await guest!.ok(state(edu!)), baseline!);
});

// ---- the network guard: the NIC that carries the host's default route -------

/** The NIC and what runs on it, as text. */
function nicState(nic: string): string {
  return `d=/sys/bus/pci/devices/${nic}
echo "nic driver: $(basename "$(readlink $d/driver)")"
echo "nic override: $(cat $d/driver_override)"
echo "interfaces: $(ls /sys/class/net | tr '\\n' ' ')"
echo "routes: $(ip route | tr '\\n' ';')"
echo "vfio: $(ls /dev/vfio 2>/dev/null | tr '\\n' ' ')"
echo "state: $(ls /run/vmhook 2>/dev/null | grep json | tr '\\n' ' ')"`;
}

it("the network guard: the NIC whose interface, or the bridge on it, carries the only default route is refused before anything changes; beside a second default route it goes and comes back", async ({ guest, nic }) => {
  assert.match(nic!, /^0000:00:\w\w\.0$/);
  const iface = (await guest!.ok(`ls /sys/bus/pci/devices/${nic}/net`)).trim();
  assert.is(iface, "eth0");
  await guest!.ok("ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 dev eth0");
  const routed = await guest!.ok(nicState(nic!));
  assert.match(routed, "nic driver: e1000e\n");
  assert.match(routed, "routes: default via 10.0.2.2 dev eth0");
  // The real kernel lists a reject route ::/0 on lo in /proc/net/ipv6_route: no IPv6 way out, nothing for the guard to keep.
  assert.match(await guest!.ok("cat /proc/net/ipv6_route"), /^0{32} 00 0{32} 00 0{32} ffffffff \w+ \w+ 00200200\s+lo$/m);

  const refused = await guest!.sh(hook(nic!, "prepare begin"));
  assert.is(refused.code, 1, refused.stdout);
  assert.match(refused.stdout, `${nic} carries the host's network (eth0 carries the host's only IPv4 default route)`);
  assert.match(refused.stdout, "give the host a default route through an interface that stays first");
  assert.fixture(await guest!.ok(nicState(nic!)), routed, "nothing changed: e1000e keeps eth0 and its route");

  // The route on a bridge that eth0 is a port of: sysfs links eth0 to it (upper_br0).
  await guest!.ok(`modprobe bridge && ip link add br0 type bridge && ip link set br0 up && ip link set eth0 master br0
ip addr flush dev eth0 && ip addr add 10.0.2.15/24 dev br0 && ip route add default via 10.0.2.2 dev br0`);
  const bridged = await guest!.ok(nicState(nic!));
  const onBridge = await guest!.sh(hook(nic!, "prepare begin"));
  assert.is(onBridge.code, 1, onBridge.stdout);
  assert.match(onBridge.stdout, `${nic} carries the host's network (br0, which runs on eth0, carries the host's only IPv4 default route)`);
  assert.fixture(await guest!.ok(nicState(nic!)), bridged, "nothing changed: the bridge keeps its port");
  await guest!.ok("ip link del br0 && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 dev eth0");

  // A second default route through an interface that stays: the host keeps its way out, the NIC may go.
  await guest!.ok(`modprobe dummy numdummies=0 && ip link add uplink type dummy && ip link set uplink up
ip addr add 192.168.77.1/24 dev uplink && ip route add default via 192.168.77.254 dev uplink metric 100`);
  const twoRoutes = await guest!.ok(nicState(nic!));
  const prepare = await guest!.sh(hook(nic!, "prepare begin"));
  assert.is(prepare.code, 0, prepare.stdout);
  const during = await guest!.ok(nicState(nic!));
  assert.match(during, "nic driver: vfio-pci\n");
  const interfacesBefore = /^interfaces: .*$/m.exec(twoRoutes)![0];
  assert.match(during, `${interfacesBefore.replace(" eth0 ", " ")}\n`, "eth0 went with its NIC");
  assert.match(during, /^routes: default via 192\.168\.77\.254 dev uplink +metric 100 *;[^;]*dev uplink[^;]*;$/m, "eth0's routes went with it");
  const release = await guest!.sh(hook(nic!, "release end"));
  assert.is(release.code, 0, release.stdout);
  const after = await guest!.ok(nicState(nic!));
  assert.match(after, "nic driver: e1000e\n");
  assert.match(after, `${interfacesBefore}\n`, "e1000e brings eth0 back (its addresses and routes were the host's to restore)");
  assert.fixture(after.replace(/^routes: .*$/m, ""), twoRoutes.replace(/^routes: .*$/m, ""));
});

it("the network guard: a virtio-net NIC, whose interface sysfs puts under virtio0 and not in its net/, carrying the only default route is refused", async ({ guest, virtioNic }) => {
  assert.match(virtioNic!, /^0000:00:\w\w\.0$/);
  assert.is(await guest!.ok(`ls /sys/bus/pci/devices/${virtioNic}/net 2>&1; true`), `ls: /sys/bus/pci/devices/${virtioNic}/net: No such file or directory\n`);
  const iface = (await guest!.ok(`ls /sys/bus/pci/devices/${virtioNic}/virtio*/net`)).trim();
  assert.match(iface, /^eth\d$/);
  // The previous scenario's uplink goes: the virtio NIC's route is the only one.
  await guest!.ok(`ip link del uplink; ip link set ${iface} up && ip addr add 10.0.3.15/24 dev ${iface} && ip route add default via 10.0.3.2 dev ${iface}`);
  const routed = await guest!.ok(nicState(virtioNic!));
  assert.match(routed, `routes: default via 10.0.3.2 dev ${iface}`);
  const refused = await guest!.sh(hook(virtioNic!, "prepare begin"));
  assert.is(refused.code, 1, refused.stdout);
  assert.match(refused.stdout, `${virtioNic} carries the host's network (${iface} carries the host's only IPv4 default route)`);
  assert.fixture(await guest!.ok(nicState(virtioNic!)), routed, "nothing changed: virtio-pci keeps it");
});

// ---- the HDMI audio function whose sound card a program keeps open ----------

/** The audio function, its sound card's nodes, and vmhook's records, as text. While its unbind blocks, the override is left out (the device lock). */
function audioState(audio: string, blocked = false): string {
  return `d=/sys/bus/pci/devices/${audio}
echo "audio driver: $(basename "$(readlink $d/driver)")"
${blocked ? "" : `echo "audio override: $(cat $d/driver_override)"`}
echo "snd: $(ls /dev/snd | tr '\\n' ' ')"
echo "vfio: $(ls /dev/vfio 2>/dev/null | tr '\\n' ' ')"
echo "state: $(ls /run/vmhook /run/vmhook/stuck 2>/dev/null | grep json | tr '\\n' ' ')"`;
}

/** snd_hda_intel probes its codec in the background after the bind: wait for the card's control node. */
const CARD_BACK = "end=$(($(date +%s) + 30)); until ls /dev/snd | grep -q '^controlC' || [ $(date +%s) -gt $end ]; do sleep 0.2; done";

it("the audio function's card: control, the function goes to vfio-pci and comes back", async ({ guest, audio }) => {
  assert.match(audio!, /^0000:00:\w\w\.0$/);
  await guest!.ok(`echo '{"plugins": {"vfio": {"bindTimeoutSeconds": 2}}}' > /etc/vmhook/vmhook.json`);
  const baseline = await guest!.ok(audioState(audio!));
  assert.match(baseline, "audio driver: snd_hda_intel\n");
  assert.match(baseline, /snd: controlC0 .*pcmC0D0p/);
  assert.is(await guest!.ok(`ls /sys/bus/pci/devices/${audio}/iommu_group/devices`), `${audio}\n`);
  const prepare = await guest!.sh(hook(audio!, "prepare begin"));
  assert.is(prepare.code, 0, prepare.stdout);
  assert.match(await guest!.ok(audioState(audio!)), "audio driver: vfio-pci\n");
  const release = await guest!.sh(hook(audio!, "release end"));
  assert.is(release.code, 0, release.stdout);
  await guest!.ok(CARD_BACK);
  assert.fixture(await guest!.ok(audioState(audio!)), baseline);
});

it("a program keeps the sound card open: the unbind blocks in snd_card_free(), prepare gives up after bindTimeoutSeconds naming the program; once it is gone, recover gives the card back", async ({ guest, audio }) => {
  const baseline = await guest!.ok(audioState(audio!));
  // Holds the control node without polling it: nothing tells it the card went away.
  const holder = (await guest!.ok("sleep 100000 3</dev/snd/controlC0 >/dev/null 2>&1 & echo $!")).trim();
  const prepare = await guest!.sh(hook(audio!, "prepare begin"));
  assert.is(prepare.code, 1, prepare.stdout);
  const lines = prepare.stdout.split("\n");
  const helper = /vmhook left its helper \(pid (\d+)\)/.exec(lines[0]!)?.[1];
  const unbind = `/sys/bus/pci/devices/${audio}/driver/unbind`;
  assert.is(
    lines[0],
    `vmhook: ${audio}: driver snd_hda_intel did not return within 2 s from writing "${audio}" to ${unbind}; vmhook left its helper (pid ${helper}) blocked in the kernel and gave up; its sound card's remove() waits until every program has closed the card, and pid ${holder} (sleep) holds /dev/snd/controlC0: close it (or end it) and the unbind finishes`,
  );
  console.log(`  prepare with the sound card held open: ${lines.find((line) => line.startsWith("took "))}`);
  assert.match(await guest!.ok(`cut -d' ' -f3 /proc/${helper}/stat`), /^D\n$/, "the helper waits in snd_card_free()");
  // The disconnect removed the card's nodes; the holder's descriptor says so.
  assert.match(await guest!.ok(`readlink /proc/${holder}/fd/3`), "/dev/snd/controlC0 (deleted)\n");
  const refused = await guest!.sh("vmhook recover");
  assert.is(refused.code, 1, refused.stdout);
  assert.match(refused.stdout, `vmhook writes nothing to ${audio} until it has returned`);

  // The program ends: snd_card_free() returns, and recover gives the card back.
  await guest!.ok(`kill ${holder}; while [ -e /proc/${helper} ]; do sleep 0.2; done`, { timeoutMs: 60_000 });
  const recovered = await guest!.sh("vmhook recover");
  assert.is(recovered.code, 0, recovered.stdout);
  assert.match(recovered.stdout, "edu-vm: 1 change(s) undone");
  await guest!.ok(CARD_BACK);
  assert.fixture(await guest!.ok(audioState(audio!)), baseline);
});

bench.run();
