// The agent's structured logger: pino JSON lines on stdout. Components get
// a child logger with a `component` binding; nothing uses a global logger.
//
// Two things here are about cost, because the agent logs every violation
// (tens of thousands of lines a second under a flood):
//   - Redaction. pino's `redact` with wildcard paths (`*.token`) runs its
//     redactor on every value of every line: it took two thirds of a
//     violation line's CPU. Instead, formatters.log and formatters.bindings
//     look for credential keys (redactSecrets below) and copy only the objects
//     that hold one; a line of plain values, like a violation, is left alone
//     after a glance at each value's type. The guarantee is wider than the old
//     paths: any depth (up to MAX_DEPTH), any case, bindings included.
//   - Writes. Lines are collected and handed to the destination once per
//     turn of the event loop (a microtask): one write per ring-buffer batch
//     instead of one per line, and SonicBoom's per-write bookkeeping paid once.
//     Lines still pending when the process exits are written synchronously.
import { tracingChannel } from 'node:diagnostics_channel';
import { writeSync } from 'node:fs';
import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export const REDACTED = '[redacted]';
/** Keys whose values never reach a log line, compared case-insensitively (ASCII). */
const SECRET_KEYS = ['token', 'bearertoken', 'authorization', 'password'];
/** Bit n set: some secret key is n characters long (all are shorter than 32). */
const SECRET_LENGTHS = SECRET_KEYS.reduce((m, w) => m | (1 << w.length), 0);
const SECRET_FIRST = SECRET_KEYS.map((w) => w.charCodeAt(0));
/** How deep redactSecrets looks (a log object, a field, its fields...); deeper objects are logged as they are. */
const MAX_DEPTH = 6;

/**
 * k equals one of SECRET_KEYS but for ASCII case. Without toLowerCase(), which
 * made a string per key of every line. `| 0x20` lower-cases A-Z and maps no
 * other character onto a lower-case letter.
 */
function isSecretKey(k: string): boolean {
  // Most keys are out at the length or the first letter (t, b, a, p).
  const n = k.length;
  if (n >= 32 || ((SECRET_LENGTHS >>> n) & 1) === 0) return false;
  if (!SECRET_FIRST.includes(k.charCodeAt(0) | 0x20)) return false;
  next: for (const w of SECRET_KEYS) {
    if (k.length !== w.length) continue;
    for (let i = 0; i < w.length; i++) if ((k.charCodeAt(i) | 0x20) !== w.charCodeAt(i)) continue next;
    return true;
  }
  return false;
}

/** Objects redactSecrets looks into: not byte arrays (they have no keys worth a walk and can be large) or other binary or collection types JSON does not show. */
function walkable(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !ArrayBuffer.isView(v) && !(v instanceof ArrayBuffer) && !(v instanceof Map) && !(v instanceof Set) && !(v instanceof Date);
}

/** A copy of o with the same prototype and own properties (an Error keeps its class, message and stack), `replace` overriding. */
function copyWith(o: Record<string, unknown>, replace: Map<string, unknown>): Record<string, unknown> {
  if (Array.isArray(o)) {
    const a: unknown[] = o.slice();
    for (const [k, v] of replace) a[Number(k)] = v;
    return a as unknown as Record<string, unknown>;
  }
  const c = Object.create(Object.getPrototypeOf(o) as object | null) as Record<string, unknown>;
  // Values read from `o` itself: V8's Error#stack is an accessor that answers only for the error it belongs to.
  for (const [k, d] of Object.entries(Object.getOwnPropertyDescriptors(o))) {
    const value = replace.has(k) ? replace.get(k) : o[k];
    Object.defineProperty(c, k, { value, enumerable: d.enumerable ?? false, writable: true, configurable: true });
  }
  return c;
}

/**
 * `o` with the value of every credential key (token, bearerToken,
 * authorization, password, in any case) replaced by "[redacted]", at any
 * depth up to MAX_DEPTH, in objects, arrays and errors. Returns `o` itself
 * when it holds none; otherwise copies the objects on the way to each one, so
 * the caller's objects are never changed.
 */
