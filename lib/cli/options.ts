// Options every command takes (--root, --json).
export interface GlobalOptions {
  root: string;
  json: boolean;
}
