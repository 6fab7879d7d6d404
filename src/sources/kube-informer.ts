// One informer per API resource: list, then watch from the list's
// resourceVersion, for as long as the source runs.
//
// What comes from @kubernetes/client-node: its informer, `ListWatch`, which
// keeps the per-object cache, diffs a re-list against it (objects missing
// from the new list are reported deleted), dispatches ADDED / MODIFIED /
// DELETED, remembers the last resourceVersion (bookmarks included), resumes
// the watch from it when a stream ends, and re-lists when the server says
// 410 Gone (an ERROR event with code 410, or HTTP 410).
//
// What is built here, because ListWatch and the library's `Watch` cannot do
// it (2.0.1):
// - The watch transport (InformerWatch, handed to ListWatch in place of the
//   library's Watch): the library's Watch neither asks for bookmarks nor sets
//   timeoutSeconds, keeps only the status code of a failed request (the
//   Retry-After of a 429 is lost), and opens its connection after returning
//   to ListWatch, so ListWatch.stop() can miss a connection being opened and
//   a watch outlives stop(). This transport requests
//   `allowWatchBookmarks=true` and a jittered `timeoutSeconds`, keeps
//   Retry-After and the Status, owns every connection it opens (stop()
//   aborts them all) and never starts one after stop().
// - Restarts after errors. On any error other than 410 or a client timeout,
//   ListWatch reports it and stops for good; this class restarts it with
//   exponential backoff and jitter, never sooner than a Retry-After. A
//   restarted ListWatch resumes its watch from the last resourceVersion, so
//   an outage costs no re-list unless the server has compacted past it.
// - The list call (ListWatch takes a function): a plain GET that fills in
//   apiVersion/kind on list items (the API server leaves them out for
//   built-in kinds), and serves the first list from the API server's watch
//   cache (resourceVersion=0), as client-go's reflector does, so a DaemonSet
//   rollout does not send one full etcd read per node.
// - Jitter on ListWatch's own reconnect delay (its delayFn hook), and a
//   delay that stop() cuts short.
// - What the cache holds: ListWatch caches what it is given, so it is given
//   identities only (name, namespace, resourceVersion) plus the decoded
//   object until the consumer has applied it. Every Pod of the cluster is
//   therefore held once, in the ObjectStore, reduced to the fields weir
//   reads; not a second time in full inside the informer.

import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { Counter, Gauge } from 'prom-client';
import { asStatus, describeFailure, KubeApiError, readLines, type KubeClient, type KubeResponse } from './kube-client.js';
import { apiVersionOf, collectionPath, type KubeResource } from './kube-resources.js';

/** Why a watch or list was started again: the `reason` label of weir_watch_restarts_total. */
export type RestartReason =
  | 'closed' // the server ended the stream (timeoutSeconds, apiserver restart): resume
  | 'timeout' // nothing arrived for idleTimeoutMs: resume
  | 'gone' // 410: the resourceVersion was compacted away: re-list
  | 'throttled' // 429
  | 'unauthorized' // 401, 403
  | 'server_error' // 5xx, or an ERROR event that is not 410
  | 'client_error' // other 4xx
  | 'connection' // refused, reset, cut mid-stream, DNS
  | 'invalid_response'; // not JSON, not a list

const EVENT_TYPES = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR']);

/** Longest watch line accepted (etcd's own object limit is 1.5 MiB). */
const MAX_EVENT_CHARS = 64 * 1024 * 1024;

export interface WatchMetrics {
  restarts: Counter<'resource' | 'reason'>;
  events: Counter<'resource' | 'type'>;
  synced: Gauge<'resource'>;
}

export interface BackoffOptions {
  /** First retry delay ceiling (default 800 ms, as client-go). */
  initialMs?: number;
  /** Largest retry delay (default 30 s). */
  maxMs?: number;
}

