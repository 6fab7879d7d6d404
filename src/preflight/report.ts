// How weir preflight prints its results: a table for people, JSON for tools.
import { MIN_KERNEL, summarize, type CheckResult, type CheckStatus } from './checks.js';

const MARK: Record<CheckStatus, string> = { pass: '✔', warn: '!', fail: '✘' };
const WIDTH = 100;

function wrap(text: string, width: number): string[] {
  const out: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      out.push(line);
      line = word;
    } else {
      line = line.length > 0 ? `${line} ${word}` : word;
    }
  }
  out.push(line);
  return out;
}

/**
 * ✔ / ! / ✘, the title, the detail; failures and warnings add a fix line.
 * The first line of a detail is wrapped; the lines after it (a verifier log
 * excerpt, one line per failed attachment) are kept as they are.
 */
export function formatTable(results: CheckResult[]): string {
  const titleWidth = Math.max(...results.map((r) => r.title.length));
  const indent = ' '.repeat(2 + titleWidth + 2);
  const room = Math.max(40, WIDTH - indent.length);
  const lines: string[] = [];
  for (const r of results) {
    const [first = '', ...rest] = r.detail.replace(/\t/g, '  ').split('\n');
    const detail = [...wrap(first, room), ...rest];
    lines.push(`${MARK[r.status]} ${r.title.padEnd(titleWidth)}  ${detail[0] ?? ''}`);
    for (const d of detail.slice(1)) lines.push(`${indent}${d}`);
    if (r.fix !== undefined && r.status !== 'pass') {
      for (const [i, f] of wrap(`fix: ${r.fix}`, room).entries()) lines.push(`${indent}${i === 0 ? '' : '     '}${f}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

export function formatSummary(results: CheckResult[]): string {
  const s = summarize(results);
  const counts = `${s.pass} passed, ${s.warn} warning${s.warn === 1 ? '' : 's'}, ${s.fail} failed`;
  if (s.fail > 0) return `${counts}: this node does not meet weir's requirements; fix the ✘ checks above\n`;
  if (s.warn > 0) return `${counts}: this node meets weir's requirements (the ! checks above are worth a look)\n`;
  return `${counts}: this node meets weir's requirements\n`;
}

export function toJson(results: CheckResult[]): string {
  const summary = summarize(results);
  return `${JSON.stringify(
    { ok: summary.fail === 0, minimumKernel: `${MIN_KERNEL.major}.${MIN_KERNEL.minor}`, summary, checks: results },
    null,
    2,
  )}\n`;
}
