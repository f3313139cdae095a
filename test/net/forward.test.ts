// <vmhook:forward> with real nftables and real traffic, in network namespaces
// this suite creates and removes (see netns.ts). The hook is the built binary.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ADDRESSES, domainXml, installed, Lab, requireTools, sayingWhy, whyNotRunnable } from "./netns.ts";
import { libvirtIptables, libvirtNftables } from "./libvirt-rules.ts";

const skip = whyNotRunnable();
const forward = suite("forward in network namespaces");
// Skipped tests are counted as skipped in uvu's summary (and test/run.sh's last line).
const test = skip ? forward.skip : forward;
let lab: Lab;

if (skip) {
  console.log(`SKIPPED forward network tests: ${skip}`);
} else {
  forward.before(
    sayingWhy(async () => {
      requireTools(["ip", "nft", "iptables-nft"], "apt install iproute2 nftables iptables");
      lab = new Lab();
      lab.up();
      await lab.echo("guest", [22, 443], [60005]);
    }),
  );
  forward.after(() => lab?.down());
}

const GUEST = "hello"; // what the client sends; the guest answers "guest:hello"
const REACHED = `guest:${GUEST}`;
const FORWARDS = `<vmhook:forward ports="2222:22,8443:443/tcp,60000-60010/udp"/><vmhook:forward guest="${ADDRESSES.guestV6}" ports="2222:22"/>`;

/** Starts a domain, checks it, and always releases it; returns the ruleset seen while it ran. */
function withDomain(name: string, elements: string, body: (xml: string) => void): void {
  const xml = domainXml(name, elements);
  const started = lab.startDomain(name, xml);
  try {
    assert.is(started.code, 0, `start of ${name}: ${started.stderr}`);
    body(xml);
  } finally {
    lab.stopDomain(name, xml);
  }
}

test("traffic from the client reaches the guest through the forwards, IPv4 and IPv6, TCP and UDP; release restores the ruleset byte for byte", () => {
  const before = lab.ruleset();
  assert.match(lab.probe("tcp", ADDRESSES.hostV4, 2222), /^no answer/, "no forward before start");
  withDomain("web", FORWARDS, () => {
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222), REACHED, "tcp 2222 → 22, IPv4");
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 8443), REACHED, "tcp 8443 → 443, IPv4");
    assert.is(lab.probe("udp", ADDRESSES.hostV4, 60005), REACHED, "udp range 60000-60010, IPv4");
    assert.is(lab.probe("tcp", ADDRESSES.hostV6, 2222), REACHED, "tcp 2222 → 22, IPv6");
    assert.match(lab.probe("tcp", ADDRESSES.hostV4, 22), /^no answer/, "only forwarded ports are forwarded");
    assert.match(lab.ruleset(), /table inet vmhook/);
    const status = lab.vmhook(["status"]).stdout;
    assert.match(status, /web .*\n.*forward: forward tcp 2222 → 192\.168\.150\.10:22, tcp 8443 → 192\.168\.150\.10:443, udp 60000-60010 → 192\.168\.150\.10:60000-60010, tcp 2222 → \[fd00:150::10\]:22/);
  });
  assert.is(lab.ruleset(), before, "ruleset after release");
  assert.match(lab.probe("tcp", ADDRESSES.hostV4, 2222), /^no answer/, "forward gone after release");
});

// Outside CI a machine without conntrack skips this one test, saying so; CI installs it (.ci/run), and there it must run.
const withoutConntrack = !process.env.CI && !installed("conntrack");
if (withoutConntrack && !skip) console.log("SKIPPED the forward's conntrack test: conntrack is not installed (apt install conntrack)");

(skip || withoutConntrack ? forward.skip : forward)("a UDP peer that kept sending from one port since before start reaches the guest once the forward is in, and a forwarded UDP flow stops at release", () => {
  requireTools(["conntrack"], "apt install conntrack");
  const [peerBefore, peerDuring] = [40000, 40001];
  // NAT hooks in place all along (another VM's forward here; libvirt's NAT and Docker have theirs): the kernel settles a
  // flow's NAT at its first packet, and deletes NAT'd entries by itself only when the last NAT hook goes.
  withDomain("other", `<vmhook:forward ports="2222:22"/>`, () => {
    assert.match(lab.probe("udp", ADDRESSES.hostV4, 60005, "client", peerBefore), /^no answer/, "nothing answers before the forward");
    withDomain("peer", `<vmhook:forward ports="60000-60010/udp"/>`, () => {
      assert.is(lab.probe("udp", ADDRESSES.hostV4, 60005, "client", peerBefore), REACHED, "the peer's conntrack entry from before start was deleted");
      assert.is(lab.probe("udp", ADDRESSES.hostV4, 60005, "client", peerDuring), REACHED);
    });
    assert.match(lab.probe("udp", ADDRESSES.hostV4, 60005, "client", peerDuring), /^no answer/, "after release the flow no longer reaches the stopped guest's address");
  });
});

