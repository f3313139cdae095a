// A small, strict XML 1.0 reader with namespaces, for the domain XML the hook
// gets on stdin: xmldom's set-up alone (its entity tables and grammar) costs
// about 20 ms of a compiled hook's start natively (docs/bench.md). It reads what libvirt writes and what users
// put in <metadata>: the XML declaration, comments, processing instructions,
// CDATA, the five predefined entities and character references, namespaces.
// Everything else is an error naming line:column: a DOCTYPE (vmhook reads no
// DTD, so no other entity can be defined), and any malformed input.
import type { XmlAttribute, XmlDocument, XmlElement, XmlNode, XmlNodeList } from "./xml.ts";

export class XmlSyntaxError extends Error {}

const XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NAMESPACE = "http://www.w3.org/2000/xmlns/";

// XML 1.0 (5th edition) NameStartChar and NameChar, without ":" (names are
// read as prefix:local). ASCII is decided by a table, the rest by these.
const NAME_START_RANGES = "A-Z_a-z\\u00C0-\\u00D6\\u00D8-\\u00F6\\u00F8-\\u02FF\\u0370-\\u037D\\u037F-\\u1FFF\\u200C-\\u200D\\u2070-\\u218F\\u2C00-\\u2FEF\\u3001-\\uD7FF\\uF900-\\uFDCF\\uFDF0-\\uFFFD\\u{10000}-\\u{EFFFF}";
const NAME_START_CHAR = new RegExp(`^[${NAME_START_RANGES}]$`, "u");
const NAME_CHAR = new RegExp(`^[${NAME_START_RANGES}\\-.0-9\\u00B7\\u0300-\\u036F\\u203F-\\u2040]$`, "u");
/** For each ASCII code: 2 starts a name, 1 continues one, 0 neither. */
const ASCII_NAME = new Uint8Array(128);
for (const [range, kind] of [["AZ", 2], ["az", 2], ["__", 2], ["09", 1], ["-.", 1]] as const) ASCII_NAME.fill(kind, range.charCodeAt(0), range.charCodeAt(1) + 1);
// The common case in one match each (the interpreter that runs a hook's
// code once is slow at loops over characters; regular expressions are
// compiled): ASCII names, attribute values without "<". Anything else takes
// the careful way below, which also names what is wrong.
const ASCII_QNAME = "[A-Za-z_][\\w.-]*(?::[A-Za-z_][\\w.-]*)?";
const START_TAG = new RegExp(`<(${ASCII_QNAME})((?:[ \\t\\n]+${ASCII_QNAME}[ \\t\\n]*=[ \\t\\n]*(?:"[^"<]*"|'[^'<]*'))*)[ \\t\\n]*(/?)>`, "y");
const ATTRIBUTE = new RegExp(`(${ASCII_QNAME})[ \\t\\n]*=[ \\t\\n]*(?:"([^"<]*)"|'([^'<]*)')`, "g");
const END_TAG = new RegExp(`</(${ASCII_QNAME})[ \\t\\n]*>`, "y");
/** A character XML 1.0 does not allow anywhere, even as a reference. */
const NOT_CHAR = /[^\t\n\u0020-\uD7FF\uE000-\uFFFD\u{10000}-\u{10FFFF}]/u;
const NOT_CHAR_OR_SURROGATE = /[^\t\n\u0020-\uD7FF\uE000-\uFFFD]/;
const [LESS_THAN, SLASH, EXCLAMATION, QUESTION] = [..."</!?"].map((character) => character.charCodeAt(0));
const PREDEFINED: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };
const XML_DECLARATION = /^<\?xml\s+version\s*=\s*("1\.\d+"|'1\.\d+')(\s+encoding\s*=\s*("[A-Za-z][\w.-]*"|'[A-Za-z][\w.-]*'))?(\s+standalone\s*=\s*("(yes|no)"|'(yes|no)'))?\s*\?>/y;

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
  /** The text it was read from, line endings normalized. */
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

interface WrittenAttribute {
  name: string;
  prefix: string | null;
  local: string;
  value: string;
  /** Its offset, for messages. */
  at: number;
}

interface StartTag {
  tagName: string;
  prefix: string | null;
  local: string;
  written: WrittenAttribute[];
  empty: boolean;
}

