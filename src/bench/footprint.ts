// Footprint: what the agent costs a node. The real CLI (`weir agent
// --manifests DIR`, configured as the DaemonSet runs it: metrics server,
// audit log, info logging) runs as a child process on a kubelet-style cgroup
// tree of its own; its RSS (VmRSS, and the peak VmHWM) and CPU
// (utime+stime from /proc/PID/stat over a window) are read from /proc, at
// idle and while a process in one of its pods makes 10,000 denied sends per
// second, to one destination and spread over 1,000 destinations. The
// cluster model holds N pods (a fixed number of them on this node, with
// real pod cgroups, the rest on other nodes as peers), 50 EgressPolicies
// and a ClusterEgressPolicy with pod, namespace and CIDR peers. BPF map
// memory is what the kernel accounts for each map (memlock in the map fd's
// fdinfo), next to the size computed from the map definitions.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, get } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BpfMap } from '../native/index.js';
import { MAP_NAMES } from '../datapath/datapath.js';
import { decodePerCpuU64, u32Key, STAT_NAMES, type StatName } from '../datapath/abi.js';
import { FakeApiServer, type FakeObjectInput } from '../sandbox/api-server.js';
import { BPFFS, scratch } from './scratch.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const WEIR_CLI = join(root, 'dist', 'cli', 'weir.js');
export const NODE_NAME = 'bench-node';
const NAMESPACES = 20;
const APPS = 50;
const POLICIES = 50;

// ---------------------------------------------------------------- the model

export interface NodePod {
  uid: string;
  namespace: string;
  name: string;
  /** Relative to the pods root (cgroupfs layout, BestEffort). */
  cgroup: string;
}

export interface ClusterModel {
  /** Manifest files (JSON Lists) by file name. */
  files: Map<string, unknown>;
  nodePods: NodePod[];
  policies: number;
  cidrs: number;
}

function uid(tag: number, i: number): string {
  return `00000000-0000-4${tag.toString(16).padStart(3, '0')}-8000-${i.toString(16).padStart(12, '0')}`;
}

