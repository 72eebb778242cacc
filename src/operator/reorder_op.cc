// Registration of `Reorder` with MXNet's extension API: attributes, shape and type inference,
// and the forward/backward dispatch to the kernels in reorder_cpu.cc / reorder_gpu.cu.
// Every user error is reported through IGC_ERROR and surfaces as an MXNetError in Python.
#include <mxnet/lib_api.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "op_common.h"
#include "reorder.h"

namespace {

using igc::Attrs;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;

const char kOp[] = "Reorder";

bool parse_branch_factor(const Attrs& attrs, int64_t* groups) {
  return igc::parse_count_attr(kOp, attrs, "branch_factor", true, groups);
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  // `workspace` is carried by the authors' released graphs; it means nothing here.
  if (!igc::check_known_attrs(kOp, attrs, {"branch_factor", "workspace"})) return MX_FAIL;
  int64_t groups;
  return parse_branch_factor(attrs, &groups) ? MX_SUCCESS : MX_FAIL;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  // -1 is "not known yet": the type flows either way through a permutation.
  int& in = in_types->at(0);
  int& out = out_types->at(0);
  if (in == -1) in = out;
  if (in != -1 && !igc::check_float_dtype(kOp, "data", in)) return MX_FAIL;
  out = in;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  const std::vector<unsigned int>& shape = in_shapes->at(0);
  int64_t groups;
  if (!parse_branch_factor(attrs, &groups)) return MX_FAIL;
  if (shape.size() < 2) {
    IGC_ERROR << kOp << ": input must have rank >= 2 with channels on axis 1, got shape "
                 << igc::shape_string(shape);
    return MX_FAIL;
  }
  if (!igc::check_known_shape(kOp, "data", shape)) return MX_FAIL;
  if (shape[1] % groups != 0) {
    IGC_ERROR << kOp << ": attribute 'branch_factor'=" << groups
                 << " does not divide the channel count " << shape[1] << " of input shape "
                 << igc::shape_string(shape);
    return MX_FAIL;
  }
  out_shapes->at(0) = shape;
  return MX_SUCCESS;
}

struct Geometry {
  int64_t outer, channels, inner;
};

Geometry geometry(const MXTensor& t) {
  Geometry g{t.shape[0], t.shape[1], 1};
  for (size_t d = 2; d < t.shape.size(); ++d) g.inner *= t.shape[d];
  return g;
}

// Forward with Reorder(g) and backward with Reorder(C/g) are the same kernel.
MXReturnValue run(const Attrs& attrs, const MXTensor& in, MXTensor* out, bool inverse,
                  const OpResource& res) {
  int64_t groups;
  if (!parse_branch_factor(attrs, &groups)) return MX_FAIL;
  const Geometry g = geometry(in);
  if (g.channels % groups != 0) {  // shapes can change after inference in imperative calls
    IGC_ERROR << kOp << ": attribute 'branch_factor'=" << groups
                 << " does not divide the channel count " << g.channels;
    return MX_FAIL;
  }
  if (igc::is_empty(in.shape)) return MX_SUCCESS;  // zero-size arrays (NumPy shape mode)
  if (inverse) groups = g.channels / groups;
  const int64_t elem_bytes = igc::dtype_bytes(in.dtype);
  if (elem_bytes == 0) {
    IGC_ERROR << kOp << ": unsupported dtype code " << in.dtype;
    return MX_FAIL;
  }
  if (in.ctx.dev_type == "cpu") {
    igc::reorder_cpu(in.data_ptr, out->data_ptr, g.outer, g.channels, g.inner * elem_bytes,
                     groups);
    return MX_SUCCESS;
  }
#if IGC_WITH_CUDA
  const int rc = igc_reorder_cuda(in.data_ptr, out->data_ptr, g.outer, g.channels, g.inner,
                                  groups, in.dtype, res.get_cuda_stream());
  if (rc != 0) {
    IGC_ERROR << kOp << ": CUDA launch failed with error " << rc;
    return MX_FAIL;
  }
  return MX_SUCCESS;
#else
  IGC_ERROR << kOp << ": this build of the IGC plugin has no CUDA kernels (rebuild with "
               << "IGC_CUDA=ON)";
  return MX_FAIL;
#endif
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  return run(attrs, inputs->at(0), &outputs->at(0), false, res);
}

// inputs: [output gradient, data, output]; outputs: [data gradient].
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  return run(attrs, inputs->at(0), &outputs->at(0), true, res);
}

}  // namespace

REGISTER_OP(Reorder)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu")
#if IGC_WITH_CUDA
    .setForward(forward, "gpu")
    .setBackward(backward, "gpu")
#endif
    ;
