// CPU kernels of IGCConv. Every pass works on one (sample, group) item at a time (a pointwise
// conv's backward: a block of samples, see backward_images), in a per-thread
// buffer that holds the group's input already padded (and, for strides > 1, split into column
// phases so that strided reads become contiguous): the inner loops then have no bounds checks and
// run over whole vectors of output columns. The backward-data pass is the same correlation run
// on the output gradient (zero-dilated for strides > 1) with the kernel flipped and transposed.
// Vectors are GCC vector extensions: 16 bytes for the SSE2 baseline, 32 bytes in the functions
// compiled for AVX2+FMA, chosen at run time.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "igc_conv.h"
#include "batch_norm.h"
#include "common.h"
#include "gemm.h"
#include "vec_avx2.h"

namespace igc {
namespace {

#define IGC_INLINE inline __attribute__((always_inline))

// Problems smaller than this many multiply-adds run on the calling thread. Items are handed out
// dynamically, a few at a time: on a shared machine a static split waits for the slowest thread.
constexpr int64_t kMinParallelMacs = int64_t(1) << 18;
// Output vectors computed together in the forward/backward-data correlation, and kernel taps
// accumulated together in the weight gradient: 8 independent accumulators hide the latency of
// the multiply-adds (two per cycle, ~4 cycles each) and stay in 16 registers.
constexpr int kBlockVectors = 8;
constexpr int kBlockTaps = 8;
// A float pointwise conv's weight gradient takes row dot products on planes of at least this
// many values (16x16 and up: measured faster there), else the input transposed and a GEMM
// (faster on 8x8 and 4x4 planes, where the rows are a few vectors long).
constexpr int64_t kDotsMinValues = 256;
// Below that, a conv with more input channels than filters on planes of at least this many values
// transposes the output gradient instead of the input (fewer values moved one at a time; the
// backward, 1 thread: 64 x 384 x 8 x 8 -> 64 5.55 -> 4.78 ms, 16 x 384 x 14 x 14 -> 64 5.06 ->
// 3.95 ms); on 7x7 and 4x4 planes the two ran alike.
constexpr int64_t kTransposeGradMinValues = 64;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t align_bytes(int64_t bytes) { return round_up(bytes, 64); }

// Buffer sizes for one (sample, group) item with vectors of `vw` elements.
struct Layout {
  int64_t cg, fg, k2, ho, wo, vw;
  // Padded input P: stride_w column phases x cg channels x hp rows x wq columns. Output column x
  // of kernel column kx reads phase kx % stride_w, column x + kx / stride_w.
  int64_t hp, wq, p_chan, p_phase, p_size;
  // Output gradient D for the data gradient: fg channels, value (y, x) at row y*stride_h + kh-1,
  // column x*stride_w + kw-1, zero elsewhere.
  int64_t hd, wd, d_chan, d_size;
  // Output gradient E for the weight and bias gradients: fg channels of ho rows of wo_pad columns,
  // zero past wo so that whole vectors can be summed. Unused (empty) with unit strides, where D
  // serves.
  int64_t wo_pad, e_chan, e_size;

  Layout(const ConvGeometry& g, int64_t vector_width) {
    cg = g.in_channels / g.groups;
    fg = g.filters / g.groups;
    k2 = g.kernel_h * g.kernel_w;
    ho = g.out_height();
    wo = g.out_width();
    vw = vector_width;
    wo_pad = round_up(wo, vw);
    hp = (ho - 1) * g.stride_h + g.kernel_h;
    // Vector reads past wo stay inside the row's zero tail.
    wq = wo_pad + (g.kernel_w - 1) / g.stride_w;
    p_chan = hp * wq;
    p_phase = cg * p_chan;
    p_size = g.stride_w * p_phase;
    // Rows/columns read for the data gradient, and room for every value of the gradient.
    hd = std::max(g.height + g.pad_h + g.kernel_h - 1, (ho - 1) * g.stride_h + g.kernel_h);
    wd = std::max({round_up(g.width, vw) + g.pad_w + g.kernel_w - 1,
                   (wo - 1) * g.stride_w + g.kernel_w, wo_pad + g.kernel_w - 1});
    d_chan = hd * wd;
    d_size = fg * d_chan;
    e_chan = ho * wo_pad;
    e_size = g.stride_h == 1 && g.stride_w == 1 ? 0 : fg * e_chan;
  }
};

template <typename T>
struct Args {
  ConvGeometry g;
  Layout l;
  const T* data;
  const T* weight;
  const T* bias;
  T* out;            // forward output
  const T* out_grad;
  T* data_grad;
  const int64_t* fwd_taps;  // cg*k2 offsets into P, in weight order (c, ky, kx)
  const int64_t* bwd_taps;  // fg*k2 offsets into D, order (f, ky', kx') of the flipped kernel
  const T* flipped;         // per group and input channel: fg*k2 weights matching bwd_taps
  const T* zeros;           // max(cg, fg) zeros: the initial values when there is no bias
  bool want_bias;           // backward: compute the bias gradient
  int64_t images;           // backward: images per item (see backward_images)
  GemmKernel gemm;          // float pointwise convs: the forward and data gradient, else null
  const float* panels;      // the GEMM's A of each group packed (see gemm_panels), or null
  int64_t panel_floats;     // per group
  RowDotsKernel dots;       // the row-dot backward (see row_dots_backward), else null
  bool relu6 = false;       // forward: act='relu6' (see relu6_planes)
  int64_t row_chunks = 1;   // forward: output-row chunks per image and group (forward_row_chunks),
                            // on the GEMM path chunks of the group's filters
  // AVX-512 kernels whose sums are the AVX2 ones': few_taps_planes_avx512 (forward), the unit
  // 3x3 stencil's 16 lanes (forward and data gradient, see wide_stencil3)
  bool wide_taps = false;
  double* moments = nullptr;    // forward: the output rows' moment sums (ConvOutputMoments)
  const T* in_scale = nullptr;  // the input transform (ConvInputTransform), per data channel
  const T* in_shift = nullptr;
  int in_act = kBnNone;
  // backward of a row-dot path with the input BatchNorm's backward (see input_bn_rows): its mean
  // per data channel and the rows' partial sums (bn_backward_row_sums_cpu)
  const T* in_mean = nullptr;
  T* bn_sums = nullptr;
  bool avx2 = false;
};

// Whether kernels built for T and kBytes may call the AVX2 float helpers below.
template <typename T, int kBytes>
constexpr bool kAvx2Float = kBytes == 32 && std::is_same<T, float>::value;

template <typename T, int kBytes>
struct Vec {
  typedef T type __attribute__((vector_size(kBytes)));
  // For loads and stores at any element boundary.
  typedef T unaligned __attribute__((vector_size(kBytes), aligned(sizeof(T)), may_alias));
  static constexpr int kWidth = kBytes / sizeof(T);
  // What a comparison of two `type`s gives (all bits set in the lanes where it holds).
  typedef typename std::conditional<sizeof(T) == 8, int64_t, int32_t>::type lane_int;
  typedef lane_int mask __attribute__((vector_size(kBytes)));
};

// Stride-2 column phases of one row with AVX2: even[j] = row[2j], odd[j] = row[2j + 1] for the
// `count` values row[0 .. count), 16 at a time (two permutes and two blends of halves), then 8
// (one permute, its halves stored), then one by one.
IGC_TARGET_AVX2 inline void split_phases_avx2(const float* row, int64_t count, float* even,
                                              float* odd) {
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(row + i), order);
    const __m256 b = _mm256_permutevar8x32_ps(_mm256_loadu_ps(row + i + 8), order);
    _mm256_storeu_ps(even + i / 2, _mm256_permute2f128_ps(a, b, 0x20));
    _mm256_storeu_ps(odd + i / 2, _mm256_permute2f128_ps(a, b, 0x31));
  }
  if (i + 8 <= count) {
    const __m256 a = _mm256_permutevar8x32_ps(_mm256_loadu_ps(row + i), order);
    _mm_storeu_ps(even + i / 2, _mm256_castps256_ps128(a));
    _mm_storeu_ps(odd + i / 2, _mm256_extractf128_ps(a, 1));
    i += 8;
  }
  for (; i < count; ++i) (i % 2 ? odd : even)[i / 2] = row[i];
}

