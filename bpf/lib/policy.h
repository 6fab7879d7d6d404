/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_POLICY_H
#define WEIR_POLICY_H

#include "common.h"

/*
 * Destination lookup: a multibit trie (stride 8, leaf-pushed) walked one
 * address byte per level, then a port class searched by bisection. Layout
 * in weir_abi.h (struct weir_trie_node, struct weir_port_class). Cost is
 * bounded by the address length, not by the number of prefixes or rules:
 * at most 4 (IPv4) or 16 (IPv6) inlined array lookups plus one class.
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

static __always_inline __u32 weir_class_of(const struct weir_set_value *set, const struct weir_flow *f)
{
	if (f->family == AF_INET)
		return weir_trie_walk(set->root4, f->dst, 4);
	return weir_trie_walk(set->root6, f->dst, 16);
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

/* The whole policy decision for a flow from a known pod. */
static __always_inline void weir_judge(const struct weir_pod_value *pod, const struct weir_flow *f,
				       struct weir_decision *d, __u32 *generation)
{
	__u32 set_id = pod->set_id;
	struct weir_set_value *set = bpf_map_lookup_elem(&weir_sets, &set_id);
	__u32 class_id;

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
	if (!(set->flags & (WEIR_SET_F_E_ISOLATED | WEIR_SET_F_A_ISOLATED))) {
		d->verdict = WEIR_VERDICT_ALLOW;
		d->reason = WEIR_REASON_NOT_ISOLATED;
		d->bits = 0;
		return;
	}
	class_id = weir_class_of(set, f);
	weir_decide(set->flags, weir_class_bits(class_id, f), d);
	if (d->verdict != WEIR_VERDICT_DROP && d->verdict != WEIR_VERDICT_AUDIT)
		return;
	if (set->flags & WEIR_SET_F_NOT_COMPILED) {
		d->reason = WEIR_REASON_NOT_COMPILED;
	} else if (f->l4_unknown) {
		/* Unless a port-less deny rule decided it (it would whatever
		 * the ports), the unread header is why it does not pass. */
		struct weir_port_class *c = class_id ? bpf_map_lookup_elem(&weir_classes, &class_id) : 0;
		__u8 any = c ? c->any_bits : 0;

		if (!(any & (d->verdict == WEIR_VERDICT_DROP ? WEIR_BIT_E_DENY : WEIR_BIT_A_DENY)))
			d->reason = WEIR_REASON_L4_UNKNOWN;
	}
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
