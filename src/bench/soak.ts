// `npm run soak [-- --minutes N]`: the agent under churn for a long time.
//
// The sandbox node runs `weir agent` as its own process (dist/cli/weir.js, as
// the DaemonSet runs it) on a manifests directory, while:
//   - traffic: long-running probers in three stable pods (two governed, one
//     not) and in a host outside the pods' cgroups make an allowed call
//     every 50 ms and, in turn, denied calls, UDP sends and IPv6 ones; two
//     long TCP streams echo a line every 50 ms;
//   - pod churn: every 4 s a pod is added (to a random namespace, with a
//     label a churning policy selects or not) or removed; each new pod, once
//     the agent governs it, makes allowed and denied calls of its own;
//   - policy churn: every 6 s a policy is edited (a port added or removed) or
//     a policy selecting part of the churning pods is created or deleted.
//     Policy files are replaced atomically (write, then rename), as editors
//     and kubectl-style tools save: a file rewritten in place (truncated,
//     then written) can be scanned while empty, which deletes its policy
//     until the next scan (the first soak run caught one denied send going
//     through that way).
// Every 10 s it samples the agent's RSS (VmRSS) and open fds (/proc/PID),
// and `weir status` over the local API (map entries, generation, pods). At
// the end the churn is undone (churning pods removed, policies back as they
// started) and the map entries must be what they were before the churn;
// the stable pods' kernel counters (weir_counters, exact) must have counted
// exactly the calls their probers made; every allowed call must have
// succeeded. Results: bench/results/<name>.json and .md (name: soak for the
// default 20 minutes, soak-<N>min otherwise, or --name). Exit 1 if a check
// fails. Needs root.
import type { ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { queryLocalApi } from '../agent/local-api.js';
import type { AgentStatus } from '../agent/agent.js';
import { CONST, counterIndex, decodePerCpuCounter, decodePodValue, u32Key, u64Key } from '../datapath/abi.js';
import { cgroupIdOf } from '../datapath/cgroups.js';
import { BpfMap } from '../native/index.js';
import { spawnAgent, waitReady, WEIR_CLI as WEIR } from '../sandbox/agent-process.js';
import { Prober, startProbeServer, startTcpStream, type ProbeProcess, type ProberRequest } from '../sandbox/probe-runner.js';
import { writeFileAtomic } from '../sandbox/manifests.js';
import { Sandbox, type SandboxPod } from '../sandbox/sandbox.js';
import type { SandboxSpec } from '../sandbox/spec.js';
import { BPFFS, scratch } from './scratch.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SVC4 = '10.20.0.10';
const SVC6 = 'fd00:10:20::10';
const NET4 = '203.0.113.10';
const NET6 = '2001:db8:203::113:10';
const MAPS = ['weir_pods', 'weir_pod_ips', 'weir_sets', 'weir_nodes', 'weir_classes', 'endpoints'] as const;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Sample {
  /** Seconds since the churn started. */
  t: number;
  rssKiB: number;
  /** RSS split (/proc/PID/status): anonymous memory (heap, malloc) and file-backed pages (the node binary and libraries as they are paged in, the BPF ring buffer's mapping). */
  rssAnonKiB: number;
  rssFileKiB: number;
  /** The agent's V8 heap in use (nodejs_heap_size_used_bytes from its /metrics), KiB. */
  heapUsedKiB: number;
  fds: number;
  maps: Record<string, number>;
  generation: number;
  podsEnforced: number;
  allowedCalls: number;
  allowedFailures: number;
}

interface Tally {
  allowedOk: number;
  deniedEperm: number;
  failures: string[];
}

interface Flow {
  name: string;
  allowed: boolean;
  req: ProberRequest;
}

const tcp = (host: string, port: number): ProberRequest => ({ proto: 'tcp', host, port, timeoutMs: 5000 });
const udp = (host: string, port: number): ProberRequest => ({ proto: 'udp', host, port, timeoutMs: 5000 });

/** The governed namespaces allow the service (TCP 8080, UDP 514) and nothing on the internet, whatever the churn does. */
const GOVERNED: { every: Flow[]; rotate: Flow[] } = {
  every: [{ name: 'tcp4 svc:8080', allowed: true, req: tcp(SVC4, 8080) }],
  rotate: [
    { name: 'tcp4 internet:443', allowed: false, req: tcp(NET4, 443) },
    { name: 'udp4 svc:514', allowed: true, req: udp(SVC4, 514) },
    { name: 'udp4 internet:53', allowed: false, req: udp(NET4, 53) },
    { name: 'tcp6 svc:8080', allowed: true, req: tcp(SVC6, 8080) },
    { name: 'tcp6 internet:443', allowed: false, req: tcp(NET6, 443) },
  ],
};
const FREE: { every: Flow[]; rotate: Flow[] } = {
  every: [{ name: 'tcp4 internet:443', allowed: true, req: tcp(NET4, 443) }],
  rotate: [
    { name: 'udp4 internet:53', allowed: true, req: udp(NET4, 53) },
    { name: 'tcp4 svc:9000', allowed: true, req: tcp(SVC4, 9000) },
  ],
};

function basePolicy(ns: string, ports: number[]): string {
  return `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: base, namespace: ${ns}}
spec:
  podSelector: {}
  egress:
  - to: [{ipBlock: {cidr: ${SVC4}/32}}, {ipBlock: {cidr: "${SVC6}/128"}}]
    ports: [${ports.map((p) => `{protocol: TCP, port: ${p}}`).join(', ')}, {protocol: UDP, port: 514}]
`;
}

/** Selects part of the churning pods of a namespace (label variant=x): another policy set, created and released with them. */
function variantPolicy(ns: string, cidr: string): string {
  return `apiVersion: weir.dev/v1alpha1
kind: EgressPolicy
metadata: {name: variant, namespace: ${ns}}
spec:
  podSelector: {matchLabels: {variant: x}}
  egress:
  - to: [{ipBlock: {cidr: ${cidr}}}]
    ports: [{protocol: TCP, port: 9000}]
`;
}

class Traffic {
  readonly tallies = new Map<string, Tally>();
  /** Called with each failure as it happens. */
  onFailure: (line: string) => void = () => {};
  private timer: NodeJS.Timeout | null = null;
  private readonly inflight = new Set<Promise<void>>();
  private round = 0;
  constructor(private readonly sources: { key: string; prober: Prober; flows: { every: Flow[]; rotate: Flow[] } }[]) {}

  tally(key: string): Tally {
    let t = this.tallies.get(key);
    if (!t) this.tallies.set(key, (t = { allowedOk: 0, deniedEperm: 0, failures: [] }));
    return t;
  }

  resume(): void {
    this.timer ??= setInterval(() => {
      this.round++;
      for (const s of this.sources) {
        for (const f of s.flows.every) this.fire(s.key, s.prober, f);
        const r = s.flows.rotate[this.round % s.flows.rotate.length];
        if (r) this.fire(s.key, s.prober, r);
      }
    }, 50);
  }

  fire(key: string, prober: Prober, f: Flow): Promise<void> {
    const t = this.tally(key);
    const p = prober.probe(f.req).then(
      (r) => {
        let failure: string | null = null;
        if (f.allowed) {
          if (r.ok) t.allowedOk++;
          else failure = `${key} ${f.name}: ${r.code ?? 'failed'} after ${r.ms} ms`;
        } else if (r.code === 'EPERM') t.deniedEperm++;
        else failure = `${key} ${f.name} (denied): ${r.ok ? 'went through' : r.code}`;
        if (failure !== null) {
          failure = `${new Date().toISOString()} ${failure}`;
          t.failures.push(failure);
          this.onFailure(failure);
        }
      },
      (e: Error) => {
        const failure = `${new Date().toISOString()} ${key} ${f.name}: ${e.message}`;
        t.failures.push(failure);
        this.onFailure(failure);
      },
    );
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p));
    return p;
  }

  async pause(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
    await sleep(300);
  }

  async stop(): Promise<void> {
    await this.pause();
    for (const s of this.sources) await s.prober.close();
  }

  totals(): { allowed: number; denied: number; failures: string[] } {
    let allowed = 0;
    let denied = 0;
    const failures: string[] = [];
    for (const t of this.tallies.values()) {
      allowed += t.allowedOk;
      denied += t.deniedEperm;
      failures.push(...t.failures);
    }
    return { allowed, denied, failures };
  }
}

