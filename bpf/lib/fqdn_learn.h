/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_FQDN_LEARN_H
#define WEIR_FQDN_LEARN_H
/*
 * DNS learning (docs/architecture.md, "DNS-aware egress"): the egress
 * program tracks a pod's queries to trusted resolvers, the ingress program
 * learns the addresses of their answers before the answers reach the pod's
 * socket. Only in the *-fqdn.bpf.o variants: the parser (dns.h) needs
 * bpf_loop() (kernel 5.17), weir's minimum is 5.8, and a program that
 * merely mentions the helper is refused by older verifiers, used or not.
 * The verdict side (policy.h) is in every variant.
 *
 * What an answer must be to teach (every check fails closed: the answer is
 * delivered untouched and teaches nothing, a stat says why):
 *   1. not over loopback: the program ignores ifindex 1, and the source is
 *      not 127/8 or ::1 (a pod forging answers to itself gains nothing);
 *   2. from a trusted resolver: source address and port in
 *      weir_dns_resolvers;
 *   3. awaited: weir_dns_queries has {pod, family, destination port, DNS
 *      id, source address and port}, unexpired; the entry is deleted (one
 *      answer per query: of two racing answers only the one whose delete
 *      succeeds goes on);
 *   4. a NOERROR, untruncated response with one question, class IN, type
 *      A or AAAA, whose name hashes to the query's question hash;
 *   5. parsed within bounds (dns.h): records after a malformed one teach
 *      nothing; those before it were complete and checked.
 * The key learned is the one the *question* matched, whatever CNAME chain
 * leads to the address: policy governs the name the pod asked for.
 */
#include "common.h"
#include "dns.h"
#include "events.h"

#define WEIR_NS_PER_S 1000000000ull

/* The entry points below: egress uses the query one, ingress the answer one. */
#define WEIR_DNS_ENTRY static __noinline __attribute__((unused))

static __always_inline void weir_barrier(void)
{
	asm volatile("" ::: "memory");
}

/* The key of the name hash, or 0 while the agent has not set it. */
static __always_inline __u64 weir_dns_secret(void)
{
	__u32 zero = 0;
	struct weir_node_state *n = bpf_map_lookup_elem(&weir_node, &zero);

	return n ? n->dns_secret : 0;
}

/*
 * This CPU's parser state for one program, taken exclusively (see
 * weir_dns_state.busy); NULL when another run holds it: that message is
 * then not looked at (a query not tracked teaches nothing).
 */
static __always_inline struct weir_dns_state *weir_dns_take(__u32 slot)
{
	struct weir_dns_state *st = bpf_map_lookup_elem(&weir_dns_scratch, &slot);

	if (!st)
		return NULL;
	if (__sync_lock_test_and_set(&st->busy, 1))
		return NULL;
	return st;
}

static __always_inline void weir_dns_release(struct weir_dns_state *st)
{
	weir_barrier();
	st->busy = 0;
}

/*
 * Offset and length of the UDP payload. IPv4 options are skipped; IPv6
 * extension headers are not walked (DNS does not use them): such a
 * message is not looked at.
 */
static __always_inline int weir_udp_payload(struct __sk_buff *skb, const struct weir_flow *f, __u32 *off, __u32 *plen)
{
	__u8 udp[8];
	__u32 l4;
	__u16 ulen;

	if (f->family == AF_INET) {
		__u8 vhl;

		if (bpf_skb_load_bytes(skb, 0, &vhl, 1))
			return -1;
		l4 = (vhl & 0xf) * 4;
	} else {
		__u8 nh;

		if (bpf_skb_load_bytes(skb, 6, &nh, 1) || nh != IPPROTO_UDP)
			return -1;
		l4 = 40;
	}
	if (bpf_skb_load_bytes(skb, l4, udp, sizeof(udp)))
		return -1;
	ulen = (__u16)udp[4] << 8 | udp[5];
	if (ulen < 8 + WEIR_DNS_HDR)
		return -1;
	*off = l4 + 8;
	*plen = ulen - 8;
	return 0;
}

