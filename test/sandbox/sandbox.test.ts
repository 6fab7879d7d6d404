// The sandbox node: topology, isolation from the host, reachability with no
// agent attached, kubelet cgroup layout of pod processes, manifests, and
// teardown (normal, after a throw, after a crash, on a signal).

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findCgroup2Mount } from '../../src/sandbox/cgroup.js';
import { Sandbox, STATE_DIR } from '../../src/sandbox/sandbox.js';
import type { SandboxSpec } from '../../src/sandbox/spec.js';
import { probeIcmp, probeTcp, probeUdp, startServer, startStream, withSandbox, type ProbeProcess } from '../e2e/helpers/traffic.js';
import { sandboxDown } from '../../src/sandbox/up.js';

const REPO = join(import.meta.dirname, '..', '..');
const TCP = 8080;
const UDP = 5353;

function testId(): string {
  return `t${randomBytes(3).toString('hex')}`;
}

function rootLinks(): string[] {
  return execFileSync('ip', ['-o', 'link'], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '')
    .sort();
}

function netnsOf(id: string): string[] {
  return existsSync('/run/netns') ? readdirSync('/run/netns').filter((n) => n.startsWith(`weir-${id}-`)) : [];
}

function ip(netns: string, ...args: string[]): string {
  return execFileSync('ip', ['-n', netns, ...args], { encoding: 'utf8' });
}

