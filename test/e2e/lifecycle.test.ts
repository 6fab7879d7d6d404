// The agent's life on a node, on the sandbox: `weir agent` runs as its own
// process (dist/cli/weir.js), as the DaemonSet runs it, and is killed,
// restarted, upgraded and starved of its API server while pods keep sending.
// Every figure is counted, not sampled: the traffic generators (long-running
// probers in the pods, one new connect or send every 20 ms, and long TCP
// streams) count every allowed call that succeeded and every denied one that
// got EPERM, and the kernel's own per-endpoint counters (weir_counters, read
// from the pins) must move by exactly as much, with no packet dropped.
//
//   1. crash: SIGKILL during traffic, 3 s down while a pod is deleted and a
//      policy changed; nothing allowed fails, nothing denied passes; the new
//      agent adopts the pins (one weir program per hook at every sample,
//      same links) and reconciles the maps (weir_reconcile_entries_total).
//   2. upgrade: objects built differently replace the old ones by link
//      update (same links, new programs and tags, never two on a hook); a
//      capacity change and a map whose layout changed are migrated.
//   3. reconciliation: the pinned maps edited behind the agent's back are
//      equal, after restart, to a fresh writer's on the same model.
//   4. the API server down at start: the pinned policy is enforced, /readyz
//      is not ready, requests are retried with backoff, ready once it is up
//      (a watch dropped mid-stream: test/e2e/kubernetes-agent.test.ts).
//   7. local security: the API socket refuses other users; no token in any
//      log line; programs of others on the same hooks stay attached and run.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONST,
  counterIndex,
  decodePerCpuCounter,
  decodePodIpValue,
  decodePodValue,
  decodePortClass,
  decodeSetValue,
  decodeTrieNode,
  decodeTrieTail,
  encodePodIpKey,
  encodePodIpValue,
  encodePodValue,
  encodeSetValue,
  encodeTrieNode,
  SIZES,
  u32Key,
  u64Key,
} from '../../src/datapath/abi.js';
import { cleanup as weirCleanup } from '../../src/datapath/cleanup.js';
import { Datapath, PROGRAMS, removePins } from '../../src/datapath/datapath.js';
import type { PodBinding } from '../../src/datapath/state-writer.js';
import { cgroupIdOf, cgroupLevel } from '../../src/datapath/cgroups.js';
import { walkEncoded } from '../../src/datapath/trie.js';
import { ObjectStore } from '../../src/model/store.js';
import { validateObject } from '../../src/model/validate.js';
import { SET_F_E_ISOLATED } from '../../src/policy/compile.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { addressBytes } from '../../src/policy/prefix.js';
import { decide } from '../../src/policy/verdict.js';
import { BpfLink, BpfMap, BpfObject, bpfConstants, progInfo, progQuery } from '../../src/native/index.js';
import { readyz, running, spawnAgent, stopAgent, waitReady, WEIR_CLI as WEIR, type AgentProcess } from '../../src/sandbox/agent-process.js';
import { Prober, type ProberRequest } from '../../src/sandbox/probe-runner.js';
import { Sandbox, type SandboxPod } from '../../src/sandbox/sandbox.js';
import type { SandboxSpec } from '../../src/sandbox/spec.js';
import { ManifestSource } from '../../src/sources/manifests.js';
import { FakeApiServer, type FakeObjectInput } from '../helpers/fake-apiserver.js';
import { BPFFS } from '../helpers/kernel.js';
import { probeTcp, startServer, startStream, type ProbeProcess } from './helpers/traffic.js';

const ROOT = resolve(import.meta.dirname, '../..');
const NODE = process.execPath;
const BPF = bpfConstants();
const HOOKS = PROGRAMS.map((p) => ({
  program: p.program,
  type: {
    egress: BPF.BPF_CGROUP_INET_EGRESS,
    ingress: BPF.BPF_CGROUP_INET_INGRESS,
    connect4: BPF.BPF_CGROUP_INET4_CONNECT,
    connect6: BPF.BPF_CGROUP_INET6_CONNECT,
    sendmsg4: BPF.BPF_CGROUP_UDP4_SENDMSG,
    sendmsg6: BPF.BPF_CGROUP_UDP6_SENDMSG,
  }[p.attachType],
}));

const spec: SandboxSpec = {
  id: `lc${process.pid % 100000}`,
  nodeName: 'lc-node',
  namespaces: [
    { name: 'team-a', labels: {} },
    { name: 'team-b', labels: {} },
  ],
  pods: [
    { namespace: 'team-a', name: 'client', labels: { app: 'client', tier: 'governed' }, qosClass: 'Burstable' },
    { namespace: 'team-a', name: 'worker', labels: { app: 'worker', tier: 'governed' }, qosClass: 'Guaranteed' },
    { namespace: 'team-a', name: 'doomed', labels: { app: 'doomed', tier: 'governed' } },
    { namespace: 'team-b', name: 'free', labels: { app: 'free' } },
  ],
  hosts: [
    { name: 'svc', kind: 'service', ipv4: '10.20.0.10' },
    { name: 'internet', kind: 'internet', ipv4: '203.0.113.10' },
    // A machine outside the pods' cgroups (its processes are the "host").
    { name: 'ops', kind: 'service', ipv4: '10.20.0.30' },
  ],
};
const SVC4 = '10.20.0.10';
const SVC6 = 'fd00:10:20::10';
const NET4 = '203.0.113.10';
const NET6 = '2001:db8:203::113:10';

/** The governed pods may reach the service on these TCP ports and UDP 514, nothing else. */
function policy(tcpPorts: number[]): string {
  return `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: governed, namespace: team-a}
spec:
  podSelector: {matchLabels: {tier: governed}}
  egress:
  - to: [{ipBlock: {cidr: ${SVC4}/32}}, {ipBlock: {cidr: "${SVC6}/128"}}]
    ports: [${tcpPorts.map((p) => `{protocol: TCP, port: ${p}}`).join(', ')}, {protocol: UDP, port: 514}]
`;
}

let sb: Sandbox;
let work: string;
let manifests: string;
let objectsOld: string; // a copy of build/bpf: "the running release"
let objectsNew: string; // the same sources built differently: "the upgrade"
const servers: ProbeProcess[] = [];
const children = new Set<ChildProcess>();
const pinDirs: string[] = [];
let sequence = 0;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, fn: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function newPinDir(tag: string): string {
  const d = join(BPFFS, `weir-lc-${process.pid}-${tag}`);
  pinDirs.push(d);
  return d;
}

// ---- the agent as a process -------------------------------------------------

/** The agent process (src/sandbox/agent-process.ts) and its local API socket. */
type AgentRun = AgentProcess & { socket: string };

async function startAgent(o: { pinDir: string; objectsDir?: string; source?: string[]; extra?: string[]; logLevel?: string }): Promise<AgentRun> {
  const socket = join(work, `api-${++sequence}`, 'weir.sock');
  const run = await spawnAgent([
    ...(o.source ?? ['--manifests', manifests]),
    '--node-name',
    sb.nodeName,
    '--cgroup-root',
    sb.cgroupRoot,
    '--bpffs',
    BPFFS,
    '--pin-dir',
    o.pinDir,
    '--api-socket',
    socket,
    '--log-level',
    o.logLevel ?? 'info',
    ...(o.objectsDir !== undefined ? ['--objects-dir', o.objectsDir] : []),
    ...(o.extra ?? []),
  ]);
  children.add(run.child);
  void run.exited.then(() => children.delete(run.child));
  return { ...run, socket };
}

