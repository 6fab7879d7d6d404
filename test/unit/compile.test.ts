import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  BIT_E_ALLOW,
  BIT_E_DENY,
  classBits,
  flatten,
  lookupFlat,
  mergeClass,
  type Entry,
} from '../../src/policy/compile.js';
import type { Policy, Rule } from '../../src/policy/normalize.js';
import { addressBytes, parsePrefix, prefixContains, hostPrefix, type Prefix } from '../../src/policy/prefix.js';
import { buildTrie, encodeNode, walkEncoded, type EncodedTail } from '../../src/datapath/trie.js';
import { decodeTrieTail, encodeTrieTail } from '../../src/datapath/abi.js';
import { createHash } from 'node:crypto';

const policy: Policy = {
  id: 'EgressPolicy/t/p',
  kind: 'EgressPolicy',
  namespace: 't',
  name: 'p',
  mode: 'Enforce',
  isolatesEgress: true,
  selects: () => true,
  rules: [],
};
const rule: Rule = { kind: 'allow', index: 0, peers: null, ports: null };

function entry(cidr: string, bits: number, ports: Entry['ports'], except: string[] = []): Entry {
  return { prefix: parsePrefix(cidr), except: except.map(parsePrefix), bits, ports, policy, rule };
}

/** The obvious evaluation: OR the bits of every entry that covers the address and port. */
function directBits(es: Entry[], ip: string, proto: number, port: number | null): number {
  const hp = hostPrefix(ip);
  let bits = 0;
  for (const e of es) {
    if (!prefixContains(e.prefix, hp) || e.except.some((x) => prefixContains(x, hp))) continue;
    if (e.ports === null) bits |= e.bits;
    else if (port !== null && e.ports.some((r) => r.proto === proto && r.lo <= port && port <= r.hi)) bits |= e.bits;
  }
  return bits;
}

function trieBits(es: Entry[], ip: string, proto: number, port: number | null, tails = true): number {
  const { family, bytes } = addressBytes(ip);
  const flat = flatten(es, family);
  const ids = new Map<string, number>();
  const classes = new Map<number, ReturnType<typeof mergeClass>>();
  for (const f of flat) {
    if (!ids.has(f.key)) {
      ids.set(f.key, ids.size + 1);
      classes.set(ids.size, f.cls);
    }
  }
  const t = buildTrie(
    flat.map((f) => ({ prefix: f.prefix, classId: ids.get(f.key) ?? 0 })),
    { tails },
  );
  if (!tails) expect(t.tails).toEqual([]);
  // Through the encoded form, as the datapath reads it: tails and nodes have their own indices.
  const index = new Map<string, number>();
  const tailStore = new Map<number, EncodedTail>();
  for (const x of t.tails) {
    index.set(x.key, tailStore.size + 1);
    const b = encodeTrieTail({ addr: x.prefix.bytes, len: x.prefix.len, hit: x.hit, miss: x.miss });
    tailStore.set(tailStore.size + 1, decodeTrieTail(b));
  }
  const store = new Map<number, Uint32Array>();
  for (const n of t.nodes) {
    index.set(n.key, store.size + 1);
    store.set(store.size + 1, encodeNode(n, (k) => index.get(k) ?? 0));
  }
  const root = t.rootKey ? (index.get(t.rootKey) ?? 0) : 0;
  const cls = walkEncoded(root, bytes, (i) => store.get(i), (i) => tailStore.get(i));
  const c = classes.get(cls);
  return c ? classBits(c, proto, port) : 0;
}

describe('mergeClass', () => {
  it('merges overlapping port ranges into disjoint ranges with OR-ed bits', () => {
    const c = mergeClass([
      entry('10.0.0.0/8', BIT_E_ALLOW, [{ proto: 6, lo: 80, hi: 90 }]),
      entry('10.0.0.0/8', BIT_E_DENY, [{ proto: 6, lo: 85, hi: 100 }]),
    ]);
    expect(c.anyBits).toBe(0);
    expect(c.ranges).toEqual([
      { proto: 6, lo: 80, hi: 84, bits: BIT_E_ALLOW },
      { proto: 6, lo: 85, hi: 90, bits: BIT_E_ALLOW | BIT_E_DENY },
      { proto: 6, lo: 91, hi: 100, bits: BIT_E_DENY },
    ]);
  });

  it('drops port ranges that add nothing to the port-less bits', () => {
    const c = mergeClass([entry('0.0.0.0/0', BIT_E_ALLOW, null), entry('0.0.0.0/0', BIT_E_ALLOW, [{ proto: 17, lo: 53, hi: 53 }])]);
    expect(c).toEqual({ anyBits: BIT_E_ALLOW, ranges: [] });
  });
});

