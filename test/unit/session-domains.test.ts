// A domain read from libvirt's session daemon (qemu:///session, any
// transport): libvirt runs its hooks as the user who started it, never as
// root, so vmhook cannot act for it. validate, plan and doctor say so, the
// config commands store the metadata with a warning, and doctor runs no
// plugin's host checks for it (the system's networks, pools and programs say
// nothing of it) nor proposes changes to its XML.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { sessionDaemon } from "../../lib/libvirt-client.ts";
import { cli } from "../helpers/cli.ts";
import { fakeLibvirt, type FakeLibvirt } from "../helpers/fake-virsh.ts";
import { desktopHost } from "../helpers/pci-hosts.ts";
import type { SimHost } from "../helpers/simhost.ts";

const domainXml = (metadata: string) => `<domain type="kvm">
  <name>win11</name>
  <uuid>6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b</uuid>
  <memory unit="KiB">1048576</memory>
  <vcpu>2</vcpu>
  <metadata>${metadata}</metadata>
  <os><type arch="x86_64" machine="q35">hvm</type></os>
  <devices><interface type="network"><mac address="52:54:00:aa:bb:01"/><source network="default"/><model type="virtio"/></interface></devices>
</domain>
`;
const NOSLEEP = domainXml(`<vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:nosleep/></vmhook:hooks>`);
const FORWARD = domainXml(`<vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:forward guest="192.168.122.10" ports="2222:22"/></vmhook:hooks>`);

const SESSION = "qemu:///session is a session daemon: libvirt runs its hooks as the user who started it, never as root, so vmhook cannot act for its domains (a start with vmhook metadata fails)";
const FIX = "vmhook acts for the system daemon's domains: define the VM there (virsh --connect qemu:///system define VM.xml) and name it with --connect qemu:///system";

async function withDomain(xml: string, check: (sim: SimHost, libvirt: FakeLibvirt) => Promise<void>): Promise<void> {
  const sim = desktopHost();
  const libvirt = fakeLibvirt("win11", xml);
  try {
    await check(sim, libvirt);
  } finally {
    libvirt.cleanup();
    sim.cleanup();
  }
}

test("a session daemon is known by the path /session of its URI, whatever the transport; the system daemon and other paths are not one", () => {
  for (const uri of ["qemu:///session", "qemu+unix:///session?socket=/run/user/1000/libvirt/virtqemud-sock", "qemu+ssh://ana@host/session", "QEMU:///session/"]) {
    assert.ok(sessionDaemon(uri)?.reason.startsWith(`${uri} is a session daemon`), uri);
  }
  for (const uri of ["qemu:///system", "qemu+ssh://host/system", "qemu:///sessions", "test:///default", "qemu+tcp://session/system"]) assert.is(sessionDaemon(uri), undefined, uri);
});

test("with no URI set, a user other than root reaches their session daemon; a URI set says which daemon", () => {
  const KEYS = ["VIRSH_DEFAULT_CONNECT_URI", "LIBVIRT_DEFAULT_URI", "XDG_CONFIG_HOME"];
  const saved = { geteuid: process.geteuid, env: KEYS.map((key) => [key, process.env[key]] as const) };
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-session-"));
  try {
    for (const key of KEYS) delete process.env[key];
    // No libvirt.conf of this user: no uri_default.
    process.env.XDG_CONFIG_HOME = home;
    process.geteuid = () => 1000;
    assert.is(sessionDaemon(undefined)?.reason, SESSION.replace("qemu:///session", "qemu:///session (virsh's default for uid 1000, no URI set)"));
    process.env.LIBVIRT_DEFAULT_URI = "qemu:///system";
    assert.is(sessionDaemon(undefined), undefined);
  } finally {
    process.geteuid = saved.geteuid;
    for (const [key, value] of saved.env) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    fs.rmSync(home, { recursive: true, force: true });
  }
});

