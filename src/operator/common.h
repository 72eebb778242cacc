// Policy shared by every kernel, CPU and CUDA: the dtypes they take, the interleaved permutation's
// index (its one definition, for host and device code), the CPU instruction-set choice and the
// environment switches that steer it. Nothing here knows about MXNet.
#ifndef IGC_OPERATOR_COMMON_H_
#define IGC_OPERATOR_COMMON_H_

#include <strings.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

// Callable from host and device code; a plain inline function for a C++ compiler.
#if defined(__CUDACC__)
#define IGC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IGC_HOST_DEVICE inline
#endif

// CPU kernels compiled for AVX2+FMA (or AVX-512) beside their portable version; which one runs is
// decided at run time (use_avx2_kernels, use_avx512_kernels).
#define IGC_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define IGC_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define IGC_TARGET_AVX512VL __attribute__((target("avx512f,avx512vl,avx2,fma")))

namespace igc {

// MXNet dtype codes accepted by the kernels (mshadow's numbering).
enum DType { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2 };

// Bytes per element of a supported dtype, 0 for any other.
IGC_HOST_DEVICE int64_t dtype_bytes(int dtype) {
  return dtype == kFloat32 ? 4 : dtype == kFloat64 ? 8 : dtype == kFloat16 ? 2 : 0;
}

// Reorder(g), IGC's interleaving permutation of C channels in g groups of K = C / g: output
// channel c holds input channel reorder_source(c, C, g) = (c % g) * K + c / g. Reorder(K) is its
// inverse, so reorder_source(c, C, C / g) is where Reorder(g) puts input channel c.
template <typename I>
IGC_HOST_DEVICE I reorder_source(I c, I channels, I groups) {
  return (c % groups) * (channels / groups) + c / groups;
}

// Environment switches of the CPU kernels, read on every call (so tests can flip them):
//   IGC_CONV_BASELINE=1  the portable C++ kernels instead of AVX2+FMA (IGCConv, the BatchNorm,
//                        IGCBlock);
//   IGC_BLOCK_AVX2=1     IGCBlock's AVX2 kernels instead of its AVX-512 ones (the GEMM of
//                        unpacked weights, the packed kernel's 1x1 register blocks);
//   IGC_CONV_AVX2=1      IGCConv's AVX2 kernels instead of its AVX-512 ones (the pointwise
//                        GEMM's register blocks, the few-taps stride-2 forward);
//   IGC_NO_STREAM=1      plain stores where the BatchNorm streams a large output (stream.h).
// Unset, empty or 0 is off, 1 is on; any other value is an error, which the registration files
// report (bad_env_switch) before a kernel runs.
constexpr const char* kEnvSwitches[] = {"IGC_CONV_BASELINE", "IGC_BLOCK_AVX2", "IGC_CONV_AVX2",
                                        "IGC_NO_STREAM"};

inline bool env_switch_on(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

// The first switch set to something other than empty, 0 or 1, or nullptr.
inline const char* bad_env_switch() {
  for (const char* name : kEnvSwitches) {
    const char* value = std::getenv(name);
    if (value && value[0] != '\0' && std::strcmp(value, "0") != 0 && std::strcmp(value, "1") != 0) {
      return name;
    }
  }
  return nullptr;
}

// Whether the CPU kernels may use AVX2+FMA: the CPU has them and IGC_CONV_BASELINE is off.
inline bool use_avx2_kernels() {
  return !env_switch_on("IGC_CONV_BASELINE") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
}

// Whether the CPU kernels may use AVX-512: use_avx2_kernels, the CPU has AVX-512F and
// DNNL_MAX_CPU_ISA (oneDNN's cap) is unset or allows AVX-512, so that a capped run behaves as it
// would on an AVX2 machine.
inline bool cpu_allows_avx512() {
  if (!use_avx2_kernels() || !__builtin_cpu_supports("avx512f")) return false;
  const char* cap = std::getenv("DNNL_MAX_CPU_ISA");
  return !cap || cap[0] == '\0' || strncasecmp(cap, "avx512", 6) == 0 ||
         strncasecmp(cap, "amx", 3) == 0 || strcasecmp(cap, "all") == 0;
}

// Whether IGCBlock's kernels that have an AVX-512 version use it (IGC_BLOCK_AVX2 off).
inline bool use_avx512_kernels() {
  return cpu_allows_avx512() && !env_switch_on("IGC_BLOCK_AVX2");
}

// Whether IGCConv's kernels that have an AVX-512 version use it (IGC_CONV_AVX2 off).
inline bool use_avx512_conv_kernels() {
  return cpu_allows_avx512() && !env_switch_on("IGC_CONV_AVX2");
}

}  // namespace igc

#endif  // IGC_OPERATOR_COMMON_H_
