// Writes the engine's desired state into the policy maps with the fewest
// writes and no window in which a packet sees a half-written policy:
//
//   1. new port classes, then new trie nodes (children before parents),
//   2. each changed set in one element update (its new roots),
//   3. pod entries (cgroup id -> set, endpoint), then the pods' addresses
//      (weir_pod_ips: address -> endpoint, for the own-address exemption),
//   4. only then release what nothing references any more; released
//      indices are quarantined before reuse (see allocator.ts).
//
// A packet therefore sees either the old complete policy or the new one.
// A set that does not fit (a policy map is full) is never partially
// written: what its write had allocated is given back, and the set is
// reported in ApplyResult.failedSets while the rest of the apply goes on.
// A pod that does not fit (weir_pods or the endpoint ids full) is reported
// in ApplyResult.failedPods and retried on the next apply.
// The writer keeps a mirror of what it wrote so that an unchanged set or pod
// costs no syscall.
//
// FQDN peers (docs/architecture.md, "DNS-aware egress"): a set's fqdn keys
// (DesiredSet.fqdn) go to weir_fqdn_keys as {set id, kind, keyed hash of
// the name or wildcard suffix} -> port class id, the classes allocated and
// refcounted together with the trie's (one class serves both when equal).
// Keys are written in step 2 before the set's value, which carries
// WEIR_SET_F_FQDN exactly when the set has keys: new keys are added before
// the set is switched, a key whose class changed is rewritten in place
// (a single-element update: each decision reads the class anew), and keys
// the new version no longer has are deleted only after the switch, as are
// a removed set's keys after its value is cleared. So the flag never points
// at keys not yet written. The trusted resolvers (DesiredState.resolvers)
// go to weir_dns_resolvers, one entry per address and port: new ones
// before stale ones are deleted.
//
// A restarted agent adopts what a previous one left in the pinned maps
// (adopt()). Its first apply reconciles them with the desired state by
// content: an adopted port class or trie node whose bytes are exactly what
// the new state needs (children included, by induction) is kept where it
// is; an adopted set whose pods all want one set now is rewritten in place,
// or kept when already equal; everything else adopted is released. So a
// restart with nothing changed writes nothing, and whatever was changed,
// deleted or corrupted behind the agent's back is rewritten. The first apply
// reports what it added, removed and rewrote per map (ApplyResult.reconciled).
import type { Logger } from 'pino';
import type { DesiredSet, DesiredState } from '../policy/engine.js';
import { classKey, SET_F_E_ISOLATED, SET_F_NOT_COMPILED, SET_F_VALID, type FlatPrefix } from '../policy/compile.js';
import type { FqdnKey } from '../policy/fqdn.js';
import { nameHash } from '../policy/fqdn-hash.js';
import { addressBytes, bytesToAddress } from '../policy/prefix.js';
import type { Resolver } from '../policy/resolvers.js';
import {
  CONST,
  SIZES,
  decodePodIpKey,
  decodePodIpValue,
  decodePodValue,
  decodeSetValue,
  decodeTrieNode,
  decodeTrieTail,
  decodePortClass,
  decodeDnsKey,
  decodeDnsResolverKey,
  decodeFqdnKeyValue,
  encodeDnsKey,
  encodeDnsResolverKey,
  encodeDnsResolverValue,
  encodeFqdnKeyValue,
  encodePodIpKey,
  encodePodIpValue,
  encodePodValue,
  encodePortClass,
  encodeSetValue,
  encodeTrieNode,
  encodeTrieTail,
  u32Key,
  u64Key,
  type PodValue,
  type SetValue,
} from './abi.js';
import { CapacityError, IndexAllocator } from './allocator.js';

import { buildTrie, encodeNode, isTailKey, SLOT_CHILD, SLOT_TAIL, type BuiltTrie } from './trie.js';

const POD_F_ADDR_MISSING = CONST.WEIR_POD_F_ADDR_MISSING;
const SET_F_FQDN = CONST.WEIR_SET_F_FQDN;

/** The map operations the writer needs; implemented by the addon's BpfMap. */
export interface WritableMap {
  readonly name: string;
  readonly maxEntries: number;
  lookup(key: Buffer): Buffer | null;
  update(key: Buffer, value: Buffer, flags?: number): void;
  delete(key: Buffer): boolean;
  updateBatch(keys: Buffer, values: Buffer, count: number, flags?: number): void;
  dump(): { keys: Buffer; values: Buffer; count: number };
}

export interface PolicyMaps {
  pods: WritableMap;
  /** weir_pod_ips: each address of a pod -> its endpoint id. */
  podIps: WritableMap;
  sets: WritableMap;
  nodes: WritableMap;
  classes: WritableMap;
  /**
   * weir_trie_tails: path-compressed subtrees (see trie.ts). A writer
   * without it builds tries of nodes only.
   */
  tails?: WritableMap;
  /**
   * weir_fqdn_keys and weir_dns_resolvers. A writer without them (tests of
   * the other maps) writes no fqdn keys and no WEIR_SET_F_FQDN flag, and
   * leaves the resolvers alone.
   */
  fqdnKeys?: WritableMap;
  dnsResolvers?: WritableMap;
}

interface SetRecord {
  id: number;
  contentKey: string;
  value: SetValue;
  nodeKeys: string[];
  classKeys: string[];
  /** Its weir_fqdn_keys entries (hex of the encoded key); their classes are in classKeys. */
  fqdnKeys: string[];
  failed: boolean;
  /**
   * An adopted set kept as the last good version of a set that does not
   * compile now: the adopted nodes and classes it reaches, owned by it
   * (released when it is replaced or removed).
   */
  held?: { nodes: number[]; classes: number[]; tails: number[] };
}

/** The three refcounted, content-keyed kinds of slot a set's trie is made of. */
type SlotKind = 'nodes' | 'classes' | 'tails';

/** A slot a set's write added to the mirror: new, or claimed from the adopted state (its content, hex). */
interface CreatedSlot {
  kind: SlotKind;
  key: string;
  index: number;
  claimed?: string;
}

interface Slot {
  index: number;
  refs: number;
}

export interface PodBinding {
  uid: string;
  namespace: string;
  name: string;
  cgroupId: bigint;
  setKey: string;
  /**
   * The pod's own addresses (status.podIPs). The datapath passes the pod's
   * traffic to them like loopback: Kubernetes never isolates a pod from itself.
   */
  ips?: readonly string[];
}

