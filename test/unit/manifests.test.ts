import { truncateSync, writeFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, open, readFile, rename, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { ObjectStore, type StoreChange } from '../../src/model/store.js';
import { DEFAULT_DEBOUNCE_MS, DEFAULT_SETTLE_MS, DEFAULT_WRITE_DEBOUNCE_MS, isIgnoredName, ManifestSource, type ManifestError, type ManifestSourceOptions, type ScanResult } from '../../src/sources/manifests.js';

const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'manifests');

let dir: string;
let store: ObjectStore;
let source: ManifestSource | undefined;
let errors: ManifestError[];
let scans: ScanResult[];
/** performance.now() when each scan had been applied, in step with `scans`. */
let scanTimes: number[];
let logLines: string[];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'weir-manifests-'));
  store = new ObjectStore();
  errors = [];
  scans = [];
  scanTimes = [];
  logLines = [];
});

afterEach(async () => {
  await source?.stop();
  source = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function startSource(root: string, extra: Partial<ManifestSourceOptions> = {}): Promise<ManifestSource> {
  const logger = pino({ level: 'debug' }, { write: (line: string) => logLines.push(line) });
  source = new ManifestSource({
    dir: root,
    store,
    logger,
    onError: (e) => errors.push(e),
    onScan: (r) => {
      scans.push(r);
      scanTimes.push(performance.now());
    },
    resyncIntervalMs: 0, // only watch events may trigger a re-scan here
    ...extra,
  });
  await source.start();
  return source;
}

/** Writes the way editors and kubectl-style tools do: a temporary, then a rename. */
async function writeAtomic(path: string, content: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${Date.now()}-${Math.random().toString(36).slice(2)}.partial`);
  await writeFile(tmp, content);
  await rename(tmp, path);
}

/**
 * Writes the way the sandbox's writeFileAtomic (and many tools) do: always
 * the same temporary name next to the file, then a rename over it.
 */
async function writeAtomicSameTmp(path: string, content: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${String(process.pid)}.tmp`);
  await writeFile(tmp, content);
  await rename(tmp, path);
}

async function waitUntil(what: string, cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const egressMode = (): string | undefined => store.get('EgressPolicy', 'ml', 'train-data')?.spec.mode;

function policyYaml(mode: string, port: number | string = 443): string {
  return `apiVersion: v1
kind: Namespace
metadata: {name: ml, labels: {edit: "${String(port)}"}}
---
apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: train-data, namespace: ml}
spec:
  podSelector: {matchLabels: {weir.dev/domain: train-data}}
  mode: ${mode}
  egress:
  - ports: [{port: ${String(port)}}]
`;
}

describe('initial load', () => {
  test('loads multi-document YAML, a JSON List, a single JSON object, a YAML List and .yml; ignores other kinds, dotfiles and editor temporaries', async () => {
    await cp(FIXTURES, dir, { recursive: true });
    const temp = 'apiVersion: v1\nkind: Pod\nmetadata: {name: NAME, namespace: ml}\nspec: {containers: [{name: c}]}\n';
    for (const [file, name] of [
      ['ml/policy.yaml~', 'backup'],
      ['ml/#policy.yaml#', 'autosave'],
      ['ml/.#policy.yaml', 'emacs-lock'],
      ['ml/.policy.yaml.swp', 'swap'],
      ['ml/policy.yaml.tmp', 'tmp'],
      ['ml/4913', 'vim-probe'],
    ] as const) {
      await writeFile(join(dir, file), temp.replace('NAME', name));
    }
    const s = await startSource(dir);
    expect(s.synced).toBe(true);
    expect(s.lastErrors()).toEqual([]);
    expect(store.namespaces().map((n) => n.metadata.name).sort()).toEqual(['ml', 'prod-model']);
    expect(store.pods().map((p) => p.metadata.name).sort()).toEqual(['feature-store-0', 'trainer-0']);
    expect(store.egressPolicies().map((p) => p.metadata.name)).toEqual(['train-data']);
    expect(store.networkPolicies().map((p) => p.spec.policyTypes)).toEqual([['Egress']]);
    expect(store.clusterEgressPolicies().map((p) => [p.metadata.name, p.spec.mode])).toEqual([['no-unapproved-model-apis', 'Audit']]);
    expect(store.services().map((x) => x.metadata.name)).toEqual(['feature-store']);
    expect(store.endpointSlices().map((x) => x.metadata.name)).toEqual(['feature-store-abcde']);
    expect(store.podByIP('fd00:10:244:2::20')?.metadata.name).toBe('feature-store-0');
    expect(scans[0]).toMatchObject({ objects: 9, ignored: 1, errors: [] });
  });

  test('synced is false before start() and true after the first load, even when a file is broken', async () => {
    await writeFile(join(dir, 'bad.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: []}\n');
    const s = new ManifestSource({ dir, store, logger: pino({ level: 'silent' }), resyncIntervalMs: 0 });
    source = s;
    expect(s.synced).toBe(false);
    await s.start();
    expect(s.synced).toBe(true);
    expect(s.lastErrors().map((e) => e.field)).toEqual(['spec.containers']);
  });

  test('start() on a missing directory fails with a clear message', async () => {
    const s = new ManifestSource({ dir: join(dir, 'missing'), store, logger: pino({ level: 'silent' }) });
    await expect(s.start()).rejects.toThrow(/manifests directory .*missing: does not exist/);
  });

  test('a file over 10 MB is refused with a message naming the limit', async () => {
    await writeFile(join(dir, 'huge.yaml'), `# ${'x'.repeat(10 * 1024 * 1024)}\n`);
    await writeFile(join(dir, 'ok.yaml'), policyYaml('Enforce'));
    const s = await startSource(dir);
    expect(s.lastErrors()).toHaveLength(1);
    expect(s.lastErrors()[0]).toMatchObject({ reason: 'too-large', file: 'huge.yaml' });
    expect(s.lastErrors()[0]?.message).toMatch(/huge\.yaml: 10\.0 MB is over the 10\.0 MB limit for a manifest file/);
    expect(egressMode()).toBe('Enforce');
  });

  test('an invalid document is reported with file, document, object and field, and the rest of the file loads', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce', 70000));
    const s = await startSource(dir);
    expect(store.namespace('ml')).toBeDefined();
    expect(egressMode()).toBeUndefined();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ reason: 'invalid', file: 'policy.yaml', document: 2, object: 'EgressPolicy ml/train-data', field: 'spec.egress[0].ports[0].port' });
    expect(errors[0]?.message).toBe('policy.yaml (document 2): EgressPolicy ml/train-data: spec.egress[0].ports[0].port: 70000 is not a port (1-65535)');
    expect(s.lastErrors()).toEqual(errors);
  });

  test('the same object in two files is an error naming both files, and the first file wins', async () => {
    await writeFile(join(dir, 'a.yaml'), policyYaml('Enforce'));
    await writeFile(join(dir, 'b.yaml'), policyYaml('Audit'));
    const s = await startSource(dir);
    expect(egressMode()).toBe('Enforce');
    const dup = s.lastErrors().filter((e) => e.reason === 'duplicate');
    expect(dup.map((e) => e.message)).toContain('b.yaml (document 2): EgressPolicy ml/train-data is also defined in a.yaml (document 2); keeping the one from a.yaml');
  });
});

