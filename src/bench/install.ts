// Rule install and update time: N destination CIDRs installed at once, then
// one CIDR added and one deleted, for weir and the usual alternatives:
//
//   weir      CIDR strings -> policy entries -> flattened prefixes (compile),
//             then StateWriter.apply: port classes, trie nodes (batched map
//             updates), the set's roots (write). The datapath is loaded but
//             not attached; the maps are the real kernel maps.
//   iptables  iptables-restore of N rules (one file); iptables -A / -D of one
//   ipset     ipset restore of a hash:net set with N entries; ipset add / del
//   nftables  nft -f of a table with an interval set of N elements (and the
//             rule using it); nft add element / delete element
//
// The CLI tools run inside a sandbox pod's netns (every object they create
// goes away with it). Each is timed inside a bash already running in that
// netns ($EPOCHREALTIME around the command), so the time is the tool's own
// process (fork, exec, netlink, kernel) and nothing of ours; the cost of
// starting a process at all is reported as the exec baseline (/bin/true
// timed the same way). Repeats are interleaved across tools and rotated;
// every figure is a median.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { Datapath } from '../datapath/datapath.js';
import { defaultCgroupRoot, cgroupLevel } from '../datapath/cgroups.js';
import { entries, flatten, SET_F_E_ISOLATED, SET_F_VALID } from '../policy/compile.js';
import type { DesiredSet, DesiredState } from '../policy/engine.js';
import type { Policy } from '../policy/normalize.js';
import { parsePrefix } from '../policy/prefix.js';
import { Sandbox } from '../sandbox/sandbox.js';
import { BPFFS, scratch } from './scratch.js';
import {
  BENCH_POLICY,
  IPSET_NAME,
  NFT_TABLE,
  cidrText,
  ipsetRestore,
  iptablesLinear,
  median,
  nftRuleset,
  ruleCidrs,
  trieNodeBound,
  CidrSource,
  type Cidr4,
} from './throughput.js';

export type InstallTool = 'weir' | 'iptables' | 'ipset' | 'nftables';
export const TOOLS: readonly InstallTool[] = ['weir', 'iptables', 'ipset', 'nftables'];

export interface InstallRow {
  tool: InstallTool;
  cidrs: number;
  reps: number;
  /** Median ms: all N CIDRs from nothing to installed. */
  installMs: number;
  /** Median ms: one CIDR added to the N, then the same one deleted. */
  addMs: number;
  deleteMs: number;
  /** weir only: the install split into compile (to flattened prefixes) and map writes. */
  compileMs?: number;
  writeMs?: number;
  /** weir only: trie nodes written by the install, and by adding one CIDR. */
  nodesWritten?: number;
  addNodesWritten?: number;
}

export interface InstallResult {
  /** Median ms to fork and exec /bin/true, timed like the tools. */
  execBaselineMs: number;
  rows: InstallRow[];
}

const SERVER: Cidr4 = { addr: ((10 << 24) | (20 << 16)) >>> 0, len: 24 };

// $EPOCHREALTIME is read by bash itself (no fork): the interval is the
// command's own process from fork to exit.
const TIMED = 't0=$EPOCHREALTIME; "$@" >/dev/null; rc=$?; t1=$EPOCHREALTIME; echo "$t0 $t1"; exit $rc';

function ipblockPolicy(texts: readonly string[]): Policy {
  return {
    ...BENCH_POLICY,
    rules: [{ kind: 'allow', index: 0, peers: texts.map((t) => ({ type: 'ipBlock' as const, cidr: parsePrefix(t), except: [], text: t })), ports: null }],
  };
}

/** What the engine does for one set: rule entries, then flattening per family. */
function compileSet(key: string, texts: readonly string[]): DesiredSet {
  const policy = ipblockPolicy(texts);
  const es = entries([policy], { peerPods: () => [], namespaceLabels: () => undefined });
  return { key, policies: [policy], flags: SET_F_VALID | SET_F_E_ISOLATED, entries: es, v4: flatten(es, 4), v6: flatten(es, 6) };
}

