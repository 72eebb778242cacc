// The optimizer update of IGCSGDMomUpdate (see sgd_op.cc): SGD with momentum over many arrays in
// one call, each value computed as MXNet 1.9's multi_sgd_mom_update computes it.
#ifndef IGC_OPERATOR_SGD_H_
#define IGC_OPERATOR_SGD_H_

#include <cstdint>
#include <vector>

namespace igc {

// One array's update: weight (read), grad, mom (read and written), out (the new weight; may be
// weight itself), `size` floats, and its learning rate and weight decay.
struct SgdArray {
  const float* weight;
  const float* grad;
  float* mom;
  float* out;
  int64_t size;
  float lr, wd;
};

// For every value of every array, as MXNet's MultiSGDKernel (float32, momentum, no master copy):
//   mom = momentum * mom - lr * wd * weight - lr * g,  g = rescale_grad * grad, clipped to
//   [-clip_gradient, clip_gradient] where clip_gradient >= 0;  out = weight + mom.
// The arrays are cut into chunks shared out over the OpenMP threads.
void sgd_mom_update_cpu(const std::vector<SgdArray>& arrays, float momentum, float rescale_grad,
                        float clip_gradient);

}  // namespace igc

#endif  // IGC_OPERATOR_SGD_H_
