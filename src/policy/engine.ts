// The policy engine: from the model (namespaces, pods, policies) to the
// desired datapath state of one node, and explanations of single verdicts.
// Pure: it reads the model through PolicyInputs and never touches the kernel.
import type {
  ClusterEgressPolicy,
  EgressPolicy,
  EndpointSlice,
  Namespace,
  NetworkPolicy,
  Pod,
  Service,
} from '../model/types.js';
import { serviceEntries, serviceFrontends, type ServiceFrontend } from './services.js';
import {
  BIT_A_ALLOW,
  BIT_A_DENY,
  BIT_E_ALLOW,
  BIT_E_DENY,
  CompileError,
  PORT_RANGES_MAX,
  classBits,
  entries as compileEntries,
  flatten,
  lookupFlat,
  podIPs,
  podPeerMatches,
  setFlags,
  type Entry,
  type FlatPrefix,
  type PeerDirectory,
  type PortRange,
} from './compile.js';
import {
  describeRule,
  normalizeClusterEgressPolicy,
  normalizeEgressPolicy,
  normalizeNetworkPolicy,
  type Policy,
} from './normalize.js';
import { addressBytes, prefixContains, hostPrefix } from './prefix.js';
import { decide, type Decision } from './verdict.js';
import { compileFqdn, type FqdnKey } from './fqdn.js';
import { DEFAULT_RESOLVERS, impliedResolverEntries, trustedResolvers, type Resolver, type ResolverConfig } from './resolvers.js';

export interface PolicyInputs {
  namespaces(): Iterable<Namespace>;
  pods(): Iterable<Pod>;
  networkPolicies(): Iterable<NetworkPolicy>;
  egressPolicies(): Iterable<EgressPolicy>;
  clusterEgressPolicies(): Iterable<ClusterEgressPolicy>;
  services(): Iterable<Service>;
  endpointSlices(): Iterable<EndpointSlice>;
}

export interface DesiredPod {
  uid: string;
  namespace: string;
  name: string;
  pod: Pod;
  setKey: string;
}

export interface DesiredSet {
  /** The ids of the selecting policies, sorted and joined: pods with the same key share the set. */
  key: string;
  policies: Policy[];
  flags: number;
  entries: Entry[];
  v4: FlatPrefix[];
  v6: FlatPrefix[];
  /**
   * FQDN peers of the set's rules, one key per distinct name or wildcard
   * (src/policy/fqdn.ts): what a name learned from a DNS answer allows.
   * Empty or absent when no policy of the set has fqdn peers.
   */
  fqdn?: FqdnKey[];
  /** Set when the set could not be compiled; the datapath keeps the last good version. */
  error?: string;
}

export interface PolicyProblem {
  policyId: string;
  message: string;
}

export interface DesiredState {
  pods: DesiredPod[];
  sets: Map<string, DesiredSet>;
  policies: Policy[];
  problems: PolicyProblem[];
  /**
   * The trusted DNS resolvers (src/policy/resolvers.ts): the only sources
   * DNS answers are learned from, written to weir_dns_resolvers. Absent in
   * hand-made states (benchmarks): the StateWriter leaves that map alone.
   */
  resolvers?: Resolver[];
}

export interface Match {
  policyId: string;
  rule: string; // e.g. "EgressPolicy/ml/train-data egress[0]"
  kind: 'allow' | 'deny';
  mode: 'Enforce' | 'Audit';
}

export interface Explanation extends Decision {
  selectedBy: string[];
  bits: number;
  matches: Match[];
}

const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

/** Pods weir can govern and use as peers: running, with IPs, not on the host network. */
function isLivePod(p: Pod): boolean {
  const phase = p.status?.phase;
  return phase !== 'Succeeded' && phase !== 'Failed' && !p.spec.hostNetwork;
}

/** One change of the model, as the store reports it. */
export interface ModelChange {
  kind: string;
  old?: unknown;
  new?: unknown;
}

/**
 * Compiled sets are cached between computes and invalidated only by the
 * changes passed to compute(), so a change to one policy or one pod
 * recompiles only the sets it touches. Without change information
 * everything is compiled.
 * test/unit/engine-incremental.test.ts checks that the incremental result
 * always equals a fresh compute.
 */
export class PolicyEngine {
  private cache = new Map<string, DesiredSet>();
  private readonly normalized = new WeakMap<object, Policy>();
  private nsLabelsSeen = new Map<string, Record<string, string> | undefined>();

  private readonly resolverConfig: ResolverConfig;

