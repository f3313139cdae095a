// The vmhook metadata element → the list of plugin instances to run, each
// with its typed config. All of it is checked before anything on the host
// changes, so a bad config aborts the start with the host untouched.
import type { Element } from "@xmldom/xmldom";
import { attributes, describeElement, metadataChildren, type Domain } from "./domain.ts";
import { ConfigError } from "./errors.ts";
import type { Host } from "./host.ts";
import { NAMESPACE_URI, ROOT_ELEMENT } from "./paths.ts";
import type { Plugin } from "./plugin.ts";
import { authorizeCustomPlugin, authorizeInstances } from "./authorize.ts";
import { loadPolicy } from "./policy.ts";
import { PATTERNS } from "./validate.ts";
import { builtinNames, CUSTOM_ELEMENT, CUSTOM_PREFIX, loadPlugin } from "../plugins/index.ts";

export interface PluginInstance {
  /** Journal id: "hugepages", or "plugin:NAME" for custom plugins. */
  id: string;
  plugin: Plugin<unknown>;
  config: unknown;
  elements: Element[];
}

/**
 * The domain's plugins in the order their elements first appear in the
 * metadata (prepare runs them in that order, release undoes in reverse),
 * each config allowed by the host policy.
 */
export async function loadDomainPlugins(domain: Domain, host: Host): Promise<PluginInstance[]> {
  const metadata = domain.metadata;
  if (!metadata) return [];
  const rootName = `<vmhook:${ROOT_ELEMENT}>`;
  const extra = Object.keys(attributes(metadata));
  if (extra.length > 0) throw new ConfigError(rootName, `has attribute ${extra[0]}, but takes none; configure plugins in its child elements`);

  const policy = loadPolicy(host);
  const groups = new Map<string, Element[]>();
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
    const plugin = await loadPlugin(id, host);
    instances.push({ id, plugin, config: plugin.parse(elements, domain), elements });
  }
  await authorizeInstances(policy, instances, domain, host);
  return instances;
}

function customId(element: Element): string {
  const name = element.getAttribute("name");
  if (!name) throw new ConfigError(describeElement(element), `has no name attribute; write <vmhook:plugin name="NAME"> with NAME a file in the plugins directory`);
  if (!PATTERNS.pluginName.test(name)) {
    throw new ConfigError(describeElement(element), `name="${name}" is not a plugin name: lower-case letters, digits, ".", "_" and "-", starting with a letter or digit`);
  }
  return `${CUSTOM_PREFIX}${name}`;
}

/**
 * A plugin element's attributes, refusing any that the plugin does not know:
 * a typo must not silently fall back to a default.
 */
export function readAttributes(element: Element, allowed: readonly string[]): Record<string, string> {
  const found = attributes(element);
  for (const name of Object.keys(found)) {
    if (!allowed.includes(name)) {
      throw new ConfigError(
        describeElement(element),
        allowed.length > 0
          ? `has unknown attribute ${name}; allowed: ${allowed.join(", ")}`
          : `has unknown attribute ${name}; it takes no attributes`,
      );
    }
  }
  return found;
}

/** Rejects a second element where a plugin allows only one. */
export function single(elements: Element[]): Element {
  if (elements.length > 1) {
    throw new ConfigError(describeElement(elements[1]!), `appears ${elements.length} times; keep one`);
  }
  return elements[0]!;
}