// out[2x] = row[x] and out[2x + 1] = 0 for x < count (the last odd slot only where a whole
// vector of 8 values ends): a stride-2 output gradient row spread over the zero-dilated D.
IGC_TARGET_AVX2 inline void dilate2_avx2(const float* row, int64_t count, float* out) {
  const __m256 zero = _mm256_setzero_ps();
  int64_t x = 0;
  for (; x + 8 <= count; x += 8) {
    const __m256 v = _mm256_loadu_ps(row + x);
    const __m256 lo = _mm256_unpacklo_ps(v, zero), hi = _mm256_unpackhi_ps(v, zero);
    _mm256_storeu_ps(out + 2 * x, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 2 * x + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  for (; x < count; ++x) out[2 * x] = row[x];
}

// Whether the data gradient takes data_grad_s2_avx2: a depthwise (one input and one output plane
// per group) 3x3 conv at stride 2 with padding 1, on rows of whole 16-value blocks or of 48 values
// and more. The correlation over the zero-dilated output gradient spends 27 of every 36
// multiply-adds on zeros; the values past the last block go one by one (64 x 576 x 8 x 8
// backward 5.2 -> 7.4 ms, 16 x 192 x 28 x 28 2.6 -> 2.8 ms: left to the correlation).
inline bool phase_data_grad(const ConvGeometry& g, const Layout& l) {
  return l.cg == 1 && l.fg == 1 && g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 2 &&
         g.stride_w == 2 && g.pad_h == 1 && g.pad_w == 1 &&
         (g.width % 16 == 0 || g.width >= 48);
}

// The data gradient of such a conv (w: its 9 weights, (ky, kx)) into the H x W plane `out`, from
// the output gradient q, undilated, with a zero row and column before and after (q[i + 1][j + 1]
// = dy[i][j], rows q_row apart). Input row 2r is reached by kernel row 1 from output row r; row
// 2r + 1 by kernel rows 2 and 0 from rows r and r + 1; columns alike. Each value takes its terms
// in the order of the correlation over the dilated gradient (the flipped kernel's taps, the zero
// ones left out) and is the same sum. Even and odd columns are computed as two vectors of 8 and
// interleaved into 16 values of the row.
IGC_TARGET_AVX2 inline void data_grad_s2_avx2(const float* q, int64_t q_row, const float* w,
                                              float* out, int64_t H, int64_t W) {
  __m256 k[9];
  for (int t = 0; t < 9; ++t) k[t] = _mm256_set1_ps(w[t]);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t y = 0; y < H; ++y) {
    const int64_t r = y / 2;
    const float* q1 = q + (r + 1) * q_row + 1;  // q1[c] = dy[r][c]
    const float* q2 = q1 + q_row;               // dy[r + 1][c]
    float* o = out + y * W;
    const bool odd = y % 2 == 1;
    int64_t c = 0;
    for (; 2 * c + 16 <= W; c += 8) {
      const __m256 a1 = _mm256_loadu_ps(q1 + c), b1 = _mm256_loadu_ps(q1 + c + 1);
      __m256 even, odd_cols;
      if (!odd) {
        even = _mm256_fmadd_ps(k[4], a1, zero);
        odd_cols = _mm256_fmadd_ps(k[3], b1, _mm256_fmadd_ps(k[5], a1, zero));
      } else {
        const __m256 a2 = _mm256_loadu_ps(q2 + c), b2 = _mm256_loadu_ps(q2 + c + 1);
        even = _mm256_fmadd_ps(k[1], a2, _mm256_fmadd_ps(k[7], a1, zero));
        odd_cols = _mm256_fmadd_ps(k[8], a1, zero);
        odd_cols = _mm256_fmadd_ps(k[6], b1, odd_cols);
        odd_cols = _mm256_fmadd_ps(k[2], a2, odd_cols);
        odd_cols = _mm256_fmadd_ps(k[0], b2, odd_cols);
      }
      const __m256 lo = _mm256_unpacklo_ps(even, odd_cols), hi = _mm256_unpackhi_ps(even, odd_cols);
      _mm256_storeu_ps(o + 2 * c, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(o + 2 * c + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
    for (int64_t x = 2 * c; x < W; ++x) {
      const int64_t j = x / 2;
      float v = 0.0f;
      if (!odd && x % 2 == 0) {
        v = std::fma(w[4], q1[j], v);
      } else if (!odd) {
        v = std::fma(w[3], q1[j + 1], std::fma(w[5], q1[j], v));
      } else if (x % 2 == 0) {
        v = std::fma(w[1], q2[j], std::fma(w[7], q1[j], v));
      } else {
        v = std::fma(w[0], q2[j + 1], std::fma(w[2], q2[j], std::fma(w[6], q1[j + 1],
                                                                      std::fma(w[8], q1[j], v))));
      }
      o[x] = v;
    }
  }
}

// dst[i] = src[i] for i < count: a plane row copied into an item buffer. Inline vector moves for
// float with AVX2: a row is a few vectors, and a call to memcpy per row (two per output row of a
// depthwise backward) cost a tenth of a 32 x 32 plane's 3x3 depthwise pass.
IGC_TARGET_AVX2 inline void copy_row_avx2(float* dst, const float* src, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < count; ++i) dst[i] = src[i];
}

template <typename T, int kBytes>
IGC_INLINE void copy_row(T* dst, const T* src, int64_t count) {
  if constexpr (kAvx2Float<T, kBytes>) {
    copy_row_avx2(dst, src, count);
  } else {
    std::memcpy(dst, src, count * sizeof(T));
  }
}

// dst[i] = act(src[i] * scale + shift) for i < count (the input transform, ConvInputTransform),
// as BatchNormApply's AVX2 kernel computes it (bn_apply_ps; the tail's multiply-add fused too):
// the same values.
template <int kAct>
IGC_TARGET_AVX2 inline void transform_row_avx2(float* dst, const float* src, int64_t count,
                                               float scale, float shift) {
  const __m256 s = _mm256_set1_ps(scale), h = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(dst + i, bn_apply_ps(_mm256_loadu_ps(src + i), s, h, kAct));
  }
  for (; i < count; ++i) dst[i] = bn_activate<float, kAct>(std::fma(src[i], scale, shift));
}

template <typename T, int kBytes>
IGC_INLINE void transform_row(T* dst, const T* src, int64_t count, T scale, T shift, int act) {
  if constexpr (kAvx2Float<T, kBytes>) {
    if (act == kBnRelu) return transform_row_avx2<kBnRelu>(dst, src, count, scale, shift);
    if (act == kBnRelu6) return transform_row_avx2<kBnRelu6>(dst, src, count, scale, shift);
    return transform_row_avx2<kBnNone>(dst, src, count, scale, shift);
  }
  for (int64_t i = 0; i < count; ++i) {
    // Fused where the kernels are AVX2 ones, as BatchNormApply's are then.
    const T y = kBytes == 32 ? std::fma(src[i], scale, shift) : src[i] * scale + shift;
    dst[i] = act == kBnRelu ? bn_activate<T, kBnRelu>(y)
                            : act == kBnRelu6 ? bn_activate<T, kBnRelu6>(y) : y;
  }
}

// Input rows up to this many values go through a transform buffer on the stack before a strided
// copy; the values of longer ones are transformed where the copy put them.
constexpr int64_t kTransformRowValues = 1024;

// The input transform on the values of input row `drow` of P that fill_padded_input wrote
// (input columns [0, ix_end)), phase by phase.
template <typename T, int kBytes>
IGC_INLINE void transform_phases(const Args<T>& a, T* drow, int64_t ix_end, T scale, T shift) {
  const ConvGeometry& g = a.g;
  const int64_t s = g.stride_w;
  for (int64_t phase = 0; phase < s; ++phase) {
    int64_t ix = (phase - g.pad_w) % s;
    if (ix < 0) ix += s;
    if (ix >= ix_end) continue;
    T* v = drow + phase * a.l.p_phase + (ix + g.pad_w) / s;
    transform_row<T, kBytes>(v, v, (ix_end - 1 - ix) / s + 1, scale, shift, a.in_act);
  }
}

// Copies the group's input channels of sample n into the interior of P (padding stays zero),
// through the input transform where there is one.
template <typename T, int kBytes>
IGC_INLINE void fill_padded_input(const Args<T>& a, int64_t n, int64_t group, T* p,
                                  int64_t iy_begin = 0, int64_t iy_stop = INT64_MAX) {
  const ConvGeometry& g = a.g;
  const Layout& l = a.l;
  // Columns past this one are never read by a valid output.
  const int64_t col_end = (l.wo - 1) * g.stride_w + g.kernel_w;
  const int64_t ix_end = std::min(g.width, col_end - g.pad_w);
  const int64_t iy_end = std::min({g.height, l.hp - g.pad_h, iy_stop});
  const bool tf = a.in_scale != nullptr;
  alignas(32) T buffer[kTransformRowValues];
  for (int64_t c = 0; c < l.cg; ++c) {
    const int64_t channel = conv_input_channel(g, group * l.cg + c);
    const T* src = a.data + ((n * g.in_channels + channel) * g.height) * g.width;
    T* dst = p + c * l.p_chan;
    const T scale = tf ? a.in_scale[channel] : T(1), shift = tf ? a.in_shift[channel] : T(0);
    for (int64_t iy = std::max<int64_t>(0, iy_begin); iy < iy_end; ++iy) {
      const T* row = src + iy * g.width;
      T* drow = dst + (iy + g.pad_h) * l.wq;
      bool pending = tf;  // the transform still to apply to what the copy writes
      if (tf && g.stride_w == 1) {
        if (ix_end > 0) {
          transform_row<T, kBytes>(drow + g.pad_w, row, ix_end, scale, shift, a.in_act);
        }
        continue;
      }
      if (tf && ix_end <= kTransformRowValues) {
        if (ix_end > 0) transform_row<T, kBytes>(buffer, row, ix_end, scale, shift, a.in_act);
        row = buffer;
        pending = false;
      }
      if (g.stride_w == 1) {
        if (ix_end > 0) copy_row<T, kBytes>(drow + g.pad_w, row, ix_end);
      } else if (kAvx2Float<T, kBytes> && g.stride_w == 2) {
        if constexpr (kAvx2Float<T, kBytes>) {
          // Input column ix goes to phase (ix + pad_w) % 2, column (ix + pad_w) / 2: with pad_w
          // even, even columns to phase 0 and odd ones to phase 1 from column pad_w / 2; with
          // pad_w odd, even columns to phase 1 from pad_w / 2 and odd ones to phase 0 from
          // pad_w / 2 + 1 (the whole row in one split: a 32-value row is two 16-value blocks;
          // a count of 0 or less splits nothing).
          const int64_t half = g.pad_w / 2;
          if (g.pad_w % 2 == 0) {
            split_phases_avx2(row, ix_end, drow + half, drow + l.p_phase + half);
          } else {
            split_phases_avx2(row, ix_end, drow + l.p_phase + half, drow + half + 1);
          }
        }
      } else {
        for (int64_t phase = 0; phase < g.stride_w; ++phase) {
          // Input columns ix with (ix + pad_w) % stride_w == phase, from the first >= 0.
          int64_t ix = (phase - g.pad_w) % g.stride_w;
          if (ix < 0) ix += g.stride_w;
          T* dphase = drow + phase * l.p_phase;
          for (int64_t q = (ix + g.pad_w) / g.stride_w; ix < ix_end; ix += g.stride_w, ++q) {
            dphase[q] = row[ix];
          }
        }
      }
      if (pending) transform_phases<T, kBytes>(a, drow, ix_end, scale, shift);
    }
  }
}

// PV accumulated vectors of one output row at dst (`left` values of the row from there): whole
// vectors stored at once, the part of the last one inside the row value by value.
template <typename T, int kBytes, int PV>
IGC_INLINE void store_row(T* dst, const typename Vec<T, kBytes>::type* acc, int64_t left) {
  typedef typename Vec<T, kBytes>::unaligned VU;
  constexpr int kW = Vec<T, kBytes>::kWidth;
  for (int v = 0; v < PV; ++v) {
    const int64_t count = left - v * kW;
    if (count >= kW) {
      *reinterpret_cast<VU*>(dst + v * kW) = acc[v];
    } else {
      for (int64_t i = 0; i < count; ++i) dst[v * kW + i] = acc[v][i];
    }
  }
}

// For FB output planes f at once: out_f[y][x] = init_f + sum_t w_f[t] * in[y*row_step + x +
// taps[t]], over a block of R rows x PV vectors of output columns from (y0, x0); w_f = w +
// f*w_stride, out_f = out + f*out_stride. Every input vector loaded serves the FB planes, and
// each row has its own pointer (offsets derived from one another would form a serial chain of
// adds), so the accumulators and addresses stay in registers.
template <typename T, int kBytes, int FB, int R, int PV>
IGC_INLINE void correlate_block(const T* in, int64_t row_step, const int64_t* taps, const T* w,
                                int64_t w_stride, int64_t num_taps, const T* init, int64_t y0,
                                int64_t x0, T* out, int64_t out_stride, int64_t out_w) {
  typedef typename Vec<T, kBytes>::type V;
  typedef typename Vec<T, kBytes>::unaligned VU;
  constexpr int kW = Vec<T, kBytes>::kWidth;
  // Shapes that correlate_planes_fb never picks for this FB compile to nothing.
  if constexpr (FB * R * PV <= kBlockVectors) {
    const T* rows[R];
    V acc[FB][R][PV];
    for (int r = 0; r < R; ++r) rows[r] = in + (y0 + r) * row_step + x0;
    for (int f = 0; f < FB; ++f) {
      for (int r = 0; r < R; ++r) {
        for (int v = 0; v < PV; ++v) acc[f][r][v] = V{} + init[f];
      }
    }
    for (int64_t t = 0; t < num_taps; ++t) {
      const int64_t off = taps[t];
      T wt[FB];
      for (int f = 0; f < FB; ++f) wt[f] = w[f * w_stride + t];
      for (int r = 0; r < R; ++r) {
        for (int v = 0; v < PV; ++v) {
          const V x = *reinterpret_cast<const VU*>(rows[r] + off + v * kW);
          for (int f = 0; f < FB; ++f) acc[f][r][v] += wt[f] * x;
        }
      }
    }
    for (int f = 0; f < FB; ++f) {
      for (int r = 0; r < R; ++r) {
        store_row<T, kBytes, PV>(out + f * out_stride + (y0 + r) * out_w + x0, acc[f][r],
                                 out_w - x0);
      }
    }
  }
}

// FB output planes of out_h x out_w from a padded buffer (see correlate_block), in blocks of
// 8 / FB vectors per plane: rows at least that long are cut into blocks along the row; shorter
// rows are stacked.
template <typename T, int kBytes, int FB>
IGC_INLINE void correlate_planes_fb(const T* in, int64_t row_step, const int64_t* taps,
                                    const T* w, int64_t w_stride, int64_t num_taps, const T* init,
                                    T* out, int64_t out_stride, int64_t out_h, int64_t out_w) {
  constexpr int kW = Vec<T, kBytes>::kWidth;
  constexpr int kVectors = kBlockVectors / FB;
  const int64_t per_row = (out_w + kW - 1) / kW;
#define IGC_BLOCK(R, PV)                                                                    \
  correlate_block<T, kBytes, FB, R, PV>(in, row_step, taps, w, w_stride, num_taps, init, y, \
                                        x0, out, out_stride, out_w)
  if (per_row >= kVectors) {
    for (int64_t y = 0; y < out_h; ++y) {
      int64_t x0 = 0;
      for (; x0 + kVectors * kW <= out_w + kW - 1; x0 += kVectors * kW) IGC_BLOCK(1, kVectors);
      switch ((out_w - x0 + kW - 1) / kW) {
        case 7: IGC_BLOCK(1, 7); break;
        case 6: IGC_BLOCK(1, 6); break;
        case 5: IGC_BLOCK(1, 5); break;
        case 4: IGC_BLOCK(1, 4); break;
        case 3: IGC_BLOCK(1, 3); break;
        case 2: IGC_BLOCK(1, 2); break;
        case 1: IGC_BLOCK(1, 1); break;
        default: break;
      }
    }
    return;
  }
  const int64_t x0 = 0;
  const int64_t rows = kVectors / per_row;
  for (int64_t y = 0; y < out_h; y += rows) {
    const int64_t r = std::min(rows, out_h - y);
    switch (per_row * 8 + r) {  // (vectors per row, rows) with vectors * rows <= kVectors
      case 8 + 8: IGC_BLOCK(8, 1); break;
      case 8 + 7: IGC_BLOCK(7, 1); break;
      case 8 + 6: IGC_BLOCK(6, 1); break;
      case 8 + 5: IGC_BLOCK(5, 1); break;
      case 8 + 4: IGC_BLOCK(4, 1); break;
      case 8 + 3: IGC_BLOCK(3, 1); break;
      case 8 + 2: IGC_BLOCK(2, 1); break;
      case 8 + 1: IGC_BLOCK(1, 1); break;
      case 16 + 4: IGC_BLOCK(4, 2); break;
      case 16 + 3: IGC_BLOCK(3, 2); break;
      case 16 + 2: IGC_BLOCK(2, 2); break;
      case 16 + 1: IGC_BLOCK(1, 2); break;
      case 24 + 2: IGC_BLOCK(2, 3); break;
      case 24 + 1: IGC_BLOCK(1, 3); break;
      case 32 + 2: IGC_BLOCK(2, 4); break;
      case 32 + 1: IGC_BLOCK(1, 4); break;
      case 40 + 1: IGC_BLOCK(1, 5); break;
      case 48 + 1: IGC_BLOCK(1, 6); break;
      case 56 + 1: IGC_BLOCK(1, 7); break;
      default: break;
    }
  }
#undef IGC_BLOCK
}

// out[y][x] = init + sum over ky, kx < 3 of w[ky * 3 + kx] * in[(y + ky) * row_step + x + kx],
// for R rows x PV vectors of output columns from (y0, x0): a 3x3 kernel at unit stride (a
// depthwise conv's forward and data gradient). Every input vector loaded serves each output row
// of the block that reads it, (R + 2) * 3 loads per column vector instead of R * 9; each sum
// still takes its nine terms in the order of correlate_block.
template <typename T, int kBytes, int R, int PV>
IGC_INLINE void stencil3_block(const T* in, int64_t row_step, const T* w, T init, int64_t y0,
                               int64_t x0, T* out, int64_t out_w) {
  typedef typename Vec<T, kBytes>::type V;
  typedef typename Vec<T, kBytes>::unaligned VU;
  constexpr int kW = Vec<T, kBytes>::kWidth;
  if constexpr (R * PV <= kBlockVectors) {
    V acc[R][PV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
      for (int v = 0; v < PV; ++v) acc[r][v] = V{} + init;
    }
#pragma GCC unroll 10
    for (int ir = 0; ir < R + 2; ++ir) {
      const T* row = in + (y0 + ir) * row_step + x0;
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
#pragma GCC unroll 2
        for (int v = 0; v < PV; ++v) {
          const V x = *reinterpret_cast<const VU*>(row + kx + v * kW);
#pragma GCC unroll 3
          for (int ky = 2; ky >= 0; --ky) {  // output rows ir - 2 .. ir, first to last
            const int r = ir - ky;
            if (r >= 0 && r < R) acc[r][v] += w[ky * 3 + kx] * x;
          }
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      store_row<T, kBytes, PV>(out + (y0 + r) * out_w + x0, acc[r], out_w - x0);
    }
  }
}

// One output plane of a 3x3 unit-stride kernel (see stencil3_block): columns in blocks of 2
// vectors (1 for a last odd one), rows in blocks of 8 / that many.
template <typename T, int kBytes>
IGC_INLINE void stencil3_plane(const T* in, int64_t row_step, const T* w, T init, T* out,
                               int64_t out_h, int64_t out_w) {
  constexpr int kW = Vec<T, kBytes>::kWidth;
  const int64_t per_row = (out_w + kW - 1) / kW;
#define IGC_STENCIL(R, PV) \
  stencil3_block<T, kBytes, R, PV>(in, row_step, w, init, y, x0, out, out_w)
  for (int64_t x0 = 0, v = 0; v < per_row; v += 2, x0 += 2 * kW) {
    int64_t y = 0;
    if (v + 2 <= per_row) {
      for (; y + 4 <= out_h; y += 4) IGC_STENCIL(4, 2);
      switch (out_h - y) {
        case 3: IGC_STENCIL(3, 2); break;
        case 2: IGC_STENCIL(2, 2); break;
        case 1: IGC_STENCIL(1, 2); break;
        default: break;
      }
    } else {
      for (; y + 8 <= out_h; y += 8) IGC_STENCIL(8, 1);
      switch (out_h - y) {
        case 7: IGC_STENCIL(7, 1); break;
        case 6: IGC_STENCIL(6, 1); break;
        case 5: IGC_STENCIL(5, 1); break;
        case 4: IGC_STENCIL(4, 1); break;
        case 3: IGC_STENCIL(3, 1); break;
        case 2: IGC_STENCIL(2, 1); break;
        case 1: IGC_STENCIL(1, 1); break;
        default: break;
      }
    }
  }
#undef IGC_STENCIL
}

// stencil3_plane in 16-lane vectors, where the 8-lane one's rows end on a 16-column boundary
// (round_up(out_w, 8) a multiple of 16: widths 9-16, 25-32, ...), so that both read the same
// columns. Each lane is one output and takes the same nine multiply-adds in the same order: the
// same values as the AVX2 pass, in half the vector instructions on a core with 512-bit units.
inline bool wide_stencil3(int64_t out_w) { return (out_w + 7) / 8 % 2 == 0; }

IGC_TARGET_AVX512 void stencil3_plane_avx512(const float* in, int64_t row_step, const float* w,
                                             float init, float* out, int64_t out_h,
                                             int64_t out_w) {
  stencil3_plane<float, 64>(in, row_step, w, init, out, out_h, out_w);
}

// Args::wide_taps for a call on the AVX2 kernels (`avx2`) or not.
template <typename T>
bool wide_taps(bool avx2) {
  return avx2 && std::is_same<T, float>::value && use_avx512_conv_kernels();
}

// Whether the 9 taps are a 3x3 kernel at unit stride on rows row_step apart: taps[ky * 3 + kx]
// = taps[0] + ky * row_step + kx.
inline bool unit_stencil3(const int64_t* taps, int64_t num_taps, int64_t row_step) {
  if (num_taps != 9) return false;
  for (int t = 0; t < 9; ++t) {
    if (taps[t] != taps[0] + t / 3 * row_step + t % 3) return false;
  }
  return true;
}

// ReLU6 on y[from, values) as MXNet's clip(0, 6): v < 0 ? 0 : (v > 6 ? 6 : v), so NaN stays NaN.
template <typename T>
IGC_INLINE void relu6_values(T* y, int64_t from, int64_t values) {
  for (int64_t i = from; i < values; ++i) y[i] = y[i] < T(0) ? T(0) : (y[i] > T(6) ? T(6) : y[i]);
}

// The same 8 values at a time: max(0, v) and min(6, v) return their second operand v when it is
// NaN (and -0 for -0, as the comparisons above).
IGC_TARGET_AVX2 inline void relu6_values_avx2(float* y, int64_t values) {
  int64_t i = 0;
  for (; i + 8 <= values; i += 8) _mm256_storeu_ps(y + i, relu6_ps(_mm256_loadu_ps(y + i)));
  relu6_values(y, i, values);
}

// ReLU6 on `count` planes of `values` values, `stride` apart (forward with act='relu6', on
// planes just written).
template <typename T, int kBytes>
IGC_INLINE void relu6_planes(T* out, int64_t stride, int64_t count, int64_t values) {
  for (int64_t f = 0; f < count; ++f) {
    if constexpr (kAvx2Float<T, kBytes>) {
      relu6_values_avx2(out + f * stride, values);
    } else {
      relu6_values(out + f * stride, 0, values);
    }
  }
}

// num_planes output planes (see correlate_block), two at a time where possible: sharing each
// input load between two planes halves the loads per multiply-add. With `relu6` each pair is
// clipped as soon as it is written (while it is in cache).
template <typename T, int kBytes>
IGC_INLINE void correlate_planes(const T* in, int64_t row_step, const int64_t* taps, const T* w,
                                 int64_t w_stride, int64_t num_taps, const T* init, T* out,
                                 int64_t out_stride, int64_t num_planes, int64_t out_h,
                                 int64_t out_w, bool relu6 = false, bool wide = false) {
  if (num_planes == 1 && unit_stencil3(taps, num_taps, row_step)) {
    bool zmm = false;
    if constexpr (kAvx2Float<T, kBytes>) {
      zmm = wide && wide_stencil3(out_w);
      if (zmm) stencil3_plane_avx512(in + taps[0], row_step, w, init[0], out, out_h, out_w);
    }
    if (!zmm) stencil3_plane<T, kBytes>(in + taps[0], row_step, w, init[0], out, out_h, out_w);
    if (relu6) relu6_planes<T, kBytes>(out, out_stride, 1, out_h * out_w);
    return;
  }
  int64_t f = 0;
  for (; f + 2 <= num_planes; f += 2) {
    correlate_planes_fb<T, kBytes, 2>(in, row_step, taps, w + f * w_stride, w_stride, num_taps,
                                      init + f, out + f * out_stride, out_stride, out_h, out_w);
    if (relu6) relu6_planes<T, kBytes>(out + f * out_stride, out_stride, 2, out_h * out_w);
  }
  if (f < num_planes) {
    correlate_planes_fb<T, kBytes, 1>(in, row_step, taps, w + f * w_stride, w_stride, num_taps,
                                      init + f, out + f * out_stride, out_stride, out_h, out_w);
    if (relu6) relu6_planes<T, kBytes>(out + f * out_stride, out_stride, 1, out_h * out_w);
  }
}

// Lanes [0, valid) of a vector: the weight gradients' last vector of a row reaches past the
// output columns, where the output gradient is zero but the input holds the row's last real
// values; those lanes are cleared, or 0 * inf there would make the sum NaN.
template <typename T, int kBytes>
IGC_INLINE void past_width_mask(int64_t valid, typename Vec<T, kBytes>::mask& keep) {
  typename Vec<T, kBytes>::type lane;
  for (int i = 0; i < Vec<T, kBytes>::kWidth; ++i) lane[i] = static_cast<T>(i);
  keep = lane < static_cast<T>(valid);
}

// For FB filters f at once (output gradient e_f = e + f*e_stride, sums_f = sums + f*sums_stride):
// sums_f[t] += e_f[y][x] * in[y*row_step + x + taps[t]] summed over the output plane, t < TB;
// with kBias also bias_f += e_f summed (bias_f = bias_sum + f*kW). Rows of e have e_pitch
// elements, zero past the plane's width (wo values). Every input vector loaded serves the FB
// filters. Sums are kept as whole vectors (kW lanes each) and only reduced to scalars once per
// call: a horizontal sum per item would cost as much as the products on small planes.
template <typename T, int kBytes, int FB, int TB, bool kBias>
IGC_INLINE void weight_grad_taps(const T* in, int64_t row_step, const int64_t* taps, const T* e,
                                 int64_t e_stride, int64_t e_pitch, int64_t out_h, int64_t wo,
                                 T* sums, int64_t sums_stride, T* bias_sum) {
  typedef typename Vec<T, kBytes>::type V;
  typedef typename Vec<T, kBytes>::unaligned VU;  // the workspace may be only 16-byte aligned
  constexpr int kW = Vec<T, kBytes>::kWidth;
  if constexpr (FB * TB <= kBlockTaps) {
    const int64_t whole = wo / kW * kW;
    typename Vec<T, kBytes>::mask keep;
    past_width_mask<T, kBytes>(wo - whole, keep);
    V acc[FB][TB];
    V acc_bias[FB];
    for (int f = 0; f < FB; ++f) {
      for (int t = 0; t < TB; ++t) {
        acc[f][t] = *reinterpret_cast<VU*>(sums + f * sums_stride + t * kW);
      }
      acc_bias[f] = kBias ? *reinterpret_cast<VU*>(bias_sum + f * kW) : V{};
    }
    for (int64_t y = 0; y < out_h; ++y) {
      const T* erow = e + y * e_pitch;
      const T* irow = in + y * row_step;
      auto column = [&](int64_t x, auto masked) {
        V d[FB];
        for (int f = 0; f < FB; ++f) {
          d[f] = *reinterpret_cast<const VU*>(erow + f * e_stride + x);
          if (kBias) acc_bias[f] += d[f];
        }
        for (int t = 0; t < TB; ++t) {
          V v = *reinterpret_cast<const VU*>(irow + x + taps[t]);
          if constexpr (decltype(masked)::value) v = keep ? v : V{};
          for (int f = 0; f < FB; ++f) acc[f][t] += d[f] * v;
        }
      };
      for (int64_t x = 0; x < whole; x += kW) column(x, std::false_type{});
      if (whole < wo) column(whole, std::true_type{});
    }
    for (int f = 0; f < FB; ++f) {
      for (int t = 0; t < TB; ++t) {
        *reinterpret_cast<VU*>(sums + f * sums_stride + t * kW) = acc[f][t];
      }
      if (kBias) *reinterpret_cast<VU*>(bias_sum + f * kW) = acc_bias[f];
    }
  }
}

// The weight (and bias) gradient of one filter with a 3x3 kernel at unit stride (taps[ky * 3 +
// kx] = ky * row_step + kx from `in`, see unit_stencil3): sums[t] and bias_sum as in
// weight_grad_taps, in one pass. Down each column of vectors, input row i is loaded once (three
// column shifts) for the up to 3 output-gradient rows i - 2 .. i that pair with it, which stay
// in registers as the rows roll by: 3 loads + 1 for 9 multiply-adds, where the tap passes
// loaded 10 and ran the ninth tap as one chain.
// Planes with fewer rows take the tap passes: two of the out_h + 2 rolling steps load no output
// gradient (4x4 planes: 7.4 ms against 6.8 ms for a 64 x 960 x 4 x 4 backward).
constexpr int64_t kStencilMinRows = 8;

template <typename T, int kBytes, bool kBias>
IGC_INLINE void weight_grad_stencil3(const T* in, int64_t row_step, const T* e, int64_t e_pitch,
                                     int64_t out_h, int64_t wo, T* sums, T* bias_sum) {
  typedef typename Vec<T, kBytes>::type V;
  typedef typename Vec<T, kBytes>::unaligned VU;
  constexpr int kW = Vec<T, kBytes>::kWidth;
  const int64_t whole = wo / kW * kW;
  typename Vec<T, kBytes>::mask keep;
  past_width_mask<T, kBytes>(wo - whole, keep);
  // Each column loads the 9 sums and stores them back (in L1). Loaded once for all columns, they
  // were copied into a stack array (`rep movsq`) that the column's vector loads then waited on, a
  // store forwarding that fails: a third of this loop's samples in perf. 64 x 144 x 32 x 32
  // backward with relu6, 1 thread, old and new builds alternating: 35.0, 37.0, 36.5, 39.5, 38.1,
  // 40.5, 42.1 -> 33.4, 32.3, 34.8, 34.3, 36.1, 37.4, 36.5 ms.
  auto column = [&](int64_t x, auto masked) {
    V acc[9];
    for (int t = 0; t < 9; ++t) acc[t] = *reinterpret_cast<VU*>(sums + t * kW);
    V acc_bias = kBias ? *reinterpret_cast<VU*>(bias_sum) : V{};
    V e2 = V{}, e1 = V{};  // output-gradient rows i - 2 and i - 1 (zero above the plane)
    for (int64_t i = 0; i < out_h + 2; ++i) {
      const V e0 = i < out_h ? *reinterpret_cast<const VU*>(e + i * e_pitch + x) : V{};
      if (kBias) acc_bias += e0;
      const T* row = in + i * row_step + x;
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        V v = *reinterpret_cast<const VU*>(row + kx);
        if constexpr (decltype(masked)::value) v = keep ? v : V{};
        acc[kx] += e0 * v;
        acc[3 + kx] += e1 * v;
        acc[6 + kx] += e2 * v;
      }
      e2 = e1;
      e1 = e0;
    }
    for (int t = 0; t < 9; ++t) *reinterpret_cast<VU*>(sums + t * kW) = acc[t];
    if (kBias) *reinterpret_cast<VU*>(bias_sum) = acc_bias;
  };
  for (int64_t x = 0; x < whole; x += kW) column(x, std::false_type{});
  if (whole < wo) column(whole, std::true_type{});
}

// Weight (and bias) gradient of FB filters over all their cg*k2 taps, kBlockTaps / FB at a time.
template <typename T, int kBytes, int FB>
IGC_INLINE void weight_grad_filters(const T* in, int64_t row_step, const int64_t* taps,
                                    int64_t num_taps, const T* e, int64_t e_stride,
                                    int64_t e_pitch, int64_t out_h, int64_t wo, T* sums,
                                    T* bias_sum) {
  constexpr int kW = Vec<T, kBytes>::kWidth;
  constexpr int kTaps = kBlockTaps / FB;
  const int64_t sums_stride = num_taps * kW;
#define IGC_TAPS(TB)                                                                          \
  do {                                                                                        \
    if (bias_sum) {                                                                           \
      weight_grad_taps<T, kBytes, FB, TB, true>(in, row_step, taps + t, e, e_stride, e_pitch, \
                                                out_h, wo, sums + t * kW, sums_stride,        \
                                                bias_sum);                                    \
      bias_sum = nullptr; /* summed once, with the first taps */                              \
    } else {                                                                                  \
      weight_grad_taps<T, kBytes, FB, TB, false>(in, row_step, taps + t, e, e_stride,         \
                                                 e_pitch, out_h, wo, sums + t * kW,           \
                                                 sums_stride, nullptr);                       \
    }                                                                                         \
  } while (0)
  int64_t t = 0;
  for (; t + kTaps <= num_taps; t += kTaps) IGC_TAPS(kTaps);
  switch (num_taps - t) {
    case 7: IGC_TAPS(7); break;
    case 6: IGC_TAPS(6); break;
    case 5: IGC_TAPS(5); break;
    case 4: IGC_TAPS(4); break;
    case 3: IGC_TAPS(3); break;
    case 2: IGC_TAPS(2); break;
    case 1: IGC_TAPS(1); break;
    default: break;
  }
#undef IGC_TAPS
}

// The input transform of a float pointwise conv's input rows: channel c of the group, image n0 + r
// (r < count) into dst + c * channel_step + r * image_step.
template <typename T, int kBytes>
IGC_INLINE void transform_input_rows(const Args<T>& a, int64_t n0, int64_t count, int64_t group,
                                     T* dst, int64_t channel_step, int64_t image_step) {
  const ConvGeometry& g = a.g;
  const int64_t cg = a.l.cg, values = g.width;
  for (int64_t c = 0; c < cg; ++c) {
    const int64_t channel = group * cg + c;
    for (int64_t r = 0; r < count; ++r) {
      transform_row<T, kBytes>(dst + c * channel_step + r * image_step,
                               a.data + ((n0 + r) * g.in_channels + channel) * values, values,
                               a.in_scale[channel], a.in_shift[channel], a.in_act);
    }
  }
}

// The first filter of chunk `chunk` of `chunks` over a group's fg filters (fg at chunk ==
// chunks): whole 12-row blocks, the same number in each chunk give or take one.
inline int64_t gemm_filter_chunk(int64_t fg, int64_t chunk, int64_t chunks) {
  const int64_t blocks = (fg + 2 * kGemmPanelRows - 1) / (2 * kGemmPanelRows);
  return std::min(fg, chunk * blocks / chunks * 2 * kGemmPanelRows);
}

// A pointwise conv of image n, group `group` as one GEMM over rows of H*W values, read and
// written in place (or, forward with an input transform, the input rows from `input`, the
// transformed rows l.p_chan apart): the output (the `fg` filters of the group) from the weights
// and the input channels, or (data_grad) the input gradient from the flipped weights and the
// output gradient.
// `rows` holds max(cg, fg) pointers. The forward computes the group's filters [f0, f1) (f0 on a
// panel boundary), all of them by default.
template <typename T>
void pointwise_gemm(const Args<T>& a, int64_t n, int64_t group, bool data_grad, const T** rows,
                    const T* input = nullptr, int64_t f0 = 0, int64_t f1 = -1) {
  if constexpr (std::is_same<T, float>::value) {
    const ConvGeometry& g = a.g;
    const Layout& l = a.l;
    const int64_t values = g.width, first = group * l.fg;
    const float* panels = a.panels ? a.panels + group * a.panel_floats : nullptr;
    if (!data_grad) {
      if (f1 < 0) f1 = l.fg;
      for (int64_t c = 0; c < l.cg; ++c) {
        rows[c] = input ? input + c * l.p_chan
                        : a.data + (n * g.in_channels + group * l.cg + c) * values;
      }
      const int64_t step = conv_filter_channel_step(g) * values;
      a.gemm(Gemm{f1 - f0, values, l.cg, a.weight + (first + f0) * l.cg, l.cg, rows,
                  a.out + (n * g.filters + conv_output_channel(g, first)) * values + f0 * step,
                  step, a.bias ? a.bias + first + f0 : a.zeros, nullptr, 0,
                  panels ? panels + f0 * l.cg : nullptr});
    } else {
      for (int64_t f = 0; f < l.fg; ++f) {
        rows[f] = a.out_grad + (n * g.filters + conv_output_channel(g, first + f)) * values;
      }
      // With panels the GEMM reads them, packed from the weights (flipped is not made).
      const T* flipped = panels ? nullptr : a.flipped + group * l.cg * l.fg;
      a.gemm(Gemm{l.cg, values, l.fg, flipped, l.fg, rows,
                  a.data_grad + (n * g.in_channels + group * l.cg) * values, values, a.zeros,
                  nullptr, 0, panels, true});
    }
  }
}

// Dense forward with few taps per filter (the stem: 3 channels x 3 x 3 = 27), float32 AVX2:
// blocks of 6 output pixels x 16 filters (12 accumulators), each tap one broadcast of an input
// value per pixel times a vector of 16 filters' weights, then 8 x 8 transpositions into the
// filter rows. The correlation blocks above hold vectors of pixels instead: at column stride 2
// (two phase planes per channel) the 1 x 3 x 224 x 224 -> 32 stem ran at 26-30 GMAC/s there,
// about 43 here (Zen 4, 1 thread). At unit stride they keep it: the CIFAR stems (64 x 3 x 32 x
// 32 -> 32 or 48) took 1-3 % longer here (in one process, alternating).
constexpr int64_t kFewTaps = 64;
constexpr int kTapPixels = 6;

inline bool few_taps_forward(const ConvGeometry& g, const Layout& l) {
  return g.stride_w >= 2 && l.cg * l.k2 <= kFewTaps && l.fg % 8 == 0 && l.wo >= kTapPixels;
}

// Pixels x0 .. x0 + 5 of output row `orow` (filter rows out_stride apart) for the NV * 8
// filters of `panel` (K taps x NV * 8): input value of tap k at prow[taps[k] + x].
template <int NV>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void few_taps_block(
    const float* prow, const int64_t* taps, int64_t K, const float* panel, const float* bias,
    float* orow, int64_t out_stride, int64_t x0, bool relu6) {
  __m256 acc[kTapPixels][NV];
#pragma GCC unroll 6
  for (int i = 0; i < kTapPixels; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_loadu_ps(bias + 8 * j);
  }
  for (int64_t k = 0; k < K; ++k) {
    __m256 w[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) w[j] = _mm256_loadu_ps(panel + k * 8 * NV + 8 * j);
    const float* b = prow + taps[k] + x0;
#pragma GCC unroll 6
    for (int i = 0; i < kTapPixels; ++i) {
      const __m256 v = _mm256_broadcast_ss(b + i);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(w[j], v, acc[i][j]);
    }
  }
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    __m256 v[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) v[i] = i < kTapPixels ? acc[i][j] : _mm256_setzero_ps();
    transpose8(v);
#pragma GCC unroll 8
    for (int f = 0; f < 8; ++f) {
      store_first<kTapPixels>(orow + (8 * j + f) * out_stride + x0, relu6 ? relu6_ps(v[f]) : v[f]);
    }
  }
}

// The weights of filters [f0, f0 + width) (K taps each, w filter-major) as K rows of `width`.
inline void pack_tap_panel(const float* w, int64_t K, int64_t f0, int64_t width, float* panel) {
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t j = 0; j < width; ++j) panel[k * width + j] = w[(f0 + j) * K + k];
  }
}

