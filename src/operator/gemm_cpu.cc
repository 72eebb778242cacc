// CPU GEMM kernels (see gemm.h).
#include "gemm.h"

#include <algorithm>

namespace igc {
namespace {

constexpr int kRows = 6, kCols = 16;  // register block of the GEMM
constexpr int64_t kPanelBytes = 192 * 1024;  // B panel (K x columns) kept in cache per pass

// Columns per pass over the weights: about kPanelBytes of B, split evenly over the passes (a
// multiple of `step`), so that no pass is a thin remainder (49 = 48 + 1 would run the weights
// twice for one column).
inline int64_t panel_columns(int64_t K, int64_t N, int64_t step) {
  const int64_t most = std::max<int64_t>(kPanelBytes / (4 * std::max<int64_t>(K, 1)), step);
  const int64_t passes = (N + most - 1) / most;
  const int64_t even = (N + passes - 1) / passes;
  return (even + step - 1) / step * step;
}

void gemm_portable(const Gemm& g) {
  for (int64_t m = 0; m < g.M; ++m) {
    float* c = g.c + m * g.ldc;
    for (int64_t n = 0; n < g.N; ++n) c[n] = g.bias[m];
    const float* a = g.a + m * g.lda;
    for (int64_t k = 0; k < g.K; ++k) {
      const float w = a[k];
      const float* b = g.b[k];
      for (int64_t n = 0; n < g.N; ++n) c[n] += w * b[n];
    }
    if (g.r) {
      const float* r = g.r + m * g.ldr;
      for (int64_t n = 0; n < g.N; ++n) c[n] += r[n];
    }
  }
}


// kRows x 16 block at (m0, n0): MR rows (MR <= kRows), all 16 columns unless kTail (then the
// masks say which columns exist).
template <int MR, bool kTail>
IGC_TARGET_AVX2 inline void block_avx2(const Gemm& g, int64_t m0, int64_t n0, __m256i mask0,
                                       __m256i mask1) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_set1_ps(g.bias[m0 + i]);
  const float* a = g.a + m0 * g.lda;
  for (int64_t k = 0; k < g.K; ++k) {
    if ((k & 15) == 0) {  // the next block's weight rows: at batch 1 they come from memory
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(a + (MR + i) * g.lda + k), _MM_HINT_T0);
      }
    }
    const float* b = g.b[k] + n0;
    const __m256 b0 = kTail ? _mm256_maskload_ps(b, mask0) : _mm256_loadu_ps(b);
    const __m256 b1 = kTail ? _mm256_maskload_ps(b + 8, mask1) : _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 w = _mm256_broadcast_ss(a + i * g.lda + k);
      acc0[i] = _mm256_fmadd_ps(w, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(w, b1, acc1[i]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* c = g.c + (m0 + i) * g.ldc + n0;
    if (g.r) {
      const float* r = g.r + (m0 + i) * g.ldr + n0;
      acc0[i] = _mm256_add_ps(acc0[i], kTail ? _mm256_maskload_ps(r, mask0) : _mm256_loadu_ps(r));
      acc1[i] = _mm256_add_ps(acc1[i],
                              kTail ? _mm256_maskload_ps(r + 8, mask1) : _mm256_loadu_ps(r + 8));
    }
    if (kTail) {
      _mm256_maskstore_ps(c, mask0, acc0[i]);
      _mm256_maskstore_ps(c + 8, mask1, acc1[i]);
    } else {
      _mm256_storeu_ps(c, acc0[i]);
      _mm256_storeu_ps(c + 8, acc1[i]);
    }
  }
}

template <bool kTail>
IGC_TARGET_AVX2 inline void rows_avx2(const Gemm& g, int64_t m0, int64_t rows, int64_t n0,
                                      __m256i mask0, __m256i mask1) {
  switch (rows) {
    case 6: block_avx2<6, kTail>(g, m0, n0, mask0, mask1); break;
    case 5: block_avx2<5, kTail>(g, m0, n0, mask0, mask1); break;
    case 4: block_avx2<4, kTail>(g, m0, n0, mask0, mask1); break;
    case 3: block_avx2<3, kTail>(g, m0, n0, mask0, mask1); break;
    case 2: block_avx2<2, kTail>(g, m0, n0, mask0, mask1); break;
    default: block_avx2<1, kTail>(g, m0, n0, mask0, mask1); break;
  }
}

IGC_TARGET_AVX2 void gemm_avx2(const Gemm& g) {
  const int64_t panel = panel_columns(g.K, g.N, kCols);
  const __m256i all = _mm256_set1_epi32(-1);
  for (int64_t p0 = 0; p0 < g.N; p0 += panel) {
    const int64_t p1 = std::min(g.N, p0 + panel);
    for (int64_t m0 = 0; m0 < g.M; m0 += kRows) {
      const int64_t rows = std::min<int64_t>(kRows, g.M - m0);
      int64_t n0 = p0;
      for (; n0 + kCols <= p1; n0 += kCols) rows_avx2<false>(g, m0, rows, n0, all, all);
      if (n0 < p1 && p1 >= kCols) {
        // The last 16 columns again: the same values, and masked stores are slow on some CPUs.
        rows_avx2<false>(g, m0, rows, p1 - kCols, all, all);
      } else if (n0 < p1) {
        const int64_t left = p1 - n0;
        rows_avx2<true>(g, m0, rows, n0, tail_mask(left), tail_mask(left - 8));
      }
    }
  }
}

// AVX-512F: 8 x 32 register blocks; masked loads and stores are cheap here, so tails use them.
constexpr int kRows512 = 8, kCols512 = 32;

IGC_TARGET_AVX512 inline __mmask16 mask16(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0)
                                                      : __mmask16((1u << count) - 1);
}

