// README.md and docs/ against the code: in the metadata reference each
// plugin has its section, whose table (and the one on the page in docs/ it
// links to) names exactly the attributes its parser accepts, a default
// written there as one value is what the parser takes when the attribute is
// left out, and it says so of a plugin whose parser takes several elements;
// the CLI table names exactly the binary's commands, with options and choices
// its --help has, and no page gives a command an option its --help lacks;
// every XML example validates, every JSON example is a settings or policy
// file vmhook takes, every link leads somewhere; docs/diagnostics.md has a
// row for every doctor check; Development names each plugin's source.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { DOMParser, type Element } from "@xmldom/xmldom";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { metadataChildren, parseDomain } from "../../lib/domain.ts";
import { ConfigError } from "../../lib/errors.ts";
import { paths } from "../../lib/paths.ts";
import { loadPolicy } from "../../lib/policy.ts";
import { loadSettings } from "../../lib/settings.ts";
import { registry } from "../../plugins/index.ts";
import { SimHost } from "../helpers/simhost.ts";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const README = fs.readFileSync(path.join(REPO, "README.md"), "utf8");
/** The registry's loader needs a host; built-in plugins are loaded without reading it. */
const host = new SimHost();
test.after(() => host.cleanup());

/** README's text from the `## title` heading to the next heading of that level. */
function section(text: string, level: string, title: string): string {
  const start = text.indexOf(`\n${level} ${title}`);
  if (start < 0) throw new Error(`README.md has no heading "${level} ${title}"`);
  const end = text.indexOf(`\n${level} `, start + 1);
  return text.slice(start, end < 0 ? undefined : end);
}

interface Row {
  attribute: string;
  default: string;
}

/** The rows of each attribute table in `text` (| attribute | … |, its columns in any order): the attribute and its "default" cell. */
function attributeTables(text: string): Row[][] {
  return [...text.matchAll(/^\| attribute \|.*\n\|[-| ]+\|\n(?:\|.*(?:\n|$))*/gm)].map(([table]) => {
    const [header, , ...rows] = table.trim().split("\n").map((line) => line.split(/(?<!\\)\|/).slice(1, -1).map((cell) => cell.trim()));
    const column = header!.indexOf("default");
    return rows.map((cells) => ({ attribute: /^`([a-z-]+)`$/.exec(cells[0]!)?.[1] ?? cells[0]!, default: cells[column] ?? "" }));
  });
}

/**
 * The attribute table of a plugin's section in README's metadata reference,
 * and of the page in docs/ its heading links to (the table there naming most
 * of the attributes README's does: docs/mdev.md holds mdev's and vgpu's).
 */
function documentedRows(name: string): { where: string; rows: Row[] }[] {
  const heading = `\`<vmhook:${name}>\``;
  const readme = attributeTables(section(section(README, "##", "Metadata reference"), "###", heading)).flat();
  const page = new RegExp(`^### ${heading} — \\[(docs/[a-z-]+\\.md)\\]`, "m").exec(README)?.[1];
  if (!page) throw new Error(`README.md's heading ### ${heading} links to no page in docs/`);
  const named = (rows: Row[]) => rows.filter((row) => readme.some((other) => other.attribute === row.attribute)).length;
  const tables = attributeTables(fs.readFileSync(path.join(REPO, page), "utf8")).sort((a, b) => named(b) - named(a));
  return [
    { where: "README.md", rows: readme },
    { where: page, rows: tables[0] ?? [] },
  ];
}

/** A domain every built-in parser accepts: pinned CPUs, one unmanaged PCI hostdev, one mdev hostdev, memory. */
function domainWith(element: string) {
  return parseDomain(`<domain type="kvm"><name>vm</name><uuid>0b1d6a52-3c7e-4d55-a0a4-8f2a61f0c9d3</uuid><memory unit="GiB">1</memory><vcpu>2</vcpu>
  <cputune><vcpupin vcpu="0" cpuset="2"/><vcpupin vcpu="1" cpuset="3"/></cputune>
  <devices>
    <hostdev mode="subsystem" type="pci" managed="no"><source><address domain="0x0000" bus="0x01" slot="0x00" function="0x0"/></source></hostdev>
    <hostdev mode="subsystem" type="mdev" model="vfio-pci"><source><address uuid="4b20d080-1b54-4048-85b3-a6a62d165c01"/></source></hostdev>
  </devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${element}</vmhook:hooks></metadata></domain>`);
}

