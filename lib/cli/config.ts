// `vmhook config VM [--edit | --set FILE|-]`, `vmhook enable VM PLUGIN
// [attr=value …]`, `vmhook disable VM PLUGIN`: read and write a domain's
// vmhook metadata through libvirt (virsh), so nobody has to write the XML by
// hand. Every change is checked against the rest of the domain and this host
// (the dry run of prepare) before libvirt stores it, and printed as a diff.
import type { Element } from "@xmldom/xmldom";
import type { Argv, CommandModule } from "yargs";
import { CUSTOM_ELEMENT, loadDomainPlugins } from "../config.ts";
import { customPluginPresent } from "../custom-plugins.ts";
import { parseDomain, storedPlugins, type Domain } from "../domain.ts";
import { dryRun } from "../dry-run.ts";
import { LeftoverUnplanned } from "../leftover.ts";
import type { PlannedStep } from "../transaction.ts";
import { describeError, VmhookError } from "../errors.ts";
import { terminalText } from "../log.ts";
import type { Host } from "../host.ts";
import { sessionDaemon, Virsh, type Scope, type SessionDaemon } from "../libvirt-client.ts";
import { childElements, metadataNodes, repairDoubledPrefixes, shellWord } from "../metadata-text.ts";
import { appendPlugin, emptyHooks, hooksText, pastedHooks, storedHooks, withVmhookMetadata } from "../metadata-in-domain.ts";
import { paths } from "../paths.ts";
import { unifiedDiff } from "../text-diff.ts";
import { registry } from "../../plugins/index.ts";
import { isThisHostsLibvirt, notCheckedHere } from "./domain-source.ts";
import { askYes, runEditor } from "./editor.ts";
import type { GlobalOptions } from "./options.ts";
import { print, printJson, readInputFile } from "./output.ts";
import { closest } from "./usage.ts";

interface LibvirtArgs extends GlobalOptions {
  connect?: string;
  live: boolean;
  config: boolean;
}

/** The options of every command that talks to libvirt. */
function libvirtOptions<T>(y: Argv<T>) {
  return y
    .option("connect", { alias: "c", type: "string", requiresArg: true, describe: "libvirt URI, as virsh --connect (default, as virsh: $VIRSH_DEFAULT_CONNECT_URI, else $LIBVIRT_DEFAULT_URI, else uri_default in libvirt.conf)" })
    .option("live", { type: "boolean", default: false, describe: "the running domain, as virsh --live" })
    .option("config", { type: "boolean", default: false, describe: "the persistent definition (the next start), as virsh --config" });
}

/** A domain's metadata as libvirt has it now. */
interface Current {
  /** The domain XML with any doubled prefix repaired. */
  xml: string;
  /** vmhook's element as stored, edited in place by the commands (undefined: none). */
  hooks?: Element;
  /** libvirt stored the element with a doubled prefix (<vmhook:vmhook:hooks>): saving repairs it. */
  doubledPrefix: boolean;
  /** A plugin element libvirt stores outside <hooks> (<vmhook:hugepages>), where the hook refuses it: saving moves it inside. */
  stray?: string;
  /** What was read, and what the change goes to: never virsh's --current, which libvirt decides again when it stores. */
  scope: Scope;
  describeScope: string;
  /** Read from this host's own libvirt: this host is the one whose prepare runs the VM. */
  onThisHost: boolean;
  /** Read from a session daemon, for whose domains vmhook cannot act: why, and the fix. */
  session?: SessionDaemon;
}

/** The metadata in one definition: the persistent one (inactive) or the running one. */
function readStored(virsh: Virsh, name: string, inactive: boolean): Pick<Current, "xml" | "hooks" | "doubledPrefix" | "stray"> {
  const stored = virsh.dumpxml(name, inactive);
  const xml = repairDoubledPrefixes(stored);
  // Checked as the hook reads them first: an element in another namespace is refused, naming it.
  const { stray } = storedPlugins(xml, name);
  const hooks = storedHooks(xml);
  return { xml, ...(hooks ? { hooks } : {}), doubledPrefix: xml !== stored, ...(stray ? { stray } : {}) };
}

/** The metadata as shown, compared and stored: "" when it holds no plugin element (saving then removes it). */
function elementText(hooks: Element | undefined): string {
  return hooks && childElements(hooks).length > 0 ? hooksText(hooks, "domain") : "";
}

