// FQDN peer semantics (src/policy/fqdn.ts): the AdminNetworkPolicy
// `domainNames` rules, and the compiled keys the datapath looks names up by.
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import {
  compileFqdn,
  dnsNameProblem,
  dnsPatternProblem,
  fqdnMatcher,
  fqdnMatches,
  lookupFqdn,
  normalizeDNSName,
} from '../../src/policy/fqdn.js';
import { BIT_A_ALLOW, BIT_E_ALLOW, BIT_E_DENY, classBits } from '../../src/policy/compile.js';
import { normalizeEgressPolicy } from '../../src/policy/normalize.js';
import { validateObject } from '../../src/model/validate.js';
import type { EgressPolicy } from '../../src/model/types.js';
import { PolicyEngine, type PolicyInputs } from '../../src/policy/engine.js';

const name = (n: string) => fqdnMatcher({ matchName: n });
const pattern = (p: string) => fqdnMatcher({ matchPattern: p });

describe('matching (AdminNetworkPolicy domainNames semantics)', () => {
  test.each([
    // [selector, query, matches]
    ['kubernetes.io', 'kubernetes.io', true],
    ['kubernetes.io', 'KUBERNETES.IO', true],
    ['kubernetes.io', 'kubernetes.io.', true],
    ['Kubernetes.IO.', 'kubernetes.io', true],
    ['kubernetes.io', 'blog.kubernetes.io', false],
    ['kubernetes.io', 'kubernetes.io.evil.com', false],
    ['kubernetes.io', 'xkubernetes.io', false],
    ['api.models.example.com', 'api.models.example.com', true],
    ['api.models.example.com', 'api2.models.example.com', false],
  ])('matchName %s vs %s -> %s', (sel, q, want) => {
    expect(fqdnMatches(name(sel), q)).toBe(want);
  });

  test.each([
    ['*.kubernetes.io', 'blog.kubernetes.io', true],
    ['*.kubernetes.io', 'latest.blog.kubernetes.io', true], // one or more labels
    ['*.kubernetes.io', 'kubernetes.io', false], // never the apex
    ['*.kubernetes.io', 'kubernetes.io.', false],
    ['*.kubernetes.io', 'xkubernetes.io', false], // whole labels only
    ['*.kubernetes.io', 'blog.kubernetes.io.evil.com', false],
    ['*.hf.co', 'cdn-lfs.eu.hf.co', true],
    ['*.hf.co', 'hf.co', false],
    ['*.hf.co', 'CDN-LFS.EU.HF.CO.', true],
    ['*.Models.Example.COM.', 'x.models.example.com', true],
    ['*.example.com', '_dmarc.example.com', true],
  ])('matchPattern %s vs %s -> %s', (sel, q, want) => {
    expect(fqdnMatches(pattern(sel), q)).toBe(want);
  });

  test('normalisation is ASCII-only lower case and removes one trailing dot', () => {
    expect(normalizeDNSName('API.Example.COM.')).toBe('api.example.com');
    expect(normalizeDNSName('a.example.com')).toBe('a.example.com');
    // Non-ASCII letters are not folded (RFC 4343): they never equal ASCII.
    expect(normalizeDNSName('\u0130.example.com')).toBe('\u0130.example.com');
  });

  test('syntax: what a name and a pattern may be', () => {
    expect(dnsNameProblem('a.example.com')).toBeUndefined();
    expect(dnsNameProblem('_srv.example.com')).toBeUndefined();
    expect(dnsNameProblem('')).toMatch(/empty/);
    expect(dnsNameProblem('a..b')).toMatch(/empty label/);
    expect(dnsNameProblem('-a.b')).toMatch(/label "-a"/);
    expect(dnsNameProblem(`${'a'.repeat(64)}.com`)).toMatch(/longer than 63/);
    expect(dnsNameProblem(`${'a.'.repeat(127)}ab`)).toMatch(/at most 253/);
    expect(dnsPatternProblem('*.example.com')).toBeUndefined();
    expect(dnsPatternProblem('example.com')).toBeUndefined();
    expect(dnsPatternProblem('*')).toMatch(/at least one label after/);
    expect(dnsPatternProblem('a.*.com')).toMatch(/whole first label/);
    expect(dnsPatternProblem('*a.com')).toMatch(/whole first label/);
    expect(dnsPatternProblem('*.*.com')).toMatch(/whole first label/);
  });

  test('property: a wildcard matches exactly the names with one or more labels before its suffix', () => {
    const label = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,6}[a-z0-9])?$/);
    fc.assert(
      fc.property(fc.array(label, { minLength: 1, maxLength: 4 }), fc.array(label, { minLength: 0, maxLength: 4 }), (suffix, prefix) => {
        const s = suffix.join('.');
        const q = [...prefix, ...suffix].join('.');
        expect(fqdnMatches(pattern(`*.${s}`), q)).toBe(prefix.length > 0);
        expect(fqdnMatches(pattern(`*.${s}`), q.toUpperCase())).toBe(prefix.length > 0);
        expect(fqdnMatches(name(s), q)).toBe(prefix.length === 0);
      }),
    );
  });
});

