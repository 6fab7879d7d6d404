// The CustomResourceDefinitions in deploy/crds/ must tell the API server what
// src/model/validate.ts tells the agent: a policy the agent would refuse should
// be refused at `kubectl apply`, not discovered later in an agent log.
//
// Without an API server at hand, this file models the three things the API
// server does with these CRDs, each as close to its source as is practical:
// 1. When the CRD is created: the structural-schema rules and the CEL cost
//    budget (apiextensions-apiserver pkg/apis/apiextensions/validation,
//    pkg/apiserver/schema): structuralProblems(), crdProblems() and
//    ruleCosts() below. The cost model walks every rule with the schema's
//    types, so a rule naming a field that does not exist fails here too.
// 2. When a policy is written: prune nulls, default, validate the OpenAPI
//    schema (with ajv, after translating the Kubernetes extensions), then run
//    the x-kubernetes-validations CEL rules (with @bufbuild/cel, a real CEL
//    implementation, plus JS versions of the Kubernetes CIDR/IP and list
//    functions the rules call; isCIDR follows Go's netip.ParsePrefix and is
//    written independently of validate.ts's parser). admit() in
//    test/helpers/crd-admission.ts, shared with the deploy manifest tests.
// 3. Regular expressions are RE2 on the API server (Go regexp for `pattern`,
//    RE2 for CEL `matches`), so both ajv and CEL use @bufbuild/re2 here.
// Deliberate differences from validate.ts are listed in the CRD's header and
// each is pinned by a test in "deliberate differences" below.

import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import YAML from 'yaml';
import { parse as parseCel } from '@bufbuild/cel';
import { validateObject } from '../../src/model/validate.js';
import {
  JUNCTORS,
  ROOT,
  admit,
  child,
  clone,
  compileAjv,
  crds,
  isRec,
  props,
  re2,
  rec,
  rootSchema,
  schemaAt,
  versionOf,
  type Json,
  type Rec,
  type Schema,
  type WeirKind,
} from '../helpers/crd-admission.js';


// ---------------------------------------------------------------------------
// 1. CRD creation: structural schema rules
//
// What apiextensions-apiserver refuses (validation.go, schema/validation.go):
// - every node in the structural part has a type, except where
//   x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields stands
//   in for it; arrays have items; types are the OpenAPI six;
// - properties and additionalProperties are mutually exclusive;
// - inside allOf/anyOf/oneOf/not only value validations: no type, default,
//   description, title, nullable, additionalProperties or x-kubernetes-*, and
//   properties/items there must exist in the structural part;
// - int-or-string: no type, and an anyOf, if any, is exactly integer|string;
// - metadata at the root may only constrain name and generateName; no
//   defaults under apiVersion, kind or metadata;
// - defaults validate against their schema and hold no unknown fields;
// - no $ref, definitions, dependencies, patternProperties, additionalItems,
//   uniqueItems: true, x-kubernetes-preserve-unknown-fields: false;
// - list/map types only on arrays/objects, with the allowed values.
// Keys outside JSONSchemaProps are refused too (a `maxitems` typo would be
// silently ignored by a lenient reader).

const KNOWN_KEYS = new Set([
  'type', 'format', 'title', 'description', 'default', 'maximum', 'exclusiveMaximum', 'minimum', 'exclusiveMinimum',
  'maxLength', 'minLength', 'pattern', 'maxItems', 'minItems', 'uniqueItems', 'multipleOf', 'enum', 'maxProperties',
  'minProperties', 'required', 'items', 'allOf', 'oneOf', 'anyOf', 'not', 'properties', 'additionalProperties',
  'nullable', 'example', 'externalDocs', 'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-embedded-resource',
  'x-kubernetes-int-or-string', 'x-kubernetes-list-map-keys', 'x-kubernetes-list-type', 'x-kubernetes-map-type',
  'x-kubernetes-validations',
]);
const FORBIDDEN_KEYS = ['$ref', '$schema', 'id', 'definitions', 'dependencies', 'patternProperties', 'additionalItems'];
const FORBIDDEN_IN_JUNCTORS = ['type', 'default', 'description', 'title', 'nullable', 'additionalProperties'];
const TYPES = new Set(['string', 'number', 'integer', 'boolean', 'array', 'object']);
const RULE_KEYS = new Set(['rule', 'message', 'messageExpression', 'reason', 'fieldPath', 'optionalOldSelf']);

/** Problems the API server would report for this schema; [] when it would accept it. */
function structuralProblems(root: Schema): string[] {
  const problems: string[] = [];
  const add = (path: string, p: string): void => {
    problems.push(`${path || '<root>'}: ${p}`);
  };

  const checkKeys = (s: Schema, path: string): void => {
    for (const k of Object.keys(s)) {
      if (FORBIDDEN_KEYS.includes(k)) add(path, `${k} is not allowed in CRD schemas`);
      else if (!KNOWN_KEYS.has(k)) add(path, `unknown schema keyword ${k}`);
    }
    if (s['uniqueItems'] === true) add(path, 'uniqueItems: true is forbidden (quadratic)');
    if (s['x-kubernetes-preserve-unknown-fields'] === false) add(path, 'x-kubernetes-preserve-unknown-fields must be true or absent');
    if (typeof s['pattern'] === 'string') {
      try {
        re2(s['pattern']);
      } catch (e) {
        add(path, `pattern is not RE2: ${String(e)}`);
      }
    }
  };

  // Value validations inside junctors, checked against the structural node they sit on.
  const nested = (v: Schema, structural: Schema | undefined, path: string): void => {
    checkKeys(v, path);
    for (const k of FORBIDDEN_IN_JUNCTORS) if (k in v) add(path, `${k} must not be set inside allOf/anyOf/oneOf/not`);
    for (const k of Object.keys(v)) if (k.startsWith('x-kubernetes-')) add(path, `${k} must not be set inside allOf/anyOf/oneOf/not`);
    for (const [name, p] of Object.entries(props(v))) {
      const s = structural === undefined ? undefined : props(structural)[name];
      if (s === undefined) add(`${path}.properties.${name}`, 'not in the structural schema');
      nested(p, s, `${path}.properties.${name}`);
    }
    const items = child(v, 'items');
    if (items !== undefined) {
      const s = structural === undefined ? undefined : child(structural, 'items');
      if (s === undefined) add(`${path}.items`, 'not in the structural schema');
      nested(items, s, `${path}.items`);
    }
    junctors(v, structural, path);
  };

  const junctors = (s: Schema, structural: Schema | undefined, path: string): void => {
    for (const j of JUNCTORS) {
      const list = s[j];
      if (list === undefined) continue;
      if (!Array.isArray(list)) {
        add(path, `${j} is not a list`);
        continue;
      }
      list.forEach((v, i) => nested(rec(v, `${path}.${j}[${i}]`), structural, `${path}.${j}[${i}]`));
    }
    const not = child(s, 'not');
    if (not !== undefined) nested(not, structural, `${path}.not`);
  };

  const walk = (s: Schema, path: string, where: 'root' | 'meta' | 'plain'): void => {
    checkKeys(s, path);
    const type = s['type'];
    const intOrString = s['x-kubernetes-int-or-string'] === true;
    const preserve = s['x-kubernetes-preserve-unknown-fields'] === true;
    if (intOrString) {
      if (type !== undefined) add(path, 'x-kubernetes-int-or-string must not have a type');
      const anyOf = s['anyOf'];
      if (anyOf !== undefined && JSON.stringify(anyOf) !== JSON.stringify([{ type: 'integer' }, { type: 'string' }])) {
        add(path, 'x-kubernetes-int-or-string allows only anyOf: [{type: integer}, {type: string}]');
      }
    } else if (type === undefined) {
      if (!preserve) add(path, 'type is required in a structural schema');
    } else if (typeof type !== 'string' || !TYPES.has(type)) {
      add(path, `type ${String(type)} is not an OpenAPI type`);
    }
    const properties = s['properties'];
    const additional = s['additionalProperties'];
    if (properties !== undefined && additional !== undefined) add(path, 'properties and additionalProperties are mutually exclusive');
    if ((properties !== undefined || additional !== undefined) && type !== 'object') add(path, 'properties need type: object');
    if (type === 'array' && child(s, 'items') === undefined) add(path, 'an array needs a single items schema');
    if (s['items'] !== undefined && type !== 'array') add(path, 'items need type: array');
    const listType = s['x-kubernetes-list-type'];
    if (listType !== undefined && (type !== 'array' || !['atomic', 'set', 'map'].includes(String(listType)))) add(path, 'bad x-kubernetes-list-type');
    const mapType = s['x-kubernetes-map-type'];
    if (mapType !== undefined && (type !== 'object' || !['atomic', 'granular'].includes(String(mapType)))) add(path, 'bad x-kubernetes-map-type');
    if (Array.isArray(s['enum'])) {
      for (const e of s['enum']) if (type === 'string' && typeof e !== 'string') add(path, `enum value ${String(e)} is not a string`);
    }
    if (where === 'meta') {
      for (const [k, p] of Object.entries(props(s))) {
        if (!['name', 'generateName'].includes(k)) add(`${path}.properties.${k}`, 'metadata may only constrain name and generateName');
        else if (p['type'] !== 'string') add(`${path}.properties.${k}`, 'must be a string');
      }
      for (const k of Object.keys(s)) if (!['type', 'properties', 'description'].includes(k)) add(path, `metadata may not set ${k}`);
    }
    const rules = s['x-kubernetes-validations'];
    if (rules !== undefined) checkRules(s, rules, path, add);
    junctors(s, s, path);
    for (const [name, p] of Object.entries(props(s))) {
      const meta = where === 'root' && ['apiVersion', 'kind', 'metadata'].includes(name);
      if (meta && 'default' in p) add(`${path}.properties.${name}`, 'no defaults in apiVersion, kind or metadata');
      walk(p, `${path}.properties.${name}`, where === 'root' && name === 'metadata' ? 'meta' : 'plain');
    }
    const items = child(s, 'items');
    if (items !== undefined) walk(items, `${path}.items`, 'plain');
    if (isRec(additional)) walk(additional, `${path}.additionalProperties`, 'plain');
    if ('default' in s) {
      const problems = validateDefault(s);
      for (const p of problems) add(path, `default: ${p}`);
    }
  };

  if (root['type'] !== 'object') add('', 'the root must be type: object');
  if (root['nullable'] === true) add('', 'the root must not be nullable');
  walk(root, '', 'root');
  return problems;
}