// Output rows [0, rows) of `filters` planes (out_stride apart, rows of wo) from P (row r of the
// output reads p + r * row_step): weights w (filters x K, K = the taps), bias per filter.
IGC_TARGET_AVX2 void few_taps_planes(const float* p, int64_t row_step, const int64_t* taps,
                                     int64_t K, const float* w, const float* bias, float* out,
                                     int64_t out_stride, int64_t filters, int64_t rows,
                                     int64_t wo, bool relu6) {
  alignas(32) float panel[kFewTaps * 16];
  for (int64_t f0 = 0; f0 < filters; f0 += 16) {
    const int64_t width = std::min<int64_t>(16, filters - f0);
    pack_tap_panel(w, K, f0, width, panel);
    for (int64_t y = 0; y < rows; ++y) {
      const float* prow = p + y * row_step;
      float* orow = out + f0 * out_stride + y * wo;
      // the last block moved back to end at wo (it recomputes a few pixels: the same values)
      for (int64_t x0 = 0; x0 < wo; x0 += kTapPixels) {
        const int64_t at = std::min<int64_t>(x0, wo - kTapPixels);
        if (width == 16) {
          few_taps_block<2>(prow, taps, K, panel, bias + f0, orow, out_stride, at, relu6);
        } else {
          few_taps_block<1>(prow, taps, K, panel, bias + f0, orow, out_stride, at, relu6);
        }
      }
    }
  }
}

