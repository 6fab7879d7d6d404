// The agent reading its model from a Kubernetes API server (the stand-in of
// test/helpers/fake-apiserver.ts, which speaks the real list/watch protocol,
// through @kubernetes/client-node) and enforcing it on the sandbox node with
// real packets: initial sync, policy and label edits, deletes, a dropped
// watch, a 410 re-list, an API outage during which enforcement continues
// unchanged, and `weir explain` asked of the running agent over its local API.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Agent } from '../../src/agent/agent.js';
import { queryLocalApi } from '../../src/agent/local-api.js';
import { explainCommand } from '../../src/cli/explain-command.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import type { SandboxSpec } from '../../src/sandbox/spec.js';
import { FakeApiServer, type FakeObjectInput } from '../helpers/fake-apiserver.js';
import { BPFFS } from '../helpers/kernel.js';
import { probeTcp, probeUdp, startServer, type ProbeProcess } from './helpers/traffic.js';

const spec: SandboxSpec = {
  id: `k8s${process.pid % 100000}`,
  nodeName: 'node-a',
  namespaces: [
    { name: 'ml-train', labels: { 'weir.dev/domain': 'train-data' } },
    { name: 'ml-gateway', labels: {} },
  ],
  pods: [
    { namespace: 'ml-train', name: 'trainer', labels: { app: 'trainer', 'weir.dev/domain': 'train-data' } },
    { namespace: 'ml-gateway', name: 'gateway', labels: { app: 'gateway' } },
  ],
  hosts: [
    { name: 'feature-store', kind: 'service', ipv4: '10.20.0.10', ipv6: 'fd00:10:20::10' },
    { name: 'public-internet', kind: 'internet', ipv4: '203.0.113.10', ipv6: '2001:db8:203::113:10' },
  ],
};

function trainPolicy(ports: number[]): FakeObjectInput {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name: 'train-data', namespace: 'ml-train' },
    spec: {
      podSelector: { matchLabels: { 'weir.dev/domain': 'train-data' } },
      egress: [{ to: [{ ipBlock: { cidr: '10.20.0.10/32' } }], ports: ports.map((port) => ({ protocol: 'TCP', port })) }],
    },
  };
}

let sb: Sandbox;
let api: FakeApiServer;
let agent: Agent;
let dir: string;
let socket: string;
const pinDir = join(BPFFS, `weir-k8s-${process.pid}`);
const servers: ProbeProcess[] = [];

