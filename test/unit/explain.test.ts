// weir explain: destination forms and the explanation of a verdict.
import { describe, expect, it } from 'vitest';
import { ObjectStore } from '../../src/model/store.js';
import { explain, formatExplanation, parseDestination, ExplainError } from '../../src/policy/explain.js';
import type { Pod } from '../../src/model/types.js';
import { parseObject } from '../helpers/kernel.js';

const store = new ObjectStore();
for (const o of [
  { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ml' } },
  { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'trainer', namespace: 'ml', uid: '11111111-1111-4111-8111-111111111111', labels: { d: 't' } }, spec: { containers: [{ name: 'c' }] }, status: { phase: 'Running', podIPs: [{ ip: '10.0.0.1' }] } },
  { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'fs', namespace: 'ml', uid: '11111111-1111-4111-8111-111111111112', labels: { app: 'fs' } }, spec: { containers: [{ name: 'c', ports: [{ name: 'api', containerPort: 8080 }, { name: 'dns', containerPort: 53, protocol: 'UDP' }] }] }, status: { phase: 'Running', podIPs: [{ ip: '10.0.0.2' }, { ip: 'fd00::2' }] } },
  { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'p', namespace: 'ml' }, spec: { podSelector: { matchLabels: { d: 't' } }, egress: [{ to: [{ podSelector: { matchLabels: { app: 'fs' } } }], ports: [{ port: 'api' }] }], deny: [{ to: [{ ipBlock: { cidr: '203.0.113.0/24' } }] }] } },
  { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'a', namespace: 'ml' }, spec: { podSelector: { matchLabels: { d: 't' } }, mode: 'Audit', deny: [{ to: [{ ipBlock: { cidr: '10.0.0.2/32' } }] }] } },
]) store.upsert(parseObject(o));
const pods = store.pods() as Pod[];

describe('parseDestination', () => {
  it('reads IPv4, IPv6, ICMP, pod and named-port destinations', () => {
    expect(parseDestination('203.0.113.1:443/TCP', pods)).toMatchObject({ ip: '203.0.113.1', port: 443, proto: 6 });
    expect(parseDestination('203.0.113.1:53/udp', pods)).toMatchObject({ port: 53, proto: 17 });
    expect(parseDestination('[2001:db8::1]:443/TCP', pods)).toMatchObject({ ip: '2001:db8::1', port: 443 });
    expect(parseDestination('2001:db8::1/ICMP', pods)).toMatchObject({ ip: '2001:db8::1', proto: 58, port: null });
    expect(parseDestination('10.0.0.9/ICMP', pods)).toMatchObject({ proto: 1, port: null });
    expect(parseDestination('ml/fs:api', pods)).toMatchObject({ ip: '10.0.0.2', port: 8080, proto: 6, pod: 'ml/fs' });
    expect(parseDestination('ml/fs:dns/UDP', pods)).toMatchObject({ port: 53, proto: 17 });
    expect(parseDestination('ml/fs:9000', pods)).toMatchObject({ port: 9000 });
  });

  it('refuses what it cannot read, naming the problem', () => {
    expect(() => parseDestination('203.0.113.1/TCP', pods)).toThrow(ExplainError);
    expect(() => parseDestination('not-an-ip:80', pods)).toThrow(/cannot read destination/);
    expect(() => parseDestination('ml/fs:nope', pods)).toThrow(/no container port named nope/);
    expect(() => parseDestination('ml/ghost:80', pods)).toThrow(/not found/);
    expect(() => parseDestination('1.2.3.4:80/GRE', pods)).toThrow(/unknown protocol/);
  });
});

describe('explain', () => {
  it('names the deny rule that drops', () => {
    const r = explain(store, 'ml/trainer', '203.0.113.7:443/TCP');
    expect(r).toMatchObject({ verdict: 'drop', reason: 'deny-rule' });
    expect(formatExplanation(r)).toContain('deny  EgressPolicy/ml/p deny[0] (Enforce)');
  });

  it('a named-port allow to a pod, with the audit policy reporting it', () => {
    const r = explain(store, 'ml/trainer', 'ml/fs:api');
    expect(r.verdict).toBe('audit');
    expect(r.reason).toBe('audit-deny-rule');
    expect(r.matches.map((m) => m.rule).sort()).toEqual(['EgressPolicy/ml/a deny[0]', 'EgressPolicy/ml/p egress[0]']);
  });

  it('default deny lists the selecting policies and no rule', () => {
    const r = explain(store, 'ml/trainer', '10.0.0.9:80/TCP');
    expect(r).toMatchObject({ verdict: 'drop', reason: 'default-deny', matches: [] });
    expect(r.selectedBy).toEqual(['EgressPolicy/ml/a', 'EgressPolicy/ml/p']);
  });

  it('a pod no policy selects is allowed as not isolated', () => {
    expect(explain(store, 'ml/fs', '203.0.113.7:443/TCP')).toMatchObject({ verdict: 'allow', reason: 'not-isolated', selectedBy: [] });
  });
});
