// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * cgroup/connect4, connect6, sendmsg4, sendmsg6: the verdict when a pod
 * socket connects or sends to an address, before any packet exists. A
 * denied connect() or sendto() fails at once with EPERM, and the event
 * names the process (pid, comm). Replies of a server socket (UDP sendto to
 * a client that reached the pod first) pass as replies. A pod's traffic to
 * its own addresses passes like loopback (weir_pod_ips, looked up only when
 * the policy would not allow). An unconnected UDP send judged as new egress
 * is remembered on the socket as a flow the pod opened (weir_sk_flows), so
 * that its answers are not recorded as inbound flows by the ingress program.
 */
#include "lib/common.h"
#include "lib/identity.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/report.h"

static __always_inline void weir_remember_owner(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct weir_sk_owner *ow;

	if (!sk)
		return;
	ow = bpf_sk_storage_get(&weir_sk_owner, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ow || ow->pid)
		return;
	ow->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(ow->comm, sizeof(ow->comm));
}

static __always_inline int weir_sock_verdict(struct bpf_sock_addr *ctx, __u8 family, __u8 hook)
{
	struct weir_pod_value *pod;
	struct weir_decision d;
	struct weir_flow f;
	__u32 generation;

	pod = weir_pod_of_current();
	if (!pod)
		return 1;

	__builtin_memset(&f, 0, sizeof(f));
	f.family = family;
	f.proto = ctx->protocol;
	f.has_ports = f.proto == IPPROTO_TCP || f.proto == IPPROTO_UDP || f.proto == IPPROTO_SCTP;
	f.dport = bpf_ntohs(ctx->user_port & 0xffff);
	if (family == AF_INET) {
		__u32 a = ctx->user_ip4;

		__builtin_memcpy(f.dst, &a, 4);
	} else {
		__u32 a[4];

		a[0] = ctx->user_ip6[0];
		a[1] = ctx->user_ip6[1];
		a[2] = ctx->user_ip6[2];
		a[3] = ctx->user_ip6[3];
		__builtin_memcpy(f.dst, a, 16);
	}
	if (ctx->sk)
		f.sport = ctx->sk->src_port;

	weir_remember_owner(ctx);
	/* Loopback inside the pod is never touched. */
	if (weir_is_loopback(&f))
		return 1;

	weir_judge(pod, &f, &d, &generation, NULL, NULL);
	if (d.verdict == WEIR_VERDICT_DROP || d.verdict == WEIR_VERDICT_AUDIT) {
		struct weir_ct_key k;

		/* The pod's own address: like loopback, not judged, not counted. */
		if (weir_is_own_address(pod, &f))
			return 1;
		weir_ct_key_egress(&k, pod->endpoint_id, &f, 0);
		if (f.sport && weir_ct_is_reply(&k)) {
			d.verdict = WEIR_VERDICT_REPLY;
			d.reason = WEIR_REASON_REPLY;
		} else {
			/* A send from a bound port may answer an inbound flow. */
			weir_blame_full_ct(&d, f.sport && (hook == WEIR_HOOK_SENDMSG4 || hook == WEIR_HOOK_SENDMSG6));
			/* Its own address may be the one that did not fit. */
			if ((pod->flags & WEIR_POD_F_ADDR_MISSING) &&
			    (d.reason == WEIR_REASON_DEFAULT_DENY || d.reason == WEIR_REASON_AUDIT_DEFAULT_DENY))
				d.reason = WEIR_REASON_MAP_FULL;
		}
	}
	/* An unconnected UDP send that opens a flow: remember it on the socket
	 * (after autobind, so the answer reaches this very socket). */
	if ((hook == WEIR_HOOK_SENDMSG4 || hook == WEIR_HOOK_SENDMSG6) && f.proto == IPPROTO_UDP &&
	    ctx->sk && (d.verdict == WEIR_VERDICT_ALLOW || d.verdict == WEIR_VERDICT_AUDIT))
		weir_sk_flow_opened(ctx->sk, &f);
	weir_count(pod->endpoint_id, WEIR_COUNT_SOCKETS, d.verdict, 1, 0);
	if (weir_reportable(d.verdict)) {
		struct weir_origin o = { .hook = hook };

		o.pid = bpf_get_current_pid_tgid() >> 32;
		o.cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(o.comm, sizeof(o.comm));
		weir_report(pod, generation, &f, &d, &o);
	}
	return d.verdict == WEIR_VERDICT_DROP ? 0 : 1;
}

SEC("cgroup/connect4")
int weir_connect4(struct bpf_sock_addr *ctx)
{
	return weir_sock_verdict(ctx, AF_INET, WEIR_HOOK_CONNECT4);
}

SEC("cgroup/connect6")
int weir_connect6(struct bpf_sock_addr *ctx)
{
	return weir_sock_verdict(ctx, AF_INET6, WEIR_HOOK_CONNECT6);
}

SEC("cgroup/sendmsg4")
int weir_sendmsg4(struct bpf_sock_addr *ctx)
{
	return weir_sock_verdict(ctx, AF_INET, WEIR_HOOK_SENDMSG4);
}

SEC("cgroup/sendmsg6")
int weir_sendmsg6(struct bpf_sock_addr *ctx)
{
	return weir_sock_verdict(ctx, AF_INET6, WEIR_HOOK_SENDMSG6);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
