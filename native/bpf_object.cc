#include "bpf_object.h"

#include <bpf/libbpf.h>

#include <cerrno>
#include <sstream>
#include <utility>

#include "addon_data.h"
#include "args.h"
#include "errors.h"
#include "libbpf_log.h"
#include "map.h"
#include "program.h"

namespace weir {

namespace {

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool StartsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// One line for the error message out of libbpf's load output: the first
// libbpf complaint, plus the verifier's own last word when a program was
// rejected (the full text stays in err.verifierLog).
std::string SummarizeLoadLog(const std::string& log) {
  std::istringstream in(log);
  std::string line;
  std::string libbpf_line;
  std::string verifier_line;
  bool in_prog_log = false;
  while (std::getline(in, line)) {
    std::string t = Trim(line);
    if (t.find("-- BEGIN PROG LOAD LOG --") != std::string::npos) {
      in_prog_log = true;
      continue;
    }
    if (t.find("-- END PROG LOAD LOG --") != std::string::npos) {
      in_prog_log = false;
      continue;
    }
    if (t.empty()) continue;
    if (in_prog_log) {
      // The statistics lines follow the verifier's verdict; skip them.
      if (StartsWith(t, "processed ") || StartsWith(t, "verification time") ||
          StartsWith(t, "stack depth") || StartsWith(t, "max_states_per_insn")) {
        continue;
      }
      verifier_line = t;
      continue;
    }
    if (libbpf_line.empty() &&
        (t.find("failed") != std::string::npos || t.find("couldn't") != std::string::npos ||
         t.find("error") != std::string::npos || t.find("mismatch") != std::string::npos ||
         t.find("invalid") != std::string::npos)) {
      libbpf_line = StartsWith(t, "libbpf: ") ? t.substr(8) : t;
    }
  }
  std::string summary = libbpf_line;
  if (!verifier_line.empty()) {
    if (!summary.empty()) summary += "; ";
    summary += "verifier: " + verifier_line;
  }
  return summary;
}

}  // namespace

// Runs bpf_object__load (where the verifier runs) on the thread pool.
// Execute() touches no N-API: it reads the bpf_object pointer and writes
// plain data; the result crosses back to the JS thread in OnOK().
class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, BpfObject* owner)
      : Napi::AsyncWorker(env, "weir:bpf_object__load"),
        deferred_(Napi::Promise::Deferred::New(env)),
        owner_(owner),
        obj_(owner->obj_) {
    // Keep the JS object (and so `owner`) alive until the load finishes.
    owner_ref_ = Napi::Persistent(owner->Value());
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    LibbpfLogCapture capture(&log_);
    int ret = bpf_object__load(obj_);
    err_ = ret < 0 ? -ret : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    bool closed_meanwhile = owner_->close_requested_;
    std::string summary = err_ != 0 ? SummarizeLoadLog(log_) : std::string();
    owner_->FinishLoad(err_, log_);
    if (closed_meanwhile) {
      deferred_.Reject(
          Napi::Error::New(env, "BpfObject is closed: close() was called while load() was in progress")
              .Value());
      return;
    }
    if (err_ != 0) {
      SysErrorSpec spec;
      spec.err = err_;
      spec.syscall = "bpf_object__load";
      spec.context = "'" + owner_->path_ + "'";
      if (!summary.empty()) spec.context += ": " + summary;
      spec.path = owner_->path_;
      spec.log = log_;
      spec.log_property = "verifierLog";
      Napi::Error error = MakeSysError(env, spec);
      // Always present on load errors, even when libbpf printed nothing.
      if (log_.empty()) error.Value().Set("verifierLog", "");
      deferred_.Reject(error.Value());
      return;
    }
    deferred_.Resolve(env.Undefined());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference owner_ref_;
  BpfObject* owner_;
  bpf_object* obj_;
  int err_ = 0;
  std::string log_;
};

Napi::Function BpfObject::Init(Napi::Env env) {
  return DefineClass(
      env, "BpfObject",
      {
          InstanceMethod<&BpfObject::SetMapMaxEntries>("setMapMaxEntries"),
          InstanceMethod<&BpfObject::SetMapPinPath>("setMapPinPath"),
          InstanceMethod<&BpfObject::SetInitialValue>("setInitialValue"),
          InstanceMethod<&BpfObject::InitialValue>("initialValue"),
          InstanceMethod<&BpfObject::SetProgramAutoload>("setProgramAutoload"),
          InstanceMethod<&BpfObject::Load>("load"),
          InstanceMethod<&BpfObject::Programs>("programs"),
          InstanceMethod<&BpfObject::Program>("program"),
          InstanceMethod<&BpfObject::Maps>("maps"),
          InstanceMethod<&BpfObject::Map>("map"),
          InstanceMethod<&BpfObject::Close>("close"),
          InstanceAccessor<&BpfObject::GetPath>("path"),
          InstanceAccessor<&BpfObject::GetLoaded>("loaded"),
          InstanceAccessor<&BpfObject::GetClosed>("closed"),
          InstanceAccessor<&BpfObject::GetLoadLog>("loadLog"),
      });
}

