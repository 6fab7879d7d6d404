#include "ring_buffer.h"

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "addon_data.h"
#include "errors.h"
#include "libbpf_log.h"
#include "map.h"

namespace weir {

namespace {

// Records per callback. A full 4 MiB ring of small records would otherwise
// become one huge array and one long turn of the event loop; past the cap
// the sample callback stops the consume and the level-triggered poll wakes
// us again on the next loop iteration.
constexpr uint32_t kMaxBatch = 4096;
constexpr int kBatchFull = -EAGAIN;

}  // namespace

Napi::Function RingBuffer::Init(Napi::Env env) {
  return DefineClass(env, "RingBuffer",
                     {
                         InstanceMethod<&RingBuffer::Consume>("consume"),
                         InstanceMethod<&RingBuffer::Close>("close"),
                         InstanceMethod<&RingBuffer::Ref>("ref"),
                         InstanceMethod<&RingBuffer::Unref>("unref"),
                         InstanceAccessor<&RingBuffer::GetClosed>("closed"),
                     });
}

RingBuffer::RingBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingBuffer>(info) {
  Napi::Env env = info.Env();
  env_ = env;
  AddonData& data = GetAddonData(env);
  if (!info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(data.map.Value())) {
    ThrowTypeError(env, "map must be a Map (from BpfObject.map() or Map.openPinned())");
  }
  if (!info[1].IsFunction()) ThrowTypeError(env, "onRecords must be a function");
  Map* map = Napi::ObjectWrap<Map>::Unwrap(info[0].As<Napi::Object>());
  int fd = map->Fd(env);
  name_ = map->name();
  if (map->type() != BPF_MAP_TYPE_RINGBUF) {
    const char* t = libbpf_bpf_map_type_str(static_cast<enum bpf_map_type>(map->type()));
    ThrowTypeError(env, "map: '" + name_ + "' is a " + (t != nullptr ? t : "unknown") +
                            " map, not a ringbuf");
  }

  map_fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (map_fd_ < 0) ThrowSysError(env, errno, "fcntl", "dup of ring buffer map '" + name_ + "' fd");
  LibbpfLogCapture capture;
  rb_ = ring_buffer__new(map_fd_, &RingBuffer::OnSample, this, nullptr);
  if (rb_ == nullptr) {
    int err = errno;
    close(map_fd_);
    map_fd_ = -1;
    ThrowSysError(env, err, "ring_buffer__new", "map '" + name_ + "'", {}, capture.text());
  }

  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Shutdown();
    ThrowError(env, "RingBuffer: cannot get the event loop of this environment");
  }
  poll_ = new uv_poll_t;
  int rc = uv_poll_init(loop, poll_, ring_buffer__epoll_fd(rb_));
  if (rc == 0) {
    poll_->data = this;
    rc = uv_poll_start(poll_, UV_READABLE, &RingBuffer::OnPoll);
    if (rc != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
      poll_ = nullptr;
    }
  } else {
    delete poll_;
    poll_ = nullptr;
  }
  if (rc != 0) {
    Shutdown();
    ThrowSysError(env, -rc, "uv_poll_start", "ring buffer '" + name_ + "'");
  }

  callback_ = Napi::Persistent(info[1].As<Napi::Function>());
  async_context_ = new Napi::AsyncContext(env, "weir:RingBuffer");
  open_ = true;
  // Cannot be collected while it may still call back; close() undoes this.
  Napi::ObjectWrap<RingBuffer>::Ref();
  napi_add_env_cleanup_hook(env, &RingBuffer::OnEnvCleanup, this);
  cleanup_hook_ = true;
}

RingBuffer::~RingBuffer() {
  Shutdown();
  if (cleanup_hook_) napi_remove_env_cleanup_hook(env_, &RingBuffer::OnEnvCleanup, this);
  delete async_context_;
}

void RingBuffer::OnEnvCleanup(void* arg) {
  auto* self = static_cast<RingBuffer*>(arg);
  self->cleanup_hook_ = false;  // hooks run once; do not remove it again
  self->Shutdown();
}

