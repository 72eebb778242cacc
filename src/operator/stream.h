// Non-temporal ("streaming") stores for CPU kernels that write a large output once: the store
// goes to memory without first reading the line into the cache (a plain store to a line not in
// cache reads it first), so writing a tensor larger than the last-level cache costs two passes
// over memory instead of three. On the Zen 4 VM of docs/performance.md a 37.7 MB scale-and-copy
// took 2.7-2.9 ms with plain stores and 1.8-1.9 ms streamed.
#ifndef IGC_OPERATOR_STREAM_H_
#define IGC_OPERATOR_STREAM_H_

#include <immintrin.h>

#include <cstdint>

#include "common.h"

namespace igc {

// Outputs of at least this many bytes are streamed: with the inputs they are computed from they
// exceed a 32 MB L3, so their consumer reads them from memory either way.
constexpr int64_t kStreamMinBytes = int64_t(16) << 20;

// Whether a kernel's AVX2 path (the caller picks it) streams an output of `bytes`:
// IGC_NO_STREAM=1 keeps plain stores (see common.h).
inline bool stream_output(int64_t bytes) {
  return bytes >= kStreamMinBytes && !env_switch_on("IGC_NO_STREAM");
}

// dst[i] = src[i] for i < count, dst written with non-temporal stores where 32-byte aligned
// (plain stores before and after). The caller orders them before the output is read
// (stream_fence).
IGC_TARGET_AVX2 inline void stream_copy(float* dst, const float* src, int64_t count) {
  int64_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= count; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < count; ++i) dst[i] = src[i];
}

// Makes a thread's streamed stores visible before the values are read elsewhere.
inline void stream_fence() { _mm_sfence(); }

}  // namespace igc

#endif  // IGC_OPERATOR_STREAM_H_
