// Which processes with a domain's -uuid count as its QEMU before one is noted (lib/processes.ts domainQemus, lib/qemu-owners.ts).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { domainQemus } from "../../lib/processes.ts";
import { SimHost } from "../helpers/simhost.ts";

const UUID = "e0e0e0e0-0000-4000-8000-0000000000e0";
const PASSWD = "root:x:0:0:root:/root:/bin/bash\nqemu:x:107:107:qemu user:/:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n100:x:1234:1234:a user named 100:/:/bin/sh\n";

/** A host with a process of each uid in `uids`, each with the domain's -uuid (pid 5000 + its index). */
function host(uids: number[]): SimHost {
  const sim = new SimHost().file("/etc/passwd", PASSWD);
  uids.forEach((uid, index) => sim.process(5000 + index, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], { uid }));
  return sim;
}

/** The uids of the processes domainQemus counts, with no QEMU noted. */
const countedOwners = (sim: SimHost, uids: number[], dacUser?: string) => domainQemus(sim, UUID, { dacUser: dacUser ?? null }).map((pid) => uids[pid - 5000]);

test("with no QEMU noted, a process with the domain's -uuid counts when root, or a user libvirt runs QEMU as, owns it: qemu.conf's user (a name, +UID, or digits naming no user), the owner libvirt gives /var/lib/libvirt/qemu, the domain's <seclabel model='dac'> user", () => {
  const uids = [0, 107, 1000, 100, 1234, 64055];
  for (const [shape, prepare, dacUser, expected] of [
    ["qemu.conf names a user", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n'), undefined, [0, 107]],
    ["qemu.conf gives a uid", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "+107"\n'), undefined, [0, 107]],
    ["digits that name a user are that user", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "100"\n'), undefined, [0, 1234]],
    ["digits that name no user are a uid", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user="64055" # set by hand\n'), undefined, [0, 64055]],
    ["only a comment: the build's default, as libvirt made the owner of its directory", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", '#user = "libvirt-qemu"\n').dir("/var/lib/libvirt/qemu").own("/var/lib/libvirt/qemu", 64055), undefined, [0, 64055]],
    ["no qemu.conf at all", (sim: SimHost) => sim.dir("/var/lib/libvirt/qemu").own("/var/lib/libvirt/qemu", 64055), undefined, [0, 64055]],
    ["qemu.conf's user and the directory's owner of an earlier daemon", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n').dir("/var/lib/libvirt/qemu").own("/var/lib/libvirt/qemu", 64055), undefined, [0, 107, 64055]],
    ["the domain's dac seclabel user", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n'), "alice", [0, 107, 1000]],
    ["the domain's dac seclabel uid", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n'), "+1234", [0, 107, 1234]],
  ] as const) {
    const sim = host(uids);
    try {
      prepare(sim);
      assert.equal(countedOwners(sim, uids, dacUser), expected, shape);
    } finally {
      sim.cleanup();
    }
  }
});

test("with no QEMU noted, every process with the domain's -uuid counts when who libvirt runs QEMU as cannot be told, and one whose owner cannot be read counts too (fail closed: the journal is kept)", () => {
  const uids = [0, 1000];
  const everyone = [0, 1000];
  for (const [shape, prepare, dacUser] of [
    ["qemu.conf cannot be read", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n').failRead("/etc/libvirt/qemu.conf", "EACCES"), undefined],
    ["its user is no string", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", "user = 107\n"), undefined],
    ["its user names nobody", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\n'), undefined],
    ["/etc/passwd cannot be read", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n').failRead("/etc/passwd", "EIO"), undefined],
    ["no user set, and no directory of libvirt's to tell its default", () => {}, undefined],
    ["libvirt's directory cannot be looked at", (sim: SimHost) => sim.failStat("/var/lib/libvirt/qemu", "EACCES"), undefined],
    ["the domain's dac user names nobody", (sim: SimHost) => sim.file("/etc/libvirt/qemu.conf", 'user = "qemu"\n'), "bob"],
  ] as const) {
    const sim = host(uids);
    try {
      prepare(sim);
      assert.equal(countedOwners(sim, uids, dacUser), everyone, shape);
    } finally {
      sim.cleanup();
    }
  }
  const sim = host(uids).file("/etc/libvirt/qemu.conf", 'user = "qemu"\n').failRead("/proc/5001/status", "EACCES");
  try {
    assert.equal(countedOwners(sim, uids), everyone, "the owner of one cannot be read");
  } finally {
    sim.cleanup();
  }
});

test("a QEMU noted at started is the one process that counts, whoever owns the others with the domain's -uuid", () => {
  const sim = host([0, 107]).file("/etc/libvirt/qemu.conf", 'user = "qemu"\n');
  try {
    assert.equal(domainQemus(sim, UUID, { qemu: "5001:1000" }), [5001]);
    assert.equal(domainQemus(sim, UUID, { qemu: "5001:999" }), [], "a later process given its pid");
  } finally {
    sim.cleanup();
  }
});

test.run();
