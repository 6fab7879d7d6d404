// The node agent: sources feed the object store; every change recompiles
// the policy and writes the difference to the datapath; violation events
// from the kernel are enriched with pod, workload, domain, policy and rule
// and reported (log line, metrics).
import { readFileSync, readlinkSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry } from 'prom-client';
import { ObjectStore, type StoreChange } from '../model/store.js';
import type { Pod } from '../model/types.js';
import { ManifestSource } from '../sources/manifests.js';
// The Kubernetes source and the Events reporter load @kubernetes/client-node (~85 MiB of RSS):
// they are imported when used (createSource), never with --manifests.
import type { BackoffOptions, KubernetesSource, KubernetesSourceError, ResourceStatus } from '../sources/kubernetes.js';
import type { Source } from '../sources/source.js';
import { PolicyEngine, type DesiredPod, type DesiredState } from '../policy/engine.js';
import { DEFAULT_RESOLVERS, type ResolverConfig } from '../policy/resolvers.js';
import { FqdnLearning, type FqdnStatus } from './fqdn-learning.js';
import { bytesToAddress, type Family } from '../policy/prefix.js';
import { REASON_BY_CODE, VERDICT_BY_CODE } from '../policy/verdict.js';
import { HOOK_NAMES, type RawEvent } from '../datapath/abi.js';
import { Datapath, type AttachResult, type Capacities, type EndpointCounters } from '../datapath/datapath.js';
import type { ApplyResult, PodBinding } from '../datapath/state-writer.js';
import { cgroupIdOf, findPodCgroup, findPodsRoot, type PodsRoot } from '../datapath/cgroups.js';
import { ExplainError, explain } from '../policy/explain.js';
import { LocalApi, LocalApiError } from './local-api.js';
import { ObserveHub, type ObserveFilter } from './observe.js';
import { policyDigest } from './policy-digest.js';
import { AuditLog, type AuditLogOptions } from '../audit/audit-log.js';
import { AttributionCache, IsoClock, ProcessNameCache, fastAddress, type Attribution } from './attribution.js';
import type { EventReporter, EventReporterOptions, policyReference } from '../report/k8s-events.js';
import { AgentMetrics, type KernelCountSample } from '../report/metrics.js';
import { logEvent } from '../report/logger.js';
import { domainOf, workloadOf } from '../report/workload.js';

export const VERSION = '0.1.0';
const CGROUP_RECHECK_MS = 30_000;
const CT_SWEEP_MS = 5_000;

/** Reading the model from the Kubernetes API (`weir agent` without --manifests). */
export interface KubernetesSourceConfig {
  /** A kubeconfig file; default: the in-cluster service account, else KUBECONFIG or ~/.kube/config. */
  kubeconfig?: string;
  /** 'cluster' (default): every Pod, for pod-selector peers. 'node': only this node's Pods. */
  podScope?: 'cluster' | 'node';
  backoff?: BackoffOptions;
  watchTimeoutSeconds?: number;
  idleTimeoutMs?: number;
  /** Kubernetes Events for violations and invalid policies (default on); options for tests. */
  events?: false | Partial<Omit<EventReporterOptions, 'kubeconfig' | 'kubeConfig' | 'nodeName' | 'logger' | 'registry'>>;
}

export interface AgentOptions {
  /** Read the model from manifests in this directory. Exactly one of `manifests` and `kubernetes`. */
  manifests?: string;
  /** Read the model from the Kubernetes API. */
  kubernetes?: KubernetesSourceConfig;
  nodeName: string | null;
  cgroupRoot: string;
  bpffs: string;
  pinDir?: string;
  metricsAddr: string | null;
  /** Append the tamper-evident audit log to this file (docs/audit.md). */
  auditLog?: { path: string; options?: Omit<AuditLogOptions, 'logger' | 'onCheckpoint' | 'onError'> };
  /** The local API's Unix socket (root only), for `weir explain` and friends; null: none. */
  apiSocket?: string | null;
  objectsDir?: string;
  capacities?: Partial<Capacities>;
  eventIntervalMs?: number;
  /** How long to wait for the kubelet's pods cgroup to appear at start. */
  podsRootWaitMs?: number;
  /** How long the metric series of a workload that left this node stay exported (default 5 minutes). */
  metricsSeriesLingerMs?: number;
  /** How often weir_ct is walked (idle entries expired, the full flag updated). Default 5 s. */
  conntrackSweepMs?: number;
  /**
   * The trusted DNS resolvers for fqdn peers (--dns-service, --dns-resolvers):
   * default the Service kube-system/kube-dns.
   */
  dnsResolvers?: ResolverConfig;
}

export interface AgentStatus {
  version: string;
  node: string | null;
  startedAt: string;
  ready: boolean;
  source: { kind: 'manifests'; dir: string } | { kind: 'kubernetes'; resources: ResourceStatus[] };
  podsRoot: { dir: string; driver: string; level: number };
  attachments: { program: string; linkId: number; action: string }[];
  pinDir: string;
  maps: Record<string, { used: number; capacity: number }>;
  policy: { generation: number; policies: number; sets: number; problems: { policy: string; error: string }[] };
  pods: { enforced: number; pendingCgroup: number };
  workloads: { workload: string; pods: number }[];
  events: { sent: number; aggregated: number; lostKernel: number; lostObserve: number; observers: number };
  /** Distinct names the pods learned from DNS (the details are in `fqdn`). */
  learnedNames: string[];
  /** DNS-aware egress: whether it runs, the trusted resolvers, what each pod learned, map usage. */
  fqdn: FqdnStatus;
  auditLog: { path: string; head: { seq: number; hash: string } | null } | null;
}

