// The in-memory model every source feeds: validated Kubernetes objects keyed
// by kind/namespace/name (objectKey), with the few indexes the agent needs
// and a change feed.
//
// Contracts:
// - The store owns what it holds. upsert() keeps a deep-frozen copy, so a
//   caller can neither mutate the model behind the indexes' back nor see its
//   own object frozen; everything read from the store is frozen (mutating it
//   throws in strict-mode code).
// - An upsert deep-equal to what is stored is not a change: no revision bump,
//   no notification. Sources can therefore re-apply a full resync freely.
// - `revision` grows by one per change and never goes back.
// - Listeners run after the store (and its indexes) reflect the change, one
//   change at a time: a change made by a listener is queued and delivered
//   after the current one has reached every listener, so each listener sees
//   changes in revision order.

import type { Logger } from 'pino';
import { compileSelector } from './selectors.js';
import { objectKey } from './types.js';
import type {
  ClusterEgressPolicy,
  EgressPolicy,
  EndpointSlice,
  KubeKind,
  KubeObject,
  LabelSelector,
  Namespace,
  NetworkPolicy,
  Pod,
  Service,
} from './types.js';

export type ObjectOfKind<K extends KubeKind> = Extract<KubeObject, { kind: K }>;

export interface StoreChange {
  type: 'upsert' | 'delete';
  kind: KubeKind;
  /** objectKey: `kind/namespace/name`. */
  key: string;
  /** The object before the change; absent for a creation. */
  old?: KubeObject;
  /** The object after the change; absent for a deletion. */
  new?: KubeObject;
  /** The store revision this change produced. */
  revision: number;
}

export type ChangeListener = (change: StoreChange) => void;

/**
 * Which namespaces podsMatching looks in: one namespace by name (a
 * NetworkPolicy peer with only a podSelector), or every namespace whose
 * labels match a selector (`{}` = all namespaces).
 */
export type NamespaceFilter = { namespace: string } | { namespaceSelector: LabelSelector };

export interface ObjectStoreOptions {
  /** Where listener failures are reported; without one they are rethrown to the caller of upsert/delete. */
  logger?: Logger;
}

const KINDS: readonly KubeKind[] = ['Namespace', 'Pod', 'Service', 'EndpointSlice', 'NetworkPolicy', 'EgressPolicy', 'ClusterEgressPolicy'];

const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!deepEqual(a[i], b[i])) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  const ak = Object.keys(a);
  const bk = Object.keys(b);
  if (ak.length !== bk.length) return false;
  const ar = a as Record<string, unknown>;
  const br = b as Record<string, unknown>;
  for (const k of ak) {
    if (!Object.hasOwn(br, k) || !deepEqual(ar[k], br[k])) return false;
  }
  return true;
}

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const child of Object.values(v)) deepFreeze(child);
  }
  return v;
}

/** Pod IPs worth indexing: host-network pods carry the node's IPs, not their own. */
function podIPs(p: Pod): string[] {
  if (p.spec.hostNetwork === true) return [];
  const ips = new Set<string>();
  if (p.status?.podIP !== undefined && p.status.podIP !== '') ips.add(p.status.podIP);
  for (const { ip } of p.status?.podIPs ?? []) if (ip !== '') ips.add(ip);
  return [...ips];
}

function isTerminal(p: Pod): boolean {
  return p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed';
}

/** A multimap from an index value to object keys, in insertion order (newest last). */
class Index {
  private readonly map = new Map<string, Set<string>>();

  add(value: string, key: string): void {
    let set = this.map.get(value);
    if (set === undefined) {
      set = new Set();
      this.map.set(value, set);
    }
    set.delete(key); // re-insert so the newest holder is last
    set.add(key);
  }

  remove(value: string, key: string): void {
    const set = this.map.get(value);
    if (set === undefined) return;
    set.delete(key);
    if (set.size === 0) this.map.delete(value);
  }

  get(value: string): ReadonlySet<string> {
    return this.map.get(value) ?? new Set();
  }

