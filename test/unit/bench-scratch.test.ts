// src/bench/scratch.ts: a bench run's cleanups run once, last registered
// first, at close() (the orderly stop when given), on a signal (then exit
// 128 + signal) and at an exit without close() (an uncaught error). The
// signal and exit cases run in a child process against dist/ (npm run build).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { scratch } from '../../src/bench/scratch.js';

const ROOT = resolve(import.meta.dirname, '../..');

describe('bench scratch', () => {
  afterEach(() => vi.restoreAllMocks());

  it('close(): every cleanup once, last first, the orderly stop where given; a failing one is reported and the others still run', async () => {
    const before = process.listenerCount('SIGINT');
    const scr = scratch();
    expect(process.listenerCount('SIGINT')).toBe(before + 1);
    const ran: string[] = [];
    const dir = scr.dir('weir-scratch-test-');
    expect(existsSync(dir)).toBe(true);
    scr.defer(() => ran.push('a'));
    scr.defer(
      () => ran.push('b now'),
      async () => {
        ran.push('b stop');
      },
    );
    scr.defer(() => {
      throw new Error('boom');
    });
    scr.defer(() => ran.push('d'));
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    await scr.close();
    await scr.close();
    expect(ran).toEqual(['d', 'b stop', 'a']);
    expect(err).toHaveBeenCalledWith(expect.stringContaining('boom'));
    expect(existsSync(dir)).toBe(false);
    expect(process.listenerCount('SIGINT')).toBe(before);
    expect(() => scr.defer(() => undefined)).toThrow(/already cleaned up/);
  });

  describe('in a process of its own (dist/)', () => {
    const run = (ending: string): { status: number | null; dir: string; log: string } => {
      const out = mkdtempSync(join(tmpdir(), 'weir-scratch-out-'));
      const code = `
        import { appendFileSync } from 'node:fs';
        const { scratch } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'dist/bench/scratch.js')).href)});
        const scr = scratch();
        const log = (s) => appendFileSync(${JSON.stringify(join(out, 'log'))}, s + '\\n');
        const dir = scr.dir('weir-scratch-test-');
        log(dir);
        scr.defer(() => log('first'), async () => log('first stop'));
        scr.defer(() => log('second'));
        ${ending}
      `;
      const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
      const lines = readFileSync(join(out, 'log'), 'utf8').trim().split('\n');
      rmSync(out, { recursive: true, force: true });
      return { status: r.status, dir: lines[0] ?? '', log: lines.slice(1).join(' ') };
    };

    it('dist/ is built', () => {
      expect(existsSync(join(ROOT, 'dist/bench/scratch.js')), 'run node scripts/build.mjs first').toBe(true);
    });

    it('SIGTERM: the cleanups run (the synchronous ones), then exit 143', () => {
      const r = run("process.kill(process.pid, 'SIGTERM'); setTimeout(() => {}, 10_000);");
      expect(r).toMatchObject({ status: 143, log: 'second first' });
      expect(existsSync(r.dir)).toBe(false);
    });

    it('SIGINT: exit 130', () => {
      expect(run("process.kill(process.pid, 'SIGINT'); setTimeout(() => {}, 10_000);")).toMatchObject({ status: 130, log: 'second first' });
    });

    it('an uncaught error: the cleanups run at exit', () => {
      const r = run("setTimeout(() => { throw new Error('x'); }, 1);");
      expect(r).toMatchObject({ status: 1, log: 'second first' });
      expect(existsSync(r.dir)).toBe(false);
    });
  });
});
