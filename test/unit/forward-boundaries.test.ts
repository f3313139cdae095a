// What the forward plugin neither guesses nor grants: a listing of libvirt's
// LIBVIRT_FWI chain that failed (the xtables lock held, a timeout) is not an
// empty chain, at start or at release; and guest= reaches no further than the
// domain's own guests: not the host's address on the bridge, not the subnet's
// network or broadcast address, not an address the network reserves for
// another VM's MAC.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Deadline } from "../../lib/deadline.ts";
import { readJournal } from "../../lib/journal.ts";
import { createLogger } from "../../lib/log.ts";
import { DEFAULT_SETTINGS } from "../../lib/settings.ts";
import { undoJournal } from "../../lib/transaction.ts";
import { registry } from "../../plugins/index.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { addedObjects, type NftObject } from "../helpers/nft-host.ts";
import { SimHost } from "../helpers/simhost.ts";

const UUID = "11111111-2222-4333-8444-555555555555";
const TAG = `vmhook:${UUID}`;
const LOCK_HELD = "Another app is currently holding the xtables lock. Stopped waiting after 10s";
/** iptables' own answer (legacy and nft) for `-S CHAIN` of a chain that does not exist. */
const NO_SUCH_CHAIN = "iptables: No chain/target/match by that name.";

const NAT_NETWORK = `<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><host mac='52:54:00:aa:bb:01' ip='192.168.122.10'/><host mac='52:54:00:aa:bb:02' ip='192.168.122.20'/></dhcp></ip>
  <ip family='ipv6' address='fd00:122::1' prefix='64'/></network>`;

function domain(elements: string): string {
  return `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='MiB'>64</memory>
  <devices><interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='default'/></interface></devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${elements}</vmhook:hooks></metadata></domain>`;
}

type Backend = "iptables-nft" | "iptables-legacy";

/**
 * A host whose libvirt uses the iptables backend: through iptables-nft (its
 * chains show in the nft ruleset) or iptables-legacy (the legacy filter table
 * in /proc/net/ip_tables_names). `fwi` is LIBVIRT_FWI as `-S` shows it.
 */
function iptablesHost(backend: Backend = "iptables-nft") {
  const sim = new SimHost().dir("/var/log").dir("/run").file("/run/libvirt/network/default.xml", NAT_NETWORK);
  if (backend === "iptables-legacy") sim.file("/proc/net/ip_tables_names", "filter");
  const fwi = ["-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable"];
  const nftScripts: string[] = [];
  const restores: string[] = [];
  /** vmhook's objects in the nft ruleset: what the last apply transaction added, until dropOurTable. */
  let ourObjects: NftObject[] = [];
  let lockHeld = false;
  let chainGone = false;
  /** Restores that still succeed before the xtables lock is held by another program; Infinity: never held. */
  let restoresBeforeLockHeld = Infinity;
  sim.onExec("nft", (args, _sim, options) => {
    if (args.join(" ") === "-j list ruleset") {
      const theirs = backend === "iptables-nft" && !chainGone ? [{ table: { family: "ip", name: "filter" } }, { chain: { family: "ip", table: "filter", name: "LIBVIRT_FWI" } }] : [];
      return { stdout: JSON.stringify({ nftables: [{ metainfo: {} }, ...theirs, ...ourObjects] }) };
    }
    if (args.join(" ") === "--check -f -") return { status: 0 }; // prepare's check: the simulated kernel takes every transaction
    if (args.join(" ") !== "-f -") return { status: 1, stderr: `unexpected nft ${args.join(" ")}` };
    nftScripts.push(options.input ?? "");
    ourObjects = addedObjects(options.input ?? "");
  });
  sim.onExec(backend, (args) => {
    if (lockHeld) return { status: 4, stderr: `${LOCK_HELD}.\n` };
    // iptables-nft 1.8.9 answers -S of a chain that does not exist so (measured in an empty network namespace).
    if (chainGone) return backend === "iptables-nft" ? { status: 1, stderr: "iptables v1.8.9 (nf_tables): chain `LIBVIRT_FWI' in table `filter' is incompatible, use 'nft' tool.\n" } : { status: 1, stderr: `${NO_SUCH_CHAIN}\n` };
    if (args.join(" ") === "-w 10 -S LIBVIRT_FWI") return { stdout: `-N LIBVIRT_FWI\n${fwi.join("\n")}\n` };
    return { status: 1, stderr: `unexpected ${args.join(" ")}` };
  });
  sim.onExec(`${backend}-restore`, (_args, _sim, options) => {
    // A restore is one transaction: one that fails changes nothing.
    if (restoresBeforeLockHeld-- <= 0) return { status: 4, stderr: `${LOCK_HELD}.\n` };
    restores.push(options.input ?? "");
    for (const line of (options.input ?? "").split("\n")) {
      if (line.startsWith("-I ")) fwi.unshift(`-A${line.slice(2)}`);
      if (line.startsWith("-D ")) fwi.splice(fwi.indexOf(`-A${line.slice(2)}`), 1);
    }
  });
  return {
    sim,
    fwi,
    nftScripts,
    restores,
    ours: () => fwi.filter((line) => line.includes(TAG)),
    setLockHeld: (held: boolean) => (lockHeld = held),
    dropChain: () => (chainGone = true),
    /** vmhook's own nft table gone (nft delete table inet vmhook, a firewall reload); libvirt's chains stay. */
    dropOurTable: () => (ourObjects = []),
    holdLockAfterRestores: (count: number) => (restoresBeforeLockHeld = count),
  };
}

