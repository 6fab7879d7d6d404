// DNS-aware egress in the kernel (docs/architecture.md, "DNS-aware egress"):
// weir's real programs (the -fqdn variants this kernel accepts) learn the
// addresses of DNS answers to the queries a pod sent to a trusted resolver,
// and the verdict lets the pod reach them on what its fqdn rules allow.
// Queries and answers go through BPF_PROG_TEST_RUN of the egress and
// ingress programs as sent from (and to) the pod; connect() goes through
// the attached socket hooks with a real process in the pod's cgroup (test
// runs cannot reach sock_addr programs), and one test runs the whole round
// trip with real sockets. The fqdn keys, their classes and the set flag are
// written by the StateWriter from the compiled policy, as the agent does;
// the resolvers, which the model here has no DNS Service for, are written
// straight into weir_dns_resolvers (test/helpers/fqdn.ts).
// test/kernel/fqdn-writer.test.ts writes everything from the model.
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONST,
  DNS_EVENT_KINDS,
  decodeDnsQueryValue,
  decodePodValue,
  encodeDnsQueryKey,
  encodeDnsQueryValue,
  encodeFqdnLearnedKey,
  encodeFqdnLearnedValue,
  decodeFqdnLearnedValue,
  u64Key,
  type RawDnsEvent,
  type RawEvent,
  type StatName,
} from '../../src/datapath/abi.js';
import { cgroupIdOf } from '../../src/datapath/cgroups.js';
import { Datapath } from '../../src/datapath/datapath.js';
import { nameHash } from '../../src/policy/fqdn-hash.js';
import { addressBytes } from '../../src/policy/prefix.js';
import { DNS, buildMessage, ptr, referenceParse, udpFrame, type Message } from '../helpers/dns-wire.js';
import { FqdnWriter, learnedOf } from '../helpers/fqdn.js';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { inPodNetns, netnsSetup, type Step } from '../helpers/netns-child.js';
import { IPPROTO, TCP_ACK, TCP_SYN, packet, skbContext } from '../helpers/packets.js';

const RESOLVER = '10.96.0.10';
const RESOLVER6 = 'fd00:96::10';
const NAME = 'api.models.example.com';

let bed: KernelBed;
let fq: FqdnWriter;
let ctx: Buffer;
const verdicts: RawEvent[] = [];
const dnsRecords: RawDnsEvent[] = [];

beforeAll(async () => {
  bed = await KernelBed.create({ eventIntervalMs: 60_000 });
  bed.dp.attach(bed.podsRoot, cgroupIdOf(bed.podsRoot));
  bed.dp.startEvents(
    (evs) => verdicts.push(...evs),
    () => {},
    (recs) => dnsRecords.push(...recs),
  );
  fq = new FqdnWriter(bed.dp);
  fq.addResolver(RESOLVER);
  fq.addResolver(RESOLVER6);
  ctx = skbContext(nonLoopbackIfindex());
});

afterAll(() => {
  bed?.close();
});

// ---- the pods and their policies -------------------------------------------------

interface FqdnPod {
  pod: TestPod;
  ip: string;
  ip6: string;
  ep: number;
  setId: number;
}

function policy(ns: string, name: string, podLabels: Record<string, string>, fqdn: { sel: { matchName?: string; matchPattern?: string }; ports: { protocol: string; port: number }[] }[]): unknown {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name, namespace: ns },
    spec: {
      podSelector: { matchLabels: podLabels },
      egress: [
        ...fqdn.map((r) => ({ to: [{ fqdn: r.sel }], ports: r.ports })),
        // The resolvers, as the compiler's implied rule allows them.
        { to: [{ ipBlock: { cidr: `${RESOLVER}/32` } }, { ipBlock: { cidr: `${RESOLVER6}/128` } }], ports: [{ protocol: 'UDP', port: 53 }] },
      ],
    },
  };
}

/** Compiles the model and writes it, fqdn keys and set flags included, as the agent does. */
function sync(): void {
  const res = bed.sync();
  expect(res.failedSets).toEqual([]);
}

let podSeq = 0;
function addPod(ns: string, labels: Record<string, string>): FqdnPod {
  podSeq++;
  const ip = `10.244.9.${podSeq}`;
  const ip6 = `fd00:10:244:9::${podSeq.toString(16)}`;
  const pod = bed.addPod(ns, `p${podSeq}`, labels, [ip, ip6]);
  return { pod, ip, ip6, ep: -1, setId: -1 };
}

function bind(p: FqdnPod): FqdnPod {
  p.ep = bed.endpointOf(p.pod);
  const raw = bed.dp.map('weir_pods').lookup(u64Key(cgroupIdOf(p.pod.dir)));
  if (!raw) throw new Error('pod not written');
  p.setId = decodePodValue(raw).setId;
  return p;
}

// ---- packets ------------------------------------------------------------------------

let nextId = 0x1000;

function egress(p: FqdnPod, frame: Buffer): number {
  return inCgroup(p.pod.container(), () => bed.dp.testRun('weir_egress', { data: frame, ctx }).retval);
}

function ingress(p: FqdnPod, frame: Buffer, ifindex?: number): number {
  const c = ifindex === undefined ? ctx : skbContext(ifindex);
  return inCgroup(p.pod.container(), () => bed.dp.testRun('weir_ingress', { data: frame, ctx: c }).retval);
}

interface Exchange {
  id: number;
  port: number;
  resolver: string;
}

