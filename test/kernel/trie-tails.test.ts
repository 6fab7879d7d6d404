// Kernel tests: path-compressed trie tails (weir_trie_tails). A prefix that
// parts from every other prefix is written as one tail instead of a chain of
// nodes; the datapath must judge every address under it, beside it and one
// bit away exactly as the policy engine does, a restarted agent must adopt
// the tails it finds and write nothing again, removed sets must free them,
// and a full tail map must refuse a set whole.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { IPPROTO, packet, skbContext, type PacketSpec } from '../helpers/packets.js';
import { cgroupIdOf } from '../../src/datapath/cgroups.js';
import type { PodBinding } from '../../src/datapath/state-writer.js';
import { decodeTrieTail, u32Key } from '../../src/datapath/abi.js';

let ctx: Buffer;
beforeAll(() => {
  ctx = skbContext(nonLoopbackIfindex());
});

function send(bed: KernelBed, pod: TestPod, spec: Partial<PacketSpec> & { dst: string }): number {
  const src = spec.dst.includes(':') ? 'fd00:244::1' : '10.244.0.1';
  const full: PacketSpec = { src, proto: IPPROTO.TCP, sport: 40000, dport: 443, ...spec };
  return inCgroup(pod.container(), () => bed.dp.testRun('weir_egress', { data: packet(full), ctx }).retval);
}

function policy(name: string, egress: unknown[]): unknown {
  return { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name, namespace: 't' }, spec: { podSelector: { matchLabels: { app: 't' } }, mode: 'Enforce', egress } };
}

/** Rules whose prefixes part from each other deep down, nested ones included. */
const RULES = [
  // IPv6: two /128s that share 15 bytes, a /64 with a /128 of other ports inside, a lone /127, a /56 alone.
  { to: [{ ipBlock: { cidr: '2001:db8:1:2:3:4:5:6/128' } }], ports: [{ port: 443 }] },
  { to: [{ ipBlock: { cidr: '2001:db8:1:2:3:4:5:7/128' } }], ports: [{ port: 8443 }] },
  { to: [{ ipBlock: { cidr: '2001:db8:a:b::/64' } }], ports: [{ port: 443 }] },
  { to: [{ ipBlock: { cidr: '2001:db8:a:b:c::1/128' } }], ports: [{ port: 9000 }] },
  { to: [{ ipBlock: { cidr: '2001:db8:77::100/127' } }] },
  { to: [{ ipBlock: { cidr: '2001:db8:5500::/56' } }], ports: [{ port: 443 }] },
  // IPv4: lone /32s in their own /16s, a /20, and a /32 inside an allowed /24.
  { to: [{ ipBlock: { cidr: '10.1.2.3/32' } }], ports: [{ port: 443 }] },
  { to: [{ ipBlock: { cidr: '10.9.200.7/32' } }] },
  { to: [{ ipBlock: { cidr: '10.50.16.0/20' } }], ports: [{ port: 443 }] },
  { to: [{ ipBlock: { cidr: '10.60.1.0/24' } }], ports: [{ port: 443 }] },
  { to: [{ ipBlock: { cidr: '10.60.1.9/32' } }], ports: [{ port: 9000 }] },
];

/** Addresses at, beside and one bit away from every rule's edges. */
const PROBES = [
  '2001:db8:1:2:3:4:5:6',
  '2001:db8:1:2:3:4:5:7',
  '2001:db8:1:2:3:4:5:4',
  '2001:db8:1:2:3:4:5:8',
  '2001:db8:1:2:3:4:4:6',
  '2001:db8:1:2:3:4:5:8006',
  '2001:db8:a:b::1',
  '2001:db8:a:b:ffff:ffff:ffff:ffff',
  '2001:db8:a:c::1',
  '2001:db8:a:b:c::1',
  '2001:db8:a:b:c::2',
  '2001:db8:77::100',
  '2001:db8:77::101',
  '2001:db8:77::102',
  '2001:db8:77::ff',
  '2001:db8:5500::1',
  '2001:db8:5500:ff:ffff::1',
  '2001:db8:5500:100::1',
  '2001:db8:54ff:ff00::1',
  '3001:db8:1:2:3:4:5:6',
  '10.1.2.3',
  '10.1.2.2',
  '10.1.2.4',
  '10.1.3.3',
  '138.1.2.3',
  '10.9.200.7',
  '10.9.200.6',
  '10.50.16.1',
  '10.50.31.255',
  '10.50.32.0',
  '10.50.15.255',
  '10.60.1.9',
  '10.60.1.8',
  '10.60.2.9',
  '203.0.113.10',
];

