/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * weir ABI: every map key and value, ring record, verdict and reason code
 * shared by bpf/, native/ and src/. This is the only definition. The addon
 * exports the sizes, offsets and codes below (native/abi.cc) and
 * test/unit/abi.test.ts proves the TypeScript encoders match them.
 *
 * Rules:
 *  - fixed-width types only, explicit padding, _Static_assert on every size;
 *  - a map whose key or value layout changes gets a new name (`_v2`), so a
 *    pinned map of the old layout is migrated, never reused;
 *  - record types and codes are append-only: a number is never reused.
 */
#ifndef WEIR_ABI_H
#define WEIR_ABI_H

#include <linux/types.h>

#define WEIR_ABI_VERSION 1

/* ---- verdicts and reasons ------------------------------------------- */

/* What happened to a connection attempt or packet. Counters are indexed by
 * (endpoint, verdict), so keep WEIR_VERDICT__MAX small. */
enum weir_verdict {
	WEIR_VERDICT_NONE = 0,	/* not a governed pod: untouched, not counted */
	WEIR_VERDICT_ALLOW = 1,
	WEIR_VERDICT_DROP = 2,
	WEIR_VERDICT_AUDIT = 3,	/* passed, but Audit-mode policy would drop */
	WEIR_VERDICT_REPLY = 4,	/* passed as a reply to an inbound flow */
	WEIR_VERDICT__MAX = 5,
};

enum weir_reason {
	WEIR_REASON_NONE = 0,
	WEIR_REASON_NOT_ISOLATED = 1,	/* no Enforce policy selects the pod */
	WEIR_REASON_ALLOW_RULE = 2,	/* an allow rule matched */
	WEIR_REASON_DENY_RULE = 3,	/* a deny rule of an Enforce policy */
	WEIR_REASON_DEFAULT_DENY = 4,	/* isolated and no allow rule matched */
	WEIR_REASON_REPLY = 5,		/* conntrack: reply to an inbound flow */
	WEIR_REASON_AUDIT_DENY_RULE = 6,
	WEIR_REASON_AUDIT_DEFAULT_DENY = 7,
	WEIR_REASON_NO_POLICY_SET = 8,	/* pod's set id has no entry: fail closed */
	/* The transport header could not be read (truncated, or more IPv6
	 * extension headers than the parser walks): judged as if it went to
	 * any port of its protocol (any protocol when even that is unknown),
	 * so it passes only where every port would pass. */
	WEIR_REASON_L4_UNKNOWN = 9,
	/* The pod's policy never compiled; its set was written fail closed
	 * (isolated, nothing allowed) until a version compiles. */
	WEIR_REASON_NOT_COMPILED = 10,
	/* Would be a default-deny drop, but a map the decision depends on is
	 * full, so it may be a reply or own-address packet whose entry could
	 * not be kept (weir_ct evicting, weir_pod_ips missing the pod's
	 * address): not reported as a policy decision. */
	WEIR_REASON_MAP_FULL = 11,
	WEIR_REASON__MAX = 12,
};

/* Which program produced a verdict or event. */
enum weir_hook {
	WEIR_HOOK_CONNECT4 = 1,
	WEIR_HOOK_CONNECT6 = 2,
	WEIR_HOOK_SENDMSG4 = 3,
	WEIR_HOOK_SENDMSG6 = 4,
	WEIR_HOOK_EGRESS = 5,
	WEIR_HOOK_INGRESS = 6,
};

/* Rule-class bits found for a destination. E_* come from Enforce policies,
 * A_* from Audit policies. See bpf/lib/verdict.h for the precedence. */
#define WEIR_BIT_E_DENY  0x01
#define WEIR_BIT_E_ALLOW 0x02
#define WEIR_BIT_A_DENY  0x04
#define WEIR_BIT_A_ALLOW 0x08

/* ---- pods: cgroup id -> endpoint ------------------------------------- */