function readCurrent(virsh: Virsh, name: string, flags: Scope): Current {
  // Neither flag: the running domain if it runs, else the persistent one, as virsh's --current; named
  // explicitly, so a VM started or stopped meanwhile cannot send the change to a definition never read.
  const running = flags.live || flags.config ? undefined : virsh.isActive(name);
  const scope = running === undefined ? { live: flags.live, config: flags.config } : { live: running, config: !running };
  // With both flags the persistent definition is the base: it is what stays.
  const describeScope = scope.live && scope.config ? "the running domain and its persistent definition" : scope.live ? `the running domain only ${liveOnlyAdvice(virsh, name)}` : "the persistent definition";
  const session = sessionDaemon(virsh.uri);
  return { ...readStored(virsh, name, scope.config), scope, describeScope, onThisHost: isThisHostsLibvirt(virsh.uri), ...(session ? { session } : {}) };
}

/** How a change to the running domain alone reaches the next start: --config, which libvirt refuses for a transient VM. */
function liveOnlyAdvice(virsh: Virsh, name: string): string {
  return virsh.isPersistent(name)
    ? "(as virsh does; add --config for the next start too)"
    : "(a transient VM, made by virsh create, has no persistent definition: the XML it is created from next time needs the change too)";
}

/** Thrown when a checked change was not stored (libvirt's metadata changed meanwhile, or libvirt refused it): editing again cannot help; what was not saved is shown. */
class NotSaved extends VmhookError {}

function notSaved(reason: string, name: string, hooks: Element): NotSaved {
  const unsaved = elementText(hooks);
  return new NotSaved(reason, unsaved ? [`what was not saved (vmhook config ${shellWord(name)} --set - takes it):`, ...unsaved.split("\n")] : []);
}

function refuseIfChangedMeanwhile(virsh: Virsh, name: string, current: Current, hooks: Element): void {
  const now = readStored(virsh, name, current.scope.config);
  if (elementText(now.hooks) === elementText(current.hooks) && now.doubledPrefix === current.doubledPrefix && now.stray === current.stray) return;
  throw notSaved(`the vmhook metadata of ${name} changed while vmhook was editing it (another vmhook config, enable or disable, or virsh); nothing was saved: run the command again`, name, hooks);
}

interface Candidate {
  domain: Domain;
  /** What a prepare on this host would refuse now, with the fixes: a valid config is stored all the same (pages in use now may be free by the next start), and said. */
  refusedHere: string[];
  /** Another host's VM that this host cannot plan (its devices are there, not here): the config alone was checked, and why. */
  notChecked?: string;
}

/** Saving stores the metadata differently even when the elements stay the same. */
function repairs(current: Current): boolean {
  return current.doubledPrefix || current.stray !== undefined;
}

/**
 * The domain as it would be with this element, checked like prepare checks it,
 * on this host; throws what is wrong. A plan that fails refuses the change
 * only for this host's own VM, as validate does; while the domain's changes
 * are in place (it runs) there is no plan, which is said.
 */
async function checkCandidate(host: Host, current: Current, hooks: Element, name: string): Promise<Candidate> {
  const domain = parseDomain(withVmhookMetadata(current.xml, elementText(hooks) ? hooks : undefined), `domain ${name}`);
  const instances = await loadDomainPlugins(domain, host, registry);
  // No prepare of a session daemon's domain runs as root: the config alone is checked (save says why).
  if (current.session) return { domain, refusedHere: [] };
  let steps: PlannedStep[];
  try {
    steps = await dryRun(host, domain, instances, "prepare", "none", registry);
  } catch (error) {
    if (error instanceof LeftoverUnplanned) return { domain, refusedHere: [], notChecked: error.notChecked };
    if (current.onThisHost) throw error;
    return { domain, refusedHere: [], notChecked: notCheckedHere(error, name) };
  }
  const refusedHere = steps.flatMap(({ refused }) => (refused ? [`${refused.reason}${refused.remedies.map((remedy) => `; ${remedy}`).join("")}`] : []));
  return { domain, refusedHere };
}

