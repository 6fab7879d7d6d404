// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cgroup_skb/ingress: never drops. Records flows that reach a pod from
 * outside so that the pod's replies are not judged as egress (a server pod
 * under default-deny still answers its clients). Only a TCP SYN, a UDP
 * datagram or an ICMP echo request creates an entry; other TCP packets
 * refresh one. A pod cannot open a reply path for itself: its own packets
 * are egress, loopback is ignored here too, and a UDP (or SCTP) datagram
 * that answers a flow the pod opened (a send remembered in weir_sk_flows, or
 * a socket connected to the datagram's source) is not recorded as an inbound flow, so the pod's own
 * flow never outlives its allowance as a "reply". TCP needs no such check: a
 * flow the pod opened is answered by a SYN-ACK, which creates nothing.
 * Built with WEIR_FQDN_LEARN (ingress-fqdn.bpf.o, kernels with bpf_loop) it
 * also learns the addresses of DNS answers to the pod's tracked queries,
 * before the answer reaches the pod's socket (fqdn_learn.h).
 */
#include "lib/common.h"
#include "lib/identity.h"
#include "lib/parse.h"
#include "lib/conntrack.h"
#ifdef WEIR_FQDN_LEARN
#include "lib/fqdn_learn.h"
#endif

/*
 * Does this datagram answer a flow the pod opened? Yes when the receiving
 * socket is connected to the datagram's source (the pod chose that peer),
 * or when the socket sent to the source itself (weir_sk_flows).
 */
static __always_inline int weir_answers_own_flow(struct __sk_buff *skb, const struct weir_flow *f)
{
	struct bpf_sock *sk = skb->sk;
	__u32 a[4], d[4];
	__u16 dport;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	/* Each field read at its own offset: the verifier refuses arithmetic
	 * on a socket pointer, which a family-dependent choice of field would
	 * otherwise compile to. An unconnected socket has no destination port. */
	dport = *(volatile __u16 *)&sk->dst_port;
	if (dport && dport == bpf_htons(f->sport)) {
		__builtin_memcpy(a, f->src, 16);
		if (f->family == AF_INET) {
			d[0] = *(volatile __u32 *)&sk->dst_ip4;
			if (d[0] == a[0])
				return 1;
		} else {
			d[0] = *(volatile __u32 *)&sk->dst_ip6[0];
			d[1] = *(volatile __u32 *)&sk->dst_ip6[1];
			d[2] = *(volatile __u32 *)&sk->dst_ip6[2];
			d[3] = *(volatile __u32 *)&sk->dst_ip6[3];
			if (d[0] == a[0] && d[1] == a[1] && d[2] == a[2] && d[3] == a[3])
				return 1;
		}
	}
	return weir_sk_flow_was_opened(sk, f);
}

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
	if (weir_parse_skb(skb, &f, &l4) || f.fragment || f.l4_unknown)
		return 1;
	if (weir_is_loopback(&f))
		return 1;
#ifdef WEIR_FQDN_LEARN
	if (f.proto == IPPROTO_UDP && f.has_ports)
		weir_dns_learn_answer(skb, pod, &f);
#endif

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
	if (weir_ct_refresh(&k) || !create)
		return 1;
	/* A datagram answering a flow the pod opened is not an inbound flow. */
	if ((f.proto == IPPROTO_UDP || f.proto == IPPROTO_SCTP) && weir_answers_own_flow(skb, &f))
		return 1;
	weir_ct_create(&k);
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
