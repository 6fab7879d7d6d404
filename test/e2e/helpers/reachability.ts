// Truth tables of pod-to-pod reachability, the way the upstream Kubernetes
// network-policy e2e suite writes them (test/e2e/network/netpol/
// reachability.go, truthtable.go): a table over every pod pair starts
// all-true and a case sets the rows and cells its policies deny. Here a case
// gives one table per (port, protocol), the whole matrix is probed with real
// packets through long-running probers (one per pod), and a mismatch is
// printed as the upstream expected/observed/comparison tables plus one line
// per wrong cell saying what was expected and what the probe saw.

import type { ProbeResult, Prober, ProberRequest } from '../../../src/sandbox/probe-runner.js';

/** "namespace/pod", e.g. "x/a". */
export type PodString = `${string}/${string}`;
export type Protocol = 'TCP' | 'UDP' | 'SCTP';

export function podString(namespace: string, pod: string): PodString {
  return `${namespace}/${pod}`;
}

function splitPod(p: PodString): { namespace: string; pod: string } {
  const [namespace = '', pod = ''] = p.split('/');
  return { namespace, pod };
}

/** Matches pods by namespace and/or name; an absent field matches everything (upstream's Peer). */
export interface Peer {
  namespace?: string;
  pod?: string;
}

export function peerMatches(peer: Peer, p: PodString): boolean {
  const { namespace, pod } = splitPod(p);
  return (peer.namespace === undefined || peer.namespace === namespace) && (peer.pod === undefined || peer.pod === pod);
}

/** A from × to table of booleans; undefined cells are "not observed yet". */
export class TruthTable {
  readonly items: readonly PodString[];
  private readonly values = new Map<string, boolean>();

  constructor(items: readonly PodString[], dflt?: boolean) {
    this.items = items;
    if (dflt !== undefined) for (const f of items) for (const t of items) this.values.set(`${f}>${t}`, dflt);
  }

  set(from: PodString, to: PodString, value: boolean): void {
    if (!this.items.includes(from) || !this.items.includes(to)) throw new RangeError(`no pod pair ${from} -> ${to} in this table`);
    this.values.set(`${from}>${to}`, value);
  }

  get(from: PodString, to: PodString): boolean | undefined {
    return this.values.get(`${from}>${to}`);
  }

  setAllFrom(from: PodString, value: boolean): void {
    for (const to of this.items) this.set(from, to, value);
  }

  setAllTo(to: PodString, value: boolean): void {
    for (const from of this.items) this.set(from, to, value);
  }

  /** Upstream's PrettyPrint: "." connected, "X" not, "?" unknown. */
  pretty(indent = ''): string {
    const cell = (v: boolean | undefined): string => (v === undefined ? '?' : v ? '.' : 'X');
    const lines = [[`${indent}-`, ...this.items].join('\t')];
    for (const f of this.items) lines.push([`${indent}${f}`, ...this.items.map((t) => cell(this.get(f, t)))].join('\t'));
    return lines.join('\n');
  }
}

/** Expected and observed reachability for one (port, protocol), as upstream's Reachability. */
export class Reachability {
  readonly pods: readonly PodString[];
  readonly expected: TruthTable;
  readonly observed: TruthTable;

  constructor(pods: readonly PodString[], dflt: boolean) {
    this.pods = pods;
    this.expected = new TruthTable(pods, dflt);
    this.observed = new TruthTable(pods);
  }

  expect(from: PodString, to: PodString, connected: boolean): void {
    this.expected.set(from, to, connected);
  }

  /** Every connection from `pod` (its row). */
  expectAllEgress(pod: PodString, connected: boolean): void {
    this.expected.setAllFrom(pod, connected);
  }

  /** Every connection to `pod` (its column). */
  expectAllIngress(pod: PodString, connected: boolean): void {
    this.expected.setAllTo(pod, connected);
  }

  expectPeer(from: Peer, to: Peer, connected: boolean): void {
    for (const f of this.pods) {
      if (!peerMatches(from, f)) continue;
      for (const t of this.pods) if (peerMatches(to, t)) this.expected.set(f, t, connected);
    }
  }

  /**
   * Upstream's AllowLoopback: a pod always reaches itself, whatever the
   * policies (Kubernetes never isolates a pod from itself). Call it after
   * every other expectation; compare() does, for every case.
   */
  allowLoopback(): void {
    for (const p of this.pods) this.expected.set(p, p, true);
  }

  observe(from: PodString, to: PodString, connected: boolean): void {
    this.observed.set(from, to, connected);
  }
}

/** Upstream's TestCase: one port and protocol, and its table. */
export interface TestCase {
  toPort: number;
  protocol: Protocol;
  reachability: Reachability;
}

export interface Target {
  pod: PodString;
  /** The address probed (the pod's IPv4 address, as upstream probes pod IPs). */
  ip: string;
}

export interface Observation {
  from: PodString;
  to: PodString;
  port: number;
  protocol: Protocol;
  result: ProbeResult;
}

const PROTO_OF: Record<Protocol, ProberRequest['proto']> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };

/**
 * Source ports of UDP probes: every UDP probe from a pod binds a port that
 * pod has not used before in this run (20000-29999, below the kernel's
 * ephemeral range; it would cycle after 10,000 UDP probes per pod).
 *
 * Why: weir used to record every inbound UDP datagram as an inbound flow
 * (weir_ct, 300 s idle timeout), including the echo answering an earlier
 * probe of the pod itself, so a later probe that happened to get the same
 * ephemeral source port to the same destination passed as a "reply" where
 * the policy now denied it (bug 2 in docs/conformance.md, fixed; one case
 * reuses a source port on purpose). Kept so that the matrix never depends on
 * ephemeral-port luck.
 */
