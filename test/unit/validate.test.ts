import { describe, expect, test } from 'vitest';
import { parseCIDR, parseIP, validateObject, type ValidationError } from '../../src/model/validate.js';
import type { ClusterEgressPolicy, EgressPolicy, KubeObject, NetworkPolicy, Pod, Service } from '../../src/model/types.js';

type Raw = Record<string, unknown>;

/** The EgressPolicy from DESIGN.md, as a manifest would hold it. */
function designPolicy(): Raw {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name: 'train-data', namespace: 'ml' },
    spec: {
      podSelector: { matchLabels: { 'weir.dev/domain': 'train-data' } },
      mode: 'Enforce',
      egress: [
        {
          to: [
            { podSelector: { matchLabels: { app: 'feature-store' } } },
            { ipBlock: { cidr: '10.20.0.0/16', except: ['10.20.9.0/24'] } },
            { fqdn: { matchName: 'api.internal.example.com' } },
            { fqdn: { matchPattern: '*.models.example.com' } },
          ],
          ports: [{ protocol: 'TCP', port: 443 }],
        },
      ],
      deny: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }],
    },
  };
}

function clusterPolicy(): Raw {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'ClusterEgressPolicy',
    metadata: { name: 'no-public-storage' },
    spec: {
      namespaceSelector: { matchExpressions: [{ key: 'weir.dev/tier', operator: 'In', values: ['serving', 'training'] }] },
      podSelector: {},
      mode: 'Audit',
      deny: [{ to: [{ fqdn: { matchPattern: '*.storage.example.net' } }, { ipBlock: { cidr: '2001:db8::/32', except: ['2001:db8:1::/48'] } }] }],
    },
  };
}

function networkPolicy(): Raw {
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'allow-dns', namespace: 'ml' },
    spec: {
      podSelector: {},
      egress: [{ to: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } }, podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } } }], ports: [{ protocol: 'UDP', port: 53 }, { port: 'dns-tcp' }] }],
    },
  };
}

function pod(): Raw {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'trainer-0', namespace: 'ml', uid: 'a1b2', labels: { app: 'trainer' } },
    spec: { nodeName: 'node-a', containers: [{ name: 'trainer', image: 'x', ports: [{ name: 'metrics', containerPort: 9090 }] }] },
    status: { phase: 'Running', podIP: '10.244.1.10', qosClass: 'Burstable', conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

function service(): Raw {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: 'feature-store', namespace: 'ml' },
    spec: { clusterIP: '10.96.0.50', selector: { app: 'feature-store' }, ports: [{ name: 'https', port: 443, targetPort: 'https' }, { name: 'grpc', port: 9000 }] },
  };
}

function endpointSlice(): Raw {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'feature-store-abc', namespace: 'ml' },
    addressType: 'IPv4',
    endpoints: [{ addresses: ['10.244.2.20'], conditions: { ready: true } }],
    ports: [{ name: 'https', port: 8443 }],
  };
}

function accept(raw: unknown): KubeObject {
  const r = validateObject(raw, { file: 'test.yaml', index: 0 });
  if (!r.ok) throw new Error(r.ignored ? `ignored ${r.kind}` : r.error.message);
  return r.object;
}

function reject(raw: unknown, where = { file: 'ml/policy.yaml', index: 1 }): ValidationError {
  const r = validateObject(raw, where);
  if (r.ok) throw new Error(`accepted: ${JSON.stringify(r.object)}`);
  if (r.ignored) throw new Error(`ignored ${r.kind}`);
  return r.error;
}

/** Sets a value at a dotted/indexed path, creating nothing: the path must exist up to its parent. */
function set(obj: Raw, path: string, value: unknown): Raw {
  const parts = path.match(/[^.[\]]+/g) ?? [];
  let cur: unknown = obj;
  for (const p of parts.slice(0, -1)) cur = (cur as Record<string, unknown>)[p];
  const last = parts[parts.length - 1] ?? '';
  if (value === undefined) delete (cur as Record<string, unknown>)[last];
  else (cur as Record<string, unknown>)[last] = value;
  return obj;
}