/*
 * weir_pods: HASH, key = cgroup id (u64) of a pod-level cgroup (the
 * kubelet's pod<uid> directory or kubepods-<qos>-pod<uid>.slice). The
 * datapath looks up the socket's ancestors at the two levels where pod
 * cgroups can sit (guaranteed: kubepods+1, burstable/besteffort:
 * kubepods+2), so every container below the pod, including ones started
 * later, resolves to the pod with no per-container entry.
 */
struct weir_pod_value {
	__u32 set_id;		/* index into weir_sets */
	__u32 endpoint_id;	/* dense id for counters, < max_endpoints */
	__u32 flags;		/* WEIR_POD_F_* */
	__u32 _pad;
};
_Static_assert(sizeof(struct weir_pod_value) == 16, "weir_pod_value");

#define WEIR_POD_F_TRACK_INGRESS 0x1	/* record inbound flows for replies */
#define WEIR_POD_F_ADDR_MISSING  0x2	/* an own address did not fit in weir_pod_ips */

/*
 * weir_pod_ips: HASH, key = one address of a pod on this node (its
 * status.podIPs), value = the endpoint id of that pod. Kubernetes never
 * isolates a pod from itself: the socket hooks pass a pod's traffic to its
 * own addresses like loopback (not judged, not counted). They look the
 * destination up only when the policy would not allow it, so allowed
 * traffic never pays for it, and only the pod whose endpoint id the entry
 * holds is exempt: traffic to another pod's address is judged as always.
 * An address claimed by two pods is written for neither (fail closed).
 * IPv4 uses the first 4 bytes of addr, the rest are zero.
 */
struct weir_pod_ip_key {
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 _pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct weir_pod_ip_key) == 20, "weir_pod_ip_key");

struct weir_pod_ip_value {
	__u32 endpoint_id;	/* the pod that owns the address */
};
_Static_assert(sizeof(struct weir_pod_ip_value) == 4, "weir_pod_ip_value");

/* ---- policy sets ----------------------------------------------------- */

/*
 * weir_sets: ARRAY indexed by set id. Pods selected by the same policies
 * share one set. A set is replaced by writing a new value whose roots point
 * at freshly written trie nodes: one 16-byte element update, so a packet
 * sees either the old policy or the new one, never a mix within a family.
 */
struct weir_set_value {
	__u32 root4;		/* trie node index for IPv4, 0 = no entries */
	__u32 root6;		/* trie node index for IPv6, 0 = no entries */
	__u32 flags;		/* WEIR_SET_F_* */
	__u32 generation;	/* policy generation that wrote this set */
};
_Static_assert(sizeof(struct weir_set_value) == 16, "weir_set_value");

#define WEIR_SET_F_VALID      0x1	/* set id in use */
#define WEIR_SET_F_E_ISOLATED 0x2	/* an Enforce policy selects the pods */
#define WEIR_SET_F_A_ISOLATED 0x4	/* an Audit policy selects the pods */
#define WEIR_SET_F_NOT_COMPILED 0x8	/* written fail closed: the policy never compiled */
/* The set has fqdn peers: its keys are in weir_fqdn_keys (written before
 * this flag), its pods' DNS queries are tracked and what their answers
 * teach is consulted on the would-drop path (see weir_fqdn_learned). */
#define WEIR_SET_F_FQDN       0x10

/* ---- destination trie (multibit, stride 8) ---------------------------- */

/*
 * weir_trie_nodes: ARRAY of 256-slot nodes, a multibit trie with stride 8
 * and leaf pushing: byte i of the destination address indexes the node at
 * depth i. A slot is
 *   0                      no rule covers this range (class 0),
 *   WEIR_SLOT_CHILD | n    descend to node n with the next byte,
 *   WEIR_SLOT_TAIL | t     resolve by tail t (weir_trie_tails, below),
 *   c (c > 0)              the range resolves to port class c.
 * IPv4 needs at most 4 lookups, IPv6 at most 16 (plus one tail), each an
 * inlined array access, whatever the number of prefixes: that is what lets
 * the datapath beat a single LPM-trie lookup at 100k prefixes. Identical
 * subtrees are shared between sets (hash-consed in src/datapath/trie.ts).
 * Node 0 is never used so that 0 can mean "no node".
 */
