// Fuzzing the manifests source with fast-check: random bytes, random YAML
// text, and well-typed-but-wrong objects of every kind weir reads, written
// over a file that held a good object. Whatever the input:
// - no exception escapes the ManifestSource (rescan() resolves, nothing is
//   logged as a failed scan) and the process carries on;
// - every error names the file, the document, the object (`Kind ns/name`)
//   when it can be read, and the field path of the problem;
// - last good wins: what the file held before stays in the store unless
//   the new content is accepted (or no longer defines that object).
// Size limits are in limits.test.ts.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import pino from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ObjectStore } from '../../src/model/store.js';
import { describeObject, identify, validateObject } from '../../src/model/validate.js';
import type { KubeObject } from '../../src/model/types.js';
import { ManifestSource, type ManifestError, type ScanResult } from '../../src/sources/manifests.js';

const RUNS = Number(process.env.WEIR_FUZZ_RUNS ?? 150);

let dir: string;
let store: ObjectStore;
let source: ManifestSource;
const logs: { level: number; msg: string }[] = [];
let lastScan: ScanResult | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-fuzz-manifests-'));
  store = new ObjectStore();
  source = new ManifestSource({
    dir,
    store,
    logger: pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l) as { level: number; msg: string }) }),
    onScan: (r) => (lastScan = r),
    resyncIntervalMs: 0,
    // Scans only when a test asks (rescan()).
    debounceMs: 600_000,
    maxDelayMs: 600_000,
  });
  await source.start();
});

afterAll(async () => {
  await source?.stop();
  await rm(dir, { recursive: true, force: true });
  // Nothing ever escaped a scan.
  expect(logs.filter((l) => l.msg === 'manifest scan failed' || l.level >= 60)).toEqual([]);
});

function valid(raw: unknown): KubeObject {
  const r = validateObject(raw);
  if (!r.ok) throw new Error(r.ignored ? `ignored ${r.kind}` : r.error.message);
  return r.object;
}

function stored(o: KubeObject): KubeObject | undefined {
  return store.get(o.kind, o.metadata.namespace, o.metadata.name);
}

const serialize = (v: unknown, json: boolean): string => (json ? JSON.stringify(v) ?? 'null' : stringify(v));

/**
 * Loads `good` from `file`, then overwrites the file with `content`,
 * re-scans and hands the file's errors to `check`; then removes the file
 * (so no run leaves an object behind for the next one).
 */
async function overwrite(file: string, good: KubeObject, content: string | Uint8Array, check: (errors: ManifestError[]) => void | Promise<void>): Promise<void> {
  await writeFile(join(dir, file), serialize(good, file.endsWith('.json')));
  await source.rescan();
  try {
    expect(source.lastErrors()).toEqual([]);
    expect(stored(good)).toEqual(good);
    await writeFile(join(dir, file), content);
    await source.rescan(); // never rejects
    await check(source.lastErrors().filter((e) => e.file === file));
    // No error about another file: nothing else was disturbed.
    expect(source.lastErrors().filter((e) => e.file !== file)).toEqual([]);
  } finally {
    await rm(join(dir, file), { force: true });
    await source.rescan();
  }
}

/** The shape every error has, whatever the input. */
function checkShape(file: string, e: ManifestError): void {
  expect(e.file).toBe(file);
  expect(['parse', 'invalid', 'too-large']).toContain(e.reason);
  expect(e.message.startsWith(file)).toBe(true);
  expect(e.message.length).toBeLessThan(8000);
  if (e.document !== undefined) expect(e.message.startsWith(`${file} (document ${e.document}`)).toBe(true);
  if (e.reason === 'invalid') {
    expect(e.field).toBeDefined();
    const head = `${file} (document ${e.document}${e.item !== undefined ? `, items[${e.item}]` : ''})`;
    if (e.object !== undefined) {
      expect(e.message.startsWith(`${head}: ${e.object}: `)).toBe(true);
      if (e.field !== '') expect(e.message.startsWith(`${head}: ${e.object}: ${e.field}: `)).toBe(true);
    }
  }
}

// ---------------------------------------------------------------------------
// A good object of every kind weir reads

