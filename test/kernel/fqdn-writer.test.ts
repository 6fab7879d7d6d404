// DNS-aware egress with nothing written by hand: the model (a policy with
// fqdn peers, the cluster DNS Service with its EndpointSlice) goes through
// the policy engine and the StateWriter, exactly as the agent does, and the
// real -fqdn programs learn from an answer and allow the pod's connection.
// Then the writer keeps the keys, classes, flag and resolvers in step with
// policy and Service changes (revoking at once), and a restarted writer
// adopts and reconciles what the pinned maps hold.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONST, decodeDnsKey, decodeFqdnKeyValue, decodeSetValue, encodeDnsKey, encodeFqdnKeyValue, u32Key } from '../../src/datapath/abi.js';
import { cgroupIdOf } from '../../src/datapath/cgroups.js';
import type { StateWriter } from '../../src/datapath/state-writer.js';
import { nameHash } from '../../src/policy/fqdn-hash.js';
import { buildMessage, DNS, udpFrame } from '../helpers/dns-wire.js';
import { learnedOf } from '../helpers/fqdn.js';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { IPPROTO, TCP_ACK, TCP_SYN, packet, skbContext } from '../helpers/packets.js';

const CLUSTER_IP = '10.96.0.10';
const NAME = 'api.models.example.com';
const POD_IP = '10.244.7.1';

let bed: KernelBed;
let ctx: Buffer;
let pod: TestPod;

function dnsService(backends: string[]): unknown[] {
  return [
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: 'kube-system' },
      spec: { clusterIP: CLUSTER_IP, ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] },
    },
    {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: 'kube-dns-1', namespace: 'kube-system', labels: { 'kubernetes.io/service-name': 'kube-dns' } },
      addressType: 'IPv4',
      endpoints: backends.map((ip) => ({ addresses: [ip], conditions: { ready: true } })),
      ports: [{ name: 'dns', port: 5353, protocol: 'UDP' }, { name: 'dns-tcp', port: 5353, protocol: 'TCP' }],
    },
  ];
}

function policy(egress: unknown[]): unknown {
  return { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name: 'trainer', namespace: 'ml' }, spec: { podSelector: { matchLabels: { app: 'trainer' } }, egress } };
}

const fqdnRule = (names: string[], port = 443): unknown => ({ to: names.map((n) => (n.startsWith('*') ? { fqdn: { matchPattern: n } } : { fqdn: { matchName: n } })), ports: [{ protocol: 'TCP', port }] });

function sync(): void {
  const res = bed.sync();
  expect(res.failedSets).toEqual([]);
}

function run(prog: 'weir_egress' | 'weir_ingress', frame: Buffer): number {
  return inCgroup(pod.container(), () => bed.dp.testRun(prog, { data: frame, ctx }).retval);
}

let nextId = 0x2000;
/** The pod resolves `qname` through `resolver` (port `rport`); the answer carries `addrs`. */
function resolve(qname: string, addrs: string[], resolver = CLUSTER_IP, rport = 53): void {
  const id = nextId++;
  const port = 41000 + (id % 1000);
  expect(run('weir_egress', udpFrame({ src: POD_IP, dst: resolver, sport: port, dport: rport, payload: buildMessage({ response: false, id, qname }) }))).toBe(1);
  const answers = addrs.map((a) => ({ name: qname, type: DNS.TYPE_A, data: a, ttl: 60 }));
  expect(run('weir_ingress', udpFrame({ src: resolver, dst: POD_IP, sport: rport, dport: port, payload: buildMessage({ id, qname, answers }) }))).toBe(1);
}

const syn = (dst: string, dport: number, flags = TCP_SYN): number => run('weir_egress', packet({ src: POD_IP, dst, proto: IPPROTO.TCP, sport: 45000, dport, tcpFlags: flags }));
const setId = (): number => bed.dp.writer.setIdOf('EgressPolicy/ml/trainer') as number;
const flags = (id: number): number => decodeSetValue(bed.dp.map('weir_sets').lookup(u32Key(id)) as Buffer).flags;

