// The authorization pass: right after the metadata is parsed, each plugin's
// request is held against the host policy (lib/policy.ts). It only reads
// the host, so `vmhook validate`, `plan` and `prepare` refuse alike, before
// anything changes. A refusal names the element, the value, the policy key
// that would allow it and the file. The rules per plugin come with the
// plugin registry (plugins/policy-rules.ts): lib never imports plugins/.
import type { XmlElement } from "./xml.ts";
import { describeElement, type Domain } from "./domain.ts";
import { ConfigError } from "./errors.ts";
import type { Host } from "./host.ts";
import { allowHint, type HostPolicy } from "./policy.ts";
import type { HostSettings } from "./settings.ts";

/** What a rule gets besides the plugin's parsed config. */
export interface PolicyRequest {
  policy: HostPolicy;
  domain: Domain;
  host: Host;
  settings: HostSettings;
  /** The plugin's first element, as messages name it. */
  element: string;
}

/** Throws ConfigError when the config asks for more than the policy allows; reads the host only. */
export type PolicyRule = (config: any, request: PolicyRequest) => void | Promise<void>;

/** One parsed plugin element group, as lib/config.ts builds it. */
interface ParsedPlugin {
  id: string;
  config: unknown;
  elements: XmlElement[];
}

/** A custom plugin named by the metadata: allowed unless the policy lists the ones domains may name. Checked before its code is loaded. */
export function authorizeCustomPlugin(policy: HostPolicy, name: string, element: XmlElement): void {
  if (policy.plugins === undefined || policy.plugins.includes(name)) return;
  throw new ConfigError(describeElement(element), `the host policy does not let domains use plugin ${name}; ${allowHint(policy, `add "${name}" to "plugins"`)}`);
}

/**
 * Every parsed plugin's request against the policy, by its plugin's rule
 * (none: it asks for nothing the policy limits). Throws at the first refusal.
 * `settings` is the caller's snapshot of the host settings, read only when a rule applies.
 */
export async function authorizeInstances(policy: HostPolicy, parsed: ParsedPlugin[], rules: Readonly<Record<string, PolicyRule>>, domain: Domain, host: Host, settings: () => HostSettings): Promise<void> {
  const ruled = parsed.filter((instance) => Object.hasOwn(rules, instance.id));
  if (ruled.length === 0) return;
  const snapshot = settings();
  for (const instance of ruled) {
    await rules[instance.id]!(instance.config, { policy, domain, host, settings: snapshot, element: describeElement(instance.elements[0]!) });
  }
}
