// What libvirt writes for a NAT network on the lab's bridge, so the forward
// tests meet libvirt's reject rules as a real host has them. Written from the
// rules libvirt's network driver builds (src/network/network_nftables.c and
// network_iptables.c, docs/firewall.rst): new connections into the bridge are
// rejected unless related to an established one; the guests' subnet may go
// out; guests may talk to each other; outgoing traffic is masqueraded.
import { BRIDGE } from "./netns.ts";

const SUBNETS = { ip: "192.168.150.0/24", ip6: "fd00:150::/64" };

/** libvirt's nftables backend (libvirt 10.4 and later): a table libvirt_network per family. IPv6 as with <nat ipv6='yes'/>. */
export function libvirtNftables(): string {
  return (["ip", "ip6"] as const)
    .map(
      (family) => `table ${family} libvirt_network {
  chain forward {
    type filter hook forward priority 0; policy accept;
    counter jump guest_cross
    counter jump guest_input
    counter jump guest_output
  }
  chain guest_output {
    iif "${BRIDGE}" ${family} saddr ${SUBNETS[family]} counter accept
    iif "${BRIDGE}" counter reject
  }
  chain guest_input {
    oif "${BRIDGE}" ${family} daddr ${SUBNETS[family]} ct state related,established counter accept
    oif "${BRIDGE}" counter reject
  }
  chain guest_cross {
    iif "${BRIDGE}" oif "${BRIDGE}" counter accept
  }
  chain guest_nat {
    type nat hook postrouting priority 100; policy accept;
    ${family} saddr ${SUBNETS[family]} ${family} daddr != ${SUBNETS[family]} counter masquerade
  }
}
`,
    )
    .join("");
}

/** libvirt's iptables backend through iptables-nft: the LIBVIRT_* chains hooked into FORWARD. Input for iptables-restore. */
export function libvirtIptables(family: "ip" | "ip6"): string {
  const subnet = SUBNETS[family];
  return `*filter
:LIBVIRT_FWI - [0:0]
:LIBVIRT_FWO - [0:0]
:LIBVIRT_FWX - [0:0]
-A FORWARD -j LIBVIRT_FWX
-A FORWARD -j LIBVIRT_FWI
-A FORWARD -j LIBVIRT_FWO
-A LIBVIRT_FWI -d ${subnet} -o ${BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A LIBVIRT_FWI -o ${BRIDGE} -j REJECT
-A LIBVIRT_FWO -s ${subnet} -i ${BRIDGE} -j ACCEPT
-A LIBVIRT_FWO -i ${BRIDGE} -j REJECT
-A LIBVIRT_FWX -i ${BRIDGE} -o ${BRIDGE} -j ACCEPT
COMMIT
`;
}
