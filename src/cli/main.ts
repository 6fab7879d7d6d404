// The `weir` command line.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { VERSION } from '../agent/agent.js';

interface Command {
  summary: string;
  usage: string;
  help: string;
  run(argv: string[]): Promise<number>;
}

export class UsageError extends Error {}

const commands: Record<string, () => Promise<Command>> = {
  agent: async () => (await import('./agent-command.js')).agentCommand,
  sandbox: async () => (await import('./sandbox-command.js')).sandboxCommand,
  explain: async () => (await import('./explain-command.js')).explainCommand,
  audit: async () => (await import('./audit-command.js')).auditCommand,
  status: async () => (await import('./status-command.js')).statusCommand,
  observe: async () => (await import('./observe-command.js')).observeCommand,
  preflight: async () => (await import('./preflight-command.js')).preflightCommand,
};

function mainHelp(): string {
  return `weir ${VERSION}: pod egress governance in the kernel (eBPF on cgroups)

Usage: weir <command> [options]

Commands:
  agent      run the node agent (loads and attaches the BPF datapath)
  sandbox    build a simulated node on this machine and run the agent on it
  explain    show the verdict for one flow and the policies and rules behind it
  status     show the state of the agent on this node
  observe    stream the agent's verdicts live, with filters
  audit      verify the tamper-evident audit log (weir audit verify FILE)
  preflight  check whether this node meets weir's requirements (kernel, privileges, cgroup v2...)

Run 'weir <command> --help' for the options of a command.
`;
}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: T, allowPositionals = false) {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(mainHelp());
    return name ? 0 : 2;
  }
  if (name === '--version' || name === 'version') {
    process.stdout.write(`weir ${VERSION}\n`);
    return 0;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(`weir: unknown command ${JSON.stringify(name)}\n\n${mainHelp()}`);
    return 2;
  }
  const cmd = await load();
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`Usage: ${cmd.usage}\n\n${cmd.summary}\n\n${cmd.help}`);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`weir ${name}: ${err.message}\nRun 'weir ${name} --help' for usage.\n`);
      return 2;
    }
    throw err;
  }
}

export type { Command };

