// bpf/lib/dns.h on the real verifier and BPF_PROG_TEST_RUN, through the
// fixture test/fixtures/dns_parse.bpf.c: crafted messages (compression
// pointers and pointer loops, truncation at every byte, oversized
// messages, label length abuse, 0, 64 and 65 answers, CNAME chains, case)
// and randomly mutated ones, each compared with the reference parser of
// test/helpers/dns-wire.ts. The parser must never learn an address the
// reference does not, and the name hashes must equal src/policy/fqdn-hash.ts.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import fc from 'fast-check';
import { BpfObject } from '../../src/native/kernel-objects.js';
import { nameHash, suffixHashes } from '../../src/policy/fqdn-hash.js';
import { compileFqdn, lookupFqdn, type FqdnKey } from '../../src/policy/fqdn.js';
import { normalizeEgressPolicy } from '../../src/policy/normalize.js';
import { validateObject } from '../../src/model/validate.js';
import type { EgressPolicy } from '../../src/model/types.js';
import { DNS, DNS_ERR, buildMessage, encodeName, encodeRecord, ptr, referenceParse, udpFrame, type ParseResult } from '../helpers/dns-wire.js';

const root = join(import.meta.dirname, '..', '..');
const fixture = join(root, 'build/bpf/fixtures/dns_parse.bpf.o');
const SECRET = 0x0123456789abcdefn;

// struct weir_dns_state offsets (asserted in bpf/lib/dns.h)
const OFF = { err: 0, len: 4, id: 8, qtype: 12, ancount: 16, nanswers: 20, nlabels: 24, naddrs: 28, nchain: 32, qhash: 112, chain: 120, suffix: 248, out: 1272 };

let obj: BpfObject;
const zero = Buffer.alloc(4);

beforeAll(async () => {
  if (!existsSync(fixture)) throw new Error(`${fixture} is missing: run \`node scripts/build.mjs bpf\``);
  obj = await BpfObject.load(fixture);
  const s = Buffer.alloc(8);
  s.writeBigUInt64LE(SECRET);
  obj.map('dns_secret').update(zero, s);
});

afterAll(() => obj?.close());

interface KernelResult extends ParseResult {
  qhash: bigint;
  suffix: bigint[];
  nlabels: number;
  nchain: number;
}

/** Runs the parser on msg as a response (from port 53) or a query (to port 53). */
function run(msg: Buffer, response = true, v6 = false, udpLen?: number): KernelResult {
  const frame = udpFrame({
    src: v6 ? 'fd00::53' : '10.96.0.10',
    dst: v6 ? 'fd00::5' : '10.1.0.5',
    sport: response ? 53 : 40000,
    dport: response ? 40000 : 53,
    payload: msg,
    ...(udpLen !== undefined ? { udpLen } : {}),
  });
  // A marker: the state is rewritten by every run that reaches the parser.
  const st0 = Buffer.alloc(obj.map('dns_state').valueSize);
  st0.writeUInt32LE(0xdead, OFF.err);
  obj.map('dns_state').update(zero, st0);
  expect(obj.program('dns_parse').testRun({ data: frame }).retval).toBe(1);
  const st = obj.map('dns_state').lookup(zero) as Buffer;
  const naddrs = st.readUInt32LE(OFF.naddrs);
  const nlabels = st.readUInt32LE(OFF.nlabels);
  const nchain = st.readUInt32LE(OFF.nchain);
  const addrs = [];
  for (let i = 0; i < naddrs; i++) {
    const o = OFF.out + i * 24;
    const family = st[o] === 2 ? 4 : 6;
    addrs.push({ family: family as 4 | 6, link: st[o + 1] as number, ttl: st.readUInt32LE(o + 4), addr: st.subarray(o + 8, o + 8 + (family === 4 ? 4 : 16)).toString('hex') });
  }
  const suffix: bigint[] = [];
  for (let k = 0; k < nlabels; k++) suffix.push(st.readBigUInt64LE(OFF.suffix + 8 * k));
  return {
    err: st.readUInt32LE(OFF.err),
    qlabels: null,
    nanswers: st.readUInt32LE(OFF.nanswers),
    addrs,
    chain: [],
    qhash: st.readBigUInt64LE(OFF.qhash),
    suffix,
    nlabels,
    nchain,
  };
}

