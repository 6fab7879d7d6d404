// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Benchmark reference programs on weir's egress hook (never attached):
 *  - bench_empty: returns "pass"; the fixed cost of running any program.
 *  - bench_lpm: loads the IPv4/IPv6 destination the way weir does and makes
 *    one lookup in a kernel LPM trie: what a single-trie datapath costs.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct lpm4_key {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 200000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm4_key);
	__type(value, __u32);
} bench_lpm4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 200000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm6_key);
	__type(value, __u32);
} bench_lpm6 SEC(".maps");

SEC("cgroup_skb/egress")
int bench_empty(struct __sk_buff *skb)
{
	return 1;
}

SEC("cgroup_skb/egress")
int bench_lpm(struct __sk_buff *skb)
{
	__u32 *v;

	if (skb->protocol == bpf_htons(0x0800)) {
		struct lpm4_key k = { .prefixlen = 32 };

		if (bpf_skb_load_bytes(skb, 16, k.addr, 4))
			return 1;
		v = bpf_map_lookup_elem(&bench_lpm4, &k);
	} else {
		struct lpm6_key k = { .prefixlen = 128 };

		if (bpf_skb_load_bytes(skb, 24, k.addr, 16))
			return 1;
		v = bpf_map_lookup_elem(&bench_lpm6, &k);
	}
	return v && *v ? 1 : 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
