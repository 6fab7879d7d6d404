// Builds the multibit destination trie the datapath walks (layout in
// bpf/include/weir_abi.h, struct weir_trie_node): stride 8, leaf pushing,
// one 256-slot node per (depth, address-byte prefix) that needs one.
//
// Path compression: a subtree that holds exactly one prefix over one
// background class becomes a tail (struct weir_trie_tail: the prefix, its
// class and the background's), written to weir_trie_tails and pointed at by
// a SLOT_TAIL slot, instead of the chain of nodes the prefix would need
// below the point where it parts from every other prefix. A random IPv6
// /128 thus costs one 40-byte tail instead of up to 15 1-KiB nodes, and a
// walk one lookup instead of the chain's.
//
// Nodes are hash-consed: a node's key is its slots (run-length) for a leaf,
// or a digest of its slots and its children's keys, so identical subtrees
// (common when sets share rules) are written once and shared. Indices are assigned
// by the datapath's allocator; keys are independent of indices.
import { hash } from 'node:crypto';
import type { Prefix } from '../policy/prefix.js';

export const SLOT_CHILD = 0x80000000;
export const SLOT_TAIL = 0x40000000;
export const FANOUT = 256;

interface BuildNode {
  leaf: Uint32Array; // class id per slot (leaf-pushed)
  /** Child per slot; null until the node has one (most nodes are leaves). */
  children: Map<number, BuildNode> | null;
  /** Prefixes that descended into this node (ending in it or below). */
  count: number;
  /** The first of them: the tail's prefix when it is the only one. */
  only: { prefix: Prefix; classId: number } | null;
  /** The class the node was filled with: what a tail's miss is. */
  bg: number;
}

export interface TrieTailSpec {
  key: string;
  prefix: Prefix;
  hit: number;
  miss: number;
}

export interface TrieNodeSpec {
  key: string;
  /** Slot values: class ids, or child keys for child slots. */
  leaf: Uint32Array;
  /** Sparse: the child key of each slot that has a child (holes elsewhere). */
  childKeys: (string | undefined)[];
}

export interface BuiltTrie {
  rootKey: string | null; // null: no prefixes, the family resolves to class 0
  /** Every distinct node, children before parents. */
  nodes: TrieNodeSpec[];
  /** Every distinct tail (keys start with "T"); nodes point at them. */
  tails: TrieTailSpec[];
}

/** True for the key of a tail (TrieTailSpec), false for a node's. */
export function isTailKey(key: string): boolean {
  return key.charCodeAt(0) === 84; // 'T'
}

/**
 * Node slots come from 1 MiB chunks: a build of 10k prefixes makes ~14k
 * nodes, and a typed array (backing store) each cost more than building
 * the trie itself. A node's leaf is a view into its chunk.
 */
class SlotArena {
  private chunk = new Uint32Array(0);
  private used = 0;
  alloc(fill: number): Uint32Array {
    if (this.used + FANOUT > this.chunk.length) {
      this.chunk = new Uint32Array(FANOUT * 1024);
      this.used = 0;
    }
    const v = this.chunk.subarray(this.used, this.used + FANOUT);
    this.used += FANOUT;
    if (fill) v.fill(fill);
    return v;
  }
}

function newNode(arena: SlotArena, fill: number): BuildNode {
  return { leaf: arena.alloc(fill), children: null, count: 0, only: null, bg: fill };
}

const NO_CHILDREN: (string | undefined)[] = [];

/**
 * @param prefixes (prefix, class id) pairs of one family; a prefix that
 *   covers another must come first or be of equal length (sorted by length).
 * @param opts.tails path-compress single-prefix subtrees into tails
 *   (default true); false builds nodes only (a writer without weir_trie_tails).
 */
export function buildTrie(prefixes: readonly { prefix: Prefix; classId: number }[], opts: { tails?: boolean } = {}): BuiltTrie {
  if (prefixes.length === 0) return { rootKey: null, nodes: [], tails: [] };
  // Already ordered when every prefix comes after those that cover it
  // (flatten's depth-first order); otherwise sort by length.
  const sorted = coversFirst(prefixes) ? prefixes : [...prefixes].sort((a, b) => a.prefix.len - b.prefix.len);
  const arena = new SlotArena();
  const root = newNode(arena, 0);
  for (const { prefix, classId } of sorted) {
    let node = root;
    let depth = 0;
    // Descend while the prefix is longer than this node's byte.
    while (prefix.len > (depth + 1) * 8) {
      const b = prefix.bytes[depth] ?? 0;
      let child = node.children?.get(b);
      if (!child) {
        child = newNode(arena, node.leaf[b] ?? 0);
        (node.children ??= new Map()).set(b, child);
      }
      if (child.count++ === 0) child.only = { prefix, classId };
      node = child;
      depth++;
    }
    // The prefix ends inside this node's byte: it covers 2^(8*(depth+1)-len) slots.
    const free = (depth + 1) * 8 - prefix.len;
    const first = (prefix.bytes[depth] ?? 0) & ((0xff << free) & 0xff);
    const count = 1 << free;
    node.leaf.fill(classId, first, first + count);
    // Covering prefixes come first, so a covered slot has no child yet;
    // keep the builder honest if that ever changes.
    if (node.children) {
      for (let s = first; s < first + count; s++) {
        const c = node.children.get(s);
        if (c) pushDown(c, classId);
      }
    }
  }
  const out: Serialized = { nodes: [], tails: [], seen: new Set(), compress: opts.tails !== false };
  const rootKey = serialize(root, out, true);
  return { rootKey, nodes: out.nodes, tails: out.tails };
}

