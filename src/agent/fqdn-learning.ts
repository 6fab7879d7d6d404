// DNS-aware egress in the agent (docs/architecture.md, "DNS-aware egress";
// docs/policy.md, "FQDN peers"): what the agent does with the datapath's
// DNS records and with weir_fqdn_learned, apart from writing the keys
// (the StateWriter's job).
//
//  - learned:  counted per workload; the question name is remembered per
//              pod and address, for status and explain (the kernel keeps
//              only the hash of the key the name matched);
//  - refused:  an address the kernel could not learn (4 live names on it,
//              or weir_fqdn_learned full): a warning, a metric and a
//              Kubernetes Event on the pod;
//  - intent:   a pod under fqdn rules asked for a name none of its rules
//              allows (a model trying to reach an unapproved API): a
//              warning, a metric and an audit record, even when no
//              connection follows;
//  - sweep:    every few seconds, slots expired and unused for the
//              conntrack timeout are deleted (Datapath.sweepFqdnLearned),
//              counted as expired.
//
// Names: the kernel's records carry the question name in wire form; the
// slots of weir_fqdn_learned carry the key the question matched (exact
// name or wildcard suffix, hashed with the node secret). The key's text is
// found again by hashing the keys of the pod's current set.
import type { Logger } from 'pino';
import { CONST, DNS_EVENT_KINDS, type RawDnsEvent } from '../datapath/abi.js';
import type { Datapath, LearnedAddress } from '../datapath/datapath.js';
import type { FqdnIntent } from '../audit/record.js';
import type { DesiredSet, DesiredState } from '../policy/engine.js';
import type { LearnedEntry } from '../policy/explain.js';
import { nameHash } from '../policy/fqdn-hash.js';
import { lookupFqdn } from '../policy/fqdn.js';
import { addressBytes, bytesToAddress, type Family } from '../policy/prefix.js';
import type { ResolverConfig } from '../policy/resolvers.js';
import type { FqdnCounterKind } from '../report/metrics.js';

/** The pod behind an endpoint, as the agent knows it. */
export interface FqdnPod {
  uid: string;
  namespace: string;
  name: string;
  workload: string;
  domain: string;
  setKey: string;
}

export interface FqdnLearningDeps {
  datapath: Pick<Datapath, 'fqdnLearning' | 'fqdnLearningUnavailable' | 'fqdnLearned' | 'sweepFqdnLearned' | 'dnsSecret' | 'stats' | 'capacities' | 'hashMapEntries' | 'writer'>;
  log: Logger;
  count(kind: FqdnCounterKind, pod: { namespace: string; workload: string }, n: number, reason?: string): void;
  endpoint(endpointId: number): FqdnPod | undefined;
  state(): DesiredState | null;
  /** The Events reporter's fqdnRefused, when Events are on. */
  refusedEvent?: (e: { namespace: string; pod: string; podUid?: string; name: string; address: string; reason: string; count: number }) => void;
  audit(data: FqdnIntent): void;
  /** The process name of a pid (/proc/PID/comm), or null. */
  processName(pid: number): string | null;
  now(): string;
  resolverConfig: ResolverConfig;
}

export interface FqdnStatus {
  /** Whether the DNS-learning programs run (kernel 5.17+): without them fqdn peers allow only the DNS queries they imply. */
  learning: boolean;
  /** Why not, when they do not. */
  unavailable: string | null;
  resolverConfig: { service: string | null; addresses: string[] };
  /** The trusted resolvers written to weir_dns_resolvers. */
  resolvers: { ip: string; port: number }[];
  /** weir_dns_resolvers, weir_fqdn_keys, weir_dns_queries, weir_fqdn_learned: entries against capacity. */
  maps: Record<string, { used: number; capacity: number }>;
  /** Datapath totals since the maps were created: names learned on an address, addresses refused, queries for names no rule allows. */
  learned: number;
  refused: number;
  queriesNotAllowed: number;
  /** Slots this agent's sweep deleted (expired and unused). */
  expired: number;
  /** What each pod learned, by address. */
  pods: FqdnPodStatus[];
  /** Addresses left out of `pods` (the list is capped). */
  truncated: number;
}

export interface FqdnPodStatus {
  namespace: string;
  pod: string;
  workload: string;
  addresses: { address: string; entries: LearnedEntry[] }[];
}

