// TypeScript encoders and decoders for the structs in bpf/include/weir_abi.h.
// Offsets are written out here once; test/unit/abi.test.ts checks every size,
// offset and code against the table the addon builds from the C header.
import { endianness } from 'node:os';
import { FANOUT } from './trie.js';

const LITTLE_ENDIAN = endianness() === 'LE';

export const SIZES = {
  weir_pod_value: 16,
  weir_pod_ip_key: 20,
  weir_pod_ip_value: 4,
  weir_set_value: 16,
  weir_trie_node: 1024,
  weir_trie_tail: 40,
  weir_port_range: 8,
  weir_port_class: 8 + 8 * 64,
  weir_counter: 16,
  weir_ct_key: 28,
  weir_ct_value: 8,
  weir_agg_key: 28,
  weir_agg_value: 16,
  weir_event: 104,
  weir_sk_owner: 24,
  weir_node_state: 24,
  weir_config: 32,
  weir_dns_event: 328,
  weir_dns_resolver_key: 20,
  weir_dns_resolver_value: 4,
  weir_dns_key: 16,
  weir_fqdn_key_value: 4,
  weir_dns_query_key: 28,
  weir_dns_query_value: 32,
  weir_fqdn_learned_key: 24,
  weir_fqdn_slot: 32,
  weir_fqdn_learned_value: 128,
} as const;

export const OFFSETS = {
  'weir_pod_value.set_id': 0,
  'weir_pod_value.endpoint_id': 4,
  'weir_pod_value.flags': 8,
  'weir_pod_ip_key.family': 0,
  'weir_pod_ip_key.addr': 4,
  'weir_pod_ip_value.endpoint_id': 0,
  'weir_set_value.root4': 0,
  'weir_set_value.root6': 4,
  'weir_set_value.flags': 8,
  'weir_set_value.generation': 12,
  'weir_trie_tail.addr': 0,
  'weir_trie_tail.mask': 16,
  'weir_trie_tail.hit': 32,
  'weir_trie_tail.miss': 36,
  'weir_port_class.any_bits': 0,
  'weir_port_class.nranges': 1,
  'weir_port_class.r': 8,
  'weir_port_range.proto': 0,
  'weir_port_range.bits': 1,
  'weir_port_range.lo': 2,
  'weir_port_range.hi': 4,
  'weir_counter.packets': 0,
  'weir_counter.bytes': 8,
  'weir_ct_key.endpoint_id': 0,
  'weir_ct_key.family': 4,
  'weir_ct_key.proto': 5,
  'weir_ct_key.local_port': 6,
  'weir_ct_key.remote_port': 8,
  'weir_ct_key.remote': 12,
  'weir_ct_value.last_seen_ns': 0,
  'weir_agg_key.endpoint_id': 0,
  'weir_agg_key.family': 4,
  'weir_agg_key.proto': 5,
  'weir_agg_key.verdict': 6,
  'weir_agg_key.reason': 7,
  'weir_agg_key.dport': 8,
  'weir_agg_key.dst': 12,
  'weir_agg_value.last_sent_ns': 0,
  'weir_agg_value.pending': 8,
  'weir_event.type': 0,
  'weir_event.verdict': 1,
  'weir_event.reason': 2,
  'weir_event.hook': 3,
  'weir_event.family': 4,
  'weir_event.proto': 5,
  'weir_event.bits': 6,
  'weir_event.endpoint_id': 8,
  'weir_event.set_id': 12,
  'weir_event.generation': 16,
  'weir_event.pid': 20,
  'weir_event.count': 24,
  'weir_event.cgroup_id': 32,
  'weir_event.ts_ns': 40,
  'weir_event.src': 48,
  'weir_event.dst': 64,
  'weir_event.sport': 80,
  'weir_event.dport': 82,
  'weir_event.comm': 88,
  'weir_sk_owner.pid': 0,
  'weir_sk_owner.comm': 8,
  'weir_node_state.flags': 0,
  'weir_node_state.updated_ns': 8,
  'weir_node_state.dns_secret': 16,
  'weir_config.pod_level_lo': 0,
  'weir_config.pod_level_hi': 4,
  'weir_config.event_interval_ns': 8,
  'weir_config.ct_timeout_ns': 16,
  'weir_config.max_endpoints': 24,
  'weir_config.flags': 28,
  'weir_dns_event.type': 0,
  'weir_dns_event.kind': 1,
  'weir_dns_event.family': 2,
  'weir_dns_event.reason': 3,
  'weir_dns_event.endpoint_id': 4,
  'weir_dns_event.set_id': 8,
  'weir_dns_event.ttl': 12,
  'weir_dns_event.count': 16,
  'weir_dns_event.pid': 20,
  'weir_dns_event.ts_ns': 24,
  'weir_dns_event.qhash': 32,
  'weir_dns_event.expires_ns': 40,
  'weir_dns_event.addr': 48,
  'weir_dns_event.name_len': 64,
  'weir_dns_event.qtype': 66,
  'weir_dns_event.name': 72,
  'weir_dns_resolver_key.family': 0,
  'weir_dns_resolver_key.port': 2,
  'weir_dns_resolver_key.addr': 4,
  'weir_dns_resolver_value.flags': 0,
  'weir_dns_key.set_id': 0,
  'weir_dns_key.kind': 4,
  'weir_dns_key.hash': 8,
  'weir_fqdn_key_value.class_id': 0,
  'weir_dns_query_key.endpoint_id': 0,
  'weir_dns_query_key.family': 4,
  'weir_dns_query_key.pod_port': 6,
  'weir_dns_query_key.dns_id': 8,
  'weir_dns_query_key.resolver_port': 10,
  'weir_dns_query_key.resolver': 12,
  'weir_dns_query_value.matched': 0,
  'weir_dns_query_value.qhash': 16,
  'weir_dns_query_value.expires_ns': 24,
  'weir_fqdn_learned_key.endpoint_id': 0,
  'weir_fqdn_learned_key.family': 4,
  'weir_fqdn_learned_key.addr': 8,
  'weir_fqdn_slot.kind': 0,
  'weir_fqdn_slot.hash': 8,
  'weir_fqdn_slot.expires_ns': 16,
  'weir_fqdn_slot.last_use_ns': 24,
  'weir_fqdn_learned_value.slot': 0,
} as const;

