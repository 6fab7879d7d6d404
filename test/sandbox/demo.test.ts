// The demo node: its spec, the example policies written for it, and that it
// comes up with every host serving and reachable (no agent attached).
import { readdirSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { cidrContains } from '../../src/sandbox/addressing.js';
import { checkSpec } from '../../src/sandbox/spec.js';
import { defaultDemoSpec, demoPoliciesDir, sandboxUp } from '../../src/sandbox/up.js';
import { probeTcp, probeUdp } from '../e2e/helpers/traffic.js';

interface Peer {
  ipBlock?: { cidr: string; except?: string[] };
}
interface Rule {
  to?: Peer[];
  ports?: { protocol: string; port: number }[];
}
interface Policy {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string };
  spec: { podSelector: { matchLabels: Record<string, string> }; mode: string; egress?: Rule[]; deny?: Rule[] };
}

function policies(): Policy[] {
  const dir = demoPoliciesDir();
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => d.toJS() as Policy));
}

describe('demo node spec and example policies', () => {
  const spec = defaultDemoSpec();

  it('is a valid spec whose explicit IPv6 addresses are the derived ones', () => {
    expect(() => checkSpec(spec)).not.toThrow();
    expect(spec.pods.map((p) => `${p.namespace}/${p.name}`)).toEqual(['ml-train/trainer', 'ml-serving/model-server', 'ml-gateway/gateway']);
    expect(Object.fromEntries(spec.hosts.map((h) => [h.name, h.ipv4]))).toMatchObject({
      'public-internet': '203.0.113.10',
      'outside-storage': '198.51.100.20',
      'approved-model-api': '203.0.113.50',
      'unapproved-model-api': '198.51.100.66',
    });
  });

  it('has one Enforce EgressPolicy per pod domain, in the pod namespace, naming only demo hosts', () => {
    const ps = policies();
    expect(ps).toHaveLength(3);
    const hostAddrs = new Map<string, { host: string; tcp: number[]; udp: number[] }>();
    for (const h of spec.hosts) {
      for (const a of [h.ipv4, h.ipv6 ?? '']) hostAddrs.set(a, { host: h.name, tcp: h.ports?.tcp ?? [], udp: h.ports?.udp ?? [] });
    }
    for (const pod of spec.pods) {
      const p = ps.find((x) => x.metadata.namespace === pod.namespace);
      expect(p, `${pod.namespace}/${pod.name}`).toBeDefined();
      if (p === undefined) continue;
      expect([p.apiVersion, p.kind, p.spec.mode]).toEqual(['weir.dev/v1alpha1', 'EgressPolicy', 'Enforce']);
      for (const [k, v] of Object.entries(p.spec.podSelector.matchLabels)) expect(pod.labels?.[k]).toBe(v);
      for (const rule of [...(p.spec.egress ?? []), ...(p.spec.deny ?? [])]) {
        for (const peer of rule.to ?? []) {
          const cidr = peer.ipBlock?.cidr ?? '';
          const [addr = '', len] = cidr.split('/');
          if (len !== '32' && len !== '128') continue; // broad guardrails
          const h = hostAddrs.get(addr);
          expect(h, `${p.metadata.name}: ${cidr} is no demo host`).toBeDefined();
          for (const port of rule.ports ?? []) {
            expect(port.protocol === 'UDP' ? h?.udp : h?.tcp, `${p.metadata.name}: ${h?.host} port ${port.port}`).toContain(port.port);
          }
        }
      }
    }
    // The train-data guardrail covers every internet host and no service.
    const train = ps.find((x) => x.metadata.name === 'train-data');
    const guard = (train?.spec.deny ?? []).flatMap((r) => r.to ?? []).map((t) => t.ipBlock);
    const denied = (ip: string): boolean =>
      guard.some((b) => b !== undefined && cidrContains(b.cidr, ip) && !(b.except ?? []).some((e) => cidrContains(e, ip)));
    for (const h of spec.hosts) {
      for (const a of [h.ipv4, h.ipv6 ?? '']) expect(denied(a), `${h.name} ${a}`).toBe(h.kind === 'internet');
    }
  });

  it('comes up with every host serving, reachable from every pod, and manifests written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'weir-demo-manifests-'));
    // A pino child logger is what the CLI will inject.
    const logger = pino({ level: 'silent' }).child({ component: 'sandbox' });
    const up = await sandboxUp({ ...spec, id: `d${randomBytes(3).toString('hex')}` }, { manifestsDir: dir, logger });
    try {
      expect([...up.servers.keys()].sort()).toEqual(spec.hosts.map((h) => h.name).sort());
      expect(up.manifestFiles).toHaveLength(4);
      for (const pod of spec.pods) {
        const from = `${pod.namespace}/${pod.name}`;
        for (const h of spec.hosts) {
          const port = h.ports?.tcp?.[0] ?? 0;
          const r = await probeTcp(up.sandbox, from, h.name, port, { family: h.kind === 'internet' ? 6 : 4 });
          expect(r.ok, `${from} -> ${h.name}:${port} ${JSON.stringify(r)}`).toBe(true);
        }
      }
      expect((await probeUdp(up.sandbox, 'ml-serving/model-server', 'log-collector', 514)).ok).toBe(true);
    } finally {
      await up.sandbox.destroy();
      expect(readdirSync(dir)).toEqual([]);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
