// IGCConv's depthwise 3x3 convs (one input and one output plane per group, padding 1, stride 1 or
// 2) on planes whose output rows fit one vector (unit stride up to 8 columns, stride 2 up to 16
// input columns), float32 with AVX2+FMA: forward, data gradient and weight gradient. The general
// path (igc_conv_cpu.cc) sets up one (image, channel) item at a time, a padded copy of the plane
// included, which on such planes is most of the work (a 64 x 960 x 4 x 4 forward, 144
// multiply-adds per item, ran at 3.6 GMAC/s). Here a work item is a block of channels of one
// image (forward) or of every image (backward); each input row is loaded once (two vectors at
// stride 2, split into even and odd columns) and its three column taps derived from it by
// permutes; the weights stay in registers; the weight gradient keeps a vector of partial sums
// per tap and channel over all images, reduced once (the same sums on any number of threads).
// Forward and unit-stride data-gradient sums take their terms in the general path's order (taps
// row by row); the stride-2 data gradient adds each value's 1, 2 or 4 terms directly. On AVX-512
// CPUs the unit-stride forward and data gradient of planes of at most 16 values or of 8 columns
// run 16 lanes (correlate_small_plane, correlate_pair_rows) with the same sums.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "batch_norm.h"
#include "common.h"
#include "gemm.h"
#include "igc_conv.h"
#include "vec_avx2.h"

namespace igc {
namespace {

// Planes taken (any height): unit stride up to 8 columns, stride 2 up to 16 (8 output columns).
constexpr int64_t kMaxUnitWidth = 8, kMaxStride2Width = 16;
// Below this many multiply-adds a call stays on the calling thread.
constexpr int64_t kMinParallelMacs = int64_t(1) << 18;

struct Plane {
  int64_t h, w, ho, wo;
  int stride;
};

// One channel's input transform (ConvInputTransform): x -> act(x * scale + shift) on every
// value loaded, zero past the row as before (the padding stays zero).
struct Transform {
  bool on;
  int act;
  __m256 scale, shift;
};

// The `count` values at x (at most 8) as a vector, zero past them; reads nothing past them.
IGC_TARGET_AVX2 inline __m256 load_row(const float* x, int64_t count) {
  if (count >= 8) return _mm256_loadu_ps(x);
  if (count == 4) return _mm256_insertf128_ps(_mm256_setzero_ps(), _mm_loadu_ps(x), 0);
  return _mm256_maskload_ps(x, tail_mask(count));
}

// The same through the transform `t` (bn_apply_ps, as BatchNormApply's AVX2 kernel computes it).
IGC_TARGET_AVX2 inline __m256 load_row(const float* x, int64_t count, const Transform& t) {
  const __m256 v = load_row(x, count);
  if (!t.on) return v;
  const __m256 y = bn_apply_ps(v, t.scale, t.shift, t.act);
  return count >= 8 ? y : _mm256_and_ps(y, _mm256_castsi256_ps(tail_mask(count)));
}

// The first `count` lanes of v to y, `room` floats from y to the end of the plane: where
// room >= 8, a whole vector (masked stores are slow on AMD CPUs); the values past `count` land on
// the plane's next rows, which are written after it.
IGC_TARGET_AVX2 inline void store_row(float* y, int64_t count, __m256 v, int64_t room) {
  if (count >= 8 || room >= 8) _mm256_storeu_ps(y, v);
  else if (count == 4) _mm_storeu_ps(y, _mm256_castps256_ps128(v));
  else _mm256_maskstore_ps(y, tail_mask(count), v);
}

// The three column taps of a row as vectors over its output columns: at unit stride on a row of
// w values, v (lane x = row[x]), its shift right (lane x = row[x - 1], zero at 0) and left (lane
// x = row[x + 1]); at stride 2 (w <= 16, wo outputs), row[2x - 1], row[2x] and row[2x + 1]. Lanes
// past the output columns are zero (so that 0 * inf never enters a weight gradient).
struct Taps {
  __m256 t[3];
};

struct Shifts {
  __m256i right, left;
  __m256 right_keep, left_keep;  // lanes [1, wo) and [0, wo - 1)
};

IGC_TARGET_AVX2 inline Shifts make_shifts(const Plane& s) {
  Shifts m;
  m.right = _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6);
  m.left = _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7);
  m.right_keep = _mm256_castsi256_ps(_mm256_andnot_si256(tail_mask(1), tail_mask(s.wo)));
  m.left_keep = _mm256_castsi256_ps(tail_mask(s.wo - 1));
  return m;
}