export const CONST = {
  WEIR_ABI_VERSION: 1,
  WEIR_VERDICT__MAX: 5,
  WEIR_COUNTER_STRIDE: 10,
  WEIR_COUNT_PACKETS: 0,
  WEIR_COUNT_SOCKETS: 1,
  WEIR_PORT_RANGES_MAX: 64,
  WEIR_SLOT_CHILD: 0x80000000,
  WEIR_SLOT_TAIL: 0x40000000,
  WEIR_REC_VERDICT: 1,
  WEIR_REC_DNS: 2,
  WEIR_STAT__MAX: 18,
  WEIR_POD_F_TRACK_INGRESS: 0x1,
  WEIR_POD_F_ADDR_MISSING: 0x2,
  WEIR_SET_F_FQDN: 0x10,
  WEIR_NODE_F_CT_FULL: 0x1,
  WEIR_CFG_F_EVENTS_ALLOW: 0x1,
  WEIR_DNS_EV_LEARNED: 1,
  WEIR_DNS_EV_REFUSED: 2,
  WEIR_DNS_EV_INTENT: 3,
  WEIR_DNS_REFUSED_SLOTS: 1,
  WEIR_DNS_REFUSED_MAP_FULL: 2,
  WEIR_DNS_NAME_MAX: 256,
  WEIR_DNS_KEY_EXACT: 1,
  WEIR_DNS_KEY_WILDCARD: 2,
  WEIR_FQDN_SLOTS: 4,
  WEIR_DNS_QUERY_TIMEOUT_S: 5,
  WEIR_FQDN_TTL_MIN_S: 5,
  WEIR_FQDN_TTL_MAX_S: 3600,
  WEIR_FQDN_GRACE_S: 5,
  WEIR_DEFAULT_DNS_RESOLVERS: 256,
  WEIR_DEFAULT_FQDN_KEYS: 16384,
  WEIR_DEFAULT_DNS_QUERIES: 16384,
  WEIR_DEFAULT_FQDN_LEARNED: 32768,
} as const;

export const STAT_NAMES = [
  'events_sent',
  'events_lost',
  'events_aggregated',
  'parse_errors',
  'ct_insert',
  'ct_insert_failed',
  'agg_insert_failed',
  'fragments',
  'l4_unknown',
  'dns_queries',
  'dns_queries_not_allowed',
  'dns_queries_invalid',
  'dns_answers',
  'dns_ignored_no_query',
  'dns_ignored_rcode',
  'dns_ignored_invalid',
  'fqdn_learned',
  'fqdn_refused',
] as const;
export type StatName = (typeof STAT_NAMES)[number];

export const HOOK_NAMES: Record<number, string> = {
  1: 'connect4',
  2: 'connect6',
  3: 'sendmsg4',
  4: 'sendmsg6',
  5: 'egress',
  6: 'ingress',
};

export function u32Key(i: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(i >>> 0);
  return b;
}

export function u64Key(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
}

export interface PodValue {
  setId: number;
  endpointId: number;
  flags: number;
}

