// A DNS server for the sandbox: dnsmasq (Debian's dnsmasq-base) in its own
// host network namespace, authoritative for test zones only (A, AAAA and
// CNAME records, per-record TTLs, many records per name), forwarding
// nothing: a name outside the records is NXDOMAIN in a served zone and
// REFUSED elsewhere, so nothing ever leaves the sandbox. It stands in for
// the cluster DNS Service's backend in the FQDN tests
// (docs/architecture.md, "DNS-aware egress"). exposeDnsService() puts a
// ClusterIP in front of it the way kube-proxy does (DNAT in the node netns,
// replies un-NATed by conntrack, so a pod sees only the ClusterIP), and
// kubeDnsManifests() describes that Service and its EndpointSlices for the
// agent (kube-system/kube-dns, the agent's default DNS Service).
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Sandbox, SandboxHost } from './sandbox.js';

export interface DnsRecord {
  name: string;
  type: 'A' | 'AAAA' | 'CNAME';
  /** An address, or the CNAME target. */
  value: string;
  /** Seconds; default the server's ttl. */
  ttl?: number;
}

export interface DnsServerOptions {
  /** Sandbox host name; default "resolver". */
  hostName?: string;
  ipv4: string;
  ipv6?: string;
  records: readonly DnsRecord[];
  /** Zones answered authoritatively (unknown names: NXDOMAIN); default: each record name's last two labels. */
  zones?: readonly string[];
  /** Default TTL in seconds; default 60. */
  ttl?: number;
  /** Log every query to the server's stderr (collected in `log`). */
  logQueries?: boolean;
  dnsmasq?: string;
}

export interface SandboxDnsServer {
  readonly host: SandboxHost;
  readonly process: ChildProcess;
  /** What dnsmasq wrote to stderr so far. */
  log(): string;
  stop(): Promise<void>;
}

const NAME = /^[A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9_])?)*$/;

function checkName(n: string): string {
  const name = n.endsWith('.') ? n.slice(0, -1) : n;
  if (!NAME.test(name)) throw new TypeError(`${JSON.stringify(n)} is not a DNS name the test server can serve`);
  return name;
}

/** dnsmasq's configuration for the records (exported for tests). */
export function dnsmasqConfig(opts: DnsServerOptions, ip4: string, ip6: string): string {
  const ttl = opts.ttl ?? 60;
  const lines = [
    'no-resolv',
    'no-hosts',
    'no-poll',
    'bind-interfaces',
    `listen-address=${ip4}`,
    `listen-address=${ip6}`,
    'port=53',
    'user=root',
    'pid-file=',
    'log-facility=-',
    `local-ttl=${ttl}`,
    // Answer every record of a name, in the order given (no 'all-servers', no cache rotation needed).
  ];
  if (opts.logQueries) lines.push('log-queries');
  const zones = new Set(opts.zones ?? opts.records.map((r) => checkName(r.name).split('.').slice(-2).join('.')));
  for (const z of zones) lines.push(`local=/${checkName(z)}/`);
  for (const r of opts.records) {
    const name = checkName(r.name);
    const t = r.ttl ?? ttl;
    if (!Number.isInteger(t) || t < 0) throw new TypeError(`${name}: ttl must be a whole number of seconds`);
    if (r.type === 'CNAME') lines.push(`cname=${name},${checkName(r.value)},${t}`);
    else lines.push(`host-record=${name},${r.value},${t}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Adds the server's host to the sandbox and starts dnsmasq there; resolves once it answers. */
export async function startDnsServer(sb: Sandbox, opts: DnsServerOptions): Promise<SandboxDnsServer> {
  const host = await sb.addHost({ name: opts.hostName ?? 'resolver', kind: 'service', ipv4: opts.ipv4, ...(opts.ipv6 ? { ipv6: opts.ipv6 } : {}) });
  const dir = mkdtempSync(join(tmpdir(), 'weir-dnsmasq-'));
  const conf = join(dir, 'dnsmasq.conf');
  writeFileSync(conf, dnsmasqConfig(opts, host.ip, host.ip6));
  const child = sb.spawnInHost(host.name, [opts.dnsmasq ?? '/usr/sbin/dnsmasq', '--keep-in-foreground', `--conf-file=${conf}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  // Ready when the UDP socket is bound in the host's netns.
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(`dnsmasq exited: ${stderr.trim()}`);
    }
    const ss = await sb.runInNetns(host.netns, ['ss', '-Hlun', 'sport', '=', ':53']).catch(() => '');
    if (ss.includes(host.ip)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`dnsmasq did not start listening: ${stderr.trim()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { host, process: child, log: () => stderr, stop };
}

export interface DnsClusterIPs {
  ipv4: string;
  ipv6?: string;
}

/**
 * kube-proxy's part for the DNS Service: DNAT from the ClusterIP(s), UDP and
 * TCP port 53, to the server's addresses, in the node netns (nftables).
 * Goes away with the node netns.
 */
export async function exposeDnsService(sb: Sandbox, server: SandboxDnsServer, clusterIPs: DnsClusterIPs): Promise<void> {
  const rules = (family: 'ip' | 'ip6', from: string, to: string): string => {
    const dst = family === 'ip6' ? `[${to}]` : to;
    return [
      `table ${family} weir_sandbox_svc {`,
      '  chain prerouting {',
      '    type nat hook prerouting priority dstnat; policy accept;',
      `    ${family} daddr ${from} udp dport 53 dnat to ${dst}:53`,
      `    ${family} daddr ${from} tcp dport 53 dnat to ${dst}:53`,
      '  }',
      '}',
    ].join('\n');
  };
  const text = [rules('ip', clusterIPs.ipv4, server.host.ip), ...(clusterIPs.ipv6 ? [rules('ip6', clusterIPs.ipv6, server.host.ip6)] : [])].join('\n');
  const dir = mkdtempSync(join(tmpdir(), 'weir-dns-svc-'));
  try {
    const file = join(dir, 'rules.nft');
    writeFileSync(file, `${text}\n`);
    await sb.runInNetns(sb.nodeNetns, ['nft', '-f', file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The cluster DNS Service (kube-system/kube-dns, ClusterIPs as given, port
 * 53 UDP and TCP) and one EndpointSlice per family naming the server as its
 * ready backend: what the agent reads to trust the resolver.
 */
export function kubeDnsManifests(server: SandboxDnsServer, clusterIPs: DnsClusterIPs): object[] {
  const ips = [clusterIPs.ipv4, ...(clusterIPs.ipv6 ? [clusterIPs.ipv6] : [])];
  const ports = [
    { name: 'dns', protocol: 'UDP', port: 53 },
    { name: 'dns-tcp', protocol: 'TCP', port: 53 },
  ];
  const slice = (family: 'IPv4' | 'IPv6', address: string): object => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `kube-dns-${family.toLowerCase()}`, namespace: 'kube-system', labels: { 'kubernetes.io/service-name': 'kube-dns' } },
    addressType: family,
    endpoints: [{ addresses: [address], conditions: { ready: true } }],
    ports,
  });
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kube-system', labels: { 'kubernetes.io/metadata.name': 'kube-system' } } },
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns' } },
      spec: {
        clusterIP: clusterIPs.ipv4,
        clusterIPs: ips,
        ipFamilies: ips.map((ip) => (isIPv6(ip) ? 'IPv6' : 'IPv4')),
        ports: ports.map((p) => ({ ...p, targetPort: 53 })),
      },
    },
    slice('IPv4', server.host.ip),
    ...(clusterIPs.ipv6 ? [slice('IPv6', server.host.ip6)] : []),
  ];
}
