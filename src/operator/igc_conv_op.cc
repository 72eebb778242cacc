// Registration of `IGCConv` with MXNet's extension API: attribute parsing and validation, shape
// and type inference, and the dispatch to the kernels in igc_conv_cpu.cc.
// Inputs: data (N, C, H, W), weight (F, C/G, kh, kw) and, unless no_bias, bias (F,).
// input_branches=B > 1 (one input channel per group): the conv reads Reorder(B) of data.
// act=relu6 clips the output to [0, 6]: an inference fusion made by
// network.optimize_for_inference; such an op has no backward (a clear error if one is asked for).
// in_act=none|relu|relu6: a training fusion made by network.fuse_input_batchnorms, four more
// inputs gamma, beta, mean, invstd (C,) between data and weight (the order in which the
// unfused graph reaches them, so that both list the same arguments in the same order): the
// conv reads BatchNormApply(data, gamma, beta, mean, invstd, act=in_act) without that tensor
// being written (where conv_transforms_input; elsewhere, float64 pointwise convs, it is made in
// the workspace first); its backward runs BatchNormApply's inside the conv's (on each block of
// channels once its gradient is complete over the batch; the pointwise ones on planes of 256
// values and more take its sums from each image's data gradient as they make it and write dx
// after; the other pointwise ones, and where the input is made first, after the conv's), with
// zero gradients for mean and invstd, as there.
// moments=True: a second output (2, F, 1, 1), what BatchNormMoments gives for the first (a
// training fusion by the same rewrite: the BatchNorm statistics of the output taken by the conv
// as it writes it, see ConvOutputMoments); it carries no gradient (a BlockGrad reads it).
// Every user error is reported through IGC_ERROR and surfaces as an MXNetError in Python.
#include <mxnet/lib_api.h>

#include <climits>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "batch_norm.h"
#include "igc_conv.h"
#include "op_common.h"