export function encodePodValue(v: PodValue): Buffer {
  const b = Buffer.alloc(SIZES.weir_pod_value);
  b.writeUInt32LE(v.setId, OFFSETS['weir_pod_value.set_id']);
  b.writeUInt32LE(v.endpointId, OFFSETS['weir_pod_value.endpoint_id']);
  b.writeUInt32LE(v.flags, OFFSETS['weir_pod_value.flags']);
  return b;
}

export function decodePodValue(b: Buffer): PodValue {
  return {
    setId: b.readUInt32LE(OFFSETS['weir_pod_value.set_id']),
    endpointId: b.readUInt32LE(OFFSETS['weir_pod_value.endpoint_id']),
    flags: b.readUInt32LE(OFFSETS['weir_pod_value.flags']),
  };
}

export interface PodIpKey {
  family: number; // AF_INET (2) or AF_INET6 (10)
  addr: Uint8Array; // 4 or 16 bytes
}

export function encodePodIpKey(k: PodIpKey): Buffer {
  const b = Buffer.alloc(SIZES.weir_pod_ip_key);
  b.writeUInt8(k.family, OFFSETS['weir_pod_ip_key.family']);
  Buffer.from(k.addr).copy(b, OFFSETS['weir_pod_ip_key.addr']);
  return b;
}

export function decodePodIpKey(b: Buffer): PodIpKey {
  const family = b.readUInt8(OFFSETS['weir_pod_ip_key.family']);
  const o = OFFSETS['weir_pod_ip_key.addr'];
  return { family, addr: Uint8Array.from(b.subarray(o, o + (family === 2 ? 4 : 16))) };
}

export function encodePodIpValue(endpointId: number): Buffer {
  const b = Buffer.alloc(SIZES.weir_pod_ip_value);
  b.writeUInt32LE(endpointId, OFFSETS['weir_pod_ip_value.endpoint_id']);
  return b;
}

export function decodePodIpValue(b: Buffer): number {
  return b.readUInt32LE(OFFSETS['weir_pod_ip_value.endpoint_id']);
}

export interface SetValue {
  root4: number;
  root6: number;
  flags: number;
  generation: number;
}

export function encodeSetValue(v: SetValue): Buffer {
  const b = Buffer.alloc(SIZES.weir_set_value);
  b.writeUInt32LE(v.root4 >>> 0, OFFSETS['weir_set_value.root4']);
  b.writeUInt32LE(v.root6 >>> 0, OFFSETS['weir_set_value.root6']);
  b.writeUInt32LE(v.flags >>> 0, OFFSETS['weir_set_value.flags']);
  b.writeUInt32LE(v.generation >>> 0, OFFSETS['weir_set_value.generation']);
  return b;
}

export function decodeSetValue(b: Buffer): SetValue {
  return {
    root4: b.readUInt32LE(OFFSETS['weir_set_value.root4']),
    root6: b.readUInt32LE(OFFSETS['weir_set_value.root6']),
    flags: b.readUInt32LE(OFFSETS['weir_set_value.flags']),
    generation: b.readUInt32LE(OFFSETS['weir_set_value.generation']),
  };
}

export function encodeTrieNode(slots: Uint32Array): Buffer {
  if (slots.length !== FANOUT) throw new RangeError(`trie node needs ${FANOUT} slots, got ${slots.length}`);
  if (LITTLE_ENDIAN) return Buffer.from(new Uint8Array(slots.buffer, slots.byteOffset, SIZES.weir_trie_node)); // a copy
  const b = Buffer.alloc(SIZES.weir_trie_node);
  for (let i = 0; i < FANOUT; i++) b.writeUInt32LE((slots[i] ?? 0) >>> 0, i * 4);
  return b;
}

export function decodeTrieNode(b: Buffer): Uint32Array {
  const out = new Uint32Array(FANOUT);
  for (let i = 0; i < FANOUT; i++) out[i] = b.readUInt32LE(i * 4);
  return out;
}

export interface TrieTailValue {
  /** The prefix's address bytes (4 or 16), masked. */
  addr: Uint8Array;
  len: number;
  hit: number;
  miss: number;
}

/** A tail's whole 16-byte address and mask: IPv4 in the first 4 bytes, the rest of the mask 0. */
export function encodeTrieTail(t: TrieTailValue): Buffer {
  const b = Buffer.alloc(SIZES.weir_trie_tail);
  const ao = OFFSETS['weir_trie_tail.addr'];
  const mo = OFFSETS['weir_trie_tail.mask'];
  for (let bit = 0; bit < t.len; bit += 8) {
    const i = bit >> 3;
    const m = t.len - bit >= 8 ? 0xff : (0xff << (8 - (t.len - bit))) & 0xff;
    b[mo + i] = m;
    b[ao + i] = (t.addr[i] ?? 0) & m;
  }
  b.writeUInt32LE(t.hit >>> 0, OFFSETS['weir_trie_tail.hit']);
  b.writeUInt32LE(t.miss >>> 0, OFFSETS['weir_trie_tail.miss']);
  return b;
}

