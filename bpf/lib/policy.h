/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_POLICY_H
#define WEIR_POLICY_H

#include "common.h"
#include "parse.h"

/*
 * Destination lookup: a multibit trie (stride 8, leaf-pushed) walked one
 * address byte per level, then a port class searched by bisection. Layout
 * in weir_abi.h (struct weir_trie_node, struct weir_trie_tail, struct
 * weir_port_class). Cost is bounded by the address length, not by the
 * number of prefixes or rules: at most 4 (IPv4) or 16 (IPv6) inlined array
 * lookups, one tail and one class.
 */
static __always_inline __u32 weir_trie_walk(__u32 root, const __u8 *addr, const int depth)
{
	__u32 node = root;

#pragma unroll
	for (int i = 0; i < depth; i++) {
		struct weir_trie_node *n;
		__u32 key = node, s;

		if (!node)
			return 0;
		n = bpf_map_lookup_elem(&weir_nodes, &key);
		if (!n)
			return 0;
		s = n->slot[addr[i]];
		if (!(s & WEIR_SLOT_CHILD))
			return s;
		node = s & ~WEIR_SLOT_CHILD;
	}
	/* A child pointer below the last byte is a builder bug: no class. */
	return 0;
}

/*
 * A tail slot: one prefix over one background class (weir_abi.h). The
 * address is compared under the mask in whole words, no loop; IPv4 reads
 * only its 4 bytes (the rest of a flow's address may be unset).
 */
static __always_inline __u32 weir_tail_class(__u32 s, const __u8 *addr, const int v6)
{
	struct weir_trie_tail *t;
	__u32 key = s & ~WEIR_SLOT_TAIL;

	if (!(s & WEIR_SLOT_TAIL))
		return s;
	t = bpf_map_lookup_elem(&weir_trie_tails, &key);
	if (!t)
		return 0;
	if (v6) {
		__u64 a0, a1, p0, p1, m0, m1;

		__builtin_memcpy(&a0, addr, 8);
		__builtin_memcpy(&a1, addr + 8, 8);
		__builtin_memcpy(&p0, t->addr, 8);
		__builtin_memcpy(&p1, t->addr + 8, 8);
		__builtin_memcpy(&m0, t->mask, 8);
		__builtin_memcpy(&m1, t->mask + 8, 8);
		return (((a0 ^ p0) & m0) | ((a1 ^ p1) & m1)) ? t->miss : t->hit;
	} else {
		__u32 a, p, m;

		__builtin_memcpy(&a, addr, 4);
		__builtin_memcpy(&p, t->addr, 4);
		__builtin_memcpy(&m, t->mask, 4);
		return ((a ^ p) & m) ? t->miss : t->hit;
	}
}

/*
 * The destination's class: the walk and its tail, as global functions. A
 * global function is verified once, on its own, with unknown arguments;
 * inlined, the 4 + 16 lookups and the tail were verified again on every
 * path of the program into them (plain egress went past the verifier's
 * 1M-instruction limit). Arguments are scalars (the address by value), as
 * global functions need on the oldest kernels weir supports.
 */
__attribute__((noinline)) __u32 weir_trie_class4(__u32 root, __u32 a)
{
	__u8 addr[4];

	__builtin_memcpy(addr, &a, 4);
	return weir_tail_class(weir_trie_walk(root, addr, 4), addr, 0);
}

__attribute__((noinline)) __u32 weir_trie_class6(__u32 root, __u64 a0, __u64 a1)
{
	__u8 addr[16];

	__builtin_memcpy(addr, &a0, 8);
	__builtin_memcpy(addr + 8, &a1, 8);
	return weir_tail_class(weir_trie_walk(root, addr, 16), addr, 1);
}

static __always_inline __u32 weir_class_of(const struct weir_set_value *set, const struct weir_flow *f)
{
	__u64 a[2];
	__u32 a4;

	if (f->family == AF_INET) {
		__builtin_memcpy(&a4, f->dst, 4);
		return weir_trie_class4(set->root4, a4);
	}
	__builtin_memcpy(a, f->dst, 16);
	return weir_trie_class6(set->root6, a[0], a[1]);
}