(skip || withoutConntrack ? forward.skip : forward)("release cuts a forwarded UDP service's many flows (600 peers) with real conntrack in seconds, and keeps the host's other entries", () => {
  requireTools(["conntrack"], "apt install conntrack");
  const xml = domainXml("busy", `<vmhook:forward ports="60000-60010/udp"/>`);
  const started = lab.startDomain("busy", xml);
  try {
    assert.is(started.code, 0, started.stderr);
    // As the DNAT leaves them: from peers to the host's port, replied by the guest. And the host's own flow out to a remote port 60005.
    const { clientV4, hostV4, guestV4 } = ADDRESSES;
    const peers = `for port in $(seq 20000 20599); do conntrack -I -p udp -s ${clientV4} -d ${hostV4} --sport $port --dport 60005 -r ${guestV4} -q ${clientV4} --reply-port-src 60005 --reply-port-dst $port -t 120 || exit 1; done 2>/dev/null`;
    lab.inOk("host", "sh", ["-c", `${peers}; conntrack -I -p udp -s ${hostV4} -d 198.51.100.7 --sport 41000 --dport 60005 -r 198.51.100.7 -q ${hostV4} --reply-port-src 60005 --reply-port-dst 41000 -t 120 2>/dev/null`]);
    // Counted by the port they share: the namespace may track a packet of its own meanwhile (conntrack -C counted one, once).
    assert.is(lab.inOk("host", "conntrack", ["-L", "-p", "udp", "--dport", "60005"]).trim().split("\n").length, 601);
  } finally {
    const begun = Date.now();
    lab.stopDomain("busy", xml);
    const seconds = (Date.now() - begun) / 1000;
    assert.ok(seconds < 10, `stopped and released in ${seconds} s`);
  }
  assert.is(lab.in("host", "conntrack", ["-L", "-p", "udp", "--dport", "60005", "-r", ADDRESSES.guestV4]).stdout, "", "the peers' 600 entries are gone");
  assert.match(lab.inOk("host", "conntrack", ["-L", "-p", "udp", "-d", "198.51.100.7"]), /sport=41000 dport=60005/, "the host's own flow out stays");
  lab.inOk("host", "conntrack", ["-D", "-p", "udp", "-d", "198.51.100.7"]);
});

test("the host itself reaches the forward (DNAT in output)", () => {
  withDomain("self", `<vmhook:forward ports="2222:22"/>`, () => {
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222, "host"), REACHED);
  });
});

test("with libvirt's nftables tables for the NAT network, reject rules included, forwards get through and release leaves libvirt's tables as they were", () => {
  lab.inOk("host", "nft", ["-f", "-"], libvirtNftables());
  try {
    const before = lab.ruleset();
    assert.match(lab.probe("tcp", ADDRESSES.guestV4, 22), /^no answer/, "libvirt's guest_input rejects new connections into the network");
    withDomain("nat", FORWARDS, () => {
      assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222), REACHED, "IPv4 through libvirt's reject");
      assert.is(lab.probe("udp", ADDRESSES.hostV4, 60005), REACHED, "UDP through libvirt's reject");
      assert.is(lab.probe("tcp", ADDRESSES.hostV6, 2222), REACHED, "IPv6 through libvirt's reject");
      assert.match(lab.probe("tcp", ADDRESSES.guestV4, 22), /^no answer/, "a connection straight to the guest is still rejected");
      assert.match(lab.inOk("host", "nft", ["list", "chain", "ip", "libvirt_network", "guest_input"]), /ct status dnat .*accept comment "vmhook:/);
    });
    assert.is(lab.ruleset(), before, "ruleset after release");
  } finally {
    lab.inOk("host", "nft", ["delete table ip libvirt_network; delete table ip6 libvirt_network"]);
  }
});

