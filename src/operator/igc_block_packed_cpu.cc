// CPU kernel of IGCBlock on packed weights (see igc_block.h, "Packed weights"). Per image and
// band of output rows, as the plain kernel, but the expanded tensors live channel-blocked: e and d
// hold 8 channels per pixel side by side ([E / 8][rows][columns][8]), so that
//   1. the expansion conv computes 16 (or 8) filters x 6 pixels per register block (AVX-512: 32
//      filters, two panels, x up to 12 pixels, see panel_block_z): a vector of packed weights
//      times a broadcast input pixel, stored as whole 8-channel vectors of e (whose rows carry a
//      zero column on either side: the depthwise padding); on short bands with many inputs it reads
//      the pixels from a channel-blocked copy of the band's input (kBlockedPixels);
//   2. the depthwise conv + bias + ReLU6 is nine vector multiply-adds per 8 channels of an output
//      pixel (AVX-512 at stride 1: of two pixels side by side), with no masks or shuffles for the
//      edges or stride 2;
//   3. the linear conv computes 16 (or 8) filters x 6 pixels the same way (a broadcast of d per
//      channel, which also reads the permutation as an offset table) and writes the block's NCHW
//      output through a small transposition.
// Vectors along the filters leave no idle lanes on 7x7 and 14x14 planes (49 and 196 columns),
// where the plain kernel's 16-column blocks do. AVX-512 (the 1x1 convs: 16-filter panels in
// 512-bit registers, 8-filter ones in AVX-512VL's 256-bit ones), AVX2+FMA, or portable C++ (the
// same layouts).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common.h"
#include "gemm.h"
#include "igc_block.h"
#include "vec_avx2.h"

namespace igc {
namespace {

// The e + d buffers of one thread stay about this size (well inside a 1 MB L2 cache).
constexpr int64_t kBandBytes = 384 * 1024;
// Pixels per register block of the 1x1 convs: 6 x 16 filters or 12 x 8 (12 accumulators each).
constexpr int kPixels = 6, kMostPixels = 12;

// The expansion reads its input channel-blocked (a copy of the band's rows, [C / 8][N][8], see
// block_input_avx2) where a band has at most this many input pixels and one group's input rows
// and a panel's weights would not fit in L1 beside each other: there every k of a register block
// loads a short row of its own, while the copy serves 8 channels per line. Longer rows, or rows
// that fit in L1 with the weights, gain nothing from it (docs/performance.md, "What changed").
constexpr int64_t kBlockedPixels = 64, kBlockedBytes = 24 * 1024;

struct Plan {
  int64_t band_rows, e_rows, e_row, e_plane, d_plane, per_thread_floats;
  bool blocked_input;   // the expansion reads a channel-blocked copy of its input (SIMD kernels)
  BlockSplit split;
};

Plan make_plan(const BlockGeometry& g) {
  Plan p{};
  const int64_t Hout = g.out_height(), Wout = g.out_width();
  const int64_t row_bytes = 4 * g.expanded * (g.stride * (g.width + 2) + Wout);
  p.band_rows = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(row_bytes, 1), 1, Hout);
  // Every band streams both 1x1 convs' weights once: on small planes with many channels (7x7,
  // 960 expanded) they outweigh the whole image's buffers, and one band of up to twice the usual
  // size is faster (a batch-1 MobileNetV2's last block by 4-8 % on Zen 4, 2026-12-05).
  const int64_t weight_bytes = 4 * g.expanded * (g.in_channels + g.out_channels) / g.groups;
  if (Hout * row_bytes <= 2 * kBandBytes && weight_bytes >= Hout * row_bytes) p.band_rows = Hout;
  p.e_rows = (p.band_rows - 1) * g.stride + 3;
  p.e_row = (g.width + 2) * 8;  // floats per row of an 8-channel block of e, padding included
  p.e_plane = p.e_rows * p.e_row;
  p.d_plane = p.band_rows * Wout * 8;
  const int64_t blocks = g.expanded / 8, in_per_group = g.in_channels / g.groups;
  const int64_t band_pixels = std::min(p.e_rows, g.height) * g.width;  // input pixels, at most
  p.blocked_input = band_pixels <= kBlockedPixels &&
                    in_per_group * (4 * band_pixels + 64) > kBlockedBytes;
  // [e][d][depthwise weights + biases, 80 per block][pixel offsets][input rows][channel offsets]
  // [, input offsets][, blocked input] (a multiple of 16 floats: every thread's part starts on a
  // 64-byte boundary)
  p.per_thread_floats = (blocks * (p.e_plane + p.d_plane + 80) +
                         2 * (p.e_rows * g.width + g.in_channels + g.expanded) +
                         (p.blocked_input ? 2 * g.in_channels +
                                            (g.in_channels + 7) / 8 * 8 * band_pixels : 0) +
                         15) / 16 * 16;
  p.split = block_split(g, p.per_thread_floats);
  return p;
}

// Packed panels: K rows of `width` (16 or 8) filters. One call computes a panel over N pixels.
struct ExpandPanel {
  int64_t K, N, width;
  const float* w;             // K x width
  const float* bias;          // width
  const float* const* rows;   // K input rows of N pixels
  float* e;                   // the panel's first 8-channel block of e
  int64_t e_plane;
  const int64_t* pixel;       // offset in a block of e of each pixel's 8 channels
  const float* next;          // the weights of the panel that runs next (L2 prefetch), or null
  const float* xb = nullptr;  // else: the input channel-blocked ([C / 8][N][8], SIMD kernels)
  const int64_t* xoff = nullptr;  // with xb: offset in xb of each of the K inputs (pixel 0)
};

struct LinearPanel {
  int64_t K, N, width;
  const float* w;             // K x width
  const float* bias;          // width
  const float* d;             // the d buffer
  const int64_t* channel;     // offset in d of each of the K channels read (pixel 0)
  float* y;                   // the panel's first output row (N pixels), rows ldy apart
  int64_t ldy;
  const float* r;             // the residual's first row or nullptr, rows ldr apart
  int64_t ldr;
  const float* next;          // the weights of the panel that runs next (L2 prefetch), or null
};

void expand_portable(const ExpandPanel& a) {
  for (int64_t j = 0; j < a.width; ++j) {
    float* e = a.e + (j / 8) * a.e_plane + j % 8;
    for (int64_t n = 0; n < a.N; ++n) {
      float acc = a.bias[j];
      for (int64_t k = 0; k < a.K; ++k) acc += a.w[k * a.width + j] * a.rows[k][n];
      e[a.pixel[n]] = acc;
    }
  }
}

void linear_portable(const LinearPanel& a) {
  for (int64_t j = 0; j < a.width; ++j) {
    for (int64_t n = 0; n < a.N; ++n) {
      float acc = a.bias[j];
      for (int64_t k = 0; k < a.K; ++k) acc += a.w[k * a.width + j] * a.d[a.channel[k] + n * 8];
      a.y[j * a.ldy + n] = a.r ? acc + a.r[j * a.ldr + n] : acc;
    }
  }
}

// Depthwise 3x3 + bias + ReLU6 of one 8-channel block over `rows` output rows: e has the
// (rows - 1) * S + 3 input rows of `e_row` floats (zero columns at both ends), d gets rows x Wout.
// w: 9 taps x 8 channels, bias: 8 channels.
void depthwise_portable(int stride, const float* e, int64_t e_row, int64_t Wout, int64_t rows,
                        const float* w, const float* bias, float* d) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t x = 0; x < Wout; ++x) {
      const float* in = e + r * stride * e_row + x * stride * 8;
      for (int c = 0; c < 8; ++c) {
        float acc = bias[c];
        for (int ky = 0; ky < 3; ++ky) {
          for (int kx = 0; kx < 3; ++kx) {
            acc += w[(ky * 3 + kx) * 8 + c] * in[ky * e_row + kx * 8 + c];
          }
        }
        d[(r * Wout + x) * 8 + c] = std::min(std::max(acc, 0.0f), 6.0f);
      }
    }
  }
}

