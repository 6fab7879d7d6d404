/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_REPORT_H
#define WEIR_REPORT_H

#include "common.h"
#include "events.h"
#include "policy.h"

static __always_inline void weir_count(__u32 endpoint_id, __u32 kind, __u8 verdict,
				       __u64 packets, __u64 bytes)
{
	__u32 idx;
	struct weir_counter *c;

	if (endpoint_id >= weir_cfg.max_endpoints || verdict >= WEIR_VERDICT__MAX)
		return;
	idx = endpoint_id * WEIR_COUNTER_STRIDE + kind * WEIR_VERDICT__MAX + verdict;
	c = bpf_map_lookup_elem(&weir_counters, &idx);
	if (c) {
		/* Per-CPU slot: no atomics needed. */
		c->packets += packets;
		c->bytes += bytes;
	}
}

struct weir_origin {
	__u32 pid;
	__u8 hook;
	__u64 cgroup_id;
	char comm[16];
};

/* A violation (or, with WEIR_CFG_F_EVENTS_ALLOW, an allowed flow), one record per flow per interval (events.h). */
static __always_inline void weir_report(const struct weir_pod_value *pod, __u32 generation,
					const struct weir_flow *f, const struct weir_decision *d,
					const struct weir_origin *o)
{
	struct weir_agg_key ak;
	struct weir_event *e;
	__u64 now = bpf_ktime_get_ns();
	__u32 count;

	__builtin_memset(&ak, 0, sizeof(ak));
	ak.endpoint_id = pod->endpoint_id;
	ak.family = f->family;
	ak.proto = f->proto;
	ak.verdict = d->verdict;
	ak.reason = d->reason;
	ak.dport = bpf_htons(f->dport);
	__builtin_memcpy(ak.dst, f->dst, 16);

	e = weir_event_reserve(&ak, sizeof(*e), now, &count);
	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	e->type = WEIR_REC_VERDICT;
	e->verdict = d->verdict;
	e->reason = d->reason;
	e->hook = o->hook;
	e->family = f->family;
	e->proto = f->proto;
	e->bits = d->bits;
	e->endpoint_id = pod->endpoint_id;
	e->set_id = pod->set_id;
	e->generation = generation;
	e->pid = o->pid;
	e->count = count;
	e->cgroup_id = o->cgroup_id;
	e->ts_ns = now;
	__builtin_memcpy(e->src, f->src, 16);
	__builtin_memcpy(e->dst, f->dst, 16);
	e->sport = f->sport;
	e->dport = f->dport;
	__builtin_memcpy(e->comm, o->comm, 16);
	bpf_ringbuf_submit(e, 0);
	weir_stat_inc(WEIR_STAT_EVENTS_SENT);
}

static __always_inline int weir_reportable(__u8 verdict)
{
	return verdict == WEIR_VERDICT_DROP || verdict == WEIR_VERDICT_AUDIT ||
	       ((weir_cfg.flags & WEIR_CFG_F_EVENTS_ALLOW) && verdict == WEIR_VERDICT_ALLOW);
}

#endif /* WEIR_REPORT_H */
