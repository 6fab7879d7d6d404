// Proves that native/abi.cc (what the TypeScript encoders read) covers
// bpf/include/weir_abi.h completely and agrees with it: the header is
// parsed here, independently of the C++ compiler, and every struct size,
// field offset and size, enum value and numeric #define is compared.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { abi } from '../../src/native/abi.js';

const headerPath = resolve(dirname(fileURLToPath(import.meta.url)), '../../bpf/include/weir_abi.h');

// ---- a small C header reader, enough for weir_abi.h's plain-C subset ----

interface CField {
  name: string;
  type: string; // '__u32', 'char', 'struct weir_port_range'
  count: number | null; // array length, null for scalars
}

interface CStruct {
  name: string;
  fields: CField[];
}

interface ParsedHeader {
  structs: Map<string, CStruct>;
  constants: Map<string, bigint>; // enum values and numeric #defines
  assertedSizes: Map<string, bigint>; // from _Static_assert(sizeof(struct X) == N)
}

function stripComments(src: string): string {
  return src.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
}

// Integer constant expressions: literals (with u/l suffixes), names of
// constants already seen, + - * / % << >> | & ~ and parentheses.
function evaluate(expr: string, env: Map<string, bigint>): bigint {
  const tokens = expr.match(/0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|[A-Za-z_]\w*|<<|>>|[-+*/%|&~()]/g) ?? [];
  const rest = expr.replace(/0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*|[A-Za-z_]\w*|<<|>>|[-+*/%|&~()]|\s+/g, '');
  if (rest !== '') throw new Error(`cannot evaluate '${expr}'`);
  let pos = 0;
  const peek = (): string | undefined => tokens[pos];
  const next = (): string => {
    const t = tokens[pos++];
    if (t === undefined) throw new Error(`unexpected end of '${expr}'`);
    return t;
  };
  const precedence: Record<string, number> = { '|': 1, '&': 2, '<<': 3, '>>': 3, '+': 4, '-': 4, '*': 5, '/': 5, '%': 5 };
  const primary = (): bigint => {
    const t = next();
    if (t === '(') {
      const v = binary(0);
      if (next() !== ')') throw new Error(`missing ) in '${expr}'`);
      return v;
    }
    if (t === '-') return -primary();
    if (t === '~') return ~primary();
    if (/^\d/.test(t)) return BigInt(t.replace(/[uUlL]+$/, ''));
    const v = env.get(t);
    if (v === undefined) throw new Error(`unknown name '${t}' in '${expr}'`);
    return v;
  };
  const binary = (minPrec: number): bigint => {
    let left = primary();
    for (;;) {
      const op = peek();
      const p = op === undefined ? undefined : precedence[op];
      if (op === undefined || p === undefined || p < minPrec) return left;
      pos++;
      const right = binary(p + 1);
      switch (op) {
        case '|': left |= right; break;
        case '&': left &= right; break;
        case '<<': left <<= right; break;
        case '>>': left >>= right; break;
        case '+': left += right; break;
        case '-': left -= right; break;
        case '*': left *= right; break;
        case '/': left /= right; break;
        default: left %= right;
      }
    }
  };
  const v = binary(0);
  if (pos !== tokens.length) throw new Error(`trailing tokens in '${expr}'`);
  return v;
}

function parseHeader(src: string): ParsedHeader {
  const constants = new Map<string, bigint>();
  const structs = new Map<string, CStruct>();
  const assertedSizes = new Map<string, bigint>();
  const code = stripComments(src);

  // Walk top-level items in order so that expressions see earlier names.
  const item = /#define[ \t]+(\w+)([ \t]+[^\n]*)?|enum\s+(\w+)\s*\{([^}]*)\}\s*;|struct\s+(\w+)\s*\{([^}]*)\}\s*;|_Static_assert\s*\(\s*sizeof\s*\(\s*struct\s+(\w+)\s*\)\s*==\s*([^,]+),/g;
  for (const m of code.matchAll(item)) {
    if (m[1] !== undefined) {
      const body = (m[2] ?? '').trim();
      if (body === '') continue; // include guard
      constants.set(m[1], evaluate(body, constants));
    } else if (m[3] !== undefined) {
      let value = -1n;
      for (const part of (m[4] ?? '').split(',')) {
        const e = /^\s*(\w+)\s*(?:=\s*(.+?))?\s*$/s.exec(part);
        if (e?.[1] === undefined) continue;
        value = e[2] !== undefined ? evaluate(e[2], constants) : value + 1n;
        constants.set(e[1], value);
      }
    } else if (m[5] !== undefined) {
      const fields: CField[] = [];
      for (const decl of (m[6] ?? '').split(';')) {
        const d = decl.trim();
        if (d === '') continue;
        const f = /^((?:struct\s+)?\w+)\s+(\w+)\s*(?:\[([^\]]+)\])?$/.exec(d);
        if (f?.[1] === undefined || f[2] === undefined) throw new Error(`struct ${m[5]}: cannot parse '${d}'`);
        fields.push({ type: f[1].replace(/\s+/g, ' '), name: f[2], count: f[3] !== undefined ? Number(evaluate(f[3], constants)) : null });
      }
      structs.set(m[5], { name: m[5], fields });
    } else if (m[7] !== undefined && m[8] !== undefined) {
      assertedSizes.set(m[7], evaluate(m[8], constants));
    }
  }
  return { structs, constants, assertedSizes };
}

