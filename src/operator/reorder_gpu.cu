// CUDA kernels of the interleaved channel permutation and their plain C launcher. The kernels move
// "units" (2 to 16 bytes, the widest that the row length and both addresses allow), so they serve
// every dtype bit-exactly. Every index comes from reorder.h, whose mappings
// tests/test_reorder_cuda_index.py runs on the CPU.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "reorder.h"

namespace igc {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;  // grid-stride loops cover the rest
// Load pieces each thread issues before it stores any to shared memory: with several blocks per
// multiprocessor this keeps enough bytes in flight to cover the memory latency.
constexpr int kBatch = 4;

// Long rows: consecutive threads take consecutive units of the output.
template <typename U, typename I>
__global__ void __launch_bounds__(kThreads)
    reorder_rows_kernel(const U* __restrict__ in, U* __restrict__ out, I total, I channels,
                        I groups, I row_units) {
  for (I idx = blockIdx.x * static_cast<I>(kThreads) + threadIdx.x; idx < total;
       idx += static_cast<I>(gridDim.x) * kThreads) {
    out[idx] = in[reorder_rows_source(idx, channels, groups, row_units)];
  }
}

// kVec units moved as one access: a 16-byte vector, or the unit itself when kVec is 1.
template <typename U, int kVec>
union Vector {
  using Whole = typename std::conditional<kVec == 1, U, uint4>::type;
  Whole whole;
  U unit[kVec];
};

// Short rows: a block moves one tile at a time (reorder.h): the input runs of the tile into
// shared memory in aligned pieces, then each output run's pieces gathered from there.
template <typename U, int kVec>
__global__ void __launch_bounds__(kThreads)
    reorder_tiles_kernel(const U* __restrict__ in, U* __restrict__ out, const ReorderPlan p) {
  using V = Vector<U, kVec>;
  using Whole = typename V::Whole;
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  U* smem = reinterpret_cast<U*>(smem_bytes);
  for (int64_t t = blockIdx.x; t < p.tiles; t += gridDim.x) {
    const ReorderTile tile = reorder_tile(p, t);
    for (int e0 = threadIdx.x; e0 < p.load_items(); e0 += kBatch * kThreads) {
      RunPiece piece[kBatch];
      int at[kBatch] = {};
      V v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        piece[b] = reorder_load_piece(p, tile, e0 + b * kThreads, &at[b]);
        if (piece[b].count == kVec) {
          v[b].whole = *reinterpret_cast<const Whole*>(in + piece[b].first);
        }
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        if (piece[b].count == kVec) {
          *reinterpret_cast<Whole*>(smem + at[b]) = v[b].whole;
        } else {
          for (int u = 0; u < piece[b].count; ++u) smem[at[b] + u] = in[piece[b].first + u];
        }
      }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < p.store_items(); e += kThreads) {
      ReorderCursor c;
      const RunPiece piece = reorder_store_piece(p, tile, e, &c);
      if (piece.count == kVec) {
        V v;
#pragma unroll
        for (int u = 0; u < kVec; ++u) {
          v.unit[u] = smem[c.smem];
          reorder_advance(p, tile, &c);
        }
        *reinterpret_cast<Whole*>(out + piece.first) = v.whole;
      } else {
        for (int u = 0; u < piece.count; ++u) {
          out[piece.first + u] = smem[c.smem];
          reorder_advance(p, tile, &c);
        }
      }
    }
    __syncthreads();  // the next tile overwrites shared memory
  }
}

template <typename U>
void launch_rows(const void* in, void* out, const ReorderPlan& p, cudaStream_t stream) {
  const int64_t total = p.outer * p.channels * p.row_units;
  const int64_t want = (total + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(want < kMaxBlocks ? want : kMaxBlocks);
  const U* src = static_cast<const U*>(in);
  U* dst = static_cast<U*>(out);
  // 32-bit indexing while the grid-stride loop cannot overflow it.
  if (total <= INT32_MAX - kMaxBlocks * kThreads) {
    reorder_rows_kernel<U, int32_t><<<blocks, kThreads, 0, stream>>>(
        src, dst, static_cast<int32_t>(total), static_cast<int32_t>(p.channels),
        static_cast<int32_t>(p.groups), static_cast<int32_t>(p.row_units));
  } else {
    reorder_rows_kernel<U, int64_t><<<blocks, kThreads, 0, stream>>>(src, dst, total, p.channels,
                                                                     p.groups, p.row_units);
  }
}

template <typename U, int kVec>
void launch_tiles(const void* in, void* out, const ReorderPlan& p, cudaStream_t stream) {
  const int blocks = static_cast<int>(p.tiles < kMaxBlocks ? p.tiles : kMaxBlocks);
  reorder_tiles_kernel<U, kVec><<<blocks, kThreads, p.smem_bytes(), stream>>>(
      static_cast<const U*>(in), static_cast<U*>(out), p);
}

template <typename U>
void launch(const void* in, void* out, const ReorderPlan& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(U);
  if (!p.tiled) {
    launch_rows<U>(in, out, p, stream);
  } else if (p.vec == kVec) {
    launch_tiles<U, kVec>(in, out, p, stream);
  } else {
    launch_tiles<U, 1>(in, out, p, stream);
  }
}

}  // namespace
}  // namespace igc

extern "C" int igc_reorder_cuda(const void* in, void* out, int64_t outer, int64_t channels,
                                int64_t inner, int64_t groups, int dtype, void* stream) {
  if (!igc::reorder_args_valid(outer, channels, inner, groups, dtype)) return -1;
  if (outer == 0 || inner == 0) return 0;
  const igc::ReorderPlan p = igc::plan_reorder(
      reinterpret_cast<uintptr_t>(in), reinterpret_cast<uintptr_t>(out), outer, channels,
      inner * igc::dtype_bytes(dtype), groups);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.unit_bytes) {
    case 16: igc::launch<uint4>(in, out, p, s); break;
    case 8: igc::launch<uint2>(in, out, p, s); break;
    case 4: igc::launch<uint32_t>(in, out, p, s); break;
    default: igc::launch<uint16_t>(in, out, p, s); break;
  }
  return static_cast<int>(cudaGetLastError());
}
