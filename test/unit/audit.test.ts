// The tamper-evident audit log: chain, rotation, reopen, checkpoints, signing, and `weir audit verify`.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AuditLog, type AuditLogOptions } from '../../src/audit/audit-log.js';
import { canonicalDigest, canonicalJson, sha256Hex, ZERO_HASH } from '../../src/audit/canonical-json.js';
import type { AuditCheckpoint, AuditRecord } from '../../src/audit/record.js';
import { verifyAuditLog, verifyFiles, type VerifyResult } from '../../src/audit/verify.js';
import type { Violation } from '../../src/agent/agent.js';
import { auditCommand } from '../../src/cli/audit-command.js';
import { main, UsageError } from '../../src/cli/main.js';

let dir: string;
let file: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'weir-audit-'));
  file = join(dir, 'audit.log');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function violation(i: number): Violation {
  return {
    time: '2026-01-01T00:00:00.000Z', verdict: 'drop', reason: 'deny-rule', namespace: 'ml', pod: `trainer-${i}`, workload: 'Deployment/trainer',
    domain: '', policy: 'EgressPolicy/ml/p', rule: 'EgressPolicy/ml/p deny[0]', protocol: 'TCP', destination: '203.0.113.7', port: 443,
    source: '10.0.0.1', pid: 1000 + i, command: 'curl', thread: 'curl', count: 1, hook: 'connect4', generation: 3,
  };
}

let tick = 0;
const clock = () => new Date(Date.UTC(2026, 0, 1) + tick++ * 1000);
const quiet: AuditLogOptions = { checkpointEvery: 0, checkpointIntervalMs: 0, now: clock };

/** A closed log of n violations, ending with the close() checkpoint (seq n + 1). */
async function writeLog(n: number, opts: AuditLogOptions = {}): Promise<AuditCheckpoint[]> {
  const cps: AuditCheckpoint[] = [];
  const log = await AuditLog.open(file, { ...quiet, onCheckpoint: (c) => cps.push(c), ...opts });
  for (let i = 1; i <= n; i++) log.append('violation', violation(i));
  await log.close();
  return cps;
}

const lines = (f = file) => readFileSync(f, 'utf8').split('\n').slice(0, -1);
const writeLines = (ls: string[], f = file) => writeFileSync(f, ls.map((l) => `${l}\n`).join(''));
const record = (line: string) => JSON.parse(line) as AuditRecord;
function failure(r: VerifyResult) {
  if (r.ok) throw new Error(`expected a failure, verify said OK (${r.records} records)`);
  return r.failure;
}

describe('canonical JSON', () => {
  it('sorts keys recursively, writes no whitespace, and numbers as ECMAScript does', () => {
    expect(canonicalJson({ b: [3, { z: 1, a: -0 }], a: 'é\n', c: null, d: undefined, e: 1e21, f: 0.1 })).toBe(
      '{"a":"é\\n","b":[3,{"a":0,"z":1}],"c":null,"e":1e+21,"f":0.1}',
    );
    expect(canonicalJson({ '\u00e9': 1, z: 2, A: 3 })).toBe('{"A":3,"z":2,"é":1}');
  });

  it('refuses values that would not read back the same', () => {
    expect(() => canonicalJson({ x: Number.NaN })).toThrow(TypeError);
    expect(() => canonicalJson([undefined])).toThrow(/\$\[0\] is undefined/);
    expect(() => canonicalJson({ m: new Map() })).toThrow(/Map, not a plain object/);
    expect(() => canonicalJson({ s: '\ud800' })).toThrow(/lone surrogate/);
    expect(() => canonicalJson({ n: 1n })).toThrow(/bigint/);
  });
});