/** The cgroup v2 path of a process, as /proc/PID/cgroup shows it ("0::/..."). */
function cgroupOf(pid: number): string {
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  if (line === undefined) throw new Error(`no cgroup v2 line for ${pid}`);
  return line.slice(3);
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** What a process started with spawnInPod sees in its own /proc/self/cgroup. */
async function selfCgroup(sb: Sandbox, ns: string, pod: string, container?: string): Promise<string> {
  const child = sb.spawnInPod(ns, pod, ['cat', '/proc/self/cgroup'], container === undefined ? {} : { container });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  const status = await new Promise<number | null>((r) => child.once('close', r));
  expect(status).toBe(0);
  const line = out.split('\n').find((l) => l.startsWith('0::'));
  return line?.slice(3) ?? '';
}

/** Everything a sandbox leaves on the machine, by name. */
function traces(id: string): { netns: string[]; cgroups: string[]; state: boolean } {
  const mount = findCgroup2Mount();
  return {
    netns: netnsOf(id),
    cgroups: [`weir-sb-${id}`, `weir-sb-${id}-hosts`].filter((d) => existsSync(join(mount, d))),
    state: existsSync(join(STATE_DIR, `${id}.json`)),
  };
}

const NONE = { netns: [], cgroups: [], state: false };
const linksAtStart = rootLinks();

describe('sandbox node (cgroupfs driver)', () => {
  const id = testId();
  const spec: SandboxSpec = {
    id,
    namespaces: [
      { name: 'team-a', labels: { team: 'a' } },
      { name: 'team-b', labels: { team: 'b' } },
    ],
    pods: [
      {
        namespace: 'team-a',
        name: 'burst',
        labels: { app: 'burst', 'weir.dev/domain': 'train-data' },
        qosClass: 'Burstable',
        ports: [{ name: 'http', port: TCP }, { name: 'dns', port: UDP, protocol: 'UDP' }],
      },
      { namespace: 'team-a', name: 'guar', labels: { app: 'guar' }, qosClass: 'Guaranteed' },
      { namespace: 'team-b', name: 'best', labels: { app: 'best' } },
    ],
    hosts: [
      { name: 'svc', kind: 'service', ipv4: '10.20.0.10' },
      { name: 'inet', kind: 'internet', ipv4: '203.0.113.10' },
    ],
  };
  let sb: Sandbox;
  const servers = new Map<string, ProbeProcess>();

  beforeAll(async () => {
    sb = await Sandbox.create(spec);
    for (const h of ['svc', 'inet']) servers.set(h, await startServer(sb, h, { tcp: [TCP], udp: [UDP] }));
  });

  afterAll(async () => {
    await sb?.destroy();
  });

  it('builds a node router, one netns per pod and host, and the addressing plan', () => {
    expect(netnsOf(id).sort()).toEqual(
      [`weir-${id}-node`, `weir-${id}-svc`, `weir-${id}-inet`, `weir-${id}-team-a.burst`, `weir-${id}-team-a.guar`, `weir-${id}-team-b.best`].sort(),
    );
    const burst = sb.pod('team-a', 'burst');
    expect([burst.ip, burst.ip6]).toEqual(['10.244.0.2', 'fd00:10:244::2']);
    expect([sb.host('svc').ip6, sb.host('inet').ip6]).toEqual(['fd00:10:20::10', '2001:db8:203::113:10']);

    // Pod side: eth0 with /32 + /128, default routes via the link-local gateway.
    expect(ip(burst.netns, '-o', 'addr', 'show', 'dev', 'eth0')).toMatch(/inet 10\.244\.0\.2\/32/);
    expect(ip(burst.netns, '-o', 'addr', 'show', 'dev', 'eth0')).toMatch(/inet6 fd00:10:244::2\/128/);
    expect(ip(burst.netns, 'route', 'show', 'default')).toMatch(/default via 169\.254\.1\.1 dev eth0/);
    expect(ip(burst.netns, '-6', 'route', 'show', 'default')).toMatch(/default via fe80::1 dev eth0/);

    // Node side: a short veth name per endpoint, a /32 and /128 route to each.
    const links = ip(sb.nodeNetns, '-o', 'link');
    for (const e of [...sb.listPods(), ...sb.listHosts()]) {
      expect(e.veth.length).toBeLessThanOrEqual(15);
      expect(links).toContain(`${e.veth}@`);
      expect(ip(sb.nodeNetns, 'route', 'show', `${e.ip}/32`)).toContain(`dev ${e.veth}`);
      expect(ip(sb.nodeNetns, '-6', 'route', 'show', `${e.ip6}/128`)).toContain(`dev ${e.veth}`);
    }
    expect(execFileSync('ip', ['netns', 'exec', sb.nodeNetns, 'cat', '/proc/sys/net/ipv4/ip_forward'], { encoding: 'utf8' }).trim()).toBe('1');
  });

  it('gives the node namespace no default route and no link but its own veths', () => {
    expect(ip(sb.nodeNetns, 'route', 'show', 'default').trim()).toBe('');
    expect(ip(sb.nodeNetns, '-6', 'route', 'show', 'default').trim()).toBe('');
    const names = ip(sb.nodeNetns, '-o', 'link')
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(':')[1]?.trim().split('@')[0]);
    const expected = ['lo', ...sb.listPods().map((p) => p.veth), ...sb.listHosts().map((h) => h.veth)];
    expect(names.sort()).toEqual(expected.sort());
    // Every route in the node points at one of its veths (or is link-local).
    for (const r of [...ip(sb.nodeNetns, 'route').split('\n'), ...ip(sb.nodeNetns, '-6', 'route').split('\n')].filter(Boolean)) {
      expect(r).toMatch(/dev w[ph][0-9a-f]{10}/);
    }
  });

  it('creates no interface in the root network namespace', () => {
    expect(rootLinks()).toEqual(linksAtStart);
  });

  for (const family of [4, 6] as const) {
    it(`lets a pod reach service and internet hosts over TCP, UDP and ICMP (IPv${family}), no agent attached`, async () => {
      const pod = sb.pod('team-a', 'burst');
      for (const host of ['svc', 'inet']) {
        const tcp = await probeTcp(sb, 'team-a/burst', host, TCP, { family });
        expect(tcp, JSON.stringify(tcp)).toMatchObject({ ok: true, code: null });
        expect(tcp.raw.echo).toBe(true);
        expect(tcp.raw.local).toBe(family === 4 ? pod.ip : pod.ip6);
        const udp = await probeUdp(sb, 'team-a/burst', host, UDP, { family });
        expect(udp, JSON.stringify(udp)).toMatchObject({ ok: true, code: null });
        expect(udp.raw.echo).toBe(true);
        const icmp = await probeIcmp(sb, 'team-a/burst', host, { family });
        expect(icmp, JSON.stringify(icmp)).toMatchObject({ ok: true, code: null });
      }
    });
  }

  it('delivers flows with the pod IP as source (seen by the host-side server)', async () => {
    const pod = sb.pod('team-b', 'best');
    const srv = servers.get('svc');
    if (srv === undefined) throw new Error('no server');
    const tcp = await probeTcp(sb, 'team-b/best', 'svc', TCP);
    expect(tcp.ok).toBe(true);
    await srv.waitFor((e) => e.event === 'tcp-accept' && e.remote === pod.ip && e.remotePort === tcp.raw.localPort);
    const tcp6 = await probeTcp(sb, 'team-b/best', 'svc', TCP, { family: 6 });
    await srv.waitFor((e) => e.event === 'tcp-accept' && e.remote === pod.ip6 && e.remotePort === tcp6.raw.localPort);
    await probeUdp(sb, 'team-b/best', 'svc', UDP);
    await srv.waitFor((e) => e.event === 'udp-recv' && e.remote === pod.ip);
    const connected = await probeUdp(sb, 'team-b/best', 'svc', UDP, { family: 6, connect: true });
    expect(connected.ok).toBe(true);
    await srv.waitFor((e) => e.event === 'udp-recv' && e.remote === pod.ip6);
  });

  it('connects pods to each other through the node', async () => {
    const srv = await startServer(sb, 'team-a/guar', { tcp: [9000] });
    try {
      const r = await probeTcp(sb, 'team-b/best', 'team-a/guar', 9000, { family: 6 });
      expect(r.ok).toBe(true);
      await srv.waitFor((e) => e.event === 'tcp-accept' && e.remote === sb.pod('team-b', 'best').ip6);
    } finally {
      await srv.stop();
    }
  });

  it('reports the errno: EPERM for a refused send, ETIMEDOUT for a SYN dropped on the way', async () => {
    // A netfilter drop in the pod's own OUTPUT path fails sendmsg with EPERM,
    // the errno a cgroup BPF program's refusal gives. TCP ignores that error
    // on the SYN and retransmits, so there the probe reports a timeout.
    const pod = sb.pod('team-a', 'burst');
    const svc = sb.host('svc');
    const rules = [
      'table inet weirtest {',
      '  chain out {',
      '    type filter hook output priority 0;',
      `    ip daddr ${svc.ip} drop`,
      `    ip6 daddr ${svc.ip6} drop`,
      '  }',
      '}',
      '',
    ].join('\n');
    execFileSync('ip', ['netns', 'exec', pod.netns, 'nft', '-f', '-'], { input: rules });
    try {
      for (const family of [4, 6] as const) {
        expect(await probeTcp(sb, 'team-a/burst', 'svc', TCP, { family, timeoutMs: 300 })).toMatchObject({ ok: false, code: 'ETIMEDOUT' });
        const udp = await probeUdp(sb, 'team-a/burst', 'svc', UDP, { family });
        expect(udp).toMatchObject({ ok: false, code: 'EPERM' });
        expect(udp.raw.sent).toBe(false);
        expect(await probeIcmp(sb, 'team-a/burst', 'svc', { family })).toMatchObject({ ok: false, code: 'EPERM' });
      }
      // Other destinations are unaffected.
      expect((await probeTcp(sb, 'team-a/burst', 'inet', TCP)).ok).toBe(true);
    } finally {
      execFileSync('ip', ['netns', 'exec', pod.netns, 'nft', 'delete', 'table', 'inet', 'weirtest']);
    }
  });

  it('shows a long-lived connection being cut and then resuming (tcp-stream)', async () => {
    const pod = sb.pod('team-b', 'best');
    const svc = sb.host('svc');
    const stream = await startStream(sb, 'team-b/best', 'svc', TCP, { intervalMs: 50, echoTimeoutMs: 300 });
    const rules = ['table inet weircut {', '  chain out {', '    type filter hook output priority 0;', `    ip daddr ${svc.ip} drop`, '  }', '}', ''].join('\n');
    try {
      await stream.waitFor((e) => e.event === 'echo' && e.seq === 3);
      execFileSync('ip', ['netns', 'exec', pod.netns, 'nft', '-f', '-'], { input: rules });
      const cut = await stream.waitFor((e) => e.event === 'timeout', 3000);
      execFileSync('ip', ['netns', 'exec', pod.netns, 'nft', 'delete', 'table', 'inet', 'weircut']);
      // TCP retransmits the queued lines: the cut-off ones are echoed late.
      await stream.waitFor((e) => e.event === 'echo' && e.seq === cut.seq && e.late === true, 10_000);
    } finally {
      spawnSync('ip', ['netns', 'exec', pod.netns, 'nft', 'delete', 'table', 'inet', 'weircut'], { stdio: 'ignore' }); // gone already unless the test failed
      await stream.stop();
    }
    const done = await stream.waitFor((e) => e.event === 'done');
    expect(Number(done.sent)).toBeGreaterThan(3);
  });

  it('runs pod processes inside the kubelet container cgroup (Burstable, Guaranteed, BestEffort)', async () => {
    const root = `/${basename(sb.cgroupRoot)}`;
    const cases: [string, string, string][] = [
      ['team-a', 'burst', 'kubepods/burstable'],
      ['team-a', 'guar', 'kubepods'],
      ['team-b', 'best', 'kubepods/besteffort'],
    ];
    for (const [ns, name, parent] of cases) {
      const pod = sb.pod(ns, name);
      const want = `${root}/${parent}/pod${pod.uid}/${pod.containerId()}`;
      expect(`/${pod.cgroupDir.slice(findCgroup2Mount().length + 1)}`).toBe(`${root}/${parent}/pod${pod.uid}`);
      expect(await selfCgroup(sb, ns, name)).toBe(want);
    }
    expect(sb.podsCgroupRoot).toBe(join(sb.cgroupRoot, 'kubepods'));
  });

  it('keeps a long-running pod server, and its sockets, in the container cgroup', async () => {
    const srv = await startServer(sb, { namespace: 'team-a', name: 'burst' }, { tcp: [9001] });
    try {
      const pid = srv.child.pid;
      if (pid === undefined) throw new Error('no pid');
      const pod = sb.pod('team-a', 'burst');
      expect(cgroupOf(pid)).toBe(`/${basename(sb.cgroupRoot)}/kubepods/burstable/pod${pod.uid}/${pod.containerId()}`);
      expect(readFileSync(join(pod.containerCgroup(), 'cgroup.procs'), 'utf8').split('\n')).toContain(String(pid));
    } finally {
      await srv.stop();
    }
  });

  it('supports a container started after the pod (cgroup created on demand)', async () => {
    const pod = sb.pod('team-a', 'guar');
    const dir = join(pod.cgroupDir, pod.containerId('sidecar'));
    expect(existsSync(dir)).toBe(false);
    expect(await selfCgroup(sb, 'team-a', 'guar', 'sidecar')).toBe(`/${basename(sb.cgroupRoot)}/kubepods/pod${pod.uid}/${pod.containerId('sidecar')}`);
    expect(existsSync(dir)).toBe(true);
    expect(pod.containerId('sidecar')).not.toBe(pod.containerId('main'));
    expect((await probeTcp(sb, 'team-a/guar', 'svc', TCP, { container: 'sidecar' })).ok).toBe(true);
  });

  it('writes Namespace and Pod manifests for the agent, and keeps them in sync', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'weir-sb-manifests-'));
    try {
      const files = sb.writeManifests(dir);
      expect(files).toHaveLength(4);
      const docs = readdirSync(dir)
        .filter((f) => !f.startsWith('.'))
        .flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => d.toJS() as Record<string, unknown>));
      const kinds = docs.map((d) => d.kind).sort();
      expect(kinds).toEqual(['Namespace', 'Namespace', 'Pod', 'Pod', 'Pod']);
      const burst = sb.pod('team-a', 'burst');
      const pod = docs.find((d) => d.kind === 'Pod' && (d.metadata as { name: string }).name === 'burst');
      expect(pod).toMatchObject({
        apiVersion: 'v1',
        metadata: { name: 'burst', namespace: 'team-a', uid: burst.uid, labels: { app: 'burst', 'weir.dev/domain': 'train-data' } },
        spec: {
          nodeName: sb.nodeName,
          containers: [
            {
              name: 'main',
              ports: [
                { name: 'http', containerPort: TCP, protocol: 'TCP' },
                { name: 'dns', containerPort: UDP, protocol: 'UDP' },
              ],
            },
          ],
        },
        status: { phase: 'Running', podIP: burst.ip, podIPs: [{ ip: burst.ip }, { ip: burst.ip6 }], qosClass: 'Burstable' },
      });
      expect(burst.uid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
      const ns = docs.find((d) => d.kind === 'Namespace' && (d.metadata as { name: string }).name === 'team-a');
      expect(ns).toMatchObject({ metadata: { labels: { team: 'a', 'kubernetes.io/metadata.name': 'team-a' } } });

      // addPod/removePod update the directory.
      const late = await sb.addPod({ namespace: 'team-b', name: 'late', labels: { app: 'late' }, qosClass: 'Burstable' });
      expect(readdirSync(dir).some((f) => f.includes('team-b.late'))).toBe(true);
      await sb.removePod('team-b', 'late');
      expect(readdirSync(dir).some((f) => f.includes('team-b.late'))).toBe(false);
      expect(existsSync(late.cgroupDir)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('adds a pod at run time (reachable, own cgroup) and removes it with its processes', async () => {
    const pod = await sb.addPod({ namespace: 'team-b', name: 'added', labels: { app: 'added' } });
    expect(pod.ip).toBe('10.244.0.5');
    expect((await probeTcp(sb, 'team-b/added', 'inet', TCP, { family: 6 })).ok).toBe(true);
    const sleeper = sb.spawnInPod('team-b', 'added', ['sleep', '600'], { stdio: 'ignore' });
    const pid = sleeper.pid ?? 0;
    await until(() => alive(pid) && cgroupOf(pid).endsWith(pod.containerId()));
    await sb.removePod('team-b', 'added');
    await until(() => !alive(pid));
    expect(netnsOf(id)).not.toContain(pod.netns);
    expect(existsSync(pod.cgroupDir)).toBe(false);
    expect(ip(sb.nodeNetns, 'route', 'show', `${pod.ip}/32`).trim()).toBe('');
    expect(() => sb.pod('team-b', 'added')).toThrow(/no pod/);
  });
});