/** `vmhook recover` for the domain: undo what its journal still holds. */
async function recover(sim: SimHost) {
  const journal = readJournal(sim, UUID);
  assert.ok(journal, "a journal is left to recover");
  const env = { host: sim, log: createLogger(sim, { echo: "none", file: false }), settings: DEFAULT_SETTINGS, registry };
  return undoJournal(journal!, env, new Deadline(sim, 10_000));
}

test("reconnect: the exceptions in LIBVIRT_FWI are replaced in one restore: another program taking the xtables lock meanwhile cannot leave them taken out", async () => {
  const { sim, ours, dropOurTable, holdLockAfterRestores } = iptablesHost();
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  const exceptions = ours();
  assert.is(exceptions.length, 1, "the exception went in");
  dropOurTable();
  holdLockAfterRestores(1);
  await runHookEvent(sim, "reconnect", "begin", xml);
  assert.equal(ours(), exceptions, "the exception is in LIBVIRT_FWI after the put-back, once");
});

/**
 * What libvirt (9.0, iptables backend) does to its own rules when it reloads
 * them (daemon start, SIGHUP, firewalld reload, net-update): deletes them one
 * by one and inserts them again at the head of LIBVIRT_FWI
 * (networkReloadFirewallRulesHelper, iptablesForwardRejectIn's --insert).
 * vmhook's exceptions stay, behind libvirt's reject.
 */
function reloadLibvirtRules(fwi: string[]): void {
  const libvirts = fwi.filter((line) => !line.includes("vmhook:"));
  for (const line of libvirts) fwi.splice(fwi.indexOf(line), 1);
  fwi.unshift(...libvirts);
}

test("reconnect: an exception that libvirt's reload left behind its reject (it deletes and re-inserts its rules at the head) is put back in front of it: the forward works again", async () => {
  const { sim, fwi, ours } = iptablesHost();
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  const reject = fwi.findIndex((line) => line.includes("-j REJECT"));
  assert.ok(fwi.indexOf(ours()[0]!) < reject, "start put the exception in front of libvirt's reject");
  reloadLibvirtRules(fwi);
  assert.ok(fwi.indexOf(ours()[0]!) > fwi.findIndex((line) => line.includes("-j REJECT")), "the reload left it behind");
  await runHookEvent(sim, "reconnect", "begin", xml);
  assert.is(ours().length, 1, "the exception is there once");
  assert.ok(fwi.indexOf(ours()[0]!) < fwi.findIndex((line) => line.includes("-j REJECT")), `reconnect left the exception behind libvirt's reject: ${fwi.join(" | ")}`);
});

// ---- defect 1: a failed listing of LIBVIRT_FWI is not "the chain is gone"

