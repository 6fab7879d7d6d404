// The declarative description of a sandbox node, and its validation.

import { isIPv4, isIPv6 } from 'node:net';
import type { Protocol, QosClass } from '../model/types.js';
import { canonicalIPv6, checkHostAddresses, deriveHostIPv6, type HostKind } from './addressing.js';
import type { CgroupDriver } from './cgroup.js';

export interface NamespaceSpec {
  name: string;
  labels?: Record<string, string>;
}

export interface PodPortSpec {
  name?: string;
  port: number;
  protocol?: Protocol;
}

export interface PodSpec {
  namespace: string;
  name: string;
  labels?: Record<string, string>;
  /** Default BestEffort (a pod without resources). */
  qosClass?: QosClass;
  ports?: PodPortSpec[];
  /** Default: a fresh random UUID. */
  uid?: string;
}

export interface HostPorts {
  tcp?: number[];
  udp?: number[];
}

export interface HostSpec {
  name: string;
  ipv4: string;
  /** Default: derived from ipv4 (see addressing.ts). */
  ipv6?: string;
  kind: HostKind;
  /** Ports an echo server listens on when the sandbox is brought up with `serve`. */
  ports?: HostPorts;
}

export interface SandboxSpec {
  /** [a-z0-9]{1,10}; default random. Names: netns weir-<id>-*, cgroup weir-sb-<id>. */
  id?: string;
  cgroupDriver?: CgroupDriver;
  /** spec.nodeName of every pod; pass it to the agent as --node-name. */
  nodeName?: string;
  namespaces: NamespaceSpec[];
  pods: PodSpec[];
  hosts: HostSpec[];
}

export const ID_PATTERN = /^[a-z0-9]{1,10}$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Host names the sandbox keeps for its own namespaces (the node, the DNS server to come). */
export const RESERVED_HOST_NAMES = new Set(['node', 'dns']);

export function checkNamespaceSpec(ns: NamespaceSpec): void {
  if (!DNS_LABEL.test(ns.name)) throw new TypeError(`namespace name ${JSON.stringify(ns.name)} is not a DNS label`);
}

export function checkPodSpec(pod: PodSpec, namespaces: ReadonlySet<string>): void {
  const where = `pod ${pod.namespace}/${pod.name}`;
  if (!namespaces.has(pod.namespace)) throw new TypeError(`${where}: namespace ${pod.namespace} is not in the spec`);
  if (!DNS_SUBDOMAIN.test(pod.name)) throw new TypeError(`${where}: name is not a DNS subdomain`);
  if (pod.uid !== undefined && !UUID.test(pod.uid)) throw new TypeError(`${where}: uid ${pod.uid} is not a lowercase UUID`);
  for (const p of pod.ports ?? []) {
    if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) throw new RangeError(`${where}: bad port ${p.port}`);
  }
}

/** Validates a host and returns its addresses, the IPv6 one defaulted and canonical. */
export function checkHostSpec(host: HostSpec): { ipv4: string; ipv6: string } {
  if (!DNS_LABEL.test(host.name)) throw new TypeError(`host name ${JSON.stringify(host.name)} is not a DNS label`);
  if (RESERVED_HOST_NAMES.has(host.name)) throw new TypeError(`host name ${host.name} is reserved`);
  if (host.kind !== 'service' && host.kind !== 'internet') throw new TypeError(`host ${host.name}: bad kind`);
  if (!isIPv4(host.ipv4)) throw new TypeError(`host ${host.name}: bad ipv4 ${host.ipv4}`);
  if (host.ipv6 !== undefined && !isIPv6(host.ipv6)) throw new TypeError(`host ${host.name}: bad ipv6 ${host.ipv6}`);
  const ipv6 = host.ipv6 === undefined ? deriveHostIPv6(host.kind, host.ipv4) : canonicalIPv6(host.ipv6);
  checkHostAddresses(host.name, host.kind, host.ipv4, ipv6);
  return { ipv4: host.ipv4, ipv6 };
}

/** Whole-spec checks: names unique, references resolve, addresses unique. */
export function checkSpec(spec: SandboxSpec): void {
  if (spec.id !== undefined && !ID_PATTERN.test(spec.id)) {
    throw new TypeError(`sandbox id ${JSON.stringify(spec.id)} must match ${ID_PATTERN}`);
  }
  if (spec.cgroupDriver !== undefined && spec.cgroupDriver !== 'cgroupfs' && spec.cgroupDriver !== 'systemd') {
    throw new TypeError(`cgroupDriver must be cgroupfs or systemd`);
  }
  const nsNames = new Set<string>();
  for (const ns of spec.namespaces) {
    checkNamespaceSpec(ns);
    if (nsNames.has(ns.name)) throw new TypeError(`namespace ${ns.name} declared twice`);
    nsNames.add(ns.name);
  }
  const podKeys = new Set<string>();
  for (const pod of spec.pods) {
    checkPodSpec(pod, nsNames);
    const key = `${pod.namespace}/${pod.name}`;
    if (podKeys.has(key)) throw new TypeError(`pod ${key} declared twice`);
    podKeys.add(key);
  }
  const hostNames = new Set<string>();
  const addrs = new Set<string>();
  for (const host of spec.hosts) {
    const { ipv4, ipv6 } = checkHostSpec(host);
    if (hostNames.has(host.name)) throw new TypeError(`host ${host.name} declared twice`);
    hostNames.add(host.name);
    for (const a of [ipv4, ipv6]) {
      if (addrs.has(a)) throw new TypeError(`address ${a} used by two hosts`);
      addrs.add(a);
    }
  }
}