describe('AuditLog', () => {
  it('writes canonical chained lines: genesis first, each prev the hash of the line before', async () => {
    await writeLog(3);
    const ls = lines();
    expect(ls).toHaveLength(4);
    const recs = ls.map(record);
    expect(recs[0]).toMatchObject({ seq: 1, kind: 'violation', prev: ZERO_HASH, genesis: true });
    expect(Object.keys(recs[0] ?? {}).sort()).toEqual(['data', 'genesis', 'kind', 'prev', 'seq', 'time']);
    for (let i = 0; i < ls.length; i++) {
      expect(canonicalJson(recs[i])).toBe(ls[i]);
      if (i > 0) expect(recs[i]?.prev).toBe(sha256Hex(ls[i - 1] ?? ''));
    }
    expect(recs[3]).toMatchObject({ seq: 4, kind: 'checkpoint', data: { count: 3, head: sha256Hex(ls[2] ?? '') } });
  });

  it('an untouched log verifies, reporting the record count and head hash', async () => {
    await writeLog(20);
    const r = await verifyAuditLog(file);
    expect(r).toMatchObject({ ok: true, records: 21, firstSeq: 1, lastSeq: 21, start: 'genesis', checkpoints: 1, head: sha256Hex(lines()[20] ?? '') });
  });

  it('refuses data JSON cannot hold without moving the chain, and fails clearly after close', async () => {
    const log = await AuditLog.open(file, quiet);
    log.append('start', { version: '0.1.0', node: 'n1' });
    expect(() => log.append('policy', { fromGeneration: 1, toGeneration: 2, digest: 'x', bad: Number.NaN })).toThrow(TypeError);
    expect(() => log.append('checkpoint' as 'start', { version: '', node: null })).toThrow(/not one of/);
    log.append('policy', { fromGeneration: 1, toGeneration: 2, digest: canonicalDigest({ sets: [] }) });
    await log.close();
    await log.close(); // idempotent
    expect(() => log.append('stop', { version: '0.1.0', node: 'n1' })).toThrow(/is closed/);
    await expect(log.checkpoint()).rejects.toThrow(/is closed/);
    expect(lines().map((l) => record(l).seq)).toEqual([1, 2, 3]);
    expect((await verifyAuditLog(file)).ok).toBe(true);
  });

  it('an fqdn-intent record (a query for a name no rule allows) is chained like the others and verifies', async () => {
    const log = await AuditLog.open(file, quiet);
    log.append('violation', violation(1));
    log.append('fqdn-intent', {
      time: '2026-01-01T00:00:01.000Z', namespace: 'ml', pod: 'model-0', workload: 'StatefulSet/model', domain: 'prod-model',
      name: 'api.unapproved.example', qtype: 'A', resolver: '10.96.0.10', pid: 42, command: 'python3', count: 2, policy: 'EgressPolicy/ml/p',
    });
    log.append('violation', violation(2));
    await log.close();
    expect(lines().map((l) => record(l).kind)).toEqual(['violation', 'fqdn-intent', 'violation', 'checkpoint']);
    expect(record(lines()[1] ?? '').data).toMatchObject({ name: 'api.unapproved.example', count: 2 });
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 4 });
  });

  it('close() loses nothing when 10,000 appends are in flight, across rotations too', async () => {
    const log = await AuditLog.open(file, { ...quiet, checkpointEvery: 1000, maxBytes: 256 * 1024, maxFiles: 1000 });
    for (let i = 1; i <= 10_000; i++) log.append('violation', violation(i));
    expect(log.pendingBytes).toBeGreaterThan(0);
    await log.close();
    const files = [...readdirSync(dir)].filter((f) => f.startsWith('audit.log'));
    expect(files.length).toBeGreaterThan(2);
    const recs = (await verifyAuditLog(file));
    // 10,000 violations + a checkpoint after each 1000 (the one on close has nothing new to cover).
    expect(recs).toMatchObject({ ok: true, records: 10_010, lastSeq: 10_010, checkpoints: 10 });
    let violations = 0;
    for (const f of files) for (const l of lines(join(dir, f))) if (record(l).kind === 'violation') violations++;
    expect(violations).toBe(10_000);
  });

  it('a write failure fails the log: onError once, close() rejects, later appends throw', async () => {
    const sub = join(dir, 'gone');
    const errors: Error[] = [];
    const log = await AuditLog.open(join(sub, 'audit.log'), { ...quiet, maxBytes: 1000, onError: (e) => errors.push(e) });
    rmSync(sub, { recursive: true }); // rotation cannot create the next file
    for (let i = 1; i <= 5; i++) log.append('violation', violation(i));
    await expect(log.flush()).rejects.toThrow(/ENOENT/);
    expect(errors).toHaveLength(1);
    expect(() => log.append('stop', { version: '0.1.0', node: null })).toThrow(/failed: ENOENT/);
    await expect(log.close()).rejects.toThrow(/ENOENT/);
  });

  it('checkpoint() resolves with the checkpoint it wrote and hands it to onCheckpoint; periodic ones come by count and time', async () => {
    const seen: AuditCheckpoint[] = [];
    const log = await AuditLog.open(file, { checkpointEvery: 3, checkpointIntervalMs: 20, checkpointOnClose: false, onCheckpoint: (c) => seen.push(c) });
    expect(await log.checkpoint()).toBeNull(); // nothing to cover yet
    for (let i = 1; i <= 3; i++) log.append('violation', violation(i)); // seq 1-3, checkpoint seq 4
    log.append('audit', { ...violation(4), verdict: 'audit' }); // seq 5
    const cp = await log.checkpoint(); // seq 6
    expect(cp).toMatchObject({ seq: 6, kind: 'checkpoint', data: { count: 5 } });
    log.append('stop', { version: '0.1.0', node: null }); // seq 7
    await vi.waitFor(() => expect(seen.map((c) => c.seq)).toEqual([4, 6, 8]), { timeout: 2000 });
    await log.close();
    const ls = lines();
    expect(cp?.data.head).toBe(sha256Hex(ls[4] ?? ''));
    expect(canonicalJson(seen[2])).toBe(ls[7]);
  });
});