// What a register block prefetches into L1 while it computes (bits): the panel's weights
// kWeightsAhead floats ahead (the first block of a panel, which reads them from L3: the 1x1 convs
// of 7x7 and 14x14 planes stream more weights than L2 holds), and the rows of the expansion's
// input kRowsAhead floats ahead (long rows: one stream per input channel, more than the hardware
// prefetchers follow). On Zen 4 a batch-1 MobileNetV2 ran 6 % faster with both (2026-12-05).
// With the weights the first block also brings the next panel's into L2, a 64-byte line per k
// (`next`; the depthwise pass does it for the linear conv's first panel): where a call finds its
// weights in memory (a served model, the blocks' 14 MB after other work), one in-process
// alternation (1 thread, weights of 30 blocks in turn) took 160 -> 960 -> 160 on 7 x 7 from
// 404 / 506 to 359 / 478 us and 96 -> 576 -> 96 on 14 x 14 from 657 to 635 us (2026-12-06).
enum Prefetch { kNoPrefetch = 0, kPrefetchWeights = 1, kPrefetchRows = 2 };
constexpr int64_t kWeightsAhead = 1024, kRowsAhead = 64, kLongRow = 256;

// MR pixels from `n0` x NV vectors of 8 filters: acc = bias + sum_k w[k] * b(k, n0 + i), where
// b(k, n) = row(k)[n * kStride].
template <int MR, int NV, int kStride, int kPrefetch, typename Row>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void panel_block(
    int64_t K, const float* w, int64_t width, const float* bias, Row row, int64_t n0,
    __m256 (&acc)[kMostPixels][2], const float* next) {
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_loadu_ps(bias + 8 * j);
  }
  for (int64_t k = 0; k < K; ++k) {
    // (a prefetch past the end of an array is harmless: it never faults)
    if (kPrefetch & kPrefetchWeights) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k * width + kWeightsAhead), _MM_HINT_T0);
      if (next) _mm_prefetch(reinterpret_cast<const char*>(next + k * 16), _MM_HINT_T1);
    }
    if (kPrefetch & kPrefetchRows) {
      _mm_prefetch(reinterpret_cast<const char*>(row(k) + n0 + kRowsAhead), _MM_HINT_T0);
    }
    __m256 wv[NV];
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) wv[j] = _mm256_loadu_ps(w + k * width + 8 * j);
    const float* b = row(k) + n0 * kStride;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m256 bv = _mm256_broadcast_ss(b + i * kStride);
#pragma GCC unroll 2
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(wv[j], bv, acc[i][j]);
    }
  }
}

template <int MR, int NV>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void store_expanded(
    const ExpandPanel& a, int64_t n0, const __m256 (&acc)[kMostPixels][2]) {
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(a.e + j * a.e_plane + a.pixel[n0 + i], acc[i][j]);
  }
}

