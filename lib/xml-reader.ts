// The domain XML as the hook reads it: parsed by Bun's own XML parser
// (Bun.XML, native code, a conforming XML 1.0 processor: well-formedness,
// character and entity references, expansion limits; it never reads an
// external entity), turned into the few DOM nodes vmhook reads (lib/xml.ts),
// with namespaces resolved here, as Bun leaves prefixed names as written.
// xmldom's set-up and first parse cost 80-140 ms of a prepare under TCG
// (docs/bench.md), Bun.XML's a few ms.
//
// Stricter than the XML spec in one place: a DOCTYPE is refused (libvirt
// writes none), so no entity but the predefined ones is ever expanded.
// Bun's messages name the problem and the tags, not the line.
import type { XmlAttribute, XmlDocument, XmlElement, XmlNode, XmlNodeList } from "./xml.ts";

export class XmlSyntaxError extends Error {}

const XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NAMESPACE = "http://www.w3.org/2000/xmlns/";

/** A list as the DOM has it (length, item); plain arrays inside: a subclass of Array is slow to build cold. */
class List<Item> {
  constructor(readonly items: Item[]) {}
  get length(): number {
    return this.items.length;
  }
  item(index: number): Item | null {
    return this.items[index] ?? null;
  }
}

abstract class ReaderNode implements XmlNode {
  abstract readonly nodeType: number;
  abstract readonly nodeName: string;
  parentNode: ReaderNode | null = null;
  readonly children: ReaderNode[] = [];
  readonly childNodes: XmlNodeList = new List(this.children);
  nextSibling: ReaderNode | null = null;
  previousSibling: ReaderNode | null = null;

  get firstChild(): ReaderNode | null {
    return this.children[0] ?? null;
  }
  get lastChild(): ReaderNode | null {
    return this.children[this.children.length - 1] ?? null;
  }
  get nodeValue(): string | null {
    return null;
  }
  get textContent(): string | null {
    return this.nodeValue;
  }

  append(child: ReaderNode): void {
    const last = this.lastChild;
    if (last) {
      last.nextSibling = child;
      child.previousSibling = last;
    }
    child.parentNode = this;
    this.children.push(child);
  }
}

class CharacterNode extends ReaderNode {
  constructor(
    readonly nodeType: 3 | 4 | 7 | 8,
    readonly nodeName: string,
    readonly data: string,
  ) {
    super();
  }
  override get nodeValue(): string {
    return this.data;
  }
}

class ReaderAttribute implements XmlAttribute {
  constructor(
    readonly name: string,
    readonly prefix: string | null,
    readonly localName: string,
    readonly namespaceURI: string | null,
    readonly value: string,
  ) {}
  get nodeValue(): string {
    return this.value;
  }
}


export class ReaderElement extends ReaderNode implements XmlElement {
  readonly nodeType = 1;
  readonly attributeList: ReaderAttribute[] = [];
  readonly attributes = new List(this.attributeList);

  constructor(
    readonly ownerDocument: ReaderDocument,
    readonly tagName: string,
    readonly prefix: string | null,
    readonly localName: string,
    readonly namespaceURI: string | null,
  ) {
    super();
  }
  get nodeName(): string {
    return this.tagName;
  }
  override get textContent(): string {
    let text = "";
    for (const child of this.children) if (child.nodeType === 1 || child.nodeType === 3 || child.nodeType === 4) text += child.textContent;
    return text;
  }
  getAttribute(qualifiedName: string): string | null {
    return this.attributeList.find((attribute) => attribute.name === qualifiedName)?.value ?? null;
  }
  hasAttribute(qualifiedName: string): boolean {
    return this.attributeList.some((attribute) => attribute.name === qualifiedName);
  }
  /** Its position: the index among its parent's child elements, of each element from the root down. */
  elementPath(): number[] {
    const path: number[] = [];
    for (let element: ReaderNode = this; element.parentNode; element = element.parentNode) {
      path.unshift(element.parentNode.children.filter((node) => node.nodeType === 1).indexOf(element));
    }
    return path;
  }
}

export class ReaderDocument extends ReaderNode implements XmlDocument {
  readonly nodeType = 9;
  readonly nodeName = "#document";
  /** The text it was read from. */
  constructor(readonly source: string) {
    super();
  }
  get documentElement(): ReaderElement | null {
    return (this.children.find((node) => node.nodeType === 1) as ReaderElement | undefined) ?? null;
  }
}

interface Scope {
  parent: Scope | undefined;
  prefixes: Map<string, string>;
}

const ROOT_SCOPE: Scope = { parent: undefined, prefixes: new Map([["xml", XML_NAMESPACE], ["xmlns", XMLNS_NAMESPACE]]) };

/** Reads `xml` into a document; throws XmlSyntaxError naming the problem. */
export function readXml(xml: string): ReaderDocument {
  refuseDoctype(xml);
  let root: BunXmlElement;
  try {
    root = Bun.XML.parse(xml, { compact: false });
  } catch (error) {
    throw new XmlSyntaxError((error as Error).message.replace(/^XML Parse error: /, ""));
  }
  const document = new ReaderDocument(xml);
  document.append(readElement(document, root, ROOT_SCOPE));
  return document;
}

