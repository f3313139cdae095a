import { test } from "uvu";
import * as assert from "uvu/assert";
import { parseCpuset, formatCpuList } from "../../lib/cpuset.ts";
test("cpuset round trip", () => {
  assert.equal(formatCpuList(parseCpuset("0-3,^2,8", "<x>", "cpuset")), "0-1,3,8");
});
test.run();