#define WEIR_TRIE_STRIDE 8
#define WEIR_TRIE_FANOUT 256
#define WEIR_SLOT_CHILD 0x80000000u
#define WEIR_SLOT_TAIL  0x40000000u
struct weir_trie_node {
	__u32 slot[WEIR_TRIE_FANOUT];
};
_Static_assert(sizeof(struct weir_trie_node) == 1024, "weir_trie_node");

/*
 * weir_trie_tails: ARRAY of path-compressed subtrees. A slot
 *   WEIR_SLOT_TAIL | t     resolves by tail t: the address masked by
 *                          t.mask equals t.addr ? t.hit : t.miss
 * stands for a subtree that holds exactly one prefix (t.addr/len) over one
 * background class (t.miss): the chain of nodes such a prefix would need
 * below the point where it parts from every other prefix (up to 15 nodes,
 * 15 KiB, for an IPv6 /128) becomes one 40-byte entry and one lookup. The
 * address and mask are whole (16 bytes; IPv4 uses the first 4, the rest of
 * the mask is 0), so a tail does not depend on its depth and is shared by
 * content like a node. hit and miss are port classes (never a slot flag).
 * Tail 0 is never used.
 */
struct weir_trie_tail {
	__u8 addr[16];		/* the prefix, masked, network byte order */
	__u8 mask[16];
	__u32 hit;		/* class of an address inside the prefix */
	__u32 miss;		/* class of any other address under the slot */
};
_Static_assert(sizeof(struct weir_trie_tail) == 40, "weir_trie_tail");

/* ---- port classes ------------------------------------------------------ */

/*
 * weir_port_classes: ARRAY indexed by class id. A class is what applies to
 * one range of destination addresses: any_bits for rules without ports (all
 * protocols, ICMP included), and up to WEIR_PORT_RANGES_MAX disjoint
 * (proto, lo..hi) ranges sorted by (proto, lo), searched by bisection.
 * Class 0 is the empty class.
 */
#define WEIR_PORT_RANGES_MAX 64
struct weir_port_range {
	__u8 proto;		/* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 bits;		/* WEIR_BIT_* */
	__u16 lo;		/* host byte order */
	__u16 hi;		/* inclusive */
	__u16 _pad;
};
_Static_assert(sizeof(struct weir_port_range) == 8, "weir_port_range");

struct weir_port_class {
	__u8 any_bits;		/* bits for every protocol and port */
	__u8 nranges;
	__u16 _pad0;
	__u32 _pad1;
	struct weir_port_range r[WEIR_PORT_RANGES_MAX];
};
_Static_assert(sizeof(struct weir_port_class) == 8 + 8 * WEIR_PORT_RANGES_MAX,
	       "weir_port_class");

/* ---- counters ---------------------------------------------------------- */

/*
 * weir_counters: PERCPU_ARRAY indexed by
 *   endpoint_id * WEIR_COUNTER_STRIDE + kind * WEIR_VERDICT__MAX + verdict
 * where kind is WEIR_COUNT_PACKETS (cgroup_skb egress: every judged packet
 * adds its segments and bytes) or WEIR_COUNT_SOCKETS (connect/sendmsg
 * verdicts: packets = operations, bytes = 0). Exact, never sampled.
 */
#define WEIR_COUNT_PACKETS 0
#define WEIR_COUNT_SOCKETS 1
#define WEIR_COUNTER_STRIDE (2 * WEIR_VERDICT__MAX)
struct weir_counter {
	__u64 packets;
	__u64 bytes;
};
_Static_assert(sizeof(struct weir_counter) == 16, "weir_counter");