namespace {

using igc::Attrs;
using igc::Shape;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;

const char kOp[] = "IGCConv";

struct Params {
  int64_t num_filter = 0, kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1, pad_h = 0,
          pad_w = 0, num_group = 1, input_branches = 1;
  int act = igc::kConvNone;
  int in_act = -1;  // a BnActivation with in_act (four more inputs), -1 without
  bool no_bias = false, interleave = false, moments = false;
  // Inputs: data, (gamma, beta, mean, invstd), weight, (bias).
  int weight_index() const { return in_act >= 0 ? 5 : 1; }
  int num_inputs() const { return weight_index() + (no_bias ? 1 : 2); }
  int num_outputs() const { return moments ? 2 : 1; }
};

bool parse_pair(const Attrs& attrs, const char* name, bool required, int64_t minimum,
                int64_t* first, int64_t* second) {
  const auto it = attrs.find(name);
  if (it == attrs.end()) {
    if (!required) return true;
    IGC_ERROR << kOp << ": required attribute '" << name << "' is missing (e.g. " << name
              << "=(3, 3))";
    return false;
  }
  std::vector<int64_t> v;
  if (!igc::parse_list(it->second, igc::parse_int, &v) || v.size() != 2 || v[0] < minimum ||
      v[1] < minimum) {
    IGC_ERROR << kOp << ": attribute '" << name << "' must be a pair of integers >= " << minimum
              << " (2-D convolution only), got '" << it->second << "'";
    return false;
  }
  *first = v[0];
  *second = v[1];
  return true;
}

bool parse_scalar(const Attrs& attrs, const char* name, bool required, int64_t* value) {
  return igc::parse_count_attr(kOp, attrs, name, required, value);
}

bool parse_bool(const Attrs& attrs, const char* name, bool* value) {
  return igc::parse_bool_attr(kOp, attrs, name, value);
}

bool parse_params(const Attrs& attrs, Params* p) {
  if (!igc::check_known_attrs(kOp, attrs,
                              {"num_filter", "kernel", "stride", "pad", "dilate", "num_group",
                               "no_bias", "interleave", "input_branches", "act", "in_act",
                               "moments"})) {
    return false;
  }
  const auto in_act = attrs.find("in_act");
  if (in_act != attrs.end()) {
    const std::string& v = in_act->second;
    p->in_act = v == "none" ? igc::kBnNone : v == "relu" ? igc::kBnRelu
              : v == "relu6" ? igc::kBnRelu6 : -2;
    if (p->in_act == -2) {
      IGC_ERROR << kOp << ": attribute 'in_act' must be none, relu or relu6, got '" << v << "'";
      return false;
    }
  }
  const auto act = attrs.find("act");
  const std::string act_name = act == attrs.end() ? "none" : act->second;
  if (act_name == "none") {
    p->act = igc::kConvNone;
  } else if (act_name == "relu6") {
    p->act = igc::kConvRelu6;
  } else {
    IGC_ERROR << kOp << ": attribute 'act' must be none or relu6, got '" << act_name << "'";
    return false;
  }
  if (!parse_scalar(attrs, "num_filter", true, &p->num_filter) ||
      !parse_scalar(attrs, "num_group", false, &p->num_group) ||
      !parse_scalar(attrs, "input_branches", false, &p->input_branches) ||
      !parse_pair(attrs, "kernel", true, 1, &p->kernel_h, &p->kernel_w) ||
      !parse_pair(attrs, "stride", false, 1, &p->stride_h, &p->stride_w) ||
      !parse_pair(attrs, "pad", false, 0, &p->pad_h, &p->pad_w) ||
      !parse_bool(attrs, "no_bias", &p->no_bias) ||
      !parse_bool(attrs, "interleave", &p->interleave) ||
      !parse_bool(attrs, "moments", &p->moments)) {
    return false;
  }
  const auto dilate = attrs.find("dilate");
  if (dilate != attrs.end()) {
    std::vector<int64_t> v;
    if (!igc::parse_list(dilate->second, igc::parse_int, &v) || v.size() != 2 || v[0] != 1 ||
        v[1] != 1) {
      IGC_ERROR << kOp << ": dilation is not supported; attribute 'dilate' must be (1, 1), got '"
                << dilate->second << "'";
      return false;
    }
  }
  if (p->num_filter % p->num_group != 0) {
    IGC_ERROR << kOp << ": attribute 'num_group'=" << p->num_group
              << " does not divide 'num_filter'=" << p->num_filter;
    return false;
  }
  return true;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  *num_in = p.num_inputs();
  *num_out = p.num_outputs();
  return MX_SUCCESS;
}

// The name of input i (for messages).
std::string input_name(const Params& p, size_t i) {
  static const char* const kBn[] = {"gamma", "beta", "mean", "invstd"};
  const int w = p.weight_index();
  if (i == 0) return "data";
  if (static_cast<int>(i) < w) return kBn[i - 1];
  return static_cast<int>(i) == w ? "weight" : "bias";
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  int dtype = out_types->at(0);
  for (int t : *in_types) {
    if (t != -1) dtype = t;
  }
  if (in_types->at(0) != -1) dtype = in_types->at(0);
  if (dtype == -1) return MX_SUCCESS;
  if (dtype != igc::kFloat32 && dtype != igc::kFloat64) {
    IGC_ERROR << kOp << ": unsupported dtype " << igc::dtype_name(dtype)
              << "; supported: float32, float64";
    return MX_FAIL;
  }
  for (size_t i = 0; i < in_types->size(); ++i) {
    int& t = in_types->at(i);
    if (t != -1 && t != dtype) {
      IGC_ERROR << kOp << ": input '" << input_name(p, i) << "' has dtype " << igc::dtype_name(t)
                << " but 'data' has " << igc::dtype_name(dtype) << "; all inputs must match";
      return MX_FAIL;
    }
    t = dtype;
  }
  for (int& t : *out_types) t = dtype;
  return MX_SUCCESS;
}

// Checks that `shape`, when known (non-empty), equals `expected`; fills it in when unknown.
bool match_shape(const char* input, const Shape& data, const Shape& expected, Shape* shape) {
  if (shape->empty()) {
    *shape = expected;
    return true;
  }
  if (*shape == expected) return true;
  IGC_ERROR << kOp << ": input '" << input << "' has shape " << igc::shape_string(*shape)
            << " but data shape " << igc::shape_string(data) << " and the attributes need "
            << igc::shape_string(expected);
  return false;
}

// Whether attribute `name`'s `value` divides the channel count of `data` (an error if not).
bool divides_channels(const char* name, int64_t value, const Shape& data) {
  if (data[1] % value == 0) return true;
  IGC_ERROR << kOp << ": attribute '" << name << "'=" << value
            << " does not divide the input channel count " << data[1] << " of data shape "
            << igc::shape_string(data);
  return false;
}

// A permuted input (input_branches > 1) needs branches dividing the channels and one input
// channel per group: the kernels then map each group to one data channel.
bool check_input_branches(const Params& p, const Shape& data) {
  if (p.input_branches == 1) return true;
  if (!divides_channels("input_branches", p.input_branches, data)) return false;
  const int64_t channels = data[1];
  if (channels != p.num_group) {
    IGC_ERROR << kOp << ": attribute 'input_branches'=" << p.input_branches
              << " needs one input channel per group (num_group = input channels), got "
                 "'num_group'="
              << p.num_group << " for " << channels << " input channels";
    return false;
  }
  return true;
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<Shape>* in_shapes,
                          std::vector<Shape>* out_shapes) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const Shape& data = in_shapes->at(0);
  if (!igc::check_nchw_data(kOp, data)) return MX_FAIL;
  const int64_t channels = data[1];
  if (!divides_channels("num_group", p.num_group, data) || !check_input_branches(p, data)) {
    return MX_FAIL;
  }
  const int64_t padded_h = data[2] + 2 * p.pad_h, padded_w = data[3] + 2 * p.pad_w;
  if (padded_h < p.kernel_h || padded_w < p.kernel_w) {
    IGC_ERROR << kOp << ": attribute 'kernel'=(" << p.kernel_h << ", " << p.kernel_w
              << ") is larger than the padded input " << padded_h << "x" << padded_w
              << " (data shape " << igc::shape_string(data) << ", pad=(" << p.pad_h << ", "
              << p.pad_w << "))";
    return MX_FAIL;
  }
  const Shape weight{static_cast<unsigned>(p.num_filter),
                     static_cast<unsigned>(channels / p.num_group),
                     static_cast<unsigned>(p.kernel_h), static_cast<unsigned>(p.kernel_w)};
  const int w = p.weight_index();
  if (!match_shape("weight", data, weight, &in_shapes->at(w))) return MX_FAIL;
  if (!p.no_bias && !match_shape("bias", data, Shape{static_cast<unsigned>(p.num_filter)},
                                 &in_shapes->at(w + 1))) {
    return MX_FAIL;
  }
  for (int i = 1; i < w; ++i) {
    if (!match_shape(input_name(p, i).c_str(), data, Shape{static_cast<unsigned>(channels)},
                     &in_shapes->at(i))) {
      return MX_FAIL;
    }
  }
  out_shapes->at(0) = {data[0], static_cast<unsigned>(p.num_filter),
                       static_cast<unsigned>((padded_h - p.kernel_h) / p.stride_h + 1),
                       static_cast<unsigned>((padded_w - p.kernel_w) / p.stride_w + 1)};
  if (p.moments) out_shapes->at(1) = {2, static_cast<unsigned>(p.num_filter), 1, 1};
  return MX_SUCCESS;
}

