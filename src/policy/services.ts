// Services: traffic to a ClusterIP:port is judged by the Service's ready
// backends (EndpointSlices) on their target port. For each policy set, a
// Service port gets an entry on ClusterIP/32 (or /128) for its port:
//   allow bits  = AND over every ready backend (allowed only if every
//                 backend is allowed; audit-allow likewise, with Enforce
//                 allows counting as audit allows),
//   deny bits   = OR over the backends (any denied backend denies).
// The entry is flattened together with the set's other entries, so an
// ipBlock that covers the ClusterIP itself also applies (OR). A Service
// without ready backends gets no entry. Headless Services (clusterIP None)
// have no frontend: their clients connect to pod IPs directly.
import type { EndpointSlice, Protocol, Service } from '../model/types.js';
import {
  BIT_A_ALLOW,
  BIT_A_DENY,
  BIT_E_ALLOW,
  BIT_E_DENY,
  classBits,
  lookupFlat,
  type Entry,
  type FlatPrefix,
} from './compile.js';
import { PROTO_NUMBER, type Policy, type Rule } from './normalize.js';
import { addressBytes, hostPrefix } from './prefix.js';

export interface ServiceFrontend {
  namespace: string;
  name: string;
  clusterIPs: string[];
  ports: { protocol: Protocol; port: number; backends: { ip: string; port: number }[] }[];
}

const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

export function serviceFrontends(services: Service[], slices: EndpointSlice[]): ServiceFrontend[] {
  const byService = new Map<string, EndpointSlice[]>();
  for (const s of slices) {
    const svc = s.metadata.labels?.[SERVICE_NAME_LABEL];
    if (!svc || s.addressType === 'FQDN') continue;
    const k = `${s.metadata.namespace}/${svc}`;
    const list = byService.get(k) ?? [];
    list.push(s);
    byService.set(k, list);
  }
  const out: ServiceFrontend[] = [];
  for (const svc of services) {
    if (svc.spec.type === 'ExternalName') continue;
    const ips = (svc.spec.clusterIPs ?? (svc.spec.clusterIP ? [svc.spec.clusterIP] : [])).filter((ip) => ip && ip !== 'None');
    if (ips.length === 0) continue;
    const ns = svc.metadata.namespace;
    const sl = byService.get(`${ns}/${svc.metadata.name}`) ?? [];
    const ports = (svc.spec.ports ?? []).map((sp) => {
      const backends: { ip: string; port: number }[] = [];
      for (const s of sl) {
        // EndpointSlice ports are named after the Service port (unnamed for a single-port Service).
        const p = (s.ports ?? []).find((x) => (x.name ?? '') === (sp.name ?? '') && (x.protocol ?? 'TCP') === sp.protocol);
        if (!p || p.port === undefined) continue;
        for (const ep of s.endpoints) {
          if (ep.conditions?.ready === false) continue;
          for (const ip of ep.addresses) backends.push({ ip, port: p.port });
        }
      }
      return { protocol: sp.protocol, port: sp.port, backends };
    });
    out.push({ namespace: ns, name: svc.metadata.name, clusterIPs: ips, ports });
  }
  return out;
}

function servicePolicy(f: ServiceFrontend): Policy {
  return {
    id: `Service/${f.namespace}/${f.name}`,
    kind: 'Service',
    namespace: f.namespace,
    name: f.name,
    mode: 'Enforce',
    isolatesEgress: false,
    selects: () => false,
    rules: [],
  };
}

const SERVICE_RULE: Rule = { kind: 'allow', index: 0, peers: null, ports: null };

export function serviceEntries(frontends: ServiceFrontend[], v4: FlatPrefix[], v6: FlatPrefix[]): Entry[] {
  const out: Entry[] = [];
  for (const f of frontends) {
    const policy = servicePolicy(f);
    for (const sp of f.ports) {
      if (sp.backends.length === 0) continue;
      const proto = PROTO_NUMBER[sp.protocol];
      let eAllow = true;
      let aAllow = true;
      let deny = 0;
      for (const b of sp.backends) {
        const { family, bytes } = addressBytes(b.ip);
        const bits = classBits(lookupFlat(family === 4 ? v4 : v6, family, bytes), proto, b.port);
        if (!(bits & BIT_E_ALLOW)) eAllow = false;
        if (!(bits & (BIT_E_ALLOW | BIT_A_ALLOW))) aAllow = false;
        deny |= bits & (BIT_E_DENY | BIT_A_DENY);
      }
      const bits = (eAllow ? BIT_E_ALLOW : 0) | (aAllow ? BIT_A_ALLOW : 0) | deny;
      if (bits === 0) continue;
      for (const ip of f.clusterIPs) {
        out.push({ prefix: hostPrefix(ip), except: [], bits, ports: [{ proto, lo: sp.port, hi: sp.port }], policy, rule: SERVICE_RULE });
      }
    }
  }
  return out;
}
