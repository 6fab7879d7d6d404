// RBAC: the agent works with exactly the ClusterRole in deploy/, and that
// role grants nothing else. The stand-in API server
// (test/helpers/fake-apiserver.ts) enforces the role's rules the way
// kube-apiserver's RBAC authorizer does (403 Forbidden otherwise); the
// Kubernetes source and the Event reporter run against it through the real
// @kubernetes/client-node request path, over HTTP on 127.0.0.1.
//
// The role is read from deploy/base/clusterrole.yaml (the file kustomize
// takes verbatim: deploy/kustomization.yaml lists it as a plain resource),
// the user from the ClusterRoleBinding's service account.

import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ApiException, CoreV1Api, HttpMethod, IsomorphicFetchHttpLibrary, type KubeConfig, RequestContext } from '@kubernetes/client-node';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import YAML from 'yaml';
import { ObjectStore } from '../../src/model/store.js';
import type { KubeKind } from '../../src/model/types.js';
import { EventReporter, type EventReporterOptions, type ViolationEventInput } from '../../src/report/k8s-events.js';
import { KubeApiError, KubeClient, asStatus, loadKubeConfig } from '../../src/sources/kube-client.js';
import { KUBE_RESOURCES } from '../../src/sources/kube-resources.js';
import { KubernetesSource, type KubernetesSourceError } from '../../src/sources/kubernetes.js';
import {
  FakeApiServer,
  authorize,
  requestAttributes,
  type FakeObjectInput,
  type FakeRbacOptions,
  type JsonObject,
  type PolicyRule,
  type RequestRecord,
} from '../helpers/fake-apiserver.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ROLE_FILE = join(REPO, 'deploy', 'base', 'clusterrole.yaml');
const BINDING_FILE = join(REPO, 'deploy', 'base', 'clusterrolebinding.yaml');

function isRecord(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function loadYaml(path: string, kind: string): JsonObject {
  const docs = YAML.parseAllDocuments(readFileSync(path, 'utf8')).map((d) => d.toJS() as unknown);
  const found = docs.filter((d): d is JsonObject => isRecord(d) && d['kind'] === kind);
  if (found.length !== 1) throw new Error(`${path}: expected one ${kind}, found ${found.length}`);
  const o = found[0] as JsonObject;
  if (o['apiVersion'] !== 'rbac.authorization.k8s.io/v1') throw new Error(`${path}: ${kind} is not rbac.authorization.k8s.io/v1`);
  return o;
}

const clusterRole = loadYaml(ROLE_FILE, 'ClusterRole');
const clusterRoleBinding = loadYaml(BINDING_FILE, 'ClusterRoleBinding');

const strings = (v: unknown): string[] | undefined => (Array.isArray(v) ? v.map(String) : undefined);

/** The ClusterRole's rules, as written in deploy/. */
const ROLE_RULES: readonly PolicyRule[] = (Array.isArray(clusterRole['rules']) ? clusterRole['rules'] : []).map((r: unknown) => {
  if (!isRecord(r)) throw new Error('a rule is not an object');
  const rule: PolicyRule = { verbs: strings(r['verbs']) ?? [] };
  for (const k of ['apiGroups', 'resources', 'resourceNames', 'nonResourceURLs'] as const) {
    const v = strings(r[k]);
    if (v !== undefined) rule[k] = v;
  }
  return rule;
});

/** The user the binding gives the role to: the agent's service account. */
const AGENT_USER = ((): string => {
  const subjects = clusterRoleBinding['subjects'];
  const s = Array.isArray(subjects) && subjects.length === 1 && isRecord(subjects[0]) ? subjects[0] : undefined;
  const roleRef = isRecord(clusterRoleBinding['roleRef']) ? clusterRoleBinding['roleRef'] : {};
  const roleName = isRecord(clusterRole['metadata']) ? clusterRole['metadata']['name'] : undefined;
  if (s?.['kind'] !== 'ServiceAccount' || roleRef['kind'] !== 'ClusterRole' || roleRef['name'] !== roleName) {
    throw new Error('the ClusterRoleBinding does not bind the ClusterRole to one service account');
  }
  return `system:serviceaccount:${String(s['namespace'])}:${String(s['name'])}`;
})();

const ROLE: FakeRbacOptions = { rules: ROLE_RULES, user: AGENT_USER };

/** The role without `resource` in `group` (rules left empty are dropped). */
function roleWithout(group: string, resource: string, verbs?: readonly string[]): FakeRbacOptions {
  const rules = ROLE_RULES.flatMap((r): PolicyRule[] => {
    if (!(r.apiGroups ?? []).includes(group) || !(r.resources ?? []).includes(resource)) return [r];
    const rest: PolicyRule[] = [];
    const others = (r.resources ?? []).filter((x) => x !== resource);
    if (others.length > 0) rest.push({ ...r, resources: others });
    const keptVerbs = verbs === undefined ? [] : r.verbs.filter((v) => !verbs.includes(v));
    if (keptVerbs.length > 0) rest.push({ ...r, resources: [resource], verbs: keptVerbs });
    return rest;
  });
  return { rules, user: AGENT_USER };
}

// ---------------------------------------------------------------------------

let dir: string;
let server: FakeApiServer | undefined;
let kubeconfig: string;
let store: ObjectStore;
let registry: Registry;
let errors: KubernetesSourceError[];
let source: KubernetesSource | undefined;
let reporter: EventReporter | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-rbac-'));
  store = new ObjectStore();
  registry = new Registry();
  errors = [];
  source = undefined;
  reporter = undefined;
  server = undefined;
});

