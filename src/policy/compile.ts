// The policy compiler: from the policies selecting a group of pods to the
// flattened form the datapath stores. Two stages:
//
// 1. entries(): every allow/deny rule becomes entries (prefix, excepts,
//    bits, ports), with pod peers resolved to their IPs and named ports
//    resolved against each destination pod's containers.
// 2. flatten(): for every prefix that appears anywhere (rule CIDRs and their
//    excepts), the complete port class that applies there. With this,
//    longest-prefix match gives exactly the union-of-rules semantics: for
//    an address A, the longest inserted prefix P containing A has every
//    rule CIDR containing A as an ancestor-or-self, and every except
//    containing A too, so the class stored at P is the class of A.
import type { NetworkPolicyPort, Pod } from '../model/types.js';
import { PROTO_NUMBER, type Peer, type Policy, type Rule } from './normalize.js';
import { bit, hostPrefix, prefixContains, prefixKey, type Family, type Prefix } from './prefix.js';

export const BIT_E_DENY = 0x01;
export const BIT_E_ALLOW = 0x02;
export const BIT_A_DENY = 0x04;
export const BIT_A_ALLOW = 0x08;
export const SET_F_VALID = 0x1;
export const SET_F_E_ISOLATED = 0x2;
export const SET_F_A_ISOLATED = 0x4;
/** Written fail closed: the policy never compiled (WEIR_SET_F_NOT_COMPILED). */
export const SET_F_NOT_COMPILED = 0x8;
export const PORT_RANGES_MAX = 64;

export interface PortRange {
  proto: number;
  lo: number;
  hi: number;
}

export interface Entry {
  prefix: Prefix;
  except: Prefix[];
  bits: number;
  ports: PortRange[] | null; // null: every protocol and port
  policy: Policy;
  rule: Rule;
  /** The destination pod this entry was resolved from, if any. */
  pod?: Pod;
}

/** What the compiler needs to know about the cluster. */
export interface PeerDirectory {
  /** Pods that can be egress destinations (have IPs, not host network). */
  peerPods(): Iterable<Pod>;
  namespaceLabels(name: string): Record<string, string> | undefined;
}

export class CompileError extends Error {
  constructor(
    message: string,
    readonly policyIds: string[],
  ) {
    super(message);
    this.name = 'CompileError';
  }
}

export function podIPs(pod: Pod): string[] {
  const ips = pod.status?.podIPs?.map((p) => p.ip) ?? [];
  if (ips.length === 0 && pod.status?.podIP) ips.push(pod.status.podIP);
  return ips;
}

export function ruleBits(policy: Policy, rule: Rule): number {
  if (rule.kind === 'deny') return policy.mode === 'Enforce' ? BIT_E_DENY : BIT_A_DENY;
  return policy.mode === 'Enforce' ? BIT_E_ALLOW : BIT_A_ALLOW;
}

export function setFlags(policies: Policy[]): number {
  let flags = SET_F_VALID;
  for (const p of policies) {
    if (!p.isolatesEgress) continue;
    flags |= p.mode === 'Enforce' ? SET_F_E_ISOLATED : SET_F_A_ISOLATED;
  }
  return flags;
}

/** Numeric port ranges of a rule; named ports are resolved per pod. */
function numericRanges(ports: NetworkPolicyPort[]): PortRange[] {
  const out: PortRange[] = [];
  for (const p of ports) {
    const proto = PROTO_NUMBER[p.protocol];
    if (p.port === undefined) out.push({ proto, lo: 0, hi: 65535 });
    else if (typeof p.port === 'number') out.push({ proto, lo: p.port, hi: p.endPort ?? p.port });
  }
  return out;
}

function hasNamedPorts(ports: NetworkPolicyPort[] | null): ports is NetworkPolicyPort[] {
  return ports !== null && ports.some((p) => typeof p.port === 'string');
}

/** A named port means the destination pod's container port of that name and protocol. */
export function namedRanges(ports: NetworkPolicyPort[], pod: Pod): PortRange[] {
  const out: PortRange[] = [];
  for (const p of ports) {
    if (typeof p.port !== 'string') continue;
    for (const c of [...pod.spec.containers, ...(pod.spec.initContainers ?? [])]) {
      for (const cp of c.ports ?? []) {
        if (cp.name === p.port && cp.protocol === p.protocol) {
          out.push({ proto: PROTO_NUMBER[p.protocol], lo: cp.containerPort, hi: cp.containerPort });
        }
      }
    }
  }
  return out;
}

