// vmhook's XML reader (lib/xml-reader.ts, Bun.XML underneath): on well-formed
// input it builds the same tree as xmldom (names, namespaces, attributes,
// text; Bun joins a CDATA section to the text around it), and malformed input
// is an error saying what is wrong.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { DOMParser } from "@xmldom/xmldom";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { parseDomain } from "../../lib/domain.ts";
import { domElement } from "../../lib/dom-element.ts";
import { readXml } from "../../lib/xml-reader.ts";
import type { XmlAttribute, XmlElement, XmlNode } from "../../lib/xml.ts";

/** A node as plain data, through the interface vmhook uses, so the two parsers' trees compare (text and CDATA next to each other as one text). */
function shape(node: XmlNode): unknown {
  const children: unknown[] = [];
  let count = 0;
  for (let child = node.firstChild; child; child = child.nextSibling, count++) {
    assert.is(child.parentNode, node, "parentNode");
    const previous = children[children.length - 1] as { type: number; value: string } | undefined;
    if ((child.nodeType === 3 || child.nodeType === 4) && previous?.type === 3) previous.value += child.nodeValue;
    else children.push(child.nodeType === 4 ? { type: 3, name: "#text", value: child.nodeValue, children: [] } : shape(child));
  }
  assert.is(node.childNodes.length, count, "childNodes.length");
  if (node.nodeType !== 1) return { type: node.nodeType, name: node.nodeName, value: node.nodeValue, children };
  const element = node as XmlElement;
  const attributes: unknown[] = [];
  for (let i = 0; i < element.attributes.length; i++) {
    const { name, localName, prefix, namespaceURI, value }: XmlAttribute = element.attributes.item(i)!;
    attributes.push({ name, localName, prefix, namespaceURI, value, get: element.getAttribute(name), has: element.hasAttribute(name) });
  }
  const { tagName, localName, prefix, namespaceURI, textContent } = element;
  return { tagName, localName, prefix, namespaceURI, textContent, attributes, missing: element.getAttribute("no-such"), children };
}

function xmldomRoot(xml: string): XmlElement {
  const problems: string[] = [];
  const document = new DOMParser({ onError: (level: string, message: string) => void (level !== "warning" && problems.push(message)) }).parseFromString(xml, "text/xml");
  assert.equal(problems, [], "xmldom reads it");
  return document.documentElement!;
}

const WELL_FORMED: [string, string][] = [
  ["declaration, comments and PIs around the root", `<?xml version="1.0" encoding="UTF-8" standalone='yes'?>\n<!-- made by hand -->\n<?app data here?>\n<domain type='kvm'><name>vm</name></domain>\n<!-- end -->\n`],
  ["CDATA, comments and PIs in content", "<a>one<![CDATA[<two> & ]] three]]><!-- four --><?pi five?>six</a>"],
  ["entities and character references", `<a b="&lt;&gt;&amp;&quot;&apos;&#65;&#x1F600;" c='"'>&lt;x&gt; &amp;amp; &#10;&#xe9; &apos;&quot; ></a>`],
  ["attribute value whitespace", `<a b="one\ttwo\nthree  four" c="&#9;&#10;"/>`],
  ["line endings", "<a\r\nb='1\r2'>x\r\ny\rz</a>"],
  ["whitespace text and nesting", "<a>\n  <b>\n    <c/>\n  </b>\n  <d></d>\n</a>"],
  ["default namespace, reset and rebinding", `<a xmlns="urn:one"><b xmlns=""><c/></b><p:d xmlns:p="urn:two" p:e="1" f="2"><p:g xmlns:p="urn:three"/><h/></p:d></a>`],
  ["vmhook metadata as libvirt writes it", `<domain><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:hugepages size="2M"/><vmhook:plugin name="x"><opt>v</opt></vmhook:plugin></vmhook:hooks></metadata></domain>`],
  ["the xml prefix", `<a xml:lang="en" xmlns:xml="http://www.w3.org/XML/1998/namespace"><b xml:space="preserve"> </b></a>`],
  ["unicode names and text", `<données clé="välue">ü ✓ 𝄞</données>`],
  ["spaces inside tags", `<a  b = "1"\n c\t=\t'2' ></a >`],
  ...["tiny-hugepages", "gvtg", "win11-gpu"].map((name): [string, string] => [`examples/domains/${name}.xml`, readFileSync(`examples/domains/${name}.xml`, "utf8")]),
  ["bench/domain.xml", readFileSync("bench/domain.xml", "utf8")],
];

