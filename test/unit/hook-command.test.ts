// `vmhook hook NAME OP SUBOP`, the event run by hand: libvirt never runs
// prepare, start, stopped or release while the domain's QEMU runs, so the
// hook takes a journal found at prepare for a crashed run's and undoes it.
// By hand, on a running VM, that would take its GPU and pages from under it.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { cli } from "../helpers/cli.ts";
import { SimHost } from "../helpers/simhost.ts";

const VM_UUID = "d0d0d0d0-0000-4000-8000-0000000000a0";

/** `vmhook hook vm OP SUBOP` on `sim`, vm's XML on stdin: its outcome, and whether the hook acted (past the check of the XML it read). */
async function byHand(sim: SimHost, op: string, subop: string): Promise<{ code: number; stderr: string; ran: boolean }> {
  let ran = false;
  const hookMain = async (_args: string[], _root: string, checkXml?: (xml: string) => void) => {
    checkXml?.(`<domain type="kvm"><name>vm</name><uuid>${VM_UUID}</uuid></domain>`);
    ran = true;
    return 0;
  };
  const { code, stderr } = await cli(["hook", "vm", op, subop, "--root", sim.root], sim, hookMain);
  return { code, stderr, ran };
}

const NOT_WHILE_RUNNING = [["prepare", "begin"], ["start", "begin"], ["stopped", "end"], ["release", "end"]] as const;

