// The CUDA Reorder kernels run on the CPU, for tests/test_reorder_cuda_index.py: the launcher's
// plan and every index mapping come from reorder.h, the very functions reorder_gpu.cu calls; the
// loops here are the kernels' loops with one thread doing every item. Each unit moved is counted
// and every access checked (bounds, 16-byte alignment of vectors, shared memory written once
// before it is read), so a wrong mapping shows up as a wrong output, a unit written twice or
// never, or an error code, without a GPU.
#include <cstdint>
#include <cstring>
#include <vector>

#include "reorder.h"

namespace {

// Error codes of a broken mapping (0: none).
enum {
  kOutOfBounds = -2,     // a global or shared-memory index outside its buffer
  kMisalignedVec = -3,   // a full vector at an address that is not a multiple of 16 bytes
  kSharedTwice = -4,     // a shared unit written twice within a tile
  kSharedUnwritten = -5  // a shared unit read before the tile wrote it
};

}  // namespace

extern "C" {

// Runs igc_reorder_cuda's kernels on `in` (host memory), as if the tensors were at device
// addresses `in_address` and `out_address` (what decides the unit and vector width), counting in
// writes[u] how often output unit u is written. plan[0..5] receives the plan: tiled, unit bytes,
// vec, tile_i, tile_j, shared-memory bytes. Returns 0, -1 for arguments the entry point rejects,
// or an error code above.
int igc_emulate_reorder_cuda(const void* in, void* out, int32_t* writes, int64_t outer,
                             int64_t channels, int64_t inner, int64_t groups, int dtype,
                             uint64_t in_address, uint64_t out_address, int64_t* plan) {
  if (!igc::reorder_args_valid(outer, channels, inner, groups, dtype)) return -1;
  const igc::ReorderPlan p = igc::plan_reorder(in_address, out_address, outer, channels,
                                               inner * igc::dtype_bytes(dtype), groups);
  const int64_t values[6] = {p.tiled, p.unit_bytes, p.vec, p.tile_i, p.tile_j, p.smem_bytes()};
  std::memcpy(plan, values, sizeof(values));
  const int64_t unit = p.unit_bytes, total = outer * channels * p.row_units;
  const char* src = static_cast<const char*>(in);
  char* dst = static_cast<char*>(out);
  auto move = [&](char* to, const char* from) { std::memcpy(to, from, unit); };
  if (total == 0) return 0;
  if (!p.tiled) {
    for (int64_t idx = 0; idx < total; ++idx) {
      const int64_t from = igc::reorder_rows_source(idx, channels, groups, p.row_units);
      if (from < 0 || from >= total) return kOutOfBounds;
      move(dst + idx * unit, src + from * unit);
      ++writes[idx];
    }
    return 0;
  }
  const int64_t smem_units = p.smem_bytes() / unit;
  std::vector<char> smem(p.smem_bytes());
  std::vector<int64_t> written(smem_units, -1);  // the tile that last wrote each shared unit
  // A full vector must sit at a multiple of 16 bytes, in global memory and in shared memory.
  auto vector_ok = [&](const igc::RunPiece& piece, uint64_t address, int64_t smem_unit) {
    return piece.count != p.vec || p.vec == 1 ||
           ((address + piece.first * unit) % 16 == 0 && smem_unit * unit % 16 == 0);
  };
  for (int64_t t = 0; t < p.tiles; ++t) {
    const igc::ReorderTile tile = igc::reorder_tile(p, t);
    for (int e = 0; e < p.load_items(); ++e) {
      int s = 0;
      const igc::RunPiece piece = igc::reorder_load_piece(p, tile, e, &s);
      if (piece.count == 0) continue;
      if (piece.first < 0 || piece.first + piece.count > total || s < 0 ||
          s + piece.count > smem_units) {
        return kOutOfBounds;
      }
      if (!vector_ok(piece, in_address, s)) return kMisalignedVec;
      for (int u = 0; u < piece.count; ++u) {
        if (written[s + u] == t) return kSharedTwice;
        written[s + u] = t;
        move(&smem[(s + u) * unit], src + (piece.first + u) * unit);
      }
    }
    for (int e = 0; e < p.store_items(); ++e) {
      igc::ReorderCursor c;
      const igc::RunPiece piece = igc::reorder_store_piece(p, tile, e, &c);
      if (piece.count == 0) continue;
      if (piece.first < 0 || piece.first + piece.count > total) return kOutOfBounds;
      if (!vector_ok(piece, out_address, 0)) return kMisalignedVec;
      for (int u = 0; u < piece.count; ++u) {
        if (c.smem < 0 || c.smem >= smem_units) return kOutOfBounds;
        if (written[c.smem] != t) return kSharedUnwritten;
        move(dst + (piece.first + u) * unit, &smem[c.smem * unit]);
        ++writes[piece.first + u];
        igc::reorder_advance(p, tile, &c);
      }
    }
  }
  return 0;
}

}  // extern "C"
