// Helpers shared by the lib_api registration files: attribute parsing and error messages.
// Only registration files include this (it depends on lib_api.h).
#ifndef IGC_OPERATOR_OP_COMMON_H_
#define IGC_OPERATOR_OP_COMMON_H_

#include <mxnet/lib_api.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <ostream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"

namespace igc {

// The attribute and shape types of lib_api's callbacks.
using Attrs = std::unordered_map<std::string, std::string>;
using Shape = std::vector<unsigned int>;

// Starts the error message of this call in lib_api's error list, replacing the previous one
// (see plugin.cc).
std::ostream& error_message(const char* file, int line);
#define IGC_ERROR ::igc::error_message(__FILE_NAME__, __LINE__)

// Whole-string integer parse: "3", " 3 " and "+3" are accepted, "3.5", "3x" and "" are not.
inline bool parse_int(const std::string& text, int64_t* value) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(begin, &end, 10);
  if (end == begin || errno == ERANGE) return false;
  while (*end == ' ') ++end;
  if (*end != '\0') return false;
  *value = v;
  return true;
}

// Whole-string float parse, as parse_int: strtof, the float nearest to the decimal (as MXNet reads
// its own float parameters).
inline bool parse_float(const std::string& text, float* value) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(begin, &end);
  if (end == begin || errno == ERANGE) return false;
  while (*end == ' ') ++end;
  if (*end != '\0') return false;
  *value = v;
  return true;
}

// "(3, 3)", "[3,3]" or "3,3" -> {3, 3}, each item read by `parse` (parse_int, parse_float); only
// a trailing comma, as in "(3,)", may leave an empty item.
template <typename T, typename Parse>
bool parse_list(std::string text, Parse parse, std::vector<T>* values) {
  for (char& ch : text) {
    if (ch == '(' || ch == ')' || ch == '[' || ch == ']') ch = ' ';
  }
  values->clear();
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? comma : comma - start);
    T v;
    if (parse(item, &v)) {
      values->push_back(v);
    } else if (!(comma == std::string::npos && item.find_first_not_of(' ') == std::string::npos &&
                 !values->empty())) {
      return false;
    }
    if (comma == std::string::npos) return true;
    start = comma + 1;
  }
}

// Optional integer attribute >= 1 (at most INT_MAX); a missing one is an error when `required`
// and leaves *value otherwise.
inline bool parse_count_attr(const char* op, const Attrs& attrs, const char* name, bool required,
                             int64_t* value) {
  const auto it = attrs.find(name);
  if (it == attrs.end()) {
    if (required) IGC_ERROR << op << ": required attribute '" << name << "' is missing";
    return !required;
  }
  if (!parse_int(it->second, value) || *value < 1 || *value > 2147483647) {
    IGC_ERROR << op << ": attribute '" << name << "' must be an integer >= 1, got '"
              << it->second << "'";
    return false;
  }
  return true;
}

// Optional boolean attribute ("True"/"true"/"1", "False"/"false"/"0"); a missing one leaves
// *value.
inline bool parse_bool_attr(const char* op, const Attrs& attrs, const char* name, bool* value) {
  const auto it = attrs.find(name);
  if (it == attrs.end()) return true;
  const std::string& s = it->second;
  if (s == "True" || s == "true" || s == "1") {
    *value = true;
  } else if (s == "False" || s == "false" || s == "0") {
    *value = false;
  } else {
    IGC_ERROR << op << ": attribute '" << name << "' must be True or False, got '" << s << "'";
    return false;
  }
  return true;
}

// Rejects misspelled attributes instead of silently ignoring them. MXNet's own keys
// ("__...__") pass through.
inline bool check_known_attrs(const char* op, const Attrs& attrs,
                              std::initializer_list<const char*> known) {
  for (const auto& kv : attrs) {
    if (kv.first.size() >= 2 && kv.first.compare(0, 2, "__") == 0) continue;
    bool ok = false;
    for (const char* k : known) ok = ok || kv.first == k;
    if (!ok) {
      std::ostringstream valid;
      for (const char* k : known) valid << (valid.tellp() > 0 ? ", " : "") << k;
      IGC_ERROR << op << ": unknown attribute '" << kv.first << "'; valid attributes: "
                   << valid.str();
      return false;
    }
  }
  return true;
}

