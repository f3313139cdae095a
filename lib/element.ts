// The strict reader of a built-in plugin's element: what vmhook does not
// understand is an error, never ignored. A child element, text, or an
// attribute of another namespace (x:size="1G") would otherwise be skipped
// silently and the plugin would act on its defaults.
import { declaresNamespace, type XmlElement } from "./xml.ts";
import { describeElement } from "./domain.ts";
import { attributeText, ConfigError, excerpt, quoted } from "./errors.ts";

const ELEMENT_NODE = 1;
const TEXT_NODE = 3;
const CDATA_NODE = 4;

/**
 * The element's attributes, refusing any the plugin does not know (a typo
 * must not fall back to a default), any in a namespace, any child element and
 * any text other than white space.
 */
export function readAttributes(element: XmlElement, allowed: readonly string[]): Record<string, string> {
  const where = describeElement(element);
  rejectContent(element, where, allowed);
  const found: Record<string, string> = {};
  for (let i = 0; i < element.attributes.length; i++) {
    const attribute = element.attributes.item(i)!;
    if (declaresNamespace(attribute)) continue;
    if (attribute.prefix) {
      throw new ConfigError(where, `has attribute ${attributeText(attribute.name, attribute.value)} in namespace ${quoted(attribute.namespaceURI ?? "none")}; vmhook reads only plain attributes: write ${attribute.localName}="..." without a prefix`);
    }
    const name = attribute.name;
    if (!allowed.includes(name)) {
      throw new ConfigError(where, allowed.length > 0 ? `has unknown attribute ${excerpt(name)}; allowed: ${allowed.join(", ")}` : `has unknown attribute ${excerpt(name)}; it takes no attributes`);
    }
    found[name] = attribute.value;
  }
  return found;
}

/** Built-in elements are empty: <vmhook:NAME attr="..."/>. */
function rejectContent(element: XmlElement, where: string, allowed: readonly string[]): void {
  const remedy = allowed.length > 0 ? `write its settings as attributes (allowed: ${allowed.join(", ")})` : `it has no settings: write <vmhook:${element.localName}/>`;
  for (let node = element.firstChild; node; node = node.nextSibling) {
    if (node.nodeType === ELEMENT_NODE) {
      throw new ConfigError(where, `contains <${(node as XmlElement).tagName}>, but takes no child elements; ${remedy}`);
    }
    if ((node.nodeType === TEXT_NODE || node.nodeType === CDATA_NODE) && (node.nodeValue ?? "").trim() !== "") {
      throw new ConfigError(where, `contains the text ${JSON.stringify((node.nodeValue ?? "").trim().slice(0, 40))}, but takes none; ${remedy}`);
    }
  }
}

/** Rejects a second element where a plugin allows only one. */
export function single(elements: XmlElement[]): XmlElement {
  if (elements.length > 1) {
    throw new ConfigError(describeElement(elements[1]!), `appears ${elements.length} times; keep one`);
  }
  return elements[0]!;
}
