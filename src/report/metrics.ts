// Prometheus metrics of the agent (prom-client). Label values come only from
// bounded sets: namespace, workload, domain, verdict, reason, policy. Never
// pod names, IPs, ports or UIDs. Kernel counters are exported exactly: a
// pod's final counts are kept in a retired total when it goes away, so the
// exported counters never go backwards.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface WorkloadKey {
  namespace: string;
  workload: string;
  domain: string;
}

export interface KernelCountSample extends WorkloadKey {
  kind: 'packet' | 'socket';
  verdict: string;
  packets: bigint;
  bytes: bigint;
}

export interface MetricsSources {
  /** Live kernel counters, one sample per endpoint, kind and verdict. */
  kernelCounts(): KernelCountSample[];
  kernelStats(): Record<string, bigint>;
  mapUsage(): Record<string, { used: number; capacity: number }>;
}

type Labels = Record<string, string>;

function keyOf(l: Labels): string {
  return JSON.stringify(Object.entries(l).sort());
}

/** Exports a monotonic kernel total as a prom-client counter by adding deltas. */
class DeltaCounter {
  private readonly last = new Map<string, number>();
  constructor(private readonly counter: Counter<string>) {}
  set(labels: Labels, total: number): void {
    const k = keyOf(labels);
    const prev = this.last.get(k) ?? 0;
    if (total > prev) this.counter.inc(labels, total - prev);
    else if (total < prev) return; // never go backwards
    this.last.set(k, total);
  }
}

export class AgentMetrics {
  readonly violations: Counter<'namespace' | 'workload' | 'domain' | 'verdict' | 'reason' | 'policy'>;
  readonly policyGeneration: Gauge;
  readonly compileDuration: Histogram;
  readonly syncErrors: Counter<'kind'>;
  readonly workloadsKnown: Gauge;
  readonly podsPendingCgroup: Gauge;
  readonly cgroupRetries: Counter;
  readonly eventsDroppedUserspace: Counter;
  readonly unknownRecords: Counter<'type'>;
  readonly mapWrites: Counter<'what'>;

  private readonly retired = new Map<string, { labels: Labels; packets: bigint; bytes: bigint }>();

