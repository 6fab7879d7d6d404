/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_PARSE_H
#define WEIR_PARSE_H

#include "common.h"

#define WEIR_IPV6_EXT_MAX 6	/* extension headers walked before giving up */

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define WEIR_NEXTHDR_HOP 0
#define WEIR_NEXTHDR_ROUTING 43
#define WEIR_NEXTHDR_FRAGMENT 44
#define WEIR_NEXTHDR_AUTH 51
#define WEIR_NEXTHDR_NONE 59
#define WEIR_NEXTHDR_DEST 60

/* Extra L4 facts the ingress tracker needs. */
struct weir_l4 {
	__u8 tcp_flags;		/* TCP flags byte (offset 13) */
	__u8 icmp_type;
	__u16 icmp_id;		/* echo identifier, network byte order */
};

#define WEIR_TCP_SYN 0x02
#define WEIR_TCP_ACK 0x10

static __always_inline void weir_l4_fast(const __u8 *l4h, __u8 proto, struct weir_flow *f, struct weir_l4 *l4)
{
	switch (proto) {
	case IPPROTO_TCP:
		l4->tcp_flags = l4h[13];
		/* fallthrough */
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		f->sport = (__u16)l4h[0] << 8 | l4h[1];
		f->dport = (__u16)l4h[2] << 8 | l4h[3];
		f->has_ports = 1;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		l4->icmp_type = l4h[0];
		__builtin_memcpy(&l4->icmp_id, &l4h[4], 2);
		break;
	default:
		break;
	}
}

/*
 * Fast path: the common packet (IPv4 without options or IPv6 without
 * extension headers, not a fragment, headers in the linear area) read with
 * direct packet access, no helper calls. Returns 1 when the packet needs the
 * general parser below.
 */
static __always_inline int weir_parse_fast(struct __sk_buff *skb, struct weir_flow *f, struct weir_l4 *l4)
{
	const __u8 *data = (const __u8 *)(long)skb->data;
	const __u8 *end = (const __u8 *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(0x0800)) {
		/* 20-byte IP header + 14 bytes of L4 (TCP flags are byte 13). */
		if (data + 34 > end)
			return 1;
		if (data[0] != 0x45 || ((data[6] & 0x1f) | data[7]))
			return 1;
		f->family = AF_INET;
		f->proto = data[9];
		__builtin_memcpy(f->src, data + 12, 4);
		__builtin_memcpy(f->dst, data + 16, 4);
		weir_l4_fast(data + 20, f->proto, f, l4);
		return 0;
	}
	if (skb->protocol == bpf_htons(0x86DD)) {
		__u8 nh;

		if (data + 54 > end)
			return 1;
		nh = data[6];
		if ((data[0] >> 4) != 6 ||
		    (nh != IPPROTO_TCP && nh != IPPROTO_UDP && nh != IPPROTO_SCTP && nh != IPPROTO_ICMPV6))
			return 1;
		f->family = AF_INET6;
		f->proto = nh;
		__builtin_memcpy(f->src, data + 8, 16);
		__builtin_memcpy(f->dst, data + 24, 16);
		weir_l4_fast(data + 40, nh, f, l4);
		return 0;
	}
	return 1;
}

/* Is this next-header value one of the IPv6 extension headers walked? */
static __always_inline int weir_ipv6_is_ext(__u8 nh)
{
	return nh == WEIR_NEXTHDR_HOP || nh == WEIR_NEXTHDR_ROUTING || nh == WEIR_NEXTHDR_DEST ||
	       nh == WEIR_NEXTHDR_FRAGMENT || nh == WEIR_NEXTHDR_AUTH;
}

/*
 * Parse the packet a cgroup_skb program sees (it starts at the IP header).
 * The general path uses bpf_skb_load_bytes so that non-linear skbs (GSO,
 * paged data), IP options and IPv6 extension headers parse the same way.
 *
 * Returns -1 only when the IP header itself cannot be read (not IPv4/IPv6,
 * or truncated): the kernel would not route such a packet as a pod's
 * egress either. Once the IP header is read, the result is 0 and what
 * could not be read past it is said in f->l4_unknown, never hidden:
 *   WEIR_L4_PROTO  the extension header chain is longer than
 *                  WEIR_IPV6_EXT_MAX or runs past the packet: the protocol
 *                  is not known;
 *   WEIR_L4_PORTS  the protocol is known but its first bytes are not there
 *                  (TCP/UDP/SCTP ports need 4, ICMP type and id need 8).
 * The policy then judges such a packet as going to every port of its
 * protocol (of every protocol for WEIR_L4_PROTO), so it passes only where
 * any port would (bpf/lib/policy.h). A first fragment needs only the 4
 * bytes of ports: the TCP flags (byte 13) are read when present, else 0.
 */
