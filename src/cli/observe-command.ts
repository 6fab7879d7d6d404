import { request } from 'node:http';
import { createInterface } from 'node:readline';
import type { Violation } from '../agent/agent.js';
import { DEFAULT_API_SOCKET } from '../agent/local-api.js';
import { parse, UsageError, type Command } from './main.js';

const help = `Options:
  --namespace NS         only pods of this namespace
  --pod [NS/]NAME        only this pod
  --domain DOMAIN        only this governance domain (weir.dev/domain)
  --verdict VERDICT      drop or audit
  --policy POLICY        only verdicts decided by this policy (Kind/ns/name, or its name)
  --json                 one JSON object per line instead of the table
  --api-socket PATH      the agent's local API (default ${DEFAULT_API_SOCKET}; root only)
  -h, --help             show this help

Streams the verdicts of the agent on this node as they happen, until Ctrl-C:
every denied flow (drop) and every flow an Audit-mode policy would deny
(audit), with the pod, destination, policy, rule and process. Allowed flows
are counted in the metrics, not streamed. The kernel reports one event per
flow per second (COUNT is how many it stands for). A reader too slow to
keep up misses events and is told how many.
`;

const COLUMNS = ['TIME', 'VERDICT', 'POD', 'DESTINATION', 'POLICY', 'RULE', 'COMMAND', 'COUNT'];

export function formatVerdictRow(v: Violation): string {
  const dest = `${v.destination.includes(':') ? `[${v.destination}]` : v.destination}${v.port !== null ? `:${v.port}` : ''}/${v.protocol}`;
  return [
    v.time.slice(11, 23),
    v.verdict.toUpperCase().padEnd(5),
    `${v.namespace}/${v.pod}`.padEnd(30),
    dest.padEnd(28),
    (v.policy || '-').padEnd(36),
    // The rule names its policy first; the POLICY column already says it.
    (v.rule.startsWith(`${v.policy} `) ? v.rule.slice(v.policy.length + 1) : v.rule || v.reason).padEnd(16),
    `${v.command}(${v.pid})`.padEnd(20),
    String(v.count),
  ].join(' ');
}

export const observeCommand: Command = {
  summary: 'Stream the verdicts of the agent on this node live, with filters.',
  usage: 'weir observe [--namespace NS] [--pod [NS/]NAME] [--domain D] [--verdict drop|audit] [--policy P] [--json]',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      namespace: { type: 'string' },
      pod: { type: 'string' },
      domain: { type: 'string' },
      verdict: { type: 'string' },
      policy: { type: 'string' },
      json: { type: 'boolean', default: false },
      'api-socket': { type: 'string', default: DEFAULT_API_SOCKET },
    });
    if (values.verdict !== undefined && values.verdict !== 'drop' && values.verdict !== 'audit') throw new UsageError('--verdict must be drop or audit');
    const q = new URLSearchParams();
    for (const k of ['namespace', 'pod', 'domain', 'verdict', 'policy'] as const) if (values[k] !== undefined) q.set(k, values[k]);
    const socket = values['api-socket'] ?? DEFAULT_API_SOCKET;
    let stopping = false;
    return new Promise<number>((resolve) => {
      const req = request({ socketPath: socket, path: `/v1/observe?${q.toString()}`, method: 'GET' }, (res) => {
        if (res.statusCode !== 200) {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => {
            process.stderr.write(`weir observe: the agent answered ${res.statusCode ?? 0}: ${body.trim()}\n`);
            resolve(res.statusCode === 400 ? 2 : 1);
          });
          return;
        }
        res.on('error', (err) => {
          if (stopping) return;
          process.stderr.write(`weir observe: the stream broke: ${err.message}\n`);
          resolve(1);
        });
        const lines = createInterface({ input: res });
        lines.on('error', () => undefined); // the same error reaches res's handler above
        let header = false;
        lines.on('line', (line) => {
          const m = JSON.parse(line) as { type: string; count?: number } & Violation;
          if (values.json) {
            if (m.type !== 'hello') process.stdout.write(`${line}\n`);
            return;
          }
          if (m.type === 'hello') {
            process.stderr.write(`observing the agent on ${socket} (Ctrl-C to stop)\n`);
            return;
          }
          if (!header) {
            process.stdout.write(`${COLUMNS.join(' ')}\n`);
            header = true;
          }
          if (m.type === 'missed') process.stdout.write(`-- ${m.count ?? 0} verdicts missed (reader too slow) --\n`);
          else process.stdout.write(`${formatVerdictRow(m)}\n`);
        });
        res.on('end', () => {
          if (stopping) return;
          process.stderr.write('weir observe: the agent closed the stream\n');
          resolve(0);
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        const why = err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? `no agent is listening on ${socket}` : err.code === 'EACCES' ? `permission denied on ${socket} (root only)` : err.message;
        process.stderr.write(`weir observe: ${why}\n`);
        resolve(1);
      });
      const stop = (): void => {
        stopping = true;
        req.destroy();
        resolve(0);
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      req.end();
    });
  },
};
