// Index allocation for array-map slots (trie nodes, port classes, sets,
// endpoints). Freed indices are quarantined for a grace period before reuse:
// a BPF program that loaded an old root a moment ago may still be walking
// the old nodes, so their slots must not be rewritten while it can.

export class IndexAllocator {
  private readonly free: number[] = [];
  private readonly quarantine: { index: number; until: number }[] = [];
  private readonly reserved = new Set<number>();
  private next: number;
  private used = 0;

  constructor(
    readonly name: string,
    private readonly first: number,
    readonly capacity: number,
    private readonly graceMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.next = first;
  }

  /** Indices in use by state adopted from pinned maps; not handed out until released. */
  reserve(index: number): void {
    if (index < this.first || index >= this.capacity || this.reserved.has(index)) return;
    this.reserved.add(index);
    this.used++;
    // Keep the bump pointer past reserved indices.
    if (index >= this.next) {
      for (let i = this.next; i < index; i++) this.free.push(i);
      this.next = index + 1;
    } else {
      const at = this.free.indexOf(index);
      if (at >= 0) this.free.splice(at, 1);
    }
  }

  alloc(): number {
    this.reclaim();
    let i = this.free.pop();
    if (i === undefined) {
      if (this.next >= this.capacity) {
        throw new CapacityError(this.name, this.capacity);
      }
      i = this.next++;
    }
    this.used++;
    return i;
  }

  release(index: number): void {
    this.reserved.delete(index);
    this.used--;
    this.quarantine.push({ index, until: this.now() + this.graceMs });
  }

  get inUse(): number {
    return this.used;
  }

  private reclaim(): void {
    const t = this.now();
    while (this.quarantine.length > 0 && (this.quarantine[0]?.until ?? Infinity) <= t) {
      const q = this.quarantine.shift();
      if (q) this.free.push(q.index);
    }
  }
}

export class CapacityError extends Error {
  readonly code = 'EWEIRFULL';
  constructor(
    readonly map: string,
    readonly capacity: number,
  ) {
    super(`${map} is full (${capacity} entries); raise its capacity (see weir agent --help) or reduce policy size`);
    this.name = 'CapacityError';
  }
}