function checkRules(s: Schema, rules: unknown, path: string, add: (path: string, p: string) => void): void {
  if (!Array.isArray(rules)) {
    add(path, 'x-kubernetes-validations is not a list');
    return;
  }
  rules.forEach((r, i) => {
    const p = `${path}.x-kubernetes-validations[${i}]`;
    if (!isRec(r)) {
      add(p, 'not a mapping');
      return;
    }
    for (const k of Object.keys(r)) if (!RULE_KEYS.has(k)) add(p, `unknown key ${k}`);
    const rule = r['rule'];
    if (typeof rule !== 'string' || rule.trim() === '') add(p, 'rule is required');
    else {
      try {
        parseCel(rule);
      } catch (e) {
        add(p, `rule does not parse: ${String(e)}`);
      }
    }
    const message = r['message'];
    if (message !== undefined && (typeof message !== 'string' || message.includes('\n') || message.trim() === '')) {
      add(p, 'message must be a non-empty single line');
    }
    const fieldPath = r['fieldPath'];
    if (fieldPath !== undefined) {
      const parts = typeof fieldPath === 'string' && fieldPath.startsWith('.') ? fieldPath.slice(1).split('.') : undefined;
      if (parts === undefined || parts.some((f) => props(s)[f] === undefined)) add(p, `fieldPath ${String(fieldPath)} is not a property path of this node`);
    }
  });
}