for (const [what, xml] of WELL_FORMED) {
  test(`reads like xmldom: ${what}`, () => {
    const document = readXml(xml);
    assert.equal(shape(document.documentElement!), shape(xmldomRoot(xml)));
  });
}

const MALFORMED: [string, string, RegExp][] = [
  ["DOCTYPE", `<?xml version="1.0"?>\n<!DOCTYPE domain SYSTEM "x.dtd"><domain/>`, /^line 2, column 1: a DOCTYPE is not allowed: vmhook reads no DTD; remove it$/],
  ["entity declared in a DOCTYPE", `<!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>`, /^line 1, column 1: a DOCTYPE is not allowed: vmhook reads no DTD; remove it$/],
  // "<!-->" opens a comment that only a later "-->" closes (the parser reads it so): the DOCTYPE after it is still in the prolog.
  ["DOCTYPE after a comment opened as <!-->", `<!--> --><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>`, /^line 1, column 10: a DOCTYPE is not allowed: vmhook reads no DTD; remove it$/],
  ["DOCTYPE after a comment opened as <!--->", `<!---> --><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>`, /^line 1, column 11: a DOCTYPE is not allowed: vmhook reads no DTD; remove it$/],
  ["unclosed tag", "<domain>\n  <name>vm</name>\n  <devices>\n</domain>", /^Expected closing tag <\/devices> but found <\/domain>$/],
  ["never closed", "<domain>\n  <name>vm", /^Missing closing tag for element 'name'$/],
  ["document ends in a start tag", "<domain><name", /^Expected an attribute name, '>' or '\/>' in the start tag but found end of input$/],
  ["end tag closing nothing", "<a/></a>", /^Unexpected '<\/a' after the root element$/],
  ["duplicate attribute", `<a>\n<b x="1" y="2" x="3"/></a>`, /^Duplicate attribute 'x'$/],
  ["same attribute through two prefixes", `<a xmlns:p="urn:x" xmlns:q="urn:x" p:v="1" q:v="2"/>`, /^<a> has two attributes named v in namespace "urn:x"$/],
  ["unknown entity", "<a>caf&eacute;</a>", /^Entity 'eacute' is not declared$/],
  ["bare ampersand", "<a>salt & pepper</a>", /^Expected an entity name after '&' but found space$/],
  ["reference to a control character", "<a>&#1;</a>", /^Character reference '&#1;' is not a valid XML character$/],
  ["reference beyond Unicode", "<a>&#x110000;</a>", /^Character reference '&#x110000;' is not a valid XML character$/],
  ["raw control character", "<a>\u0001</a>", /^Invalid character in XML: control character 0x01$/],
  ["text after the root", "<a/>\ntext", /^Unexpected 'text' after the root element$/],
  ["text before the root", "text<a/>", /^Expected the root element but found 'text'$/],
  ["a reference after the root", "<a/> &#32;", /^Unexpected '&' after the root element$/],
  ["an element with the xmlns prefix", `<xmlns:a/>`, /^<xmlns:a>: the prefix xmlns is reserved for namespace declarations$/],
  ["second root", "<a/><b/>", /^Only one root element is allowed$/],
  ["no root", "<!-- only -->", /^XML document must have a root element$/],
  ["unbound element prefix", `<domain><metadata><vmhook:hooks/></metadata></domain>`, /^the prefix vmhook of <vmhook:hooks> is not declared; add xmlns:vmhook="…" to it or to an element around it$/],
  ["unbound attribute prefix", `<a x:y="1"/>`, /^the prefix x of the attribute x:y of <a> is not declared; add xmlns:x="…" to it or to an element around it$/],
  ["prefix out of scope", `<a><b xmlns:p="urn:p"/><p:c/></a>`, /^the prefix p of <p:c> is not declared; add xmlns:p="…" to it or to an element around it$/],
  ["prefix bound to nothing", `<a xmlns:p=""/>`, /^<a> declares xmlns:p="": a prefix cannot be bound to no namespace$/],
  ["reserved xmlns prefix", `<a xmlns:xmlns="urn:x"/>`, /^<a> declares xmlns:xmlns="urn:x": the prefixes xml and xmlns and their namespaces are reserved$/],
  ["doubled prefix", `<vmhook:vmhook:hooks xmlns:vmhook="urn:vmhook:1"/>`, /^<vmhook:vmhook:hooks>: the name vmhook:vmhook:hooks is not a prefix and a local name; write at most one ":", as in vmhook:hooks$/],
  ["unquoted attribute", "<a b=1/>", /^Expected a quoted attribute value but found '1'$/],
  ["unclosed attribute value", `<a b="1/>`, /^Unterminated attribute value$/],
  ["< in an attribute value", `<a b="1<2"/>`, /^'<' is not allowed in attribute values$/],
  ["attributes without space", `<a b="1"c="2"/>`, /^Whitespace is required before 'c'$/],
  ["attribute without value", `<a b/>`, /^Expected '=' after the attribute name but found '\/>'$/],
  ["bad element name", "<1a/>", /^Expected an element name after '<' but found '1'$/],
  ["]]> in text", "<a>x]]>y</a>", /^'\]\]>' is only allowed as the end of a CDATA section$/],
  ["-- in a comment", "<a><!-- a -- b --></a>", /^'--' is not allowed inside a comment$/],
  ["unclosed comment", "<a><!-- a </a>", /^Unterminated comment$/],
  ["unclosed CDATA", "<a><![CDATA[x</a>", /^Unterminated CDATA section$/],
  ["CDATA outside the root", "<![CDATA[x]]><a/>", /^CDATA sections are only allowed inside elements$/],
  ["XML declaration not at the start", "\n<?xml version='1.0'?><a/>", /^'<\?xml' is reserved for the XML declaration, which is only allowed at the very start of the document$/],
  ["malformed XML declaration", "<?xml encoding='UTF-8'?><a/>", /^The XML declaration must start with version="1\.0"$/],
  ["unclosed processing instruction", "<a><?pi data</a>", /^Unterminated processing instruction$/],
  ["line ending counted once", "<a>\r\n\r\n<b></a>", /^Expected closing tag <\/b> but found <\/a>$/],
];

