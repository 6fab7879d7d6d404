// Kernel tests of the native addon through its TypeScript wrapper: real
// loads (and a real verifier rejection), map operations on each map kind,
// BPF_PROG_TEST_RUN, ring-buffer delivery on the event loop, cgroup links,
// pinning. Runs as root. Everything it creates lives under a per-process
// bpffs directory and a per-process cgroup, both removed in afterAll.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, statfsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addonPath, isBpfSystemError, type BpfSystemError } from '../../src/native/addon.js';
import { cgroup2Mount, ensureBpffs } from '../../src/native/bpffs.js';
import { BpfLink, BpfMap, BpfObject, RingBuffer } from '../../src/native/kernel-objects.js';
import { hasBpfPrivileges, isRoot } from '../../src/native/privileges.js';
import {
  bpfConstants,
  cgroupId,
  libbpfVersion,
  linkInfoById,
  numPossibleCpus,
  pinnedObjectType,
  progInfo,
  progQuery,
} from '../../src/native/queries.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const fixture = join(root, 'build/bpf/fixtures/addon_fixture.bpf.o');
const badFixture = join(root, 'build/bpf/fixtures/addon_bad.bpf.o');
const BPF = bpfConstants();

// ---- helpers -----------------------------------------------------------

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const u64 = (n: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
};
/** fixture_verdicts key: the IPv4 destination's bytes as in the packet. */
const addrKey = (a: number, b: number, c: number, d: number): Buffer => Buffer.from([a, b, c, d]);

/** Ethernet + IPv4 + UDP frame to dst, the input cgroup_skb test runs take. */
function ipv4Frame(dst: Buffer): Buffer {
  const f = Buffer.alloc(14 + 20 + 8);
  f.writeUInt16BE(0x0800, 12); // ETH_P_IP
  f[14] = 0x45; // IPv4, 20-byte header
  f.writeUInt16BE(28, 16); // total length
  f[14 + 8] = 64; // ttl
  f[14 + 9] = 17; // UDP
  Buffer.from([10, 0, 0, 1]).copy(f, 14 + 12);
  dst.copy(f, 14 + 16);
  f.writeUInt16BE(40000, 34);
  f.writeUInt16BE(53, 36);
  f.writeUInt16BE(8, 38);
  return f;
}

/** The fixture's .rodata: struct addon_fixture_config {u32 default_verdict; u32 marker}. */
function fixtureConfig(defaultVerdict: number, marker: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(defaultVerdict, 0);
  b.writeUInt32LE(marker, 4);
  return b;
}

function sumPerCpuU64(value: Buffer, cpus: number): bigint {
  let sum = 0n;
  for (let i = 0; i < cpus; i++) sum += value.readBigUInt64LE(i * 8);
  return sum;
}

async function loadError(p: Promise<unknown>): Promise<BpfSystemError> {
  try {
    await p;
  } catch (err) {
    if (isBpfSystemError(err)) return err;
    throw err;
  }
  throw new Error('expected the promise to reject');
}

function syncError(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    if (err instanceof Error) return err;
    throw err;
  }
  throw new Error('expected the call to throw');
}