export interface Violation {
  time: string;
  verdict: string;
  reason: string;
  namespace: string;
  pod: string;
  workload: string;
  domain: string;
  policy: string;
  rule: string;
  protocol: string;
  destination: string;
  port: number | null;
  source: string;
  pid: number;
  /** The process name (/proc/PID/comm of the thread group), else the thread's. */
  command: string;
  /** The name of the thread that made the call, as the kernel saw it. */
  thread: string;
  count: number;
  hook: string;
  generation: number;
}

const POLICY_KINDS = new Set(['NetworkPolicy', 'EgressPolicy', 'ClusterEgressPolicy']);
const PROTO_NAMES: Record<number, string> = { 1: 'ICMP', 6: 'TCP', 17: 'UDP', 58: 'ICMPv6', 132: 'SCTP' };
const PORTED = new Set([6, 17, 132]);

interface EndpointLabels {
  pod: Pod;
  desired: DesiredPod;
  namespace: string;
  name: string;
  workload: string;
  domain: string;
  setKey: string;
}

export class Agent {
  readonly registry = new Registry();
  readonly store: ObjectStore;
  readonly metrics: AgentMetrics;
  private readonly engine: PolicyEngine;
  private readonly log: Logger;
  private source: Source | null = null;
  private server: Server | null = null;
  private api: LocalApi | null = null;
  private audit: AuditLog | null = null;
  private events: EventReporter | null = null;
  /** k8s-events.ts's policyReference, loaded with the Events reporter. */
  private policyReference: typeof policyReference | null = null;
  /** Policy problems already reported as Events (policy id + message). */
  private reportedProblems = new Set<string>();
  private readonly observers = new ObserveHub();
  private readonly startedAt = new Date();
  /** The generation last recorded in the audit log. */
  private auditedGeneration: number | null = null;
  private state: DesiredState | null = null;
  /** Policy id -> mode of the current state, for enriching events without scans. */
  private policyModes = new Map<string, 'Enforce' | 'Audit'>();
  private endpoints = new Map<number, EndpointLabels>();
  private pendingCgroups = new Set<string>();
  /** Changes since the last compile: the engine recompiles only what they touch. */
  private changes: StoreChange[] = [];
  /** Pod cgroups found so far (a pod's cgroup does not move while the pod lives); re-checked every CGROUP_RECHECK_MS. */
  private cgroups = new Map<string, { dir: string; id: bigint }>();
  private cgroupsCheckedAt = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private ctTimer: NodeJS.Timeout | null = null;
  private readonly ctExpired: Counter;
  /** DNS records, the sweep of weir_fqdn_learned, and the status of what pods learned. */
  private readonly fqdn: FqdnLearning;
  /** The last walk of weir_ct (sweepConntrack), for metrics and status. */
  private ct: { live: number; expired: number; capacity: number; full: boolean } | null = null;
  private scheduled: NodeJS.Immediate | null = null;
  private applying: Promise<ApplyResult | null> = Promise.resolve(null);
  private readonly violationListeners = new Set<(v: Violation) => void>();
  private attached: AttachResult[] = [];
  private stopped = false;
  private synced = false;

  private constructor(
    private readonly opts: AgentOptions,
    logger: Logger,
    readonly datapath: Datapath,
    readonly podsRoot: PodsRoot,
  ) {
    this.log = logger.child({ component: 'agent' });
    this.store = new ObjectStore({ logger: logger.child({ component: 'store' }) });
    this.engine = new PolicyEngine(opts.nodeName, opts.dnsResolvers ? { resolvers: opts.dnsResolvers } : {});
    this.metrics = new AgentMetrics(
      this.registry,
      {
        kernelCounts: () => this.kernelCounts(),
        kernelStats: () => this.datapath.stats(),
        mapUsage: () => this.datapath.writer.usage(),
        slowMapUsage: () => this.lruMapUsage(),
        liveWorkloads: () => this.endpoints.values(),
        livePolicies: () => this.policyModes.keys(),
        ready: () => this.ready,
        userspaceDrops: () => ({ observe: this.observers.dropped }),
      },
      { version: VERSION, node: opts.nodeName ?? '', ...(opts.metricsSeriesLingerMs !== undefined ? { seriesLingerMs: opts.metricsSeriesLingerMs } : {}) },
    );
    const self = this;
    new Gauge({
      name: 'weir_conntrack_full',
      help: '1 while weir_ct is full of live inbound flows (90% of capacity, until below 80%): replies of evicted flows are dropped and reported with reason map-full. Updated every few seconds.',
      registers: [this.registry],
      collect() {
        this.set(self.ct?.full ? 1 : 0);
      },
    });
    this.ctExpired = new Counter({
      name: 'weir_conntrack_expired_total',
      help: 'Idle weir_ct entries the agent deleted (idle longer than the conntrack timeout: they could no longer pass a reply).',
      registers: [this.registry],
    });
    this.fqdn = new FqdnLearning({
      datapath,
      log: logger.child({ component: 'fqdn' }),
      count: (kind, pod, n, reason) => this.metrics.fqdn(kind, pod, n, reason),
      endpoint: (id) => {
        const ep = this.endpoints.get(id);
        return ep && { uid: ep.pod.metadata.uid ?? '', namespace: ep.namespace, name: ep.name, workload: ep.workload, domain: ep.domain, setKey: ep.setKey };
      },
      state: () => this.state,
      refusedEvent: (e) => this.events?.fqdnRefused(e),
      audit: (d) => this.auditRecord('fqdn-intent', d),
      processName,
      now: () => this.isoClock.now(),
      resolverConfig: opts.dnsResolvers ?? DEFAULT_RESOLVERS,
    });
  }

