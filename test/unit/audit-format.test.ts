// The audit log's fast writer (fixed-order violation records, one-shot
// SHA-256, one write per batch) writes exactly the bytes the generic
// canonical JSON writer wrote before it: a log from the earlier writer is
// reproduced byte for byte, continued, and verifies as one chain.
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AuditLog, type AuditLogOptions } from '../../src/audit/audit-log.js';
import { canonicalJson, FixedShapeJson, sha256Hex } from '../../src/audit/canonical-json.js';
import { recordLine, violationRecordLine, type AuditKind, type AuditRecord } from '../../src/audit/record.js';
import { verifyAuditLog } from '../../src/audit/verify.js';

const FIXTURES = resolve(import.meta.dirname, '../fixtures/audit');
/** [kind, data] appended to produce golden.log, which the writer before this one (commit b2351eb) wrote with the options below. */
const inputs = JSON.parse(readFileSync(join(FIXTURES, 'inputs.json'), 'utf8')) as [AuditKind, Record<string, unknown>][];
const golden = readFileSync(join(FIXTURES, 'golden.log'));

function goldenOptions(): AuditLogOptions {
  let tick = 0;
  return { checkpointEvery: 4, checkpointIntervalMs: 0, now: () => new Date(Date.UTC(2026, 0, 1) + tick++ * 1000) };
}