function validateDefault(s: Schema): string[] {
  const { default: value, ...rest } = s;
  const validate = compileAjv(rest, true);
  if (validate(clone(value))) return [];
  return (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? 'invalid'}`);
}

// ---------------------------------------------------------------------------
// 1b. CRD creation: the CEL cost budget
//
// The API server estimates each rule's worst-case cost (cel-go checker/cost.go
// with the Kubernetes library costs, apiserver pkg/cel/library/cost.go) and
// multiplies it by the rule's cardinality: the product of maxItems and
// maxProperties of every list and map above the rule. It refuses the CRD if
// one rule exceeds 10,000,000 or all rules together 100,000,000
// (StaticEstimatedCostLimit, StaticEstimatedCRDCostLimit).
//
// estimateRuleCost() below follows the same model for the expressions these
// CRDs use, rounding up wherever it simplifies: has(), which the API server
// prices at its operand alone, costs one more here. Sizes come from the schema as the API server derives
// them: maxLength × 4 bytes for strings, maxItems/maxProperties for lists and
// maps, 3 MiB for int-or-string. Two places copy the API server's arithmetic
// where it is lower than a reading of the code would expect: map keys (label
// keys in matchLabels) are sized 0, because the API server declares them as
// plain CEL strings without a maximum (apiserver pkg/cel/common/schemas.go,
// NewMapType(StringType, ...)), and the global isCIDR()/cidr() cost 1 (see
// estimateCall). Any other function name is an error: extend the model before
// using it.

const STATIC_RULE_LIMIT = 10_000_000;
const STATIC_CRD_LIMIT = 100_000_000;
const MAX_REQUEST_BYTES = 3 * 1024 * 1024;

type CelType =
  | { k: 'obj'; s: Schema }
  | { k: 'list'; max: number; elem: CelType }
  | { k: 'map'; max: number; val: CelType }
  | { k: 'str'; max: number }
  | { k: 'int' }
  | { k: 'bool' }
  | { k: 'dyn'; max: number }
  | { k: 'cidr' }
  | { k: 'ip' }
  | { k: 'type' };

interface Estimate {
  cost: number;
  t: CelType;
}

function celTypeOf(s: Schema): CelType {
  if (s['x-kubernetes-int-or-string'] === true) return { k: 'dyn', max: MAX_REQUEST_BYTES - 2 };
  switch (s['type']) {
    case 'object': {
      const ap = child(s, 'additionalProperties');
      if (ap === undefined) return { k: 'obj', s };
      const max = s['maxProperties'];
      if (typeof max !== 'number') throw new Error('a map used by a CEL rule needs maxProperties');
      return { k: 'map', max, val: celTypeOf(ap) };
    }
    case 'array': {
      const max = s['maxItems'];
      const items = child(s, 'items');
      if (typeof max !== 'number' || items === undefined) throw new Error('a list used by a CEL rule needs maxItems');
      return { k: 'list', max, elem: celTypeOf(items) };
    }
    case 'string': {
      // Without maxLength the API server assumes a string as long as a request.
      const max = s['maxLength'];
      return { k: 'str', max: typeof max === 'number' ? max * 4 : MAX_REQUEST_BYTES - 2 };
    }
    case 'integer':
      return { k: 'int' };
    case 'boolean':
      return { k: 'bool' };
    default:
      throw new Error(`no CEL type for schema type ${String(s['type'])}`);
  }
}

function sizeOf(t: CelType): number {
  switch (t.k) {
    case 'str':
    case 'list':
    case 'map':
    case 'dyn':
      return t.max;
    default:
      return 1;
  }
}

const traversal = (size: number): number => Math.ceil(size * 0.1);

interface CelExpr {
  exprKind: { case: string | undefined; value?: unknown };
}

function exprParts(e: CelExpr): { kind: string; v: Rec } {
  const kind = e.exprKind.case;
  if (kind === undefined) throw new Error('empty CEL expression');
  return { kind, v: rec(e.exprKind.value, kind) };
}

function sub(v: Rec, key: string): CelExpr {
  const e = v[key];
  if (!isRec(e) || !isRec(e['exprKind'])) throw new Error(`missing ${key}`);
  return e as unknown as CelExpr;
}

function subs(v: Rec, key: string): CelExpr[] {
  const list = v[key];
  if (!Array.isArray(list)) return [];
  return list.map((e) => sub({ e }, 'e'));
}

function estimate(e: CelExpr, scope: Map<string, CelType>): Estimate {
  const { kind, v } = exprParts(e);
  switch (kind) {
    case 'constExpr': {
      const c = rec(v['constantKind'], 'constant');
      if (c['case'] === 'stringValue') return { cost: 0, t: { k: 'str', max: String(c['value']).length } };
      if (c['case'] === 'int64Value') return { cost: 0, t: { k: 'int' } };
      if (c['case'] === 'boolValue') return { cost: 0, t: { k: 'bool' } };
      throw new Error(`constant ${String(c['case'])} not modelled`);
    }
    case 'identExpr': {
      const name = String(v['name']);
      const t = scope.get(name) ?? (name === 'int' || name === 'string' ? { k: 'type' as const } : undefined);
      if (t === undefined) throw new Error(`unknown identifier ${name}`);
      return { cost: 1, t };
    }
    case 'selectExpr': {
      const operand = estimate(sub(v, 'operand'), scope);
      const field = String(v['field']);
      if (v['testOnly'] === true) return { cost: operand.cost + 1, t: { k: 'bool' } };
      const o = operand.t;
      if (o.k === 'obj') {
        const s = props(o.s)[field];
        if (s === undefined) throw new Error(`no field ${field}`);
        return { cost: operand.cost + 1, t: celTypeOf(s) };
      }
      if (o.k === 'map') return { cost: operand.cost + 1, t: o.val };
      throw new Error(`select .${field} on ${o.k}`);
    }
    case 'listExpr': {
      const elems = subs(v, 'elements').map((x) => estimate(x, scope));
      const elem = elems[0]?.t ?? { k: 'dyn', max: 0 };
      return { cost: 10 + elems.reduce((a, x) => a + x.cost, 0), t: { k: 'list', max: elems.length, elem } };
    }
    case 'comprehensionExpr': {
      const range = estimate(sub(v, 'iterRange'), scope);
      const init = estimate(sub(v, 'accuInit'), scope);
      const r = range.t;
      let n: number;
      let elem: CelType;
      if (r.k === 'list') {
        n = r.max;
        elem = r.elem;
      } else if (r.k === 'map') {
        n = r.max;
        elem = { k: 'str', max: 0 }; // map keys: see the note above
      } else throw new Error(`comprehension over ${r.k}`);
      const accu: CelType = init.t.k === 'list' ? { k: 'list', max: n, elem: { k: 'dyn', max: 0 } } : init.t;
      const inner = new Map(scope);
      inner.set(String(v['iterVar']), elem);
      inner.set(String(v['accuVar']), accu);
      const cond = estimate(sub(v, 'loopCondition'), inner);
      const step = estimate(sub(v, 'loopStep'), inner);
      const result = estimate(sub(v, 'result'), inner);
      let t = result.t;
      if (init.t.k === 'list') {
        const stepT = step.t;
        t = { k: 'list', max: n, elem: stepT.k === 'list' ? stepT.elem : { k: 'dyn', max: 0 } };
      }
      return { cost: range.cost + init.cost + result.cost + n * (cond.cost + step.cost), t };
    }
    case 'callExpr':
      return estimateCall(v, scope);
    default:
      throw new Error(`${kind} not modelled`);
  }
}

function estimateCall(v: Rec, scope: Map<string, CelType>): Estimate {
  const fn = String(v['function']);
  const target = isRec(v['target']) ? estimate(sub(v, 'target'), scope) : undefined;
  const args = subs(v, 'args').map((a) => estimate(a, scope));
  const a0 = args[0];
  const a1 = args[1];
  const argCost = args.reduce((a, x) => a + x.cost, 0) + (target?.cost ?? 0);
  const bool: CelType = { k: 'bool' };
  const int: CelType = { k: 'int' };
  const compare = (): number => {
    if (a0 === undefined || a1 === undefined) throw new Error(`${fn} needs two arguments`);
    const strings = a0.t.k === 'str' && a1.t.k === 'str';
    return Math.max(1, strings ? traversal(Math.min(sizeOf(a0.t), sizeOf(a1.t))) : 1);
  };
  switch (fn) {
    case '_&&_':
    case '_||_':
      return { cost: argCost, t: bool };
    case '_?_:_': {
      const [c, t, f] = args;
      if (c === undefined || t === undefined || f === undefined) throw new Error('conditional');
      return { cost: c.cost + Math.max(t.cost, f.cost), t: sizeOf(t.t) >= sizeOf(f.t) ? t.t : f.t };
    }
    case '!_':
    case '@not_strictly_false':
      return { cost: argCost + 1, t: bool };
    case '_==_':
    case '_!=_':
    case '_<_':
    case '_<=_':
    case '_>_':
    case '_>=_':
      return { cost: argCost + compare(), t: bool };
    case '_+_': {
      if (a0 === undefined || a1 === undefined) throw new Error('_+_');
      if (a0.t.k === 'list' && a1.t.k === 'list') {
        return { cost: argCost + 1, t: { k: 'list', max: a0.t.max + a1.t.max, elem: a1.t.elem } };
      }
      if (a0.t.k === 'int' && a1.t.k === 'int') return { cost: argCost + 1, t: int };
      throw new Error(`_+_ on ${a0.t.k} and ${a1.t.k}`);
    }
    case '@in':
      if (a1 === undefined) throw new Error('@in');
      return { cost: argCost + sizeOf(a1.t), t: bool };
    case 'size':
      return { cost: argCost + 1, t: int };
    case 'type':
      return { cost: argCost + 1, t: { k: 'type' } };
    case 'matches': {
      if (target === undefined || a0 === undefined) throw new Error('matches');
      return { cost: argCost + traversal(sizeOf(target.t) + 1) * Math.ceil(sizeOf(a0.t) * 0.25), t: bool };
    }
    case 'indexOf':
      if (target === undefined) throw new Error('indexOf');
      return { cost: argCost + Math.max(1, traversal(sizeOf(target.t))), t: int };
    case 'isCIDR':
    case 'cidr':
      // The library prices these at a string traversal only when called as a
      // method (`if target != nil`); as the global functions they are, they
      // cost 1 plus the argument. Kubernetes treats any change to these
      // estimates as breaking (library/cost.go), so this is stable.
      if (a0 === undefined) throw new Error(fn);
      return { cost: argCost + 1, t: fn === 'cidr' ? { k: 'cidr' } : bool };
    case 'ip':
    case 'prefixLength':
      if (target?.t.k !== 'cidr') throw new Error(`${fn} on a non-CIDR`);
      return { cost: argCost + 1, t: fn === 'ip' ? { k: 'ip' } : int };
    case 'containsIP':
      if (target?.t.k !== 'cidr' || a0 === undefined) throw new Error('containsIP');
      return { cost: argCost + 4 + (a0.t.k === 'str' ? traversal(sizeOf(a0.t)) : 0), t: bool };
    case 'sum':
      if (target?.t.k !== 'list') throw new Error('sum on a non-list');
      return { cost: argCost + target.t.max, t: int };
    default:
      throw new Error(`function ${fn} is not in the cost model`);
  }
}

function estimateRuleCost(rule: string, self: Schema): number {
  const parsed = parseCel(rule).expr;
  if (parsed === undefined) throw new Error('empty rule');
  return estimate(parsed as unknown as CelExpr, new Map([['self', celTypeOf(self)]])).cost;
}

interface RuleCost {
  path: string;
  rule: string;
  cost: number;
  cardinality: number;
  total: number;
}

function ruleCosts(root: Schema): RuleCost[] {
  const out: RuleCost[] = [];
  const walk = (s: Schema, path: string, cardinality: number): void => {
    const rules = s['x-kubernetes-validations'];
    if (Array.isArray(rules)) {
      for (const r of rules) {
        const rule = String(rec(r, path)['rule']);
        const cost = estimateRuleCost(rule, s);
        out.push({ path, rule, cost, cardinality, total: cost * cardinality });
      }
    }
    for (const [k, p] of Object.entries(props(s))) walk(p, `${path}.${k}`, cardinality);
    const items = child(s, 'items');
    if (items !== undefined) walk(items, `${path}[]`, cardinality * (typeof s['maxItems'] === 'number' ? s['maxItems'] : Infinity));
    const ap = child(s, 'additionalProperties');
    if (ap !== undefined) walk(ap, `${path}{}`, cardinality * (typeof s['maxProperties'] === 'number' ? s['maxProperties'] : Infinity));
  };
  walk(root, '', 1);
  return out;
}

// ---------------------------------------------------------------------------
// CRD-level checks (names, versions, printer columns, selectable fields)

function crdProblems(crd: Rec, kind: WeirKind): string[] {
  const problems: string[] = [];
  const spec = rec(crd['spec'], 'spec');
  const names = rec(spec['names'], 'names');
  const versions = spec['versions'];
  if (crd['apiVersion'] !== 'apiextensions.k8s.io/v1') problems.push('apiVersion must be apiextensions.k8s.io/v1');
  if (rec(crd['metadata'], 'metadata')['name'] !== `${String(names['plural'])}.${String(spec['group'])}`) problems.push('metadata.name must be <plural>.<group>');
  if (names['kind'] !== kind || spec['group'] !== 'weir.dev') problems.push('kind or group');
  if (!Array.isArray(versions) || versions.length !== 1) problems.push('exactly one version');
  const v = versionOf(crd);
  if (v['name'] !== 'v1alpha1' || v['served'] !== true || v['storage'] !== true) problems.push('v1alpha1 must be served and stored');
  if (v['subresources'] !== undefined) problems.push('no subresources are defined (no status writer)');
  const root = rootSchema(crd);
  const resolve = (jsonPath: string): Schema | undefined => {
    // Printer column paths: dot notation, `\.` escapes a dot inside a key.
    if (!jsonPath.startsWith('.')) return undefined;
    const parts = jsonPath.slice(1).split(/(?<!\\)\./).map((p) => p.replace(/\\\./g, '.'));
    let cur: Schema | undefined = root;
    for (const p of parts) {
      if (cur === undefined) return undefined;
      if (p === 'metadata' && cur === root) return { type: 'object' };
      cur = props(cur)[p] ?? child(cur, 'additionalProperties');
    }
    return cur;
  };
  const columns = v['additionalPrinterColumns'];
  if (Array.isArray(columns)) {
    for (const c of columns) {
      const col = rec(c, 'column');
      if (!['integer', 'number', 'string', 'boolean', 'date'].includes(String(col['type']))) problems.push(`column ${String(col['name'])}: bad type`);
      if (resolve(String(col['jsonPath'])) === undefined) problems.push(`column ${String(col['name'])}: jsonPath ${String(col['jsonPath'])} is not in the schema`);
    }
  }
  const selectable = v['selectableFields'];
  if (Array.isArray(selectable)) {
    for (const f of selectable) {
      const s = resolve(String(rec(f, 'selectableField')['jsonPath']));
      if (s === undefined || !['string', 'integer', 'boolean'].includes(String(s['type']))) problems.push('selectable fields must be scalar schema fields');
    }
  }
  return problems;
}
function agentAccepts(obj: unknown): boolean {
  return validateObject(obj).ok;
}

// ---------------------------------------------------------------------------
// Policies

function egressPolicy(): Rec {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name: 'train-data', namespace: 'ml' },
    spec: {
      podSelector: { matchLabels: { 'weir.dev/domain': 'train-data' } },
      mode: 'Enforce',
      egress: [
        {
          to: [
            { podSelector: { matchLabels: { app: 'feature-store' } } },
            { namespaceSelector: { matchExpressions: [{ key: 'weir.dev/tier', operator: 'In', values: ['data'] }] }, podSelector: {} },
            { ipBlock: { cidr: '10.20.0.0/16', except: ['10.20.9.0/24'] } },
            { fqdn: { matchName: 'api.internal.example.com' } },
            { fqdn: { matchPattern: '*.models.example.com' } },
          ],
          ports: [{ protocol: 'TCP', port: 443 }, { port: 'dns-tcp' }, { protocol: 'UDP', port: 30000, endPort: 30100 }],
        },
      ],
      deny: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0' } }, { ipBlock: { cidr: '::/0', except: ['fd00::/8'] } }] }],
    },
  };
}

function clusterPolicy(): Rec {
  return {
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'ClusterEgressPolicy',
    metadata: { name: 'no-public-storage' },
    spec: {
      namespaceSelector: { matchExpressions: [{ key: 'weir.dev/tier', operator: 'In', values: ['serving', 'training'] }] },
      podSelector: {},
      mode: 'Audit',
      deny: [{ to: [{ fqdn: { matchPattern: '*.storage.example.net' } }, { ipBlock: { cidr: '2001:db8::/32', except: ['2001:db8:1::/48'] } }] }],
    },
  };
}

/** Sets `value` at a dotted path with [i] indices (`spec.egress[0].to[1].ipBlock`); undefined deletes. */
function withValue(base: Rec, path: string, value: unknown): Rec {
  const o = clone(base);
  const keys = path.split('.').flatMap((p) => p.split(/\[(\d+)\]/).filter((x) => x !== '').map((x) => (/^\d+$/.test(x) ? Number(x) : x)));
  let cur: unknown = o;
  for (const k of keys.slice(0, -1)) cur = (cur as Record<string | number, unknown>)[k];
  const last = keys[keys.length - 1];
  if (last === undefined) throw new Error('empty path');
  const target = cur as Record<string | number, unknown>;
  if (value === undefined) delete target[last];
  else target[last] = value;
  return o;
}

function peerPolicy(peer: unknown): Rec {
  return withValue(egressPolicy(), 'spec.egress', [{ to: [peer] }]);
}

function portPolicy(port: unknown): Rec {
  return withValue(egressPolicy(), 'spec.egress', [{ ports: [port] }]);
}

// ---------------------------------------------------------------------------
// Tests

describe('CRD schemas', () => {
  for (const kind of ['EgressPolicy', 'ClusterEgressPolicy'] as const) {
    test(`${kind}: the CRD passes the API server's structural-schema and CRD checks`, () => {
      expect(structuralProblems(rootSchema(crds[kind]))).toEqual([]);
      expect(crdProblems(crds[kind], kind)).toEqual([]);
    });

    test(`${kind}: every CEL rule fits the API server's cost budget`, () => {
      const costs = ruleCosts(rootSchema(crds[kind]));
      const over = costs.filter((c) => !(c.total <= STATIC_RULE_LIMIT));
      expect(over.map((c) => `${c.path}: ${c.cost} x ${c.cardinality}`)).toEqual([]);
      const total = costs.reduce((a, c) => a + c.total, 0);
      expect(total).toBeLessThanOrEqual(STATIC_CRD_LIMIT);
    });
  }

  test('the two CRDs share every schema but namespaceSelector and the descriptions', () => {
    const strip = (s: unknown): unknown =>
      Array.isArray(s) ? s.map(strip) : isRec(s) ? Object.fromEntries(Object.entries(s).filter(([k]) => k !== 'description').map(([k, v]) => [k, strip(v)])) : s;
    const ns = rootSchema(crds.EgressPolicy);
    const cl = rootSchema(crds.ClusterEgressPolicy);
    for (const f of ['podSelector', 'mode', 'egress', 'deny']) {
      expect(strip(schemaAt(cl, ['spec', f])), f).toEqual(strip(schemaAt(ns, ['spec', f])));
    }
    expect(strip(schemaAt(cl, ['spec', 'namespaceSelector']))).toEqual(strip(schemaAt(ns, ['spec', 'podSelector'])));
    expect(strip(schemaAt(ns, ['spec', 'egress', '[]']))).toEqual(strip(schemaAt(ns, ['spec', 'deny', '[]'])));
    expect(schemaAt(cl, ['spec'])['required']).toEqual(['podSelector', 'namespaceSelector']);
    expect(schemaAt(ns, ['spec'])['required']).toEqual(['podSelector']);
    expect(props(schemaAt(ns, ['spec']))['namespaceSelector']).toBeUndefined();
    expect(schemaAt(cl, ['spec'])['x-kubernetes-validations']).toEqual(schemaAt(ns, ['spec'])['x-kubernetes-validations']);
  });

  test('the peer selectors use the LabelSelector shape, with the limits the cost budget allows', () => {
    const ns = rootSchema(crds.EgressPolicy);
    const peer = ['spec', 'egress', '[]', 'to', '[]'];
    for (const sel of ['podSelector', 'namespaceSelector']) {
      const s = schemaAt(ns, [...peer, sel]);
      expect(Object.keys(props(s)).sort()).toEqual(['matchExpressions', 'matchLabels']);
      expect(s['x-kubernetes-map-type']).toBe('atomic');
      expect(Object.keys(props(schemaAt(ns, [...peer, sel, 'matchExpressions', '[]']))).sort()).toEqual(['key', 'operator', 'values']);
      expect(schemaAt(ns, [...peer, sel, 'matchExpressions', '[]'])['required']).toEqual(['key', 'operator']);
    }
  });

  test('defaults: mode Enforce and protocol TCP are filled in', () => {
    const p = withValue(withValue(egressPolicy(), 'spec.mode', undefined), 'spec.egress', [{ ports: [{ port: 53 }, { protocol: null, port: 80 }] }]);
    const a = admit(p);
    expect(a.errors).toEqual([]);
    expect(rec(rec(a.stored, 'o')['spec'], 'spec')['mode']).toBe('Enforce');
    expect(JSON.stringify(a.stored)).toContain('"ports":[{"port":53,"protocol":"TCP"},{"port":80,"protocol":"TCP"}]');
  });
});

