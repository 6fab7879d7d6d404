import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { compileSelector, isEmptySelector, selectorKey } from '../../src/model/selectors.js';
import type { LabelSelector, LabelSelectorRequirement } from '../../src/model/types.js';

type Labels = Record<string, string> | undefined;

describe('compileSelector follows Kubernetes label selector semantics', () => {
  const cases: [string, LabelSelector, Labels, boolean][] = [
    ['an empty selector matches a labelled object', {}, { app: 'x' }, true],
    ['an empty selector matches an object with no labels', {}, undefined, true],
    ['an empty selector with empty lists matches everything', { matchLabels: {}, matchExpressions: [] }, {}, true],
    ['matchLabels matches a superset of its labels', { matchLabels: { app: 'x' } }, { app: 'x', tier: 'web' }, true],
    ['matchLabels does not match a different value', { matchLabels: { app: 'x' } }, { app: 'y' }, false],
    ['matchLabels does not match a missing key', { matchLabels: { app: 'x' } }, {}, false],
    ['matchLabels requires every pair (AND)', { matchLabels: { app: 'x', tier: 'web' } }, { app: 'x' }, false],
    ['matchLabels with an empty value matches only a present empty value', { matchLabels: { app: '' } }, { app: '' }, true],
    ['matchLabels with an empty value does not match an absent key', { matchLabels: { app: '' } }, {}, false],
    ['In matches one of its values', { matchExpressions: [{ key: 'env', operator: 'In', values: ['a', 'b'] }] }, { env: 'b' }, true],
    ['In does not match another value', { matchExpressions: [{ key: 'env', operator: 'In', values: ['a', 'b'] }] }, { env: 'c' }, false],
    ['In does not match an absent key', { matchExpressions: [{ key: 'env', operator: 'In', values: ['a'] }] }, {}, false],
    ['NotIn matches when the key is absent', { matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] }, {}, true],
    ['NotIn matches when labels are undefined', { matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] }, undefined, true],
    ['NotIn matches another value', { matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] }, { env: 'dev' }, true],
    ['NotIn does not match a listed value', { matchExpressions: [{ key: 'env', operator: 'NotIn', values: ['prod'] }] }, { env: 'prod' }, false],
    ['Exists matches a present key with an empty value', { matchExpressions: [{ key: 'gpu', operator: 'Exists' }] }, { gpu: '' }, true],
    ['Exists does not match an absent key', { matchExpressions: [{ key: 'gpu', operator: 'Exists' }] }, { other: 'x' }, false],
    ['DoesNotExist matches an absent key', { matchExpressions: [{ key: 'gpu', operator: 'DoesNotExist' }] }, {}, true],
    ['DoesNotExist does not match a present key', { matchExpressions: [{ key: 'gpu', operator: 'DoesNotExist' }] }, { gpu: '' }, false],
    [
      'matchLabels and matchExpressions are ANDed (both hold)',
      { matchLabels: { app: 'x' }, matchExpressions: [{ key: 'tier', operator: 'Exists' }] },
      { app: 'x', tier: 'db' },
      true,
    ],
    [
      'matchLabels and matchExpressions are ANDed (one fails)',
      { matchLabels: { app: 'x' }, matchExpressions: [{ key: 'tier', operator: 'Exists' }] },
      { app: 'x' },
      false,
    ],
    ['contradictory requirements match nothing', { matchLabels: { app: 'x' }, matchExpressions: [{ key: 'app', operator: 'In', values: ['y'] }] }, { app: 'x' }, false],
    ['a "constructor" key is not found on Object.prototype (DoesNotExist)', { matchExpressions: [{ key: 'constructor', operator: 'DoesNotExist' }] }, {}, true],
    ['a "constructor" key is not found on Object.prototype (Exists)', { matchExpressions: [{ key: 'constructor', operator: 'Exists' }] }, {}, false],
    ['a "toString" key is not found on Object.prototype (NotIn)', { matchExpressions: [{ key: 'toString', operator: 'NotIn', values: ['x'] }] }, {}, true],
    ['a "constructor" label present as an own key is found', { matchLabels: { constructor: 'x' } }, { constructor: 'x' }, true],
  ];

  test.each(cases)('%s', (_name, sel, labels, expected) => {
    expect(compileSelector(sel)(labels)).toBe(expected);
  });
});

// A deliberately naive evaluator, written straight from the Kubernetes
// documentation with arrays and linear scans, to check the compiled one.
function naiveMatches(sel: LabelSelector, labels: Labels): boolean {
  const pairs = Object.entries(labels ?? {});
  const has = (k: string): boolean => pairs.some(([key]) => key === k);
  const value = (k: string): string | undefined => pairs.find(([key]) => key === k)?.[1];
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) {
    if (!has(k) || value(k) !== v) return false;
  }
  for (const r of sel.matchExpressions ?? []) {
    const vals = r.values ?? [];
    if (r.operator === 'In' && !(has(r.key) && vals.some((v) => v === value(r.key)))) return false;
    if (r.operator === 'NotIn' && has(r.key) && vals.some((v) => v === value(r.key))) return false;
    if (r.operator === 'Exists' && !has(r.key)) return false;
    if (r.operator === 'DoesNotExist' && has(r.key)) return false;
  }
  return true;
}