export function decodeTrieTail(b: Buffer): { addr: Uint8Array; mask: Uint8Array; hit: number; miss: number } {
  const ao = OFFSETS['weir_trie_tail.addr'];
  const mo = OFFSETS['weir_trie_tail.mask'];
  return {
    addr: Uint8Array.from(b.subarray(ao, ao + 16)),
    mask: Uint8Array.from(b.subarray(mo, mo + 16)),
    hit: b.readUInt32LE(OFFSETS['weir_trie_tail.hit']),
    miss: b.readUInt32LE(OFFSETS['weir_trie_tail.miss']),
  };
}

export interface PortClassValue {
  anyBits: number;
  ranges: { proto: number; bits: number; lo: number; hi: number }[];
}

export function encodePortClass(c: PortClassValue): Buffer {
  if (c.ranges.length > CONST.WEIR_PORT_RANGES_MAX) {
    throw new RangeError(`a port class holds at most ${CONST.WEIR_PORT_RANGES_MAX} ranges, got ${c.ranges.length}`);
  }
  const b = Buffer.alloc(SIZES.weir_port_class);
  b.writeUInt8(c.anyBits, OFFSETS['weir_port_class.any_bits']);
  b.writeUInt8(c.ranges.length, OFFSETS['weir_port_class.nranges']);
  c.ranges.forEach((r, i) => {
    const o = OFFSETS['weir_port_class.r'] + i * SIZES.weir_port_range;
    b.writeUInt8(r.proto, o + OFFSETS['weir_port_range.proto']);
    b.writeUInt8(r.bits, o + OFFSETS['weir_port_range.bits']);
    b.writeUInt16LE(r.lo, o + OFFSETS['weir_port_range.lo']);
    b.writeUInt16LE(r.hi, o + OFFSETS['weir_port_range.hi']);
  });
  return b;
}

export function decodePortClass(b: Buffer): PortClassValue {
  const n = b.readUInt8(OFFSETS['weir_port_class.nranges']);
  const ranges: PortClassValue['ranges'] = [];
  for (let i = 0; i < n; i++) {
    const o = OFFSETS['weir_port_class.r'] + i * SIZES.weir_port_range;
    ranges.push({
      proto: b.readUInt8(o + OFFSETS['weir_port_range.proto']),
      bits: b.readUInt8(o + OFFSETS['weir_port_range.bits']),
      lo: b.readUInt16LE(o + OFFSETS['weir_port_range.lo']),
      hi: b.readUInt16LE(o + OFFSETS['weir_port_range.hi']),
    });
  }
  return { anyBits: b.readUInt8(OFFSETS['weir_port_class.any_bits']), ranges };
}

export interface Counter {
  packets: bigint;
  bytes: bigint;
}

/** Sums a per-CPU weir_counter value (each CPU's slot is 8-byte aligned). */
export function decodePerCpuCounter(b: Buffer, cpus: number): Counter {
  let packets = 0n;
  let bytes = 0n;
  const stride = SIZES.weir_counter; // already a multiple of 8
  for (let c = 0; c < cpus; c++) {
    packets += b.readBigUInt64LE(c * stride + OFFSETS['weir_counter.packets']);
    bytes += b.readBigUInt64LE(c * stride + OFFSETS['weir_counter.bytes']);
  }
  return { packets, bytes };
}

export function decodePerCpuU64(b: Buffer, cpus: number): bigint {
  let v = 0n;
  for (let c = 0; c < cpus; c++) v += b.readBigUInt64LE(c * 8);
  return v;
}

export function counterIndex(endpointId: number, kind: number, verdict: number): number {
  return endpointId * CONST.WEIR_COUNTER_STRIDE + kind * CONST.WEIR_VERDICT__MAX + verdict;
}

export interface CtKey {
  endpointId: number;
  family: number; // AF_INET (2) or AF_INET6 (10)
  proto: number;
  localPort: number; // host order here; stored in network order
  remotePort: number;
  remote: Uint8Array;
}