/** The pod sends a query for qname from port to the resolver; returns what its answer must match. */
function query(p: FqdnPod, qname: string | Buffer, opts: { v6?: boolean; port?: number; qtype?: number; resolver?: string; resolverPort?: number } = {}): Exchange {
  const id = nextId++ & 0xffff;
  const port = opts.port ?? 40000 + (id % 20000);
  const resolver = opts.resolver ?? (opts.v6 ? RESOLVER6 : RESOLVER);
  const msg = buildMessage({ response: false, id, qname, ...(opts.qtype !== undefined ? { qtype: opts.qtype } : {}) });
  expect(egress(p, udpFrame({ src: opts.v6 ? p.ip6 : p.ip, dst: resolver, sport: port, dport: opts.resolverPort ?? 53, payload: msg }))).toBe(1);
  return { id, port, resolver };
}

/** An answer reaching the pod (from the exchange's resolver, port 53, unless overridden). */
function answer(p: FqdnPod, x: Exchange, m: Omit<Message, 'id'> & { id?: number }, over: { src?: string; sport?: number; dport?: number; ifindex?: number } = {}): void {
  const msg = buildMessage({ id: x.id, ...m });
  const v6 = x.resolver.includes(':');
  const frame = udpFrame({ src: over.src ?? x.resolver, dst: v6 ? p.ip6 : p.ip, sport: over.sport ?? 53, dport: over.dport ?? x.port, payload: msg });
  // Never dropped, whatever it is.
  expect(ingress(p, frame, over.ifindex)).toBe(1);
}

function answerRaw(p: FqdnPod, x: Exchange, msg: Buffer): void {
  expect(ingress(p, udpFrame({ src: x.resolver, dst: p.ip, sport: 53, dport: x.port, payload: msg }))).toBe(1);
}

function syn(p: FqdnPod, dst: string, dport: number, flags = TCP_SYN): number {
  const v6 = dst.includes(':');
  return egress(p, packet({ src: v6 ? p.ip6 : p.ip, dst, proto: IPPROTO.TCP, sport: 45000, dport, tcpFlags: flags }));
}

const A = (name: string | Buffer, addr: string, ttl = 60) => ({ name, type: DNS.TYPE_A, data: addr, ttl });
const AAAA = (name: string | Buffer, addr: string, ttl = 60) => ({ name, type: DNS.TYPE_AAAA, data: addr, ttl });
const CNAME = (name: string | Buffer, target: string) => ({ name, type: DNS.TYPE_CNAME, data: target });

function stats(): Record<StatName, bigint> {
  return bed.dp.stats();
}

function delta(before: Record<StatName, bigint>, names: StatName[]): Record<string, number> {
  const now = stats();
  return Object.fromEntries(names.map((n) => [n, Number(now[n] - before[n])]));
}

const DNS_STATS: StatName[] = [
  'dns_queries',
  'dns_queries_not_allowed',
  'dns_queries_invalid',
  'dns_answers',
  'dns_ignored_no_query',
  'dns_ignored_rcode',
  'dns_ignored_invalid',
  'fqdn_learned',
  'fqdn_refused',
];

function records(): RawDnsEvent[] {
  bed.dp.drainEvents();
  verdicts.splice(0);
  return dnsRecords.splice(0);
}

const addrs = (p: FqdnPod): string[] => learnedOf(bed.dp, p.ep).map((l) => l.addr);

function pendingQueries(p: FqdnPod): number {
  const m = bed.dp.map('weir_dns_queries');
  return m.keys().filter((k) => k.readUInt32LE(0) === p.ep).length;
}

// ---- a child process in the pod: connect(), and the whole DNS round trip ---------

const CHILD_PY = String.raw`
def resolve_connect(own, lport, resolver, qhex, ahex, host, port):
    # getaddrinfo() by hand: the query goes out, the answer comes in, and the
    # connect follows the moment the answer is read.
    s = socket.socket(fam(resolver), socket.SOCK_DGRAM)
    try:
        s.settimeout(1)
        s.bind(('::' if fam(resolver) == socket.AF_INET6 else '0.0.0.0', lport))
        s.sendto(bytes.fromhex(qhex), (resolver, 53))
        inject('v1', resolver, 53, own, lport, bytes.fromhex(ahex))
        try:
            s.recvfrom(2048)
        except socket.timeout:
            return 'answer lost'
    finally:
        s.close()
    return tcp(host, port)
`;

/** Runs the steps in the pod's cgroup, in a network namespace with the pod's addresses and `local` ones on v0. */
function inPod(p: FqdnPod, local: string[], steps: Step[]): string[] {
  const v4 = local.filter((a) => !a.includes(':')).map((a) => `${a}/32`);
  const v6 = local.filter((a) => a.includes(':')).map((a) => `${a}/128`);
  return inPodNetns(p.pod.container(), netnsSetup([`${p.ip}/24`, ...v4], [`${p.ip6}/64`, ...v6]), steps, CHILD_PY);
}

// ---------------------------------------------------------------------------------------

describe('the datapath loads the DNS-learning variants on this kernel', () => {
  it('probes bpf_loop, loads egress-fqdn.bpf.o and ingress-fqdn.bpf.o, and says so', () => {
    expect(bed.dp.fqdnLearning).toBe(true);
    expect(bed.dp.fqdnLearningUnavailable).toBeNull();
    expect(bed.dp.objectFiles()).toEqual({ 'egress.bpf.o': 'egress-fqdn.bpf.o', 'ingress.bpf.o': 'ingress-fqdn.bpf.o', 'sock_addr.bpf.o': 'sock_addr.bpf.o' });
    expect(bed.dp.programInfo('weir_ingress').object).toBe('ingress-fqdn.bpf.o');
  });
});

