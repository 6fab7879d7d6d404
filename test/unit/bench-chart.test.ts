// The bench's SVG line charts are well-formed XML with both axes, a legend
// entry and a line per series, and gaps where a figure was not measured.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { lineChartSvg, writeCharts } from '../../src/bench/chart.js';

/** A strict enough well-formedness check: one root, tags nest and close, attributes quoted, only XML's entities. */
function checkXml(s: string): { root: string; elements: string[] } {
  const stack: string[] = [];
  const elements: string[] = [];
  let root = '';
  const body = s.replace(/<\?xml[^>]*\?>/, '');
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  for (let m = tag.exec(body); m; m = tag.exec(body)) {
    const text = body.slice(last, m.index);
    if (/<|&(?!(amp|lt|gt|quot|apos);)/.test(text)) throw new Error(`bad text before ${m[0]}: ${text}`);
    last = tag.lastIndex;
    const [, close, name = '', , selfClose] = m;
    if (close) {
      if (stack.pop() !== name) throw new Error(`mismatched </${name}>`);
      continue;
    }
    if (stack.length === 0) {
      if (root) throw new Error('two roots');
      root = name;
    }
    elements.push(name);
    if (!selfClose) stack.push(name);
  }
  if (stack.length > 0) throw new Error(`unclosed <${stack.join('><')}>`);
  if (body.slice(last).trim() !== '') throw new Error('text after the root');
  return { root, elements };
}

describe('bench SVG charts', () => {
  const chart = lineChartSvg({
    title: 'cost & <size>',
    xLabel: 'CIDRs',
    yLabel: 'ns',
    xLog: true,
    series: [
      { name: 'trie', points: [{ x: 10, y: 50 }, { x: 1000, y: 120 }, { x: 100_000, y: 230 }] },
      { name: 'weir "hit"', points: [{ x: 10, y: 40 }, { x: 1000, y: null }, { x: 100_000, y: 60 }, { x: 10_000, y: 55 }] },
    ],
  });

  test('well-formed XML with an svg root, escaped text', () => {
    const { root, elements } = checkXml(chart);
    expect(root).toBe('svg');
    expect(elements).toContain('polyline');
    expect(chart).toContain('cost &amp; &lt;size&gt;');
    expect(chart).toContain('weir &quot;hit&quot;');
  });

  test('both axes with labels and ticks for every x', () => {
    expect(chart).toMatch(/<g class="x-axis">/);
    expect(chart).toMatch(/<g class="y-axis">/);
    for (const x of ['10', '1k', '10k', '100k']) expect(chart).toContain(`>${x}</text>`);
    expect(chart).toContain('>CIDRs</text>');
    expect(chart).toContain('>ns</text>');
    // y ticks reach at least the largest value (230).
    const ticks = [...chart.matchAll(/text-anchor="end" dominant-baseline="middle">([\d.]+)</g)].map((m) => Number(m[1]));
    expect(Math.max(...ticks)).toBeGreaterThanOrEqual(230);
  });

  test('one group, legend entry and point per measured value for each series; a null breaks the line', () => {
    const groups = chart.split('<g class="series"').slice(1);
    expect(groups).toHaveLength(2);
    expect(groups[0]).toContain('data-name="trie"');
    expect(groups[0]?.match(/<polyline/g)).toHaveLength(1);
    expect(groups[0]?.match(/<circle/g)).toHaveLength(3);
    // weir: 10 | gap at 1000 | 10k, 100k -> one polyline (the lone first point draws none), three points.
    expect(groups[1]?.match(/<polyline/g)).toHaveLength(1);
    expect(groups[1]?.match(/<circle/g)).toHaveLength(3);
  });

  test('writeCharts draws from results JSON files', () => {
    const dir = mkdtempSync(join(tmpdir(), 'weir-chart-'));
    try {
      const pc = [0, 1000, 100_000].map((cidrs) => ({ family: 4, cidrs, pods: 10, emptyNs: 40, lpmNs: 100 + cidrs / 1000, weirHitNs: cidrs === 0 ? null : 90, weirMissNs: 95, weirDenyNs: 97 }));
      writeFileSync(join(dir, 'packet-cost-full.json'), JSON.stringify({ date: 'd', rows: pc }));
      const tp = [{ filter: 'none', rules: 0, tcp1Gbps: 8, tcp8Gbps: 6 }, ...[10, 1000].flatMap((rules) => ['weir', 'iptables'].map((filter) => ({ filter, rules, tcp1Gbps: filter === 'weir' ? 8 : 8 / rules, tcp8Gbps: 6 })))];
      writeFileSync(join(dir, 'throughput-quick.json'), JSON.stringify({ date: 'd', rows: { rows: tp } }));
      const files = writeCharts(dir);
      expect(files.map((f) => f.slice(dir.length + 1)).sort()).toEqual(['packet-cost.svg', 'throughput.svg']);
      const t = readFileSync(join(dir, 'throughput.svg'), 'utf8');
      checkXml(t);
      for (const name of ['no filtering', 'weir', 'iptables']) expect(t).toContain(`data-name="${name}"`);
      checkXml(readFileSync(join(dir, 'packet-cost.svg'), 'utf8'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
