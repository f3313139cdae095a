// The vmhook element of a domain XML as a DOM element that `vmhook enable`,
// `disable` and `config` edit in place: what a command does not change (the
// user's comments, processing instructions, CDATA, other plugins' elements
// and attributes, their order) is stored again as it was, because it is never
// rebuilt from a summary of the element.
import type { Document, Element, Node } from "@xmldom/xmldom";
import { parseXmlDocument } from "./domain.ts";
import { NAMESPACE_URI, ROOT_ELEMENT } from "./paths.ts";
import { childElements, METADATA_KEY, pastedContent } from "./metadata-text.ts";
import { ELEMENT_NODE, xmldom } from "./xml.ts";

const TEXT_NODE = 3;
const CDATA_SECTION_NODE = 4;
const XMLNS_URI = "http://www.w3.org/2000/xmlns/";

/** A new, empty <vmhook:hooks> in a document of its own. */
export function emptyHooks(): Element {
  const document = new (xmldom().DOMImplementation)().createDocument(NAMESPACE_URI, `${METADATA_KEY}:${ROOT_ELEMENT}`, null);
  return document.documentElement!;
}

/**
 * vmhook's elements in the domain's <metadata> as one <vmhook:hooks>: the
 * stored one, with any plugin element libvirt keeps outside it moved in
 * (document order kept). Undefined when the domain has none.
 */
export function storedHooks(domainXml: string): Element | undefined {
  const document = parseXmlDocument(domainXml, "the domain XML");
  const metadata = childElements(document.documentElement!).find((element) => element.localName === "metadata");
  const vmhooks = metadata ? childElements(metadata).filter((element) => element.namespaceURI === NAMESPACE_URI) : [];
  if (vmhooks.length === 0) return undefined;
  const hooks = emptyHooks();
  for (const element of vmhooks) {
    const moved = element.localName === ROOT_ELEMENT ? [...childNodes(element)] : [element];
    for (const node of moved) hooks.appendChild(hooks.ownerDocument!.importNode(node, true));
  }
  return hooks;
}

/** What a user pasted or edited, in any form readPastedMetadata takes, as <vmhook:hooks> with their comments kept. */
export function pastedHooks(text: string): Element {
  const hooks = emptyHooks();
  for (const node of pastedContent(text)) hooks.appendChild(inNamespace(hooks.ownerDocument!, node as unknown as Node, "prefixed"));
  return hooks;
}

/** Adds a plugin element of this name after the others and returns it. */
export function appendPlugin(hooks: Element, name: string): Element {
  return hooks.appendChild(hooks.ownerDocument!.createElementNS(NAMESPACE_URI, `${METADATA_KEY}:${name}`)) as Element;
}

/**
 * The text of <hooks>. "domain": prefixed, with its namespace declaration,
 * indented, as it reads in the domain XML; "virsh": without a prefix and on
 * one line, as `virsh metadata --set` takes it. White space between elements
 * is laid out anew (libvirt lays it out again when it stores the element
 * anyway); everything else is written as it is.
 */
export function hooksText(hooks: Element, form: "domain" | "virsh"): string {
  const copy = inNamespace(emptyHooks().ownerDocument!, hooks, form === "domain" ? "prefixed" : "unprefixed") as Element;
  layOut(copy, form === "domain" ? "  " : "", 0);
  return new (xmldom().XMLSerializer)().serializeToString(copy);
}

/**
 * The domain XML with its vmhook elements replaced by `hooks` (undefined:
 * removed), as `virsh metadata --set`/`--remove` leave it: the domain the
 * change is checked against before libvirt stores it.
 */
export function withVmhookMetadata(domainXml: string, hooks: Element | undefined): string {
  const document = parseXmlDocument(domainXml, "the domain XML");
  const domain = document.documentElement!;
  let metadata = childElements(domain).find((element) => element.localName === "metadata");
  if (!metadata) {
    metadata = document.createElement("metadata");
    domain.appendChild(metadata);
  }
  for (const element of childElements(metadata)) {
    if (element.namespaceURI === NAMESPACE_URI) metadata.removeChild(element);
  }
  if (hooks) metadata.appendChild(document.importNode(hooks, true));
  return new (xmldom().XMLSerializer)().serializeToString(document);
}

function childNodes(element: Element): Node[] {
  const nodes: Node[] = [];
  for (let node = element.firstChild; node; node = node.nextSibling) nodes.push(node);
  return nodes;
}

/**
 * A copy of the node in `document`: vmhook's elements, and those without a
 * namespace, "prefixed" in vmhook's namespace (what libvirt stores for the
 * element given to virsh metadata) or "unprefixed" (what virsh takes);
 * elements of other namespaces, comments, CDATA and text as they are.
 */
export function inNamespace(document: Document, node: Node, form: "prefixed" | "unprefixed"): Node {
  const element = node as Element;
  if (node.nodeType !== ELEMENT_NODE || (element.namespaceURI && element.namespaceURI !== NAMESPACE_URI)) return document.importNode(node, true);
  const copy = form === "prefixed" ? document.createElementNS(NAMESPACE_URI, `${METADATA_KEY}:${element.localName}`) : document.createElementNS(null, element.localName!);
  for (let i = 0; i < element.attributes.length; i++) {
    const attribute = element.attributes.item(i)!;
    // vmhook's own declaration: the serializer writes it where the prefix needs it. A default
    // one (xmlns="urn:…") would take the copy, unprefixed for virsh, into that namespace, where
    // the hook refuses it; the serializer declares it again on any content that is in it.
    if (attribute.namespaceURI === XMLNS_URI && (attribute.value === NAMESPACE_URI || attribute.name === "xmlns")) continue;
    copy.setAttributeNS(attribute.namespaceURI, attribute.name, attribute.value);
  }
  for (const child of childNodes(element)) copy.appendChild(inNamespace(document, child, form));
  return copy;
}

/** Replaces the white space between the nodes of element-only content by one line each, `indent` deeper per level ("" : none). */
function layOut(element: Element, indent: string, level: number): void {
  const children = childNodes(element);
  const blank = (node: Node) => node.nodeType === TEXT_NODE && node.nodeValue!.trim() === "";
  // Text or CDATA of its own: the content is data, written as it is.
  if (children.some((node) => node.nodeType === CDATA_SECTION_NODE || (node.nodeType === TEXT_NODE && !blank(node)))) return;
  for (const node of children.filter(blank)) element.removeChild(node);
  const content = childNodes(element);
  if (content.length === 0) return;
  const line = (depth: number) => element.ownerDocument!.createTextNode(indent ? `\n${indent.repeat(depth)}` : "");
  for (const node of content) {
    if (indent) element.insertBefore(line(level + 1), node);
    if (node.nodeType === ELEMENT_NODE) layOut(node as Element, indent, level + 1);
  }
  if (indent) element.appendChild(line(level));
}