describe('verify: tampering is reported at the first bad record', () => {
  // 10 violations (seq 1-10) and the close checkpoint (seq 11), one per line.
  beforeEach(async () => {
    await writeLog(10);
  });

  it('a flipped byte in a record\'s data', async () => {
    const ls = lines();
    ls[3] = (ls[3] ?? '').replace('"trainer-4"', '"trainer-5"');
    writeLines(ls);
    const r = await verifyAuditLog(file);
    expect(failure(r)).toEqual({ file, line: 4, seq: 4, reason: expect.stringMatching(/^altered/) });
    expect(r).toMatchObject({ records: 3, lastSeq: 3, lastGood: { seq: 3, hash: sha256Hex(ls[2] ?? '') } });
  });

  it('a flipped byte in a record\'s prev', async () => {
    const ls = lines();
    const r = record(ls[5] ?? '');
    const flipped = `${r.prev.slice(0, 10)}${r.prev[10] === 'a' ? 'b' : 'a'}${r.prev.slice(11)}`;
    ls[5] = (ls[5] ?? '').replace(r.prev, flipped);
    writeLines(ls);
    expect(failure(await verifyAuditLog(file))).toEqual({ file, line: 6, seq: 6, reason: expect.stringMatching(/^prev does not match/) });
  });

  it('a deleted record', async () => {
    const ls = lines();
    ls.splice(4, 1); // seq 5
    writeLines(ls);
    expect(failure(await verifyAuditLog(file))).toEqual({ file, line: 5, seq: 6, reason: 'seq 6 follows seq 4: 1 record(s) missing before it' });
  });

  it('an inserted record, forged to link to the one before it', async () => {
    const ls = lines();
    const forged = canonicalJson({ seq: 5, time: '2026-01-01T00:00:00.000Z', kind: 'violation', data: violation(99), prev: sha256Hex(ls[3] ?? '') });
    ls.splice(4, 0, forged);
    writeLines(ls);
    expect(failure(await verifyAuditLog(file))).toEqual({ file, line: 5, seq: 5, reason: expect.stringMatching(/^inserted/) });
  });

  it('an inserted copy of a record', async () => {
    const ls = lines();
    ls.splice(3, 0, ls[2] ?? '');
    writeLines(ls);
    expect(failure(await verifyAuditLog(file))).toEqual({ file, line: 4, seq: 3, reason: 'a copy of the record before it' });
  });

  it('two records swapped', async () => {
    const ls = lines();
    [ls[2], ls[3]] = [ls[3] ?? '', ls[2] ?? ''];
    writeLines(ls);
    expect(failure(await verifyAuditLog(file))).toEqual({ file, line: 3, seq: 4, reason: 'out of order: seq 4 comes before seq 3' });
  });

  it('truncation: invisible without a checkpoint, caught against one kept off the node', async () => {
    const cp = JSON.parse(readFileSync(file, 'utf8').split('\n')[10] ?? '') as AuditCheckpoint;
    writeLines(lines().slice(0, 8));
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 8 });
    const cut = { file, line: 9, seq: 9, reason: expect.stringMatching(/^missing: the log ends at seq 8 but the external checkpoint covers seq 11/) };
    expect(failure(await verifyAuditLog(file, { checkpoint: { count: cp.data.count, head: cp.data.head, record: cp } }))).toEqual(cut);
    expect(failure(await verifyAuditLog(file, { checkpoint: { count: 10, head: cp.data.head } }))).toMatchObject({ line: 9, seq: 9 });
  });

  it('truncation of just the checkpoint record itself is caught when the whole record was kept', async () => {
    const cp = record(lines()[10] ?? '') as AuditCheckpoint;
    writeLines(lines().slice(0, 10));
    expect((await verifyAuditLog(file, { checkpoint: { count: 10, head: cp.data.head } })).ok).toBe(true);
    expect(failure(await verifyAuditLog(file, { checkpoint: { count: 10, head: cp.data.head, record: cp } }))).toMatchObject({ line: 11, seq: 11 });
  });

  it('a tail cut mid-line', async () => {
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.slice(0, text.length - 30));
    expect(failure(await verifyAuditLog(file))).toMatchObject({ file, line: 11, seq: null, reason: expect.stringMatching(/^incomplete line at the end of the file/) });
  });

  it('any single changed byte in any line but the last is reported at that line', async () => {
    const original = readFileSync(file);
    const starts = [0];
    for (let i = 0; i < original.length; i++) if (original[i] === 0x0a) starts.push(i + 1);
    const lastLineStart = starts[starts.length - 2] ?? 0;
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: lastLineStart - 1 }), fc.integer({ min: 0, max: 255 }), async (pos, byte) => {
        fc.pre(original[pos] !== byte);
        const changed = Buffer.from(original);
        changed[pos] = byte;
        writeFileSync(file, changed);
        const line = starts.filter((s) => s <= pos).length;
        const f = failure(await verifyAuditLog(file));
        expect(f.line).toBe(line);
      }),
      { numRuns: 300 },
    );
  });
});

