#include "args.h"

#include <cmath>

#include "errors.h"

namespace weir {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

double IntegerValue(Napi::Env env, Napi::Value value, const char* name, double max) {
  if (!value.IsNumber()) ThrowTypeError(env, std::string(name) + " must be a number");
  double d = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || d < 0 || d > max) {
    ThrowRangeError(env, std::string(name) + " must be an integer between 0 and " +
                             std::to_string(static_cast<uint64_t>(max)));
  }
  return d;
}

}  // namespace

bool IsMissing(const Napi::CallbackInfo& info, size_t index) {
  return index >= info.Length() || info[index].IsUndefined();
}

Bytes BytesValue(Napi::Env env, Napi::Value value, const char* name) {
  if (value.IsTypedArray()) {
    Napi::TypedArray ta = value.As<Napi::TypedArray>();
    if (ta.TypedArrayType() == napi_uint8_array) {
      Napi::Uint8Array u8 = value.As<Napi::Uint8Array>();
      return Bytes{u8.Data(), u8.ByteLength()};
    }
  }
  ThrowTypeError(env, std::string(name) + " must be a Buffer or Uint8Array");
}

Bytes BytesArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return BytesValue(info.Env(), info[index], name);
}

std::string StringArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (!info[index].IsString()) ThrowTypeError(info.Env(), std::string(name) + " must be a string");
  return info[index].As<Napi::String>().Utf8Value();
}

bool BoolArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (!info[index].IsBoolean()) ThrowTypeError(info.Env(), std::string(name) + " must be a boolean");
  return info[index].As<Napi::Boolean>().Value();
}

uint32_t U32Value(Napi::Env env, Napi::Value value, const char* name) {
  return static_cast<uint32_t>(IntegerValue(env, value, name, 4294967295.0));
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return U32Value(info.Env(), info[index], name);
}

uint64_t U64Arg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  return static_cast<uint64_t>(IntegerValue(info.Env(), info[index], name, kMaxSafeInteger));
}

uint64_t OptionalU64Arg(const Napi::CallbackInfo& info, size_t index, const char* name,
                        uint64_t fallback) {
  if (IsMissing(info, index)) return fallback;
  return U64Arg(info, index, name);
}

}  // namespace weir