describe('the structural checker refuses what the API server refuses', () => {
  const ok: Schema = { type: 'object', properties: { spec: { type: 'object', properties: { a: { type: 'string' } } } } };
  const cases: [string, Schema][] = [
    ['a node without type', { type: 'object', properties: { spec: { properties: { a: { type: 'string' } } } } }],
    ['properties with additionalProperties', { type: 'object', properties: { spec: { type: 'object', properties: { a: { type: 'string' } }, additionalProperties: { type: 'string' } } } }],
    ['type inside anyOf', { type: 'object', properties: { spec: { type: 'string', anyOf: [{ type: 'string', maxLength: 3 }] } } }],
    ['an unknown property inside allOf', { type: 'object', properties: { spec: { type: 'object', allOf: [{ properties: { b: { maxLength: 1 } } }] } } }],
    ['a default that fails its schema', { type: 'object', properties: { spec: { type: 'string', enum: ['A', 'B'], default: 'C' } } }],
    ['a default with an unknown field', { type: 'object', properties: { spec: { type: 'object', properties: { a: { type: 'string' } }, default: { b: 'x' } } } }],
    ['metadata constraints beyond name', { type: 'object', properties: { metadata: { type: 'object', properties: { labels: { type: 'object' } } } } }],
    ['int-or-string with a type', { type: 'object', properties: { spec: { type: 'string', 'x-kubernetes-int-or-string': true } } }],
    ['an array without items', { type: 'object', properties: { spec: { type: 'array' } } }],
    ['a misspelt keyword', { type: 'object', properties: { spec: { type: 'array', maxitems: 3, items: { type: 'string' } } } }],
    ['a non-RE2 pattern', { type: 'object', properties: { spec: { type: 'string', pattern: '^(?=a)' } } }],
    ['a CEL rule that does not parse', { type: 'object', properties: { spec: { type: 'object', 'x-kubernetes-validations': [{ rule: 'self.a ==' }] } } }],
    ['a fieldPath to nowhere', { type: 'object', properties: { spec: { type: 'object', properties: { a: { type: 'string' } }, 'x-kubernetes-validations': [{ rule: 'true', fieldPath: '.b' }] } } }],
    ['uniqueItems', { type: 'object', properties: { spec: { type: 'array', uniqueItems: true, items: { type: 'string' } } } }],
  ];
  test('a minimal valid schema passes', () => {
    expect(structuralProblems(ok)).toEqual([]);
  });
  test.each(cases)('refuses %s', (_name, schema) => {
    expect(structuralProblems(schema)).not.toEqual([]);
  });
  test('a CEL rule under an unbounded list, or too costly, blows the budget', () => {
    const unbounded: Schema = { type: 'array', items: { type: 'object', properties: { a: { type: 'string', maxLength: 10 } }, 'x-kubernetes-validations': [{ rule: 'self.a == "x"' }] } };
    expect(ruleCosts(unbounded)[0]?.total).toBe(Infinity);
    const big: Schema = { type: 'array', maxItems: 10_000, items: { type: 'array', maxItems: 10_000, items: { type: 'object', properties: { a: { type: 'string', maxLength: 10 } }, 'x-kubernetes-validations': [{ rule: 'self.a == "x"' }] } } };
    expect(ruleCosts(big)[0]?.total).toBeGreaterThan(STATIC_RULE_LIMIT);
    expect(() => estimateRuleCost('self.a.startsWith("x")', { type: 'object', properties: { a: { type: 'string', maxLength: 3 } } })).toThrow(/not in the cost model/);
  });
});