describe('rotation', () => {
  it('keeps the chain across files and verify walks them oldest first', async () => {
    await writeLog(30, { maxBytes: 2000, maxFiles: 100 });
    const names = readdirSync(dir).sort();
    expect(names.length).toBeGreaterThan(3);
    const rotated = names.filter((n) => n !== 'audit.log').map((n) => Number(n.split('.').pop())).sort((a, b) => b - a);
    const order = [...rotated.map((i) => join(dir, `audit.log.${i}`)), file];
    for (let i = 1; i < order.length; i++) {
      const lastOfPrev = lines(order[i - 1]).at(-1) ?? '';
      expect(record(lines(order[i])[0] ?? '').prev).toBe(sha256Hex(lastOfPrev));
    }
    expect(record(lines(order[0])[0] ?? '')).toMatchObject({ seq: 1, genesis: true });
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 31, files: order });
    // A record deleted from a rotated file is found in that file.
    const mid = order[1] ?? '';
    const ls = lines(mid);
    const seq = record(ls[1] ?? '').seq;
    ls.splice(1, 1);
    writeLines(ls, mid);
    expect(failure(await verifyAuditLog(file))).toMatchObject({ file: mid, line: 2, seq: seq + 1 });
  });

  it('drops files past maxFiles; the chain then starts at the oldest record kept', async () => {
    await writeLog(30, { maxBytes: 2000, maxFiles: 2 });
    expect(readdirSync(dir).sort()).toEqual(['audit.log', 'audit.log.1', 'audit.log.2']);
    const r = await verifyAuditLog(file);
    expect(r).toMatchObject({ ok: true, start: 'continued', lastSeq: 31 });
    expect(r.firstSeq).toBeGreaterThan(1);
  });
});