const REFUSED_REASONS: Record<number, string> = {
  [CONST.WEIR_DNS_REFUSED_SLOTS]: 'slots-full',
  [CONST.WEIR_DNS_REFUSED_MAP_FULL]: 'map-full',
};
const QTYPES: Record<number, string> = { 1: 'A', 28: 'AAAA' };
/** Names remembered per pod and address (a wildcard can bring many). */
const NAMES_PER_ADDRESS = 8;
const STATUS_MAX_ADDRESSES = 4096;

function familyOf(af: number): Family {
  return af === 10 ? 6 : 4;
}

function addressKey(endpointId: number, family: number, addr: Uint8Array): string {
  return `${endpointId}|${family}|${Buffer.from(addr).toString('hex')}`;
}

export class FqdnLearning {
  /** Question names learned, per pod and address (addressKey) -> name -> when last seen. */
  private readonly names = new Map<string, Map<string, number>>();
  private expiredTotal = 0;
  /** The last sweep's count of weir_fqdn_learned entries (metrics read it; no walk of their own). */
  private entries: number | null = null;
  private hashes: { secret: bigint; bySet: WeakMap<DesiredSet, Map<string, string>> } | null = null;
  /** What afterApply() last warned about, so each problem is logged once per occurrence. */
  private warned = { noResolver: false, noLearning: false };

  constructor(private readonly deps: FqdnLearningDeps) {}

  /**
   * After each policy write: warns (once, until it changes) when policies
   * have fqdn peers but nothing can be learned for them: no trusted resolver
   * is known (the DNS Service missing or without ready backends), or the
   * DNS-learning programs are not loaded (kernel before 5.17).
   */
  afterApply(state: DesiredState): void {
    const policies = new Set<string>();
    for (const set of state.sets.values()) if ((set.fqdn?.length ?? 0) > 0) for (const p of set.policies) policies.add(p.id);
    const used = policies.size > 0;
    const noResolver = used && (state.resolvers?.length ?? 0) === 0;
    if (noResolver !== this.warned.noResolver) {
      this.warned.noResolver = noResolver;
      const cfg = this.deps.resolverConfig;
      if (noResolver) {
        this.deps.log.warn(
          { policies: [...policies].slice(0, 10), dnsService: cfg.service, dnsResolvers: cfg.addresses },
          'policies have fqdn peers but no trusted DNS resolver is known (the DNS Service is missing or has no ready backend; see --dns-service, --dns-resolvers): their names are not learned, so they allow nothing but DNS',
        );
      } else if (used) this.deps.log.info({ resolvers: state.resolvers?.length ?? 0 }, 'trusted DNS resolvers known again');
    }
    const noLearning = used && !this.deps.datapath.fqdnLearning;
    if (noLearning && !this.warned.noLearning) {
      this.deps.log.warn(
        { policies: [...policies].slice(0, 10), reason: this.deps.datapath.fqdnLearningUnavailable },
        'policies have fqdn peers but DNS learning is not loaded on this node: their fqdn peers allow only the DNS queries they imply',
      );
    }
    this.warned.noLearning = noLearning;
  }

  /** One batch of WEIR_REC_DNS records from the ring buffer. */
  onRecords(records: RawDnsEvent[]): void {
    for (const r of records) {
      try {
        this.onRecord(r);
      } catch (err) {
        this.deps.log.error({ err, kind: DNS_EVENT_KINDS[r.kind] ?? r.kind }, 'handling a DNS record failed');
      }
    }
  }