// few_taps_planes in AVX-512: vectors along the output row instead (16 pixels of one filter per
// register; a tap's inputs lie side by side in P's rows, which a stride-2 conv reads by column
// phase), each weight broadcast inside the multiply-add, F filters at a time, stored as computed
// (no transposition). Each value's sum in few_taps_block's order (the bias, then taps 0, 1, ..):
// bit for bit the same outputs.
template <int F>
IGC_TARGET_AVX512 __attribute__((always_inline)) inline void few_taps_block_z(
    const float* prow, const int64_t* taps, int64_t K, const float* panel, const float* bias,
    float* orow, int64_t out_stride, int64_t x0, __mmask16 mask, bool relu6) {
  __m512 acc[F];
#pragma GCC unroll 16
  for (int f = 0; f < F; ++f) acc[f] = _mm512_set1_ps(bias[f]);
  for (int64_t k = 0; k < K; ++k) {
    const __m512 v = _mm512_maskz_loadu_ps(mask, prow + taps[k] + x0);
    const float* w = panel + k * F;
    asm("" : "+r"(w));  // one address, constant displacements (see igc_block_packed_cpu.cc)
#pragma GCC unroll 16
    for (int f = 0; f < F; ++f) acc[f] = _mm512_fmadd_ps(_mm512_set1_ps(w[f]), v, acc[f]);
  }
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
#pragma GCC unroll 16
  for (int f = 0; f < F; ++f) {
    // relu6_ps's operand order (a NaN kept); maskz with every lane: GCC 12's unmasked
    // _mm512_max_ps warns of an uninitialised operand
    const __m512 y = relu6 ? _mm512_maskz_min_ps(0xFFFF, six, _mm512_maskz_max_ps(0xFFFF, zero,
                                                                                 acc[f]))
                           : acc[f];
    _mm512_mask_storeu_ps(orow + f * out_stride + x0, mask, y);
  }
}

IGC_TARGET_AVX512 void few_taps_planes_avx512(const float* p, int64_t row_step,
                                              const int64_t* taps, int64_t K, const float* w,
                                              const float* bias, float* out, int64_t out_stride,
                                              int64_t filters, int64_t rows, int64_t wo,
                                              bool relu6) {
  alignas(64) float panel[kFewTaps * 16];
  for (int64_t f0 = 0; f0 < filters; f0 += 16) {
    const int64_t width = std::min<int64_t>(16, filters - f0);  // 16 or 8 (filters % 8 == 0)
    pack_tap_panel(w, K, f0, width, panel);
    for (int64_t y = 0; y < rows; ++y) {
      const float* prow = p + y * row_step;
      float* orow = out + f0 * out_stride + y * wo;
      for (int64_t x0 = 0; x0 < wo; x0 += 16) {
        const int64_t n = std::min<int64_t>(16, wo - x0);
        const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
        if (width == 16) {
          few_taps_block_z<16>(prow, taps, K, panel, bias + f0, orow, out_stride, x0, mask, relu6);
        } else {
          few_taps_block_z<8>(prow, taps, K, panel, bias + f0, orow, out_stride, x0, mask, relu6);
        }
      }
    }
  }
}

template <typename T>
constexpr int dtype_of() {
  return std::is_same<T, float>::value ? kFloat32 : kFloat64;
}

// With a.moments, the moment sums of the output rows an item has just written (image n's
// filters from `first` on, their planes from `out`), while they are in cache (see
// ConvOutputMoments). The AVX2 items (kBytes 32) run where use_avx2_kernels() held for the call.
template <typename T, int kBytes>
IGC_INLINE void output_moments(const Args<T>& a, int64_t n, int64_t first, const T* out) {
  if (!a.moments) return;
  const ConvGeometry& g = a.g;
  const int64_t plane = a.l.ho * a.l.wo, step = conv_filter_channel_step(g);
  bn_row_moments_cpu(dtype_of<T>(), out, a.l.fg, step * plane, plane,
                     a.moments + 3 * (n * g.filters + conv_output_channel(g, first)), step,
                     kBytes == 32);
}

// The planes that (image, group) item (n, group) of the general path reads: its input planes and,
// with `grad`, its output-gradient planes, up to kPrefetchItemBytes of each, prefetched while the
// item before it runs. A 32 x 32 plane (4 KB) begins a page, where the hardware prefetchers start
// over: the first loads of every item waited on memory (3x3 depthwise 64 x 144 x 32 x 32, 1
// thread, the two ways alternating in one process: forward 9.0 -> 8.2 ms with AVX-512, 12.2 ->
// 11.1 under the AVX2 cap; backward with the input BatchNorm's 34.2 -> 33.4 and 38.2 -> 36.0 ms;
// stride 2 forward 5.9 -> 5.2, backward 19.1 -> 17.2 ms).
constexpr int64_t kPrefetchItemBytes = 16384;

template <typename T>
IGC_INLINE void prefetch_planes(const T* first, int64_t count, int64_t plane, int64_t step) {
  const int64_t bytes = plane * static_cast<int64_t>(sizeof(T));
  if (count * bytes > kPrefetchItemBytes) return;
  for (int64_t c = 0; c < count; ++c) {
    const char* q = reinterpret_cast<const char*>(first + c * step * plane);
    for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(q + b, _MM_HINT_T0);
  }
}

template <typename T>
IGC_INLINE void prefetch_item(const Args<T>& a, int64_t n, int64_t group, bool grad) {
  const ConvGeometry& g = a.g;
  const Layout& l = a.l;
  if (n >= g.batch) return;
  // A permuted input reads one channel per group (cg = 1); an interleaved output's filters of a
  // group lie conv_filter_channel_step apart.
  const int64_t in_plane = g.height * g.width;
  prefetch_planes(a.data + (n * g.in_channels + conv_input_channel(g, group * l.cg)) * in_plane,
                  l.cg, in_plane, 1);
  if (grad) {
    const int64_t out_plane = l.ho * l.wo;
    prefetch_planes(a.out_grad +
                        (n * g.filters + conv_output_channel(g, group * l.fg)) * out_plane,
                    l.fg, out_plane, conv_filter_channel_step(g));
  }
}

