// Kubelet-style cgroup v2 layout and the few cgroup operations the sandbox
// needs. The layout mirrors what the kubelet creates (and what the agent
// expects to find from a pod's UID and QoS class):
//
//   cgroupfs driver                        systemd driver
//   kubepods/                              kubepods.slice/
//     pod<uid>/<ctr-id>          (Guar.)     kubepods-pod<uid_>.slice/cri-containerd-<ctr-id>.scope
//     burstable/pod<uid>/<ctr-id>            kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<ctr-id>.scope
//     besteffort/pod<uid>/<ctr-id>           kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<ctr-id>.scope
//
// <uid_> is the pod UID with '-' replaced by '_' (systemd unit-name escaping).

import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { QosClass } from '../model/types.js';
import { killPid, sleepSync } from './system.js';

export type CgroupDriver = 'cgroupfs' | 'systemd';

/** The cgroup v2 mount point, from /proc/self/mounts (hybrid hosts mount it at .../unified). */
export function findCgroup2Mount(mounts: string = readFileSync('/proc/self/mounts', 'utf8')): string {
  for (const line of mounts.split('\n')) {
    const [, where, type] = line.split(' ');
    if (type === 'cgroup2' && where) {
      // /proc/mounts escapes space, tab, newline and backslash as octal.
      return where.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    }
  }
  throw new Error('no cgroup v2 mount in /proc/self/mounts: the sandbox needs cgroup v2 (unified or hybrid)');
}

export function podsRootName(driver: CgroupDriver): string {
  return driver === 'systemd' ? 'kubepods.slice' : 'kubepods';
}

/** QoS-level directories the kubelet creates at start (relative to the cgroup root). */
export function qosCgroupDirs(driver: CgroupDriver): string[] {
  const root = podsRootName(driver);
  return driver === 'systemd'
    ? [join(root, 'kubepods-burstable.slice'), join(root, 'kubepods-besteffort.slice')]
    : [join(root, 'burstable'), join(root, 'besteffort')];
}

/** The pod's cgroup, relative to the cgroup root (the directory given as --cgroup-root). */
export function podCgroupRelPath(driver: CgroupDriver, qos: QosClass, uid: string): string {
  const root = podsRootName(driver);
  if (driver === 'cgroupfs') {
    return qos === 'Guaranteed' ? join(root, `pod${uid}`) : join(root, qos.toLowerCase(), `pod${uid}`);
  }
  const escaped = uid.replace(/-/g, '_');
  if (qos === 'Guaranteed') return join(root, `kubepods-pod${escaped}.slice`);
  const q = qos.toLowerCase();
  return join(root, `kubepods-${q}.slice`, `kubepods-${q}-pod${escaped}.slice`);
}

export function containerCgroupName(driver: CgroupDriver, containerId: string): string {
  return driver === 'systemd' ? `cri-containerd-${containerId}.scope` : containerId;
}

export function ensureCgroup(dir: string): void {
  mkdirSync(dir, { recursive: true });
}

/** Every cgroup directory under (and including) dir, deepest first. */
function cgroupTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let entries;
    try {
      entries = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) if (e.isDirectory()) walk(join(d, e.name));
    out.push(d);
  };
  walk(dir);
  return out;
}

function populated(dir: string): boolean {
  try {
    return /^populated 1$/m.test(readFileSync(join(dir, 'cgroup.events'), 'utf8'));
  } catch {
    return false;
  }
}

/**
 * SIGKILLs every process in the subtree and waits (bounded) until it is empty.
 * cgroup.kill (Linux 5.14+) is atomic against forks; older kernels get a
 * walk over cgroup.procs, repeated until nothing is left.
 */
export function killCgroupTree(dir: string, timeoutMs = 5000): boolean {
  if (!existsSync(dir)) return true;
  const deadline = Date.now() + timeoutMs;
  const hasKill = existsSync(join(dir, 'cgroup.kill'));
  while (populated(dir)) {
    if (hasKill) {
      try {
        writeFileSync(join(dir, 'cgroup.kill'), '1');
      } catch {
        // raced with removal
      }
    } else {
      for (const d of cgroupTree(dir)) {
        let procs = '';
        try {
          procs = readFileSync(join(d, 'cgroup.procs'), 'utf8');
        } catch {
          continue;
        }
        for (const p of procs.split('\n').filter(Boolean)) killPid(Number(p));
      }
    }
    if (Date.now() > deadline) return false;
    sleepSync(5);
  }
  return true;
}

/** rmdir the subtree bottom-up (cgroup directories cannot be removed recursively). */
export function removeCgroupTree(dir: string, timeoutMs = 2000): void {
  const deadline = Date.now() + timeoutMs;
  for (const d of cgroupTree(dir)) {
    for (;;) {
      try {
        rmdirSync(d);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        // EBUSY while the last killed task is still leaving.
        if (code !== 'EBUSY' || Date.now() > deadline) throw e;
        sleepSync(10);
      }
    }
  }
}
