// CUDA kernels of the interleaved channel permutation and their plain C launcher.
// The permutation moves whole channel rows, so the kernels move "units" (2 to 16 bytes, the widest
// that the row length and both pointers allow) and serve every dtype bit-exactly.
#include <cuda_runtime.h>

#include <cstdint>
#include <climits>

#include "reorder.h"

namespace igc {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest
// Rows longer than this are copied row by row (each row is a coalesced run); shorter rows go
// through a shared-memory tile so that both the reads and the writes are coalesced.
constexpr int64_t kTiledMaxRowBytes = 256;

// Long rows: consecutive threads take consecutive units of one output row.
template <typename U, typename I>
__global__ void reorder_rows_kernel(const U* __restrict__ in, U* __restrict__ out, I total,
                                    I channels, I groups, I row_units) {
  for (I idx = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<I>(gridDim.x) * blockDim.x) {
    const I row = idx / row_units;
    const I p = idx - row * row_units;
    const I n = row / channels;
    const I c = row - n * channels;
    const I src_c = reorder_source(c, channels, groups);
    out[idx] = in[(n * channels + src_c) * row_units + p];
  }
}

// Short rows: a block transposes a kTile x kTile tile of the per-sample (g, K) grid of rows.
// Input rows i0.. of the tile are read as contiguous runs of nj rows, output rows j0.. are
// written as contiguous runs of ni rows.
template <typename U, int kTile>
__global__ void reorder_tiles_kernel(const U* __restrict__ in, U* __restrict__ out, int64_t outer,
                                     int64_t groups, int64_t per_group, int row_units,
                                     int64_t tiles_i, int64_t tiles_j) {
  extern __shared__ __align__(16) unsigned char smem[];
  U* tile = reinterpret_cast<U*>(smem);  // [kTile][kTile * row_units]
  const int span = kTile * row_units;
  const int64_t tiles = outer * tiles_i * tiles_j;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t n = t / (tiles_i * tiles_j);
    const int64_t rem = t - n * tiles_i * tiles_j;
    const int64_t i0 = (rem % tiles_i) * kTile, j0 = (rem / tiles_i) * kTile;
    const int ni = static_cast<int>(min(static_cast<int64_t>(kTile), groups - i0));
    const int nj = static_cast<int>(min(static_cast<int64_t>(kTile), per_group - j0));
    const int64_t base = n * groups * per_group * row_units;
    for (int e = threadIdx.x; e < ni * span; e += blockDim.x) {
      const int li = e / span, q = e - li * span;
      if (q < nj * row_units) {
        tile[li * span + q] = in[base + ((i0 + li) * per_group + j0) * row_units + q];
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nj * span; e += blockDim.x) {
      const int lj = e / span, q = e - lj * span;
      if (q < ni * row_units) {
        const int li = q / row_units, p = q - li * row_units;
        out[base + ((j0 + lj) * groups + i0) * row_units + q] = tile[li * span + lj * row_units + p];
      }
    }
    __syncthreads();
  }
}

template <typename U, int kTile>
void launch_tiles(const U* in, U* out, int64_t outer, int64_t groups, int64_t per_group,
                  int row_units, cudaStream_t stream) {
  const int64_t tiles_i = (groups + kTile - 1) / kTile;
  const int64_t tiles_j = (per_group + kTile - 1) / kTile;
  const int64_t tiles = outer * tiles_i * tiles_j;
  const int blocks = static_cast<int>(tiles < kMaxBlocks ? tiles : kMaxBlocks);
  const size_t smem = sizeof(U) * kTile * kTile * row_units;
  reorder_tiles_kernel<U, kTile><<<blocks, kThreads, smem, stream>>>(
      in, out, outer, groups, per_group, row_units, tiles_i, tiles_j);
}

template <typename U>
cudaError_t launch(const void* in_ptr, void* out_ptr, int64_t outer, int64_t channels,
                   int64_t row_bytes, int64_t groups, cudaStream_t stream) {
  const U* in = static_cast<const U*>(in_ptr);
  U* out = static_cast<U*>(out_ptr);
  const int64_t row_units = row_bytes / static_cast<int64_t>(sizeof(U));
  const int64_t per_group = channels / groups;
  const bool identity = groups == 1 || per_group == 1;
  if (identity || row_bytes > kTiledMaxRowBytes) {
    const int64_t total = outer * channels * row_units;
    const int64_t want = (total + kThreads - 1) / kThreads;
    const int blocks = static_cast<int>(want < kMaxBlocks ? want : kMaxBlocks);
    // 32-bit indexing while the grid-stride loop cannot overflow it.
    if (total <= INT32_MAX - kMaxBlocks * kThreads) {
      reorder_rows_kernel<U, int32_t><<<blocks, kThreads, 0, stream>>>(
          in, out, static_cast<int32_t>(total), static_cast<int32_t>(channels),
          static_cast<int32_t>(groups), static_cast<int32_t>(row_units));
    } else {
      reorder_rows_kernel<U, int64_t><<<blocks, kThreads, 0, stream>>>(in, out, total, channels,
                                                                       groups, row_units);
    }
  } else if (row_bytes <= 16) {
    launch_tiles<U, 32>(in, out, outer, groups, per_group, static_cast<int>(row_units), stream);
  } else if (row_bytes <= 64) {
    launch_tiles<U, 16>(in, out, outer, groups, per_group, static_cast<int>(row_units), stream);
  } else {
    launch_tiles<U, 8>(in, out, outer, groups, per_group, static_cast<int>(row_units), stream);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace igc

extern "C" int igc_reorder_cuda(const void* in, void* out, int64_t outer, int64_t channels,
                                int64_t inner, int64_t groups, int dtype, void* stream) {
  if (!igc::reorder_args_valid(outer, channels, inner, groups, dtype)) return -1;
  if (outer == 0 || inner == 0) return 0;
  const int64_t row_bytes = inner * igc::dtype_bytes(dtype);
  const uintptr_t bits = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out) |
                         static_cast<uintptr_t>(row_bytes);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  if (bits % 16 == 0) {
    err = igc::launch<uint4>(in, out, outer, channels, row_bytes, groups, s);
  } else if (bits % 8 == 0) {
    err = igc::launch<uint2>(in, out, outer, channels, row_bytes, groups, s);
  } else if (bits % 4 == 0) {
    err = igc::launch<uint32_t>(in, out, outer, channels, row_bytes, groups, s);
  } else {
    err = igc::launch<uint16_t>(in, out, outer, channels, row_bytes, groups, s);
  }
  return static_cast<int>(err);
}
