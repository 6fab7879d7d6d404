// A kernel test bed: weir's real BPF objects loaded with their own pin
// directory, a kubelet-style cgroup tree of test pods, and the real policy
// engine and state writer filling the maps. BPF_PROG_TEST_RUN allocates the
// test skb's socket in the calling task's cgroup, so a test "sends from a
// pod" by moving its own process into the pod's container cgroup for the
// duration of the run (inPod()).
import { randomUUID } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { ObjectStore } from '../../src/model/store.js';
import { validateObject } from '../../src/model/validate.js';
import type { KubeObject, QosClass } from '../../src/model/types.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { Datapath, removePins, type Capacities, type MapName } from '../../src/datapath/datapath.js';
import { cgroupIdOf, cgroupLevel, defaultCgroupRoot } from '../../src/datapath/cgroups.js';
import { StateWriter, type PodBinding, type WritableMap } from '../../src/datapath/state-writer.js';
import { ensureBpffs } from '../../src/native/bpffs.js';
import { removeCgroupTree } from '../../src/sandbox/cgroup.js';

export const BPFFS = '/sys/fs/bpf';

export function parseObject(raw: unknown): KubeObject {
  const r = validateObject(raw);
  if (!r.ok) throw new Error(r.ignored ? `ignored kind ${r.kind}` : r.error.message);
  return r.object;
}

/** A non-loopback interface of this netns, for test_run's skb->dev. */
export function nonLoopbackIfindex(): number {
  for (const n of readdirSync('/sys/class/net')) {
    if (n === 'lo') continue;
    return Number(readFileSync(`/sys/class/net/${n}/ifindex`, 'utf8').trim());
  }
  throw new Error('no non-loopback interface in this network namespace');
}

export interface TestPod {
  uid: string;
  namespace: string;
  name: string;
  dir: string;
  container(name?: string): string;
}

export class KernelBed {
  readonly store = new ObjectStore();
  readonly engine = new PolicyEngine('node-1');
  readonly log = pino({ level: process.env.WEIR_TEST_LOG ?? 'silent' });
  private readonly pods: TestPod[] = [];
  private constructor(
    readonly dp: Datapath,
    readonly cgRoot: string,
    readonly podsRoot: string,
    readonly pinDir: string,
  ) {}

