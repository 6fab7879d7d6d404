// The bpffs not mounted: ensureBpffs mounts one where it is missing, and
// says clearly what to do when it cannot.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureBpffs } from '../../src/native/bpffs.js';

const BPF_FS_MAGIC = 0xcafe4a11;
const work = mkdtempSync(join(tmpdir(), 'weir-bpffs-'));

afterAll(() => {
  spawnSync('umount', [join(work, 'bpf')]);
  rmSync(work, { recursive: true, force: true });
});

describe('ensureBpffs', () => {
  it('mounts a bpffs where none is, and finds it the second time', () => {
    const dir = join(work, 'bpf');
    expect(() => statfsSync(dir)).toThrow(/ENOENT/);
    expect(ensureBpffs(dir)).toBe(dir);
    expect(statfsSync(dir).type).toBe(BPF_FS_MAGIC);
    const mounts = (): number => spawnSync('findmnt', ['-n', '-t', 'bpf', dir], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).length;
    expect(mounts()).toBe(1);
    expect(ensureBpffs(dir)).toBe(dir); // no second mount on top
    expect(mounts()).toBe(1);
  });

  it('says why and what to do when it cannot', () => {
    const file = join(work, 'a-file');
    writeFileSync(file, '');
    expect(() => ensureBpffs(join(file, 'bpf'))).toThrow(/cannot create the bpffs mount point .*a-file\/bpf/);
  });
});
