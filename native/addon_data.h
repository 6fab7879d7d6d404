// Per-env state: the constructors the addon needs to create wrapped objects
// from C++ (a Program from BpfObject.program(), a Link from attachCgroup).
// Stored as instance data so that worker threads each get their own.
#pragma once

#include <napi.h>

namespace weir {

struct AddonData {
  Napi::FunctionReference bpf_object;
  Napi::FunctionReference program;
  Napi::FunctionReference map;
  Napi::FunctionReference link;
  Napi::FunctionReference ring_buffer;
};

inline AddonData& GetAddonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace weir
