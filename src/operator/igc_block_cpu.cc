// CPU kernel of IGCBlock (see igc_block.h). Per image and band of output rows:
//   1. the expansion conv over the band's input rows (with its 1- or 2-row halo; rows shared with
//      the previous band are moved, not recomputed) into the buffer `e`, one plane per filter in
//      the expansion's own order;
//   2. the depthwise conv + bias + ReLU6 of each plane into the buffer `d` (the permutation only
//      picks which depthwise filter a plane gets);
//   3. the linear conv over `d` (the permutation picks which planes each group reads) + bias
//      (+ the block input) straight into the output.
// Both 1x1 convs are GEMMs over pixel rows: an 8 x 32 AVX-512 or a 6 x 16 AVX2+FMA register block
// (chosen at run time; portable C++ otherwise). Threads take images, or bands of one image when
// there are fewer images than threads.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "igc_block.h"
#include "common.h"
#include "gemm.h"

namespace igc {
namespace {

// The e + d buffers of one thread stay about this size (well inside a 1 MB L2 cache).
constexpr int64_t kBandBytes = 384 * 1024;
// Below this many multiply-adds in all, a call runs on the calling thread.
constexpr int64_t kMinParallelMacs = int64_t(1) << 20;
// Zeroed floats before and after the expansion buffer: the depthwise kernel reads (and masks
// off) up to 16 floats beyond a plane's rows.
constexpr int64_t kGuard = 32;

inline int64_t align_floats(int64_t n) { return (n + 15) / 16 * 16; }

// Depthwise 3x3 (zero padding 1, stride S) of one plane over `rows` output rows: `e` holds the
// (rows - 1) * S + 3 input rows (width W; the padding rows are zeros), `d` gets rows x Wout.
// The interior columns run without bounds checks (vectorised by the compiler); the edges check.
template <int S>
inline void depthwise_plane(const float* e, int64_t W, int64_t Wout, int64_t rows,
                            const float* w, float bias, float* d) {
  // Output columns whose 3 taps all lie inside the row.
  const int64_t inner_begin = 1, inner_end = std::max<int64_t>(1, (W - 2) / S + 1);
  for (int64_t r = 0; r < rows; ++r) {
    const float* r0 = e + r * S * W;
    const float* r1 = r0 + W;
    const float* r2 = r1 + W;
    float* out = d + r * Wout;
    auto edge = [&](int64_t ox) {
      float acc = bias;
      for (int kx = 0; kx < 3; ++kx) {
        const int64_t ix = ox * S - 1 + kx;
        if (ix < 0 || ix >= W) continue;
        acc += w[kx] * r0[ix] + w[3 + kx] * r1[ix] + w[6 + kx] * r2[ix];
      }
      out[ox] = std::min(std::max(acc, 0.0f), 6.0f);
    };
    edge(0);
    const int64_t end = std::min(inner_end, Wout);
#pragma omp simd
    for (int64_t ox = inner_begin; ox < end; ++ox) {
      const int64_t ix = ox * S - 1;
      const float acc = bias + w[0] * r0[ix] + w[1] * r0[ix + 1] + w[2] * r0[ix + 2] +
                        w[3] * r1[ix] + w[4] * r1[ix + 1] + w[5] * r1[ix + 2] +
                        w[6] * r2[ix] + w[7] * r2[ix + 1] + w[8] * r2[ix + 2];
      out[ox] = std::min(std::max(acc, 0.0f), 6.0f);
    }
    for (int64_t ox = std::max<int64_t>(end, 1); ox < Wout; ++ox) edge(ox);
  }
}

void depthwise_portable(int stride, const float* e, int64_t W, int64_t Wout, int64_t rows,
                        const float* w, float bias, float* d, const float*) {
  if (stride == 1) depthwise_plane<1>(e, W, Wout, rows, w, bias, d);
  else depthwise_plane<2>(e, W, Wout, rows, w, bias, d);
}

IGC_TARGET_AVX2 inline __m256 clamp6(__m256 v) {
  return _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(6.0f));
}

// The even elements of (a, b): a[0], a[2], a[4], a[6], b[0], b[2], b[4], b[6].
IGC_TARGET_AVX2 inline __m256 evens(__m256 a, __m256 b) {
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  return _mm256_permute2f128_ps(_mm256_permutevar8x32_ps(a, order),
                                _mm256_permutevar8x32_ps(b, order), 0x20);
}

// 8 outputs at q: the three column taps summed separately; the left (kx = 0) and right (kx = 2)
// sums are and-ed with the edge masks (all bits zero where the tap lies in the padding), which
// also drops whatever non-finite values the neighbouring memory holds.
IGC_TARGET_AVX2 inline __m256 dw_combine(__m256 left, __m256 middle, __m256 right,
                                         const float* masks_left, const float* masks_right,
                                         bool tail, __m256i mask) {
  left = _mm256_and_ps(left, load8(masks_left, tail, mask));
  right = _mm256_and_ps(right, load8(masks_right, tail, mask));
  return clamp6(_mm256_add_ps(_mm256_add_ps(left, middle), right));
}

// Stride 1: the band's rows x W outputs are one run; output q reads e[q + ky * W + kx - 1].
IGC_TARGET_AVX2 inline void dw_s1_at(const float* e, int64_t W, const __m256* w, __m256 bias,
                                     const float* masks, int64_t count, int64_t q, bool tail,
                                     __m256i mask, float* d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = bias, s2 = _mm256_setzero_ps();
#pragma GCC unroll 3
  for (int ky = 0; ky < 3; ++ky) {
    const float* p = e + q + ky * W - 1;
    s0 = _mm256_fmadd_ps(w[ky * 3], load8(p, tail, mask), s0);
    s1 = _mm256_fmadd_ps(w[ky * 3 + 1], load8(p + 1, tail, mask), s1);
    s2 = _mm256_fmadd_ps(w[ky * 3 + 2], load8(p + 2, tail, mask), s2);
  }
  const __m256 out = dw_combine(s0, s1, s2, masks + q, masks + count + q, tail, mask);
  if (tail) _mm256_maskstore_ps(d + q, mask, out);
  else _mm256_storeu_ps(d + q, out);
}

// Stride 2, outputs [x, x + n) of one row (n <= 8): taps at 2x - 1, 2x, 2x + 1. The three
// column taps are summed at every input column 2x .. 2x + 15 as if the stride were 1 (twice the
// multiply-adds, contiguous loads) and the even columns are kept: three shuffles per sum, where
// splitting each input row into even and odd columns took eight per row.
IGC_TARGET_AVX2 inline void dw_s2_at(const float* e, int64_t W, const __m256* w, __m256 bias,
                                     const float* masks, int64_t Wout, int64_t x, int64_t n,
                                     float* d) {
  const bool tail = n < 8;
  const __m256i all = _mm256_set1_epi32(-1);
  const __m256i m0 = tail ? tail_mask(2 * n) : all, m1 = tail ? tail_mask(2 * n - 8) : all;
  __m256 s[2][3];
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    s[h][0] = _mm256_setzero_ps();
    s[h][1] = bias;
    s[h][2] = _mm256_setzero_ps();
  }
#pragma GCC unroll 3
  for (int ky = 0; ky < 3; ++ky) {
    const float* p = e + ky * W + 2 * x - 1;
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i mask = h ? m1 : m0;
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; ++kx) {
        s[h][kx] = _mm256_fmadd_ps(w[ky * 3 + kx], load8(p + 8 * h + kx, tail, mask), s[h][kx]);
      }
    }
  }
  const __m256i mask = tail ? tail_mask(n) : all;
  const __m256 out = dw_combine(evens(s[0][0], s[1][0]), evens(s[0][1], s[1][1]),
                                evens(s[0][2], s[1][2]), masks + x, masks + Wout + x, tail, mask);
  if (tail) _mm256_maskstore_ps(d + x, mask, out);
  else _mm256_storeu_ps(d + x, out);
}

