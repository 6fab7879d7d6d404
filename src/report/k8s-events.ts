// Kubernetes Events (events.k8s.io/v1) for egress violations and for
// policies that could not be loaded.
//
// Series, the way client-go's events library (k8s.io/client-go/tools/events)
// builds them: the first occurrence of an event creates an Event; later
// occurrences of the same event (same regarding object, reason, policy, rule
// and destination) do not create new objects but raise the Event's
// `series.count` and `series.lastObservedTime` with a PATCH. client-go sends
// the first repeat at once and then refreshes a series every 30 minutes;
// weir patches a series at most once per flushIntervalMs (default 30 s), so
// `kubectl events` stays current while a flood of violations costs one
// write per series per interval: 10,000 drops of one flow in a minute are one
// POST and two PATCHes. A series nobody added to for seriesIdleMs (6 min, as
// client-go) is finished; the next occurrence starts a new Event. An Event
// that is gone when patched (deleted, or expired by the API server's
// --event-ttl, 1 h by default) is created again, with the series' full count.
//
// What the API server holds to (pkg/apis/core/validation/events.go): on
// create eventTime (a MicroTime, six fractional digits), reportingController
// (a qualified name), reportingInstance, action and reason (at most 128
// characters) are required, the note is at most 1 KiB, a series has count
// >= 2; on update everything but the series and metadata is immutable. So
// the note, written once, describes the first occurrence (its pid and
// command); the destination and rule, which are part of the key, hold for
// every occurrence. Nothing that varies per occurrence is in reason,
// labels or annotations.
//
// Load on the API server is bounded three ways: one write per series per
// flushIntervalMs; a token bucket (writesPerSecond, writeBurst) for timer
// driven writes, so a pod that scans thousands of destinations cannot turn
// into thousands of writes per second; and at most maxPending series in
// memory (least recently seen evicted first, its unwritten occurrences
// counted in weir_k8s_events_dropped_total{reason="overflow"}). Writes are
// sequential: one request in flight per node. 429, 5xx, 401 and network
// failures stop all writes for a jittered exponential backoff, never shorter
// than the server's Retry-After (parsed by kube-client.ts's parseRetryAfter
// through KubeApiError); counts keep accumulating meanwhile and are written
// afterwards, so nothing is lost to throttling.
//
// The agent's side: violation() and invalidPolicy() only update a map and
// maybe arm a timer; they never wait, never do I/O and never throw. flush()
// and stop() never reject. Only the constructor throws (KubeConfigError) on
// an unusable client configuration.
//
// Secrets: requests carry the bearer token in a header that is never logged;
// failures are logged through describeFailure(), which redacts credentials.

import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { HttpMethod, IsomorphicFetchHttpLibrary, type KubeConfig, RequestContext } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { KubeApiError, KubeConfigError, describeFailure, loadKubeConfig } from '../sources/kube-client.js';

export const REPORTING_CONTROLLER = 'weir.dev/agent';
export const REASON_VIOLATION = 'EgressViolation';
export const REASON_AUDIT_VIOLATION = 'EgressAuditViolation';
export const REASON_INVALID_POLICY = 'InvalidPolicy';
/** A pod the datapath has no room for: its egress is not governed (weir_pods or the endpoint ids full). */
export const REASON_NOT_ENFORCED = 'EgressNotEnforced';
/** The Event's `action` for EgressNotEnforced. */
export const ACTION_ENFORCE = 'Enforce';
/** A drop no policy rule decided: a datapath map is full (weir reason map-full). */
export const REASON_MAP_FULL = 'EgressDroppedMapFull';
/** A drop because the pod's policy never compiled (weir reason not-compiled). */
export const REASON_NOT_COMPILED = 'EgressDroppedPolicyNotCompiled';
/**
 * An address of a DNS answer the datapath did not learn for the pod (it
 * already has 4 live names, or weir_fqdn_learned is full): connections to
 * it are refused as to an unknown address.
 */
export const REASON_FQDN_REFUSED = 'FqdnLearnRefused';
/** The Event's `action` for FqdnLearnRefused. */
export const ACTION_LEARN_ADDRESS = 'LearnAddress';
/** The Event's `action` for violations: egress of the regarding pod was denied (or would be, for audit). */
export const ACTION_EGRESS = 'Egress';
/** The Event's `action` for InvalidPolicy: loading the regarding policy failed. */
export const ACTION_LOAD_POLICY = 'LoadPolicy';