/** "vmhook:hooks" as prefix and local name. */
function splitName(name: string): { prefix: string | null; local: string } {
  const colon = name.indexOf(":");
  return colon < 0 ? { prefix: null, local: name } : { prefix: name.slice(0, colon), local: name.slice(colon + 1) };
}

interface OpenElement {
  element: ReaderElement;
  start: number;
  scope: Scope;
}

/** Reads `xml` into a document; throws XmlSyntaxError naming line:column and the problem. */
export function readXml(xml: string): ReaderDocument {
  return new Reader(xml).read();
}

class Reader {
  private readonly text: string;
  private position = 0;
  private readonly document: ReaderDocument;

  constructor(xml: string) {
    // As xmldom and the XML spec do, every line ending reads as "\n".
    this.text = ["\r", "\u0085", "\u2028", "\u2029"].some((ending) => xml.includes(ending)) ? xml.replace(/\r[\n\u0085]/g, "\n").replace(/[\r\u0085\u2028\u2029]/g, "\n") : xml;
    this.document = new ReaderDocument(this.text);
  }

  read(): ReaderDocument {
    // Surrogates are checked in pairs only when there are any: the Unicode-aware expression costs more to compile.
    const invalid = NOT_CHAR_OR_SURROGATE.test(this.text) ? NOT_CHAR.exec(this.text) : null;
    if (invalid) this.fail(invalid.index, `the character U+${invalid[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")} is not allowed in XML`);
    XML_DECLARATION.lastIndex = 0;
    if (XML_DECLARATION.test(this.text)) this.position = XML_DECLARATION.lastIndex;
    else if (/^<\?xml[\s?]/.test(this.text)) this.fail(0, "the XML declaration is malformed; write <?xml version=\"1.0\"?>");

    const root: Scope = { parent: undefined, prefixes: new Map([["xml", XML_NAMESPACE], ["xmlns", XMLNS_NAMESPACE]]) };
    const open: OpenElement[] = [];
    let rootSeen = false;
    while (this.position < this.text.length) {
      const parent: ReaderNode = open[open.length - 1]?.element ?? this.document;
      const start = this.position;
      const next = this.text.charCodeAt(start + 1);
      if (this.text.charCodeAt(start) !== LESS_THAN) {
        const data = this.characters();
        // Outside the root only white space, as written (a reference is not white space).
        const written = open.length === 0 ? this.firstNonSpace(start, this.position) : -1;
        if (written >= 0) this.fail(written, rootSeen ? "text after the root element" : "text before the root element");
        if (open.length > 0) parent.append(new CharacterNode(3, "#text", data));
      } else if (next === SLASH) {
        this.endTag(open);
        if (open.length === 0) rootSeen = true;
      } else if (next === EXCLAMATION && this.text.startsWith("<!--", start)) {
        parent.append(this.comment());
      } else if (next === EXCLAMATION && this.text.startsWith("<![CDATA[", start)) {
        if (open.length === 0) this.fail(start, "a CDATA section outside the root element");
        parent.append(this.cdata());
      } else if (next === EXCLAMATION && this.text.startsWith("<!DOCTYPE", start)) {
        this.fail(start, "a DOCTYPE is not allowed: vmhook reads no DTD; remove it");
      } else if (next === QUESTION) {
        parent.append(this.processingInstruction());
      } else {
        if (open.length === 0 && rootSeen) this.fail(start, "a second root element; a document has exactly one");
        const scope = open[open.length - 1]?.scope ?? root;
        const { element, empty, elementScope } = this.startTag(scope);
        parent.append(element);
        if (empty) rootSeen ||= open.length === 0;
        else open.push({ element, start, scope: elementScope });
      }
    }
    const unclosed = open[open.length - 1];
    if (unclosed) this.fail(unclosed.start, `<${unclosed.element.tagName}> is never closed`);
    if (!rootSeen) this.fail(this.text.length, "no root element");
    return this.document;
  }

  /** Throws naming where, as line:column (both from 1). */
  private fail(offset: number, problem: string): never {
    throw new XmlSyntaxError(`${this.locate(offset)}: ${problem}`);
  }

  /** The name of the end tag at this.position, character by character. */
  private scanEndTag(): string {
    this.position += 2;
    const [prefix, local] = this.qname(`an element name after "</"`);
    const name = prefix ? `${prefix}:${local}` : local;
    this.skipSpace();
    this.expect(">", `">" to end </${name}`);
    return name;
  }

