#include "map.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "addon_data.h"
#include "args.h"
#include "bpf_object.h"
#include "errors.h"
#include "libbpf_log.h"

namespace weir {

namespace {

// The kernel's internal "operation not supported" that bpf() returns for
// map types without a batch implementation.
constexpr int kENOTSUPP = 524;

// Dump reads the map in chunks of this many entries per bpf() call.
constexpr uint32_t kDumpChunk = 4096;

struct MapInit {
  BpfObject* owner = nullptr;
  Napi::Object owner_value;
  bpf_map* map = nullptr;
  int fd = -1;  // owned, for openPinned
  std::string pinned_path;
};

bool IsPerCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

bool BatchUnsupported(int err) { return err == EINVAL || err == kENOTSUPP || err == EOPNOTSUPP; }

}  // namespace

Napi::Function Map::Init(Napi::Env env) {
  return DefineClass(env, "Map",
                     {
                         StaticMethod<&Map::OpenPinned>("openPinned"),
                         InstanceMethod<&Map::Lookup>("lookup"),
                         InstanceMethod<&Map::Update>("update"),
                         InstanceMethod<&Map::Delete>("delete"),
                         InstanceMethod<&Map::UpdateBatch>("updateBatch"),
                         InstanceMethod<&Map::DeleteBatch>("deleteBatch"),
                         InstanceMethod<&Map::Keys>("keys"),
                         InstanceMethod<&Map::Dump>("dump"),
                         InstanceMethod<&Map::Pin>("pin"),
                         InstanceMethod<&Map::Unpin>("unpin"),
                         InstanceMethod<&Map::Close>("close"),
                         InstanceAccessor<&Map::GetName>("name"),
                         InstanceAccessor<&Map::GetFd>("fd"),
                         InstanceAccessor<&Map::GetType>("type"),
                         InstanceAccessor<&Map::GetTypeName>("typeName"),
                         InstanceAccessor<&Map::GetKeySize>("keySize"),
                         InstanceAccessor<&Map::GetValueSize>("valueSize"),
                         InstanceAccessor<&Map::GetValueBufferSize>("valueBufferSize"),
                         InstanceAccessor<&Map::GetMaxEntries>("maxEntries"),
                         InstanceAccessor<&Map::GetMapFlags>("mapFlags"),
                         InstanceAccessor<&Map::GetId>("id"),
                         InstanceAccessor<&Map::GetPerCpu>("perCpu"),
                         InstanceAccessor<&Map::GetPossibleCpus>("possibleCpus"),
                         InstanceAccessor<&Map::GetClosed>("closed"),
                     });
}

Napi::Object Map::NewFromObject(Napi::Env env, BpfObject* owner, Napi::Object owner_value, bpf_map* map) {
  MapInit init;
  init.owner = owner;
  init.owner_value = owner_value;
  init.map = map;
  return GetAddonData(env).map.New({Napi::External<MapInit>::New(env, &init)});
}

Map::Map(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Map>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) {
    ThrowTypeError(env, "Map cannot be constructed directly; use BpfObject.map(name) or Map.openPinned(path)");
  }
  auto* init = info[0].As<Napi::External<MapInit>>().Data();
  if (init->map != nullptr) {
    owner_ = init->owner;
    owner_ref_ = Napi::Persistent(init->owner_value);
    fd_ = bpf_map__fd(init->map);
    name_ = bpf_map__name(init->map);
  } else {
    fd_ = init->fd;
    owns_fd_ = true;
    pinned_path_ = init->pinned_path;
  }
  ReadInfo(env);
}

Map::~Map() {
  if (owns_fd_ && fd_ >= 0) close(fd_);
}

void Map::ReadInfo(Napi::Env env) {
  // The kernel's view, not the ELF's: a reused pinned map may differ from
  // what the object declared only in ways libbpf accepted.
  bpf_map_info minfo = {};
  uint32_t len = sizeof(minfo);
  if (bpf_obj_get_info_by_fd(fd_, &minfo, &len) < 0) {
    ThrowSysError(env, errno, "bpf_obj_get_info_by_fd", Context());
  }
  if (name_.empty()) name_ = minfo.name;  // openPinned: the kernel's 15-char name
  type_ = minfo.type;
  key_size_ = minfo.key_size;
  value_size_ = minfo.value_size;
  max_entries_ = minfo.max_entries;
  map_flags_ = minfo.map_flags;
  id_ = minfo.id;
  per_cpu_ = IsPerCpu(type_);
  int n = libbpf_num_possible_cpus();
  if (n < 0) ThrowSysError(env, -n, "libbpf_num_possible_cpus");
  possible_cpus_ = static_cast<uint32_t>(n);
  if (per_cpu_) {
    value_buffer_size_ = ((static_cast<size_t>(value_size_) + 7) / 8) * 8 * possible_cpus_;
  } else {
    value_buffer_size_ = value_size_;
  }
}

