// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cgroup_skb/egress: the per-packet verdict. Covers what the socket hooks
 * cannot see (ICMP, raw sockets, connected UDP sends) and revocation:
 * packets of an established connection are judged against the current
 * policy, so removing an allowance cuts the connection. Counts every judged
 * packet exactly, by endpoint and verdict. Addresses a pod learned from DNS
 * count on the would-drop path (policy.h); built with WEIR_FQDN_LEARN
 * (egress-fqdn.bpf.o, kernels with bpf_loop) it also tracks the pod's DNS
 * queries to trusted resolvers so their answers can teach (fqdn_learn.h).
 */
#include "lib/common.h"
#include "lib/identity.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/report.h"
#ifdef WEIR_FQDN_LEARN
#include "lib/fqdn_learn.h"
#endif

SEC("cgroup_skb/egress")
int weir_egress(struct __sk_buff *skb)
{
	struct weir_pod_value *pod;
	struct weir_decision d;
	struct weir_flow f;
	struct weir_l4 l4;
	__u32 generation;
	__u64 segs;

	pod = weir_pod_of_skb(skb);
	if (!pod)
		return 1;
	if (skb->ifindex == WEIR_LOOPBACK_IFINDEX)
		return 1;
	if (weir_parse_skb(skb, &f, &l4)) {
		/* Not IP, or truncated: the kernel would not route it as a
		 * pod's egress either. Count it and let it go. */
		weir_stat_inc(WEIR_STAT_PARSE_ERRORS);
		return 1;
	}
	if (weir_is_loopback(&f))
		return 1;
	if (f.fragment)
		weir_stat_inc(WEIR_STAT_FRAGMENTS);
	if (f.l4_unknown)
		weir_stat_inc(WEIR_STAT_L4_UNKNOWN);

	weir_judge(pod, &f, &d, &generation, skb, &l4);

	if (d.verdict == WEIR_VERDICT_DROP || d.verdict == WEIR_VERDICT_AUDIT) {
		struct weir_ct_key k;

		weir_ct_key_egress(&k, pod->endpoint_id, &f, l4.icmp_id);
		if (weir_ct_is_reply(&k)) {
			d.verdict = WEIR_VERDICT_REPLY;
			d.reason = WEIR_REASON_REPLY;
		} else {
			/* What weir_ct would have let through as a reply: a
			 * TCP segment that is not a bare SYN, any datagram, an
			 * ICMP echo reply. */
			int maybe_reply = f.proto == IPPROTO_UDP || f.proto == IPPROTO_SCTP ||
					  (f.proto == IPPROTO_TCP && (l4.tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) != WEIR_TCP_SYN) ||
					  (f.proto == IPPROTO_ICMP && l4.icmp_type == 0) ||
					  (f.proto == IPPROTO_ICMPV6 && l4.icmp_type == 129);

			weir_blame_full_ct(&d, maybe_reply);
		}
	}

#ifdef WEIR_FQDN_LEARN
	/* One flag test for sets without fqdn peers. */
	if ((d.set_flags & WEIR_SET_F_FQDN) && f.proto == IPPROTO_UDP && f.has_ports && d.verdict != WEIR_VERDICT_DROP)
		weir_dns_track_query(skb, pod, &f);
#endif

	segs = skb->gso_segs ? skb->gso_segs : 1;
	weir_count(pod->endpoint_id, WEIR_COUNT_PACKETS, d.verdict, segs, skb->len);

	if (weir_reportable(d.verdict)) {
		struct weir_origin o = { .hook = WEIR_HOOK_EGRESS };
		struct bpf_sock *sk = skb->sk;

		o.cgroup_id = bpf_skb_cgroup_id(skb);
		if (sk) {
			sk = bpf_sk_fullsock(sk);
			if (sk) {
				struct weir_sk_owner *ow = bpf_sk_storage_get(&weir_sk_owner, sk, 0, 0);

				if (ow) {
					o.pid = ow->pid;
					__builtin_memcpy(o.comm, ow->comm, sizeof(o.comm));
				}
			}
		}
		weir_report(pod, generation, &f, &d, &o);
	}
	return d.verdict == WEIR_VERDICT_DROP ? 0 : 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