  static async start(opts: AgentOptions, logger: Logger): Promise<Agent> {
    const log = logger.child({ component: 'agent' });
    const podsRoot = await waitForPodsRoot(opts.cgroupRoot, opts.podsRootWaitMs ?? 30_000, log);
    const dpOpts: Parameters<typeof Datapath.open>[0] = {
      bpffs: opts.bpffs,
      podLevel: podsRoot.level,
      logger: logger.child({ component: 'datapath' }),
    };
    if (opts.pinDir !== undefined) dpOpts.pinDir = opts.pinDir;
    if (opts.objectsDir !== undefined) dpOpts.objectsDir = opts.objectsDir;
    if (opts.capacities !== undefined) dpOpts.capacities = opts.capacities;
    if (opts.eventIntervalMs !== undefined) dpOpts.eventIntervalMs = opts.eventIntervalMs;
    const datapath = await Datapath.open(dpOpts);
    const agent = new Agent(opts, logger, datapath, podsRoot);
    try {
      await agent.run(logger);
    } catch (err) {
      await agent.stop();
      throw err;
    }
    return agent;
  }

  private async run(logger: Logger): Promise<void> {
    if (this.opts.auditLog) await this.openAuditLog(this.opts.auditLog.path, this.opts.auditLog.options ?? {});
    const a = this.datapath.adopted;
    if (a.pods + a.sets > 0) this.log.info({ adopted: a }, 'adopted pinned datapath state from a previous agent');
    // Normally the links move to this run's programs at once: they share the
    // pinned maps, so the policy in force does not change. When a policy map
    // is new (migrated without its content, or its pin was lost), they move
    // only once the first policy is written; until then the previous
    // agent's programs keep enforcing what they had.
    const deferAttach = this.datapath.attachAfterFirstApply;
    if (deferAttach) this.log.warn({ migrations: this.datapath.migrations.map((m) => m.map) }, 'new policy maps: the pinned programs keep enforcing until the first policy is written');
    else this.attachDatapath();
    this.datapath.onEndpointRetired = (ep, final) => this.retireEndpoint(ep, final);
    if (this.opts.metricsAddr) await this.listen(this.opts.metricsAddr);
    if (this.opts.apiSocket) {
      this.api = new LocalApi(
        this.opts.apiSocket,
        {
          '/v1/explain': (q) => this.explainFlow(q.get('from'), q.get('to')),
          '/v1/status': () => this.status(),
          '/v1/observe': (q, req, res) => this.observe(q, req, res),
        },
        this.log,
      );
      await this.api.listen();
    }

    this.store.onChange((c) => {
      this.changes.push(c);
      this.schedule();
    });
    this.source = await this.createSource(logger);
    await this.source.start();
    this.synced = true;
    const first = await this.reconcile();
    if (deferAttach) {
      // Attaching now would run the new programs on maps without the policy.
      if (first === null) throw new Error('the first policy could not be written to the new maps; the pinned programs keep enforcing the previous policy');
      this.attachDatapath();
    }
    // Events are read once the pods are known: the pinned ring buffer holds
    // what happened while no agent ran, and those events are reported with
    // their pod, workload and policy, not as unknown.
    this.datapath.startEvents(
      (events) => this.onEvents(events),
      (type) => this.metrics.unknownRecords.inc({ type: String(type) }),
      (records) => this.fqdn.onRecords(records),
    );
    this.sweepConntrack();
    this.ctTimer = setInterval(() => this.sweepConntrack(), this.opts.conntrackSweepMs ?? CT_SWEEP_MS);
    this.ctTimer.unref();
    this.log.info({ generation: this.datapath.writer.generation, pods: this.endpoints.size }, 'agent ready');
  }

  /**
   * Expires idle weir_ct entries and keeps the datapath's "conntrack full"
   * flag current; deletes weir_fqdn_learned slots expired and unused.
   */
  private sweepConntrack(): void {
    try {
      this.ct = this.datapath.sweepConntrack();
      if (this.ct.expired > 0) this.ctExpired.inc(this.ct.expired);
    } catch (err) {
      this.log.error({ err }, 'walking weir_ct failed');
    }
    try {
      this.fqdn.sweep();
    } catch (err) {
      this.log.error({ err }, 'walking weir_fqdn_learned failed');
    }
  }

  private attachDatapath(): void {
    this.attached = this.datapath.attach(this.podsRoot.dir, cgroupIdOf(this.podsRoot.dir));
    this.log.info(
      { podsRoot: this.podsRoot.dir, driver: this.podsRoot.driver, level: this.podsRoot.level, programs: this.attached },
      'datapath attached to the pods cgroup root',
    );
  }

