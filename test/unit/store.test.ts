import pino from 'pino';
import { describe, expect, test } from 'vitest';
import { ObjectStore, type StoreChange } from '../../src/model/store.js';
import type { EgressPolicy, Namespace, Pod } from '../../src/model/types.js';

function pod(name: string, opts: { ns?: string; node?: string; ips?: string[]; labels?: Record<string, string>; phase?: string; hostNetwork?: boolean } = {}): Pod {
  const p: Pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: opts.ns ?? 'ml', uid: `uid-${name}`, ...(opts.labels ? { labels: opts.labels } : {}) },
    spec: { containers: [{ name: 'c' }], ...(opts.node ? { nodeName: opts.node } : {}), ...(opts.hostNetwork ? { hostNetwork: true } : {}) },
  };
  if (opts.ips !== undefined || opts.phase !== undefined) {
    p.status = {
      ...(opts.phase ? { phase: opts.phase } : {}),
      ...(opts.ips?.[0] ? { podIP: opts.ips[0], podIPs: opts.ips.map((ip) => ({ ip })) } : {}),
    };
  }
  return p;
}

function ns(name: string, labels: Record<string, string> = {}): Namespace {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: { ...labels, 'kubernetes.io/metadata.name': name } } };
}

function policy(name: string, mode: 'Enforce' | 'Audit' = 'Enforce'): EgressPolicy {
  return { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name, namespace: 'ml' }, spec: { podSelector: {}, mode } };
}

const names = (pods: Pod[]): string[] => pods.map((p) => p.metadata.name).sort();

describe('ObjectStore objects and revisions', () => {
  test('upsert stores an object that get and the typed lists return', () => {
    const s = new ObjectStore();
    s.upsert(pod('a'));
    s.upsert(ns('ml'));
    s.upsert(policy('p'));
    expect(s.get('Pod', 'ml', 'a')?.metadata.uid).toBe('uid-a');
    expect(s.get('Pod', 'other', 'a')).toBeUndefined();
    expect(s.namespace('ml')?.metadata.name).toBe('ml');
    expect(s.get('Namespace', '', 'ml')).toBeDefined();
    expect(names(s.pods())).toEqual(['a']);
    expect(s.egressPolicies().map((p) => p.metadata.name)).toEqual(['p']);
    expect(s.networkPolicies()).toEqual([]);
    expect(s.size).toBe(3);
  });

  test('revision grows by one per change and not for an identical upsert', () => {
    const s = new ObjectStore();
    expect(s.revision).toBe(0);
    expect(s.upsert(policy('p'))).toBe(true);
    expect(s.revision).toBe(1);
    expect(s.upsert(policy('p'))).toBe(false); // deep-equal copy
    expect(s.revision).toBe(1);
    expect(s.upsert(policy('p', 'Audit'))).toBe(true);
    expect(s.revision).toBe(2);
    expect(s.delete('EgressPolicy', 'ml', 'p')).toBe(true);
    expect(s.revision).toBe(3);
    expect(s.delete('EgressPolicy', 'ml', 'p')).toBe(false);
    expect(s.revision).toBe(3);
  });

  test('stored objects are frozen copies: the caller keeps a mutable object and readers cannot mutate the model', () => {
    const s = new ObjectStore();
    const mine = pod('a', { labels: { app: 'x' } });
    s.upsert(mine);
    mine.metadata.name = 'changed';
    expect(s.get('Pod', 'ml', 'a')).toBeDefined();
    const stored = s.get('Pod', 'ml', 'a');
    expect(() => {
      if (stored?.metadata.labels) stored.metadata.labels['app'] = 'y';
    }).toThrow(TypeError);
  });
});

describe('ObjectStore change notifications', () => {
  test('listeners get upsert (with old and new) and delete (with old), after the store is updated', () => {
    const s = new ObjectStore();
    const seen: { change: StoreChange; stored: unknown }[] = [];
    s.onChange((change) => seen.push({ change, stored: s.get('EgressPolicy', 'ml', 'p')?.spec.mode }));
    s.upsert(policy('p'));
    s.upsert(policy('p')); // identical: no change
    s.upsert(policy('p', 'Audit'));
    s.delete('EgressPolicy', 'ml', 'p');
    expect(seen.map(({ change: c }) => [c.type, c.key, c.revision, c.old?.kind === 'EgressPolicy' ? c.old.spec.mode : undefined, c.new?.kind === 'EgressPolicy' ? c.new.spec.mode : undefined])).toEqual([
      ['upsert', 'EgressPolicy/ml/p', 1, undefined, 'Enforce'],
      ['upsert', 'EgressPolicy/ml/p', 2, 'Enforce', 'Audit'],
      ['delete', 'EgressPolicy/ml/p', 3, 'Audit', undefined],
    ]);
    // What the listener read from the store during each call: already updated.
    expect(seen.map((x) => x.stored)).toEqual(['Enforce', 'Audit', undefined]);
  });

  test('a change made inside a listener is delivered after the current change reached every listener', () => {
    const s = new ObjectStore();
    const log: string[] = [];
    s.onChange((c) => {
      log.push(`first ${c.key}`);
      if (c.key === 'Pod/ml/a') s.upsert(pod('b'));
    });
    s.onChange((c) => log.push(`second ${c.key}`));
    s.upsert(pod('a'));
    expect(log).toEqual(['first Pod/ml/a', 'second Pod/ml/a', 'first Pod/ml/b', 'second Pod/ml/b']);
  });

  test('the function returned by onChange unsubscribes', () => {
    const s = new ObjectStore();
    let calls = 0;
    const off = s.onChange(() => calls++);
    s.upsert(pod('a'));
    off();
    s.upsert(pod('b'));
    expect(calls).toBe(1);
  });

  test('a throwing listener does not stop other listeners; with a logger the error is logged, not thrown', () => {
    const lines: string[] = [];
    const logger = pino({ level: 'error' }, { write: (l: string) => lines.push(l) });
    const s = new ObjectStore({ logger });
    let second = 0;
    s.onChange(() => {
      throw new Error('boom');
    });
    s.onChange(() => second++);
    expect(() => s.upsert(pod('a'))).not.toThrow();
    expect(second).toBe(1);
    expect(lines.join('')).toContain('store change listener failed');
    expect(s.get('Pod', 'ml', 'a')).toBeDefined();
  });

  test('without a logger a listener error reaches the caller, after the store and other listeners are updated', () => {
    const s = new ObjectStore();
    let second = 0;
    s.onChange(() => {
      throw new Error('boom');
    });
    s.onChange(() => second++);
    expect(() => s.upsert(pod('a'))).toThrow('boom');
    expect(second).toBe(1);
    expect(s.get('Pod', 'ml', 'a')).toBeDefined();
  });
});

