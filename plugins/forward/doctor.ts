// `vmhook doctor DOMAIN.xml` for <vmhook:forward>: nft is installed, the
// guest's network is NAT and gives an address, and the host ports are free
// (the host policy decides which are allowed, before this runs). The same
// readings and checks as start, reported instead of thrown.
import { fail, ok, type Finding } from "../../lib/diagnostics/findings.ts";
import { describeError } from "../../lib/errors.ts";
import { SEARCH_PATH } from "../../lib/host.ts";
import type { CheckContext } from "../../lib/plugin.ts";
import { parseForwardConfig } from "./config.ts";
import { checkListeners, resolveForwards } from "./plan.ts";
import { describeForwards } from "./record.ts";

/** Plugin.check: doctor's findings for the domain's <vmhook:forward> elements. */
export function forwardChecks({ host, domain, elements }: CheckContext): Finding[] {
  const nft = SEARCH_PATH.map((dir) => `${dir}/nft`).find((file) => host.exists(file));
  const findings: Finding[] = [nft ? ok("forward nft", `${nft} is installed`) : fail("forward nft", "nft is not installed: the forward plugin writes its rules with it", "apt install nftables")];
  try {
    const forwards = resolveForwards(host, domain, parseForwardConfig(elements));
    checkListeners(host, forwards);
    findings.push(ok("forward", `NAT network, ports free: ${describeForwards(forwards)}`));
  } catch (error) {
    findings.push(fail("forward", describeError(error).replace(/^forward: /, ""), "fix the element, the network or the host as the message says"));
  }
  return findings;
}
