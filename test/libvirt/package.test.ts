// The Debian package on the real-libvirt host: lintian finds no errors;
// dpkg -i installs the hook over the hook that was there (a marker hook,
// which keeps running from qemu.d/), and libvirtd runs it for a domain;
// the maintainer scripts can run twice; removal is refused while a domain
// holds changes; an upgrade to the next built version keeps the install;
// `vmhook bundle` from the package makes a tarball that unpacks, redacted;
// removal puts the marker hook back, and purge leaves nothing of vmhook.
// The logrotate config is dpkg's conffile alone whatever the order of a hand
// install (install.sh) and the package: one written by hand first is taken
// over, kept by dpkg -r and removed by purge; one the administrator deleted
// stays deleted.
// Two versions are built from dist/vmhook with packaging/debian/build.sh.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { LOGROTATE_CONFIG, LOGROTATE_TEXT } from "../../lib/cli/logrotate.ts";
import {
  attemptCleanup,
  binary,
  CLI_LINK,
  defineDomain,
  HOOK,
  hugepages,
  journalExists,
  markerEvents,
  markerScript,
  mountHugetlbfs,
  putMarkerHook,
  removeMarkerHook,
  removeScratchDir,
  removeTestDomains,
  REPO,
  run,
  SAVED_HOOK_LAUNCHER,
  scratchDir,
  startLibvirt,
  virshOk,
  waitForHooks,
  type TestDomain,
} from "./fixture.ts";

const SAVED_HOOK = "/etc/libvirt/hooks/qemu.vmhook-saved";
const INSTALL_RECORD = "/etc/vmhook/install.json";
const PACKAGED_BINARY = "/usr/lib/vmhook/vmhook";
const MAINTAINER_SCRIPTS = "/var/lib/dpkg/info";
const VERSIONS = ["0.0.1~test1", "0.0.1~test2"];
const PAGES_OF_64_MIB = 32;

const tests = suite("libvirt: Debian package");
const debs: string[] = [];
let ownHook: string | undefined;

/** dpkg's view of vmhook: "install ok installed 0.0.1~test1", or "" when unknown to dpkg. */
async function packageStatus(): Promise<string> {
  const query = await run("dpkg-query", ["-W", "-f=${Status} ${Version}", "vmhook"]);
  return query.code === 0 ? query.stdout.trim() : "";
}

async function dpkg(...args: string[]) {
  return run("dpkg", args, 300_000);
}

async function purgeLeftovers(): Promise<void> {
  if ((await packageStatus()) === "") return;
  // a journal left by an interrupted run would make prerm refuse
  if (fs.existsSync(PACKAGED_BINARY)) await run(PACKAGED_BINARY, ["uninstall", "--force"]);
  const purged = await dpkg("--purge", "vmhook");
  if (purged.code !== 0) throw new Error(`dpkg --purge vmhook (left by an earlier run) failed: ${purged.stderr.trim()}`);
}

async function setUp(): Promise<void> {
  for (const version of VERSIONS) {
    const built = await run("bash", [path.join(REPO, "packaging/debian/build.sh"), "--version", version, "--output", scratchDir()], 300_000);
    assert.is(built.code, 0, `packaging/debian/build.sh --version ${version} failed: ${built.stderr}`);
    debs.push(built.stdout.trim());
  }
  // the hand install's binary (install.sh runs dist/vmhook install), kept apart from later builds of dist/vmhook
  fs.copyFileSync(path.join(REPO, "dist/vmhook"), binary());
  await mountHugetlbfs();
  await startLibvirt();
  await removeTestDomains();
  await purgeLeftovers();
  await run(binary(), ["uninstall", "--force"]);
  ownHook = putMarkerHook();
}

async function tearDown(): Promise<void> {
  const attempt = (what: string, action: () => unknown) => attemptCleanup("package test", what, action);
  await attempt("remove the test domains", removeTestDomains);
  await attempt("purge the package", purgeLeftovers);
  await attempt("uninstall a hand install", () => fs.existsSync(binary()) && run(binary(), ["uninstall", "--force"]));
  await attempt("put the previous hook back", () => removeMarkerHook(ownHook));
  await attempt("remove the scratch directory", removeScratchDir);
}

