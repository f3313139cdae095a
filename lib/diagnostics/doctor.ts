// `vmhook doctor`: the checks passthrough users otherwise run by hand from
// blog posts. Host checks, then (given a domain XML) the checks of each
// plugin the domain uses and advice on the XML itself. Every finding is
// ok / warn / fail with a one-line reason and the fix. Reads sysfs, procfs,
// files and the XML through the Host only; never libvirt.
import type { Element, Node } from "@xmldom/xmldom";
import * as xpath from "xpath";
import { loadDomainPlugins, type PluginInstance } from "../config.ts";
import { registry } from "../../plugins/index.ts";
import { metadataChildren, parseDomain, parseXmlDocument, type Domain, type PciHostdev } from "../domain.ts";
import { describeError, VmhookError } from "../errors.ts";
import { recoverCommandLine } from "../metadata-text.ts";
import type { Host } from "../host.ts";
import { howToGetCgroupV2 } from "../host-advice.ts";
import { journalsAndClaims, type ClaimView } from "../claims.ts";
import { eitherBackend, kernelRelease, moduleState, VFIO_IOMMU_BACKENDS } from "../kernel-modules.ts";
import { adviceFor, describeStuckWrite, listStuckWrites } from "../stuck-writes.ts";
import { paths } from "../paths.ts";
import { refuseUntrustedStateDir } from "../state-files.ts";
import { freeBridge, pciExists, VIABLE_BESIDE_WORDS } from "../pci.ts";
import { formatKiB } from "../validate.ts";
import { hostNodes, hugepagePool, hugepageSizes, HUGEPAGE_DIR, meminfo } from "../memory.ts";
import { listInstalledPlugins } from "../custom-plugins.ts";
import { describePolicy, loadPolicy } from "../policy.ts";
import { loadSettings } from "../settings.ts";
import { isVmhookBinary, SAVED_HOOK } from "../cli/install.ts";
import { abandonedStart, BEING_STARTED, forceWhenShutOff } from "../cli/recover.ts";
import { runningOrWhyUnknown } from "../cli/running.ts";
import { libvirtNaming, namingArgument, namingText, twoDefinitionsText } from "../definitions.ts";
import { describeUnheldSharedView, unheldSharedNow } from "../cli/recover-unheld.ts";
import { isLegacyPlugin } from "../plugin.ts";
import { fail, failedWith, ok, roundMiB, UNREADABLE_FIX, warn, type Finding } from "./findings.ts";
import { describeBlockingBridge, readIommuGroups, type IommuReport } from "./iommu.ts";
import { qemuConfAge } from "./qemu-conf-age.ts";
import { nvidiaGpus } from "./domain-fixes.ts";
import { groupInUse, handedOverHere, readableVfioConfig, targetWords, vfioTargets, type VfioTarget } from "../../plugins/vfio/survey.ts";
import type { XmlElement } from "../xml.ts";
import type { SessionDaemon } from "../libvirt-client.ts";

export type { Finding, Status } from "./findings.ts";

export interface DoctorReport {
  host: Finding[];
  domain?: { name: string; file: string; findings: Finding[] };
}

/** Missing passthrough support is a warning in general and a failure when the domain passes a PCI device through. */
const lacking = (needed: boolean) => (needed ? fail : warn);

/** `session`: the domain was read from a session daemon, for whose domains vmhook cannot act. */
export async function runDoctor(host: Host, domainFile?: { file: string; xml: string; session?: SessionDaemon }): Promise<DoctorReport> {
  const iommu = readIommu(host);
  if (!domainFile) return { host: await hostChecks(host, iommu, false) };
  let domain: Domain;
  try {
    domain = parseDomain(domainFile.xml, domainFile.file);
  } catch (error) {
    return {
      host: await hostChecks(host, iommu, false),
      domain: { name: "?", file: domainFile.file, findings: [fail("domain XML", describeError(error), unreadableDomainFix(error))] },
    };
  }
  // PCI passthrough needs the IOMMU and VFIO; mdevs get IOMMU groups of their own.
  const passthrough = domain.hostdevs.some((hostdev) => hostdev.type === "pci");
  return {
    host: await hostChecks(host, iommu, passthrough),
    domain: { name: domain.name, file: domainFile.file, findings: await domainChecks(host, domain, domainFile.xml, iommu, domainFile.session) },
  };
}

