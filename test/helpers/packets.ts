// Raw packets for BPF_PROG_TEST_RUN on cgroup_skb programs. The kernel
// builds the skb from an Ethernet frame and hands the program the IP
// header onwards. Checksums are left zero: cgroup_skb does not check them.
import { addressBytes } from '../../src/policy/prefix.js';

export const IPPROTO = { ICMP: 1, TCP: 6, UDP: 17, SCTP: 132, ICMPV6: 58 } as const;

export interface PacketSpec {
  src: string;
  dst: string;
  proto: number;
  sport?: number;
  dport?: number;
  tcpFlags?: number; // default ACK
  icmpType?: number;
  icmpId?: number;
  payload?: number;
  /** IPv4: fragment offset in 8-byte units (non-zero = non-first fragment). */
  fragOffset?: number;
  /** IPv6 extension headers to insert before L4 (next-header numbers: 0 hop, 60 dst, 43 routing, 44 fragment). */
  ext6?: number[];
}

export const TCP_SYN = 0x02;
export const TCP_ACK = 0x10;

function l4(spec: PacketSpec): Buffer {
  const pay = Buffer.alloc(spec.payload ?? 0, 0x61);
  switch (spec.proto) {
    case IPPROTO.TCP: {
      const h = Buffer.alloc(20);
      h.writeUInt16BE(spec.sport ?? 40000, 0);
      h.writeUInt16BE(spec.dport ?? 80, 2);
      h.writeUInt8(5 << 4, 12);
      h.writeUInt8(spec.tcpFlags ?? TCP_ACK, 13);
      h.writeUInt16BE(65535, 14);
      return Buffer.concat([h, pay]);
    }
    case IPPROTO.UDP:
    case IPPROTO.SCTP: {
      const h = Buffer.alloc(spec.proto === IPPROTO.UDP ? 8 : 12);
      h.writeUInt16BE(spec.sport ?? 40000, 0);
      h.writeUInt16BE(spec.dport ?? 53, 2);
      if (spec.proto === IPPROTO.UDP) h.writeUInt16BE(8 + pay.length, 4);
      return Buffer.concat([h, pay]);
    }
    case IPPROTO.ICMP:
    case IPPROTO.ICMPV6: {
      const h = Buffer.alloc(8);
      h.writeUInt8(spec.icmpType ?? (spec.proto === IPPROTO.ICMP ? 8 : 128), 0);
      h.writeUInt16BE(spec.icmpId ?? 0x1234, 4);
      h.writeUInt16BE(1, 6);
      return Buffer.concat([h, pay]);
    }
    default:
      return pay;
  }
}

export function packet(spec: PacketSpec): Buffer {
  const s = addressBytes(spec.src);
  const d = addressBytes(spec.dst);
  if (s.family !== d.family) throw new Error('source and destination families differ');
  const body = spec.fragOffset ? Buffer.alloc(8 + (spec.payload ?? 0), 0x62) : l4(spec);
  const eth = Buffer.alloc(14);
  eth.fill(0x02, 0, 12);
  if (s.family === 4) {
    eth.writeUInt16BE(0x0800, 12);
    const ip = Buffer.alloc(20);
    ip.writeUInt8(0x45, 0);
    ip.writeUInt16BE(20 + body.length, 2);
    ip.writeUInt16BE((spec.fragOffset ?? 0) & 0x1fff, 6);
    ip.writeUInt8(64, 8);
    ip.writeUInt8(spec.proto, 9);
    Buffer.from(s.bytes).copy(ip, 12);
    Buffer.from(d.bytes).copy(ip, 16);
    return Buffer.concat([eth, ip, body]);
  }
  eth.writeUInt16BE(0x86dd, 12);
  const exts: Buffer[] = [];
  const chain = [...(spec.ext6 ?? []), spec.proto];
  for (let i = 0; i < (spec.ext6 ?? []).length; i++) {
    const type = chain[i] as number;
    const next = chain[i + 1] as number;
    const e = Buffer.alloc(8);
    e.writeUInt8(next, 0);
    if (type === 44) e.writeUInt16BE(((spec.fragOffset ?? 0) << 3) & 0xfff8, 2);
    exts.push(e);
  }
  const first = chain[0] as number;
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  const payloadLen = exts.reduce((n, e) => n + e.length, 0) + body.length;
  ip.writeUInt16BE(payloadLen, 4);
  ip.writeUInt8(first, 6);
  ip.writeUInt8(64, 7);
  Buffer.from(s.bytes).copy(ip, 8);
  Buffer.from(d.bytes).copy(ip, 24);
  return Buffer.concat([eth, ip, ...exts, body]);
}

/** A struct __sk_buff context with only ifindex set (192 bytes, ifindex at 40). */
export function skbContext(ifindex: number): Buffer {
  const ctx = Buffer.alloc(192);
  ctx.writeUInt32LE(ifindex, 40);
  return ctx;
}
