// CPU GEMM kernels (see gemm.h).
#include "gemm.h"

#include <algorithm>
#include <cstring>

namespace igc {
namespace {

constexpr int kRows = static_cast<int>(kGemmPanelRows), kCols = 16;  // register block of the GEMM
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

// Rows of B per pass (a multiple of 8): a 16-column slice of that many rows (8 KB) stays in the L1
// cache while every block of weight rows runs over it.
constexpr int64_t kDepth = 128;
// Where B is read from: its rows of 1024 or 4096 values lie a multiple of 4 KB apart, so that a
// 16-column slice of them competes for the same L1 sets, and each slice touches one line of as
// many pages as B has rows (a 24 x 144 x 1024 product read in place ran at 59 GFLOP/s from
// cache, 72 with rows padded off the 4 KB multiple):
// - More rows of A than kCopyBRows and K <= kDepth (an expansion's short sums): B packed in
//   chunks of columns (kPackedFloats values), and each block of weight rows runs over a whole
//   chunk before the next block: the blocks' outputs then go out as a few rows written
//   sequentially, where column-outer order wrote one line into each of M rows per slice (MXNet,
//   1 thread: 16 x 16 x 112 x 112 -> 96 forward 12.2-12.9 -> 8.8 ms, 16 x 24 x 56 x 56 -> 144
//   5.1-5.2 -> 4.6-4.7 ms; the 32 x 32 planes' expansions no faster).
// - More rows than kCopyBRows and longer sums: each pass copies its 16-column slice first (the
//   AVX-512 blocks two slices, for their 32-column blocks).
// - Up to kCopyBRows rows on rows of kWideMinColumns values and more (the 56 x 56 and 112 x 112
//   planes): too few blocks share a 16-column slice to pay for its copy alone, so a pass copies
//   kWideCols columns at a time (runs of 512 bytes per row) and prefetches the next block's as
//   it copies: 16 x 144 x 56 x 56 -> 24 forward 7.2-7.4 -> 6.1-6.5 ms, 16 x 32 x 112 x 112 ->
//   16 5.5 -> 4.7-4.9 ms (MXNet, 1 thread).
// - Up to kCopyBRows rows on shorter rows: B is read in place (copies lost there: the 32 x 32
//   plane 144 -> 24 conv 7.7-7.8 -> 8.2-8.9 ms with the copies above, 7.6 -> 13 ms with a copy of
//   each 16-column slice made by its first block of rows), except on rows
//   of kAliasedWideColumns values and more that come from memory (Gemm::b_in_memory) and whose
//   first two lie a multiple of 4 KB apart: the data gradient of a 32 x 32 plane's expansion
//   reads the output gradient in place. They take the copies above as well: backward of 64 x 24
//   x 32 x 32 -> 144 31.4 -> 26.0 ms, 16 -> 96 16.2 -> 14.4 ms (MXNet, 1 thread, Intel Xeon, the
//   two alternating); with the AVX2 blocks (the Xeon family 6 model 167 under
//   DNNL_MAX_CPU_ISA=AVX2) 34.4 -> 27.4 and 17.9 -> 15.4 ms, where an earlier build gained
//   nothing. The 144 -> 24 and 96 -> 24 forwards (their rows, as transformed into a buffer, also
//   4 KB apart, but just written) lost 2-8 %.
constexpr int64_t kCopyBRows = 32;
constexpr int64_t kWideCols = 128, kWideMinColumns = 2048, kAliasedWideColumns = 1024;
constexpr int64_t kPageFloats = 4096 / sizeof(float);
constexpr int64_t kPackedFloats = 32768;  // 128 KB: the chunk stays in the L2 cache

// Where a register block reads A and B. A: rows in place (a + i * lda + k) or a panel of
// pack_gemm_panels (a + k * kRows + i). B: rows by pointer (b[k] + n0) or the pass's copy
// (copy + (k - k0) * kCols).
struct Operands {
  const float* a;  // the block's first row, or its panel
  const float* copy;
};

// c[m0 .. m0 + MR)[n0 .. n0 + 16) over the B rows [k0, k1): starting from the bias when kFirst,
// else from what c holds (the passes before); + r when kLast. kTail: only the columns the masks
// keep exist.
template <int MR, bool kFirst, bool kLast, bool kTail, bool kPanel, bool kCopy>
IGC_TARGET_AVX2 inline void block_avx2(const Gemm& g, Operands o, int64_t k0, int64_t k1,
                                       int64_t m0, int64_t n0, __m256i mask0, __m256i mask1) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    const float* c = g.c + (m0 + i) * g.ldc + n0;
    acc0[i] = kFirst ? _mm256_set1_ps(g.bias[m0 + i]) : load8(c, kTail, mask0);
    acc1[i] = kFirst ? acc0[i] : load8(c + 8, kTail, mask1);
  }
  const float* a = kPanel ? o.a + k0 * kRows : o.a + k0;
  const float* copy = o.copy;
  for (int64_t k = k0; k < k1; ++k) {
    const float* b = kCopy ? copy : g.b[k] + n0;
    const __m256 b0 = load8(b, kTail, mask0), b1 = load8(b + 8, kTail, mask1);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 w = _mm256_broadcast_ss(kPanel ? a + i : a + i * g.lda);
      acc0[i] = _mm256_fmadd_ps(w, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(w, b1, acc1[i]);
    }
    a += kPanel ? kRows : 1;
    if (kCopy) copy += kCols;
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* c = g.c + (m0 + i) * g.ldc + n0;
    if (kLast && g.r) {
      const float* r = g.r + (m0 + i) * g.ldr + n0;
      acc0[i] = _mm256_add_ps(acc0[i], load8(r, kTail, mask0));
      acc1[i] = _mm256_add_ps(acc1[i], load8(r + 8, kTail, mask1));
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

IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 load16(const float* p, bool tail,
                                                                     __mmask16 mask) {
  return tail ? _mm512_maskz_loadu_ps(mask, p) : _mm512_loadu_ps(p);
}

// The same register block in AVX-512 (gemm_avx512_rows): a row's 16 columns in one register,
// each k one multiply-add with the row's weight broadcast from memory inside the instruction.
// The same sums in the same order as block_avx2 (the outputs are bit for bit the same) in about a
// third of the instructions (7 per k against 20), which a core shared with another hardware
// thread runs nearly as fast as alone (docs/performance.md). Up to two blocks of kRows rows at
// once (MR up to 12; rows from kRows on from the next panel, or kRows rows of A further): 12
// chains of sums where a core with two 512-bit multiply-add units needs 8 to hide their
// latency, and each B vector serves twice the rows. Not inlined into the AVX2 callers.
//
// NB = 2: two 16-column blocks side by side (columns n0 .. n0 + 32, whole ones), each weight
// broadcast feeding both: 2 MR chains of sums, and per k two loads of B and MR broadcasts for
// 2 MR multiply-adds where one block makes MR for MR + 1 loads. The second block's B is 16
// values on in a row, or `copy_step` floats on in a copy. Each sum as with one block. The
// mobilenetv2_cifar training step (batch 64, Xeon, 2026-12-07, the two ways alternating in one
// process) 569.6 -> 556.2 ms on 1 thread (faster in 12 of 12), 307.9 -> 299.3 on 2 (12 of 12);
// igcv3_cifar 941.4 -> 915.3 ms on 1 (8 of 8).
template <int MR, bool kFirst, bool kLast, bool kTail, bool kPanel, bool kCopy, int NB = 1>
IGC_TARGET_AVX512 __attribute__((noinline)) void block_z(const Gemm& g, Operands o, int64_t k0,
                                                         int64_t k1, int64_t m0, int64_t n0,
                                                         __m256i mask0, __m256i mask1,
                                                         int64_t copy_step = 0) {
  static_assert(NB == 1 || !kTail, "two blocks side by side are whole");
  const __mmask16 mask = kTail ? static_cast<__mmask16>(
                                     _mm256_movemask_ps(_mm256_castsi256_ps(mask0)) |
                                     (_mm256_movemask_ps(_mm256_castsi256_ps(mask1)) << 8))
                               : static_cast<__mmask16>(0xFFFF);
  __m512 acc[NB][MR];
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      acc[j][i] = kFirst ? _mm512_set1_ps(g.bias[m0 + i])
                         : load16(g.c + (m0 + i) * g.ldc + n0 + j * kCols, kTail, mask);
    }
  }
  const float* a = kPanel ? o.a + k0 * kRows : o.a + k0;
  const int64_t second = kPanel ? kRows * g.K : kRows * g.lda;  // rows kRows.. of the block
  const float* copy = o.copy;
  for (int64_t k = k0; k < k1; ++k) {
    const float* bp = kCopy ? copy : g.b[k] + n0;
    __m512 b[NB];
#pragma GCC unroll 2
    for (int j = 0; j < NB; ++j) b[j] = load16(bp + j * (kCopy ? copy_step : kCols), kTail, mask);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const float* w = i < kRows ? a : a + second;
      const int r = i < kRows ? i : i - kRows;
      const __m512 wv = _mm512_set1_ps(kPanel ? w[r] : w[r * g.lda]);
#pragma GCC unroll 2
      for (int j = 0; j < NB; ++j) acc[j][i] = _mm512_fmadd_ps(wv, b[j], acc[j][i]);
    }
    a += kPanel ? kRows : 1;
    if (kCopy) copy += kCols;
  }
#pragma GCC unroll 2
  for (int j = 0; j < NB; ++j) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      float* c = g.c + (m0 + i) * g.ldc + n0 + j * kCols;
      if (kLast && g.r) {
        acc[j][i] = _mm512_add_ps(
            acc[j][i], load16(g.r + (m0 + i) * g.ldr + n0 + j * kCols, kTail, mask));
      }
      if (kTail) _mm512_mask_storeu_ps(c, mask, acc[j][i]);
      else _mm512_storeu_ps(c, acc[j][i]);
    }
  }
}

