// Prometheus metrics of the agent (prom-client), documented in docs/metrics.md.
//
// Cardinality: label values come only from bounded sets (namespace,
// workload, domain, verdict, reason, policy, map, outcome, kind). Never pod
// names, IPs, ports or UIDs. The `workload` label is the pod's controller
// ("Deployment/api", "Job/etl"); a pod without one is `Pod`, never
// "Pod/<name>": bare pods are often created by scripts with generated
// names, and their names are in the logs, Events and audit log anyway.
//
// Lifecycle of per-workload series: kernel counters are exported exactly,
// so a departing pod's final counts are kept in a retired total while its
// workload still has pods here (counters never go backwards). Once no pod
// of a workload (namespace, workload, domain) is left on this node, its
// series stay for `seriesLingerMs`, counted from the first scrape that finds
// it gone, and are then removed; a violation series naming a policy that no
// longer exists goes the same way. The linger lets the last scrapes see the
// final counts; Prometheus then marks the series stale. So the number of
// series follows the workloads present, not the pods that ever ran.
import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from 'prom-client';

export interface WorkloadKey {
  namespace: string;
  /** As workloadOf() names it ("Deployment/api", "Pod/runner-x7"); bare pods are folded to `Pod` here. */
  workload: string;
  domain: string;
}

export interface KernelCountSample extends WorkloadKey {
  kind: 'packet' | 'socket';
  verdict: string;
  packets: bigint;
  bytes: bigint;
}

export interface MapUsage {
  used: number;
  capacity: number;
}

export interface MetricsSources {
  /** Live kernel counters, one sample per endpoint, kind and verdict. */
  kernelCounts(): KernelCountSample[];
  /** The datapath's global counters (weir_stats), by STAT_NAMES name. */
  kernelStats(): Record<string, bigint>;
  /** Entries and capacity of the maps the agent tracks itself (cheap). */
  mapUsage(): Record<string, MapUsage>;
  /** Maps whose entries must be walked in the kernel (LRU hashes): read at most every SLOW_MAPS_MS. */
  slowMapUsage?(): Record<string, MapUsage>;
  /** The workloads with a governed pod on this node now (one entry per pod is fine). */
  liveWorkloads(): Iterable<WorkloadKey>;
  /** Ids of the policies in force ("EgressPolicy/ns/name"). Without it, violation series are kept per workload only. */
  livePolicies?(): Iterable<string>;
  /** Programs attached and first policy written (the /readyz answer). */
  ready?(): boolean;
  /** Events dropped so far by the agent's own bounded queues, by consumer (monotonic totals). */
  userspaceDrops?(): Record<string, number>;
}

export interface MetricsInfo {
  version: string;
  node: string;
  /** How long series of a workload that left this node stay exported (default 5 minutes). */
  seriesLingerMs?: number;
  /** Clock, for tests. */
  now?: () => number;
  /** Also export prom-client's process_* and nodejs_* metrics (default true). */
  processMetrics?: boolean;
}

/** The violation fields that become labels. */
export interface ViolationLabels extends WorkloadKey {
  verdict: string;
  reason: string;
  policy: string;
}

const DEFAULT_LINGER_MS = 5 * 60_000;
const SLOW_MAPS_MS = 5_000;

/** weir_reconcile_entries_total's label values, exported at 0 from the start. */
export const RECONCILE_MAPS = ['weir_pods', 'weir_pod_ips', 'weir_sets', 'weir_nodes', 'weir_trie_tails', 'weir_classes', 'weir_fqdn_keys', 'weir_dns_resolvers'] as const;
export const RECONCILE_ACTIONS = ['added', 'removed', 'rewritten'] as const;

/** Sync error kinds exported at 0 from the start, so `increase()` sees their first error. */
export const SYNC_ERROR_KINDS = ['manifest', 'watch', 'invalid-object', 'compile', 'datapath', 'audit-log'] as const;

/**
 * Where each kernel stat goes. Every name in STAT_NAMES (datapath/abi.ts)
 * must be here: test/unit/metrics.test.ts checks it.
 */
export const STAT_METRICS: Record<
  string,
  { metric: 'events' | 'parse' | 'conntrack' | 'aggFailed' | 'fragments' | 'l4Unknown' | 'dnsQueries' | 'dnsAnswers' | 'fqdnAddresses'; labels: Labels }
