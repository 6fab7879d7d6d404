// Runs the traffic probe (probe.ts) inside sandbox pods and hosts and reads
// its JSON lines back. Used by the end-to-end test helpers and by the demo.

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Sandbox } from './sandbox.js';

/** A pod as "namespace/name" or as an object. */
export type PodRef = string | { namespace: string; name: string };

/** Where a probe runs: in a pod (and one of its containers' cgroups) or in a host. */
export type ProbeOrigin = { pod: PodRef; container?: string } | { host: string };

export interface ProbeEvent {
  event: string;
  [key: string]: unknown;
}

export interface ProbeResult {
  mode: string;
  target: string;
  ok: boolean;
  /** errno name (EPERM, ECONNREFUSED, ETIMEDOUT, ...) or null when ok. */
  code: string | null;
  ms: number;
  /** The whole JSON line (echo, sent, local, remote, rtt, detail, ...). */
  raw: Record<string, unknown>;
}

export function parsePodRef(ref: PodRef): { namespace: string; name: string } {
  if (typeof ref !== 'string') return ref;
  const [namespace, name, extra] = ref.split('/');
  if (!namespace || !name || extra !== undefined) throw new TypeError(`pod ref ${JSON.stringify(ref)}: want "namespace/name"`);
  return { namespace, name };
}

/** probe.ts beside this module when running from source, probe.js when running from dist/. */
export function probeScriptPath(): string {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return fileURLToPath(new URL(`./probe${ext}`, import.meta.url));
}

export function probeCommand(args: readonly string[]): string[] {
  return [process.execPath, probeScriptPath(), ...args];
}