/*
 * Bits for (proto, port) in class c: any_bits (rules without ports) plus
 * the bits of the range holding (proto, port). Ranges are disjoint and
 * sorted by (proto << 16 | lo); bisection finds the last range starting at
 * or before the key. A non-first fragment carries no ports: it may pass if
 * some allow rule for its protocol exists (the first fragment, which has
 * the ports, was judged fully), and only port-less deny rules apply.
 */
static __always_inline __u8 weir_class_bits(__u32 class_id, const struct weir_flow *f)
{
	struct weir_port_class *c;
	__u32 lo = 0, hi, key;
	__u8 bits;

	if (!class_id)
		return 0;
	c = bpf_map_lookup_elem(&weir_classes, &class_id);
	if (!c)
		return 0;
	bits = c->any_bits;
	hi = c->nranges;
	if (hi > WEIR_PORT_RANGES_MAX)
		hi = WEIR_PORT_RANGES_MAX;

	if (f->l4_unknown) {
		/* Ports (or the protocol) unknown: as if it went to every
		 * port, so only port-less allows count and every deny of
		 * its protocol (of any protocol) applies. */
		__u8 deny = 0;

		for (__u32 i = 0; i < WEIR_PORT_RANGES_MAX; i++) {
			if (i >= hi)
				break;
			if (f->l4_unknown == WEIR_L4_PROTO || c->r[i].proto == f->proto)
				deny |= c->r[i].bits;
		}
		return bits | (deny & (WEIR_BIT_E_DENY | WEIR_BIT_A_DENY));
	}
	if (f->fragment) {
		__u8 allow = 0;

		for (__u32 i = 0; i < WEIR_PORT_RANGES_MAX; i++) {
			if (i >= hi)
				break;
			if (c->r[i].proto == f->proto)
				allow |= c->r[i].bits;
		}
		return bits | (allow & (WEIR_BIT_E_ALLOW | WEIR_BIT_A_ALLOW));
	}
	if (!f->has_ports)
		return bits;

	key = ((__u32)f->proto << 16) | f->dport;
	/* log2(64) + 1 rounds always suffice. */
	for (int round = 0; round < 7; round++) {
		__u32 mid, start;

		if (lo >= hi)
			break;
		mid = ((lo + hi) >> 1) & (WEIR_PORT_RANGES_MAX - 1);
		start = ((__u32)c->r[mid].proto << 16) | c->r[mid].lo;
		if (start <= key)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0) {
		struct weir_port_range *r = &c->r[(lo - 1) & (WEIR_PORT_RANGES_MAX - 1)];

		if (r->proto == f->proto && f->dport <= r->hi)
			bits |= r->bits;
	}
	return bits;
}

struct weir_decision {
	__u8 verdict;		/* enum weir_verdict */
	__u8 reason;		/* enum weir_reason */
	__u8 bits;		/* WEIR_BIT_* found for the destination */
	__u32 set_flags;	/* the pod's set's WEIR_SET_F_* (0: no valid set) */
	__u32 class_id;		/* the trie's port class for the destination */
};

/*
 * Verdict precedence (DESIGN.md "Verdict"), from the bits found for the
 * destination and the set's isolation flags:
 *   1. an Enforce deny rule matches                      -> DROP (deny rule)
 *   2. isolated by an Enforce policy and no Enforce allow -> DROP (default deny)
 *   3. otherwise ALLOW, then the audit pass: with Audit policies counted as
 *      Enforce, would it drop? -> AUDIT (the packet still passes)
 */
static __always_inline void weir_decide(__u32 set_flags, __u8 bits, struct weir_decision *d)
{
	d->bits = bits;
	if (bits & WEIR_BIT_E_DENY) {
		d->verdict = WEIR_VERDICT_DROP;
		d->reason = WEIR_REASON_DENY_RULE;
	} else if ((set_flags & WEIR_SET_F_E_ISOLATED) && !(bits & WEIR_BIT_E_ALLOW)) {
		d->verdict = WEIR_VERDICT_DROP;
		d->reason = WEIR_REASON_DEFAULT_DENY;
	} else if (bits & WEIR_BIT_A_DENY) {
		d->verdict = WEIR_VERDICT_AUDIT;
		d->reason = WEIR_REASON_AUDIT_DENY_RULE;
	} else if ((set_flags & (WEIR_SET_F_E_ISOLATED | WEIR_SET_F_A_ISOLATED)) &&
		   !(bits & (WEIR_BIT_E_ALLOW | WEIR_BIT_A_ALLOW))) {
		d->verdict = WEIR_VERDICT_AUDIT;
		d->reason = WEIR_REASON_AUDIT_DEFAULT_DENY;
	} else {
		d->verdict = WEIR_VERDICT_ALLOW;
		d->reason = (set_flags & WEIR_SET_F_E_ISOLATED) ? WEIR_REASON_ALLOW_RULE
								: WEIR_REASON_NOT_ISOLATED;
	}
}

