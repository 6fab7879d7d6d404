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

/*
 * Parse the packet a cgroup_skb program sees (it starts at the IP header).
 * bpf_skb_load_bytes is used rather than direct packet access so that
 * non-linear skbs (GSO, paged data) parse the same way. Returns 0 on
 * success, -1 for a packet that is not IPv4/IPv6 or is truncated.
 */
static __always_inline int weir_parse_skb(struct __sk_buff *skb, struct weir_flow *f, struct weir_l4 *l4)
{
	__u32 off;
	__u8 proto;

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

			if (proto != WEIR_NEXTHDR_HOP && proto != WEIR_NEXTHDR_ROUTING &&
			    proto != WEIR_NEXTHDR_DEST && proto != WEIR_NEXTHDR_FRAGMENT &&
			    proto != WEIR_NEXTHDR_AUTH)
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return -1;
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
		}
	} else {
		return -1;
	}

	f->proto = proto;
	if (f->fragment)
		return 0;

	switch (proto) {
	case IPPROTO_TCP: {
		__u8 th[14];

		if (bpf_skb_load_bytes(skb, off, th, sizeof(th)))
			return -1;
		f->sport = (__u16)th[0] << 8 | th[1];
		f->dport = (__u16)th[2] << 8 | th[3];
		l4->tcp_flags = th[13];
		f->has_ports = 1;
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u8 ph[4];

		if (bpf_skb_load_bytes(skb, off, ph, sizeof(ph)))
			return -1;
		f->sport = (__u16)ph[0] << 8 | ph[1];
		f->dport = (__u16)ph[2] << 8 | ph[3];
		f->has_ports = 1;
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 ih[8];

		if (bpf_skb_load_bytes(skb, off, ih, sizeof(ih)))
			return -1;
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