export function podPeerMatches(peer: Peer, pod: Pod, dir: PeerDirectory): boolean {
  if (peer.type !== 'pods') return false;
  if (peer.namespace !== null && pod.metadata.namespace !== peer.namespace) return false;
  if (peer.namespaceMatch && !peer.namespaceMatch(dir.namespaceLabels(pod.metadata.namespace))) return false;
  return peer.podMatch(pod.metadata.labels);
}

const ALL4: Prefix = { family: 4, bytes: new Uint8Array(4), len: 0 };
const ALL6: Prefix = { family: 6, bytes: new Uint8Array(16), len: 0 };

function inBlock(p: Prefix, cidr: Prefix, except: Prefix[]): boolean {
  return prefixContains(cidr, p) && !except.some((e) => prefixContains(e, p));
}

/** Stage 1: the entries of every rule of the given policies. */
export function entries(policies: Policy[], dir: PeerDirectory): Entry[] {
  const out: Entry[] = [];
  let pods: Pod[] | undefined;
  const allPods = (): Pod[] => (pods ??= [...dir.peerPods()]);

  for (const policy of policies) {
    for (const rule of policy.rules) {
      const bits = ruleBits(policy, rule);
      const numeric = rule.ports === null ? null : numericRanges(rule.ports);
      const named = hasNamedPorts(rule.ports) ? rule.ports : null;
      const add = (prefix: Prefix, except: Prefix[], ports: PortRange[] | null, pod?: Pod): void => {
        if (ports !== null && ports.length === 0) return; // matches nothing
        const e: Entry = { prefix, except, bits, ports, policy, rule };
        if (pod) e.pod = pod;
        out.push(e);
      };
      // Named ports only exist on pods: for a destination that is not a
      // pod the numeric ports of the rule apply, for a pod both.
      const podEntries = (pod: Pod, filter?: (p: Prefix) => boolean): void => {
        const ports = named ? [...(numeric ?? []), ...namedRanges(named, pod)] : numeric;
        for (const ip of podIPs(pod)) {
          const hp = hostPrefix(ip);
          if (!filter || filter(hp)) add(hp, [], ports, pod);
        }
      };

      if (rule.peers === null) {
        add(ALL4, [], numeric);
        add(ALL6, [], numeric);
        if (named) for (const pod of allPods()) podEntries(pod);
        continue;
      }
      for (const peer of rule.peers) {
        switch (peer.type) {
          case 'ipBlock':
            add(peer.cidr, peer.except, numeric);
            if (named) for (const pod of allPods()) podEntries(pod, (p) => inBlock(p, peer.cidr, peer.except));
            break;
          case 'pods':
            for (const pod of allPods()) if (podPeerMatches(peer, pod, dir)) podEntries(pod);
            break;
          case 'fqdn':
            // Learned in the kernel from DNS answers (see docs/policy.md);
            // nothing to write ahead of time.
            break;
        }
      }
    }
  }
  return out;
}

// ---- port classes -------------------------------------------------------

export interface PortClassRange {
  proto: number;
  lo: number;
  hi: number;
  bits: number;
}

export interface PortClass {
  anyBits: number;
  ranges: PortClassRange[]; // disjoint, sorted by (proto, lo)
}

export const EMPTY_CLASS: PortClass = { anyBits: 0, ranges: [] };

export function classKey(c: PortClass): string {
  return `${c.anyBits}|${c.ranges.map((r) => `${r.proto}:${r.lo}-${r.hi}:${r.bits}`).join(',')}`;
}

/** Merges what a set of entries says about one address range. */
export function mergeClass(active: readonly Entry[]): PortClass {
  let anyBits = 0;
  const byProto = new Map<number, { lo: number; hi: number; bits: number }[]>();
  for (const e of active) {
    if (e.ports === null) {
      anyBits |= e.bits;
      continue;
    }
    for (const r of e.ports) {
      let list = byProto.get(r.proto);
      if (!list) byProto.set(r.proto, (list = []));
      list.push({ lo: r.lo, hi: r.hi, bits: e.bits });
    }
  }
  const ranges: PortClassRange[] = [];
  for (const proto of [...byProto.keys()].sort((a, b) => a - b)) {
    const list = byProto.get(proto) ?? [];
    // Sweep over boundaries: each elementary interval gets the OR of the
    // ranges covering it; adjacent intervals with equal bits are merged and
    // intervals that add nothing to anyBits are dropped.
    const cuts = new Set<number>();
    for (const r of list) {
      cuts.add(r.lo);
      cuts.add(r.hi + 1);
    }
    const points = [...cuts].sort((a, b) => a - b);
    for (let i = 0; i + 1 < points.length; i++) {
      const lo = points[i] as number;
      const hi = (points[i + 1] as number) - 1;
      let bits = 0;
      for (const r of list) if (r.lo <= lo && hi <= r.hi) bits |= r.bits;
      if ((bits | anyBits) === anyBits) continue;
      const last = ranges[ranges.length - 1];
      if (last && last.proto === proto && last.hi + 1 === lo && last.bits === bits) last.hi = hi;
      else ranges.push({ proto, lo, hi, bits });
    }
  }
  return { anyBits, ranges };
}

