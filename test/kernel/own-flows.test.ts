// Kernel tests with real sockets: weir's programs attached to the test bed's
// pods cgroup, and a child process (python3) in a pod's container cgroup and
// in a throwaway network namespace of its own (unshare --net) that connects,
// sends and receives. Covers what BPF_PROG_TEST_RUN cannot reach: the
// connect/sendmsg hooks (test_run does not support sock_addr programs on
// this kernel) and the ingress program with a real receiving socket.
//
//  - A pod's traffic to its own address passes like loopback (Kubernetes
//    never isolates a pod from itself); traffic to another pod's address is
//    still judged.
//  - A UDP flow the pod opened (sendto, or a connected socket) is not
//    recorded as an inbound flow when the remote answers, so it does not
//    survive the removal of its allowance as a "reply". A flow a remote
//    opened still is, and the pod's replies to it still pass.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { inPodNetns, netnsSetup, type Step } from '../helpers/netns-child.js';
import { IPPROTO, TCP_ACK, TCP_SYN, packet, skbContext, type PacketSpec } from '../helpers/packets.js';
import { cgroupIdOf } from '../../src/datapath/cgroups.js';
import { CONST, decodeCtKey, decodePodValue, encodePodIpKey, encodePodValue, u64Key, type RawEvent } from '../../src/datapath/abi.js';
import type { ApplyResult, PodBinding } from '../../src/datapath/state-writer.js';
import { Datapath } from '../../src/datapath/datapath.js';
import { addressBytes, bytesToAddress } from '../../src/policy/prefix.js';
import { REASON_BY_CODE, VERDICT_CODES } from '../../src/policy/verdict.js';
import { pino } from 'pino';

let bed: KernelBed;
let ctx: Buffer;
const pods = new Map<string, TestPod>(); // by uid
const events: RawEvent[] = [];

/** Compiles the model and writes it, with each pod's own addresses, as the agent does. */
function sync(): ApplyResult {
  const state = bed.engine.compute(bed.store);
  const bindings: PodBinding[] = [];
  for (const p of state.pods) {
    const tp = pods.get(p.uid);
    if (!tp) continue;
    bindings.push({
      uid: p.uid,
      namespace: p.namespace,
      name: p.name,
      cgroupId: cgroupIdOf(tp.dir),
      setKey: p.setKey,
      ips: (p.pod.status?.podIPs ?? []).map((x) => x.ip),
    });
  }
  const res = bed.dp.writer.apply(state, bindings);
  expect(res.failedSets).toEqual([]);
  return res;
}

function addPod(namespace: string, name: string, labels: Record<string, string>, ips: string[]): TestPod {
  const p = bed.addPod(namespace, name, labels, ips);
  pods.set(p.uid, p);
  return p;
}

function networkPolicy(namespace: string, name: string, podLabels: Record<string, string>, egress: unknown[]): unknown {
  return {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name, namespace },
    spec: { podSelector: { matchLabels: podLabels }, policyTypes: ['Egress'], egress },
  };
}

// ---- the child: python3 in the pod's cgroup, in a network namespace of its own ----

const CHILD_PY = String.raw`
def udp_echo(host, port):
    # A UDP echo server on the wildcard address and a client, both in this pod.
    srv = socket.socket(fam(host), socket.SOCK_DGRAM)
    cli = socket.socket(fam(host), socket.SOCK_DGRAM)
    try:
        srv.settimeout(1); cli.settimeout(1)
        srv.bind(('::' if fam(host) == socket.AF_INET6 else '0.0.0.0', port))
        try:
            cli.sendto(b'ping', (host, port))
        except OSError as e:
            return 'send ' + name(e)
        try:
            data, addr = srv.recvfrom(64)
        except socket.timeout:
            return 'request lost'
        try:
            srv.sendto(data, addr)
        except OSError as e:
            return 'reply ' + name(e)
        try:
            cli.recvfrom(64)
        except socket.timeout:
            return 'reply lost'
        return 'ok'
    finally:
        srv.close(); cli.close()

def udp_flow(own, lport, host, port, connect=False, answer=True):
    # The pod sends from lport to host:port (sendto, or connect()+send()) and the remote answers.
    s = socket.socket(fam(host), socket.SOCK_DGRAM)
    try:
        s.settimeout(1)
        s.bind(('::' if fam(host) == socket.AF_INET6 else '0.0.0.0', lport))
        try:
            if connect:
                s.connect((host, port)); s.send(b'hello')
            else:
                s.sendto(b'hello', (host, port))
        except OSError as e:
            return 'send ' + name(e)
        if not answer:
            return 'ok'
        inject('v1', host, port, own, lport)
        try:
            s.recvfrom(64)
        except socket.timeout:
            return 'answer lost'
        return 'ok'
    finally:
        s.close()

def udp_serve(own, lport, host, port):
    # A remote opens the flow: its datagram arrives first, the pod answers it.
    s = socket.socket(fam(host), socket.SOCK_DGRAM)
    try:
        s.settimeout(1)
        s.bind(('::' if fam(host) == socket.AF_INET6 else '0.0.0.0', lport))
        inject('v1', host, port, own, lport)
        try:
            data, addr = s.recvfrom(64)
        except socket.timeout:
            return 'request lost'
        try:
            s.sendto(data, addr)
        except OSError as e:
            return 'reply ' + name(e)
        return 'ok'
    finally:
        s.close()
`;

