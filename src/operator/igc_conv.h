// IGC's primary convolution (`IGCConv`): a k x k group convolution on NCHW data whose output may be
// stored already interleaved (the `Reorder` permutation fused into the store). Geometry and kernel
// entry points only; nothing here knows about MXNet.
//
// With G groups, C input channels and F filters, group g maps input channels g*(C/G) .. to the
// logical outputs g*(F/G) + f, f < F/G. The weight is laid out as MXNet's Convolution:
// (F, C/G, kernel_h, kernel_w). With `interleave`, logical output g*(F/G) + f is stored as channel
// f*G + g, which is Reorder(branch_factor=G) applied to the plain result. With `input_branches`
// B > 1 (one input channel per group only) the convolution reads Reorder(branch_factor=B) of the
// data instead of the data: input channel c is data channel reorder_source(c, C, B), and the data
// gradient is written back to that channel (IGCV3's permutation between its expansion BatchNorm
// and its depthwise conv, with no permuted copy in memory).
#ifndef IGC_OPERATOR_IGC_CONV_H_
#define IGC_OPERATOR_IGC_CONV_H_

#include <cstdint>

#include "common.h"

namespace igc {

struct ConvGeometry {
  int64_t batch, in_channels, height, width;
  int64_t filters, groups, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
  bool interleave;
  int64_t input_branches = 1;