IGC_TARGET_AVX2 inline Taps unit_taps(const float* row, const Plane& s, const Shifts& m,
                                      const Transform& t) {
  const __m256 v = load_row(row, s.w, t);
  return Taps{{_mm256_and_ps(_mm256_permutevar8x32_ps(v, m.right), m.right_keep), v,
               _mm256_and_ps(_mm256_permutevar8x32_ps(v, m.left), m.left_keep)}};
}

IGC_TARGET_AVX2 inline Taps stride2_taps(const float* row, const Plane& s, const Shifts& m,
                                         const Transform& t) {
  const __m256 a = load_row(row, s.w, t);
  const __m256 b = s.w > 8 ? load_row(row + 8, s.w - 8, t) : _mm256_setzero_ps();
  const __m256 even = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
  const __m256 odd = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  // odd lanes past wo read past the row (zero); the shifted ones may hold row[2 wo - 1]
  return Taps{{_mm256_and_ps(_mm256_permutevar8x32_ps(odd, m.right), m.right_keep), even, odd}};
}

IGC_TARGET_AVX2 inline Taps zero_taps() {
  return Taps{{_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}};
}

IGC_TARGET_AVX2 inline Taps row_taps(const float* x, int64_t r, const Plane& s, const Shifts& m,
                                     const Transform& t) {
  if (r < 0 || r >= s.h) return zero_taps();
  return s.stride == 1 ? unit_taps(x + r * s.w, s, m, t) : stride2_taps(x + r * s.w, s, m, t);
}

IGC_TARGET_AVX2 inline __m256 correlate_row(const Taps (&rows)[3], const __m256 (&w)[9],
                                            __m256 acc) {
  for (int ky = 0; ky < 3; ++ky) {
    for (int kx = 0; kx < 3; ++kx) acc = _mm256_fmadd_ps(w[ky * 3 + kx], rows[ky].t[kx], acc);
  }
  return acc;
}

// The taps of input rows y S - 1, y S and y S + 1 for output row y = 0, 1, ... in turn, each
// row's computed once: advance(y) before row y.
struct RowWindow {
  Taps rows[3];

  IGC_TARGET_AVX2 RowWindow(const float* x, const Plane& s, const Shifts& m, const Transform& t) {
    rows[0] = rows[1] = zero_taps();
    rows[2] = row_taps(x, -1, s, m, t);
  }
};

IGC_TARGET_AVX2 __attribute__((always_inline)) inline void advance(RowWindow& r, const float* x,
                                                                   int64_t y, const Plane& s,
                                                                   const Shifts& m,
                                                                   const Transform& t) {
  const int64_t top = y * s.stride - 1;
  if (s.stride == 1 && y > 0) {
    r.rows[0] = r.rows[1];
    r.rows[1] = r.rows[2];
  } else {
    r.rows[0] = r.rows[2];
    r.rows[1] = row_taps(x, top + 1, s, m, t);
  }
  r.rows[2] = row_taps(x, top + 2, s, m, t);
}

// out[y][x] = init + sum over ky, kx of w[ky * 3 + kx] * x[y S + ky - 1][x S + kx - 1] (zero
// outside the plane), the taps in that order, for the plane's ho x wo outputs.
IGC_TARGET_AVX2 inline void correlate_plane(const float* x, const Plane& s, const Shifts& m,
                                            const __m256 (&w)[9], __m256 init, float* out,
                                            const Transform& t) {
  RowWindow r(x, s, m, t);
  for (int64_t y = 0; y < s.ho; ++y) {
    advance(r, x, y, s, m, t);
    store_row(out + y * s.wo, s.wo, correlate_row(r.rows, w, init), (s.ho - y) * s.wo);
  }
}

