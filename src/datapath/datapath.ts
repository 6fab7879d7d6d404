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
// Objects: egress.bpf.o, ingress.bpf.o, sock_addr.bpf.o, and the variants
// egress-fqdn.bpf.o and ingress-fqdn.bpf.o with DNS learning (query
// tracking, answer learning), which need bpf_loop (kernel 5.17). The
// variants are loaded when the kernel offers bpf_loop to cgroup_skb
// programs (probed at open; fqdnLearning), the plain objects otherwise:
// then fqdn peers allow only what the trie allows (nothing is learned).
// Every variant has every map, so switching between them on a restart
// updates the pinned links in place like any upgrade.
//
// The links are multi-attach cgroup links: they run alongside any program
// a CNI attached to the same cgroups and can never evict one. On upgrade a
// pinned link is updated in place to the new program (atomic replacement),
// so there is no moment without enforcement and never two weir programs on
// one hook.
//
// A pinned map whose layout differs from this run's (a capacity flag
// changed, or a new build changed a map) cannot be reused: libbpf refuses
// it. It is migrated instead (planMigrations, carryOver): the new map is
// created under
//   <pinDir>/staging/<map>
// and what fits is copied over; the old pin keeps the old programs' map
// until attach() has moved every link to the new programs, and only then is
// the staging pin renamed over it (the old map dies with the old programs).
// If a policy map could not be copied whole, or a policy map is new while
// links of a previous agent are pinned, every policy map is migrated and the
// links stay on the old programs until the first policy is written
// (attachAfterFirstApply).
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, rmdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import {
  BpfLink,
  BpfObject,
  RingBuffer,
  BpfMap,
  bpfConstants,
  probeBpfHelper,
  progQuery,
  type BpfProgram,
  type MapDescriptor,
} from '../native/index.js';
import { ensureBpffs } from '../native/bpffs.js';
import { withCapabilityHint } from '../native/privileges.js';
import {
  CONST,
  SIZES,
  STAT_NAMES,
  counterIndex,
  decodeCtKey,
  decodeDnsEvent,
  decodeDnsQueryKey,
  decodeEvent,
  decodeFqdnLearnedKey,
  decodeFqdnLearnedValue,
  decodeNodeState,
  decodePerCpuCounter,
  decodePerCpuU64,
  encodeConfig,
  encodeFqdnLearnedKey,
  encodeFqdnLearnedValue,
  encodeNodeState,
  u32Key,
  type Counter,
  type FqdnSlot,
  type NodeState,
  type RawDnsEvent,
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
  /** weir_trie_tails: path-compressed single-prefix subtrees, 40 bytes each. */
  tails: number;
  classes: number;
  conntrack: number;
  /** weir_pod_ips: the pods' own addresses; default = 2 × pods (dual stack). */
  podAddresses: number;
  aggregation: number;
  ringbufBytes: number;
  /** weir_dns_resolvers: trusted resolver addresses and ports. */
  dnsResolvers: number;
  /** weir_fqdn_keys: fqdn keys of all sets. */
  fqdnKeys: number;
  /** weir_dns_queries: DNS queries awaiting their answer (LRU). */
  dnsQueries: number;
  /** weir_fqdn_learned: (pod, address) pairs learned from DNS answers; full = refuse. */
  fqdnLearned: number;
}

export const DEFAULT_CAPACITIES: Capacities = {
  pods: 4096,
  endpoints: 4096,
  sets: 4096,
  nodes: 16384,
  tails: 65536,
  classes: 16384,
  conntrack: 65536,
  podAddresses: 8192,
  aggregation: 16384,
  ringbufBytes: 4 << 20,
  dnsResolvers: 256,
  fqdnKeys: 16384,
  dnsQueries: 16384,
  fqdnLearned: 32768,
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
  /**
   * DNS learning (the *-fqdn.bpf.o variants): 'auto' (default) loads them
   * when the kernel offers bpf_loop to cgroup_skb programs, 'on' requires
   * them, 'off' never loads them.
   */
  fqdnLearning?: 'auto' | 'on' | 'off';
  logger: Logger;
}

interface ProgramSpec {
  object: string;
  program: string;
  attachType: AttachName;
}

type AttachName = 'egress' | 'ingress' | 'connect4' | 'connect6' | 'sendmsg4' | 'sendmsg6';

/** The objects with DNS learning, by the plain object they replace. */
export const FQDN_VARIANTS: Readonly<Record<string, string>> = {
  'egress.bpf.o': 'egress-fqdn.bpf.o',
  'ingress.bpf.o': 'ingress-fqdn.bpf.o',
};

