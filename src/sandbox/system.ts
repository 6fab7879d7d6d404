// Thin wrappers around the host tools the sandbox drives (ip, sh) and the
// /proc and /run/netns views it reads. Build steps are async; teardown steps
// are synchronous on purpose, so that one code path serves destroy(), the
// process 'exit' hook and signal handlers (where the event loop is gone).

import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';

export const NETNS_DIR = '/run/netns';

export class CommandError extends Error {
  readonly command: string;
  readonly status: number | null;
  readonly stderr: string;
  constructor(command: string, status: number | null, stderr: string) {
    super(`${command} failed (exit ${status ?? 'signal'}): ${stderr.trim() || '(no output)'}`);
    this.name = 'CommandError';
    this.command = command;
    this.status = status;
    this.stderr = stderr;
  }
}

/** Runs a command to completion; rejects with its stderr on a non-zero exit. */
export function run(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', (e) => reject(e));
    child.on('close', (status) => {
      if (status === 0) resolve(out);
      else reject(new CommandError(`${cmd} ${args.join(' ')}`, status, err));
    });
    if (child.stdin) {
      // A command that fails early closes its stdin: its exit status tells why, not EPIPE.
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    }
  });
}

export function runSync(cmd: string, args: readonly string[]): { ok: boolean; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return { ok: r.status === 0, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Runs `ip` commands in one netns in a single process (`ip -n NS -batch -`). */
export function ipBatch(netns: string, lines: readonly string[]): Promise<string> {
  return run('ip', ['-n', netns, '-batch', '-'], lines.join('\n') + '\n');
}

/** Blocks the thread: teardown runs where awaiting is impossible (exit hooks). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export function listNetns(): string[] {
  try {
    return readdirSync(NETNS_DIR);
  } catch {
    return [];
  }
}

/** Processes whose network namespace is the named one (what `ip netns pids` does). */
export function netnsPids(names: readonly string[]): number[] {
  const inodes = new Set<string>();
  for (const n of names) {
    try {
      inodes.add(`net:[${statSync(`${NETNS_DIR}/${n}`).ino}]`);
    } catch {
      // already gone
    }
  }
  if (inodes.size === 0) return [];
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (inodes.has(readlinkSync(`/proc/${entry}/ns/net`))) pids.push(Number(entry));
    } catch {
      // exited meanwhile, or a kernel thread
    }
  }
  return pids;
}

export function deleteNetnsSync(name: string): void {
  const r = runSync('ip', ['netns', 'delete', name]);
  if (!r.ok && listNetns().includes(name)) throw new CommandError(`ip netns delete ${name}`, 1, r.stderr);
}

/** Start time of a process in clock ticks since boot, or undefined when it is gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The comm field may hold spaces and parentheses: fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19]; // field 22 overall
  } catch {
    return undefined;
  }
}

export function killPid(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (pid <= 1 || pid === process.pid) return;
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}