function podIp(i: number): string {
  return `10.${128 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
}

/** The address the violation generators send to (one flow), and the range of many flows. */
export const ONE_FLOW_DST = '203.0.113.7';
export const MANY_FLOWS_BASE = '198.18';

/**
 * A cluster of `clusterPods` pods in 20 namespaces and 50 apps (Deployments),
 * `nodePods` of them on this node; 50 EgressPolicies (one per app: its next
 * app by pod selector on a named port, a team's namespaces by namespace and
 * pod selector, 6 CIDRs with ports and an except, DNS; denied: 198.18.0.0/15
 * and 203.0.113.0/24) and a ClusterEgressPolicy allowing DNS to every pod.
 * Pod 0 (namespace ns0, app0) is the pod the violation generators run in.
 */
export function clusterModel(clusterPods: number, nodePods: number, tag = 0): ClusterModel {
  const files = new Map<string, unknown>();
  const list = (items: unknown[]): unknown => ({ apiVersion: 'v1', kind: 'List', items });
  const namespaces = [];
  for (let n = 0; n < NAMESPACES; n++) {
    namespaces.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns${n}`, labels: { team: `t${n % 5}` } } });
  }
  files.set('namespaces.json', list(namespaces));
  const node: NodePod[] = [];
  const PER_FILE = 1000;
  for (let f = 0; f * PER_FILE < clusterPods; f++) {
    const items = [];
    for (let i = f * PER_FILE; i < Math.min(clusterPods, (f + 1) * PER_FILE); i++) {
      const app = `app${i % APPS}`;
      const ns = `ns${i % NAMESPACES}`;
      const id = uid(tag, i);
      const name = `${app}-5d8f7c9b4-${i.toString(36).padStart(5, '0')}`;
      const onNode = i < nodePods;
      items.push({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: {
          name,
          namespace: ns,
          uid: id,
          labels: { app, 'pod-template-hash': '5d8f7c9b4', 'weir.dev/domain': `d${i % 4}` },
          ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${app}-5d8f7c9b4`, uid: uid(tag, 0x100000 + (i % APPS)), controller: true }],
        },
        spec: { nodeName: onNode ? NODE_NAME : `node-${1 + Math.floor(i / 110)}`, containers: [{ name: 'main', ports: [{ name: 'http', containerPort: 8080 }] }] },
        status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: podIp(i) }] },
      });
      if (onNode) node.push({ uid: id, namespace: ns, name, cgroup: join('besteffort', `pod${id}`) });
    }
    files.set(`pods-${String(f).padStart(3, '0')}.json`, list(items));
  }
  let cidrs = 0;
  const policies = [];
  for (let p = 0; p < POLICIES; p++) {
    const blocks = [];
    for (let j = 0; j < 6; j++) {
      const len = [21, 24, 28][j % 3] as number;
      const cidr = `100.${64 + p}.${j * 8}.0/${len}`;
      blocks.push({ ipBlock: j === 0 ? { cidr, except: [`100.${64 + p}.0.128/25`] } : { cidr } });
      cidrs += j === 0 ? 2 : 1;
    }
    policies.push({
      apiVersion: 'weir.dev/v1alpha1',
      kind: 'EgressPolicy',
      metadata: { name: `app${p % APPS}-egress`, namespace: `ns${p % NAMESPACES}` },
      spec: {
        podSelector: { matchLabels: { app: `app${p % APPS}` } },
        egress: [
          { to: [{ podSelector: { matchLabels: { app: `app${(p + 1) % APPS}` } } }], ports: [{ port: 'http' }] },
          { to: [{ namespaceSelector: { matchLabels: { team: `t${p % 5}` } }, podSelector: { matchLabels: { 'weir.dev/domain': `d${p % 4}` } } }], ports: [{ protocol: 'TCP', port: 443 }] },
          { to: blocks, ports: [{ protocol: 'TCP', port: 443 }, { protocol: 'TCP', port: 5432 + (p % 4) }] },
          { to: [{ ipBlock: { cidr: '10.96.0.10/32' } }], ports: [{ protocol: 'UDP', port: 53 }, { protocol: 'TCP', port: 53 }] },
        ],
        deny: [{ to: [{ ipBlock: { cidr: '198.18.0.0/15' } }, { ipBlock: { cidr: '203.0.113.0/24' } }] }],
      },
    });
    cidrs += 3;
  }
  policies.push({
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'ClusterEgressPolicy',
    metadata: { name: 'baseline-dns' },
    spec: { namespaceSelector: {}, podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '10.96.0.10/32' } }], ports: [{ protocol: 'UDP', port: 53 }] }] },
  });
  cidrs += 1;
  files.set('policies.json', list(policies));
  return { files, nodePods: node, policies: policies.length, cidrs };
}

export function writeModel(dir: string, model: ClusterModel): void {
  for (const [name, body] of model.files) writeFileSync(join(dir, name), JSON.stringify(body));
}

// ---------------------------------------------------------------- /proc

export interface ProcSample {
  rssKiB: number;
  hwmKiB: number;
  /** utime + stime in clock ticks. */
  ticks: number;
}

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on every Linux architecture weir builds for

export function procSample(pid: number): ProcSample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  // Fields after "(comm)": state is field 3; utime and stime are fields 14 and 15.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM'), ticks: Number(rest[11]) + Number(rest[12]) };
}

// ---------------------------------------------------------------- BPF maps

export interface MapMemory {
  map: string;
  type: string;
  maxEntries: number;
  /** memlock from the kernel (fdinfo of the map), bytes. */
  kernelBytes: number;
  /** key + value × max_entries (× possible CPUs for per-CPU maps; max_entries bytes for a ring buffer). */
  computedBytes: number;
  perCpu: boolean;
}

export function mapMemory(pinDir: string): { maps: MapMemory[]; possibleCpus: number } {
  const out: MapMemory[] = [];
  let cpus = 0;
  for (const name of MAP_NAMES) {
    const m = BpfMap.openPinned(join(pinDir, 'maps', name));
    try {
      const info = readFileSync(`/proc/self/fdinfo/${m.fd}`, 'utf8');
      const memlock = Number(/^memlock:\s+(\d+)/m.exec(info)?.[1] ?? NaN);
      cpus = m.possibleCpus;
      let computed: number;
      if (m.typeName === 'ringbuf') computed = m.maxEntries;
      else if (m.typeName === 'sk_storage') computed = 0; // per socket, allocated on use
      else computed = m.maxEntries * (m.keySize + (m.perCpu ? Math.ceil(m.valueSize / 8) * 8 * m.possibleCpus : m.valueSize));
      out.push({ map: name, type: m.typeName, maxEntries: m.maxEntries, kernelBytes: memlock, computedBytes: computed, perCpu: m.perCpu });
    } finally {
      m.close();
    }
  }
  return { maps: out, possibleCpus: cpus };
}

export function readStats(pinDir: string): Record<StatName, bigint> {
  const m = BpfMap.openPinned(join(pinDir, 'maps', 'weir_stats'));
  try {
    const out = {} as Record<StatName, bigint>;
    STAT_NAMES.forEach((name, i) => {
      const raw = m.lookup(u32Key(i));
      out[name] = raw ? decodePerCpuU64(raw, m.possibleCpus) : 0n;
    });
    return out;
  } finally {
    m.close();
  }
}

// ---------------------------------------------------------------- helpers

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The commit measured, "+dirty" when tracked files differ from it (others edit the tree while benches run). */
export function sourceTree(): string {
  try {
    const head = execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim() !== '';
    return `${head}${dirty ? '+dirty' : ''}`;
  } catch {
    return 'unknown';
  }
}

function loadAvg(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

function httpGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((res, rej) => {
    const req = get(url, (r) => {
      let body = '';
      r.setEncoding('utf8');
      r.on('data', (c: string) => (body += c));
      r.on('end', () => res({ status: r.statusCode ?? 0, body }));
    });
    req.on('error', rej);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${url}: timeout`)));
  });
}

