// A stand-in for virsh on PATH, for the CLI commands that talk to libvirt
// (config, enable, disable): one domain whose persistent and running XML are
// files in a directory, changed by `virsh metadata` as libvirt changes them
// (--live, --config, or neither: the running domain if it runs). Every call is
// logged, so a test sees what vmhook asked libvirt to do.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DOMParser, type Element } from "@xmldom/xmldom";
import { inNamespace, withVmhookMetadata } from "../../lib/metadata-in-domain.ts";

export interface FakeLibvirt {
  dir: string;
  /** The domain XML as libvirt holds it: "config" the persistent one, "live" the running one. */
  xml(which: "config" | "live"): string;
  setXml(which: "config" | "live", xml: string): void;
  setRunning(running: boolean): void;
  /** The guest panicked under <on_crash>preserve</on_crash>: libvirt keeps its QEMU (paused) and the running definition, in state "crashed". */
  preserveCrash(): void;
  /** The domain made by virsh create from XML: running, without a persistent definition. */
  makeTransient(): void;
  /** The argument lists virsh was called with, in order. */
  calls(): string[][];
  /** Restores PATH and removes the directory. */
  cleanup(): void;
}

/** Puts a fake virsh first on PATH for the domain `name`, shut off, with this persistent XML. */
export function fakeLibvirt(name: string, configXml: string): FakeLibvirt {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vmhook-fake-virsh-"));
  const file = (which: string) => path.join(dir, which);
  fs.writeFileSync(file("config"), configXml);
  fs.writeFileSync(file("name"), name);
  fs.writeFileSync(file("state"), "shut off");
  fs.writeFileSync(file("virsh"), `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(new URL(import.meta.url).pathname)} ${JSON.stringify(dir)} "$@"\n`, { mode: 0o755 });
  const savedPath = process.env.PATH;
  process.env.PATH = `${dir}:${savedPath}`;
  return {
    dir,
    xml: (which) => fs.readFileSync(file(which), "utf8"),
    setXml: (which, xml) => fs.writeFileSync(file(which), xml),
    setRunning(running) {
      fs.writeFileSync(file("state"), running ? "running" : "shut off");
      if (running) fs.copyFileSync(file("config"), file("live"));
      else fs.rmSync(file("live"), { force: true });
    },
    preserveCrash: () => fs.writeFileSync(file("state"), "crashed"),
    makeTransient() {
      fs.writeFileSync(file("state"), "running");
      fs.renameSync(file("config"), file("live"));
    },
    calls: () => (fs.existsSync(file("calls")) ? fs.readFileSync(file("calls"), "utf8").trim().split("\n").map((line) => JSON.parse(line) as string[]) : []),
    cleanup() {
      process.env.PATH = savedPath;
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** virsh itself: `virsh [--connect URI] COMMAND ARGS`, for the domain of the directory. */
function fakeVirsh(dir: string, args: string[]): number {
  const file = (which: string) => path.join(dir, which);
  fs.appendFileSync(file("calls"), `${JSON.stringify(args)}\n`);
  const words = args[0] === "--connect" ? args.slice(2) : args;
  const [command, ...rest] = words;
  const state = fs.readFileSync(file("state"), "utf8").trim() as DomainState;
  // libvirt's "active": a QEMU process is there, a crashed one it preserved included
  const running = state !== "shut off";
  const domain = firstPositional(rest);
  if (domain !== fs.readFileSync(file("name"), "utf8")) {
    process.stderr.write(`error: failed to get domain '${domain}'\n`);
    return 1;
  }
  if (command === "domstate") {
    process.stdout.write(`${inCallersLanguage(state)}\n\n`);
    return 0;
  }
  const persistent = fs.existsSync(file("config"));
  if (command === "dominfo") {
    process.stdout.write(`Id:             1\nName:           ${domain}\nState:          ${state}\nPersistent:     ${persistent ? "yes" : "no"}\nAutostart:      disable\n\n`);
    return 0;
  }
  if (command === "dumpxml") {
    // a transient domain's "inactive" XML is its running one
    process.stdout.write(fs.readFileSync(file((rest.includes("--inactive") || !running) && persistent ? "config" : "live"), "utf8"));
    return 0;
  }
  if (command === "metadata") {
    const live = rest.includes("--live") || (!rest.includes("--config") && running);
    const targets = [...(live ? ["live"] : []), ...(rest.includes("--config") || !running ? ["config"] : [])];
    if (live && !running) {
      process.stderr.write("error: Requested operation is not valid: domain is not running\n");
      return 1;
    }
    if (targets.includes("config") && !persistent) {
      process.stderr.write("error: Requested operation is not valid: cannot change persistent config of a transient domain\n");
      return 1;
    }
    const set = rest.indexOf("--set");
    for (const target of targets) fs.writeFileSync(file(target), storeMetadata(fs.readFileSync(file(target), "utf8"), set >= 0 ? rest[set + 1]! : undefined));
    return 0;
  }
  process.stderr.write(`error: the fake virsh does not know ${command}\n`);
  return 1;
}

type DomainState = "running" | "shut off" | "crashed";

/** virsh's words as gettext gives them: German when the locale asks for it (LC_ALL=C or POSIX: the words as written, whatever LANGUAGE says). */
function inCallersLanguage(words: DomainState): string {
  const locale = process.env.LC_ALL || process.env.LC_MESSAGES || process.env.LANG || "C";
  if (locale === "C" || locale === "POSIX") return words;
  return (process.env.LANGUAGE || locale).startsWith("de") ? { running: "laufend", "shut off": "ausgeschaltet", crashed: "abgestürzt" }[words] : words;
}

/** Options of the commands above that take the next word as their value. */
const VALUE_OPTIONS = new Set(["--uri", "--key", "--set"]);

/** The first positional argument, as virsh reads it: before "--", a word starting with "--" and a letter or digit is an option. */
function firstPositional(words: string[]): string | undefined {
  for (let index = 0; index < words.length; index++) {
    const word = words[index]!;
    if (word === "--") return words[index + 1];
    if (!/^--[A-Za-z0-9]/.test(word)) return word;
    if (VALUE_OPTIONS.has(word)) index++;
  }
  return undefined;
}

/**
 * The domain XML after `virsh metadata --set GIVEN` (undefined: --remove), as
 * libvirt stores it: every element of vmhook's namespace in <metadata>
 * replaced by the given element as given, each element in it without a
 * namespace put in vmhook's (comments, CDATA, processing instructions and
 * other namespaces kept).
 */
function storeMetadata(domainXml: string, given: string | undefined): string {
  if (given === undefined) return withVmhookMetadata(domainXml, undefined);
  const document = new DOMParser().parseFromString(given, "text/xml");
  return withVmhookMetadata(domainXml, inNamespace(document, document.documentElement!, "prefixed") as Element);
}

if (import.meta.main) process.exit(fakeVirsh(process.argv[2]!, process.argv.slice(3)));