/*
 * Why a drop or audit: a set that never compiled says so; a packet whose
 * transport header could not be read says so unless a port-less deny rule
 * decided it (it would have whatever the ports).
 */
static __always_inline void weir_explain(struct weir_decision *d, const struct weir_flow *f)
{
	if (d->verdict != WEIR_VERDICT_DROP && d->verdict != WEIR_VERDICT_AUDIT)
		return;
	if (d->set_flags & WEIR_SET_F_NOT_COMPILED) {
		d->reason = WEIR_REASON_NOT_COMPILED;
	} else if (f->l4_unknown) {
		__u32 class_id = d->class_id;
		struct weir_port_class *c = class_id ? bpf_map_lookup_elem(&weir_classes, &class_id) : 0;
		__u8 any = c ? c->any_bits : 0;

		if (!(any & (d->verdict == WEIR_VERDICT_DROP ? WEIR_BIT_E_DENY : WEIR_BIT_A_DENY)))
			d->reason = WEIR_REASON_L4_UNKNOWN;
	}
}

/*
 * ---- what the pod learned from DNS (weir_fqdn_learned) ----------------------
 *
 * Consulted only on the would-drop path (no Enforce allow from the trie, or
 * the audit pass would report) of a set with fqdn keys, so allowed traffic
 * and sets without fqdn peers pay nothing (one flag test). The learned
 * entry is the pod's own ({endpoint, family, destination}); each slot names
 * the key the pod's question matched, looked up under the pod's *current*
 * set id in weir_fqdn_keys: a removed rule revokes at once, established
 * connections included, and a pod that changed sets gets only what its new
 * policy allows. The class bits of every usable slot are ORed into the
 * trie's before the one decision, so precedence is unchanged (a trie deny
 * is never looked past; an fqdn deny applies only on this path).
 *
 * lenient: the packet belongs to a connection a socket hook already judged
 * (a TCP segment other than a bare SYN, or a UDP datagram, from a socket
 * that is not raw): an expired slot still present counts, so a long
 * download outlives the record's TTL. connect, sendmsg, the TCP SYN and
 * packets without a socket hook need an unexpired slot.
 *
 * The lookups are global functions: the verifier checks each once, on its
 * own, rather than once per path at every call site (inlined, the slot
 * loop takes egress past the 1,000,000-instruction budget). Global
 * functions take scalars and their program's context (all that 5.8
 * accepts), so the flow comes packed (weir_flow_facts) and the destination
 * as two words.
 */
/* weir_flow_facts: the flow (bits 0..39), and the packet's TCP flags. */
#define WEIR_FACT_TCP_FLAGS_SHIFT 40

static __always_inline __u64 weir_flow_facts(const struct weir_flow *f)
{
	return (__u64)f->proto | (__u64)f->dport << 8 | (__u64)(f->has_ports & 1) << 24 |
	       (__u64)(f->fragment & 1) << 25 | (__u64)(f->l4_unknown & 3) << 26 | (__u64)f->family << 32;
}

/*
 * weir_class_bits of a class for a flow given as weir_flow_facts: the same
 * answer, in one linear pass over the ranges (rare path: only learned
 * addresses; one loop is much cheaper to verify with the flow unknown).
 */