template <typename T, int kBytes>
IGC_INLINE void forward_item(const Args<T>& a, int64_t item, T* p, const T** rows) {
  const ConvGeometry& g = a.g;
  const Layout& l = a.l;
  const int64_t chunk = item % a.row_chunks;
  item /= a.row_chunks;
  const int64_t n = item / g.groups, group = item % g.groups, first = group * l.fg;
  const int64_t plane = l.ho * l.wo;
  const int64_t out_stride = conv_filter_channel_step(g) * plane;
  T* out = a.out + (n * g.filters + conv_output_channel(g, first)) * plane;
  if (a.gemm) {
    if (a.row_chunks > 1) {  // filters [f0, f1) of the group (see forward_row_chunks)
      const int64_t f0 = gemm_filter_chunk(l.fg, chunk, a.row_chunks);
      const int64_t f1 = gemm_filter_chunk(l.fg, chunk + 1, a.row_chunks);
      if (f0 == f1) return;
      pointwise_gemm(a, n, group, false, rows, static_cast<const T*>(nullptr), f0, f1);
      if (a.relu6) relu6_planes<T, kBytes>(out + f0 * out_stride, out_stride, f1 - f0, plane);
      return;
    }
    if (a.in_scale) transform_input_rows<T, kBytes>(a, n, 1, group, p, l.p_chan, 0);
    pointwise_gemm(a, n, group, false, rows, a.in_scale ? p : nullptr);
    if (a.relu6) relu6_planes<T, kBytes>(out, out_stride, l.fg, plane);
    output_moments<T, kBytes>(a, n, first, out);
    return;
  }
  // Output rows [y0, y1) read the padded input rows [y0 * stride_h, (y1 - 1) * stride_h +
  // kernel_h): with several chunks, each one zeroes those rows of P (its padding stays zero)
  // instead of every thread zeroing all of P.
  const int64_t y0 = chunk * l.ho / a.row_chunks, y1 = (chunk + 1) * l.ho / a.row_chunks;
  if (y0 == y1) return;
  if (a.row_chunks == 1) {  // the next item's input planes (see prefetch_item)
    const bool last = group + 1 == g.groups;
    prefetch_item(a, last ? n + 1 : n, last ? 0 : group + 1, false);
  }
  const int64_t row_step = g.stride_h * l.wq;
  if (a.row_chunks > 1) {
    const int64_t r0 = y0 * g.stride_h, r1 = (y1 - 1) * g.stride_h + g.kernel_h;
    for (int64_t q = 0; q < g.stride_w * l.cg; ++q) {  // every phase of every channel
      std::memset(p + q * l.p_chan + r0 * l.wq, 0, (r1 - r0) * l.wq * sizeof(T));
    }
  }
  fill_padded_input<T, kBytes>(a, n, group, p, y0 * g.stride_h - g.pad_h,
                               (y1 - 1) * g.stride_h + g.kernel_h - g.pad_h);
  if constexpr (kAvx2Float<T, kBytes>) {
    if (few_taps_forward(g, l)) {
      const auto planes = a.wide_taps ? few_taps_planes_avx512 : few_taps_planes;
      planes(p + y0 * row_step, row_step, a.fwd_taps, l.cg * l.k2, a.weight + first * l.cg * l.k2,
             a.bias ? a.bias + first : a.zeros, out + y0 * l.wo, out_stride, l.fg, y1 - y0, l.wo,
             a.relu6);
      output_moments<T, kBytes>(a, n, first, out);
      return;
    }
  }
  correlate_planes<T, kBytes>(p + y0 * row_step, row_step, a.fwd_taps,
                              a.weight + first * l.cg * l.k2, l.cg * l.k2, l.cg * l.k2,
                              a.bias ? a.bias + first : a.zeros, out + y0 * l.wo, out_stride, l.fg,
                              y1 - y0, l.wo, a.relu6, a.wide_taps);
  output_moments<T, kBytes>(a, n, first, out);
}

// `partial` accumulates this thread's weight gradient (filters*cg*k2) then bias gradient
// (filters), each value as a vector of l.vw lanes.
template <typename T, int kBytes>
IGC_INLINE void backward_item(const Args<T>& a, int64_t item, T* p, T* d, T* e, T* partial,
                              const T**) {
  const ConvGeometry& g = a.g;
  const Layout& l = a.l;
  const int64_t n = item / g.groups, group = item % g.groups;
  const bool unit_stride = g.stride_h == 1 && g.stride_w == 1;
  // D holds the output gradient undilated (see data_grad_s2_avx2) for the stride-2 depthwise.
  const bool phases = kAvx2Float<T, kBytes> && phase_data_grad(g, l);
  fill_padded_input<T, kBytes>(a, n, group, p);
  for (int64_t f = 0; f < l.fg; ++f) {
    const int64_t filter = group * l.fg + f;
    const T* dy = a.out_grad + (n * g.filters + conv_output_channel(g, filter)) * l.ho * l.wo;
    T* dchan = d + f * l.d_chan + (g.kernel_h - 1) * l.wd + g.kernel_w - 1;
    for (int64_t y = 0; y < l.ho; ++y) {
      const T* row = dy + y * l.wo;
      T* drow = dchan + y * g.stride_h * l.wd;
      if (phases) {
        copy_row<T, kBytes>(d + (y + 1) * l.wd + 1, row, l.wo);
      } else if (g.stride_w == 1) {
        copy_row<T, kBytes>(drow, row, l.wo);
      } else if (kAvx2Float<T, kBytes> && g.stride_w == 2) {
        if constexpr (kAvx2Float<T, kBytes>) dilate2_avx2(row, l.wo, drow);
      } else {
        for (int64_t x = 0; x < l.wo; ++x) drow[x * g.stride_w] = row[x];
      }
      if (!unit_stride) copy_row<T, kBytes>(e + f * l.e_chan + y * l.wo_pad, row, l.wo);
    }
  }
  const int64_t in_plane = g.height * g.width;
  // The group's cg gradient planes are consecutive channels (a permuted input has cg = 1).
  T* data_grad = a.data_grad + (n * g.in_channels + conv_input_channel(g, group * l.cg)) * in_plane;
  if (phases) {
    if constexpr (kAvx2Float<T, kBytes>) {
      data_grad_s2_avx2(d, l.wd, a.weight + group * 9, data_grad, g.height, g.width);
    }
  } else {
    correlate_planes<T, kBytes>(d, l.wd, a.bwd_taps, a.flipped + group * l.cg * l.fg * l.k2,
                                l.fg * l.k2, l.fg * l.k2, a.zeros, data_grad, in_plane, l.cg,
                                g.height, g.width, false, a.wide_taps);
  }
  // With unit strides D already holds the output gradient with zero tails.
  const int64_t e_pitch = unit_stride ? l.wd : l.wo_pad;
  const int64_t e_stride = unit_stride ? l.d_chan : l.e_chan;
  const T* e0 = unit_stride ? d + (g.kernel_h - 1) * l.wd + g.kernel_w - 1 : e;
  const int64_t taps = l.cg * l.k2;
  if (l.fg == 1 && l.ho >= kStencilMinRows &&
      unit_stencil3(a.fwd_taps, taps, g.stride_h * l.wq)) {
    T* sums = partial + group * taps * l.vw;
    const T* in = p + a.fwd_taps[0];
    if (a.want_bias) {
      weight_grad_stencil3<T, kBytes, true>(in, l.wq, e0, e_pitch, l.ho, l.wo, sums,
                                            partial + (g.filters * taps + group) * l.vw);
    } else {
      weight_grad_stencil3<T, kBytes, false>(in, l.wq, e0, e_pitch, l.ho, l.wo, sums,
                                             nullptr);
    }
    return;
  }
  for (int64_t f = 0; f < l.fg;) {
    const int64_t filter = group * l.fg + f;
    T* sums = partial + filter * taps * l.vw;
    T* bias_sum = a.want_bias ? partial + (g.filters * taps + filter) * l.vw : nullptr;
    if (f + 2 <= l.fg) {  // two filters share each input load
      weight_grad_filters<T, kBytes, 2>(p, g.stride_h * l.wq, a.fwd_taps, taps, e0 + f * e_stride,
                                        e_stride, e_pitch, l.ho, l.wo, sums, bias_sum);
      f += 2;
    } else {
      weight_grad_filters<T, kBytes, 1>(p, g.stride_h * l.wq, a.fwd_taps, taps, e0 + f * e_stride,
                                        e_stride, e_pitch, l.ho, l.wo, sums, bias_sum);
      f += 1;
    }
  }
}

// column[v * stride] = row[v] for v < values, and 0 up to v < wd: a row of one image's values as
// a column of a transposed GEMM operand, zero-padded to the item's row length.
template <typename T>
IGC_INLINE void spread_row(const T* row, int64_t values, int64_t wd, int64_t stride, T* column) {
  for (int64_t v = 0; v < values; ++v) column[v * stride] = row[v];
  for (int64_t v = values; v < wd; ++v) column[v * stride] = T(0);
}

// Weight and bias gradient of a float pointwise conv over `count` images of a group as one GEMM,
// added to `partial` (one value per weight, then per filter): dW[f][c] += sum over the images'
// values of dy[f] * x[c], with D (the images' output-gradient rows, zero tails) as A and the
// input transposed into P as B (a row of cg channels per value). The GEMM's product goes to
// `scratch` (fg * cg values) first: its AVX2 tail recomputes columns, which an in-place
// accumulation would add twice.
template <typename T, int kBytes>
void pointwise_weight_gemm(const Args<T>& a, int64_t n0, int64_t count, int64_t group, T* p,
                           const T* d, T* partial, T* scratch, const T** rows) {
  if constexpr (std::is_same<T, float>::value) {
    const ConvGeometry& g = a.g;
    const Layout& l = a.l;
    const int64_t values = g.width, depth = count * l.wd;
    T transformed[kDotsMinValues];  // this path's rows are shorter (see row_dots_backward)
    for (int64_t r = 0; r < count; ++r) {
      for (int64_t c = 0; c < l.cg; ++c) {
        const int64_t channel = group * l.cg + c;
        const T* x = a.data + ((n0 + r) * g.in_channels + channel) * values;
        if (a.in_scale) {
          transform_row<T, kBytes>(transformed, x, values, a.in_scale[channel],
                                   a.in_shift[channel], a.in_act);
          x = transformed;
        }
        spread_row(x, values, l.wd, l.cg, p + r * l.wd * l.cg + c);
      }
    }
    for (int64_t k = 0; k < depth; ++k) rows[k] = p + k * l.cg;
    T* dw = partial + group * l.fg * l.cg;
    if (gemm_adds_in_place(a.gemm, l.cg, depth)) {
      // The product added to the sums as the GEMM's residual (the same additions, dw + product):
      // no scratch written, read and added over the 1280 x 320 sums of the last 4x4 conv.
      a.gemm(Gemm{l.fg, l.cg, depth, d, l.d_chan, rows, dw, l.cg, a.zeros, dw, l.cg, nullptr});
    } else {
      a.gemm(Gemm{l.fg, l.cg, depth, d, l.d_chan, rows, scratch, l.cg, a.zeros, nullptr, 0,
                  nullptr});
      for (int64_t i = 0; i < l.fg * l.cg; ++i) dw[i] += scratch[i];
    }
    if (a.want_bias) {
      for (int64_t f = 0; f < l.fg; ++f) {
        T sum = 0;
        for (int64_t k = 0; k < depth; ++k) sum += d[f * l.d_chan + k];
        partial[g.filters * l.cg + group * l.fg + f] += sum;
      }
    }
  }
}

// Whether pointwise_weight_gemm_t computes the weight gradient (see kTransposeGradMinValues).
inline bool transpose_output_grad(const ConvGeometry& g) {
  return g.in_channels > g.filters && g.width >= kTransposeGradMinValues;
}

// The same sums as pointwise_weight_gemm with the roles swapped, for convs with more input
// channels than filters: dW^T[c][f] = sum over the values of x[c] * dy[f], with the input rows of
// the images side by side in P (cg rows of count * wd values, zero tails) as A and the output
// gradient transposed into D (a row of fg filters per value) as B; the product goes to `scratch`
// (cg x fg) and is added transposed.
template <typename T, int kBytes>
void pointwise_weight_gemm_t(const Args<T>& a, int64_t n0, int64_t count, int64_t group, T* p,
                             T* d, T* partial, T* scratch, const T** rows) {
  if constexpr (std::is_same<T, float>::value) {
    const ConvGeometry& g = a.g;
    const Layout& l = a.l;
    const int64_t values = g.width, depth = count * l.wd;
    for (int64_t c = 0; c < l.cg; ++c) {
      const int64_t channel = group * l.cg + c;
      for (int64_t r = 0; r < count; ++r) {
        const T* x = a.data + ((n0 + r) * g.in_channels + channel) * values;
        T* row = p + c * depth + r * l.wd;
        if (a.in_scale) {
          transform_row<T, kBytes>(row, x, values, a.in_scale[channel], a.in_shift[channel],
                                   a.in_act);
        } else {
          std::memcpy(row, x, values * sizeof(T));
        }
        std::fill(row + values, row + l.wd, T(0));
      }
    }
    for (int64_t r = 0; r < count; ++r) {
      for (int64_t f = 0; f < l.fg; ++f) {
        const int64_t channel = conv_output_channel(g, group * l.fg + f);
        const T* dy = a.out_grad + ((n0 + r) * g.filters + channel) * values;
        spread_row(dy, values, l.wd, l.fg, d + r * l.wd * l.fg + f);
      }
    }
    for (int64_t k = 0; k < depth; ++k) rows[k] = d + k * l.fg;
    a.gemm(Gemm{l.cg, l.fg, depth, p, depth, rows, scratch, l.fg, a.zeros, nullptr, 0,
                nullptr});
    T* dw = partial + group * l.fg * l.cg;
    for (int64_t f = 0; f < l.fg; ++f) {
      for (int64_t c = 0; c < l.cg; ++c) dw[f * l.cg + c] += scratch[c * l.fg + f];
    }
    if (a.want_bias) {
      for (int64_t f = 0; f < l.fg; ++f) {
        T sum = 0;
        for (int64_t k = 0; k < depth; ++k) sum += d[k * l.fg + f];
        partial[g.filters * l.cg + group * l.fg + f] += sum;
      }
    }
  }
}