describe('CRDs accept what the agent accepts', () => {
  test('every weir policy in deploy/examples is accepted by both', () => {
    const files: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(dir, e.name));
        else if (/\.ya?ml$/.test(e.name)) files.push(join(dir, e.name));
      }
    };
    walk(join(ROOT, 'deploy/examples'));
    let seen = 0;
    for (const f of files) {
      for (const doc of YAML.parseAllDocuments(readFileSync(f, 'utf8'))) {
        const o: unknown = doc.toJS();
        if (!isRec(o) || o['apiVersion'] !== 'weir.dev/v1alpha1') continue;
        seen++;
        expect(validateObject(o).ok, f).toBe(true);
        expect(admit(o).errors, f).toEqual([]);
      }
    }
    expect(seen).toBeGreaterThan(0);
  });

  test('the DESIGN.md-style policies are accepted by both', () => {
    for (const p of [egressPolicy(), clusterPolicy()]) {
      expect(agentAccepts(p)).toBe(true);
      expect(admit(p).errors).toEqual([]);
    }
  });

  test('edge cases both accept', () => {
    const accepted: [string, Rec][] = [
      ['an empty allow rule (all egress)', withValue(egressPolicy(), 'spec.egress', [{}])],
      ['no rules at all (deny all)', withValue(withValue(egressPolicy(), 'spec.egress', undefined), 'spec.deny', undefined)],
      ['podSelector and namespaceSelector in one peer', peerPolicy({ podSelector: {}, namespaceSelector: {} })],
      ['host bits in cidr', peerPolicy({ ipBlock: { cidr: '10.1.2.3/8', except: ['10.1.0.0/16'] } })],
      ['an IPv6 except', peerPolicy({ ipBlock: { cidr: 'fd00::/8', except: ['fd00:1::/32', 'fdff:ffff::1/128'] } })],
      ['an embedded IPv4 in IPv6', peerPolicy({ ipBlock: { cidr: '::10.0.0.0/104' } })],
      ['a trailing dot and upper case in matchName', peerPolicy({ fqdn: { matchName: 'API.Example.COM.' } })],
      ['an underscore label', peerPolicy({ fqdn: { matchName: '_dmarc.example.com' } })],
      ['a pattern without a wildcard', peerPolicy({ fqdn: { matchPattern: 'example.com' } })],
      ['a 253-character name plus its dot', peerPolicy({ fqdn: { matchName: `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}.` } })],
      ['a named port with digits first', portPolicy({ port: '8080-tcp' })],
      ['a port range of one port', portPolicy({ port: 80, endPort: 80 })],
      ['SCTP', portPolicy({ protocol: 'SCTP', port: 9 })],
      ['Exists with an empty values list', withValue(egressPolicy(), 'spec.podSelector', { matchExpressions: [{ key: 'a', operator: 'Exists', values: [] }] })],
      ['an empty label value', withValue(egressPolicy(), 'spec.podSelector', { matchLabels: { a: '' } })],
      ['a 253-character key prefix', withValue(egressPolicy(), 'spec.podSelector', { matchLabels: { [`${'a'.repeat(249)}.com/x`]: 'y' } })],
      ['null where absent is meant', withValue(withValue(egressPolicy(), 'spec.mode', null), 'spec.egress', [{ to: null, ports: [{ port: null, protocol: null }] }])],
      ['10,000 peers in one policy', withValue(withValue(egressPolicy(), 'spec.deny', undefined), 'spec.egress', Array.from({ length: 100 }, () => ({ to: Array.from({ length: 100 }, () => ({ ipBlock: { cidr: '10.0.0.0/8' } })) })))],
    ];
    for (const [name, p] of accepted) {
      expect(agentAccepts(p), name).toBe(true);
      expect(admit(p).errors, name).toEqual([]);
    }
  });
});