function metricValue(body: string, name: string, labels = ''): number {
  let sum = 0;
  let found = false;
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (labels && !rest.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    found = true;
  }
  return found ? sum : NaN;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((res) => {
    const t = setTimeout(() => res(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      res(true);
    });
  });
}

async function stopChild(child: ChildProcess | null): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  if (!(await waitExit(child, 5000))) {
    child.kill('SIGKILL');
    await waitExit(child, 2000);
  }
}

// A process in a pod: denied UDP sends (sendmsg4 hook: EPERM, one violation
// each) at a fixed rate, round-robin over `flows` destinations. It moves
// itself into the pod's container cgroup first, prints "go" once sending
// starts and a JSON summary at the end. C, so that it keeps its rate on a
// busy machine (a Node.js sender spends ~20 µs building each EPERM error);
// compiled with the C compiler weir's build already needs (clang).
const GENERATOR_C = `
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
int main(int argc, char **argv) {
  if (argc != 7) return 2;
  int fd = open(argv[1], O_WRONLY);
  if (fd < 0 || dprintf(fd, "%d", getpid()) < 0) { perror(argv[1]); return 1; }
  close(fd);
  long rate = atol(argv[2]), flows = atol(argv[3]), ms = atol(argv[4]);
  struct sockaddr_in *dst = calloc(flows, sizeof *dst);
  for (long i = 0; i < flows; i++) {
    char a[64];
    if (flows == 1) snprintf(a, sizeof a, "%s", argv[5]); else snprintf(a, sizeof a, "%s.%ld.%ld", argv[6], (i >> 8) & 255, i & 255);
    dst[i].sin_family = AF_INET;
    dst[i].sin_port = htons(9);
    if (inet_pton(AF_INET, a, &dst[i].sin_addr) != 1) return 2;
  }
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) { perror("socket"); return 1; }
  printf("go\\n");
  fflush(stdout);
  long sent = 0, eperm = 0, other = 0, k = 0;
  double t0 = now_ms(), el;
  struct timespec tick = { 0, 1000000 };
  while ((el = now_ms() - t0) < ms) {
    long due = (long)(el * rate / 1000.0) - sent;
    for (long j = 0; j < due; j++, sent++, k = (k + 1) % flows) {
      if (sendto(s, "weir-bench", 10, 0, (struct sockaddr *)&dst[k], sizeof dst[k]) < 0) { if (errno == EPERM) eperm++; else other++; }
    }
    nanosleep(&tick, NULL);
  }
  printf("{\\"sent\\":%ld,\\"eperm\\":%ld,\\"other\\":%ld,\\"ms\\":%.1f}\\n", sent, eperm, other, el);
  return 0;
}
`;