test("vmhook hook prepare (start, stopped, release) on a running VM is refused, naming the VM and what to do: the hook would undo its live journal as a crashed run's", async () => {
  const sim = new SimHost().dir("/var/log").process(4100, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm"]).file("/run/libvirt/qemu/vm.pid", 4100);
  try {
    for (const [op, subop] of NOT_WHILE_RUNNING) {
      const outcome = await byHand(sim, op, subop);
      assert.equal([outcome.code, outcome.ran], [1, false], `${op} ${subop}`);
      assert.is(
        outcome.stderr,
        `vmhook: vmhook hook vm ${op} ${subop} refused: vm is running (/run/libvirt/qemu/vm.pid names a live process), and libvirt runs ${op} only while it is not: it would take back what the running VM uses\n  shut vm down first (virsh shutdown vm); started and reconnect are the events of a running VM\n`,
        `${op} ${subop}`,
      );
    }
    for (const [op, subop] of [["started", "begin"], ["reconnect", "begin"], ["migrate", "begin"]]) assert.ok((await byHand(sim, op!, subop!)).ran, `${op} runs on a running VM`);
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook prepare (start, stopped, release) on a VM whose QEMU libvirt lost track of (no pid file, its -uuid running) is refused, naming the process, as recover and status count it running", async () => {
  const uuid = "d0d0d0d0-0000-4000-8000-0000000000a2";
  const sim = new SimHost().dir("/var/log").file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-name\0guest=vm\0-uuid\0${uuid}\0`);
  try {
    for (const [op, subop] of NOT_WHILE_RUNNING) {
      let acted = false;
      const hookMain = async (_args: string[], _root: string, checkXml?: (xml: string) => void) => {
        checkXml?.(`<domain type="kvm"><name>vm</name><uuid>${uuid}</uuid></domain>`);
        acted = true;
        return 0;
      };
      const { code, stderr } = await cli(["hook", "vm", op, subop, "--root", sim.root], sim, hookMain);
      assert.equal([code, acted], [1, false], `${op} ${subop}: ${stderr}`);
      assert.is(
        stderr,
        `vmhook: vmhook hook vm ${op} ${subop} refused: vm is running (a QEMU with its UUID ${uuid} runs, pid 4242, with no live process in /run/libvirt/qemu/vm.pid: libvirt has lost track of it), and libvirt runs ${op} only while it is not: it would take back what the running VM uses\n  shut vm down first (virsh shutdown vm); started and reconnect are the events of a running VM\n`,
        `${op} ${subop}`,
      );
    }
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook prepare on a VM whose <seclabel model='dac'> runs its QEMU as another user, with no journal: that user's QEMU with its -uuid (libvirt lost track of it) is counted running, as release counts it", async () => {
  const uuid = "d0d0d0d0-0000-4000-8000-0000000000a3";
  const sim = new SimHost()
    .dir("/var/log")
    .file("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nqemu:x:107:107::/:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    .file("/etc/libvirt/qemu.conf", 'user = "qemu"\n')
    .process(4242, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm", "-uuid", uuid], { uid: 1000 });
  try {
    for (const [label, expected] of [["<label>alice:alice</label>", false], ["", true]] as const) {
      let acted = false;
      const hookMain = async (_args: string[], _root: string, checkXml?: (xml: string) => void) => {
        checkXml?.(`<domain type="kvm"><name>vm</name><uuid>${uuid}</uuid><seclabel type="static" model="dac" relabel="yes">${label}</seclabel></domain>`);
        acted = true;
        return 0;
      };
      const { code, stderr } = await cli(["hook", "vm", "prepare", "begin", "--root", sim.root], sim, hookMain);
      assert.is(acted, expected, `seclabel ${label || "without a label"}: ${stderr}`);
      if (!expected) {
        assert.is(code, 1);
        assert.match(stderr, `vmhook: vmhook hook vm prepare begin refused: vm is running (a QEMU with its UUID ${uuid} runs, pid 4242, with no live process in /run/libvirt/qemu/vm.pid: libvirt has lost track of it)`);
      }
    }
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook prepare when whether the VM runs cannot be told (its pid file unreadable) is refused too, naming the file", async () => {
  const sim = new SimHost().dir("/var/log").dir("/run/libvirt/qemu/vm.pid");
  try {
    const outcome = await byHand(sim, "prepare", "begin");
    assert.equal([outcome.code, outcome.ran], [1, false]);
    assert.match(outcome.stderr, "vmhook: vmhook hook vm prepare begin refused: cannot tell whether vm runs (cannot read /run/libvirt/qemu/vm.pid (EISDIR)");
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook prepare on a VM that is shut off runs the hook", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    for (const [op, subop] of NOT_WHILE_RUNNING) assert.ok((await byHand(sim, op, subop)).ran, `${op} ${subop}`);
  } finally {
    sim.cleanup();
  }
});


test("vmhook hook started (reconnect) on a VM that is shut off is refused, naming what to do: the hook would mark a leftover journal running, as if its QEMU ran", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    for (const [op, subop] of [["started", "begin"], ["reconnect", "begin"]] as const) {
      const outcome = await byHand(sim, op, subop);
      assert.equal([outcome.code, outcome.ran], [1, false], `${op} ${subop}`);
      assert.is(
        outcome.stderr,
        `vmhook: vmhook hook vm ${op} ${subop} refused: vm is not running (no live process in /run/libvirt/qemu/vm.pid, nor one with -uuid ${VM_UUID}), and libvirt runs ${op} only while its QEMU does: it would mark what an earlier run left as a running VM's\n  start vm first (virsh start vm); prepare, start, stopped and release are the events of a VM that is not running\n`,
        `${op} ${subop}`,
      );
    }
    sim.dir("/run/libvirt/qemu/vm.pid");
    assert.match((await byHand(sim, "started", "begin")).stderr, "vmhook: vmhook hook vm started begin refused: cannot tell whether vm runs (cannot read /run/libvirt/qemu/vm.pid (EISDIR)");
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook with an event libvirt never sends (release begin for release end, a typo) is a usage error naming the event to type; the hook does not run and report success", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    const expected: Record<string, string> = {
      "release begin": `vmhook: "release begin" is not an event libvirt runs, so the hook would do nothing; did you mean vmhook hook vm release end?; usage: vmhook hook NAME OP SUBOP [EXTRA]\n`,
      "prepare end": `vmhook: "prepare end" is not an event libvirt runs, so the hook would do nothing; did you mean vmhook hook vm prepare begin?; usage: vmhook hook NAME OP SUBOP [EXTRA]\n`,
      "prepar begin": `vmhook: "prepar begin" is not an event libvirt runs, so the hook would do nothing; did you mean vmhook hook vm prepare begin?; usage: vmhook hook NAME OP SUBOP [EXTRA]\n`,
      "bogus begin": `vmhook: "bogus begin" is not an event libvirt runs, so the hook would do nothing; the events are prepare begin, start begin, started begin, stopped end, release end, migrate begin, restore begin, reconnect begin, attach begin; usage: vmhook hook NAME OP SUBOP [EXTRA]\n`,
    };
    for (const [event, stderr] of Object.entries(expected)) {
      const [op, subop] = event.split(" ");
      const outcome = await byHand(sim, op!, subop!);
      assert.equal([outcome.code, outcome.ran, outcome.stderr], [2, false, stderr], event);
    }
    assert.ok((await byHand(sim, "attach", "begin")).ran, "attach begin is libvirt's too (never sent any more, but not a typo)");
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook whose event failed before it logged anything does not say the domain had nothing to do", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    const failing = async () => {
      process.stderr.write("vmhook: EIO reading the domain\n");
      return 1;
    };
    const { code, stderr } = await cli(["hook", "vm", "prepare", "begin", "--root", sim.root], sim, failing);
    assert.equal([code, stderr], [1, "vmhook: EIO reading the domain\nvmhook hook: prepare begin of vm exited 1; nothing logged: the error above says what failed\n"]);
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook across a rotation of the log (logrotate renamed it while the event ran): it shows what the event logged before, in vmhook.log.1, and after, in the new log; never a piece of a line", async () => {
  const sim = new SimHost().dir("/var/log").file("/var/log/vmhook.log", "2026-11-30T23:59:00.000Z [other release end] an earlier line\n");
  const log = sim.resolve("/var/log/vmhook.log");
  try {
    const rotatedMeanwhile = async () => {
      fs.appendFileSync(log, "2026-12-01T00:00:00.000Z [vm prepare begin] hugepages: growing the pool\n");
      fs.renameSync(log, `${log}.1`);
      fs.writeFileSync(log, "2026-12-01T00:00:01.000Z [vm prepare begin] vfio: 0000:01:00.0 bound to vfio-pci\n", { mode: 0o640 });
      return 0;
    };
    const { code, stderr } = await cli(["hook", "vm", "prepare", "begin", "--root", sim.root], sim, rotatedMeanwhile);
    assert.equal([code, stderr], [0, "vmhook hook: prepare begin of vm exited 0; what it did (from /var/log/vmhook.log):\n  [vm prepare begin] hugepages: growing the pool\n  [vm prepare begin] vfio: 0000:01:00.0 bound to vfio-pci\n"]);
  } finally {
    sim.cleanup();
  }
});

