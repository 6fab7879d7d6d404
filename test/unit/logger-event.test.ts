// logEvent() writes exactly the line pino writes for the same call,
// log[level]({ event, ...fields }, msg): same keys in the same order, same
// escaping, same level, time and bindings, credentials redacted. Checked
// byte for byte against pino itself (the same logger), over violation lines
// and random and adversarial fields.
import { Writable } from 'node:stream';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLogger, logEvent } from '../../src/report/logger.js';
import type { Logger } from 'pino';

function capture(): { stream: Writable; text: () => string; clear: () => void } {
  let writes: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      writes.push(chunk.toString());
      cb();
    },
  });
  return { stream, text: () => writes.join(''), clear: () => (writes = []) };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/** The line of one call, written through `write`: pino's or logEvent's. */
async function lineOf(out: ReturnType<typeof capture>, write: () => void): Promise<string> {
  out.clear();
  write();
  await settle();
  return out.text();
}

async function same(log: Logger, out: ReturnType<typeof capture>, level: 'info' | 'warn' | 'error', event: string, fields: object, msg: string): Promise<string> {
  const byPino = await lineOf(out, () => log[level]({ event, ...fields }, msg));
  const byUs = await lineOf(out, () => logEvent(log, level, event, fields, msg));
  expect(byUs).toBe(byPino);
  return byUs;
}

const violation = {
  time: '2026-11-26T07:00:00.123Z',
  verdict: 'drop',
  reason: 'default-deny',
  namespace: 'team-a',
  pod: 'api-7d9c',
  workload: 'Deployment/api',
  domain: 'team-a',
  policy: 'EgressPolicy/team-a/api',
  rule: 'no allow rule matched',
  protocol: 'TCP',
  destination: '198.18.0.7',
  port: 443 as number | null,
  source: '10.128.0.5',
  pid: 4242,
  command: 'curl',
  thread: 'curl',
  count: 1,
  hook: 'cgroup_skb/egress',
  generation: 3,
};

/** Strings pino escapes one way or another: quotes, backslashes, control characters, lone surrogates, long strings, unicode. */
const nasty = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary' }),
  fc.string({ unit: 'grapheme', maxLength: 130 }),
  fc.string({ unit: fc.constantFrom('"', '\\', '\n', '\u0000', '\u001f', '\u007f', '\u2028', '\ud800', '\udc00', 'é', '😀', 'a', '/'), maxLength: 120 }),
  fc.constantFrom('', '"', '\\', '\\"', 'a'.repeat(100), `${'a'.repeat(100)}"`, `${'a'.repeat(99)}"`, '\ud83d', 'x\ud83dy', '%s %d'),
);
const value = fc.oneof(
  nasty,
  fc.double(),
  fc.constantFrom(0, -0, NaN, Infinity, -Infinity, 1e21, 5e-324, 2 ** 53 + 1),
  fc.integer(),
  fc.boolean(),
  fc.constant(null),
  fc.constant(undefined),
);
/** Keys: identifiers, and ones logEvent must leave to pino (credentials, pino's own, integer-like, escaped, event). */
const key = fc.oneof(
  fc.constantFrom(...Object.keys(violation)),
  fc.stringMatching(/^[A-Za-z_$][A-Za-z0-9_$]{0,12}$/),
  fc.constantFrom('token', 'Token', 'PASSWORD', 'authorization', 'bearerToken', 'err', 'msg', 'method', 'headers', 'socket', 'event', 'level', 'time', '0', '12', 'a-b', 'a"b', 'é', ''),
);

