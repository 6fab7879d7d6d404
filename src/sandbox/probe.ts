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
// Usage errors exit 2.

import { spawn } from 'node:child_process';
import { createSocket, type RemoteInfo } from 'node:dgram';
import { lookup } from 'node:dns/promises';
import { existsSync } from 'node:fs';
import { createConnection, createServer, isIP, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

type Json = string | number | boolean | null | Json[] | { [key: string]: Json | undefined };
type Fields = { [key: string]: Json | undefined };

const VALUE_FLAGS = new Set(['timeout', 'payload', 'family', 'tcp', 'udp', 'interval', 'count', 'echo-timeout', 'concurrency']);
const BOOL_FLAGS = new Set(['echo', 'connect', 'system']);

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

const MODES: Record<string, (a: Args) => Promise<void>> = {
  'tcp-connect': tcpConnect,
  'udp-send': udpSend,
  serve,
  'tcp-stream': tcpStream,
  ping,
  prober,
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