std::string Map::Context() const {
  std::string s = "map '" + name_ + "'";
  if (!pinned_path_.empty()) s += " (pinned at '" + pinned_path_ + "')";
  return s;
}

int Map::Fd(Napi::Env env) const {
  if (closed_) ThrowError(env, "Map '" + name_ + "' is closed");
  if (owner_ != nullptr) owner_->RequireLoaded(env, "map '" + name_ + "'");
  return fd_;
}

void Map::CheckKey(Napi::Env env, size_t size, const char* arg) const {
  if (size != key_size_) {
    ThrowRangeError(env, std::string(arg) + ": " + Context() + " has " + std::to_string(key_size_) +
                             "-byte keys, got " + std::to_string(size) + " bytes");
  }
}

void Map::CheckValue(Napi::Env env, size_t size, const char* arg) const {
  if (size != value_buffer_size_) {
    std::string what = per_cpu_ ? "per-CPU values (" + std::to_string(possible_cpus_) + " CPUs x " +
                                      std::to_string((value_size_ + 7) / 8 * 8) + " bytes)"
                                : "values";
    ThrowRangeError(env, std::string(arg) + ": " + Context() + " takes " + std::to_string(value_buffer_size_) +
                             "-byte " + what + ", got " + std::to_string(size) + " bytes");
  }
}

Napi::Value Map::OpenPinned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) ThrowSysError(env, errno, "bpf_obj_get", "'" + path + "'", path);
  MapInit init;
  init.fd = fd;
  init.pinned_path = path;
  // On a failure in the constructor (not a map), it has not taken the fd.
  try {
    return GetAddonData(env).map.New({Napi::External<MapInit>::New(env, &init)});
  } catch (...) {
    close(fd);
    throw;
  }
}

Napi::Value Map::Lookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes key = BytesArg(info, 0, "key");
  uint64_t flags = OptionalU64Arg(info, 1, "flags", 0);
  int fd = Fd(env);
  CheckKey(env, key.size, "key");
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, value_buffer_size_);
  if (bpf_map_lookup_elem_flags(fd, key.data, value.Data(), flags) < 0) {
    int err = errno;
    if (err == ENOENT) return env.Null();
    ThrowSysError(env, err, "bpf_map_lookup_elem", Context());
  }
  return value;
}

Napi::Value Map::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes key = BytesArg(info, 0, "key");
  Bytes value = BytesArg(info, 1, "value");
  uint64_t flags = OptionalU64Arg(info, 2, "flags", BPF_ANY);
  int fd = Fd(env);
  CheckKey(env, key.size, "key");
  CheckValue(env, value.size, "value");
  if (bpf_map_update_elem(fd, key.data, value.data, flags) < 0) {
    ThrowSysError(env, errno, "bpf_map_update_elem", Context());
  }
  return env.Undefined();
}

