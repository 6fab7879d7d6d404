// Loads the native addon (build/Release/weir.node) and describes its raw
// shape. Only src/native talks to these types; everything else uses the
// wrappers in kernel-objects.ts, which add ownership tracking on top.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// src/native/addon.ts (vitest) and dist/native/addon.js (tsc output) both
// sit two levels below the repository root.
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where the addon is expected: <repo>/build/Release/weir.node. */
export const addonPath = resolve(repoRoot, 'build', 'Release', 'weir.node');

/** A failed libbpf or bpf() call, shaped like a Node system error. */
export interface BpfSystemError extends Error {
  /** 'EPERM', 'ENOENT', 'ENOTSUPP', 'LIBBPF_ERRNO__VERIFY'... */
  code: string;
  /** Negative errno, as in Node's system errors. */
  errno: number;
  /** The libbpf or bpf function that failed, e.g. 'bpf_map_update_elem'. */
  syscall: string;
  path?: string;
  /** On load failures: everything libbpf and the verifier printed. */
  verifierLog?: string;
  /** On other failures: what libbpf printed during the call, if anything. */
  libbpfLog?: string;
}

export function isBpfSystemError(err: unknown): err is BpfSystemError {
  return (
    err instanceof Error &&
    typeof (err as Partial<BpfSystemError>).code === 'string' &&
    typeof (err as Partial<BpfSystemError>).errno === 'number' &&
    typeof (err as Partial<BpfSystemError>).syscall === 'string'
  );
}

export interface ProgramDescriptor {
  name: string;
  type: number;
  typeName: string;
  sectionName: string;
  expectedAttachType: number;
  expectedAttachTypeName: string;
  autoload: boolean;
}

export interface MapDescriptor {
  name: string;
  type: number;
  typeName: string;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** .rodata, .bss, .data: libbpf's global-variable maps. */
  internal: boolean;
  pinPath?: string;
}

export interface TestRunOptions {
  /** Packet for skb programs: an Ethernet frame (14-byte header, then IP). */
  data?: Uint8Array;
  /** Context (e.g. a struct __sk_buff) for program types that accept one. */
  ctx?: Uint8Array;
  /** Runs; the kernel reports the average duration per run. */
  repeat?: number;
  /** Room for the output packet; default data.length + 256, 0 for none. */
  dataSizeOut?: number;
}

export interface TestRunResult {
  retval: number;
  /** Average nanoseconds per run, as measured by the kernel. */
  durationNs: number;
  dataOut?: Buffer;
  ctxOut?: Buffer;
}

export interface MapDump {
  /** count keys of keySize bytes, back to back. */
  keys: Buffer;
  /** count values of valueBufferSize bytes, back to back. */
  values: Buffer;
  count: number;
}

export interface LinkInfo {
  id: number;
  progId: number;
  type: number;
  typeName: string;
  /** Cgroup links only; 0n once the cgroup is gone or the link detached. */
  cgroupId?: bigint;
  attachType?: number;
  attachTypeName?: string;
}

export interface ProgQueryResult {
  attachFlags: number;
  progIds: number[];
}

export interface ProgInfo {
  id: number;
  name: string;
  type: number;
  typeName: string;
  /** The kernel's 8-byte program tag, hex. */
  tag: string;
  /** Instructions the verifier processed to accept the program (kernel 5.16+; 0 before). */
  verifiedInsns: number;
  /** Instructions of the program after the verifier's rewrites. */
  xlatedInsns: number;
}

export type PinnedObjectKind = 'map' | 'prog' | 'link' | 'unknown';

/** The layout table of bpf/include/weir_abi.h, computed by the C++ compiler. */
export interface AbiInfo {
  version: number;
  /** sizeof(struct X) by struct name, e.g. sizes.weir_event. */
  sizes: Record<string, number>;
  /** offsetof by 'struct.field', e.g. offsets['weir_event.dport']. */
  offsets: Record<string, number>;
  /** sizeof the member by 'struct.field' (arrays: the whole array). */
  fieldSizes: Record<string, number>;
  /** Every enum value and numeric #define of the header. */
  constants: Record<string, number>;
}