export function encodeCtKey(k: CtKey): Buffer {
  const b = Buffer.alloc(SIZES.weir_ct_key);
  b.writeUInt32LE(k.endpointId, OFFSETS['weir_ct_key.endpoint_id']);
  b.writeUInt8(k.family, OFFSETS['weir_ct_key.family']);
  b.writeUInt8(k.proto, OFFSETS['weir_ct_key.proto']);
  b.writeUInt16BE(k.localPort, OFFSETS['weir_ct_key.local_port']);
  b.writeUInt16BE(k.remotePort, OFFSETS['weir_ct_key.remote_port']);
  Buffer.from(k.remote).copy(b, OFFSETS['weir_ct_key.remote']);
  return b;
}

export function decodeCtKey(b: Buffer): CtKey {
  return {
    endpointId: b.readUInt32LE(OFFSETS['weir_ct_key.endpoint_id']),
    family: b.readUInt8(OFFSETS['weir_ct_key.family']),
    proto: b.readUInt8(OFFSETS['weir_ct_key.proto']),
    localPort: b.readUInt16BE(OFFSETS['weir_ct_key.local_port']),
    remotePort: b.readUInt16BE(OFFSETS['weir_ct_key.remote_port']),
    remote: Uint8Array.from(b.subarray(OFFSETS['weir_ct_key.remote'], OFFSETS['weir_ct_key.remote'] + 16)),
  };
}

export interface RawEvent {
  type: number;
  verdict: number;
  reason: number;
  hook: number;
  family: number;
  proto: number;
  bits: number;
  endpointId: number;
  setId: number;
  generation: number;
  pid: number;
  count: number;
  cgroupId: bigint;
  tsNs: bigint;
  src: Uint8Array;
  dst: Uint8Array;
  sport: number;
  dport: number;
  comm: string;
}

export function decodeEvent(b: Buffer): RawEvent {
  if (b.length < SIZES.weir_event) throw new RangeError(`event record too short: ${b.length} bytes`);
  const o = OFFSETS;
  const commRaw = b.subarray(o['weir_event.comm'], o['weir_event.comm'] + 16);
  const nul = commRaw.indexOf(0);
  return {
    type: b.readUInt8(o['weir_event.type']),
    verdict: b.readUInt8(o['weir_event.verdict']),
    reason: b.readUInt8(o['weir_event.reason']),
    hook: b.readUInt8(o['weir_event.hook']),
    family: b.readUInt8(o['weir_event.family']),
    proto: b.readUInt8(o['weir_event.proto']),
    bits: b.readUInt8(o['weir_event.bits']),
    endpointId: b.readUInt32LE(o['weir_event.endpoint_id']),
    setId: b.readUInt32LE(o['weir_event.set_id']),
    generation: b.readUInt32LE(o['weir_event.generation']),
    pid: b.readUInt32LE(o['weir_event.pid']),
    count: b.readUInt32LE(o['weir_event.count']),
    cgroupId: b.readBigUInt64LE(o['weir_event.cgroup_id']),
    tsNs: b.readBigUInt64LE(o['weir_event.ts_ns']),
    src: Uint8Array.from(b.subarray(o['weir_event.src'], o['weir_event.src'] + 16)),
    dst: Uint8Array.from(b.subarray(o['weir_event.dst'], o['weir_event.dst'] + 16)),
    sport: b.readUInt16LE(o['weir_event.sport']),
    dport: b.readUInt16LE(o['weir_event.dport']),
    comm: commRaw.subarray(0, nul < 0 ? 16 : nul).toString('utf8'),
  };
}

export interface Config {
  podLevelLo: number;
  podLevelHi: number;
  eventIntervalNs: bigint;
  ctTimeoutNs: bigint;
  maxEndpoints: number;
  flags: number;
}

export function encodeConfig(c: Config): Buffer {
  const b = Buffer.alloc(SIZES.weir_config);
  b.writeUInt32LE(c.podLevelLo, OFFSETS['weir_config.pod_level_lo']);
  b.writeUInt32LE(c.podLevelHi, OFFSETS['weir_config.pod_level_hi']);
  b.writeBigUInt64LE(c.eventIntervalNs, OFFSETS['weir_config.event_interval_ns']);
  b.writeBigUInt64LE(c.ctTimeoutNs, OFFSETS['weir_config.ct_timeout_ns']);
  b.writeUInt32LE(c.maxEndpoints, OFFSETS['weir_config.max_endpoints']);
  b.writeUInt32LE(c.flags, OFFSETS['weir_config.flags']);
  return b;
}

// ---- node state -------------------------------------------------------------

export interface NodeState {
  flags: number;
  updatedNs: bigint;
  /** Key of the DNS name hash; 0n = not set yet (nothing is learned). */
  dnsSecret: bigint;
}