  private onRecord(r: RawDnsEvent): void {
    const pod = this.deps.endpoint(r.endpointId);
    const who = { namespace: pod?.namespace ?? '', pod: pod?.name ?? '', workload: pod?.workload ?? '', domain: pod?.domain ?? '' };
    const name = r.name ?? `(unreadable name, ${Buffer.from(r.nameWire).toString('hex')})`;
    const address = bytesToAddress(familyOf(r.family), r.addr);
    const count = Math.max(1, r.count);
    switch (r.kind) {
      case CONST.WEIR_DNS_EV_LEARNED: {
        this.deps.count('learned', who, 1);
        const k = addressKey(r.endpointId, r.family, r.addr);
        let m = this.names.get(k);
        if (!m) this.names.set(k, (m = new Map()));
        m.delete(name);
        m.set(name, Date.now());
        if (m.size > NAMES_PER_ADDRESS) m.delete(m.keys().next().value as string);
        this.deps.log.debug({ event: 'fqdn-learned', ...who, name, address, ttl: r.ttl }, 'address learned from DNS');
        return;
      }
      case CONST.WEIR_DNS_EV_REFUSED: {
        const reason = REFUSED_REASONS[r.reason] ?? `unknown(${r.reason})`;
        this.deps.count('refused', who, count, reason);
        this.deps.log.warn(
          { event: 'fqdn-refused', ...who, name, address, reason, count },
          reason === 'map-full'
            ? 'an address of a DNS answer was not learned: weir_fqdn_learned is full; connections to it are refused (raise --max-fqdn-learned)'
            : 'an address of a DNS answer was not learned: it already has 4 live names for this pod; connections to it are refused',
        );
        this.deps.refusedEvent?.({ namespace: who.namespace, pod: who.pod, ...(pod ? { podUid: pod.uid } : {}), name, address, reason, count });
        return;
      }
      case CONST.WEIR_DNS_EV_INTENT: {
        this.deps.count('notAllowed', who, count);
        const set = pod ? this.deps.state()?.sets.get(pod.setKey) : undefined;
        const intent: FqdnIntent = {
          time: this.deps.now(),
          ...who,
          name,
          qtype: QTYPES[r.qtype] ?? String(r.qtype),
          resolver: address,
          pid: r.pid,
          command: (r.pid > 0 ? this.deps.processName(r.pid) : null) ?? '',
          count,
          policy: set?.policies.map((p) => p.id).join(',') ?? '',
        };
        const { time: _time, ...fields } = intent; // the log line has its own time
        this.deps.log.warn(
          { event: 'fqdn-intent', ...fields },
          'a pod asked DNS for a name its policy does not allow: an attempt to reach an unapproved destination (e.g. a model API); the answer teaches nothing',
        );
        this.deps.audit(intent);
        return;
      }
      default:
        this.deps.log.debug({ kind: r.kind }, 'DNS record of an unknown kind');
    }
  }

  /**
   * Deletes the slots expired and unused for the conntrack timeout, counts
   * them per workload, and forgets the names of addresses no longer there.
   */
  sweep(): { entries: number; capacity: number; expired: number } {
    const r = this.deps.datapath.sweepFqdnLearned();
    for (const x of r.expired) {
      const pod = this.deps.endpoint(x.endpointId);
      this.deps.count('expired', { namespace: pod?.namespace ?? '', workload: pod?.workload ?? '' }, 1);
    }
    this.expiredTotal += r.expired.length;
    this.entries = r.entries;
    if (this.names.size > 0) {
      const present = new Set(r.addresses.map((a) => addressKey(a.endpointId, a.family, a.addr)));
      for (const k of this.names.keys()) if (!present.has(k)) this.names.delete(k);
    }
    return { entries: r.entries, capacity: r.capacity, expired: r.expired.length };
  }

  /** weir_dns_queries and weir_fqdn_learned, for weir_map_entries (the learned count from the last sweep). */
  mapUsage(): Record<string, { used: number; capacity: number }> {
    const c = this.deps.datapath.capacities();
    return {
      weir_dns_queries: { used: this.deps.datapath.hashMapEntries('weir_dns_queries'), capacity: c.dnsQueries },
      weir_fqdn_learned: { used: this.entries ?? this.deps.datapath.hashMapEntries('weir_fqdn_learned'), capacity: c.fqdnLearned },
    };
  }

  /** Key text by "kind:hash" for a set's fqdn keys (hashed once per set and secret). */
  private keyTexts(set: DesiredSet): Map<string, string> {
    const secret = this.deps.datapath.dnsSecret();
    if (this.hashes?.secret !== secret) this.hashes = { secret, bySet: new WeakMap() };
    let m = this.hashes.bySet.get(set);
    if (!m) {
      m = new Map();
      for (const k of set.fqdn ?? []) {
        const kind = k.matcher.kind === 'name' ? CONST.WEIR_DNS_KEY_EXACT : CONST.WEIR_DNS_KEY_WILDCARD;
        m.set(`${kind}:${nameHash(secret, k.matcher.kind === 'name' ? k.matcher.name : k.matcher.suffix)}`, k.text);
      }
      this.hashes.bySet.set(set, m);
    }
    return m;
  }