export interface ApplyResult {
  generation: number;
  setsWritten: number;
  setsRemoved: number;
  nodesWritten: number;
  tailsWritten: number;
  classesWritten: number;
  podsWritten: number;
  podsRemoved: number;
  /** weir_pod_ips entries written (new or changed owner) and deleted. */
  addressesWritten: number;
  addressesRemoved: number;
  /** weir_fqdn_keys entries written (new, or a new class in place) and deleted. */
  fqdnKeysWritten: number;
  fqdnKeysRemoved: number;
  /** weir_dns_resolvers entries written and deleted. */
  resolversWritten: number;
  resolversRemoved: number;
  /**
   * Sets that could not be written: they do not compile (DesiredSet.error),
   * or a policy map is full (weir_nodes, weir_classes, weir_sets: the
   * error names the map). Nothing of such a set is written; its last good
   * version stays in force, and a set never written yet is either written
   * fail-closed (does not compile) or, when a map is full, its pods point
   * at no set (set id 0), so the datapath drops all their egress with
   * reason no-policy-set.
   */
  failedSets: { key: string; error: string }[];
  /**
   * Pods that could not be written (weir_pods or the endpoint ids full):
   * they have no entry, so the datapath does not govern them. Retried on
   * every apply; logged, and weir_map_entries then equals weir_map_capacity.
   */
  failedPods: { uid: string; namespace: string; name: string; error: string }[];
  /**
   * Only on the first apply after adopt(): what it changed in the adopted
   * maps, per map (weir_pods, weir_pod_ips, weir_sets, weir_nodes,
   * weir_classes, weir_fqdn_keys, weir_dns_resolvers): entries added,
   * removed and rewritten in place.
   */
  reconciled?: ReconcileCounts;
}

export type ReconcileAction = 'added' | 'removed' | 'rewritten';
export const RECONCILED_MAPS = ['weir_pods', 'weir_pod_ips', 'weir_sets', 'weir_nodes', 'weir_trie_tails', 'weir_classes', 'weir_fqdn_keys', 'weir_dns_resolvers'] as const;
export type ReconciledMap = (typeof RECONCILED_MAPS)[number];
export type ReconcileCounts = Record<ReconciledMap, Record<ReconcileAction, number>>;

function zeroCounts(): ReconcileCounts {
  const out = {} as ReconcileCounts;
  for (const m of RECONCILED_MAPS) out[m] = { added: 0, removed: 0, rewritten: 0 };
  return out;
}

/** What adopt() found in the pinned maps, until the first apply has dealt with it. */
interface Legacy {
  /** Valid adopted sets: id -> value. */
  sets: Map<number, SetValue>;
  /** Trie nodes, tails and classes reachable from them (indices reserved in the allocators). */
  nodes: Set<number>;
  classes: Set<number>;
  tails: Set<number>;
  /** Encoded content (hex) -> adopted index, for reuse by content. */
  byContent: Record<SlotKind, Map<string, number>>;
  /** Per adopted set: the nodes, tails and classes reachable from it (its fqdn keys' classes included). */
  reach: Map<number, { nodes: number[]; classes: number[]; tails: number[] }>;
  /** Per adopted set: its weir_fqdn_keys entries (hex). */
  fqdnBySet: Map<number, string[]>;
  /** weir_fqdn_keys entries of set ids that are not valid sets: deleted first thing. */
  staleFqdn: string[];
}

export interface EndpointInfo {
  endpointId: number;
  uid: string;
  namespace: string;
  name: string;
  setKey: string;
  cgroupId: bigint;
}

export interface WriterCapacities {
  graceMs: number;
  maxEndpoints: number;
  /**
   * The key of the DNS name hash (Datapath.dnsSecret()): fqdn keys are
   * written hashed with it. Needed with PolicyMaps.fqdnKeys.
   */
  dnsSecret?: () => bigint;
}

const contentKeys = new WeakMap<DesiredSet, string>();

/** What a set writes; equal keys mean nothing to write. Memoized: the engine reuses unchanged sets. */
function contentKeyOf(set: DesiredSet): string {
  const known = contentKeys.get(set);
  if (known !== undefined) return known;
  const key = computeContentKey(set);
  contentKeys.set(set, key);
  return key;
}

function computeContentKey(set: DesiredSet): string {
  const part = (flat: FlatPrefix[]): string => flat.map((f) => `${Buffer.from(f.prefix.bytes).toString('hex')}/${f.prefix.len}=${f.key}`).join(';');
  const fqdn = (set.fqdn ?? []).map((k) => `${k.text}=${classKey(k.cls)}`).join(';');
  return `${set.flags}#${part(set.v4)}#${part(set.v6)}#${fqdn}`;
}

export class StateWriter {
  private readonly setAlloc: IndexAllocator;
  private readonly nodeAlloc: IndexAllocator;
  private readonly classAlloc: IndexAllocator;
  private readonly tailAlloc: IndexAllocator | null;
  private readonly endpointAlloc: IndexAllocator;
  private readonly sets = new Map<string, SetRecord>();
  private readonly nodes = new Map<string, Slot>();
  private readonly classes = new Map<string, Slot>();
  private readonly tails = new Map<string, Slot>();
  /** cgroup id (decimal string) -> what was written for it. */
  private readonly pods = new Map<string, { value: PodValue; binding: PodBinding | null }>();
  private readonly endpointsByCgroup = new Map<string, number>();
  /** weir_pod_ips as written: key (hex of the encoded key) -> endpoint id. */
  private readonly podIps = new Map<string, number>();
  /** weir_fqdn_keys as written (adopted entries included): key (hex of the encoded key) -> class id. */
  private readonly fqdn = new Map<string, number>();
  /** weir_dns_resolvers as written (adopted entries included): key (hex). */
  private readonly resolvers = new Set<string>();
  /** Hashes of fqdn key texts, under the secret they were made with. */
  private hashes: { secret: bigint; byText: Map<string, bigint> } | null = null;
  private readonly dnsSecret: (() => bigint) | null;
  /** State adopted from pinned maps: reused by content or released by the first apply. */
  private legacy: Legacy | null = null;
  /** The first apply's counts (set while it runs). */
  private counts: ReconcileCounts | null = null;
  private gen = 0;

  constructor(
    private readonly maps: PolicyMaps,
    caps: WriterCapacities,
    private readonly log: Logger,
    /** Called before an endpoint id is reused, to clear its conntrack and counters. */
    private readonly onEndpointReleased: (endpointId: number) => void = () => {},
  ) {
    this.setAlloc = new IndexAllocator('weir_sets', 1, maps.sets.maxEntries, caps.graceMs);
    this.nodeAlloc = new IndexAllocator('weir_nodes', 1, maps.nodes.maxEntries, caps.graceMs);
    this.classAlloc = new IndexAllocator('weir_classes', 1, maps.classes.maxEntries, caps.graceMs);
    this.tailAlloc = maps.tails ? new IndexAllocator('weir_trie_tails', 1, maps.tails.maxEntries, caps.graceMs) : null;
    this.endpointAlloc = new IndexAllocator('endpoints', 0, caps.maxEndpoints, caps.graceMs);
    if (maps.fqdnKeys && !caps.dnsSecret) throw new TypeError('StateWriter: weir_fqdn_keys needs caps.dnsSecret (the key of the name hash)');
    this.dnsSecret = caps.dnsSecret ?? null;
  }

  get generation(): number {
    return this.gen;
  }