/** Limits of the API server's Event validation. */
const NOTE_MAX_BYTES = 1024;
const REPORTING_INSTANCE_MAX = 128;
const NAME_MAX = 253;
/** series.count is an int32. */
const COUNT_MAX = 2 ** 31 - 1;

/**
 * One violation as the agent reports it. The agent's `Violation`
 * (src/agent/agent.ts) satisfies this structurally; add `podUid` (from the
 * pod in the model) so the Event's `regarding` names the exact pod
 * incarnation: `reporter.violation({ ...v, podUid })`.
 */
export interface ViolationEventInput {
  /** 'drop' → EgressViolation, 'audit' → EgressAuditViolation; other verdicts are not violations and are ignored. */
  verdict: string;
  /** weir's reason (src/policy/verdict.ts): map-full and not-compiled drops get Event reasons of their own. */
  reason?: string;
  namespace: string;
  pod: string;
  podUid?: string;
  /** The policy id(s), e.g. `EgressPolicy/ml-train/train-data` (comma-separated when several). */
  policy: string;
  /** The rule, e.g. `EgressPolicy/ml-train/train-data deny[0]`, or `no allow rule matched`. */
  rule: string;
  protocol: string;
  destination: string;
  port: number | null;
  /** Occurrences this report stands for (the kernel aggregates per flow); at least 1. */
  count: number;
  /** Process of the first occurrence, shown in the note. */
  pid?: number;
  command?: string;
}

/** A policy that could not be loaded (the engine's PolicyProblem, with the object's identity). */
export interface InvalidPolicyInput {
  /** Default: weir.dev/v1alpha1 for EgressPolicy and ClusterEgressPolicy, networking.k8s.io/v1 for NetworkPolicy. */
  apiVersion?: string;
  kind: string;
  /** Absent for cluster-scoped policies: their Events go to the `default` namespace, as the API server requires. */
  namespace?: string;
  name: string;
  uid?: string;
  message: string;
}

export interface EventReporterOptions {
  /** The client configuration; else `kubeconfig` (a path); else in-cluster or KUBECONFIG (see loadKubeConfig). */
  kubeConfig?: KubeConfig;
  kubeconfig?: string;
  /** reportingInstance of every Event. */
  nodeName: string;
  logger: Logger;
  registry: Registry;
  /** Least time between two writes of one series (default 30 s). */
  flushIntervalMs?: number;
  /** Delay before a new series' first write, gathering a burst into it (default 1 s, at most flushIntervalMs). */
  firstWriteDelayMs?: number;
  /** Most series held in memory (default 1000); the least recently seen is evicted. */
  maxPending?: number;
  /** A series with no occurrence for this long is finished (default 6 min, as client-go). */
  seriesIdleMs?: number;
  /** Timer-driven writes per second, sustained (default 5) and in a burst (default 25). flush() and stop() are not limited. */
  writesPerSecond?: number;
  writeBurst?: number;
  /** Backoff after 429, 5xx, 401 and network failures (default 1 s doubling to 5 min, jittered), never shorter than Retry-After. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Per request (default 10 s). */
  requestTimeoutMs?: number;
  /** How long stop() may spend writing what is pending (default 5 s). */
  stopTimeoutMs?: number;
  /** Wall clock for eventTime and lastObservedTime (default Date.now). Delays and rates use the monotonic clock. */
  now?: () => number;
  random?: () => number;
}

export interface ObjectReference {
  apiVersion: string;
  kind: string;
  namespace?: string;
  name: string;
  uid?: string;
}

/** What stays the same for every occurrence of a series: the immutable fields of its Event. */
interface EventIdentity {
  namespace: string;
  regarding: ObjectReference;
  related?: ObjectReference;
  reason: string;
  action: string;
  note: string;
}

interface Series extends EventIdentity {
  key: string;
  /** The Event's name; a new one when the Event has to be created again. */
  name: string;
  /** The Event exists on the server (as far as we know). */
  created: boolean;
  /** Occurrences seen / occurrences the server has. */
  total: number;
  written: number;
  firstSeenWall: number;
  lastSeenWall: number;
  lastSeenMono: number;
  firstSeenMono: number;
  lastWriteMono: number;
  inFlight: boolean;
}

type PassMode = 'due' | 'all' | 'final';
type WriteOutcome = 'ok' | 'stop-pass';