  private locate(offset: number): string {
    const before = this.text.slice(0, offset);
    return `line ${before.split("\n").length}, column ${offset - before.lastIndexOf("\n")}`;
  }

  private expect(literal: string, what: string): void {
    if (!this.text.startsWith(literal, this.position)) this.fail(this.position, `expected ${what}`);
    this.position += literal.length;
  }

  private skipSpace(): boolean {
    const start = this.position;
    for (let code = this.text.charCodeAt(this.position); code === 32 || code === 10 || code === 9; code = this.text.charCodeAt(++this.position));
    return this.position > start;
  }

  /** The offset of the first character in [from, to) that is not white space, or -1. */
  private firstNonSpace(from: number, to: number): number {
    for (let offset = from; offset < to; offset++) {
      const code = this.text.charCodeAt(offset);
      if (code !== 32 && code !== 10 && code !== 9) return offset;
    }
    return -1;
  }

  private ncname(what: string): string {
    const start = this.position;
    let end = start;
    while (end < this.text.length) {
      const code = this.text.charCodeAt(end);
      if (code < 128) {
        if (ASCII_NAME[code]! === 0 || (end === start && ASCII_NAME[code]! === 1)) break;
        end++;
      } else {
        const character = String.fromCodePoint(this.text.codePointAt(end)!);
        if (!(end === start ? NAME_START_CHAR : NAME_CHAR).test(character)) break;
        end += character.length;
      }
    }
    if (end === start) this.fail(start, `expected ${what}, found ${this.describeHere()}`);
    this.position = end;
    return this.text.slice(start, end);
  }

  /** A prefixed or plain name: [prefix, local]. */
  private qname(what: string): [string | null, string] {
    const first = this.ncname(what);
    if (this.text[this.position] !== ":") return [null, first];
    this.position++;
    const local = this.ncname(`a local name after "${first}:"`);
    if (this.text[this.position] === ":") this.fail(this.position, `the name ${first}:${local}:… has more than one ":" prefix`);
    return [first, local];
  }

  private describeHere(): string {
    const rest = this.text.slice(this.position);
    return rest === "" ? "the end of the document" : JSON.stringify(String.fromCodePoint(rest.codePointAt(0)!));
  }

  private startTag(scope: Scope): { element: ReaderElement; empty: boolean; elementScope: Scope } {
    const start = this.position;
    START_TAG.lastIndex = start;
    const match = START_TAG.exec(this.text);
    const { tagName, prefix, local, written, empty } = match ? this.matchedStartTag(match) : this.scanStartTag();
    if (prefix === "xmlns") this.fail(start + 1, `<${tagName}>: the prefix xmlns is reserved for namespace declarations`);
    written.forEach((attribute, index) => {
      if (written.findIndex((other) => other.name === attribute.name) < index) this.fail(attribute.at, `<${tagName}> has the attribute ${attribute.name} twice`);
    });

    const elementScope = this.declare(scope, written, tagName);
    const namespace = this.resolve(elementScope, prefix, start, tagName, true);
    const element = new ReaderElement(this.document, tagName, prefix, local, namespace);
    const expanded = new Set<string>();
    for (const attribute of written) {
      const isDeclaration = attribute.name === "xmlns" || attribute.prefix === "xmlns";
      const attributeNamespace = isDeclaration ? XMLNS_NAMESPACE : this.resolve(elementScope, attribute.prefix, attribute.at, attribute.name, false);
      const key = `{${attributeNamespace ?? ""}}${attribute.local}`;
      if (attributeNamespace && expanded.has(key)) this.fail(attribute.at, `<${tagName}> has two attributes named ${attribute.local} in namespace "${attributeNamespace}"`);
      expanded.add(key);
      element.attributeList.push(new ReaderAttribute(attribute.name, attribute.prefix, attribute.local, attributeNamespace, attribute.value));
    }
    return { element, empty, elementScope };
  }

  /** The start tag START_TAG matched at this.position. */
  private matchedStartTag([whole, tagName, attributes, slash]: RegExpExecArray): StartTag {
    const start = this.position;
    const written: WrittenAttribute[] = [];
    const base = start + 1 + tagName!.length;
    ATTRIBUTE.lastIndex = 0;
    for (let match = ATTRIBUTE.exec(attributes!); match; match = ATTRIBUTE.exec(attributes!)) {
      const [all, name, doubleQuoted, singleQuoted] = match;
      const value = doubleQuoted ?? singleQuoted!;
      const at = base + match.index;
      const valueEnd = at + all.length - 1;
      written.push({ name: name!, ...splitName(name!), value: this.attributeText(valueEnd - value.length, valueEnd), at });
    }
    this.position = start + whole.length;
    return { tagName: tagName!, ...splitName(tagName!), written, empty: slash === "/" };
  }

