// xmldom, set up at its first use: its entity tables and grammar cost more
// than the rest of the hook's start under TCG (docs/bench.md), so release,
// and every event that parses no XML, never pay for them.
import type * as Xmldom from "@xmldom/xmldom";

export function xmldom(): typeof Xmldom {
  return require("@xmldom/xmldom") as typeof Xmldom;
}
