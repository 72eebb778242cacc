/* The single-thread multiply-add peak of this CPU with 8-lane (AVX2) and 16-lane (AVX-512) FMAs:
 * the ceiling against which docs/performance.md reads the GMAC/s of the kernels and of the peers.
 * Twelve independent chains of register multiply-adds (more than latency x throughput), no
 * memory operands; three rounds each, the rate of every round printed.
 *
 *     cc -O2 benchmarks/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *
 * On a CPU without AVX-512 only the AVX2 rate is measured. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

enum { kChains = 12 };

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Every chain's result enters the returned sum, so that none is optimised away. */
__attribute__((target("avx2,fma"))) static float chains8(long steps) {
  __m256 acc[kChains];
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps((float)i);
  for (long k = 0; k < steps; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  return lanes[0];
}

__attribute__((target("avx512f"))) static float chains16(long steps) {
  __m512 acc[kChains];
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps((float)i);
  for (long k = 0; k < steps; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}

int main(void) {
  const long steps = 100000000;
  const int avx512 = __builtin_cpu_supports("avx512f");
  float sink = 0;
  for (int round = 0; round < 3; ++round) {
    double t0 = seconds();
    sink += chains8(steps);
    double t1 = seconds();
    printf("AVX2 (8 lanes): %.1f GMAC/s", steps * kChains * 8 / (t1 - t0) / 1e9);
    if (avx512) {
      sink += chains16(steps);
      printf("   AVX-512 (16 lanes): %.1f GMAC/s", steps * kChains * 16 / (seconds() - t1) / 1e9);
    }
    printf("\n");
  }
  printf("(checksum %g)\n", sink);
  return 0;
}
