// CPU kernels of BatchNormMoments / BatchNormApply (see batch_norm.h). Each channel is a set of
// `outer` rows of `inner` elements; threads take blocks of whole channels, so every reduction is
// private (and in a fixed order).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "batch_norm.h"
#include "common.h"
#include "gemm.h"
#include "stream.h"

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
  return bn_activate<T, kAct>(v);
}

// 1 where the gradient passes the activation (its input v inside the linear range, boundaries
// included as in MXNet's clip), else 0 (also for NaN). The quiet comparisons (isgreater etc.)
// cannot raise a floating-point exception, so the compiler may evaluate them on whole vectors:
// with `v > 0` it kept ReLU's backward scalar and branching, one mispredicted branch per element
// on real gradients (5x slower than ReLU6's).
template <typename T, int kAct>
IGC_INLINE T pass_mask(T v) {
  if constexpr (kAct == kBnRelu) return static_cast<T>(__builtin_isgreater(v, T(0)));
  if constexpr (kAct == kBnRelu6) {
    return static_cast<T>(__builtin_isgreaterequal(v, T(0)) & __builtin_islessequal(v, T(6)));
  }
  return T(1);
}

// Rows are summed in float over chunks of this many elements (vectorised), chunks in double.
constexpr int64_t kChunk = 512;

// Work on a block of channels [c0, c1) of an (outer, channels, inner) tensor: per image the
// block's rows are one contiguous run of memory, which streams several times faster than one
// `inner`-long row per channel at a time (a 32x32 plane is one 4 KB page: the hardware
// prefetchers stop at its end). Every per-channel sum still runs over images, then chunks, in
// the same order whatever the block and thread count, so results do not depend on them.
constexpr int64_t kRunElements = 16384;  // aimed-for run per image and block
constexpr int64_t kMaxBlock = 256;

template <typename T>
struct Channel {
  int64_t outer, channels, inner;
  const T* row(const T* base, int64_t n, int64_t c) const {
    return base + (n * channels + c) * inner;
  }
};

// Sums (a, b) of f(i) over one row, in float per chunk and double over chunks.
template <typename T, typename F>
IGC_INLINE void row_sums(int64_t inner, F f, double* s1, double* s2) {
  for (int64_t i0 = 0; i0 < inner; i0 += kChunk) {
    const int64_t end = std::min(inner, i0 + kChunk);
    T a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = i0; i < end; ++i) {
      T u, v;
      f(i, &u, &v);
      a += u;
      b += v;
    }
    *s1 += a;
    *s2 += b;
  }
}

// Moments: each row (a channel's plane in one image) is summed around its own first value r,
// a = sum(x - r) and b = sum((x - r)^2) (row_moment_sums), and a channel's rows are then combined
// in image order around its first row's r0 (add_row_moments): sum(x - r0) = a + L d and
// sum((x - r0)^2) = b + 2 d a + L d^2 with d = r - r0, in double. No cancellation where |mean|
// >> std, and a row's sums need nothing but the row: IGCConv's forward takes them from its output
// planes while they are in cache (bn_row_moments_cpu), the same values as here.
template <typename T>
IGC_INLINE void row_moment_sums(const T* x, int64_t count, int64_t step, int64_t inner,
                                double* sums, int64_t sums_step) {
  for (int64_t i = 0; i < count; ++i) {
    const T* row = x + i * step;
    const T r = row[0];
    double a = 0, b = 0;
    row_sums<T>(inner, [&](int64_t k, T* u, T* v) {
      const T d = row[k] - r;
      *u = d;
      *v = d * d;
    }, &a, &b);
    double* out = sums + 3 * i * sums_step;
    out[0] = a;
    out[1] = b;
    out[2] = r;
  }
}

// Compiled once per ISA and never inlined, so that the BatchNormMoments op and IGCConv's forward
// run the same code on their rows.
template <typename T>
__attribute__((noinline)) void row_moments_sse2(const T* x, int64_t count, int64_t step,
                                                int64_t inner, double* sums, int64_t sums_step) {
  row_moment_sums(x, count, step, inner, sums, sums_step);
}
template <typename T>
IGC_TARGET_AVX2 __attribute__((noinline)) void row_moments_avx2(const T* x, int64_t count,
                                                                int64_t step, int64_t inner,
                                                                double* sums,
                                                                int64_t sums_step) {
  row_moment_sums(x, count, step, inner, sums, sums_step);
}

