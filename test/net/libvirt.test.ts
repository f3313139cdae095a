// <vmhook:forward> under a real libvirtd: a domain started and destroyed with
// virsh gets its forwards in vmhook's table at start and loses them at destroy.
// That libvirtd runs inside a network namespace this suite creates, in a
// private mount namespace (its own /run, /etc/libvirt with vmhook as the hook,
// /var/lib/libvirt, /var/log): every rule it and vmhook write lands in that
// namespace, the machine's firewall and the shared libvirtd stay untouched.
// The network is an isolated NAT network this suite defines (transient).
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { requireTools, sayingWhy, sh, whyNotRunnable } from "./netns.ts";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const NETWORK = "vmhookfwnet";
const BRIDGE = "vmfwbr0";
const MAC = "52:54:00:aa:bb:77";
const GUEST = "192.168.151.10";
const CONFIG_FILES = ["libvirt.conf", "libvirtd.conf", "virtlogd.conf", "qemu.conf"];

const skip = whyNotRunnable();
const namespaced = suite("forward under a real libvirtd in a network namespace");
// Skipped tests are counted as skipped in uvu's summary (and test/run.sh's last line).
const test = skip ? namespaced.skip : namespaced;

class NamespacedLibvirt {
  readonly netns = `vmfw-lv${process.pid}`;
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-libvirt-net-"));
  pids: number[] = [];

  /** /etc/libvirt for the private daemon: the machine's daemon settings, no domains or networks, vmhook as the hook. */
  private configDir(): string {
    const etc = path.join(this.dir, "etc-libvirt");
    for (const sub of ["qemu/networks/autostart", "hooks", "nwfilter", "secrets", "storage"]) fs.mkdirSync(path.join(etc, sub), { recursive: true });
    for (const file of CONFIG_FILES) if (fs.existsSync(`/etc/libvirt/${file}`)) fs.copyFileSync(`/etc/libvirt/${file}`, path.join(etc, file));
    fs.copyFileSync(path.join(REPO, "dist/vmhook"), path.join(etc, "hooks/qemu"));
    fs.chmodSync(path.join(etc, "hooks/qemu"), 0o755);
    return etc;
  }

  start(): void {
    const created = sh("ip", ["netns", "add", this.netns]);
    if (created.code !== 0) throw new Error(`ip netns add: ${created.stderr}`);
    sh("ip", ["-n", this.netns, "link", "set", "lo", "up"]);
    const script = `set -e
mount -t tmpfs tmpfs /run
for dir in /var/lib/libvirt /var/log /var/cache/libvirt; do mount -t tmpfs tmpfs "$dir"; done
mount --bind "$1" /etc/libvirt
mkdir -p /run/libvirt /var/lib/libvirt/qemu /var/lib/libvirt/dnsmasq /var/lib/libvirt/images /var/log/libvirt/qemu /var/cache/libvirt/qemu
chown libvirt-qemu:libvirt-qemu /var/lib/libvirt/qemu 2>/dev/null || true
virtlogd -d -p /run/virtlogd.pid
libvirtd -d -p /run/libvirtd.pid
for i in $(seq 300); do [ -S /run/libvirt/libvirt-sock ] && [ -s /run/libvirtd.pid ] && break; sleep 0.1; done
echo "$(cat /run/virtlogd.pid) $(cat /run/libvirtd.pid)"`;
    const started = sh("ip", ["netns", "exec", this.netns, "unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", this.configDir()], "", 60_000);
    this.pids = started.stdout.split(/\s+/).filter(Boolean).map(Number);
    if (started.code !== 0 || this.pids.length !== 2) throw new Error(`private libvirtd did not start (exit ${started.code}): ${started.stderr.trim()} ${started.stdout.trim()}`);
  }

  /** A command inside the daemon's network and mount namespaces (virtlogd's: they outlive a libvirtd restart). */
  inside(command: string, args: string[], input = "") {
    return sh("nsenter", ["-t", String(this.pids[0]), "-m", "-n", command, ...args], input, 60_000);
  }

