// What the journal and the claims ledger keep: plain JSON.
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** What a step needs to be undone: plain JSON, kept in the journal and handed back to `undo`. */
export interface UndoRecord {
  /** The kind of change, e.g. "grow-pool"; the plugin's undo switches on it. */
  action: string;
  [key: string]: Json;
}