// Float rows with AVX2: the same sums with four vectors of partial sums each for a and b (one
// accumulator is a chain of dependent adds, about as slow as reading the row from memory, which
// is what IGCConv saves by taking them from cache), combined in one fixed order per chunk.
template <>
IGC_TARGET_AVX2 __attribute__((noinline)) void row_moments_avx2<float>(
    const float* x, int64_t count, int64_t step, int64_t inner, double* sums,
    int64_t sums_step) {
  for (int64_t i = 0; i < count; ++i) {
    const float* row = x + i * step;
    const __m256 r = _mm256_set1_ps(row[0]);
    double a = 0, b = 0;
    for (int64_t i0 = 0; i0 < inner; i0 += kChunk) {
      const int64_t end = std::min(inner, i0 + kChunk);
      __m256 sa[4], sb[4];
      for (int j = 0; j < 4; ++j) sa[j] = sb[j] = _mm256_setzero_ps();
      int64_t k = i0;
      for (; k + 32 <= end; k += 32) {
        for (int j = 0; j < 4; ++j) {
          const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(row + k + 8 * j), r);
          sa[j] = _mm256_add_ps(sa[j], d);
          sb[j] = _mm256_fmadd_ps(d, d, sb[j]);
        }
      }
      for (int j = 0; k < end; k += 8, ++j) {  // at most 3 whole or partial vectors left
        const __m256i mask = tail_mask(end - k);
        const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(row + k, mask), r),
                                       _mm256_castsi256_ps(mask));
        sa[j] = _mm256_add_ps(sa[j], d);
        sb[j] = _mm256_fmadd_ps(d, d, sb[j]);
      }
      a += horizontal_sum(_mm256_add_ps(_mm256_add_ps(sa[0], sa[1]),
                                        _mm256_add_ps(sa[2], sa[3])));
      b += horizontal_sum(_mm256_add_ps(_mm256_add_ps(sb[0], sb[1]),
                                        _mm256_add_ps(sb[2], sb[3])));
    }
    double* out = sums + 3 * i * sums_step;
    out[0] = a;
    out[1] = b;
    out[2] = row[0];
  }
}

template <typename T>
using RowMoments = void (*)(const T*, int64_t, int64_t, int64_t, double*, int64_t);

template <typename T>
RowMoments<T> pick_row_moments(bool avx2 = use_avx2_kernels()) {
  return avx2 ? row_moments_avx2<T> : row_moments_sse2<T>;
}

// A row's sums (a, b, r) added to its channel's (s1, s2) around r0 (see row_moment_sums).
IGC_INLINE void add_row_moments(const double* row, double r0, double values, double* s1,
                                double* s2) {
  const double d = row[2] - r0;
  *s1 += row[0] + values * d;
  *s2 += row[1] + d * (2 * row[0] + values * d);
}

// Channel c's summary values [m - s] and [m + s] from its sums around r0 over `count` values.
template <typename T>
IGC_INLINE void finish_moments(double s1, double s2, double r0, double count, int64_t channels,
                               int64_t c, T* summary) {
  const double mean_shifted = s1 / count;
  const double var = std::fmax(s2 / count - mean_shifted * mean_shifted, 0.0);
  const double sd = std::sqrt(var), mean = r0 + mean_shifted;
  summary[c] = static_cast<T>(mean - sd);
  summary[channels + c] = static_cast<T>(mean + sd);
}

template <typename T>
void moments_block(const Channel<T>& ch, const T* x, int64_t c0, int64_t c1, T* summary,
                   RowMoments<T> rows) {
  const double count = static_cast<double>(ch.outer * ch.inner);
  double s1[kMaxBlock] = {}, s2[kMaxBlock] = {}, r0[kMaxBlock], sums[3 * kMaxBlock];
  for (int64_t n = 0; n < ch.outer; ++n) {
    rows(ch.row(x, n, c0), c1 - c0, ch.inner, ch.inner, sums, 1);
    for (int64_t c = c0; c < c1; ++c) {
      if (n == 0) r0[c - c0] = sums[3 * (c - c0) + 2];
      add_row_moments(sums + 3 * (c - c0), r0[c - c0], static_cast<double>(ch.inner),
                      &s1[c - c0], &s2[c - c0]);
    }
  }
  for (int64_t c = c0; c < c1; ++c) {
    finish_moments(s1[c - c0], s2[c - c0], r0[c - c0], count, ch.channels, c, summary);
  }
}

// With `stream` (float with AVX2 only) each row goes through `buf` (kChunk values, in L1) and on
// to y with non-temporal stores (stream.h): the same values, one pass over memory fewer.
template <typename T, int kAct>
IGC_INLINE void forward_block(const Channel<T>& ch, const T* x, const T* scales, const T* shifts,
                              int64_t c0, int64_t c1, T* y, bool stream) {
  alignas(64) T buf[kChunk];
  for (int64_t n = 0; n < ch.outer; ++n) {
    for (int64_t c = c0; c < c1; ++c) {
      const T scale = scales[c], shift = shifts[c];
      const T* src = ch.row(x, n, c);
      T* dst = y + (src - x);
      for (int64_t i0 = 0; i0 < ch.inner; i0 += kChunk) {
        const int64_t len = std::min(kChunk, ch.inner - i0);
        T* out = stream ? buf : dst + i0;
        const T* in = src + i0;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) out[i] = activate<T, kAct>(in[i] * scale + shift);
        if constexpr (std::is_same<T, float>::value) {
          if (stream) stream_copy(dst + i0, buf, len);
        }
      }
    }
  }
  if (stream) stream_fence();
}

