// The vmhook metadata element → the list of plugin instances to run, each
// with its typed config. All of it is checked before anything on the host
// changes, so a bad config aborts the start with the host untouched.
import { domElement } from "./dom-element.ts";
import type { XmlElement } from "./xml.ts";
import { attributes, describeElement, metadataChildren, type Domain } from "./domain.ts";
import { ConfigError } from "./errors.ts";
import type { Host } from "./host.ts";
import { NAMESPACE_URI, ROOT_ELEMENT } from "./paths.ts";
import type { AnyPlugin, PluginRegistry } from "./plugin.ts";
import { authorizeCustomPlugin, authorizeInstances } from "./authorize.ts";
import { loadPolicy } from "./policy.ts";
import { loadSettings, type HostSettings } from "./settings.ts";
import { PATTERNS } from "./validate.ts";

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
  const rootName = `<vmhook:${ROOT_ELEMENT}>`;
  const extra = Object.keys(attributes(metadata));
  if (extra.length > 0) throw new ConfigError(rootName, `has attribute ${extra[0]}, but takes none; configure plugins in its child elements`);
  const text = [...metadataText(metadata)].join("").trim();
  if (text !== "") throw new ConfigError(rootName, `contains the text ${JSON.stringify(text.slice(0, 40))}; it holds only plugin elements such as <vmhook:hugepages/>`);

  const policy = loadPolicy(host);
  const groups = new Map<string, XmlElement[]>();
  for (const element of metadataChildren(metadata)) {
    if (element.namespaceURI !== NAMESPACE_URI) {
      throw new ConfigError(rootName, `contains <${element.tagName}> from namespace "${element.namespaceURI ?? "none"}"; its children must be vmhook elements (xmlns:vmhook="${NAMESPACE_URI}")`);
    }
    const id = element.localName === CUSTOM_ELEMENT ? customId(element) : element.localName!;
    if (element.localName !== CUSTOM_ELEMENT && !builtinNames().includes(id)) {
      throw new ConfigError(
        describeElement(element),
        `is not a vmhook element; use one of ${[...builtinNames(), CUSTOM_ELEMENT].map((name) => `<vmhook:${name}>`).join(", ")}`,
      );
    }
    if (id.startsWith(CUSTOM_PREFIX) && groups.has(id)) {
      throw new ConfigError(describeElement(element), `names plugin ${id.slice(CUSTOM_PREFIX.length)} a second time; merge the two elements`);
    }
    if (id.startsWith(CUSTOM_PREFIX)) authorizeCustomPlugin(policy, id.slice(CUSTOM_PREFIX.length), element);
    groups.set(id, [...(groups.get(id) ?? []), element]);
  }

  const instances: PluginInstance[] = [];
  for (const [id, elements] of groups) {
    const plugin = await registry.load(id, host);
    // Custom plugins may use any DOM method: they get xmldom's elements, read only for them.
    const given = id.startsWith(CUSTOM_PREFIX) ? elements.map(domElement) : elements;
    instances.push({ id, plugin, config: plugin.parse(given, domain), elements: given });
  }
  if (!admitted) await authorizeInstances(policy, instances, registry.policyRules, domain, host, settings);
  return instances;
}

function customId(element: XmlElement): string {
  if (!element.hasAttribute("name")) throw new ConfigError(describeElement(element), `has no name attribute; write <vmhook:plugin name="NAME"> with NAME a file in the plugins directory`);
  const name = element.getAttribute("name")!;
  if (!PATTERNS.pluginName.test(name)) {
    throw new ConfigError(describeElement(element), `name="${name}" is not a plugin name: lower-case letters, digits, ".", "_" and "-", starting with a letter or digit`);
  }
  return `${CUSTOM_PREFIX}${name}`;
}

/** The text directly inside <vmhook:hooks> (not inside its child elements). */
function* metadataText(metadata: XmlElement): Generator<string> {
  for (let node = metadata.firstChild; node; node = node.nextSibling) {
    if (node.nodeType === 3 || node.nodeType === 4) yield node.nodeValue ?? "";
  }
}