/** Runs the steps in the pod's container cgroup, in a fresh network namespace; returns each step's outcome. */
const inPod = (pod: TestPod, setup: string, steps: Step[]): string[] => inPodNetns(pod.container(), setup, steps, CHILD_PY);

function testRun(pod: TestPod, program: 'weir_egress' | 'weir_ingress', spec: PacketSpec): number {
  return inCgroup(pod.container(), () => bed.dp.testRun(program, { data: packet(spec), ctx }).retval);
}

function sockets(pod: TestPod, verdict: 'allow' | 'drop' | 'reply'): bigint {
  return bed.dp.counters(bed.endpointOf(pod)).sockets[verdict]?.packets ?? 0n;
}

function drained(): RawEvent[] {
  bed.dp.drainEvents();
  return events.splice(0);
}

/** A pod's inbound flows (weir_ct), as "local->remote:port/proto". */
function flows(map: 'weir_ct', pod: TestPod): string[] {
  const ep = bed.endpointOf(pod);
  return bed.dp
    .map(map)
    .keys()
    .map(decodeCtKey)
    .filter((k) => k.endpointId === ep)
    .map((k) => `${k.localPort}->${bytesToAddress(k.family === 10 ? 6 : 4, k.remote)}:${k.remotePort}/${k.proto}`)
    .sort();
}

beforeAll(async () => {
  bed = await KernelBed.create({ eventIntervalMs: 60_000 });
  ctx = skbContext(nonLoopbackIfindex());
  bed.dp.attach(bed.podsRoot, cgroupIdOf(bed.podsRoot));
  bed.dp.startEvents(
    (evs) => events.push(...evs),
    () => {},
  );
});

afterAll(() => {
  bed?.close();
});

// ---- a pod reaching itself ------------------------------------------------------------

