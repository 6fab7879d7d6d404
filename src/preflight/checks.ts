// `weir preflight`: does this node meet weir's requirements? Every check is
// a pure function of a PreflightEnv (file contents, capabilities, and the
// kernel's answers to a load and an attach), so a test can fake each missing
// requirement; realEnv() in real-env.ts is the node itself.
//
// The minimum kernel is that of the newest feature weir's objects and loader
// use (bpf/*.bpf.c, built with clang -mcpu=v3, no CO-RE, no vmlinux BTF):
//
//   cgroup_skb egress/ingress programs                          4.10
//   cgroup sock_addr connect4/6 | sendmsg4/6 hooks              4.17 | 4.18
//   bpf_skb_cgroup_id | bpf_skb_ancestor_cgroup_id              4.18 | 4.19
//   -mcpu=v3: JMP32 and ALU32 instructions                      5.1
//   __sk_buff->sk, bpf_sk_fullsock, bpf_sock dst_ip/dst_port    5.1
//   BTF-defined maps, .rodata `const volatile` settings         5.2
//   BPF_MAP_TYPE_SK_STORAGE + bpf_sk_storage_get in cgroup_skb  5.2
//   bounded loops (port-range search, IPv6 extension headers)   5.3
//   bpf_sock_addr->sk, bpf_sk_storage_get in sock_addr          5.3
//   bpf_get_current_ancestor_cgroup_id (and pid/comm) in
//     sock_addr programs                                        5.7
//   bpf_link attachment to cgroups (BPF_LINK_CREATE)            5.7
//   BPF_MAP_TYPE_RINGBUF (weir_events)                          5.8  <- minimum
//   CAP_BPF / CAP_PERFMON (else CAP_SYS_ADMIN)                  5.8
//   memcg accounting of BPF memory (else RLIMIT_MEMLOCK)        5.11 (checked, not required)
//
// Distribution kernels backport BPF features, so the version check is a
// guide; the verifier checks (the real objects loaded with the agent's
// settings) are the authority.
import { posix } from 'node:path';
import { FQDN_VARIANTS, PROGRAMS } from '../datapath/datapath.js';

export type CheckStatus = 'pass' | 'warn' | 'fail';

export interface CheckResult {
  id: string;
  title: string;
  status: CheckStatus;
  /** One line, or a few (a verifier log excerpt). */
  detail: string;
  /** What to do about a warning or failure. */
  fix?: string;
  /** The whole libbpf/verifier log of a failed load (for --json). */
  log?: string;
}

export interface KernelVersion {
  major: number;
  minor: number;
  patch: number;
}

export const MIN_KERNEL: KernelVersion = { major: 5, minor: 8, patch: 0 };
/** From 5.11 BPF memory is charged to the memory cgroup, not RLIMIT_MEMLOCK. */
export const MEMCG_ACCOUNTING_KERNEL: KernelVersion = { major: 5, minor: 11, patch: 0 };
/** CAP_BPF and CAP_PERFMON exist from 5.8; before, everything needs CAP_SYS_ADMIN. */
export const CAP_BPF_KERNEL: KernelVersion = { major: 5, minor: 8, patch: 0 };

export const CAP_NET_ADMIN = 12;
export const CAP_SYS_ADMIN = 21;
export const CAP_SYS_RESOURCE = 24;
export const CAP_PERFMON = 38;
export const CAP_BPF = 39;

const CAP_NAMES: Record<number, string> = {
  [CAP_NET_ADMIN]: 'CAP_NET_ADMIN',
  [CAP_SYS_ADMIN]: 'CAP_SYS_ADMIN',
  [CAP_SYS_RESOURCE]: 'CAP_SYS_RESOURCE',
  [CAP_PERFMON]: 'CAP_PERFMON',
  [CAP_BPF]: 'CAP_BPF',
};

/** Kernel config options weir depends on; `required: false` only warns. */
export const KERNEL_CONFIG: readonly { name: string; required: boolean; why: string }[] = [
  { name: 'CONFIG_BPF', required: true, why: 'BPF support' },
  { name: 'CONFIG_BPF_SYSCALL', required: true, why: 'the bpf() system call and the bpffs' },
  { name: 'CONFIG_CGROUPS', required: true, why: 'control groups' },
  { name: 'CONFIG_CGROUP_BPF', required: true, why: 'BPF programs attached to cgroups (cgroup_skb, sock_addr)' },
  { name: 'CONFIG_SOCK_CGROUP_DATA', required: true, why: "a socket's cgroup, read by bpf_skb_ancestor_cgroup_id" },
  { name: 'CONFIG_BPF_JIT', required: false, why: 'the JIT; without it every packet runs through the slower interpreter' },
];