/* weir_stats: PERCPU_ARRAY of u64 indexed by enum weir_stat. */
enum weir_stat {
	WEIR_STAT_EVENTS_SENT = 0,
	WEIR_STAT_EVENTS_LOST = 1,	/* ring buffer full: event not queued */
	WEIR_STAT_EVENTS_AGGREGATED = 2,/* folded into a later event's count */
	WEIR_STAT_PARSE_ERRORS = 3,	/* truncated or malformed headers */
	WEIR_STAT_CT_INSERT = 4,
	WEIR_STAT_CT_INSERT_FAILED = 5,
	WEIR_STAT_AGG_INSERT_FAILED = 6,
	WEIR_STAT_FRAGMENTS = 7,	/* non-first fragments judged by address */
	WEIR_STAT_L4_UNKNOWN = 8,	/* IP header read, transport header not */
	/* DNS learning (docs/architecture.md, "DNS-aware egress"). Queries
	 * from pods of sets with WEIR_SET_F_FQDN to a trusted resolver: */
	WEIR_STAT_DNS_QUERIES = 9,		/* tracked in weir_dns_queries */
	WEIR_STAT_DNS_QUERIES_NOT_ALLOWED = 10,	/* for a name no key of the set matches (intent record) */
	WEIR_STAT_DNS_QUERIES_INVALID = 11,	/* not a query weir parses (its answer teaches nothing) */
	/* Answers from a trusted resolver to such pods: */
	WEIR_STAT_DNS_ANSWERS = 12,		/* matched their query and parsed whole: learned from */
	WEIR_STAT_DNS_IGNORED_NO_QUERY = 13,	/* no unexpired query waits for it (late, second, forged) */
	WEIR_STAT_DNS_IGNORED_RCODE = 14,	/* not NOERROR, or truncated: nothing to learn */
	WEIR_STAT_DNS_IGNORED_INVALID = 15,	/* malformed, or not the question asked (records before a fault may be learned) */
	/* Addresses of those answers: */
	WEIR_STAT_FQDN_LEARNED = 16,		/* a key newly learned on an address (refreshes not counted) */
	WEIR_STAT_FQDN_REFUSED = 17,		/* not learned: 4 live keys on it, or weir_fqdn_learned full */
	WEIR_STAT__MAX = 18,
};

/* ---- conntrack for inbound flows --------------------------------------- */

/*
 * weir_ct: LRU_HASH. The ingress program records flows that reached a pod
 * from outside (created by a TCP SYN without ACK, a UDP datagram or an ICMP
 * echo request; refreshed by later inbound packets of the flow). The egress
 * side consults it only when the policy would not allow, so allowed traffic
 * never pays for it. The key names the pod by endpoint id rather than by
 * local address so that sendmsg on a wildcard-bound UDP socket (local
 * address not chosen yet) finds the flow. The agent deletes an endpoint's
 * entries before it reuses the id. Remote IPv4 uses the first 4 bytes.
 * For ICMP echo, local_port = remote_port = echo identifier.
 */
struct weir_ct_key {
	__u32 endpoint_id;
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 proto;
	__u16 local_port;	/* network byte order */
	__u16 remote_port;	/* network byte order */
	__u16 _pad;
	__u8 remote[16];
};
_Static_assert(sizeof(struct weir_ct_key) == 28, "weir_ct_key");

struct weir_ct_value {
	__u64 last_seen_ns;	/* bpf_ktime_get_ns() of the last inbound packet */
};
_Static_assert(sizeof(struct weir_ct_value) == 8, "weir_ct_value");

/* ---- event aggregation --------------------------------------------------- */

/*
 * weir_flow_agg: LRU_HASH. One violation event per flow per interval: the
 * first violation of a flow is sent at once, later ones within
 * event_interval_ns only raise `pending`, which the next event carries as
 * its count. Counters stay exact regardless.
 */
/*
 * DNS records (struct weir_dns_event) are aggregated in the same map under
 * family 0, which no flow has: proto = the record kind (WEIR_DNS_EV_*),
 * and dst = the question hash (8 bytes, intent) or the address (refused,
 * with verdict = its family); the other fields are 0.
 */
struct weir_agg_key {
	__u32 endpoint_id;
	__u8 family;
	__u8 proto;
	__u8 verdict;
	__u8 reason;
	__u16 dport;		/* network byte order */
	__u16 _pad;
	__u8 dst[16];
};
_Static_assert(sizeof(struct weir_agg_key) == 28, "weir_agg_key");

