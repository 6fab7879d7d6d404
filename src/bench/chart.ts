// Small SVG line charts for the bench results (no dependency: the charts are
// a few polylines, axes and labels). `writeCharts` draws them from the JSON
// files the suites wrote, so a chart always shows committed figures; run it
// alone with `node dist/bench/chart.js [results-dir]`.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Series {
  name: string;
  /** Points in x order; a null y (not measured) breaks the line. */
  points: Array<{ x: number; y: number | null }>;
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Log-scale x (CIDR and rule counts span 10 to 100,000). */
  xLog?: boolean;
  series: Series[];
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#17becf'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(v: number): string {
  if (v === 0) return '0';
  if (Math.abs(v) >= 1000) return v >= 1e6 ? `${v / 1e6}M` : `${v / 1000}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(Math.abs(v) < 1 ? 2 : 1);
}

/** Round numbers for the y axis: about five steps of 1, 2 or 5 times a power of ten. */
function niceTicks(max: number): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * p >= raw) ?? 10) * p;
  const ticks: number[] = [];
  for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

export function lineChartSvg(c: LineChart): string {
  const W = c.width ?? 640;
  const H = c.height ?? 360;
  const L = 64;
  const R = 170; // legend column
  const T = 36;
  const B = 48;
  const xs = [...new Set(c.series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  if (xs.length === 0) throw new RangeError('lineChartSvg: no points');
  const ys = c.series.flatMap((s) => s.points.map((p) => p.y)).filter((y): y is number => y !== null && Number.isFinite(y));
  const yTicks = niceTicks(Math.max(0, ...ys));
  const yMax = yTicks[yTicks.length - 1] ?? 1;
  const tx = (x: number): number => (c.xLog ? Math.log10(Math.max(x, 1)) : x);
  const x0 = tx(xs[0] ?? 0);
  const x1 = tx(xs[xs.length - 1] ?? 1);
  const px = (x: number): number => L + (x1 === x0 ? 0.5 : (tx(x) - x0) / (x1 - x0)) * (W - L - R);
  const py = (y: number): number => H - B - (Math.max(0, y) / yMax) * (H - T - B);
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`);
  out.push(`<title>${esc(c.title)}</title>`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="13" font-weight="bold">${esc(c.title)}</text>`);
  out.push(`<g class="y-axis">`);
  for (const t of yTicks) {
    const y = py(t).toFixed(1);
    out.push(`<line x1="${L}" y1="${y}" x2="${W - R}" y2="${y}" stroke="#ddd"/>`);
    out.push(`<text x="${L - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${fmt(t)}</text>`);
  }
  out.push(`<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="black"/>`);
  out.push(`<text transform="translate(14 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  out.push(`</g>`);
  out.push(`<g class="x-axis">`);
  out.push(`<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="black"/>`);
  for (const x of xs) {
    const X = px(x).toFixed(1);
    out.push(`<line x1="${X}" y1="${H - B}" x2="${X}" y2="${H - B + 4}" stroke="black"/>`);
    out.push(`<text x="${X}" y="${H - B + 16}" text-anchor="middle">${fmt(x)}</text>`);
  }
  out.push(`<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  out.push(`</g>`);
  c.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length] ?? 'black';
    out.push(`<g class="series" data-name="${esc(s.name)}">`);
    // One polyline per run of measured points, so a missing figure shows as a gap.
    let run: string[] = [];
    const flush = (): void => {
      if (run.length > 1) out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${run.join(' ')}"/>`);
      run = [];
    };
    for (const p of [...s.points].sort((a, b) => a.x - b.x)) {
      if (p.y === null || !Number.isFinite(p.y)) {
        flush();
        continue;
      }
      const pt = `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`;
      run.push(pt);
      out.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3" fill="${color}"><title>${esc(`${s.name}: ${fmt(p.x)} → ${fmt(Number(p.y.toPrecision(3)))}`)}</title></circle>`);
    }
    flush();
    const ly = T + 8 + i * 18;
    out.push(`<line x1="${W - R + 12}" y1="${ly}" x2="${W - R + 32}" y2="${ly}" stroke="${color}" stroke-width="2"/>`);
    out.push(`<text x="${W - R + 38}" y="${ly}" dominant-baseline="middle">${esc(s.name)}</text>`);
    out.push(`</g>`);
  });
  out.push(`</svg>`);
  return `${out.join('\n')}\n`;
}

interface Results<T> {
  date: string;
  rows: T;
}

function readResults<T>(file: string): Results<T> | null {
  if (!existsSync(file)) return null;
  return JSON.parse(readFileSync(file, 'utf8')) as Results<T>;
}

interface PacketRow {
  family: number;
  cidrs: number;
  pods: number;
  emptyNs: number;
  lpmNs: number;
  weirHitNs: number | null;
  weirMissNs: number | null;
  weirDenyNs: number | null;
}

interface ThroughputRowLike {
  filter: string;
  rules: number;
  tcp1Gbps: number;
  tcp8Gbps: number;
}

/** Writes the charts for which results exist in `dir` (full results when present, else quick); returns the files written. */
export function writeCharts(dir: string): string[] {
  const written: string[] = [];
  const pick = (name: string): string => {
    const full = join(dir, `${name}-full.json`);
    return existsSync(full) ? full : join(dir, `${name}-quick.json`);
  };
  const pc = readResults<PacketRow[]>(pick('packet-cost'));
  if (pc) {
    const rows = pc.rows.filter((r) => r.family === 4 && r.pods === 10);
    const added = (f: (r: PacketRow) => number | null) => rows.map((r) => {
      const v = f(r);
      return { x: r.cidrs, y: v === null ? null : v - r.emptyNs };
    });
    const svg = lineChartSvg({
      title: 'Per-packet cost added over an empty program (IPv4, 10 pods)',
      xLabel: 'CIDR entries (log scale)',
      yLabel: 'ns added per packet',
      xLog: true,
      series: [
        { name: 'LPM trie alone', points: added((r) => r.lpmNs) },
        { name: 'weir hit (allow)', points: added((r) => r.weirHitNs) },
        { name: 'weir miss (deny)', points: added((r) => r.weirMissNs) },
        { name: 'weir deny rule', points: added((r) => r.weirDenyNs) },
      ],
    });
    const f = join(dir, 'packet-cost.svg');
    writeFileSync(f, svg);
    written.push(f);
  }
  const tp = readResults<{ rows: ThroughputRowLike[] }>(pick('throughput'));
  if (tp) {
    const rows = tp.rows.rows;
    const ns = [...new Set(rows.filter((r) => r.filter !== 'none').map((r) => r.rules))].sort((a, b) => a - b);
    const none = rows.find((r) => r.filter === 'none');
    const filters = [...new Set(rows.map((r) => r.filter))];
    const series: Series[] = filters.map((filter) => ({
      name: filter === 'none' ? 'no filtering' : filter,
      points: ns.map((n) => {
        const r = filter === 'none' ? none : rows.find((x) => x.filter === filter && x.rules === n);
        return { x: n, y: r ? r.tcp1Gbps : null };
      }),
    }));
    const svg = lineChartSvg({ title: 'TCP throughput over veth, one stream', xLabel: 'rules / entries N (log scale)', yLabel: 'Gbit/s', xLog: true, series });
    const f = join(dir, 'throughput.svg');
    writeFileSync(f, svg);
    written.push(f);
  }
  return written;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2] ?? resolve(dirname(fileURLToPath(import.meta.url)), '../../bench/results');
  for (const f of writeCharts(dir)) console.log(`wrote ${f}`);
}
