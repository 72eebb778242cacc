// Registration of `GlobalAvgPool` (see pool.h) with MXNet's extension API: data (N, C, H, W)
// float32 or float64 -> out (N, C, 1, 1), the mean of each plane as MXNet's Pooling(global_pool=
// True, pool_type='avg') computes it; no attributes. The training rewrite
// (network/graph/training.py) puts it where such a Pooling reads a plugin op's output.
#include <mxnet/lib_api.h>

#include <vector>

#include "op_common.h"
#include "pool.h"

namespace {

using igc::Attrs;
using igc::Shape;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;
using mxnet::ext::OpResource;

const char kOp[] = "GlobalAvgPool";

MXReturnValue parse(const Attrs& attrs, int* num_in, int* num_out) {
  if (!igc::check_known_attrs(kOp, attrs, {})) return MX_FAIL;
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in_types, std::vector<int>* out_types) {
  return igc::same_float_types(kOp, in_types, out_types);
}

MXReturnValue infer_shape(const Attrs&, std::vector<Shape>* in_shapes,
                          std::vector<Shape>* out_shapes) {
  const Shape& data = in_shapes->at(0);
  if (!igc::check_nchw_data(kOp, data)) return MX_FAIL;
  out_shapes->at(0) = Shape{data[0], data[1], 1, 1};
  return MX_SUCCESS;
}

// inputs: [data]; outputs: [out].
MXReturnValue forward(const Attrs&, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  const MXTensor& x = inputs->at(0);
  if (!igc::check_cpu_float(kOp, x)) return MX_FAIL;
  igc::global_avg_pool_forward_cpu(x.dtype, x.data_ptr, outputs->at(0).data_ptr,
                                   x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]);
  return MX_SUCCESS;
}

// inputs: [out grad, data, out]; outputs: [data grad].
MXReturnValue backward(const Attrs&, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource&) {
  const MXTensor& x = inputs->at(1);
  if (!igc::check_cpu_float(kOp, x)) return MX_FAIL;
  igc::global_avg_pool_backward_cpu(x.dtype, inputs->at(0).data_ptr, outputs->at(0).data_ptr,
                                    x.shape[0] * x.shape[1], x.shape[2] * x.shape[3]);
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(GlobalAvgPool)
    .setParseAttrs(parse)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");
