// The StateWriter's half of DNS-aware egress, on in-memory maps that record
// every operation: each set's fqdn keys in weir_fqdn_keys (hashed with the
// node's secret, port classes shared with the trie's), the set's
// WEIR_SET_F_FQDN flag written only after its keys and cleared before they
// go, the trusted resolvers in weir_dns_resolvers, and the reconcile of all
// of it by a restarted agent (adopt). test/kernel/fqdn-writer.test.ts runs
// the same writer against the real programs.
import { describe, expect, test } from 'vitest';
import { pino } from 'pino';
import {
  CONST,
  decodeDnsKey,
  decodeDnsResolverKey,
  decodeFqdnKeyValue,
  decodeSetValue,
  encodeDnsKey,
  encodeDnsResolverKey,
  encodeDnsResolverValue,
  encodeFqdnKeyValue,
  encodePortClass,
  u32Key,
} from '../../src/datapath/abi.js';
import { StateWriter, type PodBinding, type PolicyMaps, type WritableMap } from '../../src/datapath/state-writer.js';
import { ObjectStore } from '../../src/model/store.js';
import { validateObject } from '../../src/model/validate.js';
import { PolicyEngine, type DesiredState } from '../../src/policy/engine.js';
import { nameHash } from '../../src/policy/fqdn-hash.js';
import { bytesToAddress } from '../../src/policy/prefix.js';

const SECRET = 0x0123456789abcdefn;

/** A map in memory; every write and delete is appended to `ops` as "<map> <op> <key hex>". */
class FakeMap implements WritableMap {
  readonly data = new Map<string, Buffer>();
  constructor(
    readonly name: string,
    readonly maxEntries: number,
    private readonly ops: string[],
    private readonly array = false,
  ) {}
  lookup(key: Buffer): Buffer | null {
    return this.data.get(key.toString('hex')) ?? null;
  }
  update(key: Buffer, value: Buffer): void {
    const hex = key.toString('hex');
    if (!this.array && !this.data.has(hex) && this.data.size >= this.maxEntries) throw Object.assign(new Error(`${this.name}: E2BIG`), { code: 'E2BIG' });
    this.data.set(hex, Buffer.from(value));
    this.ops.push(`${this.name} update ${hex}`);
  }
  delete(key: Buffer): boolean {
    const hex = key.toString('hex');
    this.ops.push(`${this.name} delete ${hex}`);
    return this.data.delete(hex);
  }
  updateBatch(keys: Buffer, values: Buffer, count: number): void {
    const ks = keys.length / count;
    const vs = values.length / count;
    for (let i = 0; i < count; i++) this.update(keys.subarray(i * ks, (i + 1) * ks), values.subarray(i * vs, (i + 1) * vs));
  }
  dump(): { keys: Buffer; values: Buffer; count: number } {
    const e = [...this.data];
    return { keys: Buffer.concat(e.map(([k]) => Buffer.from(k, 'hex'))), values: Buffer.concat(e.map(([, v]) => v)), count: e.length };
  }
}

interface World {
  ops: string[];
  maps: Record<'pods' | 'podIps' | 'sets' | 'nodes' | 'classes' | 'fqdnKeys' | 'dnsResolvers', FakeMap>;
  store: ObjectStore;
  engine: PolicyEngine;
  writer: StateWriter;
  state(): DesiredState;
  bindings(state: DesiredState): PodBinding[];
  apply(): ReturnType<StateWriter['apply']>;
  restart(): StateWriter;
}

