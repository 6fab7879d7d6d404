// Propagation: time from a model change (a policy edit, a pod label change)
// to the datapath maps being written, and for one change of each source to
// the first packet whose verdict changes, through the agent's real pipeline
// with the real datapath loaded. Three paths:
// - store: `policy-edit` and `pod-label` change the agent's ObjectStore
//   directly, which is where both sources deliver (recompile, state writer);
// - manifests: `policy-file` writes a manifest into the --manifests
//   directory by an atomic rename (inotify, the source's 20 ms quiet period
//   after a rename, the re-scan, then the same pipeline);
// - kubernetes: `api policy-edit` and `api pod-label` change an object in
//   the stand-in API server (src/sandbox/api-server.ts, the one the tests
//   use), which emits the watch event to the agent's Kubernetes API source
//   (@kubernetes/client-node watch over HTTP on 127.0.0.1, the informer,
//   validation, the store, then the same pipeline). The server runs in the
//   bench's process, on the agent's event loop.
// "First packet": after the change, weir's egress program is run with
// BPF_PROG_TEST_RUN every PROBE_INTERVAL_MS, from a pod's cgroup (the
// bench process moves into the pod's container cgroup for the run and back,
// as test/helpers/kernel.ts inCgroup does), until its verdict for a packet
// the change allows flips from drop to pass.
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent } from '../agent/agent.js';
import { defaultCgroupRoot } from '../datapath/cgroups.js';
import { removePins } from '../datapath/datapath.js';
import { validateObject } from '../model/validate.js';
import type { KubeObject } from '../model/types.js';
import { ensureBpffs } from '../native/index.js';
import { FakeApiServer, type FakeObjectInput } from '../sandbox/api-server.js';
import { removeCgroupTree } from '../sandbox/cgroup.js';
import { ipv4Bytes, ownCgroupDir, tcpFrame, TCP_SYN, testRunIfindex } from './test-run.js';

export interface PropagationRow {
  pods: number;
  policies: number;
  /** Where the change is made: the agent's store, a manifest file, the test API server. */
  source: 'store' | 'manifests' | 'kubernetes';
  /** The change; rows timed to the first packet end in ": first packet". */
  change: string;
  /** What is timed: the StateWriter's generation moving, or the probe's verdict flipping. */
  until: 'maps written' | 'verdict changed';
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Verdict rows: the probe interval and the median cost of one probe (one test run). */
  probeIntervalMs?: number;
  probeCostMs?: number;
  /** Verdict rows: p50 of (first flipped probe - maps written), per sample. */
  afterMapsP50Ms?: number;
  afterMapsMaxMs?: number;
}

function obj(raw: unknown): KubeObject {
  const r = validateObject(raw);
  if (!r.ok) throw new Error(r.ignored ? 'ignored' : r.error.message);
  return r.object;
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

const NAMESPACES = 20;
const POLICIES = 200;
const PROBE_INTERVAL_MS = 1;

function uid(i: number): string {
  return `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`;
}

function podIp(i: number): string {
  return `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
}

function rawNamespace(n: number): Record<string, unknown> {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns${n}`, labels: { team: `t${n % 5}` } } };
}

function rawPod(i: number): Record<string, unknown> {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `pod${i}`, namespace: `ns${i % NAMESPACES}`, uid: uid(i), labels: { app: `app${i % 50}`, 'weir.dev/domain': `d${i % 4}` } },
    spec: { nodeName: 'n1', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
    status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: podIp(i) }] },
  };
}

function rawPolicy(p: number, port: number, name = `pol${p}`): Record<string, unknown> {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name, namespace: `ns${p % NAMESPACES}` },
    spec: {
      podSelector: { matchLabels: { app: `app${p % 50}` } },
      egress: [
        { to: [{ podSelector: { matchLabels: { app: `app${(p + 1) % 50}` } } }], ports: [{ port: 'http' }] },
        { to: [{ namespaceSelector: { matchLabels: { team: `t${p % 5}` } }, podSelector: { matchLabels: { 'weir.dev/domain': `d${p % 4}` } } }], ports: [{ protocol: 'TCP', port }] },
        { to: [{ ipBlock: { cidr: `172.${16 + (p % 16)}.0.0/16`, except: [`172.${16 + (p % 16)}.${p % 256}.0/24`] } }] },
      ],
      deny: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['10.0.0.0/8', '172.16.0.0/12'] } }] }],
    },
  };
}