const TEMPLATES: Record<string, unknown> = {
  NetworkPolicy: {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'np', namespace: 'ml', labels: { app: 'a' } },
    spec: {
      podSelector: { matchLabels: { app: 'a' }, matchExpressions: [{ key: 'tier', operator: 'In', values: ['x', 'y'] }] },
      policyTypes: ['Ingress', 'Egress'],
      egress: [
        {
          to: [{ ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] } }, { podSelector: { matchLabels: { app: 'db' } }, namespaceSelector: { matchLabels: { team: 'x' } } }],
          ports: [{ protocol: 'TCP', port: 5432, endPort: 5440 }, { protocol: 'UDP', port: 'dns' }],
        },
      ],
      ingress: [{ from: [{ ipBlock: { cidr: 'fd00::/8' } }], ports: [{ port: 80 }] }],
    },
  },
  EgressPolicy: {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name: 'ep', namespace: 'ml' },
    spec: {
      podSelector: { matchLabels: { app: 'a' } },
      mode: 'Audit',
      egress: [{ to: [{ fqdn: { matchName: 'api.example.com' } }, { ipBlock: { cidr: '192.0.2.0/24' } }], ports: [{ port: 443 }] }],
      deny: [{ to: [{ ipBlock: { cidr: '192.0.2.128/25' } }] }],
    },
  },
  ClusterEgressPolicy: {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'ClusterEgressPolicy',
    metadata: { name: 'cep' },
    spec: {
      namespaceSelector: { matchLabels: { env: 'prod' } },
      podSelector: {},
      egress: [{ to: [{ namespaceSelector: { matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: ['kube-system'] }] } }] }],
      deny: [{ ports: [{ protocol: 'SCTP', port: 9 }] }],
    },
  },
  Pod: {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'p', namespace: 'ml', uid: 'u1', labels: { app: 'a' }, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: 'rs', uid: 'x', controller: true }] },
    spec: { nodeName: 'node-1', hostNetwork: false, containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }] }], initContainers: [{ name: 'i' }] },
    status: { phase: 'Running', qosClass: 'Burstable', podIP: '10.244.0.5', podIPs: [{ ip: '10.244.0.5' }, { ip: 'fd00::5' }] },
  },
  Namespace: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ml', labels: { team: 'x' }, annotations: { note: 'n' } } },
  Service: {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'svc', namespace: 'ml' },
    spec: {
      type: 'ClusterIP',
      clusterIP: '10.96.0.10',
      clusterIPs: ['10.96.0.10'],
      selector: { app: 'a' },
      ports: [
        { name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' },
        { name: 'dns', port: 53, protocol: 'UDP', targetPort: 5353 },
      ],
    },
  },
  EndpointSlice: {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'svc-abc', namespace: 'ml', labels: { 'kubernetes.io/service-name': 'svc' } },
    addressType: 'IPv4',
    endpoints: [{ addresses: ['10.244.0.5'], conditions: { ready: true, serving: true, terminating: false }, targetRef: { kind: 'Pod', name: 'p', namespace: 'ml', uid: 'u1' } }],
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  },
};
const KINDS = Object.keys(TEMPLATES);

type Seg = string | number;
/** Maps whose keys are data (shown as `path[key]` by the validator), not field names. */
const DATA_MAPS = new Set(['labels', 'annotations', 'matchLabels', 'selector']);

function allPaths(v: unknown, prefix: Seg[] = []): Seg[][] {
  const out: Seg[][] = [];
  if (Array.isArray(v)) v.forEach((x, i) => out.push([...prefix, i], ...allPaths(x, [...prefix, i])));
  else if (typeof v === 'object' && v !== null) {
    for (const [k, x] of Object.entries(v)) out.push([...prefix, k], ...allPaths(x, [...prefix, k]));
  }
  return out;
}

/** The path as the validator writes it: `spec.egress[0].ports[0].port`, `metadata.labels[app]`. */
function showPath(path: Seg[]): string {
  let s = '';
  path.forEach((seg, i) => {
    if (typeof seg === 'number') s += `[${seg}]`;
    else if (i > 0 && DATA_MAPS.has(String(path[i - 1]))) s += `[${seg}]`;
    else s += s === '' ? seg : `.${seg}`;
  });
  return s;
}

function setAt(root: unknown, path: Seg[], value: unknown, remove: boolean): unknown {
  const copy = structuredClone(root) as Record<string | number, unknown>;
  let cur: Record<string | number, unknown> = copy;
  for (const seg of path.slice(0, -1)) cur = cur[seg] as Record<string | number, unknown>;
  const last = path[path.length - 1] as Seg;
  if (remove && !Array.isArray(cur)) delete cur[last];
  else cur[last] = value;
  return copy;
}

