// The XML nodes vmhook reads, and xmldom for what needs a full DOM.
//
// The hook reads the domain XML with Bun's XML parser into vmhook's own small
// nodes (xml-reader.ts): xmldom's set-up and first parse cost 80-140 ms of a
// prepare under TCG (docs/bench.md). Those nodes implement the part of the
// DOM that vmhook uses, typed here; xmldom's nodes satisfy the same types, so
// code written against them reads either. xmldom itself is set up at its first use:
// editing commands, and custom plugins, which get real DOM elements
// (dom-element.ts).
import type * as Xmldom from "@xmldom/xmldom";

export const ELEMENT_NODE = 1;

export interface XmlNodeList {
  readonly length: number;
  item(index: number): XmlNode | null;
}

export interface XmlNode {
  readonly nodeType: number;
  readonly nodeName: string;
  readonly nodeValue: string | null;
  /** Elements: the text of every text and CDATA node below, in order. */
  readonly textContent: string | null;
  readonly parentNode: XmlNode | null;
  readonly childNodes: XmlNodeList;
  readonly firstChild: XmlNode | null;
  readonly lastChild: XmlNode | null;
  readonly nextSibling: XmlNode | null;
  readonly previousSibling: XmlNode | null;
}

export interface XmlAttribute {
  /** As written: "size", "xmlns:vmhook". */
  readonly name: string;
  readonly localName: string | null;
  readonly prefix: string | null;
  readonly namespaceURI: string | null;
  readonly value: string;
}

export interface XmlElement extends XmlNode {
  /** As written: "vmhook:hugepages". */
  readonly tagName: string;
  readonly localName: string | null;
  readonly prefix: string | null;
  readonly namespaceURI: string | null;
  readonly attributes: { readonly length: number; item(index: number): XmlAttribute | null };
  getAttribute(qualifiedName: string): string | null;
  hasAttribute(qualifiedName: string): boolean;
}

export interface XmlDocument extends XmlNode {
  readonly documentElement: XmlElement | null;
}

/** A namespace declaration, xmlns="…" or xmlns:p="…"; an attribute merely named like one (xmlnsfoo) declares nothing and is read as any other. */
export const declaresNamespace = (attribute: Pick<XmlAttribute, "name">): boolean => attribute.name === "xmlns" || attribute.name.startsWith("xmlns:");

export function xmldom(): typeof Xmldom {
  return require("@xmldom/xmldom") as typeof Xmldom;
}
