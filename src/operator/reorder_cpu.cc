// CPU kernels of the interleaved channel permutation: whole-row copies for long rows, a tiled
// transpose for short ones (7x7 maps, 1x1 maps, rank-2 inputs), streaming stores when the output
// is too large to stay in the last-level cache.
#include <emmintrin.h>
#include <xmmintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "reorder.h"

namespace igc {
namespace {

// Smaller copies run on the calling thread: waking a team costs more than the copy.
constexpr int64_t kMinParallelBytes = 128 * 1024;
// Rows at least this long are copied one at a time; shorter rows are moved as elements of a
// tiled transpose so that per-row overhead is spread over a whole tile.
constexpr int64_t kLongRowBytes = 64;
// Tile edge, in rows, of the transpose of short rows: 16x16 rows of up to 64 bytes stay in L1.
constexpr int64_t kTile = 16;
// Up to this many bytes per group (K rows), the input is walked in order (copy_rows_input_order,
// parallel over samples).
constexpr int64_t kInputOrderMaxGroupBytes = 8192;
// Long rows: how far ahead (bytes of copying) and how much of each source row to prefetch.
#ifndef IGC_PREFETCH_DISTANCE
#define IGC_PREFETCH_DISTANCE 2048
#endif
#ifndef IGC_PREFETCH_BYTES
#define IGC_PREFETCH_BYTES 1024
#endif
constexpr int64_t kPrefetchDistance = IGC_PREFETCH_DISTANCE;
constexpr int64_t kPrefetchBytes = IGC_PREFETCH_BYTES;

// Outputs larger than this are written with non-temporal stores, as glibc's memcpy does above
// 3/4 of the last-level cache: they would be evicted before anyone reads them from cache, and
// ordinary stores would first read every destination line.
int64_t streaming_threshold() {
  static const int64_t bytes = [] {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return l3 > 0 ? std::max<int64_t>(l3 / 4 * 3, int64_t(4) << 20) : int64_t(16) << 20;
  }();
  return bytes;
}

inline void copy_bytes(char* dst, const char* src, int64_t n) {
  if (n < 16) {
    std::memcpy(dst, src, n);
    return;
  }
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
  }
  if (k < n) {  // overlapping last vector instead of a byte loop
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + n - 16),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + n - 16)));
  }
}

// Caller issues _mm_sfence() before the data is used by another thread.
inline void stream_bytes(char* dst, const char* src, int64_t n) {
  int64_t head = static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15);
  head = std::min(head, n);
  std::memcpy(dst, src, head);
  int64_t k = head;
  for (; k + 16 <= n; k += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + k),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
  }
  std::memcpy(dst + k, src + k, n - k);
}

inline void copy_or_stream(char* dst, const char* src, int64_t n, bool streaming) {
  if (streaming) {
    stream_bytes(dst, src, n);
  } else {
    copy_bytes(dst, src, n);
  }
}

void copy_all(const char* in, char* out, int64_t bytes, bool parallel, bool streaming) {
#pragma omp parallel if (parallel)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = (bytes / nt + 63) & ~int64_t(63);
    const int64_t begin = std::min(bytes, t * chunk), end = std::min(bytes, begin + chunk);
    if (streaming) {
      stream_bytes(out + begin, in + begin, end - begin);
      _mm_sfence();
    } else {
      std::memcpy(out + begin, in + begin, end - begin);
    }
  }
}

// Source rows are visited out of order, often a page or more apart, where hardware prefetchers
// do not follow; each stream of source rows is prefetched a little ahead of its use.
inline void prefetch_bytes(const char* p, int64_t n) {
  for (int64_t k = 0; k < n; k += 64) _mm_prefetch(p + k, _MM_HINT_T0);
}

// Output rows j*g .. j*g + g-1 of a sample are contiguous and come from input rows i*K + j,
// one from each of the g streams i; walking (sample, j) keeps index math out of the row loop.
void copy_long_rows(const char* in, char* out, int64_t outer, int64_t channels,
                    int64_t row_bytes, int64_t groups, bool parallel, bool streaming) {
  const int64_t per_group = channels / groups;
  const int64_t prefetch = std::min<int64_t>(row_bytes, kPrefetchBytes);
  // A stream's next row is read one block (g rows) later: prefetch as many rows ahead as make
  // kPrefetchDistance bytes of copying, at least one.
  const int64_t ahead =
      std::max<int64_t>(1, kPrefetchDistance / (groups * row_bytes)) * row_bytes;
  const int64_t blocks = outer * per_group;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = b / per_group;
      const int64_t j = b - n * per_group;
      const char* src = in + (n * channels + j) * row_bytes;
      char* dst = out + (n * channels + j * groups) * row_bytes;
      for (int64_t i = 0; i < groups; ++i) {
        const char* row = src + i * per_group * row_bytes;
        prefetch_bytes(row + ahead, prefetch);  // prefetches never fault, even past the end
        copy_or_stream(dst + i * row_bytes, row, row_bytes, streaming);
      }
    }
    if (streaming) _mm_sfence();
  }
}