// Output-gradient row r (zero past the plane) and the same shifted: lane c = dy[r][c + 1].
IGC_TARGET_AVX2 inline void grad_row(const float* dy, int64_t r, const Plane& s, const Shifts& m,
                                     __m256& d0, __m256& d1) {
  d0 = r < s.ho ? load_row(dy + r * s.wo, s.wo) : _mm256_setzero_ps();
  d1 = _mm256_and_ps(_mm256_permutevar8x32_ps(d0, m.left), m.left_keep);
}

// The data gradient of a stride-2 plane (h x w_in, w_in <= 16) from the output gradient dy (ho x
// wo): input row 2r takes kernel row 1 from output row r, row 2r + 1 kernel rows 2 and 0 from
// rows r and r + 1; even columns 2c kernel column 1 from column c, odd ones columns 2 and 0 from
// c and c + 1.
IGC_TARGET_AVX2 inline void data_grad_stride2(const float* dy, const Plane& s, const Shifts& m,
                                              const __m256 (&w)[9], float* out) {
  __m256 d0 = _mm256_setzero_ps(), d1 = d0, e0, e1;
  grad_row(dy, 0, s, m, e0, e1);
  for (int64_t i = 0; i < s.h; ++i) {
    __m256 even, odd;
    if (i % 2 == 0) {
      d0 = e0, d1 = e1;
      even = _mm256_mul_ps(w[4], d0);
      odd = _mm256_fmadd_ps(w[3], d1, _mm256_mul_ps(w[5], d0));
    } else {
      grad_row(dy, i / 2 + 1, s, m, e0, e1);
      even = _mm256_fmadd_ps(w[1], e0, _mm256_mul_ps(w[7], d0));
      const __m256 from_r = _mm256_fmadd_ps(w[6], d1, _mm256_mul_ps(w[8], d0));
      odd = _mm256_fmadd_ps(w[0], e1, _mm256_fmadd_ps(w[2], e0, from_r));
    }
    const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
    float* row = out + i * s.w;
    const int64_t room = (s.h - i) * s.w;
    if (s.w > 8) {
      _mm256_storeu_ps(row, _mm256_permute2f128_ps(lo, hi, 0x20));
      store_row(row + 8, s.w - 8, _mm256_permute2f128_ps(lo, hi, 0x31), room - 8);
    } else {
      store_row(row, s.w, _mm256_permute2f128_ps(lo, hi, 0x20), room);
    }
  }
}

IGC_TARGET_AVX2 inline void load_weights(const float* w, bool flip, __m256 (&v)[9]) {
  for (int t = 0; t < 9; ++t) v[t] = _mm256_broadcast_ss(w + (flip ? 8 - t : t));
}

// Unit-stride planes of at most 16 values (the 4x4 ones) on AVX-512 CPUs: a whole plane in one
// zmm, each tap's shifted plane one zero-masking permute of it (zero where the tap falls in the
// padding), then the nine multiply-adds of every output in correlate_row's order (init, then the
// taps row by row, padding taps adding w * 0) with the input transform as load_row applies it:
// the AVX2 kernel's values, where it spends an 8-lane vector on each 4-value row. Planes of 16
// values are most of IGCV3's and MobileNetV2's last stage on CIFAR (64 x 960 x 4 x 4).
struct SmallPlane {
  alignas(64) int32_t index[9][16];  // lane i of tap t reads plane value index[t][i] ...
  uint16_t keep[9];                  // ... where bit i is set, else 0
  uint16_t valid;                    // the plane's h * w lanes
};

bool small_plane(const Plane& s) { return s.stride == 1 && s.h * s.w <= 16; }

SmallPlane make_small_plane(const Plane& s) {
  SmallPlane p{};
  p.valid = static_cast<uint16_t>((1u << (s.h * s.w)) - 1);
  for (int t = 0; t < 9; ++t) {
    for (int64_t i = 0; i < s.h * s.w; ++i) {
      const int64_t y = i / s.w + t / 3 - 1, x = i % s.w + t % 3 - 1;
      if (y < 0 || y >= s.h || x < 0 || x >= s.w) continue;
      p.index[t][i] = static_cast<int32_t>(y * s.w + x);
      p.keep[t] = static_cast<uint16_t>(p.keep[t] | (1u << i));
    }
  }
  return p;
}

