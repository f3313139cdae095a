// Custom plugins as executables in any language, protocol v1: one run per
// hook event with a JSON request on stdin and a JSON reply on stdout (and the
// same facts in VMHOOK_* environment variables); docs/plugins.md.
import { attributes, describeElement } from "../domain.ts";
import { domElement } from "../dom-element.ts";
import { declaresNamespace, xmldom, type XmlElement } from "../xml.ts";
import { ConfigError, VmhookError } from "../errors.ts";
import { defineAction, type BaseContext, type Json, type PlanContext, type Plugin, type Step, type UndoRecord } from "../plugin.ts";
import { endLeftRunning, processInstance } from "../processes.ts";
import { pluginTimeLimitMs, settingToRaise } from "../settings.ts";
import type { PluginFile } from "./trust.ts";

export const PROTOCOL_VERSION = 1;

/** The plugin's metadata element, as XML and as a simple JSON form. */
export interface ElementJson {
  name: string;
  attributes: Record<string, string>;
  /** The element's own text, trimmed. */
  text: string;
  children: ElementJson[];
}

interface ExecutableConfig {
  element: ElementJson & { xml: string };
  domainXml: string;
}

/** The journal record of one run: `finished` once the plugin reported back. */
interface RunRecord extends UndoRecord {
  action: "run";
  event: string;
  finished: boolean;
  /** What the plugin returned as "undo": handed back to it at release. */
  undo: Json;
  /**
   * The plugin's process for this record (its run, then its undo) as
   * "PID:STARTTIME", journaled before it may act: a hook killed meanwhile
   * (kill -9, OOM) leaves it running, and it must be gone before the undo.
   * Absent until it starts, and once it has replied (typed Json: a record
   * has no optional fields); checkRunRecord takes a string or nothing.
   */
  process: Json;
}

/** Longest part of an undo value `vmhook status` prints. */
const SHOWN_UNDO_CHARS = 200;

/**
 * What an executable's journaled run holds, for `vmhook status`: the undo
 * value it replied (its own words for what it changed); undefined for
 * another record, or a run that has not replied.
 */
export function describeRunHolding(record: UndoRecord): string | undefined {
  if (record.action !== "run" || record.finished !== true || record.undo === null || record.undo === undefined) return undefined;
  const text = JSON.stringify(record.undo);
  return `holds ${text.length > SHOWN_UNDO_CHARS ? `${text.slice(0, SHOWN_UNDO_CHARS)}…` : text}`;
}

interface Reply {
  undo?: Json;
  error?: string;
}

function elementJson(element: XmlElement): ElementJson {
  const children: ElementJson[] = [];
  let text = "";
  for (let node = element.firstChild; node; node = node.nextSibling) {
    if (node.nodeType === 1) children.push(elementJson(node as XmlElement));
    else if (node.nodeType === 3 || node.nodeType === 4) text += node.nodeValue ?? "";
  }
  return { name: element.localName ?? element.tagName, attributes: attributes(element), text: text.trim(), children };
}

/** The variable that carries the attribute (by its local name, as in the JSON) to shell plugins. */
const attributeVariable = (localName: string) => `VMHOOK_ATTR_${localName.toUpperCase().replace(/[^A-Z0-9]/g, "_")}`;

/**
 * Refuses two attributes that would reach the plugin as one variable (units
 * and UNITS, a-b and a_b) or one JSON key (units and x:units): the plugin
 * would see only one of them, and might check one and act on the other.
 */
function refuseSharedVariables(element: XmlElement): void {
  const owners = new Map<string, string>();
  for (let i = 0; i < element.attributes.length; i++) {
    const attribute = element.attributes.item(i)!;
    if (declaresNamespace(attribute)) continue;
    const variable = attributeVariable(attribute.localName ?? attribute.name);
    const other = owners.get(variable);
    if (other !== undefined) throw new ConfigError(describeElement(element), `attributes ${other} and ${attribute.name} would both reach the plugin as ${variable}; rename one of them`);
    owners.set(variable, attribute.name);
  }
}

/** VMHOOK_UNDO's value. A string comes back verbatim, so a shell plugin can keep its state as words. */
const undoValue = (undo: Json): string => (typeof undo === "string" ? undo : JSON.stringify(undo));

/** The longest VMHOOK_UNDO value: the kernel refuses to start a program with a longer environment string (MAX_ARG_STRLEN, 128 KiB with "VMHOOK_UNDO=" and its NUL). */
const UNDO_VALUE_LIMIT = 128 * 1024 - "VMHOOK_UNDO=".length - 1;

/**
 * Refuses an undo that could never be handed back: its undo call would fail
 * to start at every release and recover (too long an environment string:
 * E2BIG; a NUL, which no environment string can hold). Refused before it is
 * journaled, the run stays unfinished and its undo is called as interrupted.
 */
