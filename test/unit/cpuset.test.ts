// CPU lists in libvirt's syntax (cputune, host-cpus) and the kernel's.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { formatCpuList, parseCpuset, parseKernelCpuList } from "../../lib/cpuset.ts";
import { ConfigError } from "../../lib/errors.ts";

test("libvirt cpusets: ranges, single CPUs and ^exclusions, as libvirt reads them", () => {
  assert.equal(parseCpuset("0-3,^2,8", "<x>", "cpuset"), [0, 1, 3, 8]);
  assert.equal(parseCpuset(" 4 , 1-2 ", "<x>", "cpuset"), [1, 2, 4]);
  assert.is(formatCpuList(parseCpuset("0-3,^2,8", "<x>", "cpuset")), "0-1,3,8");
});

test("libvirt cpusets are read left to right, as libvirt's virBitmapParse does: ^N takes away only what the list named before it", () => {
  // libvirt pins <vcpupin cpuset='^2,0-3'> to 0-3 and writes it back so; vmhook must plan with the same CPUs
  assert.is(formatCpuList(parseCpuset("^2,0-3", "<x>", "cpuset")), "0-3");
  assert.is(formatCpuList(parseCpuset("0-3,^2,2", "<x>", "cpuset")), "0-3");
  assert.is(formatCpuList(parseCpuset("0-3,^2,^9", "<x>", "cpuset")), "0-1,3");
  assert.is(formatCpuList(parseCpuset("0-3,", "<x>", "cpuset")), "0-3", "a trailing comma, which libvirt takes");
});

test("libvirt cpusets: every malformed list is a ConfigError naming the element, the attribute and the value", () => {
  for (const bad of ["", "3-1", "a", "1,,2", "^1", "0-3,^0-3", "9000"]) {
    try {
      parseCpuset(bad, "<vmhook:isolate>", "host-cpus");
      assert.unreachable(`accepted ${JSON.stringify(bad)}`);
    } catch (error) {
      assert.instance(error, ConfigError);
      assert.match((error as Error).message, `<vmhook:isolate>: host-cpus="${bad}"`);
    }
  }
});

test("kernel CPU lists: empty, single and ranges round-trip", () => {
  assert.equal(parseKernelCpuList(""), []);
  assert.equal(parseKernelCpuList("0-2,5\n"), [0, 1, 2, 5]);
  assert.is(formatCpuList([5, 0, 1, 2, 2]), "0-2,5");
});

test.run();