test("release: an iptables listing that failed (xtables lock held) is not 'the chain is gone': the exception stays journaled as undo-failed, and recover takes it out", async () => {
  const { sim, ours, setLockHeld } = iptablesHost();
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  const started = await runHookEvent(sim, "start", "begin", xml);
  assert.is(started.code, 0, started.stderr);
  assert.is(ours().length, 1, "the exception went in");
  setLockHeld(true);
  await runHookEvent(sim, "release", "end", xml);
  assert.ok(ours().length === 0 || sim.exists(`/run/vmhook/${UUID}.json`), `release reported the forward undone and dropped the journal, yet LIBVIRT_FWI still holds: ${ours().join(" | ")}`);
  const [entry] = readJournal(sim, UUID)!.entries;
  assert.is(entry!.state, "undo-failed");
  assert.match(entry!.error ?? "", `iptables-nft -w 10 -S LIBVIRT_FWI failed (exit 4): ${LOCK_HELD}`);
  assert.match(entry!.error ?? "", /then run vmhook recover$/);
  setLockHeld(false);
  const recovered = await recover(sim);
  assert.equal(recovered.failed, []);
  assert.equal(ours(), [], "recover took the exception out");
  assert.equal(sim.stateFiles(), []);
});

test("release: LIBVIRT_FWI gone from the nft ruleset (iptables-nft) is nothing to remove, whatever iptables-nft 1.8.9 says of a missing chain", async () => {
  const { sim, dropChain } = iptablesHost();
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  dropChain();
  const from = sim.execs.length;
  const released = await runHookEvent(sim, "release", "end", xml);
  assert.is(released.code, 0, released.stderr);
  assert.equal(sim.stateFiles(), [], "the forward is undone: the chain that held its exception is gone");
  assert.not.ok(sim.execs.slice(from).some((exec) => exec.command.startsWith("iptables-nft")), "iptables-nft was not asked about a chain nft does not show");
});

test("release with iptables-legacy: only iptables' own 'no such chain' answer means the chain is gone", async () => {
  const { sim, ours, setLockHeld, dropChain } = iptablesHost("iptables-legacy");
  const xml = domain(`<vmhook:forward ports="2222:22"/>`);
  assert.is((await runHookEvent(sim, "start", "begin", xml)).code, 0);
  assert.is(ours().length, 1, "the exception went in through iptables-legacy");
  setLockHeld(true);
  await runHookEvent(sim, "release", "end", xml);
  assert.is(readJournal(sim, UUID)?.entries[0]?.state, "undo-failed", "a held lock keeps the entry");
  setLockHeld(false);
  dropChain();
  assert.equal((await recover(sim)).failed, [], "a chain iptables says is not there holds nothing to remove");
  assert.equal(sim.stateFiles(), []);
});

test("start: a legacy LIBVIRT_FWI listing that failed refuses the start, naming the command and its error; nothing is applied", async () => {
  const { sim, nftScripts, restores, setLockHeld } = iptablesHost("iptables-legacy");
  setLockHeld(true);
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, `iptables-legacy -w 10 -S LIBVIRT_FWI failed (exit 4): ${LOCK_HELD}`);
  assert.match(outcome.stderr.split("\n")[0]!, /then start the VM again/);
  assert.equal(nftScripts, [], "no nft transaction");
  assert.equal(restores, [], "no iptables change");
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
});

test("start: an iptables-nft listing that fails at apply refuses the start before any rule goes in", async () => {
  const { sim, nftScripts, restores, setLockHeld } = iptablesHost();
  setLockHeld(true);
  const outcome = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, `iptables-nft -w 10 -S LIBVIRT_FWI failed (exit 4): ${LOCK_HELD}`);
  assert.equal(nftScripts, [], "no nft transaction");
  assert.equal(restores, [], "no iptables change");
  // libvirt's release follows a failed start and removes the journal; nothing was applied, so it holds nothing to undo.
  assert.equal(readJournal(sim, UUID)?.entries ?? [], [], "no entry left undo-failed for vmhook recover");
});

test("start: iptables-legacy that says LIBVIRT_FWI does not exist is a host without libvirt's legacy chain: the forward goes in without exceptions there", async () => {
  const { sim, restores, dropChain } = iptablesHost("iptables-legacy");
  dropChain();
  const started = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(started.code, 0, started.stderr);
  assert.equal(restores, []);
  assert.equal(readJournal(sim, UUID)!.entries[0]!.undo.iptables, []);
});

