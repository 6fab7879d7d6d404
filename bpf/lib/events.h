/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
#ifndef WEIR_EVENTS_H
#define WEIR_EVENTS_H
/*
 * Aggregation and ring buffer reservation of the records userspace
 * receives, shared by report.h (verdicts) and fqdn_learn.h (DNS records).
 * Apart from report.h so that the ingress program, which includes
 * fqdn_learn.h but no verdict logic, does not take in policy.h.
 */
#include "common.h"

/*
 * One record per key per interval (struct weir_agg_value), for every
 * aggregated record: violations (weir_report, report.h) and the DNS intent and
 * refused records (fqdn_learn.h). The first event of a key goes out at
 * once; later ones inside the interval only raise `pending` (counted in
 * events_aggregated), which the next record carries in its count. When the
 * ring buffer is full the event is counted in events_lost and its count is
 * put back in `pending`, so the next record still reports it.
 *
 * Returns the reserved record (size bytes, a constant) for the caller to
 * fill, with *count the events it reports, and submit; NULL when the event
 * was folded into pending or lost (both already accounted for). ak NULL:
 * not aggregated, only reserved (count 1, a loss still counted).
 */
static __always_inline void *weir_event_reserve(const struct weir_agg_key *ak, __u64 size, __u64 now,
						__u32 *count)
{
	struct weir_agg_value *av = NULL;
	void *e;

	*count = 1;
	if (ak) {
		av = bpf_map_lookup_elem(&weir_agg, ak);
		if (av) {
			if (now - av->last_sent_ns < weir_cfg.event_interval_ns) {
				__sync_fetch_and_add(&av->pending, 1);
				weir_stat_inc(WEIR_STAT_EVENTS_AGGREGATED);
				return NULL;
			}
			*count += __sync_lock_test_and_set(&av->pending, 0);
			av->last_sent_ns = now;
		} else {
			struct weir_agg_value nv = { .last_sent_ns = now };

			if (bpf_map_update_elem(&weir_agg, ak, &nv, BPF_NOEXIST))
				weir_stat_inc(WEIR_STAT_AGG_INSERT_FAILED);
			/* Keep a pointer so a lost first event is carried forward too. */
			av = bpf_map_lookup_elem(&weir_agg, ak);
		}
	}
	e = bpf_ringbuf_reserve(&weir_events, size, 0);
	if (!e) {
		weir_stat_inc(WEIR_STAT_EVENTS_LOST);
		if (av)
			__sync_fetch_and_add(&av->pending, *count);
	}
	return e;
}

#endif /* WEIR_EVENTS_H */
