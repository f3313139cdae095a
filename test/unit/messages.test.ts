// Messages that stay useful on any input: a huge value is quoted by its start
// and length, a failed read names the file and the errno, an id from the
// journal finds only a plugin, a limit's message says the range it checks,
// and the CLI prints no "undefined" for a throw that is not an Error.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { DeniedToUser, FixableError, quoted, VmhookError } from "../../lib/errors.ts";
import { parseDomain } from "../../lib/domain.ts";
import { loadDomainPlugins, namingCustomPlugin } from "../../lib/config.ts";
import { failedWith } from "../../lib/diagnostics/findings.ts";
import { paths } from "../../lib/paths.ts";
import { loadSettings } from "../../lib/settings.ts";
import { registry } from "../../plugins/index.ts";
import { cli } from "../helpers/cli.ts";
import { SimHost } from "../helpers/simhost.ts";

const UUID = "d0d0d0d0-0000-4000-8000-0000000000c1";

test("quoted: a short value whole, in quotes; a long one by its start and its length; either on one line", () => {
  assert.is(quoted("2M"), '"2M"');
  assert.is(quoted("2M\n0000:01:00.0\r"), '"2M\\n0000:01:00.0\\r"');
  const huge = "A".repeat(40_000);
  const shown = quoted(huge);
  assert.ok(shown.startsWith('"AAAA'), shown);
  assert.match(shown, /…" \(40000 characters\)$/);
  assert.ok(shown.length < 100, shown);
});

test("a 40 000-character attribute value is refused in a message of a line, not of 40 KB, still naming the element and the attribute", async () => {
  const huge = "1".repeat(40_000);
  const sim = new SimHost();
  try {
    for (const element of [`<vmhook:hugepages size="${huge}"/>`, `<vmhook:vfio devices="${huge}"/>`, `<vmhook:isolate host-cpus="0-${huge}"/>`, `<vmhook:forward ports="${huge}"/>`, `<vmhook:mdev parent="${huge}" type="i915-GVTg_V5_4"/>`]) {
      const xml = `<domain type='kvm'><name>vm</name><uuid>${UUID}</uuid><memory unit='GiB'>1</memory><metadata><vmhook:hooks xmlns:vmhook="urn:vmhook:1">${element}</vmhook:hooks></metadata><devices/></domain>`;
      try {
        await loadDomainPlugins(parseDomain(xml), sim, registry);
        assert.unreachable(`${element.slice(0, 40)} was accepted`);
      } catch (error) {
        if (error instanceof assert.Assertion) throw error;
        const message = (error as Error).message;
        assert.ok(message.length < 600, `${message.length} characters: ${message.slice(0, 300)}`);
        assert.match(message, element.slice(0, element.indexOf(" ")));
        assert.match(message, "characters)");
      }
    }
  } finally {
    sim.cleanup();
  }
});

test("Host.read of a file that is not there names the host's path and the errno, keeps the code, and shows no test root", () => {
  const sim = new SimHost();
  try {
    let caught: unknown;
    try {
      sim.read("/sys/devices/system/cpu/present");
    } catch (error) {
      caught = error;
    }
    assert.instance(caught, VmhookError);
    const error = caught as VmhookError & { code?: string };
    assert.is(error.code, "ENOENT");
    assert.match(error.message, /^cannot read \/sys\/devices\/system\/cpu\/present \(ENOENT/);
    assert.not.match(error.message, sim.root);
  } finally {
    sim.cleanup();
  }
});

test("a journal's plugin id that is an inherited member of an object (constructor, toString, __proto__) is no built-in plugin", async () => {
  const sim = new SimHost();
  try {
    for (const id of ["constructor", "toString", "__proto__", "hasOwnProperty"]) {
      try {
        await registry.load(id, sim);
        assert.unreachable(`${id} loaded`);
      } catch (error) {
        if (error instanceof assert.Assertion) throw error;
        assert.instance(error, VmhookError, `${id}: ${String(error)}`);
        assert.match((error as Error).message, `no built-in plugin "${id}"`);
      }
    }
  } finally {
    sim.cleanup();
  }
});

test("the host settings' time limits: what the refusal says is the range the check takes (a fraction of a second is taken)", () => {
  const sim = new SimHost();
  try {
    const settings = [
      (seconds: number) => ({ deadlineSeconds: seconds }),
      (seconds: number) => ({ undoDeadlineSeconds: seconds }),
      (seconds: number) => ({ plugins: { vfio: { stopTimeoutSeconds: seconds } } }),
      (seconds: number) => ({ plugins: { vfio: { bindTimeoutSeconds: seconds } } }),
    ];
    for (const setting of settings) {
      sim.file(paths.hostConfig, JSON.stringify(setting(0.5)));
      loadSettings(sim);
      sim.file(paths.hostConfig, JSON.stringify(setting(0)));
      assert.throws(() => loadSettings(sim), (error: Error) => !/from 1 to/.test(error.message) && /more than 0/.test(error.message));
    }
  } finally {
    sim.cleanup();
  }
});

test("vmhook with VMHOOK_DEBUG, when something throws a value that is not an Error: the value, never an \"undefined\" stack", async () => {
  const sim = new SimHost().dir("/var/log");
  const debug = process.env.VMHOOK_DEBUG;
  process.env.VMHOOK_DEBUG = "1";
  try {
    const throwsAString = async () => {
      throw "the disk is gone";
    };
    const { code, stderr } = await cli(["hook", "vm", "prepare", "begin", "--root", sim.root], sim, throwsAString);
    assert.is(code, 1);
    assert.match(stderr, "vmhook: the disk is gone");
    assert.not.match(stderr, "undefined");
  } finally {
    if (debug === undefined) delete process.env.VMHOOK_DEBUG;
    else process.env.VMHOOK_DEBUG = debug;
    sim.cleanup();
  }
});

test("a custom plugin's error that carries its fix keeps it apart once named: the plugin's name goes before the reason, never the fix into doctor's reason", () => {
  const sim = new SimHost();
  try {
    sim.file("/etc/gate.conf", "x").failRead("/etc/gate.conf", "EIO");
    const named = (() => {
      try {
        return namingCustomPlugin("plugin:gate", () => sim.read("/etc/gate.conf"));
      } catch (error) {
        return error;
      }
    })();
    assert.instance(named, FixableError);
    const { reason, fix } = named as FixableError;
    assert.equal([reason, fix], ["plugin:gate: cannot read /etc/gate.conf (EIO)", "vmhook does not act on what it cannot read; check why (ls -l, dmesg)"]);
    assert.is((named as Error).message, `${reason}; ${fix}`, "libvirt's line still says what to do");
    const finding = failedWith("config", named, "fix the metadata as the message says");
    assert.equal([finding.reason, finding.fix], [reason, fix]);
    // What only root may read stays so: validate then says to run plan with sudo.
    assert.throws(
      () => namingCustomPlugin("plugin:gate", () => { throw new DeniedToUser("cannot read /etc/gate.conf (EACCES)"); }),
      (error: Error) => error instanceof DeniedToUser && error.reason === "plugin:gate: cannot read /etc/gate.conf (EACCES)" && error.fix === "run vmhook as root",
    );
  } finally {
    sim.cleanup();
  }
});

test.run();