// Weight and bias gradient of a float pointwise conv over `count` images of a group, added to
// `partial` (one value per weight, then per filter): dW[f][c] += sum over the images' values of
// dy[f] * x[c], as dot products of the output gradient's rows with the input's rows, both read
// in place (with an input transform, the input rows transformed into P first).
template <typename T, int kBytes>
void pointwise_weight_dots(const Args<T>& a, int64_t n0, int64_t count, int64_t group, T* p,
                           T* partial) {
  if constexpr (std::is_same<T, float>::value) {
    const ConvGeometry& g = a.g;
    const Layout& l = a.l;
    const int64_t values = g.width, first = group * l.fg;
    const T* dy = a.out_grad + (n0 * g.filters + conv_output_channel(g, first)) * values;
    const int64_t filter_step = conv_filter_channel_step(g) * values;
    const int64_t image_step = g.filters * values;
    const T* x = a.data + (n0 * g.in_channels + group * l.cg) * values;
    int64_t channel_step = values, x_image_step = g.in_channels * values;
    if (a.in_scale) {
      transform_input_rows<T, kBytes>(a, n0, count, group, p, l.p_chan, l.wq);
      x = p;
      channel_step = l.p_chan;
      x_image_step = l.wq;
    }
    a.dots(RowDots{l.fg, l.cg, count, values, dy, filter_step, image_step, x, channel_step,
                   x_image_step, partial + first * l.cg, l.cg});
    if (a.want_bias) {
      for (int64_t f = 0; f < l.fg; ++f) {
        T sum = 0;
        for (int64_t r = 0; r < count; ++r) {
          const T* row = dy + f * filter_step + r * image_step;
          for (int64_t v = 0; v < values; ++v) sum += row[v];
        }
        partial[g.filters * l.cg + first + f] += sum;
      }
    }
  }
}

// The input BatchNorm's backward on a row-dot path (float, pointwise, see input_bn_rows): each
// image's data-gradient rows (the gradient of the transformed input, `grad`: cg rows of the
// group's channels) give their partial sums just after the GEMM wrote them; once the sums are
// complete over the batch, input_bn_apply_item turns an item's rows into dx in place.
template <typename T>
void input_bn_row_sums(const Args<T>& a, int64_t n, int64_t group, const T* grad) {
  if constexpr (std::is_same<T, float>::value) {
    const ConvGeometry& g = a.g;
    const int64_t values = g.width, chunks = bn_backward_row_chunks(values);
    const int64_t channel = group * a.l.cg, row = n * g.in_channels + channel;
    bn_backward_row_sums_cpu(grad, a.data + row * values, a.in_scale + channel,
                             a.in_shift + channel, a.in_mean + channel, a.l.cg, values, a.in_act,
                             a.avx2, a.bn_sums + 2 * chunks * row);
  }
}

template <typename T>
void input_bn_apply_item(const Args<T>& a, int64_t item, const T* mean_g, const T* k) {
  if constexpr (std::is_same<T, float>::value) {
    const ConvGeometry& g = a.g;
    const int64_t group = item % g.groups, n0 = item / g.groups * a.images;
    const int64_t count = std::min(a.images, g.batch - n0), values = g.width;
    for (int64_t n = n0; n < n0 + count; ++n) {
      T* dx = a.data_grad + (n * g.in_channels + group * a.l.cg) * values;
      for (int64_t c = 0; c < a.l.cg; ++c) {
        const int64_t channel = group * a.l.cg + c;
        bn_backward_row_apply_cpu(dx + c * values,
                                  a.data + (n * g.in_channels + channel) * values,
                                  a.in_scale[channel], a.in_shift[channel], a.in_mean[channel],
                                  mean_g[channel], k[channel], values, a.in_act, a.avx2,
                                  dx + c * values);
      }
    }
  }
}

// Backward of a pointwise conv (as_rows) for a block of a.images images: the layout `a.l` has one
// row per image, so the weight gradient runs over all of them between one load and one store of
// its partial sums.
template <typename T, int kBytes>
IGC_INLINE void backward_images_item(const Args<T>& a, int64_t item, T* p, T* d, T*, T* partial,
                                     const T** rows) {
  const ConvGeometry& g = a.g;
  const Layout& l = a.l;
  const int64_t group = item % g.groups, n0 = item / g.groups * a.images;
  const int64_t count = std::min(a.images, g.batch - n0), values = g.width;
  // On the GEMM paths the partial buffer holds one lane per value; the rest of it is the GEMM's
  // scratch.
  T* scratch = partial + g.filters * l.cg + g.filters;
  if (a.gemm) {
    for (int64_t r = 0; r < count; ++r) {
      pointwise_gemm(a, n0 + r, group, true, rows);
      // The input BatchNorm's sums from the image's data-gradient rows while they are in cache.
      if (a.bn_sums) {
        input_bn_row_sums(a, n0 + r, group,
                          a.data_grad + ((n0 + r) * g.in_channels + group * l.cg) * values);
      }
    }
    // On planes this large every pass reads the output gradient in place.
    if (a.dots) return pointwise_weight_dots<T, kBytes>(a, n0, count, group, p, partial);
    if (transpose_output_grad(g)) {
      return pointwise_weight_gemm_t<T, kBytes>(a, n0, count, group, p, d, partial, scratch,
                                                rows);
    }
  }
  // Only [0, values) of each row is written: the zero tails stay from the start.
  for (int64_t f = 0; f < l.fg; ++f) {
    const int64_t channel = conv_output_channel(g, group * l.fg + f);
    for (int64_t r = 0; r < count; ++r) {
      copy_row<T, kBytes>(d + f * l.d_chan + r * l.wd,
                          a.out_grad + ((n0 + r) * g.filters + channel) * values, values);
    }
  }
  if (a.gemm) {
    return pointwise_weight_gemm<T, kBytes>(a, n0, count, group, p, d, partial, scratch, rows);
  }
  for (int64_t c = 0; c < l.cg; ++c) {
    for (int64_t r = 0; r < count; ++r) {
      std::memcpy(p + c * l.p_chan + r * l.wq,
                  a.data + ((n0 + r) * g.in_channels + group * l.cg + c) * values,
                  values * sizeof(T));
    }
  }
  for (int64_t r = 0; r < count; ++r) {
    correlate_planes<T, kBytes>(d + r * l.wd, l.wd, a.bwd_taps, a.flipped + group * l.cg * l.fg,
                                l.fg, l.fg, a.zeros,
                                a.data_grad + ((n0 + r) * g.in_channels + group * l.cg) * values,
                                values, l.cg, 1, values);
  }
  for (int64_t f = 0; f < l.fg;) {
    const int64_t filter = group * l.fg + f;
    T* sums = partial + filter * l.cg * l.vw;
    T* bias_sum = a.want_bias ? partial + (g.filters * l.cg + filter) * l.vw : nullptr;
    if (f + 2 <= l.fg) {
      weight_grad_filters<T, kBytes, 2>(p, l.wq, a.fwd_taps, l.cg, d + f * l.d_chan, l.d_chan,
                                        l.wd, count, l.wo, sums, bias_sum);
      f += 2;
    } else {
      weight_grad_filters<T, kBytes, 1>(p, l.wq, a.fwd_taps, l.cg, d + f * l.d_chan, l.d_chan,
                                        l.wd, count, l.wo, sums, bias_sum);
      f += 1;
    }
  }
}

template <typename T>
using ForwardItem = void (*)(const Args<T>&, int64_t, T*, const T**);
template <typename T>
using BackwardItem = void (*)(const Args<T>&, int64_t, T*, T*, T*, T*, const T**);

template <typename T>
void forward_item_sse2(const Args<T>& a, int64_t item, T* p, const T** rows) {
  forward_item<T, 16>(a, item, p, rows);
}
template <typename T>
IGC_TARGET_AVX2 void forward_item_avx2(const Args<T>& a, int64_t item, T* p, const T** rows) {
  forward_item<T, 32>(a, item, p, rows);
}
template <typename T>
void backward_item_sse2(const Args<T>& a, int64_t item, T* p, T* d, T* e, T* partial,
                        const T** rows) {
  backward_item<T, 16>(a, item, p, d, e, partial, rows);
}
template <typename T>
IGC_TARGET_AVX2 void backward_item_avx2(const Args<T>& a, int64_t item, T* p, T* d, T* e,
                                        T* partial, const T** rows) {
  backward_item<T, 32>(a, item, p, d, e, partial, rows);
}
template <typename T>
void backward_images_item_sse2(const Args<T>& a, int64_t item, T* p, T* d, T* e, T* partial,
                               const T** rows) {
  backward_images_item<T, 16>(a, item, p, d, e, partial, rows);
}
template <typename T>
IGC_TARGET_AVX2 void backward_images_item_avx2(const Args<T>& a, int64_t item, T* p, T* d, T* e,
                                               T* partial, const T** rows) {
  backward_images_item<T, 32>(a, item, p, d, e, partial, rows);
}

// Whether `g` (as_rows) is a pointwise conv: one row per image, 1x1, unit stride, no padding, and
// channels in place (the pointwise paths read a group's input channels as consecutive rows).
bool pointwise(const ConvGeometry& g) {
  return g.height == 1 && g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 &&
         g.stride_w == 1 && g.pad_h == 0 && g.pad_w == 0 && g.input_branches == 1;
}

// The GEMM that runs a pointwise conv's forward and data gradient in float (see pointwise_gemm);
// null for other convs and for double, which take the correlation kernels. The AVX2 one where
// AVX-512 exists too: its panels and reads of B beat the plain AVX-512 register block here.
template <typename T>
GemmKernel pointwise_gemm_kernel(const ConvGeometry& g) {
  return std::is_same<T, float>::value && pointwise(g) ? pick_gemm(false) : nullptr;
}

// Whether a backward takes the row-dot path (see backward_images_item): float, pointwise, planes
// of at least kDotsMinValues. It reads every operand in place, so the item buffers P, D and E and
// the weight-gradient GEMM's row pointers are left out of its workspace.
template <typename T>
bool row_dots_backward(const ConvGeometry& g) {
  return std::is_same<T, float>::value && pointwise(g) && g.width >= kDotsMinValues;
}

// The row dot products of that path's weight gradient (see pointwise_weight_dots), else null.
template <typename T>
RowDotsKernel pointwise_dots_kernel(const ConvGeometry& g) {
  return row_dots_backward<T>(g) ? pick_row_dots() : nullptr;
}

int conv_threads(const ConvGeometry& g) {
  const int64_t macs = g.batch * g.filters * g.out_height() * g.out_width() *
                       (g.in_channels / g.groups) * g.kernel_h * g.kernel_w;
  return macs < kMinParallelMacs ? 1 : std::max(1, omp_get_max_threads());
}

// Images per backward item. A pointwise conv (as_rows: one row of H*W values per image) takes
// images until a row block has about kImageBlockValues values: on small planes (4x4, 7x7) one
// image's products are fewer than the loads and stores of the weight gradient's partial sums
// they update. Bounded by the item's input and output rows fitting in kImageBlockBytes (they are
// reread from cache, once per pair of filters), or kGemmBlockBytes where the weight gradient is
// a GEMM over copies of them (float planes under kDotsMinValues: each item writes and adds a
// filters x channels product, which more images per item amortise), and by at least 8 items for
// the threads.
constexpr int64_t kImageBlockValues = 1024;
constexpr int64_t kImageBlockBytes = 256 * 1024;
constexpr int64_t kGemmBlockBytes = 1024 * 1024;
int64_t backward_images(const ConvGeometry& g, int64_t value_bytes) {
  if (!pointwise(g)) return 1;
  const int64_t wanted = (kImageBlockValues + g.width - 1) / g.width;
  const int64_t image_bytes = (g.in_channels + g.filters) / g.groups * g.width * value_bytes;
  const bool gemm = value_bytes == sizeof(float) && g.width < kDotsMinValues;
  const int64_t budget = gemm ? kGemmBlockBytes : kImageBlockBytes;
  const int64_t most = std::max<int64_t>(
      1, std::min({wanted, budget / image_bytes, g.batch * g.groups / 8, g.batch}));
  // Down to half as many images where that makes the items a multiple of the threads: a few
  // large items dealt to 2 threads otherwise leave one idle at the end (the backward of 64 x 96
  // x 8 x 8 -> 576: 11 items of 6 images, 2 threads 1.6x faster than 1; 16 items of 4: 2.0x).
  const int64_t threads = conv_threads(g);
  for (int64_t images = most; threads > 1 && 2 * images >= most; --images) {
    if ((g.batch + images - 1) / images * g.groups % threads == 0) return images;
  }
  return most;
}

// The geometry a backward item is laid out for: a pointwise item has one row per image.
ConvGeometry backward_item_geometry(ConvGeometry g, int64_t value_bytes) {
  const int64_t images = backward_images(g, value_bytes);
  if (images > 1) g.height = images;
  return g;
}

