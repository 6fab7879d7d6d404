// Event pipeline: the highest sustained rate of violation events the agent
// decodes, enriches, logs, audits and counts with zero loss, and what happens
// above it. A generator process loads weir's programs on the agent's pinned
// maps, moves into a pod cgroup and runs weir_egress with BPF_PROG_TEST_RUN
// (repeat 1) on packets to distinct destinations (198.18.0.0/15 × ports, never
// repeated, so kernel aggregation folds nothing), at a fixed rate per step.
// The agent runs in this process with the DaemonSet's configuration (info
// logging, audit log on), its log going to /dev/null through pino's default
// asynchronous destination (the agent writes stdout the same way). Each step
// compares what the generator offered, the kernel's events_sent /
// events_lost / events_aggregated, and the violations the agent delivered.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Session } from 'node:inspector/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { pino, type Logger } from 'pino';
import { Agent, type Violation } from '../agent/agent.js';
import { cgroupLevel, defaultCgroupRoot } from '../datapath/cgroups.js';
import { DEFAULT_CAPACITIES, Datapath, PROGRAMS, removePins } from '../datapath/datapath.js';
import { ensureBpffs, type BpfProgram } from '../native/index.js';

type ProgramSpecOf = (typeof PROGRAMS)[number];
import { createLogger, logEvent } from '../report/logger.js';
import { removeCgroupTree } from '../sandbox/cgroup.js';
import { NODE_NAME, clusterModel, sourceTree, writeModel } from './footprint.js';
import { testRunIfindex } from './test-run.js';

export interface EventStep {
  /** Offered rate asked of the generator (0: as fast as it can). */
  targetRate: number;
  /** Violations the generator produced (test runs that returned drop). */
  offered: number;
  offeredRate: number;
  windowMs: number;
  kernelSent: number;
  kernelLost: number;
  kernelAggregated: number;
  /** Violation events the agent decoded, enriched, logged, audited and counted. */
  received: number;
  userspaceDropped: number;
  /** After the generator stopped: time until the agent had processed every sent event. */
  drainMs: number;
  /** received / (window + drain). */
  deliveredRate: number;
  /** This process's CPU per delivered event (agent pipeline, ring buffer, GC, log writes), µs. */
  cpuUsPerEvent: number;
  zeroLoss: boolean;
  /** Zero loss and the backlog drained within DRAIN_OK_MS: the agent kept up. */
  sustained: boolean;
  /** offered = sent + lost + aggregated and sent = received + dropped. */
  exact: boolean;
}

export interface EventProfileStage {
  stage: string;
  usPerEvent: number;
  share: number;
}

export interface EventsResult {
  /** The commit measured (sourceTree()). */
  tree: string;
  config: string;
  /** 1-minute load average at the start and the end (the machine may be shared). */
  loadAvg: [number, number];
  maxSustainedRate: number;
  /** 1 / (CPU per event when the agent was saturated): the rate one core would sustain, whatever else runs on the machine. */
  cpuBoundRate: number;
  generatorMaxRate: number;
  steps: EventStep[];
  profile: { rate: number; events: number; stages: EventProfileStage[]; logBytesPerEvent: number; auditBytesPerEvent: number };
  /**
   * One violation log line alone, µs of CPU (lines logged 64 at a time, as a
   * ring-buffer batch is): the agent's logger (createLogger) as the agent
   * writes a violation (logEvent: the same bytes as log.warn), the agent's
   * logger through pino's log.warn, pino with the same options and the
   * redact paths the agent used before (`*.token`...), and pino with the
   * same options and no redaction at all.
   */
  logLine: { agentEventUs: number; agentUs: number; pinoRedactPathsUs: number; pinoPlainUs: number };
}

const DRAIN_OK_MS = 250;
const FRAME_DST = 14 + 16;
const FRAME_DPORT = 14 + 20 + 2;

function frame(src: number[]): Buffer {
  const b = Buffer.alloc(14 + 20 + 20);
  b.writeUInt16BE(0x0800, 12);
  b.writeUInt8(0x45, 14);
  b.writeUInt16BE(40, 16);
  b.writeUInt8(64, 22);
  b.writeUInt8(6, 23);
  Buffer.from(src).copy(b, 14 + 12);
  b.writeUInt16BE(40000, 34);
  b.writeUInt8(0x50, 34 + 12);
  b.writeUInt8(0x10, 34 + 13);
  return b;
}

