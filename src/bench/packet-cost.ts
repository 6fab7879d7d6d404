// Per-packet cost of weir's egress program, measured with BPF_PROG_TEST_RUN
// against two references on the same hook: an empty program and a single
// kernel LPM-trie lookup on the destination. The benchmark process moves into
// a pod cgroup of its own so the program identifies it as a pod, exactly as
// for real traffic. Every figure is the median of several runs of `repeat`
// iterations, and the suites report differences taken in the same run.
//
// The connect hook (cgroup/connect4, connect6) cannot go through
// BPF_PROG_TEST_RUN on this kernel, so it is timed with real syscalls: a
// python3 child in a pod's container cgroup, in a network namespace of its
// own (unshare --net) with a veth pair and a default route, so that a
// UDP connect() to a remote address only picks a route and sends nothing. It
// re-connects one UDP socket to two alternating destinations N times, in the
// pod (weir attached to the pods' cgroup root: allowed destinations, and
// default-denied ones that fail with EPERM) and in a cgroup of the same depth
// outside the pods' root (no weir program: the baseline). Rounds alternate
// the three; each figure is the median of the rounds.
import { spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { BpfObject, ensureBpffs } from '../native/index.js';
import { Datapath, removePins, DEFAULT_OBJECTS_DIR } from '../datapath/datapath.js';
import { cgroupIdOf, cgroupLevel, defaultCgroupRoot } from '../datapath/cgroups.js';
import { encodePodValue, u64Key } from '../datapath/abi.js';
import { BIT_E_ALLOW, BIT_E_DENY, SET_F_E_ISOLATED, SET_F_VALID, flatten, type Entry } from '../policy/compile.js';
import type { DesiredState } from '../policy/engine.js';
import type { Policy, Rule } from '../policy/normalize.js';
import { bytesToAddress, maskBytes, type Family, type Prefix } from '../policy/prefix.js';
import { removeCgroupTree } from '../sandbox/cgroup.js';
import { buildTrie } from '../datapath/trie.js';
import { ipv4Bytes, ownCgroupDir, tcpFrame, TCP_ACK, testRunIfindex } from './test-run.js';

export interface PacketCostOptions {
  quick: boolean;
  log: (line: string) => void;
  /** Where the connect hook's Markdown table goes (default: the bench's --out, else bench/results). */
  out?: string;
}

/** The connect hook, timed with real connect() calls on a UDP socket (ns per call). */
export interface ConnectCost {
  calls: number;
  rounds: number;
  /** No weir program on the caller's cgroup. */
  baseNs: number;
  /** weir attached, destination allowed. */
  hitNs: number;
  /** weir attached, destination default-denied: connect() fails with EPERM. */
  denyNs: number;
  /** Failed calls in the last round of each kind (expected: 0, 0, calls). */
  baseErrors: number;
  hitErrors: number;
  denyErrors: number;
}

export interface PacketCostRow {
  family: 4 | 6;
  cidrs: number;
  pods: number;
  emptyNs: number;
  lpmNs: number;
  weirHitNs: number;
  weirMissNs: number;
  weirDenyNs: number;
  trieNodes: number;
  /** Path-compressed single-prefix subtrees (weir_trie_tails, 40 bytes each). */
  trieTails: number;
  /** Nodes (1 KiB) and tails (40 bytes). */
  trieBytes: number;
  /** Only on the rows where the connect hook was measured. */
  connect?: ConnectCost;
}

const policy: Policy = {
  id: 'EgressPolicy/bench/bench',
  kind: 'EgressPolicy',
  namespace: 'bench',
  name: 'bench',
  mode: 'Enforce',
  isolatesEgress: true,
  selects: () => true,
  rules: [],
};
const rule: Rule = { kind: 'allow', index: 0, peers: null, ports: null };

/** Deterministic pseudo-random numbers (benchmarks must be repeatable). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * N random prefixes: IPv4 /16–/32 anywhere except 100.64.0.0/10 (kept free
 * for misses); IPv6 /48–/128 inside 2001:db8::/32 except 2001:db8:ffff::/32+.
 */
function randomPrefixes(family: Family, n: number, rand: () => number): Prefix[] {
  const out: Prefix[] = [];
  while (out.length < n) {
    if (family === 4) {
      const b = Uint8Array.from([1 + Math.floor(rand() * 222), Math.floor(rand() * 256), Math.floor(rand() * 256), Math.floor(rand() * 256)]);
      if (b[0] === 100 && ((b[1] ?? 0) & 0xc0) === 64) continue;
      if (b[0] === 127) continue;
      const len = 16 + Math.floor(rand() * 17);
      out.push({ family, bytes: maskBytes(b, len), len });
    } else {
      const b = new Uint8Array(16);
      b.set([0x20, 0x01, 0x0d, 0xb8]);
      for (let i = 4; i < 16; i++) b[i] = Math.floor(rand() * 256);
      if (b[4] === 0xff && b[5] === 0xff) continue;
      const len = 48 + Math.floor(rand() * 81);
      out.push({ family, bytes: maskBytes(b, len), len });
    }
  }
  return out;
}

function hostIn(p: Prefix, rand: () => number): Uint8Array {
  const b = Uint8Array.from(p.bytes);
  for (let i = p.len; i < b.length * 8; i++) {
    if (rand() < 0.5) b[i >> 3] = (b[i >> 3] ?? 0) | (1 << (7 - (i & 7)));
  }
  return b;
}

/** The benchmark's packet: a TCP ACK to port 443 (it could be a reply). IPv6 comes from fd00::1. */
function frameTo(family: Family, src: string, dst: Uint8Array): Buffer {
  const from = family === 4 ? ipv4Bytes(src) : Uint8Array.from([0xfd, 0, ...new Array(13).fill(0), 1]);
  return tcpFrame(from, dst, 443, TCP_ACK);
}

const PYTHON = '/usr/bin/python3';

// The child: joins the cgroup, then times `calls` connect() calls of one UDP
// socket to two alternating destinations. connect_ex returns the errno
// instead of raising, so an EPERM costs the loop what a success does.
const CONNECT_PY = String.raw`
import json, os, socket, sys, time
cg, fam, n, a, b, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
with open(os.path.join(cg, 'cgroup.procs'), 'w') as f:
    f.write(str(os.getpid()))
s = socket.socket(socket.AF_INET if fam == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
c, da, db = s.connect_ex, (a, port), (b, port)
for _ in range(2000):
    c(da); c(db)
errs = 0
t0 = time.perf_counter_ns()
for _ in range(n // 2):
    errs += c(da) != 0
    errs += c(db) != 0
t1 = time.perf_counter_ns()
print(json.dumps({'ns': (t1 - t0) / (n // 2 * 2), 'errors': errs}))
`;

const NETNS_SETUP = [
  'set -e',
  'ip link set lo up',
  'ip link add d0 type veth peer name d1',
  'ip link set d1 up',
  'ip addr add 10.250.0.2/24 dev d0',
  'ip -6 addr add fd00:250::2/64 dev d0 nodad',
  'ip link set d0 up',
  'ip route add default dev d0',
  'ip -6 route add default dev d0',
].join('\n');

/** One timed child: ns per connect() and the failed calls. */
function connectRun(cgroup: string, family: 4 | 6, calls: number, a: string, b: string): { ns: number; errors: number } {
  const script = `${NETNS_SETUP}\nexec ${PYTHON} -c "$WEIR_CONNECT_PY" "$@"`;
  const r = spawnSync('unshare', ['--net', '--', '/bin/sh', '-c', script, 'child', cgroup, String(family), String(calls), a, b, '9999'], {
    encoding: 'utf8',
    timeout: 120_000,
    killSignal: 'SIGKILL',
    env: { ...process.env, WEIR_CONNECT_PY: CONNECT_PY },
  });
  if (r.status !== 0) throw new Error(`connect child failed (${r.status ?? r.signal}): ${r.stderr || r.error?.message}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? '{}') as { ns: number; errors: number };
}

/** Markdown for the connect hook's rows. */
export function connectMarkdown(rows: PacketCostRow[]): string {
  const measured = rows.filter((r) => r.connect);
  if (measured.length === 0) return '';
  const c0 = measured[0]?.connect;
  const lines = [
    '## Connect hook (real connect() calls, cgroup/connect4 and connect6)',
    '',
    `BPF_PROG_TEST_RUN cannot run sock_addr programs on this kernel, so a python3 child in the pod's container cgroup, in a network namespace of its own (a veth pair, default route), times ${c0?.calls ?? '?'} connect() calls of one UDP socket to two alternating remote destinations (nothing is sent). ns per call, median of ${c0?.rounds ?? '?'} interleaved rounds; the baseline runs in a cgroup of the same depth with no weir program. "+" is added over the baseline measured in the same run (the Python loop and the kernel's own connect() are in the baseline).`,
    '',
    '| family | CIDRs | pods | no weir (ns/call) | weir allowed + | weir default deny (EPERM) + | EPERM calls (deny round) |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of measured) {
    const c = r.connect as ConnectCost;
    lines.push(`| IPv${r.family} | ${r.cidrs} | ${r.pods} | ${c.baseNs.toFixed(0)} | ${(c.hitNs - c.baseNs).toFixed(0)} | ${(c.denyNs - c.baseNs).toFixed(0)} | ${c.denyErrors} of ${c.calls} |`);
  }
  return `${lines.join('\n')}\n`;
}

/** The bench's results directory: the option, else main's --out, else bench/results. */
function resultsDir(opts: PacketCostOptions): string {
  if (opts.out) return opts.out;
  const { values } = parseArgs({ options: { out: { type: 'string' }, quick: { type: 'boolean' } }, strict: false, allowPositionals: true });
  return typeof values.out === 'string' ? values.out : resolve(dirname(fileURLToPath(import.meta.url)), '../..', 'bench', 'results');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}

export async function packetCost(opts: PacketCostOptions): Promise<PacketCostRow[]> {
  const bpffs = ensureBpffs('/sys/fs/bpf');
  // Quick (part of a 2-minute run of every suite): each configuration costs
  // seconds of setup (trie build, map writes), so it keeps one of each kind:
  // no CIDRs, 1k (IPv4 also with 10,000 pods), and 100k for IPv4 only.
  const repeat = opts.quick ? 100_000 : 1_000_000;
  const runs = opts.quick ? 3 : 5;
  const sizes = opts.quick ? [0, 1000, 100_000] : [0, 100, 1000, 10_000, 100_000];
  const podCounts = opts.quick ? [10, 10_000] : [10, 1000, 10_000];
  const ctx = Buffer.alloc(192);
  ctx.writeUInt32LE(testRunIfindex(), 40);

  const tag = `weir-bench-${process.pid}`;
  const cgRoot = join(defaultCgroupRoot(), tag);
  const podsRoot = join(cgRoot, 'kubepods');
  const podDir = join(podsRoot, 'burstable', `pod${randomUUID()}`);
  const ctr = join(podDir, 'bench');
  mkdirSync(ctr, { recursive: true });
  // The connect baseline: same depth as the pod's container, outside the pods' root.
  const outside = join(cgRoot, 'outside', 'burstable', `pod${randomUUID()}`, 'bench');
  mkdirSync(outside, { recursive: true });
  const connectCalls = opts.quick ? 40_000 : 200_000;
  const connectRounds = opts.quick ? 3 : 5;
  const home = ownCgroupDir();
  const ref = await BpfObject.load(join(DEFAULT_OBJECTS_DIR, 'bench', 'baseline.bpf.o'));
  const rows: PacketCostRow[] = [];
  writeFileSync(join(ctr, 'cgroup.procs'), String(process.pid));
  try {
    for (const family of [4, 6] as const) {
      // Quick: IPv6 stops at 1k (writing a 100k IPv6 set alone takes ~15 s).
      for (const n of opts.quick && family === 6 ? sizes.filter((x) => x <= 1000) : sizes) {
        const allPods = opts.quick ? n === 1000 && family === 4 : n === 1000 || n === sizes[sizes.length - 1];
        for (const pods of allPods ? podCounts : [podCounts[0] ?? 10]) {
          rows.push(await measure(family, n, pods));
        }
      }
    }
  } finally {
    writeFileSync(join(home, 'cgroup.procs'), String(process.pid));
    ref.close();
    removeCgroupTree(cgRoot);
  }
  const md = connectMarkdown(rows);
  if (md) {
    opts.log(md);
    const dir = resultsDir(opts);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `packet-cost-connect-${opts.quick ? 'quick' : 'full'}.md`), md);
  }
  return rows;

  async function measure(family: 4 | 6, n: number, pods: number): Promise<PacketCostRow> {
    const rand = rng(n * 7 + family);
    const prefixes = randomPrefixes(family, n, rand);
    // Rules differ in their ports, as real policies do, so a prefix nested in
    // another is a distinct class and flattening cannot fold it away.
    const entries: Entry[] = prefixes.map((prefix, i) => ({
      prefix,
      except: [],
      bits: BIT_E_ALLOW,
      ports: i % 4 === 0 ? null : [{ proto: 6, lo: 443, hi: 443 }, { proto: 6, lo: 8000 + (i % 64), hi: 8000 + (i % 64) }],
      policy,
      rule,
    }));
    const hitPrefix = prefixes[Math.floor(rand() * prefixes.length)];
    const hit = hitPrefix ? hostIn(hitPrefix, rand) : family === 4 ? Uint8Array.from([8, 8, 8, 8]) : Uint8Array.from([0x20, 1, 0xd, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 1]);
    const miss = family === 4 ? Uint8Array.from([100, 64, 1, 1]) : Uint8Array.from([0x20, 1, 0xd, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    const deny = family === 4 ? Uint8Array.from([100, 64, 9, 9]) : Uint8Array.from([0x20, 1, 0xd, 0xb8, 0xff, 0xff, 0, 9, 0, 0, 0, 0, 0, 0, 0, 9]);
    entries.push({ prefix: { family, bytes: deny, len: family === 4 ? 32 : 128 }, except: [], bits: BIT_E_DENY, ports: null, policy, rule });
    const flat = flatten(entries, family);
    const state: DesiredState = {
      pods: [],
      policies: [policy],
      problems: [],
      sets: new Map([['bench', { key: 'bench', policies: [policy], flags: SET_F_VALID | SET_F_E_ISOLATED, entries: [], v4: family === 4 ? flat : [], v6: family === 6 ? flat : [] }]]),
    };
    // Size the node and tail maps from the trie this set really needs
    // (classes are distinct per flattened prefix at most, so ids up to flat.length).
    const needed = buildTrie(flat.map((f, i) => ({ prefix: f.prefix, classId: i + 1 })));
    const pinDir = join(bpffs, `${tag}-${family}-${n}-${pods}`);
    const dp = await Datapath.open({
      bpffs,
      pinDir,
      podLevel: cgroupLevel(podsRoot),
      logger: pino({ level: 'silent' }),
      capacities: { nodes: needed.nodes.length + 64, tails: needed.tails.length + 64, pods: pods + 16, sets: 16, classes: Math.max(1024, flat.length + 64) },
      graceMs: 0,
    });
    try {
      dp.writer.apply(state, [{ uid: 'bench', namespace: 'bench', name: 'bench', cgroupId: cgroupIdOf(podDir), setKey: 'bench' }]);
      // The other pods of the node: distinct cgroup ids, same set.
      const pm = dp.map('weir_pods');
      const self = pm.lookup(u64Key(cgroupIdOf(podDir)));
      for (let i = 1; i < pods; i++) pm.update(u64Key(BigInt(`0x7f${randomBytes(6).toString('hex')}`)), self ?? encodePodValue({ setId: 1, endpointId: 0, flags: 0 }));
      const usage = dp.writer.usage();
      const trieNodes = usage.weir_nodes?.used ?? 0;
      const trieTails = usage.weir_trie_tails?.used ?? 0;

      // The LPM reference holds the same N prefixes.
      const lpm = ref.map(family === 4 ? 'bench_lpm4' : 'bench_lpm6');
      for (const k of lpm.keys()) lpm.delete(k);
      const klen = family === 4 ? 8 : 20;
      if (prefixes.length > 0) {
        const keys = Buffer.alloc(prefixes.length * klen);
        const vals = Buffer.alloc(prefixes.length * 4);
        prefixes.forEach((p, i) => {
          keys.writeUInt32LE(p.len, i * klen);
          Buffer.from(p.bytes).copy(keys, i * klen + 4);
          vals.writeUInt32LE(1, i * 4);
        });
        lpm.updateBatch(keys, vals, prefixes.length);
      }

      const src = '10.244.0.9';
      const time = (run: (data: Buffer) => number, data: Buffer): number => {
        const xs: number[] = [];
        for (let i = 0; i < runs; i++) xs.push(run(data));
        return median(xs);
      };
      const refRun = (prog: string) => (data: Buffer) => ref.program(prog).testRun({ data, ctx, repeat }).durationNs;
      const weirRun = (expect: number) => (data: Buffer) => {
        const r = dp.testRun('weir_egress', { data, ctx, repeat });
        if (r.retval !== expect) throw new Error(`weir_egress returned ${r.retval}, expected ${expect} for ${bytesToAddress(family, data.subarray(family === 4 ? 30 : 38, family === 4 ? 34 : 54))}`);
        return r.durationNs;
      };
      const hitData = frameTo(family, src, hit);
      const row: PacketCostRow = {
        family,
        cidrs: n,
        pods,
        emptyNs: time(refRun('bench_empty'), hitData),
        lpmNs: time(refRun('bench_lpm'), hitData),
        weirHitNs: n > 0 ? time(weirRun(1), hitData) : NaN,
        weirMissNs: time(weirRun(0), frameTo(family, src, miss)),
        weirDenyNs: time(weirRun(0), frameTo(family, src, deny)),
        trieNodes,
        trieTails,
        trieBytes: trieNodes * 1024 + trieTails * 40,
      };
      // The connect hook at 1k CIDRs (IPv4 and IPv6) and at 100k (IPv4), 10 pods; quick: IPv4 1k.
      const connectHere = pods === podCounts[0] && (opts.quick ? family === 4 && n === 1000 : n === 1000 || (family === 4 && n === 100_000));
      if (connectHere) row.connect = connectCost(family, prefixes, entries, dp);
      opts.log(
        `  IPv${family} cidrs=${String(n).padStart(6)} pods=${String(pods).padStart(5)}  empty ${row.emptyNs.toFixed(0)} ns  lpm +${(row.lpmNs - row.emptyNs).toFixed(0)}  weir hit +${(row.weirHitNs - row.emptyNs).toFixed(0)} miss +${(row.weirMissNs - row.emptyNs).toFixed(0)} deny +${(row.weirDenyNs - row.emptyNs).toFixed(0)}  (${trieNodes} trie nodes, ${trieTails} tails)`,
      );
      return row;
    } finally {
      // Detach (the connect measurement attached) before closing.
      try {
        dp.uninstall();
      } finally {
        dp.close();
        removePins(pinDir);
      }
    }
  }

  function connectCost(family: 4 | 6, prefixes: Prefix[], entries: Entry[], dp: Datapath): ConnectCost {
    // Two destinations in prefixes allowed on every port (not only TCP),
    // two in the range kept free of the set (default deny).
    const rand = rng(prefixes.length * 13 + family);
    const allPorts = prefixes.filter((_, i) => entries[i]?.ports === null);
    const pick = (): string => bytesToAddress(family, hostIn(allPorts[Math.floor(rand() * allPorts.length)] as Prefix, rand));
    const [h1, h2] = [pick(), pick()];
    const [d1, d2] = family === 4 ? ['100.64.1.1', '100.64.1.2'] : ['2001:db8:ffff::1', '2001:db8:ffff::2'];
    dp.attach(podsRoot, cgroupIdOf(podsRoot));
    const base: number[] = [];
    const hit: number[] = [];
    const deny: number[] = [];
    let last = { base: 0, hit: 0, deny: 0 };
    for (let r = 0; r < connectRounds; r++) {
      const b = connectRun(outside, family, connectCalls, h1, h2);
      const h = connectRun(ctr, family, connectCalls, h1, h2);
      const d = connectRun(ctr, family, connectCalls, d1, d2);
      base.push(b.ns);
      hit.push(h.ns);
      deny.push(d.ns);
      last = { base: b.errors, hit: h.errors, deny: d.errors };
      if (b.errors !== 0 || h.errors !== 0 || d.errors !== connectCalls) {
        throw new Error(`connect hook: unexpected failures (baseline ${b.errors}, allowed ${h.errors}, denied ${d.errors} of ${connectCalls})`);
      }
    }
    const c: ConnectCost = {
      calls: connectCalls,
      rounds: connectRounds,
      baseNs: median(base),
      hitNs: median(hit),
      denyNs: median(deny),
      baseErrors: last.base,
      hitErrors: last.hit,
      denyErrors: last.deny,
    };
    opts.log(
      `  connect IPv${family} cidrs=${prefixes.length}: no weir ${c.baseNs.toFixed(0)} ns/call, allowed +${(c.hitNs - c.baseNs).toFixed(0)}, default deny (EPERM) +${(c.denyNs - c.baseNs).toFixed(0)}  (rounds: ${base.map((x) => x.toFixed(0)).join('/')} | ${hit.map((x) => x.toFixed(0)).join('/')} | ${deny.map((x) => x.toFixed(0)).join('/')})`,
    );
    return c;
  }
}
