// Privilege checks for clear messages before a kernel call fails with EPERM.
import { readFileSync } from 'node:fs';

const CAP_NET_ADMIN = 12;
const CAP_SYS_ADMIN = 21;
const CAP_PERFMON = 38;
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

// What each capability does for weir, and what the kernel does without it
// (measured on Linux 6.18, test/e2e/capabilities.test.ts, docs/capabilities.md).
const NEEDED: { cap: number; name: string; without: string }[] = [
  { cap: CAP_BPF, name: 'CAP_BPF', without: 'bpf(2) refuses to create maps and load programs' },
  {
    cap: CAP_PERFMON,
    name: 'CAP_PERFMON',
    without: "the verifier treats the loader as unprivileged and rejects weir_egress's pointer arithmetic and bpf_get_current_comm",
  },
  {
    cap: CAP_NET_ADMIN,
    name: 'CAP_NET_ADMIN',
    without: 'the kernel refuses to load the cgroup/connect and sendmsg programs and to attach any program to a cgroup',
  },
];

/**
 * For an error of a BPF load or attach: names the capabilities weir needs
 * that this process lacks, and what each one is for, or null when none is
 * missing (or CAP_SYS_ADMIN covers them). The kernel's own answer is a bare
 * EPERM/EACCES, and libbpf's hints (RLIMIT_MEMLOCK, CONFIG_BPF_SYSCALL) point
 * elsewhere on current kernels.
 */
export function missingCapabilityHint(capEff: bigint = effectiveCapabilities()): string | null {
  const has = (cap: number): boolean => (capEff & (1n << BigInt(cap))) !== 0n;
  if (has(CAP_SYS_ADMIN)) return null;
  const missing = NEEDED.filter((n) => !has(n.cap));
  if (missing.length === 0) return null;
  return (
    `the agent lacks ${missing.map((m) => m.name).join(', ')} (effective capabilities ${capEff.toString(16).padStart(16, '0')}): ` +
    `${missing.map((m) => `without ${m.name} ${m.without}`).join('; ')}. ` +
    'Run it as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (securityContext.capabilities.add: [BPF, PERFMON, NET_ADMIN])'
  );
}

/** Appends missingCapabilityHint() to an Error's message (keeping its code and verifier log); returns it. */
export function withCapabilityHint<T>(err: T): T {
  if (!(err instanceof Error)) return err;
  let hint: string | null;
  try {
    hint = missingCapabilityHint();
  } catch {
    return err; // no /proc: nothing to add
  }
  if (hint !== null && !err.message.includes(hint)) err.message = `${err.message}\n${hint}`;
  return err;
}
