// weir preflight on a faked node: each requirement taken away in turn makes
// its check fail (or warn) with an explanation naming the requirement and
// the fix, and a node that has everything passes every check.
import { describe, expect, it, vi } from 'vitest';
import {
  agentObjects,
  CAP_BPF,
  CAP_NET_ADMIN,
  CAP_PERFMON,
  CAP_SYS_ADMIN,
  CAP_SYS_RESOURCE,
  logExcerpt,
  parseKernelRelease,
  parseMemlockLimit,
  runChecks,
  summarize,
  type AttachProbe,
  type CheckResult,
  type LoadedObject,
  type PreflightEnv,
  type PreflightOptions,
} from '../../src/preflight/checks.js';
import { formatSummary, formatTable, toJson } from '../../src/preflight/report.js';
import { main } from '../../src/cli/main.js';

const ALL_CAPS = (1n << 41n) - 1n;
const caps = (...cs: number[]): bigint => cs.reduce((a, c) => a | (1n << BigInt(c)), 0n);
const AGENT_CAPS = caps(CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN);

const PURE_V2 = [
  '22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw',
  '25 21 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot',
  '30 21 0:28 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:7 - bpf bpf rw,mode=700',
].join('\n');

const V1_ONLY = [
  '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
  '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory',
  '42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw',
].join('\n');

const HYBRID = [V1_ONLY, '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw'].join('\n');

const GOOD_CONFIG = [
  '# Automatically generated file; DO NOT EDIT.',
  'CONFIG_BPF=y',
  'CONFIG_BPF_SYSCALL=y',
  'CONFIG_BPF_JIT=y',
  'CONFIG_CGROUPS=y',
  'CONFIG_CGROUP_BPF=y',
  'CONFIG_SOCK_CGROUP_DATA=y',
  '# CONFIG_NET_CLS_BPF is not set',
].join('\n');

const limits = (soft: string, hard = soft): string =>
  [
    'Limit                     Soft Limit           Hard Limit           Units     ',
    'Max open files            1048576              1048576              files     ',
    `Max locked memory         ${soft.padEnd(20)} ${hard.padEnd(20)} bytes     `,
  ].join('\n');

interface Fake {
  env: PreflightEnv;
  files: Map<string, string>;
  dirs: Set<string>;
  loads: { path: string; podLevel: number }[];
  closed: string[];
  tempCgroups: string[];
  removed: string[];
}

function loaded(path: string, programs: string[], closed: string[], probe?: (cg: string) => AttachProbe[]): LoadedObject {
  return {
    programs,
    probeAttach: probe ?? ((_cg) => programs.map((program) => ({ program, attachType: 'BPF_CGROUP_X', ok: true, detail: '' }))),
    close: () => closed.push(path),
  };
}

function fake(over: Partial<PreflightEnv> & { kernel?: string } = {}): Fake {
  const files = new Map<string, string>([
    ['/proc/self/mountinfo', PURE_V2],
    ['/proc/self/limits', limits('8388608')],
    ['/proc/config.gz', GOOD_CONFIG],
    ['/proc/sys/net/core/bpf_jit_enable', '1\n'],
    ['/proc/filesystems', 'nodev\tsysfs\nnodev\tbpf\n\text4\n'],
  ]);
  const dirs = new Set(['/sys/fs/cgroup', '/sys/fs/cgroup/kubepods.slice', '/sys/fs/bpf']);
  const f: Fake = { files, dirs, loads: [], closed: [], tempCgroups: [], removed: [], env: undefined as unknown as PreflightEnv };
  const { kernel = '6.1.0-18-amd64', ...envOver } = over;
  f.env = {
    release: () => kernel,
    readFile: (p) => files.get(p) ?? null,
    isDirectory: (p) => dirs.has(p),
    capEff: ALL_CAPS,
    uid: 0,
    async loadObject(path, podLevel) {
      f.loads.push({ path, podLevel });
      const file = (path.split('/').pop() ?? '').replace('-fqdn.bpf.o', '.bpf.o');
      return loaded(path, agentObjects().find((o) => o.file === file)?.programs ?? [], f.closed);
    },
    makeTempCgroup(root) {
      const dir = `${root}/weir-preflight-test`;
      f.tempCgroups.push(dir);
      return dir;
    },
    removeCgroup: (dir) => void f.removed.push(dir),
    memlockNeeded: () => 40 << 20,
    hasBpfLoop: () => ({ ok: true }),
    ...envOver,
  };
  return f;
}

