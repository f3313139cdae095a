// Golden files for human-facing output: the text is compared with
// test/golden/NAME; VMHOOK_UPDATE_GOLDEN=1 rewrites them (then review the git diff).
import * as fs from "node:fs";
import * as assert from "uvu/assert";
import { fileURLToPath } from "node:url";

export function assertGolden(name: string, actual: string): void {
  const file = fileURLToPath(new URL(`../golden/${name}`, import.meta.url));
  if (process.env.VMHOOK_UPDATE_GOLDEN === "1") fs.writeFileSync(file, actual);
  assert.ok(fs.existsSync(file), `test/golden/${name} is missing; run with VMHOOK_UPDATE_GOLDEN=1 to write it`);
  assert.fixture(actual, fs.readFileSync(file, "utf8"), `output differs from test/golden/${name}`);
}
