// Kernel fuzzing of the per-packet program (cgroup_skb/egress) with
// BPF_PROG_TEST_RUN: well-formed packets of every shape, the same packets
// truncated at every length, IPv4 options and fragments, IPv6 extension
// header chains (known, unknown, long), odd protocols and random bytes.
//
// Two properties:
// 1. The kernel does exactly what bpf/lib/parse.h and policy.h say, for any
//    input: a mirror of the parser in this file predicts, byte for byte,
//    whether the IP header parses (a packet whose IP header does not is
//    passed, counted in parse_errors and nowhere else), its protocol, ports,
//    fragment flag and whether the transport header could be read (a packet
//    whose transport header cannot is judged as going to every port of its
//    protocol, or of every protocol, and counted in l4_unknown); the
//    verdict, the per-pod counters and the event statistics then follow from
//    the compiled policy. Checked on every packet.
// 2. For a well-formed packet the kernel's verdict is the engine's
//    (PolicyEngine.explain, from the Kubernetes objects) - never an allow
//    where the engine says drop. Excluded, because they are documented
//    limits: non-first fragments (judged by address and protocol, see
//    docs/policy.md "Fragments").
//
// The ingress program is fuzzed the same way: it never drops, and records
// an inbound flow exactly when parse.h and ingress.bpf.c say it does.
//
// Two bypasses this suite found, fixed in parse.h and policy.h and kept as
// regression tests at the end: a well-formed IPv6 packet with more than 6
// extension headers, and a first fragment that carries less of the TCP
// header than the parser read, used to pass where the engine drops.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { skbContext } from '../helpers/packets.js';
import { addressBytes } from '../../src/policy/prefix.js';
import { classBits, lookupFlat, SET_F_A_ISOLATED, SET_F_E_ISOLATED } from '../../src/policy/compile.js';
import { decide, type Verdict } from '../../src/policy/verdict.js';
import type { DesiredPod, DesiredState } from '../../src/policy/engine.js';
import type { StatName } from '../../src/datapath/abi.js';

const RUNS = Number(process.env.WEIR_FUZZ_RUNS ?? 400);

const TCP = 6;
const UDP = 17;
const SCTP = 132;
const ICMP = 1;
const ICMPV6 = 58;
const EXT_HOP = 0;
const EXT_ROUTING = 43;
const EXT_FRAGMENT = 44;
const EXT_AH = 51;
const EXT_DEST = 60;
const KNOWN_EXT = [EXT_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DEST];
const IPV6_EXT_MAX = 6; // WEIR_IPV6_EXT_MAX in bpf/lib/parse.h

let bed: KernelBed;
let ctx: Buffer;
let state: DesiredState;
const pods: Record<string, { pod: TestPod; ip4: string; ip6: string; desired: DesiredPod }> = {};

beforeAll(async () => {
  bed = await KernelBed.create({ eventIntervalMs: 60_000 });
  ctx = skbContext(nonLoopbackIfindex());
  const defs: [string, string, string][] = [
    ['enf', '10.244.0.10', 'fd00:244::10'],
    ['aud', '10.244.0.11', 'fd00:244::11'],
    ['mix', '10.244.0.12', 'fd00:244::12'],
    ['free', '10.244.0.13', 'fd00:244::13'],
  ];
  const made = defs.map(([app, ip4, ip6]) => ({ app, ip4, ip6, pod: bed.addPod('f', app, { app }, [ip4, ip6]) }));
  bed.add(
    {
      apiVersion: 'weir.dev/v1alpha1',
      kind: 'EgressPolicy',
      metadata: { name: 'enf', namespace: 'f' },
      spec: {
        podSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['enf', 'mix'] }] },
        egress: [
          { to: [{ ipBlock: { cidr: '10.20.0.0/16' } }], ports: [{ protocol: 'TCP', port: 443 }] },
          { to: [{ ipBlock: { cidr: '10.30.0.0/16' } }], ports: [{ protocol: 'TCP', port: 8000, endPort: 8100 }, { protocol: 'UDP', port: 53 }] },
          { to: [{ ipBlock: { cidr: '10.40.0.0/16' } }] },
          { to: [{ ipBlock: { cidr: 'fd00:20::/32' } }], ports: [{ protocol: 'TCP', port: 443 }, { protocol: 'SCTP', port: 9 }] },
          { to: [{ ipBlock: { cidr: 'fd00:40::/32' } }] },
        ],
        deny: [
          { to: [{ ipBlock: { cidr: '10.40.7.0/24' } }], ports: [{ protocol: 'TCP', port: 22 }] },
          { to: [{ ipBlock: { cidr: '10.40.8.0/24' } }] },
          { to: [{ ipBlock: { cidr: 'fd00:40::/48' } }], ports: [{ protocol: 'TCP', port: 22 }, { protocol: 'UDP', port: 53 }] },
        ],
      },
    },
    {
      apiVersion: 'weir.dev/v1alpha1',
      kind: 'EgressPolicy',
      metadata: { name: 'aud', namespace: 'f' },
      spec: {
        podSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['aud', 'mix'] }] },
        mode: 'Audit',
        egress: [{ to: [{ ipBlock: { cidr: '10.20.0.0/16' } }], ports: [{ protocol: 'TCP', port: 443 }] }],
        deny: [{ to: [{ ipBlock: { cidr: '10.20.9.0/24' } }], ports: [{ protocol: 'UDP', port: 53 }] }],
      },
    },
  );
  expect(bed.sync().failedSets).toEqual([]);
  state = bed.engine.compute(bed.store);
  for (const m of made) {
    const desired = state.pods.find((p) => p.uid === m.pod.uid) as DesiredPod;
    pods[m.app] = { pod: m.pod, ip4: m.ip4, ip6: m.ip6, desired };
  }
});

