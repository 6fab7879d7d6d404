// A child process "in a pod" for kernel tests: python3 that first moves
// itself into the pod's container cgroup, in a network namespace of its own
// (unshare --net) holding the pod's addresses on a veth, v0, whose peer, v1,
// can inject frames "from outside". It runs steps, [function, ...args], and
// returns each step's outcome ('ok', 'connect EPERM', ...). The Python
// prelude has the common steps; a test adds its own functions.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { expect } from 'vitest';

const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export type Step = [string, ...unknown[]];

/**
 * name(e): an errno's name; fam(host); tcp(host, port): a listener on this
 * namespace's wildcard address and a connect to host (only weir can refuse
 * it); inject(ifname, src, sport, dst, dport, payload): a UDP datagram
 * arriving on v0 from outside, written as a frame on the veth peer `ifname`.
 */
const PRELUDE = String.raw`
import errno, fcntl, json, os, socket, struct, sys
cg, steps = sys.argv[1], json.loads(sys.argv[2])
with open(os.path.join(cg, 'cgroup.procs'), 'w') as f:
    f.write(str(os.getpid()))

def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) and e.errno else type(e).__name__

def fam(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET

def tcp(host, port):
    # The destination is an address of this namespace, so only weir can refuse the connect.
    lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # dual stack
    cli = socket.socket(fam(host), socket.SOCK_STREAM)
    try:
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(('::', port)); lst.listen(4)
        cli.settimeout(1)
        try:
            cli.connect((host, port))
        except OSError as e:
            return 'connect ' + name(e)
        return 'ok'
    finally:
        cli.close(); lst.close()

def csum(b):
    if len(b) % 2:
        b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

def inject(ifname, src, sport, dst, dport, payload=b'pong'):
    udp = struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload
    if fam(src) == socket.AF_INET:
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
        ethertype = b'\x08\x00'
    else:
        s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        pseudo = s6 + d6 + struct.pack('!I3xB', len(udp), 17)
        udp = udp[:6] + struct.pack('!H', csum(pseudo + udp) or 0xffff) + udp[8:]
        ip = struct.pack('!IHBB16s16s', 0x60000000, len(udp), 17, 64, s6, d6)
        ethertype = b'\x86\xdd'
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        # SIOCGIFHWADDR of the receiving end (v0): this netns has no sysfs of its own.
        peer = fcntl.ioctl(s.fileno(), 0x8927, struct.pack('256s', b'v0'))[18:24]
        eth = peer + bytes.fromhex('020000000099') + ethertype
        s.bind((ifname, 0))
        s.send(eth + ip + udp)
    finally:
        s.close()
`;

const MAIN = String.raw`
out = []
for step in steps:
    try:
        out.append(globals()[step[0]](*step[1:]))
    except Exception as e:
        out.append('error ' + name(e) + ' ' + str(e))
print(json.dumps(out))
`;

/** The namespace: the addresses (with their prefix length) on v0, its peer v1 up, default routes through v0, no reverse-path filter. */
export function netnsSetup(v4: string[], v6: string[]): string {
  return [
    'set -e',
    'ip link set lo up',
    'ip link add v0 type veth peer name v1',
    ...v4.map((a) => `ip addr add ${a} dev v0`),
    ...v6.map((a) => `ip -6 addr add ${a} dev v0 nodad`),
    'ip link set v0 up',
    'ip link set v1 up',
    'ip route add default dev v0',
    ...(v6.length > 0 ? ['ip -6 route add default dev v0'] : []),
    'echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter',
    'echo 0 > /proc/sys/net/ipv4/conf/v0/rp_filter',
  ].join('\n');
}

/** Runs the steps in `cgroup` (a pod's container), in a fresh network namespace set up by `setup`; `python` defines the test's own steps. */
export function inPodNetns(cgroup: string, setup: string, steps: Step[], python = ''): string[] {
  const script = `${setup}\nexec ${PYTHON} -c "$WEIR_CHILD_PY" "$@"`;
  const r = spawnSync('unshare', ['--net', '--', '/bin/sh', '-c', script, 'child', cgroup, JSON.stringify(steps)], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, WEIR_CHILD_PY: `${PRELUDE}\n${python}\n${MAIN}` },
  });
  expect(r.status, `child failed: ${r.stderr}`).toBe(0);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? '[]') as string[];
}
