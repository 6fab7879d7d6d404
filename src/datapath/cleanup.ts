// `weir agent --cleanup`: removes what weir left on a node, and nothing
// else. weir attaches only through bpf_links pinned under <pinDir>/links
// and keeps its maps pinned under <pinDir>/maps (docs/architecture.md), so
// everything it made is reachable from the pin directory:
//   - each pinned link that is weir's — pinned under one of weir's program
//     names, a cgroup link, on that program's hook — is detached (BPF_LINK_DETACH: the program leaves the cgroup at once,
//     even if another process still holds the link) and unpinned;
//   - each pinned map with one of weir's map names is unpinned (the kernel
//     frees it when the last program using it is gone);
//   - the directories are removed when empty.
// Anything else found there (a pin of another tool, an unknown file) is left
// in place and reported. Attachments of other tools on the same cgroups are
// never touched: weir never looks them up.
import { existsSync, readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { BpfLink, pinnedObjectType } from '../native/index.js';
import { MAP_NAMES, PROGRAMS } from './datapath.js';

export interface CleanupReport {
  pinDir: string;
  /** Links detached and unpinned: program name, link id, cgroup id. */
  detached: { program: string; linkId: number; cgroupId: string | null }[];
  /** Map pins removed. */
  unpinned: string[];
  /** Paths left alone, and why. */
  leftAlone: { path: string; why: string }[];
  /** The pin directory itself was removed. */
  removedDir: boolean;
}

// libbpf's names of the hooks (libbpf_bpf_attach_type_str), by weir's names.
const HOOK_NAMES: Record<string, string> = {
  egress: 'cgroup_inet_egress',
  ingress: 'cgroup_inet_ingress',
  connect4: 'cgroup_inet4_connect',
  connect6: 'cgroup_inet6_connect',
  sendmsg4: 'cgroup_udp4_sendmsg',
  sendmsg6: 'cgroup_udp6_sendmsg',
};
const HOOK_OF = new Map(PROGRAMS.map((p) => [p.program, HOOK_NAMES[p.attachType]]));
const WEIR_MAPS = new Set<string>(MAP_NAMES);

export function cleanup(pinDir: string): CleanupReport {
  const report: CleanupReport = { pinDir, detached: [], unpinned: [], leftAlone: [], removedDir: false };
  if (!existsSync(pinDir)) return report;
  const links = join(pinDir, 'links');
  for (const f of existsSync(links) ? readdirSync(links) : []) {
    const path = join(links, f);
    const kind = safeKind(path);
    if (kind !== 'link') {
      report.leftAlone.push({ path, why: `not a BPF link (${kind})` });
      continue;
    }
    const link = BpfLink.openPinned(path);
    try {
      // Identified from the link alone: reading the program's name by id
      // would need CAP_SYS_ADMIN, which the agent does not have.
      const info = link.info();
      const hook = HOOK_OF.get(f);
      if (hook === undefined || info.typeName !== 'cgroup' || info.attachTypeName !== hook) {
        report.leftAlone.push({ path, why: `a ${info.typeName} link on ${info.attachTypeName ?? 'no cgroup hook'}, not one of weir's` });
        continue;
      }
      link.detach();
      link.unpin();
      report.detached.push({ program: f, linkId: info.id, cgroupId: info.cgroupId !== undefined ? info.cgroupId.toString() : null });
    } finally {
      link.close();
    }
  }
  const maps = join(pinDir, 'maps');
  for (const f of existsSync(maps) ? readdirSync(maps) : []) {
    const path = join(maps, f);
    const kind = safeKind(path);
    if (kind !== 'map' || !WEIR_MAPS.has(f)) {
      report.leftAlone.push({ path, why: kind !== 'map' ? `not a BPF map (${kind})` : 'not one of weir\'s maps' });
      continue;
    }
    unlinkSync(path);
    report.unpinned.push(f);
  }
  for (const d of [links, maps]) if (existsSync(d) && readdirSync(d).length === 0) rmdirSync(d);
  if (readdirSync(pinDir).length === 0) {
    rmdirSync(pinDir);
    report.removedDir = true;
  } else {
    for (const f of readdirSync(pinDir)) if (f !== 'links' && f !== 'maps') report.leftAlone.push({ path: join(pinDir, f), why: 'not created by weir' });
  }
  return report;
}

function safeKind(path: string): string {
  try {
    return pinnedObjectType(path);
  } catch {
    return 'not a BPF object';
  }
}