afterAll(() => bed?.close());

// ---------------------------------------------------------------------------
// Packets

interface Ext {
  type: number;
  /** The header's length field (units depend on the type). */
  len: number;
}

interface Spec {
  v6: boolean;
  dst: string;
  src: string;
  /** The upper-layer protocol (after any extension headers). */
  proto: number;
  sport: number;
  dport: number;
  tcpFlags: number;
  icmpType: number;
  payload: number;
  /** IPv4 option words (IHL - 5). */
  v4opts: number;
  /** Fragment offset in 8-byte units (IPv4 header, or the IPv6 fragment header) and the more-fragments flag. */
  fragOffset: number;
  mf: boolean;
  /** IPv6 extension headers, in order (a 44 is the fragment header). */
  ext: Ext[];
  /** Bytes of the L4 header present (less than the header: a tiny first fragment). */
  l4Bytes?: number;
}

function l4Header(s: Spec): Buffer {
  switch (s.proto) {
    case TCP: {
      const h = Buffer.alloc(20);
      h.writeUInt16BE(s.sport, 0);
      h.writeUInt16BE(s.dport, 2);
      h.writeUInt8(5 << 4, 12);
      h.writeUInt8(s.tcpFlags, 13);
      return h;
    }
    case UDP:
    case SCTP: {
      const h = Buffer.alloc(s.proto === UDP ? 8 : 12);
      h.writeUInt16BE(s.sport, 0);
      h.writeUInt16BE(s.dport, 2);
      return h;
    }
    case ICMP:
    case ICMPV6: {
      const h = Buffer.alloc(8);
      h.writeUInt8(s.icmpType, 0);
      h.writeUInt16BE(0x1234, 4);
      return h;
    }
    default:
      return Buffer.alloc(0);
  }
}

/** The frame, Ethernet header included, as test_run takes it. */
function build(s: Spec): Buffer {
  const nonFirst = s.fragOffset !== 0;
  let l4 = nonFirst ? Buffer.alloc(0) : l4Header(s);
  if (s.l4Bytes !== undefined) l4 = l4.subarray(0, s.l4Bytes);
  const body = Buffer.concat([l4, Buffer.alloc(s.payload, 0x61)]);
  const eth = Buffer.alloc(14, 0x02);
  const src = addressBytes(s.src).bytes;
  const dst = addressBytes(s.dst).bytes;
  if (!s.v6) {
    eth.writeUInt16BE(0x0800, 12);
    const ip = Buffer.alloc(20 + 4 * s.v4opts, 0x01); // options: NOPs
    ip.writeUInt8(0x40 | (5 + s.v4opts), 0);
    ip.writeUInt16BE(ip.length + body.length, 2);
    ip.writeUInt16BE((s.mf ? 0x2000 : 0) | (s.fragOffset & 0x1fff), 6);
    ip.writeUInt8(64, 8);
    ip.writeUInt8(s.proto, 9);
    Buffer.from(src).copy(ip, 12);
    Buffer.from(dst).copy(ip, 16);
    return Buffer.concat([eth, ip, body]);
  }
  eth.writeUInt16BE(0x86dd, 12);
  const chain = [...s.ext.map((e) => e.type), s.proto];
  const exts = s.ext.map((e, i) => {
    const next = chain[i + 1] as number;
    let h: Buffer;
    if (e.type === EXT_FRAGMENT) {
      h = Buffer.alloc(8);
      h.writeUInt16BE(((s.fragOffset & 0x1fff) << 3) | (s.mf ? 1 : 0), 2);
    } else if (e.type === EXT_AH) {
      h = Buffer.alloc((e.len + 2) * 4);
      h.writeUInt8(e.len, 1);
    } else {
      h = Buffer.alloc((e.len + 1) * 8);
      h.writeUInt8(e.len, 1);
      if (h.length > 2) h.fill(0x01, 2); // options: the parser reads only the first two bytes
    }
    h.writeUInt8(next, 0);
    return h;
  });
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(exts.reduce((n, e) => n + e.length, 0) + body.length, 4);
  ip.writeUInt8(chain[0] as number, 6);
  ip.writeUInt8(64, 7);
  Buffer.from(src).copy(ip, 8);
  Buffer.from(dst).copy(ip, 24);
  return Buffer.concat([eth, ip, ...exts, body]);
}