struct weir_agg_value {
	__u64 last_sent_ns;
	__u32 pending;		/* violations since last_sent_ns not yet reported */
	__u32 _pad;
};
_Static_assert(sizeof(struct weir_agg_value) == 16, "weir_agg_value");

/* ---- ring records --------------------------------------------------------- */

/* Every ring record starts with this type byte. Append only. Userspace
 * counts unknown types and skips them. */
enum weir_record_type {
	WEIR_REC_VERDICT = 1,	/* struct weir_event */
	WEIR_REC_DNS = 2,	/* struct weir_dns_event */
};

struct weir_event {
	__u8 type;		/* WEIR_REC_VERDICT */
	__u8 verdict;		/* enum weir_verdict */
	__u8 reason;		/* enum weir_reason */
	__u8 hook;		/* enum weir_hook */
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 proto;		/* IPPROTO_* */
	__u8 bits;		/* WEIR_BIT_* found for the destination */
	__u8 _pad0;
	__u32 endpoint_id;
	__u32 set_id;
	__u32 generation;	/* policy generation of the set */
	__u32 pid;		/* tgid, 0 when not known */
	__u32 count;		/* violations this event stands for (>= 1) */
	__u32 _pad1;
	__u64 cgroup_id;	/* the socket's own cgroup */
	__u64 ts_ns;		/* bpf_ktime_get_ns() */
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;		/* host byte order */
	__u16 dport;		/* host byte order */
	__u32 _pad2;
	char comm[16];
};
_Static_assert(sizeof(struct weir_event) == 104, "weir_event");

/*
 * WEIR_REC_DNS: what DNS learning did for a pod, for the agent's log,
 * status and audit trail (docs/architecture.md, "DNS-aware egress"):
 *   LEARNED  a key was newly learned on an address (not sent on refresh);
 *   REFUSED  an address of an answer was not learned (reason: 4 live keys
 *            on it, or weir_fqdn_learned full); once per pod and address
 *            per event interval, `count` says how many;
 *   INTENT   the pod asked a resolver for a name no rule of its set
 *            allows; once per pod and name per event interval.
 * The name is the question's, in wire form (length-prefixed labels; a
 * response's question may end in a compression pointer into the header).
 * Bytes of name[] past name_len are not part of it.
 */
#define WEIR_DNS_EV_LEARNED 1
#define WEIR_DNS_EV_REFUSED 2
#define WEIR_DNS_EV_INTENT  3

#define WEIR_DNS_REFUSED_SLOTS    1	/* the address has WEIR_FQDN_SLOTS live keys of the pod */
#define WEIR_DNS_REFUSED_MAP_FULL 2	/* weir_fqdn_learned is full */

#define WEIR_DNS_NAME_MAX 256
struct weir_dns_event {
	__u8 type;		/* WEIR_REC_DNS */
	__u8 kind;		/* WEIR_DNS_EV_* */
	__u8 family;		/* of addr: AF_INET or AF_INET6 */
	__u8 reason;		/* REFUSED: WEIR_DNS_REFUSED_*, else 0 */
	__u32 endpoint_id;
	__u32 set_id;		/* the pod's set when it happened */
	__u32 ttl;		/* LEARNED, REFUSED: the record's TTL in seconds */
	__u32 count;		/* occurrences this record stands for (>= 1) */
	__u32 pid;		/* INTENT: the sending process (tgid) when known, else 0 */
	__u64 ts_ns;		/* bpf_ktime_get_ns() */
	__u64 qhash;		/* keyed hash of the question name */
	__u64 expires_ns;	/* LEARNED: the slot's expiry (bpf_ktime_get_ns() clock) */
	__u8 addr[16];		/* LEARNED, REFUSED: the address; INTENT: the resolver */
	__u16 name_len;		/* bytes of name[] that are the name */
	__u16 qtype;		/* the question's type */
	__u32 _pad;
	__u8 name[WEIR_DNS_NAME_MAX];
};
_Static_assert(sizeof(struct weir_dns_event) == 72 + WEIR_DNS_NAME_MAX, "weir_dns_event");