function statusKiB(pid: number, field: 'VmRSS' | 'RssAnon' | 'RssFile'): number {
  const m = new RegExp(`${field}:\\s+(\\d+)\\s+kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** Least-squares slope of ys over ts (seconds), per minute; NaN with fewer than 2 points. */
function slopePerMin(ts: number[], ys: number[]): number {
  const n = ts.length;
  if (n < 2) return NaN;
  const mt = ts.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((ts[i] as number) - mt) * ((ys[i] as number) - my);
    den += ((ts[i] as number) - mt) ** 2;
  }
  return den === 0 ? NaN : (num / den) * 60;
}

function openFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function socketCounters(pinDir: string, pods: SandboxPod[]): Map<string, { allow: bigint; drop: bigint; packetDrop: bigint }> {
  const out = new Map<string, { allow: bigint; drop: bigint; packetDrop: bigint }>();
  const podsMap = BpfMap.openPinned(join(pinDir, 'maps', 'weir_pods'));
  const counters = BpfMap.openPinned(join(pinDir, 'maps', 'weir_counters'));
  try {
    for (const p of pods) {
      const v = podsMap.lookup(u64Key(cgroupIdOf(p.cgroupDir)));
      if (!v) throw new Error(`${p.namespace}/${p.name} is not in weir_pods`);
      const ep = decodePodValue(v).endpointId;
      const read = (kind: number, verdict: number): bigint => {
        const raw = counters.lookup(u32Key(counterIndex(ep, kind, verdict)));
        return raw ? decodePerCpuCounter(raw, counters.possibleCpus).packets : 0n;
      };
      out.set(`${p.namespace}/${p.name}`, { allow: read(CONST.WEIR_COUNT_SOCKETS, 1), drop: read(CONST.WEIR_COUNT_SOCKETS, 2), packetDrop: read(CONST.WEIR_COUNT_PACKETS, 2) });
    }
  } finally {
    podsMap.close();
    counters.close();
  }
  return out;
}

const SOAK_HELP = `Usage: npm run soak -- [--minutes N] [--sample-seconds S] [--out DIR] [--name NAME]

The agent (dist/cli/weir.js) on a sandbox node under pod and policy churn,
with allowed and denied traffic, for N minutes; then the churn is undone and
the maps, the kernel counters and every allowed call are checked. Needs root.

Options:
  --minutes N          How long (default 20).
  --sample-seconds S   Sample RSS, open fds and weir status every S seconds (default 10).
  --out DIR            Where the results go (default bench/results).
  --name NAME          Result file names (default soak, or soak-<N>min).
  -h, --help           Show this help.

Exit 1 if a check fails.`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '20' },
      'sample-seconds': { type: 'string', default: '10' },
      out: { type: 'string' },
      name: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(SOAK_HELP);
    return 0;
  }
  const minutes = Number(values.minutes);
  const sampleMs = Number(values['sample-seconds']) * 1000;
  if (!(minutes > 0) || !(sampleMs > 0)) throw new Error('--minutes and --sample-seconds must be positive numbers');
  if (process.getuid?.() !== 0) throw new Error('the soak needs root (cgroups, network namespaces, BPF)');
  if (!existsSync(WEIR)) throw new Error(`${WEIR} is missing: build first (node scripts/build.mjs)`);
  const name = values.name ?? (minutes === 20 ? 'soak' : `soak-${minutes}min`);
  const outDir = values.out ?? join(root, 'bench', 'results');
  const log = (msg: string): void => console.log(`[soak ${new Date().toISOString().slice(11, 19)}] ${msg}`);

  const spec: SandboxSpec = {
    id: `soak${process.pid % 100000}`,
    nodeName: 'soak-node',
    namespaces: [{ name: 'team-a' }, { name: 'team-b' }, { name: 'team-c' }],
    pods: [
      { namespace: 'team-a', name: 'stable-a', labels: { app: 'stable' }, qosClass: 'Burstable' },
      { namespace: 'team-b', name: 'stable-b', labels: { app: 'stable' }, qosClass: 'Guaranteed' },
      { namespace: 'team-c', name: 'stable-c', labels: { app: 'stable' } },
    ],
    hosts: [
      { name: 'svc', kind: 'service', ipv4: SVC4 },
      { name: 'internet', kind: 'internet', ipv4: NET4 },
      { name: 'ops', kind: 'service', ipv4: '10.20.0.30' },
    ],
  };
  await Sandbox.cleanupLeftovers();
  // The sandbox also tears itself down on a signal (its netns, cgroups and
  // processes: the probers and servers).
  const sb = await Sandbox.create(spec);
  const scr = scratch();
  scr.defer(() => sb.destroySync(), () => sb.destroy());
  const work = scr.dir('weir-soak-');
  const pinDir = scr.pinDir(`weir-soak-${process.pid}`);
  const socket = join(work, 'api', 'weir.sock');
  const manifests = join(work, 'manifests');
  const servers: ProbeProcess[] = [];
  const streams: ProbeProcess[] = [];
  let agent: ChildProcess | undefined;
  let traffic: Traffic | undefined;
  const churnProbers = new Set<Prober>();
  scr.defer(
    () => agent?.kill('SIGKILL'),
    async () => {
      if (agent && agent.exitCode === null) {
        agent.kill('SIGTERM');
        await new Promise((r) => agent?.once('close', r));
      }
    },
  );
  // On a signal the sandbox's teardown kills these.
  scr.defer(
    () => undefined,
    async () => {
      for (const p of churnProbers) await p.close();
      await traffic?.stop().catch(() => undefined);
      for (const s of [...streams, ...servers]) await s.stop();
    },
  );
  try {
    sb.writeManifests(manifests);
    const ports = { 'team-a': [8080], 'team-b': [8080] } as Record<string, number[]>;
    for (const ns of ['team-a', 'team-b']) writeFileAtomic(manifests, `base-${ns}.yaml`, basePolicy(ns, ports[ns] ?? [8080]));
    servers.push(await startProbeServer(sb, { host: 'svc' }, { tcp: [8080, 9000], udp: [514] }));
    servers.push(await startProbeServer(sb, { host: 'internet' }, { tcp: [443], udp: [53] }));

    const agentLog = join(work, 'agent.log');
    const logStream = createWriteStream(agentLog);
    const run = await spawnAgent(
      ['--manifests', manifests, '--node-name', sb.nodeName, '--cgroup-root', sb.cgroupRoot, '--bpffs', BPFFS, '--pin-dir', pinDir, '--api-socket', socket],
      { stdout: logStream },
    );
    agent = run.child;
    const pid = run.pid;
    const heapUsedKiB = async (): Promise<number> => {
      const text = await (await fetch(`http://127.0.0.1:${run.port}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith('nodejs_heap_size_used_bytes '));
      return line ? Math.round(Number(line.split(' ')[1]) / 1024) : -1;
    };
    const status = async (): Promise<AgentStatus> => {
      const r = await queryLocalApi(socket, '/v1/status');
      if (r.status !== 200) throw new Error(`weir status answered ${r.status}`);
      return r.body as AgentStatus;
    };
    const readyMs = await waitReady(run, 60_000);
    log(`agent ${pid} ready in ${readyMs} ms; soak for ${minutes} min`);

    const stable = [sb.pod('team-a', 'stable-a'), sb.pod('team-b', 'stable-b')];
    const sources = [];
    for (const p of [...stable, sb.pod('team-c', 'stable-c')]) {
      const key = `${p.namespace}/${p.name}`;
      sources.push({ key, prober: await Prober.start(sb, { pod: key }, { timeoutMs: 5000 }), flows: p.namespace === 'team-c' ? FREE : GOVERNED });
    }
    sources.push({ key: 'host ops', prober: await Prober.start(sb, { host: 'ops' }, { timeoutMs: 5000 }), flows: FREE });
    streams.push(await startTcpStream(sb, { pod: 'team-a/stable-a' }, SVC4, 8080, { intervalMs: 50, echoTimeoutMs: 2000 }));
    streams.push(await startTcpStream(sb, { pod: 'team-b/stable-b' }, SVC6, 8080, { intervalMs: 50, echoTimeoutMs: 2000 }));
    traffic = new Traffic(sources);
    traffic.onFailure = (line) => log(`FAILURE ${line}`);
    traffic.resume();
    await sleep(3000);

    // Baseline: before any churn.
    await traffic.pause();
    const baseline = await status();
    const kernel0 = socketCounters(pinDir, stable);
    const tallies0 = new Map([...traffic.tallies].map(([k, v]) => [k, { ...v }]));
    traffic.resume();
    const baseMaps = Object.fromEntries(MAPS.map((m) => [m, baseline.maps[m]?.used ?? -1]));
    log(`baseline maps ${JSON.stringify(baseMaps)}, generation ${baseline.policy.generation}`);

    const samples: Sample[] = [];
    const churnStart = Date.now();
    const deadline = churnStart + minutes * 60_000;
    const take = async (): Promise<Sample> => {
      const s = await status();
      const tot = traffic?.totals() ?? { allowed: 0, failures: [] };
      const sample: Sample = {
        t: Math.round((Date.now() - churnStart) / 1000),
        rssKiB: statusKiB(pid, 'VmRSS'),
        rssAnonKiB: statusKiB(pid, 'RssAnon'),
        rssFileKiB: statusKiB(pid, 'RssFile'),
        heapUsedKiB: await heapUsedKiB(),
        fds: openFds(pid),
        maps: Object.fromEntries(MAPS.map((m) => [m, s.maps[m]?.used ?? -1])),
        generation: s.policy.generation,
        podsEnforced: s.pods.enforced,
        allowedCalls: tot.allowed,
        allowedFailures: tot.failures.length,
      };
      samples.push(sample);
      return sample;
    };
    await take();

    const churn = { podsAdded: 0, podsRemoved: 0, policyEdits: 0, churnPodCalls: 0, churnDeniedPassed: 0, notGovernedInTime: 0 };
    const churning: SandboxPod[] = [];
    let seq = 0;
    let nextPod = Date.now();
    let nextPolicy = Date.now() + 3000;
    let nextSample = Date.now() + sampleMs;
    const variants = new Set<string>();
    const rnd = (n: number): number => Math.floor(Math.random() * n);
    const governedNow = (p: SandboxPod): boolean => {
      const m = BpfMap.openPinned(join(pinDir, 'maps', 'weir_pods'));
      try {
        return m.lookup(u64Key(cgroupIdOf(p.cgroupDir))) !== null;
      } finally {
        m.close();
      }
    };
    /** A new pod's own calls, once the agent governs it: allowed ones pass, denied ones get EPERM. */
    const exercising = new Set<SandboxPod>();
    const exercise = async (p: SandboxPod): Promise<void> => {
      exercising.add(p);
      try {
        await exerciseOnce(p);
      } finally {
        exercising.delete(p);
      }
    };
    const exerciseOnce = async (p: SandboxPod): Promise<void> => {
      const until = Date.now() + 10_000;
      while (!governedNow(p)) {
        if (Date.now() > until || !churning.includes(p)) {
          churn.notGovernedInTime++;
          return;
        }
        await sleep(50);
      }
      const key = `${p.namespace}/${p.name}`;
      const prober = await Prober.start(sb, { pod: key }, { timeoutMs: 5000 });
      churnProbers.add(prober);
      try {
        const flows = p.namespace === 'team-c' ? FREE : GOVERNED;
        await Promise.all([...flows.every, ...flows.rotate].map((f) => (traffic as Traffic).fire(`churn ${key}`, prober, f)));
        churn.churnPodCalls += flows.every.length + flows.rotate.length;
      } finally {
        churnProbers.delete(prober);
        await prober.close();
      }
    };
    const pending = new Set<Promise<void>>();

    while (Date.now() < deadline) {
      const now = Date.now();
      if (now >= nextPod) {
        nextPod = now + 4000;
        if (churning.length < 4 || (churning.length < 12 && rnd(2) === 0)) {
          // Mostly governed namespaces, where the variant policies make policy sets come and go.
          const ns = ['team-a', 'team-b', 'team-a', 'team-b', 'team-c'][rnd(5)] as string;
          const pod = await sb.addPod({
            namespace: ns,
            name: `churn-${++seq}`,
            labels: { app: 'churn', variant: rnd(2) === 0 ? 'x' : 'y' },
            qosClass: (['Guaranteed', 'Burstable', 'BestEffort'] as const)[rnd(3)],
          });
          churning.push(pod);
          churn.podsAdded++;
          const p = exercise(pod);
          pending.add(p);
          void p.finally(() => pending.delete(p));
        } else {
          // Not one whose own calls are running: removing it would kill its prober mid-call.
          const idle = churning.filter((p) => !exercising.has(p));
          const victim = idle[rnd(idle.length)];
          if (victim) {
            churning.splice(churning.indexOf(victim), 1);
            await sb.removePod(victim.namespace, victim.name);
            churn.podsRemoved++;
          }
        }
      }
      if (now >= nextPolicy) {
        nextPolicy = now + 6000;
        const ns = ['team-a', 'team-b'][rnd(2)] as string;
        if (rnd(2) === 0) {
          const cur = ports[ns] ?? [8080];
          ports[ns] = cur.includes(9000) ? [8080] : [8080, 9000];
          writeFileAtomic(manifests, `base-${ns}.yaml`, basePolicy(ns, ports[ns]));
        } else if (variants.has(ns)) {
          rmSync(join(manifests, `variant-${ns}.yaml`));
          variants.delete(ns);
        } else {
          writeFileAtomic(manifests, `variant-${ns}.yaml`, variantPolicy(ns, `198.51.100.${1 + rnd(200)}/32`));
          variants.add(ns);
        }
        churn.policyEdits++;
      }
      if (now >= nextSample) {
        nextSample = now + sampleMs;
        const s = await take();
        log(`t=${s.t}s rss=${(s.rssKiB / 1024).toFixed(1)} MiB heap=${(s.heapUsedKiB / 1024).toFixed(1)} MiB fds=${s.fds} maps=${JSON.stringify(s.maps)} gen=${s.generation} pods=${s.podsEnforced} allowed=${s.allowedCalls} failures=${s.allowedFailures}`);
      }
      await sleep(100);
    }

    // Undo the churn and let the agent catch up.
    log('undoing the churn');
    await Promise.all([...pending]);
    for (const p of churning.splice(0)) {
      await sb.removePod(p.namespace, p.name);
      churn.podsRemoved++;
    }
    for (const ns of ['team-a', 'team-b']) {
      writeFileAtomic(manifests, `base-${ns}.yaml`, basePolicy(ns, [8080]));
      if (variants.delete(ns)) rmSync(join(manifests, `variant-${ns}.yaml`));
    }
    let final = await status();
    const settleUntil = Date.now() + 30_000;
    while (Date.now() < settleUntil) {
      await sleep(1000);
      final = await status();
      if (MAPS.every((m) => (final.maps[m]?.used ?? -1) === baseMaps[m])) break;
    }
    await traffic.pause();
    const kernel1 = socketCounters(pinDir, stable);
    const last = await take();
    const finalMaps = Object.fromEntries(MAPS.map((m) => [m, final.maps[m]?.used ?? -1]));

    // The stable governed pods: the kernel counted exactly their calls.
    const kernelCheck = stable.map((p) => {
      const key = `${p.namespace}/${p.name}`;
      const before = tallies0.get(key) ?? { allowedOk: 0, deniedEperm: 0 };
      const after = traffic?.tally(key) ?? { allowedOk: 0, deniedEperm: 0 };
      const k0 = kernel0.get(key);
      const k1 = kernel1.get(key);
      return {
        pod: key,
        allowedCalls: after.allowedOk - before.allowedOk,
        kernelSocketAllow: Number((k1?.allow ?? 0n) - (k0?.allow ?? 0n)),
        deniedCalls: after.deniedEperm - before.deniedEperm,
        kernelSocketDrop: Number((k1?.drop ?? 0n) - (k0?.drop ?? 0n)),
        kernelPacketDrop: Number((k1?.packetDrop ?? 0n) - (k0?.packetDrop ?? 0n)),
      };
    });
    const tot = traffic.totals();
    let echoes = 0;
    let lateOrLost = 0;
    for (const s of streams) {
      echoes += s.events.filter((e) => e.event === 'echo').length;
      lateOrLost += s.events.filter((e) => e.event === 'timeout' || e.event === 'error' || e.event === 'closed').length;
    }
    const agentAlive = agent.exitCode === null;
    const logText = readFileSync(agentLog, 'utf8');
    const logLines = logText.split('\n').filter(Boolean);
    const errorLines = logLines.filter((l) => l.includes('"level":"error"') || l.includes('"level":"fatal"'));
    const rss = samples.map((s) => s.rssKiB);
    // Trends over the second half of the run (after warm-up), KiB per minute.
    const half = samples.filter((s) => s.t >= (minutes * 60) / 2);
    const trend = (f: (s: Sample) => number): number => slopePerMin(half.map((s) => s.t), half.map(f));
    const heap = samples.map((s) => s.heapUsedKiB);
    const fds = samples.map((s) => s.fds);
    const mapsBack = MAPS.every((m) => finalMaps[m] === baseMaps[m]);
    const kernelExact = kernelCheck.every((k) => k.allowedCalls === k.kernelSocketAllow && k.deniedCalls === k.kernelSocketDrop && k.kernelPacketDrop === 0);
    const result = {
      name,
      command: `npm run soak${minutes === 20 ? '' : ` -- --minutes ${minutes}`}`,
      date: new Date().toISOString(),
      machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.version },
      minutes,
      sampleSeconds: sampleMs / 1000,
      rssKiB: { first: rss[0], last: rss.at(-1), max: Math.max(...rss) },
      rssAnonKiB: { first: samples[0]?.rssAnonKiB, last: samples.at(-1)?.rssAnonKiB, max: Math.max(...samples.map((s) => s.rssAnonKiB)) },
      rssFileKiB: { first: samples[0]?.rssFileKiB, last: samples.at(-1)?.rssFileKiB, max: Math.max(...samples.map((s) => s.rssFileKiB)) },
      trendKiBPerMin: { rss: trend((s) => s.rssKiB), anon: trend((s) => s.rssAnonKiB), file: trend((s) => s.rssFileKiB), heap: trend((s) => s.heapUsedKiB) },
      heapUsedKiB: { first: heap[0], last: heap.at(-1), max: Math.max(...heap) },
      fds: { first: fds[0], last: fds.at(-1), max: Math.max(...fds) },
      maps: { baseline: baseMaps, final: finalMaps, backToBaseline: mapsBack },
      generation: { first: samples[0]?.generation, last: last.generation },
      traffic: {
        allowedCalls: tot.allowed,
        allowedFailures: tot.failures.length,
        deniedCallsEperm: tot.denied,
        firstFailures: tot.failures.slice(0, 20),
        streamEchoes: echoes,
        streamLateOrLost: lateOrLost,
      },
      churn,
      kernelCheck,
      agent: { alive: agentAlive, logLines: logLines.length, errorLines: errorLines.length, firstErrors: errorLines.slice(0, 5) },
      ok: tot.failures.length === 0 && mapsBack && kernelExact && agentAlive && lateOrLost === 0 && churn.notGovernedInTime === 0,
      samples,
    };
    if (!result.ok) {
      const kept = join(tmpdir(), `weir-${name}-agent.log`);
      writeFileSync(kept, logText);
      log(`the agent's log is kept in ${kept}`);
    }
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, `${name}.json`), `${JSON.stringify(result, null, 2)}\n`);
    writeFileSync(join(outDir, `${name}.md`), markdown(result));
    log(`${result.ok ? 'OK' : 'FAILED'}: wrote ${join(outDir, `${name}.json`)} and .md`);
    console.log(markdown(result));
    return result.ok ? 0 : 1;
  } finally {
    await scr.close();
  }
}

