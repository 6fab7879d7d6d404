// The API server's admission of a weir policy, modelled (see the header of
// test/unit/crds.test.ts for what is modelled and how): prune, default,
// validate the CRD's OpenAPI schema with ajv, run its CEL rules. Shared by
// the CRD tests and the deploy manifest tests, which admit every weir
// policy that deploy/ renders.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isIPv4, isIPv6 } from 'node:net';
import YAML from 'yaml';
import { Ajv, type ValidateFunction } from 'ajv';
import { RE2JS } from '@bufbuild/re2';
import { CelScalar, celEnv, celFunc, celMethod, isCelError, listType, parse as parseCel, plan as planCel, type CelInput } from '@bufbuild/cel';
import { strings as celStrings } from '@bufbuild/cel/ext';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
export type Schema = Record<string, unknown>;
export type Rec = Record<string, unknown>;

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CRD_FILES = {
  EgressPolicy: 'deploy/crds/egresspolicies.weir.dev.yaml',
  ClusterEgressPolicy: 'deploy/crds/clusteregresspolicies.weir.dev.yaml',
} as const;
export type WeirKind = keyof typeof CRD_FILES;

export function isRec(v: unknown): v is Rec {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function rec(v: unknown, what: string): Rec {
  if (!isRec(v)) throw new Error(`${what} is not a mapping`);
  return v;
}

export function clone<T>(v: T): T {
  return structuredClone(v);
}

export function loadCrd(kind: WeirKind): Rec {
  return rec(YAML.parse(readFileSync(join(ROOT, CRD_FILES[kind]), 'utf8')), CRD_FILES[kind]);
}

export function versionOf(crd: Rec): Rec {
  const versions = rec(crd['spec'], 'spec')['versions'];
  if (!Array.isArray(versions)) throw new Error('spec.versions is not a list');
  return rec(versions[0], 'spec.versions[0]');
}

export function rootSchema(crd: Rec): Schema {
  return rec(rec(versionOf(crd)['schema'], 'schema')['openAPIV3Schema'], 'openAPIV3Schema');
}

export function props(s: Schema): Record<string, Schema> {
  const p = s['properties'];
  return isRec(p) ? (p as Record<string, Schema>) : {};
}

export function child(s: Schema, key: 'items' | 'additionalProperties' | 'not'): Schema | undefined {
  const c = s[key];
  return isRec(c) ? c : undefined;
}

export function schemaAt(s: Schema, path: readonly string[]): Schema {
  let cur = s;
  for (const p of path) {
    const next = p === '[]' ? child(cur, 'items') : p === '{}' ? child(cur, 'additionalProperties') : props(cur)[p];
    if (next === undefined) throw new Error(`no schema at ${path.join('.')}`);
    cur = next;
  }
  return cur;
}

// ---------------------------------------------------------------------------
// Regular expressions: RE2, as on the API server

export function re2(pattern: string): RE2JS {
  return RE2JS.compile(pattern);
}

export const re2Engine = Object.assign((pattern: string) => re2(pattern), { code: 'RE2JS' });

export const JUNCTORS = ['allOf', 'anyOf', 'oneOf'] as const;


// ---------------------------------------------------------------------------
// 2. Admission: what the API server does with a policy

/**
 * The schema as ajv should read it: x-kubernetes-int-or-string becomes
 * anyOf integer|string, other x-kubernetes-* keys are dropped (the CEL rules
 * run separately), and, with `strict`, every object with properties refuses
 * unknown fields the way server-side strict field validation does.
 */
export function toAjvSchema(s: Schema, strict: boolean): Schema {
  const out: Schema = {};
  for (const [k, v] of Object.entries(s)) {
    if (k.startsWith('x-kubernetes-') || k === 'nullable' || k === 'format' || k === 'example' || k === 'externalDocs') continue;
    if (k === 'properties' && isRec(v)) {
      out[k] = Object.fromEntries(Object.entries(v).map(([n, p]) => [n, toAjvSchema(rec(p, n), strict)]));
    } else if ((k === 'items' || k === 'additionalProperties' || k === 'not') && isRec(v)) {
      out[k] = toAjvSchema(v, strict);
    } else if ((JUNCTORS as readonly string[]).includes(k) && Array.isArray(v)) {
      out[k] = v.map((x) => toAjvSchema(rec(x, k), strict));
    } else {
      out[k] = v;
    }
  }
  if (s['x-kubernetes-int-or-string'] === true) {
    const intOrString = { anyOf: [{ type: 'integer' }, { type: 'string' }] };
    if (out['anyOf'] === undefined) Object.assign(out, intOrString);
    else out['allOf'] = [...(Array.isArray(out['allOf']) ? out['allOf'] : []), intOrString];
  }
  if (strict && s['type'] === 'object' && isRec(s['properties'])) out['additionalProperties'] = false;
  return out;
}

export const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: true, strictTypes: false, code: { regExp: re2Engine } });