// Geometry of a call, re-checked against the tensors: imperative calls may bypass inference.
bool geometry(const Params& p, const MXTensor& data, const MXTensor& weight,
              igc::ConvGeometry* g) {
  if (data.shape.size() != 4 || weight.shape.size() != 4 || data.shape[1] % p.num_group != 0 ||
      weight.shape[0] != p.num_filter || weight.shape[1] * p.num_group != data.shape[1] ||
      weight.shape[2] != p.kernel_h || weight.shape[3] != p.kernel_w ||
      data.shape[2] + 2 * p.pad_h < p.kernel_h || data.shape[3] + 2 * p.pad_w < p.kernel_w) {
    IGC_ERROR << kOp << ": data shape " << igc::shape_string({data.shape.begin(), data.shape.end()})
              << " and weight shape "
              << igc::shape_string({weight.shape.begin(), weight.shape.end()})
              << " do not match the attributes";
    return false;
  }
  if (!check_input_branches(p, {data.shape.begin(), data.shape.end()})) return false;
  if (!igc::check_cpu_float(kOp, data)) return false;
  *g = igc::ConvGeometry{data.shape[0], data.shape[1], data.shape[2], data.shape[3],
                         p.num_filter, p.num_group, p.kernel_h, p.kernel_w, p.stride_h,
                         p.stride_w, p.pad_h, p.pad_w, p.interleave, p.input_branches};
  return true;
}

void* workspace(const OpResource& res, int64_t bytes) {
  if (bytes > INT_MAX) {
    IGC_ERROR << kOp << ": needs " << bytes << " bytes of workspace, more than MXNet can lend";
    return nullptr;
  }
  void* ws = res.alloc_cpu(static_cast<int>(bytes));
  if (!ws) IGC_ERROR << kOp << ": could not allocate " << bytes << " bytes of workspace";
  return ws;
}