  /**
   * Takes over what a previous agent left in pinned maps: keeps every
   * referenced index out of the allocators until the first apply has
   * reused or released it, keeps each pod's endpoint id (counters stay
   * attributed), and continues the policy generation. Returns what it found.
   */
  adopt(): { pods: number; sets: number; nodes: number; tails: number; classes: number; fqdnKeys: number; resolvers: number; generation: number } {
    const legacy: Legacy = {
      sets: new Map(),
      nodes: new Set(),
      classes: new Set(),
      tails: new Set(),
      byContent: { nodes: new Map(), classes: new Map(), tails: new Map() },
      reach: new Map(),
      fqdnBySet: new Map(),
      staleFqdn: [],
    };
    const pd = this.maps.pods.dump();
    for (let i = 0; i < pd.count; i++) {
      const cg = pd.keys.readBigUInt64LE(i * 8);
      const v = decodePodValue(pd.values.subarray(i * SIZES.weir_pod_value, (i + 1) * SIZES.weir_pod_value));
      this.pods.set(cg.toString(), { value: v, binding: null });
      // An endpoint id outside the counter table (capacity lowered) is not
      // kept: the pod gets a new one, and its entry is rewritten.
      if (v.endpointId >= this.endpointAlloc.capacity) continue;
      this.endpointsByCgroup.set(cg.toString(), v.endpointId);
      this.endpointAlloc.reserve(v.endpointId);
    }
    const id = this.maps.podIps.dump();
    for (let i = 0; i < id.count; i++) {
      const k = id.keys.subarray(i * SIZES.weir_pod_ip_key, (i + 1) * SIZES.weir_pod_ip_key);
      this.podIps.set(k.toString('hex'), decodePodIpValue(id.values.subarray(i * SIZES.weir_pod_ip_value, (i + 1) * SIZES.weir_pod_ip_value)));
    }
    const sd = this.maps.sets.dump();
    const walked = new Map<number, { children: number[]; classes: number[]; tails: number[] }>();
    for (let i = 0; i < sd.count; i++) {
      const id = sd.keys.readUInt32LE(i * 4);
      const v = decodeSetValue(sd.values.subarray(i * SIZES.weir_set_value, (i + 1) * SIZES.weir_set_value));
      if (!(v.flags & SET_F_VALID) || id === 0) continue;
      legacy.sets.set(id, v);
      this.setAlloc.reserve(id);
      this.gen = Math.max(this.gen, v.generation);
      const reach = { nodes: new Set<number>(), classes: new Set<number>(), tails: new Set<number>() };
      for (const root of [v.root4, v.root6]) this.collectTrie(root, legacy, reach, walked);
      legacy.reach.set(id, { nodes: [...reach.nodes], classes: [...reach.classes], tails: [...reach.tails] });
    }
    this.adoptFqdn(legacy);
    for (const n of legacy.nodes) this.nodeAlloc.reserve(n);
    for (const c of legacy.classes) this.classAlloc.reserve(c);
    for (const t of legacy.tails) this.tailAlloc?.reserve(t);
    this.legacy = legacy;
    return {
      pods: pd.count,
      sets: legacy.sets.size,
      nodes: legacy.nodes.size,
      tails: legacy.tails.size,
      classes: legacy.classes.size,
      fqdnKeys: this.fqdn.size,
      resolvers: this.resolvers.size,
      generation: this.gen,
    };
  }

  /**
   * The fqdn keys and resolvers a previous agent wrote: each key of a valid
   * adopted set belongs to it (its class is reachable from the set, kept
   * for reuse by content like the trie's); keys of any other set id are
   * stale, deleted by the first apply before it writes a set.
   */
  private adoptFqdn(legacy: Legacy): void {
    const keysMap = this.maps.fqdnKeys;
    if (keysMap) {
      const d = keysMap.dump();
      const ks = SIZES.weir_dns_key;
      const vs = SIZES.weir_fqdn_key_value;
      for (let i = 0; i < d.count; i++) {
        const kb = d.keys.subarray(i * ks, (i + 1) * ks);
        const hex = kb.toString('hex');
        const cls = decodeFqdnKeyValue(d.values.subarray(i * vs, (i + 1) * vs));
        this.fqdn.set(hex, cls);
        const setId = decodeDnsKey(kb).setId;
        const reach = legacy.reach.get(setId);
        if (!reach) {
          legacy.staleFqdn.push(hex);
          continue;
        }
        let mine = legacy.fqdnBySet.get(setId);
        if (!mine) legacy.fqdnBySet.set(setId, (mine = []));
        mine.push(hex);
        if (cls === 0 || cls >= this.maps.classes.maxEntries) continue;
        if (!reach.classes.includes(cls)) reach.classes.push(cls);
        if (legacy.classes.has(cls)) continue;
        legacy.classes.add(cls);
        const content = this.maps.classes.lookup(u32Key(cls))?.toString('hex');
        if (content !== undefined && !legacy.byContent.classes.has(content)) legacy.byContent.classes.set(content, cls);
      }
    }
    const resolvers = this.maps.dnsResolvers;
    if (resolvers) {
      const d = resolvers.dump();
      const ks = SIZES.weir_dns_resolver_key;
      for (let i = 0; i < d.count; i++) this.resolvers.add(d.keys.subarray(i * ks, (i + 1) * ks).toString('hex'));
    }
  }

  /** Walks an adopted trie: records its nodes, tails and classes, and their contents for reuse. */
  private collectTrie(
    root: number,
    legacy: Legacy,
    reach: { nodes: Set<number>; classes: Set<number>; tails: Set<number> },
    walked: Map<number, { children: number[]; classes: number[]; tails: number[] }>,
  ): void {
    const stack = root ? [root] : [];
    const adoptClass = (c: number): void => {
      if (c === 0 || legacy.classes.has(c) || c >= this.maps.classes.maxEntries) return;
      legacy.classes.add(c);
      const hex = this.maps.classes.lookup(u32Key(c))?.toString('hex');
      if (hex !== undefined && !legacy.byContent.classes.has(hex)) legacy.byContent.classes.set(hex, c);
    };
    while (stack.length > 0) {
      const n = stack.pop() as number;
      // Index 0 is no node; an index past the map is garbage (written behind the agent's back).
      if (n === 0 || n >= this.maps.nodes.maxEntries || reach.nodes.has(n)) continue;
      reach.nodes.add(n);
      let node = walked.get(n);
      if (!node) {
        node = { children: [], classes: [], tails: [] };
        walked.set(n, node);
        legacy.nodes.add(n);
        const raw = this.maps.nodes.lookup(u32Key(n));
        if (raw) {
          const content = raw.toString('hex');
          if (!legacy.byContent.nodes.has(content)) legacy.byContent.nodes.set(content, n);
          const classes = new Set<number>();
          const tails = new Set<number>();
          for (const s of decodeTrieNode(raw)) {
            if (s & SLOT_CHILD) node.children.push(s & ~SLOT_CHILD);
            else if (s & SLOT_TAIL) tails.add(s & ~SLOT_TAIL);
            else if (s) classes.add(s);
          }
          // A tail's classes count as the node's: they go and come with it.
          for (const t of tails) {
            const tailsMap = this.maps.tails;
            if (!tailsMap || t === 0 || t >= tailsMap.maxEntries) continue;
            node.tails.push(t);
            const tv = tailsMap.lookup(u32Key(t));
            if (!legacy.tails.has(t)) {
              legacy.tails.add(t);
              const hex = tv?.toString('hex');
              if (hex !== undefined && !legacy.byContent.tails.has(hex)) legacy.byContent.tails.set(hex, t);
            }
            if (!tv) continue;
            const d = decodeTrieTail(tv);
            if (d.hit) classes.add(d.hit);
            if (d.miss) classes.add(d.miss);
          }
          node.classes = [...classes];
          for (const c of node.classes) adoptClass(c);
        }
      }
      for (const c of node.classes) reach.classes.add(c);
      for (const t of node.tails) reach.tails.add(t);
      stack.push(...node.children);
    }
  }

