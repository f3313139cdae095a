// Puts a vmhook metadata element into a domain XML text, replacing every
// element in vmhook's namespace it has (as `virsh metadata --set` does): the
// domain as it will be once the change is saved, so the change is checked
// against the rest of the domain before libvirt stores it.
import { DOMParser, XMLSerializer, type Element } from "@xmldom/xmldom";
import { parseXmlDocument } from "./domain.ts";
import { NAMESPACE_URI } from "./paths.ts";
import { childElements, renderHooks, type MetadataNode } from "./metadata-text.ts";

export function withVmhookMetadata(domainXml: string, nodes: MetadataNode[]): string {
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
  if (nodes.length > 0) {
    const hooks = new DOMParser().parseFromString(renderHooks(nodes, "domain"), "text/xml").documentElement as Element;
    metadata.appendChild(document.importNode(hooks, true));
  }
  return new XMLSerializer().serializeToString(document);
}
