// The Kubernetes Event reporter against the stand-in API server
// (test/helpers/fake-apiserver.ts, which validates events.k8s.io/v1 writes
// as kube-apiserver does), through the real @kubernetes/client-node request
// path, over HTTP on 127.0.0.1.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import type { Violation } from '../../src/agent/agent.js';
import { EventReporter, microTime, type EventReporterOptions, type ViolationEventInput } from '../../src/report/k8s-events.js';
import { FakeApiServer, type JsonObject, type RequestRecord } from '../helpers/fake-apiserver.js';

// The agent hands its Violation over as it is (type-checked, erased at run time).
const agentViolationFits: Violation extends ViolationEventInput ? true : never = true;
void agentViolationFits;

let dir: string;
let server: FakeApiServer;
let kubeconfig: string;
let registry: Registry;
let logLines: string[];
let reporter: EventReporter | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-events-'));
  server = new FakeApiServer({ bookmarkIntervalMs: 0 });
  await server.start();
  kubeconfig = await server.writeKubeconfig(dir);
  registry = new Registry();
  logLines = [];
  reporter = undefined;
});

afterEach(async () => {
  await reporter?.stop();
  await server.stop();
  await rm(dir, { recursive: true, force: true });
});

function newReporter(extra: Partial<EventReporterOptions> = {}): EventReporter {
  const logger = pino({ level: 'trace' }, { write: (line: string) => logLines.push(line) });
  reporter = new EventReporter({ kubeconfig, nodeName: 'node-a', logger, registry, flushIntervalMs: 200, firstWriteDelayMs: 20, backoff: { initialMs: 100, maxMs: 400 }, ...extra });
  return reporter;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Writes of Events, in arrival order. */
function writes(): RequestRecord[] {
  return server.requests.filter((r) => r.resource === 'events' && r.method !== 'GET');
}

function events(): JsonObject[] {
  return server.list('Event');
}

function field(o: unknown, path: string): unknown {
  let v: unknown = o;
  for (const p of path.split('.')) v = typeof v === 'object' && v !== null ? (v as Record<string, unknown>)[p] : undefined;
  return v;
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (m === undefined) throw new Error(`no metric ${name}`);
  let sum = 0;
  for (const v of (await m.get()).values) if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  return sum;
}

const POD_UID = '4b7e3f2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b';

function drop(extra: Partial<ViolationEventInput> = {}): ViolationEventInput {
  return {
    verdict: 'drop',
    namespace: 'ml-train',
    pod: 'trainer-0',
    podUid: POD_UID,
    policy: 'EgressPolicy/ml-train/train-data',
    rule: 'EgressPolicy/ml-train/train-data deny[0]',
    protocol: 'TCP',
    destination: '203.0.113.10',
    port: 443,
    count: 1,
    pid: 123,
    command: 'curl',
    ...extra,
  };
}

describe('EventReporter', () => {
  test('10,000 drops of one flow within a minute are one Event: one POST and one PATCH, and the Event says who, what and which rule', async () => {
    const t0 = Date.parse('2025-03-01T10:00:00.000Z');
    let clock = t0;
    const r = newReporter({ flushIntervalMs: 1000, firstWriteDelayMs: 50, now: () => clock });

    r.violation(drop());
    await waitFor('the first write', () => writes().length === 1);
    // The other 9,999 over the simulated minute (one every 6 ms), in real time a few hundred ms.
    for (let i = 1; i < 10_000; i++) {
      clock = t0 + i * 6;
      r.violation(drop({ pid: 999, command: 'wget' }));
      if (i % 500 === 0) await sleep(10);
    }
    await waitFor('the series update', () => writes().length === 2, 5000);
    await sleep(1500); // nothing left to write: no further request
    const w = writes();
    expect(w.map((x) => `${x.method} ${x.status}`)).toEqual(['POST 201', 'PATCH 200']);
    // The series is patched once per flush interval, not per violation.
    expect((w[1]?.time ?? 0) - (w[0]?.time ?? 0)).toBeGreaterThanOrEqual(950);
    expect(w[1]?.contentType).toBe('application/merge-patch+json');
    expect(w[1]?.body).toEqual({ series: { count: 10_000, lastObservedTime: microTime(t0 + 9999 * 6) } });

    const all = events();
    expect(all).toHaveLength(1);
    const e = all[0];
    expect(e).toMatchObject({
      apiVersion: 'events.k8s.io/v1',
      kind: 'Event',
      metadata: { namespace: 'ml-train' },
      type: 'Warning',
      reason: 'EgressViolation',
      action: 'Egress',
      reportingController: 'weir.dev/agent',
      reportingInstance: 'node-a',
      regarding: { apiVersion: 'v1', kind: 'Pod', namespace: 'ml-train', name: 'trainer-0', uid: POD_UID },
      related: { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', namespace: 'ml-train', name: 'train-data' },
      eventTime: '2025-03-01T10:00:00.000000Z',
      series: { count: 10_000, lastObservedTime: '2025-03-01T10:00:59.994000Z' },
      // Written once (the note is immutable): the first occurrence's process.
      note: 'drop TCP 203.0.113.10:443 by EgressPolicy/ml-train/train-data deny[0] (pid 123 curl)',
    });
    expect(String(field(e, 'metadata.name'))).toMatch(/^trainer-0\.[0-9a-f]{16}$/);
    expect(await metric('weir_k8s_events_written_total', { op: 'create' })).toBe(1);
    expect(await metric('weir_k8s_events_written_total', { op: 'patch' })).toBe(1);
    expect(await metric('weir_k8s_events_pending')).toBe(0);
  });

  test('distinct who/what/rule are distinct Events; audit verdicts are EgressAuditViolation; a single occurrence has no series', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    for (let i = 0; i < 3; i++) r.violation(drop());
    r.violation(drop({ rule: 'EgressPolicy/ml-train/train-data deny[1]', destination: '2001:db8::7', port: 8443 }));
    r.violation(drop({ verdict: 'audit', count: 4, policy: 'ClusterEgressPolicy//no-uploads', rule: 'ClusterEgressPolicy//no-uploads deny[0]', protocol: 'UDP', port: 53 }));
    r.violation(drop({ pod: 'trainer-1', podUid: 'other-uid', rule: 'no allow rule matched', protocol: 'ICMP', port: null, pid: 0, command: '' }));
    // Not violations, or nobody to attach them to: no Event.
    r.violation(drop({ verdict: 'allow' }));
    r.violation(drop({ namespace: '', pod: '', count: 7 }));
    expect(writes()).toHaveLength(0); // nothing is written from the caller's stack
    await r.flush();

    expect(writes().map((x) => `${x.method} ${x.status}`)).toEqual(['POST 201', 'POST 201', 'POST 201', 'POST 201']);
    const byNote = new Map(events().map((e) => [String(e['note']), e]));
    expect([...byNote.keys()].sort()).toEqual([
      'audit UDP 203.0.113.10:53 by ClusterEgressPolicy//no-uploads deny[0] (pid 123 curl)',
      'drop ICMP 203.0.113.10 by EgressPolicy/ml-train/train-data: no allow rule matched',
      'drop TCP 203.0.113.10:443 by EgressPolicy/ml-train/train-data deny[0] (pid 123 curl)',
      'drop TCP [2001:db8::7]:8443 by EgressPolicy/ml-train/train-data deny[1] (pid 123 curl)',
    ]);
    const audit = byNote.get('audit UDP 203.0.113.10:53 by ClusterEgressPolicy//no-uploads deny[0] (pid 123 curl)');
    expect(audit).toMatchObject({ reason: 'EgressAuditViolation', type: 'Warning', series: { count: 4 }, related: { kind: 'ClusterEgressPolicy', name: 'no-uploads' } });
    expect(field(audit, 'related.namespace')).toBeUndefined();
    expect(byNote.get('drop TCP 203.0.113.10:443 by EgressPolicy/ml-train/train-data deny[0] (pid 123 curl)')).toMatchObject({ reason: 'EgressViolation', series: { count: 3 } });
    const single = byNote.get('drop TCP [2001:db8::7]:8443 by EgressPolicy/ml-train/train-data deny[1] (pid 123 curl)');
    expect(single?.['series']).toBeUndefined();
    expect(byNote.get('drop ICMP 203.0.113.10 by EgressPolicy/ml-train/train-data: no allow rule matched')).toMatchObject({ regarding: { name: 'trainer-1', uid: 'other-uid' } });
    expect(await metric('weir_k8s_events_dropped_total', { reason: 'no-pod' })).toBe(7);
  });

  test('drops no policy rule decided have Event reasons of their own: map-full (EgressDroppedMapFull) and not-compiled (EgressDroppedPolicyNotCompiled)', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    const full = 'not a policy decision: weir_ct (or weir_pod_ips) is full, so this may be a reply or own-address packet whose entry could not be kept';
    r.violation(drop({ reason: 'map-full', policy: '', rule: full, protocol: 'UDP', port: 5353 }));
    r.violation(drop({ reason: 'not-compiled', rule: 'policy did not compile: its pods are isolated with nothing allowed until it does', port: 80 }));
    r.violation(drop({ reason: 'default-deny', rule: 'no allow rule matched', port: 81 }));
    // An audit verdict stays an audit Event whatever the reason.
    r.violation(drop({ verdict: 'audit', reason: 'map-full', policy: '', rule: full, port: 82 }));
    await r.flush();
    const reasons = events()
      .map((e) => `${String(e['reason'])} ${String(e['note']).split(' ').slice(0, 3).join(' ')}`)
      .sort();
    expect(reasons).toEqual([
      'EgressAuditViolation audit TCP 203.0.113.10:82',
      'EgressDroppedMapFull drop UDP 203.0.113.10:5353',
      'EgressDroppedPolicyNotCompiled drop TCP 203.0.113.10:80',
      'EgressViolation drop TCP 203.0.113.10:81',
    ]);
  });

  test('a pod the datapath has no room for: EgressNotEnforced regarding the pod, one series however often the agent retries', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    for (let i = 0; i < 3; i++) r.podNotEnforced({ namespace: 'ml-train', pod: 'trainer-9', podUid: 'u9', message: 'endpoints is full (2 entries) (raise weir agent --max-pods)' });
    await r.flush();
    expect(events()).toHaveLength(1);
    expect(events()[0]).toMatchObject({
      type: 'Warning',
      reason: 'EgressNotEnforced',
      action: 'Enforce',
      regarding: { kind: 'Pod', namespace: 'ml-train', name: 'trainer-9', uid: 'u9' },
      note: 'egress of this pod is not governed: endpoints is full (2 entries) (raise weir agent --max-pods)',
      series: { count: 3 },
    });
  });

  test('an address of a DNS answer not learned: FqdnLearnRefused regarding the pod, one series per name and reason with every refusal counted', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    r.fqdnRefused({ namespace: 'ml-train', pod: 'trainer-0', podUid: 'u0', name: 'api.models.example.com', address: '192.0.2.10', reason: 'slots-full', count: 2 });
    r.fqdnRefused({ namespace: 'ml-train', pod: 'trainer-0', podUid: 'u0', name: 'api.models.example.com', address: '192.0.2.11', reason: 'slots-full', count: 1 });
    r.fqdnRefused({ namespace: 'ml-train', pod: 'trainer-0', podUid: 'u0', name: 'api.models.example.com', address: '192.0.2.12', reason: 'map-full', count: 1 });
    await r.flush();
    const got = events().sort((a, b) => String(a['note']).localeCompare(String(b['note'])));
    expect(got).toHaveLength(2);
    expect(got[0]).toMatchObject({
      type: 'Warning',
      reason: 'FqdnLearnRefused',
      action: 'LearnAddress',
      regarding: { kind: 'Pod', namespace: 'ml-train', name: 'trainer-0', uid: 'u0' },
      note: 'address 192.0.2.10 of api.models.example.com not learned: the address already has 4 live names for this pod; connections to it are refused',
      series: { count: 3 },
    });
    expect(got[1]).toMatchObject({ note: 'address 192.0.2.12 of api.models.example.com not learned: weir_fqdn_learned is full on this node; connections to it are refused' });
  });

  test('InvalidPolicy: a Warning Event regarding the policy (cluster-scoped ones in default); the same problem again raises its series', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    r.invalidPolicy({ kind: 'EgressPolicy', namespace: 'ml-train', name: 'train-data', uid: 'pol-uid', message: 'spec.egress[0].to[0].ipBlock.cidr: invalid CIDR "10.0.0.0/33"' });
    r.invalidPolicy({ kind: 'ClusterEgressPolicy', name: 'no-uploads', message: 'x'.repeat(5000) });
    await r.flush();
    r.invalidPolicy({ kind: 'EgressPolicy', namespace: 'ml-train', name: 'train-data', uid: 'pol-uid', message: 'spec.egress[0].to[0].ipBlock.cidr: invalid CIDR "10.0.0.0/33"' });
    await r.flush();

    expect(writes().map((x) => `${x.method} ${x.status}`)).toEqual(['POST 201', 'POST 201', 'PATCH 200']);
    const ns = events().find((e) => field(e, 'metadata.namespace') === 'ml-train');
    expect(ns).toMatchObject({
      type: 'Warning',
      reason: 'InvalidPolicy',
      action: 'LoadPolicy',
      reportingController: 'weir.dev/agent',
      reportingInstance: 'node-a',
      regarding: { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', namespace: 'ml-train', name: 'train-data', uid: 'pol-uid' },
      note: 'spec.egress[0].to[0].ipBlock.cidr: invalid CIDR "10.0.0.0/33"',
      series: { count: 2 },
    });
    const cluster = events().find((e) => field(e, 'regarding.kind') === 'ClusterEgressPolicy');
    expect(field(cluster, 'metadata.namespace')).toBe('default');
    expect(field(cluster, 'regarding.namespace')).toBeUndefined();
    // The API server's limit on notes holds: cut to 1 KiB.
    expect(Buffer.byteLength(String(field(cluster, 'note')))).toBeLessThanOrEqual(1024);
  });

  test('429 with Retry-After: no write before it has passed, then the Event is written with every count, and the token is never logged', async () => {
    const r = newReporter();
    server.failNext(1, 429, 1, { resource: 'events', method: 'POST' });
    for (let i = 0; i < 5; i++) r.violation(drop());
    await waitFor('the refused create', () => writes().length === 1);
    for (let i = 0; i < 5; i++) r.violation(drop()); // during the backoff: kept
    await waitFor('the Event', () => events().length === 1, 5000);
    let w = writes();
    expect(w.map((x) => `${x.method} ${x.status}`)).toEqual(['POST 429', 'POST 201']);
    expect((w[1]?.time ?? 0) - (w[0]?.time ?? 0)).toBeGreaterThanOrEqual(1000);
    expect(field(events()[0], 'series.count')).toBe(10);

    // The same for a series update, and a 503 without Retry-After backs off too.
    server.failNext(1, 429, 1, { resource: 'events', method: 'PATCH' });
    server.failNext(1, 503, undefined, { resource: 'events', method: 'PATCH' });
    for (let i = 0; i < 5; i++) r.violation(drop());
    await waitFor('the series update', () => field(events()[0], 'series.count') === 15, 8000);
    w = writes().slice(2);
    expect(w.map((x) => `${x.method} ${x.status}`)).toEqual(['PATCH 429', 'PATCH 503', 'PATCH 200']);
    expect((w[1]?.time ?? 0) - (w[0]?.time ?? 0)).toBeGreaterThanOrEqual(1000);
    // Second failure in a row: jittered between half and all of 2 × 100 ms.
    expect((w[2]?.time ?? 0) - (w[1]?.time ?? 0)).toBeGreaterThanOrEqual(100);
    expect(await metric('weir_k8s_events_write_errors_total', { reason: 'throttled' })).toBe(2);
    expect(await metric('weir_k8s_events_write_errors_total', { reason: 'server' })).toBe(1);
    expect(await metric('weir_k8s_events_dropped_total')).toBe(0);
    expect(server.requests.every((x) => x.authorized)).toBe(true);
    expect(logLines.some((l) => l.includes('retrying later'))).toBe(true);
    expect(logLines.join('\n')).not.toContain(server.token);
  });

  test('an Event deleted on the server (or expired by its TTL) is created again on the next write, with the whole count', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    for (let i = 0; i < 3; i++) r.violation(drop());
    await r.flush();
    const first = events()[0];
    const name = String(field(first, 'metadata.name'));
    server.delete('Event', 'ml-train', name);
    for (let i = 0; i < 2; i++) r.violation(drop());
    await r.flush();

    expect(writes().map((x) => `${x.method} ${x.status}`)).toEqual(['POST 201', 'PATCH 404', 'POST 201']);
    const all = events();
    expect(all).toHaveLength(1);
    expect(field(all[0], 'metadata.name')).not.toBe(name);
    expect(all[0]).toMatchObject({ reason: 'EgressViolation', eventTime: first?.['eventTime'], series: { count: 5 } });
    expect(await metric('weir_k8s_events_write_errors_total', { reason: 'not-found' })).toBe(1);
    expect(await metric('weir_k8s_events_written_total', { op: 'create' })).toBe(2);
  });

  test('memory stays bounded: beyond maxPending series the least recently seen is evicted and its occurrences counted as dropped', async () => {
    const r = newReporter({ maxPending: 3, firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    for (let port = 1; port <= 5; port++) r.violation(drop({ port, count: port * 10 }));
    r.violation(drop({ port: 1 })); // port 1 was evicted: a new series
    await r.flush();
    expect(writes()).toHaveLength(3);
    expect(events().map((e) => String(e['note']).split(' ')[2]).sort()).toEqual(['203.0.113.10:1', '203.0.113.10:4', '203.0.113.10:5']);
    expect(await metric('weir_k8s_events_dropped_total', { reason: 'overflow' })).toBe(10 + 20 + 30);
  });

  test('a refused Event (403: no RBAC for events) is dropped and counted, not retried; the caller never sees an error', async () => {
    const r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    server.failNext(1, 403, undefined, { resource: 'events', method: 'POST' });
    r.violation(drop({ count: 4 }));
    await expect(r.flush()).resolves.toBeUndefined();
    await r.flush();
    expect(writes().map((x) => `${x.method} ${x.status}`)).toEqual(['POST 403']);
    expect(await metric('weir_k8s_events_dropped_total', { reason: 'rejected' })).toBe(4);
    expect(await metric('weir_k8s_events_write_errors_total', { reason: 'forbidden' })).toBe(1);
    expect(() => r.violation({ ...drop(), count: Number.NaN, port: null, destination: '' })).not.toThrow();
  });

  test('stop() writes what is pending and leaves no timers or sockets, also when stopped during a backoff', async () => {
    const active = (): string[] => process.getActiveResourcesInfo();
    const leftOver = (base: string[]): string[] => {
      const rest = [...base];
      return active().filter((x) => {
        const i = rest.indexOf(x);
        if (i < 0) return true;
        rest.splice(i, 1);
        return false;
      });
    };
    // vitest holds a timer for a moment after a test starts; the baseline is taken once it is gone.
    await sleep(300);
    const baseline = active();

    let r = newReporter({ firstWriteDelayMs: 60_000, flushIntervalMs: 60_000 });
    expect(leftOver(baseline)).toEqual([]); // idle: no timer at all
    r.violation(drop({ count: 2 }));
    expect(leftOver(baseline)).toContain('Timeout');
    await r.stop();
    expect(events()).toHaveLength(1);
    expect(field(events()[0], 'series.count')).toBe(2);
    await sleep(50);
    expect(leftOver(baseline)).toEqual([]);
    r.violation(drop()); // after stop: ignored, counted
    expect(await metric('weir_k8s_events_dropped_total', { reason: 'shutdown' })).toBe(1);

    // Stopped while backing off from an API server that is down.
    registry = new Registry();
    r = newReporter({ backoff: { initialMs: 60_000, maxMs: 60_000 } });
    await server.stop();
    r.violation(drop({ count: 3 }));
    await waitFor('the failed write', () => logLines.some((l) => l.includes('retrying later')));
    expect(leftOver(baseline)).toContain('Timeout');
    const started = Date.now();
    await r.stop();
    expect(Date.now() - started).toBeLessThan(1000);
    expect(await metric('weir_k8s_events_write_errors_total', { reason: 'network' })).toBe(1);
    expect(await metric('weir_k8s_events_dropped_total', { reason: 'shutdown' })).toBe(3);
    await sleep(50);
    expect(leftOver(baseline)).toEqual([]);
  });
});