/** What ListWatch caches for one object. */
export interface InformerEntry<D> extends KubernetesObject {
  metadata: { name: string; namespace?: string; resourceVersion?: string };
  /** The decoded object; the consumer deletes it once applied, so the cache keeps identities only. */
  decoded?: D;
}

export interface WatchFailure {
  reason: RestartReason;
  message: string;
  /** HTTP status (or the Status code of an ERROR event), when there was one. */
  status?: number;
  retryAfterMs?: number;
  /** When the next attempt starts. */
  delayMs: number;
  /** Consecutive failures, this one included. */
  attempt: number;
}

export interface ResourceInformerOptions<D> {
  resource: KubeResource;
  kubeConfig: KubeConfig;
  client: KubeClient;
  /** `spec.nodeName=node-1`: narrows both the list and the watch. */
  fieldSelector?: string;
  /** Turns a raw object (apiVersion and kind filled in) into what the consumer applies. */
  decode: (raw: Record<string, unknown>) => D;
  /** An object was added or changed; called one at a time, after ListWatch's cache is updated. */
  onUpsert: (entry: InformerEntry<D>) => void;
  /** An object was deleted, or is missing from a re-list. */
  onDelete: (entry: InformerEntry<D>) => void;
  /** The first list has been applied. */
  onSynced: () => void;
  /** A list or watch failed; the informer retries by itself after failure.delayMs. */
  onFailure?: (failure: WatchFailure) => void;
  metrics: WatchMetrics;
  logger: Logger;
  backoff?: BackoffOptions;
  /** Server-side watch duration, jittered between this and twice this (default 300 s). */
  watchTimeoutSeconds?: number;
  /**
   * A watch that delivers nothing (not even a bookmark) for this long is
   * re-opened (default 150 s); a list gets twice this to complete.
   */
  idleTimeoutMs?: number;
  random?: () => number;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function classifyFailure(err: unknown): RestartReason {
  if (err instanceof KubeApiError) {
    const s = err.statusCode;
    if (s === 410) return 'gone';
    if (s === 429) return 'throttled';
    if (s === 401 || s === 403) return 'unauthorized';
    if (s >= 500) return 'server_error';
    return 'client_error';
  }
  if (err instanceof InvalidResponseError || err instanceof SyntaxError) return 'invalid_response';
  if (err instanceof Error && err.name === 'TimeoutError') return 'timeout';
  return 'connection';
}

class InvalidResponseError extends Error {
  override readonly name = 'InvalidResponseError';
}

class StoppedError extends Error {
  override readonly name = 'StoppedError';
}

type WatchCallback = (phase: string, apiObj: unknown, watchObj?: unknown) => void;
type DoneCallback = (err: unknown) => void;
type OpenWatch = (path: string, query: Record<string, string | number | boolean | undefined>, callback: WatchCallback, done: DoneCallback) => AbortController;

/**
 * The transport handed to ListWatch. It returns the connection's
 * AbortController at once (before connecting), so ListWatch always holds
 * the live one, and it calls `done` only after returning, exactly once.
 */
class InformerWatch extends Watch {
  constructor(
    config: KubeConfig,
    private readonly open: OpenWatch,
  ) {
    super(config);
  }

  override watch(path: string, queryParams: Record<string, string | number | boolean | undefined>, callback: WatchCallback, done: DoneCallback): Promise<AbortController> {
    return Promise.resolve(this.open(path, queryParams, callback, done));
  }
}

export class ResourceInformer<D> {
  readonly resource: KubeResource;
  private readonly opts: ResourceInformerOptions<D>;
  private readonly log: Logger;
  private readonly listWatch: ListWatch<InformerEntry<D>>;
  private readonly labels: { resource: string };
  private readonly random: () => number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly watchTimeoutSeconds: number;
  private readonly idleTimeoutMs: number;