/** The kernel and the reference agree on everything the datapath would use. */
function agree(msg: Buffer, response = true): KernelResult {
  const k = run(msg, response);
  const r = referenceParse(msg, response);
  expect({ err: k.err, addrs: k.addrs, nanswers: response ? k.nanswers : 0 }).toEqual({ err: r.err, addrs: r.addrs, nanswers: r.nanswers });
  if (r.qlabels && (r.err === 0 || response)) {
    expect(k.nlabels).toBe(r.qlabels.length);
    expect(k.suffix).toEqual(suffixHashes(SECRET, r.qlabels));
    expect(k.nchain).toBe(r.chain.length);
  }
  return k;
}

const A = (name: string | Buffer, addr: string, ttl = 60) => ({ name, type: DNS.TYPE_A, data: addr, ttl });
const AAAA = (name: string | Buffer, addr: string, ttl = 60) => ({ name, type: DNS.TYPE_AAAA, data: addr, ttl });
const CNAME = (name: string | Buffer, target: string | Buffer) => ({ name, type: DNS.TYPE_CNAME, data: target });

describe('questions and name hashes', () => {
  test('a query: the question hash and every suffix hash equal the TypeScript mirror, whatever the case', () => {
    const k = agree(buildMessage({ response: false, qname: 'API.Models.Example.COM' }), false);
    expect(k.err).toBe(DNS_ERR.OK);
    expect(k.qhash).toBe(nameHash(SECRET, 'api.models.example.com'));
    expect(k.suffix).toEqual([
      nameHash(SECRET, 'api.models.example.com'),
      nameHash(SECRET, 'models.example.com'), // the key of *.models.example.com
      nameHash(SECRET, 'example.com'), // the key of *.example.com
      nameHash(SECRET, 'com'),
    ]);
    expect(nameHash(SECRET, 'api.models.example.com')).not.toBe(nameHash(SECRET + 1n, 'api.models.example.com'));
  });

  test('a query with a compression pointer in its question, a root question, class CH, two questions: refused', () => {
    const q = Buffer.concat([Buffer.from([3, 0x61, 0x70, 0x69]), ptr(12)]);
    expect(agree(buildMessage({ response: false, qname: q }), false).err).toBe(DNS_ERR.PTR_IN_QUESTION);
    expect(agree(buildMessage({ response: false, qname: '' }), false).err).toBe(DNS_ERR.QUESTION);
    expect(agree(buildMessage({ response: false, qname: 'a.example.com', qclass: 3 }), false).err).toBe(DNS_ERR.QUESTION);
    expect(agree(buildMessage({ response: false, qname: 'a.example.com', qdcount: 2 }), false).err).toBe(DNS_ERR.QDCOUNT);
    expect(agree(buildMessage({ response: true, qname: 'a.example.com' }), false).err).toBe(DNS_ERR.KIND);
  });
});