/** Compiles the generator into dir; returns the binary's path. */
function buildGenerator(dir: string): string {
  const src = join(dir, 'weir-violator.c');
  const bin = join(dir, 'weir-violator');
  writeFileSync(src, GENERATOR_C);
  let last: unknown = null;
  for (const cc of [process.env.CC, 'cc', 'clang', 'gcc']) {
    if (!cc) continue;
    try {
      execFileSync(cc, ['-O2', '-o', bin, src], { stdio: ['ignore', 'ignore', 'pipe'] });
      return bin;
    } catch (err) {
      last = err;
    }
  }
  throw new Error(`footprint: cannot compile the violation generator (cc, clang, gcc): ${String(last)}`);
}

interface GeneratorRun {
  child: ChildProcess;
  started: Promise<void>;
  result: Promise<{ sent: number; eperm: number; other: number; ms: number }>;
}

function startGenerator(bin: string, containerCgroup: string, rate: number, flows: number, ms: number): GeneratorRun {
  const child = spawn(bin, [join(containerCgroup, 'cgroup.procs'), String(rate), String(flows), String(ms), ONE_FLOW_DST, MANY_FLOWS_BASE], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  let go: () => void = () => {};
  let fail: (e: Error) => void = () => {};
  const started = new Promise<void>((res, rej) => {
    go = res;
    fail = rej;
  });
  const result = new Promise<{ sent: number; eperm: number; other: number; ms: number }>((res, rej) => {
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (c: string) => {
      out += c;
      if (out.includes('go\n')) go();
    });
    child.on('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (code === 0 && line) res(JSON.parse(line) as { sent: number; eperm: number; other: number; ms: number });
      else {
        const e = new Error(`violation generator exited with ${code}: ${out}`);
        fail(e);
        rej(e);
      }
    });
  });
  return { child, started, result };
}

/** A fresh Node.js process per row, importing only the named module (ESM, from the repository root). */
function moduleBaseline(): ModuleBaseline[] {
  const rows: [string, string][] = [
    ['Node.js, nothing loaded', ''],
    ['@kubernetes/client-node alone', "await import('@kubernetes/client-node');"],
    ['the agent\'s modules (dist/agent/agent.js), no state: what `weir agent --manifests` loads', `await import(${JSON.stringify(pathToFileURL(join(root, 'dist', 'agent', 'agent.js')).href)});`],
    [
      'the agent\'s modules and the Kubernetes source and Events reporter (loaded when used: `weir agent` without --manifests)',
      ['agent/agent.js', 'sources/kubernetes.js', 'report/k8s-events.js'].map((m) => `await import(${JSON.stringify(pathToFileURL(join(root, 'dist', m)).href)});`).join(' '),
    ],
  ];
  return rows.map(([what, code]) => {
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', `${code} const m = process.memoryUsage(); console.log(JSON.stringify([m.rss, m.heapUsed]));`], { cwd: root, encoding: 'utf8' });
    const [rss, heap] = JSON.parse(out.trim().split('\n').pop() ?? '[0,0]') as [number, number];
    return { what, rssMiB: rss / 2 ** 20, heapUsedMiB: heap / 2 ** 20 };
  });
}

// ---------------------------------------------------------------- the suite

export type FootprintPhase = 'idle' | 'one flow' | '1,000 flows' | '20,000 flows';

/** Where the agent reads the cluster model: --manifests DIR, or the Kubernetes API (the test API server, src/sandbox/api-server.ts, serving the same objects). */
export type FootprintSource = 'manifests' | 'kubernetes';

