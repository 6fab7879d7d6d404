// Proves the TypeScript encoders and codes match the C layout as the addon
// reports it (native/abi.cc, itself checked against the header in abi.test.ts).
import { describe, expect, it } from 'vitest';
import { abi } from '../../src/native/abi.js';
import {
  CONST,
  OFFSETS,
  SIZES,
  STAT_NAMES,
  decodeCtKey,
  decodeDnsEvent,
  decodeDnsKey,
  decodeDnsQueryKey,
  decodeDnsQueryValue,
  decodeDnsResolverKey,
  decodeEvent,
  decodeFqdnKeyValue,
  decodeFqdnLearnedKey,
  decodeFqdnLearnedValue,
  decodeNodeState,
  decodePodIpKey,
  decodePodIpValue,
  decodePortClass,
  decodeSetValue,
  decodePodValue,
  encodeConfig,
  encodeCtKey,
  encodeDnsKey,
  encodeDnsQueryKey,
  encodeDnsQueryValue,
  encodeDnsResolverKey,
  encodeDnsResolverValue,
  encodeFqdnKeyValue,
  encodeFqdnLearnedKey,
  encodeFqdnLearnedValue,
  encodeNodeState,
  wireNameToText,
  encodePodIpKey,
  encodePodIpValue,
  encodePodValue,
  encodePortClass,
  encodeSetValue,
} from '../../src/datapath/abi.js';
import { REASON_CODES, VERDICT_CODES } from '../../src/policy/verdict.js';
import {
  BIT_A_ALLOW,
  BIT_A_DENY,
  BIT_E_ALLOW,
  BIT_E_DENY,
  PORT_RANGES_MAX,
  SET_F_A_ISOLATED,
  SET_F_E_ISOLATED,
  SET_F_VALID,
} from '../../src/policy/compile.js';
import { SLOT_CHILD, FANOUT } from '../../src/datapath/trie.js';

const info = abi();
const c = (name: string): number => {
  const v = info.constants[name];
  if (v === undefined) throw new Error(`addon has no constant ${name}`);
  return Number(v);
};

describe('TypeScript ABI matches the C structs', () => {
  it('every struct size the encoders use equals the C size', () => {
    for (const [name, size] of Object.entries(SIZES)) expect(info.sizes[name], name).toBe(size);
  });

  it('every field offset the encoders use equals the C offset', () => {
    for (const [field, off] of Object.entries(OFFSETS)) expect(info.offsets[field], field).toBe(off);
  });

  it('constants, verdict and reason codes, bits and flags equal the C values', () => {
    for (const [name, v] of Object.entries(CONST)) expect(c(name), name).toBe(v);
    expect(c('WEIR_VERDICT_ALLOW')).toBe(VERDICT_CODES.allow);
    expect(c('WEIR_VERDICT_DROP')).toBe(VERDICT_CODES.drop);
    expect(c('WEIR_VERDICT_AUDIT')).toBe(VERDICT_CODES.audit);
    expect(c('WEIR_VERDICT_REPLY')).toBe(VERDICT_CODES.reply);
    const reasons: Record<string, keyof typeof REASON_CODES> = {
      WEIR_REASON_NOT_ISOLATED: 'not-isolated',
      WEIR_REASON_ALLOW_RULE: 'allow-rule',
      WEIR_REASON_DENY_RULE: 'deny-rule',
      WEIR_REASON_DEFAULT_DENY: 'default-deny',
      WEIR_REASON_REPLY: 'reply',
      WEIR_REASON_AUDIT_DENY_RULE: 'audit-deny-rule',
      WEIR_REASON_AUDIT_DEFAULT_DENY: 'audit-default-deny',
      WEIR_REASON_NO_POLICY_SET: 'no-policy-set',
    };
    for (const [cname, ts] of Object.entries(reasons)) expect(c(cname), cname).toBe(REASON_CODES[ts]);
    expect(Object.keys(REASON_CODES).length).toBe(c('WEIR_REASON__MAX') - 1);
    expect([BIT_E_DENY, BIT_E_ALLOW, BIT_A_DENY, BIT_A_ALLOW]).toEqual(
      ['WEIR_BIT_E_DENY', 'WEIR_BIT_E_ALLOW', 'WEIR_BIT_A_DENY', 'WEIR_BIT_A_ALLOW'].map(c),
    );
    expect([SET_F_VALID, SET_F_E_ISOLATED, SET_F_A_ISOLATED]).toEqual(
      ['WEIR_SET_F_VALID', 'WEIR_SET_F_E_ISOLATED', 'WEIR_SET_F_A_ISOLATED'].map(c),
    );
    expect(PORT_RANGES_MAX).toBe(c('WEIR_PORT_RANGES_MAX'));
    expect(SLOT_CHILD).toBe(c('WEIR_SLOT_CHILD'));
    expect(FANOUT).toBe(c('WEIR_TRIE_FANOUT'));
    expect(STAT_NAMES.length).toBe(c('WEIR_STAT__MAX'));
    expect(STAT_NAMES.indexOf('events_lost')).toBe(c('WEIR_STAT_EVENTS_LOST'));
    expect(STAT_NAMES.indexOf('events_sent')).toBe(c('WEIR_STAT_EVENTS_SENT'));
    expect(STAT_NAMES.indexOf('events_aggregated')).toBe(c('WEIR_STAT_EVENTS_AGGREGATED'));
    expect(STAT_NAMES.indexOf('parse_errors')).toBe(c('WEIR_STAT_PARSE_ERRORS'));
    expect(STAT_NAMES.indexOf('fragments')).toBe(c('WEIR_STAT_FRAGMENTS'));
    const dnsStats: Record<string, string> = {
      dns_queries: 'WEIR_STAT_DNS_QUERIES',
      dns_queries_not_allowed: 'WEIR_STAT_DNS_QUERIES_NOT_ALLOWED',
      dns_queries_invalid: 'WEIR_STAT_DNS_QUERIES_INVALID',
      dns_answers: 'WEIR_STAT_DNS_ANSWERS',
      dns_ignored_no_query: 'WEIR_STAT_DNS_IGNORED_NO_QUERY',
      dns_ignored_rcode: 'WEIR_STAT_DNS_IGNORED_RCODE',
      dns_ignored_invalid: 'WEIR_STAT_DNS_IGNORED_INVALID',
      fqdn_learned: 'WEIR_STAT_FQDN_LEARNED',
      fqdn_refused: 'WEIR_STAT_FQDN_REFUSED',
    };
    for (const [ts, cname] of Object.entries(dnsStats)) expect(STAT_NAMES.indexOf(ts as (typeof STAT_NAMES)[number]), ts).toBe(c(cname));
  });
});

