// examples/plugins/stop-units as root installs it: with ALLOWED_UNITS, the
// units domains may have it stop, filled in (as shipped it allows none).
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const EXAMPLE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../examples/plugins/stop-units");
const SHIPPED_LIST = /^ALLOWED_UNITS=""$/m;

/** The example's text with root's list: unit names or shell patterns, separated by spaces. */
export function stopUnitsAllowing(units: string): string {
  const script = fs.readFileSync(EXAMPLE, "utf8");
  if (!SHIPPED_LIST.test(script)) throw new Error(`${EXAMPLE} has no empty ALLOWED_UNITS="" line to fill in`);
  return script.replace(SHIPPED_LIST, `ALLOWED_UNITS="${units}"`);
}