/** RFC 8785 for the values of these tests, as plainly as it can be written: the reference the writers are held to. */
function reference(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(reference).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().filter((k) => o[k] !== undefined).map((k) => `${JSON.stringify(k)}:${reference(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'weir-audit-format-'));
});
afterEach(() => {
  vi.restoreAllMocks();
  rmSync(dir, { recursive: true, force: true });
});

describe('audit record format', () => {
  it('writes the same bytes as the earlier writer for the same appends (golden.log)', async () => {
    const file = join(dir, 'audit.log');
    const log = await AuditLog.open(file, goldenOptions());
    for (const [kind, data] of inputs) log.append(kind, data as never);
    await log.close();
    expect(readFileSync(file).toString()).toBe(golden.toString());
  });

  it('continues a log of the earlier writer: old and new records verify as one chain', async () => {
    const file = join(dir, 'audit.log');
    copyFileSync(join(FIXTURES, 'golden.log'), file);
    const log = await AuditLog.open(file, goldenOptions());
    expect(log.opened).toMatchObject({ state: 'continued', seq: 12 });
    for (const [kind, data] of inputs) log.append(kind, data as never);
    await log.close();
    const r = await verifyAuditLog(file);
    const lines = readFileSync(file, 'utf8').split('\n').slice(0, -1);
    expect(lines.length).toBeGreaterThan(12 + inputs.length);
    expect(r).toMatchObject({ ok: true, records: lines.length, start: 'genesis' });
    expect(lines[12]).toContain(`"prev":"${sha256Hex(lines[11] ?? '')}"`);
  });

  it('the fixed-order writer gives canonical JSON\'s bytes for any violation record, or refuses what it refuses', () => {
    const text = fc.string({ unit: 'binary', maxLength: 12 });
    const num = fc.oneof(fc.integer(), fc.double(), fc.constantFrom(-0, 1e21, 2 ** 53, Number.NaN));
    const value = fc.oneof(text, num, fc.constant(null), fc.constant(undefined), fc.boolean());
    const violation = fc.record({
      time: text, verdict: text, reason: text, namespace: text, pod: text, workload: text, domain: text, policy: text, rule: text, protocol: text,
      destination: text, port: fc.oneof(fc.nat({ max: 65535 }), fc.constant(null)), source: text, pid: num, command: text, thread: text, count: num, hook: text, generation: num,
    });
    // Mostly well-formed violations; sometimes a member changed, added or removed.
    const data = fc.tuple(violation, fc.option(fc.tuple(fc.constantFrom('port', 'pid', 'extra', 'time', 'a\ud800'), value, fc.boolean()), { freq: 2 })).map(([v, change]) => {
      const d: Record<string, unknown> = { ...v };
      if (change) {
        const [k, x, remove] = change;
        if (remove) delete d[k];
        else d[k] = x;
      }
      return d;
    });
    const record = fc.record({
      seq: fc.integer({ min: 1 }), time: text, kind: fc.constantFrom('violation', 'audit', 'policy'), data, prev: fc.constantFrom('0'.repeat(64), sha256Hex('x')), genesis: fc.constantFrom(true, undefined),
    });
    let fast = 0;
    fc.assert(
      fc.property(record, (r) => {
        const rec = r as unknown as AuditRecord;
        if (rec.genesis === undefined) delete rec.genesis;
        let want: string | Error;
        try {
          want = canonicalJson(rec);
          expect(want).toBe(reference(rec));
        } catch (err) {
          want = err as Error;
        }
        if (typeof want === 'string') {
          expect(recordLine(rec)).toBe(want);
          if (new FixedShapeJson(Object.keys(rec.data)).write(rec.data) !== null) fast++;
        } else {
          expect(() => recordLine(rec)).toThrow(want.message);
        }
        // The writer's own path: time from toISOString(), an integer seq.
        if ((rec.kind === 'violation' || rec.kind === 'audit') && Number.isSafeInteger(rec.seq)) {
          const sealed = { ...rec, time: new Date(rec.seq).toISOString() };
          const line = violationRecordLine(sealed.seq, sealed.time, rec.kind, sealed.data, sealed.prev, sealed.genesis === true);
          if (line !== null) expect(line).toBe(canonicalJson(sealed));
        }
      }),
      { numRuns: 3000 },
    );
    expect(fast).toBeGreaterThan(500);
  });

  it('the fixed-order writer refuses what it cannot write in order or does not see as canonicalJson does', () => {
    expect(() => new FixedShapeJson(['a', '10', '9'])).toThrow(/array index/);
    const shape = new FixedShapeJson(['a', 'b']);
    expect(shape.write({ b: 1, a: 'x' })).toBe('{"a":"x","b":1}');
    expect(shape.write({ a: 'x', b: undefined, c: undefined })).toBe('{"a":"x"}');
    expect(shape.write({ a: 'x', c: 1 })).toBeNull();
    expect(shape.write(Object.create({ a: 'inherited' }) as object)).toBeNull();
    expect(shape.write({ a: [1] })).toBeNull();
    expect(shape.write(new (class { a = 1; })())).toBeNull();
    // Something enumerable on Object.prototype: canonicalJson would not write it, for-in would see it.
    const proto = Object.prototype as Record<string, unknown>;
    proto.b = 2;
    try {
      expect(shape.write({ a: 'x' })).toBeNull();
    } finally {
      delete proto.b;
    }
    expect(shape.write({ a: 'x' })).toBe('{"a":"x"}');
    // A pick that copies other keys, or the keys out of order, is refused at once.
    expect(() => new FixedShapeJson(['a', 'b'], (o) => ({ b: o.b, a: o.a }))).toThrow(/not the keys/);
    expect(() => new FixedShapeJson(['a', 'b'], (o) => ({ a: o.a }))).toThrow(/not the keys/);
    expect(() => new FixedShapeJson(['a', 'b'], (o) => ({ a: o.b, b: o.a }))).toThrow(/not the keys/);
    const picked = new FixedShapeJson(['a', 'b'], (o) => ({ a: o.a, b: o.b }));
    expect(picked.write({ b: 1, a: 'x' })).toBe('{"a":"x","b":1}');
    expect(picked.write({ a: 'x', b: undefined })).toBe('{"a":"x"}');
    expect(picked.write({ a: 'x', c: 1 })).toBeNull();
    expect(picked.write({ a: Number.NaN })).toBeNull();
    expect(picked.write({ a: 'x\ud800' })).toBeNull();
  });

  it('canonicalJson still says where a value cannot be written', () => {
    expect(() => canonicalJson({ a: [1, { b: Number.POSITIVE_INFINITY }] })).toThrow('canonical JSON: $.a[1].b is Infinity, not a finite number');
    expect(() => canonicalJson({ data: { ['x\udc00']: 1 } })).toThrow('canonical JSON: a key of $.data holds a lone surrogate');
    expect(() => canonicalJson({ data: { s: 'x\udc00' } })).toThrow('canonical JSON: $.data.s holds a lone surrogate');
    expect(() => canonicalJson({ f: () => 1 })).toThrow('canonical JSON: $.f is a function, which JSON cannot hold');
  });
});

describe('audit log writes', () => {
  it('writes the records appended in one go with one write(2), and each later batch with one more', async () => {
    const file = join(dir, 'audit.log');
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { write: (...a: unknown[]) => Promise<unknown> };
    await probe.close();
    const writes = vi.spyOn(proto, 'write');
    const log = await AuditLog.open(file, { checkpointEvery: 0, checkpointIntervalMs: 0 });
    const [, first] = inputs.find(([k]) => k === 'violation') ?? [];
    for (let i = 0; i < 300; i++) log.append('violation', { ...first, pid: i } as never);
    await log.flush();
    expect(writes).toHaveBeenCalledTimes(1);
    for (let i = 0; i < 300; i++) log.append('violation', { ...first, pid: i } as never);
    await log.flush();
    expect(writes).toHaveBeenCalledTimes(2);
    await log.close();
    expect(await verifyAuditLog(file)).toMatchObject({ ok: true, records: 601 });
  });
});
