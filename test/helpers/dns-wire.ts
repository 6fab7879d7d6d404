// DNS messages for tests: a builder (names, questions, A/AAAA/CNAME
// records, raw bytes for compression and abuse cases), frames carrying them
// for BPF_PROG_TEST_RUN, and a reference parser that states, in plain
// TypeScript, exactly what bpf/lib/dns.h must extract from any message
// (same limits, same order of checks). Tests compare the kernel's result
// with it on crafted and randomly mutated messages.
import { addressBytes } from '../../src/policy/prefix.js';

export const DNS = {
  BUF: 2048,
  MAX_LABELS: 128,
  MAX_HOPS: 16,
  MAX_NAME: 255,
  MAX_ANSWERS: 64,
  MAX_CHAIN: 8,
  TYPE_A: 1,
  TYPE_CNAME: 5,
  TYPE_TXT: 16,
  TYPE_AAAA: 28,
  CLASS_IN: 1,
} as const;

/** enum weir_dns_err */
export const DNS_ERR = {
  OK: 0,
  SHORT: 1,
  KIND: 2,
  RCODE: 3,
  TRUNCATED: 4,
  QDCOUNT: 5,
  NAME_TRUNC: 6,
  PTR_LOOP: 7,
  PTR_HOPS: 8,
  NAME_LONG: 9,
  NAME_LABELS: 10,
  LABEL_TYPE: 11,
  QUESTION: 12,
  RECORD: 13,
  RDATA: 14,
  PTR_IN_QUESTION: 15,
  STEPS: 16,
} as const;

export function encodeName(name: string): Buffer {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  const parts: Buffer[] = [];
  if (n !== '') {
    for (const l of n.split('.')) {
      const b = Buffer.from(l, 'latin1');
      parts.push(Buffer.from([b.length]), b);
    }
  }
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

/** A compression pointer to offset off. */
export function ptr(off: number): Buffer {
  return Buffer.from([0xc0 | (off >> 8), off & 0xff]);
}

export interface Record {
  /** Owner: a dotted name, or raw wire bytes (pointers and all). */
  name: string | Buffer;
  type: number;
  class?: number;
  ttl?: number;
  /** A/AAAA: an address; CNAME: a dotted name or raw bytes; else raw rdata. */
  data: string | Buffer;
  /** Override rdlength. */
  rdlen?: number;
}

export function encodeRecord(r: Record): Buffer {
  const owner = typeof r.name === 'string' ? encodeName(r.name) : r.name;
  let rdata: Buffer;
  if (typeof r.data !== 'string') rdata = r.data;
  else if (r.type === DNS.TYPE_A || r.type === DNS.TYPE_AAAA) rdata = Buffer.from(addressBytes(r.data).bytes);
  else rdata = encodeName(r.data);
  const fixed = Buffer.alloc(10);
  fixed.writeUInt16BE(r.type, 0);
  fixed.writeUInt16BE(r.class ?? DNS.CLASS_IN, 2);
  fixed.writeUInt32BE((r.ttl ?? 60) >>> 0, 4);
  fixed.writeUInt16BE(r.rdlen ?? rdata.length, 8);
  return Buffer.concat([owner, fixed, rdata]);
}

export interface Message {
  id?: number;
  response?: boolean;
  opcode?: number;
  rcode?: number;
  tc?: boolean;
  qdcount?: number;
  ancount?: number;
  /** Question name (dotted) or raw wire bytes. */
  qname: string | Buffer;
  qtype?: number;
  qclass?: number;
  answers?: (Record | Buffer)[];
  /** Bytes after the answers (authority/additional, padding). */
  trailer?: Buffer;
}

export function buildMessage(m: Message): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(m.id ?? 0x1234, 0);
  const response = m.response ?? true;
  let flags = (response ? 0x8000 : 0) | ((m.opcode ?? 0) << 11) | 0x0100 | (response ? 0x0080 : 0) | (m.rcode ?? 0);
  if (m.tc) flags |= 0x0200;
  h.writeUInt16BE(flags, 2);
  const answers = (m.answers ?? []).map((a) => (Buffer.isBuffer(a) ? a : encodeRecord(a)));
  h.writeUInt16BE(m.qdcount ?? 1, 4);
  h.writeUInt16BE(m.ancount ?? answers.length, 6);
  const q = Buffer.concat([typeof m.qname === 'string' ? encodeName(m.qname) : m.qname, Buffer.alloc(4)]);
  q.writeUInt16BE(m.qtype ?? DNS.TYPE_A, q.length - 4);
  q.writeUInt16BE(m.qclass ?? DNS.CLASS_IN, q.length - 2);
  return Buffer.concat([h, q, ...answers, m.trailer ?? Buffer.alloc(0)]);
}