export function compileAjv(s: Schema, strict: boolean): ValidateFunction {
  return ajv.compile(toAjvSchema(s, strict));
}

/** Drops what the API server drops before validating: nulls (map values too) and, unless strict, unknown fields. */
export function prune(x: unknown, s: Schema | undefined, dropUnknown: boolean): void {
  if (s === undefined) return;
  if (Array.isArray(x)) {
    const items = child(s, 'items');
    for (const v of x) prune(v, items, dropUnknown);
    return;
  }
  if (!isRec(x)) return;
  for (const [k, v] of Object.entries(x)) {
    const ks = props(s)[k] ?? child(s, 'additionalProperties');
    if (ks === undefined) {
      // metadata ({type: object} without properties) is ObjectMeta, which the API server keeps.
      if (dropUnknown && isRec(s['properties']) && s['x-kubernetes-preserve-unknown-fields'] !== true) delete x[k];
      continue;
    }
    // A null with a default is defaulted; deleting it lets ajv apply the default.
    if (v === null && ks['nullable'] !== true) delete x[k];
    else prune(v, ks, dropUnknown);
  }
}

// --- CEL: values and the Kubernetes library functions the rules use

/** An IP prefix as Go's netip.ParsePrefix reads it, or undefined. */
export interface Prefix {
  bytes: number[];
  bits: number;
}

