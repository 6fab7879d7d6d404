// `weir explain`: which verdict a pod gets for a destination, and the
// policies and rules that decide it. Destinations: IP:PORT/PROTO, IP/PROTO,
// [IPv6]:PORT/PROTO, or NS/POD:PORT[/PROTO] where PORT may be a container
// port name of that pod. PROTO defaults to TCP.
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import type { Pod } from '../model/types.js';
import { BIT_E_DENY, classBits, podIPs } from './compile.js';
import { PolicyEngine, describeBits, type DesiredState, type Explanation, type PolicyInputs } from './engine.js';
import { describeRule } from './normalize.js';
import type { ResolverConfig } from './resolvers.js';
import { decide } from './verdict.js';

const PROTOS: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ICMPV6: 58 };
const PORTED = new Set([6, 17, 132]);

export interface Destination {
  ip: string;
  proto: number;
  protoName: string;
  port: number | null;
  pod?: string;
}

export class ExplainError extends Error {}

function parseProto(s: string | undefined, ip: string): { proto: number; name: string } {
  const name = (s ?? 'TCP').toUpperCase();
  const proto = PROTOS[name === 'ICMP' && isIP(ip) === 6 ? 'ICMPV6' : name];
  if (proto === undefined) throw new ExplainError(`unknown protocol ${JSON.stringify(s)} (TCP, UDP, SCTP, ICMP)`);
  return { proto, name };
}

function sameAddress(a: string, b: string): boolean {
  try {
    return ipaddr.parse(a).toNormalizedString() === ipaddr.parse(b).toNormalizedString();
  } catch {
    return false;
  }
}

function findPod(pods: Iterable<Pod>, ref: string): Pod {
  const [ns, name] = ref.split('/');
  for (const p of pods) if (p.metadata.namespace === ns && p.metadata.name === name) return p;
  throw new ExplainError(`pod ${ref} not found`);
}

export function parseDestination(to: string, pods: Iterable<Pod>): Destination {
  // NS/POD:PORT[/PROTO]
  const podRef = /^([a-z0-9][-a-z0-9.]*)\/([a-z0-9][-a-z0-9.]*)(?::([A-Za-z0-9-]+))?(?:\/([A-Za-z0-9]+))?$/.exec(to);
  if (podRef && !isIP(podRef[1] ?? '')) {
    const pod = findPod(pods, `${podRef[1]}/${podRef[2]}`);
    const ip = podIPs(pod)[0];
    if (!ip) throw new ExplainError(`pod ${podRef[1]}/${podRef[2]} has no IP`);
    const { proto, name } = parseProto(podRef[4], ip);
    let port: number | null = null;
    if (podRef[3] !== undefined) {
      if (/^\d+$/.test(podRef[3])) port = Number(podRef[3]);
      else {
        const cp = pod.spec.containers.flatMap((c) => c.ports ?? []).find((x) => x.name === podRef[3] && (podRef[4] === undefined || x.protocol === name));
        if (!cp) throw new ExplainError(`pod ${podRef[1]}/${podRef[2]} has no container port named ${podRef[3]}`);
        port = cp.containerPort;
      }
    }
    return { ip, proto, protoName: name, port: PORTED.has(proto) ? port : null, pod: `${podRef[1]}/${podRef[2]}` };
  }
  // [v6]:PORT/PROTO, v4:PORT/PROTO, IP/PROTO, IP: split the protocol off
  // first, then the port (a bare IPv6 address has colons of its own).
  const slash = to.lastIndexOf('/');
  const protoText = slash >= 0 ? to.slice(slash + 1) : undefined;
  const hostPort = slash >= 0 ? to.slice(0, slash) : to;
  let ip: string | undefined;
  let portText: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(hostPort);
  if (bracket) [, ip, portText] = bracket;
  else if (isIP(hostPort) === 6) ip = hostPort;
  else {
    const v4 = /^([^:]+)(?::(\d+))?$/.exec(hostPort);
    if (v4) [, ip, portText] = v4;
  }
  if (!ip || !isIP(ip)) {
    throw new ExplainError(`cannot read destination ${JSON.stringify(to)}: expected IP:PORT/PROTO, [IPv6]:PORT/PROTO or NS/POD:PORT`);
  }
  const { proto, name } = parseProto(protoText, ip);
  const port = portText !== undefined ? Number(portText) : null;
  if (port !== null && (port < 1 || port > 65535)) throw new ExplainError(`port ${port} out of range`);
  if (PORTED.has(proto) && port === null) throw new ExplainError(`${name} needs a port: ${ip}:PORT/${name}`);
  return { ip, proto, protoName: name, port: PORTED.has(proto) ? port : null };
}