// out = init + sum over the taps of w[t] * x shifted (w[8 - t] with `flip`), x through the
// transform (scale, shift, act) when `transform`.
// bn_apply_ps in 16 lanes, its operand order included (what a NaN becomes). (All-lanes masks on
// max and min: GCC 12's unmasked forms warn of an undefined operand.)
IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 bn_apply_zmm(__m512 v, __m512 scale,
                                                                          __m512 shift, int act) {
  const __m512 zero = _mm512_setzero_ps(), y = _mm512_fmadd_ps(v, scale, shift);
  if (act == kBnRelu) return _mm512_mask_max_ps(y, 0xffff, y, zero);
  if (act != kBnRelu6) return y;
  const __m512 six = _mm512_set1_ps(6.0f);
  return _mm512_mask_min_ps(six, 0xffff, six, _mm512_mask_max_ps(zero, 0xffff, zero, y));
}

IGC_TARGET_AVX512 void correlate_small_plane(const float* x, const SmallPlane& p, const float* w,
                                             bool flip, float init, float* out, bool transform,
                                             float scale, float shift, int act) {
  __m512 v = _mm512_maskz_loadu_ps(p.valid, x);
  if (transform) v = bn_apply_zmm(v, _mm512_set1_ps(scale), _mm512_set1_ps(shift), act);
  __m512 acc = _mm512_set1_ps(init);
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) {
    const __m512i index = _mm512_load_si512(p.index[t]);
    const __m512 tap = _mm512_maskz_permutexvar_ps(p.keep[t], index, v);
    acc = _mm512_fmadd_ps(_mm512_set1_ps(w[flip ? 8 - t : t]), tap, acc);
  }
  _mm512_mask_storeu_ps(out, p.valid, acc);
}

// Unit-stride planes of 8 columns (any height, the 8x8 ones) on AVX-512 CPUs: two rows per
// zmm. Output rows 2j and 2j + 1 (register j) take kernel row 1 from register j, kernel row 0
// from rows 2j - 1 and 2j (the upper half of register j - 1, the lower of j) and kernel row 2
// from rows 2j + 1 and 2j + 2: one permute of one or two registers per tap, zero-masked where
// the column falls in the padding; rows past the plane are zero registers. The sums and the
// input transform as correlate_small_plane (the AVX2 kernel's values).
struct PairRows {
  alignas(64) int32_t index[9][16];
  uint16_t keep[9];
};

bool pair_rows(const Plane& s) { return s.stride == 1 && s.w == 8 && s.h > 2; }

PairRows make_pair_rows() {
  PairRows p{};
  for (int t = 0; t < 9; ++t) {
    const int ky = t / 3, dx = t % 3 - 1;
    for (int i = 0; i < 16; ++i) {
      const int x = i % 8 + dx, upper = i / 8;  // upper: output row 2j + 1
      if (x < 0 || x >= 8) continue;
      // ky 1: the register itself; ky 0: (j - 1, j) as sources 0 and 1; ky 2: (j, j + 1)
      p.index[t][i] = ky == 1 ? 8 * upper + x : (upper ? 16 + x : 8 + x);
      p.keep[t] = static_cast<uint16_t>(p.keep[t] | (1u << i));
    }
  }
  return p;
}

// Rows 2j and 2j + 1 of an h x 8 plane (zero past it), through the transform when `transform`.
IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 row_pair(
    const float* x, int64_t h, int64_t j, bool transform, __m512 scale, __m512 shift, int act) {
  if (j < 0 || 2 * j >= h) return _mm512_setzero_ps();
  const __mmask16 valid = 2 * j + 1 < h ? 0xffff : 0x00ff;
  const __m512 v = _mm512_maskz_loadu_ps(valid, x + 16 * j);
  if (!transform) return v;
  return _mm512_maskz_mov_ps(valid, bn_apply_zmm(v, scale, shift, act));  // (padding stays 0)
}

