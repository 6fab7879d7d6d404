// `npm run bench`: runs the benchmark suites, prints a table and writes JSON
// and Markdown results to bench/results/. `--quick` runs a reduced matrix.
import { cpus, totalmem, release, loadavg } from 'node:os';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connectMarkdown, packetCost, type PacketCostRow } from './packet-cost.js';
import { propagation, propagationMarkdown } from './propagation.js';
import { footprint, footprintMarkdown } from './footprint.js';
import { events, eventsMarkdown } from './events.js';
import { throughput, throughputMarkdown } from './throughput.js';
import { install, installMarkdown } from './install.js';
import { dnsBench, dnsMarkdown } from './dns-latency.js';
import { writeCharts } from './chart.js';

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
    '| family | CIDRs | pods | empty | LPM trie + | weir hit + | weir miss (default deny) + | weir deny rule + | trie nodes | tails | trie memory |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| IPv${r.family} | ${r.cidrs} | ${r.pods} | ${f(r.emptyNs)} | ${f(r.lpmNs - r.emptyNs)} | ${f(r.weirHitNs - r.emptyNs)} | ${f(r.weirMissNs - r.emptyNs)} | ${f(r.weirDenyNs - r.emptyNs)} | ${r.trieNodes} | ${r.trieTails ?? '–'} | ${(r.trieBytes / 2 ** 20).toFixed(1)} MiB |`,
    );
  }
  return `${lines.join('\n')}\n`;
}


async function main(): Promise<void> {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false }, out: { type: 'string' }, suite: { type: 'string', multiple: true } } });
  const want = (s: string): boolean => !values.suite || values.suite.includes(s);
  const quick = values.quick ?? false;
  const args = process.argv.slice(2);
  // The command as it was really run: `npm run bench` only when npm ran it.
  const cmd = process.env.npm_lifecycle_event === 'bench' ? `npm run bench${args.length > 0 ? ` -- ${args.join(' ')}` : ''}` : `node dist/bench/main.js${args.length > 0 ? ` ${args.join(' ')}` : ''}`;
  const m = machine();
  console.log(`weir bench (${quick ? 'quick' : 'full'}) on ${m.cpu}, ${m.cores} cores, kernel ${m.kernel}`);
  const started = Date.now();
  const out = values.out ?? join(root, 'bench', 'results');
  mkdirSync(out, { recursive: true });
  const stamp = quick ? 'quick' : 'full';
  const timings: Array<{ suite: string; seconds: number; error?: string; load: string }> = [];
  const load = (): string => loadavg().map((x) => x.toFixed(2)).join(' ');
  // Each suite is timed; one that fails is recorded and the others still run.
  const timed = async (suite: string, fn: () => Promise<void>): Promise<void> => {
    if (!want(suite)) return;
    const t0 = Date.now();
    const before = load();
    try {
      await fn();
      timings.push({ suite, seconds: (Date.now() - t0) / 1000, load: `${before} → ${load()}` });
    } catch (err) {
      timings.push({ suite, seconds: (Date.now() - t0) / 1000, error: (err as Error).message, load: `${before} → ${load()}` });
      console.error(`suite ${suite} failed: ${(err as Error).stack ?? String(err)}`);
      process.exitCode = 1;
    }
    const last = timings[timings.length - 1];
    console.log(`suite ${suite}: ${last?.seconds.toFixed(1)} s${last?.error ? ' (FAILED)' : ''}`);
  };
  const save = (name: string, rows: unknown, md: string): void => {
    writeFileSync(join(out, `${name}-${stamp}.json`), `${JSON.stringify({ machine: m, command: cmd, date: new Date().toISOString(), rows }, null, 2)}\n`);
    writeFileSync(join(out, `${name}-${stamp}.md`), md);
  };
  await timed('packet-cost', async () => {
    console.log('suite 1: per-packet cost');
    const rows = await packetCost({ quick, log: (l) => console.log(l), out });
    const connect = connectMarkdown(rows);
    save('packet-cost', rows, markdown(rows, m, cmd) + (connect === '' ? '' : `\n${connect}`));
  });
  await timed('throughput', async () => {
    console.log('suite 2: throughput and latency over veth (sandbox node)');
    const res = await throughput({ quick, log: (l) => console.log(l) });
    const md = throughputMarkdown(res, m, cmd);
    save('throughput', res, md);
    console.log(md);
  });
  await timed('install', async () => {
    console.log('suite 3: rule install and update time');
    const res = await install({ quick, log: (l) => console.log(l) });
    const md = installMarkdown(res, m, cmd);
    save('install', res, md);
    console.log(md);
  });
  await timed('propagation', async () => {
    console.log('suite 4: propagation (model change -> maps written)');
    const rows = await propagation({ quick, log: (l) => console.log(l) });
    save('propagation', rows, propagationMarkdown(rows, m, cmd));
  });
  await timed('footprint', async () => {
    console.log('suite 5: footprint (agent RSS and CPU, BPF map memory)');
    const res = await footprint({ quick, log: (l) => console.log(l) });
    const md = footprintMarkdown(res, m, cmd);
    save('footprint', res, md);
    console.log(md);
  });
  await timed('events', async () => {
    console.log('suite 6: event pipeline (violation events per second, loss accounting)');
    const res = await events({ quick, log: (l) => console.log(l) });
    const md = eventsMarkdown(res, m, cmd);
    save('events', res, md);
    console.log(md);
  });
  await timed('dns', async () => {
    console.log('suite 7: DNS lookups (latency added by weir, kernel cost per DNS message)');
    const res = await dnsBench({ quick, log: (l) => console.log(l) });
    const md = dnsMarkdown(res, m, cmd);
    save('dns', res, md);
    console.log(md);
  });
  for (const f of writeCharts(out)) console.log(`chart: ${f}`);
  const total = (Date.now() - started) / 1000;
  const summary = [
    `# Bench wall time (${stamp})`,
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${cmd}\`. Date: ${new Date(started).toISOString()}.`,
    `Budget: ${quick ? '2' : '15'} minutes for all suites. Load average (1, 5, 15 min) before → after each suite shown; the machine is shared.`,
    '',
    '| suite | wall time | load average | status |',
    '|---|---:|---|---|',
    ...timings.map((t) => `| ${t.suite} | ${t.seconds.toFixed(1)} s | ${t.load} | ${t.error ? `failed: ${t.error.replace(/\|/g, '\\|').slice(0, 200)}` : 'ok'} |`),
    `| **total** | **${total.toFixed(1)} s (${(total / 60).toFixed(1)} min)** | | |`,
    '',
  ].join('\n');
  console.log(`\n${summary}`);
  // Only a run of every suite is the summary of the mode; a run of some suites prints its times only.
  if (!values.suite) writeFileSync(join(out, `summary-${stamp}.md`), summary);
  console.log(`\nresults in ${out} (${total.toFixed(0)} s)`);
}

main().catch((err: unknown) => {
  console.error(`weir bench: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