/** metav1.MicroTime on the wire: RFC 3339 with exactly six fractional digits (the API server rejects three). */
export function microTime(ms: number): string {
  return `${new Date(Math.floor(ms)).toISOString().slice(0, 23)}000Z`;
}

/** Cuts a string to at most maxBytes of UTF-8, on a character boundary, marking the cut. */
function truncateUtf8(s: string, maxBytes: number): string {
  if (Buffer.byteLength(s) <= maxBytes) return s;
  const ellipsis = '…';
  let out = '';
  let bytes = Buffer.byteLength(ellipsis);
  for (const ch of s) {
    const b = Buffer.byteLength(ch);
    if (bytes + b > maxBytes) break;
    out += ch;
    bytes += b;
  }
  return out + ellipsis;
}

/** `<base>.<16 hex>`, a DNS subdomain of at most 253 characters (client-go uses `<name>.<hex nanoseconds>`). */
function eventName(base: string): string {
  const suffix = randomBytes(8).toString('hex');
  let b = base.toLowerCase().slice(0, NAME_MAX - suffix.length - 1).replace(/[^a-z0-9.-]/g, '-');
  b = b.replace(/^[^a-z0-9]+/, '').replace(/[^a-z0-9]+$/, '');
  return `${b === '' ? 'weir' : b}.${suffix}`;
}

const POLICY_API_VERSIONS: Record<string, string> = {
  EgressPolicy: 'weir.dev/v1alpha1',
  ClusterEgressPolicy: 'weir.dev/v1alpha1',
  NetworkPolicy: 'networking.k8s.io/v1',
};

/**
 * The object a policy id (`Kind/namespace/name`, as the policy engine names
 * policies; cluster-scoped: `Kind//name`) refers to, or undefined if it is
 * not one policy id.
 */
export function policyReference(policyId: string): ObjectReference | undefined {
  const parts = policyId.split('/');
  if (parts.length !== 3 || policyId.includes(',')) return undefined;
  const [kind = '', namespace = '', name = ''] = parts;
  const apiVersion = POLICY_API_VERSIONS[kind];
  if (apiVersion === undefined || name === '') return undefined;
  return { apiVersion, kind, ...(namespace !== '' ? { namespace } : {}), name };
}

