// Label selectors with exact Kubernetes semantics
// (k8s.io/apimachinery/pkg/labels, LabelSelectorAsSelector):
// - the selector is the AND of its requirements; `matchLabels {k: v}` is the
//   requirement `k In (v)`;
// - an empty selector ({}) matches every label set, including none at all;
// - `In` needs the key present with one of the values; `NotIn` matches when
//   the key is absent or its value is not listed; `Exists` needs the key;
//   `DoesNotExist` needs it absent.
// Validation (validate.ts) refuses `In`/`NotIn` without values; should one
// reach here anyway, `In ()` matches nothing and `NotIn ()` everything, which
// is what the set semantics say.
//
// Labels are read with Object.hasOwn: "constructor" is a valid label key and
// must not be found on Object.prototype.

import type { LabelSelector, LabelSelectorOperator } from './types.js';

export type LabelMatcher = (labels: Readonly<Record<string, string>> | undefined) => boolean;

interface Requirement {
  key: string;
  operator: LabelSelectorOperator;
  values: string[]; // sorted, deduplicated
}

/** The selector as a sorted list of requirements, matchLabels folded into `In`. */
function requirements(sel: LabelSelector): Requirement[] {
  const out: Requirement[] = [];
  for (const [key, value] of Object.entries(sel.matchLabels ?? {})) {
    out.push({ key, operator: 'In', values: [value] });
  }
  for (const e of sel.matchExpressions ?? []) {
    switch (e.operator) {
      case 'In':
      case 'NotIn':
        out.push({ key: e.key, operator: e.operator, values: [...new Set(e.values ?? [])].sort() });
        break;
      case 'Exists':
      case 'DoesNotExist':
        out.push({ key: e.key, operator: e.operator, values: [] });
        break;
      default: {
        const op: never = e.operator;
        throw new TypeError(`label selector: unknown operator ${JSON.stringify(op)}`);
      }
    }
  }
  return out;
}

function compare(a: Requirement, b: Requirement): number {
  if (a.key !== b.key) return a.key < b.key ? -1 : 1;
  if (a.operator !== b.operator) return a.operator < b.operator ? -1 : 1;
  const av = a.values.join('\u0000');
  const bv = b.values.join('\u0000');
  return av === bv ? 0 : av < bv ? -1 : 1;
}

function compileRequirement(r: Requirement): (labels: Readonly<Record<string, string>>) => boolean {
  const { key } = r;
  switch (r.operator) {
    case 'In': {
      if (r.values.length === 1) {
        const only = r.values[0];
        return (l) => Object.hasOwn(l, key) && l[key] === only;
      }
      const set = new Set(r.values);
      return (l) => {
        const v = Object.hasOwn(l, key) ? l[key] : undefined;
        return v !== undefined && set.has(v);
      };
    }
    case 'NotIn': {
      const set = new Set(r.values);
      return (l) => {
        const v = Object.hasOwn(l, key) ? l[key] : undefined;
        return v === undefined || !set.has(v);
      };
    }
    case 'Exists':
      return (l) => Object.hasOwn(l, key);
    case 'DoesNotExist':
      return (l) => !Object.hasOwn(l, key);
  }
}

const EMPTY: Readonly<Record<string, string>> = Object.freeze({});

/**
 * Compiles a selector into a predicate over a label set. `undefined` labels
 * are an empty label set (an object without `metadata.labels`).
 */
export function compileSelector(sel: LabelSelector): LabelMatcher {
  const reqs = requirements(sel).sort(compare);
  if (reqs.length === 0) return () => true;
  const tests = reqs.map(compileRequirement);
  if (tests.length === 1) {
    const [only] = tests;
    if (only !== undefined) return (labels) => only(labels ?? EMPTY);
  }
  return (labels) => {
    const l = labels ?? EMPTY;
    for (const t of tests) if (!t(l)) return false;
    return true;
  };
}

/**
 * A canonical string for a selector: two selectors with the same
 * requirements (in any order, with `matchLabels {k: v}` and
 * `k In (v)` counted as the same, value order and repeats ignored) get the
 * same key. It is a syntactic normal form, not a decision procedure: `k In
 * (a)` plus `k Exists` and `k In (a)` alone select the same pods but get
 * different keys, which only costs a duplicate compiled policy.
 * The empty selector's key is `[]`.
 */
export function selectorKey(sel: LabelSelector): string {
  const reqs = requirements(sel).sort(compare);
  const unique = reqs.filter((r, i) => i === 0 || compare(r, reqs[i - 1] ?? r) !== 0);
  return JSON.stringify(unique.map((r) => (r.values.length > 0 ? [r.key, r.operator, r.values] : [r.key, r.operator])));
}

/** Whether a selector is empty (selects everything). */
export function isEmptySelector(sel: LabelSelector): boolean {
  return Object.keys(sel.matchLabels ?? {}).length === 0 && (sel.matchExpressions ?? []).length === 0;
}