describe('watching', () => {
  test('an edited file is applied without a restart', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    await startSource(dir);
    const changes: StoreChange[] = [];
    store.onChange((c) => changes.push(c));
    expect(egressMode()).toBe('Enforce');
    await writeAtomic(join(dir, 'policy.yaml'), policyYaml('Audit'));
    await waitUntil('the policy is in Audit mode', () => egressMode() === 'Audit');
    expect(changes.map((c) => [c.type, c.key])).toContainEqual(['upsert', 'EgressPolicy/ml/train-data']);
  });

  test('a new file in a new subdirectory is picked up', async () => {
    await startSource(dir);
    await writeAtomic(join(dir, 'teams', 'ml', 'policy.yaml'), policyYaml('Enforce'));
    await waitUntil('the policy is loaded', () => egressMode() === 'Enforce');
  });

  test('a broken edit keeps the last good object and reports file, object and field; fixing it applies the fix', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    const s = await startSource(dir);
    // The broken edit also changes the Namespace, which is valid and must load.
    await writeAtomic(join(dir, 'policy.yaml'), policyYaml('Audit', 70000));
    await waitUntil('the error is reported', () => errors.length > 0);
    expect(errors[0]).toMatchObject({ file: 'policy.yaml', document: 2, object: 'EgressPolicy ml/train-data', field: 'spec.egress[0].ports[0].port' });
    expect(egressMode()).toBe('Enforce'); // last good version
    expect(store.get('EgressPolicy', 'ml', 'train-data')?.spec.egress?.[0]?.ports?.[0]?.port).toBe(443);
    expect(store.namespace('ml')?.metadata.labels?.['edit']).toBe('70000'); // the valid document loaded
    expect(s.lastErrors().map((e) => e.field)).toEqual(['spec.egress[0].ports[0].port']);
    const logged = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['reason'] === 'invalid');
    expect(logged).toMatchObject({ component: 'manifests', file: 'policy.yaml', document: 2, object: 'EgressPolicy ml/train-data', field: 'spec.egress[0].ports[0].port' });

    await writeAtomic(join(dir, 'policy.yaml'), policyYaml('Audit', 8443));
    await waitUntil('the fix is applied', () => egressMode() === 'Audit');
    expect(s.lastErrors()).toEqual([]);
    expect(errors).toHaveLength(1); // reported once, when it appeared
  });

  test('a YAML syntax error keeps every object previously loaded from the file', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    const s = await startSource(dir);
    await writeAtomic(join(dir, 'policy.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: ml\n');
    await waitUntil('the parse error is reported', () => errors.length > 0);
    expect(errors[0]).toMatchObject({ reason: 'parse', file: 'policy.yaml' });
    expect(errors[0]?.message).toMatch(/^policy\.yaml \(document 1\): invalid YAML/);
    expect(egressMode()).toBe('Enforce');
    expect(store.namespace('ml')).toBeDefined();
    expect(s.lastErrors()).toHaveLength(1);
  });

  test('deleting a file removes its objects and leaves the others', async () => {
    await cp(FIXTURES, dir, { recursive: true });
    await startSource(dir);
    expect(store.pods()).toHaveLength(2);
    await rm(join(dir, 'pods.json'));
    await waitUntil('the pods are gone', () => store.pods().length === 0);
    expect(egressMode()).toBe('Enforce');
    expect(store.services()).toHaveLength(1);
  });

  test('removing one document from a file deletes only that object', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    await startSource(dir);
    const withoutPolicy = policyYaml('Enforce').split('---')[0] ?? '';
    await writeAtomic(join(dir, 'policy.yaml'), withoutPolicy);
    await waitUntil('the policy is gone', () => egressMode() === undefined);
    expect(store.namespace('ml')).toBeDefined();
  });

  test('a file added later cannot take over an object another file already supplies', async () => {
    await writeFile(join(dir, 'b.yaml'), policyYaml('Enforce'));
    const s = await startSource(dir);
    await writeAtomic(join(dir, 'a.yaml'), policyYaml('Audit'));
    await waitUntil('the duplicate is reported', () => errors.some((e) => e.reason === 'duplicate'));
    expect(egressMode()).toBe('Enforce');
    expect(s.lastErrors().find((e) => e.reason === 'duplicate' && e.object === 'EgressPolicy ml/train-data')?.message).toMatch(/^a\.yaml \(document 2\): EgressPolicy ml\/train-data is also defined in b\.yaml/);
  });

  test('a ConfigMap-style ..data symlink swap is applied', async () => {
    // The layout the kubelet gives a ConfigMap volume.
    await mkdir(join(dir, '..2024_01_01'));
    await writeFile(join(dir, '..2024_01_01', 'policy.yaml'), policyYaml('Enforce'));
    await symlink('..2024_01_01', join(dir, '..data'));
    await symlink('..data/policy.yaml', join(dir, 'policy.yaml'));
    await startSource(dir);
    expect(egressMode()).toBe('Enforce');
    expect(store.size).toBe(2); // the ..-prefixed directories are not read on their own

    await mkdir(join(dir, '..2024_01_02'));
    await writeFile(join(dir, '..2024_01_02', 'policy.yaml'), policyYaml('Audit'));
    await symlink('..2024_01_02', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    await rm(join(dir, '..2024_01_01'), { recursive: true });
    await waitUntil('the swapped content is applied', () => egressMode() === 'Audit');
  });

  test('a manifests directory that is itself a symlink can be swapped to another directory', async () => {
    await mkdir(join(dir, 'v1'));
    await mkdir(join(dir, 'v2'));
    await writeFile(join(dir, 'v1', 'policy.yaml'), policyYaml('Enforce'));
    await writeFile(join(dir, 'v1', 'pods.json'), await readFile(join(FIXTURES, 'pods.json'), 'utf8'));
    await writeFile(join(dir, 'v2', 'policy.yaml'), policyYaml('Audit'));
    await symlink('v1', join(dir, 'current'));
    await startSource(join(dir, 'current'));
    expect(store.pods()).toHaveLength(2);
    await symlink('v2', join(dir, 'current.tmp'));
    await rename(join(dir, 'current.tmp'), join(dir, 'current'));
    await waitUntil('v2 is loaded', () => egressMode() === 'Audit' && store.pods().length === 0);
    // And the new target is watched.
    await writeAtomic(join(dir, 'v2', 'policy.yaml'), policyYaml('Enforce'));
    await waitUntil('an edit in v2 is applied', () => egressMode() === 'Enforce');
  });

  test('a manifests directory that disappears keeps every object and reports the directory error', async () => {
    await mkdir(join(dir, 'conf'));
    await writeFile(join(dir, 'conf', 'policy.yaml'), policyYaml('Enforce'));
    await startSource(join(dir, 'conf'));
    await rm(join(dir, 'conf'), { recursive: true });
    await waitUntil('the directory error is reported', () => errors.some((e) => e.reason === 'directory'));
    expect(egressMode()).toBe('Enforce');
    expect(store.namespace('ml')).toBeDefined();
    // Re-created, it is watched again.
    await writeAtomic(join(dir, 'conf', 'policy.yaml'), policyYaml('Audit'));
    await waitUntil('the re-created directory is loaded', () => egressMode() === 'Audit');
  });

  test('after stop() edits are no longer applied and the objects stay', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    const s = await startSource(dir);
    await s.stop();
    const n = scans.length;
    await writeAtomic(join(dir, 'policy.yaml'), policyYaml('Audit'));
    await new Promise((r) => setTimeout(r, 400));
    expect(scans.length).toBe(n);
    expect(egressMode()).toBe('Enforce');
  });
});

