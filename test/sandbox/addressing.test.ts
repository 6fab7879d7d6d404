// Pure checks of the sandbox addressing plan (no kernel objects).
import { describe, expect, it } from 'vitest';
import { canonicalIPv6, checkHostAddresses, checkHostPrefix, cidrContains, deriveHostIPv6, podIPv4, podIPv6 } from '../../src/sandbox/addressing.js';
import { findCgroup2Mount, podCgroupRelPath } from '../../src/sandbox/cgroup.js';

describe('sandbox addressing', () => {
  it('derives host IPv6 addresses that read like their IPv4 ones', () => {
    expect(deriveHostIPv6('service', '10.20.0.10')).toBe('fd00:10:20::10');
    expect(deriveHostIPv6('service', '10.20.3.7')).toBe('fd00:10:20::3:7');
    expect(deriveHostIPv6('internet', '203.0.113.10')).toBe('2001:db8:203::113:10');
    expect(deriveHostIPv6('internet', '198.51.100.66')).toBe('2001:db8:198:51::100:66');
    expect([podIPv4(2), podIPv6(2)]).toEqual(['10.244.0.2', 'fd00:10:244::2']);
  });

  it('canonicalises IPv6 text (RFC 5952) and tests CIDR membership for both families', () => {
    expect(canonicalIPv6('2001:0db8:0000:0000:0000:0000:0000:0001')).toBe('2001:db8::1');
    expect(canonicalIPv6('fd00:0:0:1:0:0:0:1')).toBe('fd00:0:0:1::1');
    expect(canonicalIPv6('::ffff:10.0.0.1')).toBe('::ffff:a00:1');
    expect(cidrContains('203.0.113.0/24', '203.0.113.255')).toBe(true);
    expect(cidrContains('203.0.113.0/24', '203.0.114.0')).toBe(false);
    expect(cidrContains('2001:db8::/32', '2001:db8:ffff::1')).toBe(true);
    expect(cidrContains('2001:db8::/32', '2001:db9::1')).toBe(false);
    expect(cidrContains('10.0.0.0/8', 'fd00::1')).toBe(false);
  });

  it('keeps internet hosts in documentation ranges and services in private ones', () => {
    expect(() => checkHostAddresses('a', 'internet', '203.0.113.1', '2001:db8::1')).not.toThrow();
    expect(() => checkHostAddresses('a', 'internet', '1.1.1.1', '2001:db8::1')).toThrow(RangeError);
    expect(() => checkHostAddresses('a', 'internet', '198.51.100.1', '2606:4700::1')).toThrow(RangeError);
    expect(() => checkHostAddresses('a', 'service', '10.20.0.1', 'fd00:10:20::1')).not.toThrow();
    expect(() => checkHostAddresses('a', 'service', '172.16.0.1', 'fd00:10:20::1')).toThrow(RangeError);
    expect(() => checkHostAddresses('a', 'service', '10.244.0.7', 'fd00:10:20::1')).toThrow(/pod range/);
  });
});

describe('sandbox cgroup layout', () => {
  const uid = '0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9';
  it('follows the kubelet for both drivers and all QoS classes', () => {
    expect(podCgroupRelPath('cgroupfs', 'Guaranteed', uid)).toBe(`kubepods/pod${uid}`);
    expect(podCgroupRelPath('cgroupfs', 'Burstable', uid)).toBe(`kubepods/burstable/pod${uid}`);
    expect(podCgroupRelPath('cgroupfs', 'BestEffort', uid)).toBe(`kubepods/besteffort/pod${uid}`);
    const u = uid.replace(/-/g, '_');
    expect(podCgroupRelPath('systemd', 'Guaranteed', uid)).toBe(`kubepods.slice/kubepods-pod${u}.slice`);
    expect(podCgroupRelPath('systemd', 'Burstable', uid)).toBe(`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${u}.slice`);
    expect(podCgroupRelPath('systemd', 'BestEffort', uid)).toBe(`kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${u}.slice`);
  });

  it('finds the cgroup v2 mount wherever the host put it', () => {
    const hybrid = 'cgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n';
    expect(findCgroup2Mount(hybrid)).toBe('/sys/fs/cgroup/unified');
    expect(findCgroup2Mount('cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n')).toBe('/sys/fs/cgroup');
    expect(findCgroup2Mount('cgroup2 /mnt/with\\040space cgroup2 rw 0 0\n')).toBe('/mnt/with space');
    expect(() => findCgroup2Mount('cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n')).toThrow(/no cgroup v2/);
  });
});

describe('prefixes routed to a host (routeToHost)', () => {
  it('stay inside one range of the host kind and clear of the pods', () => {
    expect(() => checkHostPrefix('m', 'internet', '203.0.113.0/24')).not.toThrow();
    expect(() => checkHostPrefix('m', 'internet', '2001:db8:203:113::/64')).not.toThrow();
    expect(() => checkHostPrefix('s', 'service', '10.96.0.0/16')).not.toThrow();
    expect(() => checkHostPrefix('m', 'internet', '203.0.0.0/16')).toThrow(RangeError); // wider than the /24
    expect(() => checkHostPrefix('m', 'internet', '8.8.8.0/24')).toThrow(RangeError);
    expect(() => checkHostPrefix('m', 'internet', '10.96.0.0/16')).toThrow(RangeError); // a service range
    expect(() => checkHostPrefix('s', 'service', '10.0.0.0/8')).toThrow(/pod range/);
    expect(() => checkHostPrefix('s', 'service', '10.244.0.128/25')).toThrow(/pod range/);
    expect(() => checkHostPrefix('s', 'service', 'fd00:10:244::/48')).toThrow(/pod range/);
    expect(() => checkHostPrefix('m', 'internet', '203.0.113.0')).toThrow(TypeError);
    expect(() => checkHostPrefix('m', 'internet', '203.0.113.0/33')).toThrow(TypeError);
  });
});
