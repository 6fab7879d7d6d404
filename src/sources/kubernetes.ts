// The cluster source (`weir agent`, the default): Namespaces, Pods,
// Services, EndpointSlices, NetworkPolicies and weir's EgressPolicies and
// ClusterEgressPolicies, read from the Kubernetes API and fed into the
// ObjectStore. One informer per resource (kube-informer.ts says which parts
// come from @kubernetes/client-node and which are built here, and why).
//
// Pods: one informer for every Pod in the cluster, not one for this node's
// pods plus one for the rest. Policies select peers anywhere in the cluster,
// so all pods are needed anyway, and this node's pods are a subset the store
// indexes by spec.nodeName (ObjectStore.podsOnNode); a second, node-scoped
// watch would carry the same events twice. `podScope: 'node'` narrows the
// informer to `spec.nodeName=<nodeName>` instead, for nodes whose policies
// use no pod selectors for peers (ipBlock and FQDN rules only).
//
// What reaches the store: every object goes through validateObject (API
// defaults applied, fields weir does not read dropped), and metadata's
// resourceVersion is dropped too, so a status-only change of a Pod (most
// Pod updates) is deep-equal to what the store holds and causes no
// recomputation. An object that fails validation is logged (kind,
// namespace, name, field), counted and reported through onError; the store
// keeps its last good version. Deletions, and objects missing from a
// re-list after 410 Gone, are removed.
//
// Outages: while the API server is unreachable nothing is removed from the
// store; enforcement continues on the last known state. Informers retry with
// backoff and resume from their last resourceVersion; only if the server has
// compacted past it (410) is the resource listed again, and only objects
// absent from that new list are deleted.
//
// Metrics: weir_watch_restarts_total{resource,reason},
// weir_watch_events_total{resource,type}, weir_watch_synced{resource} (1
// while the resource is listed and its watch connected, 0 while it is
// re-listing or failing) and weir_watch_invalid_objects_total{resource}.
//
// Secrets: the bearer token and client keys stay inside the client
// library's request context; nothing here logs a request, a header or the
// kubeconfig.

import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ObjectStore } from '../model/store.js';
import { describeObject, validateObject, type ValidationError, type ValidationResult } from '../model/validate.js';
import { KubeClient, loadKubeConfig } from './kube-client.js';
import { ResourceInformer, type BackoffOptions, type InformerEntry, type RestartReason, type WatchFailure, type WatchMetrics } from './kube-informer.js';
import { KUBE_RESOURCES, type KubeResource, type KubeResourceName } from './kube-resources.js';
import type { Source } from './source.js';

export type { BackoffOptions, RestartReason } from './kube-informer.js';
export type { KubeResourceName } from './kube-resources.js';

export interface KubernetesSourceError {
  /** `invalid`: an object failed validation. `watch`: a list or watch started failing (reported once per streak). */
  reason: 'invalid' | 'watch';
  resource: KubeResourceName;
  /** `Kind namespace/name`, for invalid objects. */
  object?: string;
  kind?: string;
  namespace?: string;
  name?: string;
  /** Field path of the first problem, for invalid objects. */
  field?: string;
  /** HTTP status, for watch errors that had one. */
  status?: number;
  /** Why the watch failed, for watch errors. */
  watchReason?: RestartReason;
  message: string;
  validation?: ValidationError;
}

export interface KubernetesSourceOptions {
  /** A kubeconfig file; default: in-cluster service account, else KUBECONFIG or ~/.kube/config. */
  kubeconfig?: string;
  /** This node (`--node-name`); required with podScope 'node'. */
  nodeName: string | null;
  store: ObjectStore;
  logger: Logger;
  registry: Registry;
  onError?: (error: KubernetesSourceError) => void;
  /** 'cluster' (default): every Pod. 'node': only Pods with spec.nodeName = nodeName. */
  podScope?: 'cluster' | 'node';
  /** Retry delays after failures (default 0.8 s doubling to 30 s, jittered). */
  backoff?: BackoffOptions;
  /** Server-side watch duration, jittered up to twice this (default 300 s). */
  watchTimeoutSeconds?: number;
  /** Re-open a watch that delivers nothing, not even a bookmark, for this long (default 150 s). */
  idleTimeoutMs?: number;
}

