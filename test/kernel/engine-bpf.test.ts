// The random clusters of the engine-vs-reference property, run through the
// real BPF egress program: the kernel's verdict (from its exact counters)
// equals the engine's, which equals the reference evaluator's.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { packet, skbContext } from '../helpers/packets.js';
import { probeArb, worldArb } from '../helpers/random-world.js';
import { referenceVerdict, type RefWorld } from '../helpers/reference.js';
import type { ClusterEgressPolicy, EgressPolicy, Namespace, NetworkPolicy, Pod } from '../../src/model/types.js';

let bed: KernelBed;
let ctx: Buffer;

beforeAll(async () => {
  bed = await KernelBed.create({ graceMs: 0, eventIntervalMs: 1 });
  ctx = skbContext(nonLoopbackIfindex());
});
afterAll(() => bed?.close());

function kernelVerdict(pod: TestPod, src: string, dst: string, proto: number, port: number): string {
  const ep = bed.endpointOf(pod);
  const before = bed.dp.counters(ep).packets;
  const data = packet({ src, dst, proto, sport: 40000, dport: port, icmpType: 8 });
  const ret = inCgroup(pod.container(), () => bed.dp.testRun('weir_egress', { data, ctx }).retval);
  const after = bed.dp.counters(ep).packets;
  const changed = Object.keys(after).filter((v) => (after[v]?.packets ?? 0n) !== (before[v]?.packets ?? 0n));
  if (changed.length !== 1) throw new Error(`expected one counter to move, got ${changed.join(',') || 'none'}`);
  const v = changed[0] as string;
  if ((v === 'drop') !== (ret === 0)) throw new Error(`retval ${ret} disagrees with counter ${v}`);
  return v;
}

describe('BPF datapath against the engine and the reference', () => {
  it('random clusters give the same verdicts in the kernel', () => {
    let compared = 0;
    fc.assert(
      fc.property(worldArb, fc.array(probeArb, { minLength: 4, maxLength: 10 }), (raw, probes) => {
        bed.clearModel();
        for (const o of [...raw.namespaces, ...raw.policies]) bed.add(o);
        const pods = raw.pods.map((p) => bed.addPodObject(p));
        const res = bed.sync();
        expect(res.failedSets).toEqual([]);
        const ref: RefWorld = {
          namespaces: bed.store.list('Namespace') as Namespace[],
          pods: bed.store.list('Pod') as Pod[],
          networkPolicies: bed.store.list('NetworkPolicy') as NetworkPolicy[],
          egressPolicies: bed.store.list('EgressPolicy') as EgressPolicy[],
          clusterEgressPolicies: bed.store.list('ClusterEgressPolicy') as ClusterEgressPolicy[],
        };
        for (const pr of probes) {
          const i = pr.src % pods.length;
          const pod = pods[i] as TestPod;
          const srcObj = ref.pods.find((p) => p.metadata.uid === pod.uid) as Pod;
          const ip = 'pod' in pr.dst ? (raw.podIPs[pr.dst.pod % raw.podIPs.length] as string) : pr.dst.ip;
          const want = referenceVerdict(ref, srcObj, ip, pr.proto, pr.proto === 1 ? null : pr.port);
          const got = kernelVerdict(pod, raw.podIPs[i] as string, ip, pr.proto, pr.port);
          if (got !== want) {
            throw new Error(`${pod.namespace}/${pod.name} -> ${ip}:${pr.port}/${pr.proto}: kernel ${got}, reference ${want}\n${JSON.stringify(raw.policies)}`);
          }
          compared++;
        }
      }),
      { numRuns: 500 },
    );
    expect(compared).toBeGreaterThan(2000);
  });
});