test("vmhook hook started (reconnect) of a running VM given another domain's XML (a saved dumpxml of one shut off) is refused before the hook acts: it would mark that domain's leftover journal running", async () => {
  const uuid = "d0d0d0d0-0000-4000-8000-0000000000a1";
  const journal = JSON.stringify({ version: 1, domain: { name: "vm", uuid }, phase: "starting", pid: 1, entries: [] });
  // vm2 runs; vm is shut off, with a journal a start of it left behind.
  const sim = new SimHost().dir("/var/log").process(4100, ["/usr/bin/qemu-system-x86_64", "-name", "guest=vm2"]).file("/run/libvirt/qemu/vm2.pid", 4100).file(`/run/vmhook/${uuid}.json`, journal);
  try {
    for (const op of ["started", "reconnect"]) {
      let acted = false;
      const hookMain = async (_args: string[], _root: string, checkXml?: (xml: string) => void) => {
        checkXml?.(`<domain type="kvm"><name>vm</name><uuid>${uuid}</uuid></domain>`);
        acted = true;
        return 0;
      };
      const { code, stderr } = await cli(["hook", "vm2", op, "begin", "--root", sim.root], sim, hookMain);
      assert.equal([code, acted], [1, false], `${op}: ${stderr}`);
      assert.match(stderr, `vmhook: vmhook hook vm2 ${op} begin refused: the domain XML on stdin has the UUID of vm (${uuid}), not vm2's: the hook would take vm's journal (/run/vmhook/${uuid}.json) for vm2's and act on it\n`, op);
    }
  } finally {
    sim.cleanup();
  }
});
test("vmhook hook typed at a terminal, nothing piped in, says on stderr what it waits for before it reads: the XML, as virsh dumpxml gives it", async () => {
  const sim = new SimHost().dir("/var/log");
  const wasTty = process.stdin.isTTY;
  try {
    for (const [terminal, said] of [[true, true], [false, false]] as const) {
      Object.defineProperty(process.stdin, "isTTY", { value: terminal, configurable: true, writable: true });
      const hookMain = async () => {
        process.stderr.write("<the hook reads stdin>\n");
        return 0;
      };
      const { stderr } = await cli(["hook", "vm", "prepare", "begin", "--root", sim.root], sim, hookMain);
      const waiting = "vmhook hook: reading vm's domain XML on stdin, as libvirt passes it (end it with Ctrl-D); to pass it: virsh dumpxml vm | vmhook hook vm prepare begin\n<the hook reads stdin>\n";
      assert.is(stderr.startsWith(waiting), said, stderr);
      if (!said) assert.ok(stderr.startsWith("<the hook reads stdin>\n"), stderr);
    }
  } finally {
    Object.defineProperty(process.stdin, "isTTY", { value: wasTty, configurable: true, writable: true });
    sim.cleanup();
  }
});

