// The standalone source (`weir agent --manifests DIR`): a directory of
// Kubernetes manifests, watched for changes, fed into the ObjectStore.
//
// What is read: every `*.yaml`, `*.yml` and `*.json` file under DIR,
// recursively (symlinks followed, loops cut), several YAML documents per file;
// a document may be a `List` (or a typed list such as `PodList`) whose
// `items` are read one by one. Skipped: names starting with '.' (dotfiles,
// and the `..data` / `..2024_…` entries of a ConfigMap volume, whose visible
// files are symlinks into them), editor temporaries (`*~`, `#*#`, `*.swp`,
// `*.tmp`, vim's `4913`) and anything not a regular file.
//
// How changes are applied: every watch event (debounced) triggers a full
// re-scan, and the result is diffed against what this source put into the
// store: new or changed objects are upserted, objects no longer present are
// deleted. The file name an event carries is never trusted for what is read,
// only the fact that something changed; it only chooses how long to wait.
// The re-scan follows the last event of a burst after a quiet period:
// debounceMs (20 ms) when the burst only replaced, created or deleted
// entries (an atomic save renames a complete file into place, a ConfigMap
// swaps its `..data` link to a directory written in full before), and
// writeDebounceMs (100 ms) when it wrote a manifest file in place (a
// `change` event naming a manifest, or an event without a name), as a
// writer that truncates and then writes in several steps does. A burst
// cannot postpone its scan beyond maxDelayMs (1 s), and a watch-driven scan
// never starts sooner after the previous one ended than that one took, so
// a storm of events costs a bounded number of scans and at most about half
// of a core, however large the directory. A full scan is cheap (unchanged
// files are recognised by content hash and not re-parsed) and it is the
// only approach that is right for every way a directory can change,
// including the ConfigMap `..data` symlink swap and DIR itself being a
// symlink that is swapped. A periodic re-scan (resyncIntervalMs) covers
// events the kernel may drop (inotify overflow).
//
// Removals wait for the file to settle. A file rewritten in place (truncate,
// then write: `cat > f`, writeFileSync) can be read half-written, and a
// prefix of a manifest often parses: empty, or cut at a `---`. Deleting what
// such a read lacks removed a policy until the rest arrived, and denied
// traffic passed (bench/results/soak-run1.md). So when a watch-driven scan
// finds that a file no longer supplies objects it supplied (it yields fewer,
// is empty, or is gone), those objects are held, still owned by that file,
// and the file is read again after settleMs; the removals are applied only
// by a scan that finds the file still without them and unchanged (inode,
// size, mtime, content) for settleMs (200 ms, whatever the quiet periods
// above). Upserts are never held: what a read yields is applied at once. A
// writer that pauses longer than settleMs mid-file still opens the window
// (docs/operations.md). An explicit rescan() takes the files as final and
// applies removals at once.
//
// What is watched: each directory the scan reads, with its own
// non-recursive watch (inotify on Linux) set up before the directory is
// read, and the directory each symlinked manifest resolves into (a ConfigMap's
// `..2024_…` directory), so a file edited in place behind a link is seen; and
// the parent of DIR, for DIR itself being replaced. Every scan brings the set
// up to date: a new directory is watched, a vanished one's watch is closed, a
// directory replaced at the same path (another inode) is watched again. A
// directory watch reports every entry created, deleted, renamed or written,
// however often a name is reused. Node's recursive fs.watch is not used: on
// Linux it watches each file's inode, so once a file was replaced by rename
// (an atomic save: editors, write-file-atomic, kubectl-style tools) later
// changes of that name, its deletion included, were never reported.
//
// Last good wins. A manifest error never removes enforcement that was in
// place:
// - a file that cannot be read, is over a limit (MANIFEST_LIMITS: bytes,
//   YAML tokens and documents; docs/operations.md), or has a YAML/JSON
//   syntax error keeps every object previously loaded from it;
// - a document that fails validation, holds a duplicate key or nests too
//   deeply keeps the last good version of that object (matched by
//   kind/namespace/name), and the file's other documents still load;
// - a DIR that disappears or cannot be read keeps everything.
// Every such error is logged (file, document, object, field) and reported
// through onError once, when it first appears; lastErrors() lists the errors
// of the latest scan, for `weir status`.
//
// Duplicates: an object (kind/namespace/name) defined twice is an error that
// names both places. The file that already supplied it keeps it, so adding a
// file can never take over an existing policy; on the first load, or when
// the owner no longer defines it, the first in path order (then document
// order) wins.
//
// Order of application: upserts go policies first and pods last, deletions
// pods first and policies last, so a pod never appears in the model before
// the policies that arrived with it, and a policy is never removed before
// the pods it governed.

import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { Composer, isCollection, isMap, isScalar, isSeq, Lexer, LineCounter, Parser, type Document } from 'yaml';
import type { ObjectStore } from '../model/store.js';
import type { KubeKind, KubeObject } from '../model/types.js';
import { objectKey } from '../model/types.js';
import { describeObject, identify, validateObject, ValidationError } from '../model/validate.js';
import type { Source } from './source.js';

export const MAX_MANIFEST_FILE_BYTES = 10 * 1024 * 1024;

/**
 * How long a file must stay unchanged, still lacking objects it supplied,
 * before they are removed (ManifestSourceOptions.settleMs). An absolute time,
 * not derived from the quiet periods before a re-scan: it was chosen as twice
 * the 100 ms debounce of the time, and shortening the quiet period for
 * atomic saves (DEFAULT_DEBOUNCE_MS) must not shorten the time a file
 * written in steps has to finish.
 */
export const DEFAULT_SETTLE_MS = 200;

/** Quiet time after the last watch event before re-scanning (ManifestSourceOptions.debounceMs). */
export const DEFAULT_DEBOUNCE_MS = 20;

/**
 * Quiet time when the burst wrote a manifest file in place
 * (ManifestSourceOptions.writeDebounceMs): a writer that truncates and
 * writes in steps is read once it has been quiet this long.
 */
export const DEFAULT_WRITE_DEBOUNCE_MS = 100;

/**
 * What one manifest file may hold (docs/operations.md, "Limits"). The byte
 * limit alone does not bound a YAML parse: the yaml package keeps a syntax
 * tree of about 1 KB per token, so 10 MB of `[],` or of comments took
 * minutes and gigabytes. Tokens are counted by the yaml lexer (cheap, no
 * tree) before anything is parsed, which bounds time and memory; a
 * 10,000-rule policy in block style is about 450,000 tokens.
 */
