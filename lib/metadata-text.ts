// The vmhook metadata element as text: what users paste (prefixed or not,
// with or without the <hooks> wrapper, even the whole <metadata>), what
// virsh wants (`virsh metadata --set/--edit` takes the element WITHOUT a
// prefix and adds `vmhook:` from --key itself), and what libvirt stores when
// given a prefixed element (`<vmhook:vmhook:hooks>`, which no XML parser
// accepts).
import { ConfigError, VmhookError } from "./errors.ts";
import { NAMESPACE_URI, ROOT_ELEMENT } from "./paths.ts";
import { declaresNamespace, ELEMENT_NODE, xmldom, type XmlElement, type XmlNode } from "./xml.ts";

/** The --key of `virsh metadata`: libvirt writes it as the element's prefix. */
export const METADATA_KEY = "vmhook";

/**
 * The markup of XML text, one piece a match: a comment, a CDATA section or a
 * processing instruction (whose text is no element name, even when it reads
 * `<a:b:c`: another application's data or a user's note), or a tag with its
 * attributes, quoted values included.
 */
const MARKUP = /<!--[\s\S]*?(?:-->|$)|<!\[CDATA\[[\s\S]*?(?:\]\]>|$)|<\?[\s\S]*?(?:\?>|$)|<\/?[A-Za-z_][\w.:-]*(?:[^<>"']|"[^"]*"|'[^']*')*/g;

/** A start or end tag whose name has two prefixes: `<vmhook:vmhook:hooks`, `</vmhook:vm:isolate`; the first is the one libvirt declares (its --key). */
const DOUBLED_PREFIX = /^<(\/?)([A-Za-z_][\w.-]*):[A-Za-z_][\w.-]*:(?=[A-Za-z_])/;

/** The prefixes of vmhook's namespace in this text: the key libvirt stores it under, and any it declares for urn:vmhook:1. */
function vmhookPrefixes(xml: string): Set<string> {
  const declarations = xml.matchAll(/xmlns:([A-Za-z_][\w.-]*)\s*=\s*(["'])([^"']*)\2/g);
  return new Set([METADATA_KEY, ...[...declarations].flatMap(([, prefix, , uri]) => (uri === NAMESPACE_URI ? [prefix!] : []))]);
}

/** Any tag name with two prefixes, anywhere: most domain XML has none, and is returned as it is. */
const ANY_DOUBLED_PREFIX = /<\/?[A-Za-z_][\w.-]*:[A-Za-z_][\w.-]*:[A-Za-z_]/;

/** The doubled prefixes of one side reduced to the first one; only element names change. */
function repairDoubled(xml: string, whose: "vmhook's" | "others'"): string {
  if (!ANY_DOUBLED_PREFIX.test(xml)) return xml;
  const ours = vmhookPrefixes(xml);
  return xml.replace(MARKUP, (markup) => markup.replace(DOUBLED_PREFIX, (tag, slash: string, prefix: string) => (ours.has(prefix) === (whose === "vmhook's") ? `<${slash}${prefix}:` : tag)));
}

/**
 * The XML with the doubled prefixes of vmhook's own elements reduced to the
 * first one, as the user meant it. Another application's element stored so
 * is that application's to fix: vmhook neither repairs nor reports it.
 */
export const repairDoubledPrefixes = (xml: string): string => repairDoubled(xml, "vmhook's");

/**
 * The XML with other applications' doubled prefixes reduced, for reading
 * only: vmhook never looks into their elements, so a name libvirt stored
 * that way does not keep vmhook from reading the domain.
 */
export const readableOthersPrefixes = (xml: string): string => repairDoubled(xml, "others'");

/** vmhook's tags with a doubled prefix, in order, as `<vmhook:vmhook:hooks` or `</vmhook:vmhook:hooks`, with where each starts. */
function doubledTags(xml: string): { tag: string; index: number }[] {
  const ours = vmhookPrefixes(xml);
  return [...xml.matchAll(MARKUP)].flatMap((markup) => {
    const doubled = DOUBLED_PREFIX.exec(markup[0]);
    return doubled && ours.has(doubled[2]!) ? [{ tag: /^<\/?[^\s/>]*/.exec(markup[0])![0], index: markup.index! }] : [];
  });
}

/** One plugin element as plain data: enough to render it in either form. */
export interface MetadataNode {
  name: string;
  attributes: [string, string][];
  text?: string;
  children: MetadataNode[];
}

/**
 * A domain XML in which libvirt stored the element with a doubled prefix (or
 * another prefix mistake): the error names what is stored, why, and the exact
 * command that stores it correctly. Undefined when there is no such mistake.
 */
export function prefixMistake(xml: string): ConfigError | undefined {
  const doubled = doubledTags(xml)[0];
  if (!doubled) return undeclaredPrefix(xml);
  const name = domainNameInText(xml)?.trim() || "VM";
  const stored = `${doubled.tag}>`;
  let command = `vmhook config ${shellWord(name)} --edit`;
  try {
    command = virshSetCommand(name, readPastedMetadata(repairDoubledPrefixes(metadataText(xml))));
  } catch {
    // the element is broken beyond the prefix: the editor is the fix
  }
  return new ConfigError(
    "<metadata>",
    `holds ${stored}: the vmhook: prefix is written twice, so the XML cannot be read; virsh metadata --set/--edit add the prefix from --key themselves and take the element without one`,
    [`fix: vmhook config ${shellWord(name)} --edit (or --set FILE) accepts it in any form and stores it correctly; or: ${command}`],
  );
}

const PREDEFINED_ENTITIES: Record<string, string> = { lt: "<", gt: ">", amp: "&", quot: '"', apos: "'" };

/**
 * The domain's name found by a text search, for XML no parser reads (or
 * files only listed): decoded as libvirt writes it (' & < > " escaped, the
 * rest as it is), so a command it goes into names the domain libvirt knows.
 */
export function domainNameInText(xml: string): string | undefined {
  return /<name>([^<]*)<\/name>/.exec(xml)?.[1]?.replace(/&(lt|gt|amp|quot|apos);/g, (_, entity: string) => PREDEFINED_ENTITIES[entity]!);
}

/** The virsh command that stores these plugin elements as vmhook reads them: one <hooks> around them, under vmhook's key. */
export function virshSetCommand(domainName: string, nodes: MetadataNode[]): string {
  return `virsh metadata ${shellWord(domainName)} --uri ${NAMESPACE_URI} --key ${METADATA_KEY} --config --set ${shellWord(renderHooks(nodes, "virsh", ""))}`;
}

/** The vmhook prefix used without its declaration (xmldom cannot read that), as written by hand with virsh edit. */
function undeclaredPrefix(xml: string): ConfigError | undefined {
  if (!/<vmhook:hooks[\s>/]/.test(xml) || /xmlns:vmhook\s*=/.test(xml)) return undefined;
  return new ConfigError(`<${METADATA_KEY}:${ROOT_ELEMENT}>`, `uses the ${METADATA_KEY}: prefix without declaring it; write <${METADATA_KEY}:${ROOT_ELEMENT} xmlns:${METADATA_KEY}="${NAMESPACE_URI}">`);
}

/**
 * A <hooks> element in <metadata> under another namespace than vmhook's
 * (urn:vmhook, urn:vmhook:2, URN:VMHOOK:1, no namespace): without this it
 * would be a domain without vmhook metadata, whose configuration silently
 * never runs. The hook's fast path (hooks/qemu.ts) lets all of these through.
 */
export function refuseMisplacedNamespace(metadataChildren: XmlElement[], domainName: string): undefined {
  const hooks = metadataChildren.find((element) => element.localName === ROOT_ELEMENT && element.namespaceURI !== NAMESPACE_URI && (element.prefix === METADATA_KEY || !element.namespaceURI || /vmhook/i.test(element.namespaceURI)));
  if (!hooks) return undefined;
  throw new ConfigError(`<${hooks.tagName}>`, `is in namespace "${hooks.namespaceURI ?? "none"}", not vmhook's; write <${METADATA_KEY}:${ROOT_ELEMENT} xmlns:${METADATA_KEY}="${NAMESPACE_URI}"> there with virsh edit ${shellWord(domainName)}`);
}

/** The text of the vmhook element inside <metadata>, for the repair above. */
function metadataText(xml: string): string {
  const tags = doubledTags(xml);
  const start = tags.find(({ tag }) => /^<[^/]*:hooks$/.test(tag))?.index ?? -1;
  const end = tags.find(({ tag }) => /^<\/.*:hooks$/.test(tag))?.index ?? -1;
  if (start < 0 || end < start) throw new VmhookError("no doubled hooks element");
  return xml.slice(start, xml.indexOf(">", end) + 1);
}

/** Quotes a word for a shell command line in a message, when it needs it. */
export function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * A domain name as the last word of a command vmhook tells root to run:
 * whoever defined the domain chose it, so it is quoted for the shell, and put
 * after "--" when it would read as an option (a domain named "--force").
 */
export const nameArgument = (name: string): string => `${name.startsWith("-") ? "-- " : ""}${shellWord(name)}`;

/** The command that gives back what a domain's journal holds. */
export const recoverCommandLine = (name: string, force = false): string => `vmhook recover ${force ? "--force " : ""}${nameArgument(name)}`;

/**
 * The plugin elements in what a user pasted: `<vmhook:hooks
 * xmlns:vmhook="urn:vmhook:1">…`, `<hooks>…`, `<hooks xmlns="urn:vmhook:1">…`,
 * the children alone (`<vmhook:hugepages/>` or `<hugepages/>`), a whole
 * `<metadata>`, or the doubled prefix libvirt stores. Empty text: no elements.
 */
export function readPastedMetadata(text: string): MetadataNode[] {
  return pastedContent(text).flatMap((node) => (node.nodeType === ELEMENT_NODE ? [toNode(node as XmlElement, PASTED)] : []));
}

const PASTED = "the vmhook metadata you gave";

/**
 * What goes inside <hooks> of a paste in any of the forms above: the plugin
 * elements (checked to be vmhook's) with the comments, processing
 * instructions and text between them, as xmldom nodes. Whatever stands
 * outside a pasted <hooks> is left out.
 */
export function pastedContent(text: string): XmlNode[] {
  if (text.trim() === "") return [];
  const body = repairDoubledPrefixes(text).replace(/^\s*<\?xml[^>]*\?>/, "");
  // The vmhook prefix is bound around the text, so a paste without xmlns:vmhook reads too.
  const wrapped = `<paste xmlns:${METADATA_KEY}="${NAMESPACE_URI}">${body}</paste>`;
  const problems: string[] = [];
  const { DOMParser } = xmldom();
  let root: XmlElement | null | undefined;
  try {
    root = new DOMParser({ onError: (level: string, message: string) => void (level !== "warning" && problems.push(message)) }).parseFromString(wrapped, "text/xml").documentElement;
  } catch (error) {
    problems.push((error as Error).message);
  }
  if (!root || problems.length > 0) {
    throw new VmhookError(`${PASTED} is not well-formed XML: ${problems[0]?.split("\n")[0] ?? "unknown error"}; write it as <hooks><hugepages size="2M"/></hooks>`);
  }
  let container = root;
  let elements = childElements(root);
  // Unwrap <metadata> and then <hooks>, when given.
  if (elements.length === 1 && elements[0]!.localName === "metadata" && !elements[0]!.namespaceURI) {
    container = elements[0]!;
    elements = childElements(container);
  }
  const hooks = elements.filter((element) => element.localName === ROOT_ELEMENT && inVmhookNamespace(element));
  if (hooks.length > 1) throw new ConfigError(`<${ROOT_ELEMENT}>`, `appears ${hooks.length} times in ${PASTED}; merge them into one`);
  if (hooks.length === 1) {
    if (elements.length > 1) throw new ConfigError(`<${ROOT_ELEMENT}>`, `has siblings in ${PASTED}; put every plugin element inside <${ROOT_ELEMENT}>`);
    container = hooks[0]!;
  }
  const content: XmlNode[] = [];
  for (let node = container.firstChild; node; node = node.nextSibling) content.push(node);
  // Every element is checked to be vmhook's, as readPastedMetadata reads them.
  for (const element of childElements(container)) toNode(element, PASTED);
  return content;
}

/** Child elements in document order; of an xmldom element, xmldom elements. */
export function childElements<Element extends XmlElement>(element: Element): Element[] {
  const children: Element[] = [];
  for (let node = element.firstChild; node; node = node.nextSibling) if (node.nodeType === ELEMENT_NODE) children.push(node as Element);
  return children;
}

/** The plugin elements of a parsed <vmhook:hooks> element. */
export function metadataNodes(hooks: XmlElement): MetadataNode[] {
  return childElements(hooks).map(metadataNode);
}

/** One plugin element of the domain's metadata as plain data. */
export function metadataNode(element: XmlElement): MetadataNode {
  return toNode(element, "the domain's vmhook metadata");
}

/** An element users mean as vmhook's: in urn:vmhook:1, or without any namespace (the form virsh shows). */
function inVmhookNamespace(element: XmlElement): boolean {
  return !element.namespaceURI || element.namespaceURI === NAMESPACE_URI;
}

function toNode(element: XmlElement, where: string): MetadataNode {
  if (!inVmhookNamespace(element)) {
    throw new ConfigError(`<${element.tagName}>`, `in ${where} is in namespace "${element.namespaceURI}"; vmhook elements are in ${NAMESPACE_URI}: write <${element.localName}> or <${METADATA_KEY}:${element.localName}>`);
  }
  const attributes: [string, string][] = [];
  for (let i = 0; i < element.attributes.length; i++) {
    const attribute = element.attributes.item(i)!;
    if (declaresNamespace(attribute)) continue;
    attributes.push([attribute.localName ?? attribute.name, attribute.value]);
  }
  const children = childElements(element).map((child) => toNode(child, where));
  const text = children.length === 0 ? element.textContent?.trim() || undefined : undefined;
  return { name: element.localName!, attributes, text, children };
}

const escapeXml = (value: string) => value.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

function renderNode(node: MetadataNode, prefix: string, indent: string, level: number): string {
  const pad = indent.repeat(level);
  const attrs = node.attributes.map(([name, value]) => ` ${name}="${escapeXml(value)}"`).join("");
  const tag = `${prefix}${node.name}`;
  if (node.children.length > 0) {
    const inner = node.children.map((child) => renderNode(child, prefix, indent, level + 1)).join(indent ? "\n" : "");
    return indent ? `${pad}<${tag}${attrs}>\n${inner}\n${pad}</${tag}>` : `<${tag}${attrs}>${inner}</${tag}>`;
  }
  return node.text !== undefined ? `${pad}<${tag}${attrs}>${escapeXml(node.text)}</${tag}>` : `${pad}<${tag}${attrs}/>`;
}

/**
 * The <hooks> element around the plugin elements. "virsh": no prefix, as
 * `virsh metadata --set` wants it; "domain": prefixed with its namespace
 * declaration, as it reads in the domain XML.
 */
export function renderHooks(nodes: MetadataNode[], form: "virsh" | "domain", indent = "  "): string {
  const root: MetadataNode = { name: ROOT_ELEMENT, attributes: [], children: nodes };
  if (form === "virsh") return renderNode(root, "", indent, 0);
  const text = renderNode(root, `${METADATA_KEY}:`, indent, 0);
  return text.replace(`<${METADATA_KEY}:${ROOT_ELEMENT}`, `<${METADATA_KEY}:${ROOT_ELEMENT} xmlns:${METADATA_KEY}="${NAMESPACE_URI}"`);
}