  /** The start tag at this.position, character by character. */
  private scanStartTag(): StartTag {
    const start = this.position;
    this.position++;
    const [prefix, local] = this.qname("an element name after \"<\"");
    const tagName = prefix ? `${prefix}:${local}` : local;
    const written: WrittenAttribute[] = [];
    for (;;) {
      const spaced = this.skipSpace();
      if (this.text.startsWith("/>", this.position)) {
        this.position += 2;
        return { tagName, prefix, local, written, empty: true };
      }
      if (this.text[this.position] === ">") {
        this.position++;
        return { tagName, prefix, local, written, empty: false };
      }
      if (this.position >= this.text.length) this.fail(start, `<${tagName}> is never closed: the document ends inside its start tag`);
      if (!spaced) this.fail(this.position, `expected white space, ">" or "/>" in <${tagName}>, found ${this.describeHere()}`);
      const at = this.position;
      const [attributePrefix, attributeLocal] = this.qname(`an attribute name in <${tagName}>`);
      const name = attributePrefix ? `${attributePrefix}:${attributeLocal}` : attributeLocal;
      this.skipSpace();
      this.expect("=", `"=" after the attribute ${name} in <${tagName}>`);
      this.skipSpace();
      written.push({ name, prefix: attributePrefix, local: attributeLocal, value: this.attributeValue(name, tagName), at });
    }
  }

  /** The element's namespace declarations, checked, as a scope inside `scope`. */
  private declare(scope: Scope, written: WrittenAttribute[], tagName: string): Scope {
    const declarations = written.filter((attribute) => attribute.name === "xmlns" || attribute.prefix === "xmlns");
    if (declarations.length === 0) return scope;
    const prefixes = new Map<string, string>();
    for (const declaration of declarations) {
      const declared = declaration.prefix ? declaration.local : "";
      if (declared === "xmlns" || (declared !== "xml" && declaration.value === XML_NAMESPACE) || declaration.value === XMLNS_NAMESPACE) {
        this.fail(declaration.at, `<${tagName}> declares ${declaration.name}="${declaration.value}": the prefixes xml and xmlns and their namespaces are reserved`);
      }
      if (declared === "xml" && declaration.value !== XML_NAMESPACE) this.fail(declaration.at, `<${tagName}> binds the reserved prefix xml to "${declaration.value}"`);
      if (declared !== "" && declaration.value === "") this.fail(declaration.at, `<${tagName}> declares ${declaration.name}="": a prefix cannot be bound to no namespace`);
      prefixes.set(declared, declaration.value);
    }
    return { parent: scope, prefixes };
  }

  private resolve(scope: Scope, prefix: string | null, at: number, name: string, isElement: boolean): string | null {
    // An attribute without a prefix is in no namespace, whatever the default namespace.
    if (prefix === null && !isElement) return null;
    for (let each: Scope | undefined = scope; each; each = each.parent) {
      const uri = each.prefixes.get(prefix ?? "");
      if (uri !== undefined) return uri === "" ? null : uri;
    }
    if (prefix === null) return null;
    this.fail(at, `the prefix ${prefix} of ${isElement ? `<${name}>` : `the attribute ${name}`} is not declared; add xmlns:${prefix}="…" to it or to an element around it`);
  }

  private attributeValue(name: string, tagName: string): string {
    const quote = this.text[this.position];
    if (quote !== '"' && quote !== "'") this.fail(this.position, `the value of ${name} in <${tagName}> must be quoted with " or '`);
    const start = ++this.position;
    const end = this.text.indexOf(quote, start);
    if (end < 0) this.fail(start - 1, `the value of ${name} in <${tagName}> is never closed with ${quote}`);
    const lessThan = this.text.slice(start, end).indexOf("<");
    if (lessThan >= 0) this.fail(start + lessThan, `"<" in the value of ${name} in <${tagName}>; write &lt;`);
    this.position = end + 1;
    return this.attributeText(start, end);
  }