interface Serialized {
  nodes: TrieNodeSpec[];
  tails: TrieTailSpec[];
  seen: Set<string>;
  compress: boolean;
}

/**
 * True when the prefixes are in depth-first order (by address, a covering
 * prefix before what it covers, as flatten() returns them): then every
 * prefix comes after those that cover it and no sort is needed.
 */
function coversFirst(prefixes: readonly { prefix: Prefix }[]): boolean {
  for (let i = 1; i < prefixes.length; i++) {
    const a = (prefixes[i - 1] as { prefix: Prefix }).prefix;
    const b = (prefixes[i] as { prefix: Prefix }).prefix;
    let d = 0;
    for (let j = 0; j < b.bytes.length && d === 0; j++) d = (a.bytes[j] ?? 0) - (b.bytes[j] ?? 0);
    if (d > 0 || (d === 0 && a.len > b.len)) return false;
  }
  return true;
}

function pushDown(n: BuildNode, classId: number): void {
  n.leaf.fill(classId);
  n.bg = classId;
  if (n.children) for (const c of n.children.values()) pushDown(c, classId);
}

/** The slots as runs ("class*count,..."): the node's content, exactly, and short for the usual node. */
function runs(leaf: Uint32Array): string {
  let out = '';
  let start = 0;
  for (let i = 1; i <= FANOUT; i++) {
    if (i === FANOUT || leaf[i] !== leaf[start]) {
      out += `${leaf[start]}*${i - start},`;
      start = i;
    }
  }
  return out;
}

/**
 * A node's key. A node without children is keyed by its content itself
 * ("L" + its runs): most nodes are such leaves, and no hash can collide. A
 * node with children is keyed by a SHA-1 of its runs and its children's
 * keys, so a key stays short however deep the subtree. A subtree that one
 * prefix alone descended into becomes a tail, keyed by its content
 * ("T" + prefix, hit and miss classes).
 */
function serialize(n: BuildNode, out: Serialized, isRoot: boolean): string {
  if (!isRoot && out.compress && n.count === 1 && n.only) {
    const { prefix, classId } = n.only;
    const key = `T${Buffer.from(prefix.bytes).toString('hex')}/${prefix.len}=${classId}|${n.bg}`;
    if (!out.seen.has(key)) {
      out.seen.add(key);
      out.tails.push({ key, prefix, hit: classId, miss: n.bg });
    }
    return key;
  }
  let childKeys = NO_CHILDREN;
  let key: string;
  if (n.children) {
    childKeys = [];
    let tail = '';
    for (const s of [...n.children.keys()].sort((a, b) => a - b)) {
      const k = serialize(n.children.get(s) as BuildNode, out, false);
      childKeys[s] = k;
      tail += `${s}:${k};`;
    }
    key = `N${hash('sha1', `${runs(n.leaf)}|${tail}`, 'base64')}`;
  } else {
    key = `L${runs(n.leaf)}`;
  }
  if (!out.seen.has(key)) {
    out.seen.add(key);
    out.nodes.push({ key, leaf: n.leaf, childKeys });
  }
  return key;
}

/** Encodes a node's slots with child keys resolved to node (or tail) indices. */
export function encodeNode(spec: TrieNodeSpec, indexOf: (key: string) => number): Uint32Array {
  const slots = Uint32Array.from(spec.leaf);
  spec.childKeys.forEach((k, s) => {
    if (k !== undefined) slots[s] = ((isTailKey(k) ? SLOT_TAIL : SLOT_CHILD) | indexOf(k)) >>> 0;
  });
  return slots;
}

export interface EncodedTail {
  addr: Uint8Array; // 16 bytes
  mask: Uint8Array; // 16 bytes
  hit: number;
  miss: number;
}

/** Userspace walk of encoded nodes and tails: the same algorithm as weir_class_of(). */
export function walkEncoded(
  root: number,
  addr: Uint8Array,
  nodeAt: (i: number) => Uint32Array | undefined,
  tailAt: (i: number) => EncodedTail | undefined = () => undefined,
): number {
  let node = root;
  for (let i = 0; i < addr.length; i++) {
    if (!node) return 0;
    const n = nodeAt(node);
    if (!n) return 0;
    const s = n[addr[i] ?? 0] ?? 0;
    if (s & SLOT_TAIL) {
      const t = tailAt(s & ~SLOT_TAIL);
      if (!t) return 0;
      for (let j = 0; j < addr.length; j++) if ((((addr[j] ?? 0) ^ (t.addr[j] ?? 0)) & (t.mask[j] ?? 0)) !== 0) return t.miss;
      return t.hit;
    }
    if (!(s & SLOT_CHILD)) return s;
    node = s & ~SLOT_CHILD;
  }
  return 0;
}