template <int MR, int NV, int kPrefetch>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void expand_pixels(const ExpandPanel& a,
                                                                         int64_t n0) {
  __m256 acc[kMostPixels][2];
  panel_block<MR, NV, 1, kPrefetch>(a.K, a.w, a.width, a.bias,
                                    [&](int64_t k) { return a.rows[k]; }, n0, acc, a.next);
  store_expanded<MR, NV>(a, n0, acc);
}

// The same sums from the channel-blocked input (the linear conv's way of reading d).
template <int MR, int NV, int kPrefetch>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void expand_blocked_pixels(
    const ExpandPanel& a, int64_t n0) {
  __m256 acc[kMostPixels][2];
  panel_block<MR, NV, 8, kPrefetch & kPrefetchWeights>(
      a.K, a.w, a.width, a.bias, [&](int64_t k) { return a.xb + a.xoff[k]; }, n0, acc, a.next);
  store_expanded<MR, NV>(a, n0, acc);
}

// Pixels [P0, P0 + C) of a block's accumulators (pixel-major, vectors of 8 filters) into the
// filter-major output rows of filters 8 j .. 8 j + 7, with the residual where there is one.
template <int P0, int C, int kRows, int kCols>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void store_pixels(
    const LinearPanel& a, int64_t n0, int j, const __m256 (&acc)[kRows][kCols]) {
  __m256 v[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) v[i] = i < C ? acc[P0 + i][j] : _mm256_setzero_ps();
  transpose8(v);
  // (the panel's fields in locals: GCC would reload them from `a` after each vector store)
  float* const y = a.y + n0 + P0;
  const float* const r = a.r ? a.r + n0 + P0 : nullptr;
  const int64_t ldy = a.ldy, ldr = a.ldr;
#pragma GCC unroll 8
  for (int f = 0; f < 8; ++f) {
    const int64_t filter = 8 * j + f;
    if (r) v[f] = _mm256_add_ps(v[f], load_first<C>(r + filter * ldr));
    store_first<C>(y + filter * ldy, v[f]);
  }
}

template <int MR, int NV, int kPrefetch>
IGC_TARGET_AVX2 __attribute__((always_inline)) inline void linear_pixels(const LinearPanel& a,
                                                                         int64_t n0) {
  __m256 acc[kMostPixels][2];
  panel_block<MR, NV, 8, kPrefetch & kPrefetchWeights>(
      a.K, a.w, a.width, a.bias, [&](int64_t k) { return a.d + a.channel[k]; }, n0, acc, a.next);
  // the output is filter-major: 8 x 8 transpositions
#pragma GCC unroll 2
  for (int j = 0; j < NV; ++j) {
    store_pixels<0, (MR < 8 ? MR : 8)>(a, n0, j, acc);
    if constexpr (MR > 8) store_pixels<8, MR - 8>(a, n0, j, acc);
  }
}

// Every pixel of a panel in blocks of 6 (16 filters) or 12 (8 filters) pixels, and where that
// does not tile N, as many blocks of one pixel less as make it exact (49 = 4 x 6 + 5 x 5), or,
// for short rows, the last block moved back to end at N (it recomputes a few pixels: the same
// values); fewer than 6 pixels in one smaller block. The first block prefetches the weights.
struct Expand {
  template <int MR, int NV, int kPrefetch>
  IGC_TARGET_AVX2 static void at(const ExpandPanel& a, int64_t n0) {
    expand_pixels<MR, NV, kPrefetch>(a, n0);
  }
  static bool long_rows(const ExpandPanel& a) { return a.N >= kLongRow; }
};

struct ExpandBlocked {
  template <int MR, int NV, int kPrefetch>
  IGC_TARGET_AVX2 static void at(const ExpandPanel& a, int64_t n0) {
    expand_blocked_pixels<MR, NV, kPrefetch>(a, n0);
  }
  static bool long_rows(const ExpandPanel&) { return false; }
};

struct Linear {
  template <int MR, int NV, int kPrefetch>
  IGC_TARGET_AVX2 static void at(const LinearPanel& a, int64_t n0) {
    linear_pixels<MR, NV, kPrefetch>(a, n0);
  }
  static bool long_rows(const LinearPanel&) { return false; }  // d is the cache-resident buffer
};

template <typename Op, int NV, int kPrefetch, typename Panel>
IGC_TARGET_AVX2 void all_pixels_with(const Panel& a) {
  constexpr int kBlock = NV == 2 ? kPixels : kMostPixels;
  constexpr int kFirst = kPrefetch | kPrefetchWeights;
  switch (a.N < kPixels ? a.N : 0) {
    case 5: Op::template at<5, NV, kFirst>(a, 0); return;
    case 4: Op::template at<4, NV, kFirst>(a, 0); return;
    case 3: Op::template at<3, NV, kFirst>(a, 0); return;
    case 2: Op::template at<2, NV, kFirst>(a, 0); return;
    case 1: Op::template at<1, NV, kFirst>(a, 0); return;
    default: break;
  }
  if (a.N < kBlock) {  // 6 .. 11 pixels, 8 filters
    Op::template at<kPixels, NV, kFirst>(a, 0);
    Op::template at<kPixels, NV, kPrefetch>(a, a.N - kPixels);
    return;
  }
  const int64_t short_blocks = (kBlock - a.N % kBlock) % kBlock;
  const int64_t full_end = a.N - short_blocks * (kBlock - 1);
  Op::template at<kBlock, NV, kFirst>(a, 0);
  if (full_end >= kBlock) {  // an exact tiling
    int64_t n0 = kBlock;
    for (; n0 < full_end; n0 += kBlock) Op::template at<kBlock, NV, kPrefetch>(a, n0);
    for (; n0 < a.N; n0 += kBlock - 1) Op::template at<kBlock - 1, NV, kPrefetch>(a, n0);
    return;
  }
  int64_t n0 = kBlock;
  for (; n0 + kBlock <= a.N; n0 += kBlock) Op::template at<kBlock, NV, kPrefetch>(a, n0);
  if (n0 < a.N) Op::template at<kBlock, NV, kPrefetch>(a, a.N - kBlock);
}