export async function install(opts: { quick: boolean; log: (line: string) => void }): Promise<InstallResult> {
  const sizes = opts.quick ? [10, 1000] : [10, 1000, 10_000, 100_000];
  // weir and iptables -D take seconds each at 100k: one repeat there.
  const repsFor = (n: number): number => (opts.quick ? 2 : n >= 100_000 ? 1 : n >= 10_000 ? 3 : 5);
  const scr = scratch();
  try {
    // The sandbox also tears itself down on a signal (netns, cgroups,
    // processes, and with the netns every rule, set and table).
    const sb = await Sandbox.create({
      id: `in${process.pid % 100000}`,
      nodeName: 'bench-node',
      namespaces: [{ name: 'bench' }],
      pods: TOOLS.filter((t) => t !== 'weir').map((t) => ({ namespace: 'bench', name: t })),
      hosts: [],
    });
    scr.defer(() => sb.destroySync(), () => sb.destroy());
    const files = scr.dir('weir-bench-install-');
    const pinDir = scr.pinDir(`weir-bench-install-${process.pid}`);
    let dp: Datapath | null = null;
    scr.defer(() => dp?.close());
    const netns = (t: Exclude<InstallTool, 'weir'>): string => sb.pod('bench', t).netns;
    const timed = async (t: Exclude<InstallTool, 'weir'>, argv: string[]): Promise<number> => {
      const out = await sb.runInNetns(netns(t), ['bash', '-c', TIMED, 'timed', ...argv]);
      const [a, b] = out.trim().split('\n').pop()?.split(' ').map(Number) ?? [];
      return ((b as number) - (a as number)) * 1000;
    };
    const run = (t: Exclude<InstallTool, 'weir'>, argv: string[]): Promise<string> => sb.runInNetns(netns(t), argv);

    const all = new Map(sizes.map((n) => [n, ruleCidrs(n, SERVER, 2000 + n)]));
    const maxNodes = Math.max(...[...all.values()].map(trieNodeBound));
    dp = await Datapath.open({
      bpffs: BPFFS,
      pinDir,
      podLevel: cgroupLevel(defaultCgroupRoot()),
      logger: pino({ level: 'silent' }),
      capacities: { pods: 16, endpoints: 16, sets: 16, nodes: Math.ceil(maxNodes * 1.2) + 256, classes: 256 },
      graceMs: 0,
    });
    const writer = dp.writer;
    const binding = [{ uid: 'bench', namespace: 'bench', name: 'bench', cgroupId: 424242n, setKey: 'install' }];
    const stateOf = (set: DesiredSet | null): DesiredState => ({ pods: [], policies: [BENCH_POLICY], problems: [], sets: set ? new Map([[set.key, set]]) : new Map() });

    const base: number[] = [];
    for (let i = 0; i < 10; i++) base.push(await timed('iptables', ['/bin/true']));
    const execBaselineMs = median(base);
    opts.log(`  exec baseline (/bin/true in the netns): ${execBaselineMs.toFixed(2)} ms`);

    const rows: InstallRow[] = [];
    for (const n of sizes) {
      const cidrs = all.get(n) ?? [];
      const texts = cidrs.map(cidrText);
      const extra = new CidrSource(2000 + n);
      for (const c of cidrs) extra.take(c);
      const one = cidrText(extra.next());
      const file = (name: string, text: string): string => {
        const p = join(files, `${name}-${n}`);
        writeFileSync(p, text);
        return p;
      };
      const iptFile = file('iptables', iptablesLinear(cidrs));
      const ipsFile = file('ipset', ipsetRestore(cidrs));
      const nftFile = file('nft', nftRuleset(cidrs));
      const reps = repsFor(n);
      type S = { install: number; add: number; del: number; compile?: number; write?: number; nodes?: number; addNodes?: number };
      const got = new Map<InstallTool, S[]>(TOOLS.map((t) => [t, []]));
      for (let r = 0; r < reps; r++) {
        const order = TOOLS.map((_, i) => TOOLS[(i + r) % TOOLS.length] as InstallTool);
        for (const tool of order) {
          const s: S = { install: NaN, add: NaN, del: NaN };
          switch (tool) {
            case 'weir': {
              const ms = (a: bigint, b: bigint): number => Number(b - a) / 1e6;
              const t0 = process.hrtime.bigint();
              const set = compileSet('install', texts);
              const t1 = process.hrtime.bigint();
              const res = writer.apply(stateOf(set), binding);
              const t2 = process.hrtime.bigint();
              s.compile = ms(t0, t1);
              s.write = ms(t1, t2);
              s.install = ms(t0, t2);
              s.nodes = res.nodesWritten;
              if (res.failedSets.length > 0) throw new Error(`weir: ${res.failedSets[0]?.error}`);
              const a0 = process.hrtime.bigint();
              const plus = writer.apply(stateOf(compileSet('install', [...texts, one])), binding);
              const a1 = process.hrtime.bigint();
              writer.apply(stateOf(compileSet('install', texts)), binding);
              const a2 = process.hrtime.bigint();
              s.add = ms(a0, a1);
              s.del = ms(a1, a2);
              s.addNodes = plus.nodesWritten;
              writer.apply(stateOf(null), []); // remove everything (untimed)
              break;
            }
            case 'iptables':
              s.install = await timed('iptables', ['iptables-restore', iptFile]);
              s.add = await timed('iptables', ['iptables', '-A', 'OUTPUT', '-d', one, '-j', 'ACCEPT']);
              s.del = await timed('iptables', ['iptables', '-D', 'OUTPUT', '-d', one, '-j', 'ACCEPT']);
              await run('iptables', ['nft', 'flush', 'ruleset']);
              break;
            case 'ipset':
              s.install = await timed('ipset', ['ipset', 'restore', '-file', ipsFile]);
              s.add = await timed('ipset', ['ipset', 'add', IPSET_NAME, one]);
              s.del = await timed('ipset', ['ipset', 'del', IPSET_NAME, one]);
              await run('ipset', ['ipset', 'destroy', IPSET_NAME]);
              break;
            case 'nftables':
              s.install = await timed('nftables', ['nft', '-f', nftFile]);
              s.add = await timed('nftables', ['nft', 'add', 'element', 'ip', NFT_TABLE, 'allow4', `{ ${one} }`]);
              s.del = await timed('nftables', ['nft', 'delete', 'element', 'ip', NFT_TABLE, 'allow4', `{ ${one} }`]);
              await run('nftables', ['nft', 'flush', 'ruleset']);
              break;
          }
          got.get(tool)?.push(s);
        }
      }
      for (const tool of TOOLS) {
        const xs = got.get(tool) ?? [];
        const col = (k: keyof S): number => median(xs.map((x) => x[k] ?? NaN));
        const row: InstallRow = { tool, cidrs: n, reps, installMs: col('install'), addMs: col('add'), deleteMs: col('del') };
        if (tool === 'weir') Object.assign(row, { compileMs: col('compile'), writeMs: col('write'), nodesWritten: col('nodes'), addNodesWritten: col('addNodes') });
        rows.push(row);
        opts.log(
          `  ${tool.padEnd(8)} N=${String(n).padStart(6)}  install ${row.installMs.toFixed(1)} ms${tool === 'weir' ? ` (compile ${row.compileMs?.toFixed(1)} + write ${row.writeMs?.toFixed(1)}, ${row.nodesWritten} nodes)` : ''}  add one ${row.addMs.toFixed(2)} ms  delete one ${row.deleteMs.toFixed(2)} ms  (${reps} reps)`,
        );
      }
    }
    return { execBaselineMs, rows };
  } finally {
    await scr.close();
  }
}

