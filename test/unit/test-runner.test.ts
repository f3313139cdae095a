// The test runner itself: a test that fails with vmhook's own error must be
// reported with its message, and the tests after it must still run. uvu
// prints an error's `details` as text; vmhook's errors once carried their
// lines there as an array, which made uvu's report throw: the message was
// lost and the rest of the file never ran.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";

const REPO = path.resolve(import.meta.dirname, "../..");

test("a test failing with a ConfigError is reported with its message, and the next test runs", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-uvu-"));
  try {
    fs.writeFileSync(
      path.join(dir, "fails.test.ts"),
      [
        'import { test } from "uvu";',
        `import { ConfigError } from ${JSON.stringify(path.join(REPO, "lib/errors.ts"))};`,
        'test("throws", () => { throw new ConfigError("<vmhook:x>", "is wrong", ["fix: this"]); });',
        'test("passes", () => {});',
        "test.run();",
      ].join("\n"),
    );
    const uvu = spawnSync(process.execPath, [path.join(REPO, "node_modules/uvu/bin.js"), dir, "\\.test\\.ts$"], { encoding: "utf8", timeout: 30_000 });
    const output = `${uvu.stdout}${uvu.stderr}`.replace(/\x1b\[[0-9;]*m/g, "");
    assert.match(output, "<vmhook:x>: is wrong");
    assert.match(output, /Total:\s+2\s+Passed:\s+1/);
    assert.is(uvu.status, 1);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
