// vmhook config / enable / disable against a stand-in virsh: what they write
// goes to the definition they read, and a change made by someone else while
// they worked is never overwritten.
import * as fs from "node:fs";
import * as path from "node:path";
import { DOMParser } from "@xmldom/xmldom";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { NAMESPACE_URI, paths } from "../../lib/paths.ts";
import { cli } from "../helpers/cli.ts";
import { fakeLibvirt, type FakeLibvirt } from "../helpers/fake-virsh.ts";
import { desktopHost } from "../helpers/pci-hosts.ts";
import type { SimHost } from "../helpers/simhost.ts";

const DOMAIN = `<domain type="kvm">
  <name>win11</name>
  <uuid>6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b</uuid>
  <memory unit="KiB">1048576</memory>
  <vcpu>2</vcpu>
  <metadata>
    <vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:nosleep/></vmhook:hooks>
  </metadata>
  <os><type arch="x86_64" machine="q35">hvm</type></os>
</domain>
`;

/** The vmhook elements of a domain XML, as local names in order. */
function elements(xml: string): string[] {
  return [...xml.matchAll(/<vmhook:(\w+)[\s/>]/g)].map((match) => match[1]!).filter((name) => name !== "hooks");
}

/** An $EDITOR that writes `content` into the file and runs `meanwhile` (what happens while the user edits). */
function editor(libvirt: FakeLibvirt, content: string, meanwhile: string): string {
  const script = path.join(libvirt.dir, "editor.sh");
  fs.writeFileSync(script, `#!/bin/sh\nprintf '%s' '${content}' > "$1"\n${meanwhile}\n`, { mode: 0o755 });
  return script;
}

async function withDomain(check: (sim: SimHost, libvirt: FakeLibvirt) => Promise<void>, xml = DOMAIN, name = "win11"): Promise<void> {
  const sim = desktopHost();
  const libvirt = fakeLibvirt(name, xml.replace("<name>win11</name>", `<name>${name}</name>`));
  const savedEditor = process.env.EDITOR;
  try {
    await check(sim, libvirt);
  } finally {
    process.env.EDITOR = savedEditor;
    if (savedEditor === undefined) delete process.env.EDITOR;
    libvirt.cleanup();
    sim.cleanup();
  }
}