Napi::Value Map::Delete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes key = BytesArg(info, 0, "key");
  int fd = Fd(env);
  CheckKey(env, key.size, "key");
  if (bpf_map_delete_elem(fd, key.data) < 0) {
    int err = errno;
    if (err == ENOENT) return Napi::Boolean::New(env, false);
    ThrowSysError(env, err, "bpf_map_delete_elem", Context());
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value Map::UpdateBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes keys = BytesArg(info, 0, "keys");
  Bytes values = BytesArg(info, 1, "values");
  uint32_t count = U32Arg(info, 2, "count");
  uint64_t flags = OptionalU64Arg(info, 3, "flags", BPF_ANY);
  int fd = Fd(env);
  // The buffers may be larger than needed (reused scratch space).
  if (keys.size < static_cast<size_t>(count) * key_size_) {
    ThrowRangeError(env, "keys: " + std::to_string(count) + " keys of " + std::to_string(key_size_) +
                             " bytes need " + std::to_string(static_cast<size_t>(count) * key_size_) +
                             " bytes, got " + std::to_string(keys.size));
  }
  if (values.size < count * value_buffer_size_) {
    ThrowRangeError(env, "values: " + std::to_string(count) + " values of " + std::to_string(value_buffer_size_) +
                             " bytes need " + std::to_string(count * value_buffer_size_) + " bytes, got " +
                             std::to_string(values.size));
  }
  if (count == 0) return Napi::Number::New(env, 0);
  LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
  uint32_t done = count;
  if (bpf_map_update_batch(fd, keys.data, values.data, &done, &opts) == 0) {
    return Napi::Number::New(env, count);
  }
  int err = errno;
  // Kernels before 5.6 and map types without a batch implementation
  // (LPM_TRIE, SK_STORAGE...) reject the command itself with EINVAL or
  // ENOTSUPP before touching any element; only then fall back to one
  // bpf_map_update_elem per entry, which reports the real error if any.
  if (!(BatchUnsupported(err) && done == 0)) {
    ThrowSysError(env, err, "bpf_map_update_batch",
                  Context() + " after " + std::to_string(done) + " of " + std::to_string(count) + " entries");
  }
  for (uint32_t i = 0; i < count; i++) {
    if (bpf_map_update_elem(fd, keys.data + static_cast<size_t>(i) * key_size_,
                            values.data + i * value_buffer_size_, flags) < 0) {
      ThrowSysError(env, errno, "bpf_map_update_elem",
                    Context() + " at entry " + std::to_string(i) + " of " + std::to_string(count));
    }
  }
  return Napi::Number::New(env, count);
}

Napi::Value Map::DeleteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Bytes keys = BytesArg(info, 0, "keys");
  uint32_t count = U32Arg(info, 1, "count");
  int fd = Fd(env);
  if (keys.size < static_cast<size_t>(count) * key_size_) {
    ThrowRangeError(env, "keys: " + std::to_string(count) + " keys of " + std::to_string(key_size_) +
                             " bytes need " + std::to_string(static_cast<size_t>(count) * key_size_) +
                             " bytes, got " + std::to_string(keys.size));
  }
  // Returns how many keys were present and deleted; missing keys are not
  // an error (the kernel's batch stops at the first one, so step over it).
  uint32_t deleted = 0;
  uint32_t pos = 0;
  bool batch = true;
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  while (pos < count && batch) {
    uint32_t n = count - pos;
    int ret = bpf_map_delete_batch(fd, keys.data + static_cast<size_t>(pos) * key_size_, &n, &opts);
    int err = ret < 0 ? errno : 0;
    deleted += n;
    pos += n;
    if (ret == 0) break;
    if (err == ENOENT) {
      pos++;
    } else if (BatchUnsupported(err) && n == 0) {
      // As in updateBatch: no batch support for this map or kernel.
      batch = false;
    } else {
      ThrowSysError(env, err, "bpf_map_delete_batch", Context());
    }
  }
  if (!batch) {
    for (; pos < count; pos++) {
      if (bpf_map_delete_elem(fd, keys.data + static_cast<size_t>(pos) * key_size_) == 0) {
        deleted++;
      } else if (errno != ENOENT) {
        ThrowSysError(env, errno, "bpf_map_delete_elem", Context());
      }
    }
  }
  return Napi::Number::New(env, deleted);
}

Napi::Value Map::Keys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  Napi::Array out = Napi::Array::New(env);
  std::vector<uint8_t> prev(key_size_), next(key_size_);
  // A hash map walk restarts from the first key when the current one is
  // deleted concurrently, so stop at capacity rather than loop forever.
  uint32_t n = 0;
  bool first = true;
  while (n < max_entries_) {
    if (bpf_map_get_next_key(fd, first ? nullptr : prev.data(), next.data()) < 0) {
      if (errno == ENOENT) break;
      ThrowSysError(env, errno, "bpf_map_get_next_key", Context());
    }
    out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), next.size()));
    prev.swap(next);
    first = false;
  }
  return out;
}

