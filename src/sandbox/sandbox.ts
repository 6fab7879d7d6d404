// The sandbox: a simulated Kubernetes node built from this machine's kernel.
//
// Topology (every veth is created directly between two namespaces the sandbox
// owns; nothing is ever created in, or routed to, the root network namespace):
//
//     pod netns  weir-<id>-<ns>.<pod>   eth0 ─┐
//     host netns weir-<id>-<host>       eth0 ─┤ veth (node side wp…/wh…, MAC ee:ee:ee:ee:ee:ee,
//                                              │       169.254.1.1/32 + fe80::1 on each)
//                             node netns weir-<id>-node
//                             ip_forward on, one /32 + /128 route per endpoint,
//                             no default route: anything else is unreachable
//
// Cgroups (cgroup v2 mount found in /proc/self/mounts):
//     <mount>/weir-sb-<id>/              cgroupRoot (the agent's --cgroup-root)
//         kubepods[.slice]/…             podsCgroupRoot, kubelet layout (cgroup.ts)
//     <mount>/weir-sb-<id>-hosts/<host>  processes of service/internet hosts; a
//                                        sibling tree, so that "remote" machines
//                                        are never under the agent's root
//
// Lifecycle (lifecycle.ts): a state file /run/weir-sandbox/<id>.json (owner
// pid and start time, manifests written) is written before anything is
// created and removed last. Teardown is name-based and synchronous (kill
// everything in the cgroups and netns, delete netns, rmdir cgroups
// bottom-up, remove files), so the same code serves destroy(), the exit and
// signal hooks, the reaper process (reaper.ts: the owner was SIGKILLed),
// cleanupLeftovers() (leftovers found by name prefix) and sandboxDown(id).
//
// DNS: the test DNS server (dns-server.ts) is one more host. Processes are
// started with `ip netns exec`, which bind-mounts /etc/netns/<netns>/resolv.conf
// over /etc/resolv.conf: setResolvConf() writes that file for a pod, so its
// programs' libc resolver asks the sandbox's server (removed by teardown).

import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { isIP, Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Namespace, Protocol, QosClass } from '../model/types.js';
import { checkHostPrefix, GATEWAY_MAC, GATEWAY_V4, GATEWAY_V6, FIRST_POD_INDEX, LAST_POD_INDEX, podIPv4, podIPv6 } from './addressing.js';
import {
  containerCgroupName,
  ensureCgroup,
  findCgroup2Mount,
  killCgroupTree,
  podCgroupRelPath,
  podsRootName,
  qosCgroupDirs,
  removeCgroupTree,
  type CgroupDriver,
} from './cgroup.js';
import { namespaceManifest, podManifest, removeFile, toYaml, writeFileAtomic, type PodManifest } from './manifests.js';
import { checkHostSpec, checkPodSpec, checkSpec, ID_PATTERN, type HostPorts, type HostSpec, type PodSpec, type SandboxSpec } from './spec.js';
import {
  cgroupNames,
  NAME_PREFIX,
  NETNS_ETC_DIR,
  NODE_NETNS_SUFFIX,
  ownerAlive,
  readState,
  silentLogger,
  STATE_DIR,
  teardown,
  writeState,
  type SandboxLogger,
} from './lifecycle.js';
import { deleteNetnsSync, ipBatch, killPid, listNetns, netnsPids, processStartTime, run } from './system.js';

export type { CgroupDriver } from './cgroup.js';
export { NAME_PREFIX, STATE_DIR, type SandboxLogger } from './lifecycle.js';
export type { HostPorts, HostSpec, NamespaceSpec, PodPortSpec, PodSpec, SandboxSpec } from './spec.js';

export interface SandboxOptions {
  logger?: SandboxLogger;
  /** Tear the sandbox down on SIGINT/SIGTERM/SIGHUP (then re-raise if nobody else listens). Default true. */
  handleSignals?: boolean;
  /**
   * Start a reaper process that tears the sandbox down if this process dies
   * without doing so (SIGKILL, a test runner's watchdog). Default true.
   */
  reaper?: boolean;
}

