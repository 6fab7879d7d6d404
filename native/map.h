// Map is a handle on one BPF map, in one of two ownerships:
//  - from BpfObject.map(): the fd belongs to the object; close() releases
//    this handle only, and the handle keeps the object's wrapper alive;
//  - from Map.openPinned(): the handle owns its fd (bpf_obj_get) and
//    close() closes it. The pinned map itself lives on in the bpffs.
// Per-CPU maps take and return values of roundup(valueSize, 8) bytes for
// every possible CPU, back to back (valueBufferSize).
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

struct bpf_map;

namespace weir {

class BpfObject;

class Map : public Napi::ObjectWrap<Map> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object NewFromObject(Napi::Env env, BpfObject* owner, Napi::Object owner_value, bpf_map* map);

  explicit Map(const Napi::CallbackInfo& info);
  ~Map() override;

  // The map fd after checking that the handle (and its object) is open.
  int Fd(Napi::Env env) const;
  uint32_t type() const { return type_; }
  const std::string& name() const { return name_; }

 private:
  static Napi::Value OpenPinned(const Napi::CallbackInfo& info);

  void ReadInfo(Napi::Env env);
  void CheckKey(Napi::Env env, size_t size, const char* arg) const;
  void CheckValue(Napi::Env env, size_t size, const char* arg) const;
  std::string Context() const;

  Napi::Value Lookup(const Napi::CallbackInfo& info);
  Napi::Value Update(const Napi::CallbackInfo& info);
  Napi::Value Delete(const Napi::CallbackInfo& info);
  Napi::Value UpdateBatch(const Napi::CallbackInfo& info);
  Napi::Value DeleteBatch(const Napi::CallbackInfo& info);
  Napi::Value Keys(const Napi::CallbackInfo& info);
  Napi::Value Dump(const Napi::CallbackInfo& info);
  Napi::Value Pin(const Napi::CallbackInfo& info);
  Napi::Value Unpin(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetName(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetType(const Napi::CallbackInfo& info);
  Napi::Value GetTypeName(const Napi::CallbackInfo& info);
  Napi::Value GetKeySize(const Napi::CallbackInfo& info);
  Napi::Value GetValueSize(const Napi::CallbackInfo& info);
  Napi::Value GetValueBufferSize(const Napi::CallbackInfo& info);
  Napi::Value GetMaxEntries(const Napi::CallbackInfo& info);
  Napi::Value GetMapFlags(const Napi::CallbackInfo& info);
  Napi::Value GetId(const Napi::CallbackInfo& info);
  Napi::Value GetPerCpu(const Napi::CallbackInfo& info);
  Napi::Value GetPossibleCpus(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  BpfObject* owner_ = nullptr;  // null for openPinned maps
  Napi::ObjectReference owner_ref_;
  int fd_ = -1;
  bool owns_fd_ = false;
  bool closed_ = false;
  std::string name_;
  std::string pinned_path_;  // where openPinned() found it, for messages
  uint32_t type_ = 0;
  uint32_t key_size_ = 0;
  uint32_t value_size_ = 0;
  uint32_t max_entries_ = 0;
  uint32_t map_flags_ = 0;
  uint32_t id_ = 0;
  bool per_cpu_ = false;
  uint32_t possible_cpus_ = 1;
  size_t value_buffer_size_ = 0;
};

}  // namespace weir