> = {
  events_sent: { metric: 'events', labels: { outcome: 'sent' } },
  events_lost: { metric: 'events', labels: { outcome: 'lost' } },
  events_aggregated: { metric: 'events', labels: { outcome: 'aggregated' } },
  parse_errors: { metric: 'parse', labels: {} },
  ct_insert: { metric: 'conntrack', labels: { result: 'ok' } },
  ct_insert_failed: { metric: 'conntrack', labels: { result: 'failed' } },
  agg_insert_failed: { metric: 'aggFailed', labels: {} },
  fragments: { metric: 'fragments', labels: {} },
  l4_unknown: { metric: 'l4Unknown', labels: {} },
  dns_queries: { metric: 'dnsQueries', labels: { outcome: 'tracked' } },
  dns_queries_not_allowed: { metric: 'dnsQueries', labels: { outcome: 'not-allowed' } },
  dns_queries_invalid: { metric: 'dnsQueries', labels: { outcome: 'invalid' } },
  dns_answers: { metric: 'dnsAnswers', labels: { outcome: 'learned-from' } },
  dns_ignored_no_query: { metric: 'dnsAnswers', labels: { outcome: 'no-query' } },
  dns_ignored_rcode: { metric: 'dnsAnswers', labels: { outcome: 'not-noerror' } },
  dns_ignored_invalid: { metric: 'dnsAnswers', labels: { outcome: 'invalid' } },
  fqdn_learned: { metric: 'fqdnAddresses', labels: { outcome: 'learned' } },
  fqdn_refused: { metric: 'fqdnAddresses', labels: { outcome: 'refused' } },
};

type Labels = Record<string, string>;

export type FqdnCounterKind = 'learned' | 'refused' | 'expired' | 'notAllowed';