__noinline int weir_class_bits_of(__u32 class_id, __u64 facts)
{
	__u8 proto = facts & 0xff, has_ports = (facts >> 24) & 1, fragment = (facts >> 25) & 1, l4u = (facts >> 26) & 3;
	__u16 port = (facts >> 8) & 0xffff;
	struct weir_port_class *c;
	__u8 bits, any = 0;
	__u32 n;

	if (!class_id)
		return 0;
	c = bpf_map_lookup_elem(&weir_classes, &class_id);
	if (!c)
		return 0;
	bits = c->any_bits;
	n = c->nranges;
	for (__u32 i = 0; i < WEIR_PORT_RANGES_MAX; i++) {
		struct weir_port_range *r = &c->r[i];
		int same = r->proto == proto;

		if (i >= n)
			break;
		if (l4u) {
			/* as if to every port: every deny of its protocol (of any) */
			if (l4u == WEIR_L4_PROTO || same)
				any |= r->bits & (WEIR_BIT_E_DENY | WEIR_BIT_A_DENY);
		} else if (fragment) {
			/* no ports: some allow for its protocol */
			if (same)
				any |= r->bits & (WEIR_BIT_E_ALLOW | WEIR_BIT_A_ALLOW);
		} else if (has_ports && same && r->lo <= port && port <= r->hi) {
			any |= r->bits;
		}
	}
	return bits | any;
}

#ifndef SOCK_RAW
#define SOCK_RAW 3
#endif

/* See "lenient" above. */
static __always_inline int weir_fqdn_lenient(struct __sk_buff *skb, __u64 facts)
{
	__u8 proto = facts & 0xff, tcp_flags = (facts >> WEIR_FACT_TCP_FLAGS_SHIFT) & 0xff;
	struct bpf_sock *sk;

	if (proto == IPPROTO_TCP) {
		if ((tcp_flags & (WEIR_TCP_SYN | WEIR_TCP_ACK)) == WEIR_TCP_SYN)
			return 0;
	} else if (proto != IPPROTO_UDP) {
		return 0;
	}
	sk = skb->sk;
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	return sk && sk->type != SOCK_RAW;
}

/*
 * The class bits the pod's learned keys give the destination dst (dst_lo,
 * dst_hi: its 16 bytes). who: endpoint id | set id << 32; facts:
 * weir_flow_facts with the packet's TCP flags. skb: the packet (egress),
 * or NULL (socket hooks: never lenient).
 */
static __always_inline int weir_fqdn_learned_bits(struct __sk_buff *skb, __u64 who, __u64 facts, __u64 dst_lo, __u64 dst_hi)
{
	struct weir_fqdn_learned_key lk;
	struct weir_fqdn_learned_value *v;
	__u64 dst[2] = { dst_lo, dst_hi };
	int bits = 0, lenient;
	__u64 now;

	__builtin_memset(&lk, 0, sizeof(lk));
	lk.endpoint_id = who & 0xffffffff;
	lk.family = weir_addr_key((facts >> 32) & 0xff, (const __u8 *)dst, lk.addr);
	v = bpf_map_lookup_elem(&weir_fqdn_learned, &lk);
	if (!v)
		return 0;
	lenient = skb ? weir_fqdn_lenient(skb, facts) : 0;
	now = bpf_ktime_get_ns();
#pragma clang loop unroll(disable)
	for (int i = 0; i < WEIR_FQDN_SLOTS; i++) {
		struct weir_fqdn_slot *s = &v->slot[i];
		struct weir_fqdn_key_value *kv;
		struct weir_dns_key k;
		int b;

		/* kind is written last when a slot is (re)filled, and is 0
		 * while it is rewritten: a slot read with a kind is complete. */
		__builtin_memset(&k, 0, sizeof(k));
		k.kind = *(volatile __u8 *)&s->kind;
		if (!k.kind)
			continue;
		if (!lenient && s->expires_ns <= now)
			continue;
		k.set_id = who >> 32;
		k.hash = s->hash;
		kv = bpf_map_lookup_elem(&weir_fqdn_keys, &k);
		if (!kv)
			continue;
		b = weir_class_bits_of(kv->class_id, facts);
		if (!b)
			continue;
		bits |= b;
		/* Kept by the agent's expiry sweep while in use; written at
		 * most once a second so busy flows do not bounce the line. */
		if (now - s->last_use_ns > 1000000000ull)
			s->last_use_ns = now;
	}
	return bits & 0xff;
}