export const MANIFEST_LIMITS = Object.freeze({
  /** Bytes per file (YAML or JSON); ManifestSourceOptions.maxFileBytes. */
  MAX_FILE_BYTES: MAX_MANIFEST_FILE_BYTES,
  /** YAML tokens per file: scalars, indicators, comments, line breaks... */
  MAX_YAML_TOKENS: 1_000_000,
  /** YAML documents per file. */
  MAX_YAML_DOCUMENTS: 10_000,
  /** Alias expansions per YAML document (the yaml package's maxAliasCount): a "billion laughs" is refused. */
  MAX_YAML_ALIASES: 100,
  /** Mappings and sequences nested in one document (YAML and JSON); Kubernetes objects need about 20. */
  MAX_NESTING_DEPTH: 100,
});

export type ManifestErrorReason = 'directory' | 'read' | 'too-large' | 'parse' | 'invalid' | 'duplicate';

export interface ManifestError {
  reason: ManifestErrorReason;
  /** Path relative to the manifests directory ('' for the directory itself). */
  file: string;
  /** 1-based YAML document number, when the error is about one document. */
  document?: number;
  /** Zero-based index in a List's items. */
  item?: number;
  /** `Kind namespace/name`, when known. */
  object?: string;
  /** Field path of the first problem, for validation errors. */
  field?: string;
  /** The full message: file, document, object, field, what is wrong. */
  message: string;
  /** The validation error, for reason 'invalid'. */
  validation?: ValidationError;
}

export interface ScanResult {
  /** Manifest files read. */
  files: number;
  /** Objects this source holds in the store after the scan. */
  objects: number;
  upserted: number;
  deleted: number;
  /** Objects of kinds weir does not read (Deployments...). */
  ignored: number;
  /** Objects kept at their last good version because their source is broken. */
  retained: number;
  /** Objects a file no longer supplies, kept until the file has settled (settleMs). */
  held: number;
  errors: readonly ManifestError[];
}

export interface ManifestSourceOptions {
  dir: string;
  store: ObjectStore;
  logger: Logger;
  /** Called once for each new error (an error still present at the next scan is not reported again). */
  onError?: (error: ManifestError) => void;
  /** Called after every scan has been applied to the store. */
  onScan?: (result: ScanResult) => void;
  /** Metrics registry; without one no metrics are registered. */
  registry?: Registry;
  /**
   * Quiet time after the last watch event before re-scanning, for a burst
   * that only replaced, created or deleted entries (an atomic save, a
   * ConfigMap swap, a deletion): default DEFAULT_DEBOUNCE_MS, 20 ms.
   */
  debounceMs?: number;
  /**
   * Quiet time instead of debounceMs (if longer) when the burst wrote a
   * manifest file in place (a `change` event naming a manifest file, or an
   * event without a name): default DEFAULT_WRITE_DEBOUNCE_MS, 100 ms.
   */
  writeDebounceMs?: number;
  /** Longest a burst of events can postpone a re-scan (default 1 s). */
  maxDelayMs?: number;
  /** Re-scan this often even without events; 0 disables (default 60 s). */
  resyncIntervalMs?: number;
  /**
   * How long a file that no longer supplies some of its objects (fewer
   * documents, empty, deleted) must stay unchanged before they are removed
   * (default DEFAULT_SETTLE_MS, 200 ms).
   */
  settleMs?: number;
  /** Largest file read (default 10 MiB). */
  maxFileBytes?: number;
}

/** Whether a directory entry is skipped: dotfiles/dirs and editor temporaries. */
export function isIgnoredName(name: string): boolean {
  return (
    name.startsWith('.') || // dotfiles, .foo.swp, .#lock, ConfigMap ..data
    name.endsWith('~') || // emacs/vim backups
    (name.startsWith('#') && name.endsWith('#')) || // emacs autosave
    name.endsWith('.swp') ||
    name.endsWith('.swx') ||
    name.endsWith('.tmp') ||
    name === '4913' // vim's "can I write here" probe
  );
}

/** Whether a file name is a manifest (by extension, as kubectl decides). */
export function isManifestName(name: string): boolean {
  return !isIgnoredName(name) && (name.endsWith('.yaml') || name.endsWith('.yml') || name.endsWith('.json'));
}

interface Found {
  key: string;
  object: KubeObject;
  file: string;
  document: number; // zero-based
  item?: number;
}

interface FileOutcome {
  found: Found[];
  errors: ManifestError[];
  /** Objects whose documents failed validation: keep their last good version. */
  keepKeys: Set<string>;
  /** Part of the file could not be attributed to objects: keep everything it supplied. */
  keepAll: boolean;
  ignored: number;
}

interface CachedFile {
  hash: string;
  outcome: FileOutcome;
}

/** A file whose removals are held until it settles. */
interface HeldFile {
  /** What the file looked like at the latest scan: inode, size, mtime and content hash, or 'absent'. */
  signature: string;
  /** performance.now() when that signature was first seen. */
  since: number;
  /** performance.now() when the removals were first held. */
  heldAt: number;
}

interface DirWatch {
  watcher: FSWatcher;
  /** Identity of the directory when the watch was set up. */
  dev: number;
  ino: number;
  /**
   * The watched directory itself was deleted or moved: set the watch up
   * again even if a directory of the same identity is found there (inode
   * numbers are reused).
   */
  stale: boolean;
}

/** The watches a scan found it needs, and whether one could not be set up. */
interface WatchPass {
  wanted: Set<string>;
  failed: boolean;
}

// Upsert order: what selects and governs first, what is governed last.
const APPLY_ORDER: readonly KubeKind[] = ['Namespace', 'NetworkPolicy', 'EgressPolicy', 'ClusterEgressPolicy', 'Service', 'EndpointSlice', 'Pod'];

function kindRank(kind: KubeKind): number {
  return APPLY_ORDER.indexOf(kind);
}

function errorId(e: ManifestError): string {
  return `${e.reason}\u0000${e.file}\u0000${e.message}`;
}

function formatBytes(n: number): string {
  return n >= 1024 * 1024 ? `${(n / (1024 * 1024)).toFixed(1)} MB` : `${n} bytes`;
}

interface TreeProblem {
  field: string;
  problem: string;
}

const DEPTH_PROBLEM = `nested deeper than ${MANIFEST_LIMITS.MAX_NESTING_DEPTH} levels of mappings and sequences (limit MAX_NESTING_DEPTH)`;

/** A key in a field path, short enough for a message. */
function pathKey(path: string, key: string): string {
  const k = key.length > 64 ? `${key.slice(0, 61)}...` : key;
  if (/^[A-Za-z0-9_$-]+$/.test(k)) return path === '' ? k : `${path}.${k}`;
  return `${path}[${JSON.stringify(k)}]`;
}

