// The agent's logger: no credential reaches a line, wherever it sits in what
// is logged (the guarantee pino's redact paths gave, and wider), the caller's
// objects are never changed, plain lines come out as pino writes them, and
// lines are written once per batch, also when the process exits at once.
import { execFileSync } from 'node:child_process';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { createLogger, redactSecrets } from '../../src/report/logger.js';

const SECRET = 'sekret-c2VjcmV0LXRva2Vu';

function capture(): { stream: Writable; writes: string[]; lines: () => Record<string, unknown>[]; text: () => string } {
  const writes: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      writes.push(chunk.toString());
      cb();
    },
  });
  const text = (): string => writes.join('');
  return { stream, writes, text, lines: () => text().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('logger redaction', () => {
  it('never writes a token, bearer token, authorization or password, at any depth, in any case, in bindings too', async () => {
    const out = capture();
    const log = createLogger('trace', out.stream).child({ component: 'test', headers: { Authorization: `Bearer ${SECRET}` } });
    const err = Object.assign(new Error('watch failed'), { token: SECRET, status: 401 });
    const logged: Record<string, unknown>[] = [
      { config: { token: SECRET, server: 'https://api' } }, // *.token
      { user: { bearerToken: SECRET } },
      { request: { authorization: SECRET } },
      { user: { password: SECRET } },
      { headers: { authorization: SECRET, accept: 'application/json' } }, // headers.authorization
      { token: SECRET }, // top level (not covered by the old paths)
      { a: { b: { c: { token: SECRET } } } }, // deeper
      { list: [{ Password: SECRET }, 'x'] }, // in an array, another case
      { err },
    ];
    for (const o of logged) log.info(o, 'something');
    log.error(err, 'an error on its own');
    const grandchild = log.child({ db: { password: SECRET } });
    grandchild.setBindings({ session: { token: SECRET } });
    grandchild.info('from a grandchild');
    await settle();
    const text = out.text();
    expect(text).not.toContain(SECRET);
    const lines = out.lines();
    expect(lines).toHaveLength(logged.length + 2);
    expect(text.split('[redacted]').length - 1).toBe((logged.length + 1) * 2 + 3); // one in each line and its bindings; three in the grandchild's
    expect(lines[10]).toMatchObject({ headers: { Authorization: '[redacted]' }, db: { password: '[redacted]' }, session: { token: '[redacted]' }, msg: 'from a grandchild' });
    expect(lines[0]).toMatchObject({ component: 'test', headers: { Authorization: '[redacted]' }, config: { token: '[redacted]', server: 'https://api' }, msg: 'something' });
    expect(lines[4]).toMatchObject({ headers: { authorization: '[redacted]', accept: 'application/json' } });
    expect(lines[7]).toMatchObject({ list: [{ Password: '[redacted]' }, 'x'] });
    // Errors keep what the error serializer shows.
    expect(lines[8]).toMatchObject({ err: { type: 'Error', message: 'watch failed', status: 401, token: '[redacted]' } });
    expect(String((lines[8]?.err as { stack: string }).stack)).toMatch(/^Error: watch failed/);
    expect(lines[9]).toMatchObject({ err: { type: 'Error', token: '[redacted]' }, msg: 'an error on its own' });
    // What was logged is unchanged.
    expect((logged[0]?.config as { token: string }).token).toBe(SECRET);
    expect(err.token).toBe(SECRET);
  });

  it('returns objects without credentials as they are (no copy), and copies only the way to one', () => {
    const v = { event: 'violation', verdict: 'drop', port: 443, nested: { a: 1, b: [1, 2] } };
    expect(redactSecrets(v)).toBe(v);
    const o = { keep: { a: 1 }, change: { x: { token: 't' } } };
    const r = redactSecrets(o);
    expect(r).not.toBe(o);
    expect(r.keep).toBe(o.keep);
    expect(r.change.x).toEqual({ token: '[redacted]' });
    expect(o.change.x.token).toBe('t');
    const cyclic: Record<string, unknown> = { token: 'zz' };
    cyclic.self = cyclic;
    expect(redactSecrets(cyclic).token).toBe('[redacted]');
  });

  it('writes a violation line as pino without redaction writes it', async () => {
    const v = { event: 'violation', time: '2026-01-01T00:00:00.000Z', verdict: 'drop', reason: 'deny-rule', namespace: 'ml', pod: 'trainer-0', port: 443, pid: 7, command: 'curl', hook: 'connect4' };
    const ours = capture();
    const plain = capture();
    createLogger('info', ours.stream).child({ component: 'agent' }).warn(v, 'egress denied');
    pino({ level: 'info', base: { app: 'weir' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (l: string) => ({ level: l }) } }, plain.stream).child({ component: 'agent' }).warn(v, 'egress denied');
    await settle();
    const strip = (s: string): string => s.replace(/"time":"[^"]+",/, '');
    expect(strip(ours.text())).toBe(strip(plain.text()));
  });
});

describe('logger writes', () => {
  it('hands the destination one write per batch of lines logged in one go', async () => {
    const out = capture();
    const log = createLogger('info', out.stream);
    for (let i = 0; i < 500; i++) log.info({ i }, 'line');
    expect(out.writes).toHaveLength(0);
    await settle();
    expect(out.writes).toHaveLength(1);
    expect(out.lines().map((l) => l.i)).toEqual([...Array(500).keys()]);
    log.info('one more');
    await new Promise<void>((r) => log.flush(() => r()));
    expect(out.writes).toHaveLength(2);
  });

  it('writes the lines pending when the process exits at once (stdout, built logger in dist/)', () => {
    const url = pathToFileURL(join(resolve(import.meta.dirname, '../..'), 'dist/report/logger.js')).href;
    const code = `const { createLogger } = await import(${JSON.stringify(url)}); const l = createLogger('info'); for (let i = 0; i < 3; i++) l.info({ i, token: 'x' }, 'bye'); process.exit(0);`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8' });
    const lines = out.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { i: number; token: string });
    expect(lines.map((l) => l.i)).toEqual([0, 1, 2]);
    expect(lines.every((l) => l.token === '[redacted]')).toBe(true);
  });
});