describe('the per-node DNS secret (weir_node.dns_secret)', () => {
  it('is set once, random and non-zero, kept by node-flag writes and by a restarted agent', async () => {
    const secret = bed.dp.dnsSecret();
    expect(secret).not.toBe(0n);
    expect(bed.dp.dnsSecret()).toBe(secret);
    bed.dp.setNodeFlags(CONST.WEIR_NODE_F_CT_FULL);
    expect(bed.dp.nodeState()).toMatchObject({ flags: CONST.WEIR_NODE_F_CT_FULL, dnsSecret: secret });
    bed.dp.setNodeFlags(0);
    expect(bed.dp.nodeState()).toMatchObject({ flags: 0, dnsSecret: secret });
    const second = await Datapath.open({ bpffs: '/sys/fs/bpf', pinDir: bed.pinDir, podLevel: 0, logger: pino({ level: 'silent' }) });
    try {
      expect(second.dnsSecret()).toBe(secret);
    } finally {
      second.close();
    }
  });
});

describe('learning from an answer, and the verdict using it', () => {
  let a: FqdnPod;
  let same: FqdnPod; // another pod of the same set
  let other: FqdnPod; // a pod of another set with fqdn peers

  beforeAll(() => {
    a = addPod('ml', { app: 'trainer' });
    same = addPod('ml', { app: 'trainer' });
    other = addPod('ml', { app: 'server' });
    bed.add(
      policy('ml', 'trainer', { app: 'trainer' }, [
        { sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 443 }] },
        { sel: { matchPattern: '*.hf.co' }, ports: [{ protocol: 'TCP', port: 443 }] },
      ]),
      policy('ml', 'server', { app: 'server' }, [{ sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 8443 }] }]),
    );
    sync();
    [a, same, other].forEach(bind);
    expect(a.setId).toBe(same.setId);
    expect(other.setId).not.toBe(a.setId);
    records();
  });

  it('a query and its answer teach the A and AAAA addresses; the pod may then reach them on the allowed port only', () => {
    expect(syn(a, '192.0.2.10', 443)).toBe(0); // unknown yet: default deny
    const s0 = stats();
    const q4 = query(a, NAME);
    expect(pendingQueries(a)).toBe(1);
    answer(a, q4, { qname: NAME, answers: [A(NAME, '192.0.2.10', 30), A(NAME, '192.0.2.11', 30)] });
    const q6 = query(a, NAME, { v6: true, qtype: DNS.TYPE_AAAA });
    answer(a, q6, { qname: NAME, qtype: DNS.TYPE_AAAA, answers: [AAAA(NAME, '2001:db8::10', 300)] });
    expect(delta(s0, DNS_STATS)).toMatchObject({ dns_queries: 2, dns_answers: 2, fqdn_learned: 3, dns_ignored_no_query: 0, dns_ignored_invalid: 0 });
    expect(pendingQueries(a)).toBe(0);
    expect(addrs(a)).toEqual(['192.0.2.10', '192.0.2.11', '2001:db8::10']);
    // The slot names the key the question matched, expiring after TTL + grace.
    const now = process.hrtime.bigint();
    const [l] = learnedOf(bed.dp, a.ep);
    expect(l?.slots).toHaveLength(1);
    expect(l?.slots[0]).toMatchObject({ kind: CONST.WEIR_DNS_KEY_EXACT, hash: nameHash(bed.dp.dnsSecret(), NAME) });
    const left = Number((l?.slots[0]?.expiresNs ?? 0n) - now) / 1e9;
    expect(left).toBeGreaterThan(30);
    expect(left).toBeLessThanOrEqual(35);
    // The packets: port 443 passes, 80 does not.
    expect(syn(a, '192.0.2.10', 443)).toBe(1);
    expect(syn(a, '192.0.2.11', 443)).toBe(1);
    expect(syn(a, '2001:db8::10', 443)).toBe(1);
    expect(syn(a, '192.0.2.10', 80)).toBe(0);
    expect(syn(a, '192.0.2.12', 443)).toBe(0);
    // The ring: one LEARNED record per address, naming the question.
    const recs = records().filter((r) => r.endpointId === a.ep);
    expect(recs.map((r) => [DNS_EVENT_KINDS[r.kind], r.name, r.ttl, r.count])).toEqual([
      ['learned', NAME, 30, 1],
      ['learned', NAME, 30, 1],
      ['learned', NAME, 300, 1],
    ]);
  });

  it('connect() from the pod (the socket hook) reaches a learned address on the allowed port, IPv4, IPv6 and IPv4-mapped', () => {
    expect(
      inPod(a, ['192.0.2.10', '192.0.2.12', '2001:db8::10'], [
        ['tcp', '192.0.2.10', 443],
        ['tcp', '2001:db8::10', 443],
        ['tcp', '::ffff:192.0.2.10', 443],
        ['tcp', '192.0.2.10', 80],
        ['tcp', '192.0.2.12', 443],
      ]),
    ).toEqual(['ok', 'ok', 'ok', 'connect EPERM', 'connect EPERM']);
  });

  it('another pod, of the same set or of another set allowing the name, gets nothing from what this pod learned', () => {
    expect(syn(same, '192.0.2.10', 443)).toBe(0);
    expect(syn(other, '192.0.2.10', 8443)).toBe(0);
    expect(inPod(same, ['192.0.2.10'], [['tcp', '192.0.2.10', 443]])).toEqual(['connect EPERM']);
    // The other pod learns it for itself, on its own policy's port.
    answer(other, query(other, NAME), { qname: NAME, answers: [A(NAME, '192.0.2.10')] });
    expect(syn(other, '192.0.2.10', 8443)).toBe(1);
    expect(syn(other, '192.0.2.10', 443)).toBe(0);
  });

  it('a pod whose set has no fqdn peers: its DNS is not looked at', () => {
    const plain = addPod('ml', { app: 'plain' });
    sync();
    bind(plain);
    const s0 = stats();
    const x = query(plain, NAME);
    answer(plain, x, { qname: NAME, answers: [A(NAME, '192.0.2.10')] });
    expect(delta(s0, DNS_STATS)).toEqual(Object.fromEntries(DNS_STATS.map((n) => [n, 0])));
    expect(addrs(plain)).toEqual([]);
  });

  it('a CNAME chain is followed; the address counts for the name the pod asked', () => {
    const x = query(a, NAME);
    answer(a, x, { qname: NAME, answers: [CNAME(NAME, 'edge.cdn.example.net'), CNAME('edge.cdn.example.net', 'e7.cdn.example.net'), A('e7.cdn.example.net', '198.51.100.7'), A('unrelated.example.net', '198.51.100.8')] });
    expect(addrs(a)).toContain('198.51.100.7');
    expect(addrs(a)).not.toContain('198.51.100.8');
    expect(learnedOf(bed.dp, a.ep).find((l) => l.addr === '198.51.100.7')?.slots[0]?.hash).toBe(nameHash(bed.dp.dnsSecret(), NAME));
    expect(syn(a, '198.51.100.7', 443)).toBe(1);
  });

  it('a wildcard rule: one or more labels below the suffix are learned under the wildcard key, the apex is not', () => {
    const s0 = stats();
    answer(a, query(a, 'cdn-lfs.eu.hf.co'), { qname: 'cdn-lfs.eu.hf.co', answers: [A('cdn-lfs.eu.hf.co', '198.51.100.20')] });
    expect(learnedOf(bed.dp, a.ep).find((l) => l.addr === '198.51.100.20')?.slots[0]).toMatchObject({ kind: CONST.WEIR_DNS_KEY_WILDCARD, hash: nameHash(bed.dp.dnsSecret(), 'hf.co') });
    expect(syn(a, '198.51.100.20', 443)).toBe(1);
    // hf.co itself: no rule allows it (an intent), and its answer teaches nothing.
    answer(a, query(a, 'hf.co'), { qname: 'hf.co', answers: [A('hf.co', '198.51.100.21')] });
    expect(addrs(a)).not.toContain('198.51.100.21');
    expect(delta(s0, DNS_STATS)).toMatchObject({ dns_queries: 1, dns_queries_not_allowed: 1, fqdn_learned: 1, dns_ignored_no_query: 1 });
  });

  it('case does not matter: a mixed-case question (0x20) and an answer in another case', () => {
    const x = query(a, 'API.Models.EXAMPLE.com');
    answer(a, x, { qname: 'aPi.mOdElS.eXaMpLe.CoM', answers: [A(ptr(12), '198.51.100.30'), A('API.MODELS.EXAMPLE.COM', '198.51.100.31')] });
    expect(addrs(a)).toEqual(expect.arrayContaining(['198.51.100.30', '198.51.100.31']));
  });

  it('64 answers: all 64 addresses are learned', () => {
    const s0 = stats();
    const answers = Array.from({ length: 64 }, (_, i) => A(ptr(12), `203.0.113.${i + 1}`));
    answer(a, query(a, NAME), { qname: NAME, answers });
    expect(delta(s0, DNS_STATS)).toMatchObject({ dns_answers: 1, fqdn_learned: 64 });
    const got = addrs(a).filter((x) => x.startsWith('203.0.113.'));
    expect(got).toHaveLength(64);
    expect(syn(a, '203.0.113.64', 443)).toBe(1);
    expect(syn(a, '203.0.113.65', 443)).toBe(0);
  });

  it('a name no rule allows: no query entry, one intent record per pod and name per interval (counted each time, the others as aggregated), and its answer teaches nothing', () => {
    records();
    const s0 = stats();
    const x = query(a, 'exfil.example.org');
    query(a, 'exfil.example.org');
    query(a, 'EXFIL.example.org', { v6: true });
    expect(pendingQueries(a)).toBe(0);
    answer(a, x, { qname: 'exfil.example.org', answers: [A('exfil.example.org', '198.51.100.66')] });
    expect(addrs(a)).not.toContain('198.51.100.66');
    expect(delta(s0, DNS_STATS)).toMatchObject({ dns_queries: 0, dns_queries_not_allowed: 3, dns_ignored_no_query: 1, fqdn_learned: 0 });
    // Like a violation's: the second and third queries are folded into the next record.
    expect(delta(s0, ['events_aggregated', 'events_lost'])).toEqual({ events_aggregated: 2, events_lost: 0 });
    const recs = records();
    expect(recs).toHaveLength(1);
    expect(recs[0]).toMatchObject({ kind: CONST.WEIR_DNS_EV_INTENT, endpointId: a.ep, setId: a.setId, name: 'exfil.example.org', count: 1, qtype: DNS.TYPE_A, family: 2 });
    expect(Buffer.from(recs[0]?.addr ?? []).equals(Buffer.from(addressBytes(RESOLVER).bytes))).toBe(true);
  });

  it('forged or stray answers teach nothing', () => {
    const s0 = stats();
    const ans = (addr: string) => ({ qname: NAME, answers: [A(NAME, addr)] });
    // Over loopback (ifindex 1): not even looked at.
    answer(a, query(a, NAME), ans('198.51.100.101'), { ifindex: 1 });
    // From 127.0.0.53 even if it were a trusted resolver with the query
    // pending (written here: egress never tracks a query to loopback).
    fq.addResolver('127.0.0.53');
    const pend = (resolver: string, id: number): Buffer => {
      const k = encodeDnsQueryKey({ endpointId: a.ep, family: 2, podPort: 41999, dnsId: id, resolverPort: 53, resolver: addressBytes(resolver).bytes });
      const matched = { setId: a.setId, kind: CONST.WEIR_DNS_KEY_EXACT, hash: nameHash(bed.dp.dnsSecret(), NAME) };
      bed.dp.map('weir_dns_queries').update(k, encodeDnsQueryValue({ matched, qhash: matched.hash, expiresNs: process.hrtime.bigint() + 5_000_000_000n }));
      return k;
    };
    const lo = pend('127.0.0.53', 0x5151);
    answer(a, { id: 0x5151, port: 41999, resolver: '127.0.0.53' }, ans('198.51.100.102'));
    expect(bed.dp.map('weir_dns_queries').lookup(lo)).not.toBeNull(); // not even looked up
    bed.dp.map('weir_dns_queries').delete(lo);
    // (The same written entry from the real resolver does teach: the check above is what refused.)
    pend(RESOLVER, 0x5152);
    answer(a, { id: 0x5152, port: 41999, resolver: RESOLVER }, ans('198.51.100.100'));
    expect(addrs(a)).toContain('198.51.100.100');
    // From an address that is not a trusted resolver, with the right id and port.
    answer(a, query(a, NAME), ans('198.51.100.103'), { src: '10.96.0.99' });
    // From the resolver, but another source port.
    answer(a, query(a, NAME), ans('198.51.100.104'), { sport: 5353 });
    // No query at all.
    answer(a, { id: 0x7777, port: 41234, resolver: RESOLVER }, ans('198.51.100.105'));
    // The wrong id.
    const q = query(a, NAME);
    answer(a, { ...q, id: (q.id + 1) & 0xffff }, ans('198.51.100.106'));
    // To another port of the pod.
    answer(a, q, ans('198.51.100.107'), { dport: q.port + 1 });
    // The pod's query, answered to another pod.
    answer(same, q, ans('198.51.100.108'));
    expect(addrs(a).filter((x) => x.startsWith('198.51.100.1') && x !== '198.51.100.100')).toEqual([]);
    expect(addrs(same)).toEqual([]);
    expect(delta(s0, DNS_STATS)).toMatchObject({ fqdn_learned: 1, dns_ignored_no_query: 4 });
    // The pending query is still answerable by the real answer.
    answer(a, q, ans('198.51.100.109'));
    expect(addrs(a)).toContain('198.51.100.109');
    // A second answer to the same query.
    answer(a, q, ans('198.51.100.110'));
    expect(addrs(a)).not.toContain('198.51.100.110');
    // After the query expired (its deadline moved into the past).
    const late = query(a, NAME);
    const qk = encodeDnsQueryKey({ endpointId: a.ep, family: 2, podPort: late.port, dnsId: late.id, resolverPort: 53, resolver: addressBytes(RESOLVER).bytes });
    const qm = bed.dp.map('weir_dns_queries');
    const qv = decodeDnsQueryValue(qm.lookup(qk) as Buffer);
    qm.update(qk, encodeDnsQueryValue({ ...qv, expiresNs: process.hrtime.bigint() - 1n }));
    answer(a, late, ans('198.51.100.111'));
    expect(addrs(a)).not.toContain('198.51.100.111');
    expect(qm.lookup(qk)).toBeNull();
    // Not the question asked (same id, port and resolver).
    answer(a, query(a, NAME), { qname: 'evil.example.com', answers: [A('evil.example.com', '198.51.100.112')] });
    // An error code, a truncated answer.
    answer(a, query(a, NAME), { qname: NAME, rcode: 3, answers: [A(NAME, '198.51.100.113')] });
    answer(a, query(a, NAME), { qname: NAME, tc: true, answers: [A(NAME, '198.51.100.114')] });
    expect(addrs(a).filter((x) => /^198\.51\.100\.11[1-4]$/.test(x))).toEqual([]);
    expect(delta(s0, DNS_STATS)).toMatchObject({ fqdn_learned: 2, dns_answers: 2, dns_ignored_no_query: 6, dns_ignored_invalid: 1, dns_ignored_rcode: 2 });
  });

  it('parser abuse through the full ingress path (pointer loops, truncation at every byte, label abuse, 0 answers) never learns more than the complete records', () => {
    const good = buildMessage({ qname: NAME, answers: [CNAME(ptr(12), 'edge.cdn.example.net'), A('edge.cdn.example.net', '192.0.2.200'), AAAA('edge.cdn.example.net', '2001:db8::200')] });
    const full = new Set(referenceParse(good, true).addrs.map((x) => x.addr));
    expect(full.size).toBe(2);
    const known = new Set(['c00002c8', '20010db8000000000000000000000200']);
    const hex = (a: string): string => Buffer.from(addressBytes(a).bytes).toString('hex');
    const before = new Set(addrs(a));
    for (let cut = 12; cut <= good.length; cut++) {
      const x = query(a, NAME);
      const msg = Buffer.from(good.subarray(0, cut));
      msg.writeUInt16BE(x.id, 0);
      answerRaw(a, x, msg);
      for (const l of addrs(a)) if (!before.has(l)) expect(known.has(hex(l)), `cut at ${cut} learned ${l}`).toBe(true);
    }
    const qlen = 12 + NAME.length + 2 + 4;
    const abuse: Buffer[] = [
      // A pointer to itself, and a ping-pong of pointers.
      buildMessage({ qname: NAME, answers: [Buffer.concat([ptr(qlen), Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 201])])] }),
      buildMessage({ qname: NAME, answers: [Buffer.concat([Buffer.from([1, 0x78]), ptr(qlen), Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 202])])] }),
      // A label type 0x40, a label past the end, a name over 255 bytes.
      buildMessage({ qname: NAME, answers: [Buffer.concat([Buffer.from([0x41]), Buffer.alloc(1), Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 203])])] }),
      buildMessage({ qname: NAME, answers: [Buffer.concat([Buffer.from([63, 0x61]), Buffer.from([0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 204])])] }),
      // ancount says 64, nothing follows; then 0 answers.
      buildMessage({ qname: NAME, ancount: 64 }),
      buildMessage({ qname: NAME }),
    ];
    const s0 = stats();
    for (const m of abuse) {
      const x = query(a, NAME);
      m.writeUInt16BE(x.id, 0);
      answerRaw(a, x, m);
    }
    expect(addrs(a).filter((x) => /^192\.0\.2\.20[1-4]$/.test(x))).toEqual([]);
    expect(delta(s0, DNS_STATS)).toMatchObject({ fqdn_learned: 0, dns_answers: 1, dns_ignored_invalid: 5 });
  });
});