describe('CRDs refuse what the agent refuses', () => {
  const long = (n: number): string => 'a'.repeat(n);
  const cases: [string, Rec][] = [
    ['no spec', withValue(egressPolicy(), 'spec', undefined)],
    ['no podSelector', withValue(egressPolicy(), 'spec.podSelector', undefined)],
    ['a ClusterEgressPolicy without namespaceSelector', withValue(clusterPolicy(), 'spec.namespaceSelector', undefined)],
    ['an EgressPolicy with namespaceSelector', withValue(egressPolicy(), 'spec.namespaceSelector', {})],
    ['mode in lower case', withValue(egressPolicy(), 'spec.mode', 'enforce')],
    ['a misspelt spec field', withValue(egressPolicy(), 'spec.podselector', {})],
    ['an unknown field in a peer', peerPolicy({ ipBlock: { cidr: '10.0.0.0/8' }, cidrs: [] })],
    ['egress that is not a list', withValue(egressPolicy(), 'spec.egress', { to: [] })],
    ['a null rule', withValue(egressPolicy(), 'spec.egress', [null])],
    ['protocol in lower case', portPolicy({ protocol: 'tcp', port: 80 })],
    ['protocol ICMP', portPolicy({ protocol: 'ICMP' })],
    ['port 0', portPolicy({ port: 0 })],
    ['port 65536', portPolicy({ port: 65536 })],
    ['a quoted port number', portPolicy({ port: '80' })],
    ['a fractional port', portPolicy({ port: 80.5 })],
    ['a named port in upper case', portPolicy({ port: 'HTTP' })],
    ['a named port with --', portPolicy({ port: 'a--b' })],
    ['a named port of 16 characters', portPolicy({ port: 'abcdefghijklmnop' })],
    ['endPort without port', portPolicy({ endPort: 90 })],
    ['endPort with a named port', portPolicy({ port: 'http', endPort: 90 })],
    ['endPort below port', portPolicy({ port: 100, endPort: 90 })],
    ['endPort 70000', portPolicy({ port: 100, endPort: 70000 })],
    ['an empty peer', peerPolicy({})],
    ['podSelector and ipBlock in one peer', peerPolicy({ podSelector: {}, ipBlock: { cidr: '10.0.0.0/8' } })],
    ['ipBlock and fqdn in one peer', peerPolicy({ ipBlock: { cidr: '10.0.0.0/8' }, fqdn: { matchName: 'a.com' } })],
    ['ipBlock without cidr', peerPolicy({ ipBlock: { except: ['10.0.0.0/16'] } })],
    ['a /33', peerPolicy({ ipBlock: { cidr: '10.0.0.0/33' } })],
    ['a leading zero in an octet', peerPolicy({ ipBlock: { cidr: '010.0.0.0/8' } })],
    ['a leading zero in the prefix length', peerPolicy({ ipBlock: { cidr: '10.0.0.0/08' } })],
    ['an address without prefix length', peerPolicy({ ipBlock: { cidr: '10.0.0.1' } })],
    ['an IPv6 zone', peerPolicy({ ipBlock: { cidr: 'fe80::1%eth0/64' } })],
    ['except outside cidr', peerPolicy({ ipBlock: { cidr: '10.0.0.0/16', except: ['10.1.0.0/24'] } })],
    ['except equal to cidr', peerPolicy({ ipBlock: { cidr: '10.0.0.0/16', except: ['10.0.0.0/16'] } })],
    ['except of the other family', peerPolicy({ ipBlock: { cidr: '0.0.0.0/0', except: ['fd00::/8'] } })],
    ['except that is not a CIDR', peerPolicy({ ipBlock: { cidr: '10.0.0.0/8', except: ['10.1.0.0'] } })],
    ['fqdn with matchName and matchPattern', peerPolicy({ fqdn: { matchName: 'a.com', matchPattern: '*.a.com' } })],
    ['fqdn with neither', peerPolicy({ fqdn: {} })],
    ['a wildcard in matchName', peerPolicy({ fqdn: { matchName: '*.a.com' } })],
    ['a bare * pattern', peerPolicy({ fqdn: { matchPattern: '*' } })],
    ['a wildcard in the middle', peerPolicy({ fqdn: { matchPattern: 'a.*.com' } })],
    ['a partial wildcard label', peerPolicy({ fqdn: { matchPattern: '*a.example.com' } })],
    ['two wildcards', peerPolicy({ fqdn: { matchPattern: '*.*.example.com' } })],
    ['a 64-character DNS label', peerPolicy({ fqdn: { matchName: `${long(64)}.com` } })],
    ['a 254-character name', peerPolicy({ fqdn: { matchName: `${long(63)}.${long(63)}.${long(63)}.${long(62)}` } })],
    ['an empty DNS label', peerPolicy({ fqdn: { matchName: 'a..com' } })],
    ['a DNS label starting with -', peerPolicy({ fqdn: { matchName: '-a.example.com' } })],
    ['an empty matchName', peerPolicy({ fqdn: { matchName: '' } })],
    ['a label key with a space', withValue(egressPolicy(), 'spec.podSelector', { matchLabels: { 'bad key': 'x' } })],
    ['a label key with two slashes', peerPolicy({ podSelector: { matchLabels: { 'a/b/c': 'x' } } })],
    ['a 254-character key prefix', peerPolicy({ namespaceSelector: { matchLabels: { [`${long(250)}.com/x`]: 'y' } } })],
    ['a 64-character key name', withValue(clusterPolicy(), 'spec.namespaceSelector', { matchLabels: { [long(64)]: 'y' } })],
    ['a label value starting with -', withValue(egressPolicy(), 'spec.podSelector', { matchLabels: { a: '-x' } })],
    ['a 64-character label value', peerPolicy({ podSelector: { matchLabels: { a: long(64) } } })],
    ['a numeric label value', withValue(egressPolicy(), 'spec.podSelector', { matchLabels: { a: 1 } })],
    ['operator Equals', withValue(egressPolicy(), 'spec.podSelector', { matchExpressions: [{ key: 'a', operator: 'Equals', values: ['x'] }] })],
    ['In without values', peerPolicy({ podSelector: { matchExpressions: [{ key: 'a', operator: 'In' }] } })],
    ['NotIn with empty values', withValue(egressPolicy(), 'spec.podSelector', { matchExpressions: [{ key: 'a', operator: 'NotIn', values: [] }] })],
    ['Exists with values', peerPolicy({ namespaceSelector: { matchExpressions: [{ key: 'a', operator: 'Exists', values: ['x'] }] } })],
    ['a requirement without key', withValue(egressPolicy(), 'spec.podSelector', { matchExpressions: [{ operator: 'Exists' }] })],
    ['a requirement key with a bad prefix', withValue(egressPolicy(), 'spec.podSelector', { matchExpressions: [{ key: 'Upper.Case/x', operator: 'Exists' }] })],
    ['a bad requirement value', withValue(egressPolicy(), 'spec.podSelector', { matchExpressions: [{ key: 'a', operator: 'In', values: ['a b'] }] })],
    ['10,001 peers in one policy', withValue(withValue(egressPolicy(), 'spec.egress', Array.from({ length: 100 }, () => ({ to: Array.from({ length: 100 }, () => ({ ipBlock: { cidr: '10.0.0.0/8' } })) }))), 'spec.deny', [{ to: [{ fqdn: { matchName: 'a.com' } }] }])],
    ['10,001 port entries in one policy', withValue(withValue(egressPolicy(), 'spec.egress', Array.from({ length: 100 }, () => ({ ports: Array.from({ length: 100 }, (_, i) => ({ port: i + 1 })) }))), 'spec.deny', [{ ports: [{ port: 1 }] }])],
    ['10,400 except entries in one policy', withValue(egressPolicy(), 'spec.egress', Array.from({ length: 4 }, () => ({ to: Array.from({ length: 100 }, (_, i) => ({ ipBlock: { cidr: '10.0.0.0/8', except: Array.from({ length: 26 }, (_, j) => `10.${i}.${j}.0/24`) } })) })))],
  ];

  test('the table is long enough to mean something', () => {
    expect(cases.length).toBeGreaterThanOrEqual(20);
  });

  test.each(cases)('%s', (_name, p) => {
    expect(agentAccepts(p)).toBe(false);
    const a = admit(p);
    expect(a.ok, `admitted as ${JSON.stringify(a.stored).slice(0, 300)}`).toBe(false);
  });
});

