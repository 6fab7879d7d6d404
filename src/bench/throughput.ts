// Throughput and latency over veth on the sandbox node, weir against the
// usual alternatives, each holding the same N destination CIDRs:
//
//   none      no filtering at all
//   weir      weir's programs with a policy allowing the N CIDRs (Datapath
//             and StateWriter directly, no agent), default deny otherwise
//   iptables  N rules in the pod's OUTPUT chain (N-1 non-matching CIDRs, the
//             server's CIDR LAST, policy DROP): the linear case
//   ipset     a hash:net set of the N CIDRs and one iptables rule matching it
//   nftables  an interval set of the N CIDRs and one rule, policy drop
//
// Every (filter, N) has a client pod of its own, so all configurations stand
// at once and are measured interleaved: every round runs each test in every
// pod, grouped by N with an unfiltered run in each group, groups and pods
// rotated between rounds. Ratios are taken per round against the median of
// that round's unfiltered runs, then the median over rounds is reported; the
// unfiltered runs against each other (A/A) give the resolution of the run.
// The server is a sandbox host behind the node netns: pod eth0 -> veth ->
// node (forwarding) -> veth -> host, the path a pod's egress takes on a
// routed CNI.
//
// weir's links are attached to the Burstable QoS cgroup, which holds only
// the weir pods: the other pods run none of weir's programs (on a real node
// they would pay the unknown-pod early return, see the per-packet suite).
// iptables is the system's iptables (nf_tables backend on Debian 12); every
// rule, set and table lives in the pod's own netns and disappears with it.
import type { ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { pino } from 'pino';
import { Datapath } from '../datapath/datapath.js';
import { cgroupIdOf, cgroupLevel } from '../datapath/cgroups.js';
import { BIT_E_ALLOW, SET_F_E_ISOLATED, SET_F_VALID, flatten, type Entry } from '../policy/compile.js';
import type { DesiredSet, DesiredState } from '../policy/engine.js';
import type { Policy, Rule } from '../policy/normalize.js';
import type { Prefix } from '../policy/prefix.js';
import { Sandbox, type SandboxPod } from '../sandbox/sandbox.js';
import type { PodSpec, SandboxSpec } from '../sandbox/spec.js';
import { BPFFS, scratch } from './scratch.js';

export interface ThroughputOptions {
  quick: boolean;
  log: (line: string) => void;
}

export type FilterKind = 'none' | 'weir' | 'iptables' | 'ipset' | 'nftables';
export const FILTERS: readonly FilterKind[] = ['weir', 'iptables', 'ipset', 'nftables'];

export interface ThroughputRow {
  filter: FilterKind;
  /** CIDRs in the filter (0 for none). */
  rules: number;
  rounds: number;
  tcp1Gbps: number;
  tcp1Ratio: number;
  tcp8Gbps: number;
  tcp8Ratio: number;
  /** UDP 64-byte datagrams: sent by the pod, delivered to the server, lost. */
  udpSentKpps: number;
  udpRecvKpps: number;
  udpLossPct: number;
  udpSentRatio: number;
  rttP50Us: number;
  rttP99Us: number;
  addedP50Us: number;
  addedP99Us: number;
  connPerSec: number;
  connRatio: number;
  /** This filter against weir at the same N (median of per-round ratios; 1 for weir, absent for none). */
  tcp1VsWeir?: number;
  tcp8VsWeir?: number;
  udpSentVsWeir?: number;
  connVsWeir?: number;
}

// ---- CIDRs ----------------------------------------------------------------

/** Deterministic pseudo-random numbers (benchmarks must be repeatable). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Cidr4 {
  addr: number; // uint32, masked
  len: number;
}

export function cidrText(c: Cidr4): string {
  return `${c.addr >>> 24}.${(c.addr >>> 16) & 255}.${(c.addr >>> 8) & 255}.${c.addr & 255}/${c.len}`;
}

export function cidrPrefix(c: Cidr4): Prefix {
  return { family: 4, bytes: Uint8Array.from([c.addr >>> 24, (c.addr >>> 16) & 255, (c.addr >>> 8) & 255, c.addr & 255]), len: c.len };
}

const mask = (len: number): number => (len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0);

// First octets never drawn: 0, 10 (the sandbox's pods and services, hence
// the server), 127, 169 (the gateway), 198 and 203 (the sandbox's
// "internet"), 100 (shared address space), multicast and above.
const EXCLUDED_FIRST = new Set([0, 10, 100, 127, 169, 198, 203]);

/**
 * Generates pairwise disjoint random IPv4 prefixes, /16 to /32 (uniform
 * length, as in the per-packet suite), none overlapping the sandbox's
 * addresses. Disjoint, so every tool holds exactly the same N entries
 * (nftables interval sets refuse overlaps) and none is redundant.
 */
export class CidrSource {
  private readonly rand: () => number;
  // Keys len * 2^32 + addr (exact in a double).
  private readonly kept = new Set<number>();
  private readonly inner = new Set<number>(); // prefixes with some kept prefix strictly below

  constructor(seed: number) {
    this.rand = rng(seed);
  }

  next(): Cidr4 {
    for (;;) {
      const first = 1 + Math.floor(this.rand() * 223);
      if (EXCLUDED_FIRST.has(first)) continue;
      const addr0 = ((first << 24) | Math.floor(this.rand() * 0x1000000)) >>> 0;
      const len = 16 + Math.floor(this.rand() * 17);
      const c = { addr: (addr0 & mask(len)) >>> 0, len };
      if (this.take(c)) return c;
    }
  }

  /** Reserves c if it overlaps nothing kept so far. */
  take(c: Cidr4): boolean {
    const k = (l: number): number => l * 4294967296 + ((c.addr & mask(l)) >>> 0);
    if (this.inner.has(k(c.len))) return false;
    for (let l = 1; l <= c.len; l++) if (this.kept.has(k(l))) return false;
    this.kept.add(k(c.len));
    for (let l = 1; l < c.len; l++) this.inner.add(k(l));
    return true;
  }
}

/** The N CIDRs of a configuration: N-1 random ones, then the server's CIDR last. */
export function ruleCidrs(n: number, server: Cidr4, seed: number): Cidr4[] {
  const src = new CidrSource(seed);
  src.take(server);
  const out: Cidr4[] = [];
  while (out.length < n - 1) out.push(src.next());
  out.push(server);
  return out;
}

// ---- rule files -------------------------------------------------------------

export function iptablesLinear(cidrs: readonly Cidr4[]): string {
  const lines = ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT DROP [0:0]'];
  for (const c of cidrs) lines.push(`-A OUTPUT -d ${cidrText(c)} -j ACCEPT`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

export const IPSET_NAME = 'weirbench';

export function ipsetRestore(cidrs: readonly Cidr4[]): string {
  const lines = [`create ${IPSET_NAME} hash:net family inet hashsize 1024 maxelem ${Math.max(65536, 2 * cidrs.length)}`];
  for (const c of cidrs) lines.push(`add ${IPSET_NAME} ${cidrText(c)}`);
  lines.push('');
  return lines.join('\n');
}

export function iptablesMatchSet(): string {
  return ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT DROP [0:0]', `-A OUTPUT -m set --match-set ${IPSET_NAME} dst -j ACCEPT`, 'COMMIT', ''].join('\n');
}

export const NFT_TABLE = 'weirbench';

export function nftRuleset(cidrs: readonly Cidr4[]): string {
  const lines = [
    `table ip ${NFT_TABLE} {`,
    '  set allow4 {',
    '    type ipv4_addr',
    '    flags interval',
  ];
  // Elements in chunks: one huge line is slow for nft's parser.
  for (let i = 0; i < cidrs.length; i += 1000) {
    lines.push(`    elements = { ${cidrs.slice(i, i + 1000).map(cidrText).join(', ')} }`);
  }
  lines.push('  }', '  chain output {', '    type filter hook output priority filter; policy drop;', '    ip daddr @allow4 accept', '  }', '}', '');
  return lines.join('\n');
}

// ---- weir -------------------------------------------------------------------

export const BENCH_POLICY: Policy = {
  id: 'EgressPolicy/bench/throughput',
  kind: 'EgressPolicy',
  namespace: 'bench',
  name: 'throughput',
  mode: 'Enforce',
  isolatesEgress: true,
  selects: () => true,
  rules: [],
};
const BENCH_RULE: Rule = { kind: 'allow', index: 0, peers: null, ports: null };

/** A policy set allowing the CIDRs (every port), isolated: default deny. */
export function weirSet(key: string, cidrs: readonly Cidr4[]): DesiredSet {
  const entries: Entry[] = cidrs.map((c) => ({ prefix: cidrPrefix(c), except: [], bits: BIT_E_ALLOW, ports: null, policy: BENCH_POLICY, rule: BENCH_RULE }));
  return { key, policies: [BENCH_POLICY], flags: SET_F_VALID | SET_F_E_ISOLATED, entries, v4: flatten(entries, 4), v6: [] };
}

/**
 * Trie nodes the CIDRs can need at most (stride 8: one node per depth and
 * leading bytes above each prefix's last byte; sharing only lowers it).
 */
export function trieNodeBound(cidrs: readonly Cidr4[]): number {
  const seen = new Set<number>();
  for (const c of cidrs) {
    for (let d = 0; d * 8 < c.len; d++) seen.add(d * 4294967296 + (d === 0 ? 0 : c.addr >>> (32 - 8 * d)));
  }
  return seen.size;
}

// ---- processes ----------------------------------------------------------------

export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

interface Done {
  code: number | null;
  out: string;
  err: string;
}

function collect(child: ChildProcess, timeoutMs: number): Promise<Done> {
  return new Promise((resolve) => {
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => (err += String(e)));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const SERVER_IP = '10.20.0.10';
const SERVER_CIDR: Cidr4 = { addr: ((10 << 24) | (20 << 16)) >>> 0, len: 24 }; // 10.20.0.0/24
const BLOCKED_IP = '10.30.0.10';
const IPERF_PORT = 5201;
const SOCKPERF_PORT = 11111;
const CONN_PORT = 7000;

// Accepts and closes as fast as it can (the client resets, so no TIME_WAIT).
const CONN_SERVER = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
`;
// One per pod, started once: answers "probe IP PORT" (can a connection be
// opened?) and "conn IP PORT D" (new connections per second for D seconds:
// connect, then close with RST via SO_LINGER 0, so that neither side
// accumulates TIME_WAIT sockets). Python's start-up stays out of the runs.
const POD_HELPER = `
import socket, struct, sys, time
lin = struct.pack('ii', 1, 0)
for line in sys.stdin:
    a = line.split()
    if not a:
        continue
    if a[0] == 'probe':
        s = socket.socket(); s.settimeout(0.5)
        try:
            s.connect((a[1], int(a[2]))); r = 'ok'
        except OSError as e:
            r = 'fail %s' % (e.errno,)
        s.close(); print(r, flush=True)
    elif a[0] == 'conn':
        ip, port, dur = a[1], int(a[2]), float(a[3])
        n = 0; slow = 0; t0 = time.perf_counter(); end = t0 + dur
        while True:
            t = time.perf_counter()
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, lin); s.connect((ip, port)); s.close(); n += 1
            u = time.perf_counter()
            if u - t > 0.2:
                slow += 1
            if u >= end:
                break
        print(n / (time.perf_counter() - t0), slow, flush=True)
`;
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const PY_ARGS = ['-I', '-S', '-u', '-c'];

/** A long-running helper process answering one line per request line. */
class LineHelper {
  private readonly waiting: ((line: string | null) => void)[] = [];
  private readonly early: string[] = [];
  private stderr = '';

  constructor(private readonly child: ChildProcess, private readonly name: string) {
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-2000)));
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
      const w = this.waiting.shift();
      if (w) w(l);
      else this.early.push(l);
    });
    child.on('close', () => {
      for (const w of this.waiting.splice(0)) w(null);
    });
  }

  async ask(request: string, timeoutMs: number): Promise<string> {
    const line = await new Promise<string | null>((resolve) => {
      const e = this.early.shift();
      if (e !== undefined) return resolve(e);
      const timer = setTimeout(() => resolve(null), timeoutMs);
      this.waiting.push((l) => {
        clearTimeout(timer);
        resolve(l);
      });
      this.child.stdin?.write(`${request}\n`);
    });
    if (line === null) throw new Error(`${this.name}: no answer to "${request}": ${this.stderr.trim().slice(-300)}`);
    return line;
  }

  close(): void {
    this.child.stdin?.end();
    this.child.kill('SIGKILL');
  }
}

interface Config {
  filter: FilterKind;
  rules: number;
  /** The N of the group this run belongs to (the unfiltered pod runs once per group). */
  group: number;
  pod: SandboxPod;
}

const key = (c: Config): string => (c.filter === 'none' ? `none@${c.group}` : `${c.filter}-${c.rules}`);

type Metric = 'tcp1' | 'tcp8' | 'udpSent' | 'udpRecv' | 'udpLoss' | 'p50' | 'p99' | 'conn';
type Sample = Record<Metric, number>;

/**
 * A/A: how far apart two unfiltered runs of the same round are, per
 * metric: median and largest difference over all such pairs (percent of
 * the rate, or µs / ns for the latency and CPU-per-packet metrics).
 */
export interface Noise {
  pairs: number;
  median: Record<NoiseMetric, number>;
  max: Record<NoiseMetric, number>;
}
export type NoiseMetric = 'tcp1Pct' | 'tcp8Pct' | 'udpSentPct' | 'connPct' | 'rttP50Us' | 'rttP99Us';

export interface ThroughputResult {
  rounds: number;
  rows: ThroughputRow[];
  noise: Noise;
  /** Latency runs measured again alone because their window overlapped another client's. */
  latencyReruns: number;
}

const rot = <T>(xs: readonly T[], k: number): T[] => xs.map((_, i) => xs[(i + k) % xs.length] as T);

export async function throughput(opts: ThroughputOptions): Promise<ThroughputResult> {
  const sizes = opts.quick ? [10, 1000] : [10, 1000, 10_000, 100_000];
  const rounds = opts.quick ? 1 : 3;
  // Full: fixed durations. Quick: fixed amounts (~0.3-0.5 s here).
  // iperf3 runs: the first round lasts 1 s each (-t 1: iperf3's shortest);
  // later rounds send what the same pod moved in RUN_S in the previous round
  // (-n bytes, -k datagrams), ~RUN_S each. Quick: fixed amounts, ~0.3 s here.
  const RUN_S = 0.5;
  const amount = (prev: number | undefined, unit: 'tcp' | 'udp'): string[] => {
    if (opts.quick) return unit === 'tcp' ? ['-n', '200M'] : ['-k', '12000'];
    if (prev === undefined || !Number.isFinite(prev)) return ['-t', '1'];
    return unit === 'tcp' ? ['-n', String(Math.max(1 << 20, Math.round((prev * 1e9 * RUN_S) / 8)))] : ['-k', String(Math.max(1000, Math.round(prev * 1000 * RUN_S)))];
  };
  const connSeconds = opts.quick ? 0.2 : 0.5;

  const pods: PodSpec[] = [{ namespace: 'bench', name: 'none', qosClass: 'BestEffort' }];
  for (const n of sizes) {
    for (const f of FILTERS) pods.push({ namespace: 'bench', name: `${f}-${n}`, qosClass: f === 'weir' ? 'Burstable' : 'BestEffort' });
  }
  const spec: SandboxSpec = {
    id: `tp${process.pid % 100000}`,
    nodeName: 'bench-node',
    namespaces: [{ name: 'bench' }],
    pods,
    hosts: [
      { name: 'server', kind: 'service', ipv4: SERVER_IP },
      { name: 'blocked', kind: 'service', ipv4: BLOCKED_IP },
    ],
  };
  const t0 = Date.now();
  const since = (): string => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
  const sb = await Sandbox.create(spec);
  // The sandbox also tears itself down on a signal (netns, cgroups,
  // processes, and with the netns every rule, set and table).
  const scr = scratch();
  scr.defer(() => sb.destroySync(), () => sb.destroy());
  const files = scr.dir('weir-bench-tp-');
  const pinDir = scr.pinDir(`weir-bench-tp-${process.pid}`);
  let dp: Datapath | null = null;
  scr.defer(() => {
    dp?.uninstall();
    dp?.close();
  });
  const helpers = new Map<string, LineHelper>();
  scr.defer(() => {
    for (const h of helpers.values()) h.close();
  });
  try {
    const nonePod = sb.pod('bench', 'none');
    const groups: Config[][] = sizes.map((n) => [
      { filter: 'none', rules: 0, group: n, pod: nonePod },
      ...FILTERS.map((f) => ({ filter: f, rules: n, group: n, pod: sb.pod('bench', `${f}-${n}`) })),
    ]);
    const configs = groups.flat();
    const filtered = configs.filter((c) => c.filter !== 'none');

    // Filters.
    const sets = new Map<number, DesiredSet>();
    let nodes = 0;
    for (const n of sizes) {
      const cidrs = ruleCidrs(n, SERVER_CIDR, 1000 + n);
      sets.set(n, weirSet(`tp-${n}`, cidrs));
      nodes += trieNodeBound(cidrs);
      const f = (name: string, text: string): string => {
        const p = join(files, `${name}-${n}`);
        writeFileSync(p, text);
        return p;
      };
      const ns = (filter: FilterKind): string => sb.pod('bench', `${filter}-${n}`).netns;
      await sb.runInNetns(ns('iptables'), ['iptables-restore', f('iptables', iptablesLinear(cidrs))]);
      await sb.runInNetns(ns('ipset'), ['ipset', 'restore', '-file', f('ipset', ipsetRestore(cidrs))]);
      await sb.runInNetns(ns('ipset'), ['iptables-restore', f('ipset-rule', iptablesMatchSet())]);
      await sb.runInNetns(ns('nftables'), ['nft', '-f', f('nft', nftRuleset(cidrs))]);
    }
    dp = await Datapath.open({
      bpffs: BPFFS,
      pinDir,
      podLevel: cgroupLevel(sb.podsCgroupRoot),
      logger: pino({ level: 'silent' }),
      capacities: { pods: 64, endpoints: 64, sets: 16, nodes: nodes + 64, classes: 64 },
      graceMs: 0,
    });
    const state: DesiredState = { pods: [], policies: [BENCH_POLICY], problems: [], sets: new Map([...sets.values()].map((s) => [s.key, s])) };
    const weirPods = configs.filter((c) => c.filter === 'weir');
    const applied = dp.writer.apply(
      state,
      weirPods.map((c) => ({ uid: c.pod.uid, namespace: c.pod.namespace, name: c.pod.name, cgroupId: cgroupIdOf(c.pod.cgroupDir), setKey: `tp-${c.rules}`, ips: [c.pod.ip, c.pod.ip6] })),
    );
    if (applied.failedSets.length > 0) throw new Error(`weir: set ${applied.failedSets[0]?.key} not written: ${applied.failedSets[0]?.error}`);
    const qosDir = join(sb.podsCgroupRoot, 'burstable');
    dp.attach(qosDir, cgroupIdOf(qosDir));
    opts.log(`  ${pods.length} pods, filters for N = ${sizes.join(', ')} installed (weir: ${dp.writer.usage().weir_nodes?.used ?? 0} trie nodes) at ${since()}`);

    // Servers, and one helper per pod.
    const servers: ChildProcess[] = [
      sb.spawnInHost('server', ['iperf3', '-s', '-B', SERVER_IP, '-p', String(IPERF_PORT)], { stdio: 'ignore' }),
      sb.spawnInHost('server', ['sockperf', 'server', '-i', SERVER_IP, '-p', String(SOCKPERF_PORT)], { stdio: 'ignore' }),
      sb.spawnInHost('server', [PYTHON, ...PY_ARGS, CONN_SERVER, SERVER_IP, String(CONN_PORT)], { stdio: 'ignore' }),
      sb.spawnInHost('blocked', [PYTHON, ...PY_ARGS, CONN_SERVER, BLOCKED_IP, String(CONN_PORT)], { stdio: 'ignore' }),
    ];
    for (const p of sb.listPods()) helpers.set(p.name, new LineHelper(sb.spawnInPod(p.namespace, p.name, [PYTHON, ...PY_ARGS, POD_HELPER]), `helper in ${p.name}`));
    const helper = (c: Config): LineHelper => helpers.get(c.pod.name) as LineHelper;
    await sleep(500);

    // Every filter must pass the server and refuse anything else.
    await Promise.all(
      [groups[0]?.[0] as Config, ...filtered].map(async (c) => {
        const ok = await helper(c).ask(`probe ${SERVER_IP} ${CONN_PORT}`, 20_000);
        const other = await helper(c).ask(`probe ${BLOCKED_IP} ${CONN_PORT}`, 20_000);
        const wantOther = c.filter === 'none' ? 'ok' : 'fail';
        if (ok !== 'ok' || !other.startsWith(wantOther)) throw new Error(`${key(c)}: server -> ${ok}, blocked host -> ${other} (expected ok, ${wantOther})`);
      }),
    );
    opts.log(`  filters checked (the server passes, another host is refused) at ${since()}`);

    const iperf = async (c: Config, args: string[]): Promise<Record<string, any>> => {
      let last = '';
      for (let attempt = 0; attempt < 5; attempt++) {
        const r = await collect(sb.spawnInPod(c.pod.namespace, c.pod.name, ['iperf3', '-c', SERVER_IP, '-p', String(IPERF_PORT), '-J', ...args]), 60_000);
        try {
          const j = JSON.parse(r.out) as Record<string, any>;
          if (!j.error) return j;
          last = String(j.error);
        } catch {
          last = r.err || r.out.slice(0, 200);
        }
        await sleep(200); // the server may still be finishing the previous test
      }
      throw new Error(`iperf3 from ${key(c)} failed: ${last}`);
    };

    const samples = new Map<string, Sample[]>(configs.map((c) => [key(c), []]));
    let overlaps = 0;
    let slowConnects = 0;
    for (let r = 0; r < rounds; r++) {
      const rs = Date.now();
      // Groups in a rotated order, each group's pods rotated too; every test
      // sweeps this order, so each filter runs next to its group's unfiltered run.
      const order = rot(groups, r).flatMap((g) => rot(g, r));
      const cur = new Map<string, Sample>(configs.map((c) => [key(c), { tcp1: NaN, tcp8: NaN, udpSent: NaN, udpRecv: NaN, udpLoss: NaN, p50: NaN, p99: NaN, conn: NaN }]));
      const s = (c: Config): Sample => cur.get(key(c)) as Sample;
      const prev = (c: Config): Sample | undefined => samples.get(key(c))?.[r - 1];
      for (const c of order) s(c).tcp1 = Number((await iperf(c, amount(prev(c)?.tcp1, 'tcp'))).end.sum_received.bits_per_second) / 1e9;
      for (const c of order) s(c).tcp8 = Number((await iperf(c, [...amount(prev(c)?.tcp8, 'tcp'), '-P', '8'])).end.sum_received.bits_per_second) / 1e9;
      for (const c of order) {
        const j = await iperf(c, ['-u', '-l', '64', '-b', '0', ...amount(prev(c)?.udpSent, 'udp')]);
        const sent = j.end.sum_sent ?? j.end.sum;
        const recv = j.end.sum_received ?? j.end.sum;
        s(c).udpSent = Number(sent.packets) / Number(sent.seconds) / 1000;
        s(c).udpRecv = (Number(recv.packets) - Number(recv.lost_packets)) / Number(recv.seconds) / 1000;
        s(c).udpLoss = Number(recv.lost_percent);
      }
      for (const c of order) {
        const out = await helper(c).ask(`conn ${SERVER_IP} ${CONN_PORT} ${connSeconds}`, 120_000);
        const [rate, slow] = out.trim().split(/\s+/).map(Number);
        if (!Number.isFinite(rate)) throw new Error(`connection-rate client in ${key(c)}: ${out}`);
        s(c).conn = rate as number;
        slowConnects += slow ?? 0;
      }
      overlaps += await latencyRound(order, (c, p50, p99) => {
        s(c).p50 = p50;
        s(c).p99 = p99;
      });
      for (const c of configs) samples.get(key(c))?.push(s(c));
      const none = configs.filter((c) => c.filter === 'none').map(s);
      const mid = (k: Metric): string => median(none.map((x) => x[k])).toFixed(k === 'tcp1' || k === 'tcp8' || k === 'p50' ? 1 : 0);
      opts.log(
        `  round ${r + 1}/${rounds} (${((Date.now() - rs) / 1000).toFixed(0)} s): unfiltered TCP ${mid('tcp1')} / ${mid('tcp8')} Gbit/s (1 / 8 streams), UDP ${mid('udpSent')} kpps, RTT p50 ${mid('p50')} µs, ${mid('conn')} conn/s`,
      );
    }
    if (overlaps > 0) opts.log(`  ${overlaps} latency runs measured again alone (their window overlapped another client's activity)`);
    if (slowConnects > 0) opts.log(`  warning: ${slowConnects} connects took over 200 ms (SYN retransmits)`);

    // Filters still in place and actually on the path.
    for (const c of weirPods) {
      const ep = dp.writer.endpoints().find((e) => e.name === c.pod.name);
      const allowed = ep ? (dp.counters(ep.endpointId).packets.allow?.packets ?? 0n) : 0n;
      if (allowed === 0n) throw new Error(`${key(c)}: weir counted no allowed packets`);
    }
    for (const c of configs.filter((x) => x.filter === 'iptables')) {
      const last = (await sb.runInNetns(c.pod.netns, ['iptables', '-L', 'OUTPUT', '-n', '-v', '-x'])).trim().split('\n').pop() ?? '';
      if (!last.includes(cidrText(SERVER_CIDR)) || Number(last.trim().split(/\s+/)[0]) === 0) throw new Error(`${key(c)}: the last rule saw no packets: ${last}`);
    }
    for (const p of servers) p.kill('SIGKILL');

    // A/A: unfiltered runs of the same round against each other.
    const aa: Record<NoiseMetric, number[]> = { tcp1Pct: [], tcp8Pct: [], udpSentPct: [], connPct: [], rttP50Us: [], rttP99Us: [] };
    for (let r = 0; r < rounds; r++) {
      const none = sizes.map((n) => samples.get(`none@${n}`)?.[r] as Sample);
      for (let i = 0; i < none.length; i++) {
        for (let j = i + 1; j < none.length; j++) {
          const a = none[i] as Sample;
          const b = none[j] as Sample;
          const rel = (k: Metric): number => Math.abs(a[k] / b[k] - 1) * 100;
          const abs = (k: Metric): number => Math.abs(a[k] - b[k]);
          aa.tcp1Pct.push(rel('tcp1'));
          aa.tcp8Pct.push(rel('tcp8'));
          aa.udpSentPct.push(rel('udpSent'));
          aa.connPct.push(rel('conn'));
          aa.rttP50Us.push(abs('p50'));
          aa.rttP99Us.push(abs('p99'));
        }
      }
    }
    const noiseKeys = Object.keys(aa) as NoiseMetric[];
    const noise: Noise = {
      pairs: aa.tcp1Pct.length,
      median: Object.fromEntries(noiseKeys.map((k) => [k, median(aa[k])])) as Record<NoiseMetric, number>,
      max: Object.fromEntries(noiseKeys.map((k) => [k, aa[k].length > 0 ? Math.max(...aa[k]) : NaN])) as Record<NoiseMetric, number>,
    };

    const rows: ThroughputRow[] = [];
    const allNone = sizes.flatMap((n) => samples.get(`none@${n}`) ?? []);
    const noneCol = (k: Metric): number => median(allNone.map((x) => x[k]));
    rows.push({
      filter: 'none',
      rules: 0,
      rounds,
      tcp1Gbps: noneCol('tcp1'),
      tcp1Ratio: 1,
      tcp8Gbps: noneCol('tcp8'),
      tcp8Ratio: 1,
      udpSentKpps: noneCol('udpSent'),
      udpRecvKpps: noneCol('udpRecv'),
      udpLossPct: noneCol('udpLoss'),
      udpSentRatio: 1,
      rttP50Us: noneCol('p50'),
      rttP99Us: noneCol('p99'),
      addedP50Us: 0,
      addedP99Us: 0,
      connPerSec: noneCol('conn'),
      connRatio: 1,
    });
    // The reference of each round: the median of its unfiltered runs (one per
    // group), steadier than any single run.
    const reference: Sample[] = [];
    for (let r = 0; r < rounds; r++) {
      const runs = sizes.map((n) => samples.get(`none@${n}`)?.[r] as Sample);
      reference.push(Object.fromEntries((Object.keys(runs[0] ?? {}) as Metric[]).map((k) => [k, median(runs.map((x) => x[k]))])) as Sample);
    }
    for (const c of filtered) {
      const xs = samples.get(key(c)) ?? [];
      const none = reference;
      const weir = samples.get(`weir-${c.rules}`) ?? [];
      const col = (k: Metric): number => median(xs.map((x) => x[k]));
      const ratio = (k: Metric, ref: Sample[]): number => median(xs.map((x, i) => x[k] / (ref[i]?.[k] ?? NaN)));
      const added = (k: Metric): number => median(xs.map((x, i) => x[k] - (none[i]?.[k] ?? NaN)));
      rows.push({
        filter: c.filter,
        rules: c.rules,
        rounds,
        tcp1Gbps: col('tcp1'),
        tcp1Ratio: ratio('tcp1', none),
        tcp8Gbps: col('tcp8'),
        tcp8Ratio: ratio('tcp8', none),
        udpSentKpps: col('udpSent'),
        udpRecvKpps: col('udpRecv'),
        udpLossPct: col('udpLoss'),
        udpSentRatio: ratio('udpSent', none),
        rttP50Us: col('p50'),
        rttP99Us: col('p99'),
        addedP50Us: added('p50'),
        addedP99Us: added('p99'),
        connPerSec: col('conn'),
        connRatio: ratio('conn', none),
        tcp1VsWeir: ratio('tcp1', weir),
        tcp8VsWeir: ratio('tcp8', weir),
        udpSentVsWeir: ratio('udpSent', weir),
        connVsWeir: ratio('conn', weir),
      });
    }
    for (const row of rows) opts.log(formatRow(row));
    opts.log(`  ${noiseLine(noise)}`);
    return { rounds, rows, noise, latencyReruns: overlaps };
  } finally {
    await scr.close();
  }

  /**
   * sockperf ping-pong, full round trip, in each pod one after another.
   * sockperf sleeps 2 s before its test; to not spend that idle time once
   * per run, the clients are started in advance blocked on a read, then
   * released every GAP ms, so that each client's 1 s test (0.4 s warm-up,
   * then the measured part) normally falls after the previous one's and
   * no release (an exec) lands inside a measured window. Under load the
   * start-up delay varies, so every measured window is checked against the
   * others' activity (from the timing of their output) and a client whose
   * window overlapped is measured again alone. Returns the number of
   * such re-runs.
   */
  async function latencyRound(order: Config[], put: (c: Config, p50: number, p99: number) => void): Promise<number> {
    const GAP = 1200;
    const start = (c: Config) => {
      const child = sb.spawnInPod(c.pod.namespace, c.pod.name, ['sh', '-c', 'read go && exec sockperf ping-pong -i "$0" -p "$1" -t 1 --full-rtt', SERVER_IP, String(SOCKPERF_PORT)]);
      const marks = { release: 0, start: 0, end: 0 };
      let buf = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        if (!marks.start && buf.includes('Starting test')) marks.start = Date.now();
        if (!marks.end && buf.includes('Test end')) marks.end = Date.now();
      });
      return { c, child, marks, done: collect(child, 60_000) };
    };
    type Client = ReturnType<typeof start>;
    const release = async (clients: Client[]): Promise<void> => {
      await sleep(400); // every client blocked on its read
      const base = Date.now();
      for (let i = 0; i < clients.length; i++) {
        const k = clients[i] as Client;
        const wait = base + i * GAP - Date.now();
        if (wait > 0) await sleep(wait);
        k.marks.release = Date.now();
        k.child.stdin?.write('go\n');
      }
      await Promise.all(clients.map((k) => k.done));
    };
    const result = async (k: Client): Promise<void> => {
      const res = await k.done;
      const value = (p: string): number => Number(new RegExp(`percentile ${p} =\\s*([0-9.]+)`).exec(res.out)?.[1]);
      const p50 = value('50\\.000');
      const p99 = value('99\\.000');
      if (!Number.isFinite(p50)) throw new Error(`sockperf in ${key(k.c)} failed: ${(res.err || res.out).slice(-300)}`);
      put(k.c, p50, p99);
    };
    const clients = order.map(start);
    await release(clients);
    const again: Config[] = [];
    for (const k of clients) {
      // Measured window: from 0.4 s after the test starts to its end.
      const lo = k.marks.start + 400;
      const hi = k.marks.end;
      const hit = (a: number, b: number): boolean => a < hi && b > lo;
      const overlapped = clients.some((o) => o !== k && (hit(o.marks.release, o.marks.release + 50) || hit(o.marks.start, o.marks.end + 150)));
      if (overlapped || !k.marks.start || !k.marks.end) again.push(k.c);
      else await result(k);
    }
    for (const c of again) {
      const k = start(c);
      await release([k]);
      await result(k);
    }
    return again.length;
  }
}

export function formatRow(r: ThroughputRow): string {
  return (
    `  ${r.filter.padEnd(8)} N=${String(r.rules).padStart(6)}  TCP ${fx(r.tcp1Gbps)} Gbit/s (${pct(r.tcp1Ratio)})  x8 ${fx(r.tcp8Gbps)} (${pct(r.tcp8Ratio)})` +
    `  UDP ${fx(r.udpSentKpps, 0)} kpps (${pct(r.udpSentRatio)}), ${fx(r.udpRecvKpps, 0)} delivered, ${fx(r.udpLossPct, 0)}% lost` +
    `  RTT p50 ${fx(r.rttP50Us)} µs (${signed(r.addedP50Us)}) p99 ${fx(r.rttP99Us)} (${signed(r.addedP99Us)})  ${fx(r.connPerSec, 0)} conn/s (${pct(r.connRatio)})`
  );
}

const fx = (x: number | undefined, d = 1): string => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '–');
const pct = (x: number | undefined): string => (x !== undefined && Number.isFinite(x) ? `${(x * 100).toFixed(0)}%` : '–');
const signed = (x: number | undefined, d = 1): string => (x !== undefined && Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(d)}` : '–');

function noiseLine(n: Noise): string {
  const both = (k: NoiseMetric, unit: string, d = 1): string => `${fx(n.median[k], d)}${unit} (max ${fx(n.max[k], d)}${unit})`;
  return (
    `A/A, ${n.pairs} pairs of unfiltered runs in the same round: TCP ${both('tcp1Pct', '%')}, TCP x8 ${both('tcp8Pct', '%')}, UDP sent ${both('udpSentPct', '%')}, ` +
    `conn/s ${both('connPct', '%')}, RTT p50 ${both('rttP50Us', ' µs')}, p99 ${both('rttP99Us', ' µs')} apart (median, largest)`
  );
}

/**
 * The targets, evaluated on the result. A difference no larger
 * than the largest A/A difference of the run is "not resolved": neither
 * met nor missed on this machine. A miss is called a miss.
 */
export function throughputTargets(res: ThroughputResult): string[] {
  const { rows, noise } = res;
  const out: string[] = [];
  const sizes = [...new Set(rows.filter((r) => r.filter !== 'none').map((r) => r.rules))].sort((a, b) => a - b);
  const get = (f: FilterKind, n: number): ThroughputRow | undefined => rows.find((r) => r.filter === f && r.rules === n);
  if (res.rounds < 3) out.push(`- ${res.rounds} round only (quick mode): the A/A estimate rests on ${noise.pairs} pair(s), so the verdicts below are not conclusive; the full run decides.`);
  const aaTcp = `A/A: unfiltered runs differ by up to ${fx(noise.max.tcp1Pct, 0)}% (1 stream) and ${fx(noise.max.tcp8Pct, 0)}% (8 streams) in this run`;
  const w10k = get('weir', 10_000);
  if (w10k) {
    const judge = (ratio: number, aaPct: number): string => (ratio >= 0.97 ? 'met' : (1 - ratio) * 100 <= aaPct ? 'not resolved' : 'missed');
    const v1 = judge(w10k.tcp1Ratio, noise.max.tcp1Pct);
    const v8 = judge(w10k.tcp8Ratio, noise.max.tcp8Pct);
    const verdict = v1 === 'missed' || v8 === 'missed' ? 'missed' : v1 === 'met' && v8 === 'met' ? 'met' : 'not resolved';
    out.push(`- TCP throughput at 10k rules >= 97% of unfiltered: **${verdict}** (1 stream ${pct(w10k.tcp1Ratio)}: ${v1}; 8 streams ${pct(w10k.tcp8Ratio)}: ${v8}; ${aaTcp}).`);
  } else {
    out.push('- TCP throughput at 10k rules >= 97% of unfiltered: not measured in this run (quick mode stops at 1k).');
  }
  for (const other of ['ipset', 'nftables'] as const) {
    let worst = 'met';
    const v = (x: number | undefined, aaPct: number): string => {
      if (x === undefined || !Number.isFinite(x)) return 'n/a';
      if (x <= 1) return `${fx(x, 2)} (weir ahead)`;
      if ((x - 1) * 100 <= aaPct) {
        if (worst === 'met') worst = 'not resolved';
        return `${fx(x, 2)} (not resolved)`;
      }
      worst = 'missed';
      return `${fx(x, 2)} (**weir behind**)`;
    };
    const parts = sizes.map((n) => {
      const o = get(other, n);
      return `N=${n}: ${v(o?.tcp1VsWeir, noise.max.tcp1Pct)} / ${v(o?.tcp8VsWeir, noise.max.tcp8Pct)}`;
    });
    out.push(`- TCP throughput at or above ${other} at every N: **${worst}** (${other}/weir, 1 / 8 streams, median of per-round ratios: ${parts.join('; ')}; ${aaTcp}).`);
  }
  const ipt = sizes.map((n) => {
    const r = get('iptables', n);
    return `N=${n}: TCP ${pct(r?.tcp1Ratio)} of unfiltered (${fx(r?.tcp1VsWeir, 2)}x weir), UDP ${pct(r?.udpSentRatio)}, conn/s ${pct(r?.connRatio)}, RTT ${signed(r?.addedP50Us)} µs at p50`;
  });
  out.push(`- iptables with N linear rules falls behind as N grows: ${ipt.join('; ')}.`);
  const lat = sizes.map((n) => `N=${n}: ${signed(get('weir', n)?.addedP50Us)} µs`);
  const over = sizes.filter((n) => (get('weir', n)?.addedP50Us ?? Infinity) >= 2);
  const unresolved = over.every((n) => (get('weir', n)?.addedP50Us ?? Infinity) <= noise.max.rttP50Us);
  out.push(
    `- weir adds < 2 µs per round trip at p50: **${over.length === 0 ? 'met' : unresolved ? 'not resolved' : 'missed'}** (${lat.join(', ')}; A/A: unfiltered p50s differ by a median ${fx(noise.median.rttP50Us)} µs, up to ${fx(noise.max.rttP50Us)} µs).`,
  );
  return out;
}

export function throughputMarkdown(res: ThroughputResult, m: Record<string, string | number>, cmd: string): string {
  const { rows, noise } = res;
  const lines = [
    '# Throughput and latency over veth (sandbox node)',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`. Rounds: ${res.rounds}.`,
    '',
    'One client pod per configuration; the server is a sandbox host behind the node netns (pod veth -> node forwarding -> host veth). ' +
      "The server's /24 is the last of the N CIDRs (iptables: N rules in OUTPUT, policy DROP; ipset: hash:net + one rule; nftables: interval set + one rule; weir: a policy allowing the N CIDRs, default deny otherwise). " +
      'Each round runs every test in every pod, grouped by N with an unfiltered run in each group, rotated between rounds. ' +
      'Values are medians over rounds (the unfiltered row: over all its runs); "vs none" is the median over rounds of the ratio to that round\'s unfiltered median, "+" the median per-round difference to it. ' +
      'TCP: iperf3, 1 and 8 streams (first round 1 s runs, later rounds sized to ~0.5 s from the pod\'s previous rate). UDP: iperf3 -u -l 64 -b 0 (sent by the pod, delivered to the server, lost). ' +
      'RTT: sockperf ping-pong (UDP) --full-rtt. conn/s: connect + close (RST) in a loop.',
    '',
    '| filter | CIDRs | TCP Gbit/s | vs none | TCP x8 Gbit/s | vs none | UDP sent kpps | vs none | delivered kpps | lost |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.filter} | ${r.rules} | ${fx(r.tcp1Gbps, 2)} | ${pct(r.tcp1Ratio)} | ${fx(r.tcp8Gbps, 2)} | ${pct(r.tcp8Ratio)} | ${fx(r.udpSentKpps, 0)} | ${pct(r.udpSentRatio)} | ${fx(r.udpRecvKpps, 0)} | ${fx(r.udpLossPct, 0)}% |`,
    ),
    '',
    '| filter | CIDRs | RTT p50 µs | + | RTT p99 µs | + | conn/s | vs none |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.filter} | ${r.rules} | ${fx(r.rttP50Us)} | ${signed(r.addedP50Us)} | ${fx(r.rttP99Us)} | ${signed(r.addedP99Us)} | ${fx(r.connPerSec, 0)} | ${pct(r.connRatio)} |`,
    ),
    '',
    `Resolution: ${noiseLine(noise)}.` + (res.latencyReruns > 0 ? ` ${res.latencyReruns} latency runs were measured again alone (their window had overlapped another client's activity).` : ''),
    '',
    '## Targets',
    '',
    ...throughputTargets(res),
    '',
  ];
  return `${lines.join('\n')}\n`;
}