/** Is the reported path about the mutated one (itself, inside it, around it, or a sibling of the same parent)? */
function related(reported: string, mutated: Seg[]): boolean {
  const m = showPath(mutated);
  const parent = showPath(mutated.slice(0, -1));
  const under = (a: string, b: string): boolean => b === '' || a === b || a.startsWith(`${b}.`) || a.startsWith(`${b}[`);
  return under(reported, parent) || under(m, reported);
}

const SPECIAL_VALUES = [
  0, -1, 65535, 65536, 70000, 1e300, -1e300, 2 ** 53, 2 ** 64, 0.5, Number.NaN, Number.POSITIVE_INFINITY, '', ' ', '443', 'TCP ', 'tcp', 'SCTP',
  '10.0.0.0/33', '300.1.1.1/8', '10.0.0.1', 'fd00::/129', '::/0', '0.0.0.0/0', '010.0.0.0/8', 'fe80::1%eth0/64', '1.2.3.4/01',
  'In', 'Exists', 'NotIn', 'Enforce', 'Audit', 'Egress', 'x'.repeat(300), '*.example.com', 'Ä', '\u0000', true, false, null, [], {}, [null], { a: 1 },
];

const wrongValue = fc.oneof(
  fc.constantFrom(...SPECIAL_VALUES),
  fc.integer({ min: -(2 ** 40), max: 2 ** 40 }),
  fc.double(),
  fc.string({ maxLength: 12 }),
  fc.boolean(),
  fc.array(fc.oneof(fc.integer(), fc.string({ maxLength: 4 })), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 6 }), fc.oneof(fc.integer(), fc.string({ maxLength: 4 }), fc.constant(null)), { maxKeys: 3 }),
  fc.anything({ maxDepth: 2, maxKeys: 3 }),
);

// ---------------------------------------------------------------------------

describe('random input never escapes the source, and the last good policy stays', () => {
  const good = valid(TEMPLATES['EgressPolicy']);

  /** The file's errors say the content was refused: the good policy must still be there. */
  async function check(file: string, content: string | Uint8Array): Promise<void> {
    await overwrite(file, good, content, (errors) => {
      for (const e of errors) checkShape(file, e);
      if (errors.length > 0) expect(stored(good)).toEqual(good);
      else expect(stored(good)).toBeUndefined(); // the file no longer defines it
    });
  }

  test('random bytes, as YAML and as JSON', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 512 }), fc.boolean(), async (bytes, json) => {
        await check(json ? 'bytes.json' : 'bytes.yaml', bytes);
      }),
      { numRuns: RUNS },
    );
  });

  test('random YAML-ish text: indicators, anchors, aliases, tags, directives, flow and block collections', async () => {
    const tokens = [
      '-', '- ', ':', ': ', ' ', '  ', '\n', '\n  ', '\t', '[', ']', '{', '}', ',', '&a ', '*a', '&b ', '*b', '!', '!!str ', '!!int ', '!!binary ', '!!set ', '!foo ',
      '---\n', '...\n', '# c\n', '"', "'", '"x"', '|\n', '>-\n', '? ', '%YAML 1.2\n', '%TAG ! tag:x:\n', '<<: ', '~', 'null', 'true', '1e400', '0x1BB', '.inf', '.nan',
      'apiVersion: weir.dev/v1alpha1\n', 'kind: EgressPolicy\n', 'metadata: {name: ep, namespace: ml}\n', 'spec:\n', '  podSelector: {}\n', '  egress:\n', '  - ports: [{port: 443}]\n',
      'kind: List\nitems:\n', 'name', 'port', '10.0.0.0/8', '\u00e9', '\ufeff', '\r\n', '\\', '@', '`',
    ];
    await fc.assert(
      fc.asyncProperty(fc.array(fc.constantFrom(...tokens), { maxLength: 80 }), async (parts) => {
        await check('text.yaml', parts.join(''));
      }),
      { numRuns: RUNS },
    );
  });
});

