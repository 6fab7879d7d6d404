// `weir agent --cleanup`: every program weir attached is detached and every
// pin it made is removed; another tool's program on the same cgroup, and
// another tool's pins in the same directory, are left as they were.
import { existsSync, mkdirSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanup } from '../../src/datapath/cleanup.js';
import { cgroupIdOf } from '../../src/datapath/cgroups.js';
import { MAP_NAMES, PROGRAMS } from '../../src/datapath/datapath.js';
import { bpfConstants, BpfObject, progQuery, type BpfLink } from '../../src/native/index.js';
import { KernelBed } from '../helpers/kernel.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const BPF = bpfConstants();
const HOOKS = [
  BPF.BPF_CGROUP_INET_EGRESS,
  BPF.BPF_CGROUP_INET_INGRESS,
  BPF.BPF_CGROUP_INET4_CONNECT,
  BPF.BPF_CGROUP_INET6_CONNECT,
  BPF.BPF_CGROUP_UDP4_SENDMSG,
  BPF.BPF_CGROUP_UDP6_SENDMSG,
];

let bed: KernelBed;
let foreign: BpfObject;
let foreignLink: BpfLink;

beforeAll(async () => {
  bed = await KernelBed.create();
  foreign = await BpfObject.load(join(root, 'build/bpf/fixtures/addon_fixture.bpf.o'));
  foreignLink = foreign.program('fixture_egress').attachCgroup(bed.podsRoot);
});

afterAll(() => {
  foreignLink?.close();
  foreign?.close();
  bed?.close();
});

describe('weir agent --cleanup', () => {
  it('detaches and unpins exactly what weir made', () => {
    bed.dp.attach(bed.podsRoot, cgroupIdOf(bed.podsRoot));
    const attached = HOOKS.flatMap((h) => progQuery(bed.podsRoot, h).progIds);
    expect(attached.length).toBe(PROGRAMS.length + 1); // weir's six and the other tool's one
    // Another tool keeps a pin of its own in weir's directory.
    mkdirSync(join(bed.pinDir, 'other-tool'));
    foreign.map('fixture_counters').pin(join(bed.pinDir, 'maps', 'other_tool_map'));
    // The agent is gone (crashed, or stopped for removal); its pins remain.
    bed.dp.close();

    const r = cleanup(bed.pinDir);
    expect(r.detached.map((d) => d.program).sort()).toEqual(PROGRAMS.map((p) => p.program).sort());
    expect(r.detached.every((d) => d.cgroupId === cgroupIdOf(bed.podsRoot).toString())).toBe(true);
    expect(r.unpinned.sort()).toEqual([...MAP_NAMES].sort());
    expect(r.leftAlone.map((l) => l.path).sort()).toEqual([join(bed.pinDir, 'maps', 'other_tool_map'), join(bed.pinDir, 'other-tool')].sort());
    expect(r.removedDir).toBe(false);
    // Nothing of weir's is attached any more; the other tool's program still is.
    const left = HOOKS.flatMap((h) => progQuery(bed.podsRoot, h).progIds);
    expect(left).toEqual([foreign.program('fixture_egress').id]);
    expect(existsSync(join(bed.pinDir, 'links'))).toBe(false);
    expect(readdirSync(join(bed.pinDir, 'maps'))).toEqual(['other_tool_map']);
  });

  it('is idempotent, and removes the directory once only weir\'s things were in it', () => {
    const again = cleanup(bed.pinDir);
    expect(again.detached).toEqual([]);
    expect(again.unpinned).toEqual([]);
    // Remove the other tool's pins; now the directory goes too.
    cleanup(bed.pinDir);
    unlinkSync(join(bed.pinDir, 'maps', 'other_tool_map'));
    rmSync(join(bed.pinDir, 'other-tool'), { recursive: true });
    const last = cleanup(bed.pinDir);
    expect(last.removedDir).toBe(true);
    expect(existsSync(bed.pinDir)).toBe(false);
    expect(cleanup(bed.pinDir)).toMatchObject({ detached: [], unpinned: [], leftAlone: [], removedDir: false });
  });
});
