// Verifies an audit log: FILE and its rotated predecessors, oldest first
// (FILE.N ... FILE.1, FILE), as one chain. Stops at the first bad record and
// says where (file, line, seq) and why.
//
// Blame. A hash link A -> B breaks when A was altered (its content no longer
// hashes to B.prev) or when B's prev was altered; the two look the same from
// the link alone. The record after B decides: if C still links to B, B is
// intact and A was altered; if not, B was. (A checkpoint at the end of the log
// decides the same way: its head repeats its prev, so an intact checkpoint
// vouches for its own prev.) Likewise a record whose successor links to the
// record before it was inserted, and a seq that runs ahead while the next
// record has the missing seq marks two records out of order.
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { canonicalJson, sha256Hex } from './canonical-json.js';
import { checkpointSignatureValid, parseRecordLine, type AuditRecord, type ParsedLine } from './record.js';

/**
 * A checkpoint kept off the node. count is the seq of the record whose hash is
 * head; when the whole checkpoint record is known, the log must hold it too.
 */
export interface ExternalCheckpoint {
  count: number;
  head: string;
  record?: AuditRecord;
}

export interface VerifyOptions {
  /** Ed25519 public key: every checkpoint must then carry a signature that verifies. */
  publicKey?: KeyObject;
  /** The log must contain this checkpoint's head at its count (catches truncation). */
  checkpoint?: ExternalCheckpoint;
}

export interface VerifyFailure {
  file: string;
  /** 1-based line in that file; one past the last line for records missing at the end. */
  line: number;
  seq: number | null;
  reason: string;
}

export interface VerifySummary {
  files: string[];
  /** Records that verified. */
  records: number;
  firstSeq: number | null;
  lastSeq: number | null;
  /** Hash of the last record that verified. */
  head: string | null;
  /** How the chain begins: at a genesis, at a chain-broken genesis, or continuing records rotated away. */
  start: 'genesis' | 'chain-broken' | 'continued' | null;
  checkpoints: number;
  /** Checkpoints whose signature verified (0 without a key). */
  signedCheckpoints: number;
  lastCheckpointSeq: number | null;
  /** Whether an external checkpoint was given and found. */
  externalCheckpoint: boolean;
}

export type VerifyResult =
  | ({ ok: true } & VerifySummary)
  | ({ ok: false; failure: VerifyFailure; lastGood: { seq: number; hash: string } | null } & VerifySummary);

/** FILE's rotated files and FILE itself, oldest first; only those that exist. */
export async function auditLogFiles(path: string): Promise<string[]> {
  const dir = dirname(path);
  const base = basename(path);
  const rotated: number[] = [];
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  for (const n of names) {
    if (!n.startsWith(`${base}.`)) continue;
    const suffix = n.slice(base.length + 1);
    if (/^[1-9][0-9]*$/.test(suffix)) rotated.push(Number(suffix));
  }
  rotated.sort((a, b) => b - a);
  const files = rotated.map((i) => join(dir, `${base}.${i}`));
  if (names.includes(base)) files.push(path);
  const out: string[] = [];
  for (const f of files) if ((await stat(f)).isFile()) out.push(f);
  return out;
}

interface Line {
  file: string;
  line: number;
  parsed: ParsedLine;
  terminated: boolean;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

async function* readLines(files: string[]): AsyncGenerator<Line> {
  for (const file of files) {
    // Files are bounded by the writer's maxBytes; reading one at a time keeps
    // memory at one file whatever maxFiles is.
    const buf = await readFile(file);
    let start = 0;
    let line = 0;
    while (start < buf.length) {
      const nl = buf.indexOf(0x0a, start);
      const end = nl === -1 ? buf.length : nl;
      line += 1;
      let parsed: ParsedLine;
      try {
        parsed = parseRecordLine(utf8.decode(buf.subarray(start, end)));
      } catch {
        parsed = { ok: false, seq: null, reason: 'not valid UTF-8' };
      }
      yield { file, line, parsed, terminated: nl !== -1 };
      start = end + 1;
    }
  }
}

class Peekable {
  private buffered: Line | null = null;
  constructor(private readonly it: AsyncGenerator<Line>) {}

  async next(): Promise<Line | null> {
    if (this.buffered) {
      const l = this.buffered;
      this.buffered = null;
      return l;
    }
    const r = await this.it.next();
    return r.done ? null : r.value;
  }