export interface AttachProbe {
  program: string;
  /** e.g. 'BPF_CGROUP_INET_EGRESS' */
  attachType: string;
  ok: boolean;
  /** Why not, when !ok. */
  detail: string;
}

/** One object the kernel accepted; programs loaded, maps private, nothing attached. */
export interface LoadedObject {
  programs: string[];
  /**
   * Attaches every program to `cgroup` with a bpf_link, checks that
   * BPF_PROG_QUERY lists it there, and detaches it again.
   */
  probeAttach(cgroup: string): AttachProbe[];
  close(): void;
}

/** What the checks may ask of the node. */
export interface PreflightEnv {
  /** The kernel release, as os.release() (uname -r). */
  release(): string;
  /** A file's text (.gz files decompressed), or null when absent or unreadable. */
  readFile(path: string): string | null;
  isDirectory(path: string): boolean;
  /** Effective capabilities (CapEff in /proc/self/status). */
  capEff: bigint;
  uid: number;
  /**
   * Loads a BPF object with the agent's settings (.rodata, map sizes) but
   * private maps: nothing pinned, nothing attached. A rejection throws an
   * Error, with `verifierLog` when the verifier said why.
   */
  loadObject(path: string, podLevel: number): Promise<LoadedObject>;
  /** Makes an empty child cgroup of `root` for the attach probe; throws when it cannot. */
  makeTempCgroup(root: string): string;
  removeCgroup(dir: string): void;
  /** About how many bytes weir's maps lock at the default capacities; null if unknown. */
  memlockNeeded(): number | null;
  /** Does the kernel offer bpf_loop to cgroup_skb programs (what DNS learning needs)? */
  hasBpfLoop(): { ok: boolean; error?: string };
}

export interface PreflightOptions {
  /** --bpffs (default /sys/fs/bpf). */
  bpffs: string;
  /** --cgroup-root; default: the cgroup v2 mount point. */
  cgroupRoot?: string;
  /** Where egress.bpf.o, ingress.bpf.o and sock_addr.bpf.o are. */
  objectsDir: string;
}

// ---- parsers ---------------------------------------------------------------

export function parseKernelRelease(release: string): KernelVersion | null {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(release.trim());
  if (!m) return null;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0) };
}

export function kernelAtLeast(v: KernelVersion, min: KernelVersion): boolean {
  if (v.major !== min.major) return v.major > min.major;
  if (v.minor !== min.minor) return v.minor > min.minor;
  return v.patch >= min.patch;
}

function fmtKernel(v: KernelVersion): string {
  return v.patch ? `${v.major}.${v.minor}.${v.patch}` : `${v.major}.${v.minor}`;
}

/** CapEff of /proc/<pid>/status, as a bit set. */
export function parseCapEff(status: string): bigint | null {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(status);
  return m?.[1] !== undefined ? BigInt(`0x${m[1]}`) : null;
}

export function hasCap(caps: bigint, cap: number): boolean {
  return ((caps >> BigInt(cap)) & 1n) === 1n;
}

export interface Limit {
  soft: number;
  hard: number;
}

/** "Max locked memory" of /proc/self/limits, in bytes (Infinity for unlimited). */
export function parseMemlockLimit(limits: string): Limit | null {
  const m = /^Max locked memory\s+(\S+)\s+(\S+)/m.exec(limits);
  if (!m?.[1] || !m[2]) return null;
  const n = (s: string): number => (s === 'unlimited' ? Infinity : Number(s));
  const soft = n(m[1]);
  const hard = n(m[2]);
  return Number.isNaN(soft) || Number.isNaN(hard) ? null : { soft, hard };
}

/** A kernel .config: option -> value ('y', 'm', a string...); unset options are absent. */
export function parseKernelConfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line.trim());
    if (m?.[1] && m[2] !== undefined) out.set(m[1], m[2]);
  }
  return out;
}

export interface MountInfo {
  /** Path inside the filesystem that is mounted ("/" for its root). */
  root: string;
  mountPoint: string;
  fsType: string;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** /proc/self/mountinfo: id parent major:minor root mountpoint opts [optional...] - fstype source superopts */
export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const fsType = line.slice(dash + 3).split(' ')[0];
    const root = left[3];
    const mountPoint = left[4];
    if (root === undefined || mountPoint === undefined || !fsType) continue;
    out.push({ root: unescapeMount(root), mountPoint: unescapeMount(mountPoint), fsType });
  }
  return out;
}

