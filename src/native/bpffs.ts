// Finding the two kernel filesystems weir depends on: the bpffs (pins that
// outlive the agent) and the cgroup v2 hierarchy (where programs attach).
// Both are read from /proc/self/mounts, never assumed: on hybrid hosts
// cgroup2 sits at /sys/fs/cgroup/unified, on pure v2 hosts at /sys/fs/cgroup.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, statfsSync } from 'node:fs';
import { resolve } from 'node:path';

const BPF_FS_MAGIC = 0xcafe4a11;

export interface MountEntry {
  source: string;
  mountPoint: string;
  fsType: string;
  options: string[];
}

// /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parses the text of /proc/self/mounts (or /proc/mounts). */
export function parseMounts(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const [source, mountPoint, fsType, options] = f;
    if (source === undefined || mountPoint === undefined || fsType === undefined || options === undefined) continue;
    out.push({
      source: unescapeMountField(source),
      mountPoint: unescapeMountField(mountPoint),
      fsType,
      options: options.split(','),
    });
  }
  return out;
}

function readMounts(): MountEntry[] {
  return parseMounts(readFileSync('/proc/self/mounts', 'utf8'));
}

function isBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Makes sure a bpffs is mounted at `path` (or that `path` lies inside
 * one), mounting it if needed. Returns the absolute path. Throws an Error
 * that says why and what to do when it cannot.
 */
export function ensureBpffs(path = '/sys/fs/bpf'): string {
  const dir = resolve(path);
  if (isBpffs(dir)) return dir;
  if (readMounts().some((m) => m.mountPoint === dir && m.fsType === 'bpf')) return dir;
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new Error(`cannot create the bpffs mount point ${dir}: ${(err as Error).message}`, { cause: err });
  }
  const r = spawnSync('mount', ['-t', 'bpf', 'bpf', dir], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0 || !isBpffs(dir)) {
    const why = r.error !== undefined ? r.error.message : (r.stderr || `exit ${String(r.status)}`).trim();
    throw new Error(
      `no bpffs at ${dir} and mounting one failed (${why}); weir needs root (CAP_SYS_ADMIN) for this, ` +
        `or mount it first: mount -t bpf bpf ${dir}`,
    );
  }
  return dir;
}

/** The cgroup v2 mount point of this mount namespace. */
export function cgroup2Mount(): string {
  const m = readMounts().find((e) => e.fsType === 'cgroup2');
  if (m === undefined) {
    throw new Error(
      'no cgroup v2 filesystem is mounted (none in /proc/self/mounts); weir attaches to cgroup v2: ' +
        'mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1',
    );
  }
  return m.mountPoint;
}
