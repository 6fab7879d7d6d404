// Argument checking shared by every binding: a wrong type is a TypeError
// that names the argument, a wrong size or range a RangeError.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace weir {

struct Bytes {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// A Buffer or any Uint8Array. The view is valid while the JS value is.
Bytes BytesArg(const Napi::CallbackInfo& info, size_t index, const char* name);
Bytes BytesValue(Napi::Env env, Napi::Value value, const char* name);

std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* name);
bool BoolArg(const Napi::CallbackInfo& info, size_t index, const char* name);
uint32_t U32Arg(const Napi::CallbackInfo& info, size_t index, const char* name);
// A non-negative integer that fits in a JS number exactly (flags words).
uint64_t U64Arg(const Napi::CallbackInfo& info, size_t index, const char* name);
uint64_t OptionalU64Arg(const Napi::CallbackInfo& info, size_t index, const char* name,
                        uint64_t fallback);
uint32_t U32Value(Napi::Env env, Napi::Value value, const char* name);

bool IsMissing(const Napi::CallbackInfo& info, size_t index);

}  // namespace weir
