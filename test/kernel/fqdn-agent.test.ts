// The agent's half of DNS-aware egress against the real programs: the DNS
// records the kernel sends (learned, refused, intent) become metrics per
// workload, warnings, a Kubernetes Event (refused) and an audit record
// (intent); the sweep deletes learned slots expired and unused for the
// conntrack timeout, and only those; status and explain show what a pod
// learned. The pieces are wired as src/agent/agent.ts wires them
// (FqdnLearning over the Datapath, AgentMetrics); the policy, the keys and
// the resolvers come from the model through the StateWriter.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { encodeFqdnLearnedKey, decodeFqdnLearnedValue, encodeFqdnLearnedValue, type RawDnsEvent } from '../../src/datapath/abi.js';
import { cgroupIdOf } from '../../src/datapath/cgroups.js';
import { FqdnLearning, type FqdnPod } from '../../src/agent/fqdn-learning.js';
import type { FqdnIntent } from '../../src/audit/record.js';
import { explain, formatExplanation } from '../../src/policy/explain.js';
import { addressBytes } from '../../src/policy/prefix.js';
import { DEFAULT_RESOLVERS } from '../../src/policy/resolvers.js';
import { AgentMetrics } from '../../src/report/metrics.js';
import { formatFqdn } from '../../src/cli/status-command.js';
import type { AgentStatus } from '../../src/agent/agent.js';
import { buildMessage, DNS, udpFrame } from '../helpers/dns-wire.js';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { IPPROTO, TCP_ACK, TCP_SYN, packet, skbContext } from '../helpers/packets.js';

const CLUSTER_IP = '10.96.0.10';
const NAME = 'api.models.example.com';
const POD_IP = '10.244.8.1';

type LogLine = { level: number; msg: string; [k: string]: unknown };

let bed: KernelBed;
let ctx: Buffer;
let pod: TestPod;
let fqdn: FqdnLearning;
const registry = new Registry();
const logs: LogLine[] = [];
const audits: FqdnIntent[] = [];
const refusedEvents: unknown[] = [];

function model(): unknown[] {
  return [
    { apiVersion: 'v1', kind: 'Service', metadata: { name: 'kube-dns', namespace: 'kube-system' }, spec: { clusterIP: CLUSTER_IP, ports: [{ name: 'dns', port: 53, protocol: 'UDP' }] } },
    {
      apiVersion: 'weir.dev/v1alpha1',
      kind: 'EgressPolicy',
      metadata: { name: 'trainer', namespace: 'ml' },
      spec: {
        podSelector: { matchLabels: { app: 'trainer' } },
        egress: [{ to: [{ fqdn: { matchName: NAME } }, { fqdn: { matchPattern: '*.hf.co' } }], ports: [{ protocol: 'TCP', port: 443 }] }],
      },
    },
  ];
}

function endpointPod(id: number): FqdnPod | undefined {
  const e = bed.dp.writer.endpoints().find((x) => x.endpointId === id);
  return e && { uid: e.uid, namespace: e.namespace, name: e.name, workload: 'Pod/trainer-0', domain: '', setKey: e.setKey };
}

function run(prog: 'weir_egress' | 'weir_ingress', frame: Buffer): number {
  return inCgroup(pod.container(), () => bed.dp.testRun(prog, { data: frame, ctx }).retval);
}

let nextId = 0x3000;
function resolve(qname: string, addrs: string[], ttl = 60): void {
  const id = nextId++;
  const port = 42000 + (id % 1000);
  expect(run('weir_egress', udpFrame({ src: POD_IP, dst: CLUSTER_IP, sport: port, dport: 53, payload: buildMessage({ response: false, id, qname }) }))).toBe(1);
  const answers = addrs.map((a) => ({ name: qname, type: DNS.TYPE_A, data: a, ttl }));
  expect(run('weir_ingress', udpFrame({ src: CLUSTER_IP, dst: POD_IP, sport: 53, dport: port, payload: buildMessage({ id, qname, answers }) }))).toBe(1);
}

const syn = (dst: string, dport: number, flags = TCP_SYN): number => run('weir_egress', packet({ src: POD_IP, dst, proto: IPPROTO.TCP, sport: 45000, dport, tcpFlags: flags }));

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const m = registry.getSingleMetric(name);
  if (!m) throw new Error(`no metric ${name}`);
  let sum = 0;
  for (const v of (await m.get()).values) if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  return sum;
}