/** The packaged vmhook is the hook, with the marker hook kept beside it and run from qemu.d/; a hand install's CLI link stays (packages leave /usr/local alone). */
function expectInstalledOverMarker({ handInstallLink = false } = {}): void {
  assert.ok(fs.readFileSync(HOOK).equals(fs.readFileSync(PACKAGED_BINARY)), `${HOOK} is not the packaged ${PACKAGED_BINARY}`);
  assert.is(fs.readFileSync(SAVED_HOOK, "utf8"), markerScript(), `${SAVED_HOOK} is not the marker hook`);
  assert.ok(fs.existsSync(SAVED_HOOK_LAUNCHER), `${SAVED_HOOK_LAUNCHER} is missing`);
  assert.is(fs.realpathSync("/usr/bin/vmhook"), PACKAGED_BINARY);
  if (handInstallLink) assert.is(fs.readlinkSync(CLI_LINK), HOOK);
  else assert.not.ok(fs.existsSync(CLI_LINK), `the package wrote ${CLI_LINK}`);
}

/** vmhook runs for a hugepages domain under libvirtd: the pool and the journal follow the domain; the kept hook sees it too. */
async function expectHookRuns(name: string): Promise<void> {
  const domain = await defineDomain(name, { hooks: '<vmhook:hugepages size="2M"/>' });
  const pool = hugepages();
  await virshOk("start", domain.name);
  assert.is(hugepages(), pool + PAGES_OF_64_MIB, "pages in the pool while the domain runs");
  assert.ok(journalExists(domain.uuid), "no journal while the domain runs");
  await virshOk("destroy", domain.name);
  assert.is(hugepages(), pool, "pages in the pool after destroy");
  assert.not.ok(journalExists(domain.uuid), "the journal outlived the domain");
  assert.equal(markerEvents(domain), ["prepare begin", "start begin", "started begin", "stopped end", "release end"]);
}

/** The install record vmhook install keeps, or undefined when there is none. */
function installRecord(): unknown {
  return fs.existsSync(INSTALL_RECORD) ? JSON.parse(fs.readFileSync(INSTALL_RECORD, "utf8")) : undefined;
}

/** vmhook install by hand, as install.sh runs it. */
async function handInstall() {
  const installed = await run(binary(), ["install"]);
  assert.is(installed.code, 0, `vmhook install (by hand) failed: ${installed.stderr}`);
  return installed;
}

/** The logrotate config is the package's conffile as shipped: dpkg knows it, and finds nothing changed or missing. */
async function expectConffileIntact(): Promise<void> {
  assert.is(fs.readFileSync(LOGROTATE_CONFIG, "utf8"), LOGROTATE_TEXT);
  assert.is((await run("dpkg-query", ["--control-show", "vmhook", "conffiles"])).stdout, `${LOGROTATE_CONFIG}\n`);
  const conffiles = (await run("dpkg-query", ["-W", "-f=${Conffiles}", "vmhook"])).stdout;
  assert.match(conffiles, new RegExp(`^ ${LOGROTATE_CONFIG} [0-9a-f]{32}$`, "m"), `dpkg's record of the conffile: ${conffiles}`);
  const verify = await run("dpkg", ["--verify", "vmhook"]);
  assert.equal([verify.code, verify.stdout, verify.stderr], [0, "", ""], "dpkg --verify vmhook");
}

const maintainerScript = (name: string) => path.join(MAINTAINER_SCRIPTS, `vmhook.${name}`);

async function runMaintainerScript(name: string, ...args: string[]) {
  const result = await run(maintainerScript(name), args);
  assert.is(result.code, 0, `${name} ${args.join(" ")} failed: ${result.stderr}`);
  return result;
}

