// A file of root's that may be missing, walked by one rule (lib/root-alone.ts)
// for both of its callers: the host policy and settings (rootsFile), whose
// defaults apply without them, and the custom plugins' transpiler cache
// (pathLeadsToRootsAlone, rootCreatesTheRest), which Bun makes at its first
// write. The same setups below each: root-alone directories, a group-writable
// one, one a user owns, a symlink to a root-alone directory and to a user's,
// a symlink loop, a chain of missing directories.
import * as fs from "node:fs";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { paths } from "../../lib/paths.ts";
import { loadPolicy } from "../../lib/policy.ts";
import { loadSettings } from "../../lib/settings.ts";
import { runHookEvent } from "../helpers/hook.ts";
import { SimHost } from "../helpers/simhost.ts";

const IS_ROOT = process.getuid?.() === 0;
/** chown needs root: as another user these tests are reported skipped, not passed. */
const asRoot = IS_ROOT ? test : test.skip;

const UUID = "7a7a7a7a-0000-4000-8000-00000000007a";
const MISSING = "(its defaults apply, so nobody but root may be able to remove it), and";

/** What loading the policy and the settings says on `sim`: "defaults", or each refusal. */
function verdicts(sim: SimHost): string[] {
  return [() => loadPolicy(sim), () => loadSettings(sim)].map((load) => {
    try {
      load();
      return "defaults";
    } catch (error) {
      return (error as Error).message;
    }
  });
}

/** A root with /etc root's alone and /etc/vmhook as `make` leaves it (nothing: missing). */
function etc(make?: (dir: string, sim: SimHost) => void): SimHost {
  const sim = new SimHost().dir("/etc");
  fs.chmodSync(sim.resolve("/etc"), 0o755);
  make?.(sim.resolve("/etc/vmhook"), sim);
  return sim;
}

const rootsDir = (dir: string) => {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
};

const refusedBoth = (sim: SimHost, problem: string) => {
  assert.equal(verdicts(sim), [
    `refusing the host policy: there is no ${paths.policy} ${MISSING} ${problem}`,
    `refusing the host settings: there is no ${paths.hostConfig} ${MISSING} ${problem.replace("it decides what VMs may take from the host", "it names commands and units root runs")}`,
  ]);
};

asRoot("policy and settings missing under root-alone directories, or a chain of missing ones: the defaults apply", () => {
  for (const sim of [etc(rootsDir), etc()]) {
    try {
      assert.equal(verdicts(sim), ["defaults", "defaults"]);
    } finally {
      sim.cleanup();
    }
  }
});

asRoot("policy and settings missing under a group-writable directory, one a user owns, or with /etc/vmhook missing and /etc group-writable: refused, naming the directory and the fix", () => {
  const writable = etc((dir) => {
    rootsDir(dir);
    fs.chmodSync(dir, 0o775);
  });
  const users = etc((dir) => {
    rootsDir(dir);
    fs.chownSync(dir, 1000, 1000);
  });
  const chain = etc((_, sim) => fs.chmodSync(sim.resolve("/etc"), 0o775));
  try {
    refusedBoth(writable, "/etc/vmhook has mode 0775: group or others can write it, and it decides what VMs may take from the host; run chmod go-w /etc/vmhook");
    refusedBoth(users, "/etc/vmhook is owned by uid 1000, not root; it decides what VMs may take from the host, so run chown root:root /etc/vmhook");
    refusedBoth(chain, "/etc has mode 0775: group or others can write it, and it decides what VMs may take from the host; run chmod go-w /etc");
  } finally {
    for (const sim of [writable, users, chain]) sim.cleanup();
  }
});

asRoot("policy and settings missing under /etc/vmhook as a symlink (root's) to a root-alone directory, to a user's, or in a loop: refused as a symlink, as the file itself would be; the loop used to fail on ELOOP from stat, naming no fix", () => {
  const toRoots = etc((dir, sim) => {
    rootsDir(sim.resolve("/elsewhere"));
    fs.symlinkSync(sim.resolve("/elsewhere"), dir);
  });
  const toUsers = etc((dir, sim) => {
    rootsDir(sim.resolve("/home/alice"));
    fs.chownSync(sim.resolve("/home/alice"), 1000, 1000);
    fs.symlinkSync(sim.resolve("/home/alice"), dir);
  });
  const loop = etc((dir) => fs.symlinkSync(dir, dir));
  try {
    const symlink = "/etc/vmhook is a symlink; vmhook only trusts what it can check, so put the real directory there";
    refusedBoth(toRoots, symlink);
    refusedBoth(toUsers, symlink);
    assert.equal(verdicts(loop), [`refusing the host policy: ${symlink}`, `refusing the host settings: ${symlink}`]);
  } finally {
    for (const sim of [toRoots, toUsers, loop]) sim.cleanup();
  }
});