describe('encoders round-trip', () => {
  it('pod, set, port class and conntrack key', () => {
    const pod = { setId: 7, endpointId: 4095, flags: 1 };
    expect(decodePodValue(encodePodValue(pod))).toEqual(pod);
    const set = { root4: 12, root6: 0x7fffffff, flags: 7, generation: 0xfffffffe };
    expect(decodeSetValue(encodeSetValue(set))).toEqual(set);
    const cls = { anyBits: 2, ranges: [{ proto: 6, bits: 1, lo: 80, hi: 90 }, { proto: 17, bits: 8, lo: 53, hi: 53 }] };
    expect(decodePortClass(encodePortClass(cls))).toEqual(cls);
    const ct = { endpointId: 3, family: 10, proto: 17, localPort: 53, remotePort: 40000, remote: Uint8Array.from({ length: 16 }, (_, i) => i) };
    expect(decodeCtKey(encodeCtKey(ct))).toEqual(ct);
    const v4 = { family: 2, addr: Uint8Array.of(10, 244, 0, 2) };
    const v6 = { family: 10, addr: Uint8Array.from({ length: 16 }, (_, i) => 0xf0 + i) };
    expect(decodePodIpKey(encodePodIpKey(v4))).toEqual(v4);
    expect(decodePodIpKey(encodePodIpKey(v6))).toEqual(v6);
    expect([...encodePodIpKey(v4).subarray(OFFSETS['weir_pod_ip_key.addr'] + 4)]).toEqual(new Array(12).fill(0));
    expect(decodePodIpValue(encodePodIpValue(4095))).toBe(4095);
    expect(encodeConfig({ podLevelLo: 2, podLevelHi: 3, eventIntervalNs: 1n, ctTimeoutNs: 2n, maxEndpoints: 9, flags: 1 }).length).toBe(SIZES.weir_config);
  });

  it('node state and the DNS-learning keys and values', () => {
    const ns = { flags: 1, updatedNs: 123n, dnsSecret: 0xfedcba9876543210n };
    expect(decodeNodeState(encodeNodeState(ns))).toEqual(ns);
    const v4 = Uint8Array.of(10, 96, 0, 10);
    const v6 = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
    const rk = { family: 2, port: 53, addr: v4 };
    expect(decodeDnsResolverKey(encodeDnsResolverKey(rk))).toEqual(rk);
    expect(encodeDnsResolverKey(rk).readUInt16LE(OFFSETS['weir_dns_resolver_key.port'])).toBe(53); // host order
    expect([...encodeDnsResolverKey(rk).subarray(OFFSETS['weir_dns_resolver_key.addr'] + 4)]).toEqual(new Array(12).fill(0));
    expect(encodeDnsResolverValue().length).toBe(SIZES.weir_dns_resolver_value);
    const key = { setId: 9, kind: 2, hash: 0x8000000000000001n };
    expect(decodeDnsKey(encodeDnsKey(key))).toEqual(key);
    expect(decodeFqdnKeyValue(encodeFqdnKeyValue(16383))).toBe(16383);
    const qk = { endpointId: 7, family: 10, podPort: 40000, dnsId: 0xbeef, resolverPort: 5353, resolver: v6 };
    expect(decodeDnsQueryKey(encodeDnsQueryKey(qk))).toEqual(qk);
    const qv = { matched: key, qhash: 0x1234n, expiresNs: 99n };
    expect(decodeDnsQueryValue(encodeDnsQueryValue(qv))).toEqual(qv);
    const lk = { endpointId: 4095, family: 2, addr: v4 };
    expect(decodeFqdnLearnedKey(encodeFqdnLearnedKey(lk))).toEqual(lk);
    const slots = [{ kind: 1, hash: 5n, expiresNs: 6n, lastUseNs: 7n }];
    const empty = { kind: 0, hash: 0n, expiresNs: 0n, lastUseNs: 0n };
    expect(decodeFqdnLearnedValue(encodeFqdnLearnedValue(slots))).toEqual([...slots, empty, empty, empty]);
    expect(() => encodeFqdnLearnedValue([empty, empty, empty, empty, empty])).toThrow(/at most 4 keys/);
    expect(() => encodeFqdnLearnedKey({ ...lk, addr: Uint8Array.of(1, 2, 3) })).toThrow(/4 or 16 bytes/);
  });

  it('decodes a DNS record laid out at the C offsets, and its wire-form name', () => {
    const b = Buffer.alloc(SIZES.weir_dns_event);
    b.writeUInt8(c('WEIR_REC_DNS'), OFFSETS['weir_dns_event.type']);
    b.writeUInt8(c('WEIR_DNS_EV_REFUSED'), OFFSETS['weir_dns_event.kind']);
    b.writeUInt8(10, OFFSETS['weir_dns_event.family']);
    b.writeUInt8(c('WEIR_DNS_REFUSED_SLOTS'), OFFSETS['weir_dns_event.reason']);
    b.writeUInt32LE(12, OFFSETS['weir_dns_event.endpoint_id']);
    b.writeUInt32LE(3, OFFSETS['weir_dns_event.count']);
    b.writeBigUInt64LE(77n, OFFSETS['weir_dns_event.qhash']);
    b.writeUInt8(0x20, OFFSETS['weir_dns_event.addr']);
    b.writeUInt16LE(28, OFFSETS['weir_dns_event.qtype']);
    const wire = Buffer.from([3, 0x41, 0x70, 0x49, 7, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0]);
    wire.copy(b, OFFSETS['weir_dns_event.name']);
    b.fill(0x55, OFFSETS['weir_dns_event.name'] + wire.length); // bytes past name_len are not the name
    b.writeUInt16LE(wire.length, OFFSETS['weir_dns_event.name_len']);
    const e = decodeDnsEvent(b);
    expect(e).toMatchObject({ type: 2, kind: 2, family: 10, reason: 1, endpointId: 12, count: 3, qhash: 77n, qtype: 28, name: 'api.example' });
    expect(e.addr.length).toBe(16);
    expect(e.addr[0]).toBe(0x20);
    expect(e.nameWire.length).toBe(wire.length);
    expect(wireNameToText(Uint8Array.of(1, 0x2e, 2, 0x61, 0x0a, 0))).toBe('\\046.a\\010');
    expect(wireNameToText(Uint8Array.of(3, 0x61, 0xc0, 0x0c))).toBeNull(); // ends in a pointer
    expect(wireNameToText(Uint8Array.of(0))).toBe('');
    expect(() => decodeDnsEvent(Buffer.alloc(SIZES.weir_dns_event - 1))).toThrow(/too short/);
  });

  it('a port class with more ranges than the kernel holds is refused', () => {
    const ranges = Array.from({ length: PORT_RANGES_MAX + 1 }, (_, i) => ({ proto: 6, bits: 2, lo: i * 2, hi: i * 2 }));
    expect(() => encodePortClass({ anyBits: 0, ranges })).toThrow(/at most 64 ranges/);
  });

  it('decodes an event record laid out at the C offsets', () => {
    const b = Buffer.alloc(SIZES.weir_event);
    b.writeUInt8(1, OFFSETS['weir_event.type']);
    b.writeUInt8(2, OFFSETS['weir_event.verdict']);
    b.writeUInt32LE(42, OFFSETS['weir_event.pid']);
    b.writeUInt16LE(443, OFFSETS['weir_event.dport']);
    b.write('curl', OFFSETS['weir_event.comm']);
    b.writeBigUInt64LE(99n, OFFSETS['weir_event.cgroup_id']);
    const e = decodeEvent(b);
    expect(e).toMatchObject({ type: 1, verdict: 2, pid: 42, dport: 443, comm: 'curl', cgroupId: 99n });
  });
});