/** Each test after the setup's, which it waits for; as a user, skipped (counted so in uvu's summary). */
let test: (name: string, body: () => Promise<void>) => void = (name) => tests.skip(name);
if (process.getuid?.() !== 0) {
  console.log("libvirt: Debian package: skipped: installing a package with dpkg needs root");
} else {
  let ready: Promise<void> | undefined;
  tests("two versions are built from dist/vmhook; libvirtd runs with a marker hook in place", () => (ready = setUp()));
  tests.after(tearDown);
  test = (name, body) =>
    tests(name, async () => {
      await ready?.catch((error) => {
        throw new Error(`setup failed: ${(error as Error).message}`);
      });
      await body();
    });
}

test("lintian reports no errors", async () => {
  const lint = await run("lintian", ["--fail-on", "error", debs[0]], 300_000);
  assert.ok(lint.code !== null, "lintian did not finish in 5 minutes");
  const errors = lint.stdout.split("\n").filter((line) => line.startsWith("E:"));
  assert.equal(errors, [], `lintian errors:\n${errors.join("\n")}`);
  assert.is(lint.code, 0, `lintian exit ${lint.code}: ${lint.stderr.trim()} (apt-get install lintian, as .ci/run does)`);
});

test("dpkg -i installs the hook over the previous one, and libvirtd runs both for a domain", async () => {
  const installed = await dpkg("-i", debs[0]);
  assert.is(installed.code, 0, `dpkg -i failed: ${installed.stderr}`);
  assert.match(installed.stdout, "kept the existing hook");
  assert.is(await packageStatus(), `install ok installed ${VERSIONS[0]}`);
  expectInstalledOverMarker();
  // The log's rotation is dpkg's conffile, left to dpkg by postinst's vmhook install.
  assert.is(fs.readFileSync(LOGROTATE_CONFIG, "utf8"), LOGROTATE_TEXT);
  assert.match((await run("dpkg-query", ["-W", "-f=${Conffiles}", "vmhook"])).stdout, ` ${LOGROTATE_CONFIG} `);
  assert.not.match(installed.stdout, LOGROTATE_CONFIG);
  await waitForHooks();
  await expectHookRuns("pkg-first");
});

