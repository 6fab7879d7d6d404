// End-to-end with a real Prometheus: the agent runs on the sandbox node
// (--manifests, real datapath, real packets) and serves /metrics on
// 127.0.0.1 in the host namespace; the Debian `prometheus` binary scrapes it
// every second with weir's alert rules loaded. Proves: a violation is found
// through the Prometheus HTTP API with its labels; the alerts fire on real
// series; every query of the Grafana dashboard executes and the main panels
// return data; promtool accepts the real output; a departed workload's
// series go away.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { Agent } from '../../src/agent/agent.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import type { SandboxSpec } from '../../src/sandbox/spec.js';
import { writeFileAtomic } from '../../src/sandbox/manifests.js';
import { probeTcp, startServer, type ProbeProcess } from './helpers/traffic.js';
import { BPFFS } from '../helpers/kernel.js';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = 'prom-node';
const HASH = '7c9d8f6b5';

const spec: SandboxSpec = {
  id: `prom${process.pid % 100000}`,
  nodeName: NODE,
  namespaces: [
    { name: 'ml-train', labels: { 'weir.dev/domain': 'train-data' } },
    { name: 'ml-serving', labels: { 'weir.dev/domain': 'prod-model' } },
  ],
  pods: [
    { namespace: 'ml-train', name: `trainer-${HASH}-x2k4p`, labels: { app: 'trainer', 'weir.dev/domain': 'train-data', 'pod-template-hash': HASH }, qosClass: 'Burstable' },
    { namespace: 'ml-serving', name: 'model-server-0', labels: { app: 'model-server', 'weir.dev/domain': 'prod-model' } },
  ],
  hosts: [
    { name: 'feature-store', kind: 'service', ipv4: '10.20.0.10' },
    { name: 'public-internet', kind: 'internet', ipv4: '203.0.113.10' },
  ],
};
const TRAINER = `ml-train/trainer-${HASH}-x2k4p`;
const MODEL_SERVER = 'ml-serving/model-server-0';

/** Controllers of the sandbox's pods, as the API server would show them. */
const OWNERS: Record<string, { kind: string; name: string }> = {
  [TRAINER]: { kind: 'ReplicaSet', name: `trainer-${HASH}` },
  [MODEL_SERVER]: { kind: 'StatefulSet', name: 'model-server' },
  'ml-train/etl-1-q8w2z': { kind: 'Job', name: 'etl-1' },
};

const TRAIN_POLICY = `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: train-data, namespace: ml-train}
spec:
  podSelector: {matchLabels: {weir.dev/domain: train-data}}
  egress:
  - to: [{ipBlock: {cidr: 10.20.0.10/32}}]
    ports: [{protocol: TCP, port: 8080}]
`;

// Rolled out in Audit first: reports what it would drop, drops nothing.
const SERVING_POLICY = `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: prod-model, namespace: ml-serving}
spec:
  podSelector: {matchLabels: {weir.dev/domain: prod-model}}
  mode: Audit
`;

const LINGER_MS = 3000;

let sb: Sandbox;
let agent: Agent;
let dir: string;
let promDir: string;
let prom: ChildProcess | null = null;
let promLog = '';
let promUrl = '';
let metricsUrl = '';
const pinDir = join(BPFFS, `weir-prom-${process.pid}`);
const servers: ProbeProcess[] = [];

/** The sandbox's manifests with owner references added (the sandbox itself makes bare pods). */
function writeManifests(): void {
  const { namespaces, pods } = sb.manifests();
  for (const p of pods) {
    const owner = OWNERS[`${p.metadata.namespace}/${p.metadata.name}`];
    if (owner) p.metadata.ownerReferences = [{ apiVersion: 'apps/v1', kind: owner.kind, name: owner.name, uid: `00000000-0000-4000-8000-${owner.name.length.toString().padStart(12, '0')}`, controller: true }];
  }
  writeFileAtomic(dir, 'cluster.yaml', [...namespaces, ...pods].map((d) => stringify(d)).join('---\n'));
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const a = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  if (typeof a !== 'object' || !a) throw new Error('no port');
  return a.port;
}

