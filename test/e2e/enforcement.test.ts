// End-to-end on the sandbox node: the agent runs on --manifests with the
// real datapath attached to the sandbox's kubepods cgroup; real processes
// in pod network namespaces and cgroups send real packets.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Agent, Violation } from '../../src/agent/agent.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import type { SandboxSpec } from '../../src/sandbox/spec.js';
import { probeIcmp, probeTcp, probeUdp, startServer, startStream, type ProbeProcess } from './helpers/traffic.js';
import { startSandboxAgent, stopSandboxAgent, type SandboxAgent } from '../helpers/agent-process.js';
import { BPFFS } from '../helpers/kernel.js';
import { verifyAuditLog } from '../../src/audit/verify.js';
import { readFileSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { createInterface } from 'node:readline';
import { queryLocalApi } from '../../src/agent/local-api.js';
import { formatStatus, statusCommand } from '../../src/cli/status-command.js';
import type { AgentStatus } from '../../src/agent/agent.js';
import { PROGRAMS } from '../../src/datapath/datapath.js';

const spec: SandboxSpec = {
  id: `e2e${process.pid % 100000}`,
  nodeName: 'e2e-node',
  namespaces: [
    { name: 'ml-train', labels: { 'weir.dev/domain': 'train-data' } },
    { name: 'ml-serving', labels: { 'weir.dev/domain': 'prod-model' } },
    { name: 'ml-gateway', labels: {} },
  ],
  pods: [
    { namespace: 'ml-train', name: 'trainer', labels: { app: 'trainer', 'weir.dev/domain': 'train-data' }, qosClass: 'Burstable' },
    { namespace: 'ml-serving', name: 'model-server', labels: { app: 'model-server', 'weir.dev/domain': 'prod-model' }, qosClass: 'Guaranteed', ports: [{ name: 'http', port: 8080 }] },
    { namespace: 'ml-gateway', name: 'gateway', labels: { app: 'gateway' } },
  ],
  hosts: [
    { name: 'feature-store', kind: 'service', ipv4: '10.20.0.10', ipv6: 'fd00:10:20::10' },
    { name: 'public-internet', kind: 'internet', ipv4: '203.0.113.10', ipv6: '2001:db8:203::113:10' },
  ],
};

const TRAIN_POLICY = `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: train-data, namespace: ml-train}
spec:
  podSelector: {matchLabels: {weir.dev/domain: train-data}}
  egress:
  - to: [{ipBlock: {cidr: 10.20.0.10/32}}, {ipBlock: {cidr: "fd00:10:20::10/128"}}]
    ports: [{protocol: TCP, port: 8080}, {protocol: UDP, port: 514}]
`;

// The model server may talk to nobody (default deny) but must still answer clients.
const SERVING_POLICY = `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: prod-model, namespace: ml-serving}
spec:
  podSelector: {matchLabels: {weir.dev/domain: prod-model}}
`;

let sb: Sandbox;
let run: SandboxAgent | undefined;
let agent: Agent;
let dir: string;
let auditDir: string;
const pinDir = join(BPFFS, `weir-e2e-${process.pid}`);
const servers: ProbeProcess[] = [];
const violations: Violation[] = [];

async function waitFor<T>(what: string, fn: () => Promise<T | null> | T | null, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  await Sandbox.cleanupLeftovers();
  sb = await Sandbox.create(spec);
  dir = mkdtempSync(join(tmpdir(), 'weir-e2e-'));
  sb.writeManifests(dir);
  writeFileSync(join(dir, 'train-data.yaml'), TRAIN_POLICY);
  writeFileSync(join(dir, 'prod-model.yaml'), SERVING_POLICY);
  servers.push(await startServer(sb, 'feature-store', { tcp: [8080, 9000], udp: [514] }));
  servers.push(await startServer(sb, 'public-internet', { tcp: [443], udp: [53] }));
  servers.push(await startServer(sb, 'ml-serving/model-server', { tcp: [8080] }));
  run = await startSandboxAgent(sb, { manifests: dir, pinDir, logger: pino({ level: process.env.WEIR_TEST_LOG ?? 'silent' }), tmpPrefix: 'weir-e2e-audit-' });
  ({ agent, dir: auditDir } = run);
  agent.onViolation((v) => violations.push(v));
}, 120_000);

