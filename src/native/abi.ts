// The layout of bpf/include/weir_abi.h as the C++ compiler computed it.
// Encoders and decoders take every size, offset and code from here, so no
// number is mirrored by hand; the lookups throw when a name is missing.
import { type AbiInfo, loadAddon } from './addon.js';

export type { AbiInfo } from './addon.js';

/** Reads the table from the addon (once per call: keep the result). */
export function abi(): AbiInfo {
  return loadAddon().abi();
}

function pick(table: Record<string, number>, kind: string, name: string): number {
  const v = table[name];
  if (v === undefined) throw new Error(`weir ABI: no ${kind} '${name}' in weir_abi.h (native/abi.cc)`);
  return v;
}

export function sizeOf(info: AbiInfo, struct: string): number {
  return pick(info.sizes, 'struct', struct);
}

/** offsetOf(info, 'weir_event', 'dport') */
export function offsetOf(info: AbiInfo, struct: string, field: string): number {
  return pick(info.offsets, 'field', `${struct}.${field}`);
}

export function fieldSize(info: AbiInfo, struct: string, field: string): number {
  return pick(info.fieldSizes, 'field', `${struct}.${field}`);
}

export function abiConstant(info: AbiInfo, name: string): number {
  return pick(info.constants, 'constant', name);
}
