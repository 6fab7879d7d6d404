import { existsSync, readFileSync, statSync } from 'node:fs';
import { createPublicKey, type KeyObject } from 'node:crypto';
import { canonicalJson } from '../audit/canonical-json.js';
import { checkpointSignatureValid, parseRecordLine } from '../audit/record.js';
import { auditLogFiles, emptySummary, verifyFiles, type ExternalCheckpoint, type VerifyResult } from '../audit/verify.js';
import { parse, UsageError, type Command } from './main.js';

const help = `Subcommands:
  verify FILE            check the audit log FILE and its rotated files (FILE.N ... FILE.1, FILE)
                         as one hash chain, oldest first

Options of verify:
  --key PUBKEY.pem       Ed25519 public key: every checkpoint must carry a signature it verifies
  --checkpoint CP        a checkpoint kept off the node: a checkpoint record (JSON, or a file
                         whose last line is one, such as a log line carrying it), or COUNT:HEAD;
                         the log must still hold that record (this is what detects truncation)
  --json                 print the result as JSON
  -h, --help             show this help

Checks that every line is a canonical JSON record, seq goes up by exactly 1, every
prev is the SHA-256 of the record before it, checkpoint counts and heads match
and, with --key, that checkpoint signatures verify. Prints OK with the record
count and head hash, or the first bad record (file, line, seq) and why. Without
--checkpoint, records cut off the end of the log cannot be noticed.
Exit status: 0 intact, 1 tampered or damaged, 2 usage error.

Examples:
  weir audit verify /var/log/weir/audit.log
  weir audit verify /var/log/weir/audit.log --key audit.pub.pem --checkpoint saved-checkpoint.json
`;

export const auditCommand: Command = {
  summary: 'Verify the tamper-evident audit log written by weir agent --audit-log.',
  usage: 'weir audit verify FILE [--key PUBKEY.pem] [--checkpoint JSON|FILE|COUNT:HEAD] [--json]',
  help,
  async run(argv) {
    const { values, positionals } = parse(
      argv,
      {
        key: { type: 'string' },
        checkpoint: { type: 'string' },
        json: { type: 'boolean', default: false },
      },
      true,
    );
    const [sub, file, ...extra] = positionals;
    if (sub !== 'verify') throw new UsageError(sub === undefined ? 'a subcommand is required: verify' : `unknown subcommand ${JSON.stringify(sub)} (expected verify)`);
    if (!file) throw new UsageError('verify needs the audit log FILE');
    if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);
    const publicKey = values.key === undefined ? undefined : readPublicKey(values.key);
    const checkpoint = values.checkpoint === undefined ? undefined : readCheckpoint(values.checkpoint);
    const files = await auditLogFiles(file);
    if (files.length === 0) throw new UsageError(`${file}: no such audit log (nor rotated files ${file}.N)`);

    let result: VerifyResult;
    if (checkpoint?.record?.sig !== undefined && publicKey && !checkpointSignatureValid(checkpoint.record, publicKey)) {
      // The operator's own copy does not check out: nothing in the log can be trusted against it.
      result = {
        ok: false,
        ...emptySummary(files),
        failure: { file: values.checkpoint ?? '', line: 1, seq: checkpoint.record.seq, reason: 'the external checkpoint signature does not verify with the given key' },
        lastGood: null,
      };
    } else {
      const opts: Parameters<typeof verifyFiles>[1] = {};
      if (publicKey) opts.publicKey = publicKey;
      if (checkpoint) opts.checkpoint = checkpoint;
      result = await verifyFiles(files, opts);
    }
    process.stdout.write(values.json ? `${JSON.stringify(result, null, 2)}\n` : formatResult(result, values.key));
    return result.ok ? 0 : 1;
  },
};