describe('flatten + trie', () => {
  it('an except carves a hole that a longer allow inside it can refill', () => {
    const es = [
      entry('10.0.0.0/8', BIT_E_ALLOW, null, ['10.20.0.0/16']),
      entry('10.20.9.0/24', BIT_E_ALLOW, [{ proto: 6, lo: 443, hi: 443 }]),
    ];
    expect(trieBits(es, '10.1.2.3', 6, 1)).toBe(BIT_E_ALLOW);
    expect(trieBits(es, '10.20.1.1', 6, 443)).toBe(0);
    expect(trieBits(es, '10.20.9.7', 6, 443)).toBe(BIT_E_ALLOW);
    expect(trieBits(es, '10.20.9.7', 6, 80)).toBe(0);
    expect(trieBits(es, '11.0.0.1', 6, 443)).toBe(0);
  });

  it('IPv6 prefixes of every length resolve like the direct evaluation', () => {
    const es = [
      entry('2001:db8::/32', BIT_E_ALLOW, null, ['2001:db8:0:1::/64']),
      entry('2001:db8:0:1::5/128', BIT_E_DENY, null),
      entry('::/0', BIT_E_DENY, [{ proto: 17, lo: 53, hi: 53 }]),
    ];
    for (const ip of ['2001:db8::1', '2001:db8:0:1::1', '2001:db8:0:1::5', 'fd00::1']) {
      for (const port of [53, 80]) expect(trieBits(es, ip, 17, port), `${ip}:${port}`).toBe(directBits(es, ip, 17, port));
    }
  });

  it('property: trie lookup equals the direct evaluation for random IPv4 rules', () => {
    const octet = fc.integer({ min: 0, max: 3 }); // small space so rules overlap
    const ipArb = fc.tuple(fc.constantFrom(10, 11), octet, octet, octet).map((p) => p.join('.'));
    const prefixArb = fc.tuple(ipArb, fc.integer({ min: 0, max: 32 })).map(([ip, len]) => {
      const p: Prefix = parsePrefix(`${ip}/${len}`);
      return p;
    });
    const portsArb = fc.option(
      fc.array(
        fc.tuple(fc.constantFrom(6, 17, 132), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 0, max: 10 })).map(([proto, lo, w]) => ({ proto, lo, hi: lo + w })),
        { minLength: 1, maxLength: 3 },
      ),
      { nil: null },
    );
    const entryArb = fc.tuple(prefixArb, fc.constantFrom(1, 2, 4, 8), portsArb, fc.array(fc.integer({ min: 1, max: 8 }), { maxLength: 2 })).map(
      ([prefix, bits, ports, exceptExtra]) => {
        // Excepts strictly inside the CIDR, as validation guarantees.
        const except = exceptExtra
          .map((extra) => Math.min(32, prefix.len + extra))
          .filter((len) => len > prefix.len)
          .map((len) => ({ family: 4 as const, bytes: Uint8Array.from(prefix.bytes), len }));
        const e: Entry = { prefix, except, bits, ports, policy, rule };
        return e;
      },
    );
    fc.assert(
      fc.property(fc.array(entryArb, { minLength: 1, maxLength: 12 }), ipArb, fc.constantFrom(6, 17, 132, 1), fc.integer({ min: 0, max: 55 }), (es, ip, proto, port) => {
        const p = proto === 1 ? null : port;
        const want = directBits(es, ip, proto, p);
        expect(trieBits(es, ip, proto, p)).toBe(want);
        expect(trieBits(es, ip, proto, p, false)).toBe(want);
      }),
      { numRuns: 2000 },
    );
  });

  it('property: with tails, random IPv6 rules of every length resolve like the direct evaluation', () => {
    // Addresses that share long runs of bytes, so prefixes part at every depth.
    const word = fc.constantFrom(0, 1, 0xfff0, 0x8000); // never ::ffff:a.b.c.d (parsed as IPv4)
    const ipArb = fc.array(word, { minLength: 8, maxLength: 8 }).map((ws) => ws.map((w) => w.toString(16)).join(':'));
    const entryArb = fc.tuple(ipArb, fc.integer({ min: 0, max: 128 }), fc.constantFrom(1, 2, 4, 8), fc.integer({ min: 0, max: 24 })).map(([ip, len, bits, extra]) => {
      const prefix = parsePrefix(`${ip}/${len}`);
      const except = extra > 0 && len + extra <= 128 ? [{ family: 6 as const, bytes: Uint8Array.from(prefix.bytes), len: len + extra }] : [];
      const e: Entry = { prefix, except, bits, ports: null, policy, rule };
      return e;
    });
    fc.assert(
      fc.property(fc.array(entryArb, { minLength: 1, maxLength: 10 }), ipArb, (es, ip) => {
        const want = directBits(es, ip, 6, 80);
        expect(trieBits(es, ip, 6, 80)).toBe(want);
        expect(trieBits(es, ip, 6, 80, false)).toBe(want);
      }),
      { numRuns: 2000 },
    );
  });

  it('a prefix that parts from every other one is a tail, not a chain of nodes', () => {
    // 1,000 random /128s under 2001:db8::/32: without tails each needs its own
    // nodes down to byte 15; with tails only the bytes where they part.
    const prefixes = Array.from({ length: 1000 }, (_, i) => {
      const bytes = new Uint8Array(16);
      bytes.set(createHash('sha256').update(String(i)).digest().subarray(0, 16));
      bytes.set([0x20, 0x01, 0x0d, 0xb8]);
      return { prefix: { family: 6 as const, bytes, len: 128 }, classId: (i % 7) + 1 };
    });
    const sorted = [...prefixes].sort((a, b) => Buffer.compare(Buffer.from(a.prefix.bytes), Buffer.from(b.prefix.bytes)));
    const plain = buildTrie(sorted, { tails: false });
    const compressed = buildTrie(sorted);
    expect(plain.tails).toHaveLength(0);
    expect(plain.nodes.length).toBeGreaterThan(1000 * 9);
    expect(compressed.tails).toHaveLength(1000);
    // Root (byte 0) to byte 4 is one chain; byte 4 parts 1,000 prefixes into at most 256 groups.
    expect(compressed.nodes.length).toBeLessThan(4 + 1 + 256);
    for (const t of compressed.tails) expect(t.prefix.len).toBe(128);
  });

  it('identical subtrees are stored once (hash-consing)', () => {
    const es = [entry('10.1.2.3/32', BIT_E_ALLOW, null), entry('10.1.3.3/32', BIT_E_ALLOW, null)];
    const flat = flatten(es, 4);
    const t = buildTrie(
      flat.map((f) => ({ prefix: f.prefix, classId: 1 })),
      { tails: false },
    );
    // root, 10., 10.1., and one shared last-level node for both /24s.
    expect(t.nodes.length).toBe(4);
  });

  it('lookupFlat mirrors the trie for the explainer', () => {
    const es = [entry('10.0.0.0/8', BIT_E_ALLOW, null, ['10.9.0.0/16'])];
    const flat = flatten(es, 4);
    expect(lookupFlat(flat, 4, addressBytes('10.1.1.1').bytes).anyBits).toBe(BIT_E_ALLOW);
    expect(lookupFlat(flat, 4, addressBytes('10.9.1.1').bytes).anyBits).toBe(0);
  });
});