function drain(): void {
  bed.dp.drainEvents();
}

beforeAll(async () => {
  bed = await KernelBed.create({ eventIntervalMs: 60_000 });
  bed.dp.attach(bed.podsRoot, cgroupIdOf(bed.podsRoot));
  ctx = skbContext(nonLoopbackIfindex());
  pod = bed.addPod('ml', 'trainer-0', { app: 'trainer' }, [POD_IP]);
  bed.add(...model());
  expect(bed.sync().failedSets).toEqual([]);
  const metrics = new AgentMetrics(
    registry,
    { kernelCounts: () => [], kernelStats: () => bed.dp.stats(), mapUsage: () => bed.dp.writer.usage(), liveWorkloads: () => [{ namespace: 'ml', workload: 'Pod/trainer-0', domain: '' }] },
    { version: 't', node: 'node-1', processMetrics: false },
  );
  const state = bed.engine.compute(bed.store);
  fqdn = new FqdnLearning({
    datapath: bed.dp,
    log: pino({ level: 'debug' }, { write: (l: string) => logs.push(JSON.parse(l) as LogLine) }),
    count: (kind, p, n, reason) => metrics.fqdn(kind, p, n, reason),
    endpoint: endpointPod,
    state: () => state,
    refusedEvent: (e) => refusedEvents.push(e),
    audit: (d) => audits.push(d),
    processName: () => 'python3',
    now: () => new Date().toISOString(),
    resolverConfig: DEFAULT_RESOLVERS,
  });
  bed.dp.startEvents(
    () => {},
    () => {},
    (recs: RawDnsEvent[]) => fqdn.onRecords(recs),
  );
});

afterAll(() => bed?.close());

describe('the DNS records', () => {
  it('learned: counted per workload (weir_fqdn_learned_total), the name remembered for status', async () => {
    resolve(NAME, ['192.0.2.10', '192.0.2.11']);
    drain();
    expect(await metric('weir_fqdn_learned_total', { namespace: 'ml', workload: 'Pod' })).toBe(2);
    expect(logs.filter((l) => l.event === 'fqdn-learned').map((l) => [l.name, l.address])).toEqual([
      [NAME, '192.0.2.10'],
      [NAME, '192.0.2.11'],
    ]);
    expect(fqdn.learnedNames()).toEqual([NAME]);
  });

  it('intent: a name no rule allows is a warning naming the pod and the name, a metric per workload, and an fqdn-intent audit record', async () => {
    const id = nextId++;
    expect(run('weir_egress', udpFrame({ src: POD_IP, dst: CLUSTER_IP, sport: 43000, dport: 53, payload: buildMessage({ response: false, id, qname: 'api.openai.com' }) }))).toBe(1);
    drain();
    const warn = logs.find((l) => l.event === 'fqdn-intent');
    expect(warn).toMatchObject({ level: 40, namespace: 'ml', pod: 'trainer-0', workload: 'Pod/trainer-0', name: 'api.openai.com', qtype: 'A', resolver: CLUSTER_IP, policy: 'EgressPolicy/ml/trainer', count: 1 });
    expect(warn?.msg).toMatch(/name its policy does not allow.*unapproved/);
    expect(audits).toEqual([expect.objectContaining({ namespace: 'ml', pod: 'trainer-0', name: 'api.openai.com', count: 1, policy: 'EgressPolicy/ml/trainer' })]);
    expect(await metric('weir_fqdn_queries_not_allowed_total', { namespace: 'ml', workload: 'Pod' })).toBe(1);
  });

  it('refused: an address with no free slot is a warning, a metric with its reason and a Kubernetes Event on the pod', async () => {
    // Four live slots on the address already (keys of no policy here, as an older policy would have left).
    const m = bed.dp.map('weir_fqdn_learned');
    const k = encodeFqdnLearnedKey({ endpointId: bed.endpointOf(pod), family: 2, addr: addressBytes('192.0.2.61').bytes });
    const live = process.hrtime.bigint() + 60_000_000_000n;
    m.update(k, encodeFqdnLearnedValue([1n, 2n, 3n, 4n].map((hash) => ({ kind: 1, hash, expiresNs: live, lastUseNs: 0n }))));
    resolve(NAME, ['192.0.2.61']);
    drain();
    expect(await metric('weir_fqdn_refused_total', { namespace: 'ml', workload: 'Pod', reason: 'slots-full' })).toBe(1);
    expect(refusedEvents).toEqual([{ namespace: 'ml', pod: 'trainer-0', podUid: pod.uid, name: NAME, address: '192.0.2.61', reason: 'slots-full', count: 1 }]);
    expect(logs.find((l) => l.event === 'fqdn-refused')).toMatchObject({ level: 40, reason: 'slots-full', address: '192.0.2.61', name: NAME });
    m.delete(k);
  });
});