export function spawnProbe(sandbox: Sandbox, origin: ProbeOrigin, args: readonly string[]): ChildProcess {
  const argv = probeCommand(args);
  if ('host' in origin) return sandbox.spawnInHost(origin.host, argv);
  const { namespace, name } = parsePodRef(origin.pod);
  return sandbox.spawnInPod(namespace, name, argv, origin.container !== undefined ? { container: origin.container } : {});
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseLine(line: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(line);
    return isRecord(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

function toResult(raw: Record<string, unknown>): ProbeResult {
  const { mode, target, ok, code, ms } = raw;
  if (typeof mode !== 'string' || typeof ok !== 'boolean' || typeof ms !== 'number') {
    throw new Error(`probe printed an unexpected result: ${JSON.stringify(raw)}`);
  }
  return {
    mode,
    target: typeof target === 'string' ? target : '',
    ok,
    code: typeof code === 'string' ? code : null,
    ms,
    raw,
  };
}

/** Runs a one-shot probe mode and returns its result line. */
export function runProbe(
  sandbox: Sandbox,
  origin: ProbeOrigin,
  args: readonly string[],
  opts: { timeoutMs?: number } = {},
): Promise<ProbeResult> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const child = spawnProbe(sandbox, origin, args);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`probe ${args.join(' ')} did not finish in ${timeoutMs} ms`));
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (status, signal) => {
      clearTimeout(timer);
      const last = out.trim().split('\n').filter(Boolean).at(-1);
      const raw = last === undefined ? undefined : parseLine(last);
      if (raw === undefined) {
        reject(new Error(`probe ${args.join(' ')} exited ${status ?? signal} without a result: ${err.trim() || out.trim()}`));
        return;
      }
      try {
        resolve(toResult(raw));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** A long-running probe (serve, tcp-stream): its JSON events as they arrive. */
export class ProbeProcess {
  readonly child: ChildProcess;
  readonly events: ProbeEvent[] = [];
  /** Resolves with the exit status (null when killed by a signal). */
  readonly exited: Promise<number | null>;
  private stderrText = '';
  private waiters: { pred: (e: ProbeEvent) => boolean; resolve: (e: ProbeEvent) => void }[] = [];

  constructor(child: ChildProcess) {
    this.child = child;
    let buf = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const raw = parseLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (raw === undefined || typeof raw.event !== 'string') continue;
        const ev: ProbeEvent = { ...raw, event: raw.event };
        this.events.push(ev);
        this.waiters = this.waiters.filter((w) => {
          if (!w.pred(ev)) return true;
          w.resolve(ev);
          return false;
        });
      }
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderrText += d));
    this.exited = new Promise((resolve) => {
      child.once('error', () => resolve(null));
      child.once('close', (status) => resolve(status));
    });
  }

  get stderr(): string {
    return this.stderrText;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The first event (already seen or future) matching pred. */
  waitFor(pred: (e: ProbeEvent) => boolean, timeoutMs = 5000): Promise<ProbeEvent> {
    const seen = this.events.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        pred,
        resolve: (e: ProbeEvent) => {
          clearTimeout(timer);
          resolve(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no matching probe event in ${timeoutMs} ms; events: ${JSON.stringify(this.events.slice(-5))} ${this.stderrText.trim()}`));
      }, timeoutMs);
      this.waiters.push(waiter);
      void this.exited.then(() => {
        if (!this.waiters.includes(waiter)) return;
        this.waiters = this.waiters.filter((w) => w !== waiter);
        clearTimeout(timer);
        reject(new Error(`probe exited before a matching event; events: ${JSON.stringify(this.events.slice(-5))} ${this.stderrText.trim()}`));
      });
    });
  }

  /** SIGTERM (the probe prints its summary), SIGKILL if it lingers. */
  async stop(graceMs = 2000): Promise<number | null> {
    if (!this.running) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const status = await this.exited;
    clearTimeout(timer);
    return status;
  }
}

export interface ServerPorts {
  tcp?: readonly number[];
  udp?: readonly number[];
}

/** Starts echo servers and resolves once they listen on IPv4 and IPv6. */
export async function startProbeServer(
  sandbox: Sandbox,
  origin: ProbeOrigin,
  ports: ServerPorts,
  opts: { readyTimeoutMs?: number } = {},
): Promise<ProbeProcess> {
  const args = ['serve', ...(ports.tcp ?? []).flatMap((p) => ['--tcp', String(p)]), ...(ports.udp ?? []).flatMap((p) => ['--udp', String(p)])];
  const proc = new ProbeProcess(spawnProbe(sandbox, origin, args));
  try {
    const ev = await proc.waitFor((e) => e.event === 'listening' || e.event === 'error', opts.readyTimeoutMs ?? 10_000);
    if (ev.event === 'error') throw new Error(`probe server failed: ${JSON.stringify(ev)}`);
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return proc;
}

/** Opens a long-lived TCP connection that sends a line every interval; resolves once connected. */
export async function startTcpStream(
  sandbox: Sandbox,
  origin: ProbeOrigin,
  address: string,
  port: number,
  opts: { intervalMs?: number; echoTimeoutMs?: number; count?: number } = {},
): Promise<ProbeProcess> {
  const args = ['tcp-stream', address, String(port), '--interval', String(opts.intervalMs ?? 100)];
  if (opts.echoTimeoutMs !== undefined) args.push('--echo-timeout', String(opts.echoTimeoutMs));
  if (opts.count !== undefined) args.push('--count', String(opts.count));
  const proc = new ProbeProcess(spawnProbe(sandbox, origin, args));
  const ev = await proc.waitFor((e) => e.event === 'connected' || e.event === 'error', 10_000);
  if (ev.event === 'error') {
    await proc.stop();
    throw new Error(`tcp-stream to ${address}:${port} failed: ${JSON.stringify(ev)}`);
  }
  return proc;
}

/** One request to a long-running prober (probe.ts `prober` mode). */
export interface ProberRequest {
  proto: 'tcp' | 'udp' | 'sctp';
  /** An IP literal: the prober does not resolve names. */
  host: string;
  port: number;
  /** The probe's own deadline (default: the prober's, 1000 ms). */
  timeoutMs?: number;
  /** UDP only: connect() then send() (connect hooks) instead of sendto() (sendmsg hooks). */
  connect?: boolean;
  /** Bind the probe's socket to this source port (default: an ephemeral port). */
  localPort?: number;
}

/**
 * A long-running prober in a pod or host: one process answers any number of
 * probes, run concurrently inside it, so a matrix of hundreds of probes costs
 * milliseconds instead of a process start per probe. Whoever starts it
 * closes it (close(): end of input, then SIGKILL if it lingers); the sandbox
 * kills it too when it is destroyed.
 */
export class Prober {
  readonly child: ChildProcess;
  readonly origin: ProbeOrigin;
  private readonly pending = new Map<string, { resolve: (r: ProbeResult) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly exited: Promise<number | null>;
  private readyWaiter: { resolve: () => void; reject: (e: Error) => void } | undefined;
  private nextId = 1;
  private stderrText = '';
  private closed = false;

  private constructor(child: ChildProcess, origin: ProbeOrigin) {
    this.child = child;
    this.origin = origin;
    let buf = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const raw = parseLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (raw !== undefined) this.onLine(raw);
      }
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderrText = (this.stderrText + d).slice(-4000)));
    // A prober that dies mid-write must not crash the test process with EPIPE.
    child.stdin?.on('error', () => {});
    this.exited = new Promise((resolve) => {
      child.once('error', () => resolve(null));
      child.once('close', (status) => resolve(status));
    });
    void this.exited.then((status) => {
      const err = new Error(`prober ${describeOrigin(origin)} exited (${status ?? 'signal'}) ${this.stderrText.trim()}`);
      this.readyWaiter?.reject(err);
      for (const [id, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject(err);
        this.pending.delete(id);
      }
    });
  }

  /** Starts a prober and resolves once it is ready to take requests. */
  static async start(sandbox: Sandbox, origin: ProbeOrigin, opts: { timeoutMs?: number; readyTimeoutMs?: number } = {}): Promise<Prober> {
    const args = ['prober', ...(opts.timeoutMs !== undefined ? ['--timeout', String(opts.timeoutMs)] : [])];
    const p = new Prober(spawnProbe(sandbox, origin, args), origin);
    const readyMs = opts.readyTimeoutMs ?? 10_000;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`prober ${describeOrigin(origin)} not ready in ${readyMs} ms`)), readyMs);
        p.readyWaiter = {
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
      });
    } catch (e) {
      await p.close();
      throw e;
    } finally {
      p.readyWaiter = undefined;
    }
    return p;
  }

  get stderr(): string {
    return this.stderrText;
  }

  /** One probe. Rejects only if the prober itself fails (exits, or stays silent well past the probe's deadline). */
  probe(req: ProberRequest): Promise<ProbeResult> {
    if (this.closed) return Promise.reject(new Error(`prober ${describeOrigin(this.origin)} is closed`));
    const id = String(this.nextId++);
    const line = JSON.stringify({
      id,
      proto: req.proto,
      host: req.host,
      port: req.port,
      ...(req.timeoutMs !== undefined ? { timeout: req.timeoutMs } : {}),
      ...(req.connect ? { connect: true } : {}),
      ...(req.localPort !== undefined ? { localPort: req.localPort } : {}),
    });
    return new Promise((resolve, reject) => {
      const guardMs = (req.timeoutMs ?? 1000) + 10_000;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`prober ${describeOrigin(this.origin)}: no answer to ${line} in ${guardMs} ms`));
      }, guardMs);
      this.pending.set(id, { resolve, reject, timer });
      this.child.stdin?.write(`${line}\n`);
    });
  }

  /** Ends the prober's input (it exits once its probes have answered); SIGKILL after graceMs. */
  async close(graceMs = 3000): Promise<void> {
    this.closed = true;
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.stdin?.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  private onLine(raw: Record<string, unknown>): void {
    if (raw.event === 'ready') {
      this.readyWaiter?.resolve();
      return;
    }
    if (raw.event !== 'result') return;
    const id = typeof raw.id === 'string' ? raw.id : '';
    const p = this.pending.get(id);
    if (p === undefined) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    try {
      p.resolve(toResult(raw));
    } catch (e) {
      p.reject(e instanceof Error ? e : new Error(String(e)));
    }
  }
}

function describeOrigin(origin: ProbeOrigin): string {
  if ('host' in origin) return `host ${origin.host}`;
  const { namespace, name } = parsePodRef(origin.pod);
  return `pod ${namespace}/${name}`;
}

/** One request to a long-running resolver (probe.ts `resolver` mode); fields as resolve-connect's flags. */
export interface ResolveRequest {
  name: string;
  /** TCP port to connect to after resolving; none: resolve only. */
  port?: number;
  /** libc: getaddrinfo() with the pod's resolv.conf (default); udp: the probe's own stub query to `server`. */
  via?: 'libc' | 'udp';
  server?: string;
  qtype?: 'A' | 'AAAA';
  family?: 4 | 6;
  pick?: 'first' | 'all' | 'none';
  echo?: boolean;
  edns?: boolean;
  timeoutMs?: number;
  /** udp only: the query's DNS id and source port (default random). */
  queryId?: number;
  localPort?: number;
}

/**
 * A long-running resolver in a pod: resolve-then-connect trials one at a
 * time, in order, without a process start each, and the netns TCP counters
 * (`netstat()`: /proc/net/snmp and /proc/net/netstat of the pod's netns).
 * Whoever starts it closes it; the sandbox kills it when destroyed.
 */
export class ResolverProbe {
  readonly proc: ProbeProcess;
  private nextId = 1;
  private readonly pending = new Map<string, { resolve: (r: ProbeResult) => void; reject: (e: Error) => void }>();

  private constructor(proc: ProbeProcess) {
    this.proc = proc;
    let buf = '';
    proc.child.stdout?.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const raw = parseLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        if (raw?.event !== 'result') continue;
        const p = this.pending.get(typeof raw.id === 'string' ? raw.id : '');
        if (p === undefined) continue;
        this.pending.delete(raw.id as string);
        try {
          p.resolve(toResult(raw));
        } catch (e) {
          p.reject(e instanceof Error ? e : new Error(String(e)));
        }
      }
    });
    proc.child.stdin?.on('error', () => {});
    void proc.exited.then((status) => {
      for (const p of this.pending.values()) p.reject(new Error(`resolver probe exited (${status ?? 'signal'}) ${proc.stderr.trim()}`));
      this.pending.clear();
    });
  }

  static async start(sandbox: Sandbox, origin: ProbeOrigin): Promise<ResolverProbe> {
    const proc = new ProbeProcess(spawnProbe(sandbox, origin, ['resolver']));
    try {
      await proc.waitFor((e) => e.event === 'ready', 10_000);
    } catch (e) {
      await proc.stop();
      throw e;
    }
    return new ResolverProbe(proc);
  }

  resolveConnect(req: ResolveRequest): Promise<ProbeResult> {
    const { timeoutMs, ...rest } = req;
    return this.send({ op: 'resolve-connect', ...rest, ...(timeoutMs !== undefined ? { timeout: timeoutMs } : {}) }, (timeoutMs ?? 2000) * 4 + 10_000);
  }

  /** The pod netns's TCP counters, e.g. TcpRetransSegs, TcpExtTCPSynRetrans. */
  async netstat(): Promise<Record<string, number>> {
    const r = await this.send({ op: 'netstat' }, 10_000);
    return r.raw.counters as Record<string, number>;
  }

  async close(): Promise<void> {
    this.proc.child.stdin?.end();
    await this.proc.stop();
  }

  private send(req: Record<string, unknown>, guardMs: number): Promise<ProbeResult> {
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`resolver probe: no answer to ${JSON.stringify(req)} in ${guardMs} ms`));
      }, guardMs);
      this.pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.proc.child.stdin?.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }
}