/** Ethernet + IPv4/IPv6 + UDP frame carrying payload, for test_run. */
export function udpFrame(opts: { src: string; dst: string; sport: number; dport: number; payload: Buffer; udpLen?: number }): Buffer {
  const s = addressBytes(opts.src);
  const d = addressBytes(opts.dst);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(opts.sport, 0);
  udp.writeUInt16BE(opts.dport, 2);
  udp.writeUInt16BE(opts.udpLen ?? (8 + opts.payload.length) & 0xffff, 4);
  const eth = Buffer.alloc(14);
  let ip: Buffer;
  if (s.family === 4) {
    eth.writeUInt16BE(0x0800, 12);
    ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(Math.min(0xffff, 20 + 8 + opts.payload.length), 2);
    ip[8] = 64;
    ip[9] = 17;
    Buffer.from(s.bytes).copy(ip, 12);
    Buffer.from(d.bytes).copy(ip, 16);
  } else {
    eth.writeUInt16BE(0x86dd, 12);
    ip = Buffer.alloc(40);
    ip[0] = 0x60;
    ip.writeUInt16BE(Math.min(0xffff, 8 + opts.payload.length), 4);
    ip[6] = 17;
    ip[7] = 64;
    Buffer.from(s.bytes).copy(ip, 8);
    Buffer.from(d.bytes).copy(ip, 24);
  }
  return Buffer.concat([eth, ip, udp, opts.payload]);
}

// ---- reference parser ---------------------------------------------------

export interface LearnedAddr {
  family: 4 | 6;
  link: number;
  ttl: number;
  addr: string; // hex of the rdata bytes
}

export interface ParseResult {
  err: number;
  /** Labels of the question name when it was read. */
  qlabels: Buffer[] | null;
  nanswers: number;
  addrs: LearnedAddr[];
  /** Names of the chain (lower-cased labels joined with '.' in hex). */
  chain: string[];
}

type NameRead = { err: number } | { err: 0; end: number; labels: Buffer[] };

function lower(b: Buffer): Buffer {
  return Buffer.from(b.map((c) => (c >= 0x41 && c <= 0x5a ? c + 0x20 : c)));
}

function canon(labels: Buffer[]): string {
  return labels.map((l) => lower(l).toString('hex')).join('.');
}

function readName(buf: Buffer, len: number, start: number, noPtr: boolean): NameRead {
  let p = start;
  let seg = start;
  let end = 0;
  let wire = 0;
  let hops = 0;
  const labels: Buffer[] = [];
  for (let step = 0; step < DNS.MAX_LABELS + DNS.MAX_HOPS + 1; step++) {
    if (p >= len) return { err: DNS_ERR.NAME_TRUNC };
    const l = buf[p] as number;
    if (l === 0) {
      if (!end) end = p + 1;
      return labels.length > 0 ? { err: 0, end, labels } : { err: DNS_ERR.QUESTION };
    }
    if ((l & 0xc0) === 0xc0) {
      if (noPtr) return { err: DNS_ERR.PTR_IN_QUESTION };
      if (p + 1 >= len) return { err: DNS_ERR.NAME_TRUNC };
      const tgt = ((l & 0x3f) << 8) | (buf[p + 1] as number);
      if (tgt >= seg) return { err: DNS_ERR.PTR_LOOP };
      if (++hops > DNS.MAX_HOPS) return { err: DNS_ERR.PTR_HOPS };
      if (!end) end = p + 2;
      p = tgt;
      seg = tgt;
      continue;
    }
    if (l & 0xc0) return { err: DNS_ERR.LABEL_TYPE };
    if (p + 1 + l > len) return { err: DNS_ERR.NAME_TRUNC };
    wire += l + 1;
    if (wire + 1 > DNS.MAX_NAME) return { err: DNS_ERR.NAME_LONG };
    if (labels.length >= DNS.MAX_LABELS) return { err: DNS_ERR.NAME_LABELS };
    labels.push(buf.subarray(p + 1, p + 1 + l));
    p = p + 1 + l;
  }
  return { err: DNS_ERR.STEPS };
}

