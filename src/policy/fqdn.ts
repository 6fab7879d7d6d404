// FQDN peers: name syntax, normalisation and matching, with the semantics of
// the upstream AdminNetworkPolicy `domainNames` field (network-policy-api,
// NPEP-133), and the compilation of a set's fqdn peers into the keys the
// datapath looks names up by.
//
//   - case-insensitive; one trailing dot is allowed and ignored;
//   - `matchName: a.example.com` matches exactly that name;
//   - `matchPattern: "*.example.com"`: `*` only as the whole first label,
//     matching one or more whole labels and never the apex: it matches
//     `a.example.com` and `b.a.example.com`, not `example.com` and not
//     `xexample.com`.
//
// Names are compared label by label, as DNS does on the wire: a name is the
// sequence of its labels, lower-cased (ASCII only, RFC 4343). docs/policy.md
// ("FQDN peers") is the user-facing statement of these rules.
import type { NetworkPolicyPort } from '../model/types.js';
import { mergeClass, ruleBits, type Entry, type PortClass } from './compile.js';
import { PROTO_NUMBER, type Policy, type Rule } from './normalize.js';

export const FQDN_MAX = 253;
export const FQDN_LABEL_MAX = 63;
// Letters, digits, '-' and '_' (e.g. `_dmarc`), not starting or ending with '-'.
const LABEL = /^[a-z0-9_]([-a-z0-9_]*[a-z0-9_])?$/;