test("with libvirt's iptables backend (iptables-nft), forwards get through LIBVIRT_FWI and release removes exactly the exceptions", () => {
  lab.inOk("host", "iptables-nft-restore", ["--noflush"], libvirtIptables("ip"));
  lab.inOk("host", "ip6tables-nft-restore", ["--noflush"], libvirtIptables("ip6"));
  try {
    const before = lab.ruleset();
    assert.match(lab.probe("tcp", ADDRESSES.guestV4, 22), /^no answer/, "LIBVIRT_FWI rejects new connections into the network");
    withDomain("legacy", FORWARDS, () => {
      assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222), REACHED, "IPv4 through LIBVIRT_FWI");
      assert.is(lab.probe("tcp", ADDRESSES.hostV6, 2222), REACHED, "IPv6 through LIBVIRT_FWI");
      assert.match(lab.inOk("host", "iptables-nft", ["-S", "LIBVIRT_FWI"]), /--ctstate DNAT -m comment --comment "vmhook:/);
    });
    assert.is(lab.ruleset(), before, "ruleset after release");
  } finally {
    for (const tool of ["iptables-nft", "ip6tables-nft"]) {
      lab.in("host", tool, ["-F"]);
      lab.in("host", tool, ["-X"]);
    }
    lab.in("host", "nft", ["delete table ip filter; delete table ip6 filter"]);
  }
});

test("hairpin: another VM on the same network reaches the forward through the host's address", () => {
  withDomain("hairpin", `<vmhook:forward ports="2222:22" hairpin="yes"/>`, () => {
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222, "neighbour"), REACHED);
  });
  withDomain("hairpin-interface", `<vmhook:forward ports="2222:22" interface="vc0h" hairpin="yes"/>`, () => {
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222, "neighbour"), REACHED, "hairpin with interface=: the bridge too");
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222), REACHED, "and the client on interface=");
  });
  withDomain("nohairpin", `<vmhook:forward ports="2222:22"/>`, () => {
    assert.match(lab.probe("tcp", ADDRESSES.hostV4, 2222, "neighbour"), /^no answer/, "without hairpin the bridge is left out");
  });
});

test("a host port another running VM forwards is refused, naming that VM; the refused start leaves the ruleset as it was", () => {
  withDomain("first", `<vmhook:forward ports="2222:22"/>`, () => {
    const during = lab.ruleset();
    const xml = domainXml("second", `<vmhook:forward ports="2000-2300:2000-2300"/>`);
    const refused = lab.startDomain("second", xml);
    lab.stopDomain("second", xml);
    assert.is(refused.code, 1);
    assert.match(refused.stderr, /host port tcp 2000-2300 is forwarded to VM "first" already/);
    assert.is(lab.ruleset(), during);
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222), REACHED, "the first VM's forward still works");
  });
});

/** The host namespace's UDP conntrack entries as their tuples, without the timers that count down. */
const udpFlows = () =>
  lab
    .inOk("host", "conntrack", ["-L", "-p", "udp"])
    .split("\n")
    .map((line) => [...line.matchAll(/\b(?:src|dst|sport|dport)=\S+/g)].join(" "))
    .filter(Boolean)
    .sort()
    .join("\n");

(skip || withoutConntrack ? forward.skip : forward)("a refused start, and a prepare (nft --check runs start's transaction through the kernel), leave the ruleset and conntrack as they were: a UDP flow that start would cut stays", () => {
  requireTools(["conntrack"], "apt install conntrack");
  withDomain("first", `<vmhook:forward ports="2222/udp"/>`, () => {
    // Peers sending to host ports the refused start and the prepare ask for: what an apply would delete.
    for (const port of [2100, 3050]) {
      lab.inOk("host", "conntrack", ["-I", "-p", "udp", "-s", ADDRESSES.clientV4, "-d", ADDRESSES.hostV4, "--sport", "40100", "--dport", `${port}`, "-r", ADDRESSES.hostV4, "-q", ADDRESSES.clientV4, "--reply-port-src", `${port}`, "--reply-port-dst", "40100", "-t", "120"]);
    }
    const [ruleset, flows] = [lab.ruleset(), udpFlows()];
    assert.match(flows, /dport=2100/);
    const second = domainXml("second", `<vmhook:forward ports="2000-2300/udp"/>`);
    const refused = lab.startDomain("second", second);
    lab.stopDomain("second", second);
    assert.is(refused.code, 1);
    assert.match(refused.stderr, /host port udp 2000-2300 is forwarded to VM "first" already/);
    const third = domainXml("third", `<vmhook:forward ports="3000-3100/udp"/>`);
    const prepared = lab.hookEvent("third", "prepare", "begin", third);
    assert.is(prepared.code, 0, prepared.stderr);
    lab.stopDomain("third", third);
    assert.is(lab.ruleset(), ruleset);
    assert.is(udpFlows(), flows);
    lab.inOk("host", "conntrack", ["-D", "-p", "udp", "-s", ADDRESSES.clientV4, "--sport", "40100"]);
  });
});

test("a host port a host process listens on is refused, naming the process", async () => {
  const server = await lab.echo("host", [3333], []);
  try {
    const before = lab.ruleset();
    const xml = domainXml("busy", `<vmhook:forward ports="3333:22"/>`);
    const refused = lab.startDomain("busy", xml);
    lab.stopDomain("busy", xml);
    assert.is(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`host port tcp 3333 is in use: bun \\(pid \\d+\\) listens on`));
    assert.is(lab.ruleset(), before);
  } finally {
    server.kill("SIGKILL");
  }
});