function keysOf(id: number): { kind: number; hash: bigint; cls: number }[] {
  const m = bed.dp.map('weir_fqdn_keys');
  const d = m.dump();
  const out: { kind: number; hash: bigint; cls: number }[] = [];
  for (let i = 0; i < d.count; i++) {
    const k = decodeDnsKey(d.keys.subarray(i * 16, (i + 1) * 16));
    if (k.setId === id) out.push({ kind: k.kind, hash: k.hash, cls: decodeFqdnKeyValue(d.values.subarray(i * 4, (i + 1) * 4)) });
  }
  return out.sort((a, b) => (a.hash < b.hash ? -1 : 1));
}

beforeAll(async () => {
  bed = await KernelBed.create({ eventIntervalMs: 60_000 });
  bed.dp.attach(bed.podsRoot, cgroupIdOf(bed.podsRoot));
  ctx = skbContext(nonLoopbackIfindex());
  bed.add(...dnsService(['10.244.0.53']));
  pod = bed.addPod('ml', 'trainer-0', { app: 'trainer' }, [POD_IP]);
  bed.add(policy([fqdnRule([NAME, '*.hf.co'])]));
  sync();
});

afterAll(() => bed?.close());

describe('a policy with fqdn peers, through the StateWriter alone', () => {
  it('writes the trusted resolvers, the keys hashed with the node secret and their classes, and flags the set', () => {
    expect(bed.dp.fqdnLearning).toBe(true);
    expect(bed.dp.writer.resolverEntries()).toEqual([
      { ip: '10.244.0.53', port: 5353 },
      { ip: CLUSTER_IP, port: 53 },
    ]);
    expect(bed.dp.hashMapEntries('weir_dns_resolvers')).toBe(2);
    const id = setId();
    expect(flags(id) & CONST.WEIR_SET_F_FQDN).toBe(CONST.WEIR_SET_F_FQDN);
    const secret = bed.dp.dnsSecret();
    const keys = keysOf(id);
    expect(keys.map((k) => [k.kind, k.hash]).sort()).toEqual(
      [
        [CONST.WEIR_DNS_KEY_EXACT, nameHash(secret, NAME)],
        [CONST.WEIR_DNS_KEY_WILDCARD, nameHash(secret, 'hf.co')],
      ].sort(),
    );
    for (const k of keys) expect(bed.dp.writer.readClass(k.cls)?.ranges).toEqual([{ proto: IPPROTO.TCP, lo: 443, hi: 443, bits: 0x02 }]);
  });

  it('the pod resolves the name through the ClusterIP (or a backend on its target port) and may then reach the answer on the rule port only', () => {
    expect(syn('192.0.2.10', 443)).toBe(0);
    resolve(NAME, ['192.0.2.10']);
    expect(syn('192.0.2.10', 443)).toBe(1);
    expect(syn('192.0.2.10', 80)).toBe(0);
    resolve('cdn-lfs.hf.co', ['192.0.2.20'], '10.244.0.53', 5353);
    expect(syn('192.0.2.20', 443)).toBe(1);
    expect(learnedOf(bed.dp, bed.endpointOf(pod)).map((l) => l.addr)).toEqual(['192.0.2.10', '192.0.2.20']);
  });

  it('a name removed from the policy is revoked at once (established flows included); put back, what was learned counts again', () => {
    bed.add(policy([fqdnRule(['*.hf.co'])]));
    sync();
    expect(keysOf(setId())).toHaveLength(1);
    expect(syn('192.0.2.10', 443)).toBe(0);
    expect(syn('192.0.2.10', 443, TCP_ACK)).toBe(0);
    expect(syn('192.0.2.20', 443)).toBe(1);
    bed.add(policy([fqdnRule([NAME, '*.hf.co'])]));
    sync();
    expect(syn('192.0.2.10', 443)).toBe(1);
  });

  it('new ports for a name take effect at once (its key rewritten with the new class)', () => {
    bed.add(policy([fqdnRule([NAME], 8443), fqdnRule(['*.hf.co'])]));
    sync();
    expect(syn('192.0.2.10', 8443)).toBe(1);
    expect(syn('192.0.2.10', 443)).toBe(0);
  });

  it('a resolver no longer trusted (the DNS backend moved) teaches nothing; the new one does', () => {
    bed.add(...dnsService(['10.244.0.54']));
    sync();
    expect(bed.dp.writer.resolverEntries()).toEqual([
      { ip: '10.244.0.54', port: 5353 },
      { ip: CLUSTER_IP, port: 53 },
    ]);
    // The query to the old backend is no longer implied (dropped), and its answer teaches nothing.
    const before = bed.dp.stats();
    const q = buildMessage({ response: false, id: 0x77, qname: 'a.hf.co' });
    expect(run('weir_egress', udpFrame({ src: POD_IP, dst: '10.244.0.53', sport: 42000, dport: 5353, payload: q }))).toBe(0);
    const ans = buildMessage({ id: 0x77, qname: 'a.hf.co', answers: [{ name: 'a.hf.co', type: DNS.TYPE_A, data: '192.0.2.30', ttl: 60 }] });
    expect(run('weir_ingress', udpFrame({ src: '10.244.0.53', dst: POD_IP, sport: 5353, dport: 42000, payload: ans }))).toBe(1);
    const after = bed.dp.stats();
    expect([after.dns_queries - before.dns_queries, after.fqdn_learned - before.fqdn_learned]).toEqual([0n, 0n]);
    expect(syn('192.0.2.30', 443)).toBe(0);
    resolve('a.hf.co', ['192.0.2.30'], '10.244.0.54', 5353);
    expect(syn('192.0.2.30', 443)).toBe(1);
  });

  it('without fqdn peers the set loses its flag and its keys; nothing learned is allowed any more', () => {
    const id = setId();
    bed.add(policy([{ to: [{ ipBlock: { cidr: '198.51.100.0/24' } }] }]));
    sync();
    expect(flags(id) & CONST.WEIR_SET_F_FQDN).toBe(0);
    expect(keysOf(id)).toEqual([]);
    expect(syn('192.0.2.20', 443)).toBe(0);
    expect(bed.dp.hashMapEntries('weir_fqdn_keys')).toBe(0);
  });
});

