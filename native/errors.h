// Errors that look like Node's system errors, so callers handle a failed
// bpf() call exactly like a failed fs call: err.code ('EPERM'), err.errno
// (negative, as in Node), err.syscall (the libbpf or bpf function that
// failed), optional err.path, and the libbpf text captured during the call.
#pragma once

#include <napi.h>

#include <string>

namespace weir {

// Node-style name for a positive errno value: 'EPERM', 'ENOTSUPP' (the
// kernel-internal 524 that bpf() leaks to userspace), 'LIBBPF_ERRNO__VERIFY'.
std::string ErrnoName(int err);

// "Operation not permitted"; libbpf's own codes get libbpf's descriptions.
std::string ErrnoDescription(int err);

struct SysErrorSpec {
  int err = 0;              // positive errno
  std::string syscall;      // e.g. "bpf_map_update_elem"
  std::string context;      // appended to the message: "map 'weir_pods'"
  std::string path;         // becomes err.path when not empty
  std::string log;          // libbpf output captured during the call
  const char* log_property = "libbpfLog";
};

Napi::Error MakeSysError(Napi::Env env, const SysErrorSpec& spec);

[[noreturn]] void ThrowSysError(Napi::Env env, int err, const std::string& syscall,
                                const std::string& context = {},
                                const std::string& path = {},
                                const std::string& log = {});

[[noreturn]] void ThrowTypeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowRangeError(Napi::Env env, const std::string& message);
[[noreturn]] void ThrowError(Napi::Env env, const std::string& message);

}  // namespace weir