describe('well-typed but wrong objects of every kind', () => {
  test('templates are valid', () => {
    for (const k of KINDS) expect(valid(TEMPLATES[k]).kind).toBe(k);
  });

  test('a wrong value (or a removed key) anywhere: refused naming file, object and that field, the last good version kept; or accepted when it is valid after all', async () => {
    const arb = fc
      .constantFrom(...KINDS)
      .chain((kind) => fc.tuple(fc.constant(kind), fc.constantFrom(...allPaths(TEMPLATES[kind]))))
      .chain(([kind, path]) => fc.tuple(fc.constant(kind), fc.constant(path), wrongValue, fc.boolean(), fc.boolean()));
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(arb, async ([kind, path, value, remove, json]) => {
        const template = TEMPLATES[kind];
        const good = valid(template);
        const mutated = setAt(template, path, value, remove);
        const file = json ? 'obj.json' : 'obj.yaml';
        const text = serialize(mutated, json);
        // What the file really says after serialization (NaN and Infinity are null in JSON).
        const reread = validateObject(json ? JSON.parse(text) : (await import('yaml')).parse(text), { file, index: 0 });
        await overwrite(file, good, text, (errors) => {
          for (const e of errors) checkShape(file, e);
          if (reread.ok) {
            expect(errors).toEqual([]);
            expect(stored(reread.object)).toEqual(reread.object);
            return;
          }
          if (reread.ignored) {
            // Another kind or API group: not weir's; the good object is gone from this file.
            expect(errors).toEqual([]);
            expect(lastScan?.ignored).toBeGreaterThan(0);
            expect(stored(good)).toBeUndefined();
            return;
          }
          refused++;
          const v = reread.error;
          expect(errors).toHaveLength(1);
          const e = errors[0] as ManifestError;
          expect(e).toMatchObject({ reason: 'invalid', document: 1, field: v.field, message: v.message });
          // The object is named whenever its kind and name could be read.
          const id = identify(JSON.parse(JSON.stringify(mutated ?? null)) as unknown);
          if (id.kind !== undefined && id.name !== undefined) expect(e.object).toBe(v.object);
          if (showPath(path).match(/^(apiVersion|kind|metadata(\.(name|namespace))?)$/) === null) expect(e.object).toBe(describeObject(good));
          // Some problem is about the field that was changed.
          expect(v.issues.some((i) => related(i.field, path)), `${showPath(path)} vs ${JSON.stringify(v.issues)}`).toBe(true);
          // Last good wins: same object, previous version.
          if (v.key === undefined) expect(stored(good)).toEqual(good);
          else if (v.key === `${good.kind}/${good.metadata.namespace ?? ''}/${good.metadata.name}`) expect(stored(good)).toEqual(good);
          else expect(stored(good)).toBeUndefined();
        });
      }),
      { numRuns: RUNS * 2 },
    );
    expect(refused).toBeGreaterThan(RUNS / 2);
  });

  test('kinds weir does not read are ignored, not errors; a NetworkPolicy in the old extensions group is an error', async () => {
    const good = valid(TEMPLATES['EgressPolicy']);
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !KINDS.includes(k) && !k.endsWith('List')), fc.constantFrom('Deployment', 'ConfigMap', 'Secret', 'CustomResourceDefinition', 'valueOf', 'constructor', 'toString', 'hasOwnProperty', '__proto__')),
        fc.constantFrom('v1', 'apps/v1', 'example.com/v1', 'weir.dev/v1alpha1'),
        async (kind, apiVersion) => {
          await overwrite('kind.yaml', good, stringify({ apiVersion, kind, metadata: { name: 'x' }, spec: { podSelector: {} } }), (errors) => {
            expect(errors).toEqual([]);
            expect(lastScan?.ignored).toBe(1);
          });
        },
      ),
      { numRuns: Math.ceil(RUNS / 3) },
    );
    await overwrite('kind.yaml', good, stringify({ ...(TEMPLATES['NetworkPolicy'] as object), apiVersion: 'extensions/v1beta1' }), (errors) => {
      expect(errors.map((e) => [e.field, e.object])).toEqual([['apiVersion', 'NetworkPolicy ml/np']]);
    });
  });
});

