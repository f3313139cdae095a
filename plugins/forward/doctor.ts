// `vmhook doctor DOMAIN.xml` for <vmhook:forward>: nft is installed, the
// guest's network is NAT and gives an address, and the host ports are free and
// allowed. The same readings and checks as start, reported instead of thrown.
import type { Element } from "@xmldom/xmldom";
import type { Finding } from "../../lib/diagnostics/doctor.ts";
import type { Domain } from "../../lib/domain.ts";
import { describeError } from "../../lib/errors.ts";
import { SEARCH_PATH, type Host } from "../../lib/host.ts";
import { loadSettings } from "../../lib/settings.ts";
import { parseForwardConfig } from "./config.ts";
import { allowedHostPorts, checkListeners, checkPolicy, resolveForwards } from "./plan.ts";
import { describeForwards, PLUGIN_ID } from "./record.ts";

export function forwardChecks(host: Host, domain: Domain, elements: Element[]): Finding[] {
  const nft = SEARCH_PATH.map((dir) => `${dir}/nft`).find((file) => host.exists(file));
  const findings: Finding[] = [
    nft ? { check: "forward nft", status: "ok", reason: `${nft} is installed` } : { check: "forward nft", status: "fail", reason: "nft is not installed: the forward plugin writes its rules with it", fix: "apt install nftables" },
  ];
  try {
    const forwards = resolveForwards(host, domain, parseForwardConfig(elements));
    checkPolicy(forwards, allowedHostPorts(loadSettings(host).plugins[PLUGIN_ID] ?? {}));
    checkListeners(host, forwards);
    findings.push({ check: "forward", status: "ok", reason: `NAT network, ports free and allowed: ${describeForwards(forwards)}` });
  } catch (error) {
    findings.push({ check: "forward", status: "fail", reason: describeError(error).replace(/^forward: /, ""), fix: "fix the element, the network or the host as the message says" });
  }
  return findings;
}