interface GeneratorArgs {
  ringbufBytes: number;
  bpffs: string;
  pinDir: string;
  podLevel: number;
  procs: string;
  src: number[];
}

/**
 * The generator process: `node dist/bench/events.js generate JSON`. Reads
 * `{"rate":R,"ms":T}` lines on stdin, answers `{"sent":N,"ms":T,"bad":B}`.
 * Flow k: 198.18.0.0/15 host k mod 2^17, TCP port 1024 + ⌊k / 2^17⌋.
 */
async function generator(args: GeneratorArgs): Promise<void> {
  const dp = await Datapath.open({ bpffs: args.bpffs, pinDir: args.pinDir, podLevel: args.podLevel, capacities: { ringbufBytes: args.ringbufBytes }, logger: pino({ level: 'silent' }) });
  // The program handle itself (Datapath.testRun looks it up on every call),
  // and no output packet: half the CPU per run, so the generator outpaces
  // the agent by far.
  const spec = PROGRAMS.find((p) => p.program === 'weir_egress');
  if (!spec) throw new Error('weir_egress is not one of the datapath programs');
  const prog = (dp as unknown as { program(s: ProgramSpecOf): BpfProgram }).program(spec);
  writeFileSync(args.procs, String(process.pid));
  const data = frame(args.src);
  const ctx = Buffer.alloc(192);
  ctx.writeUInt32LE(testRunIfindex(), 40);
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  let k = 0;
  process.stdout.write('ready\n');
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const { rate, ms } = JSON.parse(line) as { rate: number; ms: number };
    let sent = 0;
    let bad = 0;
    const t0 = performance.now();
    let el = 0;
    for (;;) {
      el = performance.now() - t0;
      if (el >= ms) break;
      let due = rate > 0 ? Math.floor((el * rate) / 1000) - sent : 512;
      if (due <= 0) {
        Atomics.wait(sleeper, 0, 0, 0.5);
        continue;
      }
      if (due > 4096) due = 4096;
      for (let i = 0; i < due; i++, k++) {
        const h = k & 0x1ffff;
        data[FRAME_DST] = 198;
        data[FRAME_DST + 1] = 18 + (h >> 16);
        data[FRAME_DST + 2] = (h >> 8) & 255;
        data[FRAME_DST + 3] = h & 255;
        data.writeUInt16BE(1024 + (Math.floor(k / 0x20000) % 60000), FRAME_DPORT);
        if (prog.testRun({ data, ctx, dataSizeOut: 0 }).retval !== 0) bad++;
      }
      sent += due;
    }
    process.stdout.write(`${JSON.stringify({ sent, ms: el, bad })}\n`);
  }
  dp.close();
}

class GeneratorClient {
  private lines: string[] = [];
  private waiters: ((l: string) => void)[] = [];
  constructor(readonly child: ChildProcess) {
    const rl = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    rl.on('line', (l) => {
      const w = this.waiters.shift();
      if (w) w(l);
      else this.lines.push(l);
    });
  }
  next(timeoutMs = 60_000): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error('events generator: no answer')), timeoutMs);
      const onExit = (code: number | null): void => {
        clearTimeout(t);
        rej(new Error(`events generator exited with ${code}`));
      };
      this.child.once('exit', onExit);
      this.waiters.push((x) => {
        clearTimeout(t);
        this.child.off('exit', onExit);
        res(x);
      });
    });
  }
  async run(rate: number, ms: number): Promise<{ sent: number; ms: number; bad: number }> {
    this.child.stdin?.write(`${JSON.stringify({ rate, ms })}\n`);
    return JSON.parse(await this.next(ms + 60_000)) as { sent: number; ms: number; bad: number };
  }
}

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
}

const STAGES: { key: string; label: string }[] = [
  { key: 'ring', label: 'ring buffer callback: records to Buffers, batch (native, datapath.ts)' },
  { key: 'decode', label: 'decode (decodeEvent)' },
  { key: 'explain', label: 'enrich: policy and rule (attribution cache; engine.explain on a miss)' },
  { key: 'enrich', label: 'enrich: the rest (addresses, verdict, workload, /proc/PID/comm)' },
  { key: 'metrics', label: 'count (weir_violations_total)' },
  { key: 'log', label: 'log line (logEvent, or pino for what it cannot write: serialise, write)' },
  { key: 'audit', label: 'audit record (canonical JSON, SHA-256 chain, write)' },
  { key: 'observe', label: 'observe hub' },
  { key: 'handler', label: 'rest of the handler (onEvents)' },
  { key: 'gc', label: 'garbage collection (main thread)' },
  { key: 'program', label: 'native code outside JS (V8 "(program)": ring buffer reads, libuv, N-API)' },
  { key: 'other', label: 'other JS (event loop callbacks, promises, the bench\'s own bookkeeping)' },
];