BpfObject::BpfObject(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfObject>(info) {
  Napi::Env env = info.Env();
  path_ = StringArg(info, 0, "path");
  LibbpfLogCapture capture;
  bpf_object* obj = bpf_object__open_file(path_.c_str(), nullptr);
  if (obj == nullptr) {
    int err = errno;
    ThrowSysError(env, err, "bpf_object__open_file", "'" + path_ + "'", path_, capture.text());
  }
  obj_ = obj;
}

BpfObject::~BpfObject() {
  // Reached on GC or env teardown without close(). Freeing the object only
  // closes this process's fds; attachments are held by links.
  if (state_ != State::kLoading) Destroy();
}

void BpfObject::Destroy() {
  if (obj_ != nullptr) {
    bpf_object__close(obj_);
    obj_ = nullptr;
  }
  state_ = State::kClosed;
}

void BpfObject::FinishLoad(int err, std::string log) {
  load_log_ = std::move(log);
  if (close_requested_) {
    Destroy();
    return;
  }
  state_ = err == 0 ? State::kLoaded : State::kFailed;
}

void BpfObject::RequireNotLoading(Napi::Env env, const char* method) const {
  if (state_ == State::kClosed || close_requested_) ThrowError(env, "BpfObject is closed");
  if (state_ == State::kLoading) {
    ThrowError(env, std::string("BpfObject.") + method + "(): load() is still in progress");
  }
}

void BpfObject::RequireOpened(Napi::Env env, const char* method) const {
  RequireNotLoading(env, method);
  if (state_ != State::kOpened) {
    ThrowError(env, std::string("BpfObject.") + method + "() must be called before load()" +
                        (state_ == State::kFailed ? " (and load() already failed)" : ""));
  }
}

void BpfObject::RequireLoaded(Napi::Env env, const std::string& what) const {
  if (state_ == State::kClosed || close_requested_) {
    ThrowError(env, "BpfObject is closed" + (what.empty() ? std::string() : " (" + what + " belongs to it)"));
  }
  if (state_ == State::kLoading) ThrowError(env, what + ": load() is still in progress");
  if (state_ == State::kFailed) ThrowError(env, what + ": load() failed for this BpfObject");
  if (state_ != State::kLoaded) ThrowError(env, what + ": BpfObject is not loaded; call load() first");
}

bpf_map* BpfObject::FindMap(Napi::Env env, const std::string& name, const char* method) const {
  bpf_map* map = bpf_object__find_map_by_name(obj_, name.c_str());
  if (map == nullptr) {
    Napi::Error e = Napi::Error::New(env, std::string("BpfObject.") + method + "(): no map named '" +
                                              name + "' in '" + path_ + "'");
    e.Value().Set("code", "ENOENT");
    throw e;
  }
  return map;
}

bpf_program* BpfObject::FindProgram(Napi::Env env, const std::string& name, const char* method) const {
  bpf_program* prog = bpf_object__find_program_by_name(obj_, name.c_str());
  if (prog == nullptr) {
    Napi::Error e = Napi::Error::New(env, std::string("BpfObject.") + method +
                                              "(): no program named '" + name + "' in '" + path_ + "'");
    e.Value().Set("code", "ENOENT");
    throw e;
  }
  return prog;
}

Napi::Value BpfObject::SetMapMaxEntries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "map");
  uint32_t n = U32Arg(info, 1, "maxEntries");
  RequireOpened(env, "setMapMaxEntries");
  bpf_map* map = FindMap(env, name, "setMapMaxEntries");
  LibbpfLogCapture capture;
  int ret = bpf_map__set_max_entries(map, n);
  if (ret < 0) ThrowSysError(env, -ret, "bpf_map__set_max_entries", "map '" + name + "'", {}, capture.text());
  return env.Undefined();
}

Napi::Value BpfObject::SetMapPinPath(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "map");
  std::string path = StringArg(info, 1, "path");
  RequireOpened(env, "setMapPinPath");
  bpf_map* map = FindMap(env, name, "setMapPinPath");
  LibbpfLogCapture capture;
  int ret = bpf_map__set_pin_path(map, path.c_str());
  if (ret < 0) {
    ThrowSysError(env, -ret, "bpf_map__set_pin_path", "map '" + name + "' at '" + path + "'", path,
                  capture.text());
  }
  return env.Undefined();
}

Napi::Value BpfObject::SetInitialValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "map");
  Bytes value = BytesArg(info, 1, "value");
  RequireOpened(env, "setInitialValue");
  bpf_map* map = FindMap(env, name, "setInitialValue");
  size_t size = 0;
  if (bpf_map__initial_value(map, &size) == nullptr) {
    ThrowError(env, "BpfObject.setInitialValue(): map '" + name + "' has no initial value (not a global data section)");
  }
  if (value.size != size) {
    ThrowRangeError(env, "value: map '" + name + "' is " + std::to_string(size) + " bytes, got " +
                             std::to_string(value.size));
  }
  LibbpfLogCapture capture;
  int ret = bpf_map__set_initial_value(map, value.data, value.size);
  if (ret < 0) ThrowSysError(env, -ret, "bpf_map__set_initial_value", "map '" + name + "'", {}, capture.text());
  return env.Undefined();
}