  constructor(
    registry: Registry,
    private readonly sources: MetricsSources,
    info: { version: string; node: string },
  ) {
    const packets = new Counter({
      name: 'weir_datapath_packets_total',
      help: 'Pod egress packets judged by the cgroup_skb egress program (exact, from per-CPU kernel counters), by verdict.',
      labelNames: ['namespace', 'workload', 'domain', 'verdict'],
      registers: [registry],
    });
    const bytes = new Counter({
      name: 'weir_datapath_bytes_total',
      help: 'Bytes of pod egress packets judged in the kernel, by verdict.',
      labelNames: ['namespace', 'workload', 'domain', 'verdict'],
      registers: [registry],
    });
    const sockets = new Counter({
      name: 'weir_datapath_socket_verdicts_total',
      help: 'connect() and sendmsg() calls of pods judged by the socket hooks, by verdict.',
      labelNames: ['namespace', 'workload', 'domain', 'verdict'],
      registers: [registry],
    });
    const kernelEvents = new Counter({
      name: 'weir_datapath_events_total',
      help: 'Violation events in the kernel by outcome: sent to the ring buffer, lost (ring buffer full), aggregated into a later event.',
      labelNames: ['outcome'],
      registers: [registry],
    });
    const parseErrors = new Counter({
      name: 'weir_datapath_parse_errors_total',
      help: 'Pod packets the datapath could not parse (truncated or not IP); they are passed and counted.',
      registers: [registry],
    });
    const mapEntries = new Gauge({
      name: 'weir_map_entries',
      help: 'Entries in use per BPF map (raw number; divide by weir_map_capacity for a ratio).',
      labelNames: ['map'],
      registers: [registry],
    });
    const mapCapacity = new Gauge({
      name: 'weir_map_capacity',
      help: 'Capacity (max entries) per BPF map.',
      labelNames: ['map'],
      registers: [registry],
    });

    const dPackets = new DeltaCounter(packets);
    const dBytes = new DeltaCounter(bytes);
    const dSockets = new DeltaCounter(sockets);
    const dEvents = new DeltaCounter(kernelEvents);
    const dParse = new DeltaCounter(parseErrors);
    const collectKernel = (): void => {
      const totals = new Map<string, { labels: Labels; kind: string; packets: bigint; bytes: bigint }>();
      for (const r of this.retired.values()) {
        const k = keyOf(r.labels);
        totals.set(k, { labels: r.labels, kind: r.labels.kind ?? 'packet', packets: r.packets, bytes: r.bytes });
      }
      for (const s of this.sources.kernelCounts()) {
        const labels = { namespace: s.namespace, workload: s.workload, domain: s.domain, verdict: s.verdict, kind: s.kind };
        const k = keyOf(labels);
        const t = totals.get(k) ?? { labels, kind: s.kind, packets: 0n, bytes: 0n };
        t.packets += s.packets;
        t.bytes += s.bytes;
        totals.set(k, t);
      }
      for (const t of totals.values()) {
        const { kind, ...labels } = t.labels;
        if (kind === 'socket') dSockets.set(labels, Number(t.packets));
        else {
          dPackets.set(labels, Number(t.packets));
          dBytes.set(labels, Number(t.bytes));
        }
      }
      const st = this.sources.kernelStats();
      dEvents.set({ outcome: 'sent' }, Number(st.events_sent ?? 0n));
      dEvents.set({ outcome: 'lost' }, Number(st.events_lost ?? 0n));
      dEvents.set({ outcome: 'aggregated' }, Number(st.events_aggregated ?? 0n));
      dParse.set({}, Number(st.parse_errors ?? 0n));
      for (const [map, u] of Object.entries(this.sources.mapUsage())) {
        mapEntries.set({ map }, u.used);
        mapCapacity.set({ map }, u.capacity);
      }
    };
    // One collection per scrape; prom-client calls collect() of each metric.
    let collecting: Promise<void> | null = null;
    const hook = async (): Promise<void> => {
      collecting ??= Promise.resolve().then(() => {
        collectKernel();
        setImmediate(() => (collecting = null));
      });
      await collecting;
    };
    for (const m of [packets, bytes, sockets, kernelEvents, parseErrors, mapEntries, mapCapacity]) {
      (m as unknown as { collect: () => Promise<void> }).collect = hook;
    }

    this.violations = new Counter({
      name: 'weir_violations_total',
      help: 'Egress violations reported by the datapath (drops and audit verdicts), by policy and reason. Counts every violation an event stands for.',
      labelNames: ['namespace', 'workload', 'domain', 'verdict', 'reason', 'policy'],
      registers: [registry],
    });
    this.policyGeneration = new Gauge({
      name: 'weir_policy_generation',
      help: 'Generation of the policy currently written to the datapath.',
      registers: [registry],
    });
    this.compileDuration = new Histogram({
      name: 'weir_policy_compile_duration_seconds',
      help: 'Time from a model change to the maps being written.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    });
    this.syncErrors = new Counter({
      name: 'weir_policy_sync_errors_total',
      help: 'Errors while reading, compiling or writing policy, by kind (manifest, compile, datapath).',
      labelNames: ['kind'],
      registers: [registry],
    });
    this.workloadsKnown = new Gauge({
      name: 'weir_workloads_known',
      help: 'Pods on this node that the datapath governs.',
      registers: [registry],
    });
    this.podsPendingCgroup = new Gauge({
      name: 'weir_pods_pending_cgroup',
      help: 'Pods on this node whose cgroup has not been found yet (retried).',
      registers: [registry],
    });
    this.cgroupRetries = new Counter({
      name: 'weir_pod_cgroup_retries_total',
      help: 'Lookups of a pod cgroup that found nothing and will be retried.',
      registers: [registry],
    });
    this.eventsDroppedUserspace = new Counter({
      name: 'weir_events_dropped_userspace_total',
      help: 'Decoded events dropped in the agent because its queue was full (kernel-side losses are in weir_datapath_events_total{outcome="lost"}).',
      registers: [registry],
    });
    this.unknownRecords = new Counter({
      name: 'weir_datapath_unknown_records_total',
      help: 'Ring buffer records of a type this agent does not know (skipped).',
      labelNames: ['type'],
      registers: [registry],
    });
    this.mapWrites = new Counter({
      name: 'weir_map_writes_total',
      help: 'Map entries written by policy updates, by what was written.',
      labelNames: ['what'],
      registers: [registry],
    });
    new Gauge({
      name: 'weir_build_info',
      help: 'Build information of the agent (always 1).',
      labelNames: ['version', 'node'],
      registers: [registry],
    }).set({ version: info.version, node: info.node }, 1);
  }

  /** Keeps a departing pod's final kernel counts in the exported totals. */
  retire(samples: KernelCountSample[]): void {
    for (const s of samples) {
      const labels = { namespace: s.namespace, workload: s.workload, domain: s.domain, verdict: s.verdict, kind: s.kind };
      const k = keyOf(labels);
      const r = this.retired.get(k) ?? { labels, packets: 0n, bytes: 0n };
      r.packets += s.packets;
      r.bytes += s.bytes;
      this.retired.set(k, r);
    }
  }
}
