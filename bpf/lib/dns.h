/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_DNS_H
#define WEIR_DNS_H
/*
 * DNS wire-format parsing for FQDN learning (docs/architecture.md,
 * "DNS-aware egress"). Self-contained: it needs only a scratch state (a map
 * value, never the stack) and the UDP payload of a packet.
 *
 * The payload is copied once into st->buf (at most WEIR_DNS_BUF bytes; a
 * longer message is parsed up to that point and what lies beyond teaches
 * nothing) and parsed from there with masked indices, so every read is in
 * bounds whatever the packet says. Loops run under bpf_loop() (one
 * verification of the body, kernel 5.17+), each with a hard step limit:
 *
 *   - a name: at most WEIR_DNS_MAX_LABELS labels of 1..63 bytes, 255 bytes
 *     on the wire, WEIR_DNS_MAX_HOPS compression pointers, each pointing
 *     strictly before the start of the run of labels it ends (so pointer
 *     loops are impossible), only the 0xC0 pointer form (0x40 and 0x80
 *     label types are errors);
 *   - answers: at most WEIR_DNS_MAX_ANSWERS records are walked;
 *   - CNAME chains: at most WEIR_DNS_MAX_CHAIN links.
 *
 * Names are hashed label by label (ASCII lower-cased), keyed with a secret,
 * and combined right to left, so that the exact name and every proper
 * suffix (the wildcard candidates: one or more whole labels removed, never
 * zero) come out of one pass. The TypeScript mirror is src/policy/fqdn-hash.ts;
 * test/kernel/dns-parse.test.ts checks both against each other.
 *
 *   label(l)   = fmix64(FNV-1a-64 of [len(l), lower(l)...] seeded with secret)
 *   S[n]       = secret ^ WEIR_DNS_FOLD_K
 *   S[k]       = fmix64((S[k+1] ^ label(l[k])) * WEIR_DNS_FNV_PRIME),  k = n-1 .. 0
 *   name hash  = S[0];  the wildcard `*.` over labels k..n-1 is S[k], k >= 1
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "dns_types.h"

static __always_inline __u64 weir_dns_fmix64(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

/* ---- names ------------------------------------------------------------ */

/* What bpf_loop hands a callback: only the state (a map value). */
struct weir_dns_loop_ctx {
	struct weir_dns_state *st;
};

static long weir_dns_name_step(__u32 i, void *arg)
{
	struct weir_dns_state *st = ((struct weir_dns_loop_ctx *)arg)->st;
	struct weir_dns_cursor *c;
	__u32 p, len, n;
	__u64 h;

	if (!st)
		return 1;
	c = &st->cur;
	p = c->pos;

	if (p >= st->len || p >= WEIR_DNS_BUF) {
		c->done = -WEIR_DNS_E_NAME_TRUNC;
		return 1;
	}
	len = st->buf[p & WEIR_DNS_MASK];
	if (len == 0) {
		if (!c->end)
			c->end = p + 1;
		c->done = 1;
		return 1;
	}
	if ((len & 0xc0) == 0xc0) {
		__u32 tgt;

		if (c->no_ptr) {
			c->done = -WEIR_DNS_E_PTR_IN_QUESTION;
			return 1;
		}
		if (p + 1 >= st->len) {
			c->done = -WEIR_DNS_E_NAME_TRUNC;
			return 1;
		}
		tgt = ((len & 0x3f) << 8) | st->buf[(p + 1) & WEIR_DNS_MASK];
		/* Strictly before the run this pointer ends: runs only ever
		 * move backwards, so no pointer chain can loop. */
		if (tgt >= c->seg) {
			c->done = -WEIR_DNS_E_PTR_LOOP;
			return 1;
		}
		if (++c->hops > WEIR_DNS_MAX_HOPS) {
			c->done = -WEIR_DNS_E_PTR_HOPS;
			return 1;
		}
		if (!c->end)
			c->end = p + 2;
		c->pos = tgt;
		c->seg = tgt;
		return 0;
	}
	if (len & 0xc0) {
		c->done = -WEIR_DNS_E_LABEL_TYPE;
		return 1;
	}
	if (p + 1 + len > st->len) {
		c->done = -WEIR_DNS_E_NAME_TRUNC;
		return 1;
	}
	c->wire += len + 1;
	if (c->wire + 1 > WEIR_DNS_MAX_NAME) {
		c->done = -WEIR_DNS_E_NAME_LONG;
		return 1;
	}
	n = c->nlabels;
	if (n >= WEIR_DNS_MAX_LABELS) {
		c->done = -WEIR_DNS_E_NAME_LABELS;
		return 1;
	}
	h = st->secret ^ WEIR_DNS_FNV_OFFSET;
	h ^= len;
	h *= WEIR_DNS_FNV_PRIME;
	for (__u32 j = 0; j < 63; j++) {
		__u8 b;

		if (j >= len)
			break;
		b = st->buf[(p + 1 + j) & WEIR_DNS_MASK];
		if (b >= 'A' && b <= 'Z')
			b += 'a' - 'A';
		h ^= b;
		h *= WEIR_DNS_FNV_PRIME;
	}
	st->lh[n & (WEIR_DNS_MAX_LABELS - 1)] = weir_dns_fmix64(h);
	c->nlabels = n + 1;
	c->pos = p + 1 + len;
	return 0;
}

