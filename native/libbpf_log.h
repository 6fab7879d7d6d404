// libbpf reports through one process-wide print callback. To attach that
// text to the error of the call that produced it (verifier logs above all),
// the callback appends to a thread-local buffer while a LibbpfLogCapture is
// alive on the calling thread. Loads run on libuv's thread pool, so each
// load captures its own text even when several run at once.
#pragma once

#include <string>

namespace weir {

// Installs the print callback. Idempotent; safe from several envs.
void InstallLibbpfPrint();

class LibbpfLogCapture {
 public:
  // Appends WARN and INFO messages to *sink (or an internal buffer).
  explicit LibbpfLogCapture(std::string* sink = nullptr);
  ~LibbpfLogCapture();
  LibbpfLogCapture(const LibbpfLogCapture&) = delete;
  LibbpfLogCapture& operator=(const LibbpfLogCapture&) = delete;

  const std::string& text() const { return *sink_; }

 private:
  std::string own_;
  std::string* sink_;
  std::string* previous_;
};

}  // namespace weir
