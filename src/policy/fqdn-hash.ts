// The keyed name hash of bpf/lib/dns.h, in TypeScript: the agent writes the
// FQDN keys of a set (exact names and wildcard suffixes) under the same hash
// the datapath computes from DNS messages. test/kernel/dns-parse.test.ts
// checks both against each other on real parser runs.
//
//   label(l)  = fmix64(FNV-1a-64 over [len(l), lower(l)...], seeded with secret)
//   S[n]      = secret ^ FOLD_K
//   S[k]      = fmix64((S[k+1] ^ label(l[k])) * FNV_PRIME)     (k = n-1 .. 0)
//   hash(name) = S[0]; a suffix's hash is the hash of the suffix as a name,
//   so the key of `*.example.com` is hash("example.com") with kind wildcard.
//
// Not a cryptographic MAC: the secret keeps a resolver operator from
// choosing names that collide with allowed ones without knowing it.
const MASK = (1n << 64n) - 1n;
const FNV_OFFSET = 0xcbf29ce484222325n;
const FNV_PRIME = 0x00000100000001b3n;
const FOLD_K = 0x9e3779b97f4a7c15n;

function fmix64(x: bigint): bigint {
  let h = x & MASK;
  h ^= h >> 33n;
  h = (h * 0xff51afd7ed558ccdn) & MASK;
  h ^= h >> 33n;
  h = (h * 0xc4ceb9fe1a85ec53n) & MASK;
  h ^= h >> 33n;
  return h;
}

/** The hash of one label (its raw bytes; ASCII upper case is folded). */
export function labelHash(secret: bigint, label: Uint8Array): bigint {
  let h = (secret ^ FNV_OFFSET) & MASK;
  h ^= BigInt(label.length);
  h = (h * FNV_PRIME) & MASK;
  for (const b of label) {
    const c = b >= 0x41 && b <= 0x5a ? b + 0x20 : b;
    h ^= BigInt(c);
    h = (h * FNV_PRIME) & MASK;
  }
  return fmix64(h);
}

/** S[k] for every k of a name given as labels: out[0] is the name's hash. */
export function suffixHashes(secret: bigint, labels: readonly Uint8Array[]): bigint[] {
  const out = new Array<bigint>(labels.length);
  let s = (secret ^ FOLD_K) & MASK;
  for (let k = labels.length - 1; k >= 0; k--) {
    s = fmix64(((s ^ labelHash(secret, labels[k] as Uint8Array)) * FNV_PRIME) & MASK);
    out[k] = s;
  }
  return out;
}

/** Labels of a dotted name (presentation form without escapes; a trailing dot is ignored). */
export function nameLabels(name: string): Uint8Array[] {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  if (n === '') return [];
  return n.split('.').map((l) => Buffer.from(l, 'latin1'));
}

/** The hash of a dotted name. */
export function nameHash(secret: bigint, name: string): bigint {
  const h = suffixHashes(secret, nameLabels(name));
  if (h.length === 0) throw new Error('the root name has no hash');
  return h[0] as bigint;
}