// block_avx2, or block_z where kWide (NB 16-column blocks side by side: 2 only there).
template <bool kWide, int MR, bool kFirst, bool kLast, bool kTail, bool kPanel, bool kCopy,
          int NB = 1>
IGC_TARGET_AVX2 inline void block(const Gemm& g, Operands o, int64_t k0, int64_t k1, int64_t m0,
                                  int64_t n0, __m256i mask0, __m256i mask1, int64_t copy_step = 0) {
  if constexpr (kWide) {
    block_z<MR, kFirst, kLast, kTail, kPanel, kCopy, NB>(g, o, k0, k1, m0, n0, mask0, mask1,
                                                         copy_step);
  } else {
    static_assert(NB == 1, "the AVX2 block is one 16-column block");
    block_avx2<MR, kFirst, kLast, kTail, kPanel, kCopy>(g, o, k0, k1, m0, n0, mask0, mask1);
  }
}

// Every block of weight rows over the columns [n0, n0 + 16 NB) and the B rows [k0, k1) (NB = 2:
// AVX-512's pairs of blocks, their B in a copy `copy_step` floats apart).
template <bool kWide, bool kFirst, bool kLast, bool kTail, bool kPanel, bool kCopy, int NB = 1>
IGC_TARGET_AVX2 void column_avx2(const Gemm& g, const float* copy, int64_t k0, int64_t k1,
                                 int64_t n0, __m256i mask0, __m256i mask1,
                                 int64_t copy_step = 0) {
  // The block of rows [m0, m0 + kRows): its panel, or its first row.
  const auto at = [&](int64_t m0) {
    return Operands{kPanel ? g.panels + m0 * g.K : g.a + m0 * g.lda, copy};
  };
  int64_t m0 = 0;
  if constexpr (kWide) {
    for (; m0 + 2 * kRows <= g.M; m0 += 2 * kRows) {
      block<kWide, 2 * kRows, kFirst, kLast, kTail, kPanel, kCopy, NB>(g, at(m0), k0, k1, m0, n0,
                                                                       mask0, mask1, copy_step);
    }
  }
  for (; m0 + kRows <= g.M; m0 += kRows) {
    block<kWide, kRows, kFirst, kLast, kTail, kPanel, kCopy, NB>(g, at(m0), k0, k1, m0, n0, mask0,
                                                                 mask1, copy_step);
  }
#define IGC_GEMM_REST(MR)                                                                      \
  case MR:                                                                                     \
    block<kWide, MR, kFirst, kLast, kTail, kPanel, kCopy, NB>(g, at(m0), k0, k1, m0, n0,       \
                                                              mask0, mask1, copy_step);        \
    break;
  switch (g.M - m0) {
    IGC_GEMM_REST(5)
    IGC_GEMM_REST(4)
    IGC_GEMM_REST(3)
    IGC_GEMM_REST(2)
    IGC_GEMM_REST(1)
    default: break;
  }
#undef IGC_GEMM_REST
}

