// Entry point that MXNet calls when `mx.library.load` opens the plugin, and the plugin's error
// channel.
#include <mxnet/lib_api.h>

#include <sstream>
#include <vector>

#include "op_common.h"

using mxnet::ext::MXReturnValue;

namespace {

// lib_api keeps every error message of the process in a private list and MXNet prints the whole
// list with each new error, so one bad call would repeat in every later error. The list is not
// reachable through lib_api's interface; explicit instantiation may name private members, which
// gives `fresh_error` a pointer to it.
using MessageList = std::vector<std::stringstream*> mxnet::ext::MXerrorMsgs::*;
struct MessagesTag {
  friend MessageList messages_member(MessagesTag);
};
template <MessageList kMember>
struct ExposeMessages {
  friend MessageList messages_member(MessagesTag) { return kMember; }
};
template struct ExposeMessages<&mxnet::ext::MXerrorMsgs::messages>;

}  // namespace

std::ostream& igc::fresh_error(const char* file, int line) {
  mxnet::ext::MXerrorMsgs* errors = mxnet::ext::MXerrorMsgs::get();
  std::vector<std::stringstream*>& messages = errors->*messages_member(MessagesTag());
  for (std::stringstream* m : messages) delete m;
  messages.clear();
  return errors->add(file, line);
}

MXReturnValue initialize(int version) {
  // lib_api's ABI (MX_LIBRARY_VERSION 11) is the one shipped with MXNet 1.9.
  if (version >= 10900) return mxnet::ext::MX_SUCCESS;
  IGC_ERROR << "IGC plugin: MXNet " << version / 10000 << "." << (version / 100) % 100
            << " is too old; MXNet >= 1.9 is required";
  return mxnet::ext::MX_FAIL;
}
