// Interleaved channel permutation (IGC's `Reorder`): the kernel entry points and the CUDA
// kernels' index math. Nothing here knows about MXNet.
//
// With C channels split into g groups of K = C / g, Reorder(g) views the channels of each sample
// as a (g, K) grid and transposes it: output channel j*g + i reads input channel i*K + j
// (reorder_source in common.h). Every channel is a contiguous "row" of `inner` elements (H*W for
// NCHW), so the permutation moves whole rows and is the same byte move for every dtype.
#ifndef IGC_OPERATOR_REORDER_H_
#define IGC_OPERATOR_REORDER_H_

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace igc {

// Permutes `outer` samples of `channels` rows of `row_bytes` bytes each from `in` to `out`
// (distinct buffers). Multi-threaded with OpenMP; `groups` must divide `channels`.
void reorder_cpu(const void* in, void* out, int64_t outer, int64_t channels, int64_t row_bytes,
                 int64_t groups);

// The checks both C entry points make before touching memory.
inline bool reorder_args_valid(int64_t outer, int64_t channels, int64_t inner, int64_t groups,
                               int dtype) {
  return dtype_bytes(dtype) != 0 && outer >= 0 && channels >= 1 && inner >= 0 && groups >= 1 &&
         channels % groups == 0;
}

// Index math of the CUDA kernels (reorder_gpu.cu), host and device, so that a CPU test
// (tests/test_reorder_cuda_index.py) runs the very mappings a GPU runs.
//
// The kernels move "units": the widest of 2, 4, 8 or 16 bytes that divides the row length and
// both addresses, so every dtype moves bit-exactly. Long rows are copied row by row: element
// idx of the output reads reorder_rows_source(idx). Short rows go through shared memory a tile
// at a time: per sample, a tile is ni groups (i0 ..) by nj rows of each group (j0 ..) of the
// (g, K) grid of rows. In the input it is ni contiguous runs of nj rows (one per group), in the
// output nj contiguous runs of ni rows (output rows j*g + i0 ..). Both sides move their runs in
// pieces: a run cut at multiples of `vec` units (16 bytes when the addresses allow), so that
// every piece but a run's first and last is one aligned 16-byte vector. The load phase copies
// input runs to shared memory, each at the same offset modulo `vec` as in global memory (aligned
// vectors on both sides); the store phase gathers each output piece from the runs.

// Rows of at least this many bytes are copied row by row (each row a coalesced run), and so are
// rows over 256 bytes that move in 16-byte units (as in the version measured on an H200).
constexpr int64_t kReorderTiledMaxRowBytes = 1024;
// Bytes of shared memory a tile may take (data and alignment padding).
constexpr int64_t kReorderTileBytes = 16384;

struct ReorderPlan {
  int64_t outer, channels, groups, per_group, row_units;
  int unit_bytes;  // 2, 4, 8 or 16
  bool tiled;      // false: row by row
  // The tiled path:
  int vec, vec_shift;         // units per vector (16 / unit_bytes, or 1 for unaligned
                              // addresses) and its log2: vec is a power of two
  int tile_i, tile_j;         // the most groups and rows per group in a tile
  int64_t tiles_i, tiles_j, tiles;
  int run_stride;             // shared-memory units per input run, a multiple of vec
  int pieces_in, pieces_out;  // the most pieces of an input run (nj rows) / output run (ni rows)
  IGC_HOST_DEVICE int load_items() const { return tile_i * pieces_in; }
  IGC_HOST_DEVICE int store_items() const { return tile_j * pieces_out; }
  IGC_HOST_DEVICE int64_t smem_bytes() const { return int64_t(tile_i) * run_stride * unit_bytes; }
};

// The most pieces that a run of `length` units can be cut into at multiples of `vec`.
IGC_HOST_DEVICE int run_pieces(int64_t length, int vec) {
  return static_cast<int>((length + 2 * vec - 2) / vec);
}

inline ReorderPlan plan_reorder(uintptr_t in, uintptr_t out, int64_t outer, int64_t channels,
                                int64_t row_bytes, int64_t groups) {
  ReorderPlan p{};
  const uintptr_t bits = in | out | static_cast<uintptr_t>(row_bytes);
  p.unit_bytes = bits % 16 == 0 ? 16 : bits % 8 == 0 ? 8 : bits % 4 == 0 ? 4 : 2;
  p.outer = outer;
  p.channels = channels;
  p.groups = groups;
  p.per_group = channels / groups;
  p.row_units = row_bytes / p.unit_bytes;
  // The identity (one group, or one channel per group) is a plain copy, done row by row.
  p.tiled = row_bytes < kReorderTiledMaxRowBytes && !(p.unit_bytes == 16 && row_bytes > 256) &&
            groups > 1 && p.per_group > 1;
  if (!p.tiled) return p;
  p.vec = (in | out) % 16 == 0 ? 16 / p.unit_bytes : 1;
  while ((1 << p.vec_shift) < p.vec) ++p.vec_shift;
  // About square tiles of kReorderTileBytes; with few groups (or few rows per group) the other
  // side grows, so that runs stay long on both sides.
  const int64_t rows = std::max<int64_t>(1, kReorderTileBytes / row_bytes);
  int64_t tj = 1;
  while ((tj + 1) * (tj + 1) <= rows) ++tj;
  tj = std::min(tj, p.per_group);
  int64_t ti = std::min(groups, std::max<int64_t>(1, rows / tj));
  tj = std::min(p.per_group, std::max(tj, rows / ti));
  p.run_stride = static_cast<int>((tj * p.row_units + 2 * p.vec - 2) / p.vec * p.vec);
  // Short runs carry up to vec - 1 units of padding each: keep data + padding in the budget.
  ti = std::min(ti, std::max<int64_t>(1, kReorderTileBytes / (p.run_stride * p.unit_bytes)));
  p.tile_i = static_cast<int>(ti);
  p.tile_j = static_cast<int>(tj);
  p.tiles_i = (groups + ti - 1) / ti;
  p.tiles_j = (p.per_group + tj - 1) / tj;
  p.tiles = outer * p.tiles_i * p.tiles_j;
  p.pieces_in = run_pieces(tj * p.row_units, p.vec);
  p.pieces_out = run_pieces(ti * p.row_units, p.vec);
  return p;
}

// Long rows: the input unit that output unit `idx` copies.
template <typename I>
IGC_HOST_DEVICE I reorder_rows_source(I idx, I channels, I groups, I row_units) {
  const I row = idx / row_units;
  const I n = row / channels;
  return (n * channels + reorder_source(row - n * channels, channels, groups)) * row_units +
         (idx - row * row_units);
}

struct ReorderTile {
  int64_t base;    // first unit of the sample
  int64_t i0, j0;  // first group, first row of each group
  int ni, nj;      // groups and rows per group in this tile (fewer at the grid's edges)
};

IGC_HOST_DEVICE ReorderTile reorder_tile(const ReorderPlan& p, int64_t t) {
  const int64_t per_sample = p.tiles_i * p.tiles_j;
  const int64_t n = t / per_sample, rem = t - n * per_sample;
  ReorderTile tile;
  tile.base = n * p.channels * p.row_units;
  tile.i0 = rem % p.tiles_i * p.tile_i;
  tile.j0 = rem / p.tiles_i * p.tile_j;
  tile.ni = static_cast<int>(p.groups - tile.i0 < p.tile_i ? p.groups - tile.i0 : p.tile_i);
  tile.nj = static_cast<int>(p.per_group - tile.j0 < p.tile_j ? p.per_group - tile.j0 : p.tile_j);
  return tile;
}

// First unit of input run li (group i0 + li, rows j0 ..) and of output run lj (rows
// (j0 + lj) * g + i0 ..).
IGC_HOST_DEVICE int64_t input_run_start(const ReorderPlan& p, const ReorderTile& t, int li) {
  return t.base + ((t.i0 + li) * p.per_group + t.j0) * p.row_units;
}
IGC_HOST_DEVICE int64_t output_run_start(const ReorderPlan& p, const ReorderTile& t, int lj) {
  return t.base + ((t.j0 + lj) * p.groups + t.i0) * p.row_units;
}

// Shared-memory unit of input run li's first unit: same offset modulo vec as in global memory.
IGC_HOST_DEVICE int run_origin(const ReorderPlan& p, const ReorderTile& t, int li) {
  return li * p.run_stride + static_cast<int>(input_run_start(p, t, li) & (p.vec - 1));
}

// Units [first, first + count) of a run of `length` units from `start`: its piece k, the run
// cut at multiples of 1 << shift (count 0 past the run's end).
struct RunPiece {
  int64_t first;
  int count;
};

IGC_HOST_DEVICE RunPiece run_piece(int64_t start, int64_t length, int shift, int k) {
  const int64_t cut = ((start >> shift) + k) << shift, next = cut + (int64_t(1) << shift);
  const int64_t first = cut > start ? cut : start;
  const int64_t end = start + length < next ? start + length : next;
  return RunPiece{first, first < end ? static_cast<int>(end - first) : 0};
}

// Load item e: input units [piece.first, + piece.count) go to shared units from *smem.
IGC_HOST_DEVICE RunPiece reorder_load_piece(const ReorderPlan& p, const ReorderTile& t, int e,
                                            int* smem) {
  const int li = e / p.pieces_in;
  if (li >= t.ni) return RunPiece{0, 0};
  const int64_t start = input_run_start(p, t, li);
  const RunPiece piece = run_piece(start, t.nj * p.row_units, p.vec_shift, e - li * p.pieces_in);
  *smem = run_origin(p, t, li) + static_cast<int>(piece.first - start);
  return piece;
}

// Where the store phase reads: shared unit `smem` holds row column r of input run li, for
// output run lj.
struct ReorderCursor {
  int li, lj, r, smem;
};

// Store item e: output units [piece.first, + piece.count) read the shared units that *cursor
// walks (reorder_advance after each unit).
IGC_HOST_DEVICE RunPiece reorder_store_piece(const ReorderPlan& p, const ReorderTile& t, int e,
                                             ReorderCursor* cursor) {
  const int lj = e / p.pieces_out;
  if (lj >= t.nj) return RunPiece{0, 0};
  const int64_t start = output_run_start(p, t, lj);
  const RunPiece piece = run_piece(start, t.ni * p.row_units, p.vec_shift, e - lj * p.pieces_out);
  const int q = static_cast<int>(piece.first - start);
  cursor->li = q / static_cast<int>(p.row_units);
  cursor->lj = lj;
  cursor->r = q - cursor->li * static_cast<int>(p.row_units);
  cursor->smem = run_origin(p, t, cursor->li) + lj * static_cast<int>(p.row_units) + cursor->r;
  return piece;
}

IGC_HOST_DEVICE void reorder_advance(const ReorderPlan& p, const ReorderTile& t,
                                     ReorderCursor* c) {
  ++c->smem;
  if (++c->r == p.row_units) {
    c->r = 0;
    ++c->li;
    c->smem = run_origin(p, t, c->li) + c->lj * static_cast<int>(p.row_units);
  }
}

}  // namespace igc

extern "C" {
// The CPU kernel behind a plain C entry point (benchmarks call it without MXNet's dispatch).
// `inner` counts elements of `dtype` per channel. Returns 0, or -1 for an unsupported dtype or
// bad sizes.
int igc_reorder_cpu(const void* in, void* out, int64_t outer, int64_t channels, int64_t inner,
                    int64_t groups, int dtype);

// CUDA launch of the same permutation on `stream` (a cudaStream_t; null is the legacy stream).
// `inner` counts elements of `dtype` per channel. Returns 0 on success, -1 for an unsupported
// dtype or bad sizes, otherwise the cudaError_t of the launch. Defined in reorder_gpu.cu, which is
// built into the plugin and into a standalone library for testing without a GPU build of MXNet.
int igc_reorder_cuda(const void* in, void* out, int64_t outer, int64_t channels, int64_t inner,
                     int64_t groups, int dtype, void* stream);
}

#endif  // IGC_OPERATOR_REORDER_H_
