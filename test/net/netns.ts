// Network namespaces for the forward tests, created and removed here; no
// packet leaves them and the machine's own firewall is never touched.
//
//   client (10.250.0.2, fd00:250::2) ── host (10.250.0.1, fd00:250::1; bridge vbr0
//   192.168.150.1, fd00:150::1) ── guest (192.168.150.10, fd00:150::10, echo servers)
//                                         └─ neighbour (192.168.150.20: another VM on the network)
//
// The hook is the built binary, run inside the host namespace with a host root
// (VMHOOK_ROOT) that holds libvirt's network status file and links to /proc
// and the real nft and iptables, so it reads that namespace's sockets and rules.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const BUN = path.join(REPO, "node_modules/.bin/bun");
export const BRIDGE = "vbr0";
export const NETWORK = "vmhooknet";
export const ADDRESSES = {
  hostV4: "10.250.0.1",
  hostV6: "fd00:250::1",
  clientV4: "10.250.0.2",
  guestV4: "192.168.150.10",
  guestV6: "fd00:150::10",
  guestMac: "52:54:00:aa:bb:01",
};
const TOOLS = ["nft", "iptables-nft", "ip6tables-nft", "iptables-nft-restore", "ip6tables-nft-restore", "conntrack"];
const ENV = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" };

export interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function sh(command: string, args: string[], input = "", timeoutMs = 20_000): Result {
  const result = spawnSync(command, args, { input, encoding: "utf8", timeout: timeoutMs, env: { ...process.env, ...ENV } });
  return { code: result.status, stdout: result.stdout ?? "", stderr: `${result.stderr ?? ""}${result.error ? result.error.message : ""}` };
}

function must(command: string, args: string[], input = ""): string {
  const result = sh(command, args, input);
  if (result.code !== 0) throw new Error(`${command} ${args.join(" ")} failed (exit ${result.code}): ${result.stderr.trim()}`);
  return result.stdout;
}

/** The only reason to skip: not root. As root a missing tool fails the suite (requireTools), as in test/libvirt. */
export const whyNotRunnable = (): string | undefined => (process.getuid?.() !== 0 ? "not root: network namespaces need root" : undefined);

/** A before hook that writes its error to stderr first: uvu drops errors thrown in before hooks without a word, failing every test unexplained. */
export function sayingWhy(hook: () => void | Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await hook();
    } catch (error) {
      process.stderr.write(`setup failed: ${(error as Error).stack ?? String(error)}\n`);
      throw error;
    }
  };
}

/** Whether `program` is installed. */
export const installed = (program: string): boolean => sh("sh", ["-c", `command -v ${program}`]).code === 0;

/** Throws, naming the first of `programs` that is not installed and how to install it. */
export function requireTools(programs: string[], install: string): void {
  for (const program of programs) if (!installed(program)) throw new Error(`${program} is not installed (${install})`);
}

export class Lab {
  readonly id = `${process.pid}`;
  readonly ns = { host: `vmfw-h${this.id}`, guest: `vmfw-g${this.id}`, client: `vmfw-c${this.id}`, neighbour: `vmfw-n${this.id}` };
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-net-"));
  readonly root = path.join(this.dir, "root");
  private readonly hook = path.join(this.dir, "hooks/qemu");
  private readonly cli = path.join(this.dir, "bin/vmhook");
  private servers: ChildProcess[] = [];

  constructor() {
    const binary = path.join(this.dir, "vmhook");
    // a copy: another build may replace dist/vmhook meanwhile
    fs.copyFileSync(path.join(REPO, "dist/vmhook"), binary);
    fs.chmodSync(binary, 0o755);
    for (const link of [this.hook, this.cli]) {
      fs.mkdirSync(path.dirname(link), { recursive: true });
      fs.symlinkSync(binary, link);
    }
    for (const sub of ["usr/sbin", "run/libvirt/network", "var/log", "etc/vmhook"]) fs.mkdirSync(path.join(this.root, sub), { recursive: true });
    fs.symlinkSync("/proc", path.join(this.root, "proc"));
    for (const tool of TOOLS) {
      const real = sh("sh", ["-c", `command -v ${tool}`]).stdout.trim();
      if (real) fs.symlinkSync(real, path.join(this.root, "usr/sbin", tool));
    }
  }

  in(ns: keyof Lab["ns"], command: string, args: string[], input = ""): Result {
    return sh("ip", ["netns", "exec", this.ns[ns], command, ...args], input);
  }

  inOk(ns: keyof Lab["ns"], command: string, args: string[], input = ""): string {
    return must("ip", ["netns", "exec", this.ns[ns], command, ...args], input);
  }