describe('expiry', () => {
  let p: FqdnPod;
  const addr = '192.0.2.50';

  beforeAll(() => {
    p = addPod('exp', { app: 'dl' });
    bed.add(policy('exp', 'dl', { app: 'dl' }, [{ sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 443 }, { protocol: 'UDP', port: 443 }] }]));
    sync();
    bind(p);
    answer(p, query(p, NAME), { qname: NAME, answers: [A(NAME, addr, 0)] });
  });

  function expireAll(): void {
    const m = bed.dp.map('weir_fqdn_learned');
    const k = encodeFqdnLearnedKey({ endpointId: p.ep, family: 2, addr: addressBytes(addr).bytes });
    const slots = decodeFqdnLearnedValue(m.lookup(k) as Buffer).map((s) => (s.kind ? { ...s, expiresNs: process.hrtime.bigint() - 1n } : s));
    m.update(k, encodeFqdnLearnedValue(slots));
  }

  it('a TTL of 0 still leaves the minimum (5 s) plus grace for the connection that asked', () => {
    const [l] = learnedOf(bed.dp, p.ep);
    const left = Number((l?.slots[0]?.expiresNs ?? 0n) - process.hrtime.bigint()) / 1e9;
    expect(left).toBeGreaterThan(8);
    expect(left).toBeLessThanOrEqual(10);
    expect(syn(p, addr, 443)).toBe(1);
  });

  it('after expiry: a new connect and a SYN are refused; packets of an established TCP flow and UDP datagrams still pass while the slot is present', () => {
    expireAll();
    expect(inPod(p, [addr], [['tcp', addr, 443]])).toEqual(['connect EPERM']);
    expect(syn(p, addr, 443)).toBe(0);
    expect(syn(p, addr, 443, TCP_ACK)).toBe(1);
    expect(egress(p, packet({ src: p.ip, dst: addr, proto: IPPROTO.UDP, sport: 45001, dport: 443 }))).toBe(1);
    // ICMP has no socket hook: strict (and no rule allows it anyway).
    expect(egress(p, packet({ src: p.ip, dst: addr, proto: IPPROTO.ICMP }))).toBe(0);
  });

  it('a new answer refreshes the slot: new connections pass again', () => {
    answer(p, query(p, NAME), { qname: NAME, answers: [A(NAME, addr, 60)] });
    expect(learnedOf(bed.dp, p.ep)[0]?.slots).toHaveLength(1);
    expect(syn(p, addr, 443)).toBe(1);
  });

  it('once the entry is gone (the agent swept it), the established flow is cut too', () => {
    bed.dp.map('weir_fqdn_learned').delete(encodeFqdnLearnedKey({ endpointId: p.ep, family: 2, addr: addressBytes(addr).bytes }));
    expect(syn(p, addr, 443, TCP_ACK)).toBe(0);
  });

  it('removing the fqdn key revokes at once what it allowed, established flows included', () => {
    answer(p, query(p, NAME), { qname: NAME, answers: [A(NAME, addr, 60)] });
    expect(syn(p, addr, 443, TCP_ACK)).toBe(1);
    const state = bed.engine.compute(bed.store);
    const set = [...state.sets.values()].find((s) => bed.dp.writer.setIdOf(s.key) === p.setId);
    const key = set?.fqdn?.[0];
    if (!key) throw new Error('no fqdn key');
    const keys = bed.dp.map('weir_fqdn_keys');
    const k = fq.keyOf(p.setId, key);
    const v = keys.lookup(k) as Buffer;
    keys.delete(k);
    expect(syn(p, addr, 443, TCP_ACK)).toBe(0);
    expect(syn(p, addr, 443)).toBe(0);
    keys.update(k, v);
    expect(syn(p, addr, 443)).toBe(1);
  });
});

