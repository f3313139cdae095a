// Seeded mutations of valid inputs (domain XML, JSON files) for the fuzz
// tests, and the contract every refusal keeps. Deterministic: one round's
// input depends only on the seed and the round's number.
import { VmhookError } from "../../lib/errors.ts";

export interface Random {
  next(): number;
  int(below: number): number;
  pick<T>(items: readonly T[]): T;
}

/** mulberry32, one generator per (seed, round), so a failing round replays alone. */
export function seededRandom(seed: number, round: number): Random {
  let state = (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(round + 1, 0x85ebca6b)) >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (below: number) => Math.floor(next() * below);
  return { next, int, pick: (items) => items[int(items.length)]! };
}

/** Values users and attackers write: numbers in every notation, units, lists, addresses, names, paths, unicode, entities. */
const NASTY = [
  "", " ", "-1", "-0", "+1", "0x10", "0X1f", "010", "08", "1e3", "1E3", "1.5", ".5", "1.", "99999999999999999999", "9007199254740993", "4294967296",
  "NaN", "Infinity", "undefined", "null", "true", "[object Object]", "١٢", "２", "𝟙", "\u00a0", "\u200b1", "😀", "\u202e1", "&#9;", "&#10;", "&#13;", "&#x85;",
  "&#x2028;", "&amp;", "&lt;x&gt;", "&quot;", "../..", "/etc/passwd", "a/b", "..", ".", "-", "--", "-r", "--help", "0-8191", "0-99999", "^0", ",", ",,", "0,,1",
  "0-", "-0-1", "1-0", "0 - 1", "\t0\t", "yes", "no", "auto", "none", "YES", "on", "2M", "1G", "2m", "0M", "3M", "2MB", "2 M", "1T", "1E", "1Z", "2MiB", "1KB",
  "1b", "0000:01:00.0", "01:00.0", "1:0.0", "0000:01:00.8", "ffffffff:ff:1f.7", "100000000:00:00.0", "0000:01:00.0,", "0000:01:00.0 0000:01:00.1",
  "4b20d080-1b54-4048-85b3-a6a62d165c01", "4b20d0801b54404885b3a6a62d165c01", "i915-GVTg_V5_4", "L40S-12Q", "1433", "NVIDIA L40S-12Q", "gdm.service",
  "-gdm.service", "a@b.service", "vfio_pci", "vfio-pci", "2222:22", "65536", "0:22", "2222:22/sctp", "1-65535", "::1", "fe80::1%eth0", "192.168.122.256",
  "0.0.0.0", "eth0", "a".repeat(16), "$(reboot)", "`id`", "%s%n", "\\", "'", '"',
];

const STRAY_CHARACTERS = ["&#x1;", "&#9;", "\u00e9", "&#10;", ",", "-", "^", ":", ".", "0", "9", "f", "Z", " ", "&amp;"];

/** A value derived from a valid one: replaced, extended, cut, repeated (up to 100 000 characters), renumbered, or sprinkled with stray characters. */
export function mutateValue(random: Random, valid: string): string {
  switch (random.int(8)) {
    case 0:
      return random.pick(NASTY);
    case 1:
      return valid + random.pick(NASTY);
    case 2:
      return random.pick(NASTY) + valid;
    case 3:
      return valid.slice(0, random.int(valid.length + 1));
    case 4:
      return valid.toUpperCase();
    case 5:
      return valid.repeat(1 + random.int(3000)).slice(0, 1 + random.int(100_000));
    case 6:
      return valid.replace(/\d+/g, (digits) => random.pick([`${digits}${"0".repeat(1 + random.int(20))}`, `-${digits}`, `0x${digits}`, `0${digits}`, `${digits}e2`, `${digits}.0`, String(2 ** (10 + random.int(60)))]));
    default:
      return [...valid].map((character) => (random.next() < 0.2 ? random.pick(STRAY_CHARACTERS) : character)).join("");
  }
}

export interface Mutation {
  /** What was done: "attribute", "text", "truncate", … */
  kind: string;
  /** The text after it. */
  input: string;
  /** Where in the input it was done. */
  at: number;
}