export interface ResourceStatus {
  resource: KubeResourceName;
  /** The initial list has been applied. */
  synced: boolean;
  /** Where the watch resumes from; '' before the first list and while re-listing. */
  resourceVersion: string;
}

type Entry = InformerEntry<ValidationResult>;

function safeServer(server: string): string {
  try {
    return new URL(server).origin; // no userinfo, no path
  } catch {
    return '<unparsable server URL>';
  }
}

export class KubernetesSource implements Source {
  private readonly kubeconfig: string | undefined;
  private readonly nodeName: string | null;
  private readonly podScope: 'cluster' | 'node';
  private readonly store: ObjectStore;
  private readonly log: Logger;
  private readonly onError: ((error: KubernetesSourceError) => void) | undefined;
  private readonly options: KubernetesSourceOptions;
  private readonly metrics: WatchMetrics & { invalid: Counter<'resource'> };

  private informers: ResourceInformer<ValidationResult>[] = [];
  private started = false;
  private stopped = false;
  private isSynced = false;
  private syncWaiter: { resolve: () => void; reject: (err: Error) => void } | undefined;

  constructor(options: KubernetesSourceOptions) {
    this.options = options;
    this.kubeconfig = options.kubeconfig;
    this.nodeName = options.nodeName;
    this.podScope = options.podScope ?? 'cluster';
    if (this.podScope === 'node' && (this.nodeName === null || this.nodeName === '')) {
      throw new TypeError("KubernetesSource: podScope 'node' needs a nodeName");
    }
    this.store = options.store;
    this.log = options.logger.child({ component: 'kubernetes' });
    this.onError = options.onError;
    const registers = [options.registry];
    this.metrics = {
      restarts: new Counter({
        name: 'weir_watch_restarts_total',
        help: 'Lists and watches of the Kubernetes API started again, by resource and why the previous one ended',
        labelNames: ['resource', 'reason'],
        registers,
      }),
      events: new Counter({ name: 'weir_watch_events_total', help: 'Watch events received from the Kubernetes API, by resource and type', labelNames: ['resource', 'type'], registers }),
      synced: new Gauge({
        name: 'weir_watch_synced',
        help: '1 while the resource is listed and its watch is connected, 0 while it is (re-)listing or failing',
        labelNames: ['resource'],
        registers,
      }),
      invalid: new Counter({
        name: 'weir_watch_invalid_objects_total',
        help: 'Objects from the Kubernetes API refused by validation (the previous version stays in effect), by resource',
        labelNames: ['resource'],
        registers,
      }),
    };
  }

  /** True once every resource has completed its initial list. */
  get synced(): boolean {
    return this.isSynced;
  }

  /** Per-resource state, for `weir status` and tests. */
  status(): ResourceStatus[] {
    return this.informers.map((i) => ({ resource: i.resource.name, synced: i.synced, resourceVersion: i.resourceVersion }));
  }