static __always_inline int weir_is_loopback_src(const struct weir_flow *f)
{
	if (f->family == AF_INET)
		return f->src[0] == 127;
	for (int i = 0; i < 15; i++)
		if (f->src[i])
			return 0;
	return f->src[15] == 1;
}

/*
 * A WEIR_REC_DNS record (weir_abi.h). REFUSED and INTENT are aggregated
 * like violations (weir_event_reserve, events.h; weir_agg, family 0): one
 * record per pod and address (refused) or name (intent) per event interval,
 * the next one carrying the count of those folded in. LEARNED records are
 * not aggregated.
 */
static __always_inline void weir_dns_record(__u32 endpoint_id, __u32 set_id, const struct weir_dns_state *st,
					    __u8 kind, __u8 reason, __u8 family, const __u8 *addr,
					    __u32 ttl, __u64 expires_ns, __u32 pid)
{
	struct weir_agg_key ak, *agg = NULL;
	struct weir_dns_event *e;
	__u64 now = bpf_ktime_get_ns();
	__u32 count, n;

	if (kind != WEIR_DNS_EV_LEARNED) {
		__builtin_memset(&ak, 0, sizeof(ak));
		ak.endpoint_id = endpoint_id;
		ak.proto = kind;
		if (kind == WEIR_DNS_EV_INTENT) {
			__builtin_memcpy(ak.dst, &st->qhash, 8);
		} else {
			ak.verdict = family;
			__builtin_memcpy(ak.dst, addr, 16);
		}
		agg = &ak;
	}
	e = weir_event_reserve(agg, sizeof(*e), now, &count);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e) - WEIR_DNS_NAME_MAX);
	e->type = WEIR_REC_DNS;
	e->kind = kind;
	e->family = family;
	e->reason = reason;
	e->endpoint_id = endpoint_id;
	e->set_id = set_id;
	e->ttl = ttl;
	e->count = count;
	e->pid = pid;
	e->ts_ns = now;
	e->qhash = st->qhash;
	e->expires_ns = expires_ns;
	__builtin_memcpy(e->addr, addr, 16);
	e->qtype = st->qtype;
	/* The question name as it came, in wire form: a fixed copy (bytes
	 * past name_len are whatever followed it in the message). */
	__builtin_memcpy(e->name, &st->buf[WEIR_DNS_HDR], WEIR_DNS_NAME_MAX);
	n = st->qname_end > WEIR_DNS_HDR ? st->qname_end - WEIR_DNS_HDR : 0;
	e->name_len = n < WEIR_DNS_MAX_NAME ? n : WEIR_DNS_MAX_NAME;
	bpf_ringbuf_submit(e, 0);
}

/* ---- query (cgroup_skb/egress) ---------------------------------------------- */

/* The sending process of a packet (weir_sk_owner), 0 when not known. */
static __always_inline __u32 weir_skb_pid(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	struct weir_sk_owner *ow;

	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	ow = bpf_sk_storage_get(&weir_sk_owner, sk, 0, 0);
	return ow ? ow->pid : 0;
}

/*
 * A UDP datagram the pod sends (not dropped) from a set with fqdn keys:
 * if it goes to a trusted resolver, parse it as a query and remember it
 * when a key of the set matches its name, so that its answer may teach;
 * else report the intent (a name no rule allows). The verdict on the
 * query itself is not touched (the compiler's implied resolver rule is
 * what lets it pass).
 */