export function parseGoAddr(s: string): number[] | undefined {
  if (isIPv4(s)) return s.split('.').map(Number);
  if (!isIPv6(s) || s.includes('%')) return undefined;
  const [head = '', tail] = s.split('::');
  const groups = (part: string): number[] => {
    const out: number[] = [];
    for (const g of part === '' ? [] : part.split(':')) {
      if (g.includes('.')) {
        const b = g.split('.').map(Number);
        out.push(((b[0] ?? 0) << 8) | (b[1] ?? 0), ((b[2] ?? 0) << 8) | (b[3] ?? 0));
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = tail === undefined ? h : [...h, ...new Array<number>(8 - h.length - t.length).fill(0), ...t];
  return all.flatMap((g) => [g >> 8, g & 0xff]);
}

export function parseGoPrefix(s: string): Prefix | undefined {
  const slash = s.lastIndexOf('/');
  if (slash < 0) return undefined;
  const bitsText = s.slice(slash + 1);
  // Go 1.22+ refuses a sign or leading zeros in the prefix length.
  if (!/^(0|[1-9][0-9]*)$/.test(bitsText)) return undefined;
  const bytes = parseGoAddr(s.slice(0, slash));
  if (bytes === undefined) return undefined;
  const bits = Number(bitsText);
  if (bits > bytes.length * 8) return undefined;
  // library.parseCIDR refuses IPv4-mapped IPv6 (::ffff:a.b.c.d).
  if (bytes.length === 16 && bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) return undefined;
  return { bytes, bits };
}

export function prefixOf(v: unknown): Prefix {
  if (!(v instanceof Map) && !(isRec(v) && typeof (v as { get?: unknown }).get === 'function')) throw new Error('not a CIDR');
  const m = v as { get(k: string): unknown };
  const text = m.get('@cidr') ?? m.get('@ip');
  const p = typeof text === 'string' ? parseGoPrefix(text) : undefined;
  if (p === undefined) throw new Error('not a CIDR');
  return p;
}

export const k8sFuncs = [
  ...celStrings,
  celFunc('isCIDR', [CelScalar.STRING], CelScalar.BOOL, (s) => parseGoPrefix(s) !== undefined),
  celFunc('cidr', [CelScalar.STRING], CelScalar.DYN, (s) => {
    if (parseGoPrefix(s) === undefined) throw new Error(`network address parse error: ${s}`);
    return new Map([['@cidr', s]]);
  }),
  celMethod('ip', CelScalar.DYN, [], CelScalar.DYN, function () {
    const p = prefixOf(this);
    return new Map([['@ip', `${p.bytes.length === 4 ? p.bytes.join('.') : ipv6Text(p.bytes)}/${p.bytes.length * 8}`]]);
  }),
  celMethod('prefixLength', CelScalar.DYN, [], CelScalar.INT, function () {
    return BigInt(prefixOf(this).bits);
  }),
  celMethod('containsIP', CelScalar.DYN, [CelScalar.DYN], CelScalar.BOOL, function (other) {
    const outer = prefixOf(this);
    const ip = prefixOf(other);
    if (outer.bytes.length !== ip.bytes.length) return false;
    for (let bit = 0; bit < outer.bits; bit++) {
      const mask = 0x80 >> (bit & 7);
      if (((outer.bytes[bit >> 3] ?? 0) & mask) !== ((ip.bytes[bit >> 3] ?? 0) & mask)) return false;
    }
    return true;
  }),
  celMethod('sum', listType(CelScalar.DYN), [], CelScalar.INT, function () {
    let total = 0n;
    for (const v of this) if (typeof v === 'bigint') total += v;
    return total;
  }),
];

export function ipv6Text(bytes: number[]): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  return groups.join(':');
}

export const celEnvironment = celEnv({ funcs: k8sFuncs });
export const planned = new Map<string, ReturnType<typeof planCel>>();

export function celProgram(rule: string): ReturnType<typeof planCel> {
  let p = planned.get(rule);
  if (p === undefined) {
    p = planCel(celEnvironment, parseCel(rule));
    planned.set(rule, p);
  }
  return p;
}

/** The value as the API server hands it to CEL: objects as maps, integers as int. */
export function toCel(v: unknown, s: Schema): CelInput {
  if (s['x-kubernetes-int-or-string'] === true || s['type'] === 'integer') return typeof v === 'number' ? BigInt(v) : (v as CelInput);
  if (Array.isArray(v)) {
    const items = child(s, 'items') ?? {};
    return v.map((x) => toCel(x, items));
  }
  if (isRec(v)) {
    const ap = child(s, 'additionalProperties');
    return new Map(Object.entries(v).map(([k, x]) => [k, toCel(x, ap ?? props(s)[k] ?? {})]));
  }
  return v as CelInput;
}

export function runRules(x: unknown, s: Schema, path: string, errors: string[]): void {
  if (x === undefined) return;
  const rules = s['x-kubernetes-validations'];
  if (Array.isArray(rules)) {
    for (const r of rules) {
      const { rule, message } = rec(r, path);
      let result: unknown;
      try {
        result = celProgram(String(rule))({ self: toCel(x, s) });
      } catch (e) {
        result = e;
      }
      if (result !== true) {
        const why = isCelError(result) || result instanceof Error ? ` (evaluation error: ${String(result)})` : '';
        errors.push(`${path || '<root>'}: ${String(message ?? rule)}${why}`);
      }
    }
  }
  if (Array.isArray(x)) {
    const items = child(s, 'items');
    if (items !== undefined) x.forEach((v, i) => runRules(v, items, `${path}[${i}]`, errors));
  } else if (isRec(x)) {
    for (const [k, v] of Object.entries(x)) {
      const ks = props(s)[k] ?? child(s, 'additionalProperties');
      if (ks !== undefined) runRules(v, ks, path === '' ? k : `${path}.${k}`, errors);
    }
  }
}

export interface Admission {
  ok: boolean;
  errors: string[];
  /** The object as stored: pruned and defaulted. */
  stored: unknown;
}

export const crds = { EgressPolicy: loadCrd('EgressPolicy'), ClusterEgressPolicy: loadCrd('ClusterEgressPolicy') };
export const validators = {
  strict: { EgressPolicy: compileAjv(rootSchema(crds.EgressPolicy), true), ClusterEgressPolicy: compileAjv(rootSchema(crds.ClusterEgressPolicy), true) },
  warn: { EgressPolicy: compileAjv(rootSchema(crds.EgressPolicy), false), ClusterEgressPolicy: compileAjv(rootSchema(crds.ClusterEgressPolicy), false) },
};

/**
 * What the API server answers to a create of `obj`, modelled: prune nulls
 * (and unknown fields unless fieldValidation is Strict), apply defaults,
 * validate the schema, then run the CEL rules.
 */
export function admit(obj: unknown, fieldValidation: 'Strict' | 'Warn' = 'Strict'): Admission {
  const o = clone(obj);
  if (!isRec(o) || o['apiVersion'] !== 'weir.dev/v1alpha1' || (o['kind'] !== 'EgressPolicy' && o['kind'] !== 'ClusterEgressPolicy')) {
    return { ok: false, errors: ['not a weir.dev/v1alpha1 policy kind'], stored: o };
  }
  const kind: WeirKind = o['kind'];
  const root = rootSchema(crds[kind]);
  prune(o, root, fieldValidation === 'Warn');
  const validate = (fieldValidation === 'Strict' ? validators.strict : validators.warn)[kind];
  if (!validate(o)) {
    return { ok: false, errors: (validate.errors ?? []).map((e) => `${e.instancePath || '/'}: ${e.message ?? 'invalid'}`), stored: o };
  }
  const errors: string[] = [];
  runRules(o, root, '', errors);
  return { ok: errors.length === 0, errors, stored: o };
}