/* ---- socket owner (sk_storage) ----------------------------------------- */

/* weir_sk_owner: SK_STORAGE, filled when a pod socket is created so that
 * per-packet events (revocation, ICMP) can name the process. */
struct weir_sk_owner {
	__u32 pid;
	__u32 _pad;
	char comm[16];
};
_Static_assert(sizeof(struct weir_sk_owner) == 24, "weir_sk_owner");

/*
 * weir_sk_flows: SK_STORAGE, on a UDP socket of a pod that sent with
 * sendto()/sendmsg() to an address (unconnected): the destinations it
 * opened flows to, remembered when sendmsg4/6 judge the send as new egress
 * (allow or audit; not a reply to an inbound flow). The ingress program
 * does not record an inbound flow (weir_ct) for a datagram that reaches the
 * socket from one of them (nor from the peer of a connected socket), so the
 * pod's own flow never becomes a "reply" path that outlives its allowance.
 * Only ever read to *not* create weir_ct entries: it lets nothing through.
 *
 * Per socket, so the socket that sent is the one the answer reaches (same
 * local port) and the storage dies with the socket: no endpoint, no local
 * port, no cleanup. Direct-mapped by a hash of (remote, port): a socket
 * with more live destinations than slots can lose one, whose answer is then
 * recorded as an inbound flow, as before this map existed. Costs the send
 * one socket-storage access, not a hash-map lookup.
 */
#define WEIR_SK_FLOW_SLOTS 16
struct weir_sk_flow {
	__u8 remote[16];	/* IPv4 uses the first 4 bytes */
	__u16 remote_port;	/* network byte order; 0 = empty slot */
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 _pad0;
	__u32 _pad1;
	__u64 last_sent_ns;	/* bpf_ktime_get_coarse_ns() of the last send (1 s resolution) */
};
_Static_assert(sizeof(struct weir_sk_flow) == 32, "weir_sk_flow");

struct weir_sk_flows {
	struct weir_sk_flow slot[WEIR_SK_FLOW_SLOTS];
};
_Static_assert(sizeof(struct weir_sk_flows) == 32 * WEIR_SK_FLOW_SLOTS, "weir_sk_flows");

/* ---- node state (written by the agent at run time) ------------------------- */

/*
 * weir_node: ARRAY with one element (key 0). Facts about the node that the
 * programs need at run time and that are not policy: today, whether
 * weir_ct is full of live flows (the agent walks it, deletes idle entries
 * and sets WEIR_NODE_F_CT_FULL at 90% of capacity, clears it below 80%).
 * While set, a default-deny drop of a packet that could be a reply is
 * reported with WEIR_REASON_MAP_FULL instead of a policy reason.
 */
struct weir_node_state {
	__u32 flags;		/* WEIR_NODE_F_* */
	__u32 _pad;
	__u64 updated_ns;	/* bpf_ktime_get_ns() clock of the agent's last write */
	/* Key of the DNS name hash (bpf/lib/dns.h, src/policy/fqdn-hash.ts):
	 * random, set once by the agent and kept with the pinned map. 0 = not
	 * set yet: no query is tracked, nothing is learned. */
	__u64 dns_secret;
};
_Static_assert(sizeof(struct weir_node_state) == 24, "weir_node_state");

#define WEIR_NODE_F_CT_FULL 0x1

/* ---- DNS-aware egress (FQDN peers) ------------------------------------------ */

/*
 * docs/architecture.md, "DNS-aware egress": the egress program tracks the
 * DNS queries of pods whose set has fqdn keys (WEIR_SET_F_FQDN) to trusted
 * resolvers; the ingress program learns the A and AAAA records of the
 * answers, before they reach the pod's socket, into weir_fqdn_learned; the
 * verdict (socket hooks and egress) consults what the pod learned only on
 * the would-drop path.
 *
 * weir_dns_resolvers: HASH, the trusted resolvers, written by the agent
 * (the cluster DNS Service's ClusterIPs on port 53 and its ready backends
 * on their target port, or a configured list). Queries to them are
 * tracked and only their answers teach. IPv4 uses the first 4 bytes.
 */
