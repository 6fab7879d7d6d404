// Validation and defaulting of the Kubernetes objects weir reads.
//
// Both sources pass every object through validateObject before it reaches the
// store, so the rest of the agent can trust the shapes in types.ts. The checks
// are the ones the API server (and, for weir's own kinds, its CRD schema)
// would make; in --manifests mode there is no API server, so this is the only
// gate between a typo and a policy that silently allows or drops too much.
//
// Principles:
// - An object is either accepted whole, with API defaults applied, or rejected
//   with every problem found (up to MAX_ISSUES), each naming the exact field
//   path (`spec.egress[0].to[1].ipBlock.cidr`), the value and what was
//   expected.
// - The returned object is a fresh copy holding only the fields in types.ts:
//   status churn and fields weir does not read never reach the store.
// - Policy kinds (NetworkPolicy, EgressPolicy, ClusterEgressPolicy) reject
//   unknown fields in their spec, the way `kubectl apply --validate=strict`
//   does: a misspelt `podselector` would otherwise widen a policy silently.
//   Pods, Services and EndpointSlices have large schemas weir does not read,
//   so unknown fields there are dropped, not rejected.
// - Kinds weir does not read are not errors ({ok: false, ignored: true}).
//
// Defaults applied (as the API server applies them):
// - `protocol: TCP` on policy ports, container ports, Service and
//   EndpointSlice ports; Service `targetPort` defaults to `port`.
// - NetworkPolicy `policyTypes`: when absent or empty, [Ingress] plus Egress
//   if `egress` holds at least one rule.
// - EgressPolicy / ClusterEgressPolicy `mode: Enforce`.
// - `metadata.namespace: default` for namespaced kinds without one (what
//   `kubectl apply -f` does with the default context).
// - Namespace label `kubernetes.io/metadata.name: <name>` (set by the API
//   server on every namespace since Kubernetes 1.22).
// - Pod `status.podIP` / `status.podIPs` and Service `clusterIP` /
//   `clusterIPs` filled from each other.
// Normalisations: an empty `to`, `ports`, `egress` or `deny` list is dropped
// (Kubernetes does not distinguish [] from absent there, and dropping it means
// no consumer can mistake [] for "nothing"); FQDN names and patterns are
// lower-cased without a trailing dot.
//
// Size limits (an object over a limit is rejected with a message naming it):
// - MAX_RULES_PER_POLICY = 10,000 rules per policy (egress + deny, or
//   ingress + egress for a NetworkPolicy).
// - MAX_PEERS_PER_POLICY = 10,000 peers (`to`/`from` entries) per policy.
// - MAX_PORTS_PER_POLICY = 10,000 port entries per policy.
// - MAX_EXCEPTS_PER_POLICY = 10,000 ipBlock `except` entries per policy.
// - MAX_SELECTOR_REQUIREMENTS = 1,000 matchLabels + matchExpressions entries
//   per selector; MAX_SELECTOR_VALUES = 1,000 values per expression.
// - MAX_MAP_ENTRIES = 10,000 labels (or selector entries) per map.
// - MAX_ANNOTATION_BYTES = 256 KiB of annotations per object (the API
//   server's own limit).
// - MAX_LIST_LENGTH = 10,000 entries in any other list (containers, ports…);
//   EndpointSlices keep the API limits: 1,000 endpoints, 100 addresses per
//   endpoint, 100 ports.
// - MAX_STRING_LENGTH = 4,096 characters for strings without a tighter syntax
//   limit (names are 63 or 253, label values 63, FQDNs 253).

import { isIPv6 } from 'node:net';
import type {
  ClusterEgressPolicy,
  Container,
  ContainerPort,
  EgressPeer,
  EgressPolicy,
  EgressPolicySpec,
  EgressRule,
  EndpointSlice,
  FQDNSelector,
  IPBlock,
  KubeObject,
  LabelSelector,
  LabelSelectorOperator,
  LabelSelectorRequirement,
  Namespace,
  NetworkPolicy,
  NetworkPolicyPort,
  ObjectMeta,
  OwnerReference,
  Pod,
  PolicyMode,
  PolicyType,
  Protocol,
  QosClass,
  Service,
  ServicePort,
} from './types.js';
import { objectKey } from './types.js';
import { FQDN_MAX, dnsNameProblem, dnsPatternProblem, normalizeDNSName } from '../policy/fqdn.js';

export const LIMITS = Object.freeze({
  MAX_RULES_PER_POLICY: 10_000,
  MAX_PEERS_PER_POLICY: 10_000,
  MAX_PORTS_PER_POLICY: 10_000,
  MAX_EXCEPTS_PER_POLICY: 10_000,
  MAX_SELECTOR_REQUIREMENTS: 1_000,
  MAX_SELECTOR_VALUES: 1_000,
  MAX_MAP_ENTRIES: 10_000,
  MAX_ANNOTATION_BYTES: 256 * 1024,
  MAX_LIST_LENGTH: 10_000,
  MAX_ENDPOINTS_PER_SLICE: 1_000,
  MAX_ADDRESSES_PER_ENDPOINT: 100,
  MAX_PORTS_PER_SLICE: 100,
  MAX_STRING_LENGTH: 4_096,
  /** Problems reported per object; the rest are counted, not listed. */
  MAX_ISSUES: 100,
});

// ---------------------------------------------------------------------------
// Results and errors

/** Where an object came from, for messages. */
export interface ValidationLocation {
  /** File path as it should appear in messages (relative to the manifests dir). */
  file?: string;
  /** Zero-based position of the YAML document in the file; shown 1-based. */
  index?: number;
  /** Zero-based position inside a List's `items`. */
  item?: number;
}

export interface ValidationIssue {
  /** Field path from the object root, e.g. `spec.egress[0].ports[0].port`; '' for the whole object. */
  field: string;
  /** What is wrong and what was expected. */
  problem: string;
}

export class ValidationError extends Error {
  override readonly name = 'ValidationError';
  readonly file: string | undefined;
  /** 1-based document number, as shown in the message. */
  readonly document: number | undefined;
  readonly item: number | undefined;
  /** `Kind namespace/name` (or `Kind name` for cluster-scoped kinds), when known. */
  readonly object: string | undefined;
  readonly kind: string | undefined;
  readonly namespace: string | undefined;
  readonly objectName: string | undefined;
  /**
   * The objectKey (`kind/namespace/name`) the refused object would have had,
   * when its kind is one weir reads and its name is known: lets a source keep
   * the last good version of exactly that object.
   */
  readonly key: string | undefined;
  /** The first issue's field path. */
  readonly field: string;
  /** The first issue's problem. */
  readonly problem: string;
  readonly issues: readonly ValidationIssue[];
  /** Issues found beyond MAX_ISSUES. */
  readonly moreIssues: number;

  constructor(
    where: ValidationLocation,
    identity: ObjectIdentity,
    issues: readonly ValidationIssue[],
    moreIssues = 0,
  ) {
    const first = issues[0] ?? { field: '', problem: 'invalid object' };
    const objectLabel = identity.kind !== undefined ? describeIdentity(identity) : undefined;
    const head = [formatLocation(where), objectLabel].filter((s) => s !== undefined && s !== '').join(': ');
    const issueText = (i: ValidationIssue): string => (i.field === '' ? i.problem : `${i.field}: ${i.problem}`);
    let message = head === '' ? issueText(first) : `${head}: ${issueText(first)}`;
    const rest = issues.slice(1, 10).map(issueText);
    const hidden = issues.length - 1 - rest.length + moreIssues;
    if (rest.length > 0) message += `; ${rest.join('; ')}`;
    if (hidden > 0) message += `; and ${hidden} more problem${hidden === 1 ? '' : 's'}`;
    super(message);
    this.file = where.file;
    this.document = where.index === undefined ? undefined : where.index + 1;
    this.item = where.item;
    this.object = objectLabel;
    this.kind = identity.kind;
    this.namespace = identity.namespace;
    this.objectName = identity.name;
    this.key = identity.key;
    this.field = first.field;
    this.problem = first.problem;
    this.issues = issues;
    this.moreIssues = moreIssues;
  }
}

export interface ObjectIdentity {
  apiVersion?: string | undefined;
  kind?: string | undefined;
  namespace?: string | undefined;
  name?: string | undefined;
  /** objectKey, for kinds weir reads whose name is known. */
  key?: string | undefined;
}

export type ValidationResult =
  | { ok: true; object: KubeObject }
  | { ok: false; ignored: true; apiVersion: string; kind: string }
  | { ok: false; ignored: false; error: ValidationError };