describe('responses', () => {
  test('A and AAAA records of the question name are found, with their TTLs; IPv6 transport too', () => {
    const msg = buildMessage({
      qname: 'api.models.example.com',
      answers: [A('api.models.example.com', '192.0.2.10', 30), AAAA('API.MODELS.EXAMPLE.COM', '2001:db8::10', 0x80000001), A('other.example.com', '192.0.2.99')],
    });
    const k = agree(msg);
    expect(k.err).toBe(DNS_ERR.OK);
    expect(k.addrs).toEqual([
      { family: 4, link: 0, ttl: 30, addr: 'c000020a' },
      { family: 6, link: 0, ttl: 0, addr: '20010db8000000000000000000000010' },
    ]);
    expect(run(msg, true, true).addrs).toEqual(k.addrs);
  });

  test('CNAME chains within the answer are followed, in order or not, up to the limit', () => {
    const chain = buildMessage({
      qname: 'api.models.example.com',
      answers: [CNAME('api.models.example.com', 'edge.cdn.example.net'), CNAME('edge.cdn.example.net', 'e1.cdn.example.net'), A('e1.cdn.example.net', '198.51.100.1'), A('unrelated.example.net', '198.51.100.2')],
    });
    expect(agree(chain).addrs).toEqual([{ family: 4, link: 2, ttl: 60, addr: 'c6336401' }]);
    // A record before the CNAME that names it: not reachable yet, not learned.
    const early = buildMessage({ qname: 'a.example.com', answers: [A('b.example.com', '198.51.100.3'), CNAME('a.example.com', 'b.example.com')] });
    expect(agree(early).addrs).toEqual([]);
    // 8 links are followed, the 9th is not.
    const links = (n: number) => {
      const answers = [];
      for (let i = 0; i < n; i++) answers.push(CNAME(i === 0 ? 'q.example.com' : `c${i}.example.com`, `c${i + 1}.example.com`));
      answers.push(A(`c${n}.example.com`, '198.51.100.4'));
      return buildMessage({ qname: 'q.example.com', answers });
    };
    expect(agree(links(DNS.MAX_CHAIN)).addrs).toHaveLength(1);
    expect(agree(links(DNS.MAX_CHAIN + 1)).addrs).toHaveLength(0);
  });

  test('NXDOMAIN, a truncated (TC) answer, a query, an opcode other than QUERY: nothing', () => {
    const answers = [A('a.example.com', '192.0.2.1')];
    expect(agree(buildMessage({ qname: 'a.example.com', rcode: 3, answers })).err).toBe(DNS_ERR.RCODE);
    expect(agree(buildMessage({ qname: 'a.example.com', tc: true, answers })).err).toBe(DNS_ERR.TRUNCATED);
    expect(agree(buildMessage({ qname: 'a.example.com', response: false, answers })).err).toBe(DNS_ERR.KIND);
    expect(agree(buildMessage({ qname: 'a.example.com', opcode: 2, answers })).err).toBe(DNS_ERR.KIND);
    expect(agree(Buffer.alloc(11)).err).toBe(DNS_ERR.SHORT);
  });

  test('wrong class, wrong rdlength, other types: skipped, not learned', () => {
    const msg = buildMessage({
      qname: 'a.example.com',
      answers: [
        { name: 'a.example.com', type: DNS.TYPE_A, class: 3, data: '192.0.2.1' },
        { name: 'a.example.com', type: DNS.TYPE_A, data: Buffer.from([192, 0, 2, 2, 0]) },
        { name: 'a.example.com', type: DNS.TYPE_AAAA, data: Buffer.from([192, 0, 2, 3]) },
        { name: 'a.example.com', type: DNS.TYPE_TXT, data: Buffer.from('\x03abc') },
        A('a.example.com', '192.0.2.4'),
      ],
    });
    const k = agree(msg);
    expect(k.err).toBe(DNS_ERR.OK);
    expect(k.addrs.map((a) => a.addr)).toEqual(['c0000204']);
  });

  test('0, 64 and 65 answers: the first 64 records are walked', () => {
    expect(agree(buildMessage({ qname: 'a.example.com' })).addrs).toEqual([]);
    const many = (n: number) => buildMessage({ qname: 'a.example.com', answers: Array.from({ length: n }, (_, i) => A(ptr(12), `10.9.${i >> 8}.${i & 255}`)) });
    const k64 = agree(many(64));
    expect(k64.addrs).toHaveLength(64);
    expect(k64.nanswers).toBe(64);
    const k65 = agree(many(65));
    expect(k65.addrs).toHaveLength(64);
    expect(k65.addrs.at(-1)?.addr).toBe('0a09003f');
  });
});