// Copies the 16-column slices [n0, n1) of the B rows [k0, k1) to `copy`, slice after slice
// (the slice at n in copy + (n - n0) * (k1 - k0), row k of it (k - k0) * 16 values in).
IGC_TARGET_AVX2 inline void copy_slices(const Gemm& g, int64_t k0, int64_t k1, int64_t n0,
                                        int64_t n1, float* copy) {
  const int64_t depth = k1 - k0;
  for (int64_t k = k0; k < k1; ++k) {
    const float* b = g.b[k] + n0;
    float* dst = copy + (k - k0) * kCols;
    for (int64_t n = 0; n < n1 - n0; n += kCols) {
      _mm256_store_ps(dst + n * depth, _mm256_loadu_ps(b + n));
      _mm256_store_ps(dst + n * depth + 8, _mm256_loadu_ps(b + n + 8));
    }
  }
}

// Up to kCopyBRows rows of A on long rows of B: the whole 16-column blocks in copies of kWideCols
// columns, the next block's prefetched as each is copied (see kCopyBRows).
template <bool kWide, bool kFirst, bool kLast, bool kPanel>
IGC_TARGET_AVX2 void wide_pass_avx2(const Gemm& g, int64_t k0, int64_t k1, int64_t whole) {
  const __m256i all = _mm256_set1_epi32(-1);
  const int64_t depth = k1 - k0;
  alignas(32) float copy[kDepth * kWideCols];
  for (int64_t w0 = 0; w0 < whole; w0 += kWideCols) {
    const int64_t w1 = std::min(whole, w0 + kWideCols);
    copy_slices(g, k0, k1, w0, w1, copy);
    const int64_t next = std::min(whole - w1, kWideCols);  // the next block's columns
    for (int64_t k = k0; k < k1 && next > 0; ++k) {
      for (int64_t n = 0; n < next; n += kCols) {
        _mm_prefetch(reinterpret_cast<const char*>(g.b[k] + w1 + n), _MM_HINT_T0);
      }
    }
    int64_t n0 = w0;
    if constexpr (kWide) {
      for (; n0 + 2 * kCols <= w1; n0 += 2 * kCols) {
        column_avx2<kWide, kFirst, kLast, false, kPanel, true, 2>(
            g, copy + (n0 - w0) * depth, k0, k1, n0, all, all, kCols * depth);
      }
    }
    for (; n0 < w1; n0 += kCols) {
      column_avx2<kWide, kFirst, kLast, false, kPanel, true>(g, copy + (n0 - w0) * depth, k0, k1,
                                                             n0, all, all);
    }
  }
}