/**
 * A DOCTYPE can only stand in the prolog (before the root element), among
 * white space, comments and processing instructions: looked for there.
 */
function refuseDoctype(xml: string): void {
  let at = 0;
  for (;;) {
    while (at < xml.length && " \t\r\n\uFEFF".includes(xml[at]!)) at++;
    const [open, close] = xml.startsWith("<?", at) ? ["<?", "?>"] : xml.startsWith("<!--", at) ? ["<!--", "-->"] : [];
    if (!open || !close) break;
    // The close is looked for after the whole opening, as the parser does: "<!-->" does not close itself.
    const end = xml.indexOf(close, at + open.length);
    if (end < 0) return; // not well-formed: the parser says so
    at = end + close.length;
  }
  if (xml.startsWith("<!DOCTYPE", at)) throw new XmlSyntaxError(`${lineAndColumn(xml, at)}: a DOCTYPE is not allowed: vmhook reads no DTD; remove it`);
}

function lineAndColumn(text: string, offset: number): string {
  const before = text.slice(0, offset).replace(/\r\n?/g, "\n");
  return `line ${before.split("\n").length}, column ${before.length - before.lastIndexOf("\n")}`;
}

/** "vmhook:hooks" as prefix and local name; a second ":" is an error of the namespaces spec that XML 1.0 allows. */
function splitName(name: string, what: string): { prefix: string | null; local: string } {
  const colon = name.indexOf(":");
  if (colon < 0) return { prefix: null, local: name };
  const local = name.slice(colon + 1);
  if (colon === 0 || local === "" || local.includes(":")) throw new XmlSyntaxError(`${what}: the name ${name} is not a prefix and a local name; write at most one ":", as in vmhook:hooks`);
  return { prefix: name.slice(0, colon), local };
}

function readElement(document: ReaderDocument, node: BunXmlElement, scope: Scope): ReaderElement {
  const tag = `<${node.name}>`;
  const { prefix, local } = splitName(node.name, tag);
  if (prefix === "xmlns") throw new XmlSyntaxError(`${tag}: the prefix xmlns is reserved for namespace declarations`);
  const written = Object.keys(node.attributes).map((name) => ({ name, ...splitName(name, `the attribute ${name} of ${tag}`), value: node.attributes[name]! }));
  const elementScope = declare(scope, written, tag);
  const element = new ReaderElement(document, node.name, prefix, local, resolve(elementScope, prefix, tag, true));
  const expanded = new Set<string>();
  for (const attribute of written) {
    const isDeclaration = attribute.name === "xmlns" || attribute.prefix === "xmlns";
    const namespace = isDeclaration ? XMLNS_NAMESPACE : resolve(elementScope, attribute.prefix, `the attribute ${attribute.name} of ${tag}`, false);
    const key = `{${namespace ?? ""}}${attribute.local}`;
    if (namespace && expanded.has(key)) throw new XmlSyntaxError(`${tag} has two attributes named ${attribute.local} in namespace "${namespace}"`);
    expanded.add(key);
    element.attributeList.push(new ReaderAttribute(attribute.name, attribute.prefix, attribute.local, namespace, attribute.value));
  }
  for (const child of node.children) {
    if (typeof child === "string") element.append(new CharacterNode(3, "#text", child));
    else if ("name" in child) element.append(readElement(document, child, elementScope));
    else if ("comment" in child) element.append(new CharacterNode(8, "#comment", child.comment));
    else element.append(new CharacterNode(7, child.target, child.data));
  }
  return element;
}

/** The element's namespace declarations, checked, as a scope inside `scope`. */
function declare(scope: Scope, written: { name: string; prefix: string | null; local: string; value: string }[], tag: string): Scope {
  const declarations = written.filter((attribute) => attribute.name === "xmlns" || attribute.prefix === "xmlns");
  if (declarations.length === 0) return scope;
  const prefixes = new Map<string, string>();
  for (const declaration of declarations) {
    const declared = declaration.prefix ? declaration.local : "";
    if (declared === "xmlns" || (declared !== "xml" && declaration.value === XML_NAMESPACE) || declaration.value === XMLNS_NAMESPACE) {
      throw new XmlSyntaxError(`${tag} declares ${declaration.name}="${declaration.value}": the prefixes xml and xmlns and their namespaces are reserved`);
    }
    if (declared === "xml" && declaration.value !== XML_NAMESPACE) throw new XmlSyntaxError(`${tag} binds the reserved prefix xml to "${declaration.value}"`);
    if (declared !== "" && declaration.value === "") throw new XmlSyntaxError(`${tag} declares ${declaration.name}="": a prefix cannot be bound to no namespace`);
    prefixes.set(declared, declaration.value);
  }
  return { parent: scope, prefixes };
}

function resolve(scope: Scope, prefix: string | null, what: string, isElement: boolean): string | null {
  // An attribute without a prefix is in no namespace, whatever the default namespace.
  if (prefix === null && !isElement) return null;
  for (let each: Scope | undefined = scope; each; each = each.parent) {
    const uri = each.prefixes.get(prefix ?? "");
    if (uri !== undefined) return uri === "" ? null : uri;
  }
  if (prefix === null) return null;
  throw new XmlSyntaxError(`the prefix ${prefix} of ${what} is not declared; add xmlns:${prefix}="…" to it or to an element around it`);
}
