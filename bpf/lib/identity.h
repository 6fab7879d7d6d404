/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_IDENTITY_H
#define WEIR_IDENTITY_H

#include "common.h"

/*
 * A pod is found by the cgroup ancestry of the sending socket. The kubelet
 * puts a pod's cgroup at one of two depths below its kubepods directory
 * (level K): Guaranteed pods at K+1, Burstable/BestEffort pods at K+2 (under
 * the QoS directory). Every container cgroup, including ones started after
 * the agent learned the pod, sits below the pod cgroup, so looking up the
 * ancestors at those two levels finds the pod with no per-container state.
 * The deeper level is tried first because most pods are not Guaranteed.
 * Sockets in cgroups that are not below a known pod are never touched.
 */
static __always_inline struct weir_pod_value *weir_pod_lookup_id(__u64 id)
{
	if (!id)
		return NULL;
	return bpf_map_lookup_elem(&weir_pods, &id);
}

static __always_inline struct weir_pod_value *weir_pod_of_skb(struct __sk_buff *skb)
{
	struct weir_pod_value *pod;

	if (!weir_cfg.pod_level_lo)
		return NULL;
	pod = weir_pod_lookup_id(bpf_skb_ancestor_cgroup_id(skb, weir_cfg.pod_level_hi));
	if (pod)
		return pod;
	return weir_pod_lookup_id(bpf_skb_ancestor_cgroup_id(skb, weir_cfg.pod_level_lo));
}

/* For socket hooks the hook runs because the socket's cgroup has our
 * program; the calling task's cgroup is the one that created or uses it. */
static __always_inline struct weir_pod_value *weir_pod_of_current(void)
{
	struct weir_pod_value *pod;

	if (!weir_cfg.pod_level_lo)
		return NULL;
	pod = weir_pod_lookup_id(bpf_get_current_ancestor_cgroup_id(weir_cfg.pod_level_hi));
	if (pod)
		return pod;
	return weir_pod_lookup_id(bpf_get_current_ancestor_cgroup_id(weir_cfg.pod_level_lo));
}

/*
 * Is the destination one of the pod's own addresses (weir_pod_ips)? A pod
 * reaching itself is never judged (Kubernetes never isolates a pod from
 * itself). Called only on the would-drop path. An IPv4-mapped IPv6
 * destination (::ffff:a.b.c.d from a dual-stack socket) is its IPv4 address.
 */
static __always_inline int weir_is_own_address(const struct weir_pod_value *pod, const struct weir_flow *f)
{
	struct weir_pod_ip_key k;
	struct weir_pod_ip_value *v;

	__builtin_memset(&k, 0, sizeof(k));
	k.family = weir_addr_key(f->family, f->dst, k.addr);
	v = bpf_map_lookup_elem(&weir_pod_ips, &k);
	return v && v->endpoint_id == pod->endpoint_id;
}

#endif /* WEIR_IDENTITY_H */