// ---------------------------------------------------------------------------
// A mirror of bpf/lib/parse.h (weir_parse_fast + weir_parse_skb)

interface Parsed {
  family: 4 | 6;
  proto: number;
  hasPorts: boolean;
  fragment: boolean;
  /** WEIR_L4_PORTS (1): protocol known, header not; WEIR_L4_PROTO (2): protocol not known. */
  l4Unknown: 0 | 1 | 2;
  dport: number;
  dst: Uint8Array;
  /** What the ingress tracker reads (weir_ct keys). */
  src: Uint8Array;
  sport: number;
  tcpFlags: number;
  icmpType: number;
  icmpId: number;
}

function parse(frame: Buffer): Parsed | null {
  const ethertype = frame.readUInt16BE(12);
  const d = frame.subarray(14);
  const n = d.length;
  const u8 = (i: number): number => d[i] as number;
  if (ethertype === 0x0800) {
    // Fast path: 20-byte header, not a fragment, 14 bytes of L4 in the linear data.
    if (n >= 34 && u8(0) === 0x45 && ((u8(6) & 0x1f) | u8(7)) === 0) return fast(4, u8(9), 20, d, d.subarray(12, 16), d.subarray(16, 20));
    if (n < 20 || u8(0) >> 4 !== 4 || (u8(0) & 0xf) < 5) return null;
    const proto = u8(9);
    const fragment = (((u8(6) << 8) | u8(7)) & 0x1fff) !== 0;
    return l4(4, proto, fragment, (u8(0) & 0xf) * 4, d, d.subarray(12, 16), d.subarray(16, 20));
  }
  if (ethertype === 0x86dd) {
    if (n >= 54 && u8(0) >> 4 === 6 && [TCP, UDP, SCTP, ICMPV6].includes(u8(6))) return fast(6, u8(6), 40, d, d.subarray(8, 24), d.subarray(24, 40));
    if (n < 40 || u8(0) >> 4 !== 6) return null;
    let proto = u8(6);
    let off = 40;
    let fragment = false;
    const src = d.subarray(8, 24);
    const dst = d.subarray(24, 40);
    for (let i = 0; i < IPV6_EXT_MAX; i++) {
      if (!KNOWN_EXT.includes(proto)) break;
      if (off + 4 > n) return unknownL4(6, proto, src, dst, 2);
      const next = u8(off);
      const len = u8(off + 1);
      if (proto === EXT_FRAGMENT) {
        if (((u8(off + 2) << 8) | u8(off + 3)) & 0xfff8) fragment = true;
        off += 8;
      } else if (proto === EXT_AH) off += (len + 2) * 4;
      else off += (len + 1) * 8;
      proto = next;
      if (fragment) break; // what follows a non-first fragment's header is payload
    }
    if (!fragment && KNOWN_EXT.includes(proto)) return unknownL4(6, proto, src, dst, 2);
    return l4(6, proto, fragment, off, d, src, dst);
  }
  return null;
}

/** weir_l4_fast: the L4 fields at `off` (the fast path has checked 14 bytes are there). */
function fields(proto: number, off: number, d: Buffer): Pick<Parsed, 'hasPorts' | 'sport' | 'dport' | 'tcpFlags' | 'icmpType' | 'icmpId'> {
  const ported = proto === TCP || proto === UDP || proto === SCTP;
  const icmp = proto === ICMP || proto === ICMPV6;
  return {
    hasPorts: ported,
    sport: ported ? d.readUInt16BE(off) : 0,
    dport: ported ? d.readUInt16BE(off + 2) : 0,
    tcpFlags: proto === TCP ? (d[off + 13] as number) : 0,
    icmpType: icmp ? (d[off] as number) : 0,
    icmpId: icmp ? d.readUInt16BE(off + 4) : 0,
  };
}

function fast(family: 4 | 6, proto: number, off: number, d: Buffer, src: Uint8Array, dst: Uint8Array): Parsed {
  return { family, proto, fragment: false, l4Unknown: 0, src, dst, ...fields(proto, off, d) };
}