  /** libvirtd stopped (its domains keep running) and started again: it reloads its firewall rules, then reconnects the domains (the reconnect hook). */
  restartLibvirtd(): void {
    const libvirtd = this.pids[1]!;
    process.kill(libvirtd, "SIGTERM");
    for (let tries = 0; tries < 300 && sh("kill", ["-0", String(libvirtd)]).code === 0; tries++) sh("sleep", ["0.1"]);
    const started = this.inside("sh", ["-c", `rm -f /run/libvirtd.pid; libvirtd -d -p /run/libvirtd.pid
for i in $(seq 300); do [ -S /run/libvirt/libvirt-sock ] && [ -s /run/libvirtd.pid ] && break; sleep 0.1; done
cat /run/libvirtd.pid`]);
    const pid = Number(started.stdout.trim());
    if (started.code !== 0 || !pid) throw new Error(`libvirtd did not start again (exit ${started.code}): ${started.stderr.trim()}`);
    this.pids[1] = pid;
  }

  virsh(...args: string[]) {
    return this.inside("virsh", ["--connect", "qemu:///system", ...args]);
  }

  virshOk(...args: string[]): string {
    const result = this.virsh(...args);
    if (result.code !== 0) throw new Error(`virsh ${args.join(" ")} failed (exit ${result.code}): ${result.stderr.trim()}`);
    return result.stdout;
  }