// A real gc() without starting the test process with --expose-gc.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Collects until `done()` or gives up; finalizers run between turns. */
async function collectUntil(done: () => boolean): Promise<void> {
  for (let i = 0; i < 100 && !done(); i++) {
    gc();
    await new Promise((r) => setTimeout(r, 10));
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        res(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        rej(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

// ---- per-run resources, always cleaned up --------------------------------

let bpffs = '';
let pinDir = '';
let cgDir = '';
const objects: BpfObject[] = [];
const links: BpfLink[] = [];
const ringBuffers: RingBuffer[] = [];

/** Loads the fixture and tracks it for cleanup. */
async function loadFixture(opts: Parameters<typeof BpfObject.load>[1] = {}): Promise<BpfObject> {
  const obj = await BpfObject.load(fixture, opts);
  objects.push(obj);
  return obj;
}

function track(link: BpfLink): BpfLink {
  links.push(link);
  return link;
}

beforeAll(() => {
  for (const f of [addonPath, fixture, badFixture]) {
    if (!existsSync(f)) throw new Error(`${f} is missing: run \`node scripts/build.mjs bpf native\``);
  }
  bpffs = ensureBpffs();
  pinDir = join(bpffs, `weir-test-${process.pid}`);
  mkdirSync(pinDir, { recursive: true });
  cgDir = join(cgroup2Mount(), `weir-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  mkdirSync(cgDir);
});

afterAll(() => {
  const problems: string[] = [];
  const attempt = (what: string, fn: () => void): void => {
    try {
      fn();
    } catch (err) {
      problems.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  for (const rb of ringBuffers) attempt('ring buffer close', () => rb.close());
  for (const l of links) attempt('link close', () => l.close());
  for (const o of objects) attempt('object close', () => o.close());
  if (pinDir !== '') attempt(`rm ${pinDir}`, () => rmSync(pinDir, { recursive: true, force: true }));
  if (cgDir !== '' && existsSync(cgDir)) {
    attempt(`rmdir ${cgDir}`, () => {
      // A child that just exited may take a moment to leave the cgroup.
      for (let i = 0; ; i++) {
        try {
          rmdirSync(cgDir);
          return;
        } catch (err) {
          if (i >= 50 || (err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
          spawnSync('sleep', ['0.1']);
        }
      }
    });
  }
  if (problems.length > 0) throw new Error(`cleanup failed:\n${problems.join('\n')}`);
});

// ---------------------------------------------------------------------------

describe('environment helpers', () => {
  it('ensureBpffs finds or mounts a bpffs and cgroup2Mount finds the cgroup v2 mount in /proc/self/mounts', () => {
    expect(statfsSync(bpffs).type).toBe(0xcafe4a11);
    const mounts = readFileSync('/proc/self/mounts', 'utf8');
    expect(mounts).toMatch(new RegExp(` ${cgroup2Mount()} cgroup2 `));
    expect(ensureBpffs(bpffs)).toBe(bpffs); // idempotent
  });

  it('isRoot() and hasBpfPrivileges() are true for the root user these tests run as', () => {
    expect(isRoot()).toBe(true);
    expect(hasBpfPrivileges()).toBe(true);
  });

  it('reports libbpf 1.x and the possible CPU count from /sys/devices/system/cpu/possible', () => {
    expect(libbpfVersion()).toMatch(/^1\.\d+$/);
    const possible = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
    const count = possible
      .split(',')
      .map((r) => r.split('-').map(Number))
      .reduce((n, [a, b]) => n + ((b ?? a ?? 0) - (a ?? 0) + 1), 0);
    expect(numPossibleCpus()).toBe(count);
  });
});

describe('BpfObject open and load', () => {
  it('open() lists programs (type, section, attach type) and maps before anything reaches the kernel', () => {
    const obj = BpfObject.open(fixture);
    objects.push(obj);
    expect(obj.loaded).toBe(false);
    const progs = obj.programs();
    expect(progs.map((p) => [p.name, p.sectionName, p.expectedAttachType])).toEqual([
      ['fixture_egress', 'cgroup_skb/egress', BPF.BPF_CGROUP_INET_EGRESS],
      ['fixture_egress_allow', 'cgroup_skb/egress', BPF.BPF_CGROUP_INET_EGRESS],
      ['fixture_connect4', 'cgroup/connect4', BPF.BPF_CGROUP_INET4_CONNECT],
    ]);
    expect(progs[0]?.type).toBe(BPF.BPF_PROG_TYPE_CGROUP_SKB);
    expect(progs[2]?.type).toBe(BPF.BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
    const maps = new Map(obj.maps().map((m) => [m.name, m]));
    expect(maps.get('fixture_verdicts')).toMatchObject({ type: BPF.BPF_MAP_TYPE_HASH, keySize: 4, valueSize: 4, maxEntries: 64 });
    expect(maps.get('fixture_counters')?.type).toBe(BPF.BPF_MAP_TYPE_PERCPU_ARRAY);
    expect(maps.get('fixture_events')?.type).toBe(BPF.BPF_MAP_TYPE_RINGBUF);
    expect([...maps.values()].some((m) => m.internal && m.name.endsWith('.rodata'))).toBe(true);
    expect(obj.initialValue('.rodata')).toEqual(fixtureConfig(1, 0));
    expect(syncError(() => obj.program('fixture_egress')).message).toMatch(/not loaded; call load\(\) first/);
    obj.close();
  });

  it('load() resolves and gives program and map handles that carry kernel ids', async () => {
    const obj = await loadFixture();
    expect(obj.loaded).toBe(true);
    const egress = obj.program('fixture_egress');
    expect(egress.id).toBeGreaterThan(0);
    expect(egress.fd).toBeGreaterThan(2);
    expect(egress.tag).toMatch(/^[0-9a-f]{16}$/);
    const info = progInfo(egress.id);
    expect(info).toMatchObject({ id: egress.id, type: BPF.BPF_PROG_TYPE_CGROUP_SKB, tag: egress.tag });
    expect('fixture_egress').toContain(info.name); // the kernel keeps 15 chars
    const verdicts = obj.map('fixture_verdicts');
    expect(verdicts).toMatchObject({ name: 'fixture_verdicts', keySize: 4, valueSize: 4, maxEntries: 64, perCpu: false });
    expect(verdicts.id).toBeGreaterThan(0);
  });

  it('a program the verifier rejects fails load() with code, negative errno, syscall and the verifier log', async () => {
    const err = await loadError(BpfObject.load(badFixture));
    expect(err.code).toBe('EACCES');
    expect(err.errno).toBe(-13);
    expect(err.syscall).toBe('bpf_object__load');
    expect(err.path).toBe(badFixture);
    expect(err.message).toMatch(/^bpf_object__load failed: EACCES \(Permission denied\)/);
    expect(err.message).toContain("verifier: R0 invalid mem access 'map_value_or_null'");
    expect(err.verifierLog).toContain('-- BEGIN PROG LOAD LOG --');
    expect(err.verifierLog).toContain("R0 invalid mem access 'map_value_or_null'");
    expect(err.verifierLog).toContain("prog 'addon_bad_egress'");
  });

  it('opening a missing file fails with ENOENT from bpf_object__open_file', () => {
    const err = syncError(() => BpfObject.open(join(root, 'build/bpf/fixtures/no-such.bpf.o')));
    expect(isBpfSystemError(err)).toBe(true);
    expect(err).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'bpf_object__open_file' });
  });

  it('setMapMaxEntries before load sizes the kernel map; configuring after load is refused', async () => {
    const obj = await loadFixture({ maxEntries: { fixture_verdicts: 128 } });
    expect(obj.map('fixture_verdicts').maxEntries).toBe(128);
    expect(syncError(() => obj.setMapMaxEntries('fixture_verdicts', 8)).message).toMatch(/must be called before load\(\)/);
    expect(syncError(() => obj.map('no_such_map')).message).toMatch(/no map named 'no_such_map'/);
  });

  it('autoload=false leaves a program out of the kernel and program() says so', async () => {
    const obj = await loadFixture({ autoload: { fixture_connect4: false } });
    expect(obj.programs().find((p) => p.name === 'fixture_connect4')?.autoload).toBe(false);
    expect(syncError(() => obj.program('fixture_connect4')).message).toMatch(/was not loaded/);
  });

  it('wrong argument types are TypeErrors that name the argument; wrong sizes are RangeErrors', async () => {
    const obj = await loadFixture();
    const verdicts = obj.map('fixture_verdicts');
    const e1 = syncError(() => verdicts.lookup('abc' as unknown as Buffer));
    expect(e1).toBeInstanceOf(TypeError);
    expect(e1.message).toBe('key must be a Buffer or Uint8Array');
    const e2 = syncError(() => verdicts.update(u32(1), u64(1n)));
    expect(e2).toBeInstanceOf(RangeError);
    expect(e2.message).toMatch(/^value: map 'fixture_verdicts' takes 4-byte values, got 8 bytes/);
    const e3 = syncError(() => obj.setMapMaxEntries('fixture_verdicts', -1));
    expect(e3.message).toMatch(/maxEntries/);
    const e4 = syncError(() => BpfObject.open(42 as unknown as string));
    expect(e4).toBeInstanceOf(TypeError);
    expect(e4.message).toBe('path must be a string');
  });
});

describe('maps', () => {
  it('HASH: update/lookup/delete round-trip; NOEXIST and EXIST fail with EEXIST and ENOENT', async () => {
    const obj = await loadFixture();
    const m = obj.map('fixture_verdicts');
    const k = addrKey(10, 1, 2, 3);
    expect(m.lookup(k)).toBeNull();
    m.update(k, u32(7));
    expect(m.lookup(k)).toEqual(u32(7));
    expect(syncError(() => m.update(k, u32(8), BPF.BPF_NOEXIST))).toMatchObject({
      code: 'EEXIST',
      errno: -17,
      syscall: 'bpf_map_update_elem',
    });
    m.update(k, u32(9), BPF.BPF_EXIST);
    expect(m.lookup(k)).toEqual(u32(9));
    expect(m.delete(k)).toBe(true);
    expect(m.delete(k)).toBe(false);
    const e = syncError(() => m.update(k, u32(1), BPF.BPF_EXIST));
    expect(e).toMatchObject({ code: 'ENOENT', syscall: 'bpf_map_update_elem' });
    expect(e.message).toBe("bpf_map_update_elem failed: ENOENT (No such file or directory): map 'fixture_verdicts'");
  });

  it('HASH: updateBatch writes every entry, keys() and dump() return them, deleteBatch counts only present keys', async () => {
    const obj = await loadFixture();
    const m = obj.map('fixture_verdicts');
    const n = 40;
    const keys = Buffer.concat(Array.from({ length: n }, (_, i) => addrKey(10, 9, 0, i)));
    const values = Buffer.concat(Array.from({ length: n }, (_, i) => u32(1000 + i)));
    expect(m.updateBatch(keys, values, n)).toBe(n);
    expect(m.lookup(addrKey(10, 9, 0, 17))).toEqual(u32(1017));

    const listed = m.keys().map((k) => k.toString('hex')).sort();
    expect(listed).toEqual(Array.from({ length: n }, (_, i) => addrKey(10, 9, 0, i).toString('hex')).sort());

    const d = m.dump();
    expect(d.count).toBe(n);
    expect(d.keys.length).toBe(n * 4);
    expect(d.values.length).toBe(n * 4);
    for (let i = 0; i < d.count; i++) {
      const last = d.keys[i * 4 + 3] ?? -1;
      expect(d.values.readUInt32LE(i * 4)).toBe(1000 + last);
    }

    // Delete the first 30 plus 5 keys that are not there.
    const del = Buffer.concat([keys.subarray(0, 30 * 4), ...Array.from({ length: 5 }, (_, i) => addrKey(192, 0, 2, i))]);
    expect(m.deleteBatch(del, 35)).toBe(30);
    expect(m.dump().count).toBe(10);
    expect(m.deleteBatch(keys, n)).toBe(10);
    expect(m.keys()).toEqual([]);
  });

  it('ARRAY: dump() returns every slot, update/lookup work by index, delete() is refused with EINVAL', async () => {
    const obj = await loadFixture();
    const m = obj.map('fixture_array');
    expect(m.type).toBe(BPF.BPF_MAP_TYPE_ARRAY);
    m.update(u32(2), u64(0xdeadbeefn));
    expect(m.lookup(u32(2))).toEqual(u64(0xdeadbeefn));
    expect(m.lookup(u32(4))).toBeNull(); // out of range reads as absent
    const d = m.dump();
    expect(d.count).toBe(4);
    expect(d.keys).toEqual(Buffer.concat([u32(0), u32(1), u32(2), u32(3)]));
    expect(d.values.readBigUInt64LE(16)).toBe(0xdeadbeefn);
    expect(m.keys()).toHaveLength(4);
    expect(m.updateBatch(Buffer.concat([u32(0), u32(3)]), Buffer.concat([u64(5n), u64(6n)]), 2)).toBe(2);
    expect(m.lookup(u32(3))).toEqual(u64(6n));
    expect(syncError(() => m.delete(u32(1)))).toMatchObject({ code: 'EINVAL', syscall: 'bpf_map_delete_elem' });
  });

  it('PERCPU_ARRAY: values are roundup(valueSize, 8) x possibleCpus bytes and round-trip per CPU, in lookup and dump', async () => {
    const obj = await loadFixture();
    const m = obj.map('fixture_counters');
    const cpus = numPossibleCpus();
    expect(m.perCpu).toBe(true);
    expect(m.possibleCpus).toBe(cpus);
    expect(m.valueSize).toBe(8);
    expect(m.valueBufferSize).toBe(8 * cpus);
    const v = Buffer.concat(Array.from({ length: cpus }, (_, i) => u64(BigInt(100 + i))));
    m.update(u32(1), v);
    expect(m.lookup(u32(1))).toEqual(v);
    const d = m.dump();
    expect(d.count).toBe(2);
    expect(d.values.length).toBe(2 * 8 * cpus);
    expect(d.values.subarray(8 * cpus)).toEqual(v);
    expect(syncError(() => m.update(u32(1), u64(1n)))).toBeInstanceOf(RangeError);
  });
});

describe('programs: BPF_PROG_TEST_RUN', () => {
  it('returns the HASH value for the destination as retval, and the default verdict (allow=1) on a miss', async () => {
    const obj = await loadFixture();
    const egress = obj.program('fixture_egress');
    const verdicts = obj.map('fixture_verdicts');
    const dst = addrKey(10, 0, 0, 2);
    expect(egress.testRun({ data: ipv4Frame(dst) }).retval).toBe(1);
    verdicts.update(dst, u32(0));
    const r = egress.testRun({ data: ipv4Frame(dst) });
    expect(r.retval).toBe(0);
    // The program saw our packet: it stored the destination in fixture_array[0].
    expect(obj.map('fixture_array').lookup(u32(0))?.readUInt32LE(0)).toBe(dst.readUInt32LE(0));
    // cgroup_skb output: same length, the L2 header zeroed by the kernel.
    expect(r.dataOut?.length).toBe(42);
    expect(r.dataOut?.subarray(14)).toEqual(ipv4Frame(dst).subarray(14));
  });

  it('with repeat, runs the program that many times (PERCPU counter) and reports durationNs > 0', async () => {
    const obj = await loadFixture();
    const egress = obj.program('fixture_egress');
    const counters = obj.map('fixture_counters');
    const before = sumPerCpuU64(counters.lookup(u32(0)) ?? Buffer.alloc(0), counters.possibleCpus);
    const r = egress.testRun({ data: ipv4Frame(addrKey(10, 0, 0, 3)), repeat: 1000 });
    expect(r.retval).toBe(1);
    expect(r.durationNs).toBeGreaterThan(0);
    const after = sumPerCpuU64(counters.lookup(u32(0)) ?? Buffer.alloc(0), counters.possibleCpus);
    expect(after - before).toBe(1000n);
  });

  it('testRunAsync runs on the thread pool and gives the same verdict as testRun', async () => {
    const obj = await loadFixture();
    const egress = obj.program('fixture_egress');
    obj.map('fixture_verdicts').update(addrKey(10, 0, 0, 4), u32(0));
    const r = await egress.testRunAsync({ data: ipv4Frame(addrKey(10, 0, 0, 4)), repeat: 100_000 });
    expect(r.retval).toBe(0);
    expect(r.durationNs).toBeGreaterThan(0);
  });

  it('setInitialValue(.rodata) before load is what the program reads: default verdict 0 drops on a miss', async () => {
    const obj = await loadFixture({ rodata: fixtureConfig(0, 77) });
    expect(obj.initialValue('.rodata')).toEqual(fixtureConfig(0, 77));
    expect(obj.program('fixture_egress').testRun({ data: ipv4Frame(addrKey(10, 0, 0, 5)) }).retval).toBe(0);
    const wrong = BpfObject.open(fixture);
    objects.push(wrong);
    expect(syncError(() => wrong.setInitialValue('.rodata', Buffer.alloc(4))).message).toBe(
      "value: map '.rodata' is 8 bytes, got 4",
    );
  });

  it('test_run of a cgroup/connect4 (sock_addr) program: runs, or fails as a system error ENOTSUPP (kernel 6.18 does not support it)', async () => {
    const obj = await loadFixture();
    const c4 = obj.program('fixture_connect4');
    let result: number | undefined;
    let error: Error | undefined;
    try {
      result = c4.testRun({ ctx: Buffer.alloc(72) }).retval;
    } catch (err) {
      error = err as Error;
    }
    if (error !== undefined) {
      expect(error).toMatchObject({ code: 'ENOTSUPP', errno: -524, syscall: 'bpf_prog_test_run_opts' });
    } else {
      expect(result).toBe(1);
    }
  });
});

describe('ring buffer', () => {
  it('delivers the drop-path records as one batch through the event loop', async () => {
    const obj = await loadFixture({ rodata: fixtureConfig(1, 4242) });
    const batches: Buffer[][] = [];
    const delivered = new Promise<Buffer[]>((res) => {
      const rb = new RingBuffer(obj.map('fixture_events'), (records) => {
        batches.push(records);
        res(records);
      });
      ringBuffers.push(rb);
    });
    const dst = addrKey(10, 0, 0, 9);
    obj.map('fixture_verdicts').update(dst, u32(0));
    // Five drops before the loop gets a turn: one wake-up, one batch.
    expect(obj.program('fixture_egress').testRun({ data: ipv4Frame(dst), repeat: 5 }).retval).toBe(0);
    const records = await withTimeout(delivered, 5000, 'ring buffer records');
    expect(batches).toHaveLength(1);
    expect(records).toHaveLength(5);
    for (const r of records) {
      expect(r.length).toBe(16);
      expect(r.readUInt32LE(0)).toBe(1); // type
      expect(r.subarray(4, 8)).toEqual(dst);
      expect(r.readUInt32LE(8)).toBe(4242); // marker from .rodata
      expect(r.readUInt32LE(12)).toBe(0); // verdict
    }
  });

  it('consume() drains pending records synchronously through the callback and returns their count', async () => {
    const obj = await loadFixture();
    const seen: number[] = [];
    const rb = new RingBuffer(obj.map('fixture_events'), (records) => seen.push(records.length));
    ringBuffers.push(rb);
    obj.map('fixture_verdicts').update(addrKey(10, 0, 0, 10), u32(0));
    obj.program('fixture_egress').testRun({ data: ipv4Frame(addrKey(10, 0, 0, 10)), repeat: 3 });
    expect(rb.consume()).toBe(3);
    expect(seen).toEqual([3]);
    expect(rb.consume()).toBe(0);
    expect(seen).toEqual([3]);
  });

  it('close() is idempotent, later calls throw, and a RingBuffer on a non-ringbuf map is a TypeError', async () => {
    const obj = await loadFixture();
    const rb = new RingBuffer(obj.map('fixture_events'), () => undefined);
    rb.close();
    rb.close();
    expect(rb.closed).toBe(true);
    expect(syncError(() => rb.consume()).message).toBe("RingBuffer 'fixture_events' is closed");
    const e = syncError(() => new RingBuffer(obj.map('fixture_verdicts'), () => undefined));
    expect(e).toBeInstanceOf(TypeError);
    expect(e.message).toBe("map: 'fixture_verdicts' is a hash map, not a ringbuf");
  });

  it('keeps delivering after its BpfObject is closed (it owns a dup of the map fd)', async () => {
    const obj = await loadFixture();
    const seen: Buffer[] = [];
    const rb = new RingBuffer(obj.map('fixture_events'), (records) => seen.push(...records));
    ringBuffers.push(rb);
    obj.map('fixture_verdicts').update(addrKey(10, 0, 0, 11), u32(0));
    obj.program('fixture_egress').testRun({ data: ipv4Frame(addrKey(10, 0, 0, 11)), repeat: 2 });
    obj.close();
    expect(rb.consume()).toBe(2);
    expect(seen).toHaveLength(2);
  });

  it('a closed ring buffer (or an unref()ed open one) does not keep the process alive', () => {
    const child = (closeIt: boolean): ReturnType<typeof spawnSync> =>
      spawnSync(
        process.execPath,
        [
          '-e',
          `const a = require(${JSON.stringify(addonPath)});
           const o = new a.BpfObject(${JSON.stringify(fixture)});
           o.load().then(() => {
             const rb = new a.RingBuffer(o.map('fixture_events'), () => {});
             if (${String(closeIt)}) rb.close(); else rb.unref();
             o.close();
           });`,
        ],
        { timeout: 15_000, encoding: 'utf8' },
      );
    for (const closeIt of [true, false]) {
      const r = child(closeIt);
      expect(r.signal, `child (close=${String(closeIt)}) had to be killed: the poll kept it alive`).toBeNull();
      expect(r.status, String(r.stderr)).toBe(0);
    }
  });
});

describe('cgroup links', () => {
  it('attachCgroup links a program to a fresh cgroup: progQuery lists it, info() names program, attach type and cgroupId()', async () => {
    const obj = await loadFixture();
    const egress = obj.program('fixture_egress');
    const link = track(egress.attachCgroup(cgDir));
    const q = progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS);
    expect(q.progIds).toContain(egress.id);
    expect(q.attachFlags & BPF.BPF_F_ALLOW_MULTI).toBe(BPF.BPF_F_ALLOW_MULTI);
    const info = link.info();
    expect(info).toMatchObject({
      progId: egress.id,
      type: BPF.BPF_LINK_TYPE_CGROUP,
      attachType: BPF.BPF_CGROUP_INET_EGRESS,
      cgroupId: cgroupId(cgDir),
    });
    expect(linkInfoById(info.id)).toEqual(info);
    link.close();
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).not.toContain(egress.id);
  });

  it('two links on one cgroup coexist: attaching never evicts a program already there', async () => {
    const a = await loadFixture();
    const b = await loadFixture();
    const pa = a.program('fixture_egress');
    const pb = b.program('fixture_egress');
    const la = track(pa.attachCgroup(cgDir));
    const lb = track(pb.attachCgroup(cgDir));
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual(expect.arrayContaining([pa.id, pb.id]));
    la.close();
    lb.close();
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual([]);
  });

  it('a pinned link survives close(); openPinned + update swaps the program in place; unpin removes the pin; detach ends it', async () => {
    const obj = await loadFixture();
    const egress = obj.program('fixture_egress');
    const allow = obj.program('fixture_egress_allow');
    const pin = join(pinDir, 'egress_link');
    const link = track(egress.attachCgroup(cgDir));
    link.pin(pin);
    expect(link.pinPath).toBe(pin);
    expect(pinnedObjectType(pin)).toBe('link');
    link.close();
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual([egress.id]);

    const reopened = track(BpfLink.openPinned(pin));
    const linkId = reopened.info().id;
    reopened.update(allow);
    expect(reopened.info()).toMatchObject({ id: linkId, progId: allow.id });
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual([allow.id]);
    // A program of another type cannot replace it.
    expect(syncError(() => reopened.update(obj.program('fixture_connect4')))).toMatchObject({
      code: 'EINVAL',
      syscall: 'bpf_link__update_program',
    });

    reopened.unpin();
    expect(existsSync(pin)).toBe(false);
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual([allow.id]);
    reopened.detach();
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual([]);
    reopened.close();
    reopened.close();
    expect(syncError(() => reopened.info()).message).toBe('Link is closed');
  });

  it('a connect4 program attached to the cgroup runs for a process inside it, and cgroupId() is what bpf_get_current_cgroup_id() returns there', async () => {
    const obj = await loadFixture();
    const c4 = obj.program('fixture_connect4');
    track(c4.attachCgroup(cgDir));
    expect(progQuery(cgDir, BPF.BPF_CGROUP_INET4_CONNECT).progIds).toEqual([c4.id]);
    const calls = obj.map('fixture_array');
    expect(calls.lookup(u32(1))).toEqual(u64(0n));
    // The child moves itself into the cgroup, then connects (refused or not,
    // connect() runs the hook first).
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `require('node:fs').writeFileSync(process.argv[1] + '/cgroup.procs', String(process.pid));
         const s = require('node:net').connect({ port: 9, host: '127.0.0.1' });
         s.on('error', () => process.exit(0));
         s.on('connect', () => { s.destroy(); process.exit(0); });`,
        cgDir,
      ],
      { timeout: 15_000, encoding: 'utf8' },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(calls.lookup(u32(1))?.readBigUInt64LE(0)).toBeGreaterThanOrEqual(1n);
    expect(calls.lookup(u32(2))?.readBigUInt64LE(0)).toBe(cgroupId(cgDir));
  });
});

describe('pinned maps', () => {
  it('setMapPinPath: a second object reuses the pinned map (same id): written through one, read through the other', async () => {
    const pin = join(pinDir, 'verdicts');
    const first = await loadFixture({ pinMaps: { fixture_verdicts: pin } });
    expect(pinnedObjectType(pin)).toBe('map');
    first.map('fixture_verdicts').update(addrKey(10, 7, 7, 7), u32(0));
    const second = await loadFixture({ pinMaps: { fixture_verdicts: pin } });
    expect(second.map('fixture_verdicts').id).toBe(first.map('fixture_verdicts').id);
    expect(second.map('fixture_verdicts').lookup(addrKey(10, 7, 7, 7))).toEqual(u32(0));
    // ...and the second object's program uses it.
    expect(second.program('fixture_egress').testRun({ data: ipv4Frame(addrKey(10, 7, 7, 7)) }).retval).toBe(0);
  });

  it('an incompatible pinned map fails load() with a clear error naming the pin', async () => {
    const pin = join(pinDir, 'verdicts_small');
    await loadFixture({ pinMaps: { fixture_verdicts: pin } });
    const err = await loadError(BpfObject.load(fixture, { maxEntries: { fixture_verdicts: 256 }, pinMaps: { fixture_verdicts: pin } }));
    expect(err).toMatchObject({ code: 'EINVAL', syscall: 'bpf_object__load' });
    expect(err.message).toContain(`couldn't reuse pinned map at '${pin}': parameter mismatch`);
    expect(err.verifierLog).toContain(pin);
  });

  it('BpfMap.openPinned owns its fd: it works after the pinning object is closed, and close() keeps the pin', async () => {
    const pin = join(pinDir, 'verdicts_open');
    const obj = await loadFixture({ pinMaps: { fixture_verdicts: pin } });
    obj.map('fixture_verdicts').update(addrKey(10, 8, 8, 8), u32(5));
    obj.close();
    const m = BpfMap.openPinned(pin);
    expect(m).toMatchObject({ name: 'fixture_verdict', type: BPF.BPF_MAP_TYPE_HASH, keySize: 4, valueSize: 4 });
    expect(m.lookup(addrKey(10, 8, 8, 8))).toEqual(u32(5));
    m.close();
    m.close();
    expect(syncError(() => m.lookup(addrKey(10, 8, 8, 8))).message).toBe("Map 'fixture_verdict' is closed");
    expect(existsSync(pin)).toBe(true);
    expect(syncError(() => BpfMap.openPinned(join(pinDir, 'nothing-here')))).toMatchObject({
      code: 'ENOENT',
      syscall: 'bpf_obj_get',
    });
  });

  it('map.pin()/unpin() create and remove a pin of a loaded map', async () => {
    const obj = await loadFixture();
    const m = obj.map('fixture_array');
    const pin = join(pinDir, 'array');
    m.pin(pin);
    const opened = BpfMap.openPinned(pin);
    expect(opened.id).toBe(m.id);
    opened.close();
    m.unpin(pin);
    expect(existsSync(pin)).toBe(false);
  });
});

describe('close', () => {
  it('close() is idempotent; afterwards the object and its programs and maps throw "BpfObject is closed"', async () => {
    const obj = await loadFixture();
    const prog = obj.program('fixture_egress');
    const map = obj.map('fixture_verdicts');
    obj.close();
    obj.close();
    expect(obj.closed).toBe(true);
    expect(prog.closed).toBe(true);
    expect(map.closed).toBe(true);
    expect(syncError(() => obj.program('fixture_egress')).message).toMatch(/^BpfObject is closed/);
    expect(syncError(() => obj.maps()).message).toMatch(/^BpfObject is closed/);
    expect(syncError(() => prog.testRun({ data: ipv4Frame(addrKey(1, 2, 3, 4)) })).message).toMatch(/^BpfObject is closed/);
    expect(syncError(() => map.lookup(u32(0))).message).toMatch(/^BpfObject is closed/);
    expect(syncError(() => prog.attachCgroup(cgDir)).message).toMatch(/^BpfObject is closed/);
  });

  it('closing a program or map handle releases only the handle', async () => {
    const obj = await loadFixture();
    const map = obj.map('fixture_verdicts');
    map.close();
    map.close();
    expect(syncError(() => map.keys()).message).toBe("Map 'fixture_verdicts' is closed");
    expect(obj.map('fixture_verdicts').keys()).toEqual([]);
    const prog = obj.program('fixture_egress');
    prog.close();
    expect(syncError(() => prog.id).message).toBe("Program 'fixture_egress' is closed");
    expect(obj.program('fixture_egress').id).toBeGreaterThan(0);
  });

  it('a map handle keeps its object alive after the object wrapper is collected; the unclosed object is reported, not closed', async () => {
    const leaks: string[] = [];
    const map = await (async () => {
      const obj = await BpfObject.load(fixture, { onLeak: (m) => leaks.push(m) });
      return obj.map('fixture_verdicts');
    })();
    await collectUntil(() => leaks.length > 0);
    expect(leaks).toEqual([`weir: BpfObject '${fixture}' was garbage-collected without close()`]);
    map.update(addrKey(10, 6, 6, 6), u32(1));
    expect(map.lookup(addrKey(10, 6, 6, 6))).toEqual(u32(1));
    map.close();
  });

  it('a link collected without close() is reported and stays attached (GC never detaches)', async () => {
    const obj = await loadFixture();
    const egress = obj.program('fixture_egress');
    const sub = join(cgDir, 'gc');
    mkdirSync(sub);
    try {
      const leaks: string[] = [];
      ((): void => {
        const link = BpfLink.openPinned(
          (() => {
            const l = egress.attachCgroup(sub);
            const pin = join(pinDir, 'gc_link');
            l.pin(pin);
            l.close();
            return pin;
          })(),
          { onLeak: (m) => leaks.push(m) },
        );
        link.unpin(); // now only this (soon unreachable) fd holds the link
      })();
      await collectUntil(() => leaks.length > 0);
      expect(leaks).toHaveLength(1);
      expect(leaks[0]).toMatch(/^weir: BpfLink \(link id \d+, program id \d+\) was garbage-collected without close\(\); it stays attached/);
      expect(progQuery(sub, BPF.BPF_CGROUP_INET_EGRESS).progIds).toEqual([egress.id]);
    } finally {
      // Removing the cgroup releases what is attached to it.
      rmdirSync(sub);
    }
  });

  it('close() during load() rejects the pending load and frees the object', async () => {
    const obj = BpfObject.open(fixture);
    const pending = obj.load();
    obj.close();
    expect(obj.closed).toBe(true);
    await expect(pending).rejects.toThrow(/BpfObject is closed: close\(\) was called while load\(\) was in progress/);
    expect(syncError(() => obj.program('fixture_egress')).message).toMatch(/^BpfObject is closed/);
  });
});