const UDP_SOURCE_PORT_FIRST = 20000;
const UDP_SOURCE_PORT_COUNT = 10000;
const udpSourceSerial = new Map<PodString, number>();

function nextUdpSourcePort(from: PodString): number {
  const n = udpSourceSerial.get(from) ?? 0;
  udpSourceSerial.set(from, n + 1);
  return UDP_SOURCE_PORT_FIRST + (n % UDP_SOURCE_PORT_COUNT);
}

/**
 * Probes every (from, to) pair for every case's port and protocol, all at
 * once (each prober runs its share concurrently), and records the
 * observations in the cases' tables. Returns every observation.
 */
export async function probeMatrix(
  probers: ReadonlyMap<PodString, Prober>,
  targets: readonly Target[],
  cases: readonly TestCase[],
  opts: { timeoutMs?: number } = {},
): Promise<Observation[]> {
  const jobs: Promise<Observation>[] = [];
  for (const c of cases) {
    for (const from of c.reachability.pods) {
      const prober = probers.get(from);
      if (prober === undefined) throw new Error(`no prober in ${from}`);
      for (const t of targets) {
        if (!c.reachability.pods.includes(t.pod)) continue;
        const req: ProberRequest = { proto: PROTO_OF[c.protocol], host: t.ip, port: c.toPort };
        if (opts.timeoutMs !== undefined) req.timeoutMs = opts.timeoutMs;
        if (c.protocol === 'UDP') req.localPort = nextUdpSourcePort(from);
        jobs.push(prober.probe(req).then((result) => ({ from, to: t.pod, port: c.toPort, protocol: c.protocol, result })));
      }
    }
  }
  const observations = await Promise.all(jobs);
  for (const o of observations) {
    const c = cases.find((x) => x.toPort === o.port && x.protocol === o.protocol);
    c?.reachability.observe(o.from, o.to, o.result.ok);
  }
  return observations;
}

export interface Wrong {
  from: PodString;
  to: PodString;
  port: number;
  protocol: Protocol;
  expected: boolean;
  result: ProbeResult | undefined;
}

export interface Verdict {
  /** Cells compared, and those that disagree. */
  compared: number;
  wrong: Wrong[];
  /** The readable report (tables of every failing case, then one line per wrong cell). */
  report: string;
}

function describeResult(r: ProbeResult | undefined): string {
  if (r === undefined) return 'not probed';
  if (r.ok) return `connected in ${r.ms} ms`;
  const extra: string[] = [];
  if (r.raw.connected === true) extra.push('after the connection was established');
  if (r.raw.sent === true) extra.push('datagram was sent');
  return `${r.code ?? 'failed'} after ${r.ms} ms${extra.length > 0 ? ` (${extra.join(', ')})` : ''}`;
}

/**
 * Compares every case's expected and observed tables. Self pairs (a pod to
 * its own IP) are compared too, expected allowed (upstream's AllowLoopback,
 * applied here to every case): upstream ignores them by default because
 * CNIs differ, but weir defines them (the datapath passes a pod's traffic to
 * its own addresses like loopback), so the answer is checked.
 */
export function compare(title: string, cases: readonly TestCase[], observations: readonly Observation[], events: readonly string[] = []): Verdict {
  for (const c of cases) c.reachability.allowLoopback();
  const byCell = new Map<string, ProbeResult>();
  for (const o of observations) byCell.set(`${o.port}/${o.protocol}/${o.from}>${o.to}`, o.result);
  const wrong: Wrong[] = [];
  let compared = 0;
  const sections: string[] = [];
  for (const c of cases) {
    const r = c.reachability;
    const comparison = new TruthTable(r.pods);
    let caseWrong = 0;
    for (const f of r.pods) {
      for (const t of r.pods) {
        const exp = r.expected.get(f, t);
        const obs = r.observed.get(f, t);
        const same = exp === obs;
        comparison.set(f, t, same);
        compared++;
        if (!same) {
          caseWrong++;
          wrong.push({ from: f, to: t, port: c.toPort, protocol: c.protocol, expected: exp ?? true, result: byCell.get(`${c.toPort}/${c.protocol}/${f}>${t}`) });
        }
      }
    }
    if (caseWrong > 0) {
      sections.push(
        [
          `--- port ${c.toPort}/${c.protocol}: ${caseWrong} of ${r.pods.length ** 2} wrong`,
          'expected:',
          r.expected.pretty('  '),
          'observed:',
          r.observed.pretty('  '),
          'comparison (X = differs):',
          comparison.pretty('  '),
        ].join('\n'),
      );
    }
  }
  if (wrong.length === 0) {
    const slowest = Math.max(0, ...observations.filter((o) => o.result.ok).map((o) => o.result.ms));
    return { compared, wrong, report: `${title}: all ${compared} probes as expected (slowest connection ${slowest} ms)` };
  }
  const lines = wrong.map(
    (w) =>
      `  ${w.from} -> ${w.to}:${w.port}/${w.protocol}  expected ${w.expected ? 'ALLOWED' : 'DENIED'}, observed ${
        w.result?.ok ? 'allowed' : 'denied'
      }: ${describeResult(w.result)}`,
  );
  const report = [
    `${title}: ${wrong.length} of ${compared} probes differ from the expected reachability`,
    '(rows: from, columns: to; "." connected, "X" not)',
    ...sections,
    'wrong cells:',
    ...lines,
    ...(events.length > 0 ? ['verdicts the agent reported for the pods of wrong cells while probing:', ...events.map((e) => `  ${e}`)] : []),
  ].join('\n');
  return { compared, wrong, report };
}