// Whether B's first two rows lie a multiple of 4 KB apart (see kCopyBRows).
inline bool page_aliased_rows(const Gemm& g) {
  return g.K > 1 && (g.b[1] - g.b[0]) % kPageFloats == 0;
}

// One pass over whole 16-column blocks over the B rows [k0, k1), B read as kCopyBRows says.
template <bool kWide, bool kFirst, bool kLast, bool kPanel>
IGC_TARGET_AVX2 void pass_avx2(const Gemm& g, int64_t k0, int64_t k1, int64_t whole) {
  const __m256i all = _mm256_set1_epi32(-1);
  const bool aliased = g.b_in_memory && g.N >= kAliasedWideColumns && page_aliased_rows(g);
  if (g.M <= kCopyBRows && (g.N >= kWideMinColumns || aliased)) {
    return wide_pass_avx2<kWide, kFirst, kLast, kPanel>(g, k0, k1, whole);
  }
  if (g.M <= kCopyBRows) {
    int64_t n0 = 0;
    if constexpr (kWide) {
      for (; n0 + 2 * kCols <= whole; n0 += 2 * kCols) {
        column_avx2<kWide, kFirst, kLast, false, kPanel, false, 2>(g, nullptr, k0, k1, n0, all,
                                                                   all);
      }
    }
    for (; n0 < whole; n0 += kCols) {
      column_avx2<kWide, kFirst, kLast, false, kPanel, false>(g, nullptr, k0, k1, n0, all, all);
    }
    return;
  }
  alignas(32) float copy[kDepth * kCols * 2];
  int64_t n0 = 0;
  if constexpr (kWide) {
    for (; n0 + 2 * kCols <= whole; n0 += 2 * kCols) {
      copy_slices(g, k0, k1, n0, n0 + 2 * kCols, copy);
      column_avx2<kWide, kFirst, kLast, false, kPanel, true, 2>(g, copy, k0, k1, n0, all, all,
                                                                kCols * (k1 - k0));
    }
  }
  for (; n0 < whole; n0 += kCols) {
    copy_slices(g, k0, k1, n0, n0 + kCols, copy);
    column_avx2<kWide, kFirst, kLast, false, kPanel, true>(g, copy, k0, k1, n0, all, all);
  }
}

template <bool kWide, bool kPanel>
IGC_TARGET_AVX2 void passes_avx2(const Gemm& g, int64_t k0, int64_t k1, int64_t whole) {
  const bool first = k0 == 0, last = k1 == g.K;
  if (first && last) pass_avx2<kWide, true, true, kPanel>(g, k0, k1, whole);
  else if (first) pass_avx2<kWide, true, false, kPanel>(g, k0, k1, whole);
  else if (last) pass_avx2<kWide, false, true, kPanel>(g, k0, k1, whole);
  else pass_avx2<kWide, false, false, kPanel>(g, k0, k1, whole);
}

// The register blocks of MR weight rows from m0 over the 16-column blocks [n0, n1), all of B's
// rows in one pass, from the packed chunk `packed` (see rows_outer_avx2).
template <bool kWide, int MR, bool kPanel>
IGC_TARGET_AVX2 void row_block_avx2(const Gemm& g, int64_t m0, int64_t n0, int64_t n1,
                                    const float* packed) {
  const __m256i all = _mm256_set1_epi32(-1);
  const float* a = kPanel ? g.panels + m0 * g.K : g.a + m0 * g.lda;
  int64_t n = n0;
  if constexpr (kWide) {
    for (; n + 2 * kCols <= n1; n += 2 * kCols) {
      block<kWide, MR, true, true, false, kPanel, true, 2>(
          g, Operands{a, packed + (n - n0) * g.K}, 0, g.K, m0, n, all, all, kCols * g.K);
    }
  }
  for (; n < n1; n += kCols) {
    block<kWide, MR, true, true, false, kPanel, true>(g, Operands{a, packed + (n - n0) * g.K}, 0,
                                                      g.K, m0, n, all, all);
  }
}