describe("a pod's traffic to its own address (Kubernetes never isolates a pod from itself)", () => {
  const OWN = '10.244.1.10';
  const OWN6 = 'fd00:10:244:1::10';
  const OTHER = '10.244.1.20';
  let self: TestPod;
  let other: TestPod;

  beforeAll(() => {
    self = addPod('x', 'a', { pod: 'a' }, [OWN, OWN6]);
    other = addPod('x', 'b', { pod: 'b' }, [OTHER]);
    // Upstream's 'allow-only-udp-egress-on-port-81'.
    bed.add(networkPolicy('x', 'allow-only-udp-egress-on-port-81', { pod: 'a' }, [{ ports: [{ protocol: 'UDP', port: 81 }] }]));
    sync();
    drained();
  });

  /** x/a's netns: its own addresses, and x/b's address too (local, so only weir can refuse it). */
  const setup = (): string => netnsSetup([`${OWN}/24`, `${OTHER}/32`], [`${OWN6}/64`]);

  it("a UDP echo to the pod's own address on the allowed port: the server's reply to the client is not judged", () => {
    // Before the fix the reply (x/a:81 -> x/a:<ephemeral>) was refused by sendmsg4.
    expect(inPod(self, setup(), [['udp_echo', OWN, 81], ['udp_echo', OWN6, 81]])).toEqual(['ok', 'ok']);
  });

  it('the pod reaches itself on ports and protocols its policy does not allow, TCP and UDP, IPv4, IPv6 and IPv4-mapped', () => {
    const drops = sockets(self, 'drop');
    expect(
      inPod(self, setup(), [
        ['tcp', OWN, 80],
        ['udp_echo', OWN, 80],
        ['tcp', OWN6, 80],
        ['udp_echo', OWN6, 80],
        ['tcp', `::ffff:${OWN}`, 80],
      ]),
    ).toEqual(['ok', 'ok', 'ok', 'ok', 'ok']);
    // Like loopback: neither counted as a drop nor reported.
    expect(sockets(self, 'drop')).toBe(drops);
    expect(drained().filter((e) => e.verdict !== VERDICT_CODES.allow)).toEqual([]);
  });

  it("another pod's address is judged as always (even when it is local to the sender's namespace)", () => {
    const drops = sockets(self, 'drop');
    // x/a -> x/b:81/UDP is allowed and arrives; the answer (sent by x/a's own
    // server socket, which received it on x/b's address) goes to x/b's
    // address, not x/a's: it is judged, and refused.
    expect(inPod(self, setup(), [['tcp', OTHER, 80], ['udp_echo', OTHER, 80], ['udp_echo', OTHER, 81]])).toEqual([
      'connect EPERM',
      'send EPERM',
      'reply EPERM',
    ]);
    expect(sockets(self, 'drop')).toBe(drops + 3n);
    const evs = drained().filter((e) => e.verdict === VERDICT_CODES.drop);
    expect(evs.map((e) => bytesToAddress(4, e.dst))).toEqual([OTHER, OTHER, OTHER]);
  });

  it('weir_pod_ips holds each governed pod address with its endpoint; an address two pods claim is written for neither; a restarted agent adopts them; a removed pod takes its addresses along', async () => {
    const addrs = (): string[] =>
      bed.dp.writer
        .podAddresses()
        .map((a) => `${bytesToAddress(a.family === 10 ? 6 : 4, a.addr)}=${a.endpointId}`)
        .sort();
    const ep = (p: TestPod): number => bed.endpointOf(p);
    expect(addrs()).toEqual([`${OTHER}=${ep(other)}`, `${OWN}=${ep(self)}`, `${OWN6}=${ep(self)}`].sort());
    expect(bed.dp.hashMapEntries('weir_pod_ips')).toBe(3);
    // A second pod claiming x/b's address (a stale status during a handover).
    const twin = addPod('x', 'b-twin', { pod: 'b-twin' }, [OTHER, 'fd00:10:244:1::21']);
    const r1 = sync();
    expect(addrs()).toEqual([`fd00:10:244:1::21=${ep(twin)}`, `${OWN}=${ep(self)}`, `${OWN6}=${ep(self)}`].sort());
    expect(r1.addressesRemoved).toBe(1);
    bed.store.delete('Pod', 'x', 'b-twin');
    pods.delete(twin.uid);
    sync();
    expect(addrs()).toEqual([`${OTHER}=${ep(other)}`, `${OWN}=${ep(self)}`, `${OWN6}=${ep(self)}`].sort());
    // A restarted agent adopts the pinned map as it is.
    const second = await Datapath.open({ bpffs: '/sys/fs/bpf', pinDir: bed.pinDir, podLevel: 0, logger: pino({ level: 'silent' }) });
    try {
      expect(second.writer.podAddresses().map((a) => a.endpointId).sort()).toEqual([ep(other), ep(self), ep(self)].sort());
    } finally {
      second.close();
    }
    const otherEp = ep(other);
    bed.store.delete('Pod', 'x', 'b');
    pods.delete(other.uid);
    expect(sync().addressesRemoved).toBe(1);
    expect(addrs()).toEqual([`${OWN}=${ep(self)}`, `${OWN6}=${ep(self)}`].sort());
    const key = Buffer.concat([Buffer.from([2, 0, 0, 0]), Buffer.from(addressBytes(OTHER).bytes), Buffer.alloc(12)]);
    expect(bed.dp.map('weir_pod_ips').lookup(key)).toBeNull();
    expect(otherEp).toBeGreaterThanOrEqual(0);
  });
});

// ---- UDP flows the pod opened ------------------------------------------------------------

