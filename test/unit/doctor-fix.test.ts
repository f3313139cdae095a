// `vmhook doctor --fix`: every piece of doctor's domain-XML advice becomes an
// edit, shown as a unified diff (golden file); a domain that follows the
// advice needs no change.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { fixDomainXml } from "../../lib/diagnostics/domain-fixes.ts";
import { parseDomain } from "../../lib/domain.ts";
import { unifiedDiff } from "../../lib/text-diff.ts";
import { degradedWin11, NVIDIA_CARD } from "../helpers/degraded-domain.ts";
import { cli } from "../helpers/cli.ts";
import { assertGolden } from "../helpers/golden.ts";
import { addPciDevice } from "../helpers/pci-hosts.ts";
import { SimHost } from "../helpers/simhost.ts";

function nvidiaHost(): SimHost {
  const sim = new SimHost();
  for (const device of NVIDIA_CARD) addPciDevice(sim, device);
  return sim;
}

test("the degraded win11 example: each piece of advice is one edit, shown as a unified diff", () => {
  const sim = nvidiaHost();
  try {
    const fixed = fixDomainXml(sim, degradedWin11(), "win11.xml");
    assert.equal(fixed.fixes.map((fix) => fix.element), [
      "<features><kvm><hidden>, <hyperv><vendor_id>",
      "<disk> sda",
      "<interface>",
      "<memballoon model='none'/>",
      "<memoryBacking><hugepages/>",
      "<hostdev> 0000:01:00.1",
    ]);
    assert.match(unifiedDiff(fixed.before, fixed.after, "win11 (now)", "win11 (fixed)"), '+    <memballoon model="none"/>');
    const domain = parseDomain(fixed.after);
    assert.equal(domain.hostdevs.map((hostdev) => hostdev.type === "pci" && hostdev.address), ["0000:01:00.0", "0000:01:00.1"]);
    assert.equal(domain.hugepages, { pages: [{ sizeKiB: 1048576, nodeset: undefined }] });
    // fixing the fixed domain changes nothing more
    assert.equal(fixDomainXml(sim, fixed.after, "win11.xml").fixes, []);
  } finally {
    sim.cleanup();
  }
});

test("the GPU's audio function added without vfio handing it over: the reason names what really takes it (its IOMMU group), never vfio", () => {
  const cases: { metadata: string; groups?: [number, number]; reason: string }[] = [
    { metadata: `<vmhook:vfio single-gpu="auto"/>`, reason: "on the same card as 0000:01:00.0: vfio takes it from the host anyway, so the VM should have it" },
    { metadata: `<vmhook:vfio single-gpu="auto" include-slot="no"/>`, groups: [7, 7], reason: "on the same card as 0000:01:00.0 and in its IOMMU group 7: QEMU can open 0000:01:00.0 only once every device of the group is off the host's drivers, and libvirt detaches only the <hostdev>s, so the VM should have it" },
    { metadata: "", groups: [7, 7], reason: "on the same card as 0000:01:00.0 and in its IOMMU group 7: QEMU can open 0000:01:00.0 only once every device of the group is off the host's drivers, and libvirt detaches only the <hostdev>s, so the VM should have it" },
    { metadata: "", groups: [7, 8], reason: "on the same card as 0000:01:00.0: without a <hostdev> the VM gets the GPU without this function (its HDMI audio or USB-C)" },
    { metadata: "", reason: "on the same card as 0000:01:00.0: without a <hostdev> the VM gets the GPU without this function (its HDMI audio or USB-C)" },
  ];
  for (const { metadata, groups, reason } of cases) {
    const sim = new SimHost();
    try {
      NVIDIA_CARD.forEach((device, index) => addPciDevice(sim, { ...device, group: groups?.[index] }));
      const xml = degradedWin11().replace(`<vmhook:vfio single-gpu="auto"/>`, metadata);
      const sibling = fixDomainXml(sim, xml, "win11.xml").fixes.find((fix) => fix.element === "<hostdev> 0000:01:00.1");
      assert.is(sibling?.reason, reason, metadata);
    } finally {
      sim.cleanup();
    }
  }
});

test("an APU's iGPU (AMD Phoenix) whose slot holds the host's USB controllers, PSP and audio, each in its own IOMMU group: only its own HDMI audio is added, never the platform's functions (another vendor, AMD's 1022 beside the GPU's 1002)", () => {
  const sim = new SimHost();
  try {
    const functions = [
      ["0x030000", "0x1002", "0x15bf"], // Radeon 780M
      ["0x040300", "0x1002", "0x1640"], // its HDMI audio
      ["0x108000", "0x1022", "0x15c7"], // PSP/CCP
      ["0x0c0330", "0x1022", "0x15b9"], // USB controllers: the host's ports
      ["0x0c0330", "0x1022", "0x15ba"],
      ["0x048000", "0x1022", "0x15e2"], // audio coprocessor
      ["0x040300", "0x1022", "0x15e3"], // HD audio: the host's speakers
    ];
    functions.forEach(([classCode, vendor, device], fn) => addPciDevice(sim, { address: `0000:01:00.${fn}`, classCode: classCode!, vendor: vendor!, device: device!, group: 20 + fn }));
    const added = fixDomainXml(sim, degradedWin11(), "win11.xml").fixes.filter((fix) => fix.element.startsWith("<hostdev>"));
    assert.equal(added.map((fix) => fix.element), ["<hostdev> 0000:01:00.1"]);
  } finally {
    sim.cleanup();
  }
});

