// `weir agent` as a process of its own (dist/cli/weir.js, as the DaemonSet
// runs it), for the soak and the end-to-end tests: start it with its
// metrics listener on a free port, wait until /readyz answers 200, stop it.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The CLI as built (the same path from src/ under vitest and from dist/). */
export const WEIR_CLI = join(resolve(dirname(fileURLToPath(import.meta.url)), '../..'), 'dist', 'cli', 'weir.js');

export interface AgentProcess {
  child: ChildProcess;
  pid: number;
  /** The metrics listener's port (127.0.0.1): /metrics, /readyz. */
  port: number;
  /** What it wrote, as it came (stdout only when not sent to opts.stdout). */
  out: string[];
  err: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** A TCP port free on 127.0.0.1 a moment ago. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const a = s.address();
  await new Promise<void>((r) => s.close(() => r()));
  if (typeof a !== 'object' || a === null) throw new Error('no port');
  return a.port;
}

/**
 * Starts `node WEIR_CLI agent ARGS --metrics-addr 127.0.0.1:PORT` (ARGS
 * must not set --metrics-addr). Its stdout is kept in `out`, or piped to
 * opts.stdout (a log file); stderr is kept in `err`.
 */
export async function spawnAgent(args: readonly string[], opts: { stdout?: NodeJS.WritableStream } = {}): Promise<AgentProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, [WEIR_CLI, 'agent', ...args, '--metrics-addr', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: string[] = [];
  const err: string[] = [];
  if (opts.stdout) child.stdout?.pipe(opts.stdout);
  else child.stdout?.setEncoding('utf8').on('data', (d: string) => out.push(d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => err.push(d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('close', (code, signal) => res({ code, signal })));
  if (child.pid === undefined) throw new Error('the agent did not start');
  return { child, pid: child.pid, port, out, err, exited };
}

export const running = (a: AgentProcess): boolean => a.child.exitCode === null && a.child.signalCode === null;

/** The status /readyz answers, 0 while nothing listens. */
export async function readyz(a: { port: number }): Promise<number> {
  try {
    return (await fetch(`http://127.0.0.1:${a.port}/readyz`, { signal: AbortSignal.timeout(2000) })).status;
  } catch {
    return 0; // not listening yet
  }
}

/** Resolves with the time it took once /readyz answers 200; rejects if the agent exits first, or after `ms`. */
export async function waitReady(a: AgentProcess, ms = 30_000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (!running(a)) throw new Error(`the agent exited: ${a.err.join('')}\n${a.out.join('').slice(-3000)}`);
    if ((await readyz(a)) === 200) return Date.now() - t0;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for agent ${a.pid} ready`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Sends `signal` (SIGKILL after graceMs) and resolves once the agent has exited. */
export async function stopAgent(a: AgentProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 15_000): Promise<void> {
  if (!running(a)) return;
  a.child.kill(signal);
  const timer = setTimeout(() => a.child.kill('SIGKILL'), graceMs);
  await a.exited;
  clearTimeout(timer);
}