function formatLocation(where: ValidationLocation): string {
  const parts: string[] = [];
  if (where.index !== undefined) parts.push(`document ${where.index + 1}`);
  if (where.item !== undefined) parts.push(`items[${where.item}]`);
  if (where.file !== undefined && where.file !== '') {
    return parts.length > 0 ? `${where.file} (${parts.join(', ')})` : where.file;
  }
  return parts.join(', ');
}

function describeIdentity(id: ObjectIdentity): string {
  const name = id.name ?? '<unnamed>';
  return id.namespace !== undefined ? `${id.kind ?? '<no kind>'} ${id.namespace}/${name}` : `${id.kind ?? '<no kind>'} ${name}`;
}

/** `Kind namespace/name` or `Kind name`, the way every message names an object. */
export function describeObject(o: { kind: string; metadata: { name: string; namespace?: string } }): string {
  return describeIdentity({ kind: o.kind, name: o.metadata.name, namespace: o.metadata.namespace });
}

// ---------------------------------------------------------------------------
// Syntax checks shared with other modules

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const QUALIFIED_NAME_PART = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const IANA_SVC_NAME = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

export function isDNS1123Label(s: string): boolean {
  return s.length <= 63 && DNS1123_LABEL.test(s);
}

export function isDNS1123Subdomain(s: string): boolean {
  return s.length <= 253 && DNS1123_SUBDOMAIN.test(s);
}

export function isDNS1035Label(s: string): boolean {
  return s.length <= 63 && DNS1035_LABEL.test(s);
}

/** A label or annotation key: `[prefix/]name`, prefix a DNS-1123 subdomain. */
export function isQualifiedName(s: string): boolean {
  return qualifiedNameProblem(s) === undefined;
}

function qualifiedNameProblem(s: string): string | undefined {
  const parts = s.split('/');
  let name: string;
  if (parts.length === 1) {
    name = s;
  } else if (parts.length === 2) {
    const prefix = parts[0] ?? '';
    name = parts[1] ?? '';
    if (prefix === '') return 'the prefix before "/" must not be empty';
    if (!isDNS1123Subdomain(prefix)) {
      return `the prefix ${quote(prefix)} must be a lowercase DNS-1123 subdomain of at most 253 characters`;
    }
  } else {
    return 'must be a name with at most one "/" prefix separator (prefix/name)';
  }
  if (name === '') return 'the name part must not be empty';
  if (name.length > 63) return `the name part is ${name.length} characters; at most 63 allowed`;
  if (!QUALIFIED_NAME_PART.test(name)) {
    return "the name part must consist of letters, digits, '-', '_' or '.', and start and end with a letter or digit";
  }
  return undefined;
}

export function isLabelValue(s: string): boolean {
  return s.length <= 63 && LABEL_VALUE.test(s);
}

/** A named port (IANA_SVC_NAME): ≤15 chars of [a-z0-9-], at least one letter, no '--', no edge '-'. */
export function isPortName(s: string): boolean {
  return s.length >= 1 && s.length <= 15 && IANA_SVC_NAME.test(s) && /[a-z]/.test(s) && !s.includes('--');
}

// ---------------------------------------------------------------------------
// IP addresses and CIDRs

export interface ParsedIP {
  family: 4 | 6;
  /** 4 or 16 bytes, network order. */
  bytes: Uint8Array;
}

export interface ParsedCIDR extends ParsedIP {
  prefix: number;
}

function parseIPv4(s: string): Uint8Array | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i] ?? '';
    // No leading zeros: "010" is octal to some parsers and decimal to others.
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseIPv6(s: string): Uint8Array | undefined {
  // Zones (fe80::1%eth0) are not addresses a policy or pod can hold.
  if (s.includes('%') || !isIPv6(s)) return undefined;
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groupsOf = (h: string): number[] | undefined => {
    if (h === '') return [];
    const out: number[] = [];
    const parts = h.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i] ?? '';
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = parseIPv4(p);
        if (v4 === undefined) return undefined;
        out.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined;
        out.push(parseInt(p, 16));
      }
    }
    return out;
  };
  const head = groupsOf(halves[0] ?? '');
  const tail = halves.length === 2 ? groupsOf(halves[1] ?? '') : [];
  if (head === undefined || tail === undefined) return undefined;
  let groups: number[];
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return undefined;
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return undefined;
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  return out;
}

/** Parses an IPv4 or IPv6 address (no zone, no leading zeros in IPv4 octets). */
export function parseIP(s: string): ParsedIP | undefined {
  const v4 = parseIPv4(s);
  if (v4 !== undefined) return { family: 4, bytes: v4 };
  const v6 = parseIPv6(s);
  if (v6 !== undefined) return { family: 6, bytes: v6 };
  return undefined;
}

/**
 * Parses `address/prefix`. Host bits may be set (`10.0.0.1/24`): the API
 * server accepts that for ipBlock, and it means the network `10.0.0.0/24`.
 * `bytes` holds the address as written; use cidrNetwork for the masked form.
 */
