// Typed owners of libbpf objects: BpfObject, BpfProgram, BpfMap, BpfLink,
// RingBuffer. Lifecycle contracts (who closes what, what survives):
//  - BpfObject owns the ELF object and, once loaded, its program and map
//    fds. close() frees them; it detaches nothing (links hold attachments)
//    and unpins nothing.
//  - BpfProgram and BpfMap from a BpfObject are handles: they keep the
//    object alive, own no fd, and close() only releases the handle. Once
//    the object is closed, every call on them throws "BpfObject is closed".
//  - BpfMap.openPinned() owns its own fd; close() closes it (the pin stays).
//  - BpfLink owns a BPF_LINK_CREATE link. close() closes the fd: an
//    unpinned link is detached, a pinned one keeps the program attached.
//    detach() ends the attachment whatever the pins.
//  - RingBuffer owns a dup of the ring map's fd and a uv poll handle on the
//    event loop; close() stops delivery and lets the process exit.
// All close() methods are idempotent; any other call after close() throws.
// Owners that are garbage-collected without close() are reported through
// a LeakReporter (default: a process warning) and left as they are.
import type {
  LinkInfo,
  MapDescriptor,
  MapDump,
  NativeBpfObject,
  NativeLink,
  NativeMap,
  NativeProgram,
  NativeRingBuffer,
  ProgramDescriptor,
  TestRunOptions,
  TestRunResult,
} from './addon.js';
import { loadAddon } from './addon.js';
import { emitLeakWarning, LeakGuard, type LeakReporter } from './leak.js';

// Module-private access to the native handle behind a wrapper.
const native: unique symbol = Symbol('weir.native');

export interface OwnerOptions {
  /** Where to report an owner collected without close(). */
  onLeak?: LeakReporter;
}

export interface LoadOptions extends OwnerOptions {
  /** Map name -> max_entries, applied before load. */
  maxEntries?: Record<string, number>;
  /** Map name -> bpffs path: reuse the pinned map there, or pin a new one. */
  pinMaps?: Record<string, string>;
  /** Initial contents of .rodata (the `const volatile` settings). */
  rodata?: Uint8Array;
  /** Program name -> whether to load it. */
  autoload?: Record<string, boolean>;
}

export class BpfObject {
  readonly [native]: NativeBpfObject;
  readonly #onLeak: LeakReporter;
  readonly #guard: LeakGuard;

  private constructor(handle: NativeBpfObject, onLeak: LeakReporter) {
    this[native] = handle;
    this.#onLeak = onLeak;
    this.#guard = new LeakGuard(this, `weir: BpfObject '${handle.path}' was garbage-collected without close()`, onLeak);
  }

  /** Opens an ELF object; nothing reaches the kernel until load(). */
  static open(path: string, opts: OwnerOptions = {}): BpfObject {
    const addon = loadAddon();
    return new BpfObject(new addon.BpfObject(path), opts.onLeak ?? emitLeakWarning);
  }

  /**
   * open() + configure + load(). On failure the object is closed and the
   * error (with verifierLog for load failures) is rethrown.
   */
  static async load(path: string, opts: LoadOptions = {}): Promise<BpfObject> {
    const obj = BpfObject.open(path, opts);
    try {
      for (const [map, n] of Object.entries(opts.maxEntries ?? {})) obj.setMapMaxEntries(map, n);
      for (const [map, pin] of Object.entries(opts.pinMaps ?? {})) obj.setMapPinPath(map, pin);
      if (opts.rodata !== undefined) obj.setInitialValue('.rodata', opts.rodata);
      for (const [prog, on] of Object.entries(opts.autoload ?? {})) obj.setProgramAutoload(prog, on);
      await obj.load();
      return obj;
    } catch (err) {
      obj.close();
      throw err;
    }
  }

  get path(): string {
    return this[native].path;
  }

  get loaded(): boolean {
    return this[native].loaded;
  }

  get closed(): boolean {
    return this[native].closed;
  }

  /** What libbpf printed during load(), warnings included, on success too. */
  get loadLog(): string {
    return this[native].loadLog;
  }

  setMapMaxEntries(map: string, maxEntries: number): void {
    this[native].setMapMaxEntries(map, maxEntries);
  }

  /**
   * At load, libbpf reuses a compatible map pinned at `path` or pins the new
   * map there; an incompatible pinned map makes load() fail.
   */
  setMapPinPath(map: string, path: string): void {
    this[native].setMapPinPath(map, path);
  }

