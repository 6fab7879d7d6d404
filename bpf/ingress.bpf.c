// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cgroup_skb/ingress: never drops. Records flows that reach a pod from
 * outside so that the pod's replies are not judged as egress (a server pod
 * under default-deny still answers its clients). Only a TCP SYN, a UDP
 * datagram or an ICMP echo request creates an entry; other TCP packets
 * refresh one. A pod cannot open a reply path for itself: its own packets
 * are egress, and loopback is ignored here too.
 */
#include "lib/common.h"
#include "lib/identity.h"
#include "lib/parse.h"
#include "lib/conntrack.h"

SEC("cgroup_skb/ingress")
int weir_ingress(struct __sk_buff *skb)
{
	struct weir_pod_value *pod;
	struct weir_flow f;
	struct weir_l4 l4;
	struct weir_ct_key k;
	int create;

	pod = weir_pod_of_skb(skb);
	if (!pod)
		return 1;
	if (skb->ifindex == WEIR_LOOPBACK_IFINDEX)
		return 1;
	if (weir_parse_skb(skb, &f, &l4) || f.fragment)
		return 1;
	if (weir_is_loopback(&f))
		return 1;

	switch (f.proto) {
	case IPPROTO_TCP:
		create = (l4.tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) == WEIR_TCP_SYN;
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		create = 1;
		break;
	case IPPROTO_ICMP:
		if (l4.icmp_type != 8)	/* echo request */
			return 1;
		create = 1;
		break;
	case IPPROTO_ICMPV6:
		if (l4.icmp_type != 128)	/* echo request */
			return 1;
		create = 1;
		break;
	default:
		return 1;
	}

	/* Seen from the pod: local = destination, remote = source. */
	__builtin_memset(&k, 0, sizeof(k));
	k.endpoint_id = pod->endpoint_id;
	k.family = f.family;
	k.proto = f.proto;
	if (f.has_ports) {
		k.local_port = bpf_htons(f.dport);
		k.remote_port = bpf_htons(f.sport);
	} else {
		k.local_port = l4.icmp_id;
		k.remote_port = l4.icmp_id;
	}
	__builtin_memcpy(k.remote, f.src, 16);
	weir_ct_inbound(&k, create);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