/** Stores the element (without plugin elements: removes the metadata) and prints what changed. */
function save(virsh: Virsh, name: string, current: Current, hooks: Element, { domain, refusedHere, notChecked }: Candidate, args: GlobalOptions): void {
  const before = elementText(current.hooks);
  const after = elementText(hooks);
  if (before === after && !repairs(current)) {
    if (args.json) printJson({ domain: name, changed: false, metadata: after });
    else print(`${name}: no change`);
    return;
  }
  refuseIfChangedMeanwhile(virsh, name, current, hooks);
  try {
    if (!after) virsh.removeMetadata(name, current.scope);
    else virsh.setMetadata(name, hooksText(hooks, "virsh"), current.scope);
  } catch (error) {
    // e.g. the running domain, read before, shut down meanwhile
    if (error instanceof VmhookError) throw notSaved(`${error.message}; nothing was saved`, name, hooks);
    throw error;
  }
  const notes = [
    ...(current.doubledPrefix ? [`repaired the doubled prefix libvirt had stored (<vmhook:vmhook:…>)`] : []),
    ...(current.stray ? [`moved ${current.stray} into <vmhook:hooks>, where the hook reads it`] : []),
    ...advice(hooks, domain, name),
  ];
  if (args.json) {
    printJson({ domain: name, changed: true, metadata: after, notes, refusedHere, ...(notChecked ? { notChecked } : {}), ...(current.session ? { session: current.session } : {}) });
    return;
  }
  // Metadata removed asks nothing of vmhook: only what stays needs the warning.
  if (current.session && after) process.stderr.write(`vmhook: warning: the metadata of ${name} is stored, but the hook will not act on it: ${terminalText(current.session.reason)}\n  fix: ${terminalText(current.session.fix)}\n`);
  if (notChecked) process.stderr.write(`vmhook: warning: ${terminalText(notChecked)}\n`);
  for (const refusal of refusedHere) process.stderr.write(`vmhook: warning: a start of ${name} on this host now would be refused: ${terminalText(refusal)}\n`);
  const diff = unifiedDiff(before, after, `${name} (before)`, `${name} (after)`);
  print(`${name}: saved to ${current.describeScope}${diff ? "" : ": the same elements, stored correctly now"}`);
  if (diff) print(diff);
  for (const note of notes) print(`note: ${note}`);
}

/** What the rest of the domain needs for the new elements to work. */
function advice(hooks: Element, domain: Domain, name: string): string[] {
  return metadataNodes(hooks).some((node) => node.name === "hugepages") && !domain.hugepages
    ? [`the VM uses the pages only with <memoryBacking><hugepages/>; vmhook doctor --fix ${shellWord(name)} shows the change, --apply makes it`]
    : [];
}

interface DomainArgs extends LibvirtArgs {
  domain: string;
}

/**
 * Why `domain` cannot be a domain these commands store to, or undefined: with
 * a "/" it is a file, as validate, plan and doctor read one, and never a name
 * (libvirt's QEMU driver refuses one with a "/"), while they store through libvirt.
 */
export function fileForDomainName(domain: string, command: string): string | undefined {
  if (!domain.includes("/")) return undefined;
  const file = shellWord(domain);
  return `${file} is a file, not a libvirt domain's name (a name holds no "/"): vmhook ${command} stores the metadata through libvirt, so it takes the name of a defined VM; define one from the file (virsh define ${file}), then name it; vmhook validate ${file} checks the file as it is`;
}

/** The options and the domain argument of these commands. */
const domainOptions = <T>(y: Argv<T>) =>
  libvirtOptions(y)
    .positional("domain", { type: "string", demandOption: true, describe: "libvirt domain name" })
    .check((args) => fileForDomainName(String(args.domain), String(args._[0])) ?? true);

/** This host, libvirt, and the domain's metadata as libvirt has it now. */
function open(args: DomainArgs) {
  const virsh = new Virsh(args.connect);
  return { host: args.host, virsh, current: readCurrent(virsh, args.domain, args) };
}

interface ConfigArgs extends DomainArgs {
  edit?: boolean;
  set?: string;
}

const HEADER = (name: string) =>
  `<!-- vmhook metadata of ${name}. Save to apply, empty the file to remove it. With or without the vmhook: prefix.\n     Elements: ${[...registry.builtinNames(), CUSTOM_ELEMENT].join(", ")}; see vmhook plugins. -->\n`;