// Node's recursive fs.watch on Linux watches each file's inode: once a file
// was replaced by rename, later events for that name are lost. These cases
// set the periodic re-scan far beyond the test, so only watch events can
// apply a change.
describe('watching, after atomic replacements (no periodic re-scan)', () => {
  const NO_RESYNC = { resyncIntervalMs: 3_600_000 };
  const port = (): number | string | undefined => store.get('EgressPolicy', 'ml', 'train-data')?.spec.egress?.[0]?.ports?.[0]?.port;

  test('a file replaced by atomic rename and then deleted: the deletion is applied within 2 s', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    await startSource(dir, NO_RESYNC);
    await writeAtomicSameTmp(join(dir, 'policy.yaml'), policyYaml('Audit'));
    await waitUntil('the replacement is applied', () => egressMode() === 'Audit', 2000);
    await rm(join(dir, 'policy.yaml'));
    await waitUntil('the deleted objects are gone', () => egressMode() === undefined && store.namespace('ml') === undefined, 2000);
  });

  test('a file created by atomic rename, replaced by atomic rename, then deleted: the deletion is applied within 2 s', async () => {
    // The sequence of the conformance case "should stop enforcing policies
    // after they are deleted ..., the policy file having been replaced in place".
    await writeFile(join(dir, 'other.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n');
    await startSource(dir, NO_RESYNC);
    await writeAtomicSameTmp(join(dir, 'policy.yaml'), policyYaml('Enforce'));
    await waitUntil('the policy is loaded', () => egressMode() === 'Enforce', 2000);
    await writeAtomicSameTmp(join(dir, 'policy.yaml'), policyYaml('Audit'));
    await waitUntil('the replacement is applied', () => egressMode() === 'Audit', 2000);
    await rm(join(dir, 'policy.yaml'));
    await waitUntil('the deleted policy is gone', () => egressMode() === undefined, 2000);
    expect(store.namespace('other')).toBeDefined();
  });

  test('repeated atomic-rename edits of the same file are each applied', async () => {
    await writeFile(join(dir, 'policy.yaml'), policyYaml('Enforce', 1000));
    await startSource(dir, NO_RESYNC);
    for (let i = 1; i <= 6; i++) {
      await writeAtomicSameTmp(join(dir, 'policy.yaml'), policyYaml(i % 2 === 0 ? 'Enforce' : 'Audit', 1000 + i));
      await waitUntil(`edit ${String(i)} is applied`, () => port() === 1000 + i, 2000);
    }
    // A deletion after all those replacements is seen too.
    await rm(join(dir, 'policy.yaml'));
    await waitUntil('the deleted policy is gone', () => egressMode() === undefined, 2000);
  });

  test('repeated edits staged outside the directory and moved in over the file are each applied', async () => {
    // A deploy script that renders into a staging directory and `mv`s the
    // result into place: no temporary ever appears in the watched directory.
    await mkdir(join(dir, 'conf'));
    await mkdir(join(dir, 'staging'));
    await writeFile(join(dir, 'conf', 'policy.yaml'), policyYaml('Enforce', 1000));
    await startSource(join(dir, 'conf'), NO_RESYNC);
    for (let i = 1; i <= 4; i++) {
      await writeFile(join(dir, 'staging', 'policy.yaml'), policyYaml('Audit', 1000 + i));
      await rename(join(dir, 'staging', 'policy.yaml'), join(dir, 'conf', 'policy.yaml'));
      await waitUntil(`edit ${String(i)} is applied`, () => port() === 1000 + i, 2000);
    }
  });

  test('a ConfigMap-style volume: an in-place edit of the ..data target, two ..data swaps and the deletion of the visible file are each applied', async () => {
    await mkdir(join(dir, '..2024_01_01'));
    await writeFile(join(dir, '..2024_01_01', 'policy.yaml'), policyYaml('Enforce', 1000));
    await symlink('..2024_01_01', join(dir, '..data'));
    await symlink('..data/policy.yaml', join(dir, 'policy.yaml'));
    await startSource(dir, NO_RESYNC);
    expect(port()).toBe(1000);
    await writeFile(join(dir, '..2024_01_01', 'policy.yaml'), policyYaml('Enforce', 1001));
    await waitUntil('the in-place edit is applied', () => port() === 1001, 2000);
    // Then the kubelet's swap, twice.
    for (const [i, ts] of ['..2024_01_02', '..2024_01_03'].entries()) {
      await mkdir(join(dir, ts));
      await writeFile(join(dir, ts, 'policy.yaml'), policyYaml('Audit', 1002 + i));
      await symlink(ts, join(dir, '..data_tmp'));
      await rename(join(dir, '..data_tmp'), join(dir, '..data'));
      await waitUntil(`swap ${String(i + 1)} is applied`, () => port() === 1002 + i, 2000);
    }
    await rm(join(dir, 'policy.yaml'));
    await waitUntil('the deleted file is gone', () => egressMode() === undefined, 2000);
  });

  test('a subdirectory deleted and re-created at once (one debounced scan) is watched again', async () => {
    await writeFile(join(dir, 'other.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n');
    await mkdir(join(dir, 'sub'));
    await writeFile(join(dir, 'sub', 'policy.yaml'), policyYaml('Enforce', 1000));
    await startSource(dir, { ...NO_RESYNC, debounceMs: 300 });
    for (let i = 1; i <= 3; i++) {
      await rm(join(dir, 'sub'), { recursive: true });
      await mkdir(join(dir, 'sub'));
      await writeFile(join(dir, 'sub', 'policy.yaml'), policyYaml('Enforce', 1000 + 2 * i - 1));
      await waitUntil(`re-creation ${String(i)} is loaded`, () => port() === 1000 + 2 * i - 1, 2000);
      // Written in place: only the new directory's own watch can see this.
      await writeFile(join(dir, 'sub', 'policy.yaml'), policyYaml('Enforce', 1000 + 2 * i));
      await waitUntil(`an edit in re-creation ${String(i)} is applied`, () => port() === 1000 + 2 * i, 2000);
    }
  });

  test('a subdirectory created after start is watched: its file loads, edits and deletions apply, and removing the directory removes its objects', async () => {
    await writeFile(join(dir, 'other.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n');
    await startSource(dir, NO_RESYNC);
    const file = join(dir, 'teams', 'ml', 'policy.yaml');
    await writeAtomicSameTmp(file, policyYaml('Enforce', 1001));
    await waitUntil('the policy in the new subdirectory is loaded', () => port() === 1001, 2000);
    await writeAtomicSameTmp(file, policyYaml('Audit', 1002));
    await waitUntil('an edit in the new subdirectory is applied', () => port() === 1002, 2000);
    await writeFile(join(dir, 'teams', 'pod.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ml}\nspec: {containers: [{name: c}]}\n');
    await waitUntil('a second file in the new subdirectory is loaded', () => store.pods().length === 1, 2000);
    await rm(file);
    await waitUntil('a deletion in the new subdirectory is applied', () => egressMode() === undefined && store.namespace('ml') === undefined, 2000);
    await writeAtomicSameTmp(file, policyYaml('Enforce', 1003));
    await waitUntil('the file re-created in the subdirectory is loaded', () => port() === 1003, 2000);
    await rm(join(dir, 'teams'), { recursive: true });
    await waitUntil('the objects of the removed subdirectory are gone', () => store.size === 1, 2000);
    expect(store.namespace('other')).toBeDefined();
    // A directory of the same name created again is watched again.
    await writeAtomicSameTmp(file, policyYaml('Audit', 1004));
    await waitUntil('the re-created subdirectory is loaded', () => port() === 1004, 2000);
  });
});

// A file rewritten in place (truncate, then write) can be read half-written.
// What is missing from such a read must not be deleted before the file has
// settled: for that moment a policy would be gone and denied traffic pass
// (bench/results/soak-run1.md). Each case watches the store's change stream.
describe('files rewritten in place: removals wait for the file to settle', () => {
  const NO_RESYNC = { resyncIntervalMs: 3_600_000 };
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

  function twoPolicies(port = 443, mode = 'Enforce'): string {
    const policy = (name: string): string => `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: ${name}, namespace: ml}
spec:
  podSelector: {matchLabels: {app: ${name}}}
  mode: ${mode}
  egress:
  - ports: [{port: ${String(port)}}]
`;
    return `${policy('a')}---\n${policy('b')}`;
  }
  const firstDocOnly = (text: string): string => text.slice(0, text.indexOf('---'));

  interface Seen {
    at: number;
    type: StoreChange['type'];
    key: string;
  }
  function recordChanges(): Seen[] {
    const seen: Seen[] = [];
    store.onChange((c) => seen.push({ at: performance.now(), type: c.type, key: c.key }));
    return seen;
  }
  const deletes = (seen: Seen[]): string[] => seen.filter((c) => c.type === 'delete').map((c) => c.key);
  const logged = (msg: string): Record<string, unknown>[] =>
    logLines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['msg'] === msg);
  const HELD = 'removals held until the file settles';
  const APPLIED = 'held removals applied: the file settled without those objects';

  test('a file truncated to zero bytes, then rewritten with the same policies within the settle: no delete is ever emitted', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies());
    await startSource(dir, { ...NO_RESYNC, debounceMs: 20, writeDebounceMs: 20, settleMs: 1000 });
    const seen = recordChanges();
    const n = scans.length;
    await truncate(file, 0);
    await waitUntil('a scan read the empty file', () => scans.length > n);
    expect(store.egressPolicies()).toHaveLength(2);
    await writeFile(file, twoPolicies());
    await sleep(1000 + 500); // past the settle
    expect(deletes(seen)).toEqual([]);
    expect(store.egressPolicies()).toHaveLength(2);
    expect(logged(HELD)).toEqual([expect.objectContaining({ level: 30, file: 'policies.yaml', count: 2, settleMs: 1000 })]);
    expect(logged(APPLIED)).toEqual([]);
  });

  test('a file cut at a document boundary (first document only), then completed: no delete is ever emitted', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies());
    await startSource(dir, { ...NO_RESYNC, debounceMs: 20, writeDebounceMs: 20, settleMs: 1000 });
    const seen = recordChanges();
    const n = scans.length;
    await writeFile(file, firstDocOnly(twoPolicies(8443))); // in place: truncate, write
    await waitUntil('a scan read the first document and held the second', () => scans.slice(n).some((r) => r.held === 1));
    // What the cut file still holds is applied at once; what it lacks is held.
    expect(store.get('EgressPolicy', 'ml', 'a')?.spec.egress?.[0]?.ports?.[0]?.port).toBe(8443);
    expect(store.get('EgressPolicy', 'ml', 'b')).toBeDefined();
    await writeFile(file, twoPolicies(8443));
    await sleep(1000 + 500);
    expect(deletes(seen)).toEqual([]);
    expect(store.get('EgressPolicy', 'ml', 'b')?.spec.egress?.[0]?.ports?.[0]?.port).toBe(8443);
    expect(logged(HELD)).toEqual([expect.objectContaining({ file: 'policies.yaml' })]);
  });

  test('a file that really shrinks (a policy removed for good): the delete is emitted once the default settle has passed', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies());
    await startSource(dir, NO_RESYNC); // default debounce and settle
    const seen = recordChanges();
    const n = scans.length;
    await writeFile(file, firstDocOnly(twoPolicies()));
    await waitUntil('the removed policy is deleted', () => deletes(seen).length > 0, 3000);
    expect(deletes(seen)).toEqual(['EgressPolicy/ml/b']);
    expect(store.get('EgressPolicy', 'ml', 'a')).toBeDefined();
    // Not by the scan that first read the shorter file, but one settle later.
    const firstRead = scanTimes[n] ?? Infinity;
    const deletedAt = seen.find((c) => c.type === 'delete')?.at ?? -Infinity;
    expect(deletedAt - firstRead).toBeGreaterThanOrEqual(DEFAULT_SETTLE_MS - 5);
    // 1, or 2 if a scan caught the file empty between truncation and write.
    expect(logged(HELD)).toEqual([expect.objectContaining({ level: 30, file: 'policies.yaml', count: expect.any(Number), settleMs: DEFAULT_SETTLE_MS })]);
    expect(logged(APPLIED)).toEqual([expect.objectContaining({ level: 30, file: 'policies.yaml', count: 1 })]);
    // An absolute time: not derived from (nor shortened with) the quiet periods before a re-scan.
    expect(DEFAULT_SETTLE_MS).toBe(200);
    expect(DEFAULT_SETTLE_MS).toBeGreaterThanOrEqual(2 * DEFAULT_WRITE_DEBOUNCE_MS);
  });

  test('an unlinked file: its objects are removed once the settle has passed', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies());
    await writeFile(join(dir, 'other.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n');
    await startSource(dir, { ...NO_RESYNC, debounceMs: 20, settleMs: 300 });
    const seen = recordChanges();
    const n = scans.length;
    await rm(file);
    await waitUntil('both policies are deleted', () => deletes(seen).length === 2, 3000);
    expect(deletes(seen).sort()).toEqual(['EgressPolicy/ml/a', 'EgressPolicy/ml/b']);
    const firstRead = scanTimes[n] ?? Infinity;
    for (const c of seen) expect(c.at - firstRead).toBeGreaterThanOrEqual(300 - 5);
    expect(store.namespace('other')).toBeDefined();
    expect(logged(HELD)).toEqual([expect.objectContaining({ file: 'policies.yaml', count: 2 })]);
    expect(logged(APPLIED)).toEqual([expect.objectContaining({ file: 'policies.yaml', count: 2 })]);
  });

  test('an editor that unlinks the file and writes it again within the settle: no delete is ever emitted', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies());
    await startSource(dir, { ...NO_RESYNC, debounceMs: 20, writeDebounceMs: 20, settleMs: 1000 });
    const seen = recordChanges();
    const n = scans.length;
    await rm(file);
    await waitUntil('a scan saw the file gone', () => scans.length > n);
    await writeFile(file, twoPolicies(8443));
    await waitUntil('the new version is applied', () => store.get('EgressPolicy', 'ml', 'b')?.spec.egress?.[0]?.ports?.[0]?.port === 8443);
    await sleep(1000 + 500);
    expect(deletes(seen)).toEqual([]);
    expect(store.egressPolicies()).toHaveLength(2);
  });

  test('a rename-over (atomic save) still applies a modification at once, and a removal after the settle', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies());
    await startSource(dir, { ...NO_RESYNC, settleMs: 300 });
    const seen = recordChanges();
    let n = scans.length;
    await writeAtomicSameTmp(file, twoPolicies(443, 'Audit'));
    await waitUntil('the new version is applied', () => store.egressPolicies().every((p) => p.spec.mode === 'Audit'), 2000);
    expect(seen.map((c) => c.type)).toEqual(['upsert', 'upsert']);
    expect(scans.slice(n).filter((r) => r.held > 0)).toEqual([]); // nothing was held on the way
    expect(logged(HELD)).toEqual([]);
    n = scans.length;
    await writeAtomicSameTmp(file, firstDocOnly(twoPolicies(443, 'Audit')));
    await waitUntil('the removed policy is deleted', () => deletes(seen).length === 1, 2000);
    expect(deletes(seen)).toEqual(['EgressPolicy/ml/b']);
    expect((seen.at(-1)?.at ?? 0) - (scanTimes[n] ?? Infinity)).toBeGreaterThanOrEqual(300 - 5);
    expect(store.get('EgressPolicy', 'ml', 'a')?.spec.mode).toBe('Audit');
  });

  test('a policy moved to another file: no delete and no duplicate error; the new file supplies it once the old one has settled', async () => {
    await writeFile(join(dir, 'a.yaml'), twoPolicies());
    await startSource(dir, { ...NO_RESYNC, debounceMs: 20, settleMs: 300 });
    const seen = recordChanges();
    const n = scans.length;
    await writeAtomic(join(dir, 'a.yaml'), firstDocOnly(twoPolicies()));
    await waitUntil('a scan held the policy a.yaml dropped', () => scans.slice(n).some((r) => r.held === 1));
    await writeAtomic(join(dir, 'b.yaml'), twoPolicies(8443).slice(firstDocOnly(twoPolicies(8443)).length + '---\n'.length));
    await waitUntil('b.yaml supplies the policy', () => store.get('EgressPolicy', 'ml', 'b')?.spec.egress?.[0]?.ports?.[0]?.port === 8443, 2000);
    expect(deletes(seen)).toEqual([]);
    expect(errors).toEqual([]);
    expect(store.egressPolicies()).toHaveLength(2);
  });

  test('300 non-atomic rewrites of a file holding 2 policies (as in the soak): the policy count never drops below 2', async () => {
    const file = join(dir, 'policies.yaml');
    await writeFile(file, twoPolicies(1000));
    // Scan as often as the watcher allows, so scans land inside the rewrites.
    await startSource(dir, { ...NO_RESYNC, debounceMs: 1, writeDebounceMs: 1, maxDelayMs: 5 });
    const seen = recordChanges();
    let fewest = store.egressPolicies().length;
    store.onChange(() => (fewest = Math.min(fewest, store.egressPolicies().length)));
    const n = scans.length;
    const last = 300;
    for (let i = 1; i <= last; i++) {
      const text = twoPolicies(1000 + i);
      if (i % 2 === 0) {
        truncateSync(file);
        await sleep(Math.random() < 0.5 ? 0 : 1);
        writeFileSync(file, text);
      } else {
        // open 'w' truncates; the second document follows a moment later.
        const fh = await open(file, 'w');
        try {
          await fh.write(firstDocOnly(text));
          await sleep(1);
          await fh.write(text.slice(firstDocOnly(text).length));
        } finally {
          await fh.close();
        }
      }
      await sleep(Math.random() * 4);
    }
    const port = (name: string): unknown => store.get('EgressPolicy', 'ml', name)?.spec.egress?.[0]?.ports?.[0]?.port;
    await waitUntil('the last rewrite is applied', () => port('a') === 1000 + last && port('b') === 1000 + last, 3000);
    await sleep(DEFAULT_SETTLE_MS + 300);
    const heldScans = scans.slice(n).filter((s) => s.held > 0).length;
    expect(fewest, `${String(heldScans)} of ${String(scans.length - n)} scans held removals`).toBe(2);
    expect(deletes(seen)).toEqual([]);
    // The scans did read half-written files (otherwise this proves nothing).
    expect(heldScans).toBeGreaterThan(0);
  });
});