describe('logEvent', () => {
  beforeEach(() => {
    vi.spyOn(Date, 'now').mockReturnValue(Date.parse('2026-11-26T07:00:00.456Z'));
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('writes a violation line exactly as pino does', async () => {
    const out = capture();
    const log = createLogger('info', out.stream).child({ component: 'agent' });
    const line = await same(log, out, 'warn', 'violation', violation, 'egress denied');
    expect(line).toBe(
      '{"level":"warn","time":"2026-11-26T07:00:00.456Z","app":"weir","component":"agent","event":"violation","time":"2026-11-26T07:00:00.123Z","verdict":"drop","reason":"default-deny","namespace":"team-a","pod":"api-7d9c","workload":"Deployment/api","domain":"team-a","policy":"EgressPolicy/team-a/api","rule":"no allow rule matched","protocol":"TCP","destination":"198.18.0.7","port":443,"source":"10.128.0.5","pid":4242,"command":"curl","thread":"curl","count":1,"hook":"cgroup_skb/egress","generation":3,"msg":"egress denied"}\n',
    );
    // ...and without pino's help (the fast path is the one compared here, and in the random values below).
    const viaPino = vi.spyOn(log, 'warn');
    logEvent(log, 'warn', 'violation', violation, 'egress denied');
    expect(viaPino).not.toHaveBeenCalled();
    viaPino.mockRestore();
    await settle();
    await same(log, out, 'warn', 'violation', { ...violation, port: null, verdict: 'audit' }, 'egress would be denied (audit)');
    await same(log, out, 'info', 'violation', { ...violation, verdict: 'allow' }, 'egress verdict');
    // Around pino's 100-character limit (JSON.stringify above it, which escapes lone surrogates; its own loop up to it, which does not).
    for (const n of [99, 100, 101]) {
      for (const tail of ['\ud800', '"', '\\', '\n', 'x', '\udc00\ud800']) {
        const s = 'a'.repeat(n - tail.length) + tail;
        await same(log, out, 'warn', 'violation', { ...violation, pod: s, rule: `${tail}${s}` }, s);
      }
    }
  });

  it('writes what pino writes for random and adversarial values', async () => {
    const out = capture();
    const log = createLogger('info', out.stream).child({ component: 'agent' });
    const keys = Object.keys(violation) as (keyof typeof violation)[];
    await fc.assert(
      fc.asyncProperty(fc.array(value, { minLength: keys.length, maxLength: keys.length }), nasty, async (vals, msg) => {
        const fields = Object.fromEntries(keys.map((k, i) => [k, vals[i]]));
        await same(log, out, 'warn', 'violation', fields, msg);
        // Plain values under plain keys: logEvent wrote it itself.
        const viaPino = vi.spyOn(log, 'warn');
        logEvent(log, 'warn', 'violation', fields, msg);
        expect(viaPino).not.toHaveBeenCalled();
        viaPino.mockRestore();
        await settle();
      }),
      { numRuns: 1500 },
    );
  });

  it('writes what pino writes for random keys, credentials redacted', async () => {
    const out = capture();
    const log = createLogger('info', out.stream).child({ component: 'agent', headers: { Authorization: 'Bearer x' } });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(key, value), { maxLength: 25 }), nasty, fc.constantFrom('info', 'warn', 'error') as fc.Arbitrary<'info' | 'warn' | 'error'>, async (entries, event, level) => {
        await same(log, out, level, event, Object.fromEntries(entries), 'm');
      }),
      { numRuns: 1500 },
    );
  });

  it('never writes a credential: such a line goes through pino, which redacts it', async () => {
    const out = capture();
    const log = createLogger('info', out.stream).child({ component: 'agent' });
    for (const k of ['token', 'Password', 'AUTHORIZATION', 'bearertoken']) {
      const line = await same(log, out, 'warn', 'violation', { ...violation, [k]: 'sekret' }, 'egress denied');
      expect(line).not.toContain('sekret');
      expect(JSON.parse(line)[k]).toBe('[redacted]');
    }
    // Not a plain value: through pino, redacted at depth.
    const line = await same(log, out, 'warn', 'violation', { ...violation, extra: { token: 'sekret' } }, 'egress denied');
    expect(line).not.toContain('sekret');
  });

  it('other shapes, levels, bindings and loggers: still what pino writes', async () => {
    const out = capture();
    const root = createLogger('warn', out.stream);
    const log = root.child({ component: 'agent', n: 1 });
    // Below the level: nothing, as pino.
    expect(await lineOf(out, () => logEvent(log, 'info', 'violation', violation, 'x'))).toBe('');
    await same(log, out, 'error', 'violation', violation, 'x');
    log.setBindings({ more: 'a"b' });
    await same(log, out, 'warn', 'violation', violation, 'x');
    log.level = 'info';
    await same(log, out, 'info', 'violation', violation, 'x');
    // Inherited members are not written; objects of other classes go through pino.
    await same(log, out, 'warn', 'violation', Object.assign(Object.create({ inherited: 1 }) as object, violation), 'x');
    await same(log, out, 'warn', 'violation', new (class V { a = 1; b = 'x'; })(), 'x');
    await same(log, out, 'warn', 'violation', Object.assign(Object.create(null) as object, violation), 'x');
    await same(log, out, 'warn', 'violation', [1, 2], 'x');
    await same(log, out, 'warn', 'violation', {}, 'x');
    // A child with its own serializers and a message prefix: through pino.
    const special = log.child({}, { msgPrefix: '[p] ', serializers: { pod: (p: string) => p.toUpperCase() } });
    await same(special, out, 'warn', 'violation', violation, 'x');
  });
});