describe('reopening', () => {
  it('continues the chain from the last record of FILE', async () => {
    await writeLog(3);
    const head = sha256Hex(lines()[3] ?? '');
    const log = await AuditLog.open(file, quiet);
    expect(log.opened).toEqual({ state: 'continued', seq: 4, head, file });
    expect(log.append('start', { version: '0.1.0', node: 'n1' })).toMatchObject({ seq: 5 });
    await log.close();
    expect(record(lines()[4] ?? '')).toMatchObject({ seq: 5, kind: 'start', prev: head });
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 6 });
  });

  it('continues from FILE.1 when FILE is missing (stopped between rotation and the next write)', async () => {
    await writeLog(3);
    renameSync(file, `${file}.1`);
    const log = await AuditLog.open(file, quiet);
    expect(log.opened).toMatchObject({ state: 'continued', seq: 4, file: `${file}.1` });
    log.append('stop', { version: '0.1.0', node: 'n1' });
    await log.close();
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 6, files: [`${file}.1`, file] });
  });

  it('a tail cut mid-line: the damaged file is set aside and a new chain says why', async () => {
    await writeLog(5);
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.slice(0, text.length - 20));
    const log = await AuditLog.open(file, quiet);
    expect(log.opened.state).toBe('chain-broken');
    log.append('start', { version: '0.1.0', node: 'n1' });
    await log.close();
    expect(readFileSync(`${file}.1`, 'utf8')).toBe(text.slice(0, text.length - 20)); // nothing appended onto garbage
    const first = record(lines()[0] ?? '');
    expect(first).toMatchObject({
      seq: 1, genesis: true, prev: ZERO_HASH, kind: 'chain-broken',
      data: { file: 'audit.log.1', line: 6, reason: expect.stringMatching(/^audit\.log line 6: incomplete line/), lastGood: { seq: 5, hash: sha256Hex(lines(`${file}.1`)[4] ?? '') } },
    });
    // The break stays visible to verify; the new chain verifies on its own.
    expect(failure(await verifyAuditLog(file))).toMatchObject({ file: `${file}.1`, line: 6 });
    expect(await verifyFiles([file])).toMatchObject({ ok: true, start: 'chain-broken', records: 3 });
  });

  it('an edited record in FILE: set aside, and the new chain names it', async () => {
    await writeLog(5);
    const ls = lines();
    ls[1] = (ls[1] ?? '').replace('"trainer-2"', '"trainer-9"');
    writeLines(ls);
    const log = await AuditLog.open(file, quiet);
    await log.close();
    expect(log.opened).toMatchObject({ state: 'chain-broken', record: { data: { line: 2, reason: expect.stringMatching(/^audit\.log line 2 \(seq 2\): altered/) } } });
    expect(existsSync(`${file}.1`)).toBe(true);
  });

  it('a genesis record after others (a restarted chain) is a failure', async () => {
    await writeLog(2);
    const ls = lines();
    rmSync(file);
    await writeLog(1);
    writeLines([...ls, ...lines()]);
    expect(failure(await verifyAuditLog(file))).toMatchObject({ line: 4, seq: 1, reason: expect.stringMatching(/new chain starts here/) });
  });
});

describe('signed checkpoints', () => {
  const keys = generateKeyPairSync('ed25519');
  const other = generateKeyPairSync('ed25519');

  beforeEach(async () => {
    writeFileSync(join(dir, 'key.pem'), keys.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    await writeLog(7, { checkpointEvery: 3, signingKey: join(dir, 'key.pem') }); // checkpoints at seq 4, 8 and (on close) 10
  });

  it('verify with the public key', async () => {
    const cps = lines().map(record).filter((r) => r.kind === 'checkpoint');
    expect(cps.map((c) => c.seq)).toEqual([4, 8, 10]);
    expect(cps.every((c) => typeof c.sig === 'string')).toBe(true);
    expect(await verifyAuditLog(file, { publicKey: keys.publicKey })).toMatchObject({ ok: true, records: 10, signedCheckpoints: 3 });
  });

  it('fail with a wrong key', async () => {
    expect(failure(await verifyAuditLog(file, { publicKey: other.publicKey }))).toEqual({
      file, line: 4, seq: 4, reason: 'checkpoint signature does not verify with the given key',
    });
  });

  it('fail when a checkpoint was altered (and re-chained), or its signature removed', async () => {
    // Rewrite the chain from the second checkpoint on, as an attacker with write access can.
    const ls = lines();
    const recs = ls.map(record);
    const cp = recs[7];
    if (!cp) throw new Error('no checkpoint at seq 8');
    cp.time = '2030-01-01T00:00:00.000Z';
    ls[7] = canonicalJson(cp);
    for (let i = 8; i < ls.length; i++) {
      const r = recs[i] as AuditRecord;
      r.prev = sha256Hex(ls[i - 1] ?? '');
      if (r.kind === 'checkpoint') (r.data as { head: string }).head = r.prev;
      ls[i] = canonicalJson(r);
    }
    writeLines(ls);
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true }); // without a key, a rewrite is consistent
    expect(failure(await verifyAuditLog(file, { publicKey: keys.publicKey }))).toMatchObject({ line: 8, seq: 8, reason: expect.stringMatching(/signature does not verify/) });
    const { sig: _sig, ...unsigned } = cp;
    ls[7] = canonicalJson(unsigned);
    writeLines(ls);
    expect(failure(await verifyAuditLog(file, { publicKey: keys.publicKey }))).toMatchObject({ line: 8, seq: 8, reason: 'checkpoint is not signed, but a key was given' });
  });
});