describe('deliberate differences', () => {
  test('per-list limits the CEL cost budget imposes: refused by the CRD, accepted by the agent', () => {
    const manyRules = withValue(egressPolicy(), 'spec.egress', Array.from({ length: 101 }, () => ({})));
    const manyExcepts = peerPolicy({ ipBlock: { cidr: '10.0.0.0/8', except: Array.from({ length: 65 }, (_, i) => `10.${i}.0.0/16`) } });
    const manyLabels = peerPolicy({ podSelector: { matchLabels: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v'])) } });
    for (const p of [manyRules, manyExcepts, manyLabels]) {
      expect(agentAccepts(p)).toBe(true);
      expect(admit(p).ok).toBe(false);
    }
  });

  test('IPv4-mapped IPv6 CIDRs: refused by isCIDR, accepted by the agent', () => {
    const p = peerPolicy({ ipBlock: { cidr: '::ffff:10.0.0.0/104' } });
    expect(agentAccepts(p)).toBe(true);
    expect(admit(p).ok).toBe(false);
  });

  test('a null label value is dropped by the API server before validation, refused by the agent', () => {
    const p = peerPolicy({ podSelector: { matchLabels: { app: null } } });
    expect(agentAccepts(p)).toBe(false);
    const a = admit(p);
    expect(a.ok).toBe(true);
    expect(JSON.stringify(a.stored)).toContain('"to":[{"podSelector":{"matchLabels":{}}}]');
  });

  test('unknown fields: refused under strict field validation, dropped under Warn', () => {
    const p = withValue(egressPolicy(), 'spec.dney', [{}]);
    expect(agentAccepts(p)).toBe(false);
    expect(admit(p, 'Strict').ok).toBe(false);
    expect(admit(p, 'Warn').ok).toBe(true);
  });
});

// ---------------------------------------------------------------------------
// Random policies: the CRDs and validate.ts agree on acceptance.
//
// The generator keeps to the ground where no deliberate difference applies:
// lists far below the per-list limits, no IPv4-mapped IPv6, no null label
// values, strict field validation. Everything else is fair game: valid and
// invalid label keys and values, operators, peers with zero to four kinds,
// CIDRs and except lists inside, outside and across families, DNS names and
// patterns, ports, names and ranges, nulls where absent is meant.

/** Mostly valid values, sometimes a wrong one: most policies then hold at most one mistake, so each check is reached. */
function mostly<T, U>(valid: readonly T[], invalid: readonly U[]): fc.Arbitrary<T | U> {
  return fc.oneof({ arbitrary: fc.constantFrom(...valid), weight: 12 }, { arbitrary: fc.constantFrom(...invalid), weight: 1 });
}

const labelKey = mostly(
  ['app', 'weir.dev/domain', 'kubernetes.io/metadata.name', 'a.b-c_d', 'x', 'A1', 'a'.repeat(63), `${'p'.repeat(253)}/x`],
  ['bad key', '-app', 'app-', 'a/b/c', 'Upper.Case/x', '/x', 'x/', '', 'a'.repeat(64), `${'p'.repeat(254)}/x`],
);
const labelValue = mostly(['', 'v', 'train-data', 'a.b_c-d', '0', 'a'.repeat(63)], ['a'.repeat(64), '-v', 'v-', 'a b', 'ü']);
const requirement = fc.oneof(
  { arbitrary: fc.record({ key: labelKey, operator: fc.constantFrom('In', 'NotIn'), values: fc.array(labelValue, { minLength: 1, maxLength: 3 }) }), weight: 6 },
  { arbitrary: fc.record({ key: labelKey, operator: fc.constantFrom('Exists', 'DoesNotExist') }), weight: 4 },
  {
    arbitrary: fc.record(
      { key: labelKey, operator: fc.constantFrom('In', 'NotIn', 'Exists', 'DoesNotExist', 'in', 'Equals'), values: fc.oneof(fc.constant(null), fc.array(labelValue, { maxLength: 2 })) },
      { requiredKeys: [] },
    ),
    weight: 1,
  },
);
const selector = fc.record(
  { matchLabels: fc.oneof(fc.constant(null), fc.dictionary(labelKey, labelValue, { maxKeys: 3 })), matchExpressions: fc.oneof(fc.constant(null), fc.array(requirement, { maxLength: 2 })) },
  { requiredKeys: [] },
);
/** Each cidr with except entries strictly inside it, and others: equal, wider, outside, of the other family, malformed. */
const cidrs: Record<string, { inside: readonly string[]; other: readonly string[] }> = {
  '10.0.0.0/8': { inside: ['10.1.0.0/16', '10.2.3.4/32', '10.255.0.0/16'], other: ['10.0.0.0/8', '10.0.0.0/7', '11.0.0.0/16', 'fd00::/16', '10.1.0.0', '10.1.0.0/33'] },
  '10.1.2.3/16': { inside: ['10.1.0.0/24', '10.1.255.255/32'], other: ['10.2.0.0/24', '10.1.0.0/16'] },
  '0.0.0.0/0': { inside: ['10.0.0.0/8', '192.168.0.0/16', '0.0.0.0/1'], other: ['0.0.0.0/0', '::/1'] },
  '::/0': { inside: ['fd00::/8', '2001:db8::/32', '::1/128'], other: ['::/0', '10.0.0.0/8'] },
  'fd00::/8': { inside: ['fd00:1::/32', 'fdff::1/128', 'FD00:ABCD::/32'], other: ['fe00::/8', 'fd00::/8', 'fd00::/07'] },
  '2001:db8::/32': { inside: ['2001:db8:1::/48', '2001:db8:0:0:0:0:0:1/128'], other: ['2001:db9::/48', '2001:db8::/33'] },
  '::10.0.0.0/104': { inside: ['::10.1.0.0/112'], other: ['::11.0.0.0/112'] },
};
const badCidrs = ['10.0.0.0/33', '010.0.0.0/8', '10.0.0.0/08', '10.0.0.1', 'fd00::/129', 'fe80::1%eth0/64', 'x.y.z.w/8', '', '1:2:3:4:5:6:7:8:9/64', '::1::/64'];
const ipBlock = fc.oneof(
  {
    arbitrary: fc.constantFrom(...Object.keys(cidrs)).chain((cidr) => {
      const { inside, other } = cidrs[cidr] ?? { inside: [], other: [] };
      return fc.record(
        {
          cidr: fc.constant(cidr),
          except: fc.oneof(
            { arbitrary: fc.subarray([...inside], { maxLength: Math.min(2, inside.length) }), weight: 4 },
            { arbitrary: fc.tuple(fc.subarray([...inside], { maxLength: 1 }), fc.constantFrom(...other)).map(([a, b]) => [...a, b]), weight: 1 },
            fc.constant(null),
          ),
        },
        { requiredKeys: ['cidr'] },
      );
    }),
    weight: 12,
  },
  { arbitrary: fc.record({ cidr: fc.constantFrom(...badCidrs), except: fc.constant(['10.1.0.0/16']) }, { requiredKeys: [] }), weight: 1 },
);
const long4 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`;
const dnsName = mostly(
  ['example.com', 'api.internal.example.com', 'API.Example.COM.', '_dmarc.example.com', 'a', '1.2.3.4', 'a_b.com', long4, `${long4}.`],
  ['a..b', '-a.com', 'a-.com', '*.example.com', '', '.', `${'a'.repeat(64)}.com`, `${long4}d`, 'exa mple.com'],
);
const dnsPattern = mostly(
  // `*.${long4}` is 255 characters: both refuse any string over 254.
  ['*.models.example.com', '*.example.com.', 'example.com', `*.${long4.slice(1)}`, '*.a'],
  ['*', '*.', '**.example.com', '*a.example.com', 'a.*.com', '*.*.example.com', '*.-a.com', `*.${long4}`],
);
const fqdn = fc.oneof(
  { arbitrary: fc.record({ matchName: dnsName }), weight: 5 },
  { arbitrary: fc.record({ matchPattern: dnsPattern }), weight: 5 },
  { arbitrary: fc.record({ matchName: fc.oneof(fc.constant(null), dnsName), matchPattern: fc.oneof(fc.constant(null), dnsPattern) }, { requiredKeys: [] }), weight: 1 },
);
const peer = fc.oneof(
  { arbitrary: fc.record({ podSelector: selector, namespaceSelector: selector }, { requiredKeys: [] }), weight: 4 },
  { arbitrary: fc.record({ ipBlock }), weight: 4 },
  { arbitrary: fc.record({ fqdn }), weight: 4 },
  { arbitrary: fc.record({ podSelector: selector, namespaceSelector: selector, ipBlock, fqdn }, { requiredKeys: [] }), weight: 1 },
);
const portNumber = mostly([1, 53, 443, 8080, 65535], [0, -1, 65536]);
const port = fc.oneof(
  { arbitrary: fc.record({ protocol: mostly([null, 'TCP', 'UDP', 'SCTP'], ['tcp', 'ICMP']), port: fc.oneof(portNumber, mostly(['http', 'dns-tcp', '8080-tcp', 'abcdefghijklmno', 'a1'], ['HTTP', '80', 'a--b', '-x', 'x-', 'abcdefghijklmnop', ''])) }, { requiredKeys: [] }), weight: 6 },
  { arbitrary: fc.record({ protocol: fc.constantFrom('TCP', 'UDP'), port: portNumber, endPort: mostly([53, 443, 1000, 8080, 65535], [0, 65536]) }), weight: 3 },
  { arbitrary: fc.record({ port: fc.constantFrom(null, 'http', 80), endPort: fc.constantFrom(null, 80, 443) }, { requiredKeys: [] }), weight: 1 },
);
const rule = fc.record({ to: fc.oneof(fc.constant(null), fc.array(peer, { maxLength: 3 })), ports: fc.oneof(fc.constant(null), fc.array(port, { maxLength: 3 })) }, { requiredKeys: [] });
const policy = fc.boolean().chain((cluster) =>
  fc
    .record(
      {
        podSelector: fc.oneof({ arbitrary: selector, weight: 20 }, fc.constant(null)),
        namespaceSelector: selector,
        mode: mostly([null, 'Enforce', 'Audit'], ['enforce', 'Block']),
        egress: fc.array(rule, { maxLength: 3 }),
        deny: fc.array(rule, { maxLength: 2 }),
      },
      { requiredKeys: [] },
    )
    .chain((spec) =>
      // namespaceSelector: nearly always on a ClusterEgressPolicy, rarely (a mistake) on an EgressPolicy.
      fc.integer({ min: 0, max: 19 }).map((dice) => {
        const s: Rec = { ...spec };
        if ((cluster && dice === 0) || (!cluster && dice !== 0)) delete s['namespaceSelector'];
        if (cluster && s['namespaceSelector'] === undefined && dice !== 0) s['namespaceSelector'] = {};
        if (s['podSelector'] === undefined && dice < 19) s['podSelector'] = {};
        return {
          apiVersion: 'weir.dev/v1alpha1',
          kind: cluster ? 'ClusterEgressPolicy' : 'EgressPolicy',
          metadata: cluster ? { name: 'p' } : { name: 'p', namespace: 'ns' },
          spec: s as Json,
        };
      }),
    ),
);

describe('random policies', () => {
  test('the CRD admits a random policy exactly when validate.ts accepts it', () => {
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(policy, (p) => {
        const agent = validateObject(p);
        const api = admit(p);
        if (agent.ok) accepted++;
        else refused++;
        if (agent.ok !== api.ok) {
          const why = agent.ok ? api.errors.join('; ') : 'error' in agent ? agent.error.message : 'ignored kind';
          throw new Error(`validate.ts ${agent.ok ? 'accepts' : 'refuses'}, the CRD ${api.ok ? 'admits' : 'refuses'}: ${why}`);
        }
      }),
      // CRD_RUNS=100000 searches harder; 3000 keeps the suite quick.
      { numRuns: Number(process.env['CRD_RUNS'] ?? 3000) },
    );
    // Both outcomes must actually occur, or the property proves little.
    expect(accepted).toBeGreaterThan(500);
    expect(refused).toBeGreaterThan(500);
  });
});
