// The API resources the Kubernetes source lists and watches, one informer
// each. `name` (the plural resource name) is the `resource` label of the
// weir_watch_* metrics, so the label set is bounded by this table.

import type { KubeKind } from '../model/types.js';

export type KubeResourceName =
  | 'namespaces'
  | 'pods'
  | 'services'
  | 'endpointslices'
  | 'networkpolicies'
  | 'egresspolicies'
  | 'clusteregresspolicies';

export interface KubeResource {
  readonly name: KubeResourceName;
  /** '' for the core group. */
  readonly group: string;
  readonly version: string;
  readonly kind: KubeKind;
  readonly namespaced: boolean;
  /**
   * Built-in resources come back from a list without apiVersion and kind on
   * their items (only the List carries them); custom resources have them.
   * The source fills them in before validation either way.
   */
  readonly builtin: boolean;
}

/** `v1` or `group/version`, as objects of the resource carry it. */
export function apiVersionOf(r: KubeResource): string {
  return r.group === '' ? r.version : `${r.group}/${r.version}`;
}

/** The cluster-wide collection path: `/api/v1/pods`, `/apis/weir.dev/v1alpha1/egresspolicies`. */
export function collectionPath(r: KubeResource): string {
  return r.group === '' ? `/api/${r.version}/${r.name}` : `/apis/${r.group}/${r.version}/${r.name}`;
}

// Order matters only for readability of logs: what selects (namespaces,
// policies) before what is selected (pods). Every informer starts at once.
export const KUBE_RESOURCES: readonly KubeResource[] = Object.freeze([
  { name: 'namespaces', group: '', version: 'v1', kind: 'Namespace', namespaced: false, builtin: true },
  { name: 'networkpolicies', group: 'networking.k8s.io', version: 'v1', kind: 'NetworkPolicy', namespaced: true, builtin: true },
  { name: 'egresspolicies', group: 'weir.dev', version: 'v1alpha1', kind: 'EgressPolicy', namespaced: true, builtin: false },
  { name: 'clusteregresspolicies', group: 'weir.dev', version: 'v1alpha1', kind: 'ClusterEgressPolicy', namespaced: false, builtin: false },
  { name: 'services', group: '', version: 'v1', kind: 'Service', namespaced: true, builtin: true },
  { name: 'endpointslices', group: 'discovery.k8s.io', version: 'v1', kind: 'EndpointSlice', namespaced: true, builtin: true },
  { name: 'pods', group: '', version: 'v1', kind: 'Pod', namespaced: true, builtin: true },
] satisfies KubeResource[]);
