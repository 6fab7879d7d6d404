// Propagation: time from a model change (a policy edit, a pod label change)
// to the datapath maps being written, through the agent's real pipeline
// (store change -> recompile -> state writer), with the real datapath loaded.
// `policy-edit` and `pod-label` change the ObjectStore directly, which is
// where both sources (manifests, Kubernetes API) deliver; `policy-file`
// writes a manifest into the --manifests directory and so adds the source's
// own path (inotify, its 100 ms debounce, the re-scan). The Kubernetes API
// source is not measured here: the stand-in API server is test code
// (test/helpers/fake-apiserver.ts), outside what src/ compiles.
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
import { removeCgroupTree } from '../sandbox/cgroup.js';

export interface PropagationRow {
  pods: number;
  policies: number;
  change: 'policy-edit' | 'pod-label' | 'policy-file';
  samples: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
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

function uid(i: number): string {
  return `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`;
}

export async function propagation(opts: { quick: boolean; log: (l: string) => void }): Promise<PropagationRow[]> {
  const bpffs = ensureBpffs('/sys/fs/bpf');
  const rows: PropagationRow[] = [];
  // Quick: 10 samples (a manifest sample takes the source's 100 ms debounce).
  const samples = opts.quick ? 10 : 100;
  for (const pods of [100, 1000]) {
    const tag = `weir-prop-${process.pid}-${pods}`;
    const cgRoot = join(defaultCgroupRoot(), tag);
    const podsRoot = join(cgRoot, 'kubepods', 'besteffort');
    const manifests = mkdtempSync(join(tmpdir(), 'weir-prop-'));
    const pinDir = join(bpffs, tag);
    mkdirSync(podsRoot, { recursive: true });
    for (let i = 0; i < pods; i++) mkdirSync(join(podsRoot, `pod${uid(i)}`));
    const agent = await Agent.start(
      { manifests, nodeName: 'n1', cgroupRoot: cgRoot, bpffs, pinDir, metricsAddr: null, capacities: { pods: pods + 16, endpoints: pods + 16, nodes: 65536 } },
      pino({ level: process.env.WEIR_BENCH_LOG ?? 'silent' }),
    );
    try {
      const store = agent.store;
      for (let n = 0; n < NAMESPACES; n++) store.upsert(obj({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns${n}`, labels: { team: `t${n % 5}` } } }));
      for (let i = 0; i < pods; i++) {
        store.upsert(
          obj({
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name: `pod${i}`, namespace: `ns${i % NAMESPACES}`, uid: uid(i), labels: { app: `app${i % 50}`, 'weir.dev/domain': `d${i % 4}` } },
            spec: { nodeName: 'n1', containers: [{ name: 'c', ports: [{ name: 'http', containerPort: 8080 }] }] },
            status: { phase: 'Running', qosClass: 'BestEffort', podIPs: [{ ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }] },
          }),
        );
      }
      const rawPolicy = (p: number, port: number, name = `pol${p}`): Record<string, unknown> => ({
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
        });
      const policy = (p: number, port: number): KubeObject => obj(rawPolicy(p, port));
      // A manifest replaced the way an editor does it: written under a dot-name (the source skips those), renamed over.
      const writeManifest = (port: number): void => {
        const tmp = join(manifests, '.file-pol.json.tmp');
        // Every pod of ns0 (the pod-label samples move pods between apps, so an app selector may select none).
        const raw = rawPolicy(0, port, 'file-pol');
        writeFileSync(tmp, JSON.stringify({ ...raw, spec: { ...(raw.spec as object), podSelector: {} } }));
        renameSync(tmp, join(manifests, 'file-pol.json'));
      };
      for (let p = 0; p < 200; p++) store.upsert(policy(p, 443));
      await agent.reconcile();

      const measure = async (change: PropagationRow['change']): Promise<PropagationRow> => {
        const times: number[] = [];
        for (let s = 0; s < samples; s++) {
          const gen = agent.datapath.writer.generation;
          const t0 = process.hrtime.bigint();
          if (change === 'policy-edit') store.upsert(policy(s % 200, 1000 + s));
          else if (change === 'policy-file') writeManifest(2000 + s);
          else {
            const i = (s * 7) % pods;
            const cur = store.get('Pod', `ns${i % NAMESPACES}`, `pod${i}`);
            if (!cur) throw new Error('pod missing');
            // Always a different value: re-setting the current one is no change at all.
            const now = cur.metadata.labels?.app;
            let next = `app${(i + s + 1) % 50}`;
            if (next === now) next = `app${(i + s + 2) % 50}`;
            store.upsert({ ...cur, metadata: { ...cur.metadata, labels: { ...cur.metadata.labels, app: next } } } as KubeObject);
          }
          // The agent applies on the next turn of the event loop; wait for the new generation.
          const deadline = Date.now() + 10_000;
          while (agent.datapath.writer.generation === gen) {
            if (Date.now() > deadline) throw new Error(`propagation: sample ${s} (${change}) wrote nothing to the datapath within 10 s`);
            await new Promise((r) => setImmediate(r));
          }
          times.push(Number(process.hrtime.bigint() - t0) / 1e6);
        }
        const row: PropagationRow = { pods, policies: 200, change, samples, p50Ms: pct(times, 50), p99Ms: pct(times, 99), maxMs: Math.max(...times) };
        opts.log(`  pods=${String(pods).padStart(5)} policies=200 ${change.padEnd(11)} p50 ${row.p50Ms.toFixed(1)} ms  p99 ${row.p99Ms.toFixed(1)} ms  max ${row.maxMs.toFixed(1)} ms (${samples} samples)`);
        return row;
      };
      rows.push(await measure('policy-edit'));
      rows.push(await measure('pod-label'));
      // The file policy's first version, applied before timing its edits.
      const gen0 = agent.datapath.writer.generation;
      writeManifest(1999);
      for (const deadline = Date.now() + 10_000; agent.datapath.writer.generation === gen0; ) {
        if (Date.now() > deadline) throw new Error('propagation: the first manifest was not applied within 10 s');
        await new Promise((r) => setTimeout(r, 5));
      }
      rows.push(await measure('policy-file'));
    } finally {
      agent.datapath.uninstall();
      await agent.stop();
      removePins(pinDir);
      removeCgroupTree(cgRoot);
      rmSync(manifests, { recursive: true, force: true });
    }
  }
  return rows;
}
