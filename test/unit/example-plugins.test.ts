// The example plugins in examples/plugins/, end to end: installed in a test
// root's plugins directory and run by the compiled binary (dist/vmhook) in
// hook mode, as libvirt runs it.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { stopUnitsAllowing } from "../helpers/stop-units.ts";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BINARY = path.join(REPO, "dist/vmhook");
const UUID = "0b1d6a52-3c7e-4d55-a0a4-8f2a61f0c9d3";

interface Root {
  dir: string;
  at(hostPath: string): string;
  hook(op: string, subop: string, xml: string): { code: number | null; stdout: string; stderr: string };
  /** The same binary as the CLI, through the link vmhook install makes. */
  cli(...args: string[]): { code: number | null; stdout: string; stderr: string };
}

/** A test root with the binary as its libvirt hook and the example plugins installed (root-owned, mode 755/644). */
function makeRoot(): Root {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run npm run build first`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-examples-"));
  const at = (hostPath: string) => path.join(dir, hostPath);
  for (const sub of ["etc/libvirt/hooks", "etc/vmhook/plugins.d", "dev/shm", "var/log", "usr/bin", "usr/local/bin", "run"]) fs.mkdirSync(at(`/${sub}`), { recursive: true, mode: 0o755 });
  fs.chmodSync(at("/etc/vmhook/plugins.d"), 0o755);
  // A copy, as vmhook install makes: a rebuild of dist/ cannot change it mid-test.
  fs.copyFileSync(BINARY, at("/etc/libvirt/hooks/qemu"));
  fs.chmodSync(at("/etc/libvirt/hooks/qemu"), 0o755);
  fs.symlinkSync(at("/etc/libvirt/hooks/qemu"), at("/usr/local/bin/vmhook"));
  fs.copyFileSync(path.join(REPO, "examples/plugins/looking-glass.mjs"), at("/etc/vmhook/plugins.d/looking-glass.mjs"));
  fs.chmodSync(at("/etc/vmhook/plugins.d/looking-glass.mjs"), 0o644);
  fs.copyFileSync(path.join(REPO, "examples/plugins/stop-units"), at("/etc/vmhook/plugins.d/stop-units"));
  fs.chmodSync(at("/etc/vmhook/plugins.d/stop-units"), 0o755);
  fs.writeFileSync(at("/etc/passwd"), "root:x:0:0:root:/root:/bin/bash\nalice:x:1234:1234:Alice:/home/alice:/bin/bash\n");
  fs.writeFileSync(at("/etc/group"), "root:x:0:\nkvm:x:993:alice\n");
  const env = { PATH: "/usr/bin:/bin", LC_ALL: "C", VMHOOK_ROOT: dir };
  const run = (program: string, args: string[], input: string) => {
    const result = spawnSync(program, args, { input, env, encoding: "utf8", timeout: 30_000, stdio: ["pipe", "pipe", "pipe"] });
    return { code: result.status, stdout: result.stdout, stderr: result.stderr };
  };
  return {
    dir,
    at,
    hook: (op, subop, xml) => run(at("/etc/libvirt/hooks/qemu"), ["win", op, subop, "-"], xml),
    cli: (...args) => run(at("/usr/local/bin/vmhook"), args, ""),
  };
}

function domain(metadata: string, devices = ""): string {
  return `<domain type="kvm"><name>win</name><uuid>${UUID}</uuid><memory unit="GiB">8</memory>
  <devices>${devices}</devices>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${metadata}</vmhook:hooks></metadata></domain>`;
}

const SHMEM = `<shmem name="looking-glass"><model type="ivshmem-plain"/><size unit="M">32</size></shmem>`;

test("looking-glass: prepare creates /dev/shm/looking-glass with owner, group, size; release removes it", () => {
  const root = makeRoot();
  const xml = domain('<vmhook:plugin name="looking-glass" owner="alice" group="kvm" size="32M"/>', SHMEM);
  const prepared = root.hook("prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  assert.is(prepared.stdout, "", "hook mode prints nothing on stdout");
  const stat = fs.statSync(root.at("/dev/shm/looking-glass"));
  assert.equal([stat.size, stat.uid, stat.gid, stat.mode & 0o777], [32 * 1024 * 1024, 1234, 993, 0o660]);
  assert.ok(fs.existsSync(root.at(`/run/vmhook/${UUID}.json`)));

  const released = root.hook("release", "end", xml);
  assert.is(released.code, 0, released.stderr);
  assert.not.ok(fs.existsSync(root.at("/dev/shm/looking-glass")));
  assert.not.ok(fs.existsSync(root.at(`/run/vmhook/${UUID}.json`)));
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("looking-glass: release unlinks only the file; a directory the owner put in its place is left with its content", () => {
  const root = makeRoot();
  const xml = domain('<vmhook:plugin name="looking-glass" owner="alice" group="kvm" size="32M"/>', SHMEM);
  assert.is(root.hook("prepare", "begin", xml).code, 0);
  // alice owns the file, so she may replace it in the sticky /dev/shm
  fs.rmSync(root.at("/dev/shm/looking-glass"));
  fs.mkdirSync(root.at("/dev/shm/looking-glass"));
  fs.writeFileSync(root.at("/dev/shm/looking-glass/keep"), "");
  const released = root.hook("release", "end", xml);
  assert.is(released.code, 0, released.stderr);
  assert.ok(fs.existsSync(root.at("/dev/shm/looking-glass/keep")), "nothing under it was deleted");
  assert.match(fs.readFileSync(root.at("/var/log/vmhook.log"), "utf8"), "/dev/shm/looking-glass is a directory now, not the file vmhook created; left as it is");
  assert.not.ok(fs.existsSync(root.at(`/run/vmhook/${UUID}.json`)));
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("looking-glass: a bad size, a size unlike <shmem>, or an unknown user fails prepare and creates nothing", () => {
  const root = makeRoot();
  const cases: [string, string, string][] = [
    ['owner="alice" group="kvm" size="33M"', "", 'size="33M" is not a valid size: use a power of two from 1M to 1G'],
    ['owner="alice" group="kvm" size="64M"', SHMEM, 'size="64M" differs from the domain\'s <shmem name="looking-glass"> size 32M'],
    ['owner="bob" group="kvm"', SHMEM, 'owner="bob" is not in /etc/passwd'],
    ['owner="alice" group="kvm"', "", 'no size: give size="32M"'],
  ];
  for (const [attributes, devices, message] of cases) {
    const outcome = root.hook("prepare", "begin", domain(`<vmhook:plugin name="looking-glass" ${attributes}/>`, devices));
    assert.is(outcome.code, 1, attributes);
    assert.match(outcome.stderr.split("\n")[0]!, message);
    assert.not.ok(fs.existsSync(root.at("/dev/shm/looking-glass")), attributes);
  }
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("an executable plugin gets the environment docs/plugins.md gives: vmhook's own PATH and LC_ALL, its VMHOOK_ variables, nothing of the caller's", () => {
  const root = makeRoot();
  fs.writeFileSync(root.at("/etc/vmhook/plugins.d/show-env"), '#!/bin/sh\ncat >/dev/null\n[ "$1" = prepare ] && env > "$VMHOOK_ROOT/plugin.env"\nexit 0\n', { mode: 0o755 });
  // vmhook hook run from a user's shell: its HOME, its PATH and its own variables must not reach the plugin.
  const env = { PATH: "/home/alice/bin:/usr/bin:/bin", HOME: "/home/alice", LC_ALL: "de_DE.UTF-8", EDITOR: "vi", VMHOOK_ROOT: root.dir };
  const xml = domain('<vmhook:plugin name="show-env" mode="a b"/>');
  const prepared = spawnSync(root.at("/etc/libvirt/hooks/qemu"), ["win", "prepare", "begin", "-"], { input: xml, env, encoding: "utf8", timeout: 30_000 });
  assert.is(prepared.status, 0, prepared.stderr);
  const seen = fs.readFileSync(root.at("/plugin.env"), "utf8").trim().split("\n").filter((line) => !line.startsWith("PWD=") && !line.startsWith("SHLVL=") && !line.startsWith("_="));
  assert.equal(seen.sort(), [
    "LC_ALL=C",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "VMHOOK_ATTR_MODE=a b",
    "VMHOOK_ATTR_NAME=show-env",
    `VMHOOK_DOMAIN_NAME=win`,
    `VMHOOK_DOMAIN_UUID=${UUID}`,
    "VMHOOK_EVENT=prepare",
    "VMHOOK_PROTOCOL=1",
    `VMHOOK_ROOT=${root.dir}`,
  ]);
  fs.rmSync(root.dir, { recursive: true, force: true });
});

/** A systemctl that keeps unit states as files under the root and logs its calls; `at`: where it is installed. */
function fakeSystemctl(root: Root, active: string[], failing: string[] = [], unanswered: string[] = [], at = "/usr/bin/systemctl"): void {
  fs.mkdirSync(root.at("/units"));
  // "name=state" for a unit in another state than active (activating: in auto-restart; is-active exits 3 for it too).
  for (const entry of active) {
    const [unit, state = "active"] = entry.split("=");
    fs.writeFileSync(root.at(`/units/${unit}`), `${state}\n`);
  }
  for (const unit of failing) fs.writeFileSync(root.at(`/units/${unit}.fails`), "");
  // is-active exits 1 for these, as when systemctl cannot reach PID 1.
  for (const unit of unanswered) fs.writeFileSync(root.at(`/units/${unit}.nobus`), "");
  fs.mkdirSync(path.dirname(root.at(at)), { recursive: true });
  fs.writeFileSync(
    root.at(at),
    `#!/bin/sh
echo "$*" >> "$VMHOOK_ROOT/systemctl.log"
units="$VMHOOK_ROOT/units"
case "$1" in
is-active) [ -e "$units/$2.nobus" ] && exit 1; [ -e "$units/$2" ] || { echo inactive; exit 3; }; cat "$units/$2"; [ "$(cat "$units/$2")" = active ] || exit 3 ;;
stop) [ ! -e "$units/$2.fails" ] && rm -f "$units/$2" ;;
start) echo active > "$units/$2" ;;
esac
`,
    { mode: 0o755 },
  );
}

const systemctlCalls = (root: Root) => fs.readFileSync(root.at("/systemctl.log"), "utf8").trim().split("\n");

/** Root's edit of the installed stop-units: the units domains may have it stop. */
const allowUnits = (root: Root, units: string) => fs.writeFileSync(root.at("/etc/vmhook/plugins.d/stop-units"), stopUnitsAllowing(units));

test("stop-units: metadata stops only units root allows in the installed plugin; as shipped it stops none (not sshd, not the firewall)", () => {
  const root = makeRoot();
  fakeSystemctl(root, ["sshd.service", "nftables.service", "backup.timer"]);
  const outcome = root.hook("prepare", "begin", domain('<vmhook:plugin name="stop-units" units="sshd.service"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "units: sshd.service is not a unit this host lets domains stop; to allow it, add it to ALLOWED_UNITS in ");
  assert.not.ok(fs.existsSync(root.at("/systemctl.log")), "systemctl was never called");

  allowUnits(root, "backup.timer sync@*.service");
  const firewall = root.hook("prepare", "begin", domain('<vmhook:plugin name="stop-units" units="backup.timer nftables.service"/>'));
  assert.is(firewall.code, 1);
  assert.match(firewall.stderr.split("\n")[0]!, "units: nftables.service is not a unit this host lets domains stop");
  assert.not.ok(fs.existsSync(root.at("/systemctl.log")), "refused before any unit was stopped");
  assert.equal(fs.readdirSync(root.at("/units")).sort(), ["backup.timer", "nftables.service", "sshd.service"]);
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("stop-units: stops the active units (one in auto-restart too) at prepare and starts exactly those again at release", () => {
  const root = makeRoot();
  fakeSystemctl(root, ["backup.timer", "sync@alice.service=activating"]);
  allowUnits(root, "backup.timer idle.service sync@*.service");
  const xml = domain('<vmhook:plugin name="stop-units" units="backup.timer idle.service sync@alice.service"/>');
  const prepared = root.hook("prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  assert.equal(fs.readdirSync(root.at("/units")), []);
  const journal = JSON.parse(fs.readFileSync(root.at(`/run/vmhook/${UUID}.json`), "utf8"));
  assert.equal(journal.entries[0].undo.undo, "backup.timer sync@alice.service");
  assert.match(fs.readFileSync(root.at("/var/log/vmhook.log"), "utf8"), "plugin:stop-units: idle.service is not active; leaving it alone");

  assert.is(root.hook("started", "begin", xml).code, 0);
  assert.is(root.hook("release", "end", xml).code, 0);
  assert.equal(fs.readdirSync(root.at("/units")).sort(), ["backup.timer", "sync@alice.service"]);
  assert.equal(fs.readdirSync(root.at("/run/vmhook-stop-units")), [], "the list of the units it stopped goes once they run again");
  assert.equal(systemctlCalls(root), [
    "is-active backup.timer",
    "stop backup.timer",
    "is-active idle.service",
    "is-active sync@alice.service",
    "stop sync@alice.service",
    "start backup.timer",
    "start sync@alice.service",
  ]);
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("stop-units, the example and as docs/plugins.md prints it, on a host without merged /usr (Debian 11 and older upgraded), where systemctl is /bin/systemctl alone: it stops and starts the units, not refuses every start with is-active exit 127", () => {
  for (const script of [stopUnitsAllowing("backup.timer"), printedPlugin("docs/plugins.md", "sh", "ALLOWED_UNITS=").replace(/^ALLOWED_UNITS=""/m, 'ALLOWED_UNITS="backup.timer"')]) {
    const root = makeRoot();
    fakeSystemctl(root, ["backup.timer"], [], [], "/bin/systemctl");
    fs.writeFileSync(root.at("/etc/vmhook/plugins.d/stop-units"), script);
    const xml = domain('<vmhook:plugin name="stop-units" units="backup.timer"/>');
    const prepared = root.hook("prepare", "begin", xml);
    assert.is(prepared.code, 0, prepared.stderr);
    assert.is(root.hook("release", "end", xml).code, 0);
    assert.equal(systemctlCalls(root), ["is-active backup.timer", "stop backup.timer", "start backup.timer"]);
    fs.rmSync(root.dir, { recursive: true, force: true });
  }
});

test("stop-units: a unit that will not stop fails prepare, and the ones already stopped are started again", () => {
  const root = makeRoot();
  fakeSystemctl(root, ["backup.timer", "stuck.service"], ["stuck.service"]);
  allowUnits(root, "backup.timer stuck.service ok.service idle.service");
  const outcome = root.hook("prepare", "begin", domain('<vmhook:plugin name="stop-units" units="backup.timer stuck.service"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "vmhook: plugin stop-units failed at prepare: could not stop stuck.service");
  assert.equal(fs.readdirSync(root.at("/units")).sort(), ["backup.timer", "stuck.service", "stuck.service.fails"]);
  assert.equal(systemctlCalls(root).slice(-1), ["start backup.timer"]);

  const bad = root.hook("prepare", "begin", domain('<vmhook:plugin name="stop-units" units="ok.service $(reboot)"/>'));
  assert.is(bad.code, 1);
  assert.match(bad.stderr, "units: ??reboot? is not a systemd unit name");
  assert.equal(fs.readdirSync(root.at("/run/vmhook-stop-units")), [], "nothing stopped, nothing written down");

  const idle = domain('<vmhook:plugin name="stop-units" units="idle.service"/>');
  assert.is(root.hook("prepare", "begin", idle).code, 0);
  assert.equal(fs.readdirSync(root.at("/run/vmhook-stop-units")), [], "nothing stopped, nothing written down");
  assert.is(root.hook("release", "end", idle).code, 0);
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("stop-units: a unit whose state systemctl cannot tell fails prepare, and the ones already stopped are started again", () => {
  const root = makeRoot();
  fakeSystemctl(root, ["backup.timer", "gpu-job.service"], [], ["gpu-job.service"]);
  allowUnits(root, "backup.timer gpu-job.service");
  const outcome = root.hook("prepare", "begin", domain('<vmhook:plugin name="stop-units" units="backup.timer gpu-job.service"/>'));
  assert.is(outcome.code, 1);
  assert.match(outcome.stderr.split("\n")[0]!, "vmhook: plugin stop-units failed at prepare: systemctl could not tell whether gpu-job.service runs (is-active exit 1)");
  assert.equal(fs.readdirSync(root.at("/units")).sort(), ["backup.timer", "gpu-job.service", "gpu-job.service.nobus"]);
  assert.equal(systemctlCalls(root), ["is-active backup.timer", "stop backup.timer", "is-active gpu-job.service", "start backup.timer"]);
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("vmhook plugins lists the built-ins and both examples with their usage, and flags an unsafe one", () => {
  const root = makeRoot();
  fs.writeFileSync(root.at("/etc/vmhook/plugins.d/open"), "#!/bin/sh\n", { mode: 0o777 });
  fs.chmodSync(root.at("/etc/vmhook/plugins.d/open"), 0o777);
  fs.writeFileSync(root.at("/etc/vmhook/plugins.d/quiet"), "#!/bin/sh\necho hello\n", { mode: 0o755 });
  const listed = root.cli("plugins", "--json");
  assert.is(listed.code, 0, listed.stderr);
  const report = JSON.parse(listed.stdout);
  assert.ok(report.builtin.some((plugin: { name: string }) => plugin.name === "hugepages"));
  const installed = Object.fromEntries(report.installed.map((plugin: { name: string }) => [plugin.name, plugin]));
  assert.is(installed["looking-glass"].kind, "module");
  assert.is(installed["looking-glass"].usage, '<vmhook:plugin name="looking-glass" owner="USER" group="GROUP" size="32M"/>');
  assert.is(installed["stop-units"].kind, "executable");
  assert.match(installed["stop-units"].summary, "stops systemd units while the VM runs");
  assert.match(installed.open.problem, "/etc/vmhook/plugins.d/open has mode 0777");
  assert.is(installed.open.summary, undefined, "an unsafe plugin is not run, not even for describe");
  assert.equal([installed.quiet.problem, installed.quiet.summary], [undefined, '(no description: "quiet describe" did not print a JSON object)']);
  const text = root.cli("plugins");
  assert.match(text.stdout, "  stop-units     stops systemd units while the VM runs; starts them again at release [executable]\n");
  assert.match(text.stdout, "  open           NOT RUN: /etc/vmhook/plugins.d/open has mode 0777");
  fs.rmSync(root.dir, { recursive: true, force: true });
});

test("the published plugin types check the JavaScript example (as a plugin author's editor would)", () => {
  const result = spawnSync(path.join(REPO, "node_modules/.bin/tsc"), ["-p", path.join(REPO, "examples/plugins")], { encoding: "utf8", timeout: 120_000 });
  assert.is(result.status, 0, result.stdout + result.stderr);
});

/** The plugin code a page prints: its fenced block of this language that holds `marker`, as a reader would copy it. */
function printedPlugin(page: string, language: string, marker: string): string {
  const blocks = [...fs.readFileSync(path.join(REPO, page), "utf8").matchAll(new RegExp("^```" + language + "\\n([\\s\\S]*?)^```$", "gm"))];
  const block = blocks.find((match) => match[1]!.includes(marker));
  if (!block) throw new Error(`${page} has no ${language} block holding ${marker}`);
  return block[1]!;
}

test("docs/plugins.md's stop-units, as printed (with root's ALLOWED_UNITS): vmhook plugins gets its description, and the run the page describes happens", () => {
  const root = makeRoot();
  const script = printedPlugin("docs/plugins.md", "sh", "ALLOWED_UNITS=").replace(/^ALLOWED_UNITS=""/m, 'ALLOWED_UNITS="backup.timer idle.service"');
  fs.writeFileSync(root.at("/etc/vmhook/plugins.d/stop-units"), script);
  assert.match(root.cli("plugins").stdout, "  stop-units     stops systemd units while the VM runs; starts them again at release [executable]\n");

  fakeSystemctl(root, ["backup.timer"]);
  const xml = domain('<vmhook:plugin name="stop-units" units="backup.timer idle.service"/>');
  const prepared = root.hook("prepare", "begin", xml);
  assert.is(prepared.code, 0, prepared.stderr);
  assert.is(JSON.parse(fs.readFileSync(root.at(`/run/vmhook/${UUID}.json`), "utf8")).entries[0].undo.undo, "backup.timer");
  assert.is(root.hook("release", "end", xml).code, 0);
  assert.equal(systemctlCalls(root), ["is-active backup.timer", "stop backup.timer", "is-active idle.service", "start backup.timer"]);
  fs.rmSync(root.dir, { recursive: true, force: true });
});

for (const page of ["docs/plugins.md", "README.md"]) {
  test(`${page}'s marker.mjs, as printed: vmhook plan lists its step, prepare writes /run/marker and release removes it`, () => {
    const root = makeRoot();
    const printed = printedPlugin(page, "js", 'name: "marker"');
    // The page's own rule: a module that changes the host with node:fs itself is outside the ctx guard and the journal.
    assert.not.match(printed, /from "node:(fs|child_process)"/, "the example changes the host through ctx.host, as the page tells plugins to");
    fs.writeFileSync(root.at("/etc/vmhook/plugins.d/marker.mjs"), printed, { mode: 0o644 });
    const xml = domain('<vmhook:plugin name="marker" text="hello"/>');
    fs.writeFileSync(root.at("/win.xml"), xml);
    const planned = root.cli("plan", root.at("/win.xml"));
    assert.is(planned.code, 0, planned.stderr);
    assert.match(planned.stdout, "1. plugin:marker: write /run/marker");
    assert.is(root.hook("prepare", "begin", xml).code, 0);
    assert.is(fs.readFileSync(root.at("/run/marker"), "utf8"), "hello");
    assert.is(root.hook("release", "end", xml).code, 0);
    assert.not.ok(fs.existsSync(root.at("/run/marker")));
    fs.rmSync(root.dir, { recursive: true, force: true });
  });

  test(`${page}'s marker.mjs, as printed: a second VM's start is refused while one VM holds /run/marker, and the first keeps it`, () => {
    const root = makeRoot();
    fs.writeFileSync(root.at("/etc/vmhook/plugins.d/marker.mjs"), printedPlugin(page, "js", 'name: "marker"'), { mode: 0o644 });
    const first = domain('<vmhook:plugin name="marker" text="first"/>');
    const second = domain('<vmhook:plugin name="marker" text="second"/>').replace(UUID, "7c9e1f44-2b1a-4d6e-8f3a-5a0b9c2d1e77").replace("<name>win</name>", "<name>other</name>");
    assert.is(root.hook("prepare", "begin", first).code, 0);
    const refused = root.hook("prepare", "begin", second);
    assert.is(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, "vmhook: marker: /run/marker is VM win's");
    assert.is(root.hook("release", "end", second).code, 0);
    assert.is(fs.readFileSync(root.at("/run/marker"), "utf8"), "first", "the refused VM's release leaves the running VM's marker");
    assert.is(root.hook("release", "end", first).code, 0);
    assert.not.ok(fs.existsSync(root.at("/run/marker")));
    fs.rmSync(root.dir, { recursive: true, force: true });
  });
}

test.run();
