// AgentMetrics driven by hand: bounded labels, exact kernel totals, and
// series of departed workloads removed, so churn leaves the series count flat.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { STAT_NAMES } from '../../src/datapath/abi.js';
import { AgentMetrics, STAT_METRICS, workloadLabel, type KernelCountSample, type MetricsSources, type WorkloadKey } from '../../src/report/metrics.js';

interface FakePod extends WorkloadKey {
  name: string;
  uid: string;
  ip: string;
  packets: bigint;
}

/** A node as the metrics see it: pods with kernel counters, policies, a clock. */
class FakeNode implements MetricsSources {
  pods = new Map<string, FakePod>();
  policies = new Set<string>(['EgressPolicy/ml/train-data']);
  stats: Record<string, bigint> = { events_sent: 0n, events_lost: 0n };
  clock = 1_000_000;
  readonly registry = new Registry();
  readonly metrics: AgentMetrics;

  constructor(lingerMs = 60_000) {
    this.metrics = new AgentMetrics(this.registry, this, { version: '0.0.0-test', node: 'node-a', seriesLingerMs: lingerMs, now: () => this.clock, processMetrics: false });
  }

  kernelCounts(): KernelCountSample[] {
    return [...this.pods.values()].flatMap((p) => samples(p));
  }
  kernelStats(): Record<string, bigint> {
    return this.stats;
  }
  mapUsage(): Record<string, { used: number; capacity: number }> {
    return { weir_pods: { used: this.pods.size, capacity: 4096 } };
  }
  liveWorkloads(): Iterable<WorkloadKey> {
    return this.pods.values();
  }
  livePolicies(): Iterable<string> {
    return this.policies;
  }

  add(p: Omit<FakePod, 'packets'>, packets = 10n): FakePod {
    const pod = { ...p, packets };
    this.pods.set(p.uid, pod);
    // Every pod gets a violation too, so every label path is exercised.
    this.metrics.violation({ namespace: p.namespace, workload: p.workload, domain: p.domain, verdict: 'drop', reason: 'default-deny', policy: 'EgressPolicy/ml/train-data' }, 2);
    // And every DNS-learning outcome: those series follow the workload too.
    for (const kind of ['learned', 'expired', 'notAllowed'] as const) this.metrics.fqdn(kind, p, 1);
    this.metrics.fqdn('refused', p, 2, 'slots-full');
    return pod;
  }

  remove(uid: string): void {
    const p = this.pods.get(uid);
    if (!p) return;
    this.metrics.retire(samples(p)); // as the datapath does before clearing the endpoint's counters
    this.pods.delete(uid);
  }

  async scrape(): Promise<string> {
    return this.registry.metrics();
  }
}

function samples(p: FakePod): KernelCountSample[] {
  const base = { namespace: p.namespace, workload: p.workload, domain: p.domain };
  return [
    { ...base, kind: 'packet', verdict: 'allow', packets: p.packets, bytes: p.packets * 100n },
    { ...base, kind: 'packet', verdict: 'drop', packets: 1n, bytes: 60n },
    { ...base, kind: 'socket', verdict: 'drop', packets: 1n, bytes: 0n },
  ];
}

function series(text: string): string[] {
  return text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));
}

function value(text: string, name: string, labels: Record<string, string>): number | null {
  for (const l of series(text)) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(l);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return null;
}

