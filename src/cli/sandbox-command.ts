// `weir sandbox up|down|demo`: a simulated node built from this machine's
// kernel (network namespaces, veths, kubelet-style cgroups), with the agent
// running on it. Nothing leaves the namespaces the sandbox creates.
import { copyFileSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { Agent, type Violation } from '../agent/agent.js';
import { defaultDemoSpec, demoPoliciesDir, sandboxDown, sandboxUp } from '../sandbox/up.js';
import { runProbe } from '../sandbox/probe-runner.js';
import type { Sandbox } from '../sandbox/sandbox.js';
import { createLogger } from '../report/logger.js';
import { parse, UsageError, type Command } from './main.js';

const help = `Subcommands:
  demo [--rounds N] [--interval MS]
        Build the demo node (a trainer in train-data, a model server in prod-model,
        a gateway in external-api; in-cluster services; "internet" hosts on
        documentation addresses), apply the example policies in
        deploy/examples/sandbox/, run the agent on it, drive traffic and print each
        verdict live. Runs until Ctrl-C (or N rounds), then removes everything.
  up [--manifests DIR]
        Build the demo node and keep it up until Ctrl-C. Writes its Namespace and
        Pod manifests and the example policies to DIR (default: a new temporary
        directory) and prints the 'weir agent' command that runs on it.
  down [ID]
        Remove a sandbox (default: "demo") and anything a crashed run left behind.

Options:
  --log FILE      demo: write the agent's JSON log to FILE (default: a file in the
                  temporary directory, printed at start)
  -h, --help      Show this help.

Needs root: the sandbox creates network namespaces and cgroups.
`;

interface Probe {
  from: string; // ns/pod
  to: string; // host name
  port: number;
  proto: 'tcp' | 'udp';
  expect: 'allow' | 'deny';
}

const DEMO_PROBES: Probe[] = [
  { from: 'ml-train/trainer', to: 'feature-store', port: 8080, proto: 'tcp', expect: 'allow' },
  { from: 'ml-train/trainer', to: 'public-internet', port: 443, proto: 'tcp', expect: 'deny' },
  { from: 'ml-train/trainer', to: 'outside-storage', port: 443, proto: 'tcp', expect: 'deny' },
  { from: 'ml-serving/model-server', to: 'model-registry', port: 443, proto: 'tcp', expect: 'allow' },
  { from: 'ml-serving/model-server', to: 'log-collector', port: 514, proto: 'udp', expect: 'allow' },
  { from: 'ml-serving/model-server', to: 'outside-storage', port: 443, proto: 'tcp', expect: 'deny' },
  { from: 'ml-gateway/gateway', to: 'approved-model-api', port: 443, proto: 'tcp', expect: 'allow' },
  { from: 'ml-gateway/gateway', to: 'unapproved-model-api', port: 443, proto: 'tcp', expect: 'deny' },
];

const tty = process.stdout.isTTY;
const paint = (code: string, s: string): string => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const green = (s: string): string => paint('32', s);
const red = (s: string): string => paint('31', s);
const dim = (s: string): string => paint('2', s);

function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

function preparePolicies(dir: string): void {
  const src = demoPoliciesDir();
  for (const f of readdirSync(src)) if (f.endsWith('.yaml')) copyFileSync(join(src, f), join(dir, `policy-${f}`));
}

function waitForSignal(): Promise<string> {
  return new Promise((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
}

function describeViolation(v: Violation): string {
  const where = `${v.destination}${v.port !== null ? `:${v.port}` : ''}/${v.protocol}`;
  const who = `${v.namespace}/${v.pod}`;
  const by = v.policy ? ` by ${v.policy}` : '';
  const rule = v.rule ? ` [${v.rule}]` : '';
  return `${red(v.verdict.toUpperCase().padEnd(5))} ${who} -> ${where} ${v.reason}${by}${rule} (${v.command || '?'} pid ${v.pid}, hook ${v.hook}, x${v.count})`;
}

async function runRound(sb: Sandbox, round: number): Promise<{ ok: number; wrong: number }> {
  let ok = 0;
  let wrong = 0;
  out(dim(`-- round ${round}`));
  for (const p of DEMO_PROBES) {
    const addr = sb.address(p.to);
    const args = p.proto === 'tcp' ? ['tcp-connect', addr, String(p.port), '--echo', '--timeout', '1500'] : ['udp-send', addr, String(p.port), '--timeout', '1500'];
    const [namespace, name] = p.from.split('/') as [string, string];
    const r = await runProbe(sb, { pod: { namespace, name } }, args);
    const got = r.ok ? 'allow' : 'deny';
    const as = got === p.expect;
    if (as) ok++;
    else wrong++;
    const mark = as ? green('✔') : red('✘ UNEXPECTED');
    const res = r.ok ? green('reached') : red(`refused (${r.code ?? 'error'})`);
    out(`  ${mark} ${p.from.padEnd(24)} -> ${p.to.padEnd(21)} ${`${addr}:${p.port}/${p.proto.toUpperCase()}`.padEnd(22)} ${res} ${dim(`${r.ms} ms`)}`);
  }
  return { ok, wrong };
}

async function demo(argv: string[]): Promise<number> {
  const { values } = parse(argv, { rounds: { type: 'string' }, interval: { type: 'string' }, log: { type: 'string' } });
  const rounds = values.rounds !== undefined ? Number(values.rounds) : Infinity;
  const interval = values.interval !== undefined ? Number(values.interval) : 3000;
  if (!(rounds > 0) || !(interval >= 0)) throw new UsageError('--rounds must be a positive number and --interval a non-negative number');
  const work = mkdtempSync(join(tmpdir(), 'weir-demo-'));
  const manifests = join(work, 'manifests');
  const logFile = values.log ?? join(work, 'agent.log');
  const logger = pino({ level: 'info' }, pino.destination({ dest: logFile, sync: true }));

  out('weir demo: building the sandbox node (network namespaces, veths, kubelet-style cgroups)...');
  const up = await sandboxUp(defaultDemoSpec(), { manifestsDir: manifests, handleSignals: false, logger: silent(logger) });
  const sb = up.sandbox;
  let agent: Agent | null = null;
  let stopping = false;
  const stopped = waitForSignal().then((sig) => {
    stopping = true;
    return sig;
  });
  try {
    preparePolicies(manifests);
    out(`  node ${sb.nodeName}: pods ${sb.listPods().map((p) => `${p.namespace}/${p.name} (${p.ip})`).join(', ')}`);
    out(`  policies: ${readdirSync(manifests).filter((f) => f.startsWith('policy-')).join(', ')} (from deploy/examples/sandbox)`);
    out(`  agent log: ${logFile}`);
    const apiSocket = join(work, 'weir.sock');
    const auditLog = join(work, 'audit.log');
    agent = await Agent.start(
      {
        manifests,
        nodeName: sb.nodeName,
        cgroupRoot: sb.cgroupRoot,
        bpffs: '/sys/fs/bpf',
        pinDir: `/sys/fs/bpf/weir-sandbox-${sb.id}`,
        metricsAddr: '127.0.0.1:0',
        apiSocket,
        auditLog: { path: auditLog },
      },
      logger,
    );
    out(`  audit log: ${auditLog} (check it: weir audit verify ${auditLog})`);
    out(`  from another terminal: weir status --api-socket ${apiSocket}`);
    out(`                         weir observe --api-socket ${apiSocket}`);
    out(`                         weir explain --api-socket ${apiSocket} --from ml-train/trainer --to 203.0.113.10:443/TCP`);
    out(`weir demo: agent attached to ${agent.podsRoot.dir} (policy generation ${agent.datapath.writer.generation}); metrics on http://127.0.0.1:${agent.metricsPort()}/metrics`);
    out('weir demo: driving traffic; live verdicts from the kernel are marked DROP. Ctrl-C to stop.\n');
    agent.onViolation((v) => out(`    ${describeViolation(v)}`));
    let wrong = 0;
    for (let round = 1; round <= rounds && !stopping; round++) {
      wrong += (await runRound(sb, round)).wrong;
      // Let the ring buffer deliver this round's events before the next one.
      await Promise.race([new Promise((r) => setTimeout(r, interval)), stopped]);
    }
    out(wrong === 0 ? green('\nweir demo: every flow got the verdict its policy gives.') : red(`\nweir demo: ${wrong} flow(s) got an unexpected verdict`));
    return wrong === 0 ? 0 : 1;
  } finally {
    out('weir demo: cleaning up (detaching programs, removing pins, namespaces and cgroups)...');
    if (agent) {
      agent.datapath.uninstall();
      await agent.stop();
    }
    for (const s of up.servers.values()) await s.stop();
    await sb.destroy();
    rmSync(manifests, { recursive: true, force: true });
    out('weir demo: done.');
  }
}

function silent(logger: Logger): Logger {
  return logger.child({ component: 'sandbox' });
}

async function upCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, { manifests: { type: 'string' } });
  const dir = values.manifests ?? mkdtempSync(join(tmpdir(), 'weir-sandbox-'));
  const logger = createLogger('info');
  const up = await sandboxUp(defaultDemoSpec(), { manifestsDir: dir, handleSignals: false, logger: logger.child({ component: 'sandbox' }) });
  preparePolicies(dir);
  const sb = up.sandbox;
  out(`sandbox ${sb.id} is up. Manifests and example policies: ${dir}`);
  out(`Run the agent on it:\n  weir agent --manifests ${dir} --node-name ${sb.nodeName} --cgroup-root ${sb.cgroupRoot}`);
  out('Ctrl-C removes the sandbox.');
  await waitForSignal();
  for (const s of up.servers.values()) await s.stop();
  await sb.destroy();
  return 0;
}

export const sandboxCommand: Command = {
  summary: 'Build a simulated Kubernetes node on this machine and run weir on it.',
  usage: 'weir sandbox demo|up|down [options]',
  help,
  async run(argv) {
    const [sub, ...rest] = argv;
    switch (sub) {
      case 'demo':
        return demo(rest);
      case 'up':
        return upCommand(rest);
      case 'down': {
        const id = rest[0] ?? 'demo';
        const removed = await sandboxDown(id);
        out(removed ? `sandbox ${id} removed` : `no sandbox ${id} found; leftovers of crashed runs were cleaned`);
        return 0;
      }
      default:
        throw new UsageError(sub ? `unknown subcommand ${JSON.stringify(sub)}` : 'missing subcommand (demo, up or down)');
    }
  },
};