describe('compression pointers', () => {
  test('owners and CNAME targets through pointers, also to a suffix', () => {
    // question at 12: "a.example.com"; "example.com" starts at 14.
    const msg = buildMessage({
      qname: 'a.example.com',
      answers: [CNAME(ptr(12), Buffer.concat([Buffer.from([3]), Buffer.from('cdn'), ptr(14)])), A(Buffer.concat([Buffer.from([3]), Buffer.from('cdn'), ptr(14)]), '192.0.2.7')],
    });
    const k = agree(msg);
    expect(k.err).toBe(DNS_ERR.OK);
    expect(k.addrs.map((a) => a.addr)).toEqual(['c0000207']);
  });

  test('a pointer to itself, forwards, or ping-pong: a loop error, nothing learned', () => {
    const qlen = 12 + encodeName('a.example.com').length + 4;
    // the first answer's owner starts at qlen
    const self = buildMessage({ qname: 'a.example.com', answers: [Buffer.concat([ptr(qlen), encodeRecord(A(Buffer.alloc(0), '192.0.2.1')).subarray(0)])] });
    expect(agree(self).err).toBe(DNS_ERR.PTR_LOOP);
    const fwd = buildMessage({ qname: 'a.example.com', answers: [Buffer.concat([ptr(qlen + 2), Buffer.from([0]), encodeRecord(A(Buffer.alloc(0), '192.0.2.1'))])] });
    expect(agree(fwd).addrs).toEqual([]);
    // label "x" then a pointer back to that label: x.x.x... without end
    const pingpong = buildMessage({ qname: 'a.example.com', answers: [Buffer.concat([Buffer.from([1, 0x78]), ptr(qlen)]), encodeRecord(A(Buffer.alloc(0), '192.0.2.1'))] });
    expect(agree(pingpong).err).toBe(DNS_ERR.PTR_LOOP);
    // pointer into the middle of a pointer
    const middle = buildMessage({ qname: 'a.example.com', answers: [Buffer.concat([ptr(12), encodeRecord(A(Buffer.alloc(0), '192.0.2.1')).subarray(0, 0)]), encodeRecord(A(ptr(qlen + 1), '192.0.2.1'))] });
    expect(agree(middle).addrs).toEqual([]);
  });

  test('more than 16 hops: refused', () => {
    // Record 1 is a TXT record whose rdata holds a backwards chain of
    // pointers (each to the one before, the first to the question); record
    // 2's owner points at the last one: n hops in all.
    const build = (n: number) => {
      const head = buildMessage({ qname: 'a.example.com', ancount: 2 });
      const txtOwner = ptr(12);
      const rdStart = head.length + txtOwner.length + 10;
      const rd: Buffer[] = [];
      let prev = 12;
      for (let i = 0; i < n - 1; i++) {
        rd.push(ptr(prev));
        prev = rdStart + 2 * i;
      }
      const txt = encodeRecord({ name: txtOwner, type: DNS.TYPE_TXT, data: Buffer.concat(rd) });
      return Buffer.concat([head, txt, encodeRecord(A(ptr(prev), '192.0.2.1'))]);
    };
    const ok = agree(build(DNS.MAX_HOPS));
    expect(ok.err).toBe(DNS_ERR.OK);
    expect(ok.addrs).toHaveLength(1);
    const over = agree(build(DNS.MAX_HOPS + 1));
    expect(over.err).toBe(DNS_ERR.PTR_HOPS);
    expect(over.addrs).toHaveLength(0);
  });
});