  /** For global-data maps ('.rodata'): must match its size exactly. */
  setInitialValue(map: string, value: Uint8Array): void {
    this[native].setInitialValue(map, value);
  }

  initialValue(map: string): Buffer | null {
    return this[native].initialValue(map);
  }

  setProgramAutoload(program: string, autoload: boolean): void {
    this[native].setProgramAutoload(program, autoload);
  }

  /** Loads into the kernel on the thread pool (the verifier runs here). */
  load(): Promise<void> {
    return this[native].load();
  }

  programs(): ProgramDescriptor[] {
    return this[native].programs();
  }

  program(name: string): BpfProgram {
    return new BpfProgram(this[native].program(name), this.#onLeak);
  }

  maps(): MapDescriptor[] {
    return this[native].maps();
  }

  map(name: string): BpfMap {
    return new BpfMap(this[native].map(name), null);
  }

  close(): void {
    this[native].close();
    this.#guard.release();
  }
}

export class BpfProgram {
  readonly [native]: NativeProgram;
  readonly #onLeak: LeakReporter;

  /** @internal Obtained from BpfObject.program(). */
  constructor(handle: NativeProgram, onLeak: LeakReporter) {
    this[native] = handle;
    this.#onLeak = onLeak;
  }

  get name(): string {
    return this[native].name;
  }

  get fd(): number {
    return this[native].fd;
  }

  get type(): number {
    return this[native].type;
  }

  get typeName(): string {
    return this[native].typeName;
  }

  get sectionName(): string {
    return this[native].sectionName;
  }

  get expectedAttachType(): number {
    return this[native].expectedAttachType;
  }

  /** Kernel program id. */
  get id(): number {
    return this[native].id;
  }

  get tag(): string {
    return this[native].tag;
  }

  get closed(): boolean {
    return this[native].closed;
  }

  /**
   * Attaches with a BPF link (multi-attach: programs others attached to the
   * cgroup, a CNI's included, keep running). The attach type is the one the
   * program's section implies.
   */
  attachCgroup(cgroupPath: string): BpfLink {
    return new BpfLink(this[native].attachCgroup(cgroupPath), this.#onLeak);
  }

  /** BPF_PROG_TEST_RUN, synchronously. */
  testRun(opts: TestRunOptions): TestRunResult {
    return this[native].testRun(opts);
  }

  /** BPF_PROG_TEST_RUN on the thread pool, for large repeat counts. */
  testRunAsync(opts: TestRunOptions): Promise<TestRunResult> {
    return this[native].testRunAsync(opts);
  }

  /** Releases this handle; the program belongs to its BpfObject. */
  close(): void {
    this[native].close();
  }
}

export class BpfMap {
  readonly [native]: NativeMap;
  readonly #guard: LeakGuard | null;

  /**
   * @internal Obtained from BpfObject.map() (a handle: `owned` is null) or
   * BpfMap.openPinned() (owns its fd: leaks are reported).
   */
  constructor(handle: NativeMap, owned: { description: string; onLeak: LeakReporter } | null) {
    this[native] = handle;
    this.#guard =
      owned === null
        ? null
        : new LeakGuard(this, `weir: ${owned.description} was garbage-collected without close()`, owned.onLeak);
  }

  /** Opens a pinned map (e.g. a running agent's) with its own fd. */
  static openPinned(path: string, opts: OwnerOptions = {}): BpfMap {
    return new BpfMap(loadAddon().Map.openPinned(path), {
      description: `BpfMap pinned at '${path}'`,
      onLeak: opts.onLeak ?? emitLeakWarning,
    });
  }

  get name(): string {
    return this[native].name;
  }

  get fd(): number {
    return this[native].fd;
  }

  get type(): number {
    return this[native].type;
  }

  get typeName(): string {
    return this[native].typeName;
  }

  get keySize(): number {
    return this[native].keySize;
  }

  /** The declared value size (per CPU for per-CPU maps). */
  get valueSize(): number {
    return this[native].valueSize;
  }

  /**
   * Bytes per value in lookup/update/dump buffers: valueSize, or for
   * per-CPU maps roundup(valueSize, 8) * possibleCpus.
   */
  get valueBufferSize(): number {
    return this[native].valueBufferSize;
  }

  get maxEntries(): number {
    return this[native].maxEntries;
  }

  get mapFlags(): number {
    return this[native].mapFlags;
  }

  get id(): number {
    return this[native].id;
  }

  get perCpu(): boolean {
    return this[native].perCpu;
  }

