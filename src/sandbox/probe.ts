#!/usr/bin/env node
// Traffic probe run inside sandbox pods and hosts. Self-contained (node:
// built-ins only, erasable TypeScript) so that `node src/sandbox/probe.ts`
// runs it straight from the source under tests, and dist/sandbox/probe.js
// once built.
//
//   probe tcp-connect HOST PORT [--timeout MS] [--echo] [--payload TEXT] [--family 4|6]
//   probe udp-send HOST PORT [--timeout MS] [--payload TEXT] [--connect] [--family 4|6]
//   probe serve [--tcp PORT]... [--udp PORT]...
//   probe tcp-stream HOST PORT [--interval MS] [--count N] [--echo-timeout MS] [--timeout MS]
//   probe ping HOST [--timeout MS] [--count N] [--family 4|6] [--system]
//   probe prober [--timeout MS] [--concurrency N]
//   probe resolve-connect NAME [PORT] [--via libc|udp] [--server IP] [--qtype A|AAAA] [--family 4|6]
//                               [--pick first|all|none] [--echo] [--no-edns] [--timeout MS] [--id N] [--sport PORT]
//   probe resolver
//   probe dns-latency SERVER --name NAME... [--count N] [--warmup N] [--qtype A|AAAA]
//   probe dns-inject --from IP --to IP --dport PORT --name NAME --answer ADDR... [--sport PORT] [--id N] [--ttl S]
//
// One-shot modes print one JSON line and exit 0 when ok, 1 when not:
//   {"mode":"tcp-connect","target":"10.20.0.10:80","ok":false,"code":"EPERM","ms":0.4}
// `code` is the errno name the kernel gave (EPERM: a BPF program refused the
// connect or send), ETIMEDOUT when nothing came back in time, null when ok.
// ping sends ICMP echo through an ICMP socket (a Python helper: Node has no
// ICMP sockets) so that a refused send reports EPERM; --system uses iputils
// ping instead, which hides that errno. TCP is different by nature: the
// kernel ignores a refused SYN transmit and retransmits, so only a refusal
// at connect() (a cgroup connect hook) shows as EPERM; a dropped SYN is
// ETIMEDOUT.
// serve and tcp-stream print one JSON event per line until killed or done:
//   serve:      listening, tcp-accept {remote, remotePort}, udp-recv {remote, remotePort}
//   tcp-stream: connected, echo {seq, ms, late}, timeout {seq}, error {code}, closed, done {sent, echoed, lost}
// prober is long-running and probes many destinations from one process (a
// conformance matrix is hundreds of probes; a process per probe is too slow).
// It reads one JSON request per line on stdin:
//   {"id":"7","proto":"tcp","host":"10.244.0.3","port":80,"timeout":1000,"connect":false,"localPort":20001}
// (proto tcp: connect and echo; udp: sendto, or connect()+send() with
// connect, and wait for the echo; timeout defaults to --timeout, 1000 ms;
// localPort, optional, binds the probe's socket to that source port) and
// answers each with one line, in completion order, probes running
// concurrently (at most --concurrency, default 256):
//   {"event":"result","id":"7","mode":"tcp-connect","target":"10.244.0.3:80","ok":true,"code":null,"ms":0.8,...}
// It prints {"event":"ready"} first, answers a malformed request with
// {"event":"result","id":...,"ok":false,"code":"EINVAL",...}, and exits 0
// once stdin is closed and every probe has answered.
//
// DNS (the FQDN tests and the dns bench). resolve-connect resolves NAME the
// way a pod's program does and then connects, in one go, the way
// getaddrinfo()+connect() follow each other in real clients: --via libc
// (default) calls getaddrinfo() through node:dns lookup(), which reads the
// pod's /etc/resolv.conf (Sandbox.setResolvConf) and, with glibc, sends the
// A and AAAA queries from one socket; --via udp sends one query itself
// (--qtype, to --server, with an EDNS0 OPT record unless --no-edns, from a
// fresh connected socket as glibc does; --id and --sport fix the query's id
// and source port) and reads the answer, so the result
// also carries the answer records with their TTLs and the RCODE. Then TCP
// connect to PORT at the first address of the answer (--pick first, the
// default), at every address (all) or none. Result:
//   {"mode":"resolve-connect","target":"api.models.example.com:443","ok":true,"code":null,
//    "stage":null,"addresses":["203.0.113.200"],"answers":[...],"rcode":0,"dnsMs":0.4,"connectMs":0.3,
//    "connects":[{"address":"203.0.113.200","ok":true,"code":null,"ms":0.3}]}
// stage says what failed ("resolve" or "connect"); code is the first error.
// resolver is the same as a long-running process: one JSON request per line
// on stdin ({"id":"1","op":"resolve-connect","name":...,"port":443,"via":"libc",...}
// with the flags above as fields, or {"id":"2","op":"netstat"}: the
// namespace's TCP counters from /proc/net/snmp and /proc/net/netstat), one
// answer per request, in order, handled one at a time.
// dns-latency times query->answer round trips (a Python helper with blocking
// sockets: less jitter than an event loop), each from a fresh connected UDP
// socket, round-robin over the names, and prints every sample in
// microseconds after the warm-up ones.
// dns-inject sends one forged DNS answer (A/AAAA records for NAME, id --id)
// from --from:--sport, an address that need not be local (IP_TRANSPARENT),
// to --to:--dport: an answer no resolver of the pod sent.
// Usage errors exit 2.

import { spawn } from 'node:child_process';
import { createSocket, type RemoteInfo } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { existsSync, readFileSync } from 'node:fs';
import { createConnection, createServer, isIP, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

type Json = string | number | boolean | null | Json[] | { [key: string]: Json | undefined };
type Fields = { [key: string]: Json | undefined };

const VALUE_FLAGS = new Set([
  'timeout',
  'payload',
  'family',
  'tcp',
  'udp',
  'interval',
  'count',
  'echo-timeout',
  'concurrency',
  'via',
  'server',
  'qtype',
  'name',
  'warmup',
  'from',
  'to',
  'sport',
  'dport',
  'id',
  'ttl',
  'answer',
  'pick',
]);
const BOOL_FLAGS = new Set(['echo', 'connect', 'system', 'no-edns']);

interface Args {
  mode: string;
  positional: string[];
  values: Map<string, string[]>;
  bools: Set<string>;
}

class UsageError extends Error {}

function parseArgs(argv: string[]): Args {
  const [mode = '', ...rest] = argv;
  const args: Args = { mode, positional: [], values: new Map(), bools: new Set() };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i] ?? '';
    if (!a.startsWith('--')) {
      args.positional.push(a);
      continue;
    }
    const name = a.slice(2);
    if (BOOL_FLAGS.has(name)) args.bools.add(name);
    else if (VALUE_FLAGS.has(name)) {
      const v = rest[++i];
      if (v === undefined) throw new UsageError(`--${name} needs a value`);
      args.values.set(name, [...(args.values.get(name) ?? []), v]);
    } else throw new UsageError(`unknown flag --${name}`);
  }
  return args;
}

