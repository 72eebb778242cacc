// Registration of `BatchNormMoments` and `BatchNormApply` (see batch_norm.h) with MXNet's
// extension API: attributes, shape and type inference, dispatch to batch_norm_cpu.cc.
// BatchNormMoments: data (N, C, ...) -> (2, C, 1, 1); no gradient (its input is a BlockGrad).
// BatchNormApply: data (N, C, ...), gamma, beta, mean, invstd (C,) -> out (N, C, ...); the
// gradients of mean and invstd are zero (they come from MXNet's BatchNorm statistics outputs).
#include <mxnet/lib_api.h>

#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "batch_norm.h"
#include "op_common.h"

namespace {

using igc::Attrs;
using igc::Shape;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;

const char kMoments[] = "BatchNormMoments";
const char kApply[] = "BatchNormApply";

bool parse_act(const Attrs& attrs, int* act) {
  if (!igc::check_known_attrs(kApply, attrs, {"act"})) return false;
  const auto it = attrs.find("act");
  const std::string value = it == attrs.end() ? "none" : it->second;
  if (value == "none") {
    *act = igc::kBnNone;
  } else if (value == "relu") {
    *act = igc::kBnRelu;
  } else if (value == "relu6") {
    *act = igc::kBnRelu6;
  } else {
    IGC_ERROR << kApply << ": attribute 'act' must be none, relu or relu6, got '" << value << "'";
    return false;
  }
  return true;
}

bool check_data_shape(const char* op, const Shape& data) {
  if (data.size() >= 2 && data[1] > 0) return true;
  IGC_ERROR << op << ": data must have rank >= 2 (channels on axis 1), got shape "
            << igc::shape_string(data);
  return false;
}

// (outer, channels, inner) of an (N, C, ...) tensor.
void split_shape(const std::vector<int64_t>& shape, int64_t* outer, int64_t* channels,
                 int64_t* inner) {
  *outer = shape[0];
  *channels = shape[1];
  *inner = 1;
  for (size_t i = 2; i < shape.size(); ++i) *inner *= shape[i];
}


MXReturnValue moments_parse(const Attrs& attrs, int* num_in, int* num_out) {
  if (!igc::check_known_attrs(kMoments, attrs, {})) return MX_FAIL;
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue moments_type(const Attrs&, std::vector<int>* in_types,
                           std::vector<int>* out_types) {
  return igc::same_float_types(kMoments, in_types, out_types);
}

MXReturnValue moments_shape(const Attrs&, std::vector<Shape>* in_shapes,
                            std::vector<Shape>* out_shapes) {
  const Shape& data = in_shapes->at(0);
  if (!check_data_shape(kMoments, data)) return MX_FAIL;
  out_shapes->at(0) = {2, data[1], 1, 1};
  return MX_SUCCESS;
}

MXReturnValue moments_forward(const Attrs&, std::vector<MXTensor>* inputs,
                              std::vector<MXTensor>* outputs, const OpResource&) {
  const MXTensor& x = inputs->at(0);
  if (!igc::check_env_switches(kMoments)) return MX_FAIL;
  if (!igc::check_cpu_float(kMoments, x)) return MX_FAIL;
  if (x.shape.size() < 2 || outputs->at(0).size() != 2 * x.shape[1]) {
    IGC_ERROR << kMoments << ": output must hold 2 x channels values";
    return MX_FAIL;
  }
  int64_t outer, channels, inner;
  split_shape(x.shape, &outer, &channels, &inner);
  if (outer * inner == 0) {
    IGC_ERROR << kMoments << ": data shape has no elements per channel";
    return MX_FAIL;
  }
  igc::bn_moments_cpu(x.dtype, x.data_ptr, outer, channels, inner, outputs->at(0).data_ptr);
  return MX_SUCCESS;
}

MXReturnValue apply_parse(const Attrs& attrs, int* num_in, int* num_out) {
  int act;
  if (!parse_act(attrs, &act)) return MX_FAIL;
  *num_in = 5;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue apply_type(const Attrs&, std::vector<int>* in_types, std::vector<int>* out_types) {
  return igc::same_float_types(kApply, in_types, out_types);
}

MXReturnValue apply_shape(const Attrs&, std::vector<Shape>* in_shapes,
                          std::vector<Shape>* out_shapes) {
  static const char* const kNames[] = {"data", "gamma", "beta", "mean", "invstd"};
  const Shape& data = in_shapes->at(0);
  if (!check_data_shape(kApply, data)) return MX_FAIL;
  const Shape per_channel{data[1]};
  for (size_t i = 1; i < in_shapes->size(); ++i) {
    Shape& s = in_shapes->at(i);
    if (s.empty()) {
      s = per_channel;
    } else if (s != per_channel) {
      IGC_ERROR << kApply << ": input '" << kNames[i] << "' has shape " << igc::shape_string(s)
                << " but data shape " << igc::shape_string(data) << " needs "
                << igc::shape_string(per_channel);
      return MX_FAIL;
    }
  }
  out_shapes->at(0) = data;
  return MX_SUCCESS;
}

bool check_apply_tensors(const std::vector<MXTensor>& t, size_t first) {
  const MXTensor& x = t[first];
  if (!igc::check_cpu_float(kApply, x)) return false;
  for (size_t i = first + 1; i < first + 5; ++i) {
    if (t[i].dtype != x.dtype || x.shape.size() < 2 || t[i].size() != x.shape[1]) {
      IGC_ERROR << kApply << ": gamma, beta, mean and invstd must be (channels,) of data's dtype";
      return false;
    }
  }
  return true;
}

// inputs: [data, gamma, beta, mean, invstd]; outputs: [out].
MXReturnValue apply_forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                            std::vector<MXTensor>* outputs, const OpResource&) {
  int act;
  if (!igc::check_env_switches(kApply)) return MX_FAIL;
  if (!parse_act(attrs, &act) || !check_apply_tensors(*inputs, 0)) return MX_FAIL;
  const std::vector<MXTensor>& in = *inputs;
  int64_t outer, channels, inner;
  split_shape(in[0].shape, &outer, &channels, &inner);
  igc::bn_apply_forward_cpu(in[0].dtype, in[0].data_ptr, in[1].data_ptr, in[2].data_ptr,
                            in[3].data_ptr, in[4].data_ptr, outputs->at(0).data_ptr, outer,
                            channels, inner, act);
  return MX_SUCCESS;
}

// inputs: [out grad, data, gamma, beta, mean, invstd, out];
// outputs: [data grad, gamma grad, beta grad, mean grad, invstd grad].
MXReturnValue apply_backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                             std::vector<MXTensor>* outputs, const OpResource&) {
  int act;
  if (!igc::check_env_switches(kApply)) return MX_FAIL;
  if (!parse_act(attrs, &act) || !check_apply_tensors(*inputs, 1)) return MX_FAIL;
  const std::vector<MXTensor>& in = *inputs;
  std::vector<MXTensor>& out = *outputs;
  int64_t outer, channels, inner;
  split_shape(in[1].shape, &outer, &channels, &inner);
  igc::bn_apply_backward_cpu(in[1].dtype, in[0].data_ptr, in[1].data_ptr, in[2].data_ptr,
                             in[3].data_ptr, in[4].data_ptr, in[5].data_ptr, out[0].data_ptr,
                             out[1].data_ptr, out[2].data_ptr, outer, channels, inner, act);
  const int64_t bytes = channels * igc::dtype_bytes(in[1].dtype);
  std::memset(out[3].data_ptr, 0, bytes);
  std::memset(out[4].data_ptr, 0, bytes);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(BatchNormMoments)
    .setParseAttrs(moments_parse)
    .setInferType(moments_type)
    .setInferShape(moments_shape)
    .setForward(moments_forward, "cpu");

REGISTER_OP(BatchNormApply)
    .setParseAttrs(apply_parse)
    .setInferType(apply_type)
    .setInferShape(apply_shape)
    .setForward(apply_forward, "cpu")
    .setBackward(apply_backward, "cpu");
