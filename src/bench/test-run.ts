// What the benches that run weir's programs with BPF_PROG_TEST_RUN share:
// where this process's cgroup is (to come back to after joining a pod's),
// the interface index a cgroup_skb context needs, and TCP test frames.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultCgroupRoot } from '../datapath/cgroups.js';

/** This process's cgroup v2 directory. */
export function ownCgroupDir(): string {
  const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'));
  return join(defaultCgroupRoot(), line ? line.slice(3) : '/');
}

/** A non-loopback interface's index, for the __sk_buff context of a test run. */
export function testRunIfindex(): number {
  for (const n of readdirSync('/sys/class/net')) {
    if (n !== 'lo') return Number(readFileSync(`/sys/class/net/${n}/ifindex`, 'utf8').trim());
  }
  throw new Error('no non-loopback interface for test_run');
}

export const TCP_SYN = 0x02;
export const TCP_ACK = 0x10;

/**
 * An Ethernet frame carrying one TCP segment (no payload) from src to
 * dst:port, source port 40000. Addresses as bytes: 4 for IPv4, 16 for IPv6.
 */
export function tcpFrame(src: Uint8Array, dst: Uint8Array, port: number, flags: number): Buffer {
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(40000, 0);
  tcp.writeUInt16BE(port, 2);
  tcp.writeUInt8(0x50, 12);
  tcp.writeUInt8(flags, 13);
  const eth = Buffer.alloc(14);
  if (dst.length === 4) {
    eth.writeUInt16BE(0x0800, 12);
    const ip = Buffer.alloc(20);
    ip.writeUInt8(0x45, 0);
    ip.writeUInt16BE(40, 2);
    ip.writeUInt8(64, 8);
    ip.writeUInt8(6, 9);
    Buffer.from(src).copy(ip, 12);
    Buffer.from(dst).copy(ip, 16);
    return Buffer.concat([eth, ip, tcp]);
  }
  eth.writeUInt16BE(0x86dd, 12);
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(20, 4);
  ip.writeUInt8(6, 6);
  ip.writeUInt8(64, 7);
  Buffer.from(src).copy(ip, 8);
  Buffer.from(dst).copy(ip, 24);
  return Buffer.concat([eth, ip, tcp]);
}

/** Dotted-quad text to its 4 bytes. */
export function ipv4Bytes(text: string): Uint8Array {
  return Uint8Array.from(text.split('.').map(Number));
}
