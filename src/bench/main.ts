// `npm run bench`: runs the benchmark suites, prints a table and writes JSON
// and Markdown results to bench/results/. `--quick` runs a reduced matrix.
import { cpus, totalmem, release } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { packetCost, type PacketCostRow } from './packet-cost.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

function machine(): Record<string, string | number> {
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
  };
}

function markdown(rows: PacketCostRow[], m: Record<string, string | number>, cmd: string): string {
  const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(0) : '–');
  const lines = [
    '# Per-packet cost (BPF_PROG_TEST_RUN, cgroup_skb/egress)',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`.`,
    '',
    'ns per packet, median of runs; "+" columns are added over the empty program measured in the same run.',
    '',
    '| family | CIDRs | pods | empty | LPM trie + | weir hit + | weir miss (default deny) + | weir deny rule + | trie nodes | trie memory |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| IPv${r.family} | ${r.cidrs} | ${r.pods} | ${f(r.emptyNs)} | ${f(r.lpmNs - r.emptyNs)} | ${f(r.weirHitNs - r.emptyNs)} | ${f(r.weirMissNs - r.emptyNs)} | ${f(r.weirDenyNs - r.emptyNs)} | ${r.trieNodes} | ${(r.trieBytes / 2 ** 20).toFixed(1)} MiB |`,
    );
  }
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, out: { type: 'string' } } });
  const quick = values.quick ?? false;
  const cmd = `npm run bench${quick ? ' -- --quick' : ''}`;
  const m = machine();
  console.log(`weir bench (${quick ? 'quick' : 'full'}) on ${m.cpu}, ${m.cores} cores, kernel ${m.kernel}`);
  console.log('suite 1: per-packet cost');
  const started = Date.now();
  const rows = await packetCost({ quick, log: (l) => console.log(l) });
  const out = values.out ?? join(root, 'bench', 'results');
  mkdirSync(out, { recursive: true });
  const stamp = quick ? 'quick' : 'full';
  writeFileSync(join(out, `packet-cost-${stamp}.json`), `${JSON.stringify({ machine: m, command: cmd, date: new Date().toISOString(), rows }, null, 2)}\n`);
  writeFileSync(join(out, `packet-cost-${stamp}.md`), markdown(rows, m, cmd));
  console.log(`\nresults in ${out} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
}

main().catch((err: unknown) => {
  console.error(`weir bench: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