describe('no room: four live names on an address, or weir_fqdn_learned full, refuse and never fall open', () => {
  let p: FqdnPod;
  const addr = '192.0.2.60';
  const names = ['n1.example.com', 'n2.example.com', 'n3.example.com', 'n4.example.com', 'n5.example.com'];

  beforeAll(() => {
    p = addPod('full', { app: 'many' });
    bed.add(policy('full', 'many', { app: 'many' }, names.map((n, i) => ({ sel: { matchName: n }, ports: [{ protocol: 'TCP', port: 9001 + i }] }))));
    sync();
    bind(p);
    records();
  });

  it('a fifth name on one address is refused, counted and reported; its port stays closed; the four others work', () => {
    const s0 = stats();
    for (const n of names) answer(p, query(p, n), { qname: n, answers: [A(n, addr)] });
    expect(delta(s0, DNS_STATS)).toMatchObject({ dns_answers: 5, fqdn_learned: 4, fqdn_refused: 1 });
    expect(delta(s0, ['events_aggregated'])).toEqual({ events_aggregated: 0 });
    expect(learnedOf(bed.dp, p.ep)[0]?.slots).toHaveLength(4);
    for (let i = 0; i < 4; i++) expect(syn(p, addr, 9001 + i), names[i]).toBe(1);
    expect(syn(p, addr, 9005)).toBe(0);
    const refused = records().filter((r) => r.kind === CONST.WEIR_DNS_EV_REFUSED);
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ endpointId: p.ep, reason: CONST.WEIR_DNS_REFUSED_SLOTS, name: 'n5.example.com', family: 2, count: 1 });
    // The same refusal again within the interval: counted, folded into the next record.
    answer(p, query(p, names[4] as string), { qname: names[4] as string, answers: [A(names[4] as string, addr)] });
    expect(delta(s0, DNS_STATS)).toMatchObject({ fqdn_refused: 2 });
    expect(delta(s0, ['events_aggregated', 'events_lost'])).toEqual({ events_aggregated: 1, events_lost: 0 });
    expect(records()).toEqual([]);
  });

  it('an expired slot makes room for the fifth name', () => {
    const m = bed.dp.map('weir_fqdn_learned');
    const k = encodeFqdnLearnedKey({ endpointId: p.ep, family: 2, addr: addressBytes(addr).bytes });
    const slots = decodeFqdnLearnedValue(m.lookup(k) as Buffer);
    slots[1] = { ...(slots[1] as (typeof slots)[number]), expiresNs: process.hrtime.bigint() - 1n };
    m.update(k, encodeFqdnLearnedValue(slots));
    answer(p, query(p, names[4] as string), { qname: names[4] as string, answers: [A(names[4] as string, addr)] });
    expect(syn(p, addr, 9005)).toBe(1);
    expect(syn(p, addr, 9002)).toBe(0); // n2's slot was the one reused
  });

  it('weir_fqdn_learned full: the new address is refused (reason map full), reported, and stays closed', async () => {
    const small = await KernelBed.create({ eventIntervalMs: 60_000, capacities: { fqdnLearned: 4 } });
    const got: RawDnsEvent[] = [];
    try {
      small.dp.startEvents(() => {}, () => {}, (r) => got.push(...r));
      const w = new FqdnWriter(small.dp);
      w.addResolver(RESOLVER);
      const pod = small.addPod('tiny', 'p', { app: 'tiny' }, ['10.244.10.1']);
      small.add(policy('tiny', 'tiny', { app: 'tiny' }, [{ sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 443 }] }]));
      expect(small.sync().failedSets).toEqual([]);
      const run = (prog: 'weir_egress' | 'weir_ingress', frame: Buffer): number => inCgroup(pod.container(), () => small.dp.testRun(prog, { data: frame, ctx }).retval);
      const q = buildMessage({ response: false, id: 9, qname: NAME });
      expect(run('weir_egress', udpFrame({ src: '10.244.10.1', dst: RESOLVER, sport: 40999, dport: 53, payload: q }))).toBe(1);
      const ans = buildMessage({ id: 9, qname: NAME, answers: [1, 2, 3, 4, 5, 6].map((i) => A(ptr(12), `198.18.0.${i}`)) });
      expect(run('weir_ingress', udpFrame({ src: RESOLVER, dst: '10.244.10.1', sport: 53, dport: 40999, payload: ans }))).toBe(1);
      const st = small.dp.stats();
      // Two addresses refused: two records, nothing aggregated.
      expect([st.fqdn_learned, st.fqdn_refused, st.events_aggregated]).toEqual([4n, 2n, 0n]);
      const synTo = (d: string): number => run('weir_egress', packet({ src: '10.244.10.1', dst: d, proto: IPPROTO.TCP, sport: 45000, dport: 443, tcpFlags: TCP_SYN }));
      expect(synTo('198.18.0.4')).toBe(1);
      expect(synTo('198.18.0.5')).toBe(0);
      expect(synTo('198.18.0.6')).toBe(0);
      small.dp.drainEvents();
      const refused = got.filter((r) => r.kind === CONST.WEIR_DNS_EV_REFUSED);
      expect(refused.map((r) => [r.reason, r.name])).toEqual([
        [CONST.WEIR_DNS_REFUSED_MAP_FULL, NAME],
        [CONST.WEIR_DNS_REFUSED_MAP_FULL, NAME],
      ]);
    } finally {
      small.close();
    }
  });
});