  /** An adopted node, tail or class whose content is exactly `buf`: it is kept where it is (not released). */
  private claim(kind: SlotKind, buf: Buffer): number | undefined {
    const l = this.legacy;
    if (!l) return undefined;
    const byContent = l.byContent[kind];
    const hex = buf.toString('hex');
    const index = byContent.get(hex);
    if (index === undefined) return undefined;
    byContent.delete(hex);
    l[kind].delete(index); // now owned by a slot of this writer; no longer released with the legacy
    return index;
  }

  /**
   * Takes a reference on the `kind` slot of content `key`: the one this
   * writer holds, else an adopted one with the same bytes (kept where it
   * is), else a new index whose bytes are queued in `fresh` for one batched
   * write. What it adds to the mirror is listed in `created` (rollback).
   */
  private refSlot(kind: SlotKind, key: string, encode: () => Buffer, created: CreatedSlot[], fresh: { index: number; buf: Buffer }[]): Slot {
    const slots = this.slotsOf(kind);
    let slot = slots.get(key);
    if (!slot) {
      const buf = encode();
      const reused = this.claim(kind, buf);
      if (reused !== undefined) {
        slot = { index: reused, refs: 0 };
        created.push({ kind, key, index: reused, claimed: buf.toString('hex') });
      } else {
        slot = { index: this.allocOf(kind).alloc(), refs: 0 };
        created.push({ kind, key, index: slot.index });
        fresh.push({ index: slot.index, buf });
      }
      slots.set(key, slot);
    }
    slot.refs++;
    return slot;
  }

  private slotsOf(kind: SlotKind): Map<string, Slot> {
    return kind === 'nodes' ? this.nodes : kind === 'tails' ? this.tails : this.classes;
  }

  private allocOf(kind: SlotKind): IndexAllocator {
    const a = kind === 'nodes' ? this.nodeAlloc : kind === 'tails' ? this.tailAlloc : this.classAlloc;
    if (!a) throw new Error('weir_trie_tails is not available to this writer');
    return a;
  }

  apply(state: DesiredState, bindings: PodBinding[]): ApplyResult {
    const res: ApplyResult = {
      generation: this.gen,
      setsWritten: 0,
      setsRemoved: 0,
      nodesWritten: 0,
      tailsWritten: 0,
      classesWritten: 0,
      podsWritten: 0,
      podsRemoved: 0,
      addressesWritten: 0,
      addressesRemoved: 0,
      fqdnKeysWritten: 0,
      fqdnKeysRemoved: 0,
      resolversWritten: 0,
      resolversRemoved: 0,
      failedSets: [],
      failedPods: [],
    };
    const wanted = new Set(bindings.map((b) => b.setKey));
    const nextGen = this.gen + 1;
    const releases: (() => void)[] = [];
    /** Sets that do not fit and were never written: their pods get set id 0. */
    const unwritten = new Set<string>();
    const wantPods = new Map<string, PodBinding>();
    for (const b of bindings) wantPods.set(b.cgroupId.toString(), b);
    const legacy = this.legacy;
    const counts = legacy ? zeroCounts() : null;
    this.counts = counts;
    // Adopted set -> the set it was for: the one set all its pods want now.
    const legacySetFor = new Map<string, number>();
    if (legacy) {
      const keysOf = new Map<number, Set<string>>();
      for (const [cg, b] of wantPods) {
        const cur = this.pods.get(cg);
        if (!cur || !legacy.sets.has(cur.value.setId)) continue;
        let ks = keysOf.get(cur.value.setId);
        if (!ks) keysOf.set(cur.value.setId, (ks = new Set()));
        ks.add(b.setKey);
      }
      for (const [sid, ks] of keysOf) {
        const [only] = ks;
        if (ks.size === 1 && only !== undefined && !legacySetFor.has(only)) legacySetFor.set(only, sid);
      }
      this.dedupeAdoptedEndpoints(wantPods);
      // Keys of set ids no valid set has: nothing consults them, and the id may be handed out below.
      this.deleteFqdnKeys(legacy.staleFqdn, res);
      legacy.staleFqdn = [];
    }
    // The trusted resolvers: new ones now, stale ones once the sets are written.
    const removeStaleResolvers = this.writeResolvers(state.resolvers, res);

    // 1 + 2: sets (classes and nodes first, inside writeSet). A set that
    // does not compile but had an adopted version keeps it, and its nodes
    // and classes, before any other set may reuse them by content.
    const order = [...wanted].sort((a, b) => Number(!state.sets.get(a)?.error) - Number(!state.sets.get(b)?.error));
    for (const key of order) {
      const desired = state.sets.get(key);
      if (!desired) continue;
      const old = this.sets.get(key);
      if (desired.error) {
        res.failedSets.push({ key, error: desired.error });
        if (old) continue; // last good version keeps enforcing
        const adopted = legacySetFor.get(key);
        if (legacy && adopted !== undefined) {
          this.keepAdopted(key, adopted, legacy);
          continue;
        }
        // Never compiled successfully: fail closed (isolated, nothing allowed).
        this.writeFailClosed(key, nextGen);
        res.setsWritten++;
        continue;
      }
      const ck = contentKeyOf(desired);
      if (old && !old.failed && old.contentKey === ck) continue;
      const adopted = old ? undefined : legacySetFor.get(key);
      let w: { release: () => void; written: boolean };
      try {
        w = this.writeSet(key, desired, ck, nextGen, res, adopted);
      } catch (err) {
        // A policy map is full (or refused the write): writeSet gave back
        // what it had taken, so nothing of the new version is referenced.
        const error = (err as Error).message;
        res.failedSets.push({ key, error });
        const pods = bindings.filter((b) => b.setKey === key).length;
        if (old) {
          this.log.error({ set: old.id, pods, error }, 'a policy set does not fit in the datapath maps; its last good version stays in force');
        } else if (legacy && adopted !== undefined && legacy.sets.has(adopted)) {
          this.keepAdopted(key, adopted, legacy);
        } else {
          // Never written: its pods point at no set, which the datapath
          // drops with reason no-policy-set (fail closed, and not reported
          // as a policy deny). Works even when weir_sets itself is full.
          unwritten.add(key);
          this.log.error({ pods, error }, 'a policy set does not fit in the datapath maps; its pods are written without a set: all their egress is dropped (reason no-policy-set)');
        }
        continue;
      }
      releases.push(w.release);
      if (w.written) res.setsWritten++;
    }

    // 3: pods. A pod that does not fit (weir_pods or the endpoint ids
    // full) is tried again once the pods no longer wanted are removed.
    const notWritten: [string, PodBinding, string][] = [];
    const writePod = (cg: string, b: PodBinding): string | null => {
      const set = this.sets.get(b.setKey);
      const setId = set ? set.id : unwritten.has(b.setKey) ? 0 : undefined;
      if (setId === undefined) return null;
      let ep = this.endpointsByCgroup.get(cg);
      const fresh = ep === undefined;
      try {
        if (ep === undefined) {
          ep = this.endpointAlloc.alloc();
          this.endpointsByCgroup.set(cg, ep);
        }
        const cur = this.pods.get(cg);
        // The address flag is writeAddresses' to set and clear.
        const value: PodValue = { setId, endpointId: ep, flags: (cur?.value.flags ?? 0) & POD_F_ADDR_MISSING };
        if (!cur || cur.value.setId !== value.setId || cur.value.endpointId !== value.endpointId || cur.value.flags !== value.flags) {
          this.maps.pods.update(u64Key(b.cgroupId), encodePodValue(value));
          res.podsWritten++;
          if (counts) counts.weir_pods[cur ? 'rewritten' : 'added']++;
        }
        this.pods.set(cg, { value, binding: b });
        return null;
      } catch (err) {
        if (fresh && ep !== undefined) {
          this.endpointsByCgroup.delete(cg);
          this.endpointAlloc.release(ep);
        }
        return (err as Error).message;
      }
    };
    for (const [cg, b] of wantPods) {
      const error = writePod(cg, b);
      if (error !== null) notWritten.push([cg, b, error]);
    }
    // The pods' addresses: after their pod entries, and before a removed
    // pod's endpoint id is released below.
    this.writeAddresses(wantPods, res);
    for (const [cg, cur] of [...this.pods]) {
      if (wantPods.has(cg)) continue;
      this.maps.pods.delete(u64Key(BigInt(cg)));
      this.pods.delete(cg);
      res.podsRemoved++;
      if (counts) counts.weir_pods.removed++;
      const ep = this.endpointsByCgroup.get(cg);
      this.endpointsByCgroup.delete(cg);
      if (ep !== undefined) {
        this.onEndpointReleased(ep);
        this.endpointAlloc.release(ep);
      }
      void cur;
    }
    if (notWritten.length > 0) {
      for (const [cg, b] of notWritten) {
        const error = writePod(cg, b);
        if (error !== null) res.failedPods.push({ uid: b.uid, namespace: b.namespace, name: b.name, error });
      }
      if (res.failedPods.length < notWritten.length) this.writeAddresses(wantPods, res);
      if (res.failedPods.length > 0) {
        const first = res.failedPods[0];
        this.log.error(
          { pods: res.failedPods.length, first: first && `${first.namespace}/${first.name}`, error: first?.error },
          'pods could not be written to the datapath (weir_pods or endpoint ids full): their egress is not governed until there is room',
        );
      }
    }

    // 4: sets nobody uses (their fqdn keys once the value no longer has the flag), then everything replaced above.
    for (const [key, rec] of [...this.sets]) {
      if (wanted.has(key)) continue;
      this.maps.sets.update(u32Key(rec.id), encodeSetValue({ root4: 0, root6: 0, flags: 0, generation: nextGen }));
      this.deleteFqdnKeys(rec.fqdnKeys, res);
      this.sets.delete(key);
      this.setAlloc.release(rec.id);
      this.unref(rec.nodeKeys, rec.classKeys);
      this.releaseHeld(rec);
      res.setsRemoved++;
    }
    for (const r of releases) r();
    removeStaleResolvers();
    if (legacy && counts) {
      // Whatever adopted state was neither reused nor kept.
      for (const s of legacy.sets.keys()) {
        this.maps.sets.update(u32Key(s), encodeSetValue({ root4: 0, root6: 0, flags: 0, generation: nextGen }));
        this.deleteFqdnKeys(legacy.fqdnBySet.get(s) ?? [], res);
        this.setAlloc.release(s);
        counts.weir_sets.removed++;
      }
      for (const n of legacy.nodes) this.nodeAlloc.release(n);
      for (const c of legacy.classes) this.classAlloc.release(c);
      for (const t of legacy.tails) this.tailAlloc?.release(t);
      counts.weir_nodes.removed += legacy.nodes.size;
      counts.weir_trie_tails.removed += legacy.tails.size;
      counts.weir_classes.removed += legacy.classes.size;
      this.legacy = null;
      res.reconciled = counts;
    }
    this.counts = null;

    if (res.setsWritten + res.setsRemoved + res.podsWritten + res.podsRemoved > 0) this.gen = nextGen;
    res.generation = this.gen;
    return res;
  }

