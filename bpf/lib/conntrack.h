/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_CONNTRACK_H
#define WEIR_CONNTRACK_H

#include "common.h"

/* See struct weir_ct_key for what is tracked and why. Ports are host order
 * in struct weir_flow and network order in the key. */
static __always_inline void weir_ct_key_egress(struct weir_ct_key *k, __u32 endpoint_id,
					       const struct weir_flow *f, __u16 icmp_id)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->endpoint_id = endpoint_id;
	k->family = f->family;
	k->proto = f->proto;
	if (f->has_ports) {
		k->local_port = bpf_htons(f->sport);
		k->remote_port = bpf_htons(f->dport);
	} else {
		k->local_port = icmp_id;
		k->remote_port = icmp_id;
	}
	__builtin_memcpy(k->remote, f->dst, 16);
}

/* Is this egress flow a reply to a flow that reached the pod from outside? */
static __always_inline int weir_ct_is_reply(const struct weir_ct_key *k)
{
	struct weir_ct_value *v = bpf_map_lookup_elem(&weir_ct, k);

	if (!v)
		return 0;
	return bpf_ktime_get_ns() - v->last_seen_ns < weir_cfg.ct_timeout_ns;
}

/* Refresh an inbound flow if it is tracked; returns whether it is. Writes
 * at most once a second per flow so busy flows do not bounce the cache line. */
static __always_inline int weir_ct_refresh(const struct weir_ct_key *k)
{
	struct weir_ct_value *v = bpf_map_lookup_elem(&weir_ct, k);
	__u64 now;

	if (!v)
		return 0;
	now = bpf_ktime_get_ns();
	if (now - v->last_seen_ns > 1000000000ull)
		v->last_seen_ns = now;
	return 1;
}

/* Record a new inbound flow. */
static __always_inline void weir_ct_create(const struct weir_ct_key *k)
{
	struct weir_ct_value nv = { .last_seen_ns = bpf_ktime_get_ns() };

	if (bpf_map_update_elem(&weir_ct, k, &nv, BPF_ANY))
		weir_stat_inc(WEIR_STAT_CT_INSERT_FAILED);
	else
		weir_stat_inc(WEIR_STAT_CT_INSERT);
}

/*
 * Flows a pod's UDP socket opened itself (weir_sk_flows, see weir_abi.h):
 * one direct-mapped slot per (remote, port) hash in the socket's storage.
 * Never consulted for a verdict: a remembered flow can only keep an inbound
 * entry from being created, it never lets a packet through.
 */
static __always_inline __u32 weir_sk_flow_index(const __u8 *remote, __u16 port_be)
{
	__u32 w[4], h;

	__builtin_memcpy(w, remote, 16);
	h = w[0] ^ w[1] ^ w[2] ^ w[3] ^ port_be;
	h ^= h >> 16;
	h ^= h >> 8;
	return h & (WEIR_SK_FLOW_SLOTS - 1);
}

static __always_inline int weir_sk_flow_is(const struct weir_sk_flow *s, __u8 family,
					   const __u8 *remote, __u16 port_be)
{
	__u32 a[4], b[4];

	if (s->remote_port != port_be || s->family != family)
		return 0;
	__builtin_memcpy(a, s->remote, 16);
	__builtin_memcpy(b, remote, 16);
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* sendmsg4/6: the socket sends to (f->dst, f->dport) as new egress. Writes
 * at most once a second per flow. The coarse clock (a tick's resolution) is
 * enough for a 1 s refresh and the conntrack timeout, and cheaper. */
static __always_inline void weir_sk_flow_opened(struct bpf_sock *sk, const struct weir_flow *f)
{
	struct weir_sk_flows *fl;
	struct weir_sk_flow *s;
	__u16 port_be = bpf_htons(f->dport);
	__u64 now;

	fl = bpf_sk_storage_get(&weir_sk_flows, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!fl)
		return;
	s = &fl->slot[weir_sk_flow_index(f->dst, port_be)];
	now = bpf_ktime_get_coarse_ns();
	if (weir_sk_flow_is(s, f->family, f->dst, port_be)) {
		if (now - s->last_sent_ns > 1000000000ull)
			s->last_sent_ns = now;
		return;
	}
	/* Empty, expired or another flow's slot (which then loses its mark). */
	__builtin_memcpy(s->remote, f->dst, 16);
	s->remote_port = port_be;
	s->family = f->family;
	s->last_sent_ns = now;
}

/* ingress: did the receiving socket open a flow to the datagram's source
 * (f->src, f->sport) within the conntrack timeout? */
static __always_inline int weir_sk_flow_was_opened(struct bpf_sock *sk, const struct weir_flow *f)
{
	struct weir_sk_flows *fl;
	struct weir_sk_flow *s;
	__u16 port_be = bpf_htons(f->sport);

	fl = bpf_sk_storage_get(&weir_sk_flows, sk, 0, 0);
	if (!fl)
		return 0;
	s = &fl->slot[weir_sk_flow_index(f->src, port_be)];
	return weir_sk_flow_is(s, f->family, f->src, port_be) &&
	       bpf_ktime_get_coarse_ns() - s->last_sent_ns < weir_cfg.ct_timeout_ns;
}

#endif /* WEIR_CONNTRACK_H */