describe('sandbox node (systemd driver)', () => {
  it('lays pod and container cgroups out as kubepods.slice/…/cri-containerd-<id>.scope', async () => {
    const id = testId();
    await withSandbox(
      {
        id,
        cgroupDriver: 'systemd',
        namespaces: [{ name: 'ns' }],
        pods: [
          { namespace: 'ns', name: 'g', qosClass: 'Guaranteed' },
          { namespace: 'ns', name: 'b', qosClass: 'Burstable' },
          { namespace: 'ns', name: 'e', qosClass: 'BestEffort' },
        ],
        hosts: [],
      },
      async (sb) => {
        const root = `/weir-sb-${id}/kubepods.slice`;
        expect(sb.podsCgroupRoot).toBe(join(sb.cgroupRoot, 'kubepods.slice'));
        const g = sb.pod('ns', 'g');
        const b = sb.pod('ns', 'b');
        const e = sb.pod('ns', 'e');
        const u = (uid: string): string => uid.replace(/-/g, '_');
        expect(await selfCgroup(sb, 'ns', 'g')).toBe(`${root}/kubepods-pod${u(g.uid)}.slice/cri-containerd-${g.containerId()}.scope`);
        expect(await selfCgroup(sb, 'ns', 'b')).toBe(
          `${root}/kubepods-burstable.slice/kubepods-burstable-pod${u(b.uid)}.slice/cri-containerd-${b.containerId()}.scope`,
        );
        expect(await selfCgroup(sb, 'ns', 'e')).toBe(
          `${root}/kubepods-besteffort.slice/kubepods-besteffort-pod${u(e.uid)}.slice/cri-containerd-${e.containerId()}.scope`,
        );
        expect(await selfCgroup(sb, 'ns', 'b', 'late')).toBe(
          `${root}/kubepods-burstable.slice/kubepods-burstable-pod${u(b.uid)}.slice/cri-containerd-${b.containerId('late')}.scope`,
        );
        // Pods reach each other (no hosts in this spec).
        const srv = await startServer(sb, 'ns/g', { tcp: [TCP] });
        expect((await probeTcp(sb, 'ns/e', 'ns/g', TCP)).ok).toBe(true);
        await srv.stop();
      },
    );
    expect(traces(id)).toEqual(NONE);
  });
});

