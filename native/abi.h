#pragma once

#include <napi.h>

namespace weir {

// {version, sizes, offsets, fieldSizes, constants} for bpf/include/weir_abi.h.
Napi::Object AbiInfo(Napi::Env env);

}  // namespace weir