afterEach(async () => {
  await source?.stop();
  await reporter?.stop();
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function setup(rbac: FakeRbacOptions): Promise<FakeApiServer> {
  const s = new FakeApiServer({ bookmarkIntervalMs: 0, rbac });
  server = s;
  await s.start();
  kubeconfig = await s.writeKubeconfig(dir);
  return s;
}

function srv(): FakeApiServer {
  if (server === undefined) throw new Error('no server');
  return server;
}

function newSource(): KubernetesSource {
  source = new KubernetesSource({
    kubeconfig,
    nodeName: 'node-a',
    store,
    logger: pino({ level: 'silent' }),
    registry,
    onError: (e) => errors.push(e),
    backoff: { initialMs: 100, maxMs: 800 },
  });
  return source;
}

function newReporter(extra: Partial<EventReporterOptions> = {}): EventReporter {
  reporter = new EventReporter({
    kubeconfig,
    nodeName: 'node-a',
    logger: pino({ level: 'silent' }),
    registry,
    firstWriteDelayMs: 60_000,
    flushIntervalMs: 60_000,
    backoff: { initialMs: 100, maxMs: 400 },
    ...extra,
  });
  return reporter;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (m === undefined) throw new Error(`no metric ${name}`);
  let sum = 0;
  for (const v of (await m.get()).values) if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  return sum;
}

function forbidden(): RequestRecord[] {
  return srv().requests.filter((r) => r.status === 403);
}

/** `verb group/resource`, for each distinct authorized request the server saw. */
function authorizedUses(): string[] {
  return [...new Set(srv().requests.flatMap((r) => (r.authorization?.allowed === true && r.authorization.resourceRequest ? [`${r.authorization.verb} ${r.authorization.apiGroup}/${r.authorization.resource}`] : [])))].sort();
}

// ---------------------------------------------------------------------------
// Objects: one of every kind the source reads

function namespace(name: string, labels: Record<string, string> = {}): FakeObjectInput {
  return { kind: 'Namespace', metadata: { name, labels } };
}

function pod(ns: string, name: string, ip = '10.0.0.5'): FakeObjectInput {
  return {
    kind: 'Pod',
    metadata: { name, namespace: ns, labels: { app: name } },
    spec: { nodeName: 'node-a', containers: [{ name: 'main', image: 'example/app:1' }], restartPolicy: 'Always' },
    status: { phase: 'Running', podIP: ip, podIPs: [{ ip }] },
  };
}

function service(ns: string, name: string, clusterIP = '10.96.0.10'): FakeObjectInput {
  return { kind: 'Service', metadata: { name, namespace: ns }, spec: { type: 'ClusterIP', clusterIP, clusterIPs: [clusterIP], selector: { app: name }, ports: [{ name: 'https', port: 443, targetPort: 8443, protocol: 'TCP' }] } };
}

function endpointSlice(ns: string, name: string, ip = '10.0.0.9'): FakeObjectInput {
  return {
    kind: 'EndpointSlice',
    metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': 'feature-store' } },
    addressType: 'IPv4',
    endpoints: [{ addresses: [ip], conditions: { ready: true, serving: true, terminating: false } }],
    ports: [{ name: 'https', port: 8443, protocol: 'TCP' }],
  };
}

function networkPolicy(ns: string, name: string, policyTypes = ['Egress']): FakeObjectInput {
  return { kind: 'NetworkPolicy', metadata: { name, namespace: ns }, spec: { podSelector: {}, policyTypes } };
}

function egressPolicy(ns: string, name: string, cidr = '10.20.0.0/16'): FakeObjectInput {
  return { kind: 'EgressPolicy', metadata: { name, namespace: ns }, spec: { podSelector: {}, mode: 'Enforce', egress: [{ to: [{ ipBlock: { cidr } }], ports: [{ protocol: 'TCP', port: 443 }] }] } };
}

function clusterEgressPolicy(name: string, mode = 'Audit'): FakeObjectInput {
  return { kind: 'ClusterEgressPolicy', metadata: { name }, spec: { namespaceSelector: {}, podSelector: {}, mode, deny: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }] } };
}

function seed(s: FakeApiServer): void {
  s.create(namespace('ml', { team: 'ml' }));
  s.create(pod('ml', 'trainer'));
  s.create(service('ml', 'feature-store'));
  s.create(endpointSlice('ml', 'feature-store-abc12'));
  s.create(networkPolicy('ml', 'default-deny'));
  s.create(egressPolicy('ml', 'train-data'));
  s.create(clusterEgressPolicy('no-internet'));
}

