/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_DNS_TYPES_H
#define WEIR_DNS_TYPES_H
/*
 * The DNS parser's limits, error codes and state (bpf/lib/dns.h). Apart
 * from the parser so that every program can define weir_dns_scratch (whose
 * value is struct weir_dns_state) without compiling the parser, which
 * needs bpf_loop() (kernel 5.17). The state is internal to the kernel:
 * only test/kernel/dns-parse.test.ts reads it, through its fixture.
 */
#include <linux/types.h>

#include "weir_abi.h"

#define WEIR_DNS_BUF		2048	/* power of two: indices are masked */
#define WEIR_DNS_MASK		(WEIR_DNS_BUF - 1)
#define WEIR_DNS_MAX_LABELS	128	/* power of two */
#define WEIR_DNS_MAX_HOPS	16
#define WEIR_DNS_MAX_NAME	255	/* wire length, final zero included */
#define WEIR_DNS_MAX_ANSWERS	64
#define WEIR_DNS_MAX_CHAIN	8	/* CNAME links followed */
#define WEIR_DNS_CHAIN_SLOTS	16	/* >= WEIR_DNS_MAX_CHAIN + 1, power of two */
#define WEIR_DNS_HDR		12

#define WEIR_DNS_FNV_OFFSET	0xcbf29ce484222325ull
#define WEIR_DNS_FNV_PRIME	0x00000100000001b3ull
#define WEIR_DNS_FOLD_K		0x9e3779b97f4a7c15ull

#define WEIR_DNS_TYPE_A		1
#define WEIR_DNS_TYPE_CNAME	5
#define WEIR_DNS_TYPE_AAAA	28
#define WEIR_DNS_CLASS_IN	1

/* Why parsing stopped (st->err). 0: the whole message was parsed. */
enum weir_dns_err {
	WEIR_DNS_OK = 0,
	WEIR_DNS_E_SHORT = 1,		/* shorter than a header */
	WEIR_DNS_E_KIND = 2,		/* not the expected QR (query/response) or opcode */
	WEIR_DNS_E_RCODE = 3,		/* a response with RCODE != NOERROR */
	WEIR_DNS_E_TRUNCATED = 4,	/* TC bit: the answer is incomplete */
	WEIR_DNS_E_QDCOUNT = 5,		/* not exactly one question */
	WEIR_DNS_E_NAME_TRUNC = 6,	/* a name runs past the message */
	WEIR_DNS_E_PTR_LOOP = 7,	/* a pointer that does not point backwards */
	WEIR_DNS_E_PTR_HOPS = 8,	/* too many pointers */
	WEIR_DNS_E_NAME_LONG = 9,	/* name longer than 255 bytes on the wire */
	WEIR_DNS_E_NAME_LABELS = 10,	/* more than WEIR_DNS_MAX_LABELS labels */
	WEIR_DNS_E_LABEL_TYPE = 11,	/* 0x40/0x80 label types */
	WEIR_DNS_E_QUESTION = 12,	/* question truncated, root name, class not IN */
	WEIR_DNS_E_RECORD = 13,		/* a record runs past the message */
	WEIR_DNS_E_RDATA = 14,		/* a CNAME whose name leaves its rdata */
	WEIR_DNS_E_PTR_IN_QUESTION = 15,/* compression in a query's question */
	WEIR_DNS_E_STEPS = 16,		/* step limit reached (cannot happen with valid limits) */
};

struct weir_dns_addr {
	__u8 family;		/* AF_INET (2) or AF_INET6 (10) */
	__u8 link;		/* CNAME links between the question and this record */
	__u16 _pad;
	__u32 ttl;		/* seconds, as in the record (MSB set counts as 0) */
	__u8 addr[16];		/* IPv4 uses the first 4 bytes */
};

struct weir_dns_cursor {
	/* name reader */
	__u32 pos;		/* next byte to read */
	__u32 seg;		/* start of the current run of labels */
	__u32 end;		/* first byte after the name where it was found (0: not yet) */
	__u32 wire;		/* wire length so far */
	__u32 hops;
	__u32 nlabels;
	__u32 no_ptr;		/* refuse compression (a query's question) */
	__s32 done;		/* 1 = complete, < 0 = -weir_dns_err */
	/* fold */
	__u32 fold_n;
	__u32 fold_save;
	__u64 fold_s;
	/* answer walk */
	__u32 ans_pos;
	__u32 ans_count;
	__s32 ans_err;
	__u32 _pad;
};

/*
 * Scratch and result of one parse. Lives in a map value (far beyond the
 * 512-byte stack). Layout read by test/kernel/dns-parse.test.ts.
 */
struct weir_dns_state {
	__u32 err;		/* enum weir_dns_err */
	__u32 len;		/* bytes of the message in buf */
	__u16 id;		/* DNS id, host byte order */
	__u16 flags;		/* DNS flags word, host byte order */
	__u16 qtype;
	__u16 qclass;
	__u32 ancount;		/* as in the header */
	__u32 nanswers;		/* records walked completely */
	__u32 nlabels;		/* labels of the question name */
	__u32 naddrs;		/* entries of out[] */
	__u32 nchain;		/* entries of chain[]: the question name, then CNAME targets */
	__u32 qname_end;	/* first byte after the question name */
	/* Loop state lives here, not on the stack: read back from a map value
	 * it is unknown to the verifier, so each bpf_loop body converges after
	 * one pass instead of being explored once per iteration. */
	struct weir_dns_cursor cur;
	__u64 secret;		/* hash key, set by the caller */
	__u64 qhash;		/* hash of the question name (suffix[0]) */
	__u64 chain[WEIR_DNS_CHAIN_SLOTS];
	__u64 suffix[WEIR_DNS_MAX_LABELS];	/* question: S[k] for k < nlabels */
	struct weir_dns_addr out[WEIR_DNS_MAX_ANSWERS];
	__u64 lh[WEIR_DNS_MAX_LABELS];		/* label hashes of the name being read */
	__u8 buf[WEIR_DNS_BUF];
	/* Taken (atomic exchange) by the program using this CPU's slot: a
	 * program preempted on a preemptible kernel (programs run with
	 * migration, not preemption, disabled) must not have its state
	 * rewritten by another run on the same CPU, which then skips DNS. */
	__u32 busy;
	__u32 _pad2;
	/* A new weir_fqdn_learned value being written (fqdn_learn.h): the
	 * learning callback's stack frame cannot hold it. */
	struct weir_fqdn_learned_value learn_nv;
};

_Static_assert(sizeof(struct weir_dns_cursor) == 64, "weir_dns_cursor");
_Static_assert(__builtin_offsetof(struct weir_dns_state, cur) == 40, "weir_dns_state.cur");
_Static_assert(__builtin_offsetof(struct weir_dns_state, secret) == 104, "weir_dns_state.secret");
_Static_assert(__builtin_offsetof(struct weir_dns_state, chain) == 120, "weir_dns_state.chain");
_Static_assert(__builtin_offsetof(struct weir_dns_state, suffix) == 248, "weir_dns_state.suffix");
_Static_assert(__builtin_offsetof(struct weir_dns_state, out) == 1272, "weir_dns_state.out");
_Static_assert(sizeof(struct weir_dns_addr) == 24, "weir_dns_addr");
_Static_assert(sizeof(struct weir_dns_state) == 5888 + sizeof(struct weir_fqdn_learned_value), "weir_dns_state");

#endif /* WEIR_DNS_TYPES_H */