export interface FootprintRow {
  clusterPods: number;
  nodePods: number;
  source: FootprintSource;
  policies: number;
  cidrs: number;
  phase: FootprintPhase;
  /** Violations per second achieved (denied sends that failed with EPERM). */
  violationsPerSec: number;
  /** Kernel events sent to the agent per second (aggregation: one per flow per second). */
  eventsPerSec: number;
  /** Events the ring buffer had no room for, per second (counted; their violations ride on the flow's next event). */
  eventsLostPerSec: number;
  windowS: number;
  /** Agent CPU, % of one core: median of the sub-windows. */
  cpuPct: number;
  cpuPctMin: number;
  cpuPctMax: number;
  rssMiB: number;
  /** Peak RSS of the agent since it started (VmHWM). */
  peakRssMiB: number;
}

export interface FootprintStart {
  clusterPods: number;
  nodePods: number;
  source: FootprintSource;
  readyMs: number;
  startCpuS: number;
  rssAtReadyMiB: number;
  /** Agent CPU per /metrics scrape, ms (median of scrapes), and the scrape's size. */
  scrapeCpuMs: number;
  scrapeWallMs: number;
  scrapeBytes: number;
  podsGoverned: number;
  compileFailing: number;
}

/** RSS of a Node.js process that only loads modules, MiB: where the agent's base memory goes. */
export interface ModuleBaseline {
  what: string;
  rssMiB: number;
  heapUsedMiB: number;
}

export interface FootprintResult {
  baseline: ModuleBaseline[];
  /** The commit measured (sourceTree()). */
  tree: string;
  /** 1-minute load average at the start and the end (the machine may be shared). */
  loadAvg: [number, number];
  rows: FootprintRow[];
  starts: FootprintStart[];
  maps: MapMemory[];
  possibleCpus: number;
  config: string;
}

