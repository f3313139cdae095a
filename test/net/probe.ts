// One request through the network under test, run inside the "client" namespace:
//   bun probe.ts tcp|udp ADDRESS PORT [SOURCEPORT]
// Prints the answer, or "no answer: WHY"; exits 0 either way (the test judges).
import * as dgram from "node:dgram";
import * as net from "node:net";

const [protocol, address, portText, sourcePortText] = process.argv.slice(2);
const port = Number(portText);
/** UDP: the same source port each time, as a peer that keeps one socket (WireGuard) sends: the same conntrack entry. */
const sourcePort = sourcePortText === undefined ? undefined : Number(sourcePortText);
// Past TCP's first SYN retransmit (after 1 s): a first contact over IPv6 can
// wait on neighbour discovery, and a loaded machine delays the namespaces' replies.
const TIMEOUT_MS = 3500;

function tcp(): Promise<string> {
  return new Promise((resolve) => {
    let answer = "";
    const socket = net.connect({ host: address!, port, timeout: TIMEOUT_MS }, () => socket.write("hello"));
    socket.on("data", (data) => (answer += data));
    socket.on("end", () => resolve(answer || "no answer: closed without data"));
    socket.on("timeout", () => (socket.destroy(), resolve("no answer: timeout")));
    socket.on("error", (error: NodeJS.ErrnoException) => resolve(`no answer: ${error.code ?? error.message}`));
  });
}

function udp(): Promise<string> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket(net.isIPv6(address!) ? "udp6" : "udp4");
    const timer = setTimeout(() => (socket.close(), resolve("no answer: timeout")), TIMEOUT_MS);
    socket.on("message", (data) => (clearTimeout(timer), socket.close(), resolve(String(data))));
    socket.on("error", (error: NodeJS.ErrnoException) => (clearTimeout(timer), socket.close(), resolve(`no answer: ${error.code ?? error.message}`)));
    socket.bind(sourcePort, () => socket.send("hello", port, address));
  });
}

console.log(await (protocol === "udp" ? udp() : tcp()));
