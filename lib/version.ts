// vmhook's version, built into the binary from package.json: `vmhook --version` works from any directory.
import packageJson from "../package.json" with { type: "json" };

export const VERSION: string = packageJson.version;
