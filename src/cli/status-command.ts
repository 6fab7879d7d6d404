import type { AgentStatus } from '../agent/agent.js';
import { DEFAULT_API_SOCKET, queryLocalApi } from '../agent/local-api.js';
import { parse, type Command } from './main.js';

const help = `Options:
  --api-socket PATH      the agent's local API (default ${DEFAULT_API_SOCKET}; root only)
  --json                 print the status as JSON
  -h, --help             show this help

Prints what the agent on this node is doing: whether it is ready, where its
model comes from (and each watch's state), the programs attached and their
link ids, each map's entries against its capacity, the policy generation,
the pods and workloads enforced, violation events sent and lost (in the
kernel's ring buffer, and by slow weir observe readers), DNS learning for
fqdn peers (loaded or not and why, the trusted resolvers, map usage, what
each pod learned: address, name, key and expiry; refused), and the audit
log's head. Exit status: 0 ready, 1 not ready or unreachable.
`;

function pct(used: number, capacity: number): string {
  return capacity > 0 ? `${((used / capacity) * 100).toFixed(1)}%` : '-';
}

/** The DNS-aware egress part of the status: learning on or not (and why), resolvers, maps, what each pod learned. */
export function formatFqdn(s: AgentStatus): string[] {
  const f = s.fqdn;
  const out: string[] = [];
  if (!f) return [`learned names: ${s.learnedNames.length > 0 ? s.learnedNames.join(', ') : 'none'}`];
  out.push(
    f.learning
      ? 'DNS learning (fqdn peers): loaded'
      : `DNS learning (fqdn peers): NOT LOADED (${f.unavailable ?? 'unknown'}): fqdn peers allow only the DNS queries they imply`,
  );
  const cfg = [f.resolverConfig.service !== null ? `Service ${f.resolverConfig.service}` : 'no DNS Service', ...f.resolverConfig.addresses];
  const list = f.resolvers.map((r) => (r.ip.includes(':') ? `[${r.ip}]:${r.port}` : `${r.ip}:${r.port}`));
  out.push(`  trusted resolvers (${cfg.join(', ')}): ${list.length > 0 ? list.join(', ') : 'none found'}`);
  for (const [name, m] of Object.entries(f.maps)) out.push(`  ${name.padEnd(22)} ${String(m.used).padStart(8)} / ${String(m.capacity).padEnd(8)} ${pct(m.used, m.capacity)}`);
  out.push(`  learned ${f.learned}, refused ${f.refused}, expired ${f.expired} (swept), queries for names no rule allows ${f.queriesNotAllowed}`);
  if (f.pods.length === 0) out.push('  learned: nothing now');
  else out.push('  learned (pod: address <- name [key], until):');
  for (const p of f.pods) {
    out.push(`    ${p.namespace}/${p.pod}${p.workload ? ` (${p.workload})` : ''}`);
    for (const a of p.addresses) {
      for (const e of a.entries) {
        const names = e.names.length > 0 ? e.names.join(', ') : '?';
        const key = e.key === null ? 'no key of its current policy' : e.key;
        out.push(`      ${a.address.padEnd(18)} <- ${names} [${key}] ${e.expired ? `expired ${e.expiresAt}` : `until ${e.expiresAt}`}`);
      }
    }
  }
  if (f.truncated > 0) out.push(`    … and ${f.truncated} more addresses (weir status --json has the same cap)`);
  return out;
}

export function formatStatus(s: AgentStatus): string {
  const out: string[] = [];
  out.push(`weir ${s.version} on node ${s.node ?? '(any)'}: ${s.ready ? 'ready' : 'NOT READY'} (since ${s.startedAt})`);
  if (s.source.kind === 'manifests') out.push(`source: manifests in ${s.source.dir}`);
  else {
    const synced = s.source.resources.filter((r) => r.synced).length;
    out.push(`source: Kubernetes API, ${synced}/${s.source.resources.length} resources synced`);
    for (const r of s.source.resources) out.push(`  ${r.resource.padEnd(22)} ${r.synced ? 'synced ' : 'SYNCING'} rv ${r.resourceVersion || '-'}`);
  }
  out.push(`pods root: ${s.podsRoot.dir} (${s.podsRoot.driver} driver, level ${s.podsRoot.level})`);
  out.push(`attached (pins in ${s.pinDir}):`);
  for (const a of s.attachments) out.push(`  ${a.program.padEnd(22)} link ${a.linkId} (${a.action})`);
  out.push('maps:');
  for (const [name, m] of Object.entries(s.maps)) out.push(`  ${name.padEnd(22)} ${String(m.used).padStart(8)} / ${String(m.capacity).padEnd(8)} ${pct(m.used, m.capacity)}`);
  out.push(`policy: generation ${s.policy.generation}, ${s.policy.policies} policies in ${s.policy.sets} sets`);
  for (const p of s.policy.problems) out.push(`  not compiled: ${p.policy}: ${p.error}`);
  out.push(`pods: ${s.pods.enforced} enforced${s.pods.pendingCgroup > 0 ? `, ${s.pods.pendingCgroup} waiting for their cgroup` : ''}`);
  for (const w of s.workloads) out.push(`  ${w.workload} (${w.pods} pod${w.pods === 1 ? '' : 's'})`);
  out.push(
    `events: ${s.events.sent} sent, ${s.events.aggregated} aggregated in the kernel, lost: ${s.events.lostKernel} (ring buffer full), ${s.events.lostObserve} (slow observe readers); ${s.events.observers} observing`,
  );
  out.push(...formatFqdn(s));
  if (s.auditLog) out.push(`audit log: ${s.auditLog.path}, ${s.auditLog.head ? `seq ${s.auditLog.head.seq}, head ${s.auditLog.head.hash.slice(0, 16)}…` : 'empty'}`);
  else out.push('audit log: off (--audit-log)');
  return `${out.join('\n')}\n`;
}

export const statusCommand: Command = {
  summary: 'Show the state of the agent on this node: attachments, maps, policy, workloads, events lost.',
  usage: 'weir status [--api-socket PATH] [--json]',
  help,
  async run(argv) {
    const { values } = parse(argv, { 'api-socket': { type: 'string', default: DEFAULT_API_SOCKET }, json: { type: 'boolean', default: false } });
    let r;
    try {
      r = await queryLocalApi(values['api-socket'] ?? DEFAULT_API_SOCKET, '/v1/status');
    } catch (err) {
      process.stderr.write(`weir status: ${(err as Error).message}\n`);
      return 1;
    }
    if (r.status !== 200) {
      process.stderr.write(`weir status: the agent answered ${r.status}: ${JSON.stringify(r.body)}\n`);
      return 1;
    }
    const s = r.body as AgentStatus;
    process.stdout.write(values.json ? `${JSON.stringify(s, null, 2)}\n` : formatStatus(s));
    return s.ready ? 0 : 1;
  },
};