async function waitFor<T>(what: string, fn: () => Promise<T | null> | T | null, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== null) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}\nprometheus log:\n${promLog.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

interface Sample {
  metric: Record<string, string>;
  value?: [number, string];
  values?: [number, string][];
}

async function api<T>(path: string, params: Record<string, string>): Promise<T> {
  const res = await fetch(`${promUrl}${path}?${new URLSearchParams(params).toString()}`);
  const body = (await res.json()) as { status: string; data: T; error?: string; errorType?: string };
  if (body.status !== 'success') throw new Error(`${path} ${JSON.stringify(params)}: ${body.errorType}: ${body.error}`);
  return body.data;
}

async function query(q: string): Promise<Sample[]> {
  const d = await api<{ resultType: string; result: Sample[] | [number, string] }>('/api/v1/query', { query: q });
  // A scalar (vector(0) folded by the engine) counts as data too.
  return d.resultType === 'scalar' ? [{ metric: {}, value: d.result as [number, string] }] : (d.result as Sample[]);
}

async function queryRange(q: string, seconds: number): Promise<Sample[]> {
  const end = Date.now() / 1000;
  const d = await api<{ result: Sample[] }>('/api/v1/query_range', { query: q, start: String(end - seconds), end: String(end), step: '2' });
  return d.result;
}

beforeAll(async () => {
  execFileSync('prometheus', ['--version'], { stdio: 'ignore' }); // installed by scripts/bootstrap.sh (Debian package prometheus)
  await Sandbox.cleanupLeftovers();
  sb = await Sandbox.create(spec);
  dir = mkdtempSync(join(tmpdir(), 'weir-prom-manifests-'));
  promDir = mkdtempSync(join(tmpdir(), 'weir-prom-'));
  writeManifests();
  writeFileSync(join(dir, 'train-data.yaml'), TRAIN_POLICY);
  writeFileSync(join(dir, 'prod-model.yaml'), SERVING_POLICY);
  servers.push(await startServer(sb, 'feature-store', { tcp: [8080] }));
  servers.push(await startServer(sb, 'public-internet', { tcp: [443] }));
  agent = await Agent.start(
    { manifests: dir, nodeName: NODE, cgroupRoot: sb.cgroupRoot, bpffs: BPFFS, pinDir, metricsAddr: '127.0.0.1:0', metricsSeriesLingerMs: LINGER_MS },
    pino({ level: process.env.WEIR_TEST_LOG ?? 'silent' }),
  );
  metricsUrl = `http://127.0.0.1:${agent.metricsPort()}/metrics`;

  const port = await freePort();
  promUrl = `http://127.0.0.1:${port}`;
  writeFileSync(
    join(promDir, 'prometheus.yml'),
    stringify({
      global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
      rule_files: [join(ROOT, 'deploy/prometheus/weir-rules.yaml')],
      // As deploy/prometheus/scrape-config.yaml: job weir, a node label, weir's own labels honoured.
      scrape_configs: [{ job_name: 'weir', honor_labels: true, static_configs: [{ targets: [`127.0.0.1:${agent.metricsPort()}`], labels: { node: NODE } }] }],
    }),
  );
  prom = spawn('prometheus', [`--config.file=${join(promDir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(promDir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (b: Buffer): void => {
    promLog = (promLog + b.toString()).slice(-20_000);
  };
  prom.stdout?.on('data', keep);
  prom.stderr?.on('data', keep);
  process.once('exit', () => prom?.kill('SIGKILL'));
  await waitFor('Prometheus ready', async () => ((await fetch(`${promUrl}/-/ready`)).ok ? true : null), 30_000);
}, 120_000);

afterAll(async () => {
  try {
    if (prom && prom.exitCode === null && prom.signalCode === null) {
      const exited = new Promise<void>((r) => prom?.once('exit', () => r()));
      prom.kill('SIGTERM');
      const t = setTimeout(() => prom?.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    }
  } finally {
    if (promDir) rmSync(promDir, { recursive: true, force: true });
    for (const s of servers) await s.stop();
    if (agent) {
      agent.datapath.uninstall();
      await agent.stop();
    }
    await sb?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});

describe('weir metrics in a real Prometheus', () => {
  it('Prometheus scrapes the agent on 127.0.0.1 (up == 1, node label set)', async () => {
    const r = await waitFor('up{job="weir"} == 1', async () => {
      const s = await query('up{job="weir"} == 1');
      return s.length === 1 ? s : null;
    });
    expect(r[0]?.metric).toMatchObject({ job: 'weir', node: NODE });
  });

  it('a denied connect is found through /api/v1/query with namespace, workload, domain, verdict, reason and policy', async () => {
    expect(await probeTcp(sb, TRAINER, 'feature-store', 8080)).toMatchObject({ ok: true });
    const r = await probeTcp(sb, TRAINER, 'public-internet', 443, { timeoutMs: 2000 });
    expect(r.code).toBe('EPERM');
    const found = await waitFor('the violation in Prometheus', async () => {
      const s = await query('weir_violations_total{verdict="drop", namespace="ml-train"} >= 1');
      return s.length > 0 ? s : null;
    });
    expect(found).toHaveLength(1);
    expect(found[0]?.metric).toEqual({
      __name__: 'weir_violations_total',
      job: 'weir',
      instance: expect.stringMatching(/^127\.0\.0\.1:\d+$/) as unknown as string,
      node: NODE,
      namespace: 'ml-train',
      workload: 'Deployment/trainer',
      domain: 'train-data',
      verdict: 'drop',
      reason: 'default-deny',
      policy: 'EgressPolicy/ml-train/train-data',
    });
    const refused = await waitFor('the refused connect() counted', async () => {
      const s = await query('weir_datapath_socket_verdicts_total{verdict="drop", workload="Deployment/trainer"} >= 1');
      return s.length > 0 ? s : null;
    });
    expect(refused[0]?.metric).toMatchObject({ namespace: 'ml-train', domain: 'train-data', node: NODE });
    const allowed = await query('weir_datapath_packets_total{verdict="allow", workload="Deployment/trainer"} > 0');
    expect(allowed.length).toBe(1);
  });

  it('an Audit-mode would-drop is counted with verdict="audit" and its policy, and the connection went through', async () => {
    expect(await probeTcp(sb, MODEL_SERVER, 'public-internet', 443)).toMatchObject({ ok: true });
    const found = await waitFor('the audit verdict in Prometheus', async () => {
      const s = await query('weir_violations_total{verdict="audit"} >= 1');
      return s.length > 0 ? s : null;
    });
    expect(found[0]?.metric).toMatchObject({
      namespace: 'ml-serving',
      workload: 'StatefulSet/model-server',
      domain: 'prod-model',
      reason: 'audit-default-deny',
      policy: 'EgressPolicy/ml-serving/prod-model',
    });
  });

  it('the alert rules load and evaluate; WeirEgressViolations and WeirAuditWouldDrop fire on the real series, WeirAgentDown does not', async () => {
    const rules = await api<{ groups: { name: string; rules: { name: string; health: string; lastError?: string }[] }[] }>('/api/v1/rules', {});
    const all = rules.groups.flatMap((g) => g.rules);
    expect(all.map((r) => r.name).sort()).toEqual(
      ['WeirAgentDown', 'WeirAuditWouldDrop', 'WeirEgressViolationBurst', 'WeirEgressViolations', 'WeirEventsLost', 'WeirMapPressure', 'WeirPolicySyncFailing'],
    );
    await waitFor('every rule evaluated', async () => {
      const g = await api<typeof rules>('/api/v1/rules', {});
      const rs = g.groups.flatMap((x) => x.rules);
      return rs.every((r) => r.health === 'ok') ? true : null;
    });
    const alerts = await waitFor('both alerts firing', async () => {
      const a = await api<{ alerts: { labels: Record<string, string>; state: string }[] }>('/api/v1/alerts', {});
      const firing = a.alerts.filter((x) => x.state === 'firing');
      return firing.some((x) => x.labels.alertname === 'WeirEgressViolations') && firing.some((x) => x.labels.alertname === 'WeirAuditWouldDrop') ? firing : null;
    });
    expect(alerts.find((x) => x.labels.alertname === 'WeirEgressViolations')?.labels).toMatchObject({
      severity: 'warning',
      namespace: 'ml-train',
      workload: 'Deployment/trainer',
      domain: 'train-data',
      policy: 'EgressPolicy/ml-train/train-data',
    });
    expect(alerts.find((x) => x.labels.alertname === 'WeirAuditWouldDrop')?.labels).toMatchObject({ severity: 'info', workload: 'StatefulSet/model-server' });
    expect(alerts.map((x) => x.labels.alertname)).not.toContain('WeirAgentDown');
    expect(alerts.map((x) => x.labels.alertname)).not.toContain('WeirPolicySyncFailing');
  });

  it('promtool check metrics accepts the agent\'s real /metrics', async () => {
    const body = await (await fetch(metricsUrl)).text();
    expect(body).toContain('weir_violations_total{');
    const out = execFileSync('promtool', ['check', 'metrics'], { input: body, encoding: 'utf8' });
    expect(out).toBe('');
  });

  it('every query of the Grafana dashboard executes, with variables at All and at one value; the main panels return data', async () => {
    interface Target { expr: string; instant?: boolean; format?: string }
    interface Panel { title: string; type: string; targets?: Target[] }
    const dash = JSON.parse(readFileSync(join(ROOT, 'deploy/grafana/weir.json'), 'utf8')) as {
      panels: Panel[];
      templating: { list: { name: string; type: string; definition?: string; allValue?: string }[] };
    };
    const vars = dash.templating.list.filter((v) => v.type === 'query');
    const substitute = (expr: string, values: Record<string, string>): string =>
      expr
        .replaceAll('$__rate_interval', '10s')
        .replaceAll('$__interval', '2s')
        .replaceAll('$__range', '5m')
        .replace(/\$\{?(\w+)\}?/g, (m, name: string) => values[name] ?? m);
    const allValues = Object.fromEntries(vars.map((v) => [v.name, v.allValue ?? '.*']));
    const oneValue = { ...allValues, job: 'weir', node: NODE, namespace: 'ml-train', domain: 'train-data', workload: 'Deployment/trainer' };

    // The variables' own queries (label_values(selector, label)) against the series API.
    const labelValues = async (def: string, values: Record<string, string>): Promise<string[]> => {
      const m = /^label_values\((.*),\s*(\w+)\)$/.exec(substitute(def, values));
      if (!m) throw new Error(`unexpected variable query ${def}`);
      const series = await api<Record<string, string>[]>('/api/v1/series', { 'match[]': m[1] as string, start: String(Date.now() / 1000 - 300) });
      return [...new Set(series.map((s) => s[m[2] as string]).filter((x): x is string => x !== undefined))].sort();
    };
    const byName = Object.fromEntries(vars.map((v) => [v.name, v.definition ?? '']));
    expect(await labelValues(byName.job ?? '', allValues)).toEqual(['weir']);
    expect(await labelValues(byName.node ?? '', allValues)).toEqual([NODE]);
    expect(await labelValues(byName.namespace ?? '', allValues)).toEqual(['ml-serving', 'ml-train']);
    expect(await labelValues(byName.domain ?? '', allValues)).toEqual(['prod-model', 'train-data']);
    expect(await labelValues(byName.workload ?? '', oneValue)).toEqual(['Deployment/trainer']);

    // Enough scrapes after the violations for the 10 s rate windows.
    await new Promise((r) => setTimeout(r, 3000));
    // Panels with no data from any of their queries, as "all: TITLE" / "one: TITLE".
    const empty: string[] = [];
    let queries = 0;
    for (const values of [allValues, oneValue]) {
      for (const p of dash.panels) {
        let data = false;
        for (const t of p.targets ?? []) {
          const q = substitute(t.expr, values);
          expect(q, `${p.title}: a variable left unsubstituted`).not.toMatch(/\$/);
          const r = t.instant || t.format === 'table' ? await query(q) : await queryRange(q, 30);
          queries++;
          data ||= r.length > 0;
        }
        if (p.targets && !data) empty.push(`${values === allValues ? 'all' : 'one'}: ${p.title}`);
      }
    }
    expect(queries).toBeGreaterThan(80);
    // Panels that must show data on this node now (the others may be legitimately empty: no watch errors, no
    // lost events ... but they executed).
    const main = [
      'Drops (range)',
      'Audit would-drops (range)',
      'Agents up',
      'Events lost (range)',
      'Violations by domain',
      'Violations by namespace',
      'Violations by workload',
      'Top violating workloads',
      'Drops by policy',
      'Drops by reason',
      'Drops by policy and workload (range)',
      'Packet verdicts',
      'Socket verdicts',
      'Refused calls by workload',
      'Map pressure',
      'Map pressure by node',
      'Events lost',
      'Kernel events by outcome',
      'Agents',
      'Up and ready',
      'Policy sync',
      'Policy generation',
      'Pods and workloads',
      'Agent memory',
    ];
    for (const title of main) expect(dash.panels.some((p) => p.title === title), title).toBe(true);
    expect(empty.filter((e) => main.some((t) => e === `all: ${t}`))).toEqual([]);
    // Filtered on the trainer's workload, the violation panels still have it; the audit ones (other workload) need not.
    expect(empty.filter((e) => ['Violations by workload', 'Top violating workloads', 'Drops by policy', 'Agents', 'Map pressure'].some((t) => e === `one: ${t}`))).toEqual([]);

    const top = await query(substitute(dash.panels.find((p) => p.title === 'Top violating workloads')?.targets?.[0]?.expr ?? '', allValues));
    expect(top.map((s) => s.metric)).toContainEqual({ namespace: 'ml-train', workload: 'Deployment/trainer', domain: 'train-data' });
  });

  it('series of a workload that left the node are removed (a Job pod comes, is denied, goes); the weir_* series count is back to where it was', async () => {
    const weirSeries = async (): Promise<string[]> =>
      (await (await fetch(metricsUrl)).text())
        .split('\n')
        .filter((l) => l.startsWith('weir_'))
        .map((l) => l.replace(/ \S+$/, ''))
        .sort();
    const before = await weirSeries();

    await sb.addPod({ namespace: 'ml-train', name: 'etl-1-q8w2z', labels: { app: 'etl', 'weir.dev/domain': 'train-data', 'job-name': 'etl-1' } });
    writeManifests();
    await waitFor('the Job pod governed', async () => {
      const r = await probeTcp(sb, 'ml-train/etl-1-q8w2z', 'public-internet', 443, { timeoutMs: 1000 });
      return r.code === 'EPERM' ? r : null;
    });
    await waitFor('the Job\'s violation series in Prometheus', async () => {
      const s = await query('weir_violations_total{workload="Job/etl-1"}');
      return s.length > 0 ? s : null;
    });
    expect((await weirSeries()).some((l) => l.includes('workload="Job/etl-1"'))).toBe(true);

    await sb.removePod('ml-train', 'etl-1-q8w2z');
    writeManifests();
    await waitFor('the Job\'s series gone from /metrics after the linger', async () => ((await weirSeries()).some((l) => l.includes('Job/etl-1')) ? null : true), 20_000);
    // Prometheus marks the series stale at the first scrape without it.
    await waitFor('the Job\'s series stale in Prometheus', async () => ((await query('weir_violations_total{workload="Job/etl-1"}')).length === 0 ? true : null));
    expect(await weirSeries()).toEqual(before);
  });
});