// The policy the first-packet rows edit: policy 0's rules for every pod of
// ns0 (the pod-label samples move pods between apps, so an app selector may
// select none). Its second rule allows pods of team t0's namespaces with
// domain d0 (pod 20 of ns0, 10.0.0.20) on `port`; each sample moves it to a
// port no other policy allows, so pod 0's packet to 10.0.0.20 on the new
// port is dropped before the change and passes after it.
function rawProbePolicy(port: number, name: string): Record<string, unknown> {
  const raw = rawPolicy(0, port, name);
  return { ...raw, spec: { ...(raw.spec as object), podSelector: {} } };
}

const PROBE_SRC = 0;
const PROBE_DST = 20;

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Change {
  source: PropagationRow['source'];
  change: string;
  /** Makes sample s's change (synchronously: the timer starts just before). */
  apply(s: number): void;
  /** The first-packet probe's destination port after sample s's change, if this change is probed. */
  probePort?: (s: number) => number;
}

export async function propagation(opts: { quick: boolean; log: (l: string) => void }): Promise<PropagationRow[]> {
  const bpffs = ensureBpffs('/sys/fs/bpf');
  const rows: PropagationRow[] = [];
  const logger = pino({ level: process.env.WEIR_BENCH_LOG ?? 'silent' });
  // Quick: 10 samples.
  const samples = opts.quick ? 10 : 100;
  const home = ownCgroupDir();
  const ctx = Buffer.alloc(192);
  ctx.writeUInt32LE(testRunIfindex(), 40);
  // One agent per source; each measures at 100 pods, then gets the other 900 and measures at 1,000
  // (an agent start, the BPF objects loaded and verified, takes 2-3 s on this VM).
  const podCounts = [100, 1000];
  const maxPods = 1000;
  const tag = `weir-prop-${process.pid}`;
  const cgRoot = join(defaultCgroupRoot(), tag);
  const podsRoot = join(cgRoot, 'kubepods', 'besteffort');
  const dir = mkdtempSync(join(tmpdir(), 'weir-prop-'));
  const manifests = join(dir, 'manifests');
  mkdirSync(manifests);
  mkdirSync(podsRoot, { recursive: true });
  for (let i = 0; i < maxPods; i++) mkdirSync(join(podsRoot, `pod${uid(i)}`));
  // The probe's process joins a container cgroup of pod 0, as a container's process is.
  const probeCgroup = join(podsRoot, `pod${uid(PROBE_SRC)}`, 'probe');
  mkdirSync(probeCgroup);
  const capacities = { pods: maxPods + 16, endpoints: maxPods + 16, nodes: 65536 };
  {
    // Samples a change: each sample's time to the maps written and, for a
    // probed change, to the first probe whose verdict is pass.
    const measure = async (agent: Agent, pods: number, ch: Change): Promise<PropagationRow[]> => {
      const writer = agent.datapath.writer;
      const probeCosts: number[] = [];
      // The verdict of one packet (pod 0 to pod 20 on `port`); the process is in pod 0's container cgroup meanwhile.
      const probe = (port: number): number => {
        const t = process.hrtime.bigint();
        const retval = agent.datapath.testRun('weir_egress', { data: tcpFrame(ipv4Bytes(podIp(PROBE_SRC)), ipv4Bytes(podIp(PROBE_DST)), port, TCP_SYN), ctx, repeat: 1 }).retval;
        probeCosts.push(Number(process.hrtime.bigint() - t) / 1e6);
        return retval;
      };
      const maps: number[] = [];
      const verdict: number[] = [];
      const gap: number[] = [];
      // One sample: the change, then the maps written and (probed changes) the first passing packet.
      const sample = async (s: number, port: number | undefined): Promise<{ tMaps: number; tVerdict?: number }> => {
        if (port !== undefined && probe(port) !== 0) throw new Error(`propagation: ${ch.change} sample ${s}: the probe packet passes before the change`);
        const gen = writer.generation;
        const t0 = process.hrtime.bigint();
        const since = (): number => Number(process.hrtime.bigint() - t0) / 1e6;
        ch.apply(s);
        let tMaps: number | undefined;
        let tVerdict: number | undefined;
        const deadline = Date.now() + 10_000;
        // Both loops look at the generation, so the maps time is never later than a flipped probe's.
        const observe = (): boolean => {
          if (tMaps === undefined && writer.generation !== gen) tMaps = since();
          return tMaps !== undefined;
        };
        // The maps: polled every turn of the event loop (the agent applies on its own turns).
        const mapsDone = (async () => {
          while (!observe()) {
            if (Date.now() > deadline) throw new Error(`propagation: ${ch.change} sample ${s} wrote nothing to the datapath within 10 s`);
            await tick();
          }
        })();
        // The first packet: a probe every PROBE_INTERVAL_MS until it passes.
        const verdictDone = (async () => {
          if (port === undefined) return;
          for (;;) {
            observe();
            if (probe(port) === 1) {
              tVerdict = since();
              return;
            }
            if (Date.now() > deadline) throw new Error(`propagation: ${ch.change} sample ${s}: the probe packet still dropped after 10 s`);
            await new Promise((r) => setTimeout(r, PROBE_INTERVAL_MS));
          }
        })();
        await Promise.all([mapsDone, verdictDone]);
        if (tMaps === undefined) throw new Error('unreachable');
        return tVerdict === undefined ? { tMaps } : { tMaps, tVerdict };
      };
      for (let s = 0; s < samples; s++) {
        const port = ch.probePort?.(s);
        // A probed sample runs with this process in pod 0's container cgroup, from before the change
        // to the flip: BPF_PROG_TEST_RUN judges the packet as the calling process's cgroup's. Joining
        // the cgroup for each probe instead can wait for an RCU grace period (~7 ms once the agent's
        // recompile has kept the loop busy), which a pod's own packet never does. Nothing of the
        // agent's opens a socket meanwhile (its watches and listeners are open already).
        if (port !== undefined) writeFileSync(join(probeCgroup, 'cgroup.procs'), String(process.pid));
        let r: { tMaps: number; tVerdict?: number };
        try {
          r = await sample(s, port);
        } finally {
          if (port !== undefined) writeFileSync(join(home, 'cgroup.procs'), String(process.pid));
        }
        maps.push(r.tMaps);
        if (r.tVerdict !== undefined) {
          verdict.push(r.tVerdict);
          gap.push(r.tVerdict - r.tMaps);
          if (process.env.WEIR_PROP_DEBUG) opts.log(`    sample ${s}: maps ${r.tMaps.toFixed(2)} verdict ${r.tVerdict.toFixed(2)}`);
        }
      }
      const row = (change: string, until: PropagationRow['until'], times: number[]): PropagationRow => ({
        pods, policies: POLICIES, source: ch.source, change, until, samples, p50Ms: pct(times, 50), p99Ms: pct(times, 99), maxMs: Math.max(...times),
      });
      const out = [row(ch.change, 'maps written', maps)];
      if (verdict.length > 0) {
        out.push({ ...row(`${ch.change}: first packet`, 'verdict changed', verdict), probeIntervalMs: PROBE_INTERVAL_MS, probeCostMs: pct(probeCosts, 50), afterMapsP50Ms: pct(gap, 50), afterMapsMaxMs: Math.max(...gap) });
      }
      for (const r of out) {
        const extra = r.probeCostMs !== undefined ? `  (after the maps: p50 ${r.afterMapsP50Ms?.toFixed(2)} ms, max ${r.afterMapsMaxMs?.toFixed(2)} ms; probe every ${PROBE_INTERVAL_MS} ms, ${(r.probeCostMs * 1000).toFixed(0)} µs each)` : '';
        opts.log(`  pods=${String(pods).padStart(5)} ${r.source.padEnd(10)} ${r.change.padEnd(30)} p50 ${r.p50Ms.toFixed(1)} ms  p99 ${r.p99Ms.toFixed(1)} ms  max ${r.maxMs.toFixed(1)} ms (${samples} samples)${extra}`);
      }
      return out;
    };

    const relabel = (pods: number, get: (ns: string, name: string) => Record<string, unknown> | undefined, put: (o: Record<string, unknown>) => void) => (s: number): void => {
      const i = (s * 7) % pods;
      const cur = get(`ns${i % NAMESPACES}`, `pod${i}`);
      if (!cur) throw new Error('pod missing');
      const meta = cur['metadata'] as { labels?: Record<string, string> };
      // Always a different value: re-setting the current one is no change at all.
      const now = meta.labels?.['app'];
      let next = `app${(i + s + 1) % 50}`;
      if (next === now) next = `app${(i + s + 2) % 50}`;
      put({ ...cur, metadata: { ...meta, labels: { ...meta.labels, app: next } } });
    };
    // Ports: each stage's edits use their own range, so that no edit re-sets a policy's current port.
    const port = (base: number, stage: number, s: number): number => base + stage * 200 + s;
    try {
      // 1. The store and the manifests directory, one agent on --manifests.
      {
        const t = Date.now();
        const pinDir = join(bpffs, `${tag}-m`);
        const agent = await Agent.start({ manifests, nodeName: 'n1', cgroupRoot: cgRoot, bpffs, pinDir, metricsAddr: null, capacities }, logger);
        try {
          const store = agent.store;
          for (let n = 0; n < NAMESPACES; n++) store.upsert(obj(rawNamespace(n)));
          for (let p = 0; p < POLICIES; p++) store.upsert(obj(rawPolicy(p, 443)));
          // A manifest replaced the way an editor does it: written under a dot-name (the source skips those), renamed over.
          const writeManifest = (p: number): void => {
            const tmp = join(manifests, '.file-pol.json.tmp');
            writeFileSync(tmp, JSON.stringify(rawProbePolicy(p, 'file-pol')));
            renameSync(tmp, join(manifests, 'file-pol.json'));
          };
          let loaded = 0;
          for (const [stage, pods] of podCounts.entries()) {
            // Pods as first labelled (the previous stage's pod-label samples moved some), then the new ones.
            for (let i = 0; i < loaded; i++) store.upsert(obj(rawPod(i)));
            for (; loaded < pods; loaded++) store.upsert(obj(rawPod(loaded)));
            await agent.reconcile();
            if (process.env.WEIR_PROP_DEBUG) opts.log(`    manifests agent: ${pods} pods loaded at ${Date.now() - t} ms`);
            rows.push(...(await measure(agent, pods, { source: 'store', change: 'policy-edit', apply: (s) => store.upsert(obj(rawPolicy(s % POLICIES, port(1000, stage, s)))) })));
            rows.push(
              ...(await measure(agent, pods, {
                source: 'store',
                change: 'pod-label',
                apply: relabel(
                  pods,
                  (ns, name) => store.get('Pod', ns, name) as unknown as Record<string, unknown> | undefined,
                  (o) => store.upsert(o as unknown as KubeObject),
                ),
              })),
            );
            // The file policy's first version of this stage, applied before timing its edits.
            const gen0 = agent.datapath.writer.generation;
            writeManifest(port(2000, stage, 199));
            for (const deadline = Date.now() + 10_000; agent.datapath.writer.generation === gen0; ) {
              if (Date.now() > deadline) throw new Error('propagation: the first manifest was not applied within 10 s');
              await new Promise((r) => setTimeout(r, 5));
            }
            rows.push(...(await measure(agent, pods, { source: 'manifests', change: 'policy-file', apply: (s) => writeManifest(port(2000, stage, s)), probePort: (s) => port(2000, stage, s) })));
          }
        } finally {
          agent.datapath.uninstall();
          await agent.stop();
          removePins(pinDir);
        }
        opts.log(`  store and manifests: ${((Date.now() - t) / 1000).toFixed(1)} s`);
      }
      // 2. The Kubernetes API source: the same model in the test API server.
      {
        const t = Date.now();
        const pinDir = join(bpffs, `${tag}-k`);
        const api = new FakeApiServer({ bookmarkIntervalMs: 60_000 });
        await api.start();
        let agent: Agent | undefined;
        try {
          const put = (raw: Record<string, unknown>): void => void api.create(raw as unknown as FakeObjectInput);
          for (let n = 0; n < NAMESPACES; n++) put(rawNamespace(n));
          for (let p = 0; p < POLICIES; p++) put(rawPolicy(p, 443));
          put(rawProbePolicy(port(3000, 0, 199), 'api-pol'));
          let loaded = 0;
          for (; loaded < (podCounts[0] ?? 0); loaded++) put(rawPod(loaded));
          const kubeconfig = await api.writeKubeconfig(dir);
          agent = await Agent.start(
            { kubernetes: { kubeconfig, backoff: { initialMs: 100, maxMs: 500 }, events: false }, nodeName: 'n1', cgroupRoot: cgRoot, bpffs, pinDir, metricsAddr: null, capacities },
            logger,
          );
          const a = agent;
          for (const [stage, pods] of podCounts.entries()) {
            for (let i = 0; i < loaded; i++) api.update(rawPod(i) as unknown as FakeObjectInput);
            for (; loaded < pods; loaded++) put(rawPod(loaded));
            const asFirst = (i: number): boolean => a.store.get('Pod', `ns${i % NAMESPACES}`, `pod${i}`)?.metadata.labels?.['app'] === `app${i % 50}`;
            for (const deadline = Date.now() + 30_000; a.store.list('Pod').length < pods || !Array.from({ length: pods }, (_, i) => i).every(asFirst); ) {
              if (Date.now() > deadline) throw new Error(`propagation: the agent did not receive ${pods} pods from the API server within 30 s`);
              await new Promise((r) => setTimeout(r, 5));
            }
            await a.reconcile();
            if (process.env.WEIR_PROP_DEBUG) opts.log(`    kubernetes agent: ${pods} pods synced at ${Date.now() - t} ms`);
            rows.push(
              ...(await measure(a, pods, {
                source: 'kubernetes',
                change: 'api policy-edit',
                apply: (s) => void api.update(rawProbePolicy(port(3000, stage, s), 'api-pol') as unknown as FakeObjectInput),
                probePort: (s) => port(3000, stage, s),
              })),
            );
            rows.push(
              ...(await measure(a, pods, {
                source: 'kubernetes',
                change: 'api pod-label',
                apply: relabel(
                  pods,
                  (ns, name) => api.get('Pod', ns, name),
                  (o) => void api.update(o as unknown as FakeObjectInput),
                ),
              })),
            );
          }
        } finally {
          if (agent) {
            agent.datapath.uninstall();
            await agent.stop();
          }
          await api.stop();
          removePins(pinDir);
        }
        opts.log(`  kubernetes: ${((Date.now() - t) / 1000).toFixed(1)} s`);
      }
    } finally {
      removeCgroupTree(cgRoot);
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return rows;
}

/** The suite's Markdown (bench/results/propagation-*.md). */
export function propagationMarkdown(rows: PropagationRow[], m: Record<string, string | number>, cmd: string): string {
  const f = (x: number | undefined): string => (x === undefined ? '' : x.toFixed(1));
  const lines = [
    '# Propagation: a policy or pod change to maps written and to the first packet whose verdict changes',
    '',
    `Machine: ${m['cpu']}, ${m['cores']} cores, kernel ${m['kernel']}, Node ${m['node']}. Command: \`${cmd}\`. Target: p99 under 100 ms.`,
    '',
    'store: the change made in the agent\'s ObjectStore (where both sources deliver). manifests: a manifest renamed into the --manifests directory (inotify, the source\'s 20 ms quiet period after a rename, re-scan, then the same pipeline). kubernetes: the object changed in the test API server (src/sandbox/api-server.ts), which emits the watch event to the agent\'s Kubernetes API source (the agent with `kubernetes: {kubeconfig}`, in the same process). "maps written": the StateWriter\'s generation moved. "first packet": weir_egress run with BPF_PROG_TEST_RUN from pod 0\'s cgroup every 1 ms until the packet the change allows passes (it was dropped before); it is the maps time plus up to one probe interval.',
    '',
    '| pods | policies | source | change | until | samples | p50 ms | p99 ms | max ms | after maps p50 / max ms | probe cost ms |',
    '|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map(
      (r) =>
        `| ${r.pods} | ${r.policies} | ${r.source} | ${r.change} | ${r.until} | ${r.samples} | ${f(r.p50Ms)} | ${f(r.p99Ms)} | ${f(r.maxMs)} | ${r.afterMapsP50Ms === undefined ? '' : `${r.afterMapsP50Ms.toFixed(2)} / ${(r.afterMapsMaxMs ?? NaN).toFixed(2)}`} | ${r.probeCostMs === undefined ? '' : r.probeCostMs.toFixed(3)} |`,
    ),
  ];
  return `${lines.join('\n')}\n`;
}