WEIR_DNS_ENTRY void weir_dns_track_query(struct __sk_buff *skb, const struct weir_pod_value *pod,
					    const struct weir_flow *f)
{
	struct weir_dns_resolver_key rk;
	struct weir_dns_query_key qk;
	struct weir_dns_query_value qv;
	struct weir_dns_state *st;
	__u32 off = 0, plen = 0, which = 0, *v;
	__u64 secret;

	if (!pod || !f)
		return;
	__builtin_memset(&rk, 0, sizeof(rk));
	rk.family = f->family;
	rk.port = f->dport;
	__builtin_memcpy(rk.addr, f->dst, 16);
	if (!bpf_map_lookup_elem(&weir_dns_resolvers, &rk))
		return;
	secret = weir_dns_secret();
	if (!secret)
		return;
	if (weir_udp_payload(skb, f, &off, &plen)) {
		weir_stat_inc(WEIR_STAT_DNS_QUERIES_INVALID);
		return;
	}
	st = weir_dns_take(WEIR_DNS_SCRATCH_EGRESS);
	if (!st)
		return;
	st->secret = secret;
	if (weir_dns_parse_query(skb, off, plen, st)) {
		weir_stat_inc(WEIR_STAT_DNS_QUERIES_INVALID);
		goto out;
	}
	v = weir_dns_match(&weir_fqdn_keys, st, pod->set_id, &which);
	if (!v) {
		weir_stat_inc(WEIR_STAT_DNS_QUERIES_NOT_ALLOWED);
		weir_dns_record(pod->endpoint_id, pod->set_id, st, WEIR_DNS_EV_INTENT, 0, f->family, f->dst, 0, 0,
				weir_skb_pid(skb));
		goto out;
	}
	/* Only A and AAAA answers teach: other questions are not awaited. */
	if (st->qtype != WEIR_DNS_TYPE_A && st->qtype != WEIR_DNS_TYPE_AAAA)
		goto out;
	__builtin_memset(&qk, 0, sizeof(qk));
	qk.endpoint_id = pod->endpoint_id;
	qk.family = f->family;
	qk.pod_port = f->sport;
	qk.dns_id = st->id;
	qk.resolver_port = f->dport;
	__builtin_memcpy(qk.resolver, f->dst, 16);
	__builtin_memset(&qv, 0, sizeof(qv));
	qv.matched.set_id = pod->set_id;
	qv.matched.kind = which ? WEIR_DNS_KEY_WILDCARD : WEIR_DNS_KEY_EXACT;
	qv.matched.hash = st->suffix[which & (WEIR_DNS_MAX_LABELS - 1)];
	qv.qhash = st->qhash;
	qv.expires_ns = bpf_ktime_get_ns() + WEIR_DNS_QUERY_TIMEOUT_S * WEIR_NS_PER_S;
	/* A retransmission (same port, id, resolver) refreshes the entry. */
	if (!bpf_map_update_elem(&weir_dns_queries, &qk, &qv, BPF_ANY))
		weir_stat_inc(WEIR_STAT_DNS_QUERIES);
out:
	weir_dns_release(st);
}

/* ---- answer (cgroup_skb/ingress) -------------------------------------------- */

#define WEIR_SLOT_REFRESHED 0
#define WEIR_SLOT_NEW       1
#define WEIR_SLOT_FULL      2

/*
 * Puts key (kind, hash) on an address's slots: the slot already holding
 * it is refreshed (its expiry never moves back), else the first empty
 * slot is taken, else the expired slot least recently used. A slot being
 * rewritten has kind 0 until it is complete (policy.h reads kind first).
 */
static __always_inline int weir_fqdn_slot_put(struct weir_fqdn_learned_value *v, __u8 kind, __u64 hash,
					      __u64 expires_ns, __u64 now)
{
	__u64 oldest = ~0ull;
	int pick = -1;

#pragma clang loop unroll(disable)
	for (int i = 0; i < WEIR_FQDN_SLOTS; i++) {
		struct weir_fqdn_slot *s = &v->slot[i];

		if (s->kind == kind && s->hash == hash) {
			if (s->expires_ns < expires_ns)
				s->expires_ns = expires_ns;
			return WEIR_SLOT_REFRESHED;
		}
		if (!s->kind) {
			if (oldest) {
				oldest = 0;
				pick = i;
			}
		} else if (s->expires_ns <= now && s->last_use_ns < oldest) {
			oldest = s->last_use_ns;
			pick = i;
		}
	}
	if (pick < 0)
		return WEIR_SLOT_FULL;
	{
		struct weir_fqdn_slot *s = &v->slot[pick & (WEIR_FQDN_SLOTS - 1)];

		s->kind = 0;
		weir_barrier();
		s->hash = hash;
		s->expires_ns = expires_ns;
		s->last_use_ns = now;
		weir_barrier();
		s->kind = kind;
	}
	return WEIR_SLOT_NEW;
}