// The apply's backward works on chunks of a row (at most kChunk values) in two passes: the sums
// (sum g, sum g * (x - m)) of g = dy masked by the activation (chunk_sums), then dx
// (chunk_apply). Both are compiled once per ISA and never inlined, so that backward_block and the
// kernels that take a row at a time (bn_backward_row_sums_cpu and bn_backward_row_apply_cpu:
// IGCConv's pointwise backward) compute the same values.
//
// The sums take kSumRows rows (channels) at a time, each with its own two accumulators: one
// row's are two chains of dependent adds, which bound the pass at one vector per add latency,
// where without an activation the arithmetic is three instructions per vector. A group short of
// rows repeats its last one (the caller drops those sums), so that every row's sums come from
// the same code whichever group it falls in. One row at a time against four (1 thread, the two
// builds in turn, two runs each): IGCConv's backward of 64 x 144 x 32 x 32 -> 24 with its input
// BatchNorm (relu6) 20.5 and 19.7 against 18.1 and 17.8 ms; a mobilenetv2_cifar training step
// 565.9, 569.6 and 553.0 against 560.6, 551.1 and 551.8 ms (medians of 10).
constexpr int kSumRows = 4;

// The rows of a group: pointers to dy and x, and their channels' scale, shift and mean.
template <typename T>
struct SumRows {
  const T* g[kSumRows];
  const T* x[kSumRows];
  T scale[kSumRows], shift[kSumRows], m[kSumRows];
  // Row j (and, for now, every row after it).
  void set(int j, const T* gr, const T* xr, T sc, T sh, T mean) {
    for (int k = j; k < kSumRows; ++k) {
      g[k] = gr;
      x[k] = xr;
      scale[k] = sc;
      shift[k] = sh;
      m[k] = mean;
    }
  }
};

// Values [i0, i0 + len) of each row: ab[2 j] = sum g, ab[2 j + 1] = sum g * (x - m) of row j.
template <typename T, int kAct>
IGC_INLINE void chunk_sums(const SumRows<T>& r, int64_t i0, int64_t len, T* ab) {
  static_assert(kSumRows == 4, "four rows per group below");
  T a0 = 0, b0 = 0, a1 = 0, b1 = 0, a2 = 0, b2 = 0, a3 = 0, b3 = 0;
  const T *g0 = r.g[0] + i0, *g1 = r.g[1] + i0, *g2 = r.g[2] + i0, *g3 = r.g[3] + i0;
  const T *x0 = r.x[0] + i0, *x1 = r.x[1] + i0, *x2 = r.x[2] + i0, *x3 = r.x[3] + i0;
#pragma omp simd reduction(+ : a0, b0, a1, b1, a2, b2, a3, b3)
  for (int64_t i = 0; i < len; ++i) {
    const T v0 = g0[i] * pass_mask<T, kAct>(x0[i] * r.scale[0] + r.shift[0]);
    const T v1 = g1[i] * pass_mask<T, kAct>(x1[i] * r.scale[1] + r.shift[1]);
    const T v2 = g2[i] * pass_mask<T, kAct>(x2[i] * r.scale[2] + r.shift[2]);
    const T v3 = g3[i] * pass_mask<T, kAct>(x3[i] * r.scale[3] + r.shift[3]);
    a0 += v0;
    b0 += v0 * (x0[i] - r.m[0]);
    a1 += v1;
    b1 += v1 * (x1[i] - r.m[1]);
    a2 += v2;
    b2 += v2 * (x2[i] - r.m[2]);
    a3 += v3;
    b3 += v3 * (x3[i] - r.m[3]);
  }
  const T out[2 * kSumRows] = {a0, b0, a1, b1, a2, b2, a3, b3};
  std::copy(out, out + 2 * kSumRows, ab);
}

template <typename T, int kAct>
IGC_INLINE void chunk_apply(const T* gr, const T* xr, T scale, T shift, T m, T mg, T kc,
                            int64_t len, T* out) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const T g = gr[i] * pass_mask<T, kAct>(xr[i] * scale + shift);
    out[i] = scale * (g - mg - (xr[i] - m) * kc);
  }
}

