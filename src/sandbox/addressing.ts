// Addressing plan of the sandbox node. Every address below lives only inside
// network namespaces the sandbox creates; the node namespace routes /32 and
// /128 prefixes to its own veths and has no default route, so a packet to any
// other address dies in the node namespace (ICMP net unreachable), never
// reaching a real network.
//
//   pods          10.244.0.<n>/32          fd00:10:244::<n>/128     n = 2..254
//   gateway       169.254.1.1 (every node-side veth, Calico-style)  fe80::1
//   services      10.0.0.0/8 minus pods    fc00::/7                 e.g. 10.20.0.10
//   internet      203.0.113.0/24, 198.51.100.0/24 (RFC 5737)  2001:db8::/32 (RFC 3849)
//   dns (later)   reserved host name "dns"
//
// A host's IPv6 address defaults to its IPv4 octets written as IPv6 groups,
// so the two read alike: service 10.20.0.10 -> fd00:10:20::10, internet
// 203.0.113.10 -> 2001:db8:203::113:10.

import { isIPv4, isIPv6 } from 'node:net';

export const POD_CIDR_V4 = '10.244.0.0/24';
export const POD_CIDR_V6 = 'fd00:10:244::/64';
export const GATEWAY_V4 = '169.254.1.1';
export const GATEWAY_V6 = 'fe80::1';
/** MAC of every node-side veth (Calico uses the same trick): pods see one gateway. */
export const GATEWAY_MAC = 'ee:ee:ee:ee:ee:ee';
export const FIRST_POD_INDEX = 2;
export const LAST_POD_INDEX = 254;

export const SERVICE_RANGES_V4 = ['10.0.0.0/8'];
export const SERVICE_RANGES_V6 = ['fc00::/7'];
export const INTERNET_RANGES_V4 = ['203.0.113.0/24', '198.51.100.0/24'];
export const INTERNET_RANGES_V6 = ['2001:db8::/32'];

export function podIPv4(index: number): string {
  return `10.244.0.${index}`;
}

export function podIPv6(index: number): string {
  return `fd00:10:244::${index}`;
}

function parseV4(ip: string): bigint {
  if (!isIPv4(ip)) throw new TypeError(`not an IPv4 address: ${ip}`);
  return ip.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
}

function parseV6(ip: string): bigint {
  if (!isIPv6(ip)) throw new TypeError(`not an IPv6 address: ${ip}`);
  let text = ip;
  // An embedded dotted quad (::ffff:1.2.3.4) becomes two hex groups.
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (quad?.[1]) {
    const v = parseV4(quad[1]);
    text = text.slice(0, -quad[1].length) + `${(v >> 16n).toString(16)}:${(v & 0xffffn).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/** Canonical (RFC 5952) text of an IPv6 address. */
export function formatIPv6(value: bigint): string {
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

export function canonicalIPv6(ip: string): string {
  return formatIPv6(parseV6(ip));
}

/** True when `ip` lies inside `cidr` (same family; a family mismatch is false). */
export function cidrContains(cidr: string, ip: string): boolean {
  const [base = '', lenText = ''] = cidr.split('/');
  const len = Number(lenText);
  if (isIPv4(base)) {
    if (!isIPv4(ip)) return false;
    const shift = BigInt(32 - len);
    return parseV4(base) >> shift === parseV4(ip) >> shift;
  }
  if (!isIPv6(ip)) return false;
  const shift = BigInt(128 - len);
  return parseV6(base) >> shift === parseV6(ip) >> shift;
}

export type HostKind = 'service' | 'internet';

/** The IPv6 address a host gets when its spec names none (see the plan above). */
export function deriveHostIPv6(kind: HostKind, ipv4: string): string {
  const [a, b, c, d] = ipv4.split('.');
  const groups = kind === 'service' ? ['fd00', a, b, '0', '0', '0', c, d] : ['2001', 'db8', a, b, '0', '0', c, d];
  return canonicalIPv6(groups.join(':'));
}

/**
 * Checks that a host's addresses stay inside the ranges its kind may use, so
 * a sandbox can never be told to impersonate (and route to) a real address.
 */
export function checkHostAddresses(name: string, kind: HostKind, ipv4: string, ipv6: string): void {
  const v4 = kind === 'service' ? SERVICE_RANGES_V4 : INTERNET_RANGES_V4;
  const v6 = kind === 'service' ? SERVICE_RANGES_V6 : INTERNET_RANGES_V6;
  if (!isIPv4(ipv4)) throw new TypeError(`host ${name}: ipv4 ${ipv4} is not an IPv4 address`);
  if (!isIPv6(ipv6)) throw new TypeError(`host ${name}: ipv6 ${ipv6} is not an IPv6 address`);
  if (!v4.some((r) => cidrContains(r, ipv4))) {
    throw new RangeError(`host ${name} (${kind}): ${ipv4} is outside ${v4.join(', ')}`);
  }
  if (!v6.some((r) => cidrContains(r, ipv6))) {
    throw new RangeError(`host ${name} (${kind}): ${ipv6} is outside ${v6.join(', ')}`);
  }
  if (cidrContains(POD_CIDR_V4, ipv4) || cidrContains(POD_CIDR_V6, ipv6)) {
    throw new RangeError(`host ${name}: ${ipv4}/${ipv6} overlaps the pod range`);
  }
}

/**
 * Checks that a whole prefix routed to a host (Sandbox.routeToHost) stays
 * inside one range of the host's kind and clear of the pod range.
 */
export function checkHostPrefix(name: string, kind: HostKind, cidr: string): void {
  const [base = '', lenText = ''] = cidr.split('/');
  const len = Number(lenText);
  const fam = isIPv4(base) ? 4 : isIPv6(base) ? 6 : 0;
  if (fam === 0 || !/^\d+$/.test(lenText) || len > (fam === 4 ? 32 : 128)) throw new TypeError(`host ${name}: ${cidr} is not a prefix`);
  const ranges = fam === 4 ? (kind === 'service' ? SERVICE_RANGES_V4 : INTERNET_RANGES_V4) : kind === 'service' ? SERVICE_RANGES_V6 : INTERNET_RANGES_V6;
  const inside = ranges.some((r) => len >= Number(r.split('/')[1]) && cidrContains(r, base));
  if (!inside) throw new RangeError(`host ${name} (${kind}): ${cidr} is outside ${ranges.join(', ')}`);
  const pods = fam === 4 ? POD_CIDR_V4 : POD_CIDR_V6;
  const podBase = pods.split('/')[0] ?? '';
  if (cidrContains(pods, base) || cidrContains(cidr, podBase)) throw new RangeError(`host ${name}: ${cidr} overlaps the pod range`);
}
