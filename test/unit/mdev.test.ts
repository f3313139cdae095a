// The mdev and vgpu plugins on the simulated GVT-g and NVIDIA vGPU hosts of
// test/helpers/mdev-kernel.ts.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { cli } from "../helpers/cli.ts";
import { fakeLibvirt } from "../helpers/fake-virsh.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { runDoctor } from "../../lib/diagnostics/doctor.ts";
import { newJournal, readJournal, writeJournal } from "../../lib/journal.ts";
import { paths } from "../../lib/paths.ts";
import { SimHost } from "../helpers/simhost.ts";
import { assertPlanIsPrepare } from "../helpers/plan.ts";
import { addParent, GPU, GPU_DIR, GVT_TYPES, gvtHost, mdevHostdevXml, newHost, nvidiaHost, pciHostdevXml, VF, VF2 } from "../helpers/mdev-kernel.ts";

const UUID_A = "4b20d080-1b54-4048-85b3-a6a62d165c01";
const UUID_B = "4b20d080-1b54-4048-85b3-a6a62d165c02";
const DOMAIN_UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809";
/** Another domain on the same host. */
const WIN10 = { name: "win10", uuid: "0b6e2ea6-3f1b-4bb2-9a41-6c1c4a2f9e10" };

const available = (sim: SimHost, type: string, parent = GPU) => Number(sim.readTrimmed(`/sys/class/mdev_bus/${parent}/mdev_supported_types/${type}/available_instances`));
const mdevType = (sim: SimHost, uuid: string) => sim.readlink(`/sys/bus/mdev/devices/${uuid}/mdev_type`)?.split("/").pop();

interface DomainParts {
  hooks: string;
  mdevs?: string[];
  /** PCI hostdevs as bus:slot.function on domain 0000. */
  pcis?: string[];
  uuid?: string;
  name?: string;
}

function domainXml({ hooks, mdevs = [], pcis = [], uuid = DOMAIN_UUID, name = "vm" }: DomainParts): string {
  const hostdevs = [...mdevs.map(mdevHostdevXml), ...pcis.map((address) => pciHostdevXml(`0000:${address}`))];
  return `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><memory unit='KiB'>1048576</memory><vcpu>2</vcpu>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${hooks}</vmhook:hooks></metadata>
  <devices>${hostdevs.join("")}</devices></domain>`;
}

// ---- mdev ---------------------------------------------------------------------