for (const [what, xml, message] of MALFORMED) {
  test(`refuses: ${what}`, () => {
    assert.throws(() => readXml(xml), (error: Error) => message.test(error.message) || assert.unreachable(`${JSON.stringify(error.message)} does not match ${message}`));
  });
}

test("every read starts afresh: what one document declares is unknown to the next", () => {
  readXml(`<?xml version="1.0"?><a xmlns="urn:one" xmlns:p="urn:p"><p:b/></a>`);
  const xml = `<?xml version="1.0"?><a>x</a>`;
  assert.equal(shape(readXml(xml).documentElement!), shape(xmldomRoot(xml)), "no default namespace carried over");
  assert.throws(() => readXml("<p:a/>"), /^the prefix p of <p:a> is not declared/);
});

test("parseDomain names what it read and the syntax error", () => {
  assert.throws(() => parseDomain("<domain>\n<name>vm</nam>\n</domain>", "the domain XML on stdin"), /^the domain XML on stdin is not well-formed XML: Expected closing tag <\/name> but found <\/nam>$/);
});

test("a custom plugin's element is xmldom's, with the same content and the whole document", () => {
  const xml = readFileSync("examples/domains/win11-gpu.xml", "utf8").replace(`<vmhook:isolate governor="performance"/>`, `<vmhook:plugin name="x" a="1"><x:opt xmlns:x="urn:x">v &amp; w</x:opt></vmhook:plugin>`);
  const light = parseDomain(xml).metadata!.childNodes.item(3) as XmlElement;
  assert.is(light.getAttribute("name"), "x");
  const element = domElement(light);
  assert.is.not(element, light);
  assert.is(element.getElementsByTagNameNS("urn:x", "opt")[0]?.textContent, "v & w", "any DOM method works");
  assert.equal(shape(element), shape(light));
  assert.is(element.ownerDocument?.documentElement?.getElementsByTagName("name")[0]?.textContent, parseDomain(xml).name);
  assert.is(domElement(element), element, "an xmldom element stays as it is");
});

test("reading a domain and its built-in plugins' config loads neither xmldom nor xpath", () => {
  // In a process of its own: this one has loaded xmldom for the comparisons above.
  const script = `
    import { readFileSync } from "node:fs";
    import { loadDomainPlugins } from "./lib/config.ts";
    import { parseDomain } from "./lib/domain.ts";
    import { registry } from "./plugins/index.ts";
    import { SimHost } from "./test/helpers/simhost.ts";
    const xml = readFileSync("examples/domains/win11-gpu.xml", "utf8").replace("</vmhook:hooks>", "<vmhook:nosleep/><vmhook:forward port='8080'/></vmhook:hooks>");
    const domain = parseDomain(xml);
    for (const name of registry.builtinNames()) await registry.load(name, new SimHost());
    await loadDomainPlugins(domain, new SimHost(), registry).catch(() => {});
    console.log(JSON.stringify(Object.keys(require.cache).filter((key) => /xmldom|xpath/.test(key))));`;
  const result = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60_000 });
  assert.is(result.status, 0, result.stderr);
  assert.equal(JSON.parse(result.stdout), []);
});

test.run();