// `masks`: see edge_masks. Reads up to 16 floats before and after the plane's rows in use.
IGC_TARGET_AVX2 void depthwise_avx2(int stride, const float* e, int64_t W, int64_t Wout,
                                    int64_t rows, const float* w, float bias, float* d,
                                    const float* masks) {
  __m256 wv[9];
  for (int i = 0; i < 9; ++i) wv[i] = _mm256_set1_ps(w[i]);
  const __m256 bv = _mm256_set1_ps(bias);
  const __m256i all = _mm256_set1_epi32(-1);
  if (stride == 1) {
    const int64_t count = rows * W;
    int64_t q = 0;
    for (; q + 8 <= count; q += 8) dw_s1_at(e, W, wv, bv, masks, count, q, false, all, d);
    if (q < count && count >= 8) {  // the last 8 again: the same values, no masked store
      dw_s1_at(e, W, wv, bv, masks, count, count - 8, false, all, d);
    } else if (q < count) {
      dw_s1_at(e, W, wv, bv, masks, count, q, true, tail_mask(count - q), d);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = e + 2 * r * W;
    float* out = d + r * Wout;
    int64_t x = 0;
    for (; x + 8 <= Wout; x += 8) dw_s2_at(row, W, wv, bv, masks, Wout, x, 8, out);
    if (x < Wout && Wout >= 8) {
      dw_s2_at(row, W, wv, bv, masks, Wout, Wout - 8, 8, out);
    } else if (x < Wout) {
      dw_s2_at(row, W, wv, bv, masks, Wout, x, Wout - x, out);
    }
  }
}

// Edge masks of the AVX2 depthwise kernel (float bit patterns, all ones = keep): stride 1, per
// output q of a band of `rows` rows: left[q] = (q % W != 0), right[q] = (q % W != W - 1); stride
// 2, per output column x: left[x] = (x != 0), right[x] = (2x + 1 < W).
void edge_masks(int64_t stride, int64_t W, int64_t Wout, int64_t rows, float* masks) {
  const int64_t count = stride == 1 ? rows * W : Wout;
  int32_t* bits = reinterpret_cast<int32_t*>(masks);
  for (int64_t q = 0; q < count; ++q) {
    const bool left = stride == 1 ? q % W != 0 : q != 0;
    const bool right = stride == 1 ? q % W != W - 1 : 2 * q + 1 < W;
    bits[q] = left ? -1 : 0;
    bits[count + q] = right ? -1 : 0;
  }
}

struct Kernels {
  GemmKernel gemm;
  void (*depthwise)(int, const float*, int64_t, int64_t, int64_t, const float*, float, float*,
                    const float*);
};

Kernels pick_kernels() {
  return {pick_gemm(true), use_avx2_kernels() ? depthwise_avx2 : depthwise_portable};
}

// How a call is cut into work: bands of `band_rows` output rows; each work item is one image's
// output rows [chunk j of `chunks`).
struct Plan {
  int64_t band_rows, e_rows, e_plane, d_plane, masks, table, per_thread_floats;
  BlockSplit split;
};

Plan make_plan(const BlockGeometry& g) {
  Plan p{};
  const int64_t Hout = g.out_height(), Wout = g.out_width();
  const int64_t row_bytes = 4 * g.expanded * (g.stride * g.width + Wout);
  p.band_rows = std::clamp<int64_t>(kBandBytes / std::max<int64_t>(row_bytes, 1), 1, Hout);
  p.e_rows = (p.band_rows - 1) * g.stride + 3;
  p.e_plane = p.e_rows * g.width;
  p.d_plane = p.band_rows * Wout;
  p.table = std::max(g.in_channels, g.expanded) / g.groups;
  p.masks = 2 * p.band_rows * std::max(g.width, Wout);
  // [guard][e][guard][d][masks][pointer table (8 bytes per pointer)]
  p.per_thread_floats = 2 * kGuard + align_floats(g.expanded * p.e_plane) +
                        align_floats(g.expanded * p.d_plane) + align_floats(p.masks) +
                        align_floats(2 * p.table);
  p.split = block_split(g, p.per_thread_floats);
  return p;
}

// One image's output rows [row_begin, row_end).
void run_item(const BlockGeometry& g, const Plan& p, const Kernels& kern, int64_t image,
              int64_t row_begin, int64_t row_end, const float* x, const float* w_exp,
              const float* b_exp, const float* w_dw, const float* b_dw, const float* w_lin,
              const float* b_lin, float* y, float* ws) {
  const int64_t H = g.height, W = g.width, S = g.stride, E = g.expanded;
  const int64_t Hout = g.out_height(), Wout = g.out_width();
  const int64_t G = g.groups, in_per_group = g.in_channels / G, k = E / G;
  const int64_t out_per_group = g.out_channels / G;
  std::memset(ws, 0, sizeof(float) * kGuard);
  float* e = ws + kGuard;
  std::memset(e + align_floats(E * p.e_plane), 0, sizeof(float) * kGuard);
  float* d = e + align_floats(E * p.e_plane) + kGuard;
  float* masks = d + align_floats(E * p.d_plane);
  const float** table = reinterpret_cast<const float**>(masks + align_floats(p.masks));
  int64_t mask_rows = 0;  // band height the masks were made for
  const float* x_image = x + image * g.in_channels * H * W;
  float* y_image = y + image * g.out_channels * Hout * Wout;
  // Expansion filter (the plane of `e`) that the permutation puts at position `pos`.
  auto plane_at = [&](int64_t pos) { return g.interleave ? reorder_source(pos, E, G) : pos; };
  // Position of expansion filter `f` after the permutation (its depthwise filter).
  auto position_of = [&](int64_t f) { return g.interleave ? reorder_source(f, E, k) : f; };

  int64_t have_first = 0, have_count = 0;  // input rows held in e: [have_first, +have_count)
  for (int64_t o0 = row_begin; o0 < row_end; o0 += p.band_rows) {
    const int64_t rows = std::min(p.band_rows, row_end - o0);
    const int64_t first = o0 * S - 1, count = (rows - 1) * S + 3;
    int64_t reuse = 0;
    if (have_count > 0 && first >= have_first && first < have_first + have_count) {
      reuse = std::min(have_first + have_count - first, count);
      if (first != have_first) {
        for (int64_t f = 0; f < E; ++f) {
          float* plane = e + f * p.e_plane;
          std::memmove(plane, plane + (first - have_first) * W, sizeof(float) * reuse * W);
        }
      }
    }
    const int64_t from = first + reuse, to = first + count;
    const int64_t lo = std::clamp<int64_t>(from, 0, H), hi = std::clamp<int64_t>(to, 0, H);
    for (int64_t f = 0; f < E; ++f) {  // padding rows (above and below the image) are zeros
      float* plane = e + f * p.e_plane;
      if (from < lo) std::memset(plane + (from - first) * W, 0, sizeof(float) * (lo - from) * W);
      const int64_t zero_from = std::max(hi, from);
      if (zero_from < to) {
        std::memset(plane + (zero_from - first) * W, 0, sizeof(float) * (to - zero_from) * W);
      }
    }
    if (lo < hi) {
      for (int64_t grp = 0; grp < G; ++grp) {
        for (int64_t c = 0; c < in_per_group; ++c) {
          table[c] = x_image + ((grp * in_per_group + c) * H + lo) * W;
        }
        kern.gemm(Gemm{k, (hi - lo) * W, in_per_group, w_exp + grp * k * in_per_group,
                       in_per_group, table, e + grp * k * p.e_plane + (lo - first) * W,
                       p.e_plane, b_exp + grp * k, nullptr, 0, nullptr});
      }
    }
    have_first = first;
    have_count = count;

    if (rows != mask_rows) {
      edge_masks(S, W, Wout, rows, masks);
      mask_rows = rows;
    }
    for (int64_t f = 0; f < E; ++f) {
      const int64_t pos = position_of(f);
      kern.depthwise(static_cast<int>(S), e + f * p.e_plane, W, Wout, rows, w_dw + pos * 9,
                     b_dw[pos], d + f * p.d_plane, masks);
    }

    for (int64_t grp = 0; grp < G; ++grp) {
      for (int64_t c = 0; c < k; ++c) table[c] = d + plane_at(grp * k + c) * p.d_plane;
      const int64_t first_out = grp * out_per_group;
      kern.gemm(Gemm{out_per_group, rows * Wout, k, w_lin + first_out * k, k, table,
                     y_image + (first_out * Hout + o0) * Wout, Hout * Wout, b_lin + first_out,
                     g.residual ? x_image + (first_out * H + o0) * W : nullptr, H * W, nullptr});
    }
  }
}

}  // namespace