  private started = false;
  private stopped = false;
  private isSynced = false;
  /** A list has succeeded since the process started: later lists must be consistent reads. */
  private listedOnce = false;
  /** A list was returned to ListWatch and not yet followed by a watch (that is when it has been applied). */
  private listApplied = false;
  private failures = 0;
  /** The "not served" warning was logged in the current streak of 404s. */
  private notServedLogged = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private readonly controllers = new Set<AbortController>();
  private readonly sleepers = new Set<() => void>();
  private readonly tasks = new Set<Promise<unknown>>();

  constructor(opts: ResourceInformerOptions<D>) {
    this.opts = opts;
    this.resource = opts.resource;
    this.labels = { resource: opts.resource.name };
    this.log = opts.logger.child({ resource: opts.resource.name });
    this.random = opts.random ?? Math.random;
    this.backoffInitialMs = opts.backoff?.initialMs ?? 800;
    this.backoffMaxMs = opts.backoff?.maxMs ?? 30_000;
    this.watchTimeoutSeconds = opts.watchTimeoutSeconds ?? 300;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 150_000;
    const transport = new InformerWatch(opts.kubeConfig, (path, query, callback, done) => this.openWatch(path, query, callback, done));
    this.listWatch = new ListWatch<InformerEntry<D>>(
      collectionPath(opts.resource),
      transport,
      () => this.list(),
      false,
      undefined,
      opts.fieldSelector,
      { delayFn: (ms) => this.sleep(ms / 2 + (this.random() * ms) / 2) },
    );
    // A throwing consumer must not take ListWatch down with it: its list
    // path would reject and never watch again, its watch path would leave an
    // unhandled rejection.
    const guarded =
      (fn: (e: InformerEntry<D>) => void) =>
      (e: InformerEntry<D>): void => {
        try {
          fn(e);
        } catch (err) {
          this.log.error({ error: describeFailure(err), name: e.metadata.name, namespace: e.metadata.namespace }, 'applying an object failed');
        }
      };
    this.listWatch.on('add', guarded(this.opts.onUpsert));
    this.listWatch.on('update', guarded(this.opts.onUpsert));
    this.listWatch.on('delete', guarded(this.opts.onDelete));
    this.listWatch.on('error', (err: unknown) => this.failed(err));
    opts.metrics.synced.set(this.labels, 0);
  }

  /** True once the first list has been applied. */
  get synced(): boolean {
    return this.isSynced;
  }

  /** The resourceVersion a watch would resume from ('' before the first list and after a 410). */
  get resourceVersion(): string {
    return this.listWatch.latestResourceVersion();
  }

  start(): void {
    if (this.started) throw new Error(`informer ${this.resource.name}: start() called twice`);
    this.started = true;
    this.run();
  }

  /** Aborts the list or watch in flight and every timer; resolves when nothing of this informer is left running. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    for (const wake of this.sleepers) wake();
    for (const c of this.controllers) c.abort();
    await this.listWatch.stop();
    // Settles quickly: every await inside is on an aborted request or a woken sleep.
    while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
    this.opts.metrics.synced.set(this.labels, 0);
  }

  private run(): void {
    if (this.stopped) return;
    this.track(this.listWatch.start());
  }

  private track(p: Promise<unknown>): void {
    const t = p.catch((err: unknown) => {
      if (!this.stopped) this.log.error({ error: describeFailure(err) }, 'informer failed unexpectedly');
    });
    this.tasks.add(t);
    void t.finally(() => this.tasks.delete(t));
  }

  /** Resolves after ms, or at once when stopped. */
  private sleep(ms: number): Promise<void> {
    if (this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.sleepers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.sleepers.add(wake);
    });
  }