// When a group's rows together are short (K * row <= 8 KiB), walking the input in order is
// faster: each group's K rows are read as one contiguous run and scattered to K output
// positions that stay in cache, instead of gathering from g source streams.
void copy_rows_input_order(const char* in, char* out, int64_t outer, int64_t channels,
                           int64_t row_bytes, int64_t groups, bool parallel, bool streaming) {
  const int64_t per_group = channels / groups;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < outer; ++n) {
      const char* src = in + n * channels * row_bytes;
      char* dst = out + n * channels * row_bytes;
      for (int64_t i = 0; i < groups; ++i) {
        for (int64_t j = 0; j < per_group; ++j) {
          copy_or_stream(dst + (j * groups + i) * row_bytes, src + (i * per_group + j) * row_bytes,
                         row_bytes, streaming);
        }
      }
    }
    if (streaming) _mm_sfence();
  }
}

// A short row as one value, so that the tile loop moves it with one or two vector moves.
template <int kBytes>
struct Row {
  char bytes[kBytes];
};

template <typename R>
inline void move_row(R* dst, const R* src, int64_t) { *dst = *src; }

// Row sizes without a fixed-size Row: `stride` is the row's length in bytes.
inline void move_row(char* dst, const char* src, int64_t bytes) { std::memcpy(dst, src, bytes); }

// Per sample, the (g, K) grid of rows is transposed into (K, g) tile by tile; tiles are walked
// so that each thread writes one contiguous stretch of the output.
template <typename R>
void transpose_tiles(const R* in, R* out, int64_t outer, int64_t groups, int64_t per_group,
                     int64_t stride, bool parallel) {
  const int64_t tiles_i = (groups + kTile - 1) / kTile;
  const int64_t tiles_j = (per_group + kTile - 1) / kTile;
  const int64_t tiles = outer * tiles_i * tiles_j;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t n = t / (tiles_i * tiles_j);
    const int64_t rem = t - n * tiles_i * tiles_j;
    const int64_t i0 = (rem % tiles_i) * kTile, j0 = (rem / tiles_i) * kTile;
    const int64_t i1 = std::min(groups, i0 + kTile), j1 = std::min(per_group, j0 + kTile);
    const int64_t base = n * groups * per_group * stride;
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t i = i0; i < i1; ++i) {
        move_row(out + base + (j * groups + i) * stride, in + base + (i * per_group + j) * stride,
                 stride);
      }
    }
  }
}

template <int kBytes>
void transpose_fixed(const char* in, char* out, int64_t outer, int64_t groups, int64_t per_group,
                     bool parallel) {
  transpose_tiles(reinterpret_cast<const Row<kBytes>*>(in), reinterpret_cast<Row<kBytes>*>(out),
                  outer, groups, per_group, 1, parallel);
}

}  // namespace

void reorder_cpu(const void* in_ptr, void* out_ptr, int64_t outer, int64_t channels,
                 int64_t row_bytes, int64_t groups) {
  const char* in = static_cast<const char*>(in_ptr);
  char* out = static_cast<char*>(out_ptr);
  const int64_t total = outer * channels * row_bytes;
  if (total == 0) return;
  const int64_t per_group = channels / groups;
  const bool parallel = total >= kMinParallelBytes;
  const bool streaming = total >= streaming_threshold();
  if (groups == 1 || per_group == 1) {  // the permutation is the identity
    copy_all(in, out, total, parallel, streaming);
    return;
  }
  if (row_bytes >= kLongRowBytes && per_group * row_bytes <= kInputOrderMaxGroupBytes &&
      outer > 1) {
    copy_rows_input_order(in, out, outer, channels, row_bytes, groups, parallel, streaming);
    return;
  }
  if (row_bytes >= kLongRowBytes) {
    copy_long_rows(in, out, outer, channels, row_bytes, groups, parallel, streaming);
    return;
  }
  switch (row_bytes) {
    case 1: return transpose_fixed<1>(in, out, outer, groups, per_group, parallel);
    case 2: return transpose_fixed<2>(in, out, outer, groups, per_group, parallel);
    case 4: return transpose_fixed<4>(in, out, outer, groups, per_group, parallel);
    case 8: return transpose_fixed<8>(in, out, outer, groups, per_group, parallel);
    case 16: return transpose_fixed<16>(in, out, outer, groups, per_group, parallel);
    case 32: return transpose_fixed<32>(in, out, outer, groups, per_group, parallel);
    default:
      transpose_tiles(in, out, outer, groups, per_group, row_bytes, parallel);
  }
}

}  // namespace igc

extern "C" int igc_reorder_cpu(const void* in, void* out, int64_t outer, int64_t channels,
                               int64_t inner, int64_t groups, int dtype) {
  if (!igc::reorder_args_valid(outer, channels, inner, groups, dtype)) return -1;
  igc::reorder_cpu(in, out, outer, channels, inner * igc::dtype_bytes(dtype), groups);
  return 0;
}
