// The command channel between a kernel test and its guest: a virtio-serial
// port named org.vmhook.cmd on the guest's side, a unix socket on the host's.
// A request is "ID BASE64-SCRIPT\n"; the reply is the script's combined output
// in base64 between "@@BEGIN ID" and "@@END ID EXIT-CODE" lines, so any output
// and exit code arrive intact. The busybox guest's init and the desktop
// guest's agent serve it with the same script (agentScript).
//
// Not a serial port: under TCG, QEMU's 16550 on a socket chardev now and then
// stopped delivering input to the guest for good (test/kernel/README.md).
import type * as net from "node:net";

export const COMMAND_PORT_NAME = "org.vmhook.cmd";
/** A second port, served by its own loop: it answers while a command on the first hangs. */
export const DIAGNOSTICS_PORT_NAME = "org.vmhook.diag";

/** Where a port's loop keeps the running script and its output, in the guest ("$1" inside agentScript's serve). */
const commandFile = (port: string) => `/tmp/.${port}.command`;
const outputFile = (port: string) => `/tmp/.${port}.output`;

export interface ShResult {
  code: number;
  /** stdout and stderr of the command, interleaved. */
  stdout: string;
}

/**
 * QEMU's side: the virtio-serial controller at a fixed slot (00:1e.0, so the
 * devices tests name keep their addresses), its two ports, and the sockets
 * QEMU connects to.
 */
export function channelQemuArgs(socketPath: string, diagnosticsSocketPath: string): string[] {
  return [
    "-device", "virtio-serial-pci,id=cmdbus,bus=pcie.0,addr=0x1e",
    "-chardev", `socket,id=cmd,path=${socketPath}`,
    "-device", `virtserialport,bus=cmdbus.0,chardev=cmd,name=${COMMAND_PORT_NAME}`,
    "-chardev", `socket,id=diag,path=${diagnosticsSocketPath}`,
    "-device", `virtserialport,bus=cmdbus.0,chardev=diag,name=${DIAGNOSTICS_PORT_NAME}`,
  ];
}

/**
 * The guest's side, for a POSIX sh (busybox sh, dash): serve the
 * diagnostics port in the background and the command port in the
 * foreground. Each loop finds its port (a /dev/vportNpM node, once
 * virtio_console has probed the device), announces "@@READY", then runs
 * requests one at a time; `poweroff` on the command port ends the guest.
 */
export function agentScript(poweroff: string): string {
  return `modprobe -q -a virtio_pci virtio_console
serve() {
  port=; tries=0
  while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/\${p##*/}" ] && port="/dev/\${p##*/}"
    done
    [ -n "$port" ] && break
    tries=$((tries + 1))
    [ $tries -gt 600 ] && { echo "guest: no virtio port $1 after 30 s" > /dev/console; exit 1; }
    sleep 0.05
  done
  exec 3<>"$port"
  printf '\\n@@READY\\n' >&3
  while read -r id script <&3; do
    [ "$id" = poweroff ] && ${poweroff}
    echo "$script" | base64 -d > "${commandFile("$1")}"
    cd / && sh "${commandFile("$1")}" > "${outputFile("$1")}" 2>&1 < /dev/null
    rc=$?
    { echo "@@BEGIN $id"; base64 "${outputFile("$1")}"; echo "@@END $id $rc"; } >&3
  done
}
serve ${DIAGNOSTICS_PORT_NAME} &
serve ${COMMAND_PORT_NAME}
`;
}

/**
 * What the diagnostics port reports when a command has not answered: the
 * kernel stacks of the processes in D state (first: `ps` itself can block
 * on one), every process but the kernel's threads, and the last lines the
 * command wrote.
 */
export const HUNG_COMMAND_REPORT = `for status in $(grep -l '^State:[[:space:]]*D' /proc/[0-9]*/status 2>/dev/null); do
  p=\${status%/status}
  echo "-- pid \${p#/proc/} ($(cat $p/comm)) is in D state, in:"; cat $p/stack
done
timeout 5 ps -e -o pid,ppid,stat,args | awk '$1 != 2 && $2 != 2'
echo "-- the command's output so far:"
tail -n 20 ${outputFile(COMMAND_PORT_NAME)}`;

/** The host's side. One command at a time. */
export class CommandChannel {
  private socket?: net.Socket;
  private buffer = "";
  private nextId = 1;
  private waiter?: { match: (line: string) => boolean; lines: string[]; resolve: (lines: string[]) => void; reject: (error: Error) => void };
  private failure?: Error;
  private queue: Promise<unknown> = Promise.resolve();
  private readySeen = false;

  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.setEncoding("latin1");
    // A reset comes only with QEMU's end, which bootGuest reports (with its
    // exit status) by failing the channel; unhandled, it would throw.
    socket.on("error", () => undefined);
    socket.on("data", (chunk: string) => {
      this.buffer += chunk;
      let newline;
      while ((newline = this.buffer.indexOf("\n")) >= 0) {
        const line = this.buffer.slice(0, newline);
        this.buffer = this.buffer.slice(newline + 1);
        this.onLine(line);
      }
    });
  }

  private onLine(line: string): void {
    if (line === "@@READY") this.readySeen = true;
    const waiter = this.waiter;
    if (!waiter) return;
    waiter.lines.push(line);
    if (waiter.match(line)) {
      this.waiter = undefined;
      waiter.resolve(waiter.lines);
    }
  }

  fail(error: Error): void {
    this.failure = error;
    this.waiter?.reject(error);
    this.waiter = undefined;
  }

  private waitForLine(match: (line: string) => boolean, timeoutMs: number, what: string): Promise<string[]> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`timed out after ${timeoutMs / 1000} s ${what}`));
      }, timeoutMs);
      this.waiter = {
        match,
        lines: [],
        resolve: (lines) => (clearTimeout(timer), resolve(lines)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      };
    });
  }

  async ready(timeoutMs: number): Promise<void> {
    if (!this.readySeen) await this.waitForLine((line) => line === "@@READY", timeoutMs, "waiting for the guest to boot");
  }

  send(line: string): void {
    this.socket?.write(`${line}\n`);
  }

  command(script: string, timeoutMs: number): Promise<ShResult> {
    const next = this.queue.then(async () => {
      const id = this.nextId++;
      const reply = this.waitForLine((line) => line.startsWith(`@@END ${id} `), timeoutMs, `running in the guest: ${script.slice(0, 200)}`);
      this.send(`${id} ${Buffer.from(script).toString("base64")}`);
      const lines = await reply;
      const begin = lines.indexOf(`@@BEGIN ${id}`);
      const code = Number(lines[lines.length - 1]!.split(" ")[2]);
      const stdout = Buffer.from(lines.slice(begin + 1, -1).join(""), "base64").toString("utf8");
      return { code, stdout };
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}
