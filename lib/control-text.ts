// Text from untrusted input made safe to show: its control characters
// escaped. Here, apart from the log, so that errors.ts quotes values with it
// without an import cycle.

/**
 * Control characters shown escaped ("\n", "\r", "\u009b"): one message is one
 * line, so a value from the domain XML (size="2M&#10;...", a domain name with
 * a carriage return, a C1 control such as NEL or CSI, a Unicode line
 * separator) cannot forge log lines, move a terminal's cursor or push the
 * cause off the first line of stderr; nor, with a bidirectional control
 * (RLO U+202E, an isolate, a mark), have the rest of the line drawn reordered.
 */
export const oneLine = (text: string): string => text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]|[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, escapeControl);

/** For the terminal (the CLI's output): line breaks and tabs stay, every other control is shown escaped, as oneLine does. */
export const terminalText = (text: string): string => text.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029]|[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, escapeControl);

const escapeControl = (char: string): string => (char < " " ? JSON.stringify(char).slice(1, -1) : `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`);