const KIND_OF: Record<string, KubeKind> = Object.fromEntries(KUBE_RESOURCES.map((r) => [r.name, r.kind]));
const KINDS = KUBE_RESOURCES.map((r) => r.kind);

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

function drop(extra: Partial<ViolationEventInput> = {}): ViolationEventInput {
  return {
    verdict: 'drop',
    namespace: 'ml',
    pod: 'trainer',
    podUid: '4b7e3f2a-1c2d-4e5f-8a9b-0c1d2e3f4a5b',
    policy: 'EgressPolicy/ml/train-data',
    rule: 'EgressPolicy/ml/train-data deny[0]',
    protocol: 'TCP',
    destination: '203.0.113.10',
    port: 443,
    count: 1,
    pid: 123,
    command: 'curl',
    ...extra,
  };
}

// ---------------------------------------------------------------------------
// Requests through the agent's own client path: KubeClient.get (the
// source's lists and watches) and an authenticated RequestContext sent with
// the library's fetch (the Event reporter's writes), with the kubeconfig.

interface Answer {
  status: number;
  body: unknown;
  /** The error the agent's code would raise from it (non-2xx). */
  error?: KubeApiError;
}

async function kubeGet(path: string): Promise<Answer> {
  const client = new KubeClient(loadKubeConfig(kubeconfig));
  const res = await client.get(path, AbortSignal.timeout(5000));
  try {
    // Only requests that end (no watch is ever answered 200 here).
    const text = await res.text();
    if (res.status >= 200 && res.status < 300) return { status: res.status, body: JSON.parse(text) as unknown };
    const error = await KubeApiError.fromResponse({ ...res, text: () => Promise.resolve(text) }, `GET ${path}`);
    return { status: res.status, body: JSON.parse(text) as unknown, error };
  } finally {
    res.release();
  }
}

async function kubeSend(method: HttpMethod, path: string, body: unknown, contentType = 'application/json'): Promise<Answer> {
  const kc: KubeConfig = loadKubeConfig(kubeconfig);
  const cluster = kc.getCurrentCluster();
  if (cluster === null) throw new Error('no cluster');
  const ctx = new RequestContext(`${cluster.server}${path}`, method);
  await kc.applySecurityAuthentication(ctx);
  ctx.setHeaderParam('Accept', 'application/json');
  if (body !== undefined) {
    ctx.setHeaderParam('Content-Type', contentType);
    ctx.setBody(JSON.stringify(body));
  }
  ctx.setSignal(AbortSignal.timeout(5000));
  const res = await new IsomorphicFetchHttpLibrary().send(ctx).toPromise();
  const text = await res.body.text();
  const answer: Answer = { status: res.httpStatusCode, body: JSON.parse(text) as unknown };
  if (res.httpStatusCode >= 300) {
    answer.error = await KubeApiError.fromResponse({ status: res.httpStatusCode, headers: res.headers, text: () => Promise.resolve(text), stream: () => null, release: () => undefined }, `${method} ${path}`);
  }
  return answer;
}

/** The answer is kube-apiserver's 403: a Forbidden Status with this message and details, and the agent's client sees reason Forbidden. */
function expectForbidden(a: Answer, message: string, details: JsonObject): void {
  expect(a.status, message).toBe(403);
  expect(a.body).toEqual({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason: 'Forbidden', details, code: 403 });
  expect(asStatus(a.body)).toMatchObject({ code: 403, reason: 'Forbidden' });
  expect(a.error?.statusCode).toBe(403);
  expect(a.error?.reason).toBe('Forbidden');
}

// ---------------------------------------------------------------------------

