// BpfObject owns one libbpf bpf_object: the ELF opened from disk, then the
// programs and maps the kernel holds after load(). Lifecycle contract:
//   open (constructor) -> configure (max entries, pin paths, .rodata,
//   autoload) -> load() on the thread pool -> programs/maps -> close().
// close() frees the bpf_object, which closes the program and map fds this
// process holds. It detaches nothing: links own their attachment, and
// pinned maps and links live on in the bpffs.
#pragma once

#include <napi.h>

#include <string>

struct bpf_object;
struct bpf_map;
struct bpf_program;

namespace weir {

class BpfObject : public Napi::ObjectWrap<BpfObject> {
 public:
  static Napi::Function Init(Napi::Env env);

  explicit BpfObject(const Napi::CallbackInfo& info);
  ~BpfObject() override;

  // Throws "BpfObject is closed" (and the like) for children that use the
  // object's programs and maps; `what` names the child in the message.
  void RequireLoaded(Napi::Env env, const std::string& what) const;
  bool closed() const { return state_ == State::kClosed; }
  const std::string& path() const { return path_; }

 private:
  friend class LoadWorker;
  enum class State { kOpened, kLoading, kLoaded, kFailed, kClosed };

  void RequireOpened(Napi::Env env, const char* method) const;
  void RequireNotLoading(Napi::Env env, const char* method) const;
  bpf_map* FindMap(Napi::Env env, const std::string& name, const char* method) const;
  bpf_program* FindProgram(Napi::Env env, const std::string& name, const char* method) const;
  void FinishLoad(int err, std::string log);
  void Destroy();

  Napi::Value SetMapMaxEntries(const Napi::CallbackInfo& info);
  Napi::Value SetMapPinPath(const Napi::CallbackInfo& info);
  Napi::Value SetInitialValue(const Napi::CallbackInfo& info);
  Napi::Value InitialValue(const Napi::CallbackInfo& info);
  Napi::Value SetProgramAutoload(const Napi::CallbackInfo& info);
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Programs(const Napi::CallbackInfo& info);
  Napi::Value Program(const Napi::CallbackInfo& info);
  Napi::Value Maps(const Napi::CallbackInfo& info);
  Napi::Value Map(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetPath(const Napi::CallbackInfo& info);
  Napi::Value GetLoaded(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value GetLoadLog(const Napi::CallbackInfo& info);

  bpf_object* obj_ = nullptr;
  std::string path_;
  State state_ = State::kOpened;
  // close() during load(): the worker frees the object when it finishes.
  bool close_requested_ = false;
  std::string load_log_;
};

}  // namespace weir
