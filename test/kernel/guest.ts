// The real-kernel test bench: boots Debian's kernel in QEMU (TCG, q35 with an
// emulated Intel IOMMU and a std VGA on bochs-drm) from a busybox initramfs
// that holds the compiled vmhook, and runs shell commands in it over a
// virtio-serial port (test/kernel/channel.ts). See test/kernel/README.md.
//
//   const guest = await bootGuest({ smp: 2 });
//   const { code, stdout } = await guest.sh("vmhook status");
//   await guest.shutdown();
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { agentScript, channelQemuArgs, CommandChannel, HUNG_COMMAND_REPORT, type ShResult } from "./channel.ts";
import { desktopUnavailable, ensureDesktopImage, OVMF_CODE, OVMF_VARS, ROOT_MODULES } from "./desktop-image.ts";

export type { ShResult };

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const KERNEL_CACHE = path.join(REPO, ".cache/kernel");
const QEMU = "qemu-system-x86_64";
const BUSYBOX = "/bin/busybox";

/** In the initramfs on every boot (virtio_pci and virtio_console for the command port); `loadModules` are loaded by init. */
const BASE_MODULES = ["vfio", "vfio_iommu_type1", "vfio-pci", "bochs", "virtio_pci", "virtio_console"];
const BASE_LOADED = ["bochs"];

export interface GuestOptions {
  smp?: number;
  memoryMiB?: number;
  /** Module names from the kernel's tree or .ko files: added with their dependencies and loaded at boot. */
  extraModules?: string[];
  /** Module names added to the tree with their dependencies but not loaded (modprobe finds them). */
  availableModules?: string[];
  /** Guest path → host file, copied into the initramfs (one host file may go to several paths). */
  files?: Record<string, string>;
  /** The vmhook binary to install as /usr/bin/vmhook and /etc/libvirt/hooks/qemu (default $VMHOOK_GUEST_BINARY, else dist/vmhook). */
  binary?: string;
  /** Extra kernel command line. */
  append?: string;
  /** Extra QEMU arguments (devices). */
  qemuArgs?: string[];
  bootTimeoutMs?: number;
  /**
   * The desktop guest: OVMF firmware, and a Debian root disk with systemd as
   * PID 1 and weston as display-manager.service (test/kernel/desktop-image.ts)
   * instead of the busybox command loop. extraModules/availableModules/files
   * do not apply: the disk holds the kernel's whole module tree.
   */
  desktop?: boolean;
  /** "ovmf": UEFI firmware (implied by desktop), so the kernel gets a firmware framebuffer (efifb) from it. */
  firmware?: "seabios" | "ovmf";
  /** false: bochs-drm is not loaded at boot (it stays available to modprobe), so efifb keeps the std VGA under OVMF. */
  gpuDriver?: boolean;
  /** false: no `-vga std`; qemuArgs bring the GPU (a multifunction slot: test/kernel/vfio-slot.test.ts). */
  stdVga?: boolean;
}

export interface Guest {
  /** Runs a busybox sh script in the guest; throws when the guest dies or the command times out. */
  sh(script: string, options?: { timeoutMs?: number }): Promise<ShResult>;
  /** Like sh, but throws with the output when the exit code is not 0. */
  ok(script: string, options?: { timeoutMs?: number }): Promise<string>;
  /** Powers the guest off and removes its temporary files. */
  shutdown(): Promise<void>;
  /** What the guest wrote on its console (ttyS0) so far. */
  console(): string;
  /** Milliseconds from starting QEMU until the guest took commands. */
  readonly bootMs: number;
  readonly kernelVersion: string;
}

/** Why the bench cannot run here, or undefined. Tests may skip for this only when not root. */
export function guestUnavailable(): string | undefined {
  const missing = [QEMU, "cpio", "apt-get", "dpkg-deb"].filter((program) => spawnSync("sh", ["-c", `command -v ${program}`]).status !== 0);
  if (!fs.existsSync(BUSYBOX)) missing.push(BUSYBOX);
  return missing.length > 0 ? `missing ${missing.join(", ")} (apt-get install qemu-system-x86 busybox-static cpio)` : undefined;
}

