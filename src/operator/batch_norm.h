// Training-mode batch normalisation on plain NCHW data, split so that MXNet's own BatchNorm keeps
// the running statistics and the train/inference switch (which lib_api ops never see):
//   `BatchNormMoments`: per channel c the batch mean m_c and biased standard deviation s_c,
//     stored as a (2, C, 1, 1) tensor [m - s, m + s], whose own batch mean is m and biased
//     variance s^2. MXNet's BatchNorm run on that tensor (output_mean_var=True) returns
//     (m, 1/sqrt(s^2 + eps)) in training and (moving mean, 1/sqrt(moving var + eps)) in
//     inference, and updates the moving statistics exactly as it would on the full batch.
//   `BatchNormApply`: y = act(gamma * (x - mean) * invstd + beta), act = none, relu or relu6
//     (clip to [0, 6]); its backward is the batch-statistics gradient of BatchNorm (+ act).
// Nothing here knows about MXNet. Kernels are multi-threaded over channels with OpenMP.
#ifndef IGC_OPERATOR_BATCH_NORM_H_
#define IGC_OPERATOR_BATCH_NORM_H_

#include <cstdint>

namespace igc {

enum BnActivation { kBnNone = 0, kBnRelu = 1, kBnRelu6 = 2 };

// The activation of the apply on one value: ReLU v > 0 ? v : 0 (NaN gives 0), ReLU6 as MXNet's
// clip(0, 6), v < 0 ? 0 : (v > 6 ? 6 : v) (NaN stays NaN).
template <typename T, int kAct>
inline T bn_activate(T v) {
  if (kAct == kBnRelu) return v > T(0) ? v : T(0);
  if (kAct == kBnRelu6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v;
}

// Per channel, the apply as y = act(x * scale + shift): scale = gamma * invstd, shift = beta -
// mean * scale. Every kernel that applies a BatchNorm (BatchNormApply, IGCConv's input
// transform) takes these values from here, so that they compute the same y.
void bn_scale_shift_cpu(int dtype, const void* gamma, const void* beta, const void* mean,
                        const void* invstd, int64_t channels, void* scale, void* shift);

// x: (outer, channels, inner) -> summary: [m - s] (channels values) then [m + s].
void bn_moments_cpu(int dtype, const void* x, int64_t outer, int64_t channels, int64_t inner,
                    void* summary);

// The same summary in two steps, for a kernel that makes x a few rows at a time (IGCConv's forward
// with `moments`): the sums of `count` rows of `inner` values, row i at x + i * row_step (in
// values), into sums + 3 * i * sums_step (three doubles per row: its sums around its first value,
// then that value); then, once every row of an (outer, channels, inner) tensor has its sums at
// 3 * (n * channels + c), the summary from them. The values bn_moments_cpu writes for that tensor.
// `avx2`: use_avx2_kernels() as the caller read it once per call (it reads the environment, too
// dear for a kernel that takes the sums item by item).
void bn_row_moments_cpu(int dtype, const void* x, int64_t count, int64_t row_step, int64_t inner,
                        double* sums, int64_t sums_step, bool avx2);
void bn_moments_from_rows_cpu(int dtype, const double* sums, int64_t outer, int64_t channels,
                              int64_t inner, void* summary);

void bn_apply_forward_cpu(int dtype, const void* x, const void* gamma, const void* beta,
                          const void* mean, const void* invstd, void* y, int64_t outer,
                          int64_t channels, int64_t inner, int act);

// Writes (never accumulates) data_grad, gamma_grad and beta_grad.
void bn_apply_backward_cpu(int dtype, const void* y_grad, const void* x, const void* gamma,
                           const void* beta, const void* mean, const void* invstd,
                           void* data_grad, void* gamma_grad, void* beta_grad, int64_t outer,
                           int64_t channels, int64_t inner, int act);

// The same backward on channels [c0, c1) of the tensor only, on the calling thread, from the
// scale and shift of bn_scale_shift_cpu: the values bn_apply_backward_cpu writes for those
// channels (each channel's sums run over its rows in the same order). data_grad may be y_grad
// (in place). For a kernel that makes y_grad a block of channels at a time over the whole batch
// (IGCConv's backward with its input BatchNorm) and runs this while the block is in cache.
void bn_apply_backward_channels_cpu(int dtype, const void* y_grad, const void* x,
                                    const void* scale, const void* shift, const void* mean,
                                    const void* invstd, void* data_grad, void* gamma_grad,
                                    void* beta_grad, int64_t outer, int64_t channels,
                                    int64_t inner, int64_t c0, int64_t c1, int act);

// The same backward a row (one image's plane of one channel) at a time, float only, for a kernel
// that makes y_grad an image at a time (IGCConv's pointwise backward, which takes the sums while
// an image's rows are in cache): bn_backward_row_sums_cpu writes the partial sums of `rows` rows of
// consecutive channels of one image (`inner` values apart; scale, shift and mean from the first
// row's channel on), two floats per each of a row's bn_backward_row_chunks(inner) chunks, row r's
// at sums + 2 * chunks * r (a row (n, c) of the tensor: at 2 * chunks * (n * channels + c)); once
// every row of channels [c0, c1) has them, bn_backward_finish_cpu writes those channels'
// gamma_grad and beta_grad, and mean_g and k, which bn_backward_row_apply_cpu then takes to write
// a row's data_grad (which may be its y_grad). The values of bn_apply_backward_channels_cpu for
// the same y_grad, for rows of at least 256 values (shorter ones are summed position by position
// over the batch there). `avx2`: use_avx2_kernels() as the caller read it.
int64_t bn_backward_row_chunks(int64_t inner);
void bn_backward_row_sums_cpu(const float* y_grad, const float* x, const float* scale,
                              const float* shift, const float* mean, int64_t rows,
                              int64_t inner, int act, bool avx2, float* sums);
void bn_backward_finish_cpu(const float* sums, int64_t outer, int64_t channels, int64_t inner,
                            int64_t c0, int64_t c1, const float* invstd, float* gamma_grad,
                            float* beta_grad, float* mean_g, float* k);
void bn_backward_row_apply_cpu(const float* y_grad, const float* x, float scale, float shift,
                               float mean, float mean_g, float k, int64_t inner, int act,
                               bool avx2, float* data_grad);

}  // namespace igc

#endif  // IGC_OPERATOR_BATCH_NORM_H_
