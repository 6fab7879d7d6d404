// A pod the model knows before the kubelet has created its cgroup: the agent
// (in-process, manifests source, a cgroup tree and pin directory of its own)
// counts it as pending, retries, says so in status and metrics, and enforces
// it as soon as the cgroup appears, without any model change.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Agent } from '../../src/agent/agent.js';
import { cgroupIdOf, defaultCgroupRoot } from '../../src/datapath/cgroups.js';
import { u64Key } from '../../src/datapath/abi.js';
import { ensureBpffs } from '../../src/native/bpffs.js';
import { removeCgroupTree } from '../../src/sandbox/cgroup.js';
import { inCgroup, nonLoopbackIfindex } from '../helpers/kernel.js';
import { IPPROTO, packet, skbContext } from '../helpers/packets.js';

const TAG = `weir-pending-${process.pid}`;
const UID = '7e0d2a4c-0000-4000-8000-00000000a001';
const NODE = 'pending-node';

let agent: Agent | null = null;
let work = '';
let cgRoot = '';
let pinDir = '';
let podDir = '';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function metric(name: string): Promise<number> {
  const m = await (agent as Agent).registry.getSingleMetric(name)?.get();
  return m?.values.reduce((n, v) => n + v.value, 0) ?? NaN;
}

beforeAll(async () => {
  const bpffs = ensureBpffs('/sys/fs/bpf');
  pinDir = join(bpffs, TAG);
  cgRoot = join(defaultCgroupRoot(), TAG);
  for (const d of ['besteffort', 'burstable']) mkdirSync(join(cgRoot, 'kubepods', d), { recursive: true });
  podDir = join(cgRoot, 'kubepods', 'besteffort', `pod${UID}`);
  work = mkdtempSync(join(tmpdir(), 'weir-pending-'));
  const objects = [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'late', uid: 'ns-late' } },
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'late-0', namespace: 'late', uid: UID, labels: { app: 'late' } },
      spec: { nodeName: NODE, containers: [{ name: 'main' }] },
      status: { phase: 'Pending', qosClass: 'BestEffort', podIPs: [{ ip: '10.244.7.7' }] },
    },
    { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'deny-all', namespace: 'late' }, spec: { podSelector: {} } },
  ];
  writeFileSync(join(work, 'model.json'), JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
  agent = await Agent.start(
    { manifests: work, nodeName: NODE, cgroupRoot: cgRoot, bpffs, pinDir, metricsAddr: null, apiSocket: null },
    pino({ level: 'silent' }),
  );
});

afterAll(async () => {
  await agent?.stop();
  agent?.datapath.close();
  // The agent leaves its pins (enforcement survives it); this test removes them.
  rmSync(pinDir, { recursive: true, force: true });
  if (cgRoot) removeCgroupTree(cgRoot);
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('a pod whose cgroup does not exist yet', () => {
  it('is pending: counted, retried, shown in status; nothing is written for it', async () => {
    const a = agent as Agent;
    expect(a.status().pods).toMatchObject({ enforced: 0, pendingCgroup: 1 });
    expect(await metric('weir_pods_pending_cgroup')).toBe(1);
    const r0 = await metric('weir_pod_cgroup_retries_total');
    expect(r0).toBeGreaterThanOrEqual(1);
    await sleep(1200); // retried every 500 ms while pending
    expect(await metric('weir_pod_cgroup_retries_total')).toBeGreaterThan(r0);
    expect(a.datapath.writer.endpoints()).toEqual([]);
  });

  it('is enforced as soon as the cgroup appears, with no model change', async () => {
    const a = agent as Agent;
    const gen = a.datapath.writer.generation;
    mkdirSync(podDir);
    const container = join(podDir, 'c0');
    mkdirSync(container);
    const t0 = Date.now();
    while (a.datapath.writer.endpoints().length === 0 && Date.now() - t0 < 5000) await sleep(50);
    expect(a.datapath.writer.endpoints().map((e) => e.uid)).toEqual([UID]);
    expect(a.datapath.writer.generation).toBeGreaterThan(gen);
    expect(a.status().pods).toMatchObject({ enforced: 1, pendingCgroup: 0 });
    expect(await metric('weir_pods_pending_cgroup')).toBe(0);
    expect(a.datapath.map('weir_pods').lookup(u64Key(cgroupIdOf(podDir)))).not.toBeNull();
    // Its egress is judged: default deny.
    const ctx = skbContext(nonLoopbackIfindex());
    const ret = inCgroup(container, () => a.datapath.testRun('weir_egress', { data: packet({ src: '10.244.7.7', dst: '203.0.113.9', proto: IPPROTO.TCP, sport: 40000, dport: 443 }), ctx }).retval);
    expect(ret).toBe(0);
  });
});