function isUnder(dir: string, mountPoint: string): boolean {
  const rel = posix.relative(mountPoint, dir);
  return rel === '' || (!rel.startsWith('..') && !posix.isAbsolute(rel));
}

/** The mount of `fsType` that holds `dir` (the deepest one). */
function mountHolding(mounts: MountInfo[], fsType: string, dir: string): MountInfo | undefined {
  let best: MountInfo | undefined;
  for (const m of mounts) {
    if (m.fsType !== fsType || !isUnder(dir, m.mountPoint)) continue;
    if (!best || m.mountPoint.length > best.mountPoint.length) best = m;
  }
  return best;
}

function components(p: string): number {
  return p.split('/').filter((c) => c.length > 0).length;
}

function fmtBytes(n: number): string {
  if (n === Infinity) return 'unlimited';
  if (n >= 1 << 30) return `${+(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${+(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${+(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} bytes`;
}

function list(names: string[]): string {
  if (names.length <= 1) return names.join('');
  return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

// ---- the checks ------------------------------------------------------------

function checkKernel(env: PreflightEnv, kernel: KernelVersion | null): CheckResult {
  const base = { id: 'kernel', title: 'Kernel version' };
  const release = env.release();
  const min = fmtKernel(MIN_KERNEL);
  if (!kernel) {
    return {
      ...base,
      status: 'warn',
      detail: `cannot read a version from the kernel release ${JSON.stringify(release)}; weir needs Linux ${min} or later`,
      fix: 'the verifier checks below tell whether this kernel accepts weir',
    };
  }
  if (!kernelAtLeast(kernel, MIN_KERNEL)) {
    return {
      ...base,
      status: 'fail',
      detail:
        `Linux ${release} is older than ${min}, the minimum: weir reports events through a BPF ring buffer ` +
        `(5.8) and attaches with cgroup bpf_links (5.7)`,
      fix: `upgrade the node's kernel to ${min} or later (weir is tested on 6.x); distribution kernels with ` +
        'backported BPF features may still pass the verifier checks below',
    };
  }
  return { ...base, status: 'pass', detail: `Linux ${release} (weir needs ${min} or later)` };
}

function checkPrivileges(env: PreflightEnv, kernel: KernelVersion | null): CheckResult {
  const base = { id: 'privileges', title: 'Privileges' };
  const caps = env.capEff;
  const who = env.uid === 0 ? 'uid 0' : `uid ${env.uid}`;
  const preCapBpf = kernel !== null && !kernelAtLeast(kernel, CAP_BPF_KERNEL);
  if (hasCap(caps, CAP_SYS_ADMIN)) {
    return {
      ...base,
      status: 'pass',
      detail: `${who} with CAP_SYS_ADMIN (loads programs, creates maps and attaches them to cgroups)`,
    };
  }
  if (preCapBpf) {
    return {
      ...base,
      status: 'fail',
      detail: `${who} without CAP_SYS_ADMIN: before Linux 5.8 loading BPF programs needs CAP_SYS_ADMIN (CAP_BPF does not exist)`,
      fix: 'run the agent as root or grant it CAP_SYS_ADMIN (securityContext.capabilities.add: [SYS_ADMIN])',
    };
  }
  const missing = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN].filter((c) => !hasCap(caps, c)).map((c) => CAP_NAMES[c] ?? `cap ${c}`);
  if (missing.length > 0) {
    return {
      ...base,
      status: 'fail',
      detail:
        `${who} lacks ${list(missing)} (effective capabilities ${caps.toString(16).padStart(16, '0')}): ` +
        'CAP_BPF creates maps and loads programs, CAP_PERFMON lets the verifier accept their pointer arithmetic, ' +
        'CAP_NET_ADMIN loads network program types and queries cgroup attachments',
      fix:
        'run the agent as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN ' +
        '(securityContext.capabilities.add: [BPF, PERFMON, NET_ADMIN]; CAP_SYS_ADMIN covers all three)',
    };
  }
  return {
    ...base,
    status: 'pass',
    detail: `${who} with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (no CAP_SYS_ADMIN: mount the bpffs beforehand)`,
  };
}