/** What the attributes a required attribute needs (the parser refuses the element without them). */
const REQUIRED: Record<string, string> = { mdev: ' type="mtty-2"', vgpu: ' type="L40S-12Q"', forward: ' ports="2222:22"' };

/** The plugin's config from <vmhook:NAME attributes/>, without the element as written (it quotes the attributes). */
async function parse(name: string, attributes: string): Promise<unknown> {
  const domain = domainWith(`<vmhook:${name}${attributes}/>`);
  const plugin = await registry.load(name, host);
  const config = plugin.parse(metadataChildren(domain.metadata!), domain);
  return JSON.parse(JSON.stringify(config, (key, value) => (key === "element" ? undefined : value)));
}

/** The attributes the parser accepts, as its refusal of an unknown one lists them. */
async function acceptedAttributes(name: string): Promise<string[]> {
  try {
    await parse(name, ' not-an-attribute="1"');
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    if (error.message.includes("it takes no attributes")) return [];
    const allowed = /allowed: ([a-z, -]+)$/.exec(error.message);
    if (allowed) return allowed[1]!.split(", ");
    throw error;
  }
  throw new Error(`${name} accepted an unknown attribute`);
}

test("README's metadata reference, each plugin's page in docs/ and vmhook plugins document every built-in plugin's attributes, and only those", async () => {
  for (const name of registry.builtinNames()) {
    const accepted = (await acceptedAttributes(name)).sort();
    for (const { where, rows } of documentedRows(name)) assert.equal(rows.map((row) => row.attribute).sort(), accepted, `<vmhook:${name}>'s attribute table in ${where}`);
    const usage = (await registry.load(name, host)).usage ?? "";
    assert.equal([...usage.matchAll(/ ([a-z-]+)="/g)].map((match) => match[1]).sort(), accepted, `${name}'s usage in vmhook plugins: ${usage}`);
  }
});

test("a default the tables of README and docs/ give as one value is the parser's: leaving the attribute out is writing it", async () => {
  let compared = 0;
  for (const name of registry.builtinNames()) {
    for (const { where, rows } of documentedRows(name)) {
      for (const row of rows) {
        const value = /^`([^`]+)`$/.exec(row.default)?.[1];
        if (value === undefined) continue;
        const required = REQUIRED[name] ?? "";
        assert.equal(await parse(name, `${required} ${row.attribute}="${value}"`), await parse(name, required), `<vmhook:${name} ${row.attribute}="${value}"> in ${where}`);
        compared++;
      }
    }
  }
  assert.ok(compared >= 16, `only ${compared} defaults compared`);
});

/** Whether the parser takes a second <vmhook:NAME> in one domain, or refuses it as a repeat. */
async function acceptsSeveral(name: string): Promise<boolean> {
  const element = `<vmhook:${name}${REQUIRED[name] ?? ""}/>`;
  const domain = domainWith(element + element);
  const plugin = await registry.load(name, host);
  try {
    plugin.parse(metadataChildren(domain.metadata!), domain);
  } catch (error) {
    if (error instanceof ConfigError && error.message.includes("appears 2 times")) return false;
  }
  return true;
}

test("README's metadata reference says which plugins take one element per device or port set, as their parsers do", async () => {
  const reference = section(README, "##", "Metadata reference");
  for (const name of registry.builtinNames()) {
    const text = section(reference, "###", `\`<vmhook:${name}>\``);
    const documented = /\b(?:one|several) elements? per \w+/i.test(text);
    assert.is(documented, await acceptsSeveral(name), `<vmhook:${name}> in README.md ${documented ? "says it takes several elements; its parser refuses a second" : "does not say it takes one element per device or port set, as its parser does"}`);
  }
});

/** `vmhook ARGS` of the built binary (npm test builds it before the unit tests), whatever its exit code. */
const run = (...args: string[]) => spawnSync(path.join(REPO, "dist/vmhook"), args, { encoding: "utf8", timeout: 30_000, env: { PATH: "/usr/bin:/bin", LC_ALL: "C" } });

/** The output of `vmhook ARGS`, which must succeed. */
function vmhook(...args: string[]): string {
  const result = run(...args);
  assert.is(result.status, 0, `vmhook ${args.join(" ")}: ${result.stderr}`);
  return result.stdout;
}

test("README's CLI table shows exactly the binary's commands, each with options and choices its --help has", () => {
  const usages = [...section(README, "##", "CLI").matchAll(/^\| (`vmhook .*?`(?: \/ `vmhook .*?`)*) \|/gm)].flatMap((row) => [...row[1]!.matchAll(/`vmhook ([a-z]+)([^`]*)`/g)]);
  const listed = usages.map((usage) => usage[1]!);
  const commands = [...vmhook("--help").matchAll(/^ {2}vmhook ([a-z]+)/gm)].map((match) => match[1]!);
  assert.equal([...listed].sort(), [...commands].sort(), "the commands of README's CLI table and of vmhook --help");
  for (const [, command, shown] of usages) {
    const help = vmhook(command!, "--help");
    for (const option of shown!.match(/--?[a-z][a-z-]*/g) ?? []) assert.ok(help.includes(option), `README shows vmhook ${command} ${option}; its --help has no ${option}`);
    for (const choices of shown!.match(/[a-z]+(?:\\\|[a-z]+)+/g) ?? []) {
      for (const choice of choices.split("\\|")) assert.ok(help.includes(`"${choice}"`), `README shows ${choice} as a choice of vmhook ${command}; its --help does not list it`);
    }
  }
});

test("every option of every command's --help is in README's CLI section (a default-on switch as its --no- form, -o as its short name)", () => {
  const cli = section(README, "##", "CLI");
  const commands = [...vmhook("--help").matchAll(/^ {2}vmhook ([a-z]+)/gm)].map((match) => match[1]!);
  let checked = 0;
  for (const command of commands) {
    for (const [line, short, long] of vmhook(command, "--help").matchAll(/^ +(?:-([a-z]), )?--([a-z][a-z-]*) .*(?:\n {20,}.*)*/gm)) {
      if (long === "help") continue;
      const forms = [`--${long}`, ...(short ? [`-${short} `] : []), ...(/\[default: true\]/.test(line!) ? [`--no-${long}`] : [])];
      assert.ok(
        forms.some((form) => new RegExp(`\`[^\`]*${form.replace(/[-]/g, "\\-")}(?![a-z-])`).test(cli)),
        `vmhook ${command} --help has --${long}; README's CLI section names none of ${forms.map((form) => form.trim()).join(", ")}`,
      );
      checked++;
    }
  }
  assert.ok(checked >= 40, `only ${checked} options checked`);
});

