// The pods cgroup's level as the kernel counts it (from the hierarchy's real
// root), also when the agent runs in its own cgroup namespace, as every
// unprivileged pod on cgroup v2 does: there mountinfo shows the host's
// cgroup root as "/..", relative to the namespace.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cgroupLevel, defaultCgroupRoot } from '../../src/datapath/cgroups.js';

const root = defaultCgroupRoot();
const outer = join(root, `weir-cgns-${process.pid}`);
const inner = join(outer, 'agent');
const pods = join(root, `weir-cgns-${process.pid}-kubepods`);
const tmp = mkdtempSync(join(tmpdir(), 'weir-cgns-'));

afterAll(() => {
  for (const d of [inner, outer, pods]) {
    try {
      rmdirSync(d);
    } catch {
      // already gone
    }
  }
  rmSync(tmp, { recursive: true, force: true });
});

describe('cgroup level inside a cgroup namespace', () => {
  it('counts from the real root, not from what mountinfo calls the root', () => {
    mkdirSync(inner, { recursive: true });
    mkdirSync(pods, { recursive: true });
    // A process two levels down unshares its cgroup namespace and reports its mountinfo.
    const mountinfo = execFileSync('sh', ['-c', `echo $$ > ${join(inner, 'cgroup.procs')} && exec unshare --cgroup cat /proc/self/mountinfo`], { encoding: 'utf8' });
    const file = join(tmp, 'mountinfo');
    writeFileSync(file, mountinfo);
    const line = mountinfo.split('\n').find((l) => l.includes(' - cgroup2 ') && l.split(' ')[4] === root);
    expect(line?.split(' ')[3]).toBe('/../..');
    const hostView = cgroupLevel(pods);
    expect(hostView).toBe(1);
    expect(cgroupLevel(pods, file)).toBe(hostView);
  });
});
