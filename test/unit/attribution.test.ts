// The cached attribution of violation events (src/agent/attribution.ts) is
// exactly what PolicyEngine.explain() says, on random clusters, policies,
// destinations and ports, asked in any order and repeatedly.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AttributionCache, ProcessNameCache, fastAddress } from '../../src/agent/attribution.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { addressBytes, bytesToAddress, type Family } from '../../src/policy/prefix.js';
import { ObjectStore } from '../../src/model/store.js';
import { parseObject } from '../helpers/kernel.js';
import { worldArb, type RawWorld } from '../helpers/random-world.js';

function buildWorld(raw: RawWorld): { store: ObjectStore } {
  const store = new ObjectStore();
  for (const o of [...raw.namespaces, ...raw.pods, ...raw.policies]) store.upsert(parseObject(o));
  return { store };
}

/** The destination as the kernel reports it: 16 bytes, an IPv4 address in the first 4. */
function kernelBytes(ip: string): { family: Family; bytes: Uint8Array } {
  const { family, bytes } = addressBytes(ip);
  const out = new Uint8Array(16);
  out.set(bytes);
  return { family, bytes: out };
}

const octet = fc.nat({ max: 255 });
const destination = fc.oneof(
  fc.tuple(octet, octet).map(([a, b]) => `10.0.${a % 2}.${b}`),
  fc.tuple(octet).map(([b]) => `192.0.2.${b}`),
  fc.constantFrom('203.0.113.9', '0.0.0.0', '255.255.255.255', '10.0.0.3', '10.0.0.4', '10.0.0.5', '10.0.0.255', '10.0.1.0'),
  fc.tuple(octet, octet, octet, octet).map((x) => x.join('.')),
);
const probe = fc.record({ dst: destination, proto: fc.constantFrom(6, 17, 132, 1), port: fc.oneof(fc.constantFrom(53, 79, 80, 81, 443, 7999, 8000, 8080, 8081, 9000, 9001), fc.nat({ max: 65535 })) });

describe('AttributionCache', () => {
  it('gives explain()\'s selectedBy and matches for every probe, cached or not', () => {
    let hits = 0;
    let compared = 0;
    fc.assert(
      fc.property(worldArb, fc.array(probe, { minLength: 10, maxLength: 40 }), (raw, probes) => {
        const { store } = buildWorld(raw);
        const engine = new PolicyEngine('node-1');
        const state = engine.compute(store);
        const cache = new AttributionCache((s, p, d, pr, po) => engine.explain(s, p, d, pr, po), { maxEntries: 7 });
        for (const dp of state.pods) {
          // Twice: the second round is answered from the cache where cells repeat.
          for (const pr of [...probes, ...probes]) {
            const port = pr.proto === 1 ? null : pr.port;
            const { family, bytes } = kernelBytes(pr.dst);
            const got = cache.attribution(state, dp, pr.dst, family, bytes, pr.proto, port);
            const want = engine.explain(state, dp, pr.dst, pr.proto, port);
            expect(got.selectedBy).toEqual(want.selectedBy);
            expect(got.matches).toEqual(want.matches);
            compared++;
          }
        }
        hits += cache.hits;
      }),
      { numRuns: 300 },
    );
    expect(compared).toBeGreaterThan(5000);
    expect(hits).toBeGreaterThan(compared / 4);
  });

  it('treats an IPv4-mapped IPv6 destination as the IPv4 address, as explain() does', () => {
    const { store } = buildWorld({
      namespaces: [{ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ns1' } }],
      pods: [{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p0', namespace: 'ns1', uid: '00000000-0000-4000-8000-000000000000' }, spec: { nodeName: 'node-1', containers: [{ name: 'c' }] }, status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: '10.0.0.1' }] } }],
      policies: [{ apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'ep0', namespace: 'ns1' }, spec: { podSelector: {}, mode: 'Enforce', egress: [], deny: [{ to: [{ ipBlock: { cidr: '198.18.0.0/15' } }] }] } }],
      podIPs: ['10.0.0.1'],
    });
    const engine = new PolicyEngine('node-1');
    const state = engine.compute(store);
    const dp = state.pods[0];
    if (!dp) throw new Error('no pod');
    const cache = new AttributionCache((s, p, d, pr, po) => engine.explain(s, p, d, pr, po));
    const mapped = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 1, 2]);
    const text = bytesToAddress(6, mapped);
    const a = cache.attribution(state, dp, text, 6, mapped, 6, 443);
    expect(a.matches.map((m) => m.rule)).toEqual(['EgressPolicy/ns1/ep0 deny[0]']);
    expect(engine.explain(state, dp, text, 6, 443).matches).toEqual(a.matches);
    // Every address of 198.18.0.0/15 is one cell: the next one is a hit.
    const other = kernelBytes('198.18.200.7');
    expect(cache.attribution(state, dp, '198.18.200.7', 4, other.bytes, 6, 443)).toBe(a);
    expect(cache.hits).toBe(1);
    // A new state starts over.
    const next = engine.compute(store);
    cache.attribution(next, dp, '198.18.200.7', 4, other.bytes, 6, 443);
    expect(cache.misses).toBe(2);
  });
});

describe('ProcessNameCache and fastAddress', () => {
  it('reads a process name once per TTL and again when the thread name changes (an exec)', () => {
    let t = 0;
    const reads: number[] = [];
    const c = new ProcessNameCache((pid) => (reads.push(pid), `p${pid}-${reads.length}`), 1000, 4096, () => t);
    expect(c.get(7, 'curl')).toBe('p7-1');
    expect(c.get(7, 'curl')).toBe('p7-1');
    expect(c.get(7, 'wget')).toBe('p7-2');
    t = 1000;
    expect(c.get(7, 'curl')).toBe('p7-3');
    expect(reads).toEqual([7, 7, 7]);
  });

  it('writes IPv4 addresses as ipaddr.js does', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (b) => {
        expect(fastAddress(4, b, bytesToAddress)).toBe(bytesToAddress(4, b));
        expect(fastAddress(6, b, bytesToAddress)).toBe(bytesToAddress(6, b));
      }),
    );
  });
});