  /**
   * Adopted pod entries that share an endpoint id (written behind the
   * agent's back) must not share counters, nor have it released while a
   * live pod uses it: the id stays with one pod this apply keeps (else with
   * one stale entry); the others get a new id when wanted.
   */
  private dedupeAdoptedEndpoints(wantPods: Map<string, PodBinding>): void {
    const owner = new Set<number>();
    const live = [...this.endpointsByCgroup].filter(([cg]) => wantPods.has(cg));
    const stale = [...this.endpointsByCgroup].filter(([cg]) => !wantPods.has(cg));
    for (const [cg, ep] of [...live, ...stale]) {
      if (owner.has(ep)) this.endpointsByCgroup.delete(cg);
      else owner.add(ep);
    }
  }

  /** Keeps an adopted set as the last good version of `key` (which does not compile now). */
  private keepAdopted(key: string, id: number, legacy: Legacy): void {
    const value = legacy.sets.get(id) as SetValue;
    legacy.sets.delete(id);
    const held = { nodes: [] as number[], classes: [] as number[], tails: [] as number[] };
    const reach = legacy.reach.get(id) ?? { nodes: [], classes: [], tails: [] };
    for (const kind of ['nodes', 'classes', 'tails'] as const) {
      for (const n of reach[kind]) {
        if (!legacy[kind].delete(n)) continue; // kept by another set first
        held[kind].push(n);
        for (const [hex, i] of legacy.byContent[kind]) if (i === n) legacy.byContent[kind].delete(hex);
      }
    }
    const fqdnKeys = legacy.fqdnBySet.get(id) ?? [];
    legacy.fqdnBySet.delete(id);
    this.sets.set(key, { id, contentKey: '', value, nodeKeys: [], classKeys: [], fqdnKeys, failed: false, held });
    this.log.warn({ set: id }, 'a policy set does not compile; the version a previous agent wrote stays in force');
  }

  private releaseHeld(rec: SetRecord): void {
    if (!rec.held) return;
    for (const n of rec.held.nodes) this.nodeAlloc.release(n);
    for (const c of rec.held.classes) this.classAlloc.release(c);
    for (const t of rec.held.tails) this.tailAlloc?.release(t);
    rec.held = undefined;
  }

