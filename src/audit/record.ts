// Audit records: the line format shared by the writer (audit-log.ts) and the
// verifier (verify.ts). Layout and chain rules are in docs/audit.md.
//
// One record per line, each line the canonical JSON (canonical-json.ts) of
//   { seq, time, kind, data, prev [, genesis] [, sig] }
// seq    counts the records of a chain from 1 and goes up by exactly 1,
//        across rotated files (a new chain, after a break, starts at 1 again);
// time   ISO 8601 (UTC) when the record was appended;
// kind   what happened (AUDIT_KINDS, or 'checkpoint' / 'chain-broken' which
//        only the log itself writes);
// data   the event, an object;
// prev   SHA-256 (hex) of the previous record's line (its canonical JSON,
//        without the newline, every field included), or 64 zeros for the
//        first record of a chain, which also carries genesis: true;
// sig    on checkpoints only: Ed25519 signature (base64) of the canonical JSON
//        of the checkpoint without its sig field.
// A checkpoint's data is { count: seq - 1, head: prev }: the number of
// records before it and the hash of the last of them.
import { sign, verify, type KeyObject } from 'node:crypto';
import type { Violation } from '../agent/agent.js';
import { canonicalJson, FixedShapeJson, sha256Hex, ZERO_HASH } from './canonical-json.js';

/** Kinds the agent appends. Never reuse or rename one: old logs must keep verifying. */
export const AUDIT_KINDS = ['violation', 'audit', 'policy', 'start', 'stop', 'fqdn-intent'] as const;
export type AuditKind = (typeof AUDIT_KINDS)[number];

/** A policy generation reached the datapath. */
export type PolicyChange = {
  readonly fromGeneration: number | null;
  readonly toGeneration: number;
  /** canonicalDigest() of the compiled policy, as JSON. */
  readonly digest: string;
  readonly [key: string]: unknown;
};

export type AgentLifecycle = {
  readonly version: string;
  readonly node: string | null;
  readonly [key: string]: unknown;
};

/**
 * A pod under fqdn rules asked a trusted resolver for a name no rule of its
 * policies allows (DNS-aware egress: the intent record), whether or not a
 * connection followed.
 */
export type FqdnIntent = {
  readonly time: string;
  readonly namespace: string;
  readonly pod: string;
  readonly workload: string;
  /** The name asked (lower case, no trailing dot). */
  readonly name: string;
  /** The queries this record stands for (the datapath aggregates per pod and name). */
  readonly count: number;
  readonly [key: string]: unknown;
};

/** The data each kind carries: 'audit' is a would-drop verdict of an Audit-mode policy. */
export interface AuditData {
  violation: Violation;
  audit: Violation;
  policy: PolicyChange;
  start: AgentLifecycle;
  stop: AgentLifecycle;
  'fqdn-intent': FqdnIntent;
}

export interface AuditRecord {
  seq: number;
  time: string;
  kind: string;
  data: Record<string, unknown>;
  prev: string;
  genesis?: true;
  sig?: string;
}

export interface AuditCheckpoint extends AuditRecord {
  kind: 'checkpoint';
  data: { count: number; head: string };
}

/** Written by open() as the genesis of a new chain when the old one could not be continued. */
export interface ChainBroken extends AuditRecord {
  kind: 'chain-broken';
  data: {
    reason: string;
    /** Where the damaged records are now (the file's base name). */
    file: string;
    line: number | null;
    /** Last record of the old chain that verified, if any. */
    lastGood: { seq: number; hash: string } | null;
  };
}

const HEX64 = /^[0-9a-f]{64}$/;
const KIND = /^[a-z][a-z0-9-]*$/;
const SIG = /^[A-Za-z0-9+/]{86}==$/;
const TOP_KEYS = new Set(['seq', 'time', 'kind', 'data', 'prev', 'genesis', 'sig']);