function num(args: Args, name: string, dflt: number): number {
  const v = args.values.get(name)?.at(-1);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${name}: not a number: ${v}`);
  return n;
}

function ports(args: Args, name: string): number[] {
  return (args.values.get(name) ?? []).flatMap((v) => v.split(',')).map((v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(`--${name}: bad port ${v}`);
    return n;
  });
}

function target(args: Args, needPort: boolean): { host: string; port: number } {
  const [host, portText] = args.positional;
  if (host === undefined) throw new UsageError(`${args.mode}: HOST missing`);
  if (!needPort) return { host, port: 0 };
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`${args.mode}: bad PORT ${portText}`);
  return { host, port };
}

function family(args: Args): 4 | 6 | undefined {
  const f = args.values.get('family')?.at(-1);
  if (f === undefined) return undefined;
  if (f !== '4' && f !== '6') throw new UsageError('--family must be 4 or 6');
  return f === '4' ? 4 : 6;
}

function emit(fields: Fields): void {
  // Pipes are written synchronously on Linux, so exiting right after is safe.
  process.stdout.write(JSON.stringify(fields) + '\n');
}

function finish(fields: Fields & { ok: boolean }): never {
  emit(fields);
  process.exit(fields.ok ? 0 : 1);
}

function elapsed(t0: number): number {
  return Math.round((performance.now() - t0) * 100) / 100;
}

function errCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' ? code : 'EIO';
}

function hostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** An IP literal as is; a name through the resolver (so pods use the sandbox DNS once it exists). */
async function resolve(host: string, fam: 4 | 6 | undefined): Promise<string> {
  if (isIP(host) !== 0) return host;
  return (await lookup(host, fam === undefined ? {} : { family: fam })).address;
}

async function tcpConnect(args: Args): Promise<void> {
  const { host, port } = target(args, true);
  const timeoutMs = num(args, 'timeout', 2000);
  const payload = args.values.get('payload')?.at(-1) ?? 'weir-probe';
  const echo = args.bools.has('echo');
  const base: Fields = { mode: 'tcp-connect', target: hostPort(host, port) };
  const t0 = performance.now();
  const fam = family(args);
  const sock: Socket = createConnection({ host, port, ...(fam !== undefined ? { family: fam } : {}) });
  setTimeout(() => finish({ ...base, ok: false, code: 'ETIMEDOUT', ms: elapsed(t0) }), timeoutMs).unref();
  sock.once('error', (e) => finish({ ...base, ok: false, code: errCode(e), ms: elapsed(t0) }));
  sock.once('connect', () => {
    const connectMs = elapsed(t0);
    const ends: Fields = {
      local: sock.localAddress ?? null,
      localPort: sock.localPort ?? null,
      remote: sock.remoteAddress ?? null,
      remotePort: sock.remotePort ?? null,
    };
    if (!echo) finish({ ...base, ok: true, code: null, ms: connectMs, ...ends });
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.includes(payload)) finish({ ...base, ok: true, code: null, ms: connectMs, echo: true, echoMs: elapsed(t0), ...ends });
    });
    sock.write(`${payload}\n`);
  });
}

async function udpSend(args: Args): Promise<void> {
  const { host, port } = target(args, true);
  const timeoutMs = num(args, 'timeout', 1000);
  const payload = args.values.get('payload')?.at(-1) ?? `weir-probe-${process.pid}`;
  const base: Fields = { mode: 'udp-send', target: hostPort(host, port) };
  const t0 = performance.now();
  let addr: string;
  try {
    addr = await resolve(host, family(args));
  } catch (e) {
    finish({ ...base, ok: false, sent: false, echo: false, code: errCode(e), ms: elapsed(t0) });
  }
  const sock = createSocket(isIP(addr) === 6 ? 'udp6' : 'udp4');
  let sent = false;
  sock.on('error', (e) => finish({ ...base, ok: false, sent, echo: false, code: errCode(e), ms: elapsed(t0) }));
  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    if (msg.toString() !== payload) return;
    finish({ ...base, ok: true, sent: true, echo: true, code: null, ms: elapsed(t0), from: rinfo.address });
  });
  const afterSend = (e: Error | null): void => {
    if (e) finish({ ...base, ok: false, sent: false, echo: false, code: errCode(e), ms: elapsed(t0) });
    sent = true;
    setTimeout(
      () => finish({ ...base, ok: false, sent: true, echo: false, code: 'ETIMEDOUT', ms: elapsed(t0) }),
      timeoutMs,
    ).unref();
  };
  if (args.bools.has('connect')) {
    // connect() runs the connect4/6 hooks; plain sendto() the sendmsg4/6 hooks.
    // Node calls back with the error when connect() is refused (EPERM from
    // the connect hook); the socket is then unconnected and must not send.
    sock.connect(port, addr, (e?: Error) => {
      if (e) finish({ ...base, ok: false, sent: false, echo: false, code: errCode(e), ms: elapsed(t0) });
      else sock.send(payload, afterSend);
    });
  } else {
    sock.send(payload, port, addr, afterSend);
  }
}

async function serve(args: Args): Promise<void> {
  const tcp = ports(args, 'tcp');
  const udp = ports(args, 'udp');
  if (tcp.length === 0 && udp.length === 0) throw new UsageError('serve: give --tcp PORT and/or --udp PORT');
  const bind: [string, boolean][] = [
    ['0.0.0.0', false],
    ['::', true],
  ];
  const ready: Promise<void>[] = [];
  for (const port of tcp) {
    for (const [host, ipv6Only] of bind) {
      const server = createServer((s) => {
        emit({
          event: 'tcp-accept',
          remote: s.remoteAddress ?? null,
          remotePort: s.remotePort ?? null,
          local: s.localAddress ?? null,
          localPort: s.localPort ?? null,
        });
        s.on('data', (d) => s.write(d));
        s.on('error', () => s.destroy());
      });
      ready.push(
        new Promise((res, rej) => {
          server.once('error', rej);
          server.listen({ port, host, ipv6Only }, () => res());
        }),
      );
    }
  }
  for (const port of udp) {
    for (const [host, ipv6Only] of bind) {
      const sock = createSocket({ type: ipv6Only ? 'udp6' : 'udp4', ipv6Only });
      sock.on('message', (msg, rinfo) => {
        emit({ event: 'udp-recv', remote: rinfo.address, remotePort: rinfo.port, localPort: port, bytes: msg.length });
        sock.send(msg, rinfo.port, rinfo.address);
      });
      ready.push(
        new Promise((res, rej) => {
          sock.once('error', rej);
          sock.bind(port, host, () => res());
        }),
      );
    }
  }
  try {
    await Promise.all(ready);
  } catch (e) {
    emit({ event: 'error', code: errCode(e), message: e instanceof Error ? e.message : String(e) });
    process.exit(1);
  }
  emit({ event: 'listening', tcp, udp, pid: process.pid });
  for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, () => process.exit(0));
}

async function tcpStream(args: Args): Promise<void> {
  const { host, port } = target(args, true);
  const intervalMs = num(args, 'interval', 200);
  const count = num(args, 'count', 0); // 0: until killed
  const echoTimeoutMs = num(args, 'echo-timeout', Math.max(1000, intervalMs * 3));
  const connectTimeoutMs = num(args, 'timeout', 2000);
  const t0 = performance.now();
  const sent = new Map<number, number>();
  const late = new Set<number>();
  let seq = 0;
  let echoed = 0;
  const summary = (): Fields => ({ event: 'done', sent: seq, echoed, lost: seq - echoed });
  const sock: Socket = createConnection({ host, port });
  const connectTimer = setTimeout(() => {
    emit({ event: 'error', code: 'ETIMEDOUT', ms: elapsed(t0) });
    process.exit(1);
  }, connectTimeoutMs);
  sock.once('error', (e) => {
    emit({ event: 'error', code: errCode(e), ms: elapsed(t0), ...summary(), seq });
    process.exit(1);
  });
  sock.once('close', () => {
    emit({ event: 'closed', ...summary() });
    process.exit(1);
  });
  for (const s of ['SIGTERM', 'SIGINT'] as const) {
    process.on(s, () => {
      emit(summary());
      process.exit(0);
    });
  }
  sock.once('connect', () => {
    clearTimeout(connectTimer);
    emit({ event: 'connected', local: sock.localAddress ?? null, localPort: sock.localPort ?? null, ms: elapsed(t0) });
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const n = Number(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        const at = sent.get(n);
        if (at === undefined) continue;
        sent.delete(n);
        echoed++;
        emit({ event: 'echo', seq: n, ms: elapsed(at), late: late.has(n) });
      }
    });
    const tick = (): void => {
      const now = performance.now();
      for (const [n, at] of sent) {
        if (now - at > echoTimeoutMs && !late.has(n)) {
          late.add(n);
          emit({ event: 'timeout', seq: n, ms: elapsed(at) });
        }
      }
      if (count > 0 && seq >= count) {
        if (sent.size === 0 || [...sent.values()].every((at) => now - at > echoTimeoutMs)) {
          const s = summary();
          emit(s);
          process.exit(s.lost === 0 ? 0 : 1);
        }
        return;
      }
      seq++;
      sent.set(seq, performance.now());
      sock.write(`${seq}\n`);
    };
    tick();
    setInterval(tick, intervalMs);
  });
}

// ICMP echo written in Python, because Node has no ICMP sockets. Unlike
// iputils ping (which swallows a failed sendto), it reports the errno: EPERM
// when the kernel refused the send, the ICMP error that came back
// (ENETUNREACH, EHOSTUNREACH, ...), else ETIMEDOUT. IPv4 uses an ICMP
// datagram ("ping") socket. IPv6 uses a raw socket when allowed (root):
// the kernel's IPv6 ping socket drops transmit errors (icmpv6_push_pending_frames
// returns nothing), so only the raw path can see an EPERM.
const ICMP_PY = `
import errno, json, os, socket, struct, sys, time
host, timeout, count = sys.argv[1], float(sys.argv[2]) / 1000, int(sys.argv[3])
v6 = ':' in host
rtts = []
def done(ok, code, **kw):
    kw.update(ok=ok, code=code, received=len(rtts))
    print(json.dumps(kw))
    sys.exit(0)
def name(e):
    return errno.errorcode.get(e.errno or 0, 'EIO')
ERR6 = {0: 'ENETUNREACH', 1: 'EACCES', 3: 'EHOSTUNREACH', 4: 'ECONNREFUSED'}
raw = False
try:
    if v6:
        try:
            s, raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6), True
        except PermissionError:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
        s.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
