// What the kernel tests write by hand for DNS-aware egress: the trusted
// resolvers (when the test's model has no DNS Service) and set flags; the
// weir_fqdn_keys key of a compiled key (the StateWriter writes the keys
// themselves). Also reads back what the kernel learned.
import {
  CONST,
  decodeFqdnLearnedKey,
  decodeFqdnLearnedValue,
  decodeSetValue,
  encodeDnsKey,
  encodeDnsResolverKey,
  encodeDnsResolverValue,
  encodeSetValue,
  u32Key,
  type FqdnSlot,
} from '../../src/datapath/abi.js';
import type { Datapath } from '../../src/datapath/datapath.js';
import { nameHash } from '../../src/policy/fqdn-hash.js';
import type { FqdnKey } from '../../src/policy/fqdn.js';
import { addressBytes, bytesToAddress } from '../../src/policy/prefix.js';

export class FqdnWriter {
  constructor(private readonly dp: Datapath) {}

  /** The weir_fqdn_keys key of a compiled key of set setId. */
  keyOf(setId: number, k: FqdnKey): Buffer {
    const secret = this.dp.dnsSecret();
    return k.matcher.kind === 'name'
      ? encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_EXACT, hash: nameHash(secret, k.matcher.name) })
      : encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_WILDCARD, hash: nameHash(secret, k.matcher.suffix) });
  }

  setFlags(setId: number, add: number, remove: number): void {
    const sets = this.dp.map('weir_sets');
    const raw = sets.lookup(u32Key(setId));
    if (!raw) throw new Error(`set ${setId} is not written`);
    const v = decodeSetValue(raw);
    sets.update(u32Key(setId), encodeSetValue({ ...v, flags: (v.flags | add) & ~remove }));
  }

  /** A trusted resolver the StateWriter does not know of (it never removes it). */
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
