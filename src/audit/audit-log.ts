// The tamper-evident audit log (`weir agent --audit-log FILE`): append-only
// JSON lines, each record chained to the one before it by SHA-256, rotated by
// size, with periodic (optionally Ed25519-signed) checkpoints. Format and
// guarantees: docs/audit.md; the line format: record.ts.
//
// Lifecycle contract (the agent is the only caller):
//   const log = await AuditLog.open(path, { logger, onCheckpoint, ... });
//   log.append('start', { version, node });          // synchronous, never blocks
//   log.append('violation', v); log.append('audit', v);
//   log.append('policy', { fromGeneration, toGeneration, digest });
//   await log.checkpoint();                          // optional, any time
//   log.append('stop', { version, node });
//   await log.close();                               // writes everything, fsyncs
// - append() fixes seq, time and prev at call time, so the chain order is the
//   call order; the line is queued and written asynchronously, in order, by
//   one writer (O_APPEND, whole lines in as few write(2) calls as possible).
//   The writer starts after the current synchronous work (a microtask), so
//   the records of one batch of events go out in one write.
//   It throws a TypeError for data JSON cannot hold, before touching the chain.
// - One writer per file: two processes appending to the same FILE break the
//   chain (the second one's records will not link).
// - A write error fails the log: the file is cut back to its last whole line,
//   onError is called once, pending flush()/checkpoint()/close() reject and
//   every later append() throws. Reopening continues the chain from what
//   reached the file; the records queued at the failure are lost.
// - Durability: `fsync: 'checkpoint'` (default) syncs after each checkpoint,
//   at rotation and on close; 'write' after every batch; 'close' only at
//   rotation and close. A record is on disk once a flush({ sync: true }) that
//   followed it resolved.
// - close() is idempotent; it appends a final checkpoint (unless
//   checkpointOnClose is false or nothing was appended since the last one),
//   waits for every queued record, fsyncs and closes the file. Later calls
//   fail with an error that says the log is closed.
// - Reopening an existing log verifies FILE (all of it: it is at most
//   maxBytes) and continues its chain. If FILE does not verify (a line cut
//   short by a crash, an edited record), nothing is appended to it: it is
//   rotated to FILE.1 like a full file, and a new chain starts in FILE with a
//   genesis 'chain-broken' record that says where and why. `weir audit verify`
//   then reports the damage: that is the point.
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdir, open, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import { sha256Hex, ZERO_HASH } from './canonical-json.js';
import { AUDIT_KINDS, recordLine, signCheckpoint, violationRecordLine, type AuditCheckpoint, type AuditData, type AuditKind, type AuditRecord, type ChainBroken } from './record.js';
import { verifyFiles } from './verify.js';

export type FsyncPolicy = 'write' | 'checkpoint' | 'close';

export interface AuditLogOptions {
  /** Rotate before a record would take FILE past this many bytes (default 16 MiB). */
  maxBytes?: number;
  /** Rotated files kept, FILE.1 (newest) to FILE.maxFiles (default 10, at least 1). */
  maxFiles?: number;
  fsync?: FsyncPolicy;
  /** A checkpoint after this many records (default 1000; 0: never by count). */
  checkpointEvery?: number;
  /** A checkpoint this often when records were appended since the last one (default 60 s; 0: never by time). */
  checkpointIntervalMs?: number;
  /** Append a checkpoint on close() (default true). */
  checkpointOnClose?: boolean;
  /** Ed25519 private key (a KeyObject, or the path of its PEM file) to sign checkpoints with. */
  signingKey?: KeyObject | string;
  /** Called with each checkpoint once it is written (and synced, unless fsync is 'close'): log it off-node. */
  onCheckpoint?: (checkpoint: AuditCheckpoint) => void;
  /** Called once if a write fails (the log is failed from then on). */
  onError?: (err: Error) => void;
  logger?: Logger;
  /** Clock for `time` (tests). */
  now?: () => Date;
}

/** What open() found. */
export type AuditLogOpened =
  | { state: 'new' }
  | { state: 'continued'; seq: number; head: string; file: string }
  | { state: 'chain-broken'; record: ChainBroken };

