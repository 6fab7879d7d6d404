// Kubernetes manifests describing the sandbox's namespaces and pods, the way
// the API server would return them for running pods, so the agent's
// --manifests source sees the same objects it would see from a cluster.

import { randomUUID } from 'node:crypto';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { Container, Namespace, Pod, QosClass } from '../model/types.js';

export interface ManifestPodInput {
  namespace: string;
  name: string;
  uid: string;
  labels: Record<string, string>;
  qosClass: QosClass;
  nodeName: string;
  ip: string;
  ip6: string;
  ports: { name?: string; port: number; protocol: 'TCP' | 'UDP' | 'SCTP' }[];
  containerId: string;
  sandboxId: string;
}

type Quantity = { cpu: string; memory: string };
export type ManifestContainer = Container & {
  image: string;
  resources: { requests?: Quantity; limits?: Quantity };
};
export type PodManifest = Pod & {
  metadata: Pod['metadata'] & { annotations: Record<string, string> };
  spec: Pod['spec'] & { containers: ManifestContainer[] };
  status: NonNullable<Pod['status']> & {
    containerStatuses: { name: string; containerID: string; ready: boolean; started: boolean }[];
  };
};

export const SANDBOX_IMAGE = 'registry.invalid/weir/sandbox-probe:latest';

/** Resources that make the kubelet assign the requested QoS class. */
function resourcesFor(qos: QosClass): ManifestContainer['resources'] {
  const q = { cpu: '100m', memory: '64Mi' };
  if (qos === 'Guaranteed') return { requests: q, limits: q };
  if (qos === 'Burstable') return { requests: q };
  return {};
}

export function namespaceManifest(name: string, labels: Record<string, string>, uid: string = randomUUID()): Namespace {
  // The API server adds kubernetes.io/metadata.name to every namespace;
  // namespaceSelectors in NetworkPolicies commonly rely on it.
  return {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: { name, uid, labels: { ...labels, 'kubernetes.io/metadata.name': name } },
  };
}

export function podManifest(p: ManifestPodInput): PodManifest {
  const ports = p.ports.map((port) => ({
    ...(port.name !== undefined ? { name: port.name } : {}),
    containerPort: port.port,
    protocol: port.protocol,
  }));
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: p.name,
      namespace: p.namespace,
      uid: p.uid,
      labels: { ...p.labels },
      annotations: { 'weir.dev/sandbox': p.sandboxId },
    },
    spec: {
      nodeName: p.nodeName,
      containers: [
        { name: 'main', image: SANDBOX_IMAGE, ...(ports.length > 0 ? { ports } : {}), resources: resourcesFor(p.qosClass) },
      ],
    },
    status: {
      phase: 'Running',
      podIP: p.ip,
      podIPs: [{ ip: p.ip }, { ip: p.ip6 }],
      qosClass: p.qosClass,
      containerStatuses: [{ name: 'main', containerID: `containerd://${p.containerId}`, ready: true, started: true }],
    },
  };
}

export function toYaml(doc: object): string {
  return stringify(doc, { lineWidth: 0 });
}

/**
 * Writes a file so that a directory watcher never reads it half-written: the
 * content goes to a dotfile (which the agent ignores) and is renamed in place.
 */
export function writeFileAtomic(dir: string, name: string, content: string): string {
  const path = join(dir, name);
  const tmp = join(dir, `.${name}.${process.pid}.tmp`);
  writeFileSync(tmp, content);
  renameSync(tmp, path);
  return path;
}

export function removeFile(path: string): void {
  rmSync(path, { force: true });
}