// ---- C layout rules (x86-64 and BPF agree for these types) -------------

interface Layout {
  size: number;
  align: number;
  offsets: Map<string, { offset: number; size: number }>;
}

const scalarSizes: Record<string, number> = {
  char: 1, __u8: 1, __s8: 1, __u16: 2, __s16: 2, __be16: 2, __u32: 4, __s32: 4, __be32: 4, __u64: 8, __s64: 8,
};

function layoutOf(name: string, structs: Map<string, CStruct>): Layout {
  const s = structs.get(name);
  if (s === undefined) throw new Error(`unknown struct ${name}`);
  let offset = 0;
  let align = 1;
  const offsets = new Map<string, { offset: number; size: number }>();
  for (const f of s.fields) {
    let size: number;
    let a: number;
    if (f.type.startsWith('struct ')) {
      const inner = layoutOf(f.type.slice('struct '.length), structs);
      size = inner.size;
      a = inner.align;
    } else {
      const sz = scalarSizes[f.type];
      if (sz === undefined) throw new Error(`struct ${name}.${f.name}: unknown type ${f.type}`);
      size = sz;
      a = sz;
    }
    const total = size * (f.count ?? 1);
    offset = Math.ceil(offset / a) * a;
    offsets.set(f.name, { offset, size: total });
    offset += total;
    align = Math.max(align, a);
  }
  return { size: Math.ceil(offset / align) * align, align, offsets };
}

// ---------------------------------------------------------------------------

const header = parseHeader(readFileSync(headerPath, 'utf8'));
const table = abi();

describe('weir ABI table (native/abi.cc) against bpf/include/weir_abi.h', () => {
  it('parses a non-trivial header (sanity check of the parser itself)', () => {
    expect(header.structs.size).toBeGreaterThanOrEqual(10);
    expect(header.constants.get('WEIR_VERDICT_ALLOW')).toBe(1n);
    expect(header.structs.get('weir_pod_value')?.fields.map((f) => f.name)).toEqual(['set_id', 'endpoint_id', 'flags', '_pad']);
  });

  it('reports the header version as abi().version', () => {
    expect(table.version).toBe(Number(header.constants.get('WEIR_ABI_VERSION')));
  });

  it('has the size of every struct in the header, equal to its _Static_assert and to C layout rules', () => {
    for (const name of header.structs.keys()) {
      expect(table.sizes[name], `sizes.${name} missing from native/abi.cc`).toBeDefined();
      expect(table.sizes[name], `sizeof(struct ${name})`).toBe(layoutOf(name, header.structs).size);
      const asserted = header.assertedSizes.get(name);
      expect(asserted, `struct ${name} has no _Static_assert on its size`).toBeDefined();
      expect(table.sizes[name], `_Static_assert for ${name}`).toBe(Number(asserted));
    }
  });

  it('has the offset and size of every field of every struct, equal to C layout rules', () => {
    for (const [name, s] of header.structs) {
      const layout = layoutOf(name, header.structs);
      for (const f of s.fields) {
        const key = `${name}.${f.name}`;
        const want = layout.offsets.get(f.name);
        expect(table.offsets[key], `offsets['${key}'] missing from native/abi.cc`).toBeDefined();
        expect(table.offsets[key], `offsetof ${key}`).toBe(want?.offset);
        expect(table.fieldSizes[key], `sizeof ${key}`).toBe(want?.size);
      }
    }
  });

  it('has every enum value and numeric #define of the header, with the same value', () => {
    for (const [name, value] of header.constants) {
      expect(table.constants[name], `constants.${name} missing from native/abi.cc`).toBeDefined();
      expect(BigInt(table.constants[name] ?? NaN), name).toBe(value);
    }
  });

  it('has nothing the header lacks (no stale entries after a header change)', () => {
    const fields = new Set([...header.structs].flatMap(([n, s]) => s.fields.map((f) => `${n}.${f.name}`)));
    expect(Object.keys(table.sizes).filter((n) => !header.structs.has(n))).toEqual([]);
    expect(Object.keys(table.offsets).filter((k) => !fields.has(k))).toEqual([]);
    expect(Object.keys(table.fieldSizes).filter((k) => !fields.has(k))).toEqual([]);
    expect(Object.keys(table.constants).filter((n) => !header.constants.has(n))).toEqual([]);
  });

  it('keeps the record type byte first in weir_event, as the ring-record rule requires', () => {
    expect(table.offsets['weir_event.type']).toBe(0);
    expect(table.fieldSizes['weir_event.type']).toBe(1);
  });
});
