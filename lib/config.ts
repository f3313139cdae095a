// The vmhook metadata element → the list of plugin instances to run, each
// with its typed config. All of it is checked before anything on the host
// changes, so a bad config aborts the start with the host untouched.
import { domElement } from "./dom-element.ts";
import type { XmlElement } from "./xml.ts";
import { attributes, describeElement, metadataChildren, type Domain } from "./domain.ts";
import { attributeText, ConfigError, CustomConfigError, describeError, FixableError, VmhookError } from "./errors.ts";
import type { Host } from "./host.ts";
import { NAMESPACE_URI, paths, ROOT_ELEMENT } from "./paths.ts";
import { closest } from "./cli/usage.ts";
import { customPluginPresent } from "./custom-plugins/trust.ts";
import type { AnyPlugin, PluginRegistry } from "./plugin.ts";
import { authorizeCustomPlugin, authorizeInstances } from "./authorize.ts";
import { loadPolicy } from "./policy.ts";
import { loadSettings, type HostSettings } from "./settings.ts";
import { PATTERNS, PLUGIN_NAME_RULE } from "./validate.ts";

/** The element <vmhook:plugin name="NAME"> names a custom plugin, journaled as "plugin:NAME". */
export const CUSTOM_ELEMENT = "plugin";
export const CUSTOM_PREFIX = "plugin:";

export interface PluginInstance {
  /** Journal id: "hugepages", or "plugin:NAME" for custom plugins. */
  id: string;
  plugin: AnyPlugin;
  config: unknown;
  elements: XmlElement[];
}

/**
 * The domain's plugins in the order their elements first appear in the
 * metadata (prepare runs them in that order, release undoes in reverse),
 * each config allowed by the host policy. `settings` gives the run's
 * snapshot of the host settings (the hook's own, so one run reads them once).
 * `admitted`: the run's prepare held these configs against the policy
 * already, and they are not judged again on a host that run has changed.
 */
export async function loadDomainPlugins(domain: Domain, host: Host, registry: PluginRegistry, settings: () => HostSettings = () => loadSettings(host), admitted = false): Promise<PluginInstance[]> {
  const builtinNames = () => registry.builtinNames();
  const metadata = domain.metadata;
  if (!metadata) return [];
  checkRoot(metadata);
  const elements = metadataChildren(metadata);

  const policy = loadPolicy(host);
  const groups = new Map<string, XmlElement[]>();
  for (const element of elements) {
    const id = pluginId(element, builtinNames);
    if (id.startsWith(CUSTOM_PREFIX) && groups.has(id)) throw secondCustomElement(element, id);
    if (id.startsWith(CUSTOM_PREFIX)) refuseBuiltinAsCustom(host, element, id.slice(CUSTOM_PREFIX.length), builtinNames());
    if (id.startsWith(CUSTOM_PREFIX)) authorizeCustomPlugin(policy, id.slice(CUSTOM_PREFIX.length), element);
    groups.set(id, [...(groups.get(id) ?? []), element]);
  }

  const instances: PluginInstance[] = [];
  for (const [id, elements] of groups) instances.push(await loadInstance(id, elements, domain, host, registry));
  if (!admitted) await authorizeInstances(policy, instances, registry.policyRules, domain, host, settings);
  return instances;
}

/** The plugins reconnect checks, and why each one that cannot be checked as configured is not. */
export interface ReconnectPlugins {
  instances: PluginInstance[];
  problems: string[];
}

/**
 * reconnect's plugins: those with changes in the journal (`held`, in its
 * order, the prepare's), then the others the metadata names now. Each is
 * read on its own, so an element that no longer reads (a live metadata
 * edit, a custom plugin gone from plugins.d) keeps no other plugin from
 * putting back what it lost. A built-in plugin with changes is checked even
 * then, from its records alone (its config undefined: built-in reconnect
 * planners need only their records), unless it does not load at all; any
 * other is left out. Which custom plugins may run is still checked.
 * `problems`: one line per element left unread, naming it and why.
 */