// Whole 16-column blocks with K <= kDepth and more than kCopyBRows rows of A: B packed in chunks
// of columns, weight rows outer within a chunk (see kCopyBRows).
template <bool kWide, bool kPanel>
IGC_TARGET_AVX2 void rows_outer_avx2(const Gemm& g, int64_t whole) {
  alignas(32) float packed[kPackedFloats];
  const int64_t most = std::max<int64_t>(kCols, kPackedFloats / g.K / kCols * kCols);
  const int64_t chunks = (whole + most - 1) / most;
  const int64_t width = (whole / kCols + chunks - 1) / chunks * kCols;  // even chunks
  for (int64_t n0 = 0; n0 < whole; n0 += width) {
    const int64_t n1 = std::min(whole, n0 + width);
    copy_slices(g, 0, g.K, n0, n1, packed);
    int64_t m0 = 0;
    if constexpr (kWide) {
      for (; m0 + 2 * kRows <= g.M; m0 += 2 * kRows) {
        row_block_avx2<kWide, 2 * kRows, kPanel>(g, m0, n0, n1, packed);
      }
    }
    for (; m0 + kRows <= g.M; m0 += kRows) {
      row_block_avx2<kWide, kRows, kPanel>(g, m0, n0, n1, packed);
    }
    switch (g.M - m0) {
      case 5: row_block_avx2<kWide, 5, kPanel>(g, m0, n0, n1, packed); break;
      case 4: row_block_avx2<kWide, 4, kPanel>(g, m0, n0, n1, packed); break;
      case 3: row_block_avx2<kWide, 3, kPanel>(g, m0, n0, n1, packed); break;
      case 2: row_block_avx2<kWide, 2, kPanel>(g, m0, n0, n1, packed); break;
      case 1: row_block_avx2<kWide, 1, kPanel>(g, m0, n0, n1, packed); break;
      default: break;
    }
  }
}

// The last T < 5 columns from n0 for P panels of A from row m0 (see tail_avx2): per k, one vector
// of each panel's 6 weights times a broadcast of each column's B value; P x T chains of sums.
template <int P, int T>
IGC_TARGET_AVX2 void tail_panels_avx2(const Gemm& g, int64_t m0, int64_t n0) {
  __m256 acc[P][T];
#pragma GCC unroll 12
  for (int p = 0; p < P; ++p) {
    const int64_t first = m0 + p * kRows, rows = std::min<int64_t>(kRows, g.M - first);
    const __m256 bias = _mm256_maskload_ps(g.bias + first, tail_mask(rows));
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) acc[p][t] = bias;
  }
  const float* a = g.panels + m0 * g.K;
  const __m256i six = tail_mask(kRows);
  for (int64_t k = 0; k < g.K; ++k) {
    __m256 b[T];
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) b[t] = _mm256_broadcast_ss(g.b[k] + n0 + t);
    // The 8-lane loads take 2 weights of the next k too, into lanes no store reads; the last k
    // masks them off (nothing is read past the panels).
    const bool last = k + 1 == g.K;
#pragma GCC unroll 12
    for (int p = 0; p < P; ++p) {
      const float* w = a + p * kRows * g.K + k * kRows;
      const __m256 wv = last ? _mm256_maskload_ps(w, six) : _mm256_loadu_ps(w);
#pragma GCC unroll 4
      for (int t = 0; t < T; ++t) acc[p][t] = _mm256_fmadd_ps(wv, b[t], acc[p][t]);
    }
  }
#pragma GCC unroll 12
  for (int p = 0; p < P; ++p) {
    const int64_t first = m0 + p * kRows, rows = std::min<int64_t>(kRows, g.M - first);
#pragma GCC unroll 4
    for (int t = 0; t < T; ++t) {
      alignas(32) float v[8];
      _mm256_store_ps(v, acc[p][t]);
      for (int64_t i = 0; i < rows; ++i) g.c[(first + i) * g.ldc + n0 + t] = v[i];
    }
  }
}

// The last T columns from n0 (N past a multiple of 16, T < 5), A in panels, no residual (the
// forward and data gradient of a pointwise IGCConv): where a 16-column block would recompute up
// to 15 whole columns again (a 7x7 plane: 64 columns for 49), vectors run along the weight rows
// instead, 12 / T panels at a time: T multiply-adds per panel and k where the block takes 12.
// Each sum in the block's order (bias, then k = 0, 1, ..).
template <int T>
IGC_TARGET_AVX2 void tail_avx2(const Gemm& g, int64_t n0) {
  constexpr int P = 12 / T;
  const int64_t panels = (g.M + kRows - 1) / kRows;
  int64_t q = 0;
  for (; q + P <= panels; q += P) tail_panels_avx2<P, T>(g, q * kRows, n0);
  switch (panels - q) {
#define IGC_TAIL_REST(R) \
  case R:                \
    if constexpr (R < P) tail_panels_avx2<R, T>(g, q * kRows, n0); \
    break;
    IGC_TAIL_REST(11) IGC_TAIL_REST(10) IGC_TAIL_REST(9) IGC_TAIL_REST(8) IGC_TAIL_REST(7)
    IGC_TAIL_REST(6) IGC_TAIL_REST(5) IGC_TAIL_REST(4) IGC_TAIL_REST(3) IGC_TAIL_REST(2)
    IGC_TAIL_REST(1)
#undef IGC_TAIL_REST
    default: break;
  }
}

