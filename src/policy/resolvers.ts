// Trusted DNS resolvers and the permission fqdn peers imply: a pod whose
// policies name DNS names must be able to resolve them, so a set with fqdn
// peers may query the trusted resolvers on port 53 (UDP and TCP). Trusted
// are the cluster DNS Service's ClusterIPs and its ready backends (default
// kube-system/kube-dns) and any addresses configured explicitly. The same
// list is what the datapath will accept DNS answers from
// (docs/architecture.md, "DNS-aware egress").
import { BIT_A_ALLOW, BIT_E_ALLOW, type Entry, type PortRange } from './compile.js';
import type { Policy, Rule } from './normalize.js';
import { hostPrefix } from './prefix.js';
import type { ServiceFrontend } from './services.js';

export const DNS_PORT = 53;
const UDP = 17;
const TCP = 6;

export interface ResolverConfig {
  /** The cluster DNS Service as namespace/name; null: none. */
  service: string | null;
  /** Extra trusted resolver addresses (e.g. a node-local cache). */
  addresses: readonly string[];
}

export const DEFAULT_RESOLVERS: ResolverConfig = { service: 'kube-system/kube-dns', addresses: [] };

export interface Resolver {
  ip: string;
  /** Ports the resolver answers on: 53 for a ClusterIP or a configured address, the target port for a backend. */
  ports: number[];
}

/** The trusted resolvers, from the DNS Service's frontend and the configured addresses. */
export function trustedResolvers(frontends: readonly ServiceFrontend[], cfg: ResolverConfig): Resolver[] {
  const byIp = new Map<string, Set<number>>();
  const add = (ip: string, port: number): void => {
    let s = byIp.get(ip);
    if (!s) byIp.set(ip, (s = new Set()));
    s.add(port);
  };
  for (const ip of cfg.addresses) add(ip, DNS_PORT);
  if (cfg.service !== null) {
    const [ns, name] = cfg.service.split('/');
    const f = frontends.find((x) => x.namespace === ns && x.name === name);
    if (f) {
      for (const sp of f.ports) {
        if (sp.port !== DNS_PORT) continue;
        for (const ip of f.clusterIPs) add(ip, DNS_PORT);
        for (const b of sp.backends) add(b.ip, b.port);
      }
    }
  }
  return [...byIp].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([ip, ports]) => ({ ip, ports: [...ports].sort((a, b) => a - b) }));
}

function fqdnAllowRules(policies: readonly Policy[]): { policy: Policy; rule: Rule }[] {
  const out: { policy: Policy; rule: Rule }[] = [];
  for (const policy of policies) {
    for (const rule of policy.rules) {
      if (rule.kind === 'allow' && rule.peers?.some((p) => p.type === 'fqdn')) out.push({ policy, rule });
    }
  }
  return out;
}

/**
 * Allow entries for DNS to the trusted resolvers, implied by the allow rules
 * with fqdn peers: Enforce bits when an Enforce policy has one, Audit bits
 * for Audit policies. Each entry names the rule that implies it.
 */
export function impliedResolverEntries(policies: readonly Policy[], resolvers: readonly Resolver[]): Entry[] {
  const out: Entry[] = [];
  const seenMode = new Set<string>();
  for (const { policy, rule } of fqdnAllowRules(policies)) {
    // One set of entries per mode is enough; the first rule of each mode names them.
    if (seenMode.has(policy.mode)) continue;
    seenMode.add(policy.mode);
    const bits = policy.mode === 'Enforce' ? BIT_E_ALLOW : BIT_A_ALLOW;
    for (const r of resolvers) {
      const ports: PortRange[] = [];
      for (const p of r.ports) ports.push({ proto: UDP, lo: p, hi: p }, { proto: TCP, lo: p, hi: p });
      out.push({ prefix: hostPrefix(r.ip), except: [], bits, ports, policy, rule });
    }
  }
  return out;
}
