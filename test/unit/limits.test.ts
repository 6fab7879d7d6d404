// The size and complexity limits of what weir reads (docs/operations.md,
// "Limits"): each oversized input is refused with a message naming the
// limit, quickly, and the last good version of what the file held stays in
// the store. Each limit has a case that fails without it (the input then
// took minutes and gigabytes, or was accepted with a silent loss).
//
// Set WEIR_LIMITS_REPORT=1 to print the measured times (they are in the doc).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { ObjectStore } from '../../src/model/store.js';
import { LIMITS, validateObject } from '../../src/model/validate.js';
import type { EgressPolicy, KubeObject } from '../../src/model/types.js';
import { ManifestSource, MANIFEST_LIMITS, type ManifestError } from '../../src/sources/manifests.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { buildTrie } from '../../src/datapath/trie.js';
import { DEFAULT_CAPACITIES } from '../../src/datapath/datapath.js';

const report = process.env.WEIR_LIMITS_REPORT === '1';
function timed<T>(what: string, fn: () => T): { value: T; ms: number } {
  const t0 = performance.now();
  const value = fn();
  const ms = performance.now() - t0;
  if (report) console.info(`[limits] ${what}: ${ms.toFixed(0)} ms`);
  return { value, ms };
}
async function timedAsync<T>(what: string, fn: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = performance.now();
  const value = await fn();
  const ms = performance.now() - t0;
  if (report) console.info(`[limits] ${what}: ${ms.toFixed(0)} ms`);
  return { value, ms };
}

let dir: string;
let store: ObjectStore;
let source: ManifestSource;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-limits-'));
  store = new ObjectStore();
  // Scans only when the test asks (rescan()): watch events wait a minute.
  source = new ManifestSource({ dir, store, logger: pino({ level: 'silent' }), resyncIntervalMs: 0, debounceMs: 600_000, maxDelayMs: 600_000 });
  await source.start();
});

afterAll(async () => {
  await source?.stop();
  await rm(dir, { recursive: true, force: true });
});

const GOOD = (name: string, port = 443): string => `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: ${name}, namespace: ml}
spec:
  podSelector: {}
  egress:
  - ports: [{port: ${port}}]
`;

/**
 * Writes the good policy `name` into `file`, loads it, then overwrites the
 * file with `content`: returns the errors of that file after the re-scan,
 * having checked that the good policy is still in force.
 */
async function overwrite(file: string, name: string, content: string | Buffer, what: string): Promise<{ errors: ManifestError[]; ms: number }> {
  const good = file.endsWith('.json')
    ? JSON.stringify({ apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name, namespace: 'ml' }, spec: { podSelector: {}, egress: [{ ports: [{ port: 443 }] }] } })
    : GOOD(name);
  await writeFile(join(dir, file), good);
  await source.rescan();
  expect(store.get('EgressPolicy', 'ml', name)?.spec.egress?.[0]?.ports?.[0]?.port, JSON.stringify(source.lastErrors())).toBe(443);
  await writeFile(join(dir, file), content);
  const { ms } = await timedAsync(what, () => source.rescan());
  const errors = source.lastErrors().filter((e) => e.file === file);
  // Last good wins: the policy the file held before is still there.
  expect(store.get('EgressPolicy', 'ml', name)?.spec.egress?.[0]?.ports?.[0]?.port).toBe(443);
  await rm(join(dir, file));
  await source.rescan();
  return { errors, ms };
}

