// Registration of `IGCBlock` (see igc_block.h) with MXNet's extension API: an inference-only op
// (forward, CPU, float32) that network.optimize_for_inference puts in place of a folded
// IGCV3 / MobileNetV2 block.
// Inputs: data (N, C, H, W), exp_weight (E, C/G, 1, 1), exp_bias (E,), dw_weight (E, 1, 3, 3),
// dw_bias (E,), lin_weight (num_filter, E/G, 1, 1), lin_bias (num_filter,).
// Attributes: expanded (E), num_filter, num_group (G, default 1), stride (1 or 2, default 1),
// interleave (Reorder(G) after the expansion, default False), residual (add data, default False),
// packed_weights (default False): exp_weight (E * C/G,) and lin_weight (num_filter * E/G,) in
// the packed layout of igc_block.h, run by the channel-blocked kernel.
#include <mxnet/lib_api.h>

#include <climits>
#include <string>
#include <unordered_map>
#include <vector>

#include "igc_block.h"
#include "op_common.h"

namespace {

using igc::Attrs;
using igc::Shape;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;

const char kOp[] = "IGCBlock";
const char* const kInputs[] = {"data",    "exp_weight", "exp_bias",  "dw_weight",
                               "dw_bias", "lin_weight", "lin_bias"};
constexpr int kNumInputs = 7;

struct Params {
  int64_t expanded = 0, num_filter = 0, num_group = 1, stride = 1;
  bool interleave = false, residual = false, packed = false;
};

bool parse_params(const Attrs& attrs, Params* p) {
  if (!igc::check_known_attrs(kOp, attrs, {"expanded", "num_filter", "num_group", "stride",
                                           "interleave", "residual", "packed_weights"})) {
    return false;
  }
  if (!igc::parse_count_attr(kOp, attrs, "expanded", true, &p->expanded) ||
      !igc::parse_count_attr(kOp, attrs, "num_filter", true, &p->num_filter) ||
      !igc::parse_count_attr(kOp, attrs, "num_group", false, &p->num_group) ||
      !igc::parse_count_attr(kOp, attrs, "stride", false, &p->stride) ||
      !igc::parse_bool_attr(kOp, attrs, "interleave", &p->interleave) ||
      !igc::parse_bool_attr(kOp, attrs, "residual", &p->residual) ||
      !igc::parse_bool_attr(kOp, attrs, "packed_weights", &p->packed)) {
    return false;
  }
  if (p->stride > 2) {
    IGC_ERROR << kOp << ": attribute 'stride' must be 1 or 2, got " << p->stride;
    return false;
  }
  if (p->expanded % p->num_group || p->num_filter % p->num_group) {
    IGC_ERROR << kOp << ": attribute 'num_group'=" << p->num_group << " must divide 'expanded'="
              << p->expanded << " and 'num_filter'=" << p->num_filter;
    return false;
  }
  if (p->packed && ((p->expanded / p->num_group) % 8 || (p->num_filter / p->num_group) % 8)) {
    IGC_ERROR << kOp << ": packed_weights needs multiples of 8 expanded and output channels per "
              << "group, got expanded=" << p->expanded << ", num_filter=" << p->num_filter
              << ", num_group=" << p->num_group;
    return false;
  }
  return true;
}

igc::BlockGeometry geometry(const Params& p, const std::vector<int64_t>& data) {
  igc::BlockGeometry g{};
  g.batch = data[0];
  g.in_channels = data[1];
  g.height = data[2];
  g.width = data[3];
  g.expanded = p.expanded;
  g.out_channels = p.num_filter;
  g.groups = p.num_group;
  g.stride = p.stride;
  g.interleave = p.interleave;
  g.residual = p.residual;
  return g;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  *num_in = kNumInputs;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    const int t = in_types->at(i);
    if (t != -1 && t != igc::kFloat32) {
      IGC_ERROR << kOp << ": input '" << kInputs[i] << "' is " << igc::dtype_name(t)
                << "; only float32 is supported";
      return MX_FAIL;
    }
    in_types->at(i) = igc::kFloat32;
  }
  out_types->at(0) = igc::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<Shape>* in_shapes,
                          std::vector<Shape>* out_shapes) {
  Params p;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const Shape& data = in_shapes->at(0);
  if (!igc::check_nchw_data(kOp, data)) return MX_FAIL;
  const unsigned int C = data[1], E = p.expanded, F = p.num_filter, G = p.num_group;
  if (C % G) {
    IGC_ERROR << kOp << ": num_group=" << G << " does not divide the " << C << " input channels";
    return MX_FAIL;
  }
  if (p.residual && (p.stride != 1 || C != F)) {
    IGC_ERROR << kOp << ": residual needs stride 1 and num_filter equal to the " << C
              << " input channels, got stride " << p.stride << ", num_filter " << F;
    return MX_FAIL;
  }
  const Shape expected[kNumInputs] = {
      data, p.packed ? Shape{E * (C / G)} : Shape{E, C / G, 1, 1}, {E}, {E, 1, 3, 3}, {E},
      p.packed ? Shape{F * (E / G)} : Shape{F, E / G, 1, 1}, {F}};
  for (int i = 1; i < kNumInputs; ++i) {
    Shape& s = in_shapes->at(i);
    if (s.empty()) {
      s = expected[i];
    } else if (s != expected[i]) {
      IGC_ERROR << kOp << ": input '" << kInputs[i] << "' has shape " << igc::shape_string(s)
                << ", expected " << igc::shape_string(expected[i]);
      return MX_FAIL;
    }
  }
  const unsigned int S = static_cast<unsigned int>(p.stride);
  out_shapes->at(0) = {data[0], F, (data[2] - 1) / S + 1, (data[3] - 1) / S + 1};
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  Params p;
  if (!igc::check_env_switches(kOp)) return MX_FAIL;
  if (!parse_params(attrs, &p)) return MX_FAIL;
  const std::vector<MXTensor>& in = *inputs;
  for (int i = 0; i < kNumInputs; ++i) {
    if (static_cast<int>(in[i].dtype) != igc::kFloat32 || in[i].ctx.dev_type != "cpu") {
      IGC_ERROR << kOp << ": input '" << kInputs[i] << "' must be float32 on the CPU (the op "
                << "has only a CPU float32 kernel), got " << igc::dtype_name(in[i].dtype)
                << " on " << in[i].ctx.dev_type;
      return MX_FAIL;
    }
  }
  if (in[0].shape.size() != 4 || igc::is_empty(in[0].shape)) {
    IGC_ERROR << kOp << ": data must be a non-empty (N, C, H, W) tensor";
    return MX_FAIL;
  }
  const igc::BlockGeometry g = geometry(p, in[0].shape);
  const char* problem = p.packed ? igc::packed_block_error(g) : igc::block_geometry_error(g);
  if (problem[0] != '\0') {
    IGC_ERROR << kOp << ": " << problem;
    return MX_FAIL;
  }
  const int64_t bytes =
      p.packed ? igc::packed_block_workspace_bytes(g) : igc::block_workspace_bytes(g);
  if (bytes > INT_MAX) {
    IGC_ERROR << kOp << ": needs " << bytes << " bytes of workspace, more than MXNet can lend";
    return MX_FAIL;
  }
  void* ws = res.alloc_cpu(static_cast<int>(bytes));
  if (!ws) {
    IGC_ERROR << kOp << ": could not allocate " << bytes << " bytes of workspace";
    return MX_FAIL;
  }
  auto f = [&](int i) { return static_cast<const float*>(in[i].data_ptr); };
  const auto run = p.packed ? igc::packed_block_forward_cpu : igc::block_forward_cpu;
  run(g, f(0), f(1), f(2), f(3), f(4), f(5), f(6), static_cast<float*>(outputs->at(0).data_ptr),
      ws);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(IGCBlock)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu");