// The whole 16-column blocks go in passes of about kDepth rows of B (each pass but the first adds
// to what the one before stored: the same order of summation as one pass), columns outer and
// weight rows inner, or weight rows outer within chunks of columns where K fits one pass (see
// kCopyBRows); a last partial block is one pass over all of B: up to 4 columns along the weight
// rows (tail_avx2, with panels), else the last 16 columns again (the same values, and masked
// stores are slow on some CPUs), or masked when N < 16. Panels and copies of B change where
// values are read, not the order of the sums.
template <bool kWide>
IGC_TARGET_AVX2 void gemm_blocked(const Gemm& g) {
  const __m256i all = _mm256_set1_epi32(-1);
  const int64_t whole = g.N / kCols * kCols;
  if (g.M > kCopyBRows && g.K <= kDepth) {
    if (whole > 0 && g.panels) rows_outer_avx2<kWide, true>(g, whole);
    else if (whole > 0) rows_outer_avx2<kWide, false>(g, whole);
  } else {
    const int64_t passes = std::max<int64_t>(1, (g.K + kDepth - 1) / kDepth);
    const int64_t depth = (g.K + passes - 1) / passes;
    for (int64_t k0 = 0; k0 < g.K; k0 += depth) {
      const int64_t k1 = std::min(g.K, k0 + depth);
      if (g.panels) passes_avx2<kWide, true>(g, k0, k1, whole);
      else passes_avx2<kWide, false>(g, k0, k1, whole);
    }
  }
  if (whole == g.N) return;
  if (whole > 0 && g.panels && !g.r && g.N - whole < 5) {
    switch (g.N - whole) {
      case 1: return tail_avx2<1>(g, whole);
      case 2: return tail_avx2<2>(g, whole);
      case 3: return tail_avx2<3>(g, whole);
      default: return tail_avx2<4>(g, whole);
    }
  }
  if (whole > 0) {
    if (g.panels) {
      column_avx2<kWide, true, true, false, true, false>(g, nullptr, 0, g.K, g.N - kCols, all,
                                                        all);
    } else {
      column_avx2<kWide, true, true, false, false, false>(g, nullptr, 0, g.K, g.N - kCols, all,
                                                         all);
    }
  } else {
    const __m256i mask0 = tail_mask(g.N), mask1 = tail_mask(g.N - 8);
    if (g.panels) {
      column_avx2<kWide, true, true, true, true, false>(g, nullptr, 0, g.K, 0, mask0, mask1);
    } else {
      column_avx2<kWide, true, true, true, false, false>(g, nullptr, 0, g.K, 0, mask0, mask1);
    }
  }
}

IGC_TARGET_AVX2 void gemm_avx2(const Gemm& g) { gemm_blocked<false>(g); }
IGC_TARGET_AVX2 void gemm_avx512_rows(const Gemm& g) { gemm_blocked<true>(g); }

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

void row_dots_portable(const RowDots& d) {
  for (int64_t m = 0; m < d.M; ++m) {
    for (int64_t n = 0; n < d.N; ++n) {
      float sum = 0;
      for (int64_t s = 0; s < d.S; ++s) {
        const float* a = d.a + m * d.lda + s * d.a_seg;
        const float* b = d.b + n * d.ldb + s * d.b_seg;
        for (int64_t k = 0; k < d.L; ++k) sum += a[k] * b[k];
      }
      d.c[m * d.ldc + n] += sum;
    }
  }
}

// Rows [m0, m0 + MR) of a against rows [n0, n0 + NR) of b: MR x NR vectors of partial sums (12 of
// the 16 registers at 4 x 3), each row vector loaded once per 8 values.
template <int MR, int NR>
IGC_TARGET_AVX2 void dots_block_avx2(const RowDots& d, int64_t m0, int64_t n0) {
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  }
  const int64_t whole = d.L / 8 * 8;
  const __m256i mask = tail_mask(d.L - whole);
  for (int64_t s = 0; s < d.S; ++s) {
    const float* a = d.a + m0 * d.lda + s * d.a_seg;
    const float* b = d.b + n0 * d.ldb + s * d.b_seg;
    for (int64_t k = 0; k < whole; k += 8) {
      __m256 bv[NR];
#pragma GCC unroll 3
      for (int j = 0; j < NR; ++j) bv[j] = _mm256_loadu_ps(b + j * d.ldb + k);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m256 av = _mm256_loadu_ps(a + i * d.lda + k);
#pragma GCC unroll 3
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
      }
    }
    if (whole < d.L) {  // masked loads read nothing past the rows and give zeros
      __m256 bv[NR];
#pragma GCC unroll 3
      for (int j = 0; j < NR; ++j) bv[j] = _mm256_maskload_ps(b + j * d.ldb + whole, mask);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const __m256 av = _mm256_maskload_ps(a + i * d.lda + whole, mask);
#pragma GCC unroll 3
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
      }
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 3
    for (int j = 0; j < NR; ++j) d.c[(m0 + i) * d.ldc + n0 + j] += horizontal_sum(acc[i][j]);
  }
}