function world(caps: { fqdnKeys?: number; resolvers?: number } = {}): World {
  const ops: string[] = [];
  const maps = {
    pods: new FakeMap('weir_pods', 64, ops),
    podIps: new FakeMap('weir_pod_ips', 128, ops),
    sets: new FakeMap('weir_sets', 16, ops, true),
    nodes: new FakeMap('weir_nodes', 256, ops, true),
    classes: new FakeMap('weir_classes', 64, ops, true),
    fqdnKeys: new FakeMap('weir_fqdn_keys', caps.fqdnKeys ?? 64, ops),
    dnsResolvers: new FakeMap('weir_dns_resolvers', caps.resolvers ?? 16, ops),
  };
  const newWriter = (): StateWriter => new StateWriter(maps as PolicyMaps, { graceMs: 0, maxEndpoints: 64, dnsSecret: () => SECRET }, pino({ level: 'silent' }));
  const store = new ObjectStore();
  const engine = new PolicyEngine('node-1');
  const w: World = {
    ops,
    maps,
    store,
    engine,
    writer: newWriter(),
    state: () => engine.compute(store),
    bindings: (state) => state.pods.map((p) => ({ uid: p.uid, namespace: p.namespace, name: p.name, cgroupId: BigInt(1000 + Number(p.uid.slice(1))), setKey: p.setKey })),
    apply: () => {
      const state = w.state();
      return w.writer.apply(state, w.bindings(state));
    },
    restart: () => {
      w.writer = newWriter();
      w.writer.adopt();
      return w.writer;
    },
  };
  add(w, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ml' } });
  add(w, ...dnsService(['10.244.0.53']));
  return w;
}

function add(w: World, ...raw: unknown[]): void {
  for (const r of raw) {
    const v = validateObject(r);
    if (!v.ok) throw new Error(v.ignored ? 'ignored' : v.error.message);
    w.store.upsert(v.object);
  }
}

function dnsService(backends: string[]): unknown[] {
  return [
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: 'kube-system' },
      spec: { clusterIP: '10.96.0.10', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] },
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

let uid = 0;
function pod(w: World, name: string, app: string): void {
  uid++;
  add(w, {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: 'ml', uid: `u${uid}`, labels: { app } },
    spec: { nodeName: 'node-1', containers: [{ name: 'c' }] },
    status: { phase: 'Running', podIPs: [{ ip: `10.244.1.${uid}` }] },
  });
}

function policy(w: World, name: string, app: string, egress: unknown[]): void {
  add(w, { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata: { name, namespace: 'ml' }, spec: { podSelector: { matchLabels: { app } }, egress } });
}

const fqdnRule = (names: string[], port = 443): unknown => ({ to: names.map((n) => (n.startsWith('*') ? { fqdn: { matchPattern: n } } : { fqdn: { matchName: n } })), ports: [{ protocol: 'TCP', port }] });

const exactKey = (setId: number, name: string): string => encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_EXACT, hash: nameHash(SECRET, name) }).toString('hex');
const wildKey = (setId: number, suffix: string): string => encodeDnsKey({ setId, kind: CONST.WEIR_DNS_KEY_WILDCARD, hash: nameHash(SECRET, suffix) }).toString('hex');
const setKeyOf = (app: string): string => `EgressPolicy/ml/${app}`;
const setFlags = (w: World, id: number): number => decodeSetValue(w.maps.sets.lookup(u32Key(id)) as Buffer).flags;
const keysOfSet = (w: World, id: number): string[] => [...w.maps.fqdnKeys.data.keys()].filter((h) => decodeDnsKey(Buffer.from(h, 'hex')).setId === id).sort();
const opIndex = (w: World, op: string): number => w.ops.indexOf(op);