const OPTS: PreflightOptions = { bpffs: '/sys/fs/bpf', objectsDir: '/opt/weir/build/bpf' };

function check(results: CheckResult[], id: string): CheckResult {
  const r = results.find((x) => x.id === id);
  if (!r) throw new Error(`no check ${id} in ${results.map((x) => x.id).join(', ')}`);
  return r;
}

describe('weir preflight checks', () => {
  it('passes every check on a node that has everything, loading each object with the pods level and cleaning up', async () => {
    const f = fake();
    const results = await runChecks(f.env, OPTS);
    expect(results.filter((r) => r.status !== 'pass')).toEqual([]);
    expect(results.map((r) => r.id)).toEqual([
      'kernel', 'privileges', 'memlock', 'kernel-config', 'jit', 'cgroup2', 'pods-cgroup', 'bpffs',
      'verifier-egress', 'verifier-ingress', 'verifier-sock_addr', 'attach', 'dns-learning',
    ]);
    expect(f.loads).toEqual([
      { path: '/opt/weir/build/bpf/egress.bpf.o', podLevel: 1 },
      { path: '/opt/weir/build/bpf/ingress.bpf.o', podLevel: 1 },
      { path: '/opt/weir/build/bpf/sock_addr.bpf.o', podLevel: 1 },
      { path: '/opt/weir/build/bpf/egress-fqdn.bpf.o', podLevel: 1 },
      { path: '/opt/weir/build/bpf/ingress-fqdn.bpf.o', podLevel: 1 },
    ]);
    expect(check(results, 'pods-cgroup').detail).toContain('/sys/fs/cgroup/kubepods.slice (systemd cgroup driver, level 1)');
    expect(f.tempCgroups).toEqual(['/sys/fs/cgroup/weir-preflight-test']);
    expect(f.removed).toEqual(f.tempCgroups);
    expect(f.closed).toHaveLength(5);
    expect(summarize(results)).toEqual({ pass: 13, warn: 0, fail: 0 });
  });

  it('DNS learning: warns on a kernel without bpf_loop (plain objects, fqdn peers allow only DNS), fails when the -fqdn objects are rejected, warns when they are missing', async () => {
    const old = fake({ hasBpfLoop: () => ({ ok: false }) });
    const r1 = check(await runChecks(old.env, OPTS), 'dns-learning');
    expect(r1).toMatchObject({ status: 'warn' });
    expect(r1.detail).toMatch(/does not offer bpf_loop .*fqdn peers allow only the DNS queries they imply/);
    expect(r1.fix).toMatch(/Linux 5\.17/);
    expect(old.loads.map((l) => l.path.split('/').pop())).toEqual(['egress.bpf.o', 'ingress.bpf.o', 'sock_addr.bpf.o']);

    const rejected = fake();
    const load = rejected.env.loadObject.bind(rejected.env);
    rejected.env.loadObject = async (path, level) => {
      if (path.endsWith('egress-fqdn.bpf.o')) throw Object.assign(new Error('bpf_object__load failed: EACCES'), { verifierLog: '-- BEGIN PROG LOAD LOG --\nR1 invalid mem access\n-- END PROG LOAD LOG --' });
      return load(path, level);
    };
    const r2 = check(await runChecks(rejected.env, OPTS), 'dns-learning');
    expect(r2).toMatchObject({ status: 'fail' });
    expect(r2.detail).toContain('egress-fqdn.bpf.o is rejected');
    expect(r2.log).toContain('R1 invalid mem access');

    const missing = fake();
    const load2 = missing.env.loadObject.bind(missing.env);
    missing.env.loadObject = async (path, level) => {
      if (path.endsWith('-fqdn.bpf.o')) throw new Error(`BPF object ${path} is missing`);
      return load2(path, level);
    };
    const r3 = check(await runChecks(missing.env, OPTS), 'dns-learning');
    expect(r3).toMatchObject({ status: 'warn' });
    expect(r3.detail).toContain('without DNS learning');
  });

  it('fails a 5.4 kernel, naming the minimum 5.8 and why', async () => {
    const r = check(await runChecks(fake({ kernel: '5.4.0-150-generic' }).env, OPTS), 'kernel');
    expect(r.status).toBe('fail');
    expect(r.detail).toContain('5.4.0-150-generic is older than 5.8');
    expect(r.detail).toContain('ring buffer');
    expect(r.fix).toContain('upgrade the node\'s kernel to 5.8 or later');
  });

  it('parses distribution kernel releases', () => {
    expect(parseKernelRelease('4.18.0-372.el8.x86_64')).toEqual({ major: 4, minor: 18, patch: 0 });
    expect(parseKernelRelease('6.18.44-fc-v782')).toEqual({ major: 6, minor: 18, patch: 44 });
    expect(parseKernelRelease('5.15.0-1051-azure')).toEqual({ major: 5, minor: 15, patch: 0 });
    expect(parseKernelRelease('weird')).toBeNull();
  });

  it('fails without CAP_BPF and CAP_PERFMON (and no CAP_SYS_ADMIN), naming both', async () => {
    const r = check(await runChecks(fake({ capEff: caps(CAP_NET_ADMIN), uid: 1000 }).env, OPTS), 'privileges');
    expect(r.status).toBe('fail');
    expect(r.detail).toMatch(/^uid 1000 lacks CAP_BPF and CAP_PERFMON /);
    expect(r.fix).toContain('grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN');
    expect(r.fix).toContain('capabilities.add: [BPF, PERFMON, NET_ADMIN]');
  });

  it('passes with CAP_SYS_ADMIN alone, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN; before 5.8 only CAP_SYS_ADMIN will do', async () => {
    expect(check(await runChecks(fake({ capEff: caps(CAP_SYS_ADMIN), uid: 1000 }).env, OPTS), 'privileges').status).toBe('pass');
    expect(check(await runChecks(fake({ capEff: AGENT_CAPS }).env, OPTS), 'privileges').status).toBe('pass');
    const old = check(await runChecks(fake({ kernel: '5.4.0', capEff: AGENT_CAPS }).env, OPTS), 'privileges');
    expect(old.status).toBe('fail');
    expect(old.detail).toContain('before Linux 5.8 loading BPF programs needs CAP_SYS_ADMIN');
  });

  it('fails when only cgroup v1 is mounted, and skips what needs cgroup v2', async () => {
    const f = fake();
    f.files.set('/proc/self/mountinfo', V1_ONLY);
    const results = await runChecks(f.env, OPTS);
    const r = check(results, 'cgroup2');
    expect(r.status).toBe('fail');
    expect(r.detail).toContain('no cgroup2 filesystem is mounted (only cgroup v1 controllers, e.g. /sys/fs/cgroup/cpu)');
    expect(r.fix).toContain('systemd.unified_cgroup_hierarchy=1');
    expect(check(results, 'pods-cgroup').status).toBe('fail');
    expect(check(results, 'attach')).toMatchObject({ status: 'warn', detail: expect.stringContaining('skipped') });
    expect(f.tempCgroups).toEqual([]);
  });

  it('finds cgroup v2 at /sys/fs/cgroup/unified on a hybrid host and looks for pods there', async () => {
    const f = fake();
    f.files.set('/proc/self/mountinfo', HYBRID);
    f.dirs.add('/sys/fs/cgroup/unified');
    f.dirs.add('/sys/fs/cgroup/unified/kubepods');
    const results = await runChecks(f.env, OPTS);
    expect(check(results, 'cgroup2')).toMatchObject({ status: 'pass', detail: expect.stringContaining('cgroup2 at /sys/fs/cgroup/unified (hybrid host') });
    expect(check(results, 'pods-cgroup').detail).toBe('/sys/fs/cgroup/unified/kubepods (cgroupfs cgroup driver, level 1)');
    expect(f.tempCgroups).toEqual(['/sys/fs/cgroup/unified/weir-preflight-test']);
  });

  it('takes --cgroup-root like the agent: the pods level counts from the hierarchy root; a root off cgroup2 fails', async () => {
    const f = fake();
    f.dirs.add('/sys/fs/cgroup/k8s');
    f.dirs.add('/sys/fs/cgroup/k8s/kubepods');
    const results = await runChecks(f.env, { ...OPTS, cgroupRoot: '/sys/fs/cgroup/k8s' });
    expect(check(results, 'pods-cgroup').detail).toContain('level 2');
    expect(f.loads.every((l) => l.podLevel === 2)).toBe(true);
    const off = check(await runChecks(fake().env, { ...OPTS, cgroupRoot: '/tmp/cg' }), 'cgroup2');
    expect(off).toMatchObject({ status: 'fail', detail: expect.stringContaining('--cgroup-root /tmp/cg is not on a cgroup2 filesystem') });
  });

  it('warns, not fails, when there is no kubepods directory (not a node, or before the kubelet)', async () => {
    const f = fake();
    f.dirs.delete('/sys/fs/cgroup/kubepods.slice');
    const results = await runChecks(f.env, OPTS);
    const r = check(results, 'pods-cgroup');
    expect(r.status).toBe('warn');
    expect(r.detail).toContain('no kubepods.slice or kubepods directory under /sys/fs/cgroup');
    expect(f.loads.every((l) => l.podLevel === 1)).toBe(true);
    expect(summarize(results).fail).toBe(0);
  });

  it('fails when CONFIG_CGROUP_BPF is not set, naming it and why', async () => {
    const f = fake();
    f.files.delete('/proc/config.gz');
    f.files.set('/boot/config-6.1.0-18-amd64', GOOD_CONFIG.replace('CONFIG_CGROUP_BPF=y', '# CONFIG_CGROUP_BPF is not set'));
    const r = check(await runChecks(f.env, OPTS), 'kernel-config');
    expect(r.status).toBe('fail');
    expect(r.detail).toBe('not set in /boot/config-6.1.0-18-amd64: CONFIG_CGROUP_BPF (BPF programs attached to cgroups (cgroup_skb, sock_addr))');
    expect(r.fix).toContain('CONFIG_CGROUP_BPF=y');
  });

  it('warns "unknown" when no kernel config is readable', async () => {
    const f = fake();
    f.files.delete('/proc/config.gz');
    const r = check(await runChecks(f.env, OPTS), 'kernel-config');
    expect(r.status).toBe('warn');
    expect(r.detail).toContain('unknown: no kernel config readable (/proc/config.gz, /boot/config-6.1.0-18-amd64');
    expect(r.fix).toContain('CONFIG_CGROUP_BPF=y');
  });

  it('warns when CONFIG_BPF_JIT is not set', async () => {
    const f = fake();
    f.files.set('/proc/config.gz', GOOD_CONFIG.replace('CONFIG_BPF_JIT=y', '# CONFIG_BPF_JIT is not set'));
    expect(check(await runChecks(f.env, OPTS), 'kernel-config')).toMatchObject({ status: 'warn', detail: expect.stringContaining('CONFIG_BPF_JIT') });
  });

  it('warns when the JIT is off, with the sysctl that turns it on', async () => {
    const f = fake();
    f.files.set('/proc/sys/net/core/bpf_jit_enable', '0\n');
    const r = check(await runChecks(f.env, OPTS), 'jit');
    expect(r.status).toBe('warn');
    expect(r.detail).toContain('disabled (/proc/sys/net/core/bpf_jit_enable = 0)');
    expect(r.fix).toContain('sysctl -w net.core.bpf_jit_enable=1');
    f.files.delete('/proc/sys/net/core/bpf_jit_enable');
    expect(check(await runChecks(f.env, OPTS), 'jit')).toMatchObject({ status: 'warn', detail: expect.stringContaining('is missing') });
  });

  it('fails a 64 KiB memlock limit on 5.10 (RLIMIT_MEMLOCK accounting), passes it on 6.1 (memcg accounting)', async () => {
    const on = async (release: string): Promise<CheckResult> => {
      const f = fake({ kernel: release, capEff: AGENT_CAPS });
      f.files.set('/proc/self/limits', limits('65536'));
      return check(await runChecks(f.env, OPTS), 'memlock');
    };
    const old = await on('5.10.0-28-amd64');
    expect(old.status).toBe('fail');
    expect(old.detail).toContain('RLIMIT_MEMLOCK is 64 KiB (hard 64 KiB), too low');
    expect(old.detail).toContain('about 40 MiB');
    expect(old.fix).toContain('ulimit -l unlimited');
    expect(old.fix).toContain('LimitMEMLOCK=infinity');
    const recent = await on('6.1.0-18-amd64');
    expect(recent.status).toBe('pass');
    expect(recent.detail).toContain('not applicable');
  });

  it('passes a low memlock limit before 5.11 when libbpf can raise it (unlimited hard limit or CAP_SYS_RESOURCE)', async () => {
    const f = fake({ kernel: '5.10.0', capEff: AGENT_CAPS });
    f.files.set('/proc/self/limits', limits('65536', 'unlimited'));
    expect(check(await runChecks(f.env, OPTS), 'memlock').status).toBe('pass');
    const g = fake({ kernel: '5.10.0', capEff: AGENT_CAPS | caps(CAP_SYS_RESOURCE) });
    g.files.set('/proc/self/limits', limits('65536'));
    expect(check(await runChecks(g.env, OPTS), 'memlock')).toMatchObject({ status: 'pass', detail: expect.stringContaining('CAP_SYS_RESOURCE') });
    expect(parseMemlockLimit(limits('unlimited'))).toEqual({ soft: Infinity, hard: Infinity });
  });

  it('fails a verifier rejection, showing the verifier log, and closes what did load', async () => {
    const log = [
      "libbpf: prog 'weir_connect4': BPF program load failed: Permission denied",
      "libbpf: prog 'weir_connect4': -- BEGIN PROG LOAD LOG --",
      '0: R1=ctx() R10=fp0',
      '; pod = weir_pod_lookup_id(bpf_get_current_ancestor_cgroup_id(weir_cfg.pod_level_hi));',
      '7: (85) call bpf_get_current_ancestor_cgroup_id#123',
      'unknown func bpf_get_current_ancestor_cgroup_id#123',
      'processed 7 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0',
      '-- END PROG LOAD LOG --',
    ].join('\n');
    const f = fake();
    const base = f.env.loadObject.bind(f.env);
    f.env.loadObject = async (path, level) => {
      if (path.endsWith('sock_addr.bpf.o')) {
        throw Object.assign(new Error(`bpf_object__load(${path}): Permission denied`), { code: 'EACCES', errno: -13, syscall: 'bpf_object__load', verifierLog: log });
      }
      return base(path, level);
    };
    const results = await runChecks(f.env, OPTS);
    const r = check(results, 'verifier-sock_addr');
    expect(r.status).toBe('fail');
    expect(r.detail).toContain('unknown func bpf_get_current_ancestor_cgroup_id#123');
    expect(r.detail.split('\n')[0]).toContain('bpf_object__load');
    expect(r.log).toBe(log);
    expect(check(results, 'verifier-egress').status).toBe('pass');
    expect(check(results, 'attach').status).toBe('warn');
    expect(f.closed).toHaveLength(4); // egress and ingress, and the two -fqdn objects of the DNS learning check
    expect(formatTable(results)).toContain('unknown func bpf_get_current_ancestor_cgroup_id#123');
  });

  it('keeps the head and tail of a long verifier log', () => {
    const long = Array.from({ length: 100 }, (_, i) => `line ${i}`).join('\n');
    const x = logExcerpt(long).split('\n');
    expect(x[0]).toBe('line 0');
    expect(x).toContain('… 84 more lines (--json has the whole log) …');
    expect(x[x.length - 1]).toBe('line 99');
  });

  it('points a rejection at Privileges when they are missing, and an EPERM with the capabilities at seccomp or an LSM', async () => {
    const rejecting = (code: string, capEff: bigint): PreflightEnv =>
      fake({
        capEff,
        loadObject: async (path) => {
          throw Object.assign(new Error(`bpf_object__load(${path}) failed`), { code, verifierLog: 'R0 tried to add from different maps, paths or scalars, pointer arithmetic with it prohibited for !root' });
        },
      }).env;
    expect(check(await runChecks(rejecting('EACCES', caps(CAP_BPF, CAP_NET_ADMIN)), OPTS), 'verifier-egress').fix).toMatch(/^fix Privileges first/);
    expect(check(await runChecks(rejecting('EPERM', AGENT_CAPS), OPTS), 'verifier-egress').fix).toContain('seccomp profile');
  });

  it('fails a missing object with the build command', async () => {
    const f = fake();
    f.env.loadObject = async (path) => {
      throw new Error(`BPF object ${path} is missing`);
    };
    const r = check(await runChecks(f.env, OPTS), 'verifier-egress');
    expect(r).toMatchObject({ status: 'fail', detail: 'BPF object /opt/weir/build/bpf/egress.bpf.o is missing' });
    expect(r.fix).toContain('node scripts/build.mjs bpf');
  });

  it('fails an object that lacks a program the agent attaches (a stale build)', async () => {
    const f = fake();
    f.env.loadObject = async (path) => loaded(path, ['weir_connect4'], f.closed);
    const r = check(await runChecks(f.env, OPTS), 'verifier-sock_addr');
    expect(r).toMatchObject({ status: 'fail', detail: expect.stringContaining('lacks weir_connect6, weir_sendmsg4 and weir_sendmsg6') });
  });

  it('fails a program that does not attach, and removes the temporary cgroup anyway', async () => {
    const f = fake();
    f.env.loadObject = async (path) =>
      loaded(path, agentObjects().find((o) => path.endsWith(o.file))?.programs ?? [], f.closed, () => [
        { program: 'weir_x', attachType: 'BPF_CGROUP_INET_EGRESS', ok: false, detail: 'bpf_link_create: Invalid argument' },
      ]);
    const r = check(await runChecks(f.env, OPTS), 'attach');
    expect(r).toMatchObject({ status: 'fail', detail: expect.stringContaining('weir_x (BPF_CGROUP_INET_EGRESS): bpf_link_create: Invalid argument') });
    expect(f.removed).toEqual(f.tempCgroups);

    const g = fake();
    g.env.loadObject = async (path) =>
      loaded(path, agentObjects().find((o) => path.endsWith(o.file))?.programs ?? [], g.closed, () => {
        throw new Error('boom');
      });
    expect(check(await runChecks(g.env, OPTS), 'attach').status).toBe('fail');
    expect(g.removed).toEqual(g.tempCgroups);
    expect(g.closed).toHaveLength(5);
  });

  it('skips the attach probe with a warning when the cgroup tree is read-only (e.g. in a pod)', async () => {
    const f = fake({
      makeTempCgroup: () => {
        throw Object.assign(new Error("EROFS: read-only file system, mkdir '/sys/fs/cgroup/weir-preflight-1'"), { code: 'EROFS' });
      },
    });
    const results = await runChecks(f.env, OPTS);
    expect(check(results, 'attach')).toMatchObject({ status: 'warn', detail: expect.stringContaining('skipped: cannot create a temporary cgroup under /sys/fs/cgroup (EROFS') });
    expect(summarize(results).fail).toBe(0);
    expect(f.closed).toHaveLength(5);
  });

  it('passes a mounted bpffs, warns when the agent can mount one, fails when it cannot', async () => {
    expect(check(await runChecks(fake().env, OPTS), 'bpffs')).toMatchObject({ status: 'pass', detail: 'bpffs mounted at /sys/fs/bpf' });
    const unmounted = (): Fake => {
      const f = fake({ capEff: AGENT_CAPS });
      f.files.set('/proc/self/mountinfo', PURE_V2.split('\n').filter((l) => !l.includes(' - bpf ')).join('\n'));
      return f;
    };
    const mountable = unmounted();
    mountable.env.capEff = ALL_CAPS;
    expect(check(await runChecks(mountable.env, OPTS), 'bpffs')).toMatchObject({ status: 'warn', detail: expect.stringContaining('the agent mounts one there') });
    const r = check(await runChecks(unmounted().env, OPTS), 'bpffs');
    expect(r).toMatchObject({ status: 'fail', detail: expect.stringContaining('mounting one needs CAP_SYS_ADMIN') });
    expect(r.fix).toContain('mount -t bpf bpf /sys/fs/bpf');
    const noFs = unmounted();
    noFs.files.set('/proc/filesystems', 'nodev\tsysfs\n');
    expect(check(await runChecks(noFs.env, OPTS), 'bpffs').detail).toContain('the kernel has no bpf filesystem');
  });

  it('prints a table with ✔ / ! / ✘, fix lines and a summary, and JSON with ok', async () => {
    const f = fake({ kernel: '5.4.0' });
    f.files.set('/proc/sys/net/core/bpf_jit_enable', '0');
    const results = await runChecks(f.env, OPTS);
    const table = formatTable(results);
    expect(table).toMatch(/^✘ Kernel version +Linux 5\.4\.0 is older than 5\.8/m);
    expect(table).toMatch(/^! BPF JIT +disabled/m);
    expect(table).toMatch(/^✔ cgroup v2 +cgroup2 at \/sys\/fs\/cgroup$/m);
    expect(table).toMatch(/^ +fix: upgrade the node's kernel/m);
    expect(formatSummary(results)).toBe("11 passed, 1 warning, 1 failed: this node does not meet weir's requirements; fix the ✘ checks above\n");
    const json = JSON.parse(toJson(results)) as { ok: boolean; minimumKernel: string; checks: CheckResult[] };
    expect(json).toMatchObject({ ok: false, minimumKernel: '5.8' });
    expect(json.checks).toHaveLength(13);
  });

  it('weir preflight --help follows the house style, with an example', async () => {
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
      out.push(String(s));
      return true;
    });
    try {
      expect(await main(['preflight', '--help'])).toBe(0);
      expect(await main(['--help'])).toBe(0);
    } finally {
      spy.mockRestore();
    }
    const text = out.join('');
    expect(text).toContain('Usage: weir preflight [--bpffs DIR] [--cgroup-root DIR] [--objects-dir DIR] [--json]');
    expect(text).toContain('Examples:\n  sudo weir preflight');
    expect(text).toContain('  preflight  check whether this node meets');
  });
});