export function redactSecrets<T>(o: T, depth = 0): T {
  if (!walkable(o) || depth >= MAX_DEPTH) return o;
  let replace: Map<string, unknown> | null = null;
  // Object.keys, not for-in: every log object of every shape comes through
  // here, and V8's optimized for-in deoptimizes on each new shape (thousands
  // of deopt-recompile rounds a minute under a violation flood). Own keys
  // only: inherited ones are not written by pino (nor by JSON.stringify).
  const keys = Object.keys(o);
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i] as string;
    const v = o[k];
    let r: unknown = v;
    if (isSecretKey(k)) {
      if (v !== undefined) r = REDACTED;
    } else if (typeof v === 'object' && v !== null) {
      r = redactSecrets(v, depth + 1);
    }
    if (r !== v) (replace ??= new Map()).set(k, r);
  }
  return replace ? (copyWith(o, replace) as T) : o;
}

interface Flushable {
  flush?: (cb?: (err?: Error) => void) => void;
  flushSync?: () => void;
  fd?: number;
}

/**
 * Collects lines and writes them to `target` once per microtask checkpoint.
 * pino calls write() per line and flush() on logger.flush().
 */
class BatchingDestination implements DestinationStream {
  private pending: string[] = [];
  private scheduled = false;
  private readonly drainNow = (): void => this.drain();

  constructor(private readonly target: NodeJS.WritableStream & Flushable) {
    if (exitFlush.size >= 64) for (const r of exitFlush) if (!r.deref()) exitFlush.delete(r);
    exitFlush.add(new WeakRef(this));
  }

  write(line: string): void {
    this.pending.push(line);
    if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.drainNow);
    }
  }

  drain(): void {
    this.scheduled = false;
    if (this.pending.length === 0) return;
    const text = this.pending.length === 1 ? (this.pending[0] as string) : this.pending.join('');
    this.pending = [];
    this.target.write(text);
  }

  flush(cb?: (err?: Error) => void): void {
    this.drain();
    if (typeof this.target.flush === 'function') this.target.flush(cb);
    else cb?.();
  }

  /** At exit: what is pending goes out synchronously (the event loop will not run again). */
  flushAtExit(): void {
    if (this.pending.length === 0) return;
    const text = this.pending.join('');
    this.pending = [];
    try {
      this.target.write(text);
      this.target.flushSync?.();
    } catch {
      // The destination was ended already (its own exit hook ran first): write to its fd directly.
      if (typeof this.target.fd === 'number' && this.target.fd >= 0) {
        try {
          writeSync(this.target.fd, text);
        } catch {
          // nothing more can be done while exiting
        }
      }
    }
  }
}

const exitFlush = new Set<WeakRef<BatchingDestination>>();
// Before pino's own exit hook (which flushes and ends its SonicBoom), so that our lines are in it first.
process.prependListener('exit', () => {
  for (const r of exitFlush) r.deref()?.flushAtExit();
});

/** pino.stdTimeFunctions.isoTime, its string made once per millisecond (a batch of lines shares a few). */
function isoTimeCached(): () => string {
  let lastMs = Number.NaN;
  let last = '';
  return () => {
    const t = Date.now();
    if (t !== lastMs) {
      lastMs = t;
      last = `,"time":"${new Date(t).toISOString()}"`;
    }
    return last;
  };
}

/** formatters.log of createLogger's loggers (logEvent() knows what it does). */
const logFormatter = (o: Record<string, unknown>): Record<string, unknown> => redactSecrets(o);

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  if (!LOG_LEVELS.includes(level as LevelWithSilent)) {
    throw new Error(`invalid log level ${JSON.stringify(level)} (expected one of ${LOG_LEVELS.join(', ')})`);
  }
  const opts = {
    level,
    base: { app: 'weir' },
    timestamp: isoTimeCached(),
    formatters: {
      level: (label: string) => ({ level: label }),
      // Never let a credential reach a log line (see the top of this file).
      bindings: (b: Record<string, unknown>) => redactSecrets(b),
      log: logFormatter,
    },
  };
  // stdout as pino writes it by default: SonicBoom, asynchronous.
  const target = (destination ?? pino.destination({ dest: process.stdout.fd || 1, sync: false })) as NodeJS.WritableStream & Flushable;
  const root = pino(opts, new BatchingDestination(target));
  // pino formats only the root's bindings (formatters.bindings); a child's
  // bindings are redacted here, on their way in. Children inherit these.
  const protoChild = root.child as unknown as ProtoChild;
  const protoSetBindings = root.setBindings as unknown as (this: Logger, b: Record<string, unknown>) => void;
  Object.defineProperty(root, 'child', {
    value(this: Logger, bindings: Record<string, unknown>, options?: object) {
      return protoChild.call(this, redactSecrets(bindings), options);
    },
  });
  Object.defineProperty(root, 'setBindings', {
    value(this: Logger, bindings: Record<string, unknown>) {
      protoSetBindings.call(this, redactSecrets(bindings));
    },
  });
  return root;
}