describe('a set with fqdn peers', () => {
  test('its keys (keyed hashes of the name, and of the suffix for a wildcard) are written before the set value, which has WEIR_SET_F_FQDN; a set without fqdn peers has neither', () => {
    const w = world();
    pod(w, 'a', 'trainer');
    pod(w, 'b', 'plain');
    policy(w, 'trainer', 'trainer', [fqdnRule(['api.models.example.com', '*.hf.co'])]);
    policy(w, 'plain', 'plain', [{ to: [{ ipBlock: { cidr: '192.0.2.0/24' } }], ports: [{ port: 443 }] }]);
    const res = w.apply();
    expect(res.failedSets).toEqual([]);
    expect(res.fqdnKeysWritten).toBe(2);
    const id = w.writer.setIdOf(setKeyOf('trainer')) as number;
    const plain = w.writer.setIdOf(setKeyOf('plain')) as number;
    expect(keysOfSet(w, id)).toEqual([exactKey(id, 'api.models.example.com'), wildKey(id, 'hf.co')].sort());
    expect(keysOfSet(w, plain)).toEqual([]);
    expect(setFlags(w, id) & CONST.WEIR_SET_F_FQDN).toBe(CONST.WEIR_SET_F_FQDN);
    expect(setFlags(w, plain) & CONST.WEIR_SET_F_FQDN).toBe(0);
    // Each key names a class whose content is the key's compiled class, written before the key.
    const set = w.state().sets.get(setKeyOf('trainer'));
    for (const k of set?.fqdn ?? []) {
      const hex = k.matcher.kind === 'name' ? exactKey(id, k.matcher.name) : wildKey(id, k.matcher.suffix);
      const cls = decodeFqdnKeyValue(w.maps.fqdnKeys.data.get(hex) as Buffer);
      expect(cls).toBeGreaterThan(0);
      expect(w.maps.classes.lookup(u32Key(cls))).toEqual(encodePortClass(k.cls));
      expect(opIndex(w, `weir_classes update ${u32Key(cls).toString('hex')}`)).toBeLessThan(opIndex(w, `weir_fqdn_keys update ${hex}`));
      expect(opIndex(w, `weir_fqdn_keys update ${hex}`)).toBeLessThan(opIndex(w, `weir_sets update ${u32Key(id).toString('hex')}`));
    }
    expect(w.writer.usage().weir_fqdn_keys).toEqual({ used: 2, capacity: 64 });
  });

  test('port classes are shared with the trie: an fqdn rule and an ipBlock rule with the same ports use one class', () => {
    const w = world();
    pod(w, 'a', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['api.models.example.com']), { to: [{ ipBlock: { cidr: '192.0.2.0/24' } }], ports: [{ protocol: 'TCP', port: 443 }] }]);
    w.apply();
    const id = w.writer.setIdOf(setKeyOf('trainer')) as number;
    const cls = decodeFqdnKeyValue(w.maps.fqdnKeys.data.get(exactKey(id, 'api.models.example.com')) as Buffer);
    // Classes in use: TCP 443 (the ipBlock and the name), UDP+TCP 53 and 5353 for the implied DNS rule (one class per resolver address).
    const classes = [...w.maps.classes.data.keys()].map((h) => Buffer.from(h, 'hex').readUInt32LE(0));
    expect(classes).toContain(cls);
    expect(w.writer.usage().weir_classes?.used).toBe(classes.length);
    const distinct = new Set([...w.maps.classes.data.values()].map((v) => v.toString('hex')));
    expect(distinct.size).toBe(classes.length);
  });

  test('an unchanged state writes nothing; a name removed is deleted after the set is rewritten, a name added written before', () => {
    const w = world();
    pod(w, 'a', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com', 'b.example.com'])]);
    w.apply();
    const id = w.writer.setIdOf(setKeyOf('trainer')) as number;
    w.ops.length = 0;
    expect(w.apply().fqdnKeysWritten).toBe(0);
    expect(w.ops).toEqual([]);
    policy(w, 'trainer', 'trainer', [fqdnRule(['b.example.com', 'c.example.com'])]);
    const res = w.apply();
    expect([res.fqdnKeysWritten, res.fqdnKeysRemoved]).toEqual([1, 1]);
    expect(keysOfSet(w, id)).toEqual([exactKey(id, 'b.example.com'), exactKey(id, 'c.example.com')].sort());
    const setWrite = opIndex(w, `weir_sets update ${u32Key(id).toString('hex')}`);
    expect(opIndex(w, `weir_fqdn_keys update ${exactKey(id, 'c.example.com')}`)).toBeLessThan(setWrite);
    expect(opIndex(w, `weir_fqdn_keys delete ${exactKey(id, 'a.example.com')}`)).toBeGreaterThan(setWrite);
    expect(setFlags(w, id) & CONST.WEIR_SET_F_FQDN).toBe(CONST.WEIR_SET_F_FQDN);
  });

  test('a key whose ports change is rewritten in place (the same key, a new class)', () => {
    const w = world();
    pod(w, 'a', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'], 443)]);
    w.apply();
    const id = w.writer.setIdOf(setKeyOf('trainer')) as number;
    const k = exactKey(id, 'a.example.com');
    const before = decodeFqdnKeyValue(w.maps.fqdnKeys.data.get(k) as Buffer);
    w.ops.length = 0;
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'], 8443)]);
    const res = w.apply();
    expect([res.fqdnKeysWritten, res.fqdnKeysRemoved]).toEqual([1, 0]);
    const after = decodeFqdnKeyValue(w.maps.fqdnKeys.data.get(k) as Buffer);
    expect(after).not.toBe(before);
    expect(w.ops.filter((o) => o.startsWith('weir_fqdn_keys'))).toEqual([`weir_fqdn_keys update ${k}`]);
  });

  test('the last fqdn peer removed: the flag is cleared before the keys are deleted; a removed set: its value is cleared, then its keys deleted', () => {
    const w = world();
    pod(w, 'a', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'])]);
    w.apply();
    const id = w.writer.setIdOf(setKeyOf('trainer')) as number;
    w.ops.length = 0;
    policy(w, 'trainer', 'trainer', [{ to: [{ ipBlock: { cidr: '192.0.2.0/24' } }] }]);
    w.apply();
    expect(setFlags(w, id) & CONST.WEIR_SET_F_FQDN).toBe(0);
    expect(keysOfSet(w, id)).toEqual([]);
    expect(opIndex(w, `weir_sets update ${u32Key(id).toString('hex')}`)).toBeLessThan(opIndex(w, `weir_fqdn_keys delete ${exactKey(id, 'a.example.com')}`));

    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'])]);
    w.apply();
    w.ops.length = 0;
    w.store.delete('EgressPolicy', 'ml', 'trainer');
    const res = w.apply();
    expect(res.setsRemoved).toBe(1);
    expect(res.fqdnKeysRemoved).toBe(1);
    expect(w.maps.fqdnKeys.data.size).toBe(0);
    expect(opIndex(w, `weir_sets update ${u32Key(id).toString('hex')}`)).toBeLessThan(opIndex(w, `weir_fqdn_keys delete ${exactKey(id, 'a.example.com')}`));
  });

  test('weir_fqdn_keys full: the set is refused whole (no key of it left, no flag), and a set already written keeps its last good version', () => {
    const w = world({ fqdnKeys: 2 });
    pod(w, 'a', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com', 'b.example.com'])]);
    expect(w.apply().failedSets).toEqual([]);
    const id = w.writer.setIdOf(setKeyOf('trainer')) as number;
    const good = new Map(w.maps.fqdnKeys.data);
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com', 'c.example.com', 'd.example.com'])]);
    const res = w.apply();
    expect(res.failedSets.map((f) => f.error)).toEqual([expect.stringMatching(/weir_fqdn_keys is full/)]);
    expect(w.maps.fqdnKeys.data).toEqual(good);
    expect(setFlags(w, id) & CONST.WEIR_SET_F_FQDN).toBe(CONST.WEIR_SET_F_FQDN);
    // A new set that does not fit: nothing of it written, its pods point at no set.
    pod(w, 'n', 'new');
    policy(w, 'new', 'new', [fqdnRule(['x.example.com'])]);
    const r2 = w.apply();
    expect(r2.failedSets.map((f) => f.key)).toEqual(expect.arrayContaining([setKeyOf('new')]));
    expect(w.writer.setIdOf(setKeyOf('new'))).toBeUndefined();
    expect(w.maps.fqdnKeys.data).toEqual(good);
    // Room again (the old names back): written.
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'])]);
    w.store.delete('EgressPolicy', 'ml', 'new');
    expect(w.apply().failedSets).toEqual([]);
  });
});

describe('trusted resolvers (weir_dns_resolvers)', () => {
  const entries = (w: World): string[] =>
    [...w.maps.dnsResolvers.data.keys()]
      .map((h) => {
        const k = decodeDnsResolverKey(Buffer.from(h, 'hex'));
        return `${bytesToAddress(k.family === 2 ? 4 : 6, k.addr)}:${k.port}`;
      })
      .sort();

  test('the DNS Service ClusterIP on 53 and each ready backend on its target port; a backend change adds the new one before removing the old', () => {
    const w = world();
    pod(w, 'a', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'])]);
    const res = w.apply();
    expect(res.resolversWritten).toBe(2);
    expect(entries(w)).toEqual(['10.244.0.53:5353', '10.96.0.10:53']);
    expect(w.writer.resolverEntries()).toEqual([
      { ip: '10.244.0.53', port: 5353 },
      { ip: '10.96.0.10', port: 53 },
    ]);
    w.ops.length = 0;
    add(w, ...dnsService(['10.244.0.54']));
    const r2 = w.apply();
    expect([r2.resolversWritten, r2.resolversRemoved]).toEqual([1, 1]);
    expect(entries(w)).toEqual(['10.244.0.54:5353', '10.96.0.10:53']);
    const added = w.ops.findIndex((o) => o.startsWith('weir_dns_resolvers update'));
    const removed = w.ops.findIndex((o) => o.startsWith('weir_dns_resolvers delete'));
    expect(added).toBeGreaterThanOrEqual(0);
    expect(added).toBeLessThan(removed);
  });

  test('configured addresses are trusted on port 53; with the Service gone only they remain', () => {
    const w = world();
    const engine = new PolicyEngine('node-1', { resolvers: { service: 'kube-system/kube-dns', addresses: ['169.254.20.10', 'fd00::a'] } });
    const state = engine.compute(w.store);
    w.writer.apply(state, []);
    expect(entries(w)).toEqual(['10.244.0.53:5353', '10.96.0.10:53', '169.254.20.10:53', 'fd00::a:53']);
    w.store.delete('Service', 'kube-system', 'kube-dns');
    w.writer.apply(engine.compute(w.store), []);
    expect(entries(w)).toEqual(['169.254.20.10:53', 'fd00::a:53']);
  });

  test('a state not made by the engine (no resolvers field) leaves the map alone', () => {
    const w = world();
    w.apply();
    const before = entries(w);
    expect(before.length).toBe(2);
    w.writer.apply({ pods: [], sets: new Map(), policies: [], problems: [] }, []);
    expect(entries(w)).toEqual(before);
  });
});

describe('restart: a new writer adopts the keys and resolvers and reconciles them', () => {
  function written(): { w: World; id: number } {
    const w = world();
    pod(w, 'a', 'trainer');
    pod(w, 'b', 'trainer');
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com', 'b.example.com', '*.hf.co'])]);
    w.apply();
    return { w, id: w.writer.setIdOf(setKeyOf('trainer')) as number };
  }

  test('nothing changed: adopt reports them, and the first apply writes nothing', () => {
    const { w, id } = written();
    const writer = w.restart();
    w.ops.length = 0;
    const res = w.apply();
    expect(w.ops).toEqual([]);
    expect(res.reconciled?.weir_fqdn_keys).toEqual({ added: 0, removed: 0, rewritten: 0 });
    expect(res.reconciled?.weir_dns_resolvers).toEqual({ added: 0, removed: 0, rewritten: 0 });
    expect(writer.setIdOf(setKeyOf('trainer'))).toBe(id);
    expect(writer.fqdnKeysOfSet(setKeyOf('trainer')).size).toBe(3);
    // And the next change is diffed against what was adopted.
    policy(w, 'trainer', 'trainer', [fqdnRule(['a.example.com'])]);
    const r2 = w.apply();
    expect([r2.fqdnKeysWritten, r2.fqdnKeysRemoved]).toEqual([0, 2]);
    expect(keysOfSet(w, id)).toEqual([exactKey(id, 'a.example.com')]);
  });

  test('edited behind its back: a missing key added, a wrong class rewritten, stale keys (another set id, a name no rule has) and a stale resolver removed, each counted', () => {
    const { w, id } = written();
    const want = new Map(w.maps.fqdnKeys.data);
    const wantResolvers = new Map(w.maps.dnsResolvers.data);
    const fk = w.maps.fqdnKeys.data;
    fk.delete(exactKey(id, 'a.example.com'));
    fk.set(exactKey(id, 'b.example.com'), encodeFqdnKeyValue(0));
    fk.set(exactKey(id, 'evil.example.com'), encodeFqdnKeyValue(1));
    fk.set(exactKey(9, 'a.example.com'), encodeFqdnKeyValue(1));
    w.maps.dnsResolvers.data.set(encodeDnsResolverKey({ family: 2, port: 53, addr: Uint8Array.of(192, 0, 2, 53) }).toString('hex'), encodeDnsResolverValue());
    w.maps.dnsResolvers.data.delete(encodeDnsResolverKey({ family: 2, port: 53, addr: Uint8Array.of(10, 96, 0, 10) }).toString('hex'));
    w.restart();
    const res = w.apply();
    expect(res.reconciled?.weir_fqdn_keys).toEqual({ added: 1, removed: 2, rewritten: 1 });
    expect(res.reconciled?.weir_dns_resolvers).toEqual({ added: 1, removed: 1, rewritten: 0 });
    expect(new Map(w.maps.fqdnKeys.data)).toEqual(want);
    expect(new Map(w.maps.dnsResolvers.data)).toEqual(wantResolvers);
    expect(setFlags(w, id) & CONST.WEIR_SET_F_FQDN).toBe(CONST.WEIR_SET_F_FQDN);
  });

  test('the flag cleared behind its back is set again; a set gone while no agent ran loses its value, then its keys', () => {
    const { w, id } = written();
    const v = decodeSetValue(w.maps.sets.lookup(u32Key(id)) as Buffer);
    const cleared = Buffer.from(w.maps.sets.lookup(u32Key(id)) as Buffer);
    cleared.writeUInt32LE(v.flags & ~CONST.WEIR_SET_F_FQDN, 8);
    w.maps.sets.data.set(u32Key(id).toString('hex'), cleared);
    w.restart();
    expect(w.apply().reconciled?.weir_sets.rewritten).toBe(1);
    expect(setFlags(w, id) & CONST.WEIR_SET_F_FQDN).toBe(CONST.WEIR_SET_F_FQDN);

    w.store.delete('EgressPolicy', 'ml', 'trainer');
    w.restart();
    w.ops.length = 0;
    const res = w.apply();
    expect(res.reconciled?.weir_fqdn_keys.removed).toBe(3);
    expect(w.maps.fqdnKeys.data.size).toBe(0);
    expect(opIndex(w, `weir_sets update ${u32Key(id).toString('hex')}`)).toBeLessThan(w.ops.findIndex((o) => o.startsWith('weir_fqdn_keys delete')));
  });
});
