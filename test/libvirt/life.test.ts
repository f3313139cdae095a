// A VM's life beyond start and destroy under a real libvirtd: renamed while
// a crash left its journal.
import * as fs from "node:fs";
import * as path from "node:path";
import * as assert from "uvu/assert";
import { binary, defineDomain, hugepages, journalExists, libvirtSuite, restartLibvirtd, run as runProgram, virshOk, waitUntil, type TestDomain } from "./fixture.ts";

const { test, run } = libvirtSuite("libvirt: life");

const HUGEPAGES = '<vmhook:hugepages size="2M"/>';

function expectReleased(domain: TestDomain, pool: number): void {
  assert.is(hugepages(), pool, "pages in the pool after the domain stopped");
  assert.not.ok(journalExists(domain.uuid), `the journal of ${domain.name} is still there`);
}

/** What a libvirtd that crashed while the domain ran leaves once its QEMU died too: no status XML, no pid file, and the domain's journal. */
async function crashWithDomain(domain: TestDomain): Promise<void> {
  const qemu = Number(fs.readFileSync(`/run/libvirt/qemu/${domain.name}.pid`, "utf8").trim());
  await restartLibvirtd("SIGKILL", async () => {
    for (const file of [`${domain.name}.xml`, `${domain.name}.pid`]) fs.rmSync(path.join("/run/libvirt/qemu", file), { force: true });
    process.kill(qemu, "SIGKILL");
    await waitUntil(`QEMU (pid ${qemu}) is gone`, () => !fs.existsSync(`/proc/${qemu}`));
  });
}

test("renamed (virsh domrename) after a crash left its journal: vmhook status names it by its new name, vmhook recover NEW gives its pages back", async () => {
  const domain = await defineDomain("before-rename", { hooks: HUGEPAGES });
  const renamed = { name: domain.name.replace("before", "after"), uuid: domain.uuid };
  const pool = hugepages();
  try {
    await virshOk("start", domain.name);
    await crashWithDomain(domain);
    assert.is((await virshOk("domstate", domain.name)).trim(), "shut off");
    assert.ok(journalExists(domain.uuid), "the crash left the journal");
    await virshOk("domrename", domain.name, renamed.name);

    const status = await runProgram(binary(), ["status"]);
    assert.match(status.stdout, `${renamed.name} (${domain.uuid}, ${domain.name} when it started): not running, yet vmhook still holds for it (vmhook recover ${renamed.name} gives it back)`, status.stdout);
    const recover = await runProgram(binary(), ["recover", renamed.name]);
    assert.is(recover.code, 0, recover.stdout + recover.stderr);
    assert.match(recover.stdout, `${renamed.name}: 1 change(s) undone`);
    expectReleased(renamed, pool);
  } finally {
    if (journalExists(domain.uuid)) await runProgram(binary(), ["recover", "--force", domain.uuid]);
  }
});

run();
