#include "errors.h"

#include <bpf/libbpf.h>
#include <uv.h>

namespace weir {

namespace {

// Kernel-internal errno values that bpf() returns to userspace but that
// libc and libuv have no names for.
constexpr int kENOTSUPP = 524;

const char* LibbpfErrnoName(int err) {
  switch (err) {
    case LIBBPF_ERRNO__LIBELF: return "LIBBPF_ERRNO__LIBELF";
    case LIBBPF_ERRNO__FORMAT: return "LIBBPF_ERRNO__FORMAT";
    case LIBBPF_ERRNO__KVERSION: return "LIBBPF_ERRNO__KVERSION";
    case LIBBPF_ERRNO__ENDIAN: return "LIBBPF_ERRNO__ENDIAN";
    case LIBBPF_ERRNO__INTERNAL: return "LIBBPF_ERRNO__INTERNAL";
    case LIBBPF_ERRNO__RELOC: return "LIBBPF_ERRNO__RELOC";
    case LIBBPF_ERRNO__LOAD: return "LIBBPF_ERRNO__LOAD";
    case LIBBPF_ERRNO__VERIFY: return "LIBBPF_ERRNO__VERIFY";
    case LIBBPF_ERRNO__PROG2BIG: return "LIBBPF_ERRNO__PROG2BIG";
    case LIBBPF_ERRNO__KVER: return "LIBBPF_ERRNO__KVER";
    case LIBBPF_ERRNO__PROGTYPE: return "LIBBPF_ERRNO__PROGTYPE";
    case LIBBPF_ERRNO__WRNGPID: return "LIBBPF_ERRNO__WRNGPID";
    case LIBBPF_ERRNO__INVSEQ: return "LIBBPF_ERRNO__INVSEQ";
    case LIBBPF_ERRNO__NLPARSE: return "LIBBPF_ERRNO__NLPARSE";
    default: return nullptr;
  }
}

}  // namespace

std::string ErrnoName(int err) {
  if (err == kENOTSUPP) return "ENOTSUPP";
  if (const char* name = LibbpfErrnoName(err)) return name;
  if (err <= 0 || err >= 4096) return "E" + std::to_string(err);
  // libuv's error codes are the negated errno values on Unix.
  return uv_err_name(-err);
}

std::string ErrnoDescription(int err) {
  if (err == kENOTSUPP) return "Operation not supported";
  char buf[256];
  if (libbpf_strerror(err, buf, sizeof(buf)) < 0) return "Unknown error " + std::to_string(err);
  return buf;
}

Napi::Error MakeSysError(Napi::Env env, const SysErrorSpec& spec) {
  std::string code = ErrnoName(spec.err);
  std::string message = spec.syscall + " failed: " + code + " (" + ErrnoDescription(spec.err) + ")";
  if (!spec.context.empty()) message += ": " + spec.context;
  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("code", code);
  obj.Set("errno", Napi::Number::New(env, -spec.err));
  obj.Set("syscall", spec.syscall);
  if (!spec.path.empty()) obj.Set("path", spec.path);
  if (!spec.log.empty()) obj.Set(spec.log_property, spec.log);
  return error;
}

void ThrowSysError(Napi::Env env, int err, const std::string& syscall, const std::string& context,
                   const std::string& path, const std::string& log) {
  SysErrorSpec spec;
  spec.err = err;
  spec.syscall = syscall;
  spec.context = context;
  spec.path = path;
  spec.log = log;
  throw MakeSysError(env, spec);
}

void ThrowTypeError(Napi::Env env, const std::string& message) {
  throw Napi::TypeError::New(env, message);
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  throw Napi::RangeError::New(env, message);
}

void ThrowError(Napi::Env env, const std::string& message) {
  throw Napi::Error::New(env, message);
}

}  // namespace weir