struct weir_dns_resolver_key {
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 _pad;
	__u16 port;		/* host byte order */
	__u8 addr[16];
};
_Static_assert(sizeof(struct weir_dns_resolver_key) == 20, "weir_dns_resolver_key");

struct weir_dns_resolver_value {
	__u32 flags;		/* reserved, 0 */
};
_Static_assert(sizeof(struct weir_dns_resolver_value) == 4, "weir_dns_resolver_value");

/*
 * weir_fqdn_keys: HASH, a set's fqdn keys (DesiredSet.fqdn): an exact name,
 * or a wildcard `*.s` keyed by the hash of s (one or more whole labels
 * before s, never s itself). The value is a port class id in
 * weir_classes, shared and refcounted with the trie's classes. A name is
 * looked up exact first, then as a wildcard over each proper suffix,
 * longest first (weir_dns_match). Written before the set's
 * WEIR_SET_F_FQDN flag; read on every would-drop decision of the set, so
 * removing a key revokes what it allowed at once.
 */
#define WEIR_DNS_KEY_EXACT	1
#define WEIR_DNS_KEY_WILDCARD	2
struct weir_dns_key {
	__u32 set_id;
	__u8 kind;		/* WEIR_DNS_KEY_* */
	__u8 _pad[3];
	__u64 hash;		/* exact: hash of the name; wildcard `*.s`: hash of s */
};
_Static_assert(sizeof(struct weir_dns_key) == 16, "weir_dns_key");

struct weir_fqdn_key_value {
	__u32 class_id;		/* index into weir_classes; 0 = the empty class */
};
_Static_assert(sizeof(struct weir_fqdn_key_value) == 4, "weir_fqdn_key_value");

/*
 * weir_dns_queries: LRU_HASH, a query a pod sent to a trusted resolver
 * for a name a key of its set matched, waiting for its answer: the answer
 * must come from that resolver address and port, to the pod's port, with
 * the query's id and the same question, within WEIR_DNS_QUERY_TIMEOUT_S.
 * The answer deletes the entry (one answer per query). An LRU: a pod
 * flooding queries evicts old ones (their answers then teach nothing),
 * never anything else.
 */
struct weir_dns_query_key {
	__u32 endpoint_id;
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 _pad;
	__u16 pod_port;		/* host byte order */
	__u16 dns_id;		/* host byte order */
	__u16 resolver_port;	/* host byte order */
	__u8 resolver[16];
};
_Static_assert(sizeof(struct weir_dns_query_key) == 28, "weir_dns_query_key");

struct weir_dns_query_value {
	struct weir_dns_key matched;	/* the key the question matched (set at query time) */
	__u64 qhash;		/* hash of the question name */
	__u64 expires_ns;	/* bpf_ktime_get_ns() clock */
};
_Static_assert(sizeof(struct weir_dns_query_value) == 32, "weir_dns_query_value");

/*
 * weir_fqdn_learned: HASH (never LRU: full means refuse, never evict),
 * what a pod learned about one address: up to WEIR_FQDN_SLOTS keys (kind
 * and hash of the key its question matched; the set id is the pod's
 * current one at each decision, so a pod that changes sets gets only what
 * its new policy allows of what it learned). A slot with kind 0 is empty.
 * Entries are per pod: an address learned by one pod opens nothing for
 * another. Expiry = answer time + clamp(TTL, WEIR_FQDN_TTL_MIN_S,
 * WEIR_FQDN_TTL_MAX_S) + WEIR_FQDN_GRACE_S. connect, sendmsg, a TCP SYN and
 * packets without a socket hook need an unexpired slot; other packets of
 * an allowed connection accept an expired slot still present. The agent
 * deletes slots expired and unused (last_use_ns is refreshed at most once
 * a second by the decisions it served). IPv4 uses the first 4 bytes.
 */