/** Resolves with the time it took once /readyz answers 200; rejects if the agent exits first. */
const ready = (a: AgentRun, ms = 30_000): Promise<number> => waitReady(a, ms);
const kill = (a: AgentRun, signal: NodeJS.Signals): Promise<void> => stopAgent(a, signal);

async function metricsText(a: AgentRun): Promise<string> {
  return (await fetch(`http://127.0.0.1:${a.port}/metrics`)).text();
}

function metricValue(text: string, name: string, labels: Record<string, string>): number {
  const lines = text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `));
  const hit = lines.filter((l) => Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  return hit.reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

function logLines(a: AgentRun): Record<string, unknown>[] {
  return a.out
    .join('')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

// ---- the kernel's view --------------------------------------------------------

function withPinned<T>(pinDir: string, map: string, fn: (m: BpfMap) => T): T {
  const m = BpfMap.openPinned(join(pinDir, 'maps', map));
  try {
    return fn(m);
  } finally {
    m.close();
  }
}

function endpointOf(pinDir: string, pod: SandboxPod): number {
  const v = withPinned(pinDir, 'weir_pods', (m) => m.lookup(u64Key(cgroupIdOf(pod.cgroupDir))));
  if (!v) throw new Error(`pod ${pod.namespace}/${pod.name} is not in weir_pods`);
  return decodePodValue(v).endpointId;
}

type Verdicts = Record<'allow' | 'drop' | 'audit' | 'reply', bigint>;
interface Counts {
  sockets: Verdicts;
  packets: Verdicts;
}

/** The exact per-endpoint counters of the pods (by "ns/name"), from the pinned maps. */
function kernelCounts(pinDir: string, pods: SandboxPod[]): Map<string, Counts> {
  const out = new Map<string, Counts>();
  const eps = pods.map((p) => [`${p.namespace}/${p.name}`, endpointOf(pinDir, p)] as const);
  withPinned(pinDir, 'weir_counters', (m) => {
    for (const [key, ep] of eps) {
      const read = (kind: number): Verdicts => {
        const v = {} as Verdicts;
        (['allow', 'drop', 'audit', 'reply'] as const).forEach((name, i) => {
          const raw = m.lookup(u32Key(counterIndex(ep, kind, i + 1)));
          v[name] = raw ? decodePerCpuCounter(raw, m.possibleCpus).packets : 0n;
        });
        return v;
      };
      out.set(key, { sockets: read(CONST.WEIR_COUNT_SOCKETS), packets: read(CONST.WEIR_COUNT_PACKETS) });
    }
  });
  return out;
}

function delta(a: Counts, b: Counts): Counts {
  const d = (x: Verdicts, y: Verdicts): Verdicts => ({ allow: y.allow - x.allow, drop: y.drop - x.drop, audit: y.audit - x.audit, reply: y.reply - x.reply });
  return { sockets: d(a.sockets, b.sockets), packets: d(a.packets, b.packets) };
}

const progNames = new Map<number, string>();
function progName(id: number): string {
  let n = progNames.get(id);
  if (n === undefined) {
    n = progInfo(id).name;
    progNames.set(id, n);
  }
  return n;
}

/** The programs on each of weir's hooks of the pods cgroup: weir's (by name) and the others. */
function hookPrograms(): { program: string; weir: number[]; others: number[]; flags: number }[] {
  return HOOKS.map((h) => {
    const q = progQuery(sb.podsCgroupRoot, h.type);
    const weir = q.progIds.filter((id) => progName(id).startsWith('weir_'));
    return { program: h.program, weir, others: q.progIds.filter((id) => !weir.includes(id)), flags: q.attachFlags };
  });
}

/**
 * Samples every hook every 2 ms on the event loop (the agent is another
 * process), recording each sample where a hook did not have exactly one
 * weir program.
 */
class HookWatch {
  samples = 0;
  readonly bad: string[] = [];
  private readonly timer: NodeJS.Timeout;
  constructor() {
    this.timer = setInterval(() => {
      this.samples++;
      for (const h of hookPrograms()) if (h.weir.length !== 1) this.bad.push(`${h.program}: ${h.weir.length} weir programs (sample ${this.samples})`);
    }, 2);
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

function linkIds(pinDir: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of PROGRAMS) {
    const l = BpfLink.openPinned(join(pinDir, 'links', p.program));
    out[p.program] = l.info().id;
    l.close();
  }
  return out;
}

// ---- traffic ------------------------------------------------------------------

interface Flow {
  name: string;
  allowed: boolean;
  req: ProberRequest;
}

interface Tally {
  allowedOk: number;
  deniedEperm: number;
  failures: string[];
}

/** Where each flow runs, and what it may do. */
interface Source {
  key: string;
  prober: Prober;
  /** Every round (20 ms). */
  every: Flow[];
  /** One of these per round, in turn. */
  rotate: Flow[];
}

const tcp = (host: string, port: number): ProberRequest => ({ proto: 'tcp', host, port, timeoutMs: 3000 });
const udp = (host: string, port: number): ProberRequest => ({ proto: 'udp', host, port, timeoutMs: 3000 });

/** Governed pods: an allowed connect every round; in turn denied connects, allowed and denied sends, IPv4 and IPv6. */
function governedFlows(): { every: Flow[]; rotate: Flow[] } {
  return {
    every: [{ name: 'tcp4 svc:8080', allowed: true, req: tcp(SVC4, 8080) }],
    rotate: [
      { name: 'tcp4 internet:443', allowed: false, req: tcp(NET4, 443) },
      { name: 'udp4 svc:514', allowed: true, req: udp(SVC4, 514) },
      { name: 'udp4 internet:53', allowed: false, req: udp(NET4, 53) },
      { name: 'tcp6 svc:8080', allowed: true, req: tcp(SVC6, 8080) },
      { name: 'tcp6 internet:443', allowed: false, req: tcp(NET6, 443) },
      { name: 'udp6 svc:514', allowed: true, req: udp(SVC6, 514) },
      { name: 'udp6 internet:53', allowed: false, req: udp(NET6, 53) },
    ],
  };
}

/** Anything goes for the ungoverned pod and the host outside the pods' cgroups. */
function freeFlows(): { every: Flow[]; rotate: Flow[] } {
  return {
    every: [{ name: 'tcp4 internet:443', allowed: true, req: tcp(NET4, 443) }],
    rotate: [
      { name: 'udp4 internet:53', allowed: true, req: udp(NET4, 53) },
      { name: 'tcp4 svc:9000', allowed: true, req: tcp(SVC4, 9000) },
      { name: 'tcp6 internet:443', allowed: true, req: tcp(NET6, 443) },
    ],
  };
}

class Traffic {
  readonly tallies = new Map<string, Tally>();
  private timer: NodeJS.Timeout | null = null;
  private readonly inflight = new Set<Promise<void>>();
  private round = 0;

  constructor(private readonly sources: Source[]) {}

  static async start(pods: string[], hosts: string[]): Promise<Traffic> {
    const sources: Source[] = [];
    for (const key of pods) {
      const prober = await Prober.start(sb, { pod: key }, { timeoutMs: 3000 });
      sources.push({ key, prober, ...(key.startsWith('team-a/') ? governedFlows() : freeFlows()) });
    }
    for (const h of hosts) sources.push({ key: `host ${h}`, prober: await Prober.start(sb, { host: h }, { timeoutMs: 3000 }), ...freeFlows() });
    const t = new Traffic(sources);
    t.resume();
    return t;
  }

  tally(key: string): Tally {
    let t = this.tallies.get(key);
    if (!t) this.tallies.set(key, (t = { allowedOk: 0, deniedEperm: 0, failures: [] }));
    return t;
  }

  resume(): void {
    this.timer ??= setInterval(() => {
      this.round++;
      for (const s of this.sources) {
        for (const f of s.every) this.fire(s, f);
        const r = s.rotate[this.round % s.rotate.length];
        if (r) this.fire(s, r);
      }
    }, 20);
  }

  private fire(s: Source, f: Flow): void {
    const t = this.tally(s.key);
    const p = s.prober.probe(f.req).then(
      (r) => {
        if (f.allowed) {
          if (r.ok) t.allowedOk++;
          else t.failures.push(`${f.name}: ${r.code ?? 'failed'}`);
        } else if (r.code === 'EPERM') t.deniedEperm++;
        else t.failures.push(`${f.name} (denied): ${r.ok ? 'went through' : r.code}`);
      },
      (e: Error) => {
        t.failures.push(`${f.name}: ${e.message}`);
      },
    );
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
  }

  /** Stops issuing, waits for every probe in flight to answer and the last segments to leave. */
  async pause(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
    await sleep(300);
  }

  /** Ends a window: returns its tallies and starts counting anew. */
  reset(): Map<string, Tally> {
    const w = new Map(this.tallies);
    this.tallies.clear();
    return w;
  }

  async stop(): Promise<void> {
    await this.pause();
    for (const s of this.sources) await s.prober.close();
  }
}

/**
 * The check of every window: each allowed call of every source succeeded,
 * each denied one got EPERM, and the kernel counted exactly the calls the
 * governed pods made (socket verdicts) and dropped no packet of theirs.
 */
function checkWindow(
  tallies: Map<string, Tally>,
  before: Map<string, Counts>,
  after: Map<string, Counts>,
  /** Calls the test made itself in the window, outside the generators: pod -> allowed and denied. */
  extra: Record<string, { allowed?: number; denied?: number }> = {},
): { allowed: number; denied: number } {
  let allowed = 0;
  let denied = 0;
  for (const [key, tally] of tallies) {
    expect(tally.failures, key).toEqual([]);
    allowed += tally.allowedOk;
    denied += tally.deniedEperm;
  }
  for (const key of ['team-a/client', 'team-a/worker']) {
    const tally = tallies.get(key) ?? { allowedOk: 0, deniedEperm: 0, failures: [] };
    expect(tally.allowedOk, key).toBeGreaterThan(50);
    expect(tally.deniedEperm, key).toBeGreaterThan(10);
    const d = delta(before.get(key) as Counts, after.get(key) as Counts);
    expect({ key, socketAllow: d.sockets.allow, socketDrop: d.sockets.drop, packetDrop: d.packets.drop }).toEqual({
      key,
      socketAllow: BigInt(tally.allowedOk + (extra[key]?.allowed ?? 0)),
      socketDrop: BigInt(tally.deniedEperm + (extra[key]?.denied ?? 0)),
      packetDrop: 0n,
    });
    expect(d.packets.allow, key).toBeGreaterThan(0n);
  }
  return { allowed, denied };
}

/** The governed pods' long TCP streams: no echo came back late, none was lost. */
function checkStreams(streams: ProbeProcess[]): number {
  let echoed = 0;
  for (const s of streams) {
    expect(s.events.filter((e) => e.event === 'timeout' || e.event === 'error' || e.event === 'closed'), s.stderr).toEqual([]);
    echoed += s.events.filter((e) => e.event === 'echo').length;
  }
  return echoed;
}

// ---- setup ----------------------------------------------------------------------

function buildObjects(dir: string, extraFlags: string[]): void {
  mkdirSync(dir, { recursive: true });
  for (const f of ['egress', 'ingress', 'sock_addr']) {
    const r = spawnSync('clang', [
      '-target', 'bpf', '-mcpu=v3', '-O2', '-g', '-Wall', '-Werror', '-D__TARGET_ARCH_x86',
      '-I', join(ROOT, 'bpf/include'), '-I', join(ROOT, 'bpf'), '-I', '/usr/include/x86_64-linux-gnu',
      ...extraFlags,
      '-c', join(ROOT, 'bpf', `${f}.bpf.c`), '-o', join(dir, `${f}.bpf.o`),
    ]);
    if (r.status !== 0) throw new Error(`clang ${f}: ${r.stderr.toString()}`);
  }
}

beforeAll(async () => {
  if (!existsSync(WEIR)) throw new Error(`${WEIR} is missing: build first (node scripts/build.mjs)`);
  await Sandbox.cleanupLeftovers();
  sb = await Sandbox.create(spec);
  work = mkdtempSync(join(tmpdir(), 'weir-lc-'));
  chmodSync(work, 0o755); // traversable: the local API's own directory and socket must keep others out
  manifests = join(work, 'manifests');
  sb.writeManifests(manifests);
  writeFileSync(join(manifests, 'policy.yaml'), policy([8080]));
  objectsOld = join(work, 'objects-old');
  mkdirSync(objectsOld);
  for (const f of readdirSync(join(ROOT, 'build/bpf')).filter((f) => f.endsWith('.bpf.o'))) copyFileSync(join(ROOT, 'build/bpf', f), join(objectsOld, f));
  // The same sources built differently (no loop unrolling): other
  // instructions, so other program tags; the same maps.
  objectsNew = join(work, 'objects-new');
  buildObjects(objectsNew, ['-fno-unroll-loops']);
  servers.push(await startServer(sb, 'svc', { tcp: [8080, 9000], udp: [514] }));
  servers.push(await startServer(sb, 'internet', { tcp: [443], udp: [53] }));
}, 120_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  for (const s of servers) await s.stop();
  for (const d of pinDirs) if (existsSync(d)) weirCleanup(d);
  await sb?.destroy();
  if (work) rmSync(work, { recursive: true, force: true });
});

const governed = (): SandboxPod[] => [sb.pod('team-a', 'client'), sb.pod('team-a', 'worker')];

/** Starts the traffic of a test: probers in the pods and the host, streams from the governed pods. */
async function startTraffic(): Promise<{ traffic: Traffic; streams: ProbeProcess[] }> {
  const streams = [
    await startStream(sb, 'team-a/client', 'svc', 8080, { intervalMs: 20, echoTimeoutMs: 1000 }),
    await startStream(sb, 'team-a/worker', 'svc', 8080, { intervalMs: 20, echoTimeoutMs: 1000, family: 6 }),
  ];
  const traffic = await Traffic.start(['team-a/client', 'team-a/worker', 'team-b/free'], ['ops']);
  return { traffic, streams };
}

async function stopTraffic(t: { traffic: Traffic; streams: ProbeProcess[] } | undefined): Promise<void> {
  if (!t) return;
  await t.traffic.stop();
  for (const s of t.streams) await s.stop();
}

/** Quiesces the traffic, reads the kernel counters, ends the window (its tallies) and starts the next. */
async function snapshot(t: Traffic, pinDir: string): Promise<{ kernel: Map<string, Counts>; tallies: Map<string, Tally> }> {
  await t.pause();
  const kernel = kernelCounts(pinDir, governed());
  const tallies = t.reset();
  t.resume();
  return { kernel, tallies };
}

describe('agent lifecycle on the sandbox node', () => {
  it('1. crash: SIGKILL under traffic, 3 s down; nothing allowed fails, nothing denied passes, counted in the kernel; the new agent adopts the pins and reconciles the maps', async () => {
    const pinDir = newPinDir('crash');
    let t: Awaited<ReturnType<typeof startTraffic>> | undefined;
    let watch: HookWatch | undefined;
    let b: AgentRun | undefined;
    const a = await startAgent({ pinDir });
    try {
      const firstReadyMs = await ready(a);
      const links = linkIds(pinDir);
      const before = hookPrograms();
      expect(before.every((h) => h.weir.length === 1 && h.others.length === 0 && h.flags === BPF.BPF_F_ALLOW_MULTI)).toBe(true);
      const eps = governed().map((p) => endpointOf(pinDir, p));

      t = await startTraffic();
      await sleep(1000);
      const k0 = await snapshot(t.traffic, pinDir);
      await sleep(500);

      watch = new HookWatch();
      const killedAt = Date.now();
      a.child.kill('SIGKILL');
      await a.exited;
      // While nobody is there: a pod is deleted and the policy widened.
      await sb.removePod('team-a', 'doomed');
      writeFileSync(join(manifests, 'policy.yaml'), policy([8080, 9000]));
      expect((await probeTcp(sb, 'team-a/client', 'svc', 9000, { timeoutMs: 2000 })).code).toBe('EPERM');
      await sleep(3000 - (Date.now() - killedAt));
      b = await startAgent({ pinDir });
      const restartMs = await ready(b);
      const downMs = Date.now() - killedAt;
      await sleep(1000);
      const k1 = await snapshot(t.traffic, pinDir);
      watch.stop();
      // The one denied connect to svc:9000 above was the client's too.
      const totals = checkWindow(k1.tallies, k0.kernel, k1.kernel, { 'team-a/client': { denied: 1 } });
      const echoed = checkStreams(t.streams);

      // Adopted, not re-attached: the same links, now on the new agent's programs; one weir program per hook at every sample.
      expect(watch.bad).toEqual([]);
      expect(watch.samples).toBeGreaterThan(200);
      expect(linkIds(pinDir)).toEqual(links);
      const after = hookPrograms();
      expect(after.every((h) => h.weir.length === 1 && h.others.length === 0 && h.flags === BPF.BPF_F_ALLOW_MULTI)).toBe(true);
      for (const [i, h] of after.entries()) expect(h.weir[0]).not.toBe(before[i]?.weir[0]);
      expect(governed().map((p) => endpointOf(pinDir, p))).toEqual(eps); // counters stay attributed
      expect(readdirSync(join(pinDir, 'links')).sort()).toEqual(PROGRAMS.map((p) => p.program).sort());

      // Reconciled: the deleted pod's entry is gone, the policy change is in force, and the metric says so.
      const pods = withPinned(pinDir, 'weir_pods', (m) => m.keys().map((k) => k.readBigUInt64LE(0)).sort());
      expect(pods).toEqual(sb.listPods().map((p) => cgroupIdOf(p.cgroupDir)).sort());
      expect((await probeTcp(sb, 'team-a/client', 'svc', 9000)).ok).toBe(true);
      const m = await metricsText(b);
      const rec = (map: string, action: string): number => metricValue(m, 'weir_reconcile_entries_total', { map, action });
      expect({ podsRemoved: rec('weir_pods', 'removed'), podsAdded: rec('weir_pods', 'added'), ipsRemoved: rec('weir_pod_ips', 'removed'), setsRewritten: rec('weir_sets', 'rewritten'), setsAdded: rec('weir_sets', 'added') }).toEqual({
        podsRemoved: 1,
        podsAdded: 0,
        ipsRemoved: 2,
        setsRewritten: 1,
        setsAdded: 0,
      });
      expect(rec('weir_classes', 'added')).toBeGreaterThan(0);
      // The violation of the downtime (svc:9000, allowed since the restart) waited in the pinned ring buffer and was reported.
      expect(logLines(b).find((l) => l.event === 'violation' && l.destination === SVC4 && l.port === 9000)).toMatchObject({ verdict: 'drop', pod: 'client', hook: 'connect4' });
      const line = logLines(b).find((l) => l.msg === 'pinned datapath state reconciled with the desired state');
      expect(line?.reconciled).toBeTruthy();
      console.log(
        `crash: first start ready in ${firstReadyMs} ms; SIGKILL to new agent ready ${downMs} ms (its start ${restartMs} ms); window: ${totals.allowed} allowed calls ok, ${totals.denied} denied with EPERM, ${echoed} stream echoes, ` +
          `${watch.samples} hook samples; reconciled ${JSON.stringify(line?.reconciled)}`,
      );
    } finally {
      watch?.stop();
      await stopTraffic(t);
      await kill(a, 'SIGKILL');
      if (b) await kill(b, 'SIGTERM');
      weirCleanup(pinDir);
    }
  }, 90_000);

  it('2. upgrade: objects built differently replace the old ones by link update under traffic; a capacity change and a map whose layout changed are migrated, not reused', async () => {
    const pinDir = newPinDir('upgrade');
    let t: Awaited<ReturnType<typeof startTraffic>> | undefined;
    let watch: HookWatch | undefined;
    const agents: AgentRun[] = [];
    const start = async (o: Parameters<typeof startAgent>[0]): Promise<{ run: AgentRun; ms: number }> => {
      const run = await startAgent(o);
      agents.push(run);
      return { run, ms: await ready(run) };
    };
    try {
      const a = (await start({ pinDir, objectsDir: objectsOld })).run;
      const links = linkIds(pinDir);
      const oldProgs = hookPrograms().map((h) => h.weir[0] as number);
      const oldTags = oldProgs.map((id) => progInfo(id).tag);
      t = await startTraffic();
      await sleep(500);
      let k = await snapshot(t.traffic, pinDir);

      // The rolling update: the old agent is stopped (SIGTERM), the new build starts on the same pins.
      watch = new HookWatch();
      await kill(a, 'SIGTERM');
      const b = await start({ pinDir, objectsDir: objectsNew });
      await sleep(1000);
      let k2 = await snapshot(t.traffic, pinDir);
      const upgrade = checkWindow(k2.tallies, k.kernel, k2.kernel);
      checkStreams(t.streams);
      expect(watch.bad).toEqual([]);
      expect(linkIds(pinDir)).toEqual(links);
      const newProgs = hookPrograms().map((h) => h.weir[0] as number);
      for (const [i, id] of newProgs.entries()) {
        expect(id).not.toBe(oldProgs[i]);
        expect(progInfo(id).tag).not.toBe(oldTags[i]); // really another build
      }
      const attached = logLines(b.run).find((l) => l.msg === 'datapath attached to the pods cgroup root')?.programs as { action: string }[];
      expect(attached.map((x) => x.action)).toEqual(PROGRAMS.map(() => 'updated'));

      // A capacity change (--max-pods): weir_pods, weir_pod_ips and weir_counters
      // have another max_entries; they are migrated with their entries.
      k = k2;
      await kill(b.run, 'SIGTERM');
      const c = await start({ pinDir, objectsDir: objectsNew, extra: ['--max-pods', '1024'] });
      await sleep(1000);
      await t.traffic.pause();
      const capWindow = t.traffic.reset();
      t.traffic.resume();
      for (const [key, tally] of capWindow) expect(tally.failures, key).toEqual([]);
      const migrated = logLines(c.run).filter((l) => typeof l.map === 'string' && l.reason === 'layout');
      expect(migrated.map((l) => l.map).sort()).toEqual(['weir_counters', 'weir_pod_ips', 'weir_pods']);
      expect(migrated.every((l) => typeof l.copied === 'number')).toBe(true);
      expect(withPinned(pinDir, 'weir_pods', (m) => m.maxEntries)).toBe(1024);
      expect(readdirSync(pinDir).sort()).toEqual(['links', 'maps']); // staging pins renamed over the old ones
      expect(linkIds(pinDir)).toEqual(links);
      k = await snapshot(t.traffic, pinDir);

      // A build whose weir_sets layout changed: the pinned map (stand-in: one
      // of another value size, as the old build would have left it) cannot be
      // reused. The policy maps start over; the old programs keep enforcing on
      // their own maps until the new policy is written, then the links move.
      await kill(c.run, 'SIGTERM');
      const setsPin = join(pinDir, 'maps', 'weir_sets');
      rmSync(setsPin); // the old programs keep their map; only the pin changes
      const made = spawnSync('bpftool', ['map', 'create', setsPin, 'type', 'array', 'key', '4', 'value', '32', 'entries', '4096', 'name', 'weir_sets']);
      expect(made.status, made.stderr.toString()).toBe(0);
      const d = await start({ pinDir, objectsDir: objectsNew, extra: ['--max-pods', '1024'] });
      await sleep(1000);
      k2 = await snapshot(t.traffic, pinDir);
      const layout = checkWindow(k2.tallies, k.kernel, k2.kernel);
      checkStreams(t.streams);
      watch.stop();
      expect(watch.bad).toEqual([]);
      const lines = logLines(d.run);
      const mig = lines.filter((l) => typeof l.map === 'string' && (l.reason === 'layout' || l.reason === 'consistency'));
      expect(mig.find((l) => l.map === 'weir_sets')).toMatchObject({ reason: 'layout', copied: null, from: { valueSize: 32 }, to: { valueSize: 16 } });
      // (weir_fqdn_keys and weir_trie_tails hold weir_classes ids: they migrate with them.)
      expect(mig.filter((l) => l.reason === 'consistency').map((l) => l.map).sort()).toEqual(['weir_classes', 'weir_fqdn_keys', 'weir_nodes', 'weir_pod_ips', 'weir_pods', 'weir_trie_tails']);
      const order = lines.map((l) => l.msg);
      expect(order.indexOf('policy applied')).toBeLessThan(order.indexOf('datapath attached to the pods cgroup root'));
      expect(withPinned(pinDir, 'weir_sets', (m) => m.valueSize)).toBe(16);
      expect(linkIds(pinDir)).toEqual(links);
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      console.log(
        `upgrade: new build ready in ${b.ms} ms, window ${upgrade.allowed} allowed ok / ${upgrade.denied} denied EPERM; ` +
          `capacity migration ready in ${c.ms} ms; layout migration ready in ${d.ms} ms, window ${layout.allowed} allowed ok / ${layout.denied} denied EPERM; ${watch.samples} hook samples`,
      );
    } finally {
      watch?.stop();
      await stopTraffic(t);
      for (const r of agents) await kill(r, 'SIGTERM');
      weirCleanup(pinDir);
    }
  }, 120_000);

  it('3. reconciliation: pinned maps edited behind the agent\'s back equal a fresh writer\'s on the same model after restart', async () => {
    const pinDir = newPinDir('reconcile');
    const refPin = newPinDir('reference');
    const a = await startAgent({ pinDir });
    let b: AgentRun | undefined;
    let ref: Datapath | undefined;
    try {
      await ready(a);
      const client = sb.pod('team-a', 'client');
      const worker = sb.pod('team-a', 'worker');
      await kill(a, 'SIGKILL');

      // Behind its back, through the addon on the pins:
      const cgClient = cgroupIdOf(client.cgroupDir);
      const vClient = decodePodValue(withPinned(pinDir, 'weir_pods', (m) => m.lookup(u64Key(cgClient))) as Buffer);
      const bogusCg = 0x7eadbeef00000001n;
      withPinned(pinDir, 'weir_pods', (m) => {
        expect(m.delete(u64Key(cgroupIdOf(worker.cgroupDir)))).toBe(true); // a pod entry deleted
        m.update(u64Key(bogusCg), encodePodValue({ setId: vClient.setId, endpointId: vClient.endpointId, flags: 0 })); // a pod that does not exist, sharing the client's counters
      });
      const set = decodeSetValue(withPinned(pinDir, 'weir_sets', (m) => m.lookup(u32Key(vClient.setId))) as Buffer);
      withPinned(pinDir, 'weir_sets', (m) => m.update(u32Key(vClient.setId), encodeSetValue({ ...set, flags: set.flags & ~SET_F_E_ISOLATED }))); // the set no longer isolates
      withPinned(pinDir, 'weir_nodes', (m) => {
        const root = decodeTrieNode(m.lookup(u32Key(set.root4)) as Buffer);
        root[198] = root[10] ?? 0; // a trie node changed: 198/8 now leads where 10/8 does
        m.update(u32Key(set.root4), encodeTrieNode(root));
      });
      withPinned(pinDir, 'weir_pod_ips', (m) => m.update(encodePodIpKey({ family: 2, addr: addressBytes('10.99.99.99').bytes }), encodePodIpValue(vClient.endpointId)));
      // The edits are real: the old programs, still attached, now let the client out.
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).ok).toBe(true);

      b = await startAgent({ pinDir });
      await ready(b);

      // The same model written by a fresh writer into maps of its own (not attached).
      ref = await Datapath.open({ bpffs: BPFFS, pinDir: refPin, podLevel: cgroupLevel(sb.podsCgroupRoot), logger: pino({ level: 'silent' }) });
      const store = new ObjectStore();
      const src = new ManifestSource({ dir: manifests, store, logger: pino({ level: 'silent' }), resyncIntervalMs: 0 });
      await src.start();
      await src.stop();
      const state = new PolicyEngine(sb.nodeName).compute(store);
      ref.writer.apply(
        state,
        state.pods.map((p) => {
          const pod = sb.listPods().find((x) => x.uid === p.uid) as SandboxPod;
          return { uid: p.uid, namespace: p.namespace, name: p.name, cgroupId: cgroupIdOf(pod.cgroupDir), setKey: p.setKey, ips: (p.pod.status?.podIPs ?? []).map((x) => x.ip) };
        }),
      );
      const got = resolvedMaps(pinDir);
      const want = resolvedMaps(refPin);
      expect([...got.pods.keys()].sort()).toEqual(sb.listPods().map((p) => cgroupIdOf(p.cgroupDir).toString()).sort());
      expect(got).toEqual(want);

      const m = await metricsText(b);
      const rec = (map: string, action: string): number => metricValue(m, 'weir_reconcile_entries_total', { map, action });
      expect({
        pods: [rec('weir_pods', 'added'), rec('weir_pods', 'removed'), rec('weir_pods', 'rewritten')],
        sets: [rec('weir_sets', 'added'), rec('weir_sets', 'removed'), rec('weir_sets', 'rewritten')],
        nodes: [rec('weir_nodes', 'added'), rec('weir_nodes', 'removed'), rec('weir_nodes', 'rewritten')],
        classes: [rec('weir_classes', 'added'), rec('weir_classes', 'removed')],
      }).toEqual({ pods: [1, 1, 0], sets: [0, 0, 1], nodes: [1, 1, 0], classes: [0, 0] });
      expect(rec('weir_pod_ips', 'removed')).toBeGreaterThanOrEqual(1);
      // And the packets agree.
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      expect((await probeTcp(sb, 'team-a/worker', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      expect((await probeTcp(sb, 'team-a/worker', 'svc', 8080)).ok).toBe(true);
      console.log(`reconcile: ${JSON.stringify(logLines(b).find((l) => l.msg === 'pinned datapath state reconciled with the desired state')?.reconciled)}`);

      // A policy that no longer compiles (over 64 port intervals for one
      // destination) after a restart: its set keeps the version the previous
      // writer left, as it would in a running agent, rather than failing closed.
      const bindings = (st: typeof state): PodBinding[] =>
        st.pods.map((p) => ({ uid: p.uid, namespace: p.namespace, name: p.name, cgroupId: cgroupIdOf((sb.listPods().find((x) => x.uid === p.uid) as SandboxPod).cgroupDir), setKey: p.setKey }));
      const keepPin = newPinDir('keep');
      const open = (dir: string): Promise<Datapath> => Datapath.open({ bpffs: BPFFS, pinDir: dir, podLevel: cgroupLevel(sb.podsCgroupRoot), logger: pino({ level: 'silent' }) });
      let dp = await open(keepPin);
      dp.writer.apply(state, bindings(state));
      dp.close();
      const good = resolvedMaps(keepPin);
      const broken = validateObject({
        apiVersion: 'weir.dev/v1alpha1',
        kind: 'EgressPolicy',
        metadata: { name: 'governed', namespace: 'team-a' },
        spec: {
          podSelector: { matchLabels: { tier: 'governed' } },
          egress: [{ to: [{ ipBlock: { cidr: `${SVC4}/32` } }], ports: Array.from({ length: 70 }, (_, i) => ({ protocol: 'TCP', port: 1000 + 2 * i })) }],
        },
      });
      if (!broken.ok) throw new Error('the test policy does not validate');
      store.upsert(broken.object);
      const state2 = new PolicyEngine(sb.nodeName).compute(store);
      dp = await open(keepPin);
      const res = dp.writer.apply(state2, bindings(state2));
      dp.close();
      expect(res.failedSets.length).toBe(1);
      expect(resolvedMaps(keepPin)).toEqual(good);
      // Without a previous version, the same set fails closed.
      const freshPin = newPinDir('fresh');
      dp = await open(freshPin);
      dp.writer.apply(state2, bindings(state2));
      dp.close();
      expect(resolvedMaps(freshPin).pods.get(cgClient.toString())).toContain(`${SVC4}:8080/6=drop`);
      expect(good.pods.get(cgClient.toString())).toContain(`${SVC4}:8080/6=allow`);
      for (const d of [keepPin, freshPin]) removePins(d);
    } finally {
      ref?.close();
      await kill(a, 'SIGKILL');
      if (b) await kill(b, 'SIGTERM');
      weirCleanup(pinDir);
      if (existsSync(refPin)) rmSync(refPin, { recursive: true });
    }
  }, 60_000);

  it('4. API server unreachable at start: the pinned policy is enforced, /readyz is not ready, requests are retried with backoff, ready once it is up', async () => {
    // (A watch dropped mid-stream keeps enforcing: test/e2e/kubernetes-agent.test.ts.)
    const pinDir = newPinDir('outage');
    const api = new FakeApiServer({ bookmarkIntervalMs: 1000 });
    await api.start();
    const agents: AgentRun[] = [];
    try {
      populate(api);
      const kubeconfig = await api.writeKubeconfig(work, 'kubeconfig-outage');
      const source = ['--kubeconfig', kubeconfig];
      const a = await startAgent({ pinDir, source });
      agents.push(a);
      await ready(a);
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      await kill(a, 'SIGKILL');
      await api.stop();

      const b = await startAgent({ pinDir, source });
      agents.push(b);
      await waitFor('the metrics listener', async () => (await readyz(b)) !== 0, 30_000);
      const startedAt = Date.now();
      // Several retry rounds: not ready, and the previous agent's policy is in force.
      const notReady: number[] = [];
      while (Date.now() - startedAt < 2500) {
        notReady.push(await readyz(b));
        await sleep(250);
      }
      expect(new Set(notReady)).toEqual(new Set([503]));
      expect(metricValue(await metricsText(b), 'weir_agent_ready', {})).toBe(0);
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      expect((await probeTcp(sb, 'team-a/client', 'svc', 8080)).ok).toBe(true);
      expect((await probeTcp(sb, 'team-b/free', 'internet', 443)).ok).toBe(true);
      const retries = logLines(b).filter((l) => l.msg === 'Kubernetes API request failed; retrying (known objects stay in effect)' && l.resource === 'pods');
      expect(retries.length).toBeGreaterThanOrEqual(2);
      const delays = retries.map((l) => Number(l.retryInMs));
      expect(delays[1]).toBeGreaterThan(delays[0] as number); // backoff
      expect(retries.every((l) => l.reason === 'connection')).toBe(true);

      await api.start();
      const upAt = Date.now();
      await ready(b, 40_000);
      const readyAfterMs = Date.now() - upAt;
      expect(metricValue(await metricsText(b), 'weir_agent_ready', {})).toBe(1);
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      expect((await probeTcp(sb, 'team-a/client', 'svc', 8080)).ok).toBe(true);
      console.log(`API outage at start: not ready for ${upAt - startedAt} ms while enforcing the pinned policy (retries every ${delays.join(', ')} ms); ready ${readyAfterMs} ms after the API server came back`);
    } finally {
      for (const r of agents) await kill(r, 'SIGKILL');
      await api.stop();
      weirCleanup(pinDir);
    }
  }, 90_000);

  it('7. local security: the API socket refuses other users; no token in any log line through 401, 403, 500 and disconnects', async () => {
    const pinDir = newPinDir('security');
    const marker = `weir-secret-token-${Math.random().toString(36).slice(2)}`;
    const api = new FakeApiServer({ token: marker, bookmarkIntervalMs: 300 });
    await api.start();
    let a: AgentRun | undefined;
    try {
      populate(api);
      const kubeconfig = await api.writeKubeconfig(work, 'kubeconfig-marker');
      a = await startAgent({ pinDir, source: ['--kubeconfig', kubeconfig], logLevel: 'trace' });
      await ready(a);
      const run = a;

      // The local API: a 0600 socket in a 0700 directory, both root's. Another user cannot connect, even with the directory opened up.
      const dir = resolve(run.socket, '..');
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      expect(statSync(run.socket).mode & 0o777).toBe(0o600);
      expect(statSync(run.socket).uid).toBe(0);
      const asNobody = (): { code: string; status: number | null } => {
        const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--', NODE, '-e', CONNECT_JS, run.socket], { encoding: 'utf8', timeout: 15_000 });
        return { code: r.stdout.trim(), status: r.status };
      };
      expect(asNobody()).toEqual({ code: 'EACCES', status: 1 });
      chmodSync(dir, 0o755);
      try {
        expect(asNobody()).toEqual({ code: 'EACCES', status: 1 });
      } finally {
        chmodSync(dir, 0o700);
      }
      const root = spawnSync(NODE, ['-e', CONNECT_JS, run.socket], { encoding: 'utf8', timeout: 15_000 });
      expect(root.stdout.trim()).toBe('connected');

      // Errors of every kind from the API server, with the agent logging at trace level.
      const before = logLines(run).length;
      api.failNext(3, 401, undefined, { resource: 'pods' });
      api.failNext(3, 403, undefined, { resource: 'services' });
      api.failNext(3, 500, undefined, { resource: 'namespaces' });
      api.dropWatches();
      for (const status of [401, 403, 500]) await waitFor(`retries after ${status}`, () => logLines(run).slice(before).some((l) => l.status === status), 30_000);
      // Kubernetes Events: a violation to report, and the writes fail.
      api.failNext(2, 500, undefined, { resource: 'events' });
      api.failNext(2, 401, undefined, { resource: 'events' });
      expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      await api.stop();
      await sleep(1500);
      await api.start();
      await waitFor('an Event written after the failures', () => api.list('Event').length > 0, 30_000);
      await waitFor('the watches back', () => api.openWatches() >= 7, 30_000);
      await kill(run, 'SIGTERM');
      const text = run.out.join('') + run.err.join('');
      expect(text).toMatch(/"status":401/);
      expect(text).toMatch(/"status":403/);
      expect(text).toMatch(/"status":500/);
      expect(text.length).toBeGreaterThan(10_000);
      expect(text).not.toContain(marker);
      expect(text).not.toContain(marker.slice(-12)); // not even in part
      console.log(`security: ${text.split('\n').length} log lines at trace through 401/403/500/outage, none with the token`);
    } finally {
      if (a) await kill(a, 'SIGKILL');
      await api.stop();
      weirCleanup(pinDir);
    }
  }, 90_000);

  it('7. programs of others on the same hooks stay attached and keep running through weir\'s attach, crash restart and upgrade; an exclusive one is never replaced', async () => {
    const pinDir = newPinDir('foreign');
    const fixture = await BpfObject.load(join(ROOT, 'build/bpf/fixtures/addon_fixture.bpf.o'));
    const foreign: BpfLink[] = [];
    const agents: AgentRun[] = [];
    const exclusiveDir = join(BPFFS, `weir-lc-${process.pid}-exclusive`);
    try {
      // Attached first, alongside (BPF_F_ALLOW_MULTI, as a bpf_link): a CNI's programs.
      foreign.push(fixture.program('fixture_egress').attachCgroup(sb.podsCgroupRoot));
      foreign.push(fixture.program('fixture_connect4').attachCgroup(sb.podsCgroupRoot));
      const ids = { egress: fixture.program('fixture_egress').id, connect4: fixture.program('fixture_connect4').id };
      const runs = (): { egress: bigint; connect4: bigint } => {
        const c = fixture.map('fixture_counters');
        const raw = c.lookup(u32Key(0)) as Buffer;
        let egress = 0n;
        for (let i = 0; i < c.possibleCpus; i++) egress += raw.readBigUInt64LE(i * 8);
        return { egress, connect4: (fixture.map('fixture_array').lookup(u32Key(1)) as Buffer).readBigUInt64LE(0) };
      };
      const check = async (stage: string): Promise<void> => {
        const hooks = hookPrograms();
        for (const h of hooks) {
          expect(h.weir.length, `${stage}: ${h.program}`).toBe(1);
          expect(h.flags, `${stage}: ${h.program}`).toBe(BPF.BPF_F_ALLOW_MULTI);
        }
        expect(hooks.find((h) => h.program === 'weir_egress')?.others, stage).toEqual([ids.egress]);
        expect(hooks.find((h) => h.program === 'weir_connect4')?.others, stage).toEqual([ids.connect4]);
        const r0 = runs();
        expect((await probeTcp(sb, 'team-a/client', 'svc', 8080)).ok, stage).toBe(true);
        expect((await probeTcp(sb, 'team-a/client', 'internet', 443, { timeoutMs: 2000 })).code, stage).toBe('EPERM');
        const r1 = runs();
        expect(r1.egress, stage).toBeGreaterThan(r0.egress); // still running
        expect(r1.connect4 - r0.connect4, stage).toBeGreaterThanOrEqual(2n); // both connects: the foreign program runs whatever weir says
      };
      const a = await startAgent({ pinDir, objectsDir: objectsOld });
      agents.push(a);
      await ready(a);
      await check('attached');
      await kill(a, 'SIGKILL');
      const b = await startAgent({ pinDir, objectsDir: objectsOld });
      agents.push(b);
      await ready(b);
      await check('restarted after a crash');
      await kill(b, 'SIGTERM');
      const c = await startAgent({ pinDir, objectsDir: objectsNew });
      agents.push(c);
      await ready(c);
      await check('upgraded');
      await kill(c, 'SIGTERM');
      weirCleanup(pinDir);
      for (const l of foreign.splice(0)) {
        l.detach();
        l.close();
      }

      // A program attached exclusively (legacy attach without flags) on connect4:
      // the kernel lets nothing run beside it. weir does not replace it; it
      // refuses to start, says why, and leaves nothing attached.
      expect(spawnSync('bpftool', ['prog', 'loadall', join(ROOT, 'build/bpf/fixtures/addon_fixture.bpf.o'), exclusiveDir]).status).toBe(0);
      const att = spawnSync('bpftool', ['cgroup', 'attach', sb.podsCgroupRoot, 'connect4', 'pinned', join(exclusiveDir, 'fixture_connect4')], { encoding: 'utf8' });
      expect(att.status, att.stderr).toBe(0);
      const excl = progQuery(sb.podsCgroupRoot, BPF.BPF_CGROUP_INET4_CONNECT);
      expect(excl.attachFlags & BPF.BPF_F_ALLOW_MULTI).toBe(0);
      const d = await startAgent({ pinDir, objectsDir: objectsOld });
      agents.push(d);
      const { code } = await d.exited;
      expect(code).not.toBe(0);
      const said = d.out.join('') + d.err.join('');
      expect(said).toMatch(/attached to the connect4 hook .* in exclusive mode \(without BPF_F_ALLOW_MULTI\).*weir never replaces another program/);
      const hooks = hookPrograms();
      expect(hooks.every((h) => h.weir.length === 0)).toBe(true); // egress and ingress, attached before connect4 failed, were rolled back
      expect(progQuery(sb.podsCgroupRoot, BPF.BPF_CGROUP_INET4_CONNECT).progIds).toEqual(excl.progIds);
      expect(existsSync(join(pinDir, 'links')) ? readdirSync(join(pinDir, 'links')) : []).toEqual([]);
    } finally {
      for (const r of agents) await kill(r, 'SIGKILL');
      for (const l of foreign) {
        l.detach();
        l.close();
      }
      if (existsSync(exclusiveDir)) {
        spawnSync('bpftool', ['cgroup', 'detach', sb.podsCgroupRoot, 'connect4', 'pinned', join(exclusiveDir, 'fixture_connect4')]);
        rmSync(exclusiveDir, { recursive: true });
      }
      fixture.close();
      weirCleanup(pinDir);
    }
  }, 120_000);

  it('7. weir attaches only with bpf_link (BPF_F_ALLOW_MULTI): no legacy attach and no BPF_F_REPLACE anywhere in the addon', () => {
    const dir = join(ROOT, 'native');
    const sources = readdirSync(dir).filter((f) => /\.(cc|h)$/.test(f)).map((f) => ({ f, text: readFileSync(join(dir, f), 'utf8') }));
    expect(sources.length).toBeGreaterThan(5);
    const uses = (re: RegExp): string[] => sources.flatMap(({ f, text }) => text.split('\n').filter((l) => re.test(l)).map((l) => `${f}: ${l.trim()}`));
    // Legacy attach (BPF_PROG_ATTACH) in any spelling: none.
    expect(uses(/bpf_prog_attach|BPF_PROG_ATTACH|bpf_program__attach_cgroup_opts|prog_attach_opts/)).toEqual([]);
    // BPF_F_REPLACE only as a constant exported to TypeScript.
    expect(uses(/BPF_F_REPLACE/)).toEqual(['addon.cc: C(BPF_F_REPLACE);']);
    // The one attach: bpf_program__attach_cgroup (BPF_LINK_CREATE; a cgroup link is always multi-attach).
    expect(uses(/bpf_program__attach\w*\(/).map((l) => l.replace(/\s+/g, ' '))).toEqual([expect.stringMatching(/^program\.cc: bpf_link\* link = bpf_program__attach_cgroup\(prog, cg\);$/)]);
    // And the only link update: bpf_link__update_program (no old-program check, no flags).
    expect(uses(/bpf_link_update\(|bpf_link__update\w*\(/)).toEqual([expect.stringMatching(/^link\.cc: .*bpf_link__update_program\(link, prog\);$/)]);
  });
});

const CONNECT_JS = `const s = require('node:net').connect(process.argv[1]);
s.on('connect', () => { console.log('connected'); process.exit(0); });
s.on('error', (e) => { console.log(e.code); process.exit(1); });`;

/** The sandbox's namespaces and pods, and the policy, in a fake API server. */
function populate(api: FakeApiServer): void {
  const m = sb.manifests();
  for (const ns of m.namespaces) api.create(ns as unknown as FakeObjectInput);
  for (const pod of m.pods) api.create(pod as unknown as FakeObjectInput);
  api.create({
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name: 'governed', namespace: 'team-a' },
    spec: {
      podSelector: { matchLabels: { tier: 'governed' } },
      egress: [{ to: [{ ipBlock: { cidr: `${SVC4}/32` } }, { ipBlock: { cidr: `${SVC6}/128` } }], ports: [{ protocol: 'TCP', port: 8080 }, { protocol: 'UDP', port: 514 }] }],
    },
  });
}

/** Destinations each pod's verdict is resolved for, from the maps alone. */
const DESTS: { addr: string; proto: number; port: number }[] = [
  { addr: SVC4, proto: 6, port: 8080 },
  { addr: SVC4, proto: 6, port: 9000 },
  { addr: SVC4, proto: 17, port: 514 },
  { addr: SVC4, proto: 17, port: 53 },
  { addr: '10.20.0.11', proto: 6, port: 8080 },
  { addr: NET4, proto: 6, port: 443 },
  { addr: NET4, proto: 17, port: 53 },
  { addr: '198.51.100.20', proto: 6, port: 8080 },
  { addr: SVC6, proto: 6, port: 8080 },
  { addr: SVC6, proto: 17, port: 514 },
  { addr: NET6, proto: 6, port: 443 },
  { addr: '10.244.0.2', proto: 6, port: 80 },
];

/**
 * What the maps under a pin directory decide, independent of slot numbers:
 * per pod (cgroup id) its set's flags and the verdict for each of DESTS
 * (walking the trie and the port classes as the datapath does), and which
 * pod each address of weir_pod_ips belongs to.
 */
function resolvedMaps(pinDir: string): { pods: Map<string, string[]>; addresses: Map<string, string> } {
  const pods = new Map<string, string[]>();
  const cgOfEndpoint = new Map<number, string>();
  const dump = withPinned(pinDir, 'weir_pods', (m) => m.dump());
  withPinned(pinDir, 'weir_sets', (sets) =>
    withPinned(pinDir, 'weir_nodes', (nodes) =>
      withPinned(pinDir, 'weir_trie_tails', (tails) =>
      withPinned(pinDir, 'weir_classes', (classes) => {
        for (let i = 0; i < dump.count; i++) {
          const cg = dump.keys.readBigUInt64LE(i * 8).toString();
          const v = decodePodValue(dump.values.subarray(i * SIZES.weir_pod_value, (i + 1) * SIZES.weir_pod_value));
          cgOfEndpoint.set(v.endpointId, cg);
          const raw = sets.lookup(u32Key(v.setId));
          const set = raw ? decodeSetValue(raw) : { root4: 0, root6: 0, flags: 0, generation: 0 };
          const out = [`flags=${set.flags}`];
          for (const d of DESTS) {
            const a = addressBytes(d.addr);
            const cls = walkEncoded(
              a.family === 4 ? set.root4 : set.root6,
              a.bytes,
              (n) => {
                const b = nodes.lookup(u32Key(n));
                return b ? decodeTrieNode(b) : undefined;
              },
              (t) => {
                const b = tails.lookup(u32Key(t));
                return b ? decodeTrieTail(b) : undefined;
              },
            );
            const c = cls ? decodePortClass(classes.lookup(u32Key(cls)) as Buffer) : { anyBits: 0, ranges: [] };
            const bits = c.anyBits | c.ranges.filter((r) => r.proto === d.proto && r.lo <= d.port && d.port <= r.hi).reduce((x, r) => x | r.bits, 0);
            out.push(`${d.addr}:${d.port}/${d.proto}=${decide(set.flags, bits).verdict}`);
          }
          pods.set(cg, out);
        }
      }),
      ),
    ),
  );
  const addresses = new Map<string, string>();
  const ips = withPinned(pinDir, 'weir_pod_ips', (m) => m.dump());
  for (let i = 0; i < ips.count; i++) {
    const key = ips.keys.subarray(i * SIZES.weir_pod_ip_key, (i + 1) * SIZES.weir_pod_ip_key).toString('hex');
    addresses.set(key, cgOfEndpoint.get(decodePodIpValue(ips.values.subarray(i * SIZES.weir_pod_ip_value, (i + 1) * SIZES.weir_pod_ip_value))) ?? 'none');
  }
  return { pods, addresses };
}