void RingBuffer::Shutdown() {
  if (poll_ != nullptr) {
    // Effective immediately: no callback after this, even a pending one.
    uv_poll_stop(poll_);
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  // Safe once the poll is stopped: libuv no longer watches the epoll fd.
  if (rb_ != nullptr) {
    ring_buffer__free(rb_);
    rb_ = nullptr;
  }
  if (map_fd_ >= 0) {
    close(map_fd_);
    map_fd_ = -1;
  }
  open_ = false;
}

void RingBuffer::Check(Napi::Env env) const {
  if (!open_) ThrowError(env, "RingBuffer '" + name_ + "' is closed");
}

int RingBuffer::OnSample(void* ctx, void* data, size_t size) {
  // Called synchronously from ring_buffer__consume() on the JS thread, so
  // the records can be copied straight into JS Buffers. Plain N-API calls:
  // no C++ exception may cross libbpf's C frames.
  auto* self = static_cast<RingBuffer*>(ctx);
  napi_value buf;
  void* out = nullptr;
  if (napi_create_buffer_copy(self->env_, size, data, &out, &buf) != napi_ok ||
      napi_set_element(self->env_, self->batch_, self->batch_len_, buf) != napi_ok) {
    self->batch_failed_ = true;
    return -ENOMEM;
  }
  self->batch_len_++;
  return self->batch_len_ >= kMaxBatch ? kBatchFull : 0;
}

size_t RingBuffer::DeliverBatch(bool from_js, bool* more) {
  Napi::Env env(env_);
  *more = false;
  Napi::Array batch = Napi::Array::New(env);
  batch_ = batch;
  batch_len_ = 0;
  batch_failed_ = false;
  int ret = ring_buffer__consume(rb_);
  batch_ = nullptr;
  uint32_t n = batch_len_;
  if (ret == kBatchFull) {
    *more = true;
  } else if (ret < 0 || batch_failed_) {
    int err = batch_failed_ ? ENOMEM : -ret;
    Napi::Error e = MakeSysError(env, {err, "ring_buffer__consume", "ring buffer '" + name_ + "'", {}, {}, "libbpfLog"});
    if (from_js) throw e;
    napi_fatal_exception(env_, e.Value());
    return 0;
  }
  if (n == 0) return 0;
  if (from_js) {
    callback_.Call({batch});
  } else {
    // MakeCallback: runs the microtask queue afterwards (promises resolved
    // by the callback settle now) and reports throws as uncaught. N-API
    // needs an object receiver here.
    callback_.MakeCallback(env.Global(), {batch}, *async_context_);
  }
  return n;
}

void RingBuffer::OnPoll(uv_poll_t* handle, int status, int /*events*/) {
  auto* self = static_cast<RingBuffer*>(handle->data);
  if (!self->open_) return;
  Napi::Env env(self->env_);
  Napi::HandleScope scope(env);
  if (status < 0) {
    Napi::Error e = MakeSysError(env, {-status, "uv_poll", "ring buffer '" + self->name_ + "'", {}, {}, "libbpfLog"});
    self->Shutdown();
    self->callback_.Reset();
    self->Napi::ObjectWrap<RingBuffer>::Unref();
    napi_fatal_exception(self->env_, e.Value());
    return;
  }
  bool more = false;
  try {
    self->DeliverBatch(false, &more);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(self->env_, e.Value());
  }
  // If more records are pending the poll stays readable and fires again.
}

Napi::Value RingBuffer::Consume(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Check(env);
  size_t total = 0;
  bool more = true;
  while (more && open_) total += DeliverBatch(true, &more);
  return Napi::Number::New(env, static_cast<double>(total));
}

Napi::Value RingBuffer::Close(const Napi::CallbackInfo& info) {
  if (open_) {
    Shutdown();
    callback_.Reset();
    Napi::ObjectWrap<RingBuffer>::Unref();
  }
  return info.Env().Undefined();
}

Napi::Value RingBuffer::Ref(const Napi::CallbackInfo& info) {
  Check(info.Env());
  uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  return info.Env().Undefined();
}

Napi::Value RingBuffer::Unref(const Napi::CallbackInfo& info) {
  Check(info.Env());
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  return info.Env().Undefined();
}

Napi::Value RingBuffer::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !open_); }

}  // namespace weir