describe('real sockets: the answer is learned before the pod reads it', () => {
  it('query sent, answer injected on the wire, connect() right after recvfrom() is allowed', () => {
    const p = addPod('rs', { app: 'rs' });
    bed.add(policy('rs', 'rs', { app: 'rs' }, [{ sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 443 }] }]));
    sync();
    bind(p);
    const id = 0x4242;
    const q = buildMessage({ response: false, id, qname: NAME });
    const ans = buildMessage({ id, qname: NAME, answers: [A(NAME, '192.0.2.77', 1)] });
    const ans6 = buildMessage({ id: id + 1, qname: NAME, qtype: DNS.TYPE_AAAA, answers: [AAAA(NAME, '2001:db8::77', 1)] });
    const q6 = buildMessage({ response: false, id: id + 1, qname: NAME, qtype: DNS.TYPE_AAAA });
    expect(
      inPod(p, ['192.0.2.77', '2001:db8::77'], [
        ['tcp', '192.0.2.77', 443],
        ['resolve_connect', p.ip, 41000, RESOLVER, q.toString('hex'), ans.toString('hex'), '192.0.2.77', 443],
        ['resolve_connect', p.ip6, 41001, RESOLVER6, q6.toString('hex'), ans6.toString('hex'), '2001:db8::77', 443],
      ]),
    ).toEqual(['connect EPERM', 'ok', 'ok']);
  });
});

