// Small AVX2 helpers shared by CPU kernels that keep register blocks of pixels x 8 filters
// (the packed IGCBlock, IGCConv's dense few-channel forward): partial vector loads and stores,
// ReLU6, a BatchNorm apply and an 8 x 8 transposition from pixel-major accumulators to
// filter-major rows.
#ifndef IGC_OPERATOR_VEC_AVX2_H_
#define IGC_OPERATOR_VEC_AVX2_H_

#include <immintrin.h>

#include "batch_norm.h"
#include "common.h"

namespace igc {

// The first C (0 .. 4) floats of x to p / from p (the others zero).
template <int C>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void store_first4(float* p, __m128 x) {
  if constexpr (C == 4) _mm_storeu_ps(p, x);
  if constexpr (C == 3) _mm_store_ss(p + 2, _mm_movehl_ps(x, x));
  if constexpr (C == 2 || C == 3) _mm_storel_pi(reinterpret_cast<__m64*>(p), x);
  if constexpr (C == 1) _mm_store_ss(p, x);
}

template <int C>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline __m128 load_first4(const float* p) {
  if constexpr (C == 4) return _mm_loadu_ps(p);
  if constexpr (C == 3) {
    return _mm_movelh_ps(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))),
                         _mm_load_ss(p + 2));
  }
  if constexpr (C == 2) return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
  if constexpr (C == 1) return _mm_load_ss(p);
  return _mm_setzero_ps();
}

// The first C (1 .. 8) floats of v to p / from p.
template <int C>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void store_first(float* p, __m256 v) {
  if constexpr (C == 8) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (C > 4) {
    _mm_storeu_ps(p, _mm256_castps256_ps128(v));
    store_first4<C - 4>(p + 4, _mm256_extractf128_ps(v, 1));
  } else {
    store_first4<C>(p, _mm256_castps256_ps128(v));
  }
}

template <int C>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline __m256 load_first(const float* p) {
  if constexpr (C == 8) return _mm256_loadu_ps(p);
  if constexpr (C > 4) return _mm256_set_m128(load_first4<C - 4>(p + 4), _mm_loadu_ps(p));
  return _mm256_insertf128_ps(_mm256_setzero_ps(), load_first4<C>(p), 0);
}

// min(max(v, 0), 6) with a NaN kept (in this operand order), as MXNet's clip(0, 6) does.
IGC_TARGET_AVX2 __attribute__((always_inline)) inline __m256 relu6_ps(__m256 v) {
  return _mm256_min_ps(_mm256_set1_ps(6.0f), _mm256_max_ps(_mm256_setzero_ps(), v));
}

// act(v * scale + shift) (a BnActivation), as BatchNormApply's AVX2 kernel computes it: the
// multiply-add fused; ReLU's max(v, 0) returns 0 for a NaN, as v > 0 ? v : 0 does, and ReLU6
// keeps it (relu6_ps).
IGC_TARGET_AVX2 __attribute__((always_inline)) inline __m256 bn_apply_ps(__m256 v, __m256 scale,
                                                                         __m256 shift, int act) {
  const __m256 y = _mm256_fmadd_ps(v, scale, shift);
  if (act == kBnRelu) return _mm256_max_ps(y, _mm256_setzero_ps());
  if (act == kBnRelu6) return relu6_ps(y);
  return y;
}

// In place: v[i] lane j <- v[j] lane i.
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void transpose8(__m256 (&v)[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

}  // namespace igc

#endif  // IGC_OPERATOR_VEC_AVX2_H_