// The quiet period before a re-scan: short after an atomic save (a rename),
// longer after a manifest written in place; a storm of events costs a
// bounded number of scans.
describe('re-scan timing and event storms', () => {
  const NO_RESYNC = { resyncIntervalMs: 3_600_000 };
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const port = (): unknown => store.get('EgressPolicy', 'ml', 'train-data')?.spec.egress?.[0]?.ports?.[0]?.port;

  test('defaults: 20 ms after renames, creations and deletions, 100 ms after a manifest written in place', () => {
    expect(DEFAULT_DEBOUNCE_MS).toBe(20);
    expect(DEFAULT_WRITE_DEBOUNCE_MS).toBe(100);
  });

  test('an atomic save is applied after the short quiet period; a write in place waits writeDebounceMs', async () => {
    const file = join(dir, 'policy.yaml');
    await writeFile(file, policyYaml('Enforce', 1000));
    await startSource(dir, { ...NO_RESYNC, debounceMs: 20, writeDebounceMs: 1000 });
    let t = performance.now();
    await writeAtomic(file, policyYaml('Enforce', 1001)); // a temporary (a dotfile, written), then a rename
    await waitUntil('the atomic save is applied', () => port() === 1001, 3000);
    expect(performance.now() - t).toBeLessThan(700);
    const n = scans.length;
    t = performance.now();
    await writeFile(file, policyYaml('Enforce', 1002)); // in place: truncate, write
    await waitUntil('the write in place is applied', () => port() === 1002, 5000);
    expect(performance.now() - t).toBeGreaterThanOrEqual(1000 - 5);
    expect(scans.length - n).toBe(1); // nothing read it half-written
  });

  test('a burst of 1,000 atomic saves of one file costs a bounded number of scans, and the last save is applied', async () => {
    const file = join(dir, 'policy.yaml');
    await writeFile(file, policyYaml('Enforce', 1000));
    await startSource(dir, NO_RESYNC); // default quiet periods and maxDelayMs
    const n = scans.length;
    const t0 = performance.now();
    for (let i = 1; i <= 1000; i++) await writeAtomicSameTmp(file, policyYaml('Enforce', 1000 + i));
    const burstMs = performance.now() - t0;
    await waitUntil('the last save is applied', () => port() === 2000, 5000);
    await sleep(300);
    const count = scans.length - n;
    // A scan per quiet gap of 20 ms in the burst (none, unless the machine stalls) and per maxDelayMs (1 s).
    expect(count, `${String(count)} scans for 1,000 saves in ${burstMs.toFixed(0)} ms`).toBeLessThanOrEqual(25);
    expect(count).toBeGreaterThanOrEqual(1);
  });

  test('a burst of 1,000 writes in place costs a bounded number of scans, and no policy disappears', async () => {
    const file = join(dir, 'policy.yaml');
    await writeFile(file, policyYaml('Enforce', 1000));
    await startSource(dir, NO_RESYNC);
    let gone = 0;
    store.onChange((c) => {
      if (c.type === 'delete') gone++;
    });
    const n = scans.length;
    const t0 = performance.now();
    for (let i = 1; i <= 1000; i++) writeFileSync(file, policyYaml('Enforce', 1000 + i));
    const burstMs = performance.now() - t0;
    await waitUntil('the last write is applied', () => port() === 2000, 5000);
    await sleep(DEFAULT_SETTLE_MS + 100);
    const count = scans.length - n;
    expect(count, `${String(count)} scans for 1,000 writes in ${burstMs.toFixed(0)} ms`).toBeLessThanOrEqual(10);
    expect(gone).toBe(0);
  });

  test('a ConfigMap swap to a directory written slowly (pauses far past the quiet period) is read complete: nothing changes before the swap, all of it after', async () => {
    const nsYaml = (edit: number): string => `apiVersion: v1\nkind: Namespace\nmetadata: {name: ml, labels: {edit: "${String(edit)}"}}\n`;
    const policyOnly = (p: number): string => policyYaml('Enforce', p).slice(policyYaml('Enforce', p).indexOf('---\n') + 4);
    await mkdir(join(dir, '..2024_01_01'));
    await writeFile(join(dir, '..2024_01_01', 'ns.yaml'), nsYaml(1));
    await writeFile(join(dir, '..2024_01_01', 'policy.yaml'), policyOnly(1000));
    await symlink('..2024_01_01', join(dir, '..data'));
    await symlink('..data/ns.yaml', join(dir, 'ns.yaml'));
    await symlink('..data/policy.yaml', join(dir, 'policy.yaml'));
    await startSource(dir, NO_RESYNC); // default quiet periods: 20 ms after the directory's creation
    expect(port()).toBe(1000);
    const seen: StoreChange['type'][] = [];
    store.onChange((c) => seen.push(c.type));
    const n = scans.length;
    // The kubelet writes the new data directory in full before it swaps ..data.
    await mkdir(join(dir, '..2024_01_02'));
    await sleep(150);
    await writeFile(join(dir, '..2024_01_02', 'ns.yaml'), nsYaml(2));
    await sleep(150);
    const text = policyOnly(1001);
    const fh = await open(join(dir, '..2024_01_02', 'policy.yaml'), 'w');
    await fh.write(text.slice(0, text.length / 2));
    await sleep(150);
    await fh.write(text.slice(text.length / 2));
    await fh.close();
    await sleep(150);
    expect(scans.length).toBeGreaterThan(n); // the directory's creation was seen and scanned
    expect(seen).toEqual([]);
    await symlink('..2024_01_02', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    await rm(join(dir, '..2024_01_01'), { recursive: true });
    await waitUntil('the swap is applied', () => port() === 1001 && store.namespace('ml')?.metadata.labels?.['edit'] === '2', 2000);
    await sleep(DEFAULT_SETTLE_MS + 100);
    expect(seen).toEqual(['upsert', 'upsert']);
    expect(errors).toEqual([]);
  });

  test('a steady stream of events cannot postpone the re-scan beyond maxDelayMs, and scans stay bounded', async () => {
    const file = join(dir, 'policy.yaml');
    await writeFile(file, policyYaml('Enforce', 1000));
    await startSource(dir, { ...NO_RESYNC, debounceMs: 50, maxDelayMs: 250 });
    const n = scans.length;
    const t0 = performance.now();
    let i = 0;
    let seenDuring = false;
    // A save every ~5 ms (well inside the quiet period) for 1.5 s.
    while (performance.now() - t0 < 1500) {
      await writeAtomicSameTmp(file, policyYaml('Enforce', 1000 + ++i));
      if (scans.length > n) seenDuring = true;
      await sleep(5);
    }
    await waitUntil('the last save is applied', () => port() === 1000 + i, 3000);
    expect(seenDuring).toBe(true);
    const count = scans.length - n;
    // About one per maxDelayMs (6), more only where the stream paused for 50 ms.
    expect(count, `${String(count)} scans for ${String(i)} saves in 1.5 s`).toBeLessThanOrEqual(Math.min(30, Math.ceil(i / 5)));
  });
});

describe('watch handles', () => {
  const fsWatchers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'FSEventWrap').length;
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50));

  test('one watch per directory read (and per ConfigMap data directory); stop() closes every one, also with a scan running', async () => {
    await settle();
    const before = fsWatchers();
    await mkdir(join(dir, 'conf', 'a', 'b'), { recursive: true });
    await mkdir(join(dir, 'conf', '..2024_01_01'));
    await writeFile(join(dir, 'conf', '..2024_01_01', 'policy.yaml'), policyYaml('Enforce'));
    await symlink('..2024_01_01', join(dir, 'conf', '..data'));
    await symlink('..data/policy.yaml', join(dir, 'conf', 'policy.yaml'));
    await writeFile(join(dir, 'conf', 'a', 'b', 'ns.yaml'), 'apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n');
    const s = await startSource(join(dir, 'conf'), { resyncIntervalMs: 3_600_000 });
    expect(store.size).toBe(3);
    // conf, conf/a, conf/a/b, conf/..2024_01_01 (the watch of the parent of
    // conf does not keep the process alive, so it is not listed here).
    expect(fsWatchers() - before).toBe(4);
    // A subdirectory that appears is watched, one that goes away is not.
    await writeAtomic(join(dir, 'conf', 'c', 'pod.yaml'), 'apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ml}\nspec: {containers: [{name: c}]}\n');
    await waitUntil('the new subdirectory is loaded', () => store.pods().length === 1, 2000);
    await settle();
    expect(fsWatchers() - before).toBe(5);
    await rm(join(dir, 'conf', 'a'), { recursive: true });
    await waitUntil('the removed subdirectory is unloaded', () => store.namespace('other') === undefined, 2000);
    await settle();
    expect(fsWatchers() - before).toBe(3);
    // Stop in the middle of a burst of changes and a scan.
    await writeAtomic(join(dir, 'conf', 'd', 'e', 'policy.yaml'), policyYaml('Audit', 8443));
    const scanning = s.rescan();
    await s.stop();
    await scanning;
    await settle();
    expect(fsWatchers()).toBe(before);
  });
});

describe('isIgnoredName', () => {
  test.each(['.hidden.yaml', '.#policy.yaml', 'policy.yaml~', '#policy.yaml#', '.policy.yaml.swp', 'policy.yaml.tmp', '4913', '..data', '..2024_01_01'])(
    '%s is ignored',
    (name) => {
      expect(isIgnoredName(name)).toBe(true);
    },
  );

  test.each(['policy.yaml', 'pods.json', 'a#b.yml'])('%s is not ignored', (name) => {
    expect(isIgnoredName(name)).toBe(false);
  });
});