function refuseUnreturnableUndo(undo: Json, file: PluginFile, event: string): void {
  if (undoValue(undo).includes("\0")) {
    // Only a string can hold one: anything else is passed as JSON, which escapes it.
    throw new VmhookError(`plugin ${file.name} returned an undo string holding a NUL character at ${event}, which VMHOOK_UNDO cannot carry: return it as a JSON array or object (it then comes back as JSON)`);
  }
  const bytes = Buffer.byteLength(undoValue(undo));
  if (bytes > UNDO_VALUE_LIMIT) {
    throw new VmhookError(`plugin ${file.name} returned an undo of ${bytes} bytes at ${event}; one that large cannot be handed back as VMHOOK_UNDO (at most ${UNDO_VALUE_LIMIT} bytes): return less, such as the path of a file that holds the state`);
  }
}

/** Environment for shell plugins: the same facts as the JSON, without a JSON parser. */
function environment(request: Record<string, Json>, config?: ExecutableConfig): Record<string, string> {
  const domain = request.domain as { name: string; uuid: string };
  const env: Record<string, string> = {
    VMHOOK_PROTOCOL: String(PROTOCOL_VERSION),
    VMHOOK_EVENT: String(request.event),
    VMHOOK_DOMAIN_NAME: domain.name,
    VMHOOK_DOMAIN_UUID: domain.uuid,
  };
  for (const [name, value] of Object.entries(config?.element.attributes ?? {})) env[attributeVariable(name)] = value;
  if (request.event === "undo") {
    if (request.undo !== null) env.VMHOOK_UNDO = undoValue(request.undo!);
    if (request.interrupted) env.VMHOOK_INTERRUPTED = "1";
  }
  return env;
}

/**
 * Runs the plugin once for `request.event` and reads its reply. Throws when
 * it did not finish cleanly. `started` journals its process before it runs.
 */
async function invoke(ctx: BaseContext, file: PluginFile, request: Record<string, Json>, started: (process: string) => void, config?: ExecutableConfig): Promise<Reply> {
  const event = String(request.event);
  const who = `plugin ${file.name} (${file.path})`;
  ctx.deadline.check(`starting ${who} for ${event}`);
  const limit = pluginTimeLimitMs(ctx.settings, `plugin:${file.name}`, ctx.deadline.remainingMs());
  const noteProcess = (pid: number) => {
    // Unknown only under a test root without /proc: a real host always has it.
    const instance = processInstance(ctx.host, pid);
    if (instance) started(instance);
  };
  const result = await ctx.host.execAsync(file.path, [event], { timeoutMs: limit, input: JSON.stringify(request), env: environment(request, config), started: noteProcess });
  const stderr = result.stderr.split("\n").filter((line) => line.trim() !== "");
  for (const line of stderr) ctx.log.info(`plugin:${file.name}: ${line}`);
  const lastWords = stderr.length > 0 ? `: ${stderr[stderr.length - 1]}` : " (nothing on stderr)";

  // ENOBUFS: the output went past the host's buffer and the plugin was killed.
  if (result.error?.includes("ENOBUFS")) throw new VmhookError(`${who} printed more than vmhook reads at ${event} and was killed; print only the JSON reply on stdout (logs go to stderr)`);
  if (result.timedOut) {
    const leftBehind = result.error ? ` (${result.error})` : "";
    throw new VmhookError(`${who} did not finish ${event} within ${(limit / 1000).toFixed(1)} s and was killed${leftBehind}; make it faster or raise ${settingToRaise(ctx.settings, `plugin:${file.name}`, limit, ctx.deadline.setting)}`);
  }
  if (result.error) throw new VmhookError(`${who} could not be started for ${event}: ${result.error}`);
  if (result.status !== 0) {
    throw new VmhookError(`${who} failed at ${event}: ${result.status === null ? `killed by ${result.signal}` : `exit status ${result.status}`}${lastWords}`);
  }
  return parseReply(result.stdout, who, event);
}

function parseReply(stdout: string, who: string, event: string): Reply {
  if (stdout.trim() === "") return {};
  let reply: unknown;
  try {
    reply = JSON.parse(stdout);
  } catch {
    throw new VmhookError(`${who} printed something that is not JSON at ${event}: ${JSON.stringify(stdout.trim().slice(0, 80))}; print {"undo": …}, {"error": "…"} or nothing (logs go to stderr)`);
  }
  if (typeof reply !== "object" || reply === null || Array.isArray(reply)) {
    throw new VmhookError(`${who} printed ${JSON.stringify(reply)} at ${event}; the reply must be a JSON object such as {"undo": …} or {"error": "…"}`);
  }
  const { undo, error } = reply as Reply;
  if (error !== undefined && typeof error !== "string") throw new VmhookError(`${who} printed an "error" that is not a string at ${event}`);
  return { undo, error };
}