describe('a UDP flow the pod opened is not recorded as an inbound flow when the remote answers', () => {
  const OWN = '10.244.2.30';
  const OWN6 = 'fd00:10:244:2::30';
  let client: TestPod;
  const setup = (): string => netnsSetup([`${OWN}/24`], [`${OWN6}/64`]);
  const udp = (src: string, sport: number, dst: string, dport: number): PacketSpec => ({ src, dst, proto: IPPROTO.UDP, sport, dport });

  beforeAll(() => {
    client = addPod('y', 'client', { app: 'client' }, [OWN, OWN6]);
    sync(); // no policy selects it yet: everything is allowed
    drained();
  });

  it('before any policy: sendto and connected flows get their answers; a remote-opened flow is answered', () => {
    expect(
      inPod(client, setup(), [
        ['udp_flow', OWN, 31000, '203.0.113.50', 80], // sendto (sendmsg4)
        ['udp_flow', OWN, 31002, '203.0.113.60', 80, true], // connect()+send()
        ['udp_flow', OWN6, 31004, '2001:db8::60', 80, true], // connected, IPv6
        ['udp_serve', OWN, 5300, '203.0.113.61', 5353], // the remote opens the flow
      ]),
    ).toEqual(['ok', 'ok', 'ok', 'ok']);
  });

  it("the answers created no inbound flow; the remote's own flow did", () => {
    expect(flows('weir_ct', client)).toEqual(['5300->203.0.113.61:5353/17']);
  });

  it('a policy that denies all egress cuts the flows the pod opened (same source port), the marker letting nothing through', () => {
    bed.add(networkPolicy('y', 'deny-egress-client', { app: 'client' }, []));
    sync();
    drained();
    expect(testRun(client, 'weir_egress', udp(OWN, 31000, '203.0.113.50', 80))).toBe(0);
    expect(testRun(client, 'weir_egress', udp(OWN, 31002, '203.0.113.60', 80))).toBe(0);
    expect(testRun(client, 'weir_egress', udp(OWN6, 31004, '2001:db8::60', 80))).toBe(0);
    // And at the socket: the same sendto from the same port is refused.
    expect(inPod(client, setup(), [['udp_flow', OWN, 31000, '203.0.113.50', 80, false, false]])).toEqual(['send EPERM']);
  });

  it('the flow the remote opened still passes as a reply (packet and socket), and is counted as one', () => {
    const replies = sockets(client, 'reply');
    expect(testRun(client, 'weir_egress', udp(OWN, 5300, '203.0.113.61', 5353))).toBe(1);
    expect(inPod(client, setup(), [['udp_flow', OWN, 5300, '203.0.113.61', 5353, false, false]])).toEqual(['ok']);
    expect(sockets(client, 'reply')).toBe(replies + 1n);
  });

  it("a datagram reaching a socket that never sent to its source (test_run's own socket) still opens an inbound flow", () => {
    expect(testRun(client, 'weir_ingress', udp('203.0.113.62', 53, OWN, 40000))).toBe(1);
    expect(testRun(client, 'weir_egress', udp(OWN, 40000, '203.0.113.62', 53))).toBe(1);
    expect(testRun(client, 'weir_ingress', udp('2001:db8::62', 53, OWN6, 40000))).toBe(1);
    expect(testRun(client, 'weir_egress', udp(OWN6, 40000, '2001:db8::62', 53))).toBe(1);
  });

  it('a socket that remembers sending to a remote still gets nothing through by that alone', () => {
    // 31000 -> 203.0.113.50:80 is remembered on the socket (the answer was not
    // recorded); a new socket on the same port, denied, sends again: refused.
    expect(inPod(client, setup(), [['udp_flow', OWN, 31000, '203.0.113.50', 80, false, false], ['udp_flow', OWN6, 31006, '2001:db8::50', 80]])).toEqual([
      'send EPERM',
      'send EPERM',
    ]);
  });

  it('TCP needs no marker: the answer to a connection the pod opened is a SYN-ACK, which creates no inbound flow', () => {
    const synAck = { src: '203.0.113.70', dst: OWN, proto: IPPROTO.TCP, sport: 443, dport: 32000, tcpFlags: TCP_SYN | TCP_ACK };
    expect(testRun(client, 'weir_ingress', synAck)).toBe(1);
    expect(testRun(client, 'weir_ingress', { ...synAck, tcpFlags: TCP_ACK })).toBe(1);
    expect(testRun(client, 'weir_egress', { src: OWN, dst: '203.0.113.70', proto: IPPROTO.TCP, sport: 32000, dport: 443 })).toBe(0);
    expect(flows('weir_ct', client).filter((f) => f.endsWith('/6'))).toEqual([]);
  });
});