  static async create(
    opts: { capacities?: Partial<Capacities>; eventIntervalMs?: number; graceMs?: number; fqdnLearning?: 'auto' | 'on' | 'off' } = {},
  ): Promise<KernelBed> {
    ensureBpffs(BPFFS);
    const tag = `weir-kt-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
    const cgRoot = join(defaultCgroupRoot(), tag);
    const podsRoot = join(cgRoot, 'kubepods');
    for (const d of [podsRoot, join(podsRoot, 'burstable'), join(podsRoot, 'besteffort')]) mkdirSync(d, { recursive: true });
    const pinDir = join(BPFFS, tag);
    const dpOpts: Parameters<typeof Datapath.open>[0] = {
      bpffs: BPFFS,
      pinDir,
      podLevel: cgroupLevel(podsRoot),
      logger: pino({ level: 'silent' }),
      eventIntervalMs: opts.eventIntervalMs ?? 1000,
      graceMs: opts.graceMs ?? 0,
    };
    if (opts.capacities) dpOpts.capacities = opts.capacities;
    if (opts.fqdnLearning) dpOpts.fqdnLearning = opts.fqdnLearning;
    try {
      const dp = await Datapath.open(dpOpts);
      return new KernelBed(dp, cgRoot, podsRoot, pinDir);
    } catch (err) {
      removeCgroupTree(cgRoot);
      removePins(pinDir);
      throw err;
    }
  }

  addPod(namespace: string, name: string, labels: Record<string, string>, ips: string[], qos: QosClass = 'Burstable'): TestPod {
    const uid = randomUUID();
    const dir =
      qos === 'Guaranteed' ? join(this.podsRoot, `pod${uid}`) : join(this.podsRoot, qos.toLowerCase(), `pod${uid}`);
    mkdirSync(dir, { recursive: true });
    if (!this.store.get('Namespace', undefined, namespace)) {
      this.store.upsert(parseObject({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace, labels: { ns: namespace } } }));
    }
    this.store.upsert(
      parseObject({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace, uid, labels },
        spec: { nodeName: 'node-1', containers: [{ name: 'main', ports: [{ name: 'http', containerPort: 8080 }] }] },
        status: { phase: 'Running', qosClass: qos, podIPs: ips.map((ip) => ({ ip })) },
      }),
    );
    const pod: TestPod = {
      uid,
      namespace,
      name,
      dir,
      container: (c = 'main') => {
        const cd = join(dir, c);
        mkdirSync(cd, { recursive: true });
        return cd;
      },
    };
    this.pods.push(pod);
    return pod;
  }

  /** Adds a Pod object as given (uid, QoS) and creates its kubelet-style cgroup. */
  addPodObject(raw: unknown): TestPod {
    const obj = parseObject(raw);
    if (obj.kind !== 'Pod' || !obj.metadata.uid) throw new Error('addPodObject needs a Pod with a uid');
    const uid = obj.metadata.uid;
    const qos = obj.status?.qosClass ?? 'BestEffort';
    const dir = qos === 'Guaranteed' ? join(this.podsRoot, `pod${uid}`) : join(this.podsRoot, qos.toLowerCase(), `pod${uid}`);
    mkdirSync(dir, { recursive: true });
    this.store.upsert(obj);
    const pod: TestPod = {
      uid,
      namespace: obj.metadata.namespace,
      name: obj.metadata.name,
      dir,
      container: (c = 'main') => {
        const cd = join(dir, c);
        mkdirSync(cd, { recursive: true });
        return cd;
      },
    };
    this.pods.push(pod);
    return pod;
  }

  /** Forgets every object (pods' cgroups stay for reuse). */
  clearModel(): void {
    for (const kind of ['NetworkPolicy', 'EgressPolicy', 'ClusterEgressPolicy', 'Pod', 'Namespace', 'Service', 'EndpointSlice'] as const) {
      for (const o of this.store.list(kind)) this.store.delete(kind, o.metadata.namespace, o.metadata.name);
    }
    this.pods.length = 0;
  }

  add(...raw: unknown[]): void {
    for (const r of raw) this.store.upsert(parseObject(r));
  }

  /** Compiles the model and writes it to the maps, as the agent does. */
  sync(): ReturnType<Datapath['writer']['apply']> {
    const state = this.engine.compute(this.store);
    const bindings: PodBinding[] = [];
    for (const p of state.pods) {
      const tp = this.pods.find((x) => x.uid === p.uid);
      if (!tp) continue;
      bindings.push({ uid: p.uid, namespace: p.namespace, name: p.name, cgroupId: cgroupIdOf(tp.dir), setKey: p.setKey });
    }
    return this.dp.writer.apply(state, bindings);
  }

  /**
   * A second StateWriter over the bed's maps, as a restarted agent's: it
   * has not adopted them yet (call adopt()).
   */
  restartedWriter(log = pino({ level: 'silent' })): StateWriter {
    const m = (n: MapName): WritableMap => this.dp.map(n) as unknown as WritableMap;
    return new StateWriter(
      {
        pods: m('weir_pods'),
        podIps: m('weir_pod_ips'),
        sets: m('weir_sets'),
        nodes: m('weir_nodes'),
        tails: m('weir_trie_tails'),
        classes: m('weir_classes'),
        fqdnKeys: m('weir_fqdn_keys'),
        dnsResolvers: m('weir_dns_resolvers'),
      },
      { graceMs: 0, maxEndpoints: this.dp.capacities().endpoints, dnsSecret: () => this.dp.dnsSecret() },
      log,
    );
  }

  endpointOf(pod: TestPod): number {
    const e = this.dp.writer.endpoints().find((x) => x.uid === pod.uid);
    if (!e) throw new Error(`pod ${pod.name} has no endpoint`);
    return e.endpointId;
  }

  close(): void {
    this.dp.close();
    removePins(this.pinDir);
    removeCgroupTree(this.cgRoot);
  }
}

function ownCgroup(): string {
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('0::'));
  if (!line) throw new Error('this process has no cgroup v2 membership');
  return line.slice(3);
}

/** Runs fn with this process inside cgroup dir, then moves it back. */
export function inCgroup<T>(dir: string, fn: () => T): T {
  const home = join(defaultCgroupRoot(), ownCgroup());
  writeFileSync(join(dir, 'cgroup.procs'), String(process.pid));
  try {
    return fn();
  } finally {
    writeFileSync(join(home, 'cgroup.procs'), String(process.pid));
  }
}