IGC_TARGET_AVX512 void correlate_pair_rows(const float* x, int64_t h, const PairRows& p,
                                           const float* w, bool flip, float init, float* out,
                                           bool transform, float scale, float shift, int act) {
  const __m512 sc = _mm512_set1_ps(scale), sh = _mm512_set1_ps(shift);
  __m512 wv[9];
  for (int t = 0; t < 9; ++t) wv[t] = _mm512_set1_ps(w[flip ? 8 - t : t]);
  const int64_t pairs = (h + 1) / 2;
  __m512 prev = _mm512_setzero_ps();
  __m512 cur = row_pair(x, h, 0, transform, sc, sh, act);
  for (int64_t j = 0; j < pairs; ++j) {
    const __m512 next = row_pair(x, h, j + 1, transform, sc, sh, act);
    __m512 acc = _mm512_set1_ps(init);
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) {
      const __m512i index = _mm512_load_si512(p.index[t]);
      __m512 tap;
      if (t == 4) tap = cur;  // (the identity)
      else if (t / 3 == 1) tap = _mm512_maskz_permutexvar_ps(p.keep[t], index, cur);
      else if (t / 3 == 0) tap = _mm512_maskz_permutex2var_ps(p.keep[t], prev, index, cur);
      else tap = _mm512_maskz_permutex2var_ps(p.keep[t], cur, index, next);
      acc = _mm512_fmadd_ps(wv[t], tap, acc);
    }
    _mm512_mask_storeu_ps(out + 16 * j, 2 * j + 1 < h ? 0xffff : 0x00ff, acc);
    prev = cur;
    cur = next;
  }
}

// Threads for `macs` multiply-adds in `items` work items.
int threads_for(int64_t macs, int64_t items) {
  if (macs < kMinParallelMacs) return 1;
  return static_cast<int>(std::min<int64_t>(std::max(1, omp_get_max_threads()), items));
}

Plane plane_of(const ConvGeometry& g) {
  return Plane{g.height, g.width, g.out_height(), g.out_width(), static_cast<int>(g.stride_h)};
}

// Channels per work item: a block's planes of one image are contiguous (a 64 x 960 x 4 x 4
// forward a channel at a time over the images, planes 61 KB apart, ran 4x slower: out of reach
// of the hardware prefetchers); the backward's per-tap sums of a block stay in L1.
constexpr int64_t kBlockChannels = 16;

// Channel ic's transform (off without one).
IGC_TARGET_AVX2 inline Transform channel_transform(const ConvInputTransform* in, int64_t ic) {
  if (!in) return Transform{false, kBnNone, _mm256_setzero_ps(), _mm256_setzero_ps()};
  return Transform{true, in->act, _mm256_set1_ps(static_cast<const float*>(in->scale)[ic]),
                   _mm256_set1_ps(static_cast<const float*>(in->shift)[ic])};
}

IGC_TARGET_AVX2 void forward_block(const ConvGeometry& g, const Plane& s, int64_t n, int64_t c0,
                                   int64_t c1, const float* data, const float* weight,
                                   const float* bias, float* out, const ConvInputTransform* in,
                                   const SmallPlane* small, const PairRows* pairs) {
  if (small || pairs) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t ic = conv_input_channel(g, c), oc = conv_output_channel(g, c);
      const float* x = data + (n * g.in_channels + ic) * s.h * s.w;
      float* y = out + (n * g.filters + oc) * s.ho * s.wo;
      const float init = bias ? bias[c] : 0.0f;
      const float scale = in ? static_cast<const float*>(in->scale)[ic] : 0.0f;
      const float shift = in ? static_cast<const float*>(in->shift)[ic] : 0.0f;
      const int act = in ? in->act : kBnNone;
      if (small) {
        correlate_small_plane(x, *small, weight + c * 9, false, init, y, in, scale, shift, act);
      } else {
        correlate_pair_rows(x, s.h, *pairs, weight + c * 9, false, init, y, in, scale, shift,
                            act);
      }
    }
    return;
  }
  const Shifts m = make_shifts(s);
  for (int64_t c = c0; c < c1; ++c) {
    __m256 w[9];
    load_weights(weight + c * 9, false, w);
    const int64_t ic = conv_input_channel(g, c), oc = conv_output_channel(g, c);
    const __m256 init = _mm256_set1_ps(bias ? bias[c] : 0.0f);
    correlate_plane(data + (n * g.in_channels + ic) * s.h * s.w, s, m, w, init,
                    out + (n * g.filters + oc) * s.ho * s.wo, channel_transform(in, ic));
  }
}