Napi::Value Map::Dump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  std::vector<uint8_t> keys;
  std::vector<uint8_t> values;
  uint32_t total = 0;
  bool batch_ok = true;

  // bpf_map_lookup_batch: the in/out "batch" token is opaque (a bucket
  // index for hash maps, a key for arrays); give it room for either.
  uint32_t chunk = std::max<uint32_t>(1, std::min(max_entries_, kDumpChunk));
  std::vector<uint8_t> in_token(std::max<size_t>(key_size_, 8)), out_token(in_token.size());
  bool first = true;
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  for (;;) {
    keys.resize((static_cast<size_t>(total) + chunk) * key_size_);
    values.resize((total + chunk) * value_buffer_size_);
    uint32_t n = chunk;
    int ret = bpf_map_lookup_batch(fd, first ? nullptr : in_token.data(), out_token.data(),
                                   keys.data() + static_cast<size_t>(total) * key_size_,
                                   values.data() + total * value_buffer_size_, &n, &opts);
    int err = ret < 0 ? errno : 0;
    if (ret < 0 && err == ENOSPC && n == 0) {
      // A hash bucket holds more entries than fit in one chunk.
      chunk *= 2;
      continue;
    }
    total += n;
    if (ret < 0 && err == ENOENT) break;  // walked past the last entry
    if (ret < 0) {
      if (first && BatchUnsupported(err) && n == 0) {
        batch_ok = false;
        break;
      }
      ThrowSysError(env, err, "bpf_map_lookup_batch", Context());
    }
    in_token.swap(out_token);
    first = false;
  }

  if (!batch_ok) {
    // Map types without lookup_batch (LPM_TRIE, ...): walk the keys.
    total = 0;
    keys.clear();
    values.clear();
    std::vector<uint8_t> prev(key_size_), next(key_size_), value(value_buffer_size_);
    bool first_key = true;
    while (total < max_entries_) {
      if (bpf_map_get_next_key(fd, first_key ? nullptr : prev.data(), next.data()) < 0) {
        if (errno == ENOENT) break;
        ThrowSysError(env, errno, "bpf_map_get_next_key", Context());
      }
      first_key = false;
      prev.swap(next);
      if (bpf_map_lookup_elem(fd, prev.data(), value.data()) < 0) {
        if (errno == ENOENT) continue;  // deleted since get_next_key
        ThrowSysError(env, errno, "bpf_map_lookup_elem", Context());
      }
      keys.insert(keys.end(), prev.begin(), prev.end());
      values.insert(values.end(), value.begin(), value.end());
      total++;
    }
  }

  Napi::Object out = Napi::Object::New(env);
  out.Set("keys", Napi::Buffer<uint8_t>::Copy(env, keys.data(), static_cast<size_t>(total) * key_size_));
  out.Set("values", Napi::Buffer<uint8_t>::Copy(env, values.data(), total * value_buffer_size_));
  out.Set("count", Napi::Number::New(env, total));
  return out;
}

Napi::Value Map::Pin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  int fd = Fd(env);
  if (bpf_obj_pin(fd, path.c_str()) < 0) ThrowSysError(env, errno, "bpf_obj_pin", Context() + " at '" + path + "'", path);
  return env.Undefined();
}

Napi::Value Map::Unpin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  Fd(env);
  if (unlink(path.c_str()) < 0) ThrowSysError(env, errno, "unlink", Context() + " pin '" + path + "'", path);
  return env.Undefined();
}

Napi::Value Map::Close(const Napi::CallbackInfo& info) {
  if (!closed_) {
    closed_ = true;
    if (owns_fd_ && fd_ >= 0) close(fd_);
    fd_ = -1;
    owner_ref_.Reset();
    owner_ = nullptr;
  }
  return info.Env().Undefined();
}

Napi::Value Map::GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }
Napi::Value Map::GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), Fd(info.Env())); }
Napi::Value Map::GetType(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), type_); }
Napi::Value Map::GetTypeName(const Napi::CallbackInfo& info) {
  const char* s = libbpf_bpf_map_type_str(static_cast<enum bpf_map_type>(type_));
  return Napi::String::New(info.Env(), s != nullptr ? s : "unknown");
}
Napi::Value Map::GetKeySize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), key_size_); }
Napi::Value Map::GetValueSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), value_size_); }
Napi::Value Map::GetValueBufferSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(value_buffer_size_));
}
Napi::Value Map::GetMaxEntries(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), max_entries_); }
Napi::Value Map::GetMapFlags(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), map_flags_); }
Napi::Value Map::GetId(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), id_); }
Napi::Value Map::GetPerCpu(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), per_cpu_); }
Napi::Value Map::GetPossibleCpus(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), possible_cpus_);
}
Napi::Value Map::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), closed_ || (owner_ != nullptr && owner_->closed()));
}

}  // namespace weir