  private async openAuditLog(path: string, options: Omit<AuditLogOptions, 'logger' | 'onCheckpoint' | 'onError'>): Promise<void> {
    const log = this.log.child({ component: 'audit' });
    this.audit = await AuditLog.open(path, {
      ...options,
      logger: log,
      // Checkpoints also go to the agent log, which is shipped off the node:
      // a copy an attacker on the node cannot rewrite (weir audit verify --checkpoint).
      onCheckpoint: (cp) => log.info({ auditCheckpoint: cp }, 'audit log checkpoint'),
      onError: (err) => {
        this.metrics.syncErrors.inc({ kind: 'audit-log' });
        log.error({ err, path }, 'writing the audit log failed; no further audit records are written');
      },
    });
    const o = this.audit.opened;
    if (o.state === 'chain-broken') log.error({ path, broken: o.record.data }, 'the audit log did not verify on open; it was set aside and a new chain started');
    else log.info({ path, ...o }, 'audit log open');
    this.auditRecord('start', { version: VERSION, node: this.opts.nodeName });
  }

  /** Appends to the audit log, if any; a failed log is reported once (onError), never thrown into the agent. */
  private auditRecord(...args: Parameters<AuditLog['append']>): void {
    if (!this.audit) return;
    try {
      this.audit.append(...args);
    } catch (err) {
      this.log.debug({ err }, 'audit record not written');
    }
  }

  private async createSource(logger: Logger): Promise<Source> {
    const { manifests, kubernetes } = this.opts;
    if ((manifests === undefined) === (kubernetes === undefined)) {
      throw new TypeError('Agent: give exactly one source, manifests or kubernetes');
    }
    if (kubernetes !== undefined && !this.opts.nodeName) {
      throw new TypeError('Agent: the Kubernetes source needs the node name (--node-name or NODE_NAME)');
    }
    if (manifests !== undefined) {
      return new ManifestSource({
        dir: manifests,
        store: this.store,
        logger: logger.child({ component: 'manifests' }),
        registry: this.registry,
        onError: () => this.metrics.syncErrors.inc({ kind: 'manifest' }),
      });
    }
    const k = kubernetes as KubernetesSourceConfig;
    if (k.events !== false) {
      const { EventReporter, policyReference } = await import('../report/k8s-events.js');
      this.policyReference = policyReference;
      this.events = new EventReporter({
        ...(k.events ?? {}),
        ...(k.kubeconfig !== undefined ? { kubeconfig: k.kubeconfig } : {}),
        nodeName: this.opts.nodeName as string,
        logger: logger.child({ component: 'events' }),
        registry: this.registry,
      });
    }
    this.log.info({ nodeName: this.opts.nodeName, kubeconfig: k.kubeconfig ?? '(in-cluster or default)' }, 'reading the model from the Kubernetes API; waiting for the first sync');
    const { KubernetesSource } = await import('../sources/kubernetes.js');
    return new KubernetesSource({
      ...k,
      nodeName: this.opts.nodeName,
      store: this.store,
      logger,
      registry: this.registry,
      onError: (e: KubernetesSourceError) => {
        this.metrics.syncErrors.inc({ kind: e.reason === 'invalid' ? 'invalid-object' : 'watch' });
        if (e.reason === 'invalid' && e.kind && e.name && POLICY_KINDS.has(e.kind)) {
          this.reportInvalidPolicy(`${e.kind}/${e.namespace ?? ''}/${e.name}`, `${e.field ? `${e.field}: ` : ''}${e.message}`);
        }
      },
    });
  }

  /**
   * A Warning Event on a policy that cannot be loaded, once per policy and
   * message. Only nodes that run pods in the policy's namespace report a
   * namespaced policy, so a bad policy is not reported by every node of a
   * large cluster; a ClusterEgressPolicy is reported by each node.
   */
  private reportInvalidPolicy(policyId: string, message: string): void {
    if (!this.events) return;
    const key = `${policyId}\n${message}`;
    if (this.reportedProblems.has(key)) return;
    const ref = this.policyReference?.(policyId);
    if (!ref) return;
    if (ref.namespace !== undefined && this.opts.nodeName && !this.store.podsOnNode(this.opts.nodeName).some((p) => p.metadata.namespace === ref.namespace)) return;
    this.reportedProblems.add(key);
    const uid = this.store.get(ref.kind as 'EgressPolicy', ref.namespace, ref.name)?.metadata.uid;
    this.events.invalidPolicy({ ...ref, ...(uid !== undefined ? { uid } : {}), message });
  }

  /** `weir explain` against the live model: the verdict, the policies and the rules. */
  explainFlow(from: string | null, to: string | null): unknown {
    if (!from || !to) throw new LocalApiError('from and to are required');
    if (!this.synced) throw new LocalApiError('the agent has not synced its model yet', 503);
    try {
      return { generation: this.datapath.writer.generation, explanation: explain(this.store, from, to, { resolvers: this.opts.dnsResolvers ?? DEFAULT_RESOLVERS, learned: (uid, ip) => this.fqdn.learnedFor(uid, ip) }) };
    } catch (err) {
      if (err instanceof ExplainError) throw new LocalApiError(err.message);
      throw err;
    }
  }