describe('fake API server: events.k8s.io/v1 writes', () => {
  async function call(method: string, path: string, body: unknown, contentType = 'application/json'): Promise<{ status: number; body: JsonObject }> {
    const res = await fetch(`${server.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${server.token}`, 'content-type': contentType },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as JsonObject };
  }
  const base = '/apis/events.k8s.io/v1/namespaces/ml/events';
  const valid = {
    metadata: { name: 'p.1' },
    eventTime: '2025-03-01T10:00:00.000000Z',
    reportingController: 'weir.dev/agent',
    reportingInstance: 'node-a',
    action: 'Egress',
    reason: 'EgressViolation',
    type: 'Warning',
    note: 'n',
    regarding: { apiVersion: 'v1', kind: 'Pod', namespace: 'ml', name: 'p' },
  };

  test('validates as kube-apiserver does: MicroTime, required fields, namespaces, series, immutable fields, patch types', async () => {
    expect((await call('POST', base, { ...valid, eventTime: '2025-03-01T10:00:00.000Z' })).status).toBe(422);
    expect((await call('POST', base, { ...valid, reportingController: '' })).status).toBe(422);
    expect((await call('POST', base, { ...valid, regarding: { ...valid.regarding, namespace: 'other' } })).status).toBe(422);
    expect((await call('POST', base, { ...valid, series: { count: 1, lastObservedTime: valid.eventTime } })).status).toBe(422);
    expect((await call('POST', base, { ...valid, note: 'x'.repeat(1025) })).status).toBe(422);
    expect((await call('POST', base, { ...valid, metadata: { name: 'p.1', namespace: 'other' } })).status).toBe(400);
    const created = await call('POST', base, valid);
    expect(created.status).toBe(201);
    expect(field(created.body, 'metadata.uid')).toEqual(expect.any(String));
    expect((await call('POST', base, valid)).status).toBe(409);

    expect((await call('PATCH', `${base}/p.1`, { note: 'changed' }, 'application/merge-patch+json')).status).toBe(422);
    expect((await call('PATCH', `${base}/p.1`, [{ op: 'add', path: '/series', value: {} }], 'application/json-patch+json')).status).toBe(415);
    const patched = await call('PATCH', `${base}/p.1`, { series: { count: 2, lastObservedTime: '2025-03-01T10:00:01.000000Z' } }, 'application/strategic-merge-patch+json');
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ note: 'n', series: { count: 2 } });
    expect((await call('PATCH', `${base}/gone`, { series: { count: 2 } }, 'application/merge-patch+json')).status).toBe(404);

    const got = await fetch(`${server.url}${base}/p.1`, { headers: { authorization: `Bearer ${server.token}` } });
    expect(((await got.json()) as JsonObject)['series']).toEqual({ count: 2, lastObservedTime: '2025-03-01T10:00:01.000000Z' });
    expect((await call('POST', '/api/v1/namespaces/ml/pods', { metadata: { name: 'x' } })).status).toBe(405);
    expect(server.requests.filter((x) => x.method === 'PATCH').map((x) => x.contentType)).toEqual([
      'application/merge-patch+json',
      'application/json-patch+json',
      'application/strategic-merge-patch+json',
      'application/merge-patch+json',
    ]);
  });
});