/**
 * Whether this kernel can run the DNS-learning variants: bpf_loop for
 * cgroup_skb programs (5.17). A probe that cannot run (no privilege)
 * answers no, with the reason.
 */
export function kernelHasBpfLoop(): { ok: boolean; error?: string } {
  try {
    const c = bpfConstants();
    return { ok: probeBpfHelper(c.BPF_PROG_TYPE_CGROUP_SKB, c.BPF_FUNC_loop) };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}

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
  'weir_trie_tails',
  'weir_classes',
  'weir_counters',
  'weir_stats',
  'weir_ct',
  'weir_pod_ips',
  'weir_agg',
  'weir_events',
  'weir_sk_owner',
  'weir_sk_flows',
  'weir_node',
  'weir_dns_resolvers',
  'weir_fqdn_keys',
  'weir_dns_queries',
  'weir_fqdn_learned',
  'weir_dns_scratch',
] as const;
export type MapName = (typeof MAP_NAMES)[number];

export interface AttachResult {
  program: string;
  action: 'attached' | 'adopted' | 'updated';
  linkId: number;
}

/** A pinned map of another layout, replaced by this run's (see planMigrations, carryOver). */
export interface MapMigration {
  map: MapName;
  /**
   * layout: the pinned map's layout differs from this run's. consistency: a
   * policy map migrated along with another one that had to start empty, so
   * that the old programs keep a consistent old policy until attach().
   */
  reason: 'layout' | 'consistency';
  /** The pinned map's layout; null when its pin was gone. */
  from: { type: string; keySize: number; valueSize: number; maxEntries: number } | null;
  to: { type: string; keySize: number; valueSize: number; maxEntries: number };
  /** Entries carried over into the new map; null when none could be (the new map starts empty). */
  copied: number | null;
  /** Entries of the old map that did not fit in the new one (not carried). */
  dropped: number;
}

/**
 * The maps filled from the desired state that must stay consistent with
 * each other (weir_fqdn_keys holds class ids of weir_classes, so it
 * migrates with them). weir_dns_resolvers refers to nothing: it is carried
 * over like a counter map.
 */
const POLICY_MAPS: ReadonlySet<MapName> = new Set(['weir_pods', 'weir_pod_ips', 'weir_sets', 'weir_nodes', 'weir_trie_tails', 'weir_classes', 'weir_fqdn_keys']);
/** Map types whose entries can be read out and written back (not the ring buffer, not socket storage). */
const COPYABLE_TYPES = new Set(['hash', 'array', 'percpu_hash', 'percpu_array', 'lru_hash', 'lru_percpu_hash']);

export interface EndpointCounters {
  packets: Record<string, Counter>; // by verdict name
  sockets: Record<string, Counter>;
}

const VERDICT_NAMES = ['none', 'allow', 'drop', 'audit', 'reply'] as const;

/** One (pod, address) of weir_fqdn_learned: the keys learned on it (non-empty slots). */
export interface LearnedAddress {
  endpointId: number;
  /** AF_INET (2) or AF_INET6 (10). */
  family: number;
  addr: Uint8Array;
  slots: FqdnSlot[];
}

/** A slot sweepFqdnLearned() deleted. */
export interface ExpiredSlot {
  endpointId: number;
  family: number;
  addr: Uint8Array;
  kind: number;
  hash: bigint;
}

export class Datapath {
  readonly writer: StateWriter;
  readonly pinDir: string;
  readonly adopted: ReturnType<StateWriter['adopt']>;
  /** Called with an endpoint's final counters just before they are cleared for reuse. */
  onEndpointRetired: ((endpointId: number, final: EndpointCounters) => void) | null = null;
  private closed = false;
  private ring: RingBuffer | null = null;
  private readonly links = new Map<string, BpfLink>();
  /** Pinned maps of another layout replaced by this run's; their pins are swapped after attach(). */
  readonly migrations: readonly MapMigration[];
  /**
   * True when the links of a previous agent must stay on its programs until
   * this run's first policy is written: a policy map is new or was migrated
   * without its content, so moving the links now would run the new programs
   * on empty policy maps.
   */
  readonly attachAfterFirstApply: boolean;
  /** Whether the DNS-learning variants are loaded (queries tracked, answers learned). */
  readonly fqdnLearning: boolean;
  /** Why not, when they are not: 'off', or what the probe found. */
  readonly fqdnLearningUnavailable: string | null;