// ---- flattening -----------------------------------------------------------

export interface FlatPrefix {
  prefix: Prefix;
  cls: PortClass;
  key: string;
}

interface PNode {
  prefix: Prefix;
  starts: Entry[];
  excepts: Entry[];
}

function comparePrefixOrder(a: Prefix, b: Prefix): number {
  // Depth-first order: by address, and a containing prefix before what it
  // contains (same masked start, shorter first).
  for (let i = 0; i < a.bytes.length; i++) {
    const d = (a.bytes[i] ?? 0) - (b.bytes[i] ?? 0);
    if (d !== 0) return d;
  }
  return a.len - b.len;
}

const EMPTY_KEY = classKey(EMPTY_CLASS);
const PORTLESS: object = {};

/**
 * The class of a single entry depends only on its bits and ports: memoised
 * per ports array (shared by every entry of a rule) and bits, since a rule
 * with thousands of CIDRs would otherwise merge the same class thousands of
 * times.
 */
const singleClasses = new WeakMap<object, Map<number, { cls: PortClass; key: string }>>();
function classOfOne(e: Entry): { cls: PortClass; key: string } {
  const id = e.ports ?? PORTLESS;
  let byBits = singleClasses.get(id);
  if (!byBits) singleClasses.set(id, (byBits = new Map()));
  let c = byBits.get(e.bits);
  if (!c) {
    const cls = mergeClass([e]);
    byBits.set(e.bits, (c = { cls, key: classKey(cls) }));
  }
  return c;
}

/** Stage 2: one class per distinct prefix of a family. */
export function flatten(all: readonly Entry[], family: Family): FlatPrefix[] {
  const nodes = new Map<string, PNode>();
  const node = (p: Prefix): PNode => {
    const k = prefixKey(p);
    let n = nodes.get(k);
    if (!n) nodes.set(k, (n = { prefix: p, starts: [], excepts: [] }));
    return n;
  };
  for (const e of all) {
    if (e.prefix.family !== family) continue;
    node(e.prefix).starts.push(e);
    for (const x of e.except) node(x).excepts.push(e);
  }
  const order = [...nodes.values()].sort((a, b) => comparePrefixOrder(a.prefix, b.prefix));
  const out: FlatPrefix[] = [];
  const stack: { node: PNode; active: Entry[]; key: string }[] = [];
  for (const n of order) {
    while (stack.length > 0 && !prefixContains((stack[stack.length - 1] as { node: PNode }).node.prefix, n.prefix)) stack.pop();
    const parent = stack[stack.length - 1];
    let active = parent && parent.active.length > 0 ? parent.active.concat(n.starts) : n.starts;
    if (n.excepts.length > 0) {
      const removed = new Set(n.excepts);
      active = active.filter((e) => !removed.has(e));
    }
    let cls: PortClass;
    let key: string;
    if (active.length === 0) {
      cls = EMPTY_CLASS;
      key = EMPTY_KEY;
    } else if (active.length === 1) {
      ({ cls, key } = classOfOne(active[0] as Entry));
    } else {
      cls = mergeClass(active);
      key = classKey(cls);
    }
    // A prefix whose class equals its parent's adds nothing to the lookup.
    const redundant = parent ? parent.key === key : key === EMPTY_KEY;
    if (!redundant) out.push({ prefix: n.prefix, cls, key });
    stack.push({ node: n, active, key });
  }
  return out;
}

/** Longest-prefix lookup over flattened prefixes (the userspace mirror of the trie). */
export function lookupFlat(flat: readonly FlatPrefix[], family: Family, addr: Uint8Array): PortClass {
  let best: FlatPrefix | undefined;
  for (const f of flat) {
    if (f.prefix.family !== family) continue;
    if (best && best.prefix.len >= f.prefix.len) continue;
    let ok = true;
    for (let i = 0; i < f.prefix.len; i++) {
      if (bit(addr, i) !== bit(f.prefix.bytes, i)) {
        ok = false;
        break;
      }
    }
    if (ok) best = f;
  }
  return best ? best.cls : EMPTY_CLASS;
}

/** Bits a class gives to (proto, port); port null for port-less protocols. */
export function classBits(c: PortClass, proto: number, port: number | null): number {
  let bits = c.anyBits;
  if (port === null) return bits;
  for (const r of c.ranges) if (r.proto === proto && r.lo <= port && port <= r.hi) bits |= r.bits;
  return bits;
}