test("validate of a session domain with vmhook metadata: valid, but vmhook cannot run its plugins for it, why and the fix; exit 1 (its start fails)", () =>
  withDomain(NOSLEEP, async (sim) => {
    const run = await cli(["validate", "win11", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(run.code, 1, run.stderr);
    assert.is(run.stdout, `domain win11: valid, but vmhook cannot run nosleep for win11: ${SESSION}\n  fix: ${FIX}\n`);
    const json = JSON.parse((await cli(["validate", "--json", "win11", "--connect", "qemu+unix:///session", "--root", sim.root], sim)).stdout);
    assert.equal([json.ok, json.hostChecked, json.session.fix], [false, false, FIX]);
    // The system daemon's domain is checked against this host, as before.
    const system = await cli(["validate", "win11", "--connect", "qemu:///system", "--root", sim.root], sim);
    assert.not.match(system.stdout, "session");
    assert.not.match(system.stdout, "cannot run");
  }));

test("validate of a session domain without vmhook metadata: ok, the hook leaves it alone, and says vmhook could do nothing for it", () =>
  withDomain(domainXml(""), async (sim) => {
    const run = await cli(["validate", "win11", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(run.code, 0, run.stderr);
    assert.is(run.stdout, `domain win11: ok; win11 has no vmhook metadata, so the hook leaves it alone, and could do nothing for it: ${SESSION}\n  fix: ${FIX}\n`);
  }));

test("plan of a session domain: no plan (the system's state says nothing of it), but that vmhook cannot act for it, and the fix; exit 1 with vmhook metadata, and --json says it is not possible", () =>
  withDomain(FORWARD, async (sim) => {
    const run = await cli(["plan", "win11", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(run.code, 1, run.stderr);
    // Not the system's missing network "default", which is not this domain's.
    assert.is(run.stderr, "");
    assert.is(run.stdout, `prepare of win11: vmhook cannot act for it: ${SESSION}\n  fix: ${FIX}\n`);
    const json = JSON.parse((await cli(["plan", "--json", "win11", "--connect", "qemu:///session", "--root", sim.root], sim)).stdout);
    assert.equal(json, { domain: { name: "win11", uuid: "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b" }, event: "prepare", steps: [], blocking: [], possible: false, session: { reason: SESSION, fix: FIX } });
    // The system daemon's domain is planned against this host's networks, as before.
    const system = await cli(["plan", "win11", "--connect", "qemu:///system", "--root", sim.root], sim);
    assert.match(system.stderr, 'network "default" is unknown');
  }));

test("plan of a session domain without vmhook metadata: nothing to do, and vmhook could not act for it; exit 0", () =>
  withDomain(domainXml(""), async (sim) => {
    const run = await cli(["plan", "win11", "--event", "release", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(run.code, 0, run.stderr);
    assert.is(run.stdout, `release of win11: nothing to do (no vmhook metadata), and vmhook cannot act for it: ${SESSION}\n  fix: ${FIX}\n`);
  }));

test("doctor of a session domain fails it as a domain finding, with the fix", () =>
  withDomain(NOSLEEP, async (sim) => {
    const run = await cli(["doctor", "win11", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(run.code, 1, run.stderr);
    assert.match(run.stdout, `\nDomain win11 (domain win11):\n  fail  libvirt daemon: ${SESSION}\n        fix: ${FIX}\n`);
    const report = JSON.parse((await cli(["doctor", "--json", "win11", "--connect", "qemu:///system", "--root", sim.root], sim)).stdout);
    assert.not.ok(report.domain.findings.some((finding: { check: string }) => finding.check === "libvirt daemon"));
  }));

const HUGEPAGES_FORWARD = domainXml(`<vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/><vmhook:forward guest="192.168.122.10" ports="2222:22"/></vmhook:hooks>`);

test("doctor of a session domain runs no plugin's host checks (hugepages' pool, forward's nft and networks): no host change is proposed for a domain vmhook cannot act for, and it says they were not run", () =>
  withDomain(HUGEPAGES_FORWARD, async (sim) => {
    const findings = async (uri: string) => JSON.parse((await cli(["doctor", "--json", "win11", "--connect", uri, "--root", sim.root], sim)).stdout).domain.findings as { check: string; status: string; reason: string; fix?: string }[];
    // The system daemon's domain: each plugin checks what it needs of this host (no network "default" in the system's files: forward fails on it).
    const system = await findings("qemu:///system");
    assert.match(system.find((finding) => finding.check === "forward")!.reason, 'network "default" is unknown');
    assert.ok(system.some((finding) => finding.check.startsWith("hugepages")), JSON.stringify(system));
    assert.equal(await findings("qemu:///session"), [
      { check: "libvirt daemon", status: "fail", reason: SESSION, fix: FIX },
      { check: "config", status: "ok", reason: "vmhook metadata is valid: hugepages, forward" },
      { check: "plugin checks", status: "warn", reason: "not run: vmhook cannot act for this domain (libvirt daemon, above), so what hugepages and forward would need of this host is not checked", fix: FIX },
    ]);
  }));

test("doctor --fix of a session domain proposes no change and --apply defines nothing: vmhook cannot act for it, why and the fix; exit 1", () =>
  withDomain(HUGEPAGES_FORWARD, async (sim, libvirt) => {
    // For the system daemon's domain, --fix proposes <memoryBacking><hugepages/> for <vmhook:hugepages>.
    assert.match((await cli(["doctor", "win11", "--fix", "--connect", "qemu:///system", "--root", sim.root], sim)).stdout, "<hugepages/>");
    const before = libvirt.xml("config");
    for (const apply of [[], ["--apply"]]) {
      const run = await cli(["doctor", "win11", "--fix", ...apply, "--connect", "qemu:///session", "--root", sim.root], sim);
      assert.equal([run.code, run.stderr], [1, ""]);
      assert.is(run.stdout, `win11: no change proposed: vmhook cannot act for it: ${SESSION}\n  fix: ${FIX}\n`);
    }
    const json = JSON.parse((await cli(["doctor", "--json", "win11", "--fix", "--connect", "qemu:///session", "--root", sim.root], sim)).stdout);
    assert.equal(json, { domain: "win11", fixes: [], diff: "", applied: false, session: { reason: SESSION, fix: FIX } });
    assert.is(libvirt.xml("config"), before);
    assert.not.ok(libvirt.calls().some((call) => call.includes("define")), "a session domain was defined");
    assert.not.ok(sim.exists("/var/lib/vmhook/backups"), "a backup was written");
  }));

test("enable on a session domain stores the metadata and warns that the hook will not act on it; disable removing the last plugin does not warn", () =>
  withDomain(NOSLEEP, async (sim, libvirt) => {
    const enabled = await cli(["enable", "win11", "hugepages", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(libvirt.xml("config"), "<vmhook:hugepages");
    assert.is(enabled.stderr, `vmhook: warning: the metadata of win11 is stored, but the hook will not act on it: ${SESSION}\n  fix: ${FIX}\n`);
    const json = JSON.parse((await cli(["enable", "--json", "win11", "hugepages", "size=2M", "--connect", "qemu:///session", "--root", sim.root], sim)).stdout);
    assert.is(json.session.reason, SESSION);
    await cli(["disable", "win11", "hugepages", "--connect", "qemu:///session", "--root", sim.root], sim);
    const last = await cli(["disable", "win11", "nosleep", "--connect", "qemu:///session", "--root", sim.root], sim);
    assert.is(last.code, 0, last.stderr);
    assert.is(last.stderr, "");
  }));

test.run();