afterAll(async () => {
  for (const s of servers) await s.stop();
  await stopSandboxAgent(run);
  await sb?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('enforcement on the sandbox node', () => {
  it('an allowed TCP path works end to end (connect, data both ways)', async () => {
    const r = await probeTcp(sb, 'ml-train/trainer', 'feature-store', 8080);
    expect(r).toMatchObject({ ok: true });
  });

  it('a denied TCP connect fails at once with EPERM and is reported with pid and command', async () => {
    violations.length = 0;
    const r = await probeTcp(sb, 'ml-train/trainer', 'public-internet', 443, { timeoutMs: 2000 });
    expect(r.ok).toBe(false);
    expect(r.code).toBe('EPERM');
    expect(r.ms).toBeLessThan(1000);
    const v = await waitFor('violation event', () => violations.find((x) => x.destination === '203.0.113.10') ?? null);
    expect(v).toMatchObject({
      verdict: 'drop',
      reason: 'default-deny',
      namespace: 'ml-train',
      pod: 'trainer',
      domain: 'train-data',
      policy: 'EgressPolicy/ml-train/train-data',
      protocol: 'TCP',
      port: 443,
      hook: 'connect4',
    });
    expect(v.pid).toBeGreaterThan(0);
    expect(v.command.length).toBeGreaterThan(0);
  });

  it('a port the rule does not list is refused even to an allowed address', async () => {
    const r = await probeTcp(sb, 'ml-train/trainer', 'feature-store', 9000, { timeoutMs: 2000 });
    expect(r.code).toBe('EPERM');
  });

  it('IPv6: allowed and denied paths', async () => {
    expect(await probeTcp(sb, 'ml-train/trainer', 'feature-store', 8080, { family: 6 })).toMatchObject({ ok: true });
    expect((await probeTcp(sb, 'ml-train/trainer', 'public-internet', 443, { family: 6, timeoutMs: 2000 })).code).toBe('EPERM');
  });

  it('UDP: an allowed send gets its echo, a denied sendto fails with EPERM', async () => {
    expect(await probeUdp(sb, 'ml-train/trainer', 'feature-store', 514)).toMatchObject({ ok: true });
    const denied = await probeUdp(sb, 'ml-train/trainer', 'public-internet', 53, { timeoutMs: 1500 });
    expect(denied.code).toBe('EPERM');
    const connected = await probeUdp(sb, 'ml-train/trainer', 'public-internet', 53, { timeoutMs: 1500, connect: true });
    expect(connected.code).toBe('EPERM');
  });

  it('ICMP to a denied destination is dropped in the kernel (send refused)', async () => {
    const r = await probeIcmp(sb, 'ml-train/trainer', 'public-internet', { timeoutMs: 1500 });
    expect(r.ok).toBe(false);
    expect(r.code).toBe('EPERM');
  });

  it('pods no policy selects are not affected', async () => {
    expect(await probeTcp(sb, 'ml-gateway/gateway', 'public-internet', 443)).toMatchObject({ ok: true });
    expect(await probeIcmp(sb, 'ml-gateway/gateway', 'public-internet')).toMatchObject({ ok: true });
  });

  it('a server pod under default-deny still answers inbound clients (replies are not egress)', async () => {
    // The model server may not open connections ...
    expect((await probeTcp(sb, 'ml-serving/model-server', 'feature-store', 8080, { timeoutMs: 2000 })).code).toBe('EPERM');
    // ... but a client reaching it gets its answer (SYN-ACK and echoed data pass as replies).
    expect(await probeTcp(sb, 'ml-gateway/gateway', 'ml-serving/model-server', 8080)).toMatchObject({ ok: true });
    const c = agent.datapath.counters(
      agent.datapath.writer.endpoints().find((e) => e.name === 'model-server')?.endpointId ?? -1,
    );
    expect(c.packets.reply?.packets ?? 0n).toBeGreaterThan(0n);
  });

  it('a policy file change takes effect without a restart', async () => {
    const gen = agent.datapath.writer.generation;
    writeFileSync(
      join(dir, 'train-data.yaml'),
      TRAIN_POLICY.replace('ports: [{protocol: TCP, port: 8080}', 'ports: [{protocol: TCP, port: 9000}, {protocol: TCP, port: 8080}'),
    );
    await waitFor('new generation', () => (agent.datapath.writer.generation > gen ? true : null));
    expect(await probeTcp(sb, 'ml-train/trainer', 'feature-store', 9000)).toMatchObject({ ok: true });
  });

  it('a malformed policy file is rejected and the last good policy keeps enforcing', async () => {
    writeFileSync(join(dir, 'train-data.yaml'), TRAIN_POLICY.replace('10.20.0.10/32', '10.20.0.10/33'));
    await new Promise((r) => setTimeout(r, 500));
    expect(await probeTcp(sb, 'ml-train/trainer', 'feature-store', 8080)).toMatchObject({ ok: true });
    expect((await probeTcp(sb, 'ml-train/trainer', 'public-internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
    writeFileSync(join(dir, 'train-data.yaml'), TRAIN_POLICY);
  });

  it('an established connection is cut when its allowance is removed', async () => {
    writeFileSync(join(dir, 'train-data.yaml'), TRAIN_POLICY);
    await new Promise((r) => setTimeout(r, 300));
    const stream = await startStream(sb, 'ml-train/trainer', 'feature-store', 8080, { intervalMs: 100, echoTimeoutMs: 400 });
    servers.push(stream);
    await stream.waitFor((e) => e.event === 'echo', 3000);
    const gen = agent.datapath.writer.generation;
    // Remove the feature store from the allow list (keep only the log port).
    writeFileSync(join(dir, 'train-data.yaml'), TRAIN_POLICY.replace('{protocol: TCP, port: 8080}, ', ''));
    await waitFor('new generation', () => (agent.datapath.writer.generation > gen ? true : null));
    const cut = await stream.waitFor((e) => e.event === 'error' || e.event === 'timeout', 5000);
    expect(cut).toBeTruthy();
    const v = await waitFor('revocation event', () => violations.find((x) => x.hook === 'egress' && x.port === 8080 && x.pod === 'trainer') ?? null);
    expect(v.verdict).toBe('drop');
    await stream.stop();
  });

  it('serves the violation and verdict counters on /metrics', async () => {
    const port = agent.metricsPort();
    const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(body).toMatch(/weir_violations_total\{[^}]*namespace="ml-train"[^}]*verdict="drop"[^}]*\} [1-9]/);
    expect(body).toMatch(/weir_datapath_packets_total\{[^}]*namespace="ml-train"[^}]*workload="Pod"[^}]*verdict="allow"[^}]*\} [1-9]/);
    expect(body).toMatch(/weir_datapath_socket_verdicts_total\{[^}]*verdict="drop"[^}]*\} [1-9]/);
  });

  it('writes violations and policy changes to the audit log, which verifies', async () => {
    const log = agent.auditLog;
    if (!log) throw new Error('no audit log');
    await log.flush({ sync: true });
    const path = join(auditDir, 'audit.log');
    const records = readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { kind: string; data: Record<string, unknown> });
    expect(records[0]).toMatchObject({ kind: 'start', data: { node: spec.nodeName } });
    const policies = records.filter((r) => r.kind === 'policy');
    // The first apply, then each file edit above that changed what is enforced.
    expect(policies.length).toBeGreaterThanOrEqual(3);
    expect(policies[0]?.data).toMatchObject({ fromGeneration: null });
    expect(String(policies[0]?.data.digest)).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(new Set(policies.map((p) => p.data.digest)).size).toBeGreaterThan(1);
    const denied = records.find((r) => r.kind === 'violation' && r.data.destination === '203.0.113.10' && r.data.port === 443);
    expect(denied?.data).toMatchObject({ namespace: 'ml-train', pod: 'trainer', verdict: 'drop', policy: 'EgressPolicy/ml-train/train-data' });
    const v = await verifyAuditLog(path);
    expect(v.ok, JSON.stringify(v)).toBe(true);
    expect(v.records).toBe(records.length);
  });

  it('weir observe streams the verdicts that pass its filter, live', async () => {
    const socket = join(auditDir, 'weir.sock');
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    const open = (query: string): Promise<{ lines: Record<string, unknown>[]; close: () => void }> =>
      new Promise((resolve, reject) => {
        const lines: Record<string, unknown>[] = [];
        const req = request({ socketPath: socket, path: `/v1/observe?${query}` }, (res) => {
          res.on('error', () => undefined); // the test destroys the request to unsubscribe
          createInterface({ input: res })
            .on('error', () => undefined) // readline forwards the stream's error
            .on('line', (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
          resolve({ lines, close: () => req.destroy() });
        });
        req.on('error', reject);
        req.end();
      });
    const trainer = await open('namespace=ml-train&verdict=drop');
    const other = await open('pod=ml-gateway/gateway');
    try {
      await waitFor('hello', () => (trainer.lines.length > 0 ? true : null));
      expect((await probeTcp(sb, 'ml-train/trainer', 'public-internet', 443, { timeoutMs: 2000 })).code).toBe('EPERM');
      const seen = await waitFor('an observed verdict', () => trainer.lines.find((l) => l.type === 'verdict' && l.destination === '203.0.113.10') ?? null);
      expect(seen).toMatchObject({ namespace: 'ml-train', pod: 'trainer', verdict: 'drop', policy: 'EgressPolicy/ml-train/train-data', port: 443 });
      expect(other.lines.filter((l) => l.type === 'verdict')).toEqual([]);
      const bad = await queryLocalApi(socket, '/v1/observe?verdict=allow');
      expect(bad.status).toBe(400);
    } finally {
      trainer.close();
      other.close();
    }
  });

  it('weir status reports attachments, maps against capacity, policy, workloads and events', async () => {
    const socket = join(auditDir, 'weir.sock');
    const r = await queryLocalApi(socket, '/v1/status');
    expect(r.status).toBe(200);
    const s = r.body as AgentStatus;
    expect(s.ready).toBe(true);
    expect(s.attachments.map((a) => a.program).sort()).toEqual(PROGRAMS.map((p) => p.program).sort());
    expect(s.attachments.every((a) => a.linkId > 0)).toBe(true);
    expect(s.maps.weir_pods?.used).toBe(3);
    expect(s.maps.weir_pods?.capacity).toBeGreaterThan(3);
    expect(s.policy.generation).toBe(agent.datapath.writer.generation);
    expect(s.pods.enforced).toBe(3);
    expect(s.events.sent).toBeGreaterThan(0);
    expect(s.auditLog?.head?.seq).toBeGreaterThan(1);
    const text = formatStatus(s);
    expect(text).toMatch(/ready/);
    expect(text).toMatch(/weir_pods\s+3 \//);
    const out: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((x: string) => out.push(x) > 0) as typeof process.stdout.write;
    let code: number;
    try {
      code = await statusCommand.run(['--api-socket', socket]);
    } finally {
      process.stdout.write = write;
    }
    expect(code).toBe(0);
    expect(out.join('')).toMatch(/weir_connect4\s+link \d+/);
  });
});