Napi::Value BpfObject::InitialValue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "map");
  RequireNotLoading(env, "initialValue");
  if (state_ == State::kClosed) ThrowError(env, "BpfObject is closed");
  bpf_map* map = FindMap(env, name, "initialValue");
  size_t size = 0;
  const void* data = bpf_map__initial_value(map, &size);
  if (data == nullptr) return env.Null();
  return Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(data), size);
}

Napi::Value BpfObject::SetProgramAutoload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "program");
  bool autoload = BoolArg(info, 1, "autoload");
  RequireOpened(env, "setProgramAutoload");
  bpf_program* prog = FindProgram(env, name, "setProgramAutoload");
  int ret = bpf_program__set_autoload(prog, autoload);
  if (ret < 0) ThrowSysError(env, -ret, "bpf_program__set_autoload", "program '" + name + "'");
  return env.Undefined();
}

Napi::Value BpfObject::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireOpened(env, "load");
  auto* worker = new LoadWorker(env, this);
  Napi::Promise promise = worker->Promise();
  state_ = State::kLoading;
  worker->Queue();
  return promise;
}

Napi::Value BpfObject::Programs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireNotLoading(env, "programs");
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  bpf_program* prog;
  bpf_object__for_each_program(prog, obj_) {
    Napi::Object o = Napi::Object::New(env);
    enum bpf_prog_type type = bpf_program__type(prog);
    const char* type_name = libbpf_bpf_prog_type_str(type);
    const char* attach_name = libbpf_bpf_attach_type_str(bpf_program__expected_attach_type(prog));
    o.Set("name", bpf_program__name(prog));
    o.Set("type", Napi::Number::New(env, type));
    o.Set("typeName", type_name != nullptr ? type_name : "unknown");
    o.Set("sectionName", bpf_program__section_name(prog));
    o.Set("expectedAttachType", Napi::Number::New(env, bpf_program__expected_attach_type(prog)));
    o.Set("expectedAttachTypeName", attach_name != nullptr ? attach_name : "unknown");
    o.Set("autoload", bpf_program__autoload(prog));
    out.Set(i++, o);
  }
  return out;
}

Napi::Value BpfObject::Program(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "name");
  RequireLoaded(env, "BpfObject.program()");
  bpf_program* prog = FindProgram(env, name, "program");
  if (bpf_program__fd(prog) < 0) {
    ThrowError(env, "BpfObject.program(): program '" + name + "' was not loaded (autoload is off)");
  }
  return Program::New(env, this, Value(), prog);
}

Napi::Value BpfObject::Maps(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RequireNotLoading(env, "maps");
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  bpf_map* map;
  bpf_object__for_each_map(map, obj_) {
    Napi::Object o = Napi::Object::New(env);
    enum bpf_map_type type = bpf_map__type(map);
    const char* type_name = libbpf_bpf_map_type_str(type);
    o.Set("name", bpf_map__name(map));
    o.Set("type", Napi::Number::New(env, type));
    o.Set("typeName", type_name != nullptr ? type_name : "unknown");
    o.Set("keySize", Napi::Number::New(env, bpf_map__key_size(map)));
    o.Set("valueSize", Napi::Number::New(env, bpf_map__value_size(map)));
    o.Set("maxEntries", Napi::Number::New(env, bpf_map__max_entries(map)));
    o.Set("internal", bpf_map__is_internal(map));
    const char* pin = bpf_map__pin_path(map);
    if (pin != nullptr) o.Set("pinPath", pin);
    out.Set(i++, o);
  }
  return out;
}

Napi::Value BpfObject::Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = StringArg(info, 0, "name");
  RequireLoaded(env, "BpfObject.map()");
  bpf_map* map = FindMap(env, name, "map");
  if (bpf_map__fd(map) < 0) ThrowError(env, "BpfObject.map(): map '" + name + "' was not created");
  return Map::NewFromObject(env, this, Value(), map);
}

Napi::Value BpfObject::Close(const Napi::CallbackInfo& info) {
  if (state_ == State::kLoading) {
    close_requested_ = true;
  } else if (state_ != State::kClosed) {
    Destroy();
  }
  return info.Env().Undefined();
}

Napi::Value BpfObject::GetPath(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), path_); }

Napi::Value BpfObject::GetLoaded(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), state_ == State::kLoaded && !close_requested_);
}

Napi::Value BpfObject::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), state_ == State::kClosed || close_requested_);
}

Napi::Value BpfObject::GetLoadLog(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), load_log_);
}

}  // namespace weir