template <typename Op, int NV, typename Panel>
IGC_TARGET_AVX2 void all_pixels(const Panel& a) {
  if (Op::long_rows(a)) all_pixels_with<Op, NV, kPrefetchRows>(a);
  else all_pixels_with<Op, NV, kNoPrefetch>(a);
}

IGC_TARGET_AVX2 void expand_avx2(const ExpandPanel& a) {
  if (a.xb) {
    if (a.width == 16) all_pixels<ExpandBlocked, 2>(a);
    else all_pixels<ExpandBlocked, 1>(a);
  } else if (a.width == 16) {
    all_pixels<Expand, 2>(a);
  } else {
    all_pixels<Expand, 1>(a);
  }
}

// N pixels from `first` of each of an image's C channel planes (HW values apart) into xb,
// channel-blocked: xb[(c / 8) * 8 N + 8 n + c % 8] = x[c * HW + first + n] (the lanes past C in
// the last block hold copies of channel C - 1, never read).
IGC_TARGET_AVX2 void block_input_avx2(const float* x, int64_t C, int64_t HW, int64_t first,
                                      int64_t N, float* xb) {
  for (int64_t c0 = 0; c0 < C; c0 += 8) {
    const float* src[8];
    for (int64_t l = 0; l < 8; ++l) src[l] = x + std::min(c0 + l, C - 1) * HW + first;
    float* dst = xb + c0 * N;
    int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
      __m256 v[8];
      for (int l = 0; l < 8; ++l) v[l] = _mm256_loadu_ps(src[l] + n);
      transpose8(v);
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(dst + (n + q) * 8, v[q]);
    }
    for (; n < N; ++n) {
      for (int l = 0; l < 8; ++l) dst[n * 8 + l] = src[l][n];
    }
  }
}

IGC_TARGET_AVX2 void linear_avx2(const LinearPanel& a) {
  if (a.width == 16) all_pixels<Linear, 2>(a);
  else all_pixels<Linear, 1>(a);
}

template <int S>
IGC_TARGET_AVX2 void depthwise_s(const float* e, int64_t e_row, int64_t Wout, int64_t rows,
                                 const float* w, const float* bias, float* d) {
  __m256 wv[9];
  for (int t = 0; t < 9; ++t) wv[t] = _mm256_loadu_ps(w + 8 * t);
  const __m256 bv = _mm256_loadu_ps(bias), zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = e + r * S * e_row;
    float* out = d + r * Wout * 8;
    for (int64_t x = 0; x < Wout; ++x) {
      const float* q = in + x * S * 8;
      __m256 a0 = bv, a1 = zero, a2 = zero;  // the three column taps, summed at the end
#pragma GCC unroll 3
      for (int ky = 0; ky < 3; ++ky) {
        const float* row = q + ky * e_row;
        a0 = _mm256_fmadd_ps(wv[ky * 3], _mm256_loadu_ps(row), a0);
        a1 = _mm256_fmadd_ps(wv[ky * 3 + 1], _mm256_loadu_ps(row + 8), a1);
        a2 = _mm256_fmadd_ps(wv[ky * 3 + 2], _mm256_loadu_ps(row + 16), a2);
      }
      const __m256 sum = _mm256_add_ps(_mm256_add_ps(a0, a1), a2);
      _mm256_storeu_ps(out + x * 8, _mm256_min_ps(_mm256_max_ps(sum, zero), six));
    }
  }
}

IGC_TARGET_AVX2 void depthwise_avx2(int stride, const float* e, int64_t e_row, int64_t Wout,
                                    int64_t rows, const float* w, const float* bias, float* d) {
  if (stride == 1) depthwise_s<1>(e, e_row, Wout, rows, w, bias, d);
  else depthwise_s<2>(e, e_row, Wout, rows, w, bias, d);
}

// AVX-512: a register block is MR pixels x the panel's filters, one register per pixel (a zmm
// for a 16-filter panel, an AVX-512VL ymm for an 8-filter one), each k a multiply-add with the
// input pixel broadcast from memory inside the instruction (AVX2 has no broadcast operand: a
// separate load per pixel and k). The same sums in the same order as the AVX2 blocks
// (bit-identical outputs), in about half the instructions: on a core shared with another
// hardware thread they issue in half the slots. Two whole 16-filter panels go together (a call's
// width 32, see panel_block_z): a batch-1 MobileNetV2 on 1 thread took 5.77 -> 5.35 ms back to
// back and 7.31 -> 6.93 ms after 50 ms idle, batch 16 87.4 -> 78.2 ms (Xeon, AVX-512,
// 2026-12-07, the two ways alternating in one process).
constexpr int kZPixels = 12;