export async function loadReconnectPlugins(domain: Domain, held: string[], host: Host, registry: PluginRegistry): Promise<ReconnectPlugins> {
  const problems: string[] = [];
  const groups = new Map<string, XmlElement[] | Error>();
  const metadata = domain.metadata;
  let elements: XmlElement[] = [];
  if (metadata) {
    try {
      checkRoot(metadata);
    } catch (error) {
      problems.push(describeError(error));
    }
    try {
      elements = metadataChildren(metadata);
    } catch (error) {
      problems.push(`${describeError(error)}; none of them is read at this reconnect`);
    }
  }
  for (const element of elements) {
    try {
      const id = pluginId(element, () => registry.builtinNames());
      const earlier = groups.get(id);
      groups.set(id, earlier instanceof Error ? earlier : id.startsWith(CUSTOM_PREFIX) && earlier ? secondCustomElement(element, id) : [...(earlier ?? []), element]);
    } catch (error) {
      problems.push(`${describeError(error)}; it is left out of this reconnect`);
    }
  }
  const instances: PluginInstance[] = [];
  for (const id of new Set([...held, ...groups.keys()])) {
    try {
      instances.push(await reconnectInstance(id, groups.get(id), domain, host, registry));
    } catch (error) {
      const fromRecords = !id.startsWith(CUSTOM_PREFIX) && held.includes(id);
      if (!fromRecords) problems.push(`${id}: ${describeError(error)}; ${id} is left out of this reconnect`);
      else problems.push(await checkedFromRecords(id, error, held, instances, host, registry));
    }
  }
  return { instances, problems };
}

/**
 * A built-in plugin with changes whose element does not read: its instance
 * from the records joins `instances`, unless the plugin itself does not load
 * (a journal of a newer vmhook naming a plugin this one lacks); the line says which.
 */
async function checkedFromRecords(id: string, error: unknown, held: string[], instances: PluginInstance[], host: Host, registry: PluginRegistry): Promise<string> {
  const why = `${id}: ${describeError(error)}`;
  try {
    instances.push(await recordsOnly(id, host, registry));
    return `${why}; its changes in the journal are still checked, from the journal alone`;
  } catch (loadError) {
    const alsoWhy = describeError(loadError) === describeError(error) ? "" : ` (${describeError(loadError)})`;
    const count = held.filter((plugin) => plugin === id).length;
    return `${why}; its ${count} change(s) in the journal cannot be checked at this reconnect${alsoWhy}; they stay in the journal, and release gives them back only where ${id} loads (vmhook status lists them)`;
  }
}

async function reconnectInstance(id: string, elements: XmlElement[] | Error | undefined, domain: Domain, host: Host, registry: PluginRegistry): Promise<PluginInstance> {
  if (elements instanceof Error) throw elements;
  if (id.startsWith(CUSTOM_PREFIX)) {
    const name = id.slice(CUSTOM_PREFIX.length);
    if (!elements) throw new VmhookError(`its <vmhook:${CUSTOM_ELEMENT} name="${name}"> is no longer in the domain's metadata`);
    authorizeCustomPlugin(loadPolicy(host), name, elements[0]!);
  }
  return elements ? loadInstance(id, elements, domain, host, registry) : recordsOnly(id, host, registry);
}

/** A built-in plugin without a config: its reconnect planner works from its records. */
async function recordsOnly(id: string, host: Host, registry: PluginRegistry): Promise<PluginInstance> {
  return { id, plugin: await registry.load(id, host), config: undefined, elements: [] };
}

/** One plugin's instance: loaded, its elements parsed into its config. */
async function loadInstance(id: string, elements: XmlElement[], domain: Domain, host: Host, registry: PluginRegistry): Promise<PluginInstance> {
  const plugin = await registry.load(id, host);
  // Custom plugins may use any DOM method: they get xmldom's elements, read only for them.
  const given = id.startsWith(CUSTOM_PREFIX) ? elements.map(domElement) : elements;
  return { id, plugin, config: parsed(id, () => plugin.parse(given, domain)), elements: given };
}

/** A plugin's config; a custom plugin's refusal is its element's, naming the plugin (CustomConfigError), as a built-in's ConfigError is. */
function parsed<T>(id: string, parse: () => T): T {
  try {
    return namingCustomPlugin(id, parse);
  } catch (error) {
    // A built-in's error comes out as it is; a custom plugin's, named, as a VmhookError.
    if (!id.startsWith(CUSTOM_PREFIX)) throw error;
    const named = error as VmhookError;
    throw new CustomConfigError(named.message, named.lines);
  }
}

/**
 * Runs a plugin's own code (its parse, a record's check, an apply, a
 * handler): a custom plugin's error comes out naming it (customPluginError),
 * whether `work` throws or the promise it returns rejects.
 */
export function namingCustomPlugin<T>(pluginId: string, work: () => T): T {
  try {
    const result = work();
    if (!(result instanceof Promise)) return result;
    return result.catch((error: unknown) => {
      throw customPluginError(pluginId, error);
    }) as T;
  } catch (error) {
    throw customPluginError(pluginId, error);
  }
}

/**
 * An error from a custom plugin's own code (parse, planner, check, apply,
 * handler) as the user sees it: naming the plugin, once, and without the
 * stack of a plain Error (a bug's TypeError is the plugin's, not vmhook's).
 * A built-in's error is passed on as it is: built-ins name their element.
 */