  async start(): Promise<void> {
    if (this.started) throw new Error('KubernetesSource: start() called twice');
    this.started = true;
    // Configuration errors reject start(): retrying cannot fix them.
    const kubeConfig = loadKubeConfig(this.kubeconfig);
    const client = new KubeClient(kubeConfig);
    await client.verify();
    if (this.stopped) throw new Error('KubernetesSource: stopped before the first sync');

    const synced = new Promise<void>((resolve, reject) => {
      this.syncWaiter = { resolve, reject };
    });
    let pending = KUBE_RESOURCES.length;
    for (const resource of KUBE_RESOURCES) {
      const fieldSelector = resource.kind === 'Pod' && this.podScope === 'node' ? `spec.nodeName=${this.nodeName ?? ''}` : undefined;
      const informer = new ResourceInformer<ValidationResult>({
        resource,
        kubeConfig,
        client,
        ...(fieldSelector !== undefined ? { fieldSelector } : {}),
        decode: (raw) => validateObject(raw),
        onUpsert: (e) => this.upsert(resource, e),
        onDelete: (e) => this.remove(resource, e),
        onSynced: () => {
          if (--pending === 0) this.allSynced();
        },
        onFailure: (f) => this.watchFailed(resource, f),
        metrics: this.metrics,
        logger: this.log,
        ...(this.options.backoff !== undefined ? { backoff: this.options.backoff } : {}),
        ...(this.options.watchTimeoutSeconds !== undefined ? { watchTimeoutSeconds: this.options.watchTimeoutSeconds } : {}),
        ...(this.options.idleTimeoutMs !== undefined ? { idleTimeoutMs: this.options.idleTimeoutMs } : {}),
      });
      this.informers.push(informer);
    }
    this.log.info({ server: safeServer(client.server), nodeName: this.nodeName, podScope: this.podScope, resources: KUBE_RESOURCES.length }, 'starting Kubernetes informers');
    for (const i of this.informers) i.start();
    await synced;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (!this.isSynced) this.syncWaiter?.reject(new Error('KubernetesSource: stopped before the first sync'));
    await Promise.all(this.informers.map((i) => i.stop()));
    this.log.info('Kubernetes informers stopped');
  }

  private allSynced(): void {
    this.isSynced = true;
    this.log.info({ objects: this.store.size }, 'every resource listed; the model is synced');
    this.syncWaiter?.resolve();
  }

  private upsert(resource: KubeResource, entry: Entry): void {
    const r = entry.decoded;
    // The informer's cache keeps the identity only; the object lives in the store.
    delete entry.decoded;
    if (r === undefined) return;
    if (r.ok) {
      // Not compared, not needed downstream, and it changes with every
      // status update: without it those updates are no-ops in the store.
      delete r.object.metadata.resourceVersion;
      try {
        this.store.upsert(r.object);
      } catch (err) {
        // A store listener threw; the store itself is updated.
        this.log.error({ err, object: describeObject(r.object) }, 'store listener failed on upsert');
      }
      return;
    }
    if (r.ignored) {
      this.log.debug({ resource: resource.name, apiVersion: r.apiVersion, kind: r.kind, name: entry.metadata.name }, 'object of a kind weir does not read; ignored');
      return;
    }
    const e = r.error;
    const { name, namespace, resourceVersion } = entry.metadata;
    const kept = this.store.get(resource.kind, namespace, name) !== undefined;
    this.metrics.invalid.inc({ resource: resource.name });
    this.log.error(
      { resource: resource.name, kind: resource.kind, namespace, name, field: e.field, resourceVersion, keptPrevious: kept },
      `${e.message}; ${kept ? 'the previous version stays in effect' : 'the object is ignored until it is fixed'}`,
    );
    this.report({
      reason: 'invalid',
      resource: resource.name,
      object: e.object ?? describeObject({ kind: resource.kind, metadata: { name, ...(namespace !== undefined ? { namespace } : {}) } }),
      kind: resource.kind,
      ...(namespace !== undefined ? { namespace } : {}),
      name,
      field: e.field,
      message: e.message,
      validation: e,
    });
  }

  private remove(resource: KubeResource, entry: Entry): void {
    const { name, namespace } = entry.metadata;
    try {
      this.store.delete(resource.kind, namespace, name);
    } catch (err) {
      this.log.error({ err, object: describeObject({ kind: resource.kind, metadata: { name, ...(namespace !== undefined ? { namespace } : {}) } }) }, 'store listener failed on delete');
    }
  }

  private watchFailed(resource: KubeResource, f: WatchFailure): void {
    if (f.attempt !== 1) return; // once per streak of failures; the log has every attempt
    this.report({
      reason: 'watch',
      resource: resource.name,
      ...(f.status !== undefined ? { status: f.status } : {}),
      watchReason: f.reason,
      message: `${resource.name}: ${f.message}; retrying in ${f.delayMs} ms (the objects already known stay in effect)`,
    });
  }

  private report(error: KubernetesSourceError): void {
    try {
      this.onError?.(error);
    } catch (err) {
      this.log.error({ err }, 'onError callback failed');
    }
  }
}