static long weir_dns_fold_step(__u32 i, void *arg)
{
	struct weir_dns_state *st = ((struct weir_dns_loop_ctx *)arg)->st;
	struct weir_dns_cursor *c;
	__u32 k;

	if (!st)
		return 1;
	c = &st->cur;
	if (i >= c->fold_n)
		return 1;
	k = (c->fold_n - 1 - i) & (WEIR_DNS_MAX_LABELS - 1);
	c->fold_s = weir_dns_fmix64((c->fold_s ^ st->lh[k]) * WEIR_DNS_FNV_PRIME);
	if (c->fold_save)
		st->suffix[k] = c->fold_s;
	return 0;
}

/*
 * Reads the name at *pos; on success returns 0, sets *pos to the first
 * byte after the name where it was found, *hash to its hash and, with
 * save, st->suffix[k] for every label. Returns a weir_dns_err otherwise.
 */
static __noinline int weir_dns_name(struct weir_dns_state *st, __u32 *pos, __u64 *hash, __u32 save, __u32 no_ptr)
{
	struct weir_dns_loop_ctx lc = { .st = st };
	struct weir_dns_cursor *c;
	__u32 n;

	if (!st || !pos || !hash)
		return WEIR_DNS_E_STEPS;
	c = &st->cur;
	c->pos = *pos;
	c->seg = *pos;
	c->end = 0;
	c->wire = 0;
	c->hops = 0;
	c->nlabels = 0;
	c->no_ptr = no_ptr;
	c->done = 0;
	bpf_loop(WEIR_DNS_MAX_LABELS + WEIR_DNS_MAX_HOPS + 1, weir_dns_name_step, &lc, 0);
	if (c->done < 0)
		return -c->done;
	if (c->done != 1)
		return WEIR_DNS_E_STEPS;
	n = c->nlabels;
	c->fold_n = n;
	c->fold_save = save;
	c->fold_s = st->secret ^ WEIR_DNS_FOLD_K;
	bpf_loop(WEIR_DNS_MAX_LABELS, weir_dns_fold_step, &lc, 0);
	if (save)
		st->nlabels = n;
	*pos = c->end;
	*hash = c->fold_s;
	return n ? WEIR_DNS_OK : WEIR_DNS_E_QUESTION;
}

/* ---- messages ------------------------------------------------------------ */

static __always_inline __u16 weir_dns_u16(const struct weir_dns_state *st, __u32 p)
{
	return (__u16)st->buf[p & WEIR_DNS_MASK] << 8 | st->buf[(p + 1) & WEIR_DNS_MASK];
}

static __always_inline __u32 weir_dns_u32(const struct weir_dns_state *st, __u32 p)
{
	return (__u32)weir_dns_u16(st, p) << 16 | weir_dns_u16(st, p + 2);
}

/*
 * Copies the UDP payload at off (plen bytes) into st->buf and parses the
 * header and the single question. response: expect QR=1 (and NOERROR, not
 * truncated), else QR=0 with no compression in the question. On success
 * st->qhash, st->suffix[], st->nlabels, st->qtype/qclass are set and *next
 * is the first byte after the question.
 */