describe('status and explain', () => {
  it('status: learning loaded, the trusted resolver, map usage, each address with its name, key and expiry', () => {
    // Five names of the wildcard and the exact name on one address: two keys, two slots.
    for (const n of ['a.hf.co', 'b.hf.co', 'c.hf.co', 'd.hf.co', 'e.hf.co', NAME]) resolve(n, ['192.0.2.60']);
    drain();
    const s = fqdn.status();
    expect(s).toMatchObject({ learning: true, unavailable: null, resolvers: [{ ip: CLUSTER_IP, port: 53 }], resolverConfig: { service: 'kube-system/kube-dns', addresses: [] } });
    expect(s.maps.weir_fqdn_keys).toEqual({ used: 2, capacity: bed.dp.capacities().fqdnKeys });
    expect(s.maps.weir_fqdn_learned?.used).toBe(3);
    expect(s.refused).toBe(1);
    const p = s.pods.find((x) => x.pod === 'trainer-0');
    const a = p?.addresses.find((x) => x.address === '192.0.2.10');
    expect(a?.entries).toEqual([{ key: NAME, names: [NAME], expiresAt: expect.any(String), expired: false }]);
    const at60 = p?.addresses.find((x) => x.address === '192.0.2.60');
    // The kernel reports a key newly learned on an address, not refreshes: the first name of the wildcard is the one shown.
    expect(at60?.entries.map((e) => [e.key, e.names]).sort()).toEqual([
      ['*.hf.co', ['a.hf.co']],
      [NAME, [NAME]],
    ]);
    const text = formatFqdn({ learnedNames: fqdn.learnedNames(), fqdn: s } as unknown as AgentStatus).join('\n');
    expect(text).toMatch(/DNS learning \(fqdn peers\): loaded/);
    expect(text).toMatch(/trusted resolvers \(Service kube-system\/kube-dns\): 10\.96\.0\.10:53/);
    expect(text).toMatch(/192\.0\.2\.10\s+<- api\.models\.example\.com \[api\.models\.example\.com\] until /);
  });

  it('explain: a learned destination is allowed on the rule port by the fqdn rule, and says so; another port is not', () => {
    const learned = (uid: string, ip: string) => fqdn.learnedFor(uid, ip);
    const ok = explain(bed.store, 'ml/trainer-0', '192.0.2.10:443/TCP', { learned });
    expect(ok).toMatchObject({ verdict: 'allow', reason: 'allow-rule', learned: [{ key: NAME, names: [NAME], expired: false }] });
    expect(ok.matches.map((m) => m.rule)).toContain(`EgressPolicy/ml/trainer egress[0] (fqdn ${NAME}, learned from DNS)`);
    expect(formatExplanation(ok)).toMatch(/learned from DNS by this pod:\n {2}api\.models\.example\.com \(asked: api\.models\.example\.com\), until /);
    const no = explain(bed.store, 'ml/trainer-0', '192.0.2.10:80/TCP', { learned });
    expect(no).toMatchObject({ verdict: 'drop', reason: 'default-deny' });
    expect(no.learned).toHaveLength(1);
    expect(explain(bed.store, 'ml/trainer-0', '192.0.2.99:443/TCP', { learned }).learned).toBeUndefined();
  });
});

describe('after each policy write', () => {
  it('warns once when policies have fqdn peers but no trusted resolver is known, and says when one is back', () => {
    const state = bed.engine.compute(bed.store);
    const warnings = (): number => logs.filter((l) => /no trusted DNS resolver is known/.test(l.msg)).length;
    fqdn.afterApply(state);
    expect(warnings()).toBe(0);
    const none = { ...state, resolvers: [] };
    fqdn.afterApply(none);
    fqdn.afterApply(none);
    expect(warnings()).toBe(1);
    expect(logs.find((l) => /no trusted DNS resolver is known/.test(l.msg))).toMatchObject({ level: 40, policies: ['EgressPolicy/ml/trainer'], dnsService: 'kube-system/kube-dns' });
    fqdn.afterApply(state);
    expect(logs.some((l) => l.msg === 'trusted DNS resolvers known again')).toBe(true);
  });
});