describe('a restarted agent adopts the pinned keys and resolvers', () => {
  it('with nothing changed it writes nothing; a key deleted or rewritten behind its back, and a stale one, are put right and counted', () => {
    bed.add(policy([fqdnRule([NAME, '*.hf.co', 'b.example.com'])]));
    sync();
    const id = setId();
    const want = keysOf(id);
    expect(want).toHaveLength(3);
    const state = bed.engine.compute(bed.store);
    const bindings = [{ uid: pod.uid, namespace: 'ml', name: pod.name, cgroupId: cgroupIdOf(pod.dir), setKey: 'EgressPolicy/ml/trainer' }];
    const restart = (): StateWriter => {
      const w = bed.restartedWriter();
      expect(w.adopt()).toMatchObject({ sets: 1, resolvers: 2 });
      return w;
    };
    const first = restart().apply(state, bindings);
    expect(first.reconciled?.weir_fqdn_keys).toEqual({ added: 0, removed: 0, rewritten: 0 });
    expect(first.reconciled?.weir_dns_resolvers).toEqual({ added: 0, removed: 0, rewritten: 0 });
    expect(first.fqdnKeysWritten + first.setsWritten).toBe(0);

    const fk = bed.dp.map('weir_fqdn_keys');
    const secret = bed.dp.dnsSecret();
    const key = (setId: number, name: string): Buffer => encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_EXACT, hash: nameHash(secret, name) });
    fk.delete(key(id, NAME));
    fk.update(key(id, 'b.example.com'), encodeFqdnKeyValue(0));
    fk.update(key(id, 'evil.example.com'), encodeFqdnKeyValue(want[0]?.cls ?? 1));
    fk.update(key(4000, NAME), encodeFqdnKeyValue(want[0]?.cls ?? 1));
    const second = restart().apply(state, bindings);
    expect(second.reconciled?.weir_fqdn_keys).toEqual({ added: 1, removed: 2, rewritten: 1 });
    expect(keysOf(id)).toEqual(want);
    expect(bed.dp.hashMapEntries('weir_fqdn_keys')).toBe(3);
    resolve(NAME, ['192.0.2.40']);
    expect(syn('192.0.2.40', 443)).toBe(1);
  });
});
