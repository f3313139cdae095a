// Custom plugins may call any DOM method on their elements, or serialize
// them: they get xmldom's elements, for the same XML the hook read with its
// own reader. Only domains that use custom plugins pay for xmldom.
import type * as Xmldom from "@xmldom/xmldom";
import { ELEMENT_NODE, xmldom, type XmlElement } from "./xml.ts";
import { ReaderElement } from "./xml-reader.ts";

const domDocuments = new WeakMap<object, Xmldom.Document>();

/**
 * The same element as a full xmldom Element, in the whole document parsed by
 * xmldom (once per document, at the first call): for custom plugins, which may
 * call any DOM method or serialize it. An xmldom element is returned as it is.
 */
export function domElement(element: XmlElement): Xmldom.Element {
  if (!(element instanceof ReaderElement)) return element as Xmldom.Element;
  const source = element.ownerDocument;
  let document = domDocuments.get(source);
  if (!document) {
    const { DOMParser } = xmldom();
    const problems: string[] = [];
    document = new DOMParser({ onError: (level: string, message: string) => void (level !== "warning" && problems.push(message)) }).parseFromString(source.source, "text/xml");
    // The reader accepted it; xmldom refusing it would be a disagreement to report, not to paper over.
    if (problems.length > 0) throw new Error(`xmldom cannot read the document vmhook's XML reader accepted: ${problems[0]?.split("\n")[0]}`);
    domDocuments.set(source, document);
  }
  let found: Xmldom.Node | null = document;
  for (const index of element.elementPath()) {
    let remaining = index;
    let child: Xmldom.Node | null = found!.firstChild;
    for (; child; child = child.nextSibling) if (child.nodeType === ELEMENT_NODE && remaining-- === 0) break;
    found = child;
  }
  if (!found || found.nodeName !== element.nodeName) throw new Error(`xmldom and vmhook's XML reader disagree about the element <${element.tagName}>`);
  return found as Xmldom.Element;
}
