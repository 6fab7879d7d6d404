// The node itself, as weir preflight sees it: files, capabilities, and the
// kernel's answers to loading weir's objects and attaching their programs to
// a throwaway cgroup. Nothing is pinned and nothing stays attached.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { CONST, encodeConfig } from '../datapath/abi.js';
import { DEFAULT_CAPACITIES, kernelHasBpfLoop } from '../datapath/datapath.js';
import { BpfObject, numPossibleCpus, progQuery, type LoadOptions } from '../native/index.js';
import { parseCapEff, type AttachProbe, type LoadedObject, type PreflightEnv } from './checks.js';

/**
 * The .rodata and map sizes `weir agent` loads its objects with at its
 * default capacities. This mirrors Datapath.open (which keeps them inline);
 * test/kernel/preflight.test.ts compares the two so they cannot drift apart.
 * Unlike Datapath.open, nothing is pinned: each object gets private maps.
 */
export function agentLoadOptions(podLevel: number): Pick<LoadOptions, 'maxEntries' | 'rodata'> {
  const caps = DEFAULT_CAPACITIES;
  const rodata = encodeConfig({
    podLevelLo: podLevel + 1,
    podLevelHi: podLevel + 2,
    eventIntervalNs: 1000n * 1_000_000n,
    ctTimeoutNs: 300n * 1_000_000_000n,
    maxEndpoints: caps.endpoints,
    flags: 0,
  });
  const maxEntries: Record<string, number> = {
    weir_pods: caps.pods,
    weir_sets: caps.sets,
    weir_nodes: caps.nodes,
    weir_trie_tails: caps.tails,
    weir_classes: caps.classes,
    weir_counters: caps.endpoints * CONST.WEIR_COUNTER_STRIDE,
    weir_ct: caps.conntrack,
    // A derived default, as Datapath.open derives it (dual stack).
    weir_pod_ips: 2 * caps.pods,
    weir_agg: caps.aggregation,
    weir_events: caps.ringbufBytes,
  };
  return { maxEntries, rodata };
}

function round8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/**
 * Roughly what weir's maps lock: each map once (the agent shares them
 * between objects), preallocated entries of key + value, per-CPU values per
 * possible CPU, the ring buffer's bytes. Socket storage grows on demand.
 */
function estimateMapBytes(objectPaths: string[]): number | null {
  const { maxEntries = {} } = agentLoadOptions(1);
  const seen = new Set<string>();
  let total = 0;
  let cpus: number;
  try {
    cpus = numPossibleCpus();
  } catch {
    return null;
  }
  for (const path of objectPaths) {
    if (!existsSync(path)) continue;
    let obj: BpfObject;
    try {
      obj = BpfObject.open(path);
    } catch {
      return null;
    }
    try {
      for (const m of obj.maps()) {
        if (m.internal || seen.has(m.name)) continue;
        seen.add(m.name);
        const entries = maxEntries[m.name] ?? m.maxEntries;
        if (m.typeName === 'ringbuf') total += entries;
        else if (m.typeName.startsWith('percpu_')) total += entries * round8(m.valueSize) * cpus;
        else if (m.typeName !== 'sk_storage') total += entries * (round8(m.keySize) + round8(m.valueSize));
      }
    } finally {
      obj.close();
    }
  }
  return seen.size > 0 ? total : null;
}

class LoadedBpfObject implements LoadedObject {
  constructor(private readonly obj: BpfObject) {}

  get programs(): string[] {
    return this.obj.programs().map((p) => p.name);
  }

  probeAttach(cgroup: string): AttachProbe[] {
    const out: AttachProbe[] = [];
    for (const d of this.obj.programs()) {
      const attachType = `BPF_${d.expectedAttachTypeName.toUpperCase()}`;
      const prog = this.obj.program(d.name);
      try {
        const link = prog.attachCgroup(cgroup);
        try {
          const { progIds } = progQuery(cgroup, d.expectedAttachType);
          out.push(
            progIds.includes(prog.id)
              ? { program: d.name, attachType, ok: true, detail: '' }
              : { program: d.name, attachType, ok: false, detail: `attached, but BPF_PROG_QUERY lists ${JSON.stringify(progIds)}, not program ${prog.id}` },
          );
        } finally {
          link.detach();
          link.close();
        }
      } catch (err) {
        out.push({ program: d.name, attachType, ok: false, detail: err instanceof Error ? err.message : String(err) });
      } finally {
        prog.close();
      }
    }
    return out;
  }

  close(): void {
    this.obj.close();
  }
}

export interface RealEnvOptions {
  /** Objects whose maps memlockNeeded() sizes. */
  objectPaths: string[];
}

export function realEnv(opts: RealEnvOptions): PreflightEnv {
  let status = '';
  try {
    status = readFileSync('/proc/self/status', 'utf8');
  } catch {
    // No /proc: every capability reads as missing, and the check says so.
  }
  return {
    release: () => release(),
    readFile(path) {
      try {
        const raw = readFileSync(path);
        return (path.endsWith('.gz') ? gunzipSync(raw) : raw).toString('utf8');
      } catch {
        return null;
      }
    },
    isDirectory(path) {
      try {
        return statSync(path).isDirectory();
      } catch {
        return false;
      }
    },
    capEff: parseCapEff(status) ?? 0n,
    uid: process.getuid?.() ?? -1,
    async loadObject(path, podLevel) {
      if (!existsSync(path)) throw new Error(`BPF object ${path} is missing`);
      return new LoadedBpfObject(await BpfObject.load(path, agentLoadOptions(podLevel)));
    },
    makeTempCgroup(root) {
      const dir = join(root, `weir-preflight-${process.pid}-${randomBytes(3).toString('hex')}`);
      mkdirSync(dir);
      return dir;
    },
    removeCgroup(dir) {
      rmdirSync(dir);
    },
    memlockNeeded: () => estimateMapBytes(opts.objectPaths),
    hasBpfLoop: () => kernelHasBpfLoop(),
  };
}