static __always_inline int weir_parse_skb(struct __sk_buff *skb, struct weir_flow *f, struct weir_l4 *l4)
{
	__u32 off;
	__u8 proto;

	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memset(l4, 0, sizeof(*l4));
	if (!weir_parse_fast(skb, f, l4))
		return 0;
	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memset(l4, 0, sizeof(*l4));

	if (skb->protocol == bpf_htons(0x0800)) {
		__u8 hdr[20];
		__u16 frag;

		if (bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)))
			return -1;
		if ((hdr[0] >> 4) != 4 || (hdr[0] & 0xf) < 5)
			return -1;
		f->family = AF_INET;
		proto = hdr[9];
		__builtin_memcpy(f->src, &hdr[12], 4);
		__builtin_memcpy(f->dst, &hdr[16], 4);
		frag = ((__u16)hdr[6] << 8 | hdr[7]) & 0x1fff;
		if (frag)
			f->fragment = 1;
		off = (hdr[0] & 0xf) * 4;
	} else if (skb->protocol == bpf_htons(0x86DD)) {
		__u8 hdr[40];

		if (bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)))
			return -1;
		if ((hdr[0] >> 4) != 6)
			return -1;
		f->family = AF_INET6;
		proto = hdr[6];
		__builtin_memcpy(f->src, &hdr[8], 16);
		__builtin_memcpy(f->dst, &hdr[24], 16);
		off = 40;
#pragma unroll
		for (int i = 0; i < WEIR_IPV6_EXT_MAX; i++) {
			__u8 ext[4];

			if (!weir_ipv6_is_ext(proto))
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext))) {
				f->proto = proto;
				f->l4_unknown = WEIR_L4_PROTO;
				return 0;
			}
			if (proto == WEIR_NEXTHDR_FRAGMENT) {
				if ((((__u16)ext[2] << 8) | ext[3]) & 0xfff8)
					f->fragment = 1;
				off += 8;
			} else if (proto == WEIR_NEXTHDR_AUTH) {
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				off += ((__u32)ext[1] + 1) * 8;
			}
			proto = ext[0];
			/* A non-first fragment carries no transport header:
			 * what follows its fragment header is payload. */
			if (f->fragment)
				break;
		}
	} else {
		return -1;
	}

	f->proto = proto;
	if (f->fragment)
		return 0;
	if (f->family == AF_INET6 && weir_ipv6_is_ext(proto)) {
		f->l4_unknown = WEIR_L4_PROTO;
		return 0;
	}

	switch (proto) {
	case IPPROTO_TCP: {
		__u8 th[14];

		if (bpf_skb_load_bytes(skb, off, th, sizeof(th))) {
			/* A tiny first fragment: the ports are all a verdict needs. */
			th[13] = 0;
			if (bpf_skb_load_bytes(skb, off, th, 4)) {
				f->l4_unknown = WEIR_L4_PORTS;
				break;
			}
		}
		f->sport = (__u16)th[0] << 8 | th[1];
		f->dport = (__u16)th[2] << 8 | th[3];
		l4->tcp_flags = th[13];
		f->has_ports = 1;
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u8 ph[4];

		if (bpf_skb_load_bytes(skb, off, ph, sizeof(ph))) {
			f->l4_unknown = WEIR_L4_PORTS;
			break;
		}
		f->sport = (__u16)ph[0] << 8 | ph[1];
		f->dport = (__u16)ph[2] << 8 | ph[3];
		f->has_ports = 1;
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 ih[8];

		if (bpf_skb_load_bytes(skb, off, ih, sizeof(ih))) {
			f->l4_unknown = WEIR_L4_PORTS;
			break;
		}
		l4->icmp_type = ih[0];
		__builtin_memcpy(&l4->icmp_id, &ih[4], 2);
		break;
	}
	default:
		break;
	}
	return 0;
}

static __always_inline int weir_is_loopback(const struct weir_flow *f)
{
	if (f->family == AF_INET)
		return f->dst[0] == 127;
	/* ::1 */
	for (int i = 0; i < 15; i++)
		if (f->dst[i])
			return 0;
	return f->dst[15] == 1;
}

#endif /* WEIR_PARSE_H */