// ---- drops a full map may cause are reported as map-full, not as policy -------------

describe('a full map: the drops it may cause carry reason map-full (the verdict does not change)', () => {
  const OWN = '10.244.5.10';
  let pod: TestPod;

  beforeAll(() => {
    pod = addPod('mf', 'a', { pod: 'mf-a' }, [OWN]);
    bed.add(networkPolicy('mf', 'udp-81-only', { pod: 'mf-a' }, [{ ports: [{ protocol: 'UDP', port: 81 }] }]));
    sync();
    drained();
  });
  afterAll(() => bed.dp.setNodeFlags(0));

  const setup = (): string => netnsSetup([`${OWN}/24`], []);
  const reasons = (): string[] =>
    drained()
      .filter((e) => e.verdict === VERDICT_CODES.drop)
      .map((e) => REASON_BY_CODE.get(e.reason) ?? String(e.reason));

  it('weir_ct full: a UDP send from a bound port (maybe a reply whose entry was evicted) is refused as map-full; a connect is not a reply and stays default-deny', () => {
    bed.dp.setNodeFlags(CONST.WEIR_NODE_F_CT_FULL);
    expect(inPod(pod, setup(), [['udp_flow', OWN, 5301, '203.0.113.80', 99, false, false], ['tcp', '203.0.113.81', 99]])).toEqual(['send EPERM', 'connect EPERM']);
    expect(reasons()).toEqual(['map-full', 'default-deny']);
    // The per-packet program: a TCP segment that is not a bare SYN, while the flag is set.
    const seg = { src: OWN, dst: '203.0.113.82', proto: IPPROTO.TCP, sport: 40000, dport: 99, tcpFlags: TCP_ACK };
    expect(testRun(pod, 'weir_egress', seg)).toBe(0);
    expect(testRun(pod, 'weir_egress', { ...seg, sport: 40001, tcpFlags: TCP_SYN })).toBe(0);
    expect(reasons()).toEqual(['map-full', 'default-deny']);
    // Flag cleared: the same send is a policy drop again.
    bed.dp.setNodeFlags(0);
    expect(inPod(pod, setup(), [['udp_flow', OWN, 5302, '203.0.113.80', 99, false, false]])).toEqual(['send EPERM']);
    expect(testRun(pod, 'weir_egress', { ...seg, dst: '203.0.113.84' })).toBe(0); // another flow: .82 was reported within the event interval
    expect(reasons()).toEqual(['default-deny', 'default-deny']);
  });

  it("weir_pod_ips missing the pod's address (WEIR_POD_F_ADDR_MISSING): its traffic to itself is judged (fail closed) and the drop is map-full", () => {
    // What the writer does when weir_pod_ips refuses the address (test/kernel/map-full.test.ts):
    // no entry, and the flag on the pod.
    const cg = cgroupIdOf(pod.dir);
    const pm = bed.dp.map('weir_pods');
    const before = pm.lookup(u64Key(cg)) as Buffer;
    const ipKey = encodePodIpKey({ family: 2, addr: addressBytes(OWN).bytes });
    const ipm = bed.dp.map('weir_pod_ips');
    const ipBefore = ipm.lookup(ipKey) as Buffer;
    expect(ipBefore).not.toBeNull();
    try {
      ipm.delete(ipKey);
      expect(inPod(pod, setup(), [['tcp', OWN, 80]])).toEqual(['connect EPERM']);
      expect(reasons()).toEqual(['default-deny']); // without the flag: indistinguishable
      pm.update(u64Key(cg), encodePodValue({ ...decodePodValue(before), flags: decodePodValue(before).flags | CONST.WEIR_POD_F_ADDR_MISSING }));
      expect(inPod(pod, setup(), [['tcp', OWN, 80], ['tcp', '203.0.113.83', 99]])).toEqual(['connect EPERM', 'connect EPERM']);
      expect(reasons()).toEqual(['map-full', 'map-full']);
    } finally {
      pm.update(u64Key(cg), before);
      ipm.update(ipKey, ipBefore);
    }
    expect(inPod(pod, setup(), [['tcp', OWN, 80]])).toEqual(['ok']);
  });
});
