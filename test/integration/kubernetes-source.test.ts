// The Kubernetes source against a stand-in API server that speaks the real
// list/watch protocol (test/helpers/fake-apiserver.ts), through the real
// @kubernetes/client-node library, over HTTP on 127.0.0.1.

import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { ObjectStore } from '../../src/model/store.js';
import type { KubeKind } from '../../src/model/types.js';
import { parseRetryAfter, redactSecrets } from '../../src/sources/kube-client.js';
import { KubernetesSource, type KubernetesSourceError, type KubernetesSourceOptions } from '../../src/sources/kubernetes.js';
import { FakeApiServer, type FakeApiServerOptions, type FakeObjectInput, type RequestRecord } from '../helpers/fake-apiserver.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

const RESOURCES = ['namespaces', 'pods', 'services', 'endpointslices', 'networkpolicies', 'egresspolicies', 'clusteregresspolicies'];

let dir: string;
let server: FakeApiServer;
let kubeconfig: string;
let store: ObjectStore;
let registry: Registry;
let logLines: string[];
let errors: KubernetesSourceError[];
let source: KubernetesSource | undefined;

async function setup(opts: FakeApiServerOptions = {}): Promise<void> {
  server = new FakeApiServer({ bookmarkIntervalMs: 0, ...opts });
  await server.start();
  kubeconfig = await server.writeKubeconfig(dir);
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-kube-'));
  store = new ObjectStore();
  registry = new Registry();
  logLines = [];
  errors = [];
  source = undefined;
});