/** The fix the error itself names (the doubled vmhook: prefix has an exact one), else where a readable XML comes from. */
function unreadableDomainFix(error: unknown): string {
  const named = error instanceof VmhookError ? error.lines.find((line) => line.startsWith("fix: ")) : undefined;
  return named ? named.slice("fix: ".length) : "pass the XML from virsh dumpxml VM";
}

// ---------------------------------------------------------------------------
// Host

/**
 * Each check on its own: one that cannot read what it needs (an unreadable
 * directory, an errno) fails with that error, and the others still run.
 */
async function guarded(check: string, run: () => Finding | Finding[] | Promise<Finding[]>): Promise<Finding[]> {
  try {
    return [await run()].flat();
  } catch (error) {
    return [failedWith(check, error, UNREADABLE_FIX)];
  }
}

/** The IOMMU groups, or why they could not be read (the checks that need them fail with it). */
function readIommu(host: Host): IommuReport | Error {
  try {
    return readIommuGroups(host);
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}

function iommuKnown(iommu: IommuReport | Error): IommuReport {
  if (iommu instanceof Error) throw iommu;
  return iommu;
}

async function hostChecks(host: Host, iommu: IommuReport | Error, passthrough: boolean): Promise<Finding[]> {
  const checks: [string, () => Finding | Finding[] | Promise<Finding[]>][] = [
    ["iommu", () => {
      const report = iommuKnown(iommu);
      return report.enabled ? ok("iommu", `enabled: ${report.groups.length} IOMMU groups (vmhook iommu lists them)`) : lacking(passthrough)("iommu", report.advice!.reason, report.advice!.fix);
    }],
    ["vfio modules", () => vfioModules(host, passthrough)],
    ["hugepages", () => hugepagePools(host)],
    ["cgroup v2 cpuset", () => cgroupCpuset(host)],
    ["libvirt hook", () => libvirtHook(host)],
    ["qemu.conf", () => qemuConfAge(host)],
    ["leftovers", () => leftovers(host)],
    ["stuck driver", () => stuckDrivers(host)],
    ["custom plugins", () => customPlugins(host)],
    ["host policy", () => hostPolicy(host)],
    ["host settings", () => hostSettings(host)],
  ];
  return (await Promise.all(checks.map(([check, run]) => guarded(check, run)))).flat();
}

/** The policy in force; one the hook refuses means every domain with vmhook metadata fails to start. */
function hostPolicy(host: Host): Finding {
  try {
    return ok("host policy", describePolicy(loadPolicy(host)));
  } catch (error) {
    return failedWith("host policy", error, `fix ${paths.policy} as the message says (docs/security.md); until then every VM with vmhook metadata is refused`);
  }
}

/** The host settings as the hook reads them; a file it refuses means every domain with vmhook metadata fails to start. */
function hostSettings(host: Host): Finding {
  if (!host.stat(paths.hostConfig)) return ok("host settings", `none (${paths.hostConfig}): the defaults`);
  try {
    loadSettings(host);
    return ok("host settings", `${paths.hostConfig}: root's alone, valid`);
  } catch (error) {
    return failedWith("host settings", error, `fix ${paths.hostConfig} as the message says (docs/security.md); until then every VM with vmhook metadata is refused`);
  }
}

const VFIO_MODULES = ["vfio", "vfio_pci"];
const BACKEND_WORDS = `a VFIO IOMMU backend (${VFIO_IOMMU_BACKENDS.join(" or ")})`;

/** The rule prepare applies (plugins/vfio/driver.ts): vfio and vfio_pci, and either IOMMU backend (iommuBackendState), each loaded or in the module tree (moduleState). */
function vfioModules(host: Host, needed: boolean): Finding {
  const release = kernelRelease(host);
  // Each looked up once: one not loaded is searched for in modules.dep (500 KB on a distribution kernel).
  const states = new Map(["vfio", ...VFIO_IOMMU_BACKENDS, "vfio_pci"].map((module) => [module, moduleState(host, module)]));
  const backend = eitherBackend(VFIO_IOMMU_BACKENDS.map((module) => states.get(module)!));
  const missing = [...VFIO_MODULES.filter((module) => states.get(module) === "missing"), ...(backend === "missing" ? [BACKEND_WORDS] : [])];
  if (missing.length > 0) {
    return lacking(needed)("vfio modules", `${missing.join(", ")} not found for kernel ${release || "?"} (neither loaded nor in /lib/modules/${release}/modules.dep or modules.builtin)`, "install the kernel's modules package (VFIO is in Debian's linux-image) or build the kernel with CONFIG_VFIO_PCI and CONFIG_VFIO_IOMMU_TYPE1 (or CONFIG_IOMMUFD)");
  }
  const loaded = [...states.keys()].filter((module) => states.get(module) === "loaded");
  const allLoaded = VFIO_MODULES.every((module) => states.get(module) === "loaded") && backend === "loaded";
  return ok("vfio modules", allLoaded ? `${loaded.slice(0, -1).join(", ")} and ${loaded.at(-1)} are loaded` : `available (loaded: ${loaded.join(", ") || "none yet"}; the rest load when a device is handed over)`);
}

function hugepagePools(host: Host): Finding[] {
  const sizes = hugepageSizes(host);
  if (sizes.length === 0) return [warn("hugepages", `no pools in ${HUGEPAGE_DIR}: the kernel has no huge page support`, "use a kernel with CONFIG_HUGETLBFS (Debian's has it)")];
  const pools = sizes.map((size) => {
    const count = (file: string) => Number(host.readTrimmed(`${hugepagePool(size, undefined)}/${file}`) ?? 0);
    return `${formatKiB(size)}: ${count("nr_hugepages")} reserved, ${count("free_hugepages")} free`;
  });
  const nodes = hostNodes(host);
  const free = nodes.length > 0 ? nodes.map((node) => `node ${node} ${formatKiB(roundMiB(meminfo(host, node).MemFree ?? 0))}`).join(", ") : formatKiB(roundMiB(meminfo(host).MemFree ?? 0));
  return [ok("hugepages", `pools ${pools.join("; ")}; free memory ${free}`)];
}


function cgroupCpuset(host: Host): Finding {
  const controllers = host.readTrimmed("/sys/fs/cgroup/cgroup.controllers");
  if (controllers === undefined) {
    return warn("cgroup v2 cpuset", "/sys/fs/cgroup is not cgroup v2 (no cgroup.controllers): CPU isolation cannot fence the host off", howToGetCgroupV2(host));
  }
  return controllers.split(/\s+/).includes("cpuset")
    ? ok("cgroup v2 cpuset", "cgroup v2 with the cpuset controller")
    : warn("cgroup v2 cpuset", "cgroup v2 without the cpuset controller: CPU isolation cannot fence the host off", "use a kernel with CONFIG_CPUSETS and a systemd that delegates cpuset (systemd 244+)");
}

function libvirtHook(host: Host): Finding {
  const hook = `${paths.libvirtHooksDir}/qemu`;
  if (!host.exists(paths.libvirtHooksDir)) {
    return warn("libvirt hook", `${paths.libvirtHooksDir} does not exist: libvirt is not installed here`, "apt install libvirt-daemon-system, then vmhook install");
  }
  const stat = host.stat(hook);
  if (!stat) return warn("libvirt hook", `${hook} does not exist: libvirt will not run vmhook`, "run vmhook install");
  let isVmhook: boolean;
  try {
    isVmhook = isVmhookBinary(host.resolve(hook));
  } catch (error) {
    return failedWith("libvirt hook", error, "until then vmhook install and uninstall refuse too");
  }
  if (!isVmhook) return warn("libvirt hook", `${hook} is another program, not vmhook`, "run vmhook install (it keeps the existing hook running from qemu.d/)");
  if ((stat.mode & 0o100) === 0) return fail("libvirt hook", `${hook} is vmhook but not executable: libvirt skips it`, `chmod 755 ${hook}`);
  return ok("libvirt hook", `vmhook is installed as ${hook}`);
}

async function leftovers(host: Host): Promise<Finding[]> {
  try {
    refuseUntrustedStateDir(host);
  } catch (error) {
    // What others could have written there is no journal of vmhook's: it is not listed.
    return [failedWith("leftovers", error, `do as the message says; until then every prepare of a VM with vmhook metadata, and vmhook recover, refuse ${paths.stateDir}`)];
  }
  const { journals, broken, claims, claimsError } = journalsAndClaims(host);
  const findings = [
    ...broken.map((item) => fail("leftovers", `unreadable journal ${item.file}: ${item.error}`, `inspect ${item.file}, undo what it lists by hand, then remove it`)),
    ...journals.flatMap((journal) => {
      // Named as libvirt names it now (renamed since it started; both names while two definitions carry its UUID), as vmhook status and recover do.
      const naming = libvirtNaming(host, journal.domain);
      const domain = { name: naming.name, uuid: journal.domain.uuid };
      // name: who it is in a reason; argument: what the commands in a fix are given.
      const name = namingText(naming);
      const argument = namingArgument(naming, domain.uuid);
      const twice = twoDefinitionsText(naming, domain.uuid);
      const reason = (text: string) => (twice ? `${text}; ${twice}` : text);
      const failed = journal.entries.filter((entry) => entry.state === "undo-failed");
      if (failed.length > 0) {
        return [fail("leftovers", reason(`${name}: ${failed.length} change(s) could not be undone (${failed[0]!.plugin}: ${failed[0]!.error})`), `fix the cause, then run ${recoverCommandLine(argument)}`)];
      }
      const running = runningOrWhyUnknown(host, domain);
      if (typeof running === "string") {
        return [fail("leftovers", reason(`${name}: cannot tell whether it runs (${running}); its journal in ${paths.stateDir} holds ${journal.entries.length} change(s)`), `fix what the message names; then vmhook status shows whether it runs, and ${recoverCommandLine(argument)} gives back what a stopped one holds`)];
      }
      const abandoned = running ? undefined : abandonedStart(host, journal);
      if (abandoned) {
        return [warn("leftovers", reason(`${name}: its start was abandoned (${abandoned}), yet its journal in ${paths.stateDir} holds ${journal.entries.length} change(s)`), `run ${recoverCommandLine(argument)}`)];
      }
      if (!running && journal.phase === "starting") {
        return [warn("leftovers", reason(`${name}: ${BEING_STARTED}; its journal in ${paths.stateDir} holds ${journal.entries.length} change(s)`), forceWhenShutOff(argument))];
      }
      if (!running) {
        return [warn("leftovers", reason(`${name} is not running but its journal in ${paths.stateDir} still holds ${journal.entries.length} change(s)`), `run ${recoverCommandLine(argument)}`)];
      }
      return [];
    }),
  ];
  findings.push(...claimLeftovers(claims, claimsError));
  for (const shared of await unheldSharedNow(host, registry)) {
    findings.push(
      shared.error
        ? fail("leftovers", describeUnheldSharedView(shared), "fix what the message names, then run vmhook doctor again; until then vmhook recover cannot give it back either")
        : warn("leftovers", describeUnheldSharedView(shared), "run vmhook recover: it gives back what no VM holds, as the last VM's release would have"),
    );
  }
  return findings.length > 0 ? findings : [ok("leftovers", `nothing left behind in ${paths.stateDir}`)];
}

/** The claims ledger: unreadable (every vfio prepare refuses), or a claim whose holder's journal is gone (no release gives it back). */
function claimLeftovers(claims: Record<string, ClaimView>, claimsError: string | undefined): Finding[] {
  if (claimsError) return [fail("leftovers", claimsError, `check what it claimed by hand (vmhook status lists the journals), then remove ${paths.claims}; until then vmhook refuses what needs it`)];
  return Object.entries(claims).flatMap(([resource, claim]) =>
    claim.holders
      .filter((holder) => holder.journal === false)
      .map((holder) => warn("leftovers", `claim ${resource} in ${paths.claims} is held by ${holder.uuid}, whose journal is gone: no release gives it back`, `run vmhook recover: once ${holder.uuid} does not run, it gives the claim back as that domain's release would have`)),
  );
}

/** Writes into a driver that did not return (lib/stuck-writes.ts): a helper blocked in the kernel, or a note to forget. */
function stuckDrivers(host: Host): Finding[] {
  return listStuckWrites(host).map((write) =>
    write.running ? fail("stuck driver", describeStuckWrite(write), adviceFor(host, write)) : warn("stuck driver", describeStuckWrite(write), "run vmhook recover: it forgets this note and finishes what the journal still holds"),
  );
}

async function customPlugins(host: Host): Promise<Finding[]> {
  // Only the ownership checks: doctor runs no plugin code.
  const { directoryProblem, plugins } = await listInstalledPlugins(host, { describe: false });
  if (directoryProblem) return [warn("custom plugins", directoryProblem, "fix it as the message says; until then no custom plugin runs")];
  const broken = plugins.filter((plugin) => plugin.problem);
  const [helpers, own] = [plugins.filter((plugin) => plugin.helperOf), plugins.filter((plugin) => !plugin.helperOf)];
  const helperNote = helpers.length > 0 ? ` (helper modules: ${helpers.map((plugin) => plugin.name).join(", ")})` : "";
  return broken.length > 0
    ? broken.map((plugin) => warn("custom plugins", `${plugin.name}: ${plugin.problem}`, "fix it as the message says, or remove the file"))
    : own.length > 0
      ? [ok("custom plugins", `${own.length} installed, all safe: ${own.map((plugin) => plugin.name).join(", ")}${helperNote}`)]
      : [];
}

// ---------------------------------------------------------------------------
// Domain

async function domainChecks(host: Host, domain: Domain, xml: string, iommu: IommuReport | Error, session: SessionDaemon | undefined): Promise<Finding[]> {
  // Whatever else holds, vmhook never acts for a session daemon's domain: a failure, first.
  const findings: Finding[] = session ? [fail("libvirt daemon", session.reason, session.fix)] : [];
  try {
    const instances: PluginInstance[] = await loadDomainPlugins(domain, host, registry);
    findings.push(ok("config", instances.length > 0 ? `vmhook metadata is valid: ${instances.map((instance) => instance.id).join(", ")}` : "no vmhook metadata: the hook leaves this VM alone"));
  } catch (error) {
    findings.push(failedWith("config", error, "fix the metadata as the message says; vmhook validate FILE checks it again"));
  }
  // The elements as written, so the checks run even when one element is invalid; none when there are more than
  // the hook reads (the config finding says so): checking thousands against each other would hang doctor.
  const elements = readableElements(domain);
  const used = new Set(elements.map((element) => element.localName!));
  // What a plugin needs of this host (a pool, nft, a free device) matters only for a domain vmhook acts for: none is proposed for a session daemon's.
  if (session) return [...findings, ...uncheckedForSession(used, session)];
  // Each built-in plugin checks what it will need (custom plugins are not run by doctor).
  for (const name of used) {
    if (!registry.builtinNames().includes(name)) continue;
    const plugin = await registry.load(name, host);
    if (isLegacyPlugin(plugin) || !plugin.check) continue;
    const check = plugin.check;
    findings.push(...(await guarded(name, () => check({ host, domain, elements: elements.filter((element) => element.localName === name) }))).map((finding) => ({ ...finding, plugin: name })));
  }
  // What vfio hands over (a GPU's slot with include-slot) goes to vfio-pci with the hostdevs; the problems of
  // those it hands over are its problems (plan marks its steps), libvirt's managed='yes' takes the others.
  // An invalid <vmhook:vfio> hands nothing over here: the config finding says why.
  const vfio = used.has("vfio") ? readableVfioConfig(elements.filter((element) => element.localName === "vfio"), domain) : undefined;
  findings.push(
    ...(await guarded("hostdevs", () => {
      const handedOver = new Set(vfio ? handedOverHere(host, vfio) : []);
      const targetOf = vfio ? vfioTargets(host, vfio) : () => undefined;
      return hostdevChecks(host, domain, iommuKnown(iommu), handedOver, targetOf, vfio?.devices ?? []).map(({ address, finding }) => (handedOver.has(address) ? { ...finding, plugin: "vfio" } : finding));
    })),
  );
  findings.push(...(await guarded("domain XML", () => xmlAdvice(host, domain, parseXmlDocument(xml, "domain XML"), used))));
  if (used.has("vfio")) findings.push(...(await guarded("hook scripts", () => guideScripts(host, domain.name))));
  return findings;
}

/** A session daemon's domain: the plugins' checks, the hostdevs' and the advice on the XML are not run, and a finding says so. */
function uncheckedForSession(used: Set<string>, session: SessionDaemon): Finding[] {
  const plugins = [...used].filter((name) => registry.builtinNames().includes(name));
  if (plugins.length === 0) return [];
  const named = plugins.length > 1 ? `${plugins.slice(0, -1).join(", ")} and ${plugins.at(-1)}` : plugins[0];
  return [warn("plugin checks", `not run: vmhook cannot act for this domain (libvirt daemon, above), so what ${named} would need of this host is not checked`, session.fix)];
}

function readableElements(domain: Domain): XmlElement[] {
  try {
    return domain.metadata ? metadataChildren(domain.metadata) : [];
  } catch {
    return [];
  }
}

/** The events a dispatcher of qemu.d/VM/OP/SUBOP (single-GPU guides' hook) runs scripts for. */
const DISPATCHED_EVENTS = ["prepare/begin", "start/begin", "started/begin", "stopped/end", "release/end"];

/**
 * A single-GPU guide's scripts for this VM (qemu.d/VM/prepare/begin/start.sh,
 * release/end/revert.sh), which the hook vmhook install kept still
 * dispatches: they hand the GPU over a second time, after vmhook.
 */
function guideScripts(host: Host, name: string): Finding[] {
  // A libvirt domain name has no "/"; "." and ".." would name other directories.
  if (name.includes("/") || name === "." || name === "..") return [];
  const dir = `${paths.libvirtHooksDir}/qemu.d/${name}`;
  const runnable = (file: string) => {
    const stat = host.stat(file);
    return stat !== undefined && (stat.isSymlink || (stat.isFile && (stat.mode & 0o111) !== 0));
  };
  // The dispatcher runs OP/SUBOP itself when it is a file, else each executable in it.
  const scripts = DISPATCHED_EVENTS.flatMap((event) => {
    const path = `${dir}/${event}`;
    return runnable(path) ? [path] : host.list(path).map((entry) => `${path}/${entry}`).filter(runnable);
  });
  const hook = `${paths.libvirtHooksDir}/qemu`;
  const dispatcher = host.exists(SAVED_HOOK) ? `${SAVED_HOOK} (the hook vmhook install kept)` : host.exists(hook) && !isVmhookBinary(host.resolve(hook)) ? hook : undefined;
  if (scripts.length === 0 || !dispatcher) return [];
  return [
    warn(
      "hook scripts",
      `${scripts.join(", ")} run at this VM's events too, through ${dispatcher}: after vmhook's prepare they stop, unbind and wait again, an error of theirs fails the start, and they act again after vmhook's release`,
      `remove ${dir}: vmhook hands this VM's GPU over`,
    ),
  ];
}

const short = (address: string) => address.replace(/^0000:/, "");
const slotOf = (address: string) => address.replace(/\.[0-7]$/, "");

/**
 * `handedOver`: what vfio moves to vfio-pci (with a GPU's other functions); a group member that is neither it nor a hostdev is judged as prepare judges it.
 * `targetOf`: the VFIO driver vfio moves one of those to (vfioTargets).
 * `vfioDevices`: vfio's devices= list, whose members without a <hostdev> prepare checks the groups of too.
 */
function hostdevChecks(host: Host, domain: Domain, iommu: IommuReport, handedOver: Set<string>, targetOf: TargetOf, vfioDevices: string[]): { address: string; finding: Finding }[] {
  const addresses = new Set(domain.hostdevs.flatMap((hostdev) => (hostdev.type === "pci" ? [hostdev.address] : [])));
  // The VM's own too, beside its hostdevs in a group: a NIC it gets as <interface type='hostdev'>.
  const own = new Set([...addresses, ...domain.hostdevInterfaces.map((nic) => nic.address)]);
  const vfioOnly = vfioDevices.filter((address) => !addresses.has(address));
  return [
    ...[...addresses].map((address) => ({ address, finding: hostdevCheck(host, iommu, address, own, handedOver, targetOf, domain, `hostdev ${address}`) })),
    ...vfioOnly.map((address) => ({ address, finding: hostdevCheck(host, iommu, address, own, handedOver, targetOf, domain, `vfio device ${address}`) })),
  ];
}

type TargetOf = (address: string, driver: string | undefined) => VfioTarget | undefined;

/** Where the device is, and for one vfio hands over, where prepare moves it: "on amdgpu now; prepare moves it to vfio-pci". */
function whereItGoes(address: string, driver: string | undefined, handedOver: Set<string>, targetOf: TargetOf): string {
  const now = driver ? `on ${driver} now` : "with no driver now";
  if (!handedOver.has(address)) return now;
  const target = targetOf(address, driver);
  if (target === undefined) return `${now}, a VFIO driver: prepare leaves it there`;
  const words = targetWords(target);
  return `${now}; prepare moves it to ${words.driver}${words.why ? ` (${words.why})` : ""}`;
}

function hostdevCheck(host: Host, iommu: IommuReport, address: string, addresses: Set<string>, handedOver: Set<string>, targetOf: TargetOf, domain: Domain, check: string): Finding {
  if (!pciExists(host, address)) return fail(check, `${address} is not on this host`, check.startsWith("hostdev") ? "fix the <hostdev><source><address> (lspci -D lists this host's devices)" : "fix devices= of <vmhook:vfio> (lspci -D lists this host's devices)");
  const group = iommu.groups.find((candidate) => candidate.devices.some((device) => device.address === address));
  if (!group) return fail(check, `${address} has no IOMMU group: ${iommu.advice?.reason ?? "the IOMMU does not cover it"}`, iommu.advice?.fix ?? "enable the IOMMU (vmhook iommu)");
  const self = group.devices.find((device) => device.address === address)!;
  const label = (device: (typeof group.devices)[number]) => `${short(device.address)} (${device.className ?? device.ids})`;
  const withDriver = (device: (typeof group.devices)[number]) => `${label(device)} ${device.driver ? `on ${device.driver}` : "with no driver"}`;
  const outside = group.devices.filter((device) => !addresses.has(device.address) && !handedOver.has(device.address));
  // What vfio hands over goes to vfio-pci with it (include-slot); every other member must be as prepare accepts it (viableBeside).
  const otherCards = outside.filter((device) => !device.bridge);
  const blockingCards = otherCards.filter((device) => !device.viableBeside);
  if (blockingCards.length > 0) {
    return fail(check, `IOMMU group ${group.id} also holds ${blockingCards.map(withDriver).join(", ")}, which vfio does not accept beside a device passed through; VFIO takes the whole group from the host`, "give the VM those devices too, or move the card to a slot with its own IOMMU group (vmhook iommu shows the groups)");
  }
  const blockingBridges = outside.filter((device) => device.bridge && !device.viableBeside);
  if (blockingBridges.length > 0) {
    return fail(check, `IOMMU group ${group.id} also holds ${blockingBridges.map(describeBlockingBridge).join(", ")}: the group is not viable`, blockingBridges.map((bridge) => freeBridge(bridge.address, bridge.driver!)).join("; "));
  }
  // Its own QEMU holds the group while the domain runs (vfio opens a group once): only another VM's counts, as at prepare.
  const passed = group.devices.filter((device) => addresses.has(device.address) || handedOver.has(device.address)).map((device) => device.address);
  const inUse = runningOrWhyUnknown(host, domain) === true ? undefined : groupInUse(host, group.id, passed);
  if (inUse) return fail(check, inUse.reason, inUse.fix);
  const sameCard = group.devices.filter((device) => !addresses.has(device.address) && handedOver.has(device.address) && slotOf(device.address) === slotOf(address));
  const warnings = [
    ...(otherCards.length > 0
      ? [{ reason: `IOMMU group ${group.id} also holds ${otherCards.map(withDriver).join(", ")}, which the VM does not get: vfio accepts it beside the device passed through as it is, but no host driver can take it while the VM runs`, fix: `nothing to do while it stays ${VIABLE_BESIDE_WORDS}; any other driver that takes it before the VM starts makes prepare refuse, and a group goes to one VM at a time` }]
      : []),
    ...(sameCard.length > 0
      ? [{ reason: `${sameCard.map(label).join(", ")} on the same card is not in the domain: the host loses it too, but the VM cannot use it`, fix: `add a <hostdev> for ${sameCard.map((device) => short(device.address)).join(", ")} as well` }]
      : []),
  ];
  if (warnings.length > 0) return warn(check, warnings.map((warning) => warning.reason).join("; "), warnings.map((warning) => warning.fix).join("; "));
  return ok(check, `${label(self)} is in IOMMU group ${group.id} with nothing the VM does not get; ${whereItGoes(address, self.driver, handedOver, targetOf)}`);
}


function xmlAdvice(host: Host, domain: Domain, document: Node, plugins: Set<string>): Finding[] {
  const select = (expression: string) => xpath.select(expression, document as never) as unknown as Element[];
  const findings: Finding[] = [];
  if (plugins.has("hugepages") && !domain.hugepages) {
    findings.push(warn("memoryBacking", "the hugepages plugin reserves pages, but without <memoryBacking><hugepages/> the VM does not use them", "add <memoryBacking><hugepages/></memoryBacking> to the domain (virsh edit)"));
  }
  const pci = domain.hostdevs.filter((hostdev): hostdev is PciHostdev => hostdev.type === "pci");
  if (pci.length > 0 && domain.currentMemoryKiB < domain.memoryKiB) {
    findings.push(warn("currentMemory", `<currentMemory> (${formatKiB(domain.currentMemoryKiB)}) is below <memory> (${formatKiB(domain.memoryKiB)}) with a VFIO device: VFIO pins all guest memory, so ballooning cannot work`, "set <currentMemory> equal to <memory> (and <memballoon model='none'/>)"));
  }
  const nvidia = nvidiaGpus(host, pci);
  if (nvidia.length > 0) {
    const missing = [
      select("/domain/features/kvm/hidden[@state='on']").length === 0 ? "<kvm><hidden state='on'/>" : undefined,
      select("/domain/features/hyperv/vendor_id[@state='on'][@value]").length === 0 ? "a <hyperv><vendor_id>" : undefined,
    ].filter(Boolean);
    const gpus = nvidia.map(short).join(", ");
    findings.push(
      missing.length > 0
        ? warn("nvidia", `NVIDIA GPU ${gpus} without ${missing.join(" and ")}: drivers older than 465 stop with Error 43 when they see a hypervisor`, "add <features><kvm><hidden state='on'/></kvm><hyperv><vendor_id state='on' value='0123456789ab'/></hyperv></features>")
        : ok("nvidia", `NVIDIA GPU ${gpus}: KVM hidden and a Hyper-V vendor_id set`),
    );
  }
  findings.push(...virtioAdvice(select));
  return findings;
}

function virtioAdvice(select: (expression: string) => Element[]): Finding[] {
  const virtioScsi = select("/domain/devices/controller[@type='scsi'][@model='virtio-scsi']").length > 0;
  const disks = select("/domain/devices/disk[not(@device) or @device='disk']").map((disk) => ({
    name: xpath.select1("string(target/@dev)", disk as never) as string,
    bus: xpath.select1("string(target/@bus)", disk as never) as string,
  }));
  const slowDisks = disks.filter((disk) => disk.bus !== "virtio" && !(disk.bus === "scsi" && virtioScsi));
  const nics = select("/domain/devices/interface[not(@type='hostdev')]").map((nic) => ({
    mac: xpath.select1("string(mac/@address)", nic as never) as string,
    model: (xpath.select1("string(model/@type)", nic as never) as string) || "default",
  }));
  const slowNics = nics.filter((nic) => nic.model !== "virtio");
  const findings: Finding[] = [];
  if (slowDisks.length > 0) {
    findings.push(warn("disks", `${slowDisks.map((disk) => `${disk.name || "disk"} on ${disk.bus || "the default bus"}`).join(", ")}: emulated controllers are much slower than virtio`, "use <target bus='virtio'/> (or a virtio-scsi controller); Windows guests need the virtio-win drivers first"));
  } else if (disks.length > 0) findings.push(ok("disks", "all disks on virtio"));
  if (slowNics.length > 0) {
    findings.push(warn("nics", `${slowNics.map((nic) => `${nic.mac || "interface"} model ${nic.model}`).join(", ")}: an emulated NIC is much slower than virtio`, "use <model type='virtio'/>; Windows guests need the virtio-win drivers first"));
  } else if (nics.length > 0) findings.push(ok("nics", "all network interfaces on virtio"));
  return findings;
}