export function encodeNodeState(v: NodeState): Buffer {
  const b = Buffer.alloc(SIZES.weir_node_state);
  b.writeUInt32LE(v.flags >>> 0, OFFSETS['weir_node_state.flags']);
  b.writeBigUInt64LE(v.updatedNs, OFFSETS['weir_node_state.updated_ns']);
  b.writeBigUInt64LE(v.dnsSecret, OFFSETS['weir_node_state.dns_secret']);
  return b;
}

export function decodeNodeState(b: Buffer): NodeState {
  return {
    flags: b.readUInt32LE(OFFSETS['weir_node_state.flags']),
    updatedNs: b.readBigUInt64LE(OFFSETS['weir_node_state.updated_ns']),
    dnsSecret: b.readBigUInt64LE(OFFSETS['weir_node_state.dns_secret']),
  };
}

// ---- DNS-aware egress (FQDN peers) -------------------------------------------

/** Copies an address (4 or 16 bytes) into b at off; IPv4 leaves the other 12 bytes zero. */
function putAddr(b: Buffer, off: number, addr: Uint8Array): void {
  if (addr.length !== 4 && addr.length !== 16) throw new RangeError(`an address has 4 or 16 bytes, got ${addr.length}`);
  Buffer.from(addr).copy(b, off);
}

function getAddr(b: Buffer, off: number, family: number): Uint8Array {
  return Uint8Array.from(b.subarray(off, off + (family === 2 ? 4 : 16)));
}

export interface DnsResolverKey {
  family: number; // AF_INET (2) or AF_INET6 (10)
  /** The port the resolver answers on, host order. */
  port: number;
  addr: Uint8Array;
}

export function encodeDnsResolverKey(k: DnsResolverKey): Buffer {
  const b = Buffer.alloc(SIZES.weir_dns_resolver_key);
  b.writeUInt8(k.family, OFFSETS['weir_dns_resolver_key.family']);
  b.writeUInt16LE(k.port, OFFSETS['weir_dns_resolver_key.port']);
  putAddr(b, OFFSETS['weir_dns_resolver_key.addr'], k.addr);
  return b;
}

export function decodeDnsResolverKey(b: Buffer): DnsResolverKey {
  const family = b.readUInt8(OFFSETS['weir_dns_resolver_key.family']);
  return { family, port: b.readUInt16LE(OFFSETS['weir_dns_resolver_key.port']), addr: getAddr(b, OFFSETS['weir_dns_resolver_key.addr'], family) };
}

export function encodeDnsResolverValue(flags = 0): Buffer {
  const b = Buffer.alloc(SIZES.weir_dns_resolver_value);
  b.writeUInt32LE(flags >>> 0, OFFSETS['weir_dns_resolver_value.flags']);
  return b;
}

export interface DnsKey {
  setId: number;
  /** WEIR_DNS_KEY_EXACT (1) or WEIR_DNS_KEY_WILDCARD (2). */
  kind: number;
  /** Exact: the hash of the name; wildcard `*.s`: the hash of s (src/policy/fqdn-hash.ts). */
  hash: bigint;
}

export function encodeDnsKey(k: DnsKey): Buffer {
  const b = Buffer.alloc(SIZES.weir_dns_key);
  b.writeUInt32LE(k.setId >>> 0, OFFSETS['weir_dns_key.set_id']);
  b.writeUInt8(k.kind, OFFSETS['weir_dns_key.kind']);
  b.writeBigUInt64LE(k.hash, OFFSETS['weir_dns_key.hash']);
  return b;
}

export function decodeDnsKey(b: Buffer, at = 0): DnsKey {
  return {
    setId: b.readUInt32LE(at + OFFSETS['weir_dns_key.set_id']),
    kind: b.readUInt8(at + OFFSETS['weir_dns_key.kind']),
    hash: b.readBigUInt64LE(at + OFFSETS['weir_dns_key.hash']),
  };
}

export function encodeFqdnKeyValue(classId: number): Buffer {
  const b = Buffer.alloc(SIZES.weir_fqdn_key_value);
  b.writeUInt32LE(classId >>> 0, OFFSETS['weir_fqdn_key_value.class_id']);
  return b;
}

export function decodeFqdnKeyValue(b: Buffer): number {
  return b.readUInt32LE(OFFSETS['weir_fqdn_key_value.class_id']);
}

export interface DnsQueryKey {
  endpointId: number;
  family: number;
  podPort: number;
  dnsId: number;
  resolverPort: number;
  resolver: Uint8Array;
}