  values(): IterableIterator<string> {
    return this.map.keys();
  }
}

export class ObjectStore {
  private readonly objects = new Map<KubeKind, Map<string, KubeObject>>(KINDS.map((k) => [k, new Map()]));
  private readonly byNode = new Index();
  private readonly byNamespace = new Index();
  private readonly byIP = new Index();
  private readonly listeners = new Set<ChangeListener>();
  private readonly pending: StoreChange[] = [];
  private delivering = false;
  private rev = 0;
  private readonly logger: Logger | undefined;

  constructor(options: ObjectStoreOptions = {}) {
    this.logger = options.logger;
  }

  /** Grows by one with every change; 0 for a new store. */
  get revision(): number {
    return this.rev;
  }

  /** Number of objects held, all kinds. */
  get size(): number {
    let n = 0;
    for (const m of this.objects.values()) n += m.size;
    return n;
  }

  /**
   * Inserts or replaces an object (validated: see validate.ts). Returns
   * whether the store changed; an identical object is not a change.
   */
  upsert(obj: KubeObject): boolean {
    const key = objectKey(obj);
    const byKey = this.kindMap(obj.kind);
    const old = byKey.get(key);
    if (old !== undefined && deepEqual(old, obj)) return false;
    const stored = deepFreeze(structuredClone(obj));
    if (old !== undefined) this.unindex(key, old);
    byKey.set(key, stored);
    this.index(key, stored);
    this.emit(old === undefined ? { type: 'upsert', kind: obj.kind, key, new: stored, revision: ++this.rev } : { type: 'upsert', kind: obj.kind, key, old, new: stored, revision: ++this.rev });
    return true;
  }

  /** Removes an object; returns whether it was there. Cluster-scoped kinds take namespace undefined or ''. */
  delete(kind: KubeKind, namespace: string | undefined, name: string): boolean {
    const key = objectKey({ kind, metadata: { name, namespace: namespace === '' ? undefined : namespace } });
    const byKey = this.kindMap(kind);
    const old = byKey.get(key);
    if (old === undefined) return false;
    byKey.delete(key);
    this.unindex(key, old);
    this.emit({ type: 'delete', kind, key, old, revision: ++this.rev });
    return true;
  }

  get<K extends KubeKind>(kind: K, namespace: string | undefined, name: string): ObjectOfKind<K> | undefined {
    const key = objectKey({ kind, metadata: { name, namespace: namespace === '' ? undefined : namespace } });
    return this.kindMap(kind).get(key) as ObjectOfKind<K> | undefined;
  }

  /** Every object of a kind, in no particular order. */
  list<K extends KubeKind>(kind: K): ObjectOfKind<K>[] {
    return [...this.kindMap(kind).values()] as ObjectOfKind<K>[];
  }

  /** Object keys of a kind (objectKey form). */
  keys(kind: KubeKind): string[] {
    return [...this.kindMap(kind).keys()];
  }

  pods(): Pod[] {
    return this.list('Pod');
  }

  namespaces(): Namespace[] {
    return this.list('Namespace');
  }

  networkPolicies(): NetworkPolicy[] {
    return this.list('NetworkPolicy');
  }

  egressPolicies(): EgressPolicy[] {
    return this.list('EgressPolicy');
  }

  clusterEgressPolicies(): ClusterEgressPolicy[] {
    return this.list('ClusterEgressPolicy');
  }

  services(): Service[] {
    return this.list('Service');
  }

  endpointSlices(): EndpointSlice[] {
    return this.list('EndpointSlice');
  }

  namespace(name: string): Namespace | undefined {
    return this.get('Namespace', undefined, name);
  }

  /**
   * A namespace's labels for namespaceSelector matching. A namespace with no
   * Namespace object (possible with --manifests) is treated as one with only
   * the label the API server puts on every namespace,
   * `kubernetes.io/metadata.name: <name>`.
   */
  namespaceLabels(name: string): Readonly<Record<string, string>> {
    return this.namespace(name)?.metadata.labels ?? { [NAMESPACE_NAME_LABEL]: name };
  }