test("enable on a shut-off domain stores the element in its persistent definition", () =>
  withDomain(async (sim, libvirt) => {
    const enabled = await cli(["enable", "win11", "hugepages", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(enabled.stdout, "win11: saved to the persistent definition");
    assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"]);
  }));

test("config --edit where no file for the editor can be made (TMPDIR missing): the error names the directory, the errno and the fix, never Node's bare message; nothing is stored", () =>
  withDomain(async (sim, libvirt) => {
    process.env.EDITOR = editor(libvirt, "<hooks><nosleep/><hugepages/></hooks>", "");
    const savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = `${libvirt.dir}/no-such-dir`;
    try {
      const edited = await cli(["config", "win11", "--edit", "--root", sim.root]);
      assert.is(edited.code, 1);
      assert.match(edited.stderr, `cannot make a file for the editor in ${libvirt.dir}/no-such-dir (ENOENT); set TMPDIR to a directory you may write, or give the metadata with vmhook config win11 --set FILE`);
    } finally {
      if (savedTmp === undefined) delete process.env.TMPDIR;
      else process.env.TMPDIR = savedTmp;
    }
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
  }));

test("config --edit of a shut-off domain started while the editor is open: the edit goes to the persistent definition it was read from, as said", () =>
  withDomain(async (sim, libvirt) => {
    // the user starts the VM in another terminal while editing
    process.env.EDITOR = editor(libvirt, "<hooks><nosleep/><hugepages/></hooks>", `echo running > ${libvirt.dir}/state; cp ${libvirt.dir}/config ${libvirt.dir}/live`);
    const edited = await cli(["config", "win11", "--edit", "--root", sim.root]);
    assert.is(edited.code, 0, edited.stderr);
    assert.match(edited.stdout, "win11: saved to the persistent definition");
    assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"], "the next start has the edit");
    assert.equal(elements(libvirt.xml("live")), ["nosleep"], "the running domain, never read, is left alone");
  }));

test("enable on a shut-off domain of a German desktop (virsh says ausgeschaltet): stored in its persistent definition, not refused as if it ran", () =>
  withDomain(async (sim, libvirt) => {
    const saved = { LANG: process.env.LANG, LANGUAGE: process.env.LANGUAGE };
    Object.assign(process.env, { LANG: "de_DE.UTF-8", LANGUAGE: "de" });
    try {
      const enabled = await cli(["enable", "win11", "hugepages", "--root", sim.root]);
      assert.is(enabled.code, 0, enabled.stderr);
      assert.match(enabled.stdout, "win11: saved to the persistent definition");
      assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"]);
    } finally {
      for (const [name, value] of Object.entries(saved)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  }));

test("enable on a VM kept crashed by <on_crash>preserve</on_crash> (QEMU still there): the change goes to the running domain, as virsh's --current, and says so", () =>
  withDomain(async (sim, libvirt) => {
    libvirt.setRunning(true);
    libvirt.preserveCrash();
    const enabled = await cli(["enable", "win11", "hugepages", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(enabled.stdout, "win11: saved to the running domain only");
    assert.equal(elements(libvirt.xml("live")), ["nosleep", "hugepages"]);
    assert.equal(elements(libvirt.xml("config")), ["nosleep"], "the persistent definition only with --config");
  }));

test("enable on a transient VM (virsh create): stored in the running domain, with advice that works for it, not --config, which libvirt refuses", () =>
  withDomain(async (sim, libvirt) => {
    libvirt.makeTransient();
    const enabled = await cli(["enable", "win11", "hugepages", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.equal(elements(libvirt.xml("live")), ["nosleep", "hugepages"]);
    assert.match(enabled.stdout, "win11: saved to the running domain only (a transient VM, made by virsh create, has no persistent definition: the XML it is created from next time needs the change too)");
    assert.not.match(enabled.stdout, "--config");
  }));

test("config --edit while Ctrl-C reaches vmhook (a command run from the editor stopped with it): vmhook waits for the editor and stores what was saved", () =>
  withDomain(async (sim, libvirt) => {
    // the terminal sends SIGINT to vmhook and the editor alike; the editor, like vi, carries on
    process.env.EDITOR = editor(libvirt, "<hooks><nosleep/><hugepages/></hooks>", `trap '' INT; kill -INT ${process.pid}; sleep 0.5`);
    const edited = await cli(["config", "win11", "--edit", "--config", "--root", sim.root]);
    assert.is(edited.code, 0, edited.stderr);
    assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"]);
  }));

test("enable and disable of a domain named --lab: virsh gets the name after --, so it is never read as an option", () =>
  withDomain(
    async (sim, libvirt) => {
      const enabled = await cli(["enable", "--root", sim.root, "--", "--lab", "hugepages"]);
      assert.is(enabled.code, 0, enabled.stderr);
      assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"]);
      const disabled = await cli(["disable", "--root", sim.root, "--", "--lab", "nosleep"]);
      assert.is(disabled.code, 0, disabled.stderr);
      assert.equal(elements(libvirt.xml("config")), ["hugepages"]);
      assert.is((await cli(["disable", "--root", sim.root, "--", "--lab", "hugepages"])).code, 0, "the last element goes: the metadata is removed");
      assert.equal(elements(libvirt.xml("config")), []);
      assert.ok(libvirt.calls().some((call) => call.includes("--remove")));
      for (const call of libvirt.calls()) assert.is(call[call.indexOf("--lab") - 1], "--", call.join(" "));
    },
    DOMAIN,
    "--lab",
  ));

test("enable with a setting named xmlns or xmlns:x (a namespace, not an attribute): refused, naming it and the fix; nothing stored", () =>
  withDomain(async (sim, libvirt) => {
    for (const setting of ["xmlns=urn:x", "xmlns:foo=urn:x"]) {
      const enabled = await cli(["enable", "win11", "hugepages", "size=2M", setting, "--root", sim.root]);
      assert.equal(
        [enabled.code, enabled.stderr],
        [1, `vmhook: "${setting}": a name starting with xmlns declares an XML namespace, not a plugin attribute, and would take the element of hugepages out of vmhook's namespace, where the hook refuses it; leave it out (settings are the plugin's attributes, e.g. size=2M)\n`],
      );
    }
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
    assert.not.ok(libvirt.calls().some((args) => args.includes("metadata")), "nothing was written");
  }));

test("enable with a value holding a control character XML cannot hold (size=2M^A): refused naming the setting and the character, not blamed on the domain's XML; nothing stored", () =>
  withDomain(async (sim, libvirt) => {
    const enabled = await cli(["enable", "win11", "hugepages", "size=2M\u0001", "--root", sim.root]);
    assert.equal(
      [enabled.code, enabled.stderr],
      [1, `vmhook: "size=2M\\u0001": the value holds the character U+0001, which XML cannot hold, so no domain's metadata can; write the value without it\n`],
    );
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
    assert.not.ok(libvirt.calls().some((args) => args.includes("metadata")), "nothing was written");
  }));

test("config --edit while someone else changes the metadata: refused, their change kept, the edit shown so it is not lost", () =>
  withDomain(async (sim, libvirt) => {
    const theirs = DOMAIN.replace("<vmhook:nosleep/>", '<vmhook:nosleep/><vmhook:isolate host-cpus="0-1"/>');
    fs.writeFileSync(path.join(libvirt.dir, "theirs.xml"), theirs);
    process.env.EDITOR = editor(libvirt, "<hooks><nosleep/><hugepages/></hooks>", `cp ${libvirt.dir}/theirs.xml ${libvirt.dir}/config`);
    const edited = await cli(["config", "win11", "--edit", "--root", sim.root]);
    assert.is(edited.code, 1, edited.stdout);
    assert.match(edited.stderr, "vmhook: the vmhook metadata of win11 changed while vmhook was editing it (another vmhook config, enable or disable, or virsh); nothing was saved: run the command again");
    assert.match(edited.stderr, "  <vmhook:hugepages/>", "the refused edit is shown");
    assert.equal(elements(libvirt.xml("config")), ["nosleep", "isolate"], "the other change stays");
    assert.not.ok(libvirt.calls().some((args) => args.includes("metadata")), "nothing was written");
  }));

test("config --edit of a running domain shut down while the editor is open: libvirt refuses the running definition, the edit is shown so it is not lost", () =>
  withDomain(async (sim, libvirt) => {
    libvirt.setRunning(true);
    process.env.EDITOR = editor(libvirt, "<hooks><nosleep/><hugepages/></hooks>", `echo "shut off" > ${libvirt.dir}/state; rm ${libvirt.dir}/live`);
    const edited = await cli(["config", "win11", "--edit", "--root", sim.root]);
    assert.is(edited.code, 1, edited.stdout);
    assert.match(edited.stderr, "failed: Requested operation is not valid: domain is not running; nothing was saved");
    assert.match(edited.stderr, "what was not saved (vmhook config win11 --set - takes it):");
    assert.match(edited.stderr, "  <vmhook:hugepages/>", "the edit is shown");
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
  }));

test("enable of a valid element that this host could not start now (pages that do not fit): stored, and the refusal prepare would make is said with its fix", () =>
  withDomain(
    async (sim, libvirt) => {
      const enabled = await cli(["enable", "win11", "hugepages", "size=2M", "--root", sim.root]);
      assert.is(enabled.code, 0, enabled.stderr);
      assert.match(enabled.stdout, "win11: saved to the persistent definition");
      assert.match(enabled.stderr, /^vmhook: warning: a start of win11 on this host now would be refused: hugepages: \d+ pages of 2M/m);
      assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"]);
      const json = JSON.parse((await cli(["disable", "win11", "nosleep", "--json", "--root", sim.root])).stdout) as { refusedHere: string[] };
      assert.equal(json.refusedHere.length, 1, "the refusal in --json too");
      assert.match(json.refusedHere[0]!, /^hugepages: \d+ pages of 2M/, "the plugin named once");
    },
    DOMAIN.replace('<memory unit="KiB">1048576</memory>', '<memory unit="GiB">1000</memory>'),
  ));

/** A user's metadata with their own notes in it: a comment and a processing instruction between the plugin elements. */
const ANNOTATED = DOMAIN.replace(
  "<vmhook:hooks xmlns:vmhook=\"urn:vmhook:1\"><vmhook:nosleep/></vmhook:hooks>",
  `<vmhook:hooks xmlns:vmhook="urn:vmhook:1">
      <!-- GPU for gaming -->
      <vmhook:hugepages size="2M"/>
      <?note ask before changing?>
    </vmhook:hooks>`,
);

test("enable and disable change only the plugin element named: the user's comment, processing instruction, order and other attributes are kept", () =>
  withDomain(async (sim, libvirt) => {
    const enabled = await cli(["enable", "win11", "nosleep", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(libvirt.xml("config"), "<!-- GPU for gaming -->");
    assert.match(libvirt.xml("config"), "<?note ask before changing?>");
    assert.match(libvirt.xml("config"), '<vmhook:hugepages size="2M"/>');
    assert.equal(elements(libvirt.xml("config")), ["hugepages", "nosleep"]);
    assert.match(enabled.stdout, '   <!-- GPU for gaming -->\n   <vmhook:hugepages size="2M"/>\n   <?note ask before changing?>\n+  <vmhook:nosleep/>', "the diff shows the one new line");

    const disabled = await cli(["disable", "win11", "hugepages", "--root", sim.root]);
    assert.is(disabled.code, 0, disabled.stderr);
    assert.match(libvirt.xml("config"), "<!-- GPU for gaming -->");
    assert.match(libvirt.xml("config"), "<?note ask before changing?>");
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
    assert.match((await cli(["config", "win11", "--root", sim.root])).stdout, "<!-- GPU for gaming -->", "config shows the comment");
  }, ANNOTATED));

test("config --edit keeps the comments the user has and writes inside <hooks>", () =>
  withDomain(async (sim, libvirt) => {
    process.env.EDITOR = editor(libvirt, "<hooks><!-- GPU for gaming --><nosleep/><!-- pages for the guest --><hugepages/></hooks>", "");
    const edited = await cli(["config", "win11", "--edit", "--root", sim.root]);
    assert.is(edited.code, 0, edited.stderr);
    assert.match(libvirt.xml("config"), "<!-- GPU for gaming -->");
    assert.match(libvirt.xml("config"), "<!-- pages for the guest -->");
    assert.equal(elements(libvirt.xml("config")), ["nosleep", "hugepages"]);
  }));

/** Text that looks like a doubled prefix where no element name is: another application's CDATA and a comment of the user's. */
const LOOKALIKES = DOMAIN.replace(
  "<vmhook:nosleep/></vmhook:hooks>",
  `<!-- was <vmhook:vmhook:nosleep/> until fixed --><vmhook:nosleep/></vmhook:hooks>
    <app:notes xmlns:app="urn:example:app"><![CDATA[<app:app:raw/>]]></app:notes>`,
);

test("enable with <a:b:c> inside another application's CDATA and in a comment: nothing 'repaired', both kept as written, a second enable changes nothing", () =>
  withDomain(async (sim, libvirt) => {
    const enabled = await cli(["enable", "win11", "hugepages", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.not.match(enabled.stdout, "repaired");
    assert.match(libvirt.xml("config"), "<!-- was <vmhook:vmhook:nosleep/> until fixed -->");
    assert.match(libvirt.xml("config"), "<![CDATA[<app:app:raw/>]]>");
    const again = await cli(["enable", "win11", "hugepages", "--root", sim.root]);
    assert.is(again.code, 0, again.stderr);
    assert.is(again.stdout.trim(), "win11: no change");
  }, LOOKALIKES));

/** Another application's element as libvirt stores a prefixed one given to its virsh metadata: its prefix doubled. */
const FOREIGN_DOUBLED = DOMAIN.replace("</vmhook:hooks>", `</vmhook:hooks>
    <app:app:settings xmlns:app="urn:example:app" mode="fast"/>`);

test("another application's element with libvirt's doubled prefix (<app:app:settings>): config shows vmhook's without a repair warning, enable of what is there changes nothing", () =>
  withDomain(async (sim, libvirt) => {
    const shown = await cli(["config", "win11", "--root", sim.root]);
    assert.is(shown.code, 0, shown.stderr);
    assert.is(shown.stderr, "");
    assert.match(shown.stdout, "<vmhook:nosleep/>");
    const enabled = await cli(["enable", "win11", "nosleep", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.is(enabled.stdout.trim(), "win11: no change");
    assert.not.ok(libvirt.calls().some(([command]) => command === "metadata"), "nothing stored");
  }, FOREIGN_DOUBLED));

/** An installed module plugin that takes any attributes and content. */
const NOTES_PLUGIN = `export default { name: "notes", summary: "keeps notes", usage: '<vmhook:plugin name="notes" text="…"/>', parse: () => ({}), async prepare() {}, undo() {} };\n`;

/** Installs the notes plugin and runs `vmhook enable win11 nosleep`: the stored <vmhook:plugin> elements after it. */
async function enableBesideNotes(sim: SimHost, libvirt: FakeLibvirt) {
  fs.mkdirSync(sim.resolve(paths.pluginsDir), { recursive: true, mode: 0o755 });
  fs.writeFileSync(sim.resolve(`${paths.pluginsDir}/notes.mjs`), NOTES_PLUGIN, { mode: 0o644 });
  const enabled = await cli(["enable", "win11", "nosleep", "--root", sim.root]);
  assert.is(enabled.code, 0, enabled.stderr);
  return new DOMParser().parseFromString(libvirt.xml("config"), "text/xml").getElementsByTagNameNS(NAMESPACE_URI, "plugin");
}

test("enable keeps another plugin's element as stored: an attribute with entities, a line break and non-ASCII text, and CDATA round-trip", () =>
  withDomain(
    async (sim, libvirt) => {
      const notes = (await enableBesideNotes(sim, libvirt))[0]!;
      assert.is(notes.getAttribute("text"), 'café & <tea> "x"\nsecond line');
      assert.match(libvirt.xml("config"), "<![CDATA[raw <data>]]>");
      assert.equal(elements(libvirt.xml("config")), ["plugin", "nosleep"]);
    },
    DOMAIN.replace("<vmhook:nosleep/>", '<vmhook:plugin name="notes" text="café &amp; &lt;tea&gt; &quot;x&quot;&#10;second line"><![CDATA[raw <data>]]></vmhook:plugin>'),
  ));

test("enable keeps another plugin's element in vmhook's namespace when it declares a default namespace of its own (xmlns=\"urn:…\")", () =>
  withDomain(
    async (sim, libvirt) => {
      assert.is((await enableBesideNotes(sim, libvirt)).length, 1, libvirt.xml("config"));
      const shown = await cli(["config", "win11", "--root", sim.root]);
      assert.is(shown.code, 0, "the hook still reads it: " + shown.stderr);
    },
    DOMAIN.replace("<vmhook:nosleep/>", '<vmhook:plugin name="notes" xmlns="urn:example:notes" text="x"/>'),
  ));

test("config --set with a file that cannot be read names what --set takes (the metadata, not a domain XML) and changes nothing", async () => {
  await withDomain(async (sim, libvirt) => {
    const missing = path.join(libvirt.dir, "hooks.xml");
    const { code, stdout, stderr } = await cli(["config", "win11", "--set", missing, "--root", sim.root], sim);
    assert.equal([code, stdout, stderr], [1, "", `vmhook: cannot read ${missing}: ENOENT; --set takes a file holding the vmhook metadata (<hooks>…</hooks>, prefixed or not), or - for stdin\n`]);
    assert.is(libvirt.xml("config"), DOMAIN);
  });
});

test("disable --json of a plugin not enabled has the shape of any unchanged save: changed false, with the metadata as it is", async () => {
  await withDomain(async (sim) => {
    const unchanged = await cli(["enable", "win11", "nosleep", "--json", "--root", sim.root], sim);
    const notEnabled = await cli(["disable", "win11", "hugepages", "--json", "--root", sim.root], sim);
    assert.equal([notEnabled.code, JSON.parse(notEnabled.stdout)], [0, JSON.parse(unchanged.stdout)]);
    assert.equal(Object.keys(JSON.parse(notEnabled.stdout)), ["domain", "changed", "metadata"]);
  });
});

test("enable of a near-miss of a built-in's name (hugepage, no-sleep) that no installed plugin has: refused with the built-in it is close to; nothing stored", () =>
  withDomain(async (sim, libvirt) => {
    for (const [typo, meant] of [["hugepage", "hugepages"], ["no-sleep", "nosleep"], ["vfoi", "vfio"]]) {
      const enabled = await cli(["enable", "win11", typo!, "size=2M", "--root", sim.root]);
      assert.equal(
        [enabled.code, enabled.stderr],
        [1, `vmhook: ${typo} is not a built-in plugin, and no plugin of that name is installed in ${paths.pluginsDir}; did you mean vmhook enable win11 ${meant}?\n`],
      );
    }
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
    assert.not.ok(libvirt.calls().some((args) => args.includes("metadata")), "nothing was written");
  }));

test("enable of an installed custom plugin whose name is close to a built-in's (hugepage): stored as that plugin, no guess", () =>
  withDomain(async (sim, libvirt) => {
    fs.mkdirSync(sim.resolve(paths.pluginsDir), { recursive: true, mode: 0o755 });
    fs.writeFileSync(sim.resolve(`${paths.pluginsDir}/hugepage.mjs`), NOTES_PLUGIN.replaceAll("notes", "hugepage"), { mode: 0o644 });
    const enabled = await cli(["enable", "win11", "hugepage", "--root", sim.root]);
    assert.is(enabled.code, 0, enabled.stderr);
    assert.match(libvirt.xml("config"), '<vmhook:plugin name="hugepage"/>');
  }));

test("disable of a near-miss of an enabled built-in's name (no-sleep): nothing changed, and the command that was meant is named", () =>
  withDomain(async (sim, libvirt) => {
    const disabled = await cli(["disable", "win11", "no-sleep", "--root", sim.root]);
    assert.equal([disabled.code, disabled.stdout], [0, "win11: no-sleep is not enabled; nothing changed; did you mean vmhook disable win11 nosleep?\n"]);
    assert.equal(elements(libvirt.xml("config")), ["nosleep"]);
  }));

test.run();
