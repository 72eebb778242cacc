// CPU kernels of BatchNormMoments / BatchNormApply (see batch_norm.h). Each channel is a set of
// `outer` contiguous rows of `inner` elements; threads take whole channels, so every reduction
// is private and the backward's second pass finds the channel's data still in cache.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "batch_norm.h"
#include "reorder.h"

namespace igc {
namespace {

#define IGC_INLINE inline __attribute__((always_inline))

// Below this many elements in all, a call runs on the calling thread.
constexpr int64_t kMinParallelElements = int64_t(1) << 15;

int bn_threads(int64_t outer, int64_t channels, int64_t inner) {
  return outer * channels * inner < kMinParallelElements ? 1 : omp_get_max_threads();
}

template <typename T, int kAct>
IGC_INLINE T activate(T v) {
  if (kAct == kBnRelu) return v > T(0) ? v : T(0);
  if (kAct == kBnRelu6) return v < T(0) ? T(0) : (v > T(6) ? T(6) : v);
  return v;
}

// 1 where the gradient passes the activation (its input v inside the linear range, boundaries
// included as in MXNet's clip), else 0; branch-free so that the loops vectorise.
template <typename T, int kAct>
IGC_INLINE T pass_mask(T v) {
  if (kAct == kBnRelu) return static_cast<T>(v > T(0));
  if (kAct == kBnRelu6) return static_cast<T>((v >= T(0)) & (v <= T(6)));
  return T(1);
}

// Rows are summed in float over chunks of this many elements (vectorised), chunks in double.
constexpr int64_t kChunk = 512;

// Per-channel work; `c` is one channel of an (outer, channels, inner) tensor.
template <typename T>
struct Channel {
  int64_t outer, channels, inner;
  const T* row(const T* base, int64_t n, int64_t c) const {
    return base + (n * channels + c) * inner;
  }
};

template <typename T>
IGC_INLINE void moments_channel(const Channel<T>& ch, const T* x, int64_t c, T* summary) {
  const double count = static_cast<double>(ch.outer * ch.inner);
  // Sums of x - shift, shift = the channel's first value: no cancellation when |mean| >> std.
  const T shift = x[c * ch.inner];
  double s1 = 0, s2 = 0;
  for (int64_t n = 0; n < ch.outer; ++n) {
    const T* row = ch.row(x, n, c);
    for (int64_t i0 = 0; i0 < ch.inner; i0 += kChunk) {
      const int64_t end = std::min(ch.inner, i0 + kChunk);
      T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
      for (int64_t i = i0; i < end; ++i) {
        const T d = row[i] - shift;
        a += d;
        b += d * d;
      }
      s1 += a;
      s2 += b;
    }
  }
  const double mean_shifted = s1 / count;
  const double var = std::fmax(s2 / count - mean_shifted * mean_shifted, 0.0);
  const double sd = std::sqrt(var), mean = shift + mean_shifted;
  summary[c] = static_cast<T>(mean - sd);
  summary[ch.channels + c] = static_cast<T>(mean + sd);
}

template <typename T, int kAct>
IGC_INLINE void forward_channel(const Channel<T>& ch, const T* x, T scale, T shift, int64_t c,
                                T* y) {
  for (int64_t n = 0; n < ch.outer; ++n) {
    const T* src = ch.row(x, n, c);
    T* dst = y + (src - x);
#pragma omp simd
    for (int64_t i = 0; i < ch.inner; ++i) dst[i] = activate<T, kAct>(src[i] * scale + shift);
  }
}

// dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy masked by the activation;
// dbeta = sum(g), dgamma = sum(g * xhat).
template <typename T, int kAct>
IGC_INLINE void backward_channel(const Channel<T>& ch, const T* dy, const T* x, T gamma, T beta,
                                 T m, T is, int64_t c, T* dx, T* dgamma, T* dbeta) {
  const T scale = gamma * is, shift = beta - m * scale;
  double sg = 0, sgx = 0;
  for (int64_t n = 0; n < ch.outer; ++n) {
    const T* xr = ch.row(x, n, c);
    const T* gr = dy + (xr - x);
    for (int64_t i0 = 0; i0 < ch.inner; i0 += kChunk) {
      const int64_t end = std::min(ch.inner, i0 + kChunk);
      T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
      for (int64_t i = i0; i < end; ++i) {
        const T g = gr[i] * pass_mask<T, kAct>(xr[i] * scale + shift);
        a += g;
        b += g * (xr[i] - m);
      }
      sg += a;
      sgx += b;
    }
  }
  const T count = static_cast<T>(ch.outer * ch.inner);
  const T sum_g = static_cast<T>(sg), sum_gxhat = static_cast<T>(sgx) * is;
  dbeta[c] = sum_g;
  dgamma[c] = sum_gxhat;
  const T mean_g = sum_g / count, k = sum_gxhat / count * is;
  for (int64_t n = 0; n < ch.outer; ++n) {
    const T* xr = ch.row(x, n, c);
    const T* gr = dy + (xr - x);
    T* out = dx + (xr - x);
#pragma omp simd
    for (int64_t i = 0; i < ch.inner; ++i) {
      const T g = gr[i] * pass_mask<T, kAct>(xr[i] * scale + shift);
      out[i] = scale * (g - mean_g - (xr[i] - m) * k);
    }
  }
}

// Each per-channel kernel compiled twice, for AVX2+FMA (picked at run time when the CPU has
// them, unless IGC_CONV_BASELINE=1 asks for the baseline as for IGCConv) and for SSE2; the
// OpenMP loops call them through a pointer (an outlined parallel region would not inherit a
// target attribute).
bool use_avx2() {
  const char* baseline = std::getenv("IGC_CONV_BASELINE");
  if (baseline && baseline[0] != '\0' && std::strcmp(baseline, "0") != 0) return false;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

template <typename T>
void moments_channel_sse2(const Channel<T>& ch, const T* x, int64_t c, T* summary) {
  moments_channel(ch, x, c, summary);
}
template <typename T>
__attribute__((target("avx2,fma"))) void moments_channel_avx2(const Channel<T>& ch, const T* x,
                                                              int64_t c, T* summary) {
  moments_channel(ch, x, c, summary);
}
template <typename T, int kAct>
void forward_channel_sse2(const Channel<T>& ch, const T* x, T scale, T shift, int64_t c, T* y) {
  forward_channel<T, kAct>(ch, x, scale, shift, c, y);
}
template <typename T, int kAct>
__attribute__((target("avx2,fma"))) void forward_channel_avx2(const Channel<T>& ch, const T* x,
                                                              T scale, T shift, int64_t c, T* y) {
  forward_channel<T, kAct>(ch, x, scale, shift, c, y);
}
template <typename T, int kAct>
void backward_channel_sse2(const Channel<T>& ch, const T* dy, const T* x, T gamma, T beta, T m,
                           T is, int64_t c, T* dx, T* dgamma, T* dbeta) {
  backward_channel<T, kAct>(ch, dy, x, gamma, beta, m, is, c, dx, dgamma, dbeta);
}
template <typename T, int kAct>
__attribute__((target("avx2,fma"))) void backward_channel_avx2(const Channel<T>& ch, const T* dy,
                                                               const T* x, T gamma, T beta, T m,
                                                               T is, int64_t c, T* dx, T* dgamma,
                                                               T* dbeta) {
  backward_channel<T, kAct>(ch, dy, x, gamma, beta, m, is, c, dx, dgamma, dbeta);
}

template <typename T>
void moments(const T* x, int64_t outer, int64_t channels, int64_t inner, T* summary) {
  const Channel<T> ch{outer, channels, inner};
  auto* run = use_avx2() ? moments_channel_avx2<T> : moments_channel_sse2<T>;
#pragma omp parallel for schedule(dynamic, 1) num_threads(bn_threads(outer, channels, inner))
  for (int64_t c = 0; c < channels; ++c) run(ch, x, c, summary);
}

template <typename T, int kAct>
void apply_forward(const T* x, const T* gamma, const T* beta, const T* mean, const T* invstd, T* y,
                   int64_t outer, int64_t channels, int64_t inner) {
  const Channel<T> ch{outer, channels, inner};
  auto* run = use_avx2() ? forward_channel_avx2<T, kAct> : forward_channel_sse2<T, kAct>;
#pragma omp parallel for schedule(dynamic, 1) num_threads(bn_threads(outer, channels, inner))
  for (int64_t c = 0; c < channels; ++c) {
    const T scale = gamma[c] * invstd[c];
    run(ch, x, scale, beta[c] - mean[c] * scale, c, y);
  }
}

template <typename T, int kAct>
void apply_backward(const T* dy, const T* x, const T* gamma, const T* beta, const T* mean,
                    const T* invstd, T* dx, T* dgamma, T* dbeta, int64_t outer, int64_t channels,
                    int64_t inner) {
  const Channel<T> ch{outer, channels, inner};
  auto* run = use_avx2() ? backward_channel_avx2<T, kAct> : backward_channel_sse2<T, kAct>;
#pragma omp parallel for schedule(dynamic, 1) num_threads(bn_threads(outer, channels, inner))
  for (int64_t c = 0; c < channels; ++c) {
    run(ch, dy, x, gamma[c], beta[c], mean[c], invstd[c], c, dx, dgamma, dbeta);
  }
}

template <typename T>
void moments_any(const void* x, int64_t o, int64_t c, int64_t i, void* s) {
  moments(static_cast<const T*>(x), o, c, i, static_cast<T*>(s));
}

template <typename T, int kAct>
void forward_act(const void* x, const void* g, const void* b, const void* m, const void* v,
                 void* y, int64_t o, int64_t c, int64_t i) {
  apply_forward<T, kAct>(static_cast<const T*>(x), static_cast<const T*>(g),
                         static_cast<const T*>(b), static_cast<const T*>(m),
                         static_cast<const T*>(v), static_cast<T*>(y), o, c, i);
}

template <typename T>
void forward_any(const void* x, const void* g, const void* b, const void* m, const void* v,
                 void* y, int64_t o, int64_t c, int64_t i, int act) {
  if (act == kBnRelu) {
    forward_act<T, kBnRelu>(x, g, b, m, v, y, o, c, i);
  } else if (act == kBnRelu6) {
    forward_act<T, kBnRelu6>(x, g, b, m, v, y, o, c, i);
  } else {
    forward_act<T, kBnNone>(x, g, b, m, v, y, o, c, i);
  }
}

template <typename T, int kAct>
void backward_act(const void* dy, const void* x, const void* g, const void* b, const void* m,
                  const void* v, void* dx, void* dg, void* db, int64_t o, int64_t c, int64_t i) {
  apply_backward<T, kAct>(static_cast<const T*>(dy), static_cast<const T*>(x),
                          static_cast<const T*>(g), static_cast<const T*>(b),
                          static_cast<const T*>(m), static_cast<const T*>(v), static_cast<T*>(dx),
                          static_cast<T*>(dg), static_cast<T*>(db), o, c, i);
}

template <typename T>
void backward_any(const void* dy, const void* x, const void* g, const void* b, const void* m,
                  const void* v, void* dx, void* dg, void* db, int64_t o, int64_t c, int64_t i,
                  int act) {
  if (act == kBnRelu) {
    backward_act<T, kBnRelu>(dy, x, g, b, m, v, dx, dg, db, o, c, i);
  } else if (act == kBnRelu6) {
    backward_act<T, kBnRelu6>(dy, x, g, b, m, v, dx, dg, db, o, c, i);
  } else {
    backward_act<T, kBnNone>(dy, x, g, b, m, v, dx, dg, db, o, c, i);
  }
}

}  // namespace

void bn_moments_cpu(int dtype, const void* x, int64_t outer, int64_t channels, int64_t inner,
                    void* summary) {
  if (dtype == kIgcFloat32) moments_any<float>(x, outer, channels, inner, summary);
  if (dtype == kIgcFloat64) moments_any<double>(x, outer, channels, inner, summary);
}

void bn_apply_forward_cpu(int dtype, const void* x, const void* gamma, const void* beta,
                          const void* mean, const void* invstd, void* y, int64_t outer,
                          int64_t channels, int64_t inner, int act) {
  if (dtype == kIgcFloat32) {
    forward_any<float>(x, gamma, beta, mean, invstd, y, outer, channels, inner, act);
  } else if (dtype == kIgcFloat64) {
    forward_any<double>(x, gamma, beta, mean, invstd, y, outer, channels, inner, act);
  }
}

void bn_apply_backward_cpu(int dtype, const void* y_grad, const void* x, const void* gamma,
                           const void* beta, const void* mean, const void* invstd,
                           void* data_grad, void* gamma_grad, void* beta_grad, int64_t outer,
                           int64_t channels, int64_t inner, int act) {
  if (dtype == kIgcFloat32) {
    backward_any<float>(y_grad, x, gamma, beta, mean, invstd, data_grad, gamma_grad, beta_grad,
                        outer, channels, inner, act);
  } else if (dtype == kIgcFloat64) {
    backward_any<double>(y_grad, x, gamma, beta, mean, invstd, data_grad, gamma_grad, beta_grad,
                         outer, channels, inner, act);
  }
}

}  // namespace igc