interface Entry {
  /** The record's line, without the newline (made bytes once per write, with the others of its chunk). */
  line: string;
  /** Bytes of the line with its newline. */
  size: number;
  seq: number;
  checkpoint: { record: AuditCheckpoint; resolve: (cp: AuditCheckpoint) => void; reject: (err: Error) => void } | null;
}

interface Waiter {
  seq: number;
  sync: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

const MiB = 1024 * 1024;
/** Bytes per write(2): large batches go out in pieces this size. */
const WRITE_CHUNK = 1 * MiB;

export class AuditLog {
  private fh: FileHandle | null;
  private size: number;
  private nextSeq: number;
  private prevHash: string | null; // null: the next record starts a chain
  private queue: Entry[] = [];
  /** The batch being written, so a failure can reject its checkpoints. */
  private inflight: Entry[] = [];
  private queuedBytes = 0;
  private waiters: Waiter[] = [];
  private draining = false;
  private writtenSeq: number;
  private syncedSeq: number;
  private sinceCheckpoint = 0;
  private failed: Error | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly maxBytes: number;
  private readonly maxFiles: number;
  private readonly fsyncPolicy: FsyncPolicy;
  private readonly checkpointEvery: number;
  private readonly key: KeyObject | null;
  /** The clock in milliseconds: Date.now, or the getTime() of opts.now (no Date per record without one). */
  private readonly nowMs: () => number;
  private openedAs: AuditLogOpened = { state: 'new' };

  private constructor(
    readonly path: string,
    private readonly opts: AuditLogOptions,
    key: KeyObject | null,
    fh: FileHandle,
    size: number,
    next: { seq: number; prev: string | null },
  ) {
    this.maxBytes = opts.maxBytes ?? 16 * MiB;
    this.maxFiles = opts.maxFiles ?? 10;
    this.fsyncPolicy = opts.fsync ?? 'checkpoint';
    this.checkpointEvery = opts.checkpointEvery ?? 1000;
    this.key = key;
    const now = opts.now;
    this.nowMs = now ? () => now().getTime() : Date.now;
    this.fh = fh;
    this.size = size;
    this.nextSeq = next.seq;
    this.prevHash = next.prev;
    this.writtenSeq = this.syncedSeq = next.seq - 1;
    const interval = opts.checkpointIntervalMs ?? 60_000;
    if (interval > 0) {
      this.timer = setInterval(() => {
        if (this.sinceCheckpoint > 0 && !this.closed && !this.failed) this.queueCheckpoint().catch(() => {}); // reported through onError
      }, interval);
      this.timer.unref();
    }
  }

  static async open(path: string, opts: AuditLogOptions = {}): Promise<AuditLog> {
    checkOptions(opts);
    const key = loadSigningKey(opts.signingKey);
    const maxFiles = opts.maxFiles ?? 10;
    await mkdir(dirname(path), { recursive: true, mode: 0o750 });

    // Where the chain continues from: FILE, or FILE.1 when FILE is missing or
    // empty (the agent stopped between rotating and writing).
    let tailFile: string | null = null;
    for (const f of [path, `${path}.1`]) {
      const st = await stat(f).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return null;
        throw err;
      });
      if (st && st.size > 0) {
        tailFile = f;
        break;
      }
    }
    let next: { seq: number; prev: string | null } = { seq: 1, prev: null };
    let opened: AuditLogOpened = { state: 'new' };
    let broken: Omit<ChainBroken['data'], 'file'> & { damaged: string } | null = null;
    if (tailFile) {
      const r = await verifyFiles([tailFile]);
      if (r.ok && r.lastSeq !== null && r.head !== null) {
        next = { seq: r.lastSeq + 1, prev: r.head };
        opened = { state: 'continued', seq: r.lastSeq, head: r.head, file: tailFile };
      } else if (!r.ok) {
        const f = r.failure;
        broken = {
          damaged: tailFile,
          reason: `${basename(f.file)} line ${f.line}${f.seq === null ? '' : ` (seq ${f.seq})`}: ${f.reason}`,
          line: f.line,
          lastGood: r.lastGood,
        };
        if (tailFile === path) await shiftRotated(path, maxFiles);
      }
    }

