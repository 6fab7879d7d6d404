// Kernel tests of the event path under pressure: a full ring buffer never
// loses a violation silently.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KernelBed, inCgroup, nonLoopbackIfindex, type TestPod } from '../helpers/kernel.js';
import { IPPROTO, packet, skbContext } from '../helpers/packets.js';
import type { RawEvent } from '../../src/datapath/abi.js';

let bed: KernelBed;
let pod: TestPod;
const received: RawEvent[] = [];

beforeAll(async () => {
  // One page of ring buffer: room for a few dozen 104-byte records.
  bed = await KernelBed.create({ capacities: { ringbufBytes: 4096 } });
  pod = bed.addPod('ml', 'flooder', { app: 'flood' }, ['10.244.0.50']);
  bed.add({
    apiVersion: 'weir.dev/v1alpha1',
    kind: 'EgressPolicy',
    metadata: { name: 'deny-all', namespace: 'ml' },
    spec: { podSelector: {} },
  });
  bed.sync();
  bed.dp.startEvents((evs) => received.push(...evs), () => {});
});

afterAll(() => bed?.close());

describe('ring buffer full', () => {
  it('counts every event it could not queue; sent = received and sent + lost = violations', () => {
    const ctx = skbContext(nonLoopbackIfindex());
    const flows = 500; // distinct flows, so aggregation does not fold them
    const before = bed.dp.stats();
    inCgroup(pod.container(), () => {
      for (let i = 0; i < flows; i++) {
        const data = packet({ src: '10.244.0.50', dst: '203.0.113.10', proto: IPPROTO.TCP, sport: 40000, dport: 1000 + i });
        expect(bed.dp.testRun('weir_egress', { data, ctx }).retval).toBe(0);
      }
    });
    const after = bed.dp.stats();
    const sent = after.events_sent - before.events_sent;
    const lost = after.events_lost - before.events_lost;
    expect(lost).toBeGreaterThan(0n); // the page really filled up
    expect(sent + lost).toBe(BigInt(flows));
    bed.dp.drainEvents();
    expect(BigInt(received.length)).toBe(sent);
    // Drops are still counted exactly, event or not.
    const drops = bed.dp.counters(bed.endpointOf(pod)).packets.drop?.packets ?? 0n;
    expect(drops).toBe(BigInt(flows));
  });

  it('a lost event violation is carried by the next event of the same flow', async () => {
    // Fill the ring, then lose an event for flow F; after draining, F's next
    // event (once the interval passed) reports count 2.
    const ctx = skbContext(nonLoopbackIfindex());
    const send = (dport: number): number =>
      inCgroup(pod.container(), () =>
        bed.dp.testRun('weir_egress', { data: packet({ src: '10.244.0.50', dst: '198.51.100.1', proto: IPPROTO.UDP, dport }), ctx }).retval,
      );
    for (let i = 0; i < 200; i++) send(20000 + i); // fill
    const lost0 = bed.dp.stats().events_lost;
    send(30000); // F: lost
    expect(bed.dp.stats().events_lost).toBe(lost0 + 1n);
    bed.dp.drainEvents();
    received.length = 0;
    await new Promise((r) => setTimeout(r, 1100)); // event interval of the bed: 1 s
    send(30000);
    bed.dp.drainEvents();
    const f = received.find((e) => e.dport === 30000);
    expect(f?.count).toBe(2);
  });
});