  /** Creates the three namespaces and their links. */
  up(): void {
    for (const ns of Object.values(this.ns)) must("ip", ["netns", "add", ns]);
    const { host, guest, client, neighbour } = this.ns;
    const run = (ns: string, line: string) => must("ip", ["-n", ns, ...line.split(" ")]);
    must("ip", ["link", "add", "vg0h", "netns", host, "type", "veth", "peer", "name", "vg0", "netns", guest]);
    must("ip", ["link", "add", "vc0h", "netns", host, "type", "veth", "peer", "name", "vc0", "netns", client]);
    run(host, `link add ${BRIDGE} type bridge`);
    must("ip", ["link", "add", "vn0h", "netns", host, "type", "veth", "peer", "name", "vn0", "netns", neighbour]);
    run(host, `link set vg0h master ${BRIDGE}`);
    run(host, `link set vn0h master ${BRIDGE}`);
    for (const line of [`addr add 192.168.150.1/24 dev ${BRIDGE}`, `addr add fd00:150::1/64 dev ${BRIDGE} nodad`, "addr add 10.250.0.1/24 dev vc0h", "addr add fd00:250::1/64 dev vc0h nodad"]) run(host, line);
    for (const dev of ["lo", BRIDGE, "vg0h", "vc0h", "vn0h"]) run(host, `link set ${dev} up`);
    for (const line of ["addr add 192.168.150.10/24 dev vg0", "addr add fd00:150::10/64 dev vg0 nodad", "link set vg0 address 52:54:00:aa:bb:01", "link set vg0 up", "link set lo up", "route add default via 192.168.150.1", "route add default via fd00:150::1"]) run(guest, line);
    for (const line of ["addr add 192.168.150.20/24 dev vn0", "link set vn0 up", "link set lo up", "route add default via 192.168.150.1"]) run(neighbour, line);
    for (const line of ["addr add 10.250.0.2/24 dev vc0", "addr add fd00:250::2/64 dev vc0 nodad", "link set vc0 up", "link set lo up", "route add default via 10.250.0.1", "route add default via fd00:250::1"]) run(client, line);
    this.inOk("host", "sysctl", ["-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
    this.writeNetwork("nat");
  }

  /** libvirt's status file of the guest's network, as libvirt writes it for an active network. */
  writeNetwork(mode: "nat" | "route"): void {
    const xml = `<networkstatus><class_id bitmap='0-2'/><floor sum='0'/>
  <network>
    <name>${NETWORK}</name>
    <uuid>${randomUUID()}</uuid>
    <forward mode='${mode}'/>
    <bridge name='${BRIDGE}' stp='on' delay='0'/>
    <ip address='192.168.150.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.150.100' end='192.168.150.200'/><host mac='${ADDRESSES.guestMac}' ip='${ADDRESSES.guestV4}'/></dhcp>
    </ip>
    <ip family='ipv6' address='fd00:150::1' prefix='64'/>
  </network>
</networkstatus>
`;
    fs.writeFileSync(path.join(this.root, "run/libvirt/network", `${NETWORK}.xml`), xml);
  }

  /** Starts echo servers in the guest namespace (TCP and UDP ports), waiting until they listen. */
  async echo(ns: keyof Lab["ns"], tcp: number[], udp: number[]): Promise<ChildProcess> {
    const child = spawn("ip", ["netns", "exec", this.ns[ns], BUN, path.join(REPO, "test/net/echo-server.ts"), tcp.join(","), udp.join(",")], { stdio: ["ignore", "pipe", "pipe"] });
    this.servers.push(child);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("echo server did not start in 15 s")), 15_000);
      let output = "";
      child.stdout!.on("data", (chunk) => {
        output += chunk;
        if (output.includes("ready")) (clearTimeout(timer), resolve());
      });
      child.stderr!.on("data", (chunk) => (output += chunk));
      child.on("exit", (code) => (clearTimeout(timer), reject(new Error(`echo server exited ${code}: ${output}`))));
    });
    return child;
  }

  /** One TCP or UDP request from the client namespace: the answer, or "no answer: …". */
  probe(protocol: "tcp" | "udp", address: string, port: number, from: keyof Lab["ns"] = "client", sourcePort?: number): string {
    const source = sourcePort === undefined ? [] : [String(sourcePort)];
    return this.in(from, BUN, [path.join(REPO, "test/net/probe.ts"), protocol, address, String(port), ...source]).stdout.trim();
  }

  /** The host namespace's ruleset without counters: what "exactly as before" compares. */
  ruleset(): string {
    return this.inOk("host", "nft", ["-s", "list", "ruleset"]);
  }

  /** Runs the hook as libvirt would (inside the host namespace): OP SUBOP for the domain XML. */
  hookEvent(name: string, op: string, subop: string, xml: string): Result {
    return sh("ip", ["netns", "exec", this.ns.host, "env", `VMHOOK_ROOT=${this.root}`, this.hook, name, op, subop, "-"], xml, 30_000);
  }

  /** The vmhook CLI against this lab's root, inside the host namespace. */
  vmhook(args: string[], input = ""): Result {
    return sh("ip", ["netns", "exec", this.ns.host, "env", `VMHOOK_ROOT=${this.root}`, this.cli, ...args], input);
  }

  /** prepare, start, started: what libvirt runs to start a domain; stops at the first failure. */
  startDomain(name: string, xml: string): Result {
    for (const [op, subop] of [["prepare", "begin"], ["start", "begin"], ["started", "begin"]] as const) {
      const result = this.hookEvent(name, op, subop, xml);
      if (result.code !== 0) return result;
    }
    return { code: 0, stdout: "", stderr: "" };
  }

  /** stopped and release, as libvirt runs them after a start, failed or not. */
  stopDomain(name: string, xml: string): void {
    this.hookEvent(name, "stopped", "end", xml);
    this.hookEvent(name, "release", "end", xml);
  }

  down(): void {
    for (const child of this.servers) child.kill("SIGKILL");
    for (const ns of Object.values(this.ns)) sh("ip", ["netns", "del", ns]);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A domain on the lab's network with the given vmhook elements. */
export function domainXml(name: string, elements: string, uuid = randomUUID()): string {
  return `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><memory unit='MiB'>64</memory>
  <devices><interface type='network'><mac address='${ADDRESSES.guestMac}'/><source network='${NETWORK}'/><model type='virtio'/></interface></devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${elements}</vmhook:hooks></metadata></domain>`;
}