describe('manifest file limits', () => {
  test('MAX_FILE_BYTES: a file over 10 MB is refused unread', async () => {
    const { errors } = await overwrite('big.yaml', 'big', Buffer.alloc(10 * 1024 * 1024 + 1, 0x20), '10 MB + 1 byte');
    expect(errors).toEqual([
      expect.objectContaining({
        reason: 'too-large',
        message: 'big.yaml: 10.0 MB is over the 10.0 MB limit for a manifest file; split it into smaller files (the objects loaded from it before are kept)',
      }),
    ]);
  });

  test('MAX_YAML_TOKENS: 10 MB of YAML under the byte limit is refused before it is parsed (it took minutes and gigabytes)', async () => {
    const flow = `[${'[],'.repeat(3_400_000)}[]]`;
    expect(flow.length).toBeLessThan(MANIFEST_LIMITS.MAX_FILE_BYTES);
    const { errors, ms } = await overwrite('flow.yaml', 'flow', flow, '10 MB of [], (3.4M tokens)');
    expect(errors.map((e) => [e.reason, e.message])).toEqual([
      [
        'too-large',
        'flow.yaml: more than 1000000 YAML tokens (limit MAX_YAML_TOKENS; a 10,000-rule policy needs about 450,000); split it into smaller files (the objects loaded from it before are kept)',
      ],
    ]);
    expect(ms).toBeLessThan(15_000);
    // Comments and line breaks are tokens too (10 MB of them took 44 s and 550 MB).
    const comments = await overwrite('comments.yaml', 'comments', '#\n'.repeat(1_000_001), '1M comment lines');
    expect(comments.errors.map((e) => e.reason)).toEqual(['too-large']);
    expect(comments.errors[0]?.message).toMatch(/limit MAX_YAML_TOKENS/);
  });

  test('a file of YAML errors within the token limit is handled in seconds (each error used to carry a stack trace)', async () => {
    const { errors, ms } = await overwrite('commas.yaml', 'commas', `[${','.repeat(600_000)}]`, '600k YAML errors');
    expect(errors).toHaveLength(1);
    expect(errors[0]?.message).toMatch(/^commas\.yaml \(document 1\): invalid YAML: Unexpected , in flow sequence at line 1, column 3; the objects loaded from this file before are kept$/);
    expect(ms).toBeLessThan(30_000);
  });

  test('MAX_YAML_DOCUMENTS: 10,000 documents load, 10,001 are refused', async () => {
    const doc = (i: number): string => `---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c${i}}\n`;
    await writeFile(join(dir, 'docs.yaml'), Array.from({ length: 10_000 }, (_, i) => doc(i)).join(''));
    const ok = await timedAsync('10,000 documents', () => source.rescan());
    expect(source.lastErrors().filter((e) => e.file === 'docs.yaml')).toEqual([]);
    expect(ok.ms).toBeLessThan(30_000);
    const { errors } = await overwrite('docs.yaml', 'docs', Array.from({ length: 10_001 }, (_, i) => doc(i)).join(''), '10,001 documents');
    expect(errors.map((e) => e.message)).toEqual([
      'docs.yaml: more than 10000 YAML documents (limit MAX_YAML_DOCUMENTS); split it into smaller files (the objects loaded from it before are kept)',
    ]);
    // 250,000 bare document markers: refused at the 10,001st, not composed.
    const markers = await overwrite('markers.yaml', 'markers', '...\n'.repeat(250_000), '250k document markers');
    expect(markers.errors.map((e) => e.reason)).toEqual(['too-large']);
    expect(markers.ms).toBeLessThan(15_000);
  });

  test('MAX_NESTING_DEPTH: 100 levels load; deeper YAML (flow or block) and JSON are refused naming the limit', async () => {
    // A Pod whose unknown field nests to exactly 100 levels (the root mapping is level 1).
    const nest = (levels: number): unknown => {
      let v: unknown = 'leaf';
      for (let i = 0; i < levels; i++) v = { x: v };
      return v;
    };
    const pod = (extra: unknown): unknown => ({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'deep', namespace: 'ml' },
      spec: { containers: [{ name: 'c' }], extra },
    });
    await writeFile(join(dir, 'deep.json'), JSON.stringify(pod(nest(98))));
    await source.rescan();
    expect(source.lastErrors().filter((e) => e.file === 'deep.json')).toEqual([]);
    expect(store.get('Pod', 'ml', 'deep')).toBeDefined();
    await writeFile(join(dir, 'deep.json'), JSON.stringify(pod(nest(99))));
    await source.rescan();
    const j = source.lastErrors().filter((e) => e.file === 'deep.json');
    expect(j).toHaveLength(1);
    expect(j[0]).toMatchObject({ reason: 'invalid', object: 'Pod ml/deep', document: 1 });
    expect(j[0]?.field).toBe(`spec.extra${'.x'.repeat(98)}`);
    expect(j[0]?.message).toMatch(/^deep\.json \(document 1\): Pod ml\/deep: spec\.extra(\.x)+: nested deeper than 100 levels of mappings and sequences \(limit MAX_NESTING_DEPTH\)$/);
    expect(store.get('Pod', 'ml', 'deep')).toBeDefined(); // the last good version
    await rm(join(dir, 'deep.json'));

    const cases: [string, string, RegExp][] = [
      ['flow10k.yaml', `a: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`, /^flow10k\.yaml: nested deeper than 100 levels of mappings and sequences \(limit MAX_NESTING_DEPTH\) at line 1, column 104; split it/],
      ['flowmaps.yaml', `a: ${'{a: '.repeat(10_000)}1${'}'.repeat(10_000)}\n`, /limit MAX_NESTING_DEPTH/],
      ['block150.yaml', Array.from({ length: 150 }, (_, i) => `${' '.repeat(i)}a:\n`).join('') + `${' '.repeat(150)}b: 1\n`, /^block150\.yaml \(document 1\): a(\.a)+: nested deeper than 100 levels/],
      ['block10k.yaml', `${'- '.repeat(10_000)}1\n`, /^block10k\.yaml \(document 1\): (invalid YAML: nested too deeply \(limit MAX_NESTING_DEPTH, 100 levels\)|(\[0\])+: nested deeper than 100 levels)/],
      ['deep10k.json', `${'['.repeat(10_000)}${']'.repeat(10_000)}`, /^deep10k\.json \(document 1\): (\[0\])+: nested deeper than 100 levels/],
    ];
    for (const [file, content, message] of cases) {
      const { errors } = await overwrite(file, file.replace(/\W/g, '-').replace(/-(yaml|json)$/, ''), content, `depth ${file}`);
      expect(errors, file).toHaveLength(1);
      expect(errors[0]?.message, file).toMatch(message);
    }
  });

  test('MAX_YAML_ALIASES: a billion-laughs document is refused; a few aliases are fine', async () => {
    let lol = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n';
    for (let i = 0; i < 9; i++) {
      const name = String.fromCharCode(98 + i);
      lol += `${name}: &${name} [${Array(9).fill(`*${String.fromCharCode(97 + i)}`).join(',')}]\n`;
    }
    const { errors, ms } = await overwrite('lol.yaml', 'lol', lol, 'billion laughs');
    expect(errors).toHaveLength(1);
    expect(errors[0]?.message).toBe(
      'lol.yaml (document 1): invalid YAML: Excessive alias count indicates a resource exhaustion attack (limit MAX_YAML_ALIASES, 100); the objects loaded from this file before are kept',
    );
    expect(ms).toBeLessThan(5_000);
    await writeFile(join(dir, 'aliases.yaml'), `${GOOD('aliased').replace('  - ports: [{port: 443}]', '  - ports: &p [{port: 443}]\n  - ports: *p')}`);
    await source.rescan();
    expect(source.lastErrors().filter((e) => e.file === 'aliases.yaml')).toEqual([]);
    expect(store.get('EgressPolicy', 'ml', 'aliased')?.spec.egress).toHaveLength(2);
    await rm(join(dir, 'aliases.yaml'));
    await source.rescan();
  });

  test('duplicate keys are refused in YAML and JSON, naming the object and the field; 100,000 keys in one mapping parse in seconds (the yaml package check was quadratic)', async () => {
    const yaml = await overwrite('dup.yaml', 'dup', GOOD('dup').replace('  podSelector: {}', '  podSelector: {}\n  mode: Audit\n  mode: Enforce'), 'duplicate YAML key');
    expect(yaml.errors).toEqual([expect.objectContaining({ reason: 'invalid', document: 1, object: 'EgressPolicy ml/dup', field: 'spec.mode' })]);
    expect(yaml.errors[0]?.message).toBe(
      'dup.yaml (document 1): EgressPolicy ml/dup: spec.mode: duplicate key at line 7, column 3 (first at line 6, column 3): YAML keys must be unique',
    );
    const json = await overwrite(
      'dup.json',
      'dupj',
      '{"apiVersion":"weir.dev/v1alpha1","kind":"EgressPolicy","metadata":{"name":"dupj","namespace":"ml"},"spec":{"podSelector":{},"mode":"Audit","mode":"Enforce"}}',
      'duplicate JSON key',
    );
    expect(json.errors).toEqual([expect.objectContaining({ reason: 'invalid', document: 1, object: 'EgressPolicy ml/dupj', field: 'spec.mode' })]);
    expect(json.errors[0]?.message).toBe(
      'dup.json (document 1): EgressPolicy ml/dupj: spec.mode: duplicate key: JSON keys must be unique (JSON.parse would keep the last one silently)',
    );
    const labels = Array.from({ length: 100_000 }, (_, i) => `    k${i}: v\n`).join('');
    const big = await overwrite('keys.yaml', 'keys', GOOD('keys').replace('metadata: {name: keys, namespace: ml}', `metadata:\n  name: keys\n  namespace: ml\n  labels:\n${labels}`), '100,000 keys');
    expect(big.errors.map((e) => [e.field, e.message.replace(/^.*: /, '')])).toEqual([['metadata.labels', '100000 entries; at most 10000 allowed (limit MAX_MAP_ENTRIES)']]);
    expect(big.ms).toBeLessThan(30_000);
  });

  test('1 MB strings: refused where a field has a length limit, dropped where weir does not read the field, and never copied whole into a message', async () => {
    const mb = 'x'.repeat(1024 * 1024);
    const label = await overwrite(
      'str.json',
      'str',
      JSON.stringify({ apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'str', namespace: 'ml', labels: { big: mb } }, spec: { podSelector: {} } }),
      '1 MB label value',
    );
    expect(label.errors.map((e) => [e.field, e.validation?.problem])).toEqual([['metadata.labels[big]', 'label value is 1048576 characters; at most 63 allowed']]);
    const key = await overwrite(
      'key.json',
      'key',
      JSON.stringify({ apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'key', namespace: 'ml' }, spec: { podSelector: {}, [mb]: 1 } }),
      '1 MB unknown key',
    );
    expect(key.errors).toHaveLength(1);
    expect(key.errors[0]?.field).toBe(`spec.${'x'.repeat(61)}...`);
    expect(key.errors[0]?.message.length).toBeLessThan(1000);
    await writeFile(join(dir, 'pod.json'), JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'ml' }, spec: { containers: [{ name: 'c', image: mb }] } }));
    await source.rescan();
    expect(source.lastErrors().filter((e) => e.file === 'pod.json')).toEqual([]);
    expect(JSON.stringify(store.get('Pod', 'ml', 'p')).length).toBeLessThan(1000);
    await rm(join(dir, 'pod.json'));
    await source.rescan();
  });
});

