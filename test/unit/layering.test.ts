// Layering: no import cycle among hooks/, lib/ and plugins/. Every import
// counts, type-only and dynamic ones too: a cycle of types is still two
// files that cannot be understood (or changed) one without the other.
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";

const REPO = path.resolve(import.meta.dirname, "../..");
const LAYERS = ["hooks", "lib", "plugins"];
const IMPORT = /(?:import|export)\s[^;]*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g;

function sourceFiles(): string[] {
  return LAYERS.flatMap((layer) => fs.readdirSync(path.join(REPO, layer), { recursive: true }).map((file) => path.join(layer, String(file)))).filter(
    (file) => file.endsWith(".ts") && !file.endsWith(".d.ts"),
  );
}

/** File → the repository files it imports. */
export function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles()) {
    const text = fs.readFileSync(path.join(REPO, file), "utf8");
    const targets = [...text.matchAll(IMPORT)]
      .map((match) => match[1] ?? match[2]!)
      .filter((specifier) => specifier.startsWith("."))
      .map((specifier) => path.normalize(path.join(path.dirname(file), specifier)));
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

/** The first cycle found by a depth-first search, as the files along it; undefined when there is none. */
export function findCycle(graph: Map<string, string[]>): string[] | undefined {
  const state = new Map<string, "open" | "done">();
  const trail: string[] = [];
  const visit = (file: string): string[] | undefined => {
    if (state.get(file) === "done") return undefined;
    if (state.get(file) === "open") return [...trail.slice(trail.indexOf(file)), file];
    state.set(file, "open");
    trail.push(file);
    for (const next of graph.get(file) ?? []) {
      const cycle = visit(next);
      if (cycle) return cycle;
    }
    trail.pop();
    state.set(file, "done");
    return undefined;
  };
  for (const file of [...graph.keys()].sort()) {
    const cycle = visit(file);
    if (cycle) return cycle;
  }
  return undefined;
}

test("the cycle finder finds a cycle of three and none in a chain", () => {
  assert.equal(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", ["a"]]])), ["a", "b", "c", "a"]);
  assert.is(findCycle(new Map([["a", ["b"]], ["b", ["c"]], ["c", []]])), undefined);
});

test("the import graph sees static, type-only and dynamic imports", () => {
  const graph = importGraph();
  assert.ok(graph.get("hooks/qemu.ts")!.includes("lib/hook.ts"), "dynamic import");
  assert.ok(graph.get("lib/hook.ts")!.includes("lib/plugin.ts"), "type-only import");
});

test("no import cycle among hooks/, lib/ and plugins/", () => {
  const cycle = findCycle(importGraph());
  assert.is(cycle, undefined, `import cycle: ${cycle?.join(" → ")}`);
});

test.run();