function unknownL4(family: 4 | 6, proto: number, src: Uint8Array, dst: Uint8Array, why: 1 | 2): Parsed {
  return { family, proto, fragment: false, l4Unknown: why, src, dst, hasPorts: false, sport: 0, dport: 0, tcpFlags: 0, icmpType: 0, icmpId: 0 };
}

function l4(family: 4 | 6, proto: number, fragment: boolean, off: number, d: Buffer, src: Uint8Array, dst: Uint8Array): Parsed | null {
  const base = { family, proto, fragment, src, dst, l4Unknown: 0 as const };
  if (fragment) return { ...base, hasPorts: false, sport: 0, dport: 0, tcpFlags: 0, icmpType: 0, icmpId: 0 };
  // TCP: the 4 bytes of ports are needed, the flags (byte 13) read when there (else 0).
  const need = proto === TCP || proto === UDP || proto === SCTP ? 4 : proto === ICMP || proto === ICMPV6 ? 8 : 0;
  // Nothing is read for other protocols, wherever their header would start.
  if (need > 0 && off + need > d.length) return unknownL4(family, proto, src, dst, 1);
  const f = fields(proto, off, d.length >= off + 14 ? d : Buffer.concat([d, Buffer.alloc(off + 14 - d.length)]));
  return { ...base, ...f };
}

function isLoopback(p: Parsed): boolean {
  if (p.family === 4) return p.dst[0] === 127;
  return p.dst.every((b, i) => (i === 15 ? b === 1 : b === 0));
}

/** bpf/lib/policy.h weir_judge for a parsed packet, from the compiled set. */
function judge(desired: DesiredPod, p: Parsed): Verdict {
  const set = state.sets.get(desired.setKey);
  if (!set) return 'drop';
  if (!(set.flags & (SET_F_E_ISOLATED | SET_F_A_ISOLATED))) return 'allow';
  const cls = lookupFlat(p.family === 4 ? set.v4 : set.v6, p.family, p.dst);
  let bits: number;
  if (p.l4Unknown) {
    // As if it went to every port (of every protocol when even that is unknown).
    let deny = 0;
    for (const r of cls.ranges) if (p.l4Unknown === 2 || r.proto === p.proto) deny |= r.bits;
    bits = cls.anyBits | (deny & (0x01 | 0x04));
  } else if (p.fragment) {
    let allow = 0;
    for (const r of cls.ranges) if (r.proto === p.proto) allow |= r.bits;
    bits = cls.anyBits | (allow & (0x02 | 0x08));
  } else bits = classBits(cls, p.proto, p.hasPorts ? p.dport : null);
  return decide(set.flags, bits).verdict;
}

// ---------------------------------------------------------------------------
// Running a packet and checking every side effect

/**
 * BPF_PROG_TEST_RUN refuses (EINVAL) an IPv4 frame without a whole 20-byte
 * IP header and an IPv6 frame without a whole 40-byte one; the stack never
 * hands the hook such a packet either (raw sockets included). Shorter
 * frames are fed only with other ethertypes.
 */
function minFrame(frame: Buffer): number {
  const type = frame.readUInt16BE(12);
  return type === 0x0800 ? 14 + 20 : type === 0x86dd ? 14 + 40 : 14;
}

const VERDICTS = ['allow', 'drop', 'audit', 'reply'] as const;
interface Snapshot {
  stats: Record<StatName, bigint>;
  packets: Record<string, bigint>;
  bytes: Record<string, bigint>;
}

function snapshot(ep: number): Snapshot {
  const c = bed.dp.counters(ep).packets;
  const packets: Record<string, bigint> = {};
  const bytes: Record<string, bigint> = {};
  for (const v of VERDICTS) {
    packets[v] = c[v]?.packets ?? 0n;
    bytes[v] = c[v]?.bytes ?? 0n;
  }
  return { stats: bed.dp.stats(), packets, bytes };
}

