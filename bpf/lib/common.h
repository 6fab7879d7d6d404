/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/* Includes, map definitions and the per-node config shared by every weir
 * program. Each <hook>.bpf.c includes this once; the loader pins every map
 * under the same path so all objects share one instance of each map. */
#ifndef WEIR_COMMON_H
#define WEIR_COMMON_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "weir_abi.h"
#include "dns_types.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define WEIR_LOOPBACK_IFINDEX 1	/* lo is ifindex 1 in every netns */

/* Written by the loader before load (see struct weir_config). */
const volatile struct weir_config weir_cfg = {
	.pod_level_lo = 0,
	.pod_level_hi = 0,
	.event_interval_ns = 1000000000ull,
	.ct_timeout_ns = 300000000000ull,
	.max_endpoints = WEIR_DEFAULT_MAX_ENDPOINTS,
	.flags = 0,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_DEFAULT_MAX_PODS);
	__type(key, __u64);
	__type(value, struct weir_pod_value);
} weir_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_DEFAULT_MAX_POD_IPS);
	__type(key, struct weir_pod_ip_key);
	__type(value, struct weir_pod_ip_value);
} weir_pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_DEFAULT_MAX_SETS);
	__type(key, __u32);
	__type(value, struct weir_set_value);
} weir_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_DEFAULT_MAX_NODES);
	__type(key, __u32);
	__type(value, struct weir_trie_node);
} weir_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_DEFAULT_MAX_TAILS);
	__type(key, __u32);
	__type(value, struct weir_trie_tail);
} weir_trie_tails SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WEIR_DEFAULT_MAX_CLASSES);
	__type(key, __u32);
	__type(value, struct weir_port_class);
} weir_classes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DEFAULT_MAX_ENDPOINTS * WEIR_COUNTER_STRIDE);
	__type(key, __u32);
	__type(value, struct weir_counter);
} weir_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_STAT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} weir_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_DEFAULT_CT_ENTRIES);
	__type(key, struct weir_ct_key);
	__type(value, struct weir_ct_value);
} weir_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_DEFAULT_AGG_ENTRIES);
	__type(key, struct weir_agg_key);
	__type(value, struct weir_agg_value);
} weir_agg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WEIR_DEFAULT_RINGBUF_BYTES);
} weir_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct weir_sk_owner);
} weir_sk_owner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct weir_node_state);
} weir_node SEC(".maps");

/* Is a node-state flag (WEIR_NODE_F_*) set? Read only on the drop path. */
static __always_inline int weir_node_flag(__u32 flag)
{
	__u32 zero = 0;
	struct weir_node_state *n = bpf_map_lookup_elem(&weir_node, &zero);

	return n && (n->flags & flag);
}

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct weir_sk_flows);
} weir_sk_flows SEC(".maps");

/* DNS-aware egress: layouts and who writes what in weir_abi.h. Defined in
 * every object (the plain ones read weir_fqdn_keys and weir_fqdn_learned
 * for the verdict), so all of them share one pinned instance of each. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_DEFAULT_DNS_RESOLVERS);
	__type(key, struct weir_dns_resolver_key);
	__type(value, struct weir_dns_resolver_value);
} weir_dns_resolvers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_DEFAULT_FQDN_KEYS);
	__type(key, struct weir_dns_key);
	__type(value, struct weir_fqdn_key_value);
} weir_fqdn_keys SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WEIR_DEFAULT_DNS_QUERIES);
	__type(key, struct weir_dns_query_key);
	__type(value, struct weir_dns_query_value);
} weir_dns_queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WEIR_DEFAULT_FQDN_LEARNED);
	__type(key, struct weir_fqdn_learned_key);
	__type(value, struct weir_fqdn_learned_value);
} weir_fqdn_learned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_DNS_SCRATCH_ENTRIES);
	__type(key, __u32);
	__type(value, struct weir_dns_state);
} weir_dns_scratch SEC(".maps");

static __always_inline void weir_stat_inc(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&weir_stats, &which);

	if (v)
		*v += 1;
}

/* A flow as the policy sees it: who (endpoint), to where, how. Addresses
 * are 16 bytes; IPv4 uses the first 4. Ports are host byte order. */
struct weir_flow {
	__u8 family;
	__u8 proto;
	__u8 has_ports;		/* L4 ports known (TCP/UDP/SCTP first fragment) */
	__u8 fragment;		/* non-first fragment: judged by address */
	__u8 l4_unknown;	/* WEIR_L4_* : transport header not read */
	__u8 _pad[3];
	__u16 sport;
	__u16 dport;
	__u8 src[16];
	__u8 dst[16];
};

/*
 * An address as the per-address maps key it (weir_pod_ips,
 * weir_fqdn_learned): an IPv4-mapped IPv6 address (::ffff:a.b.c.d, from a
 * dual-stack socket) is its IPv4 address. Writes 16 bytes to out (IPv4:
 * the first 4, the rest zero) and returns the family to key with.
 */
static __always_inline __u8 weir_addr_key(__u8 family, const __u8 *addr, __u8 *out)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	if (family == AF_INET6 && !(w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff))) {
		__builtin_memcpy(out, w, 16);
		return AF_INET6;
	}
	__builtin_memset(out, 0, 16);
	__builtin_memcpy(out, family == AF_INET6 ? &w[3] : &w[0], 4);
	return AF_INET;
}

/* weir_flow.l4_unknown: why the transport header is not known. */
#define WEIR_L4_PORTS 1		/* protocol known, its ports not (truncated) */
#define WEIR_L4_PROTO 2		/* protocol not known (extension header chain too long) */

#endif /* WEIR_COMMON_H */