template <int MR>
IGC_TARGET_AVX2 void dots_rows_avx2(const RowDots& d, int64_t m0) {
  int64_t n0 = 0;
  for (; n0 + 3 <= d.N; n0 += 3) dots_block_avx2<MR, 3>(d, m0, n0);
  if (d.N - n0 == 2) dots_block_avx2<MR, 2>(d, m0, n0);
  else if (d.N - n0 == 1) dots_block_avx2<MR, 1>(d, m0, n0);
}

// Rows of a a multiple of 4 KB apart (a plane of 1024 values, or 256 with 4 groups
// interleaved): where their S * L values fit kAliasedFloats and each block of 4 serves at least
// two blocks of b, the block is copied first, its rows 64 bytes off a multiple of 4 KB apart. In
// place, the 4 loads at each k fall at one offset within a 4 KB page: the weight gradient of a 32
// x 32 plane's 24 -> 144 expansion (a: the 144 output-gradient rows, b: the 24 input rows) ran
// at 38-40 GMAC/s, 48 copied (16 -> 96: 29-36 -> 32-41; hot caches, 1 thread). With 24 rows of
// a against 144 of b it ran alike either way, as on 16 x 16 planes.
constexpr int64_t kAliasedFloats = 1024;
constexpr int64_t kAliasedStride = kAliasedFloats + 16;

// Every whole block of R rows of a, from the first, through `rows` (rows m0 .. m0 + R - 1 against
// every row of b), each block's rows copied first where they alias as above; returns the first
// row left over.
template <int R>
int64_t whole_row_blocks(const RowDots& d, void (*rows)(const RowDots&, int64_t)) {
  int64_t m0 = 0;
  if (d.lda % kPageFloats == 0 && d.S * d.L <= kAliasedFloats && d.N > 3) {
    alignas(64) float copy[R * kAliasedStride];
    RowDots c = d;
    c.a = copy;
    c.lda = kAliasedStride;
    c.a_seg = d.L;
    for (; m0 + R <= d.M; m0 += R) {
      for (int i = 0; i < R; ++i) {
        for (int64_t s = 0; s < d.S; ++s) {
          std::memcpy(copy + i * kAliasedStride + s * d.L, d.a + (m0 + i) * d.lda + s * d.a_seg,
                      d.L * sizeof(float));
        }
      }
      c.c = d.c + m0 * d.ldc;
      rows(c, 0);
    }
  }
  for (; m0 + R <= d.M; m0 += R) rows(d, m0);
  return m0;
}

IGC_TARGET_AVX2 void row_dots_avx2(const RowDots& d) {
  const int64_t m0 = whole_row_blocks<4>(d, dots_rows_avx2<4>);
  switch (d.M - m0) {
    case 3: dots_rows_avx2<3>(d, m0); break;
    case 2: dots_rows_avx2<2>(d, m0); break;
    case 1: dots_rows_avx2<1>(d, m0); break;
    default: break;
  }
}

// The row dots in AVX-512: two rows of a per register (lanes 0-7 row 2p, 8-15 row 2p + 1, the
// second half inserted), each row of b broadcast to both halves; MP x NR registers of partial
// sums (16 of the 32 at 4 x 4: 8 x 4 dot products). Every lane takes its products in
// dots_block_avx2's order and each half is reduced by the same horizontal_sum: bit for bit the
// same sums, with one 16-lane multiply-add where dots_block_avx2 takes two 8-lane ones. (A
// 16-lane vector along one row would split each chain in two: other sums.)
// (GCC 12 warns of an uninitialised operand inside these intrinsics: a false alarm)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// The 8 floats at lo and the 8 at hi as one register (the second half inserted from memory).
IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 two_rows(const float* lo,
                                                                       const float* hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_loadu_pd(
                                                 reinterpret_cast<const double*>(lo))),
                                             _mm256_loadu_pd(reinterpret_cast<const double*>(hi)),
                                             1));
}

// The 8 floats at p in both halves (one broadcast load).
IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 both_halves(const float* p) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
      reinterpret_cast<const double*>(p))));
}

IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 two_rows(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                                             _mm256_castps_pd(hi), 1));
}

IGC_TARGET_AVX512 __attribute__((always_inline)) inline __m512 both_halves(__m256 v) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(v)));
}
#pragma GCC diagnostic pop

