// A unified diff between two texts, as `diff -u` prints it; empty when they are equal.
import { createTwoFilesPatch } from "diff";

export function unifiedDiff(before: string, after: string, beforeName: string, afterName: string): string {
  if (before === after) return "";
  const withNewline = (text: string) => (text === "" || text.endsWith("\n") ? text : `${text}\n`);
  // Drop the "=====" line the library puts first: `diff -u` and `git apply` start at "---".
  return createTwoFilesPatch(beforeName, afterName, withNewline(before), withNewline(after), undefined, undefined, { context: 3 }).replace(/^=+\n/, "");
}