describe('fields with a syntax: CIDRs, ports, selectors', () => {
  const good = valid(TEMPLATES['EgressPolicy']);
  const policy = (rule: unknown): unknown => ({ ...(TEMPLATES['EgressPolicy'] as object), spec: { podSelector: {}, egress: [rule] } });

  /** An independent oracle of a valid ipBlock CIDR (node:net for the address). */
  function cidrOk(s: string): boolean {
    const slash = s.indexOf('/');
    if (slash < 0 || s.indexOf('/', slash + 1) >= 0) return false;
    const addr = s.slice(0, slash);
    const len = s.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(len)) return false;
    if (isIPv4(addr) && !/(^|\.)0\d/.test(addr)) return Number(len) <= 32;
    if (isIPv6(addr) && !addr.includes('%')) return Number(len) <= 128;
    return false;
  }

  test('ipBlock.cidr: refused exactly when it is not address/prefix, naming spec.egress[0].to[0].ipBlock.cidr', async () => {
    const cidrLike = fc.oneof(
      fc.stringMatching(/^[0-9a-f:./%]{0,24}$/),
      fc.tuple(fc.ipV4(), fc.integer({ min: -1, max: 40 })).map(([a, l]) => `${a}/${l}`),
      fc.tuple(fc.ipV6(), fc.integer({ min: -1, max: 140 })).map(([a, l]) => `${a}/${l}`),
      fc.tuple(fc.ipV4Extended(), fc.nat(33)).map(([a, l]) => `${a}/${l}`),
    );
    await fc.assert(
      fc.asyncProperty(cidrLike, fc.boolean(), async (cidr, json) => {
        const file = json ? 'cidr.json' : 'cidr.yaml';
        await overwrite(file, good, serialize(policy({ to: [{ ipBlock: { cidr } }] }), json), (errors) => {
          if (cidrOk(cidr)) {
            expect(errors).toEqual([]);
          } else {
            expect(errors.map((e) => [e.object, e.field])).toEqual([['EgressPolicy ml/ep', 'spec.egress[0].to[0].ipBlock.cidr']]);
            expect(stored(good)).toEqual(good);
          }
        });
      }),
      { numRuns: RUNS },
    );
  });

  test('ports: anything but an integer 1-65535 (or a port name) is refused naming the field; endPort below port too', async () => {
    const portLike = fc.oneof(fc.integer({ min: -100_000, max: 100_000 }), fc.double(), fc.constantFrom(1e300, 2 ** 64, -0, 65535, 65536, 1, 0, '80', 'http', 'HTTP', 'a--b', 'x'.repeat(16)));
    await fc.assert(
      fc.asyncProperty(portLike, fc.option(portLike, { nil: undefined }), async (port, endPort) => {
        const p: Record<string, unknown> = { port };
        if (endPort !== undefined) p['endPort'] = endPort;
        await overwrite('port.yaml', good, stringify(policy({ ports: [p] })), (errors) => {
          const intOk = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
          const nameOk = typeof port === 'string' && /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(port) && /[a-z]/.test(port) && !port.includes('--') && port.length <= 15;
          const ok = endPort === undefined ? intOk(port) || nameOk : intOk(port) && intOk(endPort) && (endPort as number) >= (port as number);
          if (ok) expect(errors).toEqual([]);
          else {
            expect(errors).toHaveLength(1);
            expect(errors[0]?.field).toMatch(/^spec\.egress\[0\]\.ports\[0\]\.(port|endPort)$/);
            expect(stored(good)).toEqual(good);
          }
        });
      }),
      { numRuns: RUNS },
    );
  });

  test('label selectors: bad operators, keys and values are refused naming the requirement field', async () => {
    const req = fc.record(
      {
        key: fc.oneof(fc.constantFrom('app', 'example.com/tier', '', '-x', 'a/b/c', 'x'.repeat(64), 'UPPER.case/ok'), fc.string({ maxLength: 8 })),
        operator: fc.oneof(fc.constantFrom('In', 'NotIn', 'Exists', 'DoesNotExist', 'in', 'Equals', ''), fc.integer()),
        values: fc.oneof(fc.array(fc.oneof(fc.constantFrom('a', '', 'x'.repeat(64), 'ok.v-1', '-bad'), fc.string({ maxLength: 6 }), fc.integer()), { maxLength: 3 }), fc.constant('a')),
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(req, async (r) => {
        await overwrite('sel.yaml', good, stringify({ ...(TEMPLATES['EgressPolicy'] as object), spec: { podSelector: { matchExpressions: [r] } } }), (errors) => {
          for (const e of errors) checkShape('sel.yaml', e);
          if (errors.length > 0) {
            expect(errors).toHaveLength(1);
            expect(errors[0]?.object).toBe('EgressPolicy ml/ep');
            expect(errors[0]?.validation?.issues.every((i) => i.field.startsWith('spec.podSelector.matchExpressions[0]'))).toBe(true);
            expect(stored(good)).toEqual(good);
          } else {
            // Accepted: the requirement really is well-formed.
            const labelValue = (v: unknown): boolean => typeof v === 'string' && v.length <= 63 && /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/.test(v);
            expect(['In', 'NotIn', 'Exists', 'DoesNotExist']).toContain(r.operator);
            expect(typeof r.key === 'string' && r.key.length > 0).toBe(true);
            if (r.operator === 'In' || r.operator === 'NotIn') expect(Array.isArray(r.values) && r.values.length > 0 && r.values.every(labelValue)).toBe(true);
            else expect(r.values === undefined || (Array.isArray(r.values) && r.values.length === 0)).toBe(true);
          }
        });
      }),
      { numRuns: RUNS },
    );
  });
});