test("a domain renamed (virsh domrename) while a crash left its journal under the old name: vmhook hook NEW with NEW's own XML runs, and stopped/release without XML name that journal", async () => {
  const uuid = "d0d0d0d0-0000-4000-8000-0000000000a3";
  const journal = JSON.stringify({ version: 1, domain: { name: "old", uuid }, phase: "running", pid: 1, entries: [{ plugin: "hugepages", event: "prepare", description: "grow the 2M pool by 512 pages", undo: { action: "grow-pool", sizeKiB: 2048, node: null, added: 512, returned: 0 }, state: "applied", at: "2026-11-22T10:00:01.000Z" }] });
  const sim = new SimHost().dir("/var/log").file(`/run/vmhook/${uuid}.json`, journal).file("/etc/libvirt/qemu/new.xml", `<domain type="kvm"><name>new</name><uuid>${uuid}</uuid></domain>`);
  try {
    let acted = false;
    const hookMain = async (_args: string[], _root: string, checkXml?: (xml: string) => void) => {
      checkXml?.(`<domain type="kvm"><name>new</name><uuid>${uuid}</uuid></domain>`);
      acted = true;
      return 0;
    };
    const byHand = await cli(["hook", "new", "release", "end", "--root", sim.root], sim, hookMain);
    assert.equal([byHand.code, acted], [0, true], byHand.stderr);

    const { runEvent, withoutDomainXml } = await import("../../lib/hook.ts");
    const said: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => said.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      await runEvent({ args: ["new", "release", "end", "-"], xml: "", root: sim.root, host: sim }, "release", withoutDomainXml("is empty", false), false);
    } finally {
      process.stderr.write = write;
    }
    assert.match(said.join(""), `its journal /run/vmhook/${uuid}.json (started as old) holds 1 change(s), kept: once new is shut off, run vmhook recover new`);
  } finally {
    sim.cleanup();
  }
});
test("the hook given no domain XML (a dispatcher that does not pass stdin on) names the dispatcher fix and a check that changes nothing, never the hook run by hand: at prepare it would hand devices over with no VM starting", async () => {
  const sim = new SimHost().dir("/var/log");
  try {
    const { runEvent, withoutDomainXml } = await import("../../lib/hook.ts");
    for (const [op, subop, mayFail] of [["prepare", "begin", true], ["start", "begin", true], ["release", "end", false]] as const) {
      const said: string[] = [];
      const write = process.stderr.write;
      process.stderr.write = ((chunk: string) => said.push(String(chunk)) > 0) as typeof process.stderr.write;
      let code: number;
      try {
        code = await runEvent({ args: ["my vm", op, subop, "-"], xml: "", root: sim.root, host: sim }, op, withoutDomainXml("is empty", mayFail), mayFail);
      } finally {
        process.stderr.write = write;
      }
      const stderr = said.join("");
      assert.is(code, mayFail ? 1 : 0, `${op}: ${stderr}`);
      assert.match(stderr, "whatever runs vmhook (a dispatcher script at /etc/libvirt/hooks/qemu?) must pass its stdin on (exec or \"$@\", not < /dev/null)", op);
      assert.match(stderr, "to check what vmhook makes of my vm's XML without changing the host: virsh dumpxml 'my vm' | vmhook plan -", op);
      assert.not.match(stderr, "vmhook hook", op);
    }
  } finally {
    sim.cleanup();
  }
});
test.run();
