// Where the kubelet puts pods in the cgroup v2 tree, and the cgroup levels
// the datapath looks at (see bpf/lib/identity.h).
//
// cgroupfs driver: <root>/kubepods/[burstable|besteffort/]pod<uid>/<container>
// systemd driver:  <root>/kubepods.slice/[kubepods-<qos>.slice/]kubepods-[<qos>-]pod<uid_>.slice/<container>.scope
// Guaranteed pods have no QoS level. Containers are never looked up: any
// cgroup below the pod cgroup belongs to the pod.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import type { QosClass } from '../model/types.js';

export type CgroupDriver = 'cgroupfs' | 'systemd';

export interface PodsRoot {
  driver: CgroupDriver;
  /** The kubepods (cgroupfs) or kubepods.slice (systemd) directory. */
  dir: string;
  /** Its level in the cgroup v2 hierarchy (the hierarchy root is level 0). */
  level: number;
}

interface Cgroup2Mount {
  mountPoint: string;
  /** Path inside the hierarchy that is mounted there ("/" for the root). */
  root: string;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function cgroup2Mounts(mountinfo = '/proc/self/mountinfo'): Cgroup2Mount[] {
  const out: Cgroup2Mount[] = [];
  for (const line of readFileSync(mountinfo, 'utf8').split('\n')) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const right = line.slice(dash + 3).split(' ');
    if (right[0] !== 'cgroup2') continue;
    const root = left[3];
    const mountPoint = left[4];
    if (root === undefined || mountPoint === undefined) continue;
    out.push({ root: unescapeMount(root), mountPoint: unescapeMount(mountPoint) });
  }
  return out;
}

/** The cgroup v2 mount point of this process's view (default --cgroup-root). */
export function defaultCgroupRoot(): string {
  const m = cgroup2Mounts()[0];
  if (!m) throw new Error('no cgroup v2 filesystem is mounted (see /proc/self/mountinfo); weir needs cgroup v2');
  return m.mountPoint;
}

function components(p: string): number {
  return p.split('/').filter((c) => c.length > 0).length;
}

/** Level of a directory inside the cgroup v2 hierarchy, from the mount it lives on. */
export function cgroupLevel(dir: string, mountinfo = '/proc/self/mountinfo'): number {
  const abs = resolve(dir);
  let best: Cgroup2Mount | undefined;
  for (const m of cgroup2Mounts(mountinfo)) {
    const rel = relative(m.mountPoint, abs);
    if (rel.startsWith('..') || rel.startsWith(sep)) continue;
    if (!best || m.mountPoint.length > best.mountPoint.length) best = m;
  }
  if (!best) throw new Error(`${dir} is not on a cgroup v2 filesystem`);
  const below = components(relative(best.mountPoint, abs));
  // The kernel's cgroup levels (bpf_*ancestor_cgroup_id) count from the
  // hierarchy's real root. Only the root cgroup has no cgroup.type file, so a
  // mount showing the real root (a host's /sys/fs/cgroup, also bind-mounted
  // into a pod) is recognised whatever mountinfo says its root is: inside a
  // cgroup namespace (every unprivileged pod on cgroup v2) the host's root
  // appears as "/../../..", relative to the namespace.
  if (!existsSync(join(best.mountPoint, 'cgroup.type'))) return below;
  if (best.root.startsWith('/..')) {
    throw new Error(
      `${best.mountPoint} shows a cgroup outside this process's cgroup namespace (${best.root}), not the hierarchy root: ` +
        "mount the host's cgroup v2 root (hostPath /sys/fs/cgroup) and pass it as --cgroup-root",
    );
  }
  return components(best.root) + below;
}

/** Finds the kubelet's pods directory under --cgroup-root. */
export function findPodsRoot(cgroupRoot: string): PodsRoot | null {
  const systemd = join(cgroupRoot, 'kubepods.slice');
  const cgroupfs = join(cgroupRoot, 'kubepods');
  for (const [driver, dir] of [
    ['systemd', systemd],
    ['cgroupfs', cgroupfs],
  ] as const) {
    if (existsSync(dir) && statSync(dir).isDirectory()) return { driver, dir, level: cgroupLevel(dir) };
  }
  return null;
}

/** Candidate pod cgroup directories, most likely first. */
export function podCgroupCandidates(root: PodsRoot, uid: string, qos: QosClass | undefined): string[] {
  const order: QosClass[] = qos ? [qos] : ['Burstable', 'BestEffort', 'Guaranteed'];
  const out: string[] = [];
  for (const q of order) {
    if (root.driver === 'cgroupfs') {
      out.push(q === 'Guaranteed' ? join(root.dir, `pod${uid}`) : join(root.dir, q.toLowerCase(), `pod${uid}`));
    } else {
      const u = uid.replace(/-/g, '_');
      if (q === 'Guaranteed') out.push(join(root.dir, `kubepods-pod${u}.slice`));
      else {
        const ql = q.toLowerCase();
        out.push(join(root.dir, `kubepods-${ql}.slice`, `kubepods-${ql}-pod${u}.slice`));
      }
    }
  }
  return out;
}

export function findPodCgroup(root: PodsRoot, uid: string, qos: QosClass | undefined): string | null {
  for (const c of podCgroupCandidates(root, uid, qos)) if (existsSync(c)) return c;
  // The reported QoS class may lag the kubelet's layout: try every layout.
  if (qos) for (const c of podCgroupCandidates(root, uid, undefined)) if (existsSync(c)) return c;
  return null;
}

/** cgroup id as bpf_get_current_cgroup_id() returns it: the kernfs inode number. */
export function cgroupIdOf(dir: string): bigint {
  return statSync(dir, { bigint: true }).ino;
}