describe("the agent with deploy/'s ClusterRole enforced by the API server", () => {
  test('the Kubernetes source lists and watches every resource, syncs, and follows adds, updates and deletes; no request is refused', async () => {
    const s = await setup(ROLE);
    seed(s);
    const src = newSource();
    await src.start();
    expect(src.synced).toBe(true);
    expect(src.status().map((x) => x.resource).sort()).toEqual(KUBE_RESOURCES.map((r) => r.name).sort());
    expect(src.status().every((x) => x.synced)).toBe(true);
    expect(storeKeys()).toEqual(SEEDED_KEYS);
    for (const r of KUBE_RESOURCES) expect(await metric('weir_watch_synced', { resource: r.name }), r.name).toBe(1);
    await waitFor('every watch to be open', () => KUBE_RESOURCES.every((r) => s.openWatches(r.name) === 1));

    // Changes of every kind reach the store through the watches.
    s.update(namespace('ml', { team: 'research' }));
    s.create(pod('ml', 'worker', '10.0.0.6'));
    s.update(service('ml', 'feature-store', '10.96.0.99'));
    s.update(endpointSlice('ml', 'feature-store-abc12', '10.0.0.10'));
    s.update(networkPolicy('ml', 'default-deny', ['Ingress', 'Egress']));
    s.update(egressPolicy('ml', 'train-data', '10.30.0.0/16'));
    s.update(clusterEgressPolicy('no-internet', 'Enforce'));
    await waitFor('every change', () => store.get('ClusterEgressPolicy', undefined, 'no-internet')?.spec.mode === 'Enforce' && store.get('Pod', 'ml', 'worker') !== undefined);
    expect(store.get('Namespace', undefined, 'ml')?.metadata.labels?.['team']).toBe('research');
    expect(store.get('Service', 'ml', 'feature-store')?.spec.clusterIP).toBe('10.96.0.99');
    expect(store.get('EndpointSlice', 'ml', 'feature-store-abc12')?.endpoints[0]?.addresses).toEqual(['10.0.0.10']);
    expect(store.get('NetworkPolicy', 'ml', 'default-deny')?.spec.policyTypes).toEqual(['Ingress', 'Egress']);
    expect(store.get('EgressPolicy', 'ml', 'train-data')?.spec.egress?.[0]?.to?.[0]?.ipBlock?.cidr).toBe('10.30.0.0/16');
    s.delete('Pod', 'ml', 'trainer');
    s.delete('EgressPolicy', 'ml', 'train-data');
    await waitFor('the deletes', () => store.get('Pod', 'ml', 'trainer') === undefined && store.get('EgressPolicy', 'ml', 'train-data') === undefined);

    // A watch that ends is re-opened, still within the role.
    expect(s.endWatches()).toBe(KUBE_RESOURCES.length);
    await waitFor('the watches again', () => KUBE_RESOURCES.every((r) => s.openWatches(r.name) === 1));

    expect(forbidden()).toEqual([]);
    expect(errors).toEqual([]);
    // Every request was authorized, by the role's rules (not by anything every user has).
    const resourceRequests = s.requests.filter((r) => r.authorization?.resourceRequest === true);
    expect(resourceRequests.length).toBeGreaterThanOrEqual(3 * KUBE_RESOURCES.length);
    expect(s.requests.every((r) => r.authorization?.allowed === true && r.authorization.user === AGENT_USER)).toBe(true);
    expect(resourceRequests.every((r) => /^rules\[\d+\]$/.test(r.authorization?.allowedBy ?? ''))).toBe(true);
    // What the source used: list and watch of each resource, cluster-wide.
    expect(authorizedUses()).toEqual(KUBE_RESOURCES.flatMap((r) => [`list ${r.group}/${r.name}`, `watch ${r.group}/${r.name}`]).sort());
    expect(resourceRequests.every((r) => r.authorization?.namespace === '')).toBe(true);
  });

  test('the Event reporter creates Events and patches their series; no request is refused', async () => {
    const s = await setup(ROLE);
    const r = newReporter();
    for (let i = 0; i < 3; i++) r.violation(drop());
    await r.flush();
    for (let i = 0; i < 2; i++) r.violation(drop());
    r.invalidPolicy({ kind: 'ClusterEgressPolicy', name: 'no-internet', message: 'spec.deny[0].to[0].ipBlock.cidr: invalid CIDR' });
    await r.flush();

    const writes = s.requests.filter((x) => x.resource === 'events');
    expect(writes.map((x) => `${x.method} ${x.status} ${x.authorization?.verb} ${x.authorization?.namespace}`)).toEqual(['POST 201 create ml', 'PATCH 200 patch ml', 'POST 201 create default']);
    expect(writes.every((x) => x.authorization?.allowed === true && x.authorization.apiGroup === 'events.k8s.io')).toBe(true);
    expect(s.list('Event').map((e) => e['series'])).toContainEqual(expect.objectContaining({ count: 5 }));
    expect(forbidden()).toEqual([]);
    expect(await metric('weir_k8s_events_written_total', { op: 'create' })).toBe(2);
    expect(await metric('weir_k8s_events_written_total', { op: 'patch' })).toBe(1);
    expect(await metric('weir_k8s_events_write_errors_total')).toBe(0);
    expect(await metric('weir_k8s_events_dropped_total')).toBe(0);
    expect(authorizedUses()).toEqual(['create events.k8s.io/events', 'patch events.k8s.io/events']);
  });

  test('requests outside the role are refused with 403 Forbidden: Secrets, writes of what the agent reads, ConfigMaps, core Events, subresources, the root path', async () => {
    const s = await setup(ROLE);
    seed(s);
    const who = `User ${JSON.stringify(AGENT_USER)}`;

    // Secrets: list (cluster-wide and in a namespace), get, watch.
    expectForbidden(await kubeGet('/api/v1/secrets'), `secrets is forbidden: ${who} cannot list resource "secrets" in API group "" at the cluster scope`, { kind: 'secrets' });
    expectForbidden(await kubeGet('/api/v1/namespaces/weir-system/secrets'), `secrets is forbidden: ${who} cannot list resource "secrets" in API group "" in the namespace "weir-system"`, { kind: 'secrets' });
    expectForbidden(
      await kubeGet('/api/v1/namespaces/weir-system/secrets/weir-token'),
      `secrets "weir-token" is forbidden: ${who} cannot get resource "secrets" in API group "" in the namespace "weir-system"`,
      { name: 'weir-token', kind: 'secrets' },
    );
    expectForbidden(await kubeGet('/api/v1/secrets?watch=true&resourceVersion=0'), `secrets is forbidden: ${who} cannot watch resource "secrets" in API group "" at the cluster scope`, { kind: 'secrets' });
    // ... also through the client library's typed API.
    const kc = loadKubeConfig(kubeconfig);
    const typed = await kc
      .makeApiClient(CoreV1Api)
      .listSecretForAllNamespaces()
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(typed).toBeInstanceOf(ApiException);
    expect((typed as ApiException<unknown>).code).toBe(403);

    // Writes of what the agent only reads.
    expectForbidden(
      await kubeSend(HttpMethod.POST, '/api/v1/namespaces/ml/pods', pod('ml', 'intruder')),
      `pods is forbidden: ${who} cannot create resource "pods" in API group "" in the namespace "ml"`,
      { kind: 'pods' },
    );
    expectForbidden(
      await kubeSend(HttpMethod.DELETE, '/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies/default-deny', undefined),
      `networkpolicies.networking.k8s.io "default-deny" is forbidden: ${who} cannot delete resource "networkpolicies" in API group "networking.k8s.io" in the namespace "ml"`,
      { name: 'default-deny', group: 'networking.k8s.io', kind: 'networkpolicies' },
    );
    expectForbidden(
      await kubeSend(HttpMethod.DELETE, '/apis/networking.k8s.io/v1/namespaces/ml/networkpolicies', undefined),
      `networkpolicies.networking.k8s.io is forbidden: ${who} cannot deletecollection resource "networkpolicies" in API group "networking.k8s.io" in the namespace "ml"`,
      { group: 'networking.k8s.io', kind: 'networkpolicies' },
    );
    expectForbidden(
      await kubeSend(HttpMethod.PATCH, '/apis/weir.dev/v1alpha1/namespaces/ml/egresspolicies/train-data', { spec: { mode: 'Audit' } }, 'application/merge-patch+json'),
      `egresspolicies.weir.dev "train-data" is forbidden: ${who} cannot patch resource "egresspolicies" in API group "weir.dev" in the namespace "ml"`,
      { name: 'train-data', group: 'weir.dev', kind: 'egresspolicies' },
    );
    expectForbidden(
      await kubeSend(HttpMethod.PUT, '/apis/weir.dev/v1alpha1/clusteregresspolicies/no-internet', clusterEgressPolicy('no-internet', 'Audit')),
      `clusteregresspolicies.weir.dev "no-internet" is forbidden: ${who} cannot update resource "clusteregresspolicies" in API group "weir.dev" at the cluster scope`,
      { name: 'no-internet', group: 'weir.dev', kind: 'clusteregresspolicies' },
    );
    // Nothing changed.
    expect(s.get('NetworkPolicy', 'ml', 'default-deny')).toBeDefined();
    expect(s.get('EgressPolicy', 'ml', 'train-data')?.['spec']).toMatchObject({ mode: 'Enforce' });
    expect(s.list('Pod').map((p) => (p['metadata'] as JsonObject)['name'])).toEqual(['trainer']);

    // ConfigMaps, the deprecated core Events, reading events, subresources.
    expectForbidden(await kubeGet('/api/v1/configmaps?watch=true&allowWatchBookmarks=true'), `configmaps is forbidden: ${who} cannot watch resource "configmaps" in API group "" at the cluster scope`, { kind: 'configmaps' });
    expectForbidden(
      await kubeSend(HttpMethod.POST, '/api/v1/namespaces/ml/events', { metadata: { name: 'x' } }),
      `events is forbidden: ${who} cannot create resource "events" in API group "" in the namespace "ml"`,
      { kind: 'events' },
    );
    expectForbidden(await kubeGet('/apis/events.k8s.io/v1/events'), `events.events.k8s.io is forbidden: ${who} cannot list resource "events" in API group "events.k8s.io" at the cluster scope`, {
      group: 'events.k8s.io',
      kind: 'events',
    });
    expectForbidden(
      await kubeSend(HttpMethod.DELETE, '/apis/events.k8s.io/v1/namespaces/ml/events/e1', undefined),
      `events.events.k8s.io "e1" is forbidden: ${who} cannot delete resource "events" in API group "events.k8s.io" in the namespace "ml"`,
      { name: 'e1', group: 'events.k8s.io', kind: 'events' },
    );
    expectForbidden(
      await kubeGet('/api/v1/namespaces/ml/pods/trainer/log'),
      `pods "trainer" is forbidden: ${who} cannot get resource "pods/log" in API group "" in the namespace "ml"`,
      { name: 'trainer', kind: 'pods' },
    );
    expectForbidden(
      await kubeSend(HttpMethod.POST, '/api/v1/namespaces/weir-system/serviceaccounts/weir/token', { spec: {} }),
      `serviceaccounts "weir" is forbidden: ${who} cannot create resource "serviceaccounts/token" in API group "" in the namespace "weir-system"`,
      { name: 'weir', kind: 'serviceaccounts' },
    );
    expectForbidden(await kubeGet('/api/v1/nodes'), `nodes is forbidden: ${who} cannot list resource "nodes" in API group "" at the cluster scope`, { kind: 'nodes' });
    // A non-resource path no role grants (system:discovery has /api and /apis, not /).
    expectForbidden(await kubeGet('/'), `forbidden: ${who} cannot get path "/"`, {});

    // Discovery, which every authenticated user has, still answers.
    for (const p of ['/version', '/api', '/api/v1', '/apis', '/apis/weir.dev/v1alpha1']) {
      const a = await kubeGet(p);
      expect(a.status, p).toBe(200);
    }
    const discovery = s.requests.filter((r) => r.status === 200);
    expect(discovery.map((r) => r.authorization?.allowedBy)).toEqual(['system:discovery.rules[0]', 'system:discovery.rules[0]', 'system:discovery.rules[0]', 'system:discovery.rules[0]', 'system:discovery.rules[0]']);

    // The request log has every refusal, with the attributes it was decided on.
    const refused = forbidden();
    expect(refused).toHaveLength(18);
    expect(refused.every((r) => r.authorization?.allowed === false && r.authorization.user === AGENT_USER && r.authorization.message !== undefined)).toBe(true);
    expect(refused.map((r) => `${r.authorization?.verb} ${r.authorization?.apiGroup}/${r.authorization?.resource}${r.authorization?.subresource ? `/${r.authorization.subresource}` : ''}`)).toEqual([
      'list /secrets',
      'list /secrets',
      'get /secrets',
      'watch /secrets',
      'list /secrets',
      'create /pods',
      'delete networking.k8s.io/networkpolicies',
      'deletecollection networking.k8s.io/networkpolicies',
      'patch weir.dev/egresspolicies',
      'update weir.dev/clusteregresspolicies',
      'watch /configmaps',
      'create /events',
      'list events.k8s.io/events',
      'delete events.k8s.io/events',
      'get /pods/log',
      'create /serviceaccounts/token',
      'list /nodes',
      'get /',
    ]);
    // The refused requests never reached a handler: no watch was opened.
    expect(s.openWatches()).toBe(0);
  });

  test.each(KUBE_RESOURCES.map((r) => [r.name, r.group] as const))(
    'a role without %s: the source reports a 403 watch error for exactly that resource and does not sync it, the others sync; granted again, it syncs',
    async (name, group) => {
      const s = await setup(roleWithout(group, name));
      seed(s);
      const src = newSource();
      const starting = src.start();
      starting.catch(() => undefined);

      await waitFor('the watch error', () => errors.length > 0);
      const others = KUBE_RESOURCES.filter((r) => r.name !== name).map((r) => r.name);
      await waitFor('every other resource to sync', () => src.status().every((x) => x.synced === (x.resource !== name)));
      await waitFor('the refused list retried', () => s.requests.filter((r) => r.resource === name && r.status === 403).length >= 3);

      expect(errors).toHaveLength(1); // once per streak of failures
      expect(errors[0]).toMatchObject({ reason: 'watch', resource: name, status: 403, watchReason: 'unauthorized' });
      expect(errors[0]?.message).toContain('Forbidden');
      expect(src.synced).toBe(false);
      expect(src.status().find((x) => x.resource === name)).toEqual({ resource: name, synced: false, resourceVersion: '' });
      expect(await metric('weir_watch_synced', { resource: name })).toBe(0);
      for (const o of others) expect(await metric('weir_watch_synced', { resource: o }), o).toBe(1);
      expect(await metric('weir_watch_restarts_total', { resource: name, reason: 'unauthorized' })).toBeGreaterThanOrEqual(2);
      const kind = KIND_OF[name] as KubeKind;
      expect(store.keys(kind)).toEqual([]);
      expect(storeKeys()).toEqual(SEEDED_KEYS.filter((k) => !k.startsWith(`${kind}/`)));
      // Every refusal is that resource's list, nothing else was refused.
      const refused = forbidden();
      expect(new Set(refused.map((r) => `${r.authorization?.verb} ${r.authorization?.apiGroup}/${r.authorization?.resource}`))).toEqual(new Set([`list ${group}/${name}`]));

      // The ClusterRole fixed: the next retry lists and watches it, and the source is synced.
      s.setRbac(ROLE);
      await starting;
      expect(src.synced).toBe(true);
      expect(storeKeys()).toEqual(SEEDED_KEYS);
      await waitFor('its watch', () => s.openWatches(name) === 1);
      expect(forbidden()).toHaveLength(refused.length);
    },
  );

  test('a role without watch on pods: the list is allowed, the watch is refused, and the source reports it', async () => {
    const s = await setup(roleWithout('', 'pods', ['watch']));
    seed(s);
    const src = newSource();
    src.start().catch(() => undefined);
    await waitFor('the refused watch', () => errors.some((e) => e.resource === 'pods'));
    expect(errors.filter((e) => e.resource === 'pods')[0]).toMatchObject({ reason: 'watch', status: 403 });
    expect(new Set(forbidden().map((r) => `${r.authorization?.verb} ${r.authorization?.resource}`))).toEqual(new Set(['watch pods']));
    expect(s.requests.some((r) => r.resource === 'pods' && !r.watch && r.status === 200)).toBe(true);
    expect(s.openWatches('pods')).toBe(0);
  });

  test('each Events verb is needed: without patch a series update is refused, without the events rule every write is', async () => {
    let s = await setup(roleWithout('events.k8s.io', 'events', ['patch']));
    let r = newReporter();
    for (let i = 0; i < 2; i++) r.violation(drop());
    await r.flush();
    r.violation(drop());
    await r.flush();
    expect(s.requests.filter((x) => x.resource === 'events').map((x) => `${x.method} ${x.status}`)).toEqual(['POST 201', 'PATCH 403']);
    expect(await metric('weir_k8s_events_write_errors_total', { reason: 'forbidden' })).toBe(1);
    await r.stop();
    await s.stop();

    registry = new Registry();
    s = await setup(roleWithout('events.k8s.io', 'events'));
    r = newReporter();
    r.violation(drop());
    await r.flush();
    expect(s.requests.filter((x) => x.resource === 'events').map((x) => `${x.method} ${x.status}`)).toEqual(['POST 403']);
    expect(forbidden()[0]?.authorization?.message).toBe(`events.events.k8s.io is forbidden: User ${JSON.stringify(AGENT_USER)} cannot create resource "events" in API group "events.k8s.io" in the namespace "ml"`);
    expect(await metric('weir_k8s_events_dropped_total', { reason: 'rejected' })).toBe(1);
  });
});