  /**
   * @param opts.resolvers the trusted DNS resolvers (default: the Service
   *   kube-system/kube-dns): sets with fqdn peers may query them on port 53.
   */
  constructor(
    private readonly nodeName: string | null,
    opts: { resolvers?: ResolverConfig } = {},
  ) {
    this.resolverConfig = opts.resolvers ?? DEFAULT_RESOLVERS;
  }

  private invalidate(changes: readonly ModelChange[] | 'all'): void {
    if (changes === 'all') {
      this.cache.clear();
      return;
    }
    for (const c of changes) {
      if (this.cache.size === 0) return;
      switch (c.kind) {
        case 'NetworkPolicy':
        case 'EgressPolicy':
        case 'ClusterEgressPolicy': {
          const ids = new Set(
            [c.old, c.new]
              .filter((o): o is { kind: string; metadata: { name: string; namespace?: string } } => !!o)
              .map((o) => (o.kind === 'ClusterEgressPolicy' ? `${o.kind}//${o.metadata.name}` : `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`)),
          );
          for (const [key, set] of this.cache) if (set.policies.some((p) => ids.has(p.id))) this.cache.delete(key);
          break;
        }
        case 'Pod': {
          const versions = [c.old, c.new].filter((o): o is Pod => !!o && isLivePod(o as Pod) && podIPs(o as Pod).length > 0);
          if (versions.length === 0) break;
          for (const [key, set] of this.cache) {
            if (versions.some((pod) => this.setDependsOnPod(set, pod))) this.cache.delete(key);
          }
          break;
        }
        case 'Namespace':
          // Rare: any set with pod peers may see different pods.
          for (const [key, set] of this.cache) {
            if (set.policies.some((p) => p.rules.some((r) => r.peers === null || r.peers.some((x) => x.type === 'pods')))) this.cache.delete(key);
          }
          break;
        default:
          // Services and EndpointSlices feed every isolated set.
          this.cache.clear();
      }
    }
  }

  /** Could this pod, as a destination, change what the set allows? */
  private setDependsOnPod(set: DesiredSet, pod: Pod): boolean {
    const dir: PeerDirectory = { peerPods: () => [], namespaceLabels: (n) => this.nsLabelsSeen.get(n) ?? { [NAMESPACE_NAME_LABEL]: n } };
    for (const p of set.policies) {
      for (const r of p.rules) {
        const named = r.ports?.some((x) => typeof x.port === 'string') ?? false;
        if (r.peers === null) {
          if (named) return true;
          continue;
        }
        for (const peer of r.peers) {
          if (peer.type === 'pods' && podPeerMatches(peer, pod, dir)) return true;
          if (peer.type === 'ipBlock' && named) return true;
        }
      }
    }
    return false;
  }

