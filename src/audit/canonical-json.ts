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
 * records: one a line, thousands a second), written in the members' sorted
 * order fixed once instead of sorting each object's keys. Gives exactly
 * canonicalJson()'s bytes, or null when the object is not of the shape (a
 * key more or less, a value that is not a string, finite number, boolean or
 * null): the caller then uses canonicalJson(), which also says what is wrong.
 */
export class FixedShapeJson {
  private readonly keys: string[];
  private readonly known: Set<string>;
  /** `"key":` for each key of `keys`. */
  private readonly heads: string[];

  constructor(keys: readonly string[]) {
    // Object.keys(o).sort() in canonicalJson: UTF-16 code unit order.
    this.keys = [...new Set(keys)].sort();
    this.known = new Set(this.keys);
    this.heads = this.keys.map((k) => `${JSON.stringify(k)}:`);
  }

  write(o: object): string | null {
    const proto = Object.getPrototypeOf(o) as unknown;
    if ((proto !== Object.prototype && proto !== null) || Array.isArray(o)) return null;
    const r = o as Record<string, unknown>;
    // Exactly the known keys, all own: canonicalJson writes Object.keys(o).
    let n = 0;
    for (const k in r) {
      if (!this.known.has(k) || !Object.hasOwn(r, k)) return null;
      n++;
    }
    if (n !== this.keys.length) return null;
    let out = '{';
    let first = true;
    for (let i = 0; i < this.keys.length; i++) {
      const v = r[this.keys[i] as string];
      let json: string;
      if (typeof v === 'string') {
        if (!wellFormed(v)) return null;
        json = JSON.stringify(v);
      } else if (typeof v === 'number') {
        if (!Number.isFinite(v)) return null;
        json = JSON.stringify(v);
      } else if (v === null) json = 'null';
      else if (typeof v === 'boolean') json = v ? 'true' : 'false';
      else if (v === undefined) continue;
      else return null;
      out += (first ? '' : ',') + (this.heads[i] as string) + json;
      first = false;
    }
    return `${out}}`;
  }
}

export function sha256Hex(text: string | Uint8Array): string {
  return hash('sha256', text, 'hex');
}

/** SHA-256 (hex) of a value's canonical JSON: the `digest` of a compiled policy, for one. */
export function canonicalDigest(value: unknown): string {
  return sha256Hex(canonicalJson(value));
}