except OSError as e:
    done(False, name(e), sent=0, detail='no ICMP socket: check net.ipv4.ping_group_range')
req, rep = (128, 129) if v6 else (8, 0)
ident = os.getpid() & 0xffff
for seq in range(1, count + 1):
    t0 = time.monotonic()
    try:
        s.sendto(struct.pack('!BBHHH', req, 0, 0, ident, seq) + b'weir-probe', (host, 0))
    except OSError as e:
        done(False, name(e), sent=seq - 1, socket='raw' if raw else 'dgram')
    deadline = t0 + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data = s.recv(2048)
        except socket.timeout:
            break
        except OSError as e:
            done(False, name(e), sent=seq)
        if len(data) < 8:
            continue
        t, code, _, i, q = struct.unpack('!BBHHH', data[:8])
        # A datagram socket's id is the kernel's; a raw socket sees every packet.
        if t == rep and q == seq and (i == ident or not raw):
            rtts.append((time.monotonic() - t0) * 1000)
            break
        if raw and t == 1 and len(data) >= 56 and struct.unpack('!BBHHH', data[48:56])[3:] == (ident, seq):
            done(False, ERR6.get(code, 'EHOSTUNREACH'), sent=seq)
if rtts:
    done(True, None, sent=count, rtt=round(min(rtts), 3))
