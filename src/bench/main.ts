// `npm run bench`: runs the benchmark suites, prints a table and writes JSON
// and Markdown results to bench/results/. `--quick` runs a reduced matrix.
import { cpus, totalmem, release } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { packetCost, type PacketCostRow } from './packet-cost.js';
import { propagation, type PropagationRow } from './propagation.js';
import { footprint, footprintMarkdown } from './footprint.js';
import { events, eventsMarkdown } from './events.js';
import { throughput, throughputMarkdown } from './throughput.js';
import { install, installMarkdown } from './install.js';

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

function propagationMarkdown(rows: PropagationRow[], m: Record<string, string | number>, cmd: string): string {
  const lines = [
    '# Propagation: model change to maps written',
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`. Target: p99 under 100 ms.`,
    '',
    '| pods | policies | change | samples | p50 ms | p99 ms | max ms |',
    '|---:|---:|---|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.pods} | ${r.policies} | ${r.change} | ${r.samples} | ${r.p50Ms.toFixed(1)} | ${r.p99Ms.toFixed(1)} | ${r.maxMs.toFixed(1)} |`),
  ];
  return `${lines.join('\n')}\n`;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, out: { type: 'string' }, suite: { type: 'string', multiple: true } } });
  const want = (s: string): boolean => !values.suite || values.suite.includes(s);
  const quick = values.quick ?? false;
  const cmd = `npm run bench${quick ? ' -- --quick' : ''}`;
  const m = machine();
  console.log(`weir bench (${quick ? 'quick' : 'full'}) on ${m.cpu}, ${m.cores} cores, kernel ${m.kernel}`);
  const started = Date.now();
  const out = values.out ?? join(root, 'bench', 'results');
  mkdirSync(out, { recursive: true });
  const stamp = quick ? 'quick' : 'full';
  const save = (name: string, rows: unknown, md: string): void => {
    writeFileSync(join(out, `${name}-${stamp}.json`), `${JSON.stringify({ machine: m, command: cmd, date: new Date().toISOString(), rows }, null, 2)}\n`);
    writeFileSync(join(out, `${name}-${stamp}.md`), md);
  };
  if (want('packet-cost')) {
    console.log('suite 1: per-packet cost');
    const rows = await packetCost({ quick, log: (l) => console.log(l) });
    save('packet-cost', rows, markdown(rows, m, cmd));
  }
  if (want('throughput')) {
    console.log('suite 2: throughput and latency over veth (sandbox node)');
    const res = await throughput({ quick, log: (l) => console.log(l) });
    const md = throughputMarkdown(res, m, cmd);
    save('throughput', res, md);
    console.log(md);
  }
  if (want('install')) {
    console.log('suite 3: rule install and update time');
    const res = await install({ quick, log: (l) => console.log(l) });
    const md = installMarkdown(res, m, cmd);
    save('install', res, md);
    console.log(md);
  }
  if (want('propagation')) {
    console.log('suite 4: propagation (model change -> maps written)');
    const rows = await propagation({ quick, log: (l) => console.log(l) });
    save('propagation', rows, propagationMarkdown(rows, m, cmd));
  }
  if (want('footprint')) {
    console.log('suite 5: footprint (agent RSS and CPU, BPF map memory)');
    const res = await footprint({ quick, log: (l) => console.log(l) });
    const md = footprintMarkdown(res, m, cmd);
    save('footprint', res, md);
    console.log(md);
  }
  if (want('events')) {
    console.log('suite 6: event pipeline (violation events per second, loss accounting)');
    const res = await events({ quick, log: (l) => console.log(l) });
    const md = eventsMarkdown(res, m, cmd);
    save('events', res, md);
    console.log(md);
  }
  console.log(`\nresults in ${out} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
}

main().catch((err: unknown) => {
  console.error(`weir bench: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
