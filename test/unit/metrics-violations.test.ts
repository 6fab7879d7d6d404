// weir_violations_total counted per batch: AgentMetrics.violation() adds up
// the counts of one turn of the event loop per series and hands them to the
// counter once per series. Whatever the batching, the exported totals must be
// those of one inc() per call.
import { Counter, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { AgentMetrics, workloadLabel, type MetricsSources, type ViolationLabels } from '../../src/report/metrics.js';

const LABELS = ['namespace', 'workload', 'domain', 'verdict', 'reason', 'policy'] as const;

function sources(policies: Set<string> | null, workloads: ViolationLabels[] = []): MetricsSources {
  return {
    kernelCounts: () => [],
    kernelStats: () => ({}),
    mapUsage: () => ({}),
    liveWorkloads: () => workloads,
    ...(policies ? { livePolicies: () => policies } : {}),
  };
}

async function totals(registry: Registry): Promise<Map<string, number>> {
  const m = registry.getSingleMetric('weir_violations_total') as Counter<string>;
  const out = new Map<string, number>();
  for (const v of (await m.get()).values) out.set(JSON.stringify(LABELS.map((l) => v.labels[l])), v.value);
  return out;
}

/** What one inc() per call gives: a plain counter fed label set by label set. */
async function reference(calls: [ViolationLabels, number][]): Promise<Map<string, number>> {
  const registry = new Registry();
  const c = new Counter({ name: 'weir_violations_total', help: 'x', labelNames: LABELS, registers: [registry] });
  for (const [v, n] of calls) c.inc({ namespace: v.namespace, workload: workloadLabel(v.workload), domain: v.domain, verdict: v.verdict, reason: v.reason, policy: v.policy }, n);
  return totals(registry);
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe('weir_violations_total, counted per batch', () => {
  it('equals one inc() per violation, over random batches and labels that run into each other', async () => {
    const r = rng(7);
    // Values with the key's separator in them: "a\nb" + "" and "a" + "b\n..." must stay different series.
    const values = ['a', 'b', 'a\nb', 'b\na', '', '\n', 'Pod/x', 'Pod/y', 'Deployment/api', 'é\u2028"\\'];
    const pick = (): string => values[Math.floor(r() * values.length)] as string;
    const registry = new Registry();
    const m = new AgentMetrics(registry, sources(null), { version: 'v', node: 'n', processMetrics: false });
    const calls: [ViolationLabels, number][] = [];
    for (let batch = 0; batch < 50; batch++) {
      const n = Math.floor(r() * 40);
      for (let i = 0; i < n; i++) {
        // Often the series of the event before (as in a batch from one pod), as the same object or an equal one.
        const prev = calls[calls.length - 1]?.[0];
        const x = r();
        const v = prev && x < 0.3 ? prev : prev && x < 0.5 ? { ...prev } : { namespace: pick(), workload: pick(), domain: pick(), verdict: pick(), reason: pick(), policy: pick() };
        const count = Math.floor(r() * 3);
        calls.push([v, count]);
        m.violation(v, count);
      }
      if (r() < 0.3) await Promise.resolve(); // the end of the batch: a microtask
      if (r() < 0.2) await registry.metrics(); // a scrape, mid-way
    }
    expect(await totals(registry)).toEqual(await reference(calls));
  });

  it('reaches the counter at the end of the batch, without a scrape', async () => {
    const registry = new Registry();
    const m = new AgentMetrics(registry, sources(null), { version: 'v', node: 'n', processMetrics: false });
    const v = { namespace: 'ml', workload: 'Deployment/api', domain: 'd', verdict: 'drop', reason: 'default-deny', policy: 'EgressPolicy/ml/a' };
    m.violation(v, 2);
    m.violation(v);
    await Promise.resolve();
    const hashMap = (m.violations as unknown as { hashMap: Record<string, { value: number }> }).hashMap;
    expect(Object.values(hashMap).map((x) => x.value)).toEqual([3]);
  });

  it('a count the counter refuses throws at the call, as before', () => {
    const m = new AgentMetrics(new Registry(), sources(null), { version: 'v', node: 'n', processMetrics: false });
    const v = { namespace: 'ml', workload: 'Deployment/api', domain: 'd', verdict: 'drop', reason: 'default-deny', policy: '' };
    expect(() => m.violation(v, -1)).toThrow(/decrease/);
  });

  it('a series removed with its policy comes back with the next violation', async () => {
    let t = 0;
    const policies = new Set(['EgressPolicy/ml/old']);
    const v = { namespace: 'ml', workload: 'Deployment/api', domain: 'd', verdict: 'drop', reason: 'deny-rule', policy: 'EgressPolicy/ml/old' };
    const registry = new Registry();
    const m = new AgentMetrics(registry, sources(policies, [v]), { version: 'v', node: 'n', processMetrics: false, seriesLingerMs: 10, now: () => t });
    m.violation(v, 5);
    expect([...(await totals(registry)).values()]).toEqual([5]);
    policies.delete('EgressPolicy/ml/old');
    await registry.metrics();
    m.violation(v, 1); // counted in the batch of the scrape that removes the series: removed with it
    t += 10;
    expect((await totals(registry)).size).toBe(0);
    policies.add('EgressPolicy/ml/old'); // made again
    m.violation(v, 4);
    expect([...(await totals(registry)).values()]).toEqual([4]);
    // ...and is removed again: it was entered in the series the sweep looks at.
    policies.delete('EgressPolicy/ml/old');
    await registry.metrics();
    t += 10;
    expect((await totals(registry)).size).toBe(0);
  });
});