async function edit(host: Host, virsh: Virsh, name: string, current: Current, args: GlobalOptions): Promise<void> {
  const original = `${HEADER(name)}${elementText(current.hooks) || hooksText(emptyHooks(), "domain")}\n`;
  let text = original;
  for (;;) {
    const edited = runEditor(text, name);
    if (edited === original && !repairs(current)) {
      print(`${name}: no change`);
      return;
    }
    try {
      // The header goes; the user's own comments stay.
      const hooks = pastedHooks(edited.replace(HEADER(name), ""));
      save(virsh, name, current, hooks, await checkCandidate(host, current, hooks, name), args);
      return;
    } catch (error) {
      // checked but not stored (another change came in meanwhile, libvirt refused it): editing again cannot help
      if (error instanceof NotSaved) throw error;
      process.stderr.write(`vmhook: ${terminalText(describeError(error))}\n`);
      if (!askYes("Edit again?")) throw new VmhookError(`kept the old metadata of ${name}: the edit was not saved`);
      text = edited;
    }
  }
}

const configCommand: CommandModule<GlobalOptions, ConfigArgs> = {
  command: "config <domain>",
  describe: "print a VM's vmhook metadata; --edit opens $EDITOR, --set FILE|- replaces it (checked before libvirt stores it)",
  builder: (y) =>
    domainOptions(y)
      .option("edit", { type: "boolean", describe: "edit it in $VISUAL/$EDITOR; refused edits reopen the editor (on a terminal) or keep the old" })
      .option("set", { type: "string", requiresArg: true, describe: "replace it with this file's content (- for stdin): prefixed or not, with or without <hooks>" })
      .conflicts("edit", "set"),
  async handler(args) {
    const { host, virsh, current } = open(args);
    if (args.edit) return edit(host, virsh, args.domain, current, args);
    if (args.set !== undefined) {
      const hooks = pastedHooks(readInputFile(args.set, "--set takes a file holding the vmhook metadata (<hooks>…</hooks>, prefixed or not), or - for stdin"));
      return save(virsh, args.domain, current, hooks, await checkCandidate(host, current, hooks, args.domain), args);
    }
    const text = elementText(current.hooks);
    if (args.json) {
      printJson({ domain: args.domain, metadata: text, doubledPrefix: current.doubledPrefix });
      return;
    }
    if (current.doubledPrefix) {
      process.stderr.write(`vmhook: libvirt stores this metadata as <vmhook:vmhook:…> (a prefixed element given to virsh metadata), which the hook cannot read; vmhook config ${shellWord(args.domain)} --edit and saving it stores it correctly\n`);
    }
    if (current.stray) {
      process.stderr.write(`vmhook: libvirt stores ${current.stray} outside <vmhook:hooks> (an element given to virsh metadata without <hooks> around it), where the hook refuses it; vmhook config ${shellWord(args.domain)} --edit and saving it stores it inside\n`);
    }
    print(text || `${args.domain} has no vmhook metadata (vmhook enable ${shellWord(args.domain)} PLUGIN adds some; vmhook plugins lists them)`);
  },
};

interface EnableArgs extends DomainArgs {
  plugin: string;
  settings: string[];
}

/** A character outside XML 1.0's Char production (C0 controls but tab and line breaks, U+FFFE, U+FFFF, a lone surrogate). */
const NOT_XML_CHARACTER = /[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\u{10000}-\u{10ffff}]/u;

/** "size=2M" → ["size", "2M"]. */
function parseSetting(setting: string, plugin: string): [string, string] {
  if (setting.startsWith("xmlns")) {
    throw new VmhookError(`"${setting}": a name starting with xmlns declares an XML namespace, not a plugin attribute, and would take the element of ${plugin} out of vmhook's namespace, where the hook refuses it; leave it out (settings are the plugin's attributes, e.g. size=2M)`);
  }
  const match = /^([A-Za-z_][\w.-]*)=(.*)$/s.exec(setting);
  if (!match) throw new VmhookError(`"${setting}" is not attribute=value; write e.g. size=2M`);
  // Caught here, the value named: the metadata it would be written into would not parse, blamed on the domain's XML.
  const unwritable = NOT_XML_CHARACTER.exec(match[2]!)?.[0];
  if (unwritable !== undefined) {
    throw new VmhookError(`"${setting}": the value holds the character U+${unwritable.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}, which XML cannot hold, so no domain's metadata can; write the value without it`);
  }
  return [match[1]!, match[2]!];
}

