// Privilege checks for clear messages before a kernel call fails with EPERM.
import { readFileSync } from 'node:fs';

const CAP_NET_ADMIN = 12;
const CAP_SYS_ADMIN = 21;
const CAP_BPF = 39;

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

function effectiveCapabilities(): bigint {
  const status = readFileSync('/proc/self/status', 'utf8');
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  return m?.[1] !== undefined ? BigInt(`0x${m[1]}`) : 0n;
}

/**
 * Whether this process may load programs and attach them to cgroups:
 * CAP_SYS_ADMIN, or CAP_BPF together with CAP_NET_ADMIN (kernel 5.8+).
 */
export function hasBpfPrivileges(): boolean {
  const caps = effectiveCapabilities();
  const has = (cap: number): boolean => (caps & (1n << BigInt(cap))) !== 0n;
  return has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN));
}