const ATTRIBUTE = /([A-Za-z_:][-A-Za-z0-9_.:]*)=(['"])([^'"]*)\2/g;
const TEXT = />([^<>]+)</g;
const START_TAG = /<([A-Za-z][-A-Za-z0-9_:.]*)[^>]*?>/g;
const NESTED = ["<unknown/>", "<x:y xmlns:x='urn:x'/>", "<vmhook:hugepages xmlns:vmhook='urn:vmhook:1'/>", "<!-- c -->", "<?pi x?>", "<![CDATA[ ]]>", "<a><b><c><d/></c></b></a>"];

/** One mutation of an XML document: an attribute's or a text's value, a removed or doubled attribute, truncation, a nested unknown element, a doubled element. */
export function mutateXml(random: Random, xml: string): Mutation {
  const attributes = [...xml.matchAll(ATTRIBUTE)];
  const texts = [...xml.matchAll(TEXT)];
  const tags = [...xml.matchAll(START_TAG)];
  const openTags = tags.filter((tag) => !tag[0].endsWith("/>"));
  const replace = (match: RegExpMatchArray, by: string) => xml.slice(0, match.index!) + by + xml.slice(match.index! + match[0].length);
  const mutation = (kind: string, match: RegExpMatchArray, by: string): Mutation => ({ kind, input: replace(match, by), at: match.index! });
  // Each kind where the input has what it changes; a cut otherwise.
  const kinds = [
    ...(attributes.length > 0 ? ["attribute", "attribute", "attribute", "removed attribute", "doubled attribute"] : []),
    ...(texts.length > 0 ? ["text"] : []),
    ...(openTags.length > 0 ? ["nested element"] : []),
    ...(tags.length > 0 ? ["doubled element"] : []),
    "truncate",
  ];
  switch (random.pick(kinds)) {
    case "attribute": {
      const match = random.pick(attributes);
      const [, name, quote] = match;
      const value = mutateValue(random, match[3]!).replaceAll(quote!, quote === "'" ? "&apos;" : "&quot;").replace(/</g, "&lt;");
      return mutation("attribute", match, `${name}=${quote}${value}${quote}`);
    }
    case "text": {
      const match = random.pick(texts);
      const value = mutateValue(random, match[1]!);
      return mutation("text", match, `>${random.next() < 0.3 ? `<![CDATA[${value.replaceAll("]]>", "")}]]>` : value.replace(/</g, "&lt;")}<`);
    }
    case "removed attribute":
      return mutation("removed attribute", random.pick(attributes), "");
    case "doubled attribute": {
      const match = random.pick(attributes);
      return mutation("doubled attribute", match, `${match[0]} ${match[0]}`);
    }
    case "nested element": {
      const match = random.pick(openTags);
      return mutation("nested element", match, match[0] + random.pick(NESTED));
    }
    case "doubled element": {
      const match = random.pick(tags);
      return mutation("doubled element", match, match[0].endsWith("/>") ? match[0] + match[0] : match[0] + match[0].replace(/>$/, "/>"));
    }
    default: {
      const at = random.int(xml.length);
      return { kind: "truncate", input: xml.slice(0, at), at };
    }
  }
}

const JSON_VALUE = /: ("[^"]*"|-?[\d.eE+-]+|true|false|null|\[[^\][{}]*\])/g;
const JSON_KEY = /"([^"]+)":/g;
const JSON_NASTY = ["1e400", "-1e400", "-1", "0", "0.5", "1.5", "3601", "601", "9007199254740993", "1e3", '"120"', '""', "null", "true", "[]", "{}", "[1]", '[""]', '["-x"]', '["a b.service"]', `["${"a".repeat(300)}.service"]`, '{"a": 1}', '"\\u0000"', '"\\n"', '"\\u202e"', '{"__proto__": 1}', '{"constructor": {}}', "[[]]", `"${"x".repeat(5000)}"`];
const KEY_NASTY = ["__proto__", "constructor", "toString", "hasOwnProperty", "plugin:", "plugin:../x", "", " "];

/** One mutation of a JSON file: a value replaced, a key renamed, a key doubled, or the text cut. */
export function mutateJson(random: Random, json: string): Mutation {
  const values = [...json.matchAll(JSON_VALUE)];
  const keys = [...json.matchAll(JSON_KEY)];
  if (values.length === 0 || keys.length === 0) {
    const at = random.int(json.length);
    return { kind: "truncate", input: json.slice(0, at), at };
  }
  switch (random.int(5)) {
    case 0:
    case 1: {
      const match = random.pick(values);
      return { kind: "value", input: `${json.slice(0, match.index!)}: ${random.pick(JSON_NASTY)}${json.slice(match.index! + match[0].length)}`, at: match.index! };
    }
    case 2: {
      const match = random.pick(keys);
      const key = match[1]!;
      const renamed = random.pick([...KEY_NASTY, key.toUpperCase(), `${key}s`, key.slice(1), `plugin:${key}`]);
      return { kind: "key", input: `${json.slice(0, match.index!)}"${renamed}":${json.slice(match.index! + match[0].length)}`, at: match.index! };
    }
    case 3: {
      const match = random.pick(keys);
      return { kind: "doubled key", input: `${json.slice(0, match.index!)}"${match[1]}": 1, ${json.slice(match.index!)}`, at: match.index! };
    }
    default: {
      const at = random.int(json.length);
      return { kind: "truncate", input: json.slice(0, at), at };
    }
  }
}

/** Words that in a message mean a bug, not the user's value: unless the input itself holds them. */
const BUG_WORDS = ["undefined", "[object Object]", "NaN", "null"];

/**
 * The longest line a refusal may have: libvirt shows the first in its error,
 * so a value of any length is quoted by its start and length (lib/errors.ts quoted).
 */
const LINE_LIMIT = 1000;

/**
 * Why a refusal breaks the contract (vmhook's own error, a message that says
 * something, no stack, no line longer than LINE_LIMIT, no
 * undefined/[object Object]/NaN/null that the input did not hold), or
 * undefined when it keeps it.
 */
export function refusalProblem(error: unknown, input: string): string | undefined {
  if (!(error instanceof VmhookError)) return `not a vmhook error but ${error instanceof Error ? `${error.constructor.name}: ${error.message}` : String(error)}`;
  const text = [error.message, ...error.lines].join("\n");
  if (error.message.trim() === "") return "an empty message";
  if (/\n\s+at /.test(text)) return `a stack trace: ${text}`;
  const long = text.split("\n").find((line) => line.length > LINE_LIMIT);
  if (long) return `a line of ${long.length} characters: ${long.slice(0, 300)}…`;
  const word = BUG_WORDS.find((bug) => text.includes(bug) && !input.includes(bug));
  if (word) return `"${word}" in the message: ${text}`;
  return undefined;
}

/** An input for a failure message: whole up to 4000 characters, else its start and end. */
export const shownInput = (input: string) => (input.length <= 4000 ? input : `${input.slice(0, 2000)} … (${input.length} characters) … ${input.slice(-1500)}`);
