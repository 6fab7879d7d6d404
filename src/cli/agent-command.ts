import { existsSync, statSync } from 'node:fs';
import { Agent, parseHostPort, type AgentOptions } from '../agent/agent.js';
import { defaultCgroupRoot } from '../datapath/cgroups.js';
import { DEFAULT_CAPACITIES, type Capacities } from '../datapath/datapath.js';
import { createLogger, LOG_LEVELS } from '../report/logger.js';
import { parse, UsageError, type Command } from './main.js';

const help = `Options:
  --manifests DIR        Read Namespaces, Pods and policies from Kubernetes manifests in
                         DIR (.yaml, .yml, .json; several documents per file; dotfiles
                         and editor temporaries ignored). DIR is watched: edits apply
                         without a restart. A malformed file or object is reported with
                         its file, object and field, and the last good version of what
                         it held keeps enforcing.
  --kubeconfig FILE      Read from the Kubernetes API instead (not available yet in this
                         build: use --manifests).
  --node-name NAME       Enforce for pods whose spec.nodeName is NAME. Default: the
                         NODE_NAME environment variable, else every pod in the model.
  --cgroup-root DIR      The cgroup v2 directory holding the kubelet's kubepods (cgroupfs
                         driver) or kubepods.slice (systemd driver) tree. Default: the
                         cgroup v2 mount point from /proc/self/mountinfo.
  --bpffs DIR            Mount point of the BPF filesystem (mounted there if it is not).
                         weir pins its maps and links under DIR/weir. Default: /sys/fs/bpf
  --pin-dir DIR          Pin directory (default: BPFFS/weir).
  --metrics-addr H:P     Serve /metrics, /healthz and /readyz on HOST:PORT.
                         Default: 0.0.0.0:9464. Use "off" to disable.
  --audit-log FILE       Append the tamper-evident audit log to FILE (not available yet
                         in this build).
  --log-level LEVEL      ${LOG_LEVELS.join(', ')}. Default: info
  --event-interval MS    At most one violation event per flow per MS milliseconds;
                         counters stay exact. Default: 1000
  --max-pods N           Capacity of the pod map (default ${DEFAULT_CAPACITIES.pods}).
  --max-trie-nodes N     Capacity of the destination trie, 1 KiB per node
                         (default ${DEFAULT_CAPACITIES.nodes}).
  --max-port-classes N   Capacity of the port class table (default ${DEFAULT_CAPACITIES.classes}).
  -h, --help             Show this help.

The agent needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN. Programs and maps stay
pinned when the agent stops, so enforcement continues across restarts and upgrades.
Signals: SIGTERM and SIGINT stop the agent (enforcement continues).
`;

function positiveInt(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`--${name} must be a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

export const agentCommand: Command = {
  summary: 'Run the weir node agent: compile egress policy for the pods on this node and enforce it in the kernel.',
  usage: 'weir agent --manifests DIR [options]',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      manifests: { type: 'string' },
      kubeconfig: { type: 'string' },
      'node-name': { type: 'string' },
      'cgroup-root': { type: 'string' },
      bpffs: { type: 'string', default: '/sys/fs/bpf' },
      'pin-dir': { type: 'string' },
      'metrics-addr': { type: 'string', default: '0.0.0.0:9464' },
      'audit-log': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      'event-interval': { type: 'string' },
      'max-pods': { type: 'string' },
      'max-trie-nodes': { type: 'string' },
      'max-port-classes': { type: 'string' },
    });
    if (values.kubeconfig !== undefined) {
      throw new UsageError('--kubeconfig: the Kubernetes API source is not in this build yet; use --manifests DIR');
    }
    if (values['audit-log'] !== undefined) {
      throw new UsageError('--audit-log is not in this build yet');
    }
    const manifests = values.manifests;
    if (!manifests) throw new UsageError('--manifests DIR is required');
    if (!existsSync(manifests) || !statSync(manifests).isDirectory()) {
      throw new UsageError(`--manifests ${manifests}: not a directory`);
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
    const classes = positiveInt('max-port-classes', values['max-port-classes']);
    if (classes) capacities.classes = classes;
    const opts: AgentOptions = {
      manifests,
      nodeName: values['node-name'] ?? process.env.NODE_NAME ?? null,
      cgroupRoot: values['cgroup-root'] ?? defaultCgroupRoot(),
      bpffs: values.bpffs ?? '/sys/fs/bpf',
      metricsAddr,
      capacities,
    };
    if (values['pin-dir']) opts.pinDir = values['pin-dir'];
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
