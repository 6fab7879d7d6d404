// Builds the multibit destination trie the datapath walks (layout in
// bpf/include/weir_abi.h, struct weir_trie_node): stride 8, leaf pushing,
// one 256-slot node per (depth, address-byte prefix) that needs one.
//
// Nodes are hash-consed: a node's key is a digest of its slots with child
// pointers replaced by the children's keys, so identical subtrees (common
// when sets share rules) are written once and shared. Indices are assigned
// by the datapath's allocator; keys are independent of indices.
import { createHash } from 'node:crypto';
import type { Prefix } from '../policy/prefix.js';

export const SLOT_CHILD = 0x80000000;
export const FANOUT = 256;

interface BuildNode {
  leaf: Uint32Array; // class id per slot (leaf-pushed)
  children: (BuildNode | undefined)[];
}

export interface TrieNodeSpec {
  key: string;
  /** Slot values: class ids, or child keys for child slots. */
  leaf: Uint32Array;
  childKeys: (string | undefined)[];
}

export interface BuiltTrie {
  rootKey: string | null; // null: no prefixes, the family resolves to class 0
  /** Every distinct node, children before parents. */
  nodes: TrieNodeSpec[];
}

function newNode(fill: number): BuildNode {
  const leaf = new Uint32Array(FANOUT);
  if (fill) leaf.fill(fill);
  return { leaf, children: new Array<BuildNode | undefined>(FANOUT) };
}

/**
 * @param prefixes (prefix, class id) pairs of one family; a prefix that
 *   covers another must come first or be of equal length (sorted by length).
 */
export function buildTrie(prefixes: readonly { prefix: Prefix; classId: number }[]): BuiltTrie {
  if (prefixes.length === 0) return { rootKey: null, nodes: [] };
  const sorted = [...prefixes].sort((a, b) => a.prefix.len - b.prefix.len);
  const root = newNode(0);
  for (const { prefix, classId } of sorted) {
    let node = root;
    let depth = 0;
    // Descend while the prefix is longer than this node's byte.
    while (prefix.len > (depth + 1) * 8) {
      const b = prefix.bytes[depth] ?? 0;
      let child = node.children[b];
      if (!child) {
        child = newNode(node.leaf[b] ?? 0);
        node.children[b] = child;
      }
      node = child;
      depth++;
    }
    // The prefix ends inside this node's byte: it covers 2^(8*(depth+1)-len) slots.
    const free = (depth + 1) * 8 - prefix.len;
    const first = (prefix.bytes[depth] ?? 0) & ((0xff << free) & 0xff);
    const count = 1 << free;
    for (let s = first; s < first + count; s++) {
      node.leaf[s] = classId;
      // Sorted by length, so a covered slot cannot have a child yet; keep
      // the builder honest if that ever changes.
      const c = node.children[s];
      if (c) pushDown(c, classId);
    }
  }
  const nodes: TrieNodeSpec[] = [];
  const seen = new Set<string>();
  const rootKey = serialize(root, nodes, seen);
  return { rootKey, nodes };
}

function pushDown(n: BuildNode, classId: number): void {
  n.leaf.fill(classId);
  for (const c of n.children) if (c) pushDown(c, classId);
}

function serialize(n: BuildNode, out: TrieNodeSpec[], seen: Set<string>): string {
  const childKeys = new Array<string | undefined>(FANOUT);
  const h = createHash('sha1');
  h.update(Buffer.from(n.leaf.buffer, n.leaf.byteOffset, n.leaf.byteLength));
  for (let s = 0; s < FANOUT; s++) {
    const c = n.children[s];
    if (!c) continue;
    const k = serialize(c, out, seen);
    childKeys[s] = k;
    h.update(`${s}:${k};`);
  }
  const key = h.digest('base64');
  if (!seen.has(key)) {
    seen.add(key);
    out.push({ key, leaf: n.leaf, childKeys });
  }
  return key;
}

/** Encodes a node's slots with child keys resolved to node indices. */
export function encodeNode(spec: TrieNodeSpec, indexOf: (key: string) => number): Uint32Array {
  const slots = Uint32Array.from(spec.leaf);
  for (let s = 0; s < FANOUT; s++) {
    const k = spec.childKeys[s];
    if (k !== undefined) slots[s] = (SLOT_CHILD | indexOf(k)) >>> 0;
  }
  return slots;
}

/** Userspace walk of encoded nodes: the same algorithm as weir_trie_walk(). */
export function walkEncoded(root: number, addr: Uint8Array, nodeAt: (i: number) => Uint32Array | undefined): number {
  let node = root;
  for (let i = 0; i < addr.length; i++) {
    if (!node) return 0;
    const n = nodeAt(node);
    if (!n) return 0;
    const s = n[addr[i] ?? 0] ?? 0;
    if (!(s & SLOT_CHILD)) return s;
    node = s & ~SLOT_CHILD;
  }
  return 0;
}
