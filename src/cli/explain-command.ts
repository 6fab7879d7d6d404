import { existsSync } from 'node:fs';
import { pino } from 'pino';
import { ObjectStore } from '../model/store.js';
import { ManifestSource } from '../sources/manifests.js';
import { ExplainError, explain, formatExplanation } from '../policy/explain.js';
import { parse, UsageError, type Command } from './main.js';

const help = `Options:
  --from NS/POD          the sending pod
  --to DEST              IP:PORT/PROTO, [IPv6]:PORT/PROTO, IP/ICMP, or NS/POD:PORT[/PROTO]
                         (PORT may be a container port name of that pod; PROTO defaults to TCP)
  --manifests DIR        read namespaces, pods and policies from manifests (offline)
  --json                 print the explanation as JSON
  -h, --help             show this help

Prints the verdict weir gives (allow, drop or audit), why (deny rule, default deny,
allow rule, not isolated), the policies that select the pod and the rules that
match the destination. Exit status: 0 allow, 1 drop, 3 audit, 2 usage error.

Example:
  weir explain --manifests deploy/examples/sandbox --from ml-train/trainer --to 203.0.113.10:443/TCP
`;

export const explainCommand: Command = {
  summary: 'Explain the verdict for one flow: the policies and rules that decide it.',
  usage: 'weir explain --manifests DIR --from NS/POD --to DEST [--json]',
  help,
  async run(argv) {
    const { values } = parse(argv, {
      from: { type: 'string' },
      to: { type: 'string' },
      manifests: { type: 'string' },
      json: { type: 'boolean', default: false },
    });
    if (!values.from || !values.to) throw new UsageError('--from and --to are required');
    if (!values.manifests) throw new UsageError('--manifests DIR is required (explaining from the running agent is not in this build)');
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
      return r.verdict === 'allow' ? 0 : r.verdict === 'audit' ? 3 : 1;
    } catch (err) {
      if (err instanceof ExplainError) throw new UsageError(err.message);
      throw err;
    }
  },
};