/* What the learning loop needs besides the parser state (on the stack of
 * weir_dns_learn_answer, read by the bpf_loop callback). */
struct weir_learn_ctx {
	struct weir_dns_state *st;
	__u64 hash;		/* the key the question matched */
	__u64 now;
	__u32 endpoint_id;
	__u32 set_id;
	__u8 kind;
};

/* One address of the answer (st->out[i]) into weir_fqdn_learned. */
static long weir_dns_learn_step(__u32 i, void *arg)
{
	struct weir_learn_ctx *lc = arg;
	struct weir_dns_state *st = lc->st;
	struct weir_fqdn_learned_value *v;
	struct weir_fqdn_learned_key k;
	struct weir_dns_addr *a;
	__u64 expires;
	__u32 ttl;
	__u8 reason = WEIR_DNS_REFUSED_SLOTS;
	int r;

	if (!st)
		return 1;
	if (i >= st->naddrs || i >= WEIR_DNS_MAX_ANSWERS)
		return 1;
	a = &st->out[i & (WEIR_DNS_MAX_ANSWERS - 1)];
	ttl = a->ttl;
	if (ttl < WEIR_FQDN_TTL_MIN_S)
		ttl = WEIR_FQDN_TTL_MIN_S;
	if (ttl > WEIR_FQDN_TTL_MAX_S)
		ttl = WEIR_FQDN_TTL_MAX_S;
	expires = lc->now + (ttl + WEIR_FQDN_GRACE_S) * WEIR_NS_PER_S;

	__builtin_memset(&k, 0, sizeof(k));
	k.endpoint_id = lc->endpoint_id;
	k.family = a->family;
	__builtin_memcpy(k.addr, a->addr, 16);
	v = bpf_map_lookup_elem(&weir_fqdn_learned, &k);
	if (!v) {
		struct weir_fqdn_learned_value *nv = &st->learn_nv;
		long err;

		__builtin_memset(nv, 0, sizeof(*nv));
		nv->slot[0].kind = lc->kind;
		nv->slot[0].hash = lc->hash;
		nv->slot[0].expires_ns = expires;
		nv->slot[0].last_use_ns = lc->now;
		/* Never evicts: a full map refuses (BPF_NOEXIST also keeps a
		 * racing learner's entry, which is then updated below). */
		err = bpf_map_update_elem(&weir_fqdn_learned, &k, nv, BPF_NOEXIST);
		if (!err) {
			r = WEIR_SLOT_NEW;
			goto done;
		}
		v = bpf_map_lookup_elem(&weir_fqdn_learned, &k);
		if (!v) {
			r = WEIR_SLOT_FULL;
			reason = WEIR_DNS_REFUSED_MAP_FULL;
			goto done;
		}
	}
	r = weir_fqdn_slot_put(v, lc->kind, lc->hash, expires, lc->now);
done:
	if (r == WEIR_SLOT_NEW) {
		weir_stat_inc(WEIR_STAT_FQDN_LEARNED);
		weir_dns_record(lc->endpoint_id, lc->set_id, st, WEIR_DNS_EV_LEARNED, 0, a->family, a->addr, a->ttl,
				expires, 0);
	} else if (r == WEIR_SLOT_FULL) {
		/* Nothing falls open: the address stays unknown to the pod. */
		weir_stat_inc(WEIR_STAT_FQDN_REFUSED);
		weir_dns_record(lc->endpoint_id, lc->set_id, st, WEIR_DNS_EV_REFUSED, reason, a->family, a->addr,
				a->ttl, 0, 0);
	}
	return 0;
}