const keyArb = fc.constantFrom('app', 'tier', 'weir.dev/domain', 'constructor', 'x');
const valueArb = fc.constantFrom('', 'a', 'b', 'c');
const labelsArb: fc.Arbitrary<Labels> = fc.option(fc.dictionary(keyArb, valueArb, { maxKeys: 5 }), { nil: undefined });
const requirementArb: fc.Arbitrary<LabelSelectorRequirement> = fc.oneof(
  fc.record({ key: keyArb, operator: fc.constantFrom('In' as const, 'NotIn' as const), values: fc.array(valueArb, { minLength: 1, maxLength: 3 }) }),
  fc.record({ key: keyArb, operator: fc.constantFrom('Exists' as const, 'DoesNotExist' as const) }),
);
const selectorArb: fc.Arbitrary<LabelSelector> = fc.record(
  { matchLabels: fc.dictionary(keyArb, valueArb, { maxKeys: 3 }), matchExpressions: fc.array(requirementArb, { maxLength: 4 }) },
  { requiredKeys: [] },
);

describe('compileSelector agrees with a naive reference evaluator', () => {
  test('for random selectors and label sets, compiled and naive evaluation give the same answer', () => {
    fc.assert(
      fc.property(selectorArb, fc.array(labelsArb, { minLength: 1, maxLength: 8 }), (sel, labelSets) => {
        const m = compileSelector(sel);
        for (const labels of labelSets) expect(m(labels)).toBe(naiveMatches(sel, labels));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('selectorKey is a canonical form', () => {
  test.each<[string, LabelSelector, LabelSelector]>([
    ['matchLabels {k: v} equals k In (v)', { matchLabels: { app: 'x' } }, { matchExpressions: [{ key: 'app', operator: 'In', values: ['x'] }] }],
    [
      'expression order does not matter',
      { matchExpressions: [{ key: 'a', operator: 'Exists' }, { key: 'b', operator: 'DoesNotExist' }] },
      { matchExpressions: [{ key: 'b', operator: 'DoesNotExist' }, { key: 'a', operator: 'Exists' }] },
    ],
    ['value order and repeats do not matter', { matchExpressions: [{ key: 'a', operator: 'In', values: ['y', 'x', 'y'] }] }, { matchExpressions: [{ key: 'a', operator: 'In', values: ['x', 'y'] }] }],
    ['matchLabels key order does not matter', { matchLabels: { a: '1', b: '2' } }, { matchLabels: { b: '2', a: '1' } }],
    ['empty lists equal an empty selector', { matchLabels: {}, matchExpressions: [] }, {}],
    ['a repeated requirement counts once', { matchExpressions: [{ key: 'a', operator: 'Exists' }, { key: 'a', operator: 'Exists' }] }, { matchExpressions: [{ key: 'a', operator: 'Exists' }] }],
  ])('equal selectors get equal keys: %s', (_name, a, b) => {
    expect(selectorKey(a)).toBe(selectorKey(b));
  });

  test.each<[string, LabelSelector, LabelSelector]>([
    ['empty vs Exists', {}, { matchExpressions: [{ key: 'a', operator: 'Exists' }] }],
    ['In vs NotIn', { matchExpressions: [{ key: 'a', operator: 'In', values: ['x'] }] }, { matchExpressions: [{ key: 'a', operator: 'NotIn', values: ['x'] }] }],
    ['different values', { matchLabels: { a: 'x' } }, { matchLabels: { a: 'y' } }],
    ['different keys', { matchLabels: { a: 'x' } }, { matchLabels: { b: 'x' } }],
    ['values that would collide if joined naively', { matchExpressions: [{ key: 'a', operator: 'In', values: ['x,y'] }] }, { matchExpressions: [{ key: 'a', operator: 'In', values: ['x', 'y'] }] }],
  ])('different selectors get different keys: %s', (_name, a, b) => {
    expect(selectorKey(a)).not.toBe(selectorKey(b));
  });

  test('selectors with equal keys select the same label sets', () => {
    fc.assert(
      fc.property(selectorArb, fc.array(labelsArb, { maxLength: 6 }), (sel, labelSets) => {
        // A reshuffled copy: expressions reversed, matchLabels rewritten as In.
        const shuffled: LabelSelector = {
          matchExpressions: [
            ...[...(sel.matchExpressions ?? [])].reverse().map((r) => (r.values ? { ...r, values: [...r.values].reverse() } : r)),
            ...Object.entries(sel.matchLabels ?? {}).map(([key, v]) => ({ key, operator: 'In' as const, values: [v] })),
          ],
        };
        expect(selectorKey(shuffled)).toBe(selectorKey(sel));
        const a = compileSelector(sel);
        const b = compileSelector(shuffled);
        for (const l of labelSets) expect(a(l)).toBe(b(l));
      }),
      { numRuns: 500 },
    );
  });

  test('isEmptySelector is true only for selectors without requirements', () => {
    expect(isEmptySelector({})).toBe(true);
    expect(isEmptySelector({ matchLabels: {}, matchExpressions: [] })).toBe(true);
    expect(isEmptySelector({ matchLabels: { a: 'b' } })).toBe(false);
  });
});
