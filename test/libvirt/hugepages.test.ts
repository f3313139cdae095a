// <vmhook:hugepages size="2M"/> under a real libvirtd: the pool grows by
// exactly the domain's need while it runs (64 MiB = 32 pages of 2M) and
// shrinks back when it stops, through failures, parallel starts, save and
// restore, and a libvirtd restart.
import * as fs from "node:fs";
import * as path from "node:path";
import * as assert from "uvu/assert";
import {
  binary,
  defineDomain,
  holdStart,
  hugepages,
  hugepagesInUse,
  journalExists,
  libvirtSuite,
  logSince,
  logSize,
  memTotalMiB,
  restartLibvirtd,
  run as runProgram,
  scratchDir,
  stateFiles,
  virsh,
  virshOk,
  waitUntil,
  type TestDomain,
} from "./fixture.ts";

const { test, run } = libvirtSuite("libvirt: hugepages");

const HUGEPAGES = '<vmhook:hugepages size="2M"/>';
const PAGES_OF_64_MIB = 32;

const hugepagesDomain = (name: string) => defineDomain(name, { hooks: HUGEPAGES });

async function expectHeld(domain: TestDomain, pool: number): Promise<void> {
  assert.is((await virshOk("domstate", domain.name)).trim(), "running");
  assert.is(hugepages(), pool, "pages in the pool while the domain runs");
  assert.ok(journalExists(domain.uuid), `no journal for ${domain.name} while it runs`);
}

function expectReleased(domain: TestDomain, pool: number): void {
  assert.is(hugepages(), pool, "pages in the pool after the domain stopped");
  assert.not.ok(journalExists(domain.uuid), `the journal of ${domain.name} is still there`);
}

test("the pool grows by the domain's 32 pages while it runs and shrinks back after destroy", async () => {
  const domain = await hugepagesDomain("hugepages");
  const pool = hugepages();
  await virshOk("start", domain.name);
  await expectHeld(domain, pool + PAGES_OF_64_MIB);
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
});

test("a domain whose memory is backed by huge pages runs on the pages vmhook reserved for it", async () => {
  // Without them QEMU cannot map its RAM on hugetlbfs and the start fails.
  const domain = await defineDomain("backed", { hooks: HUGEPAGES, hugepageBacked: true });
  const [pool, inUse] = [hugepages(), hugepagesInUse()];
  await virshOk("start", domain.name);
  await expectHeld(domain, pool + PAGES_OF_64_MIB);
  assert.is(hugepagesInUse(), inUse + PAGES_OF_64_MIB, "pages QEMU uses or reserved");
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
  assert.is(hugepagesInUse(), inUse);
});

/** How often anyone wrote /proc/sys/vm/drop_caches since boot (the kernel counts it in /proc/vmstat). */
const dropCacheCount = () => Number(/^drop_pagecache (\d+)$/m.exec(fs.readFileSync("/proc/vmstat", "utf8"))?.[1]);

test("more memory than the host has: start fails at once with the cause on the first line; pool, /run/vmhook and caches untouched", async () => {
  // Refused by the fit check before a page is taken: no growing, no reclaim.
  const memoryMiB = memTotalMiB() + 1024;
  const domain = await defineDomain("too-big", { memoryMiB, hooks: HUGEPAGES });
  const [pool, files, drops] = [hugepages(), stateFiles(), dropCacheCount()];
  const started = await virsh("start", domain.name);
  assert.is.not(started.code, 0, "virsh start succeeded");
  // libvirt shows the hook's stderr after "unexpected exit status 1: "; its first line is the cause.
  assert.match(
    started.stderr,
    new RegExp(`unexpected exit status 1: vmhook: hugepages: ${Math.ceil(memoryMiB / 2)} pages of 2M \\(${2 * Math.ceil(memoryMiB / 2)} MiB\\) for the 2M pool cannot fit: the host has \\d+ MiB available and keeps \\d+ MiB free, so it can give \\d+ MiB\n`),
  );
  assert.match(started.stderr, "can never give this: give the VM less <memory>");
  assert.is(hugepages(), pool);
  assert.equal(stateFiles(), files);
  assert.is(dropCacheCount(), drops, "no caches were dropped");
});