function egressPolicy(spec: unknown, ns = 'ml', policyName = 'p'): EgressPolicy {
  const r = validateObject({ apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: policyName, namespace: ns }, spec });
  if (!r.ok) throw new Error(r.ignored ? 'ignored' : r.error.message);
  return r.object as EgressPolicy;
}

describe('compilation: one key per distinct name or wildcard, most specific first', () => {
  const policy = normalizeEgressPolicy(
    egressPolicy({
      podSelector: {},
      egress: [
        { to: [{ fqdn: { matchName: 'api.models.example.com' } }], ports: [{ protocol: 'TCP', port: 443 }] },
        { to: [{ fqdn: { matchPattern: '*.example.com' } }], ports: [{ protocol: 'TCP', port: 80 }] },
        { to: [{ fqdn: { matchPattern: '*.models.example.com' } }, { ipBlock: { cidr: '10.0.0.0/8' } }], ports: [{ protocol: 'TCP', port: 8443 }] },
        { to: [{ fqdn: { matchName: 'NAMED.example.com' } }], ports: [{ protocol: 'TCP', port: 'https' }] },
      ],
      deny: [{ to: [{ fqdn: { matchName: 'bad.example.com' } }] }],
    }),
  );
  const keys = compileFqdn([policy]);

  test('keys and the classes they carry', () => {
    expect(keys.map((k) => k.text)).toEqual(['*.example.com', '*.models.example.com', 'api.models.example.com', 'bad.example.com']);
    const api = keys.find((k) => k.text === 'api.models.example.com')!;
    // the exact name includes both wildcards that cover it
    expect(classBits(api.cls, 6, 443)).toBe(BIT_E_ALLOW);
    expect(classBits(api.cls, 6, 80)).toBe(BIT_E_ALLOW);
    expect(classBits(api.cls, 6, 8443)).toBe(BIT_E_ALLOW);
    expect(classBits(api.cls, 6, 22)).toBe(0);
    const bad = keys.find((k) => k.text === 'bad.example.com')!;
    expect(classBits(bad.cls, 6, 80)).toBe(BIT_E_DENY | BIT_E_ALLOW);
    expect(classBits(bad.cls, 17, 53)).toBe(BIT_E_DENY);
    // a rule with only named ports matches no DNS name
    expect(keys.some((k) => k.text === 'named.example.com')).toBe(false);
  });

  test('lookup: exact name, then the longest wildcard suffix; the apex never matches its wildcard', () => {
    expect(lookupFqdn(keys, 'API.models.example.com.')?.text).toBe('api.models.example.com');
    expect(lookupFqdn(keys, 'x.models.example.com')?.text).toBe('*.models.example.com');
    expect(lookupFqdn(keys, 'a.b.models.example.com')?.text).toBe('*.models.example.com');
    expect(lookupFqdn(keys, 'models.example.com')?.text).toBe('*.example.com');
    expect(lookupFqdn(keys, 'example.com')).toBeUndefined();
    expect(lookupFqdn(keys, 'example.org')).toBeUndefined();
    const x = lookupFqdn(keys, 'x.models.example.com')!;
    expect(classBits(x.cls, 6, 8443)).toBe(BIT_E_ALLOW);
    expect(classBits(x.cls, 6, 80)).toBe(BIT_E_ALLOW);
    expect(classBits(x.cls, 6, 443)).toBe(0);
  });

  test('property: the most specific key gives exactly the union of the rules whose selector matches', () => {
    const label = fc.constantFrom('a', 'b', 'c', 'api', 'x');
    const sel = fc.record({ wild: fc.boolean(), labels: fc.array(label, { minLength: 1, maxLength: 3 }), port: fc.integer({ min: 1, max: 4 }) });
    fc.assert(
      fc.property(fc.array(sel, { minLength: 1, maxLength: 6 }), fc.array(label, { minLength: 1, maxLength: 5 }), (sels, q) => {
        const spec = {
          podSelector: {},
          egress: sels.map((s) => ({
            to: [{ fqdn: s.wild ? { matchPattern: `*.${s.labels.join('.')}` } : { matchName: s.labels.join('.') } }],
            ports: [{ protocol: 'TCP', port: s.port }],
          })),
        };
        const ks = compileFqdn([normalizeEgressPolicy(egressPolicy(spec))]);
        const qname = q.join('.');
        const k = lookupFqdn(ks, qname);
        for (let port = 1; port <= 4; port++) {
          const want = sels.some((s) => s.port === port && fqdnMatches(s.wild ? pattern(`*.${s.labels.join('.')}`) : name(s.labels.join('.')), qname));
          expect(k ? classBits(k.cls, 6, port) === BIT_E_ALLOW : false).toBe(want);
        }
      }),
      { numRuns: 500 },
    );
  });

  test('Audit policies contribute audit bits; a set without fqdn peers has no keys', () => {
    const audit = normalizeEgressPolicy(egressPolicy({ podSelector: {}, mode: 'Audit', egress: [{ to: [{ fqdn: { matchName: 'a.example.com' } }] }] }));
    expect(classBits(compileFqdn([audit])[0]!.cls, 6, 1)).toBe(BIT_A_ALLOW);
    const plain = normalizeEgressPolicy(egressPolicy({ podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/8' } }] }] }));
    expect(compileFqdn([plain])).toEqual([]);
  });

  test('the engine compiles a set\'s fqdn peers into DesiredSet.fqdn', () => {
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'trainer', namespace: 'ml', uid: 'u1', labels: { app: 't' } },
      spec: { nodeName: 'node-1', containers: [{ name: 'c' }] },
      status: { podIPs: [{ ip: '10.1.0.5' }] },
    };
    const vp = validateObject(pod);
    if (!vp.ok) throw new Error('pod');
    const inputs: PolicyInputs = {
      namespaces: () => [],
      pods: () => [vp.object as never],
      networkPolicies: () => [],
      egressPolicies: () => [egressPolicy({ podSelector: { matchLabels: { app: 't' } }, egress: [{ to: [{ fqdn: { matchPattern: '*.hf.co' } }], ports: [{ protocol: 'TCP', port: 443 }] }] })],
      clusterEgressPolicies: () => [],
      services: () => [],
      endpointSlices: () => [],
    };
    const state = new PolicyEngine('node-1').compute(inputs);
    const set = state.sets.get(state.pods[0]!.setKey)!;
    expect(set.fqdn?.map((k) => k.text)).toEqual(['*.hf.co']);
    expect(lookupFqdn(set.fqdn!, 'cdn-lfs.eu.hf.co')?.text).toBe('*.hf.co');
    expect(lookupFqdn(set.fqdn!, 'hf.co')).toBeUndefined();
  });
});

describe('resolution is implied: fqdn peers allow DNS to the trusted resolvers', () => {
  const objects = (extra: unknown[]): unknown[] => [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ml' } },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: 'kube-system' },
      spec: { clusterIP: '10.96.0.10', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }, { name: 'metrics', port: 9153, protocol: 'TCP' }] },
    },
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'kube-dns-1', namespace: 'kube-system', labels: { 'kubernetes.io/service-name': 'kube-dns' } },
      addressType: 'IPv4',
      endpoints: [{ addresses: ['10.1.0.53'], conditions: { ready: true } }],
      ports: [{ name: 'dns', port: 5353, protocol: 'UDP' }, { name: 'dns-tcp', port: 5353, protocol: 'TCP' }, { name: 'metrics', port: 9153, protocol: 'TCP' }],
    },
    ...['fqdn', 'plain', 'audit'].map((app, i) => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: app, namespace: 'ml', uid: `u${i}`, labels: { app } },
      spec: { nodeName: 'node-1', containers: [{ name: 'c' }] },
      status: { podIPs: [{ ip: `10.1.0.${10 + i}` }] },
    })),
    ...extra,
  ];
  const policy = (name: string, app: string, to: unknown[], mode = 'Enforce') => ({
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name, namespace: 'ml' },
    spec: { podSelector: { matchLabels: { app } }, mode, egress: [{ to, ports: [{ protocol: 'TCP', port: 443 }] }] },
  });
  const world = (resolvers?: { service: string | null; addresses: string[] }) => {
    const objs = objects([
      policy('f', 'fqdn', [{ fqdn: { matchName: 'api.models.example.com' } }]),
      policy('p', 'plain', [{ ipBlock: { cidr: '192.0.2.0/24' } }]),
      policy('a', 'audit', [{ fqdn: { matchPattern: '*.hf.co' } }], 'Audit'),
    ]).map((o) => {
      const r = validateObject(o);
      if (!r.ok) throw new Error(r.ignored ? 'ignored' : r.error.message);
      return r.object;
    });
    const of = (kind: string) => objs.filter((o) => o.kind === kind) as never[];
    const inputs: PolicyInputs = {
      namespaces: () => of('Namespace'),
      pods: () => of('Pod'),
      networkPolicies: () => [],
      egressPolicies: () => of('EgressPolicy'),
      clusterEgressPolicies: () => [],
      services: () => of('Service'),
      endpointSlices: () => of('EndpointSlice'),
    };
    const engine = new PolicyEngine('node-1', resolvers ? { resolvers } : {});
    const state = engine.compute(inputs);
    const pod = (name: string) => state.pods.find((p) => p.name === name)!;
    return (name: string, dst: string, proto: number, port: number) => engine.explain(state, pod(name), dst, proto, port);
  };

  test('the ClusterIP on 53 and the backends on their target port, UDP and TCP; nothing else', () => {
    const explain = world();
    expect(explain('fqdn', '10.96.0.10', 17, 53).verdict).toBe('allow');
    expect(explain('fqdn', '10.96.0.10', 6, 53).verdict).toBe('allow');
    expect(explain('fqdn', '10.1.0.53', 17, 5353).verdict).toBe('allow');
    expect(explain('fqdn', '10.1.0.53', 6, 5353).verdict).toBe('allow');
    expect(explain('fqdn', '10.96.0.10', 6, 9153).verdict).toBe('drop');
    expect(explain('fqdn', '10.1.0.53', 17, 53).verdict).toBe('drop');
    expect(explain('fqdn', '8.8.8.8', 17, 53).verdict).toBe('drop');
    // the rule that implies it is named
    expect(explain('fqdn', '10.96.0.10', 17, 53).matches.map((m) => m.rule)).toContain('EgressPolicy/ml/f egress[0]');
    expect(explain('fqdn', '10.1.0.53', 17, 5353).matches.map((m) => m.rule)).toEqual(['EgressPolicy/ml/f egress[0]']);
  });

  test('a set without fqdn peers gets nothing; an Audit fqdn policy gets audit allows only', () => {
    const explain = world();
    expect(explain('plain', '10.96.0.10', 17, 53).verdict).toBe('drop');
    const audit = explain('audit', '10.96.0.10', 17, 53);
    expect(audit.bits).toBe(BIT_A_ALLOW);
    expect(audit.verdict).toBe('allow'); // not isolated by Enforce; the audit pass finds an allow
  });

  test('configured resolvers replace or add to the Service', () => {
    const explain = world({ service: null, addresses: ['10.0.0.2', 'fd00::53'] });
    expect(explain('fqdn', '10.96.0.10', 17, 53).verdict).toBe('drop');
    expect(explain('fqdn', '10.0.0.2', 17, 53).verdict).toBe('allow');
    expect(explain('fqdn', 'fd00::53', 6, 53).verdict).toBe('allow');
  });
});