// Output-row chunks of each forward item (an image and group): 1, or where there are fewer items
// than threads (a batch-1 stem: 1 x 3 x 224 x 224 -> 32, one item), two per thread, so that
// every thread has rows and one that starts late leaves its second chunk to the others. Each
// chunk copies only the input rows its output rows read. The pointwise GEMM keeps whole planes
// and splits the group's filters instead, in whole 12-row register blocks, where no input
// transform or output moments (taken per item) come with it; each value is the same sum. A
// batch-1 pointwise conv of one group was one item on one thread: with the filters split, on 2
// threads (AVX-512, medians of 400 calls, 4 processes each way) 1 x 320 x 7 x 7 -> 1280 took
// 0.45-0.47 -> 0.36-0.38 ms, 1 x 160 x 14 x 14 -> 960 0.48-0.53 -> 0.36-0.38 and 1 x 64 x 28 x
// 28 -> 384 0.35-0.39 -> 0.24-0.25.
int64_t forward_row_chunks(const ConvGeometry& g, bool gemm, int threads, bool per_item_extras) {
  const int64_t items = g.batch * g.groups;
  if (threads <= 1 || items >= threads) return 1;
  const int64_t per_item = 2 * ((threads + items - 1) / items);
  if (gemm) {
    if (per_item_extras) return 1;
    return std::min<int64_t>((g.filters / g.groups + 2 * kGemmPanelRows - 1) /
                             (2 * kGemmPanelRows), per_item);
  }
  return std::min<int64_t>(g.out_height(), per_item);
}

// Items handed out at a time: 4, or more where there are so many (small) items that taking them
// four at a time would make the threads contend for the shared counter; still at least 32
// hand-outs per thread, so that a slow thread leaves little behind. Where a thread has fewer than
// 8 items, half of them at a time (at least 1): a pointwise backward's 11 blocks of images taken
// 4 at a time went 8 to one thread and 3 to the other.
int64_t item_chunk(int64_t items, int threads) {
  const int64_t per_thread = items / std::max(1, threads);
  if (per_thread < 8) return std::max<int64_t>(1, per_thread / 2);
  return std::max<int64_t>(4, items / (32 * static_cast<int64_t>(threads)));
}

// Groups per work item of a backward with the input BatchNorm's backward fused in: the item runs
// the groups' (image, group) items over the whole batch, then the BatchNorm backward of their
// input channels (two passes over their planes), which finds the planes in cache where the
// block's input planes over the batch stay under kFusedBnBlockBytes (in L2 or L3). Per image the
// block's planes are one run of memory of kFusedBnRunGroups groups where the budget allows: the
// items of a block go image by image, and one 4 KB plane per image (32x32) made the conv's
// backward itself slower than in its image-major order (C++, 1 thread, 64 x 144 x 32 x 32 with
// the BatchNorm backward: runs of 4 / 16 / 64 KB 19.3 / 18.0 / 18.9 ms against 18.8 ms as two
// calls; at stride 2 15.5 / 11.3 / 10.1 against 12.3 ms). Four groups, where runs of 16 KB were
// the rule before (with the next item's planes prefetched, see prefetch_item; MXNet, the two
// alternating in one process, 1 thread): 64 x 192 x 16 x 16 9.98 -> 9.18 ms (2 threads 5.62 ->
// 5.38, 384 channels 13.90 -> 13.08), 16 x 144 x 56 x 56 30.4 -> 27.7 ms, the 32x32 planes the
// same blocks as before. At least 4 items per thread.
constexpr int64_t kFusedBnBlockBytes = 1024 * 1024;
constexpr int64_t kFusedBnRunGroups = 4;
int64_t fused_bn_groups(const ConvGeometry& g, int64_t value_bytes, int threads) {
  const int64_t group_bytes = std::max<int64_t>(
      1, g.in_channels / g.groups * g.height * g.width * value_bytes);
  int64_t b = kFusedBnRunGroups;
  b = std::min(b, std::max<int64_t>(1, kFusedBnBlockBytes / (group_bytes * g.batch)));
  b = std::min(b, std::max<int64_t>(1, g.groups / (4 * static_cast<int64_t>(threads))));
  return std::min(b, g.groups);
}

// Workspace: [shared part][thread 0][thread 1]..., every piece 64-byte aligned.
struct Workspace {
  int64_t fwd_taps, bwd_taps, flipped, zeros, panels, bn, shared, per_thread, p, d, e, partial,
      rows, total;
};

// Floats per group of the pointwise GEMM's packed A (the weights forward, the flipped weights for
// the data gradient): what the AVX2 GEMM reads as panels; 0 for other convs and kernels.
template <typename T>
int64_t gemm_panels(const ConvGeometry& g, bool backward, bool avx2) {
  if (!std::is_same<T, float>::value || !pointwise(g) || !avx2) return 0;
  const int64_t cg = g.in_channels / g.groups, fg = g.filters / g.groups;
  const GemmKernel kernel = pick_gemm(false);
  return backward ? gemm_panel_floats(kernel, cg, fg) : gemm_panel_floats(kernel, fg, cg);
}

// The input BatchNorm's backward on a row-dot path (with a ConvInputTransform that asks for it)
// takes its sums from each image's data-gradient rows just after the GEMM wrote them (in cache),
// in place of the first of its two passes over the data gradient and the input afterwards. The
// backward with relu6 (1 and 2 threads, the ways alternating in one process, medians of 30):
// 64 x 144 x 32 x 32 -> 24 21.4 -> 19.9 and 9.3 -> 8.5 ms, 96 -> 24 12.8 -> 12.0 and 5.7 -> 5.3 ms,
// 64 x 192 x 16 x 16 -> 32 6.0 -> 5.8 and 2.9 -> 2.8 ms; the expansions (24 -> 144, 32 -> 192)
// alike. Making the data gradient again for dx instead of keeping it in data_grad (a write and a
// read of it fewer) was slower: 19.9 -> 22.6, 12.0 -> 14.3 and 5.8 -> 7.3 ms on 1 thread.
template <typename T>
bool input_bn_rows(const ConvGeometry& g) {
  return row_dots_backward<T>(g);
}

// `transformed`: the input goes through a ConvInputTransform, which a pointwise backward's weight
// gradient writes into P (the row-dot path then has P too).
template <typename T>
Workspace workspace_layout(const ConvGeometry& g, bool backward, bool avx2, bool transformed) {
  const Layout l(backward ? backward_item_geometry(g, sizeof(T)) : g,
                 (avx2 ? 32 : 16) / sizeof(T));
  Workspace w{};
  const bool in_place = backward && row_dots_backward<T>(g);
  w.fwd_taps = 0;
  w.bwd_taps = align_bytes(l.cg * l.k2 * sizeof(int64_t));
  w.flipped = w.bwd_taps + (backward ? align_bytes(l.fg * l.k2 * sizeof(int64_t)) : 0);
  w.zeros = w.flipped + (backward ? align_bytes(g.filters * l.cg * l.k2 * sizeof(T)) : 0);
  w.panels = w.zeros + align_bytes(std::max(l.cg, l.fg) * sizeof(T));
  w.bn = w.panels + align_bytes(g.groups * gemm_panels<T>(g, backward, avx2) * sizeof(float));
  const bool bn_rows = backward && transformed && input_bn_rows<T>(g);
  // the rows' sums, then mean_g and k per channel (see bn_backward_row_sums_cpu)
  const int64_t bn_values =
      2 * g.batch * g.in_channels * bn_backward_row_chunks(g.width) + 2 * g.in_channels;
  w.shared = w.bn + (bn_rows ? align_bytes(bn_values * sizeof(T)) : 0);
  w.p = 0;
  w.d = in_place && !transformed ? 0 : align_bytes(l.p_size * sizeof(T));
  w.e = w.d + (backward && !in_place ? align_bytes(l.d_size * sizeof(T)) : 0);
  w.partial = w.e + (backward && !in_place ? align_bytes(l.e_size * sizeof(T)) : 0);
  w.rows = w.partial +
           (backward ? align_bytes((g.filters * l.cg * l.k2 + g.filters) * l.vw * sizeof(T)) : 0);
  // Row pointers of the pointwise GEMMs: cg or fg rows, and the weight gradient's values.
  const int64_t rows = std::max({l.cg, l.fg, backward && !in_place ? l.ho * l.wd : 0});
  w.per_thread = w.rows + (pointwise(g) ? align_bytes(rows * sizeof(T*)) : 0);
  w.total = w.shared + conv_threads(g) * w.per_thread;
  return w;
}

// The vector width and thread count a call runs with: what was asked for when the workspace was
// sized, or less if the workspace is smaller (the environment or the thread count changed in
// between). Every buffer grows with the vector width, so 16-byte vectors always fit.
struct Plan {
  bool avx2;
  Workspace w;
  int threads;
};

template <typename T>
Plan make_plan(const ConvGeometry& g, bool backward, int64_t workspace_bytes, bool transformed) {
  Plan p{use_avx2_kernels(), {}, 1};
  p.w = workspace_layout<T>(g, backward, p.avx2, transformed);
  if (p.w.total > workspace_bytes) {
    p.avx2 = false;
    p.w = workspace_layout<T>(g, backward, false, transformed);
  }
  p.threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(conv_threads(g), (workspace_bytes - p.w.shared) / p.w.per_thread)));
  return p;
}

template <typename T>
void fill_forward_taps(const ConvGeometry& g, const Layout& l, int64_t* taps) {
  for (int64_t c = 0; c < l.cg; ++c) {
    for (int64_t ky = 0; ky < g.kernel_h; ++ky) {
      for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
        *taps++ = (kx % g.stride_w) * l.p_phase + c * l.p_chan + ky * l.wq + kx / g.stride_w;
      }
    }
  }
}

// Inside a parallel region: every group's A (rows x cols values per group, consecutive) packed
// into its panels (panel_floats apart), the panels shared out over the team; the
// implicit barrier at the end leaves them all ready. `transposed`: `a` holds each group's A
// transposed (cols x rows: a 1x1 conv's weights, read as the data gradient's A).
template <typename T>
void pack_panels(const T* a, int64_t rows, int64_t cols, int64_t groups, float* panels,
                 int64_t panel_floats, bool transposed = false) {
  if constexpr (std::is_same<T, float>::value) {
    const int64_t blocks = (rows + kGemmPanelRows - 1) / kGemmPanelRows;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < groups * blocks; ++i) {
      const int64_t group = i / blocks, m0 = i % blocks * kGemmPanelRows;
      const float* first =
          transposed ? a + group * rows * cols + m0 : a + (group * rows + m0) * cols;
      pack_gemm_panels(first, transposed ? rows : cols, std::min(kGemmPanelRows, rows - m0), cols,
                       panels + group * panel_floats + m0 * cols, transposed);
    }
  }
}

// The input transform's pointers into Args (none without one).
template <typename T>
void set_input_transform(const ConvInputTransform* in, Args<T>* a) {
  if (!in) return;
  a->in_scale = static_cast<const T*>(in->scale);
  a->in_shift = static_cast<const T*>(in->shift);
  a->in_act = in->act;
  a->in_mean = static_cast<const T*>(in->mean);
}

// The moment sums of every output row in a pass of their own (kernels that do not take them per
// item), images shared out over the threads.
void output_moments_pass(const ConvGeometry& g, int dtype, const void* out, double* row_sums) {
  const int64_t plane = g.out_height() * g.out_width(), rows = g.batch * g.filters;
  const int64_t bytes = dtype == kFloat32 ? 4 : 8;
  const int threads = rows * plane < kMinParallelMacs ? 1 : omp_get_max_threads();
  const bool avx2 = use_avx2_kernels();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t n = 0; n < g.batch; ++n) {
    bn_row_moments_cpu(dtype, static_cast<const char*>(out) + n * g.filters * plane * bytes,
                       g.filters, plane, plane, row_sums + 3 * n * g.filters, 1, avx2);
  }
}

template <typename T>
void forward(const ConvGeometry& g, const T* data, const T* weight, const T* bias, T* out,
             char* ws, int64_t ws_bytes, int act, const ConvInputTransform* in,
             const ConvOutputMoments* moments) {
  const Plan plan = make_plan<T>(g, false, ws_bytes, in != nullptr);
  const bool avx2 = plan.avx2;
  const Layout l(g, (avx2 ? 32 : 16) / sizeof(T));
  const Workspace& w = plan.w;
  int64_t* fwd_taps = reinterpret_cast<int64_t*>(ws + w.fwd_taps);
  fill_forward_taps<T>(g, l, fwd_taps);
  T* zeros = reinterpret_cast<T*>(ws + w.zeros);
  std::fill(zeros, zeros + std::max(l.cg, l.fg), T(0));
  const int64_t panel_floats = gemm_panels<T>(g, false, avx2);
  float* panels = panel_floats ? reinterpret_cast<float*>(ws + w.panels) : nullptr;
  Args<T> a{g,       l,       data,  weight, bias, out, nullptr, nullptr, fwd_taps,
            nullptr, nullptr, zeros, false,  1,    pointwise_gemm_kernel<T>(g),
            panels,  panel_floats, nullptr, act == kConvRelu6};
  const ForwardItem<T> run = avx2 ? forward_item_avx2<T> : forward_item_sse2<T>;
  const int threads = plan.threads;
  a.row_chunks = forward_row_chunks(g, a.gemm != nullptr, threads, in || moments);
  a.wide_taps = wide_taps<T>(avx2);
  set_input_transform(in, &a);
  // Row chunks write parts of planes: their moments are taken after the items.
  if (moments && a.row_chunks == 1) a.moments = moments->row_sums;
  const int64_t items = g.batch * g.groups * a.row_chunks;
#pragma omp parallel num_threads(threads)
  {
    char* mine = ws + w.shared + omp_get_thread_num() * w.per_thread;
    T* p = reinterpret_cast<T*>(mine + w.p);
    const T** rows = reinterpret_cast<const T**>(mine + w.rows);
    if (!a.gemm && a.row_chunks == 1) std::memset(p, 0, l.p_size * sizeof(T));
    if (panels) pack_panels(weight, l.fg, l.cg, g.groups, panels, panel_floats);
#pragma omp for schedule(dynamic, item_chunk(items, threads))
    for (int64_t item = 0; item < items; ++item) run(a, item, p, rows);
  }
  if (moments && !a.moments) output_moments_pass(g, dtype_of<T>(), out, moments->row_sums);
}