test("vmhook doctor --fix FILE prints the diff, each change's reason, and how to apply it (golden)", async () => {
  const sim = nvidiaHost();
  try {
    fs.writeFileSync(sim.resolve("/win11.xml"), degradedWin11());
    const before = sim.snapshot();
    const shown = await cli(["doctor", "--fix", sim.resolve("/win11.xml"), "--root", sim.root]);
    assert.is(shown.code, 0, shown.stderr);
    assertGolden("doctor-fix-win11.txt", shown.stdout.replaceAll(sim.resolve("/win11.xml"), "win11.xml"));
    const refused = await cli(["doctor", "--fix", "--apply", sim.resolve("/win11.xml"), "--root", sim.root]);
    assert.is(refused.code, 1);
    assert.match(refused.stderr, "--apply defines the domain in libvirt: name the domain (vmhook doctor --fix --apply VM), not the file");
    assert.equal(sim.snapshot(), before);
  } finally {
    sim.cleanup();
  }
});

test("the example as shipped follows the advice: nothing to fix", () => {
  const sim = nvidiaHost();
  try {
    const example = fs.readFileSync(fileURLToPath(new URL("../../examples/domains/win11-gpu.xml", import.meta.url)), "utf8");
    assert.equal(fixDomainXml(sim, example, "win11.xml").fixes, []);
  } finally {
    sim.cleanup();
  }
});

test("without the NVIDIA card on this host: no KVM hiding and no slot functions to add (nothing is guessed)", () => {
  const sim = new SimHost();
  try {
    const fixes = fixDomainXml(sim, degradedWin11(), "win11.xml").fixes.map((fix) => fix.element);
    assert.equal(fixes, ["<disk> sda", "<interface>", "<memballoon model='none'/>", "<memoryBacking><hugepages/>"]);
  } finally {
    sim.cleanup();
  }
});

test("<vmhook:hugepages> without size gets a plain <hugepages/>; an existing <memoryBacking> keeps its children", () => {
  const sim = new SimHost();
  try {
    const xml = `<domain type='qemu'>\n  <name>vm</name>\n  <uuid>e0e0e0e0-0000-4000-8000-0000000000e0</uuid>\n  <metadata>\n    <vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages/></vmhook:hooks>\n  </metadata>\n  <memory unit='MiB'>64</memory>\n  <memoryBacking>\n    <nosharepages/>\n  </memoryBacking>\n</domain>\n`;
    const fixed = fixDomainXml(sim, xml, "vm.xml");
    assert.match(fixed.after, "<memoryBacking>\n    <nosharepages/>\n    <hugepages/>\n  </memoryBacking>");
  } finally {
    sim.cleanup();
  }
});

// A virsh that answers as libvirt does for what --apply needs: dumpxml leaves
// the graphics password out unless --security-info is given
// (VIR_DOMAIN_XML_SECURE); define stores exactly the XML it is given (and
// makes a transient domain persistent); dominfo says whether it is persistent.
const FAKE_VIRSH = `#!/bin/sh
state="$VMHOOK_TEST_VIRSH_STATE"
case " $* " in
  *" dominfo "*) if [ -e "$state/transient" ]; then echo "Persistent:     no"; else echo "Persistent:     yes"; fi ;;
  *" dumpxml "*)
    case " $* " in
      *" --security-info "*) if [ -e "$state/changed.xml" ]; then cat "$state/changed.xml"; else cat "$state/domain.xml"; fi ;;
      *) sed -e "s/ passwd='[^']*'//" "$state/domain.xml" ;;
    esac ;;
  *" define "*) cat > "$state/domain.xml"; rm -f "$state/transient"; echo "Domain 'win11' defined from /dev/stdin" ;;
  *) echo "error: fake virsh: unsupported: $*" >&2; exit 1 ;;
esac
`;

/**
 * Runs `vmhook doctor --fix --apply win11` against the fake virsh, whose
 * domain is `stored` (and, for the read with secrets, `secureRead` when
 * given; made by virsh create when `transient`); `check` gets the outcome,
 * what libvirt holds after it and the host.
 */