// ---------------------------------------------------------------------------
// Policy size: 100,000 rules

function rulesPolicy(n: number, name = 'big'): Record<string, unknown> {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name, namespace: 'ml' },
    spec: {
      podSelector: {},
      egress: Array.from({ length: n }, (_, i) => ({ to: [{ ipBlock: { cidr: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}/32` } }], ports: [{ protocol: 'TCP', port: 443 }] })),
    },
  };
}

function rulesYaml(n: number): string {
  let y = 'apiVersion: weir.dev/v1alpha1\nkind: EgressPolicy\nmetadata: {name: big, namespace: ml}\nspec:\n  podSelector: {}\n  egress:\n';
  for (let i = 0; i < n; i++) y += `  - to:\n    - ipBlock:\n        cidr: 10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}/32\n    ports:\n    - protocol: TCP\n      port: 443\n`;
  return y;
}

describe('a policy with 100,000 rules', () => {
  test('is refused: in JSON by MAX_RULES_PER_POLICY (one message, before looking inside), in YAML by MAX_YAML_TOKENS', async () => {
    const json = JSON.stringify(rulesPolicy(100_000));
    expect(json.length).toBeLessThan(MANIFEST_LIMITS.MAX_FILE_BYTES);
    const j = await overwrite('rules.json', 'big', json, '100k rules, JSON (refused)');
    expect(j.errors.map((e) => [e.reason, e.field, e.message])).toEqual([
      [
        'invalid',
        'spec',
        'rules.json (document 1): EgressPolicy ml/big: spec: 100000 rules in spec.egress + spec.deny; a policy may hold at most 10000 rules (limit MAX_RULES_PER_POLICY)' +
          '; spec: 100000 peers across spec.egress + spec.deny; a policy may hold at most 10000 peers (limit MAX_PEERS_PER_POLICY)' +
          '; spec: 100000 port entries across spec.egress + spec.deny; a policy may hold at most 10000 (limit MAX_PORTS_PER_POLICY)',
      ],
    ]);
    expect(j.ms).toBeLessThan(15_000);
    const yaml = rulesYaml(100_000);
    expect(yaml.length).toBeLessThan(MANIFEST_LIMITS.MAX_FILE_BYTES);
    const y = await overwrite('rules.yaml', 'big', yaml, '100k rules, YAML (refused)');
    expect(y.errors.map((e) => e.reason)).toEqual(['too-large']);
    expect(y.errors[0]?.message).toMatch(/limit MAX_YAML_TOKENS/);
    expect(y.ms).toBeLessThan(15_000);
  });

  test('at the limit (10,000 rules) it loads from YAML and compiles; the engine also compiles 100,000 rules when handed them directly', async () => {
    await writeFile(join(dir, 'max.yaml'), rulesYaml(LIMITS.MAX_RULES_PER_POLICY));
    const load = await timedAsync('10k rules, YAML load + validate', () => source.rescan());
    expect(source.lastErrors().filter((e) => e.file === 'max.yaml')).toEqual([]);
    expect(load.ms).toBeLessThan(30_000);
    const pol = store.get('EgressPolicy', 'ml', 'big') as EgressPolicy;
    expect(pol.spec.egress).toHaveLength(10_000);
    await rm(join(dir, 'max.yaml'));
    await source.rescan();

    for (const n of [10_000, 100_000]) {
      const s = new ObjectStore();
      const pod = validateObject({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'p', namespace: 'ml', uid: 'u-1' },
        spec: { nodeName: 'node-1', containers: [{ name: 'c' }] },
        status: { phase: 'Running', podIPs: [{ ip: '10.244.0.1' }] },
      });
      if (!pod.ok) throw new Error('pod');
      s.upsert(pod.object);
      // Built as the validator would return it (a 100,000-rule policy never passes validation).
      s.upsert(rulesPolicy(n) as unknown as KubeObject);
      const engine = new PolicyEngine('node-1');
      const { value: state, ms } = timed(`${n} rules, engine compute`, () => engine.compute(s));
      const set = [...state.sets.values()][0];
      expect(set?.error).toBeUndefined();
      expect(set?.v4).toHaveLength(n);
      const trie = timed(`${n} rules, trie build`, () => buildTrie((set?.v4 ?? []).map((f) => ({ prefix: f.prefix, classId: 1 }))));
      // Contiguous /32s with one class: the upper levels and identical leaves are shared.
      expect(trie.value.nodes.length).toBeLessThan(10);
      expect(ms).toBeLessThan(n === 100_000 ? 60_000 : 15_000);
    }
  });

  test('trie capacity: 10,000 scattered CIDRs, each with its own ports, cost one tail each over shared upper nodes (without tails they would need more nodes than weir_nodes holds by default)', () => {
    // Identical subtrees are shared, so the worst case needs distinct
    // classes (rule i: its own port) and addresses scattered at every byte:
    // then, without tails, every IPv4 /32 costs up to two nodes of its own,
    // every IPv6 /128 about 14; with tails, one 40-byte tail each.
    let seed = 12345;
    const rnd = (): number => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      seed >>>= 0;
      return seed & 255;
    };
    const v4 = Array.from({ length: 10_000 }, (_, i) => ({
      // Every /32 in its own /16 (and /24): two nodes of its own, under 256 first-level nodes.
      prefix: { family: 4 as const, bytes: Uint8Array.from([i & 255, i >> 8, rnd(), rnd()]), len: 32 },
      classId: i + 1,
    }));
    const v6 = Array.from({ length: 1_200 }, (_, i) => ({
      prefix: { family: 6 as const, bytes: Uint8Array.from(Array.from({ length: 16 }, rnd)), len: 128 },
      classId: i + 1,
    }));
    const plain4 = buildTrie(v4, { tails: false });
    const plain6 = buildTrie(v6, { tails: false });
    expect(plain4.nodes.length).toBeGreaterThan(DEFAULT_CAPACITIES.nodes);
    expect(plain6.nodes.length).toBeGreaterThan(DEFAULT_CAPACITIES.nodes);
    const t4 = buildTrie(v4);
    const t6 = buildTrie(v6);
    expect(t4.tails).toHaveLength(10_000);
    expect(t6.tails).toHaveLength(1_200);
    expect(t4.nodes.length + t6.nodes.length).toBeLessThan(DEFAULT_CAPACITIES.nodes / 16);
    expect(t4.tails.length + t6.tails.length).toBeLessThan(DEFAULT_CAPACITIES.tails);
    if (report) {
      console.info(
        `[limits] 10,000 scattered IPv4 /32 -> ${t4.nodes.length} nodes + ${t4.tails.length} tails (${plain4.nodes.length} nodes without tails); ` +
          `1,200 scattered IPv6 /128 -> ${t6.nodes.length} nodes + ${t6.tails.length} tails (${plain6.nodes.length} without)`,
      );
    }
  });
});