done(False, 'ETIMEDOUT', sent=count)
`;

async function ping(args: Args): Promise<void> {
  const { host } = target(args, false);
  const timeoutMs = num(args, 'timeout', 1000);
  const count = Math.max(1, Math.floor(num(args, 'count', 1)));
  const base: Fields = { mode: 'ping', target: host };
  const t0 = performance.now();
  let addr: string;
  try {
    addr = await resolve(host, family(args));
  } catch (e) {
    finish({ ...base, ok: false, code: errCode(e), ms: elapsed(t0) });
  }
  if (args.bools.has('system')) return systemPing(base, addr, timeoutMs, count, t0);
  // Debian's python3 (scripts/bootstrap.sh) first: PATH may hold slower shims.
  const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const child = spawn(python, ['-c', ICMP_PY, addr, String(timeoutMs), String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  child.once('error', (e) => finish({ ...base, ok: false, code: errCode(e), ms: elapsed(t0), detail: 'python3 not found (scripts/bootstrap.sh)' }));
  child.once('close', () => {
    let r: unknown;
    try {
      r = JSON.parse(out);
    } catch {
      finish({ ...base, ok: false, code: 'EIO', ms: elapsed(t0), detail: (err || out).trim().slice(-300) });
    }
    const res = (typeof r === 'object' && r !== null ? r : {}) as Fields;
    finish({ ...base, ...res, ok: res.ok === true, code: typeof res.code === 'string' ? res.code : null, ms: elapsed(t0), via: 'icmp-socket' });
  });
}

/** The same through iputils ping (--system): no errno when a send is refused. */
function systemPing(base: Fields, addr: string, timeoutMs: number, count: number, t0: number): void {
  // -W is the per-reply wait in whole seconds; -i 0.2 is the fastest interval
  // iputils allows everyone.
  const fam = isIP(addr) === 6 ? '-6' : '-4';
  const argv = ['-n', fam, '-c', String(count), '-i', '0.2', '-W', String(Math.max(1, Math.ceil(timeoutMs / 1000))), addr];
  const child = spawn('ping', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.once('error', (e) =>
    finish({ ...base, ok: false, code: errCode(e), ms: elapsed(t0), detail: 'ping not found: install iputils-ping (scripts/bootstrap.sh)' }),
  );
  child.once('close', (status) => {
    const rtt = /time=([\d.]+) ms/.exec(out)?.[1];
    const received = Number(/(\d+) received/.exec(out)?.[1] ?? '0');
    const detail = out.split('\n').find((l) => /ping:|Unreachable|unreachable|not permitted/.test(l))?.trim() ?? null;
    if (status === 0 && received > 0) {
      finish({ ...base, ok: true, code: null, ms: elapsed(t0), rtt: rtt === undefined ? null : Number(rtt), received, via: 'iputils' });
    }
    let code = 'ETIMEDOUT';
    if (/Operation not permitted/.test(out)) code = 'EPERM';
    else if (/Network is unreachable|Net Unreachable/.test(out)) code = 'ENETUNREACH';
    else if (/Host Unreachable|No route to host/.test(out)) code = 'EHOSTUNREACH';
    else if (/Destination .*Prohibited|Administratively prohibited/i.test(out)) code = 'EACCES';
    finish({ ...base, ok: false, code, ms: elapsed(t0), received, detail, via: 'iputils' });
  });
}

// ---- prober: many probes from one long-running process --------------------

interface ProberRequest {
  id: string;
  proto: string;
  host: string;
  port: number;
  timeoutMs: number;
  connect: boolean;
  localPort: number | undefined;
}

/** One probe as a promise (the one-shot modes exit instead; a prober must keep running). */
type ProbeOutcome = Fields & { ok: boolean; code: string | null; ms: number };

/**
 * TCP connect, then one line echoed back: proves the connection carries data
 * both ways. `connected` tells a refused or silent connect (false) from a
 * connection whose data was lost later (true).
 */
function tcpProbe(host: string, port: number, timeoutMs: number, payload: string, localPort: number | undefined): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let connected = false;
    let settled = false;
    const sock: Socket = createConnection({ host, port, ...(localPort !== undefined ? { localPort } : {}) });
    const end = (ok: boolean, code: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ ok, code, ms: elapsed(t0), connected });
    };
    const timer = setTimeout(() => end(false, 'ETIMEDOUT'), timeoutMs);
    sock.once('error', (e) => end(false, errCode(e)));
    sock.once('close', () => end(false, connected ? 'ECONNRESET' : 'EIO'));
    sock.once('connect', () => {
      connected = true;
      let buf = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => {
        buf += d;
        if (buf.includes(payload)) end(true, null);
      });
      sock.write(`${payload}\n`);
    });
  });
}

/** UDP send (sendmsg hooks), or connect()+send() (connect hooks), then wait for the echo. */
function udpProbe(
  host: string,
  port: number,
  timeoutMs: number,
  payload: string,
  connect: boolean,
  localPort: number | undefined,
): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    let sent = false;
    let settled = false;
    const sock = createSocket(isIP(host) === 6 ? 'udp6' : 'udp4');
    let timer: NodeJS.Timeout | undefined;
    const end = (ok: boolean, code: string | null): void => {
      if (settled) return;
      settled = true;
      if (timer !== undefined) clearTimeout(timer);
      try {
        sock.close();
      } catch {
        // already closed after an error
      }
      resolve({ ok, code, ms: elapsed(t0), sent });
    };
    timer = setTimeout(() => end(false, 'ETIMEDOUT'), timeoutMs);
    sock.on('error', (e) => end(false, errCode(e)));
    sock.on('message', (msg: Buffer) => {
      if (msg.toString() === payload) end(true, null);
    });
    const afterSend = (e: Error | null): void => {
      if (e) end(false, errCode(e));
      else sent = true;
    };
    const go = (): void => {
      if (settled) return;
      if (connect) {
        sock.connect(port, host, (e?: Error) => {
          if (e) end(false, errCode(e));
          else sock.send(payload, afterSend);
        });
      } else {
        sock.send(payload, port, host, afterSend);
      }
    };
    // A bind error (EADDRINUSE) arrives as an 'error' event.
    if (localPort !== undefined) sock.bind(localPort, go);
    else go();
  });
}

function parseProberRequest(line: string, dfltTimeoutMs: number): ProberRequest | { id: string; error: string } {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return { id: '', error: 'not JSON' };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { id: '', error: 'not a JSON object' };
  const r = v as Record<string, unknown>;
  const id = typeof r.id === 'string' || typeof r.id === 'number' ? String(r.id) : '';
  if (id === '') return { id, error: 'id missing' };
  const { proto, host, port } = r;
  if (typeof proto !== 'string' || !['tcp', 'udp', 'sctp'].includes(proto)) return { id, error: `bad proto ${JSON.stringify(proto)}` };
  if (typeof host !== 'string' || isIP(host) === 0) return { id, error: `host must be an IP literal, got ${JSON.stringify(host)}` };
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) return { id, error: `bad port ${JSON.stringify(port)}` };
  const timeoutMs = typeof r.timeout === 'number' && r.timeout > 0 ? r.timeout : dfltTimeoutMs;
  const lp = r.localPort;
  if (lp !== undefined && (typeof lp !== 'number' || !Number.isInteger(lp) || lp < 1 || lp > 65535)) return { id, error: `bad localPort ${JSON.stringify(lp)}` };
  return { id, proto, host, port, timeoutMs, connect: r.connect === true, localPort: lp };
}

async function runProberRequest(req: ProberRequest): Promise<Fields> {
  const target = hostPort(req.host, req.port);
  const payload = `weir-prober-${process.pid}-${req.id}`;
  const local = req.localPort !== undefined ? { localPort: req.localPort } : {};
  if (req.proto === 'tcp') return { mode: 'tcp-connect', target, ...local, ...(await tcpProbe(req.host, req.port, req.timeoutMs, payload, req.localPort)) };
  if (req.proto === 'udp') {
    return { mode: 'udp-send', target, ...local, ...(await udpProbe(req.host, req.port, req.timeoutMs, payload, req.connect, req.localPort)) };
  }
  // Node has no SCTP sockets; answer rather than guess.
  return { mode: 'sctp-connect', target, ok: false, code: 'EPROTONOSUPPORT', ms: 0 };
}

async function prober(args: Args): Promise<void> {
  const dfltTimeoutMs = num(args, 'timeout', 1000);
  const concurrency = Math.max(1, Math.floor(num(args, 'concurrency', 256)));
  const queue: ProberRequest[] = [];
  let running = 0;
  let inputDone = false;
  const maybeExit = (): void => {
    if (inputDone && running === 0 && queue.length === 0) process.exit(0);
  };
  const pump = (): void => {
    while (running < concurrency && queue.length > 0) {
      const req = queue.shift() as ProberRequest;
      running++;
      runProberRequest(req)
        .catch((e: unknown): Fields => ({ mode: req.proto, target: hostPort(req.host, req.port), ok: false, code: errCode(e), ms: 0 }))
        .then((res) => {
          emit({ event: 'result', id: req.id, ...res });
          running--;
          pump();
          maybeExit();
        });
    }
  };
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line === '') continue;
      const req = parseProberRequest(line, dfltTimeoutMs);
      if ('error' in req) emit({ event: 'result', id: req.id, mode: 'invalid', target: '', ok: false, code: 'EINVAL', ms: 0, detail: req.error });
      else queue.push(req);
    }
    pump();
  });
  process.stdin.on('end', () => {
    inputDone = true;
    maybeExit();
  });
  for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, () => process.exit(0));
  emit({ event: 'ready', pid: process.pid, concurrency, timeout: dfltTimeoutMs });
}

// ---- DNS: a stub resolver's view (resolve-connect, resolver, dns-latency, dns-inject) ----

const QTYPES: Record<string, number> = { A: 1, AAAA: 28 };
const RR_NAMES: Record<number, string> = { 1: 'A', 5: 'CNAME', 28: 'AAAA', 41: 'OPT' };
/** EDNS0 OPT record: root owner, type 41, class = UDP payload size 1232 (the DNS flag day value), TTL 0, no options. */
const EDNS_OPT = Buffer.from([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);

function encodeDnsName(name: string): Buffer {
  const n = name.endsWith('.') ? name.slice(0, -1) : name;
  const parts: Buffer[] = [];
  for (const label of n.split('.')) {
    const b = Buffer.from(label, 'latin1');
    if (b.length < 1 || b.length > 63) throw new UsageError(`not a DNS name: ${JSON.stringify(name)}`);
    parts.push(Buffer.from([b.length]), b);
  }
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

function dnsQuery(id: number, name: string, qtype: number, edns: boolean): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(id, 0);
  h.writeUInt16BE(0x0100, 2); // RD, as stub resolvers send
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(edns ? 1 : 0, 10);
  const q = Buffer.alloc(4);
  q.writeUInt16BE(qtype, 0);
  q.writeUInt16BE(1, 2);
  return Buffer.concat([h, encodeDnsName(name), q, edns ? EDNS_OPT : Buffer.alloc(0)]);
}

/** An answer to one question whose records all have the question's name as owner (a pointer to it). */
function dnsAnswer(id: number, name: string, addresses: readonly string[], ttl: number): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(id, 0);
  h.writeUInt16BE(0x8180, 2); // QR, RD, RA, NOERROR
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(addresses.length, 6);
  const qtype = addresses.some((a) => isIP(a) === 6) ? 28 : 1;
  const q = Buffer.alloc(4);
  q.writeUInt16BE(qtype, 0);
  q.writeUInt16BE(1, 2);
  const rrs = addresses.map((a) => {
    const v6 = isIP(a) === 6;
    const data = v6 ? ipv6Bytes(a) : Buffer.from(a.split('.').map(Number));
    const rr = Buffer.alloc(12);
    rr.writeUInt16BE(0xc00c, 0);
    rr.writeUInt16BE(v6 ? 28 : 1, 2);
    rr.writeUInt16BE(1, 4);
    rr.writeUInt32BE(ttl >>> 0, 6);
    rr.writeUInt16BE(data.length, 10);
    return Buffer.concat([rr, data]);
  });
  return Buffer.concat([h, encodeDnsName(name), q, ...rrs]);
}

function ipv6Bytes(a: string): Buffer {
  const [head = '', tail] = a.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

function ipv6Text(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  // The canonical form through the URL parser (node: built-ins only).
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

interface DnsRecordOut {
  name: string;
  type: string;
  ttl: number;
  data: string;
}

interface DnsReply {
  id: number;
  rcode: number;
  truncated: boolean;
  answers: DnsRecordOut[];
}

/** A name at off (compression pointers followed, each strictly backwards). */
function readDnsName(buf: Buffer, off: number): { name: string; end: number } {
  const labels: string[] = [];
  let p = off;
  let end = -1;
  for (let hops = 0; hops < 64; ) {
    const l = buf[p];
    if (l === undefined) throw new Error('name runs past the message');
    if (l === 0) return { name: labels.join('.'), end: end < 0 ? p + 1 : end };
    if ((l & 0xc0) === 0xc0) {
      const tgt = ((l & 0x3f) << 8) | (buf[p + 1] ?? 0);
      if (tgt >= p) throw new Error('compression pointer does not point backwards');
      if (end < 0) end = p + 2;
      p = tgt;
      hops++;
      continue;
    }
    if (p + 1 + l > buf.length) throw new Error('label runs past the message');
    labels.push(buf.subarray(p + 1, p + 1 + l).toString('latin1'));
    p += 1 + l;
  }
  throw new Error('too many compression pointers');
}

function parseDnsReply(buf: Buffer): DnsReply {
  if (buf.length < 12) throw new Error('short message');
  const flags = buf.readUInt16BE(2);
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  let p = 12;
  for (let i = 0; i < qd; i++) p = readDnsName(buf, p).end + 4;
  const answers: DnsRecordOut[] = [];
  for (let i = 0; i < an; i++) {
    const owner = readDnsName(buf, p);
    p = owner.end;
    if (p + 10 > buf.length) throw new Error('record runs past the message');
    const type = buf.readUInt16BE(p);
    const ttl = buf.readUInt32BE(p + 4);
    const len = buf.readUInt16BE(p + 8);
    const rd = buf.subarray(p + 10, p + 10 + len);
    if (rd.length !== len) throw new Error('rdata runs past the message');
    let data: string;
    if (type === 1 && len === 4) data = [...rd].join('.');
    else if (type === 28 && len === 16) data = ipv6Text(rd);
    else if (type === 5) data = readDnsName(buf, p + 10).name;
    else data = rd.toString('hex');
    answers.push({ name: owner.name, type: RR_NAMES[type] ?? String(type), ttl, data });
    p += 10 + len;
  }
  return { id: buf.readUInt16BE(0), rcode: flags & 0xf, truncated: (flags & 0x0200) !== 0, answers };
}

/** The addresses a stub resolver takes from a reply: A/AAAA records of the question's CNAME chain. */
function chainAddresses(name: string, answers: readonly DnsRecordOut[]): string[] {
  const chain = new Set([name.replace(/\.$/, '').toLowerCase()]);
  const out: string[] = [];
  for (const r of answers) {
    if (!chain.has(r.name.toLowerCase())) continue;
    if (r.type === 'CNAME') chain.add(r.data.toLowerCase());
    else if (r.type === 'A' || r.type === 'AAAA') out.push(r.data);
  }
  return out;
}

interface LookupOutcome {
  ok: boolean;
  code: string | null;
  ms: number;
  addresses: string[];
  reply?: DnsReply;
}

const RCODES: Record<number, string> = { 1: 'EFORMERR', 2: 'ESERVFAIL', 3: 'ENOTFOUND', 4: 'ENOTIMP', 5: 'EREFUSED' };

/** One query from a fresh socket connect()ed to the server (glibc's way), and its answer. */
function udpLookup(
  server: string,
  name: string,
  qtype: number,
  edns: boolean,
  timeoutMs: number,
  fixed: { id?: number | undefined; localPort?: number | undefined } = {},
): Promise<LookupOutcome> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const id = fixed.id ?? Math.floor(Math.random() * 0x10000);
    const sock = createSocket(isIP(server) === 6 ? 'udp6' : 'udp4');
    let settled = false;
    const end = (o: Omit<LookupOutcome, 'ms'>): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        sock.close();
      } catch {
        // closed after an error
      }
      resolve({ ...o, ms: elapsed(t0) });
    };
    const timer = setTimeout(() => end({ ok: false, code: 'ETIMEDOUT', addresses: [] }), timeoutMs);
    sock.on('error', (e) => end({ ok: false, code: errCode(e), addresses: [] }));
    sock.on('message', (msg: Buffer) => {
      if (msg.length < 2 || msg.readUInt16BE(0) !== id) return; // not ours: a stub resolver drops it
      let reply: DnsReply;
      try {
        reply = parseDnsReply(msg);
      } catch (e) {
        end({ ok: false, code: 'EBADRESP', addresses: [] });
        return;
      }
      const addresses = chainAddresses(name, reply.answers);
      if (reply.rcode !== 0) end({ ok: false, code: RCODES[reply.rcode] ?? 'EBADRESP', addresses, reply });
      else if (reply.truncated) end({ ok: false, code: 'ETRUNCATED', addresses, reply });
      else if (addresses.length === 0) end({ ok: false, code: 'ENODATA', addresses, reply });
      else end({ ok: true, code: null, addresses, reply });
    });
    const go = (): void => {
      sock.connect(53, server, (e?: Error) => {
        if (e) end({ ok: false, code: errCode(e), addresses: [] });
        else sock.send(dnsQuery(id, name, qtype, edns), (err) => err && end({ ok: false, code: errCode(err), addresses: [] }));
      });
    };
    // A bind error (EADDRINUSE) arrives as an 'error' event.
    if (fixed.localPort !== undefined) sock.bind(fixed.localPort, go);
    else go();
  });
}

/** getaddrinfo() through node:dns (the pod's /etc/resolv.conf, libc's resolver). */
async function libcLookup(name: string, fam: 4 | 6 | undefined): Promise<LookupOutcome> {
  const t0 = performance.now();
  try {
    const all = await lookup(name, { all: true, family: fam ?? 0, order: 'verbatim' });
    return { ok: true, code: null, ms: elapsed(t0), addresses: all.map((a) => a.address) };
  } catch (e) {
    return { ok: false, code: errCode(e), ms: elapsed(t0), addresses: [] };
  }
}

/** TCP connect (and, with echo, one line echoed back). */
function tcpOpen(host: string, port: number, timeoutMs: number, echo: boolean): Promise<ProbeOutcome> {
  if (echo) return tcpProbe(host, port, timeoutMs, `weir-probe-${process.pid}`, undefined);
  return new Promise((resolve) => {
    const t0 = performance.now();
    const sock: Socket = createConnection({ host, port });
    let settled = false;
    const end = (ok: boolean, code: string | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve({ ok, code, ms: elapsed(t0), connected: ok });
    };
    const timer = setTimeout(() => end(false, 'ETIMEDOUT'), timeoutMs);
    sock.once('error', (e) => end(false, errCode(e)));
    sock.once('connect', () => end(true, null));
  });
}

interface ResolveRequest {
  name: string;
  port: number | undefined;
  via: 'libc' | 'udp';
  server: string | undefined;
  qtype: number;
  family: 4 | 6 | undefined;
  pick: 'first' | 'all' | 'none';
  echo: boolean;
  edns: boolean;
  timeoutMs: number;
  /** udp only: the query's id and source port (default random), for tests that forge answers to it. */
  queryId: number | undefined;
  localPort: number | undefined;
}

async function resolveConnectOnce(req: ResolveRequest): Promise<ProbeOutcome> {
  const t0 = performance.now();
  let look: LookupOutcome;
  if (req.via === 'udp') {
    if (req.server === undefined) throw new UsageError('resolve-connect --via udp needs --server');
    look = await udpLookup(req.server, req.name, req.qtype, req.edns, req.timeoutMs, { id: req.queryId, localPort: req.localPort });
  } else {
    look = await libcLookup(req.name, req.family);
  }
  const dns: Fields = {
    addresses: look.addresses,
    dnsMs: look.ms,
    ...(look.reply ? { rcode: look.reply.rcode, truncated: look.reply.truncated, answers: look.reply.answers as unknown as Json } : {}),
  };
  if (!look.ok) return { ok: false, code: look.code, stage: 'resolve', ms: elapsed(t0), ...dns, connects: [] };
  const targets = req.port === undefined || req.pick === 'none' ? [] : req.pick === 'all' ? look.addresses : look.addresses.slice(0, 1);
  const connects: Fields[] = [];
  let first: ProbeOutcome | undefined;
  for (const address of targets) {
    const c = await tcpOpen(address, req.port ?? 0, req.timeoutMs, req.echo);
    connects.push({ address, ok: c.ok, code: c.code, ms: c.ms });
    if (first === undefined && !c.ok) first = c;
  }
  const connectMs = connects.length > 0 ? (connects[0]?.ms as number) : null;
  if (first !== undefined) return { ok: false, code: first.code, stage: 'connect', ms: elapsed(t0), ...dns, connectMs, connects };
  return { ok: true, code: null, stage: null, ms: elapsed(t0), ...dns, connectMs, connects };
}

function resolveTarget(name: string, port: number | undefined): string {
  return port === undefined ? name : `${name}:${port}`;
}

function parseResolveArgs(args: Args): ResolveRequest {
  const [name, portText] = args.positional;
  if (name === undefined) throw new UsageError('resolve-connect: NAME missing');
  let port: number | undefined;
  if (portText !== undefined) {
    port = Number(portText);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`resolve-connect: bad PORT ${portText}`);
  }
  return checkResolveRequest({
    name,
    port,
    via: args.values.get('via')?.at(-1),
    server: args.values.get('server')?.at(-1),
    qtype: args.values.get('qtype')?.at(-1),
    family: args.values.get('family')?.at(-1),
    pick: args.values.get('pick')?.at(-1),
    echo: args.bools.has('echo'),
    edns: !args.bools.has('no-edns'),
    timeout: num(args, 'timeout', 2000),
    queryId: args.values.has('id') ? num(args, 'id', 0) : undefined,
    localPort: args.values.has('sport') ? num(args, 'sport', 0) : undefined,
  });
}

/** A resolve request from flags or from a JSON request line (same names). */
function checkResolveRequest(r: Record<string, unknown>): ResolveRequest {
  const { name, port, via = 'libc', server, qtype = 'A', family: fam, pick = 'first', timeout = 2000 } = r;
  if (typeof name !== 'string' || name === '') throw new UsageError('name missing');
  if (port !== undefined && (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)) throw new UsageError(`bad port ${JSON.stringify(port)}`);
  if (via !== 'libc' && via !== 'udp') throw new UsageError('via must be libc or udp');
  if (server !== undefined && (typeof server !== 'string' || isIP(server) === 0)) throw new UsageError(`server must be an IP literal, got ${JSON.stringify(server)}`);
  const qt = typeof qtype === 'string' ? QTYPES[qtype.toUpperCase()] : undefined;
  if (qt === undefined) throw new UsageError('qtype must be A or AAAA');
  const f = fam === undefined ? undefined : Number(fam);
  if (f !== undefined && f !== 4 && f !== 6) throw new UsageError('family must be 4 or 6');
  if (pick !== 'first' && pick !== 'all' && pick !== 'none') throw new UsageError('pick must be first, all or none');
  if (typeof timeout !== 'number' || !(timeout > 0)) throw new UsageError('bad timeout');
  // (A request line's own "id" names the request; the DNS id is queryId.)
  const { queryId, localPort } = r;
  if (queryId !== undefined && (typeof queryId !== 'number' || !Number.isInteger(queryId) || queryId < 0 || queryId > 0xffff)) {
    throw new UsageError(`bad queryId ${JSON.stringify(queryId)}`);
  }
  if (localPort !== undefined && (typeof localPort !== 'number' || !Number.isInteger(localPort) || localPort < 1 || localPort > 65535)) {
    throw new UsageError(`bad localPort ${JSON.stringify(localPort)}`);
  }
  return {
    name,
    port,
    via,
    server,
    qtype: qt,
    family: f,
    pick,
    echo: r.echo === true,
    edns: r.edns !== false,
    timeoutMs: timeout,
    queryId,
    localPort,
  };
}

async function resolveConnect(args: Args): Promise<void> {
  const req = parseResolveArgs(args);
  finish({ mode: 'resolve-connect', target: resolveTarget(req.name, req.port), ...(await resolveConnectOnce(req)) });
}

/** TCP counters of this network namespace (/proc/net is per netns). */
function netCounters(): Fields {
  const out: Fields = {};
  for (const file of ['/proc/net/snmp', '/proc/net/netstat']) {
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const head = (lines[i] ?? '').split(/\s+/);
      const vals = (lines[i + 1] ?? '').split(/\s+/);
      const proto = head[0]?.replace(':', '') ?? '';
      if (proto !== 'Tcp' && proto !== 'TcpExt') continue;
      head.slice(1).forEach((k, j) => (out[`${proto}${k}`] = Number(vals[j + 1])));
    }
  }
  return out;
}

async function resolver(): Promise<void> {
  const queue: string[] = [];
  let busy = false;
  let inputDone = false;
  const handle = async (line: string): Promise<void> => {
    let r: Record<string, unknown>;
    try {
      const v: unknown = JSON.parse(line);
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
      r = v as Record<string, unknown>;
    } catch (e) {
      emit({ event: 'result', id: '', mode: 'invalid', ok: false, code: 'EINVAL', ms: 0, detail: String(e) });
      return;
    }
    const id = typeof r.id === 'string' || typeof r.id === 'number' ? String(r.id) : '';
    try {
      if (r.op === 'netstat') emit({ event: 'result', id, mode: 'netstat', target: '', ok: true, code: null, ms: 0, counters: netCounters() });
      else if (r.op === 'resolve-connect') {
        const req = checkResolveRequest(r);
        emit({ event: 'result', id, mode: 'resolve-connect', target: resolveTarget(req.name, req.port), ...(await resolveConnectOnce(req)) });
      } else throw new UsageError(`unknown op ${JSON.stringify(r.op)}`);
    } catch (e) {
      emit({ event: 'result', id, mode: 'invalid', ok: false, code: 'EINVAL', ms: 0, detail: e instanceof Error ? e.message : String(e) });
    }
  };
  const pump = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    while (queue.length > 0) await handle(queue.shift() as string);
    busy = false;
    if (inputDone) process.exit(0);
  };
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d: string) => {
    buf += d;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line !== '') queue.push(line);
    }
    void pump();
  });
  process.stdin.on('end', () => {
    inputDone = true;
    void pump();
  });
  for (const s of ['SIGTERM', 'SIGINT'] as const) process.on(s, () => process.exit(0));
  emit({ event: 'ready', pid: process.pid });
}

// Query->answer round trips with blocking sockets: each query from a fresh
// socket connect()ed to the server, timed from connect() to the answer read.
const DNS_LATENCY_PY = String.raw`
import errno, json, random, socket, struct, sys, time
server, qtype, count, warmup, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]) / 1000
names = json.loads(sys.argv[6])
fam = socket.AF_INET6 if ':' in server else socket.AF_INET
def wire(n):
    return b''.join(bytes([len(l)]) + l.encode() for l in n.rstrip('.').split('.')) + b'\0'