#define WEIR_FQDN_SLOTS 4
struct weir_fqdn_learned_key {
	__u32 endpoint_id;
	__u8 family;		/* AF_INET or AF_INET6 */
	__u8 _pad[3];
	__u8 addr[16];
};
_Static_assert(sizeof(struct weir_fqdn_learned_key) == 24, "weir_fqdn_learned_key");

struct weir_fqdn_slot {
	__u8 kind;		/* WEIR_DNS_KEY_*, 0 = empty; written last */
	__u8 _pad[7];
	__u64 hash;
	__u64 expires_ns;	/* bpf_ktime_get_ns() clock */
	__u64 last_use_ns;	/* last decision it allowed (1 s resolution), or when learned */
};
_Static_assert(sizeof(struct weir_fqdn_slot) == 32, "weir_fqdn_slot");

struct weir_fqdn_learned_value {
	struct weir_fqdn_slot slot[WEIR_FQDN_SLOTS];
};
_Static_assert(sizeof(struct weir_fqdn_learned_value) == 32 * WEIR_FQDN_SLOTS, "weir_fqdn_learned_value");

#define WEIR_DNS_QUERY_TIMEOUT_S 5	/* an answer must come within this */
#define WEIR_FQDN_TTL_MIN_S	5	/* a TTL-0 answer stays usable for the connection that asked */
#define WEIR_FQDN_TTL_MAX_S	3600
#define WEIR_FQDN_GRACE_S	5

/* weir_dns_scratch: PERCPU_ARRAY of the parser's state (struct
 * weir_dns_state, bpf/lib/dns_types.h: internal, never read by userspace),
 * one entry per program, since ingress can interrupt egress on a CPU. */
#define WEIR_DNS_SCRATCH_EGRESS  0
#define WEIR_DNS_SCRATCH_INGRESS 1
#define WEIR_DNS_SCRATCH_ENTRIES 2

/* ---- per-node settings ---------------------------------------------------- */

/*
 * The only .rodata variable of every weir program (`const volatile struct
 * weir_config weir_cfg`), written by the loader before load so one .bpf.o
 * serves every node; the verifier then treats the fields as constants.
 */
struct weir_config {
	__u32 pod_level_lo;	/* cgroup level of guaranteed pods (kubepods + 1) */
	__u32 pod_level_hi;	/* level of burstable/besteffort pods (kubepods + 2) */
	__u64 event_interval_ns;/* one event per flow per interval */
	__u64 ct_timeout_ns;	/* idle timeout of inbound-flow tracking */
	__u32 max_endpoints;	/* counter table entries / WEIR_COUNTER_STRIDE */
	__u32 flags;		/* WEIR_CFG_F_* */
};
_Static_assert(sizeof(struct weir_config) == 32, "weir_config");

#define WEIR_CFG_F_EVENTS_ALLOW 0x1	/* also emit events for allowed flows */

/* ---- default capacities (overridable before load) ------------------------- */
#define WEIR_DEFAULT_MAX_PODS       4096
#define WEIR_DEFAULT_MAX_ENDPOINTS  4096
#define WEIR_DEFAULT_MAX_SETS       4096
#define WEIR_DEFAULT_MAX_NODES      16384
#define WEIR_DEFAULT_MAX_TAILS      65536
#define WEIR_DEFAULT_MAX_CLASSES    16384
#define WEIR_DEFAULT_CT_ENTRIES     65536
#define WEIR_DEFAULT_MAX_POD_IPS    (2 * WEIR_DEFAULT_MAX_PODS)	/* dual stack */
#define WEIR_DEFAULT_AGG_ENTRIES    16384
#define WEIR_DEFAULT_RINGBUF_BYTES  (1u << 22)
#define WEIR_DEFAULT_DNS_RESOLVERS  256
#define WEIR_DEFAULT_FQDN_KEYS      16384
#define WEIR_DEFAULT_DNS_QUERIES    16384
#define WEIR_DEFAULT_FQDN_LEARNED   32768

#endif /* WEIR_ABI_H */
