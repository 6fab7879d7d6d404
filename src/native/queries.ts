// Stateless kernel queries: no handle to own, nothing to close.
import {
  type BpfConstants,
  type LinkInfo,
  loadAddon,
  type PinnedObjectKind,
  type ProgInfo,
  type ProgQueryResult,
} from './addon.js';

/** UAPI constants (attach types, map types, flags) as compiled into the addon. */
export function bpfConstants(): BpfConstants {
  return loadAddon().constants;
}

/** "major.minor" of the libbpf the addon runs with. */
export function libbpfVersion(): string {
  return loadAddon().libbpfVersion();
}

export function numPossibleCpus(): number {
  return loadAddon().numPossibleCpus();
}

/** The id BPF programs see for this cgroup v2 directory (bpf_get_current_cgroup_id). */
export function cgroupId(path: string): bigint {
  return loadAddon().cgroupId(path);
}

/**
 * Programs attached to a cgroup at one attach type (BPF_CGROUP_*). With
 * BPF_F_QUERY_EFFECTIVE, those that run for it, ancestors' included.
 */
export function progQuery(cgroupPath: string, attachType: number, queryFlags = 0): ProgQueryResult {
  return loadAddon().progQuery(cgroupPath, attachType, queryFlags);
}

export function progInfo(id: number): ProgInfo {
  return loadAddon().progInfo(id);
}

export function linkInfoById(id: number): LinkInfo {
  return loadAddon().linkInfoById(id);
}

/**
 * Whether the kernel lets programs of a type (BPF_PROG_TYPE_*) call a helper
 * (BPF_FUNC_*), e.g. bpf_loop for DNS learning. Loads a probe program:
 * needs the privileges of a load.
 */
export function probeBpfHelper(progType: number, helperId: number): boolean {
  return loadAddon().probeBpfHelper(progType, helperId);
}

/** Whether a bpffs pin holds a map, a program or a link. */
export function pinnedObjectType(path: string): PinnedObjectKind {
  return loadAddon().pinnedObjectType(path);
}
