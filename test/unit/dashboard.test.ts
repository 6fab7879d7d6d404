// The Grafana dashboard: provisionable as is (datasource as a variable, no
// __inputs), the ConfigMap carries exactly weir.json, every panel query uses
// documented metrics. (test/e2e/prometheus.test.ts runs every query against
// a real Prometheus.)
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const ROOT = resolve(import.meta.dirname, '../..');
const JSON_PATH = join(ROOT, 'deploy/grafana/weir.json');
const text = readFileSync(JSON_PATH, 'utf8');

interface Target {
  expr: string;
  refId: string;
  datasource?: { type: string; uid: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: Target[];
}
const dash = JSON.parse(text) as {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown; datasource?: { uid: string } }[] };
  __inputs?: unknown;
};

describe('Grafana dashboard', () => {
  it('takes its datasource from a variable: no __inputs, no ${DS_...}', () => {
    expect(dash.__inputs).toBeUndefined();
    expect(text).not.toMatch(/\$\{DS_/);
    const ds = dash.templating.list.find((v) => v.name === 'datasource');
    expect(ds).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const v of dash.templating.list.filter((x) => x.type === 'query')) expect(v.datasource?.uid, v.name).toBe('${datasource}');
    for (const p of dash.panels.filter((x) => x.type !== 'row')) {
      expect(p.datasource?.uid, p.title).toBe('${datasource}');
      for (const t of p.targets ?? []) expect(t.datasource?.uid, `${p.title} ${t.refId}`).toBe('${datasource}');
    }
  });

  it('has the panels the issue asks for, with unique ids and a query each', () => {
    const titles = dash.panels.map((p) => p.title);
    for (const t of [
      'Violations by domain',
      'Violations by namespace',
      'Violations by workload',
      'Top violating workloads',
      'Packet verdicts',
      'Drops by policy',
      'Audit would-drops by policy',
      'Map pressure',
      'Events lost',
      'Agents',
    ]) {
      expect(titles).toContain(t);
    }
    const ids = dash.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of dash.panels.filter((x) => x.type !== 'row')) {
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      const refs = (p.targets ?? []).map((t) => t.refId);
      expect(new Set(refs).size, p.title).toBe(refs.length);
    }
  });

  it('uses only metrics documented in docs/metrics.md', () => {
    const doc = readFileSync(join(ROOT, 'docs/metrics.md'), 'utf8');
    const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
    const used = new Set(exprs.flatMap((e) => [...e.matchAll(/\b(weir_[a-z0-9_]+?)(?:_bucket)?\b/g)].map((m) => m[1] as string)));
    expect(used.size).toBeGreaterThan(15);
    for (const m of used) expect(doc, m).toContain(`\`${m}\``);
  });

  it('the ConfigMap for the Grafana sidecar carries exactly weir.json (regenerate: node deploy/grafana/configmap.mjs)', () => {
    const cm = parse(readFileSync(join(ROOT, 'deploy/grafana/dashboard-configmap.yaml'), 'utf8')) as {
      apiVersion: string;
      kind: string;
      metadata: { labels: Record<string, string> };
      data: Record<string, string>;
    };
    expect(cm).toMatchObject({ apiVersion: 'v1', kind: 'ConfigMap' });
    expect(cm.metadata.labels.grafana_dashboard).toBe('1');
    expect(Object.keys(cm.data)).toEqual(['weir.json']);
    expect(cm.data['weir.json']).toBe(text);
  });
});
