// The policy engine from Kubernetes objects to verdicts (explain uses the
// same flattened classes the datapath stores).
import { describe, expect, it } from 'vitest';
import { ObjectStore } from '../../src/model/store.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { parseObject } from '../helpers/kernel.js';

function world(objs: unknown[]): ObjectStore {
  const s = new ObjectStore();
  for (const o of objs) s.upsert(parseObject(o));
  return s;
}

const ns = (name: string, labels: Record<string, string> = {}): unknown => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } });
let n = 0;
const pod = (namespace: string, name: string, labels: Record<string, string>, ip: string, ports: { name: string; containerPort: number; protocol?: string }[] = []): unknown => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { namespace, name, labels, uid: `00000000-0000-4000-8000-${String(++n).padStart(12, '0')}` },
  spec: { nodeName: 'n1', containers: [{ name: 'c', ports }] },
  status: { phase: 'Running', podIPs: [{ ip }] },
});

function verdict(store: ObjectStore, from: string, dst: string, proto: number, port: number | null): string {
  const e = new PolicyEngine('n1');
  const st = e.compute(store);
  const p = st.pods.find((x) => `${x.namespace}/${x.name}` === from);
  if (!p) throw new Error(`no pod ${from}`);
  return e.explain(st, p, dst, proto, port).verdict;
}

