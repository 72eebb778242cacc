// Interleaved channel permutation (IGC's `Reorder`): the kernel entry points. Nothing here knows
// about MXNet.
//
// With C channels split into g groups of K = C / g, Reorder(g) views the channels of each sample
// as a (g, K) grid and transposes it: output channel j*g + i reads input channel i*K + j
// (reorder_source in common.h). Every channel is a contiguous "row" of `inner` elements (H*W for
// NCHW), so the permutation moves whole rows and is the same byte move for every dtype.
#ifndef IGC_OPERATOR_REORDER_H_
#define IGC_OPERATOR_REORDER_H_

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
