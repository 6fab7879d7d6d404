#include "link.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <string>

#include "addon_data.h"
#include "args.h"
#include "errors.h"
#include "libbpf_log.h"
#include "program.h"

namespace weir {

namespace {

struct LinkInit {
  bpf_link* link;
};

}  // namespace

Napi::Object LinkInfoToJs(Napi::Env env, int fd, const char* context) {
  bpf_link_info linfo = {};
  uint32_t len = sizeof(linfo);
  if (bpf_obj_get_info_by_fd(fd, &linfo, &len) < 0) ThrowSysError(env, errno, "bpf_obj_get_info_by_fd", context);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::Number::New(env, linfo.id));
  o.Set("progId", Napi::Number::New(env, linfo.prog_id));
  o.Set("type", Napi::Number::New(env, linfo.type));
  const char* type_name = libbpf_bpf_link_type_str(static_cast<enum bpf_link_type>(linfo.type));
  o.Set("typeName", type_name != nullptr ? type_name : "unknown");
  if (linfo.type == BPF_LINK_TYPE_CGROUP) {
    // cgroup_id is 0 once the cgroup is gone or the link was detached.
    o.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(linfo.cgroup.cgroup_id)));
    o.Set("attachType", Napi::Number::New(env, linfo.cgroup.attach_type));
    const char* attach_name = libbpf_bpf_attach_type_str(static_cast<enum bpf_attach_type>(linfo.cgroup.attach_type));
    o.Set("attachTypeName", attach_name != nullptr ? attach_name : "unknown");
  }
  return o;
}

Napi::Function Link::Init(Napi::Env env) {
  return DefineClass(env, "Link",
                     {
                         StaticMethod<&Link::OpenPinned>("openPinned"),
                         InstanceMethod<&Link::Pin>("pin"),
                         InstanceMethod<&Link::Unpin>("unpin"),
                         InstanceMethod<&Link::Update>("update"),
                         InstanceMethod<&Link::Detach>("detach"),
                         InstanceMethod<&Link::Close>("close"),
                         InstanceMethod<&Link::Info>("info"),
                         InstanceAccessor<&Link::GetFd>("fd"),
                         InstanceAccessor<&Link::GetPinPath>("pinPath"),
                         InstanceAccessor<&Link::GetClosed>("closed"),
                     });
}

Napi::Object Link::New(Napi::Env env, bpf_link* link) {
  LinkInit init{link};
  try {
    return GetAddonData(env).link.New({Napi::External<LinkInit>::New(env, &init)});
  } catch (...) {
    // Not wrapped: keep the attachment (as on GC) rather than detach it.
    bpf_link__disconnect(link);
    bpf_link__destroy(link);
    throw;
  }
}

Link::Link(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Link>(info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    ThrowTypeError(info.Env(), "Link cannot be constructed directly; use Program.attachCgroup() or Link.openPinned()");
  }
  link_ = info[0].As<Napi::External<LinkInit>>().Data()->link;
}

Link::~Link() {
  if (link_ != nullptr) {
    // Garbage collected while open: never detach on GC. Disconnecting makes
    // bpf_link__destroy free the struct without closing the fd.
    bpf_link__disconnect(link_);
    bpf_link__destroy(link_);
    link_ = nullptr;
  }
}

bpf_link* Link::Handle(Napi::Env env) const {
  if (link_ == nullptr) ThrowError(env, "Link is closed");
  return link_;
}

Napi::Value Link::OpenPinned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  LibbpfLogCapture capture;
  bpf_link* link = bpf_link__open(path.c_str());
  if (link == nullptr) ThrowSysError(env, errno, "bpf_link__open", "'" + path + "'", path, capture.text());
  return New(env, link);
}

Napi::Value Link::Pin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "path");
  bpf_link* link = Handle(env);
  LibbpfLogCapture capture;
  int ret = bpf_link__pin(link, path.c_str());
  if (ret < 0) ThrowSysError(env, -ret, "bpf_link__pin", "at '" + path + "'", path, capture.text());
  return env.Undefined();
}

Napi::Value Link::Unpin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_link* link = Handle(env);
  const char* pin = bpf_link__pin_path(link);
  if (pin == nullptr) ThrowError(env, "Link.unpin(): link is not pinned");
  std::string path = pin;
  LibbpfLogCapture capture;
  int ret = bpf_link__unpin(link);
  if (ret < 0) ThrowSysError(env, -ret, "bpf_link__unpin", "at '" + path + "'", path, capture.text());
  return env.Undefined();
}

Napi::Value Link::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  AddonData& data = GetAddonData(env);
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(data.program.Value())) {
    ThrowTypeError(env, "program must be a Program (from BpfObject.program())");
  }
  Program* program = Napi::ObjectWrap<Program>::Unwrap(info[0].As<Napi::Object>());
  bpf_program* prog = program->Handle(env, "Link.update");
  bpf_link* link = Handle(env);
  LibbpfLogCapture capture;
  // BPF_LINK_UPDATE swaps the program in place: no window without one.
  int ret = bpf_link__update_program(link, prog);
  if (ret < 0) {
    ThrowSysError(env, -ret, "bpf_link__update_program", "to program '" + program->name() + "'", {}, capture.text());
  }
  return env.Undefined();
}

Napi::Value Link::Detach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_link* link = Handle(env);
  int ret = bpf_link__detach(link);
  if (ret < 0) ThrowSysError(env, -ret, "bpf_link__detach");
  return env.Undefined();
}

Napi::Value Link::Close(const Napi::CallbackInfo& info) {
  if (link_ != nullptr) {
    // Closes the fd only; the bpffs pin (if any) keeps the link alive.
    bpf_link__destroy(link_);
    link_ = nullptr;
  }
  return info.Env().Undefined();
}

Napi::Value Link::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return LinkInfoToJs(env, bpf_link__fd(Handle(env)), "link");
}

Napi::Value Link::GetFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), bpf_link__fd(Handle(info.Env())));
}

Napi::Value Link::GetPinPath(const Napi::CallbackInfo& info) {
  const char* pin = bpf_link__pin_path(Handle(info.Env()));
  if (pin == nullptr) return info.Env().Null();
  return Napi::String::New(info.Env(), pin);
}

Napi::Value Link::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), link_ == nullptr); }

}  // namespace weir