function checkMemlock(env: PreflightEnv, kernel: KernelVersion | null): CheckResult {
  const base = { id: 'memlock', title: 'Locked memory limit' };
  if (kernel && kernelAtLeast(kernel, MEMCG_ACCOUNTING_KERNEL)) {
    return {
      ...base,
      status: 'pass',
      detail: 'not applicable: since Linux 5.11 BPF memory is charged to the memory cgroup, not RLIMIT_MEMLOCK',
    };
  }
  const text = env.readFile('/proc/self/limits');
  const limit = text === null ? null : parseMemlockLimit(text);
  const need = env.memlockNeeded();
  const needText = need === null ? 'tens of MiB' : `about ${fmtBytes(need)}`;
  if (!limit) {
    return {
      ...base,
      status: 'warn',
      detail: `cannot read "Max locked memory" from /proc/self/limits; before Linux 5.11 weir's maps need ${needText} of it`,
      fix: 'start the agent with an unlimited memlock limit (ulimit -l unlimited, LimitMEMLOCK=infinity)',
    };
  }
  const have = `RLIMIT_MEMLOCK is ${fmtBytes(limit.soft)} (hard ${fmtBytes(limit.hard)})`;
  if (limit.soft === Infinity || (need !== null && limit.soft >= need)) {
    return { ...base, status: 'pass', detail: `${have}; weir's maps need ${needText}` };
  }
  // libbpf (1.x) raises the limit to infinity itself on kernels without memcg
  // accounting; that works when the hard limit is already unlimited or the
  // process may raise it.
  if (limit.hard === Infinity || hasCap(env.capEff, CAP_SYS_RESOURCE)) {
    return {
      ...base,
      status: 'pass',
      detail: `${have}; libbpf raises it to unlimited at load (${limit.hard === Infinity ? 'the hard limit is unlimited' : 'CAP_SYS_RESOURCE'})`,
    };
  }
  return {
    ...base,
    status: 'fail',
    detail:
      `${have}, too low: before Linux 5.11 every BPF map counts against RLIMIT_MEMLOCK, and weir's maps need ${needText}; ` +
      'map creation would fail with EPERM',
    fix:
      'raise the limit for the agent: ulimit -l unlimited, LimitMEMLOCK=infinity in its systemd unit or the container ' +
      "runtime's unit (containerd, dockerd), or grant CAP_SYS_RESOURCE so libbpf raises it",
  };
}

const CONFIG_SOURCES = (release: string): string[] => [
  '/proc/config.gz',
  `/boot/config-${release}`,
  `/lib/modules/${release}/config`,
];

function checkKernelConfig(env: PreflightEnv): CheckResult {
  const base = { id: 'kernel-config', title: 'Kernel config' };
  const release = env.release();
  let source: string | undefined;
  let config: Map<string, string> | undefined;
  for (const path of CONFIG_SOURCES(release)) {
    const text = env.readFile(path);
    if (text !== null) {
      source = path;
      config = parseKernelConfig(text);
      break;
    }
  }
  if (!config || !source) {
    return {
      ...base,
      status: 'warn',
      detail: `unknown: no kernel config readable (${CONFIG_SOURCES(release).join(', ')})`,
      fix:
        `weir needs ${KERNEL_CONFIG.filter((c) => c.required).map((c) => `${c.name}=y`).join(', ')}; ` +
        'the verifier checks below prove most of them (modprobe configs loads /proc/config.gz where it is a module)',
    };
  }
  const missingRequired = KERNEL_CONFIG.filter((c) => c.required && config.get(c.name) !== 'y');
  const missingOptional = KERNEL_CONFIG.filter((c) => !c.required && config.get(c.name) !== 'y');
  const why = (cs: typeof KERNEL_CONFIG): string => cs.map((c) => `${c.name} (${c.why})`).join('; ');
  if (missingRequired.length > 0) {
    return {
      ...base,
      status: 'fail',
      detail: `not set in ${source}: ${why(missingRequired)}`,
      fix: `use a kernel built with ${missingRequired.map((c) => `${c.name}=y`).join(', ')} (every major distribution kernel has them)`,
    };
  }
  if (missingOptional.length > 0) {
    return {
      ...base,
      status: 'warn',
      detail: `not set in ${source}: ${why(missingOptional)}`,
      fix: `use a kernel built with ${missingOptional.map((c) => `${c.name}=y`).join(', ')}`,
    };
  }
  return { ...base, status: 'pass', detail: `${KERNEL_CONFIG.map((c) => c.name).join(', ')} set (${source})` };
}

