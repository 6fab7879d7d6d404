// Which policies and rules a violation event is attributed to, cached.
//
// Agent.enrich names the policy and rule of every violation from
// PolicyEngine.explain(): `selectedBy` (the policies of the pod's set) and
// `matches` (the set's entries that contain the destination and whose ports
// match). explain() scans every entry of the set and parses the address: tens
// of µs per event, at tens of thousands of events per second.
//
// What the attribution depends on, and so the cache key:
//   - the set (explain reads nothing of the pod but its setKey), in one
//     DesiredState: the cache is emptied whenever the state object changes;
//   - the destination only through "which entry prefixes and excepts contain
//     it". The prefixes' first addresses and one-past-last addresses cut the
//     address space into cells; containment is constant inside a cell, so the
//     cell index stands for the address (a scan of 198.18.0.0/15 is one cell);
//   - the port the same way: the entries' port ranges cut 0..65535 into cells;
//     a port-less protocol (port null) is a cell of its own;
//   - the protocol as it is.
// The reason is not part of the key: the caller derives the policy and rule
// from selectedBy and matches per reason. Misses call explain() with the
// event's own address and port, so a cached value is exactly what explain()
// returns for any address and port of the same cells.
import type { DesiredPod, DesiredSet, DesiredState, Explanation } from '../policy/engine.js';
import type { Family, Prefix } from '../policy/prefix.js';

/** The parts of an explanation that depend only on the cells (verdict and bits may not: they are not cached). */
export type Attribution = Pick<Explanation, 'selectedBy' | 'matches'>;

type ExplainFn = (state: DesiredState, pod: DesiredPod, dst: string, proto: number, port: number | null) => Explanation;

interface SetCells {
  /** Sorted cut points of the IPv4 space (as unsigned 32-bit numbers) and of the IPv6 space. */
  v4: number[];
  v6: bigint[];
  ports: number[];
  byCell: Map<string, Attribution>;
}

const NO_SET: Attribution = { selectedBy: [], matches: [] };
const TWO_32 = 2 ** 32;
const TWO_128 = 1n << 128n;

function v4Number(b: Uint8Array, at: number): number {
  return (b[at] ?? 0) * 0x1000000 + (((b[at + 1] ?? 0) << 16) | ((b[at + 2] ?? 0) << 8) | (b[at + 3] ?? 0));
}

function v6BigInt(b: Uint8Array): bigint {
  let hi = 0n;
  for (let i = 0; i < 16; i += 4) hi = (hi << 32n) | BigInt(v4Number(b, i));
  return hi;
}