/** The members of a violation record's data (the Violation an agent reports), for the fixed-order writer. */
const VIOLATION_KEYS = [
  'time', 'verdict', 'reason', 'namespace', 'pod', 'workload', 'domain', 'policy', 'rule', 'protocol',
  'destination', 'port', 'source', 'pid', 'command', 'thread', 'count', 'hook', 'generation',
] as const satisfies readonly (keyof Violation)[];
// A compile error here means Violation changed: list its keys above (records of other shapes are still written, only slower).
const violationKeysComplete: Exclude<keyof Violation, (typeof VIOLATION_KEYS)[number]> extends never ? true : never = true;
void violationKeysComplete;
/** VIOLATION_KEYS in sorted order, as an object literal (FixedShapeJson checks the order). */
const pickViolation = (v: Record<string, unknown>): Record<string, unknown> => ({
  command: v.command,
  count: v.count,
  destination: v.destination,
  domain: v.domain,
  generation: v.generation,
  hook: v.hook,
  namespace: v.namespace,
  pid: v.pid,
  pod: v.pod,
  policy: v.policy,
  port: v.port,
  protocol: v.protocol,
  reason: v.reason,
  rule: v.rule,
  source: v.source,
  thread: v.thread,
  time: v.time,
  verdict: v.verdict,
  workload: v.workload,
});
const VIOLATION_JSON = new FixedShapeJson(VIOLATION_KEYS, pickViolation);

/**
 * The line of a record: its canonical JSON. A violation or audit record
 * without a sig is written with the fixed-order writer (violationRecordLine);
 * any other record, or one this does not recognise as such, goes through
 * canonicalJson(). Same bytes either way (test/unit/audit-format.test.ts).
 */
export function recordLine(r: AuditRecord): string {
  return fastRecordLine(r) ?? canonicalJson(r);
}

function fastRecordLine(r: AuditRecord): string | null {
  if (r.kind !== 'violation' && r.kind !== 'audit') return null;
  if (Object.getPrototypeOf(r) !== Object.prototype) return null;
  let n = 0;
  for (const k in r) {
    if (!Object.hasOwn(r, k)) return null;
    const v = r[k as keyof AuditRecord];
    if (v === undefined) continue;
    if (k === 'genesis') {
      if (v !== true) return null;
    } else if (k !== 'seq' && k !== 'time' && k !== 'kind' && k !== 'data' && k !== 'prev') return null;
    n++;
  }
  if (n !== (r.genesis === true ? 6 : 5)) return null;
  if (typeof r.seq !== 'number' || !Number.isFinite(r.seq) || typeof r.time !== 'string' || typeof r.prev !== 'string') return null;
  if (typeof r.data !== 'object' || r.data === null) return null;
  let time: string;
  let prev: string;
  try {
    time = canonicalJson(r.time);
    prev = canonicalJson(r.prev);
  } catch {
    return null; // a lone surrogate: canonicalJson(r) says where
  }
  const data = VIOLATION_JSON.write(r.data);
  if (data === null) return null;
  return `{"data":${data},${r.genesis === true ? '"genesis":true,' : ''}"kind":"${r.kind}","prev":${prev},"seq":${JSON.stringify(r.seq)},"time":${time}}`;
}

/**
 * The line of a violation or audit record the log itself seals: `time` an
 * ISO date from toISOString(), `prev` a hex digest, `seq` an integer (none
 * needs escaping). Null when `data` is not a Violation as the agent makes
 * them: the caller uses recordLine().
 */
export function violationRecordLine(seq: number, time: string, kind: 'violation' | 'audit', data: object, prev: string, genesis: boolean): string | null {
  const d = VIOLATION_JSON.write(data);
  if (d === null) return null;
  return `{"data":${d},${genesis ? '"genesis":true,' : ''}"kind":"${kind}","prev":"${prev}","seq":${seq},"time":"${time}"}`;
}