function checkJit(env: PreflightEnv): CheckResult {
  const base = { id: 'jit', title: 'BPF JIT' };
  const path = '/proc/sys/net/core/bpf_jit_enable';
  const v = env.readFile(path)?.trim() ?? null;
  if (v === '1') return { ...base, status: 'pass', detail: `enabled (${path} = 1)` };
  if (v === '2') {
    return {
      ...base,
      status: 'warn',
      detail: `enabled in debug mode (${path} = 2): every JIT image is written to the kernel log`,
      fix: 'sysctl -w net.core.bpf_jit_enable=1',
    };
  }
  if (v === '0') {
    return {
      ...base,
      status: 'warn',
      detail: `disabled (${path} = 0): weir's programs run in the interpreter, several times slower per packet`,
      fix: 'sysctl -w net.core.bpf_jit_enable=1 (and net.core.bpf_jit_enable = 1 in /etc/sysctl.d to keep it)',
    };
  }
  return {
    ...base,
    status: 'warn',
    detail: `${path} ${v === null ? 'is missing' : `reads ${JSON.stringify(v)}`}: no BPF JIT (CONFIG_BPF_JIT), programs run in the interpreter`,
    fix: 'use a kernel built with CONFIG_BPF_JIT=y',
  };
}

interface CgroupFacts {
  mount: MountInfo;
  /** --cgroup-root, or the mount point. */
  root: string;
}

function checkCgroup2(env: PreflightEnv, opts: PreflightOptions, mounts: MountInfo[] | null): { result: CheckResult; facts: CgroupFacts | null } {
  const base = { id: 'cgroup2', title: 'cgroup v2' };
  if (mounts === null) {
    return {
      result: { ...base, status: 'fail', detail: 'cannot read /proc/self/mountinfo', fix: 'run weir preflight on the node (or in the agent pod) with /proc mounted' },
      facts: null,
    };
  }
  const v2 = mounts.filter((m) => m.fsType === 'cgroup2');
  const v1 = mounts.filter((m) => m.fsType === 'cgroup');
  const mountFix =
    'boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2: the default of current distributions, GA in Kubernetes ' +
    'since 1.25), or at least mount the unified hierarchy (mount -t cgroup2 none /sys/fs/cgroup/unified); ' +
    "in a pod, mount the host's /sys/fs/cgroup";
  if (v2.length === 0) {
    return {
      result: {
        ...base,
        status: 'fail',
        detail:
          `no cgroup2 filesystem is mounted${v1.length > 0 ? ` (only cgroup v1 controllers, e.g. ${v1[0]?.mountPoint})` : ''}: ` +
          "weir's programs attach to cgroup v2 directories and identify pods by their cgroup v2 ids",
        fix: mountFix,
      },
      facts: null,
    };
  }
  if (opts.cgroupRoot !== undefined) {
    const root = posix.resolve(opts.cgroupRoot);
    const mount = mountHolding(mounts, 'cgroup2', root);
    if (!mount) {
      return {
        result: {
          ...base,
          status: 'fail',
          detail: `--cgroup-root ${root} is not on a cgroup2 filesystem (cgroup2 is mounted at ${v2.map((m) => m.mountPoint).join(', ')})`,
          fix: `pass a directory of the cgroup v2 tree, e.g. --cgroup-root ${v2[0]?.mountPoint ?? '/sys/fs/cgroup'}`,
        },
        facts: null,
      };
    }
    if (!env.isDirectory(root)) {
      return {
        result: { ...base, status: 'fail', detail: `--cgroup-root ${root} does not exist`, fix: 'pass an existing directory of the cgroup v2 tree' },
        facts: null,
      };
    }
    return { result: { ...base, status: 'pass', detail: `cgroup2 at ${mount.mountPoint}; --cgroup-root ${root}` }, facts: { mount, root } };
  }
  const mount = v2[0] as MountInfo;
  const hybrid = v1.length > 0 ? ` (hybrid host: cgroup v1 controllers are mounted too, pods must appear in the v2 tree)` : '';
  return { result: { ...base, status: 'pass', detail: `cgroup2 at ${mount.mountPoint}${hybrid}` }, facts: { mount, root: mount.mountPoint } };
}