/* The two entry points (global functions take a context of their own
 * program type): packets, and the socket hooks. */
__noinline int weir_fqdn_bits_skb(struct __sk_buff *skb, __u64 who, __u64 facts, __u64 dst_lo, __u64 dst_hi)
{
	return weir_fqdn_learned_bits(skb, who, facts, dst_lo, dst_hi);
}

__noinline int weir_fqdn_bits_sock(__u64 who, __u64 facts, __u64 dst_lo, __u64 dst_hi)
{
	return weir_fqdn_learned_bits(NULL, who, facts, dst_lo, dst_hi);
}

/*
 * May learned keys change what the trie's bits decide? Not past an Enforce
 * deny; yes without an Enforce allow, or when the audit pass would report
 * for want of an allow.
 */
static __always_inline int weir_would_refuse(__u32 set_flags, __u8 bits)
{
	if (bits & WEIR_BIT_E_DENY)
		return 0;
	return !(bits & WEIR_BIT_E_ALLOW) || ((set_flags & WEIR_SET_F_A_ISOLATED) && !(bits & WEIR_BIT_A_ALLOW));
}

/*
 * The whole policy decision for a flow from a known pod: the trie, and on
 * the would-drop path what the pod learned from DNS. skb and l4: the packet
 * (egress), or NULL for the socket hooks (never lenient).
 */
static __always_inline void weir_judge(const struct weir_pod_value *pod, const struct weir_flow *f,
				       struct weir_decision *d, __u32 *generation,
				       struct __sk_buff *skb, const struct weir_l4 *l4)
{
	__u32 set_id = pod->set_id;
	struct weir_set_value *set = bpf_map_lookup_elem(&weir_sets, &set_id);
	__u8 bits;

	d->set_flags = 0;
	d->class_id = 0;
	if (!set || !(set->flags & WEIR_SET_F_VALID)) {
		/* The agent writes a set before any pod that uses it; a pod
		 * without one is an inconsistency: fail closed, say why. */
		d->verdict = WEIR_VERDICT_DROP;
		d->reason = WEIR_REASON_NO_POLICY_SET;
		d->bits = 0;
		*generation = 0;
		return;
	}
	*generation = set->generation;
	d->set_flags = set->flags;
	if (!(set->flags & (WEIR_SET_F_E_ISOLATED | WEIR_SET_F_A_ISOLATED))) {
		d->verdict = WEIR_VERDICT_ALLOW;
		d->reason = WEIR_REASON_NOT_ISOLATED;
		d->bits = 0;
		return;
	}
	d->class_id = weir_class_of(set, f);
	bits = weir_class_bits(d->class_id, f);
	/* Sets without fqdn keys pay this flag test and nothing else. */
	if ((set->flags & WEIR_SET_F_FQDN) && weir_would_refuse(set->flags, bits)) {
		__u64 who = pod->endpoint_id | (__u64)set_id << 32, dst[2];
		__u64 facts = weir_flow_facts(f);

		__builtin_memcpy(dst, f->dst, 16);
		if (skb && l4)
			bits |= weir_fqdn_bits_skb(skb, who, facts | (__u64)l4->tcp_flags << WEIR_FACT_TCP_FLAGS_SHIFT,
						   dst[0], dst[1]);
		else
			bits |= weir_fqdn_bits_sock(who, facts, dst[0], dst[1]);
	}
	weir_decide(set->flags, bits, d);
	weir_explain(d, f);
}

/*
 * A would-be default-deny drop of a packet that could be a reply to an
 * inbound flow, while weir_ct is full of live flows (the agent says so in
 * weir_node): its entry may have been evicted, so the drop is reported as
 * map-full, not as a policy decision. The verdict does not change.
 */
static __always_inline void weir_blame_full_ct(struct weir_decision *d, int maybe_reply)
{
	if (!maybe_reply)
		return;
	if (d->reason != WEIR_REASON_DEFAULT_DENY && d->reason != WEIR_REASON_AUDIT_DEFAULT_DENY)
		return;
	if (weir_node_flag(WEIR_NODE_F_CT_FULL))
		d->reason = WEIR_REASON_MAP_FULL;
}

#endif /* WEIR_POLICY_H */
