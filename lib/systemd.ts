// Whether systemd is the running init: sd_booted(3)'s test, the directory
// systemd creates at boot. One place, so every plugin agrees.
import type { Host } from "./host.ts";

export const systemdRuns = (host: Host): boolean => host.exists("/run/systemd/system");