function checkPodsCgroup(env: PreflightEnv, facts: CgroupFacts | null): { result: CheckResult; podLevel: number | null } {
  const base = { id: 'pods-cgroup', title: 'Kubelet pods cgroup' };
  if (!facts) {
    return { result: { ...base, status: 'fail', detail: 'no cgroup v2 tree to look in (see cgroup v2)' }, podLevel: null };
  }
  for (const [name, driver] of [
    ['kubepods.slice', 'systemd'],
    ['kubepods', 'cgroupfs'],
  ] as const) {
    const dir = posix.join(facts.root, name);
    if (env.isDirectory(dir)) {
      const level = components(facts.mount.root) + components(posix.relative(facts.mount.mountPoint, dir));
      return { result: { ...base, status: 'pass', detail: `${dir} (${driver} cgroup driver, level ${level})` }, podLevel: level };
    }
  }
  return {
    result: {
      ...base,
      status: 'warn',
      detail:
        `no kubepods.slice or kubepods directory under ${facts.root}: not a Kubernetes node, the kubelet has not started yet, ` +
        'or it keeps pods in the cgroup v1 tree (the agent waits for this directory before it attaches)',
      fix:
        'run preflight again once the kubelet runs; on a hybrid cgroup host use the systemd cgroup driver or switch the ' +
        'node to cgroup v2; pass --cgroup-root if the kubelet uses another cgroup root',
    },
    podLevel: null,
  };
}

function checkBpffs(env: PreflightEnv, opts: PreflightOptions, mounts: MountInfo[] | null): CheckResult {
  const base = { id: 'bpffs', title: 'BPF filesystem' };
  const dir = posix.resolve(opts.bpffs);
  const mount = mounts ? mountHolding(mounts, 'bpf', dir) : undefined;
  if (mount) return { ...base, status: 'pass', detail: `bpffs mounted at ${mount.mountPoint}${mount.mountPoint === dir ? '' : ` (holds ${dir})`}` };
  const fsTypes = env.readFile('/proc/filesystems');
  const known = fsTypes !== null && /^nodev\s+bpf$/m.test(fsTypes);
  const canMount = hasCap(env.capEff, CAP_SYS_ADMIN);
  const hostFix = `mount it on the host: mount -t bpf bpf ${dir} (and in a pod, mount the host's ${dir} with mountPropagation)`;
  if (known && canMount) {
    return {
      ...base,
      status: 'warn',
      detail: `no bpffs at ${dir}; the agent mounts one there when it starts (bpf filesystem available, CAP_SYS_ADMIN held)`,
      fix: `in a pod a bpffs the agent mounts itself lives and dies with the pod, and so do weir's pins: ${hostFix}`,
    };
  }
  const why = !known
    ? 'the kernel has no bpf filesystem (/proc/filesystems lists no bpf; CONFIG_BPF_SYSCALL)'
    : 'mounting one needs CAP_SYS_ADMIN, which this process lacks';
  return {
    ...base,
    status: 'fail',
    detail: `no bpffs at ${dir} and it cannot be mounted: ${why}; weir pins its maps and links there so enforcement survives agent restarts`,
    fix: hostFix,
  };
}

/** The head of a verifier log says which program; the tail says why it was rejected. */
export function logExcerpt(log: string, head = 4, tail = 12): string {
  const lines = log.split('\n').map((l) => l.trimEnd()).filter((l) => l.length > 0);
  if (lines.length <= head + tail) return lines.join('\n');
  return [...lines.slice(0, head), `… ${lines.length - head - tail} more lines (--json has the whole log) …`, ...lines.slice(-tail)].join('\n');
}

function errorParts(err: unknown): { message: string; code: string | undefined; log: string | undefined } {
  if (err instanceof Error) {
    const e = err as Error & { code?: unknown; verifierLog?: unknown; libbpfLog?: unknown };
    const nonEmpty = (v: unknown): string | undefined => (typeof v === 'string' && v.trim().length > 0 ? v : undefined);
    return { message: e.message, code: typeof e.code === 'string' ? e.code : undefined, log: nonEmpty(e.verifierLog) ?? nonEmpty(e.libbpfLog) };
  }
  return { message: String(err), code: undefined, log: undefined };
}

/** The agent's objects, each with the programs the agent attaches from it. */
export function agentObjects(): { file: string; programs: string[] }[] {
  const out = new Map<string, string[]>();
  for (const p of PROGRAMS) out.set(p.object, [...(out.get(p.object) ?? []), p.program]);
  return [...out].map(([file, programs]) => ({ file, programs }));
}