  stop(): void {
    if (this.pids.length === 2) {
      for (const domain of this.virsh("list", "--name").stdout.split("\n").filter(Boolean)) this.virsh("destroy", domain);
      this.virsh("net-destroy", NETWORK);
    }
    // the daemons this suite started, by their pids: libvirtd, then virtlogd (which holds no state once libvirtd is gone)
    const [virtlogd, libvirtd] = this.pids;
    const signal = (pid: number | undefined, name: NodeJS.Signals) => {
      try {
        if (pid) process.kill(pid, name);
        return true;
      } catch {
        return false; // gone
      }
    };
    signal(libvirtd, "SIGTERM");
    for (let tries = 0; tries < 100 && signal(libvirtd, 0 as unknown as NodeJS.Signals); tries++) sh("sleep", ["0.1"]);
    signal(libvirtd, "SIGKILL");
    signal(virtlogd, "SIGKILL");
    sh("ip", ["netns", "del", this.netns]);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

let libvirt: NamespacedLibvirt;

if (skip) {
  console.log(`SKIPPED forward under a real libvirtd: ${skip}`);
} else {
  namespaced.before(sayingWhy(() => {
    requireTools(["ip", "nft", "iptables-nft"], "apt install iproute2 nftables iptables");
    requireTools(["libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "dnsmasq", "unshare", "nsenter"], "apt install libvirt-daemon-system qemu-system-x86, as .ci/run does");
    libvirt = new NamespacedLibvirt();
    libvirt.start();
    const network = `<network><name>${NETWORK}</name><forward mode='nat'/><bridge name='${BRIDGE}'/>
  <ip address='192.168.151.1' netmask='255.255.255.0'><dhcp><range start='192.168.151.100' end='192.168.151.200'/><host mac='${MAC}' ip='${GUEST}'/></dhcp></ip></network>`;
    const file = path.join(libvirt.dir, "network.xml");
    fs.writeFileSync(file, network);
    libvirt.virshOk("net-create", file);
  }));
  namespaced.after(() => libvirt?.stop());
}

const machineRuleset = () => sh("nft", ["-s", "list", "ruleset"]).stdout;

const DOMAIN_NAME = `vmhook-fw-${process.pid}`;

/** virsh create of a domain on the suite's network with these forwards; returns its UUID. */
function createDomain(ports: string): string {
  const uuid = randomUUID();
  const xml = `<domain type='qemu'><name>${DOMAIN_NAME}</name><uuid>${uuid}</uuid><memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator><interface type='network'><mac address='${MAC}'/><source network='${NETWORK}'/><model type='e1000'/></interface>
  <memballoon model='none'/></devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:forward ports="${ports}"/></vmhook:hooks></metadata></domain>`;
  const file = path.join(libvirt.dir, "domain.xml");
  fs.writeFileSync(file, xml);
  libvirt.virshOk("create", file);
  return uuid;
}

test("virsh create starts the domain with its forward in vmhook's table inside the namespace; destroy takes it out; the machine's firewall is untouched", () => {
  const machineBefore = machineRuleset();
  const insideBefore = libvirt.inside("nft", ["-s", "list", "ruleset"]).stdout;
  assert.match(insideBefore, /LIBVIRT_FWI|libvirt_network/, "libvirt's own rules for the network are in the namespace");
  const uuid = createDomain("2222:22,60000-60010/udp");
  try {
    const table = libvirt.inside("nft", ["list", "table", "inet", "vmhook"]);
    assert.is(table.code, 0, `vmhook's table after start: ${table.stderr}`);
    assert.match(table.stdout, new RegExp(`chain vm-${uuid} \\{[^}]*tcp dport 2222 dnat ip to ${GUEST.replace(/\./g, "\\.")}:22`));
    assert.match(table.stdout, /udp dport 60000-60010 dnat ip to 192\.168\.151\.10\n/);
    const exceptions = `${libvirt.inside("iptables-nft", ["-S", "LIBVIRT_FWI"]).stdout}${libvirt.inside("nft", ["list", "ruleset"]).stdout}`;
    assert.match(exceptions, new RegExp(`vmhook:${uuid}`), "an exception in libvirt's reject chain");
  } finally {
    libvirt.virshOk("destroy", DOMAIN_NAME);
  }
  assert.is(libvirt.inside("nft", ["list", "table", "inet", "vmhook"]).code, 1, "vmhook's table is gone after destroy");
  assert.is(libvirt.inside("nft", ["-s", "list", "ruleset"]).stdout, insideBefore, "the namespace's ruleset is as before the start");
  assert.is(machineRuleset(), machineBefore, "the machine's own ruleset never changed");
});

/** Where the domain's exceptions and libvirt's reject for the bridge stand in LIBVIRT_FWI (-1: not there). */
function fwiOrder(uuid: string): { exception: number; reject: number; listing: string } {
  const listing = libvirt.inside("iptables-nft", ["-w", "10", "-S", "LIBVIRT_FWI"]).stdout;
  const lines = listing.split("\n");
  return { exception: lines.findIndex((line) => line.includes(`vmhook:${uuid}`)), reject: lines.findIndex((line) => line.includes(`-o ${BRIDGE} -j REJECT`)), listing };
}

test("libvirtd restarted with the domain running: libvirt re-inserts its rules at the head of LIBVIRT_FWI, and reconnect puts the exception back in front of its reject", () => {
  const uuid = createDomain("2222:22");
  try {
    const started = fwiOrder(uuid);
    assert.ok(started.exception >= 0 && started.exception < started.reject, `start put the exception in front of libvirt's reject:\n${started.listing}`);
    libvirt.restartLibvirtd();
    const state = libvirt.virsh("domstate", DOMAIN_NAME);
    assert.match(state.stdout, /running/, `the domain survived the restart: ${state.stderr}\n${libvirt.inside("sh", ["-c", `tail -5 /var/log/libvirt/qemu/${DOMAIN_NAME}.log`]).stdout}`);
    // reconnect runs in libvirtd's own threads once it is up: wait for it
    let after = fwiOrder(uuid);
    for (let tries = 0; tries < 100 && !(after.exception >= 0 && after.exception < after.reject); tries++) {
      sh("sleep", ["0.1"]);
      after = fwiOrder(uuid);
    }
    assert.ok(after.exception >= 0 && after.exception < after.reject, `after the restart the exception is behind libvirt's reject (the forward is dead):\n${after.listing}`);
    assert.is(after.listing.split("\n").filter((line) => line.includes(`vmhook:${uuid}`)).length, 1, "once");
  } finally {
    libvirt.virsh("destroy", DOMAIN_NAME);
  }
});

namespaced.run();