/** Whether an element is this plugin's: <NAME> for a built-in, <plugin name="NAME"> for a custom one. */
function isPlugin(element: Element, plugin: string): boolean {
  if (registry.builtinNames().includes(plugin)) return element.localName === plugin;
  return element.localName === CUSTOM_ELEMENT && element.getAttribute("name") === plugin;
}

/** A new element for this plugin after the others: <NAME> for a built-in, <plugin name="NAME"> for a custom one. */
function appendPluginElement(hooks: Element, plugin: string): Element {
  if (registry.builtinNames().includes(plugin)) return appendPlugin(hooks, plugin);
  const element = appendPlugin(hooks, CUSTOM_ELEMENT);
  element.setAttribute("name", plugin);
  return element;
}

/**
 * Refuses a name close to a built-in's (hugepage) that no installed plugin
 * has: it is a typo, which the search of the plugins directory would only
 * call "not installed".
 */
function refuseNearMissOfBuiltin(host: Host, plugin: string, domain: string): void {
  const builtins = registry.builtinNames();
  if (builtins.includes(plugin) || customPluginPresent(host, plugin)) return;
  const meant = closest(plugin, builtins);
  if (meant) throw new VmhookError(`${plugin} is not a built-in plugin, and no plugin of that name is installed in ${paths.pluginsDir}; did you mean vmhook enable ${shellWord(domain)} ${meant}?`);
}

const enableCommand: CommandModule<GlobalOptions, EnableArgs> = {
  command: "enable <domain> <plugin> [settings..]",
  describe: "add a plugin to a VM's metadata (or change its attributes): vmhook enable win11 hugepages size=2M",
  builder: (y) =>
    domainOptions(y)
      .positional("plugin", { type: "string", demandOption: true, describe: `${registry.builtinNames().join(", ")}, or an installed plugin's name` })
      .positional("settings", { type: "string", array: true, default: [], describe: "attribute=value, e.g. size=2M" }),
  async handler(args) {
    refuseNearMissOfBuiltin(args.host, args.plugin, args.domain);
    const settings = args.settings.map((setting) => parseSetting(String(setting), args.plugin));
    const { host, virsh, current } = open(args);
    // Edited in place: only this plugin's element changes.
    const hooks = current.hooks ? (current.hooks.cloneNode(true) as Element) : emptyHooks();
    const element = childElements(hooks).find((candidate) => isPlugin(candidate, args.plugin)) ?? appendPluginElement(hooks, args.plugin);
    for (const [key, value] of settings) element.setAttribute(key, value);
    save(virsh, args.domain, current, hooks, await checkCandidate(host, current, hooks, args.domain), args);
  },
};

interface DisableArgs extends DomainArgs {
  plugin: string;
}

/** "; did you mean vmhook disable VM nosleep?" for a name close to a built-in the VM has enabled, else "". */
function nearMissOfEnabled(hooks: Element, plugin: string, domain: string): string {
  const enabled = childElements(hooks).flatMap((element) => (element.localName && registry.builtinNames().includes(element.localName) ? [element.localName] : []));
  const meant = closest(plugin, enabled);
  return meant ? `; did you mean vmhook disable ${shellWord(domain)} ${meant}?` : "";
}

const disableCommand: CommandModule<GlobalOptions, DisableArgs> = {
  command: "disable <domain> <plugin>",
  describe: "remove a plugin's elements from a VM's metadata (the whole metadata when none is left)",
  builder: (y) =>
    domainOptions(y).positional("plugin", { type: "string", demandOption: true, describe: "a built-in or installed plugin's name" }),
  async handler(args) {
    const { host, virsh, current } = open(args);
    // Edited in place: only this plugin's elements go.
    const hooks = current.hooks ? (current.hooks.cloneNode(true) as Element) : emptyHooks();
    const removed = childElements(hooks).filter((element) => isPlugin(element, args.plugin));
    for (const element of removed) hooks.removeChild(element);
    if (removed.length === 0 && !repairs(current)) {
      if (args.json) printJson({ domain: args.domain, changed: false, metadata: elementText(current.hooks) });
      else print(`${args.domain}: ${args.plugin} is not enabled; nothing changed${nearMissOfEnabled(hooks, args.plugin, args.domain)}`);
      return;
    }
    save(virsh, args.domain, current, hooks, await checkCandidate(host, current, hooks, args.domain), args);
  },
};

export const configCommands = [configCommand, enableCommand, disableCommand] as CommandModule<GlobalOptions, any>[];
