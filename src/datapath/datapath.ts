// The datapath layer: loads weir's BPF objects, pins and shares their maps,
// attaches the programs to the pods' cgroup root, and is the only code that
// talks to the native addon. Everything else uses this typed interface.
//
// Pin layout (under --bpffs, default /sys/fs/bpf):
//
//   <pinDir>/                 default <bpffs>/weir
//     maps/<map>              every map; all objects share one instance,
//                             and a restarted agent adopts them
//     links/<program>         one bpf_link per program, attached to the
//                             pods' cgroup root; a pinned link keeps the
//                             program attached while the agent is down
//
// The links are multi-attach cgroup links: they run alongside any program
// a CNI attached to the same cgroups and can never evict one. On upgrade a
// pinned link is updated in place to the new program (atomic replacement),
// so there is no moment without enforcement and never two weir programs on
// one hook.
import { existsSync, mkdirSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import {
  BpfLink,
  BpfObject,
  RingBuffer,
  type BpfMap,
  type BpfProgram,
} from '../native/index.js';
import { ensureBpffs } from '../native/bpffs.js';
import { withCapabilityHint } from '../native/privileges.js';
import {
  CONST,
  SIZES,
  STAT_NAMES,
  counterIndex,
  decodeCtKey,
  decodeEvent,
  decodePerCpuCounter,
  decodePerCpuU64,
  encodeConfig,
  u32Key,
  type Counter,
  type RawEvent,
  type StatName,
} from './abi.js';
import { StateWriter, type PolicyMaps, type WritableMap } from './state-writer.js';

const here = dirname(fileURLToPath(import.meta.url));
export const DEFAULT_OBJECTS_DIR = resolve(here, '../../build/bpf');

export interface Capacities {
  pods: number;
  endpoints: number;
  sets: number;
  nodes: number;
  classes: number;
  conntrack: number;
  /** weir_pod_ips: the pods' own addresses; default = 2 × pods (dual stack). */
  podAddresses: number;
  aggregation: number;
  ringbufBytes: number;
}

export const DEFAULT_CAPACITIES: Capacities = {
  pods: 4096,
  endpoints: 4096,
  sets: 4096,
  nodes: 16384,
  classes: 16384,
  conntrack: 65536,
  podAddresses: 8192,
  aggregation: 16384,
  ringbufBytes: 4 << 20,
};

export interface DatapathOptions {
  bpffs: string;
  /** Directory for weir's pins; default <bpffs>/weir. */
  pinDir?: string;
  objectsDir?: string;
  capacities?: Partial<Capacities>;
  podLevel: number; // level of the kubepods directory
  eventIntervalMs?: number;
  ctTimeoutSec?: number;
  eventsForAllowed?: boolean;
  /** Grace period before a freed map slot is reused. */
  graceMs?: number;
  logger: Logger;
}

interface ProgramSpec {
  object: string;
  program: string;
  attachType: AttachName;
}

type AttachName = 'egress' | 'ingress' | 'connect4' | 'connect6' | 'sendmsg4' | 'sendmsg6';

export const PROGRAMS: readonly ProgramSpec[] = [
  { object: 'egress.bpf.o', program: 'weir_egress', attachType: 'egress' },
  { object: 'ingress.bpf.o', program: 'weir_ingress', attachType: 'ingress' },
  { object: 'sock_addr.bpf.o', program: 'weir_connect4', attachType: 'connect4' },
  { object: 'sock_addr.bpf.o', program: 'weir_connect6', attachType: 'connect6' },
  { object: 'sock_addr.bpf.o', program: 'weir_sendmsg4', attachType: 'sendmsg4' },
  { object: 'sock_addr.bpf.o', program: 'weir_sendmsg6', attachType: 'sendmsg6' },
];

export const MAP_NAMES = [
  'weir_pods',
  'weir_sets',
  'weir_nodes',
  'weir_classes',
  'weir_counters',
  'weir_stats',
  'weir_ct',
  'weir_pod_ips',
  'weir_agg',
  'weir_events',
  'weir_sk_owner',
  'weir_sk_flows',
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export interface AttachResult {
  program: string;
  action: 'attached' | 'adopted' | 'updated';
  linkId: number;
}

export interface EndpointCounters {
  packets: Record<string, Counter>; // by verdict name
  sockets: Record<string, Counter>;
}

const VERDICT_NAMES = ['none', 'allow', 'drop', 'audit', 'reply'] as const;

export class Datapath {
  readonly writer: StateWriter;
  readonly pinDir: string;
  readonly adopted: ReturnType<StateWriter['adopt']>;
  /** Called with an endpoint's final counters just before they are cleared for reuse. */
  onEndpointRetired: ((endpointId: number, final: EndpointCounters) => void) | null = null;
  private closed = false;
  private ring: RingBuffer | null = null;
  private readonly links = new Map<string, BpfLink>();

  private constructor(
    private readonly objects: Map<string, BpfObject>,
    private readonly maps: Map<MapName, BpfMap>,
    pinDir: string,
    private readonly caps: Capacities,
    private readonly log: Logger,
    graceMs: number,
  ) {
    this.pinDir = pinDir;
    const policyMaps: PolicyMaps = {
      pods: this.map('weir_pods') as WritableMap,
      podIps: this.map('weir_pod_ips') as WritableMap,
      sets: this.map('weir_sets') as WritableMap,
      nodes: this.map('weir_nodes') as WritableMap,
      classes: this.map('weir_classes') as WritableMap,
    };
    this.writer = new StateWriter(policyMaps, { graceMs, maxEndpoints: caps.endpoints }, log, (ep) => this.forgetEndpoint(ep));
    this.adopted = this.writer.adopt();
  }

  /** Loads (or adopts) every object and map. Verifier failures reject with the log. */
  static async open(opts: DatapathOptions): Promise<Datapath> {
    const log = opts.logger;
    ensureBpffs(opts.bpffs);
    const pinDir = opts.pinDir ?? join(opts.bpffs, 'weir');
    mkdirSync(join(pinDir, 'maps'), { recursive: true });
    mkdirSync(join(pinDir, 'links'), { recursive: true });
    const caps = {
      ...DEFAULT_CAPACITIES,
      // A derived default follows the capacity it depends on.
      podAddresses: 2 * (opts.capacities?.pods ?? DEFAULT_CAPACITIES.pods),
      ...opts.capacities,
    };
    const objectsDir = opts.objectsDir ?? DEFAULT_OBJECTS_DIR;
    const rodata = encodeConfig({
      podLevelLo: opts.podLevel + 1,
      podLevelHi: opts.podLevel + 2,
      eventIntervalNs: BigInt(opts.eventIntervalMs ?? 1000) * 1_000_000n,
      ctTimeoutNs: BigInt(opts.ctTimeoutSec ?? 300) * 1_000_000_000n,
      maxEndpoints: caps.endpoints,
      flags: opts.eventsForAllowed ? CONST.WEIR_CFG_F_EVENTS_ALLOW : 0,
    });
    const maxEntries: Record<string, number> = {
      weir_pods: caps.pods,
      weir_sets: caps.sets,
      weir_nodes: caps.nodes,
      weir_classes: caps.classes,
      weir_counters: caps.endpoints * CONST.WEIR_COUNTER_STRIDE,
      weir_ct: caps.conntrack,
      weir_pod_ips: caps.podAddresses,
      weir_agg: caps.aggregation,
      weir_events: caps.ringbufBytes,
    };
    const objects = new Map<string, BpfObject>();
    const maps = new Map<MapName, BpfMap>();
    try {
      for (const file of [...new Set(PROGRAMS.map((p) => p.object))]) {
        const path = join(objectsDir, file);
        if (!existsSync(path)) {
          throw new Error(`BPF object ${path} is missing: build it with \`node scripts/build.mjs bpf\` (or npm ci)`);
        }
        const pinMaps: Record<string, string> = {};
        for (const m of MAP_NAMES) pinMaps[m] = join(pinDir, 'maps', m);
        const started = Date.now();
        const obj = await BpfObject.load(path, { maxEntries, pinMaps, rodata });
        log.debug({ object: file, ms: Date.now() - started }, 'BPF object loaded');
        objects.set(file, obj);
        for (const m of MAP_NAMES) {
          if (!maps.has(m)) {
            const mm = obj.maps().find((x) => x.name === m);
            if (mm) maps.set(m, obj.map(m));
          }
        }
      }
      for (const m of MAP_NAMES) if (!maps.has(m)) throw new Error(`map ${m} not found in weir's BPF objects`);
      return new Datapath(objects, maps, pinDir, caps, log, opts.graceMs ?? 2000);
    } catch (err) {
      for (const o of objects.values()) o.close();
      // A missing capability shows as a bare EPERM/EACCES (or a verifier
      // refusal) with libbpf hints about RLIMIT_MEMLOCK: name the capability.
      throw withCapabilityHint(err);
    }
  }

  map(name: MapName): BpfMap {
    this.check();
    const m = this.maps.get(name);
    if (!m) throw new Error(`map ${name} is not loaded`);
    return m;
  }

  private program(spec: ProgramSpec): BpfProgram {
    const obj = this.objects.get(spec.object);
    if (!obj) throw new Error(`object ${spec.object} is not loaded`);
    return obj.program(spec.program);
  }

  /**
   * Attaches every program to the pods' cgroup root, or adopts the pinned
   * links of a previous agent (updating them to this build's programs).
   */
  attach(podsRootDir: string, expectCgroupId: bigint): AttachResult[] {
    this.check();
    const out: AttachResult[] = [];
    for (const spec of PROGRAMS) {
      const prog = this.program(spec);
      const pin = join(this.pinDir, 'links', spec.program);
      let link: BpfLink | null = null;
      let action: AttachResult['action'] = 'attached';
      if (existsSync(pin)) {
        const old = BpfLink.openPinned(pin);
        const info = old.info();
        if (info.cgroupId !== undefined && BigInt(info.cgroupId) !== expectCgroupId) {
          // Pinned for another cgroup root: this agent was reconfigured.
          this.log.warn({ program: spec.program, pin }, 'pinned link belongs to another cgroup root; detaching it');
          old.detach();
          old.unpin();
          old.close();
        } else if (info.progId === prog.id) {
          link = old;
          action = 'adopted';
        } else {
          old.update(prog);
          link = old;
          action = 'updated';
        }
      }
      if (!link) {
        try {
          link = prog.attachCgroup(podsRootDir);
        } catch (err) {
          throw withCapabilityHint(err);
        }
        link.pin(pin);
      }
      this.links.set(spec.program, link);
      out.push({ program: spec.program, action, linkId: link.info().id });
    }
    return out;
  }

  /**
   * Runs a loaded program on a synthetic input with BPF_PROG_TEST_RUN (kernel
   * tests, benchmarks). For cgroup_skb programs `data` is an Ethernet frame.
   */
  testRun(program: string, input: { data: Buffer; ctx?: Buffer; repeat?: number }): { retval: number; durationNs: number } {
    const spec = PROGRAMS.find((p) => p.program === program);
    if (!spec) throw new Error(`unknown program ${program}`);
    const r = this.program(spec).testRun(input);
    return { retval: r.retval, durationNs: r.durationNs };
  }

  async testRunAsync(program: string, input: { data: Buffer; ctx?: Buffer; repeat?: number }): Promise<{ retval: number; durationNs: number }> {
    const spec = PROGRAMS.find((p) => p.program === program);
    if (!spec) throw new Error(`unknown program ${program}`);
    const r = await this.program(spec).testRunAsync(input);
    return { retval: r.retval, durationNs: r.durationNs };
  }

  /** Removes weir from the node: detaches links and deletes every pin. */
  uninstall(): void {
    for (const spec of PROGRAMS) {
      const pin = join(this.pinDir, 'links', spec.program);
      const live = this.links.get(spec.program);
      const link = live ?? (existsSync(pin) ? BpfLink.openPinned(pin) : null);
      if (!link) continue;
      try {
        link.detach();
      } finally {
        if (existsSync(pin)) link.unpin();
        link.close();
        this.links.delete(spec.program);
      }
    }
    removePins(this.pinDir);
  }

  startEvents(onEvents: (events: RawEvent[]) => void, onUnknown: (type: number) => void): void {
    this.check();
    if (this.ring) return;
    this.ring = new RingBuffer(this.map('weir_events'), (records: Buffer[]) => {
      const out: RawEvent[] = [];
      for (const r of records) {
        const type = r.readUInt8(0);
        if (type !== CONST.WEIR_REC_VERDICT || r.length < SIZES.weir_event) {
          onUnknown(type);
          continue;
        }
        out.push(decodeEvent(r));
      }
      if (out.length > 0) onEvents(out);
    });
  }

  /** Drains the ring buffer synchronously (tests, shutdown). */
  drainEvents(): number {
    return this.ring ? this.ring.consume() : 0;
  }

  counters(endpointId: number): EndpointCounters {
    const m = this.map('weir_counters');
    const cpus = m.possibleCpus;
    const out: EndpointCounters = { packets: {}, sockets: {} };
    for (const [kind, target] of [
      [CONST.WEIR_COUNT_PACKETS, out.packets],
      [CONST.WEIR_COUNT_SOCKETS, out.sockets],
    ] as const) {
      for (let v = 1; v < VERDICT_NAMES.length; v++) {
        const raw = m.lookup(u32Key(counterIndex(endpointId, kind, v)));
        target[VERDICT_NAMES[v] as string] = raw ? decodePerCpuCounter(raw, cpus) : { packets: 0n, bytes: 0n };
      }
    }
    return out;
  }

  stats(): Record<StatName, bigint> {
    const m = this.map('weir_stats');
    const out = {} as Record<StatName, bigint>;
    STAT_NAMES.forEach((name, i) => {
      const raw = m.lookup(u32Key(i));
      out[name] = raw ? decodePerCpuU64(raw, m.possibleCpus) : 0n;
    });
    return out;
  }

  /** Entries currently in the hash maps (walks them: for status, not hot paths). */
  hashMapEntries(name: 'weir_ct' | 'weir_agg' | 'weir_pods' | 'weir_pod_ips'): number {
    return this.map(name).keys().length;
  }

  capacities(): Capacities {
    return { ...this.caps };
  }

  linkIds(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [p, l] of this.links) out[p] = l.info().id;
    return out;
  }

  /** Clears an endpoint's conntrack entries and counters before its id is reused. */
  private forgetEndpoint(endpointId: number): void {
    this.onEndpointRetired?.(endpointId, this.counters(endpointId));
    const ct = this.map('weir_ct');
    for (const k of ct.keys()) if (decodeCtKey(k).endpointId === endpointId) ct.delete(k);
    const counters = this.map('weir_counters');
    const zero = Buffer.alloc(SIZES.weir_counter * counters.possibleCpus);
    for (let kind = 0; kind < 2; kind++) {
      for (let v = 0; v < CONST.WEIR_VERDICT__MAX; v++) counters.update(u32Key(counterIndex(endpointId, kind, v)), zero);
    }
  }

  /** Closes file descriptors. Pinned links and maps stay: enforcement continues. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ring?.close();
    this.ring = null;
    for (const l of this.links.values()) l.close();
    this.links.clear();
    for (const o of this.objects.values()) o.close();
    this.objects.clear();
  }

  private check(): void {
    if (this.closed) throw new Error('Datapath is closed');
  }
}

export function removePins(pinDir: string): void {
  if (!existsSync(pinDir)) return;
  for (const sub of ['links', 'maps']) {
    const d = join(pinDir, sub);
    if (!existsSync(d)) continue;
    for (const f of readdirSync(d)) rmSync(join(d, f));
    rmdirSync(d);
  }
  rmdirSync(pinDir);
}