type ProtoChild = (this: Logger, bindings: Record<string, unknown>, options?: object) => Logger;

// logEvent(): the line pino would write, without pino's per-character loops.
//
// pino (lib/tools.js _asJson) writes a line as
//   lsCache[level] + time() + chindings + (',' + asString(key) + ':' + value)* + ',"msg":' + asString(msg) + end
// where asString() escapes `"` and `\` in strings of up to 100 characters
// with a JavaScript loop over each character (JSON.stringify when one is a
// control character, and for longer strings). That loop over every value of
// every violation line was most of the line's cost. logEvent() writes the
// same bytes with one regular expression test per value, for the lines it
// can vouch for: a logger made by createLogger with nothing pino would call
// on the way (no mixin, hooks, message prefix, nested key, redact paths,
// serializer for a key, metadata stream, pino_asJson subscriber), and fields
// of a plain object whose keys are identifiers that need no escaping, no
// credential key (so redactSecrets leaves the object as it is) and none pino
// treats apart (`err`, an HTTP request's `method`/`headers`/`socket`), whose
// values are strings, numbers, booleans, null or undefined. Anything else
// goes through pino itself. test/unit/logger-event.test.ts compares the two.

const sym = pino.symbols as unknown as Record<string, symbol>;
type PinoInternals = Record<symbol, unknown> & Logger;
const asJsonChannel = tracingChannel('pino_asJson');
/** The internals read below: a pino without one of them is not the pino this was written against (its lines go through pino). */
const PINO_SYMBOLS_USED = [
  'hooksSym', 'formattersSym', 'stringifiersSym', 'mixinSym', 'msgPrefixSym', 'nestedKeySym', 'messageKeySym', 'errorKeySym',
  'endSym', 'timeSym', 'serializersSym', 'streamSym', 'needsMetadataGsym', 'lsCacheSym', 'chindingsSym',
];
/** Keys that would make pino do something other than write `,"key":value`. */
const PINO_SPECIAL_KEYS = new Set(['err', 'method', 'headers', 'socket', 'setHeader', 'msg']);
const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
/** What pino's asString() escapes or hands to JSON.stringify: `"`, `\`, control characters. */
const NEEDS_ESCAPE = /["\\\u0000-\u001f]/;

/** pino's asString() (lib/tools.js), for the strings NEEDS_ESCAPE finds something in. */
function pinoAsString(str: string): string {
  let result = '';
  let last = 0;
  let found = false;
  let point = 255;
  const l = str.length;
  if (l > 100) return JSON.stringify(str);
  for (let i = 0; i < l && point >= 32; i++) {
    point = str.charCodeAt(i);
    if (point === 34 || point === 92) {
      result += `${str.slice(last, i)}\\`;
      last = i;
      found = true;
    }
  }
  if (!found) result = str;
  else result += str.slice(last);
  return point < 32 ? JSON.stringify(str) : `"${result}"`;
}

/** pino's asString() of a string: the same bytes. */
function jsonString(s: string): string {
  if (s.length > 100) return JSON.stringify(s);
  return NEEDS_ESCAPE.test(s) ? pinoAsString(s) : `"${s}"`;
}

/**
 * Per logger: null when pino would do more than write the fields (see above);
 * otherwise the `,"key":` of each key seen so far, or null for a key that
 * sends the line through pino.
 */
const fastLoggers = new WeakMap<Logger, Map<string, string | null> | null>();

function keyPrefixes(log: Logger): Map<string, string | null> | null {
  let m = fastLoggers.get(log);
  if (m !== undefined) return m;
  const l = log as PinoInternals;
  const hooks = l[sym.hooksSym as symbol] as { logMethod?: unknown; streamWrite?: unknown } | undefined;
  const formatters = l[sym.formattersSym as symbol] as { log?: unknown } | undefined;
  const stringifiers = l[sym.stringifiersSym as symbol] as object | undefined;
  const ok =
    PINO_SYMBOLS_USED.every((n) => typeof sym[n] === 'symbol') &&
    !l[sym.mixinSym as symbol] &&
    !hooks?.logMethod &&
    !hooks?.streamWrite &&
    l[sym.msgPrefixSym as symbol] === undefined &&
    !l[sym.nestedKeySym as symbol] &&
    l[sym.messageKeySym as symbol] === 'msg' &&
    l[sym.errorKeySym as symbol] === 'err' &&
    formatters?.log === logFormatter &&
    stringifiers !== undefined &&
    Reflect.ownKeys(stringifiers).length === 0 &&
    typeof l[sym.endSym as symbol] === 'string' &&
    typeof l[sym.timeSym as symbol] === 'function';
  m = ok ? new Map() : null;
  fastLoggers.set(log, m);
  return m;
}

function keyPrefix(log: Logger, prefixes: Map<string, string | null>, k: string): string | null {
  let p = prefixes.get(k);
  if (p !== undefined) return p;
  const serializers = (log as PinoInternals)[sym.serializersSym as symbol] as Record<string, unknown> | undefined;
  const plain = IDENTIFIER.test(k) && !isSecretKey(k) && !PINO_SPECIAL_KEYS.has(k) && !serializers?.[k];
  p = plain ? `,"${k}":` : null;
  if (prefixes.size < 256) prefixes.set(k, p);
  return p;
}

function noEnumerable(o: object): boolean {
  for (const _ in o) return false;
  return true;
}

/**
 * Logs `{ event, ...fields }` with `msg` at `level`: exactly the line
 * `log[level]({ event, ...fields }, msg)` writes, written faster when the
 * logger and the fields allow it (see above); otherwise that very call.
 * `msg` is written as it is (no printf-style arguments).
 */
export function logEvent(log: Logger, level: 'info' | 'warn' | 'error', event: string, fields: object, msg: string): void {
  const line = eventLine(log, level, event, fields, msg);
  if (line === null) {
    log[level]({ event, ...fields }, msg);
    return;
  }
  if (line !== '') ((log as PinoInternals)[sym.streamSym as symbol] as DestinationStream).write(line);
}

/** The line, '' when the level is off, null when pino must write it. */
function eventLine(log: Logger, level: 'info' | 'warn' | 'error', event: string, fields: object, msg: string): string | null {
  const prefixes = keyPrefixes(log);
  if (prefixes === null || asJsonChannel.hasSubscribers) return null;
  if (!log.isLevelEnabled(level)) return '';
  const l = log as PinoInternals;
  const stream = l[sym.streamSym as symbol] as Record<symbol, unknown> | undefined;
  if (!stream || stream[sym.needsMetadataGsym as symbol] === true) return null;
  if (Object.getPrototypeOf(fields) !== Object.prototype || !noEnumerable(Object.prototype)) return null;
  const f = fields as Record<string, unknown>;
  let props = `,"event":${jsonString(event)}`;
  for (const k in f) {
    const v = f[k];
    const p = keyPrefix(log, prefixes, k);
    if (p === null || k === 'event') return null;
    switch (typeof v) {
      case 'string':
        props += p + jsonString(v);
        break;
      case 'number':
        props += p + (Number.isFinite(v) ? String(v) : 'null');
        break;
      case 'boolean':
        props += p + (v ? 'true' : 'false');
        break;
      case 'undefined':
        break;
      default:
        if (v !== null) return null;
        props += `${p}null`;
    }
  }
  const num = (log.levels.values as Record<string, number>)[level] as number;
  const lsCache = l[sym.lsCacheSym as symbol] as Record<number, string>;
  const time = (l[sym.timeSym as symbol] as () => string)();
  return `${lsCache[num]}${time}${l[sym.chindingsSym as symbol] as string}${props},"msg":${jsonString(msg)}${l[sym.endSym as symbol] as string}`;
}
