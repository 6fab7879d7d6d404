// Entry points for the CLI (`weir sandbox up|down`, `npm run demo`): bring a
// sandbox up with its manifests and host echo servers, tear one down by id,
// and the demo node's description.

import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startProbeServer, type ProbeProcess } from './probe-runner.js';
import { Sandbox, teardownSandbox, type SandboxLogger } from './sandbox.js';
import type { SandboxSpec } from './spec.js';

export interface SandboxUpOptions {
  logger?: SandboxLogger;
  /** Write Namespace/Pod manifests here (kept in sync until destroy). */
  manifestsDir?: string;
  /** Start an echo server in every host that declares ports. Default true. */
  serve?: boolean;
  /** Remove leftovers of crashed earlier runs first. Default true. */
  cleanupLeftovers?: boolean;
  handleSignals?: boolean;
}

export interface SandboxUp {
  sandbox: Sandbox;
  /** Echo servers by host name; their events show the source address each flow arrived with. */
  servers: Map<string, ProbeProcess>;
  manifestFiles: string[];
}

export async function sandboxUp(spec: SandboxSpec = defaultDemoSpec(), opts: SandboxUpOptions = {}): Promise<SandboxUp> {
  const logger = opts.logger;
  if (opts.cleanupLeftovers ?? true) await Sandbox.cleanupLeftovers(undefined, logger !== undefined ? { logger } : {});
  const sandbox = await Sandbox.create(spec, {
    ...(logger !== undefined ? { logger } : {}),
    ...(opts.handleSignals !== undefined ? { handleSignals: opts.handleSignals } : {}),
  });
  try {
    const manifestFiles = opts.manifestsDir !== undefined ? sandbox.writeManifests(opts.manifestsDir) : [];
    const servers = new Map<string, ProbeProcess>();
    if (opts.serve ?? true) {
      for (const h of sandbox.listHosts()) {
        if ((h.ports.tcp?.length ?? 0) + (h.ports.udp?.length ?? 0) === 0) continue;
        servers.set(h.name, await startProbeServer(sandbox, { host: h.name }, h.ports));
      }
    }
    return { sandbox, servers, manifestFiles };
  } catch (e) {
    await sandbox.destroy();
    throw e;
  }
}

/** Tears down sandbox `id` (its owner may be alive: this is the explicit `down`). */
export async function sandboxDown(id: string, opts: { logger?: SandboxLogger } = {}): Promise<boolean> {
  return teardownSandbox(id, opts.logger !== undefined ? { logger: opts.logger } : {});
}

/** deploy/examples/sandbox: the EgressPolicies written for defaultDemoSpec(). */
export function demoPoliciesDir(): string {
  // src/sandbox/up.ts and dist/sandbox/up.js both sit two levels below the repo root.
  return join(fileURLToPath(new URL('../..', import.meta.url)), 'deploy', 'examples', 'sandbox');
}

/**
 * The demo node: three AI workloads, each in its governance domain, three
 * in-cluster services and four "internet" hosts (documentation addresses).
 * The IPv6 addresses are the ones the sandbox would derive; they are spelled
 * out because the example policies name them.
 */
export function defaultDemoSpec(): SandboxSpec {
  return {
    id: 'demo',
    cgroupDriver: 'cgroupfs',
    nodeName: 'weir-demo-node',
    namespaces: [
      { name: 'ml-train', labels: { team: 'ml-platform', 'weir.dev/domain': 'train-data' } },
      { name: 'ml-serving', labels: { team: 'ml-platform', 'weir.dev/domain': 'prod-model' } },
      { name: 'ml-gateway', labels: { team: 'ml-platform', 'weir.dev/domain': 'external-api' } },
    ],
    pods: [
      {
        namespace: 'ml-train',
        name: 'trainer',
        labels: { app: 'trainer', 'weir.dev/domain': 'train-data' },
        qosClass: 'Guaranteed',
        ports: [{ name: 'metrics', port: 9090 }],
      },
      {
        namespace: 'ml-serving',
        name: 'model-server',
        labels: { app: 'model-server', 'weir.dev/domain': 'prod-model' },
        qosClass: 'Burstable',
        ports: [{ name: 'http', port: 8080 }],
      },
      {
        namespace: 'ml-gateway',
        name: 'gateway',
        labels: { app: 'gateway', 'weir.dev/domain': 'external-api' },
        qosClass: 'BestEffort',
        ports: [{ name: 'https', port: 8443 }],
      },
    ],
    hosts: [
      { name: 'feature-store', kind: 'service', ipv4: '10.20.0.10', ipv6: 'fd00:10:20::10', ports: { tcp: [8080] } },
      { name: 'log-collector', kind: 'service', ipv4: '10.20.0.20', ipv6: 'fd00:10:20::20', ports: { tcp: [24224], udp: [514] } },
      { name: 'model-registry', kind: 'service', ipv4: '10.20.0.30', ipv6: 'fd00:10:20::30', ports: { tcp: [443] } },
      { name: 'public-internet', kind: 'internet', ipv4: '203.0.113.10', ipv6: '2001:db8:203::113:10', ports: { tcp: [80, 443] } },
      { name: 'outside-storage', kind: 'internet', ipv4: '198.51.100.20', ipv6: '2001:db8:198:51::100:20', ports: { tcp: [443] } },
      { name: 'approved-model-api', kind: 'internet', ipv4: '203.0.113.50', ipv6: '2001:db8:203::113:50', ports: { tcp: [443] } },
      { name: 'unapproved-model-api', kind: 'internet', ipv4: '198.51.100.66', ipv6: '2001:db8:198:51::100:66', ports: { tcp: [443] } },
    ],
  };
}