describe('length abuse', () => {
  const good = buildMessage({
    qname: 'api.models.example.com',
    answers: [CNAME(ptr(12), 'edge.cdn.example.net'), A('edge.cdn.example.net', '198.51.100.1'), AAAA('edge.cdn.example.net', '2001:db8::1')],
  });

  test('truncated at every byte: never more than the complete records before the cut', () => {
    const full = referenceParse(good, true);
    for (let cut = 0; cut <= good.length; cut++) {
      const k = agree(good.subarray(0, cut));
      if (cut < good.length) expect(k.err).not.toBe(DNS_ERR.OK);
      for (const a of k.addrs) expect(full.addrs).toContainEqual(a);
    }
  });

  test('the UDP length says more than the packet holds: nothing is read beyond it', () => {
    const k = run(good, true, false, 8 + good.length + 100);
    expect(k.addrs).toEqual([]);
  });

  test('a message longer than the parse buffer: records inside it count, the rest teaches nothing', () => {
    const answers = Array.from({ length: 64 }, (_, i) => AAAA(ptr(12), `2001:db8::${(i + 1).toString(16)}`));
    const msg = buildMessage({ qname: 'a.example.com', answers, trailer: Buffer.alloc(600) });
    expect(msg.length).toBeGreaterThan(DNS.BUF);
    const k = agree(msg);
    expect(k.addrs).toHaveLength(64);
    const big = buildMessage({ qname: 'a.example.com', answers: [...Array.from({ length: 70 }, () => ({ name: ptr(12), type: DNS.TYPE_TXT, data: Buffer.alloc(25) })), A(ptr(12), '192.0.2.1')] });
    expect(big.length).toBeGreaterThan(DNS.BUF);
    expect(agree(big).addrs).toEqual([]);
  });

  test('label lengths: 64 and 0x80 are label types, not lengths; a label past the end; a name over 255 bytes', () => {
    const label = (n: number, c = 0x61) => Buffer.concat([Buffer.from([n]), Buffer.alloc(n & 0x3f, c)]);
    expect(agree(buildMessage({ qname: Buffer.concat([label(0x40), Buffer.from([0])]) })).err).toBe(DNS_ERR.LABEL_TYPE);
    expect(agree(buildMessage({ qname: Buffer.concat([label(0x80), Buffer.from([0])]) })).err).toBe(DNS_ERR.LABEL_TYPE);
    expect(agree(buildMessage({ qname: Buffer.concat([Buffer.from([63]), Buffer.alloc(10, 0x61)]) })).err).toBe(DNS_ERR.NAME_TRUNC);
    const long = Buffer.concat([label(63), label(63), label(63), label(63), Buffer.from([0])]);
    expect(long.length).toBe(257);
    expect(agree(buildMessage({ qname: long })).err).toBe(DNS_ERR.NAME_LONG);
    const max = Buffer.concat([label(63), label(63), label(63), label(61), Buffer.from([0])]);
    expect(max.length).toBe(255);
    expect(agree(buildMessage({ qname: max, answers: [A(ptr(12), '192.0.2.1')] })).addrs).toHaveLength(1);
    // 127 one-byte labels: 255 bytes, the most labels a name can have
    const many = Buffer.concat([...Array.from({ length: 127 }, () => label(1)), Buffer.from([0])]);
    expect(agree(buildMessage({ qname: many, answers: [A(ptr(12), '192.0.2.1')] })).addrs).toHaveLength(1);
  });
});

