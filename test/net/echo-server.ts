// Echo servers for the network tests, run inside the "guest" namespace:
//   bun echo-server.ts TCPPORT,… UDPPORT,…
// Every answer is "guest:" plus what came in, so a test knows the guest (not
// something on the host) answered. Prints "ready" once all ports listen.
import * as dgram from "node:dgram";
import * as net from "node:net";

const ports = (arg: string | undefined) => (arg ?? "").split(",").filter(Boolean).map(Number);
const [tcpPorts, udpPorts] = [ports(process.argv[2]), ports(process.argv[3])];
const waiting: Promise<void>[] = [];

for (const port of tcpPorts) {
  const server = net.createServer((socket) => {
    socket.on("data", (data) => socket.end(`guest:${data}`));
    socket.on("error", () => socket.destroy());
  });
  waiting.push(new Promise((resolve) => server.listen({ port, host: "::", ipv6Only: false }, resolve)));
}
for (const port of udpPorts) {
  for (const type of ["udp4", "udp6"] as const) {
    const socket = dgram.createSocket({ type, ipv6Only: type === "udp6" });
    socket.on("message", (data, peer) => socket.send(`guest:${data}`, peer.port, peer.address));
    waiting.push(new Promise((resolve) => socket.bind(port, type === "udp4" ? "0.0.0.0" : "::", resolve)));
  }
}
await Promise.all(waiting);
console.log("ready");