export interface SandboxPod {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly qosClass: QosClass;
  readonly ports: readonly { name?: string; port: number; protocol: Protocol }[];
  readonly ip: string;
  readonly ip6: string;
  readonly netns: string;
  /** Node-side veth name (in the node netns). */
  readonly veth: string;
  /** The pod-level cgroup (kubelet layout), absolute path. */
  readonly cgroupDir: string;
  /** Container ID (64 hex) of a container of this pod, assigned on first use. */
  containerId(name?: string): string;
  /** The container's cgroup, created on demand: containers may start after the pod. */
  containerCgroup(name?: string): string;
}

export interface SandboxHost {
  readonly name: string;
  readonly kind: 'service' | 'internet';
  readonly ip: string;
  readonly ip6: string;
  readonly netns: string;
  readonly veth: string;
  readonly ports: HostPorts;
}

export interface SpawnInOptions {
  /** Container of the pod whose cgroup the process joins; default "main". */
  container?: string;
  stdio?: StdioOptions;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface CleanupOptions {
  /** Also tear down sandboxes whose owning process is still alive. Default false. */
  includeLive?: boolean;
  logger?: SandboxLogger;
}

const CONTAINER_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

// The child shell joins the container cgroup *before* exec'ing the program,
// so every socket the program opens is created inside the cgroup (cgroup BPF
// programs judge sockets by the cgroup they were created in). `ip netns exec`
// then execs in place (no fork), so the ChildProcess pid is the program's pid.
const JOIN_AND_EXEC = 'echo $$ > "$1/cgroup.procs" || exit 125; ns=$2; shift 2; exec ip netns exec "$ns" "$@"';

// accept_dad=0 before any interface exists: static addresses carry nodad,
// and the link-local ones would otherwise stay tentative for a second.
// ping_group_range opens ICMP datagram ("ping") sockets to every group, as
// containerd does for pod sandboxes; the probe's ICMP mode uses them.
const ENDPOINT_SYSCTLS = [
  'echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad',
  'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad',
  "echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range",
].join(' && ');
const NODE_SYSCTLS = [
  ENDPOINT_SYSCTLS,
  'echo 1 > /proc/sys/net/ipv4/ip_forward',
  'echo 1 > /proc/sys/net/ipv6/conf/all/forwarding',
].join(' && ');

// Process-wide on purpose: exit and signal hooks are process-wide too. Every
// live sandbox of this process is torn down when the process ends.
const live = new Map<Sandbox, boolean>();
let exitHooked = false;
let signalsHooked = false;
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function destroyAllSync(): void {
  for (const sb of [...live.keys()]) {
    try {
      sb.destroySync();
    } catch (e) {
      process.stderr.write(`weir sandbox: teardown of ${sb.id} failed: ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  // Counted first: tearing down the last sandbox unhooks this listener.
  const othersListen = process.listenerCount(signal) > 1;
  destroyAllSync();
  // Someone else (the CLI, a test runner) handles this signal: let them decide
  // how to exit. Otherwise behave as if we had never listened.
  if (!othersListen) {
    updateHooks(true);
    process.kill(process.pid, signal);
  }
}

function updateHooks(forceOff = false): void {
  const wantExit = !forceOff && live.size > 0;
  const wantSignals = !forceOff && [...live.values()].some(Boolean);
  if (wantExit !== exitHooked) {
    if (wantExit) process.on('exit', destroyAllSync);
    else process.off('exit', destroyAllSync);
    exitHooked = wantExit;
  }
  if (wantSignals !== signalsHooked) {
    for (const s of SIGNALS) {
      if (wantSignals) process.on(s, onSignal);
      else process.off(s, onSignal);
    }
    signalsHooked = wantSignals;
  }
}

function shortHash(text: string): string {
  return createHash('sha1').update(text).digest('hex').slice(0, 10);
}

interface PodInit {
  namespace: string;
  name: string;
  uid: string;
  labels: Record<string, string>;
  qosClass: QosClass;
  ports: { name?: string; port: number; protocol: Protocol }[];
  index: number;
  netns: string;
  veth: string;
  cgroupDir: string;
  driver: CgroupDriver;
}

class PodHandle implements SandboxPod {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly qosClass: QosClass;
  readonly ports: readonly { name?: string; port: number; protocol: Protocol }[];
  readonly index: number;
  readonly ip: string;
  readonly ip6: string;
  readonly netns: string;
  readonly veth: string;
  readonly cgroupDir: string;
  private readonly driver: CgroupDriver;
  private readonly containerIds = new Map<string, string>();

  constructor(init: PodInit) {
    this.namespace = init.namespace;
    this.name = init.name;
    this.uid = init.uid;
    this.labels = init.labels;
    this.qosClass = init.qosClass;
    this.ports = init.ports;
    this.index = init.index;
    this.ip = podIPv4(init.index);
    this.ip6 = podIPv6(init.index);
    this.netns = init.netns;
    this.veth = init.veth;
    this.cgroupDir = init.cgroupDir;
    this.driver = init.driver;
  }

  containerId(name = 'main'): string {
    if (!CONTAINER_NAME.test(name)) throw new TypeError(`container name ${JSON.stringify(name)} is not a DNS label`);
    let id = this.containerIds.get(name);
    if (id === undefined) {
      id = randomBytes(32).toString('hex');
      this.containerIds.set(name, id);
    }
    return id;
  }

  containerCgroup(name = 'main'): string {
    if (!existsSync(this.cgroupDir)) throw new Error(`pod ${this.namespace}/${this.name} is gone (${this.cgroupDir})`);
    const dir = join(this.cgroupDir, containerCgroupName(this.driver, this.containerId(name)));
    try {
      mkdirSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    return dir;
  }
}

export class Sandbox {
  readonly id: string;
  readonly prefix: string;
  readonly nodeName: string;
  readonly cgroupDriver: CgroupDriver;
  readonly cgroupMount: string;
  /** Pass to the agent as --cgroup-root. */
  readonly cgroupRoot: string;
  /** The kubepods (cgroupfs) or kubepods.slice (systemd) directory. */
  readonly podsCgroupRoot: string;
  /** Parent of the hosts' cgroups (outside cgroupRoot). */
  readonly hostsCgroupRoot: string;
  readonly nodeNetns: string;
  private readonly log: SandboxLogger;
  private readonly ownerStartTime: string;
  private readonly namespaceMap = new Map<string, { labels: Record<string, string>; uid: string }>();
  private readonly podMap = new Map<string, PodHandle>();
  private readonly hostMap = new Map<string, SandboxHost>();
  private readonly pendingPods = new Map<string, number>();
  private readonly pendingHosts = new Set<string>();
  private readonly children = new Set<ChildProcess>();
  private readonly manifestFiles = new Set<string>();
  private manifestsDir: string | undefined;
  private reaper: ChildProcess | undefined;
  private destroyed = false;

  private constructor(id: string, spec: SandboxSpec, cgroupMount: string, log: SandboxLogger) {
    this.id = id;
    this.prefix = NAME_PREFIX;
    this.nodeName = spec.nodeName ?? `weir-sandbox-${id}`;
    this.cgroupDriver = spec.cgroupDriver ?? 'cgroupfs';
    this.cgroupMount = cgroupMount;
    const names = cgroupNames(this.prefix, id);
    this.cgroupRoot = join(cgroupMount, names.root);
    this.podsCgroupRoot = join(this.cgroupRoot, podsRootName(this.cgroupDriver));
    this.hostsCgroupRoot = join(cgroupMount, names.hosts);
    this.nodeNetns = this.netnsName(NODE_NETNS_SUFFIX);
    this.log = log;
    this.ownerStartTime = processStartTime(process.pid) ?? '';
  }

  /** Builds the whole node. On failure everything already built is removed. */
  static async create(spec: SandboxSpec, opts: SandboxOptions = {}): Promise<Sandbox> {
    checkSpec(spec);
    const log = opts.logger ?? silentLogger;
    const id = spec.id ?? randomId();
    const mount = findCgroup2Mount();
    const previous = readState(id);
    if (previous !== undefined && ownerAlive(previous)) {
      throw new Error(`sandbox ${id} is in use by pid ${previous.ownerPid}; pick another id or run sandboxDown('${id}')`);
    }
    // Same id as a crashed run: clear its leftovers first.
    if (teardown(id, NAME_PREFIX, mount, log)) log.warn({ sandbox: id }, 'removed leftovers of an earlier run');

    const sb = new Sandbox(id, spec, mount, log);
    live.set(sb, opts.handleSignals ?? true);
    updateHooks();
    try {
      sb.writeState();
      if (opts.reaper ?? true) sb.startReaper();
      await sb.build(spec);
    } catch (e) {
      try {
        // Destroyed mid-build (a signal): tear down again what the step in flight created.
        if (sb.destroyed) teardown(id, NAME_PREFIX, mount, log);
        else sb.destroySync();
      } catch (cleanupError) {
        log.warn({ sandbox: id, err: String(cleanupError) }, 'cleanup after failed create');
      }
      throw e;
    }
    log.info(
      { sandbox: id, pods: sb.podMap.size, hosts: sb.hostMap.size, cgroupRoot: sb.cgroupRoot, driver: sb.cgroupDriver },
      'sandbox ready',
    );
    return sb;
  }

  /**
   * Tears down leftovers of earlier runs (found by name prefix: netns
   * <prefix><id>-*, cgroups <prefix>sb-<id>[-hosts], state files). Sandboxes
   * whose owning process is still alive are left alone unless includeLive.
   * Returns the ids removed.
   */
  static async cleanupLeftovers(prefix: string = NAME_PREFIX, opts: CleanupOptions = {}): Promise<string[]> {
    const log = opts.logger ?? silentLogger;
    const mount = findCgroup2Mount();
    const p = escapeRegExp(prefix);
    const ids = new Set<string>();
    const cgRe = new RegExp(`^${p}sb-([a-z0-9]{1,10})(?:-hosts)?$`);
    const nsRe = new RegExp(`^${p}([a-z0-9]{1,10})-${NODE_NETNS_SUFFIX}$`);
    for (const e of safeReaddir(mount)) {
      const m = cgRe.exec(e);
      if (m?.[1]) ids.add(m[1]);
    }
    for (const n of listNetns()) {
      const m = nsRe.exec(n);
      if (m?.[1]) ids.add(m[1]);
    }
    for (const f of safeReaddir(STATE_DIR)) {
      const id = f.replace(/\.json$/, '');
      const s = readState(id);
      if (s?.prefix === prefix) ids.add(id);
    }
    const removed: string[] = [];
    for (const id of ids) {
      if (!ID_PATTERN.test(id)) continue;
      const mine = [...live.keys()].find((sb) => sb.id === id);
      const state = readState(id);
      if (!opts.includeLive && (mine !== undefined || (state !== undefined && ownerAlive(state)))) {
        log.debug({ sandbox: id, owner: state?.ownerPid }, 'sandbox still owned by a live process; left alone');
        continue;
      }
      if (mine !== undefined) mine.destroySync();
      else teardown(id, prefix, state?.cgroupMount ?? mount, log);
      removed.push(id);
    }
    return removed;
  }

  // ---- queries -------------------------------------------------------------

  pod(namespace: string, name: string): SandboxPod {
    const p = this.podMap.get(`${namespace}/${name}`);
    if (p === undefined) throw new Error(`sandbox ${this.id}: no pod ${namespace}/${name}`);
    return p;
  }

  host(name: string): SandboxHost {
    const h = this.hostMap.get(name);
    if (h === undefined) throw new Error(`sandbox ${this.id}: no host ${name}`);
    return h;
  }

  listPods(): SandboxPod[] {
    return [...this.podMap.values()];
  }

  listHosts(): SandboxHost[] {
    return [...this.hostMap.values()];
  }

  listNamespaces(): { name: string; labels: Record<string, string> }[] {
    return [...this.namespaceMap].map(([name, v]) => ({ name, labels: { ...v.labels } }));
  }

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /**
   * An address for a target: an IP literal as is, a host name, or a pod as
   * "namespace/name".
   */
  address(target: string, family: 4 | 6 = 4): string {
    if (isIP(target) !== 0) return target;
    if (target.includes('/')) {
      const [ns = '', name = ''] = target.split('/');
      const p = this.pod(ns, name);
      return family === 6 ? p.ip6 : p.ip;
    }
    const h = this.host(target);
    return family === 6 ? h.ip6 : h.ip;
  }

  netnsName(suffix: string): string {
    return `${this.prefix}${this.id}-${suffix}`;
  }

  // ---- building ------------------------------------------------------------

  private async build(spec: SandboxSpec): Promise<void> {
    ensureCgroup(this.podsCgroupRoot);
    for (const d of qosCgroupDirs(this.cgroupDriver)) ensureCgroup(join(this.cgroupRoot, d));
    ensureCgroup(this.hostsCgroupRoot);
    await this.cmd(['netns', 'add', this.nodeNetns]);
    await this.cmd(['netns', 'exec', this.nodeNetns, 'sh', '-c', NODE_SYSCTLS]);
    await this.batch(this.nodeNetns, ['link set lo up']);
    for (const ns of spec.namespaces) {
      this.namespaceMap.set(ns.name, { labels: { ...(ns.labels ?? {}) }, uid: randomUUID() });
    }
    for (const h of spec.hosts) await this.addHost(h);
    for (const p of spec.pods) await this.addPod(p);
  }

  /**
   * One endpoint (pod or host): its netns, a veth whose node end is created in
   * the node netns and whose other end is created directly in the endpoint's
   * netns as eth0, addresses, and routes both ways.
   */
  private async plumb(netns: string, veth: string, ip4: string, ip6: string): Promise<void> {
    await this.cmd(['netns', 'add', netns]);
    await this.cmd(['netns', 'exec', netns, 'sh', '-c', ENDPOINT_SYSCTLS]);
    await this.batch(this.nodeNetns, [
      `link add ${veth} address ${GATEWAY_MAC} type veth peer name eth0 netns ${netns}`,
      `link set ${veth} up`,
    ]);
    await this.batch(netns, [
      'link set lo up',
      'link set eth0 up',
      `addr add ${ip4}/32 dev eth0`,
      `addr add ${ip6}/128 dev eth0 nodad`,
      `route add ${GATEWAY_V4}/32 dev eth0 scope link`,
      `route add default via ${GATEWAY_V4} dev eth0`,
      `route add ::/0 via ${GATEWAY_V6} dev eth0`,
    ]);
    await this.batch(this.nodeNetns, [
      `addr add ${GATEWAY_V4}/32 dev ${veth}`,
      `addr add ${GATEWAY_V6}/64 dev ${veth} nodad`,
      `route add ${ip4}/32 dev ${veth}`,
      `route add ${ip6}/128 dev ${veth}`,
    ]);
  }

  // Every build step first checks that the sandbox still stands: a signal
  // may tear it down while a step is in flight, and nothing may be created
  // after that (create() then runs the teardown once more).
  private async cmd(args: readonly string[]): Promise<void> {
    this.assertUsable();
    await run('ip', args);
  }

  private async batch(netns: string, lines: readonly string[]): Promise<void> {
    this.assertUsable();
    await ipBatch(netns, lines);
  }

  private unplumb(netns: string, cgroupDir: string | undefined): void {
    if (cgroupDir !== undefined) killCgroupTree(cgroupDir);
    for (const pid of netnsPids([netns])) killPid(pid);
    if (listNetns().includes(netns)) deleteNetnsSync(netns);
    if (cgroupDir !== undefined) removeCgroupTree(cgroupDir);
  }

  async addHost(spec: HostSpec): Promise<SandboxHost> {
    this.assertUsable();
    const { ipv4, ipv6 } = checkHostSpec(spec);
    if (this.hostMap.has(spec.name) || this.pendingHosts.has(spec.name)) throw new Error(`host ${spec.name} exists`);
    for (const h of this.hostMap.values()) {
      if (h.ip === ipv4 || h.ip6 === ipv6) throw new Error(`host ${spec.name}: address taken by ${h.name}`);
    }
    const host: SandboxHost = {
      name: spec.name,
      kind: spec.kind,
      ip: ipv4,
      ip6: ipv6,
      netns: this.netnsName(spec.name),
      veth: `wh${shortHash(spec.name)}`,
      ports: { tcp: [...(spec.ports?.tcp ?? [])], udp: [...(spec.ports?.udp ?? [])] },
    };
    this.pendingHosts.add(host.name);
    try {
      await this.plumb(host.netns, host.veth, host.ip, host.ip6);
    } catch (e) {
      this.unplumb(host.netns, undefined);
      throw e;
    } finally {
      this.pendingHosts.delete(host.name);
    }
    this.hostMap.set(host.name, host);
    this.log.debug({ sandbox: this.id, host: host.name, ip: host.ip, ip6: host.ip6 }, 'host added');
    return host;
  }

  async addPod(spec: PodSpec): Promise<SandboxPod> {
    this.assertUsable();
    checkPodSpec(spec, new Set(this.namespaceMap.keys()));
    const key = `${spec.namespace}/${spec.name}`;
    if (this.podMap.has(key) || this.pendingPods.has(key)) throw new Error(`pod ${key} exists`);
    // Indexes are reserved before the first await, so concurrent addPod calls never share an address.
    const used = new Set([...[...this.podMap.values()].map((p) => p.index), ...this.pendingPods.values()]);
    let index = FIRST_POD_INDEX;
    while (used.has(index)) index++;
    if (index > LAST_POD_INDEX) throw new RangeError(`sandbox ${this.id}: pod range full`);
    const uid = spec.uid ?? randomUUID();
    const qosClass = spec.qosClass ?? 'BestEffort';
    const pod = new PodHandle({
      namespace: spec.namespace,
      name: spec.name,
      uid,
      labels: { ...(spec.labels ?? {}) },
      qosClass,
      ports: (spec.ports ?? []).map((p) => ({ ...(p.name !== undefined ? { name: p.name } : {}), port: p.port, protocol: p.protocol ?? 'TCP' })),
      index,
      netns: this.netnsName(`${spec.namespace}.${spec.name}`),
      veth: `wp${shortHash(key)}`,
      cgroupDir: join(this.cgroupRoot, podCgroupRelPath(this.cgroupDriver, qosClass, uid)),
      driver: this.cgroupDriver,
    });
    this.pendingPods.set(key, index);
    try {
      ensureCgroup(pod.cgroupDir);
      await this.plumb(pod.netns, pod.veth, pod.ip, pod.ip6);
    } catch (e) {
      this.unplumb(pod.netns, pod.cgroupDir);
      throw e;
    } finally {
      this.pendingPods.delete(key);
    }
    this.podMap.set(key, pod);
    this.syncManifests();
    this.log.debug({ sandbox: this.id, pod: key, ip: pod.ip, cgroup: pod.cgroupDir }, 'pod added');
    return pod;
  }

  /** Kills the pod's processes and removes its netns, cgroups and manifest. */
  async removePod(namespace: string, name: string): Promise<void> {
    this.assertUsable();
    const key = `${namespace}/${name}`;
    const pod = this.podMap.get(key);
    if (pod === undefined) throw new Error(`sandbox ${this.id}: no pod ${key}`);
    this.unplumb(pod.netns, pod.cgroupDir);
    this.podMap.delete(key);
    this.syncManifests();
    this.log.debug({ sandbox: this.id, pod: key }, 'pod removed');
  }

  // ---- processes -----------------------------------------------------------

  /** Starts argv in the pod's netns and in its container's cgroup (joined before exec). */
  spawnInPod(namespace: string, name: string, argv: readonly string[], opts: SpawnInOptions = {}): ChildProcess {
    this.assertUsable();
    const pod = this.pod(namespace, name);
    return this.spawnJoined(pod.containerCgroup(opts.container ?? 'main'), pod.netns, argv, opts);
  }

  /**
   * Starts argv in the pod's netns but in a cgroup outside the pods' tree,
   * so cgroup programs attached there (weir's) never see its sockets: the
   * same packets on the same path, without weir, for A/B measurements.
   */
  spawnInPodNetns(namespace: string, name: string, argv: readonly string[], opts: Omit<SpawnInOptions, 'container'> = {}): ChildProcess {
    this.assertUsable();
    const pod = this.pod(namespace, name);
    // Host cgroups are DNS labels (no dots), so this name never collides with one.
    const cg = join(this.hostsCgroupRoot, `${pod.namespace}.${pod.name}.outside`);
    ensureCgroup(cg);
    return this.spawnJoined(cg, pod.netns, argv, opts);
  }

  /**
   * The pod's /etc/resolv.conf for processes started from now on (a file
   * under /etc/netns/<pod netns>/ that `ip netns exec` bind-mounts).
   */
  setResolvConf(namespace: string, name: string, content: string): void {
    this.assertUsable();
    const pod = this.pod(namespace, name);
    const dir = join(NETNS_ETC_DIR, pod.netns);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'resolv.conf'), content);
  }

  /**
   * Routes a whole prefix to a host, which answers on every address in it
   * (a local route: "AnyIP"), so DNS answers can name many addresses that
   * all lead to one server. The prefix must lie in the host kind's ranges
   * (addressing.ts). The node routes it via the host's own address, so
   * neighbour resolution needs only that one.
   */
  async routeToHost(hostName: string, cidr: string): Promise<void> {
    this.assertUsable();
    const host = this.host(hostName);
    checkHostPrefix(host.name, host.kind, cidr);
    const v6 = cidr.includes(':');
    await this.batch(host.netns, [`route add local ${cidr} dev lo`]);
    await this.batch(this.nodeNetns, [`route add ${cidr} via ${v6 ? host.ip6 : host.ip} dev ${host.veth}`]);
  }

  /** Starts argv in a host's netns (and in that host's cgroup, outside the pods' tree). */
  spawnInHost(hostName: string, argv: readonly string[], opts: Omit<SpawnInOptions, 'container'> = {}): ChildProcess {
    this.assertUsable();
    const host = this.host(hostName);
    const cg = join(this.hostsCgroupRoot, host.name);
    ensureCgroup(cg);
    return this.spawnJoined(cg, host.netns, argv, opts);
  }

  private spawnJoined(cgroupDir: string, netns: string, argv: readonly string[], opts: SpawnInOptions): ChildProcess {
    if (argv.length === 0) throw new TypeError('argv: empty command');
    const child = spawn('sh', ['-c', JOIN_AND_EXEC, 'weir-sandbox', cgroupDir, netns, ...argv], {
      stdio: opts.stdio ?? 'pipe',
      env: opts.env ?? process.env,
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Runs a short command in one of the sandbox's netns (no cgroup move): for inspection. */
  runInNetns(netns: string, argv: readonly string[]): Promise<string> {
    if (!netns.startsWith(`${this.prefix}${this.id}-`)) throw new Error(`${netns} is not a netns of sandbox ${this.id}`);
    return run('ip', ['netns', 'exec', netns, ...argv]);
  }

  // ---- manifests -----------------------------------------------------------

  /** Namespace and Pod objects as the API server would return them. */
  manifests(): { namespaces: Namespace[]; pods: PodManifest[] } {
    const namespaces = [...this.namespaceMap].map(([name, v]) => namespaceManifest(name, v.labels, v.uid));
    const pods = [...this.podMap.values()].map((p) =>
      podManifest({
        namespace: p.namespace,
        name: p.name,
        uid: p.uid,
        labels: { ...p.labels },
        qosClass: p.qosClass,
        nodeName: this.nodeName,
        ip: p.ip,
        ip6: p.ip6,
        ports: [...p.ports],
        containerId: p.containerId('main'),
        sandboxId: this.id,
      }),
    );
    return { namespaces, pods };
  }

  /**
   * Writes the manifests into dir (one file for the namespaces, one per pod)
   * and keeps them in sync afterwards: addPod/removePod update the directory,
   * destroy() removes the files. Returns the files written.
   */
  writeManifests(dir: string): string[] {
    this.assertUsable();
    mkdirSync(dir, { recursive: true });
    this.manifestsDir = dir;
    return this.syncManifests();
  }

  private syncManifests(): string[] {
    const dir = this.manifestsDir;
    if (dir === undefined) return [];
    if (!existsSync(dir)) {
      // Whoever asked for the manifests removed the directory: stop syncing.
      this.log.warn({ sandbox: this.id, dir }, 'manifests directory is gone; no longer writing manifests');
      this.manifestsDir = undefined;
      this.manifestFiles.clear();
      this.writeState();
      return [];
    }
    const { namespaces, pods } = this.manifests();
    const base = `${this.prefix}sb-${this.id}`;
    const wanted = new Map<string, string>();
    wanted.set(`${base}-namespaces.yaml`, namespaces.map((n) => toYaml(n)).join('---\n'));
    for (const p of pods) wanted.set(`${base}-pod-${p.metadata.namespace}.${p.metadata.name}.yaml`, toYaml(p));
    const written: string[] = [];
    for (const [file, content] of wanted) {
      const path = writeFileAtomic(dir, file, content);
      this.manifestFiles.add(path);
      written.push(path);
    }
    for (const f of [...this.manifestFiles]) {
      if (!written.includes(f)) {
        removeFile(f);
        this.manifestFiles.delete(f);
      }
    }
    this.writeState();
    return written;
  }

  // ---- teardown ------------------------------------------------------------

  async destroy(): Promise<void> {
    this.destroySync();
  }

  /** Idempotent. Synchronous so that exit and signal hooks can use it. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    updateHooks();
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    this.children.clear();
    let clean = false;
    try {
      teardown(this.id, this.prefix, this.cgroupMount, this.log, this.manifestFiles);
      clean = true;
    } finally {
      // Without "done" the reaper takes EOF as a death and tries once more.
      const stdin = this.reaper?.stdin;
      if (stdin) {
        if (clean) stdin.write('done\n');
        stdin.end();
      }
      this.reaper = undefined;
    }
  }

  /** See reaper.ts. Detached (own session) and unref'd: it never keeps this process alive. */
  private startReaper(): void {
    const fromSource = import.meta.url.endsWith('.ts');
    const script = fileURLToPath(new URL(fromSource ? './reaper.ts' : './reaper.js', import.meta.url));
    const hooks = fromSource ? ['--import', fileURLToPath(new URL('./source-hooks.ts', import.meta.url))] : [];
    const child = spawn(process.execPath, [...hooks, script, this.id, this.prefix, this.cgroupMount], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    child.on('error', (e) => this.log.warn({ sandbox: this.id, err: e.message }, 'sandbox reaper failed to start'));
    child.stdin?.on('error', () => {});
    if (child.stdin instanceof Socket) child.stdin.unref();
    child.unref();
    this.reaper = child;
  }

  private assertUsable(): void {
    if (this.destroyed) throw new Error(`sandbox ${this.id} is destroyed`);
  }

  private writeState(): void {
    writeState({
      id: this.id,
      prefix: this.prefix,
      ownerPid: process.pid,
      ownerStartTime: this.ownerStartTime,
      cgroupMount: this.cgroupMount,
      manifestFiles: [...this.manifestFiles],
      createdAt: new Date().toISOString(),
    });
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function randomId(): string {
  // 5 base-36 characters: short enough for readable names, ~60M values.
  let s = '';
  for (const b of randomBytes(5)) s += (b % 36).toString(36);
  return s;
}

/** Removes sandbox `id` whatever its owner's state (for `weir sandbox down`). */
export function teardownSandbox(id: string, opts: { prefix?: string; logger?: SandboxLogger } = {}): boolean {
  if (!ID_PATTERN.test(id)) throw new TypeError(`sandbox id ${JSON.stringify(id)} must match ${ID_PATTERN}`);
  const mine = [...live.keys()].find((sb) => sb.id === id);
  if (mine !== undefined) {
    mine.destroySync();
    return true;
  }
  const prefix = opts.prefix ?? NAME_PREFIX;
  const state = readState(id);
  return teardown(id, prefix, state?.cgroupMount ?? findCgroup2Mount(), opts.logger ?? silentLogger);
}
