// RingBuffer delivers a BPF_MAP_TYPE_RINGBUF to JavaScript on Node's own
// event loop: libbpf's ring_buffer epoll fd is watched with a uv_poll_t on
// the env's loop (no extra thread), and each wake-up hands the callback one
// array of copied records.
//
// Lifetime: the RingBuffer works on a dup of the map fd, so it does not
// depend on the BpfObject staying open. While open it holds a strong
// reference to itself (it cannot be collected while it may call back) and,
// like a socket, keeps the loop alive unless unref()'d. close() stops the
// poll at once, closes the uv handle (its memory is freed in the close
// callback) and frees the ring buffer; it is idempotent and also runs at
// env teardown.
#pragma once

#include <napi.h>
#include <uv.h>

#include <string>

struct ring_buffer;

namespace weir {

class RingBuffer : public Napi::ObjectWrap<RingBuffer> {
 public:
  static Napi::Function Init(Napi::Env env);

  explicit RingBuffer(const Napi::CallbackInfo& info);
  ~RingBuffer() override;

 private:
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static int OnSample(void* ctx, void* data, size_t size);
  static void OnEnvCleanup(void* arg);

  // Consumes up to one batch and calls JS with it. Returns the number of
  // records delivered and sets *more when the batch cap stopped it early.
  size_t DeliverBatch(bool from_js, bool* more);
  void Shutdown();
  void Check(Napi::Env env) const;

  Napi::Value Consume(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Ref(const Napi::CallbackInfo& info);
  Napi::Value Unref(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);

  napi_env env_ = nullptr;
  ring_buffer* rb_ = nullptr;
  int map_fd_ = -1;
  uv_poll_t* poll_ = nullptr;
  Napi::FunctionReference callback_;
  Napi::AsyncContext* async_context_ = nullptr;
  std::string name_;
  bool open_ = false;
  bool cleanup_hook_ = false;
  // Filled by OnSample during one consume: the JS array under construction.
  napi_value batch_ = nullptr;
  uint32_t batch_len_ = 0;
  bool batch_failed_ = false;
};

}  // namespace weir
