// Names a pod's workload (its controlling owner) and governance domain, the
// bounded label values that metrics and logs group by.
import type { Pod } from '../model/types.js';

export const DOMAIN_LABEL = 'weir.dev/domain';

/** "Deployment/name", "StatefulSet/name", "Job/name", ... or "Pod/name" for bare pods. */
export function workloadOf(pod: Pod): string {
  const owner = pod.metadata.ownerReferences?.find((o) => o.controller) ?? pod.metadata.ownerReferences?.[0];
  if (!owner) return `Pod/${pod.metadata.name}`;
  // A ReplicaSet created by a Deployment is named <deployment>-<pod-template-hash>.
  if (owner.kind === 'ReplicaSet') {
    const hash = pod.metadata.labels?.['pod-template-hash'];
    if (hash && owner.name.endsWith(`-${hash}`)) return `Deployment/${owner.name.slice(0, -hash.length - 1)}`;
  }
  // A Job created by a CronJob is named <cronjob>-<schedule time>.
  if (owner.kind === 'Job' && /-\d{8,}$/.test(owner.name)) return `CronJob/${owner.name.replace(/-\d{8,}$/, '')}`;
  return `${owner.kind}/${owner.name}`;
}

export function domainOf(pod: Pod): string {
  return pod.metadata.labels?.[DOMAIN_LABEL] ?? '';
}