// Channels [c0, c1) over every image, images in order: each weight's sum is the same on any
// number of threads.
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void backward_block_body(
    const ConvGeometry& g, const Plane& s, int64_t c0, int64_t c1, const float* out_grad,
    const float* data, const float* weight, float* data_grad, float* weight_grad,
    float* bias_grad, const ConvInputTransform* in, const SmallPlane* small,
    const PairRows* pairs) {
  const Shifts m = make_shifts(s);
  const Transform none = channel_transform(nullptr, 0);
  alignas(32) float partial[kBlockChannels][10][8] = {};  // 9 taps, then the bias
  for (int64_t n = 0; n < g.batch; ++n) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t ic = conv_input_channel(g, c), oc = conv_output_channel(g, c);
      const float* x = data + (n * g.in_channels + ic) * s.h * s.w;
      const float* dy = out_grad + (n * g.filters + oc) * s.ho * s.wo;
      float* dx = data_grad + (n * g.in_channels + ic) * s.h * s.w;
      // The unit-stride data gradient is the same correlation over the output gradient with
      // the kernel flipped (an h x w plane, as the output).
      __m256 w[9], sums[10];
      load_weights(weight + c * 9, s.stride == 1, w);
      if (small) {
        correlate_small_plane(dy, *small, weight + c * 9, true, 0.0f, dx, false, 0, 0, kBnNone);
      } else if (pairs) {
        correlate_pair_rows(dy, s.h, *pairs, weight + c * 9, true, 0.0f, dx, false, 0, 0,
                            kBnNone);
      } else if (s.stride == 1) {
        correlate_plane(dy, s, m, w, _mm256_setzero_ps(), dx, none);
      } else {
        data_grad_stride2(dy, s, m, w, dx);
      }
      float (*p)[8] = partial[c - c0];
      for (int t = 0; t < 10; ++t) sums[t] = _mm256_load_ps(p[t]);
      const Transform tf = channel_transform(in, ic);
      RowWindow r(x, s, m, tf);
      for (int64_t y = 0; y < s.ho; ++y) {
        advance(r, x, y, s, m, tf);
        const __m256 e = load_row(dy + y * s.wo, s.wo);
        sums[9] = _mm256_add_ps(sums[9], e);
        for (int ky = 0; ky < 3; ++ky) {
          for (int kx = 0; kx < 3; ++kx) {
            sums[ky * 3 + kx] = _mm256_fmadd_ps(e, r.rows[ky].t[kx], sums[ky * 3 + kx]);
          }
        }
      }
      for (int t = 0; t < 10; ++t) _mm256_store_ps(p[t], sums[t]);
    }
  }
  for (int64_t c = c0; c < c1; ++c) {
    const float (*p)[8] = partial[c - c0];
    for (int t = 0; t < 9; ++t) weight_grad[c * 9 + t] = horizontal_sum(_mm256_load_ps(p[t]));
    if (bias_grad) bias_grad[c] = horizontal_sum(_mm256_load_ps(p[9]));
  }
}

IGC_TARGET_AVX2 void backward_block(const ConvGeometry& g, const Plane& s, int64_t c0, int64_t c1,
                                    const float* out_grad, const float* data, const float* weight,
                                    float* data_grad, float* weight_grad, float* bias_grad,
                                    const ConvInputTransform* in, const SmallPlane* small,
                                    const PairRows* pairs) {
  backward_block_body(g, s, c0, c1, out_grad, data, weight, data_grad, weight_grad, bias_grad, in,
                      small, pairs);
}
// The same code for the AVX-512 CPUs (use_avx512_conv_kernels), compiled with AVX-512VL: the same
// 8-lane instructions in the same order (the same sums), with 32 vector registers for the row
// window's 9 taps and the 10 sums, which with AVX2's 16 spill to the stack on every row.
// Backward with relu6, 1 thread, the two alternating in one process: 64 x 576 x 8 x 8 5.32 ->
// 5.13 ms (faster in 28 of 30 rounds), 64 x 384 x 8 x 8 3.72 -> 3.56 (21 of 24), 64 x 960 x 4 x
// 4 3.33 -> 3.13 (22 of 24); at stride 2 alike.
IGC_TARGET_AVX512VL void backward_block_wide(const ConvGeometry& g, const Plane& s, int64_t c0,
                                             int64_t c1, const float* out_grad,
                                             const float* data, const float* weight,
                                             float* data_grad, float* weight_grad,
                                             float* bias_grad, const ConvInputTransform* in,
                                             const SmallPlane* small, const PairRows* pairs) {
  backward_block_body(g, s, c0, c1, out_grad, data, weight, data_grad, weight_grad, bias_grad, in,
                      small, pairs);
}

}  // namespace