template <typename T, int kAct>
__attribute__((noinline)) void chunk_sums_sse2(const SumRows<T>& r, int64_t i0, int64_t len,
                                               T* ab) {
  chunk_sums<T, kAct>(r, i0, len, ab);
}
template <typename T, int kAct>
IGC_TARGET_AVX2 __attribute__((noinline)) void chunk_sums_avx2(const SumRows<T>& r, int64_t i0,
                                                               int64_t len, T* ab) {
  chunk_sums<T, kAct>(r, i0, len, ab);
}
template <typename T, int kAct>
__attribute__((noinline)) void chunk_apply_sse2(const T* gr, const T* xr, T scale, T shift, T m,
                                                T mg, T kc, int64_t len, T* out) {
  chunk_apply<T, kAct>(gr, xr, scale, shift, m, mg, kc, len, out);
}
template <typename T, int kAct>
IGC_TARGET_AVX2 __attribute__((noinline)) void chunk_apply_avx2(const T* gr, const T* xr,
                                                                T scale, T shift, T m, T mg,
                                                                T kc, int64_t len, T* out) {
  chunk_apply<T, kAct>(gr, xr, scale, shift, m, mg, kc, len, out);
}

// The sums of rows [0, rows) of `inner` values, kSumRows rows at a time and chunk by chunk:
// set_row(i, j, &r) makes row i row j of the group r, emit(i, chunk, a, b) takes row i's sums of
// one chunk, chunks in order. `sums` is chunk_sums_avx2 or chunk_sums_sse2.
template <typename T, typename Sums, typename SetRow, typename Emit>
IGC_INLINE void grouped_chunk_sums(Sums sums, int64_t rows, int64_t inner, SetRow set_row,
                                   Emit emit) {
  for (int64_t r0 = 0; r0 < rows; r0 += kSumRows) {
    const int group = static_cast<int>(std::min<int64_t>(kSumRows, rows - r0));
    SumRows<T> r;
    for (int j = 0; j < group; ++j) set_row(r0 + j, j, &r);
    for (int64_t i0 = 0, k = 0; i0 < inner; i0 += kChunk, ++k) {
      T ab[2 * kSumRows];
      sums(r, i0, std::min(kChunk, inner - i0), ab);
      for (int j = 0; j < group; ++j) emit(r0 + j, k, ab[2 * j], ab[2 * j + 1]);
    }
  }
}

// Channel c's gradients from its sums over the batch: dbeta = sum(g), dgamma = sum(g * xhat),
// and the mean of g and k = mean(g * xhat) * invstd that dx takes.
template <typename T>
IGC_INLINE void finish_backward(double sg, double sgx, T invstd, T count, T* dgamma, T* dbeta,
                                T* mean_g, T* k) {
  const T sum_g = static_cast<T>(sg), sum_gxhat = static_cast<T>(sgx) * invstd;
  *dbeta = sum_g;
  *dgamma = sum_gxhat;
  *mean_g = sum_g / count;
  *k = sum_gxhat / count * invstd;
}

// Rows shorter than kShortRow (planes of 7x7, 8x8, 14x14) are summed position by position:
// per channel the sums of g and g * (x - m) at each of the row's positions over the images (in
// float, image by image, elementwise: no reduction inside a vector), then those `inner` sums in
// double. Summed per row instead, each row of 16 or 64 values paid its own horizontal
// reductions and calls (a mobilenetv2_cifar training step, 1 thread, the two ways alternating in
// one process: 557.5 -> 551.5 ms, faster in 15 of 16 rounds; 2 threads 304.4 -> 303.2 ms, 12 of
// 16). Pass 1 takes channels in runs of at most kShortRunValues values per image (their partial
// sums in L1). The row-dot conv path (bn_backward_row_sums_cpu) only sees rows of at least
// kShortRow values, which both sum by chunks.
constexpr int64_t kShortRow = 256;
constexpr int64_t kShortRunValues = 4096;

template <typename T, int kAct>
IGC_INLINE void short_rows_sums(const Channel<T>& ch, const T* dy, const T* x, const T* scales,
                                const T* shifts, const T* mean, int64_t c0, int64_t c1,
                                double* sg, double* sgx) {
  const int64_t inner = ch.inner, run = std::max<int64_t>(1, kShortRunValues / inner);
  alignas(64) T pa[kShortRunValues + kShortRow], pb[kShortRunValues + kShortRow];
  for (int64_t s0 = c0; s0 < c1; s0 += run) {
    const int64_t s1 = std::min(c1, s0 + run);
    std::fill(pa, pa + (s1 - s0) * inner, T(0));
    std::fill(pb, pb + (s1 - s0) * inner, T(0));
    for (int64_t n = 0; n < ch.outer; ++n) {
      for (int64_t c = s0; c < s1; ++c) {
        const T scale = scales[c], shift = shifts[c], m = mean[c];
        const T* xr = ch.row(x, n, c);
        const T* gr = dy + (xr - x);
        T* a = pa + (c - s0) * inner;
        T* b = pb + (c - s0) * inner;
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) {
          const T g = gr[i] * pass_mask<T, kAct>(xr[i] * scale + shift);
          a[i] += g;
          b[i] += g * (xr[i] - m);
        }
      }
    }
    for (int64_t c = s0; c < s1; ++c) {
      double u = 0, v = 0;
      for (int64_t i = 0; i < inner; ++i) {
        u += pa[(c - s0) * inner + i];
        v += pb[(c - s0) * inner + i];
      }
      sg[c - c0] = u;
      sgx[c - c0] = v;
    }
  }
}

// dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy masked by the activation;
// dbeta = sum(g), dgamma = sum(g * xhat). Two passes over the block: the sums, then dx.
template <typename T, int kAct, bool kAvx2>
IGC_INLINE void backward_block(const Channel<T>& ch, const T* dy, const T* x, const T* scales,
                               const T* shifts, const T* mean, const T* invstd, int64_t c0,
                               int64_t c1, T* dx, T* dgamma, T* dbeta, bool stream) {
  auto* sums = kAvx2 ? chunk_sums_avx2<T, kAct> : chunk_sums_sse2<T, kAct>;
  auto* apply = kAvx2 ? chunk_apply_avx2<T, kAct> : chunk_apply_sse2<T, kAct>;
  const bool short_rows = ch.inner < kShortRow;
  alignas(64) T buf[kChunk];
  double sg[kMaxBlock] = {}, sgx[kMaxBlock] = {};
  if (short_rows) {
    short_rows_sums<T, kAct>(ch, dy, x, scales, shifts, mean, c0, c1, sg, sgx);
  } else {
    for (int64_t n = 0; n < ch.outer; ++n) {
      grouped_chunk_sums<T>(
          sums, c1 - c0, ch.inner,
          [&](int64_t i, int j, SumRows<T>* r) {
            const T* xr = ch.row(x, n, c0 + i);
            r->set(j, dy + (xr - x), xr, scales[c0 + i], shifts[c0 + i], mean[c0 + i]);
          },
          [&](int64_t i, int64_t, T a, T b) {
            sg[i] += a;
            sgx[i] += b;
          });
    }
  }
  const T count = static_cast<T>(ch.outer * ch.inner);
  T mean_g[kMaxBlock], k[kMaxBlock];
  for (int64_t c = c0; c < c1; ++c) {
    finish_backward(sg[c - c0], sgx[c - c0], invstd[c], count, &dgamma[c], &dbeta[c],
                    &mean_g[c - c0], &k[c - c0]);
  }
  for (int64_t n = 0; n < ch.outer; ++n) {
    for (int64_t c = c0; c < c1; ++c) {
      const T* xr = ch.row(x, n, c);
      const T* gr = dy + (xr - x);
      T* dst = dx + (xr - x);
      if (short_rows && !stream) {  // inline: a call per row of 16 or 64 values costs
        chunk_apply<T, kAct>(gr, xr, scales[c], shifts[c], mean[c], mean_g[c - c0], k[c - c0],
                             ch.inner, dst);
        continue;
      }
      for (int64_t i0 = 0; i0 < ch.inner; i0 += kChunk) {
        const int64_t len = std::min(kChunk, ch.inner - i0);
        T* out = stream ? buf : dst + i0;
        apply(gr + i0, xr + i0, scales[c], shifts[c], mean[c], mean_g[c - c0], k[c - c0], len,
              out);
        if constexpr (std::is_same<T, float>::value) {
          if (stream) stream_copy(dst + i0, buf, len);
        }
      }
    }
  }
  if (stream) stream_fence();
}

// Channels per block: runs of about kRunElements, but at least 4 blocks per thread where the
// channels allow (the blocks are dealt out dynamically).
int64_t block_channels(int64_t channels, int64_t inner, int threads) {
  int64_t b = std::max<int64_t>(1, kRunElements / std::max<int64_t>(inner, 1));
  b = std::min(b, std::max<int64_t>(1, channels / (4 * threads)));
  return std::min({b, channels, kMaxBlock});
}