/** UAPI constants the TypeScript side needs, as compiled into the addon. */
export interface BpfConstants {
  readonly BPF_ANY: number;
  readonly BPF_NOEXIST: number;
  readonly BPF_EXIST: number;
  readonly BPF_F_LOCK: number;
  readonly BPF_F_ALLOW_OVERRIDE: number;
  readonly BPF_F_ALLOW_MULTI: number;
  readonly BPF_F_REPLACE: number;
  readonly BPF_F_QUERY_EFFECTIVE: number;
  readonly BPF_F_NO_PREALLOC: number;
  readonly BPF_F_RDONLY_PROG: number;
  readonly BPF_F_WRONLY_PROG: number;
  readonly BPF_F_MMAPABLE: number;
  readonly BPF_CGROUP_INET_INGRESS: number;
  readonly BPF_CGROUP_INET_EGRESS: number;
  readonly BPF_CGROUP_INET_SOCK_CREATE: number;
  readonly BPF_CGROUP_INET_SOCK_RELEASE: number;
  readonly BPF_CGROUP_SOCK_OPS: number;
  readonly BPF_CGROUP_INET4_BIND: number;
  readonly BPF_CGROUP_INET6_BIND: number;
  readonly BPF_CGROUP_INET4_CONNECT: number;
  readonly BPF_CGROUP_INET6_CONNECT: number;
  readonly BPF_CGROUP_INET4_POST_BIND: number;
  readonly BPF_CGROUP_INET6_POST_BIND: number;
  readonly BPF_CGROUP_UDP4_SENDMSG: number;
  readonly BPF_CGROUP_UDP6_SENDMSG: number;
  readonly BPF_CGROUP_UDP4_RECVMSG: number;
  readonly BPF_CGROUP_UDP6_RECVMSG: number;
  readonly BPF_CGROUP_INET4_GETPEERNAME: number;
  readonly BPF_CGROUP_INET6_GETPEERNAME: number;
  readonly BPF_CGROUP_INET4_GETSOCKNAME: number;
  readonly BPF_CGROUP_INET6_GETSOCKNAME: number;
  readonly BPF_CGROUP_GETSOCKOPT: number;
  readonly BPF_CGROUP_SETSOCKOPT: number;
  readonly BPF_CGROUP_DEVICE: number;
  readonly BPF_CGROUP_SYSCTL: number;
  readonly BPF_PROG_TYPE_SOCKET_FILTER: number;
  readonly BPF_PROG_TYPE_SCHED_CLS: number;
  readonly BPF_PROG_TYPE_XDP: number;
  readonly BPF_PROG_TYPE_CGROUP_SKB: number;
  readonly BPF_PROG_TYPE_CGROUP_SOCK: number;
  readonly BPF_PROG_TYPE_CGROUP_SOCK_ADDR: number;
  readonly BPF_PROG_TYPE_SOCK_OPS: number;
  readonly BPF_PROG_TYPE_CGROUP_SOCKOPT: number;
  readonly BPF_PROG_TYPE_TRACEPOINT: number;
  readonly BPF_PROG_TYPE_KPROBE: number;
  readonly BPF_MAP_TYPE_HASH: number;
  readonly BPF_MAP_TYPE_ARRAY: number;
  readonly BPF_MAP_TYPE_PROG_ARRAY: number;
  readonly BPF_MAP_TYPE_PERCPU_HASH: number;
  readonly BPF_MAP_TYPE_PERCPU_ARRAY: number;
  readonly BPF_MAP_TYPE_LRU_HASH: number;
  readonly BPF_MAP_TYPE_LRU_PERCPU_HASH: number;
  readonly BPF_MAP_TYPE_LPM_TRIE: number;
  readonly BPF_MAP_TYPE_ARRAY_OF_MAPS: number;
  readonly BPF_MAP_TYPE_HASH_OF_MAPS: number;
  readonly BPF_MAP_TYPE_SK_STORAGE: number;
  readonly BPF_MAP_TYPE_RINGBUF: number;
  readonly BPF_LINK_TYPE_CGROUP: number;
  readonly BPF_FUNC_loop: number;
}

// ---- raw native classes (wrapped by kernel-objects.ts) -------------------