export function customPluginError(pluginId: string, error: unknown): unknown {
  if (!pluginId.startsWith(CUSTOM_PREFIX)) return error;
  // Its fix stays apart: doctor's reason and validate's "NOT checked" take the reason alone.
  if (error instanceof FixableError) return error.retold(withPluginName(pluginId, error.reason));
  return new VmhookError(withPluginName(pluginId, describeError(error)), error instanceof VmhookError ? error.lines : []);
}

/** The text with the plugin's id in front, unless it starts with the plugin's name already. */
export function withPluginName(pluginId: string, text: string): string {
  const name = pluginId.replace(CUSTOM_PREFIX, "");
  // `${pluginId} `: the runner's own errors ("plugin:gate did not finish planning prepare within …");
  // `plugin gate `: an executable plugin's ("plugin gate failed at prepare: …");
  // `<vmhook:plugin name="gate"`: a custom plugin's element, as docs/plugins.md's examples name it.
  const named = [`${pluginId}:`, `${pluginId} `, `plugin ${name} `, `${name}:`, `<vmhook:${name} `, `<vmhook:${name}>`, `<vmhook:${CUSTOM_ELEMENT} name="${name}"`].some((start) =>
    text.startsWith(start),
  );
  return named ? text : `${pluginId}: ${text}`;
}

/** <vmhook:hooks> itself: no attributes, no text of its own. */
function checkRoot(metadata: XmlElement): void {
  const rootName = `<vmhook:${ROOT_ELEMENT}>`;
  const extra = Object.keys(attributes(metadata));
  if (extra.length > 0) throw new ConfigError(rootName, `has attribute ${extra[0]}, but takes none; configure plugins in its child elements`);
  const text = [...metadataText(metadata)].join("").trim();
  if (text !== "") throw new ConfigError(rootName, `contains the text ${JSON.stringify(text.slice(0, 40))}; it holds only plugin elements such as <vmhook:hugepages/>`);
}

/** The plugin id a child of <vmhook:hooks> names, or an error naming it when it names none. */
function pluginId(element: XmlElement, builtinNames: () => string[]): string {
  if (element.namespaceURI !== NAMESPACE_URI) {
    throw new ConfigError(`<vmhook:${ROOT_ELEMENT}>`, `contains <${element.tagName}> from namespace "${element.namespaceURI ?? "none"}"; its children must be vmhook elements (xmlns:vmhook="${NAMESPACE_URI}")`);
  }
  const id = element.localName === CUSTOM_ELEMENT ? customId(element) : element.localName!;
  if (element.localName !== CUSTOM_ELEMENT && !builtinNames().includes(id)) {
    const elements = [...builtinNames(), CUSTOM_ELEMENT];
    const meant = closest(id, elements);
    throw new ConfigError(describeElement(element), `is not a vmhook element; ${meant ? `did you mean <vmhook:${meant}/>?` : `use one of ${elements.map((name) => `<vmhook:${name}>`).join(", ")}`}`);
  }
  return id;
}

/**
 * <vmhook:plugin name="hugepage"> (or name="hugepages") that no installed
 * plugin has: a built-in is meant, which the plugins directory's search
 * would only call "not installed".
 */
function refuseBuiltinAsCustom(host: Host, element: XmlElement, name: string, builtins: string[]): void {
  if (customPluginPresent(host, name)) return;
  if (builtins.includes(name)) throw new ConfigError(describeElement(element), `${name} is a built-in plugin, not one in ${paths.pluginsDir}; write <vmhook:${name}/> in its place`);
  const meant = closest(name, builtins);
  if (meant) throw new ConfigError(describeElement(element), `no plugin ${name} is installed in ${paths.pluginsDir}, and ${name} is not a built-in; did you mean <vmhook:${meant}/>?`);
}

const secondCustomElement = (element: XmlElement, id: string) => new ConfigError(describeElement(element), `names plugin ${id.slice(CUSTOM_PREFIX.length)} a second time; merge the two elements`);

function customId(element: XmlElement): string {
  if (!element.hasAttribute("name")) throw new ConfigError(describeElement(element), `has no name attribute; write <vmhook:plugin name="NAME"> with NAME a file in the plugins directory`);
  const name = element.getAttribute("name")!;
  if (!PATTERNS.pluginName.test(name)) {
    throw new ConfigError(describeElement(element), `${attributeText("name", name)} is not a plugin name: ${PLUGIN_NAME_RULE}`);
  }
  return `${CUSTOM_PREFIX}${name}`;
}

/** The text directly inside <vmhook:hooks> (not inside its child elements). */
function* metadataText(metadata: XmlElement): Generator<string> {
  for (let node = metadata.firstChild; node; node = node.nextSibling) {
    if (node.nodeType === 3 || node.nodeType === 4) yield node.nodeValue ?? "";
  }
}