function trendText(kibPerMin: number): string {
  return Number.isFinite(kibPerMin) ? `${kibPerMin >= 0 ? '+' : ''}${(kibPerMin / 1024).toFixed(2)}` : '–';
}

function markdown(r: {
  name: string;
  command: string;
  date: string;
  machine: Record<string, string | number>;
  minutes: number;
  sampleSeconds: number;
  rssKiB: { first?: number; last?: number; max: number };
  rssAnonKiB: { first?: number; last?: number; max: number };
  rssFileKiB: { first?: number; last?: number; max: number };
  trendKiBPerMin: { rss: number; anon: number; file: number; heap: number };
  heapUsedKiB: { first?: number; last?: number; max: number };
  fds: { first?: number; last?: number; max: number };
  maps: { baseline: Record<string, number>; final: Record<string, number>; backToBaseline: boolean };
  generation: { first?: number; last: number };
  traffic: { allowedCalls: number; allowedFailures: number; deniedCallsEperm: number; streamEchoes: number; streamLateOrLost: number; firstFailures: string[] };
  churn: Record<string, number>;
  kernelCheck: { pod: string; allowedCalls: number; kernelSocketAllow: number; deniedCalls: number; kernelSocketDrop: number; kernelPacketDrop: number }[];
  agent: { alive: boolean; logLines: number; errorLines: number };
  ok: boolean;
}): string {
  const mib = (k?: number): string => (k === undefined ? '–' : (k / 1024).toFixed(1));
  const m = r.machine;
  return [
    `# Soak: ${r.minutes} minutes of pod churn, policy churn and traffic`,
    '',
    `${r.date}. Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}. Command: \`${r.command}\` (src/bench/soak.ts). Result: **${r.ok ? 'pass' : 'FAIL'}**.`,
    '',
    `The agent ran as its own process on the sandbox node; sampled every ${r.sampleSeconds} s.`,
    '',
    '| agent | first | last | max | trend, second half (MiB/min) |',
    '|---|---:|---:|---:|---:|',
    `| RSS (MiB) | ${mib(r.rssKiB.first)} | ${mib(r.rssKiB.last)} | ${mib(r.rssKiB.max)} | ${trendText(r.trendKiBPerMin.rss)} |`,
    `| of which anonymous (MiB) | ${mib(r.rssAnonKiB.first)} | ${mib(r.rssAnonKiB.last)} | ${mib(r.rssAnonKiB.max)} | ${trendText(r.trendKiBPerMin.anon)} |`,
    `| of which file-backed (MiB) | ${mib(r.rssFileKiB.first)} | ${mib(r.rssFileKiB.last)} | ${mib(r.rssFileKiB.max)} | ${trendText(r.trendKiBPerMin.file)} |`,
    `| V8 heap used (MiB) | ${mib(r.heapUsedKiB.first)} | ${mib(r.heapUsedKiB.last)} | ${mib(r.heapUsedKiB.max)} | ${trendText(r.trendKiBPerMin.heap)} |`,
    `| open fds | ${r.fds.first ?? '–'} | ${r.fds.last ?? '–'} | ${r.fds.max} | |`,
    '',
    'File-backed RSS is the node binary, its libraries and the BPF ring buffer (4 MiB, mapped twice) as their pages are first touched: bounded by their size. Anonymous RSS is what the agent allocates.',
    '',
    `Churn: ${r.churn.podsAdded} pods added, ${r.churn.podsRemoved} removed, ${r.churn.policyEdits} policy edits; policy generation ${r.generation.first ?? '–'} → ${r.generation.last}. ` +
      `The new pods, each once governed, made ${r.churn.churnPodCalls} calls of their own (counted in the traffic below; pods not governed within 10 s: ${r.churn.notGovernedInTime}).`,
    '',
    `Map entries before the churn and after it was undone: ${r.maps.backToBaseline ? 'equal' : '**different**'}.`,
    '',
    `| map | ${Object.keys(r.maps.baseline).join(' | ')} |`,
    `|---|${Object.keys(r.maps.baseline).map(() => '---:').join('|')}|`,
    `| baseline | ${Object.values(r.maps.baseline).join(' | ')} |`,
    `| final | ${Object.values(r.maps.final).join(' | ')} |`,
    '',
    `Traffic: ${r.traffic.allowedCalls} allowed calls succeeded, **${r.traffic.allowedFailures} failed**; ${r.traffic.deniedCallsEperm} denied calls got EPERM; ` +
      `${r.traffic.streamEchoes} stream echoes, ${r.traffic.streamLateOrLost} late or lost.`,
    ...(r.traffic.firstFailures.length > 0 ? ['', '```', ...r.traffic.firstFailures, '```'] : []),
    '',
    'The stable governed pods, from the baseline to the end: the calls their probers made against the kernel\'s exact per-endpoint counters (socket verdicts; packets dropped).',
    '',
    '| pod | allowed calls | kernel socket allow | denied calls (EPERM) | kernel socket drop | kernel packet drop |',
    '|---|---:|---:|---:|---:|---:|',
    ...r.kernelCheck.map((k) => `| ${k.pod} | ${k.allowedCalls} | ${k.kernelSocketAllow} | ${k.deniedCalls} | ${k.kernelSocketDrop} | ${k.kernelPacketDrop} |`),
    '',
    `Agent: ${r.agent.alive ? 'alive at the end' : '**exited**'}; ${r.agent.logLines} log lines, ${r.agent.errorLines} at error level.`,
    '',
  ].join('\n');
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`soak failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