describe('addressBytes: the dotted-quad fast path agrees with ipaddr.js', () => {
  it('on canonical, odd and invalid IPv4 texts', async () => {
    const ipaddr = (await import('ipaddr.js')).default;
    const texts = ['0.0.0.0', '255.255.255.255', '10.0.0.1', '1.2.3.4', '192.168.001.1', '010.0.0.1', '10.0.0', '10.0.0.256', '10..0.1', '.10.0.0.1', '10.0.0.1.', '1.2.3.4.5', '0x0a.0.0.1', ' 10.0.0.1', '10.0.0.01', '00.0.0.0', '4294967295', '127.1', '::ffff:10.0.0.1', '1e1.0.0.1'];
    for (let i = 0; i < 2000; i++) texts.push([0, 1, 2, 3].map(() => String(Math.floor(Math.random() * 300))).join('.'));
    for (const t of texts) {
      let want: unknown;
      try {
        const a = ipaddr.parse(t);
        want = a.kind() === 'ipv4' ? [4, ...a.toByteArray()] : (a as import('ipaddr.js').IPv6).isIPv4MappedAddress() ? [4, ...(a as import('ipaddr.js').IPv6).toIPv4Address().toByteArray()] : [6, ...a.toByteArray()];
      } catch {
        want = 'error';
      }
      let got: unknown;
      try {
        const b = addressBytes(t);
        got = [b.family, ...b.bytes];
      } catch {
        got = 'error';
      }
      expect(got, t).toEqual(want);
    }
  });
});