// Refuses to run a CPU kernel while one of its environment switches (common.h) is set to a value
// that means neither on nor off.
inline bool check_env_switches(const char* op) {
  const char* name = bad_env_switch();
  if (name == nullptr) return true;
  IGC_ERROR << op << ": environment variable " << name << "='" << std::getenv(name)
            << "' must be 1 (on), 0 or empty (off), or unset";
  return false;
}

inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case 0: return "float32";
    case 1: return "float64";
    case 2: return "float16";
    case 3: return "uint8";
    case 4: return "int32";
    case 5: return "int8";
    case 6: return "int64";
    default: return "unknown";
  }
}

inline bool check_float_dtype(const char* op, const char* input, int dtype) {
  if (dtype_bytes(dtype) != 0) return true;
  IGC_ERROR << op << ": unsupported dtype " << dtype_name(dtype) << " (code " << dtype
               << ") for input '" << input << "'; supported: float32, float64, float16";
  return false;
}

// A float32 or float64 tensor on the CPU (the plugin's float kernels that take both); else an
// error naming the op.
inline bool check_cpu_float(const char* op, const mxnet::ext::MXTensor& t) {
  const int dtype = t.dtype;
  if (dtype != kFloat32 && dtype != kFloat64) {
    IGC_ERROR << op << ": unsupported dtype " << dtype_name(dtype)
              << "; supported: float32, float64";
    return false;
  }
  if (t.ctx.dev_type != "cpu") {
    IGC_ERROR << op << ": only CPU kernels are built; got a tensor on " << t.ctx.dev_type;
    return false;
  }
  return true;
}

// Type inference of such an op: every input and output takes data's dtype (input 0; else any
// known one), float32 or float64.
inline mxnet::ext::MXReturnValue same_float_types(const char* op, std::vector<int>* in_types,
                                                  std::vector<int>* out_types) {
  int dtype = -1;
  for (int t : *in_types) {
    if (t != -1) dtype = t;
  }
  if (in_types->at(0) != -1) dtype = in_types->at(0);
  if (dtype == -1) dtype = out_types->at(0);
  if (dtype == -1) return mxnet::ext::MX_SUCCESS;
  if (dtype != kFloat32 && dtype != kFloat64) {
    IGC_ERROR << op << ": unsupported dtype " << dtype_name(dtype)
              << "; supported: float32, float64";
    return mxnet::ext::MX_FAIL;
  }
  for (int& t : *in_types) {
    if (t != -1 && t != dtype) {
      IGC_ERROR << op << ": all inputs must have the dtype of 'data' (" << dtype_name(dtype)
                << "), got " << dtype_name(t);
      return mxnet::ext::MX_FAIL;
    }
    t = dtype;
  }
  for (int& t : *out_types) t = dtype;
  return mxnet::ext::MX_SUCCESS;
}

inline std::string shape_string(const std::vector<unsigned int>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

// MXNet hands an axis of unknown size to lib_api as (unsigned)-1. Under its default (legacy)
// shape mode an axis of size 0, as in a batch of 0 images, is read as unknown, and an output
// shape copied from it would be allocated as 4294967295 elements along that axis.
constexpr unsigned int kUnknownDim = static_cast<unsigned int>(-1);

inline bool check_known_shape(const char* op, const char* input,
                              const std::vector<unsigned int>& shape) {
  for (unsigned int d : shape) {
    if (d != kUnknownDim) continue;
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < shape.size(); ++i) {
      s << (i ? ", " : "");
      if (shape[i] == kUnknownDim) s << "?"; else s << shape[i];
    }
    s << (shape.size() == 1 ? ",)" : ")");
    IGC_ERROR << op << ": input '" << input << "' has shape " << s.str()
              << " with an axis of unknown size; in MXNet's default shape mode an axis of "
              << "size 0 (e.g. a batch of 0 images) reads as unknown: give every axis a size "
              << ">= 1, or turn on NumPy shape semantics (mx.util.set_np_shape(True)) for "
              << "zero-size arrays";
    return false;
  }
  return true;
}

// `data` of a 2-D convolution-like op: rank 4 (N, C, H, W), every axis known.
inline bool check_nchw_data(const char* op, const std::vector<unsigned int>& data) {
  if (data.size() != 4) {
    IGC_ERROR << op << ": data must be NCHW (rank 4), got shape " << shape_string(data);
    return false;
  }
  return check_known_shape(op, "data", data);
}

inline bool is_empty(const std::vector<int64_t>& shape) {
  for (int64_t d : shape) {
    if (d == 0) return true;
  }
  return false;
}

}  // namespace igc

#endif  // IGC_OPERATOR_OP_COMMON_H_