asRoot("loadPolicy and loadSettings stat their file once, there or not; they used to stat it three times (twice in rootsFileProblem)", () => {
  const sim = etc(rootsDir);
  try {
    const stat = sim.stat.bind(sim);
    const counted: string[] = [];
    sim.stat = (file: string) => {
      counted.push(file);
      return stat(file);
    };
    const files = [paths.policy, paths.hostConfig];
    verdicts(sim);
    assert.equal(counted.filter((file) => files.includes(file)), files, "missing");
    fs.writeFileSync(sim.resolve(paths.policy), "{}\n", { mode: 0o644 });
    fs.writeFileSync(sim.resolve(paths.hostConfig), "{}\n", { mode: 0o644 });
    counted.length = 0;
    assert.equal(verdicts(sim), ["defaults", "defaults"]);
    assert.equal(counted.filter((file) => files.includes(file)), files, "there");
  } finally {
    sim.cleanup();
  }
});

// ---- the transpiler cache: a module plugin is loaded only where Bun's cache is root's alone, there or still to be made

const MODULE_PLUGIN = `
export default {
  name: "noop",
  summary: "does nothing",
  usage: '<vmhook:plugin name="noop"/>',
  parse: () => ({}),
  async prepare() {},
  undo() {},
};
`;

const XML = `<domain type="kvm"><name>vm</name><uuid>${UUID}</uuid><memory unit="MiB">512</memory>
  <metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1"><vmhook:plugin name="noop"/></vmhook:hooks></metadata></domain>`;

/** Whether the hook loads the module plugin with Bun's cache at `cache`: "loaded", or the refusal's reason after "and ". */
async function cacheVerdict(cache: string): Promise<string> {
  const sim = new SimHost().dir("/var/log").dir(paths.pluginsDir);
  fs.chmodSync(sim.resolve(paths.pluginsDir), 0o755);
  fs.writeFileSync(sim.resolve(`${paths.pluginsDir}/noop.mjs`), MODULE_PLUGIN, { mode: 0o644 });
  const saved = process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH;
  process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = cache;
  try {
    const outcome = await runHookEvent(sim, "prepare", "begin", XML);
    if (outcome.code === 0) return "loaded";
    const reason = new RegExp(`keeps the modules it transpiles in ${cache} \\(from BUN_RUNTIME_TRANSPILER_CACHE_PATH=\\S+\\), and (.*)`).exec(outcome.stderr)?.[1];
    return reason ?? outcome.stderr;
  } finally {
    if (saved === undefined) delete process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH;
    else process.env.BUN_RUNTIME_TRANSPILER_CACHE_PATH = saved;
    sim.cleanup();
  }
}

asRoot("the transpiler cache, still to be made, under each of the same setups: loaded under root-alone directories (a chain of missing ones, a symlink of root's to a root-alone directory, as an ostree host's /root -> var/roothome), refused under a group-writable one, one a user owns, a symlink to a user's, a loop", async () => {
  // Below /run, root's alone: none of it passes by a sticky /tmp.
  const base = fs.mkdtempSync("/run/vmhook-walk-");
  try {
    const fix = "run vmhook with root's own environment (sudo -i, or sudo without -E), or with BUN_RUNTIME_TRANSPILER_CACHE_PATH=0";
    const because = "whoever can change the cache could have their code run as root in place of the plugin's";
    rootsDir(`${base}/roots`);
    assert.is(await cacheVerdict(`${base}/roots/cache`), "loaded", "root-alone directories");
    assert.is(await cacheVerdict(`${base}/missing/chain/cache`), "loaded", "a chain of missing directories");
    rootsDir(`${base}/writable`);
    fs.chmodSync(`${base}/writable`, 0o775);
    assert.is(await cacheVerdict(`${base}/writable/cache`), `${base}/writable has mode 0775: group or others can write it, and ${because}; ${fix}`);
    rootsDir(`${base}/users`);
    fs.chownSync(`${base}/users`, 1000, 1000);
    assert.is(await cacheVerdict(`${base}/users/cache`), `${base}/users is owned by uid 1000, not root; ${because}, so ${fix}`);
    fs.symlinkSync(`${base}/roots`, `${base}/to-roots`);
    assert.is(await cacheVerdict(`${base}/to-roots/cache`), "loaded", "a symlink of root's to a root-alone directory");
    fs.symlinkSync(`${base}/users`, `${base}/to-users`);
    assert.is(await cacheVerdict(`${base}/to-users/cache`), `${base}/users is owned by uid 1000, not root; ${because}, so ${fix}`);
    fs.symlinkSync(`${base}/loop`, `${base}/loop`);
    assert.is(await cacheVerdict(`${base}/loop/cache`), `${base}/loop/cache leads through more than 40 symlinks`);
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
});

test.run();