/** Runs one frame from `who` (already inside its cgroup) and checks the kernel did what the mirror says. Returns the kernel's verdict. */
function runChecked(who: keyof typeof pods, frame: Buffer): Verdict | 'parse-error' | 'loopback' {
  const { desired } = pods[who] as (typeof pods)[string];
  const ep = bed.endpointOf(pods[who]?.pod as TestPod);
  const before = snapshot(ep);
  const ret = bed.dp.testRun('weir_egress', { data: frame, ctx }).retval;
  const after = snapshot(ep);
  const p = parse(frame);
  const delta = (k: StatName): bigint => after.stats[k] - before.stats[k];
  const events = delta('events_sent') + delta('events_aggregated') + delta('events_lost');
  const moved = VERDICTS.filter((v) => after.packets[v] !== before.packets[v]);
  const where = `${who} ${frame.toString('hex')}`;
  if (p === null) {
    expect(ret, where).toBe(1);
    expect(delta('parse_errors'), where).toBe(1n);
    expect(moved, where).toEqual([]);
    expect(events, where).toBe(0n);
    return 'parse-error';
  }
  expect(delta('parse_errors'), where).toBe(0n);
  if (isLoopback(p)) {
    expect(ret, where).toBe(1);
    expect(moved, where).toEqual([]);
    return 'loopback';
  }
  const want = judge(desired, p);
  expect(delta('fragments'), where).toBe(p.fragment ? 1n : 0n);
  expect(delta('l4_unknown'), where).toBe(p.l4Unknown ? 1n : 0n);
  expect(moved, where).toEqual([want]);
  expect((after.bytes[want] as bigint) - (before.bytes[want] as bigint), where).toBe(BigInt(frame.length - 14));
  expect(ret, where).toBe(want === 'drop' ? 0 : 1);
  expect(events, where).toBe(want === 'drop' || want === 'audit' ? 1n : 0n);
  return want;
}

// ---------------------------------------------------------------------------
// Generators

const DST4 = ['10.20.1.1', '10.20.9.9', '10.30.0.5', '10.40.1.1', '10.40.7.9', '10.40.8.1', '203.0.113.5', '127.0.0.1'];
const DST6 = ['fd00:20::1', 'fd00:40::5', 'fd00:40:1::5', '2001:db8::1', '::1'];
const PORTS = [22, 53, 443, 8000, 8050, 8100, 8101, 9, 0, 65535];
const ODD_PROTOS = [47, 50, 4, 41, 136, 0, 255, 2, 103, 112, 115];
const WHO = ['enf', 'aud', 'mix', 'free'] as const;

const specArb: fc.Arbitrary<Spec & { who: (typeof WHO)[number] }> = fc
  .record({
    who: fc.constantFrom(...WHO),
    v6: fc.boolean(),
    d4: fc.constantFrom(...DST4),
    d6: fc.constantFrom(...DST6),
    protoKind: fc.constantFrom('tcp', 'tcp', 'udp', 'udp', 'sctp', 'icmp', 'odd', 'random'),
    oddProto: fc.constantFrom(...ODD_PROTOS),
    randomProto: fc.nat(255),
    sport: fc.nat(65535),
    dport: fc.oneof(fc.constantFrom(...PORTS), fc.nat(65535)),
    tcpFlags: fc.nat(255),
    icmpType: fc.oneof(fc.constantFrom(0, 3, 8, 11, 13, 128, 129, 135, 136), fc.nat(255)),
    payload: fc.oneof(fc.constant(0), fc.nat(64)),
    v4opts: fc.oneof(fc.constant(0), fc.constant(0), fc.nat(10)),
    frag: fc.constantFrom('none', 'none', 'none', 'first', 'later'),
    fragOffset: fc.integer({ min: 1, max: 0x1fff }),
    ext: fc.array(
      fc.record({ type: fc.oneof(fc.constantFrom(...KNOWN_EXT), fc.constantFrom(135, 139, 140, 253, 254, 59, 50)), len: fc.oneof(fc.constant(0), fc.nat(3)) }),
      { maxLength: 8 },
    ),
  })
  .map((r) => {
    const v6 = r.v6;
    let proto: number = r.protoKind === 'tcp' ? TCP : r.protoKind === 'udp' ? UDP : r.protoKind === 'sctp' ? SCTP : r.protoKind === 'icmp' ? (v6 ? ICMPV6 : ICMP) : r.protoKind === 'odd' ? r.oddProto : r.randomProto;
    // A fragment header in the chain carries the fragment fields; an IPv4 fragment uses the header's.
    let ext = v6 ? r.ext.filter((e) => e.type !== EXT_FRAGMENT) : [];
    // An unknown or final header type ends the chain: what follows it is its payload.
    const stop = ext.findIndex((e) => !KNOWN_EXT.includes(e.type));
    if (stop >= 0) {
      proto = (ext[stop] as Ext).type;
      ext = ext.slice(0, stop);
    }
    if (v6 && r.frag !== 'none') ext.splice(Math.min(ext.length, 1), 0, { type: EXT_FRAGMENT, len: 0 });
    const fragOffset = r.frag === 'later' ? r.fragOffset : 0;
    const mf = r.frag !== 'none' ? r.frag === 'first' || r.fragOffset % 2 === 0 : false;
    const src = v6 ? pods[r.who]?.ip6 : pods[r.who]?.ip4;
    return { who: r.who, v6, dst: v6 ? r.d6 : r.d4, src: src as string, proto, sport: r.sport, dport: r.dport, tcpFlags: r.tcpFlags, icmpType: r.icmpType, payload: r.payload, v4opts: v6 ? 0 : r.v4opts, fragOffset, mf, ext };
  });