/** For test files: the reason to skip the kernel suite, or undefined when it must run (always as root). */
export function skipReason(options: { desktop?: boolean } = {}): string | undefined {
  const unavailable = guestUnavailable() ?? (options.desktop ? desktopUnavailable() : undefined);
  if (!unavailable) return undefined;
  if (process.getuid?.() === 0) throw new Error(`kernel bench: ${unavailable}; as root the kernel tests must run`);
  return `not root and ${unavailable}`;
}

// ---- the kernel: Debian's linux-image-6.1 package, downloaded once ----------

export interface Kernel {
  version: string;
  vmlinuz: string;
  /** lib/modules/VERSION with modules.dep. */
  modulesDir: string;
}

function run(command: string, args: string[], cwd?: string): string {
  const result = spawnSync(command, args, { cwd, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${result.error?.message ?? `exit ${result.status}`}): ${(result.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}`);
  }
  return result.stdout;
}

/** The package linux-image-amd64 currently points to, and its candidate version. */
function currentKernelPackage(): { name: string; version: string } | undefined {
  try {
    const name = /Depends: (linux-image-6\.1\.\S+-amd64)\b/.exec(run("apt-cache", ["depends", "linux-image-amd64"]))?.[1];
    const version = name && /Candidate: (\S+)/.exec(run("apt-cache", ["policy", name]))?.[1];
    return name && version && version !== "(none)" ? { name, version } : undefined;
  } catch {
    return undefined;
  }
}

function readKernel(dir: string): Kernel {
  const version = fs.readFileSync(path.join(dir, "version"), "utf8").trim();
  return { version, vmlinuz: path.join(dir, "vmlinuz"), modulesDir: path.join(dir, "modules") };
}

/** The kernel, from .cache/kernel/PACKAGE_VERSION or downloaded there (atomically: parallel runs are fine). */
export function ensureKernel(): Kernel {
  const wanted = currentKernelPackage();
  if (!wanted) {
    // No apt metadata (offline): the newest cached kernel will do.
    const cached = fs.existsSync(KERNEL_CACHE) ? fs.readdirSync(KERNEL_CACHE).filter((d) => d.startsWith("linux-image-")).sort() : [];
    if (cached.length === 0) throw new Error("kernel bench: apt-cache cannot name linux-image-amd64's kernel and nothing is cached; run apt-get update");
    return readKernel(path.join(KERNEL_CACHE, cached[cached.length - 1]!));
  }
  const dir = path.join(KERNEL_CACHE, `${wanted.name}_${wanted.version.replace(/[^A-Za-z0-9.+~-]/g, "_")}`);
  if (fs.existsSync(path.join(dir, "version"))) return readKernel(dir);

  fs.mkdirSync(KERNEL_CACHE, { recursive: true });
  const work = fs.mkdtempSync(path.join(KERNEL_CACHE, ".download-"));
  try {
    run("apt-get", ["download", "-q", `${wanted.name}=${wanted.version}`], work);
    const deb = fs.readdirSync(work).find((f) => f.endsWith(".deb"));
    if (!deb) throw new Error(`apt-get download ${wanted.name} produced no .deb`);
    const tree = path.join(work, "tree");
    run("dpkg-deb", ["-x", path.join(work, deb), tree]);
    const version = fs.readdirSync(path.join(tree, "lib/modules"))[0]!;
    // The package ships no modules.dep (depmod runs at install); busybox's depmod makes one.
    run(BUSYBOX, ["depmod", "-b", tree, version]);
    const staged = path.join(work, "kernel");
    fs.mkdirSync(staged);
    fs.renameSync(path.join(tree, "boot", `vmlinuz-${version}`), path.join(staged, "vmlinuz"));
    fs.renameSync(path.join(tree, "lib/modules", version), path.join(staged, "modules"));
    fs.writeFileSync(path.join(staged, "version"), `${version}\n`);
    try {
      fs.renameSync(staged, dir);
    } catch (error) {
      if (!fs.existsSync(path.join(dir, "version"))) throw error; // else another run won the race
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return readKernel(dir);
}

// ---- modules: names → .ko files with their dependencies (modules.dep) -------

const moduleKey = (name: string) => name.replace(/\.ko(\.[a-z]+)?$/, "").replace(/-/g, "_");

/** module key → [relative path, its dependencies' relative paths] */
function readModulesDep(kernel: Kernel): Map<string, { file: string; deps: string[] }> {
  const table = new Map<string, { file: string; deps: string[] }>();
  for (const line of fs.readFileSync(path.join(kernel.modulesDir, "modules.dep"), "utf8").split("\n")) {
    const [file, deps = ""] = line.split(":");
    if (!file) continue;
    table.set(moduleKey(path.basename(file)), { file, deps: deps.trim().split(/\s+/).filter(Boolean) });
  }
  return table;
}

/** The `depends=` list inside a .ko file's .modinfo section. */
function koDependencies(koFile: string): string[] {
  const match = /(?:^|\0)depends=([^\0]*)/.exec(fs.readFileSync(koFile, "latin1"));
  return match?.[1] ? match[1].split(",").filter(Boolean) : [];
}

/** Relative paths of the in-tree modules these names need (themselves and all dependencies). */
function moduleFiles(kernel: Kernel, names: string[]): Set<string> {
  const table = readModulesDep(kernel);
  const files = new Set<string>();
  for (const name of names) {
    const entry = table.get(moduleKey(name));
    if (!entry) throw new Error(`kernel bench: no module "${name}" in ${kernel.version}'s tree (nor is it a .ko file)`);
    files.add(entry.file);
    for (const dep of entry.deps) files.add(dep);
  }
  return files;
}

// ---- the initramfs ----------------------------------------------------------

// PID 1: mount the kernel's file systems, load modules, then serve commands on
// the virtio port (channel.ts) until told to power off.
const INIT = `#!/bin/busybox sh
# The initramfs root comes up mode 1777; a host's is 0755, and vmhook trusts its files in /etc/vmhook under nothing less.
/bin/busybox chmod 755 /
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /sbin /usr/bin /usr/sbin /root /var/log
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mkdir -p /etc/libvirt/hooks /run/libvirt/qemu && ln -s /usr/bin/vmhook /etc/libvirt/hooks/qemu
for module in $(cat /etc/guest-modules); do modprobe "$module" || echo "guest: modprobe $module failed"; done
${agentScript("poweroff -f")}
poweroff -f
`;

// The desktop guest's init: reach the root disk, put this run's vmhook on a
// tmpfs in it (the cached image stays as built), and hand over to systemd.
const ROOT_INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in ${ROOT_MODULES.join(" ")}; do modprobe "$module" || echo "guest: modprobe $module failed"; done
# virtio-blk probes asynchronously: wait for the disk (init exiting panics the kernel, which ends QEMU).
tries=0; until [ -b /dev/vda ] || [ $tries -gt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "guest: cannot mount /dev/vda: $(ls /sys/class/block)"; exit 1; }
mount -t tmpfs -o mode=0755 tmpfs /newroot/opt/vmhook
cp /vmhook /newroot/opt/vmhook/vmhook && rm /vmhook
umount /sys /proc
exec switch_root /newroot /lib/systemd/systemd
`;

function buildRootInitramfs(kernel: Kernel, options: GuestOptions, dir: string): string {
  const staging = path.join(dir, "root");
  copyInto(staging, "/bin/busybox", BUSYBOX, 0o755);
  copyInto(staging, "/init", writeTemp(dir, "init", ROOT_INIT), 0o755);
  copyInto(staging, "/vmhook", guestBinary(options), 0o755);
  const modules = path.join(`/lib/modules/${kernel.version}`);
  for (const file of moduleFiles(kernel, ROOT_MODULES)) copyInto(staging, `${modules}/${file}`, path.join(kernel.modulesDir, file));
  fs.copyFileSync(path.join(kernel.modulesDir, "modules.builtin"), path.join(staging, modules, "modules.builtin"));
  run(BUSYBOX, ["depmod", "-b", staging, kernel.version]);
  return packCpio(staging, dir);
}

function guestBinary(options: GuestOptions): string {
  const binary = options.binary ?? process.env.VMHOOK_GUEST_BINARY ?? path.join(REPO, "dist/vmhook");
  if (!fs.existsSync(binary)) throw new Error(`kernel bench: ${binary} is missing; run npm run build (test/run.sh does)`);
  return binary;
}

function packCpio(staging: string, dir: string): string {
  const image = path.join(dir, "initramfs.cpio");
  const list = run("find", [".", "-mindepth", "1"], staging);
  const cpio = spawnSync("cpio", ["-o", "-H", "newc", "--quiet", "-O", image], { cwd: staging, input: list, encoding: "utf8" });
  if (cpio.status !== 0) throw new Error(`kernel bench: cpio failed: ${cpio.stderr}`);
  fs.rmSync(staging, { recursive: true, force: true });
  return image;
}

function libraries(binary: string): string[] {
  const out = run("ldd", [binary]);
  return [...out.matchAll(/(\/\S+) \(0x/g)].map((m) => m[1]!);
}

function copyInto(staging: string, guestPath: string, source: string, mode?: number): void {
  const target = path.join(staging, guestPath);
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.copyFileSync(source, target);
  if (mode !== undefined) fs.chmodSync(target, mode);
}

function buildInitramfs(kernel: Kernel, options: GuestOptions, dir: string): string {
  const staging = path.join(dir, "root");
  const binary = guestBinary(options);

  copyInto(staging, "/bin/busybox", BUSYBOX, 0o755);
  copyInto(staging, "/init", writeTemp(dir, "init", INIT), 0o755);
  copyInto(staging, "/usr/bin/vmhook", binary, 0o755);
  for (const library of libraries(binary)) copyInto(staging, library, library);

  const modules = path.join(`/lib/modules/${kernel.version}`);
  const koFiles = (options.extraModules ?? []).filter((m) => m.endsWith(".ko"));
  const named = [...(options.extraModules ?? []).filter((m) => !m.endsWith(".ko")), ...(options.availableModules ?? [])];
  const needed = moduleFiles(kernel, [...BASE_MODULES, ...named, ...koFiles.flatMap(koDependencies)]);
  for (const file of needed) copyInto(staging, `${modules}/${file}`, path.join(kernel.modulesDir, file));
  for (const ko of koFiles) copyInto(staging, `${modules}/extra/${path.basename(ko)}`, ko);
  fs.copyFileSync(path.join(kernel.modulesDir, "modules.builtin"), path.join(staging, modules, "modules.builtin"));
  run(BUSYBOX, ["depmod", "-b", staging, kernel.version]);
  const load = [...(options.gpuDriver === false ? [] : BASE_LOADED), ...(options.extraModules ?? []).map((m) => moduleKey(path.basename(m)))];
  fs.mkdirSync(path.join(staging, "etc"), { recursive: true });
  fs.writeFileSync(path.join(staging, "etc/guest-modules"), `${load.join("\n")}\n`);

  for (const [guestPath, source] of Object.entries(options.files ?? {})) copyInto(staging, guestPath, source);
  return packCpio(staging, dir);
}

function writeTemp(dir: string, name: string, content: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

// ---- the running guest ------------------------------------------------------

export async function bootGuest(options: GuestOptions = {}): Promise<Guest> {
  const kernel = ensureKernel();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-guest-"));
  const started = Date.now();
  const rootImage = options.desktop ? ensureDesktopImage(kernel) : undefined;
  const initramfs = rootImage ? buildRootInitramfs(kernel, options, dir) : buildInitramfs(kernel, options, dir);
  const vars = path.join(dir, "OVMF_VARS.fd");
  const ovmf = rootImage !== undefined || options.firmware === "ovmf";
  if (ovmf) fs.copyFileSync(OVMF_VARS, vars);
  const desktopArgs = [
    ...(ovmf ? ["-drive", `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`, "-drive", `if=pflash,format=raw,file=${vars}`] : []),
    ...(rootImage ? ["-drive", `if=virtio,format=raw,snapshot=on,file=${rootImage}`] : []),
  ];
  const consoleLog = path.join(dir, "console.log");
  const socketPath = path.join(dir, "cmd.sock");
  const diagnosticsSocketPath = path.join(dir, "diag.sock");

  // The test listens and QEMU connects: no race on who is first.
  const commandListener = await listen(socketPath);
  const diagnosticsListener = await listen(diagnosticsSocketPath);

  const qemu: ChildProcess = spawn(
    QEMU,
    [
      "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-device", "intel-iommu", "-vga", options.stdVga === false ? "none" : "std",
      "-m", `${options.memoryMiB ?? (rootImage ? 1536 : 1024)}M`, "-smp", `${options.smp ?? 2}`, ...desktopArgs,
      "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
      "-kernel", kernel.vmlinuz, "-initrd", initramfs,
      // no_timer_check: under TCG on a loaded host the IO-APIC timer check can
      // miss its window and the kernel panics at boot ("timer doesn't work").
      "-append", `intel_iommu=on console=ttyS0 panic=-1 quiet no_timer_check ${options.append ?? ""}`.trim(),
      "-serial", `file:${consoleLog}`, ...channelQemuArgs(socketPath, diagnosticsSocketPath),
      ...(options.qemuArgs ?? []),
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let qemuStderr = "";
  qemu.stderr!.on("data", (chunk) => (qemuStderr += chunk));
  const exited = new Promise<string>((resolve) => qemu.once("exit", (code, signal) => resolve(`QEMU exited (${signal ?? `status ${code}`})${qemuStderr ? `: ${qemuStderr.trim()}` : ""}`)));

  // What the console said last, kept when the files go: a failure's message needs it after cleanup.
  let lastConsole = "";
  const readConsole = () => (fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, "utf8") : lastConsole);
  const tail = () => readConsole().split("\n").slice(-25).join("\n");
  const cleanup = () => {
    lastConsole = readConsole();
    if (qemu.exitCode === null && qemu.signalCode === null) qemu.kill("SIGKILL");
    commandListener.server.close();
    diagnosticsListener.server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  };

  const channel = new CommandChannel();
  const diagnostics = new CommandChannel();
  let dead: string | undefined;
  void exited.then((why) => {
    dead = why;
    const error = new Error(`guest died: ${why}\n--- console ---\n${tail()}`);
    channel.fail(error);
    diagnostics.fail(error);
  });
  // A command that did not answer: what the guest is doing, asked on the other port.
  const hungCommandReport = async () => {
    try {
      const { stdout } = await diagnostics.command(HUNG_COMMAND_REPORT, 15_000);
      return `\n--- the guest meanwhile (diagnostics port) ---\n${stdout}`;
    } catch (error) {
      return `\n--- no answer on the diagnostics port either: ${(error as Error).message.split("\n")[0]} ---`;
    }
  };

  try {
    const [socket, diagnosticsSocket] = await Promise.race([
      Promise.all([commandListener.connection, diagnosticsListener.connection]),
      exited.then((why) => Promise.reject(new Error(why))),
    ]);
    channel.attach(socket);
    diagnostics.attach(diagnosticsSocket);
    await channel.ready(options.bootTimeoutMs ?? (rootImage ? 300_000 : 120_000));
    // The desktop's agent starts with graphical.target; the boot is done when systemd says so (failed units included).
    // udev loads modules for late devices (kvm_amd for -cpu max) after that: wait, so baselines stay put.
    if (rootImage) await channel.command("systemctl is-system-running --wait; udevadm settle", options.bootTimeoutMs ?? 300_000);
  } catch (error) {
    const message = `kernel bench: the guest did not boot: ${(error as Error).message}\n--- console ---\n${tail()}`;
    cleanup();
    // uvu drops errors thrown in before hooks without a word: say it here.
    process.stderr.write(`${message}\n`);
    throw new Error(message);
  }
  const bootMs = Date.now() - started;

  const guest: Guest = {
    bootMs,
    kernelVersion: kernel.version,
    console: readConsole,
    async sh(script, shOptions = {}) {
      if (dead) throw new Error(`guest is dead: ${dead}`);
      try {
        return await channel.command(script, shOptions.timeoutMs ?? 60_000);
      } catch (error) {
        // A guest that stopped answering is in an unknown state: say what it is doing, then stop it.
        const report = dead ? "" : await hungCommandReport();
        if (!dead) cleanup();
        throw new Error(`${(error as Error).message}${report}\n--- console ---\n${tail()}`);
      }
    },
    async ok(script, shOptions) {
      const result = await guest.sh(script, shOptions);
      if (result.code !== 0) throw new Error(`guest command failed with exit ${result.code}: ${script}\n${result.stdout}`);
      return result.stdout;
    },
    async shutdown() {
      if (!dead) {
        channel.send("poweroff -");
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([exited, new Promise((resolve) => (timer = setTimeout(resolve, 10_000)))]);
        clearTimeout(timer);
      }
      cleanup();
    },
  };
  return guest;
}

/** A unix socket server for one of QEMU's chardevs, and its first connection. */
async function listen(socketPath: string): Promise<{ server: net.Server; connection: Promise<net.Socket> }> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(socketPath, resolve));
  return { server, connection: new Promise((resolve) => server.once("connection", resolve)) };
}