  /** What `weir status` prints: attachments, maps against capacity, policy, workloads, sources, events lost. */
  status(): AgentStatus {
    const stats = this.datapath.stats();
    const workloads = new Map<string, number>();
    for (const ep of this.endpoints.values()) workloads.set(`${ep.namespace}/${ep.workload}`, (workloads.get(`${ep.namespace}/${ep.workload}`) ?? 0) + 1);
    const head = this.audit?.head ?? null;
    return {
      version: VERSION,
      node: this.opts.nodeName,
      startedAt: this.startedAt.toISOString(),
      ready: this.ready,
      source: this.opts.manifests !== undefined ? { kind: 'manifests', dir: this.opts.manifests } : { kind: 'kubernetes', resources: this.watchStatus() },
      podsRoot: { dir: this.podsRoot.dir, driver: this.podsRoot.driver, level: this.podsRoot.level },
      attachments: this.attached.map((a) => ({ program: a.program, linkId: a.linkId, action: a.action })),
      pinDir: this.datapath.pinDir,
      maps: this.datapath.writer.usage(),
      policy: {
        generation: this.datapath.writer.generation,
        policies: this.state?.policies.length ?? 0,
        sets: this.state?.sets.size ?? 0,
        problems: this.state?.problems.map((p) => ({ policy: p.policyId, error: p.message })) ?? [],
      },
      pods: { enforced: this.endpoints.size, pendingCgroup: this.pendingCgroups.size },
      workloads: [...workloads].map(([w, pods]) => ({ workload: w, pods })).sort((a, b) => a.workload.localeCompare(b.workload)),
      events: {
        sent: Number(stats.events_sent),
        aggregated: Number(stats.events_aggregated),
        lostKernel: Number(stats.events_lost),
        lostObserve: this.observers.dropped,
        observers: this.observers.size,
      },
      learnedNames: this.fqdn.learnedNames(),
      fqdn: this.fqdn.status(),
      auditLog: this.opts.auditLog ? { path: this.opts.auditLog.path, head } : null,
    };
  }

  private observe(q: URLSearchParams, req: IncomingMessage, res: ServerResponse): undefined {
    const filter: ObserveFilter = {};
    for (const k of ['namespace', 'pod', 'domain', 'verdict', 'policy'] as const) {
      const v = q.get(k);
      if (v) filter[k] = v;
    }
    if (filter.verdict && !['drop', 'audit'].includes(filter.verdict)) throw new LocalApiError('verdict must be drop or audit (allowed flows are counted, not streamed)');
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    // A first line, so a client knows the stream is open before any violation.
    res.write(`${JSON.stringify({ type: 'hello', node: this.opts.nodeName, generation: this.datapath.writer.generation })}\n`);
    const off = this.observers.subscribe(filter, res);
    req.on('close', off);
    return undefined;
  }

  /** The audit log, when --audit-log is set. */
  get auditLog(): AuditLog | null {
    return this.audit;
  }

  /** Per-resource watch state when reading from the Kubernetes API; empty otherwise. */
  watchStatus(): ResourceStatus[] {
    // With opts.kubernetes, createSource made a KubernetesSource (not imported here: see the imports).
    return this.source && this.opts.kubernetes !== undefined ? (this.source as KubernetesSource).status() : [];
  }

  get ready(): boolean {
    return this.synced && !this.stopped && this.attached.length > 0;
  }

  onViolation(cb: (v: Violation) => void): () => void {
    this.violationListeners.add(cb);
    return () => this.violationListeners.delete(cb);
  }

  private schedule(): void {
    if (this.stopped || !this.synced || this.scheduled) return;
    // Coalesce a burst of changes (a manifest file with many objects) into one apply.
    this.scheduled = setImmediate(() => {
      this.scheduled = null;
      void this.reconcile();
    });
  }

  /** Recompiles and writes the difference. Serialized: one apply at a time. */
  reconcile(): Promise<ApplyResult | null> {
    this.applying = this.applying.then(() => this.applyOnce()).catch((err: unknown) => {
      this.metrics.syncErrors.inc({ kind: 'datapath' });
      this.log.error({ err }, 'writing policy to the datapath failed; the previous policy stays in force');
      return null;
    });
    return this.applying;
  }