template <typename T>
void backward(const ConvGeometry& g, const T* out_grad, const T* data, const T* weight,
              T* data_grad, T* weight_grad, T* bias_grad, char* ws, int64_t ws_bytes,
              const ConvInputTransform* in) {
  const Plan plan = make_plan<T>(g, true, ws_bytes, in != nullptr);
  const bool avx2 = plan.avx2;
  const int64_t images = backward_images(g, sizeof(T));
  const Layout l(backward_item_geometry(g, sizeof(T)), (avx2 ? 32 : 16) / sizeof(T));
  const Workspace& w = plan.w;
  int64_t* fwd_taps = reinterpret_cast<int64_t*>(ws + w.fwd_taps);
  int64_t* bwd_taps = reinterpret_cast<int64_t*>(ws + w.bwd_taps);
  T* flipped = reinterpret_cast<T*>(ws + w.flipped);
  fill_forward_taps<T>(g, l, fwd_taps);
  T* zeros = reinterpret_cast<T*>(ws + w.zeros);
  std::fill(zeros, zeros + std::max(l.cg, l.fg), T(0));
  for (int64_t f = 0; f < l.fg; ++f) {
    for (int64_t ky = 0; ky < g.kernel_h; ++ky) {
      for (int64_t kx = 0; kx < g.kernel_w; ++kx) {
        bwd_taps[(f * g.kernel_h + ky) * g.kernel_w + kx] =
            f * l.d_chan + (g.pad_h + ky) * l.wd + g.pad_w + kx;
      }
    }
  }
  const int64_t panel_floats = gemm_panels<T>(g, true, avx2);
  float* panels = panel_floats ? reinterpret_cast<float*>(ws + w.panels) : nullptr;
  // flipped[(filter group, c)][f][ky'][kx'] = weight[filter group*fg + f][c][kh-1-ky'][kw-1-kx']
  // (a 1x1 conv's GEMM with panels packs them from the weights instead, see pack_panels).
  for (int64_t group = 0; group < g.groups && !panels; ++group) {
    for (int64_t c = 0; c < l.cg; ++c) {
      T* dst = flipped + (group * l.cg + c) * l.fg * l.k2;
      for (int64_t f = 0; f < l.fg; ++f) {
        const T* src = weight + ((group * l.fg + f) * l.cg + c) * l.k2;
        for (int64_t k = 0; k < l.k2; ++k) dst[f * l.k2 + k] = src[l.k2 - 1 - k];
      }
    }
  }
  Args<T> a{g,        l,     data,  weight, nullptr, nullptr, out_grad, data_grad, fwd_taps,
            bwd_taps, panels ? nullptr : flipped, zeros, bias_grad != nullptr, images,
            pointwise_gemm_kernel<T>(g), panels, panel_floats,
            pointwise_dots_kernel<T>(g)};
  a.wide_taps = wide_taps<T>(avx2);
  set_input_transform(in, &a);
  const BackwardItem<T> run =
      images > 1 || a.gemm ? (avx2 ? backward_images_item_avx2<T> : backward_images_item_sse2<T>)
                           : (avx2 ? backward_item_avx2<T> : backward_item_sse2<T>);
  // Partial sums per value: l.vw lanes, or one from the row dot products.
  const int64_t lanes = a.gemm ? 1 : l.vw;
  const int64_t items = (g.batch + images - 1) / images * g.groups;
  const int64_t weight_size = g.filters * l.cg * l.k2;
  const int64_t reduced = weight_size + g.filters;
  const int threads = plan.threads;
  const bool fused_bn = in && in->gamma_grad && images == 1 && !a.gemm;
  // The row-dot path takes its input BatchNorm's sums per image (see input_bn_rows), then writes
  // dx per item; the other pointwise paths' items are blocks of images over every channel: their
  // input BatchNorm's backward runs after all of them, on blocks of channels.
  const bool bn_rows = in && in->gamma_grad && input_bn_rows<T>(g);
  const bool bn_after = in && in->gamma_grad && !fused_bn && !bn_rows;
  T* bn_mean_g = nullptr;
  T* bn_k = nullptr;
  if (bn_rows) {
    a.bn_sums = reinterpret_cast<T*>(ws + w.bn);
    bn_mean_g = a.bn_sums + 2 * g.batch * g.in_channels * bn_backward_row_chunks(g.width);
    bn_k = bn_mean_g + g.in_channels;
    a.avx2 = avx2;
  }
  const int64_t bn_channels = std::max<int64_t>(1, g.in_channels / (4 * int64_t(threads)));
  const int64_t bn_blocks = (g.in_channels + bn_channels - 1) / bn_channels;
  const int64_t block_groups = fused_bn ? fused_bn_groups(g, sizeof(T), threads) : 1;
  const int64_t group_blocks = (g.groups + block_groups - 1) / block_groups;
  char* thread_base = ws + w.shared;
#pragma omp parallel num_threads(threads)
  {
    char* mine = thread_base + omp_get_thread_num() * w.per_thread;
    T* p = reinterpret_cast<T*>(mine + w.p);
    T* d = reinterpret_cast<T*>(mine + w.d);
    T* e = reinterpret_cast<T*>(mine + w.e);
    T* partial = reinterpret_cast<T*>(mine + w.partial);
    const T** rows = reinterpret_cast<const T**>(mine + w.rows);
    if (!a.dots) {  // the row-dot path has no item buffers (P, for a transform, needs no zeros)
      std::memset(p, 0, l.p_size * sizeof(T));
      std::memset(d, 0, l.d_size * sizeof(T));
      std::memset(e, 0, l.e_size * sizeof(T));
    }
    std::memset(partial, 0, reduced * lanes * sizeof(T));
    if (panels) pack_panels(weight, l.cg, l.fg, g.groups, panels, panel_floats, true);
    if (fused_bn) {
      // Blocks of groups over the whole batch, each followed by the BatchNorm backward of its
      // input channels while their gradient planes are in cache (see fused_bn_groups).
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < group_blocks; ++b) {
        const int64_t g0 = b * block_groups, g1 = std::min(g.groups, g0 + block_groups);
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t group = g0; group < g1; ++group) {
            // the next item's planes (see prefetch_item)
            const bool last = group + 1 == g1;
            prefetch_item(a, last ? n + 1 : n, last ? g0 : group + 1, true);
            run(a, n * g.groups + group, p, d, e, partial, rows);
          }
        }
        conv_input_bn_backward(g, dtype_of<T>(), *in, data, data_grad, g0 * l.cg, g1 * l.cg);
      }
    } else {
#pragma omp for schedule(dynamic, item_chunk(items, threads))
      for (int64_t item = 0; item < items; ++item) run(a, item, p, d, e, partial, rows);
    }
    if (bn_rows) {  // after the barrier above: every row has its sums
      if constexpr (std::is_same<T, float>::value) {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < g.in_channels; ++c) {
          bn_backward_finish_cpu(a.bn_sums, g.batch, g.in_channels, g.width, c, c + 1,
                                 static_cast<const float*>(in->invstd),
                                 static_cast<float*>(in->gamma_grad),
                                 static_cast<float*>(in->beta_grad), bn_mean_g, bn_k);
        }
#pragma omp for schedule(dynamic, item_chunk(items, threads))
        for (int64_t item = 0; item < items; ++item) {
          input_bn_apply_item(a, item, bn_mean_g, bn_k);
        }
      }
    }
    if (bn_after) {  // after the barrier above: the data gradient is complete
#pragma omp for schedule(dynamic, 1)
      for (int64_t b = 0; b < bn_blocks; ++b) {
        const int64_t c0 = b * bn_channels;
        conv_input_bn_backward(g, dtype_of<T>(), *in, data, data_grad, c0,
                               std::min(g.in_channels, c0 + bn_channels));
      }
    }
    // The implicit barrier above makes every thread's partial sums complete.
    const int team = omp_get_num_threads();
    // Blocks of values, each summed thread after thread (per value: thread 0's lanes, then
    // thread 1's, ..., one value at a time as before), which with one lane per value (the GEMM
    // paths: 409,600 values for the last 4x4 conv, 320 -> 1280) the compiler makes vector adds.
    constexpr int64_t kBlock = 1024;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < (reduced + kBlock - 1) / kBlock; ++b) {
      const int64_t i0 = b * kBlock, n = std::min(reduced - i0, kBlock);
      T s[kBlock];
      std::fill(s, s + n, T(0));
      for (int t = 0; t < team; ++t) {
        const T* sums = reinterpret_cast<const T*>(thread_base + t * w.per_thread + w.partial) +
                        i0 * lanes;
        if (lanes == 1) {
          for (int64_t i = 0; i < n; ++i) s[i] += sums[i];
        } else {
          for (int64_t i = 0; i < n; ++i) {
            for (int64_t k = 0; k < lanes; ++k) s[i] += sums[i * lanes + k];
          }
        }
      }
      const int64_t split = std::clamp(weight_size - i0, int64_t(0), n);  // weights, then biases
      std::copy(s, s + split, weight_grad + i0);
      if (bias_grad && split < n) {
        std::copy(s + split, s + n, bias_grad + (i0 + split - weight_size));
      }
    }
  }
}

// A pointwise convolution (1x1, unit stride, no padding) is the same computation on each image
// flattened into one row of H*W values: rows then fill whole vectors (a 4x4 or 7x7 plane has
// 16 or 49 values, one half-empty vector per row otherwise) and a block runs along the row.
ConvGeometry as_rows(ConvGeometry g) {
  if (g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
      g.pad_w == 0) {
    g.width *= g.height;
    g.height = 1;
  }
  return g;
}

}  // namespace

int64_t conv_forward_workspace_bytes(const ConvGeometry& geometry, int dtype, bool transformed) {
  const ConvGeometry g = as_rows(geometry);
  const bool avx2 = use_avx2_kernels();
  if (dtype == kFloat32) return workspace_layout<float>(g, false, avx2, transformed).total;
  if (dtype == kFloat64) return workspace_layout<double>(g, false, avx2, transformed).total;
  return 0;
}

int64_t conv_backward_workspace_bytes(const ConvGeometry& geometry, int dtype, bool transformed) {
  const ConvGeometry g = as_rows(geometry);
  const bool avx2 = use_avx2_kernels();
  if (dtype == kFloat32) return workspace_layout<float>(g, true, avx2, transformed).total;
  if (dtype == kFloat64) return workspace_layout<double>(g, true, avx2, transformed).total;
  return 0;
}

void conv_input_bn_backward(const ConvGeometry& g, int dtype, const ConvInputTransform& in,
                            const void* data, void* data_grad, int64_t c0, int64_t c1) {
  const int64_t inner = g.height * g.width;
  auto run = [&](int64_t d0, int64_t d1) {
    bn_apply_backward_channels_cpu(dtype, data_grad, data, in.scale, in.shift, in.mean, in.invstd,
                                   data_grad, in.gamma_grad, in.beta_grad, g.batch,
                                   g.in_channels, inner, d0, d1, in.act);
  };
  if (g.input_branches == 1) return run(c0, c1);  // the same channels of the data
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t d = conv_input_channel(g, c);
    run(d, d + 1);
  }
}

bool conv_transforms_input(const ConvGeometry& g, int dtype) {
  return dtype == kFloat32 || (dtype == kFloat64 && !pointwise(as_rows(g)));
}

int64_t conv_moments_sums_bytes(const ConvGeometry& g) {
  return 3 * g.batch * g.filters * int64_t(sizeof(double));
}

void conv_forward_cpu(const ConvGeometry& geometry, int dtype, const void* data,
                      const void* weight, const void* bias, void* out, void* workspace,
                      int64_t workspace_bytes, int act, const ConvInputTransform* in,
                      const ConvOutputMoments* moments) {
  if (dtype == kFloat32 && act == kConvNone && depthwise_small_conv(geometry)) {
    depthwise_small_forward(geometry, static_cast<const float*>(data),
                            static_cast<const float*>(weight), static_cast<const float*>(bias),
                            static_cast<float*>(out), in, moments ? moments->row_sums : nullptr);
  } else {
    const ConvGeometry g = as_rows(geometry);
    char* ws = static_cast<char*>(workspace);
    if (dtype == kFloat32) {
      forward(g, static_cast<const float*>(data), static_cast<const float*>(weight),
              static_cast<const float*>(bias), static_cast<float*>(out), ws,
              workspace_bytes, act, in, moments);
    } else if (dtype == kFloat64) {
      forward(g, static_cast<const double*>(data), static_cast<const double*>(weight),
              static_cast<const double*>(bias), static_cast<double*>(out), ws,
              workspace_bytes, act, in, moments);
    }
  }
  // Every output row has its sums (from the kernels' items or a pass after them).
  if (moments) {
    bn_moments_from_rows_cpu(dtype, moments->row_sums, geometry.batch, geometry.filters,
                             geometry.out_height() * geometry.out_width(), moments->summary);
  }
}

void conv_backward_cpu(const ConvGeometry& geometry, int dtype, const void* out_grad,
                       const void* data, const void* weight, void* data_grad, void* weight_grad,
                       void* bias_grad, void* workspace, int64_t workspace_bytes,
                       const ConvInputTransform* in) {
  if (dtype == kFloat32 && depthwise_small_conv(geometry)) {
    depthwise_small_backward(geometry, static_cast<const float*>(out_grad),
                             static_cast<const float*>(data), static_cast<const float*>(weight),
                             static_cast<float*>(data_grad), static_cast<float*>(weight_grad),
                             static_cast<float*>(bias_grad), in);
    return;
  }
  const ConvGeometry g = as_rows(geometry);
  char* ws = static_cast<char*>(workspace);
  if (dtype == kFloat32) {
    backward(g, static_cast<const float*>(out_grad), static_cast<const float*>(data),
             static_cast<const float*>(weight), static_cast<float*>(data_grad),
             static_cast<float*>(weight_grad), static_cast<float*>(bias_grad), ws,
             workspace_bytes, in);
  } else if (dtype == kFloat64) {
    backward(g, static_cast<const double*>(out_grad), static_cast<const double*>(data),
             static_cast<const double*>(weight), static_cast<double*>(data_grad),
             static_cast<double*>(weight_grad), static_cast<double*>(bias_grad), ws,
             workspace_bytes, in);
  }
}

}  // namespace igc