// Each block kernel compiled twice, for AVX2+FMA (picked at run time by use_avx2_kernels, see
// common.h) and for SSE2; the OpenMP loops call them through a pointer (an outlined parallel
// region would not inherit a target attribute).
template <typename T, int kAct>
void forward_sse2(const Channel<T>& ch, const T* x, const T* scale, const T* shift, int64_t c0,
                  int64_t c1, T* y, bool) {
  forward_block<T, kAct>(ch, x, scale, shift, c0, c1, y, false);
}
template <typename T, int kAct>
IGC_TARGET_AVX2 void forward_avx2(const Channel<T>& ch, const T* x, const T* scale,
                                  const T* shift, int64_t c0, int64_t c1, T* y, bool stream) {
  forward_block<T, kAct>(ch, x, scale, shift, c0, c1, y, stream);
}
template <typename T, int kAct>
void backward_sse2(const Channel<T>& ch, const T* dy, const T* x, const T* scale, const T* shift,
                   const T* mean, const T* invstd, int64_t c0, int64_t c1, T* dx, T* dgamma,
                   T* dbeta, bool) {
  backward_block<T, kAct, false>(ch, dy, x, scale, shift, mean, invstd, c0, c1, dx, dgamma,
                                 dbeta, false);
}
template <typename T, int kAct>
IGC_TARGET_AVX2 void backward_avx2(const Channel<T>& ch, const T* dy, const T* x, const T* scale,
                                   const T* shift, const T* mean, const T* invstd, int64_t c0,
                                   int64_t c1, T* dx, T* dgamma, T* dbeta, bool stream) {
  backward_block<T, kAct, true>(ch, dy, x, scale, shift, mean, invstd, c0, c1, dx, dgamma,
                                dbeta, stream);
}

// See bn_scale_shift_cpu. Compiled once, for no particular ISA: the same values whichever
// kernel then uses them. The shift's multiply-subtract is fused (one rounding), as the AVX2
// kernels computed it in place before, so their results stay what they were.
template <typename T>
void scale_shift(const T* gamma, const T* beta, const T* mean, const T* invstd, int64_t channels,
                 T* scale, T* shift) {
  for (int64_t c = 0; c < channels; ++c) {
    scale[c] = gamma[c] * invstd[c];
    shift[c] = std::fma(-mean[c], scale[c], beta[c]);
  }
}

// Whether an output of `values` values is streamed (float only).
template <typename T>
bool streamed(int64_t values) {
  return std::is_same<T, float>::value && stream_output(values * int64_t(sizeof(T)));
}

// Runs body(c0, c1) over the channel blocks on the threads the size calls for.
template <typename F>
void for_blocks(int64_t outer, int64_t channels, int64_t inner, F body) {
  const int threads = bn_threads(outer, channels, inner);
  const int64_t b = block_channels(channels, inner, threads);
  const int64_t blocks = (channels + b - 1) / b;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t j = 0; j < blocks; ++j) body(j * b, std::min(channels, (j + 1) * b));
}

template <typename T>
void moments(const T* x, int64_t outer, int64_t channels, int64_t inner, T* summary) {
  const Channel<T> ch{outer, channels, inner};
  const RowMoments<T> rows = pick_row_moments<T>();
  for_blocks(outer, channels, inner, [&](int64_t c0, int64_t c1) {
    moments_block(ch, x, c0, c1, summary, rows);
  });
}

template <typename T, int kAct>
void apply_forward(const T* x, const T* gamma, const T* beta, const T* mean, const T* invstd, T* y,
                   int64_t outer, int64_t channels, int64_t inner) {
  const Channel<T> ch{outer, channels, inner};
  const bool avx2 = use_avx2_kernels();
  auto* run = avx2 ? forward_avx2<T, kAct> : forward_sse2<T, kAct>;
  const bool stream = avx2 && streamed<T>(outer * channels * inner);
  std::vector<T> scale(channels), shift(channels);
  scale_shift(gamma, beta, mean, invstd, channels, scale.data(), shift.data());
  for_blocks(outer, channels, inner, [&](int64_t c0, int64_t c1) {
    run(ch, x, scale.data(), shift.data(), c0, c1, y, stream);
  });
}

template <typename T, int kAct>
void apply_backward(const T* dy, const T* x, const T* gamma, const T* beta, const T* mean,
                    const T* invstd, T* dx, T* dgamma, T* dbeta, int64_t outer, int64_t channels,
                    int64_t inner) {
  const Channel<T> ch{outer, channels, inner};
  const bool avx2 = use_avx2_kernels();
  auto* run = avx2 ? backward_avx2<T, kAct> : backward_sse2<T, kAct>;
  const bool stream = avx2 && streamed<T>(outer * channels * inner);
  std::vector<T> scale(channels), shift(channels);
  scale_shift(gamma, beta, mean, invstd, channels, scale.data(), shift.data());
  for_blocks(outer, channels, inner, [&](int64_t c0, int64_t c1) {
    run(ch, dy, x, scale.data(), shift.data(), mean, invstd, c0, c1, dx, dgamma, dbeta, stream);
  });
}

