// Sizes and page counts stay exact: a JavaScript number is exact only up to
// 2^53 (Number.MAX_SAFE_INTEGER). Arithmetic on sizes from domain XML or the
// kernel goes through these, so an absurd value is an error that names it
// instead of a count that silently loses its last digits.
import { VmhookError } from "./errors.ts";

function checked(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new VmhookError(`${what} comes to ${value.toLocaleString("en-US")}, beyond what vmhook can count exactly (2^53); check the sizes it is made of`);
  }
  return value;
}

/** a + b, or an error naming `what` when the sum is no longer exact. */
export function boundedSum(a: number, b: number, what: string): number {
  return checked(a + b, what);
}

/** a × b, or an error naming `what` when the product is no longer exact. */
export function boundedProduct(a: number, b: number, what: string): number {
  return checked(a * b, what);
}