/** The functions of the attribution cache (agent/attribution.ts; the rest of that file is enrich's). */
const ATTRIBUTION_FNS = new Set(['attribution', 'cellsOf', 'cellOf', 'v4Number', 'v6BigInt', 'isV4Mapped', 'sortedUnique', 'cut']);

/** Nanoseconds of samples per pipeline stage: the innermost stage on each sample's stack. */
function classify(p: CpuProfile): Map<string, number> {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const stageOf = new Map<number, string>();
  const mark = (fn: string, url: string): string | null => {
    if (fn === '(idle)') return 'idle';
    if (fn === '(garbage collector)') return 'gc';
    if (fn === '(program)') return 'program';
    if (url === 'node:inspector') return 'bench'; // starting and stopping the profiler
    if (url.includes('/audit/') || fn === 'auditRecord') return 'audit';
    if (url.includes('/pino/') || url.includes('/@pinojs/') || url.includes('/sonic-boom/') || url.endsWith('/report/logger.js')) return 'log';
    if (url.includes('/prom-client/') || url.endsWith('/report/metrics.js')) return 'metrics';
    if (fn === 'explain' && url.endsWith('/policy/engine.js')) return 'explain';
    if (url.endsWith('/agent/attribution.js') && ATTRIBUTION_FNS.has(fn)) return 'explain';
    if (fn === 'enrich' && url.endsWith('/agent/agent.js')) return 'enrich';
    if (url.endsWith('/agent/observe.js')) return 'observe';
    if (fn === 'decodeEvent') return 'decode';
    if (fn === 'onEvents' && url.endsWith('/agent/agent.js')) return 'handler';
    if (url.endsWith('/datapath/datapath.js')) return 'ring';
    return null;
  };
  const stage = (id: number): string => {
    const known = stageOf.get(id);
    if (known) return known;
    const n = byId.get(id);
    let s = n ? mark(n.callFrame.functionName, n.callFrame.url) : null;
    if (!s) {
      const up = parent.get(id);
      s = up === undefined ? 'other' : stage(up);
    }
    stageOf.set(id, s);
    return s;
  };
  const out = new Map<string, number>();
  p.samples.forEach((id, i) => {
    const s = stage(id);
    out.set(s, (out.get(s) ?? 0) + (p.timeDeltas[i] ?? 0) * 1000);
  });
  return out;
}