describe('duplicate keys, aliases and huge numbers', () => {
  test('a key written twice anywhere in a YAML or JSON object is refused, naming the object and that key', async () => {
    const arb = fc.constantFrom(...KINDS).chain((kind) => fc.tuple(fc.constant(kind), fc.nat(), fc.boolean()));
    await fc.assert(
      fc.asyncProperty(arb, async ([kind, pick, json]) => {
        const template = TEMPLATES[kind];
        const good = valid(template);
        let text: string;
        let key: string;
        if (json) {
          const t = JSON.stringify(template);
          const at = [...t.matchAll(/([{,])"([A-Za-z][A-Za-z0-9]*)":/g)];
          const m = at[pick % at.length] as RegExpMatchArray;
          key = m[2] as string;
          const i = (m.index ?? 0) + 1;
          text = `${t.slice(0, i)}"${key}":0,${t.slice(i)}`;
        } else {
          const lines = stringify(template).split('\n');
          const candidates = lines.map((l, i) => [l, i] as const).filter(([l]) => /^ *[A-Za-z][A-Za-z0-9]*:( |$)/.test(l));
          const [line, i] = candidates[pick % candidates.length] as readonly [string, number];
          const m = /^( *)([A-Za-z][A-Za-z0-9]*):/.exec(line) as RegExpExecArray;
          key = m[2] as string;
          lines.splice(i, 0, `${m[1] ?? ''}${key}: 0`);
          text = lines.join('\n');
        }
        const file = json ? 'dup.json' : 'dup.yaml';
        await overwrite(file, good, text, (errors) => {
          expect(errors).toHaveLength(1);
          const e = errors[0] as ManifestError;
          checkShape(file, e);
          expect(e.reason).toBe('invalid');
          expect(e.message).toMatch(/duplicate key/);
          expect(e.field === key || e.field?.endsWith(`.${key}`)).toBe(true);
          if (!['apiVersion', 'kind', 'metadata', 'name', 'namespace'].includes(key)) {
            expect(e.object).toBe(describeObject(good));
            expect(stored(good)).toEqual(good);
          }
        });
      }),
      { numRuns: RUNS },
    );
  });

  test('alias bombs of any shape are refused quickly; a few aliases are expanded', async () => {
    const good = valid(TEMPLATES['EgressPolicy']);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 2, max: 12 }), fc.integer({ min: 1, max: 9 }), async (width, levels) => {
        let y = 'a0: &a0 [x]\n';
        for (let l = 1; l <= levels; l++) y += `a${l}: &a${l} [${Array(width).fill(`*a${l - 1}`).join(', ')}]\n`;
        const t0 = performance.now();
        await overwrite('lol.yaml', good, y, (errors) => {
          expect(performance.now() - t0).toBeLessThan(5_000);
          for (const e of errors) checkShape('lol.yaml', e);
          if (width ** levels > 200) expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/limit MAX_YAML_ALIASES, 100/)]);
          // Expanded or not, this is not a Kubernetes object.
          expect(errors.length).toBe(1);
          expect(stored(good)).toEqual(good);
        });
      }),
      { numRuns: Math.ceil(RUNS / 3) },
    );
  });

  test('huge and odd numbers where numbers go: refused or read exactly as YAML 1.2 says', async () => {
    const good = valid(TEMPLATES['EgressPolicy']);
    const cases: [string, number | null][] = [
      ['1e400', null],
      ['.inf', null],
      ['-.inf', null],
      ['.nan', null],
      ['99999999999999999999999999', null],
      ['0x1BB', 443],
      ['0o777', 511],
      ['443.0', 443],
      ['4.43e2', 443],
      ['+443', 443],
      ['0443', 443],
      ['"443"', null],
      ['1_000', null],
    ];
    for (const [text, expected] of cases) {
      await overwrite('num.yaml', good, stringify({ ...(TEMPLATES['EgressPolicy'] as object) }).replace('port: 443', `port: ${text}`), (errors) => {
        if (expected === null) {
          expect(errors.map((e) => e.field), text).toEqual(['spec.egress[0].ports[0].port']);
          expect(stored(good)).toEqual(good);
        } else {
          expect(errors, text).toEqual([]);
          expect(store.get('EgressPolicy', 'ml', 'ep')?.spec.egress?.[0]?.ports?.[0]?.port, text).toBe(expected);
        }
      });
    }
  });
});