  private constructor(
    /** Loaded objects by their PROGRAMS name (egress.bpf.o even when its fqdn variant was loaded). */
    private readonly objects: Map<string, BpfObject>,
    private readonly maps: Map<MapName, BpfMap>,
    pinDir: string,
    private readonly caps: Capacities,
    private readonly log: Logger,
    graceMs: number,
    migrations: MapMigration[] = [],
    attachAfterFirstApply = false,
    private readonly ctTimeoutNs: bigint = 300_000_000_000n,
    fqdn: { loaded: boolean; unavailable: string | null } = { loaded: false, unavailable: 'off' },
    /** The file loaded for each PROGRAMS object. */
    private readonly files: ReadonlyMap<string, string> = new Map(),
  ) {
    this.fqdnLearning = fqdn.loaded;
    this.fqdnLearningUnavailable = fqdn.unavailable;
    this.pinDir = pinDir;
    this.migrations = migrations;
    this.attachAfterFirstApply = attachAfterFirstApply;
    const policyMaps: PolicyMaps = {
      pods: this.map('weir_pods') as WritableMap,
      podIps: this.map('weir_pod_ips') as WritableMap,
      sets: this.map('weir_sets') as WritableMap,
      nodes: this.map('weir_nodes') as WritableMap,
      tails: this.map('weir_trie_tails') as WritableMap,
      classes: this.map('weir_classes') as WritableMap,
      fqdnKeys: this.map('weir_fqdn_keys') as WritableMap,
      dnsResolvers: this.map('weir_dns_resolvers') as WritableMap,
    };
    this.writer = new StateWriter(policyMaps, { graceMs, maxEndpoints: caps.endpoints, dnsSecret: () => this.dnsSecret() }, log, (ep) => this.forgetEndpoint(ep));
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
      tails: Math.max(DEFAULT_CAPACITIES.tails, 4 * (opts.capacities?.nodes ?? DEFAULT_CAPACITIES.nodes)),
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
      weir_trie_tails: caps.tails,
      weir_classes: caps.classes,
      weir_counters: caps.endpoints * CONST.WEIR_COUNTER_STRIDE,
      weir_ct: caps.conntrack,
      weir_pod_ips: caps.podAddresses,
      weir_agg: caps.aggregation,
      weir_events: caps.ringbufBytes,
      weir_dns_resolvers: caps.dnsResolvers,
      weir_fqdn_keys: caps.fqdnKeys,
      weir_dns_queries: caps.dnsQueries,
      weir_fqdn_learned: caps.fqdnLearned,
    };
    const fqdnMode = opts.fqdnLearning ?? 'auto';
    let fqdn: { loaded: boolean; unavailable: string | null } = { loaded: false, unavailable: 'off' };
    if (fqdnMode !== 'off') {
      const probe = kernelHasBpfLoop();
      const missing = Object.values(FQDN_VARIANTS).filter((f) => !existsSync(join(objectsDir, f)));
      if (!probe.ok) {
        fqdn = { loaded: false, unavailable: `this kernel does not offer bpf_loop to cgroup_skb programs (Linux 5.17+)${probe.error ? `: ${probe.error}` : ''}` };
      } else if (missing.length > 0) {
        fqdn = { loaded: false, unavailable: `${missing.join(', ')} missing from ${objectsDir}` };
      } else {
        fqdn = { loaded: true, unavailable: null };
      }
      if (!fqdn.loaded && fqdnMode === 'on') throw new Error(`DNS learning was required but cannot be loaded: ${fqdn.unavailable}`);
      if (!fqdn.loaded) log.warn({ reason: fqdn.unavailable }, 'DNS learning not loaded: fqdn peers allow only the DNS queries they imply');
    }
    const objects = new Map<string, BpfObject>();
    const maps = new Map<MapName, BpfMap>();
    const files = [...new Set(PROGRAMS.map((p) => p.object))];
    const fileOf = new Map(files.map((f) => [f, fqdn.loaded ? (FQDN_VARIANTS[f] ?? f) : f]));
    for (const file of files) {
      const path = join(objectsDir, fileOf.get(file) ?? file);
      if (!existsSync(path)) {
        throw new Error(`BPF object ${path} is missing: build it with \`node scripts/build.mjs bpf\` (or npm ci)`);
      }
    }
    const stagingDir = join(pinDir, 'staging');
    // A migration that did not finish: the canonical pins still hold the old maps.
    if (existsSync(stagingDir)) for (const f of readdirSync(stagingDir)) rmSync(join(stagingDir, f));
    const linksPinned = readdirSync(join(pinDir, 'links')).length > 0;
    const { plan, fresh } = planMigrations(pinDir, files.map((f) => join(objectsDir, fileOf.get(f) ?? f)), maxEntries, linksPinned);
    if (plan.size > 0) mkdirSync(stagingDir, { recursive: true });
    const migrations: MapMigration[] = [];
    try {
      for (const file of files) {
        const path = join(objectsDir, fileOf.get(file) ?? file);
        const pinMaps: Record<string, string> = {};
        for (const m of MAP_NAMES) pinMaps[m] = plan.has(m) ? join(stagingDir, m) : join(pinDir, 'maps', m);
        const started = Date.now();
        const obj = await BpfObject.load(path, { maxEntries, pinMaps, rodata });
        log.debug({ object: fileOf.get(file), ms: Date.now() - started }, 'BPF object loaded');
        objects.set(file, obj);
        for (const m of MAP_NAMES) {
          if (!maps.has(m)) {
            const mm = obj.maps().find((x) => x.name === m);
            if (mm) maps.set(m, obj.map(m));
          }
        }
      }
      for (const m of MAP_NAMES) if (!maps.has(m)) throw new Error(`map ${m} not found in weir's BPF objects`);
      for (const [m, p] of plan) {
        const mig = carryOver(m, p, maps.get(m) as BpfMap);
        migrations.push(mig);
        log.warn(
          { map: m, reason: mig.reason, from: mig.from, to: mig.to, copied: mig.copied, dropped: mig.dropped },
          mig.reason === 'consistency'
            ? 'policy map migrated with the others (the previous programs keep a consistent policy until the new one is written)'
            : mig.copied === null
              ? 'pinned map has another layout: migrated to a new, empty map'
              : 'pinned map has another layout: migrated to a new map with its entries',
        );
      }
      if (fresh) log.warn({ maps: [...plan.keys()] }, 'policy maps start over: the links move to the new programs only after the first policy is written');
      const dp = new Datapath(objects, maps, pinDir, caps, log, opts.graceMs ?? 2000, migrations, fresh, BigInt(opts.ctTimeoutSec ?? 300) * 1_000_000_000n, fqdn, fileOf);
      dp.dnsSecret();
      return dp;
    } catch (err) {
      for (const o of objects.values()) o.close();
      if (existsSync(stagingDir)) for (const f of readdirSync(stagingDir)) rmSync(join(stagingDir, f));
      // A missing capability shows as a bare EPERM/EACCES (or a verifier
      // refusal) with libbpf hints about RLIMIT_MEMLOCK: name the capability.
      throw withCapabilityHint(err);
    } finally {
      for (const p of plan.values()) p.old?.close();
    }
  }

  map(name: MapName): BpfMap {
    this.check();
    const m = this.maps.get(name);
    if (!m) throw new Error(`map ${name} is not loaded`);
    return m;
  }

  /** The object files loaded, by their PROGRAMS name (status: which variant runs). */
  objectFiles(): Record<string, string> {
    return Object.fromEntries([...this.objects.keys()].map((f) => [f, this.files.get(f) ?? f]));
  }

  /** The loaded program of a PROGRAMS entry (kernel tests, bench, status). */
  programInfo(program: string): { id: number; object: string } {
    const spec = PROGRAMS.find((p) => p.program === program);
    if (!spec) throw new Error(`unknown program ${program}`);
    return { id: this.program(spec).id, object: this.files.get(spec.object) ?? spec.object };
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
    // Links this call creates: detached again if a later one fails, so a
    // failed start leaves no partial attachment behind.
    const created: { link: BpfLink; pin: string }[] = [];
    try {
      this.attachAll(podsRootDir, expectCgroupId, out, created);
    } catch (err) {
      for (const c of created) {
        try {
          c.link.detach();
          if (existsSync(c.pin)) c.link.unpin();
        } catch (e) {
          this.log.warn({ err: e, pin: c.pin }, 'could not detach a link of the failed attach');
        }
        c.link.close();
        for (const [k, l] of this.links) if (l === c.link) this.links.delete(k);
      }
      throw err;
    }
    this.commitMigrations();
    return out;
  }

  private attachAll(podsRootDir: string, expectCgroupId: bigint, out: AttachResult[], created: { link: BpfLink; pin: string }[]): void {
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
          throw exclusiveAttachmentHint(withCapabilityHint(err), podsRootDir, spec.attachType);
        }
        created.push({ link, pin });
        link.pin(pin);
      }
      this.links.set(spec.program, link);
      out.push({ program: spec.program, action, linkId: link.info().id });
    }
  }

  /**
   * Every link now runs this run's programs, which use the migrated maps:
   * the staging pins replace the old ones (rename(2), atomic), so the next
   * agent adopts the new maps. The old maps go with the old programs.
   */
  private commitMigrations(): void {
    const staging = join(this.pinDir, 'staging');
    for (const m of this.migrations) {
      const from = join(staging, m.map);
      if (existsSync(from)) renameSync(from, join(this.pinDir, 'maps', m.map));
    }
    if (existsSync(staging) && readdirSync(staging).length === 0) rmdirSync(staging);
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

  /**
   * Reads the ring buffer on Node's loop. Verdict records go to onEvents,
   * DNS-learning records (WEIR_REC_DNS) to onDns, one batch per wake-up
   * each; without onDns they are skipped (a known type, not counted as
   * unknown). Records of a type this build does not know, or too short
   * for their type, go to onUnknown.
   */
  startEvents(onEvents: (events: RawEvent[]) => void, onUnknown: (type: number) => void, onDns?: (records: RawDnsEvent[]) => void): void {
    this.check();
    if (this.ring) return;
    this.ring = new RingBuffer(this.map('weir_events'), (records: Buffer[]) => {
      const out: RawEvent[] = [];
      const dns: RawDnsEvent[] = [];
      for (const r of records) {
        const type = r.readUInt8(0);
        if (type === CONST.WEIR_REC_VERDICT && r.length >= SIZES.weir_event) out.push(decodeEvent(r));
        else if (type === CONST.WEIR_REC_DNS && r.length >= SIZES.weir_dns_event) {
          if (onDns) dns.push(decodeDnsEvent(r));
        } else onUnknown(type);
      }
      if (out.length > 0) onEvents(out);
      if (dns.length > 0) onDns?.(dns);
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

  /**
   * Walks weir_ct: deletes the entries idle for longer than the conntrack
   * timeout (they can no longer pass a reply, they only take room), and
   * tells the programs whether the table is full of live flows: the flag
   * WEIR_NODE_F_CT_FULL in weir_node is set at `fullAt` of the capacity and
   * cleared below `clearAt` (hysteresis). While it is set, a default-deny
   * drop of a packet that could be a reply is reported as map-full (its
   * entry may have been evicted), not as a policy decision.
   */
  sweepConntrack(fullAt = 0.9, clearAt = 0.8): { live: number; expired: number; capacity: number; full: boolean } {
    this.check();
    const ct = this.map('weir_ct');
    const d = ct.dump();
    const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, as bpf_ktime_get_ns()
    const ks = SIZES.weir_ct_key;
    const vs = ct.valueBufferSize;
    let expired = 0;
    for (let i = 0; i < d.count; i++) {
      const seen = d.values.readBigUInt64LE(i * vs);
      if (now > seen && now - seen >= this.ctTimeoutNs) {
        if (ct.delete(d.keys.subarray(i * ks, (i + 1) * ks))) expired++;
      }
    }
    const live = d.count - expired;
    const capacity = this.caps.conntrack;
    const was = this.nodeFlags() & CONST.WEIR_NODE_F_CT_FULL;
    const full = was ? live >= capacity * clearAt : live >= capacity * fullAt;
    if (Boolean(was) !== full) {
      this.setNodeFlags((this.nodeFlags() & ~CONST.WEIR_NODE_F_CT_FULL) | (full ? CONST.WEIR_NODE_F_CT_FULL : 0));
      this.log[full ? 'warn' : 'info'](
        { live, capacity },
        full
          ? 'weir_ct is full of live inbound flows: replies of evicted flows are dropped; such drops are reported with reason map-full (raise --max-conntrack)'
          : 'weir_ct has room again',
      );
    }
    return { live, expired, capacity, full };
  }

  /**
   * What the pods learned from DNS answers (weir_fqdn_learned), live and
   * expired slots (empty ones left out). For status and explain; walks the map.
   */
  fqdnLearned(): LearnedAddress[] {
    this.check();
    const m = this.map('weir_fqdn_learned');
    const d = m.dump();
    const ks = SIZES.weir_fqdn_learned_key;
    const vs = m.valueBufferSize;
    const out: LearnedAddress[] = [];
    for (let i = 0; i < d.count; i++) {
      const k = decodeFqdnLearnedKey(d.keys.subarray(i * ks, (i + 1) * ks));
      const slots = decodeFqdnLearnedValue(d.values.subarray(i * vs, (i + 1) * vs)).filter((x) => x.kind !== 0);
      out.push({ endpointId: k.endpointId, family: k.family, addr: k.addr, slots });
    }
    return out;
  }

  /**
   * Walks weir_fqdn_learned and deletes the slots that are expired and
   * unused (last use, which the datapath refreshes at most once a second,
   * older than the conntrack timeout): no new connection could use them,
   * and an established flow idle that long is cut as an idle inbound flow
   * would be. An entry left with no slot is deleted, freeing room (the map
   * never evicts: full means refuse). A partly expired entry is rewritten
   * from a fresh read with only those slots cleared, and only if it still
   * exists (BPF_EXIST): the datapath writes slots in place, so a learn that
   * lands between the read and the write is lost (fail closed: the pod's
   * next answer teaches it again), never something let through.
   */
  sweepFqdnLearned(): { entries: number; capacity: number; expired: ExpiredSlot[]; addresses: LearnedAddress[] } {
    this.check();
    const m = this.map('weir_fqdn_learned');
    const now = process.hrtime.bigint();
    const dead = (x: FqdnSlot): boolean => x.kind !== 0 && now >= x.expiresNs && now - x.lastUseNs >= this.ctTimeoutNs;
    const expired: ExpiredSlot[] = [];
    const addresses: LearnedAddress[] = [];
    let entries = 0;
    const { BPF_EXIST } = bpfConstants();
    for (const e of this.fqdnLearned()) {
      entries++;
      addresses.push(e);
      if (!e.slots.some(dead)) continue;
      const key = encodeFqdnLearnedKey({ endpointId: e.endpointId, family: e.family, addr: e.addr });
      const raw = m.lookup(key);
      if (!raw) {
        entries--;
        addresses.pop();
        continue;
      }
      const slots = decodeFqdnLearnedValue(raw);
      const gone = slots.filter(dead);
      if (gone.length === 0) continue;
      const left = slots.map((x) => (dead(x) ? { kind: 0, hash: 0n, expiresNs: 0n, lastUseNs: 0n } : x));
      try {
        if (left.every((x) => x.kind === 0)) {
          if (m.delete(key)) entries--;
          addresses.pop();
        } else {
          m.update(key, encodeFqdnLearnedValue(left), BPF_EXIST);
          e.slots = left.filter((x) => x.kind !== 0);
        }
      } catch {
        continue; // deleted meanwhile (ENOENT): nothing to clear
      }
      for (const x of gone) expired.push({ endpointId: e.endpointId, family: e.family, addr: e.addr, kind: x.kind, hash: x.hash });
    }
    return { entries, capacity: this.caps.fqdnLearned, expired, addresses };
  }

  /** weir_node as the programs see it. */
  nodeState(): NodeState {
    const v = this.map('weir_node').lookup(u32Key(0));
    return v ? decodeNodeState(v) : { flags: 0, updatedNs: 0n, dnsSecret: 0n };
  }

  /** WEIR_NODE_F_* currently set in weir_node. */
  nodeFlags(): number {
    return this.nodeState().flags;
  }

  /**
   * Sets the node flags (tests set them directly; the agent through
   * sweepConntrack). Read-modify-write: the rest of weir_node (the DNS
   * secret) is kept. Only the agent writes weir_node, from one thread.
   */
  setNodeFlags(flags: number): void {
    this.writeNodeState({ ...this.nodeState(), flags: flags >>> 0 });
  }

  /**
   * The key of the DNS name hash (weir_node.dns_secret): the one already
   * in the pinned map, or a new random one written now. It never changes
   * while the map lives, so a restarted agent hashes names as before;
   * should the map be recreated (a migration), a new secret starts, the
   * fqdn keys must be rewritten with it, and addresses learned under the
   * old one stop matching until learned again.
   */
  dnsSecret(): bigint {
    const st = this.nodeState();
    if (st.dnsSecret !== 0n) return st.dnsSecret;
    let secret = 0n;
    while (secret === 0n) secret = randomBytes(8).readBigUInt64LE(0);
    this.writeNodeState({ ...st, dnsSecret: secret });
    return secret;
  }

  private writeNodeState(st: NodeState): void {
    this.map('weir_node').update(u32Key(0), encodeNodeState({ ...st, updatedNs: process.hrtime.bigint() }));
  }

  /** Entries currently in the hash maps (walks them: for status, not hot paths). */
  hashMapEntries(
    name: 'weir_ct' | 'weir_agg' | 'weir_pods' | 'weir_pod_ips' | 'weir_dns_resolvers' | 'weir_fqdn_keys' | 'weir_dns_queries' | 'weir_fqdn_learned',
  ): number {
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

  /**
   * Clears an endpoint's conntrack entries, DNS state and counters before
   * its id is reused: what one pod learned must never serve the next.
   */
  private forgetEndpoint(endpointId: number): void {
    this.onEndpointRetired?.(endpointId, this.counters(endpointId));
    const ct = this.map('weir_ct');
    for (const k of ct.keys()) if (decodeCtKey(k).endpointId === endpointId) ct.delete(k);
    const learned = this.map('weir_fqdn_learned');
    for (const k of learned.keys()) if (decodeFqdnLearnedKey(k).endpointId === endpointId) learned.delete(k);
    const queries = this.map('weir_dns_queries');
    for (const k of queries.keys()) if (decodeDnsQueryKey(k).endpointId === endpointId) queries.delete(k);
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
  for (const sub of ['links', 'maps', 'staging']) {
    const d = join(pinDir, sub);
    if (!existsSync(d)) continue;
    for (const f of readdirSync(d)) rmSync(join(d, f));
    rmdirSync(d);
  }
  rmdirSync(pinDir);
}

/**
 * weir attaches only alongside other programs (bpf_link, which is
 * BPF_F_ALLOW_MULTI) and never replaces one. A program another tool attached
 * to the same hook without BPF_F_ALLOW_MULTI (exclusive or override mode)
 * makes the kernel refuse weir's link with EPERM: say so, rather than leave
 * a bare EPERM that reads like a missing capability.
 */
function exclusiveAttachmentHint<T>(err: T, cgroup: string, hook: AttachName): T {
  if (!(err instanceof Error) || (err as NodeJS.ErrnoException).code !== 'EPERM') return err;
  const c = bpfConstants();
  const type = {
    egress: c.BPF_CGROUP_INET_EGRESS,
    ingress: c.BPF_CGROUP_INET_INGRESS,
    connect4: c.BPF_CGROUP_INET4_CONNECT,
    connect6: c.BPF_CGROUP_INET6_CONNECT,
    sendmsg4: c.BPF_CGROUP_UDP4_SENDMSG,
    sendmsg6: c.BPF_CGROUP_UDP6_SENDMSG,
  }[hook];
  try {
    const q = progQuery(cgroup, type);
    if (q.progIds.length > 0 && !(q.attachFlags & c.BPF_F_ALLOW_MULTI)) {
      const mode = q.attachFlags & c.BPF_F_ALLOW_OVERRIDE ? 'override' : 'exclusive';
      err.message +=
        `\nanother program (id ${q.progIds.join(', ')}) is attached to the ${hook} hook of ${cgroup} in ${mode} mode (without BPF_F_ALLOW_MULTI): ` +
        'the kernel lets nothing run beside it, and weir never replaces another program. Have its owner attach it with BPF_F_ALLOW_MULTI (or a bpf_link), then start weir again';
    }
  } catch {
    // The query needs CAP_NET_ADMIN; without it the error stays as it is.
  }
  return err;
}

interface PlannedMigration {
  /** The pinned map, open; null when there is none (its pin was lost). */
  old: BpfMap | null;
  reason: MapMigration['reason'];
}

/**
 * The pinned maps this run cannot reuse: their type, key size, value size
 * or max_entries differ from what the objects declare with this run's
 * capacities (libbpf would refuse them at load). Each is returned open.
 *
 * While a previous agent's links are pinned, its programs keep running on
 * the pinned maps until attach(). If one policy map cannot be carried over
 * whole (or its pin is gone), the writer's first apply would write a new
 * policy next to an old one the old programs still read: every policy map
 * is then migrated (copied where it can be), so the old programs keep a
 * consistent old policy and the new ones get theirs, and the links move
 * after the first apply (fresh = true).
 */
function planMigrations(pinDir: string, objectPaths: string[], maxEntries: Record<string, number>, linksPinned: boolean): { plan: Map<MapName, PlannedMigration>; fresh: boolean } {
  const declared = new Map<string, MapDescriptor>();
  for (const path of objectPaths) {
    const obj = BpfObject.open(path);
    try {
      for (const [m, n] of Object.entries(maxEntries)) obj.setMapMaxEntries(m, n);
      for (const d of obj.maps()) if (!declared.has(d.name)) declared.set(d.name, d);
    } finally {
      obj.close();
    }
  }
  const plan = new Map<MapName, PlannedMigration>();
  let fresh = false;
  try {
    for (const m of MAP_NAMES) {
      const pin = join(pinDir, 'maps', m);
      const want = declared.get(m);
      if (!want) continue;
      if (!existsSync(pin)) {
        if (POLICY_MAPS.has(m)) fresh = true;
        continue;
      }
      const old = BpfMap.openPinned(pin);
      if (old.type === want.type && old.keySize === want.keySize && old.valueSize === want.valueSize && old.maxEntries === want.maxEntries) {
        old.close();
        continue;
      }
      plan.set(m, { old, reason: 'layout' });
      if (POLICY_MAPS.has(m) && !fitsWhole(old, want)) fresh = true;
    }
    fresh &&= linksPinned;
    if (fresh) {
      for (const m of POLICY_MAPS) {
        if (plan.has(m)) continue;
        const pin = join(pinDir, 'maps', m);
        plan.set(m, { old: existsSync(pin) ? BpfMap.openPinned(pin) : null, reason: 'consistency' });
      }
    }
  } catch (err) {
    for (const p of plan.values()) p.old?.close();
    throw err;
  }
  return { plan, fresh };
}

const isArrayType = (typeName: string): boolean => typeName.endsWith('array');

/** Whether every entry of `old` can be written into a map of layout `want`. */
function fitsWhole(old: BpfMap, want: MapDescriptor): boolean {
  if (old.type !== want.type || old.keySize !== want.keySize || old.valueSize !== want.valueSize || !COPYABLE_TYPES.has(old.typeName)) return false;
  if (old.maxEntries <= want.maxEntries) return true;
  const d = old.dump();
  if (!isArrayType(old.typeName)) return d.count <= want.maxEntries;
  const vs = old.valueBufferSize;
  for (let i = 0; i < d.count; i++) {
    if (d.keys.readUInt32LE(i * old.keySize) < want.maxEntries) continue;
    if (d.values.subarray(i * vs, (i + 1) * vs).some((b) => b !== 0)) return false;
  }
  return true;
}

/**
 * Copies what the new map can hold. A policy map is copied whole or not at
 * all (the writer adopts it, so a partial copy would be a wrong policy); a
 * counter, conntrack or aggregation map keeps what fits. The ring buffer and
 * socket storage cannot be read out: they start empty.
 */
function carryOver(name: MapName, p: PlannedMigration, neu: BpfMap): MapMigration {
  const layout = (m: BpfMap): MapMigration['to'] => ({ type: m.typeName, keySize: m.keySize, valueSize: m.valueSize, maxEntries: m.maxEntries });
  const old = p.old;
  const out: MapMigration = { map: name, reason: p.reason, from: old ? layout(old) : null, to: layout(neu), copied: null, dropped: 0 };
  if (!old || old.type !== neu.type || old.keySize !== neu.keySize || old.valueSize !== neu.valueSize || !COPYABLE_TYPES.has(neu.typeName)) return out;
  const d = old.dump();
  const ks = old.keySize;
  const vs = old.valueBufferSize;
  const isArray = isArrayType(neu.typeName);
  const keep: number[] = [];
  for (let i = 0; i < d.count; i++) {
    const v = d.values.subarray(i * vs, (i + 1) * vs);
    if (isArray) {
      if (v.every((b) => b === 0)) continue; // a new array is all zeros already
      if (d.keys.readUInt32LE(i * ks) >= neu.maxEntries) {
        out.dropped++;
        continue;
      }
    }
    keep.push(i);
  }
  if (!isArray && keep.length > neu.maxEntries) {
    out.dropped = keep.length - neu.maxEntries;
    keep.length = neu.maxEntries;
  }
  if (out.dropped > 0 && POLICY_MAPS.has(name)) return out;
  const keys = Buffer.alloc(keep.length * ks);
  const values = Buffer.alloc(keep.length * vs);
  keep.forEach((i, j) => {
    d.keys.copy(keys, j * ks, i * ks, (i + 1) * ks);
    d.values.copy(values, j * vs, i * vs, (i + 1) * vs);
  });
  if (keep.length > 0) neu.updateBatch(keys, values, keep.length);
  out.copied = keep.length;
  return out;
}