int64_t aligned(int64_t bytes) { return (bytes + 63) / 64 * 64; }

// Whether the four inputs from `first` are (C,) tensors of the data's dtype (imperative calls may
// bypass inference).
bool check_bn_inputs(const Params& p, const std::vector<MXTensor>& in, int first, int data) {
  for (int k = 0; k < 4; ++k) {
    const MXTensor& t = in[first + k];
    if (t.shape.size() != 1 || t.shape[0] != in[data].shape[1] || t.dtype != in[data].dtype) {
      IGC_ERROR << kOp << ": input '" << input_name(p, 1 + k) << "' must be a ("
                << in[data].shape[1] << ",) tensor of the data's dtype, got shape "
                << igc::shape_string({t.shape.begin(), t.shape.end()});
      return false;
    }
  }
  return true;
}

// The input BatchNorm of a call with in_act (gamma, beta, mean, invstd the inputs from `first`,
// the data at `data`): its per-channel scale and shift in the workspace after the conv's bytes
// and, where the kernels do not transform their input, the applied tensor after them.
struct InputBatchNorm {
  const std::vector<MXTensor>& in;
  int first, data;
  const Params& p;
  const igc::ConvGeometry& g;
  int dtype;
  int64_t channels, inner, elem;
  bool transformed;

  InputBatchNorm(const std::vector<MXTensor>& inputs, int first_bn, int data_index,
                 const Params& params, const igc::ConvGeometry& geometry)
      : in(inputs), first(first_bn), data(data_index), p(params), g(geometry),
        dtype(inputs[data_index].dtype), channels(geometry.in_channels),
        inner(geometry.height * geometry.width), elem(igc::dtype_bytes(dtype)),
        transformed(igc::conv_transforms_input(geometry, dtype)) {}

  const void* arg(int k) const { return in[first + k].data_ptr; }
  int64_t tensor_bytes() const { return aligned(g.batch * channels * inner * elem); }
  int64_t bytes() const {
    return 2 * aligned(channels * elem) + (transformed ? 0 : tensor_bytes());
  }

  // The conv's input (the data, or the applied tensor) and its transform (or null) for a call
  // whose workspace holds these bytes at `at`.
  const void* prepare(char* at, igc::ConvInputTransform* t) const {
    char* scale = at;
    char* shift = at + aligned(channels * elem);
    igc::bn_scale_shift_cpu(dtype, arg(0), arg(1), arg(2), arg(3), channels, scale, shift);
    *t = igc::ConvInputTransform{scale, shift, p.in_act};
    if (transformed) return in[data].data_ptr;
    void* applied = shift + aligned(channels * elem);
    igc::bn_apply_forward_cpu(dtype, in[data].data_ptr, arg(0), arg(1), arg(2), arg(3), applied,
                              g.batch, channels, inner, p.in_act);
    return applied;
  }
};

// inputs: [data, (gamma, beta, mean, invstd), weight, (bias)]; outputs: [out, (moments)].
// Workspace: the conv's, then the moments' row sums, then the input BatchNorm's.
MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  igc::ConvGeometry g;
  Params p;
  if (!igc::check_env_switches(kOp)) return MX_FAIL;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const int w = p.weight_index();
  if (!geometry(p, inputs->at(0), inputs->at(w), &g)) return MX_FAIL;
  const int dtype = inputs->at(0).dtype;
  const bool with_bn = p.in_act >= 0;
  if (with_bn && !check_bn_inputs(p, *inputs, 1, 0)) return MX_FAIL;
  const InputBatchNorm bn(*inputs, 1, 0, p, g);
  const int64_t bytes =
      aligned(igc::conv_forward_workspace_bytes(g, dtype, with_bn && bn.transformed));
  const int64_t sums_bytes = p.moments ? aligned(igc::conv_moments_sums_bytes(g)) : 0;
  const void* weight = inputs->at(w).data_ptr;
  const void* bias = p.no_bias ? nullptr : inputs->at(w + 1).data_ptr;
  char* ws = static_cast<char*>(workspace(res, bytes + sums_bytes + (with_bn ? bn.bytes() : 0)));
  if (!ws) return MX_FAIL;
  igc::ConvOutputMoments m{p.moments ? outputs->at(1).data_ptr : nullptr,
                           reinterpret_cast<double*>(ws + bytes)};
  const igc::ConvOutputMoments* moments = p.moments ? &m : nullptr;
  if (!with_bn) {
    igc::conv_forward_cpu(g, dtype, inputs->at(0).data_ptr, weight, bias, outputs->at(0).data_ptr,
                          ws, bytes, p.act, nullptr, moments);
    return MX_SUCCESS;
  }
  igc::ConvInputTransform t;
  const void* data = bn.prepare(ws + bytes + sums_bytes, &t);
  igc::conv_forward_cpu(g, dtype, data, weight, bias, outputs->at(0).data_ptr, ws, bytes, p.act,
                        bn.transformed ? &t : nullptr, moments);
  return MX_SUCCESS;
}