describe('an endpoint id handed to a new pod carries nothing learned by the old one', () => {
  it('the learned entries and pending queries of a removed pod are deleted before its id is reused', () => {
    const old = addPod('reuse', { app: 'r' });
    bed.add(policy('reuse', 'r', { app: 'r' }, [{ sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 443 }] }]));
    sync();
    bind(old);
    answer(old, query(old, NAME), { qname: NAME, answers: [A(NAME, '192.0.2.90')] });
    query(old, NAME);
    expect(addrs(old)).toEqual(['192.0.2.90']);
    expect(pendingQueries(old)).toBe(1);
    bed.store.delete('Pod', 'reuse', old.pod.name);
    sync();
    // Pods come and go until one gets the old endpoint id back.
    let reused: FqdnPod | undefined;
    for (let i = 0; i < 64 && !reused; i++) {
      const n = addPod('reuse', { app: 'r' });
      sync();
      bind(n);
      if (n.ep === old.ep) reused = n;
    }
    expect(reused, 'the endpoint id was never reused').toBeDefined();
    expect(learnedOf(bed.dp, old.ep)).toEqual([]);
    expect(pendingQueries(old)).toBe(0);
    if (reused) expect(syn(reused, '192.0.2.90', 443)).toBe(0);
  });
});

describe('without DNS learning (fqdnLearning off, or a kernel without bpf_loop)', () => {
  it('loads the plain objects: queries are not tracked, answers teach nothing, and what is in weir_fqdn_learned still counts for the verdict', async () => {
    const plain = await KernelBed.create({ eventIntervalMs: 60_000, fqdnLearning: 'off' });
    try {
      expect(plain.dp.fqdnLearning).toBe(false);
      expect(plain.dp.fqdnLearningUnavailable).toBe('off');
      expect(plain.dp.objectFiles()).toEqual({ 'egress.bpf.o': 'egress.bpf.o', 'ingress.bpf.o': 'ingress.bpf.o', 'sock_addr.bpf.o': 'sock_addr.bpf.o' });
      const w = new FqdnWriter(plain.dp);
      w.addResolver(RESOLVER);
      const pod = plain.addPod('plain', 'p', { app: 'plain' }, ['10.244.11.1']);
      plain.add(policy('plain', 'plain', { app: 'plain' }, [{ sel: { matchName: NAME }, ports: [{ protocol: 'TCP', port: 443 }] }]));
      expect(plain.sync().failedSets).toEqual([]);
      const run = (prog: 'weir_egress' | 'weir_ingress', frame: Buffer): number => inCgroup(pod.container(), () => plain.dp.testRun(prog, { data: frame, ctx }).retval);
      const synTo = (d: string): number => run('weir_egress', packet({ src: '10.244.11.1', dst: d, proto: IPPROTO.TCP, sport: 45000, dport: 443, tcpFlags: TCP_SYN }));
      expect(run('weir_egress', udpFrame({ src: '10.244.11.1', dst: RESOLVER, sport: 40999, dport: 53, payload: buildMessage({ response: false, id: 9, qname: NAME }) }))).toBe(1);
      expect(plain.dp.hashMapEntries('weir_dns_queries')).toBe(0);
      expect(run('weir_ingress', udpFrame({ src: RESOLVER, dst: '10.244.11.1', sport: 53, dport: 40999, payload: buildMessage({ id: 9, qname: NAME, answers: [A(NAME, '192.0.2.95')] }) }))).toBe(1);
      expect(plain.dp.hashMapEntries('weir_fqdn_learned')).toBe(0);
      expect(synTo('192.0.2.95')).toBe(0);
      // What another variant learned before a restart still counts.
      const ep = plain.endpointOf(pod);
      const hash = nameHash(plain.dp.dnsSecret(), NAME);
      plain.dp
        .map('weir_fqdn_learned')
        .update(
          encodeFqdnLearnedKey({ endpointId: ep, family: 2, addr: addressBytes('192.0.2.95').bytes }),
          encodeFqdnLearnedValue([{ kind: CONST.WEIR_DNS_KEY_EXACT, hash, expiresNs: process.hrtime.bigint() + 60_000_000_000n, lastUseNs: 0n }]),
        );
      expect(synTo('192.0.2.95')).toBe(1);
    } finally {
      plain.close();
    }
  });
});