/** What the kernel parser must find in msg (the UDP payload). */
export function referenceParse(msg: Buffer, response: boolean): ParseResult {
  const out: ParseResult = { err: 0, qlabels: null, nanswers: 0, addrs: [], chain: [] };
  const len = Math.min(msg.length, DNS.BUF);
  if (len < 12) return { ...out, err: DNS_ERR.SHORT };
  const u16 = (p: number) => ((msg[p] as number) << 8) | (msg[p + 1] as number);
  const flags = u16(2);
  if (((flags >> 15) & 1) !== (response ? 1 : 0) || ((flags >> 11) & 0xf) !== 0) return { ...out, err: DNS_ERR.KIND };
  if (response && flags & 0xf) return { ...out, err: DNS_ERR.RCODE };
  if (response && flags & 0x0200) return { ...out, err: DNS_ERR.TRUNCATED };
  if (u16(4) !== 1) return { ...out, err: DNS_ERR.QDCOUNT };
  const ancount = u16(6);
  const q = readName(msg, len, 12, !response);
  if (q.err !== 0 || !('end' in q)) return { ...out, err: q.err };
  out.qlabels = q.labels;
  let pos = q.end;
  if (pos + 4 > len) return { ...out, err: DNS_ERR.QUESTION };
  if (u16(pos + 2) !== DNS.CLASS_IN) return { ...out, err: DNS_ERR.QUESTION };
  pos += 4;
  out.chain.push(canon(q.labels));
  if (!response) return out;
  const count = Math.min(ancount, DNS.MAX_ANSWERS);
  for (let i = 0; i < count; i++) {
    const owner = readName(msg, len, pos, false);
    if (owner.err !== 0 || !('end' in owner)) return { ...out, err: owner.err };
    pos = owner.end;
    if (pos + 10 > len) return { ...out, err: DNS_ERR.RECORD };
    const type = u16(pos);
    const cls = u16(pos + 2);
    let ttl = ((u16(pos + 4) << 16) | u16(pos + 6)) >>> 0;
    if (ttl & 0x80000000) ttl = 0;
    const rdlen = u16(pos + 8);
    const rdata = pos + 10;
    if (rdata + rdlen > len) return { ...out, err: DNS_ERR.RECORD };
    pos = rdata + rdlen;
    const link = out.chain.indexOf(canon(owner.labels));
    if (cls === DNS.CLASS_IN && link >= 0) {
      if ((type === DNS.TYPE_A && rdlen === 4) || (type === DNS.TYPE_AAAA && rdlen === 16)) {
        if (out.addrs.length < DNS.MAX_ANSWERS) {
          out.addrs.push({ family: type === DNS.TYPE_A ? 4 : 6, link, ttl, addr: msg.subarray(rdata, rdata + rdlen).toString('hex') });
        }
      } else if (type === DNS.TYPE_CNAME && out.chain.length <= DNS.MAX_CHAIN) {
        const t = readName(msg, len, rdata, false);
        if (t.err !== 0 || !('end' in t)) return { ...out, err: t.err };
        if (t.end > rdata + rdlen) return { ...out, err: DNS_ERR.RDATA };
        const c = canon(t.labels);
        if (!out.chain.includes(c)) out.chain.push(c);
      }
    }
    out.nanswers = i + 1;
  }
  return out;
}