export function parseCIDR(s: string): ParsedCIDR | undefined {
  const slash = s.indexOf('/');
  if (slash < 0) return undefined;
  const ip = parseIP(s.slice(0, slash));
  const p = s.slice(slash + 1);
  if (ip === undefined || !/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
  const prefix = Number(p);
  if (prefix > (ip.family === 4 ? 32 : 128)) return undefined;
  return { ...ip, prefix };
}

/** The address with host bits cleared. */
export function cidrNetwork(c: ParsedCIDR): Uint8Array {
  const out = new Uint8Array(c.bytes);
  for (let bit = c.prefix; bit < out.length * 8; bit++) {
    const i = bit >> 3;
    out[i] = (out[i] ?? 0) & ~(0x80 >> (bit & 7));
  }
  return out;
}

/** Whether `outer` contains the address `ip` (same family required). */
export function cidrContainsIP(outer: ParsedCIDR, ip: ParsedIP): boolean {
  if (outer.family !== ip.family) return false;
  for (let bit = 0; bit < outer.prefix; bit++) {
    const i = bit >> 3;
    const mask = 0x80 >> (bit & 7);
    if (((outer.bytes[i] ?? 0) & mask) !== ((ip.bytes[i] ?? 0) & mask)) return false;
  }
  return true;
}

function formatIP(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return Array.from(bytes).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

// ---------------------------------------------------------------------------
// The checker: collects issues with their field paths

type Rec = Record<string, unknown>;

function isRecord(v: unknown): v is Rec {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function quote(s: string): string {
  const q = JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
  return q;
}

/** A value as it appears in a message: numbers bare, strings quoted, containers named. */
function show(v: unknown): string {
  if (typeof v === 'string') return quote(v);
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (typeof v === 'boolean') return `${String(v)} (a boolean)`;
  if (v === null) return 'null';
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return 'a list';
  if (v instanceof Date) return `${v.toISOString()} (a timestamp)`;
  if (isRecord(v)) return 'a mapping';
  return typeof v;
}

/**
 * A field name as it appears in a path: a name from the document may be
 * any length (a 1 MB unknown key), and the path is copied into every
 * message, log line and Event about it.
 */
function shortName(name: string): string {
  return name.length > 64 ? `${name.slice(0, 61)}...` : name;
}

function field(path: string, name: string): string {
  const n = shortName(name);
  return path === '' ? n : `${path}.${n}`;
}

function mapKey(path: string, key: string): string {
  return `${path}[${shortName(key)}]`;
}

function editDistance(a: string, b: string): number {
  const d: number[] = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0] ?? 0;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j] ?? 0;
      d[j] = Math.min((d[j] ?? 0) + 1, (d[j - 1] ?? 0) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length] ?? 0;
}

class Checker {
  readonly issues: ValidationIssue[] = [];
  more = 0;

  add(path: string, problem: string): void {
    if (this.issues.length < LIMITS.MAX_ISSUES) this.issues.push({ field: path, problem });
    else this.more++;
  }

  get failed(): boolean {
    return this.issues.length > 0;
  }

  /** Rejects fields not in `allowed` (policy specs only), suggesting the closest known name. */
  known(obj: Rec, path: string, allowed: readonly string[], hints: Record<string, string> = {}): void {
    for (const k of Object.keys(obj)) {
      if (allowed.includes(k)) continue;
      const hint = hints[k];
      if (hint !== undefined) {
        this.add(field(path, k), `unknown field (${hint})`);
        continue;
      }
      const close = allowed.find((a) => a.toLowerCase() === k.toLowerCase() || editDistance(a, k) <= 2);
      const expected = `expected one of: ${allowed.join(', ')}`;
      this.add(field(path, k), close !== undefined ? `unknown field (did you mean ${close}?)` : `unknown field (${expected})`);
    }
  }

  record(v: unknown, path: string, what = 'a mapping'): Rec | undefined {
    if (isRecord(v)) return v;
    this.add(path, `${show(v)} is not ${what}`);
    return undefined;
  }

  /** Returns the list, or undefined (with an issue) when it is not a list or too long. */
  list(v: unknown, path: string, max: number = LIMITS.MAX_LIST_LENGTH, why = 'limit MAX_LIST_LENGTH'): unknown[] | undefined {
    if (!Array.isArray(v)) {
      this.add(path, `${show(v)} is not a list`);
      return undefined;
    }
    if (v.length > max) {
      this.add(path, `${v.length} entries; at most ${max} allowed (${why})`);
      return undefined;
    }
    return v;
  }

  string(v: unknown, path: string, max: number = LIMITS.MAX_STRING_LENGTH): string | undefined {
    if (typeof v !== 'string') {
      this.add(path, `${show(v)} is not a string`);
      return undefined;
    }
    if (v.length > max) {
      this.add(path, `${v.length} characters; at most ${max} allowed${max === LIMITS.MAX_STRING_LENGTH ? ' (limit MAX_STRING_LENGTH)' : ''}`);
      return undefined;
    }
    return v;
  }

  boolean(v: unknown, path: string): boolean | undefined {
    if (typeof v === 'boolean') return v;
    this.add(path, `${show(v)} is not a boolean (expected true or false)`);
    return undefined;
  }

  integer(v: unknown, path: string, min: number, max: number, what: string): number | undefined {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      if (typeof v === 'string' && /^[0-9]+$/.test(v)) {
        this.add(path, `${show(v)} is a string; write the number without quotes (${what}, ${min}-${max})`);
      } else {
        this.add(path, `${show(v)} is not ${what} (${min}-${max})`);
      }
      return undefined;
    }
    return v;
  }

  port(v: unknown, path: string): number | undefined {
    return this.integer(v, path, 1, 65535, 'a port');
  }

  /** A number port or an IANA_SVC_NAME (IntOrString). */
  portOrName(v: unknown, path: string): number | string | undefined {
    if (typeof v === 'string') {
      if (/^[0-9]+$/.test(v)) {
        this.add(path, `${show(v)} is a quoted number; write the port without quotes (a named port must contain a letter)`);
        return undefined;
      }
      if (!isPortName(v)) {
        this.add(
          path,
          `${show(v)} is not a valid port name (IANA_SVC_NAME: at most 15 lowercase letters, digits and '-', with at least one letter, no '--', not starting or ending with '-')`,
        );
        return undefined;
      }
      return v;
    }
    return this.port(v, path);
  }

  protocol(v: unknown, path: string): Protocol | undefined {
    if (v === undefined || v === null) return 'TCP';
    if (v === 'TCP' || v === 'UDP' || v === 'SCTP') return v;
    const hint = typeof v === 'string' && ['TCP', 'UDP', 'SCTP'].includes(v.toUpperCase()) ? '; protocol names are upper case' : '';
    this.add(path, `${show(v)} is not a protocol (expected TCP, UDP or SCTP${hint})`);
    return undefined;
  }

  ip(v: unknown, path: string, family?: 4 | 6): string | undefined {
    const s = this.string(v, path, 64);
    if (s === undefined) return undefined;
    const ip = parseIP(s);
    if (ip === undefined) {
      this.add(path, `${show(s)} is not an IP address (expected IPv4 like 10.1.2.3 or IPv6 like fd00::1)`);
      return undefined;
    }
    if (family !== undefined && ip.family !== family) {
      this.add(path, `${show(s)} is an IPv${ip.family} address; expected IPv${family}`);
      return undefined;
    }
    return s;
  }

  name(v: unknown, path: string, rule: 'label' | 'subdomain' | 'dns1035'): string | undefined {
    if (v === undefined || v === null || v === '') {
      this.add(path, 'required');
      return undefined;
    }
    const s = this.string(v, path, 253);
    if (s === undefined) return undefined;
    const ok = rule === 'label' ? isDNS1123Label(s) : rule === 'subdomain' ? isDNS1123Subdomain(s) : isDNS1035Label(s);
    if (!ok) {
      const expected =
        rule === 'label'
          ? "a lowercase RFC 1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
          : rule === 'subdomain'
            ? "a lowercase RFC 1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            : "a lowercase RFC 1035 label: at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit";
      this.add(path, `${show(s)} is not a valid name (expected ${expected})`);
      return undefined;
    }
    return s;
  }

  labelKey(k: string, path: string): boolean {
    const p = qualifiedNameProblem(k);
    if (p === undefined) return true;
    this.add(path, `${show(k)} is not a valid label key: ${p}`);
    return false;
  }

  labelValue(v: unknown, path: string): string | undefined {
    if (typeof v !== 'string') {
      const hint = typeof v === 'number' || typeof v === 'boolean' || v === null ? ' (quote it in YAML)' : '';
      this.add(path, `${show(v)} is not a string; label values must be strings${hint}`);
      return undefined;
    }
    if (!isLabelValue(v)) {
      this.add(
        path,
        v.length > 63
          ? `label value is ${v.length} characters; at most 63 allowed`
          : `${show(v)} is not a valid label value (letters, digits, '-', '_' and '.', starting and ending with a letter or digit, or empty)`,
      );
      return undefined;
    }
    return v;
  }

  labels(v: unknown, path: string): Record<string, string> | undefined {
    const rec = this.record(v, path);
    if (rec === undefined) return undefined;
    const keys = Object.keys(rec);
    if (keys.length > LIMITS.MAX_MAP_ENTRIES) {
      this.add(path, `${keys.length} entries; at most ${LIMITS.MAX_MAP_ENTRIES} allowed (limit MAX_MAP_ENTRIES)`);
      return undefined;
    }
    const out: Record<string, string> = {};
    for (const k of keys) {
      const p = mapKey(path, k);
      const okKey = this.labelKey(k, p);
      const val = this.labelValue(rec[k], p);
      if (okKey && val !== undefined) out[k] = val;
    }
    return out;
  }
}

function present(obj: Rec, k: string): boolean {
  return obj[k] !== undefined && obj[k] !== null;
}

// ---------------------------------------------------------------------------
// Metadata

type Scope = 'namespaced' | 'cluster';