async function checkObjects(
  env: PreflightEnv,
  opts: PreflightOptions,
  podLevel: number,
  privileged: boolean,
): Promise<{ results: CheckResult[]; loaded: LoadedObject[] }> {
  const results: CheckResult[] = [];
  const loaded: LoadedObject[] = [];
  for (const { file, programs } of agentObjects()) {
    const path = posix.join(opts.objectsDir, file);
    const base = { id: `verifier-${file.replace(/\.bpf\.o$/, '')}`, title: `Verifier: ${file}` };
    let obj: LoadedObject;
    try {
      obj = await env.loadObject(path, podLevel);
    } catch (err) {
      const { message, code, log } = errorParts(err);
      const stale = /no (map|program) named/.test(message);
      const missing = !stale && (/is missing|no such file/i.test(message) || (code === 'ENOENT' && log === undefined));
      // EPERM is a missing privilege; the verifier rejects a program with EACCES (and a log).
      const eperm = code === 'EPERM' || /Operation not permitted/.test(message);
      const result: CheckResult = {
        ...base,
        status: 'fail',
        detail: log ? `${message}\n${logExcerpt(log)}` : message,
        fix: stale
          ? 'the object does not match this agent (a stale build): rebuild it with node scripts/build.mjs bpf'
          : missing
            ? 'build the objects: node scripts/build.mjs bpf (or pass --objects-dir DIR)'
            : !privileged
              ? 'fix Privileges first: without CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) the verifier treats the ' +
                'loader as unprivileged and refuses pointer arithmetic and helpers weir uses'
              : eperm
                ? 'bpf(2) was refused although the capabilities are held: a seccomp profile (CRI-O\'s RuntimeDefault ' +
                  'allows bpf(2) only with CAP_SYS_ADMIN), an LSM (SELinux, AppArmor, kernel lockdown) or, before ' +
                  'Linux 5.11, RLIMIT_MEMLOCK (see Locked memory limit) blocks it'
                : 'the kernel rejected a program weir needs (the verifier log says why): it may lack a helper, map type ' +
                  'or context field weir uses; docs/preflight.md lists the kernel version each one needs',
      };
      if (log !== undefined) result.log = log;
      results.push(result);
      continue;
    }
    loaded.push(obj);
    const absent = programs.filter((p) => !obj.programs.includes(p));
    if (absent.length > 0) {
      results.push({
        ...base,
        status: 'fail',
        detail: `${path} loads but lacks ${list(absent)}: a stale or foreign build`,
        fix: 'rebuild the objects: node scripts/build.mjs --force bpf',
      });
      continue;
    }
    results.push({ ...base, status: 'pass', detail: `loaded ${programs.join(', ')} with the agent's settings (private maps, nothing attached)` });
  }
  return { results, loaded };
}

/**
 * DNS learning (FQDN peers) needs bpf_loop (Linux 5.17). Where the kernel
 * has it, the agent loads the -fqdn objects instead of the plain ones, so
 * they must pass the verifier too; where it has not, the agent runs the
 * plain objects and fqdn peers allow only the DNS queries they imply.
 */
async function checkDnsLearning(env: PreflightEnv, opts: PreflightOptions, podLevel: number): Promise<CheckResult> {
  const base = { id: 'dns-learning', title: 'DNS learning (FQDN peers)' };
  const probe = env.hasBpfLoop();
  if (!probe.ok) {
    return {
      ...base,
      status: 'warn',
      detail: `this kernel does not offer bpf_loop to cgroup_skb programs${probe.error ? ` (${probe.error})` : ''}: the agent loads the plain objects, and fqdn peers allow only the DNS queries they imply`,
      fix: 'for policies with fqdn peers, run Linux 5.17 or later; ipBlock, pod and Service peers work on 5.8',
    };
  }
  const loadedNow: LoadedObject[] = [];
  try {
    for (const [plain, file] of Object.entries(FQDN_VARIANTS)) {
      const path = posix.join(opts.objectsDir, file);
      let obj: LoadedObject;
      try {
        obj = await env.loadObject(path, podLevel);
      } catch (err) {
        const { message, log } = errorParts(err);
        const missing = /is missing|no such file/i.test(message);
        const r: CheckResult = {
          ...base,
          status: missing ? 'warn' : 'fail',
          detail: missing
            ? `${file} is missing: the agent will load ${plain} without DNS learning`
            : `${file} is rejected, so the agent will not start on this kernel: ${message}${log ? `\n${logExcerpt(log)}` : ''}`,
          fix: missing
            ? 'build the objects: node scripts/build.mjs bpf'
            : 'the verifier log says why; the agent does not start on this kernel until it loads (report it with the log)',
        };
        if (log !== undefined) r.log = log;
        return r;
      }
      loadedNow.push(obj);
    }
  } finally {
    for (const o of loadedNow) o.close();
  }
  return { ...base, status: 'pass', detail: `bpf_loop available; ${Object.values(FQDN_VARIANTS).join(' and ')} load: DNS answers are learned in the kernel` };
}

