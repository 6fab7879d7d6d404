// Sandbox state files and name-based teardown. Kept apart from sandbox.ts so
// that the reaper (reaper.ts), a separate process, can run the very same
// teardown without loading the builder.
//
// Names owned by sandbox <id> (prefix "weir-"):
//   netns     <prefix><id>-node, <prefix><id>-<host>, <prefix><id>-<ns>.<pod>
//   cgroups   <cgroup2 mount>/<prefix>sb-<id>, <cgroup2 mount>/<prefix>sb-<id>-hosts
//   state     /run/weir-sandbox/<id>.json: owner pid + start time (so a
//             recycled pid is not mistaken for the owner), manifests written
//   etc       /etc/netns/<prefix><id>-*/ (a pod's resolv.conf, which
//             `ip netns exec` bind-mounts over /etc/resolv.conf)
// The state file is written before anything else is created and removed
// last, so a crash at any point leaves a trace that finds the rest.

import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { killCgroupTree, removeCgroupTree } from './cgroup.js';
import { deleteNetnsSync, killPid, listNetns, netnsPids, processStartTime } from './system.js';

/** The subset of a pino logger the sandbox uses (a pino child fits). */
export interface SandboxLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export const silentLogger: SandboxLogger = { debug() {}, info() {}, warn() {} };

export const NAME_PREFIX = 'weir-';
export const STATE_DIR = '/run/weir-sandbox';
export const NODE_NETNS_SUFFIX = 'node';
/** Per-netns files `ip netns exec NAME` bind-mounts over /etc (iproute2's NETNS_ETC_DIR). */
export const NETNS_ETC_DIR = '/etc/netns';

export interface SandboxState {
  id: string;
  prefix: string;
  ownerPid: number;
  ownerStartTime: string;
  cgroupMount: string;
  manifestFiles: string[];
  createdAt: string;
}

export function statePath(id: string): string {
  return join(STATE_DIR, `${id}.json`);
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'string');
}

export function readState(id: string): SandboxState | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(statePath(id), 'utf8'));
  } catch {
    return undefined;
  }
  if (typeof raw !== 'object' || raw === null) return undefined;
  const r = raw as Record<string, unknown>;
  if (
    typeof r.id !== 'string' ||
    typeof r.prefix !== 'string' ||
    typeof r.ownerPid !== 'number' ||
    typeof r.ownerStartTime !== 'string' ||
    typeof r.cgroupMount !== 'string' ||
    !isStringArray(r.manifestFiles)
  ) {
    return undefined;
  }
  return {
    id: r.id,
    prefix: r.prefix,
    ownerPid: r.ownerPid,
    ownerStartTime: r.ownerStartTime,
    cgroupMount: r.cgroupMount,
    manifestFiles: r.manifestFiles,
    createdAt: typeof r.createdAt === 'string' ? r.createdAt : '',
  };
}

export function writeState(state: SandboxState): void {
  mkdirSync(STATE_DIR, { recursive: true });
  writeFileSync(statePath(state.id), JSON.stringify(state) + '\n');
}

export function ownerAlive(s: SandboxState): boolean {
  return processStartTime(s.ownerPid) === s.ownerStartTime;
}

export function cgroupNames(prefix: string, id: string): { root: string; hosts: string } {
  return { root: `${prefix}sb-${id}`, hosts: `${prefix}sb-${id}-hosts` };
}

/**
 * Removes every trace of sandbox `id`, whether or not a live object owns it:
 * processes (by cgroup, then by netns), netns (endpoints first: deleting one
 * destroys its veth pair; the router last), cgroups bottom-up, manifests,
 * state file. Synchronous, idempotent, and tries every step before reporting
 * failures. Returns whether there was anything to remove.
 */
export function teardown(id: string, prefix: string, cgroupMount: string, log: SandboxLogger, extraFiles: Iterable<string> = []): boolean {
  const errors: unknown[] = [];
  const attempt = (what: string, fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      log.warn({ sandbox: id, err: e instanceof Error ? e.message : String(e) }, `sandbox teardown: ${what} failed`);
      errors.push(e);
    }
  };
  const nsPrefix = `${prefix}${id}-`;
  const nodeNetns = `${nsPrefix}${NODE_NETNS_SUFFIX}`;
  const netns = listNetns().filter((n) => n.startsWith(nsPrefix));
  const names = cgroupNames(prefix, id);
  const cgroups = [join(cgroupMount, names.root), join(cgroupMount, names.hosts)].filter((d) => existsSync(d));
  const state = readState(id);
  const found = netns.length > 0 || cgroups.length > 0 || state !== undefined || safeList(NETNS_ETC_DIR).some((n) => n.startsWith(nsPrefix));

  for (const d of cgroups) {
    attempt(`kill ${d}`, () => {
      if (!killCgroupTree(d)) throw new Error(`processes in ${d} survived SIGKILL`);
    });
  }
  for (const pid of netnsPids(netns)) killPid(pid);
  // Endpoints first (deleting one destroys its veth pair), the router last.
  for (const n of [...netns.filter((n) => n !== nodeNetns), ...netns.filter((n) => n === nodeNetns)]) {
    attempt(`delete netns ${n}`, () => deleteNetnsSync(n));
  }
  for (const d of cgroups) attempt(`rmdir ${d}`, () => removeCgroupTree(d));
  const etc = safeList(NETNS_ETC_DIR).filter((n) => n.startsWith(nsPrefix));
  for (const n of etc) attempt(`remove ${join(NETNS_ETC_DIR, n)}`, () => rmSync(join(NETNS_ETC_DIR, n), { recursive: true, force: true }));
  if (etc.length > 0) {
    try {
      rmdirSync(NETNS_ETC_DIR);
    } catch {
      // not empty: other netns have files there
    }
  }
  for (const f of new Set([...(state?.manifestFiles ?? []), ...extraFiles])) attempt(`remove ${f}`, () => rmSync(f, { force: true }));
  attempt('remove state', () => {
    rmSync(statePath(id), { force: true });
    try {
      rmdirSync(STATE_DIR);
    } catch {
      // other sandboxes still have state there
    }
  });
  if (found) log.info({ sandbox: id, netns: netns.length, cgroups: cgroups.length }, 'sandbox torn down');
  if (errors.length > 0) throw new AggregateError(errors, `sandbox ${id}: teardown incomplete`);
  return found;
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