async function applyWithFakeVirsh(
  stored: string,
  check: (applied: { code: number; stdout: string; stderr: string }, defined: string, sim: SimHost) => void,
  { secureRead, transient = false, prepare }: { secureRead?: string; transient?: boolean; prepare?: (sim: SimHost) => void } = {},
): Promise<void> {
  const sim = nvidiaHost();
  prepare?.(sim);
  const bin = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-fake-virsh-"));
  const oldPath = process.env.PATH;
  try {
    fs.writeFileSync(path.join(bin, "virsh"), FAKE_VIRSH, { mode: 0o755 });
    fs.writeFileSync(path.join(bin, "domain.xml"), stored);
    if (secureRead !== undefined) fs.writeFileSync(path.join(bin, "changed.xml"), secureRead);
    if (transient) fs.writeFileSync(path.join(bin, "transient"), "");
    process.env.PATH = `${bin}:${oldPath}`;
    process.env.VMHOOK_TEST_VIRSH_STATE = bin;
    const applied = await cli(["doctor", "--fix", "--apply", "win11", "--root", sim.root]);
    check(applied, fs.readFileSync(path.join(bin, "domain.xml"), "utf8"), sim);
  } finally {
    process.env.PATH = oldPath;
    delete process.env.VMHOOK_TEST_VIRSH_STATE;
    fs.rmSync(bin, { recursive: true, force: true });
    sim.cleanup();
  }
}

test("doctor --fix --apply VM keeps the domain's graphics password, in the defined domain and in the backup, and never prints it", async () => {
  const stored = degradedWin11().replace("</devices>", "<graphics type='vnc' port='-1' autoport='yes' passwd='s3cret'/></devices>");
  await applyWithFakeVirsh(stored, (applied, defined) => {
    assert.is(applied.code, 0, applied.stderr);
    assert.not.match(applied.stdout, "s3cret");
    assert.match(defined, /<memballoon model=["']none["']/, "the fixes were defined");
    assert.match(defined, /passwd=["']s3cret["']/, "the VNC password stays");
    const backup = /the old XML is in (\S+) /.exec(applied.stdout)?.[1];
    assert.is(fs.readFileSync(backup!, "utf8"), stored, "the backup is the domain as it was, password included");
  });
});

test("doctor --fix --apply VM --root DIR: the backup message names the file where it is, so its virsh define command works as printed", async () => {
  await applyWithFakeVirsh(degradedWin11(), (applied, _, sim) => {
    assert.is(applied.code, 0, applied.stderr);
    const [, kept, putBack] = /the old XML is in (\S+) \(virsh define (\S+) puts it back\)/.exec(applied.stdout) ?? [];
    assert.is(putBack, kept);
    assert.ok(kept?.startsWith(`${sim.root}/var/lib/vmhook/backups/`), `${kept} is the backup's path under --root`);
    assert.is(fs.readFileSync(kept!, "utf8"), degradedWin11(), "the file named is the backup");
  });
});

test("doctor --fix --apply VM refuses, defining nothing, when the domain changed between its two reads (the fixes differ)", async () => {
  const stored = degradedWin11();
  // Someone else fixed the balloon in between: the second read (with secrets) needs one fix less.
  const changed = stored.replace("<memballoon model='virtio'/>", "<memballoon model='none'/>");
  assert.not.equal(changed, stored);
  await applyWithFakeVirsh(
    stored,
    (applied, defined, sim) => {
      assert.is(applied.code, 1);
      assert.match(applied.stderr, "win11 changed while vmhook read it (the fixes differ between two reads); nothing was defined: run vmhook doctor --fix --apply win11 again");
      assert.is(defined, stored, "nothing was defined");
      assert.not.ok(fs.existsSync(sim.resolve("/var/lib/vmhook/backups")) && fs.readdirSync(sim.resolve("/var/lib/vmhook/backups")).length > 0, "no backup was written");
    },
    { secureRead: changed },
  );
});

test("doctor --fix --apply of a transient VM (virsh create): refused with the diff, nothing defined, as defining it would make it persistent", async () => {
  const stored = degradedWin11();
  await applyWithFakeVirsh(
    stored,
    (applied, defined, sim) => {
      assert.is(applied.code, 1, applied.stdout);
      assert.match(applied.stderr, "win11 is a transient VM (made by virsh create): defining it would make it persistent, and its next start is made from the XML given to virsh create; nothing was defined: make these changes there");
      for (const shown of ["+++ win11 (fixed)", "+  <memoryBacking>"]) assert.match(applied.stderr, shown, "the changes are shown");
      assert.is(defined, stored, "nothing was defined");
      assert.not.ok(fs.existsSync(sim.resolve("/var/lib/vmhook/backups")), "no backup was written");
    },
    { transient: true },
  );
});

test("doctor --fix --apply VM that cannot write its backup (/var/lib/vmhook a file) names the backup's directory where it is, the errno and a fix, and defines nothing", async () => {
  const stored = degradedWin11();
  await applyWithFakeVirsh(
    stored,
    (applied, defined, sim) => {
      assert.is(applied.code, 1, applied.stdout);
      assert.match(applied.stderr, `cannot mkdir ${sim.root}/var/lib/vmhook/backups (ENOTDIR); a directory on the way to it is missing or is a file: check each part of the path (namei -l ${sim.root}/var/lib/vmhook/backups)`);
      assert.is(defined, stored, "nothing was defined");
    },
    { prepare: (sim) => sim.file("/var/lib/vmhook", "") },
  );
});

test.run();