function checkAttach(env: PreflightEnv, facts: CgroupFacts | null, loaded: LoadedObject[], expected: number): CheckResult {
  const base = { id: 'attach', title: 'Cgroup attach' };
  if (!facts) return { ...base, status: 'warn', detail: 'skipped: no cgroup v2 tree (see cgroup v2)' };
  if (loaded.length < expected) return { ...base, status: 'warn', detail: 'skipped: not every object loaded (see the verifier checks)' };
  let dir: string;
  try {
    dir = env.makeTempCgroup(facts.mount.mountPoint);
  } catch (err) {
    return {
      ...base,
      status: 'warn',
      detail: `skipped: cannot create a temporary cgroup under ${facts.mount.mountPoint} (${errorParts(err).message})`,
      fix: 'run preflight as root on the host, or where the cgroup v2 tree is mounted read-write, to test attachment',
    };
  }
  const probes: AttachProbe[] = [];
  let leftBehind: string | null = null;
  try {
    for (const obj of loaded) probes.push(...obj.probeAttach(dir));
  } catch (err) {
    probes.push({ program: '?', attachType: '?', ok: false, detail: errorParts(err).message });
  } finally {
    try {
      env.removeCgroup(dir);
    } catch (err) {
      leftBehind = `could not remove the temporary cgroup ${dir} (${errorParts(err).message}); rmdir it`;
    }
  }
  const bad = probes.filter((p) => !p.ok);
  if (bad.length > 0) {
    return {
      ...base,
      status: 'fail',
      detail: [...bad.map((p) => `${p.program} (${p.attachType}): ${p.detail}`), ...(leftBehind ? [leftBehind] : [])].join('\n'),
      fix: 'weir attaches with cgroup bpf_links (Linux 5.7+, CONFIG_CGROUP_BPF); check the kernel version and config above',
    };
  }
  const done = `${probes.length} programs attached by bpf_link to a temporary cgroup, listed by BPF_PROG_QUERY, detached`;
  if (leftBehind) return { ...base, status: 'warn', detail: `${done}; ${leftBehind}` };
  return { ...base, status: 'pass', detail: `${done}; cgroup removed` };
}

/** Runs every check, in order; never throws for a missing requirement. */
export async function runChecks(env: PreflightEnv, opts: PreflightOptions): Promise<CheckResult[]> {
  const kernel = parseKernelRelease(env.release());
  const mountinfo = env.readFile('/proc/self/mountinfo');
  const mounts = mountinfo === null ? null : parseMountinfo(mountinfo);
  const privileges = checkPrivileges(env, kernel);
  const results: CheckResult[] = [
    checkKernel(env, kernel),
    privileges,
    checkMemlock(env, kernel),
    checkKernelConfig(env),
    checkJit(env),
  ];
  const cg = checkCgroup2(env, opts, mounts);
  results.push(cg.result);
  const pods = checkPodsCgroup(env, cg.facts);
  results.push(pods.result, checkBpffs(env, opts, mounts));
  // Without a kubepods directory, load as for the usual layout (kubepods
  // right under the cgroup root): the verifier's verdict does not depend on
  // the level, only on it being set.
  const { results: objectResults, loaded } = await checkObjects(env, opts, pods.podLevel ?? 1, privileges.status === 'pass');
  results.push(...objectResults);
  try {
    results.push(checkAttach(env, cg.facts, loaded, agentObjects().length));
  } finally {
    for (const o of loaded) o.close();
  }
  results.push(await checkDnsLearning(env, opts, pods.podLevel ?? 1));
  return results;
}

export interface Summary {
  pass: number;
  warn: number;
  fail: number;
}

export function summarize(results: CheckResult[]): Summary {
  const s: Summary = { pass: 0, warn: 0, fail: 0 };
  for (const r of results) s[r.status]++;
  return s;
}
