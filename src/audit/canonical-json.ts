// Canonical JSON for the audit chain: one byte string per value, so a record
// hashes the same wherever it is re-serialized.
//
// The rules are RFC 8785 (JCS) restricted to the values the audit log holds:
//   - objects: members sorted by key, comparing UTF-16 code units (JavaScript's
//     default string order, which is what RFC 8785 specifies); members whose
//     value is `undefined` are left out, as JSON.stringify does;
//   - no whitespace anywhere;
//   - strings: JSON.stringify's escaping (\" \\ \b \f \n \r \t, \u00XX for the
//     other control characters, everything else literal UTF-8), which is
//     RFC 8785's; strings with lone surrogates are refused (I-JSON);
//   - numbers: finite only, written as ECMAScript writes them (JSON.stringify),
//     which is RFC 8785's number form; -0 is written 0;
//   - true, false, null as themselves; arrays in order.
// Anything else (NaN, Infinity, bigint, functions, symbols, Dates, Maps, class
// instances, undefined inside an array) is a TypeError: the caller converts
// first, so the log never holds a value that would not read back the same.

import { hash } from 'node:crypto';

/** The `prev` of the first record of a chain. */
export const ZERO_HASH = '0'.repeat(64);

/** No lone surrogate (String.prototype.isWellFormed, ES2024; the same test as a lone-surrogate regex, done natively). */
const wellFormed = (s: string): boolean => (s as string & { isWellFormed(): boolean }).isWellFormed();

/**
 * Where a value cannot be written: the path is put together only when this
 * is thrown (building "$.a.b" for every member took a third of the time).
 */
class Refused {
  readonly path: (string | number)[] = [];
  constructor(readonly message: (path: string) => string) {}
}

function pathText(segments: (string | number)[]): string {
  let p = '$';
  for (const s of segments) p += typeof s === 'number' ? `[${s}]` : `.${s}`;
  return p;
}

export function canonicalJson(value: unknown): string {
  try {
    return write(value);
  } catch (err) {
    if (err instanceof Refused) throw new TypeError(`canonical JSON: ${err.message(pathText(err.path.reverse()))}`);
    throw err;
  }
}

function write(v: unknown): string {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(v)) throw new Refused((p) => `${p} is ${v}, not a finite number`);
      return JSON.stringify(v);
    case 'string':
      if (!wellFormed(v)) throw new Refused((p) => `${p} holds a lone surrogate`);
      return JSON.stringify(v);
    case 'object': {
      if (Array.isArray(v)) {
        let out = '[';
        for (let i = 0; i < v.length; i++) {
          const x: unknown = v[i];
          try {
            if (x === undefined) throw new Refused((p) => `${p} is undefined`);
            out += (i === 0 ? '' : ',') + write(x);
          } catch (err) {
            if (err instanceof Refused) err.path.push(i);
            throw err;
          }
        }
        return `${out}]`;
      }
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw new Refused((p) => `${p} is a ${(v as object).constructor?.name ?? 'non-plain object'}, not a plain object`);
      }
      const o = v as Record<string, unknown>;
      let out = '{';
      let first = true;
      for (const k of Object.keys(o).sort()) {
        const x = o[k];
        if (x === undefined) continue;
        if (!wellFormed(k)) throw new Refused((p) => `a key of ${p} holds a lone surrogate`);
        try {
          out += `${first ? '' : ','}${JSON.stringify(k)}:${write(x)}`;
        } catch (err) {
          if (err instanceof Refused) err.path.push(k);
          throw err;
        }
        first = false;
      }
      return `${out}}`;
    }
    default:
      throw new Refused((p) => `${p} is a ${typeof v}, which JSON cannot hold`);
  }
}