// ---- defect 2: guest= reaches the domain's own guests only

/** Starts the domain with these elements on a fresh host; asserts the refusal and that nothing was applied; returns the first stderr line. */
async function refused(elements: string): Promise<string> {
  const { sim, nftScripts, restores } = iptablesHost();
  const before = sim.snapshot();
  const outcome = await runHookEvent(sim, "start", "begin", domain(elements));
  assert.is(outcome.code, 1, `${elements} was not refused`);
  assert.equal(nftScripts, [], "no nft transaction");
  assert.equal(restores, [], "no iptables change");
  assert.not.ok(sim.execs.some((exec) => exec.command === "nft" && exec.args.join(" ") === "-f -"));
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), [], "nothing journaled");
  return outcome.stderr.split("\n")[0]!;
}

test("guest= may not be the host's own address on the network (IPv4 and IPv6)", async () => {
  const line = await refused(`<vmhook:forward guest="192.168.122.1" ports="5353:53/udp,8445:445"/>`);
  assert.match(line, `<vmhook:forward guest="192.168.122.1" ports="5353:53/udp,8445:445">: guest=192.168.122.1 is the host's own address on network "default"`);
  assert.match(line, /set guest= to this VM's own address on network "default" \(or leave guest= out: 192\.168\.122\.10 is the address the network gives its MAC 52:54:00:aa:bb:01\)$/);
  assert.match(await refused(`<vmhook:forward guest="fd00:122::1" ports="2222:22"/>`), `guest=fd00:122::1 is the host's own address on network "default"`);
});

test("guest= may not be the subnet's network or broadcast address", async () => {
  assert.match(await refused(`<vmhook:forward guest="192.168.122.255" ports="2222:22"/>`), `guest=192.168.122.255 is the broadcast address of network "default" (192.168.122.0/24)`);
  assert.match(await refused(`<vmhook:forward guest="192.168.122.0" ports="2222:22"/>`), `guest=192.168.122.0 is the network address of network "default" (192.168.122.0/24)`);
  assert.match(await refused(`<vmhook:forward guest="fd00:122::" ports="2222:22"/>`), `guest=fd00:122:: is the subnet-router anycast address of network "default" (fd00:122::/64)`);
});

test("guest= may not be another domain's address (the network's DHCP host entry for another MAC)", async () => {
  const line = await refused(`<vmhook:forward guest="192.168.122.20" ports="2223:22"/>`);
  assert.match(line, `guest=192.168.122.20 is the address network "default" reserves for MAC 52:54:00:aa:bb:02 (<host mac='52:54:00:aa:bb:02' ip='192.168.122.20'/>), which is no NIC of vm`);
  assert.match(line, /put the forward in the metadata of the VM with that MAC/);
});

test("guest= may be the address reserved for the domain's own MAC, or one the network reserves for nobody", async () => {
  for (const guest of ["192.168.122.10", "192.168.122.50", "fd00:122::10"]) {
    const { sim, ours } = iptablesHost();
    const started = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward guest="${guest}" ports="2222:22"/>`));
    assert.is(started.code, 0, started.stderr);
    if (!guest.includes(":")) assert.is(ours().length, 1, guest);
  }
});

test("without guest=, a reservation that gives the domain's MAC the host's own address is refused too, naming the network's entry", async () => {
  const { sim, nftScripts } = iptablesHost();
  sim.file("/run/libvirt/network/default.xml", NAT_NETWORK.replace("ip='192.168.122.10'", "ip='192.168.122.1'"));
  const outcome = await runHookEvent(sim, "start", "begin", domain(`<vmhook:forward ports="2222:22"/>`));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, `the address network "default" gives MAC 52:54:00:aa:bb:01 (192.168.122.1) is the host's own address on network "default"`);
  assert.match(outcome.stderr.split("\n")[0]!, /fix its <host mac='52:54:00:aa:bb:01' ip='…'\/> \(virsh net-update default modify ip-dhcp-host …\)$/);
  assert.equal(nftScripts, []);
});

test.run();
