// Writes what the agent will write for DNS-aware egress (the StateWriter
// side is not built yet): a set's fqdn keys (DesiredSet.fqdn, hashed with
// the node's secret) with their port classes, the set's WEIR_SET_F_FQDN
// flag, and the trusted resolvers. Also reads back what the kernel learned.
import {
  CONST,
  decodeFqdnLearnedKey,
  decodeFqdnLearnedValue,
  decodeSetValue,
  encodeDnsKey,
  encodeDnsResolverKey,
  encodeDnsResolverValue,
  encodeFqdnKeyValue,
  encodePortClass,
  encodeSetValue,
  u32Key,
  type FqdnSlot,
} from '../../src/datapath/abi.js';
import type { Datapath } from '../../src/datapath/datapath.js';
import { nameHash } from '../../src/policy/fqdn-hash.js';
import type { FqdnKey } from '../../src/policy/fqdn.js';
import { addressBytes, bytesToAddress } from '../../src/policy/prefix.js';

/**
 * Port classes for fqdn keys are taken from the top of weir_classes
 * downwards, far from the writer's allocator (which starts at 1).
 */
export class FqdnWriter {
  private nextClass: number;

  constructor(private readonly dp: Datapath) {
    this.nextClass = dp.capacities().classes - 1;
  }

  /** The weir_fqdn_keys key of a compiled key of set setId. */
  keyOf(setId: number, k: FqdnKey): Buffer {
    const secret = this.dp.dnsSecret();
    return k.matcher.kind === 'name'
      ? encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_EXACT, hash: nameHash(secret, k.matcher.name) })
      : encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_WILDCARD, hash: nameHash(secret, k.matcher.suffix) });
  }

  /** Writes the keys (each with a class of its own), then sets WEIR_SET_F_FQDN on the set. */
  writeSet(setId: number, keys: readonly FqdnKey[]): void {
    for (const k of keys) {
      const cls = this.nextClass--;
      this.dp.map('weir_classes').update(u32Key(cls), encodePortClass(k.cls));
      this.dp.map('weir_fqdn_keys').update(this.keyOf(setId, k), encodeFqdnKeyValue(cls));
    }
    this.setFlags(setId, CONST.WEIR_SET_F_FQDN, 0);
  }

  setFlags(setId: number, add: number, remove: number): void {
    const sets = this.dp.map('weir_sets');
    const raw = sets.lookup(u32Key(setId));
    if (!raw) throw new Error(`set ${setId} is not written`);
    const v = decodeSetValue(raw);
    sets.update(u32Key(setId), encodeSetValue({ ...v, flags: (v.flags | add) & ~remove }));
  }

  addResolver(ip: string, port = 53): void {
    const a = addressBytes(ip);
    this.dp.map('weir_dns_resolvers').update(encodeDnsResolverKey({ family: a.family === 4 ? 2 : 10, port, addr: a.bytes }), encodeDnsResolverValue());
  }
}

export interface Learned {
  addr: string;
  slots: FqdnSlot[];
}

/** What an endpoint learned (weir_fqdn_learned), live slots only, sorted by address. */
export function learnedOf(dp: Datapath, endpointId: number): Learned[] {
  const m = dp.map('weir_fqdn_learned');
  const d = m.dump();
  const ks = m.keySize;
  const vs = m.valueBufferSize;
  const out: Learned[] = [];
  for (let i = 0; i < d.count; i++) {
    const k = decodeFqdnLearnedKey(d.keys.subarray(i * ks, (i + 1) * ks));
    if (k.endpointId !== endpointId) continue;
    const slots = decodeFqdnLearnedValue(d.values.subarray(i * vs, (i + 1) * vs)).filter((s) => s.kind !== 0);
    out.push({ addr: bytesToAddress(k.family === 2 ? 4 : 6, k.addr), slots });
  }
  return out.sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
}
