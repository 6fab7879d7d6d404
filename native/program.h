// Program is a handle on one program of a loaded BpfObject. It owns no fd
// (the object does) and keeps the object's JS wrapper alive; once the
// object is closed every call throws "BpfObject is closed".
#pragma once

#include <napi.h>

#include <string>

struct bpf_program;

namespace weir {

class BpfObject;

class Program : public Napi::ObjectWrap<Program> {
 public:
  static Napi::Function Init(Napi::Env env);
  static Napi::Object New(Napi::Env env, BpfObject* owner, Napi::Object owner_value, bpf_program* prog);

  explicit Program(const Napi::CallbackInfo& info);

  // The libbpf program, after checking that the handle and its object are
  // still open; `what` names the operation for the error message.
  bpf_program* Handle(Napi::Env env, const char* what) const;
  const std::string& name() const { return name_; }

 private:
  Napi::Value AttachCgroup(const Napi::CallbackInfo& info);
  Napi::Value TestRun(const Napi::CallbackInfo& info);
  Napi::Value TestRunAsync(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetName(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetType(const Napi::CallbackInfo& info);
  Napi::Value GetTypeName(const Napi::CallbackInfo& info);
  Napi::Value GetSectionName(const Napi::CallbackInfo& info);
  Napi::Value GetExpectedAttachType(const Napi::CallbackInfo& info);
  Napi::Value GetId(const Napi::CallbackInfo& info);
  Napi::Value GetTag(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  BpfObject* owner_ = nullptr;
  Napi::ObjectReference owner_ref_;
  bpf_program* prog_ = nullptr;
  std::string name_;
  bool closed_ = false;
};

}  // namespace weir