test("every option README.md and docs/*.md give a vmhook command is one its --help lists", () => {
  const commands = [...vmhook("--help").matchAll(/^ {2}vmhook ([a-z]+)/gm)].map((match) => match[1]!);
  const helps = new Map(commands.map((command) => [command, vmhook(command, "--help")]));
  let checked = 0;
  for (const doc of DOCS) {
    const text = fs.readFileSync(path.join(REPO, doc), "utf8");
    // A command as written in code (inline, or a line of a block), up to the end of its code, a pipe, a comment or a ";".
    for (const [written, command, rest] of text.matchAll(/\bvmhook ([a-z]+)((?: [^`|#;\n]*)?)/g)) {
      const help = helps.get(command!);
      if (!help) continue;
      const words = rest!.trim().split(/\s+/);
      const end = words.indexOf("--");
      for (const word of end < 0 ? words : words.slice(0, end)) {
        const option = /^(--?[a-z][a-z-]*)(?:=.*)?$/.exec(word)?.[1];
        if (!option) continue;
        // A default-on switch is written as its --no- form.
        const listed = [option, option.replace(/^--no-/, "--")].some((form) => new RegExp(`(?:^|[\\s,])${form}(?![a-z-])`, "m").test(help));
        assert.ok(listed, `${doc} writes "${written.trim()}"; vmhook ${command} --help has no ${option}`);
        checked++;
      }
    }
  }
  assert.ok(checked >= 25, `only ${checked} options checked`);
});

test("every example domain in examples/domains validates, as README's quick start and demo use them", () => {
  // A host with the CPUs isolate reads; anything else missing is another host's, which validate says and exits 0 on.
  const sim = new SimHost().file("/sys/devices/system/cpu/online", "0-15").file("/sys/devices/system/cpu/present", "0-15");
  const root = sim.root;
  try {
    const examples = fs.readdirSync(path.join(REPO, "examples/domains")).filter((name) => name.endsWith(".xml"));
    assert.ok(examples.includes("win11-gpu.xml"), "README's quick start and demo show examples/domains/win11-gpu.xml");
    for (const name of examples) {
      const file = path.join(REPO, "examples/domains", name);
      const result = run("validate", file, "--root", root);
      assert.is(result.status, 0, `vmhook validate examples/domains/${name}: ${result.stderr}`);
      assert.match(result.stdout, new RegExp(`^${file}: ok; `), `vmhook validate examples/domains/${name}: ${result.stdout}`);
    }
  } finally {
    sim.cleanup();
  }
});

/** README.md and every page of docs/, by their path in the repository. */
const DOCS = ["README.md", ...fs.readdirSync(path.join(REPO, "docs")).filter((name) => name.endsWith(".md")).map((name) => `docs/${name}`)];
const NS = "urn:vmhook:1";

/**
 * The XML examples of README.md and docs/*.md: each ```xml block (its "..."
 * lines, which stand for the rest of a domain, left out), each vmhook element
 * written whole in inline code (`<vmhook:NAME a="v"/>`, not one with "…"),
 * and each `vmhook enable VM PLUGIN ATTR=VALUE` as the element it adds.
 */
function xmlExamples(): { where: string; xml: string }[] {
  const examples: { where: string; xml: string }[] = [];
  for (const doc of DOCS) {
    const lines = fs.readFileSync(path.join(REPO, doc), "utf8").split("\n");
    for (let i = 0; i < lines.length; i++) {
      const where = `${doc}:${i + 1}`;
      if (/^ *```xml\s*$/.test(lines[i]!)) {
        const end = lines.findIndex((line, index) => index > i && /^ *```\s*$/.test(line));
        examples.push({ where, xml: lines.slice(i + 1, end).filter((line) => line.trim() !== "...").join("\n") });
        i = end;
        continue;
      }
      for (const [, element] of lines[i]!.matchAll(/`(<vmhook:[a-z]+(?: [a-z-]+="[^"…]*")*\/>)`/g)) examples.push({ where, xml: element! });
      for (const [, plugin, settings] of lines[i]!.matchAll(/vmhook enable \S+ ([a-z][a-z0-9._-]*)((?: [a-z-]+=[^\s`]+)*)/g)) {
        if (settings!.includes("…")) continue;
        const attributes = [...settings!.matchAll(/ ([a-z-]+)=([^\s`]+)/g)].map(([, name, value]) => ` ${name}="${value}"`).join("");
        examples.push({ where, xml: registry.builtinNames().includes(plugin!) ? `<vmhook:${plugin}${attributes}/>` : `<vmhook:plugin name="${plugin}"${attributes}/>` });
      }
    }
  }
  return examples;
}

/** A PCI address (0000:41:00.4) as libvirt writes it in a <hostdev>'s <source>. */
function sourceAddress(address: string): string {
  const [domain, bus, slot, fn] = address.split(/[:.]/);
  return `<address domain='0x${domain}' bus='0x${bus}' slot='0x${slot}' function='0x${fn}'/>`;
}
const pciHostdev = (address: string, managed: string) => `<hostdev mode='subsystem' type='pci' managed='${managed}'><source>${sourceAddress(address)}</source></hostdev>`;

/**
 * A domain holding the example: its vmhook elements in <vmhook:hooks>, its
 * <hostdev>s, and what its <domain> says beside <devices> and <metadata>;
 * where the example leaves them out, what the page around it takes for
 * granted: 16 GiB backed by huge pages, 4 vCPUs pinned to CPU 2-3,6-7, the
 * GPU at 0000:01:00.0, one mdev, a NIC on libvirt's default network, and the
 * managed='no' <hostdev> of a vgpu's vf=. The plugins it runs, as validate
 * names them, come with it.
 */
function exampleDomain(xml: string): { domain: string; plugins: string[] } {
  const children = (element: Element) => [...(element.childNodes as unknown as Element[])].filter((node) => node.nodeType === 1);
  const root = new DOMParser({ onError: (level, message) => { if (level !== "warning") throw new Error(message); } }).parseFromString(`<doc xmlns:vmhook="${NS}">${xml}</doc>`, "text/xml").documentElement!;
  const all = [...(root.getElementsByTagName("*") as unknown as Element[])];
  // The plugins' elements: in vmhook's namespace, in <vmhook:hooks> or standing alone, not inside another plugin's.
  const isPlugin = (element: Element) => element.namespaceURI === NS && element.localName !== "hooks";
  const elements = all.filter((element) => isPlugin(element) && !isPlugin(element.parentNode as Element));
  const given = all.find((element) => element.localName === "domain");
  const parts = given ? children(given).filter((child) => !["metadata", "devices", "name", "uuid"].includes(child.localName!)).map(String) : [];
  const has = (name: string) => given !== undefined && children(given).some((child) => child.localName === name);
  if (!has("memory")) parts.push("<memory unit='GiB'>16</memory>");
  if (!has("memoryBacking")) parts.push("<memoryBacking><hugepages/></memoryBacking>");
  if (!has("vcpu")) parts.push("<vcpu>4</vcpu><cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='1' cpuset='3'/><vcpupin vcpu='2' cpuset='6'/><vcpupin vcpu='3' cpuset='7'/></cputune>");
  // With libvirt's single quotes, as sourceAddress writes an address.
  const hostdevs = all.filter((element) => element.localName === "hostdev").map((element) => String(element).replaceAll('"', "'"));
  for (const element of elements) {
    const vf = element.localName === "vgpu" ? element.getAttribute("vf") : null;
    if (vf && !hostdevs.some((hostdev) => hostdev.includes(sourceAddress(vf)))) hostdevs.push(pciHostdev(vf, "no"));
  }
  if (!hostdevs.some((hostdev) => /type=.pci/.test(hostdev))) hostdevs.push(pciHostdev("0000:01:00.0", "yes"));
  if (!hostdevs.some((hostdev) => /type=.mdev/.test(hostdev))) hostdevs.push("<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='4b20d080-1b54-4048-85b3-a6a62d165c01'/></source></hostdev>");
  const nic = "<interface type='network'><mac address='52:54:00:6b:3c:58'/><source network='default'/></interface>";
  const plugins = [...new Set(elements.map((element) => (element.localName === "plugin" ? `plugin:${element.getAttribute("name")}` : element.localName!)))];
  return {
    domain: `<domain type='kvm'><name>doc</name><uuid>0b1d6a52-3c7e-4d55-a0a4-8f2a61f0c9d3</uuid>${parts.join("")}<devices>${hostdevs.join("")}${nic}</devices><metadata><vmhook:hooks xmlns:vmhook="${NS}">${elements.map(String).join("")}</vmhook:hooks></metadata></domain>`,
    plugins,
  };
}

test("every XML example of README.md and docs/*.md validates, running the plugins it shows", () => {
  // The example plugins installed as the docs install them; a systemd host with the CPUs the examples pin.
  const sim = new SimHost().file("/sys/devices/system/cpu/online", "0-15").file("/sys/devices/system/cpu/present", "0-15").dir("/etc/vmhook/plugins.d");
  sim.file("/proc/1/comm", "systemd").dir("/run/systemd/system");
  try {
    fs.chmodSync(sim.resolve("/etc/vmhook/plugins.d"), 0o755);
    fs.copyFileSync(path.join(REPO, "examples/plugins/looking-glass.mjs"), sim.resolve("/etc/vmhook/plugins.d/looking-glass.mjs"));
    fs.copyFileSync(path.join(REPO, "examples/plugins/stop-units"), sim.resolve("/etc/vmhook/plugins.d/stop-units"));
    fs.chmodSync(sim.resolve("/etc/vmhook/plugins.d/stop-units"), 0o755);
    const examples = xmlExamples();
    assert.ok(examples.length >= 20, `only ${examples.length} XML examples found`);
    for (const { where, xml } of examples) {
      const { domain, plugins } = exampleDomain(xml);
      const file = sim.resolve("/doc.xml");
      fs.writeFileSync(file, domain);
      // Checked as another machine's VM: the config, and this simulated host only as far as it goes (validate says what it could not check, and exits 0).
      const result = run("validate", file, "--root", sim.root);
      assert.is(result.status, 0, `the example at ${where} does not validate: ${result.stderr}${result.stdout}\n${xml}`);
      const runs = plugins.length > 0 ? `runs ${plugins.join(", ")}` : "has no vmhook metadata";
      assert.ok(result.stdout.startsWith(`${file}: ok; doc ${runs}`), `the example at ${where}: ${result.stdout}`);
    }
  } finally {
    sim.cleanup();
  }
});

test("every JSON example of README.md and docs/*.md but the plugin protocol's is a host settings file or host policy this vmhook takes", () => {
  let checked = 0;
  for (const doc of DOCS) {
    for (const [, block] of fs.readFileSync(path.join(REPO, doc), "utf8").matchAll(/^ *```json\n([\s\S]*?)^ *```$/gm)) {
      if (/"(?:protocol|summary)":/.test(block!)) continue;
      const sim = new SimHost().file(paths.hostConfig, block!).file(paths.policy, block!);
      const refusals: string[] = [];
      for (const [file, load] of [[paths.hostConfig, loadSettings], [paths.policy, loadPolicy]] as const) {
        try {
          load(sim);
        } catch (error) {
          refusals.push(`as ${file}: ${(error as Error).message}`);
        }
      }
      sim.cleanup();
      assert.ok(refusals.length < 2, `the JSON example in ${doc} is refused ${refusals.join("; ")}:\n${block}`);
      checked++;
    }
  }
  assert.ok(checked >= 6, `only ${checked} JSON examples checked`);
});

/** The TypeScript files under `dir` of the repository. */
function sources(dir: string): string[] {
  return fs.readdirSync(path.join(REPO, dir), { recursive: true, encoding: "utf8" }).filter((file) => file.endsWith(".ts")).map((file) => path.join(REPO, dir, file));
}

test("every check vmhook doctor reports by a name of its own is in docs/diagnostics.md's tables", () => {
  const diagnostics = fs.readFileSync(path.join(REPO, "docs/diagnostics.md"), "utf8");
  const names = new Set<string>();
  for (const file of [...sources("lib"), ...sources("plugins")]) {
    const text = fs.readFileSync(file, "utf8");
    // The findings' makers, not a logger's warn or another module's fail.
    if (!/import \{[^}]*\b(?:ok|warn|fail)\b[^}]*\} from "[./a-z]*diagnostics\/findings\.ts"|from "\.\/findings\.ts"/.test(text)) continue;
    for (const [, name] of text.matchAll(/(?<![.\w])(?:ok|warn|fail|failedWith)\("([^"]+)"/g)) names.add(name!);
  }
  assert.ok(names.size >= 25, `only ${names.size} check names found`);
  for (const name of names) assert.ok(diagnostics.includes(`| \`${name}\``) || diagnostics.includes(`, \`${name}\``), `vmhook doctor reports a check "${name}"; docs/diagnostics.md's tables have no row for it`);
});

/** The anchor GitHub gives a heading: lower case, punctuation other than "-" and "_" dropped, spaces as "-". */
const anchor = (heading: string) => heading.trim().toLowerCase().replace(/[^\p{L}\p{N}_\- ]/gu, "").replace(/ /g, "-");

test("every relative link of README.md and docs/*.md names a file that exists, and a heading of it", () => {
  let checked = 0;
  for (const doc of DOCS) {
    for (const [, link] of fs.readFileSync(path.join(REPO, doc), "utf8").matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^[a-z]+:/.test(link!)) continue;
      const [file, fragment] = link!.split("#");
      const target = file ? path.join(path.dirname(doc), file) : doc;
      assert.ok(fs.existsSync(path.join(REPO, target)), `${doc} links to ${link}: there is no ${target}`);
      if (fragment && target.endsWith(".md")) {
        const text = fs.readFileSync(path.join(REPO, target), "utf8").replace(/```[\s\S]*?```/g, "");
        const anchors = [...text.matchAll(/^#+ (.*)$/gm)].map((heading) => anchor(heading[1]!));
        assert.ok(anchors.includes(fragment), `${doc} links to ${link}: ${target} has no heading whose anchor is #${fragment}`);
      }
      checked++;
    }
  }
  assert.ok(checked >= 30, `only ${checked} links checked`);
});

test("README's Development lists the source of every built-in plugin, as a file or directory that exists", () => {
  const listed = /^plugins\/ +built-in plugins: (.*)$/m.exec(section(README, "##", "Development"))?.[1]?.split(", ") ?? [];
  for (const name of registry.builtinNames()) {
    const source = listed.find((entry) => entry === `${name}.ts` || entry === `${name}/`);
    assert.ok(source, `README.md's Development lists no plugins/${name}.ts or plugins/${name}/ (it lists ${listed.join(", ")})`);
    assert.ok(fs.existsSync(path.join(REPO, "plugins", source!)), `plugins/${source} does not exist`);
  }
});

test.run();