// inputs: [out grad, (moments grad), data, (gamma, beta, mean, invstd), weight, (bias), out,
// (moments)]; outputs: [data grad, (gamma grad, beta grad, mean grad, invstd grad), weight grad,
// (bias grad)]. The moments' gradient is not used (see the top of this file).
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* all_inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  igc::ConvGeometry g;
  Params p;
  if (!igc::check_env_switches(kOp)) return MX_FAIL;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  std::vector<MXTensor> in_list(*all_inputs);
  if (p.moments) in_list.erase(in_list.begin() + 1);
  std::vector<MXTensor>* inputs = &in_list;
  const int w = p.weight_index();
  if (!geometry(p, inputs->at(1), inputs->at(w + 1), &g)) return MX_FAIL;
  if (p.act != igc::kConvNone) {
    IGC_ERROR << kOp << ": attribute 'act'='" << attrs.at("act")
              << "' is an inference fusion (network.optimize_for_inference) and has no backward; "
                 "train with act='none' and a separate activation";
    return MX_FAIL;
  }
  const int dtype = inputs->at(1).dtype;
  const bool with_bn = p.in_act >= 0;
  if (with_bn && !check_bn_inputs(p, *inputs, 2, 1)) return MX_FAIL;
  const InputBatchNorm bn(*inputs, 2, 1, p, g);
  const int64_t bytes =
      aligned(igc::conv_backward_workspace_bytes(g, dtype, with_bn && bn.transformed));
  const void* weight = inputs->at(w + 1).data_ptr;
  void* weight_grad = outputs->at(w).data_ptr;
  void* bias_grad = p.no_bias ? nullptr : outputs->at(w + 1).data_ptr;
  if (!with_bn) {
    void* ws = workspace(res, bytes);
    if (!ws) return MX_FAIL;
    igc::conv_backward_cpu(g, dtype, inputs->at(0).data_ptr, inputs->at(1).data_ptr, weight,
                           outputs->at(0).data_ptr, weight_grad, bias_grad, ws, bytes);
    return MX_SUCCESS;
  }
  const int out = 1;  // outputs: data grad, then gamma, beta, mean, invstd grads
  for (int k = 2; k < 4; ++k) {
    std::memset(outputs->at(out + k).data_ptr, 0, bn.channels * bn.elem);
  }
  igc::ConvInputTransform t;
  if (bn.transformed) {
    // BatchNormApply's backward inside the conv's, a block of channels at a time.
    char* ws = static_cast<char*>(workspace(res, bytes + bn.bytes()));
    if (!ws) return MX_FAIL;
    const void* data = bn.prepare(ws + bytes, &t);
    t.mean = bn.arg(2);
    t.invstd = bn.arg(3);
    t.gamma_grad = outputs->at(out).data_ptr;
    t.beta_grad = outputs->at(out + 1).data_ptr;
    igc::conv_backward_cpu(g, dtype, inputs->at(0).data_ptr, data, weight,
                           outputs->at(0).data_ptr, weight_grad, bias_grad, ws, bytes, &t);
    return MX_SUCCESS;
  }
  // The conv's gradient of the applied values into the workspace, then BatchNormApply's backward.
  char* ws = static_cast<char*>(workspace(res, bytes + bn.tensor_bytes() + bn.bytes()));
  if (!ws) return MX_FAIL;
  char* applied_grad = ws + bytes;
  const void* data = bn.prepare(applied_grad + bn.tensor_bytes(), &t);
  igc::conv_backward_cpu(g, dtype, inputs->at(0).data_ptr, data, weight, applied_grad,
                         weight_grad, bias_grad, ws, bytes);
  igc::bn_apply_backward_cpu(dtype, applied_grad, inputs->at(1).data_ptr, bn.arg(0), bn.arg(1),
                             bn.arg(2), bn.arg(3), outputs->at(0).data_ptr,
                             outputs->at(out).data_ptr, outputs->at(out + 1).data_ptr, g.batch,
                             bn.channels, bn.inner, p.in_act);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(IGCConv)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");