  /**
   * Makes weir_pod_ips hold exactly the addresses of the pods written above,
   * each mapped to its pod's endpoint: at most one per family per pod (a
   * pod has at most one IPv4 and one IPv6 address), so a map of 2 × the pod
   * capacity cannot fill. An address two pods claim (a stale status during
   * a handover) is written for neither: the exemption is never granted to
   * the wrong pod. Entries that go are deleted before new ones are added.
   * Should a write fail anyway (a smaller map), the pod is marked
   * WEIR_POD_F_ADDR_MISSING: its traffic to itself is judged like any other
   * (fail closed), and such drops are reported as map-full, not as a policy
   * decision. Retried at every apply.
   */
  private writeAddresses(wantPods: Map<string, PodBinding>, res: ApplyResult): void {
    const want = new Map<string, number | null>(); // null: claimed by two pods
    const podOf = new Map<string, string>(); // key -> cgroup of the pod that wants it
    for (const [cg, b] of wantPods) {
      const ep = this.pods.get(cg)?.value.endpointId;
      if (ep === undefined || this.pods.get(cg)?.binding !== b) continue;
      const families = new Set<number>();
      for (const ip of b.ips ?? []) {
        let key: string;
        let family: number;
        try {
          const a = addressBytes(ip);
          family = a.family === 4 ? 2 : 10;
          key = encodePodIpKey({ family, addr: a.bytes }).toString('hex');
        } catch {
          continue; // not an address (the model validates them; be safe)
        }
        if (families.has(family)) continue;
        families.add(family);
        const prev = want.get(key);
        want.set(key, prev === undefined || prev === ep ? ep : null);
        podOf.set(key, cg);
      }
    }
    // Gone or claimed twice: removed first (an address moved to another
    // pod is rewritten in place below).
    for (const [key, ep] of [...this.podIps]) {
      const w = want.get(key);
      if (w === ep || (w !== undefined && w !== null)) continue;
      this.maps.podIps.delete(Buffer.from(key, 'hex'));
      this.podIps.delete(key);
      res.addressesRemoved++;
      if (this.counts) this.counts.weir_pod_ips.removed++;
    }
    const failed: string[] = [];
    const missing = new Set<string>(); // cgroups of pods with an address not written
    for (const [key, ep] of want) {
      if (ep === null || this.podIps.get(key) === ep) continue;
      try {
        this.maps.podIps.update(Buffer.from(key, 'hex'), encodePodIpValue(ep));
        if (this.counts) this.counts.weir_pod_ips[this.podIps.has(key) ? 'rewritten' : 'added']++;
        this.podIps.set(key, ep);
        res.addressesWritten++;
      } catch (err) {
        failed.push(`${key}: ${(err as Error).message}`);
        const cg = podOf.get(key);
        if (cg !== undefined) missing.add(cg);
        // Still held by the pod it was moved from: never exempt the wrong pod.
        if (this.podIps.has(key)) {
          this.maps.podIps.delete(Buffer.from(key, 'hex'));
          this.podIps.delete(key);
          res.addressesRemoved++;
        }
      }
    }
    for (const [cg, rec] of this.pods) {
      if (!wantPods.has(cg)) continue;
      const flag = missing.has(cg) ? POD_F_ADDR_MISSING : 0;
      if ((rec.value.flags & POD_F_ADDR_MISSING) === flag) continue;
      const value: PodValue = { ...rec.value, flags: (rec.value.flags & ~POD_F_ADDR_MISSING) | flag };
      this.maps.pods.update(u64Key(BigInt(cg)), encodePodValue(value));
      this.pods.set(cg, { ...rec, value });
    }
    if (failed.length > 0) {
      this.log.warn(
        { failed: failed.length, pods: missing.size, first: failed[0] },
        'pod addresses could not be written (weir_pod_ips full); those pods reaching themselves are judged, and such drops are reported with reason map-full',
      );
    }
  }

  /** The addresses written to weir_pod_ips, with the endpoint each belongs to (tests, status). */
  podAddresses(): { family: number; addr: Uint8Array; endpointId: number }[] {
    return [...this.podIps].map(([k, ep]) => ({ ...decodePodIpKey(Buffer.from(k, 'hex')), endpointId: ep }));
  }

  private writeFailClosed(key: string, gen: number): void {
    const id = this.setAlloc.alloc();
    const value: SetValue = { root4: 0, root6: 0, flags: SET_F_VALID | SET_F_E_ISOLATED | SET_F_NOT_COMPILED, generation: gen };
    this.maps.sets.update(u32Key(id), encodeSetValue(value));
    if (this.counts) this.counts.weir_sets.added++;
    this.sets.set(key, { id, contentKey: '', value, nodeKeys: [], classKeys: [], fqdnKeys: [], failed: true });
  }

  /**
   * Writes one set; returns the release of what its previous version used.
   * `adopted`: the slot a previous agent wrote this set in (first apply
   * after adopt): rewritten in place, or left alone when already equal.
   * Throws (a map is full) with nothing of the new version referenced:
   * the slots it had taken are given back first.
   */
  private writeSet(key: string, desired: DesiredSet, contentKey: string, gen: number, res: ApplyResult, adopted?: number): { release: () => void; written: boolean } {
    const classKeys: string[] = [];
    /** Node and tail keys (isTailKey tells them apart). */
    const nodeKeys: string[] = [];
    /** Slots this call added to the mirror (new, or claimed from the adopted state). */
    const created: CreatedSlot[] = [];
    try {
      return this.writeSetSlots(key, desired, contentKey, gen, res, adopted, classKeys, nodeKeys, created);
    } catch (err) {
      for (const k of classKeys) {
        const s = this.classes.get(k);
        if (s) s.refs--;
      }
      for (const k of nodeKeys) {
        const s = this.slotsOf(isTailKey(k) ? 'tails' : 'nodes').get(k);
        if (s) s.refs--;
      }
      for (const c of created) {
        this.slotsOf(c.kind).delete(c.key);
        if (c.claimed !== undefined && this.legacy) {
          // Back to the adopted state it came from (it may be a last good version kept below).
          this.legacy.byContent[c.kind].set(c.claimed, c.index);
          this.legacy[c.kind].add(c.index);
        } else {
          this.allocOf(c.kind).release(c.index);
        }
      }
      throw err;
    }
  }