// See bn_apply_backward_channels_cpu: blocks of at most kMaxBlock channels, not streamed (the
// block is in cache; the values are the same either way).
template <typename T, int kAct>
void backward_channels(const T* dy, const T* x, const T* scale, const T* shift, const T* mean,
                       const T* invstd, T* dx, T* dgamma, T* dbeta, int64_t outer,
                       int64_t channels, int64_t inner, int64_t c0, int64_t c1) {
  const Channel<T> ch{outer, channels, inner};
  auto* run = use_avx2_kernels() ? backward_avx2<T, kAct> : backward_sse2<T, kAct>;
  for (int64_t b = c0; b < c1; b += kMaxBlock) {
    run(ch, dy, x, scale, shift, mean, invstd, b, std::min(c1, b + kMaxBlock), dx, dgamma, dbeta,
        false);
  }
}

template <typename T>
void backward_channels_any(const void* dy, const void* x, const void* scale, const void* shift,
                           const void* m, const void* v, void* dx, void* dg, void* db, int64_t o,
                           int64_t c, int64_t i, int64_t c0, int64_t c1, int act) {
  auto* run = act == kBnRelu    ? backward_channels<T, kBnRelu>
              : act == kBnRelu6 ? backward_channels<T, kBnRelu6>
                                : backward_channels<T, kBnNone>;
  run(static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(scale),
      static_cast<const T*>(shift), static_cast<const T*>(m), static_cast<const T*>(v),
      static_cast<T*>(dx), static_cast<T*>(dg), static_cast<T*>(db), o, c, i, c0, c1);
}

template <typename T>
void moments_any(const void* x, int64_t o, int64_t c, int64_t i, void* s) {
  moments(static_cast<const T*>(x), o, c, i, static_cast<T*>(s));
}