export function encodeDnsQueryKey(k: DnsQueryKey): Buffer {
  const b = Buffer.alloc(SIZES.weir_dns_query_key);
  b.writeUInt32LE(k.endpointId >>> 0, OFFSETS['weir_dns_query_key.endpoint_id']);
  b.writeUInt8(k.family, OFFSETS['weir_dns_query_key.family']);
  b.writeUInt16LE(k.podPort, OFFSETS['weir_dns_query_key.pod_port']);
  b.writeUInt16LE(k.dnsId, OFFSETS['weir_dns_query_key.dns_id']);
  b.writeUInt16LE(k.resolverPort, OFFSETS['weir_dns_query_key.resolver_port']);
  putAddr(b, OFFSETS['weir_dns_query_key.resolver'], k.resolver);
  return b;
}

export function decodeDnsQueryKey(b: Buffer): DnsQueryKey {
  const family = b.readUInt8(OFFSETS['weir_dns_query_key.family']);
  return {
    endpointId: b.readUInt32LE(OFFSETS['weir_dns_query_key.endpoint_id']),
    family,
    podPort: b.readUInt16LE(OFFSETS['weir_dns_query_key.pod_port']),
    dnsId: b.readUInt16LE(OFFSETS['weir_dns_query_key.dns_id']),
    resolverPort: b.readUInt16LE(OFFSETS['weir_dns_query_key.resolver_port']),
    resolver: getAddr(b, OFFSETS['weir_dns_query_key.resolver'], family),
  };
}

export interface DnsQueryValue {
  matched: DnsKey;
  qhash: bigint;
  expiresNs: bigint;
}

export function encodeDnsQueryValue(v: DnsQueryValue): Buffer {
  const b = Buffer.alloc(SIZES.weir_dns_query_value);
  encodeDnsKey(v.matched).copy(b, OFFSETS['weir_dns_query_value.matched']);
  b.writeBigUInt64LE(v.qhash, OFFSETS['weir_dns_query_value.qhash']);
  b.writeBigUInt64LE(v.expiresNs, OFFSETS['weir_dns_query_value.expires_ns']);
  return b;
}

export function decodeDnsQueryValue(b: Buffer): DnsQueryValue {
  return {
    matched: decodeDnsKey(b, OFFSETS['weir_dns_query_value.matched']),
    qhash: b.readBigUInt64LE(OFFSETS['weir_dns_query_value.qhash']),
    expiresNs: b.readBigUInt64LE(OFFSETS['weir_dns_query_value.expires_ns']),
  };
}

export interface FqdnLearnedKey {
  endpointId: number;
  family: number;
  addr: Uint8Array;
}

export function encodeFqdnLearnedKey(k: FqdnLearnedKey): Buffer {
  const b = Buffer.alloc(SIZES.weir_fqdn_learned_key);
  b.writeUInt32LE(k.endpointId >>> 0, OFFSETS['weir_fqdn_learned_key.endpoint_id']);
  b.writeUInt8(k.family, OFFSETS['weir_fqdn_learned_key.family']);
  putAddr(b, OFFSETS['weir_fqdn_learned_key.addr'], k.addr);
  return b;
}

export function decodeFqdnLearnedKey(b: Buffer): FqdnLearnedKey {
  const family = b.readUInt8(OFFSETS['weir_fqdn_learned_key.family']);
  return {
    endpointId: b.readUInt32LE(OFFSETS['weir_fqdn_learned_key.endpoint_id']),
    family,
    addr: getAddr(b, OFFSETS['weir_fqdn_learned_key.addr'], family),
  };
}

export interface FqdnSlot {
  /** WEIR_DNS_KEY_*; 0 = empty. */
  kind: number;
  hash: bigint;
  expiresNs: bigint;
  lastUseNs: bigint;
}

/** The WEIR_FQDN_SLOTS slots of a weir_fqdn_learned value, empty ones included. */
export function decodeFqdnLearnedValue(b: Buffer): FqdnSlot[] {
  const out: FqdnSlot[] = [];
  for (let i = 0; i < CONST.WEIR_FQDN_SLOTS; i++) {
    const o = OFFSETS['weir_fqdn_learned_value.slot'] + i * SIZES.weir_fqdn_slot;
    out.push({
      kind: b.readUInt8(o + OFFSETS['weir_fqdn_slot.kind']),
      hash: b.readBigUInt64LE(o + OFFSETS['weir_fqdn_slot.hash']),
      expiresNs: b.readBigUInt64LE(o + OFFSETS['weir_fqdn_slot.expires_ns']),
      lastUseNs: b.readBigUInt64LE(o + OFFSETS['weir_fqdn_slot.last_use_ns']),
    });
  }
  return out;
}