/** The engine's verdict for the flow the packet belongs to (ports of TCP, UDP and SCTP). */
function engineVerdict(who: keyof typeof pods, s: Spec): Verdict {
  const d = pods[who]?.desired as DesiredPod;
  const ported = s.proto === TCP || s.proto === UDP || s.proto === SCTP;
  return bed.engine.explain(state, d, s.dst, s.proto, ported ? s.dport : null).verdict;
}

function inPod<T>(who: keyof typeof pods, fn: () => T): T {
  return inCgroup((pods[who]?.pod as TestPod).container(), fn);
}

// ---------------------------------------------------------------------------

describe('cgroup_skb/egress on fuzzed packets', () => {
  it('well-formed packets of every shape: the kernel does what parse.h and policy.h say, and agrees with the engine', () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(fc.array(specArb, { minLength: 1, maxLength: 20 }), (specs) => {
        for (const s of specs) {
          const frame = build(s);
          const got = inPod(s.who, () => runChecked(s.who, frame));
          seen.set(got, (seen.get(got) ?? 0) + 1);
          const p = parse(frame);
          // Property 2: well-formed and not a non-first fragment, with every
          // extension header walked: the engine's verdict.
          const upperIsExt = s.v6 && KNOWN_EXT.includes(s.proto); // then it is not an upper-layer protocol
          const complete = s.fragOffset === 0 && s.ext.length <= IPV6_EXT_MAX && !upperIsExt && p !== null;
          if (complete && got !== 'loopback') {
            expect(got, `${s.who} ${JSON.stringify(s)}`).toBe(engineVerdict(s.who, s));
          }
          // A transport header the parser did not reach (a long extension
          // header chain) is judged as any port: never an allow where the
          // engine drops the flow.
          if (p?.l4Unknown && got !== 'loopback' && engineVerdict(s.who, s) === 'drop') {
            expect(got, `${s.who} ${JSON.stringify(s)}`).toBe('drop');
          }
        }
      }),
      { numRuns: RUNS },
    );
    // Every outcome was exercised.
    for (const v of ['allow', 'drop', 'audit', 'loopback']) expect(seen.get(v) ?? 0, v).toBeGreaterThan(0);
  });

  it('the same packets truncated at every length: cut in the IP header, a parse error (passes, nothing else moves); cut after it, judged as any port (never an allow the engine would not give some port of the flow)', () => {
    const seen = new Map<string, number>();
    fc.assert(
      fc.property(specArb, (s) => {
        const frame = build(s);
        inPod(s.who, () => {
          for (let len = minFrame(frame); len <= frame.length; len++) {
            const got = runChecked(s.who, frame.subarray(0, len));
            seen.set(got, (seen.get(got) ?? 0) + 1);
          }
        });
      }),
      { numRuns: Math.ceil(RUNS / 8) },
    );
    expect(seen.get('drop') ?? 0).toBeGreaterThan(0);
  });

  it('random bytes behind an IPv4, IPv6 or other ethertype', () => {
    const frameArb = fc
      .record({
        ethertype: fc.oneof(fc.constantFrom(0x0800, 0x86dd, 0x0800, 0x86dd, 0x0806, 0x8100), fc.integer({ min: 0x600, max: 0xffff })),
        first: fc.oneof(fc.constantFrom(0x45, 0x46, 0x4f, 0x44, 0x60, 0x6f), fc.nat(255)),
        bytes: fc.uint8Array({ maxLength: 120 }),
        who: fc.constantFrom(...WHO),
      })
      .map((r) => {
        const eth = Buffer.alloc(14, 0x02);
        eth.writeUInt16BE(r.ethertype, 12);
        let body = Buffer.from(r.bytes);
        const min = minFrame(eth) - 14;
        if (body.length < min) body = Buffer.concat([body, Buffer.alloc(min - body.length)]);
        if (body.length > 0) body[0] = r.first;
        return { who: r.who, frame: Buffer.concat([eth, body]) };
      });
    fc.assert(
      fc.property(fc.array(frameArb, { minLength: 1, maxLength: 20 }), (frames) => {
        for (const f of frames) inPod(f.who, () => runChecked(f.who, f.frame));
      }),
      { numRuns: RUNS },
    );
  });

  it('a packet that is not IP or has a bad IP header is counted in parse_errors and passes; one too short for its transport header is judged as any port and counted in l4_unknown', () => {
    const eth = (type: number, body: number[]): Buffer => {
      const e = Buffer.alloc(14, 0x02);
      e.writeUInt16BE(type, 12);
      return Buffer.concat([e, Buffer.from(body)]);
    };
    const v4 = (first: number, proto: number, extra: number): number[] => {
      const h = Array<number>(20 + extra).fill(0);
      h[0] = first;
      h[9] = proto;
      return h;
    };
    inPod('enf', () => {
      expect(runChecked('enf', eth(0x0806, [0, 1, 8, 0, 6, 4, 0, 1]))).toBe('parse-error'); // ARP
      expect(runChecked('enf', eth(0x0800, v4(0x43, TCP, 20)))).toBe('parse-error'); // IHL 3
      expect(runChecked('enf', eth(0x0800, v4(0x60, TCP, 20)))).toBe('parse-error'); // an IPv6 header behind the IPv4 type
      // The destination 0.0.0.0 is in no allow rule: anything judged drops.
      expect(runChecked('enf', eth(0x0800, v4(0x45, TCP, 13)))).toBe('drop'); // 13 TCP bytes: ports read, flags not
      expect(runChecked('enf', eth(0x0800, v4(0x45, TCP, 3)))).toBe('drop'); // ports not there: any port
      expect(runChecked('enf', eth(0x0800, v4(0x45, UDP, 3)))).toBe('drop');
      expect(runChecked('enf', eth(0x0800, v4(0x45, ICMP, 7)))).toBe('drop');
      expect(runChecked('enf', eth(0x0800, v4(0x4f, TCP, 2)))).toBe('drop'); // 40 bytes of options, then 2 of TCP
      expect(runChecked('enf', eth(0x0800, v4(0x45, UDP, 4)))).toBe('drop'); // ports are all UDP needs
      expect(runChecked('enf', eth(0x0800, v4(0x45, 47, 0)))).toBe('drop'); // GRE: nothing read past the IP header
      const v6 = Array<number>(40).fill(0);
      v6[0] = 0x60;
      v6[6] = EXT_HOP; // a hop-by-hop header that is not there
      expect(runChecked('enf', eth(0x86dd, v6))).toBe('drop');
      v6[6] = TCP;
      expect(runChecked('enf', eth(0x86dd, [...v6, 0, 0]))).toBe('drop');
      expect(parse(eth(0x86dd, [...v6, 0, 0]))?.l4Unknown).toBe(1);
      expect(parse(eth(0x0800, v4(0x45, TCP, 13)))?.l4Unknown).toBe(0);
    });
  });

  it('test_run refuses IPv4 and IPv6 frames shorter than their IP header (which the stack never sends)', () => {
    for (const [type, len] of [
      [0x0800, 33],
      [0x86dd, 53],
    ] as const) {
      const f = Buffer.alloc(len);
      f.writeUInt16BE(type, 12);
      f[14] = type === 0x0800 ? 0x45 : 0x60;
      expect(() => inPod('enf', () => bed.dp.testRun('weir_egress', { data: f, ctx }))).toThrow(/EINVAL/);
    }
  });
});

