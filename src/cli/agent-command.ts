import { existsSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { Agent, parseHostPort, type AgentOptions } from '../agent/agent.js';
import { defaultCgroupRoot } from '../datapath/cgroups.js';
import { DEFAULT_CAPACITIES, type Capacities } from '../datapath/datapath.js';
import { join } from 'node:path';
import { DEFAULT_API_SOCKET } from '../agent/local-api.js';
import { cleanup } from '../datapath/cleanup.js';
import { DEFAULT_RESOLVERS, type ResolverConfig } from '../policy/resolvers.js';
import { createLogger, LOG_LEVELS } from '../report/logger.js';
import { parse, UsageError, type Command } from './main.js';

const help = `Sources (where the model of namespaces, pods, services and policies comes from):
  (default)              The Kubernetes API: in a pod, the service account; elsewhere
                         KUBECONFIG or ~/.kube/config. Pods, Namespaces, Services,
                         EndpointSlices, NetworkPolicies, EgressPolicies and
                         ClusterEgressPolicies are listed and watched. Enforcement starts
                         after the first full list; while the API server is unreachable
                         the last known policy keeps enforcing.
  --kubeconfig FILE      Use this kubeconfig for the Kubernetes API.
  --pod-scope SCOPE      cluster (default): watch every Pod, needed for podSelector and
                         namespaceSelector peers. node: only this node's Pods (for
                         clusters whose policies use ipBlock peers only).
  --manifests DIR        Read Namespaces, Pods and policies from Kubernetes manifests in
                         DIR instead (.yaml, .yml, .json; several documents per file;
                         dotfiles and editor temporaries ignored). DIR is watched: edits
                         apply without a restart. A malformed file or object is reported
                         with its file, object and field, and the last good version of
                         what it held keeps enforcing.

Options:
  --node-name NAME       Enforce for pods whose spec.nodeName is NAME. Default: the
                         NODE_NAME environment variable (set it from the downward API).
                         Required with the Kubernetes API; with --manifests and no name,
                         every pod in the manifests is enforced.
  --cgroup-root DIR      The cgroup v2 directory holding the kubelet's kubepods (cgroupfs
                         driver) or kubepods.slice (systemd driver) tree. Default: the
                         cgroup v2 mount point from /proc/self/mountinfo.
  --bpffs DIR            Mount point of the BPF filesystem (mounted there if it is not).
                         weir pins its maps and links under DIR/weir. Default: /sys/fs/bpf
  --pin-dir DIR          Pin directory (default: BPFFS/weir).
  --metrics-addr H:P     Serve /metrics, /healthz and /readyz on HOST:PORT.
                         Default: 0.0.0.0:9464. Use "off" to disable.
  --api-socket PATH      The local API (root only) for weir explain on this node.
                         Default: ${DEFAULT_API_SOCKET}. Use "off" to disable.
  --audit-log FILE       Append the tamper-evident audit log to FILE: one SHA-256-chained
                         JSON line per violation, audit verdict, policy change and agent
                         start/stop, with periodic checkpoints (also written to the agent
                         log). Check it with weir audit verify FILE. See docs/audit.md.
  --audit-max-bytes N    Rotate the audit log at N bytes (default 16777216); the chain
                         continues in the next file.
  --audit-max-files N    Rotated audit files kept (default 10).
  --audit-signing-key F  Sign audit checkpoints with this Ed25519 private key (PEM).
  --log-level LEVEL      ${LOG_LEVELS.join(', ')}. Default: info
  --event-interval MS    At most one violation event per flow per MS milliseconds;
                         counters stay exact. Default: 1000
  --max-pods N           Capacity of the pod map (default ${DEFAULT_CAPACITIES.pods}).
  --max-trie-nodes N     Capacity of the destination trie, 1 KiB per node
                         (default ${DEFAULT_CAPACITIES.nodes}).
  --max-trie-tails N     Capacity of the trie's tails, 40 bytes each: one per prefix
                         that parts from all others (default ${DEFAULT_CAPACITIES.tails} or
                         4 × --max-trie-nodes, whichever is larger).
  --max-port-classes N   Capacity of the port class table (default ${DEFAULT_CAPACITIES.classes}).
  --max-conntrack N      Inbound flows tracked so that their replies pass (default
                         ${DEFAULT_CAPACITIES.conntrack}, 28 bytes + 8 per entry).
  --max-fqdn-keys N      fqdn names and wildcards of all policy sets (default
                         ${DEFAULT_CAPACITIES.fqdnKeys}); a set whose keys do not fit is refused whole.
  --max-fqdn-learned N   (pod, address) pairs learned from DNS answers (default
                         ${DEFAULT_CAPACITIES.fqdnLearned}, about 190 bytes each); when full, new addresses are
                         refused (never evicted): their connections are dropped.
  --max-dns-queries N    DNS queries awaiting their answer (default ${DEFAULT_CAPACITIES.dnsQueries}, LRU).
  --dns-service NS/NAME  The cluster DNS Service for fqdn peers: its ClusterIPs on port 53
                         and its ready backends on their target port are the trusted
                         resolvers. Pods with fqdn rules may query them (implied), and only
                         their answers teach the datapath addresses. Default:
                         ${DEFAULT_RESOLVERS.service}. "none": no Service, only --dns-resolvers.
  --dns-resolvers LIST   More trusted resolvers, comma-separated addresses answering on
                         port 53 (e.g. a node-local DNS cache: 169.254.20.10). Default: none.
  --cleanup              Do not run: detach every program weir attached on this node and
                         remove its pins (BPFFS/weir or --pin-dir), and only those; then
                         exit. Enforcement stops. Run it before removing weir from a node.
  -h, --help             Show this help.

The agent needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN. Programs and maps stay
pinned when the agent stops, so enforcement continues across restarts and upgrades.
Signals: SIGTERM and SIGINT stop the agent (enforcement continues).
`;

function runCleanup(pinDir: string): number {
  const r = cleanup(pinDir);
  for (const d of r.detached) process.stdout.write(`detached ${d.program} (link ${d.linkId}${d.cgroupId ? `, cgroup ${d.cgroupId}` : ''})\n`);
  if (r.unpinned.length > 0) process.stdout.write(`removed map pins: ${r.unpinned.join(', ')}\n`);
  for (const l of r.leftAlone) process.stdout.write(`left alone: ${l.path}: ${l.why}\n`);
  if (r.detached.length + r.unpinned.length === 0 && r.leftAlone.length === 0) process.stdout.write(`nothing of weir's under ${pinDir}\n`);
  else process.stdout.write(r.removedDir ? `removed ${pinDir}; weir no longer enforces anything on this node\n` : `${pinDir} kept: it holds files weir did not make\n`);
  return 0;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** --dns-service and --dns-resolvers as the engine takes them. */
export function parseResolverFlags(service: string | undefined, resolvers: string | undefined): ResolverConfig {
  let svc = DEFAULT_RESOLVERS.service;
  if (service !== undefined) {
    if (service === 'none') svc = null;
    else {
      const [ns = '', name = '', ...rest] = service.split('/');
      if (rest.length > 0 || !DNS_LABEL.test(ns) || !DNS_LABEL.test(name)) {
        throw new UsageError(`--dns-service must be NAMESPACE/NAME (e.g. kube-system/kube-dns) or none, got ${JSON.stringify(service)}`);
      }
      svc = `${ns}/${name}`;
    }
  }
  const addresses: string[] = [];
  for (const a of (resolvers ?? '').split(',').map((x) => x.trim()).filter((x) => x !== '')) {
    if (isIP(a) === 0) throw new UsageError(`--dns-resolvers takes IP addresses separated by commas (no ports, no CIDRs), got ${JSON.stringify(a)}`);
    if (!addresses.includes(a)) addresses.push(a);
  }
  return { service: svc, addresses };
}

function positiveInt(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`--${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

export const agentCommand: Command = {
  summary: 'Run the weir node agent: compile egress policy for the pods on this node and enforce it in the kernel.',
  usage: 'weir agent [--kubeconfig FILE | --manifests DIR] [options]',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      manifests: { type: 'string' },
      kubeconfig: { type: 'string' },
      'pod-scope': { type: 'string', default: 'cluster' },
      'api-socket': { type: 'string', default: DEFAULT_API_SOCKET },
      'node-name': { type: 'string' },
      'cgroup-root': { type: 'string' },
      bpffs: { type: 'string', default: '/sys/fs/bpf' },
      'pin-dir': { type: 'string' },
      'metrics-addr': { type: 'string', default: '0.0.0.0:9464' },
      'audit-log': { type: 'string' },
      'audit-max-bytes': { type: 'string' },
      'audit-max-files': { type: 'string' },
      'audit-signing-key': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      'event-interval': { type: 'string' },
      'max-pods': { type: 'string' },
      'max-trie-nodes': { type: 'string' },
      'max-trie-tails': { type: 'string' },
      'max-port-classes': { type: 'string' },
      'max-conntrack': { type: 'string' },
      'max-fqdn-keys': { type: 'string' },
      'max-fqdn-learned': { type: 'string' },
      'max-dns-queries': { type: 'string' },
      'dns-service': { type: 'string' },
      'dns-resolvers': { type: 'string' },
      cleanup: { type: 'boolean', default: false },
      // Hidden: load the BPF objects from another directory (upgrade tests).
      'objects-dir': { type: 'string' },
    });
    if (values.cleanup) return runCleanup(values['pin-dir'] ?? join(values.bpffs ?? '/sys/fs/bpf', 'weir'));
    const auditOnly = (['audit-max-bytes', 'audit-max-files', 'audit-signing-key'] as const).filter((k) => values[k] !== undefined);
    if (values['audit-log'] === undefined && auditOnly.length > 0) throw new UsageError(`--${auditOnly[0]} needs --audit-log FILE`);
    if (values['audit-signing-key'] !== undefined && !existsSync(values['audit-signing-key'])) {
      throw new UsageError(`--audit-signing-key ${values['audit-signing-key']}: no such file`);
    }
    const manifests = values.manifests;
    if (manifests !== undefined && values.kubeconfig !== undefined) {
      throw new UsageError('--manifests and --kubeconfig are two different sources: give one');
    }
    if (manifests !== undefined && (!existsSync(manifests) || !statSync(manifests).isDirectory())) {
      throw new UsageError(`--manifests ${manifests}: not a directory`);
    }
    if (values.kubeconfig !== undefined && !existsSync(values.kubeconfig)) {
      throw new UsageError(`--kubeconfig ${values.kubeconfig}: no such file`);
    }
    const podScope = values['pod-scope'];
    if (podScope !== 'cluster' && podScope !== 'node') throw new UsageError(`--pod-scope must be cluster or node, got ${JSON.stringify(podScope)}`);
    const nodeName = values['node-name'] ?? (process.env.NODE_NAME || null);
    if (manifests === undefined && !nodeName) {
      throw new UsageError('reading from the Kubernetes API needs the node name: pass --node-name or set NODE_NAME (from the downward API: spec.nodeName)');
    }
    const metricsAddr = values['metrics-addr'] === 'off' ? null : (values['metrics-addr'] ?? null);
    if (metricsAddr) {
      try {
        parseHostPort(metricsAddr);
      } catch (err) {
        throw new UsageError(`--metrics-addr: ${(err as Error).message}`);
      }
    }
    const logger = createLogger(values['log-level'] ?? 'info');
    const capacities: Partial<Capacities> = {};
    const pods = positiveInt('max-pods', values['max-pods']);
    if (pods) {
      capacities.pods = pods;
      capacities.endpoints = pods;
    }
    const nodes = positiveInt('max-trie-nodes', values['max-trie-nodes']);
    if (nodes) capacities.nodes = nodes;
    const tails = positiveInt('max-trie-tails', values['max-trie-tails']);
    if (tails) capacities.tails = tails;
    const classes = positiveInt('max-port-classes', values['max-port-classes']);
    if (classes) capacities.classes = classes;
    const conntrack = positiveInt('max-conntrack', values['max-conntrack']);
    if (conntrack) capacities.conntrack = conntrack;
    const fqdnKeys = positiveInt('max-fqdn-keys', values['max-fqdn-keys']);
    if (fqdnKeys) capacities.fqdnKeys = fqdnKeys;
    const fqdnLearned = positiveInt('max-fqdn-learned', values['max-fqdn-learned']);
    if (fqdnLearned) capacities.fqdnLearned = fqdnLearned;
    const dnsQueries = positiveInt('max-dns-queries', values['max-dns-queries']);
    if (dnsQueries) capacities.dnsQueries = dnsQueries;
    const dnsResolvers = parseResolverFlags(values['dns-service'], values['dns-resolvers']);
    const apiSocket = values['api-socket'] === 'off' ? null : (values['api-socket'] ?? DEFAULT_API_SOCKET);
    const opts: AgentOptions = {
      ...(manifests !== undefined
        ? { manifests }
        : { kubernetes: { podScope, ...(values.kubeconfig !== undefined ? { kubeconfig: values.kubeconfig } : {}) } }),
      nodeName,
      apiSocket,
      cgroupRoot: values['cgroup-root'] ?? defaultCgroupRoot(),
      bpffs: values.bpffs ?? '/sys/fs/bpf',
      metricsAddr,
      capacities,
      dnsResolvers,
    };
    if (values['pin-dir']) opts.pinDir = values['pin-dir'];
    if (values['objects-dir']) opts.objectsDir = values['objects-dir'];
    if (values['audit-log'] !== undefined) {
      const maxBytes = positiveInt('audit-max-bytes', values['audit-max-bytes']);
      const maxFiles = positiveInt('audit-max-files', values['audit-max-files']);
      opts.auditLog = {
        path: values['audit-log'],
        options: {
          ...(maxBytes !== undefined ? { maxBytes } : {}),
          ...(maxFiles !== undefined ? { maxFiles } : {}),
          ...(values['audit-signing-key'] !== undefined ? { signingKey: values['audit-signing-key'] } : {}),
        },
      };
    }
    const interval = positiveInt('event-interval', values['event-interval']);
    if (interval) opts.eventIntervalMs = interval;

    const agent = await Agent.start(opts, logger);
    await new Promise<void>((resolve) => {
      const stop = (sig: string): void => {
        logger.info({ signal: sig }, 'stopping');
        void agent.stop().then(resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    return 0;
  },
};