template <typename T>
void moments_from_rows(const double* sums, int64_t outer, int64_t channels, int64_t inner,
                       T* summary) {
  const double count = static_cast<double>(outer * inner), values = static_cast<double>(inner);
  if (outer * inner == 0) {  // no values (an empty batch): no statistics
    std::fill(summary, summary + 2 * channels, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  std::vector<double> s1(channels), s2(channels);
  for (int64_t n = 0; n < outer; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      add_row_moments(sums + 3 * (n * channels + c), sums[3 * c + 2], values, &s1[c], &s2[c]);
    }
  }
  for (int64_t c = 0; c < channels; ++c) {
    finish_moments(s1[c], s2[c], sums[3 * c + 2], count, channels, c, summary);
  }
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
  if (dtype == kFloat32) moments_any<float>(x, outer, channels, inner, summary);
  if (dtype == kFloat64) moments_any<double>(x, outer, channels, inner, summary);
}

void bn_row_moments_cpu(int dtype, const void* x, int64_t count, int64_t row_step, int64_t inner,
                        double* sums, int64_t sums_step, bool avx2) {
  if (dtype == kFloat32) {
    pick_row_moments<float>(avx2)(static_cast<const float*>(x), count, row_step, inner, sums,
                              sums_step);
  } else if (dtype == kFloat64) {
    pick_row_moments<double>(avx2)(static_cast<const double*>(x), count, row_step, inner, sums,
                               sums_step);
  }
}

void bn_moments_from_rows_cpu(int dtype, const double* sums, int64_t outer, int64_t channels,
                              int64_t inner, void* summary) {
  if (dtype == kFloat32) {
    moments_from_rows(sums, outer, channels, inner, static_cast<float*>(summary));
  } else if (dtype == kFloat64) {
    moments_from_rows(sums, outer, channels, inner, static_cast<double*>(summary));
  }
}

void bn_scale_shift_cpu(int dtype, const void* gamma, const void* beta, const void* mean,
                        const void* invstd, int64_t channels, void* scale, void* shift) {
  if (dtype == kFloat32) {
    scale_shift(static_cast<const float*>(gamma), static_cast<const float*>(beta),
                static_cast<const float*>(mean), static_cast<const float*>(invstd), channels,
                static_cast<float*>(scale), static_cast<float*>(shift));
  } else if (dtype == kFloat64) {
    scale_shift(static_cast<const double*>(gamma), static_cast<const double*>(beta),
                static_cast<const double*>(mean), static_cast<const double*>(invstd), channels,
                static_cast<double*>(scale), static_cast<double*>(shift));
  }
}

void bn_apply_forward_cpu(int dtype, const void* x, const void* gamma, const void* beta,
                          const void* mean, const void* invstd, void* y, int64_t outer,
                          int64_t channels, int64_t inner, int act) {
  if (dtype == kFloat32) {
    forward_any<float>(x, gamma, beta, mean, invstd, y, outer, channels, inner, act);
  } else if (dtype == kFloat64) {
    forward_any<double>(x, gamma, beta, mean, invstd, y, outer, channels, inner, act);
  }
}

void bn_apply_backward_cpu(int dtype, const void* y_grad, const void* x, const void* gamma,
                           const void* beta, const void* mean, const void* invstd,
                           void* data_grad, void* gamma_grad, void* beta_grad, int64_t outer,
                           int64_t channels, int64_t inner, int act) {
  if (dtype == kFloat32) {
    backward_any<float>(y_grad, x, gamma, beta, mean, invstd, data_grad, gamma_grad, beta_grad,
                        outer, channels, inner, act);
  } else if (dtype == kFloat64) {
    backward_any<double>(y_grad, x, gamma, beta, mean, invstd, data_grad, gamma_grad, beta_grad,
                         outer, channels, inner, act);
  }
}

void bn_apply_backward_channels_cpu(int dtype, const void* y_grad, const void* x,
                                    const void* scale, const void* shift, const void* mean,
                                    const void* invstd, void* data_grad, void* gamma_grad,
                                    void* beta_grad, int64_t outer, int64_t channels,
                                    int64_t inner, int64_t c0, int64_t c1, int act) {
  if (dtype == kFloat32) {
    backward_channels_any<float>(y_grad, x, scale, shift, mean, invstd, data_grad, gamma_grad,
                                 beta_grad, outer, channels, inner, c0, c1, act);
  } else if (dtype == kFloat64) {
    backward_channels_any<double>(y_grad, x, scale, shift, mean, invstd, data_grad, gamma_grad,
                                  beta_grad, outer, channels, inner, c0, c1, act);
  }
}

int64_t bn_backward_row_chunks(int64_t inner) { return (inner + kChunk - 1) / kChunk; }

namespace {

template <int kAct>
void row_sums_float(const float* dy, const float* x, const float* scale, const float* shift,
                    const float* mean, int64_t rows, int64_t inner, bool avx2, float* sums) {
  auto* run = avx2 ? chunk_sums_avx2<float, kAct> : chunk_sums_sse2<float, kAct>;
  const int64_t chunks = bn_backward_row_chunks(inner);
  grouped_chunk_sums<float>(
      run, rows, inner,
      [&](int64_t i, int j, SumRows<float>* r) {
        r->set(j, dy + i * inner, x + i * inner, scale[i], shift[i], mean[i]);
      },
      [&](int64_t i, int64_t k, float a, float b) {
        sums[2 * (chunks * i + k)] = a;
        sums[2 * (chunks * i + k) + 1] = b;
      });
}

template <int kAct>
void row_apply_float(const float* dy, const float* x, float scale, float shift, float mean,
                     float mean_g, float k, int64_t inner, bool avx2, float* dx) {
  auto* run = avx2 ? chunk_apply_avx2<float, kAct> : chunk_apply_sse2<float, kAct>;
  for (int64_t i0 = 0; i0 < inner; i0 += kChunk) {
    run(dy + i0, x + i0, scale, shift, mean, mean_g, k, std::min(kChunk, inner - i0), dx + i0);
  }
}

}  // namespace

void bn_backward_row_sums_cpu(const float* y_grad, const float* x, const float* scale,
                              const float* shift, const float* mean, int64_t rows,
                              int64_t inner, int act, bool avx2, float* sums) {
  auto* run = act == kBnRelu    ? row_sums_float<kBnRelu>
              : act == kBnRelu6 ? row_sums_float<kBnRelu6>
                                : row_sums_float<kBnNone>;
  run(y_grad, x, scale, shift, mean, rows, inner, avx2, sums);
}

void bn_backward_finish_cpu(const float* sums, int64_t outer, int64_t channels, int64_t inner,
                            int64_t c0, int64_t c1, const float* invstd, float* gamma_grad,
                            float* beta_grad, float* mean_g, float* k) {
  const int64_t chunks = bn_backward_row_chunks(inner);
  const float count = static_cast<float>(outer * inner);
  for (int64_t c = c0; c < c1; ++c) {
    double sg = 0, sgx = 0;
    for (int64_t n = 0; n < outer; ++n) {
      const float* s = sums + (n * channels + c) * chunks * 2;
      for (int64_t j = 0; j < chunks; ++j) {
        sg += s[2 * j];
        sgx += s[2 * j + 1];
      }
    }
    finish_backward(sg, sgx, invstd[c], count, &gamma_grad[c], &beta_grad[c], &mean_g[c], &k[c]);
  }
}

void bn_backward_row_apply_cpu(const float* y_grad, const float* x, float scale, float shift,
                               float mean, float mean_g, float k, int64_t inner, int act,
                               bool avx2, float* data_grad) {
  auto* run = act == kBnRelu    ? row_apply_float<kBnRelu>
              : act == kBnRelu6 ? row_apply_float<kBnRelu6>
                                : row_apply_float<kBnNone>;
  run(y_grad, x, scale, shift, mean, mean_g, k, inner, avx2, data_grad);
}

}  // namespace igc