bool depthwise_small_conv(const ConvGeometry& g) {
  const bool depthwise = g.groups == g.in_channels && g.filters == g.groups &&
                         g.kernel_h == 3 && g.kernel_w == 3 &&
                         g.pad_h == 1 && g.pad_w == 1 && g.stride_h == g.stride_w;
  if (!depthwise || !use_avx2_kernels()) return false;
  if (g.stride_h == 1) return g.width <= kMaxUnitWidth;
  return g.stride_h == 2 && g.width <= kMaxStride2Width;
}

void depthwise_small_forward(const ConvGeometry& g, const float* data, const float* weight,
                             const float* bias, float* out, const ConvInputTransform* in,
                             double* row_sums) {
  const Plane s = plane_of(g);
  const bool wide = use_avx512_conv_kernels(), small = wide && small_plane(s);
  const bool paired = wide && !small && pair_rows(s);
  const SmallPlane plane = small ? make_small_plane(s) : SmallPlane{};
  const PairRows rows = paired ? make_pair_rows() : PairRows{};
  const int64_t blocks = (g.filters + kBlockChannels - 1) / kBlockChannels;
  const int threads = threads_for(g.batch * g.filters * s.ho * s.wo * 9, g.batch * blocks);
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
  for (int64_t item = 0; item < g.batch * blocks; ++item) {
    const int64_t n = item / blocks, c0 = item % blocks * kBlockChannels;
    const int64_t c1 = std::min(c0 + kBlockChannels, g.filters);
    forward_block(g, s, n, c0, c1, data, weight, bias, out, in, small ? &plane : nullptr,
                  paired ? &rows : nullptr);
    if (row_sums) {  // the block's output planes are in cache (AVX2: see depthwise_small_conv)
      const int64_t plane = s.ho * s.wo;
      bn_row_moments_cpu(kFloat32, out + (n * g.filters + c0) * plane, c1 - c0, plane, plane,
                         row_sums + 3 * (n * g.filters + c0), 1, true);
    }
  }
}

void depthwise_small_backward(const ConvGeometry& g, const float* out_grad, const float* data,
                              const float* weight, float* data_grad, float* weight_grad,
                              float* bias_grad, const ConvInputTransform* in) {
  const Plane s = plane_of(g);
  const bool wide = use_avx512_conv_kernels(), small = wide && small_plane(s);
  const bool paired = wide && !small && pair_rows(s);
  const SmallPlane plane = small ? make_small_plane(s) : SmallPlane{};
  const PairRows rows = paired ? make_pair_rows() : PairRows{};
  const int64_t blocks = (g.filters + kBlockChannels - 1) / kBlockChannels;
  const int threads = threads_for(g.batch * g.filters * s.ho * s.wo * 27, blocks);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kBlockChannels;
    const int64_t c1 = std::min(c0 + kBlockChannels, g.filters);
    (wide ? backward_block_wide : backward_block)(g, s, c0, c1, out_grad, data, weight,
                                                  data_grad, weight_grad, bias_grad, in,
                                                  small ? &plane : nullptr,
                                                  paired ? &rows : nullptr);
    // The block's planes over the batch (16 channels of 8 x 8: 256 KB at batch 64) are in cache.
    if (in && in->gamma_grad) conv_input_bn_backward(g, kFloat32, *in, data, data_grad, c0, c1);
  }
}

}  // namespace igc
