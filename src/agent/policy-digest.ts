// The digest of a compiled policy, for the audit log's policy-change records:
// SHA-256 over what the datapath enforces — every policy set (its flags and
// flattened destinations with their rule classes) and which pod uses which
// set. Two states with the same digest program the same verdicts. The engine
// hands back the same DesiredSet object for an unchanged set, so each set is
// hashed once in its life, and an apply costs one hash per changed set plus
// one over the (set digest, pod) list.
import { createHash } from 'node:crypto';
import type { DesiredSet, DesiredState } from '../policy/engine.js';
import type { FlatPrefix } from '../policy/compile.js';

const setDigests = new WeakMap<DesiredSet, string>();

function setDigest(set: DesiredSet): string {
  const known = setDigests.get(set);
  if (known !== undefined) return known;
  const h = createHash('sha256');
  h.update(`flags=${set.flags}\n`);
  const part = (family: string, flat: FlatPrefix[]): void => {
    for (const f of flat) h.update(`${family} ${Buffer.from(f.prefix.bytes).toString('hex')}/${f.prefix.len} ${f.key}\n`);
  };
  part('4', set.v4);
  part('6', set.v6);
  const d = h.digest('hex');
  setDigests.set(set, d);
  return d;
}

export function policyDigest(state: DesiredState): string {
  const lines: string[] = [];
  for (const [key, set] of state.sets) lines.push(`set ${JSON.stringify(key)} ${setDigest(set)}`);
  for (const p of state.pods) lines.push(`pod ${p.uid} ${JSON.stringify(p.setKey)}`);
  lines.sort();
  return `sha256:${createHash('sha256').update(lines.join('\n')).digest('hex')}`;
}