function isListKind(raw: unknown): boolean {
  return isRecord(raw) && typeof raw['kind'] === 'string' && raw['kind'].endsWith('List');
}

/**
 * Counts the tokens of a YAML text with the yaml lexer (no tree is built)
 * and the nesting of its flow collections; returns why it is refused, or
 * undefined. Stops at the first limit crossed.
 */
function yamlOverLimits(text: string): string | undefined {
  let tokens = 0;
  let flow = 0;
  let offset = 0;
  for (const tok of new Lexer().lex(text)) {
    if (++tokens > MANIFEST_LIMITS.MAX_YAML_TOKENS) {
      return `more than ${MANIFEST_LIMITS.MAX_YAML_TOKENS} YAML tokens (limit MAX_YAML_TOKENS; a 10,000-rule policy needs about 450,000)`;
    }
    if (tok === '[' || tok === '{') {
      if (++flow > MANIFEST_LIMITS.MAX_NESTING_DEPTH) {
        const before = text.slice(0, offset);
        const line = before.split('\n').length;
        const column = offset - before.lastIndexOf('\n');
        return `${DEPTH_PROBLEM} at line ${line}, column ${column}`;
      }
    } else if ((tok === ']' || tok === '}') && flow > 0) {
      flow--;
    }
    // The lexer's control tokens (document, flow end, scalar marks) are not source text.
    if (tok !== '\x02' && tok !== '\x18' && tok !== '\x1f') offset += tok.length;
  }
  return undefined;
}

/** Duplicate keys and nesting depth of a parsed YAML document, walked without recursion. */
function yamlTreeProblem(doc: Document.Parsed, at: (offset: number) => string): TreeProblem | undefined {
  const stack: { node: unknown; depth: number; path: string }[] = [{ node: doc.contents, depth: 0, path: '' }];
  for (let top = stack.pop(); top !== undefined; top = stack.pop()) {
    const { node, depth, path } = top;
    if (!isCollection(node)) continue;
    if (depth >= MANIFEST_LIMITS.MAX_NESTING_DEPTH) return { field: path, problem: DEPTH_PROBLEM };
    const children: { node: unknown; depth: number; path: string }[] = [];
    if (isMap(node)) {
      const seen = new Map<string, number | undefined>();
      for (const pair of node.items) {
        const k: unknown = pair.key;
        // How toJS names the key: a scalar by its value (null as ''), anything else is not compared.
        const name = isScalar(k) ? (k.value === null ? '' : String(k.value)) : k === null || k === undefined ? '' : undefined;
        const p = name === undefined ? pathKey(path, '?') : pathKey(path, name);
        if (name !== undefined) {
          const keyAt = isScalar(k) ? k.range?.[0] : undefined;
          if (seen.has(name)) {
            const firstAt = seen.get(name);
            return { field: p, problem: `duplicate key${keyAt !== undefined ? ` at ${at(keyAt)}` : ''}${firstAt !== undefined ? ` (first at ${at(firstAt)})` : ''}: YAML keys must be unique` };
          }
          seen.set(name, keyAt);
        } else {
          children.push({ node: k, depth: depth + 1, path: p });
        }
        children.push({ node: pair.value, depth: depth + 1, path: p });
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => children.push({ node: item, depth: depth + 1, path: `${path}[${i}]` }));
    }
    // Depth first, in document order.
    for (let i = children.length - 1; i >= 0; i--) stack.push(children[i] as { node: unknown; depth: number; path: string });
  }
  return undefined;
}

/** What identify() needs of a document that will not be converted: its kind and name. */
function yamlIdentity(doc: Document.Parsed): unknown {
  const get = (...path: string[]): unknown => doc.getIn(path);
  return { apiVersion: get('apiVersion'), kind: get('kind'), metadata: { name: get('metadata', 'name'), namespace: get('metadata', 'namespace') } };
}

/**
 * Duplicate keys and nesting depth of a JSON text JSON.parse accepted,
 * scanned without recursion (JSON.parse silently keeps the last duplicate).
 */