export async function footprint(opts: { quick: boolean; log: (l: string) => void }): Promise<FootprintResult> {
  const load0 = loadAvg();
  const sizes = opts.quick ? [100, 1000] : [100, 1000, 10_000];
  const nodePodsFor = (n: number): number => Math.min(n, 100);
  const windowMs = opts.quick ? 1000 : 10_000;
  const subWindows = opts.quick ? 2 : 5;
  const rate = 10_000;
  const rows: FootprintRow[] = [];
  const starts: FootprintStart[] = [];
  let maps: MapMemory[] = [];
  let possibleCpus = 0;
  const config =
    'weir agent --manifests DIR --node-name bench-node --cgroup-root <own tree> --metrics-addr 127.0.0.1:PORT --api-socket off --audit-log FILE --log-level info (default map capacities), stdout to a file; ' +
    'the Kubernetes API rows: --kubeconfig FILE instead of --manifests DIR, for the test API server (src/sandbox/api-server.ts, in the bench process) serving the same objects';
  // Every size from manifests; 1,000 pods idle also from the Kubernetes API
  // (full runs only: a third agent start would put --quick over its 2 minutes).
  const runs: { clusterPods: number; source: FootprintSource }[] = [
    ...sizes.map((n) => ({ clusterPods: n, source: 'manifests' as const })),
    ...(opts.quick ? [] : [{ clusterPods: 1000, source: 'kubernetes' as const }]),
  ];

  for (const { clusterPods, source } of runs) {
    const nodePods = nodePodsFor(clusterPods);
    const began = Date.now();
    const label = `pods ${String(clusterPods).padStart(6)}${source === 'kubernetes' ? ' (API)' : ''}`;
    const tag = `weir-fp-${process.pid}-${clusterPods}${source === 'kubernetes' ? '-api' : ''}`;
    const scr = scratch();
    const cgRoot = scr.cgroup(tag);
    const podsRoot = join(cgRoot, 'kubepods');
    const pinDir = scr.pinDir(tag);
    const work = scr.dir('weir-fp-');
    const manifests = join(work, 'manifests');
    let agent: ChildProcess | null = null;
    let gen: ChildProcess | null = null;
    scr.defer(
      () => agent?.kill('SIGKILL'),
      () => stopChild(agent),
    );
    scr.defer(() => gen?.kill('SIGKILL'));
    try {
      mkdirSync(manifests, { recursive: true });
      for (const d of ['besteffort', 'burstable']) mkdirSync(join(podsRoot, d), { recursive: true });
      const model = clusterModel(clusterPods, nodePods);
      for (const p of model.nodePods) mkdirSync(join(podsRoot, p.cgroup));
      const genPod = model.nodePods[0];
      if (!genPod) throw new Error('no pod on this node');
      const genCgroup = join(podsRoot, genPod.cgroup, 'violator');
      mkdirSync(genCgroup);
      let sourceArgs = ['--manifests', manifests];
      if (source === 'manifests') writeModel(manifests, model);
      else {
        const api = new FakeApiServer({ bookmarkIntervalMs: 60_000 });
        await api.start();
        scr.defer(
          () => undefined,
          async () => {
            await stopChild(agent); // before its API server goes
            await api.stop();
          },
        );
        for (const body of model.files.values()) for (const item of (body as { items: FakeObjectInput[] }).items) api.create(item);
        sourceArgs = ['--kubeconfig', await api.writeKubeconfig(work)];
      }
      const violator = buildGenerator(work);

      const port = await freePort();
      const logFd = openSync(join(work, 'agent.log'), 'w');
      const t0 = Date.now();
      agent = spawn(
        process.execPath,
        [
          WEIR_CLI, 'agent',
          ...sourceArgs,
          '--node-name', NODE_NAME,
          '--cgroup-root', cgRoot,
          '--bpffs', BPFFS,
          '--pin-dir', pinDir,
          '--metrics-addr', `127.0.0.1:${port}`,
          '--api-socket', 'off',
          '--audit-log', join(work, 'audit.log'),
          '--log-level', 'info',
        ],
        { stdio: ['ignore', logFd, logFd] },
      );
      closeSync(logFd);
      const pid = agent.pid;
      if (pid === undefined) throw new Error('agent did not start');
      const metrics = `http://127.0.0.1:${port}`;
      for (;;) {
        if (agent.exitCode !== null) throw new Error(`agent exited with ${agent.exitCode}: ${readFileSync(join(work, 'agent.log'), 'utf8').slice(-2000)}`);
        if (Date.now() - t0 > 120_000) throw new Error('agent not ready after 120 s');
        const r = await httpGet(`${metrics}/readyz`).catch(() => ({ status: 0, body: '' }));
        if (r.status === 200) break;
        await sleep(50);
      }
      const readyMs = Date.now() - t0;
      const atReady = procSample(pid);
      if (maps.length === 0) ({ maps, possibleCpus } = mapMemory(pinDir));
      await sleep(opts.quick ? 300 : 3000); // let startup work (GC, timers) settle

      const phase = async (name: FootprintPhase): Promise<void> => {
        let run: GeneratorRun | null = null;
        if (name !== 'idle') {
          run = startGenerator(violator, genCgroup, rate, name === 'one flow' ? 1 : name === '1,000 flows' ? 1000 : 20_000, windowMs + 300);
          gen = run.child;
          await run.started;
          await sleep(100); // the generator reaches its rate
        }
        const s0 = readStats(pinDir);
        const tStart = performance.now();
        const cpu: number[] = [];
        let prev = procSample(pid);
        let prevT = performance.now();
        for (let w = 0; w < subWindows; w++) {
          await sleep(windowMs / subWindows);
          const cur = procSample(pid);
          const now = performance.now();
          cpu.push(((cur.ticks - prev.ticks) / CLK_TCK / ((now - prevT) / 1000)) * 100);
          prev = cur;
          prevT = now;
        }
        const seconds = (performance.now() - tStart) / 1000;
        const s1 = readStats(pinDir);
        let vps = 0;
        if (run) {
          const r = await run.result;
          if (r.other > 0 || r.eperm !== r.sent) throw new Error(`generator: ${r.sent} sends, ${r.eperm} EPERM, ${r.other} other errors: the sends were not all denied`);
          vps = r.eperm / (r.ms / 1000);
          gen = null;
        }
        const end = procSample(pid);
        const row: FootprintRow = {
          clusterPods,
          nodePods,
          source,
          policies: model.policies,
          cidrs: model.cidrs,
          phase: name,
          violationsPerSec: vps,
          eventsPerSec: Number(s1.events_sent - s0.events_sent) / seconds,
          eventsLostPerSec: Number(s1.events_lost - s0.events_lost) / seconds,
          windowS: seconds,
          cpuPct: median(cpu),
          cpuPctMin: Math.min(...cpu),
          cpuPctMax: Math.max(...cpu),
          rssMiB: end.rssKiB / 1024,
          peakRssMiB: end.hwmKiB / 1024,
        };
        rows.push(row);
        opts.log(
          `  ${label} (${nodePods} here) ${name.padEnd(12)} ${vps.toFixed(0).padStart(6)} viol/s ${row.eventsPerSec.toFixed(0).padStart(5)} ev/s ${row.eventsLostPerSec > 0 ? `(${row.eventsLostPerSec.toFixed(0)} lost/s) ` : ''} CPU ${row.cpuPct.toFixed(1)}% [${row.cpuPctMin.toFixed(1)}–${row.cpuPctMax.toFixed(1)}]  RSS ${row.rssMiB.toFixed(0)} MiB (peak ${row.peakRssMiB.toFixed(0)})`,
        );
      };
      await phase('idle');

      // A Prometheus scrape at idle: CPU the agent spends per /metrics request.
      const scrapes = opts.quick ? 5 : 10;
      const cpuMs: number[] = [];
      const wallMs: number[] = [];
      let body = '';
      for (let i = 0; i < scrapes; i++) {
        const a = procSample(pid);
        const t = performance.now();
        body = (await httpGet(`${metrics}/metrics`)).body;
        wallMs.push(performance.now() - t);
        await sleep(50);
        cpuMs.push(((procSample(pid).ticks - a.ticks) / CLK_TCK) * 1000);
      }
      const start: FootprintStart = {
        clusterPods,
        nodePods,
        source,
        readyMs,
        startCpuS: atReady.ticks / CLK_TCK,
        rssAtReadyMiB: atReady.rssKiB / 1024,
        scrapeCpuMs: cpuMs.reduce((a, b) => a + b, 0) / cpuMs.length,
        scrapeWallMs: median(wallMs),
        scrapeBytes: body.length,
        podsGoverned: metricValue(body, 'weir_pods_governed'),
        compileFailing: metricValue(body, 'weir_policy_compile_failing'),
      };
      starts.push(start);
      if (start.podsGoverned !== nodePods) throw new Error(`the agent governs ${start.podsGoverned} pods, expected ${nodePods}`);
      if (start.compileFailing !== 0) throw new Error(`${start.compileFailing} policies failed to compile`);
      opts.log(
        `  ${label}: ready in ${readyMs} ms (${start.startCpuS.toFixed(1)} s CPU, RSS ${start.rssAtReadyMiB.toFixed(0)} MiB); /metrics scrape ${start.scrapeCpuMs.toFixed(0)} ms CPU, ${(start.scrapeBytes / 1024).toFixed(0)} KiB`,
      );
      if (source === 'manifests') {
        await phase('one flow');
        await phase('1,000 flows');
        // Beyond what the agent can process (docs/performance.md, "Event
        // pipeline"): the ring buffer fills, losses are counted; RSS stays bounded.
        if (!opts.quick) await phase('20,000 flows');
      }
      opts.log(`  ${label}: ${((Date.now() - began) / 1000).toFixed(0)} s`);
    } finally {
      await scr.close();
    }
  }
  const baseline = moduleBaseline();
  for (const b of baseline) opts.log(`  ${b.what}: RSS ${b.rssMiB.toFixed(0)} MiB (heap used ${b.heapUsedMiB.toFixed(0)} MiB)`);
  return { tree: sourceTree(), loadAvg: [load0, loadAvg()], baseline, rows, starts, maps, possibleCpus, config };
}