describe('random messages', () => {
  test('mutated responses: the kernel learns exactly what the reference learns', () => {
    const name = fc.constantFrom('a.example.com', 'API.models.example.com', 'edge.cdn.example.net', 'x.y');
    const rec = fc.oneof(
      fc.record({ name, addr: fc.ipV4() }).map((r) => encodeRecord(A(r.name, r.addr))),
      fc.record({ name, addr: fc.constantFrom('2001:db8::1', 'fd00::7') }).map((r) => encodeRecord(AAAA(r.name, r.addr))),
      fc.record({ name, t: name }).map((r) => encodeRecord(CNAME(r.name, r.t))),
      fc.constant(encodeRecord(A(ptr(12), '192.0.2.200'))),
    );
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('ptr' as const), at: fc.nat(), to: fc.nat({ max: 200 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
    );
    fc.assert(
      fc.property(name, fc.array(rec, { maxLength: 8 }), fc.array(mutation, { maxLength: 4 }), (q, recs, muts) => {
        let msg: Buffer = Buffer.from(buildMessage({ qname: q, answers: recs }));
        for (const m of muts) {
          if (msg.length === 0) break;
          const at = m.at % msg.length;
          if (m.kind === 'flip') msg[at] = m.value;
          else if (m.kind === 'ptr') ptr(m.to).copy(msg, Math.max(0, Math.min(at, msg.length - 2)));
          else msg = msg.subarray(0, at);
        }
        agree(msg);
      }),
      { numRuns: 400 },
    );
  });
});


describe('matching a question against a set\'s FQDN keys (weir_dns_match)', () => {
  const KEY_EXACT = 1;
  const KEY_WILDCARD = 2;

  function writeKeys(setId: number, keys: readonly FqdnKey[]): void {
    const m = obj.map('dns_keys');
    for (const k of m.keys()) m.delete(k);
    keys.forEach((k, i) => {
      const key = Buffer.alloc(16);
      key.writeUInt32LE(setId, 0);
      key[4] = k.matcher.kind === 'name' ? KEY_EXACT : KEY_WILDCARD;
      key.writeBigUInt64LE(nameHash(SECRET, k.matcher.kind === 'name' ? k.matcher.name : k.matcher.suffix), 8);
      const v = Buffer.alloc(4);
      v.writeUInt32LE(i + 1);
      m.update(key, v);
    });
  }

  function match(setId: number, qname: string): number {
    const m = Buffer.alloc(16);
    m.writeUInt32LE(setId, 0);
    m.writeUInt32LE(0xffffffff, 4);
    obj.map('dns_match').update(zero, m);
    run(buildMessage({ response: false, qname }), false);
    return (obj.map('dns_match').lookup(zero) as Buffer).readUInt32LE(4);
  }

  const policy = (rules: { sel: { matchName?: string; matchPattern?: string }; port: number }[]) => {
    const r = validateObject({
      apiVersion: 'weir.dev/v1alpha1',
      kind: 'EgressPolicy',
      metadata: { name: 'p', namespace: 'ml' },
      spec: { podSelector: {}, egress: rules.map((x) => ({ to: [{ fqdn: x.sel }], ports: [{ protocol: 'TCP', port: x.port }] })) },
    });
    if (!r.ok) throw new Error(r.ignored ? 'ignored' : r.error.message);
    return normalizeEgressPolicy(r.object as EgressPolicy);
  };

  test('exact first, then the longest wildcard; never the apex; any case; only the set\'s own keys', () => {
    const keys = compileFqdn([
      policy([
        { sel: { matchName: 'api.models.example.com' }, port: 443 },
        { sel: { matchPattern: '*.models.example.com' }, port: 8443 },
        { sel: { matchPattern: '*.hf.co' }, port: 443 },
      ]),
    ]);
    writeKeys(7, keys);
    const idx = (text: string) => keys.findIndex((k) => k.text === text) + 1;
    expect(match(7, 'api.models.example.com')).toBe(idx('api.models.example.com'));
    expect(match(7, 'API.MODELS.example.COM')).toBe(idx('api.models.example.com'));
    expect(match(7, 'x.models.example.com')).toBe(idx('*.models.example.com'));
    expect(match(7, 'a.b.models.example.com')).toBe(idx('*.models.example.com'));
    expect(match(7, 'cdn-lfs.eu.hf.co')).toBe(idx('*.hf.co'));
    expect(match(7, 'hf.co')).toBe(0);
    expect(match(7, 'models.example.com')).toBe(0);
    expect(match(7, 'xhf.co')).toBe(0);
    expect(match(8, 'api.models.example.com')).toBe(0);
  });

  test('property: the kernel picks the key src/policy/fqdn.ts lookupFqdn picks, on random policies and names', () => {
    const label = fc.constantFrom('a', 'b', 'api', 'x', 'B');
    const sel = fc.record({ wild: fc.boolean(), labels: fc.array(label, { minLength: 1, maxLength: 3 }) });
    fc.assert(
      fc.property(fc.array(sel, { minLength: 1, maxLength: 6 }), fc.array(fc.array(label, { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 8 }), (sels, names) => {
        const keys = compileFqdn([policy(sels.map((s) => ({ sel: s.wild ? { matchPattern: `*.${s.labels.join('.')}` } : { matchName: s.labels.join('.') }, port: 443 })))]);
        writeKeys(3, keys);
        for (const n of names) {
          const q = n.join('.');
          const want = lookupFqdn(keys, q);
          expect(match(3, q)).toBe(want ? keys.indexOf(want) + 1 : 0);
        }
      }),
      { numRuns: 150 },
    );
  });
});