async function waitFor(what: string, fn: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until the agent has written a generation newer than `gen`. */
function newerThan(gen: number): Promise<void> {
  return waitFor(`a policy generation after ${gen}`, () => agent.datapath.writer.generation > gen);
}

const tcp = async (from: string, to: string, port: number): Promise<string> => {
  const r = await probeTcp(sb, from, to, port, { timeoutMs: 2000 });
  return r.ok ? 'ok' : (r.code ?? 'failed');
};

/** Sum of a metric's samples whose labels include every pair in `labels`. */
async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const lines = (await metric(name)).split('\n').filter((l) => Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  return lines.reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

async function metric(name: string): Promise<string> {
  const body = await (await fetch(`http://127.0.0.1:${agent.metricsPort() ?? 0}/metrics`)).text();
  return body
    .split('\n')
    .filter((l) => l.startsWith(name))
    .join('\n');
}

beforeAll(async () => {
  await Sandbox.cleanupLeftovers();
  sb = await Sandbox.create(spec);
  dir = mkdtempSync(join(tmpdir(), 'weir-k8s-'));
  socket = join(dir, 'api', 'weir.sock');
  api = new FakeApiServer({ bookmarkIntervalMs: 500 });
  await api.start();
  const m = sb.manifests();
  for (const ns of m.namespaces) api.create(ns as unknown as FakeObjectInput);
  for (const pod of m.pods) api.create(pod as unknown as FakeObjectInput);
  // A pod of another node: known for peers, never enforced here.
  api.create({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'elsewhere', namespace: 'ml-train', labels: { 'weir.dev/domain': 'train-data' } },
    spec: { nodeName: 'node-b', containers: [{ name: 'main', image: 'x' }] },
    status: { phase: 'Running', podIP: '10.99.0.5', podIPs: [{ ip: '10.99.0.5' }] },
  });
  api.create(trainPolicy([8080]));
  servers.push(await startServer(sb, 'feature-store', { tcp: [8080, 9000], udp: [514] }));
  servers.push(await startServer(sb, 'public-internet', { tcp: [443] }));
  const kubeconfig = await api.writeKubeconfig(dir);
  agent = await Agent.start(
    {
      kubernetes: { kubeconfig, backoff: { initialMs: 100, maxMs: 500 }, events: { flushIntervalMs: 300, firstWriteDelayMs: 100 } },
      nodeName: spec.nodeName ?? null,
      cgroupRoot: sb.cgroupRoot,
      bpffs: BPFFS,
      pinDir,
      metricsAddr: '127.0.0.1:0',
      apiSocket: socket,
    },
    pino({ level: process.env.WEIR_TEST_LOG ?? 'silent' }),
  );
}, 120_000);

afterAll(async () => {
  for (const s of servers) await s.stop();
  if (agent) {
    agent.datapath.uninstall();
    await agent.stop();
  }
  await api?.stop();
  await sb?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the agent on the Kubernetes API source', () => {
  it('enforces the policy listed at start, only for this node\'s pods', async () => {
    expect(agent.ready).toBe(true);
    expect(agent.watchStatus().every((s) => s.synced)).toBe(true);
    expect(await tcp('ml-train/trainer', 'feature-store', 8080)).toBe('ok');
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('EPERM');
    expect(await tcp('ml-gateway/gateway', 'public-internet', 443)).toBe('ok');
    expect(agent.datapath.writer.endpoints().map((e) => e.name).sort()).toEqual(['gateway', 'trainer']);
  });

  it('applies a policy edit from a watch event', async () => {
    expect(await tcp('ml-train/trainer', 'feature-store', 9000)).toBe('EPERM');
    const gen = agent.datapath.writer.generation;
    api.update(trainPolicy([8080, 9000]));
    await newerThan(gen);
    expect(await tcp('ml-train/trainer', 'feature-store', 9000)).toBe('ok');
  });

  it('applies a pod label change: the policy no longer selects the pod', async () => {
    const pod = structuredClone(api.get('Pod', 'ml-train', 'trainer')) as FakeObjectInput & { metadata: { labels: Record<string, string> } };
    const gen = agent.datapath.writer.generation;
    pod.metadata.labels = { app: 'trainer' };
    api.update(pod);
    await newerThan(gen);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('ok');
    pod.metadata.labels = { app: 'trainer', 'weir.dev/domain': 'train-data' };
    const gen2 = agent.datapath.writer.generation;
    api.update(pod);
    await newerThan(gen2);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('EPERM');
  });

  it('resumes after a watch is cut in the middle and applies what came next', async () => {
    const restarts = await metricValue('weir_watch_restarts_total', { resource: 'egresspolicies' });
    expect(api.dropWatches('egresspolicies')).toBeGreaterThan(0);
    const gen = agent.datapath.writer.generation;
    api.update(trainPolicy([8080]));
    await newerThan(gen);
    expect(await tcp('ml-train/trainer', 'feature-store', 9000)).toBe('EPERM');
    expect(await metricValue('weir_watch_restarts_total', { resource: 'egresspolicies' })).toBeGreaterThan(restarts);
  });

  it('re-lists after 410 Gone and applies a delete it missed', async () => {
    // The watch is cut, the history compacted and the policy deleted while
    // no watch is open: only a re-list can tell the agent it is gone.
    const gone = await metricValue('weir_watch_restarts_total', { resource: 'egresspolicies', reason: 'gone' });
    await api.stop();
    api.delete('EgressPolicy', 'ml-train', 'train-data');
    api.compact();
    const gen = agent.datapath.writer.generation;
    await api.start();
    await newerThan(gen);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('ok');
    expect(await metricValue('weir_watch_restarts_total', { resource: 'egresspolicies', reason: 'gone' })).toBeGreaterThan(gone);
  });

  it('keeps enforcing the last known policy through an API outage, then catches up', async () => {
    const gen0 = agent.datapath.writer.generation;
    api.create(trainPolicy([8080]));
    await newerThan(gen0);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('EPERM');
    await api.stop();
    const gen = agent.datapath.writer.generation;
    // Several retry rounds pass (backoff 100..500 ms): nothing is dropped from the model.
    await new Promise((r) => setTimeout(r, 2000));
    expect(agent.datapath.writer.generation).toBe(gen);
    expect(agent.ready).toBe(true);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('EPERM');
    expect(await tcp('ml-train/trainer', 'feature-store', 8080)).toBe('ok');
    expect((await probeUdp(sb, 'ml-train/trainer', 'feature-store', 514, { timeoutMs: 1500 })).code).toBe('EPERM');
    // Meanwhile the policy is widened; the agent sees it once the server is back.
    api.update({ ...trainPolicy([8080]), spec: { podSelector: { matchLabels: { 'weir.dev/domain': 'train-data' } }, egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }] } });
    await api.start();
    await newerThan(gen);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('ok');
  });

  it('answers weir explain over the local API with the verdict the packets show', async () => {
    api.update(trainPolicy([8080]));
    await waitFor('the narrowed policy', async () => (await tcp('ml-train/trainer', 'public-internet', 443)) === 'EPERM');
    const r = await queryLocalApi(socket, `/v1/explain?from=ml-train/trainer&to=${encodeURIComponent('203.0.113.10:443/TCP')}`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ explanation: { verdict: 'drop' } });
    const out: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string) => out.push(s) > 0) as typeof process.stdout.write;
    let allowed: number;
    let denied: number;
    try {
      allowed = await explainCommand.run(['--api-socket', socket, '--from', 'ml-train/trainer', '--to', '10.20.0.10:8080/TCP']);
      denied = await explainCommand.run(['--api-socket', socket, '--from', 'ml-train/trainer', '--to', '203.0.113.10:443/TCP']);
    } finally {
      process.stdout.write = write;
    }
    expect(allowed).toBe(0);
    expect(denied).toBe(1);
    expect(out.join('')).toMatch(/EgressPolicy\/ml-train\/train-data/);
    expect(out.join('')).toMatch(/from the running agent, policy generation \d+/);
    const bad = await queryLocalApi(socket, '/v1/explain?from=ml-train/nobody&to=10.20.0.10:8080/TCP');
    expect(bad.status).toBe(400);
  });

  it('reports violations as Kubernetes Events on the pod, one series per flow and rule', async () => {
    for (let i = 0; i < 3; i++) expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('EPERM');
    const trainer = api.get('Pod', 'ml-train', 'trainer') as { metadata: { uid: string } };
    type Ev = { reason: string; type: string; note: string; regarding: { name: string; uid?: string }; reportingController: string; reportingInstance: string; series?: { count: number } };
    let ev: Ev | undefined;
    await waitFor('an EgressViolation Event', () => {
      ev = (api.list('Event') as unknown as Ev[]).find((e) => e.reason === 'EgressViolation' && e.note.includes('203.0.113.10:443'));
      return ev !== undefined;
    });
    expect(ev).toMatchObject({
      type: 'Warning',
      regarding: { name: 'trainer', uid: trainer.metadata.uid },
      reportingController: 'weir.dev/agent',
      reportingInstance: 'node-a',
    });
    expect(ev?.note).toMatch(/drop TCP 203\.0\.113\.10:443 by EgressPolicy\/ml-train\/train-data/);
    // Every denied connect to 203.0.113.10:443 in this file is one series on one Event object.
    await waitFor('the series to count the three connects above', () => {
      const mine = (api.list('Event') as unknown as Ev[]).filter((e) => e.reason === 'EgressViolation' && e.note.includes('203.0.113.10:443'));
      return mine.length === 1 && (mine[0]?.series?.count ?? 1) >= 3;
    });
  });

  it('reports a policy the API server holds but weir refuses as an InvalidPolicy Event, and keeps the last good version', async () => {
    api.update({ ...trainPolicy([8080]), spec: { podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '10.20.0.10/33' } }] }] } });
    type Ev = { reason: string; note: string; regarding: { kind: string; name: string } };
    await waitFor('an InvalidPolicy Event', () => (api.list('Event') as unknown as Ev[]).some((e) => e.reason === 'InvalidPolicy' && e.regarding.name === 'train-data'));
    const ev = (api.list('Event') as unknown as Ev[]).find((e) => e.reason === 'InvalidPolicy');
    expect(ev?.regarding.kind).toBe('EgressPolicy');
    expect(ev?.note).toMatch(/cidr|33/);
    expect(await tcp('ml-train/trainer', 'public-internet', 443)).toBe('EPERM');
    expect(await tcp('ml-train/trainer', 'feature-store', 8080)).toBe('ok');
  });
});
