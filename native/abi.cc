// The ABI table the TypeScript side builds its encoders from, written out
// by hand from bpf/include/weir_abi.h but computed by the compiler
// (sizeof/offsetof), so a value can never be wrong, only missing.
// test/unit/abi.test.ts parses the header and fails when any struct, field,
// enum value or numeric #define in it is missing here: when the header
// changes, add the new names below.
#include "abi.h"

#include <cstddef>
#include <cstdint>

// The header is C11; in C++ the same assertion is spelled static_assert.
#define _Static_assert static_assert
#include "weir_abi.h"
#undef _Static_assert

namespace weir {

namespace {

class AbiTable {
 public:
  explicit AbiTable(Napi::Env env)
      : env_(env),
        sizes_(Napi::Object::New(env)),
        offsets_(Napi::Object::New(env)),
        field_sizes_(Napi::Object::New(env)),
        constants_(Napi::Object::New(env)) {}

  void Size(const char* name, size_t size) { sizes_.Set(name, Napi::Number::New(env_, static_cast<double>(size))); }
  void Field(const char* name, size_t offset, size_t size) {
    offsets_.Set(name, Napi::Number::New(env_, static_cast<double>(offset)));
    field_sizes_.Set(name, Napi::Number::New(env_, static_cast<double>(size)));
  }
  void Constant(const char* name, int64_t value) {
    constants_.Set(name, Napi::Number::New(env_, static_cast<double>(value)));
  }

  Napi::Object Finish() {
    Napi::Object out = Napi::Object::New(env_);
    out.Set("version", Napi::Number::New(env_, WEIR_ABI_VERSION));
    out.Set("sizes", sizes_);
    out.Set("offsets", offsets_);
    out.Set("fieldSizes", field_sizes_);
    out.Set("constants", constants_);
    return out;
  }

