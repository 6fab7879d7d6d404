// The verdict precedence, the same as bpf/lib/policy.h weir_decide(): the
// kernel tests check the two agree case by case.
import { BIT_A_ALLOW, BIT_A_DENY, BIT_E_ALLOW, BIT_E_DENY, SET_F_A_ISOLATED, SET_F_E_ISOLATED } from './compile.js';

export type Verdict = 'allow' | 'drop' | 'audit' | 'reply';
export type Reason =
  | 'not-isolated'
  | 'allow-rule'
  | 'deny-rule'
  | 'default-deny'
  | 'reply'
  | 'audit-deny-rule'
  | 'audit-default-deny'
  | 'no-policy-set'
  | 'l4-unknown'
  | 'not-compiled'
  | 'map-full';

// Codes as in enum weir_verdict / enum weir_reason (checked against the
// addon's ABI table in test/unit/abi.test.ts).
export const VERDICT_CODES: Record<Verdict, number> = { allow: 1, drop: 2, audit: 3, reply: 4 };
export const REASON_CODES: Record<Reason, number> = {
  'not-isolated': 1,
  'allow-rule': 2,
  'deny-rule': 3,
  'default-deny': 4,
  reply: 5,
  'audit-deny-rule': 6,
  'audit-default-deny': 7,
  'no-policy-set': 8,
  'l4-unknown': 9,
  'not-compiled': 10,
  'map-full': 11,
};
export const VERDICT_BY_CODE = invert(VERDICT_CODES);
export const REASON_BY_CODE = invert(REASON_CODES);

function invert<K extends string>(m: Record<K, number>): Map<number, K> {
  return new Map(Object.entries(m).map(([k, v]) => [v as number, k as K]));
}

export interface Decision {
  verdict: Verdict;
  reason: Reason;
}

export function decide(setFlags: number, bits: number): Decision {
  if (bits & BIT_E_DENY) return { verdict: 'drop', reason: 'deny-rule' };
  if (setFlags & SET_F_E_ISOLATED && !(bits & BIT_E_ALLOW)) return { verdict: 'drop', reason: 'default-deny' };
  if (bits & BIT_A_DENY) return { verdict: 'audit', reason: 'audit-deny-rule' };
  if (setFlags & (SET_F_E_ISOLATED | SET_F_A_ISOLATED) && !(bits & (BIT_E_ALLOW | BIT_A_ALLOW))) {
    return { verdict: 'audit', reason: 'audit-default-deny' };
  }
  return { verdict: 'allow', reason: setFlags & SET_F_E_ISOLATED ? 'allow-rule' : 'not-isolated' };
}