export function encodeFqdnLearnedValue(slots: readonly FqdnSlot[]): Buffer {
  if (slots.length > CONST.WEIR_FQDN_SLOTS) throw new RangeError(`an address holds at most ${CONST.WEIR_FQDN_SLOTS} keys, got ${slots.length}`);
  const b = Buffer.alloc(SIZES.weir_fqdn_learned_value);
  slots.forEach((s, i) => {
    const o = OFFSETS['weir_fqdn_learned_value.slot'] + i * SIZES.weir_fqdn_slot;
    b.writeUInt8(s.kind, o + OFFSETS['weir_fqdn_slot.kind']);
    b.writeBigUInt64LE(s.hash, o + OFFSETS['weir_fqdn_slot.hash']);
    b.writeBigUInt64LE(s.expiresNs, o + OFFSETS['weir_fqdn_slot.expires_ns']);
    b.writeBigUInt64LE(s.lastUseNs, o + OFFSETS['weir_fqdn_slot.last_use_ns']);
  });
  return b;
}

export type DnsEventKind = 'learned' | 'refused' | 'intent';
export const DNS_EVENT_KINDS: Record<number, DnsEventKind> = {
  [CONST.WEIR_DNS_EV_LEARNED]: 'learned',
  [CONST.WEIR_DNS_EV_REFUSED]: 'refused',
  [CONST.WEIR_DNS_EV_INTENT]: 'intent',
};

/** A WEIR_REC_DNS ring record (struct weir_dns_event). */
export interface RawDnsEvent {
  type: number;
  /** WEIR_DNS_EV_*; see DNS_EVENT_KINDS. */
  kind: number;
  family: number;
  /** REFUSED: WEIR_DNS_REFUSED_*; else 0. */
  reason: number;
  endpointId: number;
  setId: number;
  ttl: number;
  count: number;
  pid: number;
  tsNs: bigint;
  qhash: bigint;
  expiresNs: bigint;
  /** LEARNED, REFUSED: the address; INTENT: the resolver (4 or 16 bytes by family). */
  addr: Uint8Array;
  qtype: number;
  /** The question name in wire form, as the record carries it. */
  nameWire: Uint8Array;
  /** The question name in presentation form (lower case, no trailing dot); null when it cannot be read. */
  name: string | null;
}

/**
 * A name in DNS wire form (length-prefixed labels, ending in a zero byte)
 * as dotted text, lower-cased; labels with bytes outside printable ASCII,
 * dots or backslashes are escaped as \\DDD. null when it is not a complete
 * uncompressed name (a response's question may end in a pointer).
 */
export function wireNameToText(wire: Uint8Array): string | null {
  const labels: string[] = [];
  let p = 0;
  while (p < wire.length) {
    const len = wire[p] as number;
    if (len === 0) return labels.join('.');
    if (len > 63 || p + 1 + len > wire.length) return null;
    let l = '';
    for (const c of wire.subarray(p + 1, p + 1 + len)) {
      const lc = c >= 0x41 && c <= 0x5a ? c + 0x20 : c;
      l += lc > 0x20 && lc < 0x7f && lc !== 0x2e && lc !== 0x5c ? String.fromCharCode(lc) : `\\${String(lc).padStart(3, '0')}`;
    }
    labels.push(l);
    p += 1 + len;
  }
  return null;
}

export function decodeDnsEvent(b: Buffer): RawDnsEvent {
  if (b.length < SIZES.weir_dns_event) throw new RangeError(`DNS record too short: ${b.length} bytes`);
  const o = OFFSETS;
  const family = b.readUInt8(o['weir_dns_event.family']);
  const nameLen = Math.min(b.readUInt16LE(o['weir_dns_event.name_len']), CONST.WEIR_DNS_NAME_MAX);
  const nameWire = Uint8Array.from(b.subarray(o['weir_dns_event.name'], o['weir_dns_event.name'] + nameLen));
  return {
    type: b.readUInt8(o['weir_dns_event.type']),
    kind: b.readUInt8(o['weir_dns_event.kind']),
    family,
    reason: b.readUInt8(o['weir_dns_event.reason']),
    endpointId: b.readUInt32LE(o['weir_dns_event.endpoint_id']),
    setId: b.readUInt32LE(o['weir_dns_event.set_id']),
    ttl: b.readUInt32LE(o['weir_dns_event.ttl']),
    count: b.readUInt32LE(o['weir_dns_event.count']),
    pid: b.readUInt32LE(o['weir_dns_event.pid']),
    tsNs: b.readBigUInt64LE(o['weir_dns_event.ts_ns']),
    qhash: b.readBigUInt64LE(o['weir_dns_event.qhash']),
    expiresNs: b.readBigUInt64LE(o['weir_dns_event.expires_ns']),
    addr: getAddr(b, o['weir_dns_event.addr'], family),
    qtype: b.readUInt16LE(o['weir_dns_event.qtype']),
    nameWire,
    name: wireNameToText(nameWire),
  };
}