  private writeSetSlots(
    key: string,
    desired: DesiredSet,
    contentKey: string,
    gen: number,
    res: ApplyResult,
    adopted: number | undefined,
    classKeys: string[],
    nodeKeys: string[],
    created: CreatedSlot[],
  ): { release: () => void; written: boolean } {
    const classIds = new Map<string, number>();
    const newClasses: { index: number; buf: Buffer }[] = [];
    // The fqdn keys' classes come from the same refcounted table as the trie's.
    const fqdn = this.maps.fqdnKeys ? (desired.fqdn ?? []) : [];
    const fqdnClasses = fqdn.map((k) => ({ key: classKey(k.cls), cls: k.cls }));
    for (const f of [...desired.v4, ...desired.v6, ...fqdnClasses]) {
      if (classIds.has(f.key)) continue;
      if (f.cls.anyBits === 0 && f.cls.ranges.length === 0) {
        classIds.set(f.key, 0); // the empty class is class 0
        continue;
      }
      const slot = this.refSlot('classes', f.key, () => encodePortClass(f.cls), created, newClasses);
      classKeys.push(f.key);
      classIds.set(f.key, slot.index);
    }
    if (newClasses.length > 0) {
      this.batchWrite(this.maps.classes, newClasses);
      res.classesWritten += newClasses.length;
      if (this.counts) this.counts.weir_classes.added += newClasses.length;
    }

    const build = (flat: FlatPrefix[]): BuiltTrie =>
      buildTrie(
        flat.map((f) => ({ prefix: f.prefix, classId: classIds.get(f.key) ?? 0 })),
        { tails: this.tailAlloc !== null },
      );
    const t4 = build(desired.v4);
    const t6 = build(desired.v6);
    const newNodes: { index: number; buf: Buffer }[] = [];
    const indexOf = (k: string): number => {
      const s = this.slotsOf(isTailKey(k) ? 'tails' : 'nodes').get(k);
      if (!s) throw new Error(`trie node ${k} used before it was allocated`);
      return s.index;
    };
    const seen = new Set<string>();
    // Tails first: the nodes written below point at them.
    const newTails: { index: number; buf: Buffer }[] = [];
    for (const t of [t4, t6]) {
      for (const spec of t.tails) {
        if (seen.has(spec.key)) continue;
        seen.add(spec.key);
        this.refSlot('tails', spec.key, () => encodeTrieTail({ addr: spec.prefix.bytes, len: spec.prefix.len, hit: spec.hit, miss: spec.miss }), created, newTails);
        nodeKeys.push(spec.key);
      }
    }
    if (newTails.length > 0) {
      this.batchWrite(this.maps.tails as WritableMap, newTails);
      res.tailsWritten += newTails.length;
      if (this.counts) this.counts.weir_trie_tails.added += newTails.length;
    }
    for (const t of [t4, t6]) {
      for (const spec of t.nodes) {
        if (seen.has(spec.key)) continue;
        seen.add(spec.key);
        // Children come first, so their indices (reused or new) are known.
        this.refSlot('nodes', spec.key, () => encodeTrieNode(encodeNode(spec, indexOf)), created, newNodes);
        nodeKeys.push(spec.key);
      }
    }
    if (newNodes.length > 0) {
      // Children were allocated (and are listed) before their parents.
      this.batchWrite(this.maps.nodes, newNodes);
      res.nodesWritten += newNodes.length;
      if (this.counts) this.counts.weir_nodes.added += newNodes.length;
    }

    const old = this.sets.get(key);
    const prev = adopted !== undefined ? this.legacy?.sets.get(adopted) : undefined;
    let id: number;
    let fresh = false;
    if (old) id = old.id;
    else if (adopted !== undefined && prev) id = adopted;
    else {
      id = this.setAlloc.alloc();
      fresh = true;
    }
    // The fqdn keys, before the value that flags them. Throws (weir_fqdn_keys
    // full) with nothing of them left written.
    const oldKeys = old ? old.fqdnKeys : adopted !== undefined && prev ? (this.legacy?.fqdnBySet.get(adopted) ?? []) : [];
    let keys: ReturnType<StateWriter['writeFqdnKeys']>;
    try {
      keys = this.writeFqdnKeys(id, fqdn, classIds, oldKeys, res);
    } catch (err) {
      if (fresh) this.setAlloc.release(id);
      throw err;
    }
    let value: SetValue = {
      root4: t4.rootKey ? indexOf(t4.rootKey) : 0,
      root6: t6.rootKey ? indexOf(t6.rootKey) : 0,
      flags: desired.flags | (keys.keys.length > 0 ? SET_F_FQDN : 0),
      generation: gen,
    };
    let written = true;
    if (!old && prev && adopted !== undefined) {
      this.legacy?.sets.delete(adopted);
      this.legacy?.fqdnBySet.delete(adopted);
      if (prev.root4 === value.root4 && prev.root6 === value.root6 && prev.flags === value.flags) {
        value = prev; // exactly what is there: nothing to write
        written = false;
      } else if (this.counts) this.counts.weir_sets.rewritten++;
    } else if (fresh && this.counts) this.counts.weir_sets.added++;
    if (written) this.maps.sets.update(u32Key(id), encodeSetValue(value));
    // Keys of the previous version that this one no longer has: only now
    // that the set no longer points at them (their classes go with release).
    this.deleteFqdnKeys(keys.stale, res);
    this.sets.set(key, { id, contentKey, value, nodeKeys, classKeys, fqdnKeys: keys.keys, failed: false });
    this.log.debug(
      { set: id, prefixes4: desired.v4.length, prefixes6: desired.v6.length, nodes: nodeKeys.length, newNodes: newNodes.length, fqdnKeys: keys.keys.length, written },
      'policy set written',
    );
    return {
      written,
      release: () => {
        if (old) {
          this.unref(old.nodeKeys, old.classKeys);
          this.releaseHeld(old);
        }
      },
    };
  }

  /** The weir_fqdn_keys key of a compiled fqdn key of set `setId`. */
  fqdnKeyOf(setId: number, k: FqdnKey): Buffer {
    if (!this.dnsSecret) throw new Error('StateWriter: no DNS secret (caps.dnsSecret)');
    const secret = this.dnsSecret();
    // Texts of removed policies are not tracked: the memo starts over when it outgrows the map.
    if (this.hashes?.secret !== secret || this.hashes.byText.size > 2 * (this.maps.fqdnKeys?.maxEntries ?? 0)) this.hashes = { secret, byText: new Map() };
    let hash = this.hashes.byText.get(k.text);
    if (hash === undefined) {
      // Exact: the hash of the name; `*.s`: the hash of s, kind wildcard.
      hash = nameHash(secret, k.matcher.kind === 'name' ? k.matcher.name : k.matcher.suffix);
      this.hashes.byText.set(k.text, hash);
    }
    return encodeDnsKey({ setId, kind: k.matcher.kind === 'name' ? CONST.WEIR_DNS_KEY_EXACT : CONST.WEIR_DNS_KEY_WILDCARD, hash });
  }

  /**
   * Makes set `setId`'s keys in weir_fqdn_keys those of `fqdn` (their
   * class ids in `classIds`, already written): new keys are added, keys
   * with another class rewritten in place. Returns the keys now, and the
   * keys of the previous version (`oldKeys`) to delete once the set value
   * is written. Throws with nothing changed when the map has no room.
   */
  private writeFqdnKeys(setId: number, fqdn: readonly FqdnKey[], classIds: Map<string, number>, oldKeys: readonly string[], res: ApplyResult): { keys: string[]; stale: string[] } {
    const map = this.maps.fqdnKeys;
    if (!map || fqdn.length === 0) return { keys: [], stale: [...oldKeys] };
    const want = new Map<string, number>();
    for (const k of fqdn) want.set(this.fqdnKeyOf(setId, k).toString('hex'), classIds.get(classKey(k.cls)) ?? 0);
    const adds: [string, number][] = [];
    const rewrites: [string, number][] = [];
    for (const [hex, cls] of want) {
      const cur = this.fqdn.get(hex);
      if (cur === undefined) adds.push([hex, cls]);
      else if (cur !== cls) rewrites.push([hex, cls]);
    }
    // A hash map refuses a new key when full (E2BIG); say which map, as the array maps do.
    if (this.fqdn.size + adds.length > map.maxEntries) throw new CapacityError('weir_fqdn_keys', map.maxEntries);
    const added: string[] = [];
    try {
      for (const [hex, cls] of adds) {
        map.update(Buffer.from(hex, 'hex'), encodeFqdnKeyValue(cls));
        added.push(hex);
        this.fqdn.set(hex, cls);
      }
    } catch (err) {
      for (const hex of added) {
        map.delete(Buffer.from(hex, 'hex'));
        this.fqdn.delete(hex);
      }
      throw err;
    }
    // In place: one element each, read anew by every decision. Cannot fail for room.
    for (const [hex, cls] of rewrites) {
      map.update(Buffer.from(hex, 'hex'), encodeFqdnKeyValue(cls));
      this.fqdn.set(hex, cls);
    }
    res.fqdnKeysWritten += adds.length + rewrites.length;
    if (this.counts) {
      this.counts.weir_fqdn_keys.added += adds.length;
      this.counts.weir_fqdn_keys.rewritten += rewrites.length;
    }
    return { keys: [...want.keys()], stale: oldKeys.filter((h) => !want.has(h)) };
  }