  int64_t out_height() const { return (height + 2 * pad_h - kernel_h) / stride_h + 1; }
  int64_t out_width() const { return (width + 2 * pad_w - kernel_w) / stride_w + 1; }
};

// Stored output channel of logical output `filter` (also where its gradient is read).
inline int64_t conv_output_channel(const ConvGeometry& g, int64_t filter) {
  if (!g.interleave) return filter;
  return reorder_source(filter, g.filters, g.filters / g.groups);  // Reorder(G)'s inverse
}

// Channel of the data that input channel `c` of the convolution reads (and whose gradient it
// writes).
inline int64_t conv_input_channel(const ConvGeometry& g, int64_t c) {
  return g.input_branches > 1 ? reorder_source(c, g.in_channels, g.input_branches) : c;
}

// Stored channels between consecutive filters of a group: G in an interleaved output, else 1.
inline int64_t conv_filter_channel_step(const ConvGeometry& g) {
  return g.interleave ? g.groups : 1;
}

// Bytes of temporary memory `conv_forward_cpu` / `conv_backward_cpu` need for `dtype`
// (kFloat32 or kFloat64) on the threads they will use; 0 for an unsupported dtype.
// `transformed`: the call will pass a ConvInputTransform (a pointwise conv then needs more).
int64_t conv_forward_workspace_bytes(const ConvGeometry& g, int dtype, bool transformed = false);
int64_t conv_backward_workspace_bytes(const ConvGeometry& g, int dtype, bool transformed = false);

// Activation applied to the forward output (attribute `act`): an inference fusion, so that a
// conv + clip(0, 6) that feeds plugin ops runs as one plugin op writing plain NCHW. ReLU6 is
// v < 0 ? 0 : (v > 6 ? 6 : v), as MXNet's clip (NaN stays NaN).
enum ConvActivation { kConvNone = 0, kConvRelu6 = 1 };

// A BatchNorm apply read into the convolution (training graphs: network.fuse_input_batchnorms):
// the convolution reads act(x * scale[c] + shift[c]) for each value x of data channel c (scale
// and shift from bn_scale_shift_cpu, act a BnActivation) as it copies its input, instead of a
// tensor of those values written before. Only where conv_transforms_input says so.
struct ConvInputTransform {
  const void* scale;
  const void* shift;
  int act;
  // Backward: with gamma_grad not null, the BatchNorm's own backward too (bn_apply_backward_cpu,
  // from the BatchNorm's mean and invstd per data channel): data_grad is then the gradient of the
  // data itself, and gamma_grad and beta_grad (per data channel) are written. The kernels run it
  // on each block of channels as soon as the block's transformed-value gradient is complete over
  // the batch (while it is in cache), in place in data_grad; the float pointwise ones on planes of
  // 256 values and more take its sums from each image's rows as they make them, then write dx.
  const void* mean = nullptr;
  const void* invstd = nullptr;
  void* gamma_grad = nullptr;
  void* beta_grad = nullptr;
};

// The batch statistics of the output for the BatchNorm that reads it (training graphs:
// network.fuse_input_batchnorms), taken from each work item's output planes while they are in
// cache instead of in a pass of BatchNormMoments over the output afterwards: `summary` (2 x
// filters values of the dtype) receives what bn_moments_cpu would write for the output.
// `row_sums` holds 3 * batch * filters doubles (conv_moments_sums_bytes).
struct ConvOutputMoments {
  void* summary;
  double* row_sums;
};
int64_t conv_moments_sums_bytes(const ConvGeometry& g);

// That BatchNorm backward for conv input channels [c0, c1) (the data channels they read), their
// data_grad planes holding the transformed values' gradient over the whole batch.
void conv_input_bn_backward(const ConvGeometry& g, int dtype, const ConvInputTransform& in,
                            const void* data, void* data_grad, int64_t c0, int64_t c1);

// Whether the kernels for `g` and `dtype` apply a ConvInputTransform as they read their input
// (all but the float64 pointwise ones; the float pointwise GEMMs read the transformed rows from an
// item buffer, and their backward runs the BatchNorm's after the whole data gradient).
bool conv_transforms_input(const ConvGeometry& g, int dtype);

// `bias` may be null. The sizes must be valid (groups divide channels and filters, output >= 1x1);
// the registration file checks them. `workspace` holds `workspace_bytes`, what the function above
// asked for (a smaller one makes the call use fewer threads or narrower vectors, never overrun
// it). Multi-threaded with OpenMP, vectorised (AVX2+FMA when the CPU has it, SSE2 otherwise, or
// always SSE2 when the environment sets IGC_CONV_BASELINE=1). `act` is a ConvActivation, applied
// to each work item's output planes as soon as they are written (while they are in cache).
// `in`, when not null, transforms the input (see ConvInputTransform); `moments`, when not null,
// receives the output's batch statistics (see ConvOutputMoments).
void conv_forward_cpu(const ConvGeometry& g, int dtype, const void* data, const void* weight,
                      const void* bias, void* out, void* workspace, int64_t workspace_bytes,
                      int act = kConvNone, const ConvInputTransform* in = nullptr,
                      const ConvOutputMoments* moments = nullptr);

// Writes (never accumulates) every gradient: data_grad, weight_grad and, when not null, bias_grad.
// With `in`, the gradients are those of the convolution of the transformed input: data_grad is
// the gradient of the transformed values (the caller takes it through the BatchNorm), or with
// in->gamma_grad, of the data (the BatchNorm's backward fused in, see ConvInputTransform).
void conv_backward_cpu(const ConvGeometry& g, int dtype, const void* out_grad, const void* data,
                       const void* weight, void* data_grad, void* weight_grad, void* bias_grad,
                       void* workspace, int64_t workspace_bytes,
                       const ConvInputTransform* in = nullptr);

// Depthwise 3x3 convs with padding 1 on narrow planes (unit stride up to 8 columns, stride 2 up
// to 16), float32 with AVX2 (igc_depthwise_cpu.cc): whether `g` is one the functions below take
// (what conv_forward_cpu, without an activation, and conv_backward_cpu run for it). No
// workspace; multi-threaded over blocks of channels (and images, forward). `row_sums`, when not
// null, receives the output rows' moment sums (see ConvOutputMoments).
bool depthwise_small_conv(const ConvGeometry& g);
void depthwise_small_forward(const ConvGeometry& g, const float* data, const float* weight,
                             const float* bias, float* out, const ConvInputTransform* in,
                             double* row_sums = nullptr);
void depthwise_small_backward(const ConvGeometry& g, const float* out_grad, const float* data,
                              const float* weight, float* data_grad, float* weight_grad,
                              float* bias_grad, const ConvInputTransform* in);

}  // namespace igc

#endif  // IGC_OPERATOR_IGC_CONV_H_