test("each maintainer script run twice does its work once: prerm remove, then postinst configure", async () => {
  for (const script of ["postinst", "prerm", "postrm"]) {
    assert.match(fs.readFileSync(maintainerScript(script), "utf8"), /^#!\/bin\/sh\n(#.*\n)*set -e\n/, `${script} does not start with set -e`);
  }
  const removed = await runMaintainerScript("prerm", "remove");
  assert.match(removed.stdout, "restored the previous hook");
  const removedAgain = await runMaintainerScript("prerm", "remove");
  assert.match(removedAgain.stdout, `vmhook is not installed here: ${HOOK} is another program`);
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
  assert.not.ok(fs.existsSync(SAVED_HOOK), `${SAVED_HOOK} is still there`);

  const configured = await runMaintainerScript("postinst", "configure", VERSIONS[0]);
  assert.match(configured.stdout, "kept the existing hook");
  const hookBefore = fs.readFileSync(HOOK);
  const configuredAgain = await runMaintainerScript("postinst", "configure", VERSIONS[0]);
  assert.match(configuredAgain.stdout, `${HOOK} is already this vmhook`);
  assert.not.match(configuredAgain.stdout, "kept the existing hook");
  assert.ok(fs.readFileSync(HOOK).equals(hookBefore));
  expectInstalledOverMarker();
});

test("dpkg -r refuses while a domain holds changes, and leaves the install as it was", async () => {
  const domain: TestDomain = await defineDomain("pkg-held", { hooks: '<vmhook:hugepages size="2M"/>' });
  await virshOk("start", domain.name);
  try {
    const removal = await dpkg("-r", "vmhook");
    assert.is.not(removal.code, 0, "dpkg -r succeeded while a domain held huge pages");
    assert.match(removal.stderr, "still hold changes");
    assert.match(removal.stderr, domain.name);
    // dpkg keeps the package installed, only its selection turns to "deinstall"
    assert.match(await packageStatus(), new RegExp(` ok installed ${VERSIONS[0]}$`));
    expectInstalledOverMarker();
  } finally {
    await virshOk("destroy", domain.name);
  }
  assert.not.ok(journalExists(domain.uuid), "release did not run after the refused removal");
});

test("an upgrade to the next built version keeps the install", async () => {
  const upgraded = await dpkg("-i", debs[1]);
  assert.is(upgraded.code, 0, `dpkg -i (upgrade) failed: ${upgraded.stderr}`);
  assert.not.match(upgraded.stdout, "restored the previous hook");
  assert.is(await packageStatus(), `install ok installed ${VERSIONS[1]}`);
  expectInstalledOverMarker();
  await expectHookRuns("pkg-upgraded");
});

test("vmhook bundle on this host, with a domain running, writes a tar.gz that unpacks, without its hostname or the domain's UUID", async () => {
  const domain = await defineDomain("pkg-bundle", { hooks: '<vmhook:hugepages size="2M"/>' });
  await virshOk("start", domain.name);
  const output = path.join(scratchDir(), "bundle.tar.gz");
  let made;
  try {
    made = await run("/usr/bin/vmhook", ["bundle", "--output", output]);
  } finally {
    await virshOk("destroy", domain.name);
  }
  assert.is(made.code, 0, `vmhook bundle failed: ${made.stderr}`);
  assert.is(made.stdout.trim(), output);
  const unpacked = path.join(scratchDir(), "bundle");
  fs.mkdirSync(unpacked);
  const untar = await run("tar", ["-xzf", output, "-C", unpacked]);
  assert.is(untar.code, 0, `tar -xzf failed: ${untar.stderr}`);
  const [top] = fs.readdirSync(unpacked);
  const read = (file: string) => fs.readFileSync(path.join(unpacked, top!, file), "utf8");
  assert.match(read("versions.txt"), /^libvirtd: .*libvirt/m);
  const { journals } = JSON.parse(read("journals.json"));
  assert.ok(journals.some((journal: { domain: TestDomain }) => journal.domain.name === domain.name && /^<uuid-\d+>$/.test(journal.domain.uuid)), `journals.json lacks ${domain.name}`);
  assert.match(read("vmhook.log"), `[${domain.name} prepare begin]`);
  const hostname = new RegExp(`(?<![A-Za-z0-9])${os.hostname().replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(?![A-Za-z0-9])`, "i");
  for (const file of fs.readdirSync(path.join(unpacked, top!))) {
    assert.not.match(read(file), hostname, `${file} holds the hostname ${os.hostname()}`);
    assert.not.ok(read(file).includes(domain.uuid), `${file} holds the domain's UUID`);
  }
});

test("dpkg -r puts the previous hook back; postrm and purge can run twice", async () => {
  const removed = await dpkg("-r", "vmhook");
  assert.is(removed.code, 0, `dpkg -r failed: ${removed.stderr}`);
  assert.match(removed.stdout, "restored the previous hook");
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
  for (const gone of [SAVED_HOOK, SAVED_HOOK_LAUNCHER, "/usr/bin/vmhook", PACKAGED_BINARY, "/etc/vmhook/install.json"]) {
    assert.not.ok(fs.existsSync(gone), `${gone} is still there`);
  }
  assert.is(fs.readFileSync(LOGROTATE_CONFIG, "utf8"), LOGROTATE_TEXT, "dpkg -r keeps conffiles: vmhook uninstall must not remove dpkg's");
  fs.writeFileSync("/var/log/vmhook.log.1", "rotated\n");
  await runMaintainerScript("postrm", "remove");
  await runMaintainerScript("postrm", "purge");
  const purged = await dpkg("--purge", "vmhook");
  assert.is(purged.code, 0, `dpkg --purge failed: ${purged.stderr}`);
  assert.is(await packageStatus(), "");
  for (const gone of ["/var/log/vmhook.log", "/var/log/vmhook.log.1", LOGROTATE_CONFIG]) assert.not.ok(fs.existsSync(gone), `purge left ${gone}`);
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
});

test("vmhook install by hand (install.sh) first, then dpkg -i: dpkg takes the logrotate config over as its conffile; dpkg -r keeps it, a reinstall finds it unchanged, purge removes it", async () => {
  const hand = await handInstall();
  assert.match(hand.stdout, `installed ${LOGROTATE_CONFIG}`);
  // qemu.d is not there before (the previous hook is libvirt's only one): the hand install made it, so uninstall removes it.
  assert.equal(installRecord(), { savedHook: SAVED_HOOK, logrotate: true, madeQemuDir: true });

  const installed = await dpkg("-i", debs[0]!);
  assert.is(installed.code, 0, `dpkg -i over the hand install failed: ${installed.stderr}`);
  expectInstalledOverMarker({ handInstallLink: true });
  await expectConffileIntact();

  const removed = await dpkg("-r", "vmhook");
  assert.is(removed.code, 0, `dpkg -r failed: ${removed.stderr}`);
  assert.match(removed.stdout, "restored the previous hook");
  assert.is(await packageStatus(), `deinstall ok config-files ${VERSIONS[0]}`);
  assert.ok(fs.existsSync(LOGROTATE_CONFIG), `dpkg -r keeps its conffiles, but ${LOGROTATE_CONFIG} is gone: vmhook uninstall removed dpkg's file, which dpkg then takes for deleted by the administrator`);
  assert.is(fs.readFileSync(LOGROTATE_CONFIG, "utf8"), LOGROTATE_TEXT);
  assert.is(installRecord(), undefined);

  const reinstalled = await dpkg("-i", debs[0]!);
  assert.is(reinstalled.code, 0, `dpkg -i after dpkg -r failed: ${reinstalled.stderr}`);
  await expectConffileIntact();

  const purged = await dpkg("--purge", "vmhook");
  assert.is(purged.code, 0, `dpkg --purge failed: ${purged.stderr}`);
  assert.is(await packageStatus(), "");
  assert.not.ok(fs.existsSync(LOGROTATE_CONFIG), `purge left ${LOGROTATE_CONFIG}`);
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
});

test("dpkg -i, then vmhook install and uninstall by hand: the conffile stays dpkg's; one the administrator deleted stays deleted through a hand install and an upgrade", async () => {
  const installed = await dpkg("-i", debs[0]!);
  assert.is(installed.code, 0, `dpkg -i failed: ${installed.stderr}`);
  const hand = await handInstall();
  assert.not.match(hand.stdout, LOGROTATE_CONFIG);
  assert.not.ok(JSON.stringify(installRecord()).includes("logrotate"), `the hand install claimed dpkg's conffile: ${JSON.stringify(installRecord())}`);
  const handRemoved = await run(binary(), ["uninstall"]);
  assert.is(handRemoved.code, 0, `vmhook uninstall (by hand) failed: ${handRemoved.stderr}`);
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
  await expectConffileIntact();

  await runMaintainerScript("postinst", "configure", VERSIONS[0]!);
  expectInstalledOverMarker();
  fs.rmSync(LOGROTATE_CONFIG);
  const handAgain = await handInstall();
  assert.match(handAgain.stdout, `${LOGROTATE_CONFIG}, the Debian package's conffile, was deleted`);
  assert.not.ok(fs.existsSync(LOGROTATE_CONFIG), "a hand install over the package wrote its deleted conffile back");
  const upgraded = await dpkg("-i", debs[1]!);
  assert.is(upgraded.code, 0, `dpkg -i (upgrade) failed: ${upgraded.stderr}`);
  assert.not.ok(fs.existsSync(LOGROTATE_CONFIG), "the upgrade's postinst wrote the conffile the administrator deleted");
  assert.match((await run("dpkg", ["--verify", "vmhook"])).stdout, new RegExp(`^missing +c ${LOGROTATE_CONFIG}$`, "m"));

  const purged = await dpkg("--purge", "vmhook");
  assert.is(purged.code, 0, `dpkg --purge failed: ${purged.stderr}`);
  assert.is(await packageStatus(), "");
  assert.is(installRecord(), undefined);
  assert.is(fs.readFileSync(HOOK, "utf8"), markerScript());
});

tests.run();
