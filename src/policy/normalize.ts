// Turns NetworkPolicy, EgressPolicy and ClusterEgressPolicy objects into one
// shape the compiler and the explainer share: who a policy selects, and its
// allow and deny rules with peers and ports as Kubernetes defines them.
import type {
  ClusterEgressPolicy,
  EgressPeer,
  EgressPolicy,
  EgressRule,
  NetworkPolicy,
  NetworkPolicyPort,
  Pod,
  PolicyMode,
  Protocol,
} from '../model/types.js';
import { compileSelector } from '../model/selectors.js';
import { parsePrefix, type Prefix } from './prefix.js';

export type PolicyKind = 'NetworkPolicy' | 'EgressPolicy' | 'ClusterEgressPolicy' | 'Service';
export type RuleKind = 'allow' | 'deny';
type LabelMatcher = (labels: Record<string, string> | undefined) => boolean;

export interface PodsPeer {
  type: 'pods';
  /** Namespace the peer is limited to when it has no namespaceSelector. */
  namespace: string | null;
  namespaceMatch: LabelMatcher | null;
  podMatch: LabelMatcher;
}

export interface IPBlockPeer {
  type: 'ipBlock';
  cidr: Prefix;
  except: Prefix[];
  text: string;
}

export interface FQDNPeer {
  type: 'fqdn';
  matchName?: string;
  matchPattern?: string;
}

export type Peer = PodsPeer | IPBlockPeer | FQDNPeer;

export interface Rule {
  kind: RuleKind;
  index: number; // position in spec.egress or spec.deny
  peers: Peer[] | null; // null: every destination
  ports: NetworkPolicyPort[] | null; // null: every port and protocol
}

export interface Policy {
  id: string; // Kind/namespace/name
  kind: PolicyKind;
  namespace: string | null;
  name: string;
  mode: PolicyMode;
  /** Whether the policy isolates the pods it selects for egress. */
  isolatesEgress: boolean;
  selects(pod: Pod, namespaceLabels: Record<string, string> | undefined): boolean;
  rules: Rule[];
}

export const PROTO_NUMBER: Record<Protocol, number> = { TCP: 6, UDP: 17, SCTP: 132 };

function peerOf(p: EgressPeer, policyNamespace: string | null): Peer {
  if (p.ipBlock) {
    return {
      type: 'ipBlock',
      cidr: parsePrefix(p.ipBlock.cidr),
      except: (p.ipBlock.except ?? []).map(parsePrefix),
      text: p.ipBlock.cidr,
    };
  }
  if (p.fqdn) {
    const peer: FQDNPeer = { type: 'fqdn' };
    if (p.fqdn.matchName !== undefined) peer.matchName = p.fqdn.matchName;
    if (p.fqdn.matchPattern !== undefined) peer.matchPattern = p.fqdn.matchPattern;
    return peer;
  }
  return {
    type: 'pods',
    namespace: p.namespaceSelector ? null : policyNamespace,
    namespaceMatch: p.namespaceSelector ? compileSelector(p.namespaceSelector) : null,
    podMatch: compileSelector(p.podSelector ?? {}),
  };
}

function rulesOf(kind: RuleKind, rules: EgressRule[] | undefined, ns: string | null): Rule[] {
  return (rules ?? []).map((r, index) => ({
    kind,
    index,
    // An empty or absent `to` means every destination; an empty or absent
    // `ports` means every port, exactly as in NetworkPolicy.
    peers: r.to && r.to.length > 0 ? r.to.map((p) => peerOf(p, ns)) : null,
    ports: r.ports && r.ports.length > 0 ? r.ports : null,
  }));
}

export function normalizeNetworkPolicy(np: NetworkPolicy): Policy {
  const ns = np.metadata.namespace;
  const podMatch = compileSelector(np.spec.podSelector);
  return {
    id: `NetworkPolicy/${ns}/${np.metadata.name}`,
    kind: 'NetworkPolicy',
    namespace: ns,
    name: np.metadata.name,
    mode: 'Enforce',
    isolatesEgress: np.spec.policyTypes.includes('Egress'),
    selects: (pod) => pod.metadata.namespace === ns && podMatch(pod.metadata.labels),
    rules: np.spec.policyTypes.includes('Egress') ? rulesOf('allow', np.spec.egress, ns) : [],
  };
}

export function normalizeEgressPolicy(ep: EgressPolicy): Policy {
  const ns = ep.metadata.namespace;
  const podMatch = compileSelector(ep.spec.podSelector);
  return {
    id: `EgressPolicy/${ns}/${ep.metadata.name}`,
    kind: 'EgressPolicy',
    namespace: ns,
    name: ep.metadata.name,
    mode: ep.spec.mode,
    isolatesEgress: true,
    selects: (pod) => pod.metadata.namespace === ns && podMatch(pod.metadata.labels),
    rules: [...rulesOf('allow', ep.spec.egress, ns), ...rulesOf('deny', ep.spec.deny, ns)],
  };
}

/**
 * A ClusterEgressPolicy selects pods by namespaceSelector AND podSelector.
 * In its peers, a podSelector without a namespaceSelector matches pods in
 * every namespace (the policy has no namespace of its own to default to).
 */
export function normalizeClusterEgressPolicy(cp: ClusterEgressPolicy): Policy {
  const nsMatch = compileSelector(cp.spec.namespaceSelector);
  const podMatch = compileSelector(cp.spec.podSelector ?? {});
  return {
    id: `ClusterEgressPolicy//${cp.metadata.name}`,
    kind: 'ClusterEgressPolicy',
    namespace: null,
    name: cp.metadata.name,
    mode: cp.spec.mode,
    isolatesEgress: true,
    selects: (pod, nsLabels) => nsMatch(nsLabels) && podMatch(pod.metadata.labels),
    rules: [...rulesOf('allow', cp.spec.egress, null), ...rulesOf('deny', cp.spec.deny, null)],
  };
}

export function describeRule(p: Policy, r: Rule): string {
  if (p.kind === 'Service') return `${p.id} (every ready backend allowed)`;
  return `${p.id} ${r.kind === 'allow' ? 'egress' : 'deny'}[${r.index}]`;
}
