// Link owns one bpf_link (a BPF_LINK_CREATE attachment). Lifecycle:
//  - close() closes this process's fd. An unpinned link is then detached
//    by the kernel; a pinned link keeps the program attached.
//  - detach() ends the attachment now, pinned or not (BPF_LINK_DETACH).
//  - On GC without close() the attachment is deliberately kept (the fd is
//    leaked until exit): garbage collection must never detach a program.
#pragma once

#include <napi.h>

struct bpf_link;

namespace weir {

class Link : public Napi::ObjectWrap<Link> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Takes ownership of `link`.
  static Napi::Object New(Napi::Env env, bpf_link* link);

  explicit Link(const Napi::CallbackInfo& info);
  ~Link() override;

 private:
  static Napi::Value OpenPinned(const Napi::CallbackInfo& info);

  bpf_link* Handle(Napi::Env env) const;

  Napi::Value Pin(const Napi::CallbackInfo& info);
  Napi::Value Unpin(const Napi::CallbackInfo& info);
  Napi::Value Update(const Napi::CallbackInfo& info);
  Napi::Value Detach(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetPinPath(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  bpf_link* link_ = nullptr;
};

// {id, progId, type, typeName, cgroupId?, attachType?} from a link fd.
Napi::Object LinkInfoToJs(Napi::Env env, int fd, const char* syscall_context);

}  // namespace weir
