// The sandbox's test DNS server (src/sandbox/dns-server.ts): dnsmasq in its
// own namespace answers a pod's queries for the test zones (A, AAAA, CNAME
// chains, short TTLs, 64 answers, any case), NXDOMAIN inside a zone,
// nothing forwarded outside. No agent is attached here.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { dnsmasqConfig, startDnsServer, type DnsRecord, type SandboxDnsServer } from '../../src/sandbox/dns-server.js';

const many: DnsRecord[] = Array.from({ length: 64 }, (_, i) => ({ name: 'many.models.example.com', type: 'A' as const, value: `203.0.113.${i + 1}` }));
const records: DnsRecord[] = [
  { name: 'api.models.example.com', type: 'A', value: '203.0.113.200', ttl: 2 },
  { name: 'api.models.example.com', type: 'AAAA', value: '2001:db8::200', ttl: 2 },
  { name: 'www.models.example.com', type: 'CNAME', value: 'edge.cdn.example.net' },
  { name: 'edge.cdn.example.net', type: 'CNAME', value: 'e1.cdn.example.net' },
  { name: 'e1.cdn.example.net', type: 'A', value: '198.51.100.1', ttl: 30 },
  ...many,
];

describe('sandbox DNS server (dnsmasq)', () => {
  let sb: Sandbox;
  let dns: SandboxDnsServer;

  beforeAll(async () => {
    sb = await Sandbox.create({
      id: `d${randomBytes(3).toString('hex')}`,
      namespaces: [{ name: 'ml' }],
      pods: [{ namespace: 'ml', name: 'client' }],
      hosts: [],
    });
    dns = await startDnsServer(sb, { ipv4: '10.96.0.53', records, zones: ['example.com', 'example.net'] });
  }, 60_000);

  afterAll(async () => {
    await dns?.stop();
    await sb?.destroy();
  });

  /** Runs lookups in the pod with node:dns against the server; returns JSON. */
  async function inPod(calls: [string, string, boolean?][], server = dns.host.ip): Promise<unknown[]> {
    const script = `
      const { Resolver } = require('node:dns').promises;
      const r = new Resolver({ timeout: 2000, tries: 1 });
      r.setServers([${JSON.stringify(server.includes(':') ? `[${server}]` : server)}]);
      (async () => {
        const out = [];
        for (const [fn, name, ttl] of ${JSON.stringify(calls)}) {
          try { out.push(await r[fn](name, ttl ? { ttl: true } : undefined)); }
          catch (e) { out.push({ error: e.code }); }
        }
        process.stdout.write(JSON.stringify(out));
      })();`;
    const child = sb.spawnInPod('ml', 'client', [process.execPath, '-e', script]);
    let out = '';
    child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
    await new Promise((r) => child.once('exit', r));
    return JSON.parse(out) as unknown[];
  }

  it('A and AAAA with their TTLs, over IPv4 and IPv6, any case', async () => {
    const [a, aaaa, upper] = await inPod([
      ['resolve4', 'api.models.example.com', true],
      ['resolve6', 'api.models.example.com', true],
      ['resolve4', 'API.Models.EXAMPLE.com'],
    ]);
    expect(a).toEqual([{ address: '203.0.113.200', ttl: 2 }]);
    expect(aaaa).toEqual([{ address: '2001:db8::200', ttl: 2 }]);
    expect(upper).toEqual(['203.0.113.200']);
    const [v6] = await inPod([['resolve4', 'e1.cdn.example.net']], dns.host.ip6);
    expect(v6).toEqual(['198.51.100.1']);
  });

  it('a CNAME chain is answered in one response; 64 answers for one name', async () => {
    const [cname, chain, all] = await inPod([
      ['resolveCname', 'www.models.example.com'],
      ['resolve4', 'www.models.example.com'],
      ['resolve4', 'many.models.example.com'],
    ]);
    expect(cname).toEqual(['edge.cdn.example.net']);
    expect(chain).toEqual(['198.51.100.1']);
    expect((all as string[]).sort()).toEqual(many.map((r) => r.value).sort());
  });

  it('unknown names: NXDOMAIN inside a zone, REFUSED outside (nothing is forwarded)', async () => {
    const [inZone, outside] = await inPod([
      ['resolve4', 'nope.models.example.com'],
      ['resolve4', 'example.org'],
    ]);
    expect(inZone).toEqual({ error: 'ENOTFOUND' });
    expect(outside).toEqual({ error: 'EREFUSED' });
  });

  it('the configuration: one line per record, zones local', () => {
    const c = dnsmasqConfig({ ipv4: '10.0.0.1', records: [{ name: 'A.example.com.', type: 'A', value: '192.0.2.1', ttl: 5 }] }, '10.0.0.1', 'fd00::1');
    expect(c).toContain('host-record=A.example.com,192.0.2.1,5\n');
    expect(c).toContain('local=/example.com/\n');
    expect(c).toContain('no-resolv\n');
    expect(() => dnsmasqConfig({ ipv4: '10.0.0.1', records: [{ name: 'a b', type: 'A', value: '192.0.2.1' }] }, '10.0.0.1', 'fd00::1')).toThrow(/not a DNS name/);
  });
});