template <int MR>
IGC_TARGET_AVX512 inline void block_avx512(const Gemm& g, int64_t m0, int64_t n0, __mmask16 k0,
                                           __mmask16 k1) {
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_set1_ps(g.bias[m0 + i]);
  const float* a = g.a + m0 * g.lda;
  for (int64_t k = 0; k < g.K; ++k) {
    if ((k & 15) == 0) {  // the next block's weight rows: at batch 1 they come from memory
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(a + (MR + i) * g.lda + k), _MM_HINT_T0);
      }
    }
    const float* b = g.b[k] + n0;
    const __m512 b0 = _mm512_maskz_loadu_ps(k0, b);
    const __m512 b1 = _mm512_maskz_loadu_ps(k1, b + 16);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 w = _mm512_set1_ps(a[i * g.lda + k]);
      acc0[i] = _mm512_fmadd_ps(w, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(w, b1, acc1[i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    float* c = g.c + (m0 + i) * g.ldc + n0;
    if (g.r) {
      const float* r = g.r + (m0 + i) * g.ldr + n0;
      acc0[i] = _mm512_add_ps(acc0[i], _mm512_maskz_loadu_ps(k0, r));
      acc1[i] = _mm512_add_ps(acc1[i], _mm512_maskz_loadu_ps(k1, r + 16));
    }
    _mm512_mask_storeu_ps(c, k0, acc0[i]);
    _mm512_mask_storeu_ps(c + 16, k1, acc1[i]);
  }
}

IGC_TARGET_AVX512 void gemm_avx512(const Gemm& g) {
  const int64_t panel = panel_columns(g.K, g.N, kCols512);
  for (int64_t p0 = 0; p0 < g.N; p0 += panel) {
    const int64_t p1 = std::min(g.N, p0 + panel);
    for (int64_t m0 = 0; m0 < g.M; m0 += kRows512) {
      const int64_t rows = std::min<int64_t>(kRows512, g.M - m0);
      for (int64_t n0 = p0; n0 < p1; n0 += kCols512) {
        const __mmask16 k0 = mask16(p1 - n0), k1 = mask16(p1 - n0 - 16);
        switch (rows) {
          case 8: block_avx512<8>(g, m0, n0, k0, k1); break;
          case 7: block_avx512<7>(g, m0, n0, k0, k1); break;
          case 6: block_avx512<6>(g, m0, n0, k0, k1); break;
          case 5: block_avx512<5>(g, m0, n0, k0, k1); break;
          case 4: block_avx512<4>(g, m0, n0, k0, k1); break;
          case 3: block_avx512<3>(g, m0, n0, k0, k1); break;
          case 2: block_avx512<2>(g, m0, n0, k0, k1); break;
          default: block_avx512<1>(g, m0, n0, k0, k1); break;
        }
      }
    }
  }
}

}  // namespace

GemmKernel pick_gemm() {
  if (!use_avx2_kernels()) return gemm_portable;
  return use_avx512_kernels() ? gemm_avx512 : gemm_avx2;
}

}  // namespace igc