afterEach(async () => {
  await source?.stop();
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

function newSource(extra: Partial<KubernetesSourceOptions> = {}): KubernetesSource {
  const logger = pino({ level: 'trace' }, { write: (line: string) => logLines.push(line) });
  source = new KubernetesSource({
    kubeconfig,
    nodeName: 'node-a',
    store,
    logger,
    registry,
    onError: (e) => errors.push(e),
    backoff: { initialMs: 100, maxMs: 800 },
    ...extra,
  });
  return source;
}

async function startSource(extra: Partial<KubernetesSourceOptions> = {}): Promise<KubernetesSource> {
  const s = newSource(extra);
  await s.start();
  return s;
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every resource has its watch open on the server. */
async function watching(): Promise<void> {
  await waitFor('every watch to be open', () => RESOURCES.every((r) => server.openWatches(r) === 1));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (m === undefined) throw new Error(`no metric ${name}`);
  const { values } = await m.get();
  let sum = 0;
  for (const v of values) {
    if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  }
  return sum;
}

function requestsFor(resource: string, kind: 'list' | 'watch', since = 0): RequestRecord[] {
  return server.requests.filter((r) => r.resource === resource && r.watch === (kind === 'watch') && r.time >= since);
}

function lastWatch(resource: string): RequestRecord | undefined {
  return requestsFor(resource, 'watch').at(-1);
}

// ---------------------------------------------------------------------------
// Objects

function namespace(name: string, labels: Record<string, string> = {}): FakeObjectInput {
  return { kind: 'Namespace', metadata: { name, labels } };
}

function pod(ns: string, name: string, opts: { node?: string; ip?: string; labels?: Record<string, string>; phase?: string } = {}): FakeObjectInput {
  const ip = opts.ip ?? '10.0.0.5';
  return {
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: opts.labels ?? { app: name } },
    spec: {
      ...(opts.node !== undefined ? { nodeName: opts.node } : { nodeName: 'node-a' }),
      containers: [{ name: 'main', image: 'example/app:1', ports: [{ name: 'http', containerPort: 8080 }] }],
      restartPolicy: 'Always',
    },
    status: { phase: opts.phase ?? 'Running', podIP: ip, podIPs: [{ ip }], qosClass: 'BestEffort', conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

function service(ns: string, name: string, clusterIP = '10.96.0.10'): FakeObjectInput {
  return { kind: 'Service', metadata: { name, namespace: ns }, spec: { type: 'ClusterIP', clusterIP, clusterIPs: [clusterIP], selector: { app: name }, ports: [{ name: 'https', port: 443, targetPort: 8443, protocol: 'TCP' }] } };
}

function endpointSlice(ns: string, name: string, ip = '10.0.0.9'): FakeObjectInput {
  return {
    kind: 'EndpointSlice',
    metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': name.replace(/-[a-z0-9]+$/, '') } },
    addressType: 'IPv4',
    endpoints: [{ addresses: [ip], conditions: { ready: true, serving: true, terminating: false } }],
    ports: [{ name: 'https', port: 8443, protocol: 'TCP' }],
  };
}

function networkPolicy(ns: string, name: string): FakeObjectInput {
  return { kind: 'NetworkPolicy', metadata: { name, namespace: ns }, spec: { podSelector: {}, policyTypes: ['Egress'] } };
}

function egressPolicy(ns: string, name: string, cidr = '10.20.0.0/16'): FakeObjectInput {
  return {
    kind: 'EgressPolicy',
    metadata: { name, namespace: ns },
    spec: { podSelector: { matchLabels: { 'weir.dev/domain': 'train-data' } }, mode: 'Enforce', egress: [{ to: [{ ipBlock: { cidr } }], ports: [{ protocol: 'TCP', port: 443 }] }] },
  };
}

function clusterEgressPolicy(name: string): FakeObjectInput {
  return { kind: 'ClusterEgressPolicy', metadata: { name }, spec: { namespaceSelector: {}, podSelector: {}, mode: 'Audit', deny: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }] } };
}

/** One object of every kind, in namespace ml. */
function seed(): void {
  server.create(namespace('ml', { team: 'ml' }));
  server.create(pod('ml', 'trainer'));
  server.create(service('ml', 'feature-store'));
  server.create(endpointSlice('ml', 'feature-store-abc12'));
  server.create(networkPolicy('ml', 'default-deny'));
  server.create(egressPolicy('ml', 'train-data'));
  server.create(clusterEgressPolicy('no-internet'));
}

const KINDS: readonly KubeKind[] = ['Namespace', 'Pod', 'Service', 'EndpointSlice', 'NetworkPolicy', 'EgressPolicy', 'ClusterEgressPolicy'];

function storeKeys(): string[] {
  return KINDS.flatMap((k) => store.keys(k)).sort();
}

const SEEDED_KEYS = [
  'ClusterEgressPolicy//no-internet',
  'EgressPolicy/ml/train-data',
  'EndpointSlice/ml/feature-store-abc12',
  'Namespace//ml',
  'NetworkPolicy/ml/default-deny',
  'Pod/ml/trainer',
  'Service/ml/feature-store',
];

// ---------------------------------------------------------------------------

describe('KubernetesSource', () => {
  test('initial sync: every kind is listed into the store, validated, with the apiVersion/kind the list leaves out filled in', async () => {
    await setup();
    seed();
    const s = newSource();
    expect(s.synced).toBe(false);
    await s.start();
    expect(s.synced).toBe(true);
    expect(storeKeys()).toEqual(SEEDED_KEYS);
    await watching();

    const p = store.get('Pod', 'ml', 'trainer');
    expect(p?.apiVersion).toBe('v1');
    expect(p?.spec.nodeName).toBe('node-a');
    expect(p?.status?.podIPs).toEqual([{ ip: '10.0.0.5' }]);
    expect(p?.spec.containers[0]?.ports).toEqual([{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);
    expect(p?.metadata.uid).toMatch(/^[0-9a-f-]{36}$/);
    // Reduced to what weir reads: no image, no conditions, no resourceVersion.
    expect(JSON.stringify(p)).not.toContain('example/app');
    expect(JSON.stringify(p)).not.toContain('conditions');
    expect(p?.metadata.resourceVersion).toBeUndefined();
    expect(store.get('Namespace', undefined, 'ml')?.metadata.labels).toEqual({ team: 'ml', 'kubernetes.io/metadata.name': 'ml' });
    expect(store.get('EgressPolicy', 'ml', 'train-data')?.spec.mode).toBe('Enforce');
    expect(store.get('ClusterEgressPolicy', undefined, 'no-internet')?.spec.mode).toBe('Audit');
    expect(store.get('EndpointSlice', 'ml', 'feature-store-abc12')?.endpoints[0]?.addresses).toEqual(['10.0.0.9']);
    expect(store.get('Service', 'ml', 'feature-store')?.spec.clusterIP).toBe('10.96.0.10');
    expect(store.get('NetworkPolicy', 'ml', 'default-deny')?.spec.policyTypes).toEqual(['Egress']);

    for (const r of RESOURCES) {
      expect(await metric('weir_watch_synced', { resource: r }), r).toBe(1);
      const lists = requestsFor(r, 'list');
      expect(lists, r).toHaveLength(1);
      expect(lists[0]?.query['resourceVersion'], `${r}: first list from the watch cache`).toBe('0');
      const w = lastWatch(r);
      expect(w?.query['allowWatchBookmarks'], r).toBe('true');
      expect(w?.resourceVersion, r).toBe(server.resourceVersion);
      expect(Number(w?.query['timeoutSeconds'])).toBeGreaterThanOrEqual(300);
    }
    expect(s.status().every((x) => x.synced && x.resourceVersion === server.resourceVersion)).toBe(true);
    expect(errors).toEqual([]);
  });

  test('add, update and delete of every kind propagate to the store', async () => {
    await setup();
    await startSource();
    expect(store.size).toBe(0);

    seed();
    await waitFor('every seeded object', () => storeKeys().length === SEEDED_KEYS.length);
    expect(storeKeys()).toEqual(SEEDED_KEYS);

    server.update(namespace('ml', { team: 'research' }));
    server.update(pod('ml', 'trainer', { ip: '10.0.0.77' }));
    server.update(service('ml', 'feature-store', '10.96.0.99'));
    server.update(endpointSlice('ml', 'feature-store-abc12', '10.0.0.10'));
    server.update({ ...networkPolicy('ml', 'default-deny'), spec: { podSelector: { matchLabels: { app: 'x' } }, policyTypes: ['Egress'] } });
    server.update(egressPolicy('ml', 'train-data', '10.30.0.0/16'));
    server.update({ ...clusterEgressPolicy('no-internet'), spec: { namespaceSelector: {}, podSelector: {}, mode: 'Enforce' } });
    await waitFor('every update', () => store.get('ClusterEgressPolicy', undefined, 'no-internet')?.spec.mode === 'Enforce');
    expect(store.get('Namespace', undefined, 'ml')?.metadata.labels?.['team']).toBe('research');
    expect(store.podByIP('10.0.0.77')?.metadata.name).toBe('trainer');
    expect(store.podByIP('10.0.0.5')).toBeUndefined();
    expect(store.get('Service', 'ml', 'feature-store')?.spec.clusterIP).toBe('10.96.0.99');
    expect(store.get('EndpointSlice', 'ml', 'feature-store-abc12')?.endpoints[0]?.addresses).toEqual(['10.0.0.10']);
    expect(store.get('NetworkPolicy', 'ml', 'default-deny')?.spec.podSelector).toEqual({ matchLabels: { app: 'x' } });
    expect(store.get('EgressPolicy', 'ml', 'train-data')?.spec.egress?.[0]?.to?.[0]?.ipBlock?.cidr).toBe('10.30.0.0/16');

    // A status-only change of a pod is not a change of the model.
    const rev = store.revision;
    const p = pod('ml', 'trainer', { ip: '10.0.0.77' });
    server.update({ ...p, status: { ...(p['status'] as object), conditions: [{ type: 'Ready', status: 'False' }] } });
    await waitFor('the MODIFIED event', async () => (await metric('weir_watch_events_total', { resource: 'pods', type: 'MODIFIED' })) === 2);
    expect(store.revision).toBe(rev);

    server.delete('Pod', 'ml', 'trainer');
    server.delete('Service', 'ml', 'feature-store');
    server.delete('EndpointSlice', 'ml', 'feature-store-abc12');
    server.delete('NetworkPolicy', 'ml', 'default-deny');
    server.delete('EgressPolicy', 'ml', 'train-data');
    server.delete('ClusterEgressPolicy', undefined, 'no-internet');
    server.delete('Namespace', undefined, 'ml');
    await waitFor('every delete', () => store.size === 0);
    expect(await metric('weir_watch_events_total', { type: 'DELETED' })).toBe(7);
    expect(await metric('weir_watch_events_total', { type: 'ADDED' })).toBe(7);
    expect(await metric('weir_watch_events_total', { type: 'MODIFIED' })).toBe(8);
  });

  test('a watch cut mid-stream resumes from the last resourceVersion it saw, without a re-list', async () => {
    await setup();
    seed();
    await startSource();
    await watching();
    server.create(pod('ml', 'worker-1', { ip: '10.0.0.6' }));
    await waitFor('worker-1', () => store.get('Pod', 'ml', 'worker-1') !== undefined);
    const podsSeen = server.resourceVersion; // the pods watch saw worker-1's ADDED
    const listRV = lastWatch('namespaces')?.resourceVersion;

    const cut = Date.now();
    expect(server.dropWatches()).toBe(7);
    server.create(pod('ml', 'worker-2', { ip: '10.0.0.7' })); // while the client reconnects
    await waitFor('worker-2', () => store.get('Pod', 'ml', 'worker-2') !== undefined);
    await watching();

    expect(requestsFor('pods', 'watch', cut)[0]?.resourceVersion).toBe(podsSeen);
    expect(requestsFor('namespaces', 'watch', cut)[0]?.resourceVersion).toBe(listRV);
    for (const r of RESOURCES) expect(requestsFor(r, 'list'), `${r} was not listed again`).toHaveLength(1);
    expect(await metric('weir_watch_restarts_total', { resource: 'pods', reason: 'connection' })).toBe(1);
    expect(await metric('weir_watch_restarts_total', { reason: 'gone' })).toBe(0);
    expect(storeKeys()).toEqual([...SEEDED_KEYS, 'Pod/ml/worker-1', 'Pod/ml/worker-2'].sort());
  });

  test.each(['event', 'http'] as const)(
    '410 Gone (as %s) triggers a consistent re-list: objects deleted during the gap disappear, the rest stay, the watch continues from the new list',
    async (goneAs) => {
      await setup({ goneAs });
      seed();
      server.create(pod('ml', 'worker-1', { ip: '10.0.0.6' }));
      await startSource();
      await watching();

      // A gap the client cannot replay: changes while it is away, then compaction.
      await server.stop();
      server.delete('Pod', 'ml', 'trainer');
      server.delete('EgressPolicy', 'ml', 'train-data');
      server.create(pod('ml', 'late', { ip: '10.0.0.8' }));
      server.update(service('ml', 'feature-store', '10.96.0.50'));
      server.compact();
      const back = Date.now();
      await server.start();

      await waitFor('the gap to be reconciled', () => store.get('Pod', 'ml', 'trainer') === undefined && store.get('EgressPolicy', 'ml', 'train-data') === undefined && store.get('Pod', 'ml', 'late') !== undefined);
      await waitFor('the service update', () => store.get('Service', 'ml', 'feature-store')?.spec.clusterIP === '10.96.0.50');
      expect(storeKeys()).toEqual(
        ['ClusterEgressPolicy//no-internet', 'EndpointSlice/ml/feature-store-abc12', 'Namespace//ml', 'NetworkPolicy/ml/default-deny', 'Pod/ml/late', 'Pod/ml/worker-1', 'Service/ml/feature-store'].sort(),
      );
      await watching();
      for (const r of RESOURCES) {
        const relists = requestsFor(r, 'list', back);
        expect(relists, r).toHaveLength(1);
        expect(relists[0]?.query['resourceVersion'], `${r}: a re-list is a consistent read`).toBeUndefined();
        expect(lastWatch(r)?.resourceVersion, `${r}: watch from the new list`).toBe(server.resourceVersion);
      }
      const refused = requestsFor('pods', 'watch', back)[0];
      expect(refused?.status).toBe(goneAs === 'http' ? 410 : 200);
      expect(await metric('weir_watch_restarts_total', { resource: 'pods', reason: 'gone' })).toBe(1);
      expect(await metric('weir_watch_restarts_total', { reason: 'gone' })).toBe(7);
      if (goneAs === 'event') expect(await metric('weir_watch_events_total', { resource: 'pods', type: 'ERROR' })).toBe(1);
      expect(await metric('weir_watch_synced', { resource: 'pods' })).toBe(1);
    },
  );

  test('bookmarks advance the resume version: after compaction a cut watch resumes without 410 or re-list (and without a bookmark it would re-list)', async () => {
    await setup();
    seed();
    await startSource();
    await watching();
    expect(server.requests.filter((r) => r.watch).every((r) => r.query['allowWatchBookmarks'] === 'true')).toBe(true);

    // Only namespaces change, so the other watches see nothing but bookmarks.
    for (let i = 0; i < 20; i++) server.create(namespace(`ns-${i}`));
    const latest = server.resourceVersion;
    server.bookmark();
    await waitFor('every informer to take the bookmark', () => source?.status().every((x) => x.resourceVersion === latest) ?? false);
    expect(await metric('weir_watch_events_total', { type: 'BOOKMARK' })).toBe(7);

    server.compact();
    let cut = Date.now();
    server.dropWatches();
    await watching();
    for (const r of RESOURCES) {
      const resumed = requestsFor(r, 'watch', cut)[0];
      expect(resumed?.resourceVersion, r).toBe(latest);
      expect(resumed?.status, r).toBe(200);
      expect(requestsFor(r, 'list'), r).toHaveLength(1);
    }
    expect(await metric('weir_watch_restarts_total', { reason: 'gone' })).toBe(0);

    // The contrast: the same sequence without a bookmark.
    for (let i = 20; i < 25; i++) server.create(namespace(`ns-${i}`));
    // (A cut drops whatever is still in the socket buffers: let the namespaces arrive first.)
    await waitFor('the namespaces', () => store.keys('Namespace').length === 26);
    server.compact();
    cut = Date.now();
    server.dropWatches();
    await waitFor('the re-list of pods', () => requestsFor('pods', 'list', cut).length === 1);
    await watching();
    expect(requestsFor('namespaces', 'list', cut)).toHaveLength(0); // its watch saw every change
    expect(await metric('weir_watch_restarts_total', { reason: 'gone' })).toBe(6);
    expect(store.keys('Namespace')).toHaveLength(26);
  });

  test('429 with Retry-After: the watch is not retried before Retry-After, resumes where it was, and is counted as throttled', async () => {
    await setup();
    seed();
    await startSource();
    await watching();
    server.failNext(1, 429, 2, { resource: 'pods', watch: true });
    const cut = Date.now();
    server.endWatches('pods'); // a clean end: the client reconnects at once and meets the 429
    await waitFor('the retry after the 429', () => requestsFor('pods', 'watch', cut).length >= 2, 8000);
    const [throttled, retry] = requestsFor('pods', 'watch', cut);
    expect(throttled?.status).toBe(429);
    expect(retry?.status).toBe(200);
    expect((retry?.time ?? 0) - (throttled?.time ?? 0)).toBeGreaterThanOrEqual(2000);
    expect(retry?.resourceVersion).toBe(throttled?.resourceVersion);
    expect(requestsFor('pods', 'list')).toHaveLength(1);
    expect(await metric('weir_watch_restarts_total', { resource: 'pods', reason: 'closed' })).toBe(1);
    expect(await metric('weir_watch_restarts_total', { resource: 'pods', reason: 'throttled' })).toBe(1);
    expect(errors).toContainEqual(expect.objectContaining({ reason: 'watch', resource: 'pods', status: 429, watchReason: 'throttled' }));
    expect(logLines.some((l) => l.includes('"retryAfterMs":2000'))).toBe(true);
  });

  test('failing initial lists (500, 429 with Retry-After) are retried with backoff; start() resolves once every resource is listed', async () => {
    await setup();
    seed();
    server.failNext(2, 500, undefined, { resource: 'services', watch: false });
    server.failNext(1, 429, 1, { resource: 'namespaces', watch: false });
    const t0 = Date.now();
    await startSource();
    expect(storeKeys()).toEqual(SEEDED_KEYS);
    const services = requestsFor('services', 'list');
    expect(services.map((r) => r.status)).toEqual([500, 500, 200]);
    // The first list never succeeded, so the retry still reads from the watch cache.
    expect(services.map((r) => r.query['resourceVersion'])).toEqual(['0', '0', '0']);
    const ns = requestsFor('namespaces', 'list');
    expect(ns.map((r) => r.status)).toEqual([429, 200]);
    expect((ns[1]?.time ?? 0) - (ns[0]?.time ?? 0)).toBeGreaterThanOrEqual(1000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(await metric('weir_watch_restarts_total', { resource: 'services', reason: 'server_error' })).toBe(2);
    expect(await metric('weir_watch_restarts_total', { resource: 'namespaces', reason: 'throttled' })).toBe(1);
  });

  test('an API outage keeps every object in the store; the source resumes from its resourceVersions and applies what changed meanwhile', async () => {
    await setup();
    seed();
    await startSource();
    await watching();
    const snapshot = (): string => JSON.stringify(KINDS.map((k) => store.list(k)));
    const before = snapshot();
    const rev = store.revision;

    await server.stop();
    // Every informer notices and keeps retrying (connection refused).
    await waitFor('two failed attempts per resource', async () => (await metric('weir_watch_restarts_total', { reason: 'connection' })) >= 14);
    expect(store.revision).toBe(rev);
    expect(snapshot()).toBe(before);
    expect(source?.synced).toBe(true);
    for (const r of RESOURCES) expect(await metric('weir_watch_synced', { resource: r }), r).toBe(0);
    // Reported once per resource, not once per attempt.
    expect(errors.filter((e) => e.reason === 'watch')).toHaveLength(7);

    server.delete('Pod', 'ml', 'trainer');
    server.create(pod('ml', 'replacement', { ip: '10.0.0.42' }));
    const back = Date.now();
    await server.start();
    await waitFor('the changes made during the outage', () => store.get('Pod', 'ml', 'trainer') === undefined && store.podByIP('10.0.0.42') !== undefined);
    await watching();
    for (const r of RESOURCES) {
      expect(requestsFor(r, 'list'), `${r}: no re-list`).toHaveLength(1);
      expect(await metric('weir_watch_synced', { resource: r }), r).toBe(1);
    }
    expect(requestsFor('pods', 'watch', back)[0]?.resourceVersion).not.toBe(server.resourceVersion);
    expect(store.size).toBe(SEEDED_KEYS.length);
  });

  test('an invalid object is reported (kind, namespace, name, field), counted and skipped while the rest sync; an invalid update keeps the last good version', async () => {
    await setup();
    seed();
    server.create({ ...egressPolicy('ml', 'broken'), spec: { podSelector: {}, mode: 'Sometimes' } });
    await startSource();
    expect(storeKeys()).toEqual(SEEDED_KEYS);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ reason: 'invalid', resource: 'egresspolicies', kind: 'EgressPolicy', namespace: 'ml', name: 'broken', field: 'spec.mode', object: 'EgressPolicy ml/broken' });
    const logged = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['name'] === 'broken');
    expect(logged).toMatchObject({ level: 50, component: 'kubernetes', resource: 'egresspolicies', kind: 'EgressPolicy', namespace: 'ml', name: 'broken', field: 'spec.mode' });
    expect(await metric('weir_watch_invalid_objects_total', { resource: 'egresspolicies' })).toBe(1);

    server.update(egressPolicy('ml', 'train-data', '10.20.0.0/33'));
    await waitFor('the invalid update to be reported', () => errors.length === 2);
    expect(errors[1]).toMatchObject({ name: 'train-data', field: 'spec.egress[0].to[0].ipBlock.cidr' });
    expect(store.get('EgressPolicy', 'ml', 'train-data')?.spec.egress?.[0]?.to?.[0]?.ipBlock?.cidr).toBe('10.20.0.0/16');

    // Fixed: it loads. Deleted: its last good version goes too.
    server.update(egressPolicy('ml', 'broken', '10.40.0.0/16'));
    await waitFor('the fixed policy', () => store.get('EgressPolicy', 'ml', 'broken') !== undefined);
    server.delete('EgressPolicy', 'ml', 'train-data');
    await waitFor('the delete', () => store.get('EgressPolicy', 'ml', 'train-data') === undefined);
    expect(await metric('weir_watch_invalid_objects_total', { resource: 'egresspolicies' })).toBe(2);
  });

  test('restart and event counters: a clean end counts as closed, a cut as connection, and events count by type', async () => {
    await setup();
    seed();
    await startSource();
    await watching();
    expect(server.endWatches()).toBe(7);
    await waitFor('clean resumes', async () => (await metric('weir_watch_restarts_total', { reason: 'closed' })) === 7);
    await watching();
    expect(server.dropWatches()).toBe(7);
    await waitFor('resumes after the cut', async () => (await metric('weir_watch_restarts_total', { reason: 'connection' })) === 7);
    await watching();
    for (const r of RESOURCES) {
      expect(await metric('weir_watch_restarts_total', { resource: r, reason: 'closed' }), r).toBe(1);
      expect(await metric('weir_watch_restarts_total', { resource: r, reason: 'connection' }), r).toBe(1);
    }
    server.create(pod('ml', 'a', { ip: '10.0.1.1' }));
    server.update(pod('ml', 'a', { ip: '10.0.1.2' }));
    server.delete('Pod', 'ml', 'a');
    server.bookmark();
    await waitFor('the pod events', async () => (await metric('weir_watch_events_total', { resource: 'pods', type: 'BOOKMARK' })) === 1);
    expect(await metric('weir_watch_events_total', { resource: 'pods', type: 'ADDED' })).toBe(1);
    expect(await metric('weir_watch_events_total', { resource: 'pods', type: 'MODIFIED' })).toBe(1);
    expect(await metric('weir_watch_events_total', { resource: 'pods', type: 'DELETED' })).toBe(1);
    const text = await registry.metrics();
    expect(text).toContain('weir_watch_restarts_total{resource="pods",reason="closed"} 1');
    expect(text).toContain('weir_watch_synced{resource="pods"} 1');
  });

  test("podScope 'node': pods are listed and watched with fieldSelector spec.nodeName; a pod bound to the node later arrives, one moved away leaves", async () => {
    await setup();
    seed();
    server.create(pod('ml', 'elsewhere', { node: 'node-b', ip: '10.0.2.1' }));
    await startSource({ podScope: 'node' });
    await watching();
    expect(store.pods().map((p) => p.metadata.name)).toEqual(['trainer']);
    expect(requestsFor('pods', 'list')[0]?.query['fieldSelector']).toBe('spec.nodeName=node-a');
    expect(lastWatch('pods')?.query['fieldSelector']).toBe('spec.nodeName=node-a');
    expect(lastWatch('namespaces')?.query['fieldSelector']).toBeUndefined();

    // Created unscheduled, then bound here: the server sends ADDED when it starts matching.
    const unscheduled = pod('ml', 'pending', { ip: '10.0.2.2' });
    delete (unscheduled['spec'] as Record<string, unknown>)['nodeName'];
    server.create(unscheduled);
    server.update(pod('ml', 'pending', { node: 'node-a', ip: '10.0.2.2' }));
    await waitFor('the bound pod', () => store.get('Pod', 'ml', 'pending') !== undefined);
    server.update(pod('ml', 'trainer', { node: 'node-b' }));
    await waitFor('the pod that left', () => store.get('Pod', 'ml', 'trainer') === undefined);
    expect(store.podsOnNode('node-a').map((p) => p.metadata.name)).toEqual(['pending']);
    expect(() => new KubernetesSource({ nodeName: null, podScope: 'node', store, logger: pino({ level: 'silent' }), registry: new Registry() })).toThrow(/nodeName/);
  });

  test('custom resources not served (CRDs not installed) count as empty: the source syncs, and picks them up once they are served', async () => {
    await setup({ unserved: ['egresspolicies', 'clusteregresspolicies'] });
    seed();
    await startSource();
    expect(source?.synced).toBe(true);
    expect(store.keys('EgressPolicy')).toEqual([]);
    expect(storeKeys()).toHaveLength(5);
    server.serve('egresspolicies');
    server.serve('clusteregresspolicies');
    await waitFor('the policies once served', () => storeKeys().length === 7);
    expect(storeKeys()).toEqual(SEEDED_KEYS);

    // Served once and then gone again (a 404 while objects are held) keeps them.
    server.unserve('egresspolicies');
    await waitFor('a failed attempt', async () => (await metric('weir_watch_restarts_total', { resource: 'egresspolicies', reason: 'client_error' })) >= 3);
    expect(store.get('EgressPolicy', 'ml', 'train-data')).toBeDefined();
  });

  test('the bearer token is sent with every request and never reaches a log line, errors included', async () => {
    await setup();
    seed();
    server.failNext(1, 500, undefined, { resource: 'pods', watch: false });
    await startSource();
    await watching();
    server.failNext(1, 429, 1, { resource: 'pods', watch: true });
    server.dropWatches();
    await server.stop();
    await waitFor('failed attempts', async () => (await metric('weir_watch_restarts_total', { reason: 'connection' })) >= 14);
    await server.start();
    await watching();
    await source?.stop();

    expect(server.requests.length).toBeGreaterThan(20);
    expect(server.requests.every((r) => r.authorized)).toBe(true);
    expect(logLines.length).toBeGreaterThan(20);
    expect(logLines.some((l) => l.includes('"level":40'))).toBe(true);
    const all = logLines.join('\n') + JSON.stringify(errors);
    expect(all).not.toContain(server.token);
    expect(all).not.toContain(server.token.slice(-12));

    // A kubeconfig that does not parse: js-yaml quotes the line, token and all.
    const broken = join(dir, 'broken');
    await writeFile(broken, `users:\n- name: x\n  user: {token: ${server.token}\n  bad: [\n`);
    const s2 = new KubernetesSource({ kubeconfig: broken, nodeName: null, store: new ObjectStore(), logger: pino({ level: 'silent' }), registry: new Registry() });
    const err = await s2.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect(String((err as Error).message)).toMatch(/cannot load kubeconfig/);
    expect(String((err as Error).message)).not.toContain(server.token);
  });

  test('start() rejects for a configuration that cannot work, without retrying', async () => {
    await setup();
    const missing = newSource({ kubeconfig: join(dir, 'does-not-exist') });
    await expect(missing.start()).rejects.toThrow(/cannot load kubeconfig .*does-not-exist/);
    source = undefined;

    const plain = join(dir, 'plain-http');
    await writeFile(plain, JSON.stringify({ clusters: [{ name: 'c', cluster: { server: server.url } }], users: [{ name: 'u', user: { token: 't' } }], contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }], 'current-context': 'x' }));
    const s = new KubernetesSource({ kubeconfig: plain, nodeName: null, store, logger: pino({ level: 'silent' }), registry: new Registry() });
    await expect(s.start()).rejects.toThrow(/plain HTTP/);
    expect(server.requests).toHaveLength(0);
  });

  test('stop() leaves no open handles or timers, also when it comes during backoff in an outage, and start() rejects if stopped before the first sync', async () => {
    await setup();
    seed();
    const active = (): string[] => process.getActiveResourcesInfo();
    /** What is active now beyond `base` (a multiset difference): what would keep the process alive. */
    const leftOver = (base: string[]): string[] => {
      const rest = [...base];
      return active().filter((r) => {
        const i = rest.indexOf(r);
        if (i < 0) return true;
        rest.splice(i, 1);
        return false;
      });
    };
    await sleep(20);
    const baseline = active();

    await startSource();
    await watching();
    expect(leftOver(baseline)).toContain('TCPSocketWrap');
    await source?.stop();
    await sleep(50);
    expect(leftOver(baseline)).toEqual([]);
    expect(server.openWatches()).toBe(0);

    // Stopped while every informer waits to retry against a dead server.
    registry = new Registry();
    await startSource();
    await server.stop();
    await waitFor('backoff', async () => (await metric('weir_watch_restarts_total', { reason: 'connection' })) >= 7);
    expect(leftOver(baseline)).toContain('Timeout');
    await source?.stop();
    await sleep(50);
    expect(leftOver(baseline)).toEqual([]);

    // Never synced: start() rejects when stop() comes first.
    registry = new Registry();
    const s = newSource();
    const starting = s.start();
    await sleep(100);
    await s.stop();
    await expect(starting).rejects.toThrow(/stopped before the first sync/);
    await sleep(50);
    expect(leftOver(baseline)).toEqual([]);
  });

  test('a silent watch is re-opened after idleTimeoutMs from its resourceVersion (no re-list), and periodic bookmarks keep quiet watches from looking dead', async () => {
    await setup();
    seed();
    await startSource({ idleTimeoutMs: 300 });
    await watching();
    await waitFor('two idle re-opens', () => requestsFor('clusteregresspolicies', 'watch').length >= 3);
    expect(await metric('weir_watch_restarts_total', { resource: 'clusteregresspolicies', reason: 'timeout' })).toBeGreaterThanOrEqual(2);
    for (const r of RESOURCES) expect(requestsFor(r, 'list'), r).toHaveLength(1);
    const resumed = requestsFor('clusteregresspolicies', 'watch');
    expect(new Set(resumed.map((r) => r.resourceVersion))).toEqual(new Set([resumed[0]?.resourceVersion]));
    await source?.stop();

    // The same, with the server sending a bookmark every 100 ms: no timeouts.
    await server.stop();
    await setup({ bookmarkIntervalMs: 100 });
    registry = new Registry();
    await startSource({ idleTimeoutMs: 300 });
    await watching();
    await sleep(1000);
    expect(await metric('weir_watch_restarts_total', { reason: 'timeout' })).toBe(0);
    expect(await metric('weir_watch_events_total', { resource: 'pods', type: 'BOOKMARK' })).toBeGreaterThanOrEqual(5);
  });

  test('a list the server never answers times out and is retried', async () => {
    await setup();
    seed();
    server.hangNext(1, { resource: 'pods', watch: false });
    const t0 = Date.now();
    await startSource({ idleTimeoutMs: 250 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    expect(storeKeys()).toEqual(SEEDED_KEYS);
    expect(requestsFor('pods', 'list').map((r) => r.status)).toEqual([0, 200]);
    expect(await metric('weir_watch_restarts_total', { resource: 'pods', reason: 'timeout' })).toBe(1);
  });

  test('Retry-After is read as seconds or as an HTTP-date, and credentials are redacted from messages', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    expect(parseRetryAfter('3', now)).toBe(3000);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:00:05 GMT', now)).toBe(5000);
    expect(parseRetryAfter('Tue, 31 Dec 2024 23:59:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('86400', now)).toBe(600_000); // capped at 10 minutes
    expect(parseRetryAfter('soon', now)).toBeUndefined();
    expect(parseRetryAfter(undefined, now)).toBeUndefined();
    expect(redactSecrets('Authorization: Bearer abc.def-123')).toBe('Authorization: Bearer [redacted]');
    expect(redactSecrets('user: {token: s3cr3t, name: x}')).toBe('user: {token: [redacted], name: x}');
    expect(redactSecrets('"client-key-data": "LS0tLS1CRUdJTi"')).toBe('"client-key-data": "[redacted]"');
  });

  test('a process running the source exits by itself after stop(), even when stopped during backoff in an outage', async () => {
    // A child Node runs the TypeScript sources directly (type transformation,
    // plus a resolve hook for the `.js` import suffixes), with no process.exit():
    // any timer, socket or watch left behind by stop() keeps it alive.
    const url = (p: string): string => pathToFileURL(join(REPO, p)).href;
    await writeFile(
      join(dir, 'hook.mjs'),
      `export async function resolve(specifier, context, next) {
  try { return await next(specifier, context); }
  catch (err) {
    if (specifier.endsWith('.js') && (specifier.startsWith('.') || specifier.startsWith('file:'))) return next(specifier.slice(0, -3) + '.ts', context);
    throw err;
  }
}
`,
    );
    await writeFile(join(dir, 'register.mjs'), `import { register } from 'node:module';\nregister('./hook.mjs', import.meta.url);\n`);
    await writeFile(
      join(dir, 'child.mjs'),
      `import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(join(REPO, 'package.json'))});
const { Registry } = require('prom-client');
const pino = require('pino');
const { FakeApiServer } = await import(${JSON.stringify(url('test/helpers/fake-apiserver.ts'))});
const { KubernetesSource } = await import(${JSON.stringify(url('src/sources/kubernetes.ts'))});
const { ObjectStore } = await import(${JSON.stringify(url('src/model/store.ts'))});
const server = new FakeApiServer({ bookmarkIntervalMs: 50 });
await server.start();
server.create({ kind: 'Namespace', metadata: { name: 'ml' } });
const store = new ObjectStore();
const registry = new Registry();
const source = new KubernetesSource({
  kubeconfig: await server.writeKubeconfig(${JSON.stringify(dir)}),
  nodeName: 'node-a', store, registry, logger: pino({ level: 'silent' }),
  backoff: { initialMs: 6000, maxMs: 60000 },
});
await source.start();
server.dropWatches();
await new Promise((r) => setTimeout(r, 100));
await server.stop();
const failures = async () => (await registry.getSingleMetricAsString('weir_watch_restarts_total')).split('\\n').filter((l) => l.includes('connection')).length;
while ((await failures()) < 7) await new Promise((r) => setTimeout(r, 20));
await source.stop();
console.log(JSON.stringify({ stopped: Date.now(), objects: store.size }));
`,
    );
    const child = spawn(process.execPath, ['--experimental-transform-types', '--no-warnings', '--import', pathToFileURL(join(dir, 'register.mjs')).href, join(dir, 'child.mjs')], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const exit = await new Promise<{ code: number | null; at: number }>((done) => {
      const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      child.on('exit', (code) => {
        clearTimeout(killer);
        done({ code, at: Date.now() });
      });
    });
    expect(err).toBe('');
    expect(exit.code).toBe(0);
    const report = JSON.parse(out.trim()) as { stopped: number; objects: number };
    expect(report.objects).toBe(1); // the outage removed nothing
    // Exits as soon as stop() returns: nothing was left waiting (every informer
    // was 3 to 6 s away from its next attempt).
    expect(exit.at - report.stopped).toBeLessThan(1500);
  });
});