describe('PolicyEngine', () => {
  const base = [
    ns('x', { team: 'a' }),
    ns('y', { team: 'b' }),
    pod('x', 'a', { app: 'a' }, '10.0.0.1'),
    pod('x', 'b', { app: 'b' }, '10.0.0.2', [{ name: 'serve', containerPort: 81 }]),
    pod('y', 'b', { app: 'b' }, '10.0.0.3', [{ name: 'serve', containerPort: 8081 }]),
    pod('y', 'c', { app: 'c' }, '10.0.0.4'),
  ];

  it('a podSelector peer means pods of the policy namespace only', () => {
    const s = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: { matchLabels: { app: 'a' } }, egress: [{ to: [{ podSelector: { matchLabels: { app: 'b' } } }] }] } },
    ]);
    expect(verdict(s, 'x/a', '10.0.0.2', 6, 80)).toBe('allow');
    expect(verdict(s, 'x/a', '10.0.0.3', 6, 80)).toBe('drop'); // y/b is in another namespace
    expect(verdict(s, 'x/b', '10.0.0.4', 6, 80)).toBe('allow'); // x/b not selected
  });

  it('namespaceSelector and podSelector in one peer are ANDed; in two peers ORed', () => {
    const and = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: { matchLabels: { app: 'a' } }, egress: [{ to: [{ namespaceSelector: { matchLabels: { team: 'b' } }, podSelector: { matchLabels: { app: 'b' } } }] }] } },
    ]);
    expect(verdict(and, 'x/a', '10.0.0.3', 6, 80)).toBe('allow');
    expect(verdict(and, 'x/a', '10.0.0.4', 6, 80)).toBe('drop');
    expect(verdict(and, 'x/a', '10.0.0.2', 6, 80)).toBe('drop');
    const or = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: { matchLabels: { app: 'a' } }, egress: [{ to: [{ namespaceSelector: { matchLabels: { team: 'b' } } }, { podSelector: { matchLabels: { app: 'b' } } }] }] } },
    ]);
    expect(verdict(or, 'x/a', '10.0.0.4', 6, 80)).toBe('allow');
    expect(verdict(or, 'x/a', '10.0.0.2', 6, 80)).toBe('allow');
  });

  it('a named port resolves per destination pod', () => {
    const s = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: { matchLabels: { app: 'a' } }, egress: [{ to: [{ namespaceSelector: {} }], ports: [{ port: 'serve' }] }] } },
    ]);
    expect(verdict(s, 'x/a', '10.0.0.2', 6, 81)).toBe('allow');
    expect(verdict(s, 'x/a', '10.0.0.2', 6, 8081)).toBe('drop');
    expect(verdict(s, 'x/a', '10.0.0.3', 6, 8081)).toBe('allow');
    expect(verdict(s, 'x/a', '10.0.0.3', 6, 81)).toBe('drop');
    expect(verdict(s, 'x/a', '10.0.0.4', 6, 81)).toBe('drop'); // no such port on y/c
    expect(verdict(s, 'x/a', '10.0.0.2', 17, 81)).toBe('drop'); // protocol is part of the name
  });

  it('an Ingress-only NetworkPolicy does not isolate egress; an empty Egress one denies all', () => {
    const ingressOnly = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: {}, policyTypes: ['Ingress'] } },
    ]);
    expect(verdict(ingressOnly, 'x/a', '203.0.113.1', 6, 443)).toBe('allow');
    const denyAll = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec: { podSelector: {}, policyTypes: ['Egress'] } },
    ]);
    expect(verdict(denyAll, 'x/a', '10.0.0.2', 6, 80)).toBe('drop');
    expect(verdict(denyAll, 'y/c', '10.0.0.2', 6, 80)).toBe('allow');
  });

  it('policies are a union; a weir deny rule beats any allow; Audit reports without dropping', () => {
    const s = world([
      ...base,
      { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p1', namespace: 'x' }, spec: { podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/8' } }] }] } },
      { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'p2', namespace: 'x' }, spec: { podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '203.0.113.0/24' } }] }], deny: [{ to: [{ ipBlock: { cidr: '10.0.0.4/32' } }] }] } },
      { apiVersion: 'weir.dev/v1alpha1', kind: 'ClusterEgressPolicy', metadata: { name: 'audit' }, spec: { namespaceSelector: { matchLabels: { team: 'b' } }, podSelector: {}, mode: 'Audit' } },
    ]);
    expect(verdict(s, 'x/a', '203.0.113.5', 6, 443)).toBe('allow');
    expect(verdict(s, 'x/a', '10.0.0.3', 6, 443)).toBe('allow');
    expect(verdict(s, 'x/a', '10.0.0.4', 6, 443)).toBe('drop');
    expect(verdict(s, 'y/c', '10.0.0.4', 6, 443)).toBe('audit');
  });

  it('explain names the deciding rules', () => {
    const s = world([
      ...base,
      { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'p2', namespace: 'x' }, spec: { podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '10.0.0.0/8' } }] }], deny: [{ to: [{ ipBlock: { cidr: '10.0.0.4/32' } }] }] } },
    ]);
    const e = new PolicyEngine('n1');
    const st = e.compute(s);
    const a = st.pods.find((p) => p.name === 'a');
    if (!a) throw new Error('no pod');
    const x = e.explain(st, a, '10.0.0.4', 6, 80);
    expect(x).toMatchObject({ verdict: 'drop', reason: 'deny-rule', selectedBy: ['EgressPolicy/x/p2'] });
    expect(x.matches.map((m) => m.rule).sort()).toEqual(['EgressPolicy/x/p2 deny[0]', 'EgressPolicy/x/p2 egress[0]']);
  });

  describe('Services', () => {
    const svc = (ready: boolean[] = [true, true]): unknown[] => [
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'api', namespace: 'y' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: 81 }] } },
      {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: 'api-1', namespace: 'y', labels: { 'kubernetes.io/service-name': 'api' } },
        addressType: 'IPv4',
        endpoints: [
          { addresses: ['10.0.0.2'], conditions: { ready: ready[0] } },
          { addresses: ['10.0.0.3'], conditions: { ready: ready[1] } },
        ],
        ports: [{ name: 'http', port: 81 }],
      },
    ];
    const allowTo = (peers: unknown[], ports: unknown[] = [{ port: 81 }]): unknown => ({
      apiVersion: 'weir.dev/v1alpha1',
      kind: 'EgressPolicy',
      metadata: { name: 'p', namespace: 'x' },
      spec: { podSelector: { matchLabels: { app: 'a' } }, egress: [{ to: peers, ports }] },
    });

    it('a ClusterIP:port is allowed only when every ready backend is allowed on the target port', () => {
      const both = world([...base, ...svc(), allowTo([{ namespaceSelector: {}, podSelector: { matchLabels: { app: 'b' } } }])]);
      expect(verdict(both, 'x/a', '10.96.0.10', 6, 80)).toBe('allow');
      expect(verdict(both, 'x/a', '10.96.0.10', 6, 81)).toBe('drop'); // not a Service port
      const one = world([...base, ...svc(), allowTo([{ podSelector: { matchLabels: { app: 'b' } } }])]); // only x/b
      expect(verdict(one, 'x/a', '10.96.0.10', 6, 80)).toBe('drop');
      const wrongPort = world([...base, ...svc(), allowTo([{ namespaceSelector: {}, podSelector: { matchLabels: { app: 'b' } } }], [{ port: 80 }])]);
      expect(verdict(wrongPort, 'x/a', '10.96.0.10', 6, 80)).toBe('drop'); // backends listen on 81
    });

    it('backends that are not ready do not count', () => {
      const s = world([...base, ...svc([true, false]), allowTo([{ podSelector: { matchLabels: { app: 'b' } } }])]);
      expect(verdict(s, 'x/a', '10.96.0.10', 6, 80)).toBe('allow');
    });

    it('an ipBlock covering the ClusterIP itself allows it', () => {
      const s = world([...base, ...svc(), allowTo([{ ipBlock: { cidr: '10.96.0.0/12' } }], [{ port: 80 }])]);
      expect(verdict(s, 'x/a', '10.96.0.10', 6, 80)).toBe('allow');
    });

    it('explain names the Service when its backends decide', () => {
      const s = world([...base, ...svc(), allowTo([{ namespaceSelector: {}, podSelector: { matchLabels: { app: 'b' } } }])]);
      const e = new PolicyEngine('n1');
      const st = e.compute(s);
      const a = st.pods.find((p) => p.name === 'a');
      if (!a) throw new Error('no pod');
      expect(e.explain(st, a, '10.96.0.10', 6, 80).matches.map((m) => m.rule)).toEqual(['Service/y/api (every ready backend allowed)']);
    });
  });
});