// The register of a panel of W filters (16 or 8).
template <int W>
struct Lanes {
  using type = __m512;
};
template <>
struct Lanes<8> {
  using type = __m256;
};

IGC_TARGET_AVX512VL __attribute__((always_inline)) inline void load_lanes(const float* p,
                                                                          __m512& v) {
  v = _mm512_loadu_ps(p);
}

IGC_TARGET_AVX512VL __attribute__((always_inline)) inline void load_lanes(const float* p,
                                                                          __m256& v) {
  v = _mm256_loadu_ps(p);
}

// acc + w * (the value at b, in every lane)
IGC_TARGET_AVX512VL __attribute__((always_inline)) inline __m512 fma_broadcast(__m512 w,
                                                                               const float* b,
                                                                               __m512 acc) {
  return _mm512_fmadd_ps(w, _mm512_set1_ps(*b), acc);
}

IGC_TARGET_AVX512VL __attribute__((always_inline)) inline __m256 fma_broadcast(__m256 w,
                                                                               const float* b,
                                                                               __m256 acc) {
  return _mm256_fmadd_ps(w, _mm256_set1_ps(*b), acc);
}

// 8 lanes of a register: lanes 8 j .. 8 j + 7 of a zmm (GCC 12's _mm512_castps512_ps256 and
// _mm512_extractf64x4_pd warn of an uninitialised operand; a shuffle compiles to the same code),
// a ymm as it is.
IGC_TARGET_AVX512VL __attribute__((always_inline)) inline __m256 eight_lanes(__m512 v, int j) {
  return j == 0 ? __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
                : __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

IGC_TARGET_AVX512VL __attribute__((always_inline)) inline __m256 eight_lanes(__m256 v, int) {
  return v;
}

// P panels side by side (P = 2: two 16-filter panels, packed one after the other, K x 16 floats
// apart): every broadcast input value feeds P multiply-adds, so a block of MR pixels reads its
// inputs (the linear conv's d from L2, 8 channels per pixel apart) once for 32 filters. Each
// output is the same sum in the same order as with one panel.
template <int W, int P, int MR, int kStride, int kPrefetch, typename Row>
IGC_TARGET_AVX512VL __attribute__((always_inline)) inline void panel_block_z(
    int64_t K, const float* w, const float* bias, Row row, int64_t n0,
    typename Lanes<W>::type (&acc)[P][kZPixels], const float* next) {
  typename Lanes<W>::type wv[P];
#pragma GCC unroll 2
  for (int p = 0; p < P; ++p) {
    load_lanes(bias + p * W, wv[p]);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) acc[p][i] = wv[p];
  }
  for (int64_t k = 0; k < K; ++k) {
    if (kPrefetch & kPrefetchWeights) {
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) {
        _mm_prefetch(reinterpret_cast<const char*>(w + p * K * W + k * W + kWeightsAhead),
                     _MM_HINT_T0);
        if (next) _mm_prefetch(reinterpret_cast<const char*>(next + (P * k + p) * 16), _MM_HINT_T1);
      }
    }
    if (kPrefetch & kPrefetchRows) {
      _mm_prefetch(reinterpret_cast<const char*>(row(k) + n0 + kRowsAhead), _MM_HINT_T0);
    }
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) load_lanes(w + p * K * W + k * W, wv[p]);
    const float* b = row(k) + n0 * kStride;
    // (opaque to the optimiser: else GCC keeps each pixel's offset n0 + i in a register of its
    // own, more than there are, instead of one address and constant displacements)
    asm("" : "+r"(b));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) acc[p][i] = fma_broadcast(wv[p], b + i * kStride, acc[p][i]);
    }
  }
}

template <int W, int P>
struct ExpandZ {
  template <int MR, int kPrefetch>
  IGC_TARGET_AVX512VL static void at(const ExpandPanel& a, int64_t n0) {
    typename Lanes<W>::type acc[P][kZPixels];
    if (a.xb) {
      panel_block_z<W, P, MR, 8, kPrefetch & kPrefetchWeights>(
          a.K, a.w, a.bias, [&](int64_t k) { return a.xb + a.xoff[k]; }, n0, acc, a.next);
    } else {
      panel_block_z<W, P, MR, 1, kPrefetch>(
          a.K, a.w, a.bias, [&](int64_t k) { return a.rows[k]; }, n0, acc, a.next);
    }
    // (the panel's fields in locals: a vector store may alias anything, and GCC would reload
    // them from `a` after each one)
    float* const e = a.e;
    const int64_t plane = a.e_plane, *const pixel = a.pixel + n0;
    int64_t at[kZPixels];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) at[i] = pixel[i];
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
        for (int j = 0; j < W / 8; ++j) {
          _mm256_storeu_ps(e + (p * W / 8 + j) * plane + at[i], eight_lanes(acc[p][i], j));
        }
      }
    }
  }
};

template <int W, int P>
struct LinearZ {
  template <int MR, int kPrefetch>
  IGC_TARGET_AVX512VL static void at(const LinearPanel& a, int64_t n0) {
    typename Lanes<W>::type acc[P][kZPixels];
    panel_block_z<W, P, MR, 8, kPrefetch & kPrefetchWeights>(
        a.K, a.w, a.bias, [&](int64_t k) { return a.d + a.channel[k]; }, n0, acc, a.next);
    constexpr int kCols = P * W / 8;
    __m256 eights[kZPixels][kCols];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) {
#pragma GCC unroll 2
        for (int j = 0; j < W / 8; ++j) eights[i][p * W / 8 + j] = eight_lanes(acc[p][i], j);
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < kCols; ++j) {
      store_pixels<0, (MR < 8 ? MR : 8)>(a, n0, j, eights);
      if constexpr (MR > 8) store_pixels<8, MR - 8>(a, n0, j, eights);
    }
  }
};