/** CPU time of each thread of this process, ns (schedstat), with its name. */
export function loadAvg(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

function threadTimes(): Map<number, { name: string; ns: number }> {
  const out = new Map<number, { name: string; ns: number }>();
  for (const t of readdirSync('/proc/self/task')) {
    try {
      const ns = Number(readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]);
      const name = readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim();
      out.set(Number(t), { name, ns });
    } catch {
      // the thread ended
    }
  }
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function events(opts: { quick: boolean; log: (l: string) => void }): Promise<EventsResult> {
  const bpffs = ensureBpffs('/sys/fs/bpf');
  const load0 = loadAvg();
  const tag = `weir-ev-${process.pid}`;
  const cgRoot = join(defaultCgroupRoot(), tag);
  const podsRoot = join(cgRoot, 'kubepods');
  const pinDir = join(bpffs, tag);
  const work = mkdtempSync(join(tmpdir(), 'weir-ev-'));
  const manifests = join(work, 'manifests');
  const auditPath = join(work, 'audit.log');
  const windowMs = opts.quick ? 1000 : 4000;
  // Quick: a 1 MiB ring buffer, so that overflowing it and draining it
  // afterwards take seconds less; the full run uses the default, 4 MiB.
  const ringbufBytes = opts.quick ? 1 << 20 : DEFAULT_CAPACITIES.ringbufBytes;
  let agent: Agent | null = null;
  let child: ChildProcess | null = null;
  const onSignal = (): void => {
    child?.kill('SIGKILL');
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    mkdirSync(manifests, { recursive: true });
    for (const d of ['besteffort', 'burstable']) mkdirSync(join(podsRoot, d), { recursive: true });
    const model = clusterModel(1000, 100);
    for (const p of model.nodePods) mkdirSync(join(podsRoot, p.cgroup));
    const genPod = model.nodePods[0];
    if (!genPod) throw new Error('no pod on this node');
    const container = join(podsRoot, genPod.cgroup, 'generator');
    mkdirSync(container);
    writeModel(manifests, model);

    // The log: pino's default destination (SonicBoom, asynchronous), to /dev/null.
    let logBytes = 0;
    const dest = pino.destination({ dest: '/dev/null', sync: false });
    const write = dest.write.bind(dest);
    dest.write = (s: string): boolean => {
      logBytes += Buffer.byteLength(s);
      return write(s);
    };
    agent = await Agent.start(
      { manifests, nodeName: NODE_NAME, cgroupRoot: cgRoot, bpffs, pinDir, metricsAddr: null, apiSocket: null, auditLog: { path: auditPath }, capacities: { ringbufBytes } },
      createLogger('info', dest as unknown as NodeJS.WritableStream),
    );
    let received = 0;
    let sample: Violation | null = null;
    agent.onViolation((v) => {
      received++;
      sample = v;
    });
    const a = agent;
    const dropped = (): number => a.status().events.lostObserve;

    child = spawn(
      process.execPath,
      [
        fileURLToPath(import.meta.url),
        'generate',
        JSON.stringify({ ringbufBytes, bpffs, pinDir, podLevel: cgroupLevel(podsRoot), procs: join(container, 'cgroup.procs'), src: [10, 128, 0, 0] } satisfies GeneratorArgs),
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const gen = new GeneratorClient(child);
    if ((await gen.next()) !== 'ready') throw new Error('events generator did not start');

    /** Length of the audit log's last violation record (the file rotates at 16 MiB, so sizes do not add up). */
    const auditRecordBytes = (): number => {
      const text = readFileSync(auditPath, 'utf8');
      const lines = text.split('\n').filter((l) => l.includes('"violation"'));
      const last = lines[lines.length - 1];
      return last === undefined ? NaN : Buffer.byteLength(last) + 1;
    };

    /** One step; with untilLoss, runs ms-long chunks until the kernel counts a lost event (at most capMs). */
    const step = async (targetRate: number, ms: number, untilLoss?: { capMs: number }): Promise<EventStep> => {
      const s0 = a.datapath.stats();
      const r0 = received;
      const d0 = dropped();
      const c0 = process.cpuUsage();
      const g = { sent: 0, ms: 0, bad: 0 };
      do {
        const c = await gen.run(targetRate, ms);
        g.sent += c.sent;
        g.ms += c.ms;
        g.bad += c.bad;
      } while (untilLoss && a.datapath.stats().events_lost === s0.events_lost && g.ms < untilLoss.capMs);
      if (g.bad > 0) throw new Error(`${g.bad} test runs were not dropped`);
      const tEnd = performance.now();
      // Wait until the agent has processed every event the kernel sent.
      let s1 = a.datapath.stats();
      for (;;) {
        s1 = a.datapath.stats();
        if (received - r0 + (dropped() - d0) >= Number(s1.events_sent - s0.events_sent)) break;
        if (performance.now() - tEnd > 120_000) break;
        await sleep(2);
      }
      const drainMs = performance.now() - tEnd;
      const c1 = process.cpuUsage(c0);
      const rec = received - r0;
      const sent = Number(s1.events_sent - s0.events_sent);
      const lost = Number(s1.events_lost - s0.events_lost);
      const agg = Number(s1.events_aggregated - s0.events_aggregated);
      const drop = dropped() - d0;
      const zeroLoss = lost === 0 && drop === 0 && agg === 0 && rec === g.sent;
      const st: EventStep = {
        targetRate,
        offered: g.sent,
        offeredRate: g.sent / (g.ms / 1000),
        windowMs: g.ms,
        kernelSent: sent,
        kernelLost: lost,
        kernelAggregated: agg,
        received: rec,
        userspaceDropped: drop,
        drainMs,
        deliveredRate: rec / ((g.ms + drainMs) / 1000),
        cpuUsPerEvent: rec > 0 ? (c1.user + c1.system) / rec : NaN,
        zeroLoss,
        sustained: zeroLoss && drainMs <= DRAIN_OK_MS,
        exact: g.sent === sent + lost + agg && sent === rec + drop,
      };
      opts.log(
        `  ${targetRate > 0 ? `${targetRate}/s`.padStart(9) : '  max    '} offered ${st.offeredRate.toFixed(0).padStart(7)}/s  sent ${String(sent).padStart(7)} received ${String(rec).padStart(7)} lost ${String(lost).padStart(7)} dropped ${drop}  drain ${drainMs.toFixed(0).padStart(5)} ms  ${st.cpuUsPerEvent.toFixed(1)} µs CPU/event  ${st.sustained ? 'sustained' : st.zeroLoss ? 'no loss, backlog' : 'LOSS'}${st.exact ? ', exact' : ', COUNTS DO NOT ADD UP'}`,
      );
      return st;
    };

    // Warm-up: JIT, first log and audit writes.
    opts.log('  warm-up:');
    await step(2000, 500);
    opts.log('  ramp:');
    const steps: EventStep[] = [];
    // Ramp: ×factor until the agent no longer keeps up.
    const factor = opts.quick ? 2 : 1.4;
    let rate = opts.quick ? 4000 : 1000;
    let best = 0;
    for (;;) {
      const s = await step(rate, windowMs);
      steps.push(s);
      if (!s.sustained) break;
      best = Math.max(best, s.offeredRate);
      if (rate > 2_000_000) break;
      rate = Math.round(rate * factor);
    }
    // Refine between the last sustained rate and the first that was not.
    if (!opts.quick && best > 0) {
      const s = await step(Math.round(best * 1.2), windowMs);
      steps.push(s);
      if (s.sustained) best = Math.max(best, s.offeredRate);
    }
    // Above it: the generator's full speed, long enough to fill the ring buffer.
    // Runs until the ring buffer (~37,000 events at 4 MiB) overflows.
    const over = await step(0, opts.quick ? 1000 : 2000, { capMs: opts.quick ? 8000 : 20_000 });
    if (over.kernelLost === 0) opts.log('  note: the generator did not outpace the agent enough to fill the ring buffer (a busy machine?)');
    steps.push(over);

    // Where the time goes: V8's sampling profiler on this thread during one
    // step at 80% of the highest sustained rate, each sample put in the
    // innermost pipeline stage on its stack, scaled to the main thread's CPU
    // time (schedstat); the process's other threads are listed by name.
    const profRate = Math.max(1000, Math.round(best * 0.8));
    const lb0 = logBytes;
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 200 });
    await session.post('Profiler.start');
    const t0 = threadTimes();
    const prof = await step(profRate, windowMs);
    const t1 = threadTimes();
    const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: CpuProfile };
    session.disconnect();
    // The raw profile, for a closer look (chrome://inspect, or any .cpuprofile viewer).
    if (process.env.WEIR_EVENTS_CPUPROFILE) writeFileSync(process.env.WEIR_EVENTS_CPUPROFILE, JSON.stringify(profile));
    await a.auditLog?.flush();
    const n = Math.max(1, prof.received);
    const stageNs = classify(profile);
    const busy = [...stageNs].filter(([k]) => k !== 'idle' && k !== 'bench').reduce((x, [, v]) => x + v, 0);
    const cpu = new Map<string, number>();
    for (const [tid, t] of t1) {
      const before = t0.get(tid);
      const name = t.name === 'MainThread' || tid === process.pid ? 'main' : t.name;
      cpu.set(name, (cpu.get(name) ?? 0) + (t.ns - (before?.ns ?? 0)));
    }
    const mainUs = (cpu.get('main') ?? 0) / 1000 / n;
    const stages: EventProfileStage[] = [];
    for (const st of STAGES) {
      const v = stageNs.get(st.key) ?? 0;
      if (busy > 0) stages.push({ stage: st.label, usPerEvent: (mainUs * v) / busy, share: 0 });
    }
    for (const [name, ns] of cpu) {
      // v8:ProfEvntProc is the profiler's own thread.
      if (name === 'main' || name === 'v8:ProfEvntProc' || ns <= 0) continue;
      const label =
        name === 'V8Worker' ? 'other threads: V8 workers (concurrent GC, compilation)' : name === 'libuv-worker' ? 'other threads: libuv pool (log and audit file writes)' : `other threads: ${name}`;
      stages.push({ stage: label, usPerEvent: ns / 1000 / n, share: 0 });
    }
    const cpuUs = stages.reduce((x, s) => x + s.usPerEvent, 0);
    for (const s of stages) s.share = s.usPerEvent / cpuUs;
    opts.log(`  profile at ${profRate}/s (${n} events): ${cpuUs.toFixed(1)} µs CPU per event, ${mainUs.toFixed(1)} on the main thread`);
    for (const s of stages) opts.log(`    ${s.stage.padEnd(76)} ${s.usPerEvent.toFixed(1).padStart(7)} µs  ${(s.share * 100).toFixed(0).padStart(3)}%`);

    // The log line alone: the agent's logger; pino with the redact paths the
    // agent used to give it (checked on every value of every line); pino
    // without redaction. 64 lines per turn of the event loop, as a batch of
    // events is logged (the agent's logger writes once per batch).
    const fields = { ...(sample as Violation | null) };
    const line = { event: 'violation', ...fields };
    const lineCost = async (log: Logger, viaLogEvent = false): Promise<number> => {
      const reps = opts.quick ? 20_000 : 100_000;
      const run = async (n: number): Promise<void> => {
        for (let i = 0; i < n; i += 64) {
          if (viaLogEvent) for (let j = 0; j < 64; j++) logEvent(log, 'warn', 'violation', fields, 'egress denied');
          else for (let j = 0; j < 64; j++) log.warn(line, 'egress denied');
          await new Promise((r) => setImmediate(r));
        }
      };
      await run(5000);
      const c = process.cpuUsage();
      await run(reps);
      const d = process.cpuUsage(c);
      return (d.user + d.system) / reps;
    };
    const nullDest = (): NodeJS.WritableStream => pino.destination({ dest: '/dev/null', sync: false }) as unknown as NodeJS.WritableStream;
    const pinoOpts = { level: 'info', base: { app: 'weir' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (l: string) => ({ level: l }) } };
    const loggers = {
      agentEventUs: () => createLogger('info', nullDest()).child({ component: 'agent' }),
      agentUs: () => createLogger('info', nullDest()).child({ component: 'agent' }),
      pinoRedactPathsUs: () =>
        pino({ ...pinoOpts, redact: { paths: ['*.token', '*.bearerToken', '*.authorization', '*.password', 'headers.authorization'], censor: '[redacted]' } }, nullDest() as unknown as pino.DestinationStream).child({ component: 'agent' }),
      pinoPlainUs: () => pino(pinoOpts, nullDest() as unknown as pino.DestinationStream).child({ component: 'agent' }),
    };
    // Twice each, interleaved, the lower kept: whichever runs first also pays
    // for the garbage the steps before it left (a major GC of a large heap).
    const logLine = { agentEventUs: Infinity, agentUs: Infinity, pinoRedactPathsUs: Infinity, pinoPlainUs: Infinity };
    for (let round = 0; round < 2; round++) {
      for (const k of Object.keys(loggers) as (keyof typeof loggers)[]) logLine[k] = Math.min(logLine[k], await lineCost(loggers[k](), k === 'agentEventUs'));
    }
    opts.log(`  one log line: ${logLine.agentEventUs.toFixed(1)} µs CPU as the agent logs a violation (logEvent), ${logLine.agentUs.toFixed(1)} µs with the agent's logger through log.warn, ${logLine.pinoRedactPathsUs.toFixed(1)} µs with pino's redact paths (the agent's logger before), ${logLine.pinoPlainUs.toFixed(1)} µs with pino and no redaction`);

    const maxSustainedRate = best;
    return {
      config:
        `in-process Agent (manifests source: 1,000 pods, 100 on this node, 51 policies), default capacities but a ${ringbufBytes >> 20} MiB ring buffer${opts.quick ? ' (quick run; the default is 4 MiB)' : ' (the default)'}, event interval 1 s, info log (the agent\'s logger) to /dev/null through pino\'s asynchronous destination, audit log on (a file), metrics counted (no HTTP server)`,
      tree: sourceTree(),
      loadAvg: [load0, loadAvg()],
      logLine,
      maxSustainedRate,
      cpuBoundRate: 1e6 / over.cpuUsPerEvent,
      generatorMaxRate: over.offeredRate,
      steps,
      profile: {
        rate: profRate,
        events: n,
        stages,
        logBytesPerEvent: (logBytes - lb0) / n,
        auditBytesPerEvent: auditRecordBytes(),
      },
    };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (child) {
      child.stdin?.end();
      const c = child;
      await Promise.race([new Promise((r) => c.once('exit', r)), sleep(3000)]);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    if (agent) {
      agent.datapath.uninstall();
      await agent.stop();
    }
    removePins(pinDir);
    removeCgroupTree(cgRoot);
    rmSync(work, { recursive: true, force: true });
  }
}

export function eventsMarkdown(r: EventsResult, m: Record<string, string | number>, cmd: string): string {
  const f = (x: number): string => x.toLocaleString('en-US', { maximumFractionDigits: 0 });
  const lines = [
    '# Event pipeline: violation events per second with zero loss',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`.`,
    '',
    `Agent: ${r.config}. A generator process in a pod cgroup runs weir_egress (BPF_PROG_TEST_RUN, repeat 1) on packets to distinct destinations, so every violation is one event. ` +
      `A step is sustained when nothing is lost and the agent has processed every event within ${DRAIN_OK_MS} ms of the generator stopping. "exact": offered = sent + lost + aggregated and sent = received + dropped in userspace.`,
    '',
    `Source: ${r.tree}. Load average (1 min) at start and end: ${r.loadAvg[0].toFixed(1)}, ${r.loadAvg[1].toFixed(1)} (the machine is shared; figures are from one run).`,
    '',
    `**Highest sustained rate: ${f(r.maxSustainedRate)} events/s** (target 200,000). Saturated, the agent spent ${(1e6 / r.cpuBoundRate).toFixed(0)} µs of CPU per event: ${f(r.cpuBoundRate)} events/s for a whole core. Generator at full speed: ${f(r.generatorMaxRate)} events/s offered.`,
    '',
    '| target/s | offered/s | offered | kernel sent | kernel lost | aggregated | received | dropped (userspace) | drain ms | delivered/s | CPU µs/event | result | exact |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|',
    ...r.steps.map(
      (s) =>
        `| ${s.targetRate > 0 ? f(s.targetRate) : 'full speed'} | ${f(s.offeredRate)} | ${f(s.offered)} | ${f(s.kernelSent)} | ${f(s.kernelLost)} | ${f(s.kernelAggregated)} | ${f(s.received)} | ${f(s.userspaceDropped)} | ${f(s.drainMs)} | ${f(s.deliveredRate)} | ${s.cpuUsPerEvent.toFixed(1)} | ${s.sustained ? 'sustained' : s.zeroLoss ? 'no loss, backlog' : 'loss'} | ${s.exact ? 'yes' : 'NO'} |`,
    ),
    '',
    `Where the time goes, at ${f(r.profile.rate)} events/s (${f(r.profile.events)} events; V8's sampling profiler on the agent's thread, each sample in the innermost stage on its stack, scaled to the thread's CPU time; the process's other threads from /proc; log line ${f(r.profile.logBytesPerEvent)} bytes, audit record ${f(r.profile.auditBytesPerEvent)} bytes per event):`,
    '',
    '| stage | µs per event | share |',
    '|---|---:|---:|',
    ...r.profile.stages.map((s) => `| ${s.stage} | ${s.usPerEvent.toFixed(2)} | ${(s.share * 100).toFixed(0)}% |`),
    '',
    `One violation log line alone (logged to /dev/null 64 lines per turn of the event loop, as a batch of events is; CPU of the process per line, the lower of two interleaved runs): ${r.logLine.agentEventUs !== undefined ? `${r.logLine.agentEventUs.toFixed(1)} µs as the agent logs a violation (logEvent: the bytes of log.warn, without pino's per-character escaping), ` : ''}${r.logLine.agentUs.toFixed(1)} µs with the agent's logger through log.warn (credential keys looked for per object, one write per batch), ${r.logLine.pinoRedactPathsUs.toFixed(1)} µs with pino and the redact paths the agent used before (\`*.token\`, ...), ${r.logLine.pinoPlainUs.toFixed(1)} µs with pino and no redaction.`,
  ];
  return `${lines.join('\n')}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === 'generate') {
  generator(JSON.parse(process.argv[3] ?? '{}') as GeneratorArgs).catch((err: unknown) => {
    console.error(`events generator: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  });
}
