// CPU kernels of BatchNormMoments / BatchNormApply (see batch_norm.h). Each channel is a set of
// `outer` contiguous rows of `inner` elements; threads take whole channels, so every reduction
// is private and the backward's second pass finds the channel's data still in cache.
#include <omp.h>

#include <cmath>

#include "batch_norm.h"
#include "reorder.h"

namespace igc {
namespace {

// Below this many elements in all, a call runs on the calling thread.
constexpr int64_t kMinParallelElements = int64_t(1) << 15;

int bn_threads(int64_t outer, int64_t channels, int64_t inner) {
  return outer * channels * inner < kMinParallelElements ? 1 : omp_get_max_threads();
}

template <typename T>
inline T activate(T v, int act) {
  if (act == kBnRelu) return v > T(0) ? v : T(0);
  if (act == kBnRelu6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v;
}

// The gradient passes where the activation's input v is inside its linear range, boundaries
// included as in MXNet's clip.
template <typename T>
inline bool passes(T v, int act) {
  if (act == kBnRelu) return v > T(0);
  if (act == kBnRelu6) return v >= T(0) && v <= T(6);
  return true;
}

template <typename T>
void moments(const T* x, int64_t outer, int64_t channels, int64_t inner, T* summary) {
  const double count = static_cast<double>(outer * inner);
#pragma omp parallel for schedule(dynamic, 1) num_threads(bn_threads(outer, channels, inner))
  for (int64_t c = 0; c < channels; ++c) {
    // Sums of x - shift, shift = the channel's first value: no cancellation when |mean| >> std.
    const double shift = x[c * inner];
    double s1 = 0, s2 = 0;
    for (int64_t n = 0; n < outer; ++n) {
      const T* row = x + (n * channels + c) * inner;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t i = 0; i < inner; ++i) {
        const double d = static_cast<double>(row[i]) - shift;
        s1 += d;
        s2 += d * d;
      }
    }
    const double mean_shifted = s1 / count;
    const double var = std::fmax(s2 / count - mean_shifted * mean_shifted, 0.0);
    const double sd = std::sqrt(var), mean = shift + mean_shifted;
    summary[c] = static_cast<T>(mean - sd);
    summary[channels + c] = static_cast<T>(mean + sd);
  }
}

template <typename T>
void apply_forward(const T* x, const T* gamma, const T* beta, const T* mean, const T* invstd, T* y,
                   int64_t outer, int64_t channels, int64_t inner, int act) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(bn_threads(outer, channels, inner))
  for (int64_t c = 0; c < channels; ++c) {
    const T scale = gamma[c] * invstd[c];
    const T shift = beta[c] - mean[c] * scale;
    for (int64_t n = 0; n < outer; ++n) {
      const T* src = x + (n * channels + c) * inner;
      T* dst = y + (n * channels + c) * inner;
#pragma omp simd
      for (int64_t i = 0; i < inner; ++i) dst[i] = activate(src[i] * scale + shift, act);
    }
  }
}

template <typename T>
void apply_backward(const T* dy, const T* x, const T* gamma, const T* beta, const T* mean,
                    const T* invstd, T* dx, T* dgamma, T* dbeta, int64_t outer, int64_t channels,
                    int64_t inner, int act) {
  const T count = static_cast<T>(outer * inner);
#pragma omp parallel for schedule(dynamic, 1) num_threads(bn_threads(outer, channels, inner))
  for (int64_t c = 0; c < channels; ++c) {
    const T m = mean[c], is = invstd[c], scale = gamma[c] * is, shift = beta[c] - m * scale;
    // Sums of the gradient at the BatchNorm output (after the activation's mask) and of its
    // product with x - mean; accumulated in double over the whole batch.
    double sg = 0, sgx = 0;
    for (int64_t n = 0; n < outer; ++n) {
      const T* xr = x + (n * channels + c) * inner;
      const T* gr = dy + (n * channels + c) * inner;
#pragma omp simd reduction(+ : sg, sgx)
      for (int64_t i = 0; i < inner; ++i) {
        const T g = passes(xr[i] * scale + shift, act) ? gr[i] : T(0);
        sg += g;
        sgx += static_cast<double>(g) * (xr[i] - m);
      }
    }
    const T sum_g = static_cast<T>(sg), sum_gxhat = static_cast<T>(sgx) * is;
    dbeta[c] = sum_g;
    dgamma[c] = sum_gxhat;
    // dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat))
    const T mean_g = sum_g / count, k = sum_gxhat / count * is;
    for (int64_t n = 0; n < outer; ++n) {
      const T* xr = x + (n * channels + c) * inner;
      const T* gr = dy + (n * channels + c) * inner;
      T* out = dx + (n * channels + c) * inner;
#pragma omp simd
      for (int64_t i = 0; i < inner; ++i) {
        const T g = passes(xr[i] * scale + shift, act) ? gr[i] : T(0);
        out[i] = scale * (g - mean_g - (xr[i] - m) * k);
      }
    }
  }
}

}  // namespace

void bn_moments_cpu(int dtype, const void* x, int64_t outer, int64_t channels, int64_t inner,
                    void* summary) {
  if (dtype == kIgcFloat32) {
    moments(static_cast<const float*>(x), outer, channels, inner, static_cast<float*>(summary));
  } else if (dtype == kIgcFloat64) {
    moments(static_cast<const double*>(x), outer, channels, inner, static_cast<double*>(summary));
  }
}

void bn_apply_forward_cpu(int dtype, const void* x, const void* gamma, const void* beta,
                          const void* mean, const void* invstd, void* y, int64_t outer,
                          int64_t channels, int64_t inner, int act) {
  if (dtype == kIgcFloat32) {
    using T = float;
    apply_forward(static_cast<const T*>(x), static_cast<const T*>(gamma),
                  static_cast<const T*>(beta), static_cast<const T*>(mean),
                  static_cast<const T*>(invstd), static_cast<T*>(y), outer, channels, inner, act);
  } else if (dtype == kIgcFloat64) {
    using T = double;
    apply_forward(static_cast<const T*>(x), static_cast<const T*>(gamma),
                  static_cast<const T*>(beta), static_cast<const T*>(mean),
                  static_cast<const T*>(invstd), static_cast<T*>(y), outer, channels, inner, act);
  }
}

void bn_apply_backward_cpu(int dtype, const void* y_grad, const void* x, const void* gamma,
                           const void* beta, const void* mean, const void* invstd,
                           void* data_grad, void* gamma_grad, void* beta_grad, int64_t outer,
                           int64_t channels, int64_t inner, int act) {
  if (dtype == kIgcFloat32) {
    using T = float;
    apply_backward(static_cast<const T*>(y_grad), static_cast<const T*>(x),
                   static_cast<const T*>(gamma), static_cast<const T*>(beta),
                   static_cast<const T*>(mean), static_cast<const T*>(invstd),
                   static_cast<T*>(data_grad), static_cast<T*>(gamma_grad),
                   static_cast<T*>(beta_grad), outer, channels, inner, act);
  } else if (dtype == kIgcFloat64) {
    using T = double;
    apply_backward(static_cast<const T*>(y_grad), static_cast<const T*>(x),
                   static_cast<const T*>(gamma), static_cast<const T*>(beta),
                   static_cast<const T*>(mean), static_cast<const T*>(invstd),
                   static_cast<T*>(data_grad), static_cast<T*>(gamma_grad),
                   static_cast<T*>(beta_grad), outer, channels, inner, act);
  }
}

}  // namespace igc