  private deleteFqdnKeys(keys: readonly string[], res: ApplyResult): void {
    const map = this.maps.fqdnKeys;
    if (!map) return;
    for (const hex of keys) {
      if (!this.fqdn.has(hex)) continue;
      map.delete(Buffer.from(hex, 'hex'));
      this.fqdn.delete(hex);
      res.fqdnKeysRemoved++;
      if (this.counts) this.counts.weir_fqdn_keys.removed++;
    }
  }

  /**
   * Adds the trusted resolvers not yet in weir_dns_resolvers (one entry per
   * address and port) and returns the removal of those no longer trusted,
   * to run once the sets are written. `undefined` (a state not made by the
   * engine) leaves the map alone. A resolver that does not fit is logged:
   * answers from it teach nothing.
   */
  private writeResolvers(resolvers: readonly Resolver[] | undefined, res: ApplyResult): () => void {
    const map = this.maps.dnsResolvers;
    if (!map || resolvers === undefined) return () => {};
    const want = new Set<string>();
    for (const r of resolvers) {
      let a: ReturnType<typeof addressBytes>;
      try {
        a = addressBytes(r.ip);
      } catch {
        continue;
      }
      for (const port of r.ports) want.add(encodeDnsResolverKey({ family: a.family === 4 ? 2 : 10, port, addr: a.bytes }).toString('hex'));
    }
    const failed: string[] = [];
    for (const hex of want) {
      if (this.resolvers.has(hex)) continue;
      try {
        map.update(Buffer.from(hex, 'hex'), encodeDnsResolverValue());
        this.resolvers.add(hex);
        res.resolversWritten++;
        if (this.counts) this.counts.weir_dns_resolvers.added++;
      } catch (err) {
        failed.push(`${describeResolverKey(hex)}: ${(err as Error).message}`);
      }
    }
    if (failed.length > 0) {
      this.log.error({ failed: failed.length, first: failed[0] }, 'trusted DNS resolvers could not be written (weir_dns_resolvers full?): answers from them teach nothing');
    }
    const counts = this.counts;
    return () => {
      for (const hex of [...this.resolvers]) {
        if (want.has(hex)) continue;
        map.delete(Buffer.from(hex, 'hex'));
        this.resolvers.delete(hex);
        res.resolversRemoved++;
        if (counts) counts.weir_dns_resolvers.removed++;
      }
    };
  }

  private unref(nodeKeys: string[], classKeys: string[]): void {
    for (const k of nodeKeys) {
      const kind = isTailKey(k) ? 'tails' : 'nodes';
      const slots = this.slotsOf(kind);
      const s = slots.get(k);
      if (s && --s.refs === 0) {
        slots.delete(k);
        this.allocOf(kind).release(s.index);
      }
    }
    for (const k of classKeys) {
      const s = this.classes.get(k);
      if (s && --s.refs === 0) {
        this.classes.delete(k);
        this.classAlloc.release(s.index);
      }
    }
  }

  private batchWrite(map: WritableMap, items: { index: number; buf: Buffer }[]): void {
    const n = items.length;
    const size = items[0]?.buf.length ?? 0;
    const keys = Buffer.alloc(n * 4);
    const values = Buffer.alloc(n * size);
    items.forEach((it, i) => {
      keys.writeUInt32LE(it.index, i * 4);
      it.buf.copy(values, i * size);
    });
    map.updateBatch(keys, values, n);
  }

  // ---- read side ----------------------------------------------------------

  endpoints(): EndpointInfo[] {
    const out: EndpointInfo[] = [];
    for (const [cg, p] of this.pods) {
      if (!p.binding) continue;
      out.push({
        endpointId: p.value.endpointId,
        uid: p.binding.uid,
        namespace: p.binding.namespace,
        name: p.binding.name,
        setKey: p.binding.setKey,
        cgroupId: BigInt(cg),
      });
    }
    return out;
  }

  setIdOf(key: string): number | undefined {
    return this.sets.get(key)?.id;
  }

  setKeyOfId(id: number): string | undefined {
    for (const [k, s] of this.sets) if (s.id === id) return k;
    return undefined;
  }

  usage(): Record<string, { used: number; capacity: number }> {
    return {
      weir_pods: { used: this.pods.size, capacity: this.maps.pods.maxEntries },
      weir_pod_ips: { used: this.podIps.size, capacity: this.maps.podIps.maxEntries },
      weir_sets: { used: this.setAlloc.inUse, capacity: this.maps.sets.maxEntries - 1 },
      weir_nodes: { used: this.nodeAlloc.inUse, capacity: this.maps.nodes.maxEntries - 1 },
      weir_classes: { used: this.classAlloc.inUse, capacity: this.maps.classes.maxEntries - 1 },
      ...(this.maps.tails && this.tailAlloc ? { weir_trie_tails: { used: this.tailAlloc.inUse, capacity: this.maps.tails.maxEntries - 1 } } : {}),
      endpoints: { used: this.endpointAlloc.inUse, capacity: this.endpointAlloc.capacity },
      ...(this.maps.fqdnKeys ? { weir_fqdn_keys: { used: this.fqdn.size, capacity: this.maps.fqdnKeys.maxEntries } } : {}),
      ...(this.maps.dnsResolvers ? { weir_dns_resolvers: { used: this.resolvers.size, capacity: this.maps.dnsResolvers.maxEntries } } : {}),
    };
  }

  /** The entries written to weir_dns_resolvers (tests, status). */
  resolverEntries(): { ip: string; port: number }[] {
    return [...this.resolvers].map(describeResolver).sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.port - b.port));
  }

  /** The weir_fqdn_keys entries of a set (tests, status): class id by key (hex). */
  fqdnKeysOfSet(setKey: string): Map<string, number> {
    const out = new Map<string, number>();
    for (const hex of this.sets.get(setKey)?.fqdnKeys ?? []) out.set(hex, this.fqdn.get(hex) ?? 0);
    return out;
  }

  /** Reads a class back (tests, status). */
  readClass(id: number): ReturnType<typeof decodePortClass> | null {
    const raw = this.maps.classes.lookup(u32Key(id));
    return raw ? decodePortClass(raw) : null;
  }
}

function describeResolver(hex: string): { ip: string; port: number } {
  const k = decodeDnsResolverKey(Buffer.from(hex, 'hex'));
  return { ip: bytesToAddress(k.family === 2 ? 4 : 6, k.addr), port: k.port };
}

function describeResolverKey(hex: string): string {
  const r = describeResolver(hex);
  return r.ip.includes(':') ? `[${r.ip}]:${r.port}` : `${r.ip}:${r.port}`;
}

export { CapacityError, classKey };