template <typename Op, int kPrefetch, typename Panel>
IGC_TARGET_AVX512VL void block_z(int mr, const Panel& a, int64_t n0) {
  switch (mr) {
    case 12: Op::template at<12, kPrefetch>(a, n0); return;
    case 11: Op::template at<11, kPrefetch>(a, n0); return;
    case 10: Op::template at<10, kPrefetch>(a, n0); return;
    case 9: Op::template at<9, kPrefetch>(a, n0); return;
    case 8: Op::template at<8, kPrefetch>(a, n0); return;
    case 7: Op::template at<7, kPrefetch>(a, n0); return;
    case 6: Op::template at<6, kPrefetch>(a, n0); return;
    case 5: Op::template at<5, kPrefetch>(a, n0); return;
    case 4: Op::template at<4, kPrefetch>(a, n0); return;
    case 3: Op::template at<3, kPrefetch>(a, n0); return;
    case 2: Op::template at<2, kPrefetch>(a, n0); return;
    default: Op::template at<1, kPrefetch>(a, n0); return;
  }
}

// N pixels in the fewest blocks of at most kZPixels, as even as can be (49 = 4 x 10 + 9); the
// first block prefetches the weights.
template <typename Op, int kPrefetch, typename Panel>
IGC_TARGET_AVX512VL void all_pixels_z(const Panel& a) {
  const int64_t blocks = (a.N + kZPixels - 1) / kZPixels, base = a.N / blocks;
  const int64_t bigger = a.N % blocks;  // blocks of base + 1 pixels, first
  int64_t n0 = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int mr = static_cast<int>(base + (b < bigger));
    if (b == 0) block_z<Op, kPrefetch | kPrefetchWeights>(mr, a, n0);
    else block_z<Op, kPrefetch>(mr, a, n0);
    n0 += mr;
  }
}

// (width 32: two 16-filter panels at once, see panel_block_z)
IGC_TARGET_AVX512VL void expand_avx512(const ExpandPanel& a) {
  const bool long_rows = !a.xb && a.N >= kLongRow;
  if (a.width == 32 && long_rows) all_pixels_z<ExpandZ<16, 2>, kPrefetchRows>(a);
  else if (a.width == 32) all_pixels_z<ExpandZ<16, 2>, kNoPrefetch>(a);
  else if (a.width == 16 && long_rows) all_pixels_z<ExpandZ<16, 1>, kPrefetchRows>(a);
  else if (a.width == 16) all_pixels_z<ExpandZ<16, 1>, kNoPrefetch>(a);
  else if (long_rows) all_pixels_z<ExpandZ<8, 1>, kPrefetchRows>(a);
  else all_pixels_z<ExpandZ<8, 1>, kNoPrefetch>(a);
}

IGC_TARGET_AVX512VL void linear_avx512(const LinearPanel& a) {
  if (a.width == 32) all_pixels_z<LinearZ<16, 2>, kNoPrefetch>(a);
  else if (a.width == 16) all_pixels_z<LinearZ<16, 1>, kNoPrefetch>(a);
  else all_pixels_z<LinearZ<8, 1>, kNoPrefetch>(a);
}

// The 8 floats at p in both halves of a zmm (GCC 12's broadcast intrinsics warn as eight_lanes
// says).
IGC_TARGET_AVX512VL __attribute__((always_inline)) inline __m512 both_halves(const float* p) {
  const __m256 v = _mm256_loadu_ps(p);
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
}

// The depthwise pass at stride 1 with two output pixels per zmm: a row of e or d holds each
// pixel's 8 channels side by side, so pixels x and x + 1 are 16 consecutive floats in both, and
// each tap is one 512-bit load beside the 8 taps' weights repeated in both halves. Every lane
// makes depthwise_s's sum (bias, then the taps in its order, the same three partial sums), in
// half the multiply-adds; an odd last pixel takes depthwise_s's 8 lanes. Stride 2 would need a
// shuffle per tap to gather every other pixel (on the shuffle port that also runs 512-bit
// multiply-adds on Intel cores): it keeps the AVX2 pass.
IGC_TARGET_AVX512VL void depthwise_pairs_z(const float* e, int64_t e_row, int64_t Wout,
                                           int64_t rows, const float* w, const float* bias,
                                           float* d) {
  __m512 wv[9];
  for (int t = 0; t < 9; ++t) wv[t] = both_halves(w + 8 * t);
  const __m512 bv = both_halves(bias), zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6);
  const int64_t pairs = Wout / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = e + r * e_row;
    float* out = d + r * Wout * 8;
    for (int64_t x = 0; x < 2 * pairs; x += 2) {
      const float* q = in + x * 8;
      __m512 a0 = bv, a1 = zero, a2 = zero;
#pragma GCC unroll 3
      for (int ky = 0; ky < 3; ++ky) {
        const float* row = q + ky * e_row;
        a0 = _mm512_fmadd_ps(wv[ky * 3], _mm512_loadu_ps(row), a0);
        a1 = _mm512_fmadd_ps(wv[ky * 3 + 1], _mm512_loadu_ps(row + 8), a1);
        a2 = _mm512_fmadd_ps(wv[ky * 3 + 2], _mm512_loadu_ps(row + 16), a2);
      }
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(a0, a1), a2);
      // (all-lanes masks: GCC 12's _mm512_max_ps and _mm512_min_ps warn as above)
      const __m512 low = _mm512_mask_max_ps(zero, 0xffff, sum, zero);
      _mm512_storeu_ps(out + x * 8, _mm512_mask_min_ps(six, 0xffff, low, six));
    }
  }
  if (Wout % 2) {  // the last pixel of every row
    for (int64_t r = 0; r < rows; ++r) {
      depthwise_s<1>(e + r * e_row + (Wout - 1) * 8, e_row, 1, 1, w, bias,
                     d + (r * Wout + Wout - 1) * 8);
    }
  }
}