describe('validateObject accepts valid objects and applies API defaults', () => {
  test('the DESIGN.md EgressPolicy is accepted unchanged except for the protocol default it already states', () => {
    const p = accept(designPolicy()) as EgressPolicy;
    expect(p.kind).toBe('EgressPolicy');
    expect(p.metadata).toEqual({ name: 'train-data', namespace: 'ml' });
    expect(p.spec.mode).toBe('Enforce');
    expect(p.spec.egress?.[0]?.to).toHaveLength(4);
    expect(p.spec.egress?.[0]?.to?.[1]).toEqual({ ipBlock: { cidr: '10.20.0.0/16', except: ['10.20.9.0/24'] } });
    expect(p.spec.egress?.[0]?.to?.[3]).toEqual({ fqdn: { matchPattern: '*.models.example.com' } });
    expect(p.spec.deny).toEqual([{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }] }]);
  });

  test('a ClusterEgressPolicy with a namespaceSelector, Audit mode and an IPv6 except is accepted', () => {
    const p = accept(clusterPolicy()) as ClusterEgressPolicy;
    expect(p.metadata.namespace).toBeUndefined();
    expect(p.spec.mode).toBe('Audit');
    expect(p.spec.namespaceSelector.matchExpressions?.[0]?.values).toEqual(['serving', 'training']);
    expect(p.spec.deny?.[0]?.to?.[1]?.ipBlock).toEqual({ cidr: '2001:db8::/32', except: ['2001:db8:1::/48'] });
  });

  test('an empty namespaceSelector (every namespace) is a valid ClusterEgressPolicy', () => {
    const raw = set(clusterPolicy(), 'spec.namespaceSelector', {});
    expect((accept(raw) as ClusterEgressPolicy).spec.namespaceSelector).toEqual({});
  });

  test('mode defaults to Enforce and protocol to TCP', () => {
    const raw = designPolicy();
    set(raw, 'spec.mode', undefined);
    set(raw, 'spec.egress[0].ports[0].protocol', undefined);
    const p = accept(raw) as EgressPolicy;
    expect(p.spec.mode).toBe('Enforce');
    expect(p.spec.egress?.[0]?.ports?.[0]).toEqual({ protocol: 'TCP', port: 443 });
  });

  test('an EgressPolicy with no rules is valid (deny-all for the pods it selects)', () => {
    const p = accept({ apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'lockdown', namespace: 'ml' }, spec: { podSelector: {} } }) as EgressPolicy;
    expect(p.spec).toEqual({ podSelector: {}, mode: 'Enforce' });
  });

  test.each([
    ['absent, with egress rules', undefined, [{}], ['Ingress', 'Egress']],
    ['absent, without egress', undefined, undefined, ['Ingress']],
    ['absent, with egress: [] (no rules)', undefined, [], ['Ingress']],
    ['empty list, with egress rules', [], [{ ports: [{ port: 53, protocol: 'UDP' }] }], ['Ingress', 'Egress']],
    ['explicit [Egress] without rules (deny all egress)', ['Egress'], undefined, ['Egress']],
    ['explicit [Ingress] with egress rules (kept as written)', ['Ingress'], [{}], ['Ingress']],
  ])('NetworkPolicy policyTypes default like the API server: %s', (_name, policyTypes, egress, expected) => {
    const raw: Raw = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'ml' }, spec: { podSelector: {} } };
    if (policyTypes !== undefined) set(raw, 'spec.policyTypes', policyTypes);
    if (egress !== undefined) set(raw, 'spec.egress', egress);
    expect((accept(raw) as NetworkPolicy).spec.policyTypes).toEqual(expected);
  });

  test('NetworkPolicy peers with both selectors and named ports are accepted, ports defaulted to TCP', () => {
    const np = accept(networkPolicy()) as NetworkPolicy;
    expect(np.spec.egress?.[0]?.ports).toEqual([{ protocol: 'UDP', port: 53 }, { protocol: 'TCP', port: 'dns-tcp' }]);
    expect(np.spec.egress?.[0]?.to?.[0]?.namespaceSelector).toEqual({ matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } });
  });

  test('an ipBlock with host bits set is accepted, as the API server accepts it', () => {
    const raw = set(designPolicy(), 'spec.egress[0].to[1].ipBlock', { cidr: '10.20.3.4/16', except: ['10.20.9.0/24'] });
    expect(validateObject(raw).ok).toBe(true);
  });

  test('endPort ≥ port is accepted as a port range', () => {
    const raw = set(designPolicy(), 'spec.egress[0].ports[0]', { port: 8000, endPort: 8080 });
    expect((accept(raw) as EgressPolicy).spec.egress?.[0]?.ports?.[0]).toEqual({ protocol: 'TCP', port: 8000, endPort: 8080 });
  });

  test('FQDNs are matched case-insensitively: upper case and a trailing dot are normalised away', () => {
    const raw = set(designPolicy(), 'spec.egress[0].to[2].fqdn', { matchName: 'API.Internal.Example.COM.' });
    set(raw, 'spec.egress[0].to[3].fqdn', { matchPattern: '*.Models.Example.com.' });
    const p = accept(raw) as EgressPolicy;
    expect(p.spec.egress?.[0]?.to?.[2]?.fqdn).toEqual({ matchName: 'api.internal.example.com' });
    expect(p.spec.egress?.[0]?.to?.[3]?.fqdn).toEqual({ matchPattern: '*.models.example.com' });
  });

  test('a namespaced object without a namespace lands in "default", as with kubectl apply', () => {
    const raw = designPolicy();
    set(raw, 'metadata.namespace', undefined);
    expect((accept(raw) as EgressPolicy).metadata.namespace).toBe('default');
  });

  test('a Namespace gets the kubernetes.io/metadata.name label the API server adds', () => {
    const ns = accept({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ml', labels: { team: 'a' } } });
    expect(ns.metadata.labels).toEqual({ team: 'a', 'kubernetes.io/metadata.name': 'ml' });
  });

  test('a Pod keeps only the fields weir reads, with podIPs filled from podIP and container protocol defaulted', () => {
    const p = accept(pod()) as Pod;
    expect(p.status).toEqual({ phase: 'Running', podIP: '10.244.1.10', podIPs: [{ ip: '10.244.1.10' }], qosClass: 'Burstable' });
    expect(p.spec.containers).toEqual([{ name: 'trainer', ports: [{ name: 'metrics', containerPort: 9090, protocol: 'TCP' }] }]);
  });

  test('a dual-stack Pod fills podIP from podIPs[0]', () => {
    const raw = pod();
    set(raw, 'status', { podIPs: [{ ip: 'fd00::5' }, { ip: '10.0.0.5' }] });
    expect((accept(raw) as Pod).status).toEqual({ podIP: 'fd00::5', podIPs: [{ ip: 'fd00::5' }, { ip: '10.0.0.5' }] });
  });

  test('a Service defaults targetPort to port and protocol to TCP', () => {
    const s = accept(service()) as Service;
    expect(s.spec.ports).toEqual([
      { name: 'https', port: 443, protocol: 'TCP', targetPort: 'https' },
      { name: 'grpc', port: 9000, protocol: 'TCP', targetPort: 9000 },
    ]);
    expect(s.spec.clusterIPs).toEqual(['10.96.0.50']);
  });

  test('an EndpointSlice is accepted with port protocol defaulted', () => {
    const e = accept(endpointSlice());
    expect(e.kind === 'EndpointSlice' && e.ports).toEqual([{ name: 'https', port: 8443, protocol: 'TCP' }]);
  });

  test.each([
    ['apps/v1 Deployment', { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' } }],
    ['v1 ConfigMap', { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' }, data: { a: 'b' } }],
    ['a Knative Service (same kind name, other API group)', { apiVersion: 'serving.knative.dev/v1', kind: 'Service', metadata: { name: 'x' } }],
  ])('kinds weir does not read are ignored, not errors: %s', (_name, raw) => {
    const r = validateObject(raw);
    expect(r).toMatchObject({ ok: false, ignored: true });
  });
});

describe('validateObject rejects malformed objects with the exact field path', () => {
  test('the message names file, 1-based document, object, field, value and the expected range', () => {
    const raw = set(designPolicy(), 'spec.egress[0].ports[0].port', 70000);
    const e = reject(raw, { file: 'ml/policy.yaml', index: 1 });
    expect(e.message).toBe('ml/policy.yaml (document 2): EgressPolicy ml/train-data: spec.egress[0].ports[0].port: 70000 is not a port (1-65535)');
    expect(e).toMatchObject({ file: 'ml/policy.yaml', document: 2, object: 'EgressPolicy ml/train-data', field: 'spec.egress[0].ports[0].port', key: 'EgressPolicy/ml/train-data' });
  });

  test('every problem in an object is reported, not only the first', () => {
    const raw = designPolicy();
    set(raw, 'spec.mode', 'Block');
    set(raw, 'spec.egress[0].to[1].ipBlock.cidr', '10.20.0.0/33');
    set(raw, 'spec.egress[0].ports[0].protocol', 'ICMP');
    const e = reject(raw);
    expect(e.issues.map((i) => i.field)).toEqual(['spec.mode', 'spec.egress[0].to[1].ipBlock.cidr', 'spec.egress[0].ports[0].protocol']);
    for (const i of e.issues) expect(e.message).toContain(i.field);
  });

  const ep = designPolicy;
  const cases: [string, () => unknown, string, RegExp][] = [
    ['a CIDR prefix beyond 32 bits', () => set(ep(), 'spec.egress[0].to[1].ipBlock.cidr', '10.20.0.0/33'), 'spec.egress[0].to[1].ipBlock.cidr', /"10\.20\.0\.0\/33" is not a valid CIDR/],
    ['an address where a CIDR belongs', () => set(ep(), 'spec.egress[0].to[1].ipBlock.cidr', '10.20.0.1'), 'spec.egress[0].to[1].ipBlock.cidr', /needs a prefix length, e\.g\. 10\.20\.0\.1\/32/],
    ['an IPv4 octet with a leading zero', () => set(ep(), 'spec.egress[0].to[1].ipBlock.cidr', '010.20.0.0/16'), 'spec.egress[0].to[1].ipBlock.cidr', /not a valid CIDR/],
    ['an IPv6 prefix beyond 128 bits', () => set(ep(), 'spec.egress[0].to[1].ipBlock', { cidr: 'fd00::/129' }), 'spec.egress[0].to[1].ipBlock.cidr', /not a valid CIDR/],
    ['a missing cidr', () => set(ep(), 'spec.egress[0].to[1].ipBlock', { except: ['10.0.0.0/8'] }), 'spec.egress[0].to[1].ipBlock.cidr', /required/],
    ['an except outside cidr', () => set(ep(), 'spec.egress[0].to[1].ipBlock.except', ['10.21.0.0/24']), 'spec.egress[0].to[1].ipBlock.except[0]', /not strictly within cidr 10\.20\.0\.0\/16/],
    ['an except equal to cidr (not strictly within)', () => set(ep(), 'spec.egress[0].to[1].ipBlock.except', ['10.20.0.0/16']), 'spec.egress[0].to[1].ipBlock.except[0]', /not strictly within/],
    ['an except of the other IP family', () => set(ep(), 'spec.egress[0].to[1].ipBlock.except', ['fd00::/64']), 'spec.egress[0].to[1].ipBlock.except[0]', /IPv6 but cidr "10\.20\.0\.0\/16" is IPv4/],
    ['an except that is not a CIDR', () => set(ep(), 'spec.egress[0].to[1].ipBlock.except', ['10.20.9.0/24', 'nope']), 'spec.egress[0].to[1].ipBlock.except[1]', /"nope" is not a valid CIDR/],
    ['a peer with both ipBlock and fqdn', () => set(ep(), 'spec.egress[0].to[1].fqdn', { matchName: 'x.example.com' }), 'spec.egress[0].to[1]', /exactly one of .* sets ipBlock and fqdn/],
    ['a peer with podSelector and ipBlock', () => set(ep(), 'spec.egress[0].to[0].ipBlock', { cidr: '10.0.0.0/8' }), 'spec.egress[0].to[0]', /sets podSelector\/namespaceSelector and ipBlock/],
    ['an empty peer', () => set(ep(), 'spec.egress[0].to[0]', {}), 'spec.egress[0].to[0]', /a peer must set/],
    ['an fqdn with both matchName and matchPattern', () => set(ep(), 'spec.egress[0].to[2].fqdn', { matchName: 'a.example.com', matchPattern: '*.example.com' }), 'spec.egress[0].to[2].fqdn', /exactly one of matchName or matchPattern, not both/],
    ['a wildcard in a middle label', () => set(ep(), 'spec.egress[0].to[3].fqdn.matchPattern', 'api.*.example.com'), 'spec.egress[0].to[3].fqdn.matchPattern', /may only be the whole first label/],
    ['a wildcard that is part of a label', () => set(ep(), 'spec.egress[0].to[3].fqdn.matchPattern', '*api.example.com'), 'spec.egress[0].to[3].fqdn.matchPattern', /may only be the whole first label/],
    ['a bare "*" pattern', () => set(ep(), 'spec.egress[0].to[3].fqdn.matchPattern', '*'), 'spec.egress[0].to[3].fqdn.matchPattern', /at least one label after/],
    ['a wildcard in matchName', () => set(ep(), 'spec.egress[0].to[2].fqdn.matchName', '*.example.com'), 'spec.egress[0].to[2].fqdn.matchName', /use matchPattern/],
    ['a DNS label starting with a hyphen', () => set(ep(), 'spec.egress[0].to[2].fqdn.matchName', '-api.example.com'), 'spec.egress[0].to[2].fqdn.matchName', /not a DNS name: it has the label "-api"/],
    ['an empty DNS label', () => set(ep(), 'spec.egress[0].to[2].fqdn.matchName', 'api..example.com'), 'spec.egress[0].to[2].fqdn.matchName', /empty label/],
    ['a lower-case protocol', () => set(ep(), 'spec.egress[0].ports[0].protocol', 'tcp'), 'spec.egress[0].ports[0].protocol', /"tcp" is not a protocol \(expected TCP, UDP or SCTP; protocol names are upper case\)/],
    ['port 0', () => set(ep(), 'spec.egress[0].ports[0].port', 0), 'spec.egress[0].ports[0].port', /0 is not a port \(1-65535\)/],
    ['a named port longer than 15 characters', () => set(ep(), 'spec.egress[0].ports[0].port', 'very-long-port-name'), 'spec.egress[0].ports[0].port', /not a valid port name \(IANA_SVC_NAME/],
    ['a named port without a letter', () => set(ep(), 'spec.egress[0].ports[0].port', '80-80'), 'spec.egress[0].ports[0].port', /not a valid port name/],
    ['a quoted port number', () => set(ep(), 'spec.egress[0].ports[0].port', '443'), 'spec.egress[0].ports[0].port', /quoted number/],
    ['endPort with a named port', () => set(ep(), 'spec.egress[0].ports[0]', { port: 'https', endPort: 500 }), 'spec.egress[0].ports[0].endPort', /only be used with a numeric port, not the named port "https"/],
    ['endPort below port', () => set(ep(), 'spec.egress[0].ports[0]', { port: 443, endPort: 80 }), 'spec.egress[0].ports[0].endPort', /80 is less than port 443/],
    ['endPort without port', () => set(ep(), 'spec.egress[0].ports[0]', { endPort: 80 }), 'spec.egress[0].ports[0].endPort', /requires a numeric port/],
    ['an unknown mode', () => set(ep(), 'spec.mode', 'Block'), 'spec.mode', /"Block" is not a mode \(expected Enforce or Audit\)/],
    ['a missing podSelector', () => set(ep(), 'spec.podSelector', undefined), 'spec.podSelector', /required \(use \{\} to select every pod/],
    ['In without values', () => set(ep(), 'spec.podSelector', { matchExpressions: [{ key: 'app', operator: 'In' }] }), 'spec.podSelector.matchExpressions[0].values', /required when operator is In/],
    ['NotIn with an empty value list', () => set(ep(), 'spec.podSelector', { matchExpressions: [{ key: 'app', operator: 'NotIn', values: [] }] }), 'spec.podSelector.matchExpressions[0].values', /must not be empty when operator is NotIn/],
    ['Exists with values', () => set(ep(), 'spec.podSelector', { matchExpressions: [{ key: 'app', operator: 'Exists', values: ['x'] }] }), 'spec.podSelector.matchExpressions[0].values', /must be empty when operator is Exists/],
    ['an unknown operator', () => set(ep(), 'spec.podSelector', { matchExpressions: [{ key: 'app', operator: 'Equals', values: ['x'] }] }), 'spec.podSelector.matchExpressions[0].operator', /"Equals" is not a selector operator/],
    ['an invalid selector value', () => set(ep(), 'spec.egress[0].to[0].podSelector', { matchExpressions: [{ key: 'app', operator: 'In', values: ['ok', 'not ok'] }] }), 'spec.egress[0].to[0].podSelector.matchExpressions[0].values[1]', /"not ok" is not a valid label value/],
    ['a label key with an invalid name part', () => set(ep(), 'spec.podSelector.matchLabels', { 'weir.dev/-domain': 'x' }), 'spec.podSelector.matchLabels[weir.dev/-domain]', /not a valid label key/],
    ['a label key with an upper-case prefix', () => set(ep(), 'spec.podSelector.matchLabels', { 'Weir.dev/domain': 'x' }), 'spec.podSelector.matchLabels[Weir.dev/domain]', /prefix "Weir\.dev" must be a lowercase DNS-1123 subdomain/],
    ['a boolean label value', () => set(ep(), 'metadata.labels', { enabled: true }), 'metadata.labels[enabled]', /true \(a boolean\) is not a string; label values must be strings \(quote it in YAML\)/],
    ['a label value over 63 characters', () => set(ep(), 'metadata.labels', { team: 'a'.repeat(64) }), 'metadata.labels[team]', /64 characters; at most 63/],
    ['an upper-case name', () => set(ep(), 'metadata.name', 'Train_Data'), 'metadata.name', /"Train_Data" is not a valid name \(expected a lowercase RFC 1123 subdomain/],
    ['a namespace that is not a DNS label', () => set(ep(), 'metadata.namespace', 'ml.team'), 'metadata.namespace', /not a valid name \(expected a lowercase RFC 1123 label/],
    ['a missing name', () => set(ep(), 'metadata.name', undefined), 'metadata.name', /required/],
    ['a misspelt field', () => set(ep(), 'spec.egress[0].to[0]', { podselector: {} }), 'spec.egress[0].to[0].podselector', /unknown field \(did you mean podSelector\?\)/],
    ['namespaceSelector in a namespaced EgressPolicy', () => set(ep(), 'spec.namespaceSelector', {}), 'spec.namespaceSelector', /use a ClusterEgressPolicy/],
    ['a ClusterEgressPolicy without namespaceSelector', () => set(clusterPolicy(), 'spec.namespaceSelector', undefined), 'spec.namespaceSelector', /required \(use \{\} to select every namespace\)/],
    ['a ClusterEgressPolicy with a namespace', () => set(clusterPolicy(), 'metadata.namespace', 'ml'), 'metadata.namespace', /cluster-scoped and must not have a namespace/],
    ['an fqdn peer in a NetworkPolicy', () => set(networkPolicy(), 'spec.egress[0].to[0]', { fqdn: { matchName: 'a.example.com' } }), 'spec.egress[0].to[0].fqdn', /only available in weir\.dev EgressPolicy/],
    ['an unknown policy type', () => set(networkPolicy(), 'spec.policyTypes', ['Outbound']), 'spec.policyTypes[0]', /"Outbound" is not a policy type/],
    ['a NetworkPolicy with a bad ingress rule', () => set(networkPolicy(), 'spec.ingress', [{ from: [{ ipBlock: { cidr: 'x' } }] }]), 'spec.ingress[0].from[0].ipBlock.cidr', /not a valid CIDR/],
    ['an unsupported weir.dev version', () => set(ep(), 'apiVersion', 'weir.dev/v1'), 'apiVersion', /"weir\.dev\/v1" is not a supported version of EgressPolicy \(expected weir\.dev\/v1alpha1\)/],
    ['a NetworkPolicy from the removed extensions group', () => set(networkPolicy(), 'apiVersion', 'extensions/v1beta1'), 'apiVersion', /no longer served/],
    ['a missing kind', () => set(ep(), 'kind', undefined), 'kind', /required/],
    ['a pod IP that is not an address', () => set(pod(), 'status.podIP', '10.0.0.256'), 'status.podIP', /"10\.0\.0\.256" is not an IP address/],
    ['a pod IP with an IPv6 zone', () => set(pod(), 'status', { podIPs: [{ ip: 'fe80::1%eth0' }] }), 'status.podIPs[0].ip', /not an IP address/],
    ['two pod IPs of one family', () => set(pod(), 'status', { podIPs: [{ ip: '10.0.0.1' }, { ip: '10.0.0.2' }] }), 'status.podIPs[1].ip', /at most one address per IP family/],
    ['podIPs[0] differing from podIP', () => set(pod(), 'status', { podIP: '10.0.0.1', podIPs: [{ ip: '10.0.0.2' }] }), 'status.podIPs[0]', /must equal status\.podIP/],
    ['an unknown QoS class', () => set(pod(), 'status.qosClass', 'Premium'), 'status.qosClass', /"Premium" is not a QoS class/],
    ['a pod without containers', () => set(pod(), 'spec.containers', undefined), 'spec.containers', /required/],
    ['a container port of 0', () => set(pod(), 'spec.containers[0].ports[0].containerPort', 0), 'spec.containers[0].ports[0].containerPort', /0 is not a port/],
    ['an IPv6 address in an IPv4 EndpointSlice', () => set(endpointSlice(), 'endpoints[0].addresses', ['fd00::1']), 'endpoints[0].addresses[0]', /IPv6 address; expected IPv4/],
    ['an unnamed port in a two-port Service', () => set(service(), 'spec.ports[1].name', undefined), 'spec.ports[1].name', /required when a Service has more than one port/],
    ['a Service name that is not a DNS-1035 label', () => set(service(), 'metadata.name', '1st-store'), 'metadata.name', /RFC 1035 label/],
    ['a uid over the length limit', () => set(pod(), 'metadata.uid', 'u'.repeat(200)), 'metadata.uid', /200 characters; at most 128/],
  ];

  test.each(cases)('rejects %s', (_name, make, fieldPath, problem) => {
    const e = reject(make());
    const issue = e.issues.find((i) => i.field === fieldPath);
    expect(issue, `issues: ${JSON.stringify(e.issues)}`).toBeDefined();
    expect(issue?.problem).toMatch(problem);
    expect(e.message).toContain(`${fieldPath}: `);
  });

  test('a document that is not a mapping is refused as "not a Kubernetes object"', () => {
    expect(reject(['a', 'list']).message).toBe('ml/policy.yaml (document 2): a list is not a Kubernetes object (expected a mapping with apiVersion, kind and metadata)');
  });
});

describe('size limits', () => {
  test('more than 10,000 rules in a policy is refused naming MAX_RULES_PER_POLICY', () => {
    const raw = set(designPolicy(), 'spec.egress', Array.from({ length: 10_000 }, () => ({ ports: [{ port: 443 }] })));
    // The DESIGN example's one deny rule is the 10,001st: the limit counts egress and deny together.
    const e = reject(raw);
    expect(e.field).toBe('spec');
    expect(e.problem).toMatch(/10001 rules in spec\.egress \+ spec\.deny; .* at most 10000 rules \(limit MAX_RULES_PER_POLICY\)/);
  });

  test('exactly 10,000 rules is accepted', () => {
    const raw = set(designPolicy(), 'spec.egress', Array.from({ length: 5_000 }, () => ({ ports: [{ port: 443 }] })));
    set(raw, 'spec.deny', Array.from({ length: 5_000 }, () => ({ ports: [{ port: 25 }] })));
    expect(validateObject(raw).ok).toBe(true);
  });

  test('more than 10,000 peers across a policy is refused naming MAX_PEERS_PER_POLICY', () => {
    const peers = Array.from({ length: 5_001 }, (_, i) => ({ ipBlock: { cidr: `10.${i >> 8}.${i & 255}.0/24` } }));
    const raw = set(designPolicy(), 'spec.egress', [{ to: peers }, { to: peers }]);
    set(raw, 'spec.deny', undefined);
    const e = reject(raw);
    expect(e.problem).toMatch(/10002 peers .* \(limit MAX_PEERS_PER_POLICY\)/);
  });

  test('an over-long string is refused naming the limit', () => {
    const e = reject(set(pod(), 'status.phase', 'x'.repeat(100)));
    expect(e.field).toBe('status.phase');
    expect(e.problem).toMatch(/100 characters; at most 64/);
  });

  test('annotations over 256 KiB are refused naming MAX_ANNOTATION_BYTES', () => {
    const e = reject(set(pod(), 'metadata.annotations', { big: 'x'.repeat(300 * 1024) }));
    expect(e.field).toBe('metadata.annotations');
    expect(e.problem).toMatch(/limit MAX_ANNOTATION_BYTES/);
  });
});

describe('IP and CIDR parsing', () => {
  test.each([
    ['10.0.0.1', 4],
    ['::', 6],
    ['::1', 6],
    ['fd00:10:244:2::20', 6],
    ['::ffff:10.0.0.1', 6],
    ['2001:db8:0:0:1:0:0:1', 6],
  ])('%s parses as IPv%i', (s, family) => {
    expect(parseIP(s)?.family).toBe(family);
  });

  test.each(['10.0.0', '10.0.0.1.2', '256.0.0.1', '01.0.0.1', '1:2:3:4:5:6:7:8:9', '1::2::3', 'fe80::1%eth0', '', ' 10.0.0.1'])(
    '%j is not an IP address',
    (s) => {
      expect(parseIP(s)).toBeUndefined();
    },
  );

  test('IPv6 "::" expands to the right number of zero groups', () => {
    expect(Array.from(parseIP('2001:db8::1')?.bytes ?? [])).toEqual([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  });

  test.each(['10.0.0.0/8', '0.0.0.0/0', '::/0', 'fd00::/8', '10.1.2.3/32'])('%s is a CIDR', (s) => {
    expect(parseCIDR(s)).toBeDefined();
  });

  test.each(['10.0.0.0/', '10.0.0.0/-1', '10.0.0.0/08', '10.0.0.0/+8', 'fd00::/129', '10.0.0.0'])('%j is not a CIDR', (s) => {
    expect(parseCIDR(s)).toBeUndefined();
  });
});

describe('kinds named like Object.prototype members', () => {
  test('are kinds weir does not read (ignored), not a crash', () => {
    for (const kind of ['valueOf', 'constructor', 'toString', 'hasOwnProperty', '__proto__', 'isPrototypeOf']) {
      for (const apiVersion of ['v1', 'networking.k8s.io/v1', 'weir.dev/v1alpha1']) {
        const r = validateObject({ apiVersion, kind, metadata: { name: 'x', namespace: 'y' } });
        expect(r, `${apiVersion} ${kind}`).toMatchObject({ ok: false, ignored: true, kind });
      }
    }
  });
});