/*
 * A UDP datagram reaching a pod: if it is the awaited answer to one of the
 * pod's tracked queries, learn its addresses (see the top of this file).
 * Never changes the packet's fate.
 */
WEIR_DNS_ENTRY void weir_dns_learn_answer(struct __sk_buff *skb, const struct weir_pod_value *pod,
					     const struct weir_flow *f)
{
	struct weir_dns_resolver_key rk;
	struct weir_dns_query_key qk;
	struct weir_dns_query_value q, *qv;
	struct weir_learn_ctx lc;
	struct weir_set_value *set;
	struct weir_dns_state *st;
	__u32 off = 0, plen = 0, next = 0, set_id;
	__u16 id_be;
	__u64 secret;
	int err;

	if (!pod || !f)
		return;
	set_id = pod->set_id;
	set = bpf_map_lookup_elem(&weir_sets, &set_id);
	if (!set || !(set->flags & WEIR_SET_F_FQDN))
		return;
	if (weir_is_loopback_src(f))
		return;
	__builtin_memset(&rk, 0, sizeof(rk));
	rk.family = f->family;
	rk.port = f->sport;
	__builtin_memcpy(rk.addr, f->src, 16);
	if (!bpf_map_lookup_elem(&weir_dns_resolvers, &rk))
		return;
	secret = weir_dns_secret();
	if (!secret)
		return;
	if (weir_udp_payload(skb, f, &off, &plen) || bpf_skb_load_bytes(skb, off, &id_be, sizeof(id_be))) {
		weir_stat_inc(WEIR_STAT_DNS_IGNORED_INVALID);
		return;
	}
	__builtin_memset(&qk, 0, sizeof(qk));
	qk.endpoint_id = pod->endpoint_id;
	qk.family = f->family;
	qk.pod_port = f->dport;
	qk.dns_id = bpf_ntohs(id_be);
	qk.resolver_port = f->sport;
	__builtin_memcpy(qk.resolver, f->src, 16);
	qv = bpf_map_lookup_elem(&weir_dns_queries, &qk);
	if (!qv) {
		weir_stat_inc(WEIR_STAT_DNS_IGNORED_NO_QUERY);
		return;
	}
	st = weir_dns_take(WEIR_DNS_SCRATCH_INGRESS);
	if (!st)
		return;
	__builtin_memcpy(&q, qv, sizeof(q));
	/* One answer per query: whoever deletes the entry goes on. */
	if (bpf_map_delete_elem(&weir_dns_queries, &qk) || bpf_ktime_get_ns() > q.expires_ns) {
		weir_stat_inc(WEIR_STAT_DNS_IGNORED_NO_QUERY);
		goto out;
	}
	st->secret = secret;
	err = weir_dns_begin(skb, off, plen, st, 1, &next);
	if (err) {
		weir_stat_inc(err == WEIR_DNS_E_RCODE || err == WEIR_DNS_E_TRUNCATED ? WEIR_STAT_DNS_IGNORED_RCODE
										  : WEIR_STAT_DNS_IGNORED_INVALID);
		goto out;
	}
	if (st->qhash != q.qhash || (st->qtype != WEIR_DNS_TYPE_A && st->qtype != WEIR_DNS_TYPE_AAAA)) {
		weir_stat_inc(WEIR_STAT_DNS_IGNORED_INVALID);
		goto out;
	}
	err = weir_dns_walk_answers(st, next);
	lc.st = st;
	lc.hash = q.matched.hash;
	lc.now = bpf_ktime_get_ns();
	lc.endpoint_id = pod->endpoint_id;
	lc.set_id = set_id;
	lc.kind = q.matched.kind;
	bpf_loop(WEIR_DNS_MAX_ANSWERS, weir_dns_learn_step, &lc, 0);
	weir_stat_inc(err ? WEIR_STAT_DNS_IGNORED_INVALID : WEIR_STAT_DNS_ANSWERS);
out:
	weir_dns_release(st);
}

#endif /* WEIR_FQDN_LEARN_H */