test("GVT-g: two mdevs are created at prepare with their types and removed at release; the host ends as it began", async () => {
  const sim = gvtHost();
  const before = sim.snapshot();
  const xml = domainXml({
    mdevs: [UUID_A, UUID_B],
    hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4" uuid="${UUID_A}"/><vmhook:mdev parent="00:02.0" type="i915-GVTg_V5_8" uuid="${UUID_B.toUpperCase()}"/>`,
  });

  const prepare = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(mdevType(sim, UUID_A), "i915-GVTg_V5_4");
  assert.is(mdevType(sim, UUID_B), "i915-GVTg_V5_8");
  assert.is(available(sim, "i915-GVTg_V5_4"), 1);
  assert.is(available(sim, "i915-GVTg_V5_8"), 1);
  assert.equal(
    sim.writes.map((w) => [w.path, w.data]),
    [
      [`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/create`, UUID_A],
      [`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_8/create`, UUID_B],
    ],
  );
  assert.equal(sim.stateFiles(), [`${DOMAIN_UUID}.json`]);

  const release = await runHookEvent(sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(sim.writes.slice(2).map((w) => w.path), [`/sys/bus/mdev/devices/${UUID_B}/remove`, `/sys/bus/mdev/devices/${UUID_A}/remove`]);
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("uuid and parent may be omitted: the domain's only mdev hostdev, the only parent offering the type", async () => {
  const sim = gvtHost();
  const xml = domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_2"/>` });
  const prepare = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(mdevType(sim, UUID_A), "i915-GVTg_V5_2");
  await runHookEvent(sim, "release", "end", xml);
  assert.not.ok(sim.exists(`/sys/bus/mdev/devices/${UUID_A}`));

  // A second GPU offering the same type makes the parent ambiguous.
  addParent(sim, "0000:03:00.0", "/sys/devices/pci0000:00/0000:00:01.0/0000:03:00.0", GVT_TYPES);
  const before = sim.snapshot();
  const ambiguous = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(ambiguous.code, 1);
  assert.match(ambiguous.stderr.split("\n")[0]!, `<vmhook:mdev type="i915-GVTg_V5_2">: type i915-GVTg_V5_2 is offered by ${GPU} and 0000:03:00.0; add parent="..." naming one`);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("unknown type: fails at prepare listing the parent's types with description and available_instances; host untouched", async () => {
  const sim = gvtHost();
  const before = sim.snapshot();
  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V4_4"/>` }));
  assert.is(result.code, 1);
  const lines = result.stderr.split("\n");
  assert.is(
    lines[0],
    `vmhook: <vmhook:mdev parent="${GPU}" type="i915-GVTg_V4_4">: type i915-GVTg_V4_4 is not offered by ${GPU}; choose one of i915-GVTg_V5_1, i915-GVTg_V5_2, i915-GVTg_V5_4, i915-GVTg_V5_8`,
  );
  assert.ok(lines.includes("  i915-GVTg_V5_4: GVTg_V5_4, low_gm_size: 128MB, high_gm_size: 512MB, fence: 4, resolution: 1920x1200, weight: 4; 2 available"), result.stderr);
  assert.ok(lines.includes("  i915-GVTg_V5_1: GVTg_V5_1, low_gm_size: 512MB, high_gm_size: 2048MB, fence: 4, resolution: 1920x1200, weight: 16; 1 available"), result.stderr);
  assert.equal(sim.writes, []);
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("a parent that is not in /sys/class/mdev_bus fails naming the parents there; a host without any says how to get one", async () => {
  const sim = gvtHost();
  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="mtty" type="mtty-2"/>` }));
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `parent mtty is not an mdev parent on this host (not in /sys/class/mdev_bus); the parents are ${GPU}`);
  sim.cleanup();

  // A Coffee Lake iGPU (GVT-g capable) with i915.enable_gvt=1 but no kvmgt: only the step still missing.
  const bare = newHost().file(`${GPU_DIR}/class`, "0x030000").file(`${GPU_DIR}/vendor`, "0x8086").file(`${GPU_DIR}/device`, "0x3e92").link(`/sys/bus/pci/devices/${GPU}`, `../../../devices/pci0000:00/${GPU}`);
  bare.file("/sys/module/i915/parameters/enable_gvt", "Y");
  const none = await runHookEvent(bare, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` }));
  assert.is(none.code, 1);
  assert.match(none.stderr.split("\n")[0]!, `this host has no mdev parent device (/sys/class/mdev_bus is empty); for Intel GVT-g on ${GPU} (8086:3e92): load kvmgt (see docs/mdev.md); for NVIDIA vGPU install its host driver`);
  bare.cleanup();
});

test("NVIDIA's vGPU manager without mdevs (vGPU 17+ on SR-IOV virtual functions): an mdev element is refused pointing at <vmhook:vgpu> and the VFs, not at installing the driver it has", async () => {
  const sim = nvidiaHost();
  const before = sim.snapshot();
  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="nvidia-558"/>` }));
  assert.is(result.code, 1);
  assert.match(
    result.stderr.split("\n")[0]!,
    `this host has no mdev parent device (/sys/class/mdev_bus is empty); GVT-g needs an Intel GPU of Broadwell to Comet Lake, and this host has no Intel GPU; NVIDIA's vGPU manager here makes no mdevs: it sets a vGPU type on a virtual function (${VF}, ${VF2} have nvidia/current_vgpu_type): give the domain a VF as a PCI <hostdev managed='no'> and write <vmhook:vgpu vf="${VF}" type="..."/> instead (docs/mdev.md)`,
  );
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("no instance left: fails naming the mdevs on the parent and who made them; host untouched", async () => {
  const sim = gvtHost();
  // One V5_1 instance in all: another VM started by vmhook holds it...
  const other = domainXml({ ...WIN10, mdevs: [UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_1"/>` });
  assert.is((await runHookEvent(sim, "prepare", "begin", other, "win10")).code, 0);
  // ...and mdevctl made a V5_8 by hand.
  const handMade = "9d2bbd6c-8c3a-43c5-9d0a-1f2e3d4c5b6a";
  sim.write(`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_8/create`, handMade);
  const before = sim.snapshot();
  const writes = sim.writes.length;

  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_1"/>` }));
  assert.is(result.code, 1);
  const lines = result.stderr.split("\n");
  assert.match(lines[0]!, `<vmhook:mdev type="i915-GVTg_V5_1">: no i915-GVTg_V5_1 instance is left on ${GPU} (available_instances is 0); stop a VM that uses one`);
  assert.ok(lines.includes(`    ${UUID_B} (i915-GVTg_V5_1, created by vmhook for domain win10)`), result.stderr);
  assert.ok(lines.includes(`    ${handMade} (i915-GVTg_V5_8, not created by vmhook: mdevctl or by hand)`), result.stderr);
  assert.is(sim.writes.length, writes);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("available_instances absent, empty or not a count: refused before anything changes, naming the file and what it holds, not taken for 0 instances left", async () => {
  const file = `/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/available_instances`;
  for (const [content, holds] of [[undefined, "is absent"], ["", "is empty"], ["n/a", 'holds "n/a", not a count']] as const) {
    const sim = gvtHost();
    if (content === undefined) fs.rmSync(sim.resolve(file));
    else sim.file(file, content);
    const before = sim.snapshot();
    const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` }));
    assert.is(result.code, 1);
    assert.match(result.stderr.split("\n")[0]!, `<vmhook:mdev type="i915-GVTg_V5_4">: cannot tell how many i915-GVTg_V5_4 instances are left on ${GPU}: ${file} ${holds}; `);
    assert.equal(sim.snapshot(), before);
    sim.cleanup();
  }
});

test("no instance left now: validate exits 1 saying prepare would refuse it here, plan marks the step REFUSED, enable stores it with that warning", async () => {
  const sim = gvtHost();
  // Another VM holds the only V5_1 instance; this VM may start once that one stops.
  const other = domainXml({ ...WIN10, mdevs: [UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_1"/>` });
  assert.is((await runHookEvent(sim, "prepare", "begin", other, "win10")).code, 0);
  const xml = domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_1"/>` });
  sim.file("/vm.xml", xml);
  const refusal = `<vmhook:mdev type="i915-GVTg_V5_1">: no i915-GVTg_V5_1 instance is left on ${GPU} (available_instances is 0)`;

  const validated = await cli(["validate", sim.resolve("/vm.xml"), "--root", sim.root]);
  assert.is(validated.code, 1, validated.stdout);
  assert.match(validated.stdout, `valid, but prepare would refuse it on this host:\n  ${refusal}`);
  const planned = await cli(["plan", sim.resolve("/vm.xml"), "--root", sim.root]);
  assert.is(planned.code, 1, planned.stderr);
  assert.match(planned.stdout, `1. mdev: create mdev ${UUID_A} (i915-GVTg_V5_1 on ${GPU})\n     REFUSED: ${refusal}`);

  const libvirt = fakeLibvirt("vm", xml.replace(/<metadata>.*<\/metadata>/s, ""));
  try {
    const enabled = await cli(["enable", "vm", "mdev", "type=i915-GVTg_V5_1", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(enabled.stderr, `vmhook: warning: a start of vm on this host now would be refused: ${refusal}`);
    assert.match(libvirt.xml("config"), '<vmhook:mdev type="i915-GVTg_V5_1"/>');
  } finally {
    libvirt.cleanup();
    sim.cleanup();
  }
});

test("two mdevs of a type with one instance left: refused before either is created", async () => {
  const sim = gvtHost();
  const before = sim.snapshot();
  const result = await runHookEvent(
    sim,
    "prepare",
    "begin",
    domainXml({ mdevs: [UUID_A, UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_2" uuid="${UUID_A}"/><vmhook:mdev type="i915-GVTg_V5_2" uuid="${UUID_B}"/>` }),
  );
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `needs 2 i915-GVTg_V5_2 instances on ${GPU} (available_instances is 1)`);
  assert.equal(sim.writes, []);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("an mdev that exists with the same type is used and kept at release; with another type it is refused", async () => {
  const sim = gvtHost();
  sim.write(`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/create`, UUID_A); // mdevctl start
  const before = sim.snapshot();
  const xml = domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4"/>` });

  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.is(sim.writes.length, 1, "vmhook wrote nothing");
  assert.is(mdevType(sim, UUID_A), "i915-GVTg_V5_4");
  assert.equal(sim.snapshot(), before);

  const other = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_8"/>` }));
  assert.is(other.code, 1);
  assert.match(other.stderr.split("\n")[0]!, `mdev ${UUID_A} already exists as i915-GVTg_V5_4 on ${GPU}; remove it (mdevctl stop --uuid ${UUID_A}`);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("an mdev UUID mdevctl defines (/etc/mdevctl.d) as another type or with attributes, not started: refused, as vmhook would create another device than mdevctl's; one that agrees is created as before", async () => {
  const sim = gvtHost();
  const definition = `/etc/mdevctl.d/${GPU}/${UUID_A}`;
  const xml = domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` });
  const refused = async (expected: string) => {
    const before = sim.snapshot();
    const result = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(result.code, 1, result.stderr);
    assert.is(result.stderr.split("\n")[0], `vmhook: <vmhook:mdev type="i915-GVTg_V5_4">: ${expected}`);
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
  };

  sim.file(definition, JSON.stringify({ mdev_type: "i915-GVTg_V5_8", start: "auto", attrs: [] }));
  await refused(
    `mdev ${UUID_A} is defined by mdevctl (${definition}: i915-GVTg_V5_8 on ${GPU}) and not started: vmhook would create another device under its UUID (i915-GVTg_V5_4); write type="i915-GVTg_V5_8" parent="${GPU}" and start it (mdevctl start --uuid ${UUID_A}); or give this domain an mdev <hostdev> with its own UUID (uuidgen)`,
  );
  sim.file(definition, JSON.stringify({ mdev_type: "i915-GVTg_V5_4", start: "manual", attrs: [{ "nvidia/vgpu_params": "frame_rate_limiter=0" }] }));
  await refused(
    `mdev ${UUID_A} is defined by mdevctl (${definition}: i915-GVTg_V5_4 on ${GPU}, attributes "nvidia/vgpu_params") and not started: vmhook would create another device under its UUID (without those attributes); start it (mdevctl start --uuid ${UUID_A}): vmhook then uses it and leaves it to mdevctl; or give this domain an mdev <hostdev> with its own UUID (uuidgen)`,
  );
  sim.file(definition, "{ not json");
  await refused(`mdevctl's definition of mdev ${UUID_A} (${definition}) is not its JSON (mdev_type, start, attrs): vmhook cannot tell what device mdevctl defines; fix or remove it (mdevctl undefine --uuid ${UUID_A})`);

  // A definition vmhook's create matches (type, parent, no attributes): created and removed as before.
  sim.file(definition, JSON.stringify({ mdev_type: "i915-GVTg_V5_4", start: "auto", attrs: [] }));
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  assert.is(mdevType(sim, UUID_A), "i915-GVTg_V5_4");
  assert.is((await runHookEvent(sim, "release", "end", xml)).code, 0);
  assert.not.ok(mdevType(sim, UUID_A));
  sim.cleanup();
});

test("an mdev vmhook created for another domain (both name its UUID) is refused, not used: that domain removes it at its release", async () => {
  const sim = gvtHost();
  const hooks = `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4"/>`;
  assert.is((await runHookEvent(sim, "prepare", "begin", domainXml({ ...WIN10, mdevs: [UUID_A], hooks }), WIN10.name)).code, 0);
  const before = sim.snapshot();
  const writes = sim.writes.length;

  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks }));
  assert.is(result.code, 1, result.stderr);
  assert.match(
    result.stderr.split("\n")[0]!,
    `${hooks.replace("/>", ">")}: mdev ${UUID_A} is the one vmhook created for domain win10, which removes it at its release; start this domain once win10 has stopped, or give it an mdev <hostdev> with its own UUID (uuidgen)`,
  );
  assert.is(sim.writes.length, writes);
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), [`${WIN10.uuid}.json`]);
  sim.cleanup();
});

test("vmhook doctor's mdev check fails exactly where prepare refuses, with prepare's reason", async () => {
  const twoGpus = () => {
    const sim = gvtHost();
    addParent(sim, "0000:03:00.0", "/sys/devices/pci0000:00/0000:00:01.0/0000:03:00.0", GVT_TYPES);
    return sim;
  };
  /** A GVT-g host where mdevctl started UUID_A as `type`. */
  const startedAs = (type: string) => () => {
    const sim = gvtHost();
    sim.write(`/sys/class/mdev_bus/${GPU}/mdev_supported_types/${type}/create`, UUID_A);
    return sim;
  };
  const otherType = startedAs("i915-GVTg_V5_8");
  const cases: { what: string; sim: () => SimHost; parts: DomainParts }[] = [
    { what: "two parents offer the type", sim: twoGpus, parts: { mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` } },
    { what: "the UUID exists with another type", sim: otherType, parts: { mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` } },
    { what: "another element's UUID exists", sim: () => otherType().file(`${GPU_DIR}/mdev_supported_types/i915-GVTg_V5_1/available_instances`, 0), parts: { mdevs: [UUID_A, UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_1" uuid="${UUID_B}"/><vmhook:mdev type="i915-GVTg_V5_8" uuid="${UUID_A}"/>` } },
    { what: "the UUID exists and a journal cannot be read", sim: () => startedAs("i915-GVTg_V5_4")().file(paths.journal(WIN10.uuid), "{"), parts: { mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` } },
    { what: "available_instances is not a count", sim: () => gvtHost().file(`${GPU_DIR}/mdev_supported_types/i915-GVTg_V5_4/available_instances`, "n/a"), parts: { mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` } },
    { what: "two mdevs of a type with one instance left", sim: gvtHost, parts: { mdevs: [UUID_A, UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_2" uuid="${UUID_A}"/><vmhook:mdev type="i915-GVTg_V5_2" uuid="${UUID_B}"/>` } },
  ];
  for (const { what, sim: makeHost, parts } of cases) {
    const sim = makeHost();
    const xml = domainXml(parts);
    const prepare = await runHookEvent(sim, "prepare", "begin", xml);
    assert.is(prepare.code, 1, what);
    const refusal = prepare.stderr.split("\n")[0]!.replace(/^vmhook: /, "");
    const report = await runDoctor(sim, { file: "vm.xml", xml });
    const findings = report.domain!.findings.filter((finding) => finding.plugin === "mdev");
    assert.ok(findings.some((finding) => finding.status === "fail" && finding.reason === refusal), `${what}: doctor says ${JSON.stringify(findings)}, prepare ${refusal}`);
    sim.cleanup();
  }
});

test("a bad UUID or parent in the XML is rejected before any host path is built from it", async () => {
  const cases = [
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" uuid="../../../../etc/passwd"/>`, mdevs: [UUID_A], bad: "../../../../etc/passwd", message: `uuid="../../../../etc/passwd" is not a UUID` },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>`, mdevs: ["../../../../x"], bad: "../../../../x", message: `<hostdev type='mdev'><source><address>: uuid="../../../../x" is not a UUID` },
    { hooks: `<vmhook:mdev type="i915-GVTg_V5_4" parent="../../../etc"/>`, mdevs: [UUID_A], bad: "../../../etc", message: `parent="../../../etc" is neither a PCI address` },
    { hooks: `<vmhook:mdev type="../create"/>`, mdevs: [UUID_A], bad: "../create", message: `type="../create" is not an mdev type` },
  ];
  for (const { hooks, mdevs, bad, message } of cases) {
    const sim = gvtHost();
    const resolved: string[] = [];
    const resolve = sim.resolve.bind(sim);
    sim.resolve = (hostPath: string) => (resolved.push(hostPath), resolve(hostPath));
    const before = sim.snapshot();
    const result = await runHookEvent(sim, "prepare", "begin", domainXml({ hooks, mdevs }));
    assert.is(result.code, 1);
    assert.match(result.stderr.split("\n")[0]!, message);
    assert.equal(resolved.filter((p) => p.includes(bad)), [], `no path built from ${bad}`);
    assert.equal(sim.writes, []);
    assert.equal(sim.snapshot(), before);
    sim.cleanup();
  }
});

test("config errors name the element and the fix", async () => {
  const sim = gvtHost();
  const cases: [DomainParts, string][] = [
    [{ mdevs: [UUID_A], hooks: `<vmhook:mdev typ="i915-GVTg_V5_4"/>` }, `<vmhook:mdev typ="i915-GVTg_V5_4">: has unknown attribute typ; allowed: type, parent, uuid`],
    [{ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}"/>` }, `<vmhook:mdev parent="${GPU}">: has no type attribute; name an mdev type`],
    [{ mdevs: [], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` }, `has no uuid and the domain has no mdev <hostdev>; add <hostdev mode='subsystem' type='mdev'`],
    [{ mdevs: [UUID_A, UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` }, `has no uuid, but the domain has 2 mdev <hostdev>s (${UUID_A}, ${UUID_B}); add uuid="..."`],
    [{ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4" uuid="${UUID_B}"/>` }, `uuid="${UUID_B}" is not the UUID of any mdev <hostdev> of this domain (they are ${UUID_A})`],
    [{ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/><vmhook:mdev type="i915-GVTg_V5_8"/>` }, `configures mdev ${UUID_A} again (first in <vmhook:mdev type="i915-GVTg_V5_4">)`],
  ];
  const before = sim.snapshot();
  for (const [parts, message] of cases) {
    const result = await runHookEvent(sim, "prepare", "begin", domainXml(parts));
    assert.is(result.code, 1, message);
    assert.match(result.stderr.split("\n")[0]!, message);
  }
  assert.equal(sim.writes, []);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("a create the kernel refuses rolls back the mdevs made before it", async () => {
  const sim = gvtHost();
  sim.failWrite(`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_8/create`, "ENOSPC");
  const before = sim.snapshot();
  const result = await runHookEvent(
    sim,
    "prepare",
    "begin",
    domainXml({ mdevs: [UUID_A, UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_4" uuid="${UUID_A}"/><vmhook:mdev type="i915-GVTg_V5_8" uuid="${UUID_B}"/>` }),
  );
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `vmhook: could not create mdev ${UUID_B} (i915-GVTg_V5_8 on ${GPU}): ENOSPC`);
  assert.match(result.stderr, "the host was left as it was (1 change(s) undone)");
  assert.equal(sim.writes.map((w) => w.path), [`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/create`, `/sys/bus/mdev/devices/${UUID_A}/remove`]);
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("a create the kernel refuses because the UUID exists (mdevctl made it after the plan) leaves that mdev alone in the rollback", async () => {
  const sim = gvtHost();
  const create = `/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/create`;
  const write = sim.write.bind(sim);
  let raced = false;
  sim.write = (file: string, data: string) => {
    if (file === create && !raced) {
      raced = true;
      write(file, data); // mdevctl start --uuid UUID_A, between vmhook's plan and its write
    }
    write(file, data); // vmhook's own write: EEXIST, the kernel created nothing
  };
  const prepare = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4"/>` }));
  assert.is(prepare.code, 1, prepare.stderr);
  assert.match(prepare.stderr.split("\n")[0]!, `could not create mdev ${UUID_A} (i915-GVTg_V5_4 on ${GPU}): EEXIST`);
  assert.is(mdevType(sim, UUID_A), "i915-GVTg_V5_4", "mdevctl's mdev is still there");
  assert.not.ok(sim.writes.some((entry) => entry.path.endsWith("/remove")), "nothing was removed");
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("the last instance taken between the check and the create (another VM's start, mdevctl's auto-start): the failure names what holds the instances", async () => {
  const sim = gvtHost();
  // Two V5_4 instances: another VM started by vmhook holds one...
  const other = domainXml({ ...WIN10, mdevs: [UUID_B], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` });
  assert.is((await runHookEvent(sim, "prepare", "begin", other, "win10")).code, 0);
  // ...and mdevctl starts a persistent auto-start mdev of the type (its parent reappeared) between vmhook's plan and its write.
  const create = `/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/create`;
  const autoStarted = "9d2bbd6c-8c3a-43c5-9d0a-1f2e3d4c5b6a";
  const write = sim.write.bind(sim);
  sim.write = (file: string, data: string) => {
    if (file === create && data === UUID_A) write(file, autoStarted);
    write(file, data);
  };
  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev type="i915-GVTg_V5_4"/>` }));
  assert.is(result.code, 1, result.stderr);
  const lines = result.stderr.split("\n");
  assert.match(lines[0]!, `could not create mdev ${UUID_A} (i915-GVTg_V5_4 on ${GPU}): EINVAL: no instance left; no i915-GVTg_V5_4 instance is left on ${GPU} now (available_instances is 0): an mdev made since vmhook's check took it; stop a VM that uses one or choose a smaller type`);
  assert.ok(lines.includes(`    ${UUID_B} (i915-GVTg_V5_4, created by vmhook for domain win10)`), result.stderr);
  assert.ok(lines.includes(`    ${autoStarted} (i915-GVTg_V5_4, not created by vmhook: mdevctl or by hand)`), result.stderr);
  assert.not.ok(mdevType(sim, UUID_A), "nothing was created for this domain");
  assert.equal(sim.stateFiles(), [`${WIN10.uuid}.json`]);
  sim.cleanup();
});

// ---- vgpu: NVIDIA vGPU 17+ on SR-IOV virtual functions ----------------------------

const currentType = (sim: SimHost, vf = VF) => sim.readTrimmed(`/sys/bus/pci/devices/${vf}/nvidia/current_vgpu_type`);

test("vgpu: the type is set on the VF by name at prepare and cleared at release; the host ends as it began", async () => {
  const sim = nvidiaHost();
  const before = sim.snapshot();
  const xml = domainXml({ pcis: ["41:00.4", "41:00.5"], hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/><vmhook:vgpu vf="41:00.5" type="NVIDIA L40S-24Q"/>` });

  const prepare = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepare.code, 0, prepare.stderr);
  assert.is(currentType(sim), "1433");
  assert.is(currentType(sim, VF2), "1434");

  const release = await runHookEvent(sim, "release", "end", xml);
  assert.is(release.code, 0, release.stderr);
  assert.equal(sim.writes.slice(2).map((w) => [w.path, w.data]), [
    [`/sys/bus/pci/devices/${VF2}/nvidia/current_vgpu_type`, "0"],
    [`/sys/bus/pci/devices/${VF}/nvidia/current_vgpu_type`, "0"],
  ]);
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("vgpu: a VF another VM runs with on vfio-pci (vmhook's vfio moved it there) is refused at prepare naming that VM, not as a VF without NVIDIA's vGPU manager; nothing changes", async () => {
  const sim = nvidiaHost();
  // win10's journal holds the VF's move to vfio-pci; off nvidia, the VF has no nvidia/ directory.
  const journal = newJournal(sim, WIN10);
  journal.phase = "running";
  journal.entries.push({ plugin: "vfio", event: "prepare", description: `bind ${VF} to vfio-pci (from nvidia)`, undo: { action: "bind-vfio", address: VF, group: "", driver: "nvidia" }, state: "applied", at: new Date().toISOString() });
  writeJournal(sim, journal);
  sim.remove(`/sys/devices/pci0000:40/${VF}/nvidia`);
  sim.remove(`/sys/devices/pci0000:40/${VF}/driver`);
  sim.link(`/sys/devices/pci0000:40/${VF}/driver`, "../../../bus/pci/drivers/vfio-pci");
  const before = sim.snapshot();
  const prepare = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/>` }));
  assert.is(prepare.code, 1, prepare.stderr);
  assert.match(prepare.stderr.split("\n")[0]!, `${VF} is held by VM win10 (vmhook moved it to vfio-pci for it)`);
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), [`${WIN10.uuid}.json`]);
  sim.cleanup();
});

test("vgpu: a type the kernel refuses because another tool set it after the plan is left alone by the rollback", async () => {
  const sim = nvidiaHost();
  const file = `/sys/bus/pci/devices/${VF}/nvidia/current_vgpu_type`;
  const write = sim.write.bind(sim);
  let raced = false;
  sim.write = (target: string, data: string) => {
    if (target === file && !raced) {
      raced = true;
      write(target, data); // another tool sets the same type between vmhook's plan and its write
    }
    write(target, data); // vmhook's own write: EBUSY, nothing changed by it
  };
  const prepare = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/>` }));
  assert.is(prepare.code, 1, prepare.stderr);
  assert.match(prepare.stderr.split("\n")[0]!, `could not set vGPU type 1433 (NVIDIA L40S-12Q) on ${VF}: EBUSY`);
  assert.is(currentType(sim), "1433", "the other tool's vGPU stays");
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

// NVIDIA's names (creatable_vgpu_types, NVIDIA's vGPU type tables): words of letters and digits joined by a space or
// a hyphen; MIG-backed ones carry the slice count (A100-1-5CME), Blackwell's a model of several words. Nothing else.
test("vgpu: every shape of NVIDIA's type names is read as a type (refused only as not creatable here); a '.', '/', '_' or ':' in it is not", async () => {
  const sim = nvidiaHost();
  const firstLine = async (type: string) => (await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu type="${type}"/>` }))).stderr.split("\n")[0]!;
  for (const type of ["GRID A100-4C", "NVIDIA A100-1-5CME", "NVIDIA A100D-3-40C", "GRID M60-0B", "NVIDIA RTX6000-Ada-4Q", "NVIDIA RTX PRO 6000 Blackwell DC-4-24Q", "DC-2-32C", "H100XM-1-10C", "9999"]) {
    assert.match(await firstLine(type), `vGPU type "${type}" cannot be created on ${VF} now`, type);
  }
  for (const type of ["L40S..12Q", "NVIDIA/L40S-12Q", "NVIDIA_L40S-12Q", "NVIDIA:L40S-12Q", "NVIDIA  L40S-12Q", "-L40S-12Q", "L40S-12Q-"]) {
    assert.match(await firstLine(type), `<vmhook:vgpu type="${type}">: type="${type}" is not a vGPU type id or name`, type);
  }
  sim.cleanup();
});

test("vgpu: vf defaults to the domain's only PCI hostdev; a type id works too", async () => {
  const sim = nvidiaHost();
  const xml = domainXml({ pcis: ["41:00.5"], hooks: `<vmhook:vgpu type="1435"/>` });
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
  assert.is(currentType(sim, VF2), "1435");
  assert.is(currentType(sim), "0");
  await runHookEvent(sim, "release", "end", xml);
  assert.is(currentType(sim, VF2), "0");
  sim.cleanup();
});

test("vgpu: a type the VF cannot create fails listing the creatable ones; a VF carrying a type is reused by id, else refused", async () => {
  const sim = nvidiaHost();
  let before = sim.snapshot();
  const unknown = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu type="L40S-96Q"/>` }));
  assert.is(unknown.code, 1);
  assert.match(
    unknown.stderr.split("\n")[0]!,
    `<vmhook:vgpu type="L40S-96Q">: vGPU type "L40S-96Q" cannot be created on ${VF} now; creatable now: 1433 (NVIDIA L40S-12Q), 1434 (NVIDIA L40S-24Q), 1435 (NVIDIA L40S-48Q)`,
  );
  assert.equal(sim.snapshot(), before);

  sim.write(`/sys/bus/pci/devices/${VF}/nvidia/current_vgpu_type`, "1434"); // set by hand
  before = sim.snapshot();
  const reused = domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu type="1434"/>` });
  assert.is((await runHookEvent(sim, "prepare", "begin", reused)).code, 0);
  assert.is((await runHookEvent(sim, "release", "end", reused)).code, 0);
  assert.is(sim.writes.length, 1, "vmhook wrote nothing");
  assert.equal(sim.snapshot(), before);

  const taken = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu type="L40S-12Q"/>` }));
  assert.is(taken.code, 1);
  assert.match(taken.stderr.split("\n")[0]!, `${VF} already carries vGPU type 1434; if that is the one, write type="1434", else pick a free VF`);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("vgpu: a VF carrying the vGPU vmhook set for another domain is refused, not used: that domain clears it at its release", async () => {
  const sim = nvidiaHost();
  const hooks = `<vmhook:vgpu vf="${VF}" type="1433"/>`;
  assert.is((await runHookEvent(sim, "prepare", "begin", domainXml({ ...WIN10, pcis: ["41:00.4"], hooks }), WIN10.name)).code, 0);
  const before = sim.snapshot();
  const writes = sim.writes.length;

  const result = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.4"], hooks }));
  assert.is(result.code, 1, result.stderr);
  assert.match(
    result.stderr.split("\n")[0]!,
    `${hooks.replace("/>", ">")}: ${VF} carries the vGPU type 1433 vmhook set for domain win10, which clears it at its release; start this domain once win10 has stopped, or give it another VF`,
  );
  const doctor = await runDoctor(sim, { file: "vm.xml", xml: domainXml({ pcis: ["41:00.4"], hooks }) });
  const finding = doctor.domain!.findings.find((each) => each.plugin === "vgpu");
  assert.equal([finding?.status, finding?.reason], ["fail", result.stderr.split("\n")[0]!.replace(/^vmhook: /, "")]);
  assert.is(sim.writes.length, writes);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("vgpu: a type not creatable now (the GPU's other vGPUs) is a refusal of this host: validate exits 1, plan marks it REFUSED, enable stores it with a warning, prepare changes nothing", async () => {
  const sim = nvidiaHost();
  // Another VM's L40S-24Q on the first VF leaves only 24Q creatable on the second (one time-sliced type per GPU).
  sim.file(`/sys/bus/pci/devices/${VF2}/nvidia/creatable_vgpu_types`, "ID    : vGPU Name\n1434 : NVIDIA L40S-24Q\n");
  const xml = domainXml({ pcis: ["41:00.5"], hooks: `<vmhook:vgpu type="L40S-12Q"/>` });
  sim.file("/vm.xml", xml);
  const before = sim.snapshot();
  const refusal = `<vmhook:vgpu type="L40S-12Q">: vGPU type "L40S-12Q" cannot be created on ${VF2} now; creatable now: 1434 (NVIDIA L40S-24Q)`;

  const validated = await cli(["validate", sim.resolve("/vm.xml"), "--root", sim.root]);
  assert.is(validated.code, 1, validated.stdout);
  assert.match(validated.stdout, `valid, but prepare would refuse it on this host:\n  ${refusal}`);
  const planned = await cli(["plan", sim.resolve("/vm.xml"), "--root", sim.root]);
  assert.is(planned.code, 1, planned.stderr);
  assert.match(planned.stdout, `REFUSED: ${refusal}`);
  const prepared = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(prepared.code, 1);
  assert.match(prepared.stderr.split("\n")[0]!, refusal);

  const libvirt = fakeLibvirt("vm", xml.replace(/<metadata>.*<\/metadata>/s, ""));
  try {
    const enabled = await cli(["enable", "vm", "vgpu", `vf=${VF2}`, "type=L40S-12Q", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(enabled.stderr, `vmhook: warning: a start of vm on this host now would be refused: ${refusal.replace("<vmhook:vgpu ", `<vmhook:vgpu vf="${VF2}" `)}`);
    assert.match(libvirt.xml("config"), `<vmhook:vgpu vf="${VF2}" type="L40S-12Q"/>`);
  } finally {
    libvirt.cleanup();
  }
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("vgpu: a PCI function without NVIDIA's vGPU files, or a vf not assigned to the domain, is refused", async () => {
  const sim = nvidiaHost();
  sim.dir("/sys/devices/pci0000:00/0000:01:00.0").link("/sys/bus/pci/devices/0000:01:00.0", "../../../devices/pci0000:00/0000:01:00.0");
  const plain = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["01:00.0"], hooks: `<vmhook:vgpu type="L40S-12Q"/>` }));
  assert.is(plain.code, 1);
  assert.match(plain.stderr.split("\n")[0]!, `0000:01:00.0 has no nvidia/current_vgpu_type: it is not a virtual function of a GPU driven by NVIDIA's vGPU manager 17 or later`);
  const unassigned = await runHookEvent(sim, "prepare", "begin", domainXml({ pcis: ["41:00.5"], hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/>` }));
  assert.is(unassigned.code, 1);
  assert.match(unassigned.stderr.split("\n")[0]!, `vf="${VF}" is not a PCI <hostdev> of this domain`);
  assert.equal(sim.writes, []);
  sim.cleanup();
});

test("vgpu: a VF whose <hostdev> is managed='yes' is refused before anything changes: libvirt would move it off NVIDIA's driver", async () => {
  const sim = nvidiaHost();
  const before = sim.snapshot();
  const xml = domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu type="L40S-12Q"/>` }).replace("managed='no'", "managed='yes'");
  const result = await runHookEvent(sim, "prepare", "begin", xml);
  assert.is(result.code, 1, result.stderr);
  assert.match(
    result.stderr.split("\n")[0]!,
    `<vmhook:vgpu type="L40S-12Q">: the <hostdev> of VF ${VF} is managed='yes': libvirt would unbind the VF from NVIDIA's driver, which carries the vGPU, and bind it to vfio-pci; set managed='no' in that <hostdev>`,
  );
  assert.equal(sim.writes, []);
  assert.equal(sim.snapshot(), before);
  sim.cleanup();
});

test("a failure in a later plugin removes the mdevs created before it", async () => {
  // One host with both: GVT-g mdevs, then an NVIDIA VF whose type write fails.
  const sim = nvidiaHost(gvtHost(), [VF]);
  sim.failWrite(`/sys/bus/pci/devices/${VF}/nvidia/current_vgpu_type`, "EIO");
  const before = sim.snapshot();

  const result = await runHookEvent(
    sim,
    "prepare",
    "begin",
    domainXml({
      mdevs: [UUID_A, UUID_B],
      pcis: ["41:00.4"],
      hooks: `<vmhook:mdev type="i915-GVTg_V5_4" uuid="${UUID_A}"/><vmhook:mdev type="i915-GVTg_V5_8" uuid="${UUID_B}"/><vmhook:vgpu type="L40S-12Q"/>`,
    }),
  );
  assert.is(result.code, 1);
  assert.match(result.stderr.split("\n")[0]!, `vmhook: could not set vGPU type 1433 (NVIDIA L40S-12Q) on ${VF}: EIO`);
  assert.equal(
    sim.writes.map((w) => w.path).filter((p) => p.endsWith("/remove")),
    [`/sys/bus/mdev/devices/${UUID_B}/remove`, `/sys/bus/mdev/devices/${UUID_A}/remove`],
  );
  assert.equal(sim.snapshot(), before);
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

// ---- writes into a driver that never return (lib/bounded-write.ts) ----------------

interface StuckCase {
  what: string;
  host: () => SimHost;
  xml: string;
  event: "prepare" | "release";
  /** What the note is filed under: the mdev's UUID, the VF's address. */
  device: string;
  driver: string;
  file: string;
  value: string;
}

const GVT_XML = domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4"/>` });
const GVT_CREATE = `/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_4/create`;
const VGPU_XML = domainXml({ pcis: ["41:00.4"], hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/>` });
const VGPU_FILE = `/sys/bus/pci/devices/${VF}/nvidia/current_vgpu_type`;
const STUCK_CASES: StuckCase[] = [
  { what: "an mdev's create", host: gvtHost, xml: GVT_XML, event: "prepare", device: UUID_A, driver: "i915", file: GVT_CREATE, value: UUID_A },
  // vfio's unregister waits for the last user of the device: a leaked fd of /dev/vfio/N.
  { what: "an mdev's remove, its vfio device still held open", host: gvtHost, xml: GVT_XML, event: "release", device: UUID_A, driver: "intel_vgpu_mdev", file: `/sys/bus/mdev/devices/${UUID_A}/remove`, value: "1" },
  { what: "a VF's vGPU type set", host: nvidiaHost, xml: VGPU_XML, event: "prepare", device: VF, driver: "nvidia", file: VGPU_FILE, value: "1433" },
  { what: "a VF's vGPU type cleared", host: nvidiaHost, xml: VGPU_XML, event: "release", device: VF, driver: "nvidia", file: VGPU_FILE, value: "0" },
];

for (const stuck of STUCK_CASES) {
  test(`${stuck.what} that never returns: the ${stuck.event} ends naming device, driver and file; a note is left; status and doctor show it; recover refuses, then undoes exactly once it has returned`, async () => {
    const sim = stuck.host();
    const before = sim.snapshot();
    const [op, subop] = stuck.event === "prepare" ? ["prepare", "begin"] : ["release", "end"];
    if (stuck.event === "release") assert.is((await runHookEvent(sim, "prepare", "begin", stuck.xml)).code, 0);
    sim.hangWrite(stuck.file, stuck.value);
    const hook = await runHookEvent(sim, op, subop, stuck.xml);
    const [pid] = sim.hung.map((write) => write.pid);
    assert.ok(pid, "the write reached the driver");
    assert.is(hook.code, stuck.event === "prepare" ? 1 : 0, hook.stderr);
    const stuckAt = `${stuck.device}: driver ${stuck.driver} did not return`;
    assert.match(hook.stderr, `${stuckAt} within 30 s from writing "${stuck.value}" to ${stuck.file}; vmhook left its helper (pid ${pid}) blocked in the kernel and gave up`);
    // The write may still take effect: the record stays for vmhook recover.
    assert.equal(readJournal(sim, DOMAIN_UUID)?.entries.map((entry) => entry.state), ["undo-failed"]);
    const note = JSON.parse(sim.read(paths.stuckWrite(stuck.device)));
    assert.equal([note.pid, note.device, note.driver, note.file, note.value], [pid, stuck.device, stuck.driver, stuck.file, stuck.value]);

    const shown = `${stuckAt} from writing "${stuck.value}" to ${stuck.file}`;
    const status = await cli(["--root", sim.root, "status"]);
    assert.match(status.stdout, `stuck driver: ${shown}`);
    assert.match(status.stdout, `its helper, pid ${pid}, is still blocked in the kernel (state D: uninterruptible)`);
    assert.match((await cli(["--root", sim.root, "doctor"])).stdout, `fail  stuck driver: ${shown}`);
    const writesBefore = sim.writes.length;
    const refused = await cli(["recover", "--force", "--root", sim.root], sim);
    assert.is(refused.code, 1);
    assert.match(refused.stderr, `${shown} (since `);
    assert.equal(sim.writes.slice(writesBefore), [], "nothing is written while the driver holds the device");

    sim.finishHungWrites();
    if (stuck.event === "prepare") assert.not.equal(sim.snapshot(), before, "the write took effect late");
    const recovered = await cli(["recover", "--force", "--root", sim.root], sim);
    assert.is(recovered.code, 0, recovered.stderr);
    assert.equal(sim.snapshot(), before);
    assert.equal(sim.stateFiles(), []);
    sim.cleanup();
  });
}

test("an mdev's remove refused (EBUSY, older kernels) or never returning while a process holds its vfio device: the error names the process and /dev/vfio/N, not lsof on sysfs", async () => {
  for (const how of ["refused", "never returns"] as const) {
    const sim = gvtHost();
    const remove = `/sys/bus/mdev/devices/${UUID_A}/remove`;
    assert.is((await runHookEvent(sim, "prepare", "begin", GVT_XML)).code, 0);
    // The mdev's vfio group (vfio_register_emulated_iommu_dev gives it one) and its cdev (iommufd), held by a process the VM left.
    sim.link(`${GPU_DIR}/${UUID_A}/iommu_group`, "../../../kernel/iommu_groups/12").dir(`${GPU_DIR}/${UUID_A}/vfio-dev/vfio3`).file("/dev/vfio/12").file("/dev/vfio/devices/vfio3");
    sim.file("/proc/777/comm", "qemu-system-x86").dir("/proc/777/fd").link("/proc/777/fd/0", "/dev/null").link("/proc/777/fd/9", "/dev/vfio/12");
    if (how === "refused") sim.failWrite(remove, "EBUSY");
    else sim.hangWrite(remove, "1");
    const release = await runHookEvent(sim, "release", "end", GVT_XML);
    assert.is(release.code, 0, release.stderr);
    const error = release.stderr.split("\n").find((line) => line.includes(`mdev ${UUID_A}`) || line.includes(`${UUID_A}: driver`)) ?? release.stderr;
    if (how === "refused") {
      assert.match(error, `could not remove mdev ${UUID_A}: `);
      assert.match(error, `pid 777 (qemu-system-x86) holds /dev/vfio/12, the mdev's vfio device: end it, then run vmhook recover`);
    } else {
      assert.match(error, `${UUID_A}: driver intel_vgpu_mdev did not return within 30 s`);
      assert.match(error, `the remove waits until the mdev's vfio device is closed, and pid 777 (qemu-system-x86) holds /dev/vfio/12: end it and the remove finishes`);
    }
    assert.not.match(release.stderr, "lsof");
    assert.equal(readJournal(sim, DOMAIN_UUID)?.entries.map((entry) => entry.state), ["undo-failed"]);
    sim.cleanup();
  }
});

test("vgpu: a clear NVIDIA's driver refuses while a process holds the VF's vfio device: the error names the process and /dev/vfio/N", async () => {
  const sim = nvidiaHost();
  assert.is((await runHookEvent(sim, "prepare", "begin", VGPU_XML)).code, 0);
  sim.link(`/sys/devices/pci0000:40/${VF}/iommu_group`, "../../../kernel/iommu_groups/40").file("/dev/vfio/40");
  sim.file("/proc/777/comm", "qemu-system-x86").dir("/proc/777/fd").link("/proc/777/fd/9", "/dev/vfio/40");
  sim.failWrite(VGPU_FILE, "EBUSY");
  const release = await runHookEvent(sim, "release", "end", VGPU_XML);
  assert.is(release.code, 0, release.stderr);
  assert.match(release.stderr, `could not clear the vGPU on ${VF}: `);
  assert.match(release.stderr, `pid 777 (qemu-system-x86) holds /dev/vfio/40, the VF's vfio device: end it, then run vmhook recover`);
  assert.equal(readJournal(sim, DOMAIN_UUID)?.entries.map((entry) => entry.state), ["undo-failed"]);
  sim.cleanup();
});

test("an mdev's remove and a vGPU's clear go ahead when the device's vfio files cannot be looked at (sysfs answering EIO): those only name who holds the device in an error; the release used to fail on that read, the mdev and the type left in place", async () => {
  for (const [name, host, xml, device] of [
    ["mdev", gvtHost, GVT_XML, `/sys/bus/mdev/devices/${UUID_A}`],
    ["vgpu", nvidiaHost, VGPU_XML, `/sys/bus/pci/devices/${VF}`],
  ] as const) {
    const sim = host();
    const before = sim.snapshot();
    assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 0);
    sim.failReadlink(`${device}/iommu_group`, "EIO").failList(`${device}/vfio-dev`, "EIO");
    const release = await runHookEvent(sim, "release", "end", xml);
    assert.is(release.code, 0);
    assert.not.match(release.stderr, "could not be undone", `${name}: ${release.stderr}`);
    assert.equal(sim.snapshot(), before, name);
    assert.equal(sim.stateFiles(), [], name);
    sim.cleanup();
  }
});

/** A prepare whose write into `file` never returns, then fails after all: its helper ends having made nothing, and the record stays (undo-failed) for vmhook recover. */
async function prepareWhoseWriteFailsLate(sim: SimHost, file: string, xml: string): Promise<void> {
  sim.hangWrite(file);
  assert.is((await runHookEvent(sim, "prepare", "begin", xml)).code, 1);
  const [{ pid }] = sim.hung.splice(0);
  sim.remove(`/proc/${pid}`);
  sim.finishHungWrites(); // no hang is left: the driver returns from every later write
}

test("an mdev's create that never returned, then failed: an mdev of another type that mdevctl made with that UUID since is not vmhook's, and recover leaves it", async () => {
  const sim = gvtHost();
  // The driver's create fails: nothing was made (the kernel gave the UUID back). Then mdevctl takes that UUID for another type.
  await prepareWhoseWriteFailsLate(sim, GVT_CREATE, GVT_XML);
  sim.write(`/sys/class/mdev_bus/${GPU}/mdev_supported_types/i915-GVTg_V5_8/create`, UUID_A);
  const writesBefore = sim.writes.length;

  const recovered = await cli(["recover", "--force", "--root", sim.root], sim);
  assert.is(recovered.code, 0, recovered.stderr);
  assert.match(recovered.stderr, `mdev ${UUID_A} is now i915-GVTg_V5_8 on ${GPU}, not the i915-GVTg_V5_4 on ${GPU} vmhook created: another tool made it; it stays`);
  assert.is(sim.readlink(`/sys/bus/mdev/devices/${UUID_A}/mdev_type`), "../mdev_supported_types/i915-GVTg_V5_8");
  assert.equal(sim.writes.slice(writesBefore), [], "nothing is written to mdevctl's mdev");
  assert.equal(sim.stateFiles(), []);
  sim.cleanup();
});

test("while an mdev's create is blocked, another domain's start with that UUID is refused before anything is read or written", async () => {
  const sim = gvtHost();
  sim.hangWrite(GVT_CREATE);
  assert.is((await runHookEvent(sim, "prepare", "begin", GVT_XML)).code, 1);
  const writesBefore = sim.writes.length;
  const other = await runHookEvent(sim, "prepare", "begin", domainXml({ mdevs: [UUID_A], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4"/>`, uuid: "11111111-2222-4333-8444-555555555555", name: "other" }), "other");
  assert.is(other.code, 1);
  assert.match(other.stderr.split("\n")[0]!, `${UUID_A}: driver i915 did not return from writing "${UUID_A}" to ${GVT_CREATE}`);
  assert.match(other.stderr, `vmhook writes nothing to ${UUID_A} until it has returned`);
  assert.match(other.stderr, "the host was left as it was (0 change(s) undone)");
  assert.equal(sim.writes.slice(writesBefore), []);
  sim.cleanup();
});

/** Another domain naming the same mdev or VF as the domain "vm" of GVT_XML and VGPU_XML. */
const OTHER = { uuid: "11111111-2222-4333-8444-555555555555", name: "other" };
const LEFT_IN_JOURNAL = [
  {
    what: "an mdev's create that never returned, then failed, leaves its UUID in the journal: another domain naming that UUID is refused until recover has settled it, as that record's undo would remove the other domain's mdev",
    host: gvtHost,
    file: GVT_CREATE,
    xml: GVT_XML,
    hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4"/>`,
    parts: { mdevs: [UUID_A] },
    refusal: `mdev ${UUID_A} does not exist, but the journal of domain vm holds a create of it (failed or cut off): vm's release or vmhook recover removes an mdev ${UUID_A}, whoever made it; start this domain once vm has stopped and vmhook status shows nothing of it, or give it an mdev <hostdev> with its own UUID (uuidgen)`,
    made: (sim: SimHost) => mdevType(sim, UUID_A) === "i915-GVTg_V5_4",
  },
  {
    // NVIDIA's driver refuses the set after all: the VF carries no type.
    what: "vgpu: a type set that never returned, then failed, leaves the VF in the journal: another domain naming that VF is refused until recover has settled it, as that record's undo would clear the other domain's vGPU",
    host: nvidiaHost,
    file: VGPU_FILE,
    xml: VGPU_XML,
    hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/>`,
    parts: { pcis: ["41:00.4"] },
    refusal: `${VF} carries no vGPU type, but the journal of domain vm holds a set of type 1433 on it (failed or cut off): vm's release or vmhook recover clears type 1433 on ${VF}, whoever set it; start this domain once vm has stopped and vmhook status shows nothing of it, or give it another VF`,
    made: (sim: SimHost) => sim.readTrimmed(VGPU_FILE) === "1433",
  },
];

for (const left of LEFT_IN_JOURNAL) {
  test(left.what, async () => {
    const sim = left.host();
    await prepareWhoseWriteFailsLate(sim, left.file, left.xml);
    const before = sim.snapshot();
    const writesBefore = sim.writes.length;
    const otherXml = domainXml({ ...left.parts, hooks: left.hooks, ...OTHER });

    const refused = await runHookEvent(sim, "prepare", "begin", otherXml, OTHER.name);
    assert.is(refused.code, 1, "other made what vm's recover would then undo");
    assert.match(refused.stderr.split("\n")[0]!, `${left.hooks.replace("/>", ">")}: ${left.refusal}`);
    assert.equal(sim.writes.slice(writesBefore), []);
    assert.equal(sim.snapshot(), before);

    assert.is((await cli(["recover", "--force", "--root", sim.root], sim)).code, 0);
    assert.is((await runHookEvent(sim, "prepare", "begin", otherXml, OTHER.name)).code, 0);
    assert.ok(left.made(sim));
    sim.cleanup();
  });
}

test("mdevs are planned and made under the host-wide lock: while another vmhook holds it (a VM starting or releasing), prepare waits and changes nothing; two starts take turns, so neither plans from the other's half-done create", async () => {
  const sim = gvtHost();
  sim.file("/etc/vmhook/vmhook.json", JSON.stringify({ deadlineSeconds: 1 }));
  const before = sim.snapshot();
  const { dlopen, FFIType } = await import("bun:ffi");
  const libc = dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
  sim.dir(paths.stateDir);
  const fd = fs.openSync(sim.resolve(paths.hostLock), "a");
  try {
    assert.is(libc.symbols.flock(fd, 2 /* LOCK_EX */), 0);
    const result = await runHookEvent(sim, "prepare", "begin", GVT_XML);
    assert.is(result.code, 1, "the mdev was created while another vmhook held the host lock");
    assert.match(result.stderr.split("\n")[0]!, "another vmhook held the host-wide lock");
    assert.equal(sim.snapshot(), before);
  } finally {
    fs.closeSync(fd);
    libc.close();
  }
  assert.is((await runHookEvent(sim, "prepare", "begin", GVT_XML)).code, 0);
  assert.is(mdevType(sim, UUID_A), "i915-GVTg_V5_4");
  sim.cleanup();
});

test("vmhook plan lists exactly the steps prepare runs (mdev and vgpu)", async () => {
  const sim = gvtHost();
  const xml = domainXml({ mdevs: [UUID_A, UUID_B], hooks: `<vmhook:mdev parent="${GPU}" type="i915-GVTg_V5_4" uuid="${UUID_A}"/><vmhook:mdev type="i915-GVTg_V5_8" uuid="${UUID_B}"/>` });
  assert.equal(await assertPlanIsPrepare(sim, xml), [`mdev: create mdev ${UUID_A} (i915-GVTg_V5_4 on ${GPU})`, `mdev: create mdev ${UUID_B} (i915-GVTg_V5_8 on ${GPU})`]);
  const nvidia = nvidiaHost();
  const vgpuXml = domainXml({ pcis: ["41:00.4", "41:00.5"], hooks: `<vmhook:vgpu vf="${VF}" type="L40S-12Q"/><vmhook:vgpu vf="41:00.5" type="NVIDIA L40S-24Q"/>` });
  assert.equal((await assertPlanIsPrepare(nvidia, vgpuXml)).length, 2);
});

test.run();