IGC_TARGET_AVX512VL void depthwise_avx512(int stride, const float* e, int64_t e_row,
                                          int64_t Wout, int64_t rows, const float* w,
                                          const float* bias, float* d) {
  if (stride == 1) depthwise_pairs_z(e, e_row, Wout, rows, w, bias, d);
  else depthwise_s<2>(e, e_row, Wout, rows, w, bias, d);
}

struct Kernels {
  bool blocked_input;  // expand reads ExpandPanel::xb where it is set
  bool pairs;          // expand and linear take two 16-filter panels at once (width 32)
  void (*expand)(const ExpandPanel&);
  void (*linear)(const LinearPanel&);
  void (*depthwise)(int, const float*, int64_t, int64_t, int64_t, const float*, const float*,
                    float*);
};

Kernels pick_kernels() {
  if (use_avx512_kernels() && __builtin_cpu_supports("avx512vl")) {
    return {true, true, expand_avx512, linear_avx512, depthwise_avx512};
  }
  if (use_avx2_kernels()) return {true, false, expand_avx2, linear_avx2, depthwise_avx2};
  return {false, false, expand_portable, linear_portable, depthwise_portable};
}

// Filters from f0 that one call computes: a 16-filter panel (8 for the last of a multiple of 8),
// or two whole ones where the kernels take pairs.
inline int64_t panel_width(int64_t filters, int64_t f0, bool pairs) {
  return pairs && filters - f0 >= 32 ? 32 : std::min<int64_t>(16, filters - f0);
}