template <int MP, int NR>
IGC_TARGET_AVX512 __attribute__((noinline)) void dots_block_z(const RowDots& d, int64_t m0,
                                                              int64_t n0) {
  __m512 acc[MP][NR];
#pragma GCC unroll 4
  for (int p = 0; p < MP; ++p) {
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[p][j] = _mm512_setzero_ps();
  }
  const int64_t whole = d.L / 8 * 8;
  const __m256i mask = tail_mask(d.L - whole);
  for (int64_t s = 0; s < d.S; ++s) {
    const float* a = d.a + m0 * d.lda + s * d.a_seg;
    const float* b = d.b + n0 * d.ldb + s * d.b_seg;
    for (int64_t k = 0; k < whole; k += 8) {
      __m512 bv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) bv[j] = both_halves(b + j * d.ldb + k);
#pragma GCC unroll 4
      for (int p = 0; p < MP; ++p) {
        const __m512 av = two_rows(a + 2 * p * d.lda + k, a + (2 * p + 1) * d.lda + k);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[p][j] = _mm512_fmadd_ps(av, bv[j], acc[p][j]);
      }
    }
    if (whole < d.L) {  // masked loads read nothing past the rows and give zeros
      __m512 bv[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        bv[j] = both_halves(_mm256_maskload_ps(b + j * d.ldb + whole, mask));
      }
#pragma GCC unroll 4
      for (int p = 0; p < MP; ++p) {
        const __m512 av = two_rows(_mm256_maskload_ps(a + 2 * p * d.lda + whole, mask),
                                   _mm256_maskload_ps(a + (2 * p + 1) * d.lda + whole, mask));
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[p][j] = _mm512_fmadd_ps(av, bv[j], acc[p][j]);
      }
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < MP; ++p) {
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m256 lo = __builtin_shufflevector(acc[p][j], acc[p][j], 0, 1, 2, 3, 4, 5, 6, 7);
      const __m256 hi = __builtin_shufflevector(acc[p][j], acc[p][j], 8, 9, 10, 11, 12, 13, 14,
                                                15);
      d.c[(m0 + 2 * p) * d.ldc + n0 + j] += horizontal_sum(lo);
      d.c[(m0 + 2 * p + 1) * d.ldc + n0 + j] += horizontal_sum(hi);
    }
  }
}

// Rows [m0, m0 + 2 MP) of a against every row of b, 4 at a time.
template <int MP>
IGC_TARGET_AVX512 void dots_rows_z(const RowDots& d, int64_t m0) {
  int64_t n0 = 0;
  for (; n0 + 4 <= d.N; n0 += 4) dots_block_z<MP, 4>(d, m0, n0);
  switch (d.N - n0) {
    case 3: dots_block_z<MP, 3>(d, m0, n0); break;
    case 2: dots_block_z<MP, 2>(d, m0, n0); break;
    case 1: dots_block_z<MP, 1>(d, m0, n0); break;
    default: break;
  }
}

// row_dots_avx2 with blocks of 8 rows of a in AVX-512 (the rows left over, fewer than 8, take
// the AVX2 blocks: the same sums either way), the aliased rows copied as there.
IGC_TARGET_AVX512 void row_dots_avx512(const RowDots& d) {
  const int64_t m0 = whole_row_blocks<8>(d, dots_rows_z<4>);
  RowDots rest = d;
  rest.M = d.M - m0;
  rest.a = d.a + m0 * d.lda;
  rest.c = d.c + m0 * d.ldc;
  if (rest.M > 0) row_dots_avx2(rest);
}

}  // namespace

int64_t gemm_panel_floats(GemmKernel kernel, int64_t M, int64_t K) {
  if (kernel != gemm_avx2 && kernel != gemm_avx512_rows) return 0;
  return (M + kRows - 1) / kRows * kRows * K;
}

void pack_gemm_panels(const float* a, int64_t lda, int64_t M, int64_t K, float* panels,
                      bool transposed) {
  // Each panel written in order, its rows read side by side (A's row i and column k at
  // i * row_step + k * k_step from the panel's first row).
  const int64_t row_step = transposed ? 1 : lda, k_step = transposed ? lda : 1;
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    float* panel = panels + m0 * K;
    const float* first = a + m0 * row_step;
    const int64_t rows = std::min<int64_t>(kRows, M - m0);
    if (rows == kRows) {
      for (int64_t k = 0; k < K; ++k) {
#pragma GCC unroll 6
        for (int i = 0; i < kRows; ++i) panel[k * kRows + i] = first[i * row_step + k * k_step];
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        for (int i = 0; i < kRows; ++i) {
          panel[k * kRows + i] = i < rows ? first[i * row_step + k * k_step] : 0.0f;
        }
      }
    }
  }
}

bool gemm_adds_in_place(GemmKernel kernel, int64_t N, int64_t K) {
  return (kernel == gemm_avx2 || kernel == gemm_avx512_rows) && N % kCols == 0 && K <= kDepth;
}

RowDotsKernel pick_row_dots() {
  if (!use_avx2_kernels()) return row_dots_portable;
  return use_avx512_conv_kernels() ? row_dots_avx512 : row_dots_avx2;
}

GemmKernel pick_gemm(bool plain_block) {
  if (!use_avx2_kernels()) return gemm_portable;
  if (plain_block) return use_avx512_kernels() ? gemm_avx512 : gemm_avx2;
  return use_avx512_conv_kernels() ? gemm_avx512_rows : gemm_avx2;
}

}  // namespace igc