static __always_inline int weir_dns_begin(struct __sk_buff *skb, __u32 off, __u32 plen,
					  struct weir_dns_state *st, int response, __u32 *next)
{
	__u32 pos = WEIR_DNS_HDR;
	__u16 flags;
	int err;

	st->err = 0;
	st->nanswers = 0;
	st->naddrs = 0;
	st->nchain = 0;
	st->nlabels = 0;
	st->ancount = 0;
	st->qname_end = 0;
	if (plen > WEIR_DNS_BUF)
		plen = WEIR_DNS_BUF;
	if (plen < WEIR_DNS_HDR)
		return WEIR_DNS_E_SHORT;
	if (bpf_skb_load_bytes(skb, off, st->buf, plen))
		return WEIR_DNS_E_SHORT;
	st->len = plen;
	st->id = weir_dns_u16(st, 0);
	flags = weir_dns_u16(st, 2);
	st->flags = flags;
	if (((flags >> 15) & 1) != (response ? 1 : 0) || ((flags >> 11) & 0xf) != 0)
		return WEIR_DNS_E_KIND;
	if (response && (flags & 0x000f))
		return WEIR_DNS_E_RCODE;
	if (response && (flags & 0x0200))
		return WEIR_DNS_E_TRUNCATED;
	if (weir_dns_u16(st, 4) != 1)
		return WEIR_DNS_E_QDCOUNT;
	st->ancount = weir_dns_u16(st, 6);
	err = weir_dns_name(st, &pos, &st->qhash, 1, !response);
	if (err)
		return err;
	st->qname_end = pos;
	if (pos + 4 > st->len)
		return WEIR_DNS_E_QUESTION;
	st->qtype = weir_dns_u16(st, pos);
	st->qclass = weir_dns_u16(st, pos + 2);
	if (st->qclass != WEIR_DNS_CLASS_IN)
		return WEIR_DNS_E_QUESTION;
	st->chain[0] = st->qhash;
	st->nchain = 1;
	*next = pos + 4;
	return WEIR_DNS_OK;
}

static __always_inline int weir_dns_in_chain(const struct weir_dns_state *st, __u64 h)
{
	for (__u32 i = 0; i < WEIR_DNS_CHAIN_SLOTS; i++) {
		if (i >= st->nchain)
			break;
		if (st->chain[i] == h)
			return (int)i + 1;
	}
	return 0;
}

static long weir_dns_answer_step(__u32 i, void *arg)
{
	struct weir_dns_state *st = ((struct weir_dns_loop_ctx *)arg)->st;
	struct weir_dns_cursor *a;
	__u32 pos, rdata, rdlen, ttl, link;
	__u16 type, class;
	__u64 owner = 0;
	int err;

	if (!st)
		return 1;
	a = &st->cur;
	if (i >= a->ans_count)
		return 1;
	pos = a->ans_pos;
	err = weir_dns_name(st, &pos, &owner, 0, 0);
	if (err) {
		a->ans_err = err;
		return 1;
	}
	if (pos + 10 > st->len) {
		a->ans_err = WEIR_DNS_E_RECORD;
		return 1;
	}
	type = weir_dns_u16(st, pos);
	class = weir_dns_u16(st, pos + 2);
	ttl = weir_dns_u32(st, pos + 4);
	if (ttl & 0x80000000u)	/* RFC 2181 8: treat as zero */
		ttl = 0;
	rdlen = weir_dns_u16(st, pos + 8);
	rdata = pos + 10;
	if (rdata + rdlen > st->len) {
		a->ans_err = WEIR_DNS_E_RECORD;
		return 1;
	}
	a->ans_pos = rdata + rdlen;
	link = weir_dns_in_chain(st, owner);
	if (class == WEIR_DNS_CLASS_IN && link) {
		if ((type == WEIR_DNS_TYPE_A && rdlen == 4) || (type == WEIR_DNS_TYPE_AAAA && rdlen == 16)) {
			__u32 n = st->naddrs;

			if (n < WEIR_DNS_MAX_ANSWERS) {
				struct weir_dns_addr *o = &st->out[n & (WEIR_DNS_MAX_ANSWERS - 1)];

				__builtin_memset(o, 0, sizeof(*o));
				o->family = type == WEIR_DNS_TYPE_A ? 2 : 10;
				o->link = link - 1;
				o->ttl = ttl;
				for (__u32 j = 0; j < 16; j++) {
					if (j >= rdlen)
						break;
					o->addr[j] = st->buf[(rdata + j) & WEIR_DNS_MASK];
				}
				st->naddrs = n + 1;
			}
		} else if (type == WEIR_DNS_TYPE_CNAME && st->nchain <= WEIR_DNS_MAX_CHAIN) {
			__u32 p = rdata;
			__u64 target = 0;

			err = weir_dns_name(st, &p, &target, 0, 0);
			if (err) {
				a->ans_err = err;
				return 1;
			}
			if (p > rdata + rdlen) {
				a->ans_err = WEIR_DNS_E_RDATA;
				return 1;
			}
			if (!weir_dns_in_chain(st, target)) {
				st->chain[st->nchain & (WEIR_DNS_CHAIN_SLOTS - 1)] = target;
				st->nchain++;
			}
		}
	}
	st->nanswers = i + 1;
	return 0;
}