describe('the sweep of weir_fqdn_learned', () => {
  it('deletes slots expired and unused for the conntrack timeout (counted), keeps live ones and expired ones still in use', async () => {
    const ep = bed.endpointOf(pod);
    const m = bed.dp.map('weir_fqdn_learned');
    const key = (a: string): Buffer => encodeFqdnLearnedKey({ endpointId: ep, family: 2, addr: addressBytes(a).bytes });
    const now = process.hrtime.bigint();
    const longAgo = now - 400_000_000_000n; // past the 300 s conntrack timeout
    const edit = (a: string, f: (s: ReturnType<typeof decodeFqdnLearnedValue>[number]) => ReturnType<typeof decodeFqdnLearnedValue>[number]): void => {
      const slots = decodeFqdnLearnedValue(m.lookup(key(a)) as Buffer).map((s) => (s.kind ? f(s) : s));
      m.update(key(a), encodeFqdnLearnedValue(slots));
    };
    // .10: expired long ago and unused since: deleted, entry and all.
    edit('192.0.2.10', (s) => ({ ...s, expiresNs: longAgo, lastUseNs: longAgo }));
    // .11: expired, but an established flow used it a moment ago: kept (and its packets still pass).
    edit('192.0.2.11', (s) => ({ ...s, expiresNs: now - 1n, lastUseNs: now }));
    // .60: one of its two slots dead: the entry is rewritten without it.
    const slots60 = decodeFqdnLearnedValue(m.lookup(key('192.0.2.60')) as Buffer);
    const firstKind = slots60.findIndex((s) => s.kind !== 0);
    slots60[firstKind] = { ...(slots60[firstKind] as (typeof slots60)[number]), expiresNs: longAgo, lastUseNs: longAgo };
    m.update(key('192.0.2.60'), encodeFqdnLearnedValue(slots60));

    const before = bed.dp.hashMapEntries('weir_fqdn_learned');
    const r = fqdn.sweep();
    expect(r).toMatchObject({ expired: 2, entries: before - 1 });
    expect(m.lookup(key('192.0.2.10'))).toBeNull();
    expect(decodeFqdnLearnedValue(m.lookup(key('192.0.2.11')) as Buffer).filter((s) => s.kind).length).toBe(1);
    expect(decodeFqdnLearnedValue(m.lookup(key('192.0.2.60')) as Buffer).filter((s) => s.kind).length).toBe(1);
    expect(await metric('weir_fqdn_expired_total', { namespace: 'ml', workload: 'Pod' })).toBe(2);
    expect(fqdn.status().expired).toBe(2);
    expect(syn('192.0.2.10', 443, TCP_ACK)).toBe(0);
    expect(syn('192.0.2.11', 443, TCP_ACK)).toBe(1);
    expect(syn('192.0.2.11', 443)).toBe(0);
    // A second sweep finds nothing more.
    expect(fqdn.sweep().expired).toBe(0);
  });
});

describe('without the DNS-learning programs', () => {
  it('status says they are not loaded and why: fqdn peers allow only DNS', async () => {
    const plain = await KernelBed.create({ fqdnLearning: 'off' });
    try {
      const lines: LogLine[] = [];
      const f = new FqdnLearning({
        datapath: plain.dp,
        log: pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l) as LogLine) }),
        count: () => {},
        endpoint: () => undefined,
        state: () => null,
        audit: () => {},
        processName: () => null,
        now: () => '',
        resolverConfig: DEFAULT_RESOLVERS,
      });
      const s = f.status();
      expect(s).toMatchObject({ learning: false, unavailable: 'off', pods: [] });
      expect(formatFqdn({ learnedNames: [], fqdn: s } as unknown as AgentStatus)[0]).toBe(
        'DNS learning (fqdn peers): NOT LOADED (off): fqdn peers allow only the DNS queries they imply',
      );
      // Policies with fqdn peers on such a node: one warning saying what they still allow.
      const state = bed.engine.compute(bed.store);
      f.afterApply(state);
      f.afterApply(state);
      expect(lines.filter((l) => /DNS learning is not loaded/.test(l.msg))).toEqual([
        expect.objectContaining({ level: 40, reason: 'off', msg: 'policies have fqdn peers but DNS learning is not loaded on this node: their fqdn peers allow only the DNS queries they imply' }),
      ]);
    } finally {
      plain.close();
    }
  });
});