wires = [wire(n) for n in names]
opt = bytes([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0])
samples, errors = [], {}
for i in range(warmup + count):
    qid = random.getrandbits(16)
    msg = struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 1) + wires[i % len(wires)] + struct.pack('!HH', qtype, 1) + opt
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        t0 = time.perf_counter_ns()
        s.connect((server, 53))
        s.send(msg)
        while True:
            data = s.recv(4096)
            if len(data) >= 12 and data[:2] == msg[:2]:
                break
        t1 = time.perf_counter_ns()
        flags, an = struct.unpack('!H', data[2:4])[0], struct.unpack('!H', data[6:8])[0]
        if flags & 0xf or an == 0:
            errors['rcode'] = errors.get('rcode', 0) + 1
        elif i >= warmup:
            samples.append(round((t1 - t0) / 1000, 1))
    except socket.timeout:
        errors['ETIMEDOUT'] = errors.get('ETIMEDOUT', 0) + 1
    except OSError as e:
        k = errno.errorcode.get(e.errno or 0, 'EIO')
        errors[k] = errors.get(k, 0) + 1
    finally:
        s.close()
print(json.dumps({'samples': samples, 'errors': errors}))
`;

function runPython(script: string, argv: string[]): Promise<{ status: number | null; out: string; err: string }> {
  // Debian's python3 (scripts/bootstrap.sh) first: PATH may hold slower shims.
  const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const child = spawn(python, ['-c', script, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((resolve) => {
    child.once('error', (e) => resolve({ status: null, out, err: String(e) }));
    child.once('close', (status) => resolve({ status, out, err }));
  });
}

async function dnsLatency(args: Args): Promise<void> {
  const { host: server } = target(args, false);
  if (isIP(server) === 0) throw new UsageError('dns-latency: SERVER must be an IP literal');
  const names = args.values.get('name') ?? [];
  if (names.length === 0) throw new UsageError('dns-latency: give --name NAME at least once');
  for (const n of names) encodeDnsName(n);
  const qtype = QTYPES[(args.values.get('qtype')?.at(-1) ?? 'A').toUpperCase()];
  if (qtype === undefined) throw new UsageError('--qtype must be A or AAAA');
  const count = Math.floor(num(args, 'count', 1000));
  const warmup = Math.floor(num(args, 'warmup', 20));
  const t0 = performance.now();
  const base: Fields = { mode: 'dns-latency', target: server };
  const r = await runPython(DNS_LATENCY_PY, [server, String(qtype), String(count), String(warmup), String(num(args, 'timeout', 1000)), JSON.stringify(names)]);
  let res: { samples?: unknown; errors?: unknown };
  try {
    res = JSON.parse(r.out) as typeof res;
  } catch {
    finish({ ...base, ok: false, code: 'EIO', ms: elapsed(t0), detail: (r.err || r.out).trim().slice(-300) });
  }
  const samples = Array.isArray(res.samples) ? (res.samples as number[]) : [];
  const errors = (typeof res.errors === 'object' && res.errors !== null ? res.errors : {}) as Record<string, number>;
  const failed = Object.values(errors).reduce((a, b) => a + b, 0);
  finish({ ...base, ok: failed === 0, code: failed === 0 ? null : (Object.keys(errors)[0] ?? 'EIO'), ms: elapsed(t0), samplesUs: samples, errors });
}

// One datagram from a source address that need not be this host's
// (IP_TRANSPARENT, root): a forged answer.
const INJECT_PY = String.raw`
import errno, socket, sys
src, sport, dst, dport, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), bytes.fromhex(sys.argv[5])
v6 = ':' in dst
try:
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, 75, 1)  # IPV6_TRANSPARENT
    else:
        s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    s.bind((src, sport))
    print(s.sendto(payload, (dst, dport)))