/** What the sending pod learned from DNS about the destination (explain against the running agent). */
export interface LearnedEntry {
  /** The fqdn key (a name, or `*.suffix`) of the pod's policy that the question matched; null when no key of its current policy has that hash. */
  key: string | null;
  /** The names the pod asked that were answered with this address, as far as the agent saw. */
  names: string[];
  expiresAt: string;
  /** Expired: still there for packets of connections already allowed, not for new ones. */
  expired: boolean;
}

export interface ExplainResult extends Omit<Explanation, 'reason'> {
  /** The engine's reasons, and `own-address`: a pod reaching its own IP is never judged (as loopback). */
  reason: Explanation['reason'] | 'own-address';
  from: string;
  to: Destination;
  /** Present when the pod has learned the destination from DNS (fqdn peers). */
  learned?: LearnedEntry[];
}

export interface ExplainOptions {
  /** The trusted resolvers the agent uses (default: the Service kube-system/kube-dns). */
  resolvers?: ResolverConfig;
  /** What a pod has learned about an address (the agent's weir_fqdn_learned). */
  learned?: (podUid: string, ip: string) => LearnedEntry[];
}

export function explain(inputs: PolicyInputs, from: string, to: string, opts: ExplainOptions = {}): ExplainResult {
  const engine = new PolicyEngine(null, opts.resolvers ? { resolvers: opts.resolvers } : {});
  const state: DesiredState = engine.compute(inputs);
  const src = findPod(inputs.pods(), from);
  const dp = state.pods.find((p) => p.uid === src.metadata.uid);
  if (!dp) throw new ExplainError(`pod ${from} is not governed (no uid, host network, or finished)`);
  const dst = parseDestination(to, inputs.pods());
  let e = engine.explain(state, dp, dst.ip, dst.proto, dst.port);
  const learned = opts.learned?.(dp.uid, dst.ip) ?? [];
  const set = state.sets.get(dp.setKey);
  // As the datapath: what the pod learned counts only where the trie would
  // not allow (never past an Enforce deny), and a new connection needs an
  // unexpired entry; each key's class is that of the pod's current policy.
  if (learned.length > 0 && set && e.verdict !== 'allow' && !(e.bits & BIT_E_DENY)) {
    let bits = e.bits;
    const matches = [...e.matches];
    for (const l of learned) {
      const k = l.expired || l.key === null ? undefined : set.fqdn?.find((x) => x.text === l.key);
      const b = k ? classBits(k.cls, dst.proto, dst.port) : 0;
      if (!k || b === 0) continue;
      bits |= b;
      for (const r of k.rules) {
        const rule = `${describeRule(r.policy, r.rule)} (fqdn ${k.text}, learned from DNS)`;
        if (!matches.some((m) => m.rule === rule)) matches.push({ policyId: r.policy.id, rule, kind: r.rule.kind, mode: r.policy.mode });
      }
    }
    if (bits !== e.bits) e = { ...e, ...decide(set.flags, bits), bits, matches };
  }
  const extra = learned.length > 0 ? { learned } : {};
  // The datapath passes a pod's traffic to its own addresses like loopback
  // (Kubernetes never isolates a pod from itself); rules that match are still shown.
  if (e.verdict !== 'allow' && podIPs(src).some((ip) => sameAddress(ip, dst.ip))) return { ...e, verdict: 'allow', reason: 'own-address', from, to: dst, ...extra };
  return { ...e, from, to: dst, ...extra };
}

export function formatExplanation(r: ExplainResult): string {
  const where = `${r.to.ip.includes(':') ? `[${r.to.ip}]` : r.to.ip}${r.to.port !== null ? `:${r.to.port}` : ''}/${r.to.protoName}${r.to.pod ? ` (${r.to.pod})` : ''}`;
  const lines = [`${r.from} -> ${where}`, `verdict: ${r.verdict} (${r.reason})`];
  lines.push(`selected by: ${r.selectedBy.length > 0 ? r.selectedBy.join(', ') : 'no egress policy (not isolated)'}`);
  if (r.bits) lines.push(`rule classes at the destination: ${describeBits(r.bits).join(', ')}`);
  if (r.matches.length > 0) {
    lines.push('matching rules:');
    for (const m of r.matches) lines.push(`  ${m.kind.padEnd(5)} ${m.rule} (${m.mode})`);
  } else if (r.selectedBy.length > 0) {
    lines.push('matching rules: none');
  }
  if (r.learned && r.learned.length > 0) {
    lines.push('learned from DNS by this pod:');
    for (const l of r.learned) {
      const asked = l.names.length > 0 ? ` (asked: ${l.names.join(', ')})` : '';
      lines.push(`  ${l.key ?? '(no fqdn key of its current policy)'}${asked}, ${l.expired ? `expired ${l.expiresAt}: only connections already allowed pass` : `until ${l.expiresAt}`}`);
    }
  }
  return `${lines.join('\n')}\n`;
}
