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

import { createHash } from 'node:crypto';

/** The `prev` of the first record of a chain. */
export const ZERO_HASH = '0'.repeat(64);

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function canonicalJson(value: unknown): string {
  return write(value, '$');
}

function write(v: unknown, path: string): string {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`canonical JSON: ${path} is ${v}, not a finite number`);
      return JSON.stringify(v);
    case 'string':
      if (LONE_SURROGATE.test(v)) throw new TypeError(`canonical JSON: ${path} holds a lone surrogate`);
      return JSON.stringify(v);
    case 'object': {
      if (Array.isArray(v)) {
        return `[${v.map((x, i) => {
          if (x === undefined) throw new TypeError(`canonical JSON: ${path}[${i}] is undefined`);
          return write(x, `${path}[${i}]`);
        }).join(',')}]`;
      }
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw new TypeError(`canonical JSON: ${path} is a ${(v as object).constructor?.name ?? 'non-plain object'}, not a plain object`);
      }
      const o = v as Record<string, unknown>;
      const members: string[] = [];
      for (const k of Object.keys(o).sort()) {
        if (o[k] === undefined) continue;
        if (LONE_SURROGATE.test(k)) throw new TypeError(`canonical JSON: a key of ${path} holds a lone surrogate`);
        members.push(`${JSON.stringify(k)}:${write(o[k], `${path}.${k}`)}`);
      }
      return `{${members.join(',')}}`;
    }
    default:
      throw new TypeError(`canonical JSON: ${path} is a ${typeof v}, which JSON cannot hold`);
  }
}

export function sha256Hex(text: string | Uint8Array): string {
  return createHash('sha256').update(text).digest('hex');
}

/** SHA-256 (hex) of a value's canonical JSON: the `digest` of a compiled policy, for one. */
export function canonicalDigest(value: unknown): string {
  return sha256Hex(canonicalJson(value));
}