/** Number of cuts <= x: the index of x's cell. */
function cellOf<T extends number | bigint>(cuts: T[], x: T): number {
  let lo = 0;
  let hi = cuts.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((cuts[mid] as T) <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function sortedUnique<T extends number | bigint>(xs: T[]): T[] {
  xs.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return xs.filter((x, i) => i === 0 || x !== xs[i - 1]);
}

function cellsOf(set: DesiredSet): SetCells {
  const v4: number[] = [];
  const v6: bigint[] = [];
  const ports: number[] = [];
  const cut = (p: Prefix): void => {
    if (p.family === 4) {
      const start = v4Number(p.bytes, 0);
      const end = start + 2 ** (32 - p.len);
      v4.push(start);
      if (end < TWO_32) v4.push(end);
    } else {
      const start = v6BigInt(p.bytes);
      const end = start + (1n << BigInt(128 - p.len));
      v6.push(start);
      if (end < TWO_128) v6.push(end);
    }
  };
  for (const e of set.entries) {
    cut(e.prefix);
    for (const x of e.except) cut(x);
    for (const r of e.ports ?? []) ports.push(r.lo, r.hi + 1);
  }
  return { v4: sortedUnique(v4), v6: sortedUnique(v6), ports: sortedUnique(ports), byCell: new Map() };
}

export interface AttributionCacheOptions {
  /** Cached attributions across all sets before the cache starts over (default 16,384). */
  maxEntries?: number;
}

export class AttributionCache {
  private state: DesiredState | null = null;
  private sets = new Map<DesiredSet, SetCells>();
  private entries = 0;
  private readonly maxEntries: number;
  hits = 0;
  misses = 0;

  constructor(
    private readonly explain: ExplainFn,
    opts: AttributionCacheOptions = {},
  ) {
    this.maxEntries = opts.maxEntries ?? 16_384;
  }

  /**
   * selectedBy and matches of explain(state, pod, dst, proto, port).
   * `family` and `bytes` are the destination as the kernel reported it
   * (bytes: 4 or 16 of them); `dst` is the same address as text.
   */
  attribution(state: DesiredState, pod: DesiredPod, dst: string, family: Family, bytes: Uint8Array, proto: number, port: number | null): Attribution {
    if (state !== this.state) {
      this.state = state;
      this.sets.clear();
      this.entries = 0;
    }
    const set = state.sets.get(pod.setKey);
    if (!set) return NO_SET;
    let cells = this.sets.get(set);
    if (!cells) {
      cells = cellsOf(set);
      this.sets.set(set, cells);
    }
    // An IPv4-mapped IPv6 address is an IPv4 destination to explain() (addressBytes()).
    let fam: Family = family;
    let at = 0;
    if (family === 6 && isV4Mapped(bytes)) {
      fam = 4;
      at = 12;
    }
    const addrCell = fam === 4 ? cellOf(cells.v4, v4Number(bytes, at)) : cellOf(cells.v6, v6BigInt(bytes));
    const portCell = port === null ? -1 : cellOf(cells.ports, port);
    const key = `${fam}/${addrCell}/${proto}/${portCell}`;
    const got = cells.byCell.get(key);
    if (got) {
      this.hits++;
      return got;
    }
    this.misses++;
    const x = this.explain(state, pod, dst, proto, port);
    const a: Attribution = { selectedBy: x.selectedBy, matches: x.matches };
    if (this.entries >= this.maxEntries) {
      // Bounded: start over (a flood of distinct cells is rare; the sets' cuts are kept).
      for (const c of this.sets.values()) c.byCell.clear();
      this.entries = 0;
    }
    cells.byCell.set(key, a);
    this.entries++;
    return a;
  }
}

function isV4Mapped(b: Uint8Array): boolean {
  if (b.length < 16) return false;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return false;
  return b[10] === 0xff && b[11] === 0xff;
}

/** A process name looked up at most once a second per (pid, thread name): /proc/PID/comm is a file read per event otherwise. */
export class ProcessNameCache {
  private names = new Map<number, { thread: string; name: string | null; at: number }>();

  constructor(
    private readonly lookup: (pid: number) => string | null,
    private readonly ttlMs = 1000,
    private readonly maxEntries = 4096,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * The thread name is part of the key: an exec renames the thread, so a new
   * program in the same pid is looked up again; the TTL bounds how long a
   * reused pid could show the name of the process that had it before.
   */
  get(pid: number, thread: string): string | null {
    const t = this.now();
    const c = this.names.get(pid);
    if (c && c.thread === thread && t - c.at < this.ttlMs) return c.name;
    const name = this.lookup(pid);
    if (!c && this.names.size >= this.maxEntries) this.names.clear();
    this.names.set(pid, { thread, name, at: t });
    return name;
  }
}

/** Date#toISOString() of now, made once per millisecond (the events of a batch share a few). */
export class IsoClock {
  private lastMs = Number.NaN;
  private last = '';

  now(): string {
    const t = Date.now();
    if (t !== this.lastMs) {
      this.last = new Date(t).toISOString();
      this.lastMs = t;
    }
    return this.last;
  }
}

/** An address from the kernel as text: IPv4 written here (what ipaddr.js writes), IPv6 by `slow`. */
export function fastAddress(family: Family, bytes: Uint8Array, slow: (family: Family, bytes: Uint8Array) => string): string {
  if (family === 4) return `${bytes[0] ?? 0}.${bytes[1] ?? 0}.${bytes[2] ?? 0}.${bytes[3] ?? 0}`;
  return slow(family, bytes);
}