const MiB = (b: number): string => (b / 2 ** 20).toFixed(1);
const SOURCE_TEXT: Record<FootprintSource, string> = { manifests: '--manifests', kubernetes: 'Kubernetes API' };

export function footprintMarkdown(r: FootprintResult, m: Record<string, string | number>, cmd: string): string {
  const lines = [
    '# Footprint: agent RSS, CPU and BPF map memory',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`.`,
    '',
    `Agent: \`${r.config}\`, a child process; RSS (VmRSS, peak VmHWM) and CPU (utime+stime) from /proc/PID. ` +
      'Cluster model: N pods in 20 namespaces and 50 Deployments, 100 of them on this node with kubelet-style cgroups (the rest on other nodes, as peers); ' +
      `${r.rows[0]?.policies ?? 51} policies (50 EgressPolicies with pod-selector, namespace-selector and CIDR peers, named and numbered ports, a deny rule; one ClusterEgressPolicy), ${r.rows[0]?.cidrs ?? 0} CIDRs. ` +
      'Violations: a process in a pod on this node sends UDP datagrams to denied destinations (sendmsg hook: EPERM) at 10,000/s, to one destination or round-robin over 1,000 ' +
      '(the kernel sends one event per flow per second: ~1 and ~1,000 events/s), and in the full run over 20,000 (every send an event: more than the agent processes, so the ring buffer fills during the window, ~37,000 events, and then the excess is counted as lost; "sent" includes what filled the ring). ' +
      'CPU is % of one core, the median of sub-windows [min–max]; the kernel side of a violation runs in the sender and is not in these figures. Targets: RSS under 150 MB at 1,000 pods; idle CPU near zero.',
    '',
    `Source: ${r.tree}. Load average (1 min) at start and end: ${r.loadAvg[0].toFixed(1)}, ${r.loadAvg[1].toFixed(1)} (the machine is shared; figures are from one run).`,
    '',
    '| pods (cluster) | pods (this node) | source | phase | violations/s | events sent/s (kernel) | events lost/s | agent CPU % | RSS MiB | peak RSS MiB |',
    '|---:|---:|---|---|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${x.clusterPods} | ${x.nodePods} | ${SOURCE_TEXT[x.source]} | ${x.phase} | ${x.violationsPerSec.toFixed(0)} | ${x.eventsPerSec.toFixed(0)} | ${x.eventsLostPerSec.toFixed(0)} | ${x.cpuPct.toFixed(1)} [${x.cpuPctMin.toFixed(1)}–${x.cpuPctMax.toFixed(1)}] | ${x.rssMiB.toFixed(0)} | ${x.peakRssMiB.toFixed(0)} |`,
    ),
    '',
    'Base memory: a fresh Node.js process that only loads modules (process.memoryUsage()):',
    '',
    '| loaded | RSS MiB | heap used MiB |',
    '|---|---:|---:|',
    ...r.baseline.map((b) => `| ${b.what} | ${b.rssMiB.toFixed(0)} | ${b.heapUsedMiB.toFixed(0)} |`),
    '',
    '| pods (cluster) | source | ready after | CPU to ready | RSS at ready | CPU per /metrics scrape | scrape size |',
    '|---:|---|---:|---:|---:|---:|---:|',
    ...r.starts.map(
      (s) => `| ${s.clusterPods} | ${SOURCE_TEXT[s.source]} | ${(s.readyMs / 1000).toFixed(1)} s | ${s.startCpuS.toFixed(1)} s | ${s.rssAtReadyMiB.toFixed(0)} MiB | ${s.scrapeCpuMs.toFixed(0)} ms | ${(s.scrapeBytes / 1024).toFixed(0)} KiB |`,
    ),
    '',
    `BPF maps at the default capacities, ${r.possibleCpus} possible CPUs. "kernel" is the map's memlock as the kernel reports it (fdinfo), which is what it charges to the memory cgroup of the process that created the map; "computed" is (key + value) × max_entries, × possible CPUs for per-CPU maps.`,
    '',
    '| map | type | max entries | kernel MiB | computed MiB |',
    '|---|---|---:|---:|---:|',
    ...r.maps.map((x) => `| ${x.map} | ${x.type}${x.perCpu ? ' (per CPU)' : ''} | ${x.maxEntries} | ${MiB(x.kernelBytes)} | ${MiB(x.computedBytes)} |`),
    `| **total** | | | **${MiB(r.maps.reduce((a, x) => a + x.kernelBytes, 0))}** | **${MiB(r.maps.reduce((a, x) => a + x.computedBytes, 0))}** |`,
  ];
  return `${lines.join('\n')}\n`;
}