function keyOf(l: Labels): string {
  return JSON.stringify(Object.entries(l).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** The `workload` label value: the controller, or `Pod` for a pod without one. */
export function workloadLabel(workload: string): string {
  return workload.startsWith('Pod/') ? 'Pod' : workload;
}

function workloadKeyOf(k: WorkloadKey): string {
  return keyOf({ namespace: k.namespace, workload: workloadLabel(k.workload), domain: k.domain });
}

/** Exports a monotonic kernel total as a prom-client counter by adding deltas. */
class DeltaCounter {
  private readonly last = new Map<string, { labels: Labels; total: number }>();
  constructor(readonly counter: Counter<string>) {}

  set(labels: Labels, total: number): void {
    const k = keyOf(labels);
    const prev = this.last.get(k);
    if (prev === undefined) this.counter.inc(labels, total); // exported from 0 on, even if 0
    else if (total > prev.total) this.counter.inc(labels, total - prev.total);
    else return; // never go backwards
    this.last.set(k, { labels, total });
  }

  removeWhere(pred: (labels: Labels) => boolean): void {
    for (const [k, v] of this.last) {
      if (!pred(v.labels)) continue;
      this.counter.remove(v.labels);
      this.last.delete(k);
    }
  }
}

export class AgentMetrics {
  readonly violations: Counter<'namespace' | 'workload' | 'domain' | 'verdict' | 'reason' | 'policy'>;
  readonly policyGeneration: Gauge;
  readonly compileDuration: Histogram;
  readonly syncErrors: Counter<'kind'>;
  /** Policies (and policy sets) whose latest version could not be compiled, now. */
  readonly policyCompileFailing: Gauge;
  readonly podsGoverned: Gauge;
  readonly podsPendingCgroup: Gauge;
  readonly cgroupRetries: Counter;
  readonly eventsDroppedUserspace: Counter<'consumer'>;
  readonly unknownRecords: Counter<'type'>;
  readonly mapWrites: Counter<'what'>;
  /** What the first apply after start changed in the pinned maps it adopted. */
  readonly reconcileEntries: Counter<'map' | 'action'>;
  /** DNS learning per workload, from the datapath's DNS records and the agent's sweep (see fqdn()). */
  private readonly fqdnCounters: Record<FqdnCounterKind, Counter<string>>;

  private readonly lingerMs: number;
  private readonly now: () => number;
  /** Final counts of departed pods, by series (labels include `kind`), while their workload lives. */
  private readonly retired = new Map<string, { labels: Labels; packets: bigint; bytes: bigint }>();
  /** Violation series, for removing them. */
  private readonly violationSeries = new Map<string, Labels>();
  /**
   * violation()'s series by a key made without sorting, and the count each
   * has collected since the last flush; emptied when a series or workload is
   * removed (sweep), so a violation after it enters them again.
   */
  private readonly violationCounts = new Map<string, ViolationCount>();
  /** The series of violationCounts with a count to add, in the order they were first counted. */
  private violationQueue: ViolationCount[] = [];
  /** The series violation() counted last (one of violationCounts). */
  private lastViolationCount: ViolationCount | undefined;
  /** Workloads that have series, and since when each has had no pod here. */
  private readonly workloads = new Map<string, { key: Labels; goneSince: number | null }>();
  private readonly policiesGone = new Map<string, number>();
  private slowMaps: { at: number; usage: Record<string, MapUsage> } | null = null;
  /** Series of the fqdn counters, and since when their (namespace, workload) has had no pod here. */
  private readonly fqdnSeries = new Map<string, { kind: FqdnCounterKind; labels: Labels; goneSince: number | null }>();

  constructor(
    registry: Registry,
    private readonly sources: MetricsSources,
    info: MetricsInfo,
  ) {
    this.lingerMs = info.seriesLingerMs ?? DEFAULT_LINGER_MS;
    this.now = info.now ?? Date.now;
    const registers = [registry];
    // One collection per scrape, shared by every metric that reads the kernel.
    // registry.metrics() calls every metric's get(), hence collect(),
    // synchronously before awaiting any: all of one scrape join the promise
    // made by the first, and the next scrape makes a new one.
    let collecting: Promise<void> | null = null;
    const collect = async (): Promise<void> => {
      collecting ??= Promise.resolve().then(() => {
        collecting = null;
        this.collectKernel();
      });
      await collecting;
    };
    const wl = ['namespace', 'workload', 'domain', 'verdict'] as const;

    const packets = new Counter({
      name: 'weir_datapath_packets_total',
      help: 'Pod egress packets judged by the cgroup_skb egress program (exact, from per-CPU kernel counters), by workload and verdict.',
      labelNames: wl,
      registers,
      collect,
    });
    const bytes = new Counter({
      name: 'weir_datapath_bytes_total',
      help: 'Bytes of pod egress packets judged in the kernel, by workload and verdict.',
      labelNames: wl,
      registers,
      collect,
    });
    const sockets = new Counter({
      name: 'weir_datapath_socket_verdicts_total',
      help: 'connect() and sendmsg() calls of pods judged by the socket hooks, by workload and verdict.',
      labelNames: wl,
      registers,
      collect,
    });
    this.violations = new Counter({
      name: 'weir_violations_total',
      help: 'Egress violations reported by the datapath (drops and audit would-drops), by workload, policy and reason. Counts every violation an event stands for.',
      labelNames: ['namespace', 'workload', 'domain', 'verdict', 'reason', 'policy'],
      registers,
      collect,
    });
    const kernelEvents = new Counter({
      name: 'weir_datapath_events_total',
      help: 'Violation events in the kernel by outcome: sent to the ring buffer, lost (ring buffer full; the count rides on the flow\'s next event), aggregated into a later event.',
      labelNames: ['outcome'],
      registers,
      collect,
    });
    const parseErrors = new Counter({
      name: 'weir_datapath_parse_errors_total',
      help: 'Pod packets the datapath could not parse (truncated or not IP); they are passed and counted.',
      registers,
      collect,
    });
    const conntrack = new Counter({
      name: 'weir_datapath_conntrack_inserts_total',
      help: 'Inbound flows recorded in weir_ct so their replies pass, by result (failed: the map refused the entry).',
      labelNames: ['result'],
      registers,
      collect,
    });
    const aggFailed = new Counter({
      name: 'weir_datapath_aggregation_insert_failures_total',
      help: 'Violation flows that could not be entered in weir_agg (each of their violations is then sent as its own event).',
      registers,
      collect,
    });
    const fragments = new Counter({
      name: 'weir_datapath_fragments_total',
      help: 'Non-first IP fragments, judged by address only (no ports in them).',
      registers,
      collect,
    });
    const l4Unknown = new Counter({
      name: 'weir_datapath_l4_unknown_total',
      help: 'Pod packets whose transport header could not be read (truncated, or an IPv6 extension header chain too long): judged as going to every port of their protocol.',
      registers,
      collect,
    });
    const dnsQueries = new Counter({
      name: 'weir_datapath_dns_queries_total',
      help: 'DNS queries of pods with fqdn rules to a trusted resolver, by outcome: tracked (a key matched; its answer may teach), not-allowed (no rule allows the name), invalid (not a query weir parses).',
      labelNames: ['outcome'],
      registers,
      collect,
    });
    const dnsAnswers = new Counter({
      name: 'weir_datapath_dns_answers_total',
      help: 'DNS answers from a trusted resolver to pods with fqdn rules, by outcome: learned-from, no-query (no unexpired query waits for it: late, second or forged), not-noerror (an error code or truncated), invalid (malformed, or not the question asked).',
      labelNames: ['outcome'],
      registers,
      collect,
    });
    const fqdnAddresses = new Counter({
      name: 'weir_datapath_fqdn_addresses_total',
      help: 'Addresses of DNS answers, by outcome: learned (a name newly learned on an address), refused (not learned: the address has 4 live names for the pod, or weir_fqdn_learned is full).',
      labelNames: ['outcome'],
      registers,
      collect,
    });
    const mapEntries = new Gauge({
      name: 'weir_map_entries',
      help: 'Entries in use per BPF map (raw number; divide by weir_map_capacity for a ratio).',
      labelNames: ['map'],
      registers,
      collect,
    });
    const mapCapacity = new Gauge({
      name: 'weir_map_capacity',
      help: 'Capacity (max entries) per BPF map.',
      labelNames: ['map'],
      registers,
      collect,
    });
    const workloadsKnown = new Gauge({
      name: 'weir_workloads_known',
      help: 'Workloads (controllers; each bare pod counts as one) with a governed pod on this node.',
      registers,
      collect,
    });
    const ready = new Gauge({
      name: 'weir_agent_ready',
      help: '1 once the programs are attached and the first policy is written (as /readyz), else 0.',
      registers,
      collect: () => {
        ready.set(this.sources.ready?.() === false ? 0 : 1);
      },
    });

    this.policyGeneration = new Gauge({
      name: 'weir_policy_generation',
      help: 'Generation of the policy currently written to the datapath.',
      registers,
    });
    this.compileDuration = new Histogram({
      name: 'weir_policy_compile_duration_seconds',
      help: 'Time from a model change to the maps being written.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    this.syncErrors = new Counter({
      name: 'weir_policy_sync_errors_total',
      help: 'Errors while reading, compiling or writing policy, by kind (manifest, watch, invalid-object, compile, datapath, audit-log).',
      labelNames: ['kind'],
      registers,
    });
    for (const kind of SYNC_ERROR_KINDS) this.syncErrors.inc({ kind }, 0);
    this.policyCompileFailing = new Gauge({
      name: 'weir_policy_compile_failing',
      help: 'Policies and policy sets whose latest version could not be compiled (ignored, or their last good version stays in force).',
      registers,
    });
    this.podsGoverned = new Gauge({
      name: 'weir_pods_governed',
      help: 'Pods on this node that the datapath governs.',
      registers,
    });
    this.podsPendingCgroup = new Gauge({
      name: 'weir_pods_pending_cgroup',
      help: 'Pods on this node whose cgroup has not been found yet (retried).',
      registers,
    });
    this.cgroupRetries = new Counter({
      name: 'weir_pod_cgroup_retries_total',
      help: 'Lookups of a pod cgroup that found nothing and will be retried.',
      registers,
    });
    this.eventsDroppedUserspace = new Counter({
      name: 'weir_events_dropped_userspace_total',
      help: 'Decoded events dropped in the agent because one of its queues was full, by consumer (kernel-side losses are weir_datapath_events_total{outcome="lost"}).',
      labelNames: ['consumer'],
      registers,
      collect,
    });
    const userspaceDrops = new DeltaCounter(this.eventsDroppedUserspace);
    this.unknownRecords = new Counter({
      name: 'weir_datapath_unknown_records_total',
      help: 'Ring buffer records of a type this agent does not know (skipped).',
      labelNames: ['type'],
      registers,
    });
    this.mapWrites = new Counter({
      name: 'weir_map_writes_total',
      help: 'Map entries written by policy updates, by what was written.',
      labelNames: ['what'],
      registers,
    });
    this.reconcileEntries = new Counter({
      name: 'weir_reconcile_entries_total',
      help: 'Entries of the pinned policy maps the first apply after start changed to match the desired state (a previous agent left them; stale or edited behind its back), by map and action (added, removed, rewritten).',
      labelNames: ['map', 'action'],
      registers,
    });
    for (const map of RECONCILE_MAPS) for (const action of RECONCILE_ACTIONS) this.reconcileEntries.inc({ map, action }, 0);
    // Per workload, from the DNS records (one per newly learned name on an
    // address; refusals and intents carry how many they stand for). The
    // node totals, exact even when records are lost, are
    // weir_datapath_fqdn_addresses_total and weir_datapath_dns_queries_total.
    this.fqdnCounters = {
      learned: new Counter({
        name: 'weir_fqdn_learned_total',
        help: 'Names newly learned on an address from a DNS answer (DNS-aware egress), by workload: the pod may reach the address on what its fqdn rules allow until the record expires. Refreshes are not counted.',
        labelNames: ['namespace', 'workload'],
        registers,
      }),
      refused: new Counter({
        name: 'weir_fqdn_refused_total',
        help: 'Addresses of DNS answers that were not learned, by workload and reason: slots-full (the address already has 4 live names for the pod) or map-full (weir_fqdn_learned is full). Connections to them are refused as to an unknown address.',
        labelNames: ['namespace', 'workload', 'reason'],
        registers,
      }),
      expired: new Counter({
        name: 'weir_fqdn_expired_total',
        help: 'Learned names the agent deleted from weir_fqdn_learned, by workload: expired (TTL, clamped, plus grace) and unused for longer than the conntrack timeout.',
        labelNames: ['namespace', 'workload'],
        registers,
      }),
      notAllowed: new Counter({
        name: 'weir_fqdn_queries_not_allowed_total',
        help: 'DNS queries of pods under fqdn rules for a name no rule of theirs allows (an attempt to reach an unapproved destination, e.g. a model API), by workload. Each is logged and audited; its answer teaches nothing.',
        labelNames: ['namespace', 'workload'],
        registers,
      }),
    };
    new Gauge({
      name: 'weir_build_info',
      help: 'Build information of the agent (always 1).',
      labelNames: ['version', 'node'],
      registers,
    }).set({ version: info.version, node: info.node }, 1);
    const deltas = {
      packets: new DeltaCounter(packets),
      bytes: new DeltaCounter(bytes),
      sockets: new DeltaCounter(sockets),
      events: new DeltaCounter(kernelEvents),
      parse: new DeltaCounter(parseErrors),
      conntrack: new DeltaCounter(conntrack),
      aggFailed: new DeltaCounter(aggFailed),
      fragments: new DeltaCounter(fragments),
      l4Unknown: new DeltaCounter(l4Unknown),
      dnsQueries: new DeltaCounter(dnsQueries),
      dnsAnswers: new DeltaCounter(dnsAnswers),
      fqdnAddresses: new DeltaCounter(fqdnAddresses),
    };
    this.collectKernel = () => {
      // What the current batch counted, before a sweep may remove its series.
      this.flushViolations();
      const totals = new Map<string, { labels: Labels; packets: bigint; bytes: bigint }>();
      for (const [k, r] of this.retired) totals.set(k, { labels: r.labels, packets: r.packets, bytes: r.bytes });
      for (const s of this.sources.kernelCounts()) {
        const labels = seriesLabels(s);
        const k = keyOf(labels);
        const t = totals.get(k) ?? { labels, packets: 0n, bytes: 0n };
        t.packets += s.packets;
        t.bytes += s.bytes;
        totals.set(k, t);
      }
      for (const t of totals.values()) {
        const { kind, ...labels } = t.labels;
        this.touchWorkload(labels as unknown as WorkloadKey);
        if (kind === 'socket') deltas.sockets.set(labels, Number(t.packets));
        else {
          deltas.packets.set(labels, Number(t.packets));
          deltas.bytes.set(labels, Number(t.bytes));
        }
      }
      for (const [consumer, n] of Object.entries(this.sources.userspaceDrops?.() ?? {})) userspaceDrops.set({ consumer }, n);
      const st = this.sources.kernelStats();
      for (const [name, to] of Object.entries(STAT_METRICS)) deltas[to.metric].set(to.labels, Number(st[name] ?? 0n));

      mapEntries.reset();
      mapCapacity.reset();
      const t = this.now();
      if (this.sources.slowMapUsage && (!this.slowMaps || t - this.slowMaps.at >= SLOW_MAPS_MS)) {
        this.slowMaps = { at: t, usage: this.sources.slowMapUsage() };
      }
      for (const [map, u] of Object.entries({ ...this.sources.mapUsage(), ...this.slowMaps?.usage })) {
        mapEntries.set({ map }, u.used);
        mapCapacity.set({ map }, u.capacity);
      }

      const live = new Set<string>();
      const raw = new Set<string>();
      const liveFqdn = new Set<string>();
      for (const w of this.sources.liveWorkloads()) {
        live.add(workloadKeyOf(w));
        raw.add(`${w.namespace}\n${w.workload}`);
        liveFqdn.add(`${w.namespace}\n${workloadLabel(w.workload)}`);
      }
      workloadsKnown.set(raw.size);
      this.sweep(live, [deltas.packets, deltas.bytes, deltas.sockets]);
      this.sweepFqdn(liveFqdn, t);
    };

    if (info.processMetrics !== false) {
      collectDefaultMetrics({ register: registry });
      // Gauges whose names end in _total (promtool rejects them); nodejs_active_handles etc. carry the same numbers.
      for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
    }
  }

  /** Reads the kernel and refreshes every derived series; set up in the constructor. */
  private readonly collectKernel: () => void;

  /**
   * Counts `count` violations of one flow. The counts of a batch of events
   * (one turn of the event loop) are added up per series and reach the
   * counter once per series, at the end of the batch (a microtask) or when
   * the metrics are read, whichever comes first: prom-client's inc() hashes
   * the label set on every call, and keyOf() sorted and stringified it twice
   * per event, which made this a sixth of a violation's CPU.
   */
  violation(v: ViolationLabels, count = 1): void {
    const workload = workloadLabel(v.workload);
    // Not a count inc() accepts as it is (negative: it throws; not finite:
    // it says why): straight to the counter, as before.
    if (!(count >= 0 && Number.isFinite(count))) {
      this.violations.inc({ namespace: v.namespace, workload, domain: v.domain, verdict: v.verdict, reason: v.reason, policy: v.policy }, count);
      return;
    }
    // Most events of a batch are of the series of the one before: no key to make then.
    let s = this.lastViolationCount;
    if (s === undefined || !sameViolationLabels(s.labels, v, workload)) {
      const k = `${v.namespace}\n${workload}\n${v.domain}\n${v.verdict}\n${v.reason}\n${v.policy}`;
      s = this.violationCounts.get(k);
      // The key is only a hint (a value could hold a newline): the series is the one whose labels are equal.
      if (s === undefined || !sameViolationLabels(s.labels, v, workload)) {
        const labels = { namespace: v.namespace, workload, domain: v.domain, verdict: v.verdict, reason: v.reason, policy: v.policy };
        s = { labels, pending: 0, queued: false };
        this.violationCounts.set(k, s);
        this.violationSeries.set(keyOf(labels), labels);
        this.touchWorkload(labels);
      }
      this.lastViolationCount = s;
    }
    s.pending += count;
    if (!s.queued) {
      s.queued = true;
      this.violationQueue.push(s);
      if (this.violationQueue.length === 1) queueMicrotask(this.flushViolationsNow);
    }
  }

  /** Adds the counts violation() collected to weir_violations_total. */
  flushViolations(): void {
    const q = this.violationQueue;
    if (q.length === 0) return;
    this.violationQueue = [];
    for (const s of q) {
      const n = s.pending;
      s.pending = 0;
      s.queued = false;
      this.violations.inc(s.labels, n);
    }
  }

  private readonly flushViolationsNow = (): void => this.flushViolations();

  /**
   * Counts DNS-learning outcomes of a workload: learned, refused (with
   * `reason`), expired, notAllowed (queries for names no rule allows).
   * Series of a workload gone from the node go after the linger, like the
   * others.
   */
  fqdn(kind: FqdnCounterKind, w: { namespace: string; workload: string }, n = 1, reason?: string): void {
    if (n <= 0) return;
    const labels: Labels = { namespace: w.namespace, workload: workloadLabel(w.workload), ...(reason !== undefined ? { reason } : {}) };
    this.fqdnCounters[kind].inc(labels, n);
    const k = `${kind}\n${keyOf(labels)}`;
    const s = this.fqdnSeries.get(k);
    if (s) s.goneSince = null;
    else this.fqdnSeries.set(k, { kind, labels, goneSince: null });
  }

  private sweepFqdn(live: Set<string>, t: number): void {
    for (const [k, s] of this.fqdnSeries) {
      if (s.labels.workload === '' || live.has(`${s.labels.namespace}\n${s.labels.workload}`)) s.goneSince = null;
      else if (s.goneSince === null) s.goneSince = t;
      if (s.goneSince !== null && t - s.goneSince >= this.lingerMs) {
        this.fqdnCounters[s.kind].remove(s.labels);
        this.fqdnSeries.delete(k);
      }
    }
  }

  /** Keeps a departing pod's final kernel counts in the exported totals. */
  retire(samples: KernelCountSample[]): void {
    for (const s of samples) {
      const labels = seriesLabels(s);
      const k = keyOf(labels);
      const r = this.retired.get(k) ?? { labels, packets: 0n, bytes: 0n };
      r.packets += s.packets;
      r.bytes += s.bytes;
      this.retired.set(k, r);
    }
  }

  private touchWorkload(l: WorkloadKey): void {
    const key = { namespace: l.namespace, workload: workloadLabel(l.workload), domain: l.domain };
    const k = keyOf(key);
    if (!this.workloads.has(k)) this.workloads.set(k, { key, goneSince: null });
  }

  /** Removes the series of workloads gone for longer than the linger, and of violations naming removed policies. */
  private sweep(live: Set<string>, perWorkload: DeltaCounter[]): void {
    const t = this.now();
    const expired = new Set<string>();
    for (const [k, w] of this.workloads) {
      // Events from a pod the agent does not know (gone already) have no workload: one bounded series set, kept.
      if (live.has(k) || w.key.workload === '') w.goneSince = null;
      else if (w.goneSince === null) w.goneSince = t;
      if (w.goneSince !== null && t - w.goneSince >= this.lingerMs) expired.add(k);
    }
    const ofExpired = (l: Labels): boolean => expired.has(workloadKeyOf(l as unknown as WorkloadKey));
    if (expired.size > 0) {
      for (const d of perWorkload) d.removeWhere(ofExpired);
      for (const [k, r] of this.retired) if (ofExpired(r.labels)) this.retired.delete(k);
      for (const k of expired) this.workloads.delete(k);
      this.violationCounts.clear();
      this.lastViolationCount = undefined;
    }

    let policyExpired = (_: string): boolean => false;
    if (this.sources.livePolicies) {
      const livePolicies = new Set(this.sources.livePolicies());
      const named = new Set<string>();
      for (const l of this.violationSeries.values()) for (const p of policiesOf(l.policy)) named.add(p);
      for (const p of named) {
        if (livePolicies.has(p)) this.policiesGone.delete(p);
        else if (!this.policiesGone.has(p)) this.policiesGone.set(p, t);
      }
      for (const p of this.policiesGone.keys()) if (!named.has(p)) this.policiesGone.delete(p);
      policyExpired = (p) => {
        const since = this.policiesGone.get(p);
        return since !== undefined && t - since >= this.lingerMs;
      };
    }
    for (const [k, l] of this.violationSeries) {
      if (ofExpired(l) || policiesOf(l.policy).some(policyExpired)) {
        this.violations.remove(l);
        this.violationSeries.delete(k);
        this.violationCounts.clear();
        this.lastViolationCount = undefined;
      }
    }
  }
}

interface ViolationCount {
  labels: Labels;
  /** Counted by violation() and not yet added to the counter. */
  pending: number;
  /** In violationQueue. */
  queued: boolean;
}

function sameViolationLabels(l: Labels, v: ViolationLabels, workload: string): boolean {
  return l.namespace === v.namespace && l.workload === workload && l.domain === v.domain && l.verdict === v.verdict && l.reason === v.reason && l.policy === v.policy;
}

function seriesLabels(s: KernelCountSample): Labels {
  return { namespace: s.namespace, workload: workloadLabel(s.workload), domain: s.domain, verdict: s.verdict, kind: s.kind };
}

function policiesOf(policy: string | undefined): string[] {
  return policy ? policy.split(',') : [];
}