/*
 * Walks the answer records that start at next (the first byte after the
 * question, from weir_dns_begin): fills st->out[] with the A and AAAA
 * records of the question name and of the CNAME targets reachable from it
 * within the answer. Returns the reason it stopped (also in st->err);
 * records completed before an error stay in st->out[].
 */
static __always_inline int weir_dns_walk_answers(struct weir_dns_state *st, __u32 next)
{
	struct weir_dns_loop_ctx lc = { .st = st };
	int err;

	st->cur.ans_pos = next;
	st->cur.ans_count = st->ancount < WEIR_DNS_MAX_ANSWERS ? st->ancount : WEIR_DNS_MAX_ANSWERS;
	st->cur.ans_err = 0;
	bpf_loop(WEIR_DNS_MAX_ANSWERS, weir_dns_answer_step, &lc, 0);
	err = st->cur.ans_err;
	st->err = err;
	return err;
}

/* Parses a response: header, question, then the answer records. */
static __always_inline int weir_dns_parse_response(struct __sk_buff *skb, __u32 off, __u32 plen,
						   struct weir_dns_state *st)
{
	__u32 next = 0;
	int err;

	err = weir_dns_begin(skb, off, plen, st, 1, &next);
	if (err) {
		st->err = err;
		return err;
	}
	return weir_dns_walk_answers(st, next);
}

/* Parses a query: header and question (no compression). */
static __always_inline int weir_dns_parse_query(struct __sk_buff *skb, __u32 off, __u32 plen,
						struct weir_dns_state *st)
{
	__u32 next = 0;
	int err = weir_dns_begin(skb, off, plen, st, 0, &next);

	st->err = err;
	return err;
}

/* ---- policy keys ---------------------------------------------------------- */

/* The key of weir_fqdn_keys is struct weir_dns_key (weir_abi.h). */

/*
 * The most specific key of set_id in map for the question parsed into st:
 * the exact name first, then `*.` over each proper suffix, longest first
 * (labels 1..n-1: one or more whole labels removed, never the apex's own
 * wildcard). Returns the value found (a u32) or NULL; *which says what
 * matched (0 = exact, k = the wildcard over labels k..n-1).
 */
static __always_inline __u32 *weir_dns_match(void *map, const struct weir_dns_state *st, __u32 set_id, __u32 *which)
{
	struct weir_dns_key k = {};
	__u32 n = st->nlabels, *v;

	k.set_id = set_id;
	k.kind = WEIR_DNS_KEY_EXACT;
	k.hash = st->suffix[0];
	if (!n)
		return NULL;
	v = bpf_map_lookup_elem(map, &k);
	if (v) {
		*which = 0;
		return v;
	}
	k.kind = WEIR_DNS_KEY_WILDCARD;
	for (__u32 i = 1; i < WEIR_DNS_MAX_LABELS; i++) {
		if (i >= n)
			break;
		k.hash = st->suffix[i & (WEIR_DNS_MAX_LABELS - 1)];
		v = bpf_map_lookup_elem(map, &k);
		if (v) {
			*which = i;
			return v;
		}
	}
	return NULL;
}

#endif /* WEIR_DNS_H */