  async peek(): Promise<Line | null> {
    this.buffered ??= await this.next();
    return this.buffered;
  }
}

interface Accepted {
  record: AuditRecord;
  hash: string;
  file: string;
  line: number;
}

export async function verifyAuditLog(path: string, opts: VerifyOptions = {}): Promise<VerifyResult> {
  return verifyFiles(await auditLogFiles(path), opts);
}

/** The summary of files of which nothing has been verified yet. */
export function emptySummary(files: string[]): VerifySummary {
  return {
    files,
    records: 0,
    firstSeq: null,
    lastSeq: null,
    head: null,
    start: null,
    checkpoints: 0,
    signedCheckpoints: 0,
    lastCheckpointSeq: null,
    externalCheckpoint: false,
  };
}

/** Verifies the given files as one chain, in the order given (oldest first). */
export async function verifyFiles(files: string[], opts: VerifyOptions = {}): Promise<VerifyResult> {
  const summary = emptySummary(files);
  const cp = opts.checkpoint;
  const cpRecordHash = cp?.record ? sha256Hex(canonicalJson(cp.record)) : null;
  const lines = new Peekable(readLines(files));
  let before: Accepted | null = null; // the record before `last`
  let last: Accepted | null = null;
  let lastLine: { file: string; line: number } | null = null;

  const fail = (at: { file: string; line: number }, seq: number | null, reason: string, lastGood: Accepted | null): VerifyResult => ({
    ok: false,
    ...summary,
    // Only what precedes the blamed record counts as verified (accepted records have consecutive seqs).
    records: lastGood && summary.firstSeq !== null ? lastGood.record.seq - summary.firstSeq + 1 : 0,
    lastSeq: lastGood ? lastGood.record.seq : null,
    head: lastGood ? lastGood.hash : null,
    failure: { file: at.file, line: at.line, seq, reason },
    lastGood: lastGood ? { seq: lastGood.record.seq, hash: lastGood.hash } : null,
  });
  // The next line, when it parses and links to `b`: evidence that `b` is intact.
  const nextLinksTo = async (b: AuditRecord, bHash: string): Promise<boolean> => {
    const c = await lines.peek();
    return !!c && c.parsed.ok && c.parsed.record.seq === b.seq + 1 && c.parsed.record.prev === bHash;
  };

  for (let l = await lines.next(); l; l = await lines.next()) {
    lastLine = l;
    const p = l.parsed;
    if (!l.terminated) return fail(l, p.ok ? p.record.seq : p.seq, 'incomplete line at the end of the file (no newline): the write was cut short or the file truncated', last);
    if (!p.ok) return fail(l, p.seq, p.reason, last);
    const b = p.record;
    if (b.kind === 'checkpoint' && opts.publicKey) {
      if (b.sig === undefined) return fail(l, b.seq, 'checkpoint is not signed, but a key was given', last);
      if (!checkpointSignatureValid(b, opts.publicKey)) return fail(l, b.seq, 'checkpoint signature does not verify with the given key', last);
    }

    if (b.genesis) {
      if (last) {
        const why = b.kind === 'chain-broken' && typeof b.data.reason === 'string' ? `; the agent recorded why: ${b.data.reason}` : '';
        return fail(l, b.seq, `a new chain starts here (genesis) after ${summary.records} records: the chain is broken${why}`, last);
      }
    } else if (last) {
      const a = last.record;
      const seqOk = b.seq === a.seq + 1;
      const prevOk = b.prev === last.hash;
      if (!seqOk || !prevOk) {
        if (p.hash === last.hash) return fail(l, b.seq, 'a copy of the record before it', last);
        if (before && b.seq === before.record.seq + 1 && b.prev === before.hash) {
          return fail(last, a.seq, 'inserted: the record after it links to the record before it', before);
        }
        if (prevOk) return fail(l, b.seq, `seq ${b.seq} does not follow seq ${a.seq} (expected ${a.seq + 1}) although prev links to it: seq was altered`, last);
        const bIntact = (await nextLinksTo(b, p.hash)) || (b.kind === 'checkpoint' && !(await lines.peek()));
        if (seqOk) {
          if (bIntact) return fail(last, a.seq, 'altered: its hash does not match the prev of the next record', before);
          return fail(l, b.seq, `prev does not match the hash of the record before it (seq ${a.seq})`, last);
        }
        // The first record's seq has nothing before it to be checked against.
        if (!before && bIntact && b.seq <= a.seq) return fail(last, a.seq, 'altered: its hash does not match the prev of the next record', null);
        if (b.seq > a.seq + 1) {
          const c = await lines.peek();
          if (c?.parsed.ok && c.parsed.record.seq === a.seq + 1) {
            return fail(l, b.seq, `out of order: seq ${b.seq} comes before seq ${c.parsed.record.seq}`, last);
          }
          return fail(l, b.seq, `seq ${b.seq} follows seq ${a.seq}: ${b.seq - a.seq - 1} record(s) missing before it`, last);
        }
        return fail(l, b.seq, `seq ${b.seq} does not follow seq ${a.seq} (expected ${a.seq + 1})`, last);
      }
    }

    if (cp && b.seq === cp.count && p.hash !== cp.head) {
      return fail(l, b.seq, 'its hash differs from the head of the external checkpoint: the log was rewritten', last);
    }
    if (cp && cpRecordHash && cp.record && b.seq === cp.record.seq) {
      if (p.hash !== cpRecordHash) return fail(l, b.seq, 'differs from the external checkpoint record: the log was rewritten', last);
      summary.externalCheckpoint = true;
    } else if (cp && !cp.record && b.seq === cp.count) {
      summary.externalCheckpoint = true;
    }

    before = last;
    last = { record: b, hash: p.hash, file: l.file, line: l.line };
    summary.records += 1;
    summary.firstSeq ??= b.seq;
    summary.start ??= b.genesis ? (b.kind === 'chain-broken' ? 'chain-broken' : 'genesis') : 'continued';
    summary.lastSeq = b.seq;
    summary.head = p.hash;
    if (b.kind === 'checkpoint') {
      summary.checkpoints += 1;
      summary.lastCheckpointSeq = b.seq;
      if (opts.publicKey) summary.signedCheckpoints += 1;
    }
  }

  if (cp && !summary.externalCheckpoint) {
    const want = cp.record ? cp.record.seq : cp.count;
    if (summary.firstSeq !== null && want < summary.firstSeq) {
      const first = files[0] ?? '';
      return fail(
        { file: first, line: 1 },
        summary.firstSeq,
        `the external checkpoint is at seq ${want}, before the oldest record present (seq ${summary.firstSeq}): it was rotated away or deleted, so it cannot be checked`,
        null,
      );
    }
    const at = lastLine ? { file: lastLine.file, line: lastLine.line + 1 } : { file: files[files.length - 1] ?? '', line: 1 };
    const have = summary.lastSeq ?? 0;
    return fail(
      at,
      have + 1,
      `missing: the log ends at seq ${have} but the external checkpoint covers seq ${want}: truncated (at least ${want - have} record(s) gone)`,
      last,
    );
  }
  return { ok: true, ...summary };
}