/**
 * Canonical JSON for objects of one known shape (the audit log's violation
 * records: one a line, thousands a second). The members are copied, in the
 * sorted order fixed once, into a new object that JSON.stringify writes in one
 * native call: no per-object key sort, no per-member call. Gives exactly
 * canonicalJson()'s bytes, or null when the object is not of the shape (a
 * member it does not know, a value that is not a string without lone
 * surrogates, a finite number, a boolean or null): the caller then uses
 * canonicalJson(), which also says what is wrong. Members that are absent or
 * undefined are left out, as canonicalJson() leaves them out.
 *
 * `pick`, if given, makes that copy with an object literal whose members are
 * the keys in sorted order: one allocation of an object of a fixed shape,
 * which JSON.stringify writes on its fast path. (Added one by one, 19
 * members made an object V8 keeps as a dictionary, written a good deal
 * slower.) The constructor checks that it copies exactly the keys, in
 * order.
 */
export class FixedShapeJson {
  private readonly keys: string[];
  private readonly pick: (o: Record<string, unknown>) => Record<string, unknown>;

  constructor(keys: readonly string[], pick?: (o: Record<string, unknown>) => Record<string, unknown>) {
    // Object.keys(o).sort() in canonicalJson: UTF-16 code unit order. JSON.stringify
    // writes an object's members in insertion order, except integer-like keys
    // (which come first, in numeric order): not for this class.
    this.keys = [...new Set(keys)].sort();
    const index = this.keys.find((k) => /^(?:0|[1-9][0-9]*)$/.test(k));
    if (index !== undefined) throw new TypeError(`FixedShapeJson: key ${JSON.stringify(index)} is an array index; JSON.stringify would not keep it in sorted order`);
    if (pick) {
      const probe = Object.fromEntries(this.keys.map((k) => [k, k]));
      const got = pick(probe);
      const members = Object.entries(got);
      if (members.length !== this.keys.length || members.some(([k, v], i) => k !== this.keys[i] || v !== k)) {
        throw new TypeError(`FixedShapeJson: pick copies ${JSON.stringify(members)}, not the keys ${JSON.stringify(this.keys)} in order`);
      }
      this.pick = pick;
    } else {
      const sortedKeys = this.keys;
      this.pick = (r) => {
        const sorted: Record<string, unknown> = {};
        for (const k of sortedKeys) sorted[k] = r[k];
        return sorted;
      };
    }
  }

  write(o: object): string | null {
    const proto = Object.getPrototypeOf(o) as unknown;
    if ((proto !== Object.prototype && proto !== null) || Array.isArray(o)) return null;
    const r = o as Record<string, unknown>;
    // Each member read once, into the copy; what is checked is what is written.
    const sorted = this.pick(r);
    let members = 0;
    for (const k of this.keys) {
      const v = sorted[k];
      if (v === undefined) continue;
      switch (typeof v) {
        case 'string':
          break; // lone surrogates: below
        case 'number':
          if (!Number.isFinite(v)) return null;
          break;
        case 'boolean':
          break;
        default:
          if (v !== null) return null;
      }
      members++;
    }
    // Every member canonicalJson would write is one of ours, and each of ours
    // is one of its. With nothing enumerable on the prototype, for-in sees own
    // keys only (and without Object.hasOwn per key, V8 reads r[k] from its
    // for-in cache); a value read above that is not own would have to be a
    // non-enumerable one of Object.prototype: a function, refused above.
    if (proto !== null && hasEnumerable(proto as object)) return null;
    let own = 0;
    for (const k in r) if (r[k] !== undefined) own++;
    if (own !== members) return null;
    // Members whose value is undefined are left out by JSON.stringify, as by canonicalJson.
    const json = JSON.stringify(sorted);
    // JSON.stringify writes a lone surrogate as \udXXX, where canonicalJson
    // refuses it. No "\u" at all (no control character, no backslash before a
    // u either) rules one out without looking at each string.
    if (json.includes('\\u')) {
      for (const k of this.keys) {
        const v = sorted[k];
        if (typeof v === 'string' && !wellFormed(v)) return null;
      }
    }
    return json;
  }
}

function hasEnumerable(o: object): boolean {
  for (const _ in o) return true;
  return false;
}

export function sha256Hex(text: string | Uint8Array): string {
  return hash('sha256', text, 'hex');
}

/** SHA-256 (hex) of a value's canonical JSON: the `digest` of a compiled policy, for one. */
export function canonicalDigest(value: unknown): string {
  return sha256Hex(canonicalJson(value));
}