describe('sandbox teardown', () => {
  const small = (id: string): SandboxSpec => ({
    id,
    namespaces: [{ name: 'ns' }],
    pods: [{ namespace: 'ns', name: 'pod', qosClass: 'Burstable' }],
    hosts: [{ name: 'host', kind: 'internet', ipv4: '198.51.100.7' }],
  });

  it('destroy() removes everything even when the test body throws', async () => {
    const id = testId();
    const dir = mkdtempSync(join(tmpdir(), 'weir-sb-manifests-'));
    const pids: number[] = [];
    try {
      await expect(
        withSandbox(small(id), async (sb) => {
          sb.writeManifests(dir);
          const srv = await startServer(sb, 'host', { tcp: [TCP] });
          const sleeper = sb.spawnInPod('ns', 'pod', ['sleep', '600'], { stdio: 'ignore' });
          pids.push(srv.child.pid ?? 0, sleeper.pid ?? 0);
          expect(traces(id).netns).toHaveLength(3);
          throw new Error('boom');
        }),
      ).rejects.toThrow('boom');
      expect(traces(id)).toEqual(NONE);
      expect(readdirSync(dir)).toEqual([]);
      await until(() => pids.every((p) => !alive(p)));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('destroy() is idempotent, and a destroyed sandbox refuses work', async () => {
    const sb = await Sandbox.create(small(testId()));
    await sb.destroy();
    await sb.destroy();
    expect(sb.isDestroyed).toBe(true);
    expect(() => sb.spawnInPod('ns', 'pod', ['true'])).toThrow(/destroyed/);
  });

  // Owner processes this file started: killed at the end whatever happens.
  const owners = new Set<ReturnType<typeof spawn>>();
  afterAll(() => {
    for (const c of owners) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });

  function startOwner(
    id: string,
    opts: { reaper?: boolean } = {},
  ): Promise<{ child: ReturnType<typeof spawn>; info: { podPid: number; hostPid: number } }> {
    const child = spawn(
      process.execPath,
      [
        '--import',
        join(REPO, 'src/sandbox/source-hooks.ts'),
        join(REPO, 'test/sandbox/fixtures/sandbox-owner.ts'),
        id,
        ...(opts.reaper ? ['--reaper'] : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    owners.add(child);
    return new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        if (out.includes('\n')) resolve({ child, info: JSON.parse(out) as { podPid: number; hostPid: number } });
      });
      child.once('exit', (status) => reject(new Error(`owner exited ${status}: ${err}`)));
    });
  }

  it('cleanupLeftovers() removes a crashed run (processes included) and leaves live sandboxes alone', async () => {
    const id = testId();
    const { child, info } = await startOwner(id);
    const liveSb = await Sandbox.create(small(testId()));
    try {
      // A live owner elsewhere is left alone.
      expect(await Sandbox.cleanupLeftovers()).not.toContain(id);
      expect(traces(id).netns).toHaveLength(3);

      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      expect(traces(id)).toEqual({ netns: expect.arrayContaining([`weir-${id}-node`]), cgroups: [`weir-sb-${id}`, `weir-sb-${id}-hosts`], state: true });
      expect(alive(info.podPid) && alive(info.hostPid)).toBe(true);

      const removed = await Sandbox.cleanupLeftovers();
      expect(removed).toContain(id);
      expect(removed).not.toContain(liveSb.id);
      expect(traces(id)).toEqual(NONE);
      await until(() => !alive(info.podPid) && !alive(info.hostPid));
      // This process's sandbox survived.
      expect(traces(liveSb.id).netns).toHaveLength(3);
      expect((await probeTcp(liveSb, 'ns/pod', 'host', TCP, { echo: false })).code).toBe('ECONNREFUSED');
    } finally {
      child.kill('SIGKILL');
      await liveSb.destroy();
    }
  });

  it('its reaper tears the sandbox down when the owner is SIGKILLed', async () => {
    const id = testId();
    const { child, info } = await startOwner(id, { reaper: true });
    expect(traces(id).netns).toHaveLength(3);
    child.kill('SIGKILL');
    await until(() => JSON.stringify(traces(id)) === JSON.stringify(NONE));
    await until(() => !alive(info.podPid) && !alive(info.hostPid));
  });

  it('tears the sandbox down when its owner gets SIGTERM', async () => {
    const id = testId();
    const { child, info } = await startOwner(id);
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (c, s) => r([c, s])));
    child.kill('SIGTERM');
    const [status, signal] = await exited;
    expect(signal ?? status).toBe('SIGTERM');
    expect(traces(id)).toEqual(NONE);
    await until(() => !alive(info.podPid) && !alive(info.hostPid));
  });

  it('re-creating an id clears a crashed run of the same id; a live id is refused', async () => {
    const id = testId();
    const { child } = await startOwner(id);
    try {
      await expect(Sandbox.create(small(id))).rejects.toThrow(/in use/);
    } finally {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    const sb = await Sandbox.create(small(id));
    expect(traces(id).netns).toHaveLength(3);
    await sb.destroy();
    expect(traces(id)).toEqual(NONE);
  });

  it('sandboxDown(id) removes a sandbox even while its owner is alive', async () => {
    const id = testId();
    const { child, info } = await startOwner(id);
    try {
      expect(await sandboxDown(id)).toBe(true);
      expect(traces(id)).toEqual(NONE);
      await until(() => !alive(info.podPid) && !alive(info.hostPid));
      expect(await sandboxDown(id)).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('refuses addresses outside the ranges a host kind may use', async () => {
    const bad = (h: SandboxSpec['hosts'][number]): Promise<Sandbox> => Sandbox.create({ namespaces: [], pods: [], hosts: [h] });
    await expect(bad({ name: 'x', kind: 'internet', ipv4: '8.8.8.8' })).rejects.toThrow(RangeError);
    await expect(bad({ name: 'x', kind: 'internet', ipv4: '203.0.113.9', ipv6: '2a00::1' })).rejects.toThrow(RangeError);
    await expect(bad({ name: 'x', kind: 'service', ipv4: '192.168.1.1' })).rejects.toThrow(RangeError);
    await expect(bad({ name: 'x', kind: 'service', ipv4: '10.244.0.9' })).rejects.toThrow(/pod range/);
    await expect(bad({ name: 'node', kind: 'service', ipv4: '10.20.0.9' })).rejects.toThrow(/reserved/);
  });

  it('leaves no interface in the root network namespace behind', () => {
    expect(rootLinks()).toEqual(linksAtStart);
  });
});
