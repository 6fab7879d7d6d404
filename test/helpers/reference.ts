// A deliberately simple reference evaluator of DESIGN.md's verdict rules,
// written straight from the Kubernetes objects: no normalization, no
// flattening, no tries, its own selector and CIDR code. The property tests
// compare the real engine (and the real BPF programs) against it.
import type {
  ClusterEgressPolicy,
  EgressPolicy,
  EgressRule,
  LabelSelector,
  Namespace,
  NetworkPolicy,
  Pod,
} from '../../src/model/types.js';

type Labels = Record<string, string> | undefined;

export interface RefWorld {
  namespaces: Namespace[];
  pods: Pod[];
  networkPolicies: NetworkPolicy[];
  egressPolicies: EgressPolicy[];
  clusterEgressPolicies: ClusterEgressPolicy[];
}

function selects(sel: LabelSelector, labels: Labels): boolean {
  const l = labels ?? {};
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (l[k] !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(l, e.key);
    const val = l[e.key];
    if (e.operator === 'In' && !(has && (e.values ?? []).includes(val as string))) return false;
    if (e.operator === 'NotIn' && has && (e.values ?? []).includes(val as string)) return false;
    if (e.operator === 'Exists' && !has) return false;
    if (e.operator === 'DoesNotExist' && has) return false;
  }
  return true;
}

function v4(ip: string): number | null {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(ip);
  if (!m) return null;
  return ((Number(m[1]) << 24) | (Number(m[2]) << 16) | (Number(m[3]) << 8) | Number(m[4])) >>> 0;
}

/** IPv4 only: the random worlds use IPv4 addresses. */
function inCidr(ip: string, cidr: string): boolean {
  const [base, lenText] = cidr.split('/');
  const a = v4(ip);
  const b = v4(base ?? '');
  if (a === null || b === null) return false;
  const len = Number(lenText ?? 32);
  if (len === 0) return true;
  const mask = (0xffffffff << (32 - len)) >>> 0;
  return (a & mask) === (b & mask);
}

const PROTO: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132 };

interface RefPolicy {
  mode: 'Enforce' | 'Audit';
  ns: string | null;
  allow: EgressRule[];
  deny: EgressRule[];
}

function nsLabels(w: RefWorld, name: string): Record<string, string> {
  const ns = w.namespaces.find((n) => n.metadata.name === name);
  return { ...(ns?.metadata.labels ?? {}), 'kubernetes.io/metadata.name': name };
}

function selecting(w: RefWorld, src: Pod): RefPolicy[] {
  const out: RefPolicy[] = [];
  const ns = src.metadata.namespace;
  for (const np of w.networkPolicies) {
    if (np.metadata.namespace !== ns || !np.spec.policyTypes.includes('Egress')) continue;
    if (selects(np.spec.podSelector, src.metadata.labels)) out.push({ mode: 'Enforce', ns, allow: np.spec.egress ?? [], deny: [] });
  }
  for (const ep of w.egressPolicies) {
    if (ep.metadata.namespace !== ns) continue;
    if (selects(ep.spec.podSelector, src.metadata.labels)) out.push({ mode: ep.spec.mode, ns, allow: ep.spec.egress ?? [], deny: ep.spec.deny ?? [] });
  }
  for (const cp of w.clusterEgressPolicies) {
    if (selects(cp.spec.namespaceSelector, nsLabels(w, ns)) && selects(cp.spec.podSelector, src.metadata.labels)) {
      out.push({ mode: cp.spec.mode, ns: null, allow: cp.spec.egress ?? [], deny: cp.spec.deny ?? [] });
    }
  }
  return out;
}

function podsWithIP(w: RefWorld, ip: string): Pod[] {
  return w.pods.filter((p) => p.status?.phase !== 'Failed' && (p.status?.podIPs ?? []).some((x) => x.ip === ip));
}

function ruleMatches(w: RefWorld, pol: RefPolicy, rule: EgressRule, ip: string, proto: number, port: number | null): boolean {
  const dstPods = podsWithIP(w, ip);
  const peerOk = (dst: Pod | null): boolean => {
    if (!rule.to || rule.to.length === 0) return true;
    return rule.to.some((peer) => {
      if (peer.ipBlock) return inCidr(ip, peer.ipBlock.cidr) && !(peer.ipBlock.except ?? []).some((e) => inCidr(ip, e));
      if (peer.fqdn) return false;
      if (!dst) return false;
      if (!peer.namespaceSelector && pol.ns !== null && dst.metadata.namespace !== pol.ns) return false;
      if (peer.namespaceSelector && !selects(peer.namespaceSelector, nsLabels(w, dst.metadata.namespace))) return false;
      return selects(peer.podSelector ?? {}, dst.metadata.labels);
    });
  };
  const portOk = (dst: Pod | null): boolean => {
    if (!rule.ports || rule.ports.length === 0) return true;
    if (port === null) return false;
    return rule.ports.some((p) => {
      if (PROTO[p.protocol] !== proto) return false;
      if (p.port === undefined) return true;
      if (typeof p.port === 'number') return p.port <= port && port <= (p.endPort ?? p.port);
      if (!dst) return false;
      return dst.spec.containers.some((c) => (c.ports ?? []).some((cp) => cp.name === p.port && cp.containerPort === port && cp.protocol === p.protocol));
    });
  };
  // The destination is one address; if it belongs to a pod, that pod decides pod peers and named ports.
  const candidates: (Pod | null)[] = dstPods.length > 0 ? dstPods : [null];
  return candidates.some((d) => peerOk(d) && portOk(d));
}

export type RefVerdict = 'allow' | 'drop' | 'audit';

export function referenceVerdict(w: RefWorld, src: Pod, ip: string, proto: number, port: number | null): RefVerdict {
  const pols = selecting(w, src);
  const enforce = pols.filter((p) => p.mode === 'Enforce');
  const audit = pols.filter((p) => p.mode === 'Audit');
  const any = (ps: RefPolicy[], kind: 'allow' | 'deny'): boolean =>
    ps.some((p) => (kind === 'allow' ? p.allow : p.deny).some((r) => ruleMatches(w, p, r, ip, proto, port)));
  if (any(enforce, 'deny')) return 'drop';
  if (enforce.length > 0 && !any(enforce, 'allow')) return 'drop';
  if (any(audit, 'deny')) return 'audit';
  if (pols.length > 0 && !any(pols, 'allow')) return 'audit';
  return 'allow';
}