describe('ObjectStore indexes', () => {
  test('podsOnNode and podsInNamespace follow updates and deletions', () => {
    const s = new ObjectStore();
    s.upsert(pod('a', { node: 'n1' }));
    s.upsert(pod('b', { node: 'n1', ns: 'web' }));
    s.upsert(pod('c', { node: 'n2' }));
    s.upsert(pod('d')); // not scheduled
    expect(names(s.podsOnNode('n1'))).toEqual(['a', 'b']);
    expect(names(s.podsInNamespace('ml'))).toEqual(['a', 'c', 'd']);
    s.upsert(pod('a', { node: 'n2' }));
    expect(names(s.podsOnNode('n1'))).toEqual(['b']);
    expect(names(s.podsOnNode('n2'))).toEqual(['a', 'c']);
    s.delete('Pod', 'ml', 'c');
    expect(names(s.podsOnNode('n2'))).toEqual(['a']);
    expect(names(s.podsInNamespace('ml'))).toEqual(['a', 'd']);
    expect(s.podsOnNode('nowhere')).toEqual([]);
  });

  test('podByIP finds pods by every IP, forgets them on change and delete, and skips host-network pods', () => {
    const s = new ObjectStore();
    s.upsert(pod('a', { ips: ['10.0.0.1', 'fd00::1'] }));
    s.upsert(pod('host', { ips: ['192.168.1.5'], hostNetwork: true }));
    expect(s.podByIP('10.0.0.1')?.metadata.name).toBe('a');
    expect(s.podByIP('fd00::1')?.metadata.name).toBe('a');
    expect(s.podByIP('192.168.1.5')).toBeUndefined();
    s.upsert(pod('a', { ips: ['10.0.0.2'] }));
    expect(s.podByIP('10.0.0.1')).toBeUndefined();
    expect(s.podByIP('10.0.0.2')?.metadata.name).toBe('a');
    s.delete('Pod', 'ml', 'a');
    expect(s.podByIP('10.0.0.2')).toBeUndefined();
  });

  test('when an IP is reused, podByIP prefers the running pod over a finished one, then the newest', () => {
    const s = new ObjectStore();
    s.upsert(pod('old', { ips: ['10.0.0.9'], phase: 'Running' }));
    s.upsert(pod('new', { ips: ['10.0.0.9'], phase: 'Pending' }));
    expect(s.podByIP('10.0.0.9')?.metadata.name).toBe('new');
    s.upsert(pod('new', { ips: ['10.0.0.9'], phase: 'Failed' }));
    expect(s.podByIP('10.0.0.9')?.metadata.name).toBe('old');
  });

  test('podsMatching by namespace name applies the podSelector within that namespace only', () => {
    const s = new ObjectStore();
    s.upsert(pod('a', { labels: { app: 'x' } }));
    s.upsert(pod('b', { labels: { app: 'y' } }));
    s.upsert(pod('c', { ns: 'web', labels: { app: 'x' } }));
    expect(names(s.podsMatching({ namespace: 'ml' }, { matchLabels: { app: 'x' } }))).toEqual(['a']);
    expect(names(s.podsMatching({ namespace: 'ml' }, undefined))).toEqual(['a', 'b']);
    expect(names(s.podsMatching({ namespace: 'ml' }, {}))).toEqual(['a', 'b']);
  });

  test('podsMatching by namespaceSelector uses namespace labels; namespaces without an object match by their name label', () => {
    const s = new ObjectStore();
    s.upsert(ns('ml', { tier: 'training' }));
    s.upsert(ns('web', { tier: 'serving' }));
    s.upsert(pod('a', { labels: { app: 'x' } }));
    s.upsert(pod('c', { ns: 'web', labels: { app: 'x' } }));
    s.upsert(pod('d', { ns: 'orphan', labels: { app: 'x' } })); // no Namespace object
    expect(names(s.podsMatching({ namespaceSelector: { matchLabels: { tier: 'serving' } } }, { matchLabels: { app: 'x' } }))).toEqual(['c']);
    expect(names(s.podsMatching({ namespaceSelector: {} }, { matchLabels: { app: 'x' } }))).toEqual(['a', 'c', 'd']);
    expect(names(s.podsMatching({ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'orphan' } } }, undefined))).toEqual(['d']);
    expect(s.namespaceLabels('orphan')).toEqual({ 'kubernetes.io/metadata.name': 'orphan' });
    // Relabelling a namespace changes what it selects, with no pod change.
    s.upsert(ns('web', { tier: 'batch' }));
    expect(s.podsMatching({ namespaceSelector: { matchLabels: { tier: 'serving' } } }, undefined)).toEqual([]);
  });
});