  get possibleCpus(): number {
    return this[native].possibleCpus;
  }

  get closed(): boolean {
    return this[native].closed;
  }

  /** The value, or null when the key is absent. */
  lookup(key: Uint8Array, flags?: number): Buffer | null {
    return flags === undefined ? this[native].lookup(key) : this[native].lookup(key, flags);
  }

  /** flags: BPF_ANY (default), BPF_NOEXIST or BPF_EXIST. */
  update(key: Uint8Array, value: Uint8Array, flags?: number): void {
    if (flags === undefined) this[native].update(key, value);
    else this[native].update(key, value, flags);
  }

  /** True if the key was present. */
  delete(key: Uint8Array): boolean {
    return this[native].delete(key);
  }

  /** `count` keys and values back to back; returns how many were written. */
  updateBatch(keys: Uint8Array, values: Uint8Array, count: number, flags?: number): number {
    return flags === undefined
      ? this[native].updateBatch(keys, values, count)
      : this[native].updateBatch(keys, values, count, flags);
  }

  /** Returns how many of the keys were present and deleted. */
  deleteBatch(keys: Uint8Array, count: number): number {
    return this[native].deleteBatch(keys, count);
  }

  keys(): Buffer[] {
    return this[native].keys();
  }

  dump(): MapDump {
    return this[native].dump();
  }

  pin(path: string): void {
    this[native].pin(path);
  }

  unpin(path: string): void {
    this[native].unpin(path);
  }

  close(): void {
    this[native].close();
    this.#guard?.release();
  }
}

export class BpfLink {
  readonly [native]: NativeLink;
  readonly #guard: LeakGuard;

  /** @internal Obtained from BpfProgram.attachCgroup() or BpfLink.openPinned(). */
  constructor(handle: NativeLink, onLeak: LeakReporter) {
    this[native] = handle;
    let what = 'BpfLink';
    try {
      const info = handle.info();
      what = `BpfLink (link id ${info.id}, program id ${info.progId})`;
    } catch {
      // Only for the message.
    }
    this.#guard = new LeakGuard(
      this,
      `weir: ${what} was garbage-collected without close(); it stays attached until the process exits`,
      onLeak,
    );
  }

  /** Opens a pinned link, e.g. one a previous agent run left in the bpffs. */
  static openPinned(path: string, opts: OwnerOptions = {}): BpfLink {
    return new BpfLink(loadAddon().Link.openPinned(path), opts.onLeak ?? emitLeakWarning);
  }

  get fd(): number {
    return this[native].fd;
  }

  get pinPath(): string | null {
    return this[native].pinPath;
  }

  get closed(): boolean {
    return this[native].closed;
  }

  /** Pins in the bpffs: the attachment then outlives this process. */
  pin(path: string): void {
    this[native].pin(path);
  }

  unpin(): void {
    this[native].unpin();
  }

  /** Atomically replaces the attached program (same type and hook). */
  update(program: BpfProgram): void {
    this[native].update(program[native]);
  }

  /** Ends the attachment now, pinned or not; the link stays open. */
  detach(): void {
    this[native].detach();
  }

  info(): LinkInfo {
    return this[native].info();
  }

  close(): void {
    this[native].close();
    this.#guard.release();
  }
}

export type RecordsHandler = (records: Buffer[]) => void;

export class RingBuffer {
  readonly #handle: NativeRingBuffer;
  readonly #guard: LeakGuard;

  /**
   * Starts delivering the ring map's records on this thread's event loop:
   * each wake-up calls onRecords once with a batch of copied records.
   */
  constructor(map: BpfMap, onRecords: RecordsHandler, opts: OwnerOptions = {}) {
    this.#handle = new (loadAddon().RingBuffer)(map[native], onRecords);
    this.#guard = new LeakGuard(
      this,
      `weir: RingBuffer on map '${map.name}' was garbage-collected without close(); it keeps polling`,
      opts.onLeak ?? emitLeakWarning,
    );
  }

  get closed(): boolean {
    return this.#handle.closed;
  }

  /** Drains pending records synchronously through onRecords; returns the count. */
  consume(): number {
    return this.#handle.consume();
  }

  /** Keep the process alive while open (the default). */
  ref(): this {
    this.#handle.ref();
    return this;
  }

  /** Do not keep the process alive just for this ring buffer. */
  unref(): this {
    this.#handle.unref();
    return this;
  }

  close(): void {
    this.#handle.close();
    this.#guard.release();
  }
}