 private:
  Napi::Env env_;
  Napi::Object sizes_, offsets_, field_sizes_, constants_;
};

}  // namespace

#define STRUCT(T) t.Size(#T, sizeof(struct T))
#define FIELD(T, f) t.Field(#T "." #f, offsetof(struct T, f), sizeof(((struct T*)nullptr)->f))
#define CONST(N) t.Constant(#N, static_cast<int64_t>(N))

Napi::Object AbiInfo(Napi::Env env) {
  AbiTable t(env);

  CONST(WEIR_ABI_VERSION);

  // enum weir_verdict
  CONST(WEIR_VERDICT_NONE);
  CONST(WEIR_VERDICT_ALLOW);
  CONST(WEIR_VERDICT_DROP);
  CONST(WEIR_VERDICT_AUDIT);
  CONST(WEIR_VERDICT_REPLY);
  CONST(WEIR_VERDICT__MAX);

  // enum weir_reason
  CONST(WEIR_REASON_NONE);
  CONST(WEIR_REASON_NOT_ISOLATED);
  CONST(WEIR_REASON_ALLOW_RULE);
  CONST(WEIR_REASON_DENY_RULE);
  CONST(WEIR_REASON_DEFAULT_DENY);
  CONST(WEIR_REASON_REPLY);
  CONST(WEIR_REASON_AUDIT_DENY_RULE);
  CONST(WEIR_REASON_AUDIT_DEFAULT_DENY);
  CONST(WEIR_REASON_NO_POLICY_SET);
  CONST(WEIR_REASON_L4_UNKNOWN);
  CONST(WEIR_REASON_NOT_COMPILED);
  CONST(WEIR_REASON_MAP_FULL);
  CONST(WEIR_REASON__MAX);

  // enum weir_hook
  CONST(WEIR_HOOK_CONNECT4);
  CONST(WEIR_HOOK_CONNECT6);
  CONST(WEIR_HOOK_SENDMSG4);
  CONST(WEIR_HOOK_SENDMSG6);
  CONST(WEIR_HOOK_EGRESS);
  CONST(WEIR_HOOK_INGRESS);

  CONST(WEIR_BIT_E_DENY);
  CONST(WEIR_BIT_E_ALLOW);
  CONST(WEIR_BIT_A_DENY);
  CONST(WEIR_BIT_A_ALLOW);

  STRUCT(weir_pod_value);
  FIELD(weir_pod_value, set_id);
  FIELD(weir_pod_value, endpoint_id);
  FIELD(weir_pod_value, flags);
  FIELD(weir_pod_value, _pad);
  CONST(WEIR_POD_F_TRACK_INGRESS);
  CONST(WEIR_POD_F_ADDR_MISSING);

  STRUCT(weir_pod_ip_key);
  FIELD(weir_pod_ip_key, family);
  FIELD(weir_pod_ip_key, _pad);
  FIELD(weir_pod_ip_key, addr);
  STRUCT(weir_pod_ip_value);
  FIELD(weir_pod_ip_value, endpoint_id);

  STRUCT(weir_set_value);
  FIELD(weir_set_value, root4);
  FIELD(weir_set_value, root6);
  FIELD(weir_set_value, flags);
  FIELD(weir_set_value, generation);
  CONST(WEIR_SET_F_VALID);
  CONST(WEIR_SET_F_E_ISOLATED);
  CONST(WEIR_SET_F_A_ISOLATED);
  CONST(WEIR_SET_F_NOT_COMPILED);
  CONST(WEIR_SET_F_FQDN);

  CONST(WEIR_TRIE_STRIDE);
  CONST(WEIR_TRIE_FANOUT);
  CONST(WEIR_SLOT_CHILD);
  CONST(WEIR_SLOT_TAIL);
  STRUCT(weir_trie_node);
  FIELD(weir_trie_node, slot);
  STRUCT(weir_trie_tail);
  FIELD(weir_trie_tail, addr);
  FIELD(weir_trie_tail, mask);
  FIELD(weir_trie_tail, hit);
  FIELD(weir_trie_tail, miss);

  CONST(WEIR_PORT_RANGES_MAX);
  STRUCT(weir_port_range);
  FIELD(weir_port_range, proto);
  FIELD(weir_port_range, bits);
  FIELD(weir_port_range, lo);
  FIELD(weir_port_range, hi);
  FIELD(weir_port_range, _pad);

  STRUCT(weir_port_class);
  FIELD(weir_port_class, any_bits);
  FIELD(weir_port_class, nranges);
  FIELD(weir_port_class, _pad0);
  FIELD(weir_port_class, _pad1);
  FIELD(weir_port_class, r);

  CONST(WEIR_COUNT_PACKETS);
  CONST(WEIR_COUNT_SOCKETS);
  CONST(WEIR_COUNTER_STRIDE);
  STRUCT(weir_counter);
  FIELD(weir_counter, packets);
  FIELD(weir_counter, bytes);

  // enum weir_stat
  CONST(WEIR_STAT_EVENTS_SENT);
  CONST(WEIR_STAT_EVENTS_LOST);
  CONST(WEIR_STAT_EVENTS_AGGREGATED);
  CONST(WEIR_STAT_PARSE_ERRORS);
  CONST(WEIR_STAT_CT_INSERT);
  CONST(WEIR_STAT_CT_INSERT_FAILED);
  CONST(WEIR_STAT_AGG_INSERT_FAILED);
  CONST(WEIR_STAT_FRAGMENTS);
  CONST(WEIR_STAT_L4_UNKNOWN);
  CONST(WEIR_STAT_DNS_QUERIES);
  CONST(WEIR_STAT_DNS_QUERIES_NOT_ALLOWED);
  CONST(WEIR_STAT_DNS_QUERIES_INVALID);
  CONST(WEIR_STAT_DNS_ANSWERS);
  CONST(WEIR_STAT_DNS_IGNORED_NO_QUERY);
  CONST(WEIR_STAT_DNS_IGNORED_RCODE);
  CONST(WEIR_STAT_DNS_IGNORED_INVALID);
  CONST(WEIR_STAT_FQDN_LEARNED);
  CONST(WEIR_STAT_FQDN_REFUSED);
  CONST(WEIR_STAT__MAX);

  STRUCT(weir_ct_key);
  FIELD(weir_ct_key, endpoint_id);
  FIELD(weir_ct_key, family);
  FIELD(weir_ct_key, proto);
  FIELD(weir_ct_key, local_port);
  FIELD(weir_ct_key, remote_port);
  FIELD(weir_ct_key, _pad);
  FIELD(weir_ct_key, remote);

  STRUCT(weir_ct_value);
  FIELD(weir_ct_value, last_seen_ns);

  STRUCT(weir_agg_key);
  FIELD(weir_agg_key, endpoint_id);
  FIELD(weir_agg_key, family);
  FIELD(weir_agg_key, proto);
  FIELD(weir_agg_key, verdict);
  FIELD(weir_agg_key, reason);
  FIELD(weir_agg_key, dport);
  FIELD(weir_agg_key, _pad);
  FIELD(weir_agg_key, dst);

  STRUCT(weir_agg_value);
  FIELD(weir_agg_value, last_sent_ns);
  FIELD(weir_agg_value, pending);
  FIELD(weir_agg_value, _pad);

  // enum weir_record_type
  CONST(WEIR_REC_VERDICT);
  CONST(WEIR_REC_DNS);

  STRUCT(weir_event);
  FIELD(weir_event, type);
  FIELD(weir_event, verdict);
  FIELD(weir_event, reason);
  FIELD(weir_event, hook);
  FIELD(weir_event, family);
  FIELD(weir_event, proto);
  FIELD(weir_event, bits);
  FIELD(weir_event, _pad0);
  FIELD(weir_event, endpoint_id);
  FIELD(weir_event, set_id);
  FIELD(weir_event, generation);
  FIELD(weir_event, pid);
  FIELD(weir_event, count);
  FIELD(weir_event, _pad1);
  FIELD(weir_event, cgroup_id);
  FIELD(weir_event, ts_ns);
  FIELD(weir_event, src);
  FIELD(weir_event, dst);
  FIELD(weir_event, sport);
  FIELD(weir_event, dport);
  FIELD(weir_event, _pad2);
  FIELD(weir_event, comm);

  CONST(WEIR_DNS_EV_LEARNED);
  CONST(WEIR_DNS_EV_REFUSED);
  CONST(WEIR_DNS_EV_INTENT);
  CONST(WEIR_DNS_REFUSED_SLOTS);
  CONST(WEIR_DNS_REFUSED_MAP_FULL);
  CONST(WEIR_DNS_NAME_MAX);
  STRUCT(weir_dns_event);
  FIELD(weir_dns_event, type);
  FIELD(weir_dns_event, kind);
  FIELD(weir_dns_event, family);
  FIELD(weir_dns_event, reason);
  FIELD(weir_dns_event, endpoint_id);
  FIELD(weir_dns_event, set_id);
  FIELD(weir_dns_event, ttl);
  FIELD(weir_dns_event, count);
  FIELD(weir_dns_event, pid);
  FIELD(weir_dns_event, ts_ns);
  FIELD(weir_dns_event, qhash);
  FIELD(weir_dns_event, expires_ns);
  FIELD(weir_dns_event, addr);
  FIELD(weir_dns_event, name_len);
  FIELD(weir_dns_event, qtype);
  FIELD(weir_dns_event, _pad);
  FIELD(weir_dns_event, name);

  STRUCT(weir_sk_owner);
  FIELD(weir_sk_owner, pid);
  FIELD(weir_sk_owner, _pad);
  FIELD(weir_sk_owner, comm);

  CONST(WEIR_SK_FLOW_SLOTS);
  STRUCT(weir_sk_flow);
  FIELD(weir_sk_flow, remote);
  FIELD(weir_sk_flow, remote_port);
  FIELD(weir_sk_flow, family);
  FIELD(weir_sk_flow, _pad0);
  FIELD(weir_sk_flow, _pad1);
  FIELD(weir_sk_flow, last_sent_ns);
  STRUCT(weir_sk_flows);
  FIELD(weir_sk_flows, slot);

  STRUCT(weir_node_state);
  FIELD(weir_node_state, flags);
  FIELD(weir_node_state, _pad);
  FIELD(weir_node_state, updated_ns);
  FIELD(weir_node_state, dns_secret);
  CONST(WEIR_NODE_F_CT_FULL);

  STRUCT(weir_dns_resolver_key);
  FIELD(weir_dns_resolver_key, family);
  FIELD(weir_dns_resolver_key, _pad);
  FIELD(weir_dns_resolver_key, port);
  FIELD(weir_dns_resolver_key, addr);
  STRUCT(weir_dns_resolver_value);
  FIELD(weir_dns_resolver_value, flags);

  CONST(WEIR_DNS_KEY_EXACT);
  CONST(WEIR_DNS_KEY_WILDCARD);
  STRUCT(weir_dns_key);
  FIELD(weir_dns_key, set_id);
  FIELD(weir_dns_key, kind);
  FIELD(weir_dns_key, _pad);
  FIELD(weir_dns_key, hash);
  STRUCT(weir_fqdn_key_value);
  FIELD(weir_fqdn_key_value, class_id);

  STRUCT(weir_dns_query_key);
  FIELD(weir_dns_query_key, endpoint_id);
  FIELD(weir_dns_query_key, family);
  FIELD(weir_dns_query_key, _pad);
  FIELD(weir_dns_query_key, pod_port);
  FIELD(weir_dns_query_key, dns_id);
  FIELD(weir_dns_query_key, resolver_port);
  FIELD(weir_dns_query_key, resolver);
  STRUCT(weir_dns_query_value);
  FIELD(weir_dns_query_value, matched);
  FIELD(weir_dns_query_value, qhash);
  FIELD(weir_dns_query_value, expires_ns);

  CONST(WEIR_FQDN_SLOTS);
  STRUCT(weir_fqdn_learned_key);
  FIELD(weir_fqdn_learned_key, endpoint_id);
  FIELD(weir_fqdn_learned_key, family);
  FIELD(weir_fqdn_learned_key, _pad);
  FIELD(weir_fqdn_learned_key, addr);
  STRUCT(weir_fqdn_slot);
  FIELD(weir_fqdn_slot, kind);
  FIELD(weir_fqdn_slot, _pad);
  FIELD(weir_fqdn_slot, hash);
  FIELD(weir_fqdn_slot, expires_ns);
  FIELD(weir_fqdn_slot, last_use_ns);
  STRUCT(weir_fqdn_learned_value);
  FIELD(weir_fqdn_learned_value, slot);

  CONST(WEIR_DNS_QUERY_TIMEOUT_S);
  CONST(WEIR_FQDN_TTL_MIN_S);
  CONST(WEIR_FQDN_TTL_MAX_S);
  CONST(WEIR_FQDN_GRACE_S);
  CONST(WEIR_DNS_SCRATCH_EGRESS);
  CONST(WEIR_DNS_SCRATCH_INGRESS);
  CONST(WEIR_DNS_SCRATCH_ENTRIES);

  STRUCT(weir_config);
  FIELD(weir_config, pod_level_lo);
  FIELD(weir_config, pod_level_hi);
  FIELD(weir_config, event_interval_ns);
  FIELD(weir_config, ct_timeout_ns);
  FIELD(weir_config, max_endpoints);
  FIELD(weir_config, flags);
  CONST(WEIR_CFG_F_EVENTS_ALLOW);

  CONST(WEIR_DEFAULT_MAX_PODS);
  CONST(WEIR_DEFAULT_MAX_ENDPOINTS);
  CONST(WEIR_DEFAULT_MAX_SETS);
  CONST(WEIR_DEFAULT_MAX_NODES);
  CONST(WEIR_DEFAULT_MAX_TAILS);
  CONST(WEIR_DEFAULT_MAX_CLASSES);
  CONST(WEIR_DEFAULT_CT_ENTRIES);
  CONST(WEIR_DEFAULT_MAX_POD_IPS);
  CONST(WEIR_DEFAULT_AGG_ENTRIES);
  CONST(WEIR_DEFAULT_RINGBUF_BYTES);
  CONST(WEIR_DEFAULT_DNS_RESOLVERS);
  CONST(WEIR_DEFAULT_FQDN_KEYS);
  CONST(WEIR_DEFAULT_DNS_QUERIES);
  CONST(WEIR_DEFAULT_FQDN_LEARNED);

  return t.Finish();
}

}  // namespace weir