/** `drop TCP 203.0.113.10:443 by EgressPolicy/ml-train/train-data deny[0] (pid 123 curl)` */
export function violationNote(v: ViolationEventInput): string {
  const dst = v.port === null ? v.destination : v.destination.includes(':') ? `[${v.destination}]:${v.port}` : `${v.destination}:${v.port}`;
  let by: string;
  if (v.policy === '') by = v.rule === '' ? 'no policy' : v.rule;
  else if (v.rule === '' || v.rule.startsWith(v.policy)) by = v.rule === '' ? v.policy : v.rule;
  else by = `${v.policy}: ${v.rule}`;
  const proc = [v.pid !== undefined && v.pid > 0 ? `pid ${v.pid}` : '', v.command ?? ''].filter((s) => s !== '').join(' ');
  return `${v.verdict} ${v.protocol} ${dst} by ${by}${proc !== '' ? ` (${proc})` : ''}`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

class StoppedError extends Error {
  override readonly name = 'StoppedError';
}

/**
 * Writes Kubernetes Events for violations and invalid policies, aggregated
 * into series. Owned by the agent: construct once, call violation() /
 * invalidPolicy() from the event path, stop() on shutdown.
 */
export class EventReporter {
  private readonly kc: KubeConfig;
  private readonly server: string;
  private readonly http = new IsomorphicFetchHttpLibrary();
  private readonly log: Logger;
  private readonly nodeName: string;
  private readonly flushIntervalMs: number;
  private readonly firstWriteDelayMs: number;
  private readonly maxPending: number;
  private readonly seriesIdleMs: number;
  private readonly writesPerSecond: number;
  private readonly writeBurst: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly requestTimeoutMs: number;
  private readonly stopTimeoutMs: number;
  private readonly now: () => number;
  private readonly random: () => number;

  private readonly written: Counter<'op'>;
  private readonly writeErrors: Counter<'reason'>;
  private readonly dropped: Counter<'reason'>;
  private readonly pending: Gauge;

  /** Insertion order is recency: the first entry is the least recently seen. */
  private readonly series = new Map<string, Series>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Number.POSITIVE_INFINITY;
  /** Passes run one at a time, in order. */
  private chain: Promise<void> = Promise.resolve();
  private readonly abort = new AbortController();
  private stopping = false;
  private stopped: Promise<void> | undefined;
  private failures = 0;
  private blockedUntil = 0;
  private tokens: number;
  private tokensAt: number;
  /** HTTP statuses already logged at warn for rejected writes (later ones go to debug). */
  private readonly warnedRejections = new Set<string>();

  constructor(opts: EventReporterOptions) {
    this.kc = opts.kubeConfig ?? loadKubeConfig(opts.kubeconfig);
    const cluster = this.kc.getCurrentCluster();
    if (cluster === null) throw new KubeConfigError('no current cluster');
    this.server = cluster.server.replace(/\/+$/, '');
    this.log = opts.logger.child({ component: 'k8s-events' });
    this.nodeName = opts.nodeName.slice(0, REPORTING_INSTANCE_MAX);
    if (this.nodeName === '') throw new TypeError('EventReporter: nodeName is required (it is every Event\'s reportingInstance)');
    this.flushIntervalMs = opts.flushIntervalMs ?? 30_000;
    this.firstWriteDelayMs = Math.min(opts.firstWriteDelayMs ?? 1000, this.flushIntervalMs);
    this.maxPending = Math.max(1, opts.maxPending ?? 1000);
    this.seriesIdleMs = opts.seriesIdleMs ?? 6 * 60_000;
    this.writesPerSecond = Math.max(0.001, opts.writesPerSecond ?? 5);
    this.writeBurst = Math.max(1, opts.writeBurst ?? 25);
    this.backoffInitialMs = opts.backoff?.initialMs ?? 1000;
    this.backoffMaxMs = opts.backoff?.maxMs ?? 5 * 60_000;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 5000;
    this.now = opts.now ?? Date.now;
    this.random = opts.random ?? Math.random;
    this.tokens = this.writeBurst;
    this.tokensAt = performance.now();

    const registers = [opts.registry];
    this.written = new Counter({
      name: 'weir_k8s_events_written_total',
      help: 'Kubernetes Events written: op="create" (a new Event, or one created again after it was deleted or expired), op="patch" (a series update).',
      labelNames: ['op'],
      registers,
    });
    this.writeErrors = new Counter({
      name: 'weir_k8s_events_write_errors_total',
      help: 'Failed Event writes, by reason: throttled (429), server (5xx), network, unauthorized (401), forbidden (403), not-found (404), conflict (409), invalid (other 4xx).',
      labelNames: ['reason'],
      registers,
    });
    this.dropped = new Counter({
      name: 'weir_k8s_events_dropped_total',
      help: 'Occurrences (violations, policy failures) no Event will count, by reason: overflow (series evicted, maxPending), rejected (the API server refused the Event), no-pod (violation of an unknown pod), shutdown (unwritten at stop).',
      labelNames: ['reason'],
      registers,
    });
    const pendingOf = (): number => {
      let n = 0;
      for (const s of this.series.values()) if (s.total > s.written) n++;
      return n;
    };
    this.pending = new Gauge({
      name: 'weir_k8s_events_pending',
      help: 'Event series with occurrences not yet written to the API server.',
      registers,
      collect() {
        this.set(pendingOf());
      },
    });
  }

  // -------------------------------------------------------------------------
  // Reporting (the agent's event path: no I/O, no waiting, no throwing)

  /** Counts a violation into its series. */
  violation(v: ViolationEventInput): void {
    try {
      const count = Number.isFinite(v.count) && v.count >= 1 ? Math.floor(v.count) : 1;
      if (this.stopping) {
        this.dropped.inc({ reason: 'shutdown' }, count);
        return;
      }
      let reason = v.verdict === 'drop' ? REASON_VIOLATION : v.verdict === 'audit' ? REASON_AUDIT_VIOLATION : undefined;
      if (reason === undefined) return;
      if (v.verdict === 'drop' && v.reason === 'map-full') reason = REASON_MAP_FULL;
      else if (v.verdict === 'drop' && v.reason === 'not-compiled') reason = REASON_NOT_COMPILED;
      if (v.namespace === '' || v.pod === '') {
        this.dropped.inc({ reason: 'no-pod' }, count);
        return;
      }
      const podUid = v.podUid ?? '';
      const port = v.port ?? '';
      const key = JSON.stringify(['v', v.namespace, v.pod, podUid, reason, v.policy, v.rule, v.protocol, v.destination, port]);
      this.record(key, count, () => {
        const related = policyReference(v.policy);
        return {
          namespace: v.namespace,
          regarding: { apiVersion: 'v1', kind: 'Pod', namespace: v.namespace, name: v.pod, ...(podUid !== '' ? { uid: podUid } : {}) },
          ...(related !== undefined ? { related } : {}),
          reason,
          action: ACTION_EGRESS,
          note: truncateUtf8(violationNote(v), NOTE_MAX_BYTES),
        };
      });
    } catch (err) {
      this.log.error({ error: describeFailure(err) }, 'could not record a violation for a Kubernetes Event');
    }
  }

  /** Reports a policy that failed to load (a Warning Event, reason InvalidPolicy, regarding the policy). */
  invalidPolicy(p: InvalidPolicyInput): void {
    try {
      if (this.stopping) return;
      const apiVersion = p.apiVersion ?? POLICY_API_VERSIONS[p.kind] ?? 'weir.dev/v1alpha1';
      const ns = p.namespace ?? '';
      const uid = p.uid ?? '';
      const key = JSON.stringify(['p', apiVersion, p.kind, ns, p.name, uid, p.message]);
      this.record(key, 1, () => ({
        // A cluster-scoped object's Events live in `default` (the API server allows default or kube-system).
        namespace: ns !== '' ? ns : 'default',
        regarding: { apiVersion, kind: p.kind, ...(ns !== '' ? { namespace: ns } : {}), name: p.name, ...(uid !== '' ? { uid } : {}) },
        reason: REASON_INVALID_POLICY,
        action: ACTION_LOAD_POLICY,
        note: truncateUtf8(p.message === '' ? 'the policy could not be loaded' : p.message, NOTE_MAX_BYTES),
      }));
    } catch (err) {
      this.log.error({ error: describeFailure(err) }, 'could not record an invalid policy for a Kubernetes Event');
    }
  }

  /**
   * Reports a pod the datapath could not take (weir_pods or the endpoint
   * ids full): a Warning Event regarding the pod, reason EgressNotEnforced,
   * one series per pod (repeated attempts raise its count).
   */
  podNotEnforced(p: { namespace: string; pod: string; podUid?: string; message: string }): void {
    try {
      if (this.stopping || p.namespace === '' || p.pod === '') return;
      const uid = p.podUid ?? '';
      const key = JSON.stringify(['n', p.namespace, p.pod, uid]);
      this.record(key, 1, () => ({
        namespace: p.namespace,
        regarding: { apiVersion: 'v1', kind: 'Pod', namespace: p.namespace, name: p.pod, ...(uid !== '' ? { uid } : {}) },
        reason: REASON_NOT_ENFORCED,
        action: ACTION_ENFORCE,
        note: truncateUtf8(`egress of this pod is not governed: ${p.message}`, NOTE_MAX_BYTES),
      }));
    } catch (err) {
      this.log.error({ error: describeFailure(err) }, 'could not record a pod not enforced for a Kubernetes Event');
    }
  }

  /**
   * Reports an address a pod's DNS answer carried that the datapath could
   * not learn (a Warning Event regarding the pod, reason FqdnLearnRefused),
   * one series per pod, name and reason; the note names the first address.
   */
  fqdnRefused(p: { namespace: string; pod: string; podUid?: string; name: string; address: string; reason: string; count: number }): void {
    try {
      const count = Number.isFinite(p.count) && p.count >= 1 ? Math.floor(p.count) : 1;
      if (this.stopping || p.namespace === '' || p.pod === '') return;
      const uid = p.podUid ?? '';
      const key = JSON.stringify(['f', p.namespace, p.pod, uid, p.name, p.reason]);
      const why = p.reason === 'map-full' ? 'weir_fqdn_learned is full on this node' : 'the address already has 4 live names for this pod';
      this.record(key, count, () => ({
        namespace: p.namespace,
        regarding: { apiVersion: 'v1', kind: 'Pod', namespace: p.namespace, name: p.pod, ...(uid !== '' ? { uid } : {}) },
        reason: REASON_FQDN_REFUSED,
        action: ACTION_LEARN_ADDRESS,
        note: truncateUtf8(`address ${p.address} of ${p.name} not learned: ${why}; connections to it are refused`, NOTE_MAX_BYTES),
      }));
    } catch (err) {
      this.log.error({ error: describeFailure(err) }, 'could not record a refused DNS answer for a Kubernetes Event');
    }
  }

  private record(key: string, count: number, identity: () => EventIdentity): void {
    const mono = performance.now();
    const wall = this.now();
    let s = this.series.get(key);
    if (s !== undefined && s.total === s.written && !s.inFlight && mono - s.lastSeenMono > this.seriesIdleMs) {
      // The series is finished: this occurrence starts a new Event.
      this.series.delete(key);
      s = undefined;
    }
    if (s !== undefined) {
      // Most recently seen moves to the end (LRU order).
      this.series.delete(key);
      this.series.set(key, s);
    } else {
      if (this.series.size >= this.maxPending) this.evictOne();
      const id = identity();
      s = {
        ...id,
        key,
        name: eventName(id.regarding.name),
        created: false,
        total: 0,
        written: 0,
        firstSeenWall: wall,
        lastSeenWall: wall,
        firstSeenMono: mono,
        lastSeenMono: mono,
        lastWriteMono: 0,
        inFlight: false,
      };
      this.series.set(key, s);
    }
    s.total = Math.min(COUNT_MAX, s.total + count);
    s.lastSeenWall = wall;
    s.lastSeenMono = mono;
    this.schedule(this.dueAt(s));
  }

  private evictOne(): void {
    for (const s of this.series.values()) {
      if (s.inFlight) continue;
      this.series.delete(s.key);
      const lost = s.total - s.written;
      if (lost > 0) this.dropped.inc({ reason: 'overflow' }, lost);
      return;
    }
  }

  private dueAt(s: Series): number {
    return s.created ? s.lastWriteMono + this.flushIntervalMs : s.firstSeenMono + this.firstWriteDelayMs;
  }

  // -------------------------------------------------------------------------
  // Scheduling

  /** Arms the timer for `at` (monotonic ms) unless it fires earlier already. */
  private schedule(at: number): void {
    if (this.stopping) return;
    const when = Math.max(at, this.blockedUntil);
    if (this.timer !== undefined && this.timerAt <= when) return;
    clearTimeout(this.timer);
    this.timerAt = when;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Number.POSITIVE_INFINITY;
        void this.enqueue('due');
      },
      Math.max(0, Math.ceil(when - performance.now())),
    );
  }

  /** After a pass: the next time anything is due (nothing pending: no timer at all). */
  private rearm(): void {
    if (this.stopping) return;
    let next = Number.POSITIVE_INFINITY;
    for (const s of this.series.values()) if (s.total > s.written && !s.inFlight) next = Math.min(next, this.dueAt(s));
    if (next === Number.POSITIVE_INFINITY) return;
    if (this.tokens < 1) next = Math.max(next, this.tokensAt + ((1 - this.tokens) / this.writesPerSecond) * 1000);
    this.schedule(next);
  }

  private enqueue(mode: PassMode): Promise<void> {
    const run = this.chain.then(() => this.pass(mode));
    this.chain = run.catch((err: unknown) => {
      this.log.error({ error: describeFailure(err) }, 'writing Kubernetes Events failed');
    });
    return this.chain;
  }

  private takeToken(): boolean {
    const mono = performance.now();
    this.tokens = Math.min(this.writeBurst, this.tokens + ((mono - this.tokensAt) / 1000) * this.writesPerSecond);
    this.tokensAt = mono;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  // -------------------------------------------------------------------------
  // Writing

  /** Writes what is pending now, as far as the API server lets it (a backoff in force is not waited out). Never rejects. */
  flush(): Promise<void> {
    if (this.stopping) return this.stopped ?? Promise.resolve();
    return this.enqueue('all');
  }

  /** Writes what is pending (for at most stopTimeoutMs, not waiting out a backoff), then stops: no timers, no connections. Never rejects. */
  stop(): Promise<void> {
    this.stopped ??= this.shutdown();
    return this.stopped;
  }

  private async shutdown(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    const deadline = setTimeout(() => this.abort.abort(new StoppedError('stopped')), this.stopTimeoutMs);
    try {
      await this.enqueue('final');
    } finally {
      clearTimeout(deadline);
      this.abort.abort(new StoppedError('stopped'));
    }
    let lost = 0;
    for (const s of this.series.values()) lost += s.total - s.written;
    if (lost > 0) {
      this.dropped.inc({ reason: 'shutdown' }, lost);
      this.log.warn({ occurrences: lost }, 'stopping with violations not yet counted in Kubernetes Events');
    }
    this.series.clear();
  }

  private async pass(mode: PassMode): Promise<void> {
    try {
      const start = performance.now();
      // Finished series are forgotten, so their next occurrence starts a new Event.
      for (const s of [...this.series.values()]) {
        if (s.total === s.written && !s.inFlight && start - s.lastSeenMono > this.seriesIdleMs) this.series.delete(s.key);
      }
      for (const s of [...this.series.values()]) {
        if (this.abort.signal.aborted || (mode === 'due' && this.stopping)) break;
        if (performance.now() < this.blockedUntil) break;
        if (s.total <= s.written || this.series.get(s.key) !== s) continue;
        if (mode === 'due') {
          if (this.dueAt(s) > performance.now()) continue;
          if (!this.takeToken()) break;
        }
        if ((await this.write(s)) === 'stop-pass') break;
      }
    } finally {
      this.rearm();
    }
  }

  private async write(s: Series): Promise<WriteOutcome> {
    const count = s.total;
    const lastObserved = s.lastSeenWall;
    let op: 'create' | 'patch' = s.created ? 'patch' : 'create';
    s.inFlight = true;
    try {
      // At most: create → 409 (our own earlier create did land) → patch → 404 → create under a new name.
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          if (op === 'create') await this.create(s, count, lastObserved);
          else await this.patch(s, count, lastObserved);
          this.written.inc({ op });
          s.created = true;
          s.written = Math.max(s.written, count);
          s.lastWriteMono = performance.now();
          if (this.failures > 0) this.log.info({ after: this.failures }, 'the Kubernetes API accepts Event writes again');
          this.failures = 0;
          this.log.debug({ event: s.name, namespace: s.namespace, op, count }, 'Kubernetes Event written');
          return 'ok';
        } catch (err) {
          if (this.abort.signal.aborted) return 'stop-pass';
          const code = err instanceof KubeApiError ? err.statusCode : undefined;
          if (op === 'patch' && code === 404) {
            // Deleted, or expired by the API server's event TTL: the series goes on in a new Event.
            this.writeErrors.inc({ reason: 'not-found' });
            s.created = false;
            s.name = eventName(s.regarding.name);
            op = 'create';
            continue;
          }
          if (op === 'create' && code === 409) {
            // A create whose response was lost (a timeout) did land: our
            // name is ours, and only its series may need raising.
            this.writeErrors.inc({ reason: 'conflict' });
            s.created = true;
            if (count < 2) {
              s.written = Math.max(s.written, count);
              s.lastWriteMono = performance.now();
              return 'ok';
            }
            op = 'patch';
            continue;
          }
          return this.failed(s, err, op);
        }
      }
      return 'ok';
    } finally {
      s.inFlight = false;
    }
  }

  private failed(s: Series, err: unknown, op: 'create' | 'patch'): WriteOutcome {
    const code = err instanceof KubeApiError ? err.statusCode : undefined;
    const reason =
      code === undefined ? 'network'
      : code === 429 ? 'throttled'
      : code >= 500 ? 'server'
      : code === 401 ? 'unauthorized'
      : code === 403 ? 'forbidden'
      : code === 404 ? 'not-found'
      : code === 409 ? 'conflict'
      : 'invalid';
    this.writeErrors.inc({ reason });
    const error = describeFailure(err);
    if (reason === 'network' || reason === 'throttled' || reason === 'server' || reason === 'unauthorized') {
      // The server (or the way to it) is the problem: stop writing for a while; counts keep accumulating.
      this.failures++;
      const ceiling = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** Math.min(this.failures - 1, 30));
      let delayMs = ceiling / 2 + (this.random() * ceiling) / 2;
      const retryAfterMs = err instanceof KubeApiError ? err.retryAfterMs : undefined;
      // Never before Retry-After; a little after, spread, so the nodes told the same Retry-After do not return together.
      if (retryAfterMs !== undefined) delayMs = Math.max(delayMs, retryAfterMs + this.random() * Math.min(1000, retryAfterMs * 0.2));
      delayMs = Math.round(delayMs);
      this.blockedUntil = performance.now() + delayMs;
      const fields = { reason, status: code, retryAfterMs, retryInMs: delayMs, attempt: this.failures, error };
      if (this.failures === 1) this.log.warn(fields, 'writing a Kubernetes Event failed; retrying later (counts are kept)');
      else this.log.debug(fields, 'writing a Kubernetes Event failed again');
      return 'stop-pass';
    }
    if (reason === 'conflict') {
      // A patch refused for a conflict: try again at the series' next turn.
      s.lastWriteMono = performance.now();
      this.log.debug({ event: s.name, namespace: s.namespace, error }, 'Kubernetes Event write conflicted; retrying at the next flush');
      return 'ok';
    }
    // Refused for good (no RBAC for events, the namespace is gone, the Event is invalid): retrying would be refused too.
    const lost = s.total - s.written;
    if (lost > 0) this.dropped.inc({ reason: 'rejected' }, lost);
    this.series.delete(s.key);
    const fields = { reason, status: code, op, namespace: s.namespace, regarding: `${s.regarding.kind}/${s.regarding.name}`, error };
    const warnKey = `${reason}/${op}`;
    if (!this.warnedRejections.has(warnKey)) {
      this.warnedRejections.add(warnKey);
      this.log.warn(fields, 'the Kubernetes API refused an Event; its occurrences are dropped (further refusals like this are logged at debug)');
    } else this.log.debug(fields, 'the Kubernetes API refused an Event');
    return 'ok';
  }

  private eventBody(s: Series, count: number, lastObserved: number): Record<string, unknown> {
    return {
      apiVersion: 'events.k8s.io/v1',
      kind: 'Event',
      metadata: { name: s.name, namespace: s.namespace },
      eventTime: microTime(s.firstSeenWall),
      ...(count >= 2 ? { series: { count, lastObservedTime: microTime(lastObserved) } } : {}),
      reportingController: REPORTING_CONTROLLER,
      reportingInstance: this.nodeName,
      action: s.action,
      reason: s.reason,
      type: 'Warning',
      note: s.note,
      regarding: s.regarding,
      ...(s.related !== undefined ? { related: s.related } : {}),
    };
  }

  private eventsPath(namespace: string, name?: string): string {
    const base = `/apis/events.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/events`;
    return name === undefined ? base : `${base}/${encodeURIComponent(name)}`;
  }

  private async create(s: Series, count: number, lastObserved: number): Promise<void> {
    await this.send(HttpMethod.POST, this.eventsPath(s.namespace), 'application/json', this.eventBody(s, count, lastObserved), `create Event ${s.namespace}/${s.name}`);
  }

  private async patch(s: Series, count: number, lastObserved: number): Promise<void> {
    // Only the series changes; a JSON merge patch of it is what client-go's
    // strategic merge patch amounts to for this struct.
    const body = { series: { count: Math.max(2, count), lastObservedTime: microTime(lastObserved) } };
    await this.send(HttpMethod.PATCH, this.eventsPath(s.namespace, s.name), 'application/merge-patch+json', body, `patch Event ${s.namespace}/${s.name}`);
  }

  /**
   * One authenticated request. Credentials are applied per request (a
   * rotated service-account token is picked up); the library's per-request
   * TLS dispatcher is destroyed once the response is read.
   */
  private async send(method: HttpMethod, path: string, contentType: string, body: unknown, what: string): Promise<unknown> {
    if (this.abort.signal.aborted) throw new StoppedError('stopped');
    const ctx = new RequestContext(`${this.server}${path}`, method);
    await this.kc.applySecurityAuthentication(ctx);
    ctx.setHeaderParam('Accept', 'application/json');
    ctx.setHeaderParam('Content-Type', contentType);
    ctx.setBody(JSON.stringify(body));
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(new Error(`${what}: no answer in ${this.requestTimeoutMs} ms`)), this.requestTimeoutMs);
    ctx.setSignal(AbortSignal.any([this.abort.signal, timeout.signal]));
    const dispatcher = ctx.getDispatcher();
    try {
      const res = await this.http.send(ctx).toPromise();
      if (res.httpStatusCode < 200 || res.httpStatusCode >= 300) {
        throw await KubeApiError.fromResponse(
          { status: res.httpStatusCode, headers: res.headers, text: () => res.body.text(), stream: () => res.body.stream(), release: () => undefined },
          what,
        );
      }
      const text = await res.body.text();
      try {
        const parsed = JSON.parse(text) as unknown;
        return isRecord(parsed) ? parsed : undefined;
      } catch {
        return undefined;
      }
    } finally {
      clearTimeout(timer);
      if (dispatcher !== undefined) dispatcher.destroy().catch(() => undefined);
    }
  }
}
