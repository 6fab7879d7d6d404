// Property: the policy engine's verdict (compiled, flattened, looked up the
// way the datapath does) equals a deliberately simple reference evaluator on
// thousands of random clusters, policies and destinations.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ObjectStore } from '../../src/model/store.js';
import type { ClusterEgressPolicy, EgressPolicy, Namespace, NetworkPolicy, Pod } from '../../src/model/types.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { parseObject } from '../helpers/kernel.js';
import { referenceVerdict, type RefWorld } from '../helpers/reference.js';
import { probeArb, worldArb, type RawWorld } from '../helpers/random-world.js';

export function buildWorld(raw: RawWorld): { store: ObjectStore; ref: RefWorld } {
  const store = new ObjectStore();
  for (const o of [...raw.namespaces, ...raw.pods, ...raw.policies]) store.upsert(parseObject(o));
  const ref: RefWorld = {
    namespaces: store.list('Namespace') as Namespace[],
    pods: store.list('Pod') as Pod[],
    networkPolicies: store.list('NetworkPolicy') as NetworkPolicy[],
    egressPolicies: store.list('EgressPolicy') as EgressPolicy[],
    clusterEgressPolicies: store.list('ClusterEgressPolicy') as ClusterEgressPolicy[],
  };
  return { store, ref };
}

describe('engine against the reference evaluator', () => {
  it('gives the same verdict on thousands of random clusters, policies and destinations', () => {
    let compared = 0;
    fc.assert(
      fc.property(worldArb, fc.array(probeArb, { minLength: 5, maxLength: 15 }), (raw, probes) => {
        const { store, ref } = buildWorld(raw);
        const engine = new PolicyEngine('node-1');
        const state = engine.compute(store);
        for (const pr of probes) {
          const src = ref.pods[pr.src % ref.pods.length];
          if (!src) continue;
          const dp = state.pods.find((p) => p.uid === src.metadata.uid);
          if (!dp) throw new Error('source pod not in state');
          const ip = 'pod' in pr.dst ? (raw.podIPs[pr.dst.pod % raw.podIPs.length] as string) : pr.dst.ip;
          const port = pr.proto === 1 ? null : pr.port;
          const want = referenceVerdict(ref, src, ip, pr.proto, port);
          const got = engine.explain(state, dp, ip, pr.proto, port).verdict;
          if (got !== want) {
            throw new Error(
              `${src.metadata.namespace}/${src.metadata.name} -> ${ip}:${port ?? '-'}/${pr.proto}: engine ${got}, reference ${want}\n` +
                JSON.stringify(raw.policies, null, 1),
            );
          }
          compared++;
        }
      }),
      { numRuns: 1500 },
    );
    expect(compared).toBeGreaterThan(5000);
  });
});
