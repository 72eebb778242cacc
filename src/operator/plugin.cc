// Entry point that MXNet calls when `mx.library.load` opens the plugin, and the plugin's error
// channel.
#include <mxnet/lib_api.h>

#include <mutex>
#include <sstream>

#include "op_common.h"

// lib_api keeps every error message of the process, and MXNet prints the whole list with each
// new error, so one bad call would repeat in every later error. The plugin adds one message with
// MX_ERROR_MSG and rewrites it for each error: MXNet then prints only the current one.
std::ostream& igc::error_message(const char* file, int line) {
  static std::mutex mutex;
  static std::stringstream* message = nullptr;
  const std::lock_guard<std::mutex> lock(mutex);
  if (message == nullptr) message = &MX_ERROR_MSG;
  message->str("");
  *message << file << "[" << line << "]: ";
  return *message;
}

mxnet::ext::MXReturnValue initialize(int version) {
  // lib_api's ABI (MX_LIBRARY_VERSION 11) is the one shipped with MXNet 1.9.
  if (version >= 10900) return mxnet::ext::MX_SUCCESS;
  IGC_ERROR << "IGC plugin: MXNet " << version / 10000 << "." << (version / 100) % 100
            << " is too old; MXNet >= 1.9 is required";
  return mxnet::ext::MX_FAIL;
}