  /** The learned entries of one (pod, address), each key with its names and expiry. */
  private entriesOf(a: LearnedAddress, pod: FqdnPod | undefined): LearnedEntry[] {
    const set = pod ? this.deps.state()?.sets.get(pod.setKey) : undefined;
    const texts = set ? this.keyTexts(set) : new Map<string, string>();
    const names = [...(this.names.get(addressKey(a.endpointId, a.family, a.addr))?.keys() ?? [])];
    const now = process.hrtime.bigint();
    const wall = Date.now();
    return a.slots.map((s) => {
      const key = texts.get(`${s.kind}:${s.hash}`) ?? null;
      const fk = key !== null ? set?.fqdn?.find((k) => k.text === key) : undefined;
      return {
        key,
        names: fk && set?.fqdn ? names.filter((n) => lookupFqdn(set.fqdn ?? [], n) === fk) : names,
        expiresAt: new Date(wall + Number(s.expiresNs - now) / 1e6).toISOString(),
        expired: now >= s.expiresNs,
      };
    });
  }

  /** What the pod learned about one address (explain), or none. */
  learnedFor(podUid: string, ip: string): LearnedEntry[] {
    let family: number;
    let bytes: Uint8Array;
    try {
      const a = addressBytes(ip);
      family = a.family === 4 ? 2 : 10;
      bytes = a.bytes;
    } catch {
      return [];
    }
    const hex = Buffer.from(bytes).toString('hex');
    for (const a of this.deps.datapath.fqdnLearned()) {
      if (a.family !== family || Buffer.from(a.addr).toString('hex') !== hex) continue;
      const pod = this.deps.endpoint(a.endpointId);
      if (pod?.uid === podUid) return this.entriesOf(a, pod);
    }
    return [];
  }

  status(): FqdnStatus {
    const dp = this.deps.datapath;
    const st = dp.stats();
    const usage = dp.writer.usage();
    const byPod = new Map<number, FqdnPodStatus>();
    let shown = 0;
    let truncated = 0;
    const learned = dp.fqdnLearned();
    for (const a of learned) {
      if (shown >= STATUS_MAX_ADDRESSES) {
        truncated++;
        continue;
      }
      shown++;
      const pod = this.deps.endpoint(a.endpointId);
      let ps = byPod.get(a.endpointId);
      if (!ps) byPod.set(a.endpointId, (ps = { namespace: pod?.namespace ?? '', pod: pod?.name ?? `(endpoint ${a.endpointId})`, workload: pod?.workload ?? '', addresses: [] }));
      ps.addresses.push({ address: bytesToAddress(familyOf(a.family), a.addr), entries: this.entriesOf(a, pod) });
    }
    const pods = [...byPod.values()].sort((x, y) => `${x.namespace}/${x.pod}`.localeCompare(`${y.namespace}/${y.pod}`));
    for (const p of pods) p.addresses.sort((x, y) => x.address.localeCompare(y.address));
    const c = dp.capacities();
    const maps: FqdnStatus['maps'] = {};
    for (const m of ['weir_dns_resolvers', 'weir_fqdn_keys'] as const) {
      const u = usage[m];
      if (u) maps[m] = u;
    }
    maps.weir_dns_queries = { used: dp.hashMapEntries('weir_dns_queries'), capacity: c.dnsQueries };
    maps.weir_fqdn_learned = { used: learned.length, capacity: c.fqdnLearned };
    return {
      learning: dp.fqdnLearning,
      unavailable: dp.fqdnLearningUnavailable,
      resolverConfig: { service: this.deps.resolverConfig.service, addresses: [...this.deps.resolverConfig.addresses] },
      resolvers: dp.writer.resolverEntries(),
      maps,
      learned: Number(st.fqdn_learned),
      refused: Number(st.fqdn_refused),
      queriesNotAllowed: Number(st.dns_queries_not_allowed),
      expired: this.expiredTotal,
      pods,
      truncated,
    };
  }

  /** Distinct names learned, for the status's short list. */
  learnedNames(): string[] {
    const out = new Set<string>();
    for (const m of this.names.values()) for (const n of m.keys()) out.add(n);
    return [...out].sort();
  }
}