    const fh = await open(path, 'a', 0o600);
    const size = (await fh.stat()).size;
    const log = new AuditLog(path, opts, key, fh, size, next);
    if (broken) {
      const { damaged, ...rest } = broken;
      const data: ChainBroken['data'] = { ...rest, file: basename(damaged === path ? `${path}.1` : damaged) };
      const { record } = log.push('chain-broken', data);
      opened = { state: 'chain-broken', record: record as ChainBroken };
      opts.logger?.warn({ auditLog: path, chainBroken: data }, 'audit log did not verify: it was set aside and a new chain started');
    } else if (opened.state === 'continued') {
      opts.logger?.info({ auditLog: path, seq: opened.seq, head: opened.head }, 'audit log chain continues');
    }
    log.openedAs = opened;
    return log;
  }

  /**
   * Appends one record; returns its seq and hash. Never blocks: the line is
   * written by the background writer. Throws after close() or a write failure.
   */
  append<K extends AuditKind>(kind: K, data: AuditData[K]): { seq: number; hash: string } {
    this.usable();
    if (!(AUDIT_KINDS as readonly string[]).includes(kind)) throw new TypeError(`AuditLog.append: kind ${JSON.stringify(kind)} is not one of ${AUDIT_KINDS.join(', ')}`);
    const { seq, hash } = this.pushAppended(kind, data);
    this.sinceCheckpoint += 1;
    if (this.checkpointEvery > 0 && this.sinceCheckpoint >= this.checkpointEvery) this.queueCheckpoint().catch(() => {}); // reported through onError
    return { seq, hash };
  }

  /**
   * Appends a checkpoint now and resolves with it once it is written (and
   * synced, unless fsync is 'close'); null when the chain has no record yet.
   */
  async checkpoint(): Promise<AuditCheckpoint | null> {
    this.usable();
    if (this.prevHash === null) return null;
    return this.queueCheckpoint();
  }

  /** Resolves when every record appended so far is written (and, with sync, fsynced). */
  async flush(opts: { sync?: boolean } = {}): Promise<void> {
    this.usable();
    return this.waitFor(opts.sync ?? false);
  }

  async close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  /** What open() found: a new log, a chain continued, or a chain it had to break (and why). */
  get opened(): AuditLogOpened {
    return this.openedAs;
  }

  /** The last record appended (not necessarily written yet), or null for an empty chain. */
  get head(): { seq: number; hash: string } | null {
    return this.prevHash === null ? null : { seq: this.nextSeq - 1, hash: this.prevHash };
  }

  /** Bytes appended and not yet written. */
  get pendingBytes(): number {
    return this.queuedBytes;
  }

  private async shutdown(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    if (!this.failed && (this.opts.checkpointOnClose ?? true) && this.sinceCheckpoint > 0) {
      this.queueCheckpoint().catch(() => {}); // its failure is the flush's
    }
    this.closed = true;
    try {
      await this.waitFor(true);
    } finally {
      const fh = this.fh;
      this.fh = null;
      await fh?.close();
    }
  }

  private usable(): void {
    if (this.closed) throw new Error(`audit log ${this.path} is closed`);
    if (this.failed) throw new Error(`audit log ${this.path} failed: ${this.failed.message}`, { cause: this.failed });
  }

  /** Seals the next record into the chain and queues its line. */
  private push(kind: string, data: object, checkpoint: 'sign' | null = null, time = this.isoTime()): { seq: number; hash: string; record: AuditRecord; entry: Entry } {
    const prev = this.prevHash ?? ZERO_HASH;
    const record: AuditRecord = { seq: this.nextSeq, time, kind, data: data as Record<string, unknown>, prev };
    if (this.prevHash === null) record.genesis = true;
    if (checkpoint === 'sign' && this.key) record.sig = signCheckpoint(record, this.key);
    const line = recordLine(record); // throws before the chain moves
    const { hash, entry } = this.enqueue(record.seq, line);
    return { seq: record.seq, hash, record, entry };
  }

  /** push() for the records appended most (violations, audit verdicts): no record object, the fixed-order writer. */
  private pushAppended(kind: AuditKind, data: object): { seq: number; hash: string } {
    if (kind !== 'violation' && kind !== 'audit') return this.push(kind, data);
    const seq = this.nextSeq;
    const time = this.isoTime();
    const line = violationRecordLine(seq, time, kind, data, this.prevHash ?? ZERO_HASH, this.prevHash === null);
    if (line === null) return this.push(kind, data, null, time);
    return { seq, hash: this.enqueue(seq, line).hash };
  }

  /** Moves the chain to a sealed line and queues it. */
  private enqueue(seq: number, line: string): { hash: string; entry: Entry } {
    const hash = sha256Hex(line);
    this.prevHash = hash;
    this.nextSeq += 1;
    const entry: Entry = { line, size: Buffer.byteLength(line) + 1, seq, checkpoint: null };
    this.queue.push(entry);
    this.queuedBytes += entry.size;
    this.kick();
    return { hash, entry };
  }

  private lastTimeMs = Number.NaN;
  private lastTime = '';

  /** now() as ISO 8601; the string is made once per millisecond (a batch of records shares a few). */
  private isoTime(): string {
    const t = this.nowMs();
    if (t !== this.lastTimeMs) {
      this.lastTime = new Date(t).toISOString();
      this.lastTimeMs = t;
    }
    return this.lastTime;
  }

  private queueCheckpoint(): Promise<AuditCheckpoint> {
    const head = this.prevHash ?? ZERO_HASH;
    const { record, entry } = this.push('checkpoint', { count: this.nextSeq - 1, head }, 'sign');
    this.sinceCheckpoint = 0;
    return new Promise<AuditCheckpoint>((resolve, reject) => {
      entry.checkpoint = { record: record as AuditCheckpoint, resolve, reject };
    });
  }

  private waitFor(sync: boolean): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const seq = this.nextSeq - 1;
    if (seq <= this.writtenSeq && (!sync || seq <= this.syncedSeq)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ seq, sync, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.draining || this.failed) return;
    this.draining = true;
    // Not at once: the appends of the caller's current batch join this write.
    queueMicrotask(() => void this.drain());
  }

  /** The one writer: runs while there is something to write or sync. */
  private async drain(): Promise<void> {
    try {
      for (;;) {
        const batch = this.queue;
        this.inflight = batch;
        this.queue = [];
        this.queuedBytes = 0;
        if (batch.length > 0) await this.writeBatch(batch);
        const policySync = this.fsyncPolicy === 'write' || (this.fsyncPolicy === 'checkpoint' && batch.some((e) => e.checkpoint));
        const asked = this.waiters.some((w) => w.sync && w.seq > this.syncedSeq);
        if ((policySync || asked) && this.syncedSeq < this.writtenSeq && this.fh) {
          await this.fh.sync();
          this.syncedSeq = this.writtenSeq;
        }
        this.inflight = [];
        for (const e of batch) if (e.checkpoint) this.announce(e.checkpoint);
        this.waiters = this.waiters.filter((w) => {
          const done = w.seq <= this.writtenSeq && (!w.sync || w.seq <= this.syncedSeq);
          if (done) w.resolve();
          return !done;
        });
        if (this.queue.length === 0) break;
      }
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
    } finally {
      this.draining = false;
    }
  }

  private announce(cp: NonNullable<Entry['checkpoint']>): void {
    cp.resolve(cp.record);
    try {
      this.opts.onCheckpoint?.(cp.record);
    } catch (err) {
      this.opts.logger?.error({ err }, 'audit log onCheckpoint callback threw');
    }
  }

  /** Writes whole lines, rotating before a line that would take FILE past maxBytes. */
  private async writeBatch(batch: Entry[]): Promise<void> {
    let chunk: Entry[] = [];
    let chunkBytes = 0;
    for (const e of batch) {
      const fileBytes = this.size + chunkBytes;
      if (fileBytes > 0 && fileBytes + e.size > this.maxBytes) {
        await this.writeChunk(chunk);
        chunk = [];
        chunkBytes = 0;
        await this.rotate();
      }
      chunk.push(e);
      chunkBytes += e.size;
      if (chunkBytes >= WRITE_CHUNK) {
        await this.writeChunk(chunk);
        chunk = [];
        chunkBytes = 0;
      }
    }
    await this.writeChunk(chunk);
  }

  private async writeChunk(chunk: Entry[]): Promise<void> {
    const last = chunk[chunk.length - 1];
    if (!last) return;
    const fh = this.fh;
    if (!fh) throw new Error(`audit log ${this.path} has no open file`);
    // One join (the length counted once, one copy) rather than a rope of two strings a line, flattened by Buffer.from.
    const lines: string[] = new Array<string>(chunk.length);
    for (let i = 0; i < chunk.length; i++) lines[i] = (chunk[i] as Entry).line;
    const buf = Buffer.from(`${lines.join('\n')}\n`);
    const start = this.size;
    try {
      for (let off = 0; off < buf.length; ) {
        const { bytesWritten } = await fh.write(buf, off, buf.length - off);
        off += bytesWritten;
      }
    } catch (err) {
      // A record is in the file whole or not at all: cut off what part of
      // this chunk got there (a short write on ENOSPC, say).
      await fh.truncate(start).catch(() => {});
      throw err;
    }
    this.size += buf.length;
    this.writtenSeq = last.seq;
  }

  /** FILE -> FILE.1 -> ... -> FILE.maxFiles (dropped); the chain goes on in a new FILE. */
  private async rotate(): Promise<void> {
    const fh = this.fh;
    if (!fh) throw new Error(`audit log ${this.path} has no open file`);
    await fh.sync();
    this.syncedSeq = this.writtenSeq;
    this.fh = null;
    await fh.close();
    await shiftRotated(this.path, this.maxFiles);
    this.fh = await open(this.path, 'a', 0o600);
    this.size = 0;
    await syncDir(dirname(this.path));
    this.opts.logger?.info({ auditLog: this.path, seq: this.writtenSeq + 1 }, 'audit log rotated');
  }

  private fail(err: Error): void {
    this.failed = err;
    // Nothing in flight was announced yet: its checkpoints reject whether or not their line got out.
    const unsettled = [...this.inflight, ...this.queue];
    const lost = unsettled.filter((e) => e.seq > this.writtenSeq).length;
    this.inflight = [];
    this.queue = [];
    this.queuedBytes = 0;
    for (const e of unsettled) e.checkpoint?.reject(err);
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.opts.logger?.error({ err, auditLog: this.path, lost }, 'audit log write failed; the log is closed to appends');
    try {
      this.opts.onError?.(err);
    } catch {
      // the caller's problem, and we are already failing
    }
  }
}