BlockSplit block_split(const BlockGeometry& g, int64_t per_thread_floats) {
  const int64_t Hout = g.out_height(), Wout = g.out_width();
  const int64_t macs = g.batch * (g.height * g.width * g.expanded * (g.in_channels / g.groups) +
                                  Hout * Wout * g.expanded * (9 + g.out_channels / g.groups));
  const int64_t max_threads = macs < kMinParallelMacs ? 1 : std::max(1, omp_get_max_threads());
  BlockSplit s{};
  s.chunks = g.batch >= max_threads ? 1
             : std::min<int64_t>(Hout, (max_threads + g.batch - 1) / g.batch);
  s.items = g.batch * s.chunks;
  s.threads = static_cast<int>(std::min<int64_t>(max_threads, s.items));
  s.per_thread_floats = per_thread_floats;
  return s;
}

void run_block_items(const BlockGeometry& g, const BlockSplit& split, void* workspace,
                     const std::function<void(int64_t, int64_t, int64_t, float*)>& item) {
  const int64_t Hout = g.out_height(), chunks = split.chunks;
  float* ws = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(workspace) + 63) / 64 * 64);
#pragma omp parallel for schedule(static) num_threads(split.threads)
  for (int64_t i = 0; i < split.items; ++i) {
    const int64_t image = i / chunks, chunk = i % chunks;
    const int64_t begin = chunk * Hout / chunks, end = (chunk + 1) * Hout / chunks;
    if (begin == end) continue;
    item(image, begin, end, ws + omp_get_thread_num() * split.per_thread_floats);
  }
}

const char* block_geometry_error(const BlockGeometry& g) {
  if (g.batch < 1 || g.in_channels < 1 || g.height < 1 || g.width < 1 || g.expanded < 1 ||
      g.out_channels < 1) {
    return "every size must be >= 1";
  }
  if (g.groups < 1 || g.in_channels % g.groups || g.expanded % g.groups ||
      g.out_channels % g.groups) {
    return "groups must divide the input, expanded and output channels";
  }
  if (g.stride != 1 && g.stride != 2) return "stride must be 1 or 2";
  if (g.residual && (g.stride != 1 || g.in_channels != g.out_channels)) {
    return "residual needs stride 1 and as many output channels as input channels";
  }
  return "";
}

int64_t block_workspace_bytes(const BlockGeometry& g) {
  return make_plan(g).split.workspace_bytes();
}

void block_forward_cpu(const BlockGeometry& g, const float* x, const float* w_exp,
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