describe('trie tails in the kernel', () => {
  let bed: KernelBed;
  let pod: TestPod;

  beforeAll(async () => {
    bed = await KernelBed.create({ graceMs: 0 });
    pod = bed.addPod('t', 'p', { app: 't' }, ['10.244.0.1', 'fd00:244::1']);
    bed.add(policy('tails', RULES));
    expect(bed.sync().failedSets).toEqual([]);
  });
  afterAll(() => bed?.close());

  it('writes lone prefixes as tails, not node chains', () => {
    const u = bed.dp.writer.usage();
    // Tails: the /128 under the /64, the /127, the /56; 10.1.2.3, 10.9.200.7,
    // the /20, the /32 under 10.60.1.0/24. Not the /24 and /64 (they hold
    // another prefix) nor the two /128s that part only in their last byte
    // (both end in the same node).
    expect(u.weir_trie_tails?.used).toBe(7);
    // Without tails the two deep IPv6 /128s alone would need 15 nodes each below 2001:db8:1::.
    expect(u.weir_nodes?.used).toBeLessThan(30);
    // What is in the map is what the builder meant: the tails' prefixes are the rules' prefixes.
    const m = bed.dp.map('weir_trie_tails');
    const hits = new Set<string>();
    for (const k of m.keys()) {
      const t = decodeTrieTail(m.lookup(k) as Buffer);
      if (t.mask.every((b) => b === 0)) continue; // an unused slot of the array
      hits.add(Buffer.from(t.addr).toString('hex'));
    }
    expect(hits.size).toBe(7);
    expect(hits.has('20010db8007700000000000000000100')).toBe(true); // the /127
    expect(hits.has('20010db8000a000b000c000000000001')).toBe(true); // the /128 under the /64
    expect(hits.has('0a010203000000000000000000000000')).toBe(true);
    expect(hits.has('20010db8000100020003000400050006')).toBe(false); // parts only in its last byte
  });

  it('judges every address at, beside and one bit from each rule as the engine does, on every port', () => {
    const state = bed.engine.compute(bed.store);
    const dp = state.pods.find((p) => p.uid === pod.uid);
    if (!dp) throw new Error('the pod is not in the desired state');
    let allowed = 0;
    let checked = 0;
    for (const dst of PROBES) {
      for (const dport of [443, 8443, 9000, 80]) {
        const want = bed.engine.explain(state, dp, dst, IPPROTO.TCP, dport);
        const got = send(bed, pod, { dst, dport });
        expect(got, `${dst}:${dport} (engine: ${want.verdict})`).toBe(want.verdict === 'allow' ? 1 : 0);
        checked++;
        if (got === 1) allowed++;
      }
    }
    // The probes are not all one way.
    expect(allowed).toBeGreaterThan(15);
    expect(checked - allowed).toBeGreaterThan(60);
  });

  it('a restarted writer adopts the tails, reuses them by content and writes nothing again', () => {
    const before = bed.dp.writer.usage();
    const next = bed.restartedWriter();
    const adopted = next.adopt();
    expect(adopted.tails).toBe(before.weir_trie_tails?.used);
    expect(adopted.nodes).toBe(before.weir_nodes?.used);
    const state = bed.engine.compute(bed.store);
    const binding: PodBinding = { uid: pod.uid, namespace: 't', name: 'p', cgroupId: cgroupIdOf(pod.dir), setKey: state.pods[0]?.setKey ?? '', ips: ['10.244.0.1', 'fd00:244::1'] };
    const res = next.apply(state, [binding]);
    expect(res.failedSets).toEqual([]);
    expect(res.tailsWritten + res.nodesWritten + res.classesWritten).toBe(0);
    expect(res.reconciled?.weir_trie_tails).toEqual({ added: 0, removed: 0, rewritten: 0 });
    expect(next.usage().weir_trie_tails?.used).toBe(before.weir_trie_tails?.used);
    // Removing the policy frees every tail (grace 0).
    bed.store.delete('EgressPolicy', 't', 'tails');
    next.apply(bed.engine.compute(bed.store), [{ ...binding, setKey: bed.engine.compute(bed.store).pods[0]?.setKey ?? '' }]);
    expect(next.usage().weir_trie_tails?.used).toBe(0);
  });
});

describe('weir_trie_tails full', () => {
  it('refuses a set whole: nothing of it written, its pods fail closed, and it is written once there is room', async () => {
    const bed = await KernelBed.create({ graceMs: 0, capacities: { tails: 4 } });
    try {
      const pod = bed.addPod('t', 'p', { app: 't' }, ['10.244.0.1']);
      // Six /32s, each alone in its own /8: six tails, the map holds 3 (index 0 unused).
      const six = Array.from({ length: 6 }, (_, i) => ({ to: [{ ipBlock: { cidr: `${20 + i}.1.2.3/32` } }] }));
      bed.add(policy('big', six));
      const res = bed.sync();
      expect(res.failedSets.map((f) => f.error)).toEqual([expect.stringMatching(/^weir_trie_tails is full \(4 entries\); raise its capacity/)]);
      expect(bed.dp.writer.usage().weir_trie_tails?.used).toBe(0);
      expect(bed.dp.writer.usage().weir_nodes?.used).toBe(0);
      expect(send(bed, pod, { dst: '20.1.2.3' })).toBe(0);
      // Three of them fit.
      bed.add(policy('big', six.slice(0, 3)));
      expect(bed.sync().failedSets).toEqual([]);
      expect(bed.dp.writer.usage().weir_trie_tails?.used).toBe(3);
      expect(send(bed, pod, { dst: '20.1.2.3' })).toBe(1);
      expect(send(bed, pod, { dst: '22.1.2.3' })).toBe(1);
      expect(send(bed, pod, { dst: '22.1.2.2' })).toBe(0);
      expect(send(bed, pod, { dst: '23.1.2.3' })).toBe(0);
    } finally {
      bed.close();
    }
  });
});
