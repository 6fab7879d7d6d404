#include "program.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <vector>

#include "addon_data.h"
#include "args.h"
#include "bpf_object.h"
#include "errors.h"
#include "libbpf_log.h"
#include "link.h"

namespace weir {

namespace {

struct ProgramInit {
  BpfObject* owner;
  Napi::Object owner_value;
  bpf_program* prog;
};

// What BPF_PROG_TEST_RUN needs, copied out of JS so that the async variant
// can run it on the thread pool without touching N-API.
struct TestRunSpec {
  std::vector<uint8_t> data;
  std::vector<uint8_t> ctx;
  bool has_ctx = false;
  uint32_t repeat = 1;
  uint32_t data_size_out = 0;
};

struct TestRunResult {
  int err = 0;
  uint32_t retval = 0;
  uint32_t duration_ns = 0;
  std::vector<uint8_t> data_out;
  std::vector<uint8_t> ctx_out;
  bool has_data_out = false;
  bool has_ctx_out = false;
};

// Room for programs that grow the packet (tc, xdp); cgroup_skb never does.
constexpr uint32_t kDataOutHeadroom = 256;

TestRunSpec ParseTestRunSpec(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject()) ThrowTypeError(env, "options must be an object {data, ctx?, repeat?, dataSizeOut?}");
  Napi::Object opts = info[0].As<Napi::Object>();
  TestRunSpec spec;
  Napi::Value data = opts.Get("data");
  if (!data.IsUndefined()) {
    Bytes b = BytesValue(env, data, "options.data");
    spec.data.assign(b.data, b.data + b.size);
  }
  Napi::Value ctx = opts.Get("ctx");
  if (!ctx.IsUndefined()) {
    Bytes b = BytesValue(env, ctx, "options.ctx");
    spec.ctx.assign(b.data, b.data + b.size);
    spec.has_ctx = true;
  }
  Napi::Value repeat = opts.Get("repeat");
  if (!repeat.IsUndefined()) spec.repeat = U32Value(env, repeat, "options.repeat");
  Napi::Value out = opts.Get("dataSizeOut");
  spec.data_size_out = out.IsUndefined() ? (spec.data.empty() ? 0 : static_cast<uint32_t>(spec.data.size()) + kDataOutHeadroom)
                                         : U32Value(env, out, "options.dataSizeOut");
  return spec;
}

// No N-API here: called from the thread pool by TestRunWorker.
TestRunResult RunTestRun(int prog_fd, const TestRunSpec& spec) {
  TestRunResult r;
  r.data_out.resize(spec.data_size_out);
  r.ctx_out.resize(spec.ctx.size());
  LIBBPF_OPTS(bpf_test_run_opts, opts);
  if (!spec.data.empty()) {
    opts.data_in = spec.data.data();
    opts.data_size_in = static_cast<uint32_t>(spec.data.size());
  }
  if (spec.data_size_out > 0) {
    opts.data_out = r.data_out.data();
    opts.data_size_out = spec.data_size_out;
  }
  if (spec.has_ctx) {
    opts.ctx_in = spec.ctx.data();
    opts.ctx_size_in = static_cast<uint32_t>(spec.ctx.size());
    opts.ctx_out = r.ctx_out.data();
    opts.ctx_size_out = static_cast<uint32_t>(r.ctx_out.size());
  }
  opts.repeat = spec.repeat;
  int ret = bpf_prog_test_run_opts(prog_fd, &opts);
  if (ret < 0) {
    r.err = -ret;
    return r;
  }
  r.retval = opts.retval;
  r.duration_ns = opts.duration;
  if (spec.data_size_out > 0) {
    r.data_out.resize(opts.data_size_out < spec.data_size_out ? opts.data_size_out : spec.data_size_out);
    r.has_data_out = true;
  }
  if (spec.has_ctx) {
    r.ctx_out.resize(opts.ctx_size_out < spec.ctx.size() ? opts.ctx_size_out : spec.ctx.size());
    r.has_ctx_out = true;
  }
  return r;
}

Napi::Object TestRunResultToJs(Napi::Env env, const TestRunResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("retval", Napi::Number::New(env, r.retval));
  o.Set("durationNs", Napi::Number::New(env, r.duration_ns));
  if (r.has_data_out) o.Set("dataOut", Napi::Buffer<uint8_t>::Copy(env, r.data_out.data(), r.data_out.size()));
  if (r.has_ctx_out) o.Set("ctxOut", Napi::Buffer<uint8_t>::Copy(env, r.ctx_out.data(), r.ctx_out.size()));
  return o;
}

// For large repeat counts. Works on a dup of the program fd so that closing
// the BpfObject meanwhile cannot hand the kernel a recycled fd number.
class TestRunWorker : public Napi::AsyncWorker {
 public:
  TestRunWorker(Napi::Env env, int prog_fd, TestRunSpec spec, std::string name)
      : Napi::AsyncWorker(env, "weir:bpf_prog_test_run"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_(prog_fd),
        spec_(std::move(spec)),
        name_(std::move(name)) {}

  ~TestRunWorker() override {
    if (fd_ >= 0) close(fd_);
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override { result_ = RunTestRun(fd_, spec_); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (result_.err != 0) {
      SysErrorSpec spec;
      spec.err = result_.err;
      spec.syscall = "bpf_prog_test_run_opts";
      spec.context = "program '" + name_ + "'";
      deferred_.Reject(MakeSysError(env, spec).Value());
      return;
    }
    deferred_.Resolve(TestRunResultToJs(env, result_));
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  TestRunSpec spec_;
  std::string name_;
  TestRunResult result_;
};

}  // namespace

Napi::Function Program::Init(Napi::Env env) {
  return DefineClass(env, "Program",
                     {
                         InstanceMethod<&Program::AttachCgroup>("attachCgroup"),
                         InstanceMethod<&Program::TestRun>("testRun"),
                         InstanceMethod<&Program::TestRunAsync>("testRunAsync"),
                         InstanceMethod<&Program::Close>("close"),
                         InstanceAccessor<&Program::GetName>("name"),
                         InstanceAccessor<&Program::GetFd>("fd"),
                         InstanceAccessor<&Program::GetType>("type"),
                         InstanceAccessor<&Program::GetTypeName>("typeName"),
                         InstanceAccessor<&Program::GetSectionName>("sectionName"),
                         InstanceAccessor<&Program::GetExpectedAttachType>("expectedAttachType"),
                         InstanceAccessor<&Program::GetId>("id"),
                         InstanceAccessor<&Program::GetTag>("tag"),
                         InstanceAccessor<&Program::GetClosed>("closed"),
                     });
}

Napi::Object Program::New(Napi::Env env, BpfObject* owner, Napi::Object owner_value, bpf_program* prog) {
  ProgramInit init{owner, owner_value, prog};
  return GetAddonData(env).program.New({Napi::External<ProgramInit>::New(env, &init)});
}

Program::Program(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Program>(info) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    ThrowTypeError(info.Env(), "Program cannot be constructed directly; use BpfObject.program(name)");
  }
  auto* init = info[0].As<Napi::External<ProgramInit>>().Data();
  owner_ = init->owner;
  owner_ref_ = Napi::Persistent(init->owner_value);
  prog_ = init->prog;
  name_ = bpf_program__name(prog_);
}

bpf_program* Program::Handle(Napi::Env env, const char* what) const {
  if (closed_) ThrowError(env, "Program '" + name_ + "' is closed");
  owner_->RequireLoaded(env, "program '" + name_ + "'" + (what != nullptr ? std::string(" ") + what : ""));
  return prog_;
}

Napi::Value Program::AttachCgroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StringArg(info, 0, "cgroupPath");
  bpf_program* prog = Handle(env, "attachCgroup");
  int cg = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) ThrowSysError(env, errno, "open", "cgroup '" + path + "'", path);
  LibbpfLogCapture capture;
  // A BPF_LINK_CREATE link: multi-attach, never replaces programs others
  // attached to the same cgroup (a CNI's), detached only when the link's
  // last reference (fd or pin) goes away or on detach().
  bpf_link* link = bpf_program__attach_cgroup(prog, cg);
  int err = link == nullptr ? errno : 0;
  close(cg);
  if (link == nullptr) {
    ThrowSysError(env, err, "bpf_program__attach_cgroup", "program '" + name_ + "' to cgroup '" + path + "'",
                  path, capture.text());
  }
  return Link::New(env, link);
}