test("two domains started in parallel hold the sum, and the pool is back after both stop", async () => {
  const domains = await Promise.all([hugepagesDomain("parallel-a"), hugepagesDomain("parallel-b")]);
  const pool = hugepages();
  await Promise.all(domains.map((domain) => virshOk("start", domain.name)));
  for (const domain of domains) await expectHeld(domain, pool + 2 * PAGES_OF_64_MIB);
  await Promise.all(domains.map((domain) => virshOk("destroy", domain.name)));
  for (const domain of domains) expectReleased(domain, pool);
});

const metadataOf = (xml: string) => /<metadata>[\s\S]*<\/metadata>/.exec(xml)?.[0];

test("virsh save gives the pages back; virsh restore (hook prints nothing) takes them again, metadata unchanged", async () => {
  const domain = await hugepagesDomain("save-restore");
  const image = path.join(scratchDir(), "save-restore.img");
  const pool = hugepages();
  await virshOk("start", domain.name);
  const metadata = metadataOf(await virshOk("dumpxml", domain.name));
  assert.match(metadata ?? "", HUGEPAGES);
  await virshOk("save", domain.name, image);
  expectReleased(domain, pool);
  await virshOk("restore", image);
  await expectHeld(domain, pool + PAGES_OF_64_MIB);
  // Had the restore hook printed anything, libvirt would have used it as the domain XML.
  assert.is(metadataOf(await virshOk("dumpxml", domain.name)), metadata);
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
  fs.rmSync(image);
});

test("metadata removed while the domain runs: destroy still gives the pages back (release follows the journal)", async () => {
  const domain = await hugepagesDomain("metadata-removed");
  const pool = hugepages();
  await virshOk("start", domain.name);
  await virshOk("metadata", domain.name, "--uri", "urn:vmhook:1", "--remove", "--live");
  assert.not.match(await virshOk("dumpxml", domain.name), "urn:vmhook:1");
  await expectHeld(domain, pool + PAGES_OF_64_MIB);
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
});

test("a libvirtd restart (reconnect) keeps the journal and the pages; a later destroy releases them", async () => {
  const domain = await hugepagesDomain("reconnect");
  const pool = hugepages();
  await virshOk("start", domain.name);
  const logOffset = logSize();
  await restartLibvirtd();
  await waitUntil(`vmhook logs the reconnect of ${domain.name}`, () => logSince(logOffset).includes(`[${domain.name} reconnect begin] reconnected`));
  await expectHeld(domain, pool + PAGES_OF_64_MIB);
  await virshOk("destroy", domain.name);
  expectReleased(domain, pool);
});

test("libvirtd killed while it starts the domain (prepared, QEMU not launched): the journal names that libvirtd, so once it is gone vmhook recover gives the pages back without --force", async () => {
  const domain = await hugepagesDomain("abandoned-start");
  const pool = hugepages();
  const hold = holdStart(domain);
  try {
    const start = virsh("start", domain.name);
    await waitUntil(`the start of ${domain.name} is held before QEMU's launch`, hold.held);
    assert.is(hugepages(), pool + PAGES_OF_64_MIB, "prepared");
    const journal = JSON.parse(fs.readFileSync(`/run/vmhook/${domain.uuid}.json`, "utf8")) as { phase: string; starter?: { command: string; instance: string } };
    assert.is(journal.phase, "starting");
    const libvirtd = journal.starter?.instance.split(":")[0];
    assert.is(journal.starter?.command, "libvirtd");
    assert.ok(fs.readFileSync(`/proc/${libvirtd}/stat`, "utf8").startsWith(`${libvirtd} (libvirtd) `), `the starter ${libvirtd} is libvirtd`);

    await restartLibvirtd("SIGKILL");
    hold.letGo();
    assert.is.not((await start).code, 0, "virsh start lost its libvirtd");
    assert.is((await virshOk("domstate", domain.name)).trim(), "shut off", "a libvirtd started again does not resume the start");
    const status = await runProgram(binary(), ["status"]);
    assert.match(status.stdout, `${domain.name} (${domain.uuid}): its start was abandoned (libvirtd (pid ${libvirtd}), which was starting it, is gone)`);
    const recover = await runProgram(binary(), ["recover", domain.name]);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.match(recover.stdout, `${domain.name}: its start was abandoned`);
    expectReleased(domain, pool);
  } finally {
    hold.letGo();
    // Had the test failed before recover, the pool would stay grown for the tests after it.
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.name]);
  }
});

