// Property: after any sequence of model changes, the incremental engine
// (cached sets, invalidated by the changes) computes exactly what a fresh
// engine computes from the same model.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ObjectStore, type StoreChange } from '../../src/model/store.js';
import { PolicyEngine, type DesiredState } from '../../src/policy/engine.js';
import { parseObject } from '../helpers/kernel.js';
import { worldArb } from '../helpers/random-world.js';

function fingerprint(st: DesiredState): string[] {
  return st.pods
    .map((p) => {
      const set = st.sets.get(p.setKey);
      const flat = (set?.v4 ?? []).map((f) => `${Buffer.from(f.prefix.bytes).toString('hex')}/${f.prefix.len}=${f.key}`).join(',');
      return `${p.uid}|${p.setKey}|${set?.flags}|${flat}|${set?.error ?? ''}`;
    })
    .sort();
}

type Step = { op: 'upsert'; obj: unknown } | { op: 'deletePod'; i: number } | { op: 'deletePolicy'; i: number };

describe('incremental engine', () => {
  it('equals a fresh compute after random changes to pods, namespaces and policies', () => {
    fc.assert(
      fc.property(worldArb, worldArb, fc.array(fc.tuple(fc.nat(), fc.nat(), fc.constantFrom(0, 1, 2, 3, 4)), { minLength: 1, maxLength: 12 }), (w, alt, picks) => {
        const store = new ObjectStore();
        for (const o of [...w.namespaces, ...w.pods, ...w.policies]) store.upsert(parseObject(o));
        const changes: StoreChange[] = [];
        store.onChange((c) => changes.push(c));
        const inc = new PolicyEngine('node-1');
        inc.compute(store);
        for (const [a, b, kind] of picks) {
          const steps: Step[] = [];
          if (kind === 0 && alt.pods.length > 0) {
            // A pod of the other world replaces one of ours: new labels, ports, namespace.
            const src = alt.pods[a % alt.pods.length] as { metadata: Record<string, unknown>; status: unknown };
            const mine = w.pods[b % w.pods.length] as { metadata: { name: string; uid: string }; status: unknown };
            steps.push({ op: 'upsert', obj: { ...src, metadata: { ...src.metadata, name: mine.metadata.name, uid: mine.metadata.uid }, status: mine.status } });
          } else if (kind === 1) steps.push({ op: 'deletePod', i: a });
          else if (kind === 2 && alt.policies.length > 0) steps.push({ op: 'upsert', obj: alt.policies[a % alt.policies.length] });
          else if (kind === 3) steps.push({ op: 'deletePolicy', i: a });
          else steps.push({ op: 'upsert', obj: alt.namespaces[a % alt.namespaces.length] });
          for (const s of steps) {
            if (s.op === 'upsert') store.upsert(parseObject(s.obj));
            else if (s.op === 'deletePod') {
              const pods = store.pods();
              const p = pods[s.i % Math.max(1, pods.length)];
              if (p) store.delete('Pod', p.metadata.namespace, p.metadata.name);
            } else {
              const ps = [...store.networkPolicies(), ...store.egressPolicies(), ...store.clusterEgressPolicies()];
              const p = ps[s.i % Math.max(1, ps.length)];
              if (p) store.delete(p.kind, p.metadata.namespace, p.metadata.name);
            }
          }
          const got = fingerprint(inc.compute(store, changes.splice(0)));
          const want = fingerprint(new PolicyEngine('node-1').compute(store));
          expect(got).toEqual(want);
        }
      }),
      { numRuns: 400 },
    );
  });
});