const f = (x: number | undefined, d = 1): string => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '–');

export function installTargets(res: InstallResult): string[] {
  const w = (n: number): InstallRow | undefined => res.rows.find((r) => r.tool === 'weir' && r.cidrs === n);
  const out: string[] = [];
  const w10k = w(10_000);
  out.push(
    w10k
      ? `- weir installs 10k CIDRs in < 200 ms: **${w10k.installMs < 200 ? 'met' : 'missed'}** (${f(w10k.installMs)} ms: compile ${f(w10k.compileMs)} + write ${f(w10k.writeMs)}).`
      : '- weir installs 10k CIDRs in < 200 ms: not measured in this run (quick mode stops at 1k).',
  );
  const sizes = [...new Set(res.rows.map((r) => r.cidrs))].sort((a, b) => a - b);
  const ch = sizes.map((n) => `N=${n}: add ${f(w(n)?.addMs, 2)} ms, delete ${f(w(n)?.deleteMs, 2)} ms`);
  const ok = sizes.filter((n) => Math.max(w(n)?.addMs ?? Infinity, w(n)?.deleteMs ?? Infinity) < 1);
  out.push(
    `- weir applies one change in < 1 ms: **${ok.length === sizes.length ? 'met' : ok.length === 0 ? 'missed' : `met up to N=${ok[ok.length - 1]}, missed above`}** (${ch.join('; ')}). ` +
      'A change recompiles the whole set and rebuilds its trie in userspace (only the few nodes that differ are written), so its cost grows with N.',
  );
  return out;
}

export function installMarkdown(res: InstallResult, m: Record<string, string | number>, cmd: string): string {
  const lines = [
    '# Rule install and update time',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`.`,
    '',
    'Milliseconds, medians of interleaved repeats. "install": N CIDRs from nothing to installed (weir: CIDR strings to kernel maps written, in-process; ' +
      'the tools: one iptables-restore / ipset restore / nft -f, timed inside a bash in the netns). "add one" / "delete one": one CIDR added to the N, then deleted ' +
      `(weir: the policy with N+1 CIDRs applied, then N again; iptables -A / -D; ipset add / del; nft add / delete element). Every tool figure includes starting a process: /bin/true takes ${f(res.execBaselineMs, 2)} ms timed the same way. ` +
      'weir\'s compile and write columns are the medians of each part (they need not add up to the install median); trie nodes written are 1 KiB map values written in batches.',
    '',
    '| tool | CIDRs | reps | install ms | add one ms | delete one ms | weir: compile ms | weir: write ms | weir: trie nodes written (install / add) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of res.rows) {
    lines.push(
      `| ${r.tool} | ${r.cidrs} | ${r.reps} | ${f(r.installMs)} | ${f(r.addMs, 2)} | ${f(r.deleteMs, 2)} | ${r.tool === 'weir' ? f(r.compileMs) : ''} | ${r.tool === 'weir' ? f(r.writeMs) : ''} | ${r.tool === 'weir' ? `${f(r.nodesWritten, 0)} / ${f(r.addNodesWritten, 0)}` : ''} |`,
    );
  }
  lines.push('', '## Targets', '', ...installTargets(res), '');
  return `${lines.join('\n')}\n`;
}
