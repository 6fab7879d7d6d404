#include "libbpf_log.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstdio>
#include <mutex>

namespace weir {

namespace {

thread_local std::string* tl_sink = nullptr;

int Print(enum libbpf_print_level level, const char* format, va_list args) {
  // DEBUG is libbpf's step-by-step narration; WARN and INFO are what the
  // default printer shows, and WARN carries the verifier log on failure.
  if (level == LIBBPF_DEBUG) return 0;
  if (tl_sink == nullptr) {
    // Outside a capture (should not happen for calls made by the addon):
    // keep libbpf's default behaviour for warnings.
    if (level != LIBBPF_WARN) return 0;
    return vfprintf(stderr, format, args);
  }
  va_list copy;
  va_copy(copy, args);
  int n = vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  if (n <= 0) return n;
  size_t old = tl_sink->size();
  tl_sink->resize(old + static_cast<size_t>(n) + 1);
  vsnprintf(&(*tl_sink)[old], static_cast<size_t>(n) + 1, format, args);
  tl_sink->resize(old + static_cast<size_t>(n));
  return n;
}

std::once_flag install_once;

}  // namespace

void InstallLibbpfPrint() {
  std::call_once(install_once, [] { libbpf_set_print(Print); });
}

LibbpfLogCapture::LibbpfLogCapture(std::string* sink)
    : sink_(sink != nullptr ? sink : &own_), previous_(tl_sink) {
  tl_sink = sink_;
}

LibbpfLogCapture::~LibbpfLogCapture() { tl_sink = previous_; }

}  // namespace weir
