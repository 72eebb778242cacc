// GlobalAvgPool (see pool_op.cc): the average of each (image, channel) plane of an NCHW tensor,
// each value as MXNet's Pooling with global_pool=True, pool_type='avg' computes it on either ISA:
// float32 (oneDNN's kernels) the plane's values summed in memory order from zero, then divided
// by the plane's size; float64 (MXNet's own kernel) each value divided by that size, then summed
// in memory order. The gradient of every value of a plane: its output's gradient divided by the
// plane's size.
#ifndef IGC_OPERATOR_POOL_H_
#define IGC_OPERATOR_POOL_H_

#include <cstdint>

namespace igc {

// out[p] = (x[p * plane] + x[p * plane + 1] + ... ) / plane for p < planes (float64: the sum of
// x[p * plane + i] / plane); `dtype` kFloat32 or kFloat64 (common.h), as the arrays.
void global_avg_pool_forward_cpu(int dtype, const void* x, void* out, int64_t planes,
                                 int64_t plane);

// grad[p * plane + i] = out_grad[p] / plane for p < planes, i < plane.
void global_avg_pool_backward_cpu(int dtype, const void* out_grad, void* grad, int64_t planes,
                                  int64_t plane);

}  // namespace igc

#endif  // IGC_OPERATOR_POOL_H_