Napi::Value Program::TestRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TestRunSpec spec = ParseTestRunSpec(info);
  bpf_program* prog = Handle(env, "testRun");
  TestRunResult r = RunTestRun(bpf_program__fd(prog), spec);
  if (r.err != 0) ThrowSysError(env, r.err, "bpf_prog_test_run_opts", "program '" + name_ + "'");
  return TestRunResultToJs(env, r);
}

Napi::Value Program::TestRunAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TestRunSpec spec = ParseTestRunSpec(info);
  bpf_program* prog = Handle(env, "testRunAsync");
  int fd = fcntl(bpf_program__fd(prog), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) ThrowSysError(env, errno, "fcntl", "dup of program '" + name_ + "' fd");
  auto* worker = new TestRunWorker(env, fd, std::move(spec), name_);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Program::Close(const Napi::CallbackInfo& info) {
  // Releases this handle only: the program belongs to its BpfObject.
  if (!closed_) {
    closed_ = true;
    owner_ref_.Reset();
  }
  return info.Env().Undefined();
}

Napi::Value Program::GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }

Napi::Value Program::GetFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), bpf_program__fd(Handle(info.Env(), "fd")));
}

Napi::Value Program::GetType(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), bpf_program__type(Handle(info.Env(), "type")));
}

Napi::Value Program::GetTypeName(const Napi::CallbackInfo& info) {
  const char* s = libbpf_bpf_prog_type_str(bpf_program__type(Handle(info.Env(), "typeName")));
  return Napi::String::New(info.Env(), s != nullptr ? s : "unknown");
}

Napi::Value Program::GetSectionName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), bpf_program__section_name(Handle(info.Env(), "sectionName")));
}

Napi::Value Program::GetExpectedAttachType(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), bpf_program__expected_attach_type(Handle(info.Env(), "expectedAttachType")));
}

namespace {

bpf_prog_info ProgInfoOf(Napi::Env env, int fd, const std::string& name) {
  bpf_prog_info pinfo = {};
  uint32_t len = sizeof(pinfo);
  if (bpf_obj_get_info_by_fd(fd, &pinfo, &len) < 0) {
    ThrowSysError(env, errno, "bpf_obj_get_info_by_fd", "program '" + name + "'");
  }
  return pinfo;
}

}  // namespace

Napi::Value Program::GetId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::Number::New(env, ProgInfoOf(env, bpf_program__fd(Handle(env, "id")), name_).id);
}

Napi::Value Program::GetTag(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_prog_info pinfo = ProgInfoOf(env, bpf_program__fd(Handle(env, "tag")), name_);
  char hex[2 * BPF_TAG_SIZE + 1];
  for (int i = 0; i < BPF_TAG_SIZE; i++) snprintf(hex + 2 * i, 3, "%02x", pinfo.tag[i]);
  return Napi::String::New(env, hex);
}

Napi::Value Program::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), closed_ || owner_->closed());
}

}  // namespace weir