// One image's output rows [row_begin, row_end).
void run_item(const BlockGeometry& g, const Plan& p, const Kernels& kern, int64_t image,
              int64_t row_begin, int64_t row_end, const float* x, const float* w_exp,
              const float* b_exp, const float* w_dw, const float* b_dw, const float* w_lin,
              const float* b_lin, float* y, float* ws) {
  const int64_t H = g.height, W = g.width, S = g.stride, E = g.expanded, blocks = E / 8;
  const int64_t Hout = g.out_height(), Wout = g.out_width();
  const int64_t G = g.groups, in_per_group = g.in_channels / G, k = E / G;
  const int64_t out_per_group = g.out_channels / G;
  float* e = ws;
  float* d = e + blocks * p.e_plane;
  float* dw = d + blocks * p.d_plane;  // per 8-channel block: 9 taps x 8, then 8 biases
  int64_t* pixel = reinterpret_cast<int64_t*>(dw + blocks * 80);
  const float** rows = reinterpret_cast<const float**>(pixel + p.e_rows * W);
  int64_t* channel = reinterpret_cast<int64_t*>(rows + g.in_channels);
  int64_t* xoff = channel + E;                                  // with p.blocked_input
  float* xb = reinterpret_cast<float*>(xoff + g.in_channels);  // (the SIMD kernels)
  const bool blocked = p.blocked_input && kern.blocked_input;
  const float* x_image = x + image * g.in_channels * H * W;
  float* y_image = y + image * g.out_channels * Hout * Wout;
  // Expansion filter (channel of e) that the permutation puts at position `pos`, and back.
  auto plane_at = [&](int64_t pos) { return g.interleave ? reorder_source(pos, E, G) : pos; };
  auto position_of = [&](int64_t f) { return g.interleave ? reorder_source(f, E, k) : f; };
  for (int64_t f = 0; f < E; ++f) {  // channel f of e gets the depthwise filter of its position
    const int64_t pos = position_of(f);
    float* block = dw + (f / 8) * 80;
    for (int t = 0; t < 9; ++t) block[t * 8 + f % 8] = w_dw[pos * 9 + t];
    block[72 + f % 8] = b_dw[pos];
  }
  for (int64_t b = 0; b < blocks; ++b) {  // the padding columns; the expansion writes the rest
    for (int64_t r = 0; r < p.e_rows; ++r) {
      float* row = e + b * p.e_plane + r * p.e_row;
      std::memset(row, 0, sizeof(float) * 8);
      std::memset(row + p.e_row - 8, 0, sizeof(float) * 8);
    }
  }

  // 64-byte lines of the linear conv's first panel, which the depthwise pass prefetches (the
  // expansion's panels prefetch the one after them)
  const int64_t lin_lines = k * panel_width(out_per_group, 0, kern.pairs) / 16;
  int64_t have_first = 0, have_count = 0;  // input rows held in e: [have_first, +have_count)
  for (int64_t o0 = row_begin; o0 < row_end; o0 += p.band_rows) {
    const int64_t rows_out = std::min(p.band_rows, row_end - o0);
    const int64_t first = o0 * S - 1, count = (rows_out - 1) * S + 3;
    int64_t reuse = 0;
    if (have_count > 0 && first >= have_first && first < have_first + have_count) {
      reuse = std::min(have_first + have_count - first, count);
      if (first != have_first) {
        for (int64_t b = 0; b < blocks; ++b) {
          float* plane = e + b * p.e_plane;
          std::memmove(plane, plane + (first - have_first) * p.e_row,
                       sizeof(float) * reuse * p.e_row);
        }
      }
    }
    const int64_t from = first + reuse, to = first + count;
    const int64_t lo = std::clamp<int64_t>(from, 0, H), hi = std::clamp<int64_t>(to, 0, H);
    for (int64_t b = 0; b < blocks; ++b) {  // padding rows (above and below the image) are zeros
      float* plane = e + b * p.e_plane;
      if (from < lo) {
        std::memset(plane + (from - first) * p.e_row, 0, sizeof(float) * (lo - from) * p.e_row);
      }
      const int64_t zero_from = std::max(hi, from);
      if (zero_from < to) {
        std::memset(plane + (zero_from - first) * p.e_row, 0,
                    sizeof(float) * (to - zero_from) * p.e_row);
      }
    }
    if (lo < hi) {
      for (int64_t n = 0, r = lo - first, c = 0; n < (hi - lo) * W; ++n) {
        pixel[n] = r * p.e_row + (c + 1) * 8;
        if (++c == W) c = 0, ++r;
      }
      const int64_t pixels = (hi - lo) * W;
      if (blocked) block_input_avx2(x_image, g.in_channels, H * W, lo * W, pixels, xb);
      for (int64_t grp = 0; grp < G; ++grp) {
        for (int64_t c = 0; c < in_per_group; ++c) {
          const int64_t input = grp * in_per_group + c;
          rows[c] = x_image + (input * H + lo) * W;
          if (blocked) xoff[c] = input / 8 * 8 * pixels + input % 8;
        }
        const float* w = w_exp + grp * k * in_per_group;
        for (int64_t f0 = 0, width; f0 < k; f0 += width) {
          width = panel_width(k, f0, kern.pairs);
          const bool last = grp == G - 1 && f0 + width >= k;
          kern.expand(ExpandPanel{in_per_group, (hi - lo) * W, width, w + f0 * in_per_group,
                                  b_exp + grp * k + f0, rows, e + (grp * k + f0) / 8 * p.e_plane,
                                  p.e_plane, pixel,
                                  last ? w_lin : w + (f0 + width) * in_per_group,
                                  blocked ? xb : nullptr, xoff});
        }
      }
    }
    have_first = first;
    have_count = count;

    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t l = b * lin_lines / blocks, end = (b + 1) * lin_lines / blocks; l < end; ++l) {
        _mm_prefetch(reinterpret_cast<const char*>(w_lin + 16 * l), _MM_HINT_T1);
      }
      kern.depthwise(static_cast<int>(S), e + b * p.e_plane, p.e_row, Wout, rows_out,
                     dw + b * 80, dw + b * 80 + 72, d + b * p.d_plane);
    }

    for (int64_t grp = 0; grp < G; ++grp) {
      for (int64_t c = 0; c < k; ++c) {
        const int64_t source = plane_at(grp * k + c);
        channel[c] = (source / 8) * p.d_plane + source % 8;
      }
      const float* w = w_lin + grp * out_per_group * k;
      for (int64_t f0 = 0, width; f0 < out_per_group; f0 += width) {
        width = panel_width(out_per_group, f0, kern.pairs);
        const int64_t f = grp * out_per_group + f0;
        const bool last = grp == G - 1 && f0 + width >= out_per_group;
        kern.linear(LinearPanel{k, rows_out * Wout, width, w + f0 * k,
                                b_lin + f, d, channel, y_image + (f * Hout + o0) * Wout,
                                Hout * Wout, g.residual ? x_image + (f * H + o0) * W : nullptr,
                                H * W, last ? (o0 + p.band_rows < row_end ? w_exp : nullptr)
                                            : w + (f0 + width) * k});
      }
    }
  }
}

}  // namespace

const char* packed_block_error(const BlockGeometry& g) {
  const char* problem = block_geometry_error(g);
  if (problem[0] != '\0') return problem;
  if ((g.expanded / g.groups) % 8 || (g.out_channels / g.groups) % 8) {
    return "packed weights need multiples of 8 expanded and output channels per group";
  }
  return "";
}

int64_t packed_block_workspace_bytes(const BlockGeometry& g) {
  return make_plan(g).split.workspace_bytes();
}

void packed_block_forward_cpu(const BlockGeometry& g, const float* x, const float* w_exp,
                              const float* b_exp, const float* w_dw, const float* b_dw,
                              const float* w_lin, const float* b_lin, float* y, void* workspace) {
  const Kernels kern = pick_kernels();  // IGC_CONV_BASELINE is read on every call (tests)
  const Plan p = make_plan(g);
  run_block_items(g, p.split, workspace, [&](int64_t image, int64_t begin, int64_t end,
                                             float* ws) {
    run_item(g, p, kern, image, begin, end, x, w_exp, b_exp, w_dw, b_dw, w_lin, b_lin, y, ws);
  });
}

}  // namespace igc