  private applyOnce(): ApplyResult | null {
    if (this.stopped) return null;
    const started = process.hrtime.bigint();
    const state = this.engine.compute(this.store, this.changes.splice(0));
    for (const p of state.problems) {
      this.metrics.syncErrors.inc({ kind: 'compile' });
      this.log.error({ policy: p.policyId, error: p.message }, 'policy could not be compiled; it is ignored');
      this.reportInvalidPolicy(p.policyId, p.message);
    }
    const bindings: PodBinding[] = [];
    const pending = new Set<string>();
    if (Date.now() - this.cgroupsCheckedAt > CGROUP_RECHECK_MS) {
      this.cgroups.clear();
      this.cgroupsCheckedAt = Date.now();
    }
    const live = new Set<string>();
    for (const dp of state.pods) {
      live.add(dp.uid);
      let cg = this.cgroups.get(dp.uid);
      if (!cg) {
        const dir = findPodCgroup(this.podsRoot, dp.uid, dp.pod.status?.qosClass);
        if (!dir) {
          pending.add(dp.uid);
          continue;
        }
        cg = { dir, id: cgroupIdOf(dir) };
        this.cgroups.set(dp.uid, cg);
      }
      // ips: the pod's own addresses, which the datapath never judges (a pod is never isolated from itself).
      bindings.push({ uid: dp.uid, namespace: dp.namespace, name: dp.name, cgroupId: cg.id, setKey: dp.setKey, ips: (dp.pod.status?.podIPs ?? []).map((p) => p.ip) });
    }
    for (const uid of this.cgroups.keys()) if (!live.has(uid)) this.cgroups.delete(uid);
    this.updatePending(pending, state.pods);
    const res = this.datapath.writer.apply(state, bindings);
    this.state = state;
    this.fqdn.afterApply(state);
    this.policyModes = new Map(state.policies.map((p) => [p.id, p.mode]));
    for (const f of res.failedSets) {
      this.metrics.syncErrors.inc({ kind: 'datapath' });
      this.log.error({ policies: f.key.split('\n'), error: f.error }, 'policy set could not be written; its last good version stays in force (a set never written drops its pods\' egress as no-policy-set)');
    }
    for (const f of res.failedPods) {
      this.metrics.syncErrors.inc({ kind: 'datapath' });
      this.log.error({ namespace: f.namespace, pod: f.name, uid: f.uid, error: f.error }, 'pod could not be written to the datapath; retrying');
      this.events?.podNotEnforced({ namespace: f.namespace, pod: f.name, podUid: f.uid, message: `${f.error} (raise weir agent --max-pods)` });
    }
    // Slots freed by removals come back after the writer's grace period: try again then.
    if (res.failedSets.length + res.failedPods.length > 0 && !this.retryTimer && !this.stopped) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        void this.reconcile();
      }, 2_500);
    }
    const byUid = new Map(state.pods.map((p) => [p.uid, p]));
    const eps = new Map<number, EndpointLabels>();
    for (const e of this.datapath.writer.endpoints()) {
      const dp = byUid.get(e.uid);
      if (!dp) continue;
      eps.set(e.endpointId, { pod: dp.pod, desired: dp, namespace: e.namespace, name: e.name, workload: workloadOf(dp.pod), domain: domainOf(dp.pod), setKey: e.setKey });
    }
    this.endpoints = eps;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    this.metrics.compileDuration.observe(seconds);
    if (this.audit && (this.auditedGeneration === null || res.setsWritten + res.setsRemoved + res.podsWritten + res.podsRemoved > 0)) {
      this.auditRecord('policy', { fromGeneration: this.auditedGeneration, toGeneration: res.generation, digest: policyDigest(state), sets: state.sets.size, pods: bindings.length });
      this.auditedGeneration = res.generation;
    }
    this.metrics.policyGeneration.set(res.generation);
    this.metrics.podsGoverned.set(eps.size);
    this.metrics.policyCompileFailing.set(state.problems.length + res.failedSets.length);
    this.metrics.mapWrites.inc({ what: 'sets' }, res.setsWritten);
    this.metrics.mapWrites.inc({ what: 'nodes' }, res.nodesWritten);
    this.metrics.mapWrites.inc({ what: 'tails' }, res.tailsWritten);
    this.metrics.mapWrites.inc({ what: 'classes' }, res.classesWritten);
    this.metrics.mapWrites.inc({ what: 'pods' }, res.podsWritten + res.podsRemoved);
    if (res.reconciled) {
      // The first apply after start: what the pinned maps held that the desired state did not, and the reverse.
      for (const [map, byAction] of Object.entries(res.reconciled)) {
        for (const [action, n] of Object.entries(byAction)) if (n > 0) this.metrics.reconcileEntries.inc({ map, action }, n);
      }
      const a = this.datapath.adopted;
      this.log.info({ adopted: a, reconciled: res.reconciled }, 'pinned datapath state reconciled with the desired state');
    }
    if (res.setsWritten + res.setsRemoved + res.podsWritten + res.podsRemoved > 0) {
      this.log.info(
        {
          generation: res.generation,
          sets: res.setsWritten,
          setsRemoved: res.setsRemoved,
          nodes: res.nodesWritten,
          tails: res.tailsWritten,
          classes: res.classesWritten,
          pods: res.podsWritten,
          podsRemoved: res.podsRemoved,
          ms: Math.round(seconds * 1000 * 100) / 100,
        },
        'policy applied',
      );
    }
    return res;
  }

  private updatePending(pending: Set<string>, pods: DesiredPod[]): void {
    for (const uid of pending) {
      if (!this.pendingCgroups.has(uid)) {
        const p = pods.find((x) => x.uid === uid);
        this.log.warn({ namespace: p?.namespace, pod: p?.name, uid }, 'pod cgroup not found yet; will retry');
      }
      this.metrics.cgroupRetries.inc();
    }
    this.pendingCgroups = pending;
    this.metrics.podsPendingCgroup.set(pending.size);
    if (pending.size > 0 && !this.retryTimer && !this.stopped) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        void this.reconcile();
      }, 500);
    }
  }

  private onEvents(events: RawEvent[]): void {
    for (const e of events) {
      const v = this.enrich(e);
      if (!v) continue;
      this.metrics.violation(v, v.count);
      // The line of this.log.warn({ event: 'violation', ...v }, ...), byte for byte, without pino's per-character escaping loop.
      if (v.verdict === 'drop') logEvent(this.log, 'warn', 'violation', v, 'egress denied');
      else if (v.verdict === 'audit') logEvent(this.log, 'warn', 'violation', v, 'egress would be denied (audit)');
      else logEvent(this.log, 'info', 'violation', v, 'egress verdict');
      this.observers.publish(v);
      if (this.events && (v.verdict === 'drop' || v.verdict === 'audit')) {
        const uid = this.endpoints.get(e.endpointId)?.pod.metadata.uid;
        this.events.violation(uid !== undefined ? { ...v, podUid: uid } : v);
      }
      if (v.verdict === 'drop') this.auditRecord('violation', v);
      else if (v.verdict === 'audit') this.auditRecord('audit', v);
      for (const cb of this.violationListeners) cb(v);
    }
  }

  /** Policy and rule attribution per set and destination cell, emptied when the state changes (attribution.ts). */
  private readonly attribution = new AttributionCache((s, p, d, proto, port) => this.engine.explain(s, p, d, proto, port));
  /** /proc/PID/comm at most once a second per process. */
  private readonly processNames = new ProcessNameCache(processName);
  private readonly isoClock = new IsoClock();

  private enrich(e: RawEvent): Violation | null {
    const ep = this.endpoints.get(e.endpointId);
    const family: Family = e.family === 10 ? 6 : 4;
    const destination = fastAddress(family, e.dst, bytesToAddress);
    const verdict = VERDICT_BY_CODE.get(e.verdict) ?? `unknown(${e.verdict})`;
    const reason = REASON_BY_CODE.get(e.reason) ?? `unknown(${e.reason})`;
    let policy = '';
    let rule = '';
    if (ep && this.state) {
      const dp = ep.desired;
      const x = this.attribution.attribution(this.state, dp, destination, family, e.dst, e.proto, PORTED.has(e.proto) ? e.dport : null);
      const pr = this.policyAndRule(x, reason, verdict);
      policy = pr.policy;
      rule = pr.rule;
    }
    return {
      time: this.isoClock.now(),
      verdict,
      reason,
      namespace: ep?.namespace ?? '',
      pod: ep?.name ?? '',
      workload: ep?.workload ?? '',
      domain: ep?.domain ?? '',
      policy,
      rule,
      protocol: PROTO_NAMES[e.proto] ?? String(e.proto),
      destination,
      port: PORTED.has(e.proto) ? e.dport : null,
      source: fastAddress(family, e.src, bytesToAddress),
      pid: e.pid,
      command: this.processNames.get(e.pid, e.comm) ?? e.comm,
      thread: e.comm,
      count: e.count,
      hook: HOOK_NAMES[e.hook] ?? String(e.hook),
      generation: e.generation,
    };
  }

  /**
   * policyAndRule() per attribution (the cache's objects live as long as
   * their state), reason and, for l4-unknown, verdict; valid while
   * policyModes is the same map (it is replaced with the state).
   */
  private readonly policyRuleCache = new WeakMap<Attribution, { modes: Map<string, 'Enforce' | 'Audit'>; byReason: Map<string, { policy: string; rule: string }> }>();

  /** The `policy` and `rule` of a violation, from its attribution (same strings every time for the same inputs: cached). */
  private policyAndRule(x: Attribution, reason: string, verdict: string): { policy: string; rule: string } {
    let c = this.policyRuleCache.get(x);
    if (c === undefined || c.modes !== this.policyModes) {
      c = { modes: this.policyModes, byReason: new Map() };
      this.policyRuleCache.set(x, c);
    }
    const key = reason === 'l4-unknown' ? `${reason}\n${verdict}` : reason;
    let pr = c.byReason.get(key);
    if (pr === undefined) {
      pr = this.derivePolicyAndRule(x, reason, verdict);
      if (c.byReason.size < 64) c.byReason.set(key, pr);
    }
    return pr;
  }

  private derivePolicyAndRule(x: Attribution, reason: string, verdict: string): { policy: string; rule: string } {
    let policy = '';
    let rule = '';
    const pick = (kind: 'allow' | 'deny', mode: 'Enforce' | 'Audit'): string[] =>
      x.matches.filter((m) => m.kind === kind && m.mode === mode).map((m) => m.rule);
    const selected = (mode: 'Enforce' | 'Audit'): string[] =>
      x.selectedBy.filter((id) => this.policyModes.get(id) === mode);
    let rules: string[] = [];
    if (reason === 'deny-rule') rules = pick('deny', 'Enforce');
    else if (reason === 'audit-deny-rule') rules = pick('deny', 'Audit');
    if (rules.length > 0) {
      policy = rules.map((r) => r.split(' ')[0]).join(',');
      rule = rules.join(',');
    } else if (reason === 'default-deny' || reason === 'audit-default-deny') {
      policy = selected(reason === 'default-deny' ? 'Enforce' : 'Audit').join(',');
      rule = 'no allow rule matched';
    } else if (reason === 'l4-unknown') {
      policy = selected(verdict === 'drop' ? 'Enforce' : 'Audit').join(',');
      rule = 'transport header not readable: judged as any port, no port-less allow rule matched';
    } else if (reason === 'not-compiled') {
      policy = selected('Enforce').join(',');
      rule = 'policy did not compile: its pods are isolated with nothing allowed until it does';
    } else if (reason === 'map-full') {
      rule = 'not a policy decision: weir_ct (or weir_pod_ips) is full, so this may be a reply or own-address packet whose entry could not be kept';
    }
    return { policy, rule };
  }

  private kernelCounts(): KernelCountSample[] {
    const out: KernelCountSample[] = [];
    for (const [id, ep] of this.endpoints) out.push(...samplesOf(ep, this.datapath.counters(id)));
    return out;
  }

  /** The LRU hash maps, whose entries only a walk in the kernel can count (metrics read them at most every few seconds). */
  private lruMapUsage(): Record<string, { used: number; capacity: number }> {
    const c = this.datapath.capacities();
    return {
      weir_ct: { used: this.ct?.live ?? this.datapath.hashMapEntries('weir_ct'), capacity: c.conntrack },
      weir_agg: { used: this.datapath.hashMapEntries('weir_agg'), capacity: c.aggregation },
      ...this.fqdn.mapUsage(),
    };
  }

  private retireEndpoint(endpointId: number, final: EndpointCounters): void {
    const ep = this.endpoints.get(endpointId);
    if (ep) this.metrics.retire(samplesOf(ep, final));
  }

  private async listen(addr: string): Promise<void> {
    const { host, port } = parseHostPort(addr);
    const server = createServer((req, res) => {
      if (req.url === '/metrics') {
        this.registry
          .metrics()
          .then((body) => {
            res.writeHead(200, { 'content-type': this.registry.contentType });
            res.end(body);
          })
          .catch((err: unknown) => {
            res.writeHead(500);
            res.end(String(err));
          });
      } else if (req.url === '/healthz') {
        res.writeHead(this.stopped ? 503 : 200);
        res.end(this.stopped ? 'stopping\n' : 'ok\n');
      } else if (req.url === '/readyz') {
        res.writeHead(this.ready ? 200 : 503);
        res.end(this.ready ? 'ready\n' : 'not ready\n');
      } else {
        res.writeHead(404);
        res.end('not found\n');
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.server = server;
    const a = server.address();
    this.log.info({ address: typeof a === 'object' && a ? `${a.address}:${a.port}` : addr }, 'metrics listening');
  }

  metricsPort(): number | null {
    const a = this.server?.address();
    return typeof a === 'object' && a ? a.port : null;
  }

  /** Stops reading and reporting. Pinned programs and maps keep enforcing. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.scheduled) clearImmediate(this.scheduled);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.ctTimer) clearInterval(this.ctTimer);
    await this.applying;
    await this.source?.stop();
    await this.events?.stop();
    await this.api?.close();
    if (this.audit) {
      this.auditRecord('stop', { version: VERSION, node: this.opts.nodeName });
      await this.audit.close().catch((err: unknown) => this.log.error({ err }, 'closing the audit log failed'));
    }
    if (this.server) await new Promise<void>((r) => this.server?.close(() => r()));
    this.datapath.drainEvents();
    this.datapath.close();
    this.log.info('agent stopped; pinned programs keep enforcing the last policy');
  }
}

/**
 * The kernel's pids are those of the initial PID namespace; /proc shows
 * them only when the agent runs there (a DaemonSet without hostPID does not:
 * a lookup would find nothing, or another process of the agent's own pod).
 * 4026531836 is the initial PID namespace's fixed inode (PROC_PID_INIT_INO).
 */
const IN_HOST_PID_NAMESPACE = ((): boolean => {
  try {
    return readlinkSync('/proc/self/ns/pid') === 'pid:[4026531836]';
  } catch {
    return false;
  }
})();

/** The kernel reports the calling thread's name (Node's main thread is "MainThread"); name the process instead. */
function processName(pid: number): string | null {
  if (pid <= 0 || !IN_HOST_PID_NAMESPACE) return null;
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() || null;
  } catch {
    return null; // the process is gone
  }
}

function samplesOf(ep: EndpointLabels, c: EndpointCounters): KernelCountSample[] {
  const out: KernelCountSample[] = [];
  const base = { namespace: ep.namespace, workload: ep.workload, domain: ep.domain };
  for (const [verdict, v] of Object.entries(c.packets)) {
    if (v.packets > 0n) out.push({ ...base, kind: 'packet', verdict, packets: v.packets, bytes: v.bytes });
  }
  for (const [verdict, v] of Object.entries(c.sockets)) {
    if (v.packets > 0n) out.push({ ...base, kind: 'socket', verdict, packets: v.packets, bytes: 0n });
  }
  return out;
}

export function parseHostPort(addr: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(addr);
  if (!m) throw new Error(`invalid address ${JSON.stringify(addr)}: expected HOST:PORT (e.g. 0.0.0.0:9464 or [::1]:9464)`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`invalid port in ${JSON.stringify(addr)}`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

async function waitForPodsRoot(cgroupRoot: string, waitMs: number, log: Logger): Promise<PodsRoot> {
  const deadline = Date.now() + waitMs;
  let warned = false;
  for (;;) {
    const r = findPodsRoot(cgroupRoot);
    if (r) return r;
    if (Date.now() >= deadline) {
      throw new Error(
        `no kubepods or kubepods.slice directory under ${cgroupRoot}: is the kubelet running here? ` +
          'Pass --cgroup-root with the cgroup v2 directory that holds it.',
      );
    }
    if (!warned) {
      log.warn({ cgroupRoot }, 'waiting for the kubelet pods cgroup to appear');
      warned = true;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}