let seq = 0;
function pod(namespace: string, workload: string, domain: string, name: string): Omit<FakePod, 'packets'> {
  seq++;
  return { namespace, workload, domain, name, uid: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`, ip: `10.244.${(seq >> 8) & 255}.${seq & 255}` };
}

describe('AgentMetrics', () => {
  it('the number of series is the same after 1,000 pods came and went as before (Jobs, bare pods, Deployment replicas)', async () => {
    const node = new FakeNode(60_000);
    // Steady state: a Deployment and a StatefulSet that stay for the whole test.
    node.add(pod('ml', 'Deployment/feature-store', 'train-data', 'feature-store-7d9c-abcde'));
    node.add(pod('ml', 'Deployment/feature-store', 'train-data', 'feature-store-7d9c-fghij'));
    node.add(pod('serving', 'StatefulSet/model', 'prod-model', 'model-0'));
    const before = series(await node.scrape());
    expect(before.length).toBeGreaterThan(10);

    let peak = 0;
    const kinds = [
      (i: number) => pod('ml', `Job/etl-${i}`, 'train-data', `etl-${i}-x${i}`), // a new workload each time
      (i: number) => pod('ml', `Pod/runner-${i}`, 'train-data', `runner-${i}`), // bare pods: one `Pod` workload
      (i: number) => pod('ml', 'Deployment/feature-store', 'train-data', `feature-store-7d9c-${i}`), // a replica of a live workload
      (i: number) => pod('batch', 'CronJob/nightly', '', `nightly-2891${i}-q${i}`), // the CronJob's next run
    ];
    // 1,000 pods in waves of 50: each wave starts, sends traffic, is scraped, and goes away.
    for (let wave = 0; wave < 20; wave++) {
      const started: FakePod[] = [];
      for (let j = 0; j < 50; j++) {
        const i = wave * 50 + j;
        started.push(node.add((kinds[i % kinds.length] as (i: number) => Omit<FakePod, 'packets'>)(i)));
      }
      peak = Math.max(peak, series(await node.scrape()).length);
      for (const p of started) node.remove(p.uid);
      node.clock += 10_000;
      await node.scrape();
    }
    expect(peak).toBeGreaterThan(before.length); // the churn was visible while it lasted
    node.clock += 61_000; // past the linger: the departed workloads' series go
    await node.scrape();
    const after = series(await node.scrape());
    expect(after.length).toBe(before.length);
    // The label sets are the same; only values moved (the Deployment's counters kept their replicas' counts).
    const names = (s: string[]) => s.map((l) => l.replace(/ \S+$/, '')).sort();
    expect(names(after)).toEqual(names(before));
    const text = await node.scrape();
    expect(value(text, 'weir_datapath_packets_total', { workload: 'Deployment/feature-store', verdict: 'allow' })).toBe(20 + 250 * 10);
    expect(value(text, 'weir_violations_total', { workload: 'Deployment/feature-store' })).toBe(2 * (2 + 250));
  });

  it('labels never carry pod names, IPs or UIDs; bare pods are counted under workload="Pod"', async () => {
    const node = new FakeNode();
    const p = node.add(pod('ml', 'Pod/runner-8f2k', 'train-data', 'runner-8f2k'));
    node.add(pod('ml', 'Deployment/api', 'train-data', 'api-5c7d8-zx9qp'));
    const text = await node.scrape();
    expect(text).not.toContain('runner-8f2k');
    expect(text).not.toContain('zx9qp');
    expect(text).not.toContain(p.uid);
    expect(text).not.toContain(p.ip);
    expect(value(text, 'weir_datapath_packets_total', { namespace: 'ml', workload: 'Pod', verdict: 'allow' })).toBe(10);
    expect(value(text, 'weir_violations_total', { workload: 'Pod', policy: 'EgressPolicy/ml/train-data' })).toBe(2);
    expect(workloadLabel('Pod/x')).toBe('Pod');
    expect(workloadLabel('StatefulSet/x')).toBe('StatefulSet/x');
  });

  it('a departed pod keeps its counts in the totals while its workload lives; the workload\'s series go after the linger, not before', async () => {
    const node = new FakeNode(60_000);
    const a = node.add(pod('ml', 'Deployment/api', 'd', 'api-1'), 100n);
    node.add(pod('ml', 'Deployment/api', 'd', 'api-2'), 5n);
    expect(value(await node.scrape(), 'weir_datapath_packets_total', { workload: 'Deployment/api', verdict: 'allow' })).toBe(105);
    node.remove(a.uid);
    expect(value(await node.scrape(), 'weir_datapath_packets_total', { workload: 'Deployment/api', verdict: 'allow' })).toBe(105);
    for (const p of [...node.pods.values()]) node.remove(p.uid);
    await node.scrape(); // the linger counts from the first scrape that finds the workload gone
    node.clock += 59_000;
    const lingering = await node.scrape();
    expect(value(lingering, 'weir_datapath_packets_total', { workload: 'Deployment/api', verdict: 'allow' })).toBe(105);
    expect(value(lingering, 'weir_violations_total', { workload: 'Deployment/api' })).toBe(4);
    node.clock += 1_000;
    const gone = await node.scrape();
    for (const m of ['weir_datapath_packets_total', 'weir_datapath_bytes_total', 'weir_datapath_socket_verdicts_total', 'weir_violations_total']) {
      expect(value(gone, m, { workload: 'Deployment/api' })).toBeNull();
    }
    // A workload that comes back within the linger keeps counting from where it was.
    const b = node.add(pod('ml', 'Deployment/web', 'd', 'web-1'), 7n);
    await node.scrape();
    node.remove(b.uid);
    node.clock += 30_000;
    await node.scrape();
    node.add(pod('ml', 'Deployment/web', 'd', 'web-2'), 3n);
    node.clock += 40_000;
    expect(value(await node.scrape(), 'weir_datapath_packets_total', { workload: 'Deployment/web', verdict: 'allow' })).toBe(10);
  });

  it('violation series naming a deleted policy are removed after the linger', async () => {
    const node = new FakeNode(10_000);
    node.add(pod('ml', 'Deployment/api', 'd', 'api-1'));
    node.metrics.violation({ namespace: 'ml', workload: 'Deployment/api', domain: 'd', verdict: 'audit', reason: 'audit-default-deny', policy: 'EgressPolicy/ml/old' });
    node.policies.add('EgressPolicy/ml/old');
    expect(value(await node.scrape(), 'weir_violations_total', { policy: 'EgressPolicy/ml/old' })).toBe(1);
    node.policies.delete('EgressPolicy/ml/old');
    await node.scrape();
    node.clock += 10_000;
    const text = await node.scrape();
    expect(value(text, 'weir_violations_total', { policy: 'EgressPolicy/ml/old' })).toBeNull();
    expect(value(text, 'weir_violations_total', { policy: 'EgressPolicy/ml/train-data' })).toBe(2);
  });

  it('events lost in the kernel and in the agent are separate series, exported from 0', async () => {
    const node = new FakeNode();
    let observeDrops = 0;
    const registry = new Registry();
    new AgentMetrics(registry, { ...bind(node), userspaceDrops: () => ({ observe: observeDrops }) }, { version: 'v', node: 'n', processMetrics: false });
    let text = await registry.metrics();
    expect(value(text, 'weir_datapath_events_total', { outcome: 'lost' })).toBe(0);
    expect(value(text, 'weir_events_dropped_userspace_total', { consumer: 'observe' })).toBe(0);
    expect(value(text, 'weir_policy_sync_errors_total', { kind: 'compile' })).toBe(0);
    node.stats.events_lost = 7n;
    observeDrops = 3;
    text = await registry.metrics();
    expect(value(text, 'weir_datapath_events_total', { outcome: 'lost' })).toBe(7);
    expect(value(text, 'weir_events_dropped_userspace_total', { consumer: 'observe' })).toBe(3);
  });

  it('every metric AgentMetrics exports is documented in docs/metrics.md (the fqdn ones included)', async () => {
    const registry = new Registry();
    new AgentMetrics(registry, { kernelCounts: () => [], kernelStats: () => ({}), mapUsage: () => ({}), liveWorkloads: () => [] }, { version: 'v', node: 'n', processMetrics: false });
    const doc = readFileSync(new URL('../../docs/metrics.md', import.meta.url), 'utf8');
    const names = (await registry.getMetricsAsJSON()).map((m) => m.name);
    expect(names).toEqual(expect.arrayContaining(['weir_fqdn_learned_total', 'weir_fqdn_refused_total', 'weir_fqdn_expired_total', 'weir_fqdn_queries_not_allowed_total']));
    expect(names.filter((n) => !doc.includes(`| \`${n}\` |`))).toEqual([]);
  });

  it('every kernel stat the datapath keeps is exported', () => {
    expect(Object.keys(STAT_METRICS).sort()).toEqual([...STAT_NAMES].sort());
  });

  it('maps report entries and capacity; walked maps are read at most every 5 s', async () => {
    const node = new FakeNode();
    let walks = 0;
    const registry = new Registry();
    new AgentMetrics(
      registry,
      { ...bind(node), slowMapUsage: () => ({ weir_ct: { used: ++walks, capacity: 65536 } }) },
      { version: 'v', node: 'n', now: () => node.clock, processMetrics: false },
    );
    let text = await registry.metrics();
    expect(value(text, 'weir_map_entries', { map: 'weir_ct' })).toBe(1);
    expect(value(text, 'weir_map_capacity', { map: 'weir_ct' })).toBe(65536);
    expect(value(text, 'weir_map_capacity', { map: 'weir_pods' })).toBe(4096);
    node.clock += 1000;
    text = await registry.metrics();
    expect(value(text, 'weir_map_entries', { map: 'weir_ct' })).toBe(1);
    node.clock += 5000;
    text = await registry.metrics();
    expect(value(text, 'weir_map_entries', { map: 'weir_ct' })).toBe(2);
  });

  it('promtool check metrics accepts the output (with process metrics)', async () => {
    const registry = new Registry();
    const node = new FakeNode();
    node.add(pod('ml', 'Deployment/api', 'train-data', 'api-1'));
    const m = new AgentMetrics(registry, bind(node), { version: '0.1.0', node: 'node-a' });
    m.violation({ namespace: 'ml', workload: 'Job/etl', domain: '', verdict: 'audit', reason: 'audit-deny-rule', policy: 'EgressPolicy/ml/a,ClusterEgressPolicy/b' });
    m.compileDuration.observe(0.004);
    const text = await registry.metrics();
    const out = execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(out).toBe('');
  });
});

function bind(node: FakeNode): MetricsSources {
  return {
    kernelCounts: () => node.kernelCounts(),
    kernelStats: () => node.kernelStats(),
    mapUsage: () => node.mapUsage(),
    liveWorkloads: () => node.liveWorkloads(),
    livePolicies: () => node.livePolicies(),
  };
}
