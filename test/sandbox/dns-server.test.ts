// The sandbox's test DNS server (src/sandbox/dns-server.ts): dnsmasq in its
// own namespace answers a pod's queries for the test zones (A, AAAA, CNAME
// chains, short TTLs, 64 answers, any case), NXDOMAIN inside a zone,
// nothing forwarded outside; behind a ClusterIP the way kube-proxy puts it;
// and the probe's DNS modes against it (resolve-connect through libc and
// its own UDP stub, dns-latency, dns-inject). No agent is attached here.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { validateObject } from '../../src/model/validate.js';
import { Sandbox } from '../../src/sandbox/sandbox.js';
import { dnsmasqConfig, exposeDnsService, kubeDnsManifests, startDnsServer, type DnsRecord, type SandboxDnsServer } from '../../src/sandbox/dns-server.js';
import { ResolverProbe, runProbe, startProbeServer, type ProbeProcess } from '../../src/sandbox/probe-runner.js';

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
  let models: ProbeProcess;

  beforeAll(async () => {
    sb = await Sandbox.create({
      id: `d${randomBytes(3).toString('hex')}`,
      namespaces: [{ name: 'ml' }],
      pods: [{ namespace: 'ml', name: 'client' }],
      hosts: [{ name: 'models', kind: 'internet', ipv4: '203.0.113.250' }],
    });
    dns = await startDnsServer(sb, { ipv4: '10.96.0.53', records, zones: ['example.com', 'example.net'] });
    await exposeDnsService(sb, dns, { ipv4: '10.96.0.10', ipv6: 'fd00:96::10' });
    // Every address the zones name leads to one server.
    for (const p of ['203.0.113.0/24', '198.51.100.0/24', '2001:db8::/64']) await sb.routeToHost('models', p);
    models = await startProbeServer(sb, { host: 'models' }, { tcp: [443] });
    sb.setResolvConf('ml', 'client', 'nameserver 10.96.0.10\noptions edns0 timeout:1 attempts:2\n');
  }, 60_000);

  afterAll(async () => {
    await models?.stop();
    await dns?.stop();
    await sb?.destroy();
  });

  const client = { pod: 'ml/client' };

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

  it('behind a ClusterIP (DNAT in the node netns): a pod asks 10.96.0.10 / fd00:96::10 and hears back from it', async () => {
    // The stub's socket is connect()ed to the ClusterIP: an answer from any other source would not reach it.
    const v4 = await runProbe(sb, client, ['resolve-connect', 'api.models.example.com', '443', '--via', 'udp', '--server', '10.96.0.10', '--echo']);
    expect(v4.raw).toMatchObject({ ok: true, rcode: 0, addresses: ['203.0.113.200'], answers: [{ name: 'api.models.example.com', type: 'A', ttl: 2 }] });
    const v6 = await runProbe(sb, client, ['resolve-connect', 'www.models.example.com', '443', '--via', 'udp', '--server', 'fd00:96::10']);
    expect(v6.raw).toMatchObject({ ok: true, addresses: ['198.51.100.1'] });
    expect((v6.raw.answers as { type: string }[]).map((a) => a.type)).toEqual(['CNAME', 'CNAME', 'A']);
    const aaaa = await runProbe(sb, client, ['resolve-connect', 'api.models.example.com', '443', '--via', 'udp', '--server', '10.96.0.10', '--qtype', 'AAAA']);
    expect(aaaa.raw).toMatchObject({ ok: true, addresses: ['2001:db8::200'], connects: [{ address: '2001:db8::200', ok: true }] });
  });

  it("the pod's libc resolver (getaddrinfo, setResolvConf) asks it; every address of the zones leads to one server", async () => {
    const r = await runProbe(sb, client, ['resolve-connect', 'API.Models.Example.COM', '443', '--echo']);
    expect(r.raw).toMatchObject({ ok: true, stage: null, connects: [{ ok: true }] });
    expect([...(r.raw.addresses as string[])].sort()).toEqual(['2001:db8::200', '203.0.113.200']);
    const all = await runProbe(sb, client, ['resolve-connect', 'many.models.example.com', '443', '--family', '4', '--pick', 'all']);
    expect(all.ok).toBe(true);
    expect((all.raw.connects as unknown[]).length).toBe(64);
    expect(await runProbe(sb, client, ['resolve-connect', 'nope.models.example.com', '443'])).toMatchObject({ ok: false, code: 'ENOTFOUND', raw: { stage: 'resolve' } });
    const file = `/etc/netns/${sb.pod('ml', 'client').netns}/resolv.conf`;
    expect(readFileSync(file, 'utf8')).toContain('nameserver 10.96.0.10');
  });

  it('64 answers need EDNS0 over UDP: without it the answer is truncated (TC)', async () => {
    const big = await runProbe(sb, client, ['resolve-connect', 'many.models.example.com', '--via', 'udp', '--server', '10.96.0.10']);
    expect(big.raw).toMatchObject({ ok: true, truncated: false });
    expect((big.raw.addresses as string[]).length).toBe(64);
    const small = await runProbe(sb, client, ['resolve-connect', 'many.models.example.com', '--via', 'udp', '--server', '10.96.0.10', '--no-edns']);
    expect(small.raw).toMatchObject({ ok: false, code: 'ETRUNCATED', truncated: true });
  });

  it('dns-latency times round trips; dns-inject forges a datagram from an address that is not its own', async () => {
    const lat = await runProbe(sb, client, ['dns-latency', '10.96.0.10', '--name', 'api.models.example.com', '--name', 'e1.cdn.example.net', '--count', '50', '--warmup', '5']);
    expect(lat.ok).toBe(true);
    expect((lat.raw.samplesUs as number[]).length).toBe(50);
    const listener = await startProbeServer(sb, client, { udp: [5300] });
    try {
      const pod = sb.pod('ml', 'client');
      const inj = await runProbe(sb, { host: 'models' }, ['dns-inject', '--from', '10.96.0.53', '--to', pod.ip, '--dport', '5300', '--name', 'api.models.example.com', '--answer', '203.0.113.66']);
      expect(inj.ok).toBe(true);
      const seen = await listener.waitFor((e) => e.event === 'udp-recv');
      expect(seen).toMatchObject({ remote: '10.96.0.53', remotePort: 53 });
    } finally {
      await listener.stop();
    }
  });

  it('a long-running resolver probe: trials in order, a fixed query id and source port, the netns TCP counters', async () => {
    const r = await ResolverProbe.start(sb, client);
    try {
      const n0 = await r.netstat();
      expect(n0.TcpActiveOpens).toBeGreaterThanOrEqual(0);
      expect(n0.TcpRetransSegs).toBeGreaterThanOrEqual(0);
      for (let i = 0; i < 5; i++) expect((await r.resolveConnect({ name: 'api.models.example.com', port: 443, family: 4, echo: true })).ok).toBe(true);
      const fixed = await r.resolveConnect({ name: 'api.models.example.com', via: 'udp', server: '10.96.0.10', queryId: 0x5151, localPort: 40053 });
      expect(fixed.raw).toMatchObject({ ok: true, addresses: ['203.0.113.200'], connects: [] });
      const n1 = await r.netstat();
      expect((n1.TcpActiveOpens ?? 0) - (n0.TcpActiveOpens ?? 0)).toBe(5);
      expect((await r.resolveConnect({ name: 'api.models.example.com', via: 'udp' })).raw).toMatchObject({ ok: false, code: 'EINVAL' });
    } finally {
      await r.close();
    }
  });

  it('the kube-dns Service and EndpointSlices the agent reads are valid objects', () => {
    const objs = kubeDnsManifests(dns, { ipv4: '10.96.0.10', ipv6: 'fd00:96::10' });
    expect(objs.map((o) => (o as { kind: string }).kind)).toEqual(['Namespace', 'Service', 'EndpointSlice', 'EndpointSlice']);
    for (const o of objs) expect(validateObject(o)).toMatchObject({ ok: true });
  });

  it('the pod resolv.conf goes with the sandbox', async () => {
    const other = await Sandbox.create({ id: `d${randomBytes(3).toString('hex')}`, namespaces: [{ name: 'x' }], pods: [{ namespace: 'x', name: 'p' }], hosts: [] });
    other.setResolvConf('x', 'p', 'nameserver 10.96.0.10\n');
    const dir = `/etc/netns/${other.pod('x', 'p').netns}`;
    expect(existsSync(dir)).toBe(true);
    await other.destroy();
    expect(existsSync(dir)).toBe(false);
  });

  it('the configuration: one line per record, zones local', () => {
    const c = dnsmasqConfig({ ipv4: '10.0.0.1', records: [{ name: 'A.example.com.', type: 'A', value: '192.0.2.1', ttl: 5 }] }, '10.0.0.1', 'fd00::1');
    expect(c).toContain('host-record=A.example.com,192.0.2.1,5\n');
    expect(c).toContain('local=/example.com/\n');
    expect(c).toContain('no-resolv\n');
    expect(() => dnsmasqConfig({ ipv4: '10.0.0.1', records: [{ name: 'a b', type: 'A', value: '192.0.2.1' }] }, '10.0.0.1', 'fd00::1')).toThrow(/not a DNS name/);
  });
});