export type ParsedLine =
  | { ok: true; record: AuditRecord; hash: string }
  | { ok: false; seq: number | null; reason: string };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Reads one line (without its newline) and checks everything that can be
 * checked on the record alone: JSON, canonical form (so no byte can change
 * without changing the hash), field types, genesis and checkpoint rules.
 * Links to other records are the verifier's business.
 */
export function parseRecordLine(text: string): ParsedLine {
  if (text === '') return { ok: false, seq: null, reason: 'empty line' };
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return { ok: false, seq: null, reason: 'not valid JSON' };
  }
  if (!isPlainObject(v)) return { ok: false, seq: null, reason: 'not a JSON object' };
  const seq = Number.isSafeInteger(v.seq) && (v.seq as number) >= 1 ? (v.seq as number) : null;
  const bad = (reason: string): ParsedLine => ({ ok: false, seq, reason });
  for (const k of Object.keys(v)) if (!TOP_KEYS.has(k)) return bad(`unknown field ${JSON.stringify(k)}`);
  if (seq === null) return bad('seq is not a positive integer');
  if (typeof v.time !== 'string' || Number.isNaN(Date.parse(v.time))) return bad('time is not a date');
  if (typeof v.kind !== 'string' || !KIND.test(v.kind)) return bad('kind is not a kind name');
  if (!isPlainObject(v.data)) return bad('data is not an object');
  if (typeof v.prev !== 'string' || !HEX64.test(v.prev)) return bad('prev is not a SHA-256 hex digest');
  if (v.genesis !== undefined && v.genesis !== true) return bad('genesis is not true');
  let canonical: string | null;
  try {
    canonical = recordLine(v as unknown as AuditRecord);
  } catch {
    canonical = null; // a lone surrogate or a number out of range: never written by the log
  }
  if (canonical !== text) return bad('line is not in canonical form (edited after it was written)');
  if (v.genesis === true && seq !== 1) return bad('genesis record with a seq other than 1');
  if ((v.genesis === true) !== (v.prev === ZERO_HASH)) {
    return bad(v.genesis ? 'genesis record with a prev other than zeros' : 'prev is all zeros but the record is not marked genesis');
  }
  if (v.kind === 'checkpoint') {
    const d = v.data;
    if (Object.keys(d).sort().join() !== 'count,head') return bad('checkpoint data is not {count, head}');
    if (d.count !== seq - 1) return bad(`checkpoint count ${JSON.stringify(d.count)} is not seq - 1 (${seq - 1})`);
    if (d.head !== v.prev) return bad('checkpoint head does not equal its prev');
    if (v.genesis) return bad('a checkpoint cannot start a chain');
    if (v.sig !== undefined) {
      // Base64 must round-trip: otherwise a changed padding bit would leave
      // the signature bytes (and so verify()) unchanged.
      if (typeof v.sig !== 'string' || !SIG.test(v.sig) || Buffer.from(v.sig, 'base64').toString('base64') !== v.sig) {
        return bad('checkpoint sig is not a base64 Ed25519 signature');
      }
    }
  } else if (v.sig !== undefined) {
    return bad('only checkpoints carry a sig');
  }
  return { ok: true, record: v as unknown as AuditRecord, hash: sha256Hex(text) };
}

/** The bytes a checkpoint signature covers: the canonical JSON of the record without sig. */
function signedBytes(cp: AuditRecord): Buffer {
  const { sig: _sig, ...rest } = cp;
  return Buffer.from(canonicalJson(rest));
}

export function signCheckpoint(cp: AuditRecord, privateKey: KeyObject): string {
  return sign(null, signedBytes(cp), privateKey).toString('base64');
}

export function checkpointSignatureValid(cp: AuditRecord, publicKey: KeyObject): boolean {
  if (typeof cp.sig !== 'string') return false;
  try {
    return verify(null, signedBytes(cp), publicKey, Buffer.from(cp.sig, 'base64'));
  } catch {
    return false;
  }
}
