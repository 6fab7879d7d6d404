// The alert rules: promtool accepts them and their unit tests pass (each
// alert fires in one case and stays quiet in another); the PrometheusRule
// carries the same groups; every alert has severity, summary, description
// and a runbook that exists.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';

const ROOT = resolve(import.meta.dirname, '../..');
const RULES = join(ROOT, 'deploy/prometheus/weir-rules.yaml');
const TESTS = join(ROOT, 'deploy/prometheus/tests/weir-rules.test.yaml');
const RUNBOOK_BASE = 'https://weir.dev/runbooks/';

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface Group {
  name: string;
  rules: Rule[];
}

const groups = (parse(readFileSync(RULES, 'utf8')) as { groups: Group[] }).groups;
const alerts = groups.flatMap((g) => g.rules).filter((r): r is Rule & { alert: string } => r.alert !== undefined);
const tmp = mkdtempSync(join(tmpdir(), 'weir-rules-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function promtool(args: string[]): string {
  try {
    return execFileSync('promtool', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    throw new Error(`promtool ${args.join(' ')} failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`);
  }
}

describe('alert rules', () => {
  it('has the alerts the runbooks and dashboard refer to', () => {
    expect(alerts.map((a) => a.alert).sort()).toEqual(
      ['WeirAgentDown', 'WeirAuditWouldDrop', 'WeirEgressViolationBurst', 'WeirEgressViolations', 'WeirEventsLost', 'WeirMapPressure', 'WeirPolicySyncFailing'],
    );
  });

  it('promtool check rules accepts the rule file', () => {
    expect(promtool(['check', 'rules', RULES])).toMatch(new RegExp(`SUCCESS: ${alerts.length} rules found`));
  });

  it('promtool test rules: every unit test passes', () => {
    expect(promtool(['test', 'rules', TESTS])).toMatch(/SUCCESS/);
  });

  it('every alert has a unit test case where it fires and one where it does not', () => {
    const t = parse(readFileSync(TESTS, 'utf8')) as { tests: { alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[] };
    const cases = t.tests.flatMap((x) => x.alert_rule_test ?? []);
    for (const a of alerts) {
      const mine = cases.filter((c) => c.alertname === a.alert);
      expect(mine.some((c) => (c.exp_alerts ?? []).length > 0), `${a.alert} fires in some case`).toBe(true);
      expect(mine.some((c) => (c.exp_alerts ?? []).length === 0), `${a.alert} stays quiet in some case`).toBe(true);
    }
  });

  it('every alert has a severity, summary, description and a runbook_url to a runbook that exists', () => {
    for (const a of alerts) {
      expect(['info', 'warning', 'critical'], a.alert).toContain(a.labels?.severity);
      expect(a.annotations?.summary, a.alert).toBeTruthy();
      expect(a.annotations?.description, a.alert).toBeTruthy();
      expect(a.annotations?.runbook_url, a.alert).toBe(`${RUNBOOK_BASE}${a.alert}`);
      const page = join(ROOT, 'docs/runbooks', `${a.alert}.md`);
      expect(existsSync(page), page).toBe(true);
      const text = readFileSync(page, 'utf8');
      expect(text).toContain(`# ${a.alert}`);
      for (const section of ['## What it means', '## How to confirm', '## What to do']) expect(text, `${a.alert}: ${section}`).toContain(section);
    }
  });

  it('the PrometheusRule holds exactly the same groups, and promtool accepts them', () => {
    const pr = parse(readFileSync(join(ROOT, 'deploy/prometheus/prometheusrule.yaml'), 'utf8')) as {
      apiVersion: string;
      kind: string;
      metadata: { name: string };
      spec: { groups: Group[] };
    };
    expect(pr.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(pr.kind).toBe('PrometheusRule');
    expect(pr.spec.groups).toEqual(groups);
    const f = join(tmp, 'from-prometheusrule.yaml');
    writeFileSync(f, stringify({ groups: pr.spec.groups }));
    expect(promtool(['check', 'rules', f])).toMatch(/SUCCESS/);
  });

  it('every metric the rules use is documented in docs/metrics.md', () => {
    const doc = readFileSync(join(ROOT, 'docs/metrics.md'), 'utf8');
    const used = new Set(alerts.flatMap((a) => [...a.expr.matchAll(/\b(weir_[a-z0-9_]+)/g)].map((m) => m[1] as string)));
    expect(used.size).toBeGreaterThan(5);
    for (const m of used) expect(doc, m).toContain(`\`${m}\``);
  });
});