function jsonTreeProblem(text: string): TreeProblem | undefined {
  interface Frame {
    keys: Set<string> | null; // null: an array
    path: string;
    index: number;
    key: string;
    expectKey: boolean;
  }
  const stack: Frame[] = [];
  const childPath = (): string => {
    const top = stack[stack.length - 1];
    if (top === undefined) return '';
    return top.keys !== null ? pathKey(top.path, top.key) : `${top.path}[${top.index}]`;
  };
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      let j = i + 1;
      let escaped = false;
      while (j < n) {
        const d = text.charCodeAt(j);
        if (d === 0x5c) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) break;
        else j++;
      }
      const top = stack[stack.length - 1];
      if (top !== undefined && top.keys !== null && top.expectKey) {
        const raw = text.slice(i + 1, j);
        const key = escaped ? (JSON.parse(`"${raw}"`) as string) : raw;
        if (top.keys.has(key)) return { field: pathKey(top.path, key), problem: 'duplicate key: JSON keys must be unique (JSON.parse would keep the last one silently)' };
        top.keys.add(key);
        top.key = key;
        top.expectKey = false;
      }
      i = j + 1;
    } else if (c === 0x7b || c === 0x5b) {
      const path = childPath();
      if (stack.length >= MANIFEST_LIMITS.MAX_NESTING_DEPTH) return { field: path, problem: DEPTH_PROBLEM };
      stack.push({ keys: c === 0x7b ? new Set() : null, path, index: 0, key: '', expectKey: c === 0x7b });
      i++;
    } else if (c === 0x7d || c === 0x5d) {
      stack.pop();
      i++;
    } else if (c === 0x2c) {
      const top = stack[stack.length - 1];
      if (top !== undefined) {
        if (top.keys !== null) top.expectKey = true;
        else top.index++;
      }
      i++;
    } else i++;
  }
  return undefined;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function errnoCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class ManifestSource implements Source {
  private readonly dir: string;
  private readonly store: ObjectStore;
  private readonly log: Logger;
  private readonly onError: ((error: ManifestError) => void) | undefined;
  private readonly onScan: ((result: ScanResult) => void) | undefined;
  private readonly debounceMs: number;
  private readonly writeDebounceMs: number;
  private readonly maxDelayMs: number;
  private readonly resyncIntervalMs: number;
  private readonly settleMs: number;
  private readonly maxFileBytes: number;
  private readonly metrics: {
    scans: Counter<'result'>;
    watchRestarts: Counter;
    errors: Gauge;
    objects: Gauge;
  } | undefined;

  /** What this source has put into the store, by objectKey. */
  private owned = new Map<string, Found>();
  private cache = new Map<string, CachedFile>();
  /** Files whose removals are held, by relative path. */
  private held = new Map<string, HeldFile>();
  private settleTimer: NodeJS.Timeout | undefined;
  private errors: ManifestError[] = [];
  private errorIds = new Set<string>();
  private isSynced = false;
  private started = false;
  private stopped = false;

  /** One non-recursive watch per directory, by real path. */
  private dirWatches = new Map<string, DirWatch>();
  /** Directories whose watch could not be set up (logged once until it can). */
  private unwatchable = new Set<string>();
  private parentWatcher: FSWatcher | undefined;
  /** What DIR resolved to at the latest scan. */
  private rootReal: string | undefined;
  private watchFailures = 0;
  private rewatchTimer: NodeJS.Timeout | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  /** performance.now() of the first event of the pending burst. */
  private firstEventAt = 0;
  /** The pending burst wrote a manifest file in place: wait writeDebounceMs. */
  private burstWrites = false;
  /** performance.now() when the latest scan ended, and how long it took. */
  private lastScanEnd = 0;
  private lastScanMs = 0;
  private resyncTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  /** An explicit rescan() is waiting: the next scan applies removals at once. */
  private finalWanted = false;

  constructor(options: ManifestSourceOptions) {
    this.dir = resolve(options.dir);
    this.store = options.store;
    this.log = options.logger.child({ component: 'manifests', dir: this.dir });
    this.onError = options.onError;
    this.onScan = options.onScan;
    this.debounceMs = options.debounceMs ?? DEFAULT_DEBOUNCE_MS;
    this.writeDebounceMs = options.writeDebounceMs ?? DEFAULT_WRITE_DEBOUNCE_MS;
    this.maxDelayMs = options.maxDelayMs ?? 1000;
    this.resyncIntervalMs = options.resyncIntervalMs ?? 60_000;
    this.settleMs = options.settleMs ?? DEFAULT_SETTLE_MS;
    this.maxFileBytes = options.maxFileBytes ?? MAX_MANIFEST_FILE_BYTES;
    if (options.registry !== undefined) {
      const registers = [options.registry];
      this.metrics = {
        scans: new Counter({ name: 'weir_manifests_scans_total', help: 'Scans of the manifests directory, by result', labelNames: ['result'], registers }),
        watchRestarts: new Counter({ name: 'weir_manifests_watch_restarts_total', help: 'Times the directory watch was re-established', registers }),
        errors: new Gauge({ name: 'weir_manifests_errors', help: 'Manifest errors found by the latest scan', registers }),
        objects: new Gauge({ name: 'weir_manifests_objects', help: 'Objects loaded from the manifests directory', registers }),
      };
    }
  }

  get synced(): boolean {
    return this.isSynced;
  }

  /** Errors found by the latest scan (empty when every manifest loaded). */
  lastErrors(): readonly ManifestError[] {
    return [...this.errors];
  }

  async start(): Promise<void> {
    if (this.started) throw new Error('ManifestSource: start() called twice');
    this.started = true;
    let st;
    try {
      st = await stat(this.dir);
    } catch (err) {
      throw new Error(`manifests directory ${this.dir}: ${errnoCode(err) === 'ENOENT' ? 'does not exist' : errMessage(err)}`, { cause: err });
    }
    if (!st.isDirectory()) throw new Error(`manifests directory ${this.dir}: not a directory`);
    // Watch before the first scan (the scan watches each directory before
    // reading it), so nothing written during it is missed.
    this.watchParent();
    await this.rescan();
    if (!this.isSynced) {
      const first = this.errors[0];
      await this.stop();
      throw new Error(`manifests directory ${this.dir}: first load failed: ${first?.message ?? 'unknown error'}`);
    }
    if (this.resyncIntervalMs > 0) {
      this.resyncTimer = setInterval(() => this.trigger('resync'), this.resyncIntervalMs);
      this.resyncTimer.unref();
    }
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.debounceTimer);
    clearTimeout(this.settleTimer);
    clearTimeout(this.rewatchTimer);
    clearInterval(this.resyncTimer);
    this.parentWatcher?.close();
    this.parentWatcher = undefined;
    this.closeWatches();
    await this.running;
    // A scan that was running could not add a watch (they check `stopped`),
    // but make sure nothing is left open.
    this.closeWatches();
  }

  /**
   * Re-scans now (SIGHUP, tests). Resolves when a scan that started after
   * this call has been applied. The caller vouches that the files are
   * complete: removals are applied at once, held ones included.
   */
  async rescan(): Promise<void> {
    this.finalWanted = true;
    await this.runScans();
  }

  /** Runs a scan, or asks the running one to go round again. */
  private async runScans(): Promise<void> {
    if (this.running !== undefined) {
      this.again = true;
      await this.running;
      // The loop below ran the requested scan before settling.
      return;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          const final = this.finalWanted;
          this.finalWanted = false;
          const started = performance.now();
          try {
            await this.scan(final);
          } finally {
            this.lastScanEnd = performance.now();
            this.lastScanMs = this.lastScanEnd - started;
          }
          // Events during the scan asked for another: a watch-driven scan
          // starts no sooner after the previous one than that one took (an
          // explicit rescan() does not wait).
          if (this.again && !this.finalWanted && !this.stopped && this.lastScanMs >= 1) {
            await new Promise((r) => setTimeout(r, Math.ceil(this.lastScanMs)));
          }
        } while (this.again && !this.stopped);
      } finally {
        this.running = undefined;
      }
    })();
    await this.running;
  }

  // -------------------------------------------------------------------------
  // Watching

  /**
   * Schedules a re-scan after the burst this event belongs to; `writes`: the
   * event says a manifest file was written in place (or does not say what
   * changed), so the burst waits writeDebounceMs instead of debounceMs.
   */
  private trigger(why: string, writes = false): void {
    if (this.stopped) return;
    const now = performance.now();
    if (this.debounceTimer === undefined) {
      this.firstEventAt = now;
      this.burstWrites = false;
    }
    if (writes) this.burstWrites = true;
    clearTimeout(this.debounceTimer);
    // Trailing-edge debounce, but a steady stream of events cannot postpone
    // the scan beyond maxDelayMs; and never sooner after the previous scan
    // than that scan took (a storm on a large directory scans at most about
    // half the time).
    const quiet = this.burstWrites ? Math.max(this.writeDebounceMs, this.debounceMs) : this.debounceMs;
    const due = Math.max(Math.min(now + quiet, this.firstEventAt + this.maxDelayMs), this.lastScanEnd + this.lastScanMs);
    const wait = Math.max(0, Math.ceil(due - now));
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      this.log.debug({ why }, 'rescanning');
      this.runScans().catch((err: unknown) => this.log.error({ err }, 'manifest scan failed'));
    }, wait);
  }

  /** Re-reads the held files when the first of them may have settled. */
  private scheduleSettle(): void {
    clearTimeout(this.settleTimer);
    this.settleTimer = undefined;
    if (this.stopped || this.held.size === 0) return;
    let due = Infinity;
    for (const h of this.held.values()) due = Math.min(due, h.since + this.settleMs);
    this.settleTimer = setTimeout(() => {
      this.settleTimer = undefined;
      this.log.debug('re-reading files whose removals are held');
      this.runScans().catch((err: unknown) => this.log.error({ err }, 'manifest scan failed'));
    }, Math.max(1, Math.ceil(due - performance.now())));
  }

  /** Watches the parent for DIR itself being replaced (a symlink swap, or delete and re-create). */
  private watchParent(): void {
    const name = basename(this.dir);
    try {
      this.parentWatcher = watch(dirname(this.dir), { persistent: false }, (_event, file) => {
        if (file === null || file === name) this.trigger('directory replaced');
      });
      this.parentWatcher.on('error', (err) => {
        this.log.debug({ err }, 'parent directory watch failed; relying on periodic re-scans for directory swaps');
        this.parentWatcher?.close();
        this.parentWatcher = undefined;
      });
    } catch (err) {
      this.log.debug({ err }, 'cannot watch the parent directory; relying on periodic re-scans for directory swaps');
    }
  }

  /**
   * Makes sure the directory at `real` (a real path) is watched by its own
   * non-recursive watch, set up again when the directory there is another one
   * than the one watched (deleted and re-created, renamed over). Called by the
   * scan before it reads the directory, so no change after the read is missed.
   */
  private async watchDir(real: string, pass: WatchPass): Promise<void> {
    if (this.stopped || pass.wanted.has(real)) return;
    pass.wanted.add(real);
    let st;
    try {
      // Identity first, then the watch: if the directory is replaced in
      // between, the next scan sees another inode and watches again (the
      // replacement itself is an event in the parent).
      st = await stat(real);
    } catch {
      pass.wanted.delete(real); // gone (the scan reports it): a watch left on it is closed
      return;
    }
    if (this.stopped) return;
    const current = this.dirWatches.get(real);
    if (current !== undefined) {
      if (!current.stale && current.dev === st.dev && current.ino === st.ino) return;
      current.watcher.close();
      this.dirWatches.delete(real);
      this.metrics?.watchRestarts.inc();
      const replaced = current.dev !== st.dev || current.ino !== st.ino;
      if (replaced && real === this.rootReal) this.log.info({ target: real }, 'manifests directory replaced; watching the new one');
      else this.log.debug({ path: real }, 'directory deleted or moved; watching what is there now');
    }
    try {
      const self = basename(real);
      const watcher: FSWatcher = watch(real, { persistent: true }, (event, file) => {
        // The directory's own deletion or move is reported under its own
        // name (a child of that name looks the same: then the watch is just
        // set up again for nothing).
        const entry = this.dirWatches.get(real);
        if (event === 'rename' && (file === null || file === self) && entry?.watcher === watcher) entry.stale = true;
        // A manifest written in place may be read between its writer's
        // steps: such a burst waits the longer quiet period. Renames,
        // creations and deletions (an atomic save, a ConfigMap swap) and
        // writes to temporaries the scan skips wait the short one.
        this.trigger('change', file === null || (event === 'change' && isManifestName(file)));
      });
      watcher.on('error', (err) => {
        if (this.dirWatches.get(real)?.watcher !== watcher) return;
        watcher.close();
        this.dirWatches.delete(real);
        this.log.warn({ err, path: real }, 'directory watch failed; retrying');
        this.scheduleRewatch();
      });
      this.dirWatches.set(real, { watcher, dev: st.dev, ino: st.ino, stale: false });
      if (this.unwatchable.delete(real)) this.log.info({ path: real }, 'directory watched again');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') {
        pass.wanted.delete(real); // vanished since the stat: an event in its parent says so
        return;
      }
      pass.failed = true;
      if (!this.unwatchable.has(real)) {
        this.unwatchable.add(real);
        this.log.warn({ err, path: real }, 'cannot watch a manifests directory; retrying, and relying on periodic re-scans meanwhile');
      }
    }
  }

  /** Closes the watches of directories the latest scan no longer reads. */
  private pruneWatches(pass: WatchPass): void {
    for (const [path, w] of this.dirWatches) {
      if (pass.wanted.has(path)) continue;
      w.watcher.close();
      this.dirWatches.delete(path);
    }
    for (const path of this.unwatchable) if (!pass.wanted.has(path)) this.unwatchable.delete(path);
    if (pass.failed) this.scheduleRewatch();
    else this.watchFailures = 0;
  }

  private closeWatches(): void {
    for (const w of this.dirWatches.values()) w.watcher.close();
    this.dirWatches.clear();
  }

  /** Logs (and counts) DIR resolving to another directory than at the previous scan. */
  private noteRoot(real: string): void {
    if (this.rootReal !== undefined && this.rootReal !== real) {
      this.metrics?.watchRestarts.inc();
      this.log.info({ target: real }, 'manifests directory replaced; watching the new one');
    }
    this.rootReal = real;
  }

  private scheduleRewatch(): void {
    if (this.stopped || this.rewatchTimer !== undefined) return;
    this.watchFailures++;
    // Exponential backoff with full jitter, 0.5 s to 30 s.
    const ceiling = Math.min(30_000, 500 * 2 ** Math.min(this.watchFailures, 6));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.rewatchTimer = setTimeout(() => {
      this.rewatchTimer = undefined;
      this.metrics?.watchRestarts.inc();
      this.trigger('rewatch');
    }, delay);
    this.rewatchTimer.unref();
  }

  // -------------------------------------------------------------------------
  // Scanning

  /** One scan; `final`: apply removals at once (an explicit rescan()). */
  private async scan(final: boolean): Promise<void> {
    const errors: ManifestError[] = [];
    const pass: WatchPass = { wanted: new Set(), failed: false };
    const walked = await this.walk(errors, pass);
    this.pruneWatches(pass);
    if (walked === undefined) {
      // DIR is gone or unreadable: keep everything (last good wins).
      // Held files are re-read by the next scan that can read DIR.
      this.metrics?.scans.inc({ result: 'failed' });
      this.finish(errors, { files: 0, objects: this.owned.size, upserted: 0, deleted: 0, ignored: 0, retained: this.owned.size, held: 0, errors });
      return;
    }
    const { files, unreadableDirs } = walked;

    const outcomes = new Map<string, FileOutcome>();
    const nextCache = new Map<string, CachedFile>();
    const signatures = new Map<string, string>();
    let ignored = 0;
    for (const rel of files) {
      const outcome = await this.readManifest(rel, nextCache, signatures);
      if (outcome === undefined) continue; // vanished since the walk
      outcomes.set(rel, outcome);
      errors.push(...outcome.errors);
      ignored += outcome.ignored;
    }
    this.cache = nextCache;

    // Candidates per key, in path then document order; retained last good
    // versions join as candidates of the file that supplied them.
    const candidates = new Map<string, Found[]>();
    const add = (f: Found): void => {
      const list = candidates.get(f.key);
      if (list === undefined) candidates.set(f.key, [f]);
      else list.push(f);
    };
    for (const outcome of outcomes.values()) outcome.found.forEach(add);
    const supplies = new Map<string, Set<string>>();
    const supplied = (file: string, outcome: FileOutcome, key: string): boolean => {
      let keys = supplies.get(file);
      if (keys === undefined) supplies.set(file, (keys = new Set(outcome.found.map((f) => f.key))));
      return keys.has(key);
    };
    let retained = 0;
    // What each file no longer supplies (it yields fewer objects, or is gone).
    const dropped = new Map<string, Found[]>();
    for (const [key, prev] of this.owned) {
      const outcome = outcomes.get(prev.file);
      if (outcome !== undefined && supplied(prev.file, outcome, key)) continue;
      const keep = outcome !== undefined ? outcome.keepAll || outcome.keepKeys.has(key) : unreadableDirs.some((d) => prev.file.startsWith(`${d}/`));
      if (keep) {
        add(prev);
        retained++;
        continue;
      }
      const list = dropped.get(prev.file);
      if (list === undefined) dropped.set(prev.file, [prev]);
      else list.push(prev);
    }
    // Held objects stay candidates of their file, so the file keeps them
    // even against a definition elsewhere: a duplicate must not take over
    // because its owner was read half-written.
    const heldKeys = new Set<string>();
    for (const f of this.holdRemovals(dropped, signatures, final)) {
      add(f);
      heldKeys.add(f.key);
    }
    const held = heldKeys.size;

    const desired = new Map<string, Found>();
    for (const [key, list] of candidates) {
      const owner = this.owned.get(key)?.file;
      const winner = list.find((f) => f.file === owner) ?? list[0];
      if (winner === undefined) continue;
      desired.set(key, winner);
      // While its owner's removal is held, a definition elsewhere is not
      // reported: it may be the object moving there. If the owner still
      // holds it once settled, the duplicate is reported then.
      if (heldKeys.has(key)) continue;
      for (const loser of list) {
        if (loser === winner) continue;
        const object = describeObject(loser.object);
        const where = (f: Found): string => `${f.file} (document ${f.document + 1}${f.item !== undefined ? `, items[${f.item}]` : ''})`;
        errors.push({
          reason: 'duplicate',
          file: loser.file,
          document: loser.document + 1,
          ...(loser.item !== undefined ? { item: loser.item } : {}),
          object,
          message: `${where(loser)}: ${object} is also defined in ${where(winner)}; keeping the one from ${winner.file}`,
        });
      }
    }

    const { upserted, deleted } = this.apply(desired);
    this.owned = desired;
    this.isSynced = true;
    this.scheduleSettle();
    this.metrics?.scans.inc({ result: errors.length > 0 ? 'errors' : 'ok' });
    this.finish(errors, { files: files.length, objects: desired.size, upserted, deleted, ignored, retained, held, errors });
  }

  /**
   * Decides, per file, whether the objects it no longer supplies are removed
   * now or held; returns the held ones. A file's removals are applied once
   * it has looked the same (signature) for settleMs, or at once by a final
   * scan. Updates `held`; the caller re-arms the settle timer.
   */
  private holdRemovals(dropped: Map<string, Found[]>, signatures: Map<string, string>, final: boolean): Found[] {
    const now = performance.now();
    const kept: Found[] = [];
    const next = new Map<string, HeldFile>();
    for (const [file, objects] of dropped) {
      const signature = signatures.get(file) ?? 'absent';
      const prev = this.held.get(file);
      let entry: HeldFile | undefined;
      if (final) entry = undefined;
      else if (prev === undefined) {
        entry = { signature, since: now, heldAt: now };
        this.log.info({ file, count: objects.length, settleMs: this.settleMs, present: signature !== 'absent' }, 'removals held until the file settles');
      } else if (prev.signature !== signature) entry = { ...prev, signature, since: now };
      else if (now - prev.since < this.settleMs) entry = prev;
      if (entry !== undefined) {
        next.set(file, entry);
        kept.push(...objects);
      } else if (prev !== undefined) {
        this.log.info({ file, count: objects.length, heldMs: Math.round(now - prev.heldAt), present: signature !== 'absent' }, 'held removals applied: the file settled without those objects');
      }
    }
    for (const file of this.held.keys()) {
      if (!dropped.has(file)) this.log.info({ file }, 'held removals withdrawn: the file no longer drops those objects');
    }
    this.held = next;
    return kept;
  }

  private apply(desired: Map<string, Found>): { upserted: number; deleted: number } {
    let upserted = 0;
    let deleted = 0;
    const ups = [...desired.values()].sort((a, b) => kindRank(a.object.kind) - kindRank(b.object.kind));
    for (const f of ups) {
      try {
        if (this.store.upsert(f.object)) upserted++;
      } catch (err) {
        // A store listener threw; the store itself is updated.
        upserted++;
        this.log.error({ err, object: describeObject(f.object) }, 'store listener failed on upsert');
      }
    }
    const gone = [...this.owned.values()].filter((f) => !desired.has(f.key)).sort((a, b) => kindRank(b.object.kind) - kindRank(a.object.kind));
    for (const f of gone) {
      const m = f.object.metadata;
      try {
        if (this.store.delete(f.object.kind, m.namespace, m.name)) deleted++;
      } catch (err) {
        deleted++;
        this.log.error({ err, object: describeObject(f.object) }, 'store listener failed on delete');
      }
    }
    return { upserted, deleted };
  }

  private finish(errors: ManifestError[], result: ScanResult): void {
    const ids = new Set(errors.map(errorId));
    for (const e of errors) {
      if (this.errorIds.has(errorId(e))) continue;
      this.log.error(
        { reason: e.reason, file: e.file, document: e.document, item: e.item, object: e.object, field: e.field },
        e.message,
      );
      try {
        this.onError?.(e);
      } catch (err) {
        this.log.error({ err }, 'onError callback failed');
      }
    }
    for (const e of this.errors) {
      if (!ids.has(errorId(e))) this.log.info({ reason: e.reason, file: e.file, object: e.object }, 'manifest error resolved');
    }
    this.errors = errors;
    this.errorIds = ids;
    this.metrics?.errors.set(errors.length);
    this.metrics?.objects.set(result.objects);
    this.log.info(
      { files: result.files, objects: result.objects, upserted: result.upserted, deleted: result.deleted, ignored: result.ignored, retained: result.retained, held: result.held, errors: errors.length },
      'manifests scanned',
    );
    try {
      this.onScan?.(result);
    } catch (err) {
      this.log.error({ err }, 'onScan callback failed');
    }
  }

  /**
   * Lists manifest files (relative paths, sorted), watching each directory
   * before reading it and the directory each symlinked manifest resolves
   * into. Returns undefined when DIR itself cannot be read; unreadable
   * subdirectories are reported and listed so what they supplied is kept.
   */
  private async walk(errors: ManifestError[], pass: WatchPass): Promise<{ files: string[]; unreadableDirs: string[] } | undefined> {
    const files: string[] = [];
    const unreadableDirs: string[] = [];
    const visited = new Set<string>();
    const visit = async (rel: string): Promise<boolean> => {
      const abs = rel === '' ? this.dir : join(this.dir, rel);
      let entries;
      try {
        const real = await realpath(abs);
        if (visited.has(real)) return true; // a symlink loop, or a directory linked twice
        visited.add(real);
        if (rel === '') this.noteRoot(real);
        await this.watchDir(real, pass);
        entries = await readdir(abs, { withFileTypes: true });
      } catch (err) {
        const what = rel === '' ? 'the manifests directory' : `directory ${rel}`;
        errors.push({
          reason: rel === '' ? 'directory' : 'read',
          file: rel,
          message: `${rel === '' ? this.dir : rel}: cannot read ${what} (${errnoCode(err) ?? errMessage(err)}); keeping the objects loaded from it`,
        });
        if (rel !== '') unreadableDirs.push(rel);
        return false;
      }
      entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      for (const e of entries) {
        if (isIgnoredName(e.name)) continue;
        const childRel = rel === '' ? e.name : `${rel}/${e.name}`;
        let isDir = e.isDirectory();
        let isFile = e.isFile();
        const isLink = e.isSymbolicLink();
        if (isLink) {
          try {
            const st = await stat(join(this.dir, childRel));
            isDir = st.isDirectory();
            isFile = st.isFile();
          } catch {
            continue; // dangling link: nothing to read
          }
        }
        if (isDir) await visit(childRel);
        else if (isFile && isManifestName(e.name)) {
          files.push(childRel);
          // A file behind a link (a ConfigMap's `name -> ..data/name`) can be
          // written where it really is: watch that directory too.
          if (isLink) {
            try {
              await this.watchDir(dirname(await realpath(join(this.dir, childRel))), pass);
            } catch {
              // vanished since the stat: the read skips it
            }
          }
        }
      }
      return true;
    };
    const ok = await visit('');
    return ok ? { files, unreadableDirs } : undefined;
  }

  /**
   * Reads and parses one file (unchanged content from the cache), noting in
   * `signatures` what it looked like: inode, size, mtime and content hash.
   */
  private async readManifest(rel: string, nextCache: Map<string, CachedFile>, signatures: Map<string, string>): Promise<FileOutcome | undefined> {
    const abs = join(this.dir, rel);
    const fail = (reason: ManifestErrorReason, message: string): FileOutcome => ({
      found: [],
      errors: [{ reason, file: rel, message }],
      keepAll: true,
      keepKeys: new Set(),
      ignored: 0,
    });
    let buf: Buffer;
    let st;
    try {
      st = await stat(abs);
      if (!st.isFile()) return undefined;
      if (st.size > this.maxFileBytes) {
        return fail('too-large', `${rel}: ${formatBytes(st.size)} is over the ${formatBytes(this.maxFileBytes)} limit for a manifest file; split it into smaller files (the objects loaded from it before are kept)`);
      }
      buf = await readFile(abs);
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined;
      return fail('read', `${rel}: cannot read (${errnoCode(err) ?? errMessage(err)}); the objects loaded from it before are kept`);
    }
    if (buf.length > this.maxFileBytes) {
      return fail('too-large', `${rel}: ${formatBytes(buf.length)} is over the ${formatBytes(this.maxFileBytes)} limit for a manifest file; split it into smaller files (the objects loaded from it before are kept)`);
    }
    const hash = createHash('sha256').update(buf).digest('hex');
    signatures.set(rel, `${st.ino}:${st.size}:${st.mtimeMs}:${hash}`);
    const cached = this.cache.get(rel);
    if (cached !== undefined && cached.hash === hash) {
      nextCache.set(rel, cached);
      return cached.outcome;
    }
    const outcome = this.parseManifest(rel, buf.toString('utf8').replace(/^\uFEFF/, ''));
    nextCache.set(rel, { hash, outcome });
    return outcome;
  }

  private parseManifest(rel: string, text: string): FileOutcome {
    const outcome: FileOutcome = { found: [], errors: [], keepKeys: new Set(), keepAll: false, ignored: 0 };
    const docs: { index: number; value: unknown }[] = [];
    if (rel.endsWith('.json')) {
      try {
        docs.push({ index: 0, value: JSON.parse(text) as unknown });
      } catch (err) {
        outcome.errors.push({ reason: 'parse', file: rel, message: `${rel}: invalid JSON: ${errMessage(err)}; the objects loaded from it before are kept` });
        outcome.keepAll = true;
      }
      const last = docs[0];
      if (last !== undefined) {
        // JSON.parse keeps the last of duplicate keys silently; refuse them
        // (as kubectl's strict validation does), and over-deep nesting.
        const problem = jsonTreeProblem(text);
        if (problem !== undefined) {
          docs.length = 0;
          this.refuseTree(outcome, rel, 0, last.value, problem);
        }
      }
    } else {
      const over = yamlOverLimits(text);
      if (over !== undefined) {
        outcome.errors.push({ reason: 'too-large', file: rel, message: `${rel}: ${over}; split it into smaller files (the objects loaded from it before are kept)` });
        outcome.keepAll = true;
        return outcome;
      }
      this.parseYaml(rel, text, outcome, docs);
    }
    for (const { index, value } of docs) {
      if (value === null || value === undefined) continue; // an empty document (`---` with nothing after it)
      if (isRecord(value) && value['kind'] === 'List' && value['items'] !== undefined && value['items'] !== null && !Array.isArray(value['items'])) {
        outcome.errors.push({ reason: 'invalid', file: rel, document: index + 1, field: 'items', message: `${rel} (document ${index + 1}): List: items: not a list` });
        outcome.keepAll = true;
        continue;
      }
      const list = this.listItems(value);
      if (list === undefined) this.take(outcome, rel, value, index, undefined);
      else list.forEach((item, i) => this.take(outcome, rel, item, index, i));
    }
    return outcome;
  }

  /**
   * Parses the YAML documents of a file within MANIFEST_LIMITS (the token
   * count was checked before). Duplicate keys are found here, in one pass
   * with the nesting depth (the yaml package's own uniqueKeys check is
   * quadratic in the keys of a mapping: 250,000 keys did not finish in 15
   * minutes).
   */
  private parseYaml(rel: string, text: string, outcome: FileOutcome, docs: { index: number; value: unknown }[]): void {
    const lines = new LineCounter();
    const at = (offset: number): string => {
      const p = lines.linePos(offset);
      return `line ${p.line}, column ${p.col}`;
    };
    // Every YAML error is an Error: without stack traces a file full of
    // them costs a sixth of the time and memory. Restored before returning.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      let index = 0;
      for (const doc of new Composer({ uniqueKeys: false }).compose(new Parser(lines.addNewLine).parse(text), true, text.length)) {
        if (index >= MANIFEST_LIMITS.MAX_YAML_DOCUMENTS) {
          outcome.errors.push({
            reason: 'too-large',
            file: rel,
            message: `${rel}: more than ${MANIFEST_LIMITS.MAX_YAML_DOCUMENTS} YAML documents (limit MAX_YAML_DOCUMENTS); split it into smaller files (the objects loaded from it before are kept)`,
          });
          outcome.keepAll = true;
          docs.length = 0;
          return;
        }
        const i = index++;
        const where = `${rel} (document ${i + 1})`;
        const first = doc.errors[0];
        if (first !== undefined) {
          // The composer catches its own stack overflow on very deep nesting.
          const msg = first.code === 'RESOURCE_EXHAUSTION' ? `nested too deeply (limit MAX_NESTING_DEPTH, ${MANIFEST_LIMITS.MAX_NESTING_DEPTH} levels)` : first.message;
          outcome.errors.push({ reason: 'parse', file: rel, document: i + 1, message: `${where}: invalid YAML: ${msg} at ${at(first.pos[0])}; the objects loaded from this file before are kept` });
          outcome.keepAll = true;
          continue;
        }
        const problem = yamlTreeProblem(doc, at);
        if (problem !== undefined) {
          this.refuseTree(outcome, rel, i, yamlIdentity(doc), problem);
          continue;
        }
        try {
          docs.push({ index: i, value: doc.toJS({ maxAliasCount: MANIFEST_LIMITS.MAX_YAML_ALIASES }) as unknown });
        } catch (err) {
          const msg = err instanceof RangeError ? `nested too deeply through aliases (limit MAX_NESTING_DEPTH, ${MANIFEST_LIMITS.MAX_NESTING_DEPTH} levels)` : errMessage(err);
          const hint = /alias count/i.test(msg) ? ` (limit MAX_YAML_ALIASES, ${MANIFEST_LIMITS.MAX_YAML_ALIASES})` : '';
          outcome.errors.push({ reason: 'parse', file: rel, document: i + 1, message: `${where}: invalid YAML: ${msg}${hint}; the objects loaded from this file before are kept` });
          outcome.keepAll = true;
        }
      }
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
  }

  /**
   * A document that parses but holds a duplicate key or nests too deeply:
   * refused like an object that fails validation (the last good version of
   * that object is kept, the file's other documents load), naming the
   * object when its kind and name can be read.
   */
  private refuseTree(outcome: FileOutcome, rel: string, index: number, raw: unknown, problem: TreeProblem): void {
    const id = identify(raw);
    const e = new ValidationError({ file: rel, index }, id, [problem]);
    outcome.errors.push({ reason: 'invalid', file: rel, document: index + 1, ...(e.object !== undefined ? { object: e.object } : {}), field: e.field, message: e.message, validation: e });
    if (e.key !== undefined && !isListKind(raw)) outcome.keepKeys.add(e.key);
    else outcome.keepAll = true;
  }

  /**
   * The items of a `List` (or of a typed list such as `PodList`, whose items
   * may omit apiVersion and kind); undefined when the value is not a list.
   */
  private listItems(value: unknown): unknown[] | undefined {
    if (!isRecord(value)) return undefined;
    const kind = value['kind'];
    const items = value['items'];
    if (kind === 'List') return Array.isArray(items) ? items : [];
    if (typeof kind !== 'string' || !kind.endsWith('List') || !Array.isArray(items) || value['spec'] !== undefined) return undefined;
    const itemKind = kind.slice(0, -'List'.length);
    const apiVersion = value['apiVersion'];
    return items.map((item: unknown) => (isRecord(item) && item['kind'] === undefined ? { apiVersion, kind: itemKind, ...item } : item));
  }

  private take(outcome: FileOutcome, rel: string, raw: unknown, index: number, item: number | undefined): void {
    const where = item === undefined ? { file: rel, index } : { file: rel, index, item };
    const r = validateObject(raw, where);
    if (r.ok) {
      outcome.found.push({ key: objectKey(r.object), object: r.object, file: rel, document: index, ...(item !== undefined ? { item } : {}) });
      return;
    }
    if (r.ignored) {
      outcome.ignored++;
      this.log.debug({ file: rel, document: index + 1, apiVersion: r.apiVersion, kind: r.kind }, 'ignoring a kind weir does not read');
      return;
    }
    const e = r.error;
    outcome.errors.push({
      reason: 'invalid',
      file: rel,
      document: index + 1,
      ...(item !== undefined ? { item } : {}),
      ...(e.object !== undefined ? { object: e.object } : {}),
      field: e.field,
      message: e.message,
      validation: e,
    });
    if (e.key !== undefined) outcome.keepKeys.add(e.key);
    else outcome.keepAll = true; // cannot tell which object it was
  }
}
