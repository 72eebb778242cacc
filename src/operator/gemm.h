// The float GEMM kernels shared by IGCBlock (its expansion and linear convs) and IGCConv (a
// pointwise conv's forward and data gradient): register-blocked over rows of B given by pointer,
// so a caller can hand over rows of channels in place, permuted or strided, without copying.
#ifndef IGC_OPERATOR_GEMM_H_
#define IGC_OPERATOR_GEMM_H_

#include <immintrin.h>

#include <cstdint>

#include "common.h"

namespace igc {

// c[m][n] = bias[m] + sum_k a[m * lda + k] * b[k][n] (+ r[m][n]), 0 <= m < M, 0 <= n < N.
// `panels`, when not null, holds the same A packed by pack_gemm_panels: the AVX2 kernel then
// reads it instead of a (the other kernels always read a).
struct Gemm {
  int64_t M, N, K;
  const float* a;
  int64_t lda;
  const float* const* b;
  float* c;
  int64_t ldc;
  const float* bias;
  const float* r;  // nullptr: no residual
  int64_t ldr;
  const float* panels;
  // B's rows come from memory, not from a buffer the caller has just written (IGCConv's data
  // gradient reads the output gradient in place): where they alias, the blocks copy them (see
  // kAliasedWideColumns in gemm_cpu.cc).
  bool b_in_memory = false;
};

using GemmKernel = void (*)(const Gemm&);

// A (M x K, rows lda apart) as the blocked GEMM's register blocks read it: ceil(M /
// kGemmPanelRows) panels of K x kGemmPanelRows values, row i of a panel at offset i of each group
// (rows past M zero), so that a block's weights are one sequential stream instead of one per row.
// gemm_panel_floats is the size for `kernel` (a pick_gemm result); 0 where it reads rows in place
// (portable C++, the plain AVX-512 block), and nothing to pack.
// `transposed`: `a` holds A's transpose (A[m][k] at a[k * lda + m]; the data gradient's flipped
// 1x1 weights are the forward weights read this way).
constexpr int64_t kGemmPanelRows = 6;
int64_t gemm_panel_floats(GemmKernel kernel, int64_t M, int64_t K);
void pack_gemm_panels(const float* a, int64_t lda, int64_t M, int64_t K, float* panels,
                      bool transposed = false);

// Whether `kernel` (a pick_gemm result) may take r == c, the product added to c in place: the
// blocked GEMMs where N is whole 16-column blocks and K fits one pass, so that every value of c
// is read (as r) by the one block that then stores it, and never recomputed.
bool gemm_adds_in_place(GemmKernel kernel, int64_t N, int64_t K);

// The GEMM for this CPU and environment (single-threaded): with `plain_block` (the unpacked
// IGCBlock's short inference GEMMs) a plain 8 x 32 AVX-512 register block where
// use_avx512_kernels, else (IGCConv) the blocked GEMM with 12 x 32 and 6 x 32 register blocks
// (12 x 16 and 6 x 16 on a last odd 16 columns) in AVX-512 where use_avx512_conv_kernels;
// otherwise the blocked GEMM in AVX2+FMA, or portable C++ (see use_avx2_kernels). The blocked
// GEMM has the packed panels, the chunked and copied reads of B and the narrow-tail paths (on
// Zen 4, where a 512-bit FMA costs two 256-bit ones, training steps ran 5-13 % slower with the
// plain block; see igc_conv.md); its AVX-512 and AVX2 blocks make the same sums in the same
// order.
GemmKernel pick_gemm(bool plain_block);

// c[m * ldc + n] += sum over s < S, k < L of
//   a[m * lda + s * a_seg + k] * b[n * ldb + s * b_seg + k],
// 0 <= m < M, 0 <= n < N: dot products of rows (a pointwise conv's weight gradient: output-
// gradient rows against input rows, S images of L values each). Reads nothing past a row's L.
struct RowDots {
  int64_t M, N, S, L;
  const float* a;
  int64_t lda, a_seg;
  const float* b;
  int64_t ldb, b_seg;
  float* c;
  int64_t ldc;
};

using RowDotsKernel = void (*)(const RowDots&);

// 4 x 3 blocks of 8-lane dot products with AVX2+FMA, 8 x 4 in AVX-512 (two rows per register:
// the same sums), or portable C++ (as pick_gemm chooses for IGCConv).
RowDotsKernel pick_row_dots();

// Lanes below `count` of an 8-float AVX2 mask set (all for count >= 8, none for count <= 0).
IGC_TARGET_AVX2 inline __m256i tail_mask(int64_t count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), index);
}

// The sum of v's 8 lanes: halves, then pairs, then the last two (one fixed order).
IGC_TARGET_AVX2 inline float horizontal_sum(__m256 v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}

// 8 floats at p, or (tail) only the lanes `mask` keeps, the others zero and not read.
IGC_TARGET_AVX2 inline __m256 load8(const float* p, bool tail, __m256i mask) {
  return tail ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
}

}  // namespace igc

#endif  // IGC_OPERATOR_GEMM_H_