except OSError as e:
    print(errno.errorcode.get(e.errno or 0, 'EIO'))
    sys.exit(1)
`;

async function dnsInject(args: Args): Promise<void> {
  const from = args.values.get('from')?.at(-1);
  const to = args.values.get('to')?.at(-1);
  const name = args.values.get('name')?.at(-1);
  const answers = args.values.get('answer') ?? [];
  if (from === undefined || isIP(from) === 0 || to === undefined || isIP(to) === 0) throw new UsageError('dns-inject: --from and --to must be IP literals');
  if (name === undefined || answers.length === 0 || answers.some((a) => isIP(a) === 0)) throw new UsageError('dns-inject: give --name and --answer ADDR');
  const sport = num(args, 'sport', 53);
  const dport = num(args, 'dport', 0);
  if (dport < 1 || dport > 65535) throw new UsageError('dns-inject: --dport PORT');
  const id = num(args, 'id', 0x4242) & 0xffff;
  const msg = dnsAnswer(id, name, answers, num(args, 'ttl', 300));
  const t0 = performance.now();
  const base: Fields = { mode: 'dns-inject', target: hostPort(to, dport) };
  const r = await runPython(INJECT_PY, [from, String(sport), to, String(dport), msg.toString('hex')]);
  if (r.status !== 0) finish({ ...base, ok: false, code: /^E[A-Z]+$/.test(r.out.trim()) ? r.out.trim() : 'EIO', ms: elapsed(t0), detail: r.err.trim().slice(-300) });
  finish({ ...base, ok: true, code: null, ms: elapsed(t0), bytes: Number(r.out.trim()) });
}

const MODES: Record<string, (a: Args) => Promise<void>> = {
  'tcp-connect': tcpConnect,
  'udp-send': udpSend,
  serve,
  'tcp-stream': tcpStream,
  ping,
  prober,
  'resolve-connect': resolveConnect,
  resolver,
  'dns-latency': dnsLatency,
  'dns-inject': dnsInject,
};

async function main(): Promise<void> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
    const fn = MODES[args.mode];
    if (fn === undefined) throw new UsageError(`unknown mode ${JSON.stringify(args.mode)}; one of ${Object.keys(MODES).join(', ')}`);
    await fn(args);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`probe: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
}

await main();