describe('weir audit verify', () => {
  let out: string[];
  beforeEach(() => {
    out = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
      out.push(String(s));
      return true;
    });
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  });
  afterEach(() => vi.restoreAllMocks());

  it('exits 0 for an intact log, printing the count, head and a checkpoint to keep', async () => {
    await writeLog(4);
    const head = sha256Hex(lines()[4] ?? '');
    expect(await auditCommand.run(['verify', file])).toBe(0);
    expect(out.join('')).toContain('OK: 5 records in 1 file (seq 1 to 5, from its genesis)');
    expect(out.join('')).toContain(`--checkpoint 5:${head}`);
    out.length = 0;
    expect(await auditCommand.run(['verify', file, '--json'])).toBe(0);
    expect(JSON.parse(out.join(''))).toMatchObject({ ok: true, records: 5, head });
  });

  it('exits 1 for a tampered log, naming the first bad record', async () => {
    await writeLog(4);
    const ls = lines();
    ls.splice(1, 1);
    writeLines(ls);
    expect(await auditCommand.run(['verify', file])).toBe(1);
    expect(out.join('')).toContain(`TAMPERED: ${file} line 2 (seq 3): seq 3 follows seq 1`);
    expect(out.join('')).toContain(`verified before it: 1 record(s) in 1 file; last good record seq 1 ${sha256Hex(ls[0] ?? '')}`);
  });

  it('exits 1 for truncation against --checkpoint given as COUNT:HEAD, a record, or a file holding a log line', async () => {
    await writeLog(4);
    const ls = lines();
    const cpLine = ls[4] ?? '';
    writeLines(ls.slice(0, 3));
    expect(await auditCommand.run(['verify', file])).toBe(0);
    expect(await auditCommand.run(['verify', file, '--checkpoint', `4:${sha256Hex(ls[3] ?? '')}`])).toBe(1);
    expect(await auditCommand.run(['verify', file, '--checkpoint', cpLine])).toBe(1);
    const logFile = join(dir, 'agent.log');
    writeFileSync(logFile, `{"level":"info","msg":"started"}\n{"level":"info","msg":"audit checkpoint","checkpoint":${cpLine}}\n`);
    expect(await auditCommand.run(['verify', file, '--checkpoint', logFile])).toBe(1);
    expect(out.join('')).toContain('truncated');
  });

  it('checks signatures with --key', async () => {
    const keys = generateKeyPairSync('ed25519');
    await writeLog(4, { signingKey: keys.privateKey });
    writeFileSync(join(dir, 'pub.pem'), keys.publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(join(dir, 'other.pem'), generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }));
    expect(await auditCommand.run(['verify', file, '--key', join(dir, 'pub.pem')])).toBe(0);
    expect(await auditCommand.run(['verify', file, '--key', join(dir, 'other.pem')])).toBe(1);
  });

  it('usage errors: no subcommand, no file, unknown option, unreadable key or checkpoint (exit 2 through main)', async () => {
    await writeLog(1);
    await expect(auditCommand.run([])).rejects.toThrow(UsageError);
    await expect(auditCommand.run(['verify'])).rejects.toThrow(UsageError);
    await expect(auditCommand.run(['check', file])).rejects.toThrow(/unknown subcommand/);
    await expect(auditCommand.run(['verify', join(dir, 'nope.log')])).rejects.toThrow(/no such audit log/);
    await expect(auditCommand.run(['verify', file, '--key', join(dir, 'missing.pem')])).rejects.toThrow(UsageError);
    await expect(auditCommand.run(['verify', file, '--checkpoint', 'garbage'])).rejects.toThrow(UsageError);
    await expect(auditCommand.run(['verify', file, '--frobnicate'])).rejects.toThrow(UsageError);
    expect(await main(['audit', 'verify'])).toBe(2);
    expect(await main(['audit', 'verify', file])).toBe(0);
    expect(await main(['audit', '--help'])).toBe(0);
    expect(out.join('')).toContain('Examples:\n  weir audit verify');
  });
});

it('verify: a last line without its newline (a write cut short) is reported as incomplete', async () => {
  await writeLog(1);
  const l = lines();
  writeFileSync(file, `${l[0]}\n${l[1]}`);
  expect(failure(await verifyAuditLog(file))).toMatchObject({ line: 2, seq: 2, reason: expect.stringMatching(/^incomplete line/) });
});
