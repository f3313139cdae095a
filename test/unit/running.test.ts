// Whether a domain runs, read from libvirt's pid file and /proc (lib/cli/running.ts).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { runningOrWhyUnknown } from "../../lib/cli/running.ts";
import type { Host } from "../../lib/host.ts";
import { paths } from "../../lib/paths.ts";
import { SimHost } from "../helpers/simhost.ts";

const UUID = "d0d0d0d0-0000-4000-8000-0000000000b6";

/** `host`, noting every path read through it. */
function noting(host: Host, reads: string[]): Host {
  return new Proxy(host, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if ((key === "read" || key === "readTrimmed") && typeof args[0] === "string") reads.push(args[0]);
        return value.apply(target, args);
      };
    },
  });
}

test("runningOrWhyUnknown reads the domain's pid file once whether it runs or not, and counts a QEMU of its UUID that libvirt lost track of", () => {
  const sim = new SimHost().process(4100, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID]).file(`${paths.libvirtQemuRunDir}/vm.pid`, 4100);
  try {
    const pidFile = `${paths.libvirtQemuRunDir}/vm.pid`;
    for (const [shape, prepareHost, expected] of [
      ["running", () => {}, true],
      ["its pid file's process gone", () => sim.remove("/proc/4100"), false],
      ["no pid file", () => sim.remove(pidFile), false],
      ["lost track of", () => sim.file("/proc/4242/cmdline", `/usr/bin/qemu-system-x86_64\0-uuid\0${UUID}\0`), true],
    ] as const) {
      prepareHost();
      const reads: string[] = [];
      assert.is(runningOrWhyUnknown(noting(sim, reads), { name: "vm", uuid: UUID }), expected, shape);
      assert.equal(reads.filter((file) => file === pidFile), [pidFile], `${shape}: the pid file is read once`);
    }
  } finally {
    sim.cleanup();
  }
});

test("runningOrWhyUnknown with no journal counts a QEMU of the UUID run as the domain's <seclabel model='dac'> user, as release does, and not another user's", () => {
  const sim = new SimHost()
    .file("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nqemu:x:107:107::/:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    .file("/etc/libvirt/qemu.conf", 'user = "qemu"\n')
    .process(4242, ["/usr/bin/qemu-system-x86_64", "-uuid", UUID], { uid: 1000 });
  try {
    assert.is(runningOrWhyUnknown(sim, { name: "vm", uuid: UUID, dacUser: "alice" }), true);
    assert.is(runningOrWhyUnknown(sim, { name: "vm", uuid: UUID }), false, "alice's process is no QEMU of a domain libvirt runs as qemu");
    assert.is(runningOrWhyUnknown(sim, { name: "vm", uuid: UUID, dacUser: "qemu" }), false);
  } finally {
    sim.cleanup();
  }
});

test.run();