function request(ctx: BaseContext, event: string, fields: Record<string, Json>): Record<string, Json> {
  return { protocol: PROTOCOL_VERSION, event, domain: ctx.domain, ...fields };
}

const EVENTS = ["prepare", "start", "started", "stopped", "reconnect"] as const;

function checkRunRecord(record: UndoRecord): RunRecord {
  const { event, finished, process } = record;
  const processOk = process === undefined || process === null || (typeof process === "string" && /^[1-9]\d*:\d+$/.test(process));
  if (record.action !== "run" || typeof event !== "string" || !(EVENTS as readonly string[]).includes(event) || typeof finished !== "boolean" || !("undo" in record) || !processOk) {
    throw new VmhookError(`the journal holds a run record of an executable plugin that is not one vmhook writes: ${JSON.stringify(record).slice(0, 120)}`);
  }
  return record as RunRecord;
}

/**
 * Kills the plugin's process the record names when it is still running (its
 * hook was killed, and it went on): its change would land after the undo,
 * for good. Throws, naming it, when it outlives SIGKILL (blocked in the kernel).
 */
function endLeftRunningPlugin(ctx: BaseContext, file: PluginFile, run: RunRecord): void {
  if (typeof run.process !== "string") return;
  const ended = endLeftRunning(
    ctx,
    run.process,
    (pid) => `plugin ${file.name}: its process pid ${pid} (${file.path}), left running by a vmhook that was killed, is still there after SIGKILL (blocked in the kernel); its undo waits: once pid ${pid} is gone, run vmhook recover ${ctx.domain.name}`,
  );
  if (ended) ctx.log.warn(`plugin ${file.name}: its process pid ${run.process.split(":")[0]}, left running by a vmhook that was killed, is killed (with what it started) before the undo`);
}

/**
 * The plugin runs once per hook event, as one journaled step: the record is
 * journaled unfinished *before* the plugin runs, so a plugin that crashes,
 * hangs or prints garbage still gets its undo call ("interrupted") at release.
 */
export function executablePlugin(file: PluginFile): Plugin<ExecutableConfig> {
  const planRun = (ctx: PlanContext<ExecutableConfig>): Step[] => [
    { action: "run", record: { action: "run", event: ctx.event, finished: false, undo: null }, description: `run ${file.path} ${ctx.event}` },
  ];
  return {
    name: `plugin:${file.name}`,
    summary: `executable plugin ${file.path}`,
    usage: `<vmhook:plugin name="${file.name}" …/>`,
    parse(elements) {
      // config.ts allows one element per custom plugin; checking its content is the plugin's job.
      refuseSharedVariables(elements[0]!);
      const element = domElement(elements[0]!);
      const { XMLSerializer } = xmldom();
      return {
        element: { xml: new XMLSerializer().serializeToString(element), ...elementJson(element) },
        domainXml: element.ownerDocument ? new XMLSerializer().serializeToString(element.ownerDocument) : "",
      };
    },
    plan: Object.fromEntries(EVENTS.map((event) => [event, planRun])),
    actions: {
      run: defineAction<RunRecord, ExecutableConfig>({
        check: checkRunRecord,
        async apply(pending, ctx) {
          const records = (ctx.records as RunRecord[]).filter((record) => record.finished && record.undo !== null).map((record) => record.undo);
          const journalProcess = (process: string) => ctx.update({ ...pending, process });
          const reply = await invoke(ctx, file, request(ctx, pending.event, { config: ctx.config.element as unknown as Json, records, domainXml: ctx.config.domainXml }), journalProcess, ctx.config);
          // It reported back: what it says it changed (also with an error) is what release undoes.
          if (reply.undo === undefined || reply.undo === null) ctx.nothingToUndo();
          else {
            refuseUnreturnableUndo(reply.undo, file, pending.event);
            ctx.update({ ...pending, finished: true, undo: reply.undo });
          }
          if (reply.error !== undefined) throw new VmhookError(`plugin ${file.name} failed at ${pending.event}: ${reply.error}`);
        },
        async undo(run, ctx) {
          endLeftRunningPlugin(ctx, file, run);
          if (run.finished && run.undo === null) return; // it said it changed nothing
          const journalProcess = (process: string) => ctx.update({ ...run, process });
          const reply = await invoke(ctx, file, request(ctx, "undo", { undo: run.undo, interrupted: !run.finished, of: run.event }), journalProcess);
          if (reply.error !== undefined) throw new VmhookError(`plugin ${file.name} could not undo its ${run.event}: ${reply.error}`);
        },
      }),
    },
  };
}