/** ASCII lower case (DNS case-insensitivity is ASCII only) and one trailing dot removed. */
export function normalizeDNSName(s: string): string {
  const lower = s.replace(/[A-Z]+/g, (m) => m.toLowerCase());
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Why a normalised name is not a valid DNS name, or undefined. */
export function dnsNameProblem(name: string): string | undefined {
  if (name === '') return 'is empty';
  if (name.length > FQDN_MAX) return `is ${name.length} characters; a DNS name has at most ${FQDN_MAX}`;
  for (const label of name.split('.')) {
    if (label === '') return 'has an empty label (two dots in a row, or a leading dot)';
    if (label.length > FQDN_LABEL_MAX) return `has the label "${label}" longer than ${FQDN_LABEL_MAX} characters`;
    if (!LABEL.test(label)) {
      return `has the label "${label}"; labels hold letters, digits, '-' and '_' and do not start or end with '-'`;
    }
  }
  return undefined;
}

/** Why a normalised pattern is not valid (`*.` and a DNS name, or a plain name), or undefined. */
export function dnsPatternProblem(pattern: string): string | undefined {
  const labels = pattern.split('.');
  const first = labels[0] ?? '';
  if (labels.slice(1).some((l) => l.includes('*')) || (first.includes('*') && first !== '*')) {
    return '"*" may only be the whole first label, as in "*.example.com"';
  }
  if (first === '*' && labels.length === 1) {
    return 'a pattern needs at least one label after "*." (use ipBlock 0.0.0.0/0 and ::/0 to mean everywhere)';
  }
  const rest = first === '*' ? labels.slice(1).join('.') : pattern;
  const problem = dnsNameProblem(rest);
  return problem === undefined ? undefined : `is not a DNS name pattern: it ${problem}`;
}

/** A compiled selector: an exact name, or a wildcard over a suffix (`*.suffix`). */
export type FqdnMatcher = { kind: 'name'; name: string } | { kind: 'wildcard'; suffix: string };

export function fqdnMatcher(sel: { matchName?: string; matchPattern?: string }): FqdnMatcher {
  if (sel.matchName !== undefined) return { kind: 'name', name: normalizeDNSName(sel.matchName) };
  const p = normalizeDNSName(sel.matchPattern ?? '');
  return p.startsWith('*.') ? { kind: 'wildcard', suffix: p.slice(2) } : { kind: 'name', name: p };
}

/** Does the queried name (any case, trailing dot or not) match? */
export function fqdnMatches(m: FqdnMatcher, qname: string): boolean {
  const q = normalizeDNSName(qname);
  if (m.kind === 'name') return q === m.name;
  // One or more whole labels before the suffix, never the apex.
  return q.length > m.suffix.length + 1 && q.endsWith(`.${m.suffix}`) && !q.startsWith('.');
}

/** The text form of a matcher, as a policy would write it. */
export function describeMatcher(m: FqdnMatcher): string {
  return m.kind === 'name' ? m.name : `*.${m.suffix}`;
}

// ---- compilation -----------------------------------------------------------

/**
 * One key of a set's FQDN table: the datapath looks a name up as an exact
 * name first, then as `*.` over each of its proper suffixes, longest first,
 * and the first key found gives the port class. So each key's class is the
 * merge of every fqdn rule that covers it: an exact key includes the
 * wildcards that match the name, a wildcard key the broader wildcards. The
 * most specific key found then gives exactly the union of the rules.
 */
export interface FqdnKey {
  matcher: FqdnMatcher;
  /** Canonical text: the name, or `*.suffix`. */
  text: string;
  cls: PortClass;
  /** The rules that contribute (for explain and status). */
  rules: { policy: Policy; rule: Rule }[];
}

function numericRanges(ports: NetworkPolicyPort[] | null): Entry['ports'] {
  if (ports === null) return null;
  const out: { proto: number; lo: number; hi: number }[] = [];
  for (const p of ports) {
    const proto = PROTO_NUMBER[p.protocol];
    if (p.port === undefined) out.push({ proto, lo: 0, hi: 65535 });
    // A named port names a pod's container port: nothing for a DNS name.
    else if (typeof p.port === 'number') out.push({ proto, lo: p.port, hi: p.endPort ?? p.port });
  }
  return out;
}

/** Is every name `covered` matches also matched by `by`? */
function covers(by: FqdnMatcher, covered: FqdnMatcher): boolean {
  if (by.kind === 'name') return covered.kind === 'name' && covered.name === by.name;
  if (covered.kind === 'name') return fqdnMatches(by, covered.name);
  return covered.suffix === by.suffix || covered.suffix.endsWith(`.${by.suffix}`);
}

/** The FQDN keys of a set, sorted by text. Empty when no policy has fqdn peers. */
export function compileFqdn(policies: readonly Policy[]): FqdnKey[] {
  const contributions: { matcher: FqdnMatcher; entry: Entry }[] = [];
  const matchers = new Map<string, FqdnMatcher>();
  const noPrefix = { family: 4 as const, bytes: new Uint8Array(4), len: 0 };
  for (const policy of policies) {
    for (const rule of policy.rules) {
      if (rule.peers === null) continue;
      const ports = numericRanges(rule.ports);
      if (ports !== null && ports.length === 0) continue; // only named ports: matches nothing
      for (const peer of rule.peers) {
        if (peer.type !== 'fqdn') continue;
        const matcher = fqdnMatcher(peer);
        matchers.set(describeMatcher(matcher), matcher);
        contributions.push({ matcher, entry: { prefix: noPrefix, except: [], bits: ruleBits(policy, rule), ports, policy, rule } });
      }
    }
  }
  const out: FqdnKey[] = [];
  for (const [text, matcher] of [...matchers].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const active = contributions.filter((c) => covers(c.matcher, matcher));
    const rules: FqdnKey['rules'] = [];
    for (const c of active) if (!rules.some((r) => r.rule === c.entry.rule)) rules.push({ policy: c.entry.policy, rule: c.entry.rule });
    out.push({ matcher, text, cls: mergeClass(active.map((c) => c.entry)), rules });
  }
  return out;
}

/** The key the datapath would use for a name (exact first, then the longest wildcard suffix). */
export function lookupFqdn(keys: readonly FqdnKey[], qname: string): FqdnKey | undefined {
  const q = normalizeDNSName(qname);
  const exact = keys.find((k) => k.matcher.kind === 'name' && k.matcher.name === q);
  if (exact) return exact;
  const labels = q.split('.');
  for (let i = 1; i < labels.length; i++) {
    const suffix = labels.slice(i).join('.');
    const k = keys.find((x) => x.matcher.kind === 'wildcard' && x.matcher.suffix === suffix);
    if (k) return k;
  }
  return undefined;
}