function readPublicKey(path: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`--key ${path}: ${(err as Error).message}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new UsageError(`--key ${path}: not an Ed25519 key (${key.asymmetricKeyType ?? 'unknown type'})`);
  return key;
}

/** --checkpoint: COUNT:HEAD, a checkpoint record, an object carrying one (a log line), or a file holding any of these. */
function readCheckpoint(arg: string): ExternalCheckpoint {
  let text = arg;
  if (!arg.trimStart().startsWith('{') && !/^\d+:/.test(arg) && existsSync(arg) && statSync(arg).isFile()) {
    text = readFileSync(arg, 'utf8');
  }
  text = text.trim();
  const pair = /^(\d+):([0-9a-f]{64})$/.exec(text);
  if (pair?.[1] && pair[2]) return { count: Number(pair[1]), head: pair[2] };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    const lines = text.split('\n').filter((l) => l.trim() !== '');
    try {
      value = JSON.parse(lines[lines.length - 1] ?? '');
    } catch {
      throw new UsageError(`--checkpoint: expected COUNT:HEAD, a checkpoint record in JSON, or a file holding one`);
    }
  }
  const cp = findCheckpoint(value);
  if (!cp) throw new UsageError('--checkpoint: no checkpoint record (kind "checkpoint") or {count, head} in it');
  return cp;
}

function findCheckpoint(v: unknown): ExternalCheckpoint | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (o.kind === 'checkpoint') {
    let line: string;
    try {
      line = canonicalJson(o);
    } catch (err) {
      throw new UsageError(`--checkpoint: ${(err as Error).message}`);
    }
    const p = parseRecordLine(line);
    if (!p.ok) throw new UsageError(`--checkpoint: not a valid checkpoint record: ${p.reason}`);
    const data = p.record.data as { count: number; head: string };
    return { count: data.count, head: data.head, record: p.record };
  }
  if (typeof o.count === 'number' && Number.isSafeInteger(o.count) && typeof o.head === 'string' && /^[0-9a-f]{64}$/.test(o.head)) {
    return { count: o.count, head: o.head };
  }
  for (const x of Object.values(o)) {
    if (typeof x === 'object' && x !== null && (x as Record<string, unknown>).kind === 'checkpoint') return findCheckpoint(x);
  }
  return null;
}

function formatResult(r: VerifyResult, keyPath: string | undefined): string {
  const files = `${r.files.length} file${r.files.length === 1 ? '' : 's'}`;
  if (!r.ok) {
    const f = r.failure;
    const out = [`TAMPERED: ${f.file} line ${f.line}${f.seq === null ? '' : ` (seq ${f.seq})`}: ${f.reason}`];
    out.push(`verified before it: ${r.records} record(s) in ${files}${r.lastGood ? `; last good record seq ${r.lastGood.seq} ${r.lastGood.hash}` : ''}`);
    return `${out.join('\n')}\n`;
  }
  const start = { genesis: 'from its genesis', 'chain-broken': 'from a chain-broken genesis', continued: 'earlier records rotated away' }[r.start ?? 'genesis'];
  const out = [`OK: ${r.records} records in ${files}${r.records ? ` (seq ${r.firstSeq} to ${r.lastSeq}, ${start})` : ''}`];
  if (r.head !== null) out.push(`head: seq ${r.lastSeq} ${r.head}`);
  out.push(
    `checkpoints: ${r.checkpoints}${keyPath ? `, every one signed and verified with ${keyPath}` : r.checkpoints ? ' (signatures not checked: no --key)' : ''}` +
      (r.lastCheckpointSeq !== null && r.lastSeq !== null && r.lastCheckpointSeq < r.lastSeq ? `; ${r.lastSeq - r.lastCheckpointSeq} record(s) after the last one` : ''),
  );
  if (r.externalCheckpoint) out.push('external checkpoint: found in the log');
  if (r.head !== null) out.push(`to detect truncation later, keep: --checkpoint ${r.lastSeq}:${r.head}`);
  return `${out.join('\n')}\n`;
}