export interface NativeBpfObject {
  readonly path: string;
  readonly loaded: boolean;
  readonly closed: boolean;
  readonly loadLog: string;
  setMapMaxEntries(map: string, maxEntries: number): void;
  setMapPinPath(map: string, path: string): void;
  setInitialValue(map: string, value: Uint8Array): void;
  initialValue(map: string): Buffer | null;
  setProgramAutoload(program: string, autoload: boolean): void;
  load(): Promise<void>;
  programs(): ProgramDescriptor[];
  program(name: string): NativeProgram;
  maps(): MapDescriptor[];
  map(name: string): NativeMap;
  close(): void;
}

export interface NativeProgram {
  readonly name: string;
  readonly fd: number;
  readonly type: number;
  readonly typeName: string;
  readonly sectionName: string;
  readonly expectedAttachType: number;
  readonly id: number;
  readonly tag: string;
  readonly closed: boolean;
  attachCgroup(cgroupPath: string): NativeLink;
  testRun(opts: TestRunOptions): TestRunResult;
  testRunAsync(opts: TestRunOptions): Promise<TestRunResult>;
  close(): void;
}

export interface NativeMap {
  readonly name: string;
  readonly fd: number;
  readonly type: number;
  readonly typeName: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly valueBufferSize: number;
  readonly maxEntries: number;
  readonly mapFlags: number;
  readonly id: number;
  readonly perCpu: boolean;
  readonly possibleCpus: number;
  readonly closed: boolean;
  lookup(key: Uint8Array, flags?: number): Buffer | null;
  update(key: Uint8Array, value: Uint8Array, flags?: number): void;
  delete(key: Uint8Array): boolean;
  updateBatch(keys: Uint8Array, values: Uint8Array, count: number, flags?: number): number;
  deleteBatch(keys: Uint8Array, count: number): number;
  keys(): Buffer[];
  dump(): MapDump;
  pin(path: string): void;
  unpin(path: string): void;
  close(): void;
}

export interface NativeLink {
  readonly fd: number;
  readonly pinPath: string | null;
  readonly closed: boolean;
  pin(path: string): void;
  unpin(): void;
  update(program: NativeProgram): void;
  detach(): void;
  close(): void;
  info(): LinkInfo;
}

export interface NativeRingBuffer {
  readonly closed: boolean;
  consume(): number;
  close(): void;
  ref(): void;
  unref(): void;
}

export interface NativeAddon {
  BpfObject: new (path: string) => NativeBpfObject;
  Map: { openPinned(path: string): NativeMap };
  Link: { openPinned(path: string): NativeLink };
  RingBuffer: new (map: NativeMap, onRecords: (records: Buffer[]) => void) => NativeRingBuffer;
  abi(): AbiInfo;
  libbpfVersion(): string;
  numPossibleCpus(): number;
  cgroupId(path: string): bigint;
  progQuery(cgroupPath: string, attachType: number, queryFlags?: number): ProgQueryResult;
  progInfo(id: number): ProgInfo;
  probeBpfHelper(progType: number, helperId: number): boolean;
  linkInfoById(id: number): LinkInfo;
  pinnedObjectType(path: string): PinnedObjectKind;
  constants: BpfConstants;
}

/**
 * The native addon. Node caches the module, so calling this again is
 * cheap. Throws an Error that says what to do when the addon is missing or
 * cannot be loaded.
 */
export function loadAddon(): NativeAddon {
  if (!existsSync(addonPath)) {
    throw new Error(
      `weir native addon is not built (${addonPath} is missing): run \`npm ci\` or \`node scripts/build.mjs native\``,
    );
  }
  const require = createRequire(import.meta.url);
  let loaded: unknown;
  try {
    loaded = require(addonPath);
  } catch (err) {
    const detail = err instanceof Error ? err.message : String(err);
    if (/lib(bpf|elf|z)\.so/.test(detail)) {
      throw new Error(
        `weir native addon cannot load: a shared library is missing (${detail}); install libbpf1 (sudo sh scripts/bootstrap.sh)`,
        { cause: err },
      );
    }
    throw new Error(
      `weir native addon ${addonPath} failed to load (${detail}); rebuild it: \`node scripts/build.mjs --force native\``,
      { cause: err },
    );
  }
  if (typeof loaded !== 'object' || loaded === null || typeof (loaded as { abi?: unknown }).abi !== 'function') {
    throw new Error(`${addonPath} is not weir's native addon; rebuild it: \`node scripts/build.mjs --force native\``);
  }
  return loaded as NativeAddon;
}