  /**
   * @param changes what changed since the previous compute of this engine;
   *   omitted, everything is recompiled (the safe default for callers that
   *   do not track changes).
   */
  compute(inputs: PolicyInputs, changes?: readonly ModelChange[]): DesiredState {
    this.invalidate(changes ?? 'all');
    // The API server gives every namespace the kubernetes.io/metadata.name
    // label; namespaces only known through their pods get it too.
    const nsLabels = new Map<string, Record<string, string> | undefined>();
    for (const ns of inputs.namespaces()) {
      nsLabels.set(ns.metadata.name, { ...ns.metadata.labels, [NAMESPACE_NAME_LABEL]: ns.metadata.name });
    }

    const problems: PolicyProblem[] = [];
    const policies: Policy[] = [];
    const normalize = <T extends { kind: string; metadata: { name: string; namespace?: string } }>(
      objs: Iterable<T>,
      fn: (o: T) => Policy,
    ): void => {
      for (const o of objs) {
        try {
          policies.push(fn(o));
        } catch (err) {
          problems.push({
            policyId: `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`,
            message: (err as Error).message,
          });
        }
      }
    };
    // Store objects are replaced, never mutated, so a normalized policy can
    // be reused for as long as its object is the same.
    const cached = <T extends object>(fn: (o: T) => Policy) => (o: T): Policy => {
      let p = this.normalized.get(o);
      if (!p) {
        p = fn(o);
        this.normalized.set(o, p);
      }
      return p;
    };
    normalize(inputs.networkPolicies(), cached(normalizeNetworkPolicy));
    normalize(inputs.egressPolicies(), cached(normalizeEgressPolicy));
    normalize(inputs.clusterEgressPolicies(), cached(normalizeClusterEgressPolicy));
    policies.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));

    const allPods = [...inputs.pods()].filter(isLivePod);
    for (const p of allPods) {
      const n = p.metadata.namespace;
      if (!nsLabels.has(n)) nsLabels.set(n, { [NAMESPACE_NAME_LABEL]: n });
    }
    const peers = allPods.filter((p) => podIPs(p).length > 0);
    const dir: PeerDirectory = {
      peerPods: () => peers,
      namespaceLabels: (n) => nsLabels.get(n),
    };

    const frontends = serviceFrontends([...inputs.services()], [...inputs.endpointSlices()]);
    const resolvers = trustedResolvers(frontends, this.resolverConfig);
    const pods: DesiredPod[] = [];
    const sets = new Map<string, DesiredSet>();
    for (const pod of allPods) {
      if (this.nodeName !== null && pod.spec.nodeName !== this.nodeName) continue;
      const uid = pod.metadata.uid;
      if (!uid) continue;
      const selecting = policies.filter((p) => p.selects(pod, nsLabels.get(pod.metadata.namespace)));
      // Policies that do not isolate egress (NetworkPolicy with only
      // Ingress) play no part in egress and must not split sets.
      const egress = selecting.filter((p) => p.isolatesEgress);
      const key = egress.map((p) => p.id).join('\n');
      if (!sets.has(key)) sets.set(key, this.cache.get(key) ?? compileSet(key, egress, dir, frontends, resolvers));
      pods.push({ uid, namespace: pod.metadata.namespace, name: pod.metadata.name, pod, setKey: key });
    }
    this.cache = new Map(sets);
    this.nsLabelsSeen = nsLabels;
    return { pods, sets, policies, problems, resolvers };
  }

  /** Why does pod P get this verdict for dst:port/proto? */
  explain(state: DesiredState, pod: DesiredPod, dst: string, proto: number, port: number | null): Explanation {
    const set = state.sets.get(pod.setKey);
    if (!set) return { verdict: 'drop', reason: 'no-policy-set', selectedBy: [], bits: 0, matches: [] };
    const { family, bytes } = addressBytes(dst);
    const flat = family === 4 ? set.v4 : set.v6;
    const bits = set.flags === 1 ? 0 : classBits(lookupFlat(flat, family, bytes), proto, port);
    const d = decide(set.flags, bits);
    const hp = hostPrefix(dst);
    const matches: Match[] = [];
    const seen = new Set<string>();
    for (const e of set.entries) {
      if (!prefixContains(e.prefix, hp) || e.except.some((x) => prefixContains(x, hp))) continue;
      if (!portsMatch(e.ports, proto, port)) continue;
      const rule = describeRule(e.policy, e.rule);
      if (seen.has(rule)) continue;
      seen.add(rule);
      matches.push({ policyId: e.policy.id, rule, kind: e.rule.kind, mode: e.policy.mode });
    }
    return { ...d, selectedBy: set.policies.map((p) => p.id), bits, matches };
  }
}

function portsMatch(ports: PortRange[] | null, proto: number, port: number | null): boolean {
  if (ports === null) return true;
  if (port === null) return false;
  return ports.some((r) => r.proto === proto && r.lo <= port && port <= r.hi);
}

function compileSet(key: string, policies: Policy[], dir: PeerDirectory, frontends: ServiceFrontend[], resolvers: Resolver[]): DesiredSet {
  const flags = setFlags(policies);
  try {
    const es = compileEntries(policies, dir);
    // fqdn peers imply DNS to the trusted resolvers (docs/policy.md).
    es.push(...impliedResolverEntries(policies, resolvers));
    // Services are judged by their backends under the rules above, so their
    // entries are derived from a first flattening and then added.
    let v4 = flatten(es, 4);
    let v6 = flatten(es, 6);
    if (frontends.length > 0 && es.length > 0) {
      const svc = serviceEntries(frontends, v4, v6);
      if (svc.length > 0) {
        es.push(...svc);
        v4 = flatten(es, 4);
        v6 = flatten(es, 6);
      }
    }
    const fqdn = compileFqdn(policies);
    for (const f of [...v4, ...v6, ...fqdn]) {
      if (f.cls.ranges.length > PORT_RANGES_MAX) {
        throw new CompileError(
          `more than ${PORT_RANGES_MAX} distinct port ranges apply to one destination range; ` +
            `merge port rules or split the policies`,
          policies.map((p) => p.id),
        );
      }
    }
    return { key, policies, flags, entries: es, v4, v6, fqdn };
  } catch (err) {
    return { key, policies, flags, entries: [], v4: [], v6: [], fqdn: [], error: (err as Error).message };
  }
}

/** Names of the bits, for logs and explain output. */
export function describeBits(bits: number): string[] {
  const out: string[] = [];
  if (bits & BIT_E_DENY) out.push('deny');
  if (bits & BIT_E_ALLOW) out.push('allow');
  if (bits & BIT_A_DENY) out.push('audit-deny');
  if (bits & BIT_A_ALLOW) out.push('audit-allow');
  return out;
}