  /** Pods scheduled to a node (`spec.nodeName`). */
  podsOnNode(nodeName: string): Pod[] {
    return this.podsByKeys(this.byNode.get(nodeName));
  }

  podsInNamespace(namespace: string): Pod[] {
    return this.podsByKeys(this.byNamespace.get(namespace));
  }

  /**
   * Pods selected by a NetworkPolicy-style peer: pods in the namespaces the
   * filter picks whose labels match podSelector (undefined = all pods there).
   */
  podsMatching(filter: NamespaceFilter, podSelector: LabelSelector | undefined): Pod[] {
    const podMatch = podSelector === undefined ? () => true : compileSelector(podSelector);
    let namespaces: string[];
    if ('namespace' in filter) {
      namespaces = [filter.namespace];
    } else {
      const nsMatch = compileSelector(filter.namespaceSelector);
      namespaces = this.namespacesWithPods().filter((ns) => nsMatch(this.namespaceLabels(ns)));
    }
    const out: Pod[] = [];
    for (const ns of namespaces) {
      for (const p of this.podsInNamespace(ns)) if (podMatch(p.metadata.labels)) out.push(p);
    }
    return out;
  }

  /**
   * The pod holding an IP. Host-network pods are not indexed (they share the
   * node's IPs). When IPs are reused, a running pod is preferred over a
   * finished one, then the most recently updated.
   */
  podByIP(ip: string): Pod | undefined {
    let best: Pod | undefined;
    for (const key of this.byIP.get(ip)) {
      const p = this.kindMap('Pod').get(key);
      if (p?.kind !== 'Pod') continue;
      if (best === undefined || !isTerminal(p) || isTerminal(best)) best = p;
    }
    return best;
  }

  /**
   * Calls `cb` after every change, one change at a time. Returns a function
   * that removes the listener.
   */
  onChange(cb: ChangeListener): () => void {
    this.listeners.add(cb);
    return () => {
      this.listeners.delete(cb);
    };
  }

  private kindMap(kind: KubeKind): Map<string, KubeObject> {
    const m = this.objects.get(kind);
    if (m === undefined) throw new TypeError(`ObjectStore: unknown kind ${JSON.stringify(kind)}`);
    return m;
  }

  private namespacesWithPods(): string[] {
    return [...this.byNamespace.values()];
  }

  private podsByKeys(keys: ReadonlySet<string>): Pod[] {
    const pods = this.kindMap('Pod');
    const out: Pod[] = [];
    for (const k of keys) {
      const p = pods.get(k);
      if (p?.kind === 'Pod') out.push(p);
    }
    return out;
  }

  private index(key: string, o: KubeObject): void {
    if (o.kind !== 'Pod') return;
    if (o.spec.nodeName !== undefined) this.byNode.add(o.spec.nodeName, key);
    this.byNamespace.add(o.metadata.namespace, key);
    for (const ip of podIPs(o)) this.byIP.add(ip, key);
  }

  private unindex(key: string, o: KubeObject): void {
    if (o.kind !== 'Pod') return;
    if (o.spec.nodeName !== undefined) this.byNode.remove(o.spec.nodeName, key);
    this.byNamespace.remove(o.metadata.namespace, key);
    for (const ip of podIPs(o)) this.byIP.remove(ip, key);
  }

  private emit(change: StoreChange): void {
    this.pending.push(change);
    if (this.delivering) return; // the outer emit drains the queue
    this.delivering = true;
    let failure: unknown;
    let failed = false;
    try {
      for (let c = this.pending.shift(); c !== undefined; c = this.pending.shift()) {
        for (const cb of [...this.listeners]) {
          try {
            cb(c);
          } catch (err) {
            if (this.logger !== undefined) {
              this.logger.error({ err, change: { type: c.type, key: c.key, revision: c.revision } }, 'store change listener failed');
            } else if (!failed) {
              failed = true;
              failure = err;
            }
          }
        }
      }
    } finally {
      this.delivering = false;
    }
    if (failed) throw failure;
  }
}
