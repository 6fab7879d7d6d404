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

/* Record or refresh an inbound flow. `create` is false for packets that
 * may only refresh an existing entry (TCP without SYN). Writes at most once
 * a second per flow so busy flows do not bounce the cache line. */
static __always_inline void weir_ct_inbound(const struct weir_ct_key *k, int create)
{
	struct weir_ct_value *v = bpf_map_lookup_elem(&weir_ct, k);
	__u64 now = bpf_ktime_get_ns();

	if (v) {
		if (now - v->last_seen_ns > 1000000000ull)
			v->last_seen_ns = now;
		return;
	}
	if (!create)
		return;
	struct weir_ct_value nv = { .last_seen_ns = now };

	if (bpf_map_update_elem(&weir_ct, k, &nv, BPF_ANY))
		weir_stat_inc(WEIR_STAT_CT_INSERT_FAILED);
	else
		weir_stat_inc(WEIR_STAT_CT_INSERT);
}

#endif /* WEIR_CONNTRACK_H */