/** The pid of the live QEMU started with -uuid UUID (libvirt passes it always), whatever libvirt knows of it. */
function qemuWithUuid(uuid: string): number | undefined {
  const pids = fs.readdirSync("/proc").filter((entry) => /^\d+$/.test(entry));
  const live = pids.filter((pid) => {
    try {
      const args = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0"); // empty for a zombie
      const at = args.indexOf("-uuid");
      return at >= 0 && args[at + 1] === uuid;
    } catch {
      return false; // exited meanwhile
    }
  });
  return live.length > 0 ? Number(live[0]) : undefined;
}

test("libvirtd crashed and lost the running domain's state, its QEMU still running: virsh start is refused naming that QEMU, the release libvirt runs after it and vmhook recover keep its pages, and once it is killed the next start gives them back first", async () => {
  const domain = await hugepagesDomain("lost-qemu");
  const pool = hugepages();
  let lost: number | undefined;
  try {
    await virshOk("start", domain.name);
    lost = qemuWithUuid(domain.uuid);
    assert.ok(lost, `no QEMU with -uuid ${domain.uuid} runs`);
    const journal = fs.readFileSync(`/run/vmhook/${domain.uuid}.json`, "utf8");
    // What a libvirtd that crashed writing its state leaves: no status XML, no pid file; the guest runs on.
    await restartLibvirtd("SIGKILL", () => {
      for (const file of [`${domain.name}.xml`, `${domain.name}.pid`]) fs.rmSync(path.join("/run/libvirt/qemu", file), { force: true });
    });
    assert.is((await virshOk("domstate", domain.name)).trim(), "shut off", "libvirt lost track of the domain");
    assert.is(qemuWithUuid(domain.uuid), lost, "its QEMU runs on");

    const logOffset = logSize();
    const started = await virsh("start", domain.name);
    assert.is.not(started.code, 0, "virsh start succeeded beside the lost QEMU");
    assert.match(started.stderr, `exit status 1: vmhook: prepare of ${domain.name} refused: a QEMU of this domain still runs (pid ${lost}, -uuid ${domain.uuid}), which libvirt has lost track of; the 1 change(s) an earlier run made for it are kept, not taken from under it`);
    // libvirt ran stopped and release after the refused prepare, before virsh start returned
    assert.match(logSince(logOffset), `[${domain.name} release end] error: release of ${domain.name}: a QEMU of this domain still runs (pid ${lost}`);
    assert.is(hugepages(), pool + PAGES_OF_64_MIB, "the lost guest's pages stay reserved");
    assert.is(fs.readFileSync(`/run/vmhook/${domain.uuid}.json`, "utf8"), journal, "its journal as it was");
    const recover = await runProgram(binary(), ["recover", domain.name]);
    assert.match(recover.stdout, `${domain.name}: still running`, recover.stdout + recover.stderr);
    assert.is(hugepages(), pool + PAGES_OF_64_MIB, "recover leaves them too");

    process.kill(lost, "SIGKILL");
    await waitUntil(`the lost QEMU ${lost} has gone`, () => qemuWithUuid(domain.uuid) === undefined);
    await virshOk("start", domain.name);
    await expectHeld(domain, pool + PAGES_OF_64_MIB);
    await virshOk("destroy", domain.name);
    expectReleased(domain, pool);
  } finally {
    // Had the test failed midway: the lost QEMU goes, and the pages its journal holds, for the tests after it.
    if (lost !== undefined && qemuWithUuid(domain.uuid) === lost) process.kill(lost, "SIGKILL");
    await virsh("destroy", domain.name); // fails when not running: fine
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.name]);
  }
});

run();
