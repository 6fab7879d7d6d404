// The Kubernetes objects weir reads, reduced to the fields it uses. Both
// sources (--manifests and the Kubernetes API) produce these, validated and
// with API defaults applied (see src/model/validate.ts), so everything after
// the sources can rely on the shapes below.

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid?: string;
  controller?: boolean;
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  resourceVersion?: string;
  generation?: number;
  ownerReferences?: OwnerReference[];
}

export type LabelSelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

export interface LabelSelectorRequirement {
  key: string;
  operator: LabelSelectorOperator;
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: LabelSelectorRequirement[];
}

export type Protocol = 'TCP' | 'UDP' | 'SCTP';

export interface Namespace {
  apiVersion: 'v1';
  kind: 'Namespace';
  metadata: ObjectMeta;
}

export interface ContainerPort {
  name?: string;
  containerPort: number;
  protocol: Protocol; // defaulted to TCP
}

export interface Container {
  name: string;
  ports?: ContainerPort[];
}

export type QosClass = 'Guaranteed' | 'Burstable' | 'BestEffort';

export interface Pod {
  apiVersion: 'v1';
  kind: 'Pod';
  metadata: ObjectMeta & { namespace: string };
  spec: {
    nodeName?: string;
    hostNetwork?: boolean;
    containers: Container[];
    initContainers?: Container[];
  };
  status?: {
    phase?: string;
    podIP?: string;
    podIPs?: { ip: string }[];
    qosClass?: QosClass;
  };
}

export interface IPBlock {
  cidr: string;
  except?: string[];
}

export interface NetworkPolicyPeer {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
  ipBlock?: IPBlock;
}

export interface NetworkPolicyPort {
  protocol: Protocol; // defaulted to TCP
  port?: number | string; // absent: all ports of the protocol
  endPort?: number;
}

export interface NetworkPolicyEgressRule {
  to?: NetworkPolicyPeer[];
  ports?: NetworkPolicyPort[];
}

export type PolicyType = 'Ingress' | 'Egress';

export interface NetworkPolicy {
  apiVersion: 'networking.k8s.io/v1';
  kind: 'NetworkPolicy';
  metadata: ObjectMeta & { namespace: string };
  spec: {
    podSelector: LabelSelector;
    policyTypes: PolicyType[]; // defaulted as the API server does
    egress?: NetworkPolicyEgressRule[];
  };
}

export interface FQDNSelector {
  matchName?: string;
  matchPattern?: string;
}

export interface EgressPeer extends NetworkPolicyPeer {
  fqdn?: FQDNSelector;
}

export interface EgressRule {
  to?: EgressPeer[];
  ports?: NetworkPolicyPort[];
}

export type PolicyMode = 'Enforce' | 'Audit';

export interface EgressPolicySpec {
  podSelector: LabelSelector;
  mode: PolicyMode; // defaulted to Enforce
  egress?: EgressRule[];
  deny?: EgressRule[];
}

export interface EgressPolicy {
  apiVersion: 'weir.dev/v1alpha1';
  kind: 'EgressPolicy';
  metadata: ObjectMeta & { namespace: string };
  spec: EgressPolicySpec;
}

export interface ClusterEgressPolicy {
  apiVersion: 'weir.dev/v1alpha1';
  kind: 'ClusterEgressPolicy';
  metadata: ObjectMeta;
  spec: EgressPolicySpec & { namespaceSelector: LabelSelector };
}

export interface ServicePort {
  name?: string;
  protocol: Protocol;
  port: number;
  targetPort?: number | string;
}

export interface Service {
  apiVersion: 'v1';
  kind: 'Service';
  metadata: ObjectMeta & { namespace: string };
  spec: {
    type?: string;
    clusterIP?: string;
    clusterIPs?: string[];
    selector?: Record<string, string>;
    ports?: ServicePort[];
  };
}

export interface EndpointSlice {
  apiVersion: 'discovery.k8s.io/v1';
  kind: 'EndpointSlice';
  metadata: ObjectMeta & { namespace: string };
  addressType: 'IPv4' | 'IPv6' | 'FQDN';
  endpoints: {
    addresses: string[];
    conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean };
    targetRef?: { kind?: string; name?: string; namespace?: string; uid?: string };
  }[];
  ports?: { name?: string; protocol?: Protocol; port?: number }[];
}

export type KubeObject =
  | Namespace
  | Pod
  | NetworkPolicy
  | EgressPolicy
  | ClusterEgressPolicy
  | Service
  | EndpointSlice;

export type KubeKind = KubeObject['kind'];

/** Stable identity of an object in the model: kind/namespace/name. */
export function objectKey(o: { kind: string; metadata: { name: string; namespace?: string } }): string {
  return `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
}
