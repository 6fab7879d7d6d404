// DNS-aware egress in the kernel (docs/architecture.md, "DNS-aware egress").
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONST } from '../../src/datapath/abi.js';
import { Datapath } from '../../src/datapath/datapath.js';
import { KernelBed } from '../helpers/kernel.js';

let bed: KernelBed;

beforeAll(async () => {
  bed = await KernelBed.create({ eventIntervalMs: 60_000 });
});

afterAll(() => {
  bed?.close();
});

describe('the per-node DNS secret (weir_node.dns_secret)', () => {
  it('is set once, random and non-zero, kept by node-flag writes and by a restarted agent', async () => {
    const secret = bed.dp.dnsSecret();
    expect(secret).not.toBe(0n);
    expect(bed.dp.dnsSecret()).toBe(secret);
    bed.dp.setNodeFlags(CONST.WEIR_NODE_F_CT_FULL);
    expect(bed.dp.nodeState()).toMatchObject({ flags: CONST.WEIR_NODE_F_CT_FULL, dnsSecret: secret });
    bed.dp.setNodeFlags(0);
    expect(bed.dp.nodeState()).toMatchObject({ flags: 0, dnsSecret: secret });
    const second = await Datapath.open({ bpffs: '/sys/fs/bpf', pinDir: bed.pinDir, podLevel: 0, logger: pino({ level: 'silent' }) });
    try {
      expect(second.dnsSecret()).toBe(secret);
    } finally {
      second.close();
    }
  });
});
