// weir preflight on this machine: the real checks pass (nothing fails), the
// command exits 0 and leaves no cgroup or pin behind; a missing object makes
// it exit 1 and say how to build it; a real verifier rejection reaches the
// report with the verifier's words; and the settings preflight loads with
// are the ones Datapath.open uses.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../src/cli/main.js';
import { defaultCgroupRoot } from '../../src/datapath/cgroups.js';
import { Datapath, DEFAULT_OBJECTS_DIR, MAP_NAMES, removePins } from '../../src/datapath/datapath.js';
import { BpfObject } from '../../src/native/index.js';
import { agentObjects, runChecks, summarize, type CheckResult } from '../../src/preflight/checks.js';
import { agentLoadOptions, realEnv } from '../../src/preflight/real-env.js';
import { formatSummary, formatTable } from '../../src/preflight/report.js';
import { BPFFS } from '../helpers/kernel.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const objectPaths = (dir: string): string[] => agentObjects().map((o) => join(dir, o.file));
const leftovers = (): string[] => readdirSync(defaultCgroupRoot()).filter((d) => d.startsWith(`weir-preflight-${process.pid}-`));

function byId(results: CheckResult[], id: string): CheckResult {
  const r = results.find((x) => x.id === id);
  if (!r) throw new Error(`no check ${id}`);
  return r;
}

describe('weir preflight on this machine', () => {
  let out: string[];
  beforeEach(() => {
    out = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
      out.push(String(s));
      return true;
    });
  });
  afterEach(() => vi.restoreAllMocks());

  it('passes every requirement: the verifier takes all three objects and all six programs attach and detach', async () => {
    const results = await runChecks(realEnv({ objectPaths: objectPaths(DEFAULT_OBJECTS_DIR) }), { bpffs: BPFFS, objectsDir: DEFAULT_OBJECTS_DIR });
    vi.restoreAllMocks();
    console.log(`${formatTable(results)}\n${formatSummary(results)}`);
    expect(results.filter((r) => r.status === 'fail')).toEqual([]);
    for (const id of ['kernel', 'privileges', 'cgroup2', 'bpffs', 'verifier-egress', 'verifier-ingress', 'verifier-sock_addr', 'attach']) {
      expect(byId(results, id).status, id).toBe('pass');
    }
    expect(byId(results, 'attach').detail).toMatch(/^6 programs attached by bpf_link/);
    expect(leftovers()).toEqual([]);
    // What RLIMIT_MEMLOCK would have to cover before 5.11: the trie alone is 16 MiB.
    expect(realEnv({ objectPaths: objectPaths(DEFAULT_OBJECTS_DIR) }).memlockNeeded()).toBeGreaterThan(16 << 20);
  });

  it('weir preflight exits 0 here, and 1 with --json ok:false when it cannot find the objects', async () => {
    expect(await main(['preflight'])).toBe(0);
    const text = out.join('');
    expect(text).toMatch(/^✔ Verifier: sock_addr\.bpf\.o +loaded weir_connect4, weir_connect6, weir_sendmsg4, weir_sendmsg6/m);
    expect(text).toMatch(/\d+ passed, \d+ warnings?, 0 failed: this node meets weir's requirements/);
    expect(leftovers()).toEqual([]);

    const empty = mkdtempSync(join(tmpdir(), 'weir-preflight-objects-'));
    try {
      out.length = 0;
      expect(await main(['preflight', '--objects-dir', empty])).toBe(1);
      const failed = out.join('');
      expect(failed).toContain(`✘ Verifier: egress.bpf.o`);
      expect(failed).toContain(`BPF object ${join(empty, 'egress.bpf.o')} is missing`);
      expect(failed).toContain('fix: build the objects: node scripts/build.mjs bpf');
      expect(failed).toContain('failed: this node does not meet weir\'s requirements');

      out.length = 0;
      expect(await main(['preflight', '--objects-dir', empty, '--json'])).toBe(1);
      const json = JSON.parse(out.join('')) as { ok: boolean; checks: CheckResult[] };
      expect(json.ok).toBe(false);
      expect(json.checks.filter((c) => c.status === 'fail').map((c) => c.id)).toEqual(['verifier-egress', 'verifier-ingress', 'verifier-sock_addr']);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it("reports a real verifier rejection with the verifier's own explanation", async () => {
    const env = realEnv({ objectPaths: objectPaths(DEFAULT_OBJECTS_DIR) });
    const real = env.loadObject.bind(env);
    // The fixture dereferences a map value without the NULL check.
    const bad = join(root, 'build/bpf/fixtures/addon_bad.bpf.o');
    env.loadObject = async (path, level) => {
      if (path.endsWith('/egress.bpf.o')) {
        (await BpfObject.load(bad)).close(); // throws: the verifier rejects it
        throw new Error(`${bad} unexpectedly passed the verifier`);
      }
      return real(path, level);
    };
    const results = await runChecks(env, { bpffs: BPFFS, objectsDir: DEFAULT_OBJECTS_DIR });
    const r = byId(results, 'verifier-egress');
    expect(r.status).toBe('fail');
    expect(r.log).toMatch(/invalid mem access 'map_value_or_null'/);
    expect(r.detail).toMatch(/invalid mem access 'map_value_or_null'/);
    expect(r.fix).toContain('the verifier log says why');
    expect(byId(results, 'attach').status).toBe('warn');
    expect(summarize(results).fail).toBe(1);
  });

  it('loads with the settings Datapath.open uses: every map weir sizes has the same max_entries', async () => {
    const pinDir = join(BPFFS, `weir-preflight-kt-${process.pid}`);
    const dp = await Datapath.open({ bpffs: BPFFS, pinDir, podLevel: 1, logger: pino({ level: 'silent' }) });
    const opts = agentLoadOptions(1);
    try {
      for (const { file } of agentObjects()) {
        const obj = await BpfObject.load(join(DEFAULT_OBJECTS_DIR, file), opts);
        try {
          for (const name of MAP_NAMES) {
            if (!obj.maps().some((m) => m.name === name)) continue;
            expect(`${file} ${name} ${obj.map(name).maxEntries}`).toBe(`${file} ${name} ${dp.map(name).maxEntries}`);
          }
        } finally {
          obj.close();
        }
      }
    } finally {
      dp.close();
      removePins(pinDir);
    }
  });
});