  private backoffDelay(attempt: number): number {
    // Exponential with "equal jitter": half the ceiling fixed, half random,
    // so agents restarted together do not retry in lockstep.
    const ceiling = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** Math.min(attempt - 1, 30));
    return ceiling / 2 + (this.random() * ceiling) / 2;
  }

  /** ListWatch gave up on an error: count it and start it again later. */
  private failed(err: unknown): void {
    if (this.stopped || err instanceof StoppedError) return;
    const reason = classifyFailure(err);
    this.failures++;
    this.opts.metrics.restarts.inc({ ...this.labels, reason });
    this.opts.metrics.synced.set(this.labels, 0);
    const retryAfterMs = err instanceof KubeApiError ? err.retryAfterMs : undefined;
    let delayMs = this.backoffDelay(this.failures);
    // Never before Retry-After; a little later, spread out, so every agent
    // told the same Retry-After does not come back in the same millisecond.
    if (retryAfterMs !== undefined) delayMs = Math.max(delayMs, retryAfterMs + this.random() * Math.min(1000, retryAfterMs * 0.2));
    delayMs = Math.round(delayMs);
    const failure: WatchFailure = {
      reason,
      message: describeFailure(err),
      ...(err instanceof KubeApiError ? { status: err.statusCode } : {}),
      ...(retryAfterMs !== undefined ? { retryAfterMs } : {}),
      delayMs,
      attempt: this.failures,
    };
    this.log.warn(
      { reason, status: failure.status, retryAfterMs, retryInMs: delayMs, attempt: this.failures, resourceVersion: this.resourceVersion || undefined, error: failure.message },
      this.resourceVersion === '' ? 'Kubernetes API request failed; retrying (known objects stay in effect)' : 'watch failed; resuming from the last resourceVersion after a delay',
    );
    try {
      this.opts.onFailure?.(failure);
    } catch (cbErr) {
      this.log.error({ error: describeFailure(cbErr) }, 'onFailure callback failed');
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.run();
    }, delayMs);
  }

  /** Adds apiVersion/kind where the server left them out, and checks there is a name to key on. */
  private typed(raw: unknown): Record<string, unknown> | undefined {
    if (!isRecord(raw)) return undefined;
    const m = raw['metadata'];
    if (!isRecord(m) || typeof m['name'] !== 'string' || m['name'] === '') return undefined;
    return {
      ...raw,
      apiVersion: typeof raw['apiVersion'] === 'string' && raw['apiVersion'] !== '' ? raw['apiVersion'] : apiVersionOf(this.resource),
      kind: typeof raw['kind'] === 'string' && raw['kind'] !== '' ? raw['kind'] : this.resource.kind,
    };
  }

  private identity(raw: Record<string, unknown>): InformerEntry<D>['metadata'] {
    const m = raw['metadata'] as Record<string, unknown>;
    const id: InformerEntry<D>['metadata'] = { name: m['name'] as string };
    if (typeof m['namespace'] === 'string' && m['namespace'] !== '') id.namespace = m['namespace'];
    if (typeof m['resourceVersion'] === 'string') id.resourceVersion = m['resourceVersion'];
    return id;
  }

  private entry(raw: unknown, decode: boolean): InformerEntry<D> | undefined {
    const obj = this.typed(raw);
    if (obj === undefined) return undefined;
    const e: InformerEntry<D> = { metadata: this.identity(obj) };
    if (decode) {
      try {
        e.decoded = this.opts.decode(obj);
      } catch (err) {
        // Cached without a decoded value: the consumer skips it, a later version may decode.
        this.log.error({ error: describeFailure(err), name: e.metadata.name, namespace: e.metadata.namespace }, 'decoding an object failed');
      }
    }
    return e;
  }

  private async list(): Promise<KubernetesListObject<InformerEntry<D>>> {
    if (this.stopped) throw new StoppedError('stopped');
    const params = new URLSearchParams();
    if (this.opts.fieldSelector !== undefined) params.set('fieldSelector', this.opts.fieldSelector);
    // resourceVersion=0: served from the API server's watch cache. Only for
    // the first list: a re-list after 410 must be a consistent (quorum) read,
    // or it could hand back the very state whose gap we are recovering from.
    if (!this.listedOnce) params.set('resourceVersion', '0');
    const query = params.toString();
    const path = `${collectionPath(this.resource)}${query === '' ? '' : `?${query}`}`;
    const controller = new AbortController();
    this.controllers.add(controller);
    // The API server bounds a list itself (--request-timeout), but a proxy or
    // a half-dead connection might not: without this an informer could wait forever.
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, 2 * this.idleTimeoutMs);
    let res: KubeResponse | undefined;
    try {
      res = await this.opts.client.get(path, controller.signal);
      if (res.status === 404 && this.listWatch.list().length === 0) {
        // Not served: the weir CRDs are not installed (yet). Holding nothing,
        // "none" is the truth; with objects held, a 404 is an error and
        // everything held is kept (it would otherwise drop enforcement).
        // The watch that follows fails the same way and retries with backoff,
        // so the resource is picked up once it is served.
        if (!this.notServedLogged) {
          this.notServedLogged = true;
          this.log.warn({ path: collectionPath(this.resource) }, 'resource not served by the API server (CRD not installed?); treating it as empty until it is');
        }
        await res.text().catch(() => '');
        this.listApplied = true;
        return { metadata: { resourceVersion: '' }, items: [] };
      }
      if (res.status !== 200) throw await KubeApiError.fromResponse(res, `list ${this.resource.name}`);
      const body = JSON.parse(await res.text()) as unknown;
      if (!isRecord(body) || !Array.isArray(body['items'])) throw new InvalidResponseError(`list ${this.resource.name}: the response is not a list`);
      const meta = body['metadata'];
      const resourceVersion = isRecord(meta) && typeof meta['resourceVersion'] === 'string' ? meta['resourceVersion'] : '';
      if (resourceVersion === '') throw new InvalidResponseError(`list ${this.resource.name}: the list has no resourceVersion to watch from`);
      const items: InformerEntry<D>[] = [];
      let unnamed = 0;
      for (const raw of body['items'] as unknown[]) {
        const e = this.entry(raw, true);
        if (e === undefined) unnamed++;
        else items.push(e);
      }
      if (unnamed > 0) this.log.warn({ count: unnamed }, 'list items without a name skipped');
      this.log.debug({ items: items.length, resourceVersion, fromCache: !this.listedOnce }, 'listed');
      this.listedOnce = true;
      this.listApplied = true;
      this.failures = 0;
      this.notServedLogged = false;
      return { metadata: { resourceVersion }, items };
    } catch (err) {
      if (this.stopped) throw new StoppedError('stopped');
      if (timedOut) throw new DOMException(`list ${this.resource.name}: no complete response within ${2 * this.idleTimeoutMs} ms`, 'TimeoutError');
      throw err;
    } finally {
      clearTimeout(timer);
      res?.release();
      this.controllers.delete(controller);
    }
  }

  private openWatch(path: string, query: Record<string, string | number | boolean | undefined>, callback: WatchCallback, done: DoneCallback): AbortController {
    const controller = new AbortController();
    if (this.stopped) {
      // Never call done: ListWatch then stays idle, which is what stop() wants.
      controller.abort();
      return controller;
    }
    if (this.listApplied) {
      // ListWatch opens the watch right after applying a list: the cache is current.
      this.listApplied = false;
      this.opts.metrics.synced.set(this.labels, 1);
      if (!this.isSynced) {
        this.isSynced = true;
        this.log.info({ resourceVersion: query['resourceVersion'] }, 'initial list applied');
        this.opts.onSynced();
      }
    }
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== '') params.set(k, String(v));
    params.set('watch', 'true');
    params.set('allowWatchBookmarks', 'true');
    // client-go's spread: servers end watches at different times, not all at once.
    params.set('timeoutSeconds', String(Math.floor(this.watchTimeoutSeconds * (1 + this.random()))));
    this.controllers.add(controller);
    this.track(this.runWatch(`${path}?${params.toString()}`, controller, callback, done));
    return controller;
  }

  /** ListWatch's handler is async (it returns a promise the library's Watch ignores); keep any rejection. */
  private dispatch(callback: WatchCallback, type: string, object: unknown): void {
    const r: unknown = callback(type, object);
    if (r instanceof Promise) this.track(r);
  }

  private async runWatch(pathAndQuery: string, controller: AbortController, callback: WatchCallback, done: DoneCallback): Promise<void> {
    let idleTimer: NodeJS.Timeout | undefined;
    let idle = false;
    const arm = (): void => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        idle = true;
        controller.abort();
      }, this.idleTimeoutMs);
    };
    let res: KubeResponse | undefined;
    let reason: RestartReason = 'closed';
    let error: unknown = null;
    try {
      arm();
      res = await this.opts.client.get(pathAndQuery, controller.signal);
      if (res.status !== 200) throw await KubeApiError.fromResponse(res, `watch ${this.resource.name}`);
      this.opts.metrics.synced.set(this.labels, 1);
      const body = res.stream();
      if (body === null) throw new InvalidResponseError(`watch ${this.resource.name}: no response body`);
      arm();
      for await (const line of readLines(body, MAX_EVENT_CHARS)) {
        arm();
        let ev: unknown;
        try {
          ev = JSON.parse(line) as unknown;
        } catch {
          this.log.debug({ chars: line.length }, 'watch line is not JSON; skipped');
          continue;
        }
        if (!isRecord(ev) || typeof ev['type'] !== 'string') continue;
        const type = ev['type'];
        this.opts.metrics.events.inc({ ...this.labels, type: EVENT_TYPES.has(type) ? type : 'UNKNOWN' });
        const object = ev['object'];
        if (type === 'ERROR') {
          const status = asStatus(object) ?? { code: 500, message: 'ERROR event without a Status' };
          this.dispatch(callback, 'ERROR', status); // ListWatch forgets its resourceVersion on 410
          if (status.code === 410) reason = 'gone';
          else {
            error = KubeApiError.fromStatus(status, `watch ${this.resource.name}`);
            reason = classifyFailure(error);
          }
          break; // the server ends the stream after an ERROR
        }
        if (type === 'BOOKMARK') {
          const m = isRecord(object) ? object['metadata'] : undefined;
          const rv = isRecord(m) && typeof m['resourceVersion'] === 'string' ? m['resourceVersion'] : '';
          if (rv !== '') this.dispatch(callback, 'BOOKMARK', { metadata: { resourceVersion: rv } });
        } else if (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED') {
          const e = this.entry(object, type !== 'DELETED');
          if (e === undefined) this.log.warn({ type }, 'watch event without an object name; skipped');
          else this.dispatch(callback, type, e);
        }
        // A watch that delivers is healthy: the next failure starts the backoff afresh.
        this.failures = 0;
      }
    } catch (err) {
      if (controller.signal.aborted && !idle) return; // stop(), or ListWatch replacing it: not a failure
      if (idle) {
        reason = 'timeout';
        error = new DOMException(`watch ${this.resource.name}: nothing received for ${this.idleTimeoutMs} ms`, 'TimeoutError');
      } else {
        reason = classifyFailure(err);
        error = err;
      }
    } finally {
      clearTimeout(idleTimer);
      res?.release();
      this.controllers.delete(controller);
    }
    if (this.stopped) return;
    // ListWatch handles these itself (resume, or re-list after 410); other
    // failures come back through its 'error' callback and failed().
    if (reason === 'closed' || reason === 'timeout' || reason === 'gone') {
      this.opts.metrics.restarts.inc({ ...this.labels, reason });
      if (reason === 'gone') {
        this.opts.metrics.synced.set(this.labels, 0);
        this.log.info({ resourceVersion: this.resourceVersion || undefined }, 'resourceVersion expired (410 Gone); re-listing');
      } else {
        this.log.debug({ reason, resourceVersion: this.resourceVersion }, 'watch ended; resuming');
      }
    }
    const r: unknown = done(error);
    if (r instanceof Promise) this.track(r);
  }
}