describe('cgroup_skb/ingress on fuzzed packets', () => {
  /** weir_ct keys created so far (the tracker refreshes, not creates, a known one). */
  const tracked = new Set<string>();

  /** What ingress.bpf.c does with the frame: it never drops; does it record an inbound flow? */
  function creates(endpoint: number, p: Parsed | null): string | null {
    if (p === null || p.fragment || p.l4Unknown || isLoopback(p)) return null;
    let create: boolean;
    if (p.proto === TCP) create = (p.tcpFlags & 0x12) === 0x02;
    else if (p.proto === UDP || p.proto === SCTP) create = true;
    else if (p.proto === ICMP) create = p.icmpType === 8;
    else if (p.proto === ICMPV6) create = p.icmpType === 128;
    else return null;
    const key = [endpoint, p.family, p.proto, p.hasPorts ? p.dport : p.icmpId, p.hasPorts ? p.sport : p.icmpId, Buffer.from(p.src).toString('hex')].join('/');
    if (tracked.has(key)) return null; // refreshed
    return create ? key : null;
  }

  it('never drops, and records an inbound flow exactly for a TCP SYN, a UDP or SCTP datagram, or an ICMP echo request that parses', () => {
    const arb = fc.tuple(specArb, fc.boolean(), fc.nat(200));
    try {
      fc.assert(
        fc.property(fc.array(arb, { minLength: 1, maxLength: 10 }), (items) => {
          for (const [s, truncate, cut] of items) {
            // From outside to the pod: swap the addresses and ports.
            const inbound = { ...s, src: s.dst, dst: s.src, sport: s.dport, dport: s.sport };
            const full = build(inbound);
            const frame = truncate ? full.subarray(0, Math.max(minFrame(full), full.length - cut)) : full;
            const ep = bed.endpointOf(pods[s.who]?.pod as TestPod);
            const before = bed.dp.stats();
            const ret = inPod(s.who, () => bed.dp.testRun('weir_ingress', { data: frame, ctx }).retval);
            const after = bed.dp.stats();
            expect(ret).toBe(1);
            const key = creates(ep, parse(frame));
            expect(after.ct_insert - before.ct_insert, frame.toString('hex')).toBe(key === null ? 0n : 1n);
            expect(after.ct_insert_failed).toBe(before.ct_insert_failed);
            if (key !== null) tracked.add(key);
          }
        }),
        { numRuns: RUNS },
      );
    } finally {
      // The egress checks above assume no inbound flows (no replies).
      const ct = bed.dp.map('weir_ct');
      for (const k of ct.keys()) ct.delete(k);
    }
    expect(tracked.size).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------
// Two bypasses this suite found (bpf/lib/parse.h), fixed: each builds a
// well-formed packet the engine drops and asserts the kernel drops it too.
// Before the fix the kernel let each of them pass.

describe('fixed bypasses: dropped where the engine drops', () => {
  const ENF = (): { ip4: string; ip6: string } => pods['enf'] as { ip4: string; ip6: string };

  it('sanity: the same flows without the trick are dropped', () => {
    inPod('enf', () => {
      const base: Spec = { v6: true, src: ENF().ip6, dst: 'fd00:40::5', proto: TCP, sport: 40000, dport: 22, tcpFlags: 0x02, icmpType: 0, payload: 0, v4opts: 0, fragOffset: 0, mf: false, ext: [] };
      expect(engineVerdict('enf', base)).toBe('drop');
      expect(runChecked('enf', build(base))).toBe('drop');
      expect(runChecked('enf', build({ ...base, ext: Array.from({ length: 6 }, () => ({ type: EXT_DEST, len: 0 })) }))).toBe('drop');
      const v4: Spec = { ...base, v6: false, src: ENF().ip4, dst: '10.20.1.1', ext: [] };
      expect(engineVerdict('enf', v4)).toBe('drop');
      expect(runChecked('enf', build({ ...v4, mf: true }))).toBe('drop'); // a first fragment with the whole TCP header
    });
  });

  it('IPv6 with 7 extension headers before TCP to a port a deny rule names (the parser gives up after 6: judged as any port of any protocol, so the deny applies)', () => {
    const s: Spec = {
      v6: true,
      src: ENF().ip6,
      dst: 'fd00:40::5',
      proto: TCP,
      sport: 40000,
      dport: 22,
      tcpFlags: 0x02,
      icmpType: 0,
      payload: 0,
      v4opts: 0,
      fragOffset: 0,
      mf: false,
      ext: Array.from({ length: 7 }, () => ({ type: EXT_DEST, len: 0 })),
    };
    expect(engineVerdict('enf', s)).toBe('drop');
    expect(inPod('enf', () => runChecked('enf', build(s)))).toBe('drop');
  });

  it('a TCP SYN to a port no rule allows, in tiny IPv4 fragments (8 bytes of TCP header in the first): the first fragment is judged by its ports and dropped', () => {
    const s: Spec = { v6: false, src: ENF().ip4, dst: '10.20.1.1', proto: TCP, sport: 40000, dport: 22, tcpFlags: 0x02, icmpType: 0, payload: 0, v4opts: 0, fragOffset: 0, mf: true, ext: [], l4Bytes: 8 };
    expect(engineVerdict('enf', s)).toBe('drop');
    const first = build(s);
    // The rest of the TCP header: offset 1 (8 bytes), last fragment.
    const rest = build({ ...s, fragOffset: 1, mf: false, payload: 12 });
    const verdicts = inPod('enf', () => [runChecked('enf', first), runChecked('enf', rest)]);
    expect(verdicts).not.toEqual(['parse-error', 'allow']); // what happened before the fix: the datagram got through
    expect(verdicts[0]).toBe('drop');
  });

  it('the same in IPv6: a first fragment with 8 bytes of TCP header is judged by its ports and dropped', () => {
    const s: Spec = {
      v6: true,
      src: ENF().ip6,
      dst: 'fd00:20::1',
      proto: TCP,
      sport: 40000,
      dport: 22,
      tcpFlags: 0x02,
      icmpType: 0,
      payload: 0,
      v4opts: 0,
      fragOffset: 0,
      mf: true,
      ext: [{ type: EXT_FRAGMENT, len: 0 }],
      l4Bytes: 8,
    };
    expect(engineVerdict('enf', s)).toBe('drop');
    const rest = build({ ...s, fragOffset: 1, mf: false, payload: 12 });
    const verdicts = inPod('enf', () => [runChecked('enf', build(s)), runChecked('enf', rest)]);
    expect(verdicts[0]).toBe('drop');
  });
});