function checkOptions(o: AuditLogOptions): void {
  const positiveInt = (name: keyof AuditLogOptions, min: number) => {
    const v = o[name];
    if (v !== undefined && (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min)) {
      throw new TypeError(`AuditLog.open: ${name} must be an integer >= ${min}, got ${String(v)}`);
    }
  };
  positiveInt('maxBytes', 1);
  positiveInt('maxFiles', 1);
  positiveInt('checkpointEvery', 0);
  positiveInt('checkpointIntervalMs', 0);
  if (o.fsync !== undefined && !['write', 'checkpoint', 'close'].includes(o.fsync)) {
    throw new TypeError(`AuditLog.open: fsync must be 'write', 'checkpoint' or 'close', got ${String(o.fsync)}`);
  }
}

function loadSigningKey(k: KeyObject | string | undefined): KeyObject | null {
  if (k === undefined) return null;
  let key: KeyObject;
  if (typeof k === 'string') {
    try {
      key = createPrivateKey(readFileSync(k, 'utf8'));
    } catch (err) {
      throw new TypeError(`AuditLog.open: signingKey ${k}: ${(err as Error).message}`, { cause: err });
    }
  } else {
    key = k;
  }
  if (key.type !== 'private' || key.asymmetricKeyType !== 'ed25519') {
    throw new TypeError('AuditLog.open: signingKey must be an Ed25519 private key');
  }
  return key;
}

async function shiftRotated(path: string, maxFiles: number): Promise<void> {
  const ignoreMissing = (err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  };
  await unlink(`${path}.${maxFiles}`).catch(ignoreMissing);
  for (let i = maxFiles - 1; i >= 1; i--) await rename(`${path}.${i}`, `${path}.${i + 1}`).catch(ignoreMissing);
  await rename(path, `${path}.1`).catch(ignoreMissing);
}

/** Makes renames and creations in dir durable; best effort where a directory cannot be synced. */
async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r').catch(() => null);
  if (!d) return;
  try {
    await d.sync();
  } catch {
    // some filesystems refuse fsync on a directory; the renames still happened
  } finally {
    await d.close();
  }
}