test("a bad element aborts at prepare with the element, the value and the fix, leaving the ruleset and the journals as they were", () => {
  const before = lab.ruleset();
  const xml = domainXml("typo", `<vmhook:forward ports="2222:22/tpc"/>`);
  const prepared = lab.hookEvent("typo", "prepare", "begin", xml);
  lab.stopDomain("typo", xml);
  assert.is(prepared.code, 1);
  assert.match(prepared.stderr, /^vmhook: <vmhook:forward ports="2222:22\/tpc">: ports= item "2222:22\/tpc" is not a port forward; write HOST\[:GUEST\]\[\/tcp\|\/udp\]/);
  assert.is(lab.ruleset(), before);
  assert.match(lab.vmhook(["status"]).stdout, /no VM holds anything/);
});

test("a network that is not NAT and a privileged host port are refused before anything changes", () => {
  const before = lab.ruleset();
  lab.writeNetwork("route");
  try {
    const xml = domainXml("routed", `<vmhook:forward ports="2222:22"/>`);
    const refused = lab.startDomain("routed", xml);
    lab.stopDomain("routed", xml);
    assert.match(refused.stderr, /network "vmhooknet" .* is not a NAT network \(forward mode route\)/);
  } finally {
    lab.writeNetwork("nat");
  }
  const xml = domainXml("low", `<vmhook:forward ports="80:80"/>`);
  const refused = lab.startDomain("low", xml);
  lab.stopDomain("low", xml);
  assert.match(refused.stderr, /host port tcp 80 is not one the host policy lets VMs claim \(allowed: 1024-65535\); use an allowed port, or to allow it, add 80 to "forward.hostPorts" in \/etc\/vmhook\/policy.json/);
  assert.is(lab.ruleset(), before);
});

test("plan shows the forwards start would add, and doctor checks nft and the network", () => {
  const xml = domainXml("planned", `<vmhook:forward ports="2222:22"/>`);
  const plan = lab.vmhook(["plan", "--event", "start", "-"], xml);
  assert.match(plan.stdout, /start of planned would take 1 step\(s\):\n  1\. forward: forward tcp 2222 → 192\.168\.150\.10:22 \(nft table inet vmhook\)/, plan.stderr);
  const doctor = lab.vmhook(["doctor", "-"], xml).stdout;
  assert.match(doctor, /ok +forward nft: .*\/usr\/sbin\/nft is installed/);
  assert.match(doctor, installed("conntrack") ? /ok +forward conntrack: .*\/conntrack is installed/ : /warn +forward conntrack: conntrack is not installed/);
  assert.match(doctor, /ok +forward: NAT network, ports free: forward tcp 2222 → 192\.168\.150\.10:22/);
  lab.writeNetwork("route");
  try {
    assert.match(lab.vmhook(["doctor", "-"], xml).stdout, /fail +forward: network "vmhooknet" .* is not a NAT network \(forward mode route\)/);
  } finally {
    lab.writeNetwork("nat");
  }
});

test("reconnect puts back rules a firewall reload took away", () => {
  withDomain("again", `<vmhook:forward ports="2222:22"/>`, (xml) => {
    lab.inOk("host", "nft", ["delete", "table", "inet", "vmhook"]);
    assert.match(lab.probe("tcp", ADDRESSES.hostV4, 2222), /^no answer/);
    assert.is(lab.hookEvent("again", "reconnect", "begin", xml).code, 0);
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222), REACHED);
  });
});

// The rules, not traffic: with br_netfilter loaded on the machine (Docker loads it) the
// neighbour's replies are un-DNATed on the bridge and reach it without the masquerade.
test("reconnect puts back a hairpin a firewall change took away (the jump from postrouting), not only the DNAT", () => {
  withDomain("hairpin-again", `<vmhook:forward ports="2222:22" hairpin="yes"/>`, (xml) => {
    const applied = lab.ruleset();
    lab.inOk("host", "nft", ["flush", "chain", "inet", "vmhook", "postrouting"]);
    assert.not.match(lab.ruleset(), /jump vm-[-0-9a-f]+-hairpin/);
    assert.is(lab.hookEvent("hairpin-again", "reconnect", "begin", xml).code, 0);
    assert.is(lab.ruleset(), applied, "the hairpin's jump is back, and nothing is doubled");
    assert.is(lab.probe("tcp", ADDRESSES.hostV4, 2222, "neighbour"), REACHED);
  });
});

forward.run();