describe("deploy/'s ClusterRole is exactly what the code uses", () => {
  /** `group/resource:verb` for everything a rule list grants, wildcards and all. */
  function grants(rules: readonly PolicyRule[]): string[] {
    return rules.flatMap((r) => (r.apiGroups ?? []).flatMap((g) => (r.resources ?? []).flatMap((res) => r.verbs.map((v) => `${g}/${res}:${v}`)))).sort();
  }

  test('get, list and watch of every resource in KUBE_RESOURCES, create and patch of events.k8s.io Events; no wildcards, resource names, non-resource URLs or subresources', () => {
    expect(ROLE_RULES.length).toBeGreaterThan(0);
    for (const r of ROLE_RULES) {
      expect(r.resourceNames, 'no resourceNames').toBeUndefined();
      expect(r.nonResourceURLs, 'no nonResourceURLs').toBeUndefined();
      for (const v of [...(r.apiGroups ?? []), ...(r.resources ?? []), ...r.verbs]) {
        expect(v).not.toContain('*');
        expect(v).not.toContain('/');
      }
    }
    const expected = [
      ...KUBE_RESOURCES.flatMap((r) => ['get', 'list', 'watch'].map((v) => `${r.group}/${r.name}:${v}`)),
      // src/report/k8s-events.ts: POST a new Event, PATCH its series.
      'events.k8s.io/events:create',
      'events.k8s.io/events:patch',
    ].sort();
    expect(grants(ROLE_RULES)).toEqual(expected);
    // No permission is granted twice (a rule that looks removable but is not).
    expect(new Set(grants(ROLE_RULES)).size).toBe(grants(ROLE_RULES).length);
  });

  test('nothing on Secrets (or ConfigMaps, tokens, nodes), in any namespace or cluster-wide, by any verb, as the authorizer decides', () => {
    const verbs = ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete', 'deletecollection'];
    const paths = [
      '/api/v1/secrets',
      '/api/v1/namespaces/weir-system/secrets',
      '/api/v1/namespaces/weir-system/secrets/weir-token',
      '/api/v1/namespaces/kube-system/secrets/bootstrap-token-abcdef',
      '/api/v1/configmaps',
      '/api/v1/namespaces/kube-system/configmaps/kubeadm-config',
      '/api/v1/namespaces/weir-system/serviceaccounts/weir/token',
      '/api/v1/nodes/node-a/proxy',
      '/api/v1/namespaces/ml/pods/trainer/exec',
      '/apis/rbac.authorization.k8s.io/v1/clusterroles/weir',
    ];
    const methods: Record<string, string> = { get: 'GET', list: 'GET', watch: 'GET', create: 'POST', update: 'PUT', patch: 'PATCH', delete: 'DELETE', deletecollection: 'DELETE' };
    let checked = 0;
    for (const p of paths) {
      for (const verb of verbs) {
        const url = new URL(`http://x${p}${verb === 'watch' ? '?watch=true' : ''}`);
        const a = requestAttributes(methods[verb] ?? 'GET', url);
        expect(a.resourceRequest).toBe(true);
        const d = authorize(ROLE_RULES, a, AGENT_USER);
        expect(d.allowed, `${a.verb} ${p}`).toBe(false);
        checked++;
      }
    }
    expect(checked).toBe(paths.length * verbs.length);
    // And no write of anything the agent reads.
    for (const r of KUBE_RESOURCES) {
      for (const verb of ['create', 'update', 'patch', 'delete', 'deletecollection']) {
        const a = { resourceRequest: true, verb, path: '', apiGroup: r.group, apiVersion: r.version, resource: r.name, subresource: '', namespace: r.namespaced ? 'ml' : '', name: verb === 'create' || verb === 'deletecollection' ? '' : 'x' };
        expect(authorize(ROLE_RULES, a, AGENT_USER).allowed, `${verb} ${r.name}`).toBe(false);
      }
    }
  });

  test('the authorizer derives attributes as kube-apiserver does', () => {
    const at = (method: string, path: string): string => {
      const a = requestAttributes(method, new URL(`http://x${path}`));
      return a.resourceRequest ? `${a.verb} ${a.apiGroup}/${a.resource}${a.subresource !== '' ? `/${a.subresource}` : ''} ns=${a.namespace} name=${a.name}` : `${a.verb} path ${a.path}`;
    };
    expect(at('GET', '/api/v1/pods')).toBe('list /pods ns= name=');
    expect(at('GET', '/api/v1/pods?watch=true')).toBe('watch /pods ns= name=');
    expect(at('GET', '/api/v1/pods?watch=1&resourceVersion=5')).toBe('watch /pods ns= name=');
    expect(at('GET', '/api/v1/pods?watch=false')).toBe('list /pods ns= name=');
    expect(at('GET', '/api/v1/watch/namespaces/ml/pods')).toBe('watch /pods ns=ml name=');
    expect(at('GET', '/api/v1/namespaces/ml/pods/p')).toBe('get /pods ns=ml name=p');
    expect(at('GET', '/api/v1/namespaces/ml/pods?fieldSelector=metadata.name%3Dp')).toBe('list /pods ns=ml name=p');
    expect(at('GET', '/api/v1/namespaces/ml/pods/p/log')).toBe('get /pods/log ns=ml name=p');
    expect(at('GET', '/api/v1/namespaces/ml')).toBe('get /namespaces ns=ml name=ml');
    expect(at('PUT', '/api/v1/namespaces/ml/finalize')).toBe('update /namespaces/finalize ns=ml name=ml');
    expect(at('GET', '/api/v1/namespaces')).toBe('list /namespaces ns= name=');
    expect(at('POST', '/apis/events.k8s.io/v1/namespaces/ml/events')).toBe('create events.k8s.io/events ns=ml name=');
    expect(at('PATCH', '/apis/events.k8s.io/v1/namespaces/ml/events/e')).toBe('patch events.k8s.io/events ns=ml name=e');
    expect(at('DELETE', '/apis/events.k8s.io/v1/namespaces/ml/events')).toBe('deletecollection events.k8s.io/events ns=ml name=');
    expect(at('GET', '/apis/weir.dev/v1alpha1/clusteregresspolicies')).toBe('list weir.dev/clusteregresspolicies ns= name=');
    expect(at('GET', '/apis/weir.dev/v1alpha1')).toBe('get path /apis/weir.dev/v1alpha1');
    expect(at('GET', '/api/v1')).toBe('get path /api/v1');
    expect(at('GET', '/version')).toBe('get path /version');
    expect(at('POST', '/')).toBe('post path /');

    const allows = (rule: PolicyRule, method: string, path: string): boolean => authorize([rule], requestAttributes(method, new URL(`http://x${path}`))).allowedBy === 'rules[0]';
    expect(allows({ apiGroups: [''], resources: ['pods'], verbs: ['get'] }, 'GET', '/api/v1/namespaces/ml/pods/p/log')).toBe(false);
    expect(allows({ apiGroups: [''], resources: ['pods/log'], verbs: ['get'] }, 'GET', '/api/v1/namespaces/ml/pods/p/log')).toBe(true);
    expect(allows({ apiGroups: [''], resources: ['*/log'], verbs: ['get'] }, 'GET', '/api/v1/namespaces/ml/pods/p/log')).toBe(true);
    expect(allows({ apiGroups: ['*'], resources: ['*'], verbs: ['*'] }, 'DELETE', '/apis/weir.dev/v1alpha1/clusteregresspolicies/x')).toBe(true);
    expect(allows({ apiGroups: ['weir.dev'], resources: ['clusteregresspolicies'], verbs: ['get'], resourceNames: ['x'] }, 'GET', '/apis/weir.dev/v1alpha1/clusteregresspolicies/x')).toBe(true);
    expect(allows({ apiGroups: ['weir.dev'], resources: ['clusteregresspolicies'], verbs: ['get'], resourceNames: ['x'] }, 'GET', '/apis/weir.dev/v1alpha1/clusteregresspolicies/y')).toBe(false);
    expect(allows({ apiGroups: ['weir.dev'], resources: ['clusteregresspolicies'], verbs: ['list'], resourceNames: ['x'] }, 'GET', '/apis/weir.dev/v1alpha1/clusteregresspolicies')).toBe(false);
    expect(allows({ verbs: ['get'], nonResourceURLs: ['/healthz/*'] }, 'GET', '/healthz/etcd')).toBe(true);
    expect(allows({ verbs: ['get'], nonResourceURLs: ['/healthz'] }, 'GET', '/healthz/etcd')).toBe(false);
    expect(() => new FakeApiServer({ rbac: { rules: [{ apiGroups: [''], resources: ['pods'], verbs: [] }] } })).toThrow(/verbs/);
    expect(() => new FakeApiServer({ rbac: { rules: [{ apiGroups: [''], resources: ['pods'], verbs: ['get'], nonResourceURLs: ['/x'] }] } })).toThrow(/both/);
  });
});