  /** An attribute's value from text[start, end): as the spec and xmldom read it, literal tabs and newlines as spaces, references decoded. */
  private attributeText(start: number, end: number): string {
    return this.decode(start, end, (raw) => raw.replace(/[\t\n]/g, " "));
  }

  /** Text up to the next "<", references decoded. */
  private characters(): string {
    const start = this.position;
    let end = this.text.indexOf("<", start);
    if (end < 0) end = this.text.length;
    const forbidden = this.text.slice(start, end).indexOf("]]>");
    if (forbidden >= 0) this.fail(start + forbidden, `"]]>" in text; write ]]&gt;`);
    this.position = end;
    return this.decode(start, end, (raw) => raw);
  }

  /** text[start, end) with its entity and character references replaced. */
  private decode(start: number, end: number, literal: (raw: string) => string): string {
    const raw = this.text.slice(start, end);
    let result = "";
    let from = 0;
    for (let amp = raw.indexOf("&"); amp >= 0; amp = raw.indexOf("&", from)) {
      result += literal(raw.slice(from, amp));
      const semicolon = raw.indexOf(";", amp);
      result += this.referenced(semicolon >= 0 ? raw.slice(amp + 1, semicolon) : "", start + amp);
      from = semicolon + 1;
    }
    return result + literal(raw.slice(from));
  }

  private referenced(reference: string, at: number): string {
    const predefined = PREDEFINED[reference];
    if (predefined !== undefined) return predefined;
    const numeric = /^#(?:x([0-9A-Fa-f]{1,6})|([0-9]{1,7}))$/.exec(reference);
    if (numeric) {
      const code = numeric[1] !== undefined ? parseInt(numeric[1], 16) : parseInt(numeric[2]!, 10);
      const character = code <= 0x10ffff ? String.fromCodePoint(code) : "\u0000";
      if (NOT_CHAR.test(character)) this.fail(at, `&${reference}; refers to a character XML does not allow`);
      return character;
    }
    if (/^[A-Za-z_][\w.-]*$/.test(reference)) this.fail(at, `unknown entity &${reference};: without a DTD only &lt; &gt; &amp; &quot; &apos; and &#N; are defined`);
    this.fail(at, `"&" that starts no reference; write &amp;`);
  }

  private comment(): CharacterNode {
    const start = this.position;
    const end = this.text.indexOf("-->", start + 4);
    if (end < 0) this.fail(start, "a comment is never closed with -->");
    const data = this.text.slice(start + 4, end);
    const doubleHyphen = data.indexOf("--");
    if (doubleHyphen >= 0 || data.endsWith("-")) this.fail(start + 4 + (doubleHyphen >= 0 ? doubleHyphen : data.length - 1), `"--" inside a comment`);
    this.position = end + 3;
    return new CharacterNode(8, "#comment", data);
  }

  private cdata(): CharacterNode {
    const start = this.position;
    const end = this.text.indexOf("]]>", start + 9);
    if (end < 0) this.fail(start, "a CDATA section is never closed with ]]>");
    this.position = end + 3;
    return new CharacterNode(4, "#cdata-section", this.text.slice(start + 9, end));
  }

  private processingInstruction(): CharacterNode {
    const start = this.position;
    this.position += 2;
    const target = this.ncname(`a processing instruction name after "<?"`);
    if (target.toLowerCase() === "xml") this.fail(start, "an XML declaration is allowed only at the very start of the document");
    const end = this.text.indexOf("?>", this.position);
    if (end < 0) this.fail(start, `the processing instruction <?${target} is never closed with ?>`);
    if (end > this.position && !this.skipSpace()) this.fail(this.position, `expected white space after <?${target}`);
    const data = this.text.slice(this.position, end);
    this.position = end + 2;
    return new CharacterNode(7, target, data);
  }

  private endTag(open: OpenElement[]): void {
    const start = this.position;
    END_TAG.lastIndex = start;
    const match = END_TAG.exec(this.text);
    if (match) this.position += match[0].length;
    const name = match ? match[1]! : this.scanEndTag();
    const current = open.pop();
    if (!current) this.fail(start, `the end tag </${name}> closes no element`);
    if (current.element.tagName !== name) {
      const opened = this.locate(current.start);
      this.fail(start, `the end tag </${name}> does not match the start tag <${current.element.tagName}> of ${opened}`);
    }
  }
}
