// fast-check arbitraries for random clusters: namespaces, pods, labels,
// NetworkPolicies, EgressPolicies and ClusterEgressPolicies, all valid
// objects (they pass validateObject), over small label and address spaces so
// that selectors and CIDRs overlap often.
import fc from 'fast-check';

const KEYS = ['app', 'tier', 'env'];
const VALUES = ['a', 'b', 'c'];
const NAMESPACES = ['ns1', 'ns2', 'ns3'];
export const EXTERNAL = ['192.0.2.5', '192.0.2.200', '203.0.113.9', '10.0.0.200'];
const CONTAINER_PORTS = [
  { name: 'http', containerPort: 80, protocol: 'TCP' },
  { name: 'dns', containerPort: 53, protocol: 'UDP' },
  { name: 'alt', containerPort: 8080, protocol: 'TCP' },
  { name: 'http', containerPort: 8081, protocol: 'TCP' },
];
const BLOCKS: { cidr: string; except: string[] }[] = [
  { cidr: '10.0.0.0/24', except: ['10.0.0.0/30', '10.0.0.4/31'] },
  { cidr: '10.0.0.0/30', except: [] },
  { cidr: '10.0.0.4/31', except: [] },
  { cidr: '0.0.0.0/0', except: ['10.0.0.0/24', '192.0.2.0/25'] },
  { cidr: '192.0.2.0/24', except: ['192.0.2.0/25'] },
];

const labels = fc.dictionary(fc.constantFrom(...KEYS), fc.constantFrom(...VALUES), { maxKeys: 2 });

const expression = fc.oneof(
  fc.record({ key: fc.constantFrom(...KEYS), operator: fc.constantFrom('In', 'NotIn'), values: fc.uniqueArray(fc.constantFrom(...VALUES), { minLength: 1, maxLength: 2 }) }),
  fc.record({ key: fc.constantFrom(...KEYS), operator: fc.constantFrom('Exists', 'DoesNotExist') }),
);

const selector = fc.record(
  { matchLabels: fc.dictionary(fc.constantFrom(...KEYS), fc.constantFrom(...VALUES), { maxKeys: 1 }), matchExpressions: fc.array(expression, { maxLength: 1 }) },
  { requiredKeys: [] },
);

const peer = fc.oneof(
  fc.constantFrom(...BLOCKS).chain((b) => fc.subarray(b.except).map((except) => ({ ipBlock: except.length ? { cidr: b.cidr, except } : { cidr: b.cidr } }))),
  selector.map((podSelector) => ({ podSelector })),
  selector.map((namespaceSelector) => ({ namespaceSelector })),
  fc.tuple(selector, selector).map(([namespaceSelector, podSelector]) => ({ namespaceSelector, podSelector })),
);

const port = fc.oneof(
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP', 'SCTP'), port: fc.constantFrom(53, 80, 443, 8080) }, { requiredKeys: ['protocol'] }),
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP'), port: fc.constantFrom(80, 8000), endPort: fc.constantFrom(8080, 9000) }),
  fc.record({ protocol: fc.constantFrom('TCP', 'UDP'), port: fc.constantFrom('http', 'dns', 'alt') }),
);

const rule = fc.record({ to: fc.array(peer, { maxLength: 2 }), ports: fc.array(port, { maxLength: 2 }) }, { requiredKeys: [] });

export interface RawWorld {
  namespaces: unknown[];
  pods: unknown[];
  policies: unknown[];
  podIPs: string[];
}

export const worldArb: fc.Arbitrary<RawWorld> = fc
  .record({
    nsLabels: fc.array(labels, { minLength: 3, maxLength: 3 }),
    pods: fc.array(
      fc.record({ ns: fc.constantFrom(...NAMESPACES), labels, ports: fc.subarray(CONTAINER_PORTS, { maxLength: 2 }) }),
      { minLength: 1, maxLength: 6 },
    ),
    nps: fc.array(
      fc.record({ ns: fc.constantFrom(...NAMESPACES), podSelector: selector, types: fc.constantFrom(['Egress'], ['Ingress'], ['Ingress', 'Egress'], null), egress: fc.array(rule, { maxLength: 2 }) }),
      { maxLength: 2 },
    ),
    eps: fc.array(
      fc.record({ ns: fc.constantFrom(...NAMESPACES), podSelector: selector, mode: fc.constantFrom('Enforce', 'Audit'), egress: fc.array(rule, { maxLength: 2 }), deny: fc.array(rule, { maxLength: 1 }) }),
      { maxLength: 2 },
    ),
    ceps: fc.array(
      fc.record({ namespaceSelector: selector, podSelector: selector, mode: fc.constantFrom('Enforce', 'Audit'), egress: fc.array(rule, { maxLength: 2 }), deny: fc.array(rule, { maxLength: 1 }) }),
      { maxLength: 1 },
    ),
  })
  .map((r) => {
    const namespaces = NAMESPACES.map((name, i) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: r.nsLabels[i] ?? {} } }));
    const podIPs: string[] = [];
    const pods = r.pods.map((p, i) => {
      const ip = `10.0.0.${i + 1}`;
      podIPs.push(ip);
      // Container port names are unique per container in Kubernetes.
      const seen = new Set<string>();
      const ports = p.ports.filter((cp) => (seen.has(cp.name) ? false : (seen.add(cp.name), true)));
      return {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: `p${i}`, namespace: p.ns, labels: p.labels, uid: `0000000${i}-0000-4000-8000-000000000000` },
        spec: { nodeName: 'node-1', containers: [{ name: 'c', ports }] },
        status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip }] },
      };
    });
    const policies: unknown[] = [];
    r.nps.forEach((np, i) =>
      policies.push({
        apiVersion: 'networking.k8s.io/v1',
        kind: 'NetworkPolicy',
        metadata: { name: `np${i}`, namespace: np.ns },
        spec: { podSelector: np.podSelector, ...(np.types ? { policyTypes: np.types } : {}), egress: np.egress },
      }),
    );
    r.eps.forEach((ep, i) =>
      policies.push({
        apiVersion: 'weir.dev/v1alpha1',
        kind: 'EgressPolicy',
        metadata: { name: `ep${i}`, namespace: ep.ns },
        spec: { podSelector: ep.podSelector, mode: ep.mode, egress: ep.egress, deny: ep.deny },
      }),
    );
    r.ceps.forEach((cp, i) =>
      policies.push({
        apiVersion: 'weir.dev/v1alpha1',
        kind: 'ClusterEgressPolicy',
        metadata: { name: `cep${i}` },
        spec: { namespaceSelector: cp.namespaceSelector, podSelector: cp.podSelector, mode: cp.mode, egress: cp.egress, deny: cp.deny },
      }),
    );
    return { namespaces, pods, policies, podIPs };
  });

export const probeArb = fc.record({
  src: fc.nat({ max: 5 }),
  dst: fc.oneof(fc.nat({ max: 5 }).map((i) => ({ pod: i })), fc.constantFrom(...EXTERNAL).map((ip) => ({ ip }))),
  proto: fc.constantFrom(6, 17, 132, 1),
  port: fc.constantFrom(53, 80, 443, 8080, 8081, 8500, 9999),
});