function checkMeta(c: Checker, raw: Rec, kind: string, scope: Scope, nameRule: 'label' | 'subdomain' | 'dns1035'): ObjectMeta {
  const out: ObjectMeta = { name: '' };
  if (!present(raw, 'metadata')) {
    c.add('metadata', 'required (with at least metadata.name)');
    return out;
  }
  const m = c.record(raw['metadata'], 'metadata');
  if (m === undefined) return out;

  const name = c.name(m['name'], 'metadata.name', nameRule);
  if (name !== undefined) out.name = name;

  if (scope === 'namespaced') {
    if (present(m, 'namespace') && m['namespace'] !== '') {
      const ns = c.name(m['namespace'], 'metadata.namespace', 'label');
      if (ns !== undefined) out.namespace = ns;
    } else {
      out.namespace = 'default';
    }
  } else if (present(m, 'namespace') && m['namespace'] !== '') {
    c.add('metadata.namespace', `${show(m['namespace'])}: ${kind} is cluster-scoped and must not have a namespace`);
  }

  if (present(m, 'uid')) {
    const uid = c.string(m['uid'], 'metadata.uid', 128);
    if (uid !== undefined) out.uid = uid;
  }
  if (present(m, 'resourceVersion')) {
    const rv = c.string(m['resourceVersion'], 'metadata.resourceVersion', 128);
    if (rv !== undefined) out.resourceVersion = rv;
  }
  if (present(m, 'generation')) {
    const g = c.integer(m['generation'], 'metadata.generation', 0, Number.MAX_SAFE_INTEGER, 'a generation');
    if (g !== undefined) out.generation = g;
  }
  if (present(m, 'labels')) {
    const labels = c.labels(m['labels'], 'metadata.labels');
    if (labels !== undefined) out.labels = labels;
  }
  if (present(m, 'annotations')) {
    const a = c.record(m['annotations'], 'metadata.annotations');
    if (a !== undefined) {
      const annotations: Record<string, string> = {};
      let bytes = 0;
      for (const [k, v] of Object.entries(a)) {
        const p = mapKey('metadata.annotations', k);
        const okKey = c.labelKey(k, p);
        if (typeof v !== 'string') {
          c.add(p, `${show(v)} is not a string; annotation values must be strings (quote it in YAML)`);
          continue;
        }
        bytes += Buffer.byteLength(k) + Buffer.byteLength(v);
        if (okKey) annotations[k] = v;
      }
      if (bytes > LIMITS.MAX_ANNOTATION_BYTES) {
        c.add('metadata.annotations', `${bytes} bytes; at most ${LIMITS.MAX_ANNOTATION_BYTES} allowed (limit MAX_ANNOTATION_BYTES)`);
      } else {
        out.annotations = annotations;
      }
    }
  }
  if (present(m, 'ownerReferences')) {
    const refs = c.list(m['ownerReferences'], 'metadata.ownerReferences');
    if (refs !== undefined) {
      const owners: OwnerReference[] = [];
      refs.forEach((r, i) => {
        const p = `metadata.ownerReferences[${i}]`;
        const o = c.record(r, p);
        if (o === undefined) return;
        const ref: Partial<OwnerReference> = {};
        for (const k of ['apiVersion', 'kind', 'name'] as const) {
          if (!present(o, k)) c.add(field(p, k), 'required');
          else {
            const s = c.string(o[k], field(p, k));
            if (s !== undefined) ref[k] = s;
          }
        }
        if (present(o, 'uid')) {
          const uid = c.string(o['uid'], field(p, 'uid'), 128);
          if (uid !== undefined) ref.uid = uid;
        }
        if (present(o, 'controller')) {
          const b = c.boolean(o['controller'], field(p, 'controller'));
          if (b !== undefined) ref.controller = b;
        }
        if (ref.apiVersion !== undefined && ref.kind !== undefined && ref.name !== undefined) {
          owners.push({ ...ref, apiVersion: ref.apiVersion, kind: ref.kind, name: ref.name });
        }
      });
      if (owners.filter((o) => o.controller === true).length > 1) {
        c.add('metadata.ownerReferences', 'only one reference may have controller: true');
      }
      out.ownerReferences = owners;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Label selectors

const OPERATORS: readonly LabelSelectorOperator[] = ['In', 'NotIn', 'Exists', 'DoesNotExist'];

function checkSelector(c: Checker, v: unknown, path: string): LabelSelector | undefined {
  const rec = c.record(v, path, 'a label selector (a mapping with matchLabels and/or matchExpressions)');
  if (rec === undefined) return undefined;
  c.known(rec, path, ['matchLabels', 'matchExpressions']);
  const out: LabelSelector = {};
  let count = 0;
  if (present(rec, 'matchLabels')) {
    const ml = c.labels(rec['matchLabels'], field(path, 'matchLabels'));
    if (ml !== undefined) {
      out.matchLabels = ml;
      count += Object.keys(ml).length;
    }
  }
  if (present(rec, 'matchExpressions')) {
    const mp = field(path, 'matchExpressions');
    const list = c.list(rec['matchExpressions'], mp, LIMITS.MAX_SELECTOR_REQUIREMENTS, 'limit MAX_SELECTOR_REQUIREMENTS');
    if (list !== undefined) {
      count += list.length;
      const exprs: LabelSelectorRequirement[] = [];
      list.forEach((e, i) => {
        const r = checkRequirement(c, e, `${mp}[${i}]`);
        if (r !== undefined) exprs.push(r);
      });
      out.matchExpressions = exprs;
    }
  }
  if (count > LIMITS.MAX_SELECTOR_REQUIREMENTS) {
    c.add(path, `${count} requirements; at most ${LIMITS.MAX_SELECTOR_REQUIREMENTS} allowed (limit MAX_SELECTOR_REQUIREMENTS)`);
  }
  return out;
}

function checkRequirement(c: Checker, v: unknown, path: string): LabelSelectorRequirement | undefined {
  const rec = c.record(v, path, 'a requirement (a mapping with key, operator and values)');
  if (rec === undefined) return undefined;
  c.known(rec, path, ['key', 'operator', 'values']);
  let key: string | undefined;
  if (!present(rec, 'key') || rec['key'] === '') c.add(field(path, 'key'), 'required');
  else {
    const k = c.string(rec['key'], field(path, 'key'), 317);
    if (k !== undefined && c.labelKey(k, field(path, 'key'))) key = k;
  }
  let operator: LabelSelectorOperator | undefined;
  const op = rec['operator'];
  if (!present(rec, 'operator')) c.add(field(path, 'operator'), 'required (In, NotIn, Exists or DoesNotExist)');
  else if (typeof op === 'string' && (OPERATORS as readonly string[]).includes(op)) operator = op as LabelSelectorOperator;
  else c.add(field(path, 'operator'), `${show(op)} is not a selector operator (expected In, NotIn, Exists or DoesNotExist)`);

  let values: string[] | undefined;
  const vp = field(path, 'values');
  if (present(rec, 'values')) {
    const list = c.list(rec['values'], vp, LIMITS.MAX_SELECTOR_VALUES, 'limit MAX_SELECTOR_VALUES');
    if (list !== undefined) {
      values = [];
      list.forEach((x, i) => {
        const s = c.labelValue(x, `${vp}[${i}]`);
        if (s !== undefined) values?.push(s);
      });
    }
  }
  const rawValues = rec['values'];
  if (operator === 'In' || operator === 'NotIn') {
    if (!present(rec, 'values')) c.add(vp, `required when operator is ${operator} (at least one value)`);
    else if (Array.isArray(rawValues) && rawValues.length === 0) c.add(vp, `must not be empty when operator is ${operator}`);
  } else if ((operator === 'Exists' || operator === 'DoesNotExist') && Array.isArray(rawValues) && rawValues.length > 0) {
    c.add(vp, `must be empty when operator is ${operator}`);
  }
  if (key === undefined || operator === undefined) return undefined;
  const out: LabelSelectorRequirement = { key, operator };
  if ((operator === 'In' || operator === 'NotIn') && values !== undefined) out.values = values;
  return out;
}

// ---------------------------------------------------------------------------
// Policy pieces: ports, peers, rules

interface PolicyBudget {
  peers: number;
  ports: number;
  excepts: number;
}

function checkPolicyPort(c: Checker, v: unknown, path: string): NetworkPolicyPort | undefined {
  const rec = c.record(v, path, 'a port (a mapping with protocol, port and endPort)');
  if (rec === undefined) return undefined;
  c.known(rec, path, ['protocol', 'port', 'endPort']);
  const protocol = c.protocol(rec['protocol'], field(path, 'protocol'));
  const out: NetworkPolicyPort = { protocol: protocol ?? 'TCP' };
  let port: number | string | undefined;
  if (present(rec, 'port')) {
    port = c.portOrName(rec['port'], field(path, 'port'));
    if (port !== undefined) out.port = port;
  }
  if (present(rec, 'endPort')) {
    const ep = field(path, 'endPort');
    const end = c.port(rec['endPort'], ep);
    if (!present(rec, 'port')) c.add(ep, 'endPort requires a numeric port (the start of the range)');
    else if (typeof rec['port'] === 'string') c.add(ep, `endPort may only be used with a numeric port, not the named port ${show(rec['port'])}`);
    else if (end !== undefined && typeof port === 'number' && end < port) c.add(ep, `${end} is less than port ${port}; endPort must be ≥ port`);
    if (end !== undefined) out.endPort = end;
  }
  return protocol === undefined ? undefined : out;
}

function checkIPBlock(c: Checker, v: unknown, path: string, budget: PolicyBudget): IPBlock | undefined {
  const rec = c.record(v, path, 'an ipBlock (a mapping with cidr and except)');
  if (rec === undefined) return undefined;
  c.known(rec, path, ['cidr', 'except']);
  const cp = field(path, 'cidr');
  let outer: ParsedCIDR | undefined;
  let cidr: string | undefined;
  if (!present(rec, 'cidr') || rec['cidr'] === '') c.add(cp, 'required (a CIDR like 10.0.0.0/8 or fd00::/8)');
  else {
    cidr = c.string(rec['cidr'], cp, 64);
    if (cidr !== undefined) {
      outer = parseCIDR(cidr);
      if (outer === undefined) {
        const hint = parseIP(cidr) !== undefined ? ` (an address needs a prefix length, e.g. ${cidr}/${parseIP(cidr)?.family === 4 ? 32 : 128})` : '';
        c.add(cp, `${show(cidr)} is not a valid CIDR${hint || ' (expected address/prefix, e.g. 10.0.0.0/8 or fd00::/8)'}`);
      }
    }
  }
  const out: IPBlock = { cidr: cidr ?? '' };
  if (present(rec, 'except')) {
    const ep = field(path, 'except');
    const list = c.list(rec['except'], ep);
    if (list !== undefined) {
      budget.excepts += list.length;
      const except: string[] = [];
      list.forEach((x, i) => {
        const p = `${ep}[${i}]`;
        const s = c.string(x, p, 64);
        if (s === undefined) return;
        const inner = parseCIDR(s);
        if (inner === undefined) {
          c.add(p, `${show(s)} is not a valid CIDR (expected address/prefix, e.g. 10.0.9.0/24)`);
          return;
        }
        if (outer !== undefined && cidr !== undefined) {
          if (inner.family !== outer.family) {
            c.add(p, `${show(s)} is IPv${inner.family} but cidr ${show(cidr)} is IPv${outer.family}; except entries must be the same family`);
            return;
          }
          const innerNet: ParsedIP = { family: inner.family, bytes: cidrNetwork(inner) };
          if (!cidrContainsIP(outer, innerNet) || inner.prefix <= outer.prefix) {
            const outerNet = `${formatIP(outer.family, cidrNetwork(outer))}/${outer.prefix}`;
            c.add(p, `${show(s)} is not strictly within cidr ${outerNet}; except entries must be smaller ranges inside cidr`);
            return;
          }
        }
        except.push(s);
      });
      if (except.length > 0) out.except = except;
    }
  }
  return cidr !== undefined && outer !== undefined ? out : undefined;
}

function checkFQDN(c: Checker, v: unknown, path: string): FQDNSelector | undefined {
  const rec = c.record(v, path, 'an fqdn selector (a mapping with matchName or matchPattern)');
  if (rec === undefined) return undefined;
  c.known(rec, path, ['matchName', 'matchPattern']);
  const hasName = present(rec, 'matchName');
  const hasPattern = present(rec, 'matchPattern');
  if (hasName === hasPattern) {
    c.add(path, hasName ? 'set exactly one of matchName or matchPattern, not both' : 'set exactly one of matchName or matchPattern');
    return undefined;
  }
  if (hasName) {
    const p = field(path, 'matchName');
    const s = c.string(rec['matchName'], p, FQDN_MAX + 1);
    if (s === undefined) return undefined;
    if (s.includes('*')) {
      c.add(p, `${show(s)}: matchName takes a plain DNS name; use matchPattern for "*." wildcards`);
      return undefined;
    }
    const name = normalizeDNSName(s);
    const problem = dnsNameProblem(name);
    if (problem !== undefined) {
      c.add(p, `${show(s)} is not a DNS name: it ${problem}`);
      return undefined;
    }
    return { matchName: name };
  }
  const p = field(path, 'matchPattern');
  const s = c.string(rec['matchPattern'], p, FQDN_MAX + 1);
  if (s === undefined) return undefined;
  const pattern = normalizeDNSName(s);
  const problem = dnsPatternProblem(pattern);
  if (problem !== undefined) {
    c.add(p, problem.startsWith('"*"') || problem.startsWith('a pattern') ? `${show(s)}: ${problem}` : `${show(s)} ${problem}`);
    return undefined;
  }
  return { matchPattern: pattern };
}

function checkPeer(c: Checker, v: unknown, path: string, allowFqdn: boolean, budget: PolicyBudget): EgressPeer | undefined {
  const rec = c.record(v, path, 'a peer (a mapping)');
  if (rec === undefined) return undefined;
  const allowed = allowFqdn ? ['podSelector', 'namespaceSelector', 'ipBlock', 'fqdn'] : ['podSelector', 'namespaceSelector', 'ipBlock'];
  c.known(rec, path, allowed, allowFqdn ? {} : { fqdn: 'fqdn peers are only available in weir.dev EgressPolicy and ClusterEgressPolicy' });
  const kinds: string[] = [];
  if (present(rec, 'podSelector') || present(rec, 'namespaceSelector')) kinds.push('podSelector/namespaceSelector');
  if (present(rec, 'ipBlock')) kinds.push('ipBlock');
  if (allowFqdn && present(rec, 'fqdn')) kinds.push('fqdn');
  const choices = allowFqdn ? '(podSelector and/or namespaceSelector), ipBlock or fqdn' : '(podSelector and/or namespaceSelector) or ipBlock';
  if (kinds.length === 0) {
    c.add(path, `a peer must set ${choices}`);
    return undefined;
  }
  if (kinds.length > 1) {
    c.add(path, `a peer sets exactly one of ${choices}; this one sets ${kinds.join(' and ')} (write them as separate peers)`);
    return undefined;
  }
  const out: EgressPeer = {};
  if (present(rec, 'podSelector')) {
    const s = checkSelector(c, rec['podSelector'], field(path, 'podSelector'));
    if (s !== undefined) out.podSelector = s;
  }
  if (present(rec, 'namespaceSelector')) {
    const s = checkSelector(c, rec['namespaceSelector'], field(path, 'namespaceSelector'));
    if (s !== undefined) out.namespaceSelector = s;
  }
  if (present(rec, 'ipBlock')) {
    const b = checkIPBlock(c, rec['ipBlock'], field(path, 'ipBlock'), budget);
    if (b !== undefined) out.ipBlock = b;
  }
  if (allowFqdn && present(rec, 'fqdn')) {
    const f = checkFQDN(c, rec['fqdn'], field(path, 'fqdn'));
    if (f !== undefined) out.fqdn = f;
  }
  return out;
}

function checkRule(c: Checker, v: unknown, path: string, peersField: 'to' | 'from', allowFqdn: boolean, budget: PolicyBudget): EgressRule | undefined {
  const rec = c.record(v, path, 'a rule (a mapping with to and ports)');
  if (rec === undefined) return undefined;
  c.known(rec, path, [peersField, 'ports']);
  const out: EgressRule = {};
  if (present(rec, peersField)) {
    const tp = field(path, peersField);
    const list = c.list(rec[peersField], tp, LIMITS.MAX_PEERS_PER_POLICY, 'limit MAX_PEERS_PER_POLICY');
    if (list !== undefined) {
      const peers: EgressPeer[] = [];
      list.forEach((p, i) => {
        const peer = checkPeer(c, p, `${tp}[${i}]`, allowFqdn, budget);
        if (peer !== undefined) peers.push(peer);
      });
      if (peers.length > 0) out.to = peers;
    }
  }
  if (present(rec, 'ports')) {
    const pp = field(path, 'ports');
    const list = c.list(rec['ports'], pp, LIMITS.MAX_PORTS_PER_POLICY, 'limit MAX_PORTS_PER_POLICY');
    if (list !== undefined) {
      const ports: NetworkPolicyPort[] = [];
      list.forEach((p, i) => {
        const port = checkPolicyPort(c, p, `${pp}[${i}]`);
        if (port !== undefined) ports.push(port);
      });
      if (ports.length > 0) out.ports = ports;
    }
  }
  return out;
}

/**
 * Checks the rule and peer counts of a policy before looking inside, so a
 * 100,000-rule object is refused with one clear message instead of walked.
 */
function checkPolicySize(c: Checker, spec: Rec, ruleFields: readonly string[], peersFields: readonly string[]): boolean {
  let rules = 0;
  let peers = 0;
  let ports = 0;
  for (const f of ruleFields) {
    const list = spec[f];
    if (!Array.isArray(list)) continue;
    rules += list.length;
    for (const r of list) {
      if (!isRecord(r)) continue;
      for (const pf of peersFields) {
        const to = r[pf];
        if (Array.isArray(to)) peers += to.length;
      }
      const p = r['ports'];
      if (Array.isArray(p)) ports += p.length;
    }
  }
  const where = ruleFields.map((f) => `spec.${f}`).join(' + ');
  let ok = true;
  if (rules > LIMITS.MAX_RULES_PER_POLICY) {
    c.add('spec', `${rules} rules in ${where}; a policy may hold at most ${LIMITS.MAX_RULES_PER_POLICY} rules (limit MAX_RULES_PER_POLICY)`);
    ok = false;
  }
  if (peers > LIMITS.MAX_PEERS_PER_POLICY) {
    c.add('spec', `${peers} peers across ${where}; a policy may hold at most ${LIMITS.MAX_PEERS_PER_POLICY} peers (limit MAX_PEERS_PER_POLICY)`);
    ok = false;
  }
  if (ports > LIMITS.MAX_PORTS_PER_POLICY) {
    c.add('spec', `${ports} port entries across ${where}; a policy may hold at most ${LIMITS.MAX_PORTS_PER_POLICY} (limit MAX_PORTS_PER_POLICY)`);
    ok = false;
  }
  return ok;
}

function checkBudget(c: Checker, budget: PolicyBudget): void {
  if (budget.excepts > LIMITS.MAX_EXCEPTS_PER_POLICY) {
    c.add('spec', `${budget.excepts} ipBlock except entries; a policy may hold at most ${LIMITS.MAX_EXCEPTS_PER_POLICY} (limit MAX_EXCEPTS_PER_POLICY)`);
  }
}

function checkRules(c: Checker, spec: Rec, name: string, peersField: 'to' | 'from', allowFqdn: boolean, budget: PolicyBudget): EgressRule[] | undefined {
  if (!present(spec, name)) return undefined;
  const path = `spec.${name}`;
  const list = c.list(spec[name], path, LIMITS.MAX_RULES_PER_POLICY, 'limit MAX_RULES_PER_POLICY');
  if (list === undefined) return undefined;
  const rules: EgressRule[] = [];
  list.forEach((r, i) => {
    const rule = checkRule(c, r, `${path}[${i}]`, peersField, allowFqdn, budget);
    if (rule !== undefined) rules.push(rule);
  });
  return rules;
}

// ---------------------------------------------------------------------------
// Kinds

function requireSpec(c: Checker, raw: Rec): Rec | undefined {
  if (!present(raw, 'spec')) {
    c.add('spec', 'required');
    return undefined;
  }
  return c.record(raw['spec'], 'spec');
}

function checkNamespace(c: Checker, raw: Rec): Namespace {
  const metadata = checkMeta(c, raw, 'Namespace', 'cluster', 'label');
  // The API server labels every namespace with its own name (1.22+), which is
  // what lets a namespaceSelector pick one namespace by name.
  if (metadata.name !== '') metadata.labels = { ...metadata.labels, 'kubernetes.io/metadata.name': metadata.name };
  return { apiVersion: 'v1', kind: 'Namespace', metadata };
}

function withNamespace(meta: ObjectMeta): ObjectMeta & { namespace: string } {
  return { ...meta, namespace: meta.namespace ?? 'default' };
}

function checkContainers(c: Checker, v: unknown, path: string, required: boolean): Container[] | undefined {
  if (v === undefined || v === null) {
    if (required) c.add(path, 'required (at least one container)');
    return undefined;
  }
  const list = c.list(v, path);
  if (list === undefined) return undefined;
  if (required && list.length === 0) c.add(path, 'must hold at least one container');
  const out: Container[] = [];
  list.forEach((x, i) => {
    const p = `${path}[${i}]`;
    const rec = c.record(x, p, 'a container (a mapping)');
    if (rec === undefined) return;
    const name = c.name(rec['name'], field(p, 'name'), 'label');
    const container: Container = { name: name ?? '' };
    if (present(rec, 'ports')) {
      const pp = field(p, 'ports');
      const ports = c.list(rec['ports'], pp);
      if (ports !== undefined) {
        const seen = new Set<string>();
        const cports: ContainerPort[] = [];
        ports.forEach((y, j) => {
          const q = `${pp}[${j}]`;
          const pr = c.record(y, q, 'a container port (a mapping)');
          if (pr === undefined) return;
          let cp: number | undefined;
          if (present(pr, 'containerPort')) cp = c.port(pr['containerPort'], field(q, 'containerPort'));
          else c.add(field(q, 'containerPort'), 'required');
          const protocol = c.protocol(pr['protocol'], field(q, 'protocol'));
          const port: ContainerPort = { containerPort: cp ?? 0, protocol: protocol ?? 'TCP' };
          if (present(pr, 'name')) {
            const np = field(q, 'name');
            const n = c.string(pr['name'], np, 64);
            if (n !== undefined) {
              if (!isPortName(n)) c.add(np, `${show(n)} is not a valid port name (IANA_SVC_NAME: at most 15 lowercase letters, digits and '-', with at least one letter)`);
              else if (seen.has(n)) c.add(np, `${show(n)} is used by another port of this container; port names must be unique`);
              else {
                seen.add(n);
                port.name = n;
              }
            }
          }
          cports.push(port);
        });
        container.ports = cports;
      }
    }
    out.push(container);
  });
  return out;
}

function checkIPPair(
  c: Checker,
  rec: Rec,
  singleField: string,
  listField: string,
  basePath: string,
  listOfObjects: boolean,
  allowNone: boolean,
): { single?: string; list?: string[] } {
  const out: { single?: string; list?: string[] } = {};
  const sp = field(basePath, singleField);
  if (present(rec, singleField) && rec[singleField] !== '') {
    if (allowNone && rec[singleField] === 'None') out.single = 'None';
    else {
      const ip = c.ip(rec[singleField], sp);
      if (ip !== undefined) out.single = ip;
    }
  }
  if (present(rec, listField)) {
    const lp = field(basePath, listField);
    const list = c.list(rec[listField], lp, 2, 'one address per IP family');
    if (list !== undefined) {
      const ips: string[] = [];
      const families = new Set<number>();
      list.forEach((x, i) => {
        const p = `${lp}[${i}]`;
        let v: unknown = x;
        if (listOfObjects) {
          const r = c.record(x, p, 'a mapping with ip');
          if (r === undefined) return;
          v = r['ip'];
          if (!present(r, 'ip')) {
            c.add(field(p, 'ip'), 'required');
            return;
          }
        }
        const q = listOfObjects ? field(p, 'ip') : p;
        if (allowNone && v === 'None') {
          ips.push('None');
          return;
        }
        const ip = c.ip(v, q);
        if (ip === undefined) return;
        const fam = parseIP(ip)?.family ?? 0;
        if (families.has(fam)) c.add(q, `${show(ip)}: at most one address per IP family`);
        families.add(fam);
        ips.push(ip);
      });
      if (ips.length > 0) out.list = ips;
    }
  }
  if (out.single !== undefined && out.list !== undefined && out.list[0] !== out.single) {
    c.add(`${field(basePath, listField)}[0]`, `${show(out.list[0])} must equal ${sp} ${show(out.single)}`);
  }
  return out;
}

function checkPod(c: Checker, raw: Rec): Pod {
  const metadata = withNamespace(checkMeta(c, raw, 'Pod', 'namespaced', 'subdomain'));
  const pod: Pod = { apiVersion: 'v1', kind: 'Pod', metadata, spec: { containers: [] } };
  const spec = requireSpec(c, raw);
  if (spec !== undefined) {
    const containers = checkContainers(c, spec['containers'], 'spec.containers', true);
    if (containers !== undefined) pod.spec.containers = containers;
    const init = checkContainers(c, spec['initContainers'], 'spec.initContainers', false);
    if (init !== undefined) pod.spec.initContainers = init;
    if (present(spec, 'nodeName') && spec['nodeName'] !== '') {
      const n = c.name(spec['nodeName'], 'spec.nodeName', 'subdomain');
      if (n !== undefined) pod.spec.nodeName = n;
    }
    if (present(spec, 'hostNetwork')) {
      const b = c.boolean(spec['hostNetwork'], 'spec.hostNetwork');
      if (b !== undefined) pod.spec.hostNetwork = b;
    }
  }
  if (present(raw, 'status')) {
    const st = c.record(raw['status'], 'status');
    if (st !== undefined) {
      const status: NonNullable<Pod['status']> = {};
      if (present(st, 'phase')) {
        const phase = c.string(st['phase'], 'status.phase', 64);
        if (phase !== undefined) {
          if (!['Pending', 'Running', 'Succeeded', 'Failed', 'Unknown'].includes(phase)) {
            c.add('status.phase', `${show(phase)} is not a pod phase (expected Pending, Running, Succeeded, Failed or Unknown)`);
          } else status.phase = phase;
        }
      }
      const ips = checkIPPair(c, st, 'podIP', 'podIPs', 'status', true, false);
      const podIP = ips.single ?? ips.list?.[0];
      const podIPs = ips.list ?? (ips.single !== undefined ? [ips.single] : undefined);
      if (podIP !== undefined) status.podIP = podIP;
      if (podIPs !== undefined) status.podIPs = podIPs.map((ip) => ({ ip }));
      if (present(st, 'qosClass')) {
        const q = st['qosClass'];
        if (q === 'Guaranteed' || q === 'Burstable' || q === 'BestEffort') status.qosClass = q satisfies QosClass;
        else c.add('status.qosClass', `${show(q)} is not a QoS class (expected Guaranteed, Burstable or BestEffort)`);
      }
      pod.status = status;
    }
  }
  return pod;
}

const SERVICE_TYPES = ['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'];

function checkService(c: Checker, raw: Rec): Service {
  const metadata = withNamespace(checkMeta(c, raw, 'Service', 'namespaced', 'dns1035'));
  const svc: Service = { apiVersion: 'v1', kind: 'Service', metadata, spec: {} };
  const spec = requireSpec(c, raw);
  if (spec === undefined) return svc;
  let type = 'ClusterIP';
  if (present(spec, 'type')) {
    const t = spec['type'];
    if (typeof t === 'string' && SERVICE_TYPES.includes(t)) type = t;
    else c.add('spec.type', `${show(t)} is not a Service type (expected ${SERVICE_TYPES.join(', ')})`);
  }
  svc.spec.type = type;
  const ips = checkIPPair(c, spec, 'clusterIP', 'clusterIPs', 'spec', false, true);
  const clusterIP = ips.single ?? ips.list?.[0];
  const clusterIPs = ips.list ?? (ips.single !== undefined ? [ips.single] : undefined);
  if (clusterIP !== undefined) svc.spec.clusterIP = clusterIP;
  if (clusterIPs !== undefined) svc.spec.clusterIPs = clusterIPs;
  if (present(spec, 'selector')) {
    const sel = c.labels(spec['selector'], 'spec.selector');
    if (sel !== undefined) svc.spec.selector = sel;
  }
  const headless = clusterIP === 'None';
  if (present(spec, 'ports')) {
    const list = c.list(spec['ports'], 'spec.ports');
    if (list !== undefined) {
      const ports: ServicePort[] = [];
      const names = new Set<string>();
      const pairs = new Set<string>();
      list.forEach((x, i) => {
        const p = `spec.ports[${i}]`;
        const rec = c.record(x, p, 'a Service port (a mapping)');
        if (rec === undefined) return;
        let port: number | undefined;
        if (present(rec, 'port')) port = c.port(rec['port'], field(p, 'port'));
        else c.add(field(p, 'port'), 'required');
        const protocol = c.protocol(rec['protocol'], field(p, 'protocol'));
        const sp: ServicePort = { port: port ?? 0, protocol: protocol ?? 'TCP' };
        if (present(rec, 'name') && rec['name'] !== '') {
          const n = c.name(rec['name'], field(p, 'name'), 'label');
          if (n !== undefined) {
            if (names.has(n)) c.add(field(p, 'name'), `${show(n)} is used by another port; port names must be unique`);
            names.add(n);
            sp.name = n;
          }
        } else if (list.length > 1) {
          c.add(field(p, 'name'), 'required when a Service has more than one port');
        }
        if (port !== undefined && protocol !== undefined) {
          const pair = `${port}/${protocol}`;
          if (pairs.has(pair)) c.add(p, `port ${port}/${protocol} is listed twice`);
          pairs.add(pair);
        }
        // targetPort defaults to port, as the API server does.
        if (present(rec, 'targetPort') && rec['targetPort'] !== 0 && rec['targetPort'] !== '') {
          const tp = c.portOrName(rec['targetPort'], field(p, 'targetPort'));
          if (tp !== undefined) sp.targetPort = tp;
        } else if (port !== undefined) {
          sp.targetPort = port;
        }
        ports.push(sp);
      });
      if (ports.length > 0) svc.spec.ports = ports;
    }
  }
  if ((svc.spec.ports === undefined || svc.spec.ports.length === 0) && type !== 'ExternalName' && !headless) {
    c.add('spec.ports', 'required: a Service needs at least one port unless it is headless (clusterIP: None) or ExternalName');
  }
  return svc;
}

function checkEndpointSlice(c: Checker, raw: Rec): EndpointSlice {
  const metadata = withNamespace(checkMeta(c, raw, 'EndpointSlice', 'namespaced', 'subdomain'));
  let addressType: EndpointSlice['addressType'] = 'IPv4';
  const at = raw['addressType'];
  if (!present(raw, 'addressType')) c.add('addressType', 'required (IPv4, IPv6 or FQDN)');
  else if (at === 'IPv4' || at === 'IPv6' || at === 'FQDN') addressType = at;
  else c.add('addressType', `${show(at)} is not an address type (expected IPv4, IPv6 or FQDN)`);
  const slice: EndpointSlice = { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata, addressType, endpoints: [] };

  if (!present(raw, 'endpoints')) c.add('endpoints', 'required (a list, may be empty)');
  else {
    const list = c.list(raw['endpoints'], 'endpoints', LIMITS.MAX_ENDPOINTS_PER_SLICE, 'limit MAX_ENDPOINTS_PER_SLICE');
    list?.forEach((x, i) => {
      const p = `endpoints[${i}]`;
      const rec = c.record(x, p, 'an endpoint (a mapping)');
      if (rec === undefined) return;
      const ep: EndpointSlice['endpoints'][number] = { addresses: [] };
      const ap = field(p, 'addresses');
      if (!present(rec, 'addresses')) c.add(ap, 'required (1 to 100 addresses)');
      else {
        const addrs = c.list(rec['addresses'], ap, LIMITS.MAX_ADDRESSES_PER_ENDPOINT, 'limit MAX_ADDRESSES_PER_ENDPOINT');
        if (addrs !== undefined && addrs.length === 0) c.add(ap, 'must hold at least one address');
        addrs?.forEach((a, j) => {
          const q = `${ap}[${j}]`;
          if (addressType === 'FQDN') {
            const n = c.name(a, q, 'subdomain');
            if (n !== undefined) ep.addresses.push(n);
          } else {
            const ip = c.ip(a, q, addressType === 'IPv4' ? 4 : 6);
            if (ip !== undefined) ep.addresses.push(ip);
          }
        });
      }
      if (present(rec, 'conditions')) {
        const cp = field(p, 'conditions');
        const cond = c.record(rec['conditions'], cp);
        if (cond !== undefined) {
          const conditions: NonNullable<typeof ep.conditions> = {};
          for (const k of ['ready', 'serving', 'terminating'] as const) {
            if (present(cond, k)) {
              const b = c.boolean(cond[k], field(cp, k));
              if (b !== undefined) conditions[k] = b;
            }
          }
          ep.conditions = conditions;
        }
      }
      if (present(rec, 'targetRef')) {
        const tp = field(p, 'targetRef');
        const ref = c.record(rec['targetRef'], tp);
        if (ref !== undefined) {
          const targetRef: NonNullable<typeof ep.targetRef> = {};
          for (const k of ['kind', 'name', 'namespace', 'uid'] as const) {
            if (present(ref, k)) {
              const s = c.string(ref[k], field(tp, k), 253);
              if (s !== undefined) targetRef[k] = s;
            }
          }
          ep.targetRef = targetRef;
        }
      }
      slice.endpoints.push(ep);
    });
  }
  if (present(raw, 'ports')) {
    const list = c.list(raw['ports'], 'ports', LIMITS.MAX_PORTS_PER_SLICE, 'limit MAX_PORTS_PER_SLICE');
    if (list !== undefined) {
      const ports: NonNullable<EndpointSlice['ports']> = [];
      list.forEach((x, i) => {
        const p = `ports[${i}]`;
        const rec = c.record(x, p, 'an endpoint port (a mapping)');
        if (rec === undefined) return;
        const protocol = c.protocol(rec['protocol'], field(p, 'protocol'));
        const port: NonNullable<EndpointSlice['ports']>[number] = { protocol: protocol ?? 'TCP' };
        if (present(rec, 'name') && rec['name'] !== '') {
          const n = c.name(rec['name'], field(p, 'name'), 'label');
          if (n !== undefined) port.name = n;
        }
        if (present(rec, 'port')) {
          const n = c.port(rec['port'], field(p, 'port'));
          if (n !== undefined) port.port = n;
        }
        ports.push(port);
      });
      slice.ports = ports;
    }
  }
  return slice;
}

const NP_SPEC_FIELDS = ['podSelector', 'policyTypes', 'ingress', 'egress'];

function checkNetworkPolicy(c: Checker, raw: Rec): NetworkPolicy {
  const metadata = withNamespace(checkMeta(c, raw, 'NetworkPolicy', 'namespaced', 'subdomain'));
  const np: NetworkPolicy = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata, spec: { podSelector: {}, policyTypes: ['Ingress'] } };
  const spec = requireSpec(c, raw);
  if (spec === undefined) return np;
  c.known(spec, 'spec', NP_SPEC_FIELDS);
  if (!checkPolicySize(c, spec, ['ingress', 'egress'], ['from', 'to'])) return np;
  if (!present(spec, 'podSelector')) c.add('spec.podSelector', 'required (use {} to select every pod in the namespace)');
  else {
    const s = checkSelector(c, spec['podSelector'], 'spec.podSelector');
    if (s !== undefined) np.spec.podSelector = s;
  }
  const budget: PolicyBudget = { peers: 0, ports: 0, excepts: 0 };
  // Ingress rules are checked (the API server would refuse a bad one) but not
  // kept: weir governs egress only.
  checkRules(c, spec, 'ingress', 'from', false, budget);
  const egress = checkRules(c, spec, 'egress', 'to', false, budget);
  checkBudget(c, budget);
  if (egress !== undefined && egress.length > 0) np.spec.egress = egress;

  const rawEgress = spec['egress'];
  const hasEgressRules = Array.isArray(rawEgress) && rawEgress.length > 0;
  if (present(spec, 'policyTypes')) {
    const list = c.list(spec['policyTypes'], 'spec.policyTypes', 2, 'Ingress and Egress at most');
    if (list !== undefined) {
      const types: PolicyType[] = [];
      list.forEach((t, i) => {
        const p = `spec.policyTypes[${i}]`;
        if (t !== 'Ingress' && t !== 'Egress') c.add(p, `${show(t)} is not a policy type (expected Ingress or Egress)`);
        else if (types.includes(t)) c.add(p, `${show(t)} is listed twice`);
        else types.push(t);
      });
      // An empty list is defaulted exactly like an absent one.
      if (list.length > 0) np.spec.policyTypes = types;
      else np.spec.policyTypes = hasEgressRules ? ['Ingress', 'Egress'] : ['Ingress'];
    }
  } else {
    np.spec.policyTypes = hasEgressRules ? ['Ingress', 'Egress'] : ['Ingress'];
  }
  return np;
}

function checkEgressSpec(c: Checker, spec: Rec, cluster: boolean): EgressPolicySpec & { namespaceSelector?: LabelSelector } {
  const out: EgressPolicySpec & { namespaceSelector?: LabelSelector } = { podSelector: {}, mode: 'Enforce' };
  const fields = cluster ? ['podSelector', 'namespaceSelector', 'mode', 'egress', 'deny'] : ['podSelector', 'mode', 'egress', 'deny'];
  c.known(spec, 'spec', fields, cluster ? {} : { namespaceSelector: 'an EgressPolicy applies to its own namespace; use a ClusterEgressPolicy to select namespaces' });
  if (!checkPolicySize(c, spec, ['egress', 'deny'], ['to'])) return out;
  if (!present(spec, 'podSelector')) {
    c.add('spec.podSelector', `required (use {} to select every pod${cluster ? ' in the selected namespaces' : ' in the namespace'})`);
  } else {
    const s = checkSelector(c, spec['podSelector'], 'spec.podSelector');
    if (s !== undefined) out.podSelector = s;
  }
  if (cluster) {
    if (!present(spec, 'namespaceSelector')) c.add('spec.namespaceSelector', 'required (use {} to select every namespace)');
    else {
      const s = checkSelector(c, spec['namespaceSelector'], 'spec.namespaceSelector');
      if (s !== undefined) out.namespaceSelector = s;
    }
  }
  if (present(spec, 'mode')) {
    const m = spec['mode'];
    if (m === 'Enforce' || m === 'Audit') out.mode = m satisfies PolicyMode;
    else c.add('spec.mode', `${show(m)} is not a mode (expected Enforce or Audit)`);
  }
  const budget: PolicyBudget = { peers: 0, ports: 0, excepts: 0 };
  const egress = checkRules(c, spec, 'egress', 'to', true, budget);
  const deny = checkRules(c, spec, 'deny', 'to', true, budget);
  checkBudget(c, budget);
  if (egress !== undefined && egress.length > 0) out.egress = egress;
  if (deny !== undefined && deny.length > 0) out.deny = deny;
  return out;
}

function checkEgressPolicy(c: Checker, raw: Rec): EgressPolicy {
  const metadata = withNamespace(checkMeta(c, raw, 'EgressPolicy', 'namespaced', 'subdomain'));
  const spec = requireSpec(c, raw);
  const s = spec === undefined ? { podSelector: {}, mode: 'Enforce' as const } : checkEgressSpec(c, spec, false);
  return { apiVersion: 'weir.dev/v1alpha1', kind: 'EgressPolicy', metadata, spec: s };
}

function checkClusterEgressPolicy(c: Checker, raw: Rec): ClusterEgressPolicy {
  const metadata = checkMeta(c, raw, 'ClusterEgressPolicy', 'cluster', 'subdomain');
  const spec = requireSpec(c, raw);
  const s = spec === undefined ? { podSelector: {}, mode: 'Enforce' as const } : checkEgressSpec(c, spec, true);
  const { namespaceSelector, ...rest } = s;
  return { apiVersion: 'weir.dev/v1alpha1', kind: 'ClusterEgressPolicy', metadata, spec: { ...rest, namespaceSelector: namespaceSelector ?? {} } };
}

// ---------------------------------------------------------------------------
// Entry point

interface KindInfo {
  group: string;
  version: string;
  scope: Scope;
  check: (c: Checker, raw: Rec) => KubeObject;
}

const KINDS: Record<string, KindInfo> = {
  Namespace: { group: '', version: 'v1', scope: 'cluster', check: checkNamespace },
  Pod: { group: '', version: 'v1', scope: 'namespaced', check: checkPod },
  Service: { group: '', version: 'v1', scope: 'namespaced', check: checkService },
  EndpointSlice: { group: 'discovery.k8s.io', version: 'v1', scope: 'namespaced', check: checkEndpointSlice },
  NetworkPolicy: { group: 'networking.k8s.io', version: 'v1', scope: 'namespaced', check: checkNetworkPolicy },
  EgressPolicy: { group: 'weir.dev', version: 'v1alpha1', scope: 'namespaced', check: checkEgressPolicy },
  ClusterEgressPolicy: { group: 'weir.dev', version: 'v1alpha1', scope: 'cluster', check: checkClusterEgressPolicy },
};

// Kinds that moved groups: ignoring them would silently drop a policy the
// author expects to be enforced, so they are errors, not "unknown kinds".
const MOVED: Record<string, string[]> = {
  NetworkPolicy: ['extensions'],
};

function splitApiVersion(av: string): { group: string; version: string } {
  const i = av.lastIndexOf('/');
  return i < 0 ? { group: '', version: av } : { group: av.slice(0, i), version: av.slice(i + 1) };
}

/** What can be learnt about an object's identity before validating it, for messages. */
export function identify(raw: unknown): ObjectIdentity {
  if (!isRecord(raw)) return {};
  const id: ObjectIdentity = {};
  if (typeof raw['apiVersion'] === 'string') id.apiVersion = raw['apiVersion'];
  if (typeof raw['kind'] === 'string') id.kind = raw['kind'];
  const m = raw['metadata'];
  if (isRecord(m)) {
    if (typeof m['name'] === 'string' && m['name'] !== '') id.name = m['name'];
    if (typeof m['namespace'] === 'string' && m['namespace'] !== '') id.namespace = m['namespace'];
  }
  const info = id.kind !== undefined && Object.hasOwn(KINDS, id.kind) ? KINDS[id.kind] : undefined;
  if (info?.scope === 'namespaced' && id.namespace === undefined) id.namespace = 'default';
  if (info !== undefined && id.kind !== undefined && id.name !== undefined) {
    id.key = objectKey({ kind: id.kind, metadata: { name: id.name, namespace: info.scope === 'namespaced' ? id.namespace : undefined } });
  }
  return id;
}

/**
 * Validates one object and returns it with API defaults applied, or the
 * reasons it was refused. Objects of kinds weir does not read are
 * `{ok: false, ignored: true}`: a manifest directory may hold Deployments.
 * `where.index` is the zero-based document position; messages show it 1-based.
 */
export function validateObject(raw: unknown, where: ValidationLocation = {}): ValidationResult {
  const id = identify(raw);
  const fail = (c: Checker): ValidationResult => ({ ok: false, ignored: false, error: new ValidationError(where, id, c.issues, c.more) });
  const c = new Checker();
  if (!isRecord(raw)) {
    c.add('', `${show(raw)} is not a Kubernetes object (expected a mapping with apiVersion, kind and metadata)`);
    return fail(c);
  }
  const kind = raw['kind'];
  const apiVersion = raw['apiVersion'];
  if (typeof kind !== 'string' || kind === '') c.add('kind', present(raw, 'kind') ? `${show(kind)} is not a kind` : 'required');
  if (typeof apiVersion !== 'string' || apiVersion === '') {
    c.add('apiVersion', present(raw, 'apiVersion') ? `${show(apiVersion)} is not an apiVersion` : 'required');
  }
  if (typeof kind !== 'string' || typeof apiVersion !== 'string' || c.failed) return fail(c);

  // Own properties only: `valueOf` or `constructor` is a kind weir does not read, not Object.prototype's.
  const info = Object.hasOwn(KINDS, kind) ? KINDS[kind] : undefined;
  const { group, version } = splitApiVersion(apiVersion);
  if (info === undefined) return { ok: false, ignored: true, apiVersion, kind };
  if (group !== info.group) {
    if (Object.hasOwn(MOVED, kind) && MOVED[kind]?.includes(group)) {
      c.add('apiVersion', `${show(apiVersion)} is no longer served for ${kind} (expected ${info.group === '' ? '' : `${info.group}/`}${info.version})`);
      return fail(c);
    }
    // Same kind name in another API group (a Knative Service, say): not ours.
    return { ok: false, ignored: true, apiVersion, kind };
  }
  if (version !== info.version) {
    c.add('apiVersion', `${show(apiVersion)} is not a supported version of ${kind} (expected ${info.group === '' ? '' : `${info.group}/`}${info.version})`);
    return fail(c);
  }
  const object = info.check(c, raw);
  if (c.failed) return fail(c);
  return { ok: true, object };
}
