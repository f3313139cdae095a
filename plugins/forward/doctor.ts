// `vmhook doctor DOMAIN.xml` for <vmhook:forward>: nft (and conntrack) is installed, the
// guest's network is NAT and gives an address, and the host ports are free
// (the host policy decides which are allowed, before this runs). The same
// readings and checks as start, reported instead of thrown.
import { fail, failedWith, ok, warn, type Finding } from "../../lib/diagnostics/findings.ts";
import { installedProgram } from "../../lib/host.ts";
import type { CheckContext } from "../../lib/plugin.ts";
import { parseForwardConfig } from "./config.ts";
import { CONNTRACK_PACKAGE } from "./conntrack.ts";
import { checkListeners, resolveForwards } from "./plan.ts";
import { describeForwards } from "./record.ts";

/** Plugin.check: doctor's findings for the domain's <vmhook:forward> elements. */
export function forwardChecks({ host, domain, elements }: CheckContext): Finding[] {
  const nft = installedProgram(host, "nft");
  const conntrack = installedProgram(host, "conntrack");
  const findings: Finding[] = [
    nft ? ok("forward nft", `${nft} is installed`) : fail("forward nft", "nft is not installed: the forward plugin writes its rules with it", "apt install nftables"),
    conntrack
      ? ok("forward conntrack", `${conntrack} is installed`)
      : warn("forward conntrack", "conntrack is not installed: a peer already sending to a forwarded port keeps reaching the host after start, and flows the forward made keep reaching the guest's address after release, until they end", CONNTRACK_PACKAGE),
  ];
  try {
    const forwards = resolveForwards(host, domain, parseForwardConfig(elements));
    checkListeners(host, forwards);
    findings.push(ok("forward", `NAT network, ports free: ${describeForwards(forwards)}`));
  } catch (error) {
    findings.push(failedWith("forward", error, "fix the element, the network or the host as the message says", (reason) => reason.replace(/^forward: /, "")));
  }
  return findings;
}
