import { existsSync } from 'node:fs';
import { pino } from 'pino';
import { ObjectStore } from '../model/store.js';
import { ManifestSource } from '../sources/manifests.js';
import { ExplainError, explain, formatExplanation } from '../policy/explain.js';
import { DEFAULT_API_SOCKET, queryLocalApi } from '../agent/local-api.js';
import type { ExplainResult } from '../policy/explain.js';
import { parse, UsageError, type Command } from './main.js';

function exitCode(r: ExplainResult): number {
  return r.verdict === 'allow' ? 0 : r.verdict === 'audit' ? 3 : 1;
}

async function explainFromAgent(socket: string, from: string, to: string, json: boolean): Promise<number> {
  const q = new URLSearchParams({ from, to });
  const { status, body } = await queryLocalApi(socket, `/v1/explain?${q.toString()}`);
  if (status === 400) throw new UsageError((body as { error?: string }).error ?? 'bad request');
  if (status !== 200) throw new Error(`the agent answered ${status}: ${(body as { error?: string }).error ?? JSON.stringify(body)}`);
  const { generation, explanation } = body as { generation: number; explanation: ExplainResult };
  if (json) process.stdout.write(`${JSON.stringify({ generation, ...explanation }, null, 2)}\n`);
  else process.stdout.write(`${formatExplanation(explanation)}(from the running agent, policy generation ${generation})\n`);
  return exitCode(explanation);
}

const help = `Options:
  --from NS/POD          the sending pod
  --to DEST              IP:PORT/PROTO, [IPv6]:PORT/PROTO, IP/ICMP, or NS/POD:PORT[/PROTO]
                         (PORT may be a container port name of that pod; PROTO defaults to TCP)
  --manifests DIR        read namespaces, pods and policies from manifests (offline)
  --api-socket PATH      ask the agent running on this node through its local API
                         (the default when --manifests is not given; root only).
                         Default: ${DEFAULT_API_SOCKET}
  --json                 print the explanation as JSON
  -h, --help             show this help

Prints the verdict weir gives (allow, drop or audit), why (deny rule, default deny,
allow rule, not isolated), the policies that select the pod and the rules that
match the destination. Exit status: 0 allow, 1 drop, 3 audit, 2 usage error.

Examples:
  weir sandbox up --manifests /tmp/weir-demo    # writes the sandbox's pods and the example policies
  weir explain --manifests /tmp/weir-demo --from ml-train/trainer --to 203.0.113.10:443/TCP
  weir explain --from ml-train/trainer --to ml-serving/model-server:http     # the live agent
`;

export const explainCommand: Command = {
  summary: 'Explain the verdict for one flow: the policies and rules that decide it.',
  usage: 'weir explain [--manifests DIR | --api-socket PATH] --from NS/POD --to DEST [--json]',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      from: { type: 'string' },
      to: { type: 'string' },
      manifests: { type: 'string' },
      'api-socket': { type: 'string' },
      json: { type: 'boolean', default: false },
    });
    if (!values.from || !values.to) throw new UsageError('--from and --to are required');
    if (values.manifests !== undefined && values['api-socket'] !== undefined) throw new UsageError('give --manifests or --api-socket, not both');
    if (values.manifests === undefined) return explainFromAgent(values['api-socket'] ?? DEFAULT_API_SOCKET, values.from, values.to, values.json ?? false);
    if (!existsSync(values.manifests)) throw new UsageError(`--manifests ${values.manifests}: no such directory`);
    const store = new ObjectStore();
    const errors: string[] = [];
    const src = new ManifestSource({ dir: values.manifests, store, logger: pino({ level: 'silent' }), onError: (e) => errors.push(e.message) });
    await src.start();
    await src.stop();
    for (const e of errors) process.stderr.write(`weir explain: warning: ${e}\n`);
    try {
      const r = explain(store, values.from, values.to);
      process.stdout.write(values.json ? `${JSON.stringify(r, null, 2)}\n` : formatExplanation(r));
      return exitCode(r);
    } catch (err) {
      if (err instanceof ExplainError) throw new UsageError(err.message);
      throw err;
    }
  },
};
